//! The Memcached backend against one local `memcached` (from ddf-testkit):
//! `cargo bench -p ddf --bench memcached`.
//!
//! `manager/*` goes through `CacheManager` (codec, value layer, key mapping, placement, pool);
//! `bare/*` is a bare meta-protocol loop on one raw connection to the same server, the floor.
//! Target: manager >= 0.9x bare throughput (time per op <= bare / 0.9).

use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
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
    let cache = CacheManager::new(
        CacheConfig::default()
            .with_backend(CacheBackend::Memcached)
            .with_memcached_servers(vec![
                ServerAddr::parse(&server.server(), 11211).expect("addr"),
            ])
            .with_namespace("bench:"),
    )
    .expect("memcached cache");
    let value = "x".repeat(100);
    cache.set("hit", &value, None).expect("set");
    let keys: Vec<String> = (0..100).map(|i| format!("many:{i}")).collect();
    for k in &keys {
        cache.set(k, &value, None).expect("set");
    }
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut bare = Bare::new(&server.server());

    let mut g = c.benchmark_group("memcached");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("get_100B/manager", |b| {
        b.iter(|| black_box(cache.get::<String>(black_box("hit")).expect("get")))
    });
    g.bench_function("get_100B/bare", |b| {
        b.iter(|| black_box(bare.get(black_box("bench:hit"))))
    });
    g.bench_function("set_100B/manager", |b| {
        b.iter(|| cache.set(black_box("set"), &value, None).expect("set"))
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

criterion_group!(benches, memcached);
criterion_main!(benches);
