//! `fuzz --threads N`: N threads make the calls of a phase on the same
//! objects at the same time, in rounds. A round gives each thread its next
//! call (from its own queue of drawn calls: a wiring recipe stays in order
//! on its thread while the other threads' calls land between its steps);
//! the threads meet at a barrier and make their calls together, and the
//! round ends when all have answered. Opens and closes are made between
//! rounds, by this thread alone: a close racing a call could hand the
//! call's fd number to the next open, and the call would then go to
//! another object than the model thinks.
//!
//! The oracle of a round is [`linearize`]: the kernel must have run the
//! round's calls in some order, each answering as in the state the calls
//! before it left; the possible states after the round (more than one when
//! orders with different effects all fit) are what the next round starts
//! from. A round that no order explains is reported with each call, its
//! answer, and what it would have had alone in the first possible state.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Barrier, RwLock};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use nix::errno::Errno;

use super::model::{linearize, Answered};
use super::pool::Pool;
use super::{Model, Op, Rng, Tally};

/// What a worker thread does in a round.
enum Msg {
    Call(Op),
    /// Only pass the barrier (the budget of calls ended mid-round).
    Idle,
    Stop,
}

type Answer = (usize, Option<Result<Result<(), Errno>>>);

/// The budget of a phase and where wrong answers go.
pub(super) struct Budget<'a> {
    pub(super) calls: Option<u64>,
    pub(super) deadline: Option<Instant>,
    /// Called with the number of the call that ended a wrong round, and why.
    pub(super) flag: &'a mut dyn FnMut(u64, String),
}

impl Budget<'_> {
    fn spent(&self, n: u64) -> bool {
        self.calls.is_some_and(|c| n >= c) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Run the calls of a phase on `threads` threads; the objects stay in `pool`.
pub(super) fn run(
    pool: &mut Pool,
    rng: &mut Rng,
    threads: usize,
    budget: &mut Budget,
    tally: &mut Tally,
) -> Result<()> {
    let shared = RwLock::new(std::mem::take(pool));
    let barrier = Barrier::new(threads);
    let res = std::thread::scope(|sc| {
        let (res_tx, res_rx) = mpsc::channel::<Answer>();
        let mut txs = Vec::new();
        for i in 0..threads {
            let (tx, rx) = mpsc::channel::<Msg>();
            txs.push(tx);
            let (res_tx, shared, barrier) = (res_tx.clone(), &shared, &barrier);
            sc.spawn(move || {
                while let Ok(msg) = rx.recv() {
                    let op = match msg {
                        Msg::Stop => break,
                        Msg::Idle => None,
                        Msg::Call(op) => Some(op),
                    };
                    // All threads of the round start their calls together.
                    barrier.wait();
                    let r = op.map(|op| {
                        let p = shared.read().map_err(|_| anyhow!("fuzz pool lock poisoned"))?;
                        p.call(&op)
                    });
                    if res_tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        // Only the workers hold senders now: if they all ended, recv fails
        // instead of waiting forever.
        drop(res_tx);
        let r = rounds(&shared, &txs, &res_rx, rng, budget, tally);
        for tx in &txs {
            // A worker that already ended has nothing to stop.
            let _ = tx.send(Msg::Stop);
        }
        r
    });
    *pool = shared.into_inner().map_err(|_| anyhow!("fuzz pool lock poisoned"))?;
    res
}

fn rounds(
    shared: &RwLock<Pool>,
    txs: &[mpsc::Sender<Msg>],
    res_rx: &mpsc::Receiver<Answer>,
    rng: &mut Rng,
    budget: &mut Budget,
    tally: &mut Tally,
) -> Result<()> {
    let lock_err = || anyhow!("fuzz pool lock poisoned");
    let threads = txs.len();
    let mut queues: Vec<VecDeque<Op>> = vec![VecDeque::new(); threads];
    let mut states = vec![Model::default()];
    let mut n = 0u64;
    loop {
        // Each thread's next call; opens and closes on the way are made now,
        // and a call picked before one of them is checked again (its object
        // may be gone), until a pass makes none.
        let mut round: Vec<Option<Op>> = vec![None; threads];
        let mut changed = true;
        while changed && !budget.spent(n) {
            changed = false;
            let pool = shared.read().map_err(|_| lock_err())?;
            for slot in round.iter_mut() {
                if slot.as_ref().is_some_and(|op| !pool.still_valid(op)) {
                    *slot = None;
                }
            }
            drop(pool);
            for (t, slot) in round.iter_mut().enumerate() {
                while slot.is_none() && !budget.spent(n) {
                    let pool = shared.read().map_err(|_| lock_err())?;
                    if queues[t].is_empty() {
                        queues[t].extend(pool.draw(rng));
                    }
                    let Some(op) = queues[t].pop_front() else { continue };
                    if !pool.still_valid(&op) {
                        continue;
                    }
                    drop(pool);
                    n += 1;
                    if matches!(op, Op::Open(_) | Op::Close(_)) {
                        let mut pool = shared.write().map_err(|_| lock_err())?;
                        let res = pool.run(&op).with_context(|| format!("call {n}: {op}"))?;
                        tally.count(&op, res);
                        for s in &mut states {
                            s.update(&op, res);
                        }
                        changed = true;
                    } else {
                        *slot = Some(op);
                    }
                }
            }
        }
        // The budget may end right after a close: no call to a gone object.
        let pool = shared.read().map_err(|_| lock_err())?;
        round.iter_mut().filter(|op| op.as_ref().is_some_and(|op| !pool.still_valid(op))).for_each(|op| *op = None);
        drop(pool);
        if round.iter().all(Option::is_none) {
            return Ok(());
        }
        for (tx, op) in txs.iter().zip(&round) {
            let msg = op.clone().map_or(Msg::Idle, Msg::Call);
            tx.send(msg).map_err(|_| anyhow!("a fuzz thread ended early"))?;
        }
        let mut answers: Vec<Option<Result<Result<(), Errno>>>> = (0..threads).map(|_| None).collect();
        for _ in 0..threads {
            let (i, r) = res_rx.recv().map_err(|_| anyhow!("a fuzz thread ended early"))?;
            answers[i] = r;
        }
        tally.rounds += 1;
        let mut answered: Vec<Answered> = Vec::new();
        for (t, (op, r)) in round.into_iter().zip(answers).enumerate() {
            let (Some(op), Some(r)) = (op, r) else { continue };
            let res = r.with_context(|| format!("thread {t}: {op}"))?;
            tally.count(&op, res);
            answered.push((op, res));
        }
        match linearize(&states, &answered) {
            Ok(after) => {
                tally.max_states = tally.max_states.max(after.len());
                states = after;
            }
            Err(why) => {
                (budget.flag)(n, why);
                // Go on from what the kernel did, in the threads' order.
                let mut m = states.swap_remove(0);
                for (op, res) in &answered {
                    m.update(op, *res);
                }
                states = vec![m];
            }
        }
    }
}
