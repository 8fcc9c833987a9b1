//! The pickle codec beside serde_json on the seed's record
//! `{'name': 'web', 'ports': ['8080:80'], 'volumes': ['/data:/app/data']}`:
//! `cargo bench -p ddf --bench codec`.
//!
//! Also: ddf's JSON codec (`Codec::Json`, the scan for integers beyond 64 bits included) beside
//! serde_json alone, and (`compress/*`, with a local memcached from ddf-testkit) get/set of a
//! 14 KiB JSON document on the `memcached` backend with `compress_min_bytes` off and at 400
//! (pymemcache's default), with the stored sizes printed.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ddf::testing::internals::pickle;
use ddf::{CacheBackend, CacheConfig, CacheManager, Codec, Item, ServerAddr};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    name: String,
    ports: Vec<String>,
    volumes: Vec<String>,
}

/// `pickle.dumps(record, protocol=5)` from CPython 3.11: what the Python DDF writes.
const PYTHON_P5: &[u8] = b"\x80\x05\x95F\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04name\x94\x8c\x03web\x94\x8c\x05ports\x94]\x94\x8c\x078080:80\x94a\x8c\x07volumes\x94]\x94\x8c\x0f/data:/app/data\x94au.";

fn codec(c: &mut Criterion) {
    let record = Record {
        name: "web".into(),
        ports: vec!["8080:80".into()],
        volumes: vec!["/data:/app/data".into()],
    };
    let pkl = pickle::to_vec(&record).expect("pickle");
    let json = serde_json::to_vec(&record).expect("json");
    assert_eq!(
        pickle::from_slice::<Record>(PYTHON_P5).expect("python pickle"),
        record
    );

    let mut g = c.benchmark_group("codec");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("encode/pickle", |b| {
        b.iter(|| pickle::to_vec(black_box(&record)).expect("pickle"))
    });
    g.bench_function("encode/json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&record)).expect("json"))
    });
    g.bench_function("decode/pickle", |b| {
        b.iter(|| pickle::from_slice::<Record>(black_box(&pkl)).expect("pickle"))
    });
    g.bench_function("decode/pickle_from_python_p5", |b| {
        b.iter(|| pickle::from_slice::<Record>(black_box(PYTHON_P5)).expect("pickle"))
    });
    g.bench_function("decode/json", |b| {
        b.iter(|| serde_json::from_slice::<Record>(black_box(&json)).expect("json"))
    });
    let item = Item::new(json.clone(), 16);
    g.bench_function("decode/json_codec", |b| {
        b.iter(|| {
            Codec::Json
                .decode::<Record>("k", black_box(&item))
                .expect("json")
        })
    });
    g.bench_function("decode_dynamic/pickle_value", |b| {
        b.iter(|| pickle::from_slice_value(black_box(&pkl)).expect("pickle"))
    });
    g.bench_function("decode_dynamic/json_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&json)).expect("json"))
    });
    g.finish();
}

/// A compose-like document of about 14 KiB of JSON text.
fn document() -> serde_json::Value {
    let services: serde_json::Map<String, serde_json::Value> = (0..52)
        .map(|i| {
            (
                format!("service-{i}"),
                serde_json::json!({
                    "image": format!("registry.example.com/team/service-{i}:1.{i}.0"),
                    "ports": [format!("{}:80", 8000 + i)],
                    "volumes": [format!("/srv/data/{i}:/app/data"), "/etc/localtime:/etc/localtime:ro"],
                    "environment": {"LOG_LEVEL": "info", "WORKERS": i % 8 + 1, "REPLICA": i},
                    "depends_on": ["db", "cache"],
                    "healthy": i % 3 != 0,
                    "cpu": 0.25 * f64::from(i % 4 + 1),
                }),
            )
        })
        .collect();
    serde_json::json!({"version": "3.9", "services": services})
}

/// The stored size and flags of a key, read with the meta protocol (`mg KEY s f`).
fn stored(server: &str, key: &str) -> (usize, u32) {
    use std::io::{BufRead, BufReader, Write};
    let s = std::net::TcpStream::connect(server).expect("connect");
    let mut r = BufReader::new(s);
    r.get_mut()
        .write_all(format!("mg {key} s f\r\n").as_bytes())
        .expect("write");
    let mut line = String::new();
    r.read_line(&mut line).expect("read");
    let field = |p: char| -> u64 {
        line.split_whitespace()
            .find_map(|t| t.strip_prefix(p)?.parse().ok())
            .expect("field")
    };
    (field('s') as usize, field('f') as u32)
}

fn compress(c: &mut Criterion) {
    let Some(server) = ddf_testkit::MemcachedServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = document();
    let text = serde_json::to_vec(&doc).expect("json");
    let mut g = c.benchmark_group("compress");
    g.measurement_time(Duration::from_secs(3));
    for (name, min) in [("off", None), ("400", Some(400))] {
        let config = CacheConfig::default()
            .with_backend(CacheBackend::Memcached)
            .with_memcached_servers(vec![
                ServerAddr::parse(&server.server(), 11211).expect("addr"),
            ])
            .with_namespace("bench:")
            .with_pickle_dir(dir.path())
            .with_compress_min_bytes(min);
        let cache = CacheManager::new(config).expect("memcached cache");
        cache.set("doc", &doc, None).expect("set");
        let (size, flags) = stored(&server.server(), "bench:doc");
        println!(
            "compress/{name}: 14 KiB JSON document ({} bytes of JSON text) stored as {size} bytes, flags {flags}",
            text.len()
        );
        assert_eq!(
            cache.get::<serde_json::Value>("doc").expect("get"),
            Some(doc.clone())
        );
        g.bench_function(format!("set/{name}"), |b| {
            b.iter(|| cache.set("doc", black_box(&doc), None).expect("set"))
        });
        g.bench_function(format!("get/{name}"), |b| {
            b.iter(|| cache.get::<serde_json::Value>("doc").expect("get"))
        });
    }
    g.finish();
}

criterion_group!(benches, codec, compress);
criterion_main!(benches);
