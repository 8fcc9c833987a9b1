//! The file backend (`backend = pickle`): one file per entry in a local cache directory.
//!
//! # Layout
//! Entry files sit flat in the directory, named by [`crate::key::file_name`] (percent-encoded
//! `namespace + key`, ending in `.ddf`; long keys cut and hashed). Any UTF-8 key, including `/`,
//! `..`, absolute paths, control characters, the empty key and 10 kB keys, maps to one plain
//! name inside the directory. Other files in the directory are never touched.
//!
//! Each file holds a header, the whole key, the value and a CRC-32:
//!
//! ```text
//! "DDF\x01" | flags u32 | expires_at_ms u64 (0 = never) | key_len u32 | value_len u32 | key | value | crc32 u32
//! ```
//! (little endian). A file that is short, has another magic, a wrong length or checksum, or holds
//! another key reads as a miss with a warning, never as wrong data.
//!
//! # Guarantees
//! - Writes go to a uniquely named temporary file in the same directory and are renamed over the
//!   entry: a reader sees the old value or the new one, never a torn file, also across processes.
//!   There is no `fsync` (this is a cache): after a power loss an entry may be lost or read as a
//!   miss, never as wrong data.
//! - Each entry carries its own expiry, so per-call TTLs work with or without a default `ttl`.
//!   Expired entries read as misses and their file is removed (only if it is still the file that
//!   was read, so a concurrent fresh write survives).
//! - `delete_prefix` lists the directory once and opens only the files whose names match the
//!   prefix (plus long hashed names whose visible part is shorter than the prefix): its cost is
//!   one `readdir` of the directory plus one read and one unlink per matching entry. `clear` is
//!   `delete_prefix` of the empty prefix (every entry of this namespace) and also removes
//!   temporary files left by crashed writers more than an hour ago.
//! - The directory is created with mode 0700 and files with mode 0600.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::{debug, warn};

use super::{Backend, BackendStatus, Item};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::key::{self, FilePrefix, Keyspace, PrefixMatch};

const NAME: &str = "pickle";
const MAGIC: &[u8; 4] = b"DDF\x01";
const HEADER: usize = 4 + 4 + 8 + 4 + 4;
const TRAILER: usize = 4;
/// The largest entry file read (header, 4 GiB key, 4 GiB value): anything larger is not ours.
const MAX_FILE: u64 = (HEADER + TRAILER) as u64 + 2 * u32::MAX as u64;
/// Temporary files older than this are removed by `clear`.
const STALE_TMP: Duration = Duration::from_secs(3600);

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The file backend. Cheap to share; safe for many threads and processes at once.
#[derive(Debug)]
pub struct FileBackend {
    dir: PathBuf,
    keys: Keyspace,
    clock: Arc<dyn Clock>,
}

/// A decoded entry file.
struct Decoded<'a> {
    flags: u32,
    expires_at_ms: u64,
    key: &'a [u8],
    value: &'a [u8],
}

fn decode(buf: &[u8]) -> Option<Decoded<'_>> {
    if buf.len() < HEADER + TRAILER || &buf[..4] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let flags = u32_at(4);
    let mut e = [0u8; 8];
    e.copy_from_slice(&buf[8..16]);
    let expires_at_ms = u64::from_le_bytes(e);
    let key_len = u32_at(16) as usize;
    let value_len = u32_at(20) as usize;
    let body_end = HEADER.checked_add(key_len)?.checked_add(value_len)?;
    if buf.len() != body_end.checked_add(TRAILER)? {
        return None;
    }
    if crc32fast::hash(&buf[..body_end]) != u32_at(body_end) {
        return None;
    }
    Some(Decoded {
        flags,
        expires_at_ms,
        key: &buf[HEADER..HEADER + key_len],
        value: &buf[HEADER + key_len..body_end],
    })
}

fn encode(storage_key: &str, item: &Item, expires_at_ms: u64) -> Result<Vec<u8>> {
    let too_big = |what: &str| {
        Error::InvalidArgument(format!(
            "the {what} is larger than the file backend's limit of 4 GiB"
        ))
    };
    let key_len = u32::try_from(storage_key.len()).map_err(|_| too_big("key"))?;
    let value_len = u32::try_from(item.data.len()).map_err(|_| too_big("value"))?;
    let mut buf = Vec::with_capacity(HEADER + storage_key.len() + item.data.len() + TRAILER);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&item.flags.to_le_bytes());
    buf.extend_from_slice(&expires_at_ms.to_le_bytes());
    buf.extend_from_slice(&key_len.to_le_bytes());
    buf.extend_from_slice(&value_len.to_le_bytes());
    buf.extend_from_slice(storage_key.as_bytes());
    buf.extend_from_slice(&item.data);
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

#[cfg(unix)]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.len() == b.len() && a.modified().ok() == b.modified().ok()
}

impl FileBackend {
    /// Opens (creating it with mode 0700 if needed) a cache directory for a namespace.
    ///
    /// # Errors
    /// [`Error::Backend`] when the directory cannot be created or is not a directory.
    pub fn open(dir: impl Into<PathBuf>, namespace: &str) -> Result<Self> {
        Self::with_clock(dir, namespace, Arc::new(SystemClock))
    }

    /// [`FileBackend::open`] with a given clock (tests use [`crate::clock::MockClock`]).
    ///
    /// # Errors
    /// As [`FileBackend::open`].
    pub fn with_clock(
        dir: impl Into<PathBuf>,
        namespace: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let dir = dir.into();
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(&dir)
            .map_err(|e| Error::io(NAME, format_args!("cannot create {}", dir.display()), e))?;
        let meta = fs::metadata(&dir)
            .map_err(|e| Error::io(NAME, format_args!("cannot open {}", dir.display()), e))?;
        if !meta.is_dir() {
            return Err(Error::Backend {
                backend: NAME,
                message: format!("{} is not a directory", dir.display()),
                temporary: false,
                source: None,
            });
        }
        Ok(FileBackend {
            dir,
            keys: Keyspace::new(namespace),
            clock,
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, storage_key: &str) -> PathBuf {
        self.dir.join(key::file_name(storage_key))
    }

    fn expires_at(&self, ttl: Option<Duration>) -> u64 {
        match ttl {
            None => 0,
            Some(t) => self
                .clock
                .now_ms()
                .saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
                .max(1),
        }
    }

    fn is_expired(&self, expires_at_ms: u64) -> bool {
        expires_at_ms != 0 && expires_at_ms <= self.clock.now_ms()
    }

    /// Reads a whole file with its metadata; `None` when it does not exist.
    fn read_file(path: &Path) -> io::Result<Option<(Vec<u8>, fs::Metadata)>> {
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = f.metadata()?;
        // Entry files are never modified in place (writes rename a new file over the old one),
        // so the size from fstat is the size to read: one read, no probe for end of file.
        let len = match usize::try_from(meta.len()) {
            Ok(len) if meta.len() <= MAX_FILE => len,
            // Larger than any entry: not ours. Read nothing; it decodes as a miss.
            _ => return Ok(Some((Vec::new(), meta))),
        };
        let mut buf = vec![0u8; len];
        match f.read_exact(&mut buf) {
            Ok(()) => {}
            // Shrunk under us (not one of our files, which never change in place): a miss.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => buf.clear(),
            Err(e) => return Err(e),
        }
        Ok(Some((buf, meta)))
    }

    /// Removes `path` if it is still the file described by `meta`.
    fn remove_if_same(path: &Path, meta: &fs::Metadata) -> bool {
        match fs::symlink_metadata(path) {
            Ok(now) if same_file(&now, meta) => fs::remove_file(path).is_ok(),
            _ => false,
        }
    }

    fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<()> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{n}-{}.tmp",
            std::process::id(),
            self.clock.now_ms()
        ));
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let result = opts
            .open(&tmp)
            .and_then(|mut f| f.write_all(data))
            .and_then(|()| fs::rename(&tmp, path));
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(
                NAME,
                format_args!("cannot write {}", path.display()),
                e,
            ));
        }
        Ok(())
    }

    /// Reads, checks and (when expired) removes an entry. `Ok(None)` for absent, corrupt,
    /// foreign or expired entries.
    fn load(&self, storage_key: &str, path: &Path) -> Result<Option<Item>> {
        let Some((buf, meta)) = Self::read_file(path)
            .map_err(|e| Error::io(NAME, format_args!("cannot read {}", path.display()), e))?
        else {
            return Ok(None);
        };
        let Some(entry) = decode(&buf) else {
            warn!(path = %path.display(), "cache file is corrupt, truncated or not a ddf entry; treating it as a miss");
            return Ok(None);
        };
        if entry.key != storage_key.as_bytes() {
            warn!(path = %path.display(), "cache file holds another key; treating it as a miss");
            return Ok(None);
        }
        if self.is_expired(entry.expires_at_ms) {
            if Self::remove_if_same(path, &meta) {
                debug!(path = %path.display(), "removed expired entry");
            }
            return Ok(None);
        }
        Ok(Some(Item {
            data: entry.value.to_vec(),
            flags: entry.flags,
        }))
    }

    /// Removes an entry file if it is ours; returns whether it held a live (unexpired) entry
    /// whose key starts with `storage_prefix`.
    fn remove_entry(&self, path: &Path, storage_prefix: &str, check_key: bool) -> Result<bool> {
        let Some((buf, meta)) = Self::read_file(path)
            .map_err(|e| Error::io(NAME, format_args!("cannot read {}", path.display()), e))?
        else {
            return Ok(false);
        };
        let live = match decode(&buf) {
            Some(entry) => {
                if check_key && !entry.key.starts_with(storage_prefix.as_bytes()) {
                    return Ok(false);
                }
                !self.is_expired(entry.expires_at_ms)
            }
            // Our name and our magic but a bad checksum: a damaged entry of ours; remove it
            // without counting it. Anything else is not ours: leave it.
            None if buf.starts_with(MAGIC) => false,
            None => return Ok(false),
        };
        match fs::symlink_metadata(path) {
            Ok(now) if same_file(&now, &meta) => match fs::remove_file(path) {
                Ok(()) => Ok(live),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(Error::io(
                    NAME,
                    format_args!("cannot remove {}", path.display()),
                    e,
                )),
            },
            // Replaced by a concurrent write, or removed by someone else: the newer value wins.
            _ => Ok(false),
        }
    }

    fn remove_stale_tmp(&self) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        for ent in rd.flatten() {
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.starts_with(".tmp-") && name.ends_with(".tmp")) {
                continue;
            }
            let old = ent
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP);
            if old {
                let _ = fs::remove_file(ent.path());
            }
        }
    }
}

impl Backend for FileBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn get(&self, key: &str) -> Result<Option<Item>> {
        let sk = self.keys.storage_key(key);
        self.load(&sk, &self.path_of(&sk))
    }

    fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        let sk = self.keys.storage_key(key);
        let data = encode(&sk, item, self.expires_at(ttl))?;
        self.write_atomic(&self.path_of(&sk), &data)
    }

    fn delete(&self, key: &str) -> Result<bool> {
        let sk = self.keys.storage_key(key);
        self.remove_entry(&self.path_of(&sk), &sk, true)
    }

    fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let sp = self.keys.storage_key(prefix);
        let matcher = FilePrefix::new(&sp);
        let rd = fs::read_dir(&self.dir)
            .map_err(|e| Error::io(NAME, format_args!("cannot list {}", self.dir.display()), e))?;
        let mut removed = 0;
        for ent in rd {
            let ent = ent.map_err(|e| {
                Error::io(NAME, format_args!("cannot list {}", self.dir.display()), e)
            })?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            let check_key = match matcher.matches(name) {
                PrefixMatch::No => continue,
                PrefixMatch::Yes => false,
                PrefixMatch::Maybe => true,
            };
            removed += u64::from(self.remove_entry(&ent.path(), &sp, check_key)?);
        }
        Ok(removed)
    }

    fn clear(&self) -> Result<()> {
        self.remove_stale_tmp();
        self.delete_prefix("").map(|_| ())
    }

    fn info(&self) -> Result<Vec<(String, String)>> {
        let matcher = FilePrefix::new(self.keys.namespace());
        let rd = fs::read_dir(&self.dir)
            .map_err(|e| Error::io(NAME, format_args!("cannot list {}", self.dir.display()), e))?;
        let (mut entries, mut bytes, mut other) = (0u64, 0u64, 0u64);
        for ent in rd.flatten() {
            let name = ent.file_name();
            match name.to_str().map(|n| matcher.matches(n)) {
                Some(PrefixMatch::Yes | PrefixMatch::Maybe) => {
                    entries += 1;
                    bytes += ent.metadata().map(|m| m.len()).unwrap_or(0);
                }
                _ => other += 1,
            }
        }
        Ok(vec![
            ("directory".to_owned(), self.dir.display().to_string()),
            (
                "entries (this namespace, expired included)".to_owned(),
                entries.to_string(),
            ),
            ("bytes on disk".to_owned(), bytes.to_string()),
            ("other files in the directory".to_owned(), other.to_string()),
        ])
    }

    fn ping(&self) -> Result<BackendStatus> {
        let probe = self.dir.join(format!(".ping-{}.tmp", std::process::id()));
        fs::write(&probe, b"ping")
            .and_then(|()| fs::remove_file(&probe))
            .map_err(|e| {
                Error::io(
                    NAME,
                    format_args!("cannot write in {}", self.dir.display()),
                    e,
                )
            })?;
        Ok(BackendStatus {
            detail: format!("directory {} is writable", self.dir.display()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MockClock;

    fn backend() -> (tempfile::TempDir, FileBackend, MockClock) {
        let dir = tempfile::tempdir().unwrap();
        let clock = MockClock::new(1_000_000);
        let b =
            FileBackend::with_clock(dir.path().join("c"), "ns:", Arc::new(clock.clone())).unwrap();
        (dir, b, clock)
    }

    fn item(s: &str) -> Item {
        Item::new(s.as_bytes().to_vec(), 16)
    }

    #[test]
    fn expiry_with_a_mock_clock() {
        let (_d, b, clock) = backend();
        b.set("k", &item("v"), Some(Duration::from_secs(10)))
            .unwrap();
        b.set("forever", &item("v"), None).unwrap();
        clock.advance(Duration::from_secs(9));
        assert_eq!(b.get("k").unwrap(), Some(item("v")));
        clock.advance(Duration::from_secs(1));
        assert_eq!(b.get("k").unwrap(), None);
        // The expired file is gone.
        assert!(!b.path_of("ns:k").exists());
        clock.advance(Duration::from_secs(100_000));
        assert_eq!(b.get("forever").unwrap(), Some(item("v")));
    }

    #[test]
    fn expired_entries_do_not_count_as_deleted() {
        let (_d, b, clock) = backend();
        b.set("a", &item("v"), Some(Duration::from_secs(1)))
            .unwrap();
        b.set("p:1", &item("v"), Some(Duration::from_secs(1)))
            .unwrap();
        b.set("p:2", &item("v"), None).unwrap();
        clock.advance(Duration::from_secs(2));
        assert!(!b.delete("a").unwrap());
        assert_eq!(b.delete_prefix("p:").unwrap(), 1);
        assert_eq!(fs::read_dir(b.dir()).unwrap().count(), 0);
    }

    #[test]
    fn corrupt_truncated_and_foreign_files_read_as_misses() {
        let (_d, b, _c) = backend();
        b.set("k", &item("value"), None).unwrap();
        let p = b.path_of("ns:k");
        let good = fs::read(&p).unwrap();
        for bad in [
            good[..good.len() - 1].to_vec(),
            {
                let mut x = good.clone();
                x[HEADER + 4] ^= 1;
                x
            },
            b"not a cache file".to_vec(),
            Vec::new(),
        ] {
            fs::write(&p, &bad).unwrap();
            assert_eq!(b.get("k").unwrap(), None);
        }
        // Another key's entry under this name is a miss too.
        let other = encode("ns:other", &item("x"), 0).unwrap();
        fs::write(&p, other).unwrap();
        assert_eq!(b.get("k").unwrap(), None);
    }

    #[test]
    fn foreign_files_survive_clear_and_prefix_invalidation() {
        let (_d, b, _c) = backend();
        fs::write(b.dir().join("notes.txt"), "keep").unwrap();
        fs::write(b.dir().join("ns%3Afake.ddf"), "not ours").unwrap();
        b.set("x", &item("v"), None).unwrap();
        let other = FileBackend::open(b.dir(), "other:").unwrap();
        other.set("x", &item("v"), None).unwrap();
        assert_eq!(b.delete_prefix("").unwrap(), 1);
        b.clear().unwrap();
        assert!(b.dir().join("notes.txt").exists());
        assert!(b.dir().join("ns%3Afake.ddf").exists());
        assert_eq!(other.get("x").unwrap(), Some(item("v")));
    }

    #[test]
    fn long_keys_with_a_shared_visible_part_are_told_apart() {
        let (_d, b, _c) = backend();
        let base = "x".repeat(400);
        for i in 0..5 {
            b.set(&format!("{base}{i}"), &item(&i.to_string()), None)
                .unwrap();
        }
        b.set(&format!("{base}{}", "y"), &item("y"), None).unwrap();
        for i in 0..5 {
            assert_eq!(
                b.get(&format!("{base}{i}")).unwrap(),
                Some(item(&i.to_string()))
            );
        }
        assert_eq!(b.delete_prefix(&format!("{base}y")).unwrap(), 1);
        assert_eq!(b.delete_prefix(&base).unwrap(), 5);
    }

    #[test]
    fn stale_temporary_files_are_not_entries() {
        let (_d, b, _c) = backend();
        fs::write(b.dir().join(".tmp-1-2-3.tmp"), "partial").unwrap();
        assert_eq!(b.delete_prefix("").unwrap(), 0);
    }
}
