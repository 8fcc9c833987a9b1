//! What the Memcached backend stores for a key and reads back: the expiry (`exptime`), the
//! header of an item under a mapped key, the size check against the server's item limit, and
//! the expiry an `mg ... t` reply gives.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::MemcachedBackend;
use super::client;
use super::server::{DEFAULT_ITEM_SIZE_MAX, Server};
use crate::backend::{Expiry, Item};
use crate::error::{Error, Result};

/// Memcached reads an expiry over 30 days as an absolute Unix time.
pub(super) const RELATIVE_TTL_MAX: u64 = 30 * 24 * 3600;

/// Bytes memcached adds to each item besides key and value: the item header (48), CAS (8),
/// client flags (4), the key's NUL and the value's CRLF, rounded up for safety.
const ITEM_OVERHEAD: usize = 80;

/// The start of an item stored under a mapped key: magic, then the storage key's length (u32
/// little-endian) and the storage key.
pub(super) const MAPPED_MAGIC: &[u8; 8] = b"\xffDDFKEY\x01";

/// Memcached's exptime for a TTL: whole seconds rounded up, absolute past 30 days, 0 for none.
pub(super) fn exptime(ttl: Option<Duration>) -> u64 {
    let Some(ttl) = ttl else { return 0 };
    let secs = (ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).max(1);
    if secs > RELATIVE_TTL_MAX {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        now + secs
    } else {
        secs
    }
}

impl MemcachedBackend {
    /// The largest value (after the mapped-key header) a server stores under `wire_key`.
    pub(super) fn value_limit(&self, server: &Server, wire_key: &str) -> Result<usize> {
        if server.item_size_max.load(Ordering::Relaxed) == 0 {
            self.run(server, "connect", |_| Ok(()))?;
        }
        let max = match server.item_size_max.load(Ordering::Relaxed) {
            0 => DEFAULT_ITEM_SIZE_MAX,
            n => n,
        };
        Ok(max.saturating_sub(ITEM_OVERHEAD + wire_key.len()))
    }

    /// The bytes to store for `item` under `storage_key`: the item's own bytes (borrowed, no
    /// copy), or for a mapped key the header naming the storage key, then the bytes.
    pub(super) fn wire_data<'a>(storage_key: &str, mapped: bool, item: &'a Item) -> Cow<'a, [u8]> {
        if !mapped {
            return Cow::Borrowed(&item.data);
        }
        let mut data = Vec::with_capacity(item.data.len() + storage_key.len() + 12);
        data.extend_from_slice(MAPPED_MAGIC);
        data.extend_from_slice(&(storage_key.len() as u32).to_le_bytes());
        data.extend_from_slice(storage_key.as_bytes());
        data.extend_from_slice(&item.data);
        Cow::Owned(data)
    }

    pub(super) fn check_size(
        &self,
        server: &Server,
        key: &str,
        wire_key: &str,
        len: usize,
    ) -> Result<()> {
        let limit = self.value_limit(server, wire_key)?;
        if len > limit {
            return Err(Error::InvalidArgument(format!(
                "the value for key {:?} is {len} bytes encoded; memcached server {} stores at \
                 most {limit} bytes under this key (item_size_max {} minus the key and item \
                 overhead). Nothing was sent; the previous value is unchanged. Store less, or \
                 raise the limit with memcached -I",
                crate::error::shorten(key),
                server.name,
                server.item_size_max.load(Ordering::Relaxed)
            )));
        }
        Ok(())
    }

    /// The item of a stored value, bytes and flags as stored; `None` when a mapped key's header
    /// names another key (a collision, or a foreign item).
    pub(super) fn read_item(
        &self,
        storage_key: &str,
        mapped: bool,
        v: client::Value,
    ) -> Option<Item> {
        let data = if mapped {
            let body = split_mapped(&v.data)?;
            if body.0 != storage_key.as_bytes() {
                tracing::debug!(key = %crate::error::shorten(storage_key), "memcached: mapped key holds another key's value; a miss");
                return None;
            }
            body.1.to_vec()
        } else {
            v.data
        };
        Some(Item::new(data, v.flags))
    }
}

/// Splits a mapped item into (storage key, value).
pub(super) fn split_mapped(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = data.strip_prefix(MAPPED_MAGIC.as_slice())?;
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let rest = &rest[4..];
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// The expiry an `mg ... t` reply says: seconds left, `-1` for none (whole seconds: the server's
/// clock ticks once a second, so the item may go up to a second sooner).
pub(crate) fn seconds_left(ttl: Option<i64>) -> Expiry {
    match ttl {
        Some(-1) => Expiry::Never,
        Some(t) => Expiry::In(Duration::from_secs(u64::try_from(t).unwrap_or(0))),
        None => Expiry::Unknown,
    }
}
