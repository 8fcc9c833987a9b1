//! What a near cache on a Redis Cluster tracks: the masters `CLUSTER NODES` names and the
//! slots each serves, read from the reply's text (pure: no connection). A tracking session
//! covers one such topology; a heartbeat whose reply names another ends it (see
//! docs/near-cache.md, "Redis Cluster").

/// A node's address, as the cluster announces it.
pub(super) type Addr = (String, u16);

/// The masters of a cluster and the slots each serves (`CLUSTER NODES`), sorted by address:
/// two readings are equal when no master joined, left, failed or changed its slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Topology {
    /// Each master (its announced hostname when it has one, else its IP) with its slot ranges
    /// as announced (`0-5460 5462`), sorted, and its IP; migrations in progress
    /// (`[slot->-id]`) are left out: both nodes of a migration are masters here.
    masters: Vec<(Addr, String, Addr)>,
    /// The answering node (`myself`), when it says it is a master (not failed): one of
    /// `masters`.
    pub(super) myself: Option<Addr>,
}

impl Topology {
    /// The masters to track, by the name to connect to: the hostname a master announces
    /// (`cluster-announce-hostname`, which a TLS certificate names), else its IP.
    pub(super) fn masters(&self) -> impl Iterator<Item = &Addr> {
        self.masters.iter().map(|(a, _, _)| a)
    }

    /// Whether the topology names `a` as a master (by the name [`Topology::masters`] gives).
    pub(super) fn has(&self, a: &Addr) -> bool {
        self.masters.iter().any(|(m, _, _)| m == a)
    }

    /// The IP a master announces, when [`Topology::masters`] names it by its hostname.
    pub(super) fn ip_of(&self, a: &Addr) -> Option<&Addr> {
        self.masters
            .iter()
            .find(|(m, _, ip)| m == a && ip != a)
            .map(|(_, _, ip)| ip)
    }

    /// Every name of every master, hostname and IP: whichever the data path was given
    /// (`CLUSTER SLOTS`' preferred endpoint, a redirect), a node answering a read under it is
    /// tracked.
    pub(super) fn names(&self) -> Vec<Addr> {
        let mut v: Vec<Addr> = Vec::with_capacity(self.masters.len() * 2);
        for (a, _, ip) in &self.masters {
            v.push(a.clone());
            if ip != a {
                v.push(ip.clone());
            }
        }
        v
    }
}

/// Reads a `CLUSTER NODES` reply: every node flagged `master` and not `fail`, `noaddr` or
/// `handshake` (a master marked failed serves nothing: its replica is promoted, and shows as a
/// master), with its address (`ip:port@cport[,hostname]`; no IP: `asked`'s host) and its
/// slots. `None` when the text names no master (not a cluster reply).
pub(super) fn parse_nodes(text: &str, asked: &str) -> Option<Topology> {
    let mut masters: Vec<(Addr, String, Addr)> = Vec::new();
    let mut myself = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (f.get(1), f.get(2)) else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        let has = |x: &str| flags.contains(&x);
        if !has("master") || has("fail") || has("noaddr") || has("handshake") {
            continue;
        }
        let Some(hostport) = addr.split(['@', ',']).next() else {
            continue;
        };
        let hostname = addr
            .split_once(',')
            .and_then(|(_, h)| h.split(',').next())
            .filter(|h| !h.is_empty() && *h != "?");
        let Some((h, p)) = hostport.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = p.parse::<u16>() else {
            continue;
        };
        if port == 0 {
            continue;
        }
        let h = h.trim_start_matches('[').trim_end_matches(']');
        let host = if h.is_empty() { asked } else { h };
        let ip = (host.to_owned(), port);
        let a = hostname.map_or_else(|| ip.clone(), |h| (h.to_owned(), port));
        let mut slots: Vec<&str> = f
            .iter()
            .skip(8)
            .copied()
            .filter(|s| !s.starts_with('['))
            .collect();
        slots.sort_unstable();
        if has("myself") {
            myself = Some(a.clone());
        }
        masters.push((a, slots.join(" "), ip));
    }
    if masters.is_empty() {
        return None;
    }
    masters.sort();
    masters.dedup_by(|x, y| x.0 == y.0);
    Some(Topology { masters, myself })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
aaa 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461-<-ccc] [100->-ddd]
bbb 127.0.0.1:7001@17001 master - 0 1 2 connected 5462-16383 5461
eee 127.0.0.1:7004@17004 slave bbb 0 1 2 connected
ddd :7003@17003,host3 master - 0 1 4 connected
fff 127.0.0.1:7005@17005 master,fail - 0 1 5 disconnected
";

    #[test]
    fn masters_and_their_slots_from_cluster_nodes() {
        let t = parse_nodes(NODES, "10.0.0.9").unwrap();
        let m: Vec<&Addr> = t.masters().collect();
        assert_eq!(
            m,
            [
                &("127.0.0.1".to_owned(), 7000),
                &("127.0.0.1".to_owned(), 7001),
                &("host3".to_owned(), 7003),
            ],
            "an empty master is tracked (it may be importing a slot), by its hostname when it \
             announces one; a replica and a failed master are not"
        );
        let names = t.names();
        assert!(names.contains(&("host3".to_owned(), 7003)));
        assert!(
            names.contains(&("10.0.0.9".to_owned(), 7003)),
            "no IP announced: the host asked"
        );
        assert_eq!(names.len(), 4);
        assert_eq!(t.myself, Some(("127.0.0.1".to_owned(), 7000)));
        assert!(t.has(&("127.0.0.1".to_owned(), 7001)));
        assert!(!t.has(&("127.0.0.1".to_owned(), 7004)));
        // Timestamps, epochs, link states and migrations in progress do not change it; a
        // slot changing owner, a master failing or a node joining does.
        let same = NODES
            .replace("0 1 2 connected", "5 6 9 disconnected")
            .replace(" [5461-<-ccc] [100->-ddd]", "");
        assert_eq!(parse_nodes(&same, "10.0.0.9"), Some(t.clone()));
        let moved = NODES.replace("5462-16383 5461", "5462-16383");
        assert_ne!(parse_nodes(&moved, "10.0.0.9"), Some(t.clone()));
        let failed = NODES.replace(
            "bbb 127.0.0.1:7001@17001 master",
            "bbb 127.0.0.1:7001@17001 master,fail",
        );
        assert_ne!(parse_nodes(&failed, "10.0.0.9"), Some(t.clone()));
        let joined = format!("{NODES}ggg 127.0.0.1:7006@17006 master - 0 1 6 connected\n");
        assert_ne!(parse_nodes(&joined, "10.0.0.9"), Some(t));
        assert_eq!(parse_nodes("PONG", "x"), None);
        assert_eq!(parse_nodes("", "x"), None);
    }
}
