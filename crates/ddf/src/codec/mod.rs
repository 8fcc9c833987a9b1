//! Value codecs: how a serde value becomes the bytes (and flags) a backend stores.
//!
//! A closed set, so an enum with a `match` rather than a trait object.
//!
//! | codec | backends | stores |
//! |---|---|---|
//! | JSON | `redis`, `memcached` | `serde_json` text, as the Python DDF's `json.dumps(value).encode()`, flags [`flags::TEXT`] |
//! | pickle | `pickle` (file, the default), `redis_pickle`, `memcached_pickle` | a protocol-4 Python pickle ([`pickle`]), flags [`flags::PICKLE`] |
//!
//! Decoding follows the item's flags when they name a codec: [`flags::PICKLE`] is read as a
//! pickle and [`flags::TEXT`] as JSON whatever the cache's codec (so a file cache written by a
//! JSON-configured build still reads); any other flags (Redis keeps none) are read with the
//! cache's own codec.
//!
//! JSON can represent what serde_json can: strings, numbers (integers up to 128 bits, finite
//! floats), booleans, null, sequences and maps with string or integer keys (integer keys are
//! written as strings and read back as integers by a typed `get`). A value it cannot represent
//! (a map with tuple keys, say) is an [`Error::Encode`] naming the key. Exception: serde_json
//! writes NaN and infinities as `null`, so reading them back into `f64` is an
//! [`Error::Decode`]; the pickle codec keeps them. `docs/codecs.md` compares both codecs.

pub mod flags;
pub mod pickle;
pub mod python_memcache;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::CacheBackend;
use crate::error::{Error, Result};
use crate::item::Item;

/// The codec of a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// JSON text (UTF-8), flags [`flags::TEXT`].
    Json,
    /// A Python pickle (protocol 4 written, 0-5 read), flags [`flags::PICKLE`]. See [`pickle`].
    Pickle,
}

impl Codec {
    /// The codec's name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::Pickle => "pickle",
        }
    }

    /// The codec a backend stores values with: pickle for `pickle`, `redis_pickle` and
    /// `memcached_pickle` (and `none`, which stores nothing), JSON for `redis` and `memcached`.
    pub fn for_backend(backend: CacheBackend) -> Codec {
        match backend {
            CacheBackend::Redis | CacheBackend::Memcached => Codec::Json,
            _ => Codec::Pickle,
        }
    }

    /// The codec an item is read with: the one its flags name, else `self`.
    fn for_item(self, item: &Item) -> Codec {
        match item.flags {
            flags::PICKLE => Codec::Pickle,
            flags::TEXT => Codec::Json,
            _ => self,
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
            Codec::Pickle => pickle::to_vec(value)
                .map(|data| Item::new(data, flags::PICKLE))
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
        match self.for_item(item) {
            Codec::Json => Codec::Json.decode(key, item),
            Codec::Pickle => pickle::from_slice_value(&item.data)
                .map(|v| v.to_json())
                .map_err(|e| Error::Decode {
                    key: crate::error::shorten(key),
                    codec: Codec::Pickle.name(),
                    reason: e.to_string(),
                }),
        }
    }

    /// Decodes a stored item into `T`.
    ///
    /// # Errors
    /// [`Error::Decode`] naming `key` when the bytes are not a `T` in this codec.
    pub fn decode<T: DeserializeOwned>(self, key: &str, item: &Item) -> Result<T> {
        let codec = self.for_item(item);
        match codec {
            Codec::Json => serde_json::from_slice(&item.data).map_err(|e| Error::Decode {
                key: crate::error::shorten(key),
                codec: codec.name(),
                reason: e.to_string(),
            }),
            Codec::Pickle => pickle::from_slice(&item.data).map_err(|e| Error::Decode {
                key: crate::error::shorten(key),
                codec: codec.name(),
                reason: e.to_string(),
            }),
        }
    }
}
