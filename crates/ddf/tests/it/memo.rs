//! `#[cache_with_invalidation]`: behaviour on every backend ([`run`] takes a cache factory, as
//! the conformance suite does), collisions that broke the original, single-flight, no result
//! older than an invalidation served after it, the statistics, fail-open (one timeout on a
//! stopped server), two processes sharing results, the global `CACHE`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::time::{Duration, Instant};

use ddf::{Backend, CacheBackend, CacheConfig, CacheManager, Error, Item, cache_with_invalidation};
use serde::Serialize;

use crate::conformance::unique_namespace;
use crate::process;

pub(crate) mod fixture;

/// A service whose memoized methods use the cache it holds (`cache = self.cache`) and count
/// how often their bodies run.
struct Svc {
    cache: CacheManager,
    calls: AtomicUsize,
    stamp: Mutex<String>,
    panic_next: AtomicBool,
    cross: Barrier,
}

impl Svc {
    fn new(cache: CacheManager) -> Self {
        Svc {
            cache,
            calls: AtomicUsize::new(0),
            stamp: Mutex::new("v1".into()),
            panic_next: AtomicBool::new(false),
            cross: Barrier::new(2),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn tick(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    fn current_stamp(&self) -> String {
        self.stamp.lock().unwrap().clone()
    }

    #[cache_with_invalidation(cache = self.cache, ttl = 3600, key_prefix = "lists")]
    fn weigh(&self, xs: &[u32], m: &HashMap<String, u32>) -> u64 {
        self.tick();
        xs.iter()
            .enumerate()
            .map(|(i, x)| (i as u64 + 1) * u64::from(*x))
            .sum::<u64>()
            + m.values().map(|v| u64::from(*v)).sum::<u64>()
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "shared")]
    fn upper(&self, s: &str) -> String {
        self.tick();
        s.to_uppercase()
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "shared")]
    fn lower(&self, s: &str) -> String {
        self.tick();
        s.to_lowercase()
    }

    #[cache_with_invalidation(cache = self.cache)]
    fn len_a(&self, s: &str) -> usize {
        self.tick();
        s.len()
    }

    #[cache_with_invalidation(cache = self.cache)]
    fn len_b(&self, s: &str) -> usize {
        self.tick();
        s.len() * 2
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "res")]
    fn parse(&self, s: &str) -> Result<u32, std::num::ParseIntError> {
        self.tick();
        s.parse()
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "opt")]
    fn find(&self, s: &str) -> Option<u32> {
        self.tick();
        s.parse().ok()
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "optn", cache_none)]
    fn find_none(&self, s: &str) -> Option<u32> {
        self.tick();
        s.parse().ok()
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "stamp", validation = self.current_stamp())]
    fn stamped(&self, s: &str) -> String {
        self.tick();
        format!("{s}@{}", self.current_stamp())
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "svc:web")]
    fn web(&self) -> u32 {
        self.tick();
        80
    }

    #[cache_with_invalidation(cache = self.cache, invalidate_on = ["shared:", "svc:{name}:"])]
    fn edit(&self, name: &str, ok: bool) -> Result<(), String> {
        if ok {
            Ok(())
        } else {
            Err(format!("cannot edit {name}"))
        }
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "slow")]
    fn slow(&self, x: u32) -> u32 {
        self.tick();
        std::thread::sleep(Duration::from_millis(50));
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("the function panicked");
        }
        x
    }

    /// `cycle_a` and `cycle_b`: on two threads, each leads its own key and then calls the
    /// other's (a cycle if leaders waited for other flights); nested calls return at once.
    #[cache_with_invalidation(cache = self.cache, key_prefix = "cycle")]
    fn cycle_a(&self) -> u32 {
        self.tick();
        if IN_CYCLE.with(|c| c.replace(true)) {
            return 1;
        }
        self.cross.wait();
        self.cycle_b() + 10
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "cycle")]
    fn cycle_b(&self) -> u32 {
        self.tick();
        if IN_CYCLE.with(|c| c.replace(true)) {
            return 2;
        }
        self.cross.wait();
        self.cycle_a() + 20
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "fib")]
    fn fib(&self, n: u64) -> u64 {
        self.tick();
        if n < 2 {
            n
        } else {
            self.fib(n - 1) + self.fib(n - 2)
        }
    }
}

/// `key_self`: the instance's value is part of the key.
#[derive(Serialize)]
struct Scaler {
    factor: u32,
    #[serde(skip)]
    cache: CacheManager,
    #[serde(skip)]
    calls: Arc<AtomicUsize>,
}

impl Scaler {
    #[cache_with_invalidation(cache = self.cache, key_prefix = "scale", key_self)]
    fn scale(&self, x: u32) -> u32 {
        self.calls.fetch_add(1, Ordering::SeqCst);
        x * self.factor
    }
}

/// The behaviour suite: every check on a fresh namespace from `make`.
pub fn run(make: &dyn Fn(&str) -> CacheManager) {
    hits_after_the_first_call(&Svc::new(make(&unique_namespace("memo-hit"))));
    list_and_map_arguments_key_by_value(&Svc::new(make(&unique_namespace("memo-args"))));
    no_collisions_between_functions(&Svc::new(make(&unique_namespace("memo-coll"))));
    result_caches_ok_only(&Svc::new(make(&unique_namespace("memo-res"))));
    option_none_follows_the_option(&Svc::new(make(&unique_namespace("memo-opt"))));
    forget_helpers(&Svc::new(make(&unique_namespace("memo-forget"))));
    validation_stamps(&Svc::new(make(&unique_namespace("memo-stamp"))));
    invalidate_on_mutations(&Svc::new(make(&unique_namespace("memo-inv"))));
    key_self(&make(&unique_namespace("memo-self")));
    single_flight(&Arc::new(Svc::new(make(&unique_namespace("memo-flight")))));
    panics_do_not_deadlock(&Arc::new(Svc::new(make(&unique_namespace("memo-panic")))));
    recursion_does_not_deadlock(&Svc::new(make(&unique_namespace("memo-rec"))));
    cross_thread_cycles_do_not_deadlock(&Arc::new(Svc::new(make(&unique_namespace("memo-cycle")))));
    let ns = unique_namespace("memo-two");
    two_caches_never_wait_for_each_other(make(&ns), make(&ns));
    one_miss_per_memoized_miss(&Svc::new(make(&unique_namespace("memo-stats"))));
    no_result_older_than_an_invalidation(make);
}

fn hits_after_the_first_call(s: &Svc) {
    let m = HashMap::new();
    assert_eq!(s.weigh(&[1, 2], &m), 5);
    assert_eq!(s.weigh(&[1, 2], &m), 5);
    assert_eq!(s.calls(), 1);
    let key = s.weigh_cache_key(&[1, 2], &m).unwrap();
    assert!(key.starts_with("lists:"), "{key}");
    assert!(key.contains("::weigh:"), "{key}");
    assert_eq!(s.cache.get::<u64>(&key).unwrap(), Some(5));
    // The documented layout: ddf::memo::memo_key over the tuple of the arguments.
    assert_eq!(
        key,
        ddf::memo::memo_key(
            Some("lists"),
            module_path!(),
            "weigh",
            &(&[1u32, 2][..], &m)
        )
        .unwrap()
    );
}

fn list_and_map_arguments_key_by_value(s: &Svc) {
    let empty = HashMap::new();
    assert_eq!(s.weigh(&[1, 2], &empty), 5);
    assert_eq!(s.weigh(&[2, 1], &empty), 4);
    assert_eq!(s.weigh(&[1, 2, 0], &empty), 5);
    assert_eq!(s.calls(), 3);
    // Maps built in different orders are one value: one key.
    let a: HashMap<String, u32> = (0..40).map(|i| (format!("k{i}"), i)).collect();
    let mut b = HashMap::new();
    for i in (0..40).rev() {
        b.insert(format!("k{i}"), i);
    }
    assert_eq!(s.weigh(&[], &a), s.weigh(&[], &b));
    assert_eq!(s.calls(), 4);
    let mut c = a.clone();
    c.insert("k0".into(), 100);
    assert_eq!(s.weigh(&[], &c), 880);
    assert_eq!(s.calls(), 5);
}

fn no_collisions_between_functions(s: &Svc) {
    // Two functions with one key_prefix.
    assert_eq!(s.upper("Ab"), "AB");
    assert_eq!(s.lower("Ab"), "ab");
    // The same single string argument and no prefix.
    assert_eq!(s.len_a("abc"), 3);
    assert_eq!(s.len_b("abc"), 6);
    assert_eq!(s.calls(), 4);
    assert_eq!(s.upper("Ab"), "AB");
    assert_eq!(s.lower("Ab"), "ab");
    assert_eq!(s.len_a("abc"), 3);
    assert_eq!(s.len_b("abc"), 6);
    assert_eq!(s.calls(), 4);
}

fn result_caches_ok_only(s: &Svc) {
    assert!(s.parse("x").is_err());
    assert!(s.parse("x").is_err());
    assert_eq!(s.calls(), 2);
    assert_eq!(s.parse("7"), Ok(7));
    assert_eq!(s.parse("7"), Ok(7));
    assert_eq!(s.calls(), 3);
}

fn option_none_follows_the_option(s: &Svc) {
    assert_eq!(s.find("x"), None);
    assert_eq!(s.find("x"), None);
    assert_eq!(s.calls(), 2, "None is not cached by default");
    assert_eq!(s.find("5"), Some(5));
    assert_eq!(s.find("5"), Some(5));
    assert_eq!(s.calls(), 3);
    assert_eq!(s.find_none("x"), None);
    assert_eq!(s.find_none("x"), None);
    assert_eq!(s.calls(), 4, "cache_none caches None");
    assert_eq!(s.find_none("6"), Some(6));
    assert_eq!(s.find_none("6"), Some(6));
    assert_eq!(s.calls(), 5);
}

fn forget_helpers(s: &Svc) {
    s.upper("a");
    s.upper("b");
    s.lower("a");
    assert_eq!(s.calls(), 3);
    assert!(s.upper_forget("a").unwrap());
    assert!(!s.upper_forget("a").unwrap());
    s.upper("a");
    s.upper("b");
    assert_eq!(s.calls(), 4);
    // Forget all calls of `upper`; `lower` (same prefix) keeps its entries.
    assert_eq!(s.upper_forget_all().unwrap(), 2);
    s.upper("a");
    s.lower("a");
    assert_eq!(s.calls(), 5);
    // The key_prefix forgets both.
    assert_eq!(s.cache.invalidate_pattern("shared:").unwrap(), 2);
    s.upper("a");
    s.lower("a");
    assert_eq!(s.calls(), 7);
}

fn validation_stamps(s: &Svc) {
    assert_eq!(s.stamped("a"), "a@v1");
    assert_eq!(s.stamped("a"), "a@v1");
    assert_eq!(s.calls(), 1);
    *s.stamp.lock().unwrap() = "v2".into();
    assert_eq!(
        s.stamped("a"),
        "a@v2",
        "an entry of another stamp is never served"
    );
    assert_eq!(s.stamped("a"), "a@v2");
    assert_eq!(s.calls(), 2);
    *s.stamp.lock().unwrap() = "v1".into();
    assert_eq!(s.stamped("a"), "a@v1");
    assert_eq!(s.calls(), 3);
}

fn invalidate_on_mutations(s: &Svc) {
    s.upper("a");
    s.web();
    s.len_a("a");
    assert_eq!(s.calls(), 3);
    // A failed mutation invalidates nothing.
    assert!(s.edit("web", false).is_err());
    s.upper("a");
    s.web();
    assert_eq!(s.calls(), 3);
    // A successful one removes "shared:" and "svc:web:", and nothing else.
    s.edit("web", true).unwrap();
    s.upper("a");
    s.web();
    s.len_a("a");
    assert_eq!(s.calls(), 5);
    // "svc:db:" does not touch "svc:web:".
    s.edit("db", true).unwrap();
    s.web();
    assert_eq!(s.calls(), 5);
}

fn key_self(cache: &CacheManager) {
    let calls = Arc::new(AtomicUsize::new(0));
    let two = Scaler {
        factor: 2,
        cache: cache.clone(),
        calls: calls.clone(),
    };
    let three = Scaler {
        factor: 3,
        cache: cache.clone(),
        calls: calls.clone(),
    };
    assert_eq!(two.scale(5), 10);
    assert_eq!(three.scale(5), 15);
    assert_eq!(two.scale(5), 10);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(three.scale_forget(5).unwrap());
}

fn single_flight(s: &Arc<Svc>) {
    for v in fixture::together(8, |_| s.slow(42)) {
        assert_eq!(v, 42);
    }
    assert_eq!(s.calls(), 1, "concurrent misses of one key compute once");
}

fn panics_do_not_deadlock(s: &Arc<Svc>) {
    // A panic in the function leaves no flight behind.
    s.panic_next.store(true, Ordering::SeqCst);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.slow(1)));
    assert!(r.is_err());
    assert_eq!(s.slow(1), 1);
    // A leader that panics while others wait: they wake up and compute.
    s.panic_next.store(true, Ordering::SeqCst);
    let n = 4;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (s, b) = (s.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                s.slow(2)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join()).collect();
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    assert!(results.into_iter().flatten().all(|v| v == 2));
    // One waiter took the lead over and the others read its result: the panicking call and one
    // more, whatever the threads' timing (a key has one flight at a time).
    assert_eq!(
        s.calls(),
        4,
        "one computation after the panic, not one per waiter"
    );
}

fn recursion_does_not_deadlock(s: &Svc) {
    assert_eq!(s.fib(20), 6765);
    assert_eq!(s.calls(), 21, "each n computed once");
}

fn cross_thread_cycles_do_not_deadlock(s: &Arc<Svc>) {
    let (tx, rx) = std::sync::mpsc::channel();
    for a in [true, false] {
        let (s, tx) = (s.clone(), tx.clone());
        std::thread::spawn(move || {
            tx.send(if a { s.cycle_a() } else { s.cycle_b() }).unwrap();
        });
    }
    // A bound, not a timing assertion: a deadlock fails here instead of hanging the suite.
    let deadline = Duration::from_secs(60);
    let got = [
        rx.recv_timeout(deadline).expect("deadlock"),
        rx.recv_timeout(deadline).expect("deadlock"),
    ];
    // Which nested call finds the other's stored result depends on scheduling (12 or 31 for
    // cycle_a, 21, 32 or 51 for cycle_b); every outcome is a completed top-level call.
    assert!(got.iter().all(|v| *v > 10), "{got:?}");
}

/// Meets another caller inside the memoized body: two calls of one key complete only if
/// neither waits for the other's flight.
struct Meeting {
    cache: CacheManager,
    both: Arc<Barrier>,
}

impl Meeting {
    #[cache_with_invalidation(cache = self.cache, key_prefix = "meet")]
    fn meet(&self) -> u32 {
        self.both.wait();
        1
    }
}

fn two_caches_never_wait_for_each_other(a: CacheManager, b: CacheManager) {
    // Two managers over the same storage and namespace are two caches: single-flight is per
    // cache (its id), so each computes; clones of one manager share flights (`single_flight`).
    let both = Arc::new(Barrier::new(2));
    let (tx, rx) = std::sync::mpsc::channel();
    for cache in [a, b] {
        let (m, tx) = (
            Meeting {
                cache,
                both: both.clone(),
            },
            tx.clone(),
        );
        std::thread::spawn(move || tx.send(m.meet()).unwrap());
    }
    // A bound, not a timing assertion: a wait between the two fails here instead of hanging.
    let deadline = Duration::from_secs(60);
    for _ in 0..2 {
        assert_eq!(rx.recv_timeout(deadline).expect("deadlock"), 1);
    }
}

fn one_miss_per_memoized_miss(s: &Svc) {
    // Two calls that compute, then the same two from the cache: one get each.
    s.upper("a");
    s.lower("b");
    let st = s.cache.stats();
    assert_eq!((st.misses, st.hits, st.sets), (2, 0, 2), "{st}");
    s.upper("a");
    s.lower("b");
    let st = s.cache.stats();
    assert_eq!((st.misses, st.hits, st.sets), (2, 2, 2), "{st}");
    assert_eq!(s.calls(), 2);
}

/// How long a held computation waits to be released. A bound, not synchronisation: when a
/// caller wrongly waits for the held flight, the computation goes on after this and the test
/// fails on the value instead of hanging.
const HOLD_BOUND: Duration = Duration::from_secs(10);

/// Memoizes a read of `data`; its next computation can be held inside the function (after it
/// read the data) while the test changes the data.
struct Versioned {
    cache: CacheManager,
    data: AtomicU64,
    calls: AtomicUsize,
    hold_next: AtomicBool,
    /// Met by the held computation once it read the data, and by the test.
    inside: Barrier,
    release: Mutex<mpsc::Receiver<()>>,
    releaser: mpsc::Sender<()>,
}

impl Versioned {
    fn new(cache: CacheManager) -> Arc<Self> {
        let (releaser, release) = mpsc::channel();
        Arc::new(Versioned {
            cache,
            data: AtomicU64::new(0),
            calls: AtomicUsize::new(0),
            hold_next: AtomicBool::new(false),
            inside: Barrier::new(2),
            release: Mutex::new(release),
            releaser,
        })
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "ver")]
    fn read(&self) -> u64 {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let v = self.data.load(Ordering::SeqCst);
        if self.hold_next.swap(false, Ordering::SeqCst) {
            self.inside.wait();
            let _ = self.release.lock().unwrap().recv_timeout(HOLD_BOUND);
        }
        v
    }

    /// A mutation: `invalidate_on` removes every `read` result once it returns.
    #[cache_with_invalidation(cache = self.cache, invalidate_on = ["ver:"])]
    fn write(&self, v: u64) {
        self.data.store(v, Ordering::SeqCst);
    }

    /// Starts a `read` on another thread and returns once its computation read the data and is
    /// held (it leads the flight of the key).
    fn held_read(self: &Arc<Self>) -> std::thread::JoinHandle<u64> {
        self.hold_next.store(true, Ordering::SeqCst);
        let s = self.clone();
        let t = std::thread::spawn(move || s.read());
        self.inside.wait();
        t
    }

    fn release(&self) {
        self.releaser.send(()).unwrap();
    }
}

/// The ways to change the data and invalidate `read`'s results: each returns when done.
type Mutation = (&'static str, fn(&Versioned, u64));

const MUTATIONS: [Mutation; 7] = [
    ("invalidate_on", |s, v| s.write(v)),
    ("_forget", |s, v| {
        s.data.store(v, Ordering::SeqCst);
        s.read_forget().unwrap();
    }),
    ("_forget_all", |s, v| {
        s.data.store(v, Ordering::SeqCst);
        s.read_forget_all().unwrap();
    }),
    ("delete", |s, v| {
        s.data.store(v, Ordering::SeqCst);
        s.cache.delete(&s.read_cache_key().unwrap()).unwrap();
    }),
    ("delete_many", |s, v| {
        s.data.store(v, Ordering::SeqCst);
        s.cache
            .delete_many(&[&s.read_cache_key().unwrap()])
            .unwrap();
    }),
    ("invalidate_pattern", |s, v| {
        s.data.store(v, Ordering::SeqCst);
        s.cache.invalidate_pattern("ver:").unwrap();
    }),
    ("flush_all", |s, v| {
        s.data.store(v, Ordering::SeqCst);
        s.cache.flush_all().unwrap();
    }),
];

/// A memoized call that starts after an invalidation returned never receives a result computed
/// before it: it does not join the older flight, and the older flight's leader does not store
/// its result. The order of events is fixed by barriers and a channel, not by sleeps.
fn no_result_older_than_an_invalidation(make: &dyn Fn(&str) -> CacheManager) {
    for (what, mutate) in MUTATIONS {
        // The leader ends after the mutation: it must not store what it computed before.
        let s = Versioned::new(make(&unique_namespace("memo-epoch")));
        let leader = s.held_read();
        mutate(&s, 1);
        s.release();
        assert_eq!(
            leader.join().unwrap(),
            0,
            "{what}: the leader started before"
        );
        assert_eq!(
            s.read(),
            1,
            "{what}: a result older than the invalidation was stored"
        );

        // A caller that starts after the mutation, while the older flight is still held.
        let s = Versioned::new(make(&unique_namespace("memo-epoch")));
        let leader = s.held_read();
        mutate(&s, 1);
        let t = Instant::now();
        assert_eq!(
            s.read(),
            1,
            "{what}: a caller that started after the invalidation joined an older flight"
        );
        assert!(
            t.elapsed() < HOLD_BOUND,
            "{what}: it waited for the older flight"
        );
        s.release();
        assert_eq!(leader.join().unwrap(), 0);
        assert_eq!(
            s.read(),
            1,
            "{what}: the older leader overwrote the newer result"
        );
        assert_eq!(s.calls.load(Ordering::SeqCst), 2);
    }
}

fn file_cache(dir: &Path, ns: &str) -> CacheManager {
    CacheManager::new(
        CacheConfig::default()
            .with_backend(CacheBackend::Pickle)
            .with_pickle_dir(dir)
            .with_namespace(ns),
    )
    .unwrap()
}

#[test]
fn memo_on_the_file_backend() {
    let dir = tempfile::tempdir().unwrap();
    run(&|ns| file_cache(dir.path(), ns));
}

#[test]
fn memo_on_the_none_backend_always_computes() {
    let cache = CacheManager::new(CacheConfig::default().with_backend(CacheBackend::None)).unwrap();
    let s = Svc::new(cache);
    assert_eq!(s.upper("a"), "A");
    assert_eq!(s.upper("a"), "A");
    assert_eq!(s.parse("3"), Ok(3));
    assert_eq!(s.calls(), 3);
    assert!(!s.upper_forget("a").unwrap());
    assert_eq!(s.upper_forget_all().unwrap(), 0);
    s.edit("web", true).unwrap();
}

#[test]
fn memo_on_a_disabled_cache_always_computes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(
        CacheConfig::default()
            .with_pickle_dir(dir.path())
            .with_enabled(false),
    )
    .unwrap();
    let s = Svc::new(cache);
    s.upper("a");
    s.upper("a");
    assert_eq!(s.calls(), 2);
}

/// A backend that fails every operation: the fault a dead server produces, without waiting
/// for timeouts. Counts the reads and writes it was asked for.
#[derive(Debug, Default)]
struct Broken {
    gets: AtomicUsize,
    sets: AtomicUsize,
}

fn down() -> Error {
    Error::Backend {
        backend: "broken",
        message: "the server is down".into(),
        temporary: true,
        source: None,
    }
}

impl Backend for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }
    fn get(&self, _: &str) -> ddf::Result<Option<Item>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        Err(down())
    }
    fn set(&self, _: &str, _: &Item, _: Option<Duration>) -> ddf::Result<()> {
        self.sets.fetch_add(1, Ordering::SeqCst);
        Err(down())
    }
    fn delete(&self, _: &str) -> ddf::Result<bool> {
        Err(down())
    }
    fn delete_prefix(&self, _: &str) -> ddf::Result<u64> {
        Err(down())
    }
    fn clear(&self) -> ddf::Result<()> {
        Err(down())
    }
    fn ping(&self) -> ddf::Result<ddf::BackendStatus> {
        Err(down())
    }
}

#[test]
fn cache_errors_fail_open() {
    let broken = Arc::new(Broken::default());
    let s = Svc::new(CacheManager::with_backend(
        CacheConfig::default(),
        broken.clone(),
    ));
    assert_eq!(s.upper("a"), "A");
    assert_eq!(s.upper("a"), "A");
    assert_eq!(s.calls(), 2);
    // A lookup that failed for a temporary reason is neither repeated nor followed by a store:
    // each would wait on the server again.
    assert_eq!(broken.gets.load(Ordering::SeqCst), 2);
    assert_eq!(broken.sets.load(Ordering::SeqCst), 0);
    assert_eq!(s.parse("4"), Ok(4));
    // A mutation's result is returned even when invalidation fails.
    assert_eq!(s.edit("web", true), Ok(()));
    // The helpers report the error: they are cache operations.
    assert!(s.upper_forget("a").is_err());
    assert!(s.upper_forget_all().is_err());
}

#[test]
fn a_value_of_another_type_is_recomputed_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let s = Svc::new(file_cache(dir.path(), "t:"));
    let key = s.upper_cache_key("a").unwrap();
    s.cache.set(&key, &[1, 2, 3], None).unwrap();
    assert_eq!(s.upper("a"), "A");
    assert_eq!(s.upper("a"), "A");
    assert_eq!(s.calls(), 1);
}

// Free functions and the global cache.

thread_local! {
    static IN_CYCLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

static FREE_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cache_with_invalidation(ttl = 600, key_prefix = "ddf-it-global-memo")]
fn global_double(x: u32, tags: BTreeMap<String, Vec<String>>) -> u64 {
    FREE_CALLS.fetch_add(1, Ordering::SeqCst);
    u64::from(x) * 2 + tags.len() as u64
}

#[test]
fn free_functions_use_the_global_cache_by_default() {
    let _ = global_double_forget_all();
    let tags = BTreeMap::from([("a".to_owned(), vec!["b".to_owned()])]);
    assert_eq!(
        global_double(std::process::id(), tags.clone()),
        u64::from(std::process::id()) * 2 + 1
    );
    assert_eq!(
        global_double(std::process::id(), tags.clone()),
        u64::from(std::process::id()) * 2 + 1
    );
    let active = ddf::CACHE.config().enabled && ddf::CACHE.backend_name() != "none";
    if active {
        assert_eq!(FREE_CALLS.load(Ordering::SeqCst), 1);
        let key = global_double_cache_key(std::process::id(), tags.clone()).unwrap();
        assert!(ddf::CACHE.get::<u64>(&key).unwrap().is_some());
        assert!(global_double_forget(std::process::id(), tags).unwrap());
    }
}

// Two processes: the parent test runs itself again as a child (see `process`), with the
// shared directory as the child's job.

const CHILD_DIR: &str = "DDF_MEMO_CHILD_DIR";
const CHILD_TEST: &str = "memo::two_processes_share_results";

/// The body of one child process of the test below: one memoized call on the shared directory;
/// prints how many times the function ran.
fn two_processes_child(dir: &str) {
    let s = Svc::new(file_cache(Path::new(dir), "shared-ns:"));
    let m = HashMap::from([
        ("x".to_owned(), 1),
        ("y".to_owned(), 2),
        ("z".to_owned(), 3),
    ]);
    assert_eq!(s.weigh(&[1, 2, 3], &m), 20);
    println!("DDF_MEMO_COMPUTED={}", s.calls());
}

fn run_child(dir: &Path) -> usize {
    let child = process::child(CHILD_TEST, CHILD_DIR, &dir.display().to_string())
        .spawn()
        .unwrap();
    let stdout = process::check(child, "memo child");
    stdout
        .lines()
        .find_map(|l| l.split("DDF_MEMO_COMPUTED=").nth(1))
        .unwrap_or_else(|| panic!("no marker in the child's output:\n{stdout}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn two_processes_share_results() {
    if let Some(dir) = process::job(CHILD_DIR) {
        return two_processes_child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    // The map is built in another iteration order in each process (random HashMap seeds).
    assert_eq!(run_child(dir.path()), 1, "the first process computes");
    assert_eq!(
        run_child(dir.path()),
        0,
        "the second one reads the first one's result"
    );
}

// Signatures the attribute must accept: generics, `impl Trait`, `mut` arguments, `self` by
// value and `&mut self`, a `LazyLock` as the cache.

static NONE_CACHE: std::sync::LazyLock<CacheManager> = std::sync::LazyLock::new(|| {
    CacheManager::new(CacheConfig::default().with_backend(CacheBackend::None)).unwrap()
});

#[cache_with_invalidation(cache = NONE_CACHE, key_prefix = "gen")]
fn generic_len<T>(mut items: Vec<T>, extra: impl Serialize) -> usize
where
    T: Serialize + Clone + std::fmt::Debug,
{
    let _ = extra;
    items.push(items[0].clone());
    items.len()
}

/// A mutation may destructure its arguments (only memoization keys them by name).
#[cache_with_invalidation(cache = NONE_CACHE, invalidate_on = ["gen:"])]
fn add_pair((a, b): (u32, u32)) -> u32 {
    a + b
}

#[derive(Serialize, Clone)]
struct Counter {
    n: u32,
}

impl Counter {
    #[cache_with_invalidation(cache = NONE_CACHE, key_self)]
    fn into_double(self) -> u32 {
        self.n * 2
    }

    #[cache_with_invalidation(cache = NONE_CACHE)]
    fn bump(&mut self, by: u32) -> u32 {
        self.n += by;
        self.n
    }
}

#[test]
fn odd_signatures_compile_and_run() {
    assert_eq!(generic_len(vec![1u8], "x"), 2);
    assert!(
        generic_len_cache_key(vec!["a"], 1u8)
            .unwrap()
            .starts_with("gen:")
    );
    assert_eq!(generic_len_forget_all().unwrap(), 0);
    assert_eq!(add_pair((1, 2)), 3);
    let mut c = Counter { n: 1 };
    assert_eq!(c.bump(2), 3);
    assert_eq!(c.clone().into_double(), 6);
    assert!(!c.into_double_forget().unwrap());
}

/// `cache = self.cache` with `&mut self` and `self` receivers, an inner attribute, and
/// `validation = path` (called with no arguments).
struct Owned {
    cache: CacheManager,
    n: u32,
}

static STAMP_CALLS: AtomicUsize = AtomicUsize::new(0);

fn fixed_stamp() -> &'static str {
    STAMP_CALLS.fetch_add(1, Ordering::SeqCst);
    "stamp-1"
}

impl Owned {
    #[cache_with_invalidation(cache = self.cache, key_prefix = "owned", validation = fixed_stamp)]
    fn add(&mut self, by: u32) -> u32 {
        #![allow(clippy::arithmetic_side_effects)]
        self.n += by;
        self.n
    }

    #[cache_with_invalidation(cache = self.cache, invalidate_on = ["owned:"])]
    fn reset(&mut self) -> u32 {
        self.n = 0;
        self.n
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "owned-into")]
    fn into_n(self) -> u32 {
        self.n
    }
}

#[test]
fn receivers_and_validation_paths() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Owned {
        cache: file_cache(dir.path(), "recv:"),
        n: 0,
    };
    assert_eq!(o.add(2), 2);
    assert_eq!(o.add(2), 2, "memoized: self is not part of the key");
    assert_eq!(STAMP_CALLS.load(Ordering::SeqCst), 2);
    let key = o.add_cache_key(2).unwrap();
    // With validation, the stamp is stored beside the value.
    assert_eq!(
        o.cache.get::<(String, u32)>(&key).unwrap(),
        Some(("stamp-1".to_owned(), 2))
    );
    assert_eq!(o.reset(), 0);
    assert_eq!(o.add(2), 2, "recomputed after the mutation");
    assert_eq!(o.n, 2);
    assert_eq!(o.into_n(), 2);
}

#[test]
#[cfg(feature = "redis")]
fn memo_on_redis() {
    let Some((_server, configs)) = fixture::redis() else {
        return;
    };
    for c in configs {
        run(&|ns| CacheManager::new(c.clone().with_namespace(ns)).unwrap());
    }
}

#[test]
#[cfg(feature = "memcached")]
fn memo_on_memcached() {
    let Some((_servers, configs)) = fixture::memcached() else {
        return;
    };
    for c in configs {
        run(&|ns| CacheManager::new(c.clone().with_namespace(ns)).unwrap());
    }
}

/// A memoized call against a stopped (SIGSTOP) Redis makes one read, not three (a
/// lookup, a second lookup, a store: 1.8 s with `timeout = 0.5` before): a lookup that met a
/// temporary failure computes without looking up again or storing. With each fallback: `pickle`
/// (the failed read is answered by a miss) and `error` (the read returns the error).
#[test]
#[cfg(feature = "redis")]
fn a_memoized_call_on_a_stopped_redis_waits_one_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let Some((server, configs)) = fixture::redis_to_stop(dir.path()) else {
        return;
    };
    let caches: Vec<_> = configs
        .into_iter()
        .map(|(fallback, c)| {
            let c = c.with_namespace(unique_namespace("memo-stop"));
            (fallback, Svc::new(CacheManager::new(c).unwrap()))
        })
        .collect();
    for (_, s) in &caches {
        assert_eq!(s.upper("warm"), "WARM"); // the connection is open before the server stops
    }
    server.process.signal("STOP");
    for (fallback, s) in &caches {
        let before = s.cache.stats();
        let t = Instant::now();
        assert_eq!(s.upper("a"), "A");
        let took = t.elapsed();
        let after = s.cache.stats();
        eprintln!("[{fallback:?}] a memoized call on a stopped Redis took {took:?}");
        // "One timeout, not three" shown by what reached the cache, not by a clock: one read,
        // no second lookup, no store.
        assert_eq!(s.calls(), 2);
        assert_eq!(
            after.hits + after.misses + after.errors,
            before.hits + before.misses + before.errors + 1,
            "[{fallback:?}] one read: {before} -> {after}"
        );
        assert_eq!(after.sets, before.sets, "[{fallback:?}] no store");
        // Only a "does not hang" bound, far above the three timeouts of the old behaviour.
        assert!(took < 10 * fixture::STOP_TIMEOUT, "[{fallback:?}] {took:?}");
    }
    server.process.signal("CONT");
}
