//! The near cache's tracking socket (see `tracking.rs`): TCP, TLS (rustls) or unix, read
//! without waiting once tracking is on (`recv` with `MSG_DONTWAIT`, so a hit can drain it
//! while the socket itself stays blocking for writes), and a `poll` for the thread's wait.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::tracking::End;
use crate::config::RedisSettings;

/// A socket of ours; read without waiting once `dontwait` is set (tracking established).
pub(super) struct Raw {
    sock: Sock,
    /// Reads use `MSG_DONTWAIT` (the socket itself stays blocking, so writes still block up to
    /// `timeout`).
    pub(super) dontwait: bool,
}

pub(super) enum Sock {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Read for Raw {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.dontwait {
            loop {
                let got = match &self.sock {
                    Sock::Tcp(s) => {
                        rustix::net::recv(s, &mut *buf, rustix::net::RecvFlags::DONTWAIT)
                    }
                    #[cfg(unix)]
                    Sock::Unix(s) => {
                        rustix::net::recv(s, &mut *buf, rustix::net::RecvFlags::DONTWAIT)
                    }
                };
                // A signal that interrupted the call is no error of the connection: retry.
                if got == Err(rustix::io::Errno::INTR) {
                    continue;
                }
                return got.map(|(n, _)| n).map_err(std::io::Error::from);
            }
        }
        match &mut self.sock {
            Sock::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Sock::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Raw {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match &mut self.sock {
            Sock::Tcp(s) => s.write(b),
            #[cfg(unix)]
            Sock::Unix(s) => s.write(b),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Raw {
    pub(super) fn new(sock: Sock) -> Self {
        Raw {
            sock,
            dontwait: false,
        }
    }

    pub(super) fn timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()> {
        match &self.sock {
            Sock::Tcp(s) => {
                s.set_read_timeout(Some(read))?;
                s.set_write_timeout(Some(write))
            }
            #[cfg(unix)]
            Sock::Unix(s) => {
                s.set_read_timeout(Some(read))?;
                s.set_write_timeout(Some(write))
            }
        }
    }

    /// A second handle on the socket, for the thread's `poll` (which needs no lock).
    pub(super) fn watcher(&self) -> std::io::Result<OwnedFd> {
        match &self.sock {
            Sock::Tcp(s) => s.as_fd().try_clone_to_owned(),
            #[cfg(unix)]
            Sock::Unix(s) => s.as_fd().try_clone_to_owned(),
        }
    }
}

/// The tracking connection: plain, or TLS over the same kind of socket (rustls, with the data
/// connection's trust: `redis_ca_file`, else the system's roots).
pub(super) enum Stream {
    Plain(Raw),
    #[cfg(feature = "tls")]
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, Raw>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(r) => r.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Stream {
    pub(super) fn raw(&mut self) -> &mut Raw {
        match self {
            Stream::Plain(r) => r,
            #[cfg(feature = "tls")]
            Stream::Tls(t) => &mut t.sock,
        }
    }

    pub(super) fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(r) => r.write_all(b),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => {
                t.write_all(b)?;
                t.flush()
            }
        }
    }
}

/// TLS over `raw` to `host`, with the data connections' configuration (`redis_ca_file` when
/// given, else the system's roots; `#insecure` refused): one place decides what is trusted.
/// `config` is built once per tracking thread, not at each reconnection.
#[cfg(feature = "tls")]
pub(super) fn tls(
    config: &crate::backend::redis::conn::TlsConfig,
    raw: Raw,
    host: &str,
) -> Result<Stream, End> {
    use rustls::pki_types::ServerName;
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| End::Refused(format!("TLS server name {host:?}: {e}")))?;
    let conn = rustls::ClientConnection::new(config.client_config(), name)
        .map_err(|e| End::Refused(format!("TLS: {e}")))?;
    Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, raw))))
}

/// A TCP connection to `host:port` within `connect_timeout` (the name's lookup and each
/// address in turn together: `backend::dial`).
pub(super) fn tcp(host: &str, port: u16, s: &RedisSettings) -> Result<Raw, End> {
    let lost = |e: std::io::Error| End::Lost(format!("cannot connect: {e}"));
    let mut last = None;
    let deadline = std::time::Instant::now() + s.connect_timeout;
    for a in crate::backend::dial::resolve(host, port, deadline).map_err(lost)? {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&a, left) {
            Ok(t) => {
                t.set_nodelay(true).map_err(lost)?;
                return Ok(Raw::new(Sock::Tcp(t)));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(lost(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the host name resolved to no address",
        )
    })))
}
/// Waits up to `tick` for one of `fds` to be readable (or closed); `true` if one is.
pub(super) fn readable(fds: &[OwnedFd], tick: Duration) -> std::io::Result<bool> {
    let timeout = rustix::event::Timespec::try_from(tick).map_err(std::io::Error::other)?;
    let mut fds: Vec<rustix::event::PollFd<'_>> = fds
        .iter()
        .map(|fd| rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN))
        .collect();
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether `fd` can take a write now (`poll` without waiting): a heartbeat is not written
/// where it could block with the inbox's lock held.
pub(super) fn writable(fd: &OwnedFd) -> std::io::Result<bool> {
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut fds = [rustix::event::PollFd::new(
        fd,
        rustix::event::PollFlags::OUT,
    )];
    match rustix::event::poll(&mut fds, Some(&zero)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
