//! The interop suite (#15): values exactly as the Python DDF writes them, both ways, on the
//! four server backends.
//!
//! Python writes each value shape as the Python DDF's backends do, with `namespace =` empty and no
//! key prefix: `redis` stores `json.dumps(value).encode()`, `redis_pickle`
//! `pickle.dumps(value, protocol=5)`, `memcached` and `memcached_pickle` go through pymemcache's
//! `HashClient` with the `python_memcache` serializer (`pickle_serde`: str flags 16, int flags 2,
//! anything else a pickle with flags 1). ddf reads every `py:<shape>` key (`get_value`, the
//! lossless Python value) and writes every shape under `rs:<shape>`; Python then checks, type
//! for type (a tuple is not a list, `1` is not `1.0`, dict order counts, `-0.0` is not `0.0`),
//! that ddf read what Python wrote and that Python reads what ddf wrote as the same value. On
//! `redis` the shapes are those `json.dumps` can write (without NaN), and "the same value" is
//! what the Python DDF itself reads back: `json.loads(json.dumps(value))`.

use std::path::Path;
use std::process::Command;

use ddf::pickle::Value;
use ddf::testing::internals::pickle;
use ddf::{CacheBackend, CacheConfig, CacheManager, ServerAddr};
use ddf_testkit::{MemcachedServer, RedisServer};

/// The Python side: `write BACKEND TARGET` stores every shape under `py:<name>` and prints the
/// shapes (name, protocol-5 pickle in hex, whether `redis` can carry it); `check BACKEND TARGET
/// RESULTS` compares ddf's reads (pickles in hex) and reads ddf's `rs:<name>` writes.
const SCRIPT: &str = r#"
import json, math, pickle, sys

MODE, BACKEND, TARGET = sys.argv[1], sys.argv[2], sys.argv[3]
MISSING = object()

def shapes():
    t = ("x", "y")
    d = {"k": 1}
    l = [1, 2]
    big = 2**70 + 1
    deep = []
    for _ in range(50):
        deep = [deep]
    return [
        ("none", None), ("true", True), ("false", False),
        ("zero", 0), ("one", 1), ("neg", -7), ("i64max", 2**63 - 1), ("i64min", -2**63),
        ("u64max", 2**64 - 1), ("u64max_plus1", 2**64), ("big", big), ("negbig", -big),
        ("ten40", 10**40), ("negten40", -10**40), ("huge", 7**300), ("ten400", -10**400),
        ("i128min", -2**127),
        ("float", 1.5), ("tenth", 0.1), ("third", 1 / 3), ("negzero", -0.0), ("tiny", 5e-324),
        ("bigfloat", 1e300), ("float1", 1.0), ("e16", 1e16), ("sum", 0.1 + 0.2),
        ("nan", float("nan")), ("inf", float("inf")), ("ninf", float("-inf")),
        ("empty_str", ""), ("str", "hello"), ("unicode", "h\u00e9llo w\u00f6rld \u2713 \U0001F600"),
        ("escapes", 'quote " backslash \\ nl \n tab \t nul \x00 del \x7f'),
        ("long_str", "x" * 10000), ("digits_str", "1180591620717411303425"),
        ("bytes", b"\x00\xff abc"), ("empty_bytes", b""), ("bytearray", bytearray(b"hi")),
        ("empty_list", []), ("list", [1, "a", None, 2.5, True]),
        ("nested_list", [[1, [2, [3, []]]]]), ("long_list", list(range(1000))),
        ("empty_dict", {}), ("dict", {"name": "web", "ports": ["8080:80"]}),
        ("dict_order", {"b": 1, "a": 2, "c": 3}), ("int_keys", {1: "a", 2: "b", -3: "c"}),
        ("mixed_keys", {2: "a", "2": "b", None: 0, 1.5: "f", (1, 2): "t", b"k": 1, True: 3}),
        ("wide_dict", {f"k{i}": i for i in range(200)}), ("none_dict", {"a": None}),
        ("empty_tuple", ()), ("tuple", (1, "a")), ("tuple1", (1,)), ("tuple5", (1, 2, 3, 4, 5)),
        ("nested_tuple", ((1, 2), [3, (4,)])),
        ("set", {1, 2, 3}), ("empty_set", set()), ("frozenset", frozenset({"a", "b"})),
        ("str_set", {"x", "y"}), ("shared_tuple", [t, t, {"k": t}]), ("shared_dict", [d, d]),
        ("shared_list", {"a": l, "b": l}), ("deep", deep),
        ("compose", {"version": "3.9", "services": {
            "web": {"image": "nginx:1.25", "ports": ["80:80", "443:443"],
                    "environment": {"A": "1", "B": ""}, "depends_on": ["db"]},
            "db": {"image": "postgres:16", "volumes": ["/data:/var/lib/postgresql/data"],
                   "healthcheck": {"interval": 5, "retries": 3, "ratio": 0.5}}}}),
        ("big_in_dict", {"m": big, "n": 12345678901234}),
        ("big_in_list", [big, -big, 10**40, 0]),
        ("floats", [0.1, 0.2, 0.30000000000000004, 1e-7, 123456789.123, 2.0**-1074]),
        ("bools", [True, False, None]),
        ("svc_hash", {"yaml:hash": "3f2a" * 16, "service_names": ["web", "db"]}),
    ]

def json_ok(v):
    """What the Python DDF's redis (JSON) backend can store: json.dumps without NaN, with str or
    int dict keys (json.dumps turns None/bool/float keys into strings ddf would not guess)."""
    try:
        json.dumps(v, allow_nan=False)
    except (TypeError, ValueError):
        return False
    def keys_ok(x):
        if isinstance(x, dict):
            return all(type(k) in (str, int) for k in x) and all(keys_ok(y) for y in x.values())
        if isinstance(x, (list, tuple)):
            return all(keys_ok(y) for y in x)
        return True
    return keys_ok(v)

def client():
    if BACKEND.startswith("redis"):
        import redis
        host, port = TARGET.split(":")
        return redis.Redis(host=host, port=int(port))
    from pymemcache.client.hash import HashClient
    from pymemcache import serde
    servers = [(h, int(p)) for h, p in (s.split(":") for s in TARGET.split(","))]
    return HashClient(servers, serde=serde.pickle_serde)

def py_write(c, key, v):
    if BACKEND == "redis":
        c.set(key, json.dumps(v).encode())
    elif BACKEND == "redis_pickle":
        c.set(key, pickle.dumps(v, protocol=5))
    else:
        assert c.set(key, v, noreply=False), key

def py_read(c, key):
    if BACKEND.startswith("redis"):
        raw = c.get(key)
        if raw is None:
            return MISSING
        return json.loads(raw) if BACKEND == "redis" else pickle.loads(raw)
    return c.get(key, default=MISSING)

def expected(v):
    return json.loads(json.dumps(v)) if BACKEND == "redis" else v

def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(k1, k2) and same(v1, v2) for (k1, v1), (k2, v2) in zip(a.items(), b.items()))
    return a == b

c = client()
if MODE == "write":
    out = []
    for name, v in shapes():
        ok = json_ok(v)
        if BACKEND != "redis" or ok:
            py_write(c, "py:" + name, v)
        out.append([name, pickle.dumps(v, protocol=5).hex(), ok])
    print(json.dumps(out))
else:
    results = json.load(open(sys.argv[4]))
    failures = []
    for name, v in shapes():
        if name not in results:
            continue
        exp = expected(v)
        r = results[name]
        if r["read"].startswith("ERR"):
            failures.append([name, "ddf could not read Python's value", r["read"]])
        else:
            got = pickle.loads(bytes.fromhex(r["read"]))
            if not same(got, exp):
                failures.append([name, "ddf read", repr(got)[:300], "Python wrote", repr(exp)[:300]])
        if r["write"]:
            failures.append([name, "ddf could not write", r["write"]])
        else:
            got = py_read(c, "rs:" + name)
            if got is MISSING or not same(got, exp):
                failures.append([name, "Python read", repr(got)[:300], "ddf wrote", repr(exp)[:300]])
    print(json.dumps({"checked": len(results), "failures": failures}))
"#;

fn python(args: &[&str]) -> Option<String> {
    let python = ddf_testkit::python()?;
    let out = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Both directions on one backend; returns how many shapes were checked (None: no Python).
fn both_ways(cache: &CacheManager, backend: &str, target: &str, dir: &Path) -> Option<usize> {
    let shapes: Vec<(String, String, bool)> =
        serde_json::from_str(&python(&["write", backend, target])?).unwrap();
    let mut results = serde_json::Map::new();
    for (name, pickled, json_ok) in shapes {
        if backend == "redis" && !json_ok {
            continue;
        }
        let read = match cache.get_value(&format!("py:{name}")) {
            Ok(Some(v)) => hex(&pickle::to_vec(&v).unwrap()),
            Ok(None) => "ERR: a miss".to_owned(),
            Err(e) => format!("ERR: {e}"),
        };
        let value = Value::from_pickle(&unhex(&pickled)).unwrap();
        let write = cache
            .set(&format!("rs:{name}"), &value, None)
            .err()
            .map(|e| e.to_string());
        results.insert(name, serde_json::json!({"read": read, "write": write}));
    }
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::Value::Object(results).to_string()).unwrap();
    let out: serde_json::Value =
        serde_json::from_str(&python(&["check", backend, target, path.to_str().unwrap()]).unwrap())
            .unwrap();
    let failures = out["failures"].as_array().unwrap();
    assert!(
        failures.is_empty(),
        "{backend}: {} of {} shapes differ:\n{}",
        failures.len(),
        out["checked"],
        failures
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    Some(out["checked"].as_u64().unwrap() as usize)
}

fn redis_suite(backend: CacheBackend, min_shapes: usize) {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(
        CacheConfig::default()
            .with_backend(backend)
            .with_redis("127.0.0.1", server.port())
            .with_namespace("")
            .with_pickle_dir(dir.path()),
    )
    .unwrap();
    let target = format!("127.0.0.1:{}", server.port());
    if let Some(n) = both_ways(&cache, backend.as_str(), &target, dir.path()) {
        assert!(n >= min_shapes, "{n} shapes");
    }
}

fn memcached_config(servers: &[MemcachedServer], backend: CacheBackend, dir: &Path) -> CacheConfig {
    CacheConfig::default()
        .with_backend(backend)
        .with_memcached_servers(
            servers
                .iter()
                .map(|s| ServerAddr::parse(&s.server(), 11211).unwrap())
                .collect(),
        )
        .with_namespace("")
        .with_pickle_dir(dir)
}

fn memcached_suite(backend: CacheBackend) {
    let Some(servers) = (0..2)
        .map(|_| MemcachedServer::start())
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(memcached_config(&servers, backend, dir.path())).unwrap();
    let target: Vec<String> = servers.iter().map(MemcachedServer::server).collect();
    if let Some(n) = both_ways(&cache, backend.as_str(), &target.join(","), dir.path()) {
        assert!(n >= 68, "{n} shapes");
    }
}

#[test]
fn redis_json_both_ways() {
    // The shapes json.dumps can write (no bytes, sets, NaN, keys other than str and int): 57 of the 68.
    redis_suite(CacheBackend::Redis, 57);
}

#[test]
fn redis_pickle_both_ways() {
    redis_suite(CacheBackend::RedisPickle, 68);
}

#[test]
fn memcached_both_ways() {
    memcached_suite(CacheBackend::Memcached);
}

#[test]
fn memcached_pickle_both_ways() {
    memcached_suite(CacheBackend::MemcachedPickle);
}

/// Compressed items (flags 8): pymemcache's `CompressedSerde` writes, ddf reads (compression
/// off); ddf writes with `compress_min_bytes = 400`, `CompressedSerde` reads.
#[test]
fn compressed_items_both_ways() {
    let Some(servers) = (0..2)
        .map(|_| MemcachedServer::start())
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let Some(python) = ddf_testkit::python() else {
        return;
    };
    let target: Vec<String> = servers.iter().map(MemcachedServer::server).collect();
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import json, sys
from pymemcache.client.hash import HashClient
from pymemcache import serde
servers = [(h, int(p)) for h, p in (s.split(":") for s in sys.argv[2].split(","))]
c = HashClient(servers, serde=serde.CompressedSerde(min_compress_len=400))
doc = {"services": {f"s{i}": {"image": f"img{i}", "ports": [f"{8000 + i}:80"]} for i in range(200)}}
if sys.argv[1] == "write":
    c.set("z:doc", doc)
    c.set("z:text", "abc" * 1000)
    c.set("z:big", 10**100)  # not compressed: pymemcache cannot compress an int's text (a str)
    c.set("z:small", [1, 2])
    print("ok")
else:
    ok = c.get("rz:doc") == doc and c.get("rz:text") == "abc" * 1000 and c.get("rz:big") == 10**400
    print(json.dumps(ok))
"#;
    let run = |mode: &str| {
        let out = Command::new(&python)
            .args(["-c", script, mode, &target.join(",")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run("write");
    let plain = CacheManager::new(memcached_config(
        &servers,
        CacheBackend::Memcached,
        dir.path(),
    ))
    .unwrap();
    let doc = plain.get_value("z:doc").unwrap().unwrap();
    assert_eq!(doc.type_name(), "dict");
    assert_eq!(
        plain.get::<String>("z:text").unwrap(),
        Some("abc".repeat(1000))
    );
    let big = format!("1{}", "0".repeat(100));
    assert_eq!(
        plain
            .get::<ddf::pickle::BigInt>("z:big")
            .unwrap()
            .map(|n| n.to_string()),
        Some(big)
    );
    assert_eq!(plain.get::<Vec<i32>>("z:small").unwrap(), Some(vec![1, 2]));
    let zipped = CacheManager::new(
        memcached_config(&servers, CacheBackend::Memcached, dir.path())
            .with_compress_min_bytes(Some(400)),
    )
    .unwrap();
    zipped.set("rz:doc", &doc, None).unwrap();
    zipped.set("rz:text", &"abc".repeat(1000), None).unwrap();
    let big: ddf::pickle::BigInt = format!("1{}", "0".repeat(400)).parse().unwrap();
    zipped.set("rz:big", &big, None).unwrap();
    assert_eq!(run("check").trim(), "true");
    // ddf reads its own compressed items back, with or without compression configured.
    assert_eq!(plain.get_value("rz:doc").unwrap(), Some(doc));
}
