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
use std::path::PathBuf;
use std::sync::Arc;

use rusqlite::params;

use crate::backend::sqlite::Db;
use crate::clock::SystemClock;
use crate::error::Result;

/// The journal's file name inside the cache directory.
pub(crate) const JOURNAL_FILE: &str = "ddf-journal.sqlite3";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pending (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,         -- which primary: server identity and namespace
    op    INTEGER NOT NULL,      -- 1 delete, 2 delete_prefix, 3 clear
    arg   BLOB NOT NULL,         -- the key or prefix
    at    INTEGER NOT NULL       -- ms since the Unix epoch
);
CREATE INDEX IF NOT EXISTS pending_scope ON pending (scope, id);
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
}

impl Journal {
    /// Opens (creating it if needed) the journal in `dir`.
    ///
    /// # Errors
    /// [`crate::Error::Backend`] when the directory or the database cannot be created or opened.
    pub(crate) fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        Ok(Journal {
            db: Db::open(
                dir.into(),
                JOURNAL_FILE,
                SCHEMA,
                "journal",
                Arc::new(SystemClock),
            )?,
        })
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

    /// Releases the idle connections.
    pub(crate) fn close(&self) {
        self.db.close();
    }
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
        assert_eq!(tables(j.db.path()), ["pending"]);
        let fresh = FileBackend::open(dir.path(), "ns:").unwrap();
        assert_eq!(tables(fresh.db_path()), ["entries"]);
    }
}
