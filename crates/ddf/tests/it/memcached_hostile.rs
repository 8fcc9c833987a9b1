//! A hostile or broken Memcached on the batch paths (issue #14 points 5 and 6; `get` alone is in
//! `hostile.rs`): the test kit's fake server answers the first `mg`, `ms` or `md` of a batch with
//! garbage, a partial line or an enormous announced length, then stalls. Every batch ends in an
//! error (or the fallback) within timeout + connect timeout, whatever its size, never a panic,
//! a hang, or an allocation the reply announced but did not send.

use std::time::{Duration, Instant};

use ddf::{CacheConfig, CacheManager};
use ddf_testkit::{FakeReply, FakeServer};

use crate::{process, timing};

const TIMEOUT: Duration = Duration::from_millis(300);
const CONNECT: Duration = Duration::from_millis(300);
/// What a loaded 2-core test machine may add to a bound.
const SLACK: Duration = Duration::from_millis(250);

const HOSTILE: &[&[u8]] = &[
    b"HTTP/1.1 400 Bad Request\r\n",
    b"\x00\x01\x02garbage\r\n",
    b"VA 10",
    b"VA 1000 f0\r\nonly part of it",
    b"VA 999999999 f0 O0\r\nabc",
    b"HD",
    b"SERVER_ERROR out of memory\r\n",
];

/// A fake memcached: `stats` and `version` as memcached answers them; the first request line
/// starting with `verb` gets `reply`, then the connection stalls; other lines get nothing (a
/// quiet-mode batch expects no reply before its `mn`).
fn fake(verb: &'static [u8], reply: &'static [u8]) -> FakeServer {
    FakeServer::memcached(move |line: &[u8]| {
        if line.starts_with(verb) {
            FakeReply::SendThenStall(reply.to_vec())
        } else {
            FakeReply::Nothing
        }
    })
}

fn cache(fake: &FakeServer, fallback: &str, dir: &std::path::Path) -> CacheManager {
    let ini = format!(
        "[cache]\nbackend = memcached\nmemcached_servers = {}\ntimeout = {}\n\
         connect_timeout = {}\nfallback = {fallback}\npickle_dir = {}\n",
        fake.server(),
        TIMEOUT.as_secs_f64(),
        CONNECT.as_secs_f64(),
        dir.display()
    );
    CacheManager::new(CacheConfig::from_ini_str(&ini).unwrap()).unwrap()
}

/// 500 keys and items: a batch far larger than one reply.
fn batch() -> Vec<(String, i32)> {
    (0..500).map(|i| (format!("k{i}"), i)).collect()
}

fn timed<T: std::fmt::Debug>(f: impl FnOnce() -> ddf::Result<T>) -> (String, Duration) {
    let t = Instant::now();
    let r = f();
    let text = format!("{r:?}");
    (text.chars().take(300).collect(), t.elapsed())
}

#[test]
fn hostile_replies_to_batches_end_within_the_bound() {
    let bound = TIMEOUT + CONNECT + SLACK;
    let items = batch();
    let refs: Vec<(&str, i32)> = items.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let keys: Vec<&str> = refs.iter().map(|(k, _)| *k).collect();
    for reply in HOSTILE {
        let shown = String::from_utf8_lossy(reply);
        for fallback in ["error", "pickle"] {
            let (r, took) = timing::fastest_of(bound, || {
                // A fresh directory: a retry must not start on an earlier attempt's journal.
                let dir = tempfile::tempdir().unwrap();
                let f = fake(b"mg ", reply);
                let c = cache(&f, fallback, dir.path());
                timed(|| c.get_many::<i32>(&keys))
            });
            eprintln!("get_many {shown:?} fallback={fallback}: {took:?} {r}");
            assert!(took < bound, "get_many {shown:?}: {took:?} {r}");
            if fallback == "error" {
                assert!(r.starts_with("Err("), "get_many {shown:?}: {r}");
            }

            let (r, took) = timing::fastest_of(bound, || {
                // A fresh directory: a retry must not start on an earlier attempt's journal.
                let dir = tempfile::tempdir().unwrap();
                let f = fake(b"ms ", reply);
                let c = cache(&f, fallback, dir.path());
                timed(|| c.set_many(&refs, None))
            });
            eprintln!("set_many {shown:?} fallback={fallback}: {took:?} {r}");
            assert!(took < bound, "set_many {shown:?}: {took:?} {r}");

            let (r, took) = timing::fastest_of(bound, || {
                // A fresh directory: a retry must not start on an earlier attempt's journal.
                let dir = tempfile::tempdir().unwrap();
                let f = fake(b"md ", reply);
                let c = cache(&f, fallback, dir.path());
                timed(|| c.delete_many(&keys))
            });
            eprintln!("delete_many {shown:?} fallback={fallback}: {took:?} {r}");
            assert!(took < bound, "delete_many {shown:?}: {took:?} {r}");
        }
    }
}

const ALLOC_WORKER: &str = "DDF_TEST_MEMCACHED_ALLOC_WORKER";

/// A `VA 999999999` in a `get_many` reply is not allocated (issue #14: about 1 GB of peak
/// virtual memory). Measured in a child process running this test alone.
#[test]
fn an_enormous_announced_length_in_a_batch_is_not_allocated() {
    if process::job(ALLOC_WORKER).is_some() {
        return process::assert_peak_growth_below(256 << 20, || {
            let dir = tempfile::tempdir().unwrap();
            let f = fake(b"mg ", b"VA 999999999 f0 O0\r\nabc");
            let c = cache(&f, "error", dir.path());
            let (r, _) = timed(|| c.get_many::<i32>(&["a", "b", "c"]));
            assert!(r.starts_with("Err("), "{r}");
        });
    }
    process::measure_in_child(
        "memcached_hostile::an_enormous_announced_length_in_a_batch_is_not_allocated",
        ALLOC_WORKER,
    );
}
