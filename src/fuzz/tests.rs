//! The oracle, the generator and the plan of phases, without a kernel.

use super::model::*;
use super::ops::*;
use super::*;
use crate::sys::ioctl;
use nix::errno::Errno;

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
    let log_all = Op::SetFeatures(v, VHOST_F_LOG_ALL | crate::sys::vhost::RFC_FEATURES);
    assert!(m.expect(&log_all).judge(Ok(())).is_some());
    assert_eq!(m.expect(&log_all).judge(Err(Errno::EOPNOTSUPP)), None);
    assert_eq!(m.expect(&Op::SetFeatures(v, crate::sys::vhost::RFC_FEATURES)).judge(Ok(())), None);
    // A report names the state that made the answer.
    let why = m.clone().step(&attach(W), Ok(())).unwrap();
    assert!(why.contains("must fail with EPERM") && why.contains("no owner, no IOTLB"), "{why}");
    assert!(why.contains("vktest#2: kick 11 call 11"), "{why}");
    let off = crate::sys::vhost::FeatureSet::offloads().bits;
    assert!(vktest_features_valid(off) && vktest_features_valid(crate::sys::vhost::RFC_FEATURES));
    // 6.12's VHOST_NET_FEATURES, as the kernel has it.
    assert_eq!(VHOST_NET_FEATURES, 0x103_3d00_8000);
    assert!(!vktest_features_valid(off & !crate::sys::ioctl::VIRTIO_NET_F_CSUM));
    assert!(!vktest_features_valid(crate::sys::ioctl::VIRTIO_F_VERSION_1));
    assert!(!vktest_features_valid(crate::sys::vhost::RFC_FEATURES | 1 << 50));
}

#[test]
fn phases_split_the_count() {
    let o = |limit, phase| FuzzOpts {
        seed: 1,
        limit,
        phase,
        timeout: Duration::from_secs(1),
        kmsg_path: String::new(),
        threads: 1,
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
    Err(Errno::EAGAIN),
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
    s.push((Op::SetFeatures(v, crate::sys::vhost::RFC_FEATURES), Ok(())));
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
    let rfc = crate::sys::vhost::RFC_FEATURES;
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
    feed(&mut m, &[(Op::SetFeatures(W, crate::sys::vhost::RFC_FEATURES), Ok(()))]);
    only(&m, &attach(K, W), Err(Errno::EPERM));
    // Owned, but no IOTLB: no features, features without ACCESS_PLATFORM,
    // or ACCESS_PLATFORM set and then cleared.
    let mut m = wired();
    feed(&mut m, &[(Op::SetOwner(W), Ok(()))]);
    only(&m, &attach(K, W), Err(Errno::EINVAL));
    feed(&mut m, &[(Op::SetFeatures(W, ioctl::VIRTIO_F_VERSION_1), Ok(()))]);
    only(&m, &attach(K, W), Err(Errno::EINVAL));
    feed(&mut m, &[(Op::SetFeatures(W, crate::sys::vhost::RFC_FEATURES), Ok(()))]);
    // An IOTLB, but a queue without its backend (v2: ENOTCONN), also one
    // unbound again.
    only(&m, &attach(K, W), Err(Errno::ENOTCONN));
    feed(&mut m, &[(Op::SetBackend { target: W, index: 0, fd: TAP }, Ok(()))]);
    only(&m, &attach(K, W), Err(Errno::ENOTCONN));
    feed(&mut m, &[(Op::SetBackend { target: W, index: 1, fd: TAP }, Ok(()))]);
    only(&m, &attach(K, W), Ok(()));
    feed(&mut m, &[(Op::SetBackend { target: W, index: 1, fd: FdArg::Unbind }, Ok(()))]);
    only(&m, &attach(K, W), Err(Errno::ENOTCONN));
    feed(&mut m, &[(Op::SetBackend { target: W, index: 1, fd: TAP }, Ok(()))]);
    // Ring features vktest and vhost disagree on (v2: EINVAL); INDIRECT_DESC
    // may be vhost's alone.
    let rfc = crate::sys::vhost::RFC_FEATURES;
    for (offered, acked, ok) in [
        (rfc | ioctl::VIRTIO_NET_F_MRG_RXBUF, rfc, false),
        (rfc, rfc | ioctl::VIRTIO_RING_F_EVENT_IDX, false),
        (rfc | ioctl::VIRTIO_RING_F_INDIRECT_DESC, rfc, false),
        (rfc, rfc | ioctl::VIRTIO_RING_F_INDIRECT_DESC, true),
        (rfc | ioctl::VIRTIO_NET_F_MRG_RXBUF, rfc | ioctl::VIRTIO_NET_F_MRG_RXBUF, true),
    ] {
        let mut f = m.clone();
        feed(&mut f, &[(Op::VktestSetFeatures(K, offered), Ok(())), (Op::SetFeatures(W, acked), Ok(()))]);
        only(&f, &attach(K, W), if ok { Ok(()) } else { Err(Errno::EINVAL) });
    }
    only(&m, &attach(K, W), Ok(()));
    feed(&mut m, &[(Op::SetFeatures(W, ioctl::VIRTIO_F_VERSION_1), Ok(()))]);
    only(&m, &attach(K, W), Err(Errno::EINVAL));
    // A failed SET_FEATURES changes nothing.
    feed(&mut m, &[(Op::SetFeatures(W, crate::sys::vhost::RFC_FEATURES | VHOST_F_LOG_ALL), Err(Errno::EOPNOTSUPP))]);
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
    let rfc = crate::sys::vhost::RFC_FEATURES;
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
    only(&m, &Op::SetFeatures(V, crate::sys::vhost::RFC_FEATURES), Ok(()));
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

#[test]
fn busyloop_timeout_is_a_queue_ioctl_until_the_attach() {
    let set = |index, timeout| Op::SetBusyloop { target: V, index, timeout };
    let get = |index| Op::GetBusyloop { target: V, index };
    let mut m = Model::default();
    only(&m, &set(0, 50), Err(Errno::EPERM));
    only(&m, &get(1), Err(Errno::EPERM));
    only(&m, &set(7, 50), Err(Errno::EPERM));
    only(&m, &Op::NullArg { target: V, req: ioctl::VHOST_SET_VRING_BUSYLOOP_TIMEOUT }, Err(Errno::EPERM));
    feed(&mut m, &[(Op::SetOwner(V), Ok(()))]);
    only(&m, &set(0, 50), Ok(()));
    only(&m, &set(1, u32::MAX), Ok(()));
    only(&m, &get(1), Ok(()));
    only(&m, &set(2, 50), Err(Errno::ENOBUFS));
    only(&m, &get(u32::MAX), Err(Errno::ENOBUFS));
    only(&m, &Op::NullArg { target: V, req: ioctl::VHOST_SET_VRING_BUSYLOOP_TIMEOUT }, Err(Errno::EFAULT));
    let m = attached(V, K);
    for op in [set(0, 50), set(2, 0), get(0)] {
        only(&m, &op, Err(Errno::EPERM));
    }
}

#[test]
fn eventfd_writes_count_until_the_limit() {
    let e = E[0];
    let w = |v| Op::WriteEventfd(e, v);
    let mut m = Model::default();
    // Not given to the kernel: the counter is exact.
    only(&m, &Op::ReadEventfd(e), Err(Errno::EAGAIN));
    only(&m, &w(u64::MAX), Err(Errno::EINVAL));
    only(&m, &w(0), Ok(()));
    feed(&mut m, &[(w(u64::MAX - 2), Ok(()))]);
    only(&m, &w(1), Ok(()));
    only(&m, &w(2), Err(Errno::EAGAIN));
    feed(&mut m, &[(w(1), Ok(())), (w(1), Err(Errno::EAGAIN))]);
    only(&m, &w(0), Ok(()));
    only(&m, &Op::ReadEventfd(e), Ok(()));
    feed(&mut m, &[(Op::ReadEventfd(e), Ok(()))]);
    only(&m, &Op::ReadEventfd(e), Err(Errno::EAGAIN));
    only(&m, &w(u64::MAX - 1), Ok(()));
    // Given to the kernel (a kick): it may signal and read the counter too.
    feed(&mut m, &[(Op::SetOwner(V), Ok(())), (kick(V, false, 0, e), Ok(()))]);
    only(&m, &w(5), Ok(()));
    only(&m, &w(u64::MAX), Err(Errno::EINVAL));
    assert_eq!(m.expect(&Op::ReadEventfd(e)).judge(Ok(())), None);
    assert_eq!(m.expect(&Op::ReadEventfd(e)).judge(Err(Errno::EAGAIN)), None);
    feed(&mut m, &[(w(u64::MAX - 1 - (1 << 20)), Ok(()))]);
    assert_eq!(m.expect(&w(1 << 21)).judge(Err(Errno::EAGAIN)), None);
    assert_eq!(m.expect(&w(1 << 21)).judge(Ok(())), None);
    assert!(m.expect(&w(1 << 21)).judge(Err(Errno::EINVAL)).unwrap().contains("must succeed or fail with EAGAIN"));
}

#[test]
fn concurrent_rounds_need_an_order_that_explains_them() {
    let start = vec![Model::default()];
    let owner = Op::SetOwner(V);
    // Two SET_OWNERs at once: one wins, whichever thread.
    assert!(linearize(&start, &[(owner.clone(), Ok(())), (owner.clone(), Err(Errno::EBUSY))]).is_ok());
    assert!(linearize(&start, &[(owner.clone(), Err(Errno::EBUSY)), (owner.clone(), Ok(()))]).is_ok());
    let why = linearize(&start, &[(owner.clone(), Ok(())), (owner.clone(), Ok(()))]).unwrap_err();
    assert!(why.contains("no order of these 2 concurrent calls") && why.contains("must fail with EBUSY"), "{why}");
    // A queue ioctl racing SET_OWNER: before it (EPERM) or after it (ok).
    let k0 = kick(V, false, 0, E[0]);
    for res in [Ok(()), Err(Errno::EPERM)] {
        let after = linearize(&start, &[(k0.clone(), res), (owner.clone(), Ok(()))]).unwrap();
        assert_eq!(after.len(), 1);
    }
    assert!(linearize(&start, &[(k0.clone(), Err(Errno::ENOBUFS)), (owner.clone(), Ok(()))]).is_err());
    // Two SET_FEATURES that both succeed leave two possible states (with
    // and without the IOTLB); the next round may be explained by either.
    let mut m = Model::default();
    feed(&mut m, &wiring(V, K));
    let rfc = crate::sys::vhost::RFC_FEATURES;
    let plain = ioctl::VIRTIO_F_VERSION_1;
    let two = linearize(&[m.clone()], &[(Op::SetFeatures(V, rfc), Ok(())), (Op::SetFeatures(V, plain), Ok(()))]);
    let two = two.unwrap();
    assert_eq!(two.len(), 2);
    let attach = Op::Attach { target: K, fd: V };
    assert!(linearize(&two, &[(attach.clone(), Ok(()))]).is_ok());
    assert!(linearize(&two, &[(attach.clone(), Err(Errno::EINVAL))]).is_ok());
    assert!(linearize(&two, &[(attach.clone(), Err(Errno::EBUSY))]).is_err());
    // Issue 12's race: a SET_FEATURES that drops the IOTLB and an attach
    // that both succeed. Before the attach, the attach has no IOTLB
    // (EINVAL); after it, SET_FEATURES is EPERM: no order explains it.
    let race = [(Op::SetFeatures(V, plain), Ok(())), (attach.clone(), Ok(()))];
    let why = linearize(&[m.clone()], &race).unwrap_err();
    assert!(why.contains("VHOST_SET_FEATURES 0x100000000 -> ok: first: right"), "{why}");
    assert!(why.contains("last: succeeded, but must fail with EPERM"), "{why}");
    assert!(why.contains("last: succeeded, but must fail with EINVAL (vktest#2: kick 11 call 11; vhost-net-kernel#1: owned, no IOTLB)"), "{why}");
    // Either loses the race: fine.
    assert!(
        linearize(&[m.clone()], &[(Op::SetFeatures(V, plain), Err(Errno::EPERM)), (attach.clone(), Ok(()))]).is_ok()
    );
    assert!(
        linearize(&[m.clone()], &[(Op::SetFeatures(V, plain), Ok(())), (attach.clone(), Err(Errno::EINVAL))]).is_ok()
    );
    // Busy-poll timeout racing the attach: before it ok, after it EPERM.
    let busy = Op::SetBusyloop { target: V, index: 1, timeout: 100 };
    assert!(linearize(&[m.clone()], &[(busy.clone(), Ok(())), (attach.clone(), Ok(()))]).is_ok());
    assert!(linearize(&[m.clone()], &[(busy.clone(), Err(Errno::EPERM)), (attach.clone(), Ok(()))]).is_ok());
    assert!(
        linearize(&[m.clone()], &[(busy.clone(), Err(Errno::EPERM)), (attach.clone(), Err(Errno::EINVAL))]).is_err()
    );
    // Concurrent eventfd writes near the limit: one of them fits, not both.
    let w = |v| Op::WriteEventfd(E[3], v);
    let near = linearize(&start, &[(w(u64::MAX - 10), Ok(()))]).unwrap();
    assert!(linearize(&near, &[(w(5), Ok(())), (w(5), Err(Errno::EAGAIN))]).is_ok());
    assert!(linearize(&near, &[(w(5), Ok(())), (w(5), Ok(()))]).is_err());
}
