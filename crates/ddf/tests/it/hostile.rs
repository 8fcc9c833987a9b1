//! Hostile and broken servers (issue #14 point 6, the Memcached client): a fake server from the
//! test kit answers garbage, partial lines, enormous announced lengths, or stalls mid-reply.
//! Every case ends in an error (or the fallback) within the timeout, never a panic, a hang or an
//! allocation the reply announced but did not send (the client refuses a length above the
//! server's item limit as soon as the `VA` line arrives; its buffer bound itself is tested
//! beside the transport, in `backend/memcached/client.rs`).

use std::time::{Duration, Instant};

use ddf::{CacheConfig, CacheManager};
use ddf_testkit::{FakeReply, FakeServer};

use crate::timing;

/// The operation timeout the caches below use.
const TIMEOUT: Duration = Duration::from_secs(1);
/// A stalled reply: the timeout, the connect timeout, and room for a loaded machine.
const STALL_BOUND: Duration = Duration::from_millis(2500);

/// A fake memcached: answers `stats settings` (a 1 MiB item limit) and `version` like memcached,
/// `mg` with `hostile`, and anything else with `ERROR`.
fn fake_memcached(hostile: &'static [u8], stall: bool) -> FakeServer {
    FakeServer::memcached(move |line: &[u8]| {
        if line.starts_with(b"mg ") {
            if stall {
                FakeReply::SendThenStall(hostile.to_vec())
            } else {
                FakeReply::Send(hostile.to_vec())
            }
        } else {
            FakeReply::Send(b"ERROR\r\n".to_vec())
        }
    })
}

fn cache(fake: &FakeServer, fallback: &str, dir: &std::path::Path) -> CacheManager {
    let ini = format!(
        "[cache]\nbackend = memcached\nmemcached_servers = {}\ntimeout = {}\n\
         connect_timeout = 0.5\nfallback = {fallback}\npickle_dir = {}\n",
        fake.server(),
        TIMEOUT.as_secs_f64(),
        dir.display()
    );
    CacheManager::new(CacheConfig::from_ini_str(&ini).unwrap()).unwrap()
}

/// Runs one `get` against a fresh fake answering `hostile`, up to three times until it ends
/// within `bound` ([`timing::fastest_of`]); returns the result's text and how long it took.
fn get_from(
    hostile: &'static [u8],
    stall: bool,
    fallback: &str,
    bound: Duration,
) -> (String, Duration) {
    timing::fastest_of(bound, || get_once(hostile, stall, fallback))
}

fn get_once(hostile: &'static [u8], stall: bool, fallback: &str) -> (String, Duration) {
    let fake = fake_memcached(hostile, stall);
    let dir = tempfile::tempdir().unwrap();
    let c = cache(&fake, fallback, dir.path());
    let t = Instant::now();
    let r = c.get::<String>("k");
    let took = t.elapsed();
    let text = match r {
        Ok(v) => format!("Ok({v:?})"),
        Err(e) => format!("Err({})", ddf_error_chain(&e)),
    };
    (text, took)
}

fn ddf_error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[test]
fn an_enormous_announced_length_is_refused_at_once() {
    let (r, took) = get_from(b"VA 999999999 f0\r\n", true, "error", TIMEOUT);
    assert!(r.starts_with("Err("), "{r}");
    assert!(r.contains("999999999") && r.contains("1048576"), "{r}");
    // Refused when the line arrives: no wait for data that never comes.
    assert!(took < TIMEOUT, "{took:?}");
}

#[test]
fn an_enormous_announced_length_with_the_pickle_fallback() {
    // A protocol error is not temporary: it is reported (not hidden by the fallback); either
    // way, at once.
    let (r, took) = get_from(b"VA 999999999 f0\r\n", true, "pickle", TIMEOUT);
    assert!(r == "Ok(None)" || r.contains("999999999"), "{r}");
    assert!(took < TIMEOUT, "{took:?}");
}

#[test]
fn a_stall_mid_value_ends_within_the_timeout() {
    let (r, took) = get_from(b"VA 1000 f0\r\nonly part of it", true, "error", STALL_BOUND);
    // (With the breaker closed the timeout's text is only logged: the error says
    // "the server is up and fallback = error".)
    assert!(r.starts_with("Err("), "{r}");
    assert!(took < STALL_BOUND, "{took:?}");
}

#[test]
fn a_stall_mid_line_ends_within_the_timeout() {
    let (r, took) = get_from(b"VA 10", true, "error", STALL_BOUND);
    assert!(r.starts_with("Err("), "{r}");
    assert!(took < STALL_BOUND, "{took:?}");
}

#[test]
fn garbage_is_a_protocol_error() {
    for hostile in [
        &b"HTTP/1.1 400 Bad Request\r\n"[..],
        b"VA 5 f0\r\nhelloXY",
        b"VA five f0\r\n",
        b"\x00\x01\x02\r\n",
    ] {
        let (r, took) = get_from(hostile, false, "error", STALL_BOUND);
        assert!(r.starts_with("Err("), "{r}");
        assert!(took < STALL_BOUND, "{took:?}");
    }
}

#[test]
fn an_endless_line_is_refused_at_its_bound() {
    let endless: &'static [u8] = Vec::leak(vec![b'x'; 200 * 1024]);
    let (r, took) = get_from(endless, true, "error", TIMEOUT);
    assert!(r.contains("longer than 65536 bytes"), "{r}");
    assert!(took < TIMEOUT, "{took:?}");
}
