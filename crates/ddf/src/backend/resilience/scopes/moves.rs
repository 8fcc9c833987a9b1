//! Recorded invalidations that cross scopes: the whole server list's records moved to the
//! servers' scopes ([`adopt_legacy`]), a Redis Cluster's prefix records shared between its
//! scopes before they are built ([`share_prefixes`]), a write recorded in a scope its key just
//! left or served by its new scope while its old one is down elsewhere
//! ([`PerScope::follow_moves`]), and what a partition that moves keys sees of a scope
//! ([`ScopeState`]).

use std::fmt;

use super::{Partition, PerScope};
use crate::backend::resilience::journal::{Journal, PendingOp};
use crate::error::{Error, Result};

/// A scope's state as a [`Partition`] may ask it: whether its breaker is closed and whether
/// invalidations are recorded for it (by this process or another). Holds the scope weakly:
/// the partition is reached from the scope's own primary.
#[derive(Clone)]
pub(crate) struct ScopeState(pub(super) std::sync::Weak<crate::backend::resilience::Shared>);

impl fmt::Debug for ScopeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ScopeState").finish_non_exhaustive()
    }
}

impl ScopeState {
    /// The scope's breaker is closed (its primary serves its keys).
    pub(crate) fn is_up(&self) -> bool {
        self.0.upgrade().is_some_and(|s| s.breaker.is_up())
    }

    /// The keys of the deletes recorded for the scope (by this process or another); `None`
    /// when the journal cannot be read.
    pub(crate) fn recorded_deletes(&self) -> Option<Vec<String>> {
        let s = self.0.upgrade()?;
        let ops = s.journal.read(&s.cfg.scope).ok()?;
        Some(
            ops.into_iter()
                .filter_map(|(_, op)| match op {
                    PendingOp::Delete(k) => Some(k.into_owned()),
                    _ => None,
                })
                .collect(),
        )
    }

    /// The scope may give a key away: its breaker is closed and nothing is recorded for it
    /// (a journal that cannot be read counts as something recorded).
    pub(crate) fn is_settled(&self) -> bool {
        self.0.upgrade().is_some_and(|s| {
            s.breaker.is_up() && s.journal.count(&s.cfg.scope).is_ok_and(|n| n == 0)
        })
    }
}

/// Moves the invalidations recorded under `legacy` (the scope of the whole server list, used
/// before the breaker per server, or by an older ddf still running) to the scopes of the
/// servers they concern: a `delete` to the scope of its key, a prefix or `clear` to every
/// scope. Called before the scopes' breakers are built, so that they find the entries and apply
/// them before serving. An entry moved twice (two processes starting at once, or a crash
/// between the copy and the removal) is applied twice, which is harmless.
///
/// # Errors
/// The journal's: the entries stay under `legacy` for the next start.
pub(crate) fn adopt_legacy(
    journal: &Journal,
    legacy: &str,
    partition: &dyn Partition,
    scopes: &[String],
) -> Result<()> {
    if let Err(e) = share_prefixes(journal, partition, scopes) {
        tracing::warn!(error = %e, "cannot share the recorded prefix invalidations between the servers; a key resharded since may be read stale until they are replayed");
    }
    let entries = journal.read(legacy)?;
    let Some(&(last, _)) = entries.last() else {
        return Ok(());
    };
    let n = scopes.len().max(1);
    let mut per: Vec<Vec<PendingOp<'_>>> = vec![Vec::new(); n];
    for (_, op) in &entries {
        match op {
            // Placed by the key's text, as the router places every key but a lease in a lease
            // operation (`Routing::lease_index`). Lease operations record nothing; a lease
            // delete an older ddf recorded lands in the scope of the lease's text, not of the
            // key it guards: that lease lingers until its TTL (a second computation at worst,
            // never a stale value).
            PendingOp::Delete(k) => per[partition.scope_of(k).min(n - 1)].push(op.clone()),
            _ => per.iter_mut().for_each(|ops| ops.push(op.clone())),
        }
    }
    for (scope, ops) in scopes.iter().zip(&per) {
        if !ops.is_empty() {
            journal.append(scope, ops)?;
        }
    }
    tracing::info!(
        from = legacy,
        entries = entries.len(),
        "recorded invalidations of the whole server list moved to the servers they concern"
    );
    journal.remove(legacy, last)
}

/// On a partition whose keys move between scopes ([`Partition::keys_move`]): copies every
/// prefix delete and `clear` recorded in one scope into every other scope's journal (where the
/// same entry is not already recorded), before the scopes are built. A key the entry concerns
/// may have been resharded to another scope's node since it was recorded, and this process
/// (whose first slot map already places it there) would read it through that scope at once,
/// while the entry waits for its own scope's node. With the copy, each scope applies the entry
/// on its own nodes, through its own breaker, before it serves (a down node holds only its own
/// scope down). A running process needs no copy: it keeps a resharded slot in its scope while
/// that scope has records (`redis/cluster.rs`). Applying an entry twice only deletes more.
///
/// # Errors
/// The journal's.
pub(crate) fn share_prefixes(
    journal: &Journal,
    partition: &dyn Partition,
    scopes: &[String],
) -> Result<()> {
    if !partition.keys_move() || scopes.len() < 2 {
        return Ok(());
    }
    let mut recorded: Vec<Vec<PendingOp<'static>>> = Vec::with_capacity(scopes.len());
    for scope in scopes {
        let ops = journal.read(scope)?;
        recorded.push(
            ops.into_iter()
                .map(|(_, op)| op)
                .filter(|op| !matches!(op, PendingOp::Delete(_)))
                .collect(),
        );
    }
    for (to, scope) in scopes.iter().enumerate() {
        let mut copies: Vec<PendingOp<'static>> = Vec::new();
        for (from, ops) in recorded.iter().enumerate() {
            for op in ops {
                if from != to
                    && recorded.get(to).is_some_and(|mine| !mine.contains(op))
                    && !copies.contains(op)
                {
                    copies.push(op.clone());
                }
            }
        }
        if !copies.is_empty() {
            journal.append(scope, &copies)?;
            tracing::info!(
                scope = %scope,
                entries = copies.len(),
                "prefix invalidations recorded for another server of the cluster copied here (a key resharded since may be here)"
            );
        }
    }
    Ok(())
}

impl PerScope {
    /// After a write in scope `from` that did not reach its server (recorded there): a key the
    /// partition now places in another scope moved there meanwhile (a Redis Cluster's
    /// resharding at that very instant, its check that `from` had nothing recorded made just
    /// before this write recorded). The key's delete is recorded in the scope that holds it
    /// now too, and that scope marked down, so that it replays the record before it reads the
    /// key from the server again. A write that reached the server makes the other scopes' open
    /// outages forget its keys ([`PerScope::forget_in_other_scopes`]).
    pub(crate) fn follow_moves(&self, from: usize, keys: &[&str]) {
        let Some(old) = self.scopes.get(from) else {
            return;
        };
        if old.resilient.shared.breaker.is_up() {
            self.forget_in_other_scopes(from, keys);
            return;
        }
        for (to, scope) in self.scopes.iter().enumerate() {
            let moved: Vec<PendingOp> = keys
                .iter()
                .filter(|k| to != from && self.routing.index_within_call(k) == to)
                .map(|k| PendingOp::Delete(std::borrow::Cow::Borrowed(*k)))
                .collect();
            if moved.is_empty() {
                continue;
            }
            let s = &scope.resilient.shared;
            if let Err(e) = s.journal.append(&s.cfg.scope, &moved) {
                tracing::warn!(error = %e, "cannot record a write for the scope its key moved to");
            }
            let cause = moved_here(self.name, moved.len(), &old.label);
            crate::backend::resilience::Shared::failed(s, true, &cause);
        }
    }

    /// A keyed write served by scope `from`'s server, on a partition whose keys move between
    /// scopes (a Redis Cluster's resharding): the other scopes' open outages forget the keys.
    /// A process on the other side of the resharding still places a key in its old scope and,
    /// that scope down for it, would otherwise go on serving what it (or another process)
    /// wrote to that scope's fallback entries, older than this write, until that outage ends.
    /// One load of the mapped outage marker when no outage is open.
    fn forget_in_other_scopes(&self, from: usize, keys: &[&str]) {
        if !self.routing.keys_move() {
            return;
        }
        for (i, scope) in self.scopes.iter().enumerate() {
            if i != from {
                scope.resilient.shared.forget_in_open_outages(|| {
                    crate::backend::resilience::deletes(keys.iter().copied())
                });
            }
        }
    }
}

/// Why a scope is marked down by [`PerScope::follow_moves`]: `n` keys moved to it from the
/// scope labelled `from` while a write to them was recorded there.
pub(super) fn moved_here(backend: &'static str, n: usize, from: &str) -> Error {
    Error::Backend {
        backend,
        message: format!(
            "{n} key(s) moved here from {from} while a write to them was recorded there; \
             replaying before serving them"
        ),
        temporary: true,
        source: None,
    }
}
