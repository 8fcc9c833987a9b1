//! A Redis Cluster with one primary stopped (SIGSTOP), against a real 3-primary cluster (issue
//! #14 point 1: a breaker per Cluster primary). Prints the figures of the outage (`--nocapture`:
//! "cluster outage: ..."); asserts counts and generous "does not hang" bounds, never speed.

use std::time::{Duration, Instant};

use ddf::{CacheBackend, CacheConfig, CacheManager, FallbackMode, ServerAddr};
use ddf_testkit::RedisCluster;

const CONNECT: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_millis(500);
/// A call that takes longer than this hung (far above the timeouts: the machine is shared).
const HANG: Duration = Duration::from_secs(30);

/// Keys of the run.
const N: usize = 60;

fn config(cluster: &RedisCluster, dir: &std::path::Path) -> CacheConfig {
    let nodes = cluster
        .addrs()
        .iter()
        .map(|a| ServerAddr::parse(a, 6379).unwrap())
        .collect();
    let mut c = CacheConfig::default()
        .with_backend(CacheBackend::Redis)
        .with_redis_cluster_nodes(nodes)
        .with_namespace("rc:")
        .with_pickle_dir(dir)
        .with_timeouts(CONNECT, TIMEOUT);
    c.fallback = FallbackMode::Pickle;
    c.breaker_retry = Duration::from_millis(200);
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
    let stopped = 2;
    let healthy = owners.iter().filter(|&&o| o != stopped).count();
    {
        let cache = CacheManager::new(cfg.clone()).unwrap();
        for k in &keys {
            cache.set(k, &format!("before-{k}"), None).unwrap();
        }
    }
    cluster.nodes[stopped].process.signal("STOP");
    let cache = CacheManager::new(cfg.clone()).unwrap();
    let (first, first_took) = timed(|| cache.get::<String>(&keys[0]));
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
    cluster.nodes[stopped].process.signal("CONT");
    eprintln!(
        "cluster outage: first get {first_took:?} ({}), set_many of 20 {many_took:?} ({}), \
         worst set {worst:?}; keys of healthy primaries written to their server during the \
         outage: {on_server} of {healthy}, read back: {read_back} of {healthy}",
        if first.is_ok() { "ok" } else { "error" },
        if many.is_ok() { "ok" } else { "error" },
    );
}
