//! The KTAP reader and the CI formats, on output of the real KTAP writer.

use super::json::summary;
use super::junit::{junit, BAIL_OUT_CASE, INCOMPLETE_CASE};
use super::ktap::{Ktap, Outcome};
use super::results::{parse, Verdict, KERNEL_CRASH};
use crate::suite::{quote_kernel_reports, BETWEEN_POINTS, STOPPED_AFTER_REPORT};

const WARNING: &str = "WARNING: CPU: 0 PID: 1 at drivers/vhost/net.c:1 vhost_net_kernel_attach+0x1/0x2";
const TRACE: &str = "Call Trace:";

/// What a test point writes before its result, and its outcome.
type PointBody<W> = dyn Fn(&mut Ktap<W>) -> Outcome;

/// A pass as `run` writes it: attach_once passes, teardown_exit fails with
/// a kernel report, teardown_unbind skips, a failure without a report,
/// then the between-points check, timing and totals.
fn one_pass<W: std::io::Write>(k: &mut Ktap<W>, upto: usize) {
    k.header(5);
    k.diag("kmemleak baseline in 0.1 s: 0 earlier leak(s) set aside");
    let points: [(&str, &PointBody<W>); 5] = [
        ("attach_once", &|k| {
            k.diag("attach_once: 0.012 s");
            Outcome::Pass
        }),
        ("teardown_exit", &|k| {
            k.diag("serve: h2g=vhostkernel0 g2h=eth0");
            k.diag("teardown_exit: 1.500 s");
            quote_kernel_reports(k, "teardown_exit", &[], &[WARNING.into(), TRACE.into()]);
            Outcome::Fail
        }),
        ("teardown_unbind", &|k| {
            k.diag("teardown_unbind: 0.000 s");
            Outcome::Skip("needs the real virtio device (--fake-device)".into())
        }),
        ("vktest_kick_index2_einval", &|k| {
            k.diag("vktest_kick_index2_einval: expected EINVAL, got 0");
            k.diag("vktest_kick_index2_einval: 0.250 s");
            Outcome::Fail
        }),
        (BETWEEN_POINTS, &|_| Outcome::Pass),
    ];
    for (name, body) in points.iter().take(upto) {
        let o = body(k);
        k.result(name, &o);
    }
    if upto == points.len() {
        k.diag("timing: 4 points in 1.76 s (guest clock)");
        k.totals();
    }
}

fn text(k: Ktap<Vec<u8>>) -> String {
    String::from_utf8(k.into_inner()).unwrap()
}

fn whole_pass() -> String {
    let mut k = Ktap::new(Vec::new());
    one_pass(&mut k, 5);
    text(k) + "VKT-EXIT: 1\n"
}

#[test]
fn a_pass_is_read_point_by_point() {
    let r = parse("results.log", &whole_pass()).unwrap();
    assert!(!r.repeat && r.complete(), "{r:?}");
    assert_eq!(r.exit_status, Some(1));
    assert_eq!(r.suites.len(), 1);
    let s = &r.suites[0];
    assert_eq!((s.planned, s.time_s), (Some(5), Some(1.76)));
    assert!(s.trailing.last().unwrap().starts_with("Totals: pass:2 fail:2"), "{:?}", s.trailing);
    let p = &s.points;
    let got: Vec<_> = p.iter().map(|p| (p.number, p.name.as_str(), p.verdict, p.duration_s)).collect();
    assert_eq!(
        got,
        [
            (1, "attach_once", Verdict::Pass, Some(0.012)),
            (2, "teardown_exit", Verdict::Fail, Some(1.5)),
            (3, "teardown_unbind", Verdict::Skip, Some(0.0)),
            (4, "vktest_kick_index2_einval", Verdict::Fail, Some(0.25)),
            (5, BETWEEN_POINTS, Verdict::Pass, None),
        ]
    );
    // The run's opening diagnostics go with the first point (as kunit.py reads them).
    assert_eq!(p[0].diagnostics, ["kmemleak baseline in 0.1 s: 0 earlier leak(s) set aside", "attach_once: 0.012 s"]);
    assert_eq!(p[1].kernel_report.as_deref(), Some(&[WARNING.to_string(), TRACE.to_string()][..]));
    assert_eq!(p[1].diagnostics.len(), 5, "{:?}", p[1].diagnostics);
    assert_eq!(p[2].skip_reason.as_deref(), Some("needs the real virtio device (--fake-device)"));
    assert_eq!(p[3].kernel_report, None);
    let t = r.totals();
    assert_eq!((t.planned, t.pass, t.fail, t.skip, t.crash, t.missing), (5, 2, 2, 1, 0, 0));
}

#[test]
fn fake_device_names_keep_their_durations() {
    let mut k = Ktap::new(Vec::new());
    k.mark_names("_fake_device");
    k.header(1);
    k.diag("teardown_exit: 0.202 s");
    k.result("teardown_exit", &Outcome::Pass);
    let r = parse("x", &text(k)).unwrap();
    assert_eq!(r.suites[0].points[0].name, "teardown_exit_fake_device");
    assert_eq!(r.suites[0].points[0].duration_s, Some(0.202));
}

#[test]
fn kmemleak_reports_count_as_kernel_reports() {
    let mut k = Ktap::new(Vec::new());
    k.header(1);
    k.diag("kmemleak: 1 unreferenced object(s); its report:");
    k.diag("unreferenced object 0xffff888003a1c000 (size 64):");
    k.diag("  comm \"vhost-kernel-te\", pid 50");
    k.diag("kmemleak_check: 6.100 s");
    k.result("kmemleak_check", &Outcome::Fail);
    let r = parse("x", &text(k)).unwrap();
    let p = &r.suites[0].points[0];
    assert_eq!(
        p.kernel_report.as_deref().unwrap(),
        ["unreferenced object 0xffff888003a1c000 (size 64):", "  comm \"vhost-kernel-te\", pid 50"]
    );
    assert_eq!(p.duration_s, Some(6.1));
}

/// `run --repeat 3` stopped by a report in iteration 2, written the way
/// `repeat_points` writes it (four spaces per level).
fn repeat_run(indent: &str) -> String {
    let mut k = Ktap::new(Vec::new());
    k.header(3);
    k.diag("kmemleak baseline in 0.1 s: 0 earlier leak(s) set aside");
    for it in 1..=2 {
        let mut sub = k.nested();
        sub.header(2);
        sub.diag("attach_once: 0.010 s");
        if it == 2 {
            quote_kernel_reports(&mut sub, "attach_once", &[], &[WARNING.into()]);
            sub.result("attach_once", &Outcome::Fail);
            sub.result(BETWEEN_POINTS, &Outcome::Skip(STOPPED_AFTER_REPORT.into()));
        } else {
            sub.result("attach_once", &Outcome::Pass);
            sub.result(BETWEEN_POINTS, &Outcome::Pass);
        }
        sub.diag("timing: 1 points in 0.50 s (guest clock)");
        sub.totals();
        let o = sub.outcome("every test point skipped");
        if it == 2 {
            k.diag("stopping: the kernel reported a problem during attach_once in iteration 2 (quoted above)");
        }
        k.result(&format!("iteration-{it}"), &o);
    }
    k.result("iteration-3", &Outcome::Skip(format!("{STOPPED_AFTER_REPORT} in iteration 2")));
    k.totals();
    text(k).replace("    ", indent)
}

#[test]
fn repeat_iterations_are_suites_at_any_indentation() {
    for indent in ["    ", "  "] {
        let r = parse("results.log", &repeat_run(indent)).unwrap();
        assert!(r.repeat && r.complete(), "{r:?}");
        assert_eq!(r.planned_iterations, Some(3));
        let names: Vec<_> = r.suites.iter().map(|s| (s.name.as_str(), s.iteration, s.verdict)).collect();
        assert_eq!(
            names,
            [
                ("vhost-kernel-test.iteration-1", Some(1), Some(Verdict::Pass)),
                ("vhost-kernel-test.iteration-2", Some(2), Some(Verdict::Fail)),
                ("vhost-kernel-test.iteration-3", Some(3), Some(Verdict::Skip)),
            ],
            "indent {indent:?}"
        );
        let two = &r.suites[1];
        assert_eq!(two.points[0].kernel_report.as_deref(), Some(&[WARNING.to_string()][..]));
        assert_eq!(two.points[1].skip_reason.as_deref(), Some(STOPPED_AFTER_REPORT));
        assert_eq!(two.time_s, Some(0.5));
        assert!(two.trailing.iter().any(|d| d.starts_with("stopping: ")), "{:?}", two.trailing);
        assert!(r.suites[2].points.is_empty());
        // The run's opening lines go with the iteration they came before.
        assert_eq!(r.suites[0].before, ["kmemleak baseline in 0.1 s: 0 earlier leak(s) set aside"]);
        assert!(two.before.is_empty(), "{:?}", two.before);
        let t = r.totals();
        assert_eq!((t.planned, t.pass, t.fail, t.skip, t.missing, t.missing_iterations), (4, 2, 1, 1, 0, Some(0)));
    }
}

#[test]
fn a_cut_pass_counts_what_is_missing() {
    let mut k = Ktap::new(Vec::new());
    one_pass(&mut k, 2);
    // Teardown_unbind had started: what it printed is left over.
    k.diag("serve: h2g=vhostkernel0 g2h=eth0");
    let r = parse("results.log", &text(k)).unwrap();
    assert!(!r.complete());
    assert_eq!(r.suites[0].points.len(), 2);
    assert_eq!(r.suites[0].trailing, ["serve: h2g=vhostkernel0 g2h=eth0"]);
    assert_eq!(r.totals().missing, 3);
    assert_eq!(r.exit_status, None);
    // No crash report to explain it: the JUnit says the run was cut.
    let j = junit(&r);
    let last = j.test_suites[0].test_cases.last().unwrap();
    assert_eq!(last.name.as_str(), INCOMPLETE_CASE);
    assert_eq!(j.errors, 1);
}

#[test]
fn a_cut_repeat_keeps_the_unfinished_iteration() {
    let full = repeat_run("    ");
    // Cut inside iteration 2, before its first result.
    let cut: String = full.lines().take_while(|l| !l.contains("kernel reported")).map(|l| format!("{l}\n")).collect();
    let r = parse("results.log", &cut).unwrap();
    assert_eq!(r.suites.len(), 2);
    let two = &r.suites[1];
    assert_eq!((two.iteration, two.verdict, two.points.len()), (Some(2), None, 0));
    assert_eq!(two.trailing, ["attach_once: 0.010 s"]);
    let t = r.totals();
    assert_eq!((t.missing, t.missing_iterations), (2, Some(1)));
    assert!(!r.complete());
}

#[test]
fn a_crash_is_the_point_that_was_running() {
    let mut k = Ktap::new(Vec::new());
    one_pass(&mut k, 2);
    k.diag("serve: h2g=vhostkernel0 g2h=eth0");
    let mut r = parse("results.log", &text(k)).unwrap();
    r.attribute_crash(
        Some("teardown_unbind"),
        "Kernel panic - not syncing: Fatal exception\nRIP: vhost_poll+0x1/0x2\n",
    );
    let p = r.suites[0].points.last().unwrap();
    assert_eq!((p.number, p.name.as_str(), p.verdict, p.in_plan), (3, "teardown_unbind", Verdict::Crash, true));
    assert_eq!(p.diagnostics, ["serve: h2g=vhostkernel0 g2h=eth0"]);
    assert_eq!(
        p.kernel_report.as_deref().unwrap(),
        ["Kernel panic - not syncing: Fatal exception", "RIP: vhost_poll+0x1/0x2"]
    );
    assert!(r.suites[0].trailing.is_empty());
    // The points after it are not invented: they are missing.
    let t = r.totals();
    assert_eq!((t.crash, t.missing, r.suites[0].points.len()), (1, 2, 3));
    assert!(!r.complete());
    let j = junit(&r);
    assert_eq!((j.failures, j.errors), (2, 0), "the crash explains the cut: no incomplete case");
    let s = summary(&r);
    assert_eq!(serde_json::to_value(&s.points[2]).unwrap()["result"], "crash");
}

#[test]
fn a_crash_after_a_points_result_is_not_blamed_on_it() {
    let mut k = Ktap::new(Vec::new());
    one_pass(&mut k, 2);
    let mut r = parse("results.log", &text(k)).unwrap();
    r.attribute_crash(Some("teardown_exit"), "BUG: kernel NULL pointer dereference");
    let p = r.suites[0].points.last().unwrap();
    assert_eq!((p.name.as_str(), p.verdict, p.in_plan, p.number), (KERNEL_CRASH, Verdict::Crash, false, 3));
    assert!(p.diagnostics[0].contains("after the result of teardown_exit"), "{:?}", p.diagnostics);
    assert_eq!(r.totals().missing, 3, "kernel_crash takes no place in the plan");
    // No name (the console showed no start marker) and no output at all.
    let mut r = parse("results.log", "").unwrap();
    r.attribute_crash(None, "Kernel panic - not syncing: VFS: Unable to mount root fs");
    assert_eq!(r.suites.len(), 1);
    assert_eq!(r.suites[0].points[0].name, KERNEL_CRASH);
}

#[test]
fn a_crash_in_a_repeat_fails_its_iteration() {
    let full = repeat_run("    ");
    let cut: String = full.lines().take_while(|l| !l.contains("kernel reported")).map(|l| format!("{l}\n")).collect();
    let mut r = parse("results.log", &cut).unwrap();
    r.attribute_crash(Some("attach_once"), "Kernel panic");
    let two = &r.suites[1];
    assert_eq!(two.verdict, Some(Verdict::Crash));
    assert_eq!(two.points[0].name, "attach_once");
    assert_eq!(two.points[0].duration_s, Some(0.01), "what it printed before dying goes with it");
    let s = summary(&r);
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["iterations"][1]["result"], "crash");
    assert_eq!(v["points"][2]["iteration"], 2);
}

#[test]
fn a_bail_out_is_an_error_case() {
    let mut k = Ktap::new(Vec::new());
    k.header(3);
    k.bail_out("cannot watch the kernel log");
    k.totals();
    let r = parse("results.log", &text(k)).unwrap();
    assert_eq!(r.bail_out(), Some("cannot watch the kernel log"));
    assert!(!r.complete());
    let j = junit(&r);
    assert_eq!(j.test_suites[0].test_cases.len(), 1);
    assert_eq!(j.test_suites[0].test_cases[0].name.as_str(), BAIL_OUT_CASE);
    assert_eq!(j.errors, 1);
}

#[test]
fn what_is_not_ktap_is_an_error_with_its_line() {
    let bad = |t: &str| parse("f", t).unwrap_err();
    let e = bad("KTAP version 1\n1..2\nok 1 a\nhello\n");
    assert_eq!((e.line, e.message.as_str()), (4, "not a KTAP line: \"hello\""));
    assert_eq!(bad("ok 1 a\n").line, 1);
    assert!(bad("KTAP version 1\n1..2\nok 1 a\nok 3 b\n").message.contains("result 3 where 2 was expected"));
    assert_eq!(bad("KTAP version 1\n1..2\nok x a\n").line, 3);
    assert_eq!(bad("KTAP version 1\n1..1\n  # stray\n").line, 3);
    assert_eq!(bad("KTAP version 1\n1..1\nok 1 a # TODO later\n").line, 3);
    let three = "KTAP version 1\n1..1\n  KTAP version 1\n  1..1\n    KTAP version 1\n";
    assert!(bad(three).message.contains("more than one level"));
    assert_eq!(bad("KTAP version 1\nVKT-EXIT: x\n").line, 2);
    // CRs, blank lines and the exit line are fine.
    let r = parse("f", "KTAP version 1\r\n1..1\r\n\r\nok 1 a\r\nVKT-EXIT: 0\r\n").unwrap();
    assert_eq!((r.exit_status, r.suites[0].points[0].name.as_str()), (Some(0), "a"));
}

#[test]
fn the_json_summary_has_every_field() {
    let r = parse("results.log", &whole_pass()).unwrap();
    let v = serde_json::to_value(summary(&r)).unwrap();
    assert_eq!(v["exit_status"], 1);
    assert_eq!(v["complete"], true);
    assert_eq!(v["totals"]["fail"], 2);
    assert_eq!(v["totals"]["missing"], 0);
    assert_eq!(v["iterations"], serde_json::json!([]));
    let p = &v["points"][1];
    assert_eq!(p["name"], "teardown_exit");
    assert_eq!(p["number"], 2);
    assert_eq!(p["result"], "fail");
    assert_eq!(p["duration_s"], 1.5);
    assert_eq!(p["skip_reason"], serde_json::Value::Null);
    assert_eq!(p["kernel_report"], serde_json::json!([WARNING, TRACE]));
    assert_eq!(p["iteration"], serde_json::Value::Null);
    assert_eq!(v["points"][2]["skip_reason"], "needs the real virtio device (--fake-device)");
    assert_eq!(v["points"][0]["kernel_report"], serde_json::Value::Null);
}

#[test]
fn run_outputs_are_written_from_the_captured_ktap() {
    let dir = std::env::temp_dir().join(format!("vkt-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = super::Outputs { junit: Some(dir.join("j.xml")), json: Some(dir.join("s.json")) };
    let mut cap = super::Capture::new(Vec::new());
    {
        let mut k = Ktap::new(&mut cap);
        one_pass(&mut k, 5);
    }
    assert_eq!(super::write_run_outputs(&cap.text(), 1, &out), 1);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("s.json")).unwrap()).unwrap();
    assert_eq!((v["exit_status"].as_i64(), v["source"].as_str()), (Some(1), Some("run")));
    assert!(std::fs::read_to_string(dir.join("j.xml")).unwrap().contains("<testsuites"));
    // A file that cannot be written fails a run that passed.
    let nowhere = super::Outputs { junit: Some(dir.join("no/such/dir/j.xml")), json: None };
    assert_eq!(super::write_run_outputs(&cap.text(), 0, &nowhere), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
