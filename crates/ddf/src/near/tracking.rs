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
//!
//! On a Redis Cluster a session is one such connection per master that `CLUSTER NODES` names
//! (a [`Link`] each, all in the one inbox, all drained by whoever holds its lock): the near
//! cache is live only while every one of them tracks, any one's loss ends the session, and a
//! heartbeat whose `CLUSTER NODES` names other masters or other slots ends it too (cause
//! `topology`), to be set up again on the masters it names now.

use std::os::fd::OwnedFd;
#[cfg(all(unix, test))]
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::Value;

pub(super) use self::inbox::Inbox;
use self::inbox::{Fault, Link, not_master, text};
#[cfg(feature = "tls")]
use super::socket::tls;
use super::socket::{Raw, Sock, Stream, readable, tcp, writable};
use super::topology::{Addr, Topology, parse_nodes};
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
        #[cfg(feature = "tls")]
        tls: std::cell::OnceCell::new(),
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
    /// The TLS configuration (the CA file read once), made at the first TLS connection and
    /// kept for every reconnection; an error (an unreadable CA) is kept too.
    #[cfg(feature = "tls")]
    tls: std::cell::OnceCell<Result<crate::backend::redis::conn::TlsConfig, String>>,
}

/// Why a connection ended.
#[derive(Debug)]
pub(super) enum End {
    /// The near cache was dropped: the thread ends.
    Dropped,
    /// The connection failed or went quiet: reconnect.
    Lost(String),
    /// A Cluster's masters or slots changed: set tracking up again on the masters it has now.
    Moved(String),
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

impl Channel {
    fn run(self) {
        // Zero: the first attempt after a loss of a working session is at BACKOFF_MIN.
        let mut backoff = Duration::ZERO;
        let mut refused: Option<String> = None;
        // On a Cluster: the masters of the last session, asked first for `CLUSTER NODES`.
        let mut masters: Vec<Addr> = Vec::new();
        loop {
            let (end, established) = self.session(&mut masters);
            match &end {
                End::Dropped => return,
                End::Lost(why) | End::Refused(why) | End::Moved(why) => {
                    // Already done under the inbox's lock for a session that was established
                    // (see `listen`); a no-op then.
                    let cause = match end {
                        End::Moved(_) => Cause::Topology,
                        _ => Cause::ChannelLost,
                    };
                    match self.near.upgrade() {
                        Some(near) => near.suspend_for(cause),
                        None => return,
                    }
                    match end {
                        End::Refused(_) => {
                            // Said once (again only if the refusal changes).
                            if refused.as_deref() != Some(why.as_str()) {
                                tracing::warn!(client = %self.name, reason = %why, "ddf: the server refused the near cache's invalidation channel; bypassing the near cache, retrying every {REFUSED_BACKOFF:?}");
                                refused = Some(why.clone());
                            }
                        }
                        End::Moved(_) => {
                            tracing::info!(client = %self.name, reason = %why, "ddf: near cache emptied; tracking the cluster's masters again");
                        }
                        _ => {
                            tracing::warn!(client = %self.name, reason = %why, "ddf: near cache's invalidation channel lost; bypassing the near cache until it is back");
                        }
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

    /// The server to track outside a Cluster: the configured one, or the master the Sentinels
    /// name now.
    fn endpoint(&self) -> Result<RedisEndpoint, End> {
        let s = &self.settings;
        match &s.target {
            RedisTarget::Standalone(e) => Ok(e.clone()),
            RedisTarget::Sentinel {
                sentinels,
                master,
                password,
            } => sentinel_master(s, sentinels, master, password.as_ref()),
            RedisTarget::Cluster(_) => Err(End::Refused(
                "a Cluster is tracked per master (a bug: no single endpoint)".to_owned(),
            )),
        }
    }

    /// A Cluster node's endpoint: TLS when the settings have a CA, as the data connections.
    fn node_endpoint(&self, (host, port): &Addr) -> RedisEndpoint {
        if self.settings.ca.is_some() {
            RedisEndpoint::Tls {
                host: host.clone(),
                port: *port,
                insecure: false,
            }
        } else {
            RedisEndpoint::Tcp {
                host: host.clone(),
                port: *port,
            }
        }
    }

    /// The TLS configuration, built once (the CA file is read at the first TLS connection,
    /// not at every reconnection).
    #[cfg(feature = "tls")]
    fn tls_config(&self) -> Result<&crate::backend::redis::conn::TlsConfig, End> {
        self.tls
            .get_or_init(|| {
                crate::backend::redis::conn::TlsConfig::new(self.settings.ca.as_deref(), false)
                    .map_err(|e| format!("TLS: {e}"))
            })
            .as_ref()
            .map_err(|e| End::Refused(e.clone()))
    }

    fn connect(&self, endpoint: &RedisEndpoint) -> Result<Stream, End> {
        let s = &self.settings;
        let lost = |e: std::io::Error| End::Lost(format!("cannot connect: {e}"));
        let stream = match endpoint {
            RedisEndpoint::Tcp { host, port } => Stream::Plain(tcp(host, *port, s)?),
            #[cfg(unix)]
            RedisEndpoint::Unix { path } => Stream::Plain(Raw::new(Sock::Unix(
                crate::backend::dial::unix(path, Instant::now() + s.connect_timeout)
                    .map_err(lost)?,
            ))),
            #[cfg(feature = "tls")]
            RedisEndpoint::Tls {
                host,
                port,
                insecure: false,
            } => tls(self.tls_config()?, tcp(host, *port, s)?, host)?,
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
    /// `CLIENT TRACKING ON BCAST [PREFIX <namespace>]`, then `extra` (behind Sentinel and on a
    /// Cluster's masters `ROLE`: the tracked server itself must be a master; on the first node
    /// of a Cluster `CLUSTER NODES`); with the number of replies they bring.
    fn setup(&self, extra: &[redis::Cmd]) -> (Vec<u8>, usize) {
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
        for c in extra {
            out.extend(c.get_packed_command());
        }
        (out, 3 + extra.len())
    }

    /// What the set-up of a connection asks besides tracking (see [`Channel::setup`]).
    fn extra(&self) -> Vec<redis::Cmd> {
        match self.settings.target {
            RedisTarget::Sentinel { .. } | RedisTarget::Cluster(_) => vec![redis::cmd("ROLE")],
            RedisTarget::Standalone(_) => Vec::new(),
        }
    }

    /// The links of a new session: the one server's, or on a Cluster one per master.
    fn open(&self, masters: &mut Vec<Addr>) -> Result<(Vec<Link>, Option<Topology>), End> {
        let RedisTarget::Cluster(nodes) = &self.settings.target else {
            let (link, _) = self.establish(&self.endpoint()?, &self.extra())?;
            return Ok((vec![link], None));
        };
        // `CLUSTER NODES` from the first node that sets tracking up: the last session's
        // masters first, then the configured nodes.
        let mut ask: Vec<Addr> = masters.clone();
        for n in nodes {
            let a = (n.host.clone(), n.port);
            if !ask.contains(&a) {
                ask.push(a);
            }
        }
        let mut last = End::Lost("no node of redis_cluster_nodes".to_owned());
        let mut first = None;
        let nodes_cmd = {
            let mut c = redis::cmd("CLUSTER");
            c.arg("NODES");
            c
        };
        for a in &ask {
            match self.establish(&self.node_endpoint(a), std::slice::from_ref(&nodes_cmd)) {
                Ok((link, Some(text))) => {
                    first = Some((link, text, a.0.clone()));
                    break;
                }
                Ok((_, None)) => last = End::Lost("CLUSTER NODES: no answer".to_owned()),
                Err(e @ End::Refused(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        let Some((link, text, host)) = first else {
            return Err(last);
        };
        let topology = parse_nodes(&text, &host)
            .ok_or_else(|| End::Lost("CLUSTER NODES named no master".to_owned()))?;
        let mut links = Vec::new();
        // The node that answered, when it is a master (a configured replica is not tracked).
        let mine = topology.myself.clone().filter(|m| topology.has(m));
        if mine.is_some() {
            links.push(link);
        }
        for m in topology.masters() {
            if Some(m) != mine.as_ref() {
                links.push(self.establish(&self.node_endpoint(m), &self.extra())?.0);
            }
        }
        *masters = topology.masters().cloned().collect();
        Ok((links, Some(topology)))
    }

    /// One session's life: set up tracking (on every master of a Cluster), hand the sockets to
    /// the near cache, resume it, then drain them whenever one is readable until a connection
    /// fails or goes quiet, the Cluster's topology changes, or the near cache is dropped.
    /// `true` with it: tracking was established (the near cache resumed).
    fn session(&self, masters: &mut Vec<Addr>) -> (End, bool) {
        let (links, topology) = match self.open(masters) {
            Ok(s) => s,
            Err(end) => return (end, false),
        };
        let watchers: std::io::Result<Vec<OwnedFd>> =
            links.iter().map(|l| l.fd.try_clone()).collect();
        let watchers = match watchers {
            Ok(w) => w,
            Err(e) => return (End::Lost(format!("cannot watch the socket: {e}")), false),
        };
        let Some(near) = self.near.upgrade() else {
            return (End::Dropped, false);
        };
        let n = links.len();
        *near.inbox() = Some(Inbox {
            links,
            namespace: self.settings.namespace.clone(),
            topology,
            broken: None,
        });
        near.resume();
        drop(near);
        tracing::debug!(client = %self.name, connections = n, "ddf: near cache tracking established");
        let end = self.listen(&watchers);
        // `listen` tore a lost session down already; this only covers any other way out.
        if let Some(near) = self.near.upgrade() {
            near.end_session(&mut near.inbox(), Cause::ChannelLost);
        }
        (end, true)
    }

    /// Connects to `endpoint` and sets tracking up (every reply read), asking `extra` too; the
    /// link, and the text of a `CLUSTER NODES` answer if one came.
    fn establish(
        &self,
        endpoint: &RedisEndpoint,
        extra: &[redis::Cmd],
    ) -> Result<(Link, Option<String>), End> {
        let mut stream = self.connect(endpoint)?;
        let mut parser = redis::Parser::new();
        let (setup, replies) = self.setup(extra);
        stream
            .write_all(&setup)
            .map_err(|e| End::Lost(format!("cannot send the set-up: {e}")))?;
        let deadline = Instant::now() + self.settings.connect_timeout;
        let mut answered = 0;
        let mut nodes = None;
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
                    if matches!(
                        e.code(),
                        "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN"
                    ) =>
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
                        "the server to track is not a master (ROLE)".to_owned(),
                    ));
                }
                Ok(v) => {
                    // The replies before the extras are `HELLO`'s map and two `OK`s.
                    if answered >= 3
                        && let Some(t) = text(&v)
                    {
                        nodes = Some(t);
                    }
                    answered += 1;
                }
                Err(e) => return Err(End::Lost(format!("set-up: {e}"))),
            }
        }
        stream
            .raw()
            .timeouts(TICK, self.settings.timeout)
            .map_err(|e| End::Lost(format!("cannot set the socket's timeouts: {e}")))?;
        let fd = stream
            .raw()
            .watcher()
            .map_err(|e| End::Lost(format!("cannot watch the socket: {e}")))?;
        stream.raw().dontwait = true;
        let link = Link {
            stream,
            parser,
            pinged: None,
            sent: Instant::now(),
            fd,
        };
        Ok((link, nodes))
    }

    /// The heartbeat of link `i`: `PING`; `ROLE` behind Sentinel and on a Cluster, with
    /// `CLUSTER NODES` on a Cluster's first link (the topology the session tracks).
    fn heartbeat(&self, i: usize) -> Vec<u8> {
        match self.settings.target {
            RedisTarget::Sentinel { .. } => redis::cmd("ROLE").get_packed_command(),
            RedisTarget::Cluster(_) => {
                let mut out = redis::cmd("ROLE").get_packed_command();
                if i == 0 {
                    out.extend(redis::cmd("CLUSTER").arg("NODES").get_packed_command());
                }
                out
            }
            RedisTarget::Standalone(_) => redis::cmd("PING").get_packed_command(),
        }
    }

    /// Drains the near cache's inbox whenever a socket is readable; sends a heartbeat every
    /// tick; ends when a connection fails, goes quiet, the topology changes, or the near cache
    /// is dropped. A lost session is torn down before the inbox's lock is let go (the near
    /// cache suspended, then the inbox dropped): no hit finds the channel gone and the near
    /// cache still live.
    fn listen(&self, watchers: &[OwnedFd]) -> End {
        let pings: Vec<Vec<u8>> = (0..watchers.len()).map(|i| self.heartbeat(i)).collect();
        // A drain cut short by its budget may leave values in the parser's buffer, which `poll`
        // does not see: the next turn drains without waiting.
        let mut pending = false;
        loop {
            let ready = if pending {
                Ok(true)
            } else {
                readable(watchers, TICK)
            };
            let Some(near) = self.near.upgrade() else {
                return End::Dropped;
            };
            let mut inbox = near.inbox();
            let fault = match (ready, inbox.as_mut()) {
                (Err(e), _) => Fault::lost(format!("cannot poll the socket: {e}")),
                (Ok(_), None) => Fault::lost("the inbox was taken"),
                (Ok(ready), Some(ib)) => match self.beat(ib, &near, ready, &pings) {
                    Ok(done) => {
                        pending = !done;
                        continue;
                    }
                    Err(f) => f,
                },
            };
            #[cfg(feature = "testing")]
            super::hooks::teardown_pause(&self.settings.namespace);
            near.end_session(&mut inbox, fault.cause);
            return match fault.cause {
                Cause::Topology => End::Moved(fault.why),
                _ => End::Lost(fault.why),
            };
        }
    }

    /// One turn of [`Channel::listen`] on the open session: drains what came, gives up a
    /// connection that answered nothing for `timeout` after a heartbeat, sends each link's
    /// heartbeat (`pings`) when a tick passed since its last (whatever was heard: a stream of
    /// pushes must not keep `ROLE` from being asked).
    ///
    /// `false`: the drain was cut short by its budget (the next turn goes on).
    ///
    /// # Errors
    /// Why the session ends.
    fn beat(
        &self,
        ib: &mut Inbox,
        near: &Near,
        ready: bool,
        pings: &[Vec<u8>],
    ) -> Result<bool, Fault> {
        let mut done = true;
        if ready {
            let began = near.clock();
            done = ib.drain(near)?;
            if done {
                near.drained(began);
            }
        } else if let Some(f) = &ib.broken {
            return Err(f.clone());
        }
        for (link, ping) in ib.links.iter_mut().zip(pings) {
            if let Some(at) = link.pinged
                && at.elapsed() >= self.settings.timeout
            {
                return Err(Fault::lost(format!(
                    "no answer to the heartbeat within timeout ({:?})",
                    self.settings.timeout
                )));
            }
            if link.sent.elapsed() >= TICK {
                // Written only where it cannot block with the inbox's lock held (a due hit
                // waits on it); a socket that takes nothing counts as a heartbeat unanswered,
                // so a server that stopped reading is given up after `timeout`.
                if writable(&link.fd)
                    .map_err(|e| Fault::lost(format!("cannot poll the socket: {e}")))?
                {
                    link.stream
                        .write_all(ping)
                        .map_err(|e| Fault::lost(format!("cannot send the heartbeat: {e}")))?;
                }
                link.sent = Instant::now();
                link.pinged.get_or_insert(link.sent);
            }
        }
        Ok(done)
    }
}

mod inbox;

#[cfg(test)]
mod tests;
