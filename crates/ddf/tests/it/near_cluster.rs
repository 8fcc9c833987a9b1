//! The near cache on a real 3-primary Redis Cluster (issue #13, "track every primary"): a
//! writer process rewrites one key on each primary every millisecond (in turn) while the
//! reader reads them all through its near cache, and meanwhile one primary's tracking
//! connection is killed (`CLIENT KILL`), a key's slot is resharded (`CLUSTER SETSLOT` +
//! `MIGRATE`: `ASK` during it, a new owner after it), and a fourth primary is added and given
//! another key's slot (its writes reach the reader only if the new node is tracked). The rule of tests/it/near.rs, per key:
//! no read returns a version older than one the writer had finished 5 ms or more before the
//! read began; the checker is the same one, shown there and here to catch a planted stale
//! read. Then, on the same cluster: writes by redis-cli on every node, `invalidate_pattern`,
//! `flush_all`, and the async face.
//!
//! With `DDF_NEAR_CLUSTER_BLIND=1` the tracking thread ignores the topology its heartbeats
//! report (`ignore_topology_changes`): the session never ends on the resharding or the node
//! added, so the new node is never tracked, and the run shows that a fill from a node the
//! session does not track is refused (0 stale reads; 393,346 on the moved key before that
//! rule). Not run by CI (the same faults, a second cluster's time).

use std::io::Write;
use std::time::{Duration, Instant};

use ddf::{CacheConfig, CacheManager};
use ddf_testkit::RedisCluster;

use crate::near::{GRACE_NS, ReadRec, WriteRec, delays, reader, stale};
use crate::process;
use crate::redis_config::{Redis, near_or_writer, redis};

const JOB: &str = "DDF_NEAR_CLUSTER_JOB";
const NS: &str = "ncl:";

fn config(ports: &[u16], dir: &std::path::Path, near: bool) -> CacheConfig {
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let at = Redis::Cluster(&nodes);
    let (connect, timeout) = (Duration::from_millis(300), Duration::from_millis(500));
    near_or_writer(redis(at, NS, dir, connect, timeout), near)
}

/// The writer child: until `<log>.stop` exists (at most `ms` milliseconds), every millisecond a
/// new version (one counter) of the next key in turn, each logged as
/// `W <key index> <version> <when set returned Ok>`.
#[test]
fn writer() {
    let Some(job) = process::job(JOB) else {
        return;
    };
    let parts: Vec<&str> = job.split(' ').collect();
    let ports: Vec<u16> = parts[0].split(',').map(|p| p.parse().unwrap()).collect();
    let keys: Vec<&str> = parts[1].split(',').collect();
    let ms: u64 = parts[2].parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(config(&ports, dir.path(), false)).unwrap();
    let end = Instant::now() + Duration::from_millis(ms);
    let mut out = std::io::BufWriter::new(std::fs::File::create(parts[3]).unwrap());
    let stop = std::path::PathBuf::from(format!("{}.stop", parts[3]));
    let mut v = 0u64;
    while Instant::now() < end && !stop.exists() {
        v += 1;
        let k = (v % keys.len() as u64) as usize;
        if cache.set(keys[k], &v, None).is_ok() {
            writeln!(out, "W {k} {v} {}", process::mono_ns()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    out.flush().unwrap();
}

/// The node (index) that owns `key` (as stored) now.
fn owner(cluster: &RedisCluster, key: &str) -> usize {
    let slot: u16 = cluster
        .cli(cluster.nodes[0].port(), &["CLUSTER", "KEYSLOT", key])
        .trim()
        .parse()
        .unwrap();
    let nodes = cluster.cli(cluster.nodes[0].port(), &["CLUSTER", "NODES"]);
    for line in nodes.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port: u16 = f[1]
            .split('@')
            .next()
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .unwrap();
        for range in f.iter().skip(8).filter(|r| !r.starts_with('[')) {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            let (a, b): (u16, u16) = (a.parse().unwrap(), b.parse().unwrap());
            if (a..=b).contains(&slot) {
                return cluster.nodes.iter().position(|n| n.port() == port).unwrap();
            }
        }
    }
    panic!("no owner for slot {slot}")
}

/// The ids of this process's tracking connections on the node at `port`.
fn tracking_ids(cluster: &RedisCluster, port: u16) -> Vec<String> {
    let me = format!("name=ddf-near-{}-", std::process::id());
    cluster
        .cli(port, &["CLIENT", "LIST"])
        .lines()
        .filter(|l| l.contains(&me))
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect()
}

/// Moves the slot of `stored` (with the key) from the node at `fp` to the node at `tp`:
/// `SETSLOT IMPORTING`/`MIGRATING`, `MIGRATE`, then the slot given to `tp` on every node of
/// `all`.
fn reshard(cluster: &RedisCluster, stored: &str, fp: u16, tp: u16, all: &[u16]) {
    let id = |p| cluster.cli(p, &["CLUSTER", "MYID"]).trim().to_owned();
    let (from_id, to_id) = (id(fp), id(tp));
    let slot = cluster
        .cli(fp, &["CLUSTER", "KEYSLOT", stored])
        .trim()
        .to_owned();
    cluster.cli(tp, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    cluster.cli(fp, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    let tp_s = tp.to_string();
    let out = cluster.cli(
        fp,
        &[
            "MIGRATE",
            "127.0.0.1",
            &tp_s,
            "",
            "0",
            "5000",
            "KEYS",
            stored,
        ],
    );
    assert!(
        matches!(out.trim(), "OK" | "NOKEY"),
        "MIGRATE answered {out:?}"
    );
    // A while with the slot half moved (`ASK` for the migrated key), then the end.
    std::thread::sleep(Duration::from_millis(150));
    for &p in all {
        cluster.cli(p, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    }
}

/// A fourth (empty) primary, met by the cluster, known to every node, and seeing the cluster up.
fn add_node(cluster: &RedisCluster) -> ddf_testkit::RedisServer {
    let bus = ddf_testkit::free_port().to_string();
    let node = ddf_testkit::RedisServer::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-port",
        &bus,
        "--cluster-node-timeout",
        "5000",
    ])
    .unwrap();
    let port = node.port().to_string();
    let p0 = cluster.nodes[0].port();
    cluster.cli(p0, &["CLUSTER", "MEET", "127.0.0.1", &port, &bus]);
    let id = cluster
        .cli(node.port(), &["CLUSTER", "MYID"])
        .trim()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster.nodes.iter().all(|n| {
        cluster
            .cli(n.port(), &["CLUSTER", "NODES"])
            .lines()
            .any(|l| l.starts_with(&id) && !l.contains("handshake"))
    }) || !cluster
        .cli(node.port(), &["CLUSTER", "INFO"])
        .contains("cluster_state:ok")
    {
        assert!(Instant::now() < deadline, "the new node was not met");
        std::thread::sleep(Duration::from_millis(20));
    }
    node
}

#[test]
fn a_near_cache_on_a_cluster_stays_coherent_through_a_killed_tracking_connection_and_a_resharding()
{
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port()).collect();
    // One key on each primary.
    let mut keys: Vec<String> = Vec::new();
    let mut owners: Vec<usize> = Vec::new();
    for i in 0.. {
        let k = format!("k{i}");
        let o = owner(&cluster, &format!("{NS}{k}"));
        if !owners.contains(&o) {
            keys.push(k);
            owners.push(o);
        }
        if keys.len() == cluster.nodes.len() {
            break;
        }
    }
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("writes.log");
    let ports_s: Vec<String> = ports.iter().map(u16::to_string).collect();
    let job = format!(
        "{} {} 20000 {}",
        ports_s.join(","),
        keys.join(","),
        log.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let blind = std::env::var_os("DDF_NEAR_CLUSTER_BLIND").is_some_and(|v| v == "1");
    ddf::testing::internals::ignore_topology_changes(NS, blind);
    let cache = reader(config(&ports, dir.path(), true));
    let mut writer = process::child("near_cluster::writer", JOB, &job)
        .spawn()
        .unwrap();
    let began = Instant::now();
    let mut reads: Vec<(usize, ReadRec)> = Vec::with_capacity(1 << 20);
    // The faults, from another thread: the reads go on meanwhile (through the `ASK` phase of
    // the resharding too).
    let stop = std::path::PathBuf::from(format!("{}.stop", log.display()));
    let done = std::sync::OnceLock::new();
    let (steps, _added) = std::thread::scope(|s| {
        let faults = s.spawn(|| {
            let at =
                |ms| std::thread::sleep(Duration::from_millis(ms).saturating_sub(began.elapsed()));
            at(500);
            // The tracking connection to the first key's primary only.
            let port = ports[owners[0]];
            let ids = tracking_ids(&cluster, port);
            assert!(!ids.is_empty(), "no tracking connection on {port}");
            for id in ids {
                cluster.cli(port, &["CLIENT", "KILL", "ID", &id]);
            }
            at(900);
            // A slot moved between two primaries.
            let from = owners[1];
            let to = (from + 1) % cluster.nodes.len();
            reshard(
                &cluster,
                &format!("{NS}{}", keys[1]),
                ports[from],
                ports[to],
                &ports,
            );
            at(1300);
            // A node added, and a slot moved to it: it must be tracked before it holds a key.
            let node = add_node(&cluster);
            let mut all = ports.clone();
            all.push(node.port());
            let stored = format!("{NS}{}", keys[2]);
            reshard(&cluster, &stored, ports[owners[2]], node.port(), &all);
            let _ = done.set(Instant::now());
            (2, node)
        });
        let mut n = 0u64;
        loop {
            let k = (n % keys.len() as u64) as usize;
            let start = process::mono_ns();
            let version = cache.get::<u64>(&keys[k]).ok().flatten();
            if reads.len() < 4_000_000 {
                reads.push((k, ReadRec { start, version }));
            }
            n += 1;
            if n.is_multiple_of(256) {
                // The writer goes on for 0.6 s after the last fault (reads of the moved keys on
                // their new owners), however long the faults took.
                if done
                    .get()
                    .is_some_and(|d: &Instant| d.elapsed() > Duration::from_millis(600))
                {
                    let _ = std::fs::File::create(&stop);
                }
                if writer.try_wait().unwrap().is_some() {
                    break;
                }
            }
        }
        faults.join().unwrap()
    });
    let stats = cache.stats();
    process::check(writer, "the writer");
    assert_eq!(steps, 2, "not every fault was applied");
    let text = std::fs::read_to_string(&log).unwrap();
    let writes: Vec<(usize, WriteRec)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("W ")?.split(' ');
            let k = f.next()?.parse().ok()?;
            let version = f.next()?.parse().ok()?;
            let done = f.next()?.trim().parse().ok()?;
            Some((k, WriteRec { version, done }))
        })
        .collect();
    let mut bad = 0;
    for (k, key) in keys.iter().enumerate() {
        let w: Vec<WriteRec> = writes.iter().filter(|x| x.0 == k).map(|x| x.1).collect();
        let r: Vec<ReadRec> = reads.iter().filter(|x| x.0 == k).map(|x| x.1).collect();
        let stale_reads = stale(&w, &r, GRACE_NS);
        let (median, p99, max, seen) = delays(&w, &r);
        eprintln!(
            "near cluster coherence, {key} (node {}): {} writes, {} reads, {} stale by the 5 ms \
             rule; visibility delay of {seen} writes: median {median} µs, p99 {p99} µs, max {max} µs",
            owners[k],
            w.len(),
            r.len(),
            stale_reads.len()
        );
        assert!(w.len() > 100, "{key}: the writer wrote too little");
        if let Some(first) = stale_reads.first() {
            eprintln!("{key}: first stale read {first:?}");
        }
        bad += stale_reads.len();
        // The checker catches a stale read planted in these very logs.
        if let Some(last) = w.iter().max_by_key(|w| w.done) {
            let mut with = r.clone();
            with.push(ReadRec {
                start: last.done + GRACE_NS,
                version: Some(last.version.saturating_sub(1)),
            });
            assert_eq!(
                stale(&w, &with, GRACE_NS).len(),
                stale_reads.len() + 1,
                "the checker missed a planted stale read"
            );
        }
    }
    eprintln!("near cluster: {stats}");
    assert_eq!(bad, 0, "stale reads: {stats}");
    assert!(stats.near_hits > 0, "the near cache never served: {stats}");
    assert!(
        stats.near_resets_lost >= 1,
        "the killed tracking connection was not seen: {stats}"
    );
    // At least the first resharding ends a live session. The node added may not count: while
    // the masters' views disagree (the new node's gossip spreading) no session is set up, so
    // a change seen then resets nothing (the near cache is bypassed already).
    assert!(
        blind || stats.near_resets_topology >= 1,
        "the resharding was not seen: {stats}"
    );
    drop(cache);
    ddf::testing::internals::ignore_topology_changes(NS, false);
    writes_by_anyone_evict_and_the_async_face_is_tracked_too(&cluster);
}

/// Reads `key` until the near cache serves it (tracking set up on every master), at most 10 s.
fn until_near_hit(cache: &CacheManager, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = cache.stats().near_hits;
        let _ = cache.get::<String>(key);
        if cache.stats().near_hits > before {
            return;
        }
        assert!(Instant::now() < deadline, "never served: {}", cache.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Writes by anyone on any primary (redis-cli on the key's node), this cache's
/// `invalidate_pattern` and `flush_all`, and the async face, on a cluster: the near cache
/// evicts and resets as on one server. Run on the coherence test's cluster (one start less).
fn writes_by_anyone_evict_and_the_async_face_is_tracked_too(cluster: &RedisCluster) {
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port()).collect();
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(config(&ports, dir.path(), true)).unwrap();
    let keys: Vec<String> = (0..12).map(|i| format!("e{i}")).collect();
    for k in &keys {
        cache.set(k, "old", None).unwrap();
    }
    for k in &keys {
        until_near_hit(&cache, k);
    }
    // Every key rewritten by redis-cli on its own node (raw bytes: a JSON string).
    for k in &keys {
        let stored = format!("{NS}{k}");
        let port = ports[owner(cluster, &stored)];
        cluster.cli(port, &["SET", &stored, "\"new\""]);
    }
    for k in &keys {
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.get::<String>(k).unwrap().as_deref() != Some("new") {
            assert!(
                Instant::now() < deadline,
                "{k} stayed stale: {}",
                cache.stats()
            );
        }
    }
    assert!(
        cache.stats().near_evictions >= keys.len() as u64,
        "{}",
        cache.stats()
    );
    until_near_hit(&cache, &keys[0]);
    cache.invalidate_pattern("e").unwrap();
    assert_eq!(cache.get::<String>(&keys[0]).unwrap(), None);
    cache.set(&keys[1], "x", None).unwrap();
    until_near_hit(&cache, &keys[1]);
    cache.flush_all().unwrap();
    assert_eq!(cache.get::<String>(&keys[1]).unwrap(), None);
    assert!(cache.stats().near_resets_flush >= 1, "{}", cache.stats());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let a = ddf::AsyncCacheManager::new(config(&ports, dir.path(), true)).unwrap();
        a.set("a1", "v", None).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.stats().near_hits == 0 {
            assert!(Instant::now() < deadline, "never served: {}", a.stats());
            let _ = a.get::<String>("a1").await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stored = format!("{NS}a1");
        cluster.cli(ports[owner(cluster, &stored)], &["SET", &stored, "\"w\""]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while a.get::<String>("a1").await.unwrap().as_deref() != Some("w") {
            assert!(Instant::now() < deadline, "stale: {}", a.stats());
        }
    });
}
