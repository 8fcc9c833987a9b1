//! One connection to one Redis server whose waits the configuration bounds.
//!
//! Written here rather than left to redis-rs 1.8 because of two waits it multiplies:
//! - its pipelines read every reply even after one timed out, so a pipeline of `n` commands on
//!   a stopped server waits `n` timeouts (`set_many` of 20 items: 10 s with `timeout = 0.5`).
//!   [`Bounded`] stops reading at the first failed reply and refuses every later request: the
//!   caller drops it.
//! - its connection set-up reads each reply (`AUTH`, `SELECT`, `CLIENT SETINFO` twice) with
//!   what is left of the connect timeout, so the set-up can take several connect timeouts.
//!   [`Bounded::open`] has redis-rs skip `CLIENT SETINFO` (the client is built so) and sends
//!   `SELECT` itself, so redis-rs reads at most one set-up reply (`AUTH` or `HELLO`) and
//!   `SELECT` gets what is left of the same deadline.

use std::time::{Duration, Instant};

use redis::{ConnectionLike, RedisError, RedisResult, Value};

/// A connection that fails fast once one of its replies failed (timeout, I/O error, a reply
/// that is not RESP): later requests are refused without touching the socket.
pub(super) struct Bounded {
    inner: redis::Connection,
    /// The database selected (redis-rs's connection believes it is 0).
    db: i64,
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

/// What is left until `deadline`, or a timeout error when nothing is.
fn left(deadline: Instant) -> RedisResult<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the connection set-up took longer than connect_timeout",
            ))
        })
}

impl Bounded {
    /// Connects with `client` (built with database 0 and without `CLIENT SETINFO`) and selects
    /// `db`, all within `connect_timeout`; then every read and write waits at most `timeout`.
    pub(super) fn open(
        client: &redis::Client,
        db: i64,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> RedisResult<Self> {
        let deadline = Instant::now() + connect_timeout;
        let inner = client.get_connection_with_timeout(connect_timeout)?;
        Bounded::ready(inner, db, deadline, timeout)
    }

    /// Takes a connection redis-rs opened (on database 0), selects `db` before `deadline`, then
    /// sets every read and write to wait at most `timeout`.
    pub(super) fn ready(
        inner: redis::Connection,
        db: i64,
        deadline: Instant,
        timeout: Duration,
    ) -> RedisResult<Self> {
        let mut c = Bounded {
            inner,
            db,
            broken: false,
        };
        if db != 0 {
            let rest = left(deadline)?;
            c.inner.set_read_timeout(Some(rest))?;
            c.inner.set_write_timeout(Some(rest))?;
            redis::cmd("SELECT").arg(db).exec(&mut c)?;
        }
        c.inner.set_read_timeout(Some(timeout))?;
        c.inner.set_write_timeout(Some(timeout))?;
        Ok(c)
    }

    /// Marks the connection broken when `r` failed.
    fn watch<T>(&mut self, r: RedisResult<T>) -> RedisResult<T> {
        if r.is_err() {
            self.broken = true;
        }
        r
    }
}

impl ConnectionLike for Bounded {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        if self.broken {
            return Err(abandoned());
        }
        let r = self.inner.req_packed_command(cmd);
        self.watch(r)
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
        let sent = self.inner.send_packed_command(cmd);
        self.watch(sent)?;
        let mut out = Vec::with_capacity(count.min(1024));
        let mut seen = 0;
        while seen < offset + count {
            let reply = self.inner.recv_response();
            match self.watch(reply)? {
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
        !self.broken && self.inner.check_connection()
    }

    fn is_open(&self) -> bool {
        !self.broken && self.inner.is_open()
    }
}
