//! `ddf-cache import-pickle-dir`, on `.pkl` files written by Python as the Python DDF's `pickle`
//! backend writes them (`pickle.dumps(value, pickle.HIGHEST_PROTOCOL)` into `<key>.pkl`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn cli(dir: &Path, env: &[(&str, String)], args: &[&str]) -> Output {
    std::fs::create_dir_all(dir.join("home")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_ddf-cache"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.join("home"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .args(args)
        .output()
        .unwrap()
}

/// Writes the Python DDF's cache directory: fresh entries, one 2 hours old, a hostile one and a
/// corrupt one. Returns false when no Python is available.
fn write_python_dir(dir: &Path) -> bool {
    let Some(python) = ddf_testkit::python() else {
        return false;
    };
    let script = r#"
import os, pickle, sys, time
d = sys.argv[1]
t = ("x", "y")
values = {
    "svc:web": {"name": "web", "ports": ["8080:80"], "b": 1, "a": 2},
    "tuple": (1, "a", None),
    "set": {1, 2, 3},
    "bytes": b"\x00\xff",
    "big": 2**70 + 1,
    "neg": -(10**40),
    "float": 0.1,
    "shared": [t, t, {"k": t}],
    "unicode": "h\u00e9llo \U0001F600",
    "empty": [],
    "yaml:hash": "3f2a",
}
for k, v in values.items():
    with open(os.path.join(d, k + ".pkl"), "wb") as f:
        pickle.dump(v, f, pickle.HIGHEST_PROTOCOL)
old = os.path.join(d, "old.pkl")
with open(old, "wb") as f:
    pickle.dump("stale", f, pickle.HIGHEST_PROTOCOL)
two_hours_ago = time.time() - 7200
os.utime(old, (two_hours_ago, two_hours_ago))
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + os.path.join(d, "PWNED"),))
with open(os.path.join(d, "evil.pkl"), "wb") as f:
    pickle.dump(Evil(), f, pickle.HIGHEST_PROTOCOL)
with open(os.path.join(d, "corrupt.pkl"), "wb") as f:
    f.write(pickle.dumps([1, 2, 3])[:-3])
with open(os.path.join(d, "notes.txt"), "w") as f:
    f.write("not a cache file")
"#;
    let out = Command::new(python)
        .args(["-c", script, dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn imports_a_python_ddf_directory_into_the_pickle_backend() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("docker_cache");
    std::fs::create_dir(&src).unwrap();
    if !write_python_dir(&src) {
        return;
    }
    let before = snapshot(&src);
    let o = cli(
        work.path(),
        &[],
        &["import-pickle-dir", src.to_str().unwrap(), "--ttl", "3600"],
    );
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(1), "a file was refused: {stdout}");
    assert!(
        stdout.ends_with("imported 11, skipped as expired 1, refused 2\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("evil.pkl: ")
            && stdout.contains("refusing to load the global posix.system"),
        "{stdout}"
    );
    assert!(stdout.contains("corrupt.pkl: "), "{stdout}");
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    // Nothing executed, nothing deleted or changed.
    assert!(!src.join("PWNED").exists());
    assert_eq!(snapshot(&src), before);
    // The values, as Python wrote them.
    let get = |key: &str| {
        let o = cli(work.path(), &[], &["get", key]);
        (o.status.code(), String::from_utf8(o.stdout).unwrap())
    };
    for (key, printed) in [
        (
            "svc:web",
            r#"{"name":"web","ports":["8080:80"],"b":1,"a":2}"#,
        ),
        ("tuple", r#"{"$tuple":[1,"a",null]}"#),
        ("set", r#"{"$set":[1,2,3]}"#),
        ("bytes", r#"{"$bytes":"AP8="}"#),
        ("big", "1180591620717411303425"),
        ("neg", "-10000000000000000000000000000000000000000"),
        ("float", "0.1"),
        (
            "shared",
            r#"[{"$tuple":["x","y"]},{"$tuple":["x","y"]},{"k":{"$tuple":["x","y"]}}]"#,
        ),
        ("unicode", "\"héllo 😀\""),
        ("empty", "[]"),
        ("yaml:hash", "\"3f2a\""),
    ] {
        assert_eq!(get(key), (Some(0), format!("{printed}\n")), "{key}");
    }
    assert_eq!(get("old").0, Some(1), "expired: not imported");
    assert_eq!(get("evil").0, Some(1));
}

#[test]
fn the_time_left_becomes_the_ttl() {
    let Some(server) = ddf_testkit::RedisServer::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("docker_cache");
    std::fs::create_dir(&src).unwrap();
    if !write_python_dir(&src) {
        return;
    }
    let env = [
        ("REDIS_HOST", "127.0.0.1".to_owned()),
        ("REDIS_PORT", server.port().to_string()),
        ("DDF_CACHE_NAMESPACE", String::new()),
    ];
    // The file written two hours ago, with a three-hour ttl: one hour left.
    let o = cli(
        work.path(),
        &env,
        &[
            "-b",
            "redis_pickle",
            "import-pickle-dir",
            src.to_str().unwrap(),
            "--ttl",
            "10800",
        ],
    );
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(
        stdout.ends_with("imported 12, skipped as expired 0, refused 2\n"),
        "{stdout}"
    );
    let ttl = |key: &str| -> i64 {
        ddf_testkit::redis_cli(server.port(), &["TTL", key])
            .trim()
            .parse()
            .unwrap()
    };
    let old = ttl("old");
    assert!((3000..=3600).contains(&old), "{old}");
    let fresh = ttl("tuple");
    assert!((10000..=10800).contains(&fresh), "{fresh}");
    // Without --ttl: no expiry (the cache's own ttl, none here).
    let o = cli(
        work.path(),
        &env,
        &[
            "-b",
            "redis_pickle",
            "import-pickle-dir",
            src.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(ttl("old"), -1);
    // A directory that cannot be listed is an error (exit 2).
    let o = cli(
        work.path(),
        &env,
        &["import-pickle-dir", "/nonexistent/dir"],
    );
    assert_eq!(o.status.code(), Some(2));
}
