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
    /// Its replicas (what the reply names after the primary).
    replicas: Vec<Addr>,
}

/// The nodes of `nodes` that `ranges` name neither as a primary nor as a replica: listed in
/// the configuration under another name than the cluster announces (`localhost` for
/// `127.0.0.1`), or not in the cluster.
pub(super) fn unknown<'a>(nodes: &'a [Addr], ranges: &[Range]) -> Vec<&'a Addr> {
    nodes
        .iter()
        .filter(|n| {
            !ranges
                .iter()
                .any(|r| r.primary == **n || r.replicas.contains(n))
        })
        .collect()
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
        let node = |v: &Value| {
            let Value::Array(node) = v else {
                return None;
            };
            let host = text(node.first()?)?;
            let port = int(node.get(1)?).filter(|&p| p != 0)?;
            let host = if host.is_empty() || host == "?" {
                asked.to_owned()
            } else {
                host
            };
            Some((host, port))
        };
        let primary = node(f.get(2)?)?;
        if first > last || usize::from(last) >= SLOTS {
            return None;
        }
        // A replica the reply does not describe fully is left out (it serves no request).
        let replicas = f.iter().skip(3).filter_map(node).collect();
        out.push(Range {
            first,
            last,
            primary,
            replicas,
        });
    }
    Some(out)
}

/// What [`Map::apply`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Applied {
    /// A slot changed owner.
    pub(super) changed: bool,
    /// Slots left in their scope although their owner's home is another (the move waits
    /// until their scope may give them away).
    pub(super) held_back: usize,
}

/// The nodes the node answering `CLUSTER NODES` (`text`) is migrating slots to: the ids in
/// the `[slot->-id]` entries of its `myself` line, found in the same reply. A node importing
/// its first slot is in no `CLUSTER SLOTS` range until the migration ends, yet holds the keys
/// already moved. An address without a host is at `asked`'s host.
pub(super) fn migrating_to(text: &str, asked: &str) -> Vec<Addr> {
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let Some(me) = lines.iter().find(|f| {
        f.get(2)
            .is_some_and(|flags| flags.split(',').any(|x| x == "myself"))
    }) else {
        return Vec::new();
    };
    let mut out: Vec<Addr> = Vec::new();
    for slot in me.iter().skip(8) {
        let Some(id) = slot
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .and_then(|x| x.split_once("->-"))
            .map(|(_, id)| id)
        else {
            continue;
        };
        let Some(target) = lines.iter().find(|f| f.first() == Some(&id)) else {
            continue;
        };
        let hostport = target.get(1).and_then(|a| a.split(['@', ',']).next());
        if let Some((h, p)) = hostport.and_then(|a| a.rsplit_once(':'))
            && let Ok(p) = p.parse::<u16>()
            && p != 0
        {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            let h = if h.is_empty() { asked } else { h };
            let a = (h.to_owned(), p);
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
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
    /// Per node (index into `addrs`): the scope its slots belong to (its shard), once it has
    /// owned slots.
    home: Vec<Option<u16>>,
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
            home: (0..nodes.len() as u16).map(Some).collect(),
            known: false,
        }
    }

    fn index(&mut self, a: &Addr) -> u16 {
        match self.addrs.iter().position(|x| x == a) {
            Some(i) => i as u16,
            None => {
                self.addrs.push(a.clone());
                self.home.push(None);
                (self.addrs.len() - 1) as u16
            }
        }
    }

    /// Takes the ranges a node announced. The scope rule (see the module docs): each node has
    /// a *home* scope. At the first reading, a listed node's home is its own scope. Later, a
    /// node that held no slots (a promoted replica, listed or not, or a new node) makes its
    /// home the scope the slots it takes were in (a failover: the scope's probe then pings
    /// it); a node that held slots keeps its home, whatever the order of the listed nodes.
    /// So a slot changes scope only when the map names as its owner a node of another scope (a
    /// resharding, or the real map replacing the even split), and only when
    /// `may_move(from, to)` allows it (the old scope's breaker is closed with nothing recorded,
    /// the new one's closed); until then it stays in its scope, its requests going to its new
    /// owner.
    pub(super) fn apply(
        &mut self,
        nodes: &[Addr],
        ranges: &[Range],
        may_move: &mut dyn FnMut(u16, u16) -> bool,
    ) -> Applied {
        let first_reading = !self.known;
        let mut held = vec![false; self.addrs.len()];
        for &o in &self.owner {
            if let Some(h) = held.get_mut(usize::from(o)) {
                *h = true;
            }
        }
        if first_reading {
            self.home.iter_mut().for_each(|h| *h = None);
        }
        // One question per pair of scopes (asking may read the journal).
        let n = nodes.len().max(1);
        let mut asked: Vec<Option<bool>> = vec![None; n * n];
        let mut allowed = |from: u16, to: u16| {
            let i = usize::from(from) * n + usize::from(to);
            match asked.get(i).copied().flatten() {
                Some(yes) => yes,
                None => {
                    let yes = may_move(from, to);
                    if let Some(a) = asked.get_mut(i) {
                        *a = Some(yes);
                    }
                    yes
                }
            }
        };
        let mut out = Applied::default();
        for r in ranges {
            let owner = self.index(&r.primary);
            let current = self.scope[usize::from(r.first)];
            let held_before =
                !first_reading && held.get(usize::from(owner)).copied().unwrap_or(false);
            let home = match self.home[usize::from(owner)] {
                Some(h) if held_before || first_reading => h,
                _ => {
                    let listed = nodes.iter().position(|n| *n == r.primary);
                    let h = match listed {
                        Some(i) if first_reading => i as u16,
                        _ => current,
                    };
                    self.home[usize::from(owner)] = Some(h);
                    h
                }
            };
            for s in usize::from(r.first)..=usize::from(r.last) {
                out.changed |= self.owner[s] != owner;
                let from = self.scope[s];
                if from == home || allowed(from, home) {
                    self.scope[s] = home;
                } else {
                    out.held_back += 1;
                }
                self.owner[s] = owner;
            }
        }
        self.known = true;
        out
    }

    /// Every node that owns a slot.
    pub(super) fn owners(&self) -> impl Iterator<Item = &Addr> {
        let mut seen = vec![false; self.addrs.len()];
        for &o in &self.owner {
            if let Some(x) = seen.get_mut(usize::from(o)) {
                *x = true;
            }
        }
        self.addrs
            .iter()
            .zip(seen)
            .filter_map(|(a, owns)| owns.then_some(a))
    }

    /// The nodes that own a slot of `scope`, in slot order.
    pub(super) fn owners_of(&self, scope: usize) -> Vec<Addr> {
        let mut out: Vec<Addr> = Vec::new();
        for (s, &o) in self.scope.iter().zip(&self.owner) {
            let a = &self.addrs[usize::from(o)];
            if usize::from(*s) == scope && !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
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
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        // Against redis-rs's own computation (the `crc16` crate): written apart from ours.
        use redis::cluster_routing::Slot;
        for key in [
            &b"foo{}{bar}"[..],
            b"foo{{bar}}zap",
            b"{user1000}.following",
            b"",
            b"{}",
            b"rc:k1",
            b"\xff\x00{x}",
        ] {
            assert_eq!(Slot::new(slot_of(key)), Some(Slot::for_key(key)), "{key:?}");
        }
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
    fn migration_targets_from_cluster_nodes() {
        let text = "\
aaa 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461-<-ccc] [100->-ddd] [101->-ddd]
bbb 127.0.0.1:7001@17001 master - 0 1 2 connected 5462-16383
ddd :7003@17003,host3 master - 0 1 4 connected
ccc 127.0.0.1:7002@17002 master - 0 1 3 connected
";
        assert_eq!(
            migrating_to(text, "10.0.0.9"),
            [("10.0.0.9".to_owned(), 7003)]
        );
        assert!(
            migrating_to(
                "bbb 127.0.0.1:7001@17001 master - 0 1 2 connected 1-2\n",
                "x"
            )
            .is_empty()
        );
        assert!(migrating_to("garbage", "x").is_empty());
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
        assert!(r[0].replicas.is_empty());
        // Replicas follow the primary; a listed node the reply names nowhere is unknown.
        let Value::Array(mut with) = range(0, 16383, "10.0.0.1", 7000) else {
            unreachable!()
        };
        with.push(Value::Array(vec![
            Value::BulkString(b"".to_vec()),
            Value::Int(7003),
        ]));
        let r = parse_slots(&Value::Array(vec![Value::Array(with)]), "10.0.0.9").unwrap();
        assert_eq!(r[0].replicas, [("10.0.0.9".to_owned(), 7003)]);
        let listed = addrs(&[("10.0.0.1", 7000), ("10.0.0.9", 7003), ("localhost", 7000)]);
        assert_eq!(unknown(&listed, &r), [&("localhost".to_owned(), 7000)]);
        assert!(parse_slots(&Value::Int(3), "x").is_none());
        assert!(parse_slots(&Value::Array(vec![range(5, 4, "h", 1)]), "x").is_none());
        assert!(parse_slots(&Value::Array(vec![range(0, 16384, "h", 1)]), "x").is_none());
    }

    fn yes(_: u16, _: u16) -> bool {
        true
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
        // The real map: b owns the start.
        assert!(
            m.apply(&nodes, &[r(0, 99, "b", 2), r(100, 16383, "a", 1)], &mut yes)
                .changed
        );
        assert_eq!((m.scope[0], m.scope[100]), (1, 0));
        // a's replica c is promoted: its slots stay in a's scope, whose probe now pings c.
        m.apply(&nodes, &[r(0, 99, "b", 2), r(100, 16383, "c", 3)], &mut yes);
        assert_eq!(m.scope[100], 0);
        assert_eq!(m.owners_of(0), addrs(&[("c", 3)]));
        assert_eq!(m.addrs[usize::from(m.owner[100])], ("c".to_owned(), 3));
        // One slot resharded to b: it moves to b's scope.
        m.apply(
            &nodes,
            &[r(0, 100, "b", 2), r(101, 16383, "c", 3)],
            &mut yes,
        );
        assert_eq!((m.scope[100], m.scope[101]), (1, 0));

        // Every node listed, replicas too: a listed replica that is promoted takes the shard
        // over in its primary's scope (where the records of the primary's outage are), not in
        // its own.
        let all = addrs(&[("a", 1), ("b", 2), ("a2", 3)]);
        let mut m = Map::even(&all);
        m.apply(
            &all,
            &[r(0, 8191, "a", 1), r(8192, 16383, "b", 2)],
            &mut yes,
        );
        assert_eq!((m.scope[0], m.scope[8192]), (0, 1));
        m.apply(
            &all,
            &[r(0, 8191, "a2", 3), r(8192, 16383, "b", 2)],
            &mut yes,
        );
        assert_eq!(m.scope[0], 0);
        assert_eq!(m.owners_of(0), addrs(&[("a2", 3)]));
        assert!(m.owners_of(2).is_empty());
        // Failback (a is promoted again): still the same scope.
        m.apply(
            &all,
            &[r(0, 8191, "a", 1), r(8192, 16383, "b", 2)],
            &mut yes,
        );
        assert_eq!(m.scope[0], 0);
        assert_eq!(m.owners_of(0), addrs(&[("a", 1)]));
    }

    fn r(first: u16, last: u16, h: &str, p: u16) -> Range {
        Range {
            first,
            last,
            primary: (h.to_owned(), p),
            replicas: Vec::new(),
        }
    }

    /// A listed replica that comes BEFORE its primary: once promoted it holds the slots in its
    /// old primary's scope, and reading the same map again (every probe does) leaves them there
    /// (they moved to the replica's own, empty, scope: its reads skipped the primary's records).
    #[test]
    fn a_promoted_replica_listed_first_keeps_the_slots_in_their_scope() {
        let all = addrs(&[("a2", 3), ("a", 1), ("b", 2)]);
        let mut m = Map::even(&all);
        m.apply(
            &all,
            &[r(0, 8191, "a", 1), r(8192, 16383, "b", 2)],
            &mut yes,
        );
        assert_eq!((m.scope[0], m.scope[8192]), (1, 2));
        let promoted = [r(0, 8191, "a2", 3), r(8192, 16383, "b", 2)];
        for _ in 0..3 {
            m.apply(&all, &promoted, &mut yes);
            assert_eq!((m.scope[0], m.scope[8191], m.scope[8192]), (1, 1, 2));
            assert!(m.owners_of(0).is_empty());
            assert_eq!(m.owners_of(1), addrs(&[("a2", 3)]));
        }
        // The old primary comes back as a replica (not in the map) and is promoted again.
        m.apply(
            &all,
            &[r(0, 8191, "a", 1), r(8192, 16383, "b", 2)],
            &mut yes,
        );
        m.apply(
            &all,
            &[r(0, 8191, "a", 1), r(8192, 16383, "b", 2)],
            &mut yes,
        );
        assert_eq!(m.scope[0], 1);
    }

    /// A resharding moves a slot only out of a scope that may give it away (breaker closed,
    /// nothing recorded) into one that is up; until then the slot stays, its requests going to
    /// the new owner, and a later reading moves it.
    #[test]
    fn a_slot_leaves_a_scope_only_when_that_scope_may_give_it_away() {
        let nodes = addrs(&[("a", 1), ("b", 2)]);
        let mut m = Map::even(&nodes);
        let before = [r(0, 8191, "a", 1), r(8192, 16383, "b", 2)];
        m.apply(&nodes, &before, &mut yes);
        // Slots 0-9 resharded from a to b while a's scope has records (or is open).
        let after = [r(0, 9, "b", 2), r(10, 8191, "a", 1), r(8192, 16383, "b", 2)];
        let mut asked = Vec::new();
        let done = m.apply(&nodes, &after, &mut |from, to| {
            asked.push((from, to));
            false
        });
        assert_eq!(asked, [(0, 1)], "one question per pair of scopes");
        assert_eq!(
            done,
            Applied {
                changed: true,
                held_back: 10
            }
        );
        assert_eq!((m.scope[0], m.scope[9], m.scope[10]), (0, 0, 0));
        assert_eq!(m.addrs[usize::from(m.owner[0])], ("b".to_owned(), 2));
        assert_eq!(m.owners_of(0), addrs(&[("b", 2), ("a", 1)]));
        // Read again while a's scope still may not: the slots stay.
        let again = m.apply(&nodes, &after, &mut |_, _| false);
        assert_eq!(
            again,
            Applied {
                changed: false,
                held_back: 10
            }
        );
        assert_eq!(m.scope[0], 0);
        // Once it may (replayed, closed), the next reading moves them.
        let moved = m.apply(&nodes, &after, &mut yes);
        assert_eq!(
            moved,
            Applied {
                changed: false,
                held_back: 0
            }
        );
        assert_eq!((m.scope[0], m.scope[9], m.scope[10]), (1, 1, 0));
        assert_eq!(m.owners_of(0), addrs(&[("a", 1)]));
    }
}
