//! The Memcached backend's batch paths (`get_many`, `set_many`, `delete_many`): keys grouped
//! by server, each group sent in pipelined chunks of at most [`BATCH`] keys.

use std::borrow::Cow;
use std::time::Duration;

use super::client;
use super::items::exptime;
use super::{BATCH, MemcachedBackend};
use crate::backend::Item;
use crate::error::Result;
use crate::key::{memcached_key, memcached_key_is_carryable};

/// A key of a batch read: its index in the caller's keys, its storage key and its wire key.
pub(super) type Read = (usize, String, String);

impl MemcachedBackend {
    /// The keys of a batch read grouped by the server that holds them (in the order of
    /// `servers`), both faces' grouping.
    pub(super) fn reads_by_server(&self, keys: &[&str]) -> Vec<Vec<Read>> {
        let mut groups: Vec<Vec<Read>> = self.servers.iter().map(|_| Vec::new()).collect();
        for (i, k) in keys.iter().enumerate() {
            let sk = self.keyspace.storage_key(k);
            let wk = memcached_key(&sk).into_owned();
            groups[self.pick(&wk)].push((i, sk, wk));
        }
        groups
    }

    /// The values a server returned for `chunk` (in its order) put in their places in `out`,
    /// read as stored ([`Self::read_item`]).
    pub(super) fn fill(
        &self,
        out: &mut [Option<Item>],
        chunk: &[Read],
        values: Vec<Option<client::Value>>,
    ) {
        for ((i, sk, _), v) in chunk.iter().zip(values) {
            let mapped = !memcached_key_is_carryable(sk);
            out[*i] = v.and_then(|v| self.read_item(sk, mapped, v));
        }
    }

    /// The wire keys of a batch delete grouped by the server that holds them (in the order of
    /// `servers`), both faces' grouping.
    pub(super) fn wire_keys_by_server(&self, keys: &[&str]) -> Vec<Vec<String>> {
        let mut groups: Vec<Vec<String>> = self.servers.iter().map(|_| Vec::new()).collect();
        for k in keys {
            let wk = memcached_key(&self.keyspace.storage_key(k)).into_owned();
            groups[self.pick(&wk)].push(wk);
        }
        groups
    }

    pub(super) fn get_batch(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        let mut out: Vec<Option<Item>> = keys.iter().map(|_| None).collect();
        for (server, group) in self.servers.iter().zip(&self.reads_by_server(keys)) {
            for chunk in group.chunks(BATCH) {
                let wks: Vec<&str> = chunk.iter().map(|(_, _, w)| w.as_str()).collect();
                let vals = self.run(server, "get_many", |c| c.get_many(&wks))?;
                self.fill(&mut out, chunk, vals);
            }
        }
        Ok(out)
    }

    pub(super) fn set_batch(&self, items: &[(&str, Item)], ttl: Option<Duration>) -> Result<()> {
        let t = exptime(ttl);
        // Per server: (wire key, bytes to store, flags).
        type Entry<'a> = (String, Cow<'a, [u8]>, u32);
        let mut groups: Vec<Vec<Entry<'_>>> = self.servers.iter().map(|_| Vec::new()).collect();
        for (k, item) in items {
            let sk = self.keyspace.storage_key(k);
            let wk = memcached_key(&sk).into_owned();
            let mapped = !memcached_key_is_carryable(&sk);
            let idx = self.pick(&wk);
            let data = Self::wire_data(&sk, mapped, item);
            self.check_size(&self.servers[idx], k, &wk, data.len())?;
            groups[idx].push((wk, data, item.flags));
        }
        for (server, group) in self.servers.iter().zip(&groups) {
            for chunk in group.chunks(BATCH) {
                let refs: Vec<(&str, &[u8], u32)> = chunk
                    .iter()
                    .map(|(k, data, flags)| (k.as_str(), &data[..], *flags))
                    .collect();
                self.run(server, "set_many", |c| c.set_many(&refs, t))?;
            }
        }
        Ok(())
    }

    pub(super) fn delete_batch(&self, keys: &[&str]) -> Result<u64> {
        let mut n = 0;
        for (server, group) in self.servers.iter().zip(&self.wire_keys_by_server(keys)) {
            for chunk in group.chunks(BATCH * 4) {
                let refs: Vec<&[u8]> = chunk.iter().map(|k| k.as_bytes()).collect();
                n += self.run(server, "delete_many", |c| c.delete_many(&refs))?;
            }
        }
        Ok(n)
    }
}
