//! The kernel log of a run: every record belongs to a test point's window
//! or to `kernel_log_between_points`; any report, or a log that could not
//! be read whole, fails the one it belongs to.

use std::time::Duration;

use crate::report::ktap::{Ktap, Outcome};
use crate::sys::kmsg::KmsgMonitor;

use super::*;

/// Name of the last test point of a pass when the kernel log is watched: it
/// judges every record logged outside the points' own windows (between one
/// point's end marker and the next one's start marker, before the first and
/// after the last point).
pub const BETWEEN_POINTS: &str = "kernel_log_between_points";

/// Where the kernel health of a test point comes from (the /dev/kmsg
/// monitor; a scripted log in unit tests). Positions count records from
/// the start of the watch.
pub trait KernelLog {
    /// Write a marker tagged `tag` and wait until the reader has seen it:
    /// Ok(the position after the marker). Err(the position read so far, why
    /// the marker was not seen) when that fails.
    fn sync(&self, tag: &str, limit: Duration) -> std::result::Result<usize, (usize, String)>;
    /// The report lines (with context) among the records `from..to`, and
    /// why that range may be incomplete (records lost before they were read).
    fn reports(&self, from: usize, to: usize) -> (Vec<String>, Option<String>);
}

impl KernelLog for KmsgMonitor {
    fn sync(&self, tag: &str, limit: Duration) -> std::result::Result<usize, (usize, String)> {
        KmsgMonitor::sync(self, tag, limit).map_err(|e| (self.position(), format!("{e:#}")))
    }

    fn reports(&self, from: usize, to: usize) -> (Vec<String>, Option<String>) {
        KmsgMonitor::reports(self, from, to)
    }
}

/// What the kernel log said about one window: nothing, less than all of it
/// (the check is incomplete), or a report. Either of the last two fails the
/// point that owns the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogVerdict {
    Clean,
    Incomplete,
    Report,
}

/// A test point's window, opened by [`LogAccount::begin`].
pub struct Window {
    start: usize,
    /// Why the start marker was not seen, if so.
    incomplete: Option<String>,
}

/// The kernel log of one pass, record by record: each record goes to the
/// window of the test point during which it was logged, or to the ranges
/// between windows that [`BETWEEN_POINTS`] judges. The windows and ranges
/// are contiguous, so nothing is left unexamined; a marker that is not seen
/// ends a window at what was read so far and makes its check incomplete.
pub struct LogAccount<'a> {
    log: &'a dyn KernelLog,
    limit: Duration,
    /// Every record before this position belongs to a window or a range.
    assigned: usize,
    /// Ranges between windows, for [`BETWEEN_POINTS`].
    between: Vec<(usize, usize)>,
    /// Whether a window was opened in this pass.
    points: bool,
}

impl<'a> LogAccount<'a> {
    /// The account of a pass that starts at position `from` (0: the start
    /// of the watch; else where the previous pass's account ended).
    pub fn new(log: &'a dyn KernelLog, from: usize, limit: Duration) -> Self {
        LogAccount { log, limit, assigned: from, between: Vec::new(), points: false }
    }

    /// Where the account ends so far (the start of the next pass's).
    pub fn position(&self) -> usize {
        self.assigned
    }

    /// Sync on a marker: the position after it (or what was read so far)
    /// and why the marker was not seen. Never before what is assigned.
    fn sync(&mut self, tag: &str, what: &str) -> (usize, Option<String>) {
        let (pos, why) = match self.log.sync(tag, self.limit) {
            Ok(p) => (p, None),
            Err((p, e)) => (p, Some(format!("{what} marker not seen: {e}"))),
        };
        (pos.max(self.assigned), why)
    }

    /// Open the window of a test point: what was logged since the last
    /// window goes to the ranges between points.
    pub fn begin(&mut self, tag: &str) -> Window {
        let (pos, incomplete) = self.sync(tag, "start");
        self.between.push((self.assigned, pos));
        self.assigned = pos;
        self.points = true;
        Window { start: pos, incomplete }
    }

    /// Close the window of test point `name` and judge it on `k`: quote any
    /// report, say why the check is incomplete if it is.
    pub fn end<W: std::io::Write>(&mut self, k: &mut Ktap<W>, name: &str, w: Window, tag: &str) -> LogVerdict {
        let (end, why_end) = self.sync(tag, "end");
        let end = end.max(w.start);
        let (splats, lost) = self.log.reports(w.start, end);
        self.assigned = end;
        let incomplete: Vec<String> = [w.incomplete, why_end, lost].into_iter().flatten().collect();
        quote_kernel_reports(k, name, &incomplete, &splats)
    }

    /// The [`BETWEEN_POINTS`] check that ends the pass: a last marker, then
    /// every range between windows, reported on `k` as a test point.
    pub fn between_points<W: std::io::Write>(&mut self, k: &mut Ktap<W>, tag: &str) -> LogVerdict {
        let (end, why) = self.sync(tag, "end-of-pass");
        self.between.push((self.assigned, end));
        self.assigned = end;
        let mut incomplete: Vec<String> = why.into_iter().collect();
        let mut splats = Vec::new();
        for &(from, to) in &self.between {
            let (s, lost) = self.log.reports(from, to);
            splats.extend(s);
            incomplete.extend(lost);
        }
        self.between.clear();
        let verdict = quote_kernel_reports(k, "the time between test points", &incomplete, &splats);
        let outcome = match verdict {
            LogVerdict::Clean if !self.points => {
                Outcome::Skip("no test point ran (the kernel log between them was clean)".into())
            }
            LogVerdict::Clean => Outcome::Pass,
            LogVerdict::Incomplete | LogVerdict::Report => Outcome::Fail,
        };
        k.result(BETWEEN_POINTS, &outcome);
        verdict
    }
}
