//! The file backend's unit tests.

use super::*;
use crate::clock::MockClock;

fn backend() -> (tempfile::TempDir, FileBackend, MockClock) {
    let dir = tempfile::tempdir().unwrap();
    let clock = MockClock::new(1_000_000);
    let b = FileBackend::with_clock(dir.path().join("c"), "ns:", Arc::new(clock.clone())).unwrap();
    (dir, b, clock)
}

fn item(s: &str) -> Item {
    Item::new(s.as_bytes().to_vec(), 16)
}

/// A breaker per Memcached server opens one fallback per server on the same database at
/// once; the first open of a fresh file (WAL switch, schema) must not fail with "database is
/// locked" (it did in the interop suite, with two servers).
#[test]
fn many_first_opens_of_one_database_at_once_all_succeed() {
    for _ in 0..50 {
        let dir = tempfile::tempdir().unwrap();
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for i in 0..8 {
                let (dir, barrier) = (dir.path(), &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let b = FileBackend::open(dir.join("c"), &format!("ns{i}:")).unwrap();
                    b.set("k", &item("v"), None).unwrap();
                });
            }
        });
    }
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
    // The expired entry is gone, not just hidden.
    assert_eq!(b.info().unwrap()[2].1, "0");
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
    b.set("m", &item("v"), Some(Duration::from_secs(1)))
        .unwrap();
    clock.advance(Duration::from_secs(2));
    assert!(!b.delete("a").unwrap());
    assert_eq!(b.delete_prefix("p:").unwrap(), 1);
    assert_eq!(b.delete_many(&["m"]).unwrap(), 0);
    assert_eq!(b.info().unwrap()[1].1, "0");
}

#[test]
fn a_corrupt_database_reads_as_a_miss_and_is_replaced() {
    let (_d, b, _c) = backend();
    b.set("k", &item("value"), None).unwrap();
    b.close();
    let garbage = vec![0x5au8; 64 * 1024];
    fs::write(b.db_path(), &garbage).unwrap();
    for ext in ["-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{ext}", b.db_path().display()));
    }
    assert_eq!(b.get("k").unwrap(), None);
    b.set("k", &item("again"), None).unwrap();
    assert_eq!(b.get("k").unwrap(), Some(item("again")));
    let aside = fs::read_dir(b.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains(".corrupt-"));
    assert!(aside, "the corrupt database was kept aside");
}

#[test]
fn a_database_moved_aside_by_another_process_is_left_alone() {
    let (_d, a, _c) = backend();
    let b = FileBackend::open(a.dir(), "ns:").unwrap();
    a.set("k", &item("v1"), None).unwrap();
    assert_eq!(b.get("k").unwrap(), Some(item("v1"))); // b keeps a pooled connection
    a.close();
    fs::write(a.db_path(), vec![0x5au8; 64 * 1024]).unwrap();
    for ext in ["-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{ext}", a.db_path().display()));
    }
    assert_eq!(a.get("k").unwrap(), None); // a moves it aside and starts empty
    a.set("fresh", &item("a"), None).unwrap();
    // b's pooled connection still points at the moved-aside file, and b checked the file
    // less than FILE_CHECK ago; the epoch a moved makes it look again at once: it reads
    // a's fresh database (never the old file), which it must neither move nor miss.
    assert_eq!(b.get("k").unwrap(), None);
    assert_eq!(b.get("fresh").unwrap(), Some(item("a")));
    b.set("from-b", &item("b"), None).unwrap();
    assert_eq!(a.get("fresh").unwrap(), Some(item("a")));
    assert_eq!(a.get("from-b").unwrap(), Some(item("b")));
    let aside = fs::read_dir(a.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .count();
    assert_eq!(aside, 1, "moved aside once");
}

/// Every write path bumps the change counters (near caches in other processes check them),
/// and a database moved aside moves the epoch.
#[test]
fn writes_and_a_database_moved_aside_move_the_change_counters() {
    let (_d, b, _c) = backend();
    let Ok(crate::near::file::Opened::Mapped(changes)) = crate::near::file::Changes::open(b.dir())
    else {
        panic!("not mapped");
    };
    type Write = Box<dyn Fn(&FileBackend)>;
    let writes: Vec<(&str, Write)> = vec![
        ("set", Box::new(|b| b.set("k", &item("v"), None).unwrap())),
        (
            "add",
            Box::new(|b| {
                let _ = b.add("k", &item("v"), None).unwrap();
            }),
        ),
        (
            "touch",
            Box::new(|b| {
                let _ = b.touch("k", None).unwrap();
            }),
        ),
        (
            "delete",
            Box::new(|b| {
                let _ = b.delete("k").unwrap();
            }),
        ),
        (
            "set_many",
            Box::new(|b| b.set_many(&[("k", item("v"))], None).unwrap()),
        ),
        (
            "delete_many",
            Box::new(|b| {
                let _ = b.delete_many(&["k"]).unwrap();
            }),
        ),
        (
            "delete_prefix",
            Box::new(|b| {
                let _ = b.delete_prefix("x").unwrap();
            }),
        ),
        ("clear", Box::new(|b| b.clear().unwrap())),
        (
            "compare_and_delete",
            Box::new(|b| {
                let _ = b.compare_and_delete("k", b"v").unwrap();
            }),
        ),
        ("moved aside", Box::new(|b| b.db.quarantine_now())),
    ];
    for (what, write) in writes {
        let stamp = changes.stamp("ns:", "k");
        write(&b);
        assert!(
            !changes.unchanged(stamp),
            "{what} did not move the counters"
        );
    }
    // A database found corrupt by the first connect of an open is moved aside: the epoch
    // moves too (the counters are told before that connect).
    b.close();
    fs::write(b.db_path(), vec![0x5au8; 64 * 1024]).unwrap();
    let stamp = changes.stamp("ns:", "k");
    let _other = FileBackend::open(b.dir(), "ns:").unwrap();
    assert!(!changes.unchanged(stamp), "a move aside at open");
}

/// Counters that cannot be opened (a directory in their place) fail every write, naming
/// them, and never let it go uncounted; reads go on.
#[test]
fn a_backend_whose_counters_cannot_open_reads_but_never_writes_uncounted() {
    let (_d, b, _c) = backend();
    b.set("k", &item("v1"), None).unwrap();
    let dir = b.dir().join("other");
    fs::create_dir_all(dir.join(crate::near::file::COUNTERS_FILE)).unwrap();
    let other = FileBackend::open(&dir, "ns:").unwrap();
    let e = other.set("k", &item("v2"), None).unwrap_err().to_string();
    assert!(e.contains(crate::near::file::COUNTERS_FILE), "{e}");
    assert_eq!(other.delete_prefix("").map_err(|e| e.to_string()), Err(e));
    assert_eq!(other.get("k").unwrap(), None);
}

/// A new directory is created before the counters are opened, so that even a process that
/// only reads has the epoch its pools check (a database moved aside by another process is
/// then never read through a stale pooled connection).
#[test]
fn a_backend_on_a_new_directory_has_its_counters_from_the_start() {
    let d = tempfile::tempdir().unwrap();
    let b = FileBackend::open(d.path().join("new").join("dir"), "ns:").unwrap();
    assert!(b.counters.epoch().is_some());
}

/// A corrupt database is left in place, and the corruption returned, by a process whose
/// counters cannot be opened: moving it aside could not be told to other near caches.
#[test]
fn a_corrupt_database_is_not_moved_aside_uncounted() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("c");
    fs::create_dir_all(dir.join(crate::near::file::COUNTERS_FILE)).unwrap();
    let b = FileBackend::open(&dir, "ns:").unwrap();
    fs::write(b.db_path(), vec![b'x'; 8192]).unwrap();
    b.db.quarantine_now();
    assert!(
        b.db_path().exists(),
        "the corrupt database stays where it was"
    );
    let moved = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains(".corrupt-"));
    assert!(!moved);
}

#[test]
fn other_files_and_namespaces_survive() {
    let (_d, b, _c) = backend();
    fs::write(b.dir().join("notes.txt"), "keep").unwrap();
    b.set("x", &item("v"), None).unwrap();
    let other = FileBackend::open(b.dir(), "other:").unwrap();
    other.set("x", &item("v"), None).unwrap();
    b.clear().unwrap();
    assert_eq!(b.get("x").unwrap(), None);
    assert!(b.dir().join("notes.txt").exists());
    assert_eq!(other.get("x").unwrap(), Some(item("v")));
}

#[cfg(unix)]
#[test]
fn the_database_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, b, _c) = backend();
    b.set("k", &item("v"), None).unwrap();
    let mode = fs::metadata(b.db_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

fn db_len(b: &FileBackend) -> u64 {
    fs::metadata(b.db_path()).unwrap().len()
}

/// Opening a new directory creates the database file empty (private); a read, a listing or a
/// delete of it finds nothing and does not make it a database (that costs fsyncs); the first
/// write does, and a backend that read before it reads it.
#[test]
fn the_database_is_made_by_the_first_write_not_by_a_read_or_delete() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, reader, _c) = backend();
    assert_eq!(db_len(&reader), 0);
    let mode = fs::metadata(reader.db_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(reader.get("k").unwrap(), None);
    assert_eq!(reader.meta("k").unwrap(), None);
    assert!(reader.keys("", 10).unwrap().is_empty());
    assert!(
        reader
            .info()
            .unwrap()
            .contains(&("entries".to_owned(), "0".to_owned()))
    );
    assert!(!reader.delete("k").unwrap());
    assert_eq!(reader.delete_many(&["k", "l"]).unwrap(), 0);
    assert_eq!(reader.delete_prefix("k").unwrap(), 0);
    reader.clear().unwrap();
    assert!(!reader.compare_and_delete("k", b"t").unwrap());
    let writer = FileBackend::open(reader.dir(), "ns:").unwrap();
    assert_eq!(
        db_len(&reader),
        0,
        "a read, a delete or opening made the database"
    );
    let wal = reader.db_path().with_extension("sqlite3-wal");
    assert!(
        !wal.exists(),
        "a read, a delete or opening made the database"
    );
    writer.set("k", &item("v"), None).unwrap();
    assert!(db_len(&reader) > 0);
    assert_eq!(reader.get("k").unwrap(), Some(item("v")));
    assert_eq!(reader.keys("", 10).unwrap().len(), 1);
}

/// A directory the database cannot be created in fails at build, not at every write (the
/// database itself is made by the first write). A path under a regular file, and (on Linux)
/// `/proc/self`, an existing directory where no file can be created, fail for every user; a
/// read-only directory fails for all but root (which a mode refuses nothing: that half is
/// skipped when the directory turns out writable).
#[test]
fn an_unusable_directory_fails_at_build() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("file"), b"x").unwrap();
    let e = FileBackend::open(d.path().join("file").join("dir"), "ns:").unwrap_err();
    assert!(e.to_string().contains("cannot create"), "{e}");
    #[cfg(target_os = "linux")]
    {
        let e = FileBackend::open("/proc/self", "ns:").unwrap_err();
        assert!(e.to_string().contains(DB_FILE), "{e}");
    }
    let ro = d.path().join("ro");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o500)).unwrap();
    if fs::write(ro.join("probe"), b"").is_ok() {
        return; // root: a read-only mode refuses nothing
    }
    let e = FileBackend::open(&ro, "ns:").unwrap_err();
    assert!(e.to_string().contains(DB_FILE), "{e}");
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o700)).unwrap();
}
