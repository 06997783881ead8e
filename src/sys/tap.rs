//! A TAP device from `/dev/net/tun`, configured as a vhost-net backend.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result};

use crate::sys::ioctl::{self, IfReq};
use crate::sys::vhost::open_rw;

pub const TUN_PATH: &str = "/dev/net/tun";
/// Name template of the host-side interface, as in the RFC.
pub const TAP_TEMPLATE: &str = "vhostkernel%d";

/// Offloads the RFC enables on its TAP.
pub const TAP_OFFLOADS: u32 = ioctl::TUN_F_CSUM | ioctl::TUN_F_TSO4 | ioctl::TUN_F_TSO6 | ioctl::TUN_F_TSO_ECN;

/// TAP offloads matching what the guest side (virtio-net) accepts: TUNSETOFFLOAD
/// decides which GSO / partial-checksum packets the TAP hands to vhost, i.e.
/// what g2h receives. TSO needs CSUM (tun refuses TSO without it).
pub fn derived_offloads(features: u64) -> u32 {
    let has = |bit: u64| features & bit != 0;
    let mut f = 0;
    if has(ioctl::VIRTIO_NET_F_GUEST_CSUM) {
        f |= ioctl::TUN_F_CSUM;
        if has(ioctl::VIRTIO_NET_F_GUEST_TSO4) {
            f |= ioctl::TUN_F_TSO4;
        }
        if has(ioctl::VIRTIO_NET_F_GUEST_TSO6) {
            f |= ioctl::TUN_F_TSO6;
        }
    }
    f
}

#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// TUNSETIFF with IFF_TAP | IFF_NO_PI (| IFF_VNET_HDR if `vnet_hdr`).
    /// `template` may contain `%d`; the kernel's chosen name is kept.
    pub fn create(template: &str, vnet_hdr: bool) -> Result<Self> {
        let file = open_rw(TUN_PATH)?;
        let mut req = IfReq::default();
        let bytes = template.as_bytes();
        anyhow::ensure!(bytes.len() < libc::IFNAMSIZ, "interface name {template:?} too long");
        req.name[..bytes.len()].copy_from_slice(bytes);
        req.flags = ioctl::IFF_TAP | ioctl::IFF_NO_PI;
        if vnet_hdr {
            req.flags |= ioctl::IFF_VNET_HDR;
        }
        // SAFETY: TUNSETIFF reads and writes back one struct ifreq (its
        // _IOW size says int, the handler copies the whole ifreq), which
        // IfReq is in size and layout.
        unsafe { ioctl::ioctl_with_mut(file.as_fd(), ioctl::TUNSETIFF, &mut req) }
            .with_context(|| format!("{TUN_PATH}: TUNSETIFF {template}"))?;
        let len = req.name.iter().position(|&b| b == 0).unwrap_or(req.name.len());
        let name = String::from_utf8_lossy(&req.name[..len]).into_owned();
        Ok(Tap { file, name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The TAP's fd (the interface lives as long as it, or a copy, is open).
    pub fn into_owned_fd(self) -> std::os::fd::OwnedFd {
        self.file.into()
    }

    /// Read one frame (blocking unless the fd was made non-blocking).
    pub fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Write one frame.
    pub fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(frame)
    }

    pub fn set_offload(&self, flags: u32) -> Result<()> {
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        unsafe { ioctl::ioctl_with_val(self.file.as_fd(), ioctl::TUNSETOFFLOAD, libc::c_ulong::from(flags)) }
            .with_context(|| format!("tap {}: TUNSETOFFLOAD {flags:#x}", self.name))
    }

    pub fn set_vnet_hdr_size(&self, size: i32) -> Result<()> {
        let size: libc::c_int = size;
        // SAFETY: TUNSETVNETHDRSZ reads one int.
        unsafe { ioctl::ioctl_with_ref(self.file.as_fd(), ioctl::TUNSETVNETHDRSZ, &size) }
            .with_context(|| format!("tap {}: TUNSETVNETHDRSZ {size}", self.name))
    }

    /// The RFC's backend: VNET_HDR, offloads, 12-byte header.
    pub fn create_vhost_backend(template: &str) -> Result<Self> {
        Self::create_vhost_backend_with(template, TAP_OFFLOADS)
    }

    /// A vhost backend (VNET_HDR, 12-byte header) with the given TUNSETOFFLOAD flags.
    pub fn create_vhost_backend_with(template: &str, offloads: u32) -> Result<Self> {
        let tap = Self::create(template, true)?;
        tap.set_offload(offloads)?;
        tap.set_vnet_hdr_size(ioctl::VIRTIO_NET_HDR_MRG_RXBUF_LEN)?;
        Ok(tap)
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::ioctl::*;

    #[test]
    fn offloads_follow_guest_features() {
        assert_eq!(derived_offloads(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM), 0);
        assert_eq!(derived_offloads(VIRTIO_NET_F_GUEST_CSUM), TUN_F_CSUM);
        let all = VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6;
        assert_eq!(derived_offloads(all), TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
        // TSO without checksum offload is refused by tun: not derived.
        assert_eq!(derived_offloads(VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6), 0);
        // Host-side (guest TX) features do not change what the TAP hands to vhost.
        assert_eq!(derived_offloads(VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_MRG_RXBUF), 0);
    }
}
