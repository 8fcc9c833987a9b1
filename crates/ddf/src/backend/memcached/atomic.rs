//! The atomic operations of the Memcached backend: `add` (meta `ms` in mode `E`), `incr` (a read
//! with its CAS value, then `ma` on it), `touch` (`mg T`) and an entry's fields (`mg s t f`), over
//! the sync client; the requests and replies are pure code in `proto.rs` and `replies.rs`.

use std::time::Duration;

use super::MemcachedBackend;
use super::client::Conn;
use super::items::exptime;
use crate::backend::{Backend, EntryInfo, Expiry, Item, counter_step};
use crate::error::{Error, Result};
use crate::key::{memcached_key, memcached_key_is_carryable};

/// How many times `incr` reads again after another write changed the counter between its read
/// and its update (each lost race is another writer's success, so this bounds nothing a
/// healthy server reaches).
const INCR_RACES: usize = 10_000;

/// A counter's stored text as an `i64`: an item stored as an int (pymemcache's flags 2, or 4
/// for a Python 2 long) holding decimal digits (what `ma` and pymemcache's `int` store;
/// memcached's `decr` pads a shorter number with spaces), within `0..=i64::MAX`. A str or
/// bytes of digits is not a counter: `ma` would count on it, and keep its flags, so the
/// Python DDF would read the str `"8"` where an int was meant.
fn counter_value(key: &str, flags: u32, data: &[u8]) -> Result<i64> {
    use crate::flags::{INTEGER, LONG};
    if flags != INTEGER && flags != LONG {
        return Err(Error::Decode {
            key: crate::error::shorten(key),
            codec: "memcached counter",
            reason: format!(
                "incr/decr need an int (stored with flags {INTEGER} or {LONG}, as ddf's incr and \
                 pymemcache write one); the stored value has flags {flags}"
            ),
        });
    }
    std::str::from_utf8(data.trim_ascii_end())
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| Error::Decode {
            key: crate::error::shorten(key),
            codec: "memcached counter",
            reason: format!(
                "incr/decr need the decimal digits of an integer within 0..={}; the stored \
                 value is {} bytes of something else",
                i64::MAX,
                data.len()
            ),
        })
}

/// The refusal of `incr` on a key memcached cannot carry as it is.
fn unmapped_counter(key: &str) -> Error {
    Error::InvalidArgument(format!(
        "incr/decr on key {:?}: memcached cannot carry this key as it is (ddf stores it under a \
         hash, with the key in a header of the value), and a counter's value must be the bare \
         number; use a key of at most 250 printable ASCII bytes without spaces",
        crate::error::shorten(key)
    ))
}

impl MemcachedBackend {
    /// `ms ... ME`: store only if absent.
    pub(super) fn add_item(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<bool> {
        let sk = self.keyspace.storage_key(key);
        let wk = memcached_key(&sk);
        let mapped = !memcached_key_is_carryable(&sk);
        let server = &self.servers[self.pick(&wk)];
        let data = Self::wire_data(&sk, mapped, item);
        self.check_size(server, key, &wk, data.len())?;
        let t = exptime(ttl);
        self.run(server, "add", |c| c.add(&wk, &data, item.flags, t))
    }

    /// A read with its CAS value, then `ma` on that CAS value (or `add` of the first value, as
    /// pymemcache's `int`, flags 2), again while another write comes between: the range rule
    /// is checked before anything changes, so memcached's clamping and wrapping never happen.
    pub(super) fn incr_counter(&self, key: &str, delta: i64) -> Result<i64> {
        let sk = self.keyspace.storage_key(key);
        if !memcached_key_is_carryable(&sk) {
            return Err(unmapped_counter(key));
        }
        let wk = memcached_key(&sk);
        let server = &self.servers[self.pick(&wk)];
        for _ in 0..INCR_RACES {
            match self.run(server, "incr", |c| c.get_cas(&wk))? {
                None => {
                    let n = counter_step(0, delta)?;
                    let text = n.to_string();
                    let first =
                        |c: &mut Conn| c.add(&wk, text.as_bytes(), crate::flags::INTEGER, 0);
                    if self.run(server, "incr", first)? {
                        return Ok(n);
                    }
                }
                Some(read) => {
                    let cas = read.cas;
                    counter_step(counter_value(key, read.flags, &read.data)?, delta)?;
                    let (decr, by) = (delta < 0, delta.unsigned_abs());
                    if let Some(text) = self.run(server, "incr", |c| c.arith(&wk, cas, decr, by))? {
                        return counter_value(key, crate::flags::INTEGER, &text);
                    }
                }
            }
        }
        Err(Error::Backend {
            backend: "memcached",
            message: format!(
                "incr: the counter changed between the read and the update {INCR_RACES} times \
                 (contention on one key, not an outage)"
            ),
            temporary: false,
            source: None,
        })
    }

    /// `mg <key> T<exptime>`.
    pub(super) fn touch_item(&self, key: &str, ttl: Option<Duration>) -> Result<bool> {
        let sk = self.keyspace.storage_key(key);
        let wk = memcached_key(&sk);
        let server = &self.servers[self.pick(&wk)];
        let t = exptime(ttl);
        let r = self.run(server, "touch", |c| c.touch_or_meta(&wk, Some(t)))?;
        Ok(r.is_some())
    }

    /// `mg <key> s t f`; a mapped key is read (its header says whose it is).
    pub(super) fn entry_meta(&self, key: &str) -> Result<Option<EntryInfo>> {
        let sk = self.keyspace.storage_key(key);
        if !memcached_key_is_carryable(&sk) {
            // The value's header says whose it is: read it.
            return Ok(self.get(key)?.map(|item| EntryInfo {
                key: key.to_owned(),
                expiry: Expiry::Unknown,
                size: Some(item.data.len() as u64),
                flags: Some(item.flags),
            }));
        }
        let wk = memcached_key(&sk);
        let server = &self.servers[self.pick(&wk)];
        let r = self.run(server, "mg", |c| c.touch_or_meta(&wk, None))?;
        Ok(r.map(|f| EntryInfo {
            key: key.to_owned(),
            expiry: match f.ttl {
                Some(-1) => Expiry::Never,
                Some(t) => Expiry::In(Duration::from_secs(u64::try_from(t).unwrap_or(0))),
                None => Expiry::Unknown,
            },
            size: f.size,
            flags: f.flags,
        }))
    }
}
