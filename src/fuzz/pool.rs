//! The objects open in a phase: drawing the next calls from them, and
//! making each call.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::sys::ioctl::{self, VhostMemory, VhostVringAddr, VhostVringFile, VhostVringState};
use crate::sys::tap::{Tap, TAP_TEMPLATE};
use crate::sys::vhost::{open_ro, VHOST_NET_KERNEL_PATH, VHOST_NET_PATH};
use crate::sys::vktest::VKTEST_PATH;

use super::*;

pub(super) struct Obj {
    pub(super) kind: Kind,
    pub(super) id: u32,
    pub(super) fd: OwnedFd,
}

/// What a phase has open.
#[derive(Default)]
pub(super) struct Pool {
    pub(super) objs: Vec<Obj>,
    pub(super) next_id: u32,
    pub(super) plain_vhost: bool,
}

impl Pool {
    pub(super) fn arg(&self, i: usize) -> FdArg {
        let o = &self.objs[i];
        FdArg::Obj(o.kind, o.fd.as_raw_fd(), o.id)
    }

    pub(super) fn of_kind(&self, kinds: &[Kind]) -> Vec<usize> {
        (0..self.objs.len()).filter(|&i| kinds.contains(&self.objs[i].kind)).collect()
    }

    pub(super) fn count(&self, k: Kind) -> usize {
        self.objs.iter().filter(|o| o.kind == k).count()
    }

    pub(super) fn find(&self, a: FdArg) -> Option<&Obj> {
        match a {
            FdArg::Obj(_, _, id) => self.objs.iter().find(|o| o.id == id),
            _ => None,
        }
    }

    pub(super) fn open(&mut self, kind: Kind) -> Result<FdArg> {
        let fd: OwnedFd = match kind {
            Kind::VhostKernel => open_ro(VHOST_NET_KERNEL_PATH)?.into(),
            Kind::VhostPlain => open_ro(VHOST_NET_PATH)?.into(),
            Kind::Vktest => open_ro(VKTEST_PATH)?.into(),
            // Non-blocking: a write that would overflow the counter is
            // EAGAIN instead of a hang (the kernel's own signals ignore it).
            Kind::Eventfd => EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .context("eventfd")?
                .into(),
            Kind::Tap => Tap::create_vhost_backend(TAP_TEMPLATE)?.into_owned_fd(),
            Kind::DevNull => open_ro("/dev/null")?.into(),
        };
        self.next_id += 1;
        self.objs.push(Obj { kind, id: self.next_id, fd });
        Ok(self.arg(self.objs.len() - 1))
    }
}

/// A number with no open file behind it (well above what a phase opens).
pub(super) fn closed_fd(rng: &mut Rng) -> RawFd {
    loop {
        let n = 700 + rng.below(300) as RawFd;
        if !std::path::Path::new(&format!("/proc/self/fd/{n}")).exists() {
            return n;
        }
    }
}

pub(super) fn random_index(rng: &mut Rng) -> u32 {
    match rng.below(10) {
        0..=5 => rng.below(2) as u32,
        6 => 2,
        7 => rng.pick(&[3, 255, 256, 0x8000_0000]),
        8 => u32::MAX,
        _ => rng.next_u64() as u32,
    }
}

pub(super) fn random_features(rng: &mut Rng) -> u64 {
    let rfc = crate::sys::vhost::RFC_FEATURES;
    match rng.below(8) {
        0..=2 => rfc | (rng.next_u64() & (VHOST_NET_FEATURES & !VHOST_F_LOG_ALL)),
        3 => rfc,
        4 => rfc | (rng.next_u64() & crate::sys::vhost::OPTIONAL_FEATURES),
        5 => rng.next_u64() & (VHOST_NET_FEATURES | crate::sys::vhost::OPTIONAL_FEATURES),
        6 => 1u64 << rng.below(64),
        _ => rng.next_u64(),
    }
}

/// A busy-poll timeout in microseconds: mostly short, now and then none
/// (0 turns it off), long, or the largest (the worker then polls until the
/// scheduler wants its CPU back).
pub(super) fn random_timeout(rng: &mut Rng) -> u32 {
    match rng.below(20) {
        0..=4 => 0,
        5..=16 => 1 + rng.below(200) as u32,
        17..=18 => 1000 + rng.below(50_000) as u32,
        _ => u32::MAX,
    }
}

/// A value to write to an eventfd: mostly small; now and then 0, the
/// forbidden ULLONG_MAX, or one that leaves the counter at its limit (the
/// next write would overflow it: EAGAIN).
pub(super) fn random_eventfd_value(rng: &mut Rng) -> u64 {
    match rng.below(20) {
        0..=14 => 1 + rng.below(1000),
        15 => 0,
        16 => u64::MAX,
        17 => u64::MAX - 1,
        _ => u64::MAX - 1 - rng.below(1 << 20),
    }
}

impl Pool {
    /// An eventfd to write or read: usually one of the four a wiring
    /// recipe gives the kernel (the last four opened).
    pub(super) fn eventfd(&self, rng: &mut Rng) -> Option<FdArg> {
        let efds = self.of_kind(&[Kind::Eventfd]);
        let recent = &efds[efds.len().saturating_sub(4)..];
        match (recent.is_empty(), rng.below(4)) {
            (true, _) => None,
            (false, 0) => self.target(rng, &[Kind::Eventfd]),
            _ => Some(self.arg(recent[rng.below(recent.len() as u64) as usize])),
        }
    }

    pub(super) fn fd_arg(&self, rng: &mut Rng) -> FdArg {
        match rng.below(20) {
            0 | 1 => FdArg::Closed(closed_fd(rng)),
            2 => FdArg::Unbind,
            _ if self.objs.is_empty() => FdArg::Unbind,
            _ => self.arg(rng.below(self.objs.len() as u64) as usize),
        }
    }

    /// An object of `kinds` (sometimes of any kind: wrong-kind arguments).
    pub(super) fn target(&self, rng: &mut Rng, kinds: &[Kind]) -> Option<FdArg> {
        let of = self.of_kind(kinds);
        if of.is_empty() {
            None
        } else {
            Some(self.arg(of[rng.below(of.len() as u64) as usize]))
        }
    }

    pub(super) fn eventfd_or_any(&self, rng: &mut Rng) -> FdArg {
        if rng.below(4) != 0 {
            if let Some(a) = self.target(rng, &[Kind::Eventfd]) {
                return a;
            }
        }
        self.fd_arg(rng)
    }

    /// The next calls (usually one; a wiring recipe gives several).
    pub(super) fn draw(&self, rng: &mut Rng) -> Vec<Op> {
        let vhost = self.target(rng, &[Kind::VhostKernel]);
        let vk = self.target(rng, &[Kind::Vktest]);
        if self.objs.len() >= MAX_OBJS {
            return vec![Op::Close(self.arg(rng.below(self.objs.len() as u64) as usize))];
        }
        let r = rng.below(114);
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
                    crate::sys::vhost::RFC_FEATURES | (rng.next_u64() & crate::sys::vhost::OPTIONAL_FEATURES)
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
                        ioctl::VHOST_SET_VRING_BUSYLOOP_TIMEOUT,
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
            (100..=107, ..) => match self.eventfd(rng) {
                Some(e) => vec![Op::WriteEventfd(e, random_eventfd_value(rng))],
                None => open(Kind::Eventfd),
            },
            (108, ..) => match self.eventfd(rng) {
                Some(e) => vec![Op::ReadEventfd(e)],
                None => open(Kind::Eventfd),
            },
            (109..=112, Some(target), _) => {
                vec![Op::SetBusyloop { target, index: random_index(rng), timeout: random_timeout(rng) }]
            }
            (113, Some(target), _) => vec![Op::GetBusyloop { target, index: random_index(rng) }],
            (_, None, _) => open(Kind::VhostKernel),
            _ => open(Kind::Vktest),
        }
    }

    /// The valid wiring of `v` and `k` (the serve flow), with the existing
    /// eventfds and TAP, then the attach: so that attaches do succeed and the
    /// calls after them are exercised. Half of the time with busy polling
    /// on both queues (the worker then polls the paired queue), and often
    /// with writes to the kick and call eventfds right after the attach,
    /// while virtio-net probes the device.
    pub(super) fn recipe(&self, rng: &mut Rng, v: FdArg, k: FdArg) -> Vec<Op> {
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
        ops.push(Op::SetFeatures(v, crate::sys::vhost::RFC_FEATURES));
        ops.push(Op::SetBackend { target: v, index: 0, fd: tap });
        ops.push(Op::SetBackend { target: v, index: 1, fd: tap });
        if rng.below(2) == 0 {
            for index in 0..2 {
                ops.push(Op::SetBusyloop { target: v, index, timeout: 1 + rng.below(200) as u32 });
            }
        }
        ops.push(Op::Attach { target: k, fd: v });
        for _ in 0..rng.below(4) {
            ops.push(Op::WriteEventfd(e[rng.below(4) as usize], 1));
        }
        ops
    }

    /// Perform `op`; Ok(result of the call) or Err for a harness failure (an open).
    pub(super) fn run(&mut self, op: &Op) -> Result<Result<(), Errno>> {
        match op {
            Op::Open(k) => {
                self.open(*k)?;
                Ok(Ok(()))
            }
            Op::Close(a) => {
                let id = self.find(*a).map(|x| x.id);
                self.objs.retain(|o| Some(o.id) != id);
                Ok(Ok(()))
            }
            _ => self.call(op),
        }
    }

    /// Whether `op`, drawn earlier, can still be made as drawn: the objects
    /// it names are open and its closed fd numbers still closed (a thread's
    /// queued calls, after another thread's open or close).
    pub(super) fn still_valid(&self, op: &Op) -> bool {
        op.fds().into_iter().all(|a| match a {
            FdArg::Obj(..) => self.find(a).is_some(),
            FdArg::Closed(n) => !std::path::Path::new(&format!("/proc/self/fd/{n}")).exists(),
            FdArg::Unbind => true,
        })
    }

    /// Make a call other than open/close (which need `&mut`); several
    /// threads may do so at once on the same objects.
    pub(super) fn call(&self, op: &Op) -> Result<Result<(), Errno>> {
        let Some(obj) = op.target().and_then(|t| self.find(t)) else {
            anyhow::bail!("{op}: target not open (harness bug)");
        };
        let target = obj.fd.as_fd();
        let vf = |index: u32, fd: FdArg| VhostVringFile { index, fd: fd.raw() };
        let kc = |call: bool| if call { ioctl::VHOST_SET_VRING_CALL } else { ioctl::VHOST_SET_VRING_KICK };
        Ok(match op {
            Op::Open(_) | Op::Close(_) => anyhow::bail!("{op}: not a call (harness bug)"),
            Op::SetBusyloop { index, timeout, .. } => {
                let s = VhostVringState { index: *index, num: *timeout };
                // SAFETY: VHOST_SET_VRING_BUSYLOOP_TIMEOUT reads one struct vhost_vring_state.
                unsafe { ioctl::ioctl_with_ref(target, ioctl::VHOST_SET_VRING_BUSYLOOP_TIMEOUT, &s) }
            }
            Op::GetBusyloop { index, .. } => {
                let mut s = VhostVringState { index: *index, num: 0 };
                // SAFETY: VHOST_GET_VRING_BUSYLOOP_TIMEOUT reads and writes
                // one struct vhost_vring_state.
                unsafe { ioctl::ioctl_with_mut(target, ioctl::VHOST_GET_VRING_BUSYLOOP_TIMEOUT, &mut s) }
            }
            Op::WriteEventfd(_, v) => match nix::unistd::write(target, &v.to_ne_bytes()) {
                Ok(8) => Ok(()),
                Ok(n) => anyhow::bail!("{op}: {n} bytes written, an eventfd takes 8 or none"),
                Err(e) => Err(e),
            },
            Op::ReadEventfd(_) => {
                let mut b = [0u8; 8];
                match nix::unistd::read(target, &mut b) {
                    Ok(8) => Ok(()),
                    Ok(n) => anyhow::bail!("{op}: {n} bytes read, an eventfd gives 8 or none"),
                    Err(e) => Err(e),
                }
            }
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
                        // vhost_vring_addr. The random addresses in it are
                        // user addresses to the kernel: a kernel that wrongly
                        // accepted them could later copy_to_user into memory
                        // of ours that happens to be mapped there, the bug
                        // this call exists to catch (the kernel node must
                        // refuse it, EPERM).
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
