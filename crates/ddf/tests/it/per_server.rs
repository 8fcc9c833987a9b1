//! A breaker per Memcached server (issue #14 point 1) against three real `memcached` processes:
//! with one of them stopped (SIGSTOP) or killed (kill -9), the keys of the two others stay on
//! their servers (at least 60% of the keys hit after a re-set, in one cache and in a second one
//! built during the outage), only the down server's keys go to the fallback, `stats` shows each
//! server's state and why it is down, and every read of the run, through the outage and after
//! the server's return, is checked against the reference model (`ddf_testkit::model`): no stale
//! read.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ddf::CacheManager;
use ddf::testing::internals::MemcachedBackend;
use ddf_testkit::model::{self, Op, Outcome};
use ddf_testkit::{MemcachedServer, free_port};

use crate::resilience::{Kind, bound, config};

/// Keys of the run.
const N: usize = 900;

/// Records every call of the run as a model operation.
struct Recorder {
    origin: Instant,
    ops: Mutex<Vec<Op>>,
    seq: AtomicU64,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            origin: Instant::now(),
            ops: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn push(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }

    /// Sets `key` to a value no other set writes; returns it when the call succeeded.
    fn set(&self, thread: u32, cache: &CacheManager, key: &str) -> Option<String> {
        let value = format!("t{thread}-{}", self.seq.fetch_add(1, Ordering::Relaxed));
        let start = self.now();
        let r = cache.set(key, &value, None);
        let end = self.now();
        assert!(end - start < bound().as_nanos() as u64, "set {key} hung");
        let op = Op::set(thread, key, &value, start, end);
        match r {
            Ok(()) => {
                self.push(op);
                Some(value)
            }
            Err(e) => {
                self.push(op.with(Outcome::Err(e.to_string())));
                None
            }
        }
    }

    fn get(&self, thread: u32, cache: &CacheManager, key: &str) -> Option<String> {
        let start = self.now();
        let r = cache.get::<String>(key);
        let end = self.now();
        assert!(end - start < bound().as_nanos() as u64, "get {key} hung");
        let outcome = match &r {
            Ok(v) => Outcome::Ok(v.clone()),
            Err(e) => Outcome::Err(e.to_string()),
        };
        self.push(Op::get(thread, key, outcome, start, end));
        r.ok().flatten()
    }

    fn delete(&self, thread: u32, cache: &CacheManager, key: &str) {
        let start = self.now();
        let r = cache.delete(key);
        let end = self.now();
        let op = Op::delete(thread, key, start, end);
        self.push(match r {
            Ok(_) => op,
            Err(e) => op.with(Outcome::Err(e.to_string())),
        });
    }

    fn invalidate(&self, thread: u32, cache: &CacheManager, prefix: &str) -> ddf::Result<u64> {
        let start = self.now();
        let r = cache.invalidate_pattern(prefix);
        let end = self.now();
        let op = Op::invalidate_pattern(thread, prefix, start, end);
        self.push(match &r {
            Ok(_) => op,
            Err(e) => op.with(Outcome::Err(e.to_string())),
        });
        r
    }

    fn history(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }
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

fn wait_all_up(rec: &Recorder, thread: u32, cache: &CacheManager) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while row(cache, "state") != "up" {
        rec.get(thread, cache, "wait:probe");
        assert!(
            Instant::now() < deadline,
            "a server never came back: {:?}",
            cache.backend_info()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Stop,
    Kill,
}

fn one_of_three_down(fault: Fault) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let Some(mut servers) = ports
        .iter()
        .map(|&p| MemcachedServer::start_on(p, &[]))
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(Kind::Memcached, &ports, dir.path());
    let rec = Recorder::new();
    let keys: Vec<String> = (0..N).map(|i| format!("k{i}")).collect();
    let victim = servers[1].server();
    let placement = MemcachedBackend::from_config(&cfg).unwrap();
    let on_victim = |k: &str| placement.server_for(k) == victim;
    let victim_keys = keys.iter().filter(|k| on_victim(k)).count();
    assert!(victim_keys > N / 5 && victim_keys < N / 2, "{victim_keys}");

    let a = CacheManager::new(cfg.clone()).unwrap();
    for k in &keys {
        rec.set(0, &a, k);
    }
    match fault {
        Fault::Stop => servers[1].process.signal("STOP"),
        Fault::Kill => servers[1].process.kill(),
    }
    // Traffic notices the failure (a failed read is a miss); then the victim's breaker opens.
    for k in &keys {
        rec.get(0, &a, k);
    }
    let state = row(&a, &format!("server.{victim}.state"));
    assert!(state.starts_with("down ("), "{state}");
    assert!(
        row(&a, "state").starts_with("partly down"),
        "{}",
        row(&a, "state")
    );
    for p in [&ports[0], &ports[2]] {
        assert_eq!(row(&a, &format!("server.127.0.0.1:{p}.state")), "up");
    }

    // Re-set every key: each reads back; the live servers' keys are on their servers.
    let mut written = Vec::new();
    let mut hits = 0;
    for k in &keys {
        let v = rec
            .set(0, &a, k)
            .expect("a set is served by a server or the fallback");
        if rec.get(0, &a, k).as_deref() == Some(v.as_str()) {
            hits += 1;
        }
        written.push(v);
    }
    let direct = crate::resilience::direct(&cfg);
    let on_servers = keys
        .iter()
        .zip(&written)
        .filter(|(k, v)| {
            !on_victim(k) && direct.get::<String>(k).ok().flatten().as_ref() == Some(*v)
        })
        .count();
    println!(
        "{fault:?}: {hits} of {N} keys hit after a re-set; {on_servers} of {N} ({:.0}%) served by \
         the live servers; {victim_keys} placed on the down server",
        on_servers as f64 * 100.0 / N as f64
    );
    assert_eq!(hits, N, "every key reads back (servers or fallback)");
    assert!(on_servers * 100 >= 60 * N, "{on_servers} of {N}");

    // A second cache built during the outage (another process): the live servers serve their
    // keys, the down server's keys are read from the outage's shared fallback.
    let b = CacheManager::new(cfg.clone()).unwrap();
    let mut hits_b = 0;
    for (k, v) in keys.iter().zip(&written) {
        if rec.get(1, &b, k).as_deref() == Some(v.as_str()) {
            hits_b += 1;
        }
    }
    println!("{fault:?}: a cache built during the outage hits {hits_b} of {N} keys");
    assert!(hits_b * 100 >= 60 * N, "{hits_b} of {N}");

    // Invalidations during the outage: applied on the live servers, recorded for the down one.
    for k in keys.iter().take(30) {
        rec.delete(0, &a, k);
    }
    let n = rec.invalidate(1, &b, "k1").unwrap();
    assert!(n > 0, "the live servers' keys were removed: {n}");
    for k in &keys {
        rec.get(0, &a, k);
        rec.get(1, &b, k);
    }

    match fault {
        Fault::Stop => servers[1].process.signal("CONT"),
        Fault::Kill => servers[1] = MemcachedServer::start_on(ports[1], &[]).unwrap(),
    }
    wait_all_up(&rec, 0, &a);
    wait_all_up(&rec, 1, &b);
    assert_eq!(row(&a, "recorded invalidations pending"), "0");
    for k in &keys {
        rec.get(0, &a, k);
        rec.get(1, &b, k);
    }
    // After the return, every key is served by its server again.
    for k in keys.iter().step_by(7) {
        let v = rec.set(0, &a, k).unwrap();
        assert_eq!(rec.get(1, &b, k), Some(v));
    }

    let history = rec.history();
    let report = model::check(&history);
    println!(
        "{fault:?}: {} operations checked: {} hits, {} misses, {} errors",
        history.len(),
        report.hits,
        report.misses,
        report.errors
    );
    assert!(report.is_ok(), "{}", report.render(&history, 10));
    // The checker would catch a stale read in this history: the first key's first value, read
    // after everything else.
    let mut planted = history.clone();
    let first = planted
        .iter()
        .find_map(|o| match &o.action {
            model::Action::Set { key, value } if key == "k0" => Some(value.clone()),
            _ => None,
        })
        .unwrap();
    let t = rec.now();
    planted.push(Op::get(9, "k0", Outcome::Ok(Some(first)), t + 1, t + 2));
    assert!(!model::check(&planted).is_ok());
}

#[test]
fn one_of_three_stopped_keeps_the_others_keys_on_their_servers() {
    one_of_three_down(Fault::Stop);
}

#[test]
fn one_of_three_killed_keeps_the_others_keys_on_their_servers() {
    one_of_three_down(Fault::Kill);
}

const WORKER: &str = "DDF_PER_SERVER_JOB";

/// A child process: `set|ports|dir|key|value` or `get|ports|dir|key` (prints `HIT value` or
/// `MISS`).
fn worker(job: &str) {
    let f: Vec<&str> = job.split('|').collect();
    let ports: Vec<u16> = f[1].split(',').map(|p| p.parse().unwrap()).collect();
    let cache =
        CacheManager::new(config(Kind::Memcached, &ports, std::path::Path::new(f[2]))).unwrap();
    match f[0] {
        "set" => cache.set(f[3], &f[4], None).unwrap(),
        _ => match cache.get::<String>(f[3]).unwrap() {
            Some(v) => println!("HIT {v}"),
            None => println!("MISS"),
        },
    }
}

/// The scenario: one of three servers killed, then one process per `set` and one per
/// `get`. Every key placed on a live server is stored there and read back from it by the next
/// process; the dead server's keys are read back from the outage's shared fallback.
#[test]
fn one_of_three_killed_across_processes() {
    if let Some(job) = crate::process::job(WORKER) {
        return worker(&job);
    }
    const KEYS: usize = 30;
    let test = "per_server::one_of_three_killed_across_processes";
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let Some(mut servers) = ports
        .iter()
        .map(|&p| MemcachedServer::start_on(p, &[]))
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(Kind::Memcached, &ports, dir.path());
    let placement = MemcachedBackend::from_config(&cfg).unwrap();
    let victim = servers[1].server();
    servers[1].process.kill();
    let list = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let base = format!("{list}|{}", dir.path().display());
    let run = |job: String| {
        let child = crate::process::child(test, WORKER, &job).spawn().unwrap();
        crate::process::check(child, &job)
    };
    for i in 0..KEYS {
        run(format!("set|{base}|after:{i}|v{i}"));
    }
    let direct = crate::resilience::direct(&cfg);
    let (mut on_servers, mut hits) = (0, 0);
    for i in 0..KEYS {
        let key = format!("after:{i}");
        let out = run(format!("get|{base}|{key}"));
        let hit = out.contains(&format!("HIT v{i}\n"));
        hits += usize::from(hit);
        if placement.server_for(&key) != victim {
            assert!(hit, "{key} is on a live server: {out}");
            assert_eq!(direct.get::<String>(&key).unwrap(), Some(format!("v{i}")));
            on_servers += 1;
        }
    }
    println!(
        "across processes, one of three killed: {hits} of {KEYS} keys hit, {on_servers} \
         ({:.0}%) from the live servers",
        on_servers as f64 * 100.0 / KEYS as f64
    );
    assert_eq!(
        hits, KEYS,
        "the dead server's keys come from the shared fallback"
    );
}
