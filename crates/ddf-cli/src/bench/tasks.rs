//! `ddf-cache bench --async`: the async face (`AsyncCacheManager`, tasks on a multi-threaded
//! tokio runtime) through the same driver and table as the sync face, each task count in
//! `--tasks`, then its baselines in the same run, on the same server (issue #12):
//!
//! - Redis: `redis-benchmark -c <tasks> -P 1 -t get` per task count, when it is on `PATH` and
//!   the target is a plain `host:port` (no URL, password, TLS, Cluster or Sentinel); and the
//!   sync face's `get` with one thread, for the latency at one task.
//! - Memcached: the sync face with two threads (gets per second).
//! - Other backends: the sync face with one thread (the median `get`).

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use ddf::{AsyncCacheManager, CacheBackend, CacheConfig, CacheManager};
use indicatif::ProgressBar;

use super::{Face, KEY_TTL, Op, Plan, Row, Session, Table, Threads, measure, stopped, tick};
use crate::args::BenchArgs;

/// What is compared, and the ratio.
type Ratio = (String, f64);

/// The async face: `workers` tasks.
struct Tasks<'a> {
    rt: &'a tokio::runtime::Runtime,
    cache: &'a AsyncCacheManager,
}

async fn call(
    cache: &AsyncCacheManager,
    plan: &Plan,
    op: Op,
    t: usize,
    i: usize,
) -> ddf::Result<()> {
    let ttl = Some(KEY_TTL);
    match op {
        Op::Set => cache.set(&plan.key(t, i), &plan.value, ttl).await,
        Op::GetHit => cache.get::<String>(&plan.key(t, i)).await.map(drop),
        Op::GetMiss => cache.get::<String>(&plan.absent(t, i)).await.map(drop),
        Op::Delete => cache.delete(&plan.key(t, i)).await.map(drop),
        Op::SetMany => {
            let keys = plan.batch_keys(t, i);
            let items: Vec<(&str, &str)> = keys
                .iter()
                .map(|k| (k.as_str(), plan.value.as_str()))
                .collect();
            cache.set_many(&items, ttl).await
        }
        Op::GetMany => {
            let keys = plan.batch_keys(t, i);
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            cache.get_many::<String>(&refs).await.map(drop)
        }
        Op::DeleteMany => {
            let keys = plan.batch_keys(t, i);
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            cache.delete_many(&refs).await.map(drop)
        }
    }
}

impl Face for Tasks<'_> {
    fn tag(&self, workers: usize) -> String {
        if workers == 1 {
            "[1 task]".into()
        } else {
            format!("[{workers} tasks]")
        }
    }

    fn run(
        &self,
        plan: &Plan,
        op: Op,
        workers: usize,
        calls: usize,
        bar: &ProgressBar,
    ) -> Vec<ddf::Result<Vec<Duration>>> {
        self.rt.block_on(async {
            // Scoped by `block_on`: every task is awaited below before the borrows end, so the
            // tasks take owned copies (spawned tasks are 'static).
            let handles: Vec<_> = (0..workers)
                .map(|t| {
                    let cache = self.cache.clone();
                    let plan = plan.clone();
                    let bar = bar.clone();
                    tokio::spawn(async move {
                        let mut lat = Vec::with_capacity(calls);
                        for i in 0..calls {
                            if stopped() {
                                break;
                            }
                            let t0 = Instant::now();
                            call(&cache, &plan, op, t, i).await?;
                            lat.push(t0.elapsed());
                            tick(&bar, i);
                        }
                        Ok(lat)
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(workers);
            for h in handles {
                out.push(h.await.unwrap_or_else(|_| Ok(Vec::new())));
            }
            out
        })
    }
}

/// The baselines of a backend (see the module).
enum Baseline {
    /// The sync face with this many threads: compare gets per second.
    Throughput(usize),
    /// The sync face with one thread: compare the median `get` at the lowest task count.
    Latency,
}

fn baseline(backend: CacheBackend) -> Baseline {
    match backend {
        CacheBackend::Memcached | CacheBackend::MemcachedPickle => Baseline::Throughput(2),
        _ => Baseline::Latency,
    }
}

/// Runs the async face's benchmark (see the module).
///
/// # Errors
/// As [`super::run`].
pub(super) fn run(
    configured: &CacheManager,
    args: &BenchArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let counts: Vec<usize> = if args.tasks.is_empty() {
        vec![1]
    } else {
        args.tasks.iter().map(|t| (*t).max(1)).collect()
    };
    let base = baseline(configured.config().backend);
    let sync_threads = match base {
        Baseline::Throughput(n) => n,
        Baseline::Latency => 1,
    };
    let session = Session::open(configured, args, |plan| {
        counts.iter().map(|t| plan.steps(*t)).sum::<usize>() + 2 * plan.calls * sync_threads
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("bench: cannot start a tokio runtime")?;
    let cache = {
        let _in = rt.enter();
        AsyncCacheManager::new(session.cache.config().clone())?
    };
    let (plan, bar) = (&session.plan, &session.bar);
    let face = Tasks {
        rt: &rt,
        cache: &cache,
    };
    let target = redis_benchmark_target(session.cache.config());
    let peer = target.filter(|_| {
        let found = which("redis-benchmark");
        if !found {
            eprintln!("ddf-cache: redis-benchmark is not on PATH: no peer figures");
        }
        found
    });
    let result = (|| -> anyhow::Result<(Vec<Row>, Vec<Ratio>)> {
        // The sync face first, on the same keys (its set fills what its get reads), so that
        // its figures come from the same minute as the async face's first rows (a loaded
        // machine's round trip changes from minute to minute); each peer right after the task
        // count it is compared with.
        let sync = Threads(&session.cache);
        measure(&sync, plan, Op::Set, sync_threads, bar)?;
        let sync_get = measure(&sync, plan, Op::GetHit, sync_threads, bar)?;
        let mut rows = Vec::new();
        let mut ratios = Vec::new();
        let mut compared = false;
        for &n in &counts {
            for op in Op::ALL {
                let row = measure(&face, plan, op, n, bar)?;
                if op == Op::GetHit {
                    let what = format!("{} ÷ sync {}", row.op, sync_get.op);
                    match base {
                        Baseline::Throughput(_) => ratios.push((
                            format!("gets/s, {what}"),
                            row.per_sec / sync_get.per_sec.max(1e-9),
                        )),
                        Baseline::Latency => {
                            if !compared && let (Some(a), Some(s)) = (row.median, sync_get.median) {
                                compared = true;
                                ratios.push((
                                    format!("median, {what}"),
                                    a.as_secs_f64() / s.as_secs_f64().max(1e-12),
                                ));
                            }
                        }
                    }
                    if let Some(target) = &peer
                        && !stopped()
                    {
                        bar.set_message(format!("redis-benchmark -c {n}"));
                        match redis_benchmark(target, n, plan.calls * n) {
                            Ok(p) => {
                                ratios.push((
                                    format!("gets/s, {} ÷ {}", row.op, p.op),
                                    row.per_sec / p.per_sec.max(1e-9),
                                ));
                                rows.push(row);
                                rows.push(p);
                                continue;
                            }
                            // The rows measured so far stand; the peer's figure is missing.
                            Err(e) => {
                                eprintln!("ddf-cache: note: {e:#}: no peer figure for {n} tasks")
                            }
                        }
                    }
                }
                rows.push(row);
            }
        }
        rows.push(Row {
            op: format!("sync {}", sync_get.op),
            ..sync_get
        });
        Ok((rows, ratios))
    })();
    let (rows, ratios) = session.close(result)?;
    let table = Table {
        backend: cache.backend_name(),
        codec: cache.codec().name(),
        workers: ("tasks", &counts),
        stats: cache.stats(),
        rows: &rows,
        ratios: &ratios,
    };
    // Every get of a written key should hit: more misses than the `get (miss)` rows' mean
    // that the server evicted keys (memcached's default 64 MB holds about 300,000 of them).
    let expected_misses: usize = counts.iter().sum::<usize>() * plan.calls;
    if table.stats.misses > expected_misses as u64 {
        eprintln!(
            "ddf-cache: note: {} reads of keys the benchmark had written missed (the server \
             evicted them?): lower --ops or --tasks, or give the server more memory",
            table.stats.misses - expected_misses as u64
        );
    }
    cache.cleanup();
    drop(cache);
    drop(rt);
    table.print(args, out)
}

/// `host` and `port` of a Redis that `redis-benchmark` can reach as ddf does: a plain TCP
/// server without a password (a password on its command line would show in `ps`).
fn redis_benchmark_target(c: &CacheConfig) -> Option<(String, u16)> {
    let redis = matches!(c.backend, CacheBackend::Redis | CacheBackend::RedisPickle);
    let plain = c.redis_url.is_none()
        && c.redis_password.is_none()
        && c.redis_ca_file.is_none()
        && c.redis_cluster_nodes.is_empty()
        && c.redis_sentinels.is_empty();
    if redis && !plain {
        eprintln!(
            "ddf-cache: redis-benchmark is run only against a plain host:port without a \
             password: no peer figures"
        );
    }
    (redis && plain).then(|| (c.redis_host.clone(), c.redis_port))
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// `redis-benchmark -c <clients> -P 1 -t get -n <requests>` on `target`'s database 0 (it
/// reads a key of its own, `key:__rand_int__`, absent or not; ddf reads a 100-byte value it
/// wrote, so the ratio is conservative for ddf).
///
/// redis-benchmark times its run in whole milliseconds and prints `inf requests per second`
/// for a run under one, so it is given at least [`PEER_MIN_REQUESTS`] requests whatever
/// `requests` is, and a figure that is not finite is an error rather than a number.
///
/// Bounded: redis-benchmark retries a refused connection without end, so a server that went
/// away during the bench would hold it forever. It is killed after [`peer_deadline`] or when
/// the bench is interrupted.
fn redis_benchmark(target: &(String, u16), clients: usize, requests: usize) -> anyhow::Result<Row> {
    use std::io::Read;
    use std::process::Stdio;

    let name = format!("redis-benchmark -c {clients} -P 1 get");
    let requests = requests.max(clients).max(PEER_MIN_REQUESTS);
    let mut child = Command::new("redis-benchmark")
        .args(["-h", &target.0, "-p", &target.1.to_string()])
        .args(["-c", &clients.to_string(), "-P", "1", "-t", "get", "-q"])
        .args(["-n", &requests.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("bench: cannot run redis-benchmark")?;
    // Read both pipes beside the wait, so that a full pipe never stalls the child.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + peer_deadline(requests);
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .context("bench: waiting for redis-benchmark")?
        {
            break Some(status);
        }
        if stopped() || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (text, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let Some(status) = status else {
        anyhow::bail!(
            "bench: {name} was stopped after {:?} (is the server still up?)",
            peer_deadline(requests)
        );
    };
    match (status.success(), parse_redis_benchmark(&text)) {
        (true, Some((per_sec, p50))) => Ok(Row {
            op: name,
            ops: requests,
            median: p50,
            p99: None,
            per_sec,
        }),
        // redis-benchmark prints its errors on stdout ("Error: Server closed the connection").
        _ => anyhow::bail!(
            "bench: {name} failed ({status}): {}",
            last_line(&err)
                .or_else(|| last_line(&text))
                .unwrap_or("no output")
        ),
    }
}

/// The fewest requests redis-benchmark is asked for: at 120,000 a second (loopback, 64
/// clients) they take 40 ms, so its millisecond clock reads the rate within a few percent.
const PEER_MIN_REQUESTS: usize = 5_000;

/// How long redis-benchmark may run: 30 s plus a millisecond per request (loopback serves
/// tens of thousands a second; only a server that is gone takes this long).
fn peer_deadline(requests: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(u64::try_from(requests).unwrap_or(u64::MAX))
}

/// The last line of `text` that is not blank.
fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// Requests per second and the median of `redis-benchmark -q`'s
/// `GET: 123456.79 requests per second, p50=0.255 msec` (progress lines end in `\r`).
fn parse_redis_benchmark(text: &str) -> Option<(f64, Option<Duration>)> {
    let line = text
        .split(['\r', '\n'])
        .rev()
        .find(|l| l.contains("requests per second"))?;
    let rps = line
        .split(':')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite())?;
    let p50 = line
        .split("p50=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|ms| ms.parse::<f64>().ok())
        .map(|ms| Duration::from_secs_f64(ms / 1000.0));
    Some((rps, p50))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_redis_benchmark_quiet_output() {
        let text = "GET: rps=0.0 (overall: nan) avg_msec=nan (overall: nan)\r\
                    GET: 123456.79 requests per second, p50=0.255 msec\n";
        let (rps, p50) = super::parse_redis_benchmark(text).unwrap_or_default();
        assert!((rps - 123_456.79).abs() < 0.01);
        assert_eq!(p50, Some(std::time::Duration::from_micros(255)));
        assert!(super::parse_redis_benchmark("nothing").is_none());
        // A run shorter than redis-benchmark's millisecond clock.
        let inf = "GET: inf requests per second, p50=0.087 msec\n";
        assert!(super::parse_redis_benchmark(inf).is_none());
    }
}
