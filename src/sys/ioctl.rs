//! Every ioctl number the harness uses, defined once, computed with the
//! `_IOC` arithmetic of `include/uapi/asm-generic/ioctl.h`, plus the uapi
//! structs they carry and three tiny wrappers around `libc::ioctl`.

use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`.
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    (dir << IOC_DIRSHIFT) | (ty << IOC_TYPESHIFT) | (nr << IOC_NRSHIFT) | ((size as u32) << IOC_SIZESHIFT)
}
/// `_IO(type, nr)`.
pub const fn io(ty: u32, nr: u32) -> u32 {
    ioc(IOC_NONE, ty, nr, 0)
}
/// `_IOW(type, nr, T)`.
pub const fn iow<T>(ty: u32, nr: u32) -> u32 {
    ioc(IOC_WRITE, ty, nr, size_of::<T>())
}
/// `_IOR(type, nr, T)`.
pub const fn ior<T>(ty: u32, nr: u32) -> u32 {
    ioc(IOC_READ, ty, nr, size_of::<T>())
}

/// `struct vhost_vring_state` (linux/vhost_types.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VhostVringState {
    pub index: u32,
    pub num: u32,
}

/// `struct vhost_vring_file` (linux/vhost_types.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VhostVringFile {
    pub index: u32,
    pub fd: i32,
}

/// `struct vhost_vring_addr` (linux/vhost_types.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VhostVringAddr {
    pub index: u32,
    pub flags: u32,
    pub desc_user_addr: u64,
    pub used_user_addr: u64,
    pub avail_user_addr: u64,
    pub log_guest_addr: u64,
}

/// `struct vhost_memory` header (the region array is a flexible member, so
/// `sizeof` — and the ioctl size field — covers only these 8 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VhostMemory {
    pub nregions: u32,
    pub padding: u32,
}

/// `struct ifreq` as far as TUNSETIFF needs it (name + flags, padded to 40 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IfReq {
    pub name: [u8; libc::IFNAMSIZ],
    pub flags: libc::c_short,
    pub _pad: [u8; 22],
}

impl Default for IfReq {
    fn default() -> Self {
        IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] }
    }
}

/// vhost ioctl type (linux/vhost.h).
pub const VHOST_VIRTIO: u32 = 0xAF;
pub const VHOST_GET_FEATURES: u32 = ior::<u64>(VHOST_VIRTIO, 0x00);
pub const VHOST_SET_FEATURES: u32 = iow::<u64>(VHOST_VIRTIO, 0x00);
pub const VHOST_SET_OWNER: u32 = io(VHOST_VIRTIO, 0x01);
pub const VHOST_RESET_OWNER: u32 = io(VHOST_VIRTIO, 0x02);
pub const VHOST_SET_MEM_TABLE: u32 = iow::<VhostMemory>(VHOST_VIRTIO, 0x03);
pub const VHOST_SET_LOG_BASE: u32 = iow::<u64>(VHOST_VIRTIO, 0x04);
pub const VHOST_SET_LOG_FD: u32 = iow::<libc::c_int>(VHOST_VIRTIO, 0x07);
/// A new worker; the kernel writes its id (`struct vhost_worker_state`, one u32).
pub const VHOST_NEW_WORKER: u32 = ior::<u32>(VHOST_VIRTIO, 0x08);
/// Whether workers are vhost_tasks of the owner (1) or kernel threads (0);
/// CONFIG_VHOST_ENABLE_FORK_OWNER_CONTROL.
pub const VHOST_SET_FORK_FROM_OWNER: u32 = iow::<u8>(VHOST_VIRTIO, 0x84);
pub const VHOST_GET_FORK_FROM_OWNER: u32 = ior::<u8>(VHOST_VIRTIO, 0x85);
pub const VHOST_FORK_OWNER_KTHREAD: u8 = 0;
pub const VHOST_FORK_OWNER_TASK: u8 = 1;
pub const VHOST_SET_VRING_NUM: u32 = iow::<VhostVringState>(VHOST_VIRTIO, 0x10);
pub const VHOST_SET_VRING_ADDR: u32 = iow::<VhostVringAddr>(VHOST_VIRTIO, 0x11);
pub const VHOST_SET_VRING_BASE: u32 = iow::<VhostVringState>(VHOST_VIRTIO, 0x12);
pub const VHOST_SET_VRING_ENDIAN: u32 = iow::<VhostVringState>(VHOST_VIRTIO, 0x13);
pub const VHOST_SET_VRING_KICK: u32 = iow::<VhostVringFile>(VHOST_VIRTIO, 0x20);
pub const VHOST_SET_VRING_CALL: u32 = iow::<VhostVringFile>(VHOST_VIRTIO, 0x21);
/// Busy-poll time of a queue in microseconds (`num`; 0: no busy polling).
pub const VHOST_SET_VRING_BUSYLOOP_TIMEOUT: u32 = iow::<VhostVringState>(VHOST_VIRTIO, 0x23);
/// `_IOW` in linux/vhost.h although the kernel writes the state back.
pub const VHOST_GET_VRING_BUSYLOOP_TIMEOUT: u32 = iow::<VhostVringState>(VHOST_VIRTIO, 0x24);
pub const VHOST_NET_SET_BACKEND: u32 = iow::<VhostVringFile>(VHOST_VIRTIO, 0x30);

/// vktest ioctl type and its one private ioctl (the RFC's vktest uapi).
pub const VKTEST_TYPE: u32 = 0xBF;
pub const VKTEST_ATTACH_VHOST: u32 = iow::<libc::c_int>(VKTEST_TYPE, 0x31);
/// Features vktest offers virtio-net (before attaching); added by the 6.12
/// port, absent from the RFC (ENOTTY there).
pub const VKTEST_SET_FEATURES: u32 = iow::<u64>(VKTEST_TYPE, 0x32);

/// TUN ioctls (linux/if_tun.h).
pub const TUN_TYPE: u32 = b'T' as u32;
pub const TUNSETIFF: u32 = iow::<libc::c_int>(TUN_TYPE, 202);
pub const TUNSETOFFLOAD: u32 = iow::<libc::c_uint>(TUN_TYPE, 208);
pub const TUNSETVNETHDRSZ: u32 = iow::<libc::c_int>(TUN_TYPE, 216);

pub const IFF_TAP: libc::c_short = 0x0002;
pub const IFF_NO_PI: libc::c_short = 0x1000;
pub const IFF_VNET_HDR: libc::c_short = 0x4000;
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;

/// Feature bits.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;
pub const VHOST_NET_F_VIRTIO_NET_HDR: u64 = 1 << 27;
/// Dirty-page logging (`VHOST_F_LOG_ALL`, 26 in linux/vhost_types.h); v2 of
/// the series neither offers nor accepts it on the kernel node.
pub const VHOST_F_LOG_ALL: u64 = 1 << 26;
/// Virtqueue feature bits (include/uapi/linux/virtio_ring.h).
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// virtio-net feature bits (include/uapi/linux/virtio_net.h).
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;

/// Size of `struct virtio_net_hdr_mrg_rxbuf`.
pub const VIRTIO_NET_HDR_MRG_RXBUF_LEN: i32 = 12;

// The raw calls below are `unsafe fn`: whether an ioctl is memory-safe
// depends on what the kernel's handler for `req` reads and writes at the
// argument, which only the caller can vouch for (a request number paired
// with the wrong `T` would let the kernel write past it). Each call site
// states its SAFETY argument; the typed methods of VhostNetKernel, Vktest
// and Tap are the safe interface.

/// ioctl with no argument.
///
/// # Safety
/// The handler of `req` on `fd` must not dereference its argument.
pub unsafe fn ioctl_none(fd: BorrowedFd<'_>, req: u32) -> Result<(), Errno> {
    // SAFETY: the caller guarantees the request uses no argument memory; the
    // fd is valid for the borrow.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::Ioctl, 0 as libc::c_ulong) };
    Errno::result(ret).map(drop)
}

/// ioctl whose argument is passed by value (an int or flags word).
///
/// # Safety
/// The handler of `req` on `fd` must take its argument as a value, not as a
/// pointer into our memory (or `val` must be an address it may not write to,
/// such as 0).
pub unsafe fn ioctl_with_val(fd: BorrowedFd<'_>, req: u32, val: libc::c_ulong) -> Result<(), Errno> {
    // SAFETY: the caller guarantees `val` is not used as a pointer to our
    // memory; the fd is valid for the borrow.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::Ioctl, val) };
    Errno::result(ret).map(drop)
}

/// ioctl that reads (`_IOW`) a `T` from our memory.
///
/// # Safety
/// The handler of `req` on `fd` must at most read `size_of::<T>()` bytes at
/// the argument and never write there.
pub unsafe fn ioctl_with_ref<T>(fd: BorrowedFd<'_>, req: u32, arg: &T) -> Result<(), Errno> {
    // SAFETY: `arg` is a valid, initialised `T` for the call, and the caller
    // guarantees the kernel reads no more than it and writes nothing.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::Ioctl, arg as *const T) };
    Errno::result(ret).map(drop)
}

/// ioctl that reads and/or writes a `T` in our memory (`_IOR`, or TUNSETIFF
/// which writes the chosen name back).
///
/// Safe code cannot pair a request with the wrong `T`:
/// ```compile_fail,E0133
/// use std::os::fd::AsFd;
/// let f = std::fs::File::open("/dev/null").unwrap();
/// let mut byte = 0u8; // VHOST_GET_FEATURES writes 8 bytes
/// let _ = vhost_kernel_test::sys::ioctl::ioctl_with_mut(f.as_fd(), vhost_kernel_test::sys::ioctl::VHOST_GET_FEATURES, &mut byte);
/// ```
///
/// # Safety
/// The handler of `req` on `fd` must at most access `size_of::<T>()` bytes
/// at the argument, and what it writes there must be a valid `T`.
pub unsafe fn ioctl_with_mut<T>(fd: BorrowedFd<'_>, req: u32, arg: &mut T) -> Result<(), Errno> {
    // SAFETY: `arg` is a valid, exclusively borrowed `T`, and the caller
    // guarantees the kernel stays within it and leaves a valid `T`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::Ioctl, arg as *mut T) };
    Errno::result(ret).map(drop)
}

/// Human name of a request number, for error contexts.
pub fn name(req: u32) -> &'static str {
    match req {
        VHOST_GET_FEATURES => "VHOST_GET_FEATURES",
        VHOST_SET_FEATURES => "VHOST_SET_FEATURES",
        VHOST_SET_OWNER => "VHOST_SET_OWNER",
        VHOST_RESET_OWNER => "VHOST_RESET_OWNER",
        VHOST_SET_MEM_TABLE => "VHOST_SET_MEM_TABLE",
        VHOST_SET_LOG_BASE => "VHOST_SET_LOG_BASE",
        VHOST_SET_LOG_FD => "VHOST_SET_LOG_FD",
        VHOST_NEW_WORKER => "VHOST_NEW_WORKER",
        VHOST_SET_FORK_FROM_OWNER => "VHOST_SET_FORK_FROM_OWNER",
        VHOST_GET_FORK_FROM_OWNER => "VHOST_GET_FORK_FROM_OWNER",
        VHOST_SET_VRING_NUM => "VHOST_SET_VRING_NUM",
        VHOST_SET_VRING_ADDR => "VHOST_SET_VRING_ADDR",
        VHOST_SET_VRING_BASE => "VHOST_SET_VRING_BASE",
        VHOST_SET_VRING_ENDIAN => "VHOST_SET_VRING_ENDIAN",
        VHOST_SET_VRING_KICK => "VHOST_SET_VRING_KICK",
        VHOST_SET_VRING_CALL => "VHOST_SET_VRING_CALL",
        VHOST_SET_VRING_BUSYLOOP_TIMEOUT => "VHOST_SET_VRING_BUSYLOOP_TIMEOUT",
        VHOST_GET_VRING_BUSYLOOP_TIMEOUT => "VHOST_GET_VRING_BUSYLOOP_TIMEOUT",
        VHOST_NET_SET_BACKEND => "VHOST_NET_SET_BACKEND",
        VKTEST_ATTACH_VHOST => "VKTEST_ATTACH_VHOST",
        VKTEST_SET_FEATURES => "VKTEST_SET_FEATURES",
        TUNSETIFF => "TUNSETIFF",
        TUNSETOFFLOAD => "TUNSETOFFLOAD",
        TUNSETVNETHDRSZ => "TUNSETVNETHDRSZ",
        _ => "unknown ioctl",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_uapi() {
        assert_eq!(size_of::<VhostVringState>(), 8);
        assert_eq!(size_of::<VhostVringFile>(), 8);
        assert_eq!(size_of::<VhostVringAddr>(), 40);
        assert_eq!(size_of::<VhostMemory>(), 8);
        assert_eq!(size_of::<IfReq>(), 40);
    }

    #[test]
    fn vhost_numbers() {
        assert_eq!(VHOST_GET_FEATURES, 0x8008_AF00);
        assert_eq!(VHOST_SET_FEATURES, 0x4008_AF00);
        assert_eq!(VHOST_SET_OWNER, 0xAF01);
        assert_eq!(VHOST_RESET_OWNER, 0xAF02);
        assert_eq!(VHOST_SET_MEM_TABLE, 0x4008_AF03);
        assert_eq!(VHOST_SET_LOG_BASE, 0x4008_AF04);
        assert_eq!(VHOST_SET_LOG_FD, 0x4004_AF07);
        assert_eq!(VHOST_NEW_WORKER, 0x8004_AF08);
        assert_eq!(VHOST_SET_FORK_FROM_OWNER, 0x4001_AF84);
        assert_eq!(VHOST_GET_FORK_FROM_OWNER, 0x8001_AF85);
        assert_eq!(VHOST_SET_VRING_NUM, 0x4008_AF10);
        assert_eq!(VHOST_SET_VRING_ADDR, 0x4028_AF11);
        assert_eq!(VHOST_SET_VRING_BASE, 0x4008_AF12);
        assert_eq!(VHOST_SET_VRING_ENDIAN, 0x4008_AF13);
        assert_eq!(VHOST_SET_VRING_KICK, 0x4008_AF20);
        assert_eq!(VHOST_SET_VRING_CALL, 0x4008_AF21);
        assert_eq!(VHOST_SET_VRING_BUSYLOOP_TIMEOUT, 0x4008_AF23);
        assert_eq!(VHOST_NET_SET_BACKEND, 0x4008_AF30);
    }

    #[test]
    fn vktest_and_tun_numbers() {
        assert_eq!(VKTEST_ATTACH_VHOST, 0x4004_BF31);
        assert_eq!(VKTEST_SET_FEATURES, 0x4008_BF32);
        assert_eq!(TUNSETIFF, 0x4004_54CA);
        assert_eq!(TUNSETOFFLOAD, 0x4004_54D0);
        assert_eq!(TUNSETVNETHDRSZ, 0x4004_54D8);
        assert_eq!(VHOST_SET_VRING_BUSYLOOP_TIMEOUT, 0x4008_AF23);
        assert_eq!(VHOST_GET_VRING_BUSYLOOP_TIMEOUT, 0x4008_AF24);
    }

    #[test]
    fn names_are_unique() {
        assert_eq!(name(VHOST_SET_OWNER), "VHOST_SET_OWNER");
        assert_eq!(name(VKTEST_ATTACH_VHOST), "VKTEST_ATTACH_VHOST");
        assert_eq!(name(1), "unknown ioctl");
    }
}

/// `struct vhost_msg_v2`: u32 type, u32 asid, then a 64-byte union whose
/// `struct vhost_iotlb_msg` is u64 iova, u64 size, u64 uaddr, u8 perm, u8 type.
pub const VHOST_MSG_V2_LEN: usize = 72;
pub const VHOST_IOTLB_MSG_V2: u32 = 0x2;
pub const VHOST_IOTLB_UPDATE: u8 = 2;
pub const VHOST_ACCESS_RW: u8 = 0x3;

/// The bytes of a VHOST_IOTLB_UPDATE message, as written to a vhost fd.
pub fn iotlb_update_msg(iova: u64, size: u64, uaddr: u64) -> [u8; VHOST_MSG_V2_LEN] {
    let mut m = [0u8; VHOST_MSG_V2_LEN];
    m[0..4].copy_from_slice(&VHOST_IOTLB_MSG_V2.to_ne_bytes());
    m[8..16].copy_from_slice(&iova.to_ne_bytes());
    m[16..24].copy_from_slice(&size.to_ne_bytes());
    m[24..32].copy_from_slice(&uaddr.to_ne_bytes());
    m[32] = VHOST_ACCESS_RW;
    m[33] = VHOST_IOTLB_UPDATE;
    m
}

#[cfg(test)]
mod iotlb_msg_tests {
    use super::*;

    #[test]
    fn iotlb_update_layout() {
        let m = iotlb_update_msg(0x1000, 0x2000, 0x3000);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 2);
        assert_eq!(u32::from_ne_bytes(m[4..8].try_into().unwrap()), 0);
        assert_eq!(u64::from_ne_bytes(m[8..16].try_into().unwrap()), 0x1000);
        assert_eq!(u64::from_ne_bytes(m[16..24].try_into().unwrap()), 0x2000);
        assert_eq!(u64::from_ne_bytes(m[24..32].try_into().unwrap()), 0x3000);
        assert_eq!((m[32], m[33]), (3, 2));
        assert!(m[34..].iter().all(|&b| b == 0));
    }
}
