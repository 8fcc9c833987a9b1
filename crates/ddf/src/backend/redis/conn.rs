//! One connection to one Redis server whose waits the configuration bounds.
//!
//! Written here rather than left to redis-rs 1.8 because of the waits it multiplies:
//! - its pipelines read every reply even after one timed out, so a pipeline of `n` commands on
//!   a stopped server waits `n` timeouts (`set_many` of 20 items: 10 s with `timeout = 0.5`).
//!   [`Bounded`] stops reading at the first failed reply and refuses every later request: the
//!   caller drops it.
//! - its connection set-up reads each reply (`AUTH`, `SELECT`, `CLIENT SETINFO` twice) with
//!   what is left of the connect timeout, so the set-up can take several connect timeouts.
//!   [`Bounded::open`] has redis-rs skip `CLIENT SETINFO` (the client is built so) and sends
//!   `SELECT` itself, so redis-rs reads at most one set-up reply (`AUTH` or `HELLO`) and
//!   `SELECT` gets what is left of the same deadline.
//! - its timeout is per socket read: a server that sends a reply one byte at a time, each
//!   within the timeout, keeps one call waiting for as long as it likes. A plain TCP or unix
//!   socket connection ([`Own`]) is therefore ours: we connect, authenticate (`AUTH`, or
//!   `HELLO 3` for RESP3) and write the requests, and redis-rs's own RESP parser reads the
//!   replies through a reader that gives each socket read only what is left of the request's
//!   deadline, so that a request (one command or one pipeline) ends within `timeout` whatever
//!   the server does. A TLS connection is ours too ([`tls`]: rustls over a socket bounded the
//!   same way), and so is a connection to a Sentinel or to the master it names.
//! - its connect does not bound the host name's lookup, nor a unix socket's connect (which
//!   blocks on a full backlog): [`dial`] bounds both by the same `connect_timeout`.

use std::io::{Read, Write};
use std::net::TcpStream;
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionLike, RedisError, RedisResult, Value};

use crate::backend::dial;
#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "tls")]
pub(crate) use tls::TlsConfig;

/// Without feature `tls` there is no TLS configuration (a TLS target is refused by the
/// settings).
#[cfg(not(feature = "tls"))]
pub(super) enum TlsConfig {}

use super::resp::{self, Reply};

/// A connection that fails fast once one of its replies failed (timeout, I/O error, a reply
/// that is not RESP): later requests are refused without touching the socket.
pub(super) struct Bounded {
    /// Our socket and redis-rs's parser: every socket read gets what is left of the deadline.
    io: Own,
    /// The database selected (redis-rs's connection believes it is 0).
    db: i64,
    /// What one request (a command or a pipeline) may take, set-up excepted.
    timeout: Duration,
    /// When the request being made must be over.
    deadline: Instant,
    /// Set by the first failed read or write; the connection is then out of step.
    broken: bool,
}

/// The error of a request on a connection that already failed.
fn abandoned() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the connection was abandoned after an earlier reply failed",
    ))
}

fn timed_out(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

/// What is left until `deadline`, or a timeout error when nothing is.
fn left(deadline: Instant) -> RedisResult<Duration> {
    rest(
        deadline,
        "the connection set-up took longer than connect_timeout",
    )
    .map_err(Into::into)
}

fn rest(deadline: Instant, what: &'static str) -> std::io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| timed_out(what))
}

const REQUEST_TOOK_TOO_LONG: &str = "the reply took longer than timeout";

/// A socket of ours.
enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
    /// TLS: bounded beneath rustls, by the deadline each read and write is given.
    #[cfg(feature = "tls")]
    Tls(Box<tls::TlsStream>),
}

impl Stream {
    fn set_read_timeout(&self, d: Duration) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(d)),
            #[cfg(unix)]
            Stream::Unix(s) => s.set_read_timeout(Some(d)),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => Ok(()),
        }
    }

    fn set_write_timeout(&self, d: Duration) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(Some(d)),
            #[cfg(unix)]
            Stream::Unix(s) => s.set_write_timeout(Some(d)),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => Ok(()),
        }
    }
}

/// Our end of a plain connection: the socket, the timeouts it carries now, and redis-rs's
/// parser (which keeps what it read beyond one reply for the next), beside the buffers of the
/// hot commands ([`Bounded::hot`]).
struct Own {
    stream: Stream,
    parser: redis::Parser,
    /// The socket's read and write timeouts as last set.
    read_to: Duration,
    write_to: Duration,
    /// Whether the connection speaks RESP2 (the hot path's parser knows RESP2 only).
    resp2: bool,
    /// The request of a hot command (kept: no allocation per call).
    req: Vec<u8>,
    /// The room a hot command's reply is read into (kept: no allocation per call; it grows
    /// with what the server sent, never with a length it announced).
    rbuf: Vec<u8>,
}

/// What a hot reply's buffer starts at, and what it is brought back to after a larger reply.
const RBUF: usize = 4096;

/// A socket timeout is shortened only when it is this much longer than what is left: the
/// first read of a request (the usual only one) costs no system call, and a request still
/// ends within its deadline plus this.
const SLACK: Duration = Duration::from_millis(1);

impl Own {
    /// Connects to a TCP, TLS (with `tls`) or unix address before `deadline`.
    fn connect(
        addr: &ConnectionAddr,
        tls: Option<&TlsConfig>,
        deadline: Instant,
    ) -> RedisResult<Own> {
        let stream = match (addr, tls) {
            (ConnectionAddr::Tcp(host, port), _) => Stream::Tcp(Self::tcp(host, *port, deadline)?),
            #[cfg(feature = "tls")]
            (ConnectionAddr::TcpTls { host, port, .. }, Some(tls)) => {
                let tcp = Self::tcp(host, *port, deadline)?;
                Stream::Tls(Box::new(tls::TlsStream::handshake(
                    tls, host, tcp, deadline,
                )?))
            }
            #[cfg(unix)]
            (ConnectionAddr::Unix(path), _) => Stream::Unix(dial::unix(path, deadline)?),
            _ => {
                return Err(RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "unsupported address",
                    format!("{addr} needs TLS settings (this build or target has none)"),
                )));
            }
        };
        Ok(Own {
            stream,
            parser: redis::Parser::new(),
            read_to: Duration::ZERO,
            write_to: Duration::ZERO,
            resp2: true,
            req: Vec::new(),
            rbuf: Vec::new(),
        })
    }

    fn tcp(host: &str, port: u16, deadline: Instant) -> RedisResult<TcpStream> {
        let mut last = None;
        for a in dial::resolve(host, port, deadline)? {
            match TcpStream::connect_timeout(&a, left(deadline)?) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the host name resolved to no address",
                )
            })
            .into())
    }

    /// Writes `bytes`, each write waiting at most what is left until `deadline`.
    fn send(&mut self, mut bytes: &[u8], deadline: Instant) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let rest = rest(deadline, REQUEST_TOOK_TOO_LONG)?;
            if self.write_to > rest + SLACK || self.write_to.is_zero() {
                self.stream.set_write_timeout(rest)?;
                self.write_to = rest;
            }
            let n = match &mut self.stream {
                Stream::Tcp(s) => s.write(bytes),
                #[cfg(unix)]
                Stream::Unix(s) => s.write(bytes),
                // All of it, flushed, each socket write within the deadline.
                #[cfg(feature = "tls")]
                Stream::Tls(s) => s.send_until(bytes, deadline).map(|()| bytes.len()),
            };
            match n {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads one reply before `deadline`.
    fn recv(&mut self, deadline: Instant) -> RedisResult<Value> {
        let mut until = Until {
            stream: &mut self.stream,
            read_to: &mut self.read_to,
            deadline,
        };
        self.parser.parse_value(&mut until)
    }

    /// Reads one reply of a hot command before `deadline` with our RESP2 parser. The outer
    /// error is the connection's (I/O, timeout, bytes that are not RESP2, or bytes after the
    /// reply, which RESP2 never sends unasked): it is out of step. The inner result is the
    /// reply's: `read`'s, or an error reply as redis-rs classifies it (the connection is fine).
    fn recv_hot<T>(
        &mut self,
        deadline: Instant,
        read: impl Fn(Reply<'_>) -> RedisResult<T>,
    ) -> RedisResult<RedisResult<T>> {
        // `buf`'s length is its zeroed room, kept between calls; `filled` what was received.
        // It grows with what the server sent (at most doubling it), never with an announced
        // length, and is brought back to `RBUF` after a large reply.
        let mut buf = std::mem::take(&mut self.rbuf);
        if buf.len() < RBUF {
            buf.resize(RBUF, 0);
        }
        let mut filled = 0;
        let r = loop {
            match resp::whole(&buf[..filled], &read) {
                Err(e) => break Err(e),
                Ok(Some(reply)) => break Ok(reply),
                Ok(None) => {}
            }
            if filled == buf.len() {
                buf.resize(filled.saturating_mul(2), 0);
            }
            let mut until = Until {
                stream: &mut self.stream,
                read_to: &mut self.read_to,
                deadline,
            };
            match until.read(&mut buf[filled..]) {
                Ok(0) => {
                    break Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e.into()),
            }
        };
        // A large reply's room is not kept while the connection idles in the pool.
        if buf.len() > 16 * RBUF {
            buf = Vec::new();
        }
        self.rbuf = buf;
        r
    }

    /// Starts a request of at most `timeout`: a socket timeout the previous request shortened
    /// is set back (so that the first read of this one needs no system call).
    fn start(&mut self, timeout: Duration) -> std::io::Result<()> {
        if self.read_to != timeout {
            self.stream.set_read_timeout(timeout)?;
            self.read_to = timeout;
        }
        if self.write_to != timeout {
            self.stream.set_write_timeout(timeout)?;
            self.write_to = timeout;
        }
        Ok(())
    }
}

/// The reader the parser reads a reply through: each socket read waits at most what is left
/// of the request's deadline.
struct Until<'a> {
    stream: &'a mut Stream,
    read_to: &'a mut Duration,
    deadline: Instant,
}

impl Read for Until<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = rest(self.deadline, REQUEST_TOOK_TOO_LONG)?;
        if *self.read_to > rest + SLACK || self.read_to.is_zero() {
            self.stream.set_read_timeout(rest)?;
            *self.read_to = rest;
        }
        match self.stream {
            Stream::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read_until(buf, self.deadline),
        }
    }
}

impl Bounded {
    /// Connects with `client` (built with database 0 and without `CLIENT SETINFO`; over TLS
    /// with `tls`), authenticates and selects `db`, all within `connect_timeout`; then every
    /// request waits at most `timeout`.
    pub(super) fn open(
        client: &redis::Client,
        tls: Option<&TlsConfig>,
        db: i64,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> RedisResult<Self> {
        let deadline = Instant::now() + connect_timeout;
        let info = client.get_connection_info();
        let mut c = Bounded {
            io: Own::connect(info.addr(), tls, deadline)?,
            db,
            timeout: connect_timeout,
            deadline,
            broken: false,
        };
        // The hot path's parser knows RESP2 only.
        c.io.resp2 = info.redis_settings().protocol() != redis::ProtocolVersion::RESP3;
        c.authenticate(info.redis_settings(), deadline)?;
        c.select(deadline)?;
        c.timeout = timeout;
        Ok(c)
    }

    /// Makes every later request wait at most `timeout`.
    pub(super) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// `AUTH` (RESP2 with a password) or `HELLO 3` (RESP3), before `deadline`.
    fn authenticate(
        &mut self,
        settings: &redis::RedisConnectionInfo,
        deadline: Instant,
    ) -> RedisResult<()> {
        let cmd = if settings.protocol() == redis::ProtocolVersion::RESP3 {
            let mut hello = redis::cmd("HELLO");
            hello.arg(3);
            if let Some(p) = settings.password() {
                hello
                    .arg("AUTH")
                    .arg(settings.username().unwrap_or("default"))
                    .arg(p);
            }
            hello
        } else if let Some(p) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(u) = settings.username() {
                auth.arg(u);
            }
            auth.arg(p);
            auth
        } else {
            return Ok(());
        };
        self.timeout = left(deadline)?;
        match self.req_packed_command(&cmd.get_packed_command())? {
            Value::ServerError(e) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// `SELECT db` (when not 0) with what is left of `deadline`.
    fn select(&mut self, deadline: Instant) -> RedisResult<()> {
        if self.db == 0 {
            return Ok(());
        }
        let rest = left(deadline)?;
        let timeout = std::mem::replace(&mut self.timeout, rest);
        let r = redis::cmd("SELECT").arg(self.db).exec(self);
        self.timeout = timeout;
        r
    }

    /// One hot command on a connection speaking RESP2 (plain, unix or TLS): `encode` appends
    /// its request ([`resp`]), and its reply, read by our parser within the request's deadline,
    /// is given to `read`. `None` when the connection speaks RESP3: the caller sends the command
    /// through redis-rs's parser then. The same bytes go out either way, and the same bound
    /// holds (each socket read waits at most what is left).
    pub(super) fn hot<T>(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>),
        read: impl Fn(Reply<'_>) -> RedisResult<T>,
    ) -> Option<RedisResult<T>> {
        let o = &mut self.io;
        if !o.resp2 {
            return None;
        }
        if self.broken {
            return Some(Err(abandoned()));
        }
        let mut req = std::mem::take(&mut o.req);
        req.clear();
        encode(&mut req);
        self.deadline = Instant::now() + self.timeout;
        let deadline = self.deadline;
        let r = o
            .start(self.timeout)
            .and_then(|()| o.send(&req, deadline))
            .map_err(RedisError::from)
            .and_then(|()| o.recv_hot(deadline, read));
        if req.capacity() <= 16 * RBUF {
            o.req = req;
        }
        // A failed connection is out of step; an error reply leaves it in step.
        Some(self.watch(r).and_then(|reply| reply))
    }

    /// Marks the connection broken when `r` failed.
    fn watch<T>(&mut self, r: RedisResult<T>) -> RedisResult<T> {
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// Sends a request, which must be answered within `timeout` from now.
    fn send(&mut self, cmd: &[u8]) -> RedisResult<()> {
        self.deadline = Instant::now() + self.timeout;
        let r = self
            .io
            .start(self.timeout)
            .and_then(|()| self.io.send(cmd, self.deadline))
            .map_err(Into::into);
        self.watch(r)
    }

    /// Reads one reply of the request, before its deadline.
    fn recv(&mut self) -> RedisResult<Value> {
        let r = self.io.recv(self.deadline);
        self.watch(r)
    }
}

impl ConnectionLike for Bounded {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        if self.broken {
            return Err(abandoned());
        }
        self.send(cmd)?;
        loop {
            match self.recv()? {
                Value::Push { .. } => continue,
                v => return Ok(v),
            }
        }
    }

    /// Sends the pipeline and reads `offset + count` replies, stopping at the first that fails.
    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        if self.broken {
            return Err(abandoned());
        }
        self.send(cmd)?;
        let mut out = Vec::with_capacity(count.min(1024));
        let mut seen = 0;
        while seen < offset + count {
            match self.recv()? {
                // Out-of-band data (RESP3) is not a reply.
                Value::Push { .. } => continue,
                // An error before `offset` (inside MULTI, which ddf never sends) aborts.
                // Later replies stay unread: the connection must not go back to the pool.
                Value::ServerError(e) if seen < offset => {
                    self.broken = true;
                    return Err(e.into());
                }
                v if seen >= offset => out.push(v),
                _ => {}
            }
            seen += 1;
        }
        Ok(out)
    }

    fn get_db(&self) -> i64 {
        self.db
    }

    fn check_connection(&mut self) -> bool {
        !self.broken && redis::cmd("PING").exec(self).is_ok()
    }

    fn is_open(&self) -> bool {
        !self.broken
    }
}
