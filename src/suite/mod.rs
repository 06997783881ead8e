//! `run`: the whole suite as KTAP — attach checks, then the teardown
//! scenarios with two-way traffic and floods, with kernel-log health checks.
//!
//! Where things are: [`registry`] (the table of test points), [`attach`]
//! (the ABI checks), [`contract_v2`] (what series v2 adds), [`scenario`] (teardowns under traffic), [`traffic`]
//! (placing, echoes, floods), [`child`] (the serving process), [`races`]
//! (the attach/close loop and leftovers), [`kernel_log`] (kernel health per
//! point), and here the runner that puts them together as KTAP.

pub mod adversarial;
pub mod attach;
pub mod child;
pub mod contract_v2;
pub mod contract_v3;
pub mod fault_inject;
pub mod kernel_log;
pub mod races;
pub mod registry;
pub mod scenario;
pub mod traffic;

pub use child::*;
pub use kernel_log::*;
pub use registry::*;
pub use scenario::*;
pub use traffic::*;

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::report::ktap::{Ktap, Outcome, EXIT_ALL_SKIPPED};
use crate::report::results::{KERNEL_REPORT_DURING, KMEMLEAK_HEAD, KMEMLEAK_TAIL};
use crate::sys::kmsg::{kmemleak_find_leaks, kmemleak_unavailable, KmsgMonitor, KMSG_PATH, LEAK_CHECK};
use crate::sys::netns::{self};
use crate::sys::vhost::{node_exists, VHOST_NET_KERNEL_PATH};
use crate::sys::vktest::VKTEST_PATH;
use attach::run_check;

#[derive(Debug, Clone)]
pub struct RunOpts {
    /// Prefix of the namespace names (`<prefix>h2g`, `<prefix>g2h`).
    pub ns_prefix: String,
    /// Limit of every wait (netlink events, child output/exit, replies).
    pub timeout: Duration,
    /// ICMPv6 data bytes per echo.
    pub size: usize,
    /// Adaptive echoes per direction.
    pub count: u32,
    /// Requests in flight per flood direction.
    pub flood_window: usize,
    /// Path of this program (to spawn `serve`).
    pub exe: String,
    /// Harness self-test: `serve --fake-device`; tests needing real devices skip.
    pub fake_device: bool,
    /// `serve --features SPEC` (None: serve's default, the RFC's set).
    pub features: Option<String>,
    /// The kernel log the monitor reads (normally /dev/kmsg).
    pub kmsg_path: String,
    /// Open/attach/close cycles of `attach_close_loop`.
    pub cycles: u32,
    /// Diagnostics `step: NAME` as a scenario reaches its steps (for tests
    /// that interrupt a run at a given step).
    pub progress: bool,
    /// `run --fail-fast`: the first test point during which the kernel
    /// logged a report ends the run (what `--repeat` always does).
    pub fail_fast: bool,
}

impl Default for RunOpts {
    fn default() -> Self {
        RunOpts {
            ns_prefix: String::new(),
            timeout: Duration::from_secs(15),
            size: 20000,
            count: 10,
            flood_window: 4,
            exe: "/proc/self/exe".into(),
            fake_device: false,
            features: None,
            kmsg_path: KMSG_PATH.into(),
            cycles: crate::suite::races::DEFAULT_CYCLES,
            progress: false,
            fail_fast: false,
        }
    }
}

impl RunOpts {
    pub fn h2g_ns(&self) -> String {
        format!("{}h2g", self.ns_prefix)
    }
    pub fn g2h_ns(&self) -> String {
        format!("{}g2h", self.ns_prefix)
    }
}

/// Why nothing can run here, if so.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (CAP_NET_ADMIN and CAP_SYS_ADMIN needed)".into());
    }
    match (node_exists(VHOST_NET_KERNEL_PATH), node_exists(VKTEST_PATH)) {
        (true, true) => None,
        (false, true) => Some(format!("{VHOST_NET_KERNEL_PATH} missing (CONFIG_VHOST_KERNEL=y needed)")),
        (true, false) => Some(format!("{VKTEST_PATH} missing (CONFIG_VDPA_VKTEST=y needed)")),
        (false, false) => Some(format!(
            "{VHOST_NET_KERNEL_PATH} and {VKTEST_PATH} missing (CONFIG_VHOST_KERNEL=y and CONFIG_VDPA_VKTEST=y needed)"
        )),
    }
}

/// What one test point gave: its outcome and, for a scenario, its time to ready.
type PointResult = Result<(Outcome, Option<Ready>)>;

async fn run_one(name: &str, opts: &RunOpts, diag: &mut dyn FnMut(String)) -> PointResult {
    vdpa_at_start()?;
    let Some(p) = registry::point(name) else { bail!("unknown test {name}") };
    if opts.fake_device {
        match p.needs {
            Needs::Devices => {
                return Ok((Outcome::Skip("needs /dev/vhost-net-kernel and /dev/vktest (--fake-device)".into()), None))
            }
            Needs::RealVirtio => {
                return Ok((Outcome::Skip("needs the real virtio device (--fake-device)".into()), None))
            }
            Needs::Serve | Needs::Nothing => {}
        }
    }
    let outcome = match p.body {
        Body::Scenario { teardown, vhost_hdr } => {
            let set = features_for(opts.features.as_deref(), vhost_hdr, diag)?;
            if let Some(why) = feature_set_skip(&set, opts)? {
                return Ok((Outcome::Skip(why), None));
            }
            let ready = scenario(teardown, vhost_hdr, &set, opts, diag).await?;
            return Ok((Outcome::Pass, Some(ready)));
        }
        Body::Attach(check) => run_check(check, opts.timeout).await?,
        Body::ContractV2(check) => contract_v2::run_v2_check(check, opts, diag).await?,
        Body::ContractV3(check) => contract_v3::run_v3_check(check, opts.timeout, diag)?,
        Body::CloseLoop => {
            races::attach_close_loop(opts.cycles, opts.timeout, diag).await?;
            Outcome::Pass
        }
        Body::TwoServes => {
            races::two_serves_at_once(opts, diag).await?;
            Outcome::Pass
        }
        Body::Adversarial(kind) => adversarial::run(kind, opts, diag).await?,
        Body::Cleanup => {
            check_no_leftovers(opts, vdpa_at_start()?).await?;
            Outcome::Pass
        }
        Body::FaultSweep => fault_inject::fault_inject_sweep(diag).await?,
        Body::LeakCheck => leak_check(diag).await?,
        Body::KernelLogBetween => bail!("{name} is the runner's own check, not a point to run"),
    };
    Ok((outcome, None))
}

/// The end-of-pass leak check: kmemleak's verdict on everything allocated
/// before it (see [`kmemleak_find_leaks`]); fails with its report.
pub async fn leak_check(diag: &mut dyn FnMut(String)) -> Result<Outcome> {
    if let Some(reason) = kmemleak_unavailable() {
        return Ok(Outcome::Skip(reason));
    }
    let report =
        tokio::task::spawn_blocking(kmemleak_find_leaks).await.map_err(|e| anyhow!("kmemleak task failed: {e}"))??;
    if report.is_empty() {
        return Ok(Outcome::Pass);
    }
    let objects = report.iter().filter(|l| l.starts_with("unreferenced object")).count();
    diag(format!("{KMEMLEAK_HEAD}{objects} unreferenced object(s){KMEMLEAK_TAIL}"));
    report.into_iter().take(60).for_each(diag);
    Ok(Outcome::Fail)
}

fn min_median_max(mut v: Vec<Duration>) -> Option<(Duration, Duration, Duration)> {
    v.sort();
    Some((*v.first()?, v[v.len() / 2], *v.last()?))
}

/// Guest-clock timings of a pass (Instant is CLOCK_MONOTONIC: inside a VM,
/// the guest's time).
#[derive(Default)]
struct Timings {
    started: Option<Instant>,
    points: usize,
    ready: Vec<Ready>,
}

impl Timings {
    fn start() -> Self {
        Timings { started: Some(Instant::now()), ..Default::default() }
    }

    /// `timing: N points in X s; time to ready min/median/max ...`
    fn summary(&self) -> String {
        let total = self.started.map(|s| s.elapsed()).unwrap_or_default();
        let mut line = format!("timing: {} points in {:.2} s (guest clock)", self.points, total.as_secs_f64());
        let spawn: Vec<Duration> = self.ready.iter().map(|r| r.from_spawn).collect();
        let flow: Vec<Duration> = self.ready.iter().filter_map(|r| r.from_flow).collect();
        for (what, v) in [("time to ready", spawn), ("from the serve flow's start", flow)] {
            if let Some((lo, mid, hi)) = min_median_max(v) {
                line += &format!("; {what} min/median/max {:.1}/{:.1}/{:.1} ms", ms(lo), ms(mid), ms(hi));
            }
        }
        if !self.ready.is_empty() {
            line += &format!(" over {} scenarios", self.ready.len());
        }
        line
    }
}

/// Remove namespaces with our names left by a killed run.
pub fn remove_stale_namespaces(opts: &RunOpts, k: &mut Ktap<impl std::io::Write>) -> Result<()> {
    for ns in [opts.h2g_ns(), opts.g2h_ns()] {
        if netns::exists(&ns) {
            netns::delete(&ns).with_context(|| format!("remove stale namespace {ns}"))?;
            k.diag(&format!("removed stale namespace {ns}"));
        }
    }
    Ok(())
}

/// Why a pass over the test points stopped early.
pub const STOPPED_AFTER_REPORT: &str = "not run: stopped after a kernel report";

/// The kernel-log marker tags of test point `name`, number `n` of a pass
/// tagged `tag` (empty, or `K.` for iteration K): `start-{tag}{n}:{name}`
/// and `end-{tag}{n}:{name}`. They name the point so that a console log
/// says which point was running when the kernel died: the host takes the
/// last `vhost-kernel-test: sync start-[0-9.]*:NAME ` before the crash.
pub fn marker_tags(tag: &str, n: usize, name: &str) -> (String, String) {
    (format!("start-{tag}{n}:{name}"), format!("end-{tag}{n}:{name}"))
}

/// Run `tests` once, reporting each on `k`, then (when the kernel log is
/// watched) [`BETWEEN_POINTS`]. Kernel markers are tagged with `tag`, the
/// point's number and its name ([`marker_tags`]); `from` is where this pass's kernel log starts and is
/// moved to where it ends. With `stop_on_report`, the first point during
/// which the kernel logged a report ends the pass: the remaining points are
/// reported as skipped. Returns the name of that point, if any.
#[allow(clippy::too_many_arguments)]
async fn run_points<W: std::io::Write>(
    k: &mut Ktap<W>,
    tests: &[&str],
    opts: &RunOpts,
    kmsg: Option<&dyn KernelLog>,
    from: &mut usize,
    tag: &str,
    stop_on_report: bool,
    timings: &mut Timings,
) -> Option<String> {
    let mut reported = None;
    let mut account = kmsg.map(|m| LogAccount::new(m, *from, opts.timeout));
    for (i, t) in tests.iter().enumerate() {
        if reported.is_some() {
            k.result(t, &Outcome::Skip(STOPPED_AFTER_REPORT.into()));
            continue;
        }
        let (start_tag, end_tag) = marker_tags(tag, i + 1, t);
        let window = account.as_mut().map(|a| a.begin(&start_tag));
        let began = Instant::now();
        let mut outcome = match run_one(t, opts, &mut |d: String| k.diag(&d)).await {
            Ok((o, ready)) => {
                timings.ready.extend(ready);
                o
            }
            Err(e) => {
                k.diag(&format!("{t}: {e:#}"));
                Outcome::Fail
            }
        };
        k.diag(&format!("{t}: {:.3} s", began.elapsed().as_secs_f64()));
        timings.points += 1;
        // A leak found by the leak check is a kernel report even when the
        // kernel log is not monitored.
        let mut report = *t == LEAK_CHECK && outcome == Outcome::Fail;
        if let (Some(a), Some(w)) = (account.as_mut(), window) {
            match a.end(k, t, w, &end_tag) {
                LogVerdict::Clean => {}
                LogVerdict::Incomplete => outcome = Outcome::Fail,
                LogVerdict::Report => {
                    outcome = Outcome::Fail;
                    report = true;
                }
            }
        }
        if report && stop_on_report {
            reported = Some(t.to_string());
        }
        k.result(t, &outcome);
    }
    if let Some(a) = account.as_mut() {
        if a.between_points(k, &format!("end-{tag}pass")) == LogVerdict::Report && reported.is_none() {
            reported = Some(BETWEEN_POINTS.to_string());
        }
        *from = a.position();
    }
    reported
}

/// Judge what the kernel logged during test point `name`: quote every
/// report, say why the log could not be read whole. Either fails the point.
pub(crate) fn quote_kernel_reports<W: std::io::Write>(
    k: &mut Ktap<W>,
    name: &str,
    incomplete: &[String],
    splats: &[String],
) -> LogVerdict {
    for e in incomplete {
        k.diag(&format!("kernel log check of {name} incomplete: {e}"));
    }
    if !splats.is_empty() {
        k.diag(&format!("{KERNEL_REPORT_DURING}{name}:"));
        for l in splats {
            k.diag(l);
        }
        return LogVerdict::Report;
    }
    if incomplete.is_empty() {
        LogVerdict::Clean
    } else {
        LogVerdict::Incomplete
    }
}

/// Why a run stops before its first test point.
pub(crate) enum NotRun {
    /// Nothing can run here (exit 4, every point skipped with the reason).
    Skip(String),
    /// Something is wrong with the machine (exit 1, `Bail out!`).
    Fail(String),
}

/// Start watching the kernel log at `path` (empty: not watched, as asked by
/// `--no-kernel-log`). Err when it cannot be read: a run that cannot see a
/// KASAN, lockdep or leak report must not pass.
pub fn watch_kernel_log<W: std::io::Write>(
    path: &str,
    k: &mut Ktap<W>,
) -> std::result::Result<Option<KmsgMonitor>, String> {
    if path.is_empty() {
        k.diag("kernel log not watched (--no-kernel-log): kernel reports go unnoticed");
        return Ok(None);
    }
    KmsgMonitor::start_at(path).map(Some).map_err(|e| {
        format!(
            "cannot watch the kernel log: {e:#}; kernel reports (KASAN, lockdep, WARN, leaks) would go unnoticed \
             (needs root and a readable {KMSG_PATH}; --no-kernel-log runs without it)"
        )
    })
}

/// Stop a run that cannot start: `Bail out!` (exit 1) or every point skipped
/// (exit 4), through `skip_all`.
pub(crate) fn report_not_run<W: std::io::Write>(
    k: &mut Ktap<W>,
    why: NotRun,
    skip_all: impl FnOnce(&mut Ktap<W>, &str),
) -> i32 {
    match why {
        NotRun::Fail(reason) => {
            k.bail_out(&reason);
            k.totals();
            crate::report::ktap::EXIT_FAIL
        }
        NotRun::Skip(reason) => {
            k.diag(&reason);
            skip_all(k, &reason);
            k.totals();
            EXIT_ALL_SKIPPED
        }
    }
}

/// First diagnostic of a `--fake-device` run.
pub const FAKE_DEVICE_NOTE: &str = "fake device: two TAPs bridged in user space stand in for \
/dev/vhost-net-kernel + /dev/vktest; no kernel feature is tested (result names end in _fake_device)";

/// Suffix of every result name of a `--fake-device` run.
pub const FAKE_DEVICE_SUFFIX: &str = "_fake_device";

/// What every run does before its first test point: say why nothing can run,
/// remove stale namespaces, start the kernel log monitor.
fn prepare_run<W: std::io::Write>(
    tests: &[&str],
    opts: &RunOpts,
    k: &mut Ktap<W>,
) -> std::result::Result<Option<KmsgMonitor>, NotRun> {
    if opts.fake_device {
        k.diag(FAKE_DEVICE_NOTE);
        k.mark_names(FAKE_DEVICE_SUFFIX);
    }
    if let Some(reason) = skip_reason().filter(|_| !opts.fake_device) {
        return Err(NotRun::Skip(reason));
    }
    if registry::uses_namespaces(tests) {
        if let Err(e) = remove_stale_namespaces(opts, k) {
            k.diag(&format!("{e:#}"));
        }
    }
    if tests.contains(&LEAK_CHECK) {
        leak_baseline(k);
    }
    watch_kernel_log(&opts.kmsg_path, k).map_err(NotRun::Fail)
}

/// Before a run whose passes end with the leak check: let kmemleak report
/// (and then forget) what leaked before the run, so that the check blames
/// the run only for its own leaks.
pub fn leak_baseline<W: std::io::Write>(k: &mut Ktap<W>) {
    if kmemleak_unavailable().is_some() {
        return;
    }
    let began = Instant::now();
    match kmemleak_find_leaks() {
        Ok(before) => {
            let objects = before.iter().filter(|l| l.starts_with("unreferenced object")).count();
            k.diag(&format!(
                "kmemleak baseline in {:.1} s: {objects} earlier leak(s) set aside",
                began.elapsed().as_secs_f64()
            ));
            before.iter().take(20).for_each(|l| k.diag(l));
        }
        Err(e) => k.diag(&format!("kmemleak baseline failed: {e:#}")),
    }
}

/// The test points a pass reports: `tests` (without [`BETWEEN_POINTS`],
/// which a selection may name), then [`BETWEEN_POINTS`] when the kernel log
/// is watched (`kmsg_path` not empty). Returns (tests to run, all points).
pub fn pass_points<'a>(tests: &[&'a str], kmsg_path: &str) -> (Vec<&'a str>, Vec<&'a str>) {
    let run: Vec<&str> = tests.iter().copied().filter(|t| *t != BETWEEN_POINTS).collect();
    let mut all = run.clone();
    if !kmsg_path.is_empty() {
        all.push(BETWEEN_POINTS);
    }
    (run, all)
}

/// Run `tests` as KTAP on `out`; returns the exit code. With
/// `opts.fail_fast` the first test point during which the kernel logged a
/// report ends the run: it fails with the report quoted, the points after
/// it are reported as skipped ([`STOPPED_AFTER_REPORT`]), the
/// [`BETWEEN_POINTS`] check still judges the log.
pub async fn run_tests(tests: &[&str], opts: &RunOpts, out: impl std::io::Write) -> i32 {
    let (tests, points) = pass_points(tests, &opts.kmsg_path);
    let mut k = Ktap::new(out);
    k.header(points.len());
    let kmsg = match prepare_run(&tests, opts, &mut k) {
        Ok(m) => m,
        Err(why) => {
            return report_not_run(&mut k, why, |k, reason| {
                for t in &points {
                    k.result(t, &Outcome::Skip(reason.to_string()));
                }
            })
        }
    };
    single_pass(&mut k, &tests, opts, kmsg.as_ref().map(|m| m as &dyn KernelLog)).await
}

/// The one pass of [`run_tests`] after its header and preparation.
async fn single_pass<W: std::io::Write>(
    k: &mut Ktap<W>,
    tests: &[&str],
    opts: &RunOpts,
    kmsg: Option<&dyn KernelLog>,
) -> i32 {
    let mut timings = Timings::start();
    let reported = run_points(k, tests, opts, kmsg, &mut 0, "", opts.fail_fast, &mut timings).await;
    if let Some(t) = reported.filter(|t| t != BETWEEN_POINTS) {
        k.diag(&format!("--fail-fast: stopped after the kernel report during {t} (quoted above)"));
    }
    k.diag(&timings.summary());
    k.totals();
    k.exit_code()
}

/// `run --repeat N`: every test point `n` times in this process, each pass
/// a KTAP v1 subtest `iteration-K` (indented header, plan and results, then
/// `ok K iteration-K` at the top level, whose plan is `1..n`). The run stops
/// at the first kernel report: the rest of that pass and the remaining
/// iterations are reported as skipped. Exit codes as [`run_tests`].
pub async fn run_tests_repeated(tests: &[&str], opts: &RunOpts, n: usize, out: impl std::io::Write) -> i32 {
    let (tests, points) = pass_points(tests, &opts.kmsg_path);
    let mut k = Ktap::new(out);
    k.header(n);
    let kmsg = match prepare_run(&tests, opts, &mut k) {
        Ok(m) => m,
        Err(why) => {
            return report_not_run(&mut k, why, |k, reason| {
                for it in 1..=n {
                    let mut sub = k.nested();
                    sub.header(points.len());
                    for t in &points {
                        sub.result(t, &Outcome::Skip(reason.to_string()));
                    }
                    k.result(&format!("iteration-{it}"), &Outcome::Skip(reason.to_string()));
                }
            })
        }
    };
    repeat_points(&mut k, &tests, opts, n, kmsg.as_ref().map(|m| m as &dyn KernelLog)).await
}

/// The iterations of [`run_tests_repeated`] after its header and preparation.
async fn repeat_points<W: std::io::Write>(
    k: &mut Ktap<W>,
    tests: &[&str],
    opts: &RunOpts,
    n: usize,
    kmsg: Option<&dyn KernelLog>,
) -> i32 {
    let mut stopped: Option<(usize, String)> = None;
    let mut all = Timings::start();
    // Each pass's kernel log starts where the previous one's ended.
    let mut from = 0;
    for it in 1..=n {
        let name = format!("iteration-{it}");
        if let Some((at, _)) = &stopped {
            k.result(&name, &Outcome::Skip(format!("{STOPPED_AFTER_REPORT} in iteration {at}")));
            continue;
        }
        let mut sub = k.nested();
        sub.header(tests.len() + usize::from(kmsg.is_some()));
        let mut timings = Timings::start();
        let reported = run_points(&mut sub, tests, opts, kmsg, &mut from, &format!("{it}."), true, &mut timings).await;
        sub.diag(&timings.summary());
        all.points += timings.points;
        all.ready.extend(timings.ready);
        sub.totals();
        let outcome = sub.outcome("every test point skipped");
        if let Some(t) = reported {
            k.diag(&format!("stopping: the kernel reported a problem during {t} in iteration {it} (quoted above)"));
            stopped = Some((it, t));
        }
        k.result(&name, &outcome);
    }
    k.diag(&all.summary());
    k.totals();
    k.exit_code()
}

#[cfg(test)]
mod tests;
