//! Test points for what series v3 (issue 15) changes in the contract: the
//! worker of a kernel device is a kernel thread that does not share the
//! owner's address space, and no further worker can be made (kernel
//! threads are not accounted to the owner). On a v2 kernel the point
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
use crate::sys::vhost::{VhostNetKernel, VHOST_NET_KERNEL_PATH};

/// One test point of this file (see suite/registry.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V3Check {
    /// The worker made by VHOST_SET_OWNER: a kernel thread without an mm,
    /// no VHOST_NEW_WORKER, and gone once the device is closed.
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

/// `kernel_worker_no_owner_mm`.
fn worker_without_owner_mm(limit: Duration, diag: &mut dyn FnMut(String)) -> Result<Outcome> {
    let comm = format!("vhost-{}", std::process::id());
    let before = tasks_named(&comm)?;
    let v = VhostNetKernel::open()?;
    v.set_owner()?;
    let new: Vec<u32> = tasks_named(&comm)?.difference(&before).copied().collect();
    let [tid] = new[..] else {
        bail!("VHOST_SET_OWNER on {VHOST_NET_KERNEL_PATH}: expected one new task named {comm}, found {new:?}");
    };
    let status =
        fs::read_to_string(format!("/proc/{tid}/status")).with_context(|| format!("read /proc/{tid}/status"))?;
    let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:")).map(str::trim).unwrap_or("?").to_string();
    diag(format!("worker {comm}: task {tid}, parent {ppid}"));
    let mut wrong = Vec::new();
    if std::path::Path::new(&format!("/proc/self/task/{tid}")).exists() {
        wrong.push(format!("the worker (task {tid}) is a thread of the owner process"));
    }
    if has_address_space(&status) {
        wrong.push(format!("the worker has an address space (VmSize in /proc/{tid}/status)"));
    }
    // vhost-net has no worker ioctls (ENOTTY); the core refuses a new
    // worker on a kernel device for the drivers that have them.
    match v.new_worker() {
        Ok(id) => wrong.push(format!("VHOST_NEW_WORKER made worker {id}: kernel threads nobody accounts")),
        Err(e) => match errno_of(&e) {
            Some(Errno::ENOTTY | Errno::EOPNOTSUPP) => {}
            _ => wrong.push(format!("VHOST_NEW_WORKER: {e:#}, expected ENOTTY or EOPNOTSUPP")),
        },
    }
    drop(v);
    if !wait_gone(tid, limit) {
        wrong.push(format!("the worker (task {tid}) is still there {:.0}s after the close", limit.as_secs_f64()));
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
