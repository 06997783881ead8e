//! The vhost-net device, in its kernel-buffer flavour (`/dev/vhost-net-kernel`)
//! and, for the regression/negative checks, the plain one (`/dev/vhost-net`).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::ioctl::{self, VhostMemory, VhostVringAddr, VhostVringFile, VhostVringState};

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
        ioctl::ioctl_none(self.file.as_fd(), ioctl::VHOST_SET_OWNER).with_context(|| self.ctx(ioctl::VHOST_SET_OWNER))
    }

    pub fn get_features(&self) -> Result<u64> {
        let mut f = 0u64;
        ioctl::ioctl_with_mut(self.file.as_fd(), ioctl::VHOST_GET_FEATURES, &mut f)
            .with_context(|| self.ctx(ioctl::VHOST_GET_FEATURES))?;
        Ok(f)
    }

    pub fn set_features(&self, features: u64) -> Result<()> {
        ioctl::ioctl_with_ref(self.file.as_fd(), ioctl::VHOST_SET_FEATURES, &features)
            .with_context(|| format!("{} {features:#x}", self.ctx(ioctl::VHOST_SET_FEATURES)))
    }

    fn vring_file(&self, req: u32, index: u32, fd: RawFd) -> Result<()> {
        let arg = VhostVringFile { index, fd };
        ioctl::ioctl_with_ref(self.file.as_fd(), req, &arg).with_context(|| format!("{} index {index}", self.ctx(req)))
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

    fn vring_state(&self, req: u32, index: u32, num: u32) -> Result<()> {
        let arg = VhostVringState { index, num };
        ioctl::ioctl_with_ref(self.file.as_fd(), req, &arg).with_context(|| format!("{} index {index}", self.ctx(req)))
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

    pub fn set_vring_addr(&self, addr: &VhostVringAddr) -> Result<()> {
        ioctl::ioctl_with_ref(self.file.as_fd(), ioctl::VHOST_SET_VRING_ADDR, addr)
            .with_context(|| self.ctx(ioctl::VHOST_SET_VRING_ADDR))
    }

    /// SET_MEM_TABLE with an empty table (only the header is passed).
    pub fn set_mem_table_empty(&self) -> Result<()> {
        let mem = VhostMemory::default();
        ioctl::ioctl_with_ref(self.file.as_fd(), ioctl::VHOST_SET_MEM_TABLE, &mem)
            .with_context(|| self.ctx(ioctl::VHOST_SET_MEM_TABLE))
    }

    pub fn set_log_base(&self, base: u64) -> Result<()> {
        ioctl::ioctl_with_ref(self.file.as_fd(), ioctl::VHOST_SET_LOG_BASE, &base)
            .with_context(|| self.ctx(ioctl::VHOST_SET_LOG_BASE))
    }

    pub fn set_log_fd(&self, fd: RawFd) -> Result<()> {
        let fd: libc::c_int = fd;
        ioctl::ioctl_with_ref(self.file.as_fd(), ioctl::VHOST_SET_LOG_FD, &fd)
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
