//! `attach_close_loop`: many cycles of open both nodes, wire, attach, wait
//! for the virtio-net interface, close, wait for it to go; then nothing may
//! be left (interfaces, vdpa devices, fds) compared with before.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::net::{if_index, LinkEvent, LinkWatcher, Rtnl};
use crate::serve::{Rig, ServeOpts};
use crate::sys::netns::NetnsGuard;
use crate::sys::virtio::{is_virtio_net, vdpa_devices, vdpa_of_interface, SYSFS};

use super::{
    check_no_damage, check_no_leftovers, setup_pair, terminate_and_wait_gone, verify_two_way, RunOpts, ServeChild,
};

/// Default cycles of `attach_close_loop` (`run --cycles`).
pub const DEFAULT_CYCLES: u32 = 1000;

/// Default cycles per pass of a run of `passes` passes: [`DEFAULT_CYCLES`]
/// spread over them, so that the soak as a whole does them once.
pub fn cycles_per_pass(passes: u32) -> u32 {
    DEFAULT_CYCLES.div_ceil(passes.max(1))
}

/// What a process and the kernel hold that a cycle could leak.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Interfaces of the current namespace, by ifindex.
    pub links: BTreeMap<u32, String>,
    /// Names under /sys/bus/vdpa/devices.
    pub vdpa: BTreeSet<String>,
    /// Our open fds: number -> what /proc/self/fd/N points to.
    pub fds: BTreeMap<i32, String>,
}

/// Our open fds with their targets (the fd of the directory listing itself excluded).
pub fn open_fds() -> Result<BTreeMap<i32, String>> {
    let rd = std::fs::read_dir("/proc/self/fd").context("read /proc/self/fd")?;
    let mut out = BTreeMap::new();
    for e in rd {
        let e = e.context("read /proc/self/fd")?;
        let Ok(n) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        // The directory's own fd is gone by now: unreadable links are skipped.
        if let Ok(t) = std::fs::read_link(e.path()) {
            out.insert(n, t.to_string_lossy().into_owned());
        }
    }
    Ok(out)
}

impl Snapshot {
    pub async fn take(rtnl: &Rtnl) -> Result<Self> {
        let links = rtnl.links().await?.into_iter().map(|l| (l.index, l.name)).collect();
        Ok(Snapshot { links, vdpa: vdpa_devices()?, fds: open_fds()? })
    }

    /// What `after` has that `self` had not, one description per item.
    pub fn leftovers(&self, after: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        for (i, n) in &after.links {
            if !self.links.contains_key(i) {
                out.push(format!("interface {n} (ifindex {i})"));
            }
        }
        for d in after.vdpa.difference(&self.vdpa) {
            out.push(format!("vdpa device {d}"));
        }
        for (fd, t) in &after.fds {
            if self.fds.get(fd) != Some(t) {
                out.push(format!("fd {fd} -> {t}"));
            }
        }
        out
    }
}

/// Wait until every ifindex of `pending` had its RTM_DELLINK.
pub async fn wait_all_gone(w: &mut LinkWatcher, pending: &mut HashSet<u32>, t: Duration, what: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + t;
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let LinkEvent::Del(l) = w.next(left, what).await? {
            pending.remove(&l.index);
        }
    }
    Ok(())
}

/// One cycle: set up (TAP backend included), attach, wait for the g2h link,
/// close (in serve's order: vhost, vktest, TAP, eventfds), wait for the g2h
/// link and the TAP to go. `known` collects every ifindex seen.
async fn one_cycle(w: &mut LinkWatcher, known: &mut HashSet<u32>, n: u32, t: Duration) -> Result<()> {
    let rig = Rig::prepare(&ServeOpts::default())?;
    let tap_idx = if_index(rig.tap.name())?;
    known.insert(tap_idx);
    rig.attach().with_context(|| format!("cycle {n}"))?;
    let g2h = w
        .wait_new_link(known, |l| is_virtio_net(&l.name), t, &format!("the virtio-net interface of cycle {n}"))
        .await?;
    known.insert(g2h.index);
    drop(rig);
    let mut pending: HashSet<u32> = [g2h.index, tap_idx].into();
    wait_all_gone(w, &mut pending, t, &format!("{} and the TAP of cycle {n} to go away after closing", g2h.name)).await
}

/// `cycles` attach/close cycles, then compare with the snapshot from before.
pub async fn attach_close_loop(cycles: u32, t: Duration, diag: &mut dyn FnMut(String)) -> Result<()> {
    let rtnl = Rtnl::new(None)?;
    let mut w = LinkWatcher::new(None)?;
    let mut known: HashSet<u32> = rtnl.links().await?.iter().map(|l| l.index).collect();
    // Netlink sockets above are open before the snapshot and until after the second one.
    let before = Snapshot::take(&rtnl).await?;
    let start = Instant::now();
    for n in 1..=cycles {
        one_cycle(&mut w, &mut known, n, t).await.with_context(|| format!("attach/close cycle {n}/{cycles}"))?;
    }
    let took = start.elapsed();
    diag(format!(
        "{cycles} attach/close cycles in {:.1}s ({:.1} ms/cycle)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / f64::from(cycles.max(1))
    ));
    let after = Snapshot::take(&rtnl).await?;
    let left = before.leftovers(&after);
    if !left.is_empty() {
        bail!("left behind after {cycles} cycles: {}", left.join(", "));
    }
    Ok(())
}

/// `serve_two_at_once`: two serving processes started at the same moment,
/// so that their attaches overlap. Each must report its own pair: the two
/// reports differ (their virtio-net interfaces sit on different vDPA
/// devices), and each TAP reaches the virtio-net interface its serve
/// reported: a serve that took the other one's interface would have no
/// traffic, its TAP being the backend of another vhost device. The pairs
/// are checked one after the other in the run's two namespaces.
pub async fn two_serves_at_once(opts: &RunOpts, diag: &mut dyn FnMut(String)) -> Result<()> {
    let t = opts.timeout;
    let vdpa_before = vdpa_devices()?;
    let mut extra = Vec::new();
    if opts.fake_device {
        extra.push("--fake-device".to_string());
    }
    let (a, b) =
        tokio::join!(ServeChild::spawn_with(&opts.exe, &extra, t), ServeChild::spawn_with(&opts.exe, &extra, t));
    let mut children = [a.context("first serve")?, b.context("second serve")?];
    let [x, y] = [&children[0].ifs, &children[1].ifs];
    diag(format!("serves: h2g={} g2h={} and h2g={} g2h={}", x.h2g, x.g2h, y.h2g, y.g2h));
    anyhow::ensure!(x.h2g != y.h2g, "both serves reported the TAP {}", x.h2g);
    anyhow::ensure!(x.g2h != y.g2h, "both serves reported the virtio-net interface {}", x.g2h);
    if !opts.fake_device {
        let vdpa =
            |name: &str| vdpa_of_interface(SYSFS, name).with_context(|| format!("{name} is not on a vDPA device"));
        let (vx, vy) = (vdpa(&x.g2h)?, vdpa(&y.g2h)?);
        anyhow::ensure!(vx != vy, "{} and {} are both on {vx}", x.g2h, y.g2h);
    }
    for child in children.iter_mut() {
        let ifs = child.ifs.clone();
        let (h2g_ns, g2h_ns) = (opts.h2g_ns(), opts.g2h_ns());
        let mut nsg = NetnsGuard::new();
        nsg.create(&h2g_ns)?;
        nsg.create(&g2h_ns)?;
        let root = Rtnl::new(None)?;
        let pair =
            setup_pair(&root, (ifs.h2g_ifindex, &ifs.h2g), (ifs.g2h_ifindex, &ifs.g2h), &h2g_ns, &g2h_ns, t).await?;
        let (up, down) = verify_two_way(&pair, opts.count, opts.size, t)
            .await
            .with_context(|| format!("between {} and {}, as one serve reported them", ifs.h2g, ifs.g2h))?;
        diag(format!("{} -> {}: {}", ifs.h2g, ifs.g2h, up.summary()));
        diag(format!("{} -> {}: {}", ifs.g2h, ifs.h2g, down.summary()));
        let gone =
            [(h2g_ns.as_str(), pair.h2g_index, ifs.h2g.as_str()), (g2h_ns.as_str(), pair.g2h_index, ifs.g2h.as_str())];
        terminate_and_wait_gone(child, &gone, t).await?;
        for ns in [&h2g_ns, &g2h_ns] {
            check_no_damage(ns)?;
        }
        child.stderr_lines(t).await.into_iter().for_each(|l| diag(format!("serve: {l}")));
        nsg.delete_all()?;
    }
    check_no_leftovers(opts, &vdpa_before).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_name_what_is_new() {
        let before = Snapshot {
            links: [(1, "lo".to_string())].into(),
            vdpa: BTreeSet::new(),
            fds: [(0, "/dev/null".to_string()), (3, "socket:[1]".to_string())].into(),
        };
        assert!(before.leftovers(&before).is_empty());
        let mut after = before.clone();
        after.links.insert(7, "eth3".into());
        after.vdpa.insert("vdpa0".into());
        after.fds.insert(5, "/dev/vktest".into());
        after.fds.insert(3, "socket:[2]".into());
        assert_eq!(
            before.leftovers(&after),
            ["interface eth3 (ifindex 7)", "vdpa device vdpa0", "fd 3 -> socket:[2]", "fd 5 -> /dev/vktest"]
        );
        // Something closed or removed is not a leftover.
        let mut fewer = before.clone();
        fewer.fds.remove(&3);
        fewer.links.clear();
        assert!(before.leftovers(&fewer).is_empty());
    }

    #[test]
    fn a_soak_spreads_the_cycles_over_its_passes() {
        assert_eq!(cycles_per_pass(1), 1000);
        assert_eq!(cycles_per_pass(20), 50);
        assert_eq!(cycles_per_pass(3), 334);
        assert_eq!(cycles_per_pass(0), 1000);
        assert_eq!(cycles_per_pass(5000), 1);
    }

    #[test]
    fn fds_of_this_process() {
        let fds = open_fds().unwrap();
        assert!(fds.contains_key(&0) || fds.contains_key(&1) || fds.contains_key(&2), "{fds:?}");
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let with = open_fds().unwrap();
        assert!(with.values().any(|t| t.ends_with("/status")), "{with:?}");
        drop(f);
        assert!(crate::sys::virtio::dir_names("/nonexistent-dir").unwrap().is_empty());
    }
}
