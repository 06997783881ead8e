//! The vktest vDPA test device (`/dev/vktest`).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use anyhow::{Context, Result};

use crate::sys::ioctl::{self, VhostVringFile};
use crate::sys::vhost::open_ro;

pub const VKTEST_PATH: &str = "/dev/vktest";
/// Number of virtqueues vktest has (RX, TX).
pub const VKTEST_NUM_QUEUES: u32 = 2;

/// One open `/dev/vktest`: an allocated (not yet registered) vDPA device.
#[derive(Debug)]
pub struct Vktest {
    file: File,
}

impl Vktest {
    pub fn open() -> Result<Self> {
        Ok(Vktest { file: open_ro(VKTEST_PATH)? })
    }

    /// `req` is VHOST_SET_VRING_KICK or VHOST_SET_VRING_CALL.
    fn vring_file(&self, req: u32, index: u32, fd: RawFd) -> Result<()> {
        assert!([ioctl::VHOST_SET_VRING_KICK, ioctl::VHOST_SET_VRING_CALL].contains(&req));
        let arg = VhostVringFile { index, fd };
        // SAFETY: vktest's SET_VRING_KICK/CALL read one struct vhost_vring_file.
        unsafe { ioctl::ioctl_with_ref(self.file.as_fd(), req, &arg) }
            .with_context(|| format!("{VKTEST_PATH}: {} index {index}", ioctl::name(req)))
    }

    pub fn set_vring_kick(&self, index: u32, fd: BorrowedFd<'_>) -> Result<()> {
        self.vring_file(ioctl::VHOST_SET_VRING_KICK, index, fd.as_raw_fd())
    }

    pub fn set_vring_call(&self, index: u32, fd: BorrowedFd<'_>) -> Result<()> {
        self.vring_file(ioctl::VHOST_SET_VRING_CALL, index, fd.as_raw_fd())
    }

    /// VKTEST_ATTACH_VHOST: hand the vhost fd (by value) to the kernel driver.
    pub fn attach_vhost(&self, vhost: BorrowedFd<'_>) -> Result<()> {
        self.attach_raw(vhost.as_raw_fd())
    }

    /// VKTEST_ATTACH_VHOST with an arbitrary fd number (negative tests).
    pub fn attach_raw(&self, fd: RawFd) -> Result<()> {
        // SAFETY: VKTEST_ATTACH_VHOST takes the fd number by value.
        unsafe { ioctl::ioctl_with_val(self.file.as_fd(), ioctl::VKTEST_ATTACH_VHOST, fd as libc::c_ulong) }
            .with_context(|| format!("{VKTEST_PATH}: VKTEST_ATTACH_VHOST fd {fd}"))
    }

    /// VKTEST_SET_FEATURES: the virtio feature bits vktest offers
    /// virtio-net (before attaching).
    pub fn set_features(&self, features: u64) -> Result<()> {
        // SAFETY: VKTEST_SET_FEATURES reads one u64.
        unsafe { ioctl::ioctl_with_ref(self.file.as_fd(), ioctl::VKTEST_SET_FEATURES, &features) }
            .with_context(|| format!("{VKTEST_PATH}: VKTEST_SET_FEATURES {features:#x}"))
    }
}

impl Vktest {
    /// The fd itself (to close it and see what close() says).
    pub fn into_owned_fd(self) -> std::os::fd::OwnedFd {
        self.file.into()
    }
}

impl AsFd for Vktest {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
