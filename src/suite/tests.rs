//! The runner, the kernel-log accounting and the scenario checks, without a kernel.

use crate::net::icmp::Replies;
use crate::sys::vhost::FeatureSet;

use super::*;

/// A kernel log as the reader would collect it: each sync appends its
/// marker, then the lines scripted to follow that marker.
#[derive(Default)]
struct ScriptedLog {
    records: std::cell::RefCell<Vec<String>>,
    /// (marker tag, line logged right after that marker).
    after: Vec<(&'static str, &'static str)>,
    /// Tags whose marker is never seen (the sync times out).
    unseen: Vec<&'static str>,
    /// Positions before which records were lost (EPIPE).
    lost: Vec<usize>,
    /// Tags synced, in order.
    tags: std::cell::RefCell<Vec<String>>,
}

const WARNING: &str = "WARNING: CPU: 0 PID: 1 at x.c:1 f";

impl KernelLog for ScriptedLog {
    fn sync(&self, tag: &str, _limit: Duration) -> std::result::Result<usize, (usize, String)> {
        self.tags.borrow_mut().push(tag.to_string());
        let mut r = self.records.borrow_mut();
        let seen = !self.unseen.contains(&tag);
        if seen {
            r.push(format!("vhost-kernel-test: sync {tag} 1"));
        }
        let pos = r.len();
        r.extend(self.after.iter().filter(|(t, _)| *t == tag).map(|(_, l)| l.to_string()));
        if seen {
            Ok(pos)
        } else {
            Err((pos, format!("timed out waiting for marker {tag:?}")))
        }
    }
    fn reports(&self, from: usize, to: usize) -> (Vec<String>, Option<String>) {
        let r = self.records.borrow();
        let lost = self.lost.iter().any(|&p| from <= p && p < to).then(|| "records lost (EPIPE)".to_string());
        (crate::sys::kmsg::find_splats(&r[from..to.min(r.len())], 25), lost)
    }
}

/// One pass of `tests` (they skip at once with --fake-device: no
/// device, no root needed) against `log`: (exit code, KTAP without the
/// timing lines).
async fn one_pass(tests: &[&str], log: &ScriptedLog) -> (i32, String) {
    let opts = RunOpts { fake_device: true, ..Default::default() };
    let mut k = Ktap::new(Vec::new());
    k.header(tests.len() + 1);
    run_points(&mut k, tests, &opts, Some(log), &mut 0, "", false, &mut Timings::start()).await;
    let code = k.exit_code();
    let text = String::from_utf8(k.into_inner()).unwrap();
    (code, text.lines().filter(|l| !timed(l)).map(|l| format!("{l}\n")).collect())
}

/// A timing diagnostic (`# NAME: S s` or `# timing: ...`).
fn timed(l: &str) -> bool {
    let d = l.trim_start().strip_prefix("# ").unwrap_or("");
    let duration = d.split_once(": ").and_then(|(_, v)| v.strip_suffix(" s")).map(|v| v.parse::<f64>().is_ok());
    d.starts_with("timing: ") || duration == Some(true)
}

const SKIP_FAKE: &str = "# SKIP needs /dev/vhost-net-kernel and /dev/vktest (--fake-device)";
const TWO: [&str; 2] = ["attach_once", "vktest_kick_index2_einval"];
/// The marker tags of TWO's points in a pass of `run` (they name the point).
const START1: &str = "start-1:attach_once";
const END1: &str = "end-1:attach_once";
const START2: &str = "start-2:vktest_kick_index2_einval";
const END2: &str = "end-2:vktest_kick_index2_einval";

#[tokio::test(flavor = "current_thread")]
async fn clean_log_passes_the_between_check() {
    let log = ScriptedLog { after: vec![(END2, "virtio_net virtio0 eth0: renamed")], ..Default::default() };
    let (code, text) = one_pass(&TWO, &log).await;
    assert_eq!(code, crate::report::ktap::EXIT_PASS, "{text}");
    assert!(text.ends_with(&format!("ok 3 {BETWEEN_POINTS}\n")), "{text}");
    assert_eq!(*log.tags.borrow(), [START1, END1, START2, END2, "end-pass"]);
}

#[tokio::test(flavor = "current_thread")]
async fn report_between_points_fails_the_between_check() {
    for (at, next) in [(END1, START2), (END2, "end-pass")] {
        // Logged right after a point's end marker: outside every window.
        let log = ScriptedLog { after: vec![(at, WARNING)], ..Default::default() };
        let (code, text) = one_pass(&TWO, &log).await;
        assert_eq!(code, crate::report::ktap::EXIT_FAIL, "{text}");
        let want = format!(
            "ok 1 attach_once {SKIP_FAKE}\nok 2 vktest_kick_index2_einval {SKIP_FAKE}\n\
             # kernel reported a problem during the time between test points:\n# {WARNING}\n\
             # vhost-kernel-test: sync {next} 1\n\
             not ok 3 {BETWEEN_POINTS}\n"
        );
        assert_eq!(text, format!("KTAP version 1\n1..3\n{want}"), "after {at}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn report_inside_a_window_fails_that_point_only() {
    let log = ScriptedLog { after: vec![(START2, WARNING)], ..Default::default() };
    let (_, text) = one_pass(&TWO, &log).await;
    assert!(
        text.contains(&format!(
            "# kernel reported a problem during vktest_kick_index2_einval:\n# {WARNING}\n\
             # vhost-kernel-test: sync {END2} 1\nnot ok 2 vktest_kick_index2_einval\n"
        )),
        "{text}"
    );
    assert!(text.ends_with(&format!("ok 3 {BETWEEN_POINTS}\n")), "{text}");
}

/// `run --fail-fast`: a report during point 1 ends the run there; without
/// the flag every point runs (and the report still fails its point).
#[tokio::test(flavor = "current_thread")]
async fn fail_fast_stops_at_the_first_kernel_report() {
    for fail_fast in [false, true] {
        let log = ScriptedLog { after: vec![(START1, WARNING)], ..Default::default() };
        let opts = RunOpts { fake_device: true, fail_fast, ..Default::default() };
        let mut k = Ktap::new(Vec::new());
        k.header(3);
        let code = single_pass(&mut k, &TWO, &opts, Some(&log)).await;
        assert_eq!(code, crate::report::ktap::EXIT_FAIL);
        let text = String::from_utf8(k.into_inner()).unwrap();
        let text: String = text.lines().filter(|l| !timed(l)).map(|l| format!("{l}\n")).collect();
        let (second, stop, tags) = if fail_fast {
            (
                format!("# SKIP {STOPPED_AFTER_REPORT}"),
                "# --fail-fast: stopped after the kernel report during attach_once (quoted above)\n",
                vec![START1, END1, "end-pass"],
            )
        } else {
            (SKIP_FAKE.to_string(), "", vec![START1, END1, START2, END2, "end-pass"])
        };
        let want = format!(
            "KTAP version 1\n1..3\n\
             # kernel reported a problem during attach_once:\n# {WARNING}\n# vhost-kernel-test: sync {END1} 1\n\
             not ok 1 attach_once\nok 2 vktest_kick_index2_einval {second}\nok 3 {BETWEEN_POINTS}\n{stop}\
             # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0\n"
        );
        assert_eq!(text, want, "fail_fast {fail_fast}");
        // With the flag, point 2 never started (no marker of its own).
        assert_eq!(*log.tags.borrow(), tags, "fail_fast {fail_fast}");
    }
}

#[test]
fn markers_name_the_point() {
    let tags = |tag, n| marker_tags(tag, n, "teardown_exit");
    assert_eq!(tags("", 7), ("start-7:teardown_exit".into(), "end-7:teardown_exit".into()));
    assert_eq!(tags("2.", 7), ("start-2.7:teardown_exit".into(), "end-2.7:teardown_exit".into()));
}

#[tokio::test(flavor = "current_thread")]
async fn incomplete_end_fails_the_point() {
    let log = ScriptedLog { unseen: vec![END1], ..Default::default() };
    let (code, text) = one_pass(&TWO, &log).await;
    assert_eq!(code, crate::report::ktap::EXIT_FAIL, "{text}");
    assert!(
        text.contains(&format!(
            "# kernel log check of attach_once incomplete: end marker not seen: timed out waiting for marker \"{END1}\"\n\
             not ok 1 attach_once\n"
        )),
        "{text}"
    );
    assert!(text.contains(&format!("ok 2 vktest_kick_index2_einval {SKIP_FAKE}\n")), "{text}");
}

#[tokio::test(flavor = "current_thread")]
async fn failed_begin_fails_the_point() {
    let log = ScriptedLog { unseen: vec![START2], ..Default::default() };
    let (code, text) = one_pass(&TWO, &log).await;
    assert_eq!(code, crate::report::ktap::EXIT_FAIL, "{text}");
    assert!(
        text.contains("# kernel log check of vktest_kick_index2_einval incomplete: start marker not seen"),
        "{text}"
    );
    assert!(text.contains("not ok 2 vktest_kick_index2_einval\n"), "{text}");
    assert!(text.contains(&format!("ok 1 attach_once {SKIP_FAKE}\n")), "{text}");
}

#[tokio::test(flavor = "current_thread")]
async fn lost_records_fail_the_window_that_holds_them() {
    // Records: 0 START1, 1 END1, 2 START2, 3 END2, 4 end-pass.
    // A gap before record 1 is inside point 1's window (1..2); one
    // before record 2 is between the points (2..3).
    for (gap, failed) in [(1, "not ok 1 attach_once\n"), (2, &*format!("not ok 3 {BETWEEN_POINTS}\n"))] {
        let log = ScriptedLog { lost: vec![gap], ..Default::default() };
        let (code, text) = one_pass(&TWO, &log).await;
        assert_eq!(code, crate::report::ktap::EXIT_FAIL, "{text}");
        assert!(text.contains("incomplete: records lost (EPIPE)"), "{text}");
        assert!(text.contains(failed), "gap {gap}: {text}");
    }
}

/// The real monitor's side of lost records: its reports over a range
/// with a gap are incomplete (the reader's handling of EPIPE is tested
/// in kmsg.rs).
#[test]
fn monitor_reports_lost_records_as_incomplete() {
    let (_, lost) = crate::sys::kmsg::tests_support::monitor_with_gap().reports(0, 2);
    assert!(lost.is_some_and(|w| w.contains("EPIPE")));
}

#[tokio::test(flavor = "current_thread")]
async fn repeat_stops_at_the_first_kernel_report() {
    // A WARNING during the first point of the second pass.
    let log = ScriptedLog { after: vec![("start-2.1:attach_once", WARNING)], ..Default::default() };
    let opts = RunOpts { fake_device: true, ..Default::default() };
    let mut k = Ktap::new(Vec::new());
    k.header(3);
    let code = repeat_points(&mut k, &TWO, &opts, 3, Some(&log)).await;
    assert_eq!(code, crate::report::ktap::EXIT_FAIL);
    let text = String::from_utf8(k.into_inner()).unwrap();
    // Timings vary: check their shape, then compare the rest exactly.
    // Points run: 2 in iteration 1, 1 in iteration 2; a summary per pass and one overall.
    assert_eq!(text.lines().filter(|l| timed(l)).count(), 2 + 1 + 1 + 1 + 1, "{text}");
    let text: String = text.lines().filter(|l| !timed(l)).map(|l| format!("{l}\n")).collect();
    let skip = SKIP_FAKE;
    let want = format!(
        "KTAP version 1\n1..3\n\
         \x20   KTAP version 1\n    1..3\n    ok 1 attach_once {skip}\n    ok 2 vktest_kick_index2_einval {skip}\n\
         \x20   ok 3 {BETWEEN_POINTS}\n\
         \x20   # Totals: pass:1 fail:0 xfail:0 xpass:0 skip:2 error:0\n\
         ok 1 iteration-1\n\
         \x20   KTAP version 1\n    1..3\n\
         \x20   # kernel reported a problem during attach_once:\n    # {WARNING}\n\
         \x20   # vhost-kernel-test: sync end-2.1:attach_once 1\n\
         \x20   not ok 1 attach_once\n    ok 2 vktest_kick_index2_einval # SKIP {STOPPED_AFTER_REPORT}\n\
         \x20   ok 3 {BETWEEN_POINTS}\n\
         \x20   # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0\n\
         # stopping: the kernel reported a problem during attach_once in iteration 2 (quoted above)\n\
         not ok 2 iteration-2\n\
         ok 3 iteration-3 # SKIP {STOPPED_AFTER_REPORT} in iteration 2\n\
         # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0\n"
    );
    assert_eq!(text, want);
    // No test point ran after the report; each pass's log ends with its own check.
    let tags = log.tags.borrow();
    assert_eq!(
        *tags,
        [
            "start-1.1:attach_once",
            "end-1.1:attach_once",
            "start-1.2:vktest_kick_index2_einval",
            "end-1.2:vktest_kick_index2_einval",
            "end-1.pass",
            "start-2.1:attach_once",
            "end-2.1:attach_once",
            "end-2.pass"
        ]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn each_pass_checks_the_log_since_the_previous_pass() {
    // Logged after the first pass's check: the second pass's check must see it.
    let log = ScriptedLog { after: vec![("end-1.pass", WARNING)], ..Default::default() };
    let opts = RunOpts { fake_device: true, ..Default::default() };
    let mut k = Ktap::new(Vec::new());
    k.header(2);
    let code = repeat_points(&mut k, &TWO, &opts, 2, Some(&log)).await;
    assert_eq!(code, crate::report::ktap::EXIT_FAIL);
    let text = String::from_utf8(k.into_inner()).unwrap();
    let quote = format!(
        "    # {WARNING}\n    # vhost-kernel-test: sync start-2.1:attach_once 1\n    not ok 3 {BETWEEN_POINTS}\n"
    );
    assert!(text.contains(&quote), "{text}");
    assert!(text.contains("ok 1 iteration-1\n") && text.contains("not ok 2 iteration-2\n"), "{text}");
}

#[test]
fn corrupted_flood_replies_fail_and_never_count_as_flow() {
    let t = Duration::from_secs(15);
    let r = |verified, corrupted| Replies { verified, corrupted };
    assert!(judge_flow(H2G, r(20, 0), 20, 20, t).is_ok());
    // Loss alone during a teardown: no verdict when nothing more is asked.
    assert!(judge_flow(H2G, r(3, 0), 3, 0, t).is_ok());
    let e = judge_flow(G2H, r(25, 2), 25, 20, t).unwrap_err().to_string();
    assert_eq!(e, "flood g2h -> h2g: 2 corrupted replies (data differs from the request's; 25 verified)");
    let e = judge_flow(H2G, r(19, 1), 19, 0, t).unwrap_err().to_string();
    assert!(e.starts_with("flood h2g -> g2h: 1 corrupted reply "), "{e}");
    // Counted from the wait's start: 30 verified overall, 5 of them new.
    let e = judge_flow(H2G, r(30, 0), 5, 20, t).unwrap_err().to_string();
    assert_eq!(e, "flood h2g -> g2h got 5 of 20 verified replies within 15s");
    let stopped = FloodsStopped { summaries: vec![], corrupted: vec![] };
    assert!(stopped.verdict().is_ok());
    let stopped = FloodsStopped { summaries: vec![], corrupted: vec![format!("{G2H}: 3 of 90 replies corrupted")] };
    let e = stopped.verdict().unwrap_err().to_string();
    assert_eq!(e, "corrupted flood replies: g2h -> h2g: 3 of 90 replies corrupted");
    // A corruption fails a point whose teardown went well, and is kept
    // next to another failure.
    assert!(with_verdict(Ok(1), Err(anyhow!("corrupted"))).is_err());
    let both = with_verdict::<()>(Err(anyhow!("teardown failed")), Err(anyhow!("corrupted"))).unwrap_err();
    assert_eq!(format!("{both:#}"), "corrupted: teardown failed");
    assert_eq!(with_verdict(Ok(1), Ok(())).unwrap(), 1);
}

#[test]
fn negotiated_features_must_be_the_asked_set() {
    use crate::sys::ioctl::{VIRTIO_F_ACCESS_PLATFORM, VIRTIO_NET_F_CSUM};
    let rfc = FeatureSet::rfc();
    let offloads = FeatureSet::offloads();
    assert!(check_negotiated("virtio0", &rfc, rfc.bits).is_ok());
    assert!(check_negotiated("virtio0", &offloads, offloads.bits).is_ok());
    // A kernel that ignored the set: virtio-net got the RFC's.
    let e = check_negotiated("virtio0", &offloads, rfc.bits).unwrap_err().to_string();
    assert_eq!(
        e,
        "virtio-net on virtio0 negotiated version_1,access_platform (0x300000000), not feature set offloads \
         (0x300009983): missing csum,guest_csum,guest_tso4,guest_tso6,host_tso4,host_tso6,mrg_rxbuf"
    );
    let e = check_negotiated("virtio1", &rfc, rfc.bits & !VIRTIO_F_ACCESS_PLATFORM).unwrap_err().to_string();
    assert!(e.ends_with(": missing access_platform"), "{e}");
    let e = check_negotiated("virtio1", &rfc, rfc.bits | VIRTIO_NET_F_CSUM).unwrap_err().to_string();
    assert!(e.ends_with(": not asked for csum"), "{e}");
}

#[test]
fn scenario_feature_sets() {
    let mut said = Vec::new();
    let mut diag = |d: String| said.push(d);
    assert_eq!(features_for(None, false, &mut diag).unwrap(), FeatureSet::rfc());
    assert_eq!(features_for(None, true, &mut diag).unwrap(), FeatureSet::rfc());
    assert_eq!(features_for(Some("offloads"), false, &mut diag).unwrap(), FeatureSet::offloads());
    let hdr = features_for(Some("offloads"), true, &mut diag).unwrap();
    assert_eq!(hdr.name, "mrg_rxbuf");
    assert!(features_for(Some("bogus"), false, &mut diag).is_err());
    assert_eq!(said, ["feature set offloads without the TAP's vnet header: running with mrg_rxbuf"]);
    // Only an explicit set other than the RFC's may be skipped, and
    // never with the fake device.
    let opts = RunOpts::default();
    assert_eq!(feature_set_skip(&FeatureSet::rfc(), &opts).unwrap(), None);
    let fake = RunOpts { fake_device: true, features: Some("offloads".into()), ..Default::default() };
    assert_eq!(feature_set_skip(&FeatureSet::offloads(), &fake).unwrap(), None);
}

#[test]
fn addresses() {
    assert_eq!(H2G_ADDR.to_string(), "fe80::");
    assert_eq!(G2H_ADDR.to_string(), "fe80::1");
}

#[test]
fn damaged_packets_are_found_in_snmp6() {
    let healthy = "Ip6InReceives                   \t120\nIp6InTruncatedPkts              \t0\nIcmp6InCsumErrors               \t0\nIp6ReasmFails                   \t3\n";
    assert!(damage_in(healthy).is_empty(), "reassembly failures are loss, not damage");
    let damaged = healthy.replace("Icmp6InCsumErrors               \t0", "Icmp6InCsumErrors               \t2");
    assert_eq!(damage_in(&damaged), [("Icmp6InCsumErrors".to_string(), 2)]);
}

/// `report` reads the runner's own output back: the same points, verdicts,
/// durations and quoted report, iteration by iteration.
#[tokio::test(flavor = "current_thread")]
async fn the_report_reads_what_the_runner_wrote() {
    use crate::report::results::{parse, Verdict};
    let log = ScriptedLog { after: vec![("start-2.1:attach_once", WARNING)], ..Default::default() };
    let opts = RunOpts { fake_device: true, ..Default::default() };
    let mut k = Ktap::new(Vec::new());
    k.header(3);
    repeat_points(&mut k, &TWO, &opts, 3, Some(&log)).await;
    let r = parse("run", &String::from_utf8(k.into_inner()).unwrap()).unwrap();
    assert!(r.repeat && r.complete(), "{r:?}");
    let verdicts: Vec<Vec<Verdict>> = r.suites.iter().map(|s| s.points.iter().map(|p| p.verdict).collect()).collect();
    use Verdict::{Fail, Pass, Skip};
    assert_eq!(verdicts, [vec![Skip, Skip, Pass], vec![Fail, Skip, Pass], vec![]]);
    let failed = &r.suites[1].points[0];
    assert_eq!(failed.kernel_report.as_ref().and_then(|q| q.first()).map(String::as_str), Some(WARNING));
    assert!(failed.duration_s.is_some(), "{failed:?}");
    assert_eq!(r.suites[2].verdict, Some(Skip));
    assert!(r.suites[0].time_s.is_some());
}
