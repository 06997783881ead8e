//! The oracle: the state of every object of a phase and the one result
//! each call must have in it (the table in the module documentation of
//! `fuzz`).

use std::collections::BTreeMap;

use anyhow::Result;
use nix::errno::Errno;

use crate::sys::ioctl::{self};

use super::*;

/// The one result the interface gives for a call in the state the model knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Success,
    Fail(Errno),
    /// Either (where the kernel may have changed the state unseen: an
    /// eventfd's counter it signals or reads).
    SuccessOr(Errno),
}

impl Expect {
    /// None if `res` is the expected result, else what is wrong.
    pub fn judge(self, res: Result<(), Errno>) -> Option<String> {
        match (self, res) {
            (Expect::Success | Expect::SuccessOr(_), Ok(())) => None,
            (Expect::Fail(want) | Expect::SuccessOr(want), Err(e)) if e == want => None,
            (Expect::Fail(want), Ok(())) => Some(format!("succeeded, but must fail with {want:?}")),
            (Expect::Success, Err(e)) => Some(format!("failed with {e:?} ({}), but must succeed", e.desc())),
            (Expect::Fail(want), Err(e)) => {
                Some(format!("failed with {e:?} ({}), but must fail with {want:?}", e.desc()))
            }
            (Expect::SuccessOr(want), Err(e)) => {
                Some(format!("failed with {e:?} ({}), but must succeed or fail with {want:?}", e.desc()))
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
pub(super) const VHOST_F_LOG_ALL: u64 = 1 << 26;
const VIRTIO_F_RING_RESET: u64 = 1 << 40;
/// What /dev/vhost-net-kernel offers and accepts: no dirty logging (kernel
/// memory is not migrated), no ring reset (only the kernel driver could).
pub(super) const VHOST_NET_KERNEL_FEATURES: u64 = VHOST_NET_FEATURES & !(VHOST_F_LOG_ALL | VIRTIO_F_RING_RESET);

/// Features on which vktest and the vhost device must agree for the attach
/// (vktest_features_agree): the header layout and the notifications.
const SHARED_FEATURES: u64 = ioctl::VIRTIO_F_VERSION_1 | ioctl::VIRTIO_NET_F_MRG_RXBUF | ioctl::VIRTIO_RING_F_EVENT_IDX;

/// vktest_features_agree: `offered` by vktest, `acked` by vhost.
pub(super) fn features_agree(offered: u64, acked: u64) -> bool {
    (offered ^ acked) & SHARED_FEATURES == 0 && offered & !acked & ioctl::VIRTIO_RING_F_INDIRECT_DESC == 0
}

/// What the model knows of one /dev/vhost-net-kernel device.
///
/// Its kick and call per queue are not kept: no answer depends on them
/// (vhost_dev_get() does not look at them, SET_VRING_KICK/CALL replace an
/// eventfd). The backends and features are: the take-over needs both
/// backends (ENOTCONN) and features that agree with vktest's (EINVAL).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(super) struct VhostState {
    /// VHOST_SET_OWNER succeeded (one process here: we are the owner).
    pub(super) owned: bool,
    /// The last successful VHOST_SET_FEATURES had ACCESS_PLATFORM: the device
    /// has its IOTLB (a later one without it clears the IOTLB again).
    pub(super) iotlb: bool,
    /// The bits of the last successful VHOST_SET_FEATURES.
    pub(super) features: u64,
    /// A TAP is recorded as the backend of queue 0 and 1.
    pub(super) backend: [bool; 2],
    /// Taken over by this vktest (kernel_attached): every ioctl is EPERM from
    /// then on, for the life of the device, also once that vktest is closed.
    pub(super) attached_to: Option<u32>,
    /// Our fd is closed (a vktest that took it over still holds the file).
    pub(super) closed: bool,
}

/// What the model knows of one /dev/vktest device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(super) struct VktestState {
    /// An eventfd is set as the kick / call of queue 0 and 1.
    pub(super) kick: [bool; 2],
    pub(super) call: [bool; 2],
    /// The bits of the last successful VKTEST_SET_FEATURES; None: the
    /// default, the RFC's set.
    pub(super) offered: Option<u64>,
    /// The fd it attached (vt->vhost): kept until this vktest is closed, also
    /// when the vhost fd is closed (vktest holds the vhost's file).
    pub(super) attached: Option<FdArg>,
    pub(super) closed: bool,
}

/// What the model knows of one eventfd.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(super) struct EventfdState {
    /// The counter, from our writes and reads: exact while the kernel has
    /// never been given the eventfd; once it has, an upper bound less the
    /// signals of the kernel (each +1; it may also have read it).
    pub(super) count: u64,
    /// A SET_VRING_KICK/CALL with it succeeded (on either node).
    pub(super) shared: bool,
}

/// More signals than the kernel can send an eventfd in a run: a write that
/// stays this far from the counter's limit cannot overflow.
const KERNEL_SIGNALS: u64 = 1 << 40;

/// The oracle: the state of every object of a phase, from the results of
/// the calls so far, and from it the one result the next call must have.
///
/// The answers and the order of the checks are those of the series
/// (kernel-patches/0002-0004: vhost_kernel_ioctl_check, vhost_dev_get,
/// vhost_net_kernel_ioctl, vktest_ioctl) and of the 6.12 code they call
/// (vhost_net_ioctl, vhost_dev_ioctl, vhost_vring_ioctl, eventfd_fget,
/// get_socket, tun's ioctl); the module documentation has the table.
/// Objects appear at their first use (ids are never reused in a phase).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Model {
    vhosts: BTreeMap<u32, VhostState>,
    vktests: BTreeMap<u32, VktestState>,
    eventfds: BTreeMap<u32, EventfdState>,
}

pub(super) fn obj_id(a: FdArg) -> Option<u32> {
    match a {
        FdArg::Obj(_, _, id) => Some(id),
        _ => None,
    }
}

pub(super) fn obj_kind(a: FdArg) -> Option<Kind> {
    match a {
        FdArg::Obj(k, _, _) => Some(k),
        _ => None,
    }
}

impl Model {
    pub(super) fn vhost(&self, a: FdArg) -> VhostState {
        obj_id(a).and_then(|id| self.vhosts.get(&id)).cloned().unwrap_or_default()
    }

    pub(super) fn vktest(&self, a: FdArg) -> VktestState {
        obj_id(a).and_then(|id| self.vktests.get(&id)).cloned().unwrap_or_default()
    }

    pub(super) fn eventfd(&self, a: FdArg) -> EventfdState {
        obj_id(a).and_then(|id| self.eventfds.get(&id)).cloned().unwrap_or_default()
    }

    pub(super) fn eventfd_mut(&mut self, a: FdArg) -> Option<&mut EventfdState> {
        obj_id(a).filter(|_| obj_kind(a) == Some(Kind::Eventfd)).map(|id| self.eventfds.entry(id).or_default())
    }

    pub(super) fn vhost_mut(&mut self, a: FdArg) -> Option<&mut VhostState> {
        obj_id(a).map(|id| self.vhosts.entry(id).or_default())
    }

    pub(super) fn vktest_mut(&mut self, a: FdArg) -> Option<&mut VktestState> {
        obj_id(a).map(|id| self.vktests.entry(id).or_default())
    }

    /// The result `op` must have now.
    pub fn expect(&self, op: &Op) -> Expect {
        use Errno::*;
        use Expect::{Fail, Success, SuccessOr};
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
            | Op::SetBusyloop { target: t, .. }
            | Op::GetBusyloop { target: t, .. }
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
            // Bits outside what the -kernel node offers (LOG_ALL and
            // RING_RESET are not offered): EOPNOTSUPP. The IOTLB
            // allocation of ACCESS_PLATFORM (EFAULT if it fails) is a small
            // GFP_KERNEL one, which does not fail.
            Op::SetFeatures(_, bits) => {
                if bits & !VHOST_NET_KERNEL_FEATURES != 0 {
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
            // (EPERM), taken over already (EBUSY), an IOTLB (EINVAL), a
            // backend per queue (ENOTCONN); then vktest_features_agree
            // (EINVAL).
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
                        } else if !(v.backend[0] && v.backend[1]) {
                            Fail(ENOTCONN)
                        } else if !features_agree(k.offered.unwrap_or(crate::sys::vhost::RFC_FEATURES), v.features) {
                            Fail(EINVAL)
                        } else {
                            Success
                        }
                    }
                    _ => Fail(EINVAL),
                }
            }
            // vhost_dev_ioctl's owner check, then vhost_vring_ioctl's index
            // (as SET_VRING_KICK): per queue, allowed before the attach.
            Op::SetBusyloop { target, index, .. } | Op::GetBusyloop { target, index } => {
                if !self.vhost(*target).owned {
                    Fail(EPERM)
                } else if *index >= 2 {
                    Fail(ENOBUFS)
                } else {
                    Success
                }
            }
            // eventfd_write: ULLONG_MAX is no value (EINVAL); a counter
            // that would reach ULLONG_MAX makes a non-blocking write EAGAIN.
            Op::WriteEventfd(t, v) => {
                let e = self.eventfd(*t);
                if *v == u64::MAX {
                    Fail(EINVAL)
                } else if !e.shared {
                    if u64::MAX - e.count > *v {
                        Success
                    } else {
                        Fail(EAGAIN)
                    }
                } else if e.count.saturating_add(*v).saturating_add(KERNEL_SIGNALS) < u64::MAX {
                    Success
                } else {
                    SuccessOr(EAGAIN)
                }
            }
            // eventfd_read: EAGAIN for a counter of 0.
            Op::ReadEventfd(t) => {
                let e = self.eventfd(*t);
                if e.shared {
                    SuccessOr(EAGAIN)
                } else if e.count == 0 {
                    Fail(EAGAIN)
                } else {
                    Success
                }
            }
            Op::NullArg { target, req } => {
                // The vring ioctls check the owner before reading the index;
                // GET/SET_FEATURES and the -kernel SET_BACKEND copy first.
                let vring = *req == ioctl::VHOST_SET_VRING_KICK || *req == ioctl::VHOST_SET_VRING_BUSYLOOP_TIMEOUT;
                if is(target, Kind::VhostKernel) && vring && !self.vhost(*target).owned {
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
            Op::ReadEventfd(t) if matches!(res, Ok(()) | Err(Errno::EAGAIN)) => {
                self.eventfd_mut(*t).into_iter().for_each(|e| e.count = 0)
            }
            _ if res.is_err() => {}
            Op::WriteEventfd(t, v) => {
                self.eventfd_mut(*t).into_iter().for_each(|e| e.count = e.count.saturating_add(*v))
            }
            Op::SetOwner(t) => self.vhost_mut(*t).into_iter().for_each(|v| v.owned = true),
            Op::SetFeatures(t, bits) => {
                let iotlb = bits & ioctl::VIRTIO_F_ACCESS_PLATFORM != 0;
                self.vhost_mut(*t).into_iter().for_each(|v| {
                    v.iotlb = iotlb;
                    v.features = *bits;
                });
            }
            Op::SetBackend { target, index, fd } if *index < 2 => {
                let tap = obj_kind(*fd) == Some(Kind::Tap);
                self.vhost_mut(*target).into_iter().for_each(|v| v.backend[*index as usize] = tap);
            }
            Op::VktestSetFeatures(t, bits) => self.vktest_mut(*t).into_iter().for_each(|k| k.offered = Some(*bits)),
            Op::VktestVringFd { target, call, index, fd } if *index < 2 => {
                self.eventfd_mut(*fd).into_iter().for_each(|e| e.shared = true);
                let set = *fd != FdArg::Unbind;
                if let Some(k) = self.vktest_mut(*target) {
                    if *call {
                        k.call[*index as usize] = set;
                    } else {
                        k.kick[*index as usize] = set;
                    }
                }
            }
            // The kernel holds the eventfd (also a wrong success at index >= 2).
            Op::VhostVringFd { fd, .. } | Op::VktestVringFd { fd, .. } => {
                self.eventfd_mut(*fd).into_iter().for_each(|e| e.shared = true)
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
    pub(super) fn describe(&self, op: &Op) -> String {
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

    pub(super) fn state_of(&self, a: FdArg) -> Option<String> {
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
            Kind::Eventfd => {
                let e = self.eventfd(a);
                s.push(format!(
                    "counter {:#x}{}",
                    e.count,
                    if e.shared { " or less, given to the kernel" } else { "" }
                ));
            }
            _ => return None,
        }
        Some(format!("{}#{id}: {}", kind.label(), s.join(", ")))
    }
}

/// One call of a round of concurrent calls and what the kernel answered.
pub type Answered = (Op, Result<(), Errno>);

/// Most states kept as possible after a round (a harness limit: far more
/// than rounds of a few threads produce; past it the run stops, as a
/// harness failure rather than a guess).
const MAX_STATES: usize = 4096;

/// The oracle of concurrent calls. `states` are the states the objects may
/// be in before a round (several, when earlier rounds could have run in
/// more than one order with different effects); `round` are calls that ran
/// at the same time (each on its own thread, none before the round began,
/// all done when it ended). The kernel must have run them in some order,
/// one at a time (an ioctl is atomic with respect to the state the model
/// keeps): the answers are right if some order of the calls, from some of
/// the states, gives each call its one expected answer. Ok(the states
/// after all such orders), or Err(what is wrong) if there is none.
pub fn linearize(states: &[Model], round: &[Answered]) -> Result<Vec<Model>, String> {
    let mut after = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for s in states {
        orders(s, round, 0, &mut seen, &mut after)?;
    }
    if !after.is_empty() {
        return Ok(after);
    }
    let s = &states[0];
    // For each call: its answer judged first in the round and last in it
    // (after the others, in the threads' order).
    let each: Vec<String> = round
        .iter()
        .enumerate()
        .map(|(i, (op, res))| {
            let mut last = s.clone();
            round.iter().enumerate().filter(|&(j, _)| j != i).for_each(|(_, (o, r))| last.update(o, *r));
            let judged = |m: &Model| m.expect(op).judge(*res).unwrap_or_else(|| "right".into());
            format!(
                "[{op} -> {}: first: {} ({}); last: {} ({})]",
                show(*res),
                judged(s),
                s.describe(op),
                judged(&last),
                last.describe(op)
            )
        })
        .collect();
    Err(format!(
        "no order of these {} concurrent calls gives their answers, from any of {} possible states: {}",
        round.len(),
        states.len(),
        each.join(" ")
    ))
}

fn show(res: Result<(), Errno>) -> String {
    match res {
        Ok(()) => "ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

/// Depth-first over the orders of the calls not in `done` (a bit mask),
/// each state and set of calls visited once.
fn orders(
    m: &Model,
    round: &[Answered],
    done: u64,
    seen: &mut std::collections::HashSet<(u64, Model)>,
    out: &mut Vec<Model>,
) -> Result<(), String> {
    if !seen.insert((done, m.clone())) {
        return Ok(());
    }
    if done.count_ones() as usize == round.len() {
        if out.len() >= MAX_STATES {
            return Err(format!("more than {MAX_STATES} possible states after a round (harness limit)"));
        }
        out.push(m.clone());
        return Ok(());
    }
    for (i, (op, res)) in round.iter().enumerate() {
        if done & (1 << i) == 0 && m.expect(op).judge(*res).is_none() {
            let mut next = m.clone();
            next.update(op, *res);
            orders(&next, round, done | 1 << i, seen, out)?;
        }
    }
    Ok(())
}
