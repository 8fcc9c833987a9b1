//! The pipeline's bound and the delete's retry rule, against scripted fake servers (the test
//! kit's [`FakeServer`]: a stopped server, a connection lost after a delete was run).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ddf_testkit::{FakeReply, FakeServer};
use tokio::time::Instant;

use super::conn::{Answer, Conn, Kind};
use super::pipe::{Failed, Pipe};
use super::{AsyncBackend, AsyncMemcached, MemcachedBackend};

/// The async client on one server at `port`, with `extra` config lines.
fn mc_on(port: u16, extra: &str) -> AsyncMemcached {
    let config = crate::CacheConfig::from_ini_str(&format!(
        "[cache]\nbackend = memcached\nmemcached_servers = 127.0.0.1:{port}\n{extra}"
    ))
    .unwrap();
    AsyncMemcached::new(Arc::new(MemcachedBackend::from_config(&config).unwrap()))
}

/// A stopped server: answers nothing until `go` (it holds the first `mg`, and reads nothing
/// more, for up to a minute), then every `mg` with a miss.
fn stopped_server(go: Arc<AtomicBool>) -> FakeServer {
    FakeServer::start(move |line| {
        if !line.starts_with(b"mg ") {
            return FakeReply::Nothing;
        }
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while !go.load(Ordering::Relaxed) && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        FakeReply::Send(b"EN\r\n".to_vec())
    })
}

fn mg() -> Vec<u8> {
    b"mg k v f\r\n".to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_requests_cannot_grow_the_queue_past_its_bound_and_give_their_places_back() {
    let go = Arc::new(AtomicBool::new(false));
    let fake = stopped_server(go.clone());
    let bound = 4;
    let pipe = Arc::new(Pipe::bounded(
        Conn::connect("127.0.0.1", fake.port()).await.unwrap(),
        bound,
    ));
    let far = || Instant::now() + Duration::from_secs(30);
    // The application drops its futures long before ddf's timeout, many times the bound.
    for _ in 0..(bound * 5) {
        let p = pipe.clone();
        let _ = tokio::time::timeout(Duration::from_millis(5), async move {
            p.call(mg(), Kind::Get, far()).await
        })
        .await;
        assert!(pipe.outstanding(bound) <= bound);
    }
    assert_eq!(
        pipe.outstanding(bound),
        bound,
        "the sent ones wait for their replies"
    );
    // One more waits for room within its own deadline, then fails naming the bound.
    let full = pipe
        .call(mg(), Kind::Get, Instant::now() + Duration::from_millis(50))
        .await;
    let Err(f @ Failed::TimedOut { queued: true }) = full else {
        panic!(
            "expected a full queue, got {full:?}",
            full = full.map(|_| ())
        );
    };
    // Reported as a reply timeout (not a connect timeout), its reason kept.
    let e = super::map_err("s", "get", Duration::from_secs(1), f.into_error()).to_string();
    assert!(e.contains("timed out waiting for a reply"), "{e}");
    assert!(e.contains("the most allowed"), "{e}");
    // The server answers: the replies of the gone callers are read, their places given back.
    go.store(true, Ordering::Relaxed);
    let answer = pipe.call(mg(), Kind::Get, far()).await;
    assert!(matches!(answer, Ok(Answer::Value(None))));
    let until = Instant::now() + Duration::from_secs(10);
    while pipe.outstanding(bound) > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(pipe.outstanding(bound), 0);
    assert!(!pipe.is_dead());
}

/// A server that holds one key (`gone`). The first `mg` of a key named `bad` gets no answer at
/// once: the `md` sent behind it is run, then that `mg` is answered with garbage (the
/// connection fails on the `mg`, after the `md` was run); everything else is answered normally.
fn losing_server(held: Arc<AtomicBool>) -> FakeServer {
    let (bad, lost) = (AtomicBool::new(false), AtomicBool::new(false));
    FakeServer::memcached(move |line| match line {
        l if l.starts_with(b"mg ")
            && l.windows(3).any(|w| w == b"bad")
            && !lost.swap(true, Ordering::Relaxed) =>
        {
            bad.store(true, Ordering::Relaxed);
            FakeReply::Nothing
        }
        l if l.starts_with(b"mg ") => FakeReply::Send(b"EN\r\n".to_vec()),
        l if l.starts_with(b"md ") => {
            let mut out = Vec::new();
            if bad.swap(false, Ordering::Relaxed) {
                out.extend_from_slice(b"BOGUS\r\n");
            }
            let was = held.swap(false, Ordering::Relaxed);
            out.extend_from_slice(if was { b"HD\r\n" } else { b"NF\r\n" });
            FakeReply::Send(out)
        }
        _ => FakeReply::Nothing,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_lost_with_its_connection_after_it_ran_reports_an_error_not_false() {
    let held = Arc::new(AtomicBool::new(true));
    let fake = losing_server(held.clone());
    let mc = mc_on(fake.port(), "");
    // The connection is open before the calls (the retry rule applies to those).
    assert!(mc.get("warm").await.result.unwrap().is_none());
    let (read, deleted) = tokio::join!(mc.get("bad"), mc.delete("gone"));
    assert!(read.result.is_err(), "the garbage reply fails the get");
    assert!(!held.load(Ordering::Relaxed), "the server ran the delete");
    // Never a wrong `false`: the server deleted the key, its reply was lost.
    let e = deleted.expect_err("a lost reply is an error, not false");
    assert!(e.to_string().contains("may have run it"), "{e}");
}

/// The first `md` is run (the key is gone), then the connection closes before its reply; the
/// later ones are answered.
fn closing_server(held: Arc<AtomicBool>) -> FakeServer {
    let closed = AtomicBool::new(false);
    FakeServer::memcached(move |line| match line {
        l if l.starts_with(b"mg ") => FakeReply::Send(b"EN\r\n".to_vec()),
        l if l.starts_with(b"md ") => {
            let was = held.swap(false, Ordering::SeqCst);
            if !closed.swap(true, Ordering::SeqCst) {
                return FakeReply::Close; // ran it; the connection breaks before the reply
            }
            FakeReply::Send(if was { b"HD\r\n" } else { b"NF\r\n" }.to_vec())
        }
        _ => FakeReply::Nothing,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_meets_the_break_on_its_own_reply_is_not_retried_into_false() {
    let held = Arc::new(AtomicBool::new(true));
    let fake = closing_server(held.clone());
    let mc = mc_on(fake.port(), "");
    assert!(mc.get("warm").await.result.unwrap().is_none());
    let deleted = mc.delete("gone").await;
    assert!(!held.load(Ordering::SeqCst), "the server ran the delete");
    assert!(
        deleted.is_err(),
        "the server deleted the key, its reply was lost: {deleted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_calls_share_one_connection_attempt() {
    // Accepts and never answers (a stopped server).
    let fake = FakeServer::start(|_| FakeReply::Nothing);
    let mc = Arc::new(mc_on(fake.port(), "timeout = 0.2\nconnect_timeout = 0.2\n"));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let mc = mc.clone();
            tokio::spawn(async move { mc.get(&format!("k{i}")).await.result })
        })
        .collect();
    for h in tasks {
        let e = h.await.unwrap().expect_err("a silent server");
        assert!(e.to_string().contains("timed out while connecting"), "{e}");
    }
    // One attempt (its `stats settings` never answered), its outcome shared by all eight.
    assert_eq!(fake.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_connect_does_not_eat_the_requests_timeout() {
    // Answers `stats settings` after 300 ms, everything else at once.
    let fake = FakeServer::start(|line| match line {
        b"stats settings" => FakeReply::Late(
            Duration::from_millis(300),
            b"STAT item_size_max 1048576\r\nEND\r\n".to_vec(),
        ),
        l if l.starts_with(b"mg ") => FakeReply::Send(b"EN\r\n".to_vec()),
        _ => FakeReply::Nothing,
    });
    let mc = mc_on(fake.port(), "timeout = 0.2\nconnect_timeout = 1\n");
    let r = mc.get("a").await.result;
    assert!(r.is_ok(), "{r:?}");
}
