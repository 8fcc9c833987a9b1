//! The pure part of the Cluster's placement: a key's hash slot, the parsing of `CLUSTER SLOTS`,
//! and the slot map with its scope rule (no connection, no I/O; `cluster.rs` reads the map
//! from the nodes and routes by it).

use redis::Value;

/// The number of hash slots of a Redis Cluster.
pub(super) const SLOTS: usize = 16384;

/// A node's address, as the cluster announces it.
pub(crate) type Addr = (String, u16);

/// The slot of a key as stored: CRC16 (XMODEM) of the key, or of its hash tag (the bytes
/// between the first `{` and the next `}`, when not empty), modulo 16384.
///
/// Written here because redis-rs computes it (`Slot::for_key`) but does not expose the number.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in hash_tag(key).unwrap_or(key) {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS as u16
}

fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

/// One range of `CLUSTER SLOTS`: its slots and its primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Range {
    first: u16,
    last: u16,
    primary: Addr,
}

/// The ranges of a `CLUSTER SLOTS` reply (`[[first, last, [host, port, id, ...], replicas...],
/// ...]`), pure. A primary announced without a host (an empty or `?` endpoint) is at `asked`'s
/// host, the node that answered. `None` when the reply is not that shape.
pub(super) fn parse_slots(v: &Value, asked: &str) -> Option<Vec<Range>> {
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let Value::Array(ranges) = v else {
        return None;
    };
    let mut out = Vec::with_capacity(ranges.len().min(SLOTS));
    for r in ranges {
        let Value::Array(f) = r else { return None };
        let (first, last) = (int(f.first()?)?, int(f.get(1)?)?);
        let Value::Array(node) = f.get(2)? else {
            return None;
        };
        let host = text(node.first()?)?;
        let port = int(node.get(1)?)?;
        let host = if host.is_empty() || host == "?" {
            asked.to_owned()
        } else {
            host
        };
        if first > last || usize::from(last) >= SLOTS || port == 0 {
            return None;
        }
        out.push(Range {
            first,
            last,
            primary: (host, port),
        });
    }
    Some(out)
}

/// The slot map: which scope and which node each slot belongs to.
#[derive(Debug)]
pub(super) struct Map {
    /// Per slot: its scope (an index into the configured nodes).
    pub(super) scope: Vec<u16>,
    /// Per slot: its owner (an index into `addrs`).
    pub(super) owner: Vec<u16>,
    /// Every primary seen; the configured nodes first, in their order.
    pub(super) addrs: Vec<Addr>,
    /// Per scope: the node (index into `addrs`) its probe pings.
    pub(super) primary: Vec<u16>,
    /// Whether a node has answered `CLUSTER SLOTS` yet.
    known: bool,
}

impl Map {
    /// The split `redis-cli --cluster create` makes over `n` nodes: node `i` gets up to slot
    /// `round((i + 1) * 16384 / n - 1)`, the last node the rest.
    pub(super) fn even(nodes: &[Addr]) -> Map {
        let n = nodes.len().max(1);
        let per = SLOTS as f64 / n as f64;
        let mut scope = vec![0u16; SLOTS];
        let mut first = 0usize;
        for i in 0..n {
            let last = if i + 1 == n {
                SLOTS - 1
            } else {
                (((i + 1) as f64 * per - 1.0).round() as usize).clamp(first, SLOTS - 1)
            };
            for s in scope.iter_mut().take(last + 1).skip(first) {
                *s = i as u16;
            }
            first = last + 1;
        }
        Map {
            owner: scope.clone(),
            scope,
            addrs: nodes.to_vec(),
            primary: (0..n as u16).collect(),
            known: false,
        }
    }

    fn index(&mut self, a: &Addr) -> u16 {
        match self.addrs.iter().position(|x| x == a) {
            Some(i) => i as u16,
            None => {
                self.addrs.push(a.clone());
                (self.addrs.len() - 1) as u16
            }
        }
    }

    /// Takes the ranges a node announced; whether a slot changed owner. The scope rule (see
    /// the module docs): at the first reading, a listed node's slots are its scope; later, a
    /// node that held slots before takes a slot into its scope (a resharding), while a node that
    /// held none (a promoted replica, listed or not) takes the slots over in the scope they were
    /// in (a failover), whose probe then pings it.
    pub(super) fn apply(&mut self, nodes: &[Addr], ranges: &[Range]) -> bool {
        let first_reading = !self.known;
        let mut held = vec![false; self.addrs.len()];
        for &o in &self.owner {
            if let Some(h) = held.get_mut(usize::from(o)) {
                *h = true;
            }
        }
        let mut changed = false;
        for r in ranges {
            let owner = self.index(&r.primary);
            let listed = nodes.iter().position(|n| *n == r.primary).map(|i| i as u16);
            let led = self
                .primary
                .iter()
                .position(|&p| p == owner)
                .map(|i| i as u16);
            let current = self.scope[usize::from(r.first)];
            let scope = if first_reading {
                listed.or(led).unwrap_or(current)
            } else if held.get(usize::from(owner)).copied().unwrap_or(false) {
                led.or(listed).unwrap_or(current)
            } else {
                current
            };
            for s in usize::from(r.first)..=usize::from(r.last) {
                changed |= self.owner[s] != owner;
                self.scope[s] = scope;
                self.owner[s] = owner;
            }
            if let Some(p) = self.primary.get_mut(usize::from(scope)) {
                *p = owner;
            }
        }
        self.known = true;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(nodes: &[(&str, u16)]) -> Vec<Addr> {
        nodes.iter().map(|(h, p)| ((*h).to_owned(), *p)).collect()
    }

    #[test]
    fn slots_follow_the_cluster_spec() {
        // The specification's test vector: CRC16("123456789") = 0x31C3.
        assert_eq!(slot_of(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        // A hash tag: only the part in braces counts; an empty tag does not.
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
    }

    fn range(first: i64, last: i64, host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(first),
            Value::Int(last),
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ]),
        ])
    }

    #[test]
    fn slot_map_parsing() {
        let v = Value::Array(vec![
            range(0, 5460, "10.0.0.1", 7000),
            range(5461, 16383, "", 7001),
        ]);
        let r = parse_slots(&v, "10.0.0.9").unwrap();
        assert_eq!(r[0].primary, ("10.0.0.1".to_owned(), 7000));
        assert_eq!(r[1].primary, ("10.0.0.9".to_owned(), 7001));
        assert_eq!((r[1].first, r[1].last), (5461, 16383));
        assert!(parse_slots(&Value::Int(3), "x").is_none());
        assert!(parse_slots(&Value::Array(vec![range(5, 4, "h", 1)]), "x").is_none());
        assert!(parse_slots(&Value::Array(vec![range(0, 16384, "h", 1)]), "x").is_none());
    }

    #[test]
    fn a_promoted_replica_keeps_the_shard_and_a_resharding_moves_slots() {
        let nodes = addrs(&[("a", 1), ("b", 2)]);
        let three = addrs(&[("a", 1), ("b", 2), ("c", 3)]);
        let m = Map::even(&three);
        // What `redis-cli --cluster create` assigns: 0-5460, 5461-10922, 10923-16383.
        assert_eq!((m.scope[5460], m.scope[5461]), (0, 1));
        assert_eq!((m.scope[10922], m.scope[10923], m.scope[16383]), (1, 2, 2));
        let mut m = Map::even(&nodes);
        assert_eq!((m.scope[8191], m.scope[8192], m.scope[16383]), (0, 1, 1));
        let r = |first, last, h: &str, p| Range {
            first,
            last,
            primary: (h.to_owned(), p),
        };
        // The real map: b owns the start.
        assert!(m.apply(&nodes, &[r(0, 99, "b", 2), r(100, 16383, "a", 1)]));
        assert_eq!((m.scope[0], m.scope[100]), (1, 0));
        // a's replica c is promoted: its slots stay in a's scope, whose probe now pings c.
        m.apply(&nodes, &[r(0, 99, "b", 2), r(100, 16383, "c", 3)]);
        assert_eq!(m.scope[100], 0);
        assert_eq!(m.addrs[usize::from(m.primary[0])], ("c".to_owned(), 3));
        assert_eq!(m.addrs[usize::from(m.owner[100])], ("c".to_owned(), 3));
        // One slot resharded to b: it moves to b's scope.
        m.apply(&nodes, &[r(0, 100, "b", 2), r(101, 16383, "c", 3)]);
        assert_eq!((m.scope[100], m.scope[101]), (1, 0));

        // Every node listed, replicas too: a listed replica that is promoted takes the shard
        // over in its primary's scope (where the records of the primary's outage are), not in
        // its own.
        let all = addrs(&[("a", 1), ("b", 2), ("a2", 3)]);
        let mut m = Map::even(&all);
        m.apply(&all, &[r(0, 8191, "a", 1), r(8192, 16383, "b", 2)]);
        assert_eq!((m.scope[0], m.scope[8192]), (0, 1));
        m.apply(&all, &[r(0, 8191, "a2", 3), r(8192, 16383, "b", 2)]);
        assert_eq!(m.scope[0], 0);
        assert_eq!(m.addrs[usize::from(m.primary[0])], ("a2".to_owned(), 3));
        // Failback (a is promoted again): still the same scope.
        m.apply(&all, &[r(0, 8191, "a", 1), r(8192, 16383, "b", 2)]);
        assert_eq!(m.scope[0], 0);
        assert_eq!(m.addrs[usize::from(m.primary[0])], ("a".to_owned(), 1));
    }
}
