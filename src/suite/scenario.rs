//! The teardown scenarios: serve, place, verify, flood, tear down while the
//! traffic flows, and check that nothing is left.

use std::collections::{BTreeSet, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;

use crate::net::{LinkWatcher, Rtnl};
use crate::serve::rig::{probe_feature_set, SetProbe};
use crate::serve::Interfaces;
use crate::sys::netns::{self, NetnsGuard};
use crate::sys::vhost::{feature_names, vktest_features_valid, FeatureSet, VHOST_NET_KERNEL_PATH};
use crate::sys::virtio::{vdpa_devices, virtio_device_of, virtio_negotiated_features, VDPA_DEVICES};
use crate::sys::vktest::VKTEST_PATH;

use super::*;

pub(crate) const VIRTIO_NET_DRIVER: &str = "/sys/bus/virtio/drivers/virtio_net";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Teardown {
    Exit,
    CloseVktestFirst,
    Unbind,
    UnbindRebind,
    /// SIGUSR2 (vhost fd closed; traffic must go on, vktest holds the
    /// device), SIGUSR1 (vktest closed: g2h goes), then exit.
    CloseVhostFirst,
    /// Exit, with serve closing /dev/vktest before /dev/vhost-net-kernel.
    CloseBothReverse,
    /// SIGKILL of the serving process during the flood.
    SigkillMidFlood,
    /// Unbind and bind virtio_net [`REBIND_ROUNDS`] times, each under a
    /// fresh two-way flood, traffic verified after each.
    RebindRepeated,
}

/// Unbind/bind rounds of `teardown_rebind_repeated`.
pub const REBIND_ROUNDS: usize = 5;

pub(crate) fn write_sysfs(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("write {value:?} to {path}"))
}

/// The feature set a scenario's serve gets: `--features SET`, else the
/// RFC's. With the vhost-added header (a TAP without IFF_VNET_HDR) there is
/// nowhere to carry checksum/TSO metadata, so those bits are left out and
/// the rest of the set (what vhost-net itself implements) is kept.
pub(crate) fn features_for(set: Option<&str>, vhost_hdr: bool, diag: &mut dyn FnMut(String)) -> Result<FeatureSet> {
    let asked = match set {
        Some(s) => FeatureSet::parse(s)?,
        None => return Ok(FeatureSet::rfc()),
    };
    if !vhost_hdr {
        return Ok(asked);
    }
    let kept = asked.vhost_only();
    if kept != asked {
        diag(format!("feature set {asked} without the TAP's vnet header: running with {kept}"));
    }
    Ok(kept)
}

/// Compare what virtio-net negotiated on `dev` with the set asked for:
/// Err naming the bits it lacks (and any it has that were not asked for).
pub(crate) fn check_negotiated(dev: &str, asked: &FeatureSet, negotiated: u64) -> Result<()> {
    let missing = asked.bits & !negotiated;
    let extra = negotiated & !asked.bits;
    if missing == 0 && extra == 0 {
        return Ok(());
    }
    let mut what = Vec::new();
    if missing != 0 {
        what.push(format!("missing {}", feature_names(missing).join(",")));
    }
    if extra != 0 {
        what.push(format!("not asked for {}", feature_names(extra).join(",")));
    }
    bail!(
        "virtio-net on {dev} negotiated {} ({negotiated:#x}), not feature set {asked} ({:#x}): {}",
        feature_names(negotiated).join(","),
        asked.bits,
        what.join("; ")
    )
}

/// Whether an explicit `--features` set can run here. Ok(Some(reason)) to
/// skip, only where the kernel rightly cannot: a kernel with the RFC's
/// interface (no VKTEST_SET_FEATURES), or a set the virtio-net rules do not
/// allow (host TSO without csum...). A valid set that the series' vktest
/// refuses, or vhost-net bits that the kernel node does not offer, is a
/// failure. The RFC's set is never skipped: the series must do it.
pub(crate) fn feature_set_skip(set: &FeatureSet, opts: &RunOpts) -> Result<Option<String>> {
    if opts.fake_device || opts.features.is_none() || set.is_rfc() {
        return Ok(None);
    }
    if !vktest_features_valid(set.bits) {
        return Ok(Some(format!(
            "feature set {set} is not a valid virtio-net set (host_tso* needs csum, guest_tso* guest_csum)"
        )));
    }
    match probe_feature_set(set)? {
        SetProbe::Supported => Ok(None),
        SetProbe::NoSetFeatures => Ok(SetProbe::NoSetFeatures.reason(set)),
        SetProbe::Refused(e) => Err(e.context(format!("vktest refused the valid feature set {set}"))),
        not_offered => bail!("feature set {set}: {}", not_offered.reason(set).unwrap_or_default()),
    }
}

/// One teardown scenario with traffic and floods, serve asked for feature
/// set `set` ([`features_for`]); returns its time to ready.
pub async fn scenario(
    kind: Teardown,
    vhost_hdr: bool,
    set: &FeatureSet,
    opts: &RunOpts,
    diag: &mut dyn FnMut(String),
) -> Result<Ready> {
    let t = opts.timeout;
    // vDPA devices before, to tell what this scenario left behind.
    let vdpa_before = vdpa_devices()?;
    // Namespaces first, so that on any error the child is gone before they are.
    let mut nsg = NetnsGuard::new();
    nsg.create(&opts.h2g_ns())?;
    nsg.create(&opts.g2h_ns())?;
    if opts.progress {
        diag("step: namespaces-created".into());
    }
    let mut extra = Vec::new();
    if vhost_hdr {
        extra.push("--vhost-hdr".to_string());
    }
    if opts.fake_device {
        extra.push("--fake-device".to_string());
    }
    if opts.features.is_some() {
        extra.extend(["--features".to_string(), set.name.clone()]);
    }
    if kind == Teardown::CloseBothReverse {
        extra.extend(["--close-order".to_string(), "vktest-first".to_string()]);
    }
    let started = Instant::now();
    let mut child = ServeChild::spawn_with(&opts.exe, &extra, t).await?;
    let res = scenario_body(kind, &mut child, set, opts, started, &mut *diag).await;
    if res.is_err() {
        child.kill_and_wait(t).await;
    }
    child.stderr_lines(t).await.into_iter().for_each(|l| diag(format!("serve: {l}")));
    let ready = res?;
    for ns in [opts.h2g_ns(), opts.g2h_ns()] {
        check_no_damage(&ns)?;
    }
    nsg.delete_all()?;
    check_no_leftovers(opts, &vdpa_before).await?;
    Ok(ready)
}

pub(crate) async fn scenario_body(
    kind: Teardown,
    child: &mut ServeChild,
    set: &FeatureSet,
    opts: &RunOpts,
    started: Instant,
    diag: &mut dyn FnMut(String),
) -> Result<Ready> {
    let t = opts.timeout;
    let (h2g_ns, g2h_ns) = (opts.h2g_ns(), opts.g2h_ns());
    let ifs = child.ifs.clone();
    let dev = if ifs.g2h_device.is_empty() { String::new() } else { format!(" ({})", ifs.g2h_device) };
    let served = started.elapsed();
    diag(format!("serve: h2g={} g2h={}{dev}", ifs.h2g, ifs.g2h));
    if !opts.fake_device {
        // What the traffic below tests: the set virtio-net really uses.
        anyhow::ensure!(!ifs.g2h_device.is_empty(), "serve named no virtio device for {}", ifs.g2h);
        let negotiated = virtio_negotiated_features(&ifs.g2h_device)?;
        check_negotiated(&ifs.g2h_device, set, negotiated)?;
        diag(format!("virtio-net on {} negotiated feature set {set}, as asked", ifs.g2h_device));
    }
    let root = Rtnl::new(None)?;
    let pair = setup_pair(&root, (ifs.h2g_ifindex, &ifs.h2g), (ifs.g2h_ifindex, &ifs.g2h), &h2g_ns, &g2h_ns, t).await?;
    let from_spawn = started.elapsed();
    // The serve flow's own start (first device open), on the same clock.
    let from_flow = match ifs.serve_start_ns {
        0 => None,
        t0 => Some(Duration::from_nanos(crate::serve::monotonic_ns().saturating_sub(t0))),
    };
    let ready = Ready { from_spawn, from_flow };
    let flow = from_flow.map(|f| format!("; {:.1} ms from the serve flow's start", ms(f))).unwrap_or_default();
    diag(format!(
        "ready in {:.1} ms (serve: devices wired, interfaces found {:.1} ms; moved, addressed, up {:.1} ms{flow})",
        ms(from_spawn),
        ms(served),
        ms(from_spawn - served)
    ));
    if opts.progress {
        diag("step: traffic".into());
    }
    let (a, b) = verify_two_way(&pair, opts.count, opts.size, t).await?;
    diag(format!("h2g -> g2h: {}", a.summary()));
    diag(format!("g2h -> h2g: {}", b.summary()));
    let g2h_idx = pair.g2h_index;
    let h2g_gone = (h2g_ns.as_str(), pair.h2g_index, ifs.h2g.as_str());

    let floods = start_floods(&pair, opts.size, opts.flood_window);
    let (floods, flowing) = tokio::task::spawn_blocking(move || {
        let r = floods.wait_flowing(FLOOD_WARMUP_REPLIES, t);
        (floods, r)
    })
    .await
    .map_err(|e| anyhow!("flood wait task failed: {e}"))?;
    let res: Result<()> = async {
        flowing?;
        if opts.progress {
            diag("step: teardown".into());
        }
        let g2h_gone = (g2h_ns.as_str(), g2h_idx, ifs.g2h.as_str());
        match kind {
            Teardown::Exit | Teardown::CloseBothReverse => {
                terminate_and_wait_gone(child, &[h2g_gone, g2h_gone], t).await
            }
            Teardown::SigkillMidFlood => end_and_wait_gone(child, &[h2g_gone, g2h_gone], t, true).await,
            Teardown::CloseVktestFirst => {
                let mut w = LinkWatcher::new(Some(&g2h_ns))?;
                child.signal(Signal::SIGUSR1)?;
                w.wait_del_link(g2h_idx, t, &format!("{} to go away after closing /dev/vktest", ifs.g2h)).await?;
                terminate_and_wait_gone(child, &[h2g_gone], t).await
            }
            Teardown::CloseVhostFirst => {
                let mut w = LinkWatcher::new(Some(&g2h_ns))?;
                child.close_on_signal(Signal::SIGUSR2, VHOST_NET_KERNEL_PATH, t).await?;
                // vktest still holds the vhost file: both floods go on.
                let more = FLOOD_WARMUP_REPLIES;
                wait_more_replies(&floods, more, t)
                    .await
                    .context("traffic after closing the vhost fd (vktest still holds the device)")?;
                diag(format!("vhost fd closed: both floods got {more} more replies"));
                child.close_on_signal(Signal::SIGUSR1, VKTEST_PATH, t).await?;
                w.wait_del_link(g2h_idx, t, &format!("{} to go away after closing /dev/vktest", ifs.g2h)).await?;
                terminate_and_wait_gone(child, &[h2g_gone], t).await
            }
            Teardown::Unbind => {
                let dev = virtio_dev(&ifs)?;
                unbind(dev, &g2h_ns, g2h_idx, &ifs.g2h, t).await?;
                terminate_and_wait_gone(child, &[h2g_gone], t).await
            }
            Teardown::UnbindRebind => {
                let dev = virtio_dev(&ifs)?;
                let pair2 = unbind_rebind(&root, dev, &pair, opts, diag).await?;
                let (a, b) = verify_two_way(&pair2, opts.count, opts.size, t).await?;
                diag(format!("after rebind h2g -> g2h: {}", a.summary()));
                diag(format!("after rebind g2h -> h2g: {}", b.summary()));
                let new_gone = (g2h_ns.as_str(), pair2.g2h_index, pair2.g2h_if.as_str());
                terminate_and_wait_gone(child, &[h2g_gone, new_gone], t).await
            }
            Teardown::RebindRepeated => {
                let dev = virtio_dev(&ifs)?;
                let mut cur = pair.clone();
                for round in 1..=REBIND_ROUNDS {
                    // Round 1 races with the flood started above; later rounds with their own.
                    let own = if round == 1 {
                        None
                    } else {
                        let f = start_floods(&cur, opts.size, opts.flood_window);
                        let (f, r) = tokio::task::spawn_blocking(move || {
                            let r = f.wait_flowing(FLOOD_WARMUP_REPLIES, t);
                            (f, r)
                        })
                        .await
                        .map_err(|e| anyhow!("flood wait task failed: {e}"))?;
                        if let Err(e) = r {
                            let verdict = stop_floods(f, diag).await;
                            return with_verdict(Err(e), verdict).context(format!("rebind round {round}"));
                        }
                        Some(f)
                    };
                    let mut res = unbind_rebind(&root, dev, &cur, opts, diag).await;
                    if let Some(f) = own {
                        res = with_verdict(res, stop_floods(f, diag).await);
                    }
                    cur = res.with_context(|| format!("rebind round {round}/{REBIND_ROUNDS}"))?;
                    let (a, b) = verify_two_way(&cur, opts.count, opts.size, t)
                        .await
                        .with_context(|| format!("traffic after rebind round {round}/{REBIND_ROUNDS}"))?;
                    diag(format!(
                        "round {round}/{REBIND_ROUNDS}: h2g -> g2h {}/{}, g2h -> h2g {}/{} replies",
                        a.received, a.transmitted, b.received, b.transmitted
                    ));
                }
                let new_gone = (g2h_ns.as_str(), cur.g2h_index, cur.g2h_if.as_str());
                terminate_and_wait_gone(child, &[h2g_gone, new_gone], t).await
            }
        }
    }
    .await;
    with_verdict(res, stop_floods(floods, diag).await).map(|()| ready)
}

/// Time to ready of one scenario: from spawning the serving process, and
/// from the start of its serve flow (its first device open; None when the
/// child did not say), until both interfaces are up and addressed in their
/// namespaces.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub from_spawn: Duration,
    pub from_flow: Option<Duration>,
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn virtio_dev(ifs: &Interfaces) -> Result<&str> {
    anyhow::ensure!(!ifs.g2h_device.is_empty(), "no virtio device known for {}", ifs.g2h);
    Ok(&ifs.g2h_device)
}

/// Unbind virtio_net from `dev` and wait for interface `idx` of `ns` to go.
pub(crate) async fn unbind(dev: &str, ns: &str, idx: u32, name: &str, t: Duration) -> Result<()> {
    let mut w = LinkWatcher::new(Some(ns))?;
    write_sysfs(&format!("{VIRTIO_NET_DRIVER}/unbind"), dev)?;
    w.wait_del_link(idx, t, &format!("{name} to go away after unbinding virtio_net from {dev}")).await?;
    Ok(())
}

/// Unbind virtio_net from `dev`, bind it again, wait for the new interface,
/// place it into the g2h namespace and forget h2g's neighbours. Returns the
/// pair with the new g2h interface.
pub(crate) async fn unbind_rebind(
    root: &Rtnl,
    dev: &str,
    pair: &Pair,
    opts: &RunOpts,
    diag: &mut dyn FnMut(String),
) -> Result<Pair> {
    let t = opts.timeout;
    unbind(dev, &pair.g2h_ns, pair.g2h_index, &pair.g2h_if, t).await?;
    let mut rw = LinkWatcher::new(None)?;
    let known: HashSet<u32> = root.links().await?.iter().map(|l| l.index).collect();
    write_sysfs(&format!("{VIRTIO_NET_DRIVER}/bind"), dev)?;
    let new = rw
        .wait_new_link(
            &known,
            // The one we bound, not any virtio-net that comes along.
            |l| virtio_device_of(&l.name).is_ok_and(|d| d == dev),
            t,
            &format!("the virtio-net interface of {dev} to appear after binding it"),
        )
        .await?;
    diag(format!("rebound: {dev} is back as {}", new.name));
    let new_idx = place(root, new.index, &new.name, &pair.g2h_ns, G2H_ADDR, t).await?;
    Rtnl::new(Some(&pair.h2g_ns))?.flush_neighbours(pair.h2g_index).await?;
    Ok(Pair { g2h_if: new.name.clone(), g2h_index: new_idx, ..pair.clone() })
}

/// Wait until both floods got `n` more verified replies than they have
/// now; fails at the first corrupted reply of either.
pub(crate) async fn wait_more_replies(floods: &Floods, n: u64, t: Duration) -> Result<()> {
    let (h, g) = (floods.h2g.control(), floods.g2h.control());
    let (h0, g0) = (h.replies(), g.replies());
    let (a, b) = tokio::task::spawn_blocking(move || {
        let a = h.wait_replies(h0 + n, t);
        // Not worth waiting for once h2g failed.
        let b = if a.corrupted > 0 || a.verified < h0 + n { g.counts() } else { g.wait_replies(g0 + n, t) };
        (a, b)
    })
    .await
    .map_err(|e| anyhow!("reply wait task failed: {e}"))?;
    let h2g = judge_flow(H2G, a, a.verified - h0, n, t);
    let g2h = judge_flow(G2H, b, b.verified - g0, n, t);
    match (h2g, g2h) {
        (Err(a), Err(b)) => Err(anyhow!("{a:#}; {b:#}")),
        (a, b) => a.and(b),
    }
}

/// Neither of our namespaces nor any vhostkernel interface is left, and
/// no vDPA device that was not there before (`vdpa_before`).
pub async fn check_no_leftovers(opts: &RunOpts, vdpa_before: &BTreeSet<String>) -> Result<()> {
    for ns in [opts.h2g_ns(), opts.g2h_ns()] {
        if netns::exists(&ns) {
            bail!("namespace {ns} still exists");
        }
    }
    let mut left: Vec<String> = Rtnl::new(None)?
        .links()
        .await?
        .into_iter()
        .filter(|l| l.name.starts_with("vhostkernel") || l.name.starts_with("vkfake"))
        .map(|l| format!("interface {}", l.name))
        .collect();
    left.extend(vdpa_devices()?.difference(vdpa_before).map(|d| format!("vDPA device {d} ({VDPA_DEVICES}/{d})")));
    if !left.is_empty() {
        bail!("left behind: {}", left.join(", "));
    }
    Ok(())
}

/// vDPA devices that existed before this process's first test point: the
/// end check blames the run only for the ones it added.
pub(crate) static VDPA_AT_START: OnceLock<BTreeSet<String>> = OnceLock::new();

pub(crate) fn vdpa_at_start() -> Result<&'static BTreeSet<String>> {
    if let Some(v) = VDPA_AT_START.get() {
        return Ok(v);
    }
    let now = vdpa_devices()?;
    Ok(VDPA_AT_START.get_or_init(|| now))
}
