//! One Memcached connection over a tokio socket: the sync `client::Conn`'s buffers and rules
//! ([`Buffers`]: one write per request or pipeline, a read buffer that grows by at most one
//! chunk beyond what the server sent, a value length above the item limit refused when
//! announced), and the replies of the commands the async backend sends, parsed by [`proto`]
//! and read by [`replies`] (the meaning of each reply, shared with the sync connection).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::super::buffer::{Buffers, Step};
use super::super::client::{McError, McResult, Value};
use super::super::proto::{self, MetaReply, TextLine};
use super::super::replies::{self, refused, server_error};

/// One connection over a tokio socket.
pub(super) struct Conn {
    stream: TcpStream,
    b: Buffers,
}

impl Conn {
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

    fn begin(&mut self) -> McResult<()> {
        Ok(self.b.begin()?)
    }

    async fn flush(&mut self) -> McResult<()> {
        self.stream.write_all(&self.b.out).await?;
        Ok(())
    }

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

    pub(super) async fn get(&mut self, key: &str) -> McResult<Option<Value>> {
        self.begin()?;
        proto::get(&mut self.b.out, key.as_bytes(), None).map_err(refused)?;
        self.flush().await?;
        self.meta(replies::get).await
    }

    pub(super) async fn get_many(&mut self, keys: &[&str]) -> McResult<Vec<Option<Value>>> {
        self.begin()?;
        for (i, k) in keys.iter().enumerate() {
            let opaque = replies::opaque(i, keys.len())?;
            proto::get(&mut self.b.out, k.as_bytes(), Some(opaque)).map_err(refused)?;
        }
        proto::noop(&mut self.b.out);
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
            proto::set(&mut self.b.out, k.as_bytes(), d, *f, exptime, quiet).map_err(refused)?;
        }
        if quiet {
            proto::noop(&mut self.b.out);
        }
        self.flush().await?;
        let mut replies = replies::Set::new(quiet);
        while !self.meta(|r| replies.step(r)).await? {}
        replies.finish()
    }

    pub(super) async fn delete_many(&mut self, keys: &[&[u8]]) -> McResult<u64> {
        self.begin()?;
        for k in keys {
            proto::delete(&mut self.b.out, k).map_err(refused)?;
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
        proto::stats(&mut self.b.out, "settings");
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
