//! `serve`: the RFC's --serve flow. Sets up vhost-net-kernel + vktest + TAP,
//! attaches, reports the two new interfaces, and holds them until a signal.

use std::collections::HashSet;
use std::io::Write;
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::attach::{open_and_wire, Rig};
use crate::fake::FakePair;
use crate::ioctl::VHOST_NET_F_VIRTIO_NET_HDR;
use crate::net::{if_index, virtio_device_of, Link, LinkWatcher};
use crate::tap::{derived_offloads, Tap, TAP_OFFLOADS, TAP_TEMPLATE};
use crate::vhost::{FeatureSet, RX_QUEUE, TX_QUEUE, VHOST_NET_BITS, VHOST_NET_KERNEL_PATH};
use crate::vktest::VKTEST_PATH;

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
        format!("{{\"closed\":\"{path}\"}}")
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

/// The serve flow up to (not including) VKTEST_ATTACH_VHOST. With the RFC's
/// features and TAP offloads this is exactly [`Rig::prepare`]; otherwise the
/// same sequence, with the vhost-net part of `opts.features`
/// ([`FeatureSet::vhost_bits`]) for VHOST_SET_FEATURES, the whole set for
/// VKTEST_SET_FEATURES (so virtio-net negotiates the same), and the chosen
/// TAP offloads.
pub fn prepare_rig(opts: &ServeOpts) -> Result<Rig> {
    let offloads = opts.tap_offload_flags();
    if opts.features.is_rfc() && offloads == TAP_OFFLOADS {
        return Rig::prepare(opts.vhost_hdr);
    }
    if opts.vhost_hdr && opts.features.bits & !VHOST_NET_BITS != 0 {
        bail!(
            "--vhost-hdr with checksum/TSO features ({}): without the TAP's vnet header the offload metadata is lost",
            opts.features
        );
    }
    let (efds, vhost, vktest) = open_and_wire()?;
    let mut features = opts.features.vhost_bits();
    if opts.vhost_hdr {
        features |= VHOST_NET_F_VIRTIO_NET_HDR;
    }
    vhost.set_features(features).with_context(|| format!("feature set {}", opts.features))?;
    if !opts.features.is_rfc() {
        vktest.set_features(opts.features.bits).with_context(|| format!("feature set {}", opts.features))?;
    }
    let tap = if opts.vhost_hdr {
        Tap::create(TAP_TEMPLATE, false)?
    } else {
        Tap::create_vhost_backend_with(TAP_TEMPLATE, offloads)?
    };
    for q in [RX_QUEUE, TX_QUEUE] {
        vhost.set_backend(q, tap.as_fd())?;
    }
    Ok(Rig { vhost, vktest, tap, efds })
}

/// The two interfaces the serve flow created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interfaces {
    pub h2g: String,
    pub g2h: String,
    pub h2g_ifindex: u32,
    pub g2h_ifindex: u32,
    /// The virtio device under the g2h interface (e.g. "virtio0"), empty if unknown.
    pub g2h_device: String,
    /// CLOCK_MONOTONIC (ns) when the serve flow began, before the first
    /// device was opened (0: unknown), so that the parent can time the flow
    /// without the process start.
    pub serve_start_ns: u64,
}

impl Interfaces {
    /// `h2g=vhostkernel0 g2h=eth0`
    pub fn text_line(&self) -> String {
        format!("h2g={} g2h={}", self.h2g, self.g2h)
    }

    /// `{"h2g":"vhostkernel0","g2h":"eth0","h2g_ifindex":4,"g2h_ifindex":5,"g2h_device":"virtio0","serve_start_ns":N}`
    pub fn json_line(&self) -> String {
        format!(
            "{{\"h2g\":\"{}\",\"g2h\":\"{}\",\"h2g_ifindex\":{},\"g2h_ifindex\":{},\"g2h_device\":\"{}\",\"serve_start_ns\":{}}}",
            self.h2g, self.g2h, self.h2g_ifindex, self.g2h_ifindex, self.g2h_device, self.serve_start_ns
        )
    }

    /// Parse what `json_line` prints (flat object of strings and integers;
    /// interface and device names never need escaping).
    pub fn parse_json(line: &str) -> Result<Self> {
        let body = line
            .trim()
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .ok_or_else(|| anyhow!("not a JSON object: {line:?}"))?;
        let mut get = std::collections::HashMap::new();
        for field in body.split(',') {
            let (k, v) = field.split_once(':').ok_or_else(|| anyhow!("bad field {field:?} in {line:?}"))?;
            get.insert(k.trim().trim_matches('"').to_string(), v.trim().trim_matches('"').to_string());
        }
        let s = |k: &str| get.get(k).cloned().ok_or_else(|| anyhow!("missing {k} in {line:?}"));
        let n = |k: &str| -> Result<u32> { s(k)?.parse().with_context(|| format!("{k} in {line:?}")) };
        let n64 = |k: &str| -> Result<u64> { s(k)?.parse().with_context(|| format!("{k} in {line:?}")) };
        Ok(Interfaces {
            h2g: s("h2g")?,
            g2h: s("g2h")?,
            h2g_ifindex: n("h2g_ifindex")?,
            g2h_ifindex: n("g2h_ifindex")?,
            g2h_device: s("g2h_device").unwrap_or_default(),
            serve_start_ns: n64("serve_start_ns").unwrap_or(0),
        })
    }
}

/// CLOCK_MONOTONIC in ns: one clock for this process and its parent.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Names of the interfaces of the current namespace.
fn interface_names() -> Result<HashSet<String>> {
    let dir = std::fs::read_dir("/sys/class/net").context("read /sys/class/net")?;
    Ok(dir.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
}

/// Set everything up and attach; returns the rig and the interfaces.
async fn bring_up(opts: &ServeOpts) -> Result<(Rig, Interfaces)> {
    // Subscribe before anything is created, so no link event is missed.
    let mut watcher = LinkWatcher::new(None)?;
    // The spec's "names that did not exist before serving". /sys/class/net
    // costs a directory read, a netlink dump several ms of guest time.
    let known = interface_names()?;
    let rig = prepare_rig(opts)?;
    let tap = rig.tap.name().to_string();
    rig.attach()?;
    let is_g2h = |name: &str| {
        !known.contains(name)
            && name != tap
            && !name.starts_with("vhostkernel")
            && virtio_device_of(name).map(|d| d.starts_with("virtio")).unwrap_or(false)
    };
    // virtio-net probes within VKTEST_ATTACH_VHOST, so the interface is
    // normally there already; reading its event back would cost ~10 ms of
    // guest time in netlink parsing. The events decide when it is not
    // (or when another attach raced with ours).
    let now: Vec<String> = interface_names()?.into_iter().filter(|n| is_g2h(n)).collect();
    let g2h = match now.as_slice() {
        [name] => Link { index: if_index(name)?, name: name.clone() },
        _ => {
            watcher
                .wait_new_link(
                    &HashSet::new(),
                    |l| is_g2h(&l.name),
                    opts.timeout,
                    "the virtio-net interface to appear after VKTEST_ATTACH_VHOST",
                )
                .await?
        }
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
        Held::Fake(fake) => {
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
                        eprintln!("SIGUSR2: fake pair has no vhost fd, interfaces kept");
                        say(&closed_line(VHOST_NET_KERNEL_PATH, opts.json))?;
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
        use crate::ioctl::*;
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
        let e = prepare_rig(&hdr).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("--vhost-hdr with checksum/TSO features (offloads)"), "{e}");
        assert!("all".parse::<TapOffloads>().is_err());
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
