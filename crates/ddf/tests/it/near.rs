//! The near cache against a real Redis server (issue #13): coherence across processes, with
//! a Rust and a Python (redis-py) writer, and under faults (the tracking connection killed,
//! Redis stopped with SIGSTOP, Redis restarted).
//!
//! The rule checked after each run, from both processes' logs (same `CLOCK_MONOTONIC`): no read
//! returns a version older than one the writer had finished writing 5 ms or more before the
//! read began. A read that finds nothing (a miss, an error, a server restarted empty) is not a
//! value the near cache held and is not checked. The checker is shown to catch a planted stale
//! read.

use std::io::Write;
use std::process::Child;
use std::time::{Duration, Instant};

use ddf::{CacheConfig, CacheManager};
use ddf_testkit::{RedisServer, redis_cli};

use crate::process;
use crate::redis_config::{Redis, near_or_writer, redis};

const JOB: &str = "DDF_NEAR_JOB";
/// The issue's rule: a read may miss a write finished less than this before it began. It holds
/// however late the tracking thread is scheduled, because hits drain the tracking socket
/// themselves (`Near::catch_up`); `DDF_NEAR_NO_CATCH_UP=1` turns that off to show the
/// difference (those runs are expected to fail on a loaded machine).
pub(crate) const GRACE_NS: u64 = 5_000_000;

/// A reader's near cache, draining the tracking socket on its hits unless
/// `DDF_NEAR_NO_CATCH_UP=1` (the behaviour before the strict rule's catch-up, to measure both).
pub(crate) fn reader(config: CacheConfig) -> CacheManager {
    let off = std::env::var_os("DDF_NEAR_NO_CATCH_UP").is_some_and(|v| v == "1");
    ddf::testing::internals::without_catch_up(off);
    CacheManager::new(config).unwrap()
}

/// A Redis cache on 127.0.0.1:`port` in `namespace`: a coherence test's reader (`near`) or its
/// writer ([`near_or_writer`]).
pub(crate) fn config(port: u16, namespace: &str, dir: &std::path::Path, near: bool) -> CacheConfig {
    let t = Duration::from_millis(500);
    near_or_writer(redis(Redis::Server(port), namespace, dir, t, t), near)
}

/// One read: when it began, and the version it returned (`None`: nothing, or an error).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadRec {
    pub(crate) start: u64,
    pub(crate) version: Option<u64>,
}

/// One write: the version, and when the server had acknowledged it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteRec {
    pub(crate) version: u64,
    pub(crate) done: u64,
}

/// The reads that break the rule (a version older than one finished `GRACE_NS` before).
pub(crate) fn stale(writes: &[WriteRec], reads: &[ReadRec], grace: u64) -> Vec<(ReadRec, u64)> {
    let mut w: Vec<WriteRec> = writes.to_vec();
    w.sort_by_key(|w| w.done);
    // The newest version finished by each write's time (versions only grow, but be exact).
    let mut best = Vec::with_capacity(w.len());
    let mut top = 0;
    for x in &w {
        top = top.max(x.version);
        best.push(top);
    }
    let mut bad = Vec::new();
    for r in reads {
        let Some(v) = r.version else { continue };
        let Some(limit) = r.start.checked_sub(grace) else {
            continue;
        };
        let n = w.partition_point(|x| x.done <= limit);
        if n > 0 && v < best[n - 1] {
            bad.push((*r, best[n - 1]));
        }
    }
    bad
}

/// For each write, how long after it finished the first read that began after it and
/// returned it (or newer): the visibility delay, in microseconds (median, p99, max).
pub(crate) fn delays(writes: &[WriteRec], reads: &[ReadRec]) -> (u64, u64, u64, usize) {
    let mut out = Vec::new();
    let mut i = 0;
    for w in writes {
        while i < reads.len() && reads[i].start < w.done {
            i += 1;
        }
        if let Some(r) = reads[i..]
            .iter()
            .find(|r| r.version.is_some_and(|v| v >= w.version))
        {
            out.push((r.start - w.done) / 1000);
        }
    }
    out.sort_unstable();
    if out.is_empty() {
        return (0, 0, 0, 0);
    }
    let p = |q: f64| out[((out.len() - 1) as f64 * q) as usize];
    (p(0.5), p(0.99), *out.last().unwrap(), out.len())
}

fn parse_writes(log: &str) -> Vec<WriteRec> {
    log.lines()
        .filter_map(|l| {
            let l = l.strip_prefix("W ")?;
            let (v, t) = l.split_once(' ')?;
            Some(WriteRec {
                version: v.parse().ok()?,
                done: t.trim().parse().ok()?,
            })
        })
        .collect()
}

/// The writer child: a new version every millisecond for `ms` milliseconds, each logged with
/// when `set` returned Ok.
#[test]
fn writer() {
    let Some(job) = process::job(JOB) else {
        return;
    };
    let mut parts = job.split(' ');
    let port: u16 = parts.next().unwrap().parse().unwrap();
    let namespace = parts.next().unwrap().to_owned();
    let ms: u64 = parts.next().unwrap().parse().unwrap();
    let log = parts.next().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(config(port, &namespace, dir.path(), false)).unwrap();
    let end = Instant::now() + Duration::from_millis(ms);
    // A file, not stdout: the parent reads the log after the run, and a pipe holds 64 KiB.
    let mut out = std::io::BufWriter::new(std::fs::File::create(log).unwrap());
    let mut v = 0u64;
    while Instant::now() < end {
        v += 1;
        if cache.set("k", &v, None).is_ok() {
            writeln!(out, "W {v} {}", process::mono_ns()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    out.flush().unwrap();
}

const PY_WRITER: &str = r#"
import sys, time, redis
port, key, ms = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])  # argv[4]: the log
r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5)
end = time.monotonic_ns() + ms * 1_000_000
out = []
v = 0
while time.monotonic_ns() < end:
    v += 1
    try:
        r.set(key, str(v))
        out.append("W %d %d" % (v, time.monotonic_ns()))
    except Exception:
        pass
    time.sleep(0.001)
open(sys.argv[4], "w").write("\n".join(out) + "\n")
"#;

/// What the reader saw while `writer` ran, with `faults` applied by the reader's thread at
/// the given times; the writer's log.
fn run(
    server: &mut RedisServer,
    namespace: &str,
    writer: (Child, tempfile::TempDir),
    faults: &mut dyn FnMut(&mut RedisServer, Duration),
) -> (Vec<WriteRec>, Vec<ReadRec>, ddf::CacheStats) {
    let dir = tempfile::tempdir().unwrap();
    let cache = reader(config(server.port(), namespace, dir.path(), true));
    let (mut writer, logs) = writer;
    let began = Instant::now();
    let mut reads = Vec::with_capacity(1 << 20);
    let mut n = 0u64;
    loop {
        let start = process::mono_ns();
        let version = cache.get::<u64>("k").ok().flatten();
        if reads.len() < 4_000_000 {
            reads.push(ReadRec { start, version });
        }
        n += 1;
        if n.is_multiple_of(256) {
            faults(server, began.elapsed());
            if writer.try_wait().unwrap().is_some() {
                break;
            }
        }
    }
    let stats = cache.stats();
    process::check(writer, "the writer");
    let log = std::fs::read_to_string(logs.path().join("writes.log")).unwrap();
    (parse_writes(&log), reads, stats)
}

/// A directory for a writer's log (`writes.log`).
fn log_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn rust_writer(port: u16, namespace: &str, ms: u64) -> (Child, tempfile::TempDir) {
    let logs = log_dir();
    let path = logs.path().join("writes.log");
    let child = process::child(
        "near::writer",
        JOB,
        &format!("{port} {namespace} {ms} {}", path.display()),
    )
    .spawn()
    .unwrap();
    (child, logs)
}

fn verdict(what: &str, writes: &[WriteRec], reads: &[ReadRec], stats: &ddf::CacheStats) {
    let bad = stale(writes, reads, GRACE_NS);
    let (median, p99, max, seen) = delays(writes, reads);
    let mut versions: Vec<u64> = bad.iter().filter_map(|(r, _)| r.version).collect();
    versions.dedup();
    eprintln!(
        "stale reads returned {} distinct versions; the latest came {} µs after the write it missed",
        versions.len(),
        bad.iter()
            .map(|(r, want)| {
                let done = writes
                    .iter()
                    .find(|w| w.version == *want)
                    .map_or(0, |w| w.done);
                (r.start - done) / 1000
            })
            .max()
            .unwrap_or(0)
    );
    eprintln!(
        "near coherence ({what}): {} writes, {} reads, {} stale by the 5 ms rule; visibility delay of {seen} writes: \
         median {median} µs, p99 {p99} µs, max {max} µs; {stats}",
        writes.len(),
        reads.len(),
        bad.len()
    );
    assert!(writes.len() > 100, "{what}: the writer wrote too little");
    assert!(
        stats.near_hits > 0,
        "{what}: the near cache never served: {stats}"
    );
    let grace = GRACE_NS;
    assert!(
        bad.is_empty(),
        "{what}: {} stale reads (bound {} ms), first: {:?}",
        bad.len(),
        grace / 1_000_000,
        bad.first()
    );
    // The checker catches a stale read planted in these very logs.
    if let Some(last) = writes.iter().max_by_key(|w| w.done) {
        let planted = ReadRec {
            start: last.done + grace,
            version: Some(last.version.saturating_sub(1)),
        };
        let mut with = reads.to_vec();
        with.push(planted);
        assert_eq!(
            stale(writes, &with, grace).len(),
            1,
            "the checker missed a planted stale read"
        );
    }
}

#[test]
fn the_checker_flags_a_read_older_than_a_write_finished_5_ms_before_it() {
    let w = |version, ms: u64| WriteRec {
        version,
        done: ms * 1_000_000,
    };
    let r = |ms: u64, v| ReadRec {
        start: ms * 1_000_000,
        version: Some(v),
    };
    let writes = [w(1, 10), w(2, 11), w(3, 20)];
    // Version 2 finished at 11 ms: a read at 16 ms may not return 1; one at 15 ms may.
    assert!(stale(&writes, &[r(15, 1), r(16, 2), r(30, 3)], GRACE_NS).is_empty());
    assert_eq!(stale(&writes, &[r(16, 1)], GRACE_NS).len(), 1);
    assert_eq!(stale(&writes, &[r(26, 2)], GRACE_NS).len(), 1);
}

#[test]
fn a_reader_never_sees_a_version_older_than_one_written_5_ms_before_by_another_process() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let w = rust_writer(server.port(), "nearc:", 3000);
    let (writes, reads, stats) = run(&mut server, "nearc:", w, &mut |_, _| {});
    verdict("Rust writer", &writes, &reads, &stats);
}

#[test]
fn the_same_with_redis_py_as_the_writer() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let Some(py) = ddf_testkit::python() else {
        return;
    };
    let logs = log_dir();
    let path = logs.path().join("writes.log");
    let port = server.port().to_string();
    let w = std::process::Command::new(py)
        .args(["-c", PY_WRITER, &port, "nearp:k", "3000"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (writes, reads, stats) = run(&mut server, "nearp:", (w, logs), &mut |_, _| {});
    verdict("redis-py writer", &writes, &reads, &stats);
}

/// The ids of this test's tracking connections (`CLIENT SETNAME ddf-near-<pid>-<n>`).
/// Keys, rounds and the quiet gap of the burst test.
const BURST_KEYS: usize = 32;
const BURST_ROUNDS: u64 = 6;
const QUIET: Duration = Duration::from_millis(300);

/// Another cache (no near cache, so the reader learns only from the server's pushes) rewrites
/// `BURST_KEYS` keys in bursts separated by `QUIET` gaps while a thread reads them all in a loop
/// through a near cache; `plant`: the reader's tracking thread ignores one invalidation, in the
/// third burst. Returns the reads that broke the rule (a version older than one written
/// `GRACE_NS` before the read began) and the reader's statistics.
fn bursts(port: u16, namespace: &str, plant: bool) -> (usize, ddf::CacheStats) {
    let dir = tempfile::tempdir().unwrap();
    let near = reader(config(port, namespace, dir.path(), true));
    let writer = CacheManager::new(config(port, namespace, dir.path(), false)).unwrap();
    let key = |i: usize| format!("b{i}");
    for i in 0..BURST_KEYS {
        writer.set(&key(i), &0u64, None).unwrap();
    }
    writer.set("warm", "w", None).unwrap();
    wait_for_near_hit(&near, "warm");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (writes, reads) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut reads: Vec<Vec<ReadRec>> = vec![Vec::new(); BURST_KEYS];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, log) in reads.iter_mut().enumerate() {
                    let start = process::mono_ns();
                    let version = near.get::<u64>(&key(i)).ok().flatten();
                    log.push(ReadRec { start, version });
                }
            }
            reads
        });
        let mut writes: Vec<Vec<WriteRec>> = vec![Vec::new(); BURST_KEYS];
        for round in 1..=BURST_ROUNDS {
            std::thread::sleep(QUIET);
            if plant && round == 3 {
                ddf::testing::internals::drop_invalidations(namespace, 1);
            }
            for (i, log) in writes.iter_mut().enumerate() {
                writer.set(&key(i), &round, None).unwrap();
                log.push(WriteRec {
                    version: round,
                    done: process::mono_ns(),
                });
            }
        }
        std::thread::sleep(QUIET);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (writes, reader.join().unwrap())
    });
    ddf::testing::internals::drop_invalidations(namespace, 0);
    let grace = GRACE_NS;
    let bad = writes
        .iter()
        .zip(&reads)
        .map(|(w, r)| stale(w, r, grace).len())
        .sum();
    (bad, near.stats())
}

/// Review finding 2: the rule holds across many keys rewritten in bursts, and the test can see a
/// lost invalidation: with one planted (the tracking thread ignores one key's push), reads in
/// the following quiet gap return the old version and are flagged.
#[test]
fn bursts_across_many_keys_yield_no_stale_read_and_a_lost_invalidation_is_caught() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (bad, stats) = bursts(server.port(), "nearb:", false);
    eprintln!("bursts: {bad} stale reads; {stats}");
    assert!(stats.near_hits > 0, "the near cache never served: {stats}");
    assert_eq!(bad, 0, "stale reads in the quiet gaps: {stats}");
    let (bad, stats) = bursts(server.port(), "nearbp:", true);
    eprintln!("bursts with a planted lost invalidation: {bad} stale reads; {stats}");
    assert!(bad > 0, "the lost invalidation was not caught: {stats}");
}

fn tracking_ids(port: u16) -> Vec<String> {
    let me = format!("name=ddf-near-{}-", std::process::id());
    redis_cli(port, &["CLIENT", "LIST"])
        .lines()
        .filter(|l| l.contains(&me))
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn faults_on_the_invalidation_channel_and_the_server_yield_no_stale_read() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let port = server.port();
    let w = rust_writer(port, "nearf:", 7000);
    let mut step = 0;
    let (writes, reads, stats) = run(&mut server, "nearf:", w, &mut |s, at| {
        let due = [1000, 2500, 4000, 5000];
        if step < due.len() && at >= Duration::from_millis(due[step]) {
            match step {
                0 => {
                    let ids = tracking_ids(port);
                    assert!(!ids.is_empty(), "no tracking connection to kill");
                    for id in ids {
                        redis_cli(port, &["CLIENT", "KILL", "ID", &id]);
                    }
                }
                1 => s.process.signal("STOP"),
                2 => s.process.signal("CONT"),
                _ => {
                    s.process.kill();
                    *s = RedisServer::start_on(port, &[]).unwrap();
                }
            }
            step += 1;
        }
    });
    assert_eq!(step, 4, "not every fault was applied");
    verdict("faults", &writes, &reads, &stats);
    assert!(
        stats.near_resets_lost >= 2,
        "the channel's losses were not seen: {stats}"
    );
}

/// Review finding (#13, HIGH): a tracking thread slow to tear a lost session down (planted: it
/// sleeps 50 ms before suspending the near cache, as one waiting for a core would) must not
/// let hits serve from the near cache in the meantime. Before the fix, the inbox was dropped
/// first and the suspension came later: hits in that gap served stale versions.
#[test]
fn a_tracking_thread_slow_to_tear_a_lost_session_down_yields_no_stale_read() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let port = server.port();
    let namespace = "nearp:";
    ddf::testing::internals::pause_teardown(namespace, Duration::from_millis(50));
    let w = rust_writer(port, namespace, 4000);
    let mut step = 0;
    let (writes, reads, stats) = run(&mut server, namespace, w, &mut |_, at| {
        let due = [800, 1800, 2800];
        if step < due.len() && at >= Duration::from_millis(due[step]) {
            let ids = tracking_ids(port);
            assert!(!ids.is_empty(), "no tracking connection to kill");
            for id in ids {
                redis_cli(port, &["CLIENT", "KILL", "ID", &id]);
            }
            step += 1;
        }
    });
    ddf::testing::internals::pause_teardown(namespace, Duration::ZERO);
    assert_eq!(step, 3, "not every kill was applied");
    verdict("slow teardown", &writes, &reads, &stats);
    assert!(
        stats.near_resets_lost >= 2,
        "the channel's losses were not seen: {stats}"
    );
}

pub(crate) fn wait_for_near_hit(cache: &CacheManager, key: &str) {
    for _ in 0..500 {
        let before = cache.stats().near_hits;
        let _ = cache.get::<String>(key);
        if cache.stats().near_hits > before {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the near cache never served {key}: {}", cache.stats());
}
