//! [`Item`]: what a backend stores, the leaf of the value model.
//!
//! Opaque bytes plus a 32-bit flags word. The codec (above the backends) decides both; a
//! backend only keeps them. Nothing here imports a codec or a backend.

use std::fmt;

/// A stored value: the encoded bytes and the flags word.
///
/// `flags` follows pymemcache's `python_memcache` serializer convention (see
/// [`crate::codec::flags`]); backends that cannot store it (Redis) return the flags of the codec
/// that wrote the value.
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
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Item")
            .field("len", &self.data.len())
            .field("flags", &self.flags)
            .finish()
    }
}
