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
pub(super) mod tests;
