//! Building a router's scopes: what makes one ([`ScopeSpec`]), building them all at once
//! ([`build_all`]), and each primary watched for why it is down ([`Cause`], [`watched`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Scope;
use crate::backend::{Backend, BackendStatus, Item};
use crate::error::{Error, Result};

/// What makes one scope: its label in messages (`host:port`), its identity in the journal
/// (`memcached://host:port`, without the namespace), and the factory of its primary (a backend
/// that serves that scope alone).
pub(crate) struct ScopeSpec {
    /// `host:port`: what `stats` and `ping` name.
    pub(crate) label: String,
    /// The identity the journal scope is made from.
    pub(crate) identity: String,
    /// Builds the scope's primary.
    pub(crate) factory: crate::backend::resilience::Factory,
}

/// Builds every scope with `build`, each on a thread of its own: a scope that finds recorded
/// invalidations applies them for up to one operation timeout while it is built (its server may
/// be stopped), and the servers wait together, not one after another. A thread the system
/// refuses is replaced by building that scope here.
///
/// # Errors
/// The first scope's error, in order.
pub(crate) fn build_all(
    specs: Vec<ScopeSpec>,
    build: impl Fn(ScopeSpec) -> Result<Scope> + Sync,
) -> Result<Vec<Scope>> {
    let slots: Vec<Mutex<Option<ScopeSpec>>> =
        specs.into_iter().map(|s| Mutex::new(Some(s))).collect();
    let take =
        |slot: &Mutex<Option<ScopeSpec>>| slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    let run = |slot: &Mutex<Option<ScopeSpec>>| -> Option<Result<Scope>> { take(slot).map(&build) };
    let results: Vec<Option<Result<Scope>>> = std::thread::scope(|s| {
        let handles: Vec<_> = slots
            .iter()
            .map(|slot| {
                std::thread::Builder::new()
                    .name("ddf-scope-start".to_owned())
                    .spawn_scoped(s, || run(slot))
                    .ok()
            })
            .collect();
        handles
            .into_iter()
            .zip(&slots)
            .map(
                |(h, slot)| match h.map(std::thread::ScopedJoinHandle::join) {
                    Some(Ok(r)) => r,
                    // Not started (or it panicked, which library code does not): build it here.
                    _ => run(slot),
                },
            )
            .collect()
    });
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(Error::Backend {
                    backend: "cache",
                    message: "a server of the list could not be set up".to_owned(),
                    temporary: false,
                    source: None,
                })
            })
        })
        .collect()
}

/// Why a scope's primary last failed, as its watcher saw it.
#[derive(Debug, Default)]
pub(crate) struct Cause(Mutex<Option<String>>);

impl Cause {
    /// Remembers `e` as the reason the scope is down, if it is temporary.
    pub(crate) fn note(&self, e: &Error) {
        if !e.is_temporary() {
            return;
        }
        let text = match e {
            Error::Backend { message, .. } => message.clone(),
            other => other.to_string(),
        };
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
    }

    pub(super) fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Wraps a scope's factory so that every temporary failure of its primary (operations and the
/// probe's pings) is remembered as the reason the scope is down.
pub(crate) fn watched(
    factory: crate::backend::resilience::Factory,
    cause: Arc<Cause>,
) -> crate::backend::resilience::Factory {
    Box::new(move || match factory() {
        Ok(inner) => Ok(Arc::new(Watched {
            inner,
            cause: cause.clone(),
        }) as Arc<dyn Backend>),
        Err(e) => {
            cause.note(&e);
            Err(e)
        }
    })
}

/// A primary that notes its temporary failures in a [`Cause`].
#[derive(Debug)]
struct Watched {
    inner: Arc<dyn Backend>,
    cause: Arc<Cause>,
}

impl Watched {
    fn seen<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.cause.note(e);
        }
        r
    }
}

impl Backend for Watched {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn get(&self, key: &str) -> Result<Option<Item>> {
        self.seen(self.inner.get(key))
    }
    fn get_expiring(&self, key: &str) -> Result<Option<(Item, crate::backend::Expiry)>> {
        self.seen(self.inner.get_expiring(key))
    }
    fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        self.seen(self.inner.set(key, item, ttl))
    }
    fn delete(&self, key: &str) -> Result<bool> {
        self.seen(self.inner.delete(key))
    }
    fn add(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<bool> {
        self.seen(self.inner.add(key, item, ttl))
    }
    fn incr(&self, key: &str, delta: i64, counter: &dyn crate::backend::Counter) -> Result<i64> {
        self.seen(self.inner.incr(key, delta, counter))
    }
    fn touch(&self, key: &str, ttl: Option<Duration>) -> Result<bool> {
        self.seen(self.inner.touch(key, ttl))
    }
    fn meta(&self, key: &str) -> Result<Option<crate::backend::EntryInfo>> {
        self.seen(self.inner.meta(key))
    }
    fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.seen(self.inner.delete_prefix(prefix))
    }
    /// Forwarded as one call (the replay's batch: Memcached walks the server once for it).
    fn delete_prefixes(&self, prefixes: &[&str]) -> Result<u64> {
        self.seen(self.inner.delete_prefixes(prefixes))
    }
    fn clear(&self) -> Result<()> {
        self.seen(self.inner.clear())
    }
    fn ping(&self) -> Result<BackendStatus> {
        self.seen(self.inner.ping())
    }
    fn info(&self) -> Result<Vec<(String, String)>> {
        self.inner.info()
    }
    fn keys(&self, prefix: &str, limit: usize) -> Result<Vec<crate::backend::EntryInfo>> {
        self.seen(self.inner.keys(prefix, limit))
    }
    fn close(&self) {
        self.inner.close();
    }
    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        self.seen(self.inner.get_many(keys))
    }
    fn set_many(&self, items: &[(&str, Item)], ttl: Option<Duration>) -> Result<()> {
        self.seen(self.inner.set_many(items, ttl))
    }
    fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        self.seen(self.inner.delete_many(keys))
    }
    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool> {
        self.seen(self.inner.compare_and_delete(key, expected))
    }
    fn set_if_lease(
        &self,
        key: &str,
        item: &Item,
        ttl: Option<Duration>,
        lease: &str,
        token: &[u8],
    ) -> Result<bool> {
        self.seen(self.inner.set_if_lease(key, item, ttl, lease, token))
    }
    fn take_lease(&self, lease: &str, item: &Item, ttl: Option<Duration>) -> Result<bool> {
        self.seen(self.inner.take_lease(lease, item, ttl))
    }
    fn release_lease(&self, lease: &str, token: &[u8]) -> Result<bool> {
        self.seen(self.inner.release_lease(lease, token))
    }
    fn extend_lease(&self, lease: &str, token: &[u8], ttl: Duration) -> Result<bool> {
        self.seen(self.inner.extend_lease(lease, token, ttl))
    }
}
