//! The file backend (`backend = pickle`) and `backend = none` through CacheManager.

use std::path::Path;
use std::time::Duration;

use ddf::{CacheBackend, CacheConfig, CacheManager};
use proptest::prelude::*;

use crate::conformance::{self, Caps};
use crate::process;

fn file_cache(dir: &Path, namespace: &str) -> CacheManager {
    CacheManager::new(
        CacheConfig::default()
            .with_backend(CacheBackend::Pickle)
            .with_pickle_dir(dir)
            .with_namespace(namespace),
    )
    .unwrap()
}

#[test]
fn conformance_on_the_file_backend() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run(&|ns| file_cache(dir.path(), ns), Caps::default());
    ddf::testing::conformance::run(
        &|ns| {
            ddf::testing::build_backend(
                &CacheConfig::default()
                    .with_pickle_dir(dir.path())
                    .with_namespace(ns),
            )
            .unwrap()
        },
        ddf::testing::conformance::Caps::default(),
    );
    // Nothing but the database (and the near cache's change counters) was written.
    for ent in std::fs::read_dir(dir.path()).unwrap() {
        let name = ent.unwrap().file_name().into_string().unwrap();
        assert!(
            name.starts_with("ddf-cache.sqlite3") || name == "ddf-near.counters",
            "{name}"
        );
    }
}

#[test]
fn conformance_with_an_empty_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let c = file_cache(dir.path(), "");
    conformance::prefix_invalidation_is_literal_and_exact(&c);
    conformance::odd_keys_round_trip(&c, Caps::default());
}

#[test]
fn the_none_backend_stores_nothing() {
    let c = CacheManager::new(CacheConfig::default().with_backend(CacheBackend::None)).unwrap();
    c.set("k", "v", None).unwrap();
    assert_eq!(c.get::<String>("k").unwrap(), None);
    assert!(!c.delete("k").unwrap());
    assert_eq!(c.invalidate_pattern("").unwrap(), 0);
    c.flush_all().unwrap();
    assert_eq!(c.stats().misses, 1);
}

#[test]
fn a_disabled_cache_misses_and_drops_writes() {
    let dir = tempfile::tempdir().unwrap();
    let enabled = file_cache(dir.path(), "ns:");
    enabled.set("k", "v", None).unwrap();
    let disabled = CacheManager::new(enabled.config().clone().with_enabled(false)).unwrap();
    assert_eq!(disabled.get::<String>("k").unwrap(), None);
    disabled.set("k2", "v", None).unwrap();
    assert!(!disabled.delete("k").unwrap());
    assert_eq!(disabled.invalidate_pattern("").unwrap(), 0);
    disabled.flush_all().unwrap();
    assert_eq!(enabled.get::<String>("k").unwrap().as_deref(), Some("v"));
    assert_eq!(enabled.get::<String>("k2").unwrap(), None);
}

#[test]
fn the_default_ttl_applies_and_a_per_call_ttl_wins() {
    let dir = tempfile::tempdir().unwrap();
    let c = CacheManager::new(
        CacheConfig::from_ini_str("[cache]\nttl = 1\n")
            .unwrap()
            .with_pickle_dir(dir.path()),
    )
    .unwrap();
    c.set("default", "v", None).unwrap();
    c.set("long", "v", Some(Duration::from_secs(3600))).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(c.get::<String>("default").unwrap(), None);
    assert_eq!(c.get::<String>("long").unwrap().as_deref(), Some("v"));
}

#[test]
fn an_unusable_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let err = CacheManager::new(CacheConfig::default().with_pickle_dir(&file)).unwrap_err();
    assert!(err.to_string().contains("a-file"), "{err}");
}

#[cfg(unix)]
#[test]
fn the_directory_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("new/cache");
    let c = file_cache(&d, "ns:");
    c.set("k", "v", None).unwrap();
    let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

/// The README's program, as a user would write it.
#[test]
fn the_published_example_runs() {
    use serde::{Deserialize, Serialize};
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Service {
        name: String,
        ports: Vec<String>,
    }
    let dir = tempfile::tempdir().unwrap();
    let ini = format!(
        "[cache]\nbackend = pickle\npickle_dir = {}\nttl = 3600\n",
        dir.path().display()
    );
    let config = CacheConfig::from_ini_str(&ini).unwrap();
    let cache = CacheManager::new(config).unwrap();
    let web = Service {
        name: "web".into(),
        ports: vec!["8080:80".into()],
    };
    cache.set("service:web:config", &web, None).unwrap();
    cache
        .set(
            "service:web:ports",
            &web.ports,
            Some(Duration::from_secs(60)),
        )
        .unwrap();
    let back: Option<Service> = cache.get("service:web:config").unwrap();
    assert_eq!(back, Some(web));
    assert_eq!(cache.invalidate_pattern("service:web:").unwrap(), 2);
    assert!(!cache.delete("service:web:config").unwrap());
    cache.flush_all().unwrap();
}

const WORKER_ENV: &str = "DDF_TEST_FILE_WORKER";

/// Several processes write and read the same keys in one directory: every read is a miss or a
/// whole value some process wrote for that key, never a torn or foreign one.
#[test]
fn processes_share_a_directory_without_torn_reads() {
    if let Some(job) = process::job(WORKER_ENV) {
        return file_worker(&job);
    }
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..4)
        .map(|w| {
            process::child(
                "file::processes_share_a_directory_without_torn_reads",
                WORKER_ENV,
                &format!("{}|{w}", dir.path().display()),
            )
            .spawn()
            .unwrap()
        })
        .collect();
    for c in children {
        process::check(c, "file worker");
    }
    let c = file_cache(dir.path(), "mp:");
    assert_eq!(c.invalidate_pattern("").unwrap(), 20);
}

/// The body of one worker process of the test above.
fn file_worker(spec: &str) {
    let (dir, w) = spec.rsplit_once('|').unwrap();
    let w: usize = w.parse().unwrap();
    let c = file_cache(Path::new(dir), "mp:");
    for i in 0..400 {
        let key = format!("k{}", i % 20);
        // Values are self-describing: the key, the writer, and a long body derived from both.
        let value = (key.clone(), w, format!("{key}/{w}/").repeat(50 + w * 30));
        c.set(&key, &value, None).unwrap();
        let other = format!("k{}", (i * 7) % 20);
        if let Some((k, ww, body)) = c.get::<(String, usize, String)>(&other).unwrap() {
            assert_eq!(k, other, "a read returned another key's value");
            assert_eq!(
                body,
                format!("{k}/{ww}/").repeat(50 + ww * 30),
                "torn value"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any key stays inside the directory and round-trips.
    #[test]
    fn any_key_round_trips_inside_the_directory(keys in proptest::collection::vec(".{0,300}", 1..8)) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        let c = file_cache(&dir, "p:");
        for (i, k) in keys.iter().enumerate() {
            c.set(k, &i, None).unwrap();
        }
        for k in &keys {
            let last = keys.iter().rposition(|x| x == k).unwrap();
            prop_assert_eq!(c.get::<usize>(k).unwrap(), Some(last));
        }
        // Only the cache directory exists under the root; nothing escaped it.
        let top: Vec<_> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        prop_assert_eq!(top, vec![std::ffi::OsString::from("cache")]);
        for ent in std::fs::read_dir(&dir).unwrap() {
            let ent = ent.unwrap();
            prop_assert!(ent.file_type().unwrap().is_file());
        }
    }
}

const GLOBAL_ENV: &str = "DDF_TEST_GLOBAL_WORKER";

/// The globals never panic: with a bad config file the global cache is disabled and the error is
/// kept; with a good one it works. Each case runs in a child process (globals are per process).
#[test]
fn globals_never_panic_and_report_a_bad_config() {
    if let Some(mode) = process::job(GLOBAL_ENV) {
        return global_worker(&mode);
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.ini");
    std::fs::write(&bad, "[cache]\nbackend = redsi\n").unwrap();
    let good = dir.path().join("good.ini");
    std::fs::write(
        &good,
        format!("[cache]\npickle_dir = {}\n", dir.path().join("c").display()),
    )
    .unwrap();
    let misspelt = dir.path().join("misspelt.ini");
    std::fs::write(&misspelt, "[app]\nx = 1\n[Cache]\nbackend = none\n").unwrap();
    for (ini, mode) in [(&bad, "bad"), (&good, "good"), (&misspelt, "misspelt")] {
        let c = process::child(
            "file::globals_never_panic_and_report_a_bad_config",
            GLOBAL_ENV,
            mode,
        )
        .env("DDF_CONFIG", ini)
        .spawn()
        .unwrap();
        process::check(c, mode);
    }
}

/// The child of the test above: the globals of a process whose config is `mode`.
fn global_worker(mode: &str) {
    if mode == "misspelt" {
        // `ddf::init` first: the program gets the error and can stop, naming file and line.
        let err = ddf::init().unwrap_err().to_string();
        assert!(
            err.contains("misspelt.ini, line 3") && err.contains("[Cache]"),
            "{err}"
        );
        assert_eq!(ddf::global_error().unwrap().to_string(), err);
        assert!(!ddf::CACHE.config().enabled);
        return;
    }
    ddf::CACHE.set("k", "v", None).unwrap();
    let got = ddf::CACHE.get::<String>("k").unwrap();
    if mode == "bad" {
        assert_eq!(got, None);
        assert!(!ddf::CACHE_CONFIG.enabled);
        let err = ddf::global_error().unwrap().to_string();
        assert!(err.contains("redsi") && err.contains("line 2"), "{err}");
        // `ddf::init` after first use returns the same error.
        assert_eq!(ddf::init().unwrap_err().to_string(), err);
    } else {
        assert_eq!(got.as_deref(), Some("v"));
        assert!(ddf::global_error().is_none());
        ddf::init().unwrap();
    }
}
