//! The per-server router, driven by two primaries whose availability a test switches; the
//! same rules against three real memcached servers are in `tests/it/per_server.rs`.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::*;
use crate::backend::file::FileBackend;
use crate::backend::resilience::journal::{Journal, PendingOp};
use crate::backend::resilience::probe::ThreadSpawn;
use crate::backend::resilience::{Fallback, ResilientConfig};

/// A server whose availability the test switches, storing in a directory.
#[derive(Debug)]
struct Switchable {
    store: FileBackend,
    up: Arc<AtomicBool>,
    /// Set when a call fails (a test's way to make something happen during that call).
    on_failure: Option<Arc<AtomicBool>>,
}

impl Switchable {
    fn check(&self) -> Result<()> {
        if self.up.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(f) = &self.on_failure {
            f.store(true, Ordering::SeqCst);
        }
        Err(Error::io(
            "test",
            "connect",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ))
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

/// Keys starting with `b` live on the second server, the others on the first.
#[derive(Debug)]
struct ByLetter;

impl Partition for ByLetter {
    fn scope_of(&self, key: &str) -> usize {
        usize::from(key.starts_with('b'))
    }
}

fn item(s: &str) -> Item {
    Item::new(s.as_bytes().to_vec(), 0)
}

fn value(r: Result<Option<Item>>) -> Option<String> {
    r.unwrap().map(|i| String::from_utf8(i.data).unwrap())
}

struct Rig {
    cache: PerScope,
    up: [Arc<AtomicBool>; 2],
    /// What each server holds, read around the breaker.
    servers: [FileBackend; 2],
    journal: Arc<Journal>,
    _dir: tempfile::TempDir,
}

fn rig() -> Rig {
    rig_with(Arc::new(ByLetter), None)
}

/// A rig over `partition`; the first server sets `on_failure` when one of its calls fails.
fn rig_with(partition: Arc<dyn Partition>, on_failure: Option<Arc<AtomicBool>>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(dir.path()).unwrap());
    let up = [
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(true)),
    ];
    let mut scopes = Vec::new();
    for (i, label) in ["a:1", "b:2"].into_iter().enumerate() {
        let server_dir = dir.path().join(label.replace(':', "_"));
        let (d, flag) = (server_dir.clone(), up[i].clone());
        let hook = on_failure.clone().filter(|_| i == 0);
        let factory: super::super::Factory = Box::new(move || {
            Ok(Arc::new(Switchable {
                store: FileBackend::open(d.clone(), "")?,
                up: flag.clone(),
                on_failure: hook.clone(),
            }) as Arc<dyn Backend>)
        });
        let cause = Arc::new(Cause::default());
        let cfg = ResilientConfig {
            name: "test",
            scope: format!("test://{label}|"),
            failures: 1,
            retry: Duration::from_millis(20),
            startup_wait: Duration::from_secs(2),
            refuse_whole_keyspace: false,
        };
        let fallback = Fallback::Serve(Arc::new(
            FileBackend::open(dir.path().join("local"), &format!("fallback[{label}]:")).unwrap(),
        ));
        let r = Resilient::new(
            cfg,
            watched(factory, cause.clone()),
            fallback,
            journal.clone(),
            Arc::new(ThreadSpawn),
        );
        scopes.push(Scope::new(label.to_owned(), r, cause));
    }
    let servers = ["a_1", "b_2"].map(|d| FileBackend::open(dir.path().join(d), "").unwrap());
    Rig {
        cache: PerScope::new("test", partition, scopes).unwrap(),
        up,
        servers,
        journal,
        _dir: dir,
    }
}

fn row(cache: &PerScope, name: &str) -> String {
    let rows = cache.info().unwrap();
    rows.into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

fn wait_up(cache: &PerScope) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while row(cache, "state") != "up" {
        assert!(Instant::now() < deadline, "{:?}", cache.info());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn one_server_down_sends_only_its_keys_to_the_fallback() {
    let r = rig();
    let c = &r.cache;
    c.set("a1", &item("old"), None).unwrap();
    c.set("b1", &item("old"), None).unwrap();
    c.set("b2", &item("old"), None).unwrap();
    r.up[1].store(false, Ordering::SeqCst);
    // The write fails on b's server: b is down at once, a stays up.
    c.set("b1", &item("outage"), None).unwrap();
    c.set("a1", &item("new"), None).unwrap();
    assert_eq!(value(r.servers[0].get("a1")), Some("new".into()));
    assert_eq!(
        value(c.get("b1")),
        Some("outage".into()),
        "from the fallback"
    );
    assert_eq!(value(r.servers[1].get("b1")), Some("old".into()));
    assert!(
        row(c, "server.b:2.state").starts_with("down (connect"),
        "{:?}",
        c.info()
    );
    assert_eq!(row(c, "server.a:1.state"), "up");
    assert!(
        row(c, "state").starts_with("partly down: 1 of 2"),
        "{:?}",
        c.info()
    );
    assert!(c.ping().unwrap_err().to_string().contains("down because"));

    // A prefix invalidation spans both: applied on a, recorded for b.
    c.set("a2", &item("x"), None).unwrap();
    assert_eq!(
        c.delete_prefix("").unwrap(),
        3,
        "a1, a2 on a; b1 in the fallback"
    );
    assert_eq!(value(r.servers[0].get("a1")), None);
    assert_eq!(r.journal.count("test://a:1|").unwrap(), 0);
    assert!(r.journal.count("test://b:2|").unwrap() > 0);
    assert_eq!(value(c.get("b2")), None, "b's fallback was invalidated too");
    // Batches are split by server.
    c.set_many(&[("a3", item("3")), ("b3", item("3"))], None)
        .unwrap();
    let got = c.get_many(&["b3", "a3", "b2"]).unwrap();
    assert_eq!(got.iter().filter(|v| v.is_some()).count(), 2);
    assert_eq!(value(r.servers[0].get("a3")), Some("3".into()));

    // b returns: what was recorded is applied before it serves again.
    r.up[1].store(true, Ordering::SeqCst);
    wait_up(c);
    assert_eq!(value(r.servers[1].get("b1")), None);
    assert_eq!(value(r.servers[1].get("b2")), None);
    assert_eq!(value(c.get("b3")), None, "the outage write is not promoted");
    assert_eq!(row(c, "recorded invalidations pending"), "0");
    assert!(c.ping().unwrap().detail.contains("b:2: "));
}

#[test]
fn entries_of_the_whole_list_move_to_the_servers_they_concern() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    let scopes = ["m://a|".to_owned(), "m://b|".to_owned()];
    adopt_legacy(&j, "m://a,b|", &ByLetter, &scopes).unwrap();
    j.append(
        "m://a,b|",
        &[
            PendingOp::Delete("a1".into()),
            PendingOp::Delete("b1".into()),
            PendingOp::DeletePrefix("x".into()),
            PendingOp::Clear,
        ],
    )
    .unwrap();
    adopt_legacy(&j, "m://a,b|", &ByLetter, &scopes).unwrap();
    assert_eq!(j.count("m://a,b|").unwrap(), 0);
    let ops = |s: &str| {
        j.read(s)
            .unwrap()
            .into_iter()
            .map(|(_, o)| o)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ops("m://a|"),
        [
            PendingOp::Delete("a1".into()),
            PendingOp::DeletePrefix("x".into()),
            PendingOp::Clear
        ]
    );
    assert_eq!(
        ops("m://b|"),
        [
            PendingOp::Delete("b1".into()),
            PendingOp::DeletePrefix("x".into()),
            PendingOp::Clear
        ]
    );
}

/// `ByLetter`, except that key `m` moves from the first scope to the second once `moved` is set
/// (a Redis Cluster's resharding of its slot).
#[derive(Debug)]
struct Moving {
    moved: Arc<AtomicBool>,
}

impl Partition for Moving {
    fn scope_of(&self, key: &str) -> usize {
        match key {
            "m" => usize::from(self.moved.load(Ordering::SeqCst)),
            _ => ByLetter.scope_of(key),
        }
    }
}

/// A key's slot moves to another scope at the very instant a delete of it fails on its old
/// scope's server and is recorded there (after the move's check that the old scope had nothing
/// recorded): the scope that now holds the key gets the record too and is marked down, so the
/// value the delete did not remove from the server (one node holds the key, whatever the
/// scope) is never read; that scope replays the delete, then serves again.
#[test]
fn a_key_moved_while_its_write_was_recorded_is_not_read_stale() {
    let moved = Arc::new(AtomicBool::new(false));
    let r = rig_with(
        Arc::new(Moving {
            moved: moved.clone(),
        }),
        Some(moved.clone()),
    );
    let c = &r.cache;
    c.set("m", &item("old"), None).unwrap();
    // In a cluster the key's node is the same for both scopes: its new owner holds it too.
    r.servers[1].set("m", &item("old"), None).unwrap();
    r.up[0].store(false, Ordering::SeqCst);
    c.delete("m").unwrap();
    assert!(
        moved.load(Ordering::SeqCst),
        "the slot moved during the delete"
    );
    assert_eq!(value(c.get("m")), None, "the deleted value was read");
    assert!(
        r.journal.count("test://b:2|").unwrap() > 0,
        "recorded for b too"
    );
    // b replays the delete on its server, then serves again; a stays down.
    let deadline = Instant::now() + Duration::from_secs(20);
    while row(c, "server.b:2.state") != "up" {
        assert!(Instant::now() < deadline, "{:?}", c.info());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(value(r.servers[1].get("m")), None);
    assert_eq!(value(c.get("m")), None);
}

/// The reason `follow_moves` gives is one sentence with single spaces (it was written across
/// two source lines without a `\`, which kept the indentation inside the message).
#[test]
fn the_moved_here_reason_reads_as_one_sentence() {
    let text = super::moves::moved_here("redis", 2, "a:1").to_string();
    assert!(!text.contains("  "), "{text:?}");
    assert!(
        text.contains(
            "2 key(s) moved here from a:1 while a write to them was recorded there; replaying \
             before serving them"
        ),
        "{text:?}"
    );
}

/// A partition whose keys move (a Redis Cluster's resharding).
#[derive(Debug)]
struct Resharded;

impl Partition for Resharded {
    fn scope_of(&self, key: &str) -> usize {
        usize::from(key.starts_with('b'))
    }
    fn keys_move(&self) -> bool {
        true
    }
}

/// A prefix delete or clear recorded in one scope is copied into the others (once) where keys
/// move between scopes, never a keyed delete, and nothing where keys do not move.
#[test]
fn prefix_records_are_shared_where_keys_move() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    let scopes = ["c://a|".to_owned(), "c://b|".to_owned()];
    j.append(
        "c://a|",
        &[
            PendingOp::Delete("a1".into()),
            PendingOp::DeletePrefix("p".into()),
            PendingOp::Clear,
        ],
    )
    .unwrap();
    share_prefixes(&j, &ByLetter, &scopes).unwrap();
    assert_eq!(j.count("c://b|").unwrap(), 0);
    for _ in 0..2 {
        share_prefixes(&j, &Resharded, &scopes).unwrap();
        let b: Vec<_> = j
            .read("c://b|")
            .unwrap()
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        assert_eq!(b, [PendingOp::DeletePrefix("p".into()), PendingOp::Clear]);
        assert_eq!(j.count("c://a|").unwrap(), 3);
    }
}

/// [`ByLetter`], with leases placed by the key they guard.
#[derive(Debug)]
struct LeasesFollow;

impl Partition for LeasesFollow {
    fn scope_of(&self, key: &str) -> usize {
        ByLetter.scope_of(key)
    }
    fn leases_follow_keys(&self) -> bool {
        true
    }
}

/// A lease goes to its key's scope where the partition says so, in a lease operation only
/// (the fenced store is then made in that scope); elsewhere it is placed as any key, and a
/// store whose lease is in another scope is not fenced. Any other operation places a key by
/// itself, whatever its text: a user key beginning with the lease prefix too, as pymemcache
/// places it.
#[test]
fn a_lease_follows_its_key_where_the_partition_says_so() {
    let follow = Routing::new(Arc::new(LeasesFollow), 2);
    let own = Routing::new(Arc::new(ByLetter), 2);
    let lease = format!("{LEASE_PREFIX}b1");
    assert_eq!(follow.lease_index(&lease), 1);
    assert_eq!(own.lease_index(&lease), 0);
    assert_eq!(
        follow.index(&lease),
        0,
        "a user key is placed by its own text"
    );
    assert_eq!(follow.index_within_call(&lease), 0);
    assert_eq!(follow.fenced("b1", &lease), (1, true));
    assert_eq!(own.fenced("b1", &lease), (1, false));
    assert_eq!(own.fenced("a1", &format!("{LEASE_PREFIX}a1")), (0, true));
    let parts = follow.parts(&[lease.as_str(), "b2"], |k| k);
    assert_eq!(
        parts
            .iter()
            .map(|p| (p.scope, p.at.clone()))
            .collect::<Vec<_>>(),
        [(0, vec![0]), (1, vec![1])]
    );
}

/// [`Moving`] on a partition that says its keys move (a Redis Cluster).
#[derive(Debug)]
struct MovingCluster(Moving);

impl Partition for MovingCluster {
    fn scope_of(&self, key: &str) -> usize {
        self.0.scope_of(key)
    }
    fn keys_move(&self) -> bool {
        true
    }
}

/// Two processes on either side of a resharding: one still places key `m` in its old scope,
/// down for it, and serves `m` from that scope's outage entries; the other, which places `m`
/// in its new scope (up), writes `m` there. The old scope's open outage must forget `m`:
/// before, the first process went on reading the value it wrote during its outage, older than
/// the second's write, until its outage ended. Here one router plays both (the scope it reads
/// through directly is the first process's view).
#[test]
fn a_write_in_a_keys_new_scope_is_not_hidden_by_its_old_scopes_outage() {
    let moved = Arc::new(AtomicBool::new(false));
    let r = rig_with(
        Arc::new(MovingCluster(Moving {
            moved: moved.clone(),
        })),
        None,
    );
    let c = &r.cache;
    r.up[0].store(false, Ordering::SeqCst);
    c.set("m", &item("outage"), None).unwrap();
    let old_scope = &c.scopes[0].resilient;
    assert_eq!(value(old_scope.get("m")), Some("outage".into()));
    moved.store(true, Ordering::SeqCst);
    c.set("m", &item("new"), None).unwrap();
    assert_eq!(value(r.servers[1].get("m")), Some("new".into()));
    assert_eq!(
        value(old_scope.get("m")),
        None,
        "the old scope's outage served a value older than the write"
    );
    assert_eq!(value(c.get("m")), Some("new".into()));
}
