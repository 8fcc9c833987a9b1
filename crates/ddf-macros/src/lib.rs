//! The `#[cache_with_invalidation]` attribute of ddf. Use it through `ddf`
//! (`#[ddf::cache_with_invalidation(..)]`): the expansion calls `ddf::__private`.
//!
//! This crate holds the entry point only; the expansion is in `expand.rs`, and every misuse
//! becomes a `compile_error!` at the offending tokens rather than a panic.

mod expand;

use proc_macro::TokenStream;

/// Memoizes a function's result in a ddf cache, with keys derived from every argument's value.
///
/// ```text
/// #[ddf::cache_with_invalidation(ttl = 3600, key_prefix = "myfunction")]
/// fn my_expensive_function(arg1: &str, arg2: &[u32]) -> Vec<String> { /* ... */ }
///
/// ddf::init()?;                                    // first: a bad configuration is an error here
/// my_expensive_function("a", &[1, 2]);             // computes, stores
/// my_expensive_function("a", &[1, 2]);             // served from the cache
/// my_expensive_function_forget("a", &[1, 2])?;     // forgets this call
/// my_expensive_function_forget_all()?;             // forgets every call of the function
/// ddf::CACHE.invalidate_pattern("myfunction:")?;   // forgets every call under the prefix
/// ```
///
/// Without `cache = ...` the attribute uses the global `ddf::CACHE` (`ddf::ASYNC_CACHE` for an
/// `async fn`). Call `ddf::init()` first: it returns the configuration's error (a bad value, a
/// misspelt `[cache]` section). Without it, a configuration that cannot be loaded is only
/// logged (`tracing`, `error` level) and kept in `ddf::global_error()`, and every memoized
/// function runs uncached.
///
/// Works on free functions and methods (inherent `impl` blocks: the helpers below are extra
/// associated functions, which a trait `impl` cannot hold), sync, or `async fn` with ddf's
/// feature `async` (see "async fn" below). Runnable examples are in the `ddf::memo`
/// documentation, the integration tests and `examples/compose.rs`.
///
/// # Options
///
/// | option | meaning |
/// |---|---|
/// | `ttl = 3600` | expiry in seconds (positive); without it, the cache's configured `ttl` |
/// | `key_prefix = "name"` | the keys start with `name:`, so `invalidate_pattern("name:")` forgets every call |
/// | `validation = path::to_fn` or `validation = expr` | a version stamp: entries stored under another stamp are never served. A path is called with no arguments; any other expression is evaluated in the function's scope and may use the arguments (`validation = ddf::memo::file_sha256(path)`). It returns `String`/`&str`, `Option` of one (`None`: the call runs uncached) or `Result` of one (`Err`: logged, the call runs uncached) |
/// | `cache = expr` | the `CacheManager` to use (an expression evaluated at each call, e.g. `self.cache` or `&*MY_CACHE`); default the global `ddf::CACHE`. On an `async fn`: an `AsyncCacheManager` (or what dereferences to one); default `ddf::ASYNC_CACHE` |
/// | `cache_none` (or `cache_none = true`) | for `Option<T>` results: cache `None` too (default: `None` is not cached, the function runs again) |
/// | `key_self` (or `key_self = true`) | for methods: `self`'s value (it must be `Serialize`) is part of the key. Default: `self` is **not** part of the key, so all instances share entries; use it when the result depends on the instance |
/// | `invalidate_on = ["service:", "service:{name}:"]` | makes the function a **mutation**: it is never memoized, runs on every call, and after each successful call (`Ok` for a `Result`, every return otherwise) every key under each prefix is removed from the cache. `{arg}` inserts an argument's `Display` value (Rust `format!` syntax; `{{` for a brace). Combine it with `cache` only |
///
/// Unknown options, a zero `ttl`, `cache_none` on a non-`Option` function, `key_self` on a free
/// function, memoization options together with `invalidate_on`, `async fn` without ddf's
/// feature `async`, `const fn` and destructuring argument patterns are compile errors that say
/// what to do instead.
///
/// # Keys
///
/// `[<key_prefix>:]<module path>::<function name>:<SHA-256 hex>`. The hash covers a format
/// version, the `key_prefix`, the module path, the function name and every argument's value,
/// serialized by serde into ddf's canonical encoding (maps in sorted order, so a `HashMap`
/// gives the same key in every process). Not `Debug` text, not addresses: lists, maps and
/// structs key by content; two functions with one `key_prefix` never share entries; keys are
/// the same in every process, run and Rust release that runs the same code, so processes that
/// share a cache share results. Every argument must implement `serde::Serialize`; one that does
/// not is a compile error naming it. Two memoized methods with the same name in two `impl`
/// blocks of the same module have the same identity: give them different `key_prefix`es.
/// A `HashSet` argument serializes in iteration order, which differs between processes (a
/// miss, never a wrong hit): prefer `BTreeSet`.
///
/// # Semantics
///
/// - **What is cached**: any return type that is `Serialize + DeserializeOwned`. A type whose
///   last path segment is `Result` (`Result<T, E>`, `io::Result<T>`) caches `Ok` values only;
///   `Err` is returned and never stored (`E` need not be serde). A type whose last segment is
///   `Option` caches `Some` only, unless `cache_none`. Other types are stored whole.
/// - **Fail open**: when the cache cannot be read or written, or a stored value cannot be
///   decoded (e.g. after the return type changed), the function runs, its result is returned,
///   and a `tracing::warn!` says why. A cache error never becomes the function's error. A
///   lookup that met a temporary server failure (a timeout, a refused connection) is the only
///   wait on the server: the function runs and its result is not stored, so a call against a
///   stopped server waits one timeout, not one per cache operation.
/// - **Single-flight**: concurrent callers in one process that miss the same key of one cache
///   (a `CacheManager` and its clones) wait for the first one, which computes and stores once;
///   they then read its result. If the first one panics, one waiting caller takes over (the
///   others wait for it); if it returns an uncacheable value (`Err`, `None`), the waiting
///   callers compute themselves. Nobody deadlocks: a caller that is itself computing a
///   memoized value never waits for another one (it computes directly), so a function that
///   calls itself, or two functions that call each other from two threads, cannot form a wait
///   cycle. Different processes do not coordinate (each may compute once).
/// - **Invalidations win**: a call that starts after an invalidation through the same cache
///   returned (an `invalidate_on` mutation, `<fn>_forget`, `<fn>_forget_all`, or the cache's
///   `delete`, `delete_many`, `invalidate_pattern`, `flush_all`) never receives a result
///   computed before it: it does not wait for an older computation, and a computation that
///   an invalidation overtook returns its result to its own caller without storing it.
/// - A disabled cache (`enabled = false`) or the `none` backend runs the function every time,
///   with no key derivation and no locking.
///
/// # Generated helpers
///
/// Next to `fn name(args..)`, with the same visibility and arguments (and `&self` for
/// methods):
/// - `name_forget(args..) -> ddf::Result<bool>`: forgets the result of one call;
/// - `name_forget_all() -> ddf::Result<u64>`: forgets every call of this function;
/// - `name_cache_key(args..) -> ddf::Result<String>`: the key of one call.
///
/// # async fn
///
/// With ddf's feature `async`, an `async fn` is memoized by the same rules in an
/// `AsyncCacheManager`. Concurrent callers of one key await the leader; if the leader's future
/// is dropped (or its body panics), one waiting caller takes over. A body leading a flight never
/// awaits another flight. `validation` may `.await`. `name_forget` and `name_forget_all` are
/// `async fn`s; `name_cache_key` stays sync. The future is `Send` when the body's is and the
/// result type is `Send + Sync` (a result that is not `Sync` is memoized all the same, by a
/// future that is not `Send`).
#[proc_macro_attribute]
pub fn cache_with_invalidation(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    match expand::expand(attr.into(), item.clone()) {
        Ok(tokens) => tokens.into(),
        // The error, and the function unchanged, so that the error is the only one reported
        // (no "cannot find function" at every call).
        Err(e) => {
            let mut out = e.into_compile_error();
            out.extend(item);
            out.into()
        }
    }
}
