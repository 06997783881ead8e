//! Kernel health: a /dev/kmsg reader thread and a matcher for reports
//! (WARN, BUG, KASAN, UBSAN, lockdep, RCU, kmemleak, hung task, oops).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const KMSG_PATH: &str = "/dev/kmsg";

/// Substrings that mark the first line of a kernel problem report.
pub const SPLAT_PATTERNS: &[&str] = &[
    "WARNING:",
    "BUG:",
    "KASAN:",
    "UBSAN:",
    "possible circular locking",
    "suspicious RCU usage",
    "unreferenced object",
    "suspected memory leak",
    "blocked for more than",
    "Oops",
    "general protection fault",
    "kernel BUG at",
    "Kernel panic",
    "self-detected stall",
    "detected stalls on CPU",
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

#[derive(Default)]
struct Shared {
    lines: Vec<String>,
    error: Option<String>,
}

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

    /// Report lines logged since `pos` (after a sync), quoted with context.
    pub fn splats_since(&self, pos: usize) -> Vec<String> {
        find_splats(&self.lines_since(pos), 25)
    }
}

fn reader(mut f: File, shared: Arc<(Mutex<Shared>, Condvar)>, path: &str) {
    let mut buf = vec![0u8; 16384];
    loop {
        match f.read(&mut buf) {
            Ok(0) => {
                let (m, cv) = &*shared;
                m.lock().unwrap_or_else(|p| p.into_inner()).error = Some(format!("end of file on {path}"));
                cv.notify_all();
                return;
            }
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                let text = record_text(&rec).to_string();
                let (m, cv) = &*shared;
                m.lock().unwrap_or_else(|p| p.into_inner()).lines.push(text);
                cv.notify_all();
            }
            // Records were overwritten before we read them: go on.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let (m, cv) = &*shared;
                m.lock().unwrap_or_else(|p| p.into_inner()).error = Some(format!("read {path}: {e}"));
                cv.notify_all();
                return;
            }
        }
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
        for sample in
            [WARN, KASAN, LOCKDEP, RCU, KMEMLEAK, KMEMLEAK_SUMMARY, RCU_STALL, SOFT_LOCKUP, HUNG, GPF, NULLDEREF, UBSAN]
        {
            let found = find_splats(&lines(sample), 25);
            assert!(!found.is_empty(), "missed:\n{sample}");
        }
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
        assert_eq!(found.len(), 3);
        assert!(found[0].starts_with("WARNING: CPU: 1 PID: 312"));
        assert_eq!(found[1], "Modules linked in:");
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
