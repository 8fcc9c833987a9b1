//! The breaker, fallback and journal for the async face: the sync face's
//! [`Resilient`](crate::backend::resilience::Resilient), driven through its hooks.
//!
//! The sync wrapper keeps all the state: the breaker, the fallback, the journal and its
//! background loop (probe and replay with the sync primary). This wrapper only sends the hot
//! path, while the primary is up, to the async twin of the primary, and reports each result
//! back (`succeeded`, `failed`), so that both faces share one state machine and one recovery.
//! Everything else (the primary not up, or a write that just failed on it: recorded in the
//! journal and applied to the fallback) is the sync wrapper's own code, run on the blocking
//! pool: the journal and the local fallback are SQLite.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::backend::{AsyncBackend, Blocking, BoxFuture, Noted, offload};
use crate::backend::resilience::scopes::Cause;
use crate::backend::resilience::{Forget, Resilient};
use crate::backend::{BackendStatus, EntryInfo, Item};
use crate::error::{Error, Result};
use crate::manager::core::CodecCounter;

/// An async primary behind the sync face's breaker, fallback and journal.
#[derive(Debug)]
pub(crate) struct AsyncResilient {
    state: Arc<Resilient>,
    /// `state` as a backend, on the blocking pool: the fallback path.
    otherwise: Blocking,
    primary: Arc<dyn AsyncBackend>,
    /// The manager's `fallback` counter (see `CacheStats::fallback`): the fallback path counts
    /// through `otherwise`; a read that failed on the primary and became a miss, here.
    fallback: Arc<AtomicU64>,
    /// Where a server of several notes why it is down (`stats`, `ping`), as the sync face's
    /// primary does (see `scopes::watched`).
    cause: Option<Arc<Cause>>,
}

impl AsyncResilient {
    pub(crate) fn new(
        state: Arc<Resilient>,
        primary: Arc<dyn AsyncBackend>,
        fallback: Arc<AtomicU64>,
    ) -> Self {
        let otherwise = Blocking::with_fallback(state.clone(), fallback.clone());
        AsyncResilient {
            state,
            otherwise,
            primary,
            fallback,
            cause: None,
        }
    }

    #[cfg(any(feature = "memcached", feature = "redis"))]
    /// Notes every temporary failure of the primary in `cause`.
    pub(crate) fn noting(mut self, cause: Arc<Cause>) -> Self {
        self.cause = Some(cause);
        self
    }

    /// Reports a temporary failure of the primary (it may open an outage in the journal: on
    /// the blocking pool) and gives the error back.
    async fn failed(&self, at_once: bool, e: Error) -> Error {
        if let Some(c) = &self.cause {
            c.note(&e);
        }
        let state = self.state.clone();
        let name = self.primary.name();
        offload(name, move || {
            state.failed(at_once, &e);
            Ok(e)
        })
        .await
        .unwrap_or_else(|other| other)
    }

    /// A read: the primary when up; a temporary failure there is a miss (or the error with
    /// `fallback = error`), never the fallback's answer (the rule of the sync wrapper).
    async fn read<'a, T>(
        &'a self,
        miss: impl FnOnce() -> T + Send,
        primary: impl FnOnce() -> BoxFuture<'a, Result<T>> + Send,
        otherwise: impl FnOnce() -> BoxFuture<'a, Noted<T>> + Send,
    ) -> Noted<T> {
        if !self.state.is_up() {
            return otherwise().await;
        }
        match primary().await {
            Ok(v) => {
                self.state.succeeded();
                Noted::clean(Ok(v))
            }
            Err(e) if e.is_temporary() => {
                let e = self.failed(false, e).await;
                Noted {
                    result: if self.state.refuses() {
                        Err(e)
                    } else {
                        // Answered as the fallback answers a failed read (the sync rule).
                        self.fallback.fetch_add(1, Ordering::Relaxed);
                        Ok(miss())
                    },
                    degraded: true,
                }
            }
            Err(e) => Noted::clean(Err(e)),
        }
    }

    /// A write or a delete: the primary when up; a temporary failure there marks it down at
    /// once, then the sync wrapper records the call and applies it to the fallback.
    async fn write<'a, T>(
        &'a self,
        forgets: Forget<'a>,
        primary: impl FnOnce() -> BoxFuture<'a, Result<T>> + Send,
        otherwise: impl FnOnce() -> BoxFuture<'a, Noted<T>> + Send,
    ) -> Noted<T> {
        if !self.state.is_up() {
            return otherwise().await;
        }
        match primary().await {
            Ok(v) => {
                self.state.succeeded();
                self.state.primary_forgot(forgets);
                Noted::clean(Ok(v))
            }
            Err(e) if e.is_temporary() => {
                drop(self.failed(true, e).await);
                let Noted { result, .. } = otherwise().await;
                Noted {
                    result,
                    degraded: true,
                }
            }
            Err(e) => Noted::clean(Err(e)),
        }
    }

    /// A namespace-wide invalidation: as [`AsyncResilient::write`], except that one that
    /// failed part-way on the primary returns the sync wrapper's "recorded" error.
    async fn invalidate<'a, T>(
        &'a self,
        what: &str,
        forgets: Forget<'a>,
        primary: impl FnOnce() -> BoxFuture<'a, Result<T>> + Send,
        otherwise: impl FnOnce() -> BoxFuture<'a, Result<T>> + Send,
    ) -> Result<T> {
        if !self.state.is_up() {
            return otherwise().await;
        }
        match primary().await {
            Ok(v) => {
                self.state.succeeded();
                self.state.primary_forgot(forgets);
                Ok(v)
            }
            Err(e) if e.is_temporary() => {
                let e = self.failed(true, e).await;
                otherwise().await?;
                Err(self.state.partway(what, e))
            }
            Err(e) => Err(e),
        }
    }
}

fn noted<T: Send + 'static>(f: BoxFuture<'_, Result<T>>) -> BoxFuture<'_, Noted<T>> {
    Box::pin(async move { Noted::clean(f.await) })
}

/// The result of `f`, its degraded note dropped (how `read` and `write` take the primary's).
fn unnoted<T: Send + 'static>(f: BoxFuture<'_, Noted<T>>) -> BoxFuture<'_, Result<T>> {
    Box::pin(async move { f.await.result })
}

impl AsyncBackend for AsyncResilient {
    fn name(&self) -> &'static str {
        self.otherwise.name()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Noted<Option<Item>>> {
        Box::pin(self.read(
            || None,
            || unnoted(self.primary.get(key)),
            || self.otherwise.get(key),
        ))
    }

    fn get_expiring<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Noted<Option<(Item, crate::backend::Expiry)>>> {
        Box::pin(self.read(
            || None,
            || unnoted(self.primary.get_expiring(key)),
            || self.otherwise.get_expiring(key),
        ))
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Noted<()>> {
        Box::pin(self.write(
            Forget::Key(key),
            move || unnoted(self.primary.set(key, item, ttl)),
            move || self.otherwise.set(key, item, ttl),
        ))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.write(
                Forget::Key(key),
                || self.primary.delete(key),
                || noted(self.otherwise.delete(key)),
            )
            .await
            .result
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.state.check_whole_keyspace(prefix.is_empty())?;
            self.invalidate(
                "delete_prefix",
                Forget::Prefix(prefix),
                || self.primary.delete_prefix(prefix),
                || self.otherwise.delete_prefix(prefix),
            )
            .await
        })
    }

    fn clear(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.state.check_whole_keyspace(true)?;
            self.invalidate(
                "clear",
                Forget::All,
                || self.primary.clear(),
                || self.otherwise.clear(),
            )
            .await
        })
    }

    /// The sync wrapper's `ping`: the state, the counters and the sync primary's answer.
    fn ping(&self) -> BoxFuture<'_, Result<BackendStatus>> {
        self.otherwise.ping()
    }

    fn info(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        self.otherwise.info()
    }

    fn close(&self) {
        self.primary.close();
        self.otherwise.close();
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Item>>>> {
        Box::pin(async move {
            self.read(
                || vec![None; keys.len()],
                || self.primary.get_many(keys),
                || noted(self.otherwise.get_many(keys)),
            )
            .await
            .result
        })
    }

    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, Item)],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let keys: Vec<&str> = items.iter().map(|(k, _)| *k).collect();
            self.write(
                Forget::Keys(&keys),
                move || self.primary.set_many(items, ttl),
                move || noted(self.otherwise.set_many(items, ttl)),
            )
            .await
            .result
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.write(
                Forget::Keys(keys),
                || self.primary.delete_many(keys),
                || noted(self.otherwise.delete_many(keys)),
            )
            .await
            .result
        })
    }

    fn add<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.write(
                Forget::Key(key),
                || self.primary.add(key, item, ttl),
                || noted(self.otherwise.add(key, item, ttl)),
            )
            .await
            .result
        })
    }

    /// As the sync wrapper: nothing is forgotten or recorded (see `Resilient::incr`).
    fn incr<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        counter: CodecCounter,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            self.write(
                Forget::Keys(&[]),
                || self.primary.incr(key, delta, counter),
                || noted(self.otherwise.incr(key, delta, counter)),
            )
            .await
            .result
        })
    }

    fn touch<'a>(&'a self, key: &'a str, ttl: Option<Duration>) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.write(
                Forget::Keys(&[]),
                || self.primary.touch(key, ttl),
                || noted(self.otherwise.touch(key, ttl)),
            )
            .await
            .result
        })
    }

    fn meta<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<EntryInfo>>> {
        Box::pin(async move {
            self.read(
                || None,
                || self.primary.meta(key),
                || noted(self.otherwise.meta(key)),
            )
            .await
            .result
        })
    }

    /// As the sync wrapper: on the fallback while the server is not up, recorded nowhere and
    /// forgotten by no outage (see `Resilient::compare_and_delete`).
    fn compare_and_delete<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.write(
                Forget::Keys(&[]),
                || self.primary.compare_and_delete(key, expected),
                || noted(self.otherwise.compare_and_delete(key, expected)),
            )
            .await
            .result
        })
    }

    /// As `add`.
    fn take_lease<'a>(
        &'a self,
        lease: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.write(
                Forget::Key(lease),
                || self.primary.take_lease(lease, item, ttl),
                || noted(self.otherwise.take_lease(lease, item, ttl)),
            )
            .await
            .result
        })
    }

    /// As `compare_and_delete`.
    fn release_lease<'a>(&'a self, lease: &'a str, token: &'a [u8]) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.write(
                Forget::Keys(&[]),
                || self.primary.release_lease(lease, token),
                || noted(self.otherwise.release_lease(lease, token)),
            )
            .await
            .result
        })
    }

    /// A write, like `set` (the sync wrapper records it as a delete during an outage).
    fn set_if_lease<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
        lease: &'a str,
        token: &'a [u8],
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.write(
                Forget::Key(key),
                || self.primary.set_if_lease(key, item, ttl, lease, token),
                || noted(self.otherwise.set_if_lease(key, item, ttl, lease, token)),
            )
            .await
            .result
        })
    }

    /// Records nothing, like `touch`.
    fn extend_lease<'a>(
        &'a self,
        lease: &'a str,
        token: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.write(
                Forget::Keys(&[]),
                || self.primary.extend_lease(lease, token, ttl),
                || noted(self.otherwise.extend_lease(lease, token, ttl)),
            )
            .await
            .result
        })
    }
}
