//! Single-flight: concurrent callers that miss the same key of the same cache in this process
//! compute once.
//!
//! Two layers:
//!
//! - [`Flights`], the registry: a map from (cache id, key) to the flight in progress and the
//!   invalidation epoch it started in ([`super::epoch`]). The first caller to
//!   [`join`](Flights::join) a key leads its flight; later callers of the same epoch or an older
//!   one get the flight's latch to wait on, and a caller of a newer epoch (it started after an
//!   invalidation the flight may predate) leads a flight of its own instead. The leader's
//!   [`Lead`] ends the flight when it is dropped, reporting [`Landing::Finished`] if the leader
//!   called [`Lead::mark_finished`] and [`Landing::Abandoned`] otherwise (it unwound from a
//!   panic, or, on an async face, its future was dropped), so no waiter is left blocked and
//!   waiters know whether to take over. The registry knows nothing of threads: how a waiter
//!   waits is the [`Latch`]'s business.
//! - The thread face ([`take_turn`]): one registry with a [`BlockingLatch`] (a condition
//!   variable), and the rule that keeps it free of deadlocks. The task face
//!   ([`super::flight_task`], feature `async`) adds a latch tasks await and its own rule (a
//!   task-local instead of a thread-local), and reuses the registry.
//!
//! No deadlock on the thread face: a thread that leads a flight never waits for another one (a
//! nested memoized call that finds its key in flight computes directly: [`Turn::Bypass`]).
//! Waiting threads lead no flight, so no thread waits for a thread that waits: no cycle, whether
//! a function calls itself with the same arguments or two functions call each other from two
//! threads. Poisoned locks are recovered: the data they guard (a map, a landing) is valid at
//! every point a panic can occur.

use std::cell::Cell;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a flight ended, as its waiters learn it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Landing {
    /// The leader finished: its result is stored, unless it was not cacheable (an `Err`, a
    /// `None`) or the write failed (writes fail open).
    Finished,
    /// The leader ended without finishing (it panicked; on an async face, its future was
    /// dropped): nothing was stored, and a waiter should take the lead.
    Abandoned,
}

/// What a flight's waiters wait on. Only opening is shared; waiting is each implementation's own
/// method, blocking ([`BlockingLatch::wait`]) or, for a task-based face, `async`.
pub(crate) trait Latch: Send + Sync {
    /// A closed latch.
    fn new() -> Self
    where
        Self: Sized;
    /// Records how the flight ended and wakes every waiter, present and future. Called once per
    /// latch, by the flight's [`Lead`].
    fn open(&self, landing: Landing);
}

/// Which flight: callers of two caches (another directory, namespace or server) never wait for
/// each other.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FlightKey {
    /// [`crate::CacheManager::id`].
    cache: u64,
    key: String,
}

impl FlightKey {
    fn new(cache: u64, key: &str) -> Self {
        FlightKey {
            cache,
            key: key.to_owned(),
        }
    }
}

/// How many of the last landings [`Landings`] remembers by key.
const REMEMBERED: usize = 1024;

/// The last flights that ended, by key: what tells a caller that leads a flight whether a flight
/// of its key ended (and may have stored the value) after it missed. Bounded: beyond
/// [`REMEMBERED`] landings, the oldest are forgotten, and a caller whose miss is older than what
/// is remembered looks again.
#[derive(Default)]
struct Landings {
    /// The sequence number of each remembered key's last landing.
    last: HashMap<FlightKey, u64>,
    /// The remembered landings, oldest first.
    order: VecDeque<(u64, FlightKey)>,
    /// The sequence number of the last landing forgotten (0: none yet).
    forgotten: u64,
}

impl Landings {
    fn record(&mut self, key: &FlightKey, seq: u64) {
        self.last.insert(key.clone(), seq);
        self.order.push_back((seq, key.clone()));
        if self.order.len() > REMEMBERED
            && let Some((old, k)) = self.order.pop_front()
        {
            if self.last.get(&k) == Some(&old) {
                self.last.remove(&k);
            }
            self.forgotten = old;
        }
    }

    /// Whether a flight of `key` ended after landing number `seen`, or may have (it is older
    /// than what is remembered).
    fn since(&self, key: &FlightKey, seen: u64) -> bool {
        self.last.get(key).is_some_and(|l| *l > seen) || seen < self.forgotten
    }
}

/// A flight in progress.
struct Flight<L> {
    /// The invalidation epoch its leader started in.
    epoch: u64,
    latch: Arc<L>,
}

/// The flights in progress.
pub(crate) struct Flights<L> {
    map: Mutex<Registry<L>>,
    /// Flights ended so far: the sequence number of the last landing.
    landed: AtomicU64,
}

struct Registry<L> {
    flights: HashMap<FlightKey, Flight<L>>,
    landings: Landings,
}

/// A caller's place in a flight.
pub(crate) enum Join<'a, L: Latch> {
    /// No flight of this epoch or a newer one was in progress: this caller leads a new one.
    Lead(Lead<'a, L>),
    /// A flight is in progress: its latch opens when it ends.
    Wait(Arc<L>),
}

impl<L: Latch> Flights<L> {
    pub(crate) fn new() -> Self {
        Flights {
            map: Mutex::new(Registry {
                flights: HashMap::new(),
                landings: Landings::default(),
            }),
            landed: AtomicU64::new(0),
        }
    }

    /// How many flights have ended: read before looking a key up, and given to
    /// [`Flights::join`].
    pub(crate) fn landings(&self) -> u64 {
        self.landed.load(Ordering::Acquire)
    }

    /// Leads the flight of `key` in cache `cache`, or joins the one in progress if it started
    /// in `epoch` or a newer one. A caller of a newer epoch than the flight in progress leads a
    /// new flight, which takes the older one's place in the registry (the older one still
    /// lands for its own waiters). `seen` is [`Flights::landings`] before the caller's lookup
    /// (see [`Lead::landed_since_miss`]).
    pub(crate) fn join(&self, cache: u64, key: &str, epoch: u64, seen: u64) -> Join<'_, L> {
        let key = FlightKey::new(cache, key);
        let mut reg = lock(&self.map);
        if let Some(f) = reg.flights.get(&key)
            && f.epoch >= epoch
        {
            return Join::Wait(Arc::clone(&f.latch));
        }
        let landed_since_miss = reg.landings.since(&key, seen);
        let latch = Arc::new(L::new());
        let flight = Flight {
            epoch,
            latch: Arc::clone(&latch),
        };
        reg.flights.insert(key.clone(), flight);
        drop(reg);
        Join::Lead(Lead {
            flights: self,
            key,
            landed_since_miss,
            latch,
            finished: false,
        })
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        lock(&self.map).flights.len()
    }

    /// Flights in progress in cache `cache` (tests share the registry across caches).
    #[cfg(test)]
    pub(crate) fn in_flight_of(&self, cache: u64) -> usize {
        lock(&self.map)
            .flights
            .keys()
            .filter(|k| k.cache == cache)
            .count()
    }
}

/// The leader's hold on a flight. Dropping it ends the flight: the key leaves the registry (the
/// next caller that misses leads a new flight) and the latch opens.
pub(crate) struct Lead<'a, L: Latch> {
    flights: &'a Flights<L>,
    key: FlightKey,
    /// See [`Lead::landed_since_miss`].
    landed_since_miss: bool,
    latch: Arc<L>,
    finished: bool,
}

impl<L: Latch> Lead<'_, L> {
    /// Whether a flight of this key ended (or may have) between the caller's reading of
    /// [`Flights::landings`] before its lookup and the start of this flight: if not, no flight
    /// of this key stored a value in this process after the caller's miss, and looking the key
    /// up again is a wasted round trip.
    pub(crate) fn landed_since_miss(&self) -> bool {
        self.landed_since_miss
    }

    /// Marks the flight finished (the result is stored, or was not cacheable); it ends when
    /// this lead is dropped.
    pub(crate) fn mark_finished(&mut self) {
        self.finished = true;
    }
}

impl<L: Latch> Drop for Lead<'_, L> {
    fn drop(&mut self) {
        {
            let mut reg = lock(&self.flights.map);
            // Recorded before the key leaves the registry (under its lock), so that a caller
            // that leads the next flight sees it.
            let seq = self.flights.landed.fetch_add(1, Ordering::AcqRel) + 1;
            reg.landings.record(&self.key, seq);
            if reg
                .flights
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(&f.latch, &self.latch))
            {
                reg.flights.remove(&self.key);
            }
        }
        self.latch.open(if self.finished {
            Landing::Finished
        } else {
            Landing::Abandoned
        });
    }
}

/// A latch for threads: a condition variable over the landing.
pub(crate) struct BlockingLatch {
    landing: Mutex<Option<Landing>>,
    cv: Condvar,
}

impl Latch for BlockingLatch {
    fn new() -> Self {
        BlockingLatch {
            landing: Mutex::new(None),
            cv: Condvar::new(),
        }
    }

    fn open(&self, landing: Landing) {
        *lock(&self.landing) = Some(landing);
        self.cv.notify_all();
    }
}

impl BlockingLatch {
    /// Blocks this thread until the flight ends.
    pub(crate) fn wait(&self) -> Landing {
        let mut landing = lock(&self.landing);
        loop {
            if let Some(l) = *landing {
                return l;
            }
            landing = self
                .cv
                .wait(landing)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The thread face.
// ---------------------------------------------------------------------------------------------

static THREAD_FLIGHTS: LazyLock<Flights<BlockingLatch>> = LazyLock::new(Flights::new);

thread_local! {
    /// How many flights this thread leads.
    static LEADING: Cell<usize> = const { Cell::new(0) };
}

/// What a thread that missed a key does next.
pub(crate) enum Turn {
    /// Compute and store, then [`ThreadLead::finish`].
    Lead(ThreadLead),
    /// Another thread's flight of this key ended.
    Landed(Landing),
    /// The key is in flight, and this thread leads another flight: compute, do not wait.
    Bypass,
}

/// A thread's lead of a flight (counted in [`LEADING`] while it lives).
pub(crate) struct ThreadLead(Lead<'static, BlockingLatch>);

impl ThreadLead {
    /// Ends the flight as finished.
    pub(crate) fn finish(mut self) {
        self.0.mark_finished();
    }

    /// See [`Lead::landed_since_miss`].
    pub(crate) fn landed_since_miss(&self) -> bool {
        self.0.landed_since_miss()
    }
}

/// [`Flights::landings`] of the thread face's registry: read before looking a key up.
pub(crate) fn landings() -> u64 {
    THREAD_FLIGHTS.landings()
}

impl Drop for ThreadLead {
    fn drop(&mut self) {
        LEADING.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Leads the flight of `key` in cache `cache`, or waits for the one in progress if it started
/// in `epoch` or a newer one (unless this thread leads a flight: then [`Turn::Bypass`]). `seen`:
/// [`landings`] before the caller's lookup.
pub(crate) fn take_turn(cache: u64, key: &str, epoch: u64, seen: u64) -> Turn {
    match THREAD_FLIGHTS.join(cache, key, epoch, seen) {
        Join::Lead(lead) => {
            LEADING.with(|n| n.set(n.get() + 1));
            Turn::Lead(ThreadLead(lead))
        }
        Join::Wait(_) if LEADING.with(Cell::get) > 0 => Turn::Bypass,
        Join::Wait(latch) => Turn::Landed(latch.wait()),
    }
}

/// Leads the flight of `key` in cache `cache` if none of `epoch` or a newer one is in progress;
/// `None` otherwise, without waiting (a stale-while-revalidate refresh: the others serve the
/// stale value). A thread that leads another flight may lead this one too: it never waits here.
pub(crate) fn try_lead(cache: u64, key: &str, epoch: u64) -> Option<ThreadLead> {
    match THREAD_FLIGHTS.join(cache, key, epoch, landings()) {
        Join::Lead(lead) => {
            LEADING.with(|n| n.set(n.get() + 1));
            Some(ThreadLead(lead))
        }
        Join::Wait(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn one_leader_per_key_and_cache() {
        let f = Flights::<BlockingLatch>::new();
        let Join::Lead(a) = f.join(1, "k", 0, 0) else {
            panic!("the first caller leads")
        };
        assert!(matches!(f.join(1, "k", 0, 0), Join::Wait(_)));
        assert!(
            matches!(f.join(2, "k", 0, 0), Join::Lead(_)),
            "another cache"
        );
        assert!(
            matches!(f.join(1, "k2", 0, 0), Join::Lead(_)),
            "another key"
        );
        assert_eq!(f.in_flight(), 1, "dropped leads left the registry");
        drop(a);
        assert_eq!(f.in_flight(), 0);
        assert!(
            matches!(f.join(1, "k", 0, 0), Join::Lead(_)),
            "a new flight"
        );
    }

    #[test]
    fn a_caller_of_a_newer_epoch_leads_its_own_flight() {
        let f = Flights::<BlockingLatch>::new();
        let Join::Lead(old) = f.join(1, "k", 3, 0) else {
            panic!("the first caller leads")
        };
        assert!(
            matches!(f.join(1, "k", 2, 0), Join::Wait(_)),
            "an older epoch"
        );
        assert!(
            matches!(f.join(1, "k", 3, 0), Join::Wait(_)),
            "the same epoch"
        );
        let Join::Lead(new) = f.join(1, "k", 4, 0) else {
            panic!("a newer epoch never joins an older flight")
        };
        let Join::Wait(w) = f.join(1, "k", 4, 0) else {
            panic!("the newer flight took the key")
        };
        drop(old);
        assert_eq!(
            f.in_flight(),
            1,
            "the older flight left the newer one in place"
        );
        assert!(matches!(f.join(1, "k", 4, 0), Join::Wait(_)));
        drop(new);
        assert_eq!(w.wait(), Landing::Abandoned);
        assert_eq!(f.in_flight(), 0);
    }

    #[test]
    fn a_leader_knows_whether_a_flight_of_its_key_landed_since_its_miss() {
        let f = Flights::<BlockingLatch>::new();
        let seen = f.landings();
        let Join::Lead(lead) = f.join(1, "k", 0, seen) else {
            panic!("leads")
        };
        assert!(!lead.landed_since_miss(), "nothing ended in between");
        drop(lead);
        let Join::Lead(other) = f.join(1, "other key", 0, seen) else {
            panic!("leads")
        };
        assert!(
            !other.landed_since_miss(),
            "another key's landing does not count"
        );
        let Join::Lead(lead) = f.join(1, "k", 0, seen) else {
            panic!("leads")
        };
        assert!(
            lead.landed_since_miss(),
            "the first flight ended after the miss"
        );
        drop((lead, other));
        let Join::Lead(lead) = f.join(1, "k", 0, f.landings()) else {
            panic!("leads")
        };
        assert!(!lead.landed_since_miss(), "a miss after the landings");
    }

    #[test]
    fn landings_are_remembered_within_a_bound() {
        let f = Flights::<BlockingLatch>::new();
        let seen = f.landings();
        for i in 0..REMEMBERED + 10 {
            let Join::Lead(l) = f.join(1, &format!("k{i}"), 0, seen) else {
                panic!("leads")
            };
            drop(l);
        }
        let reg = lock(&f.map);
        assert_eq!(reg.landings.order.len(), REMEMBERED);
        assert_eq!(reg.landings.last.len(), REMEMBERED);
        drop(reg);
        // "k0" was forgotten: a miss older than what is remembered looks again.
        let Join::Lead(l) = f.join(1, "k0", 0, seen) else {
            panic!("leads")
        };
        assert!(l.landed_since_miss());
        drop(l);
        let Join::Lead(l) = f.join(1, "never", 0, f.landings()) else {
            panic!("leads")
        };
        assert!(!l.landed_since_miss());
    }

    #[test]
    fn waiters_learn_how_the_flight_ended() {
        let f = Flights::<BlockingLatch>::new();
        let Join::Lead(mut lead) = f.join(1, "k", 0, 0) else {
            panic!("leads")
        };
        let Join::Wait(w) = f.join(1, "k", 0, 0) else {
            panic!("waits")
        };
        lead.mark_finished();
        drop(lead);
        assert_eq!(w.wait(), Landing::Finished);

        let Join::Lead(lead) = f.join(1, "k", 0, 0) else {
            panic!("leads")
        };
        let Join::Wait(w) = f.join(1, "k", 0, 0) else {
            panic!("waits")
        };
        drop(lead); // as a panic's unwinding does
        assert_eq!(w.wait(), Landing::Abandoned);
    }

    #[test]
    fn a_panicking_leader_releases_its_waiters() {
        let f = Arc::new(Flights::<BlockingLatch>::new());
        let Join::Lead(lead) = f.join(7, "k", 0, 0) else {
            panic!("leads")
        };
        let n = 4;
        let waiting = Arc::new(Barrier::new(n + 1));
        let waiters: Vec<_> = (0..n)
            .map(|_| {
                let (f, waiting) = (f.clone(), waiting.clone());
                std::thread::spawn(move || {
                    let Join::Wait(w) = f.join(7, "k", 0, 0) else {
                        panic!("waits")
                    };
                    waiting.wait();
                    w.wait()
                })
            })
            .collect();
        waiting.wait();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _lead = lead;
            panic!("the function panicked");
        }));
        assert!(r.is_err());
        for w in waiters {
            assert_eq!(w.join().unwrap(), Landing::Abandoned);
        }
    }

    #[test]
    fn threads_take_turns() {
        // Concurrent callers of one key: one leads, the others wait for it.
        let n = 8;
        let start = Arc::new(Barrier::new(n));
        let leads = Arc::new(AtomicUsize::new(0));
        let cache = u64::MAX - 1; // no other test uses this id
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let (start, leads) = (start.clone(), leads.clone());
                std::thread::spawn(move || {
                    start.wait();
                    match take_turn(cache, "k", 0, 0) {
                        Turn::Lead(l) => {
                            leads.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            l.finish();
                            None
                        }
                        Turn::Landed(l) => Some(l),
                        Turn::Bypass => panic!("no thread leads another flight"),
                    }
                })
            })
            .collect();
        let landed: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        // Threads that arrive after the flight ended lead a flight of their own.
        let led = leads.load(Ordering::SeqCst);
        assert!(led >= 1);
        assert_eq!(landed.iter().flatten().count(), n - led);
        assert!(landed.iter().flatten().all(|l| *l == Landing::Finished));
    }

    #[test]
    fn a_leading_thread_never_waits() {
        let cache = u64::MAX - 2;
        let Turn::Lead(outer) = take_turn(cache, "a", 0, 0) else {
            panic!("leads a")
        };
        // Another thread leads "b" and holds it until told.
        let (held, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let other = {
            let (held, release) = (held.clone(), release.clone());
            std::thread::spawn(move || {
                let Turn::Lead(l) = take_turn(cache, "b", 0, 0) else {
                    panic!("leads b")
                };
                held.wait();
                release.wait();
                l.finish();
            })
        };
        held.wait();
        assert!(matches!(take_turn(cache, "b", 0, 0), Turn::Bypass));
        release.wait();
        other.join().unwrap();
        outer.finish();
        assert_eq!(LEADING.with(Cell::get), 0);
    }
}
