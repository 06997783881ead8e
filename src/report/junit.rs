//! JUnit XML of a run (quick-junit, the writer cargo-nextest uses): one
//! `<testsuite>` for the pass (one per iteration with `--repeat`), one
//! `<testcase>` per test point with its duration, `<failure>` for a point
//! that failed (the kernel report it quoted as the text, type "kernel
//! report"; else its diagnostics) or that the kernel died in (type "kernel
//! crash", the host's crash report as the text), `<skipped>` with the
//! reason, and the point's diagnostics as `<system-out>`. A run that bailed
//! out, or whose output ends early with no crash report to explain it, gets
//! an `<error>` case saying so, so that a cut run never reads as green.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::results::{Point, Results, Suite, Verdict, KERNEL_REPORT_DURING, RUN_NAME};

/// Name of the error case of a run that bailed out.
pub const BAIL_OUT_CASE: &str = "bail_out";
/// Name of the error case of an output that ends before its plan.
pub const INCOMPLETE_CASE: &str = "results_incomplete";

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or_default()
}

/// One line saying why `p` failed.
fn failure_message(p: &Point) -> String {
    if let Some(report) = &p.kernel_report {
        return match report.first() {
            Some(first) => format!("{KERNEL_REPORT_DURING}{}: {first}", p.name),
            None => format!("{KERNEL_REPORT_DURING}{}", p.name),
        };
    }
    let is_duration =
        |d: &str| d.strip_suffix(" s").and_then(|d| d.rsplit_once(": ")).is_some_and(|(_, v)| v.parse::<f64>().is_ok());
    p.diagnostics
        .iter()
        .rev()
        .find(|d| !d.trim().is_empty() && !is_duration(d))
        .cloned()
        .unwrap_or_else(|| format!("not ok {} {}", p.number, p.name))
}

fn case(classname: &str, p: &Point) -> TestCase {
    let status = match p.verdict {
        Verdict::Pass => TestCaseStatus::success(),
        Verdict::Skip => {
            let mut s = TestCaseStatus::skipped();
            if let Some(reason) = &p.skip_reason {
                s.set_message(reason.as_str());
            }
            s
        }
        Verdict::Fail => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(failure_message(p));
            match &p.kernel_report {
                Some(report) => {
                    s.set_type("kernel report");
                    s.set_description(format!("{KERNEL_REPORT_DURING}{}:\n{}", p.name, report.join("\n")));
                }
                None => {
                    s.set_type("failure");
                    s.set_description(p.diagnostics.join("\n"));
                }
            }
            s
        }
        Verdict::Crash => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_type("kernel crash");
            s.set_message(format!("the kernel crashed during {}: the guest died before its result", p.name));
            s.set_description(p.kernel_report.as_deref().unwrap_or_default().join("\n"));
            s
        }
    };
    let mut c = TestCase::new(p.name.as_str(), status);
    c.set_classname(classname);
    c.set_time(secs(p.duration_s.unwrap_or(0.0)));
    if !p.diagnostics.is_empty() {
        c.set_system_out(p.diagnostics.join("\n"));
    }
    c
}

/// An `<error>` case named `name` (the run itself went wrong).
fn error_case(classname: &str, name: &str, ty: &str, message: String) -> TestCase {
    let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
    s.set_type(ty);
    s.set_message(message);
    let mut c = TestCase::new(name, s);
    c.set_classname(classname);
    c.set_time(Duration::ZERO);
    c
}

/// The case of an iteration that has no test points of its own (skipped
/// after a kernel report in an earlier one).
fn iteration_case(s: &Suite) -> Option<TestCase> {
    let v = s.verdict?;
    let name = s.name.rsplit('.').next().unwrap_or(&s.name);
    let p = Point {
        number: s.iteration.unwrap_or(0),
        name: name.to_string(),
        verdict: v,
        skip_reason: s.skip_reason.clone(),
        duration_s: None,
        diagnostics: s.before.iter().chain(&s.trailing).cloned().collect(),
        kernel_report: None,
        in_plan: true,
    };
    Some(case(&s.name, &p))
}

/// Why the output ended early, when nothing else says so.
fn incomplete(r: &Results) -> Option<String> {
    let t = r.totals();
    if r.complete() || t.crash > 0 || r.bail_out().is_some() {
        return None;
    }
    let ran = t.pass + t.fail + t.skip;
    let mut why = format!("the results of {} end after {ran} of {} planned test points", r.source, t.planned);
    if let (Some(n), Some(missing)) = (t.planned_iterations, t.missing_iterations) {
        why += &format!(" ({} of {n} iterations never started)", missing);
    }
    why += " with no crash report: the guest died, hung or was killed";
    Some(why)
}

/// The JUnit report of `r`.
pub fn junit(r: &Results) -> Report {
    let mut report = Report::new(RUN_NAME);
    let mut suites: Vec<TestSuite> = Vec::new();
    for s in &r.suites {
        let mut ts = TestSuite::new(s.name.as_str());
        for p in &s.points {
            ts.add_test_case(case(&s.name, p));
        }
        if s.points.is_empty() {
            ts.add_test_cases(iteration_case(s));
        }
        if let Some(reason) = &s.bail_out {
            ts.add_test_case(error_case(&s.name, BAIL_OUT_CASE, "bail out", format!("Bail out! {reason}")));
        }
        let sum: f64 = s.points.iter().filter_map(|p| p.duration_s).sum();
        ts.set_time(secs(s.time_s.unwrap_or(sum)));
        let said: Vec<&str> = s.before.iter().chain(&s.trailing).map(String::as_str).collect();
        if !said.is_empty() {
            ts.set_system_out(said.join("\n"));
        }
        suites.push(ts);
    }
    if let Some(why) = incomplete(r) {
        if suites.is_empty() {
            let mut ts = TestSuite::new(RUN_NAME);
            ts.set_time(Duration::ZERO);
            suites.push(ts);
        }
        let last = suites.last_mut().expect("a suite");
        let classname = last.name.as_str().to_string();
        last.add_test_case(error_case(&classname, INCOMPLETE_CASE, "incomplete", why));
    }
    let total: Duration = suites.iter().filter_map(|s| s.time).sum();
    report.add_test_suites(suites);
    report.set_time(total);
    report
}
