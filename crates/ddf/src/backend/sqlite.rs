//! One local SQLite database file, as the file backend and the outage journal use it: a private
//! directory (0700) and file (0600), WAL mode, a pool of connections, a bounded wait for other
//! processes' writes, and a corrupt or foreign file moved aside (`<file>.corrupt-<ms>`) so that a
//! fresh database takes its place. The schema is the caller's.
//!
//! Written here rather than taken from a pool crate (r2d2-sqlite): the pool must also notice that
//! another process moved the file aside and drop connections to the old inode, which no pool
//! crate does; the rest is a few lines around `rusqlite`.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode};
use tracing::{debug, warn};

use crate::clock::Clock;
use crate::error::{Error, Result};

/// How long a write waits for another process's write.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections kept open for reuse.
const POOL_MAX: usize = 8;
/// How often a pool checks that its path still names the file its connections use (another
/// process may have moved a corrupt database aside).
pub(crate) const FILE_CHECK: Duration = Duration::from_secs(1);

/// Short, even steps between tries of a lock another process holds.
const BUSY_STEP: Duration = Duration::from_millis(1);

thread_local! {
    /// When the statement this thread runs first found the database busy.
    static BUSY_SINCE: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// SQLite's busy handler: whether to try a locked database again (`count` is how many times this
/// statement has been told so). Tries every millisecond until [`BUSY_TIMEOUT`] has passed since
/// the first refusal.
///
/// Why not `busy_timeout`: SQLite's own handler sleeps 1, 2, 5, ... then 100 ms between tries, so
/// a waiter asleep for 100 ms loses the lock to every process that asks meanwhile. Under
/// contention (8 processes incrementing one counter on a loaded machine) one of them waited out
/// the whole timeout and failed with "database is locked" while the others went on. Even 1 ms
/// steps give every waiter its turn within a few steps of the lock coming free.
fn busy_wait(count: i32) -> bool {
    let now = Instant::now();
    let since = BUSY_SINCE.with(|s| {
        // SQLite counts from 0 for each statement (and each `BEGIN`) that meets a lock.
        if count == 0 || s.get().is_none() {
            s.set(Some(now));
        }
        s.get().unwrap_or(now)
    });
    if now.duration_since(since) >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_STEP);
    true
}

/// A database file in a directory, with its pool of connections. Safe for many threads and
/// processes at once.
pub(crate) struct Db {
    dir: PathBuf,
    path: PathBuf,
    /// Run on every new connection (`CREATE TABLE IF NOT EXISTS ...`).
    schema: &'static str,
    /// The backend name errors carry.
    label: &'static str,
    clock: Arc<dyn Clock>,
    pool: Mutex<Pool>,
    /// Told when this process moves the database aside, and asked whether any process may
    /// have (the file backend's change counters).
    replacements: Option<Arc<dyn Replacements>>,
    /// Set at this pool's first connect: from then on the database exists (or the next
    /// connect creates it again), and [`Db::read`] no longer looks for the file.
    connected: AtomicBool,
}

/// When [`Db::open_watched`] creates a database that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    /// At open, like any first connect.
    Now,
    /// The private empty file at open (so that an unusable directory fails then, with no
    /// `fsync`), the database at the first connect other than a [`Db::read`], which meanwhile
    /// finds nothing. Creating
    /// a database costs several `fsync`s (SQLite's switch to WAL mode commits through a
    /// rollback journal, and the first commit into a new WAL syncs its header and the
    /// directory: 50 to 120 ms on this project's loaded test machine), which a process that
    /// only reads an empty cache need not pay.
    OnWrite,
}

/// What the owner of a database learns and tells about it being moved aside (the file
/// backend's change counters, `near/file.rs`).
pub(crate) trait Replacements: Send + Sync + fmt::Debug {
    /// Whether this process may move the database aside now: `false` when the move could not
    /// be told to the other processes (the corruption is then returned as an error instead).
    fn may_replace(&self) -> bool;
    /// This process moved the database aside (after the move, before the next connect).
    fn replaced(&self);
    /// A number that moves, in every process, after any process moved the database aside
    /// (and maybe more often); `None`: unknown. A pool that sees it move checks the file at
    /// once instead of at its next [`FILE_CHECK`].
    fn epoch(&self) -> Option<u64>;
}

#[derive(Default)]
struct Pool {
    idle: Vec<Connection>,
    /// Bumped when the database is moved aside; older connections are not reused.
    generation: u64,
    /// The database file this generation's connections opened (device, inode).
    file_id: Option<(u64, u64)>,
    /// When the path was last checked to still name that file.
    checked: Option<Instant>,
    /// The replacements' epoch at that check.
    epoch: Option<u64>,
}

#[cfg(unix)]
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_path: &Path) -> Option<(u64, u64)> {
    None
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// The one mapping from SQLite's errors into ddf's.
fn sql_error(label: &'static str, what: impl fmt::Display, e: rusqlite::Error) -> Error {
    let temporary = matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::SystemIoFailure)
    );
    Error::Backend {
        backend: label,
        // rusqlite's error repeats its text in its own source: the message keeps it once.
        message: format!("{what}: {e}"),
        temporary,
        source: None,
    }
}

/// Creates `dir` (and its parents, mode 0700 on unix) unless it exists; an error when it cannot
/// be created or is not a directory.
pub(crate) fn create_dir(dir: &Path, label: &'static str) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| Error::io(label, format_args!("cannot create {}", dir.display()), e))?;
    if !dir.is_dir() {
        return Err(Error::Backend {
            backend: label,
            message: format!("{} is not a directory", dir.display()),
            temporary: false,
            source: None,
        });
    }
    Ok(())
}

/// Creates `path` empty, private (0600) and not through a symbolic link, unless it exists.
///
/// # Errors
/// The file cannot be created (the directory is read-only or not ours, the path names a link).
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits().cast_signed());
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl Db {
    /// Creates `dir` (mode 0700) if needed and opens `dir/file` once, so that a bad directory or
    /// database shows now. `label` names the owner in errors (`pickle`, `journal`).
    ///
    /// # Errors
    /// [`Error::Backend`] when the directory or the database cannot be created or opened.
    pub(crate) fn open(
        dir: PathBuf,
        file: &str,
        schema: &'static str,
        label: &'static str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        Self::open_watched(dir, file, schema, label, clock, None, Create::Now)
    }

    /// [`Db::open`] telling `replacements` (already from the first connect: a database found
    /// corrupt then is moved aside too), and creating a missing database when `create` says.
    /// A database that exists is opened now either way, so that a corrupt or foreign file
    /// shows (and is moved aside) at once.
    ///
    /// # Errors
    /// As [`Db::open`].
    pub(crate) fn open_watched(
        dir: PathBuf,
        file: &str,
        schema: &'static str,
        label: &'static str,
        clock: Arc<dyn Clock>,
        replacements: Option<Arc<dyn Replacements>>,
        create: Create,
    ) -> Result<Self> {
        create_dir(&dir, label)?;
        let db = Db {
            path: dir.join(file),
            dir,
            schema,
            label,
            clock,
            pool: Mutex::new(Pool::default()),
            replacements,
            connected: AtomicBool::new(false),
        };
        if create == Create::OnWrite {
            // The private empty file now (no fsync): an unusable directory fails here, at
            // build, not at every write. SQLite reads an empty file as an empty database.
            create_private(&db.path).map_err(|e| {
                Error::io(
                    label,
                    format_args!("cannot create {}", db.path.display()),
                    e,
                )
            })?;
        }
        if create == Create::Now || !db.is_blank() {
            let (c, generation) = db.take()?;
            db.give(c, generation);
        }
        Ok(db)
    }

    /// The directory.
    #[cfg(test)]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The clock (expiry, the names of files moved aside).
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Drops the idle connections; the next call reconnects.
    pub(crate) fn close(&self) {
        self.lock_pool().idle.clear();
    }

    fn lock_pool(&self) -> MutexGuard<'_, Pool> {
        // A panic while holding this lock cannot leave the pool inconsistent: recover it.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a connection from the pool (or opens one), with the pool generation it belongs to.
    fn take(&self) -> Result<(Connection, u64)> {
        // Loaded before the check: a process that moves the database aside moves the epoch
        // after the move, so a caller that loaded the moved epoch (a near fill's stamp) finds
        // the new file here, never fills from the old one.
        let epoch = self.replacements.as_ref().and_then(|r| r.epoch());
        let (idle, generation) = {
            let mut pool = self.lock_pool();
            // Once a second, and whenever the epoch moved: if another process moved the
            // database aside, drop the connections to the old file and open the new one.
            if pool.checked.is_none_or(|t| t.elapsed() >= FILE_CHECK) || pool.epoch != epoch {
                pool.checked = Some(Instant::now());
                pool.epoch = epoch;
                if pool.file_id.is_some() && file_id(&self.path) != pool.file_id {
                    pool.generation += 1;
                    pool.idle.clear();
                    pool.file_id = None;
                }
            }
            (pool.idle.pop(), pool.generation)
        };
        if let Some(c) = idle {
            return Ok((c, generation));
        }
        let open_err = |e| {
            sql_error(
                self.label,
                format_args!("cannot open {}", self.path.display()),
                e,
            )
        };
        let (conn, generation) = match self.connect() {
            Ok(c) => (c, generation),
            Err(e) if is_corruption(&e) => {
                self.quarantine(generation, &e);
                let generation = self.lock_pool().generation;
                (self.connect().map_err(open_err)?, generation)
            }
            Err(e) => return Err(open_err(e)),
        };
        self.connected.store(true, Ordering::Relaxed);
        let mut pool = self.lock_pool();
        if pool.generation == generation && pool.file_id.is_none() {
            pool.file_id = file_id(&self.path);
        }
        Ok((conn, generation))
    }

    /// Returns a connection to the pool, unless the database was replaced since it was taken.
    fn give(&self, conn: Connection, generation: u64) {
        let mut pool = self.lock_pool();
        if pool.generation == generation && pool.idle.len() < POOL_MAX {
            pool.idle.push(conn);
        }
    }

    /// Opens a connection; a first open that several threads or processes make at once (the
    /// switch to WAL mode and the schema need the write lock, and SQLite answers `SQLITE_BUSY`
    /// to some of them at once, without waiting on its busy handler) is tried again until
    /// [`BUSY_TIMEOUT`].
    fn connect(&self) -> rusqlite::Result<Connection> {
        let deadline = Instant::now() + BUSY_TIMEOUT;
        let mut pause = Duration::from_millis(2);
        loop {
            match self.connect_once() {
                Err(e)
                    if matches!(
                        e.sqlite_error_code(),
                        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                    ) && Instant::now() + pause < deadline =>
                {
                    debug!(error = %e, "SQLite busy while opening {}; trying again", self.path.display());
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                r => return r,
            }
        }
    }

    fn connect_once(&self) -> rusqlite::Result<Connection> {
        if !self.path.exists() {
            // Created by us so that it (and the -wal/-shm files SQLite derives from it) is
            // private to the user. A failure shows as SQLite's own at the open below.
            let _ = create_private(&self.path);
        }
        let mut c = Connection::open(&self.path)?;
        c.busy_handler(Some(busy_wait))?;
        // WAL: readers never block writers; NORMAL: no fsync per transaction (safe in WAL mode).
        let mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            debug!(mode, "SQLite did not switch to WAL mode");
        }
        c.execute_batch("PRAGMA synchronous = NORMAL;")?;
        c.execute_batch(self.schema)?;
        Ok(c)
    }

    /// Moves a corrupt or foreign database aside so that a fresh one takes its place.
    fn quarantine(&self, generation: u64, cause: &rusqlite::Error) {
        let mut pool = self.lock_pool();
        if pool.generation != generation {
            return; // another thread did it already
        }
        pool.generation += 1;
        pool.idle.clear();
        if let Some(r) = &self.replacements
            && !r.may_replace()
        {
            warn!(
                db = %self.path.display(),
                error = %cause,
                "the database is corrupt or not a ddf database, but it is left in place: moving \
                 it aside could not be told to the near caches of other processes"
            );
            return;
        }
        let ours = pool.file_id.take();
        if ours.is_some() && file_id(&self.path) != ours {
            // Another process moved our corrupt file aside already: the path names its fresh
            // database now, which must not be touched. Reconnect to it.
            return;
        }
        let aside = self.dir.join(format!(
            "{}.corrupt-{}",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            self.clock.now_ms()
        ));
        warn!(
            db = %self.path.display(),
            moved_to = %aside.display(),
            error = %cause,
            "the database is corrupt or not a ddf database; moving it aside and starting empty"
        );
        if let Err(e) = fs::rename(&self.path, &aside) {
            warn!(error = %e, "cannot move the corrupt database aside; removing it");
            let _ = fs::remove_file(&self.path);
        }
        for ext in ["-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(ext);
            let _ = fs::remove_file(PathBuf::from(p));
        }
        if let Some(r) = &self.replacements {
            r.replaced();
        }
    }

    /// Moves the database aside as if it were found corrupt (tests of what survives that).
    #[cfg(test)]
    pub(crate) fn quarantine_now(&self) {
        let generation = self.lock_pool().generation;
        self.quarantine(generation, &rusqlite::Error::InvalidQuery);
    }

    /// Whether the database is missing or still the empty file [`Db::open_watched`] made
    /// (`Create::OnWrite`): SQLite reads either as an empty database.
    pub(crate) fn is_blank(&self) -> bool {
        !matches!(fs::metadata(&self.path), Ok(m) if m.len() > 0)
    }

    /// [`Db::with_conn`] for a read (or a delete) that finds nothing in a blank database:
    /// `None`, without connecting or creating anything, while this pool has never connected
    /// and the file is missing or empty (a `stat` per call until then).
    ///
    /// # Errors
    /// As [`Db::with_conn`].
    pub(crate) fn read<T>(
        &self,
        what: &str,
        f: impl Fn(&Connection) -> rusqlite::Result<T>,
    ) -> Result<Option<T>> {
        if !self.connected.load(Ordering::Relaxed) && self.is_blank() {
            return Ok(None);
        }
        self.with_conn(what, f).map(Some)
    }

    /// Runs `f` on a pooled connection; on corruption, moves the database aside and runs it
    /// once more on a fresh one. `what` says what failed, for the error.
    ///
    /// # Errors
    /// [`Error::Backend`] when SQLite fails (temporary when busy or locked).
    pub(crate) fn with_conn<T>(
        &self,
        what: &str,
        f: impl Fn(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let (conn, generation) = self.take()?;
        let result = f(&conn);
        match result {
            Ok(v) => {
                self.give(conn, generation);
                Ok(v)
            }
            Err(e) if is_corruption(&e) => {
                drop(conn);
                self.quarantine(generation, &e);
                let (conn, generation) = self.take()?;
                let v = f(&conn).map_err(|e| sql_error(self.label, what, e))?;
                self.give(conn, generation);
                Ok(v)
            }
            Err(e) => {
                self.give(conn, generation);
                Err(sql_error(self.label, what, e))
            }
        }
    }
}
