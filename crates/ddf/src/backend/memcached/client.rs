//! A small memcached client: the meta protocol (plus a few text commands) over std `TcpStream`.
//!
//! Why in-house rather than the `memcache` crate's `exp::MetaClient` (NOTES.md §3): we need
//! exactly six commands (`mg`, `ms`, `md`, `mn`, and the text `version`, `stats settings`,
//! `lru_crawler metadump`, `flush_all`, which that crate lacks), our own placement (pymemcache's
//! rendezvous hashing), our own dead-server policy and pipelining with quiet mode; its `exp` API
//! may change in any minor release. About 300 lines over `TcpStream` keep all of that in one
//! place with no dependency.
//!
//! - Every connection has TCP_NODELAY (NOTES.md §1 item 6: 44 ms per write without it), a connect
//!   timeout and read/write timeouts.
//! - Keys reach this module only as wire keys from [`crate::key::memcached_key`]: printable ASCII
//!   without spaces, at most 250 bytes, so no key can inject a command.
//! - A connection that saw an I/O error, a timeout or an unexpected reply is dropped, never reused
//!   (its stream may be out of step); one that got a clean `SERVER_ERROR`/`CLIENT_ERROR` line goes
//!   back to the pool.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The longest reply line accepted.
const MAX_LINE: u64 = 64 * 1024;
/// The largest value accepted from a server (memcached's `-I` allows at most 1 GiB).
const MAX_VALUE: usize = 1 << 30;

/// What went wrong talking to one server.
#[derive(Debug)]
pub(crate) enum McError {
    /// Transport failure (connect, read, write, timeout): the connection is dropped and counts
    /// against the server's health.
    Io(io::Error),
    /// The server answered with an error line; the connection is still in step.
    Server(String),
    /// The reply did not parse: the connection is dropped.
    Protocol(String),
}

impl From<io::Error> for McError {
    fn from(e: io::Error) -> Self {
        McError::Io(e)
    }
}

pub(crate) type McResult<T> = std::result::Result<T, McError>;

/// One connection.
#[derive(Debug)]
pub(crate) struct Conn {
    reader: BufReader<TcpStream>,
    line: Vec<u8>,
}

/// The reply to `mg <key> v f`.
pub(crate) struct Value {
    pub data: Vec<u8>,
    pub flags: u32,
}

fn protocol(what: &str, line: &[u8]) -> McError {
    let shown: String = String::from_utf8_lossy(line).chars().take(120).collect();
    McError::Protocol(format!("unexpected reply to {what}: {shown:?}"))
}

/// An error line (`SERVER_ERROR ...`, `CLIENT_ERROR ...`, `ERROR`) as a clean server error.
fn error_line(line: &[u8]) -> Option<McError> {
    let s = String::from_utf8_lossy(line);
    (s.starts_with("SERVER_ERROR") || s.starts_with("CLIENT_ERROR") || s == "ERROR")
        .then(|| McError::Server(s.into_owned()))
}

impl Conn {
    /// Connects to `host:port` within `connect_timeout`, trying each resolved address.
    pub fn connect(
        host: &str,
        port: u16,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> McResult<Conn> {
        let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name has no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, connect_timeout) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(timeout))?;
                    s.set_write_timeout(Some(timeout))?;
                    return Ok(Conn {
                        reader: BufReader::with_capacity(64 * 1024, s),
                        line: Vec::with_capacity(256),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(McError::Io(last))
    }

    pub fn send(&mut self, buf: &[u8]) -> McResult<()> {
        self.reader.get_mut().write_all(buf)?;
        Ok(())
    }

    /// Reads one line without its `\r\n` (or `\n`) into `self.line`.
    fn read_line(&mut self) -> McResult<&[u8]> {
        self.line.clear();
        // A reply line is short (a metadump line holds one key); a peer that is not memcached
        // must not make us buffer without bound.
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut self.line)?;
        if n as u64 == MAX_LINE && self.line.last() != Some(&b'\n') {
            return Err(McError::Protocol(format!(
                "a reply line longer than {MAX_LINE} bytes (is this a memcached server?)"
            )));
        }
        if n == 0 {
            return Err(McError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        while matches!(self.line.last(), Some(b'\n' | b'\r')) {
            self.line.pop();
        }
        Ok(&self.line)
    }

    /// Reads a data block of `n` bytes and its `\r\n`.
    fn read_data(&mut self, n: usize) -> McResult<Vec<u8>> {
        // The size comes from the peer: never allocate more than an item can be.
        if n > MAX_VALUE {
            return Err(McError::Protocol(format!(
                "the server announced a value of {n} bytes, more than memcached's largest item"
            )));
        }
        let mut data = vec![0; n + 2];
        self.reader.read_exact(&mut data)?;
        if !data.ends_with(b"\r\n") {
            return Err(McError::Protocol(
                "a value block did not end with CRLF".into(),
            ));
        }
        data.truncate(n);
        Ok(data)
    }

    /// Parses `VA <size> <flags>*` (after the line was read): size, client flags, opaque.
    fn parse_va(line: &[u8]) -> Option<(usize, u32, Option<usize>)> {
        let s = std::str::from_utf8(line).ok()?;
        let mut it = s.split(' ');
        if it.next()? != "VA" {
            return None;
        }
        let size = it.next()?.parse().ok()?;
        let (mut flags, mut opaque) = (0, None);
        for tok in it {
            match tok.as_bytes().first() {
                Some(b'f') => flags = tok[1..].parse().ok()?,
                Some(b'O') => opaque = Some(tok[1..].parse().ok()?),
                _ => {}
            }
        }
        Some((size, flags, opaque))
    }

    /// `mg <key> v f`: one value or a miss.
    pub fn get(&mut self, key: &str) -> McResult<Option<Value>> {
        let mut cmd = Vec::with_capacity(key.len() + 12);
        cmd.extend_from_slice(b"mg ");
        cmd.extend_from_slice(key.as_bytes());
        cmd.extend_from_slice(b" v f\r\n");
        self.send(&cmd)?;
        self.read_get_reply()
    }

    fn read_get_reply(&mut self) -> McResult<Option<Value>> {
        let line = self.read_line()?;
        if line == b"EN" {
            return Ok(None);
        }
        if let Some(e) = error_line(line) {
            return Err(e);
        }
        let (size, flags, _) = Self::parse_va(line).ok_or_else(|| protocol("mg", line))?;
        let data = self.read_data(size)?;
        Ok(Some(Value { data, flags }))
    }

    /// Pipelined `mg <key> v f O<i> q` for every key, then `mn`: one round trip. The result has
    /// one entry per key.
    pub fn get_many(&mut self, keys: &[&str]) -> McResult<Vec<Option<Value>>> {
        let mut cmd = Vec::with_capacity(keys.iter().map(|k| k.len() + 24).sum::<usize>() + 4);
        for (i, k) in keys.iter().enumerate() {
            cmd.extend_from_slice(b"mg ");
            cmd.extend_from_slice(k.as_bytes());
            cmd.extend_from_slice(format!(" v f q O{i}\r\n").as_bytes());
        }
        cmd.extend_from_slice(b"mn\r\n");
        self.send(&cmd)?;
        let mut out: Vec<Option<Value>> = keys.iter().map(|_| None).collect();
        let mut first_err = None;
        loop {
            let line = self.read_line()?;
            if line == b"MN" {
                break;
            }
            if let Some(e) = error_line(line) {
                first_err.get_or_insert(e);
                continue;
            }
            let (size, flags, opaque) = Self::parse_va(line).ok_or_else(|| protocol("mg", line))?;
            let data = self.read_data(size)?;
            let slot = opaque
                .and_then(|i| out.get_mut(i))
                .ok_or_else(|| McError::Protocol("mg reply with an unknown opaque".into()))?;
            *slot = Some(Value { data, flags });
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    fn push_set(cmd: &mut Vec<u8>, key: &str, data: &[u8], flags: u32, exptime: u64, quiet: bool) {
        cmd.extend_from_slice(b"ms ");
        cmd.extend_from_slice(key.as_bytes());
        let q = if quiet { " q" } else { "" };
        let t = if exptime > 0 {
            format!(" T{exptime}")
        } else {
            String::new()
        };
        cmd.extend_from_slice(format!(" {} F{flags}{t}{q}\r\n", data.len()).as_bytes());
        cmd.extend_from_slice(data);
        cmd.extend_from_slice(b"\r\n");
    }

    /// `ms <key> <len> F<flags> [T<exptime>]` (exptime 0: no expiry).
    pub fn set(&mut self, key: &str, data: &[u8], flags: u32, exptime: u64) -> McResult<()> {
        let mut cmd = Vec::with_capacity(key.len() + data.len() + 48);
        Self::push_set(&mut cmd, key, data, flags, exptime, false);
        self.send(&cmd)?;
        let line = self.read_line()?;
        if line == b"HD" {
            return Ok(());
        }
        if let Some(e) = error_line(line) {
            return Err(e);
        }
        Err(protocol("ms", line))
    }

    /// Pipelined quiet `ms` for every item, then `mn`: one round trip.
    pub fn set_many(&mut self, items: &[(&str, &[u8], u32)], exptime: u64) -> McResult<()> {
        let mut cmd = Vec::with_capacity(
            items
                .iter()
                .map(|(k, d, _)| k.len() + d.len() + 48)
                .sum::<usize>(),
        );
        for (k, d, f) in items {
            Self::push_set(&mut cmd, k, d, *f, exptime, true);
        }
        cmd.extend_from_slice(b"mn\r\n");
        self.send(&cmd)?;
        let mut first_err = None;
        loop {
            let line = self.read_line()?;
            if line == b"MN" {
                break;
            }
            let e = error_line(line).unwrap_or_else(|| protocol("ms", line));
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Pipelined `md <key>` for every key (not quiet, to count): one round trip. Returns how
    /// many existed.
    pub fn delete_many(&mut self, keys: &[&[u8]]) -> McResult<u64> {
        let mut cmd = Vec::with_capacity(keys.iter().map(|k| k.len() + 6).sum::<usize>());
        for k in keys {
            cmd.extend_from_slice(b"md ");
            cmd.extend_from_slice(k);
            cmd.extend_from_slice(b"\r\n");
        }
        self.send(&cmd)?;
        let mut n = 0;
        let mut first_err = None;
        for _ in keys {
            let line = self.read_line()?;
            match line {
                b"HD" => n += 1,
                b"NF" => {}
                other => {
                    let e = error_line(other).unwrap_or_else(|| protocol("md", other));
                    if matches!(e, McError::Protocol(_)) {
                        return Err(e);
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(n), Err)
    }

    /// `version`.
    pub fn version(&mut self) -> McResult<String> {
        self.send(b"version\r\n")?;
        let line = self.read_line()?;
        match line.strip_prefix(b"VERSION ") {
            Some(v) => Ok(String::from_utf8_lossy(v).into_owned()),
            None => Err(protocol("version", line)),
        }
    }

    /// `stats` (or `stats <group>`): every `STAT name value` line.
    pub fn stats(&mut self, group: &str) -> McResult<Vec<(String, String)>> {
        let cmd = if group.is_empty() {
            "stats\r\n".to_owned()
        } else {
            format!("stats {group}\r\n")
        };
        self.send(cmd.as_bytes())?;
        let mut out = Vec::new();
        loop {
            let line = self.read_line()?;
            if line == b"END" {
                return Ok(out);
            }
            if let Some(e) = error_line(line) {
                return Err(e);
            }
            let text = String::from_utf8_lossy(line);
            let mut it = text.splitn(3, ' ');
            match (it.next(), it.next(), it.next()) {
                (Some("STAT"), Some(name), Some(value)) => {
                    out.push((name.to_owned(), value.to_owned()));
                }
                _ => return Err(protocol("stats", line)),
            }
        }
    }

    /// `item_size_max` from `stats settings`.
    pub fn item_size_max(&mut self) -> McResult<Option<usize>> {
        Ok(self
            .stats("settings")?
            .into_iter()
            .find(|(k, _)| k == "item_size_max")
            .and_then(|(_, v)| v.parse().ok()))
    }

    /// `curr_items` from `stats`: the items linked on the server (expired ones not yet reclaimed
    /// included).
    pub fn curr_items(&mut self) -> McResult<Option<u64>> {
        self.send(b"stats\r\n")?;
        let mut found = None;
        loop {
            let line = self.read_line()?;
            if line == b"END" {
                return Ok(found);
            }
            if let Some(e) = error_line(line) {
                return Err(e);
            }
            if let Some(v) = line.strip_prefix(b"STAT curr_items ") {
                found = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
            }
        }
    }

    /// `flush_all`: every item on this server.
    pub fn flush_all(&mut self) -> McResult<()> {
        self.send(b"flush_all\r\n")?;
        let line = self.read_line()?;
        if line == b"OK" {
            return Ok(());
        }
        Err(error_line(line).unwrap_or_else(|| protocol("flush_all", line)))
    }

    /// `lru_crawler metadump hash` (or `all`): calls `each` with every key on the server
    /// (URL-decoded). `Ok(false)` when the crawler is busy with another request (try again
    /// later).
    ///
    /// `hash` walks the hash table with each bucket locked and sees every linked item; `all`
    /// walks the LRU queues and skips items that are busy at that moment (being read, queued
    /// for an LRU bump), so it can miss keys (memcached's crawler.c).
    pub fn metadump(&mut self, hash: bool, mut each: impl FnMut(&[u8])) -> McResult<bool> {
        self.send(if hash {
            b"lru_crawler metadump hash\r\n"
        } else {
            b"lru_crawler metadump all\r\n"
        })?;
        let mut key = Vec::with_capacity(256);
        loop {
            let line = self.read_line()?;
            if line == b"END" {
                return Ok(true);
            }
            if line.starts_with(b"BUSY") {
                return Ok(false);
            }
            if line.starts_with(b"BADCLASS") {
                // A server that reads `hash` as a slab class list: no hash walk.
                return Err(McError::Server(String::from_utf8_lossy(line).into_owned()));
            }
            if let Some(e) = error_line(line) {
                let McError::Server(m) = e else { return Err(e) };
                return Err(McError::Server(format!(
                    "{m} (ddf lists keys with the LRU crawler: memcached 1.6 or later, without \
                     -o no_lru_crawler)"
                )));
            }
            let Some(rest) = line.strip_prefix(b"key=") else {
                return Err(protocol("lru_crawler metadump", line));
            };
            let enc = rest.split(|&b| b == b' ').next().unwrap_or(rest);
            key.clear();
            url_decode(enc, &mut key);
            each(&key);
        }
    }
}

/// Decodes memcached's URL encoding of keys in `metadump` (`%XX`; `+` is not used).
fn url_decode(s: &[u8], out: &mut Vec<u8>) {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && i + 2 < s.len()
            && let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_decoding() {
        let mut out = Vec::new();
        url_decode(b"a%20b%25%0D%0A%", &mut out);
        assert_eq!(out, b"a b%\r\n%");
    }

    #[test]
    fn va_lines() {
        assert_eq!(Conn::parse_va(b"VA 5 f16 O3"), Some((5, 16, Some(3))));
        assert_eq!(Conn::parse_va(b"VA 0 f0"), Some((0, 0, None)));
        assert_eq!(Conn::parse_va(b"HD"), None);
    }
}
