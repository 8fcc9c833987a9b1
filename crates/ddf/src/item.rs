//! [`Item`]: what a backend stores, the leaf of the value model.
//!
//! Opaque bytes plus a 32-bit flags word. The codec (above the backends) decides both; a
//! backend only keeps them. Nothing here imports a codec or a backend.

use std::fmt;

/// A stored value: the encoded bytes and the flags word.
///
/// `flags` follows pymemcache's `python_memcache` serializer convention (bytes 0, pickle 1,
/// int 2, text 16), decided by the cache's codec when it encodes a value. A backend
/// stores both as they are and never interprets them; a backend that cannot store flags (Redis)
/// returns 0, which means "decode with the cache's own codec".
///
/// ```
/// let item = ddf::Item::new(b"hello".to_vec(), 16);
/// assert_eq!((item.data.as_slice(), item.flags), (&b"hello"[..], 16));
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Item {
    /// The encoded value.
    pub data: Vec<u8>,
    /// pymemcache-compatible type flags.
    pub flags: u32,
}

impl Item {
    /// An item from bytes and flags.
    pub fn new(data: Vec<u8>, flags: u32) -> Self {
        Item { data, flags }
    }

    /// An item read from a backend that stores no flags: flags 0, decoded with the cache's own
    /// codec.
    pub(crate) fn unflagged(data: Vec<u8>) -> Self {
        Item { data, flags: 0 }
    }
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Item")
            .field("len", &self.data.len())
            .field("flags", &self.flags)
            .finish()
    }
}
