//! `backend = none`: stores nothing. Every get misses; writes succeed and are dropped.

use std::time::Duration;

use super::{Backend, BackendStatus, Item};
use crate::error::Result;

/// The backend that stores nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoneBackend;

impl Backend for NoneBackend {
    fn name(&self) -> &'static str {
        "none"
    }
    fn get(&self, _key: &str) -> Result<Option<Item>> {
        Ok(None)
    }
    fn set(&self, _key: &str, _item: &Item, _ttl: Option<Duration>) -> Result<()> {
        Ok(())
    }
    fn delete(&self, _key: &str) -> Result<bool> {
        Ok(false)
    }
    /// Stored, as `set` is, and forgotten at once (as Django's dummy cache answers): a lease
    /// taken on `none` is always granted, so every caller computes, as without a cache.
    fn add(&self, _key: &str, _item: &Item, _ttl: Option<Duration>) -> Result<bool> {
        Ok(true)
    }
    /// Counted from 0 and forgotten at once: `delta` (within the range rule).
    fn incr(&self, _key: &str, delta: i64, _counter: &dyn super::Counter) -> Result<i64> {
        super::counter_step(0, delta)
    }
    /// Nothing is there to touch.
    fn touch(&self, _key: &str, _ttl: Option<Duration>) -> Result<bool> {
        Ok(false)
    }
    fn meta(&self, _key: &str) -> Result<Option<super::EntryInfo>> {
        Ok(None)
    }
    fn delete_prefix(&self, _prefix: &str) -> Result<u64> {
        Ok(0)
    }
    fn clear(&self) -> Result<()> {
        Ok(())
    }
    fn keys(&self, _prefix: &str, _limit: usize) -> Result<Vec<super::EntryInfo>> {
        Ok(Vec::new())
    }
    fn ping(&self) -> Result<BackendStatus> {
        Ok(BackendStatus {
            detail: "no cache (backend = none)".to_owned(),
        })
    }
    fn compare_and_delete(&self, _key: &str, _expected: &[u8]) -> Result<bool> {
        Ok(false)
    }
}
