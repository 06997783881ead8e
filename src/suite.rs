//! `run`: the whole suite as KTAP — attach checks, then the teardown
//! scenarios with two-way traffic and floods, with kernel-log health checks.

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv6Addr;
use std::os::fd::AsFd;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

use crate::attach::{run_attach_test, ATTACH_TESTS};
use crate::icmp::{ping, BackgroundPing, Control, PingOpts, PingStats, PingTarget, Replies};
use crate::kmsg::{kmemleak_find_leaks, kmemleak_unavailable, KmsgMonitor, KMSG_PATH, LEAK_CHECK};
use crate::ktap::{Ktap, Outcome, EXIT_ALL_SKIPPED};
use crate::net::{virtio_device_of, Landing, Link, LinkWatcher, Rtnl};
use crate::netns::{self, NetnsGuard};
use crate::races::{vdpa_devices, VDPA_DEVICES};
use crate::serve::closed_line;
use crate::serve::Interfaces;
use crate::vhost::{feature_names, node_exists, virtio_negotiated_features, FeatureSet, VHOST_NET_KERNEL_PATH};
use crate::vktest::VKTEST_PATH;

/// Address of the host end (the TAP, namespace h2g).
pub const H2G_ADDR: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0);
/// Address of the guest end (virtio-net, namespace g2h).
pub const G2H_ADDR: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Replies each flood direction must have received before a teardown starts.
pub const FLOOD_WARMUP_REPLIES: u64 = 20;

const VIRTIO_NET_DRIVER: &str = "/sys/bus/virtio/drivers/virtio_net";

/// The teardown scenarios (and the end check), in KTAP order after ATTACH_TESTS.
pub const SCENARIO_TESTS: &[&str] = &[
    "teardown_exit",
    "teardown_close_vktest_first",
    "teardown_unbind",
    "teardown_unbind_rebind",
    "traffic_vhost_net_hdr",
    "cleanup_no_leftovers",
];

/// The race scenarios added for the soak (after the original points, so
/// those keep their numbers).
pub const RACE_TESTS: &[&str] = &[
    "teardown_close_vhost_first",
    "teardown_close_both_reverse",
    "teardown_sigkill_mid_flood",
    "teardown_rebind_repeated",
    "attach_close_loop",
];

/// Every test point of `run`, in order.
pub fn all_tests() -> Vec<&'static str> {
    ATTACH_TESTS.iter().chain(SCENARIO_TESTS).chain(RACE_TESTS).copied().collect()
}

/// What `run --list` prints: every point `run` may report, the leak check
/// and the kernel-log check included.
pub fn list() -> Vec<&'static str> {
    let mut all = all_tests();
    all.extend([LEAK_CHECK, BETWEEN_POINTS]);
    all
}

/// The points `run --test NAME...` selects (all of them without a name), in
/// KTAP order; under a kmemleak kernel every pass ends with the leak check.
pub fn select(names: &[String], fake_device: bool) -> Result<Vec<&'static str>> {
    let all = list();
    for t in names {
        anyhow::ensure!(all.contains(&t.as_str()), "unknown test {t:?} (see --list)");
    }
    let mut selected: Vec<&str> = if names.is_empty() {
        all.into_iter().filter(|t| *t != LEAK_CHECK).collect()
    } else {
        all.into_iter().filter(|a| names.iter().any(|t| t == a)).collect()
    };
    if kmemleak_unavailable().is_none() && !fake_device && !selected.contains(&LEAK_CHECK) {
        selected.push(LEAK_CHECK);
    }
    Ok(selected)
}

#[derive(Debug, Clone)]
pub struct RunOpts {
    /// Prefix of the namespace names (`<prefix>h2g`, `<prefix>g2h`).
    pub ns_prefix: String,
    /// Limit of every wait (netlink events, child output/exit, replies).
    pub timeout: Duration,
    /// ICMPv6 data bytes per echo.
    pub size: usize,
    /// Adaptive echoes per direction.
    pub count: u32,
    /// Requests in flight per flood direction.
    pub flood_window: usize,
    /// Path of this program (to spawn `serve`).
    pub exe: String,
    /// Harness self-test: `serve --fake-device`; tests needing real devices skip.
    pub fake_device: bool,
    /// `serve --features SPEC` (None: serve's default, the RFC's set).
    pub features: Option<String>,
    /// The kernel log the monitor reads (normally /dev/kmsg).
    pub kmsg_path: String,
    /// Open/attach/close cycles of `attach_close_loop`.
    pub cycles: u32,
    /// Diagnostics `step: NAME` as a scenario reaches its steps (for tests
    /// that interrupt a run at a given step).
    pub progress: bool,
}

impl Default for RunOpts {
    fn default() -> Self {
        RunOpts {
            ns_prefix: String::new(),
            timeout: Duration::from_secs(15),
            size: 20000,
            count: 10,
            flood_window: 4,
            exe: "/proc/self/exe".into(),
            fake_device: false,
            features: None,
            kmsg_path: KMSG_PATH.into(),
            cycles: crate::races::DEFAULT_CYCLES,
            progress: false,
        }
    }
}

impl RunOpts {
    pub fn h2g_ns(&self) -> String {
        format!("{}h2g", self.ns_prefix)
    }
    pub fn g2h_ns(&self) -> String {
        format!("{}g2h", self.ns_prefix)
    }
}

/// Why nothing can run here, if so.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (CAP_NET_ADMIN and CAP_SYS_ADMIN needed)".into());
    }
    match (node_exists(VHOST_NET_KERNEL_PATH), node_exists(VKTEST_PATH)) {
        (true, true) => None,
        (false, true) => Some(format!("{VHOST_NET_KERNEL_PATH} missing (CONFIG_VHOST_KERNEL=y needed)")),
        (true, false) => Some(format!("{VKTEST_PATH} missing (CONFIG_VHOST_KERNEL_TEST=y needed)")),
        (false, false) => Some(format!(
            "{VHOST_NET_KERNEL_PATH} and {VKTEST_PATH} missing (CONFIG_VHOST_KERNEL=y and CONFIG_VHOST_KERNEL_TEST=y needed)"
        )),
    }
}

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

async fn ping_async(target: PingTarget, opts: PingOpts) -> Result<PingStats> {
    tokio::task::spawn_blocking(move || ping(&target, &opts, &Control::default()))
        .await
        .map_err(|e| anyhow!("ping task failed: {e}"))?
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
const H2G: &str = "h2g -> g2h";
const G2H: &str = "g2h -> h2g";

/// Judge a wait for flood flow in direction `dir`: `got` are the counters
/// when the wait ended, `verified` the verified replies counted from the
/// wait's start, `want` how many it waited for. Any corrupted reply fails
/// (corruption is never expected, not even during a teardown); a corrupted
/// reply never counts as flow.
fn judge_flow(dir: &str, got: Replies, verified: u64, want: u64, limit: Duration) -> Result<()> {
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
        for (dir, r) in [(H2G, self.h2g.stop()), (G2H, self.g2h.stop())] {
            match r {
                Ok(s) => {
                    out.summaries.push(format!("flood {dir}: {}", s.summary()));
                    if let Some(c) = s.corruption() {
                        out.corrupted.push(format!("{dir}: {c}"));
                    }
                }
                Err(e) => out.summaries.push(format!("flood {dir}: {e:#}")),
            }
        }
        out
    }
}

/// Stop `floods` (off the runtime: it joins threads) and print their
/// summaries; Err if a reply was corrupted.
async fn stop_floods(floods: Floods, diag: &mut dyn FnMut(String)) -> Result<()> {
    let stopped =
        tokio::task::spawn_blocking(move || floods.stop()).await.map_err(|e| anyhow!("flood stop task failed: {e}"))?;
    stopped.summaries.iter().cloned().for_each(&mut *diag);
    stopped.verdict()
}

/// `res`, failed also by the floods' `verdict`: a corrupted reply fails the
/// point even when everything else went well.
fn with_verdict<T>(res: Result<T>, verdict: Result<()>) -> Result<T> {
    match (res, verdict) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(c)) => Err(c),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => Err(e.context(format!("{c:#}"))),
    }
}

/// The serving child process (killed if dropped while still running). Its
/// stderr is collected and reported as diagnostics of the test point.
pub struct ServeChild {
    child: Child,
    stderr: Option<tokio::task::JoinHandle<Vec<String>>>,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    pub ifs: Interfaces,
}

impl ServeChild {
    pub async fn spawn(exe: &str, vhost_hdr: bool, fake: bool, limit: Duration) -> Result<Self> {
        let mut extra = Vec::new();
        if vhost_hdr {
            extra.push("--vhost-hdr".to_string());
        }
        if fake {
            extra.push("--fake-device".to_string());
        }
        Self::spawn_with(exe, &extra, limit).await
    }

    /// `exe serve --json --timeout N` followed by `extra` arguments.
    pub async fn spawn_with(exe: &str, extra: &[String], limit: Duration) -> Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.arg("serve").arg("--json").arg("--timeout").arg(limit.as_secs().max(1).to_string());
        cmd.args(extra);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).process_group(0);
        let parent = nix::unistd::getpid();
        // SAFETY: the hook runs between fork and exec, where only
        // async-signal-safe calls are allowed: prctl and getppid only.
        unsafe { cmd.pre_exec(move || die_with_parent(parent)) };
        let mut child = cmd.spawn().with_context(|| format!("spawn {exe} serve"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("serve child has no stdout"))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("serve child has no stderr"))?;
        let stderr = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut out = Vec::new();
            while let Ok(Some(l)) = lines.next_line().await {
                out.push(l);
            }
            out
        });
        let mut me = ServeChild {
            child,
            stderr: Some(stderr),
            stdout: BufReader::new(stdout).lines(),
            ifs: Interfaces::default(),
        };
        let wait = limit * 2;
        let line = tokio::select! {
            r = timeout(wait, me.stdout.next_line()) => match r {
                Ok(Ok(Some(l))) => Ok(l),
                Ok(Ok(None)) => Err(anyhow!("serve child closed stdout without printing its interfaces")),
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("read serve child's stdout")),
                Err(_) => Err(anyhow!("timed out after {:.0}s waiting for the serve child's interface line", wait.as_secs_f64())),
            },
            st = me.child.wait() => Err(anyhow!(
                "serve child exited ({}) before printing its interfaces",
                st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
            )),
        };
        let parsed = line.and_then(|l| Interfaces::parse_json(&l));
        match parsed {
            Ok(ifs) => {
                me.ifs = ifs;
                Ok(me)
            }
            Err(e) => {
                me.kill_and_wait(limit).await;
                let said = me.stderr_lines(limit).await;
                if said.is_empty() {
                    Err(e)
                } else {
                    Err(e.context(format!("serve child said: {}", said.join(" | "))))
                }
            }
        }
    }

    /// Everything the child wrote to stderr (call after it exited).
    pub async fn stderr_lines(&mut self, limit: Duration) -> Vec<String> {
        match self.stderr.take() {
            Some(h) => timeout(limit, h).await.ok().and_then(|r| r.ok()).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Wait for the next stdout line of the child (after its interface
    /// line) and check that it is `want`.
    pub async fn expect_line(&mut self, want: &str, limit: Duration) -> Result<()> {
        match timeout(limit, self.stdout.next_line()).await {
            Ok(Ok(Some(l))) if l == want => Ok(()),
            Ok(Ok(Some(l))) => bail!("serve child printed {l:?}, expected {want:?}"),
            Ok(Ok(None)) => bail!("serve child closed stdout while we waited for {want:?}"),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("read serve child's stdout")),
            Err(_) => {
                bail!("timed out after {:.0}s waiting for the serve child to print {want:?}", limit.as_secs_f64())
            }
        }
    }

    /// Signal the child, then wait for its `closed PATH` line.
    pub async fn close_on_signal(&mut self, sig: Signal, path: &str, limit: Duration) -> Result<()> {
        self.signal(sig)?;
        self.expect_line(&closed_line(path, true), limit).await.with_context(|| format!("after {sig}"))
    }

    /// SIGKILL and reap; the child must have died of that signal.
    pub async fn sigkill(&mut self, limit: Duration) -> Result<()> {
        use std::os::unix::process::ExitStatusExt;
        self.signal(Signal::SIGKILL)?;
        let st = timeout(limit, self.child.wait())
            .await
            .map_err(|_| anyhow!("serve child not reaped within {:.0}s of SIGKILL", limit.as_secs_f64()))?
            .context("wait for serve child")?;
        if st.signal() != Some(libc::SIGKILL) {
            bail!("serve child ended with {st}, not by SIGKILL");
        }
        Ok(())
    }

    pub fn signal(&self, sig: Signal) -> Result<()> {
        let pid = self.child.id().ok_or_else(|| anyhow!("serve child already reaped"))?;
        kill(Pid::from_raw(pid as i32), sig).with_context(|| format!("kill({pid}, {sig})"))
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn terminate(&mut self, limit: Duration) -> Result<()> {
        self.signal(Signal::SIGTERM)?;
        let st = timeout(limit, self.child.wait())
            .await
            .map_err(|_| anyhow!("serve child did not exit within {:.0}s of SIGTERM", limit.as_secs_f64()))?
            .context("wait for serve child")?;
        if !st.success() {
            bail!("serve child exited with {st}");
        }
        Ok(())
    }

    /// Cleanup after a failure: SIGKILL (if still running) and reap.
    pub async fn kill_and_wait(&mut self, limit: Duration) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.start_kill();
            let _ = timeout(limit, self.child.wait()).await;
        }
    }
}

/// In the forked child before exec: be SIGKILLed when the parent dies, so
/// that a SIGKILLed `run` does not leave its serving child holding the
/// devices and interfaces (its own process group spares it the parent's
/// group signals). The signal comes when the thread that forked exits: the
/// runtime's thread, which lives as long as the process. If the parent
/// died before the prctl, no signal will come: fail the exec instead.
fn die_with_parent(parent: nix::unistd::Pid) -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integers and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if nix::unistd::getppid() != parent {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// How long dropping a still running [`ServeChild`] waits for it to die.
const DROP_REAP_LIMIT: Duration = Duration::from_secs(10);

impl Drop for ServeChild {
    /// A run interrupted by a signal (or failing) drops its child: SIGKILL
    /// it and wait (bounded) for it to die, so that its interfaces are gone
    /// before the namespaces are deleted and no process is left behind.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let Some(pid) = self.child.id() else { return };
        let _ = self.child.start_kill();
        let _ = wait_pid_exit(pid as i32, DROP_REAP_LIMIT);
    }
}

/// Wait until process `pid` (our child) has exited, at most `limit`, and reap it.
fn wait_pid_exit(pid: i32, limit: Duration) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("pidfd_open({pid})"));
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => bail!("process {pid} still alive {:.0}s after SIGKILL", limit.as_secs_f64()),
        Ok(_) => {}
        Err(e) => return Err(e).with_context(|| format!("poll pidfd of {pid}")),
    }
    // Reap it (tokio may have done so already: ECHILD is fine).
    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    Ok(())
}

/// SIGTERM the child, wait for its clean exit, then for each (namespace,
/// ifindex, name) in `gone` the interface's removal (watchers are set up
/// before the signal, so no event is missed).
pub async fn terminate_and_wait_gone(
    child: &mut ServeChild,
    gone: &[(&str, u32, &str)],
    limit: Duration,
) -> Result<()> {
    end_and_wait_gone(child, gone, limit, false).await
}

/// As [`terminate_and_wait_gone`], with SIGKILL instead of SIGTERM if `kill`.
async fn end_and_wait_gone(
    child: &mut ServeChild,
    gone: &[(&str, u32, &str)],
    limit: Duration,
    kill: bool,
) -> Result<()> {
    let mut watchers = Vec::new();
    for (ns, idx, name) in gone {
        let w = LinkWatcher::new(Some(ns))?;
        // Already gone (e.g. removed while we were subscribing)?
        let present = Rtnl::new(Some(ns))?.links().await?.iter().any(|l| l.index == *idx);
        if present {
            watchers.push((w, *idx, *name, *ns));
        }
    }
    if kill {
        child.sigkill(limit).await?;
    } else {
        child.terminate(limit).await?;
    }
    let how = if kill { "was killed" } else { "exited" };
    for (mut w, idx, name, ns) in watchers {
        w.wait_del_link(idx, limit, &format!("{name} in namespace {ns} to go away after the serving process {how}"))
            .await?;
    }
    Ok(())
}

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

impl Teardown {
    fn needs_real_device(self) -> bool {
        matches!(self, Teardown::Unbind | Teardown::UnbindRebind | Teardown::RebindRepeated)
    }
}

fn write_sysfs(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("write {value:?} to {path}"))
}

/// Whether `name` looks like a virtio-net interface (its device is virtioN).
fn is_virtio_net(l: &Link) -> bool {
    !l.name.starts_with("vhostkernel") && virtio_device_of(&l.name).map(|d| d.starts_with("virtio")).unwrap_or(false)
}

/// The feature set a scenario's serve gets: `--features SET`, else the
/// RFC's. With the vhost-added header (a TAP without IFF_VNET_HDR) there is
/// nowhere to carry checksum/TSO metadata, so those bits are left out and
/// the rest of the set (what vhost-net itself implements) is kept.
fn features_for(set: Option<&str>, vhost_hdr: bool, diag: &mut dyn FnMut(String)) -> Result<FeatureSet> {
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
fn check_negotiated(dev: &str, asked: &FeatureSet, negotiated: u64) -> Result<()> {
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

/// Why an explicit `--features` set cannot run on this kernel (the kernel
/// says so: VKTEST_SET_FEATURES refused, vhost-net not offering it), if so.
/// The RFC's set is never skipped: the series must do it.
fn feature_set_skip(set: &FeatureSet, opts: &RunOpts) -> Option<String> {
    if opts.fake_device || opts.features.is_none() || set.is_rfc() {
        return None;
    }
    crate::bench::probe_set(set).map(|why| format!("feature set {set} not supported here: {why}"))
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
    nsg.delete_all()?;
    check_no_leftovers(opts, &vdpa_before).await?;
    Ok(ready)
}

async fn scenario_body(
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn virtio_dev(ifs: &Interfaces) -> Result<&str> {
    anyhow::ensure!(!ifs.g2h_device.is_empty(), "no virtio device known for {}", ifs.g2h);
    Ok(&ifs.g2h_device)
}

/// Unbind virtio_net from `dev` and wait for interface `idx` of `ns` to go.
async fn unbind(dev: &str, ns: &str, idx: u32, name: &str, t: Duration) -> Result<()> {
    let mut w = LinkWatcher::new(Some(ns))?;
    write_sysfs(&format!("{VIRTIO_NET_DRIVER}/unbind"), dev)?;
    w.wait_del_link(idx, t, &format!("{name} to go away after unbinding virtio_net from {dev}")).await?;
    Ok(())
}

/// Unbind virtio_net from `dev`, bind it again, wait for the new interface,
/// place it into the g2h namespace and forget h2g's neighbours. Returns the
/// pair with the new g2h interface.
async fn unbind_rebind(
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
        .wait_new_link(&known, is_virtio_net, t, &format!("a virtio-net interface to appear after binding {dev}"))
        .await?;
    diag(format!("rebound: {dev} is back as {}", new.name));
    let new_idx = place(root, new.index, &new.name, &pair.g2h_ns, G2H_ADDR, t).await?;
    Rtnl::new(Some(&pair.h2g_ns))?.flush_neighbours(pair.h2g_index).await?;
    Ok(Pair { g2h_if: new.name.clone(), g2h_index: new_idx, ..pair.clone() })
}

/// Wait until both floods got `n` more verified replies than they have
/// now; fails at the first corrupted reply of either.
async fn wait_more_replies(floods: &Floods, n: u64, t: Duration) -> Result<()> {
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
static VDPA_AT_START: OnceLock<BTreeSet<String>> = OnceLock::new();

fn vdpa_at_start() -> Result<&'static BTreeSet<String>> {
    if let Some(v) = VDPA_AT_START.get() {
        return Ok(v);
    }
    let now = vdpa_devices()?;
    Ok(VDPA_AT_START.get_or_init(|| now))
}

/// What one test point gave: its outcome and, for a scenario, its time to ready.
type PointResult = Result<(Outcome, Option<Ready>)>;

async fn run_one(name: &str, opts: &RunOpts, diag: &mut dyn FnMut(String)) -> PointResult {
    vdpa_at_start()?;
    let teardown = match name {
        "teardown_exit" => Some((Teardown::Exit, false)),
        "teardown_close_vktest_first" => Some((Teardown::CloseVktestFirst, false)),
        "teardown_unbind" => Some((Teardown::Unbind, false)),
        "teardown_unbind_rebind" => Some((Teardown::UnbindRebind, false)),
        "traffic_vhost_net_hdr" => Some((Teardown::Exit, true)),
        "teardown_close_vhost_first" => Some((Teardown::CloseVhostFirst, false)),
        "teardown_close_both_reverse" => Some((Teardown::CloseBothReverse, false)),
        "teardown_sigkill_mid_flood" => Some((Teardown::SigkillMidFlood, false)),
        "teardown_rebind_repeated" => Some((Teardown::RebindRepeated, false)),
        _ => None,
    };
    if let Some((kind, hdr)) = teardown {
        if opts.fake_device && (hdr || kind.needs_real_device()) {
            return Ok((Outcome::Skip("needs the real virtio device (--fake-device)".into()), None));
        }
        let set = features_for(opts.features.as_deref(), hdr, diag)?;
        if let Some(why) = feature_set_skip(&set, opts) {
            return Ok((Outcome::Skip(why), None));
        }
        let ready = scenario(kind, hdr, &set, opts, diag).await?;
        return Ok((Outcome::Pass, Some(ready)));
    }
    let outcome = match name {
        "attach_close_loop" if opts.fake_device => {
            Outcome::Skip("needs /dev/vhost-net-kernel and /dev/vktest (--fake-device)".into())
        }
        "attach_close_loop" => {
            crate::races::attach_close_loop(opts.cycles, opts.timeout, diag).await?;
            Outcome::Pass
        }
        "cleanup_no_leftovers" => {
            check_no_leftovers(opts, vdpa_at_start()?).await?;
            Outcome::Pass
        }
        LEAK_CHECK => leak_check(diag).await?,
        _ if ATTACH_TESTS.contains(&name) && opts.fake_device => {
            Outcome::Skip("needs /dev/vhost-net-kernel and /dev/vktest (--fake-device)".into())
        }
        _ if ATTACH_TESTS.contains(&name) => run_attach_test(name, opts.timeout).await?,
        _ => bail!("unknown test {name}"),
    };
    Ok((outcome, None))
}

/// The end-of-pass leak check: kmemleak's verdict on everything allocated
/// before it (see [`kmemleak_find_leaks`]); fails with its report.
pub async fn leak_check(diag: &mut dyn FnMut(String)) -> Result<Outcome> {
    if let Some(reason) = kmemleak_unavailable() {
        return Ok(Outcome::Skip(reason));
    }
    let report =
        tokio::task::spawn_blocking(kmemleak_find_leaks).await.map_err(|e| anyhow!("kmemleak task failed: {e}"))??;
    if report.is_empty() {
        return Ok(Outcome::Pass);
    }
    let objects = report.iter().filter(|l| l.starts_with("unreferenced object")).count();
    diag(format!("kmemleak: {objects} unreferenced object(s); its report:"));
    report.into_iter().take(60).for_each(diag);
    Ok(Outcome::Fail)
}

fn min_median_max(mut v: Vec<Duration>) -> Option<(Duration, Duration, Duration)> {
    v.sort();
    Some((*v.first()?, v[v.len() / 2], *v.last()?))
}

/// Guest-clock timings of a pass (Instant is CLOCK_MONOTONIC: inside a VM,
/// the guest's time).
#[derive(Default)]
struct Timings {
    started: Option<Instant>,
    points: usize,
    ready: Vec<Ready>,
}

impl Timings {
    fn start() -> Self {
        Timings { started: Some(Instant::now()), ..Default::default() }
    }

    /// `timing: N points in X s; time to ready min/median/max ...`
    fn summary(&self) -> String {
        let total = self.started.map(|s| s.elapsed()).unwrap_or_default();
        let mut line = format!("timing: {} points in {:.2} s (guest clock)", self.points, total.as_secs_f64());
        let spawn: Vec<Duration> = self.ready.iter().map(|r| r.from_spawn).collect();
        let flow: Vec<Duration> = self.ready.iter().filter_map(|r| r.from_flow).collect();
        for (what, v) in [("time to ready", spawn), ("from the serve flow's start", flow)] {
            if let Some((lo, mid, hi)) = min_median_max(v) {
                line += &format!("; {what} min/median/max {:.1}/{:.1}/{:.1} ms", ms(lo), ms(mid), ms(hi));
            }
        }
        if !self.ready.is_empty() {
            line += &format!(" over {} scenarios", self.ready.len());
        }
        line
    }
}

/// Remove namespaces with our names left by a killed run.
pub fn remove_stale_namespaces(opts: &RunOpts, k: &mut Ktap<impl std::io::Write>) -> Result<()> {
    for ns in [opts.h2g_ns(), opts.g2h_ns()] {
        if netns::exists(&ns) {
            netns::delete(&ns).with_context(|| format!("remove stale namespace {ns}"))?;
            k.diag(&format!("removed stale namespace {ns}"));
        }
    }
    Ok(())
}

/// Name of the last test point of a pass when the kernel log is watched: it
/// judges every record logged outside the points' own windows (between one
/// point's end marker and the next one's start marker, before the first and
/// after the last point).
pub const BETWEEN_POINTS: &str = "kernel_log_between_points";

/// Where the kernel health of a test point comes from (the /dev/kmsg
/// monitor; a scripted log in unit tests). Positions count records from
/// the start of the watch.
pub trait KernelLog {
    /// Write a marker tagged `tag` and wait until the reader has seen it:
    /// Ok(the position after the marker). Err(the position read so far, why
    /// the marker was not seen) when that fails.
    fn sync(&self, tag: &str, limit: Duration) -> std::result::Result<usize, (usize, String)>;
    /// The report lines (with context) among the records `from..to`, and
    /// why that range may be incomplete (records lost before they were read).
    fn reports(&self, from: usize, to: usize) -> (Vec<String>, Option<String>);
}

impl KernelLog for KmsgMonitor {
    fn sync(&self, tag: &str, limit: Duration) -> std::result::Result<usize, (usize, String)> {
        KmsgMonitor::sync(self, tag, limit).map_err(|e| (self.position(), format!("{e:#}")))
    }

    fn reports(&self, from: usize, to: usize) -> (Vec<String>, Option<String>) {
        KmsgMonitor::reports(self, from, to)
    }
}

/// What the kernel log said about one window: nothing, less than all of it
/// (the check is incomplete), or a report. Either of the last two fails the
/// point that owns the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogVerdict {
    Clean,
    Incomplete,
    Report,
}

/// A test point's window, opened by [`LogAccount::begin`].
pub struct Window {
    start: usize,
    /// Why the start marker was not seen, if so.
    incomplete: Option<String>,
}

/// The kernel log of one pass, record by record: each record goes to the
/// window of the test point during which it was logged, or to the ranges
/// between windows that [`BETWEEN_POINTS`] judges. The windows and ranges
/// are contiguous, so nothing is left unexamined; a marker that is not seen
/// ends a window at what was read so far and makes its check incomplete.
pub struct LogAccount<'a> {
    log: &'a dyn KernelLog,
    limit: Duration,
    /// Every record before this position belongs to a window or a range.
    assigned: usize,
    /// Ranges between windows, for [`BETWEEN_POINTS`].
    between: Vec<(usize, usize)>,
    /// Whether a window was opened in this pass.
    points: bool,
}

impl<'a> LogAccount<'a> {
    /// The account of a pass that starts at position `from` (0: the start
    /// of the watch; else where the previous pass's account ended).
    pub fn new(log: &'a dyn KernelLog, from: usize, limit: Duration) -> Self {
        LogAccount { log, limit, assigned: from, between: Vec::new(), points: false }
    }

    /// Where the account ends so far (the start of the next pass's).
    pub fn position(&self) -> usize {
        self.assigned
    }

    /// Sync on a marker: the position after it (or what was read so far)
    /// and why the marker was not seen. Never before what is assigned.
    fn sync(&mut self, tag: &str, what: &str) -> (usize, Option<String>) {
        let (pos, why) = match self.log.sync(tag, self.limit) {
            Ok(p) => (p, None),
            Err((p, e)) => (p, Some(format!("{what} marker not seen: {e}"))),
        };
        (pos.max(self.assigned), why)
    }

    /// Open the window of a test point: what was logged since the last
    /// window goes to the ranges between points.
    pub fn begin(&mut self, tag: &str) -> Window {
        let (pos, incomplete) = self.sync(tag, "start");
        self.between.push((self.assigned, pos));
        self.assigned = pos;
        self.points = true;
        Window { start: pos, incomplete }
    }

    /// Close the window of test point `name` and judge it on `k`: quote any
    /// report, say why the check is incomplete if it is.
    pub fn end<W: std::io::Write>(&mut self, k: &mut Ktap<W>, name: &str, w: Window, tag: &str) -> LogVerdict {
        let (end, why_end) = self.sync(tag, "end");
        let end = end.max(w.start);
        let (splats, lost) = self.log.reports(w.start, end);
        self.assigned = end;
        let incomplete: Vec<String> = [w.incomplete, why_end, lost].into_iter().flatten().collect();
        quote_kernel_reports(k, name, &incomplete, &splats)
    }

    /// The [`BETWEEN_POINTS`] check that ends the pass: a last marker, then
    /// every range between windows, reported on `k` as a test point.
    pub fn between_points<W: std::io::Write>(&mut self, k: &mut Ktap<W>, tag: &str) -> LogVerdict {
        let (end, why) = self.sync(tag, "end-of-pass");
        self.between.push((self.assigned, end));
        self.assigned = end;
        let mut incomplete: Vec<String> = why.into_iter().collect();
        let mut splats = Vec::new();
        for &(from, to) in &self.between {
            let (s, lost) = self.log.reports(from, to);
            splats.extend(s);
            incomplete.extend(lost);
        }
        self.between.clear();
        let verdict = quote_kernel_reports(k, "the time between test points", &incomplete, &splats);
        let outcome = match verdict {
            LogVerdict::Clean if !self.points => {
                Outcome::Skip("no test point ran (the kernel log between them was clean)".into())
            }
            LogVerdict::Clean => Outcome::Pass,
            LogVerdict::Incomplete | LogVerdict::Report => Outcome::Fail,
        };
        k.result(BETWEEN_POINTS, &outcome);
        verdict
    }
}

/// Why a pass over the test points stopped early.
const STOPPED_AFTER_REPORT: &str = "not run: stopped after a kernel report";

/// Run `tests` once, reporting each on `k`, then (when the kernel log is
/// watched) [`BETWEEN_POINTS`]. Kernel markers are tagged with `tag` and
/// the point's number; `from` is where this pass's kernel log starts and is
/// moved to where it ends. With `stop_on_report`, the first point during
/// which the kernel logged a report ends the pass: the remaining points are
/// reported as skipped. Returns the name of that point, if any.
#[allow(clippy::too_many_arguments)]
async fn run_points<W: std::io::Write>(
    k: &mut Ktap<W>,
    tests: &[&str],
    opts: &RunOpts,
    kmsg: Option<&dyn KernelLog>,
    from: &mut usize,
    tag: &str,
    stop_on_report: bool,
    timings: &mut Timings,
) -> Option<String> {
    let mut reported = None;
    let mut account = kmsg.map(|m| LogAccount::new(m, *from, opts.timeout));
    for (i, t) in tests.iter().enumerate() {
        if reported.is_some() {
            k.result(t, &Outcome::Skip(STOPPED_AFTER_REPORT.into()));
            continue;
        }
        let window = account.as_mut().map(|a| a.begin(&format!("start-{tag}{}", i + 1)));
        let began = Instant::now();
        let mut outcome = match run_one(t, opts, &mut |d: String| k.diag(&d)).await {
            Ok((o, ready)) => {
                timings.ready.extend(ready);
                o
            }
            Err(e) => {
                k.diag(&format!("{t}: {e:#}"));
                Outcome::Fail
            }
        };
        k.diag(&format!("{t}: {:.3} s", began.elapsed().as_secs_f64()));
        timings.points += 1;
        // A leak found by the leak check is a kernel report even when the
        // kernel log is not monitored.
        let mut report = *t == LEAK_CHECK && outcome == Outcome::Fail;
        if let (Some(a), Some(w)) = (account.as_mut(), window) {
            match a.end(k, t, w, &format!("end-{tag}{}", i + 1)) {
                LogVerdict::Clean => {}
                LogVerdict::Incomplete => outcome = Outcome::Fail,
                LogVerdict::Report => {
                    outcome = Outcome::Fail;
                    report = true;
                }
            }
        }
        if report && stop_on_report {
            reported = Some(t.to_string());
        }
        k.result(t, &outcome);
    }
    if let Some(a) = account.as_mut() {
        if a.between_points(k, &format!("end-{tag}pass")) == LogVerdict::Report && reported.is_none() {
            reported = Some(BETWEEN_POINTS.to_string());
        }
        *from = a.position();
    }
    reported
}

/// Judge what the kernel logged during test point `name`: quote every
/// report, say why the log could not be read whole. Either fails the point.
pub(crate) fn quote_kernel_reports<W: std::io::Write>(
    k: &mut Ktap<W>,
    name: &str,
    incomplete: &[String],
    splats: &[String],
) -> LogVerdict {
    for e in incomplete {
        k.diag(&format!("kernel log check of {name} incomplete: {e}"));
    }
    if !splats.is_empty() {
        k.diag(&format!("kernel reported a problem during {name}:"));
        for l in splats {
            k.diag(l);
        }
        return LogVerdict::Report;
    }
    if incomplete.is_empty() {
        LogVerdict::Clean
    } else {
        LogVerdict::Incomplete
    }
}

/// Why a run stops before its first test point.
pub(crate) enum NotRun {
    /// Nothing can run here (exit 4, every point skipped with the reason).
    Skip(String),
    /// Something is wrong with the machine (exit 1, `Bail out!`).
    Fail(String),
}

/// Start watching the kernel log at `path` (empty: not watched, as asked by
/// `--no-kernel-log`). Err when it cannot be read: a run that cannot see a
/// KASAN, lockdep or leak report must not pass.
pub fn watch_kernel_log<W: std::io::Write>(
    path: &str,
    k: &mut Ktap<W>,
) -> std::result::Result<Option<KmsgMonitor>, String> {
    if path.is_empty() {
        k.diag("kernel log not watched (--no-kernel-log): kernel reports go unnoticed");
        return Ok(None);
    }
    KmsgMonitor::start_at(path).map(Some).map_err(|e| {
        format!(
            "cannot watch the kernel log: {e:#}; kernel reports (KASAN, lockdep, WARN, leaks) would go unnoticed \
             (needs root and a readable {KMSG_PATH}; --no-kernel-log runs without it)"
        )
    })
}

/// Stop a run that cannot start: `Bail out!` (exit 1) or every point skipped
/// (exit 4), through `skip_all`.
pub(crate) fn report_not_run<W: std::io::Write>(
    k: &mut Ktap<W>,
    why: NotRun,
    skip_all: impl FnOnce(&mut Ktap<W>, &str),
) -> i32 {
    match why {
        NotRun::Fail(reason) => {
            k.bail_out(&reason);
            k.totals();
            crate::ktap::EXIT_FAIL
        }
        NotRun::Skip(reason) => {
            k.diag(&reason);
            skip_all(k, &reason);
            k.totals();
            EXIT_ALL_SKIPPED
        }
    }
}

/// First diagnostic of a `--fake-device` run.
pub const FAKE_DEVICE_NOTE: &str = "fake device: two TAPs bridged in user space stand in for \
/dev/vhost-net-kernel + /dev/vktest; no kernel feature is tested (result names end in _fake_device)";

/// Suffix of every result name of a `--fake-device` run.
pub const FAKE_DEVICE_SUFFIX: &str = "_fake_device";

/// What every run does before its first test point: say why nothing can run,
/// remove stale namespaces, start the kernel log monitor.
fn prepare_run<W: std::io::Write>(
    tests: &[&str],
    opts: &RunOpts,
    k: &mut Ktap<W>,
) -> std::result::Result<Option<KmsgMonitor>, NotRun> {
    if opts.fake_device {
        k.diag(FAKE_DEVICE_NOTE);
        k.mark_names(FAKE_DEVICE_SUFFIX);
    }
    if let Some(reason) = skip_reason().filter(|_| !opts.fake_device) {
        return Err(NotRun::Skip(reason));
    }
    if tests.iter().any(|t| SCENARIO_TESTS.contains(t) || RACE_TESTS.contains(t)) {
        if let Err(e) = remove_stale_namespaces(opts, k) {
            k.diag(&format!("{e:#}"));
        }
    }
    if tests.contains(&LEAK_CHECK) {
        leak_baseline(k);
    }
    watch_kernel_log(&opts.kmsg_path, k).map_err(NotRun::Fail)
}

/// Before a run whose passes end with the leak check: let kmemleak report
/// (and then forget) what leaked before the run, so that the check blames
/// the run only for its own leaks.
pub fn leak_baseline<W: std::io::Write>(k: &mut Ktap<W>) {
    if kmemleak_unavailable().is_some() {
        return;
    }
    let began = Instant::now();
    match kmemleak_find_leaks() {
        Ok(before) => {
            let objects = before.iter().filter(|l| l.starts_with("unreferenced object")).count();
            k.diag(&format!(
                "kmemleak baseline in {:.1} s: {objects} earlier leak(s) set aside",
                began.elapsed().as_secs_f64()
            ));
            before.iter().take(20).for_each(|l| k.diag(l));
        }
        Err(e) => k.diag(&format!("kmemleak baseline failed: {e:#}")),
    }
}

/// The test points a pass reports: `tests` (without [`BETWEEN_POINTS`],
/// which a selection may name), then [`BETWEEN_POINTS`] when the kernel log
/// is watched (`kmsg_path` not empty). Returns (tests to run, all points).
pub fn pass_points<'a>(tests: &[&'a str], kmsg_path: &str) -> (Vec<&'a str>, Vec<&'a str>) {
    let run: Vec<&str> = tests.iter().copied().filter(|t| *t != BETWEEN_POINTS).collect();
    let mut all = run.clone();
    if !kmsg_path.is_empty() {
        all.push(BETWEEN_POINTS);
    }
    (run, all)
}

/// Run `tests` as KTAP on `out`; returns the exit code.
pub async fn run_tests(tests: &[&str], opts: &RunOpts, out: impl std::io::Write) -> i32 {
    let (tests, points) = pass_points(tests, &opts.kmsg_path);
    let mut k = Ktap::new(out);
    k.header(points.len());
    let kmsg = match prepare_run(&tests, opts, &mut k) {
        Ok(m) => m,
        Err(why) => {
            return report_not_run(&mut k, why, |k, reason| {
                for t in &points {
                    k.result(t, &Outcome::Skip(reason.to_string()));
                }
            })
        }
    };
    let mut timings = Timings::start();
    let log = kmsg.as_ref().map(|m| m as &dyn KernelLog);
    run_points(&mut k, &tests, opts, log, &mut 0, "", false, &mut timings).await;
    k.diag(&timings.summary());
    k.totals();
    k.exit_code()
}

/// `run --repeat N`: every test point `n` times in this process, each pass
/// a KTAP v1 subtest `iteration-K` (indented header, plan and results, then
/// `ok K iteration-K` at the top level, whose plan is `1..n`). The run stops
/// at the first kernel report: the rest of that pass and the remaining
/// iterations are reported as skipped. Exit codes as [`run_tests`].
pub async fn run_tests_repeated(tests: &[&str], opts: &RunOpts, n: usize, out: impl std::io::Write) -> i32 {
    let (tests, points) = pass_points(tests, &opts.kmsg_path);
    let mut k = Ktap::new(out);
    k.header(n);
    let kmsg = match prepare_run(&tests, opts, &mut k) {
        Ok(m) => m,
        Err(why) => {
            return report_not_run(&mut k, why, |k, reason| {
                for it in 1..=n {
                    let mut sub = k.nested();
                    sub.header(points.len());
                    for t in &points {
                        sub.result(t, &Outcome::Skip(reason.to_string()));
                    }
                    k.result(&format!("iteration-{it}"), &Outcome::Skip(reason.to_string()));
                }
            })
        }
    };
    repeat_points(&mut k, &tests, opts, n, kmsg.as_ref().map(|m| m as &dyn KernelLog)).await
}

/// The iterations of [`run_tests_repeated`] after its header and preparation.
async fn repeat_points<W: std::io::Write>(
    k: &mut Ktap<W>,
    tests: &[&str],
    opts: &RunOpts,
    n: usize,
    kmsg: Option<&dyn KernelLog>,
) -> i32 {
    let mut stopped: Option<(usize, String)> = None;
    let mut all = Timings::start();
    // Each pass's kernel log starts where the previous one's ended.
    let mut from = 0;
    for it in 1..=n {
        let name = format!("iteration-{it}");
        if let Some((at, _)) = &stopped {
            k.result(&name, &Outcome::Skip(format!("{STOPPED_AFTER_REPORT} in iteration {at}")));
            continue;
        }
        let mut sub = k.nested();
        sub.header(tests.len() + usize::from(kmsg.is_some()));
        let mut timings = Timings::start();
        let reported = run_points(&mut sub, tests, opts, kmsg, &mut from, &format!("{it}."), true, &mut timings).await;
        sub.diag(&timings.summary());
        all.points += timings.points;
        all.ready.extend(timings.ready);
        sub.totals();
        let outcome = sub.outcome("every test point skipped");
        if let Some(t) = reported {
            k.diag(&format!("stopping: the kernel reported a problem during {t} in iteration {it} (quoted above)"));
            stopped = Some((it, t));
        }
        k.result(&name, &outcome);
    }
    k.diag(&all.summary());
    k.totals();
    k.exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_names_unique_and_ordered() {
        let all = all_tests();
        let set: HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());
        assert_eq!(all[0], "attach_once");
        // The original points keep their numbers; the race scenarios follow.
        let n = ATTACH_TESTS.len() + SCENARIO_TESTS.len();
        assert_eq!(all[n - 1], "cleanup_no_leftovers");
        assert_eq!(all[n..], *RACE_TESTS);
    }

    /// A kernel log as the reader would collect it: each sync appends its
    /// marker, then the lines scripted to follow that marker.
    #[derive(Default)]
    struct ScriptedLog {
        records: std::cell::RefCell<Vec<String>>,
        /// (marker tag, line logged right after that marker).
        after: Vec<(&'static str, &'static str)>,
        /// Tags whose marker is never seen (the sync times out).
        unseen: Vec<&'static str>,
        /// Positions before which records were lost (EPIPE).
        lost: Vec<usize>,
        /// Tags synced, in order.
        tags: std::cell::RefCell<Vec<String>>,
    }

    const WARNING: &str = "WARNING: CPU: 0 PID: 1 at x.c:1 f";

    impl KernelLog for ScriptedLog {
        fn sync(&self, tag: &str, _limit: Duration) -> std::result::Result<usize, (usize, String)> {
            self.tags.borrow_mut().push(tag.to_string());
            let mut r = self.records.borrow_mut();
            let seen = !self.unseen.contains(&tag);
            if seen {
                r.push(format!("vhost-kernel-test: sync {tag} 1"));
            }
            let pos = r.len();
            r.extend(self.after.iter().filter(|(t, _)| *t == tag).map(|(_, l)| l.to_string()));
            if seen {
                Ok(pos)
            } else {
                Err((pos, format!("timed out waiting for marker {tag:?}")))
            }
        }
        fn reports(&self, from: usize, to: usize) -> (Vec<String>, Option<String>) {
            let r = self.records.borrow();
            let lost = self.lost.iter().any(|&p| from <= p && p < to).then(|| "records lost (EPIPE)".to_string());
            (crate::kmsg::find_splats(&r[from..to.min(r.len())], 25), lost)
        }
    }

    /// One pass of `tests` (they skip at once with --fake-device: no
    /// device, no root needed) against `log`: (exit code, KTAP without the
    /// timing lines).
    async fn one_pass(tests: &[&str], log: &ScriptedLog) -> (i32, String) {
        let opts = RunOpts { fake_device: true, ..Default::default() };
        let mut k = Ktap::new(Vec::new());
        k.header(tests.len() + 1);
        run_points(&mut k, tests, &opts, Some(log), &mut 0, "", false, &mut Timings::start()).await;
        let code = k.exit_code();
        let text = String::from_utf8(k.into_inner()).unwrap();
        (code, text.lines().filter(|l| !timed(l)).map(|l| format!("{l}\n")).collect())
    }

    /// A timing diagnostic (`# NAME: S s` or `# timing: ...`).
    fn timed(l: &str) -> bool {
        let d = l.trim_start().strip_prefix("# ").unwrap_or("");
        let duration = d.split_once(": ").and_then(|(_, v)| v.strip_suffix(" s")).map(|v| v.parse::<f64>().is_ok());
        d.starts_with("timing: ") || duration == Some(true)
    }

    const SKIP_FAKE: &str = "# SKIP needs /dev/vhost-net-kernel and /dev/vktest (--fake-device)";
    const TWO: [&str; 2] = ["attach_once", "vktest_kick_index2_einval"];

    #[tokio::test(flavor = "current_thread")]
    async fn clean_log_passes_the_between_check() {
        let log = ScriptedLog { after: vec![("end-2", "virtio_net virtio0 eth0: renamed")], ..Default::default() };
        let (code, text) = one_pass(&TWO, &log).await;
        assert_eq!(code, crate::ktap::EXIT_PASS, "{text}");
        assert!(text.ends_with(&format!("ok 3 {BETWEEN_POINTS}\n")), "{text}");
        assert_eq!(*log.tags.borrow(), ["start-1", "end-1", "start-2", "end-2", "end-pass"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn report_between_points_fails_the_between_check() {
        for (at, next) in [("end-1", "start-2"), ("end-2", "end-pass")] {
            // Logged right after a point's end marker: outside every window.
            let log = ScriptedLog { after: vec![(at, WARNING)], ..Default::default() };
            let (code, text) = one_pass(&TWO, &log).await;
            assert_eq!(code, crate::ktap::EXIT_FAIL, "{text}");
            let want = format!(
                "ok 1 attach_once {SKIP_FAKE}\nok 2 vktest_kick_index2_einval {SKIP_FAKE}\n\
                 # kernel reported a problem during the time between test points:\n# {WARNING}\n\
                 # vhost-kernel-test: sync {next} 1\n\
                 not ok 3 {BETWEEN_POINTS}\n"
            );
            assert_eq!(text, format!("KTAP version 1\n1..3\n{want}"), "after {at}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn report_inside_a_window_fails_that_point_only() {
        let log = ScriptedLog { after: vec![("start-2", WARNING)], ..Default::default() };
        let (_, text) = one_pass(&TWO, &log).await;
        assert!(
            text.contains(&format!(
                "# kernel reported a problem during vktest_kick_index2_einval:\n# {WARNING}\n\
                 # vhost-kernel-test: sync end-2 1\nnot ok 2 vktest_kick_index2_einval\n"
            )),
            "{text}"
        );
        assert!(text.ends_with(&format!("ok 3 {BETWEEN_POINTS}\n")), "{text}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn incomplete_end_fails_the_point() {
        let log = ScriptedLog { unseen: vec!["end-1"], ..Default::default() };
        let (code, text) = one_pass(&TWO, &log).await;
        assert_eq!(code, crate::ktap::EXIT_FAIL, "{text}");
        assert!(
            text.contains(
                "# kernel log check of attach_once incomplete: end marker not seen: timed out waiting for marker \"end-1\"\n\
                 not ok 1 attach_once\n"
            ),
            "{text}"
        );
        assert!(text.contains(&format!("ok 2 vktest_kick_index2_einval {SKIP_FAKE}\n")), "{text}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn failed_begin_fails_the_point() {
        let log = ScriptedLog { unseen: vec!["start-2"], ..Default::default() };
        let (code, text) = one_pass(&TWO, &log).await;
        assert_eq!(code, crate::ktap::EXIT_FAIL, "{text}");
        assert!(
            text.contains("# kernel log check of vktest_kick_index2_einval incomplete: start marker not seen"),
            "{text}"
        );
        assert!(text.contains("not ok 2 vktest_kick_index2_einval\n"), "{text}");
        assert!(text.contains(&format!("ok 1 attach_once {SKIP_FAKE}\n")), "{text}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lost_records_fail_the_window_that_holds_them() {
        // Records: 0 start-1, 1 end-1, 2 start-2, 3 end-2, 4 end-pass.
        // A gap before record 1 is inside point 1's window (1..2); one
        // before record 2 is between the points (2..3).
        for (gap, failed) in [(1, "not ok 1 attach_once\n"), (2, &*format!("not ok 3 {BETWEEN_POINTS}\n"))] {
            let log = ScriptedLog { lost: vec![gap], ..Default::default() };
            let (code, text) = one_pass(&TWO, &log).await;
            assert_eq!(code, crate::ktap::EXIT_FAIL, "{text}");
            assert!(text.contains("incomplete: records lost (EPIPE)"), "{text}");
            assert!(text.contains(failed), "gap {gap}: {text}");
        }
    }

    /// The real monitor's side of lost records: its reports over a range
    /// with a gap are incomplete (the reader's handling of EPIPE is tested
    /// in kmsg.rs).
    #[test]
    fn monitor_reports_lost_records_as_incomplete() {
        let (_, lost) = crate::kmsg::tests_support::monitor_with_gap().reports(0, 2);
        assert!(lost.is_some_and(|w| w.contains("EPIPE")));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn repeat_stops_at_the_first_kernel_report() {
        // A WARNING during the first point of the second pass.
        let log = ScriptedLog { after: vec![("start-2.1", WARNING)], ..Default::default() };
        let opts = RunOpts { fake_device: true, ..Default::default() };
        let mut k = Ktap::new(Vec::new());
        k.header(3);
        let code = repeat_points(&mut k, &TWO, &opts, 3, Some(&log)).await;
        assert_eq!(code, crate::ktap::EXIT_FAIL);
        let text = String::from_utf8(k.into_inner()).unwrap();
        // Timings vary: check their shape, then compare the rest exactly.
        // Points run: 2 in iteration 1, 1 in iteration 2; a summary per pass and one overall.
        assert_eq!(text.lines().filter(|l| timed(l)).count(), 2 + 1 + 1 + 1 + 1, "{text}");
        let text: String = text.lines().filter(|l| !timed(l)).map(|l| format!("{l}\n")).collect();
        let skip = SKIP_FAKE;
        let want = format!(
            "KTAP version 1\n1..3\n\
             \x20   KTAP version 1\n    1..3\n    ok 1 attach_once {skip}\n    ok 2 vktest_kick_index2_einval {skip}\n\
             \x20   ok 3 {BETWEEN_POINTS}\n\
             \x20   # Totals: pass:1 fail:0 xfail:0 xpass:0 skip:2 error:0\n\
             ok 1 iteration-1\n\
             \x20   KTAP version 1\n    1..3\n\
             \x20   # kernel reported a problem during attach_once:\n    # {WARNING}\n\
             \x20   # vhost-kernel-test: sync end-2.1 1\n\
             \x20   not ok 1 attach_once\n    ok 2 vktest_kick_index2_einval # SKIP {STOPPED_AFTER_REPORT}\n\
             \x20   ok 3 {BETWEEN_POINTS}\n\
             \x20   # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0\n\
             # stopping: the kernel reported a problem during attach_once in iteration 2 (quoted above)\n\
             not ok 2 iteration-2\n\
             ok 3 iteration-3 # SKIP {STOPPED_AFTER_REPORT} in iteration 2\n\
             # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0\n"
        );
        assert_eq!(text, want);
        // No test point ran after the report; each pass's log ends with its own check.
        let tags = log.tags.borrow();
        assert_eq!(
            *tags,
            ["start-1.1", "end-1.1", "start-1.2", "end-1.2", "end-1.pass", "start-2.1", "end-2.1", "end-2.pass"]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn each_pass_checks_the_log_since_the_previous_pass() {
        // Logged after the first pass's check: the second pass's check must see it.
        let log = ScriptedLog { after: vec![("end-1.pass", WARNING)], ..Default::default() };
        let opts = RunOpts { fake_device: true, ..Default::default() };
        let mut k = Ktap::new(Vec::new());
        k.header(2);
        let code = repeat_points(&mut k, &TWO, &opts, 2, Some(&log)).await;
        assert_eq!(code, crate::ktap::EXIT_FAIL);
        let text = String::from_utf8(k.into_inner()).unwrap();
        let quote =
            format!("    # {WARNING}\n    # vhost-kernel-test: sync start-2.1 1\n    not ok 3 {BETWEEN_POINTS}\n");
        assert!(text.contains(&quote), "{text}");
        assert!(text.contains("ok 1 iteration-1\n") && text.contains("not ok 2 iteration-2\n"), "{text}");
    }

    #[test]
    fn corrupted_flood_replies_fail_and_never_count_as_flow() {
        let t = Duration::from_secs(15);
        let r = |verified, corrupted| Replies { verified, corrupted };
        assert!(judge_flow(H2G, r(20, 0), 20, 20, t).is_ok());
        // Loss alone during a teardown: no verdict when nothing more is asked.
        assert!(judge_flow(H2G, r(3, 0), 3, 0, t).is_ok());
        let e = judge_flow(G2H, r(25, 2), 25, 20, t).unwrap_err().to_string();
        assert_eq!(e, "flood g2h -> h2g: 2 corrupted replies (data differs from the request's; 25 verified)");
        let e = judge_flow(H2G, r(19, 1), 19, 0, t).unwrap_err().to_string();
        assert!(e.starts_with("flood h2g -> g2h: 1 corrupted reply "), "{e}");
        // Counted from the wait's start: 30 verified overall, 5 of them new.
        let e = judge_flow(H2G, r(30, 0), 5, 20, t).unwrap_err().to_string();
        assert_eq!(e, "flood h2g -> g2h got 5 of 20 verified replies within 15s");
        let stopped = FloodsStopped { summaries: vec![], corrupted: vec![] };
        assert!(stopped.verdict().is_ok());
        let stopped = FloodsStopped { summaries: vec![], corrupted: vec![format!("{G2H}: 3 of 90 replies corrupted")] };
        let e = stopped.verdict().unwrap_err().to_string();
        assert_eq!(e, "corrupted flood replies: g2h -> h2g: 3 of 90 replies corrupted");
        // A corruption fails a point whose teardown went well, and is kept
        // next to another failure.
        assert!(with_verdict(Ok(1), Err(anyhow!("corrupted"))).is_err());
        let both = with_verdict::<()>(Err(anyhow!("teardown failed")), Err(anyhow!("corrupted"))).unwrap_err();
        assert_eq!(format!("{both:#}"), "corrupted: teardown failed");
        assert_eq!(with_verdict(Ok(1), Ok(())).unwrap(), 1);
    }

    #[test]
    fn negotiated_features_must_be_the_asked_set() {
        use crate::ioctl::{VIRTIO_F_ACCESS_PLATFORM, VIRTIO_NET_F_CSUM};
        let rfc = FeatureSet::rfc();
        let offloads = FeatureSet::offloads();
        assert!(check_negotiated("virtio0", &rfc, rfc.bits).is_ok());
        assert!(check_negotiated("virtio0", &offloads, offloads.bits).is_ok());
        // A kernel that ignored the set: virtio-net got the RFC's.
        let e = check_negotiated("virtio0", &offloads, rfc.bits).unwrap_err().to_string();
        assert_eq!(
            e,
            "virtio-net on virtio0 negotiated version_1,access_platform (0x300000000), not feature set offloads \
             (0x300009983): missing csum,guest_csum,guest_tso4,guest_tso6,host_tso4,host_tso6,mrg_rxbuf"
        );
        let e = check_negotiated("virtio1", &rfc, rfc.bits & !VIRTIO_F_ACCESS_PLATFORM).unwrap_err().to_string();
        assert!(e.ends_with(": missing access_platform"), "{e}");
        let e = check_negotiated("virtio1", &rfc, rfc.bits | VIRTIO_NET_F_CSUM).unwrap_err().to_string();
        assert!(e.ends_with(": not asked for csum"), "{e}");
    }

    #[test]
    fn scenario_feature_sets() {
        let mut said = Vec::new();
        let mut diag = |d: String| said.push(d);
        assert_eq!(features_for(None, false, &mut diag).unwrap(), FeatureSet::rfc());
        assert_eq!(features_for(None, true, &mut diag).unwrap(), FeatureSet::rfc());
        assert_eq!(features_for(Some("offloads"), false, &mut diag).unwrap(), FeatureSet::offloads());
        let hdr = features_for(Some("offloads"), true, &mut diag).unwrap();
        assert_eq!(hdr.name, "mrg_rxbuf");
        assert!(features_for(Some("bogus"), false, &mut diag).is_err());
        assert_eq!(said, ["feature set offloads without the TAP's vnet header: running with mrg_rxbuf"]);
        // Only an explicit set other than the RFC's may be skipped, and
        // never with the fake device.
        let opts = RunOpts::default();
        assert_eq!(feature_set_skip(&FeatureSet::rfc(), &opts), None);
        let fake = RunOpts { fake_device: true, features: Some("offloads".into()), ..Default::default() };
        assert_eq!(feature_set_skip(&FeatureSet::offloads(), &fake), None);
    }

    #[test]
    fn addresses() {
        assert_eq!(H2G_ADDR.to_string(), "fe80::");
        assert_eq!(G2H_ADDR.to_string(), "fe80::1");
    }
}
