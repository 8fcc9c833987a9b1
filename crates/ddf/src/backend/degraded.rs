//! Whether a call on this thread met a temporary failure of a server that was answered
//! otherwise (a miss, or the fallback), which the call's result cannot show.
//!
//! A caller that would go back to the same server at once (memoization: a lookup, then a store)
//! reads [`Watch::failed`] after its first call and does not wait on a stopped server a second
//! time. The record is per thread: a synchronous call runs on one thread from start to end.
//!
//! Likewise, a call answered by the fallback (while the server is down, or a read that failed on
//! it and became a miss) is noted, so that the manager counts it (`CacheStats::fallback`) and
//! the CLI can tell an operator where a write landed.

use std::cell::{Cell, RefCell};

thread_local! {
    /// Temporary server failures met on this thread so far.
    static FAILURES: Cell<u64> = const { Cell::new(0) };
    /// Calls answered by the fallback on this thread so far.
    static FALLBACK: Cell<u64> = const { Cell::new(0) };
    /// The node that answered the latest `get_expiring` of a Redis Cluster on this thread.
    static ANSWERED: RefCell<Option<(String, u16)>> = const { RefCell::new(None) };
}

/// Records that `node` (`host:port`, as the request was sent) answered the read running on this
/// thread (a Redis Cluster's `get_expiring`, redirects followed), for the near cache: a fill is
/// stored only from a node its tracking session tracks.
pub(crate) fn note_answered(node: &(String, u16)) {
    ANSWERED.with(|a| a.borrow_mut().clone_from(&Some(node.clone())));
}

/// Watches this thread for the node that answers a read (see [`note_answered`]).
#[derive(Debug)]
pub(crate) struct Answered(());

impl Answered {
    pub(crate) fn start() -> Self {
        ANSWERED.with(|a| a.borrow_mut().take());
        Answered(())
    }

    /// The node noted since [`Answered::start`] on this thread, if one was (none: the backend
    /// does not say, or is not a Cluster).
    pub(crate) fn take(self) -> Option<(String, u16)> {
        ANSWERED.with(|a| a.borrow_mut().take())
    }
}

/// Records that the call running on this thread was answered by the fallback.
pub(crate) fn note_fallback() {
    FALLBACK.with(|n| n.set(n.get().wrapping_add(1)));
}

/// Watches this thread for calls answered by the fallback from its creation on.
#[derive(Debug)]
pub(crate) struct FallbackWatch(u64);

impl FallbackWatch {
    pub(crate) fn start() -> Self {
        FallbackWatch(FALLBACK.with(Cell::get))
    }

    /// Whether a call was answered by the fallback on this thread since [`FallbackWatch::start`].
    pub(crate) fn served(&self) -> bool {
        FALLBACK.with(Cell::get) != self.0
    }
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

    #[test]
    fn the_node_that_answered_is_its_own_threads() {
        let w = Answered::start();
        std::thread::spawn(|| note_answered(&("a".to_owned(), 1)))
            .join()
            .unwrap();
        assert_eq!(w.take(), None);
        note_answered(&("stale".to_owned(), 1));
        let w = Answered::start();
        assert_eq!(w.take(), None, "noted before the watch");
        let w = Answered::start();
        note_answered(&("b".to_owned(), 2));
        assert_eq!(w.take(), Some(("b".to_owned(), 2)));
    }

    #[test]
    fn a_fallback_watch_sees_its_own_thread_only() {
        let w = FallbackWatch::start();
        std::thread::spawn(note_fallback).join().unwrap();
        assert!(!w.served());
        note_fallback();
        assert!(w.served() && !FallbackWatch::start().served());
    }
}
