//! A Redis Cluster through the breaker per primary (issue #14 point 1), against a real
//! 3-primary cluster: the conformance suite, one primary stopped (SIGSTOP: the healthy
//! primaries keep their keys, the stopped one's go to the fallback and are replayed when it
//! returns), and a resharded slot (`ASK` during the migration, `MOVED` after it). Prints the
//! figures of the outage (`--nocapture`: "cluster outage: ..."); asserts counts and generous
//! "does not hang" bounds, never speed.

use std::time::{Duration, Instant};

use ddf::{CacheConfig, CacheManager, FallbackMode, ServerAddr};
use ddf_testkit::RedisCluster;
use ddf_testkit::model::{self, Op, Outcome};

use crate::conformance::{self, Caps};
use crate::redis_config::{Redis, redis};

const CONNECT: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_millis(500);
/// A call that takes longer than this hung (far above the timeouts: the machine is shared).
const HANG: Duration = Duration::from_secs(30);
/// What a bounded call may take beyond its bound on a loaded machine (the bound is what the
/// assertion shows; the margin keeps a noisy CI from failing it).
const SLACK: Duration = Duration::from_secs(5);

/// Keys of the run.
const N: usize = 60;

fn config(cluster: &RedisCluster, dir: &std::path::Path) -> CacheConfig {
    let mut c = redis(
        Redis::Cluster(&cluster.addrs()),
        "rc:",
        dir,
        CONNECT,
        TIMEOUT,
    );
    c.fallback = FallbackMode::Pickle;
    c
}

/// A cluster whose healthy primaries keep serving their slots while one is down (by default a
/// cluster refuses every key once a primary is marked failed, after `cluster-node-timeout`).
fn cluster() -> Option<RedisCluster> {
    let cluster = RedisCluster::start()?;
    for n in &cluster.nodes {
        cluster.cli(
            n.port(),
            &["CONFIG", "SET", "cluster-require-full-coverage", "no"],
        );
    }
    Some(cluster)
}

/// The node (index) that owns the namespaced `key`.
fn owner(cluster: &RedisCluster, key: &str) -> usize {
    let slot: u16 = cluster
        .cli(cluster.nodes[0].port(), &["CLUSTER", "KEYSLOT", key])
        .trim()
        .parse()
        .unwrap();
    let slots = cluster.cli(cluster.nodes[0].port(), &["CLUSTER", "SLOTS"]);
    // redis-cli prints each range as start, end, ip, port, id... one per line.
    let lines: Vec<&str> = slots.lines().map(str::trim).collect();
    let mut i = 0;
    while i + 3 < lines.len() {
        if let (Ok(start), Ok(end)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>())
            && lines[i + 2] == "127.0.0.1"
            && let Ok(port) = lines[i + 3].parse::<u16>()
        {
            if (start..=end).contains(&slot) {
                return cluster.nodes.iter().position(|n| n.port() == port).unwrap();
            }
            i += 4;
        } else {
            i += 1;
        }
    }
    panic!("no owner for slot {slot} in {slots}")
}

/// [`row`] of an async cache.
fn arow(rt: &tokio::runtime::Runtime, cache: &ddf::AsyncCacheManager, name: &str) -> String {
    rt.block_on(cache.backend_info())
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

fn row(cache: &CacheManager, name: &str) -> String {
    cache
        .backend_info()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// Waits (at most 30 s) until every primary's breaker is closed again.
fn wait_up(cache: &CacheManager) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while row(cache, "state") != "up" {
        let _ = cache.get::<String>("wait:probe");
        assert!(Instant::now() < deadline, "{}", row(cache, "state"));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

/// One primary of three stopped: the time of a first `get` and of a `set_many` of 20 in a new
/// cache, and how many keys of the two healthy primaries are still written to and read from
/// their servers.
#[test]
fn one_stopped_primary_of_three() {
    let Some(cluster) = cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&cluster, dir.path());
    let keys: Vec<String> = (0..N).map(|i| format!("k{i}")).collect();
    let owners: Vec<usize> = keys
        .iter()
        .map(|k| owner(&cluster, &format!("rc:{k}")))
        .collect();
    // The first listed node: the slot map must come from another one.
    let stopped = 0;
    let healthy = owners.iter().filter(|&&o| o != stopped).count();
    {
        let cache = CacheManager::new(cfg.clone()).unwrap();
        for k in &keys {
            cache.set(k, &format!("before-{k}"), None).unwrap();
        }
    }
    cluster.nodes[stopped].process.signal("STOP");
    let (cache, new_took) = timed(|| CacheManager::new(cfg.clone()).unwrap());
    // The first call of the new cache reads a key of the stopped primary.
    let on_stopped = owners.iter().position(|&o| o == stopped).unwrap();
    let (first, first_took) = timed(|| cache.get::<String>(&keys[on_stopped]));
    let items: Vec<(String, String)> = keys[..20]
        .iter()
        .map(|k| (k.clone(), format!("many-{k}")))
        .collect();
    let refs: Vec<(&str, &String)> = items.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let (many, many_took) = timed(|| cache.set_many(&refs, None));
    assert!(first_took < HANG && many_took < HANG, "a call hung");
    // Every key written during the outage; those of healthy primaries must reach their server.
    let mut worst = Duration::ZERO;
    for k in &keys {
        let (r, took) = timed(|| cache.set(k, &format!("during-{k}"), None));
        worst = worst.max(took);
        assert!(took < HANG, "set {k} hung");
        r.unwrap();
    }
    let mut on_server = 0;
    let mut read_back = 0;
    for (k, &o) in keys.iter().zip(&owners) {
        if o == stopped {
            continue;
        }
        let v = cluster.cli(cluster.nodes[o].port(), &["GET", &format!("rc:{k}")]);
        if v.contains(&format!("during-{k}")) {
            on_server += 1;
        }
        if cache.get::<String>(k).unwrap().as_deref() == Some(&format!("during-{k}")) {
            read_back += 1;
        }
    }
    // The stopped primary's keys: served by the fallback, their deletes recorded.
    let mut from_fallback = 0;
    for (k, &o) in keys.iter().zip(&owners) {
        if o == stopped
            && cache.get::<String>(k).unwrap().as_deref() == Some(&format!("during-{k}"))
        {
            from_fallback += 1;
        }
    }
    let label = cluster.addrs()[stopped].clone();
    let state = row(&cache, &format!("server.{label}.state"));
    let pending: u64 = row(&cache, "recorded invalidations pending")
        .parse()
        .unwrap_or(0);
    // The async face over the same outage (its own breakers, sharing the journal): keys of
    // healthy primaries to their server, the stopped one's to the fallback, a delete recorded.
    let rt = crate::aio_face::runtime();
    let acache = ddf::AsyncCacheManager::new(cfg.clone()).unwrap();
    let (mut a_on_server, mut a_from_fallback) = (0, 0);
    for (k, &o) in keys.iter().zip(&owners) {
        let v = format!("async-{k}");
        rt.block_on(acache.set(k, &v, None)).unwrap();
        let got = rt.block_on(acache.get::<String>(k)).unwrap();
        if o == stopped {
            a_from_fallback += usize::from(got.as_deref() == Some(v.as_str()));
        } else if cluster
            .cli(cluster.nodes[o].port(), &["GET", &format!("rc:{k}")])
            .contains(&v)
            && got.as_deref() == Some(v.as_str())
        {
            a_on_server += 1;
        }
    }
    let victim = &keys[on_stopped];
    rt.block_on(acache.delete(victim)).unwrap();
    let a_state = arow(&rt, &acache, &format!("server.{label}.state"));
    cluster.nodes[stopped].process.signal("CONT");
    assert_eq!(a_on_server, healthy, "async: keys of healthy primaries");
    assert_eq!(
        a_from_fallback,
        N - healthy,
        "async: the stopped primary's keys"
    );
    assert!(a_state.starts_with("down"), "async: {a_state}");
    assert_eq!(
        on_server, healthy,
        "keys of healthy primaries left their server"
    );
    assert_eq!(read_back, healthy);
    assert_eq!(from_fallback, N - healthy, "the stopped primary's keys");
    assert!(state.starts_with("down"), "{state}");
    assert!(pending > 0, "nothing recorded for the stopped primary");
    // Its return: the recorded deletes are replayed before it serves again, so the value it
    // held from before the outage is never read.
    wait_up(&cache);
    for (k, &o) in keys.iter().zip(&owners) {
        if o != stopped {
            continue;
        }
        let on_node = cluster.cli(cluster.nodes[o].port(), &["GET", &format!("rc:{k}")]);
        assert!(!on_node.contains("before-"), "{k} not replayed: {on_node}");
        let v = cache.get::<String>(k).unwrap();
        assert!(v.is_none(), "{k} after the return: {v:?}");
    }
    // The async face's delete recorded during the outage was applied: no stale read there.
    let deadline = Instant::now() + Duration::from_secs(30);
    while arow(&rt, &acache, "state") != "up" {
        let _ = rt.block_on(acache.get::<String>("wait:probe"));
        assert!(
            Instant::now() < deadline,
            "async: {}",
            arow(&rt, &acache, "state")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let v = rt.block_on(acache.get::<String>(victim)).unwrap();
    assert!(v.is_none(), "async: {victim} after the return: {v:?}");
    eprintln!(
        "cluster outage: new cache {new_took:?}, first get (a key of the stopped primary) \
         {first_took:?} ({}), set_many of 20 {many_took:?} ({}), \
         worst set {worst:?}; keys of healthy primaries written to their server during the \
         outage: {on_server} of {healthy}, read back: {read_back} of {healthy}",
        if first.is_ok() { "ok" } else { "error" },
        if many.is_ok() { "ok" } else { "error" },
    );
}

/// The conformance suite through the breaker per primary (what `CacheManager::new` builds),
/// and a prefix invalidation that spans every primary.
#[test]
fn conformance_through_the_breaker_per_primary() {
    let Some(cluster) = cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&cluster, dir.path());
    conformance::run(
        &|ns| CacheManager::new(cfg.clone().with_namespace(ns)).unwrap(),
        Caps::default(),
    );
    let cache = CacheManager::new(cfg.clone()).unwrap();
    for i in 0..300 {
        cache.set(&format!("spread:{i}"), &i, None).unwrap();
    }
    for n in &cluster.nodes {
        let dbsize: u64 = cluster.cli(n.port(), &["DBSIZE"]).trim().parse().unwrap();
        assert!(dbsize > 0, "node {} holds none of the keys", n.port());
    }
    // Listing (`ddf-cache keys`) reaches every primary, sorted, bounded by the limit.
    let listed = cache.keys("spread:", 1000).unwrap();
    assert_eq!(listed.len(), 300);
    assert!(listed.windows(2).all(|w| w[0].key < w[1].key));
    assert_eq!(cache.keys("spread:", 10).unwrap().len(), 10);
    assert_eq!(cache.invalidate_pattern("spread:").unwrap(), 300);
    assert_eq!(row(&cache, "state"), "up");
}

/// One slot moved from its primary to another while a cache runs: `ASK` during the migration,
/// `MOVED` after it; every read is right and the writes land on the new owner.
#[test]
fn a_resharded_slot_still_reads_right() {
    let Some(cluster) = cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(config(&cluster, dir.path())).unwrap();
    // The async face too, natively: its slot map read before the migration.
    let rt = crate::aio_face::runtime();
    let acache = ddf::AsyncCacheManager::new(config(&cluster, dir.path())).unwrap();
    let aget = |k: &str| rt.block_on(acache.get::<String>(k)).unwrap();
    let (key, stored) = ("moving", "rc:moving");
    cache.set(key, &"v1", None).unwrap();
    assert_eq!(aget(key).as_deref(), Some("v1"));
    let from = owner(&cluster, stored);
    let to = (from + 1) % 3;
    let slot = start_migration(&cluster, stored, from, to);
    // Mid-migration: the old owner answers ASK for a key it no longer has.
    assert_eq!(cache.get::<String>(key).unwrap().as_deref(), Some("v1"));
    // The async face: ASK on a lone GET (the caller-driven connection) and in a batch (a
    // pipeline with ASKING).
    assert_eq!(aget(key).as_deref(), Some("v1"));
    let many = rt.block_on(acache.get_many::<String>(&[key, "other"]));
    assert_eq!(many.unwrap(), vec![Some("v1".to_owned()), None]);
    end_migration(&cluster, &slot, to);
    // After: MOVED, the map is read again, and the key's reads and writes go to the new owner.
    assert_eq!(cache.get::<String>(key).unwrap().as_deref(), Some("v1"));
    cache.set(key, &"v2", None).unwrap();
    assert!(
        cluster
            .cli(cluster.nodes[to].port(), &["GET", stored])
            .contains("v2")
    );
    assert_eq!(cache.get::<String>(key).unwrap().as_deref(), Some("v2"));
    assert!(cache.delete(key).unwrap());
    assert_eq!(cache.get::<String>(key).unwrap(), None);
    assert_eq!(row(&cache, "state"), "up");
    // MOVED on the async face (its map still the one from before): it reads the map again,
    // and its reads and writes go to the new owner.
    assert_eq!(aget(key), None);
    rt.block_on(acache.set(key, &"a1", None)).unwrap();
    assert!(
        cluster
            .cli(cluster.nodes[to].port(), &["GET", stored])
            .contains("a1")
    );
    assert_eq!(cache.get::<String>(key).unwrap().as_deref(), Some("a1"));
    assert_eq!(aget(key).as_deref(), Some("a1"));
    assert_eq!(arow(&rt, &acache, "state"), "up");
}

/// Starts moving the slot of `stored` (a key as stored) from node `from` to node `to`, the
/// key migrated: `ASK` from the old owner until [`end_migration`]. The slot.
fn start_migration(cluster: &RedisCluster, stored: &str, from: usize, to: usize) -> String {
    let (fp, tp) = (cluster.nodes[from].port(), cluster.nodes[to].port());
    let id = |p| cluster.cli(p, &["CLUSTER", "MYID"]).trim().to_owned();
    let (from_id, to_id) = (id(fp), id(tp));
    let slot = cluster
        .cli(fp, &["CLUSTER", "KEYSLOT", stored])
        .trim()
        .to_owned();
    cluster.cli(tp, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    cluster.cli(fp, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    let out = cluster.cli(
        fp,
        &[
            "MIGRATE",
            "127.0.0.1",
            &tp.to_string(),
            "",
            "0",
            "5000",
            "KEYS",
            stored,
        ],
    );
    assert_eq!(out.trim(), "OK", "MIGRATE (NOKEY: the key is not there)");
    slot
}

/// Gives `slot` to node `to` on every node (the end of a resharding: `MOVED` from then on).
fn end_migration(cluster: &RedisCluster, slot: &str, to: usize) {
    let to_id = cluster
        .cli(cluster.nodes[to].port(), &["CLUSTER", "MYID"])
        .trim()
        .to_owned();
    for n in &cluster.nodes {
        cluster.cli(n.port(), &["CLUSTER", "SETSLOT", slot, "NODE", &to_id]);
    }
}

/// A slot resharded while its scope is down here with a delete recorded (the node was cut off
/// from this host, not from the cluster): the slot stays in its scope, whose fallback answers,
/// until that scope has replayed; the new owner's scope, up, never serves the deleted value.
#[test]
fn a_slot_resharded_during_an_outage_stays_with_its_records() {
    let Some(cluster) = cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&cluster, dir.path());
    // The stopped node's scope stays down for the whole test once it has failed.
    cfg.breaker_retry = Duration::from_secs(120);
    let cache = CacheManager::new(cfg).unwrap();
    let (key, stored) = ("resharded", "rc:resharded");
    let from = owner(&cluster, stored);
    let to = (from + 1) % 3;
    cluster.nodes[from].process.signal("STOP");
    let (r, took) = timed(|| cache.delete(key));
    cluster.nodes[from].process.signal("CONT");
    assert!(took < HANG, "delete hung");
    r.unwrap();
    assert_eq!(row(&cache, "recorded invalidations pending"), "1");
    // The stopped node ran the delete once resumed (it was in its socket): put the value
    // back as a delete that never arrived would have left it (another cache, its own journal).
    let other = tempfile::tempdir().unwrap();
    CacheManager::new(config(&cluster, other.path()))
        .unwrap()
        .set(key, &"old", None)
        .unwrap();
    let slot = start_migration(&cluster, stored, from, to);
    end_migration(&cluster, &slot, to);
    assert!(
        cluster
            .cli(cluster.nodes[to].port(), &["GET", stored])
            .contains("old")
    );
    // `ping` reads the map again (every probe does): the new owner's scope is up.
    let _ = cache.ping();
    assert_eq!(
        cache.get::<String>(key).unwrap(),
        None,
        "the deleted value was read through the new owner's scope"
    );

    // A prefix delete recorded in the old scope (still down here), then its key's slot
    // resharded, then a new cache (a process that never saw the move: its first map places
    // the key in the new owner's scope at once). The record is replayed on the old scope's
    // nodes only, so the new scope must apply it on its own before it serves the key.
    let pkey = (0..1000)
        .map(|i| format!("pfx:{i}"))
        .find(|k| owner(&cluster, &format!("rc:{k}")) == from)
        .unwrap();
    let pstored = format!("rc:{pkey}");
    CacheManager::new(config(&cluster, other.path()))
        .unwrap()
        .set(&pkey, &"old", None)
        .unwrap();
    cache.invalidate_pattern("pfx:").unwrap();
    let slot = start_migration(&cluster, &pstored, from, to);
    end_migration(&cluster, &slot, to);
    let fresh = CacheManager::new(config(&cluster, dir.path())).unwrap();
    assert_eq!(
        fresh.get::<String>(&pkey).unwrap(),
        None,
        "a prefix delete recorded before the resharding was read past in a new process"
    );
}

/// Two processes on either side of a resharding: one (`late`) still places a key in its old
/// scope, the other (`moved`) in its new owner's. With the old owner stopped and down in both,
/// `late`'s delete of the key fails and is recorded in the old scope; `moved` reads the key
/// from its new owner, where the value is still there. `moved`'s probe of the old scope, which
/// cannot replay (its node is stopped), applies the recorded delete through the scope that now
/// holds the key: the deleted value is gone within a few probes. Before, it was read until the
/// old owner answered again.
#[test]
fn a_delete_recorded_by_a_process_that_missed_a_resharding_is_not_read_stale() {
    let Some(cluster) = cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&cluster, dir.path());
    cfg.breaker_failures = 1;
    let (key, stored) = ("crossed", "rc:crossed");
    let from = owner(&cluster, stored);
    let to = (from + 1) % 3;
    let other_key = (0..1000)
        .map(|i| format!("other{i}"))
        .find(|k| owner(&cluster, &format!("rc:{k}")) == from)
        .unwrap();
    let late = CacheManager::new(cfg.clone()).unwrap();
    late.set(key, &"old", None).unwrap();
    let slot = start_migration(&cluster, stored, from, to);
    end_migration(&cluster, &slot, to);
    // Built after the resharding: its first map places the key with its new owner.
    let moved = CacheManager::new(cfg).unwrap();
    assert_eq!(moved.get::<String>(key).unwrap().as_deref(), Some("old"));
    cluster.nodes[from].process.signal("STOP");
    // The old owner's scope goes down in both processes; `late` records its delete there.
    let _ = moved.get::<String>(&other_key);
    let (r, took) = timed(|| late.delete(key));
    let pending = row(&late, "recorded invalidations pending");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut read = moved.get::<String>(key);
    while matches!(read, Ok(Some(_))) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        read = moved.get::<String>(key);
    }
    cluster.nodes[from].process.signal("CONT");
    assert!(took < HANG, "delete hung");
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(pending, "1");
    assert!(
        matches!(read, Ok(None)),
        "the deleted value is still read through the new owner's scope: {read:?}"
    );
}

/// `CLUSTER SLOTS` calls a node has served since its statistics were reset.
fn cluster_slots_calls(cluster: &RedisCluster, node: usize) -> u64 {
    let stats = cluster.cli(cluster.nodes[node].port(), &["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.trim().strip_prefix("cmdstat_cluster|slots:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A batch whose keys all met `MOVED` (their slot resharded): the map is read once, not once
/// per key, and every key is read, written and deleted on the new owner; `meta` follows
/// `MOVED` too.
#[test]
fn a_batch_in_a_moved_slot_reads_the_map_once() {
    let Some(cluster) = cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(config(&cluster, dir.path())).unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("{{mv}}:{i}")).collect();
    for k in &keys {
        cache.set(k, &format!("v-{k}"), None).unwrap();
    }
    let from = owner(&cluster, "rc:{mv}:0");
    let to = (from + 1) % 3;
    let (fp, tp) = (cluster.nodes[from].port(), cluster.nodes[to].port());
    let slot = start_migration(&cluster, "rc:{mv}:0", from, to);
    let mut migrate = vec!["MIGRATE", "127.0.0.1"];
    let tp_text = tp.to_string();
    migrate.extend([tp_text.as_str(), "", "0", "5000", "KEYS"]);
    let stored: Vec<String> = keys.iter().map(|k| format!("rc:{k}")).collect();
    migrate.extend(stored.iter().skip(1).map(String::as_str));
    assert_eq!(cluster.cli(fp, &migrate).trim(), "OK");
    end_migration(&cluster, &slot, to);
    cluster.cli(tp, &["CONFIG", "RESETSTAT"]);
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let got = cache.get_many::<String>(&refs).unwrap();
    assert_eq!(got.len(), 20);
    for (k, v) in keys.iter().zip(&got) {
        assert_eq!(v.as_deref(), Some(format!("v-{k}").as_str()), "{k}");
    }
    let calls = cluster_slots_calls(&cluster, to);
    // One after the MOVEDs; the probes may read it once or twice meanwhile (not 20).
    assert!((1..=3).contains(&calls), "CLUSTER SLOTS read {calls} times");
    // The slot moves back (its first key with it): `meta` meets MOVED and follows it.
    let slot = start_migration(&cluster, "rc:{mv}:0", to, from);
    end_migration(&cluster, &slot, from);
    assert!(cache.get_meta(&keys[0]).unwrap().is_some());
    assert_eq!(row(&cache, "state"), "up");
}

/// A node joins the cluster and imports its first slot: until the migration ends it is in no
/// `CLUSTER SLOTS` range, yet holds the keys already moved to it. A prefix invalidation meanwhile
/// reaches them (the old owner names the node it migrates to), so none is read afterwards.
#[test]
fn a_prefix_invalidation_reaches_a_new_node_importing_its_first_slot() {
    let Some(cluster) = cluster() else {
        return;
    };
    let bus = ddf_testkit::free_port().to_string();
    let new = ddf_testkit::RedisServer::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-port",
        &bus,
        "--cluster-require-full-coverage",
        "no",
    ])
    .unwrap();
    let np = new.port();
    let cli = |port, args: &[&str]| cluster.cli(port, args);
    let p0 = cluster.nodes[0].port();
    let p0bus = cli(p0, &["CLUSTER", "NODES"])
        .lines()
        .find(|l| l.contains("myself"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|a| a.split(['@', ',']).nth(1))
        .unwrap()
        .to_owned();
    cli(
        np,
        &["CLUSTER", "MEET", "127.0.0.1", &p0.to_string(), &p0bus],
    );
    let new_id = cli(np, &["CLUSTER", "MYID"]).trim().to_owned();
    eventually("the new node is known to every node", || {
        cluster
            .nodes
            .iter()
            .all(|n| cli(n.port(), &["CLUSTER", "NODES"]).contains(&new_id))
    });
    eventually("the new node sees the cluster up", || {
        cli(np, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
    });
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(config(&cluster, dir.path())).unwrap();
    let keys: Vec<String> = (0..5).map(|i| format!("imp:{{t}}{i}")).collect();
    for k in &keys {
        cache.set(k, &"v", None).unwrap();
    }
    let from = owner(&cluster, "rc:imp:{t}0");
    let fp = cluster.nodes[from].port();
    let from_id = cli(fp, &["CLUSTER", "MYID"]).trim().to_owned();
    let slot = cli(fp, &["CLUSTER", "KEYSLOT", "rc:imp:{t}0"])
        .trim()
        .to_owned();
    cli(np, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    cli(fp, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &new_id]);
    // Two keys moved so far.
    let out = cli(
        fp,
        &[
            "MIGRATE",
            "127.0.0.1",
            &np.to_string(),
            "",
            "0",
            "5000",
            "KEYS",
            "rc:imp:{t}0",
            "rc:imp:{t}1",
        ],
    );
    assert_eq!(out.trim(), "OK", "MIGRATE (NOKEY: the key is not there)");
    assert_eq!(cache.invalidate_pattern("imp:").unwrap(), 5);
    assert_eq!(cli(np, &["DBSIZE"]).trim(), "0");
    for n in cluster.nodes.iter().map(|n| n.port()).chain([np]) {
        cli(n, &["CLUSTER", "SETSLOT", &slot, "NODE", &new_id]);
    }
    for k in &keys {
        assert_eq!(cache.get::<String>(k).unwrap(), None, "{k}");
    }
}

/// Polls `f` every 50 ms for at most 30 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A failover: a primary is stopped, a key of its deleted during the outage (recorded in its
/// scope), then its replica takes over holding the old value. The scope follows its slots to
/// the promoted replica: the recorded delete is replayed there before the scope serves again,
/// so the old value is never read.
#[test]
fn a_failover_replays_the_old_primarys_records_on_the_promoted_replica() {
    failover(false);
}

/// [`a_failover_replays_the_old_primarys_records_on_the_promoted_replica`] with the replica
/// listed in `redis_cluster_nodes` (a scope of its own, which must not take the keys over).
#[test]
fn a_failover_to_a_listed_replica_keeps_the_records_with_the_keys() {
    failover(true);
}

fn failover(replica_listed: bool) {
    let Some(cluster) = cluster() else {
        return;
    };
    let (p, pport) = (0, cluster.nodes[0].port());
    let bus = ddf_testkit::free_port().to_string();
    let replica = ddf_testkit::RedisServer::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-port",
        &bus,
        "--cluster-node-timeout",
        "5000",
        "--cluster-require-full-coverage",
        "no",
    ])
    .unwrap();
    let rport = replica.port();
    let cli = |port, args: &[&str]| cluster.cli(port, args);
    let pid = cli(pport, &["CLUSTER", "MYID"]).trim().to_owned();
    let pbus = cli(pport, &["CLUSTER", "NODES"])
        .lines()
        .find(|l| l.contains("myself"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|a| a.split(['@', ',']).nth(1))
        .unwrap()
        .to_owned();
    cli(
        rport,
        &["CLUSTER", "MEET", "127.0.0.1", &pport.to_string(), &pbus],
    );
    eventually("the replica meets the cluster", || {
        cli(rport, &["CLUSTER", "NODES"]).contains(&pid)
    });
    eventually("CLUSTER REPLICATE", || {
        cli(rport, &["CLUSTER", "REPLICATE", &pid]).contains("OK")
    });
    eventually("the replica is in sync", || {
        cli(rport, &["INFO", "replication"]).contains("master_link_status:up")
    });

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&cluster, dir.path());
    if replica_listed {
        cfg.redis_cluster_nodes
            .push(ServerAddr::parse(&format!("127.0.0.1:{rport}"), 6379).unwrap());
    }
    let cache = CacheManager::new(cfg).unwrap();
    let key = (0..)
        .map(|i| format!("fo{i}"))
        .find(|k| owner(&cluster, &format!("rc:{k}")) == p)
        .unwrap();
    let stored = format!("rc:{key}");
    cache.set(&key, &"old", None).unwrap();
    assert!(
        cli(pport, &["WAIT", "1", "5000"]).trim() == "1",
        "not replicated"
    );

    cluster.nodes[p].process.signal("STOP");
    let (r, took) = timed(|| cache.delete(&key));
    assert!(took < HANG, "delete hung");
    r.unwrap();
    assert_eq!(cache.get::<String>(&key).unwrap(), None);
    // The replica, which still holds the old value, takes over the stopped primary's slots.
    cli(rport, &["CLUSTER", "FAILOVER", "TAKEOVER"]);
    eventually("the replica is promoted", || {
        cli(rport, &["ROLE"]).starts_with("master")
    });
    wait_up(&cache);
    let on_replica = cli(rport, &["GET", &stored]);
    cluster.nodes[p].process.signal("CONT");
    assert!(
        !on_replica.contains("old"),
        "the recorded delete was not replayed on the promoted replica: {on_replica}"
    );
    assert_eq!(cache.get::<String>(&key).unwrap(), None);
    // The scope now serves through the promoted replica.
    cache.set(&key, &"new", None).unwrap();
    assert!(cli(rport, &["GET", &stored]).contains("new"));
    assert_eq!(cache.get::<String>(&key).unwrap().as_deref(), Some("new"));
    // A prefix invalidation reaches the promoted replica once (a listed replica's own scope
    // holds no slot and scans nothing).
    assert_eq!(cache.invalidate_pattern("fo").unwrap(), 1);
    assert_eq!(cache.get::<String>(&key).unwrap(), None);
}

/// For the record (`--nocapture`, no assertion on speed): single `get`s and batches on a
/// healthy cluster through the breaker per primary, beside redis-rs's cluster connection (the
/// bare backend of before), in the same run.
#[test]
fn healthy_cluster_figures() {
    let Some(cluster) = cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&cluster, dir.path());
    let per_primary = CacheManager::new(cfg.clone()).unwrap();
    let bare = CacheManager::with_backend(
        cfg.clone(),
        std::sync::Arc::new(ddf::testing::internals::RedisBackend::from_config(&cfg).unwrap()),
    );
    let keys: Vec<String> = (0..100).map(|i| format!("h{i}")).collect();
    let items: Vec<(&str, u32)> = keys.iter().map(|k| (k.as_str(), 7)).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut line = String::new();
    for (name, cache) in [("per primary", &per_primary), ("redis-rs cluster", &bare)] {
        cache.set_many(&items, None).unwrap();
        let (_, gets) = timed(|| {
            for _ in 0..5 {
                for k in &keys {
                    cache.get::<u32>(k).unwrap();
                }
            }
        });
        let (_, batches) = timed(|| {
            for _ in 0..20 {
                cache.get_many::<u32>(&refs).unwrap();
                cache.set_many(&items, None).unwrap();
            }
        });
        line.push_str(&format!(
            "{name}: get {:?}/op, get_many+set_many of 100 {:?}/pair; ",
            gets / 500,
            batches / 20
        ));
    }
    eprintln!("healthy cluster (debug build): {line}");
}

/// Every call of a model run, as the reference model's operations.
struct History {
    origin: Instant,
    ops: std::sync::Mutex<Vec<Op>>,
}

impl History {
    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Runs `f`, checks it did not hang, records what `op` makes of its result.
    fn record<T>(
        &self,
        f: impl FnOnce() -> ddf::Result<T>,
        op: impl FnOnce(u64, u64, &ddf::Result<T>) -> Op,
    ) {
        let start = self.now();
        let r = f();
        let end = self.now();
        assert!(end - start < HANG.as_nanos() as u64, "a call hung");
        self.ops.lock().unwrap().push(op(start, end, &r));
    }
}

fn outcome<T>(r: &ddf::Result<T>) -> Option<Outcome> {
    r.as_ref().err().map(|e| Outcome::Err(e.to_string()))
}

/// Three threads make random calls (`get`, `set`, `delete`, `invalidate_pattern`) while one
/// primary of three is stopped (SIGSTOP) and then continued; every read of the run, through
/// the outage and after the return, is checked against the reference model: no stale read.
/// The checker is shown to catch a stale read planted in the same history.
#[test]
fn model_checked_run_with_a_stopped_primary() {
    let Some(cluster) = cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(config(&cluster, dir.path())).unwrap();
    let h = History {
        origin: Instant::now(),
        ops: std::sync::Mutex::new(Vec::new()),
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let keys: Vec<String> = (0..90).map(|i| format!("k{i}")).collect();
    std::thread::scope(|s| {
        for t in 0..3u32 {
            let (cache, h, stop, keys) = (&cache, &h, &stop, &keys);
            s.spawn(move || {
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(t + 1);
                let mut seq = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = &keys[(x % keys.len() as u64) as usize];
                    match (x >> 32) % 20 {
                        0..=9 => h.record(
                            || cache.get::<String>(key),
                            |a, b, r| {
                                let o = match r {
                                    Ok(v) => Outcome::Ok(v.clone()),
                                    Err(e) => Outcome::Err(e.to_string()),
                                };
                                Op::get(t, key, o, a, b)
                            },
                        ),
                        10..=15 => {
                            seq += 1;
                            let v = format!("t{t}-{seq}");
                            h.record(
                                || cache.set(key, &v, None),
                                |a, b, r| {
                                    let op = Op::set(t, key, &v, a, b);
                                    outcome(r).map_or(op.clone(), |o| op.with(o))
                                },
                            );
                        }
                        16..=18 => h.record(
                            || cache.delete(key),
                            |a, b, r| {
                                let op = Op::delete(t, key, a, b);
                                outcome(r).map_or(op.clone(), |o| op.with(o))
                            },
                        ),
                        _ => {
                            let prefix = &key[..2];
                            h.record(
                                || cache.invalidate_pattern(prefix),
                                |a, b, r| {
                                    let op = Op::invalidate_pattern(t, prefix, a, b);
                                    outcome(r).map_or(op.clone(), |o| op.with(o))
                                },
                            );
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(1));
        cluster.nodes[1].process.signal("STOP");
        std::thread::sleep(Duration::from_secs(3));
        cluster.nodes[1].process.signal("CONT");
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    wait_up(&cache);
    for key in &keys {
        h.record(
            || cache.get::<String>(key),
            |a, b, r| {
                let o = match r {
                    Ok(v) => Outcome::Ok(v.clone()),
                    Err(e) => Outcome::Err(e.to_string()),
                };
                Op::get(9, key, o, a, b)
            },
        );
    }
    let history = h.ops.lock().unwrap().clone();
    let report = model::check(&history);
    eprintln!(
        "cluster model run: {} operations checked: {} hits, {} misses, {} errors",
        history.len(),
        report.hits,
        report.misses,
        report.errors
    );
    assert!(report.is_ok(), "{}", report.render(&history, 10));
    // A stale read planted at the end (the first value ever written to a key, which was
    // overwritten or removed since) is caught.
    let (key, first) = history
        .iter()
        .find_map(|o| match &o.action {
            model::Action::Set { key, value } if o.ok() => Some((key.clone(), value.clone())),
            _ => None,
        })
        .unwrap();
    let t = h.now();
    let mut planted = history.clone();
    planted.push(Op::delete(8, &key, t + 1, t + 2));
    planted.push(Op::get(8, &key, Outcome::Ok(Some(first)), t + 3, t + 4));
    assert!(!model::check(&planted).is_ok());
}

/// Every primary stopped: a cache built during the outage and its first calls do not hang (the
/// figures are printed: the first call waits at most one `connect_timeout` + `timeout` for the slot
/// map; each primary's first failure costs one timeout).
#[test]
fn every_primary_stopped() {
    let Some(cluster) = cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&cluster, dir.path());
    for n in &cluster.nodes {
        n.process.signal("STOP");
    }
    let (cache, new_took) = timed(|| CacheManager::new(cfg.clone()).unwrap());
    let (got, get_took) = timed(|| cache.get::<String>("k1"));
    let items: Vec<(String, u32)> = (0..20).map(|i| (format!("m{i}"), i)).collect();
    let refs: Vec<(&str, u32)> = items.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let (many, many_took) = timed(|| cache.set_many(&refs, None));
    let (again, again_took) = timed(|| cache.get::<u32>("m3"));
    for n in &cluster.nodes {
        n.process.signal("CONT");
    }
    assert!(new_took < HANG && get_took < HANG && many_took < HANG && again_took < HANG);
    assert_eq!(again.unwrap(), Some(3), "set_many went to the fallback");
    eprintln!(
        "cluster, every primary stopped: new cache {new_took:?}, first get {get_took:?} ({}), \
         set_many of 20 {many_took:?} ({}), a get after it {again_took:?}",
        if got.is_ok() { "ok" } else { "error" },
        if many.is_ok() { "ok" } else { "error" },
    );
}

/// Building a cache, on either face, waits for no node (issue #14: `AsyncCacheManager::new`
/// does no network I/O): with every primary stopped, both return at once, where they waited for
/// the slot map on the caller's thread (one `timeout` here, 6 s: the stopped nodes accept the
/// connection and never answer `CLUSTER SLOTS`). The first
/// call waits for the map instead (bounded as before); once the nodes continue, each key is
/// written to its owner.
#[test]
fn building_a_cache_waits_for_no_node() {
    let Some(cluster) = cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let slow = Duration::from_secs(6);
    let cfg = config(&cluster, dir.path()).with_timeouts(Duration::from_secs(1), slow);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for n in &cluster.nodes {
        n.process.signal("STOP");
    }
    let (cache, sync_took) = timed(|| CacheManager::new(cfg.clone()).unwrap());
    let (acache, async_took) = timed(|| {
        let _in_runtime = rt.enter();
        ddf::AsyncCacheManager::new(cfg.clone()).unwrap()
    });
    for n in &cluster.nodes {
        n.process.signal("CONT");
    }
    eprintln!(
        "cluster, every primary stopped: CacheManager::new {sync_took:?}, AsyncCacheManager::new {async_took:?}"
    );
    // Generous for a loaded machine (it takes milliseconds), and half the wait of before.
    assert!(sync_took < slow / 2, "CacheManager::new took {sync_took:?}");
    assert!(
        async_took < slow / 2,
        "AsyncCacheManager::new took {async_took:?}"
    );
    cache.set("sync-k", "s", None).unwrap();
    rt.block_on(acache.set("async-k", "a", None)).unwrap();
    assert_eq!(cache.get::<String>("sync-k").unwrap().as_deref(), Some("s"));
    assert_eq!(
        rt.block_on(acache.get::<String>("async-k"))
            .unwrap()
            .as_deref(),
        Some("a")
    );
    for (key, v) in [("rc:sync-k", "\"s\""), ("rc:async-k", "\"a\"")] {
        let port = cluster.nodes[owner(&cluster, key)].port();
        assert_eq!(cluster.cli(port, &["GET", key]).trim(), v, "{key}");
    }
}

/// The first call of a new cache waits for the background slot map, and that wait counts
/// against its own bound: with every primary stopped (they accept the connection and never
/// answer), `timeout = 3 s` and `connect_timeout = 1 s`, one `get` made at once after the
/// build ends within `timeout` + `connect_timeout` (a generous second above it is allowed
/// here). Before, it waited for the map (one `timeout`) and then its own request (another):
/// about 6 s. Alongside, the first calls of a new async cache (the same timeouts), 600 at once
/// (an async `ttl` among them): each is bounded alike, and they hold one blocking-pool thread
/// in all, so a blocking no-op issued meanwhile on a pool of two runs at once (30 ms; allowed:
/// half a `timeout`), not after the map's reading, which ends after one `timeout`. Before, the
/// async `ttl` ran its requests with no deadline (6.1 s), and each early call held a blocking
/// thread for the wait (the no-op ran after the reading: 3.1 s).
#[test]
fn the_first_call_counts_the_map_wait_against_its_bound() {
    let Some(cluster) = cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (connect, timeout) = (Duration::from_secs(1), Duration::from_secs(3));
    let cfg = config(&cluster, dir.path()).with_timeouts(connect, timeout);
    for n in &cluster.nodes {
        n.process.signal("STOP");
    }
    let ((got, took), early) = std::thread::scope(|s| {
        let early = s.spawn(|| early_async_calls(&cluster, connect, timeout));
        let sync = timed(|| {
            let cache = CacheManager::new(cfg.clone()).unwrap();
            cache.get::<String>("k1")
        });
        (sync, early.join().unwrap())
    });
    eprintln!("cluster, every primary stopped, 600 first calls of a new async cache: {early:?}");
    assert!(
        early.ttl < connect + timeout + Duration::from_millis(1500),
        "the async ttl as a first call took {:?}",
        early.ttl
    );
    assert!(
        early.slowest < connect + timeout + SLACK,
        "the slowest early async call took {:?}",
        early.slowest
    );
    assert!(
        early.noop < timeout / 2,
        "a blocking no-op waited for the early calls: it ran {:?} after the build",
        early.noop
    );
    // Batches spanning the three scopes, and `ping`, each the first call of a new cache (short
    // timeouts, all at once): each is bounded like the first single-key call. Before, a batch
    // waited for the map, then one bound per scope in turn; `ping` waited for the map, then
    // each scope's node and the map asked of the others.
    let items: Vec<(String, u32)> = (0..20).map(|i| (format!("m{i}"), i)).collect();
    type Call = fn(&CacheManager, &[(String, u32)]) -> bool;
    let calls: [(&str, Call); 4] = [
        ("get_many", |c, items| {
            let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
            c.get_many::<u32>(&keys).is_ok()
        }),
        ("set_many", |c, items| {
            let refs: Vec<(&str, u32)> = items.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            c.set_many(&refs, None).is_ok()
        }),
        ("delete_many", |c, items| {
            let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
            c.delete_many(&keys).is_ok()
        }),
        ("ping", |c, _| c.ping().is_ok()),
    ];
    let firsts: Vec<(&str, Duration)> = std::thread::scope(|s| {
        let mut handles: Vec<_> = calls
            .iter()
            .map(|&(name, call)| {
                // A journal each: their records do not wait for one another's.
                let dir = tempfile::tempdir().unwrap();
                let cache = CacheManager::new(config(&cluster, dir.path())).unwrap();
                let items = &items;
                s.spawn(move || (name, timed(|| call(&cache, items)).1, dir))
            })
            .collect();
        // The async face's first `get` (it awaits the map off the workers), alongside.
        let dir = tempfile::tempdir().unwrap();
        let cache = ddf::AsyncCacheManager::new(config(&cluster, dir.path())).unwrap();
        handles.push(s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let took = timed(|| rt.block_on(cache.get::<String>("k1"))).1;
            ("async get", took, dir)
        }));
        handles
            .into_iter()
            .map(|h| h.join().map(|(name, took, _)| (name, took)).unwrap())
            .collect()
    });
    eprintln!("cluster, every primary stopped, first call of a new cache: {firsts:?}");
    for (name, took) in &firsts {
        assert!(
            *took < CONNECT + TIMEOUT + SLACK,
            "{name} as the first call took {took:?}"
        );
    }
    // Invalidations recorded in every scope (a prefix delete), then a cache built with them
    // pending (short timeouts): its start-up recovery waits at most one timeout, where it
    // pinged each scope inline (the map wait, the ping, the map asked of the other nodes:
    // 9.2 s with the timeouts above) before the build returned.
    let short = config(&cluster, dir.path());
    let recorder = CacheManager::new(short.clone()).unwrap();
    let _ = recorder.invalidate_pattern("p");
    let recorded = row(&recorder, "recorded invalidations pending");
    drop(recorder);
    let (pending_got, pending_took) = timed(|| {
        let cache = CacheManager::new(short.clone()).unwrap();
        let got = cache.get::<String>("k1");
        (got, row(&cache, "recorded invalidations pending"))
    });
    for n in &cluster.nodes {
        n.process.signal("CONT");
    }
    eprintln!(
        "cluster, every primary stopped: build + first get {took:?} ({}); with {recorded} \
         recorded invalidations pending: {pending_took:?} ({:?})",
        if got.is_ok() { "ok" } else { "error" },
        pending_got.0.as_ref().map(drop),
    );
    assert!(
        took < connect + timeout + SLACK,
        "build + first get took {took:?}"
    );
    assert_eq!(recorded, "3", "one prefix delete recorded per scope");
    assert_eq!(
        pending_got.1, "3",
        "nothing applied while the nodes are stopped"
    );
    assert!(
        pending_took < CONNECT + TIMEOUT + SLACK,
        "build with records pending + first get took {pending_took:?}"
    );
}

/// What [`early_async_calls`] saw.
#[derive(Debug)]
struct Early {
    /// The async `ttl`'s time, one of the first calls.
    ttl: Duration,
    /// The slowest first call's time.
    slowest: Duration,
    /// When a no-op issued on the blocking pool once every call waits ran, from the build.
    noop: Duration,
}

/// 600 calls (`get`s and one `ttl`) made at once on a new async cache with these timeouts,
/// every primary stopped, on a runtime with two blocking threads; then a no-op on its
/// blocking pool.
fn early_async_calls(cluster: &RedisCluster, connect: Duration, timeout: Duration) -> Early {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const CALLS: usize = 600;
    let rt = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let built = Instant::now();
    let cache = Arc::new(
        ddf::AsyncCacheManager::new(config(cluster, dir.path()).with_timeouts(connect, timeout))
            .unwrap(),
    );
    let started = Arc::new(AtomicUsize::new(0));
    rt.block_on(async {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..CALLS {
            let (cache, started) = (cache.clone(), started.clone());
            calls.spawn(async move {
                started.fetch_add(1, Ordering::SeqCst);
                let t = Instant::now();
                if i == 0 {
                    let _ = cache.ttl("k1").await;
                } else {
                    let _ = cache.get::<String>(&format!("e{i}")).await;
                }
                (i == 0, t.elapsed())
            });
        }
        // Every call has begun its wait for the map.
        while started.load(Ordering::SeqCst) < CALLS {
            tokio::task::yield_now().await;
        }
        let noop = tokio::task::spawn_blocking(Instant::now).await.unwrap() - built;
        let (mut ttl, mut slowest) = (Duration::ZERO, Duration::ZERO);
        while let Some(r) = calls.join_next().await {
            let (is_ttl, took) = r.unwrap();
            if is_ttl {
                ttl = took;
            }
            slowest = slowest.max(took);
        }
        Early { ttl, slowest, noop }
    })
}

/// The first reading of the slot map puts every slot in its owner's scope, whatever the
/// scopes' states (no call places a key before it: they wait for it). The nodes are listed in
/// reverse, so the even split guesses the first node's slots in the scope of the third (the
/// first listed); the first reading is answered only after another process recorded a delete
/// in that scope. The first node's key is still read through its own scope (here: the read
/// times out on the stopped first node, a failed operation of the first node's scope).
/// Before, the first reading followed the rule for later ones (a slot leaves a scope only
/// when it has nothing recorded): the first node's slots stayed in the third's scope, which
/// was asked for the key, and the first node's scope never was.
#[test]
fn the_first_map_reading_places_every_slot() {
    let Some(cluster) = cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut other = config(&cluster, dir.path());
    other.redis_cluster_nodes.reverse();
    // Long enough for the steps below to end before this cache's first reading gives up.
    let cfg = other.clone().with_timeouts(CONNECT, Duration::from_secs(4));
    let owned_by = |node: usize| {
        (0..1000)
            .map(|i| format!("first{i}"))
            .find(|k| owner(&cluster, &format!("rc:{k}")) == node)
            .unwrap()
    };
    let (key, third) = (owned_by(0), owned_by(2));
    let other = CacheManager::new(other).unwrap();
    other.set(&third, "v", None).unwrap();
    for n in &cluster.nodes {
        n.process.signal("STOP");
    }
    // Built with no record and no outage: its scopes are built (all settled), its map not.
    let cache = CacheManager::new(cfg).unwrap();
    // Another process records a delete in the third node's scope meanwhile.
    let _ = other.delete(&third);
    cluster.nodes[1].process.signal("CONT");
    let got = cache.get::<String>(&key);
    let first = cluster.addrs()[0].clone();
    let first_failed = row(&cache, &format!("server.{first}.failed operations"));
    for n in &cluster.nodes {
        n.process.signal("CONT");
    }
    assert!(got.is_ok(), "{got:?}");
    assert_eq!(
        first_failed, "1",
        "the first node's key was not read through the first node's scope"
    );
}
