//! pymemcache's `python_memcache` serializer flags, the type tags of stored items.
//!
//! Memcached keeps them on the server with each item; the file backend keeps them in its entry
//! header; Redis has no place for them.

/// Raw bytes.
pub const BYTES: u32 = 0;
/// A Python pickle.
pub const PICKLE: u32 = 1;
/// A Python int as decimal text.
pub const INTEGER: u32 = 2;
/// A Python 2 long as decimal text.
pub const LONG: u32 = 4;
/// zlib-compressed (combined with another flag).
pub const COMPRESSED: u32 = 8;
/// UTF-8 text.
pub const TEXT: u32 = 16;
