//! The file backend's change counters (`pickle_dir/`[`COUNTERS_FILE`]): what makes a near hit
//! over the file backend coherent across processes without a system call. docs/near-cache.md,
//! "The file backend", has the argument; in short:
//!
//! - The file is mapped by every process that uses the directory (`crate::shm`): a header (a
//!   magic word with the layout's version, a global epoch, the *blind* flag: set, for good, by
//!   a process that writes without being able to map the counters) and [`SHARDS`] counters,
//!   one per hash of `namespace + key`.
//! - A process that cannot open the counters, or finds another magic word in them, never
//!   writes: its writes fail ([`Counters`]) while its reads go on.
//! - Every write of the file backend bumps the key's counter (or the epoch, for a write of many
//!   keys: `delete_prefix`, `clear`, a database moved aside) before its commit and again after
//!   it ([`Changes::around`]).
//! - A near fill loads the epoch and the key's counter ([`Changes::stamp`]) before its `SELECT`
//!   and keeps them with the entry; a hit serves only while both still hold those values
//!   ([`Changes::unchanged`]): a few atomic loads.
//!
//! Orderings: a bump is `SeqCst` (a locked RMW on x86-64, `ldaxr`/`stlxr` on AArch64): the
//! commit's writes are visible before the bump after it, and the bump before it is visible
//! before the commit's writes; when the write returns, its bump after the commit is visible to
//! every CPU. The loads are `Acquire`: a fill's `SELECT` (which reads the WAL index SQLite maps)
//! cannot be moved before its stamp's loads, and a hit that loads the bumped value sees the
//! commit. So a fill's stamp is never newer than the data its `SELECT` read, and a hit that
//! begins after another process's write returned sees the bump and misses.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::error::{Error, Result};
use crate::shm::Shared;

/// The backend name errors carry.
const NAME: &str = "pickle";

/// The counters' file name inside the cache directory.
pub(crate) const COUNTERS_FILE: &str = "ddf-near.counters";

/// Counters, one per hash of `namespace + key` (a change of another key of the same shard
/// invalidates too: a wasted refill, never a stale read).
pub(crate) const SHARDS: usize = 1024;

/// Word 0: "ddfnear" and the layout's version (1). A layout that changes keeps the file name
/// and takes another version: a process of another version refuses to write (see
/// [`Counters`]), so two versions never write one directory without seeing each other's writes.
const MAGIC: u64 = u64::from_le_bytes(*b"ddfnear\x01");
/// The header: magic, epoch, blind writers, then reserved words (one cache line).
const HEADER_WORDS: usize = 8;
const EPOCH: usize = 1;
/// The blind flag: 0, or non-zero for good (see [`mark_blind`]).
const BLIND: usize = 2;
/// The file's length: the header and the shards.
const LEN: usize = (HEADER_WORDS + SHARDS) * 8;

/// What a fill saw before its `SELECT`: the epoch and its key's counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Stamp {
    shard: u16,
    epoch: u64,
    count: u64,
}

/// The mapped counters of one cache directory.
#[derive(Debug)]
pub(crate) struct Changes {
    shared: Shared,
}

/// FNV-1a of `namespace + key`: the same shard in every process and every version (part of the
/// file's format, unlike the standard library's hasher).
fn shard_of(namespace: &str, key: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace.bytes().chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % SHARDS as u64) as usize
}

/// What opening the counters gave.
#[derive(Debug)]
pub(crate) enum Opened {
    /// Mapped, with ddf's magic word: writes bump, hits check.
    Mapped(Arc<Changes>),
    /// Open but not mapped (a file system without shared mappings or `posix_fallocate`, or a
    /// passing failure: no memory, `vm.max_map_count`): no near cache, and a write must mark the
    /// file blind first ([`mark_blind`]).
    Unmapped(Shared),
}

/// The counters this process has mapped, by directory: the backend and the near cache of one
/// cache (and every cache of the directory) share one mapping and one descriptor.
static MAPPED: Mutex<Vec<(PathBuf, Weak<Changes>)>> = Mutex::new(Vec::new());

impl Changes {
    /// Opens (creating it if needed) and maps the counters of `dir`, or shares the mapping this
    /// process already has.
    ///
    /// # Errors
    /// [`Error::Backend`] naming the file: it cannot be opened (a directory in its place, no
    /// descriptor left, a full disk), or holds another magic word (another layout version, or
    /// not ddf's file).
    pub(crate) fn open(dir: &Path) -> Result<Opened> {
        let mut mapped = MAPPED.lock().unwrap_or_else(|p| p.into_inner());
        mapped.retain(|(_, c)| c.strong_count() > 0);
        if let Some(c) = mapped
            .iter()
            .find(|(d, _)| d == dir)
            .and_then(|(_, c)| c.upgrade())
        {
            return Ok(Opened::Mapped(c));
        }
        let path = dir.join(COUNTERS_FILE);
        let shared = Shared::open(&path, LEN as u64).map_err(|e| {
            Error::io(
                NAME,
                format_args!(
                    "cannot open the near cache's change counters {}",
                    path.display()
                ),
                e,
            )
        })?;
        let Some(words) = shared.atomics::<AtomicU64>(0, HEADER_WORDS + SHARDS) else {
            return Ok(Opened::Unmapped(shared));
        };
        match words[0].compare_exchange(0, MAGIC, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {}
            Err(m) if m == MAGIC => {}
            Err(other) => {
                let what = match other.to_le_bytes() {
                    [b'd', b'd', b'f', b'n', b'e', b'a', b'r', v] => {
                        format!("layout version {v}; this ddf writes version 1")
                    }
                    _ => format!("first word {other:#018x}: not ddf's counters, or damaged"),
                };
                return Err(Error::Backend {
                    backend: NAME,
                    message: format!(
                        "the near cache's change counters {} are not this ddf's ({what}); \
                         with no process using the directory, remove the file",
                        path.display()
                    ),
                    temporary: false,
                    source: None,
                });
            }
        }
        let c = Arc::new(Changes { shared });
        mapped.push((dir.to_owned(), Arc::downgrade(&c)));
        Ok(Opened::Mapped(c))
    }

    fn words(&self) -> &[AtomicU64] {
        // Mapped and checked at open: never empty in practice; an empty slice makes every
        // check fail (no hit) and every bump a no-op.
        self.shared
            .atomics::<AtomicU64>(0, HEADER_WORDS + SHARDS)
            .unwrap_or(&[])
    }

    fn bump(&self, at: usize) {
        if let Some(w) = self.words().get(at) {
            w.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Runs `write` (one commit that changes `key` of `namespace`, or with `key = None` many
    /// keys), bumping the key's counter (the epoch) before and after it, whatever it returned.
    /// After: a fill whose `SELECT` read the old row took its stamp before this bump, so its
    /// entry stops serving once the write returned. Before: a process killed between the
    /// commit and the bump after it leaves stale only entries filled during the write itself.
    pub(crate) fn around<T>(
        &self,
        namespace: &str,
        key: Option<&str>,
        write: impl FnOnce() -> T,
    ) -> T {
        let at = key.map_or(EPOCH, |k| HEADER_WORDS + shard_of(namespace, k));
        self.bump(at);
        let r = write();
        self.bump(at);
        r
    }

    /// As [`Changes::around`] for a commit that changes several keys.
    pub(crate) fn around_keys<T>(
        &self,
        namespace: &str,
        keys: &[&str],
        write: impl FnOnce() -> T,
    ) -> T {
        for k in keys {
            self.bump(HEADER_WORDS + shard_of(namespace, k));
        }
        let r = write();
        for k in keys {
            self.bump(HEADER_WORDS + shard_of(namespace, k));
        }
        r
    }

    /// Everything changed (the database was moved aside): bumps the epoch.
    pub(crate) fn everything_changed(&self) {
        self.bump(EPOCH);
    }

    /// The epoch (moves on every write of many keys and every database moved aside).
    pub(crate) fn epoch(&self) -> u64 {
        self.words()
            .get(EPOCH)
            .map_or(u64::MAX, |w| w.load(Ordering::Acquire))
    }

    /// What a fill of `key` must keep, loaded before its `SELECT`.
    pub(crate) fn stamp(&self, namespace: &str, key: &str) -> Stamp {
        let shard = shard_of(namespace, key);
        let w = self.words();
        let load = |i: usize| w.get(i).map_or(u64::MAX, |a| a.load(Ordering::Acquire));
        Stamp {
            shard: u16::try_from(shard).unwrap_or(0),
            epoch: load(EPOCH),
            count: load(HEADER_WORDS + shard),
        }
    }

    /// Whether no write of the stamp's shard, no write of many keys, and no blind writer
    /// (the flag is set) happened since `stamp` was taken: three atomic loads.
    #[inline]
    pub(crate) fn unchanged(&self, stamp: Stamp) -> bool {
        let w = self.words();
        let (Some(epoch), Some(blind), Some(count)) = (
            w.get(EPOCH),
            w.get(BLIND),
            w.get(HEADER_WORDS + usize::from(stamp.shard)),
        ) else {
            return false;
        };
        epoch.load(Ordering::Acquire) == stamp.epoch
            && blind.load(Ordering::Acquire) == 0
            && count.load(Ordering::Acquire) == stamp.count
    }
}

/// Marks the counters blind: a process that could not map them is about to write without
/// bumping. Written with `pwrite`, once, before any write of this process; the word only ever
/// goes from 0 to 1, so no update is lost. It is a flag, not a count: nothing clears it (no
/// process can tell whether the blind writer still runs), so from then on no near cache over
/// the directory serves, until the file is removed with no process using the directory.
///
/// # Errors
/// [`Error::Backend`] naming the file: the mark cannot be written (the write must not go on).
fn mark_blind(shared: &Shared, dir: &Path) -> Result<()> {
    let path = dir.join(COUNTERS_FILE);
    tracing::warn!(file = %path.display(), "ddf: cannot map the near cache's change counters; marking them blind: no near cache over this directory serves from now on (remove the file, with no process using the directory, to start again)");
    #[cfg(unix)]
    let r = std::os::unix::fs::FileExt::write_all_at(
        shared.file(),
        &1u64.to_le_bytes(),
        (BLIND * 8) as u64,
    );
    #[cfg(not(unix))]
    let r = {
        let _ = shared;
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    };
    r.map_err(|e| {
        Error::io(
            NAME,
            format_args!(
                "cannot mark the near cache's change counters {} blind",
                path.display()
            ),
            e,
        )
    })
}

/// What the file backend's writes go through: the counters of its directory, or the blind
/// mark. A write never goes uncounted: when the counters cannot be opened (or hold another
/// magic word), each write tries to open them again and fails with the reason; reads go on.
#[derive(Debug)]
pub(crate) struct Counters {
    dir: PathBuf,
    state: OnceLock<Counting>,
}

#[derive(Debug)]
enum Counting {
    Counted(Arc<Changes>),
    /// Marked blind: writes go on uncounted (no near cache over the directory serves).
    Blind,
}

impl Counters {
    /// The counters of `dir`, opened now if they can be mapped (a write opens them otherwise).
    pub(crate) fn new(dir: &Path) -> Counters {
        let state = OnceLock::new();
        match Changes::open(dir) {
            Ok(Opened::Mapped(c)) => {
                let _ = state.set(Counting::Counted(c));
            }
            Ok(Opened::Unmapped(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "ddf: the file backend's writes fail until the counters open");
            }
        }
        Counters {
            dir: dir.to_owned(),
            state,
        }
    }

    /// Opened (or marked blind) once, else tried again now.
    fn ready(&self) -> Result<&Counting> {
        if let Some(s) = self.state.get() {
            return Ok(s);
        }
        let s = match Changes::open(&self.dir)? {
            Opened::Mapped(c) => Counting::Counted(c),
            Opened::Unmapped(shared) => {
                mark_blind(&shared, &self.dir)?;
                Counting::Blind
            }
        };
        Ok(self.state.get_or_init(|| s))
    }

    /// Runs `write` with [`Changes::around`]; fails without running it when the counters
    /// cannot be opened.
    ///
    /// # Errors
    /// What `write` returns, or the counters' [`Error::Backend`].
    pub(crate) fn around<T>(
        &self,
        namespace: &str,
        key: Option<&str>,
        write: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        match self.ready()? {
            Counting::Counted(c) => c.around(namespace, key, write),
            Counting::Blind => write(),
        }
    }

    /// As [`Counters::around`] for a commit that changes `keys`.
    ///
    /// # Errors
    /// As [`Counters::around`].
    pub(crate) fn around_keys<T>(
        &self,
        namespace: &str,
        keys: &[&str],
        write: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        match self.ready()? {
            Counting::Counted(c) => c.around_keys(namespace, keys, write),
            Counting::Blind => write(),
        }
    }
}

impl Counters {
    /// Whether a database moved aside now would be counted: the counters are open (mapped,
    /// or marked blind), so that no other process's near cache keeps serving its entries.
    pub(crate) fn may_replace(&self) -> bool {
        match self.ready() {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "ddf: the change counters cannot be opened");
                false
            }
        }
    }

    /// The database was moved aside by this process: bumps the epoch (logged when the
    /// counters cannot be opened).
    pub(crate) fn replaced(&self) {
        match self.ready() {
            Ok(Counting::Counted(c)) => c.everything_changed(),
            Ok(Counting::Blind) => {}
            Err(e) => {
                tracing::warn!(error = %e, "ddf: a database moved aside is not counted; near caches of other processes may serve its entries until near_cache_ttl");
            }
        }
    }

    /// The epoch, once the counters are mapped.
    pub(crate) fn epoch(&self) -> Option<u64> {
        match self.state.get() {
            Some(Counting::Counted(c)) => Some(c.epoch()),
            _ => None,
        }
    }
}

/// The counters a file backend bumps, with its namespace.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    pub(crate) changes: Arc<Changes>,
    pub(crate) namespace: String,
}

/// The watch of a file backend's near cache (`None`, logged: the counters cannot be mapped,
/// no near cache).
pub(crate) fn watch(dir: &Path, namespace: &str) -> Option<Watch> {
    let changes = match Changes::open(dir) {
        Ok(Opened::Mapped(c)) => c,
        Ok(Opened::Unmapped(_)) => {
            tracing::warn!(dir = %dir.display(), "ddf: cannot map the near cache's change counters; no near cache over this directory");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "ddf: no near cache over this directory");
            return None;
        }
    };
    Some(Watch {
        changes,
        namespace: namespace.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(dir: &Path) -> Arc<Changes> {
        match Changes::open(dir).unwrap() {
            Opened::Mapped(c) => c,
            Opened::Unmapped(_) => panic!("not mapped"),
        }
    }

    /// Two mappings of one file, as two processes have.
    fn second_mapping(dir: &Path) -> Changes {
        let shared = Shared::open(&dir.join(COUNTERS_FILE), LEN as u64).unwrap();
        Changes { shared }
    }

    #[test]
    fn a_write_in_another_handle_invalidates_a_stamp_and_others_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let a = mapped(dir.path());
        let b = second_mapping(dir.path());
        let s = a.stamp("ns:", "k");
        assert!(a.unchanged(s));
        // A key of another shard leaves it.
        let other = (0..10_000)
            .map(|i| format!("o{i}"))
            .find(|k| shard_of("ns:", k) != shard_of("ns:", "k"))
            .unwrap();
        b.around("ns:", Some(&other), || ());
        assert!(a.unchanged(s));
        b.around("ns:", Some("k"), || ());
        assert!(!a.unchanged(s));
        let s = a.stamp("ns:", "k");
        b.around("ns:", None, || ());
        assert!(
            !a.unchanged(s),
            "a write of many keys invalidates every stamp"
        );
        let s = a.stamp("ns:", "k");
        b.around_keys("ns:", &["x", "k"], || ());
        assert!(!a.unchanged(s));
    }

    #[test]
    fn a_blind_writer_stops_every_hit_and_a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = mapped(dir.path());
        let s = a.stamp("", "k");
        mark_blind(&a.shared, dir.path()).unwrap();
        assert!(!a.unchanged(s));
        assert!(!a.unchanged(a.stamp("", "k")));
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join(COUNTERS_FILE), b"not ddf's counters").unwrap();
        let e = Changes::open(other.path()).unwrap_err().to_string();
        assert!(e.contains("not ddf's") && e.contains(COUNTERS_FILE), "{e}");
        let mut v2 = b"ddfnear\x02".to_vec();
        v2.resize(LEN, 0);
        std::fs::write(other.path().join(COUNTERS_FILE), v2).unwrap();
        let e = Changes::open(other.path()).unwrap_err().to_string();
        assert!(e.contains("layout version 2"), "{e}");
    }

    /// A process that cannot open the counters (here a directory in their place), or finds
    /// another magic word, never writes uncounted: the write fails, naming the file; once they
    /// open, writes go on and bump.
    #[test]
    fn counters_that_cannot_be_opened_fail_the_write_until_they_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(COUNTERS_FILE);
        std::fs::create_dir(&path).unwrap();
        let counters = Counters::new(dir.path());
        let mut ran = false;
        let e = counters
            .around("ns:", Some("k"), || {
                ran = true;
                Ok(())
            })
            .unwrap_err();
        assert!(!ran, "the write ran uncounted");
        assert!(e.to_string().contains(COUNTERS_FILE), "{e}");
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, b"damaged").unwrap();
        assert!(counters.around_keys("ns:", &["k"], || Ok(())).is_err());
        std::fs::remove_file(&path).unwrap();
        counters.around("ns:", Some("k"), || Ok(())).unwrap();
        let c = mapped(dir.path());
        assert_eq!(c.stamp("ns:", "k").count, 2, "bumped before and after");
    }

    #[test]
    fn shards_are_fixed_by_the_format() {
        // FNV-1a 64 of "ns:k" modulo 1024: any change breaks processes of other versions.
        assert_eq!(shard_of("ns:", "k"), shard_of("", "ns:k"));
        assert_eq!(shard_of("", ""), (0xcbf2_9ce4_8422_2325u64 % 1024) as usize);
    }
}
