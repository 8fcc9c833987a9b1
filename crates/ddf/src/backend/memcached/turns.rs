//! Turns at one server's LRU crawler, in arrival order.
//!
//! A memcached server runs one crawler request at a time (`lru_crawler metadump` answers `BUSY`
//! while another runs), and a metadump hash walk takes about 15 ms even on an empty server. The
//! callers of one process that list keys on one server (prefix invalidation, key listing) used
//! to poll the crawler every 20 ms: whichever poll came first after a walk won, so under load a
//! caller could lose for half a minute and fail with "the crawler stayed busy" (issue #12's
//! "temporary errors on a healthy server": 256 tasks, one invalidation in twenty calls, ~700
//! walks in a row). Callers now queue here first and ask the crawler in arrival order, so a
//! caller waits for the walks of those ahead of it only; the 20 ms poll remains only for the
//! server's own crawler runs and other processes.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// A FIFO queue of callers for one server's crawler.
#[derive(Debug, Default)]
pub(super) struct Turns {
    queue: Mutex<Queue>,
    moved: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    next: u64,
    waiting: VecDeque<u64>,
}

/// A caller's turn: it holds the crawler (for this process) until dropped.
pub(super) struct Turn<'a> {
    turns: &'a Turns,
    id: u64,
}

impl Turns {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until every caller that came before has had its turn, or until `deadline`
    /// (`None`: the caller left the queue; it must not ask the crawler).
    pub(super) fn wait(&self, deadline: Instant) -> Option<Turn<'_>> {
        let mut q = self.lock();
        let id = q.next;
        q.next += 1;
        q.waiting.push_back(id);
        let turn = Turn { turns: self, id };
        loop {
            if q.waiting.front() == Some(&id) {
                return Some(turn);
            }
            let now = Instant::now();
            if now >= deadline {
                // Dropping `turn` leaves the queue (it takes the lock: release it first).
                drop(q);
                return None;
            }
            q = self
                .moved
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut q = self.turns.lock();
        q.waiting.retain(|&w| w != self.id);
        drop(q);
        self.turns.moved.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn turns_come_in_arrival_order_and_a_late_caller_leaves() {
        let turns = Arc::new(Turns::default());
        let first = turns.wait(Instant::now()).unwrap();
        // Behind `first`: times out and leaves the queue.
        assert!(
            turns
                .wait(Instant::now() + Duration::from_millis(10))
                .is_none()
        );
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..4 {
            let (mine, order) = (turns.clone(), order.clone());
            waiters.push(std::thread::spawn(move || {
                let t = mine.wait(Instant::now() + Duration::from_secs(30)).unwrap();
                order.lock().unwrap().push(i);
                drop(t);
            }));
            // Each waiter queued before the next starts.
            while turns.lock().waiting.len() < i + 2 {
                std::thread::yield_now();
            }
        }
        drop(first);
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
        assert!(turns.lock().waiting.is_empty());
    }
}
