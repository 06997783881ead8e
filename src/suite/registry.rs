//! The test points of `run`, in one table: their KTAP names and order,
//! what each runs, what it needs, and its help line. `run --list`, the
//! point list of `run --help`, `--test NAME`, `attach` and the runner all
//! read it.

use anyhow::Result;

use crate::sys::kmsg::{kmemleak_unavailable, LEAK_CHECK};

use super::adversarial::Adversarial;
use super::attach::Check;
use super::contract_v2::{Refusal, Unprivileged, V2Check};
use super::contract_v3::V3Check;
use super::kernel_log::BETWEEN_POINTS;
use super::scenario::Teardown;

/// What a test point runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// An ABI check of the two device nodes (suite/attach.rs).
    Attach(Check),
    /// A check of what series v2 adds to the contract (suite/contract_v2.rs).
    ContractV2(V2Check),
    /// A check of what series v3 changes in the contract (suite/contract_v3.rs).
    ContractV3(V3Check),
    /// A teardown scenario under traffic (suite/scenario.rs);
    /// `vhost_hdr`: vhost adds and strips the virtio-net header.
    Scenario { teardown: Teardown, vhost_hdr: bool },
    /// The open/wire/attach/close loop (suite/races.rs).
    CloseLoop,
    /// Two serving processes attaching at once (suite/races.rs).
    TwoServes,
    /// An adversarial point: user space racing the kernel (suite/adversarial.rs).
    Adversarial(Adversarial),
    /// Nothing of ours is left: namespaces, interfaces, vDPA devices.
    Cleanup,
    /// Every allocation of the serve flow failed in turn (suite/fault_inject.rs).
    FaultSweep,
    /// kmemleak's verdict on the pass (a debug kernel).
    LeakCheck,
    /// What the kernel logged outside the points' windows (the runner's).
    KernelLogBetween,
}

/// What a test point needs besides root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// /dev/vhost-net-kernel and /dev/vktest themselves.
    Devices,
    /// A serving process: the real devices, or `--fake-device`.
    Serve,
    /// The real virtio-net device (unbind/bind, the vhost-added header).
    RealVirtio,
    /// Nothing more.
    Nothing,
}

/// One test point.
#[derive(Debug, Clone, Copy)]
pub struct TestPoint {
    pub name: &'static str,
    pub body: Body,
    pub needs: Needs,
    /// One line for `run --help` (continued lines start with a space).
    pub help: &'static str,
}

const fn attach(name: &'static str, check: Check, help: &'static str) -> TestPoint {
    TestPoint { name, body: Body::Attach(check), needs: Needs::Devices, help }
}

const fn v2(name: &'static str, check: V2Check, help: &'static str) -> TestPoint {
    TestPoint { name, body: Body::ContractV2(check), needs: Needs::Devices, help }
}

const fn teardown(name: &'static str, teardown: Teardown, needs: Needs, help: &'static str) -> TestPoint {
    TestPoint { name, body: Body::Scenario { teardown, vhost_hdr: false }, needs, help }
}

/// Every test point, in KTAP order. The points of the first versions keep
/// their numbers: new ones go after them (before the leak check and the
/// kernel-log check, which end every pass).
pub const POINTS: &[TestPoint] = &[
    attach("attach_once", Check::Once, "the serve wiring attaches; its vDPA device and\n interface appear, and go when closed"),
    attach("attach_same_vhost_twice_ebusy", Check::SameVhostTwice, "a second vktest attaching the same vhost: EBUSY"),
    attach("vhost_set_features_after_attach_eperm", Check::SetFeaturesAfterAttach, "VHOST_SET_FEATURES after the attach: EPERM"),
    attach("vhost_set_vring_kick_after_attach_eperm", Check::SetVringKickAfterAttach, "VHOST_SET_VRING_KICK after the attach: EPERM"),
    attach("vktest_already_attached_ebusy", Check::VktestAlreadyAttached, "an attached vktest attaching another vhost: EBUSY"),
    attach("refused_set_vring_num_eperm", Check::RefusedSetVringNum, "VHOST_SET_VRING_NUM on the kernel node: EPERM"),
    attach("refused_set_vring_addr_eperm", Check::RefusedSetVringAddr, "VHOST_SET_VRING_ADDR on the kernel node: EPERM"),
    attach("refused_set_vring_base_eperm", Check::RefusedSetVringBase, "VHOST_SET_VRING_BASE on the kernel node: EPERM"),
    attach("refused_set_vring_endian_eperm", Check::RefusedSetVringEndian, "VHOST_SET_VRING_ENDIAN on the kernel node: EPERM"),
    attach("refused_set_mem_table_eperm", Check::RefusedSetMemTable, "VHOST_SET_MEM_TABLE on the kernel node: EPERM"),
    attach("refused_set_log_base_eperm", Check::RefusedSetLogBase, "VHOST_SET_LOG_BASE on the kernel node: EPERM"),
    attach("refused_set_log_fd_eperm", Check::RefusedSetLogFd, "VHOST_SET_LOG_FD on the kernel node: EPERM"),
    attach("refused_iotlb_write_eperm", Check::RefusedIotlbWrite, "an IOTLB update written to the kernel node: EPERM"),
    attach(
        "vktest_kick_index2_einval",
        Check::VktestVringIndex { call: false, index: 2 },
        "vktest SET_VRING_KICK on queue 2 (it has two): EINVAL",
    ),
    attach(
        "vktest_call_index2_einval",
        Check::VktestVringIndex { call: true, index: 2 },
        "vktest SET_VRING_CALL on queue 2: EINVAL",
    ),
    attach(
        "vktest_kick_index_large_einval",
        Check::VktestVringIndex { call: false, index: u32::MAX },
        "vktest SET_VRING_KICK on queue 2^32-1: EINVAL",
    ),
    attach(
        "vktest_call_index_large_einval",
        Check::VktestVringIndex { call: true, index: u32::MAX },
        "vktest SET_VRING_CALL on queue 2^32-1: EINVAL",
    ),
    attach("attach_without_kick_call_einval", Check::WithoutKickCall, "attach with no eventfd on the vktest: EINVAL"),
    attach("attach_missing_one_call_einval", Check::MissingOneCall, "attach without queue 1's call eventfd: EINVAL"),
    attach(
        "attach_without_access_platform_einval",
        Check::WithoutAccessPlatform,
        "attach of a vhost without ACCESS_PLATFORM: EINVAL",
    ),
    attach("attach_plain_vhost_net_einval", Check::PlainVhostNet, "attach of a plain /dev/vhost-net fd: EINVAL"),
    attach("attach_eventfd_einval", Check::EventfdAsVhost, "attach of an eventfd: EINVAL"),
    attach("attach_closed_fd_ebadf", Check::ClosedFd, "attach of a closed fd: EBADF"),
    attach(
        "attach_by_non_owner_eperm",
        Check::ByNonOwner,
        "attach by a non-owner process: EPERM; the\n owner's attach works after it",
    ),
    teardown("teardown_exit", Teardown::Exit, Needs::Serve, "the serving process exits"),
    teardown(
        "teardown_close_vktest_first",
        Teardown::CloseVktestFirst,
        Needs::Serve,
        "/dev/vktest closed first (SIGUSR1), then exit",
    ),
    teardown("teardown_unbind", Teardown::Unbind, Needs::RealVirtio, "virtio_net unbound via sysfs, then exit"),
    teardown(
        "teardown_unbind_rebind",
        Teardown::UnbindRebind,
        Needs::RealVirtio,
        "unbound and bound again; traffic must work again",
    ),
    TestPoint {
        name: "traffic_vhost_net_hdr",
        body: Body::Scenario { teardown: Teardown::Exit, vhost_hdr: true },
        needs: Needs::RealVirtio,
        help: "as teardown_exit, vhost adds the virtio-net header",
    },
    TestPoint {
        name: "cleanup_no_leftovers",
        body: Body::Cleanup,
        needs: Needs::Nothing,
        help: "no namespace, interface or vDPA device of the run is left",
    },
    teardown(
        "teardown_close_vhost_first",
        Teardown::CloseVhostFirst,
        Needs::Serve,
        "vhost fd closed first (SIGUSR2): traffic goes on\n (vktest holds the device); then vktest, then exit",
    ),
    teardown(
        "teardown_close_both_reverse",
        Teardown::CloseBothReverse,
        Needs::Serve,
        "the serving process closes vktest, then vhost, exits",
    ),
    teardown(
        "teardown_sigkill_mid_flood",
        Teardown::SigkillMidFlood,
        Needs::Serve,
        "the serving process is SIGKILLed mid-flood",
    ),
    teardown(
        "teardown_rebind_repeated",
        Teardown::RebindRepeated,
        Needs::RealVirtio,
        "5 unbind/bind rounds, each mid-flood, traffic after each",
    ),
    TestPoint {
        name: "attach_close_loop",
        body: Body::CloseLoop,
        needs: Needs::Devices,
        help: "--cycles times (1000): open, wire, attach, wait for the\n interface, close, wait for it to go; then no\n interface, vdpa device or fd may be left",
    },
    TestPoint {
        name: "serve_two_at_once",
        body: Body::TwoServes,
        needs: Needs::Serve,
        help: "two serves attach at the same moment; each reports its\n own pair (different vDPA devices), and each pair\n carries traffic",
    },
    v2(
        "open_needs_cap_net_admin",
        V2Check::OpenUnprivileged(Unprivileged::NoCapNetAdmin),
        "(v2) uid 0 without CAP_NET_ADMIN opens both kernel\n nodes: EPERM; /dev/vhost-net still opens",
    ),
    v2(
        "open_needs_cap_net_admin_userns",
        V2Check::OpenUnprivileged(Unprivileged::UserNs),
        "(v2) as open_needs_cap_net_admin, by the root of a new\n user namespace",
    ),
    v2(
        "get_features_no_log_all",
        V2Check::GetFeaturesNoLogAll,
        "(v2) VHOST_GET_FEATURES offers no LOG_ALL; SET with it:\n EOPNOTSUPP; SET takes what GET offers",
    ),
    v2(
        "attach_ring_features_mismatch_einval",
        V2Check::RingFeaturesMismatch,
        "(v2) ring features differing between vhost and vktest:\n EINVAL and nothing left; matching ones attach",
    ),
    v2(
        "attach_retry_after_failure",
        V2Check::RetryAfter(Refusal::NoAccessPlatform),
        "an attach refused for want of ACCESS_PLATFORM, the\n features fixed on the same fds: it attaches and\n carries traffic",
    ),
    v2(
        "attach_retry_after_mismatch",
        V2Check::RetryAfter(Refusal::MrgRxbufMismatch),
        "(v2) as attach_retry_after_failure, first refused for a\n mrg_rxbuf mismatch",
    ),
    TestPoint {
        name: "fault_inject_sweep",
        body: Body::FaultSweep,
        needs: Needs::Devices,
        help: "(a fault-injection kernel) each serve-flow call with its\n Nth allocation failed, N = 1, 2, ...: ENOMEM or\n coping; nothing left; the attach works after it",
    },
    TestPoint {
        name: "busyloop_rebind",
        body: Body::Adversarial(Adversarial::BusyloopRebind),
        needs: Needs::RealVirtio,
        help: "both queues busy-poll 200 us; 10 unbind/bind rounds,\n with a flood into the TAP or the TAP idle; traffic\n after each",
    },
    TestPoint {
        name: "eventfd_storm",
        body: Body::Adversarial(Adversarial::EventfdStorm),
        needs: Needs::RealVirtio,
        help: "threads write the 4 kick/call eventfds nonstop through\n attach, traffic, unbind, bind and the close of\n /dev/vktest; the writes counted",
    },
    TestPoint {
        name: "ioctl_race_attach",
        body: Body::Adversarial(Adversarial::IoctlRaceAttach),
        needs: Needs::Devices,
        help: "threads hammer the configuring ioctls of both nodes\n during the attach; each result as the contract allows\n for its time; traffic after; again with RESET_OWNER",
    },
    TestPoint {
        name: "kernel_worker_no_owner_mm",
        body: Body::ContractV3(V3Check::WorkerWithoutOwnerMm),
        needs: Needs::Devices,
        help: "(v3) SET_OWNER on the kernel node makes one worker: a\n kernel thread (parent kthreadd) with no address space;\n FORK_FROM_OWNER(TASK), NEW_WORKER: EOPNOTSUPP; it goes\n with the close, attached or not",
    },
    TestPoint {
        name: LEAK_CHECK,
        body: Body::LeakCheck,
        needs: Needs::Nothing,
        help: "(a kmemleak kernel) two kmemleak scans, the second once\n everything allocated is old enough to be reported;\n any unreferenced object fails it (report quoted)",
    },
    TestPoint {
        name: BETWEEN_POINTS,
        body: Body::KernelLogBetween,
        needs: Needs::Nothing,
        help: "(when the kernel log is watched) any report or lost\n record outside the points' own windows: before the\n first, between two, after the last",
    },
];

/// The test point called `name`.
pub fn point(name: &str) -> Option<&'static TestPoint> {
    POINTS.iter().find(|p| p.name == name)
}

/// What `run --list` prints: every point `run` may report.
pub fn list() -> Vec<&'static str> {
    POINTS.iter().map(|p| p.name).collect()
}

/// The ABI checks alone, in order (the `attach` subcommand).
pub fn attach_points() -> Vec<&'static str> {
    POINTS.iter().filter(|p| matches!(p.body, Body::Attach(_))).map(|p| p.name).collect()
}

/// Whether any of `tests` uses (or checks) the run's namespaces, whose
/// stale copies from a killed run are then removed first.
pub fn uses_namespaces(tests: &[&str]) -> bool {
    tests.iter().filter_map(|t| point(t)).any(|p| match p.body {
        Body::Scenario { .. } | Body::CloseLoop | Body::TwoServes | Body::Cleanup | Body::Adversarial(_) => true,
        Body::ContractV2(c) => c.uses_namespaces(),
        _ => false,
    })
}

/// The points `run --test NAME...` selects (all of them but the leak check
/// without a name), in KTAP order; under a kmemleak kernel every pass ends
/// with the leak check.
pub fn select(names: &[String], fake_device: bool) -> Result<Vec<&'static str>> {
    for t in names {
        anyhow::ensure!(point(t).is_some(), "unknown test {t:?} (see --list)");
    }
    let mut selected: Vec<&str> = if names.is_empty() {
        list().into_iter().filter(|t| *t != LEAK_CHECK).collect()
    } else {
        list().into_iter().filter(|a| names.iter().any(|t| t == a)).collect()
    };
    if kmemleak_unavailable().is_none() && !fake_device && !selected.contains(&LEAK_CHECK) {
        selected.push(LEAK_CHECK);
    }
    Ok(selected)
}

/// The point list of `run --help`: each name and its help line.
pub fn help_table() -> String {
    let width = POINTS.iter().map(|p| p.name.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for p in POINTS {
        for (i, line) in p.help.split('\n').enumerate() {
            let name = if i == 0 { p.name } else { "" };
            out += &format!("  {name:width$}{}\n", line.trim_start());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_the_first_points_keep_their_numbers() {
        let names = list();
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        // KTAP numbers of the first versions' points (1-based).
        for (n, name) in [(1, "attach_once"), (24, "attach_by_non_owner_eperm"), (25, "teardown_exit")] {
            assert_eq!(names[n - 1], name);
        }
        assert_eq!(names[29], "cleanup_no_leftovers");
        assert_eq!(names[names.len() - 2..], [LEAK_CHECK, BETWEEN_POINTS]);
        assert_eq!(attach_points().len(), 24);
        assert!(attach_points().iter().all(|a| names[..24].contains(a)));
    }

    #[test]
    fn needs_follow_what_a_point_does() {
        for p in POINTS {
            let want = match p.body {
                Body::Attach(_) | Body::ContractV2(_) | Body::ContractV3(_) | Body::CloseLoop | Body::FaultSweep => {
                    Needs::Devices
                }
                Body::Scenario { vhost_hdr: true, .. } => Needs::RealVirtio,
                Body::Scenario { teardown, .. } => match teardown {
                    Teardown::Unbind | Teardown::UnbindRebind | Teardown::RebindRepeated => Needs::RealVirtio,
                    _ => Needs::Serve,
                },
                Body::TwoServes => Needs::Serve,
                Body::Adversarial(Adversarial::IoctlRaceAttach) => Needs::Devices,
                Body::Adversarial(_) => Needs::RealVirtio,
                Body::Cleanup | Body::LeakCheck | Body::KernelLogBetween => Needs::Nothing,
            };
            assert_eq!(p.needs, want, "{}", p.name);
        }
    }

    #[test]
    fn selection_keeps_the_order_and_refuses_unknown_names() {
        let picked = select(&["teardown_exit".into(), "attach_once".into()], true).unwrap();
        assert_eq!(picked[..2], ["attach_once", "teardown_exit"]);
        assert!(select(&["no_such_point".into()], true).unwrap_err().to_string().contains("no_such_point"));
        assert!(!select(&[], true).unwrap().contains(&LEAK_CHECK));
    }

    #[test]
    fn every_point_is_in_the_help() {
        let help = help_table();
        for p in POINTS {
            assert!(help.contains(&format!("  {} ", p.name)), "{} missing from\n{help}", p.name);
        }
        assert!(help.lines().all(|l| l.len() <= 100), "{help}");
    }
}
