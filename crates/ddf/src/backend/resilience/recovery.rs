//! The background loop of a [`Resilient`](super::Resilient) cache, one per cache on its
//! [`Spawn`]: while the primary is down it probes it, replays the journal and closes the outage
//! (then up); while it is up it watches the journal for what other processes recorded. Also the
//! reaction to a failure (count it, open the breaker, join the outage).

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::breaker::{Failure, Health};
use super::generation::GenerationView;
use super::journal::PendingOp;
use super::probe::Body;
use super::{Fallback, Shared, read, write};
use crate::backend::Backend;
use crate::error::{Error, Result};

impl Shared {
    /// A temporary failure on the primary: count it, log the transition it caused (once), and
    /// start the probe if the primary is not up.
    pub(super) fn failed(this: &Arc<Shared>, at_once: bool, cause: &Error) {
        crate::backend::degraded::note_temporary_failure();
        match this.breaker.failed(at_once, Instant::now()) {
            Failure::Counted => {
                warn!(backend = this.cfg.name, error = %cause, "cache operation failed on the server; a read misses");
                return;
            }
            Failure::Opened => {
                this.join_outage();
                warn!(
                    backend = this.cfg.name,
                    error = %cause,
                    fallback = this.fallback.label(),
                    "cache server marked down; serving from the fallback until it answers again"
                );
            }
            Failure::AlreadyOpen => {}
        }
        // The loop normally runs already (started with the cache); this restarts it if the
        // system refused it a thread.
        Self::start_probe(this, this.cfg.retry);
    }

    /// Starts the background loop of this cache (at most one): while the primary is up it
    /// watches the journal for invalidations other processes recorded and applies them; while
    /// it is not, it probes the primary and replays. It ends when the cache is dropped.
    pub(super) fn start_probe(this: &Arc<Shared>, first: Duration) {
        if this.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Shared> = Arc::downgrade(this);
        let body: Body = Box::new(move || {
            let Some(s) = weak.upgrade() else {
                return ControlFlow::Break(());
            };
            s.tick();
            ControlFlow::Continue(())
        });
        if let Err(e) = this.spawn.spawn(first, this.cfg.retry, body) {
            warn!(error = %e, "cannot start the cache server probe");
            this.probing.store(false, Ordering::Release);
        }
    }

    /// The first recovery of a cache built with invalidations recorded (the breaker held
    /// down): run on a thread of its own, which starts the background loop when it ends, while
    /// the caller waits for it at most one operation timeout (`startup_wait`), whatever the
    /// server does (a stopped one accepts the connection and never answers: pinging it, and on
    /// a Redis Cluster first waiting for the slot map and asking the other nodes for it, costs
    /// several timeouts) and however long the journal. The scope serves from the fallback
    /// until the recovery has applied every record, so a caller that stops waiting reads
    /// nothing stale. A thread the system refuses is replaced by recovering here, bounded by
    /// the replay's deadline as before.
    pub(super) fn recover_at_start(this: &Arc<Shared>) {
        let wait = this.cfg.startup_wait;
        if wait.is_zero() {
            // Nobody waits: the background loop recovers, at once.
            return Shared::start_probe(this, Duration::ZERO);
        }
        let deadline = Instant::now() + wait;
        // The background loop waits for the start-up recovery: a failure noted meanwhile (a
        // key moved into this scope, `PerScope::follow_moves`) would start it, and two
        // recoveries would run at once. Held only if the loop does not run yet.
        let held = !this.probing.swap(true, Ordering::AcqRel);
        let recover = move |s: Arc<Shared>, done: std::sync::mpsc::Sender<bool>| {
            let up = s.try_recover(Some(deadline));
            let _ = done.send(up);
            if held {
                s.probing.store(false, Ordering::Release);
            }
            let first = if up { s.cfg.retry } else { Duration::ZERO };
            Shared::start_probe(&s, first);
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let s = this.clone();
        let spawned = std::thread::Builder::new()
            .name("ddf-start-replay".to_owned())
            .spawn(move || recover(s, tx));
        let answer = match spawned {
            Ok(_) => rx.recv_timeout(wait).ok(),
            Err(_) => {
                let (tx, rx) = std::sync::mpsc::channel();
                recover(this.clone(), tx);
                rx.try_recv().ok()
            }
        };
        match answer {
            Some(true) => {}
            Some(false) => info!(
                backend = this.cfg.name,
                "the server is not ready for its recorded invalidations; they are applied once it is, serving from the fallback meanwhile"
            ),
            None => info!(
                backend = this.cfg.name,
                "recorded invalidations are being applied in the background; serving from the fallback meanwhile"
            ),
        }
    }

    /// One run of the background loop.
    fn tick(self: &Arc<Self>) {
        if self.breaker.is_up() {
            self.watch();
            return;
        }
        // Another process closed our outage (the primary answered it): never read a closed
        // generation; join (or open) the current one.
        let g = self.generation.load(Ordering::Acquire);
        if g == 0 || matches!(self.journal.is_open(&self.cfg.scope, g), Ok(false)) {
            self.join_outage();
        }
        self.try_recover(None);
    }

    /// This process marks the primary down: it joins the open outage of its scope, or opens
    /// one, and serves the fallback entries of that generation.
    pub(super) fn join_outage(&self) {
        let g = match self.journal.join_outage(&self.cfg.scope) {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "cannot join the outage; the fallback misses until it can");
                0
            }
        };
        self.generation.store(g, Ordering::Release);
    }

    /// The primary is back and the journal applied: empties the fallback entries of the open
    /// outages of this scope, closes them (nobody reads them again), then empties them once
    /// more: an entry another process wrote between the first emptying and the close is
    /// removed by the second, one written after the close by its writer
    /// ([`Shared::drop_if_closed`]).
    ///
    /// # Errors
    /// The journal's or the fallback's before the close: the outage stays open. A failure of
    /// the last emptying is logged (the outage is closed: its entries are never read).
    fn end_outages(&self) -> Result<()> {
        let open = self.journal.open_outages(&self.cfg.scope)?;
        if open.is_empty() {
            return Ok(());
        }
        for &g in &open {
            self.empty(g)?;
        }
        self.journal.close_outages(&self.cfg.scope, &open)?;
        for &g in &open {
            if let Err(e) = self.empty(g) {
                warn!(error = %e, generation = g, "cannot empty a closed outage's fallback entries (they are never read)");
            }
        }
        Ok(())
    }

    /// Removes the fallback entries of outage `g`.
    fn empty(&self, g: i64) -> Result<()> {
        match &self.fallback {
            Fallback::Serve(f) => GenerationView::new(f.clone(), g).clear(),
            Fallback::Refuse => Ok(()),
        }
    }

    /// Empties the fallback entries of the open outages of this scope (they stay open).
    fn empty_outages(&self) -> Result<()> {
        for g in self.journal.open_outages(&self.cfg.scope)? {
            self.empty(g)?;
        }
        Ok(())
    }

    /// While up: applies what other processes recorded (a process that was down while this one
    /// was not) so that this process does not keep reading a value they invalidated, then closes
    /// their outage. The check is two indexed queries in the journal database. A failure to
    /// apply marks the primary down: it may hold a value that must not be served.
    fn watch(self: &Arc<Self>) {
        let check = self
            .journal
            .count(&self.cfg.scope)
            .and_then(|n| Ok(n > 0 || !self.journal.open_outages(&self.cfg.scope)?.is_empty()));
        match check {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => {
                warn!(error = %e, "cannot read the recorded invalidations");
                return;
            }
        }
        let Some(primary) = read(&self.primary).clone() else {
            return;
        };
        match self.replay(primary.as_ref(), None) {
            Ok(Replayed { applied: 0, .. }) => {}
            Ok(Replayed { applied: n, .. }) => info!(
                backend = self.cfg.name,
                applied = n,
                "applied invalidations recorded by another process during an outage"
            ),
            Err(e) => return Shared::failed(self, true, &e),
        }
        // Applied: the outage another process saw is over for everybody (unless this process
        // has just gone down and joined it meanwhile: its own probe will close it).
        if !self.breaker.is_up() {
            return;
        }
        if let Err(e) = self.end_outages() {
            warn!(error = %e, "cannot close the outage; trying again");
        }
    }

    /// One probe: build or ping the primary, replay the journal, switch to up. With a
    /// `deadline`, a replay still unfinished then is left (state recovering) to the next probe.
    pub(super) fn try_recover(self: &Arc<Self>, deadline: Option<Instant>) -> bool {
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
            if self.breaker.health() == Health::Recovering {
                // A replay left unfinished at start-up, and the primary is gone again.
                self.breaker.recovery_failed();
            }
            return false;
        }
        self.breaker.begin_recovery();
        let failed_again = |e: Error| {
            self.breaker.recovery_failed();
            warn!(
                backend = self.cfg.name,
                error = %e,
                "recorded invalidations could not be applied; the server stays down"
            );
            false
        };
        match self.replay(primary.as_ref(), deadline) {
            Err(e) => return failed_again(e),
            Ok(r) if !r.finished => return false,
            Ok(_) => {}
        }
        // Last pass under the gate, then up: nothing recorded can be left behind. Invalidations
        // this process makes meanwhile wait for the gate, so the pass gets at most one
        // operation timeout (and what is left of `deadline`): what other processes recorded
        // during the pass above can be long, and the rest is left to the next probe.
        // The outages' fallback entries are emptied before the gate too (there can be many):
        // under it, only what was written since is left to remove.
        if let Err(e) = self.empty_outages() {
            return failed_again(e);
        }
        let gated = Instant::now() + self.cfg.startup_wait;
        let gated = deadline.map_or(gated, |d| d.min(gated));
        let _gate = write(&self.gate);
        match self.replay(primary.as_ref(), Some(gated)) {
            Err(e) => return failed_again(e),
            Ok(r) if !r.finished => return false,
            Ok(_) => {}
        }
        // Up with the outage open would let a later outage serve its values.
        if let Err(e) = self.end_outages() {
            return failed_again(e);
        }
        self.generation.store(0, Ordering::Release);
        let down_for = self.breaker.recovered(Instant::now());
        info!(
            backend = self.cfg.name,
            down_for_ms = down_for.as_millis() as u64,
            "cache server is back; recorded invalidations applied"
        );
        true
    }

    /// Applies the journal to the primary, oldest first, until `deadline` if one is given.
    /// Consecutive deletes go in batches of up to [`REPLAY_BATCH`] keys, one pipelined call
    /// (`Backend::delete_many`: one `UNLINK` on Redis, pipelined meta deletes on Memcached);
    /// consecutive prefix deletes in batches of up to [`REPLAY_BATCH`] prefixes, one call
    /// (`Backend::delete_prefixes`: Memcached lists each server's items once for the batch).
    /// A temporary error (a timeout, READONLY from a server that became a replica) stops it:
    /// what was applied is removed from the journal, the rest (the failed batch included)
    /// stays recorded, to be applied when the server accepts it (dropping the entry would let
    /// its old value be served). A permanent refusal (a whole-keyspace flush this process's
    /// settings refuse, an operation the server cannot do) can never pass: that entry is
    /// dropped with a warning (a batch so refused is applied again entry by entry to find
    /// it), so that one such entry does not keep every process of the scope on the fallback
    /// for good. Progress is saved every [`REPLAY_BATCH`] entries or more, so that a replay
    /// cut short (a process that ends) is not started over.
    ///
    /// # Errors
    /// The primary's error for the first entry it did not apply, or the journal's.
    fn replay(&self, primary: &dyn Backend, deadline: Option<Instant>) -> Result<Replayed> {
        let pending = self.journal.read(&self.cfg.scope)?;
        let mut done = Replayed {
            applied: 0,
            finished: true,
        };
        let mut saved = 0;
        let mut outcome = Ok(());
        while done.applied < pending.len() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                done.finished = false;
                break;
            }
            let rest = &pending[done.applied..];
            let (keys, prefixes) = (run_of(rest, Run::Deletes), run_of(rest, Run::Prefixes));
            let (r, step) = if keys.len() > 1 {
                (primary.delete_many(&keys).map(drop), keys.len())
            } else if prefixes.len() > 1 {
                (primary.delete_prefixes(&prefixes).map(drop), prefixes.len())
            } else {
                (pending[done.applied].1.apply(primary), 1)
            };
            match r {
                Ok(()) => {}
                Err(e) if e.is_temporary() => {
                    outcome = Err(e);
                    break;
                }
                Err(_) if step > 1 => {
                    // Find the entry refused for good: one by one, as before batches.
                    for (_, op) in &pending[done.applied..done.applied + step] {
                        if let Err(e) = op.apply(primary) {
                            if e.is_temporary() {
                                outcome = Err(e);
                                break;
                            }
                            warn_dropped(&e, op);
                        }
                    }
                    if outcome.is_err() {
                        break;
                    }
                }
                Err(e) => warn_dropped(&e, &pending[done.applied].1),
            }
            done.applied += step;
            if done.applied - saved >= REPLAY_BATCH {
                self.forget(&pending[..done.applied]);
                saved = done.applied;
            }
        }
        if done.applied > saved {
            self.forget(&pending[..done.applied]);
        }
        outcome.map(|()| done)
    }

    /// Removes applied entries (the last one's id and every older one) from the journal.
    fn forget(&self, applied: &[(i64, PendingOp<'static>)]) {
        let Some((last, _)) = applied.last() else {
            return;
        };
        if let Err(e) = self.journal.remove(&self.cfg.scope, *last) {
            warn!(error = %e, "cannot remove applied invalidations (they will be applied again)");
        }
    }
}

/// Keys per batch of recorded deletes, and entries a replay applies between two saves of its
/// progress.
pub(crate) const REPLAY_BATCH: usize = 256;

/// Which recorded invalidations a batch is made of.
#[derive(Clone, Copy)]
enum Run {
    Deletes,
    Prefixes,
}

/// The keys (or prefixes) of the recorded deletes (or prefix deletes) that open `pending`, at
/// most [`REPLAY_BATCH`] of them.
fn run_of<'a>(pending: &'a [(i64, PendingOp<'static>)], run: Run) -> Vec<&'a str> {
    pending
        .iter()
        .take(REPLAY_BATCH)
        .map_while(|(_, op)| match (op, run) {
            (PendingOp::Delete(k), Run::Deletes) | (PendingOp::DeletePrefix(k), Run::Prefixes) => {
                Some(k.as_ref())
            }
            _ => None,
        })
        .collect()
}

fn warn_dropped(e: &Error, op: &PendingOp<'_>) {
    warn!(
        error = %e,
        ?op,
        "a recorded invalidation can never be applied here (a permanent refusal); dropped"
    );
}

/// What a replay did.
#[derive(Debug, Clone, Copy)]
struct Replayed {
    /// Entries applied (and removed from the journal).
    applied: usize,
    /// Nothing was left for lack of time.
    finished: bool,
}
