//! The blocking transport of the memcached client: one `TcpStream`, one write per request
//! (a pipeline is one buffer), replies read into a buffer and parsed by [`super::proto`].
//!
//! Why in-house rather than the `memcache` crate's `exp::MetaClient`: we need exactly these
//! commands (`mg`, `ms`, `md`, `mn`, and the text `version`, `stats settings`,
//! `lru_crawler metadump`, `flush_all`, which that crate lacks), our own placement (pymemcache's
//! rendezvous hashing), our own dead-server policy and pipelining with quiet mode; its `exp` API
//! may change in any minor release.
//!
//! - Every connection has TCP_NODELAY (without it, each write of a request waits up to 40 ms
//!   for the previous one's ACK), a connect timeout and read/write timeouts.
//! - Keys reach this module only as wire keys from [`crate::key::memcached_key`]: printable ASCII
//!   without spaces, at most 250 bytes; [`proto::check_key`] refuses anything else before
//!   sending, so no key can inject a command.
//! - The buffers and their memory bounds are [`super::buffer::Buffers`] (no I/O there): this
//!   module only writes the request and reads reply bytes into it.
//! - A connection that saw an I/O error, a timeout or an unexpected reply is dropped, never reused
//!   (its stream may be out of step); one that got a clean `SERVER_ERROR`/`CLIENT_ERROR` line goes
//!   back to the pool.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::buffer::{Buffers, Step};
use super::proto::{self, MetaReply, ProtoError, TextLine};
use super::replies::{self, refused, server_error, unexpected_text};

/// What went wrong talking to one server.
#[derive(Debug)]
pub(crate) enum McError {
    /// Transport failure (connect, read, write, timeout): the connection is dropped and counts
    /// against the server's health.
    Io(io::Error),
    /// The server answered with an error line, or this client refused to send a request (a key
    /// the protocol cannot carry); either way the connection is still in step.
    Server(String),
    /// The reply did not parse: the connection is dropped.
    Protocol(String),
}

impl From<io::Error> for McError {
    fn from(e: io::Error) -> Self {
        McError::Io(e)
    }
}

impl From<ProtoError> for McError {
    fn from(e: ProtoError) -> Self {
        McError::Protocol(e.0)
    }
}

pub(crate) type McResult<T> = std::result::Result<T, McError>;

/// One connection.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    /// The request being built and the replies received.
    b: Buffers,
}

/// The reply to `mg <key> v f`.
pub(crate) struct Value {
    pub data: Vec<u8>,
    pub flags: u32,
}

impl Conn {
    /// Connects to `host:port` within `connect_timeout` (the name's lookup and every resolved
    /// address together: `backend::dial`).
    ///
    /// Until [`Conn::set_value_limit`] is called, values up to [`proto::MAX_VALUE_CAP`] are
    /// accepted.
    pub fn connect(
        host: &str,
        port: u16,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> McResult<Conn> {
        let deadline = std::time::Instant::now() + connect_timeout;
        let addrs: Vec<SocketAddr> = crate::backend::dial::resolve(host, port, deadline)?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name has no address");
        for addr in addrs {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                last = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {host}:{port} took longer than connect_timeout"),
                );
                break;
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(timeout))?;
                    s.set_write_timeout(Some(timeout))?;
                    return Ok(Conn {
                        stream: s,
                        b: Buffers::default(),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(McError::Io(last))
    }

    /// Sets the longest value this connection accepts from the server (its `item_size_max`;
    /// capped at [`proto::MAX_VALUE_CAP`]).
    pub fn set_value_limit(&mut self, item_size_max: usize) {
        self.b.set_value_limit(item_size_max);
    }

    /// Starts a request (see [`Buffers::begin`]).
    fn begin(&mut self) -> McResult<()> {
        Ok(self.b.begin()?)
    }

    /// Writes the request built in `self.b.out` in one write.
    fn flush(&mut self) -> McResult<()> {
        self.stream.write_all(&self.b.out)?;
        Ok(())
    }

    /// Reads more reply bytes into the buffers.
    fn fill(&mut self) -> McResult<()> {
        loop {
            match self.stream.read(self.b.spare()) {
                Ok(n) => return self.b.filled(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next meta reply, handed to `f` (it borrows the read buffer), then consumed.
    fn meta<T>(&mut self, f: impl FnOnce(MetaReply<'_>) -> McResult<T>) -> McResult<T> {
        let mut f = f;
        loop {
            match self.b.meta(f) {
                Step::Done(r) => return r,
                Step::Fill(back) => f = back,
            }
            self.fill()?;
        }
    }

    /// The next line of a text reply, handed to `f`, then consumed.
    fn text<T>(&mut self, f: impl FnOnce(TextLine<'_>) -> McResult<T>) -> McResult<T> {
        let mut f = f;
        loop {
            match self.b.text(f) {
                Step::Done(r) => return r,
                Step::Fill(back) => f = back,
            }
            self.fill()?;
        }
    }

    /// `mg <key> v f`: one value or a miss.
    pub fn get(&mut self, key: &str) -> McResult<Option<Value>> {
        self.begin()?;
        proto::get(&mut self.b.out, key.as_bytes(), None).map_err(refused)?;
        self.flush()?;
        self.meta(replies::get)
    }

    /// `mg <key> v f t`: one value and its seconds left (`-1`: no expiry), or a miss.
    pub fn get_expiring(&mut self, key: &str) -> McResult<Option<(Value, Option<i64>)>> {
        self.begin()?;
        proto::get_expiring(&mut self.b.out, key.as_bytes()).map_err(refused)?;
        self.flush()?;
        self.meta(replies::get_expiring)
    }

    /// Pipelined `mg <key> v f q O<i>` for every key, then `mn`: one round trip. The result has
    /// one entry per key.
    pub fn get_many(&mut self, keys: &[&str]) -> McResult<Vec<Option<Value>>> {
        self.begin()?;
        for (i, k) in keys.iter().enumerate() {
            let opaque = replies::opaque(i, keys.len())?;
            proto::get(&mut self.b.out, k.as_bytes(), Some(opaque)).map_err(refused)?;
        }
        proto::noop(&mut self.b.out);
        self.flush()?;
        let mut replies = replies::GetMany::new(keys.len());
        while !self.meta(|r| replies.step(r))? {}
        replies.finish()
    }

    /// `ms <key> <len> F<flags> [T<exptime>]` (exptime 0: no expiry).
    pub fn set(&mut self, key: &str, data: &[u8], flags: u32, exptime: u64) -> McResult<()> {
        self.begin()?;
        proto::set(&mut self.b.out, key.as_bytes(), data, flags, exptime, false)
            .map_err(refused)?;
        self.flush()?;
        let mut replies = replies::Set::new(false);
        while !self.meta(|r| replies.step(r))? {}
        replies.finish()
    }

    /// `ms <key> <len> F<flags> [T<exptime>] ME` (add): `true` when stored.
    pub fn add(&mut self, key: &str, data: &[u8], flags: u32, exptime: u64) -> McResult<bool> {
        self.begin()?;
        proto::add(&mut self.b.out, key.as_bytes(), data, flags, exptime).map_err(refused)?;
        self.flush()?;
        self.meta(replies::add)
    }

    /// `mg <key> v c f`: the value, its flags and its CAS value, or a miss.
    pub fn get_cas(&mut self, key: &str) -> McResult<Option<replies::CasValue>> {
        self.begin()?;
        proto::get_cas(&mut self.b.out, key.as_bytes()).map_err(refused)?;
        self.flush()?;
        self.meta(replies::get_cas)
    }

    /// `ma <key> C<cas> M<I|D> D<delta> v`: the new value's text, or `None` when the item
    /// changed or went since `cas` was read.
    pub fn arith(
        &mut self,
        key: &str,
        cas: u64,
        decr: bool,
        delta: u64,
    ) -> McResult<Option<Vec<u8>>> {
        self.begin()?;
        proto::arith(&mut self.b.out, key.as_bytes(), cas, decr, delta).map_err(refused)?;
        self.flush()?;
        self.meta(replies::arith)
    }

    /// `mg <key> T<exptime>` (touch, `Some` when there) or `mg <key> s t f` (`exptime =
    /// None`: the fields).
    pub fn touch_or_meta(
        &mut self,
        key: &str,
        exptime: Option<u64>,
    ) -> McResult<Option<proto::Fields>> {
        self.begin()?;
        proto::touch_or_meta(&mut self.b.out, key.as_bytes(), exptime).map_err(refused)?;
        self.flush()?;
        self.meta(replies::touch_or_meta)
    }

    /// Pipelined quiet `ms` for every item, then `mn`: one round trip.
    pub fn set_many(&mut self, items: &[(&str, &[u8], u32)], exptime: u64) -> McResult<()> {
        self.begin()?;
        for (k, d, f) in items {
            proto::set(&mut self.b.out, k.as_bytes(), d, *f, exptime, true).map_err(refused)?;
        }
        proto::noop(&mut self.b.out);
        self.flush()?;
        let mut replies = replies::Set::new(true);
        while !self.meta(|r| replies.step(r))? {}
        replies.finish()
    }

    /// Pipelined `md <key>` for every key (not quiet, to count): one round trip. Returns how
    /// many existed.
    pub fn delete_many(&mut self, keys: &[&[u8]]) -> McResult<u64> {
        self.begin()?;
        for k in keys {
            proto::delete(&mut self.b.out, k).map_err(refused)?;
        }
        self.flush()?;
        let mut replies = replies::DeleteMany::default();
        for _ in keys {
            self.meta(|r| replies.step(r))?;
        }
        replies.finish()
    }

    /// `md <key> C<cas>`: `true` when it removed the item (still at `cas`).
    pub fn delete_cas(&mut self, key: &str, cas: u64) -> McResult<bool> {
        self.begin()?;
        proto::delete_cas(&mut self.b.out, key.as_bytes(), cas).map_err(refused)?;
        self.flush()?;
        self.meta(replies::delete_cas)
    }

    /// `version`.
    pub fn version(&mut self) -> McResult<String> {
        self.begin()?;
        proto::version(&mut self.b.out);
        self.flush()?;
        self.text(|l| match l {
            TextLine::Version(v) => Ok(String::from_utf8_lossy(v).into_owned()),
            TextLine::Error(l) => Err(server_error(l)),
            other => Err(unexpected_text("version", &other)),
        })
    }

    /// `stats` (or `stats <group>`): every `STAT name value` line.
    pub fn stats(&mut self, group: &str) -> McResult<Vec<(String, String)>> {
        self.stats_each(group, |_, _| true)
    }

    /// `stats [group]`, calling `keep` with each line's name and value; the pairs it keeps are
    /// returned.
    fn stats_each(
        &mut self,
        group: &str,
        mut keep: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> McResult<Vec<(String, String)>> {
        self.begin()?;
        proto::stats(&mut self.b.out, group);
        self.flush()?;
        let mut out = Vec::new();
        loop {
            let done = self.text(|l| match l {
                TextLine::End => Ok(true),
                TextLine::Stat { name, value } => {
                    if keep(name, value) {
                        out.push((
                            String::from_utf8_lossy(name).into_owned(),
                            String::from_utf8_lossy(value).into_owned(),
                        ));
                    }
                    Ok(false)
                }
                TextLine::Error(l) => Err(server_error(l)),
                other => Err(unexpected_text("stats", &other)),
            });
            match done {
                Ok(true) => return Ok(out),
                Ok(false) => {}
                // An error line ends the reply: the stream is in step.
                Err(e) => return Err(e),
            }
        }
    }

    /// `item_size_max` from `stats settings`.
    pub fn item_size_max(&mut self) -> McResult<Option<usize>> {
        Ok(self
            .stats_each("settings", |name, _| name == b"item_size_max")?
            .into_iter()
            .find_map(|(_, v)| v.parse().ok()))
    }

    /// `curr_items` from `stats`: the items linked on the server (expired ones not yet reclaimed
    /// included).
    pub fn curr_items(&mut self) -> McResult<Option<u64>> {
        Ok(self
            .stats_each("", |name, _| name == b"curr_items")?
            .into_iter()
            .find_map(|(_, v)| v.parse().ok()))
    }

    /// `flush_all`: every item on this server.
    pub fn flush_all(&mut self) -> McResult<()> {
        self.begin()?;
        proto::flush_all(&mut self.b.out);
        self.flush()?;
        self.text(|l| match l {
            TextLine::Ok => Ok(()),
            TextLine::Error(l) => Err(server_error(l)),
            other => Err(unexpected_text("flush_all", &other)),
        })
    }

    /// `lru_crawler metadump hash` (or `all`): calls `each` with every key on the server
    /// (URL-decoded) and its `exp=` field (a Unix time, `-1` for never; `None` if absent).
    /// `Ok(false)` when the crawler is busy with another request (try again later).
    ///
    /// `hash` walks the hash table with each bucket locked and sees every linked item; `all`
    /// walks the LRU queues and skips items that are busy at that moment (being read, queued
    /// for an LRU bump), so it can miss keys (memcached's crawler.c).
    pub fn metadump(
        &mut self,
        hash: bool,
        mut each: impl FnMut(&[u8], Option<i64>),
    ) -> McResult<bool> {
        self.begin()?;
        proto::metadump(&mut self.b.out, hash);
        self.flush()?;
        let mut key = Vec::with_capacity(256);
        loop {
            let step = self.text(|l| match l {
                TextLine::End => Ok(Some(true)),
                TextLine::Busy(_) => Ok(Some(false)),
                // A server that reads `hash` as a slab class list: no hash walk.
                TextLine::BadClass(l) => Err(server_error(l)),
                TextLine::Error(l) => Err(McError::Server(format!(
                    "{} (ddf lists keys with the LRU crawler: memcached 1.6 or later, without \
                     -o no_lru_crawler)",
                    String::from_utf8_lossy(l)
                ))),
                TextLine::DumpKey { key: enc, exp } => {
                    key.clear();
                    proto::url_decode(enc, &mut key);
                    each(&key, exp);
                    Ok(None)
                }
                other => Err(unexpected_text("lru_crawler metadump", &other)),
            })?;
            if let Some(done) = step {
                return Ok(done);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::buffer::{READ_CHUNK, READ_INITIAL};
    use super::*;
    use ddf_testkit::{FakeReply, FakeServer};

    fn conn_to(fake: &FakeServer) -> Conn {
        Conn::connect(
            "127.0.0.1",
            fake.port(),
            Duration::from_secs(1),
            Duration::from_millis(200),
        )
        .unwrap()
    }

    /// A value announced within the limit but never sent: the buffer holds what arrived plus at
    /// most one chunk, never the announced length.
    #[test]
    fn an_announced_length_is_never_reserved() {
        let fake = FakeServer::start(|line: &[u8]| {
            if line.starts_with(b"mg ") {
                let mut b = b"VA 900000000 f0\r\n".to_vec();
                b.extend_from_slice(&[b'x'; 100_000]);
                FakeReply::SendThenStall(b)
            } else {
                FakeReply::Send(b"ERROR\r\n".to_vec())
            }
        });
        let mut c = conn_to(&fake);
        c.set_value_limit(usize::MAX);
        match c.get("k") {
            Err(McError::Io(e)) => assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "{e}"
            ),
            other => panic!("{:?}", other.map(|v| v.map(|v| v.data.len()))),
        }
        let (end, len, capacity) = c.b.sizes();
        assert!(end >= 100_000, "{end} bytes received");
        assert!(
            len <= end + READ_CHUNK && capacity <= end + 2 * READ_CHUNK,
            "buffer of {len} (capacity {capacity}) for {end} bytes received"
        );
    }

    /// A large value is read whole; the grown buffer shrinks back before the next request.
    #[test]
    fn a_large_value_then_a_small_one() {
        const N: usize = 700_000;
        let fake = FakeServer::start(|line: &[u8]| {
            if line == b"mg big v f" {
                let mut b = format!("VA {N} f3\r\n").into_bytes();
                b.extend((0..N).map(|i| (i % 251) as u8));
                b.extend_from_slice(b"\r\n");
                FakeReply::Send(b)
            } else if line.starts_with(b"mg ") {
                FakeReply::Send(b"EN\r\n".to_vec())
            } else {
                FakeReply::Send(b"ERROR\r\n".to_vec())
            }
        });
        let mut c = conn_to(&fake);
        let v = c.get("big").unwrap().unwrap();
        assert_eq!((v.data.len(), v.flags), (N, 3));
        assert!(
            v.data
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i % 251) as u8)
        );
        assert!(c.get("small").unwrap().is_none());
        assert_eq!(c.b.sizes().1, READ_INITIAL);
        // The server's `ERROR` for a command it does not know is a clean server error.
        assert!(matches!(c.flush_all(), Err(McError::Server(m)) if m == "ERROR"));
        assert!(c.get("small").unwrap().is_none());
    }

    /// Bytes nobody asked for put the connection out of step: refused before the next request.
    #[test]
    fn unsolicited_bytes_are_a_protocol_error() {
        let fake = FakeServer::start(|_: &[u8]| FakeReply::Send(b"EN\r\nEN\r\n".to_vec()));
        let mut c = conn_to(&fake);
        assert!(c.get("a").unwrap().is_none());
        // The second `EN` may arrive in the same read or later; either way the stream is out
        // of step by the time it is noticed.
        std::thread::sleep(Duration::from_millis(50));
        let _ = c.fill();
        assert!(matches!(c.get("b"), Err(McError::Protocol(m)) if m.contains("nobody asked")));
    }
}
