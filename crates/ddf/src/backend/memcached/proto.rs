//! The memcached protocol as pure code over byte buffers: request formatting, an incremental
//! reply parser, the `lru_crawler metadump` line and its URL decoding. No I/O here: the blocking
//! transport (`client.rs`) and a later async one feed the same functions.
//!
//! Why by hand (no maintained crate fits): the `memcache` crate's `exp::MetaClient` owns its
//! socket and lacks the text commands we need (`stats settings`, `lru_crawler metadump`); see
//! `client.rs` for the whole reasoning.
//!
//! The parser is stateless: [`parse_meta`] and [`parse_text`] look at the unconsumed bytes of a
//! connection's buffer and answer [`Parsed::Incomplete`] (read more, call again with the longer
//! buffer) or one reply and how many bytes it used. So it never owns the stream, and replies to
//! many requests in flight can be parsed one after another from one buffer. It never allocates:
//! a value is a slice of the buffer, and a length a peer announces is only compared, never
//! reserved.

use crate::backend::ascii::push_uint;
use std::fmt;

/// The longest reply line accepted (a metadump line holds one key; a peer that is not memcached
/// must not make us buffer without bound).
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// The absolute cap on an announced value length, whatever a server says its item limit is
/// (memcached's `-I` allows at most 1 GiB).
pub(crate) const MAX_VALUE_CAP: usize = 1 << 30;

/// The longest key memcached accepts.
const MAX_KEY: usize = 250;

/// A reply that is not what the protocol allows: the stream is out of step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProtoError(pub(crate) String);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The result of one parse step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed<T> {
    /// The buffer holds only part of the next reply: read more and parse again.
    Incomplete,
    /// One reply and the number of bytes it used from the start of the buffer.
    Done(T, usize),
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// Refuses a key the text protocol cannot carry: empty, longer than 250 bytes, or holding a
/// space, a control character or a non-ASCII byte (which could end the command line early and
/// inject another command).
pub(crate) fn check_key(key: &[u8]) -> Result<(), ProtoError> {
    if key.is_empty() || key.len() > MAX_KEY || !key.iter().all(|&b| b.is_ascii_graphic()) {
        let shown: String = String::from_utf8_lossy(key).chars().take(60).collect();
        return Err(ProtoError(format!(
            "refusing to send the key {shown:?} ({} bytes): a memcached key is 1 to {MAX_KEY} \
             printable ASCII bytes without spaces",
            key.len()
        )));
    }
    Ok(())
}

/// Checks `key`, then appends `<verb> <key>`: how every keyed meta command starts (nothing is
/// appended for a refused key).
fn keyed(buf: &mut Vec<u8>, verb: &[u8; 2], key: &[u8]) -> Result<(), ProtoError> {
    check_key(key)?;
    buf.extend_from_slice(verb);
    buf.push(b' ');
    buf.extend_from_slice(key);
    Ok(())
}

/// `mg <key> v f` (value and client flags); quiet with an opaque for pipelining
/// (`mg <key> v f q O<opaque>`: a miss sends nothing).
///
/// # Errors
///
/// A key [`check_key`] refuses; nothing is appended then.
pub(crate) fn get(buf: &mut Vec<u8>, key: &[u8], quiet: Option<u32>) -> Result<(), ProtoError> {
    keyed(buf, b"mg", key)?;
    buf.extend_from_slice(b" v f");
    if let Some(opaque) = quiet {
        buf.extend_from_slice(b" q O");
        push_uint(buf, u64::from(opaque));
    }
    buf.extend_from_slice(b"\r\n");
    Ok(())
}

/// `mg <key> v f t`: value, client flags and seconds left (a near cache fill).
///
/// # Errors
///
/// A key [`check_key`] refuses; nothing is appended then.
pub(crate) fn get_expiring(buf: &mut Vec<u8>, key: &[u8]) -> Result<(), ProtoError> {
    keyed(buf, b"mg", key)?;
    buf.extend_from_slice(b" v f t\r\n");
    Ok(())
}

/// `ms <key> <len> F<flags> [T<exptime>] [q]` and the data block (exptime 0: no expiry).
///
/// # Errors
///
/// A key [`check_key`] refuses; nothing is appended then.
pub(crate) fn set(
    buf: &mut Vec<u8>,
    key: &[u8],
    data: &[u8],
    flags: u32,
    exptime: u64,
    quiet: bool,
) -> Result<(), ProtoError> {
    store(buf, key, data, flags, exptime, quiet, None)
}

/// `ms <key> <len> F<flags> [T<exptime>] ME` and the data block: store only if the key holds
/// no item (`HD` stored, `NS` not stored).
///
/// # Errors
///
/// A key [`check_key`] refuses; nothing is appended then.
pub(crate) fn add(
    buf: &mut Vec<u8>,
    key: &[u8],
    data: &[u8],
    flags: u32,
    exptime: u64,
) -> Result<(), ProtoError> {
    store(buf, key, data, flags, exptime, false, Some(b'E'))
}

/// `ms` with an optional mode (`M<mode>`: `E` add; none: set).
fn store(
    buf: &mut Vec<u8>,
    key: &[u8],
    data: &[u8],
    flags: u32,
    exptime: u64,
    quiet: bool,
    mode: Option<u8>,
) -> Result<(), ProtoError> {
    check_key(key)?;
    buf.reserve(key.len() + data.len() + 48);
    buf.extend_from_slice(b"ms ");
    buf.extend_from_slice(key);
    buf.push(b' ');
    push_uint(buf, data.len() as u64);
    buf.extend_from_slice(b" F");
    push_uint(buf, u64::from(flags));
    if exptime > 0 {
        buf.extend_from_slice(b" T");
        push_uint(buf, exptime);
    }
    if let Some(m) = mode {
        buf.extend_from_slice(b" M");
        buf.push(m);
    }
    if quiet {
        buf.extend_from_slice(b" q");
    }
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(data);
    buf.extend_from_slice(b"\r\n");
    Ok(())
}

/// `mg <key> v c f`: the value, its CAS value and client flags (for `incr`).
///
/// # Errors
///
/// A key [`check_key`] refuses; nothing is appended then.
pub(crate) fn get_cas(buf: &mut Vec<u8>, key: &[u8]) -> Result<(), ProtoError> {
    keyed(buf, b"mg", key)?;
    buf.extend_from_slice(b" v c f\r\n");
    Ok(())
}

/// `ma <key> C<cas> M<I|D> D<delta> v`: arithmetic on the item only if its CAS value is still
/// `cas` (`VA` with the new value; `EX` when another write came first; `NF` when it is gone).
///
/// # Errors
///
/// A key [`check_key`] refuses; nothing is appended then.
pub(crate) fn arith(
    buf: &mut Vec<u8>,
    key: &[u8],
    cas: u64,
    decr: bool,
    delta: u64,
) -> Result<(), ProtoError> {
    keyed(buf, b"ma", key)?;
    buf.extend_from_slice(b" C");
    push_uint(buf, cas);
    buf.extend_from_slice(if decr { b" MD D" } else { b" MI D" });
    push_uint(buf, delta);
    buf.extend_from_slice(b" v\r\n");
    Ok(())
}

/// `mg <key> T<exptime>` (touch: `HD` when there, `EN` when not; exptime 0: no expiry), or
/// with `exptime = None` `mg <key> s t f` (size, seconds left, client flags, for `meta`).
///
/// # Errors
///
/// A key [`check_key`] refuses; nothing is appended then.
pub(crate) fn touch_or_meta(
    buf: &mut Vec<u8>,
    key: &[u8],
    exptime: Option<u64>,
) -> Result<(), ProtoError> {
    keyed(buf, b"mg", key)?;
    match exptime {
        Some(t) => {
            buf.extend_from_slice(b" T");
            push_uint(buf, t);
        }
        None => buf.extend_from_slice(b" s t f"),
    }
    buf.extend_from_slice(b"\r\n");
    Ok(())
}

/// `md <key>` (not quiet: the caller counts `HD` against `NF`).
///
/// # Errors
///
/// A key [`check_key`] refuses; nothing is appended then.
pub(crate) fn delete(buf: &mut Vec<u8>, key: &[u8]) -> Result<(), ProtoError> {
    keyed(buf, b"md", key)?;
    buf.extend_from_slice(b"\r\n");
    Ok(())
}

/// `md <key> C<cas>`: removes the item only while its CAS value is `cas` (`HD` removed, `EX`
/// changed since, `NF` gone).
///
/// # Errors
///
/// A key [`check_key`] refuses; nothing is appended then.
pub(crate) fn delete_cas(buf: &mut Vec<u8>, key: &[u8], cas: u64) -> Result<(), ProtoError> {
    keyed(buf, b"md", key)?;
    buf.extend_from_slice(b" C");
    push_uint(buf, cas);
    buf.extend_from_slice(b"\r\n");
    Ok(())
}

/// `mn`: the server answers `MN` after every earlier reply (the end of a quiet pipeline).
pub(crate) fn noop(buf: &mut Vec<u8>) {
    buf.extend_from_slice(b"mn\r\n");
}

/// `version`.
pub(crate) fn version(buf: &mut Vec<u8>) {
    buf.extend_from_slice(b"version\r\n");
}

/// `stats` or `stats <group>` (`group` is one of our constants: `settings`, ...).
pub(crate) fn stats(buf: &mut Vec<u8>, group: &str) {
    buf.extend_from_slice(b"stats");
    if !group.is_empty() {
        buf.push(b' ');
        buf.extend_from_slice(group.as_bytes());
    }
    buf.extend_from_slice(b"\r\n");
}

/// `flush_all`.
pub(crate) fn flush_all(buf: &mut Vec<u8>) {
    buf.extend_from_slice(b"flush_all\r\n");
}

/// `lru_crawler metadump hash` (walks the hash table) or `lru_crawler metadump all` (the LRU
/// queues).
pub(crate) fn metadump(buf: &mut Vec<u8>, hash: bool) {
    buf.extend_from_slice(if hash {
        b"lru_crawler metadump hash\r\n"
    } else {
        b"lru_crawler metadump all\r\n"
    });
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

/// The status of a meta reply without a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// `HD`: success (stored, deleted, ...).
    Hd,
    /// `NF`: not found (`md`).
    Nf,
    /// `EN`: a miss (`mg`).
    En,
    /// `NS`: not stored.
    Ns,
    /// `EX`: exists (a CAS conflict).
    Ex,
    /// `MN`: the answer to `mn`.
    Mn,
}

impl Status {
    /// The status as the server sends it.
    pub(crate) fn token(self) -> &'static str {
        match self {
            Status::Hd => "HD",
            Status::Nf => "NF",
            Status::En => "EN",
            Status::Ns => "NS",
            Status::Ex => "EX",
            Status::Mn => "MN",
        }
    }
}

/// One reply to a meta command (`mg`, `ms`, `md`, `mn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetaReply<'a> {
    /// `VA <size> <flags>*` and its data block.
    Value {
        /// The data block, without its CRLF.
        data: &'a [u8],
        /// The client flags (`f<n>`; 0 when absent).
        flags: u32,
        /// The opaque (`O<n>`), when the request carried one.
        opaque: Option<u32>,
        /// The other fields the request asked for.
        fields: Fields,
    },
    /// A reply without a value.
    Status {
        /// Which one.
        status: Status,
        /// The opaque (`O<n>`), when the request carried one.
        opaque: Option<u32>,
        /// The other fields the request asked for.
        fields: Fields,
    },
    /// `SERVER_ERROR ...`, `CLIENT_ERROR ...` or `ERROR`: the whole line. The stream is in step.
    Error(&'a [u8]),
}

/// The fields of a meta reply beyond flags and opaque, each when the request asked for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Fields {
    /// `c<n>`: the item's CAS value.
    pub(crate) cas: Option<u64>,
    /// `t<n>`: seconds left, `-1` for no expiry.
    pub(crate) ttl: Option<i64>,
    /// `s<n>`: the value's size in bytes.
    pub(crate) size: Option<u64>,
    /// `f<n>`: the client flags (in a reply without a value).
    pub(crate) flags: Option<u32>,
}

/// One line of a reply to a text command (`version`, `stats`, `flush_all`,
/// `lru_crawler metadump`); which ones a command allows is its caller's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TextLine<'a> {
    /// `END`: the end of a `stats` or metadump reply.
    End,
    /// `OK` (`flush_all`).
    Ok,
    /// `VERSION <v>`: the version text.
    Version(&'a [u8]),
    /// `STAT <name> <value>` (the value may hold spaces).
    Stat {
        /// The statistic's name.
        name: &'a [u8],
        /// Its value.
        value: &'a [u8],
    },
    /// A metadump line `key=<url-encoded key> exp=<unix time, or -1> ...`: the key, still
    /// URL-encoded (decode it with [`url_decode`]), and its expiry as the server gave it
    /// (`None` when the line has no readable `exp=` field).
    DumpKey {
        /// The URL-encoded key.
        key: &'a [u8],
        /// `exp=`: an absolute Unix time in seconds, or `-1` (never).
        exp: Option<i64>,
    },
    /// `BUSY ...`: the LRU crawler is busy with another request; the whole line.
    Busy(&'a [u8]),
    /// `BADCLASS ...`: the server read the metadump argument as a slab class list.
    BadClass(&'a [u8]),
    /// `SERVER_ERROR ...`, `CLIENT_ERROR ...` or `ERROR`: the whole line.
    Error(&'a [u8]),
    /// Any other line.
    Other(&'a [u8]),
}

/// A short, printable rendering of a reply line for an error message.
pub(crate) fn shown(line: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(line).chars().take(120).collect();
    format!("{s:?}")
}

/// The error for a reply the command does not allow.
pub(crate) fn unexpected(what: &str, line: &[u8]) -> ProtoError {
    ProtoError(format!("unexpected reply to {what}: {}", shown(line)))
}

/// The next line of `buf` without its line end (`\r\n`, or a bare `\n`) and the bytes it used.
///
/// # Errors
///
/// No line end within [`MAX_LINE`] bytes.
fn line(buf: &[u8]) -> Result<Parsed<&[u8]>, ProtoError> {
    let window = &buf[..buf.len().min(MAX_LINE)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let l = &buf[..i];
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            Ok(Parsed::Done(l, i + 1))
        }
        None if buf.len() >= MAX_LINE => Err(ProtoError(format!(
            "a reply line longer than {MAX_LINE} bytes (is this a memcached server?)"
        ))),
        None => Ok(Parsed::Incomplete),
    }
}

/// Whether `line` is an error line: `SERVER_ERROR ...`, `CLIENT_ERROR ...`, `ERROR`.
fn is_error_line(line: &[u8]) -> bool {
    let first = line.split(|&b| b == b' ').next().unwrap_or(line);
    matches!(first, b"SERVER_ERROR" | b"CLIENT_ERROR" | b"ERROR")
}

/// A decimal number of ASCII digits only (no sign, no spaces), within `T`'s range.
fn number<T: TryFrom<u64>>(s: &[u8]) -> Option<T> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = s.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    T::try_from(n).ok()
}

/// The client flags (`f<n>`), opaque (`O<n>`) and CAS value (`c<n>`) among a meta reply's
/// flags; other flags are ignored.
fn meta_flags<'a>(
    what: &str,
    line: &[u8],
    tokens: impl Iterator<Item = &'a [u8]>,
) -> Result<(u32, Option<u32>, Fields), ProtoError> {
    let (mut flags, mut opaque, mut fields) = (0, None, Fields::default());
    let bad = || unexpected(what, line);
    for tok in tokens {
        match tok.split_first() {
            Some((b'f', n)) => {
                flags = number(n).ok_or_else(bad)?;
                fields.flags = Some(flags);
            }
            Some((b'O', n)) => opaque = Some(number(n).ok_or_else(bad)?),
            Some((b'c', n)) => fields.cas = Some(number(n).ok_or_else(bad)?),
            Some((b's', n)) => fields.size = Some(number(n).ok_or_else(bad)?),
            Some((b't', b"-1")) => fields.ttl = Some(-1),
            Some((b't', n)) => fields.ttl = Some(number(n).ok_or_else(bad)?),
            _ => {}
        }
    }
    Ok((flags, opaque, fields))
}

/// Parses the next reply to a meta command from the start of `buf`.
///
/// `max_value` is the largest value length accepted (the server's item limit, at most
/// [`MAX_VALUE_CAP`]); a longer announced length is refused before any of it is read, so a peer
/// cannot make the caller buffer what it announces.
///
/// # Errors
///
/// A line that is no meta reply, a malformed `VA` line, an announced length above `max_value`,
/// a data block not ending in CRLF, or a line longer than [`MAX_LINE`].
pub(crate) fn parse_meta(
    buf: &[u8],
    max_value: usize,
) -> Result<Parsed<MetaReply<'_>>, ProtoError> {
    let (l, used) = match line(buf)? {
        Parsed::Done(l, used) => (l, used),
        Parsed::Incomplete => return Ok(Parsed::Incomplete),
    };
    if is_error_line(l) {
        return Ok(Parsed::Done(MetaReply::Error(l), used));
    }
    let mut tokens = l.split(|&b| b == b' ').filter(|t| !t.is_empty());
    let status = match tokens.next() {
        Some(b"VA") => {
            let size: usize = tokens
                .next()
                .and_then(number)
                .ok_or_else(|| unexpected("a meta command", l))?;
            let max = max_value.min(MAX_VALUE_CAP);
            if size > max {
                return Err(ProtoError(format!(
                    "the server announced a value of {size} bytes; this server's item limit is \
                     {max} bytes (item_size_max), so no value can be that long"
                )));
            }
            let (flags, opaque, fields) = meta_flags("a meta command", l, tokens)?;
            // `size <= MAX_VALUE_CAP` and `used <= MAX_LINE`: no overflow.
            let end = used + size + 2;
            let Some(block) = buf.get(used..end) else {
                return Ok(Parsed::Incomplete);
            };
            let Some(data) = block.strip_suffix(b"\r\n") else {
                return Err(ProtoError(format!(
                    "a value block of {size} bytes did not end with CRLF"
                )));
            };
            return Ok(Parsed::Done(
                MetaReply::Value {
                    data,
                    flags,
                    opaque,
                    fields,
                },
                end,
            ));
        }
        Some(b"HD") => Status::Hd,
        Some(b"NF") => Status::Nf,
        Some(b"EN") => Status::En,
        Some(b"NS") => Status::Ns,
        Some(b"EX") => Status::Ex,
        Some(b"MN") => Status::Mn,
        _ => return Err(unexpected("a meta command", l)),
    };
    let (_, opaque, fields) = meta_flags("a meta command", l, tokens)?;
    Ok(Parsed::Done(
        MetaReply::Status {
            status,
            opaque,
            fields,
        },
        used,
    ))
}

/// Parses the next line of a reply to a text command from the start of `buf`.
///
/// # Errors
///
/// A line longer than [`MAX_LINE`].
pub(crate) fn parse_text(buf: &[u8]) -> Result<Parsed<TextLine<'_>>, ProtoError> {
    let (l, used) = match line(buf)? {
        Parsed::Done(l, used) => (l, used),
        Parsed::Incomplete => return Ok(Parsed::Incomplete),
    };
    let parsed = match l {
        b"END" => TextLine::End,
        b"OK" => TextLine::Ok,
        _ if is_error_line(l) => TextLine::Error(l),
        _ => {
            if let Some(v) = l.strip_prefix(b"VERSION ") {
                TextLine::Version(v)
            } else if let Some(rest) = l.strip_prefix(b"STAT ") {
                let mut it = rest.splitn(2, |&b| b == b' ');
                match (it.next(), it.next()) {
                    (Some(name), Some(value)) if !name.is_empty() => TextLine::Stat { name, value },
                    _ => TextLine::Other(l),
                }
            } else if let Some(rest) = l.strip_prefix(b"key=") {
                let mut fields = rest.split(|&b| b == b' ');
                let key = fields.next().unwrap_or(rest);
                let exp = fields
                    .find_map(|f| f.strip_prefix(b"exp="))
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse::<i64>().ok());
                TextLine::DumpKey { key, exp }
            } else if l.starts_with(b"BUSY") {
                TextLine::Busy(l)
            } else if l.starts_with(b"BADCLASS") {
                TextLine::BadClass(l)
            } else {
                TextLine::Other(l)
            }
        }
    };
    Ok(Parsed::Done(parsed, used))
}

/// Decodes memcached's URL encoding of keys in `metadump` (`%XX`; `+` is not used), appending
/// to `out`. A `%` not followed by two hex digits stands for itself.
pub(crate) fn url_decode(s: &[u8], out: &mut Vec<u8>) {
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
#[path = "proto_tests.rs"]
mod tests;
