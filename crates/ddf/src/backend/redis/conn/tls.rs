//! TLS for a [`super::Bounded`] connection: rustls over a TCP socket whose every read and write
//! waits at most what is left of the request's deadline.
//!
//! Ours rather than redis-rs's TLS connection for the same reason as the plain socket (see
//! `conn.rs`): redis-rs bounds each socket read, and with TLS one read of plaintext is many
//! socket reads (rustls reads until a whole record has arrived), so a server, or anything on the
//! path, that sends a record one byte at a time would hold one request for as long as it likes.
//! Here the deadline is applied beneath rustls, on the socket itself; rustls does the protocol.
//! The trust anchors are redis-rs's: the CA bundle of `redis_ca_file` when set, else the
//! system's (rustls-native-certs, as redis-rs loads them).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{RedisError, RedisResult};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::{REQUEST_TOOK_TOO_LONG, SLACK, rest};

/// The rustls configuration of one backend's connections (built once; connections share it).
#[derive(Clone)]
pub(crate) struct TlsConfig(Arc<ClientConfig>);

impl TlsConfig {
    /// The configuration that trusts `ca` (PEM, already checked by the settings), or the
    /// system's roots without one. `insecure` (`rediss://...#insecure`) is refused, as redis-rs
    /// refuses it without its `tls-rustls-insecure` feature: a certificate is always checked.
    ///
    /// # Errors
    /// An unreadable CA, no trusted root at all, `insecure`, or a rustls refusal.
    pub(crate) fn new(ca: Option<&[u8]>, insecure: bool) -> RedisResult<Self> {
        if insecure {
            return Err(config_error(
                "`#insecure` is not supported: the server's certificate is always checked \
                 (give its CA with redis_ca_file)"
                    .to_owned(),
            ));
        }
        let mut roots = RootCertStore::empty();
        match ca {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| config_error(format!("redis_ca_file: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| config_error(format!("redis_ca_file: {e}")))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for e in &found.errors {
                    tracing::debug!(error = %e, "a system CA certificate could not be loaded");
                }
                let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
            }
        }
        if roots.is_empty() {
            return Err(config_error(
                "no trusted CA certificate: the system has none; give one with redis_ca_file"
                    .to_owned(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConfig(Arc::new(config)))
    }

    /// The rustls configuration, for a connection of ours that is not a [`TlsStream`] (the
    /// near cache's tracking socket).
    pub(crate) fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.0)
    }
}

fn config_error(detail: String) -> RedisError {
    RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "cannot set up TLS",
        detail,
    ))
}

/// A TLS connection whose socket reads and writes end by the deadline of the request (or of
/// the set-up) under way.
pub(super) struct TlsStream(StreamOwned<ClientConnection, Timed>);

/// The socket beneath rustls: each read and write waits at most what is left until `deadline`.
struct Timed {
    tcp: TcpStream,
    deadline: Instant,
    /// What the error says when the deadline has passed.
    what: &'static str,
    /// The socket's read and write timeouts as last set.
    read_to: Duration,
    write_to: Duration,
}

impl Timed {
    /// What a socket wait may take now: the socket's timeout is shortened to what is left of
    /// the deadline (or set back when a new deadline leaves more).
    fn bound(&mut self, write: bool) -> std::io::Result<()> {
        let rest = rest(self.deadline, self.what)?;
        let set = if write {
            &mut self.write_to
        } else {
            &mut self.read_to
        };
        if *set > rest + SLACK || *set + SLACK < rest || set.is_zero() {
            if write {
                self.tcp.set_write_timeout(Some(rest))?;
            } else {
                self.tcp.set_read_timeout(Some(rest))?;
            }
            *set = rest;
        }
        Ok(())
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.bound(false)?;
        self.tcp.read(buf)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bound(true)?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

impl TlsStream {
    /// The TLS handshake with `host` over `tcp`, before `deadline` (the connection's set-up).
    pub(super) fn handshake(
        config: &TlsConfig,
        host: &str,
        tcp: TcpStream,
        deadline: Instant,
    ) -> RedisResult<Self> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| config_error(format!("{host:?} is not a host name TLS can check: {e}")))?;
        let conn = ClientConnection::new(config.0.clone(), name)
            .map_err(|e| config_error(e.to_string()))?;
        let mut s = StreamOwned::new(
            conn,
            Timed {
                tcp,
                deadline,
                what: "the connection set-up (TLS handshake) took longer than connect_timeout",
                read_to: Duration::ZERO,
                write_to: Duration::ZERO,
            },
        );
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(TlsStream(s))
    }

    /// Makes every socket wait end by `deadline` (a request's).
    fn until(&mut self, deadline: Instant) {
        self.0.sock.deadline = deadline;
        self.0.sock.what = REQUEST_TOOK_TOO_LONG;
    }

    /// Reads plaintext; the socket reads beneath end by `deadline`.
    pub(super) fn read_until(
        &mut self,
        buf: &mut [u8],
        deadline: Instant,
    ) -> std::io::Result<usize> {
        self.until(deadline);
        self.0.read(buf)
    }

    /// Writes and flushes all of `bytes` by `deadline`.
    pub(super) fn send_until(&mut self, bytes: &[u8], deadline: Instant) -> std::io::Result<()> {
        self.until(deadline);
        self.0.write_all(bytes)?;
        self.0.flush()
    }
}
