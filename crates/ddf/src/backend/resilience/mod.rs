//! [`Resilient`]: a circuit breaker and a fallback in front of a server backend (Redis,
//! Memcached), with a durable journal of the invalidations made while the server was down.
//!
//! The wrapper is generic over its parts: the primary is any [`Backend`] a [`Factory`] builds,
//! the fallback any [`Backend`] (or a refusal), the journal a database of its own
//! ([`journal`]) scoped by an opaque string the caller derives from the server's identity, the
//! state machine a pure [`breaker::Breaker`], and the background probe runs on whatever
//! [`probe::Spawn`] is given (an OS thread today).
//!
//! # States
//! - **up**: operations go to the primary. A temporary failure (timeout, refused or reset
//!   connection) is counted; that call is served by the fallback instead of failing. After
//!   `breaker_failures` consecutive failures the primary is marked **down**. A failed write or
//!   invalidation (`set`, `delete`, `delete_prefix`, `clear`) marks it down at once: the primary
//!   may still hold the old value, so reads must not go back to it before the invalidation is
//!   replayed.
//! - **down**: operations go straight to the fallback, without waiting on the primary. A
//!   background probe pings the primary every `breaker_retry` (a `PING` bounded by the
//!   operation timeout); no read or write waits for a probe (an invalidation made while the probe
//!   applies the journal's last entries waits for that, under the gate).
//! - **recovering**: the primary answered; the journal is being replayed. Operations still go to
//!   the fallback. When the journal is empty the state becomes **up**.
//!
//! Each transition is logged once (`warn` when going down, `info` when back), never per
//! operation.
//!
//! # Fallback (`fallback = pickle | none | error`)
//! - `pickle`: a [`FileBackend`](super::file::FileBackend) on the local cache directory
//!   (`pickle_dir`, in a namespace of the fallback's own) serves gets and writes.
//! - `none`: a [`NoneBackend`](super::none::NoneBackend): gets miss, writes are dropped.
//! - `error`: [`Fallback::Refuse`]: operations return a temporary [`Error::Backend`].
//!
//! # Recovery rules (what is guaranteed)
//! - Every `delete`, `delete_prefix` and `flush_all` made while the primary is down (or that
//!   failed on it) is recorded durably in the journal database (`ddf-journal.sqlite3`, scoped by
//!   the server's identity and the namespace) before the call returns, in every fallback mode.
//!   When the primary answers again they are applied to it, oldest first, before any read is
//!   served from it again. Several processes share the record safely (SQLite transactions); a
//!   process that comes back replays what the others recorded too. An invalidation recorded by
//!   another process after this one came back is applied when that process's own probe sees the
//!   primary (within `breaker_retry`).
//! - Values written during the outage stay in the fallback and are **not** promoted to the
//!   primary (other processes may have written newer values there meanwhile). The fallback's
//!   entries are cleared when the primary comes back, and when a cache is built (what a process
//!   that ended during an outage left), so the fallback does not serve values of an earlier
//!   outage.

pub(crate) mod breaker;
pub(crate) mod journal;
pub(crate) mod probe;

use std::borrow::Cow;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use self::breaker::{Breaker, Failure, Health};
use self::journal::{Journal, PendingOp};
use self::probe::{Body, Spawn};
use super::{Backend, BackendStatus, Item};
use crate::error::{Error, Result};

/// Builds the primary; called again by the probe while it fails.
pub(crate) type Factory = Box<dyn Fn() -> Result<Arc<dyn Backend>> + Send + Sync>;

/// What serves while the primary is not up.
#[derive(Debug, Clone)]
pub(crate) enum Fallback {
    /// Another backend serves reads and writes (`pickle`: the local directory; `none`: a
    /// backend that stores nothing). It is emptied when a cache is built and when the primary
    /// comes back.
    Serve(Arc<dyn Backend>),
    /// Every operation returns a temporary error (`fallback = error`).
    Refuse,
}

impl Fallback {
    /// The setting's value, for messages (`pickle`, `none`, `error`).
    fn label(&self) -> &'static str {
        match self {
            Fallback::Serve(b) => b.name(),
            Fallback::Refuse => "error",
        }
    }
}

/// Settings of [`Resilient`].
#[derive(Debug, Clone)]
pub(crate) struct ResilientConfig {
    /// The primary's name (`redis`, `memcached`).
    pub(crate) name: &'static str,
    /// Identifies the primary in the journal: the server's identity and the namespace.
    pub(crate) scope: String,
    /// Consecutive failures that mark the primary down.
    pub(crate) failures: u32,
    /// Probe interval while down.
    pub(crate) retry: Duration,
    /// The namespace is empty and `server_flush` is off: `clear` and `delete_prefix("")` would
    /// reach other applications' keys and are refused, in every state (recorded, they would be
    /// refused at replay, after the caller was told they succeeded).
    pub(crate) refuse_whole_keyspace: bool,
}

/// A primary backend behind a circuit breaker, with a fallback and a journal.
pub(crate) struct Resilient {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: ResilientConfig,
    primary: RwLock<Option<Arc<dyn Backend>>>,
    factory: Factory,
    fallback: Fallback,
    /// The invalidations recorded during outages (its own database file).
    journal: Arc<Journal>,
    breaker: Breaker,
    /// Runs the probe loop in the background.
    spawn: Arc<dyn Spawn>,
    /// A probe loop is running (at most one per primary).
    probing: AtomicBool,
    /// Held (shared) by callers that record an invalidation while the primary is not up, and
    /// (exclusive) by the probe for its last replay and the switch to up, so that no recorded
    /// invalidation can slip between them.
    gate: RwLock<()>,
}

impl fmt::Debug for Resilient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resilient")
            .field("primary", &self.shared.cfg.name)
            .field("health", &self.health())
            .field("fallback", &self.shared.fallback.label())
            .finish()
    }
}

impl Resilient {
    /// Wraps the primary that `factory` builds. If it cannot be built now (the server is down at
    /// start-up), the cache starts on the fallback and the probe keeps trying.
    pub(crate) fn new(
        cfg: ResilientConfig,
        factory: Factory,
        fallback: Fallback,
        journal: Arc<Journal>,
        spawn: Arc<dyn Spawn>,
    ) -> Self {
        if let Fallback::Serve(f) = &fallback
            && let Err(e) = f.clear()
        {
            // Left by a process that ended during an outage: never serve it.
            warn!(error = %e, "cannot clear the fallback cache");
        }
        let first = factory();
        let shared = Arc::new(Shared {
            breaker: Breaker::new(cfg.failures),
            cfg,
            primary: RwLock::new(None),
            factory,
            fallback,
            journal,
            spawn,
            probing: AtomicBool::new(false),
            gate: RwLock::new(()),
        });
        // Invalidations recorded by a process that ended during an outage (or a journal that
        // cannot be read, which might hold some): apply them before the primary serves a read.
        let pending = shared
            .journal
            .count(&shared.cfg.scope)
            .map(|n| n > 0)
            .unwrap_or(true);
        match first {
            Ok(p) if pending => {
                *write(&shared.primary) = Some(p);
                shared.breaker.hold_down();
                // Once now, bounded by the timeouts (a short-lived process, the CLI, may never
                // see the background probe run), then in the background if that failed.
                if !shared.try_recover() {
                    Shared::start_probe(&shared);
                }
            }
            Ok(p) => *write(&shared.primary) = Some(p),
            Err(e) => Shared::failed(&shared, true, &e),
        }
        Resilient { shared }
    }

    /// The primary's state.
    pub(crate) fn health(&self) -> Health {
        self.shared.breaker.health()
    }

    /// Transitions between states so far.
    pub(crate) fn transitions(&self) -> u64 {
        self.shared.breaker.transitions()
    }

    /// Operations that failed on the primary so far.
    pub(crate) fn failed_ops(&self) -> u64 {
        self.shared.breaker.failed_ops()
    }

    /// Runs `op` on the primary when it is up. `None` when it is not, or when it just failed for
    /// a temporary reason (counted; `at_once` marks the primary down at the first one).
    fn on_primary<T>(
        &self,
        at_once: bool,
        op: &impl Fn(&dyn Backend) -> Result<T>,
    ) -> Option<Result<T>> {
        let s = &self.shared;
        if !s.breaker.is_up() {
            return None;
        }
        let p = read(&s.primary).clone()?;
        match op(p.as_ref()) {
            Ok(v) => {
                s.breaker.succeeded();
                Some(Ok(v))
            }
            Err(e) if e.is_temporary() => {
                Shared::failed(s, at_once, &e);
                None
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// A read: on the primary when it is up, else (or when it fails temporarily) on the
    /// fallback.
    fn read_op<T>(&self, op: impl Fn(&dyn Backend) -> Result<T>) -> Result<T> {
        match self.on_primary(false, &op) {
            Some(r) => r,
            None => self.on_fallback(&op),
        }
    }

    /// A write or an invalidation: on the primary when it is up (a temporary failure marks it
    /// down at once: the primary may still hold the old value); else recorded, then on the
    /// fallback. `record` says what the primary must forget; it is only called (and allocates)
    /// when the primary is not used.
    fn write_op<'k, T>(
        &self,
        record: impl FnOnce() -> Vec<PendingOp<'k>>,
        op: impl Fn(&dyn Backend) -> Result<T>,
    ) -> Result<T> {
        match self.on_primary(true, &op) {
            Some(r) => r,
            None => self.on_fallback_recorded(record, &op),
        }
    }

    /// A write or an invalidation while the primary is not up (or just failed on it): record
    /// what the primary must forget durably, then apply the call to the fallback, both under
    /// the shared gate, so that the probe's last replay and its clearing of the fallback (under
    /// the exclusive gate) cannot fall between them. If the primary came back meanwhile, the
    /// call runs on it instead; a temporary failure there marks it down again and records.
    fn on_fallback_recorded<'k, T>(
        &self,
        record: impl FnOnce() -> Vec<PendingOp<'k>>,
        op: &impl Fn(&dyn Backend) -> Result<T>,
    ) -> Result<T> {
        let s = &self.shared;
        let _gate = loop {
            let gate = read(&s.gate);
            if s.breaker.is_up()
                && let Some(p) = read(&s.primary).clone()
            {
                drop(gate);
                match op(p.as_ref()) {
                    Err(e) if e.is_temporary() => {
                        Shared::failed(s, true, &e);
                        continue;
                    }
                    r => return r,
                }
            }
            break gate;
        };
        s.journal.append(&s.cfg.scope, &record())?;
        self.on_fallback(op)
    }

    fn refusal(&self) -> Error {
        super::whole_keyspace_refusal("every entry on the server, other applications' included")
    }

    /// Serves a call while the primary is not up, as the fallback says.
    fn on_fallback<T>(&self, op: &impl Fn(&dyn Backend) -> Result<T>) -> Result<T> {
        match &self.shared.fallback {
            Fallback::Serve(f) => op(f.as_ref()),
            Fallback::Refuse => Err(Error::Backend {
                backend: self.shared.cfg.name,
                message: format!("the server is {} and fallback = error", self.health()),
                temporary: true,
                source: None,
            }),
        }
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// A temporary failure on the primary: count it, log the transition it caused (once), and
    /// start the probe if the primary is not up.
    fn failed(this: &Arc<Shared>, at_once: bool, cause: &Error) {
        crate::backend::degraded::note_temporary_failure();
        match this.breaker.failed(at_once, Instant::now()) {
            Failure::Counted => {
                warn!(backend = this.cfg.name, error = %cause, "cache operation failed; served by the fallback");
                return;
            }
            Failure::Opened => warn!(
                backend = this.cfg.name,
                error = %cause,
                fallback = this.fallback.label(),
                "cache server marked down; serving from the fallback until it answers again"
            ),
            Failure::AlreadyOpen => {}
        }
        Self::start_probe(this);
    }

    fn start_probe(this: &Arc<Shared>) {
        if this.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Shared> = Arc::downgrade(this);
        let body: Body = Box::new(move || {
            let Some(s) = weak.upgrade() else {
                return ControlFlow::Break(());
            };
            if !s.try_recover() {
                return ControlFlow::Continue(());
            }
            s.probing.store(false, Ordering::Release);
            // A caller may have marked the primary down between the switch to up and now,
            // found this probe still running and left it to us.
            if !s.breaker.is_up() && !s.probing.swap(true, Ordering::AcqRel) {
                return ControlFlow::Continue(());
            }
            ControlFlow::Break(())
        });
        if let Err(e) = this.spawn.spawn(this.cfg.retry, body) {
            warn!(error = %e, "cannot start the cache server probe");
            this.probing.store(false, Ordering::Release);
        }
    }

    /// One probe: build or ping the primary, replay the journal, switch to up.
    fn try_recover(&self) -> bool {
        // Bind first: a guard in a match scrutinee would live through the arms (and the write).
        let current = read(&self.primary).clone();
        let primary = match current {
            Some(p) => p,
            None => match (self.factory)() {
                Ok(p) => {
                    *write(&self.primary) = Some(p.clone());
                    p
                }
                Err(_) => return false,
            },
        };
        if primary.ping().is_err() {
            return false;
        }
        self.breaker.begin_recovery();
        let failed_again = || {
            self.breaker.recovery_failed();
            warn!(
                backend = self.cfg.name,
                "cache server failed again while recorded invalidations were applied"
            );
            false
        };
        if !self.replay(primary.as_ref()) {
            return failed_again();
        }
        // Last pass under the gate, then up: nothing recorded can be left behind.
        let _gate = write(&self.gate);
        if !self.replay(primary.as_ref()) {
            return failed_again();
        }
        if let Fallback::Serve(f) = &self.fallback
            && let Err(e) = f.clear()
        {
            warn!(error = %e, "cannot clear the fallback cache");
        }
        let down_for = self.breaker.recovered(Instant::now());
        info!(
            backend = self.cfg.name,
            down_for_ms = down_for.as_millis() as u64,
            "cache server is back; recorded invalidations applied"
        );
        true
    }

    /// Applies the journal to the primary. False when the primary failed again.
    fn replay(&self, primary: &dyn Backend) -> bool {
        let pending = match self.journal.read(&self.cfg.scope) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot read the recorded invalidations");
                return false;
            }
        };
        let Some(last) = pending.last().map(|(id, _)| *id) else {
            return true;
        };
        for (_, op) in &pending {
            let r = match op {
                PendingOp::Delete(k) => primary.delete(k).map(|_| ()),
                PendingOp::DeletePrefix(p) => primary.delete_prefix(p).map(|_| ()),
                PendingOp::Clear => primary.clear(),
            };
            match r {
                Ok(()) => {}
                Err(e) if e.is_temporary() => return false,
                // A permanent refusal (say, a flush the primary does not allow) will not succeed
                // later either: drop it, loudly.
                Err(e) => warn!(error = %e, ?op, "a recorded invalidation was refused; dropped"),
            }
        }
        if let Err(e) = self.journal.remove(&self.cfg.scope, last) {
            warn!(error = %e, "cannot remove applied invalidations (they will be applied again)");
        }
        true
    }
}

/// What a write of `key` records: a delete (when the primary returns, its older value must not
/// be served).
fn deletes<'k>(keys: impl Iterator<Item = &'k str>) -> Vec<PendingOp<'k>> {
    keys.map(|k| PendingOp::Delete(Cow::Borrowed(k))).collect()
}

impl Backend for Resilient {
    fn name(&self) -> &'static str {
        self.shared.cfg.name
    }

    fn get(&self, key: &str) -> Result<Option<Item>> {
        self.read_op(|b| b.get(key))
    }

    fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        self.write_op(|| deletes(std::iter::once(key)), |b| b.set(key, item, ttl))
    }

    fn delete(&self, key: &str) -> Result<bool> {
        self.write_op(|| deletes(std::iter::once(key)), |b| b.delete(key))
    }

    fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        if prefix.is_empty() && self.shared.cfg.refuse_whole_keyspace {
            return Err(self.refusal());
        }
        self.write_op(
            || vec![PendingOp::DeletePrefix(Cow::Borrowed(prefix))],
            |b| b.delete_prefix(prefix),
        )
    }

    fn clear(&self) -> Result<()> {
        if self.shared.cfg.refuse_whole_keyspace {
            return Err(self.refusal());
        }
        self.write_op(|| vec![PendingOp::Clear], |b| b.clear())
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        self.read_op(|b| b.get_many(keys))
    }

    fn set_many(&self, items: &[(&str, Item)], ttl: Option<Duration>) -> Result<()> {
        self.write_op(
            || deletes(items.iter().map(|(k, _)| *k)),
            |b| b.set_many(items, ttl),
        )
    }

    fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        self.write_op(|| deletes(keys.iter().copied()), |b| b.delete_many(keys))
    }

    fn ping(&self) -> Result<BackendStatus> {
        let health = self.health();
        let current = read(&self.shared.primary).clone();
        let result = match current {
            Some(p) => p.ping(),
            None => (self.shared.factory)().and_then(|p| p.ping()),
        };
        let summary = format!(
            "state {health}; {} transitions, {} failed operations; fallback = {}",
            self.transitions(),
            self.failed_ops(),
            self.shared.fallback.label()
        );
        match result {
            Ok(st) => Ok(BackendStatus {
                detail: format!("{}; {summary}", st.detail),
            }),
            Err(e) => {
                let temporary = e.is_temporary();
                let cause = match e {
                    Error::Backend { message, .. } => message,
                    other => other.to_string(),
                };
                Err(Error::Backend {
                    backend: self.shared.cfg.name,
                    message: format!("{cause}; {summary}"),
                    temporary,
                    source: None,
                })
            }
        }
    }

    fn info(&self) -> Result<Vec<(String, String)>> {
        let pending = self
            .shared
            .journal
            .count(&self.shared.cfg.scope)
            .unwrap_or(0);
        let mut rows = vec![
            ("state".to_owned(), self.health().to_string()),
            ("transitions".to_owned(), self.transitions().to_string()),
            (
                "failed operations".to_owned(),
                self.failed_ops().to_string(),
            ),
            (
                "fallback".to_owned(),
                self.shared.fallback.label().to_owned(),
            ),
            (
                "recorded invalidations pending".to_owned(),
                pending.to_string(),
            ),
        ];
        if self.health() == Health::Up
            && let Some(p) = read(&self.shared.primary).clone()
            && let Ok(more) = p.info()
        {
            rows.extend(more);
        }
        Ok(rows)
    }

    fn close(&self) {
        if let Some(p) = read(&self.shared.primary).as_ref() {
            p.close();
        }
        if let Fallback::Serve(f) = &self.shared.fallback {
            f.close();
        }
        self.shared.journal.close();
    }
}

#[cfg(test)]
mod tests;
