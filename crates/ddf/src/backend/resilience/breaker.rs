//! The circuit breaker's state machine: **up**, **down**, **recovering**; consecutive failures;
//! the counters `stats` and `ping` show. No I/O and no clock of its own (the caller passes the
//! time), so the same breaker serves a thread-based and a task-based face, and one breaker per
//! server is a matter of having several.
//!
//! ```text
//!            failure (threshold reached, or an invalidation)
//!   ┌────┐ ─────────────────────────────────────────────────▶ ┌──────┐
//!   │ up │                                                   │ down │
//!   └────┘ ◀──── recovered ──── ┌────────────┐ ◀─ probe ok ── └──────┘
//!                               │ recovering │ ── failed again ──▶ down
//!                               └────────────┘
//! ```
//!
//! Lock-free on the path every operation takes (`is_up`, `succeeded`); a transition is a
//! compare-and-swap, so exactly one caller sees "this failure opened the breaker" and logs it.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const UP: u8 = 0;
const DOWN: u8 = 1;
const RECOVERING: u8 = 2;

/// The state of the primary, as `stats` and `ping` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// Operations go to the primary.
    Up,
    /// The primary is down; the fallback serves.
    Down,
    /// The primary answered again; recorded invalidations are being applied.
    Recovering,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Down => "down (serving from the fallback)",
            Health::Recovering => "recovering (applying recorded invalidations)",
        })
    }
}

/// What a failure did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Counted; the primary stays up (the call is served by the fallback).
    Counted,
    /// This failure marked the primary down (log it once).
    Opened,
    /// The primary was not up already.
    AlreadyOpen,
}

/// The breaker of one primary.
#[derive(Debug)]
pub(crate) struct Breaker {
    /// Consecutive failures that mark the primary down.
    threshold: u32,
    state: AtomicU8,
    consecutive: AtomicU32,
    transitions: AtomicU64,
    failed_ops: AtomicU64,
    down_since: Mutex<Option<Instant>>,
}

impl Breaker {
    /// A breaker in state up. A `threshold` of 0 acts as 1.
    pub(crate) fn new(threshold: u32) -> Self {
        Breaker {
            threshold: threshold.max(1),
            state: AtomicU8::new(UP),
            consecutive: AtomicU32::new(0),
            transitions: AtomicU64::new(0),
            failed_ops: AtomicU64::new(0),
            down_since: Mutex::new(None),
        }
    }

    /// The current state.
    pub(crate) fn health(&self) -> Health {
        match self.state.load(Ordering::Acquire) {
            UP => Health::Up,
            DOWN => Health::Down,
            _ => Health::Recovering,
        }
    }

    /// Whether operations may go to the primary.
    pub(crate) fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// Transitions between states so far.
    pub(crate) fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    /// Operations that failed on the primary so far.
    pub(crate) fn failed_ops(&self) -> u64 {
        self.failed_ops.load(Ordering::Relaxed)
    }

    /// An operation succeeded on the primary: the run of failures ends.
    pub(crate) fn succeeded(&self) {
        // Skip the store when there is nothing to reset: no cache line written per call.
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// An operation failed on the primary for a temporary reason. `at_once` (an invalidation,
    /// a write, or a primary that cannot even be built) opens the breaker whatever the count.
    pub(crate) fn failed(&self, at_once: bool, now: Instant) -> Failure {
        self.failed_ops.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if !at_once && n < self.threshold {
            return Failure::Counted;
        }
        if self
            .state
            .compare_exchange(UP, DOWN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.transitions.fetch_add(1, Ordering::Relaxed);
            *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
            Failure::Opened
        } else {
            Failure::AlreadyOpen
        }
    }

    /// Starts down without a failure (recorded invalidations must be applied before the
    /// primary serves): not counted as a transition.
    pub(crate) fn hold_down(&self) {
        self.state.store(DOWN, Ordering::Release);
    }

    /// The probe saw the primary answer: down to recovering (a transition only when it was
    /// not recovering already: a long replay goes on over several probes).
    pub(crate) fn begin_recovery(&self) {
        if self.state.swap(RECOVERING, Ordering::AcqRel) != RECOVERING {
            self.transitions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The primary failed while recovering: back to down.
    pub(crate) fn recovery_failed(&self) {
        self.state.store(DOWN, Ordering::Release);
        self.transitions.fetch_add(1, Ordering::Relaxed);
    }

    /// Recovery is complete: up again, with a fresh count. Returns how long it was down.
    pub(crate) fn recovered(&self, now: Instant) -> Duration {
        self.consecutive.store(0, Ordering::Relaxed);
        self.state.store(UP, Ordering::Release);
        self.transitions.fetch_add(1, Ordering::Relaxed);
        self.down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let b = Breaker::new(3);
        let t = Instant::now();
        assert_eq!(b.failed(false, t), Failure::Counted);
        b.succeeded();
        assert_eq!(b.failed(false, t), Failure::Counted);
        assert_eq!(b.failed(false, t), Failure::Counted);
        assert_eq!(b.health(), Health::Up);
        assert_eq!(b.failed(false, t), Failure::Opened);
        assert_eq!(b.health(), Health::Down);
        assert!(!b.is_up());
        assert_eq!(b.failed(false, t), Failure::AlreadyOpen);
        assert_eq!((b.transitions(), b.failed_ops()), (1, 5));
    }

    #[test]
    fn an_invalidation_opens_at_once() {
        let b = Breaker::new(3);
        assert_eq!(b.failed(true, Instant::now()), Failure::Opened);
        assert_eq!(b.health(), Health::Down);
    }

    #[test]
    fn recovery_goes_through_recovering_and_resets_the_count() {
        let b = Breaker::new(2);
        let t0 = Instant::now();
        b.failed(true, t0);
        b.begin_recovery();
        assert_eq!(b.health(), Health::Recovering);
        assert!(!b.is_up());
        // A failure while recovering does not transition (the probe owns the state).
        assert_eq!(b.failed(true, t0), Failure::AlreadyOpen);
        b.recovery_failed();
        assert_eq!(b.health(), Health::Down);
        b.begin_recovery();
        let down_for = b.recovered(t0 + Duration::from_millis(250));
        assert_eq!(down_for, Duration::from_millis(250));
        assert_eq!(b.health(), Health::Up);
        assert_eq!(b.transitions(), 5);
        // The count starts afresh: one failure below the threshold is only counted.
        assert_eq!(b.failed(false, t0), Failure::Counted);
    }

    #[test]
    fn held_down_at_start_is_not_a_transition() {
        let b = Breaker::new(1);
        b.hold_down();
        assert_eq!(b.health(), Health::Down);
        assert_eq!(b.transitions(), 0);
        b.begin_recovery();
        assert_eq!(b.recovered(Instant::now()), Duration::ZERO);
        assert_eq!(b.transitions(), 2);
    }
}
