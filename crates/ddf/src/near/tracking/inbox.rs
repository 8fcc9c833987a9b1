//! The open tracking session as the near cache holds it (the *inbox*): its links (one
//! connection each), what a drain reads from them without waiting, and how each value read is
//! applied (an invalidation evicts, a flush resets, an error or, on a Cluster, a changed
//! topology ends the session). Drained by the tracking thread and by hits (`Near::catch_up`),
//! whoever holds the inbox's lock.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::time::Instant;

use redis::{PushKind, Value};

use super::super::socket::Stream;
use super::super::topology::{Topology, parse_nodes};
use super::super::{Cause, Near};

/// Why an open session is unusable, and the cause its reset is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::near) struct Fault {
    pub(in crate::near) why: String,
    /// [`Cause::ChannelLost`], or [`Cause::Topology`] (a Cluster's masters or slots changed).
    pub(in crate::near) cause: Cause,
}

impl Fault {
    pub(super) fn lost(why: impl Into<String>) -> Self {
        Fault {
            why: why.into(),
            cause: Cause::ChannelLost,
        }
    }
}

/// One tracking connection of a session (one per master on a Cluster, else the only one).
pub(super) struct Link {
    pub(super) stream: Stream,
    pub(super) parser: redis::Parser,
    /// When the oldest heartbeat not answered yet (nothing heard since) was sent.
    pub(super) pinged: Option<Instant>,
    /// When the latest heartbeat was sent.
    pub(super) sent: Instant,
    /// A second handle of the socket, to ask `poll` whether a heartbeat can be written.
    pub(super) fd: OwnedFd,
}

/// The open session's sockets and parsers, kept in the near cache behind its lock: the
/// tracking thread and the hits (`Near::catch_up`) both drain it, whoever holds the lock.
pub(in crate::near) struct Inbox {
    pub(super) links: Vec<Link>,
    pub(super) namespace: String,
    /// On a Cluster: the masters and slots the session tracks; a `CLUSTER NODES` answer that
    /// differs ends it.
    pub(super) topology: Option<Topology>,
    /// Why a drain found the session unusable (the thread ends it).
    pub(super) broken: Option<Fault>,
}

/// The most values one drain applies per link: a flood of pushes does not hold the inbox's
/// lock (and a due hit) for long; what is left is read by the next drain.
pub(super) const DRAIN_BUDGET: usize = 1024;

impl Inbox {
    /// Reads and applies what the server(s) already delivered, without waiting, at most
    /// [`DRAIN_BUDGET`] values per link: `true` once nothing is left, `false` when a budget
    /// ran out first (the drain is not complete).
    ///
    /// # Errors
    /// Why the session is unusable: a connection closed, failed, or its server answered an
    /// error, or (Cluster) the topology changed.
    pub(in crate::near) fn drain(&mut self, near: &Near) -> Result<bool, Fault> {
        if let Some(f) = &self.broken {
            return Err(f.clone());
        }
        let (ns, topology) = (&self.namespace, self.topology.as_ref());
        let mut done = true;
        for link in &mut self.links {
            let pinged = &mut link.pinged;
            let r = read_all(&mut link.parser, &mut link.stream, DRAIN_BUDGET, |v| {
                *pinged = None;
                apply(near, ns, topology, v)
            });
            match r {
                Ok(d) => done &= d,
                Err(f) => {
                    self.broken = Some(f.clone());
                    return Err(f);
                }
            }
        }
        Ok(done)
    }

    /// The cause a drain found this session unusable for, if one did.
    pub(in crate::near) fn cause(&self) -> Option<Cause> {
        self.broken.as_ref().map(|f| f.cause)
    }
}

/// Parses the values `reader` has without waiting, at most `budget`, and hands each to `each`;
/// `Ok(true)` once the reader would block (a value cut in two stays in the parser for the next
/// call), `Ok(false)` once `budget` values were handed (more may be waiting).
pub(super) fn read_all(
    parser: &mut redis::Parser,
    reader: &mut impl Read,
    budget: usize,
    mut each: impl FnMut(Value) -> Result<(), Fault>,
) -> Result<bool, Fault> {
    for _ in 0..budget {
        match parser.parse_value(&mut *reader) {
            Ok(v) => each(v)?,
            Err(e) if is_timeout(&e) => return Ok(true),
            Err(e) => return Err(Fault::lost(e.to_string())),
        }
    }
    Ok(false)
}

/// Applies one value read on a tracking connection: an `invalidate` push evicts, a `PONG`
/// or another push is only a sign of life, an error ends the session; on a Cluster
/// (`topology`), a `CLUSTER NODES` answer that names other masters or slots ends it too.
pub(super) fn apply(
    near: &Near,
    namespace: &str,
    topology: Option<&Topology>,
    v: Value,
) -> Result<(), Fault> {
    match v {
        Value::Push { kind, data } => {
            if kind == PushKind::Invalidate {
                invalidate(near, namespace, data);
            }
            Ok(())
        }
        Value::ServerError(e) => Err(Fault::lost(format!("the server answered an error: {e:?}"))),
        // The reply to `ROLE` (the heartbeat behind Sentinel and on a Cluster): only a master
        // may be tracked.
        v if not_master(&v) => Err(Fault::lost("the server is no longer the master (failover)")),
        v => match (topology, text(&v)) {
            (Some(t), Some(text)) => {
                let asked = t.myself.as_ref().map_or("", |a| a.0.as_str());
                match parse_nodes(&text, asked) {
                    Some(now) if same_slots(&now, t) => Ok(()),
                    _ => Err(Fault {
                        why: "the cluster's masters or slots changed (CLUSTER NODES)".to_owned(),
                        cause: Cause::Topology,
                    }),
                }
            }
            _ => Ok(()),
        },
    }
}

/// Whether two readings of `CLUSTER NODES` agree on every master and its slots (whichever
/// node answered).
pub(super) fn same_slots(a: &Topology, b: &Topology) -> bool {
    let mut a = a.clone();
    a.myself.clone_from(&b.myself);
    a == *b
}

/// The text of a `CLUSTER NODES` answer (a verbatim string in RESP3, a bulk string in RESP2).
pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// Whether `v` is a reply to `ROLE` that names another role than master.
pub(super) fn not_master(v: &Value) -> bool {
    matches!(v, Value::Array(role) if role.first().is_some_and(
        |r| matches!(r, Value::BulkString(b) if b.as_slice() != b"master"),
    ))
}

/// Applies one `invalidate` push: a list of keys (this namespace's, by the prefix), or a null
/// (a flush) which empties the near cache.
pub(super) fn invalidate(near: &Near, namespace: &str, data: Vec<Value>) {
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
                        if super::super::hooks::dropped(namespace) {
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

pub(super) fn is_timeout(e: &redis::RedisError) -> bool {
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
