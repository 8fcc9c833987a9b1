//! What `#[cache_with_invalidation]` expands to. Not a public API: names and signatures may
//! change in any release.

pub use crate::memo::{
    Always, IfOk, IntoStamp, MemoFn, Policy, PolicyOk, PolicySome, PolicyWhole, Stamp, Succeeded,
    forget, forget_all, invalidate_after, memoize, stamp,
};
pub use crate::{CACHE, CacheManager, Result};
pub use std::result::Result::{Err, Ok};
pub use std::time::Duration;

/// A memoized function's argument must be `serde::Serialize`: its value is part of the key.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of a memoization key: it does not implement `serde::Serialize`",
    label = "this argument's value goes into the cache key",
    note = "derive or implement `serde::Serialize` for `{Self}` (its value, not its address, keys the call), or pass a serializable value that identifies it (an id, a path) instead"
)]
pub trait Keyable {}

impl<T: serde::Serialize + ?Sized> Keyable for T {}

/// Checks at compile time that an argument can be keyed, and passes it through.
#[inline(always)]
pub fn keyable<T: Keyable + ?Sized>(v: &T) -> &T {
    v
}

/// The key of one call.
#[inline]
pub fn key<A: serde::Serialize + ?Sized>(f: &MemoFn, args: &A) -> Result<String> {
    crate::memo::memo_key(f.key_prefix, f.module, f.name, args)
}
