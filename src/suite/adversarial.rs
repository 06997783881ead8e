//! Adversarial test points (issue 12): the serve wiring run in this
//! process, with user space doing what the kernel must survive while it
//! attaches, probes, carries traffic and is unbound and bound again.
//!
//! - `busyloop_rebind`: both queues busy-poll (VHOST_SET_VRING_BUSYLOOP_TIMEOUT
//!   before the attach); then rounds of unbind/bind of virtio_net, with a
//!   flood into the TAP or with the TAP idle. The RX handler busy-polls the
//!   TX queue's ring when the TAP has nothing for it, and during a rebind the
//!   RX queue starts while the TX queue still has no backend and the
//!   addresses of the rings the unbind freed.
//! - `eventfd_storm`: threads write the four kick/call eventfds as fast as
//!   they can through attach, probe, traffic, unbind, bind and the close of
//!   /dev/vktest; spurious notifications must be harmless.
//! - `ioctl_race_attach`: threads hammer the configuring ioctls of both
//!   nodes while another thread attaches; each result is judged by where the
//!   call lies relative to the attach (a global sequence), and the pair must
//!   carry traffic after the race. A second phase adds VHOST_RESET_OWNER.

use std::collections::{BTreeSet, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;

use crate::errno_of;
use crate::net::icmp::{BackgroundPing, PingOpts, PingTarget};
use crate::net::{if_index, Link, LinkWatcher, Rtnl};
use crate::report::ktap::Outcome;
use crate::serve::{Rig, ServeOpts};
use crate::sys::ioctl::{self, VhostVringAddr, VHOST_F_LOG_ALL};
use crate::sys::netns::NetnsGuard;
use crate::sys::vhost::{FeatureSet, RX_QUEUE, TX_QUEUE};
use crate::sys::virtio::{is_virtio_net, vdpa_devices, virtio_device_of};

use super::attach::expect_errno;
use super::races::Snapshot;
use super::scenario::{feature_set_skip, features_for, unbind_rebind};
use super::{
    check_no_damage, check_no_leftovers, close_and_wait, judge_flow, setup_pair, verify_two_way, Pair, RunOpts,
    G2H_ADDR, H2G, H2G_ADDR,
};

/// The adversarial points ([`super::registry::Body::Adversarial`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adversarial {
    BusyloopRebind,
    EventfdStorm,
    IoctlRaceAttach,
}

/// Busy-poll time of both queues, in microseconds. Long enough that a
/// handler with nothing to do spins over the paired queue's ring many
/// times (thousands of reads of a stale ring per poll: a wide window), short
/// enough that the poll, which runs with preemption disabled, does not
/// starve the 2-vCPU guest under TCG (a poll ends early as soon as there is
/// work; traffic under 200 us polls stays well within the echo timeouts).
pub const BUSYLOOP_US: u32 = 200;

/// Unbind/bind rounds of `busyloop_rebind` (odd ones with a flood into the
/// TAP, even ones with the TAP idle).
pub const BUSYLOOP_ROUNDS: u32 = 10;

/// Race rounds of `ioctl_race_attach`, each on a fresh rig: without and
/// with VHOST_RESET_OWNER among the hammered calls.
pub const RACE_ROUNDS: u32 = 10;
pub const RESET_RACE_ROUNDS: u32 = 8;

pub async fn run(kind: Adversarial, opts: &RunOpts, diag: &mut dyn FnMut(String)) -> Result<Outcome> {
    let set = features_for(opts.features.as_deref(), false, diag)?;
    if let Some(why) = feature_set_skip(&set, opts)? {
        return Ok(Outcome::Skip(why));
    }
    let serve = ServeOpts { features: set.clone(), timeout: opts.timeout, ..Default::default() };
    let mut frame = Frame::new(opts).await?;
    let res = match kind {
        Adversarial::BusyloopRebind => busyloop_rebind(&serve, opts, diag).await,
        Adversarial::EventfdStorm => eventfd_storm(&serve, opts, diag).await,
        Adversarial::IoctlRaceAttach => ioctl_race_attach(&serve, opts, diag).await,
    };
    // Whatever failed, the namespaces go; the leftover checks only judge a
    // point that got to its end.
    res?;
    frame.finish(opts).await?;
    Ok(Outcome::Pass)
}

/// What a point starts from and must end with: the run's two namespaces
/// (created here, deleted at the end) and what this process and the kernel
/// held before (interfaces, vDPA devices, fds).
struct Frame {
    rtnl: Rtnl,
    before: Snapshot,
    vdpa_before: BTreeSet<String>,
    nsg: NetnsGuard,
}

impl Frame {
    async fn new(opts: &RunOpts) -> Result<Self> {
        // The socket of the snapshots is open before the first and after the last.
        let rtnl = Rtnl::new(None)?;
        let before = Snapshot::take(&rtnl).await?;
        let vdpa_before = vdpa_devices()?;
        let mut nsg = NetnsGuard::new();
        nsg.create(&opts.h2g_ns())?;
        nsg.create(&opts.g2h_ns())?;
        Ok(Frame { rtnl, before, vdpa_before, nsg })
    }

    /// Nothing arrived damaged, the namespaces go, and nothing is left:
    /// interfaces, vDPA devices, fds of this process (eventfd dups of the
    /// storm threads included).
    async fn finish(&mut self, opts: &RunOpts) -> Result<()> {
        for ns in [opts.h2g_ns(), opts.g2h_ns()] {
            check_no_damage(&ns)?;
        }
        self.nsg.delete_all()?;
        check_no_leftovers(opts, &self.vdpa_before).await?;
        // Sockets are not compared: a multicast rtnetlink connection (the
        // watchers, the landings) closes its socket only when its task next
        // gets a message and finds no receiver, some time after the point.
        // The fds a point could leak are its eventfds, device nodes and TAP.
        let left: Vec<String> = self
            .before
            .leftovers(&Snapshot::take(&self.rtnl).await?)
            .into_iter()
            .filter(|l| !l.contains("-> socket:["))
            .collect();
        if !left.is_empty() {
            bail!("left behind: {}", left.join(", "));
        }
        Ok(())
    }
}

/// Subscribed before an attach: the virtio-net interface it makes is the
/// first new one (the attach registers it before returning).
struct NewLinkWatch {
    w: LinkWatcher,
    known: HashSet<u32>,
}

impl NewLinkWatch {
    async fn new() -> Result<Self> {
        let w = LinkWatcher::new(None)?;
        let known = Rtnl::new(None)?.links().await?.iter().map(|l| l.index).collect();
        Ok(NewLinkWatch { w, known })
    }

    async fn virtio_net(mut self, t: Duration, what: &str) -> Result<Link> {
        self.w.wait_new_link(&self.known, |l| is_virtio_net(&l.name), t, what).await
    }
}

/// Place the rig's TAP (h2g) and the virtio-net interface `g2h` in the run's
/// namespaces with their addresses.
async fn place_pair(rig: &Rig, g2h: &Link, opts: &RunOpts) -> Result<Pair> {
    let root = Rtnl::new(None)?;
    let tap_idx = if_index(rig.tap.name())?;
    setup_pair(&root, (tap_idx, rig.tap.name()), (g2h.index, &g2h.name), &opts.h2g_ns(), &opts.g2h_ns(), opts.timeout)
        .await
}

/// Attach `rig` (watching for its interface), place the pair and check
/// two-way traffic; returns the pair and the virtio device of its g2h end.
async fn attach_and_verify(rig: &Rig, opts: &RunOpts, diag: &mut dyn FnMut(String)) -> Result<(Pair, String)> {
    let watch = NewLinkWatch::new().await?;
    rig.attach()?;
    let g2h = watch.virtio_net(opts.timeout, "the virtio-net interface of the attach").await?;
    // Read here: sysfs shows the interface of the namespace it is in.
    let dev = virtio_device_of(&g2h.name).with_context(|| format!("the virtio device of {}", g2h.name))?;
    let pair = place_pair(rig, &g2h, opts).await?;
    let (a, b) = verify_two_way(&pair, opts.count, opts.size, opts.timeout).await?;
    diag(format!(
        "{} <-> {} ({dev}): h2g -> g2h {}; g2h -> h2g {}",
        pair.h2g_if,
        pair.g2h_if,
        a.summary(),
        b.summary()
    ));
    Ok((pair, dev))
}

// ---------------------------------------------------------------- busyloop

async fn busyloop_rebind(serve: &ServeOpts, opts: &RunOpts, diag: &mut dyn FnMut(String)) -> Result<()> {
    let t = opts.timeout;
    let rig = Rig::prepare(serve)?;
    for q in [RX_QUEUE, TX_QUEUE] {
        rig.vhost.set_vring_busyloop_timeout(q, BUSYLOOP_US).context("before the attach")?;
    }
    // vhost-net has two queues: a third index is refused.
    expect_errno(rig.vhost.set_vring_busyloop_timeout(2, BUSYLOOP_US), Errno::ENOBUFS, "busy-poll timeout of queue 2")?;
    let (pair, dev) = attach_and_verify(&rig, opts, diag).await?;
    expect_errno(
        rig.vhost.set_vring_busyloop_timeout(RX_QUEUE, 0),
        Errno::EPERM,
        "VHOST_SET_VRING_BUSYLOOP_TIMEOUT after the attach",
    )?;
    diag(format!("both queues busy-poll {BUSYLOOP_US} us; {BUSYLOOP_ROUNDS} unbind/bind rounds of {dev}"));
    let root = Rtnl::new(None)?;
    let mut cur = pair;
    for round in 1..=BUSYLOOP_ROUNDS {
        let flood = round % 2 == 1;
        let res = if flood {
            rebind_under_h2g_flood(&root, &dev, &cur, opts, diag).await
        } else {
            // The TAP idle: the RX handler finds nothing and busy-polls TX.
            unbind_rebind(&root, &dev, &cur, opts, diag).await
        };
        let how = if flood { "with a flood into the TAP" } else { "with the TAP idle" };
        cur = res.with_context(|| format!("rebind round {round}/{BUSYLOOP_ROUNDS} {how}"))?;
        let (a, b) = verify_two_way(&cur, opts.count, opts.size, t)
            .await
            .with_context(|| format!("traffic after rebind round {round}/{BUSYLOOP_ROUNDS} {how}"))?;
        diag(format!(
            "round {round}/{BUSYLOOP_ROUNDS} ({how}): h2g -> g2h {}/{}, g2h -> h2g {}/{} replies",
            a.received, a.transmitted, b.received, b.transmitted
        ));
    }
    let gone = [(opts.h2g_ns(), cur.h2g_index), (opts.g2h_ns(), cur.g2h_index)];
    let gone: Vec<(Option<&str>, u32)> = gone.iter().map(|(n, i)| (Some(n.as_str()), *i)).collect();
    close_and_wait(&gone, || drop(rig), t, "closing the rig").await
}

/// One unbind/bind with a flood from the TAP side running through it:
/// requests keep arriving at vhost's RX queue while virtio-net goes and
/// comes back. The flood must flow before, must flow again after the bind,
/// and no reply may be corrupted.
async fn rebind_under_h2g_flood(
    root: &Rtnl,
    dev: &str,
    cur: &Pair,
    opts: &RunOpts,
    diag: &mut dyn FnMut(String),
) -> Result<Pair> {
    let t = opts.timeout;
    let target =
        PingTarget { netns: Some(cur.h2g_ns.clone()), iface: cur.h2g_if.clone(), dst: G2H_ADDR, src: Some(H2G_ADDR) };
    let ping = PingOpts {
        size: opts.size,
        window: opts.flood_window,
        flood: Some(Duration::from_secs(24 * 3600)),
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let flood = BackgroundPing::start(target, ping);
    let ctl = flood.control();
    let res: Result<Pair> = async {
        let c = ctl.clone();
        let n = super::FLOOD_WARMUP_REPLIES;
        let got = tokio::task::spawn_blocking(move || c.wait_replies(n, t))
            .await
            .map_err(|e| anyhow!("flood wait task failed: {e}"))?;
        judge_flow(H2G, got, got.verified, n, t)?;
        let new = unbind_rebind(root, dev, cur, opts, diag).await?;
        let (c, before) = (ctl.clone(), ctl.replies());
        let got = tokio::task::spawn_blocking(move || c.wait_replies(before + n, t))
            .await
            .map_err(|e| anyhow!("flood wait task failed: {e}"))?;
        judge_flow(H2G, got, got.verified - before, n, t).context("the flood into the TAP after the bind")?;
        Ok(new)
    }
    .await;
    let stopped =
        tokio::task::spawn_blocking(move || flood.stop()).await.map_err(|e| anyhow!("flood stop task failed: {e}"))?;
    let got = ctl.counts();
    match &stopped {
        Ok(s) => diag(format!("flood {H2G}: {}", s.summary())),
        Err(e) => diag(format!("flood {H2G}: {e:#}")),
    }
    if got.corrupted > 0 {
        let c = anyhow!("flood {H2G}: {} of {} replies corrupted", got.corrupted, got.corrupted + got.verified);
        return Err(match res {
            Ok(_) => c,
            Err(e) => e.context(format!("{c:#}")),
        });
    }
    res
}

// ----------------------------------------------------------- eventfd storm

/// Threads writing an eventfd counter increment of 1 in a loop, each on its
/// own dup of one of the four eventfds, until stopped. Stopped and joined
/// on drop too, so that no thread outlives the point.
struct Storm {
    stop: Arc<AtomicBool>,
    threads: Vec<(&'static str, JoinHandle<Result<u64>>)>,
}

impl Storm {
    fn start(rig: &Rig) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let e = &rig.efds;
        let fds = [("kick0", &e.kick[0]), ("call0", &e.call[0]), ("kick1", &e.kick[1]), ("call1", &e.call[1])];
        let mut storm = Storm { stop: stop.clone(), threads: Vec::new() };
        for (name, efd) in fds {
            // The same eventfd (a dup): what the kernel holds sees every write.
            let fd: OwnedFd = efd.as_fd().try_clone_to_owned().with_context(|| format!("dup eventfd {name}"))?;
            let stop = stop.clone();
            let h = std::thread::Builder::new()
                .name(format!("storm-{name}"))
                .spawn(move || -> Result<u64> {
                    let one = 1u64.to_ne_bytes();
                    let mut n = 0u64;
                    while !stop.load(SeqCst) {
                        nix::unistd::write(&fd, &one).with_context(|| format!("write(2) to eventfd {name}"))?;
                        n += 1;
                    }
                    Ok(n)
                })
                .with_context(|| format!("spawn the storm thread of {name}"))?;
            storm.threads.push((name, h));
        }
        Ok(storm)
    }

    /// Stop and join every thread: the writes per eventfd; Err if a write failed.
    fn stop(mut self) -> Result<Vec<(&'static str, u64)>> {
        self.stop.store(true, SeqCst);
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (name, h) in self.threads.drain(..) {
            match h.join() {
                Ok(Ok(n)) => out.push((name, n)),
                Ok(Err(e)) => errors.push(format!("{e:#}")),
                Err(_) => errors.push(format!("storm thread of {name} panicked")),
            }
        }
        if !errors.is_empty() {
            bail!("eventfd storm: {}", errors.join("; "));
        }
        Ok(out)
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        for (_, h) in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

async fn eventfd_storm(serve: &ServeOpts, opts: &RunOpts, diag: &mut dyn FnMut(String)) -> Result<()> {
    let t = opts.timeout;
    let rig = Rig::prepare(serve)?;
    // On an early return the storm is stopped and joined by its drop.
    let storm = Storm::start(&rig)?;
    let began = Instant::now();
    let (pair, dev) = attach_and_verify(&rig, opts, diag).await.context("attach, probe and traffic under the storm")?;
    let root = Rtnl::new(None)?;
    let pair = unbind_rebind(&root, &dev, &pair, opts, diag).await.context("unbind and bind under the storm")?;
    let (a, b) =
        verify_two_way(&pair, opts.count, opts.size, t).await.context("traffic after the bind under the storm")?;
    diag(format!("after the bind: h2g -> g2h {}; g2h -> h2g {}", a.summary(), b.summary()));
    // Close /dev/vktest while the storm goes on: the interface must go.
    let Rig { vhost, vktest, tap, efds } = rig;
    let g2h_ns = opts.g2h_ns();
    close_and_wait(&[(Some(&g2h_ns), pair.g2h_index)], || drop(vktest), t, "closing /dev/vktest under the storm")
        .await?;
    let took = began.elapsed();
    let counts = tokio::task::spawn_blocking(move || storm.stop())
        .await
        .map_err(|e| anyhow!("storm stop task failed: {e}"))??;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let each: Vec<String> = counts.iter().map(|(name, n)| format!("{name} {n}")).collect();
    diag(format!(
        "eventfd storm: {total} writes in {:.1} s ({}); its threads joined",
        took.as_secs_f64(),
        each.join(", ")
    ));
    let h2g_ns = opts.h2g_ns();
    close_and_wait(
        &[(Some(&h2g_ns), pair.h2g_index)],
        || drop((vhost, tap, efds)),
        t,
        "closing the vhost fd and the TAP",
    )
    .await
}

// ------------------------------------------------------- ioctl race attach

/// One ioctl the race hammers (`q`: the queue index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// VHOST_SET_FEATURES with the wiring's set.
    SetFeatures,
    /// VHOST_SET_FEATURES with the wiring's set and VHOST_F_LOG_ALL.
    SetFeaturesLogAll,
    GetFeatures,
    Kick(u32),
    Call(u32),
    /// VHOST_NET_SET_BACKEND with the rig's TAP.
    Backend(u32),
    Busyloop(u32),
    VringNum(u32),
    VringAddr(u32),
    SetOwner,
    ResetOwner,
    VkKick(u32),
    VkCall(u32),
    /// VKTEST_SET_FEATURES with the wiring's whole set.
    VkSetFeatures,
}

/// A result as the race records it.
type Res = std::result::Result<(), Errno>;

impl Op {
    fn on_vktest(self) -> bool {
        matches!(self, Op::VkKick(_) | Op::VkCall(_) | Op::VkSetFeatures)
    }

    fn name(self) -> String {
        let (req, q) = match self {
            Op::SetFeatures => (ioctl::VHOST_SET_FEATURES, None),
            Op::SetFeaturesLogAll => return "VHOST_SET_FEATURES with VHOST_F_LOG_ALL".into(),
            Op::GetFeatures => (ioctl::VHOST_GET_FEATURES, None),
            Op::Kick(q) | Op::VkKick(q) => (ioctl::VHOST_SET_VRING_KICK, Some(q)),
            Op::Call(q) | Op::VkCall(q) => (ioctl::VHOST_SET_VRING_CALL, Some(q)),
            Op::Backend(q) => (ioctl::VHOST_NET_SET_BACKEND, Some(q)),
            Op::Busyloop(q) => (ioctl::VHOST_SET_VRING_BUSYLOOP_TIMEOUT, Some(q)),
            Op::VringNum(q) => (ioctl::VHOST_SET_VRING_NUM, Some(q)),
            Op::VringAddr(q) => (ioctl::VHOST_SET_VRING_ADDR, Some(q)),
            Op::SetOwner => (ioctl::VHOST_SET_OWNER, None),
            Op::ResetOwner => (ioctl::VHOST_RESET_OWNER, None),
            Op::VkSetFeatures => (ioctl::VKTEST_SET_FEATURES, None),
        };
        let node = if self.on_vktest() { "/dev/vktest" } else { "/dev/vhost-net-kernel" };
        match q {
            Some(q) => format!("{node} {} index {q}", ioctl::name(req)),
            None => format!("{node} {}", ioctl::name(req)),
        }
    }

    /// Make the call on the rig (same fds, TAP and feature set as the wiring).
    fn call(self, rig: &Rig, set: &FeatureSet) -> Res {
        let (v, k, e) = (&rig.vhost, &rig.vktest, &rig.efds);
        let r = match self {
            Op::SetFeatures => v.set_features(set.vhost_bits()),
            Op::SetFeaturesLogAll => v.set_features(set.vhost_bits() | VHOST_F_LOG_ALL),
            Op::GetFeatures => v.get_features().map(drop),
            Op::Kick(q) => v.set_vring_kick(q, e.kick[q as usize].as_fd()),
            Op::Call(q) => v.set_vring_call(q, e.call[q as usize].as_fd()),
            Op::Backend(q) => v.set_backend(q, rig.tap.as_fd()),
            Op::Busyloop(q) => v.set_vring_busyloop_timeout(q, BUSYLOOP_US),
            Op::VringNum(q) => v.set_vring_num(q, 256),
            Op::VringAddr(q) => v.set_vring_addr(&VhostVringAddr { index: q, ..Default::default() }),
            Op::SetOwner => v.set_owner(),
            Op::ResetOwner => v.reset_owner(),
            Op::VkKick(q) => k.set_vring_kick(q, e.kick[q as usize].as_fd()),
            Op::VkCall(q) => k.set_vring_call(q, e.call[q as usize].as_fd()),
            Op::VkSetFeatures => k.set_features(set.bits),
        };
        // An error without an errno cannot come from these wrappers.
        r.map_err(|e| errno_of(&e).unwrap_or(Errno::UnknownErrno))
    }

    /// What the call may give on the wired, not (yet) attached device. With
    /// `resets`, VHOST_RESET_OWNER runs among the calls: the device may
    /// then be unowned at any moment (owner-only calls EPERM, SET_OWNER ok).
    fn before(self, resets: bool) -> &'static [Res] {
        const OK: &[Res] = &[Ok(())];
        const OK_OR_EPERM: &[Res] = &[Ok(()), Err(Errno::EPERM)];
        match self {
            Op::GetFeatures | Op::VkKick(_) | Op::VkCall(_) | Op::VkSetFeatures => OK,
            Op::SetFeaturesLogAll if resets => &[Err(Errno::EOPNOTSUPP), Err(Errno::EPERM)],
            Op::SetFeaturesLogAll => &[Err(Errno::EOPNOTSUPP)],
            Op::VringNum(_) | Op::VringAddr(_) => &[Err(Errno::EPERM)],
            Op::SetOwner if resets => &[Ok(()), Err(Errno::EBUSY)],
            Op::SetOwner => &[Err(Errno::EBUSY)],
            Op::ResetOwner => OK_OR_EPERM,
            Op::SetFeatures | Op::Kick(_) | Op::Call(_) | Op::Backend(_) | Op::Busyloop(_) if resets => OK_OR_EPERM,
            Op::SetFeatures | Op::Kick(_) | Op::Call(_) | Op::Backend(_) | Op::Busyloop(_) => OK,
        }
    }

    /// What the call must give once the attach returned 0.
    fn after(self) -> Errno {
        if self.on_vktest() {
            Errno::EBUSY
        } else {
            Errno::EPERM
        }
    }
}

/// One recorded call: the global sequence numbers taken just before it
/// started and just after it returned, and its result.
#[derive(Debug, Clone, Copy)]
struct Call {
    op: Op,
    thread: usize,
    start: u64,
    end: u64,
    res: Res,
}

/// Where a call lies relative to the attach, by the sequence numbers
/// (taken with SeqCst, one total order for every thread): `Before` ended
/// before the attach started, `After` started after it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    Before,
    Overlap,
    After,
}

/// What the attach thread saw.
#[derive(Debug, Clone, Copy)]
struct AttachCall {
    start: u64,
    end: u64,
    res: Res,
}

impl AttachCall {
    fn when(&self, c: &Call) -> When {
        if c.end < self.start {
            When::Before
        } else if c.start > self.end {
            When::After
        } else {
            When::Overlap
        }
    }
}

fn show(r: Res) -> String {
    match r {
        Ok(()) => "0".into(),
        Err(e) => format!("{e}"),
    }
}

fn show_all(rs: &[Res]) -> String {
    rs.iter().map(|r| show(*r)).collect::<Vec<_>>().join(" or ")
}

/// The verdict on one call: None when the contract allows its result.
fn judge(c: &Call, attach: &AttachCall, resets: bool) -> Option<String> {
    let when = attach.when(c);
    let before = c.op.before(resets);
    let after: Res = Err(c.op.after());
    let (ok, want, pos) = match (attach.res.is_ok(), when) {
        // A failed attach took nothing: every call as before it.
        (false, _) => (before.contains(&c.res), show_all(before), "around a failed attach"),
        (true, When::Before) => (before.contains(&c.res), show_all(before), "ended before the attach started"),
        (true, When::After) => (c.res == after, show(after), "started after the attach returned"),
        (true, When::Overlap) => (
            before.contains(&c.res) || c.res == after,
            format!("{} or {}", show_all(before), show(after)),
            "overlapped the attach",
        ),
    };
    (!ok).then(|| {
        format!(
            "{} (thread {}, sequence {}..{}, attach {}..{}) {pos} and gave {}, expected {want}",
            c.op.name(),
            c.thread,
            c.start,
            c.end,
            attach.start,
            attach.end,
            show(c.res)
        )
    })
}

/// The calls of each hammering thread, in the order it makes them. Thread 0
/// is mostly VHOST_SET_FEATURES (the call that would swap the IOTLB of an
/// attached device), thread 1 every vhost call, thread 2 the vktest calls
/// between vhost ones; with `resets`, thread 1 also resets the owner.
fn thread_ops(resets: bool) -> Vec<Vec<Op>> {
    use Op::*;
    let mut all_vhost = vec![
        SetFeatures,
        Kick(0),
        Call(0),
        Backend(0),
        Busyloop(0),
        GetFeatures,
        SetFeaturesLogAll,
        Kick(1),
        Call(1),
        Backend(1),
        Busyloop(1),
        VringNum(0),
        VringAddr(1),
        SetOwner,
    ];
    if resets {
        all_vhost.push(ResetOwner);
    }
    vec![
        vec![SetFeatures, SetFeatures, SetFeaturesLogAll, SetFeatures, GetFeatures],
        all_vhost,
        vec![VkKick(0), Backend(1), VkCall(0), Kick(0), VkKick(1), Call(1), VkCall(1), Busyloop(0), VkSetFeatures],
    ]
}

/// One race on `rig`: the hammering threads start together with the
/// attach thread, which lets `lead` calls happen before it attaches; each
/// hammer stops after one whole pass over its calls that began after the
/// attach returned. Returns the attach and every call.
fn race(rig: &Rig, set: &FeatureSet, resets: bool, lead: u64) -> (AttachCall, Vec<Call>) {
    let seq = AtomicU64::new(1);
    // 0 until the attach returned; then its end's sequence number.
    let attach_end = AtomicU64::new(0);
    let ops = thread_ops(resets);
    let barrier = Barrier::new(ops.len() + 1);
    std::thread::scope(|s| {
        let hammers: Vec<_> = ops
            .iter()
            .enumerate()
            .map(|(thread, ops)| {
                let (seq, attach_end, barrier) = (&seq, &attach_end, &barrier);
                s.spawn(move || {
                    let mut calls = Vec::new();
                    barrier.wait();
                    loop {
                        let last_pass = attach_end.load(SeqCst) != 0;
                        for &op in ops {
                            let start = seq.fetch_add(1, SeqCst);
                            let res = op.call(rig, set);
                            let end = seq.fetch_add(1, SeqCst);
                            calls.push(Call { op, thread, start, end, res });
                        }
                        if last_pass {
                            return calls;
                        }
                    }
                })
            })
            .collect();
        barrier.wait();
        // Let the hammers get going (a different depth each round): waiting
        // on their progress, which the counter is.
        while seq.load(SeqCst) < lead {
            std::thread::yield_now();
        }
        let start = seq.fetch_add(1, SeqCst);
        let res = rig.attach().map_err(|e| errno_of(&e).unwrap_or(Errno::UnknownErrno));
        let end = seq.fetch_add(1, SeqCst);
        attach_end.store(end, SeqCst);
        let mut calls = Vec::new();
        for h in hammers {
            // A hammer cannot panic but through a bug of ours: pass it on.
            calls.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        (AttachCall { start, end, res }, calls)
    })
}

/// Calls per position relative to the attach, for the diagnostics.
#[derive(Default)]
struct Tally {
    before: u64,
    overlap: u64,
    after: u64,
    attached: u32,
    refused: Vec<String>,
}

impl Tally {
    fn add(&mut self, attach: &AttachCall, calls: &[Call]) {
        for c in calls {
            match attach.when(c) {
                When::Before => self.before += 1,
                When::Overlap => self.overlap += 1,
                When::After => self.after += 1,
            }
        }
    }
}

async fn ioctl_race_attach(serve: &ServeOpts, opts: &RunOpts, diag: &mut dyn FnMut(String)) -> Result<()> {
    let set = &serve.features;
    for (resets, rounds) in [(false, RACE_ROUNDS), (true, RESET_RACE_ROUNDS)] {
        let phase = if resets { "with VHOST_RESET_OWNER" } else { "without VHOST_RESET_OWNER" };
        let mut tally = Tally::default();
        for round in 1..=rounds {
            race_round(serve, set, resets, round, opts, &mut tally, diag)
                .await
                .with_context(|| format!("race round {round}/{rounds} {phase}"))?;
        }
        let refused = if tally.refused.is_empty() {
            String::new()
        } else {
            let mut r = tally.refused.clone();
            r.sort();
            r.dedup();
            format!("; refused attaches gave {} (then retried)", r.join(", "))
        };
        diag(format!(
            "{rounds} races {phase}: {} attached{refused}; calls {} before, {} overlapping, {} after the attach, \
             each as the contract allows",
            tally.attached, tally.before, tally.overlap, tally.after
        ));
    }
    Ok(())
}

async fn race_round(
    serve: &ServeOpts,
    set: &FeatureSet,
    resets: bool,
    round: u32,
    opts: &RunOpts,
    tally: &mut Tally,
    diag: &mut dyn FnMut(String),
) -> Result<()> {
    let t = opts.timeout;
    let vdpa_before = vdpa_devices()?;
    let rig = Rig::prepare(serve)?;
    let watch = NewLinkWatch::new().await?;
    // A different number of calls before the attach each round.
    let lead = u64::from(round % 5) * 24;
    let (rig, set2) = (Arc::new(rig), set.clone());
    let r2 = rig.clone();
    let (attach, calls) = tokio::task::spawn_blocking(move || race(&r2, &set2, resets, lead))
        .await
        .map_err(|e| anyhow!("race task failed: {e}"))?;
    let rig = Arc::try_unwrap(rig).map_err(|_| anyhow!("the race still holds the rig"))?;
    tally.add(&attach, &calls);
    let bad: Vec<String> = calls.iter().filter_map(|c| judge(c, &attach, resets)).collect();
    if !bad.is_empty() {
        let shown = bad.iter().take(10).cloned().collect::<Vec<_>>().join("; ");
        bail!("{} of {} calls broke the contract: {shown}", bad.len(), calls.len());
    }
    let g2h = match attach.res {
        Ok(()) => {
            tally.attached += 1;
            watch.virtio_net(t, "the virtio-net interface of the raced attach").await?
        }
        Err(e) if !resets => bail!("VKTEST_ATTACH_VHOST raced by the configuring ioctls failed: {e}"),
        Err(e) if [Errno::EPERM, Errno::EINVAL].contains(&e) => {
            tally.refused.push(format!("{e}"));
            // A failed attach leaves nothing, and can be retried once the
            // device is owned and wired again.
            let left: Vec<String> = vdpa_devices()?.difference(&vdpa_before).cloned().collect();
            anyhow::ensure!(left.is_empty(), "the attach failed with {e} but left vDPA device(s) {}", left.join(", "));
            rewire(&rig, set).context("wiring the vhost device again after the refused attach")?;
            let watch = NewLinkWatch::new().await?;
            rig.attach().with_context(|| format!("attach retried after one refused with {e}"))?;
            watch.virtio_net(t, "the virtio-net interface of the retried attach").await?
        }
        Err(e) => bail!("VKTEST_ATTACH_VHOST raced by VHOST_RESET_OWNER failed with {e}, expected 0, EPERM or EINVAL"),
    };
    if resets && attach.res.is_ok() {
        // Raced with resets, the attached device may lack what a reset
        // dropped (the contract does not promise traffic): it must go cleanly.
        let tap_idx = if_index(rig.tap.name())?;
        return close_and_wait(&[(None, g2h.index), (None, tap_idx)], || drop(rig), t, "closing the rig").await;
    }
    let pair = place_pair(&rig, &g2h, opts).await?;
    let (a, b) = verify_two_way(&pair, opts.count, opts.size, t)
        .await
        .context("traffic after the race (a racing call may have changed the attached device)")?;
    if round == 1 {
        diag(format!("after the race: h2g -> g2h {}; g2h -> h2g {}", a.summary(), b.summary()));
    }
    let gone = [(opts.h2g_ns(), pair.h2g_index), (opts.g2h_ns(), pair.g2h_index)];
    let gone: Vec<(Option<&str>, u32)> = gone.iter().map(|(n, i)| (Some(n.as_str()), *i)).collect();
    close_and_wait(&gone, || drop(rig), t, "closing the rig").await
}

/// Wire the vhost device as the serve flow does, after resets may have
/// dropped the owner and what it set (SET_OWNER may find it owned).
fn rewire(rig: &Rig, set: &FeatureSet) -> Result<()> {
    match rig.vhost.set_owner() {
        Err(e) if errno_of(&e) != Some(Errno::EBUSY) => return Err(e),
        _ => {}
    }
    for q in [RX_QUEUE, TX_QUEUE] {
        rig.vhost.set_vring_kick(q, rig.efds.kick[q as usize].as_fd())?;
        rig.vhost.set_vring_call(q, rig.efds.call[q as usize].as_fd())?;
    }
    rig.vhost.set_features(set.vhost_bits())?;
    for q in [RX_QUEUE, TX_QUEUE] {
        rig.vhost.set_backend(q, rig.tap.as_fd())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(op: Op, start: u64, end: u64, res: Res) -> Call {
        Call { op, thread: 0, start, end, res }
    }

    const ATTACHED: AttachCall = AttachCall { start: 10, end: 20, res: Ok(()) };

    #[test]
    fn calls_are_placed_by_their_sequence_numbers() {
        assert_eq!(ATTACHED.when(&call(Op::SetFeatures, 1, 9, Ok(()))), When::Before);
        assert_eq!(ATTACHED.when(&call(Op::SetFeatures, 9, 11, Ok(()))), When::Overlap);
        assert_eq!(ATTACHED.when(&call(Op::SetFeatures, 19, 21, Ok(()))), When::Overlap);
        assert_eq!(ATTACHED.when(&call(Op::SetFeatures, 21, 22, Ok(()))), When::After);
    }

    #[test]
    fn a_call_after_the_attach_must_be_refused() {
        let after = |op, res| judge(&call(op, 21, 22, res), &ATTACHED, false);
        assert!(after(Op::SetFeatures, Err(Errno::EPERM)).is_none());
        assert!(after(Op::VkSetFeatures, Err(Errno::EBUSY)).is_none());
        let bad = after(Op::SetFeatures, Ok(())).unwrap();
        assert!(bad.contains("VHOST_SET_FEATURES") && bad.contains("started after") && bad.contains("EPERM"), "{bad}");
        let bad = after(Op::VkKick(1), Err(Errno::EPERM)).unwrap();
        assert!(bad.contains("/dev/vktest VHOST_SET_VRING_KICK index 1") && bad.contains("expected EBUSY"), "{bad}");
        assert!(after(Op::SetOwner, Err(Errno::EBUSY)).is_some(), "SET_OWNER after the attach: EPERM");
    }

    #[test]
    fn before_and_overlapping_calls_get_the_pre_attach_contract() {
        let before = |op, res, resets| judge(&call(op, 1, 2, res), &ATTACHED, resets);
        assert!(before(Op::SetFeatures, Ok(()), false).is_none());
        assert!(before(Op::SetFeaturesLogAll, Err(Errno::EOPNOTSUPP), false).is_none());
        assert!(before(Op::SetFeaturesLogAll, Ok(()), false).is_some());
        assert!(before(Op::VringNum(0), Err(Errno::EPERM), false).is_none());
        assert!(before(Op::VringAddr(1), Ok(()), false).is_some());
        assert!(before(Op::SetOwner, Err(Errno::EBUSY), false).is_none());
        assert!(before(Op::Kick(0), Err(Errno::EPERM), false).is_some(), "owned: no EPERM");
        assert!(before(Op::Kick(0), Err(Errno::EPERM), true).is_none(), "a reset may have dropped the owner");
        assert!(before(Op::SetFeatures, Err(Errno::EPERM), false).is_some(), "no attach yet: no EPERM");
        let overlap = |op, res| judge(&call(op, 9, 11, res), &ATTACHED, false);
        assert!(overlap(Op::Backend(1), Ok(())).is_none());
        assert!(overlap(Op::Backend(1), Err(Errno::EPERM)).is_none());
        assert!(overlap(Op::Backend(1), Err(Errno::EBUSY)).is_some());
        assert!(overlap(Op::VkCall(0), Err(Errno::EBUSY)).is_none());
    }

    #[test]
    fn a_failed_attach_took_nothing() {
        let failed = AttachCall { res: Err(Errno::EPERM), ..ATTACHED };
        assert!(judge(&call(Op::Kick(0), 21, 22, Ok(())), &failed, true).is_none());
        assert!(judge(&call(Op::VkKick(0), 21, 22, Err(Errno::EBUSY)), &failed, true).is_some());
    }

    #[test]
    fn every_thread_makes_calls_on_both_queues_and_resets_only_when_asked() {
        let ops = thread_ops(false);
        assert_eq!(ops.len(), 3);
        assert!(ops.iter().flatten().all(|op| *op != Op::ResetOwner));
        assert!(thread_ops(true).iter().flatten().any(|op| *op == Op::ResetOwner));
        for op in [Op::Kick(1), Op::Call(0), Op::Backend(0), Op::Busyloop(1), Op::VkCall(1), Op::VkSetFeatures] {
            assert!(ops.iter().flatten().any(|o| *o == op), "{op:?}");
        }
    }
}
