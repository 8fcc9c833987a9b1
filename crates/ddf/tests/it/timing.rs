//! Bounded waits, measured on a shared and noisy machine.
//!
//! A test that shows a wait is bounded (one timeout, not one per reply or per key) compares a
//! duration with a bound. Any single run can be stalled by the machine (other builds, other
//! tests); a wait that really multiplies is slow on every run. So the tests run the measured case
//! again, up to [`ATTEMPTS`] times, and judge the fastest attempt. Speed targets are never
//! asserted: they live in benchmarks.

use std::time::Duration;

/// How many times a measured case runs before its fastest attempt is judged.
pub(crate) const ATTEMPTS: usize = 3;

/// Runs `attempt` (which builds its own fresh fixture and returns what it observed and how long
/// it took) until one attempt ends within `bound`, at most [`ATTEMPTS`] times; returns the
/// fastest attempt.
pub(crate) fn fastest_of<T>(
    bound: Duration,
    mut attempt: impl FnMut() -> (T, Duration),
) -> (T, Duration) {
    let mut best = attempt();
    for _ in 1..ATTEMPTS {
        if best.1 < bound {
            break;
        }
        let next = attempt();
        if next.1 < best.1 {
            best = next;
        }
    }
    best
}
