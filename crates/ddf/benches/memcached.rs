//! The Memcached backend against one local `memcached` (from ddf-testkit):
//! `cargo bench -p ddf --bench memcached`.
//!
//! `manager/*` goes through `CacheManager` (codec, value layer, key mapping, placement, pool);
//! `direct/*` is the backend without the breaker and fallback (`CacheManager::with_backend`);
//! `bare/*` is a bare meta-protocol loop on one raw connection to the same server, the floor.
//! Target: manager >= 0.9x bare throughput (time per op <= bare / 0.9).

use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ddf::testing::internals::MemcachedBackend;
use ddf::{CacheBackend, CacheConfig, CacheManager, ServerAddr};
use ddf_testkit::MemcachedServer;

/// A bare meta-protocol connection: what a hand-written loop would do.
struct Bare {
    r: BufReader<TcpStream>,
    line: String,
}

impl Bare {
    fn new(addr: &str) -> Self {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Bare {
            r: BufReader::new(s),
            line: String::new(),
        }
    }

    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.r
            .get_mut()
            .write_all(format!("mg {key} v f\r\n").as_bytes())
            .expect("write");
        self.line.clear();
        self.r.read_line(&mut self.line).expect("read");
        if self.line.starts_with("EN") {
            return None;
        }
        let n: usize = self
            .line
            .split(' ')
            .nth(1)
            .expect("size")
            .parse()
            .expect("size");
        let mut data = vec![0; n + 2];
        self.r.read_exact(&mut data).expect("data");
        data.truncate(n);
        Some(data)
    }

    fn set(&mut self, key: &str, value: &[u8]) {
        let mut cmd = format!("ms {key} {} F16\r\n", value.len()).into_bytes();
        cmd.extend_from_slice(value);
        cmd.extend_from_slice(b"\r\n");
        self.r.get_mut().write_all(&cmd).expect("write");
        self.line.clear();
        self.r.read_line(&mut self.line).expect("read");
        assert_eq!(self.line, "HD\r\n");
    }
}

fn memcached(c: &mut Criterion) {
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = CacheConfig::default()
        .with_backend(CacheBackend::Memcached)
        .with_memcached_servers(vec![
            ServerAddr::parse(&server.server(), 11211).expect("addr"),
        ])
        .with_namespace("bench:")
        .with_pickle_dir(dir.path());
    // What users get: the backend behind the breaker and fallback.
    let cache = CacheManager::new(config.clone()).expect("memcached cache");
    // The backend alone.
    let direct = CacheManager::with_backend(
        config.clone(),
        Arc::new(MemcachedBackend::from_config(&config).expect("backend")),
    );
    let value = "x".repeat(100);
    cache.set("hit", &value, None).expect("set");
    let keys: Vec<String> = (0..100).map(|i| format!("many:{i}")).collect();
    for k in &keys {
        cache.set(k, &value, None).expect("set");
    }
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut bare = Bare::new(&server.server());

    interleaved(&cache, &direct, &mut bare, &value);

    let mut g = c.benchmark_group("memcached");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("get_100B/manager", |b| {
        b.iter(|| black_box(cache.get::<String>(black_box("hit")).expect("get")))
    });
    g.bench_function("get_100B/direct", |b| {
        b.iter(|| black_box(direct.get::<String>(black_box("hit")).expect("get")))
    });
    g.bench_function("get_100B/bare", |b| {
        b.iter(|| black_box(bare.get(black_box("bench:hit"))))
    });
    g.bench_function("set_100B/manager", |b| {
        b.iter(|| cache.set(black_box("set"), &value, None).expect("set"))
    });
    g.bench_function("set_100B/direct", |b| {
        b.iter(|| direct.set(black_box("set"), &value, None).expect("set"))
    });
    g.bench_function("set_100B/bare", |b| {
        b.iter(|| bare.set(black_box("bench:set"), value.as_bytes()))
    });
    g.bench_function("get_many_100/manager", |b| {
        b.iter(|| black_box(cache.get_many::<String>(&key_refs).expect("get_many")))
    });
    g.bench_function("get_100_one_by_one/bare", |b| {
        b.iter(|| {
            for k in &keys {
                black_box(bare.get(&format!("bench:{k}")));
            }
        })
    });
    g.finish();
}

/// The three ways measured in alternating blocks, so that load from other processes on the
/// machine hits all of them alike; prints the median block time per op and the ratios.
fn interleaved(cache: &CacheManager, direct: &CacheManager, bare: &mut Bare, value: &str) {
    const BLOCK: u32 = 500;
    const ROUNDS: usize = 30;
    let mut t: [Vec<f64>; 6] = Default::default();
    for _ in 0..ROUNDS {
        let time = |f: &mut dyn FnMut()| {
            let start = Instant::now();
            for _ in 0..BLOCK {
                f();
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(BLOCK)
        };
        t[0].push(time(&mut || {
            black_box(cache.get::<String>("hit").expect("get"));
        }));
        t[1].push(time(&mut || {
            black_box(direct.get::<String>("hit").expect("get"));
        }));
        t[2].push(time(&mut || {
            black_box(bare.get("bench:hit"));
        }));
        t[3].push(time(&mut || cache.set("set", value, None).expect("set")));
        t[4].push(time(&mut || direct.set("set", value, None).expect("set")));
        t[5].push(time(&mut || bare.set("bench:set", value.as_bytes())));
    }
    let med: Vec<f64> = t
        .iter_mut()
        .map(|v| {
            v.sort_by(f64::total_cmp);
            v[ROUNDS / 2]
        })
        .collect();
    eprintln!(
        "interleaved medians (us/op): get manager {:.2} direct {:.2} bare {:.2} | set manager {:.2} direct {:.2} bare {:.2}",
        med[0], med[1], med[2], med[3], med[4], med[5]
    );
    eprintln!(
        "throughput vs bare: get manager {:.2}x direct {:.2}x | set manager {:.2}x direct {:.2}x",
        med[2] / med[0],
        med[2] / med[1],
        med[5] / med[3],
        med[5] / med[4]
    );
}

criterion_group!(benches, memcached);
criterion_main!(benches);
