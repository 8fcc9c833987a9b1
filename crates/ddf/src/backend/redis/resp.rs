//! RESP2 for the hot commands (`GET`, `SET [PX]`, `UNLINK`), pure over byte buffers: request
//! encoding and a reply parser. No I/O here: the sync plain and unix connections
//! ([`super::conn`]) feed these functions, and so does the async face's caller-driven
//! connection (`aio/redis/direct.rs`, through [`whole`]).
//!
//! Why by hand, beside redis-rs (which still sends and parses everything else): on the write
//! path redis-rs builds a `Cmd` (two vectors), packs it into a third, parses the reply with a
//! combinator parser into a `Value` and converts that; `write_path` measured the whole at a
//! few microseconds per call above a bare loop, a few percent of a loopback round trip. Here a
//! request is appended to a buffer the connection keeps, and a reply is read from the bytes
//! received without copying a status line.
//!
//! The parser is stateless, like the Memcached one: [`parse`] looks at the unconsumed bytes of
//! a connection's buffer and answers [`Parsed::Incomplete`] (read more, call again with the
//! longer buffer) or one reply and how many bytes it used. It never allocates and never
//! reserves a length a peer announces; a bulk length above [`MAX_BULK`] (Redis's own largest
//! string) or a line longer than [`MAX_LINE`] is refused. An error reply is handed back raw
//! ([`Reply::Error`]) so that redis-rs classifies it (the error kinds the rest of the backend
//! maps stay redis-rs's).

use crate::backend::ascii::push_uint;
use std::time::Duration;

/// The result of one parse step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed<T> {
    /// The buffer holds only part of the next reply: read more and parse again.
    Incomplete,
    /// One reply and the number of bytes it used from the start of the buffer.
    Done(T, usize),
}

/// The longest bulk string accepted: Redis's `proto-max-bulk-len` default (512 MiB), the
/// largest string it stores.
pub(crate) const MAX_BULK: usize = 512 << 20;

/// The longest status, error or integer line accepted (a peer that is not Redis must not make
/// us buffer without bound).
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// A reply that is not what RESP2 allows: the stream is out of step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RespError(pub(crate) String);

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One reply to a hot command, borrowing the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply<'a> {
    /// `+<text>` (`+OK`).
    Status(&'a [u8]),
    /// `:<n>`.
    Int(i64),
    /// `$<len>` and the bytes; `None` for `$-1` (nil).
    Bulk(Option<&'a [u8]>),
    /// `-<text>`: the whole reply, `-` and `\r\n` included, for redis-rs to classify.
    Error(&'a [u8]),
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// Appends one bulk string argument: `$<len>\r\n<bytes>\r\n`.
fn push_arg(buf: &mut Vec<u8>, arg: &[u8]) {
    buf.push(b'$');
    push_uint(buf, arg.len() as u64);
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(arg);
    buf.extend_from_slice(b"\r\n");
}

/// Appends an array header of `n` arguments.
fn push_len(buf: &mut Vec<u8>, n: u64) {
    buf.push(b'*');
    push_uint(buf, n);
    buf.extend_from_slice(b"\r\n");
}

/// `GET key` (the reply is a [`Reply::Bulk`]).
pub(crate) fn get(buf: &mut Vec<u8>, key: &[u8]) {
    push_len(buf, 2);
    push_arg(buf, b"GET");
    push_arg(buf, key);
}

/// `SET key data [PX ms]`, the bytes [`super::commands::set`] packs (the reply is `+OK`).
pub(crate) fn set(buf: &mut Vec<u8>, key: &[u8], data: &[u8], ttl: Option<Duration>) {
    push_len(buf, if ttl.is_some() { 5 } else { 3 });
    push_arg(buf, b"SET");
    push_arg(buf, key);
    push_arg(buf, data);
    if let Some(t) = ttl {
        push_arg(buf, b"PX");
        let mut ms = Vec::with_capacity(20);
        push_uint(&mut ms, super::commands::millis(t));
        push_arg(buf, &ms);
    }
}

/// Any command of bulk string arguments (the async connection set-up's `AUTH` and `SELECT`).
#[cfg(feature = "async")]
pub(crate) fn command(buf: &mut Vec<u8>, args: &[&[u8]]) {
    push_len(buf, args.len() as u64);
    for a in args {
        push_arg(buf, a);
    }
}

/// `UNLINK key`, ddf's `delete` (`DEL` without the wait for the value's memory; the reply is a
/// [`Reply::Int`]: how many were removed).
pub(crate) fn unlink(buf: &mut Vec<u8>, key: &[u8]) {
    push_len(buf, 2);
    push_arg(buf, b"UNLINK");
    push_arg(buf, key);
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

/// The line at the start of `buf` (without `\r\n`) and the bytes it used, if complete.
fn line(buf: &[u8]) -> Result<Parsed<&[u8]>, RespError> {
    let scan = &buf[..buf.len().min(MAX_LINE + 2)];
    match scan.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Parsed::Done(&buf[..i], i + 2)),
        None if scan.len() > MAX_LINE => Err(RespError(format!(
            "a Redis reply line longer than {MAX_LINE} bytes"
        ))),
        None => Ok(Parsed::Incomplete),
    }
}

/// A signed decimal of at most 19 digits (no `+`, no spaces).
fn int(text: &[u8]) -> Result<i64, RespError> {
    let bad = || {
        let shown: String = String::from_utf8_lossy(text).chars().take(40).collect();
        RespError(format!(
            "expected a Redis integer (an optional '-' and 1 to 19 digits), got {shown:?}"
        ))
    };
    let (neg, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let mut n: i64 = 0;
    for &d in digits {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(i64::from(d - b'0')))
            .ok_or_else(bad)?;
    }
    Ok(if neg { -n } else { n })
}

/// One reply from the start of `buf`: a status, an integer, a bulk string (or nil) or an
/// error. Arrays and the RESP3 types are not replies to the hot commands: they are refused.
///
/// # Errors
/// A reply RESP2 does not allow here (the stream is out of step: drop the connection).
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed<Reply<'_>>, RespError> {
    let Some(&kind) = buf.first() else {
        return Ok(Parsed::Incomplete);
    };
    let (text, used) = match line(&buf[1..])? {
        Parsed::Incomplete => return Ok(Parsed::Incomplete),
        Parsed::Done(t, n) => (t, n + 1),
    };
    match kind {
        b'+' => Ok(Parsed::Done(Reply::Status(text), used)),
        b'-' => Ok(Parsed::Done(Reply::Error(&buf[..used]), used)),
        b':' => Ok(Parsed::Done(Reply::Int(int(text)?), used)),
        b'$' => {
            let n = int(text)?;
            if n == -1 {
                return Ok(Parsed::Done(Reply::Bulk(None), used));
            }
            let len = usize::try_from(n)
                .ok()
                .filter(|&l| l <= MAX_BULK)
                .ok_or_else(|| {
                    RespError(format!(
                        "a Redis bulk string of announced length {n}: allowed are -1 (nil) and 0 to {MAX_BULK}"
                    ))
                })?;
            let rest = &buf[used..];
            if rest.len() < len + 2 {
                return Ok(Parsed::Incomplete);
            }
            if &rest[len..len + 2] != b"\r\n" {
                return Err(RespError(
                    "a Redis bulk string not followed by \\r\\n".to_owned(),
                ));
            }
            Ok(Parsed::Done(
                Reply::Bulk(Some(&rest[..len])),
                used + len + 2,
            ))
        }
        other => Err(RespError(format!(
            "unexpected Redis reply type {:?} to GET, SET or UNLINK (expected '+', '-', ':' or '$')",
            char::from(other)
        ))),
    }
}

/// The one reply to one command, when `buf` (everything received since the request was sent)
/// holds it whole: `Ok(None)` when more must be read; `Ok(Some(r))` with `read`'s result, or an
/// error reply as redis-rs classifies it (`READONLY`, `LOADING`...: the connection stays in
/// step). The outer error means the connection is out of step (bytes that are not RESP2, or
/// bytes after the reply, which RESP2 never sends unasked): drop it.
///
/// # Errors
/// As above: a [`redis::ErrorKind::Parse`] error naming what was wrong.
pub(crate) fn whole<T>(
    buf: &[u8],
    read: impl FnOnce(Reply<'_>) -> redis::RedisResult<T>,
) -> redis::RedisResult<Option<redis::RedisResult<T>>> {
    match parse(buf).map_err(RespError::into_redis)? {
        Parsed::Incomplete => Ok(None),
        Parsed::Done(reply, used) if used == buf.len() => Ok(Some(match reply {
            Reply::Error(raw) => match redis::parse_redis_value(raw) {
                Ok(redis::Value::ServerError(e)) => Err(e.into()),
                Ok(_) => Err(
                    RespError("an error reply redis-rs reads as no error".to_owned()).into_redis(),
                ),
                Err(e) => Err(e),
            },
            r => read(r),
        })),
        Parsed::Done(..) => Err(RespError(
            "bytes after the reply to one command: the connection is out of step".to_owned(),
        )
        .into_redis()),
    }
}

impl RespError {
    /// As redis-rs's own parse errors are (the backend's error mapping says "a reply that is
    /// not RESP"; this names the form only).
    pub(crate) fn into_redis(self) -> redis::RedisError {
        redis::RedisError::from((redis::ErrorKind::Parse, "RESP2", self.0))
    }
}

/// `GET`'s reader: a bulk string or nil.
///
/// # Errors
/// Any other reply ([`unexpected`]).
pub(crate) fn bulk(r: Reply<'_>) -> redis::RedisResult<Option<Vec<u8>>> {
    match r {
        Reply::Bulk(v) => Ok(v.map(<[u8]>::to_vec)),
        r => Err(unexpected(&r, "GET")),
    }
}

/// `UNLINK`'s reader: an integer.
///
/// # Errors
/// Any other reply ([`unexpected`]).
pub(crate) fn int_reply(r: Reply<'_>) -> redis::RedisResult<i64> {
    match r {
        Reply::Int(n) => Ok(n),
        r => Err(unexpected(&r, "UNLINK")),
    }
}

/// A hot reply that is not the type its command answers with.
pub(crate) fn unexpected(reply: &Reply<'_>, command: &'static str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply type",
        {
            // The kind and at most 40 bytes: a misbehaving peer's bulk reply is not copied
            // whole into the message.
            let (kind, bytes): (&str, &[u8]) = match reply {
                Reply::Status(b) => ("a status", b),
                Reply::Int(_) => ("an integer", b""),
                Reply::Bulk(Some(b)) => ("a bulk string", b),
                Reply::Bulk(None) => ("nil", b""),
                Reply::Error(b) => ("an error", b),
            };
            let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]);
            format!(
                "{kind} ({} bytes: {shown:?}) in reply to {command}",
                bytes.len()
            )
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn done(buf: &[u8]) -> (Reply<'_>, usize) {
        match parse(buf).unwrap() {
            Parsed::Done(r, n) => (r, n),
            Parsed::Incomplete => panic!("incomplete: {buf:?}"),
        }
    }

    #[test]
    fn requests_are_the_bytes_redis_rs_packs() {
        let mut b = Vec::new();
        get(&mut b, b"k");
        assert_eq!(b, super::super::commands::get("k").get_packed_command());
        for ttl in [
            None,
            Some(Duration::from_millis(1500)),
            Some(Duration::from_nanos(1)),
        ] {
            b.clear();
            set(&mut b, b"key", b"\r\n\0v", ttl);
            assert_eq!(
                b,
                super::super::commands::set("key", b"\r\n\0v", ttl).get_packed_command()
            );
        }
        b.clear();
        unlink(&mut b, b"k:1");
        assert_eq!(
            b,
            super::super::commands::unlink(&["k:1"]).get_packed_command()
        );
    }

    #[test]
    fn every_reply_kind_parses_with_its_length() {
        assert_eq!(done(b"+OK\r\nrest"), (Reply::Status(b"OK"), 5));
        assert_eq!(done(b":-12\r\n"), (Reply::Int(-12), 6));
        assert_eq!(done(b"$-1\r\n"), (Reply::Bulk(None), 5));
        assert_eq!(done(b"$0\r\n\r\n"), (Reply::Bulk(Some(b"")), 6));
        assert_eq!(
            done(b"$4\r\na\r\nb\r\n:1\r\n"),
            (Reply::Bulk(Some(b"a\r\nb")), 10)
        );
        assert_eq!(done(b"-ERR no\r\n"), (Reply::Error(b"-ERR no\r\n"), 9));
    }

    #[test]
    fn bad_replies_are_refused() {
        for bad in [
            &b"*1\r\n"[..],
            b"_\r\n",
            b"$-2\r\n",
            b"$abc\r\n",
            b":99999999999999999999\r\n",
            b"$1\r\nab\r\n",
            b"$536870913\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let long = vec![b'+'; MAX_LINE + 10];
        assert!(parse(&long).is_err());
    }

    #[test]
    fn every_split_is_incomplete_until_the_last_byte() {
        for whole in [
            &b"+OK\r\n"[..],
            b":42\r\n",
            b"$-1\r\n",
            b"$5\r\nhello\r\n",
            b"$0\r\n\r\n",
            b"-WRONGTYPE x\r\n",
        ] {
            for cut in 0..whole.len() {
                assert_eq!(
                    parse(&whole[..cut]),
                    Ok(Parsed::Incomplete),
                    "{whole:?} at {cut}"
                );
            }
            let (_, n) = done(whole);
            assert_eq!(n, whole.len());
        }
    }

    #[test]
    fn an_error_reply_keeps_its_meaning_in_redis_rs() {
        let (r, _) = done(b"-READONLY You can't write against a read only replica.\r\n");
        let Reply::Error(raw) = r else { panic!() };
        match redis::parse_redis_value(raw).unwrap() {
            redis::Value::ServerError(e) => {
                let e: redis::RedisError = e.into();
                assert!(matches!(
                    e.kind(),
                    redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                ));
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn whole_reads_one_reply_and_nothing_after_it() {
        assert!(matches!(whole(b"$3\r\nab", bulk), Ok(None)));
        let one = |buf: &[u8]| whole(buf, bulk).unwrap().unwrap();
        assert_eq!(one(b"$3\r\nabc\r\n").unwrap(), Some(b"abc".to_vec()));
        assert_eq!(whole(b":2\r\n", int_reply).unwrap().unwrap().unwrap(), 2);
        let e = one(b":2\r\n").unwrap_err();
        assert_eq!(e.kind(), redis::ErrorKind::UnexpectedReturnType);
        let e = one(b"-LOADING Redis is loading\r\n").unwrap_err();
        assert!(matches!(
            e.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
        ));
        // Out of step: a second reply, or bytes that are not RESP2.
        for bad in [&b"+OK\r\n+OK\r\n"[..], b"*1\r\n"] {
            let e = whole(bad, |_| Ok(())).unwrap_err();
            assert_eq!(e.kind(), redis::ErrorKind::Parse, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&buf);
        }

        #[test]
        fn any_bulk_round_trips_at_every_split(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut b = Vec::new();
            push_arg(&mut b, &data);
            for cut in 0..b.len() {
                prop_assert_eq!(parse(&b[..cut]), Ok(Parsed::Incomplete));
            }
            prop_assert_eq!(parse(&b), Ok(Parsed::Done(Reply::Bulk(Some(&data[..])), b.len())));
        }
    }
}
