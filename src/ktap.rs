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
    next: usize,
    pass: usize,
    fail: usize,
    skip: usize,
}

impl<W: Write> Ktap<W> {
    pub fn new(out: W) -> Self {
        Ktap { out, next: 1, pass: 0, fail: 0, skip: 0 }
    }

    fn line(&mut self, s: &str) {
        // A closed stdout must not turn into a panic; results are also in the exit code.
        let _ = writeln!(self.out, "{s}");
        let _ = self.out.flush();
    }

    /// `KTAP version 1` and the plan `1..N`.
    pub fn header(&mut self, total: usize) {
        self.line("KTAP version 1");
        self.line(&format!("1..{total}"));
    }

    /// One `# ` diagnostic line per input line.
    pub fn diag(&mut self, msg: &str) {
        for l in msg.lines() {
            self.line(&format!("# {l}"));
        }
    }

    pub fn result(&mut self, name: &str, outcome: &Outcome) {
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
