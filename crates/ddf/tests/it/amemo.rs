//! `#[cache_with_invalidation]` on an `async fn` (feature `async`): hits and misses, `Result`
//! and `Option`, validation, the async helpers, `invalidate_on`, concurrent callers running the
//! body once, a leader whose task is aborted mid-body, and the invalidation rules.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use ddf::{AsyncCacheManager, CacheBackend, CacheConfig, cache_with_invalidation};
use tokio::sync::Semaphore;

use crate::conformance::unique_namespace;
use crate::memo::fixture;

mod invalidation;

/// The cache the async face memoizes in.
type Cache = AsyncCacheManager;

fn with_namespace(config: CacheConfig) -> Cache {
    AsyncCacheManager::new(config.with_namespace(unique_namespace("amemo"))).unwrap()
}

/// A service whose memoized async methods use the cache it holds and count their runs.
struct Svc {
    cache: Cache,
    calls: AtomicUsize,
    stamp: Mutex<String>,
    /// Bodies of `gated` wait for a permit here.
    gate: Semaphore,
    /// Bodies of `gated` add one here when they start.
    started: Semaphore,
}

impl Svc {
    fn new(cache: Cache) -> Self {
        Svc {
            cache,
            calls: AtomicUsize::new(0),
            stamp: Mutex::new("v1".into()),
            gate: Semaphore::new(0),
            started: Semaphore::new(0),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn tick(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    async fn current_stamp(&self) -> String {
        tokio::task::yield_now().await;
        self.stamp.lock().unwrap().clone()
    }

    #[cache_with_invalidation(cache = self.cache, ttl = 3600, key_prefix = "lists")]
    async fn weigh(&self, xs: &[u32], m: &HashMap<String, u32>) -> u64 {
        self.tick();
        tokio::task::yield_now().await;
        xs.iter().map(|x| u64::from(*x)).sum::<u64>() * 100
            + m.values().map(|v| u64::from(*v)).sum::<u64>()
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "shared")]
    async fn upper(&self, s: &str) -> String {
        self.tick();
        s.to_uppercase()
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "shared")]
    async fn lower(&self, s: &str) -> String {
        self.tick();
        s.to_lowercase()
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "res")]
    async fn parse(&self, s: &str) -> Result<u32, std::num::ParseIntError> {
        self.tick();
        let n: u32 = s.parse()?;
        if n == 0 {
            return Ok(1000);
        }
        Ok(n)
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "opt")]
    async fn find(&self, s: &str) -> Option<u32> {
        self.tick();
        s.parse().ok()
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "stamp", validation = self.current_stamp().await)]
    async fn stamped(&self, s: &str) -> String {
        self.tick();
        format!("{s}@{}", self.current_stamp().await)
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "svc:web")]
    async fn web(&self) -> u32 {
        self.tick();
        80
    }

    #[cache_with_invalidation(cache = self.cache, invalidate_on = ["shared:", "svc:{name}:"])]
    async fn edit(&self, name: &str, ok: bool) -> Result<(), String> {
        tokio::task::yield_now().await;
        if ok {
            Ok(())
        } else {
            Err(format!("cannot edit {name}"))
        }
    }

    /// Announces its start, then waits for a permit: what the concurrency tests hold.
    #[cache_with_invalidation(cache = self.cache, key_prefix = "gated")]
    async fn gated(&self, x: u32) -> u32 {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        self.started.add_permits(1);
        self.gate.acquire().await.unwrap().forget();
        x * 1000 + n as u32
    }

    #[cache_with_invalidation(cache = self.cache, key_prefix = "fib")]
    async fn fib(&self, n: u64) -> u64 {
        self.tick();
        if n < 2 {
            n
        } else {
            Box::pin(self.fib(n - 1)).await + Box::pin(self.fib(n - 2)).await
        }
    }
}

fn assert_send<T: Send>(t: T) -> T {
    t
}

/// The behaviour suite, on a fresh cache from `make` per check.
fn run(make: &(dyn Fn() -> Cache + Sync)) {
    let rt = fixture::runtime(4);
    rt.block_on(async {
        hits_and_keys(&Svc::new(make())).await;
        result_and_option(&Svc::new(make())).await;
        validation(&Svc::new(make())).await;
        helpers(&Svc::new(make())).await;
        invalidate_on(&Svc::new(make())).await;
        recursion(&Svc::new(make())).await;
        one_run_for_concurrent_callers(Arc::new(Svc::new(make()))).await;
        an_aborted_leader_hands_over(Arc::new(Svc::new(make()))).await;
        a_caller_after_an_invalidation_does_not_wait(Arc::new(Svc::new(make()))).await;
        invalidation::no_result_older_than_an_invalidation(make).await;
        invalidation::concurrent_reads_follow_the_model(make).await;
    });
}

async fn hits_and_keys(s: &Svc) {
    let m: HashMap<String, u32> = [("a".into(), 1), ("b".into(), 2)].into();
    assert_eq!(assert_send(s.weigh(&[1, 2], &m)).await, 303);
    assert_eq!(s.weigh(&[1, 2], &m).await, 303);
    assert_eq!(s.calls(), 1, "the second call is a hit");
    assert_eq!(s.weigh(&[2, 1], &m).await, 303);
    assert_eq!(s.calls(), 2, "other arguments, other key");
    assert!(
        s.weigh_cache_key(&[1, 2], &m)
            .unwrap()
            .starts_with("lists:")
    );
    assert_ne!(
        s.upper_cache_key("a").unwrap(),
        s.lower_cache_key("a").unwrap()
    );
}

async fn result_and_option(s: &Svc) {
    assert!(s.parse("x").await.is_err());
    assert!(s.parse("x").await.is_err());
    assert_eq!(s.calls(), 2, "Err is never cached");
    assert_eq!(s.parse("0").await, Ok(1000), "`return` in the body");
    assert_eq!(s.parse("0").await, Ok(1000));
    assert_eq!(s.calls(), 3, "Ok is cached");
    assert_eq!(s.find("x").await, None);
    assert_eq!(s.find("x").await, None);
    assert_eq!(s.find("7").await, Some(7));
    assert_eq!(s.find("7").await, Some(7));
    assert_eq!(s.calls(), 6, "None is not cached, Some is");
}

async fn validation(s: &Svc) {
    assert_eq!(s.stamped("a").await, "a@v1");
    assert_eq!(s.stamped("a").await, "a@v1");
    assert_eq!(s.calls(), 1);
    *s.stamp.lock().unwrap() = "v2".into();
    assert_eq!(
        s.stamped("a").await,
        "a@v2",
        "another stamp is never served"
    );
    assert_eq!(s.calls(), 2);
}

async fn helpers(s: &Svc) {
    s.upper("a").await;
    s.upper("b").await;
    s.lower("a").await;
    assert_eq!(s.calls(), 3);
    assert!(s.upper_forget("a").await.unwrap());
    assert!(!s.upper_forget("a").await.unwrap());
    s.upper("a").await;
    s.upper("b").await;
    assert_eq!(s.calls(), 4);
    assert_eq!(s.upper_forget_all().await.unwrap(), 2);
    s.upper("a").await;
    s.lower("a").await;
    assert_eq!(s.calls(), 5, "forget_all of upper keeps lower");
}

async fn invalidate_on(s: &Svc) {
    s.upper("a").await;
    s.web().await;
    assert_eq!(s.calls(), 2);
    assert!(s.edit("web", false).await.is_err());
    s.upper("a").await;
    s.web().await;
    assert_eq!(s.calls(), 2, "a failed mutation invalidates nothing");
    s.edit("web", true).await.unwrap();
    s.upper("a").await;
    s.web().await;
    assert_eq!(s.calls(), 4);
    s.edit("db", true).await.unwrap();
    s.web().await;
    assert_eq!(s.calls(), 4, "svc:db: does not touch svc:web:");
}

/// A memoized call inside a leader's body never waits for another flight.
async fn recursion(s: &Svc) {
    assert_eq!(s.fib(20).await, 6765);
    assert_eq!(s.calls(), 21, "each argument computed once");
}

/// Concurrent callers of one key: the body runs once, every caller gets its value.
async fn one_run_for_concurrent_callers(s: Arc<Svc>) {
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.gated(7).await })
        })
        .collect();
    // The leader's body started: release it.
    s.started.acquire().await.unwrap().forget();
    s.gate.add_permits(1);
    for t in tasks {
        assert_eq!(t.await.unwrap(), 7000);
    }
    assert_eq!(s.calls(), 1, "one body ran");
}

/// The leading caller's task is aborted mid-body: one waiter takes over, every other caller
/// gets the value it computed.
async fn an_aborted_leader_hands_over(s: Arc<Svc>) {
    let leader = {
        let s = s.clone();
        tokio::spawn(async move { s.gated(1).await })
    };
    s.started.acquire().await.unwrap().forget();
    let waiters: Vec<_> = (0..16)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.gated(1).await })
        })
        .collect();
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    // The taker's body started (the aborted one was the first): release it.
    s.started.acquire().await.unwrap().forget();
    s.gate.add_permits(1);
    for w in waiters {
        assert_eq!(w.await.unwrap(), 1001, "the taker's value");
    }
    assert_eq!(s.calls(), 2, "the aborted body, then one taker");
}

/// A caller that starts after an invalidation returned never waits for, or receives, a result
/// computed before it; the older computation's result is not stored.
async fn a_caller_after_an_invalidation_does_not_wait(s: Arc<Svc>) {
    let old = {
        let s = s.clone();
        tokio::spawn(async move { s.gated(3).await })
    };
    s.started.acquire().await.unwrap().forget();
    assert_eq!(s.gated_forget_all().await.unwrap(), 0);
    let new = {
        let s = s.clone();
        tokio::spawn(async move { s.gated(3).await })
    };
    // The new caller leads its own flight: its body starts while the old one still waits.
    s.started.acquire().await.unwrap().forget();
    s.gate.add_permits(2);
    assert_eq!(
        old.await.unwrap(),
        3000,
        "the old caller gets its own result"
    );
    assert_eq!(new.await.unwrap(), 3001);
    assert_eq!(s.gated(3).await, 3001, "only the newer result was stored");
    assert_eq!(s.calls(), 2);
}

#[test]
fn async_memo_on_the_file_backend() {
    let dir = tempfile::tempdir().unwrap();
    run(&|| with_namespace(CacheConfig::default().with_pickle_dir(dir.path())));
}

#[test]
#[cfg(feature = "redis")]
fn async_memo_on_redis() {
    let Some((_server, configs)) = fixture::redis() else {
        return;
    };
    for c in configs {
        run(&|| with_namespace(c.clone()));
    }
}

#[test]
#[cfg(feature = "memcached")]
fn async_memo_on_memcached() {
    let Some((_servers, configs)) = fixture::memcached() else {
        return;
    };
    for c in configs {
        run(&|| with_namespace(c.clone()));
    }
}

#[test]
fn async_memo_on_the_none_backend_always_computes() {
    let s = Svc::new(
        AsyncCacheManager::new(CacheConfig::default().with_backend(CacheBackend::None)).unwrap(),
    );
    fixture::runtime(4).block_on(async {
        assert_eq!(s.upper("a").await, "A");
        assert_eq!(s.upper("a").await, "A");
        assert_eq!(s.calls(), 2);
        assert!(!s.upper_forget("a").await.unwrap());
        assert_eq!(s.upper_forget_all().await.unwrap(), 0);
        s.edit("web", true).await.unwrap();
    });
}

/// A pickle cache of its own per test process, for the signature tests below.
static FILE_CACHE: std::sync::LazyLock<(tempfile::TempDir, AsyncCacheManager)> =
    std::sync::LazyLock::new(|| {
        let dir = tempfile::tempdir().unwrap();
        let c = with_namespace(CacheConfig::default().with_pickle_dir(dir.path()));
        (dir, c)
    });

#[cache_with_invalidation(cache = FILE_CACHE.1, key_prefix = "agen")]
async fn generic_len<T>(mut items: Vec<T>, extra: impl serde::Serialize + Send) -> usize
where
    T: serde::Serialize + Clone + Send + Sync,
{
    let _ = extra;
    tokio::task::yield_now().await;
    items.push(items[0].clone());
    items.len()
}

#[derive(Debug, PartialEq)]
struct ParseError(String);

impl From<std::num::ParseIntError> for ParseError {
    fn from(e: std::num::ParseIntError) -> Self {
        ParseError(e.to_string())
    }
}

/// `?` converts through `From` into the function's own error type.
#[cache_with_invalidation(cache = FILE_CACHE.1, key_prefix = "agen")]
async fn parse_twice(s: &str) -> Result<u32, ParseError> {
    let n: u32 = s.parse()?;
    Ok(n * 2)
}

/// A result that is not `Sync`: memoized all the same, and its future is `Send` (the result is
/// encoded before the store's await; `cell_is_send` checks it).
#[cache_with_invalidation(cache = FILE_CACHE.1, key_prefix = "agen")]
async fn cell(x: u32) -> std::cell::Cell<u32> {
    std::cell::Cell::new(x)
}

#[allow(dead_code, reason = "a compile-time check")]
fn cell_is_send() {
    fn send<T: Send>(_: T) {}
    send(cell(1));
}

/// A mutation may destructure its arguments.
#[cache_with_invalidation(cache = FILE_CACHE.1, invalidate_on = ["agen:"])]
async fn add_pair((a, b): (u32, u32)) -> u32 {
    a + b
}

#[derive(serde::Serialize, Clone)]
struct Counter {
    n: u32,
}

impl Counter {
    #[cache_with_invalidation(cache = FILE_CACHE.1, key_prefix = "actr", key_self)]
    async fn into_double(self) -> u32 {
        self.n * 2
    }

    #[cache_with_invalidation(cache = FILE_CACHE.1, key_prefix = "actr")]
    async fn bump(&mut self, by: u32) -> u32 {
        self.n += by;
        self.n
    }
}

#[test]
fn odd_async_signatures_compile_and_run() {
    fixture::runtime(4).block_on(async {
        assert_eq!(generic_len(vec![1u8], "x").await, 2);
        assert_eq!(generic_len(vec![1u8], "x").await, 2);
        assert!(
            generic_len_cache_key(vec!["a"], 1u8)
                .unwrap()
                .starts_with("agen:")
        );
        assert_eq!(parse_twice("4").await, Ok(8));
        assert!(matches!(parse_twice("x").await, Err(ParseError(_))));
        assert_eq!(cell(3).await.get(), 3);
        assert_eq!(cell(3).await.get(), 3);
        assert_eq!(add_pair((1, 2)).await, 3);
        assert_eq!(
            generic_len_forget_all().await.unwrap(),
            0,
            "add_pair removed agen:"
        );
        let mut c = Counter { n: 1 };
        assert_eq!(c.bump(2).await, 3);
        assert_eq!(c.clone().into_double().await, 6);
        assert!(c.into_double_forget().await.unwrap());
    });
}

static FREE_CALLS: AtomicUsize = AtomicUsize::new(0);

/// No `cache = ..`: the global `ddf::ASYNC_CACHE`.
#[cache_with_invalidation(ttl = 600, key_prefix = "ddf-it-global-amemo")]
async fn global_triple(x: u32) -> u64 {
    FREE_CALLS.fetch_add(1, Ordering::SeqCst);
    tokio::task::yield_now().await;
    u64::from(x) * 3
}

#[test]
fn free_async_functions_use_the_global_async_cache_by_default() {
    fixture::runtime(4).block_on(async {
        let _ = global_triple_forget_all().await;
        let x = std::process::id();
        assert_eq!(global_triple(x).await, u64::from(x) * 3);
        assert_eq!(global_triple(x).await, u64::from(x) * 3);
        let c = &*ddf::ASYNC_CACHE;
        if c.config().enabled && c.backend_name() != "none" {
            assert_eq!(FREE_CALLS.load(Ordering::SeqCst), 1);
            let key = global_triple_cache_key(x).unwrap();
            assert!(c.get::<u64>(&key).await.unwrap().is_some());
            assert!(global_triple_forget(x).await.unwrap());
        }
    });
}

/// A memoized call against a stopped (SIGSTOP) Redis goes to the server once: the lookup met
/// a temporary failure (returned, or hidden by the pickle fallback and reported by the async
/// cache with the read), so the function runs and nothing is looked up again or stored.
/// Counted in the statistics, not timed.
#[test]
#[cfg(feature = "redis")]
fn a_memoized_call_on_a_stopped_redis_reads_once_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some((server, configs)) = fixture::redis_to_stop(dir.path()) else {
        return;
    };
    let rt = fixture::runtime(4);
    let caches: Vec<_> = configs
        .into_iter()
        .map(|(fallback, c)| (fallback, Svc::new(with_namespace(c))))
        .collect();
    rt.block_on(async {
        for (_, s) in &caches {
            assert_eq!(s.upper("warm").await, "WARM");
        }
        server.process.signal("STOP");
        for (fallback, s) in &caches {
            let before = s.cache.stats();
            assert_eq!(s.upper("a").await, "A");
            let after = s.cache.stats();
            assert_eq!(s.calls(), 2, "[{fallback:?}]");
            assert_eq!(
                after.hits + after.misses + after.errors,
                before.hits + before.misses + before.errors + 1,
                "[{fallback:?}] one read: {before} -> {after}"
            );
            assert_eq!(after.sets, before.sets, "[{fallback:?}] no store");
        }
    });
    server.process.signal("CONT");
}

/// A sync backend (a map) whose `set`s wait at a gate while it is closed: a memoized store held
/// on the blocking pool. It logs the writes in the order they commit.
#[derive(Debug, Default)]
struct HeldSets {
    map: Mutex<HashMap<String, ddf::Item>>,
    closed: Mutex<bool>,
    opened: std::sync::Condvar,
    sets_begun: AtomicUsize,
    log: Mutex<Vec<&'static str>>,
}

impl HeldSets {
    fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.opened.notify_all();
    }
}

impl ddf::Backend for HeldSets {
    fn name(&self) -> &'static str {
        "held-sets"
    }
    fn get(&self, key: &str) -> ddf::Result<Option<ddf::Item>> {
        Ok(self.map.lock().unwrap().get(key).cloned())
    }
    fn set(&self, key: &str, item: &ddf::Item, _: Option<std::time::Duration>) -> ddf::Result<()> {
        self.sets_begun.fetch_add(1, Ordering::SeqCst);
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
        self.map.lock().unwrap().insert(key.into(), item.clone());
        self.log.lock().unwrap().push("set");
        Ok(())
    }
    fn delete(&self, key: &str) -> ddf::Result<bool> {
        self.log.lock().unwrap().push("delete");
        Ok(self.map.lock().unwrap().remove(key).is_some())
    }
    fn delete_prefix(&self, prefix: &str) -> ddf::Result<u64> {
        let mut map = self.map.lock().unwrap();
        let before = map.len();
        map.retain(|k, _| !k.starts_with(prefix));
        Ok((before - map.len()) as u64)
    }
    fn clear(&self) -> ddf::Result<()> {
        self.map.lock().unwrap().clear();
        Ok(())
    }
    fn ping(&self) -> ddf::Result<ddf::BackendStatus> {
        Err(ddf::Error::Backend {
            backend: "held-sets",
            message: "not used by these tests".into(),
            temporary: false,
            source: None,
        })
    }
}

/// A memoized call dropped while its store is on the blocking pool (a timeout, an aborted
/// task): an invalidation begun after the drop waits for that store, so the store cannot land
/// after the invalidation's delete and serve the old value afterwards.
#[test]
fn a_dropped_call_s_store_cannot_land_after_a_later_invalidation() {
    let rt = fixture::runtime(4);
    let backend = Arc::new(HeldSets::default());
    *backend.closed.lock().unwrap() = true;
    let s = Arc::new(Svc::new(AsyncCacheManager::with_backend(
        CacheConfig::default(),
        backend.clone(),
    )));
    rt.block_on(async {
        let call = tokio::spawn({
            let s = s.clone();
            async move { s.upper("a").await }
        });
        while backend.sets_begun.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // The caller's future is dropped; its write waits at the gate on the blocking pool.
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        let forget = tokio::spawn({
            let s = s.clone();
            async move { s.upper_forget("a").await }
        });
        // Time for the invalidation to run ahead if it could (not a bound on anything).
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        backend.open();
        assert!(
            forget.await.unwrap().unwrap(),
            "it deleted the held store's entry"
        );
        assert_eq!(*backend.log.lock().unwrap(), ["set", "delete"]);
        assert_eq!(s.upper("a").await, "A");
        assert_eq!(
            s.calls(),
            2,
            "the value computed before the invalidation is not served"
        );
    });
}
