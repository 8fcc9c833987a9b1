//! [`Resilient`]: a circuit breaker and a fallback in front of a server backend (Redis,
//! Memcached), with a durable journal of the invalidations made while the server was down.
//!
//! The wrapper is generic over its parts: the primary is any [`Backend`] a [`Factory`] builds,
//! the fallback any [`Backend`] (or a refusal), the journal a database of its own
//! ([`journal`]) scoped by an opaque string the caller derives from the server's identity, the
//! state machine a pure [`breaker::Breaker`], the fallback's entries under the current outage's
//! generation ([`generation`]), and the background loop ([`recovery`]: probe, replay, journal
//! watcher) runs on whatever [`probe::Spawn`] is given (an OS thread today).
//!
//! # States
//! - **up**: operations go to the primary. A temporary failure (timeout, refused or reset
//!   connection) is counted; a read that failed so is a miss (with `fallback = error`, the
//!   error), never an answer from the fallback, which may hold what another process wrote during
//!   an outage this one did not see. After
//!   `breaker_failures` consecutive failures the primary is marked **down**. A failed write or
//!   invalidation (`set`, `delete`, `delete_prefix`, `clear`) marks it down at once: the primary
//!   may still hold the old value, so reads must not go back to it before the invalidation is
//!   replayed. A `delete_prefix` or `clear` that fails part-way on the primary (it may have
//!   removed some keys: no exact count exists) is recorded, applied to the fallback, and returns
//!   a temporary [`Error::Backend`] saying so, whose source is the primary's error.
//! - **down**: operations go straight to the fallback, without waiting on the primary. The
//!   cache's background loop (one per cache, started with it) pings the primary every
//!   `breaker_retry` (a `PING` bounded by the operation timeout); no read or write waits for a
//!   probe (an invalidation made while the probe applies the journal's last entries waits for
//!   that, under the gate, at most one operation timeout).
//! - **recovering**: the primary answered; the journal is being replayed. Operations still go to
//!   the fallback. When the journal is empty and the outage closed the state becomes **up**
//!   (if the outage cannot be closed, it stays down and tries again).
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
//!   served from it again. Any error during that replay (a timeout, or READONLY from a server
//!   that came back as a replica) stops it: the entries not applied stay recorded, the primary
//!   stays down, and the next probe tries again (one warning per probe, not per entry).
//!   Building a cache while entries are pending applies them for at most one operation
//!   timeout; what is left is applied by the background loop at once (state **recovering**,
//!   served by the fallback meanwhile), saving its progress every few hundred entries, so
//!   that no call waits for a long journal. Several processes share the record safely (SQLite transactions); a
//!   process that comes back replays what the others recorded too. A process that stayed up
//!   (it never saw the outage) applies what the others recorded within `breaker_retry`: its
//!   background loop checks the journal (one indexed count) and applies and removes the entries
//!   it finds; if it cannot, it marks the primary down, which may hold an invalidated value.
//! - Values written during the outage stay in the fallback and are **not** promoted to the
//!   primary (other processes may have written newer values there meanwhile).
//!
//! # A fallback shared for the length of an outage
//! The journal database numbers the outages of each scope. A process that marks the primary
//! down (or starts while pending entries or an open outage exist) joins the open outage or opens
//! one, and its fallback entries live under that generation ([`generation`]): the processes of
//! one outage, short-lived ones included, share what they write. When the primary is back and
//! the journal applied, the process that sees it (its probe, or the watcher of a process that
//! stayed up) empties that generation's entries and closes the outage; until both succeeded it
//! does not switch to up. A process still down whose outage another closed joins the next one
//! at its next probe (within `breaker_retry`), so a closed generation is not read.

pub(crate) mod breaker;
mod generation;
pub(crate) mod journal;
pub(crate) mod probe;
mod recovery;
pub(crate) mod scopes;
pub(crate) use recovery::REPLAY_BATCH;

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use self::breaker::{Breaker, Health};
use self::generation::GenerationView;
use self::journal::{Journal, PendingOp};
use self::probe::Spawn;
use super::{Backend, BackendStatus, Item};
use crate::error::{Error, Result};

/// Builds the primary; called again by the probe while it fails.
pub(crate) type Factory = Box<dyn Fn() -> Result<Arc<dyn Backend>> + Send + Sync>;

/// What serves while the primary is not up.
#[derive(Debug, Clone)]
pub(crate) enum Fallback {
    /// Another backend serves reads and writes (`pickle`: the local directory; `none`: a
    /// backend that stores nothing), under the generation of the current outage.
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

/// What became of a call offered to the primary.
enum Attempt<T> {
    /// It ran there: its result (a permanent error included).
    Done(Result<T>),
    /// The primary is not up: not tried.
    NotUp,
    /// It failed there for a temporary reason (already counted).
    Failed(Error),
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
    /// How long building the cache may spend applying recorded invalidations before it leaves
    /// the rest to the background loop (the operation timeout).
    pub(crate) startup_wait: Duration,
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
    /// The invalidations recorded during outages, and the outages (its own database file).
    journal: Arc<Journal>,
    /// The outage this process serves from the fallback (its generation), 0 when none: up,
    /// or the journal could not say (then the fallback misses and drops writes).
    generation: AtomicI64,
    /// The journal's outages stamp at which this scope had no open outage (`u64::MAX`: none
    /// known); see `generation.rs`.
    none_open_at: AtomicU64,
    breaker: Breaker,
    /// Runs the probe loop in the background.
    spawn: Arc<dyn Spawn>,
    /// The background loop is running (one per cache: the probe while down, the journal
    /// watcher while up).
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
        let first = factory();
        let shared = Arc::new(Shared {
            breaker: Breaker::new(cfg.failures),
            cfg,
            primary: RwLock::new(None),
            factory,
            fallback,
            journal,
            generation: AtomicI64::new(0),
            none_open_at: AtomicU64::new(u64::MAX),
            spawn,
            probing: AtomicBool::new(false),
            gate: RwLock::new(()),
        });
        // Invalidations recorded by a process that ended during an outage (or a journal that
        // cannot be read, which might hold some): apply them before the primary serves a read.
        // An outage still open: start in it (its fallback entries are served) until the probe,
        // at once, finds the primary back and closes it.
        let scope = &shared.cfg.scope;
        let pending = shared
            .journal
            .count(scope)
            .and_then(|n| Ok(n > 0 || !shared.journal.open_outages(scope)?.is_empty()))
            .unwrap_or(true);
        match first {
            Ok(p) if pending => {
                *write(&shared.primary) = Some(p);
                shared.breaker.hold_down();
                shared.join_outage();
                // Waits for at most one operation timeout (a short-lived process, the CLI, is
                // then served by the primary at once when the journal is short); the recovery
                // goes on in the background, and starts the loop when it ends.
                Shared::recover_at_start(&shared);
                return Resilient { shared };
            }
            Ok(p) => *write(&shared.primary) = Some(p),
            Err(e) => Shared::failed(&shared, true, &e),
        }
        let first_run = if shared.breaker.is_up() {
            shared.cfg.retry
        } else {
            Duration::ZERO
        };
        Shared::start_probe(&shared, first_run);
        Resilient { shared }
    }

    /// Asks the primary (built now if it never was) whether it answers: what `ping` and
    /// `stats` report, whatever the breaker's state.
    fn ask_primary(&self) -> Result<BackendStatus> {
        let current = read(&self.shared.primary).clone();
        match current {
            Some(p) => p.ping(),
            None => (self.shared.factory)().and_then(|p| p.ping()),
        }
    }

    /// The state `ping` and `stats` show: the breaker's, except that a server that did not
    /// answer just now is never shown `up`, and the reason is named.
    fn shown_state(&self, answer: &Result<BackendStatus>) -> String {
        match (answer, self.health()) {
            (Ok(_), h) => h.to_string(),
            (Err(e), Health::Up) => {
                format!("not answering ({})", crate::error::failure_kind(e))
            }
            (Err(e), h) => format!("{h}; not answering ({})", crate::error::failure_kind(e)),
        }
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

    #[cfg(feature = "async")]
    /// Whether calls go to the primary now (for a face that drives its own primary: the async
    /// face sends its hot path to an async twin of the primary and reports back below).
    pub(crate) fn is_up(&self) -> bool {
        self.shared.breaker.is_up()
    }

    #[cfg(feature = "async")]
    /// A call succeeded on the primary.
    pub(crate) fn succeeded(&self) {
        self.shared.breaker.succeeded();
    }

    #[cfg(feature = "async")]
    /// A write or an invalidation succeeded on the primary (the async face's hot path): the
    /// sync face's rule, what the server forgets the open outages forget (see
    /// [`generation`]). One load of the mapped outage marker when no outage is open; the journal and
    /// the fallback (SQLite) otherwise.
    pub(crate) fn primary_forgot(&self, what: Forget<'_>) {
        self.shared.forget_in_open_outages(|| match what {
            Forget::Key(key) => deletes(std::iter::once(key)),
            Forget::Keys(keys) => deletes(keys.iter().copied()),
            Forget::Prefix(p) => vec![PendingOp::DeletePrefix(Cow::Borrowed(p))],
            Forget::All => vec![PendingOp::Clear],
        });
    }

    #[cfg(feature = "async")]
    /// A call failed on the primary for a temporary reason (counted; `at_once` marks the
    /// primary down at the first one, as writes and invalidations do). May open an outage in
    /// the journal: blocking.
    pub(crate) fn failed(&self, at_once: bool, cause: &Error) {
        Shared::failed(&self.shared, at_once, cause);
    }

    #[cfg(feature = "async")]
    /// Whether a read that failed on the primary returns the error (`fallback = error`)
    /// rather than a miss.
    pub(crate) fn refuses(&self) -> bool {
        matches!(self.shared.fallback, Fallback::Refuse)
    }

    /// The refusal of `clear`/`delete_prefix("")` when they would reach every key on the
    /// server, in every state.
    ///
    /// # Errors
    /// That refusal.
    pub(crate) fn check_whole_keyspace(&self, whole: bool) -> Result<()> {
        if whole && self.shared.cfg.refuse_whole_keyspace {
            return Err(self.refusal());
        }
        Ok(())
    }

    /// Runs `op` on the primary when it is up: its result, or why it was not used (not up, or
    /// it just failed for a temporary reason: counted, `at_once` marks the primary down at the
    /// first one).
    fn on_primary<T>(&self, at_once: bool, op: &impl Fn(&dyn Backend) -> Result<T>) -> Attempt<T> {
        let s = &self.shared;
        if !s.breaker.is_up() {
            return Attempt::NotUp;
        }
        let Some(p) = read(&s.primary).clone() else {
            return Attempt::NotUp;
        };
        match op(p.as_ref()) {
            Ok(v) => {
                s.breaker.succeeded();
                Attempt::Done(Ok(v))
            }
            Err(e) if e.is_temporary() => {
                Shared::failed(s, at_once, &e);
                Attempt::Failed(e)
            }
            Err(e) => Attempt::Done(Err(e)),
        }
    }

    /// A read: on the primary when it is up, else on the fallback. A read that fails on the
    /// primary while it is up is a miss (`miss`), or the primary's error with `fallback =
    /// error`: the fallback may hold what another process wrote during an outage this one never
    /// saw, which a process that is up must not serve.
    fn read_op<T>(
        &self,
        miss: impl FnOnce() -> T,
        op: impl Fn(&dyn Backend) -> Result<T>,
    ) -> Result<T> {
        let s = &self.shared;
        if !s.breaker.is_up() {
            return self.on_fallback(&op);
        }
        let Some(p) = read(&s.primary).clone() else {
            return self.on_fallback(&op);
        };
        match op(p.as_ref()) {
            Ok(v) => {
                s.breaker.succeeded();
                Ok(v)
            }
            Err(e) if e.is_temporary() => {
                Shared::failed(s, false, &e);
                match s.fallback {
                    Fallback::Serve(_) => {
                        super::degraded::note_fallback();
                        Ok(miss())
                    }
                    Fallback::Refuse => Err(e),
                }
            }
            Err(e) => Err(e),
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
            Attempt::Done(r) => {
                if r.is_ok() {
                    self.shared.forget_in_open_outages(record);
                }
                r
            }
            Attempt::NotUp | Attempt::Failed(_) => self.on_fallback_recorded(record, &op).0,
        }
    }

    /// A write the journal does not record (`incr`, `touch`, on `key`): on the primary when it
    /// is up (a temporary failure marks it down at once), else on the fallback's entries of the
    /// current outage, under the shared gate; if that outage was closed meanwhile, what the
    /// call put there is removed (as for a recorded write: nothing stays in a closed
    /// generation).
    fn unrecorded_op<T>(&self, key: &str, op: impl Fn(&dyn Backend) -> Result<T>) -> Result<T> {
        match self.on_primary(true, &op) {
            Attempt::Done(r) => r,
            Attempt::NotUp | Attempt::Failed(_) => self.on_fallback_unrecorded(key, &op),
        }
    }

    /// An `add` of `key` (`op`): see `Backend for Resilient`'s `add`.
    fn added(&self, key: &str, op: impl Fn(&dyn Backend) -> Result<bool>) -> Result<bool> {
        match self.on_primary(true, &op) {
            Attempt::Done(r) => {
                if matches!(r, Ok(true)) {
                    self.shared
                        .forget_in_open_outages(|| deletes(std::iter::once(key)));
                }
                r
            }
            Attempt::NotUp | Attempt::Failed(_) => self.on_fallback_unrecorded(key, &op),
        }
    }

    /// The fallback half of [`Resilient::unrecorded_op`]: `op` on the fallback's entries of
    /// the current outage, under the shared gate, removed again if that outage closed
    /// meanwhile.
    fn on_fallback_unrecorded<T>(
        &self,
        key: &str,
        op: &impl Fn(&dyn Backend) -> Result<T>,
    ) -> Result<T> {
        let s = &self.shared;
        let _gate = read(&s.gate);
        let g = s.generation.load(Ordering::Acquire);
        let r = self.on_fallback_in(g, op);
        s.drop_if_closed(g, &deletes(std::iter::once(key)));
        r
    }

    /// A namespace-wide invalidation (`delete_prefix`, `clear`): as [`Resilient::write_op`],
    /// except that when it fails part-way on the primary (which may have removed part of the
    /// keys: no count can be given) the caller gets a temporary error saying it was recorded,
    /// not the fallback's count.
    fn invalidate_op<'k, T>(
        &self,
        what: &str,
        record: impl FnOnce() -> Vec<PendingOp<'k>>,
        op: impl Fn(&dyn Backend) -> Result<T>,
    ) -> Result<T> {
        match self.on_primary(true, &op) {
            Attempt::Done(r) => {
                if r.is_ok() {
                    self.shared.forget_in_open_outages(record);
                }
                r
            }
            Attempt::NotUp => self.on_fallback_recorded(record, &op).0,
            Attempt::Failed(e) => {
                match self.on_fallback_recorded(record, &op) {
                    // The primary came back meanwhile and took the whole call: its answer.
                    (r, Landed::Primary) => return r,
                    (r, Landed::Fallback) => drop(r?),
                }
                Err(self.partway(what, e))
            }
        }
    }

    /// The error of a namespace-wide invalidation that failed part-way on the primary (`e`)
    /// and was recorded.
    pub(crate) fn partway(&self, what: &str, e: Error) -> Error {
        Error::Backend {
            backend: self.shared.cfg.name,
            message: format!(
                "{what} failed part-way on the server, which may have removed some of \
                 the keys; it was recorded and will be applied in full when the server \
                 answers again"
            ),
            temporary: true,
            source: Some(Box::new(e)),
        }
    }

    /// A write or an invalidation while the primary is not up (or just failed on it): record
    /// what the primary must forget durably, then apply the call to the fallback, both under
    /// the shared gate, so that the probe's last replay and its clearing of the fallback (under
    /// the exclusive gate) cannot fall between them. If the primary came back meanwhile, the
    /// call runs on it instead (and, as on the primary's first try, what it makes the server
    /// forget the open outages forget); a temporary failure there marks it down again and
    /// records. Says where the call landed.
    fn on_fallback_recorded<'k, T>(
        &self,
        record: impl FnOnce() -> Vec<PendingOp<'k>>,
        op: &impl Fn(&dyn Backend) -> Result<T>,
    ) -> (Result<T>, Landed) {
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
                    Ok(v) => {
                        s.forget_in_open_outages(record);
                        return (Ok(v), Landed::Primary);
                    }
                    Err(e) => return (Err(e), Landed::Primary),
                }
            }
            break gate;
        };
        let ops = record();
        if let Err(e) = s.journal.append(&s.cfg.scope, &ops) {
            return (Err(e), Landed::Fallback);
        }
        let g = s.generation.load(Ordering::Acquire);
        let r = self.on_fallback_in(g, op);
        s.drop_if_closed(g, &ops);
        s.forget_in_other_outages(g, &ops);
        (r, Landed::Fallback)
    }

    fn refusal(&self) -> Error {
        super::whole_keyspace_refusal("every entry on the server, other applications' included")
    }

    /// Serves a call while the primary is not up, as the fallback says.
    fn on_fallback<T>(&self, op: &impl Fn(&dyn Backend) -> Result<T>) -> Result<T> {
        self.on_fallback_in(self.shared.generation.load(Ordering::Acquire), op)
    }

    /// [`Resilient::on_fallback`] in outage generation `g` (0: none, the fallback misses).
    fn on_fallback_in<T>(&self, g: i64, op: &impl Fn(&dyn Backend) -> Result<T>) -> Result<T> {
        match &self.shared.fallback {
            Fallback::Serve(f) => {
                super::degraded::note_fallback();
                match g {
                    0 => op(&super::none::NoneBackend),
                    g => op(&GenerationView::new(f.clone(), g)),
                }
            }
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

/// What a write of `key` records: a delete (when the primary returns, its older value must not
/// be served).
/// What a write or an invalidation that succeeded on the primary makes it forget (for
/// [`Resilient::primary_forgot`]).
#[cfg(feature = "async")]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Forget<'a> {
    /// A key's old value (a `set`, a `delete`).
    Key(&'a str),
    /// These keys' old values (`set_many`, `delete_many`).
    Keys(&'a [&'a str]),
    /// Every key under a prefix.
    Prefix(&'a str),
    /// The whole namespace.
    All,
}

/// Where [`Resilient::on_fallback_recorded`] ran a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Landed {
    /// On the primary, which came back meanwhile: nothing was recorded.
    Primary,
    /// Recorded, then on the fallback.
    Fallback,
}

fn deletes<'k>(keys: impl Iterator<Item = &'k str>) -> Vec<PendingOp<'k>> {
    keys.map(|k| PendingOp::Delete(Cow::Borrowed(k))).collect()
}

impl Backend for Resilient {
    fn name(&self) -> &'static str {
        self.shared.cfg.name
    }

    fn get(&self, key: &str) -> Result<Option<Item>> {
        self.read_op(|| None, |b| b.get(key))
    }

    fn get_expiring(&self, key: &str) -> Result<Option<(Item, crate::backend::Expiry)>> {
        self.read_op(|| None, |b| b.get_expiring(key))
    }

    fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        self.write_op(|| deletes(std::iter::once(key)), |b| b.set(key, item, ttl))
    }

    fn delete(&self, key: &str) -> Result<bool> {
        self.write_op(|| deletes(std::iter::once(key)), |b| b.delete(key))
    }

    /// A write that records nothing: while the server is not up, an `add` on the fallback's
    /// entries of the outage (shared by the processes of this machine). An `add` never makes
    /// the server's value stale (on the server it would have replaced nothing), so nothing is
    /// recorded: a recorded delete would remove, when the server returns, a value (a lease, a
    /// counter) that another host put there and still relies on. On the server, a stored
    /// `add` makes the open outages forget the key, as a `set` does.
    fn add(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<bool> {
        self.added(key, |b| b.add(key, item, ttl))
    }

    /// As `add`.
    fn take_lease(&self, lease: &str, item: &Item, ttl: Option<Duration>) -> Result<bool> {
        self.added(lease, |b| b.take_lease(lease, item, ttl))
    }

    /// As `compare_and_delete`.
    fn release_lease(&self, lease: &str, token: &[u8]) -> Result<bool> {
        self.unrecorded_op(lease, |b| b.release_lease(lease, token))
    }

    /// A write that records nothing: while the server is not up the counter counts on the
    /// fallback's entries of the outage (from 0), and when the server is back its count
    /// resumes where it was before the outage; the outage's counts go with the outage's
    /// entries. A server count is a lower bound of the true count, never a stale value to
    /// forget: a recorded delete would make it 0, a worse one.
    fn incr(&self, key: &str, delta: i64, counter: &dyn super::Counter) -> Result<i64> {
        self.unrecorded_op(key, |b| b.incr(key, delta, counter))
    }

    /// A write that records nothing (it changes no value): on the fallback's entry while the
    /// server is not up.
    fn touch(&self, key: &str, ttl: Option<Duration>) -> Result<bool> {
        self.unrecorded_op(key, |b| b.touch(key, ttl))
    }

    fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.check_whole_keyspace(prefix.is_empty())?;
        self.invalidate_op(
            "delete_prefix",
            || vec![PendingOp::DeletePrefix(Cow::Borrowed(prefix))],
            |b| b.delete_prefix(prefix),
        )
    }

    fn clear(&self) -> Result<()> {
        self.check_whole_keyspace(true)?;
        self.invalidate_op("clear", || vec![PendingOp::Clear], |b| b.clear())
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        self.read_op(|| vec![None; keys.len()], |b| b.get_many(keys))
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

    /// A write that records nothing, like `add` (it only releases leases): while the server is
    /// not up, on the fallback's entries (where that outage's leases are). A recorded delete
    /// would remove, when the server returns, the live lease of another host; and on the
    /// server it makes no value stale, so the open outages forget nothing.
    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool> {
        self.unrecorded_op(key, |b| b.compare_and_delete(key, expected))
    }

    /// A write, like `set` (recorded as a delete during an outage; on the fallback it is
    /// fenced by the outage's lease there).
    fn set_if_lease(
        &self,
        key: &str,
        item: &Item,
        ttl: Option<Duration>,
        lease: &str,
        token: &[u8],
    ) -> Result<bool> {
        self.write_op(
            || deletes(std::iter::once(key)),
            |b| b.set_if_lease(key, item, ttl, lease, token),
        )
    }

    /// A write that records nothing, like `touch`: on the fallback's entry while the server is
    /// not up.
    fn extend_lease(&self, lease: &str, token: &[u8], ttl: Duration) -> Result<bool> {
        self.unrecorded_op(lease, |b| b.extend_lease(lease, token, ttl))
    }

    fn keys(&self, prefix: &str, limit: usize) -> Result<Vec<super::EntryInfo>> {
        match self.on_primary(false, &|b: &dyn Backend| b.keys(prefix, limit)) {
            Attempt::Done(r) => r,
            Attempt::Failed(e) => Err(e),
            Attempt::NotUp => Err(Error::Backend {
                backend: self.shared.cfg.name,
                message: format!(
                    "the server is {}: its keys cannot be listed now",
                    self.health()
                ),
                temporary: true,
                source: None,
            }),
        }
    }

    fn meta(&self, key: &str) -> Result<Option<super::EntryInfo>> {
        self.read_op(|| None, |b| b.meta(key))
    }

    fn ping(&self) -> Result<BackendStatus> {
        let result = self.ask_primary();
        let summary = format!(
            "state {}; {} transitions, {} failed operations; fallback = {}",
            self.shown_state(&result),
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
        // Up is shown only when the server answers now; a server that is down or recovering is
        // not asked (the probe does), so that polling `info` adds no load to a replay.
        let answer = (self.health() == Health::Up).then(|| self.ask_primary());
        let mut rows = vec![(
            "state".to_owned(),
            match &answer {
                Some(a) => self.shown_state(a),
                None => self.health().to_string(),
            },
        )];
        if let Some(Err(e)) = &answer {
            rows.push(("server error".to_owned(), e.to_string()));
        }
        rows.extend([
            ("breaker".to_owned(), self.health().to_string()),
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
            (
                "outage generation".to_owned(),
                self.shared.generation.load(Ordering::Acquire).to_string(),
            ),
        ]);
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
