//! The async backend boundary: [`AsyncBackend`], the async twin of [`Backend`], and
//! [`Blocking`], which serves it with a sync backend (the file backend, `none`, a custom
//! [`Backend`], and the fallback path of the resilience wrapper).
//!
//! The trait is crate-private and returns boxed `Send` futures (one allocation per call, next
//! to a network round trip or a SQLite statement): async functions in a `dyn` trait are not
//! object-safe, and the manager holds one backend chosen at run time.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::backend::degraded::{FallbackWatch, Watch};
use crate::backend::{Backend, BackendStatus, EntryInfo, Expiry, Item};
use crate::error::{Error, Result};
use crate::manager::core::CodecCounter;

/// A boxed future that may move between runtime workers.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A result, and whether the call met a temporary failure of a server that something else
/// answered (a miss, or the fallback): the async face's form of
/// [`degraded`](crate::backend::degraded), which memoization reads so that it does not wait on
/// a stopped server twice. A task may move between threads, so the note travels with the
/// result instead of in a thread-local.
#[derive(Debug)]
pub(crate) struct Noted<T> {
    pub(crate) result: Result<T>,
    pub(crate) degraded: bool,
}

impl<T> Noted<T> {
    pub(crate) fn clean(result: Result<T>) -> Self {
        Noted {
            result,
            degraded: false,
        }
    }
}

/// The byte-level async storage trait: [`Backend`]'s methods and meaning, as futures.
///
/// Cancellation: a future dropped before it completes must leave the backend usable, and no
/// later call may read a reply meant for the dropped one (a connection cut mid-request is
/// dropped, never reused).
pub(crate) trait AsyncBackend: Send + Sync + fmt::Debug + 'static {
    /// As [`Backend::name`].
    fn name(&self) -> &'static str;

    /// As [`Backend::get`], with the degraded note.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Noted<Option<Item>>>;

    /// As [`Backend::get_expiring`], with the degraded note; the default gets the value, so
    /// the expiry is [`Expiry::Unknown`].
    fn get_expiring<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Noted<Option<(Item, Expiry)>>> {
        Box::pin(async move {
            let Noted { result, degraded } = self.get(key).await;
            Noted {
                result: result.map(|o| o.map(|item| (item, Expiry::Unknown))),
                degraded,
            }
        })
    }

    /// As [`AsyncBackend::get_expiring`], with the node that answered (a Redis Cluster's,
    /// `host:port`: see `degraded::Answered`) for the near cache; the default says none.
    #[allow(clippy::type_complexity)]
    fn get_expiring_from<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, (Noted<Option<(Item, Expiry)>>, Option<(String, u16)>)> {
        Box::pin(async move { (self.get_expiring(key).await, None) })
    }

    /// As [`Backend::set`], with the degraded note.
    fn set<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Noted<()>>;

    /// As [`Backend::delete`].
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// As [`Backend::delete_prefix`].
    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64>>;

    /// As [`Backend::clear`].
    fn clear(&self) -> BoxFuture<'_, Result<()>>;

    /// As [`Backend::ping`].
    fn ping(&self) -> BoxFuture<'_, Result<BackendStatus>>;

    /// As [`Backend::info`].
    fn info(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>>;

    /// As [`Backend::close`]: releases connections; the backend stays usable.
    fn close(&self);

    /// As [`Backend::get_many`].
    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Item>>>>;

    /// As [`Backend::set_many`].
    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, Item)],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>>;

    /// As [`Backend::delete_many`].
    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>>;

    /// As [`Backend::add`].
    fn add<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool>>;

    /// As [`Backend::incr`], with the cache's codec.
    fn incr<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        counter: CodecCounter,
    ) -> BoxFuture<'a, Result<i64>>;

    /// As [`Backend::touch`].
    fn touch<'a>(&'a self, key: &'a str, ttl: Option<Duration>) -> BoxFuture<'a, Result<bool>>;

    /// As [`Backend::meta`].
    fn meta<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<EntryInfo>>>;

    /// As [`Backend::compare_and_delete`].
    fn compare_and_delete<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
    ) -> BoxFuture<'a, Result<bool>>;

    /// As [`Backend::take_lease`]; the default is an `add`.
    fn take_lease<'a>(
        &'a self,
        lease: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool>> {
        self.add(lease, item, ttl)
    }

    /// As [`Backend::release_lease`]; the default is a `compare_and_delete`.
    fn release_lease<'a>(&'a self, lease: &'a str, token: &'a [u8]) -> BoxFuture<'a, Result<bool>> {
        self.compare_and_delete(lease, token)
    }

    /// As [`Backend::set_if_lease`]; the default stores unfenced.
    fn set_if_lease<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
        lease: &'a str,
        token: &'a [u8],
    ) -> BoxFuture<'a, Result<bool>> {
        let _ = (lease, token);
        Box::pin(async move { self.set(key, item, ttl).await.result.map(|()| true) })
    }

    /// As [`Backend::extend_lease`]; the default cannot (`Ok(false)`).
    fn extend_lease<'a>(
        &'a self,
        lease: &'a str,
        token: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        let _ = (lease, token, ttl);
        Box::pin(async { Ok(false) })
    }
}

/// Runs blocking `f` on the runtime's blocking pool when there is a runtime, inline when there
/// is none (the face's futures may be polled by another executor: never a panic). The
/// blocking call finishes even if the caller's future is dropped: a write is whole or not
/// made, never cut.
pub(crate) async fn offload<T: Send + 'static>(
    name: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h.spawn_blocking(f).await.unwrap_or_else(|e| {
            Err(Error::Backend {
                backend: name,
                message: format!(
                    "the blocking call did not finish ({}): is the runtime shutting down?",
                    if e.is_panic() {
                        "it panicked"
                    } else {
                        "cancelled"
                    }
                ),
                temporary: true,
                source: None,
            })
        }),
        Err(_) => f(),
    }
}

/// Where [`Blocking`] runs a call of its sync backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// On the caller's worker: for calls that take microseconds and never wait.
    Inline,
    /// On the runtime's blocking pool ([`offload`]).
    Offload,
}

/// An [`AsyncBackend`] over a sync [`Backend`]: reads and writes each run where `reads` and
/// `writes` say (invalidations, `ping` and `info` with the writes).
#[derive(Debug, Clone)]
pub(crate) struct Blocking {
    inner: Arc<dyn Backend>,
    reads: Place,
    writes: Place,
    /// The manager's `fallback` counter, for a backend that has a fallback (the resilience
    /// wrapper notes each call it answered on the thread that ran it: counted there).
    fallback: Option<Arc<AtomicU64>>,
}

impl Blocking {
    pub(crate) fn new(inner: Arc<dyn Backend>, reads: Place, writes: Place) -> Self {
        Blocking {
            inner,
            reads,
            writes,
            fallback: None,
        }
    }

    /// A backend with a fallback, every call on the blocking pool, counting the calls the
    /// fallback answered in `tally` (the resilience wrapper and the routers over several).
    pub(crate) fn with_fallback(inner: Arc<dyn Backend>, tally: Arc<AtomicU64>) -> Self {
        Blocking::new(inner, Place::Offload, Place::Offload).counting_fallback(tally)
    }

    /// Counts the calls the fallback answered in `tally` (the manager's `fallback` counter).
    pub(crate) fn counting_fallback(mut self, tally: Arc<AtomicU64>) -> Self {
        self.fallback = Some(tally);
        self
    }

    /// Runs `f` on the backend where `place` says, with the degraded note of the thread it ran
    /// on.
    fn run<T: Send + 'static>(
        &self,
        place: Place,
        f: impl FnOnce(&dyn Backend) -> Result<T> + Send + 'static,
    ) -> BoxFuture<'static, Noted<T>> {
        let b = self.inner.clone();
        let tally = self.fallback.clone();
        let noted = move || {
            let watch = Watch::start();
            let served = FallbackWatch::start();
            let result = f(b.as_ref());
            if let Some(t) = &tally
                && served.served()
            {
                t.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Noted {
                result,
                degraded: watch.failed(),
            })
        };
        match place {
            Place::Inline => {
                let r = noted();
                Box::pin(async move { r.unwrap_or_else(|e| Noted::clean(Err(e))) })
            }
            Place::Offload => {
                let name = self.inner.name();
                Box::pin(async move {
                    offload(name, noted)
                        .await
                        .unwrap_or_else(|e| Noted::clean(Err(e)))
                })
            }
        }
    }

    fn plain<T: Send + 'static>(
        &self,
        place: Place,
        f: impl FnOnce(&dyn Backend) -> Result<T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T>> {
        let fut = self.run(place, f);
        Box::pin(async move { fut.await.result })
    }
}

fn owned(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

impl AsyncBackend for Blocking {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Noted<Option<Item>>> {
        let key = key.to_owned();
        self.run(self.reads, move |b| b.get(&key))
    }

    fn get_expiring<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Noted<Option<(Item, Expiry)>>> {
        let key = key.to_owned();
        self.run(self.reads, move |b| b.get_expiring(&key))
    }

    /// The node that answered is noted on the thread the read ran on, and carried back here.
    fn get_expiring_from<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, (Noted<Option<(Item, Expiry)>>, Option<(String, u16)>)> {
        let key = key.to_owned();
        let fut = self.run(self.reads, move |b| {
            let answered = crate::backend::degraded::Answered::start();
            b.get_expiring(&key).map(|r| (r, answered.take()))
        });
        Box::pin(async move {
            let Noted { result, degraded } = fut.await;
            match result {
                Ok((r, answered)) => (
                    Noted {
                        result: Ok(r),
                        degraded,
                    },
                    answered,
                ),
                Err(e) => (
                    Noted {
                        result: Err(e),
                        degraded,
                    },
                    None,
                ),
            }
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Noted<()>> {
        let (key, item) = (key.to_owned(), item.clone());
        self.run(self.writes, move |b| b.set(&key, &item, ttl))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        let key = key.to_owned();
        self.plain(self.writes, move |b| b.delete(&key))
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64>> {
        let prefix = prefix.to_owned();
        self.plain(self.writes, move |b| b.delete_prefix(&prefix))
    }

    fn clear(&self) -> BoxFuture<'_, Result<()>> {
        self.plain(self.writes, |b| b.clear())
    }

    fn ping(&self) -> BoxFuture<'_, Result<BackendStatus>> {
        self.plain(self.writes, |b| b.ping())
    }

    fn info(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        self.plain(self.writes, |b| b.info())
    }

    fn close(&self) {
        self.inner.close();
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Item>>>> {
        let keys = owned(keys);
        self.plain(self.reads, move |b| {
            let ks: Vec<&str> = keys.iter().map(String::as_str).collect();
            b.get_many(&ks)
        })
    }

    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, Item)],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        let (keys, items): (Vec<String>, Vec<Item>) = items
            .iter()
            .map(|(k, i)| ((*k).to_owned(), i.clone()))
            .unzip();
        self.plain(self.writes, move |b| {
            let its: Vec<(&str, Item)> = keys.iter().map(String::as_str).zip(items).collect();
            b.set_many(&its, ttl)
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        let keys = owned(keys);
        self.plain(self.writes, move |b| {
            let ks: Vec<&str> = keys.iter().map(String::as_str).collect();
            b.delete_many(&ks)
        })
    }

    fn add<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool>> {
        let (key, item) = (key.to_owned(), item.clone());
        self.plain(self.writes, move |b| b.add(&key, &item, ttl))
    }

    fn incr<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        counter: CodecCounter,
    ) -> BoxFuture<'a, Result<i64>> {
        let key = key.to_owned();
        self.plain(self.writes, move |b| b.incr(&key, delta, &counter))
    }

    fn touch<'a>(&'a self, key: &'a str, ttl: Option<Duration>) -> BoxFuture<'a, Result<bool>> {
        let key = key.to_owned();
        self.plain(self.writes, move |b| b.touch(&key, ttl))
    }

    fn meta<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<EntryInfo>>> {
        let key = key.to_owned();
        self.plain(self.reads, move |b| b.meta(&key))
    }

    fn compare_and_delete<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
    ) -> BoxFuture<'a, Result<bool>> {
        let (key, expected) = (key.to_owned(), expected.to_vec());
        self.plain(self.writes, move |b| b.compare_and_delete(&key, &expected))
    }

    fn take_lease<'a>(
        &'a self,
        lease: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool>> {
        let (lease, item) = (lease.to_owned(), item.clone());
        self.plain(self.writes, move |b| b.take_lease(&lease, &item, ttl))
    }

    fn release_lease<'a>(&'a self, lease: &'a str, token: &'a [u8]) -> BoxFuture<'a, Result<bool>> {
        let (lease, token) = (lease.to_owned(), token.to_vec());
        self.plain(self.writes, move |b| b.release_lease(&lease, &token))
    }

    fn set_if_lease<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
        lease: &'a str,
        token: &'a [u8],
    ) -> BoxFuture<'a, Result<bool>> {
        let (key, item, lease, token) = (
            key.to_owned(),
            item.clone(),
            lease.to_owned(),
            token.to_vec(),
        );
        self.plain(self.writes, move |b| {
            b.set_if_lease(&key, &item, ttl, &lease, &token)
        })
    }

    fn extend_lease<'a>(
        &'a self,
        lease: &'a str,
        token: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        let (lease, token) = (lease.to_owned(), token.to_vec());
        self.plain(self.writes, move |b| b.extend_lease(&lease, &token, ttl))
    }
}
