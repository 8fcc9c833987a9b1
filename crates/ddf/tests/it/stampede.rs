//! `get_or_set` across processes (issue #17): one computation per miss in the whole deployment
//! (method, attribute and async faces), takeover when the leader is killed. Real servers; every assertion is
//! a count (computations, callers), never a duration. Children are this test binary run again
//! (see `process`); they count computations by appending a line to a shared file. The runs
//! within one process (stale serving, the contract of `compare_and_delete`, outages) are in
//! `stampede_refresh`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ddf::{CacheBackend, CacheConfig, CacheManager, ServerAddr, cache_with_invalidation};
use ddf_testkit::{MemcachedServer, RedisServer};

use crate::memo::fixture::together;
use crate::process;

const JOB: &str = "DDF_TEST_STAMPEDE_JOB";
pub(crate) const KEY: &str = "stampede:popular";
/// A bound for "does not hang" waits: far above every configured timeout.
const PATIENCE: Duration = Duration::from_secs(60);

/// Where the children's cache is: `pickle`, `redis:<port>` or `memcached:<host:port>`.
pub(crate) fn config(target: &str, dir: &Path) -> CacheConfig {
    let base = CacheConfig::default()
        .with_pickle_dir(dir.join("cache"))
        .with_namespace("stampede:");
    match target.split_once(':') {
        None => base.with_backend(CacheBackend::Pickle),
        Some(("redis", port)) => base
            .with_backend(CacheBackend::Redis)
            .with_redis("127.0.0.1", port.parse().unwrap()),
        Some(("memcached", server)) => base
            .with_backend(CacheBackend::Memcached)
            .with_memcached_servers(vec![ServerAddr::parse(server, 11211).unwrap()]),
        Some(_) => panic!("unknown target {target}"),
    }
}

/// A backend for [`config`]: its target (`pickle`, `redis:<port>`, `memcached:<host:port>`)
/// and the server it names, started here and stopped when dropped. `None` where the server is
/// not installed (a failure under `DDF_TEST_REQUIRE_SERVERS=1`).
pub(crate) struct Target {
    pub(crate) name: String,
    _redis: Option<RedisServer>,
    _memcached: Option<MemcachedServer>,
}

impl Target {
    pub(crate) fn pickle() -> Option<Self> {
        Some(Target {
            name: "pickle".to_owned(),
            _redis: None,
            _memcached: None,
        })
    }

    pub(crate) fn redis() -> Option<Self> {
        let server = RedisServer::start()?;
        Some(Target {
            name: format!("redis:{}", server.port()),
            _redis: Some(server),
            _memcached: None,
        })
    }

    pub(crate) fn memcached() -> Option<Self> {
        let server = MemcachedServer::start()?;
        Some(Target {
            name: format!("memcached:{}", server.server()),
            _redis: None,
            _memcached: Some(server),
        })
    }
}

/// A cross-process test: in a child, the child's job; in the parent, `run` on the target
/// `target()` starts.
fn across(target: fn() -> Option<Target>, run: impl FnOnce(&str)) {
    if let Some(job) = process::job(JOB) {
        return child(&job);
    }
    if let Some(target) = target() {
        run(&target.name);
    }
}

/// One line per computation, appended (`O_APPEND`: whole lines from every process).
fn record(dir: &Path, what: &str) -> usize {
    let path = dir.join("computed");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(f, "{what} {}", std::process::id()).unwrap();
    drop(f);
    computations(dir).len()
}

fn computations(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("computed"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until `ok()` holds (a generous bound: a hang fails, a slow machine does not).
pub(crate) fn wait_until(what: &str, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < PATIENCE, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child: marks itself ready, waits for the parent's go, then runs `threads` callers of
/// `get_or_set` on one missing key at once; every caller must get the value.
fn child(job: &str) {
    let mut parts = job.split('|');
    let (target, dir, threads, lease_ttl) = (
        parts.next().unwrap(),
        PathBuf::from(parts.next().unwrap()),
        parts.next().unwrap().parse::<usize>().unwrap(),
        parts.next().unwrap().parse::<u64>().unwrap(),
    );
    let mut cfg = config(target, &dir);
    cfg.lease_ttl = Duration::from_secs(lease_ttl);
    cfg.lock_timeout = Duration::from_secs(45);
    let face = parts.next().unwrap_or("method");
    if face == "async" {
        return async_child(cfg, &dir, threads);
    }
    let cache = CacheManager::new(cfg).unwrap();
    let attribute = face == "attribute";
    if attribute {
        ATTR_CACHE.set(cache.clone()).unwrap();
    }
    std::fs::write(dir.join(format!("ready-{}", std::process::id())), "").unwrap();
    wait_until("the parent's go", || dir.join("go").exists());
    let got = together(threads, |_| {
        let t0 = Instant::now();
        if attribute {
            return (popular(&dir.display().to_string()), t0.elapsed());
        }
        let v = cache
            .get_or_set(KEY, Some(Duration::from_secs(120)), || {
                if record(&dir, "computed") == 1 && dir.join("hang-first").exists() {
                    // The parent kills this process now (kill -9).
                    std::thread::sleep(PATIENCE * 2);
                }
                std::thread::sleep(Duration::from_millis(200));
                "the value".to_owned()
            })
            .unwrap();
        (v, t0.elapsed())
    });
    let mut slowest = Duration::ZERO;
    for (v, took) in got {
        assert_eq!(v, "the value");
        slowest = slowest.max(took);
    }
    println!("DDF_STAMPEDE_CALLERS={threads}");
    println!("DDF_STAMPEDE_SLOWEST_MS={}", slowest.as_millis());
}

/// [`child`] on the async face: `tasks` tasks on a multi-threaded runtime.
fn async_child(cfg: CacheConfig, dir: &Path, tasks: usize) {
    crate::memo::fixture::runtime(4).block_on(async {
        let cache = ddf::AsyncCacheManager::new(cfg).unwrap();
        std::fs::write(dir.join(format!("ready-{}", std::process::id())), "").unwrap();
        wait_until("the parent's go", || dir.join("go").exists());
        let callers: Vec<_> = (0..tasks)
            .map(|_| {
                let (cache, dir) = (cache.clone(), dir.to_owned());
                tokio::spawn(async move {
                    cache
                        .get_or_set(KEY, Some(Duration::from_secs(120)), || async move {
                            record(&dir, "computed");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            "the value".to_owned()
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        for c in callers {
            assert_eq!(c.await.unwrap(), "the value");
        }
    });
    println!("DDF_STAMPEDE_CALLERS={tasks}");
}

static ATTR_CACHE: std::sync::OnceLock<CacheManager> = std::sync::OnceLock::new();

/// The attribute's face of the same computation: `lock = true`.
#[cache_with_invalidation(cache = ATTR_CACHE.get().unwrap(), ttl = 120, lock = true)]
fn popular(dir: &str) -> String {
    record(Path::new(dir), "computed");
    std::thread::sleep(Duration::from_millis(200));
    "the value".to_owned()
}

/// Starts `procs` children of `threads` callers each, lets them go at once, and returns them.
fn start_children(
    test: &str,
    target: &str,
    dir: &Path,
    procs: usize,
    threads: usize,
    lease_ttl: u64,
    face: &str,
) -> Vec<std::process::Child> {
    let job = format!("{target}|{}|{threads}|{lease_ttl}|{face}", dir.display());
    let children: Vec<_> = (0..procs)
        .map(|_| process::child(test, JOB, &job).spawn().unwrap())
        .collect();
    let ready = || {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("ready-")
            })
            .count()
    };
    wait_until("every child ready", || ready() == procs);
    std::fs::write(dir.join("go"), "").unwrap();
    children
}

/// 16 processes x 8 threads call `get_or_set` on one missing key whose computation takes
/// 200 ms: it runs exactly once.
fn computes_once(test: &str, target: &str) {
    computes_once_through(test, target, "method");
}

fn computes_once_through(test: &str, target: &str, face: &str) {
    let dir = tempfile::tempdir().unwrap();
    let children = start_children(test, target, dir.path(), 16, 8, 10, face);
    let (mut callers, mut slowest) = (0, 0);
    for c in children {
        let out = process::check(c, "stampede child");
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.split(name).nth(1))
                .map_or(0, |n| n.trim().parse::<u128>().unwrap())
        };
        callers += field("DDF_STAMPEDE_CALLERS=") as usize;
        slowest = slowest.max(field("DDF_STAMPEDE_SLOWEST_MS="));
    }
    // For the record, not asserted: the slowest caller's wait from its process's go to its
    // value (the 200 ms computation, the poll that sees it, and process start skew).
    println!("{target} {face}: slowest caller {slowest} ms (computation 200 ms)");
    assert_eq!(callers, 128, "every caller got the value");
    assert_eq!(
        computations(dir.path()).len(),
        1,
        "computed once: {:?}",
        computations(dir.path())
    );
}

/// The leader is killed (-9) mid-computation: a waiter takes over when its lease expires,
/// exactly one more computation runs, and every other caller gets a value.
fn leader_killed(test: &str, target: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hang-first"), "").unwrap();
    let children = start_children(test, target, dir.path(), 4, 4, 2, "method");
    wait_until("a leader computing", || {
        !computations(dir.path()).is_empty()
    });
    let first = computations(dir.path())[0].clone();
    let pid: u32 = first.split(' ').nth(1).unwrap().parse().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut killed = 0;
    for c in children {
        if c.id() == pid {
            let out = c.wait_with_output().unwrap();
            assert!(!out.status.success(), "the leader was killed");
            killed += 1;
        } else {
            process::check(c, "stampede child");
        }
    }
    assert_eq!(killed, 1);
    let all = computations(dir.path());
    assert_eq!(all.len(), 2, "one more computation: {all:?}");
    assert_ne!(all[1], first, "the takeover ran in another process");
}

#[test]
fn file_backend_computes_once_across_processes() {
    across(Target::pickle, |t| {
        computes_once("stampede::file_backend_computes_once_across_processes", t)
    });
}

#[test]
fn the_attribute_with_lock_computes_once_across_processes() {
    across(Target::redis, |t| {
        let test = "stampede::the_attribute_with_lock_computes_once_across_processes";
        computes_once_through(test, t, "attribute")
    });
}

#[test]
fn async_face_computes_once_across_processes_on_redis() {
    across(Target::redis, |t| {
        let test = "stampede::async_face_computes_once_across_processes_on_redis";
        computes_once_through(test, t, "async")
    });
}

#[test]
fn async_face_computes_once_across_processes_on_memcached() {
    across(Target::memcached, |t| {
        let test = "stampede::async_face_computes_once_across_processes_on_memcached";
        computes_once_through(test, t, "async")
    });
}

#[test]
fn async_face_computes_once_across_processes_on_the_file_backend() {
    across(Target::pickle, |t| {
        let test = "stampede::async_face_computes_once_across_processes_on_the_file_backend";
        computes_once_through(test, t, "async")
    });
}

#[test]
fn file_backend_leader_killed() {
    across(Target::pickle, |t| {
        leader_killed("stampede::file_backend_leader_killed", t)
    });
}

#[test]
fn redis_computes_once_across_processes() {
    across(Target::redis, |t| {
        computes_once("stampede::redis_computes_once_across_processes", t)
    });
}

#[test]
fn redis_leader_killed() {
    across(Target::redis, |t| {
        leader_killed("stampede::redis_leader_killed", t)
    });
}

#[test]
fn memcached_computes_once_across_processes() {
    across(Target::memcached, |t| {
        computes_once("stampede::memcached_computes_once_across_processes", t)
    });
}

#[test]
fn memcached_leader_killed() {
    across(Target::memcached, |t| {
        leader_killed("stampede::memcached_leader_killed", t)
    });
}
