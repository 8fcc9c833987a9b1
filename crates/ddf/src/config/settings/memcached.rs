//! The Memcached backend's settings (`backend = memcached` or `memcached_pickle`).

use std::time::Duration;

use crate::config::keys::CacheConfig;
use crate::config::types::CacheBackend;
use crate::config::values::ServerAddr;
use crate::error::Result;

/// How values are written on a Memcached server (pymemcache's conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueFormat {
    /// `backend = memcached`: JSON text, str and int as pymemcache writes them.
    Json,
    /// `backend = memcached_pickle`: Python pickles.
    Pickle,
}

/// The Memcached backend's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemcachedSettings {
    /// `memcached_servers`, in the configured order (placement hashes their names); never empty.
    pub(crate) servers: Vec<ServerAddr>,
    /// The value format.
    pub(crate) format: ValueFormat,
    /// `connect_timeout`.
    pub(crate) connect_timeout: Duration,
    /// `timeout`.
    pub(crate) timeout: Duration,
    /// `namespace`.
    pub(crate) namespace: String,
    /// `server_flush`.
    pub(crate) server_flush: bool,
    /// `memcached://a:1,b:2` with the servers sorted: one cache whatever their order.
    identity: String,
}

impl MemcachedSettings {
    /// The servers, without credentials, sorted: `memcached://a:11211,b:11211`. Names the
    /// servers in messages and scopes the outage journal.
    pub(crate) fn identity(&self) -> &str {
        &self.identity
    }

    /// The settings of one of the servers alone, for the breaker per server: its identity is
    /// that of a one-server list (`memcached://host:port`).
    pub(crate) fn only(&self, server: &ServerAddr) -> MemcachedSettings {
        MemcachedSettings {
            servers: vec![server.clone()],
            identity: memcached_identity(&[server.to_string()]),
            ..self.clone()
        }
    }
}

/// The identity of a Memcached server list (sorted, without duplicates): `memcached://a:1,b:2`.
fn memcached_identity(names: &[String]) -> String {
    format!("memcached://{}", names.join(","))
}

impl CacheConfig {
    /// The Memcached backend's settings.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error) for an empty `memcached_servers` (naming where it came
    /// from), a zero timeout or an unusable namespace.
    pub(crate) fn memcached_settings(&self) -> Result<MemcachedSettings> {
        self.check_server()?;
        if self.memcached_servers.is_empty() {
            return Err(self.invalid(
                "memcached_servers",
                "memcached_servers is empty: give at least one host:port",
            ));
        }
        let mut names: Vec<String> = self
            .memcached_servers
            .iter()
            .map(ToString::to_string)
            .collect();
        names.sort();
        names.dedup();
        Ok(MemcachedSettings {
            servers: self.memcached_servers.clone(),
            format: if self.backend == CacheBackend::MemcachedPickle {
                ValueFormat::Pickle
            } else {
                ValueFormat::Json
            },
            connect_timeout: self.connect_timeout,
            timeout: self.timeout,
            namespace: self.namespace.clone(),
            server_flush: self.server_flush,
            identity: memcached_identity(&names),
        })
    }
}
