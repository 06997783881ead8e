//! The vhost-net device, in its kernel-buffer flavour (`/dev/vhost-net-kernel`)
//! and, for the regression/negative checks, the plain one (`/dev/vhost-net`).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::sys::ioctl::{self, VhostMemory, VhostVringAddr, VhostVringFile, VhostVringState};

pub const VHOST_NET_KERNEL_PATH: &str = "/dev/vhost-net-kernel";
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";

/// Virtqueue indexes of vhost-net.
pub const RX_QUEUE: u32 = 0;
pub const TX_QUEUE: u32 = 1;

pub(crate) fn open_rw(path: &str) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("open {path}"))
}

/// Control nodes are opened read-only, as the RFC's test does: everything
/// happens through ioctls.
pub(crate) fn open_ro(path: &str) -> Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC).open(path).with_context(|| format!("open {path}"))
}

/// One open vhost-net device (a `/dev/vhost-net-kernel` or `/dev/vhost-net` fd).
#[derive(Debug)]
pub struct VhostNetKernel {
    file: File,
    path: &'static str,
}

impl VhostNetKernel {
    /// Open `/dev/vhost-net-kernel`.
    pub fn open() -> Result<Self> {
        Self::open_path(VHOST_NET_KERNEL_PATH)
    }

    /// Open the plain `/dev/vhost-net` (used to check it is refused by vktest).
    pub fn open_plain() -> Result<Self> {
        Self::open_path(VHOST_NET_PATH)
    }

    /// Open `/dev/vhost-net-kernel` for writing too: IOTLB messages are
    /// written to the device file, which the read-only open of the RFC flow
    /// cannot do.
    pub fn open_writable() -> Result<Self> {
        Ok(VhostNetKernel { file: open_rw(VHOST_NET_KERNEL_PATH)?, path: VHOST_NET_KERNEL_PATH })
    }

    /// Write one IOTLB update (struct vhost_msg_v2 carrying a
    /// VHOST_IOTLB_UPDATE of `size` bytes at `iova` to `uaddr`, read-write).
    pub fn write_iotlb_update(&self, iova: u64, size: u64, uaddr: u64) -> Result<()> {
        use std::io::Write;
        let msg = ioctl::iotlb_update_msg(iova, size, uaddr);
        match (&self.file).write(&msg) {
            Ok(n) if n == msg.len() => Ok(()),
            Ok(n) => anyhow::bail!("{}: short IOTLB message write ({n} of {} bytes)", self.path, msg.len()),
            Err(e) => Err(anyhow::Error::new(nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0))))
                .with_context(|| format!("{}: write of a VHOST_IOTLB_UPDATE message", self.path)),
        }
    }

    fn open_path(path: &'static str) -> Result<Self> {
        Ok(VhostNetKernel { file: open_ro(path)?, path })
    }

    pub fn path(&self) -> &'static str {
        self.path
    }

    fn ctx(&self, req: u32) -> String {
        format!("{}: {}", self.path, ioctl::name(req))
    }

    pub fn set_owner(&self) -> Result<()> {
        // SAFETY: VHOST_SET_OWNER takes no argument.
        unsafe { ioctl::ioctl_none(self.file.as_fd(), ioctl::VHOST_SET_OWNER) }
            .with_context(|| self.ctx(ioctl::VHOST_SET_OWNER))
    }

    /// VHOST_NEW_WORKER: the id of the new worker.
    pub fn new_worker(&self) -> Result<u32> {
        let mut id = 0u32;
        // SAFETY: VHOST_NEW_WORKER writes one struct vhost_worker_state (a u32) at the argument.
        unsafe { ioctl::ioctl_with_mut(self.file.as_fd(), ioctl::VHOST_NEW_WORKER, &mut id) }
            .with_context(|| self.ctx(ioctl::VHOST_NEW_WORKER))?;
        Ok(id)
    }

    /// VHOST_SET_FORK_FROM_OWNER: what kind of task the worker will be.
    pub fn set_fork_from_owner(&self, kind: u8) -> Result<()> {
        // SAFETY: VHOST_SET_FORK_FROM_OWNER reads one u8.
        unsafe { ioctl::ioctl_with_ref(self.file.as_fd(), ioctl::VHOST_SET_FORK_FROM_OWNER, &kind) }
            .with_context(|| self.ctx(ioctl::VHOST_SET_FORK_FROM_OWNER))
    }

    /// VHOST_GET_FORK_FROM_OWNER.
    pub fn get_fork_from_owner(&self) -> Result<u8> {
        let mut kind = 0u8;
        // SAFETY: VHOST_GET_FORK_FROM_OWNER writes one u8 at the argument.
        unsafe { ioctl::ioctl_with_mut(self.file.as_fd(), ioctl::VHOST_GET_FORK_FROM_OWNER, &mut kind) }
            .with_context(|| self.ctx(ioctl::VHOST_GET_FORK_FROM_OWNER))?;
        Ok(kind)
    }

    pub fn get_features(&self) -> Result<u64> {
        let mut f = 0u64;
        // SAFETY: VHOST_GET_FEATURES writes one u64 at the argument.
        unsafe { ioctl::ioctl_with_mut(self.file.as_fd(), ioctl::VHOST_GET_FEATURES, &mut f) }
            .with_context(|| self.ctx(ioctl::VHOST_GET_FEATURES))?;
        Ok(f)
    }

    pub fn set_features(&self, features: u64) -> Result<()> {
        // SAFETY: VHOST_SET_FEATURES reads one u64.
        unsafe { ioctl::ioctl_with_ref(self.file.as_fd(), ioctl::VHOST_SET_FEATURES, &features) }
            .with_context(|| format!("{} {features:#x}", self.ctx(ioctl::VHOST_SET_FEATURES)))
    }

    /// `req` is one of the requests that read a `struct vhost_vring_file`
    /// (SET_VRING_KICK, SET_VRING_CALL, NET_SET_BACKEND): private, so the
    /// pairing is checked here.
    fn vring_file(&self, req: u32, index: u32, fd: RawFd) -> Result<()> {
        assert!([ioctl::VHOST_SET_VRING_KICK, ioctl::VHOST_SET_VRING_CALL, ioctl::VHOST_NET_SET_BACKEND].contains(&req));
        let arg = VhostVringFile { index, fd };
        // SAFETY: the three requests above read one struct vhost_vring_file.
        unsafe { ioctl::ioctl_with_ref(self.file.as_fd(), req, &arg) }
            .with_context(|| format!("{} index {index}", self.ctx(req)))
    }

    pub fn set_vring_kick(&self, index: u32, fd: BorrowedFd<'_>) -> Result<()> {
        self.vring_file(ioctl::VHOST_SET_VRING_KICK, index, fd.as_raw_fd())
    }

    pub fn set_vring_call(&self, index: u32, fd: BorrowedFd<'_>) -> Result<()> {
        self.vring_file(ioctl::VHOST_SET_VRING_CALL, index, fd.as_raw_fd())
    }

    pub fn set_backend(&self, index: u32, fd: BorrowedFd<'_>) -> Result<()> {
        self.vring_file(ioctl::VHOST_NET_SET_BACKEND, index, fd.as_raw_fd())
    }

    /// `req` is one of the requests that read a `struct vhost_vring_state`
    /// (SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ENDIAN,
    /// SET_VRING_BUSYLOOP_TIMEOUT).
    fn vring_state(&self, req: u32, index: u32, num: u32) -> Result<()> {
        assert!([
            ioctl::VHOST_SET_VRING_NUM,
            ioctl::VHOST_SET_VRING_BASE,
            ioctl::VHOST_SET_VRING_ENDIAN,
            ioctl::VHOST_SET_VRING_BUSYLOOP_TIMEOUT
        ]
        .contains(&req));
        let arg = VhostVringState { index, num };
        // SAFETY: the four requests above read one struct vhost_vring_state.
        unsafe { ioctl::ioctl_with_ref(self.file.as_fd(), req, &arg) }
            .with_context(|| format!("{} index {index}", self.ctx(req)))
    }

    /// Refused on the -kernel node (EPERM): only the kernel shapes the rings.
    pub fn set_vring_num(&self, index: u32, num: u32) -> Result<()> {
        self.vring_state(ioctl::VHOST_SET_VRING_NUM, index, num)
    }

    pub fn set_vring_base(&self, index: u32, base: u32) -> Result<()> {
        self.vring_state(ioctl::VHOST_SET_VRING_BASE, index, base)
    }

    pub fn set_vring_endian(&self, index: u32, big: bool) -> Result<()> {
        self.vring_state(ioctl::VHOST_SET_VRING_ENDIAN, index, u32::from(big))
    }

    /// How long (microseconds) the queue's handler busy-polls its ring and
    /// socket before sleeping (0: never).
    pub fn set_vring_busyloop_timeout(&self, index: u32, usecs: u32) -> Result<()> {
        self.vring_state(ioctl::VHOST_SET_VRING_BUSYLOOP_TIMEOUT, index, usecs)
    }

    /// VHOST_RESET_OWNER: drop the owner and everything it set up.
    pub fn reset_owner(&self) -> Result<()> {
        // SAFETY: VHOST_RESET_OWNER takes no argument.
        unsafe { ioctl::ioctl_none(self.file.as_fd(), ioctl::VHOST_RESET_OWNER) }
            .with_context(|| self.ctx(ioctl::VHOST_RESET_OWNER))
    }

    pub fn set_vring_addr(&self, addr: &VhostVringAddr) -> Result<()> {
        // SAFETY: VHOST_SET_VRING_ADDR reads one struct vhost_vring_addr; the
        // addresses in it are not ours to lose (the kernel node refuses it).
        unsafe { ioctl::ioctl_with_ref(self.file.as_fd(), ioctl::VHOST_SET_VRING_ADDR, addr) }
            .with_context(|| self.ctx(ioctl::VHOST_SET_VRING_ADDR))
    }

    /// SET_MEM_TABLE with an empty table (only the header is passed).
    pub fn set_mem_table_empty(&self) -> Result<()> {
        let mem = VhostMemory::default();
        // SAFETY: with nregions = 0, VHOST_SET_MEM_TABLE reads only the
        // 8-byte header that `mem` is.
        unsafe { ioctl::ioctl_with_ref(self.file.as_fd(), ioctl::VHOST_SET_MEM_TABLE, &mem) }
            .with_context(|| self.ctx(ioctl::VHOST_SET_MEM_TABLE))
    }

    pub fn set_log_base(&self, base: u64) -> Result<()> {
        // SAFETY: VHOST_SET_LOG_BASE reads one u64 (the log address is used
        // later, through copy_to_user, never as our memory here).
        unsafe { ioctl::ioctl_with_ref(self.file.as_fd(), ioctl::VHOST_SET_LOG_BASE, &base) }
            .with_context(|| self.ctx(ioctl::VHOST_SET_LOG_BASE))
    }

    pub fn set_log_fd(&self, fd: RawFd) -> Result<()> {
        let fd: libc::c_int = fd;
        // SAFETY: VHOST_SET_LOG_FD reads one int.
        unsafe { ioctl::ioctl_with_ref(self.file.as_fd(), ioctl::VHOST_SET_LOG_FD, &fd) }
            .with_context(|| self.ctx(ioctl::VHOST_SET_LOG_FD))
    }

    pub fn into_owned_fd(self) -> OwnedFd {
        self.file.into()
    }
}

impl AsFd for VhostNetKernel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Whether a device node exists (used for the skip decisions).
pub fn node_exists(path: &str) -> bool {
    Path::new(path).exists()
}

/// The RFC's feature set: VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM.
pub const RFC_FEATURES: u64 = ioctl::VIRTIO_F_VERSION_1 | ioctl::VIRTIO_F_ACCESS_PLATFORM;

/// The bits of a feature set that vhost-net itself implements, i.e. what goes
/// to VHOST_SET_FEATURES (upstream vhost-net refuses the checksum/TSO bits with
/// EOPNOTSUPP: they concern only virtio-net and the TAP's offloads). The whole
/// set goes to vktest (VKTEST_SET_FEATURES), which offers it to virtio-net.
pub const VHOST_NET_BITS: u64 = RFC_FEATURES | ioctl::VIRTIO_NET_F_MRG_RXBUF | RING_FEATURES;

/// virtio-net feature names accepted by `--features`, with their bits.
pub const NET_FEATURES: &[(&str, u64)] = &[
    ("csum", ioctl::VIRTIO_NET_F_CSUM),
    ("guest_csum", ioctl::VIRTIO_NET_F_GUEST_CSUM),
    ("guest_tso4", ioctl::VIRTIO_NET_F_GUEST_TSO4),
    ("guest_tso6", ioctl::VIRTIO_NET_F_GUEST_TSO6),
    ("host_tso4", ioctl::VIRTIO_NET_F_HOST_TSO4),
    ("host_tso6", ioctl::VIRTIO_NET_F_HOST_TSO6),
    ("mrg_rxbuf", ioctl::VIRTIO_NET_F_MRG_RXBUF),
];

/// Virtqueue feature names accepted by `--features`, with their bits. Both
/// ends must agree on them (they change the ring protocol), so they go to
/// VHOST_SET_FEATURES as well as to vktest.
pub const RING_FEATURES_NAMED: &[(&str, u64)] =
    &[("indirect_desc", ioctl::VIRTIO_RING_F_INDIRECT_DESC), ("event_idx", ioctl::VIRTIO_RING_F_EVENT_IDX)];

/// The bits of a name list.
const fn bits_of(names: &[(&str, u64)]) -> u64 {
    let mut bits = 0;
    let mut i = 0;
    while i < names.len() {
        bits |= names[i].1;
        i += 1;
    }
    bits
}

/// Every name of [`NET_FEATURES`] (the `offloads` shorthand).
pub const OFFLOAD_FEATURES: u64 = bits_of(NET_FEATURES);

/// Every name of [`RING_FEATURES_NAMED`] (the `ring` shorthand).
pub const RING_FEATURES: u64 = bits_of(RING_FEATURES_NAMED);

/// Every feature a set may add to the RFC's.
pub const OPTIONAL_FEATURES: u64 = OFFLOAD_FEATURES | RING_FEATURES;

/// Every name a set may add to the RFC's, with its bit.
fn optional_named() -> impl Iterator<Item = &'static (&'static str, u64)> {
    NET_FEATURES.iter().chain(RING_FEATURES_NAMED)
}

/// The name of one optional feature bit.
fn optional_name(bit: u64) -> Option<&'static str> {
    optional_named().find(|(_, v)| *v == bit).map(|(n, _)| *n)
}

/// Names of the bits in `bits` (`version_1`, `access_platform`, the
/// [`NET_FEATURES`] names, `vhost_net_hdr`, `bitN` for anything else).
pub fn feature_names(bits: u64) -> Vec<String> {
    (0..64)
        .filter(|b| bits & (1u64 << b) != 0)
        .map(|b| {
            let bit = 1u64 << b;
            match bit {
                ioctl::VIRTIO_F_VERSION_1 => "version_1".to_string(),
                ioctl::VIRTIO_F_ACCESS_PLATFORM => "access_platform".to_string(),
                ioctl::VHOST_NET_F_VIRTIO_NET_HDR => "vhost_net_hdr".to_string(),
                ioctl::VHOST_F_LOG_ALL => "log_all".to_string(),
                _ => optional_name(bit).map(str::to_string).unwrap_or_else(|| format!("bit{b}")),
            }
        })
        .collect()
}

/// A feature set for VHOST_SET_FEATURES: `rfc` (the RFC's bits) or a comma
/// list of [`NET_FEATURES`] and [`RING_FEATURES_NAMED`] names (or `offloads`
/// and `ring`, all of either) added to it; `busypoll[=US]` is no virtio
/// feature but vhost's busy polling of both queues (before the attach).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureSet {
    /// Canonical spelling: `rfc`, or `offloads` / `ring` for a complete
    /// group and the names of the other bits in bit order; then
    /// `busypoll` (or `busypoll=US`) if set.
    pub name: String,
    pub bits: u64,
    /// VHOST_SET_VRING_BUSYLOOP_TIMEOUT of both queues, microseconds (0: none).
    pub busypoll_us: u32,
}

/// What `busypoll` alone means: QEMU users' usual vhost-net setting.
pub const BUSYPOLL_US: u32 = 50;

impl Default for FeatureSet {
    fn default() -> Self {
        Self::rfc()
    }
}

impl FeatureSet {
    pub fn rfc() -> Self {
        FeatureSet { name: "rfc".into(), bits: RFC_FEATURES, busypoll_us: 0 }
    }

    pub fn offloads() -> Self {
        FeatureSet { name: "offloads".into(), bits: RFC_FEATURES | OFFLOAD_FEATURES, busypoll_us: 0 }
    }

    /// Everything vktest can offer: the offloads and the ring features.
    pub fn offloads_and_ring() -> Self {
        Self::from_bits(RFC_FEATURES | OPTIONAL_FEATURES)
    }

    pub fn is_rfc(&self) -> bool {
        self.bits == RFC_FEATURES
    }

    /// What VHOST_SET_FEATURES gets ([`VHOST_NET_BITS`] of the set).
    pub fn vhost_bits(&self) -> u64 {
        self.bits & VHOST_NET_BITS
    }

    /// Everything vktest can offer, with busy polling.
    pub fn best() -> Self {
        Self::offloads_and_ring().with_busypoll(BUSYPOLL_US)
    }

    /// The same set with both queues busy-polling `us` microseconds.
    pub fn with_busypoll(mut self, us: u32) -> Self {
        self = Self::from_bits(self.bits);
        if us > 0 {
            let word = if us == BUSYPOLL_US { "busypoll".to_string() } else { format!("busypoll={us}") };
            self.name = format!("{},{word}", self.name);
        }
        self.busypoll_us = us;
        self
    }

    /// Parse `rfc`, `offloads`, `offloads,ring`, or e.g. `csum,guest_csum,mrg_rxbuf`,
    /// each optionally with `busypoll` or `busypoll=US`.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut bits = RFC_FEATURES;
        let mut busypoll_us = 0;
        for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            if word == "busypoll" {
                busypoll_us = BUSYPOLL_US;
                continue;
            }
            if let Some(us) = word.strip_prefix("busypoll=") {
                busypoll_us =
                    us.parse().map_err(|_| anyhow::anyhow!("busypoll={us:?} in {spec:?}: microseconds expected"))?;
                continue;
            }
            bits |= match word {
                "rfc" => RFC_FEATURES,
                "offloads" => OFFLOAD_FEATURES,
                "ring" => RING_FEATURES,
                _ => optional_named().find(|(n, _)| *n == word).map(|(_, b)| *b).ok_or_else(|| {
                    let names: Vec<&str> = optional_named().map(|(n, _)| *n).collect();
                    anyhow::anyhow!(
                        "unknown feature {word:?} in {spec:?} (valid: rfc, offloads, ring, {}, busypoll[=US])",
                        names.join(", ")
                    )
                })?,
            };
        }
        Ok(Self::from_bits(bits).with_busypoll(busypoll_us))
    }

    /// The part of the set that works without a TAP vnet header: what
    /// vhost-net itself implements ([`FeatureSet::vhost_bits`]).
    pub fn vhost_only(&self) -> Self {
        Self::from_bits(self.vhost_bits())
    }

    fn from_bits(bits: u64) -> Self {
        let group = |all: u64, name: &str| -> Vec<String> {
            if bits & all == all {
                vec![name.to_string()]
            } else {
                feature_names(bits & all)
            }
        };
        let words = [group(OFFLOAD_FEATURES, "offloads"), group(RING_FEATURES, "ring")].concat();
        let name = if words.is_empty() { "rfc".to_string() } else { words.join(",") };
        FeatureSet { name, bits, busypoll_us: 0 }
    }
}

impl std::str::FromStr for FeatureSet {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl std::fmt::Display for FeatureSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Whether vktest accepts `bits` for VKTEST_SET_FEATURES (its validation).
pub fn vktest_features_valid(bits: u64) -> bool {
    use crate::sys::ioctl::*;
    let required = VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM;
    if bits & required != required || bits & !(required | OPTIONAL_FEATURES) != 0 {
        return false;
    }
    let host_tso = VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6;
    let guest_tso = VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6;
    !(bits & host_tso != 0 && bits & VIRTIO_NET_F_CSUM == 0
        || bits & guest_tso != 0 && bits & VIRTIO_NET_F_GUEST_CSUM == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busypoll_is_part_of_the_set() {
        let b = FeatureSet::parse("offloads,ring,busypoll").unwrap();
        assert_eq!(b, FeatureSet::best());
        assert_eq!((b.name.as_str(), b.busypoll_us), ("offloads,ring,busypoll", BUSYPOLL_US));
        assert_eq!(b.bits, FeatureSet::offloads_and_ring().bits);
        let r = FeatureSet::parse("busypoll=200").unwrap();
        assert_eq!((r.name.as_str(), r.busypoll_us, r.is_rfc()), ("rfc,busypoll=200", 200, true));
        assert_eq!(FeatureSet::parse(&r.name).unwrap(), r, "the name parses back");
        assert_eq!(FeatureSet::parse("rfc,busypoll=0").unwrap(), FeatureSet::rfc());
        assert!(FeatureSet::parse("busypoll=fast").is_err());
        assert_eq!(FeatureSet::offloads().busypoll_us, 0);
    }

    #[test]
    fn feature_sets_parse() {
        assert_eq!(FeatureSet::parse("rfc").unwrap(), FeatureSet::rfc());
        assert_eq!(FeatureSet::rfc().bits, 0x3_0000_0000);
        let o = FeatureSet::parse("offloads").unwrap();
        assert_eq!(o, FeatureSet::offloads());
        assert_eq!(o.bits, 0x3_0000_9983);
        let all = "csum,guest_csum,host_tso4,host_tso6,guest_tso4,guest_tso6,mrg_rxbuf";
        assert_eq!(FeatureSet::parse(all).unwrap(), o);
        let c = FeatureSet::parse("mrg_rxbuf, csum").unwrap();
        assert_eq!(c.bits, RFC_FEATURES | 1 | 1 << 15);
        assert_eq!(c.name, "csum,mrg_rxbuf");
        assert!(!c.is_rfc() && FeatureSet::rfc().is_rfc());
        assert_eq!(c.vhost_bits(), RFC_FEATURES | 1 << 15);
        assert_eq!(o.vhost_bits(), RFC_FEATURES | 1 << 15);
        assert_eq!(FeatureSet::rfc().vhost_bits(), RFC_FEATURES);
        assert_eq!(FeatureSet::parse("rfc,").unwrap().name, "rfc");
        let r = FeatureSet::parse("ring, offloads").unwrap();
        assert_eq!((r.name.as_str(), r.bits), ("offloads,ring", 0x3_3000_9983));
        assert_eq!(r.vhost_bits(), RFC_FEATURES | 1 << 15 | 1 << 28 | 1 << 29);
        assert_eq!(FeatureSet::parse("event_idx,indirect_desc").unwrap().name, "ring");
        assert_eq!(FeatureSet::parse("event_idx,csum").unwrap().name, "csum,event_idx");
        assert_eq!(r, FeatureSet::offloads_and_ring());
        assert_eq!(r.vhost_only().name, "mrg_rxbuf,ring");
        assert_eq!(o.vhost_only().name, "mrg_rxbuf");
        assert_eq!(FeatureSet::parse("csum").unwrap().vhost_only(), FeatureSet::rfc());
        let e = FeatureSet::parse("csum,tso").unwrap_err().to_string();
        assert!(e.contains("\"tso\"") && e.contains("guest_tso6") && e.contains("event_idx"), "{e}");
    }

    #[test]
    fn names_of_bits() {
        assert_eq!(feature_names(RFC_FEATURES), ["version_1", "access_platform"]);
        assert_eq!(feature_names(1 | 1 << 5 | 1 << 27), ["csum", "bit5", "vhost_net_hdr"]);
        assert_eq!(feature_names(1 << 26 | 1 << 40), ["log_all", "bit40"]);
    }
}
