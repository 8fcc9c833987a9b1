//! The async face of `get_or_set`: [`flow::Flow`]'s steps as awaits and timers, over
//! [`AsyncCacheManager`] and the task face's flight registry (`memo/flight_task.rs`).

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::flow::{self, Answer, Compute, Flow, Leased, Step};
use super::{Ask, Envelope, Held, Plan, Read, deadline, may_store, released, stored};
use crate::AsyncCacheManager;
use crate::memo::flight::Lead;
use crate::memo::flight_task::{self, TaskLatch, TaskTurn};

async fn read<T: DeserializeOwned>(cache: &AsyncCacheManager, key: &str, plan: &Plan) -> Read<T> {
    let r = if plan.enveloped {
        cache
            .get::<Envelope<T>>(key)
            .await
            .map(|hit| plan.open(hit))
    } else {
        cache
            .get::<T>(key)
            .await
            .map(|hit| hit.map(|v| (v, false, 0)))
    };
    Read::of(r)
}

/// A lease this task holds. [`Lease::release`] releases it; dropped without that (the
/// caller's future was dropped, or `compute` panicked) it is released by a task spawned on the
/// current tokio runtime (none: it expires after `lease_ttl`).
struct Lease {
    cache: AsyncCacheManager,
    key: String,
    held: Held,
    released: bool,
}

impl Lease {
    async fn release(mut self) {
        release(&self.cache, &self.key, &self.held.token).await;
        // Only once it is done: a future dropped during the release leaves the lease to `Drop`,
        // which releases it from a spawned task.
        self.released = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(
                "ddf: get_or_set's lease was dropped outside a tokio runtime; it expires by lease_ttl"
            );
            return;
        };
        let cache = self.cache.clone();
        let key = std::mem::take(&mut self.key);
        let token = std::mem::take(&mut self.held.token);
        drop(rt.spawn(async move { release(&cache, &key, &token).await }));
    }
}

async fn acquire(cache: &AsyncCacheManager, key: &str, plan: &Plan) -> Leased<Lease> {
    let ask = Ask::new(key);
    let r = (cache.lease_backend())
        .take_lease(&ask.key, &ask.item, Some(plan.lease_ttl))
        .await;
    match ask.answer(r, plan) {
        Leased::Held(held) => Leased::Held(Lease {
            cache: cache.clone(),
            key: key.to_owned(),
            held,
            released: false,
        }),
        Leased::Busy => Leased::Busy,
        Leased::Failed => Leased::Failed,
    }
}

async fn release(cache: &AsyncCacheManager, key: &str, token: &[u8]) {
    let lease = Plan::lease_key(key);
    let r = (cache.lease_backend()).release_lease(&lease, token).await;
    released(key, r);
}

/// A store in progress (either shape of value).
type Writing = std::pin::Pin<Box<dyn Future<Output = Option<crate::Result<bool>>> + Send>>;

/// One write of `get_or_set` (as `sync::put`): under a lease, fenced on the server where the
/// backend can.
fn put<V: Serialize + ?Sized>(
    cache: &AsyncCacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    held: Option<&Held>,
    v: &V,
) -> Writing {
    match held {
        Some(h) => Box::pin(cache.store_under_lease(
            epoch,
            key,
            v,
            plan.server_ttl,
            &Plan::lease_key(key),
            &h.token,
        )),
        None => {
            let w = cache.store_memoized(epoch, key, v, plan.server_ttl);
            Box::pin(async move { w.await.map(|r| r.map(|()| true)) })
        }
    }
}

/// As `sync::store`: not after an invalidation, not once the lease may have been taken over.
/// The value is encoded now (the returned future borrows nothing: a result that is not `Sync`
/// keeps the caller's future `Send`).
fn store<T: Serialize>(
    cache: &AsyncCacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    held: Option<&Held>,
    value: &T,
    delta: Duration,
) -> impl Future<Output = ()> + Send + 'static {
    let write = if !may_store(key, held) {
        None
    } else if plan.enveloped {
        let env = Envelope::new(value, plan.soft_expiry_ms(), delta);
        Some(put(cache, key, plan, epoch, held, &env))
    } else {
        Some(put(cache, key, plan, epoch, held, value))
    };
    let key = key.to_owned();
    async move {
        if let Some(write) = write {
            stored(&key, write.await);
        }
    }
}

async fn compute_and_store<T, E, F, Fut>(
    cache: &AsyncCacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    held: Option<&Held>,
    compute: F,
) -> Result<T, E>
where
    T: Serialize,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let computing = flight_task::leading(compute());
    let v = match held {
        Some(h) => with_heartbeat(cache, key, plan, h, computing).await?,
        None => computing.await?,
    };
    store(cache, key, plan, epoch, held, &v, start.elapsed()).await;
    Ok(v)
}

/// Awaits `computing` while extending the lease every `lease_ttl / 3` (as the thread face's
/// heartbeat, polled beside it: no task is spawned). The heartbeat stops when the lease is no
/// longer ours or the backend cannot extend one.
async fn with_heartbeat<R>(
    cache: &AsyncCacheManager,
    key: &str,
    plan: &Plan,
    held: &Held,
    computing: impl Future<Output = R>,
) -> R {
    use std::task::Poll;
    // Timers need a tokio runtime; polled by another executor, no heartbeat.
    if deadline(plan.lease_ttl).is_none() || tokio::runtime::Handle::try_current().is_err() {
        return computing.await;
    }
    let every = plan.lease_ttl / 3;
    let lease = Plan::lease_key(key);
    let beat = async {
        loop {
            tokio::time::sleep(every).await;
            let sent = Instant::now();
            let r = (cache.lease_backend())
                .extend_lease(&lease, &held.token, plan.lease_ttl)
                .await;
            if !held.beat(sent, plan, r) {
                return;
            }
        }
    };
    let mut computing = std::pin::pin!(computing);
    let mut beat = std::pin::pin!(beat);
    let mut beating = true;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = computing.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if beating && beat.as_mut().poll(cx).is_ready() {
            beating = false;
        }
        Poll::Pending
    })
    .await
}

/// `get_or_set` of [`AsyncCacheManager`]: `ttl` has passed the TTL rule.
pub(crate) async fn get_or_set<T, E, F, Fut>(
    cache: &AsyncCacheManager,
    key: &str,
    plan: &Plan,
    compute: F,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    if !cache.is_enabled() {
        return compute().await;
    }
    let epoch = cache.epochs().current();
    let flight_key = Plan::lease_key(key);
    let (mut flow, mut step) = Flow::new(key, plan.lock_timeout);
    let mut landings = 0;
    let mut lead: Option<Lead<'static, TaskLatch>> = None;
    let mut lease: Option<Lease> = None;
    let how = loop {
        let answer = match step {
            Step::Read => {
                landings = flight_task::landings();
                Answer::Read(read(cache, key, plan).await)
            }
            Step::Join => Answer::Turn(
                match flight_task::take_turn(cache.id(), &flight_key, epoch, landings).await {
                    TaskTurn::Lead(l) => {
                        lead = Some(l);
                        flow::Turn::Lead
                    }
                    TaskTurn::Landed(_) => flow::Turn::Landed,
                    TaskTurn::Bypass => flow::Turn::Bypass,
                },
            ),
            Step::TryLead => {
                lead = flight_task::try_lead(cache.id(), &flight_key, epoch);
                Answer::Led(lead.is_some())
            }
            Step::Lease => Answer::Lease(acquire(cache, key, plan).await.keep(|l| lease = Some(l))),
            Step::Wait(d) => {
                tokio::time::sleep(d).await;
                Answer::Waited
            }
            Step::Return(v) => {
                end(lease, lead).await;
                return Ok(v);
            }
            Step::Compute(how) => break how,
        };
        step = flow.next(answer);
    };
    match how {
        Compute::Alone => {
            end(lease, lead).await;
            compute().await
        }
        Compute::Store => {
            let held = lease.as_ref().map(|l| &l.held);
            let r = compute_and_store(cache, key, plan, epoch, held, compute).await;
            let r = flow.computed(r);
            end(lease, lead).await;
            r
        }
    }
}

/// Releases the lease if held, then ends the flight if led (this process's next leader finds
/// the lease free); dropping the lead opens the flight.
async fn end(lease: Option<Lease>, lead: Option<Lead<'static, TaskLatch>>) {
    if let Some(lease) = lease {
        lease.release().await;
    }
    if let Some(mut lead) = lead {
        lead.mark_finished();
    }
}
