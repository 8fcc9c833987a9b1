//! The thread face of `get_or_set`: [`flow::Flow`]'s steps as blocking calls and sleeps, over
//! [`CacheManager`] and the thread face's flight registry (`memo/flight.rs`).

use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::flow::{self, Answer, Compute, Flow, Leased, Step};
use super::{Ask, Envelope, Held, Plan, Read, deadline, may_store, released, stored};
use crate::CacheManager;
use crate::memo::flight::{self, ThreadLead, Turn};

/// What a read found.
fn read<T: DeserializeOwned>(cache: &CacheManager, key: &str, plan: &Plan) -> Read<T> {
    let r = if plan.enveloped {
        cache.get::<Envelope<T>>(key).map(|hit| plan.open(hit))
    } else {
        cache.get::<T>(key).map(|hit| hit.map(|v| (v, false, 0)))
    };
    Read::of(r)
}

/// A lease this caller holds: released (compare-and-delete of its token) when dropped, also
/// when `compute` panics, so that the others do not wait out `lease_ttl`.
struct Lease<'a> {
    cache: &'a CacheManager,
    key: &'a str,
    held: Held,
}

impl Drop for Lease<'_> {
    /// Never panics (also while unwinding): failures are logged.
    fn drop(&mut self) {
        let lease = Plan::lease_key(self.key);
        let r = (self.cache).on_backend(|b| b.release_lease(&lease, &self.held.token));
        released(self.key, r);
    }
}

fn acquire<'a>(cache: &'a CacheManager, key: &'a str, plan: &Plan) -> Leased<Lease<'a>> {
    let ask = Ask::new(key);
    let r = cache.on_backend(|b| b.take_lease(&ask.key, &ask.item, Some(plan.lease_ttl)));
    match ask.answer(r, plan) {
        Leased::Held(held) => Leased::Held(Lease { cache, key, held }),
        Leased::Busy => Leased::Busy,
        Leased::Failed => Leased::Failed,
    }
}

/// Stores a computed value: unless an invalidation began since the call started (`epoch`), or
/// the lease it was computed under may have been taken over (`held` no longer certainly ours).
/// Errors fail open (logged).
fn store<T: Serialize>(
    cache: &CacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    held: Option<&Held>,
    value: &T,
    delta: Duration,
) {
    if !may_store(key, held) {
        return;
    }
    let write = || {
        if plan.enveloped {
            put(
                cache,
                key,
                plan,
                held,
                &Envelope::new(value, plan.soft_expiry_ms(), delta),
            )
        } else {
            put(cache, key, plan, held, value)
        }
    };
    stored(key, cache.epochs().store(epoch, write));
}

/// One write of `get_or_set`: under a lease, fenced on the server where the backend can (Redis
/// outside a Cluster, the file backend): stored only while the lease still holds our token.
/// `Ok(false)`: not stored.
fn put<V: Serialize + ?Sized>(
    cache: &CacheManager,
    key: &str,
    plan: &Plan,
    held: Option<&Held>,
    v: &V,
) -> crate::Result<bool> {
    match held {
        Some(h) => cache.set_if_lease(key, v, plan.server_ttl, &Plan::lease_key(key), &h.token),
        None => cache.set(key, v, plan.server_ttl).map(|()| true),
    }
}

/// Computes, stores (see [`store`]), returns.
fn compute_and_store<T, E, F>(
    cache: &CacheManager,
    key: &str,
    plan: &Plan,
    epoch: u64,
    held: Option<&Held>,
    compute: F,
) -> Result<T, E>
where
    T: Serialize,
    F: FnOnce() -> Result<T, E>,
{
    let start = Instant::now();
    let v = match held {
        Some(h) => with_heartbeat(cache, key, plan, h, compute)?,
        None => compute()?,
    };
    store(cache, key, plan, epoch, held, &v, start.elapsed());
    Ok(v)
}

/// Runs `compute` while a scoped thread extends the lease every `lease_ttl / 3` (compare-and-
/// expire of our token), so that a computation longer than `lease_ttl` is neither taken over
/// nor kept from storing. The heartbeat stops when `compute` returns or unwinds, when the
/// lease is no longer ours, or on a backend that cannot extend one (Memcached: there the
/// limit stays, docs/memoize.md).
fn with_heartbeat<R>(
    cache: &CacheManager,
    key: &str,
    plan: &Plan,
    held: &Held,
    compute: impl FnOnce() -> R,
) -> R {
    let Some(every) = deadline(plan.lease_ttl).map(|_| plan.lease_ttl / 3) else {
        return compute();
    };
    let stop = Stop::default();
    std::thread::scope(|s| {
        s.spawn(|| {
            let lease = Plan::lease_key(key);
            while !stop.wait(every) {
                let sent = Instant::now();
                let r = cache.on_backend(|b| b.extend_lease(&lease, &held.token, plan.lease_ttl));
                if !held.beat(sent, plan, r) {
                    return;
                }
            }
        });
        // Stops the heartbeat also when `compute` unwinds (the scope joins it).
        let _stopping = Stopping(&stop);
        compute()
    })
}

/// The heartbeat's stop signal.
#[derive(Default)]
struct Stop {
    stopped: std::sync::Mutex<bool>,
    wake: std::sync::Condvar,
}

impl Stop {
    /// Waits up to `every`; whether the heartbeat must stop.
    fn wait(&self, every: Duration) -> bool {
        let stopped = self
            .stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (stopped, _) = self
            .wake
            .wait_timeout_while(stopped, every, |s| !*s)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *stopped
    }
}

struct Stopping<'a>(&'a Stop);

impl Drop for Stopping<'_> {
    fn drop(&mut self) {
        *self
            .0
            .stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.0.wake.notify_all();
    }
}

/// `get_or_set` and `try_get_or_set` of [`CacheManager`]: `ttl` has passed the TTL rule.
pub(crate) fn get_or_set<T, E, F>(
    cache: &CacheManager,
    key: &str,
    plan: &Plan,
    compute: F,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T, E>,
{
    if !cache.is_enabled() {
        return compute();
    }
    // Read before the lookup, as memoization does: a value computed before an invalidation
    // that returns after this is not stored.
    let epoch = cache.epochs().current();
    let flight_key = Plan::lease_key(key);
    let (mut flow, mut step) = Flow::new(key, plan.lock_timeout);
    let mut landings = 0;
    let mut lead: Option<ThreadLead> = None;
    let mut lease: Option<Lease<'_>> = None;
    // The lease is released before the flight ends: this process's next leader finds it free.
    let end = |lease: Option<Lease<'_>>, lead: Option<ThreadLead>| {
        drop(lease);
        if let Some(lead) = lead {
            lead.finish();
        }
    };
    let how = loop {
        let answer = match step {
            Step::Read => {
                landings = flight::landings();
                Answer::Read(read(cache, key, plan))
            }
            Step::Join => Answer::Turn(
                match flight::take_turn(cache.id(), &flight_key, epoch, landings) {
                    Turn::Lead(l) => {
                        lead = Some(l);
                        flow::Turn::Lead
                    }
                    Turn::Landed(_) => flow::Turn::Landed,
                    Turn::Bypass => flow::Turn::Bypass,
                },
            ),
            Step::TryLead => {
                lead = flight::try_lead(cache.id(), &flight_key, epoch);
                Answer::Led(lead.is_some())
            }
            Step::Lease => Answer::Lease(acquire(cache, key, plan).keep(|l| lease = Some(l))),
            Step::Wait(d) => {
                std::thread::sleep(d);
                Answer::Waited
            }
            Step::Return(v) => {
                end(lease, lead);
                return Ok(v);
            }
            Step::Compute(how) => break how,
        };
        step = flow.next(answer);
    };
    match how {
        Compute::Alone => {
            end(lease, lead);
            compute()
        }
        Compute::Store => {
            let held = lease.as_ref().map(|l| &l.held);
            let r = flow.computed(compute_and_store(cache, key, plan, epoch, held, compute));
            end(lease, lead);
            r
        }
    }
}
