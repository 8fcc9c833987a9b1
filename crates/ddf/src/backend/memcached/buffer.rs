//! A connection's buffers, without I/O: the request being built and the replies received but
//! not parsed yet. The blocking connection ([`super::client`]) and the tokio one
//! (`aio/conn.rs`) own one each and only move bytes: they write [`Buffers::out`], read into
//! [`Buffers::spare`] and report it with [`Buffers::filled`], and take replies with
//! [`Buffers::meta`]/[`Buffers::text`], which parse with [`super::proto`].
//!
//! - Memory: the read buffer grows only when it is full of unparsed reply bytes, by at most
//!   [`READ_CHUNK`], so a connection never holds more than what the server actually sent plus
//!   one chunk; a value length above the item limit is refused when its `VA` line arrives.
//! - [`Buffers::begin`] starts a request: bytes left over from the last reply mean the stream
//!   is out of step (refused), and buffers a large reply or pipeline grew shrink back.

use std::io;

use super::client::{McError, McResult};
use super::proto::{self, MetaReply, Parsed, ProtoError, TextLine};

/// The read buffer's size when a connection opens, and what it shrinks back to after a large
/// reply.
pub(super) const READ_INITIAL: usize = 16 * 1024;
/// The most the read buffer grows by at a time.
pub(super) const READ_CHUNK: usize = 64 * 1024;
/// A read buffer (or request buffer) larger than this is shrunk back before the next request,
/// so an idle pooled connection does not keep the memory of its largest reply or pipeline.
const KEEP: usize = 256 * 1024;

/// One connection's request and reply buffers.
#[derive(Debug)]
pub(crate) struct Buffers {
    /// The request being built (reused: one write per request or pipeline).
    pub(crate) out: Vec<u8>,
    /// Read buffer; `buf[start..end]` holds received bytes not parsed yet.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The longest value accepted (the server's item limit, at most [`proto::MAX_VALUE_CAP`]).
    max_value: usize,
}

/// What taking a reply gave: the reply's meaning, or (no whole reply received yet) the reader
/// handed back, to call again after reading more into [`Buffers::spare`].
pub(crate) enum Step<T, F> {
    /// The reply, read by the reader.
    Done(McResult<T>),
    /// Read more bytes, then call again with this reader.
    Fill(F),
}

impl Default for Buffers {
    fn default() -> Self {
        Buffers {
            out: Vec::with_capacity(256),
            buf: vec![0; READ_INITIAL],
            start: 0,
            end: 0,
            max_value: proto::MAX_VALUE_CAP,
        }
    }
}

impl Buffers {
    /// Sets the longest value accepted from the server (its `item_size_max`; capped at
    /// [`proto::MAX_VALUE_CAP`]).
    pub(crate) fn set_value_limit(&mut self, item_size_max: usize) {
        self.max_value = item_size_max.min(proto::MAX_VALUE_CAP);
    }

    /// Starts a request: checks that no reply bytes are left over, shrinks a buffer a large
    /// reply grew, and clears the request buffer.
    pub(crate) fn begin(&mut self) -> Result<(), ProtoError> {
        if self.start != self.end {
            return Err(ProtoError(format!(
                "the server sent {} bytes nobody asked for",
                self.end - self.start
            )));
        }
        self.start = 0;
        self.end = 0;
        if self.buf.len() > KEEP {
            self.buf = vec![0; READ_INITIAL];
        }
        if self.out.capacity() > KEEP {
            self.out = Vec::with_capacity(256);
        }
        self.out.clear();
        Ok(())
    }

    /// Room to read reply bytes into: moves unparsed bytes to the front when that makes room,
    /// and grows the buffer by at most [`READ_CHUNK`] only when it is full of them. Report what
    /// was read with [`Buffers::filled`].
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            self.buf.reserve_exact(READ_CHUNK);
            self.buf.resize(self.buf.len() + READ_CHUNK, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records `n` bytes read into [`Buffers::spare`]; 0 is the server closing the connection.
    pub(crate) fn filled(&mut self, n: usize) -> McResult<()> {
        if n == 0 {
            return Err(McError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        self.end = (self.end + n).min(self.buf.len());
        Ok(())
    }

    /// The next meta reply, handed to `f` (it borrows the read buffer), then consumed; or `f`
    /// back when the reply is not whole yet.
    pub(crate) fn meta<T, F>(&mut self, f: F) -> Step<T, F>
    where
        F: FnOnce(MetaReply<'_>) -> McResult<T>,
    {
        match proto::parse_meta(&self.buf[self.start..self.end], self.max_value) {
            Ok(Parsed::Done(reply, used)) => {
                let out = f(reply);
                self.start += used;
                Step::Done(out)
            }
            Ok(Parsed::Incomplete) => Step::Fill(f),
            Err(e) => Step::Done(Err(e.into())),
        }
    }

    /// The next line of a text reply, handed to `f`, then consumed; or `f` back when the line
    /// is not whole yet.
    pub(crate) fn text<T, F>(&mut self, f: F) -> Step<T, F>
    where
        F: FnOnce(TextLine<'_>) -> McResult<T>,
    {
        match proto::parse_text(&self.buf[self.start..self.end]) {
            Ok(Parsed::Done(line, used)) => {
                let out = f(line);
                self.start += used;
                Step::Done(out)
            }
            Ok(Parsed::Incomplete) => Step::Fill(f),
            Err(e) => Step::Done(Err(e.into())),
        }
    }

    /// (bytes received and held, read buffer length, its capacity): for tests of the memory
    /// bounds.
    #[cfg(test)]
    pub(super) fn sizes(&self) -> (usize, usize, usize) {
        (self.end, self.buf.len(), self.buf.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(b: &mut Buffers, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = b.spare();
            let n = room.len().min(rest.len());
            room[..n].copy_from_slice(&rest[..n]);
            b.filled(n).unwrap();
            rest = &rest[n..];
        }
    }

    #[test]
    fn a_reply_in_pieces_then_leftovers_are_refused() {
        let mut b = Buffers::default();
        b.begin().unwrap();
        feed(&mut b, b"VA 3 f");
        let f = match b.meta(|_| Ok(())) {
            Step::Fill(f) => f,
            Step::Done(r) => panic!("{:?}", r.ok()),
        };
        feed(&mut b, b"7\r\nabc\r\nEN\r\n");
        assert!(matches!(b.meta(f), Step::Done(Ok(_))));
        // `EN` was never asked for: the next request is refused.
        assert!(b.begin().unwrap_err().0.contains("nobody asked"));
    }

    #[test]
    fn the_read_buffer_grows_by_a_chunk_and_shrinks_back() {
        let mut b = Buffers::default();
        b.begin().unwrap();
        let mut big = b"VA 600000 f0\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'x', 600_000));
        big.extend_from_slice(b"\r\n");
        feed(&mut b, &big);
        let (held, len, _) = b.sizes();
        assert!(len <= held + READ_CHUNK, "{len} for {held}");
        assert!(matches!(
            b.meta(|r| Ok(matches!(r, MetaReply::Value { data, .. } if data.len() == 600_000))),
            Step::Done(Ok(true))
        ));
        b.begin().unwrap();
        assert_eq!(b.sizes().1, READ_INITIAL);
        assert!(matches!(
            b.filled(0),
            Err(McError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof
        ));
    }
}
