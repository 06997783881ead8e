//! Integration tests with real kernel objects on the build host (as root):
//! TAP backends, named namespaces, rtnetlink events, and ICMPv6 traffic over
//! a veth pair placed with the same code the suite uses for the vhost pair.
//! The ones that need root are `#[ignore = "needs root"]`: as root, run
//! them with `cargo test -- --include-ignored` (scripts/test-all.sh does).

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use vhost_kernel_test::net::icmp::{ping, PingOpts, PingTarget};
use vhost_kernel_test::net::{if_index, LinkWatcher, Rtnl};
use vhost_kernel_test::report::ktap::Ktap;
use vhost_kernel_test::suite::{remove_stale_namespaces, setup_pair, verify_two_way, RunOpts, G2H_ADDR, H2G_ADDR};
use vhost_kernel_test::sys::netns::{self, NetnsGuard};
use vhost_kernel_test::sys::tap::Tap;

const T: Duration = Duration::from_secs(10);

/// Short unique tag for names (interface names are at most 15 bytes).
fn tag(what: &str) -> String {
    format!("vk{what}{}", std::process::id() % 100_000)
}

/// Read `lines` up to and including the first line for which `done` holds;
/// panics (quoting what was read) if the output ends before it.
fn read_until(lines: &mut impl Iterator<Item = std::io::Result<String>>, done: impl Fn(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        let last = done(&l);
        seen.push(l);
        if last {
            return seen;
        }
    }
    panic!("output ended before the awaited line: {seen:?}");
}

/// `ip netns list` lines mentioning `needle` (other tests run in parallel),
/// or None without iproute2.
fn ip_netns_list(needle: &str) -> Option<Vec<String>> {
    let o = Command::new("ip").args(["netns", "list"]).output().ok()?;
    Some(String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains(needle)).map(str::to_string).collect())
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "needs root"]
async fn tap_with_vnet_hdr_offloads_and_hdr_size() {
    let t = format!("{}%d", tag("t"));
    let tap = Tap::create_vhost_backend(&t).expect("vhost backend tap");
    assert!(tap.name().starts_with(&tag("t")), "{}", tap.name());
    let idx = if_index(tap.name()).expect("tap exists");
    assert!(idx > 0);
    let plain = Tap::create(&t, false).expect("tap without IFF_VNET_HDR");
    assert_ne!(plain.name(), tap.name());
    // The interface goes away with its last fd (a fork of a parallel test may
    // hold a copy until its exec, so wait for the event rather than check now).
    let mut w = LinkWatcher::new(None).unwrap();
    drop(tap);
    w.wait_del_link(idx, T, "the tap to vanish with its fd").await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "needs root"]
async fn netns_is_compatible_with_iproute2_and_cleaned_up() {
    let name = tag("ns");
    let before = ip_netns_list(&name);
    let mut g = NetnsGuard::new();
    g.create(&name).expect("create namespace");
    assert!(netns::exists(&name));
    assert!(netns::create(&name).is_err(), "creating twice must fail");
    if let Some(list) = ip_netns_list(&name) {
        assert!(list.iter().any(|l| l.split_whitespace().next() == Some(name.as_str())), "ip netns list: {list:?}");
    }
    // The namespace is a fresh one: only lo.
    let links = Rtnl::new(Some(&name)).unwrap().links().await.unwrap();
    assert_eq!(links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), vec!["lo"]);
    g.delete_all().unwrap();
    assert!(!netns::exists(&name));
    assert_eq!(ip_netns_list(&name), before);
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "needs root"]
async fn stale_namespaces_are_removed_and_reported() {
    let opts = RunOpts { ns_prefix: format!("{}-", tag("st")), ..Default::default() };
    netns::create(&opts.h2g_ns()).unwrap();
    let mut k = Ktap::new(Vec::new());
    remove_stale_namespaces(&opts, &mut k).unwrap();
    let out = String::from_utf8(k.into_inner()).unwrap();
    assert_eq!(out, format!("# removed stale namespace {}\n", opts.h2g_ns()));
    assert!(!netns::exists(&opts.h2g_ns()));
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "needs root"]
async fn link_events_for_new_and_deleted_links() {
    let ns = tag("ev");
    let mut g = NetnsGuard::new();
    g.create(&ns).unwrap();
    let rtnl = Rtnl::new(Some(&ns)).unwrap();
    let mut w = LinkWatcher::new(Some(&ns)).unwrap();
    let known: HashSet<u32> = rtnl.links().await.unwrap().iter().map(|l| l.index).collect();
    rtnl.create_veth("va", "vb").await.unwrap();
    let new = w.wait_new_link(&known, |l| l.name == "va", T, "veth va").await.unwrap();
    rtnl.del_link(new.index).await.unwrap();
    let gone = w.wait_del_link(new.index, T, "veth va removal").await.unwrap();
    assert_eq!(gone.index, new.index);
    // A wait that cannot succeed says what did not happen.
    let err = w.wait_del_link(9999, Duration::from_millis(200), "ifindex 9999 to vanish").await.unwrap_err();
    assert!(format!("{err}").contains("timed out") && format!("{err}").contains("ifindex 9999"), "{err}");
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "needs root"]
async fn veth_pair_two_way_icmpv6_in_namespaces() {
    let p = format!("{}-", tag("vp"));
    let before = ip_netns_list(&p);
    let (h2g_ns, g2h_ns) = (format!("{p}h2g"), format!("{p}g2h"));
    let (a, b) = (tag("a"), tag("b"));
    let root_nl = Rtnl::new(None).unwrap();
    {
        let mut g = NetnsGuard::new();
        g.create(&h2g_ns).unwrap();
        g.create(&g2h_ns).unwrap();
        root_nl.create_veth(&a, &b).await.unwrap();
        let ia = root_nl.link_by_name(&a).await.unwrap().index;
        let ib = root_nl.link_by_name(&b).await.unwrap().index;
        let pair = setup_pair(&root_nl, (ia, &a), (ib, &b), &h2g_ns, &g2h_ns, T).await.unwrap();
        assert!(root_nl.link_by_name(&a).await.is_err(), "{a} moved out of the root namespace");

        let (x, y) = verify_two_way(&pair, 10, 20000, T).await.unwrap();
        assert_eq!((x.transmitted, x.received, y.transmitted, y.received), (10, 10, 10, 10));
        assert!(x.perfect() && y.perfect(), "{} / {}", x.summary(), y.summary());

        // A short flood from the g2h side, with the stop flag unused.
        let target = PingTarget { netns: Some(g2h_ns.clone()), iface: b.clone(), dst: H2G_ADDR, src: Some(G2H_ADDR) };
        let opts = PingOpts { size: 20000, window: 4, flood: Some(Duration::from_millis(500)), ..Default::default() };
        let st = tokio::task::spawn_blocking(move || ping(&target, &opts, &Default::default())).await.unwrap().unwrap();
        assert!(st.received > 0 && st.corrupted == 0, "{}", st.summary());

        // Forgetting neighbours (as after a rebind) does not break traffic.
        let h2g_nl = Rtnl::new(Some(&h2g_ns)).unwrap();
        h2g_nl.flush_neighbours(h2g_nl.link_by_name(&a).await.unwrap().index).await.unwrap();
        verify_two_way(&pair, 2, 3000, T).await.unwrap();

        // The CLI does the same from inside a namespace.
        let out = Command::new(env!("CARGO_BIN_EXE_vhost-kernel-test"))
            .args(["ping", "--netns", &h2g_ns, "--iface", &a, "--dst", "fe80::1", "--src", "fe80::", "--count", "3"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.starts_with("3 transmitted, 3 received, 0.0% loss, 0 corrupted"), "{text}");
        g.delete_all().unwrap();
    }
    assert!(!netns::exists(&h2g_ns) && !netns::exists(&g2h_ns));
    assert_eq!(ip_netns_list(&p), before, "namespaces left behind");
    // veth ends die with their namespaces.
    assert!(root_nl.link_by_name(&a).await.is_err());
}

#[test]
fn run_on_a_kernel_without_the_feature_skips_everything() {
    if std::path::Path::new("/dev/vhost-net-kernel").exists() && std::path::Path::new("/dev/vktest").exists() {
        eprintln!("this kernel has the feature: skip path not testable here");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-kernel-test")).arg("run").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("KTAP version 1"));
    let plan = lines.next().unwrap();
    let n: usize = plan.strip_prefix("1..").unwrap().parse().unwrap();
    let skips: Vec<&str> = text.lines().filter(|l| l.starts_with("ok ") && l.contains(" # SKIP ")).collect();
    assert_eq!(skips.len(), n, "{text}");
    assert!(skips.iter().all(|l| l.contains("missing (CONFIG_VHOST_KERNEL") || l.contains("not root")), "{text}");
    assert!(!text.contains("not ok"));
}

#[test]
fn serve_without_the_feature_fails_cleanly() {
    if std::path::Path::new("/dev/vhost-net-kernel").exists() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-kernel-test")).args(["serve", "--timeout", "1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/dev/vhost-net-kernel") && !err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn help_teaches() {
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-kernel-test")).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for w in ["run", "attach", "serve", "ping", "Examples:", "h2g=vhostkernel0 g2h=eth0", "SIGUSR1"] {
        assert!(text.contains(w), "--help lacks {w}:\n{text}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn serve_child_failure_is_reported_not_hung() {
    if std::path::Path::new("/dev/vhost-net-kernel").exists() {
        return;
    }
    let exe = env!("CARGO_BIN_EXE_vhost-kernel-test");
    let err = match vhost_kernel_test::suite::ServeChild::spawn(exe, false, false, Duration::from_secs(5)).await {
        Ok(_) => panic!("serve cannot work without /dev/vhost-net-kernel"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("serve child") && err.contains("interfaces"), "{err}");
}

#[test]
#[ignore = "needs root"]
fn kmsg_marker_sync_sees_our_own_record() {
    let m = vhost_kernel_test::sys::kmsg::KmsgMonitor::start().expect("root can read and write /dev/kmsg");
    let a = m.sync("itest-a", T).unwrap();
    let b = m.sync("itest-b", T).unwrap();
    assert!(b > a);
    assert!(m.lines_since(a).iter().any(|l| l.contains("sync itest-b")));
}

/// Names the fake-device runs use; they must not run concurrently with each
/// other (they check that no vhostkernel*/vkfake* interface is left).
static FAKE_RUNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
#[ignore = "needs root"]
fn run_fake_device_passes_traffic_and_teardowns_and_cleans_up() {
    let _g = FAKE_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let p = format!("{}-", tag("fk"));
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-kernel-test"))
        .args(["run", "--fake-device", "--timeout", "10", "--ns-prefix", &p])
        .args(["--test", "teardown_exit", "--test", "teardown_close_vktest_first", "--test", "teardown_unbind"])
        .args(["--test", "cleanup_no_leftovers"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    // Every result says that no kernel was tested.
    assert!(text.starts_with("KTAP version 1\n1..5\n# fake device: "), "{text}");
    for l in [
        "ok 1 teardown_exit_fake_device",
        "ok 2 teardown_close_vktest_first_fake_device",
        "ok 4 cleanup_no_leftovers_fake_device",
        "ok 5 kernel_log_between_points_fake_device",
    ] {
        assert!(text.lines().any(|x| x == l), "missing {l:?} in\n{text}");
    }
    assert!(text.contains("ok 3 teardown_unbind_fake_device # SKIP"), "{text}");
    assert!(text
        .lines()
        .filter(|l| l.starts_with("ok ") || l.starts_with("not ok "))
        .all(|l| l.contains("_fake_device")));
    assert!(text.contains("# h2g -> g2h: 10 transmitted, 10 received, 0.0% loss"), "{text}");
    assert!(text.contains("# serve: SIGUSR1: removed fake g2h interface"), "{text}");
    assert!(!netns::exists(&format!("{p}h2g")) && !netns::exists(&format!("{p}g2h")));
}

#[test]
#[ignore = "needs root"]
fn run_interrupted_by_sigterm_cleans_up() {
    use std::io::{BufRead, BufReader};
    let _g = FAKE_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let p = format!("{}-", tag("ir"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_vhost-kernel-test"))
        .args(["run", "--fake-device", "--timeout", "10", "--ns-prefix", &p, "--test", "teardown_exit"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The serving child is up and the namespaces exist once this line is out.
    read_until(&mut lines, |l| l.starts_with("# serve: h2g="));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(143), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("interrupted by SIGTERM")), "{rest:?}");
    assert!(!netns::exists(&format!("{p}h2g")) && !netns::exists(&format!("{p}g2h")));
}

#[test]
#[ignore = "needs root"]
fn run_repeat_nests_each_pass_as_a_ktap_subtest() {
    let _g = FAKE_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let p = format!("{}-", tag("rp"));
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-kernel-test"))
        .args(["run", "--fake-device", "--timeout", "10", "--ns-prefix", &p, "--repeat", "2"])
        .args(["--test", "attach_once", "--test", "teardown_exit", "--test", "cleanup_no_leftovers"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    // Each pass ends with its own kernel_log_between_points.
    assert!(text.starts_with("KTAP version 1\n1..2\n# fake device: "), "{text}");
    assert!(text.contains("\n    KTAP version 1\n    1..4\n"), "{text}");
    for it in 1..=2 {
        assert!(text.lines().any(|l| l == format!("ok {it} iteration-{it}_fake_device")), "{text}");
    }
    for l in [
        "    ok 2 teardown_exit_fake_device",
        "    ok 3 cleanup_no_leftovers_fake_device",
        "    ok 4 kernel_log_between_points_fake_device",
    ] {
        assert_eq!(text.lines().filter(|x| x == &l).count(), 2, "{l:?} twice in\n{text}");
    }
    assert_eq!(text.lines().filter(|l| l.starts_with("    # serve: h2g=")).count(), 2, "{text}");
    assert!(text.ends_with("# Totals: pass:2 fail:0 xfail:0 xpass:0 skip:0 error:0\n"), "{text}");
    // --repeat 0 is refused by the parser.
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-kernel-test")).args(["run", "--repeat", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
#[ignore = "needs root"]
fn run_fake_device_race_scenarios() {
    let _g = FAKE_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let p = format!("{}-", tag("rs"));
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-kernel-test"))
        .args(["run", "--fake-device", "--timeout", "10", "--ns-prefix", &p])
        .args(["--test", "teardown_close_vhost_first", "--test", "teardown_close_both_reverse"])
        .args(["--test", "teardown_sigkill_mid_flood", "--test", "teardown_rebind_repeated"])
        .args(["--test", "attach_close_loop"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for l in [
        "ok 1 teardown_close_vhost_first_fake_device",
        "ok 2 teardown_close_both_reverse_fake_device",
        "ok 3 teardown_sigkill_mid_flood_fake_device",
    ] {
        assert!(text.lines().any(|x| x == l), "missing {l:?} in\n{text}");
    }
    assert!(text.contains("ok 4 teardown_rebind_repeated_fake_device # SKIP"), "{text}");
    assert!(text.contains("ok 5 attach_close_loop_fake_device # SKIP"), "{text}");
    // SIGUSR2 closed the fake's stand-in for the vhost fd, and says so.
    assert!(text.contains("# serve: SIGUSR2: closed fd "), "{text}");
    assert!(text.contains("# vhost fd closed: both floods got 20 more replies"), "{text}");
    assert!(!netns::exists(&format!("{p}h2g")) && !netns::exists(&format!("{p}g2h")));
}

/// Pids of `vhost-kernel-test serve` processes that are not children of
/// this test process (a run's serving children, or orphans of one).
fn stray_serve_processes() -> Vec<i32> {
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_vhost-kernel-test")).unwrap();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(target) = std::fs::read_link(format!("/proc/{pid}/exe")) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // "pid (comm) S ppid ...": fields after the last ')'.
        let rest: Vec<&str> = stat.rsplit_once(')').map(|x| x.1).unwrap_or("").split_whitespace().collect();
        let (state, ppid) = (rest.first().copied().unwrap_or("?"), rest.get(1).and_then(|p| p.parse().ok()));
        if target == exe && args.get(1) == Some(&&b"serve"[..]) && ppid != Some(me) && state != "Z" {
            out.push(pid);
        }
    }
    out
}

/// Names of the interfaces of the current namespace (`ip -o link`).
fn ip_links() -> Option<Vec<String>> {
    let o = Command::new("ip").args(["-o", "link", "show"]).output().ok()?;
    Some(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_string()))
            .collect(),
    )
}

/// Start `run --fake-device --progress`, read its stdout until `# step: STEP`,
/// deliver `sig`, and check that it exits 130/143 with nothing left behind.
fn interrupt_run_at(step: &str, sig: nix::sys::signal::Signal) {
    use std::io::{BufRead, BufReader};
    let _g = FAKE_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let p = format!("{}-", tag(&format!("i{}", &step[..2])));
    let ns_before = ip_netns_list(&p);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vhost-kernel-test"))
        .args(["run", "--fake-device", "--progress", "--timeout", "10", "--ns-prefix", &p])
        .args(["--test", "teardown_exit", "--test", "teardown_close_vktest_first"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let want = format!("# step: {step}");
    let seen = read_until(&mut lines, |l| l == want);
    nix::sys::signal::kill(pid, sig).unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let st = child.wait().unwrap();
    let (code, name) = if sig == nix::sys::signal::Signal::SIGINT { (130, "SIGINT") } else { (143, "SIGTERM") };
    assert_eq!(st.code(), Some(code), "{seen:?} {rest:?}");
    assert!(rest.iter().any(|l| l == &format!("# interrupted by {name}, cleaned up")), "{rest:?}");
    assert!(!netns::exists(&format!("{p}h2g")) && !netns::exists(&format!("{p}g2h")), "{step} {name}");
    assert_eq!(ip_netns_list(&p), ns_before, "namespaces left after {name} at {step}");
    if let Some(links) = ip_links() {
        let left: Vec<&String> =
            links.iter().filter(|n| n.starts_with("vkfake") || n.starts_with("vhostkernel")).collect();
        assert!(left.is_empty(), "interfaces left after {name} at {step}: {left:?}");
    }
    let strays = stray_serve_processes();
    assert!(strays.is_empty(), "serve processes left after {name} at {step}: {strays:?}");
}

#[test]
#[ignore = "needs root"]
fn sigint_and_sigterm_at_each_step_leave_nothing_behind() {
    use nix::sys::signal::Signal::{SIGINT, SIGTERM};
    for step in ["namespaces-created", "traffic", "teardown"] {
        for sig in [SIGINT, SIGTERM] {
            interrupt_run_at(step, sig);
        }
    }
}

#[test]
#[ignore = "needs root"]
fn stale_namespace_of_the_run_is_removed_and_said() {
    let _g = FAKE_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let p = format!("{}-", tag("sn"));
    netns::create(&format!("{p}g2h")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-kernel-test"))
        .args(["run", "--fake-device", "--timeout", "10", "--ns-prefix", &p, "--test", "teardown_exit"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    // The kernel log is watched: the pass ends with kernel_log_between_points.
    assert!(text.starts_with("KTAP version 1\n1..2\n# fake device: "), "{text}");
    assert!(text.contains(&format!("\n# removed stale namespace {p}g2h\n")), "{text}");
    assert!(!netns::exists(&format!("{p}g2h")));
}

#[test]
#[ignore = "needs root"]
fn unreadable_kernel_log_stops_the_run_with_a_clear_error() {
    let _g = FAKE_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let p = format!("{}-", tag("km"));
    let ns_before = ip_netns_list(&p);
    for (path, says) in [("/nonexistent/kmsg", "open /nonexistent/kmsg"), ("/", "/ is not a character device")] {
        for repeat in [None, Some("2")] {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_vhost-kernel-test"));
            cmd.args(["run", "--fake-device", "--timeout", "10", "--ns-prefix", &p, "--kmsg-path", path]);
            cmd.args(["--test", "teardown_exit"]);
            if let Some(n) = repeat {
                cmd.args(["--repeat", n]);
            }
            let out = cmd.output().unwrap();
            let (text, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.status.code(), Some(1), "{text}{err}");
            let bail =
                text.lines().find(|l| l.starts_with("Bail out! cannot watch the kernel log: ")).unwrap_or_default();
            assert!(bail.contains(says) && bail.contains("--no-kernel-log"), "{text}");
            assert!(!text.contains("ok 1 teardown_exit"), "no test point may run: {text}");
            assert!(!err.contains("panicked"), "{err}");
            assert_eq!(ip_netns_list(&p), ns_before, "namespaces left behind: {text}");
        }
    }
    let fuzz = Command::new(env!("CARGO_BIN_EXE_vhost-kernel-test"))
        .args(["fuzz", "--count", "1", "--kmsg-path", "/nonexistent/kmsg"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&fuzz.stdout);
    // Without the devices fuzz skips before it looks at the log.
    if std::path::Path::new("/dev/vktest").exists() {
        assert_eq!(fuzz.status.code(), Some(1), "{text}");
        assert!(text.contains("Bail out! cannot watch the kernel log"), "{text}");
    } else {
        assert_eq!(fuzz.status.code(), Some(4), "{text}");
    }
    // Asked for explicitly, the run goes on and says what it does not see.
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-kernel-test"))
        .args(["run", "--fake-device", "--timeout", "10", "--ns-prefix", &p, "--no-kernel-log"])
        .args(["--test", "teardown_exit"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("# kernel log not watched (--no-kernel-log)"), "{text}");
    // Not watched: no kernel_log_between_points either.
    assert!(text.starts_with("KTAP version 1\n1..1\n") && !text.contains("kernel_log_between_points"), "{text}");
}

/// `scan-log` on a real console log (a whole normal-config VM run of the
/// suite, tests/data/vm-console.log): clean as it is, a report once a soft
/// lockup is appended (quoted with its context), exit 2 when unreadable.
#[test]
fn scan_log_judges_a_console_log() {
    let exe = env!("CARGO_BIN_EXE_vhost-kernel-test");
    let clean = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vm-console.log");
    let out = Command::new(exe).args(["scan-log", clean]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.is_empty(), "{text}");

    let mut log = std::fs::read(clean).unwrap();
    log.extend_from_slice(
        b"[   61.803410] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [vhost-312:318]\r\n\
          [   61.803990] Modules linked in:\r\n\
          [   61.804211] CPU: 1 UID: 0 PID: 318 Comm: vhost-312 Not tainted 6.12.9 #1\r\n",
    );
    let dir = std::env::temp_dir().join(tag("scanlog"));
    std::fs::create_dir_all(&dir).unwrap();
    let locked = dir.join("console.log");
    std::fs::write(&locked, &log).unwrap();
    let out = Command::new(exe).arg("scan-log").arg(&locked).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let want = format!(
        "kernel reported a problem in {}:\n\
         watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [vhost-312:318]\n\
         Modules linked in:\n\
         CPU: 1 UID: 0 PID: 318 Comm: vhost-312 Not tainted 6.12.9 #1\n",
        locked.display()
    );
    assert_eq!(text, want);

    let missing = dir.join("missing.log");
    let out = Command::new(exe).arg("scan-log").arg(&missing).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.log"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fuzz_without_the_devices_skips_and_prints_its_seed() {
    if std::path::Path::new("/dev/vhost-net-kernel").exists() && std::path::Path::new("/dev/vktest").exists() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-kernel-test"))
        .args(["fuzz", "--seed", "42", "--count", "600"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    // Three phases and, the kernel log being watched by default, kernel_log_between_points.
    assert!(text.starts_with("KTAP version 1\n1..4\n# seed: 42\n"), "{text}");
    assert_eq!(text.matches(" # SKIP ").count(), 4, "{text}");
    assert!(text.contains("ok 4 kernel_log_between_points # SKIP "), "{text}");
}

/// Interfaces named vkfake*/vhostkernel* in namespace `ns` (None: the
/// current one); a namespace that does not exist has none.
fn fake_or_vhost_links(ns: Option<&str>) -> Vec<String> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let Ok(o) = cmd.args(["-o", "link", "show"]).output() else { return Vec::new() };
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_string()))
        .filter(|n| n.starts_with("vkfake") || n.starts_with("vhostkernel"))
        .collect()
}

/// The children of process `pid` (all its threads' /proc children lists).
fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(kids.split_whitespace().filter_map(|k| k.parse::<i32>().ok()));
    }
    out
}

/// Wait (poll on a pidfd, at most `limit`) for process `pid` to exit.
fn exits_within(pid: i32, limit: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        // ESRCH: already gone (and reaped).
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

#[test]
#[ignore = "needs root"]
fn sigkilled_run_takes_its_serve_child_along() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    let _g = FAKE_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let p = format!("{}-", tag("sk"));
    let exe = env!("CARGO_BIN_EXE_vhost-kernel-test");
    let mut run = Command::new(exe)
        .args(["run", "--fake-device", "--progress", "--timeout", "10", "--ns-prefix", &p, "--test", "teardown_exit"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    // The serving child is up (its interface line parsed) once this is out.
    read_until(&mut lines, |l| l.starts_with("# serve: h2g="));
    let serve: Vec<i32> = children_of(run.id())
        .into_iter()
        .filter(|c| {
            std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default().split(|&b| b == 0).nth(1) == Some(b"serve")
        })
        .collect();
    assert_eq!(serve.len(), 1, "serve children of the run: {serve:?}");
    let serve = serve[0];
    kill(Pid::from_raw(run.id() as i32), Signal::SIGKILL).unwrap();
    assert_eq!(run.wait().unwrap().signal(), Some(libc::SIGKILL));
    let gone = exits_within(serve, T);
    if !gone {
        // Do not leave it behind for the other tests.
        let _ = kill(Pid::from_raw(serve), Signal::SIGKILL);
        exits_within(serve, T);
    }
    assert!(gone, "serve child {serve} still running {T:?} after its parent `run` was SIGKILLed");
    // Its interfaces died with it, wherever they were.
    for ns in [None, Some(format!("{p}h2g")), Some(format!("{p}g2h"))] {
        let left = fake_or_vhost_links(ns.as_deref());
        assert!(left.is_empty(), "interfaces left in {ns:?} after the SIGKILLed run: {left:?}");
    }
    // The namespaces stay (nobody ran the cleanup): the next run removes them and says so.
    let out = Command::new(exe)
        .args(["run", "--fake-device", "--timeout", "10", "--ns-prefix", &p, "--test", "teardown_exit"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for ns in ["h2g", "g2h"] {
        assert!(text.contains(&format!("# removed stale namespace {p}{ns}\n")), "{text}");
    }
    assert!(!netns::exists(&format!("{p}h2g")) && !netns::exists(&format!("{p}g2h")));
}

/// The helper of open_needs_cap_net_admin(_userns) really gives up
/// CAP_NET_ADMIN (its SO_SNDBUFFORCE is refused) and can still open what
/// needs no privilege; the control keeps it. The device nodes are not on
/// the host: this checks the mechanism the VM points rely on.
#[test]
#[ignore = "needs root"]
fn open_probe_gives_up_cap_net_admin() {
    let exe = env!("CARGO_BIN_EXE_vhost-kernel-test");
    let mut modes = vec![("root", "ok"), ("no-cap-net-admin", "errno 1")];
    if std::path::Path::new("/proc/self/ns/user").exists() {
        modes.push(("user-ns", "errno 1"));
    }
    for (how, net_admin) in modes {
        let out = Command::new(exe).args(["open-probe", "--as", how, "/dev/null"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{how}: {text} {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(text, format!("become\tok\nnet_admin\t{net_admin}\nopen /dev/null\tok\n"), "{how}");
    }
    let out = Command::new(exe).args(["open-probe", "--as", "nobody"]).output().unwrap();
    assert!(!out.status.success());
}
