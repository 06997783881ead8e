//! Where the time of each measurement goes, per path: a window of kernel
//! counters around every measurement (always: the guest CPU time per unit of
//! work is a figure of the table), and with `--profile` the kernel's tick
//! profile of the same window, summed over the repetitions and printed as
//! the top kernel functions of the vhost path and of veth side by side,
//! with context switches, wake-ups and interrupts per packet.
//!
//! Units of work: megabytes received for the TCP streams, transactions for
//! UDP request/response, echoes for ICMPv6. A tick sample is one tick of a
//! busy CPU: 1 ms at the test kernel's HZ=1000 (scripts/lib/vm.config).

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use super::figures::End;
use crate::sys::kprofile::{self, Kallsyms, TickProfile};
use crate::sys::kstat::{self, Counters};

/// Microseconds of CPU time per tick sample (HZ=1000).
pub const US_PER_SAMPLE: f64 = 1000.0;
/// Microseconds per USER_HZ tick of /proc/stat.
const US_PER_USER_TICK: f64 = 10_000.0;
/// Functions listed per path and measurement.
pub const TOP: usize = 15;

/// The measurements a profile window covers, in [`super::figures::measure_path`] order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    pub key: &'static str,
    pub label: &'static str,
    /// Unit of work, and how many microseconds of CPU per unit the table's
    /// CPU figure is shown in (`ms/MB`: 1000).
    pub unit: &'static str,
    pub cpu_unit: &'static str,
    pub cpu_scale_us: f64,
}

const fn m(
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    cpu_unit: &'static str,
    scale: f64,
) -> Measurement {
    Measurement { key, label, unit, cpu_unit, cpu_scale_us: scale }
}

pub const MEASUREMENTS: &[Measurement] = &[
    m("tcp_h2g_to_g2h", "TCP stream h2g->g2h", "MB", "ms/MB", 1000.0),
    m("tcp_g2h_to_h2g", "TCP stream g2h->h2g", "MB", "ms/MB", 1000.0),
    m("udp_rr", "UDP 1-byte req/resp", "transaction", "us/trans", 1.0),
    m("icmp64", "ICMPv6 64 B echo", "echo", "us/echo", 1.0),
    m("icmp20000", "ICMPv6 20000 B echo", "echo", "us/echo", 1.0),
];

/// Names of the idle loop: their samples are CPUs waiting, not working.
const IDLE_FUNCTIONS: &[&str] = &[
    "default_idle",
    "default_idle_call",
    "native_safe_halt",
    "pv_native_safe_halt",
    "arch_cpu_idle",
    "cpu_idle_poll",
    "do_idle",
    "cpu_startup_entry",
    "poll_idle",
    "cpuidle_enter_state",
];

/// What one measurement over one path cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub counters: Counters,
    /// Packets through the g2h end (received + sent).
    pub packets: u64,
    /// Units of work done (see [`Measurement::unit`]).
    pub units: f64,
    /// Tick profile hits, (counter index, hits), with `--profile`.
    pub hits: Vec<(usize, u32)>,
    /// Bytes per counter and number of counters of that profile.
    pub step: u64,
    pub len: usize,
}

impl Window {
    /// Guest CPU time (not idle) per unit, in the measurement's CPU unit.
    pub fn cpu_per_unit(&self, m: &Measurement) -> Option<f64> {
        (self.units > 0.0).then(|| self.counters.busy_ticks as f64 * US_PER_USER_TICK / self.units / m.cpu_scale_us)
    }
}

/// Counters (and the profile, if asked) at the start of a measurement.
pub struct Mark {
    counters: Counters,
    packets: u64,
    profile: bool,
}

/// Start a window: clear the tick profile, read the counters and the
/// packets of `end`'s interface.
pub fn begin(end: &End, profile: bool) -> Result<Mark> {
    if profile {
        TickProfile::reset()?;
    }
    let packets = kstat::interface_packets(&end.ns, end.ifindex)?;
    Ok(Mark { counters: Counters::read()?, packets, profile })
}

/// End the window begun at `mark`, with `units` of work done.
pub fn finish(mark: Mark, end: &End, units: f64) -> Result<Window> {
    let counters = Counters::read()?.since(&mark.counters);
    let profile = if mark.profile { Some(TickProfile::read()?) } else { None };
    let packets = kstat::interface_packets(&end.ns, end.ifindex)?.saturating_sub(mark.packets);
    let mut w = Window { counters, packets, units, ..Default::default() };
    if let Some(p) = profile {
        w.hits = p.nonzero().collect();
        (w.step, w.len) = (p.step, p.hits.len());
    }
    Ok(w)
}

/// Check before the first window that `--profile` can work here: wake-ups
/// are counted while the returned guard lives, and the symbols name the
/// profile's functions.
pub fn check_profiling() -> Result<(kstat::SchedstatsOn, Kallsyms)> {
    if !kprofile::available() {
        return Err(anyhow!(
            "{} missing: --profile needs a kernel with CONFIG_PROFILING booted with profile=2 \
             (scripts/vmtest picks that kernel by itself for `-- bench --profile`)",
            kprofile::PROC_PROFILE
        ));
    }
    if !kstat::has_schedstats() {
        return Err(anyhow!(
            "no kernel.sched_schedstats: --profile needs CONFIG_SCHEDSTATS (selftests/vhost_kernel/config.profile)"
        ));
    }
    let syms = Kallsyms::read().context("--profile names functions with /proc/kallsyms")?;
    Ok((kstat::SchedstatsOn::enable()?, syms))
}

/// One path's windows of one measurement, summed over the repetitions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summed {
    pub windows: usize,
    pub counters: Counters,
    pub packets: u64,
    pub units: f64,
    /// Hits per function, idle loop excluded, and the idle hits.
    pub functions: Vec<(String, u64)>,
    pub idle_samples: u64,
    pub samples: u64,
}

impl Summed {
    pub fn of(windows: &[&Window], syms: &Kallsyms) -> Summed {
        let mut s = Summed { windows: windows.len(), ..Default::default() };
        let mut per_fn: HashMap<String, u64> = HashMap::new();
        for w in windows {
            s.counters.add(&w.counters);
            s.packets += w.packets;
            s.units += w.units;
            let hits = w.hits.iter().map(|&(i, h)| (i, u64::from(h)));
            for (name, h) in syms.attribute(w.step, w.len, hits) {
                *per_fn.entry(name).or_default() += h;
            }
        }
        for (name, h) in per_fn {
            s.samples += h;
            if IDLE_FUNCTIONS.contains(&name.as_str()) {
                s.idle_samples += h;
            } else {
                s.functions.push((name, h));
            }
        }
        s.functions.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        s
    }

    /// Tick samples outside the idle loop.
    fn busy_samples(&self) -> u64 {
        self.samples - self.idle_samples
    }

    fn per_packet(&self, n: u64) -> Option<f64> {
        (self.packets > 0).then(|| n as f64 / self.packets as f64)
    }

    /// Microseconds of kernel CPU per unit of work for `samples` tick samples.
    fn us_per_unit(&self, samples: u64) -> Option<f64> {
        (self.units > 0.0).then(|| samples as f64 * US_PER_SAMPLE / self.units)
    }

    /// The rows of the counter table: (label, value).
    pub fn rows(&self, m: &Measurement) -> Vec<(String, Option<f64>)> {
        let c = &self.counters;
        let busy_us = c.busy_ticks as f64 * US_PER_USER_TICK;
        let kernel_us = c.kernel_ticks as f64 * US_PER_USER_TICK;
        let per_unit = |us: f64| (self.units > 0.0).then(|| us / self.units);
        vec![
            ("units of work measured".into(), Some(self.units)),
            (format!("packets per {}", m.unit), (self.units > 0.0).then(|| self.packets as f64 / self.units)),
            (format!("guest CPU, us per {}", m.unit), per_unit(busy_us)),
            (format!("  of it kernel, us per {}", m.unit), per_unit(kernel_us)),
            (format!("kernel samples (not idle), us per {}", m.unit), self.us_per_unit(self.busy_samples())),
            ("context switches per packet".into(), self.per_packet(c.context_switches)),
            ("wake-ups per packet".into(), self.per_packet(c.wakeups)),
            ("  of them on another CPU".into(), self.per_packet(c.remote_wakeups)),
            ("interrupts per packet".into(), self.per_packet(c.interrupts)),
            ("  irq_work (IWI) per packet".into(), self.per_packet(c.irq_work_interrupts)),
            ("  IPIs to another CPU (RES + CAL) per packet".into(), self.per_packet(c.wake_ipis)),
            ("NET_RX softirqs per packet".into(), self.per_packet(c.net_rx_softirqs)),
            ("NET_TX softirqs per packet".into(), self.per_packet(c.net_tx_softirqs)),
        ]
    }
}

fn fmt_num(v: Option<f64>) -> String {
    match v {
        Some(x) if x >= 1000.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.3}"),
        None => "-".into(),
    }
}

/// a/b, unless b shows as 0.000 (a few events in a window: no ratio to read).
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b >= 0.0005 => Some(a / b),
        _ => None,
    }
}

/// The side-by-side text of one measurement.
pub fn text(m: &Measurement, vhost: &Summed, veth: &Summed) -> String {
    let mut o = format!(
        "\n  profile: {} ({} + {} windows; tick samples: vhost {} of which idle {}, veth {} of which idle {})\n",
        m.label, vhost.windows, veth.windows, vhost.samples, vhost.idle_samples, veth.samples, veth.idle_samples
    );
    o += &format!("  {:<44} {:>10} {:>10} {:>11}\n", "", "vhost", "veth", "vhost/veth");
    for ((label, v), (_, b)) in vhost.rows(m).into_iter().zip(veth.rows(m)) {
        o += &format!("  {label:<44} {:>10} {:>10} {:>11}\n", fmt_num(v), fmt_num(b), fmt_num(ratio(v, b)));
    }
    o += &format!("  top kernel functions by tick samples: us per {} (share of the path's non-idle samples)\n", m.unit);
    o += &format!("  {:<3} {:<34} {:>8} {:>6}   {:<34} {:>8} {:>6}\n", "#", "vhost", "us", "%", "veth", "us", "%");
    let share = |s: &Summed, h: u64| {
        let busy = s.busy_samples();
        if busy > 0 {
            format!("{:.1}", 100.0 * h as f64 / busy as f64)
        } else {
            "-".into()
        }
    };
    let cell = |s: &Summed, i: usize| match s.functions.get(i) {
        Some((name, h)) => {
            let name: String = name.chars().take(34).collect();
            format!("{name:<34} {:>8} {:>6}", fmt_num(s.us_per_unit(*h)), share(s, *h))
        }
        None => format!("{:<34} {:>8} {:>6}", "", "", ""),
    };
    for i in 0..TOP.min(vhost.functions.len().max(veth.functions.len())) {
        o += &format!("  {:<3} {}   {}\n", i + 1, cell(vhost, i), cell(veth, i));
    }
    o
}

/// `bench --json` shape of one path's profile of one measurement.
#[derive(Debug, Serialize)]
pub struct JsonSummed {
    pub windows: usize,
    pub units: f64,
    pub packets: u64,
    pub busy_ticks: u64,
    pub kernel_ticks: u64,
    pub context_switches: u64,
    pub wakeups: u64,
    pub remote_wakeups: u64,
    pub interrupts: u64,
    pub irq_work_interrupts: u64,
    pub wake_ipis: u64,
    pub net_rx_softirqs: u64,
    pub net_tx_softirqs: u64,
    pub samples: u64,
    pub idle_samples: u64,
    /// [name, samples] of the top functions.
    pub top: Vec<(String, u64)>,
}

impl From<&Summed> for JsonSummed {
    fn from(s: &Summed) -> Self {
        let c = &s.counters;
        JsonSummed {
            windows: s.windows,
            units: (s.units * 1e3).round() / 1e3,
            packets: s.packets,
            busy_ticks: c.busy_ticks,
            kernel_ticks: c.kernel_ticks,
            context_switches: c.context_switches,
            wakeups: c.wakeups,
            remote_wakeups: c.remote_wakeups,
            interrupts: c.interrupts,
            irq_work_interrupts: c.irq_work_interrupts,
            wake_ipis: c.wake_ipis,
            net_rx_softirqs: c.net_rx_softirqs,
            net_tx_softirqs: c.net_tx_softirqs,
            samples: s.samples,
            idle_samples: s.idle_samples,
            top: s.functions.iter().take(TOP).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms() -> Kallsyms {
        Kallsyms::parse(
            "ffffffff81000000 T _stext\nffffffff81000100 T vhost_worker\nffffffff81000200 T default_idle\n\
             ffffffff81000300 T veth_xmit\n",
        )
        .unwrap()
    }

    fn window(hits: Vec<(usize, u32)>, packets: u64, units: f64) -> Window {
        let counters = Counters { busy_ticks: 30, context_switches: packets * 2, ..Default::default() };
        Window { counters, packets, units, hits, step: 4, len: 0x100 }
    }

    #[test]
    fn windows_sum_and_idle_is_apart() {
        let (a, b) = (window(vec![(0x40, 5), (0x80, 7)], 100, 10.0), window(vec![(0x41, 3), (0xc0, 1)], 50, 5.0));
        let s = Summed::of(&[&a, &b], &syms());
        assert_eq!((s.windows, s.packets, s.units), (2, 150, 15.0));
        assert_eq!((s.samples, s.idle_samples), (16, 7));
        assert_eq!(s.functions, vec![("vhost_worker".to_string(), 8), ("veth_xmit".to_string(), 1)]);
        let rows = s.rows(&MEASUREMENTS[2]);
        let row = |l: &str| rows.iter().find(|(k, _)| k == l).unwrap().1;
        assert_eq!(row("context switches per packet"), Some(2.0));
        // 60 USER_HZ ticks of 10 ms over 15 transactions: 40 ms each.
        assert_eq!(row("guest CPU, us per transaction"), Some(40_000.0));
        // 9 non-idle samples of 1 ms over 15 transactions.
        assert_eq!(row("kernel samples (not idle), us per transaction"), Some(600.0));
    }

    #[test]
    fn cpu_figure_units() {
        let w = window(vec![], 10, 2.0);
        // 30 ticks of 10 ms = 300 ms over 2 MB: 150 ms/MB.
        assert_eq!(w.cpu_per_unit(&MEASUREMENTS[0]), Some(150.0));
        assert_eq!(w.cpu_per_unit(&MEASUREMENTS[3]), Some(150_000.0));
        assert_eq!(window(vec![], 0, 0.0).cpu_per_unit(&MEASUREMENTS[0]), None);
    }

    #[test]
    fn side_by_side_text() {
        let a = Summed::of(&[&window(vec![(0x40, 5)], 100, 10.0)], &syms());
        let b = Summed::of(&[&window(vec![(0xc0, 2)], 400, 40.0)], &syms());
        let t = text(&MEASUREMENTS[2], &a, &b);
        assert!(t.contains("profile: UDP 1-byte req/resp"), "{t}");
        let line = t.lines().find(|l| l.contains("vhost_worker")).unwrap();
        assert!(line.contains("veth_xmit"), "side by side: {line}");
        assert!(line.contains("500") && line.contains("100.0"), "{line}");
    }
}
