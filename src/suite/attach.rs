//! Sanity and negative ABI checks of /dev/vhost-net-kernel and /dev/vktest,
//! one KTAP test point each.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::errno_of;
use crate::net::{if_index, LinkWatcher};
use crate::report::ktap::Outcome;
use crate::serve::rig::{configured_vhost, configured_vktest, Eventfds, Rig};
use crate::serve::ServeOpts;
use crate::sys::ioctl::{self, VhostVringAddr, VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1};
use crate::sys::vhost::{node_exists, VhostNetKernel, RX_QUEUE, VHOST_NET_PATH};
use crate::sys::virtio::{vdpa_devices, vdpa_net_interfaces, SYSFS, VDPA_DEVICES};
use crate::sys::vktest::Vktest;

/// One ABI check of the two device nodes (its name, help line and place
/// in the KTAP order are in the registry, suite/registry.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Once,
    SameVhostTwice,
    SetFeaturesAfterAttach,
    SetVringKickAfterAttach,
    VktestAlreadyAttached,
    RefusedSetVringNum,
    RefusedSetVringAddr,
    RefusedSetVringBase,
    RefusedSetVringEndian,
    RefusedSetMemTable,
    RefusedSetLogBase,
    RefusedSetLogFd,
    RefusedIotlbWrite,
    /// vktest's SET_VRING_KICK/CALL with a queue index past its two queues.
    VktestVringIndex {
        call: bool,
        index: u32,
    },
    WithoutKickCall,
    MissingOneCall,
    WithoutAccessPlatform,
    PlainVhostNet,
    EventfdAsVhost,
    ClosedFd,
    ByNonOwner,
}

/// Ok if `res` failed with `want`; otherwise an error saying what happened.
pub fn expect_errno(res: Result<()>, want: Errno, what: &str) -> Result<()> {
    match res {
        Ok(()) => bail!("{what} succeeded, expected {want}"),
        Err(e) => match errno_of(&e) {
            Some(got) if got == want => Ok(()),
            Some(got) => bail!("{what} failed with {got}, expected {want} ({e:#})"),
            None => Err(e.context(format!("{what}: expected {want}"))),
        },
    }
}

const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM;

fn owned_vhost() -> Result<VhostNetKernel> {
    let v = VhostNetKernel::open()?;
    v.set_owner()?;
    Ok(v)
}

/// The hidden `attach-fd` subcommand, run in a child process: VKTEST_ATTACH_VHOST
/// on two fds inherited from the parent. Returns what it gave: `ok` or
/// `errno N`.
///
/// # Safety
/// `vktest_fd` must be an fd this process holds open for the whole call
/// (the parent passes its own without FD_CLOEXEC and keeps it open until
/// this process has exited).
pub unsafe fn attach_inherited(vktest_fd: RawFd, vhost_fd: RawFd) -> String {
    // SAFETY: the caller guarantees vktest_fd is open for the call; it is
    // only borrowed here.
    let vktest = unsafe { BorrowedFd::borrow_raw(vktest_fd) };
    // SAFETY: VKTEST_ATTACH_VHOST takes the fd number by value.
    match unsafe { ioctl::ioctl_with_val(vktest, ioctl::VKTEST_ATTACH_VHOST, vhost_fd as libc::c_ulong) } {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("errno {}", e as i32),
    }
}

/// Spawn `attach-fd` with the rig's vktest and vhost fds: an attach by a
/// process other than the vhost device's owner (another mm).
fn attach_from_another_process(rig: &Rig) -> Result<String> {
    let (vk, vh) = (rig.vktest.as_fd().as_raw_fd(), rig.vhost.as_fd().as_raw_fd());
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.args(["attach-fd", "--vktest-fd", &vk.to_string(), "--vhost-fd", &vh.to_string()]);
    let keep_open = move || -> std::io::Result<()> {
        for fd in [vk, vh] {
            // SAFETY: fcntl on an fd number touches no memory of ours.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            // SAFETY: as above.
            if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec, where only
    // async-signal-safe calls are allowed: it calls fcntl only.
    unsafe { cmd.pre_exec(keep_open) };
    let out = cmd.output().context("spawn `vhost-kernel-test attach-fd` (the non-owner process)")?;
    anyhow::ensure!(
        out.status.success(),
        "attach-fd child failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The virtio device on vDPA device `dev` and the network interface
/// virtio-net made of it (`/sys/bus/vdpa/devices/DEV/virtioN/net/IF`).
pub fn vdpa_net_interface(dev: &str) -> Result<(String, String)> {
    match vdpa_net_interfaces(SYSFS, dev)?.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no network interface under {VDPA_DEVICES}/{dev} (virtio_vdpa or virtio_net did not bind?)"),
        many => bail!("{} network interfaces under {VDPA_DEVICES}/{dev}, expected one: {many:?}", many.len()),
    }
}

/// `attach_once`: a zero return is not enough. The attach must register a
/// vDPA device that virtio-net turned into an interface, and closing the
/// fds must remove both.
async fn attach_once(limit: Duration) -> Result<()> {
    attach_and_close(Rig::prepare(&ServeOpts::default())?, limit).await
}

/// Attach `rig`, check that its vDPA device and virtio-net interface
/// appeared, close it and check that both went.
pub(crate) async fn attach_and_close(rig: Rig, limit: Duration) -> Result<()> {
    // Subscribed before the attach, so the removal cannot be missed.
    let mut links = LinkWatcher::new(None)?;
    let before = vdpa_devices()?;
    rig.attach()?;
    // virtio_vdpa and virtio-net probe within VKTEST_ATTACH_VHOST: what it
    // created is in sysfs when it returns.
    let new: Vec<String> = vdpa_devices()?.difference(&before).cloned().collect();
    let dev = match new.as_slice() {
        [one] => one.clone(),
        [] => bail!("VKTEST_ATTACH_VHOST returned 0 but no vDPA device appeared in {VDPA_DEVICES}"),
        _ => bail!("VKTEST_ATTACH_VHOST: {} vDPA devices appeared, expected one: {}", new.len(), new.join(", ")),
    };
    let (virtio, ifname) = vdpa_net_interface(&dev).with_context(|| format!("after VKTEST_ATTACH_VHOST ({dev})"))?;
    let index = if_index(&ifname)?;
    // Closes /dev/vhost-net-kernel, /dev/vktest, the TAP and the eventfds.
    drop(rig);
    let what = format!("{ifname} ({virtio} on {dev}) to go away after closing /dev/vktest");
    links.wait_del_link(index, limit, &what).await?;
    // vktest's release unregisters the device before close() returns.
    if Path::new(&format!("{VDPA_DEVICES}/{dev}")).exists() {
        bail!("vDPA device {dev} still registered after closing /dev/vktest and /dev/vhost-net-kernel");
    }
    Ok(())
}

/// Run one check (`limit`: of every wait).
pub async fn run_check(check: Check, limit: Duration) -> Result<Outcome> {
    match check {
        Check::Once => attach_once(limit).await?,
        Check::SameVhostTwice => {
            let rig = Rig::prepare(&ServeOpts::default())?;
            rig.attach()?;
            let vk2 = configured_vktest(&rig.efds, true)?;
            expect_errno(vk2.attach_vhost(rig.vhost.as_fd()), Errno::EBUSY, "second vktest attaching the same vhost")?;
        }
        Check::SetFeaturesAfterAttach => {
            let rig = Rig::prepare(&ServeOpts::default())?;
            rig.attach()?;
            expect_errno(rig.vhost.set_features(FEATURES), Errno::EPERM, "VHOST_SET_FEATURES after attach")?;
        }
        Check::SetVringKickAfterAttach => {
            let rig = Rig::prepare(&ServeOpts::default())?;
            rig.attach()?;
            expect_errno(
                rig.vhost.set_vring_kick(RX_QUEUE, rig.efds.kick[0].as_fd()),
                Errno::EPERM,
                "VHOST_SET_VRING_KICK after attach",
            )?;
        }
        Check::VktestAlreadyAttached => {
            let rig = Rig::prepare(&ServeOpts::default())?;
            rig.attach()?;
            let efds = Eventfds::new()?;
            let other = configured_vhost(&efds, FEATURES)?;
            expect_errno(rig.vktest.attach_vhost(other.as_fd()), Errno::EBUSY, "attaching a second vhost to a vktest")?;
        }
        Check::RefusedSetVringNum => {
            expect_errno(owned_vhost()?.set_vring_num(0, 256), Errno::EPERM, "VHOST_SET_VRING_NUM")?
        }
        Check::RefusedSetVringAddr => {
            let addr = VhostVringAddr::default();
            expect_errno(owned_vhost()?.set_vring_addr(&addr), Errno::EPERM, "VHOST_SET_VRING_ADDR")?
        }
        Check::RefusedSetVringBase => {
            expect_errno(owned_vhost()?.set_vring_base(0, 0), Errno::EPERM, "VHOST_SET_VRING_BASE")?
        }
        Check::RefusedSetVringEndian => {
            expect_errno(owned_vhost()?.set_vring_endian(0, false), Errno::EPERM, "VHOST_SET_VRING_ENDIAN")?
        }
        Check::RefusedSetMemTable => {
            expect_errno(owned_vhost()?.set_mem_table_empty(), Errno::EPERM, "VHOST_SET_MEM_TABLE")?
        }
        Check::RefusedSetLogBase => expect_errno(owned_vhost()?.set_log_base(0), Errno::EPERM, "VHOST_SET_LOG_BASE")?,
        Check::RefusedSetLogFd => expect_errno(owned_vhost()?.set_log_fd(-1), Errno::EPERM, "VHOST_SET_LOG_FD")?,
        Check::RefusedIotlbWrite => {
            // The IOTLB of a kernel device translates to kernel addresses:
            // user space may never fill it, with or without ACCESS_PLATFORM.
            let v = VhostNetKernel::open_writable()?;
            v.set_owner()?;
            v.set_features(FEATURES)?;
            expect_errno(v.write_iotlb_update(0, 4096, 0x1000), Errno::EPERM, "IOTLB update written to the vhost fd")?
        }
        Check::VktestVringIndex { call, index } => {
            let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)?;
            let vk = Vktest::open()?;
            let (res, req) = if call {
                (vk.set_vring_call(index, efd.as_fd()), "VHOST_SET_VRING_CALL")
            } else {
                (vk.set_vring_kick(index, efd.as_fd()), "VHOST_SET_VRING_KICK")
            };
            expect_errno(res, Errno::EINVAL, &format!("vktest {req} index {index}"))?;
        }
        Check::WithoutKickCall => {
            let efds = Eventfds::new()?;
            let vhost = configured_vhost(&efds, FEATURES)?;
            let vk = Vktest::open()?;
            expect_errno(vk.attach_vhost(vhost.as_fd()), Errno::EINVAL, "attach without kick/call eventfds")?;
        }
        Check::MissingOneCall => {
            let efds = Eventfds::new()?;
            let vhost = configured_vhost(&efds, FEATURES)?;
            let vk = configured_vktest(&efds, false)?;
            expect_errno(vk.attach_vhost(vhost.as_fd()), Errno::EINVAL, "attach without queue 1 call eventfd")?;
        }
        Check::WithoutAccessPlatform => {
            let efds = Eventfds::new()?;
            let vhost = configured_vhost(&efds, VIRTIO_F_VERSION_1)?;
            let vk = configured_vktest(&efds, true)?;
            expect_errno(vk.attach_vhost(vhost.as_fd()), Errno::EINVAL, "attach without VIRTIO_F_ACCESS_PLATFORM")?;
        }
        Check::PlainVhostNet => {
            if !node_exists(VHOST_NET_PATH) {
                return Ok(Outcome::Skip(format!("{VHOST_NET_PATH} missing (CONFIG_VHOST_NET)")));
            }
            let efds = Eventfds::new()?;
            let plain = VhostNetKernel::open_plain()?;
            plain.set_owner()?;
            let vk = configured_vktest(&efds, true)?;
            expect_errno(vk.attach_vhost(plain.as_fd()), Errno::EINVAL, "attach of a plain /dev/vhost-net fd")?;
        }
        Check::EventfdAsVhost => {
            let efds = Eventfds::new()?;
            let vk = configured_vktest(&efds, true)?;
            expect_errno(vk.attach_vhost(efds.kick[0].as_fd()), Errno::EINVAL, "attach of an eventfd")?;
        }
        Check::ClosedFd => {
            let efds = Eventfds::new()?;
            let vk = configured_vktest(&efds, true)?;
            let tmp = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)?;
            let closed = tmp.as_fd().as_raw_fd();
            drop(tmp);
            expect_errno(vk.attach_raw(closed), Errno::EBADF, &format!("attach of closed fd {closed}"))?;
        }
        Check::ByNonOwner => {
            let rig = Rig::prepare(&ServeOpts::default())?;
            let said = attach_from_another_process(&rig)?;
            let want = format!("errno {}", Errno::EPERM as i32);
            if said != want {
                bail!("VKTEST_ATTACH_VHOST from a process that does not own the vhost device: {said:?}, expected {want:?} (EPERM)");
            }
            // The refused attempt must leave both devices usable by the owner.
            rig.attach().context("the owner's attach after the refused one")?;
        }
    }
    Ok(Outcome::Pass)
}
