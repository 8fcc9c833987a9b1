//! `ddf-cache set --json` / `get` round trips: every form `get` prints is stored back by
//! `set --json` as the same value (docs: crates/ddf-cli/src/value.rs, README).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output, Stdio};

struct Cli {
    dir: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
}

impl Cli {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("home")).unwrap();
        Cli {
            dir,
            env: Vec::new(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ddf-cache"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path().join("home"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
}

const FORMS: &[&str] = &[
    "null",
    "false",
    "0",
    "-7",
    "1180591620717411303425",
    "-1180591620717411303425",
    "100000000000000000000000000000000000000000",
    "0.1",
    "1.0",
    "-0.0",
    "1e+16",
    "5e-324",
    "\"\"",
    "\"héllo \\\"x\\\"\\n\"",
    "[]",
    "{}",
    "{\"b\":1,\"a\":2}",
    "{\"m\":1180591620717411303425,\"n\":12345678901234}",
    "{\"$bytes\":\"AP8=\"}",
    "{\"$bytearray\":\"aGk=\"}",
    "{\"$tuple\":[\"x\",{\"$tuple\":[]}]}",
    "{\"$set\":[1]}",
    "{\"$frozenset\":[\"a\"]}",
    "{\"$float\":\"nan\"}",
    "{\"$float\":\"inf\"}",
    "{\"$dict\":[[1,\"one\"],[{\"$tuple\":[1,2]},null]]}",
    "{\"$dict\":[[\"$bytes\",\"a dict, not bytes\"]]}",
];

#[test]
fn every_form_round_trips_on_the_pickle_backend() {
    let cli = Cli::new();
    for (i, form) in FORMS.iter().enumerate() {
        let key = format!("k{i}");
        cli.ok(&["set", &key, form, "--json"]);
        assert_eq!(cli.ok(&["get", &key]).trim_end(), *form, "{form}");
    }
    // What `get` printed, given back, is stored as the same value again.
    for (i, form) in FORMS.iter().enumerate() {
        let printed = cli.ok(&["get", &format!("k{i}")]);
        cli.ok(&["set", "again", printed.trim_end(), "--json"]);
        assert_eq!(cli.ok(&["get", "again"]), printed, "{form}");
    }
}

#[test]
fn negative_numbers_with_or_without_a_double_dash() {
    let cli = Cli::new();
    cli.ok(&["set", "a", "-7", "--json"]);
    cli.ok(&["set", "--json", "b", "-1180591620717411303425"]);
    cli.ok(&["set", "c", "--json", "--", "-2.5"]);
    cli.ok(&["set", "d", "-x"]);
    assert_eq!(cli.ok(&["get", "a"]), "-7\n");
    assert_eq!(cli.ok(&["get", "b"]), "-1180591620717411303425\n");
    assert_eq!(cli.ok(&["get", "c"]), "-2.5\n");
    assert_eq!(cli.ok(&["get", "d"]), "\"-x\"\n");
}

#[test]
fn bad_forms_are_one_line_errors() {
    let cli = Cli::new();
    for (text, needle) in [
        ("{not json", "not valid JSON"),
        ("{\"$bytes\":\"!\"}", "$bytes"),
        ("{\"$dict\":[[1]]}", "$dict"),
    ] {
        let o = cli.run(&["set", "k", text, "--json"]);
        let err = String::from_utf8(o.stderr).unwrap();
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.starts_with("ddf-cache: ") && err.contains(needle),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

#[test]
fn the_redis_json_backend_refuses_what_it_would_change() {
    let Some(server) = ddf_testkit::RedisServer::start() else {
        return;
    };
    let mut cli = Cli::new();
    cli.env.push(("REDIS_PORT", server.port().to_string()));
    cli.env.push(("REDIS_HOST", "127.0.0.1".to_owned()));
    cli.env.push(("DDF_CACHE_NAMESPACE", String::new()));
    for form in [
        "{\"$tuple\":[1]}",
        "{\"$bytes\":\"AA==\"}",
        "{\"$float\":\"nan\"}",
    ] {
        let o = cli.run(&["-b", "redis", "set", "k", form, "--json"]);
        let err = String::from_utf8(o.stderr).unwrap();
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("redis_pickle"), "{err}");
    }
    // JSON values, big integers and key order included, round-trip; redis_pickle keeps the rest.
    for form in FORMS {
        let backend = if form.contains('$') {
            "redis_pickle"
        } else {
            "redis"
        };
        cli.ok(&["-b", backend, "set", "k", form, "--json"]);
        assert_eq!(
            cli.ok(&["-b", backend, "get", "k"]).trim_end(),
            *form,
            "{backend}"
        );
    }
    // What Redis holds for the JSON backend: Python's json.dumps text (all the digits).
    cli.ok(&[
        "-b",
        "redis",
        "set",
        "big",
        "{\"m\":1180591620717411303425}",
        "--json",
    ]);
    assert_eq!(
        ddf_testkit::redis_cli(server.port(), &["GET", "big"]).trim(),
        "{\"m\":1180591620717411303425}"
    );
}
