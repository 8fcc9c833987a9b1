//! The fallback as one outage sees it: every key under the outage's generation (`g<N>:`), so
//! that the processes of one outage share its entries and no later outage reads them. Clearing
//! a generation removes its entries only.
//!
//! Two rules keep what an open generation holds true for the processes that read it:
//! - **What the server forgets, the open outages forget**: a write or an invalidation that
//!   succeeds on the server (a process that is up) is applied to the entries of every open
//!   outage of its scope before the call returns ([`Shared::forget_in_open_outages`]), so a
//!   process that is down (or starts during the outage) does not go on reading a value the
//!   server no longer has. Likewise a write or an invalidation recorded during an outage is
//!   applied to every other open outage of the scope ([`Shared::forget_in_other_outages`]):
//!   processes can be in different generations for a while. The check is one read of a
//!   one-byte marker that says whether an outage may be open
//!   ([`super::journal::OUTAGE_MARKER`]), then, only then, one indexed query in the journal
//!   database, whose "none of this scope's" is reused until an outage of any scope opens or
//!   closes (the marker's change counter).
//! - **No entry outlives its generation**: the process that ends an outage empties its entries,
//!   closes it, and empties them again; a process that writes into a generation checks, after
//!   the write, that it is still open, and removes what it wrote if not
//!   ([`Shared::drop_if_closed`]). Whatever the interleaving, an entry written into a closed
//!   generation is removed by one of the two.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{debug, warn};

use super::journal::PendingOp;
use super::{Fallback, Shared};
use crate::backend::{Backend, BackendStatus, Item};
use crate::error::Result;

impl Shared {
    /// The fallback entries outages are kept in, if any (`fallback = pickle`).
    fn outage_store(&self) -> Option<&Arc<dyn Backend>> {
        match &self.fallback {
            Fallback::Serve(f) if f.name() != "none" => Some(f),
            _ => None,
        }
    }

    /// A write or an invalidation succeeded on the server: applies what it invalidates
    /// (`record`, called only when an outage is open) to the entries of every open outage of
    /// this scope. A failure is logged: the call itself succeeded.
    pub(super) fn forget_in_open_outages<'k>(&self, record: impl FnOnce() -> Vec<PendingOp<'k>>) {
        if let Some((store, open)) = self.open_outages_but(0) {
            self.forget_in(store, &open, &record());
        }
    }

    /// A write or an invalidation was recorded and applied to generation `own`: applies what
    /// it invalidates to the other open outages of this scope too. Processes can be in
    /// different generations for a while (one whose outage was closed joins the next at its
    /// next probe; one that starts meanwhile joins that one at once): an invalidation recorded
    /// in one must not leave the other serving the value.
    pub(super) fn forget_in_other_outages(&self, own: i64, ops: &[PendingOp<'_>]) {
        if let Some((store, open)) = self.open_outages_but(own) {
            self.forget_in(store, &open, ops);
        }
    }

    /// The fallback store and the open outages of this scope other than `but`, when there are
    /// any (the marker first: one load of a mapped byte when none is open).
    ///
    /// When an outage of another scope is open, the answer "none of this scope's" is reused
    /// while the journal's outages stamp stays the same ([`Journal::outages_stamp`]): two
    /// atomic loads instead of a query per write.
    ///
    /// [`Journal::outages_stamp`]: super::journal::Journal::outages_stamp
    fn open_outages_but(&self, but: i64) -> Option<(&Arc<dyn Backend>, Vec<i64>)> {
        let store = self.outage_store()?;
        if !self.journal.may_have_open_outages() {
            return None;
        }
        // Loaded before the query (see `outages_stamp`).
        let stamp = self.journal.outages_stamp();
        if stamp.is_some_and(|s| s == self.none_open_at.load(Ordering::Acquire)) {
            return None;
        }
        match self.journal.open_outages(&self.cfg.scope) {
            Ok(mut open) => {
                if let (true, Some(s)) = (open.is_empty(), stamp) {
                    self.none_open_at.store(s, Ordering::Release);
                }
                open.retain(|&g| g != but);
                (!open.is_empty()).then_some((store, open))
            }
            Err(e) => {
                warn!(error = %e, "cannot read the open outages; a process in an outage may serve a value this call replaced until its outage ends");
                None
            }
        }
    }

    /// Applies `ops` to the entries of the outages `open`.
    fn forget_in(&self, store: &Arc<dyn Backend>, open: &[i64], ops: &[PendingOp<'_>]) {
        for &g in open {
            let view = GenerationView::new(store.clone(), g);
            for op in ops {
                if let Err(e) = op.apply(&view) {
                    warn!(error = %e, generation = g, "cannot apply an invalidation to an open outage's fallback entries");
                }
            }
        }
    }

    /// After a write into generation `g` of the fallback: if that outage was closed meanwhile
    /// (by another process that saw the server back), removes what the write put there
    /// (`ops`: what it recorded), so that nothing is left in a closed generation. When the
    /// journal cannot say, the write is removed too: a miss is always allowed.
    pub(super) fn drop_if_closed(&self, g: i64, ops: &[PendingOp<'_>]) {
        let Some(store) = self.outage_store() else {
            return;
        };
        if g == 0 || matches!(self.journal.is_open(&self.cfg.scope, g), Ok(true)) {
            return;
        }
        debug!(
            generation = g,
            "the outage was closed during a fallback write; its entries are removed"
        );
        let view = GenerationView::new(store.clone(), g);
        for op in ops {
            if let Err(e) = op.apply(&view) {
                warn!(error = %e, generation = g, "cannot remove a fallback entry of a closed outage (it is never read)");
            }
        }
    }
}

/// The fallback's entries of one outage generation.
#[derive(Debug)]
pub(crate) struct GenerationView {
    inner: Arc<dyn Backend>,
    prefix: String,
}

impl GenerationView {
    /// The entries of `generation` in `inner`.
    pub(crate) fn new(inner: Arc<dyn Backend>, generation: i64) -> Self {
        GenerationView {
            inner,
            prefix: prefix(generation),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// The key prefix of a generation's entries.
pub(crate) fn prefix(generation: i64) -> String {
    format!("g{generation}:")
}

impl Backend for GenerationView {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn get(&self, key: &str) -> Result<Option<Item>> {
        self.inner.get(&self.key(key))
    }

    fn get_expiring(&self, key: &str) -> Result<Option<(Item, crate::backend::Expiry)>> {
        self.inner.get_expiring(&self.key(key))
    }

    fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        self.inner.set(&self.key(key), item, ttl)
    }

    fn delete(&self, key: &str) -> Result<bool> {
        self.inner.delete(&self.key(key))
    }

    fn add(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<bool> {
        self.inner.add(&self.key(key), item, ttl)
    }

    fn incr(&self, key: &str, delta: i64, counter: &dyn crate::backend::Counter) -> Result<i64> {
        self.inner.incr(&self.key(key), delta, counter)
    }

    fn touch(&self, key: &str, ttl: Option<Duration>) -> Result<bool> {
        self.inner.touch(&self.key(key), ttl)
    }

    fn meta(&self, key: &str) -> Result<Option<crate::backend::EntryInfo>> {
        Ok(self.inner.meta(&self.key(key))?.map(|mut e| {
            e.key = key.to_owned();
            e
        }))
    }

    fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.inner.delete_prefix(&self.key(prefix))
    }

    /// Forwarded as one call, each prefix within the generation.
    fn delete_prefixes(&self, prefixes: &[&str]) -> Result<u64> {
        let owned: Vec<String> = prefixes.iter().map(|p| self.key(p)).collect();
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        self.inner.delete_prefixes(&refs)
    }

    fn clear(&self) -> Result<()> {
        self.inner.delete_prefix(&self.prefix).map(drop)
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        let owned: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        self.inner.get_many(&refs)
    }

    fn set_many(&self, items: &[(&str, Item)], ttl: Option<Duration>) -> Result<()> {
        let keys: Vec<String> = items.iter().map(|(k, _)| self.key(k)).collect();
        let refs: Vec<(&str, Item)> = keys
            .iter()
            .zip(items)
            .map(|(k, (_, v))| (k.as_str(), v.clone()))
            .collect();
        self.inner.set_many(&refs, ttl)
    }

    fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let owned: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        self.inner.delete_many(&refs)
    }

    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool> {
        self.inner.compare_and_delete(&self.key(key), expected)
    }

    fn set_if_lease(
        &self,
        key: &str,
        item: &Item,
        ttl: Option<Duration>,
        lease: &str,
        token: &[u8],
    ) -> Result<bool> {
        self.inner
            .set_if_lease(&self.key(key), item, ttl, &self.key(lease), token)
    }

    fn take_lease(&self, lease: &str, item: &Item, ttl: Option<Duration>) -> Result<bool> {
        self.inner.take_lease(&self.key(lease), item, ttl)
    }

    fn release_lease(&self, lease: &str, token: &[u8]) -> Result<bool> {
        self.inner.release_lease(&self.key(lease), token)
    }

    fn extend_lease(&self, lease: &str, token: &[u8], ttl: Duration) -> Result<bool> {
        self.inner.extend_lease(&self.key(lease), token, ttl)
    }

    fn ping(&self) -> Result<BackendStatus> {
        self.inner.ping()
    }
}
