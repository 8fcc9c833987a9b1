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
//! cache is live only while every one of them tracks, any one's loss ends the session, and
//! every link's set-up and heartbeat ask its own node's `CLUSTER NODES` and `CLUSTER INFO`:
//! a view that names other masters or other slots, or says the node is not a master, or a
//! `cluster_state` not `ok`, ends it too (cause `topology`), to be set up again on the masters
//! named now. The near cache stores a fill only from a node the session tracks
//! (`Near::resume_tracking`).

use std::os::fd::OwnedFd;
#[cfg(all(unix, test))]
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::Value;

pub(super) use self::inbox::Inbox;
use self::inbox::{Fault, Link, check_views, into_text, not_master};
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
/// tick, or a session's set-up: on a Cluster one connection attempt per node asked and per
/// master).
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

/// A Cluster session's topology, and the host asked first (a node announced without an IP is
/// there).
type Session = (Topology, String);

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
    /// `CLIENT TRACKING ON BCAST [PREFIX <namespace>]`, then `extra` (behind Sentinel `ROLE`:
    /// the tracked server itself must be a master; on a Cluster `CLUSTER NODES` and
    /// `CLUSTER INFO`: each node's own view, see [`Channel::open`]); with the number of replies
    /// they bring.
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
            RedisTarget::Sentinel { .. } => vec![redis::cmd("ROLE")],
            RedisTarget::Cluster(_) => {
                let mut nodes = redis::cmd("CLUSTER");
                nodes.arg("NODES");
                let mut info = redis::cmd("CLUSTER");
                info.arg("INFO");
                vec![nodes, info]
            }
            RedisTarget::Standalone(_) => Vec::new(),
        }
    }

    /// The links of a new session: the one server's, or on a Cluster one per master. On a
    /// Cluster every link's set-up asks its node's own `CLUSTER NODES` and `CLUSTER INFO`: the
    /// session is set up only when every master agrees with the first node's view (the same
    /// masters and slots), says it is a master, and says `cluster_state:ok`, so that a master
    /// cut off from the others (still answering us, with its old view) does not set the
    /// session's topology alone. Masters are reached by the hostname they announce, when they
    /// do (a TLS certificate names it) and it can be reached, else by their IP. `Ok` with the links, the topology
    /// and the host asked first (a node announced without an IP is there).
    fn open(&self, masters: &mut Vec<Addr>) -> Result<(Vec<Link>, Option<Session>), End> {
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
        let extra = self.extra();
        for a in &ask {
            match self.establish(&self.node_endpoint(a), &extra) {
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
                // By the announced hostname first; a hostname this machine cannot reach (a
                // cluster that announces names but has its clients connect by IP) falls back
                // to the IP.
                let (link, view) = match self.establish(&self.node_endpoint(m), &extra) {
                    Ok(x) => x,
                    Err(e @ End::Refused(_)) => return Err(e),
                    Err(e) => match topology.ip_of(m) {
                        Some(ip) => self.establish(&self.node_endpoint(ip), &extra)?,
                        None => return Err(e),
                    },
                };
                let view = view.ok_or_else(|| End::Lost("CLUSTER NODES: no answer".to_owned()))?;
                check_views(&topology, &host, &[view])
                    .map_err(|f| End::Moved(format!("{f_why} ({}:{})", m.0, m.1, f_why = f.why)))?;
                links.push(link);
            }
        }
        *masters = topology.masters().cloned().collect();
        Ok((links, Some((topology, host))))
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
        let tracked = topology.as_ref().map(|(t, _)| t.names());
        *near.inbox() = Some(Inbox {
            links,
            namespace: self.settings.namespace.clone(),
            cluster: topology.is_some(),
            broken: None,
        });
        near.resume_tracking(tracked);
        drop(near);
        tracing::debug!(client = %self.name, connections = n, "ddf: near cache tracking established");
        let end = self.listen(&watchers, topology.as_ref());
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
                        && let Some(t) = into_text(v)
                    {
                        match t.strip_prefix("cluster_state:") {
                            Some(state) if !state.starts_with("ok") => {
                                return Err(End::Lost(
                                    "the node says cluster_state:fail (CLUSTER INFO)".to_owned(),
                                ));
                            }
                            Some(_) => {}
                            None => nodes = Some(t),
                        }
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
            view: None,
        };
        Ok((link, nodes))
    }

    /// The heartbeat of a link: `PING`; `ROLE` behind Sentinel; on a Cluster, on every link,
    /// `CLUSTER NODES` and `CLUSTER INFO` (each master's own view, compared with the session's).
    fn heartbeat(&self) -> Vec<u8> {
        match self.settings.target {
            RedisTarget::Sentinel { .. } => redis::cmd("ROLE").get_packed_command(),
            RedisTarget::Cluster(_) => {
                let mut out = redis::cmd("CLUSTER").arg("NODES").get_packed_command();
                out.extend(redis::cmd("CLUSTER").arg("INFO").get_packed_command());
                out
            }
            RedisTarget::Standalone(_) => redis::cmd("PING").get_packed_command(),
        }
    }

    /// Drains the near cache's inbox whenever a socket is readable; sends a heartbeat every
    /// tick; ends when a connection fails, goes quiet, the topology changes, or the near cache
    /// is dropped. A lost session is torn down before the inbox's lock is let go (the near
    /// cache suspended, then the inbox dropped): no hit finds the channel gone and the near
    /// cache still live. On a Cluster (`topology`: the session's, and the host asked first),
    /// the `CLUSTER NODES` answers drained (by this thread or a hit) are compared after each
    /// turn, outside the inbox's lock.
    fn listen(&self, watchers: &[OwnedFd], topology: Option<&Session>) -> End {
        let ping = self.heartbeat();
        let pings: Vec<Vec<u8>> = vec![ping; watchers.len()];
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
                        let Some((t, asked)) = topology else {
                            continue;
                        };
                        let views = ib.take_views();
                        drop(inbox);
                        #[cfg(feature = "testing")]
                        if super::hooks::topology_ignored(&self.settings.namespace) {
                            continue;
                        }
                        match check_views(t, asked, &views) {
                            Ok(()) => continue,
                            Err(f) => {
                                inbox = near.inbox();
                                f
                            }
                        }
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
