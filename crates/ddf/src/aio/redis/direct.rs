//! The caller-driven connection: one plain TCP or unix socket connection to a standalone
//! server that the calling task drives itself (it writes its request and reads the reply in
//! its own poll), for `GET`, `SET` and `UNLINK` when no other task is using it.
//!
//! Why beside the multiplexed connection: there a request costs two task polls (the caller's
//! and the connection driver's, with a channel between them); at one task that was 0.79x the
//! sync face's latency. Here it costs one. Concurrent callers find this connection busy and
//! pipeline on the multiplexed connection as before, so the many-task throughput is the
//! multiplexed connection's.
//!
//! - **The sync hot path's protocol**: requests are encoded and replies parsed by
//!   [`crate::backend::redis::resp`] (as [`Bounded::hot`](crate::backend::redis::conn)), pure and
//!   bounded: no allocation from an announced length; the reply buffer grows with what the
//!   server sent. Error replies are classified by redis-rs there, and mapped by
//!   [`RedisBackend::map_err`](crate::backend::redis::RedisBackend::map_err) as every other error.
//! - **Bounds**: connecting (TCP or unix connect, `AUTH`, `SELECT`) within `connect_timeout`;
//!   each request (write and whole reply) within `timeout`.
//! - **Cancellation**: the connection is moved out of its slot for a request and put back only
//!   once the reply was read whole. A future dropped between the write and the end of the reply
//!   drops the connection with it (the slot is left empty; the next caller connects again), so
//!   a later request never reads an earlier one's reply.
//! - **Retry**: a reused connection found dead is replaced and the command sent once more only
//!   when that cannot run it twice: `GET` and `SET`, or a command not written whole. An
//!   `UNLINK` the server may have run is an error rather than a second `UNLINK` answering 0.
//!   An idle connection the server already closed is seen (a non-blocking read) before
//!   anything is sent, and replaced.
//! - **Runtimes**: a socket's reads are woken by the I/O driver of the runtime that opened it,
//!   so a connection is used only from that runtime; a caller on another one replaces it.
//! - **Sentinel**: the target is the master the Sentinels name, looked up at each connect
//!   ([`Follow`]); a connection from before the master moved (or may have: an error
//!   [`Follow::after_error`] reads so) is dropped unused, as one from another runtime.
//! - **Not here**: TLS (it stays on redis-rs's multiplexed connection), RESP3 (`HELLO 3`: our
//!   parser knows RESP2), Cluster.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::{ConnectionAddr, RedisError, RedisResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::sentinel::Follow;
use crate::backend::redis::resp::{self, Reply};

/// What a reply's buffer starts at; it is brought back to this after a larger reply.
const RBUF: usize = 4096;

/// The longest reply to `ROLE` read at set-up (a master lists its replicas: about 40 bytes
/// each).
const ROLE_MAX: usize = 64 * 1024;

/// Where and how to connect (from the async client's settings).
struct Target {
    addr: Addr,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl std::fmt::Debug for Target {
    /// Never the password: whether there is one only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("db", &self.db)
            .finish()
    }
}

/// Where connections go: one server, or the master a Sentinel group names at each connect.
enum Source {
    Fixed(Target),
    Sentinel(Arc<Follow>),
}

impl std::fmt::Debug for Source {
    /// The address only: never the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Fixed(t) => f.debug_tuple("Fixed").field(&t.addr).finish(),
            Source::Sentinel(s) => f.debug_tuple("Sentinel").field(s).finish(),
        }
    }
}

#[derive(Debug)]
enum Addr {
    Tcp(String, u16),
    #[cfg(unix)]
    Unix(PathBuf),
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

/// One open connection, in step (no request in flight) whenever it is in its slot.
struct Conn {
    stream: Stream,
    /// The runtime whose I/O driver wakes this socket's reads: only a task on that runtime
    /// uses it (elsewhere a read would wait on a driver nobody may be driving).
    runtime: tokio::runtime::Id,
    /// [`Follow::generation`] when it was opened (0 for a fixed target): an older one is not
    /// used again.
    generation: u64,
    /// Whether the last request was written whole (the server may have run it).
    sent: bool,
    /// The request being sent (kept: no allocation per call).
    req: Vec<u8>,
    /// The room replies are read into (kept; grows with what the server sent).
    rbuf: Vec<u8>,
}

enum Slot {
    /// Open and in step.
    Idle(Box<Conn>),
    /// A task is connecting or has a request in flight.
    Busy,
    /// None open (never yet, or the last one failed or was abandoned mid-request).
    Vacant,
}

/// The caller-driven connection of one async Redis backend (see the module's documentation).
pub(super) struct Direct {
    source: Option<Source>,
    slot: Mutex<Slot>,
    /// Bumped by [`Direct::close`]: a connection leased before is not put back after.
    generation: AtomicU64,
    timeout: Duration,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Puts the connection back when the request ended in step; leaves the slot empty otherwise,
/// the future's being dropped mid-request included.
struct Lease<'a> {
    of: &'a Direct,
    /// [`Direct::generation`] when the slot was taken.
    generation: u64,
    back: Option<Box<Conn>>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut slot = self.of.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let closed = self.of.generation.load(Ordering::SeqCst) != self.generation;
        *slot = match self.back.take() {
            Some(c) if !closed => Slot::Idle(c),
            _ => Slot::Vacant,
        };
    }
}

fn io_error(kind: std::io::ErrorKind, what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(kind, what))
}

impl Target {
    /// Where and how `client` connects; `None` for TLS and RESP3.
    fn of(client: &redis::Client) -> Option<Target> {
        let info = client.get_connection_info();
        let settings = info.redis_settings();
        let addr = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Some(Addr::Tcp(host.clone(), *port)),
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Some(Addr::Unix(path.clone())),
            _ => None,
        };
        addr.filter(|_| settings.protocol() != redis::ProtocolVersion::RESP3)
            .map(|addr| Target {
                addr,
                username: settings.username().map(str::to_owned),
                password: settings.password().map(str::to_owned),
                db: settings.db(),
            })
    }
}

impl Direct {
    /// The caller-driven connection for `client`'s target: unused (every call goes to the
    /// multiplexed connection) for TLS and RESP3.
    pub(super) fn new(
        client: &redis::Client,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Self {
        Self::with(
            Target::of(client).map(Source::Fixed),
            timeout,
            connect_timeout,
        )
    }

    /// The caller-driven connection to the master `follow` finds; the caller checks that the
    /// master is reached over plain RESP2 (else there is none: see [`Target::of`]).
    pub(super) fn following(
        follow: Arc<Follow>,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Self {
        Self::with(Some(Source::Sentinel(follow)), timeout, connect_timeout)
    }

    fn with(source: Option<Source>, timeout: Duration, connect_timeout: Duration) -> Self {
        Direct {
            source,
            slot: Mutex::new(Slot::Vacant),
            generation: AtomicU64::new(0),
            timeout,
            connect_timeout,
        }
    }

    /// The generation a connection must have to be used ([`Follow::generation`]; 0 for a
    /// fixed target).
    fn current(&self) -> u64 {
        match &self.source {
            Some(Source::Sentinel(f)) => f.generation(),
            _ => 0,
        }
    }

    /// Tells the Sentinel follower about an error (it may retire every connection).
    fn after_error(&self, e: &RedisError) {
        if let Some(Source::Sentinel(f)) = &self.source {
            f.after_error(e);
        }
    }

    /// Forgets the idle connection; a request in flight keeps its own and drops it after.
    pub(super) fn close(&self) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Slot::Idle(_) = *slot {
            *slot = Slot::Vacant;
        }
    }

    /// One hot command on the caller-driven connection: `None` when it is busy (or this target
    /// has none, or the caller is on no runtime): send the command on the multiplexed
    /// connection then. Connects first when none is open, or when the idle one belongs to
    /// another runtime or is already closed by the server (seen before anything is sent).
    /// A reused connection that turns out dead (the server restarted) is replaced and the
    /// command sent once more, as the sync pool retries a dead pooled connection once, but
    /// only when that cannot run it twice: the command is `idempotent` (`GET`, `SET`) or
    /// nothing of it was written whole. A timeout is never retried.
    pub(super) async fn hot<T>(
        &self,
        idempotent: bool,
        encode: impl Fn(&mut Vec<u8>),
        read: impl Fn(Reply<'_>) -> RedisResult<T>,
    ) -> Option<RedisResult<T>> {
        let source = self.source.as_ref()?;
        let runtime = tokio::runtime::Handle::try_current().ok()?.id();
        let (held, generation) = {
            let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
            let held = match std::mem::replace(&mut *slot, Slot::Busy) {
                Slot::Busy => return None,
                Slot::Idle(c) => Some(c),
                Slot::Vacant => None,
            };
            (held, self.generation.load(Ordering::SeqCst))
        };
        // Another runtime's socket, one to a master that may have moved, or one the server
        // closed while it idled: dropped unused.
        let current = self.current();
        let held = held.filter(|c| c.runtime == runtime && c.generation == current);
        let held = match held {
            // Closed by the server: it may have gone down (a failover), so the next connect
            // asks the Sentinels rather than trusting the master last found, which may be an
            // old master restarted and still claiming the role.
            Some(c) if c.closed() => {
                self.after_error(&io_error(
                    std::io::ErrorKind::ConnectionAborted,
                    "the server closed the idle connection",
                ));
                None
            }
            held => held,
        };
        let mut lease = Lease {
            of: self,
            generation,
            back: None,
        };
        let reused = held.is_some();
        let mut conn = match held {
            Some(c) => c,
            None => match self.open(source, runtime).await {
                Ok(c) => c,
                Err(e) => return Some(Err(self.noted(e))),
            },
        };
        let mut r = self.request(&mut conn, &encode, &read).await;
        if reused
            && (idempotent || !conn.sent)
            && let Err(e) = &r
            && is_dead(e)
        {
            tracing::debug!("redis connection was dead; reconnecting");
            self.after_error(e);
            drop(conn);
            conn = match self.open(source, runtime).await {
                Ok(c) => c,
                Err(e) => return Some(Err(self.noted(e))),
            };
            r = self.request(&mut conn, &encode, &read).await;
        }
        // Only a reply read whole puts the connection back.
        Some(
            r.and_then(|reply| {
                lease.back = Some(conn);
                reply
            })
            .map_err(|e| self.noted(e)),
        )
    }

    /// `e`, after telling the Sentinel follower about it.
    fn noted(&self, e: RedisError) -> RedisError {
        self.after_error(&e);
        e
    }

    /// Connects, authenticates and selects the database within `connect_timeout` (the
    /// Sentinel lookup included).
    async fn open(&self, source: &Source, runtime: tokio::runtime::Id) -> RedisResult<Box<Conn>> {
        let deadline = Instant::now() + self.connect_timeout;
        let setup = async {
            let found;
            let (t, generation, follow) = match source {
                Source::Fixed(t) => (t, 0, None),
                Source::Sentinel(f) => {
                    let (client, addr, generation) = f.locate(deadline).await?;
                    found = Target::of(&client).ok_or_else(|| {
                        RedisError::from((
                            redis::ErrorKind::Client,
                            "the master is reached over TLS or RESP3: not on this connection",
                        ))
                    })?;
                    (&found, generation, Some((f, addr)))
                }
            };
            let stream = match &t.addr {
                Addr::Tcp(host, port) => {
                    let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    s.set_nodelay(true)?;
                    Stream::Tcp(s)
                }
                #[cfg(unix)]
                Addr::Unix(path) => Stream::Unix(unix_connect(path).await?),
            };
            let mut c = Box::new(Conn {
                stream,
                runtime,
                generation,
                sent: false,
                req: Vec::new(),
                rbuf: Vec::new(),
            });
            let ok = |_: Reply<'_>| Ok(());
            if let Some(p) = &t.password {
                let mut args: Vec<&[u8]> = vec![b"AUTH"];
                if let Some(u) = &t.username {
                    args.push(u.as_bytes());
                }
                args.push(p.as_bytes());
                c.exchange(|b| resp::command(b, &args), ok).await??;
            }
            if t.db != 0 {
                let db = t.db.to_string();
                c.exchange(|b| resp::command(b, &[b"SELECT", db.as_bytes()]), ok)
                    .await??;
            }
            // `ROLE` on this connection (the lookup's was on another one): a master demoted
            // since is not used, and neither is a connection retired while opening.
            if let Some((f, addr)) = follow {
                let role = c.role().await?;
                f.verify(&role, &addr, generation)?;
            }
            Ok::<_, RedisError>(c)
        };
        match tokio::time::timeout_at(deadline, setup).await {
            Ok(r) => r,
            // `TimedOut`: the error mapping calls it a connect timeout.
            Err(_) => Err(io_error(
                std::io::ErrorKind::TimedOut,
                "connecting (set-up included) took longer than connect_timeout",
            )),
        }
    }

    /// One request within `timeout`. The outer error: the connection is out of step (or
    /// timed out) and is dropped; the inner one is the reply's.
    async fn request<T>(
        &self,
        c: &mut Conn,
        encode: impl FnOnce(&mut Vec<u8>),
        read: impl Fn(Reply<'_>) -> RedisResult<T>,
    ) -> RedisResult<RedisResult<T>> {
        match tokio::time::timeout(self.timeout, c.exchange(encode, read)).await {
            Ok(r) => r,
            // `WouldBlock`, as a socket read timeout: the mapping calls it a reply timeout.
            Err(_) => Err(io_error(
                std::io::ErrorKind::WouldBlock,
                "the reply took longer than timeout",
            )),
        }
    }
}

/// Whether an error means the connection is unusable (dropped, reset, refused).
fn is_dead(e: &RedisError) -> bool {
    !e.is_timeout() && (e.is_io_error() || e.is_connection_dropped())
}

/// Connects to a unix socket. A listener whose backlog is full refuses at once with `EAGAIN`
/// (`WouldBlock`, which the error mapping would call a reply timeout): that is waited out here,
/// polling, until the caller's `connect_timeout` ends the wait as a connect timeout.
#[cfg(unix)]
async fn unix_connect(path: &std::path::Path) -> std::io::Result<tokio::net::UnixStream> {
    let mut pause = Duration::from_millis(1);
    loop {
        match tokio::net::UnixStream::connect(path).await {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

impl Conn {
    /// Whether the server closed this idle connection (or sent something unasked: out of
    /// step), as far as is known without waiting.
    fn closed(&self) -> bool {
        let mut one = [0u8; 1];
        let r = match &self.stream {
            Stream::Tcp(s) => s.try_read(&mut one),
            #[cfg(unix)]
            Stream::Unix(s) => s.try_read(&mut one),
        };
        !matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Sends `ROLE` and reads its reply (an array, which the hot replies' parser refuses) with
    /// redis-rs's parser; at most [`ROLE_MAX`] bytes are read (unbounded in time: the caller
    /// bounds it).
    async fn role(&mut self) -> RedisResult<redis::Role> {
        let mut req = Vec::new();
        resp::command(&mut req, &[b"ROLE"]);
        match &mut self.stream {
            Stream::Tcp(s) => s.write_all(&req).await?,
            #[cfg(unix)]
            Stream::Unix(s) => s.write_all(&req).await?,
        }
        let mut buf = vec![0u8; 512];
        let mut filled = 0;
        loop {
            if filled == buf.len() {
                if buf.len() >= ROLE_MAX {
                    return Err(RedisError::from((
                        redis::ErrorKind::Parse,
                        "RESP2",
                        format!("a reply to ROLE longer than {ROLE_MAX} bytes"),
                    )));
                }
                buf.resize((buf.len() * 2).min(ROLE_MAX), 0);
            }
            let n = match &mut self.stream {
                Stream::Tcp(s) => s.read(&mut buf[filled..]).await,
                #[cfg(unix)]
                Stream::Unix(s) => s.read(&mut buf[filled..]).await,
            };
            match n {
                Ok(0) => return Err(io_error(std::io::ErrorKind::UnexpectedEof, "closed")),
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            match redis::parse_redis_value(&buf[..filled]) {
                // Not whole yet.
                Err(e) if e.kind() == redis::ErrorKind::Io => {}
                Err(e) => return Err(e),
                Ok(redis::Value::ServerError(e)) => return Err(e.into()),
                Ok(v) => return Ok(redis::from_redis_value(v)?),
            }
        }
    }

    /// Sends one request and reads its reply whole (unbounded in time: the caller bounds it).
    async fn exchange<T>(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>),
        read: impl Fn(Reply<'_>) -> RedisResult<T>,
    ) -> RedisResult<RedisResult<T>> {
        self.sent = false;
        let mut req = std::mem::take(&mut self.req);
        req.clear();
        encode(&mut req);
        let sent = match &mut self.stream {
            Stream::Tcp(s) => s.write_all(&req).await,
            #[cfg(unix)]
            Stream::Unix(s) => s.write_all(&req).await,
        };
        if req.capacity() <= 16 * RBUF {
            self.req = req;
        }
        sent?;
        self.sent = true;
        // `buf`'s length is its zeroed room, kept between calls; `filled` what was received.
        // It grows with what the server sent (at most doubling it), never with an announced
        // length.
        let mut buf = std::mem::take(&mut self.rbuf);
        if buf.len() < RBUF {
            buf.resize(RBUF, 0);
        }
        let mut filled = 0;
        let r = loop {
            let n = match &mut self.stream {
                Stream::Tcp(s) => s.read(&mut buf[filled..]).await,
                #[cfg(unix)]
                Stream::Unix(s) => s.read(&mut buf[filled..]).await,
            };
            match n {
                Ok(0) => {
                    break Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e.into()),
            }
            match resp::whole(&buf[..filled], &read) {
                Ok(Some(reply)) => break Ok(reply),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            if filled == buf.len() {
                buf.resize(filled.saturating_mul(2), 0);
            }
        };
        // A large reply's room is not kept while the connection idles.
        if buf.len() > 16 * RBUF {
            buf = Vec::new();
        }
        self.rbuf = buf;
        r
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use ddf_testkit::RedisServer;
    use std::future::Future;
    use std::task::{Context, Waker};

    fn direct(server: &RedisServer) -> Direct {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", server.port())).unwrap();
        let t = Duration::from_secs(5);
        Direct::new(&client, t, t)
    }

    async fn get(d: &Direct, key: &str) -> Option<Vec<u8>> {
        d.hot(true, |b| resp::get(b, key.as_bytes()), resp::bulk)
            .await
            .expect("free")
            .unwrap()
    }

    async fn set(d: &Direct, key: &str, v: &[u8]) {
        d.hot(true, |b| resp::set(b, key.as_bytes(), v, None), |_| Ok(()))
            .await
            .expect("free")
            .unwrap();
    }

    fn vacant(d: &Direct) -> bool {
        matches!(*d.slot.lock().unwrap(), Slot::Vacant)
    }

    /// A `GET` dropped after its request was written (its reply still on the way) leaves no
    /// connection behind: the next call opens a new one and reads its own reply. The planted
    /// violation (the same connection put back in flight) makes that next call read the
    /// dropped call's reply (or fail as out of step): the check would catch it.
    #[tokio::test]
    async fn a_request_dropped_before_its_reply_discards_the_connection() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let d = direct(&server);
        set(&d, "one", b"1").await;
        set(&d, "two", b"2").await;
        // Poll once: the request is written and the reply not read yet (retried in the rare
        // case the reply was already there on that first poll).
        let mut cut = false;
        for _ in 0..100 {
            let mut f = Box::pin(get(&d, "one"));
            let pending = f
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_pending();
            drop(f);
            if pending {
                cut = true;
                break;
            }
        }
        assert!(cut, "no poll left a request in flight");
        assert!(vacant(&d), "a connection dropped mid-request is never kept");
        assert_eq!(get(&d, "two").await.as_deref(), Some(&b"2"[..]));
        assert!(!vacant(&d));

        // Planted: a request written and the connection put back without its reply read.
        let Slot::Idle(mut c) = std::mem::replace(&mut *d.slot.lock().unwrap(), Slot::Busy) else {
            panic!("idle after a whole reply");
        };
        let mut req = Vec::new();
        resp::get(&mut req, b"one");
        match &mut c.stream {
            Stream::Tcp(s) => s.write_all(&req).await.unwrap(),
            #[cfg(unix)]
            Stream::Unix(_) => unreachable!(),
        }
        *d.slot.lock().unwrap() = Slot::Idle(c);
        // The next call reads the dropped call's reply ("1"), or both replies at once (then
        // the parser's "out of step" error); never its own.
        let r = d
            .hot(true, |b| resp::get(b, b"two"), resp::bulk)
            .await
            .expect("free");
        assert!(
            !matches!(&r, Ok(Some(v)) if v == b"2"),
            "the planted violation must be visible: {r:?}"
        );
    }

    /// `close` during a request: the connection is not put back after it.
    #[tokio::test]
    async fn closed_during_a_request_is_not_put_back() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let d = direct(&server);
        set(&d, "k", b"v").await;
        let mut f = Box::pin(get(&d, "k"));
        let first = f.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        d.close();
        if first.is_pending() {
            assert_eq!(f.await.as_deref(), Some(&b"v"[..]));
        } else {
            drop(f);
        }
        // Planted: the same ending without `close` keeps the connection.
        assert!(vacant(&d), "closed: not kept");
        set(&d, "k", b"v").await;
        assert!(!vacant(&d));
    }

    /// A busy connection sends the caller to the multiplexed one; a dead idle one is replaced
    /// (once) without the caller seeing an error.
    #[tokio::test]
    async fn busy_means_none_and_a_dead_idle_connection_is_replaced() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let d = direct(&server);
        set(&d, "k", b"v").await;
        let held = std::mem::replace(&mut *d.slot.lock().unwrap(), Slot::Busy);
        assert!(
            d.hot(true, |b| resp::get(b, b"k"), resp::bulk)
                .await
                .is_none(),
            "busy: none"
        );
        *d.slot.lock().unwrap() = held;
        ddf_testkit::redis_cli(server.port(), &["CLIENT", "KILL", "TYPE", "normal"]);
        assert_eq!(get(&d, "k").await.as_deref(), Some(&b"v"[..]));
    }

    /// `AUTH` and `SELECT` at set-up, over TCP and over a unix socket; a wrong password is the
    /// server's error reply.
    #[cfg(unix)]
    #[tokio::test]
    async fn password_and_db_over_tcp_and_unix() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("r.sock");
        let Some(server) = RedisServer::start_with(&[
            "--requirepass",
            "pw",
            "--unixsocket",
            sock.to_str().unwrap(),
        ]) else {
            return;
        };
        let t = Duration::from_secs(5);
        let at = |url: String| Direct::new(&redis::Client::open(url).unwrap(), t, t);
        let tcp = at(format!("redis://:pw@127.0.0.1:{}/3", server.port()));
        set(&tcp, "k", b"v").await;
        let unix = at(format!("unix://{}?db=3&pass=pw", sock.display()));
        assert_eq!(get(&unix, "k").await.as_deref(), Some(&b"v"[..]));
        let out = ddf_testkit::redis_cli(
            server.port(),
            &["--no-auth-warning", "-a", "pw", "-n", "3", "GET", "k"],
        );
        assert_eq!(out.trim(), "v");
        let wrong = at(format!("redis://:nope@127.0.0.1:{}/3", server.port()));
        let e = wrong
            .hot(true, |b| resp::get(b, b"k"), resp::bulk)
            .await
            .expect("free")
            .unwrap_err();
        // As the sync face's set-up reads it (`conn.rs`): the server's error, not temporary.
        assert_eq!(e.code(), Some("WRONGPASS"), "{e}");
        assert!(!e.is_timeout() && !e.is_io_error(), "{e}");
        assert!(vacant(&wrong));
    }

    /// `ROLE` on the connection a Sentinel target then uses (what refuses a master demoted
    /// after the lookup): read whole on this connection, which stays in step; a real replica
    /// is refused as a moved master, a master let through (the sync face's decision).
    #[tokio::test]
    async fn role_is_read_on_the_connection_and_a_replica_refused() {
        use crate::backend::redis::RedisBackend;
        use crate::backend::redis::sentinel::master_may_have_moved;
        let Some(master) = RedisServer::start() else {
            return;
        };
        let port = master.port().to_string();
        let Some(replica) = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]) else {
            return;
        };
        let cfg = crate::CacheConfig::default()
            .with_backend(crate::CacheBackend::Redis)
            .with_redis_sentinels(
                vec![crate::config::ServerAddr::parse("127.0.0.1:1", 26379).unwrap()],
                "m",
            );
        let core = RedisBackend::new(&cfg.redis_settings().unwrap()).unwrap();
        let sentinels = core.sentinels().unwrap();
        for (server, is_master) in [(&master, true), (&replica, false)] {
            let d = direct(server);
            assert_eq!(get(&d, "k").await, None);
            let Slot::Idle(mut c) = std::mem::replace(&mut *d.slot.lock().unwrap(), Slot::Busy)
            else {
                panic!("an idle connection");
            };
            let role = c.role().await.unwrap();
            let r = sentinels.must_be_master(&role, "here");
            assert_eq!(r.is_ok(), is_master, "{role:?}: {r:?}");
            if let Err(e) = r {
                assert!(master_may_have_moved(&e), "{e}");
                assert!(e.to_string().contains("here is not a master"), "{e}");
            }
            let after = d.request(&mut c, |b| resp::get(b, b"k"), resp::bulk).await;
            assert_eq!(after.unwrap().unwrap(), None, "in step after ROLE");
        }
    }

    /// A proxy on a free loopback port: its first connection goes to `first`, every later
    /// one to `then` (a master demoted between the lookup's check and the connection used).
    pub(crate) fn switching_proxy(first: u16, then: u16) -> u16 {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for (n, client) in listener.incoming().enumerate() {
                let Ok(client) = client else { return };
                let to = if n == 0 { first } else { then };
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    return;
                };
                let pipe = |mut a: TcpStream, mut b: TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut a, &mut b);
                        let _ = b.shutdown(std::net::Shutdown::Both);
                    });
                };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        port
    }

    /// A fake Sentinel naming `port` on loopback, a sync backend following it, and how many
    /// times the fake was asked.
    pub(crate) fn naming(
        port: u16,
    ) -> (
        ddf_testkit::FakeServer,
        Arc<crate::backend::redis::RedisBackend>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let at = port.to_string();
        let named = format!("*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{at}\r\n", at.len()).into_bytes();
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = asked.clone();
        let sentinel = ddf_testkit::FakeServer::start(move |line: &[u8]| match line {
            b"get-master-addr-by-name" => {
                counted.fetch_add(1, Ordering::SeqCst);
                ddf_testkit::FakeReply::Send(named.clone())
            }
            _ => ddf_testkit::FakeReply::Nothing,
        });
        let cfg = crate::CacheConfig::default()
            .with_backend(crate::CacheBackend::Redis)
            .with_redis_sentinels(
                vec![crate::config::ServerAddr::parse(&sentinel.server(), 26379).unwrap()],
                "m",
            );
        let core = crate::backend::redis::RedisBackend::new(&cfg.redis_settings().unwrap());
        (sentinel, Arc::new(core.unwrap()), asked)
    }

    /// The reviewer's case: the lookup checks a master with `ROLE` on its own connection, and
    /// the connection then used reaches a replica (here: a proxy that sends the second
    /// connection elsewhere). It is refused as a moved master, not read from; without the
    /// check on the connection used, the `GET` would answer from the replica.
    #[tokio::test]
    async fn a_connection_reaching_a_replica_after_the_lookup_is_refused() {
        use crate::backend::redis::sentinel::master_may_have_moved;
        let Some(master) = RedisServer::start() else {
            return;
        };
        let port = master.port().to_string();
        let Some(replica) = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]) else {
            return;
        };
        let (_sentinel, core, _) = naming(switching_proxy(master.port(), replica.port()));
        let follow = Arc::new(Follow::new(&core).unwrap());
        let t = Duration::from_secs(5);
        let d = Direct::following(follow, t, t);
        let e = d
            .hot(true, |b| resp::get(b, b"k"), resp::bulk)
            .await
            .expect("free")
            .unwrap_err();
        assert!(master_may_have_moved(&e), "{e}");
        assert!(e.to_string().contains("is not a master"), "{e}");
        assert!(vacant(&d));
    }

    /// An idle connection the server closed (it may have gone down in a failover) makes the
    /// next connect ask the Sentinels rather than reuse the master last found, which may be an
    /// old master restarted and still claiming the role. Without that, the fake Sentinel
    /// would be asked once, not twice.
    #[tokio::test]
    async fn a_closed_idle_connection_makes_the_next_connect_ask_the_sentinels() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let (_sentinel, core, asked) = naming(server.port());
        let follow = Arc::new(Follow::new(&core).unwrap());
        let t = Duration::from_secs(5);
        let d = Direct::following(follow, t, t);
        assert_eq!(get(&d, "k").await, None);
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        ddf_testkit::redis_cli(server.port(), &["CLIENT", "KILL", "TYPE", "normal"]);
        // Until the close has reached this side (no timing asserted: it is waited for).
        for _ in 0..500 {
            if let Slot::Idle(c) = &*d.slot.lock().unwrap()
                && c.closed()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(get(&d, "k").await, None);
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }

    /// A target's `Debug` (a Sentinel's master is one too, once found) shows no password.
    #[test]
    fn a_target_shows_no_password() {
        let client = redis::Client::open("redis://u:s3cret@127.0.0.1:1/2").unwrap();
        let text = format!("{:?}", Target::of(&client).unwrap());
        assert!(
            text.contains("127.0.0.1") && text.contains("<hidden>"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
    }

    /// A connection left idle by a runtime that has ended (the global cache used from one
    /// test's runtime, then another's) is replaced, not an error.
    #[test]
    fn a_connection_outliving_its_runtime_is_replaced() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let d = direct(&server);
        let rt = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        rt().block_on(set(&d, "k", b"v"));
        assert!(!vacant(&d));
        assert_eq!(rt().block_on(get(&d, "k")).as_deref(), Some(&b"v"[..]));
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// An `UNLINK` the server ran, whose reply then never comes (here: the socket's runtime
    /// ends while the reply is awaited, an I/O error that is not a dropped connection), is an
    /// error, not sent again: a second `UNLINK` would answer 0 for a key the first deleted.
    /// The socket is planted as the caller's runtime's to get past the runtime check.
    #[test]
    fn an_unlink_that_was_sent_is_not_sent_again() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let d = std::sync::Arc::new(direct(&server));
        let a = runtime();
        a.block_on(set(&d, "k", b"v"));
        let d2 = d.clone();
        let t = std::thread::spawn(move || {
            runtime().block_on(async {
                if let Slot::Idle(c) = &mut *d2.slot.lock().unwrap() {
                    c.runtime = tokio::runtime::Handle::current().id();
                }
                d2.hot(false, |b| resp::unlink(b, b"k"), resp::int_reply)
                    .await
                    .expect("free")
            })
        });
        // The UNLINK ran; its reply waits on runtime `a`'s driver, which nobody drives.
        let mut deleted = false;
        for _ in 0..500 {
            if ddf_testkit::redis_cli(server.port(), &["EXISTS", "k"]).trim() == "0" {
                deleted = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(deleted, "the UNLINK reached the server");
        drop(a);
        let r = t.join().unwrap();
        assert!(!matches!(r, Ok(0)), "sent twice: {r:?}");
        assert!(vacant(&d));
    }

    /// A connection opened on one runtime is not used from another (its reads would wait on
    /// the first runtime's driver, idle here): the second opens its own.
    #[test]
    fn another_runtime_opens_its_own_connection() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let d = std::sync::Arc::new(direct(&server));
        let a = runtime();
        a.block_on(set(&d, "k", b"v"));
        let d2 = d.clone();
        let (r, b) = std::thread::spawn(move || {
            let rt = runtime();
            (rt.block_on(get(&d2, "k")), rt.handle().id())
        })
        .join()
        .unwrap();
        assert_eq!(r.as_deref(), Some(&b"v"[..]));
        assert!(matches!(&*d.slot.lock().unwrap(), Slot::Idle(c) if c.runtime == b));
        drop(a);
    }

    /// A unix listener whose backlog is full refuses with `EAGAIN`: waited out until
    /// `connect_timeout`, then a connect timeout (not a reply timeout).
    #[cfg(unix)]
    #[tokio::test]
    async fn a_full_unix_backlog_is_a_connect_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut queued = Vec::new();
        for _ in 0..10_000 {
            match tokio::net::UnixStream::connect(&path).await {
                Ok(s) => queued.push(s),
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
                    break;
                }
            }
        }
        let client = redis::Client::open(format!("unix://{}", path.display())).unwrap();
        let t = Duration::from_millis(200);
        let d = Direct::new(&client, t, t);
        let e = d
            .hot(true, |b| resp::get(b, b"k"), resp::bulk)
            .await
            .expect("free")
            .unwrap_err();
        // A connect timeout, as `conn/dial.rs` reports one (redis-rs keeps the I/O error
        // behind an `Arc<dyn Error>`).
        let kind = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>())
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .map(std::io::Error::kind);
        assert_eq!(kind, Some(std::io::ErrorKind::TimedOut), "{e}");
    }
}
