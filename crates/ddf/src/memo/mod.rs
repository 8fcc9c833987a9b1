//! Memoization: the runtime of [`#[cache_with_invalidation]`](crate::cache_with_invalidation).
//!
//! The attribute is documented on [`crate::cache_with_invalidation`]. This module holds the
//! helpers a user may call directly:
//!
//! - [`file_sha256`]: the seed's validation stamp (the SHA-256 of a watched file);
//! - [`function_prefix`] / [`memo_key`]: the key layout, for tools that inspect a cache.
//!
//! and, hidden, what the attribute expands to (reached through `ddf::__private`, not a public
//! API): the runtime here (lookup, policies, validation stamps, `invalidate_on`), the key
//! derivation (`key`, over the canonical encoding in `canonical`), single-flight (`flight`),
//! the invalidation epochs that keep a result computed before an invalidation from being served
//! after it (`epoch`), and, with feature `async`, the async face of the same rules (`task`, and
//! `flight_task`, the single-flight that tasks await).
//!
//! ```
//! use std::sync::OnceLock;
//! use ddf::{CacheConfig, CacheManager, cache_with_invalidation};
//!
//! static CACHE: OnceLock<CacheManager> = OnceLock::new();
//!
//! #[cache_with_invalidation(cache = CACHE.get().unwrap(), ttl = 3600, key_prefix = "ports")]
//! fn ports(service: &str, replicas: &[u32]) -> Vec<String> {
//!     replicas.iter().map(|r| format!("{service}-{r}:80")).collect()
//! }
//!
//! let dir = tempfile::tempdir()?;
//! CACHE.set(CacheManager::new(CacheConfig::default().with_pickle_dir(dir.path()))?).unwrap();
//! let cache = CACHE.get().unwrap();
//!
//! assert_eq!(ports("web", &[1, 2]), ["web-1:80", "web-2:80"]); // computed, stored
//! assert_eq!(ports("web", &[1, 2]), ["web-1:80", "web-2:80"]); // from the cache
//! assert_eq!(cache.stats().hits, 1);
//! assert_eq!(ports("web", &[2, 1]), ["web-2:80", "web-1:80"]); // other arguments, other key
//!
//! assert!(ports_cache_key("web", &[1, 2])?.starts_with("ports:"));
//! assert!(ports_forget("web", &[1, 2])?);          // one call
//! assert_eq!(ports_forget_all()?, 1);               // every call of `ports`
//! assert_eq!(cache.invalidate_pattern("ports:")?, 0); // every call under the prefix
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With feature `async`, the attribute on an `async fn` memoizes in an
//! `AsyncCacheManager` (default `ddf::ASYNC_CACHE`) by the same
//! rules; concurrent callers await the leader, and a dropped leader hands over to one of them:
//!
//! ```
//! use std::sync::OnceLock;
//! use ddf::{AsyncCacheManager, CacheConfig, cache_with_invalidation};
//!
//! static ASYNC: OnceLock<AsyncCacheManager> = OnceLock::new();
//!
//! #[cache_with_invalidation(cache = ASYNC.get().unwrap(), ttl = 3600, key_prefix = "ports")]
//! async fn ports(service: &str, replicas: &[u32]) -> Vec<String> {
//!     replicas.iter().map(|r| format!("{service}-{r}:80")).collect()
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let dir = tempfile::tempdir()?;
//! ASYNC.set(AsyncCacheManager::new(CacheConfig::default().with_pickle_dir(dir.path()))?).unwrap();
//!
//! assert_eq!(ports("web", &[1, 2]).await, ["web-1:80", "web-2:80"]); // computed, stored
//! assert_eq!(ports("web", &[1, 2]).await, ["web-1:80", "web-2:80"]); // from the cache
//! assert_eq!(ASYNC.get().unwrap().stats().hits, 1);
//! assert!(ports_cache_key("web", &[1, 2])?.starts_with("ports:")); // sync: no cache access
//! assert!(ports_forget("web", &[1, 2]).await?);                   // async: it deletes
//! assert_eq!(ports_forget_all().await?, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })
//! # }
//! ```
//!
//! # Key layout
//!
//! ```text
//! [<key_prefix>:]<module path>::<function name>:<64 hex digits>
//! ```
//!
//! The hex digits are the SHA-256 of a canonical encoding of a format version, the
//! `key_prefix`, the module path, the function name and every keyed argument's value (through
//! serde, never `Debug` text or addresses). The readable part is there for invalidation:
//! `invalidate_pattern("<key_prefix>:")` forgets every call of every function with that
//! prefix, `invalidate_pattern(function_prefix(..))` (what the generated `<fn>_forget_all`
//! does) every call of one function. Identity lives in the hash, so two keys can only be equal
//! when the prefix, the function and all argument values are.
//!
//! The canonical encoding is ddf's own, so keys do not depend on a serde_json feature
//! flag, on Rust's `Debug` output or on the release of the compiler. Maps (`HashMap`,
//! `BTreeMap`, `#[serde(flatten)]` structs) are encoded in sorted order, so a `HashMap`
//! argument gives the same key in every process whatever its iteration order. Sequences keep
//! their order, as they must for `Vec`; serde cannot tell a `HashSet` from a sequence, so a
//! `HashSet` argument may give different keys in different processes: a miss, never a wrong
//! hit. Use `BTreeSet` for stable keys.

mod canonical;
pub(crate) mod epoch;
pub(crate) mod flight;
#[cfg(feature = "async")]
pub(crate) mod flight_task;
mod key;
#[cfg(feature = "async")]
pub(crate) mod task;

use std::fmt;
use std::io;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use self::flight::{Landing, Turn};
use crate::CacheManager;
use crate::backend::degraded;
use crate::error::Result;
use crate::key::sha256_hex;

pub(crate) use self::key::memo_key_parts;
pub use self::key::{KeyPart, KeyWriter, function_prefix, memo_key};

/// The lowercase hex SHA-256 of a file's contents: a validation stamp that changes whenever
/// the file does (the seed's `yaml:hash`).
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("docker-compose.yml");
/// std::fs::write(&path, "abc")?;
/// assert_eq!(
///     ddf::memo::file_sha256(&path)?,
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// The I/O error when the file cannot be read.
pub fn file_sha256(path: impl AsRef<Path>) -> io::Result<String> {
    Ok(sha256_hex(&std::fs::read(path)?))
}

// ---------------------------------------------------------------------------------------------
// The runtime the attribute expands to.
// ---------------------------------------------------------------------------------------------

/// What a memoized function is: its identity and its cache settings.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct MemoFn {
    pub module: &'static str,
    pub name: &'static str,
    pub key_prefix: Option<&'static str>,
    pub ttl: Option<Duration>,
    /// `lock = true`: one computation per miss across processes (`get_or_set`'s lease).
    pub lock: bool,
    /// `stale_ttl = N`.
    pub stale_ttl: Option<Duration>,
    /// `early_refresh = BETA`.
    pub early_refresh: Option<f64>,
}

impl MemoFn {
    pub(crate) fn prefix(&self) -> String {
        function_prefix(self.key_prefix, self.module, self.name)
    }

    /// Whether calls go through `get_or_set`'s lease (`lock`, `stale_ttl`, `early_refresh`).
    pub(crate) fn leased(&self) -> bool {
        self.lock || self.stale_ttl.is_some() || self.early_refresh.is_some()
    }

    /// The `get_or_set` options of a leased function.
    pub(crate) fn refresh(&self) -> crate::RefreshOptions {
        let mut o = crate::RefreshOptions::new();
        if let Some(s) = self.stale_ttl {
            o = o.stale_ttl(s);
        }
        if let Some(b) = self.early_refresh {
            o = o.early_refresh(b);
        }
        o
    }
}

/// A validation stamp as the attribute sees it.
#[doc(hidden)]
#[derive(Debug)]
pub enum Stamp {
    /// No `validation` option.
    Unused,
    /// The current stamp.
    Is(String),
    /// The stamp could not be computed: call the function, do not cache.
    Unavailable,
}

/// What a `validation` expression may return: a string (`String`, `&str`), an `Option` of
/// one (`None`: no stamp now, the call is not cached), or a `Result` of one (`Err`: logged,
/// the call is not cached).
#[doc(hidden)]
pub trait IntoStamp {
    /// The stamp, or `None` when there is none now.
    fn into_stamp(self) -> Option<String>;
}

impl IntoStamp for String {
    fn into_stamp(self) -> Option<String> {
        Some(self)
    }
}

impl IntoStamp for &str {
    fn into_stamp(self) -> Option<String> {
        Some(self.to_owned())
    }
}

impl IntoStamp for &String {
    fn into_stamp(self) -> Option<String> {
        Some(self.clone())
    }
}

impl<S: IntoStamp> IntoStamp for Option<S> {
    fn into_stamp(self) -> Option<String> {
        self.and_then(IntoStamp::into_stamp)
    }
}

impl<S: IntoStamp, E: fmt::Display> IntoStamp for std::result::Result<S, E> {
    fn into_stamp(self) -> Option<String> {
        match self {
            Ok(s) => s.into_stamp(),
            Err(e) => {
                tracing::warn!(error = %e, "ddf: the validation stamp cannot be computed; calling the function uncached");
                None
            }
        }
    }
}

#[doc(hidden)]
pub fn stamp<S: IntoStamp>(s: S) -> Stamp {
    match s.into_stamp() {
        Some(s) => Stamp::Is(s),
        None => Stamp::Unavailable,
    }
}

/// Whether memoization is worth anything with this cache (when not, the expansion derives no
/// key and computes no stamp).
#[doc(hidden)]
pub fn active(cache: &CacheManager) -> bool {
    cache.is_enabled()
}

/// What a lookup found.
enum Found<S> {
    Hit(S),
    Miss,
    /// The server failed for a temporary reason (a timeout, a refused connection), whether the
    /// read returned the error or was answered otherwise (a miss): going back to it for a store
    /// would wait a second time on a server that is likely stopped.
    Unavailable,
}

/// The key a call is memoized under, or `None` when it only computes: an inactive cache (no
/// key derived), no validation stamp now, or a key that cannot be derived (logged).
fn memoized_key(key: Option<Result<String>>, stamp: &Stamp) -> Option<String> {
    if matches!(stamp, Stamp::Unavailable) {
        return None;
    }
    match key? {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(error = %e, "ddf: calling the function uncached");
            None
        }
    }
}

/// A stored `(stamp, value)` pair read as a hit only when its stamp is the current one.
fn unstamp<S>(hit: Option<(String, S)>, current: &str) -> Option<S> {
    hit.and_then(|(s, v)| (s == current).then_some(v))
}

/// What a read means to a memoized call, on either face. Errors fail open: logged, read as a
/// miss (a temporary one, or one the cache answered otherwise (`failed`), as
/// [`Found::Unavailable`]).
fn found<S>(r: Result<Option<S>>, failed: bool) -> Found<S> {
    match r {
        _ if failed => Found::Unavailable,
        Ok(Some(v)) => Found::Hit(v),
        Ok(None) => Found::Miss,
        Err(e) if e.is_temporary() => Found::Unavailable,
        Err(e) => {
            tracing::warn!(error = %e, "ddf: memoized read failed; calling the function");
            Found::Miss
        }
    }
}

/// Reads a stored result (see [`found`]).
fn lookup<S: DeserializeOwned>(cache: &CacheManager, key: &str, stamp: &Stamp) -> Found<S> {
    let watch = degraded::Watch::start();
    let r = match stamp {
        Stamp::Is(current) => cache
            .get::<(String, S)>(key)
            .map(|hit| unstamp(hit, current)),
        _ => cache.get::<S>(key),
    };
    found(r, watch.failed())
}

/// Logs how a memoized store went, on either face: `None` when an invalidation began since
/// the call started (nothing written: the result may predate it). Errors fail open.
fn stored(key: &str, outcome: Option<Result<()>>) {
    match outcome {
        None => tracing::debug!(
            key,
            "ddf: an invalidation began while the result was computed; it is not cached"
        ),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "ddf: memoized write failed; the result is not cached")
        }
        Some(Ok(())) => {}
    }
}

/// Stores a result, unless an invalidation began since the call started (`epoch`).
fn store<S: Serialize>(
    cache: &CacheManager,
    f: &MemoFn,
    key: &str,
    stamp: &Stamp,
    epoch: u64,
    value: &S,
) {
    let write = || match stamp {
        Stamp::Is(current) => cache.set(key, &(current, value), f.ttl),
        _ => cache.set(key, value, f.ttl),
    };
    stored(key, cache.epochs().store(epoch, write));
}

/// A memoized call whose lookup met a stopped or failing server computes, without looking up
/// again or storing (each would wait on the server once more): logged once per call.
fn warn_uncached(key: &str) {
    tracing::warn!(
        key,
        "ddf: the cache server failed on the memoized lookup; calling the function, result not cached"
    );
}

fn compute_uncached<R>(key: &str, compute: impl FnOnce() -> R) -> R {
    warn_uncached(key);
    compute()
}

/// Marker types select the policy; the expansion names one of them.
#[doc(hidden)]
pub trait Policy<R> {
    type Stored: Serialize + DeserializeOwned;
    fn stored(r: &R) -> Option<&Self::Stored>;
    fn restore(s: Self::Stored) -> R;
    /// The part to store, or the whole result when it is not cached (an `Err`, a `None`).
    fn split(r: R) -> std::result::Result<Self::Stored, R>;
}

/// Plain values, and `Option<T>` with `cache_none`: everything is stored.
#[doc(hidden)]
#[derive(Debug)]
pub enum PolicyWhole {}
/// `Option<T>`: `Some` is stored, `None` is not.
#[doc(hidden)]
#[derive(Debug)]
pub enum PolicySome {}
/// `Result<T, E>`: `Ok` is stored, `Err` is not.
#[doc(hidden)]
#[derive(Debug)]
pub enum PolicyOk {}

impl<R: Serialize + DeserializeOwned> Policy<R> for PolicyWhole {
    type Stored = R;
    fn stored(r: &R) -> Option<&R> {
        Some(r)
    }
    fn restore(s: R) -> R {
        s
    }
    fn split(r: R) -> std::result::Result<R, R> {
        Ok(r)
    }
}

impl<T: Serialize + DeserializeOwned> Policy<Option<T>> for PolicySome {
    type Stored = T;
    fn stored(r: &Option<T>) -> Option<&T> {
        r.as_ref()
    }
    fn restore(s: T) -> Option<T> {
        Some(s)
    }
    fn split(r: Option<T>) -> std::result::Result<T, Option<T>> {
        r.ok_or(None)
    }
}

impl<T: Serialize + DeserializeOwned, E> Policy<std::result::Result<T, E>> for PolicyOk {
    type Stored = T;
    fn stored(r: &std::result::Result<T, E>) -> Option<&T> {
        r.as_ref().ok()
    }
    fn restore(s: T) -> std::result::Result<T, E> {
        Ok(s)
    }
    fn split(r: std::result::Result<T, E>) -> std::result::Result<T, std::result::Result<T, E>> {
        r.map_err(Err)
    }
}

/// The memoized call: look up, else compute once per key in this process, store, return.
#[doc(hidden)]
pub fn memoize<P, R, F>(
    cache: &CacheManager,
    f: &MemoFn,
    key: Option<Result<String>>,
    stamp: Stamp,
    compute: F,
) -> R
where
    P: Policy<R>,
    F: FnOnce() -> R,
{
    let Some(key) = memoized_key(key, &stamp) else {
        return compute();
    };
    if f.leased() {
        return memoize_leased::<P, R, F>(cache, f, &key, compute);
    }
    // Read before the lookup: an invalidation that returns after this never has its
    // pre-invalidation results served to a later call (see `epoch`).
    let epoch = cache.epochs().current();
    let landings = flight::landings();
    match lookup::<P::Stored>(cache, &key, &stamp) {
        Found::Hit(v) => return P::restore(v),
        Found::Miss => {}
        Found::Unavailable => return compute_uncached(&key, compute),
    }
    let compute_and_store = |compute: F| {
        let r = compute();
        if let Some(s) = P::stored(&r) {
            store(cache, f, &key, &stamp, epoch, s);
        }
        r
    };
    let lead = loop {
        match flight::take_turn(cache.id(), &key, epoch, landings) {
            Turn::Lead(lead) => break lead,
            Turn::Bypass => return compute_and_store(compute),
            // The leader's result is there unless it was not cacheable (an Err, a None), its
            // write failed, or an invalidation made it stale: then compute here, as without a
            // flight.
            Turn::Landed(Landing::Finished) => {
                return match lookup::<P::Stored>(cache, &key, &stamp) {
                    Found::Hit(v) => P::restore(v),
                    Found::Miss => compute_and_store(compute),
                    Found::Unavailable => compute_uncached(&key, compute),
                };
            }
            // The leader panicked: take over (one of the waiters leads, the others wait again).
            Turn::Landed(Landing::Abandoned) => {}
        }
    };
    // A flight of this key that ended between our miss and our election may have stored the
    // value: look again then only (each lookup is a round trip, and a miss in the statistics).
    // The flight ends when `lead` is finished or dropped: after the value is stored.
    let again = if lead.landed_since_miss() {
        lookup::<P::Stored>(cache, &key, &stamp)
    } else {
        Found::Miss
    };
    let r = match again {
        Found::Hit(v) => P::restore(v),
        Found::Miss => compute_and_store(compute),
        Found::Unavailable => compute_uncached(&key, compute),
    };
    lead.finish();
    r
}

/// A memoized call with `lock`, `stale_ttl` or `early_refresh`: `get_or_set` under the memo
/// key (the attribute refuses `validation` with these). A result that is not cached (an `Err`,
/// a `None`) is returned as it is; one met while refreshing a stale value is dropped and the
/// stale value returned (logged).
fn memoize_leased<P, R, F>(cache: &CacheManager, f: &MemoFn, key: &str, compute: F) -> R
where
    P: Policy<R>,
    F: FnOnce() -> R,
{
    let ttl = f.ttl.or(cache.config().ttl);
    let plan = crate::stampede::Plan::new(cache.config(), ttl, f.refresh());
    match crate::stampede::sync::get_or_set(cache, key, &plan, || P::split(compute())) {
        Ok(s) => P::restore(s),
        Err(r) => r,
    }
}

/// Removes the stored result of one call.
#[doc(hidden)]
pub fn forget(cache: &CacheManager, key: Result<String>) -> Result<bool> {
    cache.delete(&key?)
}

/// Removes the stored results of every call of one function.
#[doc(hidden)]
pub fn forget_all(cache: &CacheManager, f: &MemoFn) -> Result<u64> {
    cache.invalidate_pattern(&f.prefix())
}

/// Whether a mutating function's call succeeded (`Ok` for `Result`, always otherwise).
#[doc(hidden)]
pub trait Succeeded {
    fn succeeded(&self) -> bool;
}

#[doc(hidden)]
#[derive(Debug)]
pub struct Always<'a, R>(pub &'a R);
#[doc(hidden)]
#[derive(Debug)]
pub struct IfOk<'a, R>(pub &'a R);

impl<R> Succeeded for Always<'_, R> {
    fn succeeded(&self) -> bool {
        true
    }
}

impl<T, E> Succeeded for IfOk<'_, std::result::Result<T, E>> {
    fn succeeded(&self) -> bool {
        self.0.is_ok()
    }
}

/// `invalidate_on`: after a successful call, removes every key under each prefix.
/// Errors fail open: logged (the call's own result is returned either way).
#[doc(hidden)]
pub fn invalidate_after(cache: &CacheManager, ok: bool, prefixes: &[String]) {
    if !ok {
        return;
    }
    for p in prefixes {
        invalidated(p, cache.invalidate_pattern(p));
    }
}

/// Logs how one `invalidate_on` prefix went, on either face.
fn invalidated(prefix: &str, r: Result<u64>) {
    match r {
        Ok(n) => tracing::debug!(prefix, removed = n, "ddf: invalidate_on"),
        Err(e) => {
            tracing::warn!(prefix, error = %e, "ddf: invalidate_on failed; stale entries may be served")
        }
    }
}
