//! What `bench` found: per feature set the repetitions over the vhost path
//! and the veth baseline, their medians and ratios, as a table (text) or as
//! one line of JSON (serde), and the exit status they make.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::figures::{PathRun, FIGURES};
use super::profile::{self, JsonSummed, Summed, MEASUREMENTS};
use crate::sys::kprofile::Kallsyms;
use crate::sys::vhost::{feature_names, FeatureSet};

/// Everything measured (or not) for one feature set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetReport {
    pub set: FeatureSet,
    /// TUNSETOFFLOAD flags of the TAP (derived from the guest features).
    pub tap_offloads: u32,
    /// The g2h virtio device and what its driver negotiated (sysfs).
    pub device: String,
    pub negotiated: Option<u64>,
    /// Why the set was not measured.
    pub skipped: Option<String>,
    pub notes: Vec<String>,
    pub errors: Vec<String>,
    pub vhost: Vec<PathRun>,
    pub veth: Vec<PathRun>,
}

impl SetReport {
    /// Requested features the driver did not negotiate.
    pub fn not_negotiated(&self) -> Option<u64> {
        self.negotiated.map(|n| self.set.bits & !n)
    }

    /// (vhost median, veth median, ratio) of figure `i` over the repetitions.
    pub fn figure(&self, i: usize) -> (Option<f64>, Option<f64>, Option<f64>) {
        let med = |runs: &[PathRun]| {
            median(&runs.iter().filter_map(|r| r.values.get(i).copied().flatten()).collect::<Vec<_>>())
        };
        let (v, b) = (med(&self.vhost), med(&self.veth));
        let ratio = match (v, b) {
            (Some(v), Some(b)) if b != 0.0 => Some(v / b),
            _ => None,
        };
        (v, b, ratio)
    }

    /// Measurement `k`'s windows over the repetitions, summed per path.
    pub fn profile(&self, k: usize, syms: &Kallsyms) -> (Summed, Summed) {
        let sum = |runs: &[PathRun]| {
            let ws: Vec<_> = runs.iter().filter_map(|r| r.windows.get(k).and_then(|w| w.as_ref())).collect();
            Summed::of(&ws, syms)
        };
        (sum(&self.vhost), sum(&self.veth))
    }

    fn failed(&self) -> bool {
        !self.errors.is_empty() || self.vhost.iter().chain(&self.veth).any(|r| !r.errors.is_empty())
    }
}

/// The whole result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub duration: Duration,
    pub reps: u32,
    pub fake_device: bool,
    /// Smallest step of the monotonic clock seen here ([`clock_granularity`]).
    pub clock_granularity: Duration,
    pub sets: Vec<SetReport>,
    /// With `--profile`: the kernel's symbols, to name the profile's functions.
    pub syms: Option<Kallsyms>,
}

/// Granularity above which single round-trip times are not meaningful.
pub const COARSE_CLOCK: Duration = Duration::from_micros(100);

/// The smallest step of the monotonic clock (`Instant`), measured: a guest
/// whose clocksource is jiffies (no usable TSC/HPET under TCG) ticks in 4 ms
/// steps, which makes single round-trip times meaningless.
pub fn clock_granularity() -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        loop {
            let d = Instant::now() - t0;
            if !d.is_zero() {
                best = best.min(d);
                break;
            }
        }
    }
    best
}

impl Report {
    /// 0 if every set that was tried measured every figure, else 1.
    pub fn exit_code(&self, explicit_set: bool) -> i32 {
        let measured = self.sets.iter().filter(|s| s.skipped.is_none()).count();
        if measured == 0
            || self.sets.iter().any(|s| s.failed())
            || (explicit_set && self.sets.iter().any(|s| s.skipped.is_some()))
        {
            1
        } else {
            0
        }
    }

    pub fn text(&self) -> String {
        let mut o = String::new();
        let vhost = if self.fake_device {
            "fake device (TAPs bridged in user space)"
        } else {
            "TAP <-> vhost-net-kernel <-> vktest <-> virtio-net"
        };
        o += &format!(
            "bench: vhost = {vhost}; veth = veth pair (baseline)\nbench: {} repetition(s) x {} s per figure; medians over repetitions\n",
            self.reps,
            fmt_secs(self.duration)
        );
        o += &format!("bench: clock granularity {:.3} us\n", self.clock_granularity.as_secs_f64() * 1e6);
        if self.clock_granularity > COARSE_CLOCK {
            o += "bench: WARNING: coarse clock (jiffies clocksource?): rtt min/median/p99 are quantized, only the means \
                  are meaningful (in a TCG guest, boot with tsc_early_khz=<host TSC kHz> tsc=reliable)\n";
        }
        for s in &self.sets {
            o += &format!(
                "\nfeature set {} ({}), tap offloads {}\n",
                s.set.name,
                feature_names(s.set.bits).join(","),
                tun_offload_names(s.tap_offloads)
            );
            o += &format!(
                "  VHOST_SET_FEATURES {}; vktest offers {}\n",
                feature_names(s.set.vhost_bits()).join(","),
                feature_names(s.set.bits).join(",")
            );
            if let Some(n) = s.negotiated {
                o += &format!("  negotiated by virtio-net on {}: {}\n", s.device, feature_names(n).join(","));
                let missing = s.not_negotiated().unwrap_or(0);
                if missing != 0 {
                    o += &format!(
                        "  NOT negotiated (asked, but the kernel did not agree): {}\n",
                        feature_names(missing).join(",")
                    );
                }
            }
            for n in &s.notes {
                o += &format!("  note: {n}\n");
            }
            if let Some(why) = &s.skipped {
                o += &format!("  skipped: {why}\n");
                continue;
            }
            o += &format!("  {:<32} {:>12} {:>12} {:>11}\n", "figure", "vhost", "veth", "vhost/veth");
            for (i, f) in FIGURES.iter().enumerate() {
                let (v, b, r) = s.figure(i);
                let label = format!("{} [{}]", f.label, f.unit);
                o += &format!("  {label:<32} {:>12} {:>12} {:>11}\n", fmt_val(v), fmt_val(b), fmt_ratio(r));
            }
            if let Some(syms) = &self.syms {
                for (k, m) in MEASUREMENTS.iter().enumerate() {
                    let (vhost, veth) = s.profile(k, syms);
                    o += &profile::text(m, &vhost, &veth);
                }
                o += "  (tick samples land where interrupts were enabled again: time with them off is \
                      charged to the function that re-enabled them, e.g. _raw_spin_unlock_irqrestore)\n";
            }
            for e in &s.errors {
                o += &format!("  error: {e}\n");
            }
            for (what, runs) in [("vhost", &s.vhost), ("veth", &s.veth)] {
                for (i, r) in runs.iter().enumerate() {
                    for e in &r.errors {
                        o += &format!("  error ({what}, repetition {}): {e}\n", i + 1);
                    }
                }
            }
        }
        o
    }

    /// One line of JSON (the shape is the private `JsonReport`).
    pub fn json(&self) -> String {
        let r = JsonReport {
            duration_s: self.duration.as_secs_f64(),
            reps: self.reps,
            fake_device: self.fake_device,
            clock_granularity_us: json_num(Some(self.clock_granularity.as_secs_f64() * 1e6)),
            sets: self.sets.iter().map(|s| JsonSet::new(s, self.syms.as_ref())).collect(),
        };
        serde_json::to_string(&r).unwrap_or_else(|e| json_error(&format!("bench report as JSON: {e}")))
    }
}

/// `{"skipped":WHY}`: what `bench --json` prints when it cannot run.
pub fn json_skipped(why: &str) -> String {
    serde_json::json!({ "skipped": why }).to_string()
}

/// `{"error":WHAT}`: what `bench --json` prints when it failed as a whole.
pub fn json_error(what: &str) -> String {
    serde_json::json!({ "error": what }).to_string()
}

/// `bench --json`: field names and order are an interface (docs/benchmarks.md).
#[derive(Serialize)]
struct JsonReport<'a> {
    duration_s: f64,
    reps: u32,
    fake_device: bool,
    clock_granularity_us: Option<f64>,
    sets: Vec<JsonSet<'a>>,
}

#[derive(Serialize)]
struct JsonSet<'a> {
    name: &'a str,
    /// Feature bits as a hex string (JSON numbers lose 64-bit precision).
    features: String,
    feature_names: Vec<String>,
    tap_offloads: String,
    device: &'a str,
    negotiated: Option<String>,
    negotiated_names: Option<Vec<String>>,
    not_negotiated: Option<Vec<String>>,
    skipped: Option<&'a str>,
    notes: &'a [String],
    /// The set's own errors, then each repetition's, labelled.
    errors: Vec<String>,
    figures: Vec<JsonFigure>,
    /// With `--profile`: per measurement, both paths' summed windows.
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<Vec<JsonProfile>>,
}

#[derive(Serialize)]
struct JsonProfile {
    key: &'static str,
    unit: &'static str,
    vhost: JsonSummed,
    veth: JsonSummed,
}

#[derive(Serialize)]
struct JsonFigure {
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    vhost: Option<f64>,
    veth: Option<f64>,
    ratio: Option<f64>,
    vhost_reps: Vec<Option<f64>>,
    veth_reps: Vec<Option<f64>>,
}

impl<'a> JsonSet<'a> {
    fn new(s: &'a SetReport, syms: Option<&Kallsyms>) -> Self {
        let figures = FIGURES
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let (vhost, veth, ratio) = s.figure(i);
                let reps =
                    |runs: &[PathRun]| runs.iter().map(|r| json_num(r.values.get(i).copied().flatten())).collect();
                JsonFigure {
                    key: f.key,
                    label: f.label,
                    unit: f.unit,
                    vhost: json_num(vhost),
                    veth: json_num(veth),
                    ratio: json_num(ratio),
                    vhost_reps: reps(&s.vhost),
                    veth_reps: reps(&s.veth),
                }
            })
            .collect();
        let mut errors = s.errors.clone();
        for (what, runs) in [("vhost", &s.vhost), ("veth", &s.veth)] {
            for (i, r) in runs.iter().enumerate() {
                errors.extend(r.errors.iter().map(|e| format!("{what} repetition {}: {e}", i + 1)));
            }
        }
        JsonSet {
            name: &s.set.name,
            features: format!("{:#x}", s.set.bits),
            feature_names: feature_names(s.set.bits),
            tap_offloads: format!("{:#x}", s.tap_offloads),
            device: &s.device,
            negotiated: s.negotiated.map(|n| format!("{n:#x}")),
            negotiated_names: s.negotiated.map(feature_names),
            not_negotiated: s.not_negotiated().map(feature_names),
            skipped: s.skipped.as_deref(),
            notes: &s.notes,
            errors,
            figures,
            profile: syms.map(|syms| {
                MEASUREMENTS
                    .iter()
                    .enumerate()
                    .map(|(k, m)| {
                        let (vhost, veth) = s.profile(k, syms);
                        JsonProfile { key: m.key, unit: m.unit, vhost: (&vhost).into(), veth: (&veth).into() }
                    })
                    .collect()
            }),
        }
    }
}

/// A value as JSON: rounded to 3 decimals (as the table, finer than any
/// figure's precision); NaN and infinities (no JSON number) are null.
fn json_num(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite()).map(|x| (x * 1e3).round() / 1e3)
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

fn fmt_val(v: Option<f64>) -> String {
    match v {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    }
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into())
}

/// `csum,tso4,tso6` or `none`.
pub fn tun_offload_names(flags: u32) -> String {
    use crate::sys::ioctl::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN};
    let names: Vec<&str> =
        [(TUN_F_CSUM, "csum"), (TUN_F_TSO4, "tso4"), (TUN_F_TSO6, "tso6"), (TUN_F_TSO_ECN, "tso_ecn")]
            .iter()
            .filter(|(f, _)| flags & f != 0)
            .map(|(_, n)| *n)
            .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// Nearest-rank percentile of sorted, non-empty data.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median (mean of the middle two for an even count); None for no data.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::bench::figures::RttStats;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile_sorted(&v, 99.0), 198.0);
        assert_eq!(percentile_sorted(&v, 50.0), 100.0);
        assert_eq!(percentile_sorted(&[7.0], 99.0), 7.0);
        let s = RttStats::from_samples((1..=100).rev().map(Duration::from_micros).collect(), 2).unwrap();
        assert_eq!((s.samples, s.lost, s.min_us, s.median_us, s.p99_us), (100, 2, 1.0, 50.5, 99.0));
        assert!(RttStats::from_samples(Vec::new(), 1).is_none());
    }

    fn run(vals: &[f64]) -> PathRun {
        PathRun { values: vals.iter().map(|v| Some(*v)).collect(), ..Default::default() }
    }

    fn report() -> Report {
        let n = FIGURES.len();
        let mut failed = run(&vec![1.0; n]);
        failed.values[0] = None;
        failed.errors.push("TCP stream stalled".into());
        Report {
            duration: Duration::from_secs(3),
            reps: 3,
            fake_device: false,
            clock_granularity: Duration::from_nanos(50),
            sets: vec![
                SetReport {
                    set: FeatureSet::rfc(),
                    device: "virtio0".into(),
                    negotiated: Some(crate::sys::vhost::RFC_FEATURES),
                    vhost: vec![run(&vec![10.0; n]), run(&vec![30.0; n]), failed],
                    veth: vec![run(&vec![100.0; n]), run(&vec![100.0; n]), run(&vec![40.0; n])],
                    ..Default::default()
                },
                SetReport {
                    set: FeatureSet::offloads(),
                    skipped: Some("not offered".into()),
                    tap_offloads: 7,
                    ..Default::default()
                },
            ],
            syms: None,
        }
    }

    #[test]
    fn profile_side_by_side_in_text_and_json() {
        use super::profile::Window;
        let syms = Kallsyms::parse(
            "ffffffff81000000 T _stext\nffffffff81000100 T vhost_worker\nffffffff81000300 T veth_xmit\n",
        )
        .unwrap();
        let mut r = report();
        r.sets.truncate(1);
        let w = |bucket: usize, packets: u64| {
            let mut ws = vec![None; MEASUREMENTS.len()];
            ws[2] = Some(Window {
                packets,
                units: 10.0,
                hits: vec![(bucket, 4)],
                step: 4,
                len: 0x100,
                ..Default::default()
            });
            ws
        };
        r.sets[0].vhost.iter_mut().for_each(|run| run.windows = w(0x40, 20));
        r.sets[0].veth.iter_mut().for_each(|run| run.windows = w(0xc0, 40));
        assert!(!r.text().contains("profile:"), "no symbols, no profile");
        r.syms = Some(syms);
        let t = r.text();
        assert!(t.contains("profile: UDP 1-byte req/resp (3 + 3 windows"), "{t}");
        assert!(t.lines().any(|l| l.contains("vhost_worker") && l.contains("veth_xmit")), "{t}");
        let v: Value = serde_json::from_str(&r.json()).unwrap();
        let p = &v["sets"][0]["profile"];
        assert_eq!(p.as_array().unwrap().len(), MEASUREMENTS.len());
        assert_eq!(p[2]["key"], "udp_rr");
        assert_eq!(p[2]["vhost"]["packets"], 60);
        assert_eq!(p[2]["veth"]["top"][0], serde_json::json!(["veth_xmit", 12]));
        assert!(report().json().find("\"profile\"").is_none(), "absent without --profile");
    }

    #[test]
    fn figures_are_medians_with_ratios() {
        let r = report();
        // vhost: 10, 30 (third failed) -> 20; veth: 100, 100, 40 -> 100.
        assert_eq!(r.sets[0].figure(0), (Some(20.0), Some(100.0), Some(0.2)));
        assert_eq!(r.sets[0].figure(1), (Some(10.0), Some(100.0), Some(0.1)));
        assert_eq!(r.sets[1].figure(0), (None, None, None));
        assert_eq!(r.exit_code(false), 1, "a failed figure fails the bench");
        let mut ok = r.clone();
        ok.sets[0].vhost[2] = run(&vec![20.0; FIGURES.len()]);
        assert_eq!(ok.exit_code(false), 0, "a default set the kernel lacks is only a note");
        assert_eq!(ok.exit_code(true), 1, "an explicit set that was skipped fails");
        ok.sets.remove(0);
        assert_eq!(ok.exit_code(false), 1, "nothing measured");
    }

    #[test]
    fn text_table() {
        let t = report().text();
        assert!(t.contains("feature set rfc (version_1,access_platform), tap offloads none"), "{t}");
        assert!(t.contains("negotiated by virtio-net on virtio0: version_1,access_platform"), "{t}");
        assert!(
            t.lines().any(
                |l| l.starts_with("  TCP stream h2g->g2h [Mbit/s]") && l.ends_with("20.0          100       0.200")
            ),
            "{t}"
        );
        assert!(t.contains("error (vhost, repetition 3): TCP stream stalled"), "{t}");
        assert!(t.contains("feature set offloads (csum,guest_csum,guest_tso4,guest_tso6,host_tso4,host_tso6,mrg_rxbuf,version_1,access_platform), tap offloads csum,tso4,tso6\n  VHOST_SET_FEATURES mrg_rxbuf,version_1,access_platform; vktest offers csum,guest_csum,guest_tso4,guest_tso6,host_tso4,host_tso6,mrg_rxbuf,version_1,access_platform\n  skipped: not offered"), "{t}");
        let mut r = report();
        r.sets[0].negotiated = Some(crate::sys::vhost::RFC_FEATURES & !crate::sys::ioctl::VIRTIO_F_ACCESS_PLATFORM);
        assert!(r.text().contains("NOT negotiated (asked, but the kernel did not agree): access_platform"));
    }

    #[test]
    fn json_shape() {
        let j = report().json();
        assert_eq!(j.lines().count(), 1, "one line: {j}");
        let v: Value = serde_json::from_str(&j).unwrap();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>().join(",");
        // The order of the fields is today's (checked on the text; `Value` sorts keys).
        assert!(j.starts_with("{\"duration_s\":3.0,\"reps\":3,\"fake_device\":false,\"clock_granularity_us\":0.05,\"sets\":[{\"name\":\"rfc\",\"features\":\"0x300000000\""), "{j}");
        let set = &v["sets"][0];
        assert_eq!(
            keys(set),
            "device,errors,feature_names,features,figures,name,negotiated,negotiated_names,not_negotiated,notes,skipped,tap_offloads"
        );
        assert_eq!(set["feature_names"], json!(["version_1", "access_platform"]));
        assert_eq!(set["negotiated"], json!("0x300000000"));
        let fig = &set["figures"][0];
        assert_eq!(
            fig,
            &json!({"key": "tcp_h2g_to_g2h", "label": "TCP stream h2g->g2h", "unit": "Mbit/s", "vhost": 20.0,
                    "veth": 100.0, "ratio": 0.2, "vhost_reps": [10.0, 30.0, null], "veth_reps": [100.0, 100.0, 40.0]})
        );
        assert!(
            j.contains(
                "\"key\":\"tcp_h2g_to_g2h\",\"label\":\"TCP stream h2g->g2h\",\"unit\":\"Mbit/s\",\"vhost\":20.0,"
            ),
            "{j}"
        );
        assert_eq!(set["figures"].as_array().unwrap().len(), FIGURES.len());
        assert_eq!(set["errors"], json!(["vhost repetition 3: TCP stream stalled"]));
        assert_eq!(set["not_negotiated"], json!([]));
        assert_eq!(v["sets"][1]["skipped"], json!("not offered"));
        assert_eq!(v["sets"][1]["negotiated"], Value::Null);
        // Strings are escaped (a kernel or serve message may hold anything).
        let e: Value = serde_json::from_str(&json_error("a\"b\\c\nd\u{1}")).unwrap();
        assert_eq!(e, json!({"error": "a\"b\\c\nd\u{1}"}));
        assert_eq!(json_skipped("x"), "{\"skipped\":\"x\"}");
        // 3 decimals, and no number for what is none.
        assert_eq!(json_num(Some(1.23456)), Some(1.235));
        assert_eq!(json_num(Some(f64::NAN)), None);
    }

    #[test]
    fn offload_names() {
        assert_eq!(tun_offload_names(0), "none");
        assert_eq!(tun_offload_names(crate::sys::tap::TAP_OFFLOADS), "csum,tso4,tso6,tso_ecn");
    }
}
