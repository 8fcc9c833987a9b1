//! pymemcache's `python_memcache` serializer flags, the type tags of stored items.
//!
//! A leaf beside [`Item`](crate::Item), below the codecs and the backends: the codecs decide
//! flags; one backend operation reads them, Memcached's `incr`, which must count only on an
//! item stored as an int (memcached's `ma` would count on a str of digits and keep its flags).
//!
//! The codec layer decides an item's flags ([`crate::codec`]); backends keep them (Memcached on
//! the server with each item, the file backend in its entry header) or, like Redis, have no
//! place for them and return [`BYTES`]: flags 0 means "decode with the cache's own codec".
//! [`COMPRESSED`] (pymemcache's zlib compression) is added to the flags of what was compressed
//! (`codec/compress.rs`).

/// Raw bytes, or a value in the cache's own codec.
pub const BYTES: u32 = 0;
/// A Python pickle.
pub const PICKLE: u32 = 1;
/// A Python int as decimal text.
pub const INTEGER: u32 = 2;
/// A Python 2 long as decimal text.
pub const LONG: u32 = 4;
/// zlib-compressed (added to the other flags): pymemcache's `CompressedSerde`.
pub const COMPRESSED: u32 = 8;
/// UTF-8 text: a Python `str` for the Memcached codecs, JSON text for the others.
pub const TEXT: u32 = 16;
