//! The open tracking session as the near cache holds it (the *inbox*): its links (one
//! connection each), what a drain reads from them without waiting, and how each value read is
//! applied (an invalidation evicts, a flush resets, an error ends the session; on a Cluster a
//! `CLUSTER INFO` saying `cluster_state:fail` ends it, and a `CLUSTER NODES` answer is kept,
//! unparsed, for the tracking thread to compare outside the lock: [`check_views`]). Drained by
//! the tracking thread and by hits (`Near::catch_up`), whoever holds the inbox's lock.

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
    /// On a Cluster: the latest `CLUSTER NODES` answer read on it, not compared yet.
    pub(super) view: Option<String>,
}

/// The open session's sockets and parsers, kept in the near cache behind its lock: the
/// tracking thread and the hits (`Near::catch_up`) both drain it, whoever holds the lock.
pub(in crate::near) struct Inbox {
    pub(super) links: Vec<Link>,
    pub(super) namespace: String,
    /// A Redis Cluster's session: text replies are `CLUSTER NODES` and `CLUSTER INFO` answers.
    pub(super) cluster: bool,
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
        let (ns, cluster) = (&self.namespace, self.cluster);
        let mut done = true;
        for link in &mut self.links {
            let (pinged, view) = (&mut link.pinged, &mut link.view);
            let r = read_all(&mut link.parser, &mut link.stream, DRAIN_BUDGET, |v| {
                *pinged = None;
                apply(near, ns, cluster.then_some(&mut *view), v)
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

    /// The `CLUSTER NODES` answers drained since the last call (a Cluster's), to be compared
    /// with the session's topology outside the inbox's lock ([`check_views`]).
    pub(in crate::near) fn take_views(&mut self) -> Vec<String> {
        self.links
            .iter_mut()
            .filter_map(|l| l.view.take())
            .collect()
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
/// or another push is only a sign of life, an error ends the session; on a Cluster (`view`:
/// the link's slot for a `CLUSTER NODES` answer), a `CLUSTER INFO` that does not say
/// `cluster_state:ok` ends it too (the node is cut off from the cluster's majority, or the
/// cluster is down), and a `CLUSTER NODES` answer is kept in `view`, unparsed.
pub(super) fn apply(
    near: &Near,
    namespace: &str,
    view: Option<&mut Option<String>>,
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
        // The reply to `ROLE` (the heartbeat behind Sentinel): only a master may be tracked.
        v if not_master(&v) => Err(Fault::lost("the server is no longer the master (failover)")),
        v => match (view, into_text(v)) {
            (Some(view), Some(text)) => match text.strip_prefix("cluster_state:") {
                Some(state) if !state.starts_with("ok") => Err(Fault {
                    why: "a tracked master says cluster_state:fail (CLUSTER INFO)".to_owned(),
                    cause: Cause::Topology,
                }),
                Some(_) => Ok(()),
                None => {
                    *view = Some(text);
                    Ok(())
                }
            },
            _ => Ok(()),
        },
    }
}

/// Compares the `CLUSTER NODES` answers of a Cluster's links (`views`, read by
/// [`Inbox::take_views`]; `asked`: the host a node without an announced IP is at) with the
/// topology the session tracks: every one must name the same masters and slots, and say that
/// the node answering is a master (not a replica, not failed). Parsed by the tracking thread
/// outside the inbox's lock.
///
/// # Errors
/// The first disagreement (cause `topology`): the session ends, to be set up again.
pub(in crate::near) fn check_views(
    session: &Topology,
    asked: &str,
    views: &[String],
) -> Result<(), Fault> {
    for v in views {
        let why = match parse_nodes(v, asked) {
            Some(now) if now.myself.is_none() => {
                "a tracked node no longer says it is a master (CLUSTER NODES)"
            }
            Some(now) if same_slots(&now, session) => continue,
            _ => "the cluster's masters or slots changed (CLUSTER NODES)",
        };
        return Err(Fault {
            why: why.to_owned(),
            cause: Cause::Topology,
        });
    }
    Ok(())
}

/// Whether two readings of `CLUSTER NODES` agree on every master and its slots (whichever
/// node answered).
pub(super) fn same_slots(a: &Topology, b: &Topology) -> bool {
    let mut a = a.clone();
    a.myself.clone_from(&b.myself);
    a == *b
}

/// The text of a `CLUSTER NODES` or `CLUSTER INFO` answer (a verbatim string in RESP3, a
/// bulk string in RESP2).
pub(super) fn into_text(v: Value) -> Option<String> {
    match v {
        Value::VerbatimString { text, .. } => Some(text),
        Value::BulkString(b) => Some(
            String::from_utf8(b)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
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
