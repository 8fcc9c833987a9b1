//! The Redis invalidation channel of a near cache: one connection of its own, in RESP3
//! (`HELLO 3`), named `ddf-near-<pid>-<n>` (`CLIENT SETNAME`, so that an operator or a test can
//! find and `CLIENT KILL` it), with `CLIENT TRACKING ON BCAST PREFIX <namespace>` on that same
//! connection: the server pushes `invalidate` for every key of the namespace that anyone
//! changes, and `invalidate` with a null for a flush. One background thread per cache reads it
//! (for both faces: a blocking read needs no runtime, and the pushes are few and small).
//!
//! Our own socket and redis-rs's RESP parser (as `backend/redis/conn.rs` does). Once tracking is
//! on, the socket and its parser (the [`Inbox`]) sit behind a lock in the near cache, and are
//! read without waiting (`MSG_DONTWAIT`) by whoever holds it: the thread, woken by `poll`, and
//! a hit that finds no drain began in the last millisecond (`Near::catch_up`), so that a push
//! the kernel already delivered is applied before a later hit is served even when this thread
//! waits for a core. The poll's timeout is a heartbeat tick: every tick a `PING` (`ROLE` behind
//! Sentinel, also asked in the set-up) is sent, whatever was heard; a connection that answers
//! nothing (no push, no `PONG`) for `timeout` after that is given up, like one that closed. On
//! loss the near cache is suspended (emptied, bypassed) and the inbox dropped, under the inbox's
//! lock; the thread reconnects with backoff; once tracking is on again the near cache resumes,
//! empty.

use std::io::Read;
use std::os::fd::OwnedFd;
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::{PushKind, Value};

#[cfg(feature = "tls")]
use super::socket::tls;
use super::socket::{Raw, Sock, Stream, readable, tcp, writable};
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

/// The master the Sentinels name now, verified with `ROLE` (the backend's own Sentinel client,
/// asked afresh at each connection): its endpoint, with TLS when the settings have a CA.
fn sentinel_master(
    s: &RedisSettings,
    sentinels: &[crate::config::ServerAddr],
    master: &str,
    password: Option<&crate::config::Secret>,
) -> Result<RedisEndpoint, End> {
    use crate::backend::redis::sentinel::Sentinels;
    let lost = |e: redis::RedisError| End::Lost(format!("Sentinel: {e}"));
    let finder = Sentinels::new(s, sentinels, master, password).map_err(lost)?;
    finder.find_master().map_err(lost)?;
    let addr = finder
        .current()
        .ok_or_else(|| End::Lost("Sentinel: no master found".to_owned()))?;
    let a = crate::config::ServerAddr::parse(&addr, 6379)
        .map_err(|e| End::Lost(format!("Sentinel named {addr:?}: {e}")))?;
    Ok(if s.ca.is_some() {
        RedisEndpoint::Tls {
            host: a.host,
            port: a.port,
            insecure: false,
        }
    } else {
        RedisEndpoint::Tcp {
            host: a.host,
            port: a.port,
        }
    })
}

struct Channel {
    settings: RedisSettings,
    name: String,
    near: Weak<Near>,
}

/// The open session's socket and parser, kept in the near cache behind its lock: the tracking
/// thread and the hits (`Near::catch_up`) both drain it, whoever holds the lock.
pub(super) struct Inbox {
    stream: Stream,
    parser: redis::Parser,
    namespace: String,
    /// When the oldest heartbeat not answered yet (nothing heard since) was sent.
    pinged: Option<Instant>,
    /// When the latest heartbeat was sent.
    sent: Instant,
    /// Why a hit's drain found the connection unusable (the thread ends the session).
    broken: Option<String>,
}

/// The most values one drain applies: a flood of pushes does not hold the inbox's lock (and a
/// due hit) for long; what is left is read by the next drain.
const DRAIN_BUDGET: usize = 1024;

impl Inbox {
    /// Reads and applies what the server already delivered, without waiting, at most
    /// [`DRAIN_BUDGET`] values: `true` once nothing is left, `false` when the budget ran out
    /// first (the drain is not complete).
    ///
    /// # Errors
    /// Why the connection is unusable: closed, failed, or the server answered an error.
    pub(super) fn drain(&mut self, near: &Near) -> Result<bool, String> {
        if let Some(why) = &self.broken {
            return Err(why.clone());
        }
        let r = read_all(&mut self.parser, &mut self.stream, DRAIN_BUDGET, |v| {
            self.pinged = None;
            apply(near, &self.namespace, v)
        });
        if let Err(why) = &r {
            self.broken = Some(why.clone());
        }
        r
    }
}

/// Parses the values `reader` has without waiting, at most `budget`, and hands each to `each`;
/// `Ok(true)` once the reader would block (a value cut in two stays in the parser for the next
/// call), `Ok(false)` once `budget` values were handed (more may be waiting).
fn read_all(
    parser: &mut redis::Parser,
    reader: &mut impl Read,
    budget: usize,
    mut each: impl FnMut(Value) -> Result<(), String>,
) -> Result<bool, String> {
    for _ in 0..budget {
        match parser.parse_value(&mut *reader) {
            Ok(v) => each(v)?,
            Err(e) if is_timeout(&e) => return Ok(true),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(false)
}

/// Applies one value read on the tracking connection: an `invalidate` push evicts, a `PONG`
/// or another push is only a sign of life, an error ends the session.
fn apply(near: &Near, namespace: &str, v: Value) -> Result<(), String> {
    match v {
        Value::Push { kind, data } => {
            if kind == PushKind::Invalidate {
                invalidate(near, namespace, data);
            }
            Ok(())
        }
        Value::ServerError(e) => Err(format!("the server answered an error: {e:?}")),
        // The reply to `ROLE` (the heartbeat behind Sentinel): only a master may be tracked.
        v if not_master(&v) => Err("the server is no longer the master (failover)".to_owned()),
        _ => Ok(()),
    }
}

/// Whether `v` is a reply to `ROLE` that names another role than master.
fn not_master(v: &Value) -> bool {
    matches!(v, Value::Array(role) if role.first().is_some_and(
        |r| matches!(r, Value::BulkString(b) if b.as_slice() != b"master"),
    ))
}

/// Applies one `invalidate` push: a list of keys (this namespace's, by the prefix), or a null
/// (a flush) which empties the near cache.
fn invalidate(near: &Near, namespace: &str, data: Vec<Value>) {
    let ns = namespace.as_bytes();
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
                        if super::hooks::dropped(namespace) {
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

/// Why a connection ended.
#[derive(Debug)]
pub(super) enum End {
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
                    // Already done under the inbox's lock for a session that was established
                    // (see `listen`); a no-op then.
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

    fn connect(&self) -> Result<Stream, End> {
        let s = &self.settings;
        let lost = |e: std::io::Error| End::Lost(format!("cannot connect: {e}"));
        let found;
        let endpoint = match &s.target {
            RedisTarget::Standalone(e) => e,
            RedisTarget::Sentinel {
                sentinels,
                master,
                password,
            } => {
                found = sentinel_master(s, sentinels, master, password.as_ref())?;
                &found
            }
            RedisTarget::Cluster(_) => {
                return Err(End::Refused(
                    "the near cache does not track a Redis Cluster".to_owned(),
                ));
            }
        };
        let stream = match endpoint {
            RedisEndpoint::Tcp { host, port } => Stream::Plain(tcp(host, *port, s)?),
            #[cfg(unix)]
            RedisEndpoint::Unix { path } => Stream::Plain(Raw::new(Sock::Unix(
                UnixStream::connect(path).map_err(lost)?,
            ))),
            #[cfg(feature = "tls")]
            RedisEndpoint::Tls {
                host,
                port,
                insecure: false,
            } => tls(s, tcp(host, *port, s)?, host)?,
            #[cfg(feature = "tls")]
            RedisEndpoint::Tls { insecure: true, .. } => {
                return Err(End::Refused(
                    "rediss://...#insecure: ddf's redis-rs is built without tls-rustls-insecure"
                        .to_owned(),
                ));
            }
            #[allow(unreachable_patterns)]
            _ => {
                return Err(End::Refused(
                    "this endpoint needs a cargo feature ddf was built without".to_owned(),
                ));
            }
        };
        let mut stream = stream;
        stream
            .raw()
            .timeouts(s.connect_timeout, s.connect_timeout)
            .map_err(lost)?;
        Ok(stream)
    }

    /// The set-up requests, pipelined: `HELLO 3` (with `AUTH`), `CLIENT SETNAME`,
    /// `CLIENT TRACKING ON BCAST [PREFIX <namespace>]`, and behind Sentinel `ROLE` (the
    /// tracked server itself must be the master, not only the one the Sentinels named a
    /// moment before); with the number of replies they bring.
    fn setup(&self) -> (Vec<u8>, usize) {
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
        if let RedisTarget::Sentinel { .. } = s.target {
            out.extend(redis::cmd("ROLE").get_packed_command());
            return (out, 4);
        }
        (out, 3)
    }

    /// One connection's life: set up tracking, hand the socket to the near cache, resume it,
    /// then drain the socket whenever it is readable until the connection fails, goes quiet,
    /// or the near cache is dropped. `true` with it: tracking was established (the near cache
    /// resumed).
    fn session(&self) -> (End, bool) {
        let (mut stream, parser) = match self.establish() {
            Ok(s) => s,
            Err(end) => return (end, false),
        };
        let watcher = match stream.raw().watcher() {
            Ok(fd) => fd,
            Err(e) => return (End::Lost(format!("cannot watch the socket: {e}")), false),
        };
        let Some(near) = self.near.upgrade() else {
            return (End::Dropped, false);
        };
        stream.raw().dontwait = true;
        *near.inbox() = Some(Inbox {
            stream,
            parser,
            namespace: self.settings.namespace.clone(),
            pinged: None,
            sent: Instant::now(),
            broken: None,
        });
        near.resume();
        drop(near);
        tracing::debug!(client = %self.name, "ddf: near cache tracking established");
        let end = self.listen(&watcher);
        // `listen` tore a lost session down already; this only covers any other way out.
        if let Some(near) = self.near.upgrade() {
            near.end_session(&mut near.inbox());
        }
        (end, true)
    }

    /// Connects and sets tracking up (every reply read).
    fn establish(&self) -> Result<(Stream, redis::Parser), End> {
        let mut stream = self.connect()?;
        let mut parser = redis::Parser::new();
        let (setup, replies) = self.setup();
        stream
            .write_all(&setup)
            .map_err(|e| End::Lost(format!("cannot send the set-up: {e}")))?;
        let deadline = Instant::now() + self.settings.connect_timeout;
        let mut answered = 0;
        while answered < replies {
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
                Ok(v) if not_master(&v) => {
                    return Err(End::Lost(
                        "the server the Sentinels named is not the master (ROLE)".to_owned(),
                    ));
                }
                Ok(_) => answered += 1,
                Err(e) => return Err(End::Lost(format!("set-up: {e}"))),
            }
        }
        stream
            .raw()
            .timeouts(TICK, self.settings.timeout)
            .map_err(|e| End::Lost(format!("cannot set the socket's timeouts: {e}")))?;
        Ok((stream, parser))
    }

    /// Drains the near cache's inbox whenever its socket is readable; sends a heartbeat every
    /// tick; ends when the connection fails, goes quiet, or the near cache is dropped. A lost
    /// session is torn down before the inbox's lock is let go (the near cache suspended, then
    /// the inbox dropped): no hit finds the channel gone and the near cache still live.
    fn listen(&self, watcher: &OwnedFd) -> End {
        // Behind Sentinel the heartbeat is `ROLE`: a server that stops being the master (a
        // failover that did not close this connection) ends the session (see `apply`).
        let ping = match self.settings.target {
            RedisTarget::Sentinel { .. } => redis::cmd("ROLE").get_packed_command(),
            _ => redis::cmd("PING").get_packed_command(),
        };
        // A drain cut short by its budget may leave values in the parser's buffer, which `poll`
        // does not see: the next turn drains without waiting.
        let mut pending = false;
        loop {
            let ready = if pending {
                Ok(true)
            } else {
                readable(watcher, TICK)
            };
            let Some(near) = self.near.upgrade() else {
                return End::Dropped;
            };
            let mut inbox = near.inbox();
            let why = match (ready, inbox.as_mut()) {
                (Err(e), _) => format!("cannot poll the socket: {e}"),
                (Ok(_), None) => "the inbox was taken".to_owned(),
                (Ok(ready), Some(ib)) => match self.beat(ib, &near, ready, (&ping, watcher)) {
                    Ok(done) => {
                        pending = !done;
                        continue;
                    }
                    Err(why) => why,
                },
            };
            #[cfg(feature = "testing")]
            super::hooks::teardown_pause(&self.settings.namespace);
            near.end_session(&mut inbox);
            return End::Lost(why);
        }
    }

    /// One turn of [`Channel::listen`] on the open session: drains what came, gives up a
    /// connection that answered nothing for `timeout` after a heartbeat, sends the heartbeat
    /// when a tick passed since the last (whatever was heard: a stream of pushes must not keep
    /// `ROLE` from being asked).
    ///
    /// `false`: the drain was cut short by its budget (the next turn goes on).
    ///
    /// # Errors
    /// Why the session is lost.
    fn beat(
        &self,
        ib: &mut Inbox,
        near: &Near,
        ready: bool,
        (ping, watcher): (&[u8], &OwnedFd),
    ) -> Result<bool, String> {
        let mut done = true;
        if ready {
            let began = near.clock();
            done = ib.drain(near)?;
            if done {
                near.drained(began);
            }
        } else if let Some(why) = &ib.broken {
            return Err(why.clone());
        }
        if let Some(at) = ib.pinged
            && at.elapsed() >= self.settings.timeout
        {
            return Err(format!(
                "no answer to the heartbeat within timeout ({:?})",
                self.settings.timeout
            ));
        }
        if ib.sent.elapsed() >= TICK {
            // Written only where it cannot block with the inbox's lock held (a due hit waits
            // on it); a socket that takes nothing counts as a heartbeat unanswered, so a
            // server that stopped reading is given up after `timeout`.
            if writable(watcher).map_err(|e| format!("cannot poll the socket: {e}"))? {
                ib.stream
                    .write_all(ping)
                    .map_err(|e| format!("cannot send the heartbeat: {e}"))?;
            }
            ib.sent = Instant::now();
            ib.pinged.get_or_insert(ib.sent);
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests;
