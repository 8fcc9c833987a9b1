//! Value codecs: how a serde value becomes the bytes (and flags) a backend stores.
//!
//! A closed set, so an enum with a `match` rather than a trait object.
//!
//! | codec | backends | stores |
//! |---|---|---|
//! | JSON | `redis`, `memcached` (and `pickle` until the pickle codec lands) | `serde_json` text, as the Python DDF's `json.dumps(value).encode()` |
//!
//! JSON can represent what serde_json can: strings, numbers (integers up to 64 bits, finite
//! floats), booleans, null, sequences and maps with string keys. A value it cannot represent
//! (a map with non-string keys, NaN) is an [`Error::Encode`] naming the key, never a silent
//! change.

pub mod flags;
pub mod python_memcache;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::Item;
use crate::error::{Error, Result};

/// The codec of a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// JSON text (UTF-8), flags [`flags::TEXT`].
    Json,
}

impl Codec {
    /// The codec's name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Json => "json",
        }
    }

    /// Encodes a value.
    ///
    /// # Errors
    /// [`Error::Encode`] naming `key` when the value cannot be represented.
    pub fn encode<T: Serialize + ?Sized>(self, key: &str, value: &T) -> Result<Item> {
        match self {
            Codec::Json => serde_json::to_vec(value)
                .map(|data| Item::new(data, flags::TEXT))
                .map_err(|e| Error::Encode {
                    key: crate::error::shorten(key),
                    codec: self.name(),
                    reason: e.to_string(),
                }),
        }
    }

    /// Decodes any stored item into a JSON view, for display (`ddf-cache get`).
    ///
    /// # Errors
    /// [`Error::Decode`] naming `key` when the bytes are not valid in this codec.
    pub fn decode_json(self, key: &str, item: &Item) -> Result<serde_json::Value> {
        self.decode(key, item)
    }

    /// Decodes a stored item into `T`.
    ///
    /// # Errors
    /// [`Error::Decode`] naming `key` when the bytes are not a `T` in this codec.
    pub fn decode<T: DeserializeOwned>(self, key: &str, item: &Item) -> Result<T> {
        match self {
            Codec::Json => serde_json::from_slice(&item.data).map_err(|e| Error::Decode {
                key: crate::error::shorten(key),
                codec: self.name(),
                reason: e.to_string(),
            }),
        }
    }
}
