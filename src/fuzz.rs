//! `fuzz`: random but valid-shaped sequences of the ioctls of
//! /dev/vhost-net-kernel and /dev/vktest. Each call has exactly one right
//! result in the state its objects are in ([`Model`], which follows every
//! call's result); any other result, a kernel report, or anything left
//! behind after a phase fails the run.
//!
//! The run is split into phases (one KTAP test point each). A phase starts
//! from nothing, draws its calls from its own generator (seeded from the
//! run's seed and the phase number), closes everything it opened and checks
//! that no interface, vdpa device or fd is left. A phase can be replayed
//! alone with `--seed S --phase K --count N`.
//!
//! The state of a vhost fd (V): owned (SET_OWNER succeeded), IOTLB (the last
//! successful SET_FEATURES had ACCESS_PLATFORM), attached (taken over by a
//! vktest: for good, also after that vktest or V's own fd is closed). Of a
//! vktest fd (K): kick and call set per queue (eventfd, not -1), attached
//! (to the fd it was given; until K is closed, also once that fd is closed).
//! The result of each call, the conditions in the order the kernel checks
//! them (kernel-patches/0002-0004 and the 6.12 code they call), first match:
//!
//! | call | conditions, in order -> result |
//! |---|---|
//! | refused on V (VRING_NUM/ADDR/BASE/ENDIAN, MEM_TABLE, LOG_BASE/FD) | EPERM |
//! | any other ioctl on V | V attached -> EPERM, then as below |
//! | VHOST_SET_OWNER | owned -> EBUSY; ok |
//! | VHOST_GET_FEATURES | ok (no owner needed) |
//! | VHOST_SET_FEATURES | LOG_ALL or bits outside VHOST_NET_FEATURES -> EOPNOTSUPP; ok |
//! | VHOST_SET_VRING_KICK/CALL on V | not owned -> EPERM; index >= 2 -> ENOBUFS; closed fd -> EBADF; not an eventfd (nor -1) -> EINVAL; ok |
//! | VHOST_NET_SET_BACKEND | not owned -> EPERM; index >= 2 -> ENOBUFS; not a TAP (nor -1) -> ENOTSOCK; ok |
//! | NULL argument on V | KICK and not owned -> EPERM; EFAULT |
//! | vktest ioctl on V | not owned -> EPERM; ATTACH (arg 700) -> EFAULT; ENOTTY |
//! | VHOST_SET_VRING_KICK/CALL on K | index >= 2 -> EINVAL; closed fd -> EBADF; not an eventfd (nor -1) -> EINVAL; K attached -> EBUSY; ok |
//! | VKTEST_SET_FEATURES | invalid set -> EINVAL; K attached -> EBUSY; ok |
//! | VKTEST_ATTACH_VHOST fd | K attached -> EBUSY; a kick or call missing -> EINVAL; closed fd or -1 -> EBADF; not a -kernel vhost -> EINVAL; V not owned -> EPERM; V attached -> EBUSY; no IOTLB -> EINVAL; ok |
//! | NULL argument on K | EFAULT |
//! | vhost ioctl on K, eventfd, /dev/null | ENOTTY |
//! | ioctl of either node on a TAP | EINVAL |

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

/// The one result the interface gives for a call in the state the model knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Success,
    Fail(Errno),
}

impl Expect {
    /// None if `res` is the expected result, else what is wrong.
    pub fn judge(self, res: Result<(), Errno>) -> Option<String> {
        match (self, res) {
            (Expect::Success, Ok(())) => None,
            (Expect::Fail(want), Err(e)) if e == want => None,
            (Expect::Fail(want), Ok(())) => Some(format!("succeeded, but must fail with {want:?}")),
            (Expect::Success, Err(e)) => Some(format!("failed with {e:?} ({}), but must succeed", e.desc())),
            (Expect::Fail(want), Err(e)) => {
                Some(format!("failed with {e:?} ({}), but must fail with {want:?}", e.desc()))
            }
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

/// What the model knows of one /dev/vhost-net-kernel device.
///
/// Its kick, call and backend per queue are not kept: no answer depends on
/// them (vhost_dev_get() does not look at them, SET_BACKEND replaces a
/// recorded socket, SET_VRING_KICK/CALL replace an eventfd).
#[derive(Debug, Clone, Default)]
struct VhostState {
    /// VHOST_SET_OWNER succeeded (one process here: we are the owner).
    owned: bool,
    /// The last successful VHOST_SET_FEATURES had ACCESS_PLATFORM: the device
    /// has its IOTLB (a later one without it clears the IOTLB again).
    iotlb: bool,
    /// Taken over by this vktest (kernel_attached): every ioctl is EPERM from
    /// then on, for the life of the device, also once that vktest is closed.
    attached_to: Option<u32>,
    /// Our fd is closed (a vktest that took it over still holds the file).
    closed: bool,
}

/// What the model knows of one /dev/vktest device.
///
/// Its VKTEST_SET_FEATURES bits are not kept: no ioctl's answer depends on
/// them (only what virtio-net negotiates after the attach).
#[derive(Debug, Clone, Default)]
struct VktestState {
    /// An eventfd is set as the kick / call of queue 0 and 1.
    kick: [bool; 2],
    call: [bool; 2],
    /// The fd it attached (vt->vhost): kept until this vktest is closed, also
    /// when the vhost fd is closed (vktest holds the vhost's file).
    attached: Option<FdArg>,
    closed: bool,
}

/// The oracle: the state of every object of a phase, from the results of
/// the calls so far, and from it the one result the next call must have.
///
/// The answers and the order of the checks are those of the series
/// (kernel-patches/0002-0004: vhost_kernel_ioctl_check, vhost_dev_get,
/// vhost_net_kernel_ioctl, vktest_ioctl) and of the 6.12 code they call
/// (vhost_net_ioctl, vhost_dev_ioctl, vhost_vring_ioctl, eventfd_fget,
/// get_socket, tun's ioctl); the module documentation has the table.
/// Objects appear at their first use (ids are never reused in a phase).
#[derive(Debug, Clone, Default)]
pub struct Model {
    vhosts: BTreeMap<u32, VhostState>,
    vktests: BTreeMap<u32, VktestState>,
}

fn obj_id(a: FdArg) -> Option<u32> {
    match a {
        FdArg::Obj(_, _, id) => Some(id),
        _ => None,
    }
}

fn obj_kind(a: FdArg) -> Option<Kind> {
    match a {
        FdArg::Obj(k, _, _) => Some(k),
        _ => None,
    }
}

impl Model {
    fn vhost(&self, a: FdArg) -> VhostState {
        obj_id(a).and_then(|id| self.vhosts.get(&id)).cloned().unwrap_or_default()
    }

    fn vktest(&self, a: FdArg) -> VktestState {
        obj_id(a).and_then(|id| self.vktests.get(&id)).cloned().unwrap_or_default()
    }

    fn vhost_mut(&mut self, a: FdArg) -> Option<&mut VhostState> {
        obj_id(a).map(|id| self.vhosts.entry(id).or_default())
    }

    fn vktest_mut(&mut self, a: FdArg) -> Option<&mut VktestState> {
        obj_id(a).map(|id| self.vktests.entry(id).or_default())
    }

    /// The result `op` must have now.
    pub fn expect(&self, op: &Op) -> Expect {
        use Errno::*;
        use Expect::{Fail, Success};
        let is = |a: &FdArg, k: Kind| obj_kind(*a) == Some(k);
        match op {
            Op::Open(_) | Op::Close(_) => Success,
            // /dev/vhost-net-kernel: vhost_kernel_ioctl_check() refuses the
            // ring-shaping ioctls, then every ioctl of a taken-over device,
            // before anything else (argument copy and owner check included).
            Op::Refused { .. } => Fail(EPERM),
            Op::SetOwner(t)
            | Op::GetFeatures(t)
            | Op::SetFeatures(t, _)
            | Op::VhostVringFd { target: t, .. }
            | Op::SetBackend { target: t, .. }
            | Op::NullArg { target: t, .. }
            | Op::WrongTarget { target: t, .. }
                if is(t, Kind::VhostKernel) && self.vhost(*t).attached_to.is_some() =>
            {
                Fail(EPERM)
            }
            // vhost_net_set_owner: EBUSY if there is an owner.
            Op::SetOwner(t) => {
                if self.vhost(*t).owned {
                    Fail(EBUSY)
                } else {
                    Success
                }
            }
            // No owner check for the features (as on /dev/vhost-net).
            Op::GetFeatures(_) => Success,
            // LOG_ALL is refused by the -kernel node, other bits outside
            // VHOST_NET_FEATURES by vhost-net: both EOPNOTSUPP. The IOTLB
            // allocation of ACCESS_PLATFORM (EFAULT if it fails) is a small
            // GFP_KERNEL one, which does not fail.
            Op::SetFeatures(_, bits) => {
                if bits & VHOST_F_LOG_ALL != 0 || bits & !VHOST_NET_FEATURES != 0 {
                    Fail(EOPNOTSUPP)
                } else {
                    Success
                }
            }
            // vhost_dev_ioctl: the owner check, then vhost_vring_ioctl: the
            // index, then eventfd_fget / eventfd_ctx_fdget: EBADF for no
            // file, EINVAL for a file that is no eventfd; -1 unbinds.
            Op::VhostVringFd { target, index, fd, .. } => {
                if !self.vhost(*target).owned {
                    Fail(EPERM)
                } else if *index >= 2 {
                    Fail(ENOBUFS)
                } else {
                    match fd {
                        FdArg::Unbind => Success,
                        FdArg::Closed(_) => Fail(EBADF),
                        a if is(a, Kind::Eventfd) => Success,
                        _ => Fail(EINVAL),
                    }
                }
            }
            // vhost_net_kernel_set_backend (after the argument copy): owner,
            // index, get_socket: -1 is "no backend", a TAP is a socket,
            // anything else (a closed fd too) ENOTSOCK.
            Op::SetBackend { target, index, fd } => {
                if !self.vhost(*target).owned {
                    Fail(EPERM)
                } else if *index >= 2 {
                    Fail(ENOBUFS)
                } else if *fd == FdArg::Unbind || is(fd, Kind::Tap) {
                    Success
                } else {
                    Fail(ENOTSOCK)
                }
            }
            // vktest_set_vring_fd: argument, index, the eventfd, and only
            // then (under the lock) an attached vhost.
            Op::VktestVringFd { target, index, fd, .. } => {
                if *index >= 2 {
                    Fail(EINVAL)
                } else {
                    match fd {
                        FdArg::Closed(_) => Fail(EBADF),
                        a if *a != FdArg::Unbind && !is(a, Kind::Eventfd) => Fail(EINVAL),
                        _ if self.vktest(*target).attached.is_some() => Fail(EBUSY),
                        _ => Success,
                    }
                }
            }
            // vktest_set_features: validity, then an attached vhost.
            Op::VktestSetFeatures(target, bits) => {
                if !vktest_features_valid(*bits) {
                    Fail(EINVAL)
                } else if self.vktest(*target).attached.is_some() {
                    Fail(EBUSY)
                } else {
                    Success
                }
            }
            // vktest_attach_vhost: this vktest attached (EBUSY), every queue
            // has a kick and a call (EINVAL), then vhost_dev_get(): fget
            // (EBADF; -1 too), a -kernel node (EINVAL), the owner check
            // (EPERM), taken over already (EBUSY), an IOTLB (EINVAL).
            Op::Attach { target, fd } => {
                let k = self.vktest(*target);
                if k.attached.is_some() {
                    return Fail(EBUSY);
                }
                if !(k.kick[0] && k.kick[1] && k.call[0] && k.call[1]) {
                    return Fail(EINVAL);
                }
                match fd {
                    FdArg::Closed(_) | FdArg::Unbind => Fail(EBADF),
                    a if is(a, Kind::VhostKernel) => {
                        let v = self.vhost(*a);
                        if !v.owned {
                            Fail(EPERM)
                        } else if v.attached_to.is_some() {
                            Fail(EBUSY)
                        } else if !v.iotlb {
                            Fail(EINVAL)
                        } else {
                            Success
                        }
                    }
                    _ => Fail(EINVAL),
                }
            }
            Op::NullArg { target, req } => {
                // The vring ioctls check the owner before reading the index;
                // GET/SET_FEATURES and the -kernel SET_BACKEND copy first.
                if is(target, Kind::VhostKernel) && *req == ioctl::VHOST_SET_VRING_KICK && !self.vhost(*target).owned {
                    Fail(EPERM)
                } else {
                    Fail(EFAULT)
                }
            }
            Op::WrongTarget { target, req } => match obj_kind(*target) {
                // vhost_dev_ioctl's owner check, then vhost_vring_ioctl reads
                // the queue index from the argument: for the attach its value
                // 700 is no readable address (EFAULT); VKTEST_SET_FEATURES
                // points at a 0, queue 0, and is then no vring ioctl (ENOTTY).
                Some(Kind::VhostKernel) => {
                    if !self.vhost(*target).owned {
                        Fail(EPERM)
                    } else if *req == ioctl::VKTEST_ATTACH_VHOST {
                        Fail(EFAULT)
                    } else {
                        Fail(ENOTTY)
                    }
                }
                // tun: an ioctl it does not know, on an attached TAP file.
                Some(Kind::Tap) => Fail(EINVAL),
                // vktest: ENOIOCTLCMD; eventfd and /dev/null have no ioctl.
                _ => Fail(ENOTTY),
            },
        }
    }

    /// Take in what the kernel did: the state follows the real result (also
    /// an unexpected one, so that one wrong answer is reported once).
    pub fn update(&mut self, op: &Op, res: Result<(), Errno>) {
        match op {
            Op::Close(a) => match obj_kind(*a) {
                Some(Kind::VhostKernel) => self.vhost_mut(*a).into_iter().for_each(|v| v.closed = true),
                Some(Kind::Vktest) => self.vktest_mut(*a).into_iter().for_each(|k| k.closed = true),
                _ => {}
            },
            _ if res.is_err() => {}
            Op::SetOwner(t) => self.vhost_mut(*t).into_iter().for_each(|v| v.owned = true),
            Op::SetFeatures(t, bits) => {
                let iotlb = bits & ioctl::VIRTIO_F_ACCESS_PLATFORM != 0;
                self.vhost_mut(*t).into_iter().for_each(|v| v.iotlb = iotlb);
            }
            Op::VktestVringFd { target, call, index, fd } if *index < 2 => {
                let set = *fd != FdArg::Unbind;
                if let Some(k) = self.vktest_mut(*target) {
                    if *call {
                        k.call[*index as usize] = set;
                    } else {
                        k.kick[*index as usize] = set;
                    }
                }
            }
            Op::Attach { target, fd } => {
                if let Some(k) = self.vktest_mut(*target) {
                    k.attached = Some(*fd);
                }
                if obj_kind(*fd) == Some(Kind::VhostKernel) {
                    let by = obj_id(*target);
                    self.vhost_mut(*fd).into_iter().for_each(|v| v.attached_to = by);
                }
            }
            _ => {}
        }
    }

    /// Judge the result of `op` and take it in: None if it is the one
    /// expected, else what is wrong, with the state that made the answer.
    pub fn step(&mut self, op: &Op, res: Result<(), Errno>) -> Option<String> {
        let why = self.expect(op).judge(res).map(|why| format!("{why} ({})", self.describe(op)));
        self.update(op, res);
        why
    }

    /// The state of the objects `op` involves, for a report.
    fn describe(&self, op: &Op) -> String {
        let mut args = vec![];
        if let Some(t) = op.target() {
            args.push(t);
        }
        match op {
            Op::Attach { fd, .. } => args.push(*fd),
            Op::Close(a) => args.push(*a),
            _ => {}
        }
        let parts: Vec<String> = args.into_iter().filter_map(|a| self.state_of(a)).collect();
        if parts.is_empty() {
            "no state".into()
        } else {
            parts.join("; ")
        }
    }

    fn state_of(&self, a: FdArg) -> Option<String> {
        let FdArg::Obj(kind, _, id) = a else { return None };
        let mut s = vec![];
        match kind {
            Kind::VhostKernel => {
                let v = self.vhost(a);
                s.push(if v.owned { "owned" } else { "no owner" }.to_string());
                s.push(if v.iotlb { "IOTLB" } else { "no IOTLB" }.to_string());
                if let Some(k) = v.attached_to {
                    let gone = self.vktests.get(&k).is_some_and(|k| k.closed);
                    s.push(format!("attached to vktest#{k}{}", if gone { " (closed)" } else { "" }));
                }
            }
            Kind::Vktest => {
                let k = self.vktest(a);
                let q = |set: [bool; 2]| format!("{}{}", u8::from(set[0]), u8::from(set[1]));
                s.push(format!("kick {} call {}", q(k.kick), q(k.call)));
                if let Some(v) = k.attached {
                    let gone = obj_id(v).and_then(|id| self.vhosts.get(&id)).is_some_and(|v| v.closed);
                    s.push(format!("attached to {v}{}", if gone { " (closed)" } else { "" }));
                }
            }
            _ => return None,
        }
        Some(format!("{}#{id}: {}", kind.label(), s.join(", ")))
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
    let mut model = Model::default();
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
            if let Some(why) = model.step(&op, res) {
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
        // A phase's usual state: v owned and wired, k wired, not attached.
        let (v, k, e, tap) = (V, K, E[0], TAP);
        let mut m = Model::default();
        feed(&mut m, &wiring(v, k));
        let vktest_kick = |index, fd| Op::VktestVringFd { target: k, call: false, index, fd };
        // The RFC's out-of-bounds index: must fail with EINVAL, never succeed.
        assert!(m.expect(&vktest_kick(2, e)).judge(Ok(())).unwrap().contains("must fail"));
        assert_eq!(m.expect(&vktest_kick(2, e)).judge(Err(Errno::EINVAL)), None);
        assert!(m.expect(&vktest_kick(u32::MAX, e)).judge(Err(Errno::ENOBUFS)).is_some());
        assert_eq!(m.expect(&vktest_kick(1, e)).judge(Ok(())), None);
        assert_eq!(m.expect(&vktest_kick(1, FdArg::Closed(900))).judge(Err(Errno::EBADF)), None);
        assert!(m.expect(&vktest_kick(1, v)).judge(Ok(())).is_some());
        let refused = Op::Refused { target: v, req: ioctl::VHOST_SET_VRING_NUM, value: 0 };
        assert_eq!(m.expect(&refused).judge(Err(Errno::EPERM)), None);
        assert_eq!(
            m.expect(&refused).judge(Err(Errno::EINVAL)).unwrap(),
            "failed with EINVAL (Invalid argument), but must fail with EPERM"
        );
        let backend = |index, fd| Op::SetBackend { target: v, index, fd };
        assert_eq!(m.expect(&backend(0, tap)).judge(Ok(())), None);
        assert_eq!(m.expect(&backend(0, e)).judge(Err(Errno::ENOTSOCK)), None);
        assert_eq!(m.expect(&backend(2, tap)).judge(Err(Errno::ENOBUFS)), None);
        let attach = |fd| Op::Attach { target: k, fd };
        assert_eq!(m.expect(&attach(v)).judge(Ok(())), None);
        assert_eq!(m.expect(&attach(FdArg::Closed(900))).judge(Err(Errno::EBADF)), None);
        // Found by `fuzz --duration 20 --seed 9`: fd -1 is EBADF, as a closed fd.
        assert_eq!(m.expect(&attach(FdArg::Unbind)).judge(Err(Errno::EBADF)), None);
        assert!(m.expect(&attach(e)).judge(Ok(())).is_some());
        assert!(m.expect(&attach(v)).judge(Err(Errno::ENOMEM)).unwrap().contains("must succeed"));
        let log_all = Op::SetFeatures(v, VHOST_F_LOG_ALL | crate::vhost::RFC_FEATURES);
        assert!(m.expect(&log_all).judge(Ok(())).is_some());
        assert_eq!(m.expect(&log_all).judge(Err(Errno::EOPNOTSUPP)), None);
        assert_eq!(m.expect(&Op::SetFeatures(v, crate::vhost::RFC_FEATURES)).judge(Ok(())), None);
        // A report names the state that made the answer.
        let why = m.clone().step(&attach(W), Ok(())).unwrap();
        assert!(why.contains("must fail with EPERM") && why.contains("no owner, no IOTLB"), "{why}");
        assert!(why.contains("vktest#2: kick 11 call 11"), "{why}");
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
    // The objects of the sequence tests: ids as a pool gives them.
    const V: FdArg = FdArg::Obj(Kind::VhostKernel, 10, 1);
    const K: FdArg = FdArg::Obj(Kind::Vktest, 11, 2);
    const E: [FdArg; 4] = [
        FdArg::Obj(Kind::Eventfd, 12, 3),
        FdArg::Obj(Kind::Eventfd, 13, 4),
        FdArg::Obj(Kind::Eventfd, 14, 5),
        FdArg::Obj(Kind::Eventfd, 15, 6),
    ];
    const TAP: FdArg = FdArg::Obj(Kind::Tap, 16, 7);
    const NULL: FdArg = FdArg::Obj(Kind::DevNull, 17, 8);
    const W: FdArg = FdArg::Obj(Kind::VhostKernel, 18, 9);
    const L: FdArg = FdArg::Obj(Kind::Vktest, 19, 10);
    const PLAIN: FdArg = FdArg::Obj(Kind::VhostPlain, 20, 11);

    /// Every outcome a call of the fuzzer can have.
    const OUTCOMES: &[Result<(), Errno>] = &[
        Ok(()),
        Err(Errno::EPERM),
        Err(Errno::EBUSY),
        Err(Errno::EINVAL),
        Err(Errno::EBADF),
        Err(Errno::EFAULT),
        Err(Errno::ENOBUFS),
        Err(Errno::ENOTSOCK),
        Err(Errno::EOPNOTSUPP),
        Err(Errno::ENOTTY),
        Err(Errno::ENOMEM),
    ];

    /// Feed the model `(op, outcome)` pairs that must all be judged right.
    fn feed(m: &mut Model, seq: &[(Op, Result<(), Errno>)]) {
        for (op, res) in seq {
            assert_eq!(m.step(op, *res), None, "{op} -> {res:?}");
        }
    }

    /// `want` is the one outcome of `op` in the model's state: it passes,
    /// every other outcome is a violation.
    #[track_caller]
    fn only(m: &Model, op: &Op, want: Result<(), Errno>) {
        assert_eq!(m.expect(op).judge(want), None, "{op}: {want:?} must be accepted");
        for other in OUTCOMES.iter().filter(|&&o| o != want) {
            assert!(m.expect(op).judge(*other).is_some(), "{op}: {other:?} accepted, only {want:?} is right");
        }
    }

    fn kick(target: FdArg, call: bool, index: u32, fd: FdArg) -> Op {
        if matches!(target, FdArg::Obj(Kind::Vktest, ..)) {
            Op::VktestVringFd { target, call, index, fd }
        } else {
            Op::VhostVringFd { target, call, index, fd }
        }
    }

    /// The serve wiring of `v` and `k` up to (not including) the attach, all succeeding.
    fn wiring(v: FdArg, k: FdArg) -> Vec<(Op, Result<(), Errno>)> {
        let mut s = vec![(Op::SetOwner(v), Ok(()))];
        for q in 0..2u32 {
            for (call, e) in [(false, E[2 * q as usize]), (true, E[2 * q as usize + 1])] {
                s.push((kick(v, call, q, e), Ok(())));
                s.push((kick(k, call, q, e), Ok(())));
            }
        }
        s.push((Op::SetFeatures(v, crate::vhost::RFC_FEATURES), Ok(())));
        s.push((Op::SetBackend { target: v, index: 0, fd: TAP }, Ok(())));
        s.push((Op::SetBackend { target: v, index: 1, fd: TAP }, Ok(())));
        s
    }

    fn attached(v: FdArg, k: FdArg) -> Model {
        let mut m = Model::default();
        feed(&mut m, &wiring(v, k));
        feed(&mut m, &[(Op::Attach { target: k, fd: v }, Ok(()))]);
        m
    }

    #[test]
    fn after_attach_every_vhost_ioctl_is_eperm() {
        let m = attached(V, K);
        let rfc = crate::vhost::RFC_FEATURES;
        // Issue 13: the stateless oracle accepted this success.
        assert!(m.expect(&Op::SetFeatures(V, rfc)).judge(Ok(())).unwrap().contains("must fail with EPERM"));
        for op in [
            Op::SetFeatures(V, rfc),
            Op::SetFeatures(V, VHOST_F_LOG_ALL | rfc),
            Op::SetOwner(V),
            Op::GetFeatures(V),
            kick(V, false, 0, E[0]),
            kick(V, true, 1, FdArg::Unbind),
            kick(V, false, 7, FdArg::Closed(900)),
            Op::SetBackend { target: V, index: 0, fd: TAP },
            Op::SetBackend { target: V, index: 5, fd: NULL },
            Op::Refused { target: V, req: ioctl::VHOST_SET_VRING_NUM, value: 1 },
            Op::NullArg { target: V, req: ioctl::VHOST_GET_FEATURES },
            Op::NullArg { target: V, req: ioctl::VHOST_NET_SET_BACKEND },
            Op::WrongTarget { target: V, req: ioctl::VKTEST_SET_FEATURES },
            Op::WrongTarget { target: V, req: ioctl::VKTEST_ATTACH_VHOST },
        ] {
            only(&m, &op, Err(Errno::EPERM));
        }
        // Still so once the vktest that took it over is closed: never cleared.
        let mut m = m;
        feed(&mut m, &[(Op::Close(K), Ok(()))]);
        only(&m, &Op::SetFeatures(V, rfc), Err(Errno::EPERM));
        only(&m, &Op::GetFeatures(V), Err(Errno::EPERM));
    }

    #[test]
    fn attach_has_one_answer_in_each_state() {
        let attach = |k, fd| Op::Attach { target: k, fd };
        let wired = || {
            let mut m = Model::default();
            feed(&mut m, &wiring(V, K));
            m
        };
        only(&wired(), &attach(K, V), Ok(()));
        // A vktest without its eventfds, whatever the fd (checked before the fd).
        let fresh = Model::default();
        for fd in [V, FdArg::Closed(900), FdArg::Unbind, E[0], PLAIN] {
            only(&fresh, &attach(K, fd), Err(Errno::EINVAL));
        }
        // One queue's call missing, or unbound again.
        let mut m = Model::default();
        let mut s = wiring(V, K);
        s.retain(|(op, _)| *op != kick(K, true, 1, E[3]));
        feed(&mut m, &s);
        only(&m, &attach(K, V), Err(Errno::EINVAL));
        let mut m = wired();
        feed(&mut m, &[(kick(K, false, 0, FdArg::Unbind), Ok(()))]);
        only(&m, &attach(K, V), Err(Errno::EINVAL));
        // Wired vktest: the fd decides.
        let m = wired();
        only(&m, &attach(K, FdArg::Closed(900)), Err(Errno::EBADF));
        only(&m, &attach(K, FdArg::Unbind), Err(Errno::EBADF));
        for fd in [E[0], TAP, NULL, PLAIN, K, L] {
            only(&m, &attach(K, fd), Err(Errno::EINVAL));
        }
        // A -kernel vhost without SET_OWNER: the owner check (EPERM), before the IOTLB.
        only(&m, &attach(K, W), Err(Errno::EPERM));
        let mut m = wired();
        feed(&mut m, &[(Op::SetFeatures(W, crate::vhost::RFC_FEATURES), Ok(()))]);
        only(&m, &attach(K, W), Err(Errno::EPERM));
        // Owned, but no IOTLB: no features, features without ACCESS_PLATFORM,
        // or ACCESS_PLATFORM set and then cleared.
        let mut m = wired();
        feed(&mut m, &[(Op::SetOwner(W), Ok(()))]);
        only(&m, &attach(K, W), Err(Errno::EINVAL));
        feed(&mut m, &[(Op::SetFeatures(W, ioctl::VIRTIO_F_VERSION_1), Ok(()))]);
        only(&m, &attach(K, W), Err(Errno::EINVAL));
        feed(&mut m, &[(Op::SetFeatures(W, crate::vhost::RFC_FEATURES), Ok(()))]);
        only(&m, &attach(K, W), Ok(()));
        feed(&mut m, &[(Op::SetFeatures(W, ioctl::VIRTIO_F_VERSION_1), Ok(()))]);
        only(&m, &attach(K, W), Err(Errno::EINVAL));
        // A failed SET_FEATURES changes nothing.
        feed(&mut m, &[(Op::SetFeatures(W, crate::vhost::RFC_FEATURES | VHOST_F_LOG_ALL), Err(Errno::EOPNOTSUPP))]);
        only(&m, &attach(K, W), Err(Errno::EINVAL));
        // An attached vktest: EBUSY before anything about the fd.
        let m = attached(V, K);
        for fd in [V, W, FdArg::Closed(900), E[0]] {
            only(&m, &attach(K, fd), Err(Errno::EBUSY));
        }
        // A vhost attached to another vktest: EBUSY, also once that vktest is closed.
        let mut m = attached(V, K);
        let mut s = wiring(V, L);
        s.retain(|(op, _)| matches!(op, Op::VktestVringFd { .. }));
        feed(&mut m, &s);
        only(&m, &attach(L, V), Err(Errno::EBUSY));
        feed(&mut m, &[(Op::Close(K), Ok(()))]);
        only(&m, &attach(L, V), Err(Errno::EBUSY));
    }

    #[test]
    fn vktest_keeps_its_vhost_after_the_vhost_fd_is_closed() {
        let mut m = attached(V, K);
        feed(&mut m, &[(Op::Close(V), Ok(()))]);
        let rfc = crate::vhost::RFC_FEATURES;
        // The fd and index are checked before the attached state.
        only(&m, &kick(K, false, 0, E[1]), Err(Errno::EBUSY));
        only(&m, &kick(K, true, 1, FdArg::Unbind), Err(Errno::EBUSY));
        only(&m, &kick(K, false, 1, FdArg::Closed(900)), Err(Errno::EBADF));
        only(&m, &kick(K, false, 1, TAP), Err(Errno::EINVAL));
        only(&m, &kick(K, false, 2, E[1]), Err(Errno::EINVAL));
        only(&m, &Op::VktestSetFeatures(K, rfc), Err(Errno::EBUSY));
        only(&m, &Op::VktestSetFeatures(K, ioctl::VIRTIO_F_VERSION_1), Err(Errno::EINVAL));
        only(&m, &Op::NullArg { target: K, req: ioctl::VKTEST_SET_FEATURES }, Err(Errno::EFAULT));
        only(&m, &Op::Attach { target: K, fd: W }, Err(Errno::EBUSY));
        only(&m, &Op::WrongTarget { target: K, req: ioctl::VHOST_SET_OWNER }, Err(Errno::ENOTTY));
        // Before any attach the same calls succeed.
        let m = Model::default();
        only(&m, &kick(K, false, 0, E[1]), Ok(()));
        only(&m, &Op::VktestSetFeatures(K, rfc), Ok(()));
    }

    #[test]
    fn vhost_calls_follow_the_owner_and_the_order_of_checks() {
        let mut m = Model::default();
        // Before SET_OWNER: the vring and backend calls fail the owner check
        // (SET_BACKEND only after copying its argument), features do not need it.
        only(&m, &kick(V, false, 0, E[0]), Err(Errno::EPERM));
        only(&m, &kick(V, false, 9, FdArg::Closed(900)), Err(Errno::EPERM));
        only(&m, &Op::SetBackend { target: V, index: 0, fd: TAP }, Err(Errno::EPERM));
        only(&m, &Op::NullArg { target: V, req: ioctl::VHOST_SET_VRING_KICK }, Err(Errno::EPERM));
        only(&m, &Op::NullArg { target: V, req: ioctl::VHOST_NET_SET_BACKEND }, Err(Errno::EFAULT));
        only(&m, &Op::WrongTarget { target: V, req: ioctl::VKTEST_SET_FEATURES }, Err(Errno::EPERM));
        only(&m, &Op::SetFeatures(V, crate::vhost::RFC_FEATURES), Ok(()));
        only(&m, &Op::GetFeatures(V), Ok(()));
        only(&m, &Op::Refused { target: V, req: ioctl::VHOST_SET_MEM_TABLE, value: 0 }, Err(Errno::EPERM));
        only(&m, &Op::SetOwner(V), Ok(()));
        feed(&mut m, &[(Op::SetOwner(V), Ok(()))]);
        only(&m, &Op::SetOwner(V), Err(Errno::EBUSY));
        only(&m, &kick(V, false, 0, E[0]), Ok(()));
        only(&m, &kick(V, true, 1, FdArg::Unbind), Ok(()));
        only(&m, &kick(V, false, 2, E[0]), Err(Errno::ENOBUFS));
        only(&m, &kick(V, false, 0, FdArg::Closed(900)), Err(Errno::EBADF));
        only(&m, &kick(V, true, 0, TAP), Err(Errno::EINVAL));
        only(&m, &Op::SetBackend { target: V, index: 1, fd: FdArg::Unbind }, Ok(()));
        only(&m, &Op::SetBackend { target: V, index: 2, fd: TAP }, Err(Errno::ENOBUFS));
        only(&m, &Op::SetBackend { target: V, index: 0, fd: E[0] }, Err(Errno::ENOTSOCK));
        only(&m, &Op::SetBackend { target: V, index: 0, fd: FdArg::Closed(900) }, Err(Errno::ENOTSOCK));
        only(&m, &Op::NullArg { target: V, req: ioctl::VHOST_SET_VRING_KICK }, Err(Errno::EFAULT));
        only(&m, &Op::WrongTarget { target: V, req: ioctl::VKTEST_SET_FEATURES }, Err(Errno::ENOTTY));
        only(&m, &Op::WrongTarget { target: V, req: ioctl::VKTEST_ATTACH_VHOST }, Err(Errno::EFAULT));
        only(&m, &Op::WrongTarget { target: TAP, req: ioctl::VHOST_SET_OWNER }, Err(Errno::EINVAL));
        only(&m, &Op::WrongTarget { target: E[0], req: ioctl::VHOST_GET_FEATURES }, Err(Errno::ENOTTY));
        only(&m, &Op::WrongTarget { target: NULL, req: ioctl::VKTEST_ATTACH_VHOST }, Err(Errno::ENOTTY));
    }

    #[test]
    fn the_model_follows_what_the_kernel_did() {
        // A success the model did not expect is reported, and the model then
        // goes on from the kernel's state (no cascade of follow-up reports).
        let mut m = Model::default();
        feed(&mut m, &wiring(V, K));
        feed(&mut m, &[(Op::SetFeatures(V, ioctl::VIRTIO_F_VERSION_1), Ok(()))]);
        let why = m.step(&Op::Attach { target: K, fd: V }, Ok(())).expect("no IOTLB: the attach must fail");
        assert!(why.contains("EINVAL"), "{why}");
        only(&m, &Op::GetFeatures(V), Err(Errno::EPERM));
        only(&m, &Op::Attach { target: K, fd: W }, Err(Errno::EBUSY));
    }
}
