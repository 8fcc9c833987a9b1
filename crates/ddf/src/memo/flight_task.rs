//! The task face of single-flight (feature `async`): the registry of [`super::flight`] with a
//! latch tasks await, and the task face's rule against wait cycles.
//!
//! The registry's rules hold as on the thread face: one leader per key and epoch per cache, a
//! caller that started after an invalidation never joins an older flight, and a leader's
//! [`Lead`] ends its flight when dropped. A task's future can be dropped at any `await`
//! (a timeout, `select!`, an aborted task): dropping it drops the lead, the flight lands
//! [`Landing::Abandoned`], and one waiting caller takes over, so no waiter hangs. A panic in the
//! body unwinds through the lead the same way.
//!
//! No wait cycle: a future that leads a flight never awaits another one (a nested memoized call
//! that finds its key in flight computes directly: [`TaskTurn::Bypass`]). What marks "leads a
//! flight" is a task-local set around the leader's computation ([`leading`]), not a
//! thread-local: a task moves between threads, and a thread runs many tasks.

use std::sync::LazyLock;

use tokio::sync::watch;

use super::flight::{Flights, Join, Landing, Latch, Lead};

/// A latch for tasks: the landing, over a `watch` channel (its value is what any waiter reads,
/// however late it subscribes, and waiting on it is cancel-safe).
#[derive(Debug)]
pub(crate) struct TaskLatch {
    landing: watch::Sender<Option<Landing>>,
}

impl Latch for TaskLatch {
    fn new() -> Self {
        TaskLatch {
            landing: watch::Sender::new(None),
        }
    }

    fn open(&self, landing: Landing) {
        self.landing.send_replace(Some(landing));
    }
}

impl TaskLatch {
    /// Waits until the flight ends.
    pub(crate) async fn wait(&self) -> Landing {
        let mut rx = self.landing.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(l) => (*l).unwrap_or(Landing::Abandoned),
            // The sender lives in `self`: it cannot be closed while we wait.
            Err(_) => Landing::Abandoned,
        }
    }
}

static TASK_FLIGHTS: LazyLock<Flights<TaskLatch>> = LazyLock::new(Flights::new);

tokio::task_local! {
    /// How many flights the current computation runs inside of (set by [`leading`]).
    static LEADING: usize;
}

/// [`Flights::landings`] of the task face's registry: read before looking a key up.
pub(crate) fn landings() -> u64 {
    TASK_FLIGHTS.landings()
}

/// Flights in progress in cache `cache` on the task face.
#[cfg(test)]
pub(crate) fn in_flight_of(cache: u64) -> usize {
    TASK_FLIGHTS.in_flight_of(cache)
}

/// What a task that missed a key does next.
pub(crate) enum TaskTurn {
    /// Compute (inside [`leading`]) and store, then mark the lead finished.
    Lead(Lead<'static, TaskLatch>),
    /// Another caller's flight of this key ended.
    Landed(Landing),
    /// The key is in flight, and this computation runs inside a flight it leads: compute, do
    /// not wait.
    Bypass,
}

/// Leads the flight of `key` in cache `cache`, or awaits the one in progress if it started in
/// `epoch` or a newer one (unless this computation runs inside a lead: then
/// [`TaskTurn::Bypass`]). `seen`: [`landings`] before the caller's lookup.
pub(crate) async fn take_turn(cache: u64, key: &str, epoch: u64, seen: u64) -> TaskTurn {
    match TASK_FLIGHTS.join(cache, key, epoch, seen) {
        Join::Lead(lead) => TaskTurn::Lead(lead),
        Join::Wait(_) if LEADING.try_with(|n| *n).unwrap_or(0) > 0 => TaskTurn::Bypass,
        Join::Wait(latch) => TaskTurn::Landed(latch.wait().await),
    }
}

/// Leads the flight of `key` in cache `cache` if none of `epoch` or a newer one is in progress;
/// `None` otherwise, without waiting (a stale-while-revalidate refresh).
pub(crate) fn try_lead(cache: u64, key: &str, epoch: u64) -> Option<Lead<'static, TaskLatch>> {
    match TASK_FLIGHTS.join(cache, key, epoch, landings()) {
        Join::Lead(lead) => Some(lead),
        Join::Wait(_) => None,
    }
}

/// Runs a leader's computation marked as leading, so that a memoized call nested in it never
/// awaits another flight.
pub(crate) async fn leading<F: Future>(compute: F) -> F::Output {
    let depth = LEADING.try_with(|n| *n).unwrap_or(0);
    LEADING.scope(depth.saturating_add(1), compute).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_dropped_leader_hands_over_to_one_waiter() {
        runtime().block_on(async {
            let cache = u64::MAX - 10;
            let TaskTurn::Lead(lead) = take_turn(cache, "k", 0, 0).await else {
                panic!("leads")
            };
            let leads = Arc::new(AtomicUsize::new(0));
            let waiters: Vec<_> = (0..4)
                .map(|_| {
                    let leads = leads.clone();
                    tokio::spawn(async move {
                        loop {
                            match take_turn(cache, "k", 0, 0).await {
                                TaskTurn::Lead(mut l) => {
                                    leads.fetch_add(1, Ordering::SeqCst);
                                    tokio::task::yield_now().await;
                                    l.mark_finished();
                                    return None;
                                }
                                TaskTurn::Landed(Landing::Abandoned) => continue,
                                TaskTurn::Landed(l) => return Some(l),
                                TaskTurn::Bypass => panic!("no waiter leads"),
                            }
                        }
                    })
                })
                .collect();
            // Let the waiters queue, then drop the lead as a dropped future does.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            drop(lead);
            let mut landed = 0;
            for w in waiters {
                if let Some(l) = w.await.unwrap() {
                    assert_eq!(l, Landing::Finished);
                    landed += 1;
                }
            }
            let led = leads.load(Ordering::SeqCst);
            assert!(led >= 1, "a waiter took over");
            assert_eq!(led + landed, 4);
        });
    }

    #[test]
    fn an_aborted_leading_task_releases_its_waiters() {
        runtime().block_on(async {
            let cache = u64::MAX - 11;
            let (led, lead_started) = tokio::sync::oneshot::channel();
            let leader = tokio::spawn(async move {
                let TaskTurn::Lead(_lead) = take_turn(cache, "k", 0, 0).await else {
                    panic!("leads")
                };
                let _ = led.send(());
                std::future::pending::<()>().await;
            });
            lead_started.await.unwrap();
            let waiter = tokio::spawn(async move { take_turn(cache, "k", 0, 0).await });
            tokio::task::yield_now().await;
            leader.abort();
            assert!(leader.await.unwrap_err().is_cancelled());
            match waiter.await.unwrap() {
                TaskTurn::Landed(l) => assert_eq!(l, Landing::Abandoned),
                TaskTurn::Lead(_) => {} // it joined after the abort: it leads
                TaskTurn::Bypass => panic!("the waiter leads nothing"),
            }
        });
    }

    #[test]
    fn a_leading_computation_never_waits() {
        runtime().block_on(async {
            let cache = u64::MAX - 12;
            let TaskTurn::Lead(other) = take_turn(cache, "b", 0, 0).await else {
                panic!("leads b")
            };
            let TaskTurn::Lead(outer) = take_turn(cache, "a", 0, 0).await else {
                panic!("leads a")
            };
            let nested = leading(async { take_turn(cache, "b", 0, 0).await }).await;
            assert!(matches!(nested, TaskTurn::Bypass));
            drop((outer, other));
            // Outside a lead, a caller waits (here the flight is over: it leads).
            assert!(matches!(
                take_turn(cache, "b", 0, 0).await,
                TaskTurn::Lead(_)
            ));
        });
    }

    #[test]
    fn a_late_waiter_reads_the_landing() {
        runtime().block_on(async {
            let latch = TaskLatch::new();
            latch.open(Landing::Finished);
            assert_eq!(latch.wait().await, Landing::Finished);
        });
    }
}
