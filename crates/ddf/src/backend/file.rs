//! The file backend (`backend = pickle`): a local cache directory holding one SQLite database in
//! WAL mode.
//!
//! # Why SQLite and not a file per entry
//! The first version of this backend stored one file per entry (temporary file + `rename`). On
//! this project's machines creating an inode costs about 1 ms (ext4 as provisioned here: `open`
//! with `O_CREAT` measured 1.0-1.3 ms, `rename` 20 µs), so every `set` of a new key cost 0.15 to
//! 1.3 ms, 5 to 40 times slower than Python's diskcache (32 µs), which keeps small values in
//! SQLite. A database in WAL mode gives every guarantee the file-per-entry design had, and more,
//! without creating files: atomic writes (a reader sees the old value or the new one), safe
//! concurrent use by threads and processes, range-indexed prefix invalidation (it never reads
//! unrelated entries), and about 7 µs per new-key `set` and 2 µs per `get` here. SQLite is C
//! code, built from the `rusqlite` crate's bundled amalgamation; no system library is needed.
//!
//! # Layout
//! `pickle_dir/ddf-cache.sqlite3` (plus its `-wal` and `-shm` files while in use), mode 0600, in a
//! directory created with mode 0700, and `ddf-near.counters`, the change counters every write
//! bumps (`near/file.rs`: what keeps near caches over the directory coherent; a write fails
//! rather than go uncounted when they cannot be opened). One table, keyed by the bytes of `namespace + key`, so any
//! UTF-8 key — `/`, `..`, absolute paths, control characters, the empty key, 10 kB keys — is just
//! a key: nothing is ever written outside the database. Other files in the directory are never
//! touched, and several namespaces can share one directory.
//!
//! Opening a new directory creates the database file empty (so that an unusable directory fails
//! then); the first write makes it a database, as that costs several `fsync`s. Until then a
//! read, a listing (`keys`, `meta`, `info`) or a delete finds nothing and writes nothing (a
//! delete still bumps the change counters); `ping` creates the database.
//!
//! # Guarantees
//! - Each `set` is one transaction. `synchronous = NORMAL` in WAL mode: no `fsync` per write (this
//!   is a cache); after a power loss the last writes may be lost, never half-applied.
//! - Each entry carries its own expiry (milliseconds), so per-call TTLs work with or without a
//!   default `ttl`. Expired entries read as misses and are removed (only if still the expired
//!   entry, so a concurrent fresh write survives); they do not count as deleted.
//! - `delete_prefix` is one range delete on the primary key (`k >= prefix AND k < next(prefix)`):
//!   its cost is proportional to the matching entries, not to the size of the cache. `clear` is
//!   the range of the namespace.
//! - A corrupt or foreign database file reads as a miss with a warning: it is moved aside
//!   (`ddf-cache.sqlite3.corrupt-<ms>`) and a fresh database takes its place.
//! - A writer waits at most 5 s (`sqlite::BUSY_TIMEOUT`) for another process's write to finish.

use std::fmt;
use std::fs;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::sqlite::{Create, Db};
use super::{Backend, BackendStatus, Item};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::key::{Keyspace, prefix_range};
use crate::near::file::Counters;

const NAME: &str = "pickle";
/// The database's file name inside the cache directory.
pub const DB_FILE: &str = "ddf-cache.sqlite3";
/// The largest value SQLite stores by default (`SQLITE_MAX_LENGTH`), less room for the row.
const MAX_VALUE: usize = 1_000_000_000 - 64 * 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    k     BLOB PRIMARY KEY,      -- namespace + key, UTF-8 bytes
    exp   INTEGER NOT NULL,      -- expiry, ms since the Unix epoch; 0 = never
    flags INTEGER NOT NULL,      -- pymemcache-compatible type flags
    v     BLOB NOT NULL
) WITHOUT ROWID;
";

const SQL_GET: &str = "SELECT exp, flags, v FROM entries WHERE k = ?1";
const SQL_SET: &str = "INSERT OR REPLACE INTO entries (k, exp, flags, v) VALUES (?1, ?2, ?3, ?4)";
const SQL_DEL_EXPIRED: &str = "DELETE FROM entries WHERE k = ?1 AND exp = ?2";
const SQL_DEL: &str = "DELETE FROM entries WHERE k = ?1 RETURNING exp";
/// `add`: insert, or replace only an expired row (`?5` is now); one statement, so atomic
/// against every other connection. Changes one row when it stored, none when a live row was
/// there.
const SQL_ADD: &str = "INSERT INTO entries (k, exp, flags, v) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (k) DO UPDATE SET exp = excluded.exp, flags = excluded.flags, v = excluded.v \
     WHERE entries.exp <> 0 AND entries.exp <= ?5";

/// The file backend. Safe for many threads and processes at once.
pub struct FileBackend {
    /// The database and its connections (pool, WAL, corruption handling).
    db: Db,
    keys: Keyspace,
    /// The directory's change counters, bumped around every write (near caches in any process
    /// check them; `near/file.rs`): a write fails rather than go uncounted.
    counters: Arc<Counters>,
}

impl fmt::Debug for FileBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileBackend")
            .field("db", &self.db.path())
            .field("namespace", &self.keys.namespace())
            .finish()
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl FileBackend {
    /// Opens (creating it with mode 0700 if needed) a cache directory for a namespace. An
    /// existing database is opened now (a corrupt one is moved aside now); a missing one is
    /// created empty now and made a database by the first write.
    ///
    /// # Errors
    /// [`Error::Backend`] when the directory or its database cannot be created or opened.
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
        // The directory first: the counters live in it, and a process that cannot open them
        // on a new directory would fall back to the pools' once-a-second file check.
        super::sqlite::create_dir(&dir, NAME)?;
        // Before the first connect: a database moved aside then moves the epoch too.
        let counters = Arc::new(Counters::new(&dir));
        let replacements = counters.clone() as Arc<dyn super::sqlite::Replacements>;
        // A new database is made by the first write: a read of a new directory is a miss
        // that costs no fsync (`Create::OnWrite`).
        let db = Db::open_watched(
            dir,
            DB_FILE,
            SCHEMA,
            NAME,
            clock,
            Some(replacements),
            Create::OnWrite,
        )?;
        Ok(FileBackend {
            db,
            keys: Keyspace::new(namespace),
            counters,
        })
    }

    /// As [`FileBackend::changing`] for a commit that changes `keys`.
    fn changing_keys<T>(&self, keys: &[&str], write: impl FnOnce() -> Result<T>) -> Result<T> {
        self.counters
            .around_keys(self.keys.namespace(), keys, write)
    }

    /// Runs `write`, a commit that changes `key` (`None`: many keys), with the change counters
    /// bumped before and after it (`near/file.rs`, [`Counters::around`]); fails without
    /// writing when they cannot be opened.
    fn changing<T>(&self, key: Option<&str>, write: impl FnOnce() -> Result<T>) -> Result<T> {
        self.counters.around(self.keys.namespace(), key, write)
    }

    /// The cache directory.
    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        self.db.dir()
    }

    /// The database file.
    #[cfg(test)]
    pub fn db_path(&self) -> &Path {
        self.db.path()
    }

    fn with_conn<T>(
        &self,
        what: &str,
        f: impl Fn(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        self.db.with_conn(what, f)
    }

    fn expires_at(&self, ttl: Option<Duration>) -> i64 {
        match ttl {
            None => 0,
            Some(t) => self.now().saturating_add(ms(t)).max(1),
        }
    }

    fn now(&self) -> i64 {
        i64::try_from(self.db.now_ms()).unwrap_or(i64::MAX)
    }

    fn is_live(&self, exp: i64) -> bool {
        exp == 0 || exp > self.now()
    }

    /// A row as [`Backend::keys`] and [`Backend::meta`] report it.
    fn entry(&self, key: &[u8], exp: i64, flags: i64, len: i64) -> super::EntryInfo {
        let expiry = match exp {
            0 => super::Expiry::Never,
            e => super::Expiry::In(Duration::from_millis(
                u64::try_from(e.saturating_sub(self.now())).unwrap_or(0),
            )),
        };
        super::EntryInfo {
            key: String::from_utf8_lossy(key).into_owned(),
            expiry,
            size: u64::try_from(len).ok(),
            flags: u32::try_from(flags).ok(),
        }
    }
}

/// The change counters learn of a database moved aside (the epoch), and pools check the file
/// whenever the epoch moved.
impl super::sqlite::Replacements for Counters {
    fn may_replace(&self) -> bool {
        Counters::may_replace(self)
    }

    fn replaced(&self) {
        Counters::replaced(self);
    }

    fn epoch(&self) -> Option<u64> {
        Counters::epoch(self)
    }
}

/// Refuses a value larger than SQLite stores.
fn check_size(item: &Item) -> Result<()> {
    if item.data.len() > MAX_VALUE {
        return Err(Error::InvalidArgument(format!(
            "a value of {} bytes is larger than the file backend's limit of {MAX_VALUE} bytes",
            item.data.len()
        )));
    }
    Ok(())
}

impl Backend for FileBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn get(&self, key: &str) -> Result<Option<Item>> {
        Ok(self.get_expiring(key)?.map(|(item, _)| item))
    }

    /// The row's expiry with it: a near entry never outlives it.
    fn get_expiring(&self, key: &str) -> Result<Option<(Item, super::Expiry)>> {
        let sk = self.keys.storage_key(key);
        let row = self.db.read("cannot read an entry", |c| {
            c.prepare_cached(SQL_GET)?
                .query_row([sk.as_bytes()], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })
                .optional()
        })?;
        let Some((exp, flags, data)) = row.flatten() else {
            return Ok(None);
        };
        let now = self.now();
        if exp != 0 && exp <= now {
            // Remove it only if it is still the expired entry (a fresh write may have landed).
            self.changing(Some(key), || {
                self.with_conn("cannot remove an expired entry", |c| {
                    c.prepare_cached(SQL_DEL_EXPIRED)?
                        .execute(params![sk.as_bytes(), exp])
                })
            })?;
            return Ok(None);
        }
        let expiry = match exp {
            0 => super::Expiry::Never,
            e => super::Expiry::In(Duration::from_millis(
                u64::try_from(e.saturating_sub(now)).unwrap_or(0),
            )),
        };
        let item = Item {
            data,
            flags: u32::try_from(flags).unwrap_or(0),
        };
        Ok(Some((item, expiry)))
    }

    fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        check_size(item)?;
        let sk = self.keys.storage_key(key);
        let exp = self.expires_at(ttl);
        self.changing(Some(key), || {
            self.with_conn("cannot write an entry", |c| {
                c.prepare_cached(SQL_SET)?.execute(params![
                    sk.as_bytes(),
                    exp,
                    i64::from(item.flags),
                    item.data
                ])
            })
        })?;
        Ok(())
    }

    fn add(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<bool> {
        check_size(item)?;
        let sk = self.keys.storage_key(key);
        let (exp, now) = (self.expires_at(ttl), self.now());
        let n = self.changing(Some(key), || {
            self.with_conn("cannot add an entry", |c| {
                c.prepare_cached(SQL_ADD)?.execute(params![
                    sk.as_bytes(),
                    exp,
                    i64::from(item.flags),
                    item.data,
                    now
                ])
            })
        })?;
        Ok(n == 1)
    }

    fn incr(&self, key: &str, delta: i64, counter: &dyn super::Counter) -> Result<i64> {
        let sk = self.keys.storage_key(key);
        // One immediate transaction: read, step, write. A codec or range error rolls it back
        // (the transaction is dropped) and is returned as it is.
        self.changing(Some(key), || {
            self.with_conn("cannot update a counter", |c| {
                let tx = rusqlite::Transaction::new_unchecked(
                    c,
                    rusqlite::TransactionBehavior::Immediate,
                )?;
                // The clock is read once the transaction holds the write lock: `BEGIN IMMEDIATE`
                // may wait up to the busy timeout, and a row that expired meanwhile is absent.
                let now = self.now();
                let row = tx
                    .prepare_cached(SQL_GET)?
                    .query_row([sk.as_bytes()], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                        ))
                    })
                    .optional()?
                    .filter(|(exp, ..)| *exp == 0 || *exp > now);
                let step = || -> Result<(i64, i64, Item)> {
                    let (exp, current) = match &row {
                        Some((exp, flags, data)) => {
                            let item = Item::new(data.clone(), u32::try_from(*flags).unwrap_or(0));
                            (*exp, counter.read(key, &item)?)
                        }
                        None => (0, 0),
                    };
                    let n = super::counter_step(current, delta)?;
                    Ok((n, exp, counter.write(key, n)?))
                };
                let (n, exp, item) = match step() {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(e)),
                };
                tx.prepare_cached(SQL_SET)?.execute(params![
                    sk.as_bytes(),
                    exp,
                    i64::from(item.flags),
                    item.data
                ])?;
                tx.commit()?;
                Ok(Ok(n))
            })
        })?
    }

    fn touch(&self, key: &str, ttl: Option<Duration>) -> Result<bool> {
        let sk = self.keys.storage_key(key);
        let (exp, now) = (self.expires_at(ttl), self.now());
        let n = self.changing(Some(key), || {
            self.with_conn("cannot touch an entry", |c| {
                c.prepare_cached(
                    "UPDATE entries SET exp = ?2 WHERE k = ?1 AND (exp = 0 OR exp > ?3)",
                )?
                .execute(params![sk.as_bytes(), exp, now])
            })
        })?;
        Ok(n == 1)
    }

    fn delete(&self, key: &str) -> Result<bool> {
        let sk = self.keys.storage_key(key);
        let exp = self.changing(Some(key), || {
            self.db.read("cannot delete an entry", |c| {
                c.prepare_cached(SQL_DEL)?
                    .query_row([sk.as_bytes()], |r| r.get::<_, i64>(0))
                    .optional()
            })
        })?;
        Ok(exp.flatten().is_some_and(|e| self.is_live(e)))
    }

    fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let (lo, hi) = prefix_range(self.keys.storage_key(prefix).as_bytes());
        let now = self.now();
        let live = self.changing(None, || self.db.read("cannot invalidate a prefix", |c| {
            // One immediate transaction: count the live entries, then remove the whole range
            // (expired entries too, uncounted).
            let tx = rusqlite::Transaction::new_unchecked(c, rusqlite::TransactionBehavior::Immediate)?;
            let live: i64 = match &hi {
                Some(hi) => tx.query_row(
                    "SELECT count(*) FROM entries WHERE k >= ?1 AND k < ?2 AND (exp = 0 OR exp > ?3)",
                    params![lo, hi, now],
                    |r| r.get(0),
                )?,
                None => tx.query_row(
                    "SELECT count(*) FROM entries WHERE k >= ?1 AND (exp = 0 OR exp > ?2)",
                    params![lo, now],
                    |r| r.get(0),
                )?,
            };
            match &hi {
                Some(hi) => tx.execute(
                    "DELETE FROM entries WHERE k >= ?1 AND k < ?2",
                    params![lo, hi],
                )?,
                None => tx.execute("DELETE FROM entries WHERE k >= ?1", params![lo])?,
            };
            tx.commit()?;
            Ok(u64::try_from(live).unwrap_or(0))
        }))?;
        Ok(live.unwrap_or(0))
    }

    fn clear(&self) -> Result<()> {
        self.delete_prefix("").map(|_| ())
    }

    fn keys(&self, prefix: &str, limit: usize) -> Result<Vec<super::EntryInfo>> {
        // One range scan of the primary key, stopped at `limit` rows.
        let (lo, hi) = prefix_range(self.keys.storage_key(prefix).as_bytes());
        let now = self.now();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.db.read("cannot list keys", |c| {
            let row = |r: &rusqlite::Row<'_>| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            };
            const COLS: &str = "SELECT k, exp, flags, length(v) FROM entries";
            match &hi {
                Some(hi) => c
                    .prepare_cached(&format!(
                        "{COLS} WHERE k >= ?1 AND k < ?2 AND (exp = 0 OR exp > ?3) ORDER BY k LIMIT ?4"
                    ))?
                    .query_map(params![lo, hi, now, limit], row)?
                    .collect::<rusqlite::Result<Vec<_>>>(),
                None => c
                    .prepare_cached(&format!(
                        "{COLS} WHERE k >= ?1 AND (exp = 0 OR exp > ?2) ORDER BY k LIMIT ?3"
                    ))?
                    .query_map(params![lo, now, limit], row)?
                    .collect::<rusqlite::Result<Vec<_>>>(),
            }
        })?;
        let ns = self.keys.namespace().len();
        Ok(rows
            .unwrap_or_default()
            .into_iter()
            .map(|(k, exp, flags, len)| self.entry(&k[ns.min(k.len())..], exp, flags, len))
            .collect())
    }

    fn meta(&self, key: &str) -> Result<Option<super::EntryInfo>> {
        let sk = self.keys.storage_key(key);
        let row = self.db.read("cannot read an entry", |c| {
            c.prepare_cached("SELECT exp, flags, length(v) FROM entries WHERE k = ?1")?
                .query_row([sk.as_bytes()], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .optional()
        })?;
        Ok(row
            .flatten()
            .filter(|(exp, ..)| self.is_live(*exp))
            .map(|(exp, flags, len)| self.entry(key.as_bytes(), exp, flags, len)))
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    fn set_many(&self, items: &[(&str, Item)], ttl: Option<Duration>) -> Result<()> {
        if let Some((_, big)) = items.iter().find(|(_, i)| i.data.len() > MAX_VALUE) {
            return Err(Error::InvalidArgument(format!(
                "a value of {} bytes is larger than the file backend's limit of {MAX_VALUE} bytes",
                big.data.len()
            )));
        }
        let exp = self.expires_at(ttl);
        // One transaction for the batch: all or nothing, and one commit.
        let keys: Vec<&str> = items.iter().map(|(k, _)| *k).collect();
        self.changing_keys(&keys, || {
            self.with_conn("cannot write entries", |c| {
                let tx = rusqlite::Transaction::new_unchecked(
                    c,
                    rusqlite::TransactionBehavior::Immediate,
                )?;
                {
                    let mut st = tx.prepare_cached(SQL_SET)?;
                    for (k, item) in items {
                        let sk = self.keys.storage_key(k);
                        st.execute(params![
                            sk.as_bytes(),
                            exp,
                            i64::from(item.flags),
                            item.data
                        ])?;
                    }
                }
                tx.commit()
            })
        })
    }

    fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let now = self.now();
        let n = self.changing_keys(keys, || {
            self.db.read("cannot delete entries", |c| {
                let tx = rusqlite::Transaction::new_unchecked(
                    c,
                    rusqlite::TransactionBehavior::Immediate,
                )?;
                let mut n = 0u64;
                {
                    let mut st = tx.prepare_cached(SQL_DEL)?;
                    for k in keys {
                        let sk = self.keys.storage_key(k);
                        if let Some(exp) = st
                            .query_row([sk.as_bytes()], |r| r.get::<_, i64>(0))
                            .optional()?
                        {
                            n += u64::from(exp == 0 || exp > now);
                        }
                    }
                }
                tx.commit()?;
                Ok(n)
            })
        })?;
        Ok(n.unwrap_or(0))
    }

    /// One statement (atomic against every other connection): the value is written only
    /// while the lease row is live and holds `token`.
    fn set_if_lease(
        &self,
        key: &str,
        item: &Item,
        ttl: Option<Duration>,
        lease: &str,
        token: &[u8],
    ) -> Result<bool> {
        check_size(item)?;
        let sk = self.keys.storage_key(key);
        let lk = self.keys.storage_key(lease);
        let (exp, now) = (self.expires_at(ttl), self.now());
        let n = self.changing(Some(key), || {
            self.with_conn("cannot write an entry", |c| {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO entries (k, exp, flags, v) SELECT ?1, ?2, ?3, ?4 \
                 WHERE EXISTS (SELECT 1 FROM entries WHERE k = ?5 AND v = ?6 \
                 AND (exp = 0 OR exp > ?7))",
                )?
                .execute(params![
                    sk.as_bytes(),
                    exp,
                    i64::from(item.flags),
                    item.data,
                    lk.as_bytes(),
                    token,
                    now
                ])
            })
        })?;
        Ok(n == 1)
    }

    /// One statement: only a live row holding `token` gets the new expiry.
    fn extend_lease(&self, lease: &str, token: &[u8], ttl: Duration) -> Result<bool> {
        let lk = self.keys.storage_key(lease);
        let (exp, now) = (self.expires_at(Some(ttl)), self.now());
        let n = self.changing(Some(lease), || {
            self.with_conn("cannot extend a lease", |c| {
                c.prepare_cached(
                    "UPDATE entries SET exp = ?3 WHERE k = ?1 AND v = ?2 AND (exp = 0 OR exp > ?4)",
                )?
                .execute(params![lk.as_bytes(), token, exp, now])
            })
        })?;
        Ok(n == 1)
    }

    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool> {
        let sk = self.keys.storage_key(key);
        let now = self.now();
        // One statement: atomic against every other connection. An expired row holding the
        // token is removed too, but does not count (the lease it was had already ended).
        let exp = self.changing(Some(key), || {
            self.db.read("cannot release a lease", |c| {
                c.prepare_cached("DELETE FROM entries WHERE k = ?1 AND v = ?2 RETURNING exp")?
                    .query_row(params![sk.as_bytes(), expected], |r| r.get::<_, i64>(0))
                    .optional()
            })
        })?;
        Ok(exp.flatten().is_some_and(|e| e == 0 || e > now))
    }

    fn info(&self) -> Result<Vec<(String, String)>> {
        let (lo, hi) = prefix_range(self.keys.namespace().as_bytes());
        let now = self.now();
        let (entries, live, bytes) = self.db.read("cannot count entries", |c| {
            let sql = "SELECT count(*), coalesce(sum(exp = 0 OR exp > ?3), 0), coalesce(sum(length(v)), 0) \
                       FROM entries WHERE k >= ?1 AND (?2 IS NULL OR k < ?2)";
            c.query_row(sql, params![lo, hi, now], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
        })?
        .unwrap_or_default();
        let file_bytes = fs::metadata(self.db.path()).map(|m| m.len()).unwrap_or(0);
        Ok(vec![
            ("database".to_owned(), self.db.path().display().to_string()),
            ("entries".to_owned(), live.to_string()),
            (
                "expired entries not yet removed".to_owned(),
                (entries - live).to_string(),
            ),
            ("value bytes".to_owned(), bytes.to_string()),
            ("database file bytes".to_owned(), file_bytes.to_string()),
        ])
    }

    fn ping(&self) -> Result<BackendStatus> {
        self.with_conn("cannot query the database", |c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
        })?;
        Ok(BackendStatus {
            detail: format!("database {} answers", self.db.path().display()),
        })
    }

    fn close(&self) {
        self.db.close();
    }
}

#[cfg(test)]
mod tests;
