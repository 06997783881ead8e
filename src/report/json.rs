//! The JSON summary of a run: totals, the exit status when known, and
//! every test point (name, number, result, duration, skip reason,
//! diagnostics, the kernel report it quoted or null), flat, each with the
//! iteration it belongs to under `--repeat`.

use serde::Serialize;

use super::results::{Results, Totals, Verdict};

#[derive(Serialize)]
pub struct Summary<'a> {
    /// The file read (or `run` for `run --json`).
    pub source: &'a str,
    /// `VKT-EXIT: N`, or the run's own exit status; null when unknown.
    pub exit_status: Option<i32>,
    /// Whether the output ended as planned (see [`Results::complete`]).
    pub complete: bool,
    pub bail_out: Option<&'a str>,
    pub totals: Totals,
    /// With `--repeat`: each iteration's own result (empty otherwise).
    pub iterations: Vec<Iteration<'a>>,
    pub points: Vec<PointJson<'a>>,
}

#[derive(Serialize)]
pub struct Iteration<'a> {
    pub number: usize,
    pub name: &'a str,
    /// pass, fail, skip, crash; null when the guest did not finish it.
    pub result: Option<Verdict>,
    pub skip_reason: Option<&'a str>,
    /// Points planned in it (null if it printed no plan).
    pub planned: Option<usize>,
    pub time_s: Option<f64>,
    /// The diagnostics of the iteration itself (top-level ones around it,
    /// its `# timing:` and `# Totals:`).
    pub diagnostics: Vec<&'a str>,
}

#[derive(Serialize)]
pub struct PointJson<'a> {
    /// K under `--repeat`, else null.
    pub iteration: Option<usize>,
    pub number: usize,
    pub name: &'a str,
    /// pass, fail, skip or crash.
    pub result: Verdict,
    pub duration_s: Option<f64>,
    pub skip_reason: Option<&'a str>,
    pub diagnostics: &'a [String],
    pub kernel_report: Option<&'a [String]>,
}

/// The summary of `r`.
pub fn summary(r: &Results) -> Summary<'_> {
    let iterations = r
        .suites
        .iter()
        .filter_map(|s| {
            let number = s.iteration?;
            Some(Iteration {
                number,
                name: s.name.rsplit('.').next().unwrap_or(&s.name),
                result: s.verdict,
                skip_reason: s.skip_reason.as_deref(),
                planned: s.planned,
                time_s: s.time_s,
                diagnostics: s.before.iter().chain(&s.trailing).map(String::as_str).collect(),
            })
        })
        .collect();
    let points = r
        .suites
        .iter()
        .flat_map(|s| {
            s.points.iter().map(move |p| PointJson {
                iteration: s.iteration,
                number: p.number,
                name: &p.name,
                result: p.verdict,
                duration_s: p.duration_s,
                skip_reason: p.skip_reason.as_deref(),
                diagnostics: &p.diagnostics,
                kernel_report: p.kernel_report.as_deref(),
            })
        })
        .collect();
    Summary {
        source: &r.source,
        exit_status: r.exit_status,
        complete: r.complete(),
        bail_out: r.bail_out(),
        totals: r.totals(),
        iterations,
        points,
    }
}
