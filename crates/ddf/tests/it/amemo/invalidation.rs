//! Async memoization under invalidations: every way to invalidate against a held older
//! flight, and concurrent reads and invalidations checked against a model of what a memoized
//! read may return.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use ddf::cache_with_invalidation;
use tokio::sync::Semaphore;

use super::Cache;

/// A value that changes (`data`) and a memoized read of it, for the invalidation rules.
struct Versioned {
    cache: Cache,
    data: AtomicU64,
    calls: AtomicUsize,
    /// Reads whose body waits for a permit (one per `hold_next`).
    hold: AtomicUsize,
    gate: Semaphore,
    started: Semaphore,
}

impl Versioned {
    fn new(cache: Cache) -> Arc<Self> {
        Arc::new(Versioned {
            cache,
            data: AtomicU64::new(0),
            calls: AtomicUsize::new(0),
            hold: AtomicUsize::new(0),
            gate: Semaphore::new(0),
            started: Semaphore::new(0),
        })
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "ver")]
    async fn read(&self) -> u64 {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let v = self.data.load(Ordering::SeqCst);
        if self
            .hold
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.started.add_permits(1);
            self.gate.acquire().await.unwrap().forget();
        }
        tokio::task::yield_now().await;
        v
    }

    /// A mutation: `invalidate_on` removes every `read` result once it returns.
    #[cache_with_invalidation(cache = self.cache, invalidate_on = ["ver:"])]
    async fn write(&self, v: u64) {
        self.data.fetch_max(v, Ordering::SeqCst);
    }

    /// Raises the data to `v` (versions only grow, whatever the order writers run in), then
    /// invalidates `read`'s results the way `how` says; returns
    /// once the invalidation returned.
    async fn mutate(&self, how: Invalidation, v: u64) {
        if how == Invalidation::InvalidateOn {
            return self.write(v).await;
        }
        self.data.fetch_max(v, Ordering::SeqCst);
        let key = self.read_cache_key().unwrap();
        match how {
            Invalidation::Forget => drop(self.read_forget().await.unwrap()),
            Invalidation::ForgetAll => drop(self.read_forget_all().await.unwrap()),
            Invalidation::Delete => drop(self.cache.delete(&key).await.unwrap()),
            Invalidation::DeleteMany => drop(self.cache.delete_many(&[&key]).await.unwrap()),
            Invalidation::Pattern => drop(self.cache.invalidate_pattern("ver:").await.unwrap()),
            Invalidation::Flush => self.cache.flush_all().await.unwrap(),
            Invalidation::InvalidateOn => unreachable!(),
        }
    }

    /// Starts a `read` in a task and returns once its body read the data and is held (it leads
    /// the flight of the key).
    async fn held_read(self: &Arc<Self>) -> tokio::task::JoinHandle<u64> {
        self.hold.fetch_add(1, Ordering::SeqCst);
        let s = self.clone();
        let t = tokio::spawn(async move { s.read().await });
        self.started.acquire().await.unwrap().forget();
        t
    }
}

/// The ways to invalidate `read`'s results through the async cache.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Invalidation {
    Forget,
    ForgetAll,
    Delete,
    DeleteMany,
    Pattern,
    Flush,
    InvalidateOn,
}

const INVALIDATIONS: [Invalidation; 7] = [
    Invalidation::Forget,
    Invalidation::ForgetAll,
    Invalidation::Delete,
    Invalidation::DeleteMany,
    Invalidation::Pattern,
    Invalidation::Flush,
    Invalidation::InvalidateOn,
];

/// Every way to invalidate: a leader that started before does not store its older result, and
/// a caller that starts after neither waits for the older flight nor receives its result. The
/// order of events is fixed by semaphores, not by sleeps.
pub(super) async fn no_result_older_than_an_invalidation(make: &(dyn Fn() -> Cache + Sync)) {
    for how in INVALIDATIONS {
        let s = Versioned::new(make());
        let leader = s.held_read().await;
        s.mutate(how, 1).await;
        s.gate.add_permits(1);
        assert_eq!(
            leader.await.unwrap(),
            0,
            "{how:?}: the leader started before"
        );
        assert_eq!(s.read().await, 1, "{how:?}: an older result was stored");

        let s = Versioned::new(make());
        let leader = s.held_read().await;
        s.mutate(how, 1).await;
        // Would hang (the test's timeout) if it joined the held flight.
        assert_eq!(s.read().await, 1, "{how:?}: joined an older flight");
        s.gate.add_permits(1);
        assert_eq!(leader.await.unwrap(), 0);
        assert_eq!(s.read().await, 1, "{how:?}: the older leader overwrote");
        assert_eq!(s.calls.load(Ordering::SeqCst), 2, "{how:?}");
    }
}

/// One recorded event of [`model_history`]: times are positions on one counter.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// A memoized read that started at `start` and returned `value`.
    Read { start: u64, value: u64 },
    /// An invalidation after the data became `version`, which returned at `end`.
    Invalidated { version: u64, end: u64 },
}

/// The model of memoized reads under invalidations: a read that started after an invalidation
/// returned may not return data older than the version that invalidation published. Returns
/// the violations (read index, value, the version it should have seen at least).
fn check_history(history: &[Event]) -> Vec<(usize, u64, u64)> {
    let mut published: Vec<(u64, u64)> = history
        .iter()
        .filter_map(|e| match *e {
            Event::Invalidated { version, end } => Some((end, version)),
            Event::Read { .. } => None,
        })
        .collect();
    published.sort_unstable();
    // The highest version published by each end, in end order.
    let mut floor = Vec::with_capacity(published.len());
    let mut max = 0;
    for (end, v) in &published {
        max = max.max(*v);
        floor.push((*end, max));
    }
    history
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match *e {
            Event::Read { start, value } => {
                let n = floor.partition_point(|(end, _)| *end < start);
                let least = if n == 0 { 0 } else { floor[n - 1].1 };
                (value < least).then_some((i, value, least))
            }
            Event::Invalidated { .. } => None,
        })
        .collect()
}

#[test]
fn the_history_checker_catches_a_stale_read() {
    let ok = [
        Event::Read { start: 0, value: 0 },
        Event::Invalidated { version: 1, end: 2 },
        Event::Read { start: 1, value: 0 }, // concurrent with the invalidation: legal
        Event::Read { start: 3, value: 1 },
    ];
    assert!(check_history(&ok).is_empty());
    let planted = [
        Event::Invalidated { version: 1, end: 2 },
        Event::Invalidated { version: 2, end: 5 },
        Event::Read { start: 6, value: 1 },
    ];
    assert_eq!(check_history(&planted), [(2, 1, 2)]);
}

/// 64 tasks on a multi-threaded runtime: readers call the memoized `read` while writers change
/// the data and invalidate (every way in turn); every read is checked against the model.
pub(super) async fn concurrent_reads_follow_the_model(make: &(dyn Fn() -> Cache + Sync)) {
    let s = Versioned::new(make());
    let clock = Arc::new(AtomicU64::new(0));
    let version = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..64u32)
        .map(|t| {
            let (s, clock, version) = (s.clone(), clock.clone(), version.clone());
            tokio::spawn(async move {
                let mut events = Vec::new();
                for i in 0..20u32 {
                    if t % 8 == 0 && i % 4 == 0 {
                        let v = version.fetch_add(1, Ordering::SeqCst) + 1;
                        let how = INVALIDATIONS[((t + i) as usize) % INVALIDATIONS.len()];
                        s.mutate(how, v).await;
                        let end = clock.fetch_add(1, Ordering::SeqCst);
                        events.push(Event::Invalidated { version: v, end });
                    } else {
                        let start = clock.fetch_add(1, Ordering::SeqCst);
                        let value = s.read().await;
                        events.push(Event::Read { start, value });
                    }
                }
                events
            })
        })
        .collect();
    let mut history = Vec::new();
    for t in tasks {
        history.extend(t.await.unwrap());
    }
    let violations = check_history(&history);
    assert!(
        violations.is_empty(),
        "{} stale reads, first: {:?}",
        violations.len(),
        violations.first()
    );
}
