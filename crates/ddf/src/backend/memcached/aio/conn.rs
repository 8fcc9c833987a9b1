//! One Memcached connection over a tokio socket: the sync `client::Conn`'s buffers and rules
//! (one write per request or pipeline, a read buffer that grows by at most one chunk beyond
//! what the server sent, a value length above the item limit refused when announced), and the
//! replies of the commands the async backend sends, parsed by [`proto`] and read by
//! [`replies`] (the meaning of each reply, shared with the sync connection).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::super::client::{McError, McResult, Value};
use super::super::proto::{self, MetaReply, Parsed, TextLine};
use super::super::replies::{self, refused, server_error};

const READ_INITIAL: usize = 16 * 1024;
const READ_CHUNK: usize = 64 * 1024;
const KEEP: usize = 256 * 1024;

/// One connection over a tokio socket.
pub(super) struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    pub(super) max_value: usize,
}

impl Conn {
    pub(super) async fn connect(host: &str, port: u16) -> McResult<Conn> {
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            out: Vec::with_capacity(256),
            buf: vec![0; READ_INITIAL],
            start: 0,
            end: 0,
            max_value: proto::MAX_VALUE_CAP,
        })
    }

    fn begin(&mut self) -> McResult<()> {
        if self.start != self.end {
            return Err(McError::Protocol(format!(
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

    async fn flush(&mut self) -> McResult<()> {
        self.stream.write_all(&self.out).await?;
        Ok(())
    }

    async fn fill(&mut self) -> McResult<()> {
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
        match self.stream.read(&mut self.buf[self.end..]).await? {
            0 => Err(McError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ))),
            n => {
                self.end += n;
                Ok(())
            }
        }
    }

    async fn meta<T>(&mut self, f: impl FnOnce(MetaReply<'_>) -> McResult<T>) -> McResult<T> {
        loop {
            match proto::parse_meta(&self.buf[self.start..self.end], self.max_value)? {
                Parsed::Done(reply, used) => {
                    let out = f(reply);
                    self.start += used;
                    return out;
                }
                Parsed::Incomplete => self.fill().await?,
            }
        }
    }

    async fn text<T>(&mut self, f: impl FnOnce(TextLine<'_>) -> McResult<T>) -> McResult<T> {
        loop {
            match proto::parse_text(&self.buf[self.start..self.end])? {
                Parsed::Done(line, used) => {
                    let out = f(line);
                    self.start += used;
                    return out;
                }
                Parsed::Incomplete => self.fill().await?,
            }
        }
    }

    pub(super) async fn get(&mut self, key: &str) -> McResult<Option<Value>> {
        self.begin()?;
        proto::get(&mut self.out, key.as_bytes(), None).map_err(refused)?;
        self.flush().await?;
        self.meta(replies::get).await
    }

    pub(super) async fn get_many(&mut self, keys: &[&str]) -> McResult<Vec<Option<Value>>> {
        self.begin()?;
        for (i, k) in keys.iter().enumerate() {
            let opaque = replies::opaque(i, keys.len())?;
            proto::get(&mut self.out, k.as_bytes(), Some(opaque)).map_err(refused)?;
        }
        proto::noop(&mut self.out);
        self.flush().await?;
        let mut replies = replies::GetMany::new(keys.len());
        while !self.meta(|r| replies.step(r)).await? {}
        replies.finish()
    }

    pub(super) async fn set_many(
        &mut self,
        items: &[(&str, &[u8], u32)],
        exptime: u64,
    ) -> McResult<()> {
        self.begin()?;
        let quiet = items.len() > 1;
        for (k, d, f) in items {
            proto::set(&mut self.out, k.as_bytes(), d, *f, exptime, quiet).map_err(refused)?;
        }
        if quiet {
            proto::noop(&mut self.out);
        }
        self.flush().await?;
        let mut replies = replies::Set::new(quiet);
        while !self.meta(|r| replies.step(r)).await? {}
        replies.finish()
    }

    pub(super) async fn delete_many(&mut self, keys: &[&[u8]]) -> McResult<u64> {
        self.begin()?;
        for k in keys {
            proto::delete(&mut self.out, k).map_err(refused)?;
        }
        self.flush().await?;
        let mut replies = replies::DeleteMany::default();
        for _ in keys {
            self.meta(|r| replies.step(r)).await?;
        }
        replies.finish()
    }

    /// `item_size_max` from `stats settings`.
    pub(super) async fn item_size_max(&mut self) -> McResult<Option<usize>> {
        self.begin()?;
        proto::stats(&mut self.out, "settings");
        self.flush().await?;
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
