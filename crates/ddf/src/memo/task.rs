//! The async face of memoization (feature `async`): what `#[cache_with_invalidation]` on an
//! `async fn` expands to.
//!
//! The rules are the sync face's, from the same pieces: the key ([`super::memoized_key`]), what a
//! read means ([`super::found`], [`super::unstamp`]), the policies, the invalidation epochs
//! ([`super::epoch`]) and the flight registry ([`super::flight`], awaited through
//! [`super::flight_task`]). What differs is how a caller waits (it awaits) and where the
//! "this read met a stopped server" signal comes from: the sync face reads a per-thread note
//! ([`crate::backend::degraded`]); a task moves between threads, so the async cache returns the
//! signal with the read ([`AsyncMemoCache::memo_get`]).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::epoch::Epochs;
use super::flight::Landing;
use super::flight_task::{self, TaskTurn};
use super::{Found, MemoFn, Policy, Stamp, found, memoized_key, stored, unstamp, warn_uncached};
use crate::aio::backend::BoxFuture;
use crate::error::Result;

/// What async memoization needs of a cache: [`crate::AsyncCacheManager`] is the one
/// implementation (the trait keeps the runtime apart from the manager's own code).
#[doc(hidden)]
pub trait AsyncMemoCache: Sync {
    /// The cache's identity in this process (shared by its clones): flights key on it.
    fn memo_id(&self) -> u64;
    /// The cache's invalidation epochs (shared by its clones). `Epochs` cannot be named
    /// outside ddf, which seals the trait: only ddf's caches implement it.
    #[allow(private_interfaces)]
    fn memo_epochs(&self) -> &Epochs;
    /// Whether a value written can be read back.
    fn memo_enabled(&self) -> bool;
    /// Reads a value; the flag says whether the read met a temporary server failure, whatever
    /// answered it (the fallback, a miss).
    fn memo_get<S: DeserializeOwned + Send>(
        &self,
        key: &str,
    ) -> impl Future<Output = (Result<Option<S>>, bool)> + Send;
    /// Stores a memoized result unless an invalidation began since `epoch` (`None`: nothing
    /// written; see [`Epochs::store_async`]). The value is encoded when this is called; the
    /// write then runs as a task of its own, so it neither borrows the value nor ends early
    /// when the caller's future is dropped.
    fn memo_store<S: Serialize + ?Sized>(
        &self,
        epoch: u64,
        key: &str,
        value: &S,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Option<Result<()>>> + Send + 'static;
    /// Deletes a key (an invalidation: it begins a new epoch).
    fn memo_delete(&self, key: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Deletes every key under a prefix (an invalidation: it begins a new epoch).
    fn memo_invalidate_pattern(&self, prefix: &str) -> impl Future<Output = Result<u64>> + Send;
    /// The manager itself, for `lock`/`stale_ttl`/`early_refresh` (`get_or_set`'s lease).
    #[allow(private_interfaces)]
    fn memo_manager(&self) -> &crate::AsyncCacheManager;
}

/// Whether memoization is worth anything with this cache.
#[doc(hidden)]
pub fn active_async<C: AsyncMemoCache + ?Sized>(cache: &C) -> bool {
    cache.memo_enabled()
}

/// Gives an `async` body its output type, so that `?` and `return` inside it mean what they
/// mean in the function.
#[doc(hidden)]
#[inline(always)]
pub fn body<R, F: Future<Output = R>>(f: F) -> F {
    f
}

async fn lookup<C, S>(cache: &C, key: &str, stamp: &Stamp) -> Found<S>
where
    C: AsyncMemoCache + ?Sized,
    S: DeserializeOwned + Send,
{
    let (r, failed) = match stamp {
        Stamp::Is(current) => {
            let (r, failed) = cache.memo_get::<(String, S)>(key).await;
            (r.map(|hit| unstamp(hit, current)), failed)
        }
        _ => cache.memo_get::<S>(key).await,
    };
    found(r, failed)
}

fn store<C, S>(
    cache: &C,
    f: &MemoFn,
    key: &str,
    stamp: &Stamp,
    epoch: u64,
    value: &S,
) -> BoxFuture<'static, Option<Result<()>>>
where
    C: AsyncMemoCache + ?Sized,
    S: Serialize,
{
    match stamp {
        Stamp::Is(current) => Box::pin(cache.memo_store(epoch, key, &(current, value), f.ttl)),
        _ => Box::pin(cache.memo_store(epoch, key, value, f.ttl)),
    }
}

async fn compute_and_store<C, P, R, F, Fut>(
    cache: &C,
    f: &MemoFn,
    key: &str,
    stamp: &Stamp,
    epoch: u64,
    compute: F,
) -> R
where
    C: AsyncMemoCache + ?Sized,
    P: Policy<R>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = R>,
{
    let r = compute().await;
    // Encoded here; the store's future borrows nothing of `r`.
    if let Some(write) = P::stored(&r).map(|s| store(cache, f, key, stamp, epoch, s)) {
        stored(key, write.await);
    }
    r
}

/// The memoized call: look up, else compute once per key in this process (the other callers
/// await the leader; a dropped or panicking leader hands over to one of them), store, return.
#[doc(hidden)]
pub async fn memoize_async<C, P, R, F, Fut>(
    cache: &C,
    f: &MemoFn,
    key: Option<Result<String>>,
    stamp: Stamp,
    compute: F,
) -> R
where
    C: AsyncMemoCache + ?Sized,
    P: Policy<R>,
    P::Stored: Send,
    F: FnOnce() -> Fut,
    Fut: Future<Output = R>,
{
    let Some(key) = memoized_key(key, &stamp) else {
        return compute().await;
    };
    if f.leased() {
        // As `memoize_leased` on the sync face (the attribute refuses `validation` here).
        let cache = cache.memo_manager();
        let ttl = f.ttl.or(cache.config().ttl);
        let plan = crate::stampede::Plan::new(cache.config(), ttl, f.refresh());
        let leased = crate::stampede::task::get_or_set(cache, &key, &plan, || async {
            P::split(compute().await)
        });
        return match leased.await {
            Ok(s) => P::restore(s),
            Err(r) => r,
        };
    }
    // Read before the lookup, as on the sync face (see `epoch`).
    let epoch = cache.memo_epochs().current();
    let landings = flight_task::landings();
    match lookup::<C, P::Stored>(cache, &key, &stamp).await {
        Found::Hit(v) => return P::restore(v),
        Found::Miss => {}
        Found::Unavailable => {
            warn_uncached(&key);
            return compute().await;
        }
    }
    let mut lead = loop {
        match flight_task::take_turn(cache.memo_id(), &key, epoch, landings).await {
            TaskTurn::Lead(lead) => break lead,
            TaskTurn::Bypass => {
                return compute_and_store::<C, P, R, F, Fut>(
                    cache, f, &key, &stamp, epoch, compute,
                )
                .await;
            }
            // As on the sync face: the leader's result is there unless it was not cacheable,
            // its write failed, or an invalidation made it stale.
            TaskTurn::Landed(Landing::Finished) => {
                return match lookup::<C, P::Stored>(cache, &key, &stamp).await {
                    Found::Hit(v) => P::restore(v),
                    Found::Miss => {
                        compute_and_store::<C, P, R, F, Fut>(cache, f, &key, &stamp, epoch, compute)
                            .await
                    }
                    Found::Unavailable => {
                        warn_uncached(&key);
                        compute().await
                    }
                };
            }
            // The leader panicked or its future was dropped: take over (one waiter leads, the
            // others wait again).
            TaskTurn::Landed(Landing::Abandoned) => {}
        }
    };
    let again = if lead.landed_since_miss() {
        lookup::<C, P::Stored>(cache, &key, &stamp).await
    } else {
        Found::Miss
    };
    let r = match again {
        Found::Hit(v) => P::restore(v),
        Found::Miss => {
            flight_task::leading(compute_and_store::<C, P, R, F, Fut>(
                cache, f, &key, &stamp, epoch, compute,
            ))
            .await
        }
        Found::Unavailable => {
            warn_uncached(&key);
            flight_task::leading(compute()).await
        }
    };
    lead.mark_finished();
    r
}

/// Removes the stored result of one call.
#[doc(hidden)]
pub async fn forget_async<C: AsyncMemoCache + ?Sized>(
    cache: &C,
    key: Result<String>,
) -> Result<bool> {
    cache.memo_delete(&key?).await
}

/// Removes the stored results of every call of one function.
#[doc(hidden)]
pub async fn forget_all_async<C: AsyncMemoCache + ?Sized>(cache: &C, f: &MemoFn) -> Result<u64> {
    cache.memo_invalidate_pattern(&f.prefix()).await
}

/// `invalidate_on` for an `async fn`: after a successful call, removes every key under each
/// prefix. Errors fail open: logged.
#[doc(hidden)]
pub async fn invalidate_after_async<C: AsyncMemoCache + ?Sized>(
    cache: &C,
    ok: bool,
    prefixes: &[String],
) {
    if !ok {
        return;
    }
    for p in prefixes {
        super::invalidated(p, cache.memo_invalidate_pattern(p).await);
    }
}

impl AsyncMemoCache for crate::AsyncCacheManager {
    fn memo_id(&self) -> u64 {
        self.id()
    }

    #[allow(private_interfaces)]
    fn memo_manager(&self) -> &crate::AsyncCacheManager {
        self
    }

    #[allow(private_interfaces)]
    fn memo_epochs(&self) -> &Epochs {
        self.epochs()
    }

    fn memo_enabled(&self) -> bool {
        self.is_enabled()
    }

    async fn memo_get<S: DeserializeOwned + Send>(&self, key: &str) -> (Result<Option<S>>, bool) {
        let noted = self.get_noted(key).await;
        (noted.result, noted.degraded)
    }

    fn memo_store<S: Serialize + ?Sized>(
        &self,
        epoch: u64,
        key: &str,
        value: &S,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Option<Result<()>>> + Send + 'static {
        self.store_memoized(epoch, key, value, ttl)
    }

    fn memo_delete(&self, key: &str) -> impl Future<Output = Result<bool>> + Send {
        self.delete(key)
    }

    fn memo_invalidate_pattern(&self, prefix: &str) -> impl Future<Output = Result<u64>> + Send {
        self.invalidate_pattern(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memo::{PolicyOk, PolicyWhole};
    use crate::{AsyncCacheManager, CacheConfig};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const F: MemoFn = MemoFn {
        module: "t",
        name: "f",
        key_prefix: None,
        ttl: None,
        lock: false,
        stale_ttl: None,
        early_refresh: None,
    };

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
    }

    fn cache() -> (tempfile::TempDir, AsyncCacheManager) {
        let dir = tempfile::tempdir().unwrap();
        let c = AsyncCacheManager::new(CacheConfig::default().with_pickle_dir(dir.path())).unwrap();
        (dir, c)
    }

    fn key(k: &str) -> Option<Result<String>> {
        Some(Ok(k.to_owned()))
    }

    fn assert_send<T: Send>(t: T) -> T {
        t
    }

    #[test]
    fn hit_after_miss_and_err_not_cached() {
        let (_dir, c) = cache();
        runtime().block_on(async {
            let n = AtomicUsize::new(0);
            let body = || async {
                n.fetch_add(1, Ordering::SeqCst);
                7u32
            };
            let fut =
                memoize_async::<_, PolicyWhole, u32, _, _>(&c, &F, key("k"), Stamp::Unused, body);
            assert_eq!(assert_send(fut).await, 7);
            assert_eq!(
                memoize_async::<_, PolicyWhole, u32, _, _>(&c, &F, key("k"), Stamp::Unused, body)
                    .await,
                7
            );
            assert_eq!(n.load(Ordering::SeqCst), 1);
            let err = || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err::<u32, String>("no".into())
            };
            for _ in 0..2 {
                let r = memoize_async::<_, PolicyOk, _, _, _>(&c, &F, key("e"), Stamp::Unused, err)
                    .await;
                assert!(r.is_err());
            }
            assert_eq!(n.load(Ordering::SeqCst), 3, "Err is never stored");
        });
    }

    #[test]
    fn a_store_overtaken_by_an_invalidation_writes_nothing() {
        let (_dir, c) = cache();
        runtime().block_on(async {
            let r = memoize_async::<_, PolicyWhole, u32, _, _>(
                &c,
                &F,
                key("k"),
                Stamp::Unused,
                || async {
                    c.epochs().invalidate_async(async {}).await;
                    1
                },
            )
            .await;
            assert_eq!(r, 1, "the caller gets its result");
            assert_eq!(
                c.get::<u32>("k").await.unwrap(),
                None,
                "but it is not stored"
            );
        });
    }

    /// Concurrent callers of one key run the body once; when the leader's task is aborted
    /// mid-body, one waiter takes over and every other caller gets its value.
    #[test]
    fn concurrent_callers_run_the_body_once_and_survive_an_aborted_leader() {
        let (_dir, c) = cache();
        let rt = runtime();
        rt.block_on(async {
            let c = Arc::new(c);
            let runs = Arc::new(AtomicUsize::new(0));
            let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
            let started_tx = Arc::new(std::sync::Mutex::new(Some(started_tx)));
            let call = |hang: bool| {
                let (c, runs, started_tx) = (c.clone(), runs.clone(), started_tx.clone());
                tokio::spawn(async move {
                    memoize_async::<_, PolicyWhole, u32, _, _>(
                        &*c,
                        &F,
                        key("k"),
                        Stamp::Unused,
                        || async {
                            runs.fetch_add(1, Ordering::SeqCst);
                            if hang {
                                if let Some(tx) = started_tx.lock().unwrap().take() {
                                    let _ = tx.send(());
                                }
                                std::future::pending::<()>().await;
                            }
                            42
                        },
                    )
                    .await
                })
            };
            let leader = call(true);
            started.await.unwrap();
            let waiters: Vec<_> = (0..16).map(|_| call(false)).collect();
            // The waiters join the flight, then the leader's task is aborted mid-body.
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
            leader.abort();
            assert!(leader.await.unwrap_err().is_cancelled());
            for w in waiters {
                assert_eq!(w.await.unwrap(), 42);
            }
            // The aborted body, then one taker (waiters that had not joined yet find the value).
            assert_eq!(runs.load(Ordering::SeqCst), 2);
        });
    }

    /// `fut`'s output, or `None` (and `fut` dropped) if it is still pending after `polls` polls.
    async fn within_polls<F: Future>(polls: u64, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        let mut left = polls;
        std::future::poll_fn(move |cx| match fut.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending if left == 0 => std::task::Poll::Ready(None),
            std::task::Poll::Pending => {
                left -= 1;
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Futures dropped at random points (after a random number of polls: some mid-body, some
    /// mid-wait, some mid-store) under 256 concurrent calls of 64 keys: no call hangs, no flight
    /// is left in the registry, and every later call returns its key's value.
    #[test]
    fn futures_dropped_at_random_points_leave_nothing_behind() {
        let (_dir, c) = cache();
        let rt = runtime();
        rt.block_on(async {
            let c = Arc::new(c);
            let runs = Arc::new(AtomicUsize::new(0));
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut next = move || {
                // xorshift64: reproducible, no dependency.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let call = |c: Arc<AsyncCacheManager>, runs: Arc<AtomicUsize>, k: u64, yields: u64| async move {
                let key = format!("k{k}");
                memoize_async::<_, PolicyWhole, u64, _, _>(&*c, &F, Some(Ok(key)), Stamp::Unused, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    for _ in 0..yields {
                        tokio::task::yield_now().await;
                    }
                    k * 10
                })
                .await
            };
            let tasks: Vec<_> = (0..256)
                .map(|_| {
                    let (k, yields, polls) = (next() % 64, next() % 40, next() % 30);
                    let fut = call(c.clone(), runs.clone(), k, yields);
                    tokio::spawn(async move { (k, within_polls(polls, fut).await) })
                })
                .collect();
            let all = async {
                let mut dropped = 0;
                for t in tasks {
                    let (k, r) = t.await.unwrap();
                    match r {
                        Some(v) => assert_eq!(v, k * 10),
                        None => dropped += 1,
                    }
                }
                dropped
            };
            // Generous: the calls take milliseconds; a hang would take forever.
            let dropped = tokio::time::timeout(Duration::from_secs(60), all)
                .await
                .expect("a call hung");
            eprintln!("{dropped} of 256 futures dropped mid-call");
            assert!(dropped > 0, "some futures were dropped");
            assert_eq!(flight_task::in_flight_of(c.memo_id()), 0, "a flight was left behind");
            for k in 0..64 {
                assert_eq!(call(c.clone(), runs.clone(), k, 0).await, k * 10);
            }
        });
    }

    #[test]
    fn a_panicking_body_does_not_wedge_waiters() {
        let (_dir, c) = cache();
        runtime().block_on(async {
            let c = Arc::new(c);
            let (go_tx, go) = tokio::sync::oneshot::channel::<()>();
            let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
            let leader = {
                let c = c.clone();
                tokio::spawn(async move {
                    memoize_async::<_, PolicyWhole, u32, _, _>(
                        &*c,
                        &F,
                        key("p"),
                        Stamp::Unused,
                        || async {
                            let _ = started_tx.send(());
                            let _ = go.await;
                            panic!("the body panicked")
                        },
                    )
                    .await
                })
            };
            // The leader leads (its body runs) before the waiter starts: no race on who leads.
            started.await.unwrap();
            let waiter = {
                let c = c.clone();
                tokio::spawn(async move {
                    memoize_async::<_, PolicyWhole, u32, _, _>(
                        &*c,
                        &F,
                        key("p"),
                        Stamp::Unused,
                        || async { 5 },
                    )
                    .await
                })
            };
            tokio::task::yield_now().await;
            go_tx.send(()).unwrap();
            assert!(leader.await.unwrap_err().is_panic());
            assert_eq!(waiter.await.unwrap(), 5);
        });
    }
}
