//! The durable journal of invalidations made while a primary was down: `pickle_dir/`
//! [`JOURNAL_FILE`], a SQLite database of its own (so that moving a corrupt cache database aside
//! never loses it), shared safely by every process that uses the directory.
//!
//! Entries are grouped by a *scope*, an opaque string the caller derives from the server's
//! identity and the namespace; processes that talk to the same server under the same namespace
//! (a `redis` and a `redis_pickle` process, say) replay each other's records. Ids grow
//! monotonically (`AUTOINCREMENT`: never reused, even after removal), so "applied up to id N" is
//! a complete description of what a replay did.

use std::borrow::Cow;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use rusqlite::params;

use crate::backend::Backend;
use crate::backend::sqlite::Db;
use crate::clock::SystemClock;
use crate::error::Result;

/// The journal's file name inside the cache directory.
pub(crate) const JOURNAL_FILE: &str = "ddf-journal.sqlite3";

/// A small file in the cache directory whose first byte says `1` while an outage of any scope
/// may be open and `0` (or nothing) when none is: a process that is up reads it on every write
/// before it asks the database which outages are open (several microseconds). It is set inside
/// the transaction that opens an outage and cleared inside the one that closes the last, so
/// that it never says `0` while an outage is open. See [`Marker`] for why a mapped byte and not a file
/// that exists.
pub(crate) const OUTAGE_MARKER: &str = "ddf-outage-open";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pending (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,         -- which primary: server identity and namespace
    op    INTEGER NOT NULL,      -- 1 delete, 2 delete_prefix, 3 clear
    arg   BLOB NOT NULL,         -- the key or prefix
    at    INTEGER NOT NULL       -- ms since the Unix epoch
);
CREATE INDEX IF NOT EXISTS pending_scope ON pending (scope, id);
CREATE TABLE IF NOT EXISTS outages (
    generation INTEGER PRIMARY KEY AUTOINCREMENT, -- names the fallback entries of this outage
    scope      TEXT NOT NULL,
    opened_at  INTEGER NOT NULL,                  -- ms since the Unix epoch
    closed     INTEGER NOT NULL DEFAULT 0         -- 1 once the primary is back and replayed
);
CREATE INDEX IF NOT EXISTS outages_scope ON outages (scope, closed);
";

/// An invalidation recorded while a primary was unreachable, to apply when it returns. Borrowed
/// when recorded (no copy of the key), owned when read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PendingOp<'a> {
    /// `delete(key)`.
    Delete(Cow<'a, str>),
    /// `delete_prefix(prefix)`.
    DeletePrefix(Cow<'a, str>),
    /// `clear()`.
    Clear,
}

impl PendingOp<'_> {
    fn encode(&self) -> (i64, &str) {
        match self {
            PendingOp::Delete(k) => (1, k),
            PendingOp::DeletePrefix(p) => (2, p),
            PendingOp::Clear => (3, ""),
        }
    }

    /// Applies this invalidation to `backend`.
    ///
    /// # Errors
    /// The backend's.
    pub(crate) fn apply(&self, backend: &dyn Backend) -> Result<()> {
        match self {
            PendingOp::Delete(k) => backend.delete(k).map(drop),
            PendingOp::DeletePrefix(p) => backend.delete_prefix(p).map(drop),
            PendingOp::Clear => backend.clear(),
        }
    }

    fn decode(code: i64, arg: String) -> PendingOp<'static> {
        match code {
            1 => PendingOp::Delete(Cow::Owned(arg)),
            2 => PendingOp::DeletePrefix(Cow::Owned(arg)),
            // Unknown codes (a newer version's) are replayed as the widest invalidation: never
            // stale, at worst an emptier cache.
            _ => PendingOp::Clear,
        }
    }
}

/// The journal database.
#[derive(Debug)]
pub(crate) struct Journal {
    db: Db,
    /// [`OUTAGE_MARKER`] in the cache directory, held open.
    marker: Marker,
}

/// [`OUTAGE_MARKER`], held open and mapped (shared) for the life of the journal: byte 0 says
/// `1` or `2` while an outage may be open; bytes 8-15 count the changes (below).
///
/// Why a mapped byte rather than a file that exists (one `stat` of a path, as before) or a
/// `pread`: the check runs on every write that succeeds on the server. On a loaded 2-core VM
/// `write_path` measured the `stat` at 4-5% of a loopback `set` and a `pread` of a held
/// descriptor at 3-4% (Memcached set/bare 0.93 against 0.97 without any check); an atomic load
/// from a shared mapping costs no system call. Where the file cannot be mapped, the byte is
/// read and written with `pread`/`pwrite` instead (same meaning, slower).
///
/// Why it keeps the guarantee: a process that opens an outage stores `1` (`SeqCst`, which
/// drains the store to memory every process maps) while it holds the journal's write lock,
/// before the transaction commits, so before `join_outage` returns and before it writes
/// anything into the outage's entries. Every process maps the same page of the page cache, and
/// the CPUs keep it coherent: a process that is up and whose check starts after that store
/// completed loads `1` (with `pread`: POSIX has a `read` that starts after a `write` returned
/// see it). So an outage opened while a writer is writing is seen by that writer's next write
/// at the latest (and by the current one when opened before its check), exactly what the
/// `stat` of a created file gave. Clearing stores `0` inside the transaction that closes the
/// last outage (put back to `1` if the commit fails); an opener waits for that lock, so the
/// two never interleave (one exception: a process killed between that store and putting `1`
/// back after a failed commit leaves `0` with the outage open, until the next
/// [`Journal::open`] repairs it; the file-based marker before had the same gap). A read that
/// fails says "may be open": the database is then asked,
/// which is slower, never wrong.
///
/// The marker must stay the same file while processes use the directory (as the journal
/// database must), and must never be truncated to nothing (a mapped page beyond the end of
/// its file faults): ddf only ever extends it. A missing or disagreeing marker is repaired when
/// a journal is opened ([`Journal::open`]).
///
/// Bytes 8-15 count the changes to the outages table (a `u64`, mapped only), for
/// [`Journal::outages_stamp`]: an outage opened, joined or closed anywhere moves it once inside
/// the transaction, before byte 0 changes, and once after the commit. Byte 0 says `2`
/// ([`COUNTED`]) rather than `1` while every process that opened or joined an outage since it
/// last said `0` moves the counter ([`Marker::set_open`]).
/// Why: byte 0 says whether *any* scope's outage is open, and one left open for a server that
/// never came back (decommissioned, or another program's) made every write of every other
/// scope ask the database: 35-40 µs per Memcached `set` from Python on a 2-core VM (its
/// `get`: 117 µs). With the counter, a process remembers at which count its scope had none
/// open and asks again only when it moved.
#[derive(Debug)]
struct Marker(crate::shm::Shared);

/// Byte 0's "open" from a process that moves the change counter (any byte but `0` and NUL
/// means open to every version).
const COUNTED: u8 = b'2';

/// The marker's length: ddf extends it to this and never shortens it (a directory last used
/// by a version with the one-byte marker has 8 bytes: extended when opened).
const MARKER_LEN: u64 = 16;

impl Marker {
    /// Opens the marker at `path`, creating it (zeroes: "none open") if needed, and maps it
    /// (the mapping itself is `crate::shm`'s).
    fn open(path: PathBuf) -> std::io::Result<Marker> {
        crate::shm::Shared::open(&path, MARKER_LEN).map(Marker)
    }

    /// The mapped byte 0 as an atomic.
    fn flag(&self) -> Option<&std::sync::atomic::AtomicU8> {
        self.0.atomics(0, 1)?.first()
    }

    /// The change counter (bytes 8-15), when mapped.
    fn changes(&self) -> Option<&std::sync::atomic::AtomicU64> {
        self.0.atomics(8, 1)?.first()
    }

    /// Moves the change counter (when mapped): called inside the transaction that opens or
    /// closes an outage, before its commit, and again after it.
    fn changed(&self) {
        if let Some(c) = self.changes() {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Whether byte 0 says [`COUNTED`] (mapped only): every opener since it was last `0`
    /// moved the change counter.
    fn counted(&self) -> bool {
        self.flag()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst) == COUNTED)
    }

    /// Whether it says an outage may be open (also when it cannot be read).
    fn says_open(&self) -> bool {
        if let Some(f) = self.flag() {
            return !matches!(f.load(std::sync::atomic::Ordering::SeqCst), 0 | b'0');
        }
        let mut b = [0u8; 1];
        match read_at(self.0.file(), &mut b) {
            Ok(0) => false,
            Ok(_) => !matches!(b[0], 0 | b'0'),
            Err(_) => true,
        }
    }

    /// Makes it say "open" (inside a transaction holding the write lock), for an outage
    /// opened or joined: a process that moves the change counter (mapped) turns a "none open"
    /// into `2` and leaves any other value as it is; one that cannot writes `1` (as a version
    /// without the counter does), which stays until every outage is closed. So `2` means that
    /// every opener and joiner since the byte was last `0` moved the counter
    /// ([`Marker::counted`]); a `1` is never turned back into `2` while an outage is open.
    /// Returns the byte it replaced.
    fn set_open(&self) -> std::io::Result<u8> {
        use std::sync::atomic::Ordering::SeqCst;
        match (self.flag(), self.changes().is_some()) {
            (Some(f), true) => Ok(f
                .fetch_update(SeqCst, SeqCst, |b| matches!(b, 0 | b'0').then_some(COUNTED))
                .unwrap_or_else(|b| b)),
            _ => self.swap(b'1'),
        }
    }

    /// Stores `byte` (inside a transaction holding the write lock): `0` in the transaction
    /// that closes the last outage, or what a failed close replaced, put back. Returns the
    /// byte it replaced.
    fn swap(&self, byte: u8) -> std::io::Result<u8> {
        match self.flag() {
            Some(f) => Ok(f.swap(byte, std::sync::atomic::Ordering::SeqCst)),
            None => {
                let mut was = [0u8; 1];
                let _ = read_at(self.0.file(), &mut was);
                write_at(self.0.file(), &[byte]).map(|()| was[0])
            }
        }
    }
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(f, buf, 0)
}

#[cfg(unix)]
fn write_at(f: &File, buf: &[u8]) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, buf, 0)
}

#[cfg(windows)]
fn read_at(f: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(f, buf, 0)
}

#[cfg(windows)]
fn write_at(f: &File, buf: &[u8]) -> std::io::Result<()> {
    std::os::windows::fs::FileExt::seek_write(f, buf, 0).map(drop)
}

/// Elsewhere the marker always says "may be open": every write asks the database.
#[cfg(not(any(unix, windows)))]
fn read_at(_f: &File, _buf: &mut [u8]) -> std::io::Result<usize> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(not(any(unix, windows)))]
fn write_at(_f: &File, _buf: &[u8]) -> std::io::Result<()> {
    Ok(())
}

/// A file system error inside a database transaction.
fn fs_error(e: std::io::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

impl Journal {
    /// Opens (creating it if needed) the journal in `dir`.
    ///
    /// # Errors
    /// [`crate::Error::Backend`] when the directory or the database cannot be created or opened.
    pub(crate) fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let db = Db::open(
            dir.clone(),
            JOURNAL_FILE,
            SCHEMA,
            "journal",
            Arc::new(SystemClock),
        )?;
        let path = dir.join(OUTAGE_MARKER);
        let marker = Marker::open(path.clone()).map_err(|e| crate::Error::Backend {
            backend: "journal",
            message: format!("cannot open the outage marker {}: {e}", path.display()),
            temporary: false,
            source: None,
        })?;
        let journal = Journal { db, marker };
        // A journal written by a version without the marker, or a marker that disagrees (lost,
        // or left saying `1` by a process that crashed): make the marker say what the outages
        // table says (checked without the write lock first: building a cache, the CLI's every
        // call, should not take it).
        let agree = |c: &rusqlite::Connection| Ok(any_open(c)? == journal.marker.says_open());
        if !journal.db.with_conn("cannot read the outages", agree)? {
            journal.db.with_conn("cannot read the outages", |c| {
                let tx = rusqlite::Transaction::new_unchecked(
                    c,
                    rusqlite::TransactionBehavior::Immediate,
                )?;
                let open = any_open(&tx)?;
                if open != journal.marker.says_open() {
                    // Which processes opened what is not known: `1` (no stamp until every
                    // outage closed) rather than `2`.
                    journal.marker.changed();
                    journal
                        .marker
                        .swap(if open { b'1' } else { b'0' })
                        .map_err(fs_error)?;
                }
                let done = tx.commit();
                journal.marker.changed();
                done
            })?;
        }
        Ok(journal)
    }

    /// Whether an outage of any scope may be open (the marker says so: one load of a mapped
    /// byte, see [`Marker`]): when not, none is.
    pub(crate) fn may_have_open_outages(&self) -> bool {
        self.marker.says_open()
    }

    /// A stamp of the outages table: equal stamps read before two queries of it mean no
    /// outage was opened or closed in between, or one was only while the first query ran (so
    /// a caller that read the stamp *before* its query may reuse that query's answer while the
    /// stamp stays the same). `None` when it cannot tell (the marker is not mapped): ask the
    /// database.
    ///
    /// Why that holds: an opener moves the counter inside its transaction (before the commit)
    /// and again after the commit, and holds no lock in between; a query whose snapshot is
    /// from before the commit began after a stamp loaded before the second move, so the next
    /// load (after it) differs. Every `join_outage` moves it too, also when it joins an
    /// outage already open: a process killed between an opening's commit and its second move
    /// leaves a caller that loaded the stamp between the two moves and queried before the
    /// commit with its answer only until the next process joins, which is the first that
    /// could write into that outage. An opener or joiner that cannot move the counter (its
    /// marker is not mapped, or a version without the counter) makes byte 0 say `1`, and no
    /// stamp is given until every outage closed (`None`: ask the database). Left: an older
    /// version joining an outage a counting opener opened does not say so (it writes `1` only
    /// when it opens one).
    pub(crate) fn outages_stamp(&self) -> Option<u64> {
        // Byte 0 before the counter, and every writer moves the counter before it makes byte
        // 0 say `2`: a `2` read here comes with every move made before it. An opener that
        // does not count stores `1` before its commit, and `1` is never turned back into `2`
        // while an outage is open, so a check that starts after its `join_outage` returned
        // gives no stamp until every outage closed.
        if !self.marker.counted() {
            return None;
        }
        Some(
            self.marker
                .changes()?
                .load(std::sync::atomic::Ordering::SeqCst),
        )
    }

    /// This journal as a process whose marker mapping failed sees it.
    #[cfg(test)]
    pub(crate) fn without_mapping(self) -> Journal {
        Journal {
            db: self.db,
            marker: Marker(self.marker.0.without_mapping()),
        }
    }

    /// Appends invalidations for `scope`, in order, in one transaction: all are recorded or
    /// none is.
    ///
    /// # Errors
    /// [`crate::Error::Backend`] when the database cannot be written.
    pub(crate) fn append(&self, scope: &str, ops: &[PendingOp]) -> Result<()> {
        let now = i64::try_from(self.db.now_ms()).unwrap_or(i64::MAX);
        self.db.with_conn("cannot record an invalidation", |c| {
            let tx =
                rusqlite::Transaction::new_unchecked(c, rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO pending (scope, op, arg, at) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for op in ops {
                    let (code, arg) = op.encode();
                    st.execute(params![scope, code, arg.as_bytes(), now])?;
                }
            }
            tx.commit()
        })
    }

    /// The recorded invalidations of `scope`, oldest first, with their ids.
    ///
    /// # Errors
    /// [`crate::Error::Backend`] when the database cannot be read.
    pub(crate) fn read(&self, scope: &str) -> Result<Vec<(i64, PendingOp<'static>)>> {
        self.db
            .with_conn("cannot read recorded invalidations", |c| {
                let mut st = c.prepare_cached(
                    "SELECT id, op, arg FROM pending WHERE scope = ?1 ORDER BY id",
                )?;
                let rows = st.query_map([scope], |r| {
                    let arg = String::from_utf8_lossy(&r.get::<_, Vec<u8>>(2)?).into_owned();
                    Ok((r.get::<_, i64>(0)?, PendingOp::decode(r.get(1)?, arg)))
                })?;
                rows.collect()
            })
    }

    /// How many invalidations of `scope` are recorded.
    ///
    /// # Errors
    /// [`crate::Error::Backend`] when the database cannot be read.
    pub(crate) fn count(&self, scope: &str) -> Result<u64> {
        self.db
            .with_conn("cannot count recorded invalidations", |c| {
                c.prepare_cached("SELECT count(*) FROM pending WHERE scope = ?1")?
                    .query_row([scope], |r| r.get::<_, i64>(0))
                    .map(|n| u64::try_from(n).unwrap_or(0))
            })
    }

    /// Removes the recorded invalidations of `scope` up to and including `up_to`.
    ///
    /// # Errors
    /// [`crate::Error::Backend`] when the database cannot be written.
    pub(crate) fn remove(&self, scope: &str, up_to: i64) -> Result<()> {
        self.db
            .with_conn("cannot remove recorded invalidations", |c| {
                c.prepare_cached("DELETE FROM pending WHERE scope = ?1 AND id <= ?2")?
                    .execute(params![scope, up_to])
            })?;
        Ok(())
    }

    /// The open outage of `scope`, opening one if there is none: its generation.
    ///
    /// A new generation is at least the time in ms since the Unix epoch (and above every
    /// earlier one), so that a journal database created again (deleted, or moved aside as
    /// corrupt) never hands out a number whose fallback entries a crashed writer may have left.
    ///
    /// # Errors
    /// [`crate::Error::Backend`] when the database cannot be written.
    pub(crate) fn join_outage(&self, scope: &str) -> Result<i64> {
        let now = i64::try_from(self.db.now_ms()).unwrap_or(i64::MAX);
        self.db.with_conn("cannot record an outage", |c| {
            let tx =
                rusqlite::Transaction::new_unchecked(c, rusqlite::TransactionBehavior::Immediate)?;
            let open = tx
                .prepare_cached(
                    "SELECT max(generation) FROM outages WHERE scope = ?1 AND closed = 0",
                )?
                .query_row([scope], |r| r.get::<_, Option<i64>>(0))?;
            let generation = match open {
                None => {
                    tx.prepare_cached(
                        "INSERT INTO outages (generation, scope, opened_at, closed) VALUES (
                            max(?2, 1 + coalesce(
                                (SELECT seq FROM sqlite_sequence WHERE name = 'outages'), 0)),
                            ?1, ?2, 0)",
                    )?
                    .execute(params![scope, now])?;
                    // Before the commit: no process writes into the outage before the
                    // processes that are up can see it is open. The counter first: a `2`
                    // comes with the move (see `outages_stamp`).
                    self.marker.changed();
                    self.marker.set_open().map_err(fs_error)?;
                    tx.last_insert_rowid()
                }
                // Joining: a process that cannot count says so (`1`) before it writes into
                // the outage, which a counting one leaves as it is.
                Some(g) => {
                    self.marker.changed();
                    self.marker.set_open().map_err(fs_error)?;
                    g
                }
            };
            let done = tx.commit();
            self.marker.changed();
            done?;
            Ok(generation)
        })
    }

    /// The generations of the open outages of `scope` (at most one, unless processes raced).
    ///
    /// # Errors
    /// [`crate::Error::Backend`] when the database cannot be read.
    pub(crate) fn open_outages(&self, scope: &str) -> Result<Vec<i64>> {
        self.db.with_conn("cannot read the outages", |c| {
            let mut st = c.prepare_cached(
                "SELECT generation FROM outages WHERE scope = ?1 AND closed = 0 ORDER BY generation",
            )?;
            let rows = st.query_map([scope], |r| r.get::<_, i64>(0))?;
            rows.collect()
        })
    }

    /// Whether outage `generation` of `scope` is still open.
    ///
    /// # Errors
    /// [`crate::Error::Backend`] when the database cannot be read.
    pub(crate) fn is_open(&self, scope: &str, generation: i64) -> Result<bool> {
        self.db.with_conn("cannot read the outages", |c| {
            c.prepare_cached(
                "SELECT count(*) FROM outages WHERE scope = ?1 AND generation = ?2 AND closed = 0",
            )?
            .query_row(params![scope, generation], |r| r.get::<_, i64>(0))
            .map(|n| n > 0)
        })
    }

    /// Closes outages `generations` of `scope` (their fallback entries are never read again)
    /// and forgets the closed outages older than a day.
    ///
    /// # Errors
    /// [`crate::Error::Backend`] when the database cannot be written.
    pub(crate) fn close_outages(&self, scope: &str, generations: &[i64]) -> Result<()> {
        let day_ago = i64::try_from(self.db.now_ms())
            .unwrap_or(i64::MAX)
            .saturating_sub(86_400_000);
        self.db.with_conn("cannot close an outage", |c| {
            let tx =
                rusqlite::Transaction::new_unchecked(c, rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut st = tx.prepare_cached(
                    "UPDATE outages SET closed = 1 WHERE scope = ?1 AND generation = ?2",
                )?;
                for g in generations {
                    st.execute(params![scope, g])?;
                }
            }
            tx.prepare_cached("DELETE FROM outages WHERE closed = 1 AND opened_at < ?1")?
                .execute([day_ago])?;
            let last = !any_open(&tx)?;
            self.marker.changed();
            let was = if last {
                Some(self.marker.swap(b'0').map_err(fs_error)?)
            } else {
                None
            };
            let done = tx.commit().inspect_err(|_| {
                if let Some(was) = was {
                    // Still open: the marker must say so, as it did (a `1` stays `1`).
                    self.marker.changed();
                    let _ = self.marker.swap(was);
                }
            });
            self.marker.changed();
            done
        })
    }

    /// Releases the idle connections.
    pub(crate) fn close(&self) {
        self.db.close();
    }
}

/// Whether any outage (of any scope) is open.
fn any_open(c: &rusqlite::Connection) -> rusqlite::Result<bool> {
    c.prepare_cached("SELECT count(*) FROM outages WHERE closed = 0")?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::file::FileBackend;

    #[test]
    fn scopes_are_apart_and_removal_stops_at_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let d = |k: &'static str| PendingOp::Delete(k.into());
        j.append("a", &[d("1"), PendingOp::DeletePrefix("p:".into())])
            .unwrap();
        j.append("b", &[PendingOp::Clear]).unwrap();
        j.append("a", &[d("2")]).unwrap();
        let a = j.read("a").unwrap();
        let ops: Vec<_> = a.iter().map(|(_, op)| op.clone()).collect();
        assert_eq!(ops, [d("1"), PendingOp::DeletePrefix("p:".into()), d("2")]);
        assert_eq!(j.count("b").unwrap(), 1);
        j.remove("a", a[1].0).unwrap();
        assert_eq!(j.read("a").unwrap().len(), 1);
        assert_eq!(j.read("a").unwrap()[0].1, d("2"));
        assert_eq!(j.count("b").unwrap(), 1, "another scope is untouched");
        // Another handle (another process) sees the same records.
        assert_eq!(Journal::open(dir.path()).unwrap().count("a").unwrap(), 1);
    }

    #[test]
    fn processes_join_the_open_outage_until_it_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let other = Journal::open(dir.path()).unwrap();
        let g = j.join_outage("s").unwrap();
        assert_eq!(other.join_outage("s").unwrap(), g, "the same outage");
        assert_ne!(other.join_outage("t").unwrap(), g, "another scope's");
        assert_eq!(j.open_outages("s").unwrap(), [g]);
        assert!(j.may_have_open_outages());
        j.close_outages("s", &[g]).unwrap();
        assert!(!other.is_open("s", g).unwrap());
        assert!(other.may_have_open_outages(), "scope t's is open");
        let t = other.open_outages("t").unwrap();
        other.close_outages("t", &t).unwrap();
        assert!(!j.may_have_open_outages(), "none open");
        let next = other.join_outage("s").unwrap();
        assert!(next > g, "a later outage is a new generation");
        assert!(j.is_open("s", next).unwrap());
    }

    #[test]
    fn the_outages_stamp_moves_when_an_outage_opens_closes_or_is_joined_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let up = Journal::open(dir.path()).unwrap();
        let down = Journal::open(dir.path()).unwrap();
        assert_eq!(up.outages_stamp(), None, "none open: byte 0 says so");
        let t = down.join_outage("t").unwrap();
        let s1 = up
            .outages_stamp()
            .expect("mapped, opened by a counting process");
        assert_eq!(s1, 2, "before the opening's commit and after it");
        down.join_outage("t").unwrap();
        assert_eq!(up.outages_stamp(), Some(4), "joining too");
        // Recording, reading and opening another handle: no change.
        down.append("t", &[PendingOp::Clear]).unwrap();
        up.open_outages("s").unwrap();
        drop(Journal::open(dir.path()).unwrap());
        assert_eq!(up.outages_stamp(), Some(4));
        down.join_outage("s").unwrap();
        assert_eq!(up.outages_stamp(), Some(6), "another scope's");
        down.close_outages("t", &[t]).unwrap();
        assert_eq!(up.outages_stamp(), Some(8), "closing one");
        // A marker of the one-byte layout (8 bytes) is extended, the counter from zero; a `1`
        // there (a version without the counter) gives no stamp.
        drop((up, down));
        std::fs::write(dir.path().join(OUTAGE_MARKER), [b'1', 0, 0, 0, 0, 0, 0, 0]).unwrap();
        let j = Journal::open(dir.path()).unwrap();
        assert!(j.may_have_open_outages(), "scope s's is still open");
        assert_eq!(j.outages_stamp(), None);
    }

    #[test]
    fn an_opener_that_cannot_count_turns_the_stamp_off_until_every_outage_closed() {
        let dir = tempfile::tempdir().unwrap();
        let up = Journal::open(dir.path()).unwrap();
        let counting = Journal::open(dir.path()).unwrap();
        let blind = Journal::open(dir.path()).unwrap().without_mapping();
        let gone = counting.join_outage("gone").unwrap();
        let cached = up.outages_stamp().unwrap();
        // An opener whose mapping failed writes `1` with pwrite: no stamp from then on.
        let s = blind.join_outage("s").unwrap();
        assert!(up.may_have_open_outages());
        assert_eq!(up.outages_stamp(), None);
        // A counting opener afterwards leaves the `1`: no stamp while the blind one's is open.
        let t = counting.join_outage("t").unwrap();
        assert_eq!(up.outages_stamp(), None);
        counting.close_outages("t", &[t]).unwrap();
        assert_eq!(up.outages_stamp(), None, "closing another one either");
        assert_eq!(up.open_outages("s").unwrap(), [s], "the query sees it");
        // A blind joiner of a counted outage says so too.
        counting.close_outages("s", &[s]).unwrap();
        counting.close_outages("gone", &[gone]).unwrap();
        assert!(!up.may_have_open_outages());
        let g = counting.join_outage("g").unwrap();
        assert!(up.outages_stamp().is_some_and(|now| now > cached));
        assert_eq!(blind.join_outage("g").unwrap(), g);
        assert_eq!(up.outages_stamp(), None);
        blind.close_outages("g", &[g]).unwrap();
        assert!(!up.may_have_open_outages());
        // Counting again from a marker that said `0`.
        counting.join_outage("h").unwrap();
        assert!(up.outages_stamp().is_some());
    }

    #[test]
    fn opening_makes_the_marker_agree_with_the_outages() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.join_outage("s").unwrap();
        // A marker lost (a version without it, or removed by hand) is put back, and one left
        // saying "open" (a process that crashed) is cleared.
        std::fs::remove_file(dir.path().join(OUTAGE_MARKER)).unwrap();
        // (The handle `j` reads the removed file: a new handle reads the one put back.)
        let j = Journal::open(dir.path()).unwrap();
        assert!(j.may_have_open_outages());
        let open = j.open_outages("s").unwrap();
        j.close_outages("s", &open).unwrap();
        std::fs::write(dir.path().join(OUTAGE_MARKER), "1").unwrap();
        assert!(!Journal::open(dir.path()).unwrap().may_have_open_outages());
    }

    #[test]
    fn an_outage_opened_by_another_handle_is_seen_by_the_next_check() {
        // Two journals on one directory stand for two processes (each holds its own
        // descriptor of the marker): the one that is up sees an outage the other opens at its
        // first check after the opening returned, and sees it gone after the last is closed.
        let dir = tempfile::tempdir().unwrap();
        let up = Journal::open(dir.path()).unwrap();
        let down = Journal::open(dir.path()).unwrap();
        assert!(!up.may_have_open_outages());
        let g = down.join_outage("s").unwrap();
        assert!(up.may_have_open_outages(), "the next check sees the outage");
        assert_eq!(up.open_outages("s").unwrap(), [g]);
        down.close_outages("s", &[g]).unwrap();
        assert!(!up.may_have_open_outages());
    }

    #[test]
    fn a_journal_created_again_never_reuses_a_generation() {
        let dir = tempfile::tempdir().unwrap();
        let first = Journal::open(dir.path()).unwrap().join_outage("s").unwrap();
        for end in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("{JOURNAL_FILE}{end}")));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        let again = Journal::open(dir.path()).unwrap();
        let g = again.join_outage("s").unwrap();
        assert!(g > first, "{g} after {first}: a reused number");
        again.close_outages("s", &[g]).unwrap();
        assert!(again.join_outage("s").unwrap() > g);
    }

    #[test]
    fn the_journal_is_a_database_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileBackend::open(dir.path(), "ns:").unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.append("s", &[PendingOp::Clear]).unwrap();
        assert_ne!(j.db.path(), cache.db_path());
        // A cache database found corrupt and moved aside takes no recorded invalidation along.
        Db::open(
            dir.path().to_owned(),
            crate::backend::file::DB_FILE,
            "",
            "pickle",
            Arc::new(SystemClock),
        )
        .unwrap()
        .quarantine_now();
        assert_eq!(j.read("s").unwrap().len(), 1);
        // And neither database carries the other's table.
        let tables = |p: &std::path::Path| -> Vec<String> {
            let c = rusqlite::Connection::open(p).unwrap();
            let mut st = c
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
                .unwrap();
            st.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        assert_eq!(tables(j.db.path()), ["outages", "pending"]);
        let fresh = FileBackend::open(dir.path(), "ns:").unwrap();
        // The first write creates the cache database.
        fresh
            .set("k", &crate::Item::new(b"v".to_vec(), 0), None)
            .unwrap();
        assert_eq!(tables(fresh.db_path()), ["entries"]);
    }
}
