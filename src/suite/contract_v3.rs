//! Test points for what series v3 (issue 15) changes in the contract: the
//! worker of a kernel device is a kernel thread that does not share the
//! owner's address space, whatever VHOST_SET_FORK_FROM_OWNER asks, and no
//! further worker can be made (kernel threads are not accounted to the
//! owner). On a v2 kernel the point
//! fails: the worker is a thread of the owner with the owner's mm. Whether
//! a kernel thread borrows the owner's mm (kthread_use_mm) is not visible
//! from user space (/proc shows no memory for any kernel thread); `bench
//! --profile` shows its cost instead.

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;

use crate::errno_of;
use crate::report::ktap::Outcome;
use crate::serve::rig::Rig;
use crate::serve::ServeOpts;
use crate::sys::ioctl::{VHOST_FORK_OWNER_KTHREAD, VHOST_FORK_OWNER_TASK};
use crate::sys::vhost::VhostNetKernel;
use crate::sys::virtio::vdpa_devices;

/// One test point of this file (see suite/registry.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V3Check {
    /// The worker made by VHOST_SET_OWNER: a kernel thread without an mm,
    /// no other kind or number of workers, and gone once the device is
    /// closed, before and after a vktest took it over.
    WorkerWithoutOwnerMm,
}

/// Task ids whose name is `comm`, over every process and thread.
fn tasks_named(comm: &str) -> Result<BTreeSet<u32>> {
    let mut tids = BTreeSet::new();
    for proc_entry in fs::read_dir("/proc").context("read /proc")? {
        let Ok(proc_entry) = proc_entry else { continue };
        if proc_entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        // A process may end while it is read: what is gone is not ours.
        let Ok(tasks) = fs::read_dir(proc_entry.path().join("task")) else { continue };
        for task in tasks.flatten() {
            let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else { continue };
            if fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim_end() == comm) {
                tids.insert(tid);
            }
        }
    }
    Ok(tids)
}

/// Whether `/proc/TID/status` shows an address space of its own: a user
/// task does (`VmSize`), a kernel thread never does.
fn has_address_space(status: &str) -> bool {
    status.lines().any(|l| l.starts_with("VmSize:"))
}

/// Wait until task `tid` is gone, within `limit`. A closed device's
/// release stops its kernel thread before close() returns, so this only
/// covers the reaping of an exiting task.
fn wait_gone(tid: u32, limit: Duration) -> bool {
    let path = format!("/proc/{tid}");
    let start = Instant::now();
    while std::path::Path::new(&path).exists() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

/// The one task named `comm` that is not in `before`.
fn new_task(before: &BTreeSet<u32>, comm: &str, after: &str) -> Result<u32> {
    let new: Vec<u32> = tasks_named(comm)?.difference(before).copied().collect();
    match new[..] {
        [tid] => Ok(tid),
        _ => bail!("{after}: expected one new task named {comm}, found {new:?}"),
    }
}

/// What is wrong with worker `tid`: a thread of ours, an address space of
/// its own, or a parent other than kthreadd (pid 2).
fn worker_faults(tid: u32, diag: &mut dyn FnMut(String)) -> Result<Vec<String>> {
    let status =
        fs::read_to_string(format!("/proc/{tid}/status")).with_context(|| format!("read /proc/{tid}/status"))?;
    let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:")).map(str::trim).unwrap_or("?").to_string();
    diag(format!("worker task {tid}, parent {ppid}"));
    let mut wrong = Vec::new();
    if std::path::Path::new(&format!("/proc/self/task/{tid}")).exists() {
        wrong.push(format!("the worker (task {tid}) is a thread of the owner process"));
    }
    if has_address_space(&status) {
        wrong.push(format!("the worker has an address space (VmSize in /proc/{tid}/status)"));
    }
    if ppid != "2" {
        wrong.push(format!("the worker's parent is {ppid}, not kthreadd (2)"));
    }
    Ok(wrong)
}

/// Whether `e` says the kernel lacks the fork-owner ioctls (ENOTTY without
/// CONFIG_VHOST_ENABLE_FORK_OWNER_CONTROL); said as a diagnostic.
fn fork_owner_absent(e: &anyhow::Error, what: &str, diag: &mut dyn FnMut(String)) -> bool {
    let absent = errno_of(e) == Some(Errno::ENOTTY);
    if absent {
        diag(format!("{what}: ENOTTY (CONFIG_VHOST_ENABLE_FORK_OWNER_CONTROL is off)"));
    }
    absent
}

/// `r` must fail with `want`; else the fault, said.
fn refused(r: Result<()>, want: Errno, what: &str) -> Option<String> {
    match r {
        Ok(()) => Some(format!("{what} succeeded, expected {want}")),
        Err(e) if errno_of(&e) == Some(want) => None,
        Err(e) => Some(format!("{what}: {e:#}, expected {want}")),
    }
}

/// `kernel_worker_no_owner_mm`, on a device that is only owned, then on
/// one a vktest took over.
fn worker_without_owner_mm(limit: Duration, diag: &mut dyn FnMut(String)) -> Result<Outcome> {
    // The worker is named after the thread that calls VHOST_SET_OWNER.
    let comm = format!("vhost-{}", nix::unistd::gettid());
    let mut wrong = Vec::new();

    let before = tasks_named(&comm)?;
    let v = VhostNetKernel::open()?;
    let set = "VHOST_SET_FORK_FROM_OWNER(TASK)";
    match v.set_fork_from_owner(VHOST_FORK_OWNER_TASK) {
        Err(e) if fork_owner_absent(&e, set, diag) => {}
        r => wrong.extend(refused(r, Errno::EOPNOTSUPP, set)),
    }
    v.set_owner()?;
    let get = "VHOST_GET_FORK_FROM_OWNER";
    match v.get_fork_from_owner() {
        Ok(VHOST_FORK_OWNER_KTHREAD) => {}
        Ok(kind) => wrong.push(format!("{get} says {kind}, not KTHREAD (0)")),
        Err(e) if fork_owner_absent(&e, get, diag) => {}
        Err(e) => wrong.push(format!("{get}: {e:#}")),
    }
    let tid = new_task(&before, &comm, "VHOST_SET_OWNER")?;
    wrong.extend(worker_faults(tid, diag)?);
    wrong.extend(refused(v.new_worker().map(|_| ()), Errno::EOPNOTSUPP, "VHOST_NEW_WORKER"));
    drop(v);
    if !wait_gone(tid, limit) {
        wrong.push(format!("the worker (task {tid}) is still there {:.0}s after the close", limit.as_secs_f64()));
    }

    // Taken over: the worker is the same, and goes when vktest lets go.
    let before = tasks_named(&comm)?;
    let rig = Rig::prepare(&ServeOpts::default())?;
    let tid = new_task(&before, &comm, "the serve flow")?;
    rig.attach().context("VKTEST_ATTACH_VHOST")?;
    diag(format!(
        "attached to {}",
        vdpa_devices().map(|d| d.into_iter().collect::<Vec<_>>().join(",")).unwrap_or_default()
    ));
    wrong.extend(worker_faults(tid, diag)?);
    drop(rig);
    if !wait_gone(tid, limit) {
        wrong.push(format!(
            "the worker (task {tid}) of the attached device is still there {:.0}s after closing both nodes",
            limit.as_secs_f64()
        ));
    }
    if !wrong.is_empty() {
        bail!("{}", wrong.join("; "));
    }
    Ok(Outcome::Pass)
}

pub fn run_v3_check(check: V3Check, limit: Duration, diag: &mut dyn FnMut(String)) -> Result<Outcome> {
    match check {
        V3Check::WorkerWithoutOwnerMm => worker_without_owner_mm(limit, diag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_threads_have_no_vm_lines() {
        assert!(has_address_space("Name:\tvhost-42\nVmPeak:\t  1 kB\nVmSize:\t  9000 kB\n"));
        assert!(!has_address_space("Name:\tvhost-42\nPPid:\t2\nThreads:\t1\n"));
    }

    #[test]
    fn this_thread_is_found_by_name() {
        let comm = fs::read_to_string("/proc/thread-self/comm").unwrap();
        let tids = tasks_named(comm.trim_end()).unwrap();
        let me = nix::unistd::gettid().as_raw() as u32;
        assert!(tids.contains(&me), "{tids:?} lacks {me}");
        assert!(tasks_named("no-such-task-name").unwrap().is_empty());
    }
}
