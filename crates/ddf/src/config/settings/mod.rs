//! Per-backend settings, extracted from a [`CacheConfig`] and validated once, here.
//!
//! A backend is built from settings that are already valid: every error about a setting is an
//! [`Error::Config`] naming where the value came from (file and line, environment variable,
//! code, default). Files the settings need (the Redis CA bundle) are read here, once; the choice
//! between a standalone Redis server, TLS, a unix socket and a Cluster is made here, once.
//!
//! The settings hold no client types: `backend/redis.rs` turns [`RedisSettings`] into a redis-rs
//! client in a few lines, and an async face can turn the same settings into its own client.
//!
//! One file a topic: `file.rs`, `resilience.rs`, `near.rs`, `memcached.rs`, `redis.rs`; here the
//! checks they share and the choice of the backend's settings.

mod file;
mod memcached;
mod near;
mod redis;
mod resilience;

pub(crate) use file::FileSettings;
pub(crate) use memcached::{MemcachedSettings, ValueFormat};
pub(crate) use near::{NearMode, NearSettings};
pub(crate) use redis::{RedisEndpoint, RedisSettings, RedisTarget};
pub(crate) use resilience::ResilienceSettings;

use crate::config::keys::CacheConfig;
use crate::config::types::CacheBackend;
use crate::error::{Error, Result};

/// The settings of the backend a config names.
#[derive(Debug, Clone)]
pub(crate) enum BackendSettings {
    /// `backend = none`.
    None,
    /// `backend = pickle`.
    File(FileSettings),
    /// `backend = redis` or `redis_pickle`.
    Redis(RedisSettings),
    /// `backend = memcached` or `memcached_pickle`.
    Memcached(MemcachedSettings),
}

impl CacheConfig {
    /// A configuration error about `key`, pointing at where its value came from.
    fn invalid(&self, key: &str, message: impl Into<String>) -> Error {
        Error::config(self.source_of(key), message)
    }

    /// The namespace, checked again here because the fields are public and may have been set
    /// without the parsers.
    fn check_namespace(&self) -> Result<()> {
        if self.namespace.len() > 128 || self.namespace.chars().any(char::is_control) {
            return Err(self.invalid(
                "namespace",
                "namespace is not valid: allowed: at most 128 bytes without control characters",
            ));
        }
        Ok(())
    }

    /// The namespace and the server timeouts (as [`Self::check_namespace`]).
    fn check_server(&self) -> Result<()> {
        self.check_namespace()?;
        for (key, d) in [
            ("connect_timeout", self.connect_timeout),
            ("timeout", self.timeout),
        ] {
            if d.is_zero() {
                return Err(self.invalid(
                    key,
                    format!("{key} is 0: it must be a number of seconds greater than 0"),
                ));
            }
        }
        Ok(())
    }

    /// The error for a backend whose cargo feature this build of ddf lacks.
    #[cfg_attr(all(feature = "redis", feature = "memcached"), allow(dead_code))]
    pub(crate) fn feature_off(&self, feature: &str) -> Error {
        self.invalid(
            "backend",
            format!(
                "backend = {} needs ddf's cargo feature `{feature}`, which this build was compiled \
                 without: enable it (`features = [\"{feature}\"]`, or leave ddf's default \
                 features on)",
                self.backend.as_str()
            ),
        )
    }

    /// The settings of the backend this config names, validated.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting and where its value came from.
    pub(crate) fn backend_settings(&self) -> Result<BackendSettings> {
        Ok(match self.backend {
            CacheBackend::None => BackendSettings::None,
            CacheBackend::Pickle => BackendSettings::File(self.file_settings()?),
            CacheBackend::Redis | CacheBackend::RedisPickle => {
                BackendSettings::Redis(self.redis_settings()?)
            }
            CacheBackend::Memcached | CacheBackend::MemcachedPickle => {
                BackendSettings::Memcached(self.memcached_settings()?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(feature = "redis")]
    use super::redis::has_empty_port;
    use super::*;
    use crate::config::values::Secret;
    use std::time::Duration;

    #[test]
    #[cfg(feature = "redis")]
    fn an_empty_redis_port_names_the_key_the_file_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ddf.ini");
        for url in [
            "redis://127.0.0.1:/0",
            "redis://:secret@127.0.0.1:",
            "rediss://[::1]:/2",
        ] {
            std::fs::write(
                &path,
                format!("[cache]\nbackend = redis\nredis_url = {url}\n"),
            )
            .unwrap();
            let e = CacheConfig::from_ini_file(&path)
                .unwrap()
                .redis_settings()
                .unwrap_err();
            let text = e.to_string();
            assert!(e.is_config(), "{text}");
            assert!(text.contains("redis_url"), "{text}");
            assert!(text.contains("empty port"), "{text}");
            assert!(text.contains("line 3"), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(!text.contains("secret"), "{text}");
        }
        for fine in [
            "redis://127.0.0.1/0",
            "redis://u:p:w@h:1/0",
            "unix:///tmp/r.sock",
        ] {
            assert!(!has_empty_port(fine), "{fine}");
        }
    }

    fn cfg(text: &str) -> CacheConfig {
        CacheConfig::from_ini_str(text).unwrap()
    }

    #[test]
    #[cfg(feature = "tls")]
    fn unusable_settings_are_config_errors_with_their_line() {
        let ini = "[cache]\nbackend = redis\nredis_url = redis://:pw@[bad\n";
        let e = cfg(ini).redis_settings().unwrap_err();
        let text = e.to_string();
        assert!(e.is_config(), "{text}");
        assert!(
            text.contains("line 3") && text.contains("rediss://"),
            "{text}"
        );
        assert!(!text.contains("pw"), "{text}");

        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let ini = format!("[cache]\nredis_ca_file = {}\n", ca.display());
        let e = cfg(&ini).redis_settings().unwrap_err();
        assert!(
            e.to_string().contains("line 2") && e.to_string().contains("rediss://"),
            "{e}"
        );
        // With TLS, a file without a certificate is refused here, not at the first connection.
        let ini = format!(
            "[cache]\nredis_url = rediss://h:1\nredis_ca_file = {}\n",
            ca.display()
        );
        let e = cfg(&ini).redis_settings().unwrap_err();
        assert!(
            e.to_string().contains("line 3") && e.to_string().contains("no PEM certificate"),
            "{e}"
        );

        let ini = "[cache]\nredis_db = 2\nredis_cluster_nodes = 127.0.0.1:7000\n";
        let e = cfg(ini).redis_settings().unwrap_err();
        assert!(
            e.to_string().contains("line 2") && e.to_string().contains("Cluster"),
            "{e}"
        );

        let ini = "[cache]\nredis_ca_file = /nonexistent/ca.pem\n";
        let e = cfg(ini).redis_settings().unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    #[cfg(feature = "tls")]
    fn redis_targets_are_chosen_once_with_identities_without_credentials() {
        let s = cfg("[cache]\nredis_host = r.example\nredis_port = 6380\nredis_db = 2\nredis_password = pw\n")
            .redis_settings()
            .unwrap();
        assert_eq!(
            s.target,
            RedisTarget::Standalone(RedisEndpoint::Tcp {
                host: "r.example".into(),
                port: 6380
            })
        );
        assert_eq!((s.identity(), s.db), ("redis://r.example:6380/2", 2));
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("pw"));

        // The URL wins over host/port/db, and its password over redis_password.
        let s =
            cfg("[cache]\nredis_password = other\nredis_url = rediss://u:s3cret@[::1]:7000/3\n")
                .redis_settings()
                .unwrap();
        assert!(matches!(
            s.target,
            RedisTarget::Standalone(RedisEndpoint::Tls {
                port: 7000,
                insecure: false,
                ..
            })
        ));
        assert_eq!(s.identity(), "rediss://[::1]:7000/3");
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("s3cret"));
        assert_eq!(s.username.as_deref(), Some("u"));
        assert!(!format!("{s:?}").contains("s3cret"));

        let s = cfg("[cache]\nredis_url = redis://:pw@h\n")
            .redis_settings()
            .unwrap();
        assert_eq!(s.identity(), "redis://h:6379/0");

        let s = cfg("[cache]\nredis_url = unix:///run/redis.sock?db=4\n")
            .redis_settings()
            .unwrap();
        assert_eq!(s.identity(), "unix:/run/redis.sock?db=4");
        assert_eq!(s.db, 4);

        let s = cfg("[cache]\nredis_cluster_nodes = b:7001, a:7000\nredis_url = redis://x\n")
            .redis_settings()
            .unwrap();
        assert_eq!(s.identity(), "cluster[a:7000,b:7001]");
        assert!(matches!(s.target, RedisTarget::Cluster(ref n) if n.len() == 2));
    }

    #[test]
    #[cfg(feature = "tls")]
    fn sentinel_settings_and_their_errors() {
        let s = cfg(
            "[cache]\nredis_sentinels = s2, s1:26380\nredis_sentinel_master = mymaster\n\
                     redis_sentinel_password = spw\nredis_password = mpw\nredis_db = 3\n",
        )
        .redis_settings()
        .unwrap();
        assert_eq!(s.identity(), "sentinel[s1:26380,s2:26379]/mymaster/3");
        assert_eq!((s.db, s.ca.is_none()), (3, true));
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("mpw"));
        let RedisTarget::Sentinel {
            sentinels,
            master,
            password,
        } = &s.target
        else {
            panic!("{s:?}")
        };
        // The configured order is kept (the first is asked first); the default port is 26379.
        assert_eq!(sentinels[0].to_string(), "s2:26379");
        assert_eq!(master, "mymaster");
        assert_eq!(password.as_ref().map(Secret::expose), Some("spw"));
        assert!(!format!("{s:?}").contains("spw"));

        let err = |ini: &str| cfg(ini).redis_settings().unwrap_err().to_string();
        let e = err("[cache]\nredis_sentinels = s1\n");
        assert!(
            e.contains("line 2") && e.contains("without redis_sentinel_master"),
            "{e}"
        );
        let e = err("[cache]\nbackend = redis\nredis_sentinel_master = m\n");
        assert!(
            e.contains("line 3") && e.contains("redis_sentinels is empty"),
            "{e}"
        );
        let e = err(
            "[cache]\nredis_cluster_nodes = c:7000\nredis_sentinels = s1\nredis_sentinel_master = m\n",
        );
        assert!(
            e.contains("line 3") && e.contains("either Sentinel or Cluster"),
            "{e}"
        );
        let e = err(
            "[cache]\nredis_sentinels = s1\nredis_sentinel_master = m\nredis_url = redis://:pw@h\n",
        );
        assert!(
            e.contains("line 4") && e.contains("remove redis_url"),
            "{e}"
        );
        assert!(!e.contains("pw@"), "{e}");
        let e = CacheConfig::from_ini_str("[cache]\nredis_sentinel_master = my master\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("without spaces"), "{e}");

        // With a CA, the Sentinels and the master are reached over TLS.
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let ini = format!(
            "[cache]\nredis_sentinels = s1\nredis_sentinel_master = m\nredis_ca_file = {}\n",
            ca.display()
        );
        let e = err(&ini);
        assert!(e.contains("no PEM certificate"), "{e}");
    }

    /// `default-features = false`: a server backend is a configuration error naming the
    /// feature, from the settings and from `from_config`.
    #[test]
    #[cfg(not(all(feature = "redis", feature = "memcached")))]
    fn a_backend_without_its_feature_is_a_clear_error() {
        let cases = [
            (cfg!(feature = "redis"), "redis", "redis"),
            (cfg!(feature = "redis"), "redis_pickle", "redis"),
            (cfg!(feature = "memcached"), "memcached", "memcached"),
        ];
        for (on, backend, feature) in cases {
            if on {
                continue;
            }
            let c = cfg(&format!("[cache]\nbackend = {backend}\n"));
            let e = crate::backend::from_config(&c).unwrap_err();
            let text = e.to_string();
            assert!(e.is_config(), "{text}");
            assert!(
                text.contains(&format!("cargo feature `{feature}`")) && text.contains("line 2"),
                "{text}"
            );
        }
        // The local directory needs no feature.
        let dir = tempfile::tempdir().unwrap();
        let c = cfg("[cache]\nbackend = pickle\n").with_pickle_dir(dir.path());
        crate::backend::from_config(&c).unwrap();
    }

    #[test]
    fn memcached_settings() {
        let s = cfg("[cache]\nbackend = memcached_pickle\nmemcached_servers = m2:1, m1\n")
            .memcached_settings()
            .unwrap();
        assert_eq!(s.identity(), "memcached://m1:11211,m2:1");
        assert_eq!(s.format, ValueFormat::Pickle);
        // Placement hashes the servers in the configured order: it is kept.
        assert_eq!(s.servers[0].to_string(), "m2:1");

        let e = cfg("[cache]\nbackend = memcached\n")
            .with_memcached_servers(Vec::new())
            .memcached_settings()
            .unwrap_err();
        assert!(e.is_config(), "{e}");
        assert!(
            e.to_string().contains("memcached_servers is empty") && e.to_string().contains("code"),
            "{e}"
        );
    }

    #[test]
    fn values_set_around_the_parsers_are_checked() {
        let c = CacheConfig {
            timeout: Duration::ZERO,
            ..CacheConfig::default()
        };
        let e = c.memcached_settings().unwrap_err();
        assert!(e.to_string().contains("timeout is 0"), "{e}");
        let c = CacheConfig {
            breaker_failures: 0,
            ..CacheConfig::default()
        };
        let e = c.resilience_settings().unwrap_err();
        assert!(e.to_string().contains("breaker_failures"), "{e}");
        let mut c = CacheConfig::default().with_namespace("a\nb");
        let e = c.file_settings().unwrap_err();
        assert!(e.to_string().contains("code: namespace"), "{e}");
        c.namespace = String::new();
        let r = c.resilience_settings().unwrap();
        assert!(r.refuse_whole_keyspace);
        assert_eq!(r.dir, c.pickle_dir());
    }
}
