//! `fuzz`: random but valid-shaped sequences of the ioctls of
//! /dev/vhost-net-kernel and /dev/vktest. Each call has exactly one right
//! result in the state its objects are in ([`Model`], which follows every
//! call's result); any other result, a kernel report, or anything left
//! behind after a phase fails the run.
//!
//! The run is split into phases (one KTAP test point each). A phase starts
//! from nothing, draws its calls from its own generator (seeded from the
//! run's seed and the phase number), closes everything it opened and checks
//! that no interface, vdpa device or fd is left. A phase can be replayed
//! alone with `--seed S --phase K --count N`.
//!
//! Where things are: [`ops`] (the generator and the calls it draws),
//! [`model`] (the one right answer for each call in each state), [`pool`]
//! (the objects of a phase, drawing and making the calls), and here the
//! phases and the KTAP run.
//!
//! The state of a vhost fd (V): owned (SET_OWNER succeeded), IOTLB (the last
//! successful SET_FEATURES had ACCESS_PLATFORM), attached (taken over by a
//! vktest: for good, also after that vktest or V's own fd is closed), its
//! features and a TAP backend per queue. Of a vktest fd (K): its features
//! (VKTEST_SET_FEATURES; the RFC's set by default), kick and call set per
//! queue (eventfd, not -1), attached
//! (to the fd it was given; until K is closed, also once that fd is closed).
//! The result of each call, the conditions in the order the kernel checks
//! them (kernel-patches/0002-0004 and the 6.12 code they call), first match:
//!
//! | call | conditions, in order -> result |
//! |---|---|
//! | refused on V (VRING_NUM/ADDR/BASE/ENDIAN, MEM_TABLE, LOG_BASE/FD) | EPERM |
//! | any other ioctl on V | V attached -> EPERM, then as below |
//! | VHOST_SET_OWNER | owned -> EBUSY; ok |
//! | VHOST_GET_FEATURES | ok (no owner needed; the offered set is checked by the point get_features_no_log_all) |
//! | VHOST_SET_FEATURES | bits outside VHOST_NET_FEATURES less LOG_ALL and RING_RESET -> EOPNOTSUPP; ok |
//! | VHOST_SET_VRING_KICK/CALL on V | not owned -> EPERM; index >= 2 -> ENOBUFS; closed fd -> EBADF; not an eventfd (nor -1) -> EINVAL; ok |
//! | VHOST_NET_SET_BACKEND | not owned -> EPERM; index >= 2 -> ENOBUFS; not a TAP (nor -1) -> ENOTSOCK; ok |
//! | VHOST_SET/GET_VRING_BUSYLOOP_TIMEOUT | not owned -> EPERM; index >= 2 -> ENOBUFS; ok (any timeout) |
//! | NULL argument on V | KICK or SET_VRING_BUSYLOOP_TIMEOUT and not owned -> EPERM; EFAULT |
//! | vktest ioctl on V | not owned -> EPERM; ATTACH (arg 700) -> EFAULT; ENOTTY |
//! | VHOST_SET_VRING_KICK/CALL on K | index >= 2 -> EINVAL; closed fd -> EBADF; not an eventfd (nor -1) -> EINVAL; K attached -> EBUSY; ok |
//! | VKTEST_SET_FEATURES | invalid set -> EINVAL; K attached -> EBUSY; ok |
//! | VKTEST_ATTACH_VHOST fd | K attached -> EBUSY; a kick or call missing -> EINVAL; closed fd or -1 -> EBADF; not a -kernel vhost -> EINVAL; V not owned -> EPERM; V attached -> EBUSY; no IOTLB -> EINVAL; a queue without backend -> ENOTCONN; K's VERSION_1/MRG_RXBUF/EVENT_IDX differ from V's features, or K offers INDIRECT_DESC V lacks -> EINVAL; ok |
//! | NULL argument on K | EFAULT |
//! | vhost ioctl on K, eventfd, /dev/null | ENOTTY |
//! | ioctl of either node on a TAP | EINVAL |
//! | write of u64 v to an eventfd (non-blocking) | v = ULLONG_MAX -> EINVAL; counter + v >= ULLONG_MAX -> EAGAIN; ok (8 bytes) |
//! | read of an eventfd (non-blocking) | counter 0 -> EAGAIN; ok (counter back to 0) |
//!
//! The counter of an eventfd is ours to know until a SET_VRING_KICK/CALL
//! gives it to the kernel, which may then signal (+1) and read it: from
//! then on a write that stays 2^40 below the limit must succeed, nearer it
//! EAGAIN is allowed too, and a read may give either answer.
//!
//! With `--threads N` ([`threads`]) the calls run in rounds, one per thread,
//! at the same time on the same objects (opens and closes between rounds).
//! A round's answers are right if some order of its calls gives each the
//! answer of this table in the state the calls before it left (from one
//! of the states earlier rounds left possible); the states all such orders
//! reach are where the next round starts. So a SET_FEATURES without
//! ACCESS_PLATFORM and an attach that both succeed fail the round (before
//! the attach, the attach has no IOTLB; after it, SET_FEATURES is EPERM).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::net::{LinkWatcher, Rtnl};
use crate::report::ktap::{Ktap, Outcome};
use crate::suite::races::{wait_all_gone, Snapshot};
use crate::suite::{report_not_run, skip_reason, LogAccount, LogVerdict, NotRun, BETWEEN_POINTS};
use crate::sys::kmsg::LEAK_CHECK;
use crate::sys::vhost::{node_exists, VHOST_NET_PATH};

pub mod model;
pub mod ops;
pub mod pool;
mod threads;

pub use crate::sys::vhost::vktest_features_valid;
use model::VHOST_F_LOG_ALL;
pub use model::{Expect, Model, VHOST_NET_FEATURES};
use ops::REFUSED;
pub use ops::{fresh_seed, phase_rng, FdArg, Kind, Op, Rng};
use pool::Pool;

/// Calls per phase with `--count`.
pub const PHASE_CALLS: u64 = 250;
/// Phases of a `--duration` run.
pub const DURATION_PHASES: u64 = 10;
/// Most objects open at once in a phase.
const MAX_OBJS: usize = 28;
/// Most TAPs open at once (each is an interface).
const MAX_TAPS: usize = 2;

/// How long a fuzz run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Count(u64),
    Duration(Duration),
}

#[derive(Debug, Clone)]
pub struct FuzzOpts {
    pub seed: u64,
    pub limit: Limit,
    /// Run only this phase (replay).
    pub phase: Option<u64>,
    /// Limit of every wait (interfaces to go, kernel log markers).
    pub timeout: Duration,
    pub kmsg_path: String,
    /// Threads making the calls at once (1: one call at a time, each with
    /// its one right answer; more: rounds of concurrent calls, see [`threads`]).
    pub threads: usize,
}

/// The phases of a run: (phase number, calls or None for time-bounded, time share).
fn plan(opts: &FuzzOpts) -> Vec<(u64, Option<u64>, Option<Duration>)> {
    match (opts.limit, opts.phase) {
        (Limit::Count(n), Some(k)) => vec![(k, Some(n), None)],
        (Limit::Duration(d), Some(k)) => vec![(k, None, Some(d))],
        (Limit::Count(n), None) => {
            let phases = n.div_ceil(PHASE_CALLS).max(1);
            (1..=phases).map(|k| (k, Some(PHASE_CALLS.min(n - (k - 1) * PHASE_CALLS)), None)).collect()
        }
        (Limit::Duration(d), None) => {
            (1..=DURATION_PHASES).map(|k| (k, None, Some(d / DURATION_PHASES as u32))).collect()
        }
    }
}

/// Counts of results, for the phase summary.
#[derive(Default)]
struct Tally {
    calls: u64,
    ok: u64,
    attached: u64,
    errnos: BTreeMap<String, u64>,
    /// Concurrent mode: rounds, and the most states a round left possible.
    rounds: u64,
    max_states: usize,
    /// Eventfd writes and busy-poll timeouts, as made (any answer).
    writes: u64,
    busyloops: u64,
}

impl Tally {
    fn count(&mut self, op: &Op, res: Result<(), nix::errno::Errno>) {
        self.calls += 1;
        match op {
            Op::WriteEventfd(..) => self.writes += 1,
            Op::SetBusyloop { .. } | Op::GetBusyloop { .. } => self.busyloops += 1,
            _ => {}
        }
        match res {
            Ok(()) => {
                self.ok += 1;
                if matches!(op, Op::Attach { .. }) {
                    self.attached += 1;
                }
            }
            Err(e) => *self.errnos.entry(format!("{e:?}")).or_default() += 1,
        }
    }

    fn summary(&self) -> String {
        let e: Vec<String> = self.errnos.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let rounds = if self.rounds > 0 {
            format!("; {} rounds, at most {} possible states", self.rounds, self.max_states)
        } else {
            String::new()
        };
        format!(
            "{} calls: {} ok, {} attaches, {} eventfd writes, {} busyloop calls{rounds}; {}",
            self.calls,
            self.ok,
            self.attached,
            self.writes,
            self.busyloops,
            e.join(", ")
        )
    }
}

/// One phase: calls, then close everything and check nothing is left.
async fn phase(
    opts: &FuzzOpts,
    k: u64,
    calls: Option<u64>,
    share: Option<Duration>,
    diag: &mut dyn FnMut(String),
) -> Result<Outcome> {
    let t = opts.timeout;
    let rtnl = Rtnl::new(None)?;
    let mut w = LinkWatcher::new(None)?;
    let before = Snapshot::take(&rtnl).await?;
    let mut rng = phase_rng(opts.seed, k);
    let mut pool = Pool { plain_vhost: node_exists(VHOST_NET_PATH), ..Default::default() };
    let deadline = share.map(|d| Instant::now() + d);
    let mut tally = Tally::default();
    let mut bad = Vec::new();
    let threads = if opts.threads > 1 { format!(" --threads {}", opts.threads) } else { String::new() };
    let mut flag = |n: u64, what: String| {
        if bad.len() < 10 {
            diag(format!("unexpected: phase {k} call {n}: {what}"));
            diag(format!("replay: vhost-kernel-test fuzz --seed {} --phase {k} --count {n}{threads}", opts.seed));
        }
        bad.push(n);
    };
    if opts.threads > 1 {
        let mut budget = threads::Budget { calls, deadline, flag: &mut flag };
        threads::run(&mut pool, &mut rng, opts.threads, &mut budget, &mut tally)
            .with_context(|| format!("phase {k}"))?;
    } else {
        let mut model = Model::default();
        let mut n = 0u64;
        'outer: loop {
            for op in pool.draw(&mut rng) {
                if calls.is_some_and(|c| n >= c) || deadline.is_some_and(|d| Instant::now() >= d) {
                    break 'outer;
                }
                n += 1;
                let res = pool.run(&op).with_context(|| format!("phase {k} call {n}: {op}"))?;
                tally.count(&op, res);
                if let Some(why) = model.step(&op, res) {
                    flag(n, format!("{op}: {why}"));
                }
            }
        }
    }
    diag(format!("phase {k}: {}", tally.summary()));
    drop(pool);
    // Every interface of the phase must go (their removal may trail the close).
    let now: HashSet<u32> = rtnl.links().await?.iter().map(|l| l.index).collect();
    let mut pending: HashSet<u32> = now.into_iter().filter(|i| !before.links.contains_key(i)).collect();
    wait_all_gone(&mut w, &mut pending, t, &format!("the interfaces of fuzz phase {k} to go away")).await?;
    let after = Snapshot::take(&rtnl).await?;
    let left = before.leftovers(&after);
    if !left.is_empty() {
        anyhow::bail!("left behind after phase {k}: {}", left.join(", "));
    }
    Ok(if bad.is_empty() { Outcome::Pass } else { Outcome::Fail })
}

/// `vhost-kernel-test fuzz`: KTAP, one test point per phase; returns the exit code.
pub async fn fuzz(opts: &FuzzOpts, out: impl std::io::Write) -> i32 {
    let phases = plan(opts);
    let mut k = Ktap::new(out);
    // Under a kmemleak kernel the phases are followed by the leak check.
    let leak_check = crate::sys::kmsg::kmemleak_unavailable().is_none();
    let watched = !opts.kmsg_path.is_empty();
    k.header(phases.len() + usize::from(leak_check) + usize::from(watched));
    k.diag(&format!("seed: {}", opts.seed));
    let skip_all = |k: &mut Ktap<_>, reason: &str| {
        for (p, ..) in &phases {
            k.result(&format!("fuzz_phase_{p}"), &Outcome::Skip(reason.to_string()));
        }
        if leak_check {
            k.result(LEAK_CHECK, &Outcome::Skip(reason.to_string()));
        }
        if watched {
            k.result(BETWEEN_POINTS, &Outcome::Skip(reason.to_string()));
        }
    };
    if let Some(reason) = skip_reason() {
        return report_not_run(&mut k, NotRun::Skip(reason), skip_all);
    }
    if leak_check {
        crate::suite::leak_baseline(&mut k);
    }
    let kmsg = match crate::suite::watch_kernel_log(&opts.kmsg_path, &mut k) {
        Ok(m) => m,
        Err(reason) => return report_not_run(&mut k, NotRun::Fail(reason), skip_all),
    };
    let mut account = kmsg.as_ref().map(|m| LogAccount::new(m, 0, opts.timeout));
    for (p, calls, share) in phases {
        let name = format!("fuzz_phase_{p}");
        let start = account.as_mut().map(|a| a.begin(&format!("fuzz-start-{p}")));
        let mut outcome = match phase(opts, p, calls, share, &mut |d: String| k.diag(&d)).await {
            Ok(o) => o,
            Err(e) => {
                k.diag(&format!("{name}: {e:#}"));
                Outcome::Fail
            }
        };
        if let (Some(a), Some(w)) = (account.as_mut(), start) {
            if a.end(&mut k, &name, w, &format!("fuzz-end-{p}")) != LogVerdict::Clean {
                k.diag(&format!("replay: vhost-kernel-test fuzz --seed {} --phase {p} --count N", opts.seed));
                outcome = Outcome::Fail;
            }
        }
        k.result(&name, &outcome);
    }
    if leak_check {
        let start = account.as_mut().map(|a| a.begin("fuzz-start-leak"));
        let mut outcome = crate::suite::leak_check(&mut |d: String| k.diag(&d)).await.unwrap_or_else(|e| {
            k.diag(&format!("{LEAK_CHECK}: {e:#}"));
            Outcome::Fail
        });
        if let (Some(a), Some(w)) = (account.as_mut(), start) {
            if a.end(&mut k, LEAK_CHECK, w, "fuzz-end-leak") != LogVerdict::Clean {
                outcome = Outcome::Fail;
            }
        }
        k.result(LEAK_CHECK, &outcome);
    }
    if let Some(a) = account.as_mut() {
        a.between_points(&mut k, "fuzz-end");
    }
    k.totals();
    k.exit_code()
}

#[cfg(test)]
mod tests;
