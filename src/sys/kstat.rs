//! System-wide kernel counters that `bench` takes before and after each
//! measurement: CPU time, context switches and interrupts (`/proc/stat`),
//! wake-ups (`/proc/schedstat`, with `kernel.sched_schedstats` on), the
//! architecture's interrupt rows (`/proc/interrupts`: irq_work, and the
//! rescheduling and function call IPIs) and one interface's packets
//! (`/proc/thread-self/net/dev`, read from inside its namespace).
//!
//! Parsing is kept apart from reading, so the unit tests feed it text.

use std::fs;

use anyhow::{anyhow, bail, Context, Result};

use super::netns;

const PROC_STAT: &str = "/proc/stat";
const PROC_SCHEDSTAT: &str = "/proc/schedstat";
const PROC_INTERRUPTS: &str = "/proc/interrupts";
const SCHEDSTATS_SYSCTL: &str = "/proc/sys/kernel/sched_schedstats";

/// Counters that only grow, summed over the CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// CPU time not idle (user, nice, system, irq, softirq, steal), in
    /// USER_HZ ticks (10 ms).
    pub busy_ticks: u64,
    /// Of that, time in the kernel (system, irq, softirq).
    pub kernel_ticks: u64,
    /// Context switches (`ctxt`).
    pub context_switches: u64,
    /// Every interrupt, device and architecture ones (`intr`'s total).
    pub interrupts: u64,
    /// NET_RX and NET_TX softirqs raised and run.
    pub net_rx_softirqs: u64,
    pub net_tx_softirqs: u64,
    /// try_to_wake_up() calls that woke a task, and those that woke it on
    /// another CPU than the waker's (0 without schedstats).
    pub wakeups: u64,
    pub remote_wakeups: u64,
    /// irq_work self-interrupts (`IWI`), and the IPIs that wake another
    /// CPU: rescheduling (`RES`) and function call ones (`CAL`, which
    /// carry queued remote wake-ups).
    pub irq_work_interrupts: u64,
    pub wake_ipis: u64,
}

impl Counters {
    /// `f` applied counter by counter to `self` and `other`.
    fn zip_with(&self, other: &Counters, f: impl Fn(u64, u64) -> u64) -> Counters {
        Counters {
            busy_ticks: f(self.busy_ticks, other.busy_ticks),
            kernel_ticks: f(self.kernel_ticks, other.kernel_ticks),
            context_switches: f(self.context_switches, other.context_switches),
            interrupts: f(self.interrupts, other.interrupts),
            net_rx_softirqs: f(self.net_rx_softirqs, other.net_rx_softirqs),
            net_tx_softirqs: f(self.net_tx_softirqs, other.net_tx_softirqs),
            wakeups: f(self.wakeups, other.wakeups),
            remote_wakeups: f(self.remote_wakeups, other.remote_wakeups),
            irq_work_interrupts: f(self.irq_work_interrupts, other.irq_work_interrupts),
            wake_ipis: f(self.wake_ipis, other.wake_ipis),
        }
    }

    /// `self - earlier`, counter by counter (0 where a counter went back).
    pub fn since(&self, earlier: &Counters) -> Counters {
        self.zip_with(earlier, u64::saturating_sub)
    }

    /// Add `other` (summing windows over repetitions).
    pub fn add(&mut self, other: &Counters) {
        *self = self.zip_with(other, |a, b| a + b);
    }

    /// Read them all now. Wake-ups stay 0 on a kernel without
    /// CONFIG_SCHEDSTATS (no /proc/schedstat).
    pub fn read() -> Result<Counters> {
        let stat = fs::read_to_string(PROC_STAT).with_context(|| format!("read {PROC_STAT}"))?;
        let mut c = parse_stat(&stat).with_context(|| format!("parse {PROC_STAT}"))?;
        if let Ok(s) = fs::read_to_string(PROC_SCHEDSTAT) {
            (c.wakeups, c.remote_wakeups) = parse_schedstat(&s).with_context(|| format!("parse {PROC_SCHEDSTAT}"))?;
        }
        let irqs = fs::read_to_string(PROC_INTERRUPTS).with_context(|| format!("read {PROC_INTERRUPTS}"))?;
        c.irq_work_interrupts = interrupt_row(&irqs, "IWI").unwrap_or(0);
        c.wake_ipis = interrupt_row(&irqs, "RES").unwrap_or(0) + interrupt_row(&irqs, "CAL").unwrap_or(0);
        Ok(c)
    }
}

/// Whether this kernel counts wake-ups (CONFIG_SCHEDSTATS).
pub fn has_schedstats() -> bool {
    std::path::Path::new(SCHEDSTATS_SYSCTL).exists()
}

/// Turns `kernel.sched_schedstats` on and back to what it was when dropped.
pub struct SchedstatsOn {
    before: String,
}

impl SchedstatsOn {
    pub fn enable() -> Result<Self> {
        let before = fs::read_to_string(SCHEDSTATS_SYSCTL)
            .with_context(|| format!("read {SCHEDSTATS_SYSCTL} (CONFIG_SCHEDSTATS)"))?;
        fs::write(SCHEDSTATS_SYSCTL, "1").with_context(|| format!("write 1 to {SCHEDSTATS_SYSCTL}"))?;
        Ok(SchedstatsOn { before: before.trim().to_string() })
    }
}

impl Drop for SchedstatsOn {
    fn drop(&mut self) {
        if self.before != "1" {
            let _ = fs::write(SCHEDSTATS_SYSCTL, &self.before);
        }
    }
}

fn numbers(fields: &[&str], what: &str) -> Result<Vec<u64>> {
    fields.iter().map(|f| f.parse::<u64>().map_err(|_| anyhow!("{what}: '{f}' is not a number"))).collect()
}

/// The `cpu`, `ctxt`, `intr` and `softirq` lines of `/proc/stat`.
pub fn parse_stat(text: &str) -> Result<Counters> {
    let mut c = Counters::default();
    let mut seen = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first().copied() {
            Some("cpu") => {
                // user nice system idle iowait irq softirq steal [guest guest_nice]
                let v = numbers(&f[1..], "cpu line")?;
                if v.len() < 8 {
                    bail!("cpu line has {} fields, expected at least 8", v.len());
                }
                c.busy_ticks = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
                c.kernel_ticks = v[2] + v[5] + v[6];
                seen += 1;
            }
            Some("ctxt") => {
                c.context_switches = numbers(&f[1..2], "ctxt")?[0];
                seen += 1;
            }
            Some("intr") => {
                c.interrupts = numbers(&f[1..2], "intr")?[0];
                seen += 1;
            }
            Some("softirq") => {
                // total HI TIMER NET_TX NET_RX ...
                let v = numbers(&f[1..], "softirq line")?;
                if v.len() < 5 {
                    bail!("softirq line has {} fields, expected at least 5", v.len());
                }
                (c.net_tx_softirqs, c.net_rx_softirqs) = (v[3], v[4]);
                seen += 1;
            }
            _ => {}
        }
    }
    if seen != 4 {
        bail!("missing one of the cpu, ctxt, intr, softirq lines");
    }
    Ok(c)
}

/// Wake-ups and remote wake-ups summed over the `cpuN` lines of
/// `/proc/schedstat` (version 15/16: after the CPU, yld_count, a legacy 0,
/// sched_count, sched_goidle, ttwu_count, ttwu_local, ...).
pub fn parse_schedstat(text: &str) -> Result<(u64, u64)> {
    let mut version = None;
    let (mut wakeups, mut local) = (0, 0);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first() {
            Some(&"version") => version = f.get(1).and_then(|v| v.parse::<u32>().ok()),
            Some(cpu) if cpu.starts_with("cpu") => {
                let v = numbers(&f[1..f.len().min(7)], "schedstat cpu line")?;
                if v.len() < 6 {
                    bail!("schedstat cpu line has {} fields, expected at least 6", v.len());
                }
                wakeups += v[4];
                local += v[5];
            }
            _ => {}
        }
    }
    match version {
        Some(15..=17) => Ok((wakeups, wakeups.saturating_sub(local))),
        Some(v) => bail!("schedstat version {v}: field layout not known here"),
        None => bail!("no version line"),
    }
}

/// The sum over the CPUs of the `/proc/interrupts` row labelled `label`
/// (e.g. `IWI:` for irq_work interrupts).
pub fn interrupt_row(text: &str, label: &str) -> Option<u64> {
    let mut lines = text.lines();
    let cpus = lines.next()?.split_whitespace().filter(|w| w.starts_with("CPU")).count();
    lines.find_map(|line| {
        let mut f = line.split_whitespace();
        if f.next()? != format!("{label}:") {
            return None;
        }
        Some(f.take(cpus).filter_map(|n| n.parse::<u64>().ok()).sum())
    })
}

/// Packets received plus sent by interface `ifname`, from a `net/dev` table.
pub fn parse_net_dev_packets(text: &str, ifname: &str) -> Option<u64> {
    text.lines().skip(2).find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        if name.trim() != ifname {
            return None;
        }
        // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets ...
        let v: Vec<u64> = rest.split_whitespace().filter_map(|n| n.parse().ok()).collect();
        Some(v.get(1)? + v.get(9)?)
    })
}

/// Packets through interface number `ifindex` of namespace `ns` (rx + tx).
pub fn interface_packets(ns: &str, ifindex: u32) -> Result<u64> {
    netns::run_in(Some(ns), || {
        let name = nix::net::if_::if_indextoname(ifindex)
            .with_context(|| format!("name of interface {ifindex} in namespace {ns}"))?;
        let name = name.to_string_lossy().into_owned();
        let text = fs::read_to_string("/proc/thread-self/net/dev").context("read /proc/thread-self/net/dev")?;
        parse_net_dev_packets(&text, &name).ok_or_else(|| anyhow!("{name} not in net/dev of namespace {ns}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 2 300 4000 5 6 7 8 0 0\n\
        cpu0 50 1 150 2000 2 3 3 4 0 0\n\
        intr 12345 10 0 0\n\
        ctxt 6789\n\
        btime 1\n\
        softirq 900 1 200 30 40 0 0 5 100 0 524\n";

    #[test]
    fn stat_lines() {
        let c = parse_stat(STAT).unwrap();
        assert_eq!(c.busy_ticks, 100 + 2 + 300 + 6 + 7 + 8);
        assert_eq!(c.kernel_ticks, 300 + 6 + 7);
        assert_eq!((c.context_switches, c.interrupts), (6789, 12345));
        assert_eq!((c.net_tx_softirqs, c.net_rx_softirqs), (30, 40));
        assert!(parse_stat("cpu 1 2 3\nctxt 1\nintr 1\nsoftirq 1 2 3 4 5\n").is_err());
        assert!(parse_stat("ctxt 1\n").is_err());
    }

    #[test]
    fn schedstat_wakeups() {
        let s = "version 16\ntimestamp 42\ncpu0 0 0 10 4 100 60 5 6 7\ndomain0 3 1 2\ncpu1 0 0 10 4 50 50 5 6 7\n";
        assert_eq!(parse_schedstat(s).unwrap(), (150, 40));
        assert!(parse_schedstat("version 9\ncpu0 0 0 1 1 1 1 1 1 1\n").is_err());
        assert!(parse_schedstat("cpu0 0 0 1 1 1 1 1 1 1\n").is_err());
    }

    #[test]
    fn interrupt_rows() {
        let t = "           CPU0       CPU1       \n  0:         39          0   IO-APIC   2-edge      timer\n\
                 LOC:       1000       2000   Local timer interrupts\n\
                 RES:         17          4   Rescheduling interrupts\n\
                 IWI:          3          9   IRQ work interrupts\n";
        assert_eq!(interrupt_row(t, "IWI"), Some(12));
        assert_eq!(interrupt_row(t, "RES"), Some(21));
        assert_eq!(interrupt_row(t, "LOC"), Some(3000));
        assert_eq!(interrupt_row(t, "XYZ"), None);
    }

    #[test]
    fn net_dev_packets() {
        let t = "Inter-|   Receive                                                |  Transmit\n \
                 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                 lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n  \
                 eth0: 1000      11    0    0    0     0          0         0     2000      22    0    0    0     0       0          0\n";
        assert_eq!(parse_net_dev_packets(t, "eth0"), Some(33));
        assert_eq!(parse_net_dev_packets(t, "lo"), Some(0));
        assert_eq!(parse_net_dev_packets(t, "eth1"), None);
    }

    #[test]
    fn differences_and_sums() {
        let a = Counters { busy_ticks: 10, wakeups: 5, wake_ipis: 3, ..Default::default() };
        let b = Counters { busy_ticks: 25, wakeups: 4, wake_ipis: 7, ..Default::default() };
        let d = b.since(&a);
        assert_eq!((d.busy_ticks, d.wakeups, d.wake_ipis), (15, 0, 4));
        let mut s = d;
        s.add(&d);
        assert_eq!(s.busy_ticks, 30);
    }
}
