//! `get` and `set` through [`CacheManager`] against a bare protocol loop (one blocking socket,
//! one request per call) in the same process and run, for Memcached and Redis, with
//! `redis-benchmark -c 1 -P 1 -t get,set -d 100` beside them. Starts its own servers (the test
//! kit's, on free loopback ports).
//!
//! ```text
//! cargo run --release -p ddf --example write_path -- [N per loop, default 20000] [runs, default 5]
//! ```
//!
//! Prints one table: for each backend and operation, the median over the runs of the rate
//! implied by the median latency (steadier than a mean on a shared machine) of the bare loop, of
//! ddf, their ratio (the median of the per-run ratios), and redis-benchmark's rate.
//!
//! The four loops of a run are interleaved (bare set, ddf set, bare get, ddf get) so that both
//! sides see the same machine load.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Instant;

use ddf::{CacheBackend, CacheConfig, CacheManager, ServerAddr};
use ddf_testkit::{MemcachedServer, RedisServer};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const VALUE_LEN: usize = 100;

/// Operations per second implied by the median latency of `n` calls of `f`.
fn rate(n: usize, mut f: impl FnMut(usize) -> Res<()>) -> Res<f64> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i)?;
        lat.push(t.elapsed().as_nanos() as f64);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(1e9 / lat[n / 2])
}

/// The bare loop: one socket, one request formatted into one buffer, one write, one read.
struct Bare {
    w: TcpStream,
    r: BufReader<TcpStream>,
    req: Vec<u8>,
    line: String,
    redis: bool,
    value: String,
}

impl Bare {
    fn connect(addr: &str, redis: bool) -> Res<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(Bare {
            w: s.try_clone()?,
            r: BufReader::new(s),
            req: Vec::with_capacity(256),
            line: String::new(),
            redis,
            value: "x".repeat(VALUE_LEN),
        })
    }

    fn set(&mut self, i: usize) -> Res<()> {
        let key = format!("raw:{}", i % 1000);
        self.req.clear();
        self.line.clear();
        if self.redis {
            write!(
                self.req,
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{}\r\n",
                key.len(),
                self.value.len(),
                self.value
            )?;
        } else {
            write!(self.req, "ms {key} {} T0\r\n{}\r\n", VALUE_LEN, self.value)?;
        }
        self.w.write_all(&self.req)?;
        self.r.read_line(&mut self.line)?;
        Ok(())
    }

    fn get(&mut self, i: usize) -> Res<()> {
        let key = format!("raw:{}", i % 1000);
        self.req.clear();
        self.line.clear();
        if self.redis {
            write!(self.req, "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len())?;
        } else {
            write!(self.req, "mg {key} v\r\n")?;
        }
        self.w.write_all(&self.req)?;
        self.r.read_line(&mut self.line)?;
        let len = if self.redis {
            self.line.trim().strip_prefix('$').map(str::parse::<i64>)
        } else {
            self.line
                .strip_prefix("VA ")
                .and_then(|r| r.split_whitespace().next())
                .map(str::parse::<i64>)
        };
        if let Some(len) = len.transpose()?.filter(|l| *l >= 0) {
            let mut buf = vec![0u8; len as usize + 2];
            self.r.read_exact(&mut buf)?;
        }
        Ok(())
    }
}

/// `redis-benchmark -c 1 -P 1 -t get,set -d 100`: requests per second of SET and GET.
fn redis_benchmark(port: u16, n: usize) -> Option<(f64, f64)> {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "1",
            "-P",
            "1",
            "-t",
            "set,get",
        ])
        .args([
            "-d",
            &VALUE_LEN.to_string(),
            "-n",
            &n.to_string(),
            "-r",
            "1000",
            "--csv",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut set = None;
    let mut get = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').map(|s| s.trim_matches('"')).collect();
        match (f.first(), f.get(1).and_then(|v| v.parse::<f64>().ok())) {
            (Some(&"SET"), Some(v)) => set = Some(v),
            (Some(&"GET"), Some(v)) => get = Some(v),
            _ => {}
        }
    }
    Some((set?, get?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Per run: bare set, ddf set, bare get, ddf get (rates), and redis-benchmark's set and get.
fn run_once(
    cache: &CacheManager,
    bare: &mut Bare,
    n: usize,
    redis_port: Option<u16>,
) -> Res<[f64; 6]> {
    let value = "x".repeat(VALUE_LEN);
    let keys: Vec<String> = (0..1000).map(|i| format!("k:{i}")).collect();
    let bare_set = rate(n, |i| bare.set(i))?;
    let ddf_set = rate(n, |i| Ok(cache.set(&keys[i % 1000], &value, None)?))?;
    let bare_get = rate(n, |i| bare.get(i))?;
    let ddf_get = rate(n, |i| {
        cache.get::<String>(&keys[i % 1000])?;
        Ok(())
    })?;
    let (rb_set, rb_get) = redis_port
        .and_then(|p| redis_benchmark(p, n))
        .unwrap_or((f64::NAN, f64::NAN));
    Ok([bare_set, ddf_set, bare_get, ddf_get, rb_set, rb_get])
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let runs: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let redis = RedisServer::start().ok_or("redis-server is not installed")?;
    let memcached = MemcachedServer::start().ok_or("memcached is not installed")?;
    let dir = tempfile::tempdir()?;

    println!(
        "N = {n} per loop, {runs} runs; rate = 1 / median latency; ratio = median of per-run ddf/bare"
    );
    println!(
        "{:<10} {:<4} {:>11} {:>11} {:>7} {:>16}",
        "backend", "op", "bare op/s", "ddf op/s", "ratio", "redis-benchmark"
    );
    for backend in [CacheBackend::Memcached, CacheBackend::Redis] {
        let is_redis = backend == CacheBackend::Redis;
        let mut config = CacheConfig::default()
            .with_backend(backend)
            .with_pickle_dir(dir.path())
            .with_namespace("wp:");
        let addr = if is_redis {
            config = config.with_redis("127.0.0.1", redis.port());
            format!("127.0.0.1:{}", redis.port())
        } else {
            config =
                config.with_memcached_servers(vec![ServerAddr::parse(&memcached.server(), 11211)?]);
            memcached.server()
        };
        let cache = CacheManager::new(config)?;
        let mut bare = Bare::connect(&addr, is_redis)?;
        // Warm-up: connections, server-side item allocation.
        run_once(&cache, &mut bare, n / 10, None)?;
        let mut per_run: Vec<[f64; 6]> = Vec::new();
        for _ in 0..runs {
            per_run.push(run_once(
                &cache,
                &mut bare,
                n,
                is_redis.then_some(redis.port()),
            )?);
        }
        let col = |i: usize| median(per_run.iter().map(|r| r[i]).collect());
        let ratio = |d: usize, b: usize| median(per_run.iter().map(|r| r[d] / r[b]).collect());
        for (op, b, d, rb) in [("set", 0, 1, 4), ("get", 2, 3, 5)] {
            let rb = col(rb);
            println!(
                "{:<10} {:<4} {:>11.0} {:>11.0} {:>6.3}x {:>16}",
                backend.as_str(),
                op,
                col(b),
                col(d),
                ratio(d, b),
                if rb.is_nan() {
                    "-".to_owned()
                } else {
                    format!("{rb:.0}")
                }
            );
        }
    }
    Ok(())
}
