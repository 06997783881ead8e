//! A KTAP version 1 writer (Documentation/dev-tools/ktap.rst).

use std::io::Write;

/// Result of one test point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Skip(String),
}

/// Exit status of a KTAP run: all passed (skips allowed unless everything skipped).
pub const EXIT_PASS: i32 = 0;
pub const EXIT_FAIL: i32 = 1;
pub const EXIT_ALL_SKIPPED: i32 = 4;

pub struct Ktap<W: Write> {
    out: W,
    /// Prefix of every line: empty at the top level, four spaces per nesting level.
    indent: String,
    /// Appended to every result's name (see [`Ktap::mark_names`]).
    suffix: String,
    next: usize,
    pass: usize,
    fail: usize,
    skip: usize,
}

impl<W: Write> Ktap<W> {
    pub fn new(out: W) -> Self {
        Ktap { out, indent: String::new(), suffix: String::new(), next: 1, pass: 0, fail: 0, skip: 0 }
    }

    /// A subtest writer on the same output (KTAP v1 nesting: every line
    /// indented four more spaces). Its header, results and diagnostics go
    /// between this writer's lines; report its verdict here with
    /// [`Ktap::result`] and [`Ktap::outcome`] once it is done.
    pub fn nested(&mut self) -> Ktap<&mut W> {
        let indent = format!("{}    ", self.indent);
        Ktap { out: &mut self.out, indent, suffix: self.suffix.clone(), next: 1, pass: 0, fail: 0, skip: 0 }
    }

    /// Append `suffix` to the name of every result from now on, in nested
    /// writers too (e.g. `_fake_device`: results that tested no kernel must
    /// not read like results that did).
    pub fn mark_names(&mut self, suffix: &str) {
        self.suffix = suffix.to_string();
    }

    fn line(&mut self, s: &str) {
        // A closed stdout must not turn into a panic; results are also in the exit code.
        let _ = writeln!(self.out, "{}{s}", self.indent);
        let _ = self.out.flush();
    }

    /// `KTAP version 1` and the plan `1..N`.
    pub fn header(&mut self, total: usize) {
        self.line("KTAP version 1");
        self.line(&format!("1..{total}"));
    }

    /// `Bail out! REASON`: the run stops before its test points.
    pub fn bail_out(&mut self, reason: &str) {
        self.line(&format!("Bail out! {reason}"));
    }

    /// One `# ` diagnostic line per input line.
    pub fn diag(&mut self, msg: &str) {
        for l in msg.lines() {
            self.line(&format!("# {l}"));
        }
    }

    pub fn result(&mut self, name: &str, outcome: &Outcome) {
        let name = format!("{name}{}", self.suffix);
        let n = self.next;
        self.next += 1;
        let s = match outcome {
            Outcome::Pass => {
                self.pass += 1;
                format!("ok {n} {name}")
            }
            Outcome::Fail => {
                self.fail += 1;
                format!("not ok {n} {name}")
            }
            Outcome::Skip(reason) => {
                self.skip += 1;
                format!("ok {n} {name} # SKIP {reason}")
            }
        };
        self.line(&s);
    }

    /// kselftest-style totals line.
    pub fn totals(&mut self) {
        let s = format!("# Totals: pass:{} fail:{} xfail:0 xpass:0 skip:{} error:0", self.pass, self.fail, self.skip);
        self.line(&s);
    }

    /// (pass, fail, skip) counted so far.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.pass, self.fail, self.skip)
    }

    /// The verdict of everything reported so far, as one outcome for the
    /// parent of a nested writer: any failure fails, all skipped skips.
    pub fn outcome(&self, skip_reason: &str) -> Outcome {
        match self.exit_code() {
            EXIT_FAIL => Outcome::Fail,
            EXIT_ALL_SKIPPED => Outcome::Skip(skip_reason.to_string()),
            _ => Outcome::Pass,
        }
    }

    pub fn exit_code(&self) -> i32 {
        if self.fail > 0 {
            EXIT_FAIL
        } else if self.pass == 0 && self.skip > 0 {
            EXIT_ALL_SKIPPED
        } else {
            EXIT_PASS
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(k: Ktap<Vec<u8>>) -> String {
        String::from_utf8(k.into_inner()).unwrap()
    }

    #[test]
    fn plan_results_and_diagnostics() {
        let mut k = Ktap::new(Vec::new());
        k.header(3);
        k.result("a", &Outcome::Pass);
        k.diag("two\nlines");
        k.result("b", &Outcome::Fail);
        k.result("c", &Outcome::Skip("no device".into()));
        assert_eq!(k.exit_code(), EXIT_FAIL);
        k.totals();
        assert_eq!(
            text(k),
            "KTAP version 1\n1..3\nok 1 a\n# two\n# lines\nnot ok 2 b\nok 3 c # SKIP no device\n\
             # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0\n"
        );
    }

    #[test]
    fn nested_subtests_are_indented() {
        let mut k = Ktap::new(Vec::new());
        k.header(2);
        for i in 1..=2 {
            let mut sub = k.nested();
            sub.header(2);
            sub.result("a", &Outcome::Pass);
            sub.diag("why");
            sub.result("b", if i == 1 { &Outcome::Pass } else { &Outcome::Fail });
            let o = sub.outcome("none ran");
            k.result(&format!("iteration-{i}"), &o);
        }
        assert_eq!(k.counts(), (1, 1, 0));
        assert_eq!(k.exit_code(), EXIT_FAIL);
        assert_eq!(
            text(k),
            "KTAP version 1\n1..2\n    KTAP version 1\n    1..2\n    ok 1 a\n    # why\n    ok 2 b\n\
             ok 1 iteration-1\n    KTAP version 1\n    1..2\n    ok 1 a\n    # why\n    not ok 2 b\n\
             not ok 2 iteration-2\n"
        );
        let mut k = Ktap::new(Vec::new());
        let mut sub = k.nested();
        sub.result("a", &Outcome::Skip("x".into()));
        assert_eq!(sub.outcome("all skipped"), Outcome::Skip("all skipped".into()));
        let mut sub2 = sub.nested();
        sub2.diag("deep");
        assert_eq!(text(k), "    ok 1 a # SKIP x\n        # deep\n");
    }

    #[test]
    fn exit_codes() {
        let mut k = Ktap::new(Vec::new());
        k.result("a", &Outcome::Skip("x".into()));
        assert_eq!(k.exit_code(), EXIT_ALL_SKIPPED);
        k.result("b", &Outcome::Pass);
        assert_eq!(k.exit_code(), EXIT_PASS);
        let k = Ktap::new(Vec::new());
        assert_eq!(k.exit_code(), EXIT_PASS);
    }
}
