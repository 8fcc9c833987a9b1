//! The tracking channel's pure parts: the backoff, the drain's parsing, the set-up, the
//! heartbeat, the teardown's bypass.

use super::super::Lookup;
use std::io::Read;

use redis::PushKind;

use super::inbox::*;
use super::*;

/// Review finding 3: after a session that reached tracking the backoff starts over, however
/// long it had grown; a refusal waits long.
#[test]
fn the_backoff_starts_over_after_an_established_session() {
    let lost = End::Lost("x".to_owned());
    let mut b = Duration::ZERO;
    for _ in 0..10 {
        b = next_backoff(b, &lost, false);
    }
    assert_eq!(b, BACKOFF_MAX);
    assert_eq!(next_backoff(b, &lost, true), BACKOFF_MIN);
    assert_eq!(next_backoff(Duration::ZERO, &lost, false), BACKOFF_MIN);
    let refused = End::Refused("ERR unknown command".to_owned());
    assert_eq!(next_backoff(BACKOFF_MIN, &refused, false), REFUSED_BACKOFF);
}

fn settings(config: crate::CacheConfig) -> RedisSettings {
    match config
        .with_backend(crate::CacheBackend::Redis)
        .with_namespace("t:")
        .backend_settings()
        .unwrap()
    {
        crate::config::BackendSettings::Redis(s) => s,
        _ => panic!("not Redis settings"),
    }
}

fn channel(settings: RedisSettings, near: &Arc<Near>) -> Channel {
    Channel {
        settings,
        name: "ddf-near-test".to_owned(),
        near: Arc::downgrade(near),
        #[cfg(feature = "tls")]
        tls: std::cell::OnceCell::new(),
    }
}

fn tracked() -> Arc<Near> {
    Arc::new(Near::new(
        &crate::config::NearSettings {
            size: 10,
            ttl: Duration::from_secs(60),
            mode: crate::config::NearMode::Tracked,
        },
        None,
    ))
}

/// Review finding (#13, MEDIUM): behind Sentinel the tracking connection itself is asked
/// `ROLE` in its set-up (before the near cache resumes), and a replica's answer is a loss.
#[test]
fn behind_sentinel_the_setup_asks_the_tracked_server_its_role() {
    let near = tracked();
    let sentinels = vec![crate::config::ServerAddr::parse("127.0.0.1:1", 26379).unwrap()];
    let sentinel = channel(
        settings(crate::CacheConfig::default().with_redis_sentinels(sentinels, "m")),
        &near,
    );
    let (bytes, replies) = sentinel.setup(&sentinel.extra());
    assert_eq!(replies, 4);
    assert!(bytes.ends_with(&redis::cmd("ROLE").get_packed_command()));
    let plain = channel(settings(crate::CacheConfig::default()), &near);
    assert_eq!(plain.setup(&plain.extra()).1, 3);
    // On a Cluster (review of the ntrack merge, HIGH 1): every link's set-up and heartbeat
    // ask its own node's `CLUSTER NODES` and `CLUSTER INFO` (not `ROLE`: a node's own view
    // says whether it is a master).
    let nodes = vec![crate::config::ServerAddr::parse("127.0.0.1:1", 6379).unwrap()];
    let cluster = channel(
        settings(crate::CacheConfig::default().with_redis_cluster_nodes(nodes)),
        &near,
    );
    assert_eq!(cluster.setup(&cluster.extra()).1, 5);
    let role = redis::cmd("ROLE").get_packed_command();
    let mut views = redis::cmd("CLUSTER").arg("NODES").get_packed_command();
    views.extend(redis::cmd("CLUSTER").arg("INFO").get_packed_command());
    assert_eq!(cluster.heartbeat(), views);
    assert!(cluster.setup(&cluster.extra()).0.ends_with(&views));
    assert_eq!(sentinel.heartbeat(), role);
    let role = |r: &str| Value::Array(vec![Value::BulkString(r.as_bytes().to_vec())]);
    assert!(not_master(&role("slave")));
    assert!(!not_master(&role("master")));
    assert!(!not_master(&Value::SimpleString("PONG".to_owned())));
}

/// Review finding (#13, MEDIUM): the heartbeat goes every tick even while pushes keep
/// coming (a stream of invalidations must not keep `ROLE` from being asked).
#[cfg(unix)]
#[test]
fn the_heartbeat_is_sent_every_tick_whatever_was_heard() {
    use std::io::Write;
    let near = tracked();
    let ch = channel(settings(crate::CacheConfig::default()), &near);
    let (ours, mut server) = UnixStream::pair().unwrap();
    server.set_nonblocking(true).unwrap();
    let mut raw = Raw::new(Sock::Unix(ours));
    raw.dontwait = true;
    let fd = raw.watcher().unwrap();
    let mut ib = Inbox {
        links: vec![Link {
            stream: Stream::Plain(raw),
            parser: redis::Parser::new(),
            pinged: None,
            sent: Instant::now() - TICK,
            fd,
            view: None,
        }],
        namespace: "t:".to_owned(),
        cluster: false,
        broken: None,
    };
    let hb = [b"HB".to_vec()];
    let push = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nt:a\r\n";
    let sent = |server: &mut UnixStream| {
        let mut got = [0u8; 64];
        server.read(&mut got).map_or(0, |n| n)
    };
    // A push was just heard, and a tick passed since the last heartbeat: one goes.
    server.write_all(push).unwrap();
    assert!(ch.beat(&mut ib, &near, true, &hb).unwrap());
    assert_eq!(sent(&mut server), 2);
    assert!(ib.links[0].pinged.is_some());
    // Pushes heard within the tick: none.
    server.write_all(push).unwrap();
    assert!(ch.beat(&mut ib, &near, true, &hb).unwrap());
    assert_eq!(sent(&mut server), 0);
    assert!(ib.links[0].pinged.is_none(), "a push is a sign of life");
    // The next tick: again, though a push was heard just now.
    ib.links[0].sent = Instant::now() - TICK;
    server.write_all(push).unwrap();
    assert!(ch.beat(&mut ib, &near, true, &hb).unwrap());
    assert_eq!(sent(&mut server), 2);
}

/// Review finding (#13, HIGH): a live tracked near cache whose inbox is gone (the gap
/// before a teardown) bypasses: a hit due for catch-up suspends it and misses.
#[test]
fn a_hit_that_finds_no_inbox_bypasses_the_near_cache() {
    let near = tracked();
    near.resume();
    let Lookup::Miss(Some(t)) = near.lookup("k") else {
        panic!("expected a miss with a ticket");
    };
    near.fill(
        t,
        "k",
        &crate::item::Item::new(b"v".to_vec(), 0),
        crate::backend::Expiry::Unknown,
        false,
    );
    // Past the catch-up interval since the near cache was made: the next hit drains.
    std::thread::sleep(Duration::from_millis(3));
    assert!(matches!(near.lookup("k"), Lookup::Miss(_)));
    assert_eq!(near.counts().resets_lost, 1);
    assert!(matches!(near.lookup("k"), Lookup::Miss(None)));
}

/// A reader that hands out its chunks one per read, then would block.
struct Chunks(std::collections::VecDeque<Vec<u8>>);

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.pop_front() {
            Some(c) => {
                buf[..c.len()].copy_from_slice(&c);
                Ok(c.len())
            }
            None => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// The strict rule's drain reads without waiting: a push cut in two by the socket is kept
/// by the parser and completed by the next drain, and two pushes in one read are both
/// applied.
#[test]
fn a_drain_keeps_a_push_cut_in_two_for_the_next_one() {
    let push = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nn:a\r\n".to_vec();
    let mut parser = redis::Parser::new();
    let mut got = Vec::new();
    let mut first = Chunks([push[..20].to_vec()].into());
    read_all(&mut parser, &mut first, DRAIN_BUDGET, |v| {
        got.push(v);
        Ok(())
    })
    .unwrap();
    assert!(got.is_empty(), "half a push is not a value: {got:?}");
    let mut rest = push[20..].to_vec();
    rest.extend_from_slice(&push);
    rest.extend_from_slice(b"+PONG\r\n");
    let mut second = Chunks([rest].into());
    read_all(&mut parser, &mut second, DRAIN_BUDGET, |v| {
        got.push(v);
        Ok(())
    })
    .unwrap();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(matches!(
        &got[0],
        Value::Push {
            kind: PushKind::Invalidate,
            ..
        }
    ));
    assert_eq!(got[2], Value::SimpleString("PONG".to_owned()));
    // A closed socket is an error, not "nothing yet".
    let mut closed: &[u8] = b"";
    assert!(read_all(&mut parser, &mut closed, DRAIN_BUDGET, |_| Ok(())).is_err());
}

/// A drain applies at most its budget and says it is not complete; the next one goes on.
#[test]
fn a_drain_stops_at_its_budget_and_the_next_goes_on() {
    let pong = b"+PONG\r\n".repeat(5);
    let mut parser = redis::Parser::new();
    let mut reader = Chunks([pong].into());
    let mut n = 0;
    let done = read_all(&mut parser, &mut reader, 3, |_| {
        n += 1;
        Ok(())
    });
    assert_eq!((done, n), (Ok(false), 3));
    let done = read_all(&mut parser, &mut reader, 3, |_| {
        n += 1;
        Ok(())
    });
    assert_eq!((done, n), (Ok(true), 5));
}

/// On a Cluster, each link's `CLUSTER NODES` answer is kept by the drain (not parsed under
/// the inbox's lock) and compared by the thread: one that names the masters and slots the
/// session tracks, from a node that says it is a master, passes (whichever node answered); one
/// that differs (a slot moved, a master joined or failed) or comes from a node now a replica
/// ends the session with the cause `topology`, as does a `CLUSTER INFO` saying
/// `cluster_state:fail` (a master cut off from the majority).
#[test]
fn a_changed_cluster_topology_ends_the_session() {
    let near = tracked();
    let nodes = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-8191
b 127.0.0.1:7001@17001 master - 0 0 2 connected 8192-16383
";
    let t = parse_nodes(nodes, "127.0.0.1").unwrap();
    let verbatim = |text: &str| Value::VerbatimString {
        format: redis::VerbatimFormat::Text,
        text: text.to_owned(),
    };
    let mut view = None;
    assert_eq!(apply(&near, "t:", Some(&mut view), verbatim(nodes)), Ok(()));
    assert_eq!(view.as_deref(), Some(nodes), "kept, unparsed");
    let from_b = nodes.replace("myself,master", "master").replace(
        "b 127.0.0.1:7001@17001 master",
        "b 127.0.0.1:7001@17001 myself,master",
    );
    assert_eq!(
        check_views(&t, "127.0.0.1", &[nodes.to_owned(), from_b]),
        Ok(())
    );
    let moved = nodes
        .replace("0-8191", "0-8190")
        .replace("8192-16383", "8191-16383");
    let resp2 = Value::BulkString(moved.clone().into_bytes());
    assert_eq!(apply(&near, "t:", Some(&mut view), resp2), Ok(()));
    let err = check_views(&t, "127.0.0.1", &[nodes.to_owned(), view.take().unwrap()]);
    assert_eq!(err.unwrap_err().cause, Cause::Topology);
    // The same masters and slots, from a node that is a replica now (or was never a master).
    let replica = format!(
        "{}c 127.0.0.1:7002@17002 myself,slave a 0 0 1 connected\n",
        nodes.replace("myself,master", "master")
    );
    let err = check_views(&t, "127.0.0.1", &[replica]).unwrap_err();
    assert_eq!(err.cause, Cause::Topology);
    assert!(
        err.why.contains("no longer says it is a master"),
        "{}",
        err.why
    );
    // `CLUSTER INFO`: ok passes, fail ends the session.
    let info = |state: &str| {
        verbatim(&format!(
            "cluster_state:{state}\r\ncluster_slots_assigned:16384\r\n"
        ))
    };
    assert_eq!(apply(&near, "t:", Some(&mut view), info("ok")), Ok(()));
    assert_eq!(view, None);
    let err = apply(&near, "t:", Some(&mut view), info("fail")).unwrap_err();
    assert_eq!(err.cause, Cause::Topology);
    // Outside a Cluster a bulk string is nothing to compare.
    assert_eq!(
        apply(&near, "t:", None, Value::BulkString(b"x".to_vec())),
        Ok(())
    );
}
