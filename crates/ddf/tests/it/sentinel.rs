//! Redis Sentinel against real `redis-sentinel` processes (issue #14 point 3): the master is
//! found through the Sentinels, and a `kill -9` of the master under load is followed: writes
//! resume on the promoted replica, invalidations made during the failover are applied to it, and
//! no read returns a value that was overwritten or invalidated.
//!
//! Both faces are checked in the same deployments (the failover takes seconds: one run serves
//! both): `CacheManager` threads and `AsyncCacheManager` tasks run the same operations
//! ([`op`]) against the same [`Model`].
//!
//! The failover's figures are printed (`--nocapture`): Sentinel's own failover time (from the
//! kill until the Sentinels name the replica) and the time to the first write that reached the
//! new master through `CacheManager`, and through `AsyncCacheManager`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ddf::{AsyncCacheManager, CacheBackend, CacheConfig, CacheManager, FallbackMode, ServerAddr};
use ddf_testkit::{RedisSentinel, SENTINEL_MASTER};

const CONNECT: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_millis(400);
const RETRY: Duration = Duration::from_millis(200);
/// A bound that tells "bounded" from "hung" on a loaded, shared 2-core machine. It is not a
/// speed target: those are measured and reported (`scripts/bench-failover`), never asserted.
const HANG: Duration = Duration::from_secs(5);
const THREADS: usize = 4;
/// Async tasks beside the threads, on a runtime of two workers.
const TASKS: usize = 4;
const KEYS: usize = 40;

fn config(deployment: &RedisSentinel, dir: &std::path::Path) -> CacheConfig {
    let sentinels = deployment
        .sentinel_addrs()
        .iter()
        .map(|a| ServerAddr::parse(a, 26379).unwrap())
        .collect();
    let mut c = CacheConfig::default()
        .with_backend(CacheBackend::Redis)
        .with_redis_sentinels(sentinels, SENTINEL_MASTER)
        .with_namespace("sent:")
        .with_pickle_dir(dir)
        .with_timeouts(CONNECT, TIMEOUT);
    c.fallback = FallbackMode::Pickle;
    c.breaker_failures = 2;
    c.breaker_retry = RETRY;
    c
}

/// One server alone, without the breaker: to see what it holds.
fn direct(port: u16) -> CacheManager {
    let c = CacheConfig::default()
        .with_backend(CacheBackend::Redis)
        .with_redis("127.0.0.1", port)
        .with_namespace("sent:")
        .with_timeouts(CONNECT, TIMEOUT);
    let b = ddf::testing::internals::RedisBackend::from_config(&c).unwrap();
    CacheManager::with_backend(c, Arc::new(b))
}

fn info(cache: &CacheManager, name: &str) -> Option<String> {
    field(cache.backend_info().ok()?, name)
}

async fn ainfo(cache: &AsyncCacheManager, name: &str) -> Option<String> {
    field(cache.backend_info().await.ok()?, name)
}

fn field(rows: Vec<(String, String)>, name: &str) -> Option<String> {
    rows.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One operation of a worker's load.
enum Op {
    Set(String),
    Delete,
    Get,
}

/// The `n`-th operation of worker `who`, and its key: a cheap deterministic mix of 50% set,
/// 20% delete, 30% get over [`KEYS`] keys. Threads and tasks run the same.
fn op(who: &str, n: u64) -> (String, Op) {
    let key = format!("{who}:k{}", (n * 7) % KEYS as u64);
    let op = match n % 10 {
        0..=4 => Op::Set(format!("{who}-{n}")),
        5 | 6 => Op::Delete,
        _ => Op::Get,
    };
    (key, op)
}

/// What a thread last wrote to each of its keys (`None`: deleted), and the reads that returned
/// anything else.
#[derive(Default)]
struct Model {
    last: HashMap<String, Option<String>>,
    violations: Vec<String>,
}

impl Model {
    /// A set or delete (`value`: `None`) finished: an error leaves the key unknown.
    fn wrote(&mut self, key: String, value: Option<String>, ok: bool) {
        if ok {
            self.last.insert(key, value);
        } else {
            self.last.remove(&key);
        }
    }

    /// A read may miss, or return the last value written; anything else is stale.
    fn check(&mut self, key: &str, got: Option<&String>, when: &str) {
        let expected = self.last.get(key).cloned().flatten();
        if got.is_some() && got != expected.as_ref() {
            self.violations.push(format!(
                "{when}: {key} read {got:?}, last written {expected:?}"
            ));
        }
    }
}

#[test]
fn master_is_found_through_the_sentinels() {
    let Some(deployment) = RedisSentinel::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(config(&deployment, dir.path())).unwrap();
    cache.set("k", "v", None).unwrap();
    assert_eq!(cache.get::<String>("k").unwrap().as_deref(), Some("v"));
    // The write is on the master the Sentinels name, not on the fallback.
    let master = direct(deployment.master.port());
    assert_eq!(master.get::<String>("k").unwrap().as_deref(), Some("v"));
    assert_eq!(
        info(&cache, "sentinel_master"),
        Some(format!("127.0.0.1:{}", deployment.master.port()))
    );
    assert!(
        info(&cache, "server").is_some_and(|s| s.starts_with("sentinel[")),
        "{:?}",
        cache.backend_info()
    );

    // `redis_db` is honoured through Sentinel too: the value lands in database 3 only.
    let mut db3 = config(&deployment, dir.path());
    db3.redis_db = 3;
    let cache3 = CacheManager::new(db3).unwrap();
    cache3.set("in3", "x", None).unwrap();
    let master3 = direct(deployment.master.port());
    assert_eq!(
        master3.get::<String>("in3").unwrap(),
        None,
        "written to db 0"
    );
    let mut c = CacheConfig::default()
        .with_backend(CacheBackend::Redis)
        .with_redis("127.0.0.1", deployment.master.port())
        .with_namespace("sent:")
        .with_timeouts(CONNECT, TIMEOUT);
    c.redis_db = 3;
    let b = ddf::testing::internals::RedisBackend::from_config(&c).unwrap();
    let in_db3 = CacheManager::with_backend(c, Arc::new(b));
    assert_eq!(in_db3.get::<String>("in3").unwrap().as_deref(), Some("x"));

    // The async face: its own connections to the master the Sentinels name (`get`, `set` and
    // `delete` on the caller-driven one, the rest on the multiplexed one), `redis_db` too.
    let rt = runtime();
    let mut adb3 = config(&deployment, dir.path());
    adb3.redis_db = 3;
    let (acache, acache3) = (
        AsyncCacheManager::new(config(&deployment, dir.path())).unwrap(),
        AsyncCacheManager::new(adb3).unwrap(),
    );
    rt.block_on(async {
        assert_eq!(
            acache.get::<String>("k").await.unwrap().as_deref(),
            Some("v")
        );
        acache.set("ak", "av", None).await.unwrap();
        acache.set_many(&[("am", "1")], None).await.unwrap();
        assert_eq!(
            acache.get::<String>("am").await.unwrap().as_deref(),
            Some("1")
        );
        acache3.set("ain3", "y", None).await.unwrap();
        assert_eq!(
            ainfo(&acache, "sentinel_master").await,
            Some(format!("127.0.0.1:{}", deployment.master.port()))
        );
    });
    assert_eq!(master.get::<String>("ak").unwrap().as_deref(), Some("av"));
    assert_eq!(
        master.get::<String>("ain3").unwrap(),
        None,
        "written to db 0"
    );
    assert_eq!(in_db3.get::<String>("ain3").unwrap().as_deref(), Some("y"));
    assert!(rt.block_on(acache.delete("ak")).unwrap());
    assert_eq!(master.get::<String>("ak").unwrap(), None);

    // A master name the Sentinels do not monitor: a temporary error that names it.
    let mut wrong = config(&deployment, dir.path());
    wrong.redis_sentinel_master = Some("nope".to_owned());
    let b = ddf::testing::internals::RedisBackend::from_config(&wrong).unwrap();
    let e = ddf::Backend::ping(&b).unwrap_err();
    assert!(e.is_temporary(), "{e}");
    assert!(e.to_string().contains("\"nope\""), "{e}");
}

#[test]
fn a_stalled_sentinel_costs_a_share_of_the_connect_timeout() {
    // The reason the lookup is ours and not redis-rs's: its sync Sentinel client waits forever
    // on a Sentinel that accepts connections but does not answer (SIGSTOP).
    let Some(deployment) = RedisSentinel::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let c = config(&deployment, dir.path());
    let fresh = || {
        let b = ddf::testing::internals::RedisBackend::from_config(&c).unwrap();
        CacheManager::with_backend(c.clone(), Arc::new(b))
    };
    deployment.sentinels[0].signal("STOP");
    let t = Instant::now();
    let r = fresh().ping();
    let took = t.elapsed();
    assert!(r.is_ok(), "{r:?}");
    // The first Sentinel gets a third of connect_timeout, then the second answers.
    assert!(took < CONNECT + HANG, "{took:?}");
    println!("sentinel: one of three stopped, first ping took {took:?}");

    for s in &deployment.sentinels[1..] {
        s.signal("STOP");
    }
    let t = Instant::now();
    let e = fresh().ping().unwrap_err();
    let took = t.elapsed();
    assert!(e.is_temporary(), "{e}");
    assert!(took < CONNECT + HANG, "{took:?}: {e}");
    println!("sentinel: all three stopped, ping failed after {took:?}: {e}");
    for s in &deployment.sentinels {
        s.signal("CONT");
    }
}

#[test]
fn sentinels_and_master_over_tls() {
    let Some(tls) = ddf_testkit::TlsFiles::generate() else {
        return;
    };
    let Some(deployment) = RedisSentinel::start_tls(&tls) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // TLS handshakes in a debug build on a loaded machine take tens of milliseconds each, and
    // each Sentinel (with the master it names) gets a third of connect_timeout.
    let mut c = config(&deployment, dir.path()).with_timeouts(CONNECT * 10, TIMEOUT * 5);
    c.redis_ca_file = Some(tls.ca());
    let b = ddf::testing::internals::RedisBackend::from_config(&c).unwrap();
    let cache = CacheManager::with_backend(c.clone(), Arc::new(b));
    cache.set("k", "v", None).unwrap();
    assert_eq!(cache.get::<String>("k").unwrap().as_deref(), Some("v"));
    assert_eq!(
        deployment
            .server_cli(deployment.master.port(), &["GET", "sent:k"])
            .trim(),
        "\"v\""
    );
    assert!(
        info(&cache, "server").is_some_and(|s| s.ends_with("(TLS)")),
        "{:?}",
        cache.backend_info()
    );
    // The async face: the master over TLS on the multiplexed connection (checked on the
    // server: the fallback would have accepted the write too).
    let acache = AsyncCacheManager::new(c.clone()).unwrap();
    runtime().block_on(async {
        acache.set("ak", "av", None).await.unwrap();
        assert_eq!(
            acache.get::<String>("ak").await.unwrap().as_deref(),
            Some("av")
        );
    });
    assert_eq!(
        deployment
            .server_cli(deployment.master.port(), &["GET", "sent:ak"])
            .trim(),
        "\"av\""
    );
    // Without the CA the certificate is not trusted: an error, not a plain-text connection.
    c.redis_ca_file = None;
    let b = ddf::testing::internals::RedisBackend::from_config(&c).unwrap();
    assert!(ddf::Backend::ping(&b).is_err());
}

#[test]
fn passwords_of_the_master_and_of_the_sentinels() {
    let Some(deployment) = RedisSentinel::start_with_passwords(Some("m-pw:1"), Some("s-pw@2"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&deployment, dir.path());
    c.redis_password = Some(ddf::Secret::new("m-pw:1"));
    c.redis_sentinel_password = Some(ddf::Secret::new("s-pw@2"));
    let b = ddf::testing::internals::RedisBackend::from_config(&c).unwrap();
    let cache = CacheManager::with_backend(c.clone(), Arc::new(b));
    cache.set("k", "v", None).unwrap();
    assert_eq!(
        deployment
            .server_cli(deployment.master.port(), &["GET", "sent:k"])
            .trim(),
        "\"v\""
    );
    // The async face with both passwords (`AUTH` on the caller-driven connection too).
    let acache = AsyncCacheManager::new(c.clone()).unwrap();
    runtime().block_on(acache.set("ak", "av", None)).unwrap();
    assert_eq!(
        deployment
            .server_cli(deployment.master.port(), &["GET", "sent:ak"])
            .trim(),
        "\"av\""
    );

    // A wrong Sentinel password: an error that is not temporary and shows no password.
    for (master_pw, sentinel_pw) in [("m-pw:1", "wrong"), ("wrong", "s-pw@2")] {
        let mut bad = c.clone();
        bad.redis_password = Some(ddf::Secret::new(master_pw));
        bad.redis_sentinel_password = Some(ddf::Secret::new(sentinel_pw));
        let b = ddf::testing::internals::RedisBackend::from_config(&bad).unwrap();
        let e = ddf::Backend::ping(&b).unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains("pw"), "{text}");
        assert!(!e.is_temporary(), "{text}");
    }
}

#[test]
fn a_demoted_master_is_left_for_the_promoted_replica() {
    // SENTINEL FAILOVER: the master stays up but becomes a replica; Sentinel closes its
    // clients, the known master answers ROLE as a replica, and the Sentinels are asked again.
    let Some(deployment) = RedisSentinel::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(config(&deployment, dir.path())).unwrap();
    cache.set("k", "before", None).unwrap();
    // The async face, connected to the old master before the failover.
    let rt = runtime();
    let acache = AsyncCacheManager::new(config(&deployment, dir.path())).unwrap();
    rt.block_on(acache.set("ak", "before", None)).unwrap();
    let old = direct(deployment.master.port());
    let new = direct(deployment.replica.port());
    let sentinel = deployment.sentinels[0].port;
    let out = deployment.sentinel_cli(sentinel, &["SENTINEL", "FAILOVER", SENTINEL_MASTER]);
    assert!(out.contains("OK"), "{out}");
    // Until the replica is promoted it replicates the old master: a write seen on it proves
    // nothing before that.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !deployment
        .server_cli(deployment.replica.port(), &["ROLE"])
        .starts_with("master")
    {
        assert!(
            Instant::now() < deadline,
            "the replica was not promoted:\n{}",
            deployment.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut n = 0u64;
    loop {
        n += 1;
        cache.set("k", &n, None).unwrap();
        if new.get::<u64>("k").ok().flatten() == Some(n) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes never reached the promoted replica:\n{}",
            deployment.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        info(&cache, "sentinel_master"),
        Some(format!("127.0.0.1:{}", deployment.replica.port()))
    );
    // The async face follows too.
    loop {
        n += 1;
        rt.block_on(acache.set("ak", &n, None)).unwrap();
        if new.get::<u64>("ak").ok().flatten() == Some(n) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "async writes never reached the promoted replica:\n{}",
            deployment.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        rt.block_on(ainfo(&acache, "sentinel_master")),
        Some(format!("127.0.0.1:{}", deployment.replica.port()))
    );
    assert_eq!(rt.block_on(acache.get::<u64>("ak")).unwrap(), Some(n));
    // The demoted master follows the new one; nothing the cache reads is older than its last
    // write.
    cache.set("k", "after", None).unwrap();
    assert_eq!(cache.get::<String>("k").unwrap().as_deref(), Some("after"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while old.get::<String>("k").ok().flatten().as_deref() != Some("after") {
        assert!(
            Instant::now() < deadline,
            "the old master never became a replica"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_of_the_master_under_load_is_followed() {
    let Some(mut deployment) = RedisSentinel::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(config(&deployment, dir.path())).unwrap();
    let old_port = deployment.master.port();
    let new_port = deployment.replica.port();
    let promoted = direct(new_port);

    // Values the failover must invalidate: written and replicated before the kill.
    for i in 0..20 {
        cache.set(&format!("inv:{i}"), "old", None).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while promoted.get::<String>("inv:19").unwrap().is_none() {
        assert!(Instant::now() < deadline, "the replica never got inv:19");
        std::thread::sleep(Duration::from_millis(10));
    }

    // The async face beside the sync one, from the same configuration (the same journal).
    let rt = runtime();
    let acache = AsyncCacheManager::new(config(&deployment, dir.path())).unwrap();
    rt.block_on(async {
        for i in 0..20 {
            acache.set(&format!("ainv:{i}"), "old", None).await.unwrap();
        }
    });
    while promoted.get::<String>("ainv:19").unwrap().is_none() {
        assert!(Instant::now() < deadline, "the replica never got ainv:19");
        std::thread::sleep(Duration::from_millis(10));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (cache, stop, ops, errors) =
                (acache.clone(), stop.clone(), ops.clone(), errors.clone());
            rt.spawn(async move {
                let mut m = Model::default();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let (key, op) = op(&format!("a{t}"), n);
                    let ok = match op {
                        Op::Set(v) => {
                            let ok = cache.set(&key, &v, None).await.is_ok();
                            m.wrote(key, Some(v), ok);
                            ok
                        }
                        Op::Delete => {
                            let ok = cache.delete(&key).await.is_ok();
                            m.wrote(key, None, ok);
                            ok
                        }
                        Op::Get => match cache.get::<String>(&key).await {
                            Ok(got) => {
                                m.check(&key, got.as_ref(), "async, during the run");
                                true
                            }
                            Err(_) => false,
                        },
                    };
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                m
            })
        })
        .collect();
    let (mut models, sentinel_time, (first_write, ops_during), first_async) =
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (cache, stop, ops, errors) = (&cache, &stop, &ops, &errors);
                    s.spawn(move || {
                        let mut m = Model::default();
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            n += 1;
                            let (key, op) = op(&format!("t{t}"), n);
                            let ok = match op {
                                Op::Set(v) => {
                                    let ok = cache.set(&key, &v, None).is_ok();
                                    m.wrote(key, Some(v), ok);
                                    ok
                                }
                                Op::Delete => {
                                    let ok = cache.delete(&key).is_ok();
                                    m.wrote(key, None, ok);
                                    ok
                                }
                                Op::Get => match cache.get::<String>(&key) {
                                    Ok(got) => {
                                        m.check(&key, got.as_ref(), "during the run");
                                        true
                                    }
                                    Err(_) => false,
                                },
                            };
                            if !ok {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            ops.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        m
                    })
                })
                .collect();
            // Let the load settle on the first master, then kill it.
            std::thread::sleep(Duration::from_millis(500));
            let killed_at = Instant::now();
            deployment.master.process.kill();
            let ops_at_kill = ops.load(Ordering::Relaxed);

            // Sentinel's own failover time: until a Sentinel (the leader, first) names the
            // replica.
            let d = &deployment;
            let watcher = s.spawn(move || {
                loop {
                    if d.master_ports().contains(&Some(new_port)) {
                        return killed_at.elapsed();
                    }
                    assert!(
                        killed_at.elapsed() < Duration::from_secs(30),
                        "Sentinel did not fail over within 30 s"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            });

            // The async face: its invalidations made during the failover, then its first
            // write that lands on the promoted replica, measured from the kill.
            let (acache, rt, promoted_async) = (&acache, &rt, direct(new_port));
            let async_probe = s.spawn(move || {
                rt.block_on(async {
                    for i in 0..20 {
                        acache.delete(&format!("ainv:{i}")).await.unwrap();
                    }
                    let mut n = 0u64;
                    loop {
                        n += 1;
                        let key = format!("aprobe:{n}");
                        acache.set(&key, &n, None).await.unwrap();
                        let done = killed_at.elapsed();
                        if promoted_async.get::<u64>(&key).ok().flatten() == Some(n) {
                            return done;
                        }
                        assert!(
                            done < Duration::from_secs(30),
                            "no async write reached the promoted replica within 30 s"
                        );
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            });

            // Invalidations made during the failover: recorded in the journal while no master
            // answers, applied to the promoted replica when it does.
            for i in 0..20 {
                cache.delete(&format!("inv:{i}")).unwrap();
            }

            // The first write through the cache that lands on the promoted replica.
            let mut n = 0u64;
            let first_write = loop {
                n += 1;
                let key = format!("probe:{n}");
                cache.set(&key, &n, None).unwrap();
                let done = killed_at.elapsed();
                if promoted.get::<u64>(&key).ok().flatten() == Some(n) {
                    break (done, ops.load(Ordering::Relaxed) - ops_at_kill);
                }
                assert!(
                    done < Duration::from_secs(30),
                    "no write reached the promoted replica within 30 s:\n{}",
                    deployment.logs()
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            let sentinel_time = watcher.join().unwrap();
            let first_async = async_probe.join().unwrap();
            // Load on the new master for a while, then stop.
            std::thread::sleep(Duration::from_secs(1));
            stop.store(true, Ordering::Relaxed);
            let models: Vec<Model> = workers.into_iter().map(|w| w.join().unwrap()).collect();
            (models, sentinel_time, first_write, first_async)
        });
    let amodels: Vec<Model> = rt.block_on(async {
        let mut v = Vec::new();
        for t in tasks {
            v.push(t.await.unwrap());
        }
        v
    });

    println!(
        "sentinel failover: {} ops on {THREADS} threads and {TASKS} async tasks ({ops_during} \
         from the kill to the first write on the new master), {} errors; Sentinel named the \
         replica {:.0} ms after the kill, first write on it through the cache {:.0} ms after, \
         through the async face {:.0} ms after (target: Sentinel's time + breaker_retry {} ms = \
         {:.0} ms)",
        ops.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        sentinel_time.as_secs_f64() * 1e3,
        first_write.as_secs_f64() * 1e3,
        first_async.as_secs_f64() * 1e3,
        RETRY.as_millis(),
        (sentinel_time + RETRY).as_secs_f64() * 1e3,
    );
    assert!(
        first_async <= sentinel_time + RETRY + HANG,
        "first async write {first_async:?}: the async face did not follow Sentinel's failover \
         ({sentinel_time:?}) within retry {RETRY:?} + {HANG:?}"
    );
    assert!(
        first_write <= sentinel_time + RETRY + HANG,
        "first write {first_write:?}: the cache did not follow Sentinel's failover \
         ({sentinel_time:?}) within retry {RETRY:?} + {HANG:?}"
    );
    assert_eq!(
        info(&cache, "sentinel_master"),
        Some(format!("127.0.0.1:{new_port}")),
        "old master was {old_port}"
    );

    assert_eq!(
        rt.block_on(ainfo(&acache, "sentinel_master")),
        Some(format!("127.0.0.1:{new_port}")),
        "async face; old master was {old_port}"
    );

    // The invalidations made during the failover, on either face, were applied to the new
    // master, and neither face reads them.
    for key in (0..20).flat_map(|i| [format!("inv:{i}"), format!("ainv:{i}")]) {
        assert_eq!(promoted.get::<String>(&key).unwrap(), None, "{key}");
        assert_eq!(cache.get::<String>(&key).unwrap(), None, "{key}");
        assert_eq!(
            rt.block_on(acache.get::<String>(&key)).unwrap(),
            None,
            "{key}"
        );
    }
    // Nothing stale afterwards: through either face and on the new master itself.
    models.extend(amodels);
    let mut violations = Vec::new();
    for mut m in models {
        violations.append(&mut m.violations);
        let keys: Vec<String> = m.last.keys().cloned().collect();
        for key in keys {
            let got = cache.get::<String>(&key).unwrap();
            m.check(&key, got.as_ref(), "after, through the cache");
            let got = rt.block_on(acache.get::<String>(&key)).unwrap();
            m.check(&key, got.as_ref(), "after, through the async face");
            let got = promoted.get::<String>(&key).unwrap();
            m.check(&key, got.as_ref(), "after, on the new master");
        }
        violations.append(&mut m.violations);
    }
    assert!(
        violations.is_empty(),
        "{} stale reads:\n{}",
        violations.len(),
        violations.join("\n")
    );
}
