//! The real `ddf-cache` binary, run with a clean environment and a temporary directory per test
//! (ripgrep's `tests/util.rs` shape).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Self {
        let cli = Cli {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(cli.home()).unwrap();
        cli
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ddf-cache"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn write_ini(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

/// An error is one line on stderr starting with `ddf-cache:`, exit code 2, no panic.
fn assert_clean_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(code(o), 2, "stderr: {err}");
    assert!(err.starts_with("ddf-cache: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn set_get_delete_with_exit_codes() {
    let cli = Cli::new();
    let o = cli.run(&["set", "greeting", "hello world"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = cli.run(&["get", "greeting"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "\"hello world\"\n"));

    let o = cli.run(&["get", "absent"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (1, ""));

    assert_eq!(code(&cli.run(&["delete", "greeting"])), 0);
    assert_eq!(code(&cli.run(&["delete", "greeting"])), 1);
    assert_eq!(code(&cli.run(&["get", "greeting"])), 1);

    // The default directory is the user's cache directory.
    assert!(cli.home().join(".cache/ddf").is_dir());
}

#[test]
fn set_json_and_stdin() {
    let cli = Cli::new();
    assert_eq!(
        code(&cli.run(&[
            "set",
            "svc",
            r#"{"name":"web","ports":["8080:80"]}"#,
            "--json"
        ])),
        0
    );
    let o = cli.run(&["get", "svc"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ports"][0], "8080:80");

    let o = cli.run(&["set", "bad", "{not json", "--json"]);
    assert_clean_error(&o, "not valid JSON");

    let mut child = cli
        .cmd()
        .args(["set", "piped", "-", "--ttl", "60"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(stdout(&cli.run(&["get", "piped"])), "\"from stdin\"\n");

    // A TTL that is not positive: a message that says what a TTL may be.
    for ttl in ["0", "-1", "-0.5"] {
        let o = cli.run(&["set", "k", "v", "--ttl", ttl]);
        assert_clean_error(&o, &format!("--ttl {ttl}: a TTL is a number of seconds"));
        assert!(stderr(&o).contains("greater than 0"), "{}", stderr(&o));
    }
}

#[test]
fn falsy_values_are_hits() {
    let cli = Cli::new();
    for (k, v) in [
        ("zero", "0"),
        ("false", "false"),
        ("empty", "[]"),
        ("s", "\"\""),
    ] {
        assert_eq!(code(&cli.run(&["set", k, v, "--json"])), 0);
        let o = cli.run(&["get", k]);
        assert_eq!((code(&o), stdout(&o).trim()), (0, v));
    }
}

#[test]
fn invalidate_is_literal_and_prints_the_count() {
    let cli = Cli::new();
    for k in ["svc1:a", "svc1:b", "svc[1]:a", "svc2:a"] {
        assert_eq!(code(&cli.run(&["set", k, "v"])), 0);
    }
    let o = cli.run(&["invalidate", "svc[1]:"]);
    assert_eq!(stdout(&o), "1\n");
    let o = cli.run(&["invalidate", "svc1:"]);
    assert_eq!(stdout(&o), "2\n");
    assert_eq!(code(&cli.run(&["get", "svc2:a"])), 0);
    assert_eq!(code(&cli.run(&["flush"])), 0);
    assert_eq!(code(&cli.run(&["get", "svc2:a"])), 1);
}

#[test]
fn ping_stats_and_config() {
    let cli = Cli::new();
    let ini = cli.write_ini(
        "my.ini",
        "[cache]\nttl = 60\nredis_password = hunter2\nnamespace = app:\n",
    );
    let ini = ini.to_str().unwrap();
    let o = cli.run(&["-c", ini, "ping"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("pickle: database "),
        "{}",
        stdout(&o)
    );

    cli.run(&["-c", ini, "set", "k", "v"]);
    let o = cli.run(&["-c", ini, "stats"]);
    assert!(stdout(&o).contains("\nentries: 1\n"), "{}", stdout(&o));

    let o = cli
        .cmd()
        .args(["-c", ini, "config"])
        .env("REDIS_PORT", "7000")
        .output()
        .unwrap();
    let text = stdout(&o);
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
    assert!(text.contains("my.ini, line 2"), "{text}");
    assert!(text.contains("environment variable REDIS_PORT"), "{text}");
    assert!(text.contains("default"), "{text}");
}

#[test]
fn config_discovery_env_and_local_file() {
    let cli = Cli::new();
    cli.write_ini("ddf.ini", "[cache]\nbackend = none\n");
    let o = cli.run(&["config"]);
    assert!(stdout(&o).contains("# file: ddf.ini"), "{}", stdout(&o));
    // backend = none stores nothing.
    cli.run(&["set", "k", "v"]);
    assert_eq!(code(&cli.run(&["get", "k"])), 1);
    // $DDF_CONFIG wins over ./ddf.ini, and the environment over the file.
    let other = cli.write_ini("other.ini", "[cache]\nttl = 5\n");
    let o = cli
        .cmd()
        .arg("config")
        .env("DDF_CONFIG", &other)
        .env("DDF_CACHE_TTL", "7")
        .output()
        .unwrap();
    let text = stdout(&o);
    assert!(text.contains("other.ini"), "{text}");
    assert!(
        text.contains("environment variable DDF_CACHE_TTL"),
        "{text}"
    );
}

#[test]
fn errors_are_one_clear_line_with_exit_code_2() {
    let cli = Cli::new();
    let bad = cli.write_ini("bad.ini", "[cache]\nttl = 60\nbackend = redsi\n");
    let o = cli.run(&["-c", bad.to_str().unwrap(), "get", "k"]);
    assert_clean_error(&o, "line 3");
    let err = stderr(&o);
    for needle in [
        "bad.ini",
        "backend",
        "\"redsi\"",
        "memcached_pickle",
        "redis_pickle",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }

    assert_clean_error(&cli.run(&["-b", "redsi", "get", "k"]), "redsi");
    assert_clean_error(&cli.run(&["get"]), "--help");
    assert_clean_error(&cli.run(&["frobnicate"]), "frobnicate");
    assert_eq!(code(&cli.run(&["--help"])), 0);
    assert_clean_error(
        &cli.run(&["-c", "/nonexistent/ddf.ini", "get", "k"]),
        "/nonexistent/ddf.ini",
    );
    let o = cli
        .cmd()
        .args(["get", "k"])
        .env("DDF_CACHE_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_clean_error(&o, "DDF_CACHE_TIMEOUT");
}

/// Each cause appears once in an error line: an error that writes its source into its own
/// message and also returns it from `source()` is printed twice by a chain printer.
#[test]
fn an_error_states_its_cause_once() {
    let cli = Cli::new();
    let file = cli.write_ini("not-a-dir", "");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "-c".into(),
                "/nonexistent/ddf.ini".into(),
                "get".into(),
                "k".into(),
            ],
            "No such file or directory",
        ),
        (
            vec!["set".into(), "k".into(), "v".into()],
            "Not a directory",
        ),
        (vec!["get".into(), "k".into()], "Not a directory"),
    ];
    for (args, cause) in cases {
        let o = cli
            .cmd()
            .args(&args)
            .env("DDF_CACHE_PICKLE_DIR", file.join("cache"))
            .output()
            .unwrap();
        assert_clean_error(&o, cause);
        let err = stderr(&o);
        assert_eq!(err.matches(cause).count(), 1, "cause printed twice: {err}");
        assert!(err.matches("(os error").count() <= 1, "{err}");
        let parts: Vec<&str> = err.trim_end().split(": ").collect();
        for (i, p) in parts.iter().enumerate() {
            assert!(!parts[i + 1..].contains(p), "{p:?} repeated in: {err}");
        }
    }
}

#[test]
fn bench_runs_and_prints_json() {
    let cli = Cli::new();
    let o = cli.run(&[
        "bench",
        "--ops",
        "50",
        "--batch",
        "10",
        "--invalidate",
        "30",
        "--among",
        "200",
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["backend"], "pickle");
    let ops: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["op"].as_str().unwrap())
        .collect();
    assert!(
        ops.contains(&"get (hit) [1t]")
            && ops.contains(&"set_many (10) [2t]")
            && ops.contains(&"invalidate (30 of 200)"),
        "{ops:?}"
    );
    // The counters of the run: every call reached the directory, none the fallback.
    assert_eq!(v["calls"]["fallback"], 0, "{v}");
    assert_eq!(v["calls"]["errors"], 0, "{v}");
    assert!(v["calls"]["hits"].as_u64().unwrap() > 0, "{v}");
    // The benchmark leaves nothing behind.
    let o = cli.run(&["stats"]);
    assert!(stdout(&o).contains("\nentries: 0\n"), "{}", stdout(&o));
    let o = cli.run(&["bench", "--ops", "20", "--threads", "2", "--among", "0"]);
    assert!(stdout(&o).contains("median"), "{}", stdout(&o));
}

/// Issue #12: `bench --async` runs the async face with each task count through the same table,
/// with the sync `get` as baseline on the file backend, and leaves nothing behind.
#[test]
fn bench_async_on_the_file_backend() {
    let cli = Cli::new();
    let o = cli.run(&[
        "bench", "--async", "--tasks", "1,4", "--ops", "30", "--batch", "5", "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["backend"], "pickle");
    assert_eq!(v["tasks"], serde_json::json!([1, 4]));
    let ops: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["op"].as_str().unwrap())
        .collect();
    for op in [
        "get (hit) [1 task]",
        "get (miss) [4 tasks]",
        "set_many (5) [4 tasks]",
        "sync get (hit) [1t]",
    ] {
        assert!(ops.contains(&op), "{op} not in {ops:?}");
    }
    let ratio = &v["ratios"][0];
    assert!(
        ratio["what"]
            .as_str()
            .unwrap()
            .starts_with("median, get (hit) [1 task] ÷ sync"),
        "{v}"
    );
    assert!(ratio["ratio"].as_f64().unwrap() > 0.0, "{v}");
    // The async face's counters: each task count's 30 gets and 30 keys of get_many hit.
    assert_eq!(v["calls"]["errors"], 0, "{v}");
    assert_eq!(
        v["calls"]["hits"].as_u64().unwrap(),
        (1 + 4) * (30 + 30),
        "{v}"
    );
    let o = cli.run(&["stats"]);
    assert!(stdout(&o).contains("\nentries: 0\n"), "{}", stdout(&o));
    // The table form.
    let o = cli.run(&["bench", "--async", "--tasks", "2", "--ops", "10"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("get (hit) [2 tasks]"), "{}", stdout(&o));
}

/// Issue #12: `bench --async` against a real Redis puts `redis-benchmark -c <tasks> -P 1` (same
/// server, same run) beside each task count when it is on PATH.
#[test]
fn bench_async_on_redis_beside_redis_benchmark() {
    let Some(server) = ddf_testkit::RedisServer::start() else {
        return;
    };
    let cli = Cli::new();
    let o = cli
        .cmd()
        .args(["-b", "redis", "bench", "--async", "--tasks", "1,8"])
        .args(["--ops", "40", "--batch", "10", "--json"])
        .env("DDF_CACHE_REDIS_HOST", "127.0.0.1")
        .env("DDF_CACHE_REDIS_PORT", server.port().to_string())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["backend"], "redis");
    assert_eq!(v["calls"]["errors"], 0, "{v}");
    assert_eq!(v["calls"]["fallback"], 0, "{v}");
    let results = v["results"].as_array().unwrap();
    let ops: Vec<&str> = results.iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert!(ops.contains(&"get (hit) [8 tasks]"), "{ops:?}");
    assert!(ops.contains(&"sync get (hit) [1t]"), "{ops:?}");
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("redis-benchmark").is_file()));
    if on_path {
        for n in [1, 8] {
            let name = format!("redis-benchmark -c {n} -P 1 get");
            let row = results.iter().find(|r| r["op"] == name.as_str());
            let row = row.unwrap_or_else(|| panic!("{name} not in {ops:?}"));
            assert!(row["ops_per_sec"].as_f64().unwrap() > 0.0, "{row}");
        }
        let ratios = v["ratios"].to_string();
        assert!(
            ratios.contains("get (hit) [8 tasks] ÷ redis-benchmark -c 8"),
            "{ratios}"
        );
    }
    // Nothing left in the benchmark's namespace.
    let o = cli
        .cmd()
        .args(["-b", "redis", "-n", "ddf:ddf-bench:", "keys", ""])
        .env("DDF_CACHE_REDIS_HOST", "127.0.0.1")
        .env("DDF_CACHE_REDIS_PORT", server.port().to_string())
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "", "{}", stderr(&o));
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let cli = Cli::new();
    cli.run(&["set", "k", "v"]);
    let mut child = cli
        .cmd()
        .args(["get", "k"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// Against a real Redis: ping shows the breaker's state; with the server gone, `get` is served
/// by the fallback (a miss, exit 1, one warning) and `ping` fails with one line and exit 2.
#[test]
fn redis_ping_state_and_a_server_that_goes_away() {
    let Some(mut server) = ddf_testkit::RedisServer::start() else {
        return;
    };
    let cli = Cli::new();
    let port = server.port().to_string();
    let run = |args: &[&str]| {
        cli.cmd()
            .args(["-b", "redis"])
            .args(args)
            .env("DDF_CACHE_REDIS_HOST", "127.0.0.1")
            .env("DDF_CACHE_REDIS_PORT", &port)
            .output()
            .unwrap()
    };
    assert_eq!(code(&run(&["set", "k", "v"])), 0);
    let o = run(&["get", "k"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "\"v\"\n"));
    let o = run(&["ping"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("state up"), "{}", stdout(&o));
    server.process.kill();
    let o = run(&["get", "k"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cache operation failed"),
        "{}",
        stderr(&o)
    );
    assert!(
        !stderr(&o).contains('\x1b'),
        "no colour codes when not a terminal"
    );
    let o = run(&["ping"]);
    assert_clean_error(&o, "state");
}

/// Issue #14: with Redis killed, a value one `ddf-cache set` wrote to the fallback is read back
/// by the next process while the outage lasts; once Redis is back, `get` misses (outage values
/// are not promoted).
#[test]
fn redis_an_outage_value_is_shared_until_the_server_returns() {
    let Some(mut server) = ddf_testkit::RedisServer::start() else {
        return;
    };
    let cli = Cli::new();
    let port = server.port();
    let port_s = port.to_string();
    let run = |args: &[&str]| {
        cli.cmd()
            .args(["-b", "redis"])
            .args(args)
            .env("DDF_CACHE_REDIS_HOST", "127.0.0.1")
            .env("DDF_CACHE_REDIS_PORT", &port_s)
            .output()
            .unwrap()
    };
    server.process.kill();
    // The write reached the fallback, not the server: one line says so, exit code 3.
    let o = run(&["set", "k", "x"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let err = stderr(&o);
    let notice: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("ddf-cache: "))
        .collect();
    assert_eq!(notice.len(), 1, "{}", stderr(&o));
    assert!(
        notice[0].contains("redis did not answer") && notice[0].contains("local fallback"),
        "{}",
        notice[0]
    );
    // Asked for, the fallback counts as success.
    let o = run(&["--fallback-ok", "set", "k", "x"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains("ddf-cache: "), "{}", stderr(&o));
    let o = run(&["get", "k"]);
    assert_eq!(
        (code(&o), stdout(&o).as_str()),
        (0, "\"x\"\n"),
        "{}",
        stderr(&o)
    );
    // Deletes, invalidations and flushes too.
    run(&["--fallback-ok", "set", "gone", "x"]);
    for args in [&["delete", "gone"][..], &["invalidate", "p:"], &["flush"]] {
        let o = run(args);
        assert_eq!(code(&o), 3, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("was recorded"), "{}", stderr(&o));
    }
    // A read is not a change: a miss stays exit 1.
    assert_eq!(code(&run(&["get", "gone"])), 1);
    drop(server);
    let _back = ddf_testkit::RedisServer::start_on(port, &[]).unwrap();
    let o = run(&["get", "k"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
}

/// Issue #18: a server that has not answered is never shown `up`; `stats` and `ping` say why
/// (refused, timed out on a reply, protocol error), and a reply timeout after connecting is not
/// "cannot connect".
#[test]
fn status_is_never_up_without_an_answer_and_says_why() {
    let cli = Cli::new();
    let run = |backend: &str, env: &[(&str, String)], args: &[&str]| {
        let mut c = cli.cmd();
        c.args(["-b", backend]).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.env("DDF_CACHE_TIMEOUT", "0.3")
            .env("DDF_CACHE_CONNECT_TIMEOUT", "0.3")
            .output()
            .unwrap()
    };
    let check = |backend: &str, env: &[(&str, String)], why: &str| {
        let o = run(backend, env, &["stats"]);
        let out = stdout(&o);
        assert!(!out.contains("\nstate: up"), "{backend}: {out}");
        assert!(
            out.contains(&format!("not answering ({why})")),
            "{backend}: {out}"
        );
        let o = run(backend, env, &["ping"]);
        let err = stderr(&o);
        assert_eq!(code(&o), 2, "{err}");
        // One line from ddf-cache (the library may log a warning beside it).
        let line: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("ddf-cache: "))
            .collect();
        assert_eq!(line.len(), 1, "{err}");
        assert!(
            line[0].contains(&format!("state not answering ({why})")),
            "{backend}: {err}"
        );
        assert!(!err.contains("state up"), "{err}");
        err
    };
    // Nothing listens.
    let port = ddf_testkit::free_port().to_string();
    check(
        "redis",
        &[
            ("DDF_CACHE_REDIS_HOST", "127.0.0.1".into()),
            ("DDF_CACHE_REDIS_PORT", port.clone()),
        ],
        "refused",
    );
    check(
        "memcached",
        &[("DDF_CACHE_MEMCACHED_SERVERS", format!("127.0.0.1:{port}"))],
        "refused",
    );
    // Something that is not the protocol answers.
    let fake = ddf_testkit::FakeServer::start(|_| {
        ddf_testkit::FakeReply::Send(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec())
    });
    check(
        "redis",
        &[
            ("DDF_CACHE_REDIS_HOST", "127.0.0.1".into()),
            ("DDF_CACHE_REDIS_PORT", fake.port().to_string()),
        ],
        "protocol error",
    );
    check(
        "memcached",
        &[("DDF_CACHE_MEMCACHED_SERVERS", fake.server())],
        "protocol error",
    );
    drop(fake);
    // A stopped Redis accepts the connection (the kernel does) and never replies: with
    // redis_db = 1 the set-up's SELECT is what times out, and that is not "cannot connect".
    let Some(server) = ddf_testkit::RedisServer::start() else {
        return;
    };
    server.process.signal("STOP");
    let env = [
        ("DDF_CACHE_REDIS_HOST", "127.0.0.1".to_owned()),
        ("DDF_CACHE_REDIS_PORT", server.port().to_string()),
        ("DDF_CACHE_REDIS_DB", "1".to_owned()),
    ];
    let err = check("redis", &env, "timed out on a reply");
    assert!(!err.contains("cannot connect"), "{err}");
    server.process.signal("CONT");
    let o = run("redis", &env, &["stats"]);
    assert!(stdout(&o).contains("\nstate: up\n"), "{}", stdout(&o));
}

/// Issue #18: `-v` says which file was read (or where it looked), the backend and its
/// servers; `-vv` adds connections and every hit and miss. Without `-v`, nothing.
#[test]
fn verbose_logs_say_what_the_cache_is_doing() {
    let cli = Cli::new();
    let o = cli.run(&["get", "nosuch"]);
    assert_eq!((code(&o), stderr(&o).as_str()), (1, ""));
    let o = cli.run(&["-v", "get", "nosuch"]);
    let err = stderr(&o);
    for needle in [
        "no configuration file found",
        "./ddf.ini",
        ".config/ddf/ddf.ini",
        "backend chosen",
        "backend=\"pickle\"",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(!err.contains("hit=false"), "a miss is -vv: {err}");
    cli.write_ini("ddf.ini", "[cache]\nttl = 60\n");
    let err = stderr(&cli.run(&["-vv", "get", "nosuch"]));
    assert!(
        err.contains("configuration read") && err.contains("file=ddf.ini"),
        "{err}"
    );
    assert!(err.contains("key=nosuch hit=false"), "{err}");

    let Some(server) = ddf_testkit::RedisServer::start() else {
        return;
    };
    let o = cli
        .cmd()
        .args(["-vv", "-b", "redis", "get", "nosuch"])
        .env("DDF_CACHE_REDIS_HOST", "127.0.0.1")
        .env("DDF_CACHE_REDIS_PORT", server.port().to_string())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(code(&o), 1, "{err}");
    for needle in [
        "backend=\"redis\"",
        &format!("servers=redis://127.0.0.1:{}/0", server.port()),
        "redis connection opened",
        "key=nosuch hit=false",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

/// Issue #18: `keys PREFIX [--limit N]` lists the user keys under a prefix with their TTL, and
/// `get --meta` shows TTL, stored form, flags and size, on the local directory, Redis and
/// Memcached; on a large keyspace `keys` stops at the limit.
#[test]
fn keys_and_get_meta_on_every_backend() {
    let redis = ddf_testkit::RedisServer::start();
    let memcached = ddf_testkit::MemcachedServer::start();
    let mut backends: Vec<(&str, Vec<(&str, String)>)> = vec![("pickle", vec![])];
    if let Some(r) = &redis {
        backends.push((
            "redis",
            vec![
                ("DDF_CACHE_REDIS_HOST", "127.0.0.1".into()),
                ("DDF_CACHE_REDIS_PORT", r.port().to_string()),
            ],
        ));
    }
    if let Some(m) = &memcached {
        backends.push((
            "memcached",
            vec![("DDF_CACHE_MEMCACHED_SERVERS", m.server())],
        ));
    }
    for (backend, env) in &backends {
        let cli = Cli::new();
        let run = |args: &[&str]| {
            let mut c = cli.cmd();
            c.args(["-b", backend]).args(args);
            for (k, v) in env {
                c.env(k, v);
            }
            c.output().unwrap()
        };
        for args in [
            &["set", "svc:a", "1", "--ttl", "100"][..],
            &["set", "svc:b b", "two"],
            &["set", "other", "x"],
        ] {
            assert_eq!(code(&run(args)), 0, "{backend}: {}", stderr(&run(args)));
        }
        let o = run(&["keys", "svc:"]);
        assert_eq!(code(&o), 0, "{backend}: {}", stderr(&o));
        let lines: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 2, "{backend}: {lines:?}");
        assert!(lines[0].starts_with("svc:a\t"), "{backend}: {lines:?}");
        assert!(lines[1].starts_with("svc:b b\t"), "{backend}: {lines:?}");
        // Memcached too: `lru_crawler metadump` gives each item's `exp=`.
        let secs: f64 = lines[0]["svc:a\t".len()..]
            .trim_end_matches(" s")
            .parse()
            .unwrap();
        assert!(secs > 0.0 && secs <= 100.0, "{backend}: {lines:?}");
        assert!(lines[1].ends_with("no expiry"), "{backend}: {lines:?}");
        let o = run(&["keys", "", "--limit", "1"]);
        assert_eq!(stdout(&o).lines().count(), 1, "{backend}: {}", stdout(&o));
        assert!(stderr(&o).contains("--limit 1"), "{}", stderr(&o));

        let o = run(&["get", "--meta", "svc:b b"]);
        assert_eq!(code(&o), 0, "{backend}: {}", stderr(&o));
        let meta = stdout(&o);
        let form = match *backend {
            "pickle" => "stored form: pickle",
            "memcached" => "stored form: python str",
            _ => "stored form: json",
        };
        for needle in ["key: svc:b b\n", "ttl: ", form, "size: "] {
            assert!(meta.contains(needle), "{backend}: {needle}: {meta}");
        }
        assert_eq!(code(&run(&["get", "--meta", "absent"])), 1);
    }

    // A large keyspace: the listing stops at the limit.
    let Some(r) = &redis else { return };
    ddf_testkit::redis_cli(
        r.port(),
        &[
            "EVAL",
            "for i=1,20000 do redis.call('SET','ddf:big:'..i,'1') end",
            "0",
        ],
    );
    let cli = Cli::new();
    let o = cli
        .cmd()
        .args(["-b", "redis", "keys", "big:", "--limit", "50"])
        .env("DDF_CACHE_REDIS_HOST", "127.0.0.1")
        .env("DDF_CACHE_REDIS_PORT", r.port().to_string())
        .output()
        .unwrap();
    assert_eq!(stdout(&o).lines().count(), 50, "{}", stderr(&o));
}

/// Issue #18: the benchmark runs in a namespace of its own with a TTL on every key; SIGINT makes
/// it remove what it wrote (the test interrupts the real binary and counts what is left), and
/// a run removes what an earlier interrupted one left.
#[test]
fn bench_cleans_up_on_sigint_and_after_an_earlier_run() {
    let cli = Cli::new();
    cli.run(&["set", "mine", "kept"]);
    let bench_keys = || {
        let o = cli.run(&["-n", "ddf:ddf-bench:", "keys", "", "--limit", "1000000"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        stdout(&o).lines().count()
    };
    let child = cli
        .cmd()
        .args([
            "bench",
            "--ops",
            "1000000",
            "--threads",
            "1",
            "--among",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it has written (no time bound asserted: a deadline only ends a broken run).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while bench_keys() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the bench wrote nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Its keys carry a TTL.
    let o = cli.run(&["-n", "ddf:ddf-bench:", "keys", "", "--limit", "5"]);
    assert!(
        stdout(&o).lines().all(|l| l.ends_with(" s")),
        "{}",
        stdout(&o)
    );
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("bench interrupted; removed the"), "{err}");
    assert_eq!(bench_keys(), 0, "the interrupted bench left keys behind");
    assert_eq!(stdout(&cli.run(&["get", "mine"])), "\"kept\"\n");

    // What an earlier run left (here planted by hand) is removed by the next run.
    cli.run(&["-n", "ddf:ddf-bench:", "set", "999:left", "x"]);
    let o = cli.run(&["bench", "--ops", "10", "--threads", "1", "--among", "0"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("removed 1 keys an earlier"),
        "{}",
        stderr(&o)
    );
    assert_eq!(bench_keys(), 0);
}

#[test]
fn add_incr_decr_touch_ttl_with_exit_codes() {
    let cli = Cli::new();
    assert_eq!(code(&cli.run(&["add", "lock", "me"])), 0);
    let o = cli.run(&["add", "lock", "you"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(stdout(&cli.run(&["get", "lock"])), "\"me\"\n");
    assert_eq!(code(&cli.run(&["add", "j", "[1, 2]", "--json"])), 0);

    let o = cli.run(&["incr", "hits"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "1\n"));
    assert_eq!(stdout(&cli.run(&["incr", "hits", "10"])), "11\n");
    assert_eq!(stdout(&cli.run(&["decr", "hits", "5"])), "6\n");
    assert_eq!(stdout(&cli.run(&["incr", "hits", "-1"])), "5\n");
    assert_eq!(stdout(&cli.run(&["get", "hits"])), "5\n");
    assert_clean_error(&cli.run(&["decr", "hits", "6"]), "never negative");
    assert_clean_error(&cli.run(&["incr", "lock"]), "lock");

    assert_eq!(stdout(&cli.run(&["ttl", "hits"])), "no expiry\n");
    assert_eq!(code(&cli.run(&["touch", "hits", "--ttl", "100"])), 0);
    let o = cli.run(&["ttl", "hits"]);
    let secs: f64 = stdout(&o).trim().trim_end_matches(" s").parse().unwrap();
    assert!(secs > 90.0 && secs <= 100.0, "{secs}");
    assert_eq!(code(&cli.run(&["touch", "absent", "--ttl", "5"])), 1);
    let o = cli.run(&["ttl", "absent"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (1, ""));
}
