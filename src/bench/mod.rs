//! `bench`: throughput and latency of the kernel-buffer vhost path against a
//! veth pair (the baseline: same kernel, same moment), per feature set.
//!
//! The vhost path is what `run` builds: a `serve --json` child, its TAP in
//! `<prefix>h2g` (fe80::) and its virtio-net interface in `<prefix>g2h`
//! (fe80::1). The baseline is a veth pair between `<prefix>vb-a` (fe80::) and
//! `<prefix>vb-b` (fe80::1). Repetitions alternate vhost and veth, figures
//! are medians over the repetitions, and each figure gets the ratio
//! vhost/veth.
//!
//! Here: the options, the run (namespaces, the baseline, per feature set the
//! serve child and the repetitions) and its progress lines. How each figure
//! is measured is in [`figures`]; the table and the JSON in [`report`].

pub mod figures;
pub mod profile;
pub mod report;

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use nix::errno::Errno;

use crate::errno_of;
use crate::net::Rtnl;
use crate::serve::rig::{probe_feature_set, SetProbe};
use crate::suite::{setup_pair, skip_reason, verify_two_way, ServeChild};
use crate::sys::netns::{self, NetnsGuard};
use crate::sys::vhost::FeatureSet;
use crate::sys::virtio::virtio_negotiated_features;
use figures::{measure_path, Path, Stop, StopOnDrop};
use report::{clock_granularity, json_error, json_skipped, Report, SetReport};

/// Exit status when the devices (or root) are missing.
pub const EXIT_SKIP: i32 = 4;

/// Names of the veth ends (inside the baseline namespaces only).
const VETH_A: &str = "vkbench0";
const VETH_B: &str = "vkbench1";

#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// Measurement time of each figure in each repetition.
    pub duration: Duration,
    /// Repetitions (vhost and veth alternate).
    pub reps: u32,
    /// One feature set, or None for `rfc`, `offloads`, `offloads,ring` and
    /// `offloads,ring,busypoll` (those vhost offers).
    pub features: Option<FeatureSet>,
    pub json: bool,
    /// Namespace names: <prefix>h2g, <prefix>g2h, <prefix>vb-a, <prefix>vb-b.
    pub ns_prefix: String,
    /// Limit of every wait (netlink events, serve child, stalled traffic).
    pub timeout: Duration,
    /// Path of this program (to spawn `serve`).
    pub exe: String,
    /// Harness self-test: `serve --fake-device` instead of vhost + vktest.
    pub fake_device: bool,
    /// Keep the kernel's tick profile of every measurement and print where
    /// each path spends its time ([`profile`]).
    pub profile: bool,
}

impl Default for BenchOpts {
    fn default() -> Self {
        BenchOpts {
            duration: Duration::from_secs(3),
            reps: 3,
            features: None,
            json: false,
            ns_prefix: String::new(),
            timeout: Duration::from_secs(15),
            exe: "/proc/self/exe".into(),
            fake_device: false,
            profile: false,
        }
    }
}

impl BenchOpts {
    fn ns(&self, what: &str) -> String {
        format!("{}{what}", self.ns_prefix)
    }
}

/// Create the baseline: a veth pair between `a_ns` (fe80::) and `b_ns` (fe80::1).
pub async fn setup_veth(a_ns: &str, b_ns: &str, limit: Duration) -> Result<Path> {
    // Created inside a_ns, so nothing ever appears in the caller's namespace.
    let rtnl = Rtnl::new(Some(a_ns))?;
    rtnl.create_veth(VETH_A, VETH_B).await?;
    let ia = rtnl.link_by_name(VETH_A).await?.index;
    let ib = rtnl.link_by_name(VETH_B).await?.index;
    let pair = setup_pair(&rtnl, (ia, VETH_A), (ib, VETH_B), a_ns, b_ns, limit).await?;
    Ok(Path::from(&pair))
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R> {
    tokio::task::spawn_blocking(f).await.map_err(|e| anyhow!("measurement task failed: {e}"))
}

fn progress(opts: &BenchOpts, msg: &str) {
    if !opts.json {
        eprintln!("bench: {msg}");
    }
}

/// Repetitions over the vhost pair and the veth baseline, alternating.
async fn measure_reps(
    opts: &BenchOpts,
    set: &str,
    vhost: &Path,
    veth: &Path,
    stop: &Stop,
    r: &mut SetReport,
) -> Result<()> {
    for rep in 1..=opts.reps {
        for (what, path) in [("vhost", vhost), ("veth", veth)] {
            progress(opts, &format!("set {set}: repetition {rep}/{}: {what}", opts.reps));
            let (p, s, d, t, prof) = (path.clone(), stop.clone(), opts.duration, opts.timeout, opts.profile);
            let run = blocking(move || measure_path(&p, d, t, &s, prof)).await?;
            stop.check()?;
            if what == "vhost" { &mut r.vhost } else { &mut r.veth }.push(run);
        }
    }
    Ok(())
}

/// One feature set: serve child, pair placed, sanity check, repetitions.
async fn bench_set(opts: &BenchOpts, set: &FeatureSet, veth: &Path, stop: &Stop) -> SetReport {
    let mut r =
        SetReport { set: set.clone(), tap_offloads: crate::sys::tap::derived_offloads(set.bits), ..Default::default() };
    if let Err(e) = bench_set_inner(opts, set, veth, stop, &mut r).await {
        r.errors.push(format!("{e:#}"));
    }
    r
}

async fn bench_set_inner(
    opts: &BenchOpts,
    set: &FeatureSet,
    veth: &Path,
    stop: &Stop,
    r: &mut SetReport,
) -> Result<()> {
    let t = opts.timeout;
    let (h2g_ns, g2h_ns) = (opts.ns("h2g"), opts.ns("g2h"));
    let mut nsg = NetnsGuard::new();
    nsg.create(&h2g_ns)?;
    nsg.create(&g2h_ns)?;
    let mut extra: Vec<String> = ["--features", &set.name, "--tap-offloads", "derived"].map(String::from).to_vec();
    if opts.fake_device {
        extra.push("--fake-device".into());
    }
    progress(opts, &format!("set {}: starting serve", set.name));
    let mut child = ServeChild::spawn_with(&opts.exe, &extra, t).await?;
    let ifs = child.ifs.clone();
    r.device = ifs.g2h_device.clone();
    let res: Result<()> = async {
        if !ifs.g2h_device.is_empty() {
            match virtio_negotiated_features(&ifs.g2h_device) {
                Ok(n) => r.negotiated = Some(n),
                Err(e) => r.notes.push(format!("negotiated features unknown: {e:#}")),
            }
        }
        let root = Rtnl::new(None)?;
        let pair =
            setup_pair(&root, (ifs.h2g_ifindex, &ifs.h2g), (ifs.g2h_ifindex, &ifs.g2h), &h2g_ns, &g2h_ns, t).await?;
        verify_two_way(&pair, 2, 20000, t).await.context("sanity check of the vhost pair before measuring")?;
        measure_reps(opts, &set.name, &Path::from(&pair), veth, stop, r).await
    }
    .await;
    if res.is_err() {
        child.kill_and_wait(t).await;
        let said = child.stderr_lines(t).await;
        r.notes.extend(said.into_iter().map(|l| format!("serve: {l}")));
        return res;
    }
    child.terminate(t).await?;
    nsg.delete_all()
}

/// Why bench skips `set` on this kernel, if it does ([`probe_feature_set`]):
/// vhost-net not offering its bits, no VKTEST_SET_FEATURES, or vktest
/// refusing it (EINVAL). A probe that cannot be made is not a reason:
/// serve will report the real error.
pub fn probe_set(set: &FeatureSet) -> Option<String> {
    match probe_feature_set(set).ok()? {
        SetProbe::Refused(e) if errno_of(&e) != Some(Errno::EINVAL) => None,
        probe => probe.reason(set),
    }
}

/// Run the benchmark; returns the report (errors of single figures are in it).
pub async fn run_bench(opts: &BenchOpts) -> Result<Report> {
    anyhow::ensure!(opts.reps >= 1, "--reps must be at least 1");
    anyhow::ensure!(!opts.duration.is_zero(), "--duration must be positive");
    let stop = Stop::new();
    let _stop_guard = StopOnDrop(stop.clone());
    let names = ["h2g", "g2h", "vb-a", "vb-b"].map(|n| opts.ns(n));
    for ns in &names {
        if netns::exists(ns) {
            netns::delete(ns).with_context(|| format!("remove stale namespace {ns}"))?;
            progress(opts, &format!("removed stale namespace {ns}"));
        }
    }
    // Wake-ups are counted while the guard lives.
    let (_schedstats, syms) = if opts.profile {
        let (on, syms) = profile::check_profiling()?;
        (Some(on), Some(syms))
    } else {
        (None, None)
    };
    let mut base = NetnsGuard::new();
    base.create(&names[2])?;
    base.create(&names[3])?;
    let veth = setup_veth(&names[2], &names[3], opts.timeout).await.context("veth baseline")?;

    let sets = match &opts.features {
        Some(s) => vec![s.clone()],
        None => vec![FeatureSet::rfc(), FeatureSet::offloads(), FeatureSet::offloads_and_ring(), FeatureSet::best()],
    };
    let mut report = Report {
        duration: opts.duration,
        reps: opts.reps,
        fake_device: opts.fake_device,
        clock_granularity: clock_granularity(),
        sets: Vec::new(),
        syms,
    };
    for set in &sets {
        let why_not = if opts.fake_device { None } else { probe_set(set) };
        if let Some(why) = why_not {
            progress(opts, &format!("set {}: skipped: {why}", set.name));
            report.sets.push(SetReport {
                set: set.clone(),
                tap_offloads: crate::sys::tap::derived_offloads(set.bits),
                skipped: Some(why),
                ..Default::default()
            });
            continue;
        }
        report.sets.push(bench_set(opts, set, &veth, &stop).await);
        stop.check()?;
    }
    base.delete_all()?;
    Ok(report)
}

/// `bench`: print the table (or JSON); exit 0 success, 1 failure, 4 skipped.
pub async fn bench(opts: &BenchOpts) -> i32 {
    let skip = if opts.fake_device {
        (!nix::unistd::geteuid().is_root()).then(|| "not root (CAP_NET_ADMIN and CAP_SYS_ADMIN needed)".to_string())
    } else {
        skip_reason()
    };
    if let Some(why) = skip {
        if opts.json {
            println!("{}", json_skipped(&why));
        } else {
            println!("bench: skipped: {why}");
        }
        return EXIT_SKIP;
    }
    match run_bench(opts).await {
        Ok(report) => {
            if opts.json {
                println!("{}", report.json());
            } else {
                print!("{}", report.text());
            }
            report.exit_code(opts.features.is_some())
        }
        Err(e) => {
            if opts.json {
                println!("{}", json_error(&format!("{e:#}")));
            }
            eprintln!("vhost-kernel-test bench: {e:#}");
            1
        }
    }
}
