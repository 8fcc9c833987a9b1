//! Invalidation epochs: what keeps a memoized result computed before an invalidation from being
//! served after it returned.
//!
//! Each cache (a [`crate::CacheManager`] and its clones) counts the invalidations made through
//! it (`delete`, `delete_many`, `invalidate_pattern`, `flush_all`, hence the generated
//! `<fn>_forget`, `<fn>_forget_all` and every `invalidate_on` mutation). A memoized call reads
//! the epoch when it starts, and:
//!
//! - it joins only a flight that started in its epoch or a newer one ([`super::flight`]): a
//!   caller that starts after an invalidation returned never waits for a result computed before;
//! - it stores its result only if no invalidation began since it started ([`Epochs::store`]).
//!   The check and the write are one step with respect to invalidations: an invalidation waits
//!   for the stores of older epochs in progress, so a store either lands before the
//!   invalidation removes it, or sees the new epoch and stores nothing.
//!
//! Stores never wait, and invalidations never wait for each other: only an invalidation waits,
//! for the older stores already writing (each bounded by the backend's timeout). Epochs are per
//! cache and per process: an invalidation through another manager, or another process, is not
//! seen here (as between any two processes, its results can cross).

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The invalidation epoch of one cache, and the memoized stores in progress.
///
/// A readers-writer lock would make invalidations exclusive of each other (or stores of each
/// other); what is needed is two groups that exclude each other only across epochs, which no
/// lock in std or a maintained crate offers, hence this mutex and condition variable.
#[derive(Debug, Default)]
pub(crate) struct Epochs {
    /// Invalidations begun so far. Read without the lock (every memoized call reads it, hits
    /// included); changed, and compared by stores, only under it.
    current: AtomicU64,
    state: Mutex<State>,
    /// Signalled when a store ends.
    stored: Condvar,
    /// Also signalled when a store ends, for the async face's invalidations, which wait
    /// without blocking a runtime worker (the store they wait for may run on that worker).
    #[cfg(feature = "async")]
    stored_async: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Stores writing now, by the epoch their call started in.
    writing: BTreeMap<u64, usize>,
}

impl Epochs {
    /// The current epoch: read when a memoized call starts.
    pub(crate) fn current(&self) -> u64 {
        self.current.load(Ordering::SeqCst)
    }

    /// Runs an invalidation: begins a new epoch, waits until no store of an older epoch is
    /// writing (it would otherwise land after `op`), then runs `op`.
    pub(crate) fn invalidate<T>(&self, op: impl FnOnce() -> T) -> T {
        {
            let mut st = lock(&self.state);
            let mine = self.current.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
            while st.writing.first_key_value().is_some_and(|(e, _)| *e < mine) {
                st = self.stored.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        }
        op()
    }

    /// Runs `write` (a memoized call's store) if no invalidation began since `epoch`; `None`
    /// (nothing written) if one did.
    pub(crate) fn store<T>(&self, epoch: u64, write: impl FnOnce() -> T) -> Option<T> {
        let _writing = begin_store(self, epoch)?;
        Some(write())
    }

    /// [`Epochs::invalidate`] for the async face: the wait for older stores is a wait on a
    /// notification, never a blocked worker. Dropped before `op` starts, the new epoch stays
    /// begun (stores of older epochs write nothing), which is the safe side.
    #[cfg(feature = "async")]
    pub(crate) async fn invalidate_async<F: std::future::Future>(&self, op: F) -> F::Output {
        let mine = {
            let _st = lock(&self.state);
            self.current.fetch_add(1, Ordering::SeqCst).wrapping_add(1)
        };
        loop {
            let notified = self.stored_async.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so that a store ending in between wakes us.
            notified.as_mut().enable();
            let older = lock(&self.state)
                .writing
                .first_key_value()
                .is_some_and(|(e, _)| *e < mine);
            if !older {
                break;
            }
            notified.await;
        }
        op.await
    }

    /// [`Epochs::store`] for the async face: `write` runs (and is awaited) if no invalidation
    /// began since `epoch`; `None` (nothing written) if one did.
    ///
    /// The write runs as a task of its own that holds the store's registration until the write
    /// has finished, and this future awaits that task. A caller's future dropped mid-store (a
    /// timeout, `select!`, an aborted task) therefore ends nothing early: a write already
    /// handed to the blocking pool, or to a socket, keeps running, and so does the
    /// registration, so an invalidation begun after the drop still waits for it (the guard in
    /// the caller's future alone would let the invalidation's delete commit first and the
    /// orphaned write after it: a stale entry). Outside a tokio runtime the write runs in this
    /// future (the blocking pool is not used then either, see
    /// [`offload`](crate::aio::backend::offload)); `epochs` is an owned handle on the cache's
    /// epochs, for the task.
    #[cfg(feature = "async")]
    pub(crate) async fn store_async<E, F, T>(
        epochs: E,
        epoch: u64,
        write: F,
    ) -> Option<crate::error::Result<T>>
    where
        E: Deref<Target = Epochs> + Send + 'static,
        F: std::future::Future<Output = crate::error::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let writing = begin_store(epochs, epoch)?;
        let task = async move {
            let r = write.await;
            drop(writing);
            r
        };
        Some(match tokio::runtime::Handle::try_current() {
            Ok(h) => h.spawn(task).await.unwrap_or_else(|e| {
                Err(crate::error::Error::Backend {
                    backend: "memo",
                    message: format!(
                        "the memoized store did not finish ({}): is the runtime shutting down?",
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
            Err(_) => task.await,
        })
    }
}

/// Registers a store of `epoch` unless an invalidation began since; it ends when the guard is
/// dropped. `epochs` is a reference (the sync face) or an owned handle (the async face's store
/// task, which may outlive its caller).
fn begin_store<E: Deref<Target = Epochs>>(epochs: E, epoch: u64) -> Option<Writing<E>> {
    {
        let mut st = lock(&epochs.state);
        if epochs.current.load(Ordering::SeqCst) != epoch {
            return None;
        }
        *st.writing.entry(epoch).or_insert(0) += 1;
    }
    Some(Writing { epochs, epoch })
}

/// A store in progress; ends (and wakes waiting invalidations) when dropped, on unwinding too.
struct Writing<E: Deref<Target = Epochs>> {
    epochs: E,
    epoch: u64,
}

impl<E: Deref<Target = Epochs>> Drop for Writing<E> {
    fn drop(&mut self) {
        let mut st = lock(&self.epochs.state);
        if let Some(n) = st.writing.get_mut(&self.epoch) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.writing.remove(&self.epoch);
            }
        }
        drop(st);
        self.epochs.stored.notify_all();
        #[cfg(feature = "async")]
        self.epochs.stored_async.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier, mpsc};

    #[test]
    fn a_store_of_an_older_epoch_writes_nothing() {
        let e = Epochs::default();
        let start = e.current();
        assert_eq!(e.store(start, || 1), Some(1));
        assert!(e.invalidate(|| true));
        assert_eq!(e.store(start, || 2), None);
        assert_eq!(e.store(e.current(), || 3), Some(3));
    }

    #[test]
    fn an_invalidation_waits_for_older_stores_writing() {
        let e = Arc::new(Epochs::default());
        let start = e.current();
        let (writing, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let (tx, rx) = mpsc::channel();
        let store = {
            let (e, writing, release, tx) =
                (e.clone(), writing.clone(), release.clone(), tx.clone());
            std::thread::spawn(move || {
                e.store(start, || {
                    writing.wait();
                    release.wait();
                    tx.send("stored").unwrap();
                })
            })
        };
        writing.wait();
        let inv = {
            let e = e.clone();
            std::thread::spawn(move || e.invalidate(|| tx.send("invalidated").unwrap()))
        };
        // A store that starts now, in the old epoch, writes nothing; one of the new epoch
        // writes without waiting for anything.
        while e.current() == start {
            std::thread::yield_now();
        }
        assert_eq!(e.store(start, || ()), None);
        assert_eq!(e.store(e.current(), || 5), Some(5));
        release.wait();
        store.join().unwrap();
        inv.join().unwrap();
        let order: Vec<_> = rx.try_iter().collect();
        assert_eq!(order, ["stored", "invalidated"]);
        assert!(e.invalidate(|| true), "nothing is left writing");
    }

    #[test]
    fn invalidations_do_not_wait_for_each_other_or_for_newer_stores() {
        let e = Epochs::default();
        let outer = e.current();
        e.invalidate(|| {
            // Another invalidation and a store of the new epoch, while this one runs.
            assert!(e.invalidate(|| true));
            assert_eq!(e.store(e.current(), || 1), Some(1));
            assert_eq!(e.store(outer, || 1), None);
        });
    }
}
