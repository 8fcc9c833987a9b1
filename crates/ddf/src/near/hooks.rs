//! The tracking channel's knobs for ddf's own tests and measurements (no stability promise):
//! planted faults and delays, and the catch-up switch.

#[cfg(feature = "testing")]
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(feature = "testing")]
use std::time::Duration;

/// Planted faults: per namespace, how many invalidated keys the tracking threads still ignore.
#[cfg(feature = "testing")]
static DROPS: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

/// A planted fault for ddf's own tests (no stability promise): the tracking threads of the near
/// caches of `namespace` ignore the next `n` keys the server says changed, as if those
/// invalidations were lost, so that a test can show its checker catches a lost invalidation.
///
/// ```
/// ddf::testing::internals::drop_invalidations("fault:", 1);
/// ddf::testing::internals::drop_invalidations("fault:", 0);
/// ```
#[cfg(feature = "testing")]
pub fn drop_invalidations(namespace: &str, n: u64) {
    let mut d = DROPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    d.retain(|(ns, _)| ns != namespace);
    if n > 0 {
        d.push((namespace.to_owned(), n));
    }
}

/// Planted delays: per namespace, how long the tracking threads sleep once a session is lost,
/// before they suspend the near cache and tear the session down.
#[cfg(feature = "testing")]
static TEARDOWN_PAUSES: Mutex<Vec<(String, Duration)>> = Mutex::new(Vec::new());

/// A planted delay for ddf's own tests (no stability promise): the tracking threads of the near
/// caches of `namespace` sleep `d` once they found their session lost, before they suspend the
/// near cache (as a thread that waits for a core would), so that a test can show no hit is
/// served from the near cache in that gap. `Duration::ZERO` removes it.
///
/// ```
/// use std::time::Duration;
/// ddf::testing::internals::pause_teardown("fault:", Duration::from_millis(50));
/// ddf::testing::internals::pause_teardown("fault:", Duration::ZERO);
/// ```
#[cfg(feature = "testing")]
pub fn pause_teardown(namespace: &str, d: Duration) {
    let mut p = TEARDOWN_PAUSES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    p.retain(|(ns, _)| ns != namespace);
    if !d.is_zero() {
        p.push((namespace.to_owned(), d));
    }
}

/// Sleeps the planted delay of `namespace`, if any (see [`pause_teardown`]).
#[cfg(feature = "testing")]
pub(super) fn teardown_pause(namespace: &str) {
    let d = TEARDOWN_PAUSES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .find(|(ns, _)| ns == namespace)
        .map(|(_, d)| *d);
    if let Some(d) = d {
        std::thread::sleep(d);
    }
}

/// Planted blindness: the namespaces whose tracking threads ignore the `CLUSTER NODES` views
/// their heartbeats bring (a Redis Cluster's topology changes are not seen).
#[cfg(feature = "testing")]
static TOPOLOGY_IGNORED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// For ddf's own tests (no stability promise): the tracking threads of the near caches of
/// `namespace` on a Redis Cluster stop (`true`) or go back to (`false`) comparing the
/// `CLUSTER NODES` answers of their heartbeats with the topology their session tracks, so that
/// a test can show what holds without that check (a fill from a node the session does not
/// track is still refused).
///
/// ```
/// ddf::testing::internals::ignore_topology_changes("fault:", true);
/// ddf::testing::internals::ignore_topology_changes("fault:", false);
/// ```
#[cfg(feature = "testing")]
pub fn ignore_topology_changes(namespace: &str, on: bool) {
    let mut t = TOPOLOGY_IGNORED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    t.retain(|ns| ns != namespace);
    if on {
        t.push(namespace.to_owned());
    }
}

/// Whether the tracking threads of `namespace` ignore topology changes (see
/// [`ignore_topology_changes`]).
#[cfg(feature = "testing")]
pub(super) fn topology_ignored(namespace: &str) -> bool {
    TOPOLOGY_IGNORED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .any(|ns| ns == namespace)
}

/// Whether near caches made from now on drain the tracking socket on a hit (see
/// `Near::catch_up`); off only to measure the rule without it.
static NO_CATCH_UP: AtomicBool = AtomicBool::new(false);

pub(super) fn catching_up() -> bool {
    !NO_CATCH_UP.load(Ordering::Relaxed)
}

/// For ddf's own measurements (no stability promise): near caches made after
/// `without_catch_up(true)` leave the tracking socket to the tracking thread alone (the
/// behaviour before the strict rule's catch-up), so a benchmark or a test can show both in one
/// run.
///
/// ```
/// ddf::testing::internals::without_catch_up(true);
/// ddf::testing::internals::without_catch_up(false);
/// ```
#[cfg(feature = "testing")]
pub fn without_catch_up(off: bool) {
    NO_CATCH_UP.store(off, Ordering::Relaxed);
}

/// Whether the tracking thread of `namespace` must ignore this invalidated key (a planted
/// fault, see [`drop_invalidations`]).
#[cfg(feature = "testing")]
pub(super) fn dropped(namespace: &str) -> bool {
    let mut d = DROPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match d.iter_mut().find(|(ns, n)| ns == namespace && *n > 0) {
        Some((_, n)) => {
            *n -= 1;
            true
        }
        None => false,
    }
}
