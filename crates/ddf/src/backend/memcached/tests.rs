//! The Memcached backend's unit tests (pure: no server).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::items::{MAPPED_MAGIC, RELATIVE_TTL_MAX, exptime, split_mapped};
use super::listing::shown_key;
use crate::key::memcached_key;

#[test]
fn listed_keys_show_the_users_key() {
    for key in ["plain", "with space", "ünï", "50%"] {
        let sk = format!("ns:{key}");
        assert_eq!(shown_key(&memcached_key(&sk), "ns:"), key);
    }
    let long = format!("ns:{}", "x".repeat(300));
    let shown = shown_key(&memcached_key(&long), "ns:");
    assert!(shown.ends_with('…') && shown.starts_with("xxx"), "{shown}");
}

#[test]
fn ttl_rounding_and_absolute_times() {
    assert_eq!(exptime(None), 0);
    assert_eq!(exptime(Some(Duration::from_millis(1))), 1);
    assert_eq!(exptime(Some(Duration::from_millis(1500))), 2);
    assert_eq!(
        exptime(Some(Duration::from_secs(RELATIVE_TTL_MAX))),
        RELATIVE_TTL_MAX
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t = exptime(Some(Duration::from_secs(RELATIVE_TTL_MAX + 1)));
    assert!(
        t > now + RELATIVE_TTL_MAX && t < now + RELATIVE_TTL_MAX + 100,
        "{t}"
    );
}

#[test]
fn mapped_header_round_trip() {
    let mut d = MAPPED_MAGIC.to_vec();
    d.extend_from_slice(&3u32.to_le_bytes());
    d.extend_from_slice(b"a bvalue");
    assert_eq!(split_mapped(&d), Some((&b"a b"[..], &b"value"[..])));
    assert_eq!(split_mapped(b"plain"), None);
    assert_eq!(split_mapped(&d[..10]), None);
}
