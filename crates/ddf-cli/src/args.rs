//! Command-line arguments (clap derive).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Inspect and operate a ddf cache: the configured backend (a local cache directory by
/// default, or Redis or Memcached) as the ddf library and the Python DDF see it.
///
/// Configuration: the INI file from --config, else $DDF_CONFIG, else ./ddf.ini, else
/// ~/.config/ddf/ddf.ini; then DDF_CACHE_<KEY> and REDIS_* environment variables; then
/// --backend/--namespace. Exit codes: 0 success, 1 miss (get) or nothing removed (delete),
/// 2 error, 3 a write, delete, invalidation or flush that the server did not take: the
/// fallback did (Redis or Memcached down; see --fallback-ok).
#[derive(Debug, Parser)]
#[command(name = "ddf-cache", version, about, long_about = None)]
pub struct Args {
    /// The INI file to read (its [cache] section).
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Override the backend: none, pickle, redis, redis_pickle, memcached, memcached_pickle.
    #[arg(short, long, global = true, value_name = "NAME")]
    pub backend: Option<String>,

    /// Override the namespace (the prefix of this cache's keys).
    #[arg(short, long, global = true, value_name = "PREFIX")]
    pub namespace: Option<String>,

    /// More logging on stderr: -v the file read, the backend and servers chosen, state
    /// changes; -vv also connections and every hit and miss; -vvv everything. DDF_LOG sets a
    /// filter directly.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Count a write, delete, invalidation or flush answered by the fallback (the server
    /// down) as success: exit 0 instead of 3, without the notice.
    #[arg(long, global = true)]
    pub fallback_ok: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a value as JSON. A miss prints nothing and exits 1.
    Get {
        /// The key.
        key: String,
        /// Print what is stored instead of the value: TTL, stored form (codec), flags, size.
        #[arg(long)]
        meta: bool,
    },
    /// List the keys that start with PREFIX (literally), with their TTL, at most --limit.
    Keys {
        /// The prefix (empty: every key of this cache).
        #[arg(default_value = "")]
        prefix: String,
        /// The most keys to list (the walk stops there).
        #[arg(long, default_value_t = 100, value_name = "N")]
        limit: usize,
    },
    /// Store a value (a string, or JSON with --json). VALUE `-` reads standard input.
    Set {
        /// The key.
        key: String,
        /// The value (with --json: JSON, in the form `get` prints; see the README).
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Expiry in seconds, greater than 0 (default: the configured ttl).
        #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
        ttl: Option<f64>,
        /// Parse VALUE as JSON instead of storing it as a string.
        #[arg(long)]
        json: bool,
    },
    /// Store a value only if the key holds none (atomic). Exits 0 if it was stored, 1 if a
    /// value was there (left unchanged).
    Add {
        /// The key.
        key: String,
        /// The value (with --json: JSON, in the form `get` prints).
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Expiry in seconds, greater than 0 (default: the configured ttl).
        #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
        ttl: Option<f64>,
        /// Parse VALUE as JSON instead of storing it as a string.
        #[arg(long)]
        json: bool,
    },
    /// Add DELTA (default 1) to the integer under the key, atomically, and print the new value;
    /// a missing key counts from 0. Counters stay within 0..=2^63-1 (a step outside fails and
    /// changes nothing).
    Incr {
        /// The key.
        key: String,
        /// How much to add.
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        delta: i64,
    },
    /// Subtract DELTA (default 1), as `incr`.
    Decr {
        /// The key.
        key: String,
        /// How much to subtract.
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        delta: i64,
    },
    /// Set a value's expiry to --ttl seconds from now (default: the configured ttl; none: no
    /// expiry). Exits 0 if the key holds a value, 1 if not.
    Touch {
        /// The key.
        key: String,
        /// Expiry in seconds, greater than 0.
        #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
        ttl: Option<f64>,
    },
    /// Print how long a value has left (`no expiry`, or seconds). A miss prints nothing and
    /// exits 1.
    Ttl {
        /// The key.
        key: String,
    },
    /// Remove a value. Exits 0 if something was removed, 1 if not.
    Delete {
        /// The key.
        key: String,
    },
    /// Remove every key that starts with PREFIX (literally) and print how many.
    Invalidate {
        /// The prefix; `*`, `?` and `[` have no special meaning.
        prefix: String,
    },
    /// Remove every entry of this cache (its namespace), and nothing else.
    Flush,
    /// Check that the backend answers; print its name and the round-trip time.
    Ping,
    /// Print the backend's storage facts (entries, bytes, server state).
    Stats,
    /// Print the effective configuration and where each value came from (secrets redacted).
    Config,
    /// Measure get/set/delete and the batch forms on the configured backend, in a namespace of
    /// its own (<namespace>ddf-bench:, every key with a TTL), removed at the end and on
    /// SIGINT/SIGTERM (exit 130).
    Bench(BenchArgs),
    /// Import a Python DDF cache directory (`<key>.pkl` files): each entry with the time it had
    /// left; prints what was imported, skipped as expired and refused. Never deletes the files.
    /// Exits 1 if a file was refused.
    ImportPickleDir {
        /// The Python DDF's pickle_dir.
        dir: PathBuf,
        /// The Python DDF's ttl in seconds: an entry expires that long after its file's
        /// modification time (default: no expiry but the cache's own ttl).
        #[arg(long, value_name = "SECS")]
        ttl: Option<f64>,
    },
}

/// `ddf-cache bench` options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Operations per measurement.
    #[arg(long, default_value_t = 2000)]
    pub ops: usize,
    /// Size of each value in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Thread counts to measure, comma-separated (each thread runs the same number of
    /// operations on its own keys).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Keys removed by the invalidate_pattern measurement...
    #[arg(long, default_value_t = 10_000)]
    pub invalidate: usize,
    /// ...among this many keys in the cache (0 skips the measurement).
    #[arg(long, default_value_t = 100_000)]
    pub among: usize,
    /// Keys per batch in the get_many/set_many/delete_many measurements.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Measure the async face (tasks on a tokio runtime) instead, beside its baselines from
    /// the same run: `redis-benchmark -c <tasks> -P 1` (Redis, when on PATH), the sync face
    /// with 2 threads (Memcached), the sync `get` (the others).
    #[arg(long = "async")]
    pub r#async: bool,
    /// With --async: task counts to measure, comma-separated (each task runs --ops operations
    /// on its own keys).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub tasks: Vec<usize>,
}
