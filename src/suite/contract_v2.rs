//! Test points for what series v2 (issue 12) adds to the contract and v1
//! lacks: the nodes need CAP_NET_ADMIN in the initial user namespace,
//! VHOST_GET_FEATURES offers only what VHOST_SET_FEATURES takes (no
//! VHOST_F_LOG_ALL), VKTEST_ATTACH_VHOST refuses ring features the two ends
//! disagree on, and a refused attach leaves nothing, so it can be retried.
//! On a v1 kernel all but `attach_retry_after_failure` fail: that is how
//! they show they can.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::os::fd::AsFd;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType};

use crate::net::{if_index, Rtnl};
use crate::report::ktap::Outcome;
use crate::serve::rig::{open_and_wire, Rig};
use crate::serve::ServeOpts;
use crate::sys::caps::{become_root_of_new_user_namespace, drop_capability, user_namespaces_available, CAP_NET_ADMIN};
use crate::sys::ioctl::{
    VHOST_F_LOG_ALL, VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::sys::netns::NetnsGuard;
use crate::sys::tap::{Tap, TAP_TEMPLATE};
use crate::sys::vhost::{
    feature_names, node_exists, VhostNetKernel, RFC_FEATURES, RX_QUEUE, TX_QUEUE, VHOST_NET_KERNEL_PATH, VHOST_NET_PATH,
};
use crate::sys::virtio::{vdpa_devices, VDPA_DEVICES};
use crate::sys::vktest::VKTEST_PATH;

use super::attach::{attach_and_close, expect_errno, vdpa_net_interface};
use super::{check_no_damage, close_and_wait, setup_pair, verify_two_way, RunOpts};

/// One test point of this file (its name, help line and place in the KTAP
/// order are in the registry, suite/registry.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V2Check {
    /// Both kernel nodes refuse an open by a process that gave up
    /// privilege as `Unprivileged` says (EPERM); /dev/vhost-net does not.
    OpenUnprivileged(Unprivileged),
    /// VHOST_GET_FEATURES offers no VHOST_F_LOG_ALL, and SET takes what GET offers.
    GetFeaturesNoLogAll,
    /// VKTEST_ATTACH_VHOST with ring features the two ends disagree on.
    RingFeaturesMismatch,
    /// A refused attach, the cause fixed on the same fds, the attach again.
    RetryAfter(Refusal),
}

impl V2Check {
    /// Whether the point uses the run's namespaces (stale ones are removed first).
    pub fn uses_namespaces(self) -> bool {
        matches!(self, V2Check::RetryAfter(_))
    }
}

/// How the helper process of the open checks gives up privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unprivileged {
    /// Not at all: the control, which must open everything.
    No,
    /// uid 0 with every capability but CAP_NET_ADMIN.
    NoCapNetAdmin,
    /// Root of a new user namespace (every capability there, none outside).
    UserNs,
}

impl Unprivileged {
    /// Its spelling on the `open-probe --as` command line.
    pub fn arg(self) -> &'static str {
        match self {
            Unprivileged::No => "root",
            Unprivileged::NoCapNetAdmin => "no-cap-net-admin",
            Unprivileged::UserNs => "user-ns",
        }
    }
}

impl std::str::FromStr for Unprivileged {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        [Unprivileged::No, Unprivileged::NoCapNetAdmin, Unprivileged::UserNs]
            .into_iter()
            .find(|u| u.arg() == s)
            .ok_or_else(|| anyhow!("unknown privilege {s:?} (root, no-cap-net-admin, user-ns)"))
    }
}

impl fmt::Display for Unprivileged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unprivileged::No => "root with every capability",
            Unprivileged::NoCapNetAdmin => "uid 0 without CAP_NET_ADMIN",
            Unprivileged::UserNs => "root of a new user namespace",
        })
    }
}

/// The attach that the retry points have refused first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// vhost acked VERSION_1 without ACCESS_PLATFORM (no IOTLB): v1 refuses
    /// it before taking the vhost device over.
    NoAccessPlatform,
    /// vhost acked MRG_RXBUF, vktest does not offer it: v2 refuses it,
    /// possibly after looking at (or taking) the vhost device.
    MrgRxbufMismatch,
}

/// What the probe line keys are called (see [`open_probe`]).
const KEY_BECOME: &str = "become";
const KEY_NET_ADMIN: &str = "net_admin";

/// The result of one step, as a probe line says it: `ok` or `errno N`.
fn said<T>(r: std::result::Result<T, Errno>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("errno {}", e as i32),
    }
}

/// The hidden `open-probe` subcommand, in a helper process of its own
/// (single-threaded: unshare(CLONE_NEWUSER) needs that): give up privilege
/// as `how` says, then try what needs CAP_NET_ADMIN in the initial user
/// namespace and open each of `paths` read-only. Returns one line per step,
/// `KEY<TAB>RESULT`: `become` (`ok` or `error: ...`, and nothing more on an
/// error), `net_admin` (setsockopt SO_SNDBUFFORCE, which needs exactly
/// that capability: it shows whether the process still has it), then
/// `open PATH` for each path; RESULT is `ok` or `errno N`.
pub fn open_probe(how: Unprivileged, paths: &[String]) -> Vec<String> {
    let became = match how {
        Unprivileged::No => Ok(()),
        Unprivileged::NoCapNetAdmin => drop_capability(CAP_NET_ADMIN),
        Unprivileged::UserNs => become_root_of_new_user_namespace(),
    };
    if let Err(e) = became {
        return vec![format!("{KEY_BECOME}\terror: {e:#}")];
    }
    let mut lines = vec![format!("{KEY_BECOME}\tok")];
    let force = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .and_then(|s| setsockopt(&s, sockopt::SndBufForce, &65536));
    lines.push(format!("{KEY_NET_ADMIN}\t{}", said(force)));
    for p in paths {
        let opened = std::fs::File::open(p).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)));
        lines.push(format!("open {p}\t{}", said(opened)));
    }
    lines
}

/// What a probe said of one step: Ok or its errno (Err(None): not an errno).
type Step = std::result::Result<(), Option<Errno>>;

/// The lines of [`open_probe`], by key.
fn parse_probe(out: &str) -> Result<BTreeMap<String, String>> {
    out.lines()
        .map(|l| l.split_once('\t').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("open-probe printed a line without a tab: {out:?}"))
}

fn step(lines: &BTreeMap<String, String>, key: &str) -> Result<Step> {
    let v = lines.get(key).ok_or_else(|| anyhow!("open-probe said nothing of {key:?}: {lines:?}"))?;
    if v == "ok" {
        return Ok(Ok(()));
    }
    Ok(Err(v.strip_prefix("errno ").and_then(|n| n.parse().ok()).map(Errno::from_raw)))
}

fn show(s: &Step) -> String {
    match s {
        Ok(()) => "succeeded".into(),
        Err(Some(e)) => format!("failed with {e}"),
        Err(None) => "failed without an errno".into(),
    }
}

/// Run `open-probe --as HOW PATHS` (this program, `exe`) and read what it
/// said. Its stdout is the pipe it reports on; it must exit 0 within `limit`.
async fn probe_child(
    exe: &str,
    how: Unprivileged,
    paths: &[&str],
    limit: Duration,
) -> Result<BTreeMap<String, String>> {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("open-probe").arg("--as").arg(how.arg()).args(paths);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let what = format!("`{exe} open-probe --as {}` ({how})", how.arg());
    let child = cmd.spawn().with_context(|| format!("spawn {what}"))?;
    // On a timeout the child is dropped, which kills it (kill_on_drop).
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("{what} did not exit within {:.0}s", limit.as_secs_f64()))?
        .with_context(|| format!("wait for {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let lines = parse_probe(&String::from_utf8_lossy(&out.stdout)).with_context(|| what.clone())?;
    match lines.get(KEY_BECOME).map(String::as_str) {
        Some("ok") => Ok(lines),
        other => bail!("{what} could not give up privilege: {}", other.unwrap_or("(said nothing)")),
    }
}

/// The interfaces (by index) of our namespace.
async fn link_indexes(root: &Rtnl) -> Result<BTreeSet<u32>> {
    Ok(root.links().await?.into_iter().map(|l| l.index).collect())
}

/// Err naming any vDPA device or interface that is not in the snapshots.
async fn nothing_new(root: &Rtnl, links: &BTreeSet<u32>, vdpa: &BTreeSet<String>, when: &str) -> Result<()> {
    let mut new: Vec<String> = root
        .links()
        .await?
        .into_iter()
        .filter(|l| !links.contains(&l.index))
        .map(|l| format!("interface {} (ifindex {})", l.name, l.index))
        .collect();
    new.extend(vdpa_devices()?.difference(vdpa).map(|d| format!("vDPA device {d} ({VDPA_DEVICES}/{d})")));
    if !new.is_empty() {
        bail!("{when}: {} appeared", new.join(", "));
    }
    Ok(())
}

/// `open_needs_cap_net_admin` and `open_needs_cap_net_admin_userns`: a
/// helper process that gave up privilege as `how` says opens both kernel
/// nodes (each must give EPERM) and /dev/vhost-net (must open: its rules
/// do not change). A control helper that keeps its privilege must open
/// everything, so the EPERMs are the nodes' doing; and the helper's own
/// SO_SNDBUFFORCE must give EPERM, so it really lacks the capability.
async fn open_unprivileged(how: Unprivileged, opts: &RunOpts) -> Result<Outcome> {
    if how == Unprivileged::UserNs && !user_namespaces_available() {
        return Ok(Outcome::Skip("kernel without user namespaces (CONFIG_USER_NS; no /proc/self/ns/user)".into()));
    }
    let limit = opts.timeout;
    let plain = node_exists(VHOST_NET_PATH);
    let mut paths = vec![VHOST_NET_KERNEL_PATH, VKTEST_PATH];
    if plain {
        paths.push(VHOST_NET_PATH);
    }
    let root = Rtnl::new(None)?;
    let (links, vdpa) = (link_indexes(&root).await?, vdpa_devices()?);

    let control = probe_child(&opts.exe, Unprivileged::No, &paths, limit).await?;
    for key in std::iter::once(KEY_NET_ADMIN.to_string()).chain(paths.iter().map(|p| format!("open {p}"))) {
        let s = step(&control, &key)?;
        if s.is_err() {
            bail!("the control helper ({}) cannot do it either: {key} {}", Unprivileged::No, show(&s));
        }
    }

    let got = probe_child(&opts.exe, how, &paths, limit).await?;
    let net_admin = step(&got, KEY_NET_ADMIN)?;
    if net_admin != Err(Some(Errno::EPERM)) {
        bail!(
            "the helper ({how}) still acts with CAP_NET_ADMIN: SO_SNDBUFFORCE {}, expected EPERM; \
             its opens would prove nothing",
            show(&net_admin)
        );
    }
    let mut wrong = Vec::new();
    for p in [VHOST_NET_KERNEL_PATH, VKTEST_PATH] {
        let s = step(&got, &format!("open {p}"))?;
        if s != Err(Some(Errno::EPERM)) {
            wrong.push(format!("open {p} by {how} {}, expected EPERM", show(&s)));
        }
    }
    if plain {
        let s = step(&got, &format!("open {VHOST_NET_PATH}"))?;
        if s.is_err() {
            wrong.push(format!("open {VHOST_NET_PATH} by {how} {}, expected it to open as before", show(&s)));
        }
    }
    if let Err(e) = nothing_new(&root, &links, &vdpa, "after the helpers' opens").await {
        wrong.push(format!("{e:#}"));
    }
    if !wrong.is_empty() {
        bail!("{}", wrong.join("; "));
    }
    Ok(Outcome::Pass)
}

/// `get_features_no_log_all`: a fresh kernel node does not offer
/// VHOST_F_LOG_ALL (it has no dirty log: its rings and buffers are kernel
/// memory); SET_FEATURES with it stays EOPNOTSUPP; and what GET offers, SET
/// takes whole (after SET_OWNER).
fn get_features_no_log_all(diag: &mut dyn FnMut(String)) -> Result<Outcome> {
    let v = VhostNetKernel::open()?;
    let offered = v.get_features()?;
    diag(format!("{VHOST_NET_KERNEL_PATH} offers {offered:#x} ({})", feature_names(offered).join(",")));
    let mut wrong = Vec::new();
    if offered & VHOST_F_LOG_ALL != 0 {
        wrong.push(format!("VHOST_GET_FEATURES offers VHOST_F_LOG_ALL (bit 26): {offered:#x}"));
    }
    v.set_owner()?;
    if let Err(e) = expect_errno(
        v.set_features(RFC_FEATURES | VHOST_F_LOG_ALL),
        Errno::EOPNOTSUPP,
        "VHOST_SET_FEATURES rfc|log_all",
    ) {
        wrong.push(format!("{e:#}"));
    }
    if let Err(e) = v.set_features(offered) {
        wrong.push(format!("SET takes less than GET offers: {e:#}"));
    }
    if !wrong.is_empty() {
        bail!("{}", wrong.join("; "));
    }
    Ok(Outcome::Pass)
}

/// The serve wiring with `vhost` acked on the vhost device and `vktest`
/// offered by vktest (VKTEST_SET_FEATURES, also for the RFC's set), a TAP as
/// both queues' backend; not attached.
fn rig_with(vhost: u64, vktest: u64) -> Result<Rig> {
    let (efds, vh, vk) = open_and_wire()?;
    vh.set_features(vhost)?;
    vk.set_features(vktest)?;
    let tap = Tap::create_vhost_backend_with(TAP_TEMPLATE, ServeOpts::default().tap_offload_flags())?;
    for q in [RX_QUEUE, TX_QUEUE] {
        vh.set_backend(q, tap.as_fd())?;
    }
    Ok(Rig { vhost: vh, vktest: vk, tap, efds })
}

/// One attach of `attach_ring_features_mismatch_einval`.
struct Case {
    what: &'static str,
    vhost: u64,
    vktest: u64,
    /// Refused with EINVAL (else it must attach).
    refused: bool,
}

const CASES: &[Case] = &[
    Case {
        what: "mrg_rxbuf acked by vhost, not offered by vktest",
        vhost: RFC_FEATURES | VIRTIO_NET_F_MRG_RXBUF,
        vktest: RFC_FEATURES,
        refused: true,
    },
    Case {
        what: "mrg_rxbuf offered by vktest, not acked by vhost",
        vhost: RFC_FEATURES,
        vktest: RFC_FEATURES | VIRTIO_NET_F_MRG_RXBUF,
        refused: true,
    },
    Case {
        what: "event_idx acked by vhost, not offered by vktest",
        vhost: RFC_FEATURES | VIRTIO_RING_F_EVENT_IDX,
        vktest: RFC_FEATURES,
        refused: true,
    },
    Case {
        what: "event_idx offered by vktest, not acked by vhost",
        vhost: RFC_FEATURES,
        vktest: RFC_FEATURES | VIRTIO_RING_F_EVENT_IDX,
        refused: true,
    },
    Case {
        what: "version_1 offered by vktest, not acked by vhost",
        vhost: VIRTIO_F_ACCESS_PLATFORM,
        vktest: RFC_FEATURES,
        refused: true,
    },
    Case {
        what: "indirect_desc offered by vktest, not acked by vhost",
        vhost: RFC_FEATURES,
        vktest: RFC_FEATURES | VIRTIO_RING_F_INDIRECT_DESC,
        refused: true,
    },
    Case {
        what: "indirect_desc acked by vhost, not offered by vktest",
        vhost: RFC_FEATURES | VIRTIO_RING_F_INDIRECT_DESC,
        vktest: RFC_FEATURES,
        refused: false,
    },
    Case {
        what: "the same ring features on both ends",
        vhost: RFC_FEATURES | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC,
        vktest: RFC_FEATURES | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC,
        refused: false,
    },
    Case {
        what: "checksum offloads offered by vktest only (not compared)",
        vhost: RFC_FEATURES,
        vktest: RFC_FEATURES | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM,
        refused: false,
    },
];

/// A refused attach: EINVAL, nothing registered, no interface; the vktest
/// fd then closes without error and still nothing is left.
async fn refused_attach(rig: Rig, what: &str) -> Result<()> {
    let root = Rtnl::new(None)?;
    let (links, vdpa) = (link_indexes(&root).await?, vdpa_devices()?);
    expect_errno(rig.attach(), Errno::EINVAL, &format!("VKTEST_ATTACH_VHOST with {what}"))?;
    nothing_new(&root, &links, &vdpa, "after the refused attach").await?;
    let Rig { vhost, vktest, tap, efds } = rig;
    nix::unistd::close(vktest.into_owned_fd()).context("close /dev/vktest after the refused attach")?;
    drop((vhost, tap, efds));
    nothing_new(&root, &links, &vdpa, "after closing the devices of the refused attach").await
}

/// `attach_ring_features_mismatch_einval`: every case of [`CASES`], each on
/// fresh devices; all are run, and every one that went wrong is named.
async fn ring_features_mismatch(limit: Duration, diag: &mut dyn FnMut(String)) -> Result<Outcome> {
    let mut wrong = 0;
    for c in CASES {
        let rig = rig_with(c.vhost, c.vktest).with_context(|| format!("wiring for {}", c.what))?;
        let res = if c.refused { refused_attach(rig, c.what).await } else { attach_and_close(rig, limit).await };
        if let Err(e) = res {
            diag(format!("{} (vhost {:#x}, vktest {:#x}): {e:#}", c.what, c.vhost, c.vktest));
            wrong += 1;
        }
    }
    if wrong > 0 {
        bail!("{wrong} of {} feature combinations went wrong (each above)", CASES.len());
    }
    Ok(Outcome::Pass)
}

/// `attach_retry_after_failure` / `attach_retry_after_mismatch`: the attach
/// is refused (`refusal`), leaving nothing; VHOST_SET_FEATURES with the
/// RFC's set on the same vhost fd fixes the cause (it would be EPERM had
/// the refused attach kept the device); the attach on the same fds then
/// succeeds and the pair carries two-way traffic; closing removes it all.
async fn retry_after(refusal: Refusal, opts: &RunOpts, diag: &mut dyn FnMut(String)) -> Result<Outcome> {
    let t = opts.timeout;
    let (first, what) = match refusal {
        Refusal::NoAccessPlatform => (VIRTIO_F_VERSION_1, "vhost without access_platform"),
        Refusal::MrgRxbufMismatch => (RFC_FEATURES | VIRTIO_NET_F_MRG_RXBUF, "mrg_rxbuf acked by vhost only"),
    };
    let root = Rtnl::new(None)?;
    let vdpa_before = vdpa_devices()?;
    let rig = rig_with(first, RFC_FEATURES)?;
    let links = link_indexes(&root).await?;
    expect_errno(rig.attach(), Errno::EINVAL, &format!("first VKTEST_ATTACH_VHOST ({what})"))?;
    nothing_new(&root, &links, &vdpa_before, "after the refused attach").await?;
    rig.vhost.set_features(RFC_FEATURES).context("fixing the features after the refused attach")?;
    rig.attach().context("VKTEST_ATTACH_VHOST again, on the same fds, after fixing the features")?;

    let new: Vec<String> = vdpa_devices()?.difference(&vdpa_before).cloned().collect();
    let [dev] = new.as_slice() else {
        bail!("the retried attach returned 0 and made {} vDPA devices, expected one: {new:?}", new.len());
    };
    let (virtio, g2h) = vdpa_net_interface(dev).with_context(|| format!("after the retried attach ({dev})"))?;
    let h2g = rig.tap.name().to_string();
    let (h2g_idx, g2h_idx) = (if_index(&h2g)?, if_index(&g2h)?);
    let (h2g_ns, g2h_ns) = (opts.h2g_ns(), opts.g2h_ns());
    let mut nsg = NetnsGuard::new();
    nsg.create(&h2g_ns)?;
    nsg.create(&g2h_ns)?;
    let pair = setup_pair(&root, (h2g_idx, &h2g), (g2h_idx, &g2h), &h2g_ns, &g2h_ns, t).await?;
    let (up, down) = verify_two_way(&pair, opts.count, opts.size, t)
        .await
        .with_context(|| format!("between {h2g} and {g2h} ({virtio} on {dev}) after the retried attach"))?;
    diag(format!("{h2g} -> {g2h}: {}", up.summary()));
    diag(format!("{g2h} -> {h2g}: {}", down.summary()));

    let gone = [(Some(h2g_ns.as_str()), pair.h2g_index), (Some(g2h_ns.as_str()), pair.g2h_index)];
    close_and_wait(&gone, || drop(rig), t, "closing the devices").await?;
    for ns in [&h2g_ns, &g2h_ns] {
        check_no_damage(ns)?;
    }
    nsg.delete_all()?;
    let left: Vec<String> = vdpa_devices()?.difference(&vdpa_before).cloned().collect();
    if !left.is_empty() {
        bail!("vDPA device(s) {} still registered after closing the devices", left.join(", "));
    }
    Ok(Outcome::Pass)
}

/// Run one point of this file.
pub async fn run_v2_check(check: V2Check, opts: &RunOpts, diag: &mut dyn FnMut(String)) -> Result<Outcome> {
    match check {
        V2Check::OpenUnprivileged(how) => open_unprivileged(how, opts).await,
        V2Check::GetFeaturesNoLogAll => get_features_no_log_all(diag),
        V2Check::RingFeaturesMismatch => ring_features_mismatch(opts.timeout, diag).await,
        V2Check::RetryAfter(r) => retry_after(r, opts, diag).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_lines_round_trip() {
        let lines = [
            format!("{KEY_BECOME}\tok"),
            format!("{KEY_NET_ADMIN}\t{}", said::<()>(Err(Errno::EPERM))),
            "open /dev/vktest\tok".to_string(),
            format!("open /dev/x\t{}", said::<()>(Err(Errno::ENOENT))),
        ];
        let m = parse_probe(&lines.join("\n")).unwrap();
        assert_eq!(step(&m, KEY_NET_ADMIN).unwrap(), Err(Some(Errno::EPERM)));
        assert_eq!(step(&m, "open /dev/vktest").unwrap(), Ok(()));
        assert_eq!(step(&m, "open /dev/x").unwrap(), Err(Some(Errno::ENOENT)));
        assert!(step(&m, "open /dev/y").is_err());
        assert!(parse_probe("no tab here").is_err());
        assert!(show(&Err(Some(Errno::EPERM))).starts_with("failed with EPERM"));
    }

    #[test]
    fn privilege_spellings() {
        for u in [Unprivileged::No, Unprivileged::NoCapNetAdmin, Unprivileged::UserNs] {
            assert_eq!(u.arg().parse::<Unprivileged>().unwrap(), u);
        }
        assert!("nobody".parse::<Unprivileged>().is_err());
    }

    #[test]
    fn cases_ask_what_the_contract_says() {
        // vktest must accept every offered set (its own validation).
        for c in CASES {
            assert!(crate::sys::vhost::vktest_features_valid(c.vktest), "{}", c.what);
            let ring = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX;
            let differ = (c.vhost ^ c.vktest) & ring != 0;
            let indirect_unacked = c.vktest & !c.vhost & VIRTIO_RING_F_INDIRECT_DESC != 0;
            assert_eq!(c.refused, differ || indirect_unacked, "{}", c.what);
        }
    }
}
