//! The serve wiring, written once: the four eventfds shared by both
//! devices, the owned and configured vhost device, the vktest device, the
//! TAP backend, up to (not including) VKTEST_ATTACH_VHOST. `serve`, the
//! attach checks and the race loop all start from it; the negative checks
//! use its parts (`configured_vhost`, `configured_vktest`) to leave one
//! step out.

use std::os::fd::AsFd;

use anyhow::{bail, Context, Result};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::errno_of;
use crate::sys::ioctl::VHOST_NET_F_VIRTIO_NET_HDR;
use crate::sys::tap::{Tap, TAP_TEMPLATE};
use crate::sys::vhost::{
    feature_names, FeatureSet, VhostNetKernel, RX_QUEUE, TX_QUEUE, VHOST_NET_BITS, VHOST_NET_KERNEL_PATH,
};
use crate::sys::vktest::{Vktest, VKTEST_PATH};

use super::ServeOpts;

/// The four eventfds: kick0, call0, kick1, call1.
pub struct Eventfds {
    pub kick: [EventFd; 2],
    pub call: [EventFd; 2],
}

impl Eventfds {
    pub fn new() -> Result<Self> {
        let e = || -> Result<EventFd> {
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)
                .map_err(|e| anyhow::Error::new(e).context("eventfd(0, EFD_CLOEXEC)"))
        };
        Ok(Eventfds { kick: [e()?, e()?], call: [e()?, e()?] })
    }
}

/// Everything the RFC's --serve flow sets up before attaching.
pub struct Rig {
    pub vhost: VhostNetKernel,
    pub vktest: Vktest,
    pub tap: Tap,
    pub efds: Eventfds,
}

/// Open a vhost-net-kernel, SET_OWNER, wire `efds` to it, set features.
pub fn configured_vhost(efds: &Eventfds, features: u64) -> Result<VhostNetKernel> {
    let vhost = VhostNetKernel::open()?;
    vhost.set_owner()?;
    for q in [RX_QUEUE, TX_QUEUE] {
        vhost.set_vring_kick(q, efds.kick[q as usize].as_fd())?;
        vhost.set_vring_call(q, efds.call[q as usize].as_fd())?;
    }
    vhost.set_features(features)?;
    Ok(vhost)
}

/// Open a vktest and wire `efds` to it (`call_q1 = false` leaves queue 1's call unset).
pub fn configured_vktest(efds: &Eventfds, call_q1: bool) -> Result<Vktest> {
    let vk = Vktest::open()?;
    for q in [RX_QUEUE, TX_QUEUE] {
        vk.set_vring_kick(q, efds.kick[q as usize].as_fd())?;
        if q == RX_QUEUE || call_q1 {
            vk.set_vring_call(q, efds.call[q as usize].as_fd())?;
        }
    }
    Ok(vk)
}

/// The first steps of the serve flow: open both nodes, SET_OWNER, and hand
/// each of the four eventfds to both devices (one kick and one call per
/// queue, shared by vktest and vhost).
pub fn open_and_wire() -> Result<(Eventfds, VhostNetKernel, Vktest)> {
    let efds = Eventfds::new()?;
    let vhost = VhostNetKernel::open()?;
    let vktest = Vktest::open()?;
    vhost.set_owner()?;
    for q in [RX_QUEUE, TX_QUEUE] {
        let i = q as usize;
        vhost.set_vring_kick(q, efds.kick[i].as_fd())?;
        vktest.set_vring_kick(q, efds.kick[i].as_fd())?;
        vhost.set_vring_call(q, efds.call[i].as_fd())?;
        vktest.set_vring_call(q, efds.call[i].as_fd())?;
    }
    Ok((efds, vhost, vktest))
}

impl Rig {
    /// The serve flow up to (not including) VKTEST_ATTACH_VHOST: the RFC's
    /// sequence (open both nodes, SET_OWNER, the eventfds to both devices,
    /// SET_FEATURES, the TAP as both queues' backend), with the vhost-net
    /// part of `opts.features` ([`crate::sys::vhost::FeatureSet::vhost_bits`])
    /// for VHOST_SET_FEATURES, the whole set for VKTEST_SET_FEATURES when it
    /// is not the RFC's (so virtio-net negotiates the same), and the TAP
    /// offloads `opts` asks for. `opts.vhost_hdr`: negotiate
    /// VHOST_NET_F_VIRTIO_NET_HDR and use a TAP without IFF_VNET_HDR (vhost
    /// adds and strips the header itself).
    pub fn prepare(opts: &ServeOpts) -> Result<Self> {
        if opts.vhost_hdr && opts.features.bits & !VHOST_NET_BITS != 0 {
            bail!(
                "--vhost-hdr with checksum/TSO features ({}): without the TAP's vnet header the offload metadata is lost",
                opts.features
            );
        }
        let offloads = opts.tap_offload_flags();
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
            if opts.features.busypoll_us > 0 {
                vhost.set_vring_busyloop_timeout(q, opts.features.busypoll_us)?;
            }
        }
        Ok(Rig { vhost, vktest, tap, efds })
    }

    /// VKTEST_ATTACH_VHOST: the vktest device takes the vhost device over.
    pub fn attach(&self) -> Result<()> {
        self.vktest.attach_vhost(self.vhost.as_fd())
    }
}

/// What the devices say of a feature set, asked without attaching: a fresh
/// /dev/vhost-net-kernel must offer its vhost-net part (VHOST_GET_FEATURES),
/// and, for another set than the RFC's, a fresh /dev/vktest must accept the
/// whole set (VKTEST_SET_FEATURES; the device is closed again). Bench and
/// run read it differently: bench skips a set the kernel does not offer, run
/// fails on it (the series must do every valid set).
#[derive(Debug)]
pub enum SetProbe {
    /// Both devices take it.
    Supported,
    /// vhost-net does not offer these bits of it.
    NotOffered { missing: u64, offered: u64 },
    /// vktest has no VKTEST_SET_FEATURES (ENOTTY: the RFC's interface).
    NoSetFeatures,
    /// vktest refused it; the error carries the errno.
    Refused(anyhow::Error),
}

impl SetProbe {
    /// Why `set` cannot run, for a message (None when supported).
    pub fn reason(&self, set: &FeatureSet) -> Option<String> {
        match self {
            SetProbe::Supported => None,
            SetProbe::NotOffered { missing, offered } => Some(format!(
                "{VHOST_NET_KERNEL_PATH} does not offer {} (VHOST_GET_FEATURES {offered:#x})",
                feature_names(*missing).join(",")
            )),
            SetProbe::NoSetFeatures => {
                Some(format!("{VKTEST_PATH} has no VKTEST_SET_FEATURES (a kernel with the RFC's interface)"))
            }
            SetProbe::Refused(e) => Some(format!("{VKTEST_PATH} does not offer feature set {} ({e:#})", set.name)),
        }
    }
}

/// Ask the devices about `set` ([`SetProbe`]); Err when they cannot be
/// opened or asked at all.
pub fn probe_feature_set(set: &FeatureSet) -> Result<SetProbe> {
    let offered = VhostNetKernel::open()?.get_features()?;
    let missing = set.vhost_bits() & !offered;
    if missing != 0 {
        return Ok(SetProbe::NotOffered { missing, offered });
    }
    if set.is_rfc() {
        return Ok(SetProbe::Supported);
    }
    Ok(match Vktest::open()?.set_features(set.bits) {
        Ok(()) => SetProbe::Supported,
        Err(e) if errno_of(&e) == Some(nix::errno::Errno::ENOTTY) => SetProbe::NoSetFeatures,
        Err(e) => SetProbe::Refused(e),
    })
}
