//! `ddf-cache import-pickle-dir DIR`: carry a Python DDF cache directory over.
//!
//! The Python DDF's `pickle` backend keeps one file per key, `<pickle_dir>/<key>.pkl`, holding
//! `pickle.dumps(value, HIGHEST_PROTOCOL)`, and treats an entry as expired once its file is older
//! (modification time) than its configured `ttl`. Each `*.pkl` file directly in DIR is read with
//! ddf's restricted pickle decoder (nothing in it is executed: a class or `os.system` is refused)
//! and stored under its key (the file name without `.pkl`) with the time it had left:
//! `--ttl` minus the file's age; without `--ttl`, the cache's own `ttl` (none by default). Files
//! are only read, never changed or deleted. Other files and directories are not looked at.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use ddf::CacheManager;
use ddf::pickle::Value;

use crate::value;

/// The largest file read: the pickle decoder's own input limit.
const MAX_FILE: u64 = 64 << 20;

/// What happened to the files.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) imported: usize,
    pub(crate) expired: usize,
    pub(crate) refused: usize,
}

/// Imports every `*.pkl` of `dir` into `cache`; prints one line per refused file and a summary.
///
/// # Errors
/// When `dir` cannot be listed, or output cannot be written. A file that cannot be read or
/// decoded, or that the cache refuses, is reported and counted, not an error.
pub(crate) fn run(
    cache: &CacheManager,
    dir: &Path,
    ttl: Option<Duration>,
    out: &mut impl Write,
) -> anyhow::Result<Outcome> {
    let now = SystemTime::now();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    let mut outcome = Outcome::default();
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".pkl")) else {
            if Path::new(&name).extension().is_some_and(|e| e == "pkl") {
                outcome.refused += 1;
                writeln!(
                    out,
                    "refused: {}: the file name is not UTF-8",
                    path.display()
                )?;
            }
            continue;
        };
        match import_one(cache, &path, key, ttl, now) {
            Ok(true) => outcome.imported += 1,
            Ok(false) => outcome.expired += 1,
            Err(why) => {
                outcome.refused += 1;
                writeln!(out, "refused: {}: {why:#}", path.display())?;
            }
        }
    }
    writeln!(
        out,
        "imported {}, skipped as expired {}, refused {}",
        outcome.imported, outcome.expired, outcome.refused
    )?;
    Ok(outcome)
}

/// `Ok(true)` imported, `Ok(false)` expired.
fn import_one(
    cache: &CacheManager,
    path: &Path,
    key: &str,
    ttl: Option<Duration>,
    now: SystemTime,
) -> anyhow::Result<bool> {
    let meta = std::fs::metadata(path).context("cannot read the file")?;
    if !meta.is_file() {
        anyhow::bail!("not a regular file");
    }
    if key.is_empty() {
        anyhow::bail!("an empty key (the file is named .pkl)");
    }
    if meta.len() > MAX_FILE {
        anyhow::bail!(
            "{} bytes: larger than the {} MiB the pickle decoder reads",
            meta.len(),
            MAX_FILE >> 20
        );
    }
    let left = match ttl {
        None => None,
        Some(ttl) => {
            // A file dated in the future (clock skew) counts as just written.
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            match ttl.checked_sub(age) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Ok(false),
            }
        }
    };
    let bytes = std::fs::read(path).context("cannot read the file")?;
    let v = Value::from_pickle(&bytes)?;
    if cache.config().backend == ddf::CacheBackend::Redis
        && let Some(what) = value::not_json(&v)
    {
        anyhow::bail!(
            "the redis backend stores JSON, which has no form for {what}: it would read back \
             changed (use redis_pickle)"
        );
    }
    cache.set(key, &v, left)?;
    Ok(true)
}
