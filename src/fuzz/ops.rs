//! The generator and the calls a phase draws: objects, fd arguments and
//! operations, each printable for a replay line.

use std::fmt;
use std::os::fd::RawFd;

use crate::sys::ioctl::{self};

/// xorshift64* (Vigna), seeded through splitmix64 so that any seed works.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-enough in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// The generator of phase `phase` of a run with `seed`.
pub fn phase_rng(seed: u64, phase: u64) -> Rng {
    Rng::new(seed ^ phase.wrapping_mul(0xA24B_AED4_963E_E407))
}

/// A seed from the clock and the pid.
pub fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    Rng::new(t as u64 ^ u64::from(std::process::id()) << 32).next_u64()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    VhostKernel,
    VhostPlain,
    Vktest,
    Eventfd,
    Tap,
    DevNull,
}

impl Kind {
    pub(super) fn label(self) -> &'static str {
        match self {
            Kind::VhostKernel => "vhost-net-kernel",
            Kind::VhostPlain => "vhost-net",
            Kind::Vktest => "vktest",
            Kind::Eventfd => "eventfd",
            Kind::Tap => "tap",
            Kind::DevNull => "/dev/null",
        }
    }
}

/// An fd argument of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FdArg {
    /// The pool object's fd.
    Obj(Kind, RawFd, u32),
    /// A number with no open file behind it.
    Closed(RawFd),
    /// -1 (VHOST_FILE_UNBIND, or "no backend").
    Unbind,
}

impl FdArg {
    pub(super) fn raw(self) -> RawFd {
        match self {
            FdArg::Obj(_, fd, _) | FdArg::Closed(fd) => fd,
            FdArg::Unbind => -1,
        }
    }
}

impl fmt::Display for FdArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdArg::Obj(k, fd, id) => write!(f, "{}#{id} (fd {fd})", k.label()),
            FdArg::Closed(fd) => write!(f, "closed fd {fd}"),
            FdArg::Unbind => write!(f, "fd -1"),
        }
    }
}

/// The refused ioctls of the -kernel node.
pub(super) const REFUSED: &[u32] = &[
    ioctl::VHOST_SET_VRING_NUM,
    ioctl::VHOST_SET_VRING_ADDR,
    ioctl::VHOST_SET_VRING_BASE,
    ioctl::VHOST_SET_VRING_ENDIAN,
    ioctl::VHOST_SET_MEM_TABLE,
    ioctl::VHOST_SET_LOG_BASE,
    ioctl::VHOST_SET_LOG_FD,
];

/// One call, with its arguments resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Open(Kind),
    Close(FdArg),
    SetOwner(FdArg),
    GetFeatures(FdArg),
    SetFeatures(FdArg, u64),
    VhostVringFd {
        target: FdArg,
        call: bool,
        index: u32,
        fd: FdArg,
    },
    SetBackend {
        target: FdArg,
        index: u32,
        fd: FdArg,
    },
    Refused {
        target: FdArg,
        req: u32,
        value: u64,
    },
    VktestVringFd {
        target: FdArg,
        call: bool,
        index: u32,
        fd: FdArg,
    },
    VktestSetFeatures(FdArg, u64),
    Attach {
        target: FdArg,
        fd: FdArg,
    },
    NullArg {
        target: FdArg,
        req: u32,
    },
    WrongTarget {
        target: FdArg,
        req: u32,
    },
    /// VHOST_SET_VRING_BUSYLOOP_TIMEOUT (microseconds of busy polling).
    SetBusyloop {
        target: FdArg,
        index: u32,
        timeout: u32,
    },
    GetBusyloop {
        target: FdArg,
        index: u32,
    },
    /// write(2) of one u64 to an eventfd (the kick and call eventfds are
    /// shared with the kernel: it must take any value at any time).
    WriteEventfd(FdArg, u64),
    /// A non-blocking read(2) of an eventfd (takes its counter back to 0).
    ReadEventfd(FdArg),
}

impl Op {
    /// The fd the call is made on (None for open/close).
    pub fn target(&self) -> Option<FdArg> {
        match self {
            Op::Open(_) | Op::Close(_) => None,
            Op::SetOwner(t)
            | Op::GetFeatures(t)
            | Op::SetFeatures(t, _)
            | Op::VktestSetFeatures(t, _)
            | Op::VhostVringFd { target: t, .. }
            | Op::VktestVringFd { target: t, .. }
            | Op::SetBackend { target: t, .. }
            | Op::Refused { target: t, .. }
            | Op::Attach { target: t, .. }
            | Op::NullArg { target: t, .. }
            | Op::WrongTarget { target: t, .. }
            | Op::SetBusyloop { target: t, .. }
            | Op::GetBusyloop { target: t, .. }
            | Op::WriteEventfd(t, _)
            | Op::ReadEventfd(t) => Some(*t),
        }
    }

    /// Every fd the call names: its target, the object closed, the fd it passes.
    pub fn fds(&self) -> Vec<FdArg> {
        let mut v: Vec<FdArg> = self.target().into_iter().collect();
        match self {
            Op::Close(a) => v.push(*a),
            Op::VhostVringFd { fd, .. }
            | Op::VktestVringFd { fd, .. }
            | Op::SetBackend { fd, .. }
            | Op::Attach { fd, .. } => v.push(*fd),
            _ => {}
        }
        v
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kc = |call: bool| if call { "VHOST_SET_VRING_CALL" } else { "VHOST_SET_VRING_KICK" };
        match self {
            Op::Open(k) => write!(f, "open {}", k.label()),
            Op::Close(t) => write!(f, "close {t}"),
            Op::SetOwner(t) => write!(f, "{t}: VHOST_SET_OWNER"),
            Op::GetFeatures(t) => write!(f, "{t}: VHOST_GET_FEATURES"),
            Op::SetFeatures(t, b) => write!(f, "{t}: VHOST_SET_FEATURES {b:#x}"),
            Op::VhostVringFd { target, call, index, fd } | Op::VktestVringFd { target, call, index, fd } => {
                write!(f, "{target}: {} index {index} {fd}", kc(*call))
            }
            Op::SetBackend { target, index, fd } => write!(f, "{target}: VHOST_NET_SET_BACKEND index {index} {fd}"),
            Op::Refused { target, req, value } => write!(f, "{target}: {} ({value:#x})", ioctl::name(*req)),
            Op::VktestSetFeatures(t, b) => write!(f, "{t}: VKTEST_SET_FEATURES {b:#x}"),
            Op::Attach { target, fd } => write!(f, "{target}: VKTEST_ATTACH_VHOST {fd}"),
            Op::NullArg { target, req } => write!(f, "{target}: {} with a NULL argument", ioctl::name(*req)),
            Op::WrongTarget { target, req } => write!(f, "{target}: {} (ioctl of another node)", ioctl::name(*req)),
            Op::SetBusyloop { target, index, timeout } => {
                write!(f, "{target}: VHOST_SET_VRING_BUSYLOOP_TIMEOUT index {index} timeout {timeout}")
            }
            Op::GetBusyloop { target, index } => write!(f, "{target}: VHOST_GET_VRING_BUSYLOOP_TIMEOUT index {index}"),
            Op::WriteEventfd(t, v) => write!(f, "{t}: write {v:#x}"),
            Op::ReadEventfd(t) => write!(f, "{t}: read"),
        }
    }
}
