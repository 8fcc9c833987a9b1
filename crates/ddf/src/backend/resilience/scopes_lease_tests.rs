//! The store fenced by a `get_or_set` lease on several Memcached servers, one of them killed:
//! a leader whose lease was taken over during the outage does not overwrite the newer value
//! (both faces: the scenario is here once, the async face's run in `aio/scopes.rs`).

use std::time::Duration;

use ddf_testkit::{MemcachedServer, free_port};

use crate::backend::memcached::MemcachedBackend;
use crate::backend::{Backend, Item};
use crate::config::{CacheBackend, CacheConfig, FallbackMode, ServerAddr};
use crate::error::Result;
use crate::key::LEASE_PREFIX;

/// Two real memcached servers, the second killed, and keys that the killed one holds.
pub(crate) struct OneOfTwoKilled {
    /// The servers (the second killed); kept so that the first lives as long as the test.
    _servers: Vec<MemcachedServer>,
    /// The fallback's and the journal's directory.
    _dir: tempfile::TempDir,
    /// Both servers, a pickle fallback.
    pub(crate) config: CacheConfig,
    /// Keys placed on the killed server.
    pub(crate) keys: Vec<String>,
    /// The live server (`127.0.0.1:port`).
    live: String,
}

impl OneOfTwoKilled {
    /// Started, configured and the second server killed; `None` when memcached is missing
    /// (the test kit fails instead under `DDF_TEST_REQUIRE_SERVERS=1`).
    pub(crate) fn start() -> Option<Self> {
        let ports = [free_port(), free_port()];
        let mut servers = ports
            .iter()
            .map(|&p| MemcachedServer::start_on(p, &[]))
            .collect::<Option<Vec<_>>>()?;
        let dir = tempfile::tempdir().unwrap();
        let mut config = CacheConfig::default()
            .with_namespace("lease:")
            .with_pickle_dir(dir.path())
            .with_timeouts(Duration::from_millis(300), Duration::from_millis(500))
            .with_backend(CacheBackend::Memcached)
            .with_memcached_servers(
                ports
                    .iter()
                    .map(|p| ServerAddr::parse(&format!("127.0.0.1:{p}"), 1).unwrap())
                    .collect(),
            );
        config.fallback = FallbackMode::Pickle;
        let placement = MemcachedBackend::from_config(&config).unwrap();
        let (live, victim) = (servers[0].server(), servers[1].server());
        let keys: Vec<String> = (0..64)
            .map(|i| format!("computed{i}"))
            .filter(|k| placement.server_for(k) == victim)
            .take(4)
            .collect();
        assert!(!keys.is_empty(), "no key of 64 on {victim}");
        servers[1].process.kill();
        Some(OneOfTwoKilled {
            _servers: servers,
            _dir: dir,
            config,
            keys,
            live,
        })
    }
}

/// What the scenario calls, on either face.
pub(crate) trait LeaseOps {
    fn take_lease(&self, lease: &str, value: &str) -> Result<bool>;
    fn release_lease(&self, lease: &str, expected: &str) -> Result<bool>;
    fn set_if_lease(&self, key: &str, value: &str, lease: &str, token: &str) -> Result<bool>;
    fn get(&self, key: &str) -> Result<Option<Item>>;
}

/// The lease's and the values' TTL (long: nothing expires during the test).
pub(crate) const TTL: Option<Duration> = Some(Duration::from_secs(60));

pub(crate) fn item(s: &str) -> Item {
    Item::new(s.as_bytes().to_vec(), 0)
}

/// The sync face's backend.
struct Blocking<'a>(&'a dyn Backend);

impl LeaseOps for Blocking<'_> {
    fn take_lease(&self, lease: &str, value: &str) -> Result<bool> {
        self.0.take_lease(lease, &item(value), TTL)
    }
    fn release_lease(&self, lease: &str, expected: &str) -> Result<bool> {
        self.0.release_lease(lease, expected.as_bytes())
    }
    fn set_if_lease(&self, key: &str, value: &str, lease: &str, token: &str) -> Result<bool> {
        self.0
            .set_if_lease(key, &item(value), TTL, lease, token.as_bytes())
    }
    fn get(&self, key: &str) -> Result<Option<Item>> {
        self.0.get(key)
    }
}

/// For each key of the killed server: leader A holds the lease, its lease ends (released here:
/// as it would by expiring) and B takes it over and stores; A's late store must be refused and
/// B's value stay.
pub(crate) fn a_lease_taken_over_fences_the_late_store(ops: &dyn LeaseOps, keys: &[String]) {
    for key in keys {
        let lease = format!("{LEASE_PREFIX}{key}");
        assert!(
            ops.take_lease(&lease, "token-a").unwrap(),
            "A takes the lease"
        );
        assert!(ops.set_if_lease(key, "first", &lease, "token-a").unwrap());
        assert!(ops.release_lease(&lease, "token-a").unwrap());
        assert!(
            ops.take_lease(&lease, "token-b").unwrap(),
            "B takes the lease over"
        );
        assert!(
            ops.set_if_lease(key, "from-b", &lease, "token-b").unwrap(),
            "B holds the lease: its store lands"
        );
        let late = ops.set_if_lease(key, "from-a", &lease, "token-a").unwrap();
        let now = ops.get(key).unwrap().map(|i| i.data);
        assert!(
            !late && now.as_deref() == Some(&b"from-b"[..]),
            "{key}: the leader whose lease was taken over stored ({late}) and the key holds {:?}",
            now.map(|v| String::from_utf8_lossy(&v).into_owned())
        );
    }
}

/// The sync face's router.
#[test]
fn a_lease_taken_over_during_one_servers_outage_fences_the_late_store() {
    let Some(rig) = OneOfTwoKilled::start() else {
        return;
    };
    let backend = crate::backend::from_config(&rig.config).unwrap();
    a_lease_taken_over_fences_the_late_store(&Blocking(backend.as_ref()), &rig.keys);
}

/// A user key beginning with the lease prefix is placed by itself, as pymemcache (and a ddf
/// before leases followed their keys) places it: set through ddf's router, it is on the server
/// a one-server client of that key's server reads; set and deleted there, ddf sees it.
#[test]
fn a_user_key_under_the_lease_prefix_is_placed_as_pymemcache_places_it() {
    let Some(rig) = OneOfTwoKilled::start() else {
        return;
    };
    let placement = MemcachedBackend::from_config(&rig.config).unwrap();
    // Its own server is the live one; the key after the prefix is on the killed one.
    let key = (0..256)
        .map(|i| (format!("{LEASE_PREFIX}user{i}"), format!("user{i}")))
        .find(|(k, g)| placement.server_for(k) == rig.live && placement.server_for(g) != rig.live)
        .map(|(k, _)| k)
        .expect("no key of 256 placed apart from the key after the prefix");
    let router = crate::backend::from_config(&rig.config).unwrap();
    let one = MemcachedBackend::from_config(
        &rig.config
            .clone()
            .with_memcached_servers(vec![ServerAddr::parse(&rig.live, 1).unwrap()]),
    )
    .unwrap();
    let data = |b: &dyn Backend| b.get(&key).unwrap().map(|i| i.data);
    router.set(&key, &item("v1"), TTL).unwrap();
    assert_eq!(
        data(&one).as_deref(),
        Some(&b"v1"[..]),
        "ddf's write not on {}",
        rig.live
    );
    one.set(&key, &item("v2"), TTL).unwrap();
    assert_eq!(data(router.as_ref()).as_deref(), Some(&b"v2"[..]));
    assert!(one.delete(&key).unwrap());
    assert_eq!(
        data(router.as_ref()),
        None,
        "ddf reads a value deleted on its server"
    );
}
