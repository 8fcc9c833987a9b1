//! Redis Sentinel on the async face: where the async connections (multiplexed and direct) go,
//! and when they must be replaced.
//!
//! The lookup is the sync face's ([`Sentinels::locate`]: the Sentinels asked in turn, the
//! master verified with `ROLE`, all within `connect_timeout`), run on tokio's blocking pool
//! once per (re)connect, never per call: its sockets are blocking and bounded. The async
//! connections are then opened to the address found, within what is left of the same
//! `connect_timeout`.
//!
//! Following a failover: an error after which the master may have moved
//! ([`master_may_have_moved`], the sync face's decision: a connection error, a timeout,
//! `READONLY`, `MASTERDOWN`) makes the next connect ask the Sentinels again and retires every
//! connection open to the old master (the sync face drops its pool); so does a lookup that
//! finds the master at another address. Retiring is a generation: each connection records the
//! one it was opened in, and one from an older generation is dropped unused. A write refused
//! with `READONLY` is an error (temporary: the breaker records it and applies it to the
//! fallback), never dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use redis::{RedisError, RedisResult};
use tokio::time::Instant;

use crate::backend::redis::RedisBackend;
use crate::backend::redis::sentinel::{Sentinels, master_may_have_moved};

/// The master of a Sentinel group, as the async connections follow it.
#[derive(Debug)]
pub(super) struct Follow {
    /// The sync backend built from the same settings: its [`Sentinels`] (the lookup and the
    /// master last found) are this face's.
    core: Arc<RedisBackend>,
    /// Bumped whenever the connections open so far must not be used again.
    generation: AtomicU64,
    /// The master the last lookup found (`host:port`).
    last: Mutex<Option<String>>,
}

impl Follow {
    /// `None` unless `core` finds its master through Sentinels.
    pub(super) fn new(core: &Arc<RedisBackend>) -> Option<Self> {
        core.sentinels()?;
        Some(Follow {
            core: core.clone(),
            generation: AtomicU64::new(0),
            last: Mutex::new(None),
        })
    }

    fn sentinels(&self) -> RedisResult<&Sentinels> {
        self.core
            .sentinels()
            .ok_or_else(|| RedisError::from((redis::ErrorKind::Client, "not a Sentinel target")))
    }

    /// The generation a connection opened now belongs to.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `host:port` of the master last found, if any (`stats`' `sentinel_master`).
    pub(super) fn current(&self) -> Option<String> {
        self.sentinels().ok()?.current()
    }

    /// After an error on a connection to the master: if the master may have moved, the next
    /// connect asks the Sentinels and every open connection is retired.
    pub(super) fn after_error(&self, e: &RedisError) {
        if master_may_have_moved(e) {
            if let Ok(s) = self.sentinels() {
                s.forget();
            }
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The current master (the known one while it still answers `ROLE` as a master, else the
    /// one the Sentinels name), looked up on the blocking pool before `deadline`: a client of
    /// it on `redis_db`, its `host:port`, and the generation a connection to it belongs to. A
    /// master at a new address retires the connections to the old one.
    ///
    /// The generation is read before the lookup: a bump while it runs (an error on another
    /// connection) leaves this connection in the older one, dropped unused.
    pub(super) async fn locate(
        &self,
        deadline: Instant,
    ) -> RedisResult<(redis::Client, String, u64)> {
        let before = self.generation();
        let core = self.core.clone();
        let until = deadline.into_std();
        let found = tokio::task::spawn_blocking(move || match core.sentinels() {
            Some(s) => s.locate(until),
            None => Err(RedisError::from((
                redis::ErrorKind::Client,
                "not a Sentinel target",
            ))),
        })
        .await
        .map_err(|e| {
            RedisError::from(std::io::Error::other(format!(
                "the Sentinel lookup did not finish ({e}): is the runtime shutting down?"
            )))
        })??;
        let (addr, client) = found;
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let mut generation = before;
        if last.as_deref() != Some(addr.as_str()) {
            if last.is_some() {
                tracing::info!(addr = %addr, "Sentinel (async): the master moved; \
                    connections to the old one are dropped");
                // A bump since `before` already retired the old connections; this one then
                // stays in `before`, older still, and is not used.
                if self
                    .generation
                    .compare_exchange(before, before + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    generation = before + 1;
                }
            }
            *last = Some(addr.clone());
        }
        Ok((client, addr, generation))
    }

    /// Whether a connection opened in `generation` to `addr`, that answered `ROLE` with
    /// `role`, may be used: a master (the sync face's decision,
    /// [`Sentinels::must_be_master`]) and no bump since it was opened.
    ///
    /// # Errors
    /// A `MASTERDOWN` error (the master may have moved: the caller tells [`Follow::after_error`]).
    pub(super) fn verify(
        &self,
        role: &redis::Role,
        addr: &str,
        generation: u64,
    ) -> RedisResult<()> {
        self.sentinels()?.must_be_master(role, addr)?;
        if self.generation() != generation {
            return Err(RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown),
                "the master may have moved",
                format!(
                    "an error on another connection retired those to {addr} while this one \
                     was opening; the Sentinels are asked again"
                ),
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerAddr;

    fn role(raw: &[u8]) -> redis::Role {
        redis::from_redis_value(redis::parse_redis_value(raw).unwrap()).unwrap()
    }

    /// What a connection's own `ROLE` check lets through: a master, in the generation it was
    /// opened in. A replica, or a bump while it opened (an error on another connection), is
    /// refused as a moved master. No server: nothing connects here.
    #[test]
    fn verify_refuses_a_replica_and_a_retired_generation() {
        let cfg = crate::CacheConfig::default()
            .with_backend(crate::CacheBackend::Redis)
            .with_redis_sentinels(vec![ServerAddr::parse("127.0.0.1:1", 26379).unwrap()], "m");
        let core = Arc::new(RedisBackend::new(&cfg.redis_settings().unwrap()).unwrap());
        let f = Follow::new(&core).expect("a Sentinel target");
        let master = role(b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n");
        let replica =
            role(b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:1\r\n$9\r\nconnected\r\n:0\r\n");
        let g = f.generation();
        f.verify(&master, "a:1", g).unwrap();
        let e = f.verify(&replica, "a:1", g).unwrap_err();
        assert!(master_may_have_moved(&e), "{e}");
        // The error retires every connection, and the next connect asks the Sentinels.
        f.after_error(&e);
        assert_eq!(f.generation(), g + 1);
        let e = f.verify(&master, "a:1", g).unwrap_err();
        assert!(master_may_have_moved(&e), "{e}");
        assert!(e.to_string().contains("while this one was opening"), "{e}");
    }
}
