//! Giving up privilege in this process, for the checks that the device
//! nodes refuse callers without CAP_NET_ADMIN in the initial user namespace:
//! one capability dropped by capset(2), or a new user namespace whose root
//! is root only there. Both are done by a helper process the suite spawns
//! for the purpose (`open-probe`): neither can be undone.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};

/// `CAP_NET_ADMIN` (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, as two 32-bit data structs.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` (one per 32 capabilities).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Remove capability `cap` from the effective, permitted and inheritable
/// sets of the calling thread (the only thread of the helper process). The
/// other capabilities stay, so that whatever then fails, fails for want of
/// this one. Nothing is exec'd afterwards, so the bounding set (which would
/// give a uid-0 exec its capabilities back) does not matter.
pub fn drop_capability(cap: u32) -> Result<()> {
    let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes one header (version, on a mismatch) and, for
    // version 3, two data structs: exactly the two objects passed.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) };
    Errno::result(r).context("capget")?;
    for set in [&mut data[word].effective, &mut data[word].permitted, &mut data[word].inheritable] {
        *set &= !bit;
    }
    // SAFETY: capset reads the header and two data structs, and writes
    // nothing of ours.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) };
    Errno::result(r).with_context(|| format!("capset without capability {cap}"))?;
    Ok(())
}

/// Whether the kernel has user namespaces (CONFIG_USER_NS): without them
/// there is no /proc/self/ns/user.
pub fn user_namespaces_available() -> bool {
    Path::new("/proc/self/ns/user").exists()
}

fn write_proc(path: &str, text: &str) -> Result<()> {
    let mut f = OpenOptions::new().write(true).open(path).with_context(|| format!("open {path}"))?;
    f.write_all(text.as_bytes()).with_context(|| format!("write {text:?} to {path}"))
}

/// Move this process into a new user namespace and become its root: uid 0
/// and gid 0 mapped onto our own (0, so root inside is root's uid outside,
/// with no capability outside). The process must be single-threaded
/// (unshare refuses CLONE_NEWUSER otherwise, with EINVAL).
pub fn become_root_of_new_user_namespace() -> Result<()> {
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    unshare(CloneFlags::CLONE_NEWUSER).context("unshare(CLONE_NEWUSER)")?;
    // An unprivileged gid_map write needs setgroups denied first.
    write_proc("/proc/self/setgroups", "deny")?;
    write_proc("/proc/self/uid_map", &format!("0 {uid} 1"))?;
    write_proc("/proc/self/gid_map", &format!("0 {gid} 1"))?;
    Ok(())
}
