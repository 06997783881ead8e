//! Kernel health: a /dev/kmsg reader thread and a matcher for reports
//! (WARN, BUG, KASAN, UBSAN, lockdep, RCU, kmemleak, hung task, oops).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const KMSG_PATH: &str = "/dev/kmsg";

/// Substrings that mark the first line of a kernel problem report, in the
/// kernel log as the harness reads it and in a console log (`scan-log`).
/// Substrings, not anchored patterns: a console line may carry a timestamp,
/// a log level or a prefix such as `watchdog: ` or `rcu: ` before them.
pub const SPLAT_PATTERNS: &[&str] = &[
    // WARN()/WARN_ON(), and the headers of lockdep, RCU-lockdep and the
    // other debug checks (possible circular/recursive locking, inconsistent
    // lock state, lock held when returning to user space...).
    "------------[ cut here ]------------",
    "WARNING:",
    // BUG()/BUG_ON(), KASAN, soft lockups, sleeping in atomic context...
    "BUG:",
    "kernel BUG at",
    "KASAN:",
    "UBSAN:",
    "Oops:",
    "general protection fault",
    "Kernel panic",
    // The lockdep and lockup reports by their own words as well, so that a
    // kernel that words the header differently is still caught.
    "possible circular locking",
    "possible recursive locking",
    "lock held when returning to user space",
    "inconsistent lock state",
    "suspicious RCU usage",
    "soft lockup",
    "hard LOCKUP",
    // RCU CPU stall warnings: rcu_sched/rcu_preempt "detected stalls on
    // CPUs/tasks", "detected expedited stalls", "self-detected stall on CPU".
    "detected stalls on",
    "detected expedited stalls",
    "self-detected stall",
    // Hung tasks.
    "blocked for more than",
    // kmemleak.
    "unreferenced object",
    "suspected memory leak",
];

/// kmemleak's control file (debugfs).
pub const KMEMLEAK_PATH: &str = "/sys/kernel/debug/kmemleak";

/// kmemleak reports only objects at least this old when a scan starts
/// (MSECS_MIN_AGE in mm/kmemleak.c).
pub const KMEMLEAK_MIN_AGE: Duration = Duration::from_millis(5000);

/// Name of the test point that ends a pass with a leak check (run, fuzz).
pub const LEAK_CHECK: &str = "kmemleak_check";

/// Why [`LEAK_CHECK`] cannot run here, if so.
pub fn kmemleak_unavailable() -> Option<String> {
    (!std::path::Path::new(KMEMLEAK_PATH).exists()).then(|| {
        format!("kmemleak not available: needs CONFIG_DEBUG_KMEMLEAK=y (enabled) and debugfs on /sys/kernel/debug ({KMEMLEAK_PATH} missing)")
    })
}

fn kmemleak_command(cmd: &str) -> Result<()> {
    std::fs::write(KMEMLEAK_PATH, cmd).with_context(|| format!("write {cmd:?} to {KMEMLEAK_PATH}"))
}

/// The leaks kmemleak can prove now, as its report lines (empty: none);
/// those are then cleared so that the next call reports only newer ones.
/// Blocks for at least [`KMEMLEAK_MIN_AGE`] (two scans under a debug kernel
/// take several seconds more).
///
/// Two scans: the first scan that sees a new object records its checksum
/// and keeps it gray, so an object can be reported by the second scan at
/// the earliest; and that scan must start when objects allocated just
/// before this call are old enough to be reported. The wait is for that
/// age, a fixed kernel threshold, not for an event.
pub fn kmemleak_find_leaks() -> Result<Vec<String>> {
    let start = Instant::now();
    kmemleak_command("scan")?;
    let margin = Duration::from_millis(200);
    std::thread::sleep((KMEMLEAK_MIN_AGE + margin).saturating_sub(start.elapsed()));
    kmemleak_command("scan")?;
    let report = std::fs::read_to_string(KMEMLEAK_PATH).with_context(|| format!("read {KMEMLEAK_PATH}"))?;
    kmemleak_command("clear")?;
    Ok(report.lines().map(str::to_string).collect())
}

/// Whether one kernel log message starts (or is) a problem report.
pub fn is_splat(msg: &str) -> bool {
    SPLAT_PATTERNS.iter().any(|p| msg.contains(p))
}

/// The message text of one /dev/kmsg record ("prio,seq,ts,flags;text\n
/// continuation"), without the dictionary lines.
pub fn record_text(record: &str) -> &str {
    let first = record.lines().next().unwrap_or("");
    match first.split_once(';') {
        Some((_, text)) => text,
        None => first,
    }
}

/// Lines to quote for the reports among `lines`: each report line plus the
/// lines that follow it (up to `context`).
pub fn find_splats(lines: &[String], context: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut until = 0usize;
    for (i, l) in lines.iter().enumerate() {
        if is_splat(l) {
            until = i + 1 + context;
        }
        if i < until {
            out.push(l.clone());
        }
    }
    out
}

/// What the reader thread has collected.
#[derive(Default)]
struct Shared {
    lines: Vec<String>,
    /// Positions in `lines` before which records were lost: the kernel
    /// overwrote them in its ring before we read them (EPIPE).
    lost: Vec<usize>,
    /// Why the reader stopped, if it did.
    error: Option<String>,
}

impl Shared {
    /// Take in the result of one read of the kernel log at `path` (`Ok`
    /// holds the bytes read: one record, none at end of file). False when
    /// the reader must stop (end of file, a read error: kept in `error`).
    fn take_read(&mut self, res: std::io::Result<&[u8]>, path: &str) -> bool {
        match res {
            Ok([]) => {
                self.error = Some(format!("end of file on {path}"));
                false
            }
            Ok(rec) => {
                self.lines.push(record_text(&String::from_utf8_lossy(rec)).to_string());
                true
            }
            // Records were overwritten before we read them: the next read
            // gives the oldest record still there. Note the gap: a check
            // over a range holding it cannot be complete.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                self.lost.push(self.lines.len());
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => true,
            Err(e) => {
                self.error = Some(format!("read {path}: {e}"));
                false
            }
        }
    }

    /// Report lines (with context) among the records `from..to`, and why
    /// that range may be incomplete (records lost inside it).
    fn reports(&self, from: usize, to: usize) -> (Vec<String>, Option<String>) {
        let to = to.min(self.lines.len());
        let from = from.min(to);
        // A gap at p is between lines[p - 1] and lines[p]: inside the range
        // when from <= p < to (lines[from - 1] is the marker that opened it).
        let gaps = self.lost.iter().filter(|&&p| from <= p && p < to).count();
        let incomplete = (gaps > 0).then(|| {
            format!(
                "kernel log records were lost ({gaps} time(s) the kernel overwrote records before the reader got \
                 them, EPIPE): a report may have been among them"
            )
        });
        (find_splats(&self.lines[from..to], REPORT_CONTEXT), incomplete)
    }
}

/// Lines quoted after each report line.
pub const REPORT_CONTEXT: usize = 25;

/// Reads /dev/kmsg from "now" on, in a background thread.
#[derive(Clone)]
pub struct KmsgMonitor {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    path: Arc<str>,
}

impl KmsgMonitor {
    pub fn start() -> Result<Self> {
        Self::start_at(KMSG_PATH)
    }

    /// Monitor the kernel log device at `path` (/dev/kmsg; another path only
    /// to test the harness's handling of an unusable log). Anything but a
    /// readable character device is an error that says so.
    pub fn start_at(path: &str) -> Result<Self> {
        use std::os::unix::fs::FileTypeExt;
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .with_context(|| format!("open {path}"))?;
        let ft = f.metadata().with_context(|| format!("fstat {path}"))?.file_type();
        if !ft.is_char_device() {
            bail!("{path} is not a character device (the kernel log is /dev/kmsg)");
        }
        // Skip what was logged before we started.
        f.seek(SeekFrom::End(0)).with_context(|| format!("seek {path} to end"))?;
        // Blocking reads from here on (O_NONBLOCK only kept the open from hanging).
        nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))
            .with_context(|| format!("fcntl {path}: clear O_NONBLOCK"))?;
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let s2 = shared.clone();
        let p2: Arc<str> = Arc::from(path);
        let p3 = p2.clone();
        std::thread::Builder::new()
            .name("kmsg".into())
            .spawn(move || reader(f, s2, &p3))
            .context("spawn kmsg reader thread")?;
        Ok(KmsgMonitor { shared, path: p2 })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of messages read so far (a position for `lines_since`).
    pub fn position(&self) -> usize {
        self.lock().lines.len()
    }

    pub fn lines_since(&self, pos: usize) -> Vec<String> {
        let g = self.lock();
        g.lines.get(pos..).map(<[String]>::to_vec).unwrap_or_default()
    }

    /// Write a marker into the kernel log and wait until the reader has seen
    /// it, so every message logged before this call has been collected.
    pub fn sync(&self, tag: &str, limit: Duration) -> Result<usize> {
        let marker = format!("vhost-kernel-test: sync {tag} {}", std::process::id());
        let path = &*self.path;
        let mut w = OpenOptions::new().write(true).open(path).with_context(|| format!("open {path} for writing"))?;
        w.write_all(format!("<6>{marker}\n").as_bytes()).with_context(|| format!("write marker to {path}"))?;
        let deadline = Instant::now() + limit;
        let (m, cv) = &*self.shared;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(i) = g.lines.iter().rposition(|l| l.contains(&marker)) {
                return Ok(i + 1);
            }
            if let Some(e) = &g.error {
                bail!("kmsg reader stopped: {e}");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "timed out after {:.1}s waiting for the kmsg reader to see marker {marker:?}",
                    limit.as_secs_f64()
                );
            }
            g = cv.wait_timeout(g, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Report lines among the records `from..to` (positions from
    /// [`KmsgMonitor::sync`]), quoted with context, and why the range may be
    /// incomplete (records lost).
    pub fn reports(&self, from: usize, to: usize) -> (Vec<String>, Option<String>) {
        self.lock().reports(from, to)
    }
}

fn reader(mut f: File, shared: Arc<(Mutex<Shared>, Condvar)>, path: &str) {
    let mut buf = vec![0u8; 16384];
    loop {
        let res = f.read(&mut buf).map(|n| &buf[..n]);
        let (m, cv) = &*shared;
        let go_on = m.lock().unwrap_or_else(|p| p.into_inner()).take_read(res, path);
        cv.notify_all();
        if !go_on {
            return;
        }
    }
}

/// The message of one line of a console log or of `dmesg`: without the
/// `<N>` level, the `[ seconds]` timestamp and a trailing CR.
pub fn console_text(line: &str) -> &str {
    let mut l = line.trim_end_matches('\r');
    if let Some(rest) = l.strip_prefix('<') {
        if let Some((level, after)) = rest.split_once('>') {
            if !level.is_empty() && level.bytes().all(|b| b.is_ascii_digit()) {
                l = after;
            }
        }
    }
    if let Some(rest) = l.strip_prefix('[') {
        if let Some((ts, after)) = rest.split_once(']') {
            if ts.trim().bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                l = after.strip_prefix(' ').unwrap_or(after);
            }
        }
    }
    l
}

/// The report lines of a console log or dmesg text, with their context.
pub fn scan_log_text(text: &str) -> Vec<String> {
    let lines: Vec<String> = text.lines().map(|l| console_text(l).to_string()).collect();
    find_splats(&lines, REPORT_CONTEXT)
}

/// The first report line of a log read line by line from `input`, as
/// (1-based line number, message text), None at the end of the input.
/// Stops reading there, so it can follow a log that is still written.
pub fn first_report(input: impl BufRead) -> std::io::Result<Option<(usize, String)>> {
    for (i, line) in input.split(b'\n').enumerate() {
        let line = line?;
        let text = String::from_utf8_lossy(&line);
        let msg = console_text(&text);
        if is_splat(msg) {
            return Ok(Some((i + 1, msg.to_string())));
        }
    }
    Ok(None)
}

/// `scan-log --watch FILE`: print `N:TEXT` of the first report line of
/// FILE (`-`: stdin) as soon as it is read. Exit status: 0 none until the
/// end of the input, 1 a report, 2 the input could not be read.
pub fn watch_log(path: &std::path::Path, out: &mut impl Write) -> i32 {
    let res = if path.as_os_str() == "-" {
        first_report(std::io::stdin().lock())
    } else {
        File::open(path).and_then(|f| first_report(std::io::BufReader::new(f)))
    };
    match res {
        Ok(None) => 0,
        Ok(Some((n, text))) => {
            let _ = writeln!(out, "{n}:{text}");
            let _ = out.flush();
            1
        }
        Err(e) => {
            eprintln!("vhost-kernel-test scan-log --watch: read {}: {e}", path.display());
            2
        }
    }
}

/// `scan-log FILE`: print the kernel reports of a console log or dmesg
/// (as the KTAP quotes, without `#`) on `out`. Exit status: 0 clean,
/// 1 a report, 2 the file could not be read.
pub fn scan_log(path: &std::path::Path, out: &mut impl Write) -> i32 {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            eprintln!("vhost-kernel-test scan-log: read {}: {e}", path.display());
            return 2;
        }
    };
    let found = scan_log_text(&text);
    if found.is_empty() {
        return 0;
    }
    let _ = writeln!(out, "kernel reported a problem in {}:", path.display());
    for l in &found {
        let _ = writeln!(out, "{l}");
    }
    let _ = out.flush();
    1
}

/// A monitor over a scripted reader state, for the runner's unit tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// Two records with records lost between them (EPIPE), no reader thread.
    pub(crate) fn monitor_with_gap() -> KmsgMonitor {
        let mut sh = Shared::default();
        sh.take_read(Ok(b"6,1,100,-;one\n"), "kmsg");
        sh.take_read(Err(std::io::Error::from_raw_os_error(libc::EPIPE)), "kmsg");
        sh.take_read(Ok(b"6,9,900,-;two\n"), "kmsg");
        KmsgMonitor { shared: Arc::new((Mutex::new(sh), Condvar::new())), path: Arc::from("kmsg") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WARN: &str = "\
------------[ cut here ]------------
WARNING: CPU: 1 PID: 312 at drivers/vhost/vhost.c:724 vhost_dev_cleanup+0x3a1/0x3d0
Modules linked in:
CPU: 1 UID: 0 PID: 312 Comm: vhost-kernel-te Not tainted 6.12.9 #1
RIP: 0010:vhost_dev_cleanup+0x3a1/0x3d0
---[ end trace 0000000000000000 ]---";

    const KASAN: &str = "\
==================================================================
BUG: KASAN: slab-use-after-free in vhost_poll_wakeup+0x5c/0x70
Read of size 8 at addr ffff88800b4f1a28 by task swapper/0/0
==================================================================";

    const LOCKDEP: &str = "\
======================================================
WARNING: possible circular locking dependency detected
6.12.9 #1 Not tainted
------------------------------------------------------
vhost-312/318 is trying to acquire lock:";

    const RCU: &str = "\
=============================
WARNING: suspicious RCU usage
6.12.9 #1 Not tainted
-----------------------------
drivers/vhost/net.c:1021 suspicious rcu_dereference_check() usage!";

    const KMEMLEAK: &str = "\
kmemleak: 2 new suspected memory leaks (see /sys/kernel/debug/kmemleak)
unreferenced object 0xffff88800a1c9e00 (size 256):
  comm \"vhost-kernel-te\", pid 312, jiffies 4294893796";

    const KMEMLEAK_SUMMARY: &str = "kmemleak: 1 new suspected memory leaks (see /sys/kernel/debug/kmemleak)";

    const RCU_STALL: &str = "\
rcu: INFO: rcu_preempt self-detected stall on CPU
rcu: \t1-....: (21000 ticks this GP) idle=b2c/1/0x4000000000000000 softirq=1234/1234 fqs=5250";

    const SOFT_LOCKUP: &str = "watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [vhost-312:318]";

    const HUNG: &str = "\
INFO: task vhost-kernel-te:312 blocked for more than 120 seconds.
      Not tainted 6.12.9 #1
\"echo 0 > /proc/sys/kernel/hung_task_timeout_secs\" disables this message.";

    const GPF: &str = "\
Oops: general protection fault, probably for non-canonical address 0xdffffc0000000003: 0000 [#1] PREEMPT SMP KASAN NOPTI
KASAN: null-ptr-deref in range [0x0000000000000018-0x000000000000001f]";

    const NULLDEREF: &str = "\
BUG: kernel NULL pointer dereference, address: 0000000000000010
#PF: supervisor read access in kernel mode
Oops: Oops: 0000 [#1] PREEMPT SMP NOPTI";

    const UBSAN: &str = "\
================================================================================
UBSAN: array-index-out-of-bounds in drivers/vdpa/vdpa_sim/vktest.c:201:6
index 5 is out of range for type 'vktest_vq [2]'";

    const HARD_LOCKUP: &str = "\
watchdog: Watchdog detected hard LOCKUP on cpu 1
Modules linked in:
CPU: 1 UID: 0 PID: 318 Comm: vhost-312 Not tainted 6.12.9 #1";

    const RCU_SCHED_STALL: &str = "\
rcu: INFO: rcu_sched detected stalls on CPUs/tasks:
rcu: \t1-...!: (1 GPs behind) idle=d84/0/0x1 softirq=4006/4007 fqs=1 (false positive?)";

    const RCU_EXPEDITED: &str = "\
rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: { 1-.... } 21002 jiffies s: 1349 root: 0x2/.";

    const LOCKDEP_RECURSIVE: &str = "\
============================================
WARNING: possible recursive locking detected
6.12.9 #1 Not tainted
--------------------------------------------
vhost-312/318 is trying to acquire lock:";

    const LOCKDEP_USER_RETURN: &str = "\
================================================
WARNING: lock held when returning to user space!
6.12.9 #1 Not tainted
------------------------------------------------
vhost-kernel-te/312 is leaving the kernel with locks still held!";

    const LOCKDEP_INCONSISTENT: &str = "\
================================
WARNING: inconsistent lock state
6.12.9 #1 Not tainted
--------------------------------
inconsistent {SOFTIRQ-ON-W} -> {IN-SOFTIRQ-W} usage.";

    const BUG_AT: &str = "\
------------[ cut here ]------------
kernel BUG at drivers/vhost/vhost.c:2601!
Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI";

    const PANIC: &str = "Kernel panic - not syncing: Fatal exception in interrupt";

    /// Every sample report, each of which must be caught.
    const SAMPLES: &[&str] = &[
        WARN,
        KASAN,
        LOCKDEP,
        RCU,
        KMEMLEAK,
        KMEMLEAK_SUMMARY,
        RCU_STALL,
        SOFT_LOCKUP,
        HUNG,
        GPF,
        NULLDEREF,
        UBSAN,
        HARD_LOCKUP,
        RCU_SCHED_STALL,
        RCU_EXPEDITED,
        LOCKDEP_RECURSIVE,
        LOCKDEP_USER_RETURN,
        LOCKDEP_INCONSISTENT,
        BUG_AT,
        PANIC,
    ];

    const HEALTHY: &str = "\
tun: Universal TUN/TAP device driver, 1.6
virtio_net virtio0 eth0: renamed from eth0
IPv6: ADDRCONF(NETDEV_CHANGE): vhostkernel0: link becomes ready
vhostkernel0: entered promiscuous mode
vktest: attached vhost device, 2 queues
vhost-kernel-test: sync end-3 1234
virtio_net virtio1: unbound, warning-free teardown";

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn every_sample_splat_is_caught() {
        for sample in SAMPLES {
            let found = find_splats(&lines(sample), 25);
            assert!(!found.is_empty(), "missed:\n{sample}");
        }
    }

    /// Each pattern is there for a report the samples show: none is dead.
    #[test]
    fn every_pattern_matches_a_sample_line() {
        for p in SPLAT_PATTERNS {
            assert!(SAMPLES.iter().flat_map(|s| s.lines()).any(|l| l.contains(p)), "no sample for {p:?}");
        }
    }

    /// The reports the issue names, each as the kernel words its first line.
    #[test]
    fn named_reports_are_caught_by_their_first_line() {
        for first in [
            SOFT_LOCKUP,
            "watchdog: Watchdog detected hard LOCKUP on cpu 1",
            "rcu: INFO: rcu_sched detected stalls on CPUs/tasks:",
            "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
            "rcu: INFO: rcu_preempt self-detected stall on CPU",
            "rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: { 1-.... } 21002 jiffies s: 1349",
            "INFO: task vhost-kernel-te:312 blocked for more than 120 seconds.",
            "BUG: KASAN: slab-use-after-free in vhost_poll_wakeup+0x5c/0x70",
            "UBSAN: shift-out-of-bounds in drivers/vhost/net.c:512:9",
            "WARNING: possible circular locking dependency detected",
            "WARNING: possible recursive locking detected",
            "WARNING: lock held when returning to user space!",
            "kmemleak: 1 new suspected memory leaks (see /sys/kernel/debug/kmemleak)",
            "unreferenced object 0xffff88800a1c9e00 (size 256):",
            "WARNING: CPU: 1 PID: 312 at drivers/vhost/vhost.c:724 vhost_dev_cleanup+0x3a1/0x3d0",
            "BUG: kernel NULL pointer dereference, address: 0000000000000010",
            "kernel BUG at drivers/vhost/vhost.c:2601!",
            "Oops: 0000 [#1] PREEMPT SMP NOPTI",
            "Oops: general protection fault, probably for non-canonical address 0xdffffc0000000003: 0000 [#1]",
            "general protection fault, probably for non-canonical address 0xdffffc0000000003: 0000 [#1] SMP",
            "Kernel panic - not syncing: Fatal exception in interrupt",
        ] {
            assert!(is_splat(first), "missed: {first}");
        }
    }

    #[test]
    fn console_lines_lose_level_and_timestamp() {
        assert_eq!(
            console_text("[   12.345678] watchdog: BUG: soft lockup - CPU#1 stuck\r"),
            "watchdog: BUG: soft lockup - CPU#1 stuck"
        );
        assert_eq!(console_text("<4>[    0.000000] WARNING: x"), "WARNING: x");
        assert_eq!(console_text("vkt-init: running"), "vkt-init: running");
        assert_eq!(console_text("[ cut here ]"), "[ cut here ]");
    }

    #[test]
    fn scan_log_text_quotes_reports_of_a_console_log() {
        let mut log: String = HEALTHY.lines().map(|l| format!("[    1.000000] {l}\r\n")).collect();
        assert!(scan_log_text(&log).is_empty(), "{log}");
        log += "[   31.000000] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [vhost-312:318]\r\n";
        log += "[   31.000001] Modules linked in:\r\n";
        let found = scan_log_text(&log);
        assert_eq!(found, ["watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [vhost-312:318]", "Modules linked in:"]);
    }

    #[test]
    fn first_report_names_the_line_and_stops_there() {
        let mut log: String = HEALTHY.lines().map(|l| format!("[    1.000000] {l}\r\n")).collect();
        let healthy = log.lines().count();
        assert_eq!(first_report(log.as_bytes()).unwrap(), None, "{log}");
        log += "[    2.5] BUG: kernel NULL pointer dereference, address: 0000000000000038\r\n";
        log += "[    2.6] Oops: 0002 [#1] PREEMPT SMP NOPTI\r\n";
        let found = first_report(log.as_bytes()).unwrap();
        assert_eq!(
            found,
            Some((healthy + 1, "BUG: kernel NULL pointer dereference, address: 0000000000000038".into()))
        );
        // It returns without reading on: what follows the report may not
        // have been written yet.
        let mut rest = std::io::BufReader::new(log.as_bytes().chain(FailingRead));
        assert!(first_report(&mut rest).unwrap().is_some());
        assert!(first_report(std::io::BufReader::new(HEALTHY.as_bytes().chain(FailingRead))).is_err());
    }

    /// A reader that fails: stands for the part of a log not written yet.
    struct FailingRead;

    impl Read for FailingRead {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("read past what was written"))
        }
    }

    /// Reads as the reader thread gets them: two records, records lost
    /// (EPIPE), one more record.
    fn shared_after_reads(lost: bool) -> Shared {
        let mut sh = Shared::default();
        let epipe = || Err(std::io::Error::from_raw_os_error(libc::EPIPE));
        assert!(sh.take_read(Ok(b"6,1,100,-;vhost-kernel-test: sync start-1 7\n"), "kmsg"));
        assert!(sh.take_read(Ok(b"6,2,200,-;virtio_net virtio0 eth0: renamed\n"), "kmsg"));
        if lost {
            assert!(sh.take_read(epipe(), "kmsg"));
        }
        assert!(sh.take_read(Err(std::io::Error::from_raw_os_error(libc::EINTR)), "kmsg"));
        assert!(sh.take_read(Ok(b"6,90,900,-;vhost-kernel-test: sync end-1 7\n"), "kmsg"));
        sh
    }

    #[test]
    fn lost_records_make_the_range_incomplete() {
        let sh = shared_after_reads(true);
        assert_eq!(sh.lines.len(), 3);
        let (found, incomplete) = sh.reports(1, 3);
        assert!(found.is_empty());
        let why = incomplete.expect("records were lost inside 1..3");
        assert!(why.contains("lost") && why.contains("EPIPE"), "{why}");
        // The gap is after record 2: a range that ends before it is complete.
        assert_eq!(sh.reports(0, 2).1, None);
        assert_eq!(shared_after_reads(false).reports(1, 3).1, None);
    }

    #[test]
    fn end_of_file_and_read_errors_stop_the_reader() {
        let mut sh = Shared::default();
        assert!(!sh.take_read(Ok(b""), "/dev/kmsg"));
        assert_eq!(sh.error.as_deref(), Some("end of file on /dev/kmsg"));
        let mut sh = Shared::default();
        assert!(!sh.take_read(Err(std::io::Error::from_raw_os_error(libc::EINVAL)), "/dev/kmsg"));
        assert!(sh.error.as_deref().is_some_and(|e| e.starts_with("read /dev/kmsg: ")), "{:?}", sh.error);
    }

    #[test]
    fn healthy_log_is_clean() {
        for l in HEALTHY.lines() {
            assert!(!is_splat(l), "false positive: {l}");
        }
        assert!(find_splats(&lines(HEALTHY), 25).is_empty());
    }

    #[test]
    fn context_lines_are_quoted() {
        let mut log = lines(HEALTHY);
        log.extend(lines(WARN));
        let found = find_splats(&log, 2);
        // From the "cut here" line that opens the WARN, 2 lines past its last report line.
        assert_eq!(found.len(), 4);
        assert_eq!(found[0], "------------[ cut here ]------------");
        assert!(found[1].starts_with("WARNING: CPU: 1 PID: 312"));
        assert_eq!(found[2], "Modules linked in:");
    }

    #[test]
    fn unusable_log_paths_are_errors_not_panics() {
        let e = KmsgMonitor::start_at("/nonexistent/kmsg").err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(e.contains("open /nonexistent/kmsg"), "{e}");
        let e = KmsgMonitor::start_at("/").err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(e.contains("/ is not a character device"), "{e}");
    }

    #[test]
    fn kmsg_record_parsing() {
        let rec = "4,1234,5678901,-;WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2\n SUBSYSTEM=vhost\n";
        assert_eq!(record_text(rec), "WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2");
        assert_eq!(record_text("6,1,2,c;hello"), "hello");
    }
}
