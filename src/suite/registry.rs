//! The test points of `run`.

use anyhow::Result;

use crate::attach::ATTACH_TESTS;
use crate::kmsg::{kmemleak_unavailable, LEAK_CHECK};

use super::*;

/// The teardown scenarios (and the end check), in KTAP order after ATTACH_TESTS.
pub const SCENARIO_TESTS: &[&str] = &[
    "teardown_exit",
    "teardown_close_vktest_first",
    "teardown_unbind",
    "teardown_unbind_rebind",
    "traffic_vhost_net_hdr",
    "cleanup_no_leftovers",
];

/// The race scenarios added for the soak (after the original points, so
/// those keep their numbers).
pub const RACE_TESTS: &[&str] = &[
    "teardown_close_vhost_first",
    "teardown_close_both_reverse",
    "teardown_sigkill_mid_flood",
    "teardown_rebind_repeated",
    "attach_close_loop",
];

/// Every test point of `run`, in order.
pub fn all_tests() -> Vec<&'static str> {
    ATTACH_TESTS.iter().chain(SCENARIO_TESTS).chain(RACE_TESTS).copied().collect()
}

/// What `run --list` prints: every point `run` may report, the leak check
/// and the kernel-log check included.
pub fn list() -> Vec<&'static str> {
    let mut all = all_tests();
    all.extend([LEAK_CHECK, BETWEEN_POINTS]);
    all
}

/// The points `run --test NAME...` selects (all of them without a name), in
/// KTAP order; under a kmemleak kernel every pass ends with the leak check.
pub fn select(names: &[String], fake_device: bool) -> Result<Vec<&'static str>> {
    let all = list();
    for t in names {
        anyhow::ensure!(all.contains(&t.as_str()), "unknown test {t:?} (see --list)");
    }
    let mut selected: Vec<&str> = if names.is_empty() {
        all.into_iter().filter(|t| *t != LEAK_CHECK).collect()
    } else {
        all.into_iter().filter(|a| names.iter().any(|t| t == a)).collect()
    };
    if kmemleak_unavailable().is_none() && !fake_device && !selected.contains(&LEAK_CHECK) {
        selected.push(LEAK_CHECK);
    }
    Ok(selected)
}
