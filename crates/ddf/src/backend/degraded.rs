//! Whether a call on this thread met a temporary failure of a server that was answered
//! otherwise (a miss, or the fallback), which the call's result cannot show.
//!
//! A caller that would go back to the same server at once (memoization: a lookup, then a store)
//! reads [`Watch::failed`] after its first call and does not wait on a stopped server a second
//! time. The record is per thread: a synchronous call runs on one thread from start to end.

use std::cell::Cell;

thread_local! {
    /// Temporary server failures met on this thread so far.
    static FAILURES: Cell<u64> = const { Cell::new(0) };
}

/// Records a temporary failure of a server on this thread (the resilience wrapper calls it for
/// every one, whatever answers the call instead).
pub(crate) fn note_temporary_failure() {
    FAILURES.with(|n| n.set(n.get().wrapping_add(1)));
}

/// Watches this thread for temporary server failures from its creation on.
#[derive(Debug)]
pub(crate) struct Watch(u64);

impl Watch {
    pub(crate) fn start() -> Self {
        Watch(FAILURES.with(Cell::get))
    }

    /// Whether a temporary server failure was met on this thread since [`Watch::start`].
    pub(crate) fn failed(&self) -> bool {
        FAILURES.with(Cell::get) != self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_sees_failures_of_its_own_thread_only() {
        let w = Watch::start();
        assert!(!w.failed());
        std::thread::spawn(note_temporary_failure).join().unwrap();
        assert!(!w.failed(), "another thread's failure");
        note_temporary_failure();
        assert!(w.failed());
        assert!(!Watch::start().failed());
    }
}
