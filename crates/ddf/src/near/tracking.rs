//! The Redis invalidation channel of a near cache: one connection of its own, in RESP3
//! (`HELLO 3`), named `ddf-near-<pid>-<n>` (`CLIENT SETNAME`, so that an operator or a test can
//! find and `CLIENT KILL` it), with `CLIENT TRACKING ON BCAST PREFIX <namespace>` on that same
//! connection: the server pushes `invalidate` for every key of the namespace that anyone
//! changes, and `invalidate` with a null for a flush. One background thread per cache reads it
//! (for both faces: a blocking read needs no runtime, and the pushes are few and small).
//!
//! Our own socket and redis-rs's RESP parser (as `backend/redis/conn.rs` does): the read
//! timeout is a heartbeat tick. After a quiet tick a `PING` is sent; a connection that answers
//! nothing (no push, no `PONG`) for `timeout` after that is given up, like one that closed. On
//! loss the near cache is suspended (emptied, bypassed), and the thread reconnects with backoff;
//! once tracking is on again the near cache resumes, empty.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::{PushKind, Value};

use super::{Cause, Near};
use crate::config::{RedisEndpoint, RedisSettings, RedisTarget};

/// The longest quiet spell before a `PING`; also how soon a dropped cache's thread ends.
const TICK: Duration = Duration::from_millis(500);
/// The first and the longest wait between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The wait after the server refused the set-up (an old Redis without `CLIENT TRACKING`, an
/// ACL without `CLIENT`): a refusal is not expected to pass soon.
const REFUSED_BACKOFF: Duration = Duration::from_secs(60);

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Starts the tracking thread of `near`. It ends once the near cache is dropped (within a
/// tick, or a connection attempt).
pub(super) fn start(settings: &RedisSettings, near: &Arc<Near>) {
    let name = format!(
        "ddf-near-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let channel = Channel {
        settings: settings.clone(),
        name: name.clone(),
        near: Arc::downgrade(near),
    };
    if let Err(e) = std::thread::Builder::new()
        .name(name)
        .spawn(move || channel.run())
    {
        // The near cache stays suspended (bypassed): correct, only slower.
        tracing::warn!(error = %e, "ddf: cannot start the near cache's tracking thread; the near cache stays off");
    }
}

struct Channel {
    settings: RedisSettings,
    name: String,
    near: Weak<Near>,
}

/// A socket of ours.
enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl std::io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Stream {
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(b),
            #[cfg(unix)]
            Stream::Unix(s) => s.write_all(b),
        }
    }

    fn timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(read))?;
                s.set_write_timeout(Some(write))
            }
            #[cfg(unix)]
            Stream::Unix(s) => {
                s.set_read_timeout(Some(read))?;
                s.set_write_timeout(Some(write))
            }
        }
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The near cache was dropped: the thread ends.
    Dropped,
    /// The connection failed or went quiet: reconnect.
    Lost(String),
    /// The server answered the set-up with an error: retry seldom, say it once.
    Refused(String),
}

/// The wait before the next attempt after a session that ended with `end` (`established`: it
/// reached tracking), the last wait having been `backoff`.
fn next_backoff(backoff: Duration, end: &End, established: bool) -> Duration {
    match end {
        End::Refused(_) => REFUSED_BACKOFF,
        // A session that worked starts the backoff over.
        _ if established => BACKOFF_MIN,
        _ => (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX),
    }
}

fn is_timeout(e: &redis::RedisError) -> bool {
    e.is_timeout()
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            })
}

impl Channel {
    fn run(self) {
        // Zero: the first attempt after a loss of a working session is at BACKOFF_MIN.
        let mut backoff = Duration::ZERO;
        let mut refused: Option<String> = None;
        loop {
            let (end, established) = self.session();
            match &end {
                End::Dropped => return,
                End::Lost(why) | End::Refused(why) => {
                    match self.near.upgrade() {
                        Some(near) => near.suspend(),
                        None => return,
                    }
                    if let End::Refused(_) = end {
                        // Said once (again only if the refusal changes).
                        if refused.as_deref() != Some(why.as_str()) {
                            tracing::warn!(client = %self.name, reason = %why, "ddf: the server refused the near cache's invalidation channel; bypassing the near cache, retrying every {REFUSED_BACKOFF:?}");
                            refused = Some(why.clone());
                        }
                    } else {
                        tracing::warn!(client = %self.name, reason = %why, "ddf: near cache's invalidation channel lost; bypassing the near cache until it is back");
                    }
                }
            }
            if established {
                refused = None;
            }
            backoff = next_backoff(backoff, &end, established);
            if !self.pause(backoff) {
                return;
            }
        }
    }

    /// Sleeps `d` a tick at a time; `false` once the near cache is dropped.
    fn pause(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            if self.near.strong_count() == 0 {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(TICK));
        }
    }

    fn connect(&self) -> std::io::Result<Stream> {
        let s = &self.settings;
        let endpoint = match &s.target {
            RedisTarget::Standalone(e) => e,
            _ => {
                return Err(std::io::Error::other(
                    "the near cache tracks a standalone server only",
                ));
            }
        };
        let stream = match endpoint {
            RedisEndpoint::Tcp { host, port } => {
                let mut last = None;
                let mut found = None;
                for a in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, s.connect_timeout) {
                        Ok(t) => {
                            found = Some(t);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                match found {
                    Some(t) => {
                        t.set_nodelay(true)?;
                        Stream::Tcp(t)
                    }
                    None => {
                        return Err(last.unwrap_or_else(|| {
                            std::io::Error::new(
                                std::io::ErrorKind::NotFound,
                                "the host name resolved to no address",
                            )
                        }));
                    }
                }
            }
            #[cfg(unix)]
            RedisEndpoint::Unix { path } => Stream::Unix(UnixStream::connect(path)?),
            _ => {
                return Err(std::io::Error::other(
                    "the near cache's invalidation channel is plain TCP or unix only",
                ));
            }
        };
        stream.timeouts(s.connect_timeout, s.connect_timeout)?;
        Ok(stream)
    }

    /// The set-up requests, pipelined: `HELLO 3` (with `AUTH`), `CLIENT SETNAME`,
    /// `CLIENT TRACKING ON BCAST [PREFIX <namespace>]`.
    fn setup(&self) -> Vec<u8> {
        let s = &self.settings;
        let mut hello = redis::cmd("HELLO");
        hello.arg(3);
        if let Some(p) = &s.password {
            hello
                .arg("AUTH")
                .arg(s.username.as_deref().unwrap_or("default"))
                .arg(p.expose());
        }
        let mut out = hello.get_packed_command();
        out.extend(
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(&self.name)
                .get_packed_command(),
        );
        let mut track = redis::cmd("CLIENT");
        track.arg("TRACKING").arg("ON").arg("BCAST");
        if !s.namespace.is_empty() {
            track.arg("PREFIX").arg(s.namespace.as_bytes());
        }
        out.extend(track.get_packed_command());
        out
    }

    /// One connection's life: set up tracking, resume the near cache, then evict on every push
    /// until the connection fails, goes quiet, or the near cache is dropped. `true` with it:
    /// tracking was established (the near cache resumed).
    fn session(&self) -> (End, bool) {
        let (stream, parser) = match self.establish() {
            Ok(s) => s,
            Err(end) => return (end, false),
        };
        let Some(near) = self.near.upgrade() else {
            return (End::Dropped, false);
        };
        near.resume();
        drop(near);
        tracing::debug!(client = %self.name, "ddf: near cache tracking established");
        (self.listen(stream, parser), true)
    }

    /// Connects and sets tracking up (every reply read).
    fn establish(&self) -> Result<(Stream, redis::Parser), End> {
        let mut stream = self
            .connect()
            .map_err(|e| End::Lost(format!("cannot connect: {e}")))?;
        let mut parser = redis::Parser::new();
        stream
            .write_all(&self.setup())
            .map_err(|e| End::Lost(format!("cannot send the set-up: {e}")))?;
        let deadline = Instant::now() + self.settings.connect_timeout;
        let mut answered = 0;
        while answered < 3 {
            if Instant::now() > deadline {
                return Err(End::Lost(
                    "the set-up took longer than connect_timeout".to_owned(),
                ));
            }
            match parser.parse_value(&mut stream) {
                // A server still loading or busy: try again soon; anything else is a refusal
                // (an old Redis, an ACL without CLIENT, a bad password).
                Ok(Value::ServerError(e))
                    if matches!(e.code(), "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN") =>
                {
                    return Err(End::Lost(format!("set-up: {e:?}")));
                }
                Ok(Value::ServerError(e)) => {
                    return Err(End::Refused(format!(
                        "the server refused the set-up: {e:?}"
                    )));
                }
                Ok(Value::Push { .. }) => {}
                Ok(_) => answered += 1,
                Err(e) => return Err(End::Lost(format!("set-up: {e}"))),
            }
        }
        stream
            .timeouts(TICK, self.settings.timeout)
            .map_err(|e| End::Lost(format!("cannot set the socket's timeouts: {e}")))?;
        Ok((stream, parser))
    }

    /// Evicts on every push until the connection fails, goes quiet, or the near cache is
    /// dropped.
    fn listen(&self, mut stream: Stream, mut parser: redis::Parser) -> End {
        // When the PING of a quiet spell was sent, if unanswered yet.
        let mut pinged: Option<Instant> = None;
        let ping = redis::cmd("PING").get_packed_command();
        loop {
            match parser.parse_value(&mut stream) {
                Ok(Value::Push { kind, data }) => {
                    pinged = None;
                    let Some(near) = self.near.upgrade() else {
                        return End::Dropped;
                    };
                    if kind == PushKind::Invalidate {
                        self.invalidate(&near, data);
                    }
                }
                Ok(Value::ServerError(e)) => {
                    return End::Lost(format!("the server answered an error: {e:?}"));
                }
                Ok(_) => pinged = None,
                Err(e) if is_timeout(&e) => {
                    if self.near.strong_count() == 0 {
                        return End::Dropped;
                    }
                    match pinged {
                        Some(at) if at.elapsed() >= self.settings.timeout => {
                            return End::Lost(format!(
                                "no answer to PING within timeout ({:?})",
                                self.settings.timeout
                            ));
                        }
                        Some(_) => {}
                        None => {
                            if let Err(e) = stream.write_all(&ping) {
                                return End::Lost(format!("cannot send PING: {e}"));
                            }
                            pinged = Some(Instant::now());
                        }
                    }
                }
                Err(e) => return End::Lost(e.to_string()),
            }
        }
    }

    /// Applies one `invalidate` push: a list of keys (this namespace's, by the prefix), or a
    /// null (a flush) which empties the near cache.
    fn invalidate(&self, near: &Near, data: Vec<Value>) {
        let ns = self.settings.namespace.as_bytes();
        for v in data {
            match v {
                Value::Nil => near.reset(Cause::Flush),
                Value::Array(keys) | Value::Set(keys) => {
                    for k in keys {
                        if let Value::BulkString(b) = k
                            && let Some(user) = b.strip_prefix(ns)
                            // Keys that are not UTF-8 were never stored here.
                            && let Ok(key) = std::str::from_utf8(user)
                        {
                            #[cfg(feature = "testing")]
                            if super::dropped(&self.settings.namespace) {
                                continue;
                            }
                            near.evict(key, true);
                        }
                    }
                }
                other => {
                    tracing::debug!(value = ?other, "ddf: unexpected invalidation payload; emptying the near cache");
                    near.reset(Cause::Flush);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
}
