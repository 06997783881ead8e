//! `fuzz`: random but valid-shaped sequences of the ioctls of
//! /dev/vhost-net-kernel and /dev/vktest. Every errno seen must be one the
//! interface allows for that call ([`expect`]); any other, a success where
//! the call must fail, a kernel report, or anything left behind after a
//! phase fails the run.
//!
//! The run is split into phases (one KTAP test point each). A phase starts
//! from nothing, draws its calls from its own generator (seeded from the
//! run's seed and the phase number), closes everything it opened and checks
//! that no interface, vdpa device or fd is left. A phase can be replayed
//! alone with `--seed S --phase K --count N`.
//!
//! Allowed results per call (from the spec and the 6.12 code paths; "must
//! fail" means success is a bug):
//!
//! | call | target | allowed errnos | may succeed |
//! |---|---|---|---|
//! | VHOST_SET_OWNER | vhost | EBUSY (owned), EPERM (attached) | yes |
//! | VHOST_GET_FEATURES | vhost | EPERM | yes |
//! | VHOST_SET_FEATURES, bits outside vhost-net's or LOG_ALL | vhost | EOPNOTSUPP, EPERM | no |
//! | VHOST_SET_FEATURES, other bits | vhost | EPERM, EFAULT (no IOTLB memory) | yes |
//! | VHOST_SET_VRING_KICK/CALL, index >= 2 | vhost | ENOBUFS, EPERM | no |
//! | VHOST_SET_VRING_KICK/CALL, eventfd or -1 | vhost | EPERM | yes |
//! | VHOST_SET_VRING_KICK/CALL, closed fd | vhost | EBADF, EPERM | no |
//! | VHOST_SET_VRING_KICK/CALL, other fd | vhost | EINVAL, EPERM | no |
//! | VHOST_NET_SET_BACKEND, index >= 2 | vhost | ENOBUFS, EPERM | no |
//! | VHOST_NET_SET_BACKEND, TAP or -1 | vhost | EPERM | yes |
//! | VHOST_NET_SET_BACKEND, other or closed fd | vhost | ENOTSOCK, EPERM | no |
//! | refused (VRING_NUM/ADDR/BASE/ENDIAN, MEM_TABLE, LOG_BASE/FD) | vhost | EPERM | no |
//! | VHOST_SET_VRING_KICK/CALL, index >= 2 | vktest | EINVAL | no |
//! | VHOST_SET_VRING_KICK/CALL, eventfd or -1 | vktest | EBUSY (attached) | yes |
//! | VHOST_SET_VRING_KICK/CALL, closed fd | vktest | EBADF | no |
//! | VHOST_SET_VRING_KICK/CALL, other fd | vktest | EINVAL | no |
//! | VKTEST_SET_FEATURES, invalid set | vktest | EINVAL, ENOTTY (RFC) | no |
//! | VKTEST_SET_FEATURES, valid set | vktest | EBUSY, ENOTTY (RFC) | yes |
//! | VKTEST_ATTACH_VHOST, closed fd or -1 | vktest | EBADF, EBUSY, EINVAL | no |
//! | VKTEST_ATTACH_VHOST, not a -kernel vhost | vktest | EINVAL, EBUSY | no |
//! | VKTEST_ATTACH_VHOST, -kernel vhost | vktest | EINVAL, EBUSY, EPERM | yes |
//! | pointer ioctl with a NULL argument | vhost | EFAULT, EPERM | no |
//! | pointer ioctl with a NULL argument | vktest | EFAULT, ENOTTY (RFC, SET_FEATURES) | no |
//! | an ioctl of the other node | any | ENOTTY, EINVAL, EFAULT, ENOBUFS, EPERM, EBADFD | no |

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::ioctl::{self, VhostMemory, VhostVringAddr, VhostVringFile, VhostVringState};
use crate::kmsg::LEAK_CHECK;
use crate::ktap::{Ktap, Outcome};
use crate::net::{LinkWatcher, Rtnl};
use crate::races::{wait_all_gone, Snapshot};
use crate::suite::{report_not_run, skip_reason, LogAccount, LogVerdict, NotRun, BETWEEN_POINTS};
use crate::tap::{Tap, TAP_TEMPLATE};
use crate::vhost::{node_exists, open_ro, VHOST_NET_KERNEL_PATH, VHOST_NET_PATH};
use crate::vktest::VKTEST_PATH;

/// Calls per phase with `--count`.
pub const PHASE_CALLS: u64 = 250;
/// Phases of a `--duration` run.
pub const DURATION_PHASES: u64 = 10;
/// Most objects open at once in a phase.
const MAX_OBJS: usize = 28;
/// Most TAPs open at once (each is an interface).
const MAX_TAPS: usize = 2;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    VhostKernel,
    VhostPlain,
    Vktest,
    Eventfd,
    Tap,
    DevNull,
}

impl Kind {
    fn label(self) -> &'static str {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdArg {
    /// The pool object's fd.
    Obj(Kind, RawFd, u32),
    /// A number with no open file behind it.
    Closed(RawFd),
    /// -1 (VHOST_FILE_UNBIND, or "no backend").
    Unbind,
}

impl FdArg {
    fn raw(self) -> RawFd {
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
const REFUSED: &[u32] = &[
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
    VhostVringFd { target: FdArg, call: bool, index: u32, fd: FdArg },
    SetBackend { target: FdArg, index: u32, fd: FdArg },
    Refused { target: FdArg, req: u32, value: u64 },
    VktestVringFd { target: FdArg, call: bool, index: u32, fd: FdArg },
    VktestSetFeatures(FdArg, u64),
    Attach { target: FdArg, fd: FdArg },
    NullArg { target: FdArg, req: u32 },
    WrongTarget { target: FdArg, req: u32 },
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
            | Op::WrongTarget { target: t, .. } => Some(*t),
        }
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
        }
    }
}

/// What a call may return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub may_succeed: bool,
    pub errnos: &'static [Errno],
}

impl Expect {
    const fn ok_or(errnos: &'static [Errno]) -> Self {
        Expect { may_succeed: true, errnos }
    }
    const fn fail(errnos: &'static [Errno]) -> Self {
        Expect { may_succeed: false, errnos }
    }

    /// None if `res` is allowed, else what is wrong.
    pub fn judge(&self, res: Result<(), Errno>) -> Option<String> {
        let allowed = || {
            let mut v: Vec<String> = self.errnos.iter().map(|e| format!("{e:?}")).collect();
            if self.may_succeed {
                v.insert(0, "success".into());
            }
            v.join(", ")
        };
        match res {
            Ok(()) if self.may_succeed => None,
            Ok(()) => Some(format!("succeeded, but must fail with one of: {}", allowed())),
            Err(e) if self.errnos.contains(&e) => None,
            Err(e) => Some(format!("failed with {e:?} ({}), allowed: {}", e.desc(), allowed())),
        }
    }
}

/// vhost-net's feature bits in 6.12 (VHOST_NET_FEATURES).
pub const VHOST_NET_FEATURES: u64 = 1 << 24 // NOTIFY_ON_EMPTY
    | ioctl::VIRTIO_RING_F_INDIRECT_DESC
    | ioctl::VIRTIO_RING_F_EVENT_IDX
    | VHOST_F_LOG_ALL
    | ioctl::VHOST_NET_F_VIRTIO_NET_HDR // = ANY_LAYOUT
    | ioctl::VIRTIO_F_VERSION_1
    | ioctl::VIRTIO_NET_F_MRG_RXBUF
    | ioctl::VIRTIO_F_ACCESS_PLATFORM
    | 1 << 40; // RING_RESET
const VHOST_F_LOG_ALL: u64 = 1 << 26;

/// Whether vktest accepts `bits` for VKTEST_SET_FEATURES (its validation).
pub fn vktest_features_valid(bits: u64) -> bool {
    use crate::ioctl::*;
    let required = VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM;
    if bits & required != required || bits & !(required | crate::vhost::OPTIONAL_FEATURES) != 0 {
        return false;
    }
    let host_tso = VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6;
    let guest_tso = VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6;
    !(bits & host_tso != 0 && bits & VIRTIO_NET_F_CSUM == 0
        || bits & guest_tso != 0 && bits & VIRTIO_NET_F_GUEST_CSUM == 0)
}

/// The allowed results of `op` (see the table in the module documentation).
pub fn expect(op: &Op) -> Expect {
    use Errno::*;
    let kind = |a: &FdArg| match a {
        FdArg::Obj(k, _, _) => Some(*k),
        _ => None,
    };
    match op {
        Op::Open(_) | Op::Close(_) => Expect::ok_or(&[]),
        Op::SetOwner(_) => Expect::ok_or(&[EBUSY, EPERM]),
        Op::GetFeatures(_) => Expect::ok_or(&[EPERM]),
        Op::SetFeatures(_, bits) => {
            if bits & !VHOST_NET_FEATURES != 0 || bits & VHOST_F_LOG_ALL != 0 {
                Expect::fail(&[EOPNOTSUPP, EPERM])
            } else {
                Expect::ok_or(&[EPERM, EFAULT])
            }
        }
        Op::VhostVringFd { index, fd, .. } => match (index, fd) {
            (2.., _) => Expect::fail(&[ENOBUFS, EPERM]),
            (_, FdArg::Unbind) => Expect::ok_or(&[EPERM]),
            (_, FdArg::Closed(_)) => Expect::fail(&[EBADF, EPERM]),
            (_, a) if kind(a) == Some(Kind::Eventfd) => Expect::ok_or(&[EPERM]),
            _ => Expect::fail(&[EINVAL, EPERM]),
        },
        Op::SetBackend { index, fd, .. } => match (index, fd) {
            (2.., _) => Expect::fail(&[ENOBUFS, EPERM]),
            (_, FdArg::Unbind) => Expect::ok_or(&[EPERM]),
            (_, a) if kind(a) == Some(Kind::Tap) => Expect::ok_or(&[EPERM]),
            _ => Expect::fail(&[ENOTSOCK, EPERM]),
        },
        Op::Refused { .. } => Expect::fail(&[EPERM]),
        Op::VktestVringFd { index, fd, .. } => match (index, fd) {
            (2.., _) => Expect::fail(&[EINVAL]),
            (_, FdArg::Unbind) => Expect::ok_or(&[EBUSY]),
            (_, FdArg::Closed(_)) => Expect::fail(&[EBADF]),
            (_, a) if kind(a) == Some(Kind::Eventfd) => Expect::ok_or(&[EBUSY]),
            _ => Expect::fail(&[EINVAL]),
        },
        Op::VktestSetFeatures(_, bits) => {
            if vktest_features_valid(*bits) {
                Expect::ok_or(&[EBUSY, ENOTTY])
            } else {
                Expect::fail(&[EINVAL, ENOTTY])
            }
        }
        Op::Attach { fd, .. } => match fd {
            // -1 is no open file either: fget fails (EBADF).
            FdArg::Closed(_) | FdArg::Unbind => Expect::fail(&[EBADF, EBUSY, EINVAL]),
            a if kind(a) == Some(Kind::VhostKernel) => Expect::ok_or(&[EINVAL, EBUSY, EPERM]),
            _ => Expect::fail(&[EINVAL, EBUSY]),
        },
        Op::NullArg { target, req } => {
            if kind(target) == Some(Kind::Vktest) {
                if *req == ioctl::VKTEST_SET_FEATURES {
                    Expect::fail(&[EFAULT, ENOTTY])
                } else {
                    Expect::fail(&[EFAULT])
                }
            } else {
                Expect::fail(&[EFAULT, EPERM])
            }
        }
        Op::WrongTarget { .. } => Expect::fail(&[ENOTTY, EINVAL, EFAULT, ENOBUFS, EPERM, EBADFD]),
    }
}

struct Obj {
    kind: Kind,
    id: u32,
    fd: OwnedFd,
}

/// What a phase has open.
#[derive(Default)]
struct Pool {
    objs: Vec<Obj>,
    next_id: u32,
    plain_vhost: bool,
}

impl Pool {
    fn arg(&self, i: usize) -> FdArg {
        let o = &self.objs[i];
        FdArg::Obj(o.kind, o.fd.as_raw_fd(), o.id)
    }

    fn of_kind(&self, kinds: &[Kind]) -> Vec<usize> {
        (0..self.objs.len()).filter(|&i| kinds.contains(&self.objs[i].kind)).collect()
    }

    fn count(&self, k: Kind) -> usize {
        self.objs.iter().filter(|o| o.kind == k).count()
    }

    fn find(&self, a: FdArg) -> Option<&Obj> {
        match a {
            FdArg::Obj(_, _, id) => self.objs.iter().find(|o| o.id == id),
            _ => None,
        }
    }

    fn open(&mut self, kind: Kind) -> Result<FdArg> {
        let fd: OwnedFd = match kind {
            Kind::VhostKernel => open_ro(VHOST_NET_KERNEL_PATH)?.into(),
            Kind::VhostPlain => open_ro(VHOST_NET_PATH)?.into(),
            Kind::Vktest => open_ro(VKTEST_PATH)?.into(),
            Kind::Eventfd => EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC).context("eventfd")?.into(),
            Kind::Tap => Tap::create_vhost_backend(TAP_TEMPLATE)?.into_owned_fd(),
            Kind::DevNull => open_ro("/dev/null")?.into(),
        };
        self.next_id += 1;
        self.objs.push(Obj { kind, id: self.next_id, fd });
        Ok(self.arg(self.objs.len() - 1))
    }
}

/// A number with no open file behind it (well above what a phase opens).
fn closed_fd(rng: &mut Rng) -> RawFd {
    loop {
        let n = 700 + rng.below(300) as RawFd;
        if !std::path::Path::new(&format!("/proc/self/fd/{n}")).exists() {
            return n;
        }
    }
}

fn random_index(rng: &mut Rng) -> u32 {
    match rng.below(10) {
        0..=5 => rng.below(2) as u32,
        6 => 2,
        7 => rng.pick(&[3, 255, 256, 0x8000_0000]),
        8 => u32::MAX,
        _ => rng.next_u64() as u32,
    }
}

fn random_features(rng: &mut Rng) -> u64 {
    let rfc = crate::vhost::RFC_FEATURES;
    match rng.below(8) {
        0..=2 => rfc | (rng.next_u64() & (VHOST_NET_FEATURES & !VHOST_F_LOG_ALL)),
        3 => rfc,
        4 => rfc | (rng.next_u64() & crate::vhost::OPTIONAL_FEATURES),
        5 => rng.next_u64() & (VHOST_NET_FEATURES | crate::vhost::OPTIONAL_FEATURES),
        6 => 1u64 << rng.below(64),
        _ => rng.next_u64(),
    }
}

impl Pool {
    fn fd_arg(&self, rng: &mut Rng) -> FdArg {
        match rng.below(20) {
            0 | 1 => FdArg::Closed(closed_fd(rng)),
            2 => FdArg::Unbind,
            _ if self.objs.is_empty() => FdArg::Unbind,
            _ => self.arg(rng.below(self.objs.len() as u64) as usize),
        }
    }

    /// An object of `kinds` (sometimes of any kind: wrong-kind arguments).
    fn target(&self, rng: &mut Rng, kinds: &[Kind]) -> Option<FdArg> {
        let of = self.of_kind(kinds);
        if of.is_empty() {
            None
        } else {
            Some(self.arg(of[rng.below(of.len() as u64) as usize]))
        }
    }

    fn eventfd_or_any(&self, rng: &mut Rng) -> FdArg {
        if rng.below(4) != 0 {
            if let Some(a) = self.target(rng, &[Kind::Eventfd]) {
                return a;
            }
        }
        self.fd_arg(rng)
    }

    /// The next calls (usually one; a wiring recipe gives several).
    fn draw(&self, rng: &mut Rng) -> Vec<Op> {
        let vhost = self.target(rng, &[Kind::VhostKernel]);
        let vk = self.target(rng, &[Kind::Vktest]);
        if self.objs.len() >= MAX_OBJS {
            return vec![Op::Close(self.arg(rng.below(self.objs.len() as u64) as usize))];
        }
        let r = rng.below(100);
        let open = |k: Kind| vec![Op::Open(k)];
        match (r, vhost, vk) {
            (0..=5, ..) => open(Kind::VhostKernel),
            (6..=9, ..) => open(Kind::Vktest),
            (10..=13, ..) => open(Kind::Eventfd),
            (14..=15, ..) if self.count(Kind::Tap) < MAX_TAPS => open(Kind::Tap),
            (16, ..) => open(Kind::DevNull),
            (17, ..) if self.plain_vhost => open(Kind::VhostPlain),
            (18..=25, ..) if !self.objs.is_empty() => {
                vec![Op::Close(self.arg(rng.below(self.objs.len() as u64) as usize))]
            }
            (26..=29, Some(t), _) => vec![Op::SetOwner(t)],
            (30..=31, Some(t), _) => vec![Op::GetFeatures(t)],
            (32..=37, Some(t), _) => vec![Op::SetFeatures(t, random_features(rng))],
            (38..=45, Some(target), _) => vec![Op::VhostVringFd {
                target,
                call: rng.below(2) == 1,
                index: random_index(rng),
                fd: self.eventfd_or_any(rng),
            }],
            (46..=51, Some(target), _) => {
                let fd = match self.target(rng, &[Kind::Tap]) {
                    Some(t) if rng.below(3) != 0 => t,
                    _ => self.fd_arg(rng),
                };
                vec![Op::SetBackend { target, index: random_index(rng), fd }]
            }
            (52..=55, Some(target), _) => {
                vec![Op::Refused { target, req: rng.pick(REFUSED), value: rng.next_u64() }]
            }
            (56..=65, _, Some(target)) => vec![Op::VktestVringFd {
                target,
                call: rng.below(2) == 1,
                index: random_index(rng),
                fd: self.eventfd_or_any(rng),
            }],
            (66..=69, _, Some(t)) => {
                let bits = if rng.below(2) == 0 {
                    crate::vhost::RFC_FEATURES | (rng.next_u64() & crate::vhost::OPTIONAL_FEATURES)
                } else {
                    random_features(rng)
                };
                vec![Op::VktestSetFeatures(t, bits)]
            }
            (70..=79, _, Some(target)) => {
                let fd = match vhost {
                    Some(v) if rng.below(2) == 0 => v,
                    _ => self.fd_arg(rng),
                };
                vec![Op::Attach { target, fd }]
            }
            (80..=84, ..) => {
                let Some(target) = self.target(rng, &[Kind::VhostKernel, Kind::Vktest]) else {
                    return open(Kind::Vktest);
                };
                let req = if matches!(target, FdArg::Obj(Kind::Vktest, ..)) {
                    rng.pick(&[ioctl::VHOST_SET_VRING_KICK, ioctl::VHOST_SET_VRING_CALL, ioctl::VKTEST_SET_FEATURES])
                } else {
                    rng.pick(&[
                        ioctl::VHOST_GET_FEATURES,
                        ioctl::VHOST_SET_FEATURES,
                        ioctl::VHOST_SET_VRING_KICK,
                        ioctl::VHOST_NET_SET_BACKEND,
                    ])
                };
                vec![Op::NullArg { target, req }]
            }
            (85..=89, ..) => {
                let Some(target) =
                    self.target(rng, &[Kind::VhostKernel, Kind::Vktest, Kind::Eventfd, Kind::Tap, Kind::DevNull])
                else {
                    return open(Kind::DevNull);
                };
                let req = match target {
                    FdArg::Obj(Kind::VhostKernel, ..) => {
                        rng.pick(&[ioctl::VKTEST_ATTACH_VHOST, ioctl::VKTEST_SET_FEATURES])
                    }
                    FdArg::Obj(Kind::Vktest, ..) => rng.pick(&[ioctl::VHOST_SET_OWNER, ioctl::VHOST_GET_FEATURES]),
                    _ => rng.pick(&[ioctl::VHOST_SET_OWNER, ioctl::VHOST_GET_FEATURES, ioctl::VKTEST_ATTACH_VHOST]),
                };
                vec![Op::WrongTarget { target, req }]
            }
            (90..=99, Some(v), Some(k)) => self.recipe(rng, v, k),
            (_, None, _) => open(Kind::VhostKernel),
            _ => open(Kind::Vktest),
        }
    }

    /// The valid wiring of `v` and `k` (the serve flow), with the existing
    /// eventfds and TAP, then the attach: so that attaches do succeed and the
    /// calls after them are exercised.
    fn recipe(&self, rng: &mut Rng, v: FdArg, k: FdArg) -> Vec<Op> {
        let efds = self.of_kind(&[Kind::Eventfd]);
        let Some(tap) = self.target(rng, &[Kind::Tap]) else { return vec![Op::Open(Kind::Tap)] };
        if efds.len() < 4 {
            return vec![Op::Open(Kind::Eventfd)];
        }
        let e: Vec<FdArg> = efds[efds.len() - 4..].iter().map(|&i| self.arg(i)).collect();
        let mut ops = vec![Op::SetOwner(v)];
        for q in 0..2u32 {
            let (kick, call) = (e[2 * q as usize], e[2 * q as usize + 1]);
            ops.push(Op::VhostVringFd { target: v, call: false, index: q, fd: kick });
            ops.push(Op::VktestVringFd { target: k, call: false, index: q, fd: kick });
            ops.push(Op::VhostVringFd { target: v, call: true, index: q, fd: call });
            ops.push(Op::VktestVringFd { target: k, call: true, index: q, fd: call });
        }
        ops.push(Op::SetFeatures(v, crate::vhost::RFC_FEATURES));
        ops.push(Op::SetBackend { target: v, index: 0, fd: tap });
        ops.push(Op::SetBackend { target: v, index: 1, fd: tap });
        ops.push(Op::Attach { target: k, fd: v });
        ops
    }

    /// Perform `op`; Ok(result of the call) or Err for a harness failure (an open).
    fn run(&mut self, op: &Op) -> Result<Result<(), Errno>> {
        match op {
            Op::Open(k) => {
                self.open(*k)?;
                return Ok(Ok(()));
            }
            Op::Close(a) => {
                let id = self.find(*a).map(|x| x.id);
                self.objs.retain(|o| Some(o.id) != id);
                return Ok(Ok(()));
            }
            _ => {}
        }
        let Some(obj) = op.target().and_then(|t| self.find(t)) else {
            anyhow::bail!("{op}: target not open (harness bug)");
        };
        let target = obj.fd.as_fd();
        let vf = |index: u32, fd: FdArg| VhostVringFile { index, fd: fd.raw() };
        let kc = |call: bool| if call { ioctl::VHOST_SET_VRING_CALL } else { ioctl::VHOST_SET_VRING_KICK };
        Ok(match op {
            Op::Open(_) | Op::Close(_) => Ok(()),
            // SAFETY: VHOST_SET_OWNER takes no argument.
            Op::SetOwner(_) => unsafe { ioctl::ioctl_none(target, ioctl::VHOST_SET_OWNER) },
            Op::GetFeatures(_) => {
                let mut f = 0u64;
                // SAFETY: VHOST_GET_FEATURES writes one u64.
                unsafe { ioctl::ioctl_with_mut(target, ioctl::VHOST_GET_FEATURES, &mut f) }
            }
            // SAFETY: VHOST_SET_FEATURES reads one u64.
            Op::SetFeatures(_, bits) => unsafe { ioctl::ioctl_with_ref(target, ioctl::VHOST_SET_FEATURES, bits) },
            Op::VktestSetFeatures(_, bits) => {
                // SAFETY: VKTEST_SET_FEATURES reads one u64.
                unsafe { ioctl::ioctl_with_ref(target, ioctl::VKTEST_SET_FEATURES, bits) }
            }
            Op::VhostVringFd { call, index, fd, .. } | Op::VktestVringFd { call, index, fd, .. } => {
                // SAFETY: SET_VRING_KICK/CALL read one struct vhost_vring_file,
                // on both nodes.
                unsafe { ioctl::ioctl_with_ref(target, kc(*call), &vf(*index, *fd)) }
            }
            Op::SetBackend { index, fd, .. } => {
                // SAFETY: VHOST_NET_SET_BACKEND reads one struct vhost_vring_file.
                unsafe { ioctl::ioctl_with_ref(target, ioctl::VHOST_NET_SET_BACKEND, &vf(*index, *fd)) }
            }
            Op::Refused { req, value, .. } => {
                let v = *value;
                match *req {
                    ioctl::VHOST_SET_VRING_ADDR => {
                        let a = VhostVringAddr {
                            index: v as u32 & 1,
                            desc_user_addr: v,
                            used_user_addr: v.rotate_left(16),
                            avail_user_addr: v.rotate_left(32),
                            ..Default::default()
                        };
                        // SAFETY: VHOST_SET_VRING_ADDR reads one struct
                        // vhost_vring_addr; the random addresses in it are
                        // only ever reached through copy_*_user.
                        unsafe { ioctl::ioctl_with_ref(target, *req, &a) }
                    }
                    ioctl::VHOST_SET_MEM_TABLE => {
                        // SAFETY: an empty table: only its 8-byte header is read.
                        unsafe { ioctl::ioctl_with_ref(target, *req, &VhostMemory::default()) }
                    }
                    // SAFETY: VHOST_SET_LOG_BASE reads one u64.
                    ioctl::VHOST_SET_LOG_BASE => unsafe { ioctl::ioctl_with_ref(target, *req, &v) },
                    // SAFETY: VHOST_SET_LOG_FD reads one int.
                    ioctl::VHOST_SET_LOG_FD => unsafe { ioctl::ioctl_with_ref(target, *req, &(v as libc::c_int)) },
                    _ => {
                        let s = VhostVringState { index: v as u32 & 1, num: (v >> 32) as u32 };
                        // SAFETY: the other refused requests (SET_VRING_NUM,
                        // _BASE, _ENDIAN) read one struct vhost_vring_state.
                        unsafe { ioctl::ioctl_with_ref(target, *req, &s) }
                    }
                }
            }
            Op::Attach { fd, .. } => {
                // SAFETY: VKTEST_ATTACH_VHOST takes the fd number by value.
                unsafe { ioctl::ioctl_with_val(target, ioctl::VKTEST_ATTACH_VHOST, fd.raw() as libc::c_ulong) }
            }
            // A NULL user pointer: the kernel's copy_from/to_user must fault.
            // SAFETY: address 0 is never memory of ours the kernel could write.
            Op::NullArg { req, .. } => unsafe { ioctl::ioctl_with_val(target, *req, 0) },
            Op::WrongTarget { req, .. } => {
                if *req == ioctl::VKTEST_ATTACH_VHOST {
                    // SAFETY: by value wherever it is known; elsewhere unknown.
                    unsafe { ioctl::ioctl_with_val(target, *req, 700) }
                } else if *req == ioctl::VHOST_SET_OWNER {
                    // SAFETY: no argument wherever it is known.
                    unsafe { ioctl::ioctl_none(target, *req) }
                } else {
                    let mut f = 0u64;
                    // SAFETY: the requests draw() picks for WrongTarget
                    // (VKTEST_SET_FEATURES, VHOST_GET_FEATURES) access one
                    // u64 on the nodes that know them; the other nodes
                    // (eventfd, TAP, /dev/null) do not know them at all.
                    unsafe { ioctl::ioctl_with_mut(target, *req, &mut f) }
                }
            }
        })
    }
}

/// How long a fuzz run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Count(u64),
    Duration(Duration),
}

#[derive(Debug, Clone)]
pub struct FuzzOpts {
    pub seed: u64,
    pub limit: Limit,
    /// Run only this phase (replay).
    pub phase: Option<u64>,
    /// Limit of every wait (interfaces to go, kernel log markers).
    pub timeout: Duration,
    pub kmsg_path: String,
}

/// The phases of a run: (phase number, calls or None for time-bounded, time share).
fn plan(opts: &FuzzOpts) -> Vec<(u64, Option<u64>, Option<Duration>)> {
    match (opts.limit, opts.phase) {
        (Limit::Count(n), Some(k)) => vec![(k, Some(n), None)],
        (Limit::Duration(d), Some(k)) => vec![(k, None, Some(d))],
        (Limit::Count(n), None) => {
            let phases = n.div_ceil(PHASE_CALLS).max(1);
            (1..=phases).map(|k| (k, Some(PHASE_CALLS.min(n - (k - 1) * PHASE_CALLS)), None)).collect()
        }
        (Limit::Duration(d), None) => {
            (1..=DURATION_PHASES).map(|k| (k, None, Some(d / DURATION_PHASES as u32))).collect()
        }
    }
}

/// Counts of results, for the phase summary.
#[derive(Default)]
struct Tally {
    calls: u64,
    ok: u64,
    attached: u64,
    errnos: BTreeMap<String, u64>,
}

impl Tally {
    fn summary(&self) -> String {
        let e: Vec<String> = self.errnos.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!("{} calls: {} ok, {} attaches; {}", self.calls, self.ok, self.attached, e.join(", "))
    }
}

/// One phase: calls, then close everything and check nothing is left.
async fn phase(
    opts: &FuzzOpts,
    k: u64,
    calls: Option<u64>,
    share: Option<Duration>,
    diag: &mut dyn FnMut(String),
) -> Result<Outcome> {
    let t = opts.timeout;
    let rtnl = Rtnl::new(None)?;
    let mut w = LinkWatcher::new(None)?;
    let before = Snapshot::take(&rtnl).await?;
    let mut rng = phase_rng(opts.seed, k);
    let mut pool = Pool { plain_vhost: node_exists(VHOST_NET_PATH), ..Default::default() };
    let deadline = share.map(|d| Instant::now() + d);
    let mut tally = Tally::default();
    let mut bad = Vec::new();
    let mut n = 0u64;
    'outer: loop {
        for op in pool.draw(&mut rng) {
            if calls.is_some_and(|c| n >= c) || deadline.is_some_and(|d| Instant::now() >= d) {
                break 'outer;
            }
            n += 1;
            let res = pool.run(&op).with_context(|| format!("phase {k} call {n}: {op}"))?;
            tally.calls += 1;
            match res {
                Ok(()) => {
                    tally.ok += 1;
                    if matches!(op, Op::Attach { .. }) {
                        tally.attached += 1;
                    }
                }
                Err(e) => *tally.errnos.entry(format!("{e:?}")).or_default() += 1,
            }
            if let Some(why) = expect(&op).judge(res) {
                if bad.len() < 10 {
                    diag(format!("unexpected: phase {k} call {n}: {op}: {why}"));
                    diag(format!("replay: vhost-kernel-test fuzz --seed {} --phase {k} --count {n}", opts.seed));
                }
                bad.push(n);
            }
        }
    }
    diag(format!("phase {k}: {}", tally.summary()));
    drop(pool);
    // Every interface of the phase must go (their removal may trail the close).
    let now: HashSet<u32> = rtnl.links().await?.iter().map(|l| l.index).collect();
    let mut pending: HashSet<u32> = now.into_iter().filter(|i| !before.links.contains_key(i)).collect();
    wait_all_gone(&mut w, &mut pending, t, &format!("the interfaces of fuzz phase {k} to go away")).await?;
    let after = Snapshot::take(&rtnl).await?;
    let left = before.leftovers(&after);
    if !left.is_empty() {
        anyhow::bail!("left behind after phase {k}: {}", left.join(", "));
    }
    Ok(if bad.is_empty() { Outcome::Pass } else { Outcome::Fail })
}

/// `vhost-kernel-test fuzz`: KTAP, one test point per phase; returns the exit code.
pub async fn fuzz(opts: &FuzzOpts, out: impl std::io::Write) -> i32 {
    let phases = plan(opts);
    let mut k = Ktap::new(out);
    // Under a kmemleak kernel the phases are followed by the leak check.
    let leak_check = crate::kmsg::kmemleak_unavailable().is_none();
    let watched = !opts.kmsg_path.is_empty();
    k.header(phases.len() + usize::from(leak_check) + usize::from(watched));
    k.diag(&format!("seed: {}", opts.seed));
    let skip_all = |k: &mut Ktap<_>, reason: &str| {
        for (p, ..) in &phases {
            k.result(&format!("fuzz_phase_{p}"), &Outcome::Skip(reason.to_string()));
        }
        if leak_check {
            k.result(LEAK_CHECK, &Outcome::Skip(reason.to_string()));
        }
        if watched {
            k.result(BETWEEN_POINTS, &Outcome::Skip(reason.to_string()));
        }
    };
    if let Some(reason) = skip_reason() {
        return report_not_run(&mut k, NotRun::Skip(reason), skip_all);
    }
    if leak_check {
        crate::suite::leak_baseline(&mut k);
    }
    let kmsg = match crate::suite::watch_kernel_log(&opts.kmsg_path, &mut k) {
        Ok(m) => m,
        Err(reason) => return report_not_run(&mut k, NotRun::Fail(reason), skip_all),
    };
    let mut account = kmsg.as_ref().map(|m| LogAccount::new(m, 0, opts.timeout));
    for (p, calls, share) in phases {
        let name = format!("fuzz_phase_{p}");
        let start = account.as_mut().map(|a| a.begin(&format!("fuzz-start-{p}")));
        let mut outcome = match phase(opts, p, calls, share, &mut |d: String| k.diag(&d)).await {
            Ok(o) => o,
            Err(e) => {
                k.diag(&format!("{name}: {e:#}"));
                Outcome::Fail
            }
        };
        if let (Some(a), Some(w)) = (account.as_mut(), start) {
            if a.end(&mut k, &name, w, &format!("fuzz-end-{p}")) != LogVerdict::Clean {
                k.diag(&format!("replay: vhost-kernel-test fuzz --seed {} --phase {p} --count N", opts.seed));
                outcome = Outcome::Fail;
            }
        }
        k.result(&name, &outcome);
    }
    if leak_check {
        let start = account.as_mut().map(|a| a.begin("fuzz-start-leak"));
        let mut outcome = crate::suite::leak_check(&mut |d: String| k.diag(&d)).await.unwrap_or_else(|e| {
            k.diag(&format!("{LEAK_CHECK}: {e:#}"));
            Outcome::Fail
        });
        if let (Some(a), Some(w)) = (account.as_mut(), start) {
            if a.end(&mut k, LEAK_CHECK, w, "fuzz-end-leak") != LogVerdict::Clean {
                outcome = Outcome::Fail;
            }
        }
        k.result(LEAK_CHECK, &outcome);
    }
    if let Some(a) = account.as_mut() {
        a.between_points(&mut k, "fuzz-end");
    }
    k.totals();
    k.exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_spread() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        assert!(xs.iter().all(|&x| x == b.next_u64()));
        assert_ne!(Rng::new(0).next_u64(), 0);
        let mut r = Rng::new(7);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[r.below(10) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
        assert_ne!(phase_rng(1, 1).next_u64(), phase_rng(1, 2).next_u64());
    }

    #[test]
    fn errno_table() {
        let v = FdArg::Obj(Kind::VhostKernel, 5, 1);
        let k = FdArg::Obj(Kind::Vktest, 6, 2);
        let e = FdArg::Obj(Kind::Eventfd, 7, 3);
        let tap = FdArg::Obj(Kind::Tap, 8, 4);
        let vktest_kick = |index, fd| Op::VktestVringFd { target: k, call: false, index, fd };
        // The RFC's out-of-bounds index: must fail with EINVAL, never succeed.
        assert!(expect(&vktest_kick(2, e)).judge(Ok(())).unwrap().contains("must fail"));
        assert_eq!(expect(&vktest_kick(2, e)).judge(Err(Errno::EINVAL)), None);
        assert!(expect(&vktest_kick(u32::MAX, e)).judge(Err(Errno::ENOBUFS)).is_some());
        assert_eq!(expect(&vktest_kick(1, e)).judge(Ok(())), None);
        assert_eq!(expect(&vktest_kick(1, FdArg::Closed(900))).judge(Err(Errno::EBADF)), None);
        assert!(expect(&vktest_kick(1, v)).judge(Ok(())).is_some());
        let refused = Op::Refused { target: v, req: ioctl::VHOST_SET_VRING_NUM, value: 0 };
        assert_eq!(expect(&refused).judge(Err(Errno::EPERM)), None);
        assert!(expect(&refused)
            .judge(Err(Errno::EINVAL))
            .unwrap()
            .contains("failed with EINVAL (Invalid argument), allowed: EPERM"));
        let backend = |index, fd| Op::SetBackend { target: v, index, fd };
        assert_eq!(expect(&backend(0, tap)).judge(Ok(())), None);
        assert_eq!(expect(&backend(0, e)).judge(Err(Errno::ENOTSOCK)), None);
        assert_eq!(expect(&backend(2, tap)).judge(Err(Errno::ENOBUFS)), None);
        let attach = |fd| Op::Attach { target: k, fd };
        assert_eq!(expect(&attach(v)).judge(Ok(())), None);
        assert_eq!(expect(&attach(FdArg::Closed(900))).judge(Err(Errno::EBADF)), None);
        // Found by `fuzz --duration 20 --seed 9`: fd -1 is EBADF, as a closed fd.
        assert_eq!(expect(&attach(FdArg::Unbind)).judge(Err(Errno::EBADF)), None);
        assert!(expect(&attach(e)).judge(Ok(())).is_some());
        assert!(expect(&attach(v)).judge(Err(Errno::ENOMEM)).is_some());
        assert!(expect(&Op::SetFeatures(v, VHOST_F_LOG_ALL | crate::vhost::RFC_FEATURES)).judge(Ok(())).is_some());
        assert_eq!(expect(&Op::SetFeatures(v, crate::vhost::RFC_FEATURES)).judge(Ok(())), None);
        let off = crate::vhost::FeatureSet::offloads().bits;
        assert!(vktest_features_valid(off) && vktest_features_valid(crate::vhost::RFC_FEATURES));
        // 6.12's VHOST_NET_FEATURES, as the kernel has it.
        assert_eq!(VHOST_NET_FEATURES, 0x103_3d00_8000);
        assert!(!vktest_features_valid(off & !crate::ioctl::VIRTIO_NET_F_CSUM));
        assert!(!vktest_features_valid(crate::ioctl::VIRTIO_F_VERSION_1));
        assert!(!vktest_features_valid(crate::vhost::RFC_FEATURES | 1 << 50));
    }

    #[test]
    fn phases_split_the_count() {
        let o = |limit, phase| FuzzOpts {
            seed: 1,
            limit,
            phase,
            timeout: Duration::from_secs(1),
            kmsg_path: String::new(),
        };
        let p = plan(&o(Limit::Count(600), None));
        assert_eq!(p.iter().map(|x| x.1.unwrap()).collect::<Vec<_>>(), [250, 250, 100]);
        assert_eq!(plan(&o(Limit::Count(5), None)), [(1, Some(5), None)]);
        assert_eq!(plan(&o(Limit::Count(17), Some(3))), [(3, Some(17), None)]);
        let d = plan(&o(Limit::Duration(Duration::from_secs(20)), None));
        assert_eq!(d.len(), 10);
        assert_eq!(d[9], (10, None, Some(Duration::from_secs(2))));
    }

    #[test]
    fn draws_are_reproducible_and_well_formed() {
        // Without devices, drive the generator on a pool of eventfds and /dev/null only.
        let mut pool = Pool::default();
        for _ in 0..4 {
            pool.open(Kind::Eventfd).unwrap();
        }
        pool.open(Kind::DevNull).unwrap();
        let draw = |seed| {
            let mut r = phase_rng(seed, 1);
            (0..200).flat_map(|_| pool.draw(&mut r)).map(|o| o.to_string()).collect::<Vec<_>>()
        };
        let a = draw(9);
        assert_eq!(a, draw(9));
        assert_ne!(a, draw(10));
        assert!(a.iter().any(|o| o == "open vhost-net-kernel"), "{a:?}");
    }
}
