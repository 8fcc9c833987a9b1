//! The Memcached backend against real `memcached` processes (three per test unless noted):
//! conformance, pymemcache interop both ways, multi-process prefix invalidation, scoped flush,
//! odd keys, oversize values, and a server killed mid-run.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use ddf::testing::internals::{DeadPolicy, MemcachedBackend};
use ddf::{Backend, CacheBackend, CacheConfig, CacheManager, Error, ServerAddr};
use ddf_testkit::MemcachedServer;

use crate::conformance::{self, Caps};
use crate::process;

fn start(n: usize) -> Option<Vec<MemcachedServer>> {
    (0..n).map(|_| MemcachedServer::start()).collect()
}

fn config(servers: &[MemcachedServer], namespace: &str) -> CacheConfig {
    let addrs = servers
        .iter()
        .map(|s| ServerAddr::parse(&s.server(), 11211).unwrap())
        .collect();
    CacheConfig::default()
        .with_backend(CacheBackend::Memcached)
        .with_memcached_servers(addrs)
        .with_namespace(namespace)
        .with_timeouts(Duration::from_millis(500), Duration::from_secs(1))
}

/// A cache over the Memcached backend itself, without the breaker and fallback that
/// `CacheManager::new` puts in front of it (tested in `factory_puts_memcached_behind_the_breaker`).
fn direct(config: CacheConfig) -> CacheManager {
    let backend = MemcachedBackend::from_config(&config).unwrap();
    CacheManager::with_backend(config, std::sync::Arc::new(backend))
}

fn cache(servers: &[MemcachedServer], namespace: &str) -> CacheManager {
    direct(config(servers, namespace))
}

fn backend(servers: &[MemcachedServer], namespace: &str) -> MemcachedBackend {
    MemcachedBackend::from_config(&config(servers, namespace)).unwrap()
}

/// Every key on a server, by a raw `lru_crawler metadump all`.
fn dump(server: &MemcachedServer) -> Vec<String> {
    let mut s = TcpStream::connect(server.server()).unwrap();
    s.write_all(b"lru_crawler metadump all\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut keys = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line == "END" {
            return keys;
        }
        if line.starts_with("BUSY") {
            std::thread::sleep(Duration::from_millis(50));
            return dump(server);
        }
        keys.push(
            line.split(' ')
                .next()
                .unwrap()
                .trim_start_matches("key=")
                .to_owned(),
        );
    }
}

fn raw_set(server: &MemcachedServer, key: &str, value: &str) {
    let mut s = TcpStream::connect(server.server()).unwrap();
    s.write_all(format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()).as_bytes())
        .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert_eq!(line, "STORED\r\n");
}

fn raw_get(server: &MemcachedServer, key: &str) -> Option<String> {
    let mut s = TcpStream::connect(server.server()).unwrap();
    s.write_all(format!("mg {key} v\r\n").as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    if line.starts_with("EN") {
        return None;
    }
    let mut v = String::new();
    r.read_line(&mut v).unwrap();
    Some(v.trim_end().to_owned())
}

#[test]
fn conformance_on_three_servers() {
    let Some(servers) = start(3) else { return };
    conformance::run(
        &|ns| cache(&servers, ns),
        Caps {
            // memcached's clock ticks in whole seconds: a 1 s TTL lasts up to 2 s.
            ttl_sleep: Some(Duration::from_millis(2100)),
            ..Caps::default()
        },
    );
    ddf::testing::conformance::run(
        &|ns| ddf::testing::build_backend(&config(&servers, ns)).unwrap(),
        ddf::testing::conformance::Caps::default()
            .with_ttl_sleep(Some(Duration::from_millis(2100))),
    );
    // The suite's keys went to every server.
    let b = backend(&servers, "x:");
    let mut used = std::collections::BTreeSet::new();
    for i in 0..30 {
        used.insert(b.server_for(&format!("k{i}")).to_owned());
    }
    assert_eq!(used.len(), 3);
}

#[test]
fn conformance_with_an_empty_namespace_and_server_flush() {
    let Some(servers) = start(2) else { return };
    // Without server_flush, neither flush_all nor invalidate_pattern("") may reach every item
    // on the servers (another application's included), directly or behind the breaker.
    let c = cache(&servers, "");
    c.set("k", "v", None).unwrap();
    for c in [&c, &CacheManager::new(config(&servers, "")).unwrap()] {
        let err = c.flush_all().unwrap_err();
        assert!(err.to_string().contains("server_flush"), "{err}");
        let err = c.invalidate_pattern("").unwrap_err();
        assert!(err.to_string().contains("server_flush"), "{err}");
        assert_eq!(c.get::<String>("k").unwrap().as_deref(), Some("v"));
    }
    let mut cfg = config(&servers, "");
    cfg.server_flush = true;
    let c = direct(cfg);
    assert!(c.delete("k").unwrap());
    conformance::prefix_invalidation_is_literal_and_exact(&c);
    conformance::odd_keys_round_trip(&c, Caps::default());
    c.set("k", "v", None).unwrap();
    c.flush_all().unwrap();
    assert_eq!(c.get::<String>("k").unwrap(), None);
}

#[test]
fn pickle_mode_reads_python_text_and_ints_as_pickles() {
    let Some(servers) = start(1) else { return };
    let mut s = TcpStream::connect(servers[0].server()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for cmd in [
        &b"set pm:i 2 0 4\r\n-129\r\n"[..],
        b"set pm:s 16 0 3\r\nh\xc3\xa9\r\n",
        b"set pm:raw 0 0 2\r\nhi\r\n",
        b"set pm:long 4 0 22\r\n1180591620717411303424\r\n",
    ] {
        s.write_all(cmd).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "STORED\r\n");
    }
    let c = direct(config(&servers, "pm:").with_backend(CacheBackend::MemcachedPickle));
    assert_eq!(c.backend_name(), "memcached_pickle");
    assert_eq!(c.get::<i64>("i").unwrap(), Some(-129));
    assert_eq!(c.get::<String>("s").unwrap().as_deref(), Some("hé"));
    // Text becomes the pickle of a str; bytes (flags 0) pass through.
    assert_eq!(
        c.get_bytes("s").unwrap().unwrap(),
        b"\x80\x02X\x03\x00\x00\x00h\xc3\xa9."
    );
    assert_eq!(c.get_bytes("raw").unwrap().unwrap(), b"hi");
    // A Python 2 long (flags 4) of any size.
    assert_eq!(
        c.get_json("long").unwrap(),
        Some(serde_json::json!("1180591620717411303424"))
    );
    let j = direct(config(&servers, "pm:"));
    assert_eq!(j.get::<i64>("i").unwrap(), Some(-129));
    assert_eq!(j.get::<String>("s").unwrap().as_deref(), Some("hé"));
    // Integers beyond 64 bits: the digits, never a rounded float.
    assert_eq!(
        j.get_json("long").unwrap(),
        Some(serde_json::json!("1180591620717411303424"))
    );
    assert_eq!(j.get::<u128>("long").unwrap(), Some(1 << 70));
}

/// `memcached_pickle` and pymemcache: Python objects both ways.
#[test]
fn pickle_mode_interop_with_pymemcache() {
    let Some(servers) = start(2) else { return };
    let Some(python) = ddf_testkit::python() else {
        return;
    };
    let ns = "pk:";
    let c = direct(config(&servers, ns).with_backend(CacheBackend::MemcachedPickle));
    let mut env = std::collections::BTreeMap::new();
    env.insert("A".to_owned(), 1.5f64);
    c.set("map", &env, None).unwrap();
    c.set("list", &vec!["a", "b"], None).unwrap();
    c.set("str", "text", None).unwrap();
    c.set("int", &42i64, None).unwrap();
    let server_list: Vec<String> = servers.iter().map(|s| s.server()).collect();
    let script = r#"
import json, sys
from pymemcache.client.hash import HashClient
from pymemcache import serde
servers = [(h, int(p)) for h, p in (s.split(":") for s in sys.argv[1].split(","))]
ns = sys.argv[2]
c = HashClient(servers, serde=serde.pickle_serde)
out = {k: c.get(ns + k) for k in ("map", "list", "str", "int")}
out["types"] = [type(out[k]).__name__ for k in ("map", "list", "str", "int")]
c.set(ns + "pydict", {"x": [1, 2.5, None, True]})
c.set(ns + "pystr", "héllo")
c.set(ns + "pyint", 2**70)
c.set(ns + "pytuple", ("a", "b"))
print(json.dumps(out))
"#;
    let out = Command::new(&python)
        .args(["-c", script, &server_list.join(","), ns])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["map"], serde_json::json!({"A": 1.5}));
    assert_eq!(v["list"], serde_json::json!(["a", "b"]));
    assert_eq!(v["str"], "text");
    assert_eq!(v["int"], 42);
    assert_eq!(
        v["types"],
        serde_json::json!(["dict", "list", "str", "int"])
    );
    assert_eq!(
        c.get::<serde_json::Value>("pydict").unwrap(),
        Some(serde_json::json!({"x": [1, 2.5, null, true]}))
    );
    assert_eq!(c.get::<String>("pystr").unwrap().as_deref(), Some("héllo"));
    assert_eq!(
        c.get::<(String, String)>("pytuple").unwrap(),
        Some(("a".to_owned(), "b".to_owned()))
    );
    let big = c.get_json("pyint").unwrap().unwrap();
    // The pickle codec's JSON view writes integers beyond 64 bits as decimal strings.
    assert_eq!(big, serde_json::json!("1180591620717411303424"));
}

/// Placement and values, both directions, against pymemcache's `HashClient` with the
/// `python_memcache` serializer (what the Python DDF uses).
#[test]
fn interop_with_pymemcache_hashclient() {
    let Some(servers) = start(3) else { return };
    let Some(python) = ddf_testkit::python() else {
        return;
    };
    let ns = "interop:";
    let c = cache(&servers, ns);
    let b = backend(&servers, ns);
    let n = 60;
    for i in 0..n {
        c.set(&format!("s{i}"), &format!("text {i} é"), None)
            .unwrap();
        c.set(&format!("i{i}"), &(i as i64 - 30), None).unwrap();
    }
    c.set("list", &vec![1, 2, 3], None).unwrap();
    c.set("big", &u64::MAX, None).unwrap();
    let server_list: Vec<String> = servers.iter().map(|s| s.server()).collect();
    let script = r#"
import json, sys
from pymemcache.client.hash import HashClient
from pymemcache import serde
servers = [(h, int(p)) for h, p in (s.split(":") for s in sys.argv[1].split(","))]
ns, n = sys.argv[2], int(sys.argv[3])
c = HashClient(servers, serde=serde.pickle_serde)
out = {"place": {}, "values": {}}
for i in range(n):
    for k in (f"{ns}s{i}", f"{ns}i{i}", f"{ns}py{i}"):
        out["place"][k] = c.hasher.get_node(k)
for i in range(n):
    out["values"][f"s{i}"] = c.get(f"{ns}s{i}")
    out["values"][f"i{i}"] = c.get(f"{ns}i{i}")
lst = c.get(f"{ns}list")
out["list"] = lst if isinstance(lst, list) else repr(lst)  # a pickle (flags 1): a list
out["big"] = c.get(f"{ns}big")
for i in range(n):
    c.set(f"{ns}py{i}", f"py {i}")
c.set(f"{ns}pyint", 7)
c.set(f"{ns}pylong", 2**70)
c.set(f"{ns}pybytes", b"\x00\xff")
c.set(f"{ns}pylist", [1, "a"])
print(json.dumps(out))
"#;
    let out = Command::new(&python)
        .args(["-c", script, &server_list.join(","), ns, &n.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Placement: the same server for every key.
    let place = v["place"].as_object().unwrap();
    assert_eq!(place.len(), 3 * n);
    for (k, node) in place {
        let key = k.strip_prefix(ns).unwrap();
        assert_eq!(
            b.server_for(key),
            node.as_str().unwrap(),
            "placement of {k}"
        );
    }
    // Values Rust wrote, as Python reads them.
    for i in 0..n {
        assert_eq!(v["values"][format!("s{i}")], format!("text {i} é"));
        assert_eq!(v["values"][format!("i{i}")], i as i64 - 30);
    }
    assert_eq!(v["list"], serde_json::json!([1, 2, 3]));
    assert_eq!(v["big"], serde_json::json!(u64::MAX));
    // Values Python wrote, as Rust reads them.
    for i in 0..n {
        assert_eq!(
            c.get::<String>(&format!("py{i}")).unwrap(),
            Some(format!("py {i}"))
        );
    }
    assert_eq!(c.get::<i32>("pyint").unwrap(), Some(7));
    // 2**70 arrives as decimal text with flags 4... or 2: a JSON number either way.
    assert_eq!(
        c.get_bytes("pylong").unwrap().as_deref(),
        Some(&b"1180591620717411303424"[..])
    );
    assert_eq!(
        c.get_json("pylong").unwrap(),
        Some(serde_json::json!("1180591620717411303424"))
    );
    assert_eq!(c.get_bytes("pybytes").unwrap(), Some(vec![0, 255]));
    // A pickle (flag 1) written by Python reads back through the pickle codec, whatever the
    // cache's own codec.
    assert_eq!(
        c.get::<serde_json::Value>("pylist").unwrap(),
        Some(serde_json::json!([1, "a"]))
    );
}

const WORKER_ENV: &str = "DDF_TEST_MEMCACHED_WORKER";

/// Four processes write 500 keys each at the same time; `invalidate_pattern` then removes
/// exactly those 2000, on every server, and leaves the other keys alone.
#[test]
fn four_processes_then_exact_prefix_invalidation() {
    if let Some(job) = process::job(WORKER_ENV) {
        return memcached_worker(&job);
    }
    let Some(servers) = start(3) else { return };
    let list: Vec<String> = servers.iter().map(|s| s.server()).collect();
    for c in spawn_workers(&list, "job") {
        process::check(c, "memcached worker");
    }
    let c = cache(&servers, "mp:");
    for s in &servers {
        assert!(dump(s).len() > 400, "keys were spread over all servers");
    }
    assert_eq!(c.invalidate_pattern("job:").unwrap(), 2000);
    assert_eq!(c.invalidate_pattern("job:").unwrap(), 0);
    for s in &servers {
        let left: Vec<String> = dump(s)
            .into_iter()
            .filter(|k| k.starts_with("mp:job:"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    assert_eq!(c.invalidate_pattern("keep:").unwrap(), 40);

    // Phase 2: invalidations run while four processes write: every key written is removed by
    // exactly one invalidation (the counts add up to 2000) and none is left.
    let mut children = spawn_workers(&list, "live");
    let mut removed = 0;
    let mut rounds = 0;
    while children
        .iter_mut()
        .any(|ch| ch.try_wait().unwrap().is_none())
    {
        removed += c.invalidate_pattern("live:").unwrap();
        rounds += 1;
    }
    eprintln!("{rounds} invalidations during the writes removed {removed} keys");
    for ch in children {
        process::check(ch, "memcached worker");
    }
    removed += c.invalidate_pattern("live:").unwrap();
    assert_eq!(removed, 2000);
    for s in &servers {
        assert!(!dump(s).iter().any(|k| k.starts_with("mp:live:")));
    }
}

fn spawn_workers(list: &[String], phase: &str) -> Vec<std::process::Child> {
    (0..4)
        .map(|w| {
            process::child(
                "memcached::four_processes_then_exact_prefix_invalidation",
                WORKER_ENV,
                &format!("{}|{phase}|{w}", list.join(",")),
            )
            .spawn()
            .unwrap()
        })
        .collect()
}

/// The body of one worker process of the test above.
fn memcached_worker(spec: &str) {
    let mut parts = spec.split('|');
    let (list, phase, w) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let addrs = list
        .split(',')
        .map(|s| ServerAddr::parse(s, 11211).unwrap())
        .collect();
    let c = direct(
        CacheConfig::default()
            .with_backend(CacheBackend::Memcached)
            .with_memcached_servers(addrs)
            .with_namespace("mp:"),
    );
    for i in 0..500 {
        c.set(&format!("{phase}:{w}:{i}"), &i, None).unwrap();
        if phase == "job" && i % 50 == 0 {
            c.set(&format!("keep:{w}:{i}"), &i, None).unwrap();
        }
    }
}

#[test]
fn flush_all_leaves_other_applications_keys() {
    let Some(servers) = start(3) else { return };
    for (i, s) in servers.iter().enumerate() {
        raw_set(s, &format!("otherapp:{i}"), "theirs");
        raw_set(
            s,
            &format!("ddf:x{i}"),
            "no namespace boundary: ddf: is a prefix of ddf:x",
        );
    }
    let c = cache(&servers, "ddf:");
    let other_ns = cache(&servers, "ddf:x:");
    other_ns.set("k", "v", None).unwrap();
    for i in 0..50 {
        c.set(&format!("k{i}"), &i, None).unwrap();
    }
    c.flush_all().unwrap();
    for i in 0..50 {
        assert_eq!(c.get::<i32>(&format!("k{i}")).unwrap(), None);
    }
    // Keys outside `ddf:` survive; `ddf:x...` keys are in the namespace `ddf:` by prefix, as on
    // every backend, so only the other application's keys are checked.
    for (i, s) in servers.iter().enumerate() {
        assert_eq!(
            raw_get(s, &format!("otherapp:{i}")).as_deref(),
            Some("theirs")
        );
    }
}

#[test]
fn odd_keys_cannot_inject_commands() {
    let Some(servers) = start(3) else { return };
    let c = cache(&servers, "odd:");
    for s in &servers {
        raw_set(s, "sentinel", "alive");
    }
    let ten_k = "é".repeat(5000);
    let keys = [
        "x\r\nflush_all",
        "x\r\nflush_all\r\n",
        "a b c",
        "\t",
        "mg sentinel v",
        ten_k.as_str(),
        "",
    ];
    for (i, k) in keys.iter().enumerate() {
        c.set(k, &i, None).unwrap();
        assert_eq!(c.get::<usize>(k).unwrap(), Some(i), "{k:?}");
    }
    for s in &servers {
        assert_eq!(raw_get(s, "sentinel").as_deref(), Some("alive"));
        for k in dump(s) {
            // metadump URL-encodes keys: `%XX` is one byte on the server.
            let len = k.len() - 2 * k.matches('%').count();
            assert!(len <= 250 && !k.contains(' '), "{k}");
        }
    }
    assert_eq!(c.invalidate_pattern("x\r\n").unwrap(), 2);
    assert_eq!(c.invalidate_pattern(&"é".repeat(4000)).unwrap(), 1);
    assert_eq!(c.delete_many(&keys).unwrap(), 4);
}

#[test]
fn oversize_values_are_refused_and_the_old_value_survives() {
    let Some(servers) = start(2) else { return };
    let c = cache(&servers, "big:");
    c.set("k", "old", None).unwrap();
    let huge = "x".repeat(2 * 1024 * 1024);
    let err = c.set("k", &huge, None).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("item_size_max"), "{err}");
    assert_eq!(c.get::<String>("k").unwrap().as_deref(), Some("old"));
    let err = c
        .set_many(&[("a", "small".to_owned()), ("k", huge)], None)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert_eq!(c.get::<String>("a").unwrap(), None, "nothing written");
    // Just under the limit is stored.
    let near = vec![7u8; 1024 * 1024 - 200];
    c.set_bytes("near", &near, None).unwrap();
    assert_eq!(c.get_bytes("near").unwrap(), Some(near));
    // A server with a bigger limit (-I 2m) is asked for it.
    let Some(big) = MemcachedServer::start_with(&["-I", "2m"]) else {
        return;
    };
    let c = cache(std::slice::from_ref(&big), "big:");
    let v = vec![1u8; 1024 * 1024 + 10];
    c.set_bytes("v", &v, None).unwrap();
    assert_eq!(c.get_bytes("v").unwrap(), Some(v));
}

#[test]
fn one_of_three_servers_killed_mid_run() {
    let Some(mut servers) = start(3) else { return };
    let b = backend(&servers, "kill:").with_dead_policy(DeadPolicy::new(
        2,
        Duration::from_secs(1),
        Duration::from_secs(60),
    ));
    let victim = servers[1].server();
    let c = CacheManager::with_backend(config(&servers, "kill:"), std::sync::Arc::new(b));
    let b2 = backend(&servers, "kill:");
    let keys: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
    for k in &keys {
        c.set(k, k, None).unwrap();
    }
    servers[1].process.kill();
    let start = Instant::now();
    let (mut ok, mut failed) = (0, 0);
    for round in 0..3 {
        for k in &keys {
            let on_victim = b2.server_for(k) == victim;
            let t = Instant::now();
            match c.get::<String>(k) {
                Ok(v) => {
                    assert!(!on_victim);
                    assert_eq!(v.as_deref(), Some(k.as_str()));
                    c.set(k, k, None).unwrap();
                    ok += 1;
                }
                Err(e) => {
                    assert!(on_victim, "{k}: {e}");
                    assert!(e.is_temporary(), "{e}");
                    failed += 1;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "round {round}: {k} took {:?}",
                t.elapsed()
            );
        }
    }
    assert!(ok > 0 && failed > 0, "{ok} {failed}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    // Batches that touch the dead server fail fast; ones that do not keep working.
    let live: Vec<&str> = keys
        .iter()
        .filter(|k| b2.server_for(k) != victim)
        .map(String::as_str)
        .collect();
    assert_eq!(c.get_many::<String>(&live).unwrap().len(), live.len());
    let err = c.invalidate_pattern("").unwrap_err();
    assert!(err.is_temporary(), "{err}");
}

#[test]
fn a_stopped_server_costs_one_timeout_then_fails_fast() {
    let Some(servers) = start(2) else { return };
    let c = cache(&servers, "stop:");
    let b = backend(&servers, "stop:");
    let key = (0..100)
        .map(|i| format!("k{i}"))
        .find(|k| b.server_for(k) == servers[0].server())
        .unwrap();
    c.set(&key, "v", None).unwrap();
    servers[0].process.signal("STOP");
    let t = Instant::now();
    assert!(c.get::<String>(&key).unwrap_err().is_temporary());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let t = Instant::now();
    for _ in 0..20 {
        assert!(c.get::<String>(&key).is_err());
    }
    // Each call that went to the stopped server would wait its 500 ms read timeout: 20 of them
    // take 10 s. The bound tells "fails fast" from "waits every time" with room for a loaded
    // machine; it is not a speed target.
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    servers[0].process.signal("CONT");
}

/// A restart leaves stale connections in the pool: they are replaced without an error, and the
/// server is not counted as failing.
#[test]
fn a_restarted_server_is_used_again_at_once() {
    let Some(mut servers) = start(1) else { return };
    let c = cache(&servers, "restart:");
    // Several pooled connections.
    std::thread::scope(|s| {
        for t in 0..4 {
            let c = c.clone();
            s.spawn(move || {
                for i in 0..50 {
                    c.set(&format!("k{t}:{i}"), &i, None).unwrap();
                }
            });
        }
    });
    let port = servers[0].port();
    servers[0].process.kill();
    servers[0] = MemcachedServer::start_on(port, &[]).unwrap();
    for i in 0..20 {
        assert_eq!(c.get::<i32>(&format!("k0:{i}")).unwrap(), None);
        c.set("after", &i, None).unwrap();
    }
    assert_eq!(c.get::<i32>("after").unwrap(), Some(19));
}

#[test]
fn factory_puts_memcached_behind_the_breaker() {
    let Some(servers) = start(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let make =
        |ns: &str| CacheManager::new(config(&servers, ns).with_pickle_dir(dir.path())).unwrap();
    let c = make("f:");
    assert_eq!(c.backend_name(), "memcached");
    c.set("k", "v", None).unwrap();
    assert_eq!(c.invalidate_pattern("").unwrap(), 1);
    assert!(c.ping().unwrap().0.detail.contains("127.0.0.1"));
    let info = MemcachedBackend::from_config(&config(&servers, "f:"))
        .unwrap()
        .info()
        .unwrap();
    assert_eq!(
        info.iter().filter(|(_, v)| v.contains("items")).count(),
        3,
        "{info:?}"
    );
    // What users get (backend + breaker + fallback) passes the shared suite too.
    conformance::run(
        &make,
        Caps {
            ttl_sleep: None,
            ..Caps::default()
        },
    );
    // Nothing listening: fallback = error reports a temporary error; the default (pickle)
    // serves from the local directory.
    let port = ddf_testkit::free_port();
    let mut down = CacheConfig::default()
        .with_backend(CacheBackend::Memcached)
        .with_memcached_servers(vec![
            ServerAddr::parse(&format!("127.0.0.1:{port}"), 1).unwrap(),
        ])
        .with_pickle_dir(dir.path());
    down.fallback = ddf::FallbackMode::Error;
    let e = CacheManager::new(down.clone())
        .unwrap()
        .get::<i32>("k")
        .unwrap_err();
    assert!(e.is_temporary(), "{e}");
    down.fallback = ddf::FallbackMode::Pickle;
    let local = CacheManager::new(down).unwrap();
    local.set("k", &5, None).unwrap();
    assert_eq!(local.get::<i32>("k").unwrap(), Some(5));
}

/// What users get (`CacheManager::new`: backend + breaker + pickle fallback) with one of three
/// servers killed: no operation fails or hangs; the breaker serves from the local directory
/// while the server is down.
#[test]
fn factory_with_one_of_three_servers_killed() {
    let Some(mut servers) = start(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = CacheManager::new(config(&servers, "fk:").with_pickle_dir(dir.path())).unwrap();
    let keys: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
    for k in &keys {
        c.set(k, k, None).unwrap();
    }
    servers[1].process.kill();
    let start = Instant::now();
    for k in &keys {
        let t = Instant::now();
        // A miss is allowed (the fallback starts empty); an error or a wrong value is not.
        if let Some(v) = c.get::<String>(k).unwrap() {
            assert_eq!(&v, k);
        }
        c.set(k, k, None).unwrap();
        // Not necessarily a hit: the fallback is emptied when the breaker opens.
        if let Some(v) = c.get::<String>(k).unwrap() {
            assert_eq!(&v, k);
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{k}: {:?}",
            t.elapsed()
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn ttl_over_thirty_days_is_absolute() {
    let Some(servers) = start(1) else { return };
    let c = cache(&servers, "ttl:");
    c.set("month", "v", Some(Duration::from_secs(40 * 24 * 3600)))
        .unwrap();
    c.set("sub", "v", Some(Duration::from_millis(10))).unwrap();
    // A relative 40-day exptime would be read as a time in 1970: already expired.
    assert_eq!(c.get::<String>("month").unwrap().as_deref(), Some("v"));
    assert_eq!(c.get::<String>("sub").unwrap().as_deref(), Some("v"));
}

/// Keys that were just read are still found: memcached's LRU walk (`metadump all`) skips items
/// that are busy (queued for an LRU bump after a read), the hash walk does not.
#[test]
fn keys_just_read_are_still_invalidated() {
    let Some(servers) = start(1) else { return };
    let c = cache(&servers, "read:");
    for round in 0..10 {
        let keys: Vec<String> = (0..24).map(|i| format!("r{round}:{i}")).collect();
        for k in &keys {
            c.set(k, k, None).unwrap();
        }
        for k in &keys {
            assert!(c.get::<String>(k).unwrap().is_some());
        }
        assert!(c.get::<String>(&keys[7]).unwrap().is_some());
        assert_eq!(
            c.invalidate_pattern(&format!("r{round}:")).unwrap(),
            24,
            "round {round}"
        );
    }
}

/// memcached's LRU crawler skips an item another thread holds a reference to; a COLD item read a
/// second time is held by its queued asynchronous LRU bump for up to a second. Prefix
/// invalidation must still find it.
#[test]
fn prefix_invalidation_finds_an_item_held_by_an_lru_bump() {
    let Some(servers) = start(1) else { return };
    let c = cache(&servers, &conformance::unique_namespace("bump"));
    for i in 0..24 {
        c.set(&format!("k{i}"), &i, None).unwrap();
    }
    // The LRU maintainer moves the items from HOT to COLD (HOT holds at most 20% of a class).
    std::thread::sleep(Duration::from_millis(2500));
    for i in 0..24 {
        assert_eq!(c.get::<i32>(&format!("k{i}")).unwrap(), Some(i));
    }
    // The second read of a COLD item queues an async bump that holds the item.
    assert_eq!(c.get::<i32>("k7").unwrap(), Some(7));
    assert_eq!(c.invalidate_pattern("").unwrap(), 24);
    assert_eq!(c.get::<i32>("k7").unwrap(), None);
}
