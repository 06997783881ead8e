//! Named network namespaces, compatible with `ip netns`: a namespace NAME is
//! kept alive by a bind mount of a thread's `ns/net` onto `/run/netns/NAME`,
//! and `/run/netns` is a shared mount so other mount namespaces see it.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::thread::{Scope, ScopedJoinHandle};

use anyhow::{anyhow, Context, Result};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

pub const NETNS_RUN_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_RUN_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Names under /run/netns (what `ip netns list` shows).
pub fn list() -> Vec<String> {
    let Ok(dir) = fs::read_dir(NETNS_RUN_DIR) else { return Vec::new() };
    let mut names: Vec<String> =
        dir.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Make /run/netns exist and be a shared mount point, as iproute2 does.
fn prepare_run_dir() -> Result<()> {
    fs::create_dir_all(NETNS_RUN_DIR).with_context(|| format!("mkdir {NETNS_RUN_DIR}"))?;
    let mut bound = false;
    loop {
        match mount(None::<&str>, NETNS_RUN_DIR, Some("none"), MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>) {
            Ok(()) => return Ok(()),
            Err(Errno::EINVAL) if !bound => {
                // Not a mount point yet: bind it onto itself, then retry.
                mount(
                    Some(NETNS_RUN_DIR),
                    NETNS_RUN_DIR,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .with_context(|| format!("bind-mount {NETNS_RUN_DIR} onto itself"))?;
                bound = true;
            }
            Err(e) => return Err(e).with_context(|| format!("make {NETNS_RUN_DIR} a shared mount")),
        }
    }
}

/// Create the named namespace (fails if it already exists).
pub fn create(name: &str) -> Result<()> {
    anyhow::ensure!(!name.is_empty() && !name.contains('/'), "bad namespace name {name:?}");
    prepare_run_dir()?;
    let p = path(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&p)
        .with_context(|| format!("create {} (namespace {name} already exists?)", p.display()))?;
    let target = p.clone();
    // A fresh thread unshares its network namespace and pins it with a bind
    // mount; the thread then ends and the rest of the process is unaffected.
    let res = std::thread::scope(|s| {
        s.spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
            mount(Some("/proc/thread-self/ns/net"), &target, Some("none"), MsFlags::MS_BIND, None::<&str>)
                .with_context(|| format!("bind-mount new netns onto {}", target.display()))
        })
        .join()
        .map_err(|_| anyhow!("namespace creation thread panicked"))?
    });
    if let Err(e) = res {
        let _ = fs::remove_file(&p);
        return Err(e.context(format!("create network namespace {name}")));
    }
    Ok(())
}

/// Delete the named namespace (lazy unmount + unlink, like `ip netns del`).
pub fn delete(name: &str) -> Result<()> {
    let p = path(name);
    match umount2(&p, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("umount {}", p.display())),
    }
    match fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", p.display())),
    }
}

/// Open the namespace file (for setns or IFLA_NET_NS_FD).
pub fn open(name: &str) -> Result<File> {
    let p = path(name);
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&p)
        .with_context(|| format!("open network namespace {}", p.display()))
}

/// Start `f` on a new thread of `scope`, named `thread`, that has joined
/// network namespace `name` before calling it. Sockets created there stay
/// bound to that namespace wherever they are used afterwards. The thread is
/// scoped so that `f` may borrow from the caller; the caller joins it (or the
/// scope does when it ends).
pub fn spawn_in<'scope, 'env, R, F>(
    scope: &'scope Scope<'scope, 'env>,
    name: &str,
    thread: &str,
    f: F,
) -> Result<ScopedJoinHandle<'scope, Result<R>>>
where
    F: FnOnce() -> Result<R> + Send + 'scope,
    R: Send + 'scope,
{
    let file = open(name)?;
    let label = name.to_string();
    std::thread::Builder::new()
        .name(thread.into())
        .spawn_scoped(scope, move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into network namespace {label}"))?;
            // Joined: the namespace no longer needs this reference.
            drop(file);
            f()
        })
        .with_context(|| format!("spawn thread {thread} for network namespace {name}"))
}

/// Run `f` on a dedicated thread that has joined namespace `name` (or stays
/// in the caller's namespace for `None`) and wait for it.
pub fn run_in<R, F>(name: Option<&str>, f: F) -> Result<R>
where
    F: FnOnce() -> Result<R> + Send,
    R: Send,
{
    let Some(name) = name else {
        // Already where the caller is: no thread needed.
        return f();
    };
    std::thread::scope(|s| {
        spawn_in(s, name, "netns-run", f)?.join().map_err(|_| anyhow!("thread in network namespace {name} panicked"))?
    })
}

/// Deletes its namespaces when dropped (also on early return or cancellation).
#[derive(Debug, Default)]
pub struct NetnsGuard {
    names: Vec<String>,
}

impl NetnsGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Create `name` and remember to delete it.
    pub fn create(&mut self, name: &str) -> Result<()> {
        create(name)?;
        self.names.push(name.to_string());
        Ok(())
    }

    /// Delete all now; returns the first error.
    pub fn delete_all(&mut self) -> Result<()> {
        let mut first = Ok(());
        for n in self.names.drain(..) {
            if let Err(e) = delete(&n) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = self.delete_all();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// The namespace a thread is in, as the inode of its ns/net.
    fn current_netns() -> u64 {
        fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
    }

    #[test]
    #[ignore = "needs root"]
    fn threads_join_the_named_namespace() {
        let name = format!("vkt-netns-{}", std::process::id());
        let mut g = NetnsGuard::new();
        g.create(&name).unwrap();
        let inode = fs::metadata(path(&name)).unwrap().ino();
        let here = current_netns();
        assert_ne!(inode, here);
        let seen = std::thread::scope(|s| spawn_in(s, &name, "probe", || Ok(current_netns())).unwrap().join().unwrap());
        assert_eq!(seen.unwrap(), inode);
        assert_eq!(run_in(Some(&name), || Ok(current_netns())).unwrap(), inode);
        assert_eq!(run_in(None, || Ok(current_netns())).unwrap(), here, "None stays here");
        assert_eq!(current_netns(), here, "the caller's thread never moves");
        g.delete_all().unwrap();
        let err = format!("{:#}", run_in(Some(&name), || Ok(())).unwrap_err());
        assert!(err.contains("open network namespace") && err.contains(&name), "{err}");
        // A file that is no namespace: setns refuses it, and says which.
        prepare_run_dir().unwrap();
        let bogus = format!("vkt-notns-{}", std::process::id());
        File::create(path(&bogus)).unwrap();
        let err = format!("{:#}", run_in(Some(&bogus), || Ok(())).unwrap_err());
        fs::remove_file(path(&bogus)).unwrap();
        assert!(err.contains(&format!("setns into network namespace {bogus}")), "{err}");
    }
}
