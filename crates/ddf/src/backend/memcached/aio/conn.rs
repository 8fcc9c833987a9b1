//! One Memcached connection over a tokio socket: the sync `client::Conn`'s buffers and rules
//! ([`Buffers`]: a read buffer that grows by at most one chunk beyond what the server sent, a
//! value length above the item limit refused when announced), the requests the async backend
//! sends (formatted by [`proto`], each with the [`Kind`] of reply it expects), and their
//! replies, read by [`replies`] (the meaning of each reply, shared with the sync connection).
//!
//! A connection opens whole ([`Conn::connect`], one exchange to learn the item limit), then
//! its read side answers the requests of a pipeline ([`super::pipe`]) in order.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::super::buffer::{Buffers, Step};
use super::super::client::{McError, McResult, Value};
use super::super::proto::{self, MetaReply, TextLine};
use super::super::replies::{self, refused, server_error};

/// The reply a request expects.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    /// `mg <key> v f`: one value or a miss.
    Get,
    /// `n` quiet `mg ... O<i>`, then `mn`.
    GetMany(usize),
    /// One `ms` (not quiet), or several quiet ones then `mn`.
    Set { quiet: bool },
    /// `n` `md` (not quiet): how many existed.
    DeleteMany(usize),
}

/// The meaning of a reply, by [`Kind`].
pub(super) enum Answer {
    Value(Option<Value>),
    Values(Vec<Option<Value>>),
    Stored,
    Deleted(u64),
}

/// `mg <key> v f`.
pub(super) fn get(out: &mut Vec<u8>, key: &str) -> McResult<Kind> {
    proto::get(out, key.as_bytes(), None).map_err(refused)?;
    Ok(Kind::Get)
}

/// Quiet `mg <key> v f q O<i>` for every key, then `mn`.
pub(super) fn get_many(out: &mut Vec<u8>, keys: &[&str]) -> McResult<Kind> {
    for (i, k) in keys.iter().enumerate() {
        let opaque = replies::opaque(i, keys.len())?;
        proto::get(out, k.as_bytes(), Some(opaque)).map_err(refused)?;
    }
    proto::noop(out);
    Ok(Kind::GetMany(keys.len()))
}

/// `ms` for every item (quiet, then `mn`, when there are several).
pub(super) fn set_many(
    out: &mut Vec<u8>,
    items: &[(&str, &[u8], u32)],
    exptime: u64,
) -> McResult<Kind> {
    let quiet = items.len() > 1;
    for (k, d, f) in items {
        proto::set(out, k.as_bytes(), d, *f, exptime, quiet).map_err(refused)?;
    }
    if quiet {
        proto::noop(out);
    }
    Ok(Kind::Set { quiet })
}

/// `md <key>` for every key.
pub(super) fn delete_many(out: &mut Vec<u8>, keys: &[&[u8]]) -> McResult<Kind> {
    for k in keys {
        proto::delete(out, k).map_err(refused)?;
    }
    Ok(Kind::DeleteMany(keys.len()))
}

/// One connection (`S`: the whole socket, or its read half once pipelined).
pub(super) struct Conn<S = TcpStream> {
    stream: S,
    b: Buffers,
}

impl Conn<TcpStream> {
    /// Connects (TCP_NODELAY); values up to [`proto::MAX_VALUE_CAP`] until
    /// [`Conn::set_value_limit`].
    pub(super) async fn connect(host: &str, port: u16) -> McResult<Conn> {
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            b: Buffers::default(),
        })
    }

    /// Sets the longest value this connection accepts (the server's `item_size_max`).
    pub(super) fn set_value_limit(&mut self, item_size_max: usize) {
        self.b.set_value_limit(item_size_max);
    }

    /// The read half with the buffers, and the write half: the two ends of a pipeline.
    pub(super) fn split(
        self,
    ) -> (
        Conn<tokio::net::tcp::OwnedReadHalf>,
        tokio::net::tcp::OwnedWriteHalf,
    ) {
        let (r, w) = self.stream.into_split();
        (
            Conn {
                stream: r,
                b: self.b,
            },
            w,
        )
    }

    /// `item_size_max` from `stats settings` (one whole exchange, before any pipelining).
    pub(super) async fn item_size_max(&mut self) -> McResult<Option<usize>> {
        self.b.begin()?;
        proto::stats(&mut self.b.out, "settings");
        self.stream.write_all(&self.b.out).await?;
        let mut found = None;
        loop {
            let done = self
                .text(|l| match l {
                    TextLine::End => Ok(true),
                    TextLine::Stat { name, value } => {
                        if name == b"item_size_max" {
                            found = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                        }
                        Ok(false)
                    }
                    TextLine::Error(l) => Err(server_error(l)),
                    _ => Err(McError::Protocol(
                        "unexpected reply to stats settings".into(),
                    )),
                })
                .await?;
            if done {
                return Ok(found);
            }
        }
    }
}

impl<S: AsyncRead + Unpin> Conn<S> {
    async fn fill(&mut self) -> McResult<()> {
        let n = self.stream.read(self.b.spare()).await?;
        self.b.filled(n)
    }

    async fn meta<T>(&mut self, f: impl FnOnce(MetaReply<'_>) -> McResult<T>) -> McResult<T> {
        let mut f = f;
        loop {
            match self.b.meta(f) {
                Step::Done(r) => return r,
                Step::Fill(back) => f = back,
            }
            self.fill().await?;
        }
    }

    async fn text<T>(&mut self, f: impl FnOnce(TextLine<'_>) -> McResult<T>) -> McResult<T> {
        let mut f = f;
        loop {
            match self.b.text(f) {
                Step::Done(r) => return r,
                Step::Fill(back) => f = back,
            }
            self.fill().await?;
        }
    }

    /// Reads the whole reply of a request of `kind` (every line of it, also when it carries a
    /// server error: the stream stays in step).
    pub(super) async fn answer(&mut self, kind: Kind) -> McResult<Answer> {
        match kind {
            Kind::Get => Ok(Answer::Value(self.meta(replies::get).await?)),
            Kind::GetMany(n) => {
                let mut replies = replies::GetMany::new(n);
                while !self.meta(|r| replies.step(r)).await? {}
                replies.finish().map(Answer::Values)
            }
            Kind::Set { quiet } => {
                let mut replies = replies::Set::new(quiet);
                while !self.meta(|r| replies.step(r)).await? {}
                replies.finish().map(|()| Answer::Stored)
            }
            Kind::DeleteMany(n) => {
                let mut replies = replies::DeleteMany::default();
                for _ in 0..n {
                    self.meta(|r| replies.step(r)).await?;
                }
                replies.finish().map(Answer::Deleted)
            }
        }
    }
}
