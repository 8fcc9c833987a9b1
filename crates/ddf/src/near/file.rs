//! The file backend's change counters (`pickle_dir/`[`COUNTERS_FILE`]): what makes a near hit
//! over the file backend coherent across processes without a system call. docs/near-cache.md,
//! "The file backend", has the argument; in short:
//!
//! - The file is mapped by every process that uses the directory (`crate::shm`): a header (a
//!   magic word with the layout's version, a global epoch, a count of processes that write
//!   without being able to bump) and [`SHARDS`] counters, one per hash of `namespace + key`.
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

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::shm::Shared;

/// The counters' file name inside the cache directory.
pub(crate) const COUNTERS_FILE: &str = "ddf-near.counters";

/// Counters, one per hash of `namespace + key` (a change of another key of the same shard
/// invalidates too: a wasted refill, never a stale read).
pub(crate) const SHARDS: usize = 1024;

/// Word 0: "ddfnear" and the layout's version (1). A layout that changes takes another file
/// name, so a different word here is a damaged file.
const MAGIC: u64 = u64::from_le_bytes(*b"ddfnear\x01");
/// The header: magic, epoch, blind writers, then reserved words (one cache line).
const HEADER_WORDS: usize = 8;
const EPOCH: usize = 1;
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

impl Changes {
    /// Opens (creating it if needed) and maps the counters of `dir`. `None`, logged: they cannot
    /// be mapped or the file is damaged; this process then has no near cache over the file
    /// backend, and (when it cannot map) marks the file so that no other process's near cache
    /// serves either: its writes will not be counted.
    pub(crate) fn open(dir: &Path) -> Option<Arc<Changes>> {
        let path = dir.join(COUNTERS_FILE);
        let shared = match Shared::open(&path, LEN as u64) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, file = %path.display(), "ddf: cannot open the near cache's change counters; no near cache over this directory");
                return None;
            }
        };
        if !shared.mapped() {
            tracing::warn!(file = %path.display(), "ddf: cannot map the near cache's change counters; no near cache over this directory, and other processes' near caches over it stop serving");
            blind(&shared);
            return None;
        }
        let words = shared.atomics::<AtomicU64>(0, HEADER_WORDS + SHARDS)?;
        match words[0].compare_exchange(0, MAGIC, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {}
            Err(m) if m == MAGIC => {}
            Err(other) => {
                tracing::warn!(file = %path.display(), word = other, "ddf: the near cache's change counters are not ddf's (or damaged); no near cache over this directory");
                return None;
            }
        }
        Some(Arc::new(Changes { shared }))
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
    /// happened since `stamp` was taken: three atomic loads.
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

/// Marks the counters as having a writer that cannot bump them (this process could not map
/// them): written with `pwrite`, once, before any write of this process; the word only ever
/// goes from 0 to non-zero, so no update is lost. Until the file is removed (with no process
/// using the directory), no near cache over it serves.
fn blind(shared: &Shared) {
    #[cfg(unix)]
    {
        let r = std::os::unix::fs::FileExt::write_all_at(
            shared.file(),
            &1u64.to_le_bytes(),
            (BLIND * 8) as u64,
        );
        if let Err(e) = r {
            tracing::warn!(error = %e, "ddf: cannot mark the near cache's change counters");
        }
    }
    #[cfg(not(unix))]
    let _ = shared;
}

/// The counters a file backend bumps, with its namespace.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    pub(crate) changes: Arc<Changes>,
    pub(crate) namespace: String,
}

/// The watch of a file backend's near cache (`None`, logged by [`Changes::open`]: no near
/// cache).
pub(crate) fn watch(dir: &Path, namespace: &str) -> Option<Watch> {
    Some(Watch {
        changes: Changes::open(dir)?,
        namespace: namespace.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_in_another_handle_invalidates_a_stamp_and_others_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let a = Changes::open(dir.path()).unwrap();
        let b = Changes::open(dir.path()).unwrap();
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
        let a = Changes::open(dir.path()).unwrap();
        let s = a.stamp("", "k");
        blind(&a.shared);
        assert!(!a.unchanged(s));
        assert!(!a.unchanged(a.stamp("", "k")));
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join(COUNTERS_FILE), b"not ddf's counters").unwrap();
        assert!(Changes::open(other.path()).is_none());
    }

    #[test]
    fn shards_are_fixed_by_the_format() {
        // FNV-1a 64 of "ns:k" modulo 1024: any change breaks processes of other versions.
        assert_eq!(shard_of("ns:", "k"), shard_of("", "ns:k"));
        assert_eq!(shard_of("", ""), (0xcbf2_9ce4_8422_2325u64 % 1024) as usize);
    }
}
