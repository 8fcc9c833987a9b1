//! The state machine, driven by a primary whose availability a test switches. The same rules
//! are exercised against real servers (kill -9, SIGSTOP, restart) in the integration tests.
use super::*;
use crate::backend::file::FileBackend;
use crate::backend::none::NoneBackend;
use crate::config::FallbackMode;
use probe::{Body, ThreadSpawn};
use std::ops::ControlFlow;
use std::time::Instant;

#[derive(Debug)]
struct Switchable {
    store: FileBackend,
    up: Arc<AtomicBool>,
}

impl Switchable {
    fn check(&self) -> Result<()> {
        if self.up.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(refused())
        }
    }
}

impl Backend for Switchable {
    fn name(&self) -> &'static str {
        "test"
    }
    fn get(&self, key: &str) -> Result<Option<Item>> {
        self.check()?;
        self.store.get(key)
    }
    fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        self.check()?;
        self.store.set(key, item, ttl)
    }
    fn delete(&self, key: &str) -> Result<bool> {
        self.check()?;
        self.store.delete(key)
    }
    fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.check()?;
        self.store.delete_prefix(prefix)
    }
    fn clear(&self) -> Result<()> {
        self.check()?;
        self.store.clear()
    }
    fn ping(&self) -> Result<BackendStatus> {
        self.check()?;
        self.store.ping()
    }
}

fn refused() -> Error {
    Error::io(
        "test",
        "connect",
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
    )
}

fn config(scope: &str, failures: u32) -> ResilientConfig {
    ResilientConfig {
        name: "test",
        scope: scope.to_owned(),
        failures,
        retry: Duration::from_millis(20),
        startup_wait: Duration::from_secs(2),
        refuse_whole_keyspace: false,
    }
}

fn item(s: &str) -> Item {
    Item::new(s.as_bytes().to_vec(), 0)
}

/// The fallback a mode stands for, over `local` when it serves from a directory.
fn fallback(mode: FallbackMode, local: &Arc<FileBackend>) -> Fallback {
    match mode {
        FallbackMode::Pickle => Fallback::Serve(local.clone()),
        FallbackMode::None => Fallback::Serve(Arc::new(NoneBackend)),
        _ => Fallback::Refuse,
    }
}

fn build(
    cfg: ResilientConfig,
    factory: Factory,
    fallback: Fallback,
    journal: &Arc<Journal>,
) -> Resilient {
    Resilient::new(
        cfg,
        factory,
        fallback,
        journal.clone(),
        Arc::new(ThreadSpawn),
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    r: Resilient,
    up: Arc<AtomicBool>,
    primary: Arc<Switchable>,
    local: Arc<FileBackend>,
    journal: Arc<Journal>,
}

fn setup(mode: FallbackMode) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let primary = Arc::new(Switchable {
        store: FileBackend::open(dir.path().join("primary"), "ns:").unwrap(),
        up: up.clone(),
    });
    let p2 = primary.clone();
    let local = Arc::new(FileBackend::open(dir.path().join("local"), "ns:").unwrap());
    let journal = Arc::new(Journal::open(dir.path().join("local")).unwrap());
    let r = build(
        config("test|here|ns:", 2),
        Box::new(move || Ok(p2.clone() as Arc<dyn Backend>)),
        fallback(mode, &local),
        &journal,
    );
    Setup {
        _dir: dir,
        r,
        up,
        primary,
        local,
        journal,
    }
}

fn wait_for(r: &Resilient, h: Health) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.health() != h {
        assert!(Instant::now() < deadline, "never reached {h:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn outage_fallback_and_recovery_without_stale_reads() {
    let Setup {
        r,
        up,
        primary,
        local,
        journal,
        _dir: _kept,
        ..
    } = setup(FallbackMode::Pickle);
    r.set("a", &item("1"), None).unwrap();
    r.set("b", &item("1"), None).unwrap();
    r.set("p:1", &item("1"), None).unwrap();
    up.store(false, Ordering::SeqCst);
    // The first failure is served by the fallback; the second marks the primary down.
    assert_eq!(r.get("a").unwrap(), None);
    assert_eq!(r.health(), Health::Up);
    assert_eq!(r.get("a").unwrap(), None);
    assert_eq!(r.health(), Health::Down);
    // While down: writes and reads on the fallback, invalidations recorded.
    r.set("c", &item("outage"), None).unwrap();
    assert_eq!(r.get("c").unwrap(), Some(item("outage")));
    assert!(!r.delete("a").unwrap());
    assert_eq!(r.delete_prefix("p:").unwrap(), 0);
    // The write is recorded as a delete too: the primary's older value must go.
    assert_eq!(journal.read("test|here|ns:").unwrap().len(), 3);
    up.store(true, Ordering::SeqCst);
    wait_for(&r, Health::Up);
    // The invalidations reached the primary before it served reads again.
    assert_eq!(r.get("a").unwrap(), None);
    assert_eq!(r.get("p:1").unwrap(), None);
    assert_eq!(r.get("b").unwrap(), Some(item("1")));
    // Outage values were not promoted, and the fallback was emptied.
    assert_eq!(r.get("c").unwrap(), None);
    assert_eq!(local.get("c").unwrap(), None);
    assert!(journal.read("test|here|ns:").unwrap().is_empty());
    assert_eq!(r.transitions(), 3); // down, recovering, up
    assert!(primary.store.get("b").unwrap().is_some());
}

#[test]
fn invalidations_left_by_an_ended_process_are_applied_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileBackend::open(dir.path().join("primary"), "ns:").unwrap();
    store.set("k", &item("stale"), None).unwrap();
    let local = Arc::new(FileBackend::open(dir.path().join("local"), "fb:").unwrap());
    let journal = Arc::new(Journal::open(dir.path().join("local")).unwrap());
    journal
        .append("s", &[PendingOp::Delete("k".into())])
        .unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let primary = Arc::new(Switchable {
        store: FileBackend::open(dir.path().join("primary"), "ns:").unwrap(),
        up,
    });
    let r = build(
        config("s", 3),
        Box::new(move || Ok(primary.clone() as Arc<dyn Backend>)),
        Fallback::Serve(local),
        &journal,
    );
    // Applied while the cache was built (a short-lived process would never see a probe).
    assert_eq!(r.health(), Health::Up);
    assert_eq!(r.get("k").unwrap(), None);
    assert_eq!(r.get("k").unwrap(), None);
    assert_eq!(store.get("k").unwrap(), None);
}

/// A primary that refuses `clear` for good, as a server backend with an empty namespace and no
/// `server_flush` does.
#[derive(Debug)]
struct RefusesClear(FileBackend);

impl Backend for RefusesClear {
    fn name(&self) -> &'static str {
        "test"
    }
    fn get(&self, key: &str) -> Result<Option<Item>> {
        self.0.get(key)
    }
    fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        self.0.set(key, item, ttl)
    }
    fn delete(&self, key: &str) -> Result<bool> {
        self.0.delete(key)
    }
    fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.0.delete_prefix(prefix)
    }
    fn clear(&self) -> Result<()> {
        Err(crate::backend::whole_keyspace_refusal("everything"))
    }
    fn ping(&self) -> Result<BackendStatus> {
        self.0.ping()
    }
}

/// A recorded entry the primary refuses for good (a flush recorded by a process with other
/// settings) is dropped with a warning: the entries after it are applied and the cache comes
/// up, instead of every process of the scope staying on the fallback for good.
#[test]
fn a_permanently_refused_entry_does_not_keep_the_scope_down() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileBackend::open(dir.path().join("primary"), "ns:").unwrap();
    store.set("k", &item("stale"), None).unwrap();
    let local = Arc::new(FileBackend::open(dir.path().join("local"), "fb:").unwrap());
    let journal = Arc::new(Journal::open(dir.path().join("local")).unwrap());
    journal
        .append("s", &[PendingOp::Clear, PendingOp::Delete("k".into())])
        .unwrap();
    let primary = Arc::new(RefusesClear(
        FileBackend::open(dir.path().join("primary"), "ns:").unwrap(),
    ));
    let r = build(
        config("s", 3),
        Box::new(move || Ok(primary.clone() as Arc<dyn Backend>)),
        Fallback::Serve(local),
        &journal,
    );
    wait_for(&r, Health::Up);
    assert_eq!(r.get("k").unwrap(), None, "the entry after the refused one");
    assert_eq!(store.get("k").unwrap(), None);
    assert!(journal.read("s").unwrap().is_empty());
}

#[test]
fn a_write_that_failed_never_lets_the_old_value_back() {
    let Setup {
        r, up, _dir: _kept, ..
    } = setup(FallbackMode::Pickle);
    r.set("k", &item("v1"), None).unwrap();
    up.store(false, Ordering::SeqCst);
    // Fails on the primary: down at once, recorded, written to the fallback.
    r.set("k", &item("v2"), None).unwrap();
    assert_eq!(r.health(), Health::Down);
    assert_eq!(r.get("k").unwrap(), Some(item("v2")));
    up.store(true, Ordering::SeqCst);
    wait_for(&r, Health::Up);
    // v1 was removed before the primary served again; v2 was not promoted.
    assert_eq!(r.get("k").unwrap(), None);
}

#[test]
fn the_whole_keyspace_is_refused_in_every_state() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(FileBackend::open(dir.path().join("local"), "fb:").unwrap());
    let journal = Arc::new(Journal::open(dir.path().join("local")).unwrap());
    let r = build(
        ResilientConfig {
            retry: Duration::from_secs(60),
            refuse_whole_keyspace: true,
            ..config("s", 3)
        },
        Box::new(|| Err(refused())),
        Fallback::Serve(local),
        &journal,
    );
    assert_eq!(r.health(), Health::Down);
    assert!(r.clear().unwrap_err().to_string().contains("server_flush"));
    assert!(r.delete_prefix("").is_err());
    assert!(journal.read("s").unwrap().is_empty(), "nothing recorded");
}

#[test]
fn a_failed_invalidation_marks_the_primary_down_at_once() {
    let Setup {
        r, up, _dir: _kept, ..
    } = setup(FallbackMode::None);
    r.set("k", &item("v"), None).unwrap();
    up.store(false, Ordering::SeqCst);
    assert!(!r.delete("k").unwrap());
    assert_eq!(r.health(), Health::Down);
    // fallback = none: misses, dropped writes.
    r.set("x", &item("v"), None).unwrap();
    assert_eq!(r.get("x").unwrap(), None);
    up.store(true, Ordering::SeqCst);
    wait_for(&r, Health::Up);
    assert_eq!(r.get("k").unwrap(), None);
}

#[test]
fn fallback_error_returns_temporary_errors_and_still_records() {
    let Setup {
        r, up, _dir: _kept, ..
    } = setup(FallbackMode::Error);
    r.set("k", &item("v"), None).unwrap();
    up.store(false, Ordering::SeqCst);
    let e = r.delete("k").unwrap_err();
    assert!(e.is_temporary(), "{e}");
    assert!(
        r.get("k")
            .unwrap_err()
            .to_string()
            .contains("fallback = error")
    );
    let ping = r.ping().unwrap_err().to_string();
    assert!(ping.contains("down"), "{ping}");
    up.store(true, Ordering::SeqCst);
    wait_for(&r, Health::Up);
    assert_eq!(r.get("k").unwrap(), None);
    assert!(r.ping().unwrap().detail.contains("state up"));
}

#[test]
fn a_primary_down_at_start_up_is_probed_until_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let up = Arc::new(AtomicBool::new(false));
    let up2 = up.clone();
    let store_dir = dir.path().join("primary");
    let local = Arc::new(FileBackend::open(dir.path().join("local"), "ns:").unwrap());
    let journal = Arc::new(Journal::open(dir.path().join("local")).unwrap());
    let r = build(
        config("s", 3),
        Box::new(move || {
            if !up2.load(Ordering::SeqCst) {
                return Err(refused());
            }
            Ok(Arc::new(Switchable {
                store: FileBackend::open(&store_dir, "ns:")?,
                up: up2.clone(),
            }) as Arc<dyn Backend>)
        }),
        Fallback::Serve(local),
        &journal,
    );
    assert_eq!(r.health(), Health::Down);
    r.set("k", &item("v"), None).unwrap();
    assert_eq!(r.get("k").unwrap(), Some(item("v")));
    up.store(true, Ordering::SeqCst);
    wait_for(&r, Health::Up);
    assert_eq!(r.get("k").unwrap(), None);
}

/// A [`Spawn`] that keeps the probe's body for the test to run by hand: the probe's rules without
/// a thread or a sleep (and the shape a task-based spawner takes).
#[derive(Default)]
struct Manual(std::sync::Mutex<Vec<Body>>);

impl fmt::Debug for Manual {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Manual")
    }
}

impl Spawn for Arc<Manual> {
    fn spawn(&self, _first: Duration, _every: Duration, body: Body) -> std::io::Result<()> {
        self.0.lock().unwrap().push(body);
        Ok(())
    }
}

impl Manual {
    fn spawned(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn run(&self, i: usize) -> ControlFlow<()> {
        (self.0.lock().unwrap()[i])()
    }
}

/// A cache over a switchable primary whose background loop the test runs by hand.
fn manual_setup(failures: u32) -> (Setup, Arc<Manual>) {
    let dir = tempfile::tempdir().unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let primary = Arc::new(Switchable {
        store: FileBackend::open(dir.path().join("primary"), "ns:").unwrap(),
        up: up.clone(),
    });
    let p2 = primary.clone();
    let local = Arc::new(FileBackend::open(dir.path().join("local"), "fb:").unwrap());
    let journal = Arc::new(Journal::open(dir.path().join("local")).unwrap());
    let manual = Arc::new(Manual::default());
    let r = Resilient::new(
        config("s", failures),
        Box::new(move || Ok(p2.clone() as Arc<dyn Backend>)),
        Fallback::Serve(local.clone()),
        journal.clone(),
        Arc::new(manual.clone()),
    );
    let s = Setup {
        _dir: dir,
        r,
        up,
        primary,
        local,
        journal,
    };
    (s, manual)
}

#[test]
fn one_loop_per_cache_on_any_spawner() {
    let (
        Setup {
            r,
            up,
            journal,
            _dir: _kept,
            ..
        },
        manual,
    ) = manual_setup(1);
    assert_eq!(manual.spawned(), 1, "started with the cache");
    up.store(false, Ordering::SeqCst);
    assert_eq!(r.get("k").unwrap(), None);
    assert_eq!(r.health(), Health::Down);
    r.delete("k").unwrap();
    r.delete("j").unwrap();
    assert_eq!(manual.spawned(), 1, "one loop, however many failures");
    assert_eq!(manual.run(0), ControlFlow::Continue(()), "still down");
    assert_eq!(journal.count("s").unwrap(), 2);
    up.store(true, Ordering::SeqCst);
    assert_eq!(manual.run(0), ControlFlow::Continue(()), "the loop goes on");
    assert_eq!(r.health(), Health::Up);
    assert_eq!(journal.count("s").unwrap(), 0, "replayed");
    // A later outage is probed by the same loop.
    up.store(false, Ordering::SeqCst);
    r.delete("k").unwrap();
    assert_eq!(manual.spawned(), 1);
    drop(r);
    assert_eq!(manual.run(0), ControlFlow::Break(()), "ends with the cache");
}

#[test]
fn an_up_cache_applies_what_another_process_recorded() {
    let (
        Setup {
            r,
            journal,
            _dir: _kept,
            ..
        },
        manual,
    ) = manual_setup(2);
    r.set("k", &item("v"), None).unwrap();
    // Another process, down meanwhile, recorded a delete of k.
    journal
        .append("s", &[PendingOp::Delete("k".into())])
        .unwrap();
    assert_eq!(r.get("k").unwrap(), Some(item("v")), "not yet seen");
    let _ = manual.run(0);
    assert_eq!(r.health(), Health::Up, "never went down");
    assert_eq!(r.get("k").unwrap(), None);
    assert_eq!(journal.count("s").unwrap(), 0);
}

#[test]
fn a_watcher_that_cannot_apply_marks_the_primary_down() {
    let (
        Setup {
            r,
            up,
            journal,
            _dir: _kept,
            ..
        },
        manual,
    ) = manual_setup(3);
    r.set("k", &item("v"), None).unwrap();
    journal
        .append("s", &[PendingOp::Delete("k".into())])
        .unwrap();
    up.store(false, Ordering::SeqCst);
    let _ = manual.run(0);
    assert_eq!(r.health(), Health::Down);
    assert_eq!(journal.count("s").unwrap(), 1, "kept");
    up.store(true, Ordering::SeqCst);
    let _ = manual.run(0);
    assert_eq!(r.health(), Health::Up);
    assert_eq!(r.get("k").unwrap(), None);
}

#[test]
fn a_failed_read_while_up_never_answers_from_the_fallback() {
    let Setup {
        r,
        up,
        local,
        _dir: _kept,
        ..
    } = setup(FallbackMode::Pickle);
    // Left in the shared fallback by another process during an outage this one did not see.
    local.set("k", &item("outage"), None).unwrap();
    up.store(false, Ordering::SeqCst);
    assert_eq!(r.get("k").unwrap(), None);
    assert_eq!(r.get_many(&["k", "j"]).unwrap(), [None, None]);
    let Setup {
        r, up, _dir: _kept, ..
    } = setup(FallbackMode::Error);
    up.store(false, Ordering::SeqCst);
    assert!(r.get("k").unwrap_err().is_temporary());
}

/// A fallback whose `clear` fails while `fail` is set.
#[derive(Debug)]
struct StuckFallback {
    inner: FileBackend,
    fail: Arc<AtomicBool>,
}

impl Backend for StuckFallback {
    fn name(&self) -> &'static str {
        "pickle"
    }
    fn get(&self, key: &str) -> Result<Option<Item>> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, item: &Item, ttl: Option<Duration>) -> Result<()> {
        self.inner.set(key, item, ttl)
    }
    fn delete(&self, key: &str) -> Result<bool> {
        self.inner.delete(key)
    }
    fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(refused());
        }
        self.inner.delete_prefix(prefix)
    }
    fn clear(&self) -> Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(refused());
        }
        self.inner.clear()
    }
    fn ping(&self) -> Result<BackendStatus> {
        self.inner.ping()
    }
}

#[test]
fn recovery_stays_down_while_the_fallback_cannot_be_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let primary = Arc::new(Switchable {
        store: FileBackend::open(dir.path().join("primary"), "ns:").unwrap(),
        up: up.clone(),
    });
    let fail = Arc::new(AtomicBool::new(false));
    let fallback = Arc::new(StuckFallback {
        inner: FileBackend::open(dir.path().join("local"), "fb:").unwrap(),
        fail: fail.clone(),
    });
    let journal = Arc::new(Journal::open(dir.path().join("local")).unwrap());
    let manual = Arc::new(Manual::default());
    let r = Resilient::new(
        config("s", 1),
        Box::new(move || Ok(primary.clone() as Arc<dyn Backend>)),
        Fallback::Serve(fallback),
        journal,
        Arc::new(manual.clone()),
    );
    up.store(false, Ordering::SeqCst);
    r.set("k", &item("outage"), None).unwrap();
    assert_eq!(r.health(), Health::Down);
    fail.store(true, Ordering::SeqCst);
    up.store(true, Ordering::SeqCst);
    let _ = manual.run(0);
    assert_eq!(r.health(), Health::Down, "outage values are still there");
    fail.store(false, Ordering::SeqCst);
    let _ = manual.run(0);
    assert_eq!(r.health(), Health::Up);
    assert_eq!(r.get("k").unwrap(), None);
}

#[test]
fn an_invalidation_that_fails_on_the_primary_says_it_was_recorded() {
    let Setup {
        r,
        up,
        journal,
        _dir: _kept,
        ..
    } = setup(FallbackMode::Pickle);
    up.store(false, Ordering::SeqCst);
    let e = r.delete_prefix("p:").unwrap_err();
    assert!(e.is_temporary(), "{e}");
    assert!(e.to_string().contains("recorded"), "{e}");
    assert!(
        std::error::Error::source(&e).is_some(),
        "the cause is the source"
    );
    assert_eq!(journal.count("test|here|ns:").unwrap(), 1);
    // Already down: recorded, and the fallback's own count is the answer.
    assert_eq!(r.delete_prefix("p:").unwrap(), 0);
    r.clear().unwrap();
    assert_eq!(journal.count("test|here|ns:").unwrap(), 3);
}

#[test]
fn a_long_journal_is_applied_in_the_background_not_while_building() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileBackend::open(dir.path().join("primary"), "ns:").unwrap();
    store.set("k", &item("stale"), None).unwrap();
    let journal = Arc::new(Journal::open(dir.path().join("local")).unwrap());
    let many: Vec<PendingOp> = (0..600)
        .map(|i| PendingOp::Delete(format!("x{i}").into()))
        .chain([PendingOp::Delete("k".into())])
        .collect();
    journal.append("s", &many).unwrap();
    let primary = Arc::new(Switchable {
        store,
        up: Arc::new(AtomicBool::new(true)),
    });
    let manual = Arc::new(Manual::default());
    let r = Resilient::new(
        ResilientConfig {
            startup_wait: Duration::ZERO,
            ..config("s", 3)
        },
        Box::new(move || Ok(primary.clone() as Arc<dyn Backend>)),
        Fallback::Serve(Arc::new(NoneBackend)),
        journal.clone(),
        Arc::new(manual.clone()),
    );
    // Nothing applied while building: served from the fallback meanwhile, never stale.
    assert_ne!(r.health(), Health::Up);
    assert_eq!(journal.count("s").unwrap(), 601);
    assert_eq!(r.get("k").unwrap(), None);
    let _ = manual.run(0);
    assert_eq!(r.health(), Health::Up);
    assert_eq!(journal.count("s").unwrap(), 0);
    assert_eq!(r.get("k").unwrap(), None);
}

#[test]
fn processes_share_the_fallback_for_the_length_of_one_outage() {
    let dir = tempfile::tempdir().unwrap();
    let up = Arc::new(AtomicBool::new(false));
    let primary = Arc::new(Switchable {
        store: FileBackend::open(dir.path().join("primary"), "ns:").unwrap(),
        up: up.clone(),
    });
    // Two processes: their own handles on the same directory.
    let process = |manual: &Arc<Manual>| {
        let p = primary.clone();
        Resilient::new(
            config("s", 1),
            Box::new(move || {
                p.check()?;
                Ok(p.clone() as Arc<dyn Backend>)
            }),
            Fallback::Serve(Arc::new(
                FileBackend::open(dir.path().join("local"), "fb:").unwrap(),
            )),
            Arc::new(Journal::open(dir.path().join("local")).unwrap()),
            Arc::new(manual.clone()),
        )
    };
    let (ma, mb) = (Arc::new(Manual::default()), Arc::new(Manual::default()));
    let a = process(&ma);
    assert_eq!(a.health(), Health::Down, "the server is down at start-up");
    a.set("k", &item("x"), None).unwrap();
    drop(a);
    // A process that starts while the outage lasts reads what the first one wrote.
    let b = process(&mb);
    assert_eq!(b.get("k").unwrap(), Some(item("x")));
    // The primary comes back: B applies the journal and closes the outage.
    up.store(true, Ordering::SeqCst);
    let _ = mb.run(0);
    assert_eq!(b.health(), Health::Up);
    assert_eq!(b.get("k").unwrap(), None, "not promoted");
    // A later outage starts empty: nobody reads a closed generation.
    up.store(false, Ordering::SeqCst);
    let c = process(&Arc::new(Manual::default()));
    assert_eq!(c.health(), Health::Down);
    assert_eq!(c.get("k").unwrap(), None);
}

/// An outage of another scope left open (a server that never came back) must not hide this
/// scope's: an up process reuses "none of mine is open" only until the journal's outages stamp
/// moves, so its next write still reaches the entries of an outage another process opens;
/// also when that process cannot move the stamp (its marker is not mapped).
#[test]
fn an_outage_opened_after_an_up_process_found_none_is_forgotten_into() {
    for b_mapped in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("local");
        let store = || FileBackend::open(dir.path().join("primary"), "ns:").unwrap();
        // Each process sees the server through its own switch: A reaches it, B does not.
        let process = |up: bool, mapped: bool, manual: &Arc<Manual>| {
            let p = Arc::new(Switchable {
                store: store(),
                up: Arc::new(AtomicBool::new(up)),
            });
            let journal = Journal::open(&local).unwrap();
            let journal = if mapped {
                journal
            } else {
                journal.without_mapping()
            };
            Resilient::new(
                config("s", 1),
                Box::new(move || {
                    p.check()?;
                    Ok(p.clone() as Arc<dyn Backend>)
                }),
                Fallback::Serve(Arc::new(FileBackend::open(&local, "fb:").unwrap())),
                Arc::new(journal),
                Arc::new(manual.clone()),
            )
        };
        // Another scope's outage, open for good.
        Journal::open(&local).unwrap().join_outage("gone").unwrap();
        let a = process(true, true, &Arc::new(Manual::default()));
        assert_eq!(a.health(), Health::Up);
        a.set("k", &item("v1"), None).unwrap();
        a.set("k", &item("v1"), None).unwrap();
        // B starts during its own outage of scope s and writes into it.
        let b = process(false, b_mapped, &Arc::new(Manual::default()));
        assert_eq!(b.health(), Health::Down);
        b.set("k", &item("v-outage"), None).unwrap();
        assert_eq!(b.get("k").unwrap(), Some(item("v-outage")));
        // A, up, replaces the value on the server: B's outage forgets it.
        a.set("k", &item("v2"), None).unwrap();
        assert_eq!(
            b.get("k").unwrap(),
            None,
            "B (mapped: {b_mapped}) must not serve what the server replaced"
        );
    }
}

#[test]
fn a_process_whose_outage_was_closed_joins_the_next_one() {
    let (
        Setup {
            r,
            up,
            journal,
            _dir: _kept,
            ..
        },
        manual,
    ) = manual_setup(1);
    up.store(false, Ordering::SeqCst);
    r.set("k", &item("x"), None).unwrap();
    assert_eq!(r.get("k").unwrap(), Some(item("x")));
    // Another process saw the primary back and closed the outage.
    let open = journal.open_outages("s").unwrap();
    journal.close_outages("s", &open).unwrap();
    let _ = manual.run(0);
    assert_eq!(r.get("k").unwrap(), None, "a closed generation is not read");
}

#[test]
fn a_compare_and_delete_during_an_outage_records_nothing() {
    let Setup {
        r,
        up,
        primary,
        journal,
        _dir: _kept,
        ..
    } = setup(FallbackMode::Pickle);
    // Another host's lease on the server.
    primary.store.set("lease", &item("theirs"), None).unwrap();
    up.store(false, Ordering::SeqCst);
    assert_eq!(r.get("x").unwrap(), None);
    assert_eq!(r.get("x").unwrap(), None);
    assert_eq!(r.health(), Health::Down);
    // This host's lease of the outage, taken and released on the fallback.
    assert!(r.add("lease", &item("ours"), None).unwrap());
    assert!(r.compare_and_delete("lease", b"ours").unwrap());
    assert!(
        journal.read("test|here|ns:").unwrap().is_empty(),
        "nothing to replay"
    );
    up.store(true, Ordering::SeqCst);
    wait_for(&r, Health::Up);
    assert_eq!(r.get("lease").unwrap(), Some(item("theirs")), "left alone");
}
