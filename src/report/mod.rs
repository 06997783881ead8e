//! What the harness reports: KTAP ([`ktap`]) on stdout; and, read back
//! from that KTAP ([`results`]), the CI formats: JUnit XML ([`junit`]) and
//! a JSON summary ([`json`]), written by `report` (on the host, from
//! scripts/vmtest's results.log) and by `run --junit/--json`.

pub mod json;
pub mod junit;
pub mod ktap;
pub mod results;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use results::Results;

/// Where to write the CI formats (either may be absent).
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub junit: Option<PathBuf>,
    pub json: Option<PathBuf>,
}

impl Outputs {
    pub fn any(&self) -> bool {
        self.junit.is_some() || self.json.is_some()
    }
}

fn write_file(path: &Path, what: &str, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("create {what} file {}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    write(&mut w).with_context(|| format!("write {what} to {}", path.display()))?;
    w.flush().with_context(|| format!("write {what} to {}", path.display()))?;
    Ok(())
}

/// Write `r` as JUnit XML and/or JSON where `out` says.
pub fn write_outputs(r: &Results, out: &Outputs) -> Result<()> {
    if let Some(path) = &out.junit {
        write_file(path, "JUnit XML", |w| Ok(junit::junit(r).serialize(w)?))?;
    }
    if let Some(path) = &out.json {
        write_file(path, "JSON", |w| {
            serde_json::to_writer_pretty(&mut *w, &json::summary(r))?;
            writeln!(w)?;
            Ok(())
        })?;
    }
    Ok(())
}

/// One line on what `r` holds (not the `N passed, N failed` form: that is
/// the runner's own closing line).
pub fn summary_line(r: &Results) -> String {
    let t = r.totals();
    let mut s = format!(
        "{}: {} points planned: pass {}, fail {}, skip {}, crash {}, missing {}",
        r.source, t.planned, t.pass, t.fail, t.skip, t.crash, t.missing
    );
    if let (Some(n), Some(m)) = (t.planned_iterations, t.missing_iterations) {
        s += &format!("; iterations {n}, never started {m}");
    }
    if let Some(b) = r.bail_out() {
        s += &format!("; bailed out: {b}");
    }
    match r.exit_status {
        Some(c) => s += &format!("; exit status {c}"),
        None => s += "; exit status unknown",
    }
    s
}

/// What `report` was asked.
#[derive(Debug, Clone)]
pub struct ReportOpts {
    /// The KTAP the harness wrote (scripts/vmtest's results.log).
    pub input: PathBuf,
    pub outputs: Outputs,
    /// The host's decoded kernel report of a guest that died.
    pub crash: Option<PathBuf>,
    /// The test point it died in (from the console's last start marker).
    pub crash_point: Option<String>,
}

/// Read, parse and attribute what `opts` names.
pub fn load(opts: &ReportOpts) -> Result<Results> {
    let input = &opts.input;
    let bytes = std::fs::read(input).with_context(|| format!("read {}", input.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut r = results::parse(&input.display().to_string(), &text)
        .map_err(|e| anyhow::anyhow!("{}:{}: {}", input.display(), e.line, e.message))?;
    if r.suites.is_empty() && opts.crash.is_none() {
        anyhow::bail!("{}: no KTAP output (no `KTAP version 1` line) and no --crash report", input.display());
    }
    if let Some(crash) = &opts.crash {
        let bytes = std::fs::read(crash).with_context(|| format!("read crash report {}", crash.display()))?;
        r.attribute_crash(opts.crash_point.as_deref(), &String::from_utf8_lossy(&bytes));
    }
    Ok(r)
}

/// `report`: read the KTAP file, write the formats asked for, print a
/// summary line (and where each format went) on `out`. Exit status 0 when
/// written, 2 on a file or parse error (said on stderr with the file and line).
pub fn report(opts: &ReportOpts, out: &mut impl Write) -> i32 {
    let done = load(opts).and_then(|r| {
        write_outputs(&r, &opts.outputs)?;
        Ok(r)
    });
    match done {
        Ok(r) => {
            let _ = writeln!(out, "{}", summary_line(&r));
            for (what, path) in [("JUnit XML", &opts.outputs.junit), ("JSON", &opts.outputs.json)] {
                if let Some(p) = path {
                    let _ = writeln!(out, "wrote {what} to {}", p.display());
                }
            }
            0
        }
        Err(e) => {
            eprintln!("vhost-kernel-test report: {e:#}");
            2
        }
    }
}

/// A writer that passes everything on to `out` and keeps a copy (what
/// `run --junit/--json` reads back at the end).
pub struct Capture<W: Write> {
    out: W,
    copy: Vec<u8>,
}

impl<W: Write> Capture<W> {
    pub fn new(out: W) -> Self {
        Capture { out, copy: Vec::new() }
    }

    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.copy).into_owned()
    }
}

impl<W: Write> Write for Capture<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Keep the copy whatever happens to `out` (a closed stdout must not
        // cost the CI files).
        self.copy.extend_from_slice(buf);
        let _ = self.out.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// `run --junit/--json`: the run's own KTAP (`text`) and exit status
/// `code`, written where `out` says. Returns the exit status to use: the
/// run's, or 1 if the files could not be written from a run that passed.
pub fn write_run_outputs(text: &str, code: i32, out: &Outputs) -> i32 {
    let written =
        results::parse("run", text).map_err(|e| anyhow::anyhow!("the run's own KTAP output, {e}")).and_then(|mut r| {
            r.exit_status = Some(code);
            write_outputs(&r, out)
        });
    match written {
        Ok(()) => code,
        Err(e) => {
            eprintln!("vhost-kernel-test run: {e:#}");
            if code == 0 || code == ktap::EXIT_ALL_SKIPPED {
                ktap::EXIT_FAIL
            } else {
                code
            }
        }
    }
}

#[cfg(test)]
mod tests;
