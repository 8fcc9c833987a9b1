//! Value codecs: how a serde value becomes the bytes (and flags) a backend stores.
//!
//! A closed set, so an enum with a `match` rather than a trait object.
//!
//! | codec | backends | stores |
//! |---|---|---|
//! | JSON | `redis` | `serde_json` text, as the Python DDF's `json.dumps(value).encode()`, flags [`flags::TEXT`] |
//! | JSON, pymemcache's convention | `memcached` | a string as text (16), an integer as decimal text (2), anything else a pickle (1), as the Python DDF's `memcached` backend |
//! | pickle | `pickle` (file, the default), `redis_pickle`, `memcached_pickle` | a protocol-4 Python pickle ([`pickle`]), flags [`flags::PICKLE`] |
//!
//! A cache encodes and decodes through a [`ValueCodec`], chosen once from the backend kind by
//! [`CacheManager`](crate::CacheManager): the codec above plus, for `memcached` and
//! `memcached_pickle`, pymemcache's flags convention ([`python_memcache`]). It produces each
//! [`Item`] with its final flags; backends store items as they are and never call a codec.
//!
//! Decoding follows the item's flags when they name a codec: [`flags::PICKLE`] is read as a
//! pickle whatever the cache's codec; [`flags::TEXT`] is JSON text (so a file cache written by a
//! JSON-configured build still reads), except on the Memcached codecs where it is a Python `str`
//! (and [`flags::INTEGER`]/[`flags::LONG`] a Python `int`). Flags 0 ([`flags::BYTES`]) and any
//! other flags mean "decode with the cache's own codec": Redis keeps no flags and returns 0.
//!
//! JSON can represent what serde_json can: strings, numbers (integers of any size, kept exactly
//! by [`json`]; finite floats), booleans, null, sequences and maps with string or integer keys (integer keys are
//! written as strings and read back as integers by a typed `get`). A value it cannot represent
//! (a map with tuple keys, say) is an [`Error::Encode`] naming the key, and so are NaN and
//! infinities (serde_json would write `null`, a different value); the pickle codec keeps them. `docs/codecs.md` compares both codecs.

pub(crate) mod compress;
pub mod flags;
pub(crate) mod json;
pub mod pickle;
pub(crate) mod python_memcache;

use serde::Serialize;
use serde::de::{self, DeserializeOwned};

use crate::config::CacheBackend;
use crate::error::{Error, Result};
use crate::item::Item;

/// The codec of a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// JSON text (UTF-8), flags 16 (pymemcache's text).
    Json,
    /// A Python pickle (protocol 4 written, 0-5 read), flags 1 (pymemcache's pickle).
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
            Codec::Json => json::to_vec(value)
                .map(|data| Item::new(data, flags::TEXT))
                .map_err(|reason| Error::Encode {
                    key: crate::error::shorten(key),
                    codec: self.name(),
                    reason,
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
            Codec::Json => {
                json::to_json_view(&item.data).map_err(|e| decode_error(key, Codec::Json, e))
            }
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
            Codec::Json => {
                json::from_slice(&item.data).map_err(|e| decode_error(key, Codec::Json, e))
            }
            Codec::Pickle => pickle::from_slice(&item.data).map_err(|e| Error::Decode {
                key: crate::error::shorten(key),
                codec: codec.name(),
                reason: e.to_string(),
            }),
        }
    }
}

/// How a cache turns values into items and back: a [`Codec`] and, for the Memcached backends,
/// pymemcache's flags convention ([`python_memcache`]). Chosen once, from the backend kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ValueCodec {
    codec: Codec,
    pymemcache: bool,
    /// `compress_min_bytes`, on the Memcached backends only.
    compress_min: Option<usize>,
}

impl ValueCodec {
    /// What an item's flags say of its stored form, for `ddf-cache get --meta` (`None`: a
    /// backend that keeps no flags, whose values are in the cache's codec).
    pub(crate) fn describe_flags(self, flags: Option<u32>) -> &'static str {
        match flags {
            None => self.codec.name(),
            Some(flags::PICKLE) => "pickle",
            Some(flags::TEXT) if self.pymemcache => "python str (UTF-8 text, pymemcache flags 16)",
            Some(flags::TEXT) => "json",
            Some(flags::INTEGER | flags::LONG) => "python int (decimal text, pymemcache flags 2/4)",
            Some(flags::BYTES) => "raw bytes (flags 0: set_bytes, or read in the cache's codec)",
            Some(_) => "unknown flags (not written by ddf or pymemcache)",
        }
    }

    /// The value codec of a backend kind: [`Codec::for_backend`], with pymemcache's flags for
    /// `memcached` and `memcached_pickle`.
    pub(crate) fn for_backend(backend: CacheBackend) -> Self {
        ValueCodec {
            codec: Codec::for_backend(backend),
            pymemcache: matches!(
                backend,
                CacheBackend::Memcached | CacheBackend::MemcachedPickle
            ),
            compress_min: None,
        }
    }

    /// The value codec of a configuration: [`for_backend`](Self::for_backend), and on the
    /// Memcached backends `compress_min_bytes` (see `compress.rs` for why nowhere else).
    pub(crate) fn for_config(config: &crate::config::CacheConfig) -> Self {
        let codec = Self::for_backend(config.backend);
        ValueCodec {
            compress_min: config.compress_min_bytes.filter(|_| codec.pymemcache),
            ..codec
        }
    }

    /// The item a stored one stands for: inflated when it is compressed (flags 8).
    fn inflate<'a>(key: &str, item: &'a Item) -> Result<std::borrow::Cow<'a, Item>> {
        compress::inflate(item).map_err(|reason| Error::Decode {
            key: crate::error::shorten(key),
            codec: "zlib",
            reason,
        })
    }

    /// The serialization format.
    pub(crate) fn codec(self) -> Codec {
        self.codec
    }

    /// Encodes a value into the item to store, with its final flags.
    ///
    /// # Errors
    /// [`Error::Encode`] naming `key` when the value cannot be represented.
    pub(crate) fn encode<T: Serialize + ?Sized>(self, key: &str, value: &T) -> Result<Item> {
        let item = self.encode_plain(key, value)?;
        Ok(match self.compress_min {
            Some(min) => compress::compress(item, min),
            None => item,
        })
    }

    fn encode_plain<T: Serialize + ?Sized>(self, key: &str, value: &T) -> Result<Item> {
        if !self.pymemcache {
            return self.codec.encode(key, value);
        }
        match self.codec {
            // What the Python DDF's `memcached` backend writes (pymemcache's python_memcache
            // serializer): a str as text (16), an int as decimal text (2), anything else a
            // pickle (1). JSON text would reach Python as `bytes`.
            Codec::Json => match python_memcache::capture(value) {
                Some(item) => Ok(item),
                None => Codec::Pickle.encode(key, value),
            },
            Codec::Pickle => Codec::Pickle.encode(key, value),
        }
    }

    /// Decodes a stored item into `T`, by its flags.
    ///
    /// # Errors
    /// [`Error::Decode`] naming `key` when the bytes are not a `T`.
    pub(crate) fn decode<T: DeserializeOwned>(self, key: &str, item: &Item) -> Result<T> {
        let item = &*Self::inflate(key, item)?;
        if self.pymemcache {
            match self.python_scalar(item) {
                Some(Scalar::Str(s)) => {
                    return match self.codec {
                        Codec::Json => T::deserialize(python_memcache::StrDeserializer(s))
                            .map_err(|e| decode_error(key, Codec::Json, e)),
                        Codec::Pickle => pickle::from_slice(&python_memcache::pickle_str(s))
                            .map_err(|e| decode_error(key, Codec::Pickle, e)),
                    };
                }
                Some(Scalar::Int(digits)) => {
                    return match self.codec {
                        // Python's decimal text is a JSON number as it is (of any size).
                        Codec::Json => {
                            json::from_slice(digits).map_err(|e| decode_error(key, Codec::Json, e))
                        }
                        Codec::Pickle => pickle::from_slice(&python_memcache::pickle_int(digits))
                            .map_err(|e| decode_error(key, Codec::Pickle, e)),
                    };
                }
                None => {}
            }
            if item.flags == flags::BYTES {
                // JSON text (what an older ddf wrote) or a pickle (`set_bytes`) when it is one;
                // else Python's `bytes`, for a target that takes bytes (`serde_bytes::ByteBuf`).
                return self.codec.decode(key, item).or_else(|e| {
                    T::deserialize(de::value::BytesDeserializer::<de::value::Error>::new(
                        &item.data,
                    ))
                    .map_err(|_| e)
                });
            }
        }
        self.codec.decode(key, item)
    }

    /// Decodes any stored item into the lossless Python value ([`pickle::Value`]): a pickle
    /// with [`pickle::from_slice_value`], JSON text exactly ([`json::to_value`]), and on the
    /// Memcached backends what pymemcache reads: `str` and `int` as such, flags 0 as `bytes`
    /// (Python's `bytes`, `set_bytes`; JSON text an older ddf wrote shows as its bytes too).
    ///
    /// # Errors
    /// [`Error::Decode`] naming `key` when the bytes are not valid in their codec.
    pub(crate) fn decode_value(self, key: &str, item: &Item) -> Result<pickle::Value> {
        let item = &*Self::inflate(key, item)?;
        if self.pymemcache {
            match self.python_scalar(item) {
                Some(Scalar::Str(s)) => return Ok(pickle::Value::Str(s.to_owned())),
                Some(Scalar::Int(digits)) => {
                    return json::to_value(digits).map_err(|e| decode_error(key, Codec::Json, e));
                }
                // What pymemcache reads: `bytes` (Python's bytes, or `set_bytes`).
                None if item.flags == flags::BYTES => {
                    return Ok(pickle::Value::Bytes(item.data.clone()));
                }
                None => {}
            }
        }
        match self.codec.for_item(item) {
            Codec::Json => {
                json::to_value(&item.data).map_err(|e| decode_error(key, Codec::Json, e))
            }
            Codec::Pickle => pickle::from_slice_value(&item.data)
                .map_err(|e| decode_error(key, Codec::Pickle, e)),
        }
    }

    /// Decodes any stored item into a JSON view, for display (`ddf-cache get`).
    ///
    /// # Errors
    /// [`Error::Decode`] naming `key` when the bytes are not valid in their codec.
    pub(crate) fn decode_json(self, key: &str, item: &Item) -> Result<serde_json::Value> {
        if self.pymemcache {
            // The view of the Python value: a `str`, an `int` (beyond 64 bits as a string of
            // digits), `bytes` (flags 0 that is not JSON text) as `{"$bytes": ...}`, a pickle.
            return self.decode_value(key, item).map(|v| v.to_json());
        }
        let item = &*Self::inflate(key, item)?;
        self.codec.decode_json(key, item)
    }

    /// The bytes [`CacheManager::get_bytes`](crate::CacheManager::get_bytes) returns for an
    /// item: its data, except that the Memcached codecs show a Python `str` or `int` in the
    /// cache's own codec (JSON text, or its pickle), as the seed's value layer did. A compressed
    /// item (flags 8) is inflated.
    ///
    /// # Errors
    /// [`Error::Decode`] naming `key` when a compressed item does not inflate.
    pub(crate) fn raw_bytes(self, key: &str, item: Item) -> Result<Vec<u8>> {
        let item = match Self::inflate(key, &item)? {
            std::borrow::Cow::Borrowed(_) => item,
            std::borrow::Cow::Owned(inflated) => inflated,
        };
        if !self.pymemcache {
            return Ok(item.data);
        }
        Ok(match (self.codec, self.python_scalar(&item)) {
            (Codec::Json, Some(Scalar::Str(s))) => {
                serde_json::to_vec(s).unwrap_or_else(|_| s.as_bytes().to_vec())
            }
            (Codec::Pickle, Some(Scalar::Str(s))) => python_memcache::pickle_str(s),
            (Codec::Pickle, Some(Scalar::Int(d))) => python_memcache::pickle_int(d),
            _ => item.data,
        })
    }

    /// A Python `str` (flags 16, valid UTF-8) or `int` (flags 2 or 4, decimal text) item.
    fn python_scalar(self, item: &Item) -> Option<Scalar<'_>> {
        match item.flags {
            flags::TEXT => std::str::from_utf8(&item.data).ok().map(Scalar::Str),
            // Longer digit strings than Python itself writes (its default `int` limit is 4,300
            // digits) are not read as an int: converting decimal text costs quadratic time, so a
            // hostile 1 MB item would take minutes. Such an item decodes as its bytes, or fails.
            // Memcached's `decr` keeps an item's length and pads a shorter number with spaces.
            flags::INTEGER | flags::LONG
                if item.data.len() <= python_memcache::MAX_INT_TEXT
                    && python_memcache::is_decimal_int(item.data.trim_ascii_end()) =>
            {
                Some(Scalar::Int(item.data.trim_ascii_end()))
            }
            _ => None,
        }
    }
}

/// What pymemcache stores outside a serialization: a `str` or an `int`'s decimal text.
enum Scalar<'a> {
    Str(&'a str),
    Int(&'a [u8]),
}

fn decode_error(key: &str, codec: Codec, e: impl std::fmt::Display) -> Error {
    Error::Decode {
        key: crate::error::shorten(key),
        codec: codec.name(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests;
