//! The pipeline's bound and the delete's retry rule, against scripted fake servers (a stopped
//! server, a connection lost after a delete was run).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::conn::{Answer, Conn, Kind};
use super::pipe::{Failed, Pipe};
use super::{AsyncBackend, AsyncMemcached, MemcachedBackend};

/// A listener on a free loopback port, and its port.
async fn listen() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// Reads what the client sent, split into lines, whatever arrived within a short wait.
async fn lines(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<String>> {
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout(Duration::from_millis(10), s.read(&mut chunk)).await {
        Ok(Ok(0) | Err(_)) => return None,
        Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        Err(_) => {}
    }
    let mut out = Vec::new();
    while let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
        out.push(String::from_utf8_lossy(&buf[..end]).into_owned());
        buf.drain(..end + 2);
    }
    Some(out)
}

/// A stopped server: reads and answers nothing until `go`, then answers every `mg` with a miss.
async fn stopped_server(l: TcpListener, go: Arc<AtomicBool>) {
    let (mut s, _) = l.accept().await.unwrap();
    let (mut buf, mut owed) = (Vec::new(), 0usize);
    while let Some(ls) = lines(&mut s, &mut buf).await {
        owed += ls.iter().filter(|l| l.starts_with("mg ")).count();
        if go.load(Ordering::Relaxed) && owed > 0 {
            s.write_all(&b"EN\r\n".repeat(owed)).await.unwrap();
            owed = 0;
        }
    }
}

fn mg() -> Vec<u8> {
    b"mg k v f\r\n".to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_requests_cannot_grow_the_queue_past_its_bound_and_give_their_places_back() {
    let (l, port) = listen().await;
    let go = Arc::new(AtomicBool::new(false));
    tokio::spawn(stopped_server(l, go.clone()));
    let bound = 4;
    let pipe = Arc::new(Pipe::bounded(
        Conn::connect("127.0.0.1", port).await.unwrap(),
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

/// A server that holds one key (`gone`), and on its first connection runs a `md` sent behind
/// an `mg bad` before it answers that `mg` with garbage (the connection then fails on the
/// `mg`, after the `md` was run); later connections answer normally.
async fn losing_server(l: TcpListener, held: Arc<AtomicBool>) {
    let mut first = true;
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let (held, lose) = (held.clone(), first);
        first = false;
        tokio::spawn(async move {
            let (mut buf, mut bad) = (Vec::new(), false);
            while let Some(ls) = lines(&mut s, &mut buf).await {
                let mut out = Vec::new();
                for l in ls {
                    if l == "stats settings" {
                        out.extend_from_slice(b"STAT item_size_max 1048576\r\nEND\r\n");
                    } else if l.starts_with("mg ") && l.contains("bad") && lose {
                        bad = true;
                    } else if l.starts_with("mg ") {
                        out.extend_from_slice(b"EN\r\n");
                    } else if l.starts_with("md ") {
                        if bad {
                            out.extend_from_slice(b"BOGUS\r\n");
                        }
                        let was = held.swap(false, Ordering::Relaxed);
                        out.extend_from_slice(if was { b"HD\r\n" } else { b"NF\r\n" });
                    }
                }
                if !out.is_empty() && s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_lost_with_its_connection_after_it_ran_reports_an_error_not_false() {
    let (l, port) = listen().await;
    let held = Arc::new(AtomicBool::new(true));
    tokio::spawn(losing_server(l, held.clone()));
    let config = crate::CacheConfig::from_ini_str(&format!(
        "[cache]\nbackend = memcached\nmemcached_servers = 127.0.0.1:{port}\n"
    ))
    .unwrap();
    let mc = AsyncMemcached::new(Arc::new(MemcachedBackend::from_config(&config).unwrap()));
    // The connection is open before the calls (the retry rule applies to those).
    assert!(mc.get("warm").await.result.unwrap().is_none());
    let (read, deleted) = tokio::join!(mc.get("bad"), mc.delete("gone"));
    assert!(read.result.is_err(), "the garbage reply fails the get");
    assert!(!held.load(Ordering::Relaxed), "the server ran the delete");
    // Never a wrong `false`: the server deleted the key, its reply was lost.
    let e = deleted.expect_err("a lost reply is an error, not false");
    assert!(e.to_string().contains("may have run it"), "{e}");
}

/// The async client on one server at `port`, with `extra` config lines.
fn mc_on(port: u16, extra: &str) -> AsyncMemcached {
    let config = crate::CacheConfig::from_ini_str(&format!(
        "[cache]\nbackend = memcached\nmemcached_servers = 127.0.0.1:{port}\n{extra}"
    ))
    .unwrap();
    AsyncMemcached::new(Arc::new(MemcachedBackend::from_config(&config).unwrap()))
}

/// First connection: runs the `md` (the key is gone), then closes before its reply.
async fn closing_server(l: TcpListener, held: Arc<AtomicBool>) {
    let mut first = true;
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let (held, lose) = (held.clone(), first);
        first = false;
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(ls) = lines(&mut s, &mut buf).await {
                let mut out = Vec::new();
                for l in ls {
                    if l == "stats settings" {
                        out.extend_from_slice(b"STAT item_size_max 1048576\r\nEND\r\n");
                    } else if l.starts_with("mg ") {
                        out.extend_from_slice(b"EN\r\n");
                    } else if l.starts_with("md ") {
                        let was = held.swap(false, Ordering::SeqCst);
                        if lose {
                            return; // ran it; the connection breaks before the reply
                        }
                        out.extend_from_slice(if was { b"HD\r\n" } else { b"NF\r\n" });
                    }
                }
                if !out.is_empty() && s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_meets_the_break_on_its_own_reply_is_not_retried_into_false() {
    let (l, port) = listen().await;
    let held = Arc::new(AtomicBool::new(true));
    tokio::spawn(closing_server(l, held.clone()));
    let mc = mc_on(port, "");
    assert!(mc.get("warm").await.result.unwrap().is_none());
    let deleted = mc.delete("gone").await;
    assert!(!held.load(Ordering::SeqCst), "the server ran the delete");
    assert!(
        deleted.is_err(),
        "the server deleted the key, its reply was lost: {deleted:?}"
    );
}

/// Accepts and never answers (a stopped server); counts connections.
async fn silent_server(l: TcpListener, n: Arc<std::sync::atomic::AtomicUsize>) {
    let mut held = Vec::new();
    while let Ok((s, _)) = l.accept().await {
        n.fetch_add(1, Ordering::SeqCst);
        held.push(s);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_calls_share_one_connection_attempt() {
    let (l, port) = listen().await;
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(silent_server(l, n.clone()));
    let mc = Arc::new(mc_on(port, "timeout = 0.2\nconnect_timeout = 0.2\n"));
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
    assert_eq!(n.load(Ordering::SeqCst), 1);
}

/// Answers `stats settings` after 300 ms, everything else at once.
async fn slow_hello_server(l: TcpListener) {
    while let Ok((mut s, _)) = l.accept().await {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(ls) = lines(&mut s, &mut buf).await {
                let mut out = Vec::new();
                for l in ls {
                    if l == "stats settings" {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        out.extend_from_slice(b"STAT item_size_max 1048576\r\nEND\r\n");
                    } else if l.starts_with("mg ") {
                        out.extend_from_slice(b"EN\r\n");
                    }
                }
                if !out.is_empty() && s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_connect_does_not_eat_the_requests_timeout() {
    let (l, port) = listen().await;
    tokio::spawn(slow_hello_server(l));
    let mc = mc_on(port, "timeout = 0.2\nconnect_timeout = 1\n");
    let r = mc.get("a").await.result;
    assert!(r.is_ok(), "{r:?}");
}
