//! The requests of one scope ([`NodeBackend`]): commands sent to their slots' owners, one
//! pipeline per node, `MOVED`/`ASK` followed (at most [`HOPS`] sends per command, the map read
//! once per batch), and the `SCAN` + `UNLINK` of a prefix on one node.
//!
//! Where a command goes and what its replies mean is [`Route`], without I/O: the sync
//! [`NodeBackend`] and the async face's cluster client (`aio/redis/cluster.rs`) each drive it
//! with their own sockets.

use redis::{RedisError, Value};

use super::super::commands;
use super::{Addr, NodeBackend, RedisBackend};
use crate::error::{Error, Result};

/// A command for the key of `slot`.
#[derive(Clone)]
pub(crate) struct Keyed {
    pub(crate) slot: u16,
    pub(crate) cmd: redis::Cmd,
}

/// Where a command goes: its slot's owner, or (after `ASK`) the node named, `ASKING` first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hop {
    pub(crate) addr: Addr,
    pub(crate) asking: bool,
}

/// Sends per command: the first, then up to two redirects (`MOVED` to a node that answers
/// `ASK` during a migration, say). A slot still redirected after that is moving again.
const HOPS: usize = 3;

/// The node a `MOVED`/`ASK` names; `None` for another error. A redirect that names no host
/// (`-MOVED 3999 :6381`, a node announced without an endpoint) is at the host asked.
fn redirect(e: &RedisError, asked: &Addr) -> Option<Hop> {
    let (named, _slot) = e.redirect_node()?;
    let (host, port) = named.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|&p| p != 0)?;
    let host = if host.is_empty() || host == "?" {
        asked.0.clone()
    } else {
        host.to_owned()
    };
    Some(Hop {
        addr: (host, port),
        asking: e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Ask),
    })
}

/// The sends of one call (a command, or a batch) and their replies: which node each command
/// goes to, round after round, until every command has a reply that is not a redirect. Pure:
/// the caller sends each round's groups (one pipeline per node, [`pipeline`]) and hands the
/// replies to [`Route::take`]; after a round with a `MOVED`, it reads the slot map from the
/// node [`Route::moved`] names (once per round, whatever the number of keys).
pub(crate) struct Route {
    out: Vec<Value>,
    todo: Vec<(usize, Hop)>,
    hop: usize,
    watch: Option<usize>,
    answered: Option<Addr>,
    moved: Option<Addr>,
}

/// A group of one round: the node (and whether `ASKING` goes first) and the commands' indexes.
pub(crate) type Group = (Hop, Vec<usize>);

impl Route {
    /// Every command to its slot's owner by the map now; `watch`: the command whose answering
    /// node [`Route::finish`] gives.
    pub(crate) fn new(shards: &super::Shards, cmds: &[Keyed], watch: Option<usize>) -> Self {
        let todo = cmds
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let addr = shards.owner(c.slot);
                (
                    i,
                    Hop {
                        addr,
                        asking: false,
                    },
                )
            })
            .collect();
        Route {
            out: vec![Value::Nil; cmds.len()],
            todo,
            hop: 0,
            watch,
            answered: None,
            moved: None,
        }
    }

    /// The next round's sends, grouped by node; `None` once every command has its reply.
    pub(crate) fn round(&mut self) -> Option<Vec<Group>> {
        if self.todo.is_empty() {
            return None;
        }
        self.hop += 1;
        let mut groups: Vec<Group> = Vec::new();
        for (i, to) in self.todo.drain(..) {
            match groups.iter_mut().find(|(h, _)| *h == to) {
                Some((_, v)) => v.push(i),
                None => groups.push((to, vec![i])),
            }
        }
        Some(groups)
    }

    /// The replies of one group, in its commands' order (a server's error reply as `Err`). A
    /// redirect sends its command again next round (at most [`HOPS`] sends per command).
    ///
    /// # Errors
    /// An error reply that is not a redirect (mapped by the node's backend), or a command
    /// still redirected at its last send.
    pub(crate) fn take(
        &mut self,
        shards: &super::Shards,
        what: &str,
        to: &Hop,
        idx: &[usize],
        replies: impl IntoIterator<Item = std::result::Result<Value, RedisError>>,
    ) -> Result<()> {
        for (&i, r) in idx.iter().zip(replies) {
            let e = match r {
                Ok(v) => {
                    if self.watch == Some(i) {
                        self.answered = Some(to.addr.clone());
                    }
                    if let Some(slot) = self.out.get_mut(i) {
                        *slot = v;
                    }
                    continue;
                }
                Err(e) => e,
            };
            match redirect(&e, &to.addr) {
                None => return Err(shards.node(&to.addr)?.map_err(what, &e)),
                Some(_) if self.hop >= HOPS => return Err(still_moving(what, &e)),
                Some(next) => {
                    if !next.asking && self.moved.is_none() {
                        self.moved = Some(next.addr.clone());
                    }
                    self.todo.push((i, next));
                }
            }
        }
        Ok(())
    }

    /// The node the round's first `MOVED` named (read the slot map from it), once.
    pub(crate) fn moved(&mut self) -> Option<Addr> {
        self.moved.take()
    }

    /// The replies in the commands' order, and the node that answered the watched command.
    pub(crate) fn finish(self) -> (Vec<Value>, Option<Addr>) {
        (self.out, self.answered)
    }
}

/// A reply as [`Route::take`] reads it: a server's error reply as `Err`.
pub(crate) fn reply(v: Value) -> std::result::Result<Value, RedisError> {
    match v {
        Value::ServerError(e) => Err(e.into()),
        v => Ok(v),
    }
}

/// The pipeline of one group (`ASKING` before each command after an `ASK`), and how many
/// replies each command gets ([`unpipe`] keeps the command's).
pub(crate) fn pipeline(to: &Hop, cmds: &[Keyed], idx: &[usize]) -> (redis::Pipeline, usize) {
    let mut p = redis::pipe();
    for &i in idx {
        if to.asking {
            p.add_command(redis::cmd("ASKING"));
        }
        if let Some(c) = cmds.get(i) {
            p.add_command(c.cmd.clone());
        }
    }
    (p, if to.asking { 2 } else { 1 })
}

/// The commands' replies of a [`pipeline`]: after `ASKING`, its `OK` then the command's reply,
/// of which the second is kept.
pub(crate) fn unpipe(all: Vec<Value>, per: usize) -> Vec<Value> {
    all.into_iter().skip(per - 1).step_by(per).collect()
}

/// A reply per command, or an error that says how many came.
pub(crate) fn check_count(what: &str, to: &Hop, vals: Vec<Value>, n: usize) -> Result<Vec<Value>> {
    if vals.len() != n {
        return Err(Error::Backend {
            backend: super::super::NAME,
            message: format!(
                "{what} on {}:{}: {} replies for {n} commands",
                to.addr.0,
                to.addr.1,
                vals.len(),
            ),
            temporary: false,
            source: None,
        });
    }
    Ok(vals)
}

/// A slot redirected at every send: it is being resharded again.
fn still_moving(what: &str, e: &RedisError) -> Error {
    Error::Backend {
        backend: super::super::NAME,
        message: format!(
            "{what} on the Redis Cluster: the key's slot was redirected {HOPS} times \
             (a resharding in progress; try again): {e}"
        ),
        temporary: false,
        source: None,
    }
}

/// A call that first waited for the slot map and got no reply within its bound (`budget`:
/// `connect_timeout` + `timeout` from its start): temporary, as a timeout.
pub(crate) fn out_of_time(what: &str, budget: std::time::Duration) -> Error {
    Error::Backend {
        backend: super::super::NAME,
        message: format!(
            "{what} on the Redis Cluster: no reply within connect_timeout + timeout \
             ({budget:?}) of the call, which first waited for the cluster's slot map"
        ),
        temporary: true,
        source: None,
    }
}

/// A reply of another type than the command answers with.
pub(crate) fn parse_error(what: &str) -> Error {
    Error::Backend {
        backend: super::super::NAME,
        message: format!("{what} on the Redis Cluster: an unexpected reply"),
        temporary: false,
        source: None,
    }
}

/// A reply read as `T`.
///
/// # Errors
/// [`parse_error`] when it is not one.
pub(crate) fn convert<T: redis::FromRedisValue>(what: &str, v: Value) -> Result<T> {
    redis::from_redis_value(v).map_err(|_| parse_error(what))
}

impl NodeBackend {
    pub(super) fn keyed(&self, key: &str, f: impl FnOnce(&str) -> redis::Cmd) -> Keyed {
        self.shards.keyed(key, f)
    }

    /// Sends the commands, one pipeline per node (one round trip each, one deadline each).
    /// The commands redirected are sent again together, grouped by the node named: after a
    /// `MOVED` the map is read once (from the first node named), whatever the number of keys;
    /// after an `ASK`, `ASKING` precedes each command. At most [`HOPS`] sends per command; a
    /// slot still redirected after that is an error that is not the server's failure (it
    /// does not count toward the breaker). Replies in order.
    ///
    /// A call whose routing waited for the first slot map gets only what is left of its own
    /// bound (`connect_timeout` + `timeout` from its start; a batch's requests to several
    /// scopes share it): see [`NodeBackend::within`].
    pub(super) fn exec(&self, what: &str, cmds: &[Keyed]) -> Result<Vec<Value>> {
        self.exec_from(what, cmds, None).map(|(v, _)| v)
    }

    /// As [`NodeBackend::exec`], with the node that answered command `watch` (the address
    /// the request was sent to, redirects followed), if asked.
    pub(super) fn exec_from(
        &self,
        what: &str,
        cmds: &[Keyed],
        watch: Option<usize>,
    ) -> Result<(Vec<Value>, Option<Addr>)> {
        let Some(deadline) = super::CALL_DEADLINE.get() else {
            return self.exec_now(what, cmds, watch);
        };
        let (me, owned, label) = (self.clone(), cmds.to_vec(), what.to_owned());
        self.within(deadline, what, move || me.exec_now(&label, &owned, watch))
    }

    /// Runs `f` (requests of a call that started before the first slot map was read) on a
    /// thread of its own and gives it up at `deadline` (a temporary error, as a timeout; the
    /// thread ends within its requests' own timeouts, its result dropped); nothing is run when
    /// no time is left. A thread the system refuses is replaced by running `f` here, bounded
    /// by its requests' own timeouts.
    pub(super) fn within<T: Send + 'static>(
        &self,
        deadline: std::time::Instant,
        what: &str,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let out_of_time = || out_of_time(what, self.shards.first.budget);
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(out_of_time());
        }
        // Shared with the thread, so that a thread the system refuses leaves `f` to run here.
        let job = std::sync::Arc::new(std::sync::Mutex::new(Some(f)));
        let take = |job: &std::sync::Mutex<Option<_>>| {
            job.lock().unwrap_or_else(|p| p.into_inner()).take()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let theirs = job.clone();
        let spawned = std::thread::Builder::new()
            .name("ddf-cluster-first".to_owned())
            .spawn(move || {
                if let Some(f) = take(&theirs) {
                    let _ = tx.send(f());
                }
            });
        if spawned.is_err()
            && let Some(f) = take(&job)
        {
            return f();
        }
        rx.recv_timeout(left).unwrap_or_else(|_| Err(out_of_time()))
    }

    fn exec_now(
        &self,
        what: &str,
        cmds: &[Keyed],
        watch: Option<usize>,
    ) -> Result<(Vec<Value>, Option<Addr>)> {
        let mut route = Route::new(&self.shards, cmds, watch);
        while let Some(groups) = route.round() {
            for (to, idx) in &groups {
                let vals = self.send(what, to, cmds, idx)?;
                route.take(&self.shards, what, to, idx, vals.into_iter().map(reply))?;
            }
            if let Some(to) = route.moved()
                && let Err(err) = self.shards.refresh_from(&to)
            {
                tracing::debug!(error = %err, "cannot read the slot map after MOVED");
            }
        }
        Ok(route.finish())
    }

    /// One pipeline of `idx`'s commands to one node (`ASKING` before each after an `ASK`); a
    /// reply per command.
    fn send(&self, what: &str, to: &Hop, cmds: &[Keyed], idx: &[usize]) -> Result<Vec<Value>> {
        let b = self.shards.node(&to.addr)?;
        let vals = match (idx, to.asking) {
            ([one], false) => {
                let packed = cmds[*one].cmd.get_packed_command();
                vec![b.run(what, |c| c.as_like().req_packed_command(&packed))?]
            }
            _ => {
                let (p, per) = pipeline(to, cmds, idx);
                let packed = p.get_packed_pipeline();
                let all = b.run(what, |c| {
                    c.as_like().req_packed_commands(&packed, 0, idx.len() * per)
                })?;
                unpipe(all, per)
            }
        };
        check_count(what, to, vals, idx.len())
    }

    pub(super) fn one(&self, what: &str, cmd: Keyed) -> Result<Value> {
        self.exec(what, std::slice::from_ref(&cmd))?
            .pop()
            .ok_or_else(|| self.parse_error(what))
    }

    pub(super) fn parse_error(&self, what: &str) -> Error {
        parse_error(what)
    }

    pub(super) fn convert<T: redis::FromRedisValue>(&self, what: &str, v: Value) -> Result<T> {
        convert(what, v)
    }

    /// `SCAN` + single-key `UNLINK`s of `pattern` on one node; the number unlinked.
    /// `asking`: the node is importing the keys' slot (not its owner yet), so each `UNLINK`
    /// is preceded by `ASKING`.
    pub(super) fn scan_unlink(b: &RedisBackend, pattern: &str, asking: bool) -> Result<u64> {
        let (mut cursor, mut removed) = (0u64, 0u64);
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = b.run("SCAN", |c| {
                commands::scan(cursor, pattern).query(c.as_like())
            })?;
            if !keys.is_empty() {
                let mut p = redis::pipe();
                for k in &keys {
                    if asking {
                        p.cmd("ASKING").ignore();
                    }
                    p.add_command(commands::unlink(std::slice::from_ref(k)));
                }
                let counts: Vec<u64> = b.run("UNLINK", |c| p.query(c.as_like()))?;
                removed += counts.iter().sum::<u64>();
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a node replies with.
    fn reply(resp: &str) -> RedisError {
        match redis::parse_redis_value(resp.as_bytes()) {
            Ok(Value::ServerError(e)) => e.into(),
            Ok(v) => panic!("not an error reply: {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn redirects_name_their_node_or_the_one_asked() {
        let asked = ("10.0.0.9".to_owned(), 7000);
        let to = |h: &str, p| (h.to_owned(), p);
        assert_eq!(
            redirect(&reply("-MOVED 3999 10.0.0.2:6381\r\n"), &asked),
            Some(Hop {
                addr: to("10.0.0.2", 6381),
                asking: false
            })
        );
        // No host announced: the node asked.
        assert_eq!(
            redirect(&reply("-MOVED 3999 :6381\r\n"), &asked),
            Some(Hop {
                addr: to("10.0.0.9", 6381),
                asking: false
            })
        );
        assert_eq!(
            redirect(&reply("-ASK 3999 ?:6382\r\n"), &asked),
            Some(Hop {
                addr: to("10.0.0.9", 6382),
                asking: true
            })
        );
        assert_eq!(redirect(&reply("-MOVED 3999 h:0\r\n"), &asked), None);
        assert_eq!(redirect(&reply("-ERR wrong\r\n"), &asked), None);
        assert_eq!(redirect(&reply("-TRYAGAIN later\r\n"), &asked), None);
    }
}
