//! Traffic between the two ends: placing the interfaces in their namespaces,
//! the verification echoes both ways, and the floods that run during a
//! teardown (loss allowed, corruption never).

use std::net::Ipv6Addr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::net::icmp::{ping, BackgroundPing, Control, PingOpts, PingStats, PingTarget, Replies};
use crate::net::{Landing, LinkWatcher, Rtnl};

/// Address of the host end (the TAP, namespace h2g).
pub const H2G_ADDR: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0);
/// Address of the guest end (virtio-net, namespace g2h).
pub const G2H_ADDR: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Replies each flood direction must have received before a teardown starts.
pub const FLOOD_WARMUP_REPLIES: u64 = 20;

/// Two interfaces placed in their namespaces with their addresses.
#[derive(Debug, Clone)]
pub struct Pair {
    pub h2g_ns: String,
    pub h2g_if: String,
    pub g2h_ns: String,
    pub g2h_if: String,
    /// ifindexes inside the namespaces.
    pub h2g_index: u32,
    pub g2h_index: u32,
}

impl Pair {
    fn target_from_h2g(&self) -> PingTarget {
        PingTarget { netns: Some(self.h2g_ns.clone()), iface: self.h2g_if.clone(), dst: G2H_ADDR, src: Some(H2G_ADDR) }
    }
    fn target_from_g2h(&self) -> PingTarget {
        PingTarget { netns: Some(self.g2h_ns.clone()), iface: self.g2h_if.clone(), dst: H2G_ADDR, src: Some(G2H_ADDR) }
    }
}

/// Move one interface into `ns`, give it `addr`, set it up, wait until usable.
pub async fn place(root: &Rtnl, index: u32, name: &str, ns: &str, addr: Ipv6Addr, limit: Duration) -> Result<u32> {
    let mut landing = Landing::new(ns)?;
    let idx = landing.receive(root, index, name, addr, limit).await?;
    landing.wait_usable(idx, addr, limit).await?;
    Ok(idx)
}

/// Place both ends (h2g gets fe80::0, g2h gets fe80::1), as for the vhost pair.
pub async fn setup_pair(
    root: &Rtnl,
    h2g: (u32, &str),
    g2h: (u32, &str),
    h2g_ns: &str,
    g2h_ns: &str,
    limit: Duration,
) -> Result<Pair> {
    let (mut a, mut b) = (Landing::new(h2g_ns)?, Landing::new(g2h_ns)?);
    // Both at once: one end's netlink round trips overlap the other's.
    let (i1, i2) = tokio::try_join!(
        a.receive(root, h2g.0, h2g.1, H2G_ADDR, limit),
        b.receive(root, g2h.0, g2h.1, G2H_ADDR, limit)
    )?;
    // Carrier needs both ends up, so wait only after both are up.
    tokio::try_join!(a.wait_usable(i1, H2G_ADDR, limit), b.wait_usable(i2, G2H_ADDR, limit))?;
    Ok(Pair {
        h2g_ns: h2g_ns.into(),
        h2g_if: h2g.1.into(),
        g2h_ns: g2h_ns.into(),
        g2h_if: g2h.1.into(),
        h2g_index: i1,
        g2h_index: i2,
    })
}

pub(crate) async fn ping_async(target: PingTarget, opts: PingOpts) -> Result<PingStats> {
    tokio::task::spawn_blocking(move || ping(&target, &opts, &Control::default()))
        .await
        .map_err(|e| anyhow!("ping task failed: {e}"))?
}

/// Run `close` (which closes what holds the interfaces of `gone`, each a
/// namespace and an ifindex there) and wait until they are gone; the
/// watchers subscribe before the close, so no removal can be missed.
pub async fn close_and_wait(gone: &[(Option<&str>, u32)], close: impl FnOnce(), t: Duration, what: &str) -> Result<()> {
    let mut watchers = Vec::new();
    for (ns, idx) in gone {
        watchers.push((LinkWatcher::new(*ns)?, *idx, ns.unwrap_or("(this one)")));
    }
    close();
    for (mut w, idx, ns) in watchers {
        w.wait_del_link(idx, t, &format!("interface {idx} of namespace {ns} to go away after {what}")).await?;
    }
    Ok(())
}

/// `count` adaptive echoes of `size` bytes each way; all must come back intact.
pub async fn verify_two_way(pair: &Pair, count: u32, size: usize, limit: Duration) -> Result<(PingStats, PingStats)> {
    let opts = PingOpts { count, size, timeout: limit.min(Duration::from_secs(5)), ..Default::default() };
    // g2h first: its neighbour solicitation also refreshes h2g's cache.
    let b = ping_async(pair.target_from_g2h(), opts.clone()).await?;
    let a = ping_async(pair.target_from_h2g(), opts).await?;
    let mut bad = Vec::new();
    for (dir, s) in [(H2G, &a), (G2H, &b)] {
        if !s.perfect() {
            let corrupted = s.corruption().map(|c| format!("{c}; ")).unwrap_or_default();
            bad.push(format!("{dir}: {corrupted}{}", s.summary()));
        }
    }
    if !bad.is_empty() {
        bail!("two-way traffic check failed: {}", bad.join("; "));
    }
    Ok((a, b))
}

/// Floods in both directions, stopped (and joined) on drop.
pub struct Floods {
    pub h2g: BackgroundPing,
    pub g2h: BackgroundPing,
}

pub fn start_floods(pair: &Pair, size: usize, window: usize) -> Floods {
    let opts = PingOpts {
        size,
        window,
        flood: Some(Duration::from_secs(24 * 3600)),
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
    Floods {
        h2g: BackgroundPing::start(pair.target_from_h2g(), opts.clone()),
        g2h: BackgroundPing::start(pair.target_from_g2h(), opts),
    }
}

/// The two flood directions, as the diagnostics name them.
pub(crate) const H2G: &str = "h2g -> g2h";
pub(crate) const G2H: &str = "g2h -> h2g";

/// Judge a wait for flood flow in direction `dir`: `got` are the counters
/// when the wait ended, `verified` the verified replies counted from the
/// wait's start, `want` how many it waited for. Any corrupted reply fails
/// (corruption is never expected, not even during a teardown); a corrupted
/// reply never counts as flow.
pub(crate) fn judge_flow(dir: &str, got: Replies, verified: u64, want: u64, limit: Duration) -> Result<()> {
    if got.corrupted > 0 {
        bail!(
            "flood {dir}: {} corrupted repl{} (data differs from the request's; {} verified)",
            got.corrupted,
            if got.corrupted == 1 { "y" } else { "ies" },
            got.verified
        );
    }
    if verified < want {
        bail!("flood {dir} got {verified} of {want} verified replies within {:.0}s", limit.as_secs_f64());
    }
    Ok(())
}

/// What stopping the floods gave: a summary per direction (diagnostics:
/// losses are expected during a teardown), and what was corrupted.
#[derive(Debug, Default)]
pub struct FloodsStopped {
    pub summaries: Vec<String>,
    /// One line per direction that got corrupted replies.
    pub corrupted: Vec<String>,
}

impl FloodsStopped {
    /// Err naming the directions that got corrupted replies, and how many.
    pub fn verdict(&self) -> Result<()> {
        if self.corrupted.is_empty() {
            Ok(())
        } else {
            bail!("corrupted flood replies: {}", self.corrupted.join("; "))
        }
    }
}

impl Floods {
    /// Block until both directions have `n` verified replies back (so the
    /// teardown really races with traffic in flight); fails at the first
    /// corrupted reply of either.
    pub fn wait_flowing(&self, n: u64, limit: Duration) -> Result<()> {
        for (dir, p) in [(H2G, &self.h2g), (G2H, &self.g2h)] {
            let got = p.wait_replies(n, limit);
            judge_flow(dir, got, got.verified, n, limit)?;
        }
        // The first direction may have got a corrupted reply meanwhile.
        for (dir, p) in [(H2G, &self.h2g), (G2H, &self.g2h)] {
            let got = p.control().counts();
            judge_flow(dir, got, got.verified, 0, limit)?;
        }
        Ok(())
    }

    /// Stop both and collect their summaries and corruption.
    pub fn stop(self) -> FloodsStopped {
        let mut out = FloodsStopped::default();
        let controls = [self.h2g.control(), self.g2h.control()];
        for ((dir, r), ctl) in [(H2G, self.h2g.stop()), (G2H, self.g2h.stop())].into_iter().zip(controls) {
            match r {
                Ok(s) => {
                    out.summaries.push(format!("flood {dir}: {}", s.summary()));
                    if let Some(c) = s.corruption() {
                        out.corrupted.push(format!("{dir}: {c}"));
                    }
                }
                // The thread's counters outlive its error: what it saw
                // corrupted before failing is still judged.
                Err(e) => {
                    out.summaries.push(format!("flood {dir}: {e:#}"));
                    let got = ctl.counts();
                    if got.corrupted > 0 {
                        out.corrupted.push(format!(
                            "{dir}: {} of {} replies corrupted before the flood failed",
                            got.corrupted,
                            got.corrupted + got.verified
                        ));
                    }
                }
            }
        }
        out
    }
}

/// Stop `floods` (off the runtime: it joins threads) and print their
/// summaries; Err if a reply was corrupted.
pub(crate) async fn stop_floods(floods: Floods, diag: &mut dyn FnMut(String)) -> Result<()> {
    let stopped =
        tokio::task::spawn_blocking(move || floods.stop()).await.map_err(|e| anyhow!("flood stop task failed: {e}"))?;
    stopped.summaries.iter().cloned().for_each(&mut *diag);
    stopped.verdict()
}

/// `res`, failed also by the floods' `verdict`: a corrupted reply fails the
/// point even when everything else went well.
pub(crate) fn with_verdict<T>(res: Result<T>, verdict: Result<()>) -> Result<T> {
    match (res, verdict) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(c)) => Err(c),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => Err(e.context(format!("{c:#}"))),
    }
}

/// The counters of a namespace's /proc/net/snmp6 that count packets the
/// stack received damaged and dropped. A reply corrupted so that its
/// checksum no longer matches never reaches the pinger's socket and would
/// pass as loss, which a teardown forgives; these counters make it a
/// failure. (Reassembly failures are not among them: a teardown loses
/// fragments.)
pub const DAMAGE_COUNTERS: &[&str] = &["Icmp6InCsumErrors", "Ip6InTruncatedPkts"];

/// The [`DAMAGE_COUNTERS`] of an snmp6 file's text that are not zero.
pub fn damage_in(snmp6: &str) -> Vec<(String, u64)> {
    snmp6
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, value) = (f.next()?, f.next()?.parse::<u64>().ok()?);
            (DAMAGE_COUNTERS.contains(&name) && value > 0).then(|| (name.to_string(), value))
        })
        .collect()
}

/// Err naming the packets that arrived damaged in namespace `ns` since it
/// was created (its counters start at zero).
pub fn check_no_damage(ns: &str) -> Result<()> {
    let path = "/proc/thread-self/net/snmp6";
    let text = crate::sys::netns::run_in(Some(ns), || {
        std::fs::read_to_string(path).with_context(|| format!("read {path} in namespace {ns}"))
    })?;
    let damage = damage_in(&text);
    if damage.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = damage.iter().map(|(n, v)| format!("{n} {v}")).collect();
    bail!("packets arrived damaged in namespace {ns} and were dropped by the stack: {}", list.join(", "))
}
