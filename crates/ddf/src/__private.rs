//! What `#[cache_with_invalidation]` expands to. Not a public API: names and signatures may
//! change in any release.

#[cfg(feature = "async")]
pub use crate::memo::task::{
    AsyncMemoCache, active_async, body, forget_all_async, forget_async, invalidate_after_async,
    memoize_async,
};
pub use crate::memo::{
    Always, IfOk, IntoStamp, KeyPart, MemoFn, Policy, PolicyOk, PolicySome, PolicyWhole, Stamp,
    Succeeded, active, forget, forget_all, invalidate_after, memoize, stamp,
};
#[cfg(feature = "async")]
pub use crate::{ASYNC_CACHE, AsyncCacheManager};
pub use crate::{CACHE, CacheManager, Result};
pub use std::result::Result::{Err, Ok};
pub use std::time::Duration;

/// A memoized function's argument must be `serde::Serialize`: its value is part of the key.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of a memoization key: it does not implement `serde::Serialize`",
    label = "this argument's value goes into the cache key",
    note = "derive or implement `serde::Serialize` for the argument's type (its value, not its address, keys the call), or pass a serializable value that identifies it (an id, a path) instead"
)]
pub trait Keyable: serde::Serialize {}

impl<T: serde::Serialize + ?Sized> Keyable for T {}

/// Checks at compile time that an argument can be keyed, and passes it on, type-erased.
#[inline(always)]
pub fn keyable<T: Keyable>(v: &T) -> &dyn KeyPart {
    v
}

/// The key of one call.
#[inline]
pub fn key(f: &MemoFn, args: &[&dyn KeyPart]) -> Result<String> {
    crate::memo::memo_key_parts(f.key_prefix, f.module, f.name, args)
}
