//! A hostile or broken Redis (issue #14 point 6): a fake server from the test kit answers the
//! first request with garbage, a partial line or an enormous announced length, then stalls.
//! Every case ends in an error (or the fallback) within timeout + connect timeout, never a
//! panic, a hang, or an allocation the reply announced but did not send.

use std::time::{Duration, Instant};

use ddf::{CacheConfig, CacheManager};
use ddf_testkit::{FakeReply, FakeServer};

use crate::{process, timing};

// A connect timeout longer than the operation timeout: a set-up that waited once per set-up
// reply (redis-rs's `CLIENT SETINFO` twice: 1.2 s) would exceed the bound.
const TIMEOUT: Duration = Duration::from_millis(200);
const CONNECT: Duration = Duration::from_millis(600);
/// What a loaded 2-core test machine may add to a bound.
const SLACK: Duration = Duration::from_millis(200);

/// The hostile replies: each is sent as the answer to the first command, then the fake stalls.
const HOSTILE: &[&[u8]] = &[
    b"HTTP/1.1 400 Bad Request\r\n",
    b"\x00\x01\x02garbage\r\n",
    b"+OK",
    b"$5\r\nab",
    b"$999999999\r\nabc",
    b"*999999999\r\n",
    b"*3\r\n$999999999\r\n",
    b"%999999999\r\n",
    b":notanumber\r\n",
];

/// A fake Redis answering any command (the line holding its name) with `reply`, then stalling.
fn fake(reply: &'static [u8]) -> FakeServer {
    FakeServer::start(move |line: &[u8]| {
        if line.first().is_some_and(|b| *b == b'*' || *b == b'$') {
            FakeReply::Nothing
        } else {
            FakeReply::SendThenStall(reply.to_vec())
        }
    })
}

fn cache(fake: &FakeServer, fallback: &str, dir: &std::path::Path) -> CacheManager {
    let ini = format!(
        "[cache]\nbackend = redis\nredis_url = redis://127.0.0.1:{}/0\ntimeout = {}\n\
         connect_timeout = {}\nfallback = {fallback}\npickle_dir = {}\n",
        fake.port(),
        TIMEOUT.as_secs_f64(),
        CONNECT.as_secs_f64(),
        dir.display()
    );
    CacheManager::new(CacheConfig::from_ini_str(&ini).unwrap()).unwrap()
}

/// Runs `f` and returns a text of its result and how long it took.
fn timed<T: std::fmt::Debug>(f: impl FnOnce() -> ddf::Result<T>) -> (String, Duration) {
    let t = Instant::now();
    let r = f();
    (format!("{r:?}"), t.elapsed())
}

#[test]
fn every_hostile_reply_ends_within_the_bound() {
    let bound = TIMEOUT + CONNECT + SLACK;
    for reply in HOSTILE {
        for fallback in ["error", "pickle"] {
            let shown = String::from_utf8_lossy(reply);
            let (r, took) = timing::fastest_of(bound, || {
                // A fresh directory: a retry must not start on an earlier attempt's journal.
                let dir = tempfile::tempdir().unwrap();
                let fake = fake(reply);
                let c = cache(&fake, fallback, dir.path());
                timed(|| c.get::<String>("k"))
            });
            eprintln!("{shown:?} fallback={fallback}: get {took:?} {r}");
            assert!(took < bound, "{shown:?}: get took {took:?}");
            match fallback {
                "error" => assert!(r.starts_with("Err("), "{shown:?}: {r}"),
                _ => assert!(r == "Ok(None)" || r.starts_with("Err("), "{shown:?}: {r}"),
            }
            let (r, took) = timing::fastest_of(bound, || {
                // A fresh directory: a retry must not start on an earlier attempt's journal.
                let dir = tempfile::tempdir().unwrap();
                let fake = fake(reply);
                let c = cache(&fake, fallback, dir.path());
                timed(|| c.set_many(&[("a", 1), ("b", 2), ("c", 3)], None))
            });
            assert!(took < bound, "{shown:?}: set_many took {took:?}");
            if fallback == "error" {
                assert!(r.starts_with("Err("), "{shown:?}: {r}");
            }
        }
    }
}

const ALLOC_WORKER: &str = "DDF_TEST_REDIS_ALLOC_WORKER";

/// An announced length is not allocated before its bytes arrive. Measured in a child process
/// (this test alone), where the peak virtual memory is not blurred by other tests' threads.
#[test]
fn an_enormous_announced_length_is_not_allocated() {
    if process::job(ALLOC_WORKER).is_some() {
        return process::assert_peak_growth_below(256 << 20, || {
            for reply in HOSTILE
                .iter()
                .filter(|r| r.windows(9).any(|w| w == b"999999999"))
            {
                let fake = fake(reply);
                let dir = tempfile::tempdir().unwrap();
                let c = cache(&fake, "error", dir.path());
                let (r, _) = timed(|| c.get::<String>("k"));
                assert!(r.starts_with("Err("), "{r}");
            }
        });
    }
    process::measure_in_child(
        "redis_hostile::an_enormous_announced_length_is_not_allocated",
        ALLOC_WORKER,
    );
}

/// The case of the issue: `ping` against a Redis that answers garbage and then stalls took
/// 4.1 s with `timeout = 1` and `connect_timeout = 1`.
#[test]
fn ping_of_a_garbage_answering_server_ends_within_the_bound() {
    for reply in HOSTILE {
        let shown = String::from_utf8_lossy(reply);
        let (r, took) = timing::fastest_of(TIMEOUT + CONNECT + SLACK, || {
            let dir = tempfile::tempdir().unwrap();
            let fake = fake(reply);
            let c = cache(&fake, "pickle", dir.path());
            timed(|| c.ping())
        });
        eprintln!("{shown:?}: ping {took:?} {r}");
        assert!(r.starts_with("Err("), "{shown:?}: {r}");
        assert!(
            took < TIMEOUT + CONNECT + SLACK,
            "{shown:?}: ping took {took:?}"
        );
        if !r.contains("timed out") {
            assert!(r.contains("not RESP"), "{shown:?}: {r}");
        }
    }
}
