//! Reading back what the harness wrote: its KTAP (as `scripts/vmtest`
//! keeps it in results.log, or as `run` wrote it) parsed into test points
//! with their verdicts, durations, diagnostics and quoted kernel reports,
//! for the CI formats ([`super::junit`], [`super::json`]).
//!
//! What is read: `KTAP version 1`, the plan `1..N`, `# ` diagnostics,
//! `ok N name [# SKIP reason]` / `not ok N name`, `Bail out! reason`, one
//! level of nested subtests (the passes of `run --repeat`, indented; any
//! indentation deeper than the parent's), and a `VKT-EXIT: N` line (the
//! guest's verdict, kept as the exit status). Diagnostics belong to the
//! result line that follows them (as kunit.py reads them); those after the
//! last result (the `# timing:` and `# Totals:` lines, or what a point
//! printed before the guest died) belong to the pass. The output may end
//! anywhere: a guest that died leaves fewer results than planned.

use std::fmt;

use crate::suite::FAKE_DEVICE_SUFFIX;

/// The diagnostic that starts the quote of a kernel report logged during a
/// test point: `kernel reported a problem during NAME:` then the report's
/// lines (written by `suite::quote_kernel_reports`).
pub const KERNEL_REPORT_DURING: &str = "kernel reported a problem during ";

/// The diagnostic that starts kmemleak's report in `kmemleak_check`:
/// `kmemleak: N unreferenced object(s); its report:` then its lines.
pub const KMEMLEAK_HEAD: &str = "kmemleak: ";
pub const KMEMLEAK_TAIL: &str = "; its report:";

/// Name of the suite of a single pass (the iterations of `--repeat` are
/// `vhost-kernel-test.iteration-K`).
pub const RUN_NAME: &str = "vhost-kernel-test";

/// Name of the case that stands for a crash no test point can be blamed for.
pub const KERNEL_CRASH: &str = "kernel_crash";

/// What a test point came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
    /// The kernel died during the point: no result line, a crash report
    /// from the host (`report --crash`).
    Crash,
}

/// One test point (or a case standing for a crash).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub number: usize,
    pub name: String,
    pub verdict: Verdict,
    pub skip_reason: Option<String>,
    /// From its `# NAME: S s` diagnostic.
    pub duration_s: Option<f64>,
    /// Its diagnostics, in order, without the `# `.
    pub diagnostics: Vec<String>,
    /// The quoted kernel report lines (or the host's crash report).
    pub kernel_report: Option<Vec<String>>,
    /// Whether it is one of the plan's points ([`KERNEL_CRASH`] is not).
    pub in_plan: bool,
}

/// One list of test points: the single pass, or one iteration of `--repeat`.
#[derive(Debug, Clone, PartialEq)]
pub struct Suite {
    /// [`RUN_NAME`], or `vhost-kernel-test.iteration-K`.
    pub name: String,
    /// K for an iteration of `--repeat`.
    pub iteration: Option<usize>,
    /// Its plan `1..N`, if it got that far.
    pub planned: Option<usize>,
    pub points: Vec<Point>,
    /// For an iteration: the top-level diagnostics printed before it began.
    pub before: Vec<String>,
    /// Diagnostics after its last result (`# timing:`, `# Totals:`), and
    /// for an iteration those printed at the top level after it, before
    /// its result (`# stopping: ...`).
    pub trailing: Vec<String>,
    /// Guest seconds of the pass, from its `# timing: N points in X s` line.
    pub time_s: Option<f64>,
    /// `Bail out!` reason.
    pub bail_out: Option<String>,
    /// An iteration's own result (`ok K iteration-K [# SKIP ...]`); None
    /// for a single pass and for an iteration the guest did not finish.
    pub verdict: Option<Verdict>,
    pub skip_reason: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    /// Where it was read from (for messages).
    pub source: String,
    pub suites: Vec<Suite>,
    /// Whether the run was `--repeat` (top-level results are iterations).
    pub repeat: bool,
    /// With `--repeat`: the top-level plan (iterations).
    pub planned_iterations: Option<usize>,
    /// `VKT-EXIT: N`, or the run's own exit status.
    pub exit_status: Option<i32>,
    /// Top-level diagnostics after the last iteration.
    pub trailing: Vec<String>,
}

/// Counts over every point of every suite.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Sum of the plans of the passes that printed one.
    pub planned: usize,
    pub pass: usize,
    pub fail: usize,
    pub skip: usize,
    pub crash: usize,
    /// Planned points with no result line (never ran, or the guest died).
    pub missing: usize,
    /// With `--repeat`: iterations planned and iterations never started.
    pub planned_iterations: Option<usize>,
    pub missing_iterations: Option<usize>,
}

/// A line of the input that is not what the KTAP writer writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// A result line as written.
#[derive(Debug)]
struct Entry {
    number: usize,
    name: String,
    verdict: Verdict,
    skip_reason: Option<String>,
    diagnostics: Vec<String>,
    sub: Option<Box<Block>>,
}

/// One KTAP test list as written: the top level or a nested subtest.
#[derive(Debug, Default)]
struct Block {
    indent: usize,
    /// Line of its version line.
    line: usize,
    plan: Option<usize>,
    entries: Vec<Entry>,
    /// Diagnostics since the last result.
    pending: Vec<String>,
    /// A nested block that ended, waiting for its parent's result line.
    sub: Option<Box<Block>>,
    bail_out: Option<String>,
    /// For a nested block: the parent's diagnostics printed before it began.
    before: Vec<String>,
}

fn err(line: usize, message: impl Into<String>) -> ParseError {
    ParseError { line, message: message.into() }
}

fn is_version(content: &str) -> bool {
    content.starts_with("KTAP version ") || content.starts_with("TAP version ")
}

/// `ok N name [# SKIP reason]` or `not ok N name ...`, if `content` is a result line.
fn parse_result(content: &str, line: usize) -> Option<Result<Entry, ParseError>> {
    let (ok, rest) = match (content.strip_prefix("ok "), content.strip_prefix("not ok ")) {
        (Some(r), _) => (true, r),
        (_, Some(r)) => (false, r),
        _ => return None,
    };
    let (num, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let Ok(number) = num.parse::<usize>() else {
        return Some(Err(err(line, format!("result line without a test number: {content:?}"))));
    };
    let rest = rest.strip_prefix("- ").unwrap_or(rest);
    let (name, directive) = match rest.split_once(" # ") {
        Some((n, d)) => (n, Some(d)),
        None => match rest.strip_prefix("# ") {
            Some(d) => ("", Some(d)),
            None => (rest, None),
        },
    };
    let name = name.trim();
    if name.is_empty() {
        return Some(Err(err(line, format!("result line without a test name: {content:?}"))));
    }
    let skip_reason = match directive {
        None => None,
        Some(d) if d.len() >= 4 && d[..4].eq_ignore_ascii_case("SKIP") => Some(d[4..].trim().to_string()),
        Some(d) => return Some(Err(err(line, format!("unknown directive {d:?} in {content:?}")))),
    };
    let verdict = match (&skip_reason, ok) {
        (Some(_), _) => Verdict::Skip,
        (None, true) => Verdict::Pass,
        (None, false) => Verdict::Fail,
    };
    Some(Ok(Entry { number, name: name.to_string(), verdict, skip_reason, diagnostics: Vec::new(), sub: None }))
}

/// Close the innermost open block into its parent (as the subtest that
/// waits for the parent's result line).
fn close_innermost(stack: &mut Vec<Block>) -> Result<(), ParseError> {
    let done = stack.pop().expect("a block to close");
    let parent = stack.last_mut().expect("a parent block");
    if parent.sub.is_some() {
        return Err(err(done.line, "a second subtest before the result line of the previous one"));
    }
    parent.sub = Some(Box::new(done));
    Ok(())
}

/// Parse the text the harness wrote (see the module's doc). Err names the
/// line that is not KTAP as the harness writes it.
pub fn parse(source: &str, text: &str) -> Result<Results, ParseError> {
    let mut stack: Vec<Block> = Vec::new();
    let mut exit_status = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if let Some(code) = line.strip_prefix("VKT-EXIT:") {
            let code = code.trim().parse::<i32>().map_err(|_| err(n, format!("bad exit status line {line:?}")))?;
            exit_status = Some(code);
            continue;
        }
        let content = line.trim_start_matches(' ');
        let indent = line.len() - content.len();
        let Some(top) = stack.last() else {
            if !is_version(content) {
                return Err(err(n, format!("expected `KTAP version 1` first, found {line:?}")));
            }
            stack.push(Block { indent, line: n, ..Default::default() });
            continue;
        };
        if indent > top.indent {
            if !is_version(content) {
                return Err(err(n, format!("indented line outside a subtest: {line:?}")));
            }
            if top.sub.is_some() {
                return Err(err(n, "a second subtest before the result line of the previous one"));
            }
            if stack.len() == 2 {
                return Err(err(n, "subtests nested more than one level deep"));
            }
            let before = std::mem::take(&mut stack.last_mut().expect("the parent block").pending);
            stack.push(Block { indent, line: n, before, ..Default::default() });
            continue;
        }
        while stack.last().is_some_and(|b| b.indent > indent) {
            if stack.len() == 1 {
                break;
            }
            close_innermost(&mut stack)?;
        }
        let block = stack.last_mut().expect("the top-level block");
        if block.indent != indent {
            return Err(err(n, format!("indentation matches no open test list: {line:?}")));
        }
        if is_version(content) {
            return Err(err(n, "a second version line in the same test list"));
        } else if let Some(plan) = content.strip_prefix("1..") {
            if block.plan.is_some() || !block.entries.is_empty() {
                return Err(err(n, format!("a second plan, or a plan after results: {line:?}")));
            }
            block.plan = Some(plan.trim().parse().map_err(|_| err(n, format!("bad plan {line:?}")))?);
        } else if let Some(d) = content.strip_prefix('#') {
            block.pending.push(d.strip_prefix(' ').unwrap_or(d).to_string());
        } else if let Some(reason) = content.strip_prefix("Bail out!") {
            block.bail_out = Some(reason.trim().to_string());
        } else if let Some(entry) = parse_result(content, n) {
            let mut entry = entry?;
            if entry.number != block.entries.len() + 1 {
                return Err(err(
                    n,
                    format!("result {} where {} was expected: {line:?}", entry.number, block.entries.len() + 1),
                ));
            }
            entry.diagnostics = std::mem::take(&mut block.pending);
            entry.sub = block.sub.take();
            block.entries.push(entry);
        } else {
            return Err(err(n, format!("not a KTAP line: {line:?}")));
        }
    }
    while stack.len() > 1 {
        close_innermost(&mut stack)?;
    }
    Ok(build(source, stack.pop(), exit_status))
}

/// The seconds of a `NAME: S s` diagnostic of the point called `name`.
fn duration_of(name: &str, d: &str) -> Option<f64> {
    let (n, v) = d.rsplit_once(": ")?;
    let plain = name.strip_suffix(FAKE_DEVICE_SUFFIX).unwrap_or(name);
    if n != name && n != plain {
        return None;
    }
    v.strip_suffix(" s")?.parse().ok()
}

/// Whether `d` starts a quoted kernel report (the kernel-log check's or kmemleak's).
fn report_head(d: &str) -> bool {
    (d.starts_with(KERNEL_REPORT_DURING) && d.ends_with(':'))
        || (d.starts_with(KMEMLEAK_HEAD) && d.ends_with(KMEMLEAK_TAIL))
}

/// The quoted kernel report lines among a point's diagnostics: every line
/// after a report's head, up to the next head or the point's duration line.
fn kernel_report(name: &str, diagnostics: &[String]) -> Option<Vec<String>> {
    let mut quoted = Vec::new();
    let mut inside = false;
    let mut found = false;
    for d in diagnostics {
        if report_head(d) {
            inside = true;
            found = true;
        } else if duration_of(name, d).is_some() {
            inside = false;
        } else if inside {
            quoted.push(d.clone());
        }
    }
    found.then_some(quoted)
}

fn point(e: Entry) -> Point {
    let duration_s = e.diagnostics.iter().rev().find_map(|d| duration_of(&e.name, d));
    let kernel_report = kernel_report(&e.name, &e.diagnostics);
    Point {
        number: e.number,
        name: e.name,
        verdict: e.verdict,
        skip_reason: e.skip_reason,
        duration_s,
        diagnostics: e.diagnostics,
        kernel_report,
        in_plan: true,
    }
}

/// Seconds of a `timing: N points in X s ...` line.
fn timing(trailing: &[String]) -> Option<f64> {
    trailing.iter().rev().find_map(|d| {
        let rest = d.strip_prefix("timing: ")?;
        let (_, after) = rest.split_once(" points in ")?;
        after.split_once(" s")?.0.parse().ok()
    })
}

fn suite(name: String, iteration: Option<usize>, b: Block) -> Suite {
    let time_s = timing(&b.pending);
    Suite {
        name,
        iteration,
        planned: b.plan,
        points: b.entries.into_iter().map(point).collect(),
        before: b.before,
        trailing: b.pending,
        time_s,
        bail_out: b.bail_out,
        verdict: None,
        skip_reason: None,
    }
}

fn iteration_name(k: usize) -> String {
    format!("{RUN_NAME}.iteration-{k}")
}

fn build(source: &str, root: Option<Block>, exit_status: Option<i32>) -> Results {
    let mut r = Results {
        source: source.to_string(),
        suites: Vec::new(),
        repeat: false,
        planned_iterations: None,
        exit_status,
        trailing: Vec::new(),
    };
    let Some(mut root) = root else { return r };
    r.repeat = root.sub.is_some() || root.entries.iter().any(|e| e.sub.is_some());
    if !r.repeat {
        r.suites.push(suite(RUN_NAME.to_string(), None, root));
        return r;
    }
    r.planned_iterations = root.plan;
    let mut bail = root.bail_out.take();
    for e in std::mem::take(&mut root.entries) {
        let k = e.number;
        let mut s = match e.sub {
            Some(b) => suite(iteration_name(k), Some(k), *b),
            None => suite(iteration_name(k), Some(k), Block::default()),
        };
        // What the top level said after this iteration and before its
        // result (`# stopping: ...`) goes with the iteration; so does what
        // it said before an iteration that never began (no subtest).
        if s.planned.is_none() && s.points.is_empty() && s.before.is_empty() {
            s.before = e.diagnostics;
        } else {
            s.trailing.extend(e.diagnostics);
        }
        s.verdict = Some(e.verdict);
        s.skip_reason = e.skip_reason;
        s.bail_out = s.bail_out.or_else(|| bail.take());
        r.suites.push(s);
    }
    if let Some(b) = root.sub.take() {
        // The iteration the guest did not finish.
        let k = r.suites.len() + 1;
        r.suites.push(suite(iteration_name(k), Some(k), *b));
    }
    if let (Some(b), Some(last)) = (bail, r.suites.last_mut()) {
        last.bail_out.get_or_insert(b);
    }
    r.trailing = root.pending;
    r
}

impl Results {
    /// Counts over every point (see [`Totals`]).
    pub fn totals(&self) -> Totals {
        let mut t = Totals { planned_iterations: self.planned_iterations, ..Default::default() };
        for s in &self.suites {
            for p in &s.points {
                match p.verdict {
                    Verdict::Pass => t.pass += 1,
                    Verdict::Fail => t.fail += 1,
                    Verdict::Skip => t.skip += 1,
                    Verdict::Crash => t.crash += 1,
                }
            }
            if let Some(plan) = s.planned {
                t.planned += plan;
                t.missing += plan.saturating_sub(s.points.iter().filter(|p| p.in_plan).count());
            }
        }
        if self.repeat {
            t.missing_iterations = self.planned_iterations.map(|n| n.saturating_sub(self.suites.len()));
        }
        t
    }

    /// Whether the output ended as planned: every pass has all its planned
    /// results (and a run that bailed out said why).
    pub fn complete(&self) -> bool {
        let t = self.totals();
        !self.suites.is_empty()
            && self.suites.iter().all(|s| s.planned.is_some() || s.verdict.is_some() || s.bail_out.is_some())
            && t.missing == 0
            && t.missing_iterations.unwrap_or(0) == 0
            && t.crash == 0
            && self.suites.iter().all(|s| s.bail_out.is_none())
    }

    /// The run's `Bail out!` reason, if any.
    pub fn bail_out(&self) -> Option<&str> {
        self.suites.iter().find_map(|s| s.bail_out.as_deref())
    }

    /// The guest died during test point `name` (the last one whose start
    /// marker the console shows; None when it shows none): add it to the
    /// pass that was running as a [`Verdict::Crash`] carrying `report` (the
    /// host's decoded kernel report) and the diagnostics it printed before
    /// dying. A point that already has a result there cannot be the one
    /// (the crash came after it): a [`KERNEL_CRASH`] case stands for it
    /// then. Points that never ran are not added (they count as missing).
    pub fn attribute_crash(&mut self, name: Option<&str>, report: &str) {
        if self.suites.is_empty() {
            self.suites.push(suite(RUN_NAME.to_string(), None, Block::default()));
        }
        let s = self.suites.last_mut().expect("a suite");
        let printed = std::mem::take(&mut s.trailing);
        let has_result =
            |n: &str| s.points.iter().any(|p| p.name == n || p.name.strip_suffix(FAKE_DEVICE_SUFFIX) == Some(n));
        let (case, in_plan, mut diagnostics) = match name {
            Some(n) if !n.is_empty() && !has_result(n) => (n.to_string(), true, Vec::new()),
            Some(n) if !n.is_empty() => (
                KERNEL_CRASH.to_string(),
                false,
                vec![format!("the kernel died after the result of {n} (between test points, or after the run)")],
            ),
            _ => (KERNEL_CRASH.to_string(), false, vec!["the console log names no test point".to_string()]),
        };
        diagnostics.extend(printed);
        let duration_s = diagnostics.iter().rev().find_map(|d| duration_of(&case, d));
        let lines: Vec<String> = report.lines().map(|l| l.trim_end_matches('\r').to_string()).collect();
        s.points.push(Point {
            number: s.points.len() + 1,
            name: case,
            verdict: Verdict::Crash,
            skip_reason: None,
            duration_s,
            diagnostics,
            kernel_report: Some(lines),
            in_plan,
        });
        if s.iteration.is_some() && s.verdict.is_none() {
            s.verdict = Some(Verdict::Crash);
        }
    }
}
