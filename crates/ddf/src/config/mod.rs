//! [`CacheConfig`] and [`CacheBackend`]: what the `[cache]` section of `ddf.ini` says.
//!
//! Sources, lowest to highest: built-in defaults, the INI file, the environment, calls in code.
//! Parsing is pure: [`CacheConfig::from_ini_str`] reads text, [`CacheConfig::with_env`] reads
//! `(name, value)` pairs; only [`CacheConfig::load`] touches the file system and `std::env`.
//!
//! The environment variables are `DDF_CACHE_<KEY>` for every key (`DDF_CACHE_BACKEND`,
//! `DDF_CACHE_TTL`, ...) and the Python DDF's `REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD` and
//! `REDIS_DB`; when both name one key, `DDF_CACHE_<KEY>` wins.
//!
//! By topic: `types.rs` holds the types (a leaf the others build on); this file loading and
//! precedence; `keys.rs` the table of keys and
//! the parsers of their values; `values.rs` server addresses and secrets; `ini.rs` the INI reader;
//! `settings/` the per-backend settings a backend is built from, validated once.

mod ini;
mod keys;
mod settings;
mod types;
mod values;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ini::Ini;
pub use keys::CacheConfig;
use keys::{KEYS, KeySpec, known_keys, spec};
pub(crate) use settings::{
    BackendSettings, MemcachedSettings, NearMode, NearSettings, RedisEndpoint, RedisSettings,
    RedisTarget, ResilienceSettings, ValueFormat,
};
pub use types::{CacheBackend, ConfigRow, FallbackMode, UnknownBackend};
pub use values::{Secret, ServerAddr};

use crate::error::{Error, Result, Source};

/// The INI section ddf reads.
pub const SECTION: &str = "cache";

/// Whether a section name is probably a misspelt `[cache]`: the same name in another case, or
/// at most two edits (insertions, deletions, substitutions) away, compared case-insensitively.
fn looks_like_cache(name: &str) -> bool {
    let name = name.trim().to_lowercase();
    let (a, b): (Vec<char>, Vec<char>) = (name.chars().collect(), SECTION.chars().collect());
    if a.len().abs_diff(b.len()) > 2 {
        return false;
    }
    // Levenshtein distance, one row at a time (both names are short).
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut row = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            row[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(row[j] + 1);
        }
        prev = row;
    }
    prev[b.len()] <= 2
}

/// Every key, through its table entry: secrets are redacted as in `ddf-cache config`.
impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("CacheConfig");
        for spec in KEYS {
            d.field(spec.name, &(spec.show)(self));
        }
        d.finish()
    }
}

impl CacheConfig {
    /// Reads INI text (Python configparser rules) over the defaults. Only the `[cache]` section
    /// (and `[DEFAULT]`) is read; other sections are left to the application.
    ///
    /// # Errors
    /// [`Error::Config`] naming the line, the key, the value and what is allowed, for a syntax
    /// error, a bad value or an unknown key in `[cache]`.
    pub fn from_ini_str(text: &str) -> Result<Self> {
        CacheConfig::default().apply_ini(text, None)
    }

    /// Reads an INI file over the defaults (see [`CacheConfig::from_ini_str`]).
    ///
    /// # Errors
    /// [`Error::ConfigFile`] when the file cannot be read; [`Error::Config`] as for
    /// [`CacheConfig::from_ini_str`], naming the file.
    pub fn from_ini_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| Error::ConfigFile {
            path: path.to_owned(),
            error,
        })?;
        CacheConfig::default().apply_ini(&text, Some(path))
    }

    fn apply_ini(mut self, text: &str, path: Option<&Path>) -> Result<Self> {
        let src = |line| Source::Ini {
            path: path.map(Path::to_owned),
            line,
        };
        let doc = Ini::parse(text).map_err(|e| Error::config(src(e.line), e.message))?;
        if let Some((name, line)) = doc
            .section_headers()
            .find(|(n, _)| *n != SECTION && looks_like_cache(n))
        {
            return Err(Error::config(
                src(line),
                format!(
                    "section [{name}] looks like a misspelling of [{SECTION}], the only section \
                     ddf reads (section names are case-sensitive): rename it to [{SECTION}]"
                ),
            ));
        }
        let entries = doc
            .section(SECTION)
            .map_err(|e| Error::config(src(e.line), e.message))?;
        for e in entries {
            let Some(spec) = spec(&e.key) else {
                return Err(Error::config(
                    src(e.line),
                    format!(
                        "unknown key {:?} in [{SECTION}]; known keys: {}",
                        e.key,
                        known_keys()
                    ),
                ));
            };
            self.set_key(spec, &e.raw, src(e.line))?;
        }
        if path.is_some() {
            self.file = path.map(Path::to_owned);
        }
        Ok(self)
    }

    fn set_key(&mut self, spec: &'static KeySpec, value: &str, source: Source) -> Result<()> {
        (spec.apply)(self, value).map_err(|allowed| {
            let shown = if spec.secret {
                "<redacted>".to_owned()
            } else {
                format!("{value:?}")
            };
            Error::config(
                source.clone(),
                format!("{} = {shown} is not valid: {allowed}", spec.name),
            )
        })?;
        self.sources.insert(spec.name, source);
        Ok(())
    }

    /// Applies environment overrides from `(name, value)` pairs: `DDF_CACHE_<KEY>` for every key,
    /// and the Python DDF's `REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD`, `REDIS_DB` (a
    /// `DDF_CACHE_` variable for the same key wins). Other variables are ignored, except an
    /// unknown `DDF_CACHE_*` name, which is an error (a typo would otherwise go unnoticed).
    ///
    /// Pure: pass `std::env::vars()` or a test's own pairs.
    ///
    /// # Errors
    /// [`Error::Config`] naming the variable, its value (redacted for secrets) and what is allowed.
    pub fn with_env<I, K, V>(mut self, vars: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut legacy = Vec::new();
        let mut ours = Vec::new();
        for (k, v) in vars {
            let (k, v) = (k.as_ref(), v.as_ref());
            if let Some(rest) = k.strip_prefix("DDF_CACHE_") {
                let name = rest.to_ascii_lowercase();
                let Some(spec) = spec(&name) else {
                    return Err(Error::config(
                        Source::Env(k.to_owned()),
                        format!(
                            "unknown setting {k}; known: {}",
                            KEYS.iter()
                                .map(|s| format!("DDF_CACHE_{}", s.name.to_ascii_uppercase()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                };
                ours.push((spec, k.to_owned(), v.to_owned()));
            } else if let Some(spec) = KEYS.iter().find(|s| s.legacy_env == Some(k)) {
                legacy.push((spec, k.to_owned(), v.to_owned()));
            }
        }
        for (spec, k, v) in legacy.into_iter().chain(ours) {
            self.set_key(spec, &v, Source::Env(k))?;
        }
        Ok(self)
    }

    /// Finds the INI file: `explicit`, else `$DDF_CONFIG`, else `./ddf.ini`, else
    /// `$XDG_CONFIG_HOME/ddf/ddf.ini` (`~/.config/ddf/ddf.ini`). `None` when there is none.
    ///
    /// Pure over its inputs: `env` looks a variable up, `exists` checks a path.
    pub fn discover(
        explicit: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        exists: impl Fn(&Path) -> bool,
    ) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return Some(p.to_owned());
        }
        if let Some(p) = env("DDF_CONFIG").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        let local = PathBuf::from("ddf.ini");
        if exists(&local) {
            return Some(local);
        }
        let xdg = env("XDG_CONFIG_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config")))?;
        let p = xdg.join("ddf").join("ddf.ini");
        exists(&p).then_some(p)
    }

    /// The configuration from the usual sources: the INI file found by
    /// [`CacheConfig::discover`] (with `explicit` first), then the process environment.
    /// With no file, the defaults plus the environment.
    ///
    /// # Errors
    /// An explicit or `$DDF_CONFIG` file that cannot be read, or any bad value.
    pub fn load_from(explicit: Option<&Path>) -> Result<Self> {
        let env = |k: &str| std::env::var(k).ok();
        let base = match Self::discover(explicit, env, |p| p.is_file()) {
            Some(path) => {
                let config = Self::from_ini_file(&path)?;
                tracing::info!(file = %path.display(), "ddf: configuration read");
                config
            }
            None => {
                tracing::info!(
                    looked_in = %Self::search_path(env),
                    "ddf: no configuration file found; using the defaults and the environment"
                );
                Self::default()
            }
        };
        base.with_env(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// Where [`CacheConfig::discover`] looks when no file is given, for the log.
    fn search_path(env: impl Fn(&str) -> Option<String>) -> String {
        let xdg = env("XDG_CONFIG_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config")));
        let mut places = vec!["$DDF_CONFIG (unset)".to_owned(), "./ddf.ini".to_owned()];
        if let Some(x) = xdg {
            places.push(x.join("ddf").join("ddf.ini").display().to_string());
        }
        places.join(", ")
    }

    /// [`CacheConfig::load_from`] with no explicit file.
    ///
    /// # Errors
    /// As [`CacheConfig::load_from`].
    pub fn load() -> Result<Self> {
        Self::load_from(None)
    }

    /// The file the configuration was read from, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Where a key's value came from.
    pub fn source_of(&self, key: &str) -> Source {
        self.sources.get(key).cloned().unwrap_or(Source::Default)
    }

    /// Every key with its value (secrets redacted), source, environment variable and meaning:
    /// what `ddf-cache config` prints.
    pub fn describe(&self) -> Vec<ConfigRow> {
        KEYS.iter()
            .map(|k| ConfigRow {
                key: k.name,
                value: (k.show)(self),
                source: self.source_of(k.name),
                env: match k.legacy_env {
                    Some(l) => format!("DDF_CACHE_{} or {l}", k.name.to_ascii_uppercase()),
                    None => format!("DDF_CACHE_{}", k.name.to_ascii_uppercase()),
                },
                doc: k.doc,
            })
            .collect()
    }

    /// The cache directory of the file backend: `pickle_dir`, else `$XDG_CACHE_HOME/ddf`, else
    /// `$HOME/.cache/ddf`, else a `ddf-cache` folder in the temporary directory.
    pub fn pickle_dir(&self) -> PathBuf {
        if let Some(p) = &self.pickle_dir {
            return p.clone();
        }
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(x) = env("XDG_CACHE_HOME") {
            return PathBuf::from(x).join("ddf");
        }
        if let Some(h) = env("HOME") {
            return PathBuf::from(h).join(".cache").join("ddf");
        }
        std::env::temp_dir().join("ddf-cache")
    }

    fn code(mut self, key: &'static str) -> Self {
        self.sources.insert(key, Source::Code);
        self
    }

    /// Sets the backend.
    #[must_use]
    pub fn with_backend(mut self, backend: CacheBackend) -> Self {
        self.backend = backend;
        self.code("backend")
    }

    /// Enables or disables the cache.
    #[must_use]
    pub fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self.code("enabled")
    }

    /// Sets the default TTL (`None`: no expiry).
    #[must_use]
    pub fn with_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self.code("ttl")
    }

    /// Sets the namespace.
    #[must_use]
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self.code("namespace")
    }

    /// Sets the file backend's directory.
    #[must_use]
    pub fn with_pickle_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pickle_dir = Some(dir.into());
        self.code("pickle_dir")
    }

    /// Sets the Redis host and port.
    #[must_use]
    pub fn with_redis(mut self, host: impl Into<String>, port: u16) -> Self {
        self.redis_host = host.into();
        self.redis_port = port;
        self.code("redis_host").code("redis_port")
    }

    /// Sets the Redis password.
    #[must_use]
    pub fn with_redis_password(mut self, password: Option<String>) -> Self {
        self.redis_password = password.map(Secret::new);
        self.code("redis_password")
    }

    /// Sets the Redis database number.
    #[must_use]
    pub fn with_redis_db(mut self, db: u32) -> Self {
        self.redis_db = db;
        self.code("redis_db")
    }

    /// Sets the Redis URL.
    #[must_use]
    pub fn with_redis_url(mut self, url: Option<String>) -> Self {
        self.redis_url = url.map(Secret::new);
        self.code("redis_url")
    }

    /// Sets the Redis Cluster nodes.
    #[must_use]
    pub fn with_redis_cluster_nodes(mut self, nodes: Vec<ServerAddr>) -> Self {
        self.redis_cluster_nodes = nodes;
        self.code("redis_cluster_nodes")
    }

    /// Finds the Redis master through Sentinel: the Sentinels' addresses and the name they
    /// monitor the master under (`redis_sentinels`, `redis_sentinel_master`).
    ///
    /// ```
    /// use ddf::{CacheConfig, ServerAddr};
    /// let sentinels = vec![ServerAddr::parse("10.0.0.1:26379", 26379)?];
    /// let config = CacheConfig::default().with_redis_sentinels(sentinels, "mymaster");
    /// assert_eq!(config.redis_sentinel_master.as_deref(), Some("mymaster"));
    /// # Ok::<(), String>(())
    /// ```
    #[must_use]
    pub fn with_redis_sentinels(
        mut self,
        sentinels: Vec<ServerAddr>,
        master: impl Into<String>,
    ) -> Self {
        self.redis_sentinels = sentinels;
        self.redis_sentinel_master = Some(master.into());
        self.code("redis_sentinels").code("redis_sentinel_master")
    }

    /// Sets the Memcached servers.
    #[must_use]
    pub fn with_memcached_servers(mut self, servers: Vec<ServerAddr>) -> Self {
        self.memcached_servers = servers;
        self.code("memcached_servers")
    }

    /// Sets `compress_min_bytes`: Memcached values longer than this are stored zlib-compressed
    /// (flags 8, readable by pymemcache's `CompressedSerde`); `None`, the default, never.
    #[must_use]
    pub fn with_compress_min_bytes(mut self, min: Option<usize>) -> Self {
        self.compress_min_bytes = min;
        self.code("compress_min_bytes")
    }

    /// Sets the connect and per-operation timeouts.
    #[must_use]
    pub fn with_timeouts(mut self, connect: Duration, operation: Duration) -> Self {
        self.connect_timeout = connect;
        self.timeout = operation;
        self.code("connect_timeout").code("timeout")
    }
}

#[cfg(test)]
mod tests {
    use super::keys::show_list;
    use super::*;

    fn cfg(text: &str) -> Result<CacheConfig> {
        CacheConfig::from_ini_str(text)
    }

    #[test]
    fn defaults() {
        let c = CacheConfig::default();
        assert_eq!(c.backend, CacheBackend::Pickle);
        assert!(c.enabled);
        assert_eq!(c.ttl, None);
        assert_eq!(c.namespace, "ddf:");
        assert_eq!(c.memcached_servers[0].to_string(), "localhost:11211");
        assert_eq!(c.timeout, Duration::from_secs(2));
    }

    #[test]
    fn backend_names_round_trip() {
        for b in CacheBackend::ALL {
            assert_eq!(b.as_str().parse::<CacheBackend>().unwrap(), b);
            assert_eq!(b.to_string(), b.as_str());
        }
        assert_eq!(
            " Redis_Pickle ".parse::<CacheBackend>().unwrap(),
            CacheBackend::RedisPickle
        );
    }

    #[test]
    fn every_seed_key_is_read() {
        let c = cfg("[cache]\nbackend = memcached\nenabled = no\nttl = 3600\n\
             redis_host = r.example\nredis_port = 6380\nredis_password = s3cret\nredis_db = 2\n\
             memcached_servers = localhost:11211, 192.168.1.100:11212, m3\n\
             pickle_dir = /tmp/ddf_cache\nnamespace =\n")
        .unwrap();
        assert_eq!(c.backend, CacheBackend::Memcached);
        assert!(!c.enabled);
        assert_eq!(c.ttl, Some(Duration::from_secs(3600)));
        assert_eq!(c.redis_host, "r.example");
        assert_eq!(c.redis_port, 6380);
        assert_eq!(c.redis_password.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(c.redis_db, 2);
        assert_eq!(
            show_list(&c.memcached_servers),
            "localhost:11211, 192.168.1.100:11212, m3:11211"
        );
        assert_eq!(c.pickle_dir.as_deref(), Some(Path::new("/tmp/ddf_cache")));
        assert_eq!(c.namespace, "");
        assert_eq!(
            c.source_of("ttl"),
            Source::Ini {
                path: None,
                line: 4
            }
        );
        assert_eq!(c.source_of("timeout"), Source::Default);
    }

    #[test]
    fn empty_ttl_means_no_expiry() {
        assert_eq!(cfg("[cache]\nttl =\n").unwrap().ttl, None);
    }

    #[test]
    fn bad_backend_lists_the_six_names_with_line_and_value() {
        let e = cfg("[cache]\n\nbackend = redsi\n").unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("\"redsi\""), "{e}");
        for b in CacheBackend::ALL {
            assert!(e.contains(b.as_str()), "{e}");
        }
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ddf.ini");
        std::fs::write(&p, "[cache]\nttl = soon\n").unwrap();
        let e = CacheConfig::from_ini_file(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
        assert!(
            e.contains("line 2") && e.contains("ttl") && e.contains("\"soon\""),
            "{e}"
        );
        assert!(e.contains("whole number of seconds"), "{e}");
    }

    #[test]
    fn unknown_key_is_an_error_that_lists_known_keys() {
        let e = cfg("[cache]\nbakend = redis\n").unwrap_err().to_string();
        assert!(e.contains("\"bakend\"") && e.contains("line 2"), "{e}");
        assert!(e.contains("memcached_servers"), "{e}");
    }

    #[test]
    fn a_misspelt_cache_section_is_an_error_naming_it_and_the_file() {
        for name in ["Cache", "CACHE", "cahce", "cach", "caches", " cache"] {
            let e = cfg(&format!("[app]\nx = 1\n[{name}]\nbackend = redis\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("[{name}]")) && e.contains("line 3"),
                "{e}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.ini");
        std::fs::write(&p, "[Cache]\nbackend = redis\n").unwrap();
        let e = CacheConfig::from_ini_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("app.ini, line 1") && e.contains("[Cache]"),
            "{e}"
        );
        // Sections of other names are the application's.
        for name in ["app", "database", "logging", "server"] {
            cfg(&format!("[{name}]\nx = 1\n[cache]\nttl = 5\n")).unwrap();
        }
    }

    #[test]
    fn other_sections_are_ignored() {
        let c = cfg("[app]\nanything = 1\n[cache]\nttl = 5\n").unwrap();
        assert_eq!(c.ttl, Some(Duration::from_secs(5)));
    }

    #[test]
    fn every_bad_value_is_named() {
        for (text, needle) in [
            ("enabled = maybe", "yes/no"),
            ("ttl = 0", "at least 1"),
            ("ttl = -5", "at least 1"),
            ("redis_port = 70000", "1 to 65535"),
            ("redis_db = x", "database number"),
            ("memcached_servers = a:b", "host:port"),
            ("memcached_servers = ,", "at least one"),
            ("redis_url = http://x", "redis://"),
            ("timeout = 0", "greater than 0"),
            ("connect_timeout = nan", "greater than 0"),
        ] {
            let e = cfg(&format!("[cache]\n{text}\n")).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(e.contains("line 2"), "{text}: {e}");
        }
    }

    #[test]
    fn secrets_never_show() {
        let c = cfg("[cache]\nredis_password = hunter2\nredis_url = redis://u:hunter2@h:1/0\n")
            .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        let rows = format!("{:?}", c.describe());
        assert!(!rows.contains("hunter2"), "{rows}");
        assert!(rows.contains("redis://<redacted>@h:1/0"), "{rows}");
        // A bad secret value is not echoed either.
        let e = CacheConfig::default()
            .with_env([("DDF_CACHE_REDIS_URL", "http://u:hunter2@h")])
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("DDF_CACHE_REDIS_URL"), "{e}");
    }

    #[test]
    fn precedence_default_ini_env_code() {
        let c = cfg("[cache]\nredis_host = from-ini\nredis_port = 1111\nttl = 5\n")
            .unwrap()
            .with_env([
                ("REDIS_HOST", "from-legacy-env"),
                ("DDF_CACHE_REDIS_HOST", "from-ddf-env"),
                ("REDIS_PORT", "2222"),
                ("UNRELATED", "x"),
            ])
            .unwrap()
            .with_ttl(Some(Duration::from_secs(9)));
        assert_eq!(c.redis_host, "from-ddf-env");
        assert_eq!(
            c.source_of("redis_host"),
            Source::Env("DDF_CACHE_REDIS_HOST".into())
        );
        assert_eq!(c.redis_port, 2222);
        assert_eq!(c.ttl, Some(Duration::from_secs(9)));
        assert_eq!(c.source_of("ttl"), Source::Code);
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let e = CacheConfig::default()
            .with_env([("REDIS_PORT", "http")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("REDIS_PORT") && e.contains("\"http\""), "{e}");
        let e = CacheConfig::default()
            .with_env([("DDF_CACHE_BAKEND", "x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("DDF_CACHE_BACKEND"), "{e}");
    }

    #[test]
    fn discovery_order() {
        let none = |_: &str| None::<String>;
        assert_eq!(
            CacheConfig::discover(Some(Path::new("/x.ini")), none, |_| true),
            Some(PathBuf::from("/x.ini"))
        );
        let env = |k: &str| match k {
            "DDF_CONFIG" => Some("/env.ini".to_owned()),
            "HOME" => Some("/home/u".to_owned()),
            _ => None,
        };
        assert_eq!(
            CacheConfig::discover(None, env, |_| true),
            Some(PathBuf::from("/env.ini"))
        );
        let home = |k: &str| (k == "HOME").then(|| "/home/u".to_owned());
        assert_eq!(
            CacheConfig::discover(None, home, |_| true),
            Some(PathBuf::from("ddf.ini"))
        );
        assert_eq!(
            CacheConfig::discover(None, home, |p| p != Path::new("ddf.ini")),
            Some(PathBuf::from("/home/u/.config/ddf/ddf.ini"))
        );
        let xdg = |k: &str| (k == "XDG_CONFIG_HOME").then(|| "/xdg".to_owned());
        assert_eq!(
            CacheConfig::discover(None, xdg, |p| p != Path::new("ddf.ini")),
            Some(PathBuf::from("/xdg/ddf/ddf.ini"))
        );
        assert_eq!(CacheConfig::discover(None, home, |_| false), None);
    }
}
