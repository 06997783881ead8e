//! `serve`: the RFC's --serve flow. Sets up vhost-net-kernel + vktest + TAP,
//! attaches, reports the two new interfaces, and holds them until a signal.

pub mod fake;
pub mod rig;

pub use rig::{Eventfds, Rig};

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::net::{if_index, Link, LinkWatcher};
use crate::serve::fake::FakePair;
use crate::sys::tap::{derived_offloads, TAP_OFFLOADS};
use crate::sys::vhost::{FeatureSet, VHOST_NET_KERNEL_PATH};
use crate::sys::virtio::{vdpa_devices_in, vdpa_net_interfaces, vdpa_of_interface, virtio_device_of, SYSFS};
use crate::sys::vktest::VKTEST_PATH;

/// Which TUNSETOFFLOAD flags the TAP backend gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapOffloads {
    /// The RFC's CSUM | TSO4 | TSO6 | TSO_ECN, whatever the features.
    Rfc,
    /// Derived from the guest features ([`derived_offloads`]): what g2h can receive.
    Derived,
}

impl std::str::FromStr for TapOffloads {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "rfc" => Ok(TapOffloads::Rfc),
            "derived" => Ok(TapOffloads::Derived),
            _ => bail!("unknown TAP offload mode {s:?} (valid: rfc, derived)"),
        }
    }
}

/// In which order the serving process closes its two device fds when it
/// exits on SIGTERM/SIGINT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CloseOrder {
    /// /dev/vhost-net-kernel, then /dev/vktest (what serve always did).
    #[default]
    VhostFirst,
    /// /dev/vktest, then /dev/vhost-net-kernel.
    VktestFirst,
}

impl std::str::FromStr for CloseOrder {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "vhost-first" => Ok(CloseOrder::VhostFirst),
            "vktest-first" => Ok(CloseOrder::VktestFirst),
            _ => bail!("unknown close order {s:?} (valid: vhost-first, vktest-first)"),
        }
    }
}

/// What serve prints on stdout once it has closed a device fd on a signal
/// (after the interface line): `closed PATH`, or `{"closed":"PATH"}` with --json.
pub fn closed_line(path: &str, json: bool) -> String {
    if json {
        serde_json::json!({ "closed": path }).to_string()
    } else {
        format!("closed {path}")
    }
}

#[derive(Debug, Clone)]
pub struct ServeOpts {
    /// Print the interface line as JSON.
    pub json: bool,
    /// Let vhost add/strip the virtio-net header (VHOST_NET_F_VIRTIO_NET_HDR,
    /// TAP without IFF_VNET_HDR).
    pub vhost_hdr: bool,
    /// How long to wait for the virtio-net interface.
    pub timeout: Duration,
    /// Two TAPs bridged in user space instead of vhost + vktest (harness self-test).
    pub fake: bool,
    /// What VHOST_SET_FEATURES gets (VHOST_NET_F_VIRTIO_NET_HDR is added for `vhost_hdr`).
    pub features: FeatureSet,
    /// TUNSETOFFLOAD mode; None: `Rfc` for the rfc set, `Derived` otherwise.
    pub tap_offloads: Option<TapOffloads>,
    /// Order of closing the device fds at exit.
    pub close_order: CloseOrder,
}

impl Default for ServeOpts {
    fn default() -> Self {
        ServeOpts {
            json: false,
            vhost_hdr: false,
            timeout: Duration::from_secs(15),
            fake: false,
            features: FeatureSet::rfc(),
            tap_offloads: None,
            close_order: CloseOrder::VhostFirst,
        }
    }
}

impl ServeOpts {
    /// The TUNSETOFFLOAD flags of the TAP backend (with IFF_VNET_HDR).
    pub fn tap_offload_flags(&self) -> u32 {
        let mode =
            self.tap_offloads.unwrap_or(if self.features.is_rfc() { TapOffloads::Rfc } else { TapOffloads::Derived });
        match mode {
            TapOffloads::Rfc => TAP_OFFLOADS,
            TapOffloads::Derived => derived_offloads(self.features.bits),
        }
    }
}

/// The two interfaces the serve flow created.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Interfaces {
    pub h2g: String,
    pub g2h: String,
    pub h2g_ifindex: u32,
    pub g2h_ifindex: u32,
    /// The virtio device under the g2h interface (e.g. "virtio0"), empty if unknown.
    #[serde(default)]
    pub g2h_device: String,
    /// CLOCK_MONOTONIC (ns) when the serve flow began, before the first
    /// device was opened (0: unknown), so that the parent can time the flow
    /// without the process start.
    #[serde(default)]
    pub serve_start_ns: u64,
}

impl Interfaces {
    /// `h2g=vhostkernel0 g2h=eth0`
    pub fn text_line(&self) -> String {
        format!("h2g={} g2h={}", self.h2g, self.g2h)
    }

    /// `{"h2g":"vhostkernel0","g2h":"eth0","h2g_ifindex":4,"g2h_ifindex":5,"g2h_device":"virtio0","serve_start_ns":N}`
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("a struct of strings and integers always serialises")
    }

    /// Parse what `json_line` prints.
    pub fn parse_json(line: &str) -> Result<Self> {
        serde_json::from_str(line.trim()).with_context(|| format!("serve's interface line {line:?}"))
    }
}

/// CLOCK_MONOTONIC in ns: one clock for this process and its parent.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The abstract unix socket name that stands for the attach lock.
const ATTACH_LOCK_NAME: &[u8] = b"vhost-kernel-test.attach-lock";

/// A lock held by a serving process from just before its
/// VKTEST_ATTACH_VHOST until it has read /sys/bus/vdpa again, so that the
/// one vdpa device that appears meanwhile is its own.
///
/// Why a lock: nothing in the kernel interface says which vdpa device a
/// /dev/vktest fd created. vktest names it at open (`vdpaN`, the vdpa
/// core's index) but registers it only in VKTEST_ATTACH_VHOST, and neither
/// its ioctls, its sysfs attributes nor /proc/self/fdinfo of the fd give
/// the name. Without a kernel ABI change (an ioctl or fdinfo line with the
/// name) the best is: the device that appeared during our own attach, with
/// the attaches of all serving processes serialised. The race that remains:
/// an attach by a process that does not take this lock (another program,
/// the harness's own attach checks or fuzzer, a serve in another network
/// namespace) during ours; then two devices appear and serve fails saying
/// so, rather than guess.
///
/// The lock is a listening abstract unix socket (the test kernel has no
/// CONFIG_FILE_LOCKING, so no flock): whoever binds the name holds it, and
/// the kernel frees the name when the holder closes it or dies. A waiter
/// connects to the holder and waits for the hang-up of that connection.
struct AttachLock {
    /// Held, not read: the lock lives as long as this socket.
    _socket: std::os::fd::OwnedFd,
}

impl AttachLock {
    fn take(limit: Duration) -> Result<Self> {
        use nix::errno::Errno;
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use nix::sys::socket::{bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
        use std::os::fd::AsRawFd;
        let what = "the attach lock (abstract unix socket @vhost-kernel-test.attach-lock)";
        let addr = UnixAddr::new_abstract(ATTACH_LOCK_NAME).with_context(|| format!("address of {what}"))?;
        let unix = || {
            socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
                .with_context(|| format!("socket for {what}"))
        };
        let deadline = std::time::Instant::now() + limit;
        loop {
            let s = unix()?;
            match bind(s.as_raw_fd(), &addr) {
                Ok(()) => {
                    listen(&s, Backlog::new(64).context("backlog")?).with_context(|| format!("listen on {what}"))?;
                    return Ok(AttachLock { _socket: s });
                }
                Err(Errno::EADDRINUSE) => {}
                Err(e) => return Err(e).with_context(|| format!("bind {what}")),
            }
            let c = unix()?;
            match connect(c.as_raw_fd(), &addr) {
                // The holder's close hangs up our pending connection.
                Ok(()) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                    let mut fds = [PollFd::new(c.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, PollTimeout::from(ms)) {
                        Ok(0) => bail!("{what} still held by another process after {:.0}s", limit.as_secs_f64()),
                        Ok(_) | Err(Errno::EINTR) => {}
                        Err(e) => return Err(e).with_context(|| format!("poll on {what}")),
                    }
                }
                // Released between our bind and connect.
                Err(Errno::ECONNREFUSED) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e).with_context(|| format!("connect to {what}")),
            }
        }
    }
}

/// The one vdpa device in `after` that is not in `before`: ours, read under
/// the [`AttachLock`]. None or several is an error naming them.
fn our_vdpa(before: &BTreeSet<String>, after: &BTreeSet<String>) -> Result<String> {
    let mut new: Vec<&String> = after.difference(before).collect();
    new.sort();
    match new.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!("no vdpa device appeared in /sys/bus/vdpa/devices during VKTEST_ATTACH_VHOST"),
        _ => bail!(
            "vdpa devices {new:?} all appeared during our VKTEST_ATTACH_VHOST (an attach by a process \
             that does not take the attach lock?): cannot tell which one is ours"
        ),
    }
}

/// Set everything up and attach; returns the rig and the interfaces.
async fn bring_up(opts: &ServeOpts) -> Result<(Rig, Interfaces)> {
    // Subscribe before anything is created, so no link event is missed.
    let mut watcher = LinkWatcher::new(None)?;
    let rig = Rig::prepare(opts)?;
    let tap = rig.tap.name().to_string();
    let vdpa = {
        let _lock = AttachLock::take(opts.timeout)?;
        let before = vdpa_devices_in(SYSFS)?;
        rig.attach()?;
        our_vdpa(&before, &vdpa_devices_in(SYSFS)?)?
    };
    // virtio-net probes within VKTEST_ATTACH_VHOST, so the interface is
    // normally there already (reading its event back would cost ~10 ms of
    // guest time in netlink parsing); otherwise the link event of an
    // interface under our vdpa device decides.
    let names: Vec<String> = vdpa_net_interfaces(SYSFS, &vdpa)?.into_iter().map(|(_, name)| name).collect();
    let g2h = match names.as_slice() {
        [name] => Link { index: if_index(name)?, name: name.clone() },
        [] => {
            watcher
                .wait_new_link(
                    &HashSet::new(),
                    |l| vdpa_of_interface(SYSFS, &l.name).as_deref() == Some(vdpa.as_str()),
                    opts.timeout,
                    &format!("the virtio-net interface of {vdpa} to appear after VKTEST_ATTACH_VHOST"),
                )
                .await?
        }
        several => bail!("{vdpa} has several network interfaces: {several:?}"),
    };
    let ifs = Interfaces {
        serve_start_ns: 0,
        h2g_ifindex: if_index(&tap)?,
        h2g: tap,
        g2h_device: virtio_device_of(&g2h.name).unwrap_or_default(),
        g2h: g2h.name,
        g2h_ifindex: g2h.index,
    };
    Ok((rig, ifs))
}

/// What the serving process holds.
enum Held {
    Real(Rig),
    Fake(FakePair),
}

async fn bring_up_any(opts: &ServeOpts) -> Result<(Held, Interfaces)> {
    if opts.fake {
        let fake = FakePair::start()?;
        let ifs = Interfaces {
            h2g_ifindex: if_index(&fake.h2g)?,
            g2h_ifindex: if_index(&fake.g2h)?,
            h2g: fake.h2g.clone(),
            g2h: fake.g2h.clone(),
            g2h_device: String::new(),
            serve_start_ns: 0,
        };
        Ok((Held::Fake(fake), ifs))
    } else {
        let (rig, ifs) = bring_up(opts).await?;
        Ok((Held::Real(rig), ifs))
    }
}

/// Print one line on stdout and flush it (the parent waits for these lines).
fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("write to stdout")?;
    out.flush().context("flush stdout")
}

pub async fn serve(opts: &ServeOpts) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("install SIGUSR1 handler")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("install SIGUSR2 handler")?;

    let serve_start_ns = monotonic_ns();
    let (held, mut ifs) = tokio::select! {
        r = bring_up_any(opts) => r?,
        _ = term.recv() => bail!("SIGTERM during setup"),
        _ = int.recv() => bail!("SIGINT during setup"),
    };
    ifs.serve_start_ns = serve_start_ns;
    let line = if opts.json { ifs.json_line() } else { ifs.text_line() };
    say(&line).context("interface line")?;

    match held {
        Held::Real(rig) => {
            let Rig { vhost, vktest, tap, efds } = rig;
            let (mut vhost, mut vktest) = (Some(vhost), Some(vktest));
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = usr1.recv() => {
                        if vktest.take().is_some() {
                            eprintln!("SIGUSR1: closed /dev/vktest, still holding {}",
                                if vhost.is_some() { VHOST_NET_KERNEL_PATH } else { "the TAP" });
                            say(&closed_line(VKTEST_PATH, opts.json))?;
                        }
                    }
                    _ = usr2.recv() => {
                        if vhost.take().is_some() {
                            eprintln!("SIGUSR2: closed {VHOST_NET_KERNEL_PATH}, {}",
                                if vktest.is_some() { "still holding /dev/vktest" } else { "/dev/vktest already closed" });
                            say(&closed_line(VHOST_NET_KERNEL_PATH, opts.json))?;
                        }
                    }
                }
            }
            // By default vhost before vktest (teardown_close_vktest_first and
            // teardown_close_both_reverse cover the other order).
            match opts.close_order {
                CloseOrder::VhostFirst => {
                    drop(vhost);
                    drop(vktest);
                }
                CloseOrder::VktestFirst => {
                    drop(vktest);
                    drop(vhost);
                }
            }
            drop(tap);
            drop(efds);
        }
        Held::Fake(mut fake) => {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = usr1.recv() => {
                        fake.close_g2h()?;
                        eprintln!("SIGUSR1: removed fake g2h interface {}", fake.g2h);
                        say(&closed_line(VKTEST_PATH, opts.json))?;
                    }
                    _ = usr2.recv() => {
                        // Like the real pair: the device stays while "vktest" holds it.
                        if let Some(what) = fake.close_vhost() {
                            eprintln!("SIGUSR2: {what}");
                            say(&closed_line(VHOST_NET_KERNEL_PATH, opts.json))?;
                        }
                    }
                }
            }
            fake.stop()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_roundtrip() {
        let i = Interfaces {
            h2g: "vhostkernel0".into(),
            g2h: "eth0".into(),
            h2g_ifindex: 4,
            g2h_ifindex: 5,
            g2h_device: "virtio0".into(),
            serve_start_ns: 7,
        };
        assert_eq!(i.text_line(), "h2g=vhostkernel0 g2h=eth0");
        assert_eq!(
            i.json_line(),
            r#"{"h2g":"vhostkernel0","g2h":"eth0","h2g_ifindex":4,"g2h_ifindex":5,"g2h_device":"virtio0","serve_start_ns":7}"#
        );
        assert_eq!(Interfaces::parse_json(&i.json_line()).unwrap(), i);
        assert!(Interfaces::parse_json("h2g=x").is_err());
    }

    #[test]
    fn tap_offloads_by_default_keep_the_rfc_flow() {
        use crate::sys::ioctl::*;
        let rfc = ServeOpts::default();
        assert_eq!(rfc.tap_offload_flags(), TAP_OFFLOADS);
        let derived = ServeOpts { tap_offloads: Some(TapOffloads::Derived), ..Default::default() };
        assert_eq!(derived.tap_offload_flags(), 0);
        let off = ServeOpts { features: FeatureSet::offloads(), ..Default::default() };
        assert_eq!(off.tap_offload_flags(), TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
        let forced =
            ServeOpts { features: FeatureSet::offloads(), tap_offloads: Some(TapOffloads::Rfc), ..Default::default() };
        assert_eq!(forced.tap_offload_flags(), TAP_OFFLOADS);
        assert_eq!("derived".parse::<TapOffloads>().unwrap(), TapOffloads::Derived);
        // Checked before any device is opened.
        let hdr = ServeOpts { vhost_hdr: true, features: FeatureSet::offloads(), ..Default::default() };
        let e = Rig::prepare(&hdr).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("--vhost-hdr with checksum/TSO features (offloads)"), "{e}");
        assert!("all".parse::<TapOffloads>().is_err());
    }

    /// A sysfs-shaped tree as the kernel lays it out: two vktest vdpa
    /// devices with a virtio-net interface each (two serves attached at
    /// once), a virtio-net interface of a PCI virtio device and a TAP.
    fn sysfs_tree() -> std::path::PathBuf {
        use std::os::unix::fs::symlink;
        let root = std::env::temp_dir().join(format!("vkt-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mk = |p: &str| std::fs::create_dir_all(root.join(p)).unwrap();
        let ln = |target: &str, at: &str| symlink(target, root.join(at)).unwrap();
        mk("bus/vdpa/devices");
        mk("class/net");
        mk("devices/virtual/net/vhostkernel0");
        ln("../../devices/virtual/net/vhostkernel0", "class/net/vhostkernel0");
        for (parent, virtio, eth) in
            [("vdpa0", "virtio0", "eth0"), ("vdpa1", "virtio1", "eth1"), ("pci0000:00/0000:00:03.0", "virtio2", "eth2")]
        {
            mk(&format!("devices/{parent}/{virtio}/net/{eth}"));
            ln(&format!("../../../{virtio}"), &format!("devices/{parent}/{virtio}/net/{eth}/device"));
            let up = "../".repeat(2);
            ln(&format!("{up}devices/{parent}/{virtio}/net/{eth}"), &format!("class/net/{eth}"));
            if parent.starts_with("vdpa") {
                ln(&format!("../../../devices/{parent}"), &format!("bus/vdpa/devices/{parent}"));
            }
        }
        root
    }

    #[test]
    fn the_interface_is_the_one_under_our_vdpa_device() {
        let root = sysfs_tree();
        let sys = root.to_str().unwrap();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
        assert_eq!(vdpa_devices_in(sys).unwrap(), set(&["vdpa0", "vdpa1"]));
        // vdpa0 was there before our attach (another serve's), vdpa1 came with it.
        let ours = our_vdpa(&set(&["vdpa0"]), &vdpa_devices_in(sys).unwrap()).unwrap();
        assert_eq!(ours, "vdpa1");
        // Both are new virtio-net interfaces; only eth1 is under our device.
        assert_eq!(vdpa_net_interfaces(sys, &ours).unwrap().into_iter().map(|(_, n)| n).collect::<Vec<_>>(), ["eth1"]);
        assert_eq!(
            vdpa_net_interfaces(sys, "vdpa0").unwrap().into_iter().map(|(_, n)| n).collect::<Vec<_>>(),
            ["eth0"]
        );
        assert_eq!(vdpa_of_interface(sys, "eth1").as_deref(), Some("vdpa1"));
        assert_eq!(vdpa_of_interface(sys, "eth0").as_deref(), Some("vdpa0"));
        // Not vdpa: a PCI virtio-net interface, a TAP, a missing one.
        for name in ["eth2", "vhostkernel0", "nosuch"] {
            assert_eq!(vdpa_of_interface(sys, name), None, "{name}");
        }
        // Two devices appearing during one attach: refuse to guess.
        let e = our_vdpa(&set(&[]), &vdpa_devices_in(sys).unwrap()).unwrap_err().to_string();
        assert!(e.contains("[\"vdpa0\", \"vdpa1\"]") && e.contains("cannot tell"), "{e}");
        let e = our_vdpa(&set(&["vdpa0", "vdpa1"]), &vdpa_devices_in(sys).unwrap()).unwrap_err().to_string();
        assert!(e.contains("no vdpa device appeared"), "{e}");
        assert!(vdpa_net_interfaces(sys, "vdpa7").unwrap().into_iter().map(|(_, n)| n).collect::<Vec<_>>().is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_attach_lock_is_held_until_its_holder_lets_go() {
        use std::sync::mpsc::channel;
        let held = AttachLock::take(Duration::from_secs(10)).unwrap();
        let (tx, rx) = channel();
        let waiter = std::thread::spawn(move || {
            let got = AttachLock::take(Duration::from_secs(10));
            tx.send(got.is_ok()).unwrap();
            got
        });
        // While held, the other taker waits (this bounded wait must run out).
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "lock taken twice");
        drop(held);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
        let second = waiter.join().unwrap().unwrap();
        // A holder that does not let go makes the next taker fail in time.
        let e = AttachLock::take(Duration::from_millis(100)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("still held by another process"), "{e}");
        drop(second);
    }

    #[test]
    fn close_order_and_closed_lines() {
        assert_eq!("vktest-first".parse::<CloseOrder>().unwrap(), CloseOrder::VktestFirst);
        assert_eq!("vhost-first".parse::<CloseOrder>().unwrap(), CloseOrder::default());
        assert!("both".parse::<CloseOrder>().is_err());
        assert_eq!(closed_line("/dev/vktest", false), "closed /dev/vktest");
        assert_eq!(closed_line("/dev/vhost-net-kernel", true), r#"{"closed":"/dev/vhost-net-kernel"}"#);
    }
}
