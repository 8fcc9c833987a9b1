//! [`Resilient`]: a circuit breaker and a fallback in front of a server backend (Redis,
//! Memcached), with a durable journal of the invalidations made while the server was down.
//!
//! # States
//! - **up**: operations go to the primary. A temporary failure (timeout, refused or reset
//!   connection) is counted; that call is served by the fallback instead of failing. After
//!   `breaker_failures` consecutive failures the primary is marked **down**. A failed
//!   invalidation (`delete`, `delete_prefix`, `clear`) marks it down at once: the primary may
//!   still hold the value, so reads must not go back to it before the invalidation is replayed.
//! - **down**: operations go straight to the fallback, without waiting on the primary. A
//!   background thread probes the primary every `breaker_retry` (a `PING` bounded by the
//!   operation timeout); no read or write waits for a probe (an invalidation made while the probe
//!   applies the journal's last entries waits for that, under the gate).
//! - **recovering**: the primary answered; the journal is being replayed. Operations still go to
//!   the fallback. When the journal is empty the state becomes **up**.
//!
//! Each transition is logged once (`warn` when going down, `info` when back), never per
//! operation.
//!
//! # Fallback (`fallback = pickle | none | error`)
//! - `pickle`: the local cache directory (`pickle_dir`, same namespace) serves gets and writes.
//! - `none`: gets miss, writes are dropped.
//! - `error`: operations return a temporary [`Error::Backend`].
//!
//! # Recovery rules (what is guaranteed)
//! - Every `delete`, `delete_prefix` and `flush_all` made while the primary is down (or that
//!   failed on it) is recorded durably in the journal database (`ddf-journal.sqlite3`, scoped by
//!   server address and namespace) before the call returns, in every fallback mode. When the primary
//!   answers again they are applied to it, oldest first, before any read is served from it
//!   again. Several processes share the record safely (SQLite transactions); a process that comes
//!   back replays what the others recorded too. An invalidation recorded by another process after
//!   this one came back is applied when that process's own probe sees the primary (within
//!   `breaker_retry`).
//! - Values written during the outage stay in the fallback and are **not** promoted to the
//!   primary (other processes may have written newer values there meanwhile). The fallback's
//!   entries are cleared when the primary comes back, and when a cache is built (what a process
//!   that ended during an outage left), so the fallback does not serve values of an earlier
//!   outage.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::file::{FileBackend, PendingOp};
use super::{Backend, BackendStatus, Item};
use crate::config::FallbackMode;
use crate::error::{Error, Result};

/// Builds the primary; called again by the probe while it fails.
pub type Factory = Box<dyn Fn() -> Result<Arc<dyn Backend>> + Send + Sync>;

const UP: u8 = 0;
const DOWN: u8 = 1;
const RECOVERING: u8 = 2;

/// The state of the primary, as `stats` and `ping` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Operations go to the primary.
    Up,
    /// The primary is down; the fallback serves.
    Down,
    /// The primary answered again; recorded invalidations are being applied.
    Recovering,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Down => "down (serving from the fallback)",
            Health::Recovering => "recovering (applying recorded invalidations)",
        })
    }
}

/// Settings of [`Resilient`].
#[derive(Debug, Clone)]
pub struct ResilientConfig {
    /// The primary's name (`redis`, `memcached`).
    pub name: &'static str,
    /// Identifies the primary in the journal: backend, address, namespace.
    pub scope: String,
    /// What serves while the primary is down.
    pub mode: FallbackMode,
    /// Consecutive failures that mark the primary down.
    pub failures: u32,
    /// Probe interval while down.
    pub retry: Duration,
    /// The namespace is empty and `server_flush` is off: `clear` and `delete_prefix("")` would
    /// reach other applications' keys and are refused, in every state (recorded, they would be
    /// refused at replay, after the caller was told they succeeded).
    pub refuse_whole_keyspace: bool,
}

/// A primary backend behind a circuit breaker, with a fallback and a journal.
pub struct Resilient {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: ResilientConfig,
    primary: RwLock<Option<Arc<dyn Backend>>>,
    factory: Factory,
    /// The `pickle` fallback's store (its own namespace in the local database).
    local: Arc<FileBackend>,
    /// The journal of invalidations recorded during outages (its own database file).
    journal: Arc<FileBackend>,
    state: AtomicU8,
    consecutive: AtomicU32,
    transitions: AtomicU64,
    failed_ops: AtomicU64,
    probing: AtomicBool,
    /// Held (shared) by callers that record an invalidation while the primary is not up, and
    /// (exclusive) by the probe for its last replay and the switch to up, so that no recorded
    /// invalidation can slip between them.
    gate: RwLock<()>,
    down_since: Mutex<Option<Instant>>,
}

impl fmt::Debug for Resilient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resilient")
            .field("primary", &self.shared.cfg.name)
            .field("health", &self.health())
            .field("fallback", &self.shared.cfg.mode)
            .finish()
    }
}

impl Resilient {
    /// Wraps the primary that `factory` builds. If it cannot be built now (the server is down at
    /// start-up), the cache starts on the fallback and the probe keeps trying.
    pub fn new(
        cfg: ResilientConfig,
        factory: Factory,
        local: Arc<FileBackend>,
        journal: Arc<FileBackend>,
    ) -> Self {
        if cfg.mode == FallbackMode::Pickle
            && let Err(e) = local.clear()
        {
            // Left by a process that ended during an outage: never serve it.
            warn!(error = %e, "cannot clear the fallback cache");
        }
        let first = factory();
        let shared = Arc::new(Shared {
            cfg,
            primary: RwLock::new(None),
            factory,
            local,
            journal,
            state: AtomicU8::new(UP),
            consecutive: AtomicU32::new(0),
            transitions: AtomicU64::new(0),
            failed_ops: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            gate: RwLock::new(()),
            down_since: Mutex::new(None),
        });
        // Invalidations recorded by a process that ended during an outage (or a journal that
        // cannot be read, which might hold some): apply them before the primary serves a read.
        let pending = shared
            .journal
            .journal_read(&shared.cfg.scope)
            .map(|p| !p.is_empty())
            .unwrap_or(true);
        match first {
            Ok(p) if pending => {
                *write(&shared.primary) = Some(p);
                shared.state.store(DOWN, Ordering::Release);
                // Once now, bounded by the timeouts (a short-lived process, the CLI, may never
                // see the background probe run), then in the background if that failed.
                if !shared.try_recover() {
                    Shared::start_probe(&shared);
                }
            }
            Ok(p) => *write(&shared.primary) = Some(p),
            Err(e) => {
                shared.failed_ops.fetch_add(1, Ordering::Relaxed);
                Shared::mark_down(&shared, &e);
            }
        }
        Resilient { shared }
    }

    /// The primary's state.
    pub fn health(&self) -> Health {
        self.shared.health()
    }

    /// Transitions between states so far.
    pub fn transitions(&self) -> u64 {
        self.shared.transitions.load(Ordering::Relaxed)
    }

    /// Operations that failed on the primary so far.
    pub fn failed_ops(&self) -> u64 {
        self.shared.failed_ops.load(Ordering::Relaxed)
    }

    /// Runs `op` on the primary when it is up; otherwise, or when it fails temporarily, runs
    /// `fallback`. `invalidation` ops mark the primary down at their first failure.
    fn route<T>(
        &self,
        invalidation: bool,
        op: impl FnOnce(&dyn Backend) -> Result<T>,
        fallback: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let s = &self.shared;
        if s.state.load(Ordering::Acquire) == UP {
            let primary = read(&s.primary).clone();
            if let Some(p) = primary {
                match op(p.as_ref()) {
                    Ok(v) => {
                        s.consecutive.store(0, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Err(e) if e.is_temporary() => {
                        s.failed_ops.fetch_add(1, Ordering::Relaxed);
                        let n = s.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                        if invalidation || n >= s.cfg.failures {
                            Shared::mark_down(s, &e);
                        } else {
                            warn!(backend = s.cfg.name, error = %e, "cache operation failed; served by the fallback");
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        fallback()
    }

    fn unavailable(&self) -> Error {
        Error::Backend {
            backend: self.shared.cfg.name,
            message: format!("the server is {} and fallback = error", self.health()),
            temporary: true,
            source: None,
        }
    }

    /// A write or an invalidation while the primary is not up (or just failed on it): record
    /// what the primary must forget (`ops`) durably, then apply the call to the fallback, both
    /// under the shared gate, so that the probe's last replay and its clearing of the fallback
    /// (under the exclusive gate) cannot fall between them. If the primary came back meanwhile,
    /// the call runs on it instead; a temporary failure there marks it down again and records.
    fn on_fallback_recorded<T>(
        &self,
        ops: &[PendingOp],
        on_primary: &dyn Fn(&dyn Backend) -> Result<T>,
        on_local: impl FnOnce(&FileBackend) -> Result<T>,
        none: impl FnOnce() -> T,
    ) -> Result<T> {
        let s = &self.shared;
        loop {
            let gate = read(&s.gate);
            if s.state.load(Ordering::Acquire) == UP
                && let Some(p) = read(&s.primary).clone()
            {
                drop(gate);
                match on_primary(p.as_ref()) {
                    Err(e) if e.is_temporary() => {
                        s.failed_ops.fetch_add(1, Ordering::Relaxed);
                        Shared::mark_down(s, &e);
                        continue;
                    }
                    r => return r,
                }
            }
            for op in ops {
                s.journal.journal_append(&s.cfg.scope, op)?;
            }
            return self.on_fallback(on_local, none);
        }
    }

    /// A write or an invalidation: on the primary when it is up (a temporary failure marks it
    /// down at once: the primary may still hold the old value); else recorded, then on the
    /// fallback.
    fn write<T>(
        &self,
        ops: &[PendingOp],
        on_primary: impl Fn(&dyn Backend) -> Result<T>,
        on_local: impl FnOnce(&FileBackend) -> Result<T>,
        none: impl FnOnce() -> T,
    ) -> Result<T> {
        self.route(true, &on_primary, || {
            self.on_fallback_recorded(ops, &on_primary, on_local, none)
        })
    }

    fn refusal(&self) -> Error {
        super::whole_keyspace_refusal("every entry on the server, other applications' included")
    }

    /// Serves a read or write while the primary is not up, as `fallback` says.
    fn on_fallback<T>(
        &self,
        local: impl FnOnce(&FileBackend) -> Result<T>,
        none: impl FnOnce() -> T,
    ) -> Result<T> {
        match self.shared.cfg.mode {
            FallbackMode::Pickle => local(self.local()),
            FallbackMode::None => Ok(none()),
            FallbackMode::Error => Err(self.unavailable()),
        }
    }

    fn local(&self) -> &FileBackend {
        &self.shared.local
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn health(&self) -> Health {
        match self.state.load(Ordering::Acquire) {
            UP => Health::Up,
            DOWN => Health::Down,
            _ => Health::Recovering,
        }
    }

    fn mark_down(this: &Arc<Shared>, cause: &Error) {
        if this
            .state
            .compare_exchange(UP, DOWN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            this.transitions.fetch_add(1, Ordering::Relaxed);
            *this.down_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            warn!(
                backend = this.cfg.name,
                error = %cause,
                fallback = this.cfg.mode.as_str(),
                "cache server marked down; serving from the fallback until it answers again"
            );
        }
        Self::start_probe(this);
    }

    fn start_probe(this: &Arc<Shared>) {
        if this.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Shared> = Arc::downgrade(this);
        let retry = this.cfg.retry;
        let spawned = std::thread::Builder::new()
            .name("ddf-probe".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(retry);
                    let Some(s) = weak.upgrade() else { return };
                    if s.try_recover() {
                        s.probing.store(false, Ordering::Release);
                        // A caller may have marked the primary down between the switch to up
                        // and now, found this probe still running and left it to us.
                        if s.state.load(Ordering::Acquire) != UP
                            && !s.probing.swap(true, Ordering::AcqRel)
                        {
                            continue;
                        }
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
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
        self.state.store(RECOVERING, Ordering::Release);
        self.transitions.fetch_add(1, Ordering::Relaxed);
        let failed_again = || {
            self.state.store(DOWN, Ordering::Release);
            self.transitions.fetch_add(1, Ordering::Relaxed);
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
        if self.cfg.mode == FallbackMode::Pickle
            && let Err(e) = self.local.clear()
        {
            warn!(error = %e, "cannot clear the fallback cache");
        }
        self.consecutive.store(0, Ordering::Relaxed);
        self.state.store(UP, Ordering::Release);
        self.transitions.fetch_add(1, Ordering::Relaxed);
        let down_for = self
            .down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        info!(
            backend = self.cfg.name,
            down_for_ms = down_for.as_millis() as u64,
            "cache server is back; recorded invalidations applied"
        );
        true
    }

    /// Applies the journal to the primary. False when the primary failed again.
    fn replay(&self, primary: &dyn Backend) -> bool {
        let pending = match self.journal.journal_read(&self.cfg.scope) {
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
        if let Err(e) = self.journal.journal_remove(&self.cfg.scope, last) {
            warn!(error = %e, "cannot remove applied invalidations (they will be applied again)");
        }
        true
    }
}

impl Backend for Resilient {
    fn name(&self) -> &'static str {
        self.shared.cfg.name
    }

    fn get(&self, key: &str) -> Result<Option<Item>> {
        self.route(
            false,
            |p| p.get(key),
            || self.on_fallback(|l| l.get(key), || None),
        )
    }

    fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        // Recorded as a delete: when the primary returns, its older value must not be served.
        self.write(
            &[PendingOp::Delete(key.to_owned())],
            |p| p.set(key, item, ttl),
            |l| l.set(key, item, ttl),
            || (),
        )
    }

    fn delete(&self, key: &str) -> Result<bool> {
        self.write(
            &[PendingOp::Delete(key.to_owned())],
            |p| p.delete(key),
            |l| l.delete(key),
            || false,
        )
    }

    fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        if prefix.is_empty() && self.shared.cfg.refuse_whole_keyspace {
            return Err(self.refusal());
        }
        self.write(
            &[PendingOp::DeletePrefix(prefix.to_owned())],
            |p| p.delete_prefix(prefix),
            |l| l.delete_prefix(prefix),
            || 0,
        )
    }

    fn clear(&self) -> Result<()> {
        if self.shared.cfg.refuse_whole_keyspace {
            return Err(self.refusal());
        }
        self.write(&[PendingOp::Clear], |p| p.clear(), |l| l.clear(), || ())
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        self.route(
            false,
            |p| p.get_many(keys),
            || self.on_fallback(|l| l.get_many(keys), || keys.iter().map(|_| None).collect()),
        )
    }

    fn set_many(&self, items: &[(&str, Item)], ttl: Option<Duration>) -> Result<()> {
        let ops: Vec<PendingOp> = items
            .iter()
            .map(|(k, _)| PendingOp::Delete((*k).to_owned()))
            .collect();
        self.write(
            &ops,
            |p| p.set_many(items, ttl),
            |l| l.set_many(items, ttl),
            || (),
        )
    }

    fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let ops: Vec<PendingOp> = keys
            .iter()
            .map(|k| PendingOp::Delete((*k).to_owned()))
            .collect();
        self.write(&ops, |p| p.delete_many(keys), |l| l.delete_many(keys), || 0)
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
            self.shared.cfg.mode.as_str()
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
            .journal_read(&self.shared.cfg.scope)
            .map(|p| p.len())
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
                self.shared.cfg.mode.as_str().to_owned(),
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
        self.shared.local.close();
    }
}

#[cfg(test)]
mod tests {
    //! The state machine, driven by a primary whose availability a test switches. The same rules
    //! are exercised against real servers (kill -9, SIGSTOP, restart) in the integration tests.
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[derive(Debug)]
    struct Switchable {
        store: FileBackend,
        up: Arc<AtomicBool>,
    }

    impl Switchable {
        fn check(&self) -> Result<()> {
            if self.up.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(refused())
            }
        }
    }

    impl Backend for Switchable {
        fn name(&self) -> &'static str {
            "test"
        }
        fn get(&self, key: &str) -> Result<Option<Item>> {
            self.check()?;
            self.store.get(key)
        }
        fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
            self.check()?;
            self.store.set(key, item, ttl)
        }
        fn delete(&self, key: &str) -> Result<bool> {
            self.check()?;
            self.store.delete(key)
        }
        fn delete_prefix(&self, prefix: &str) -> Result<u64> {
            self.check()?;
            self.store.delete_prefix(prefix)
        }
        fn clear(&self) -> Result<()> {
            self.check()?;
            self.store.clear()
        }
        fn ping(&self) -> Result<BackendStatus> {
            self.check()?;
            self.store.ping()
        }
    }

    fn refused() -> Error {
        Error::io(
            "test",
            "connect",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        )
    }

    fn config(scope: &str, mode: FallbackMode, failures: u32) -> ResilientConfig {
        ResilientConfig {
            name: "test",
            scope: scope.to_owned(),
            mode,
            failures,
            retry: Duration::from_millis(20),
            refuse_whole_keyspace: false,
        }
    }

    fn item(s: &str) -> Item {
        Item::new(s.as_bytes().to_vec(), 0)
    }

    fn setup(
        mode: FallbackMode,
    ) -> (
        tempfile::TempDir,
        Resilient,
        Arc<AtomicBool>,
        Arc<Switchable>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let primary = Arc::new(Switchable {
            store: FileBackend::open(dir.path().join("primary"), "ns:").unwrap(),
            up: up.clone(),
        });
        let p2 = primary.clone();
        let local = Arc::new(FileBackend::open(dir.path().join("local"), "ns:").unwrap());
        let r = Resilient::new(
            config("test|here|ns:", mode, 2),
            Box::new(move || Ok(p2.clone() as Arc<dyn Backend>)),
            local.clone(),
            local,
        );
        (dir, r, up, primary)
    }

    fn wait_for(r: &Resilient, h: Health) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.health() != h {
            assert!(Instant::now() < deadline, "never reached {h:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn outage_fallback_and_recovery_without_stale_reads() {
        let (_d, r, up, primary) = setup(FallbackMode::Pickle);
        r.set("a", &item("1"), None).unwrap();
        r.set("b", &item("1"), None).unwrap();
        r.set("p:1", &item("1"), None).unwrap();
        up.store(false, Ordering::SeqCst);
        // The first failure is served by the fallback; the second marks the primary down.
        assert_eq!(r.get("a").unwrap(), None);
        assert_eq!(r.health(), Health::Up);
        assert_eq!(r.get("a").unwrap(), None);
        assert_eq!(r.health(), Health::Down);
        // While down: writes and reads on the fallback, invalidations recorded.
        r.set("c", &item("outage"), None).unwrap();
        assert_eq!(r.get("c").unwrap(), Some(item("outage")));
        assert!(!r.delete("a").unwrap());
        assert_eq!(r.delete_prefix("p:").unwrap(), 0);
        // The write is recorded as a delete too: the primary's older value must go.
        assert_eq!(r.local().journal_read("test|here|ns:").unwrap().len(), 3);
        up.store(true, Ordering::SeqCst);
        wait_for(&r, Health::Up);
        // The invalidations reached the primary before it served reads again.
        assert_eq!(r.get("a").unwrap(), None);
        assert_eq!(r.get("p:1").unwrap(), None);
        assert_eq!(r.get("b").unwrap(), Some(item("1")));
        // Outage values were not promoted, and the fallback was emptied.
        assert_eq!(r.get("c").unwrap(), None);
        assert_eq!(r.local().get("c").unwrap(), None);
        assert!(r.local().journal_read("test|here|ns:").unwrap().is_empty());
        assert_eq!(r.transitions(), 3); // down, recovering, up
        assert!(primary.store.get("b").unwrap().is_some());
    }

    #[test]
    fn invalidations_left_by_an_ended_process_are_applied_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileBackend::open(dir.path().join("primary"), "ns:").unwrap();
        store.set("k", &item("stale"), None).unwrap();
        let local = Arc::new(FileBackend::open(dir.path().join("local"), "fb:").unwrap());
        local
            .journal_append("s", &PendingOp::Delete("k".to_owned()))
            .unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let primary = Arc::new(Switchable {
            store: FileBackend::open(dir.path().join("primary"), "ns:").unwrap(),
            up,
        });
        let r = Resilient::new(
            config("s", FallbackMode::Pickle, 3),
            Box::new(move || Ok(primary.clone() as Arc<dyn Backend>)),
            local.clone(),
            local,
        );
        // Applied while the cache was built (a short-lived process would never see a probe).
        assert_eq!(r.health(), Health::Up);
        assert_eq!(r.get("k").unwrap(), None);
        assert_eq!(r.get("k").unwrap(), None);
        assert_eq!(store.get("k").unwrap(), None);
    }

    #[test]
    fn a_write_that_failed_never_lets_the_old_value_back() {
        let (_d, r, up, _p) = setup(FallbackMode::Pickle);
        r.set("k", &item("v1"), None).unwrap();
        up.store(false, Ordering::SeqCst);
        // Fails on the primary: down at once, recorded, written to the fallback.
        r.set("k", &item("v2"), None).unwrap();
        assert_eq!(r.health(), Health::Down);
        assert_eq!(r.get("k").unwrap(), Some(item("v2")));
        up.store(true, Ordering::SeqCst);
        wait_for(&r, Health::Up);
        // v1 was removed before the primary served again; v2 was not promoted.
        assert_eq!(r.get("k").unwrap(), None);
    }

    #[test]
    fn the_whole_keyspace_is_refused_in_every_state() {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(FileBackend::open(dir.path().join("local"), "fb:").unwrap());
        let r = Resilient::new(
            ResilientConfig {
                retry: Duration::from_secs(60),
                refuse_whole_keyspace: true,
                ..config("s", FallbackMode::Pickle, 3)
            },
            Box::new(|| Err(refused())),
            local.clone(),
            local.clone(),
        );
        assert_eq!(r.health(), Health::Down);
        assert!(r.clear().unwrap_err().to_string().contains("server_flush"));
        assert!(r.delete_prefix("").is_err());
        assert!(
            local.journal_read("s").unwrap().is_empty(),
            "nothing recorded"
        );
    }

    #[test]
    fn a_failed_invalidation_marks_the_primary_down_at_once() {
        let (_d, r, up, _p) = setup(FallbackMode::None);
        r.set("k", &item("v"), None).unwrap();
        up.store(false, Ordering::SeqCst);
        assert!(!r.delete("k").unwrap());
        assert_eq!(r.health(), Health::Down);
        // fallback = none: misses, dropped writes.
        r.set("x", &item("v"), None).unwrap();
        assert_eq!(r.get("x").unwrap(), None);
        up.store(true, Ordering::SeqCst);
        wait_for(&r, Health::Up);
        assert_eq!(r.get("k").unwrap(), None);
    }

    #[test]
    fn fallback_error_returns_temporary_errors_and_still_records() {
        let (_d, r, up, _p) = setup(FallbackMode::Error);
        r.set("k", &item("v"), None).unwrap();
        up.store(false, Ordering::SeqCst);
        let e = r.delete("k").unwrap_err();
        assert!(e.is_temporary(), "{e}");
        assert!(
            r.get("k")
                .unwrap_err()
                .to_string()
                .contains("fallback = error")
        );
        let ping = r.ping().unwrap_err().to_string();
        assert!(ping.contains("down"), "{ping}");
        up.store(true, Ordering::SeqCst);
        wait_for(&r, Health::Up);
        assert_eq!(r.get("k").unwrap(), None);
        assert!(r.ping().unwrap().detail.contains("state up"));
    }

    #[test]
    fn a_primary_down_at_start_up_is_probed_until_it_answers() {
        let dir = tempfile::tempdir().unwrap();
        let up = Arc::new(AtomicBool::new(false));
        let up2 = up.clone();
        let store_dir = dir.path().join("primary");
        let local = Arc::new(FileBackend::open(dir.path().join("local"), "ns:").unwrap());
        let r = Resilient::new(
            config("s", FallbackMode::Pickle, 3),
            Box::new(move || {
                if !up2.load(Ordering::SeqCst) {
                    return Err(refused());
                }
                Ok(Arc::new(Switchable {
                    store: FileBackend::open(&store_dir, "ns:")?,
                    up: up2.clone(),
                }) as Arc<dyn Backend>)
            }),
            local.clone(),
            local,
        );
        assert_eq!(r.health(), Health::Down);
        r.set("k", &item("v"), None).unwrap();
        assert_eq!(r.get("k").unwrap(), Some(item("v")));
        up.store(true, Ordering::SeqCst);
        wait_for(&r, Health::Up);
        assert_eq!(r.get("k").unwrap(), None);
    }
}
