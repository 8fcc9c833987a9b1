//! Key placement: rendezvous (highest random weight) hashing, identical to pymemcache 4.0.0's
//! `HashClient` (`pymemcache/client/rendezvous.py` with `murmur3.py`).
//!
//! For each server named `"host:port"` the score of a key is `murmur3_32("{node}-{key}", 0)`;
//! the highest score wins, a tie goes to the lexicographically larger node name. The key hashed is
//! the memcached key as sent on the wire (namespace included, after [`crate::key::memcached_key`]),
//! which is what a pymemcache client without `key_prefix` hashes. Hand-written (30 lines) rather
//! than a dependency: the crates' routers disagree with pymemcache.

use crate::backend::resilience::scopes::Partition;
use crate::config::{MemcachedSettings, ServerAddr};
use crate::key::{Keyspace, memcached_key};

/// MurmurHash3, x86 32-bit, as pymemcache computes it: over the low byte of each character
/// (our wire keys and node names are ASCII, so this is the bytes).
pub(crate) fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for b in &mut blocks {
        let mut k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, &b) in tail.iter().enumerate() {
            k |= u32::from(b) << (8 * i);
        }
        h ^= k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    }
    // pymemcache hashes `len(data)` as a Python int and masks at the end; the low 32 bits agree.
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The index of the node that owns `key` among `nodes` (names `"host:port"`); `None` when there
/// are no nodes.
pub(crate) fn pick<S: AsRef<str>>(nodes: &[S], key: &str) -> Option<usize> {
    if nodes.len() == 1 {
        return Some(0);
    }
    let mut buf = Vec::with_capacity(64 + key.len());
    let mut best: Option<(u32, &str, usize)> = None;
    for (i, node) in nodes.iter().enumerate() {
        let node = node.as_ref();
        buf.clear();
        buf.extend_from_slice(node.as_bytes());
        buf.push(b'-');
        buf.extend_from_slice(key.as_bytes());
        let score = murmur3_32(&buf, 0);
        let better = match best {
            None => true,
            Some((s, n, _)) => score > s || (score == s && node > n),
        };
        if better {
            best = Some((score, node, i));
        }
    }
    best.map(|(_, _, i)| i)
}

/// Which configured server holds a user key, for the breaker per server
/// ([`Partition`]): pymemcache's placement of the
/// wire key over **every** configured server, whatever their state (a down server's keys go to
/// the fallback, never to another server).
#[derive(Debug)]
pub(crate) struct Placement {
    names: Vec<String>,
    keyspace: Keyspace,
}

impl Placement {
    /// The placement of `settings`' servers, in their configured order, and namespace.
    pub(crate) fn new(settings: &MemcachedSettings) -> Self {
        Placement {
            names: settings.servers.iter().map(node_name).collect(),
            keyspace: Keyspace::new(settings.namespace.clone()),
        }
    }
}

impl Partition for Placement {
    fn scope_of(&self, key: &str) -> usize {
        let sk = self.keyspace.storage_key(key);
        let wk = memcached_key(&sk);
        pick(&self.names, &wk).unwrap_or(0)
    }

    /// A lease is internal to ddf (no other client looks for it): it goes to its key's server.
    fn leases_follow_keys(&self) -> bool {
        true
    }
}

/// The node name pymemcache hashes for a server: `host:port`, IPv6 hosts without brackets.
pub(crate) fn node_name(addr: &ServerAddr) -> String {
    format!("{}:{}", addr.host, addr.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_reference_vectors() {
        // Standard MurmurHash3_x86_32 vectors.
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"hello", 0), 0x248b_fa47);
        assert_eq!(murmur3_32(b"Hello, world!", 1234), 0xfaf6_cdb3);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    #[test]
    fn pick_is_deterministic_and_uses_every_node() {
        let nodes = ["127.0.0.1:11211", "127.0.0.1:11212", "127.0.0.1:11213"];
        let mut seen = [0usize; 3];
        for i in 0..300 {
            let k = format!("key{i}");
            let a = pick(&nodes, &k).unwrap();
            assert_eq!(Some(a), pick(&nodes, &k));
            seen[a] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(pick::<&str>(&[], "k"), None);
    }
}
