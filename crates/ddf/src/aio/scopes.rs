//! A breaker per server on the async face: the async twin of the sync face's
//! [`PerScope`](crate::backend::resilience::scopes::PerScope), over the same scopes.
//!
//! The sync router is built as for the sync face (each server's [`Resilient`]: its breaker,
//! journal scope `memcached://host:port|namespace`, fallback entries and background loop, so
//! the two faces replay each other's records), and this router drives each scope with an
//! [`AsyncResilient`] whose primary is that server's async client. The routing decisions (which
//! scope serves a key, how a batch splits, how a batch's parts add up) are the sync router's
//! [`Routing`] and [`Tally`], called by both. What is rare and spans every server
//! (`delete_prefix`, `clear`, `ping`, `info`) runs the sync router on the blocking pool.
//!
//! After a write, the sync router's `follow_moves` runs inline: it does I/O (a journal record)
//! only when the write's scope is down and the partition moved the key to another scope
//! meanwhile, which Memcached's placement never does (a Redis Cluster's resharding can, at
//! that instant: rare enough to stay inline).
//!
//! [`Resilient`]: crate::backend::resilience::Resilient

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::backend::{AsyncBackend, Blocking, BoxFuture, Noted};
use super::resilient::AsyncResilient;
use crate::backend::resilience::scopes::{Nothing, PerScope, Routing, Tally};
use crate::backend::{BackendStatus, EntryInfo, Item};
use crate::error::Result;
use crate::manager::core::CodecCounter;

/// Keys routed to the breaker of the server that holds them, on async primaries.
#[derive(Debug)]
pub(crate) struct AsyncPerScope {
    routing: Routing,
    /// The sync router, for what it does over every scope at once and its follow-up of moved
    /// keys.
    sync: Arc<PerScope>,
    /// `sync` on the blocking pool.
    every: Blocking,
    /// Each scope's breaker driven with its async primary, in the scopes' order.
    scopes: Vec<AsyncResilient>,
}

impl AsyncPerScope {
    /// The router over `sync`'s scopes, `primaries[i]` serving scope `i`.
    pub(crate) fn new(
        sync: Arc<PerScope>,
        primaries: Vec<Arc<dyn AsyncBackend>>,
        fallback: &Arc<AtomicU64>,
    ) -> Self {
        let scopes = sync
            .states()
            .zip(primaries)
            .map(|((state, cause), p)| {
                AsyncResilient::new(state.clone(), p, fallback.clone()).noting(cause.clone())
            })
            .collect();
        let every = Blocking::with_fallback(sync.clone(), fallback.clone());
        AsyncPerScope {
            routing: sync.routing().clone(),
            sync,
            every,
            scopes,
        }
    }

    fn scope(&self, key: &str) -> &AsyncResilient {
        &self.scopes[self.routing.index(key)]
    }

    fn lease_scope(&self, lease: &str) -> &AsyncResilient {
        &self.scopes[self.routing.lease_index(lease)]
    }
}

impl AsyncBackend for AsyncPerScope {
    fn name(&self) -> &'static str {
        self.every.name()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Noted<Option<Item>>> {
        self.scope(key).get(key)
    }

    fn get_expiring<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Noted<Option<(Item, crate::backend::Expiry)>>> {
        self.scope(key).get_expiring(key)
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Noted<()>> {
        Box::pin(async move {
            let i = self.routing.index(key);
            let r = self.scopes[i].set(key, item, ttl).await;
            self.sync.follow_moves(i, &[key]);
            r
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let i = self.routing.index(key);
            let r = self.scopes[i].delete(key).await;
            self.sync.follow_moves(i, &[key]);
            r
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64>> {
        self.every.delete_prefix(prefix)
    }

    fn clear(&self) -> BoxFuture<'_, Result<()>> {
        self.every.clear()
    }

    fn ping(&self) -> BoxFuture<'_, Result<BackendStatus>> {
        self.every.ping()
    }

    fn info(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        self.every.info()
    }

    fn close(&self) {
        for s in &self.scopes {
            s.close();
        }
    }

    // A batch's parts (one per server) run together: a stopped server costs the batch one
    // timeout, not one per server in turn. Their outcomes add up in the parts' order.
    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Item>>>> {
        Box::pin(async move {
            let mut out = vec![None; keys.len()];
            let parts = self.routing.parts(keys, |k| k);
            let calls = parts
                .iter()
                .map(|p| self.scopes[p.scope].get_many(&p.items));
            let answers = futures_util::future::join_all(calls).await;
            for (p, got) in parts.iter().zip(answers) {
                p.place(got?, &mut out);
            }
            Ok(out)
        })
    }

    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, Item)],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut tally = Tally::new();
            let parts = self.routing.parts(items, |(k, _)| k);
            let calls = parts
                .iter()
                .map(|p| self.scopes[p.scope].set_many(&p.items, ttl));
            let results = futures_util::future::join_all(calls).await;
            for (p, r) in parts.iter().zip(results) {
                tally.add(r.map(|()| Nothing));
                self.sync.follow_moves(p.scope, &p.keys(|(k, _)| k));
            }
            tally.finish().map(|Nothing| ())
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let mut tally = Tally::new();
            let parts = self.routing.parts(keys, |k| k);
            let calls = parts
                .iter()
                .map(|p| self.scopes[p.scope].delete_many(&p.items));
            let results = futures_util::future::join_all(calls).await;
            for (p, r) in parts.iter().zip(results) {
                tally.add(r);
                self.sync.follow_moves(p.scope, &p.items);
            }
            tally.finish()
        })
    }

    fn add<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool>> {
        self.scope(key).add(key, item, ttl)
    }

    fn incr<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        counter: CodecCounter,
    ) -> BoxFuture<'a, Result<i64>> {
        self.scope(key).incr(key, delta, counter)
    }

    fn touch<'a>(&'a self, key: &'a str, ttl: Option<Duration>) -> BoxFuture<'a, Result<bool>> {
        self.scope(key).touch(key, ttl)
    }

    fn meta<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<EntryInfo>>> {
        self.scope(key).meta(key)
    }

    fn compare_and_delete<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
    ) -> BoxFuture<'a, Result<bool>> {
        self.scope(key).compare_and_delete(key, expected)
    }

    /// As the sync router's: fenced in the key's scope when the lease is there too
    /// ([`Routing::fenced`]), else a plain `set` there.
    fn set_if_lease<'a>(
        &'a self,
        key: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
        lease: &'a str,
        token: &'a [u8],
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let (i, fenced) = self.routing.fenced(key, lease);
            let scope = &self.scopes[i];
            let stored = if fenced {
                scope.set_if_lease(key, item, ttl, lease, token).await
            } else {
                scope.set(key, item, ttl).await.result.map(|()| true)
            };
            self.sync.follow_moves(i, &[key]);
            stored
        })
    }

    /// In the lease's scope, as the sync router's.
    fn take_lease<'a>(
        &'a self,
        lease: &'a str,
        item: &'a Item,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool>> {
        self.lease_scope(lease).take_lease(lease, item, ttl)
    }

    fn release_lease<'a>(&'a self, lease: &'a str, token: &'a [u8]) -> BoxFuture<'a, Result<bool>> {
        self.lease_scope(lease).release_lease(lease, token)
    }

    fn extend_lease<'a>(
        &'a self,
        lease: &'a str,
        token: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        self.lease_scope(lease).extend_lease(lease, token, ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::AsyncBackend;
    use crate::backend::Item;
    use crate::backend::resilience::scopes::lease_tests::{
        LeaseOps, OneOfTwoKilled, TTL, a_lease_taken_over_fences_the_late_store, item,
    };
    use crate::error::Result;

    /// The async face's backend, each call run to its end from the test's thread.
    struct Driven<'a> {
        rt: &'a tokio::runtime::Runtime,
        backend: &'a dyn AsyncBackend,
    }

    impl LeaseOps for Driven<'_> {
        fn take_lease(&self, lease: &str, value: &str) -> Result<bool> {
            self.rt
                .block_on(self.backend.take_lease(lease, &item(value), TTL))
        }
        fn release_lease(&self, lease: &str, expected: &str) -> Result<bool> {
            self.rt
                .block_on(self.backend.release_lease(lease, expected.as_bytes()))
        }
        fn set_if_lease(&self, key: &str, value: &str, lease: &str, token: &str) -> Result<bool> {
            let v = item(value);
            self.rt.block_on(
                self.backend
                    .set_if_lease(key, &v, TTL, lease, token.as_bytes()),
            )
        }
        fn get(&self, key: &str) -> Result<Option<Item>> {
            self.rt.block_on(self.backend.get(key)).result
        }
    }

    #[test]
    fn a_lease_taken_over_during_one_servers_outage_fences_the_late_store() {
        let Some(rig) = OneOfTwoKilled::start() else {
            return;
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cache = rt
            .block_on(async { crate::AsyncCacheManager::new(rig.config.clone()) })
            .unwrap();
        let ops = Driven {
            rt: &rt,
            backend: cache.lease_backend(),
        };
        a_lease_taken_over_fences_the_late_store(&ops, &rig.keys);
    }
}
