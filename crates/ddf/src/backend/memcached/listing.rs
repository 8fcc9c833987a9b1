//! Listing a Memcached server's keys (`lru_crawler metadump`) and what is built on it: prefix
//! invalidation (every prefix in one walk of each server; several passes when the server only
//! has the LRU walk) and `keys`. See `docs/memcached.md` for the cost and the guarantees.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::client::McError;
use super::items::split_mapped;
use super::server::Server;
use super::{BATCH, MemcachedBackend, proto};
use crate::backend::{EntryInfo, Expiry};
use crate::error::{Error, Result};
use crate::key::{MemcachedPrefix, PrefixMatch, memcached_key, memcached_key_is_carryable};

/// Listing passes per server in a prefix delete (see `delete_prefix`).
const METADUMP_PASSES: usize = 4;

/// How long after a prefix delete starts every item held by a queued LRU bump is listable again:
/// memcached's LRU maintainer drains the bump queues at least once a second
/// (`MAX_LRU_MAINTAINER_SLEEP`), plus a margin.
const BUMP_SETTLE: Duration = Duration::from_millis(1200);

impl MemcachedBackend {
    /// [`crate::backend::Backend::delete_prefixes`]: each server's items are listed once, every
    /// key matched against all the prefixes (a replay of 100 recorded prefix invalidations walks
    /// each server once, not 100 times).
    pub(super) fn delete_listed(&self, prefixes: &[&str]) -> Result<u64> {
        for prefix in prefixes {
            crate::backend::check_prefix(
                self.keyspace.namespace(),
                prefix,
                self.server_flush,
                "every item on the memcached servers",
            )?;
        }
        if prefixes.is_empty() {
            return Ok(0);
        }
        let wanted = Prefixes::new(prefixes.iter().map(|p| self.keyspace.storage_key(p)));
        let settled = Instant::now() + BUMP_SETTLE;
        let mut total = 0;
        for server in &self.servers {
            // `metadump hash` walks the hash table with each bucket locked and sees every item
            // present when it starts: one pass is exact.
            //
            // Servers without it get the LRU walk (`metadump all`), which can miss items: one the
            // server moves between LRU queues during the walk, and, silently, every item another
            // thread holds a reference to (crawler.c: `refcount_incr(search) != 2`); a COLD item
            // read a second time is queued for an asynchronous LRU bump *holding a reference*
            // until the LRU maintainer drains the queue, up to 1 s later. So in that mode list
            // again after deleting, until a pass finds nothing (at most METADUMP_PASSES), and
            // when a pass finds nothing but the server holds more items than it listed, wait
            // until BUMP_SETTLE after the call began (once per call, not per server) and list
            // again.
            for _ in 0..METADUMP_PASSES {
                let began = Instant::now();
                let (keys, unlisted) = self.list_matching(server, &wanted, usize::MAX)?;
                let lru_walk = server.no_hash_dump.load(Ordering::Relaxed);
                if keys.is_empty() {
                    if !lru_walk || !unlisted || began >= settled {
                        break;
                    }
                    std::thread::sleep(settled.saturating_duration_since(Instant::now()));
                    continue;
                }
                let again = lru_walk;
                for chunk in keys.chunks(BATCH * 4) {
                    let refs: Vec<&[u8]> = chunk.iter().map(|(k, _)| k.as_bytes()).collect();
                    total += self.run(server, "delete", |c| c.delete_many(&refs))?;
                }
                if !again {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// [`crate::backend::Backend::keys`]: at most `limit` keys under `prefix`, sorted.
    pub(super) fn listed_keys(&self, prefix: &str, limit: usize) -> Result<Vec<EntryInfo>> {
        // The same server-side listing as prefix invalidation (`lru_crawler metadump`): the
        // server walks its items, ddf keeps at most `limit` matching keys per server, with the
        // expiry the dump gives (`exp=`, an absolute Unix time).
        let wanted = Prefixes::new([self.keyspace.storage_key(prefix)]);
        let mut out = Vec::new();
        for server in &self.servers {
            if out.len() >= limit {
                break;
            }
            let (keys, _) = self.list_matching(server, &wanted, limit - out.len())?;
            out.extend(keys.iter().map(|(wire, exp)| {
                EntryInfo::new(
                    shown_key(wire, self.keyspace.namespace()),
                    dump_expiry(*exp),
                )
            }));
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Lists this server's keys that belong to storage keys starting with one of `prefixes`
    /// (whole storage key checked for undecidable mapped keys), in one walk of the server's
    /// items whatever the number of prefixes, at most `cap` of them (the server's whole dump
    /// is still read, one line at a time: memory follows `cap`, not the keyspace), each with
    /// its `exp=` field; and whether the server holds more items than the listing showed
    /// (`curr_items` above the keys listed: the crawler skipped some).
    fn list_matching(
        &self,
        server: &Server,
        prefixes: &Prefixes,
        cap: usize,
    ) -> Result<(Vec<Listed>, bool)> {
        let deadline = Instant::now() + self.timeout * 15;
        let mut sure = Vec::new();
        let mut maybe = Vec::new();
        let mut unlisted = false;
        let busy = || Error::Backend {
            backend: "memcached",
            message: format!(
                "lru_crawler metadump on memcached server {}: the crawler stayed busy with other \
                 requests; try again",
                server.name
            ),
            temporary: true,
            source: None,
        };
        // This process's callers ask the crawler one at a time, in arrival order (see turns.rs).
        let _turn = server.crawler.wait(deadline).ok_or_else(busy)?;
        loop {
            let hash = !server.no_hash_dump.load(Ordering::Relaxed);
            let what = if hash {
                "prefix invalidation (lru_crawler metadump hash)"
            } else {
                "prefix invalidation (lru_crawler metadump all)"
            };
            let done = self.run(server, what, |c| {
                sure.clear();
                maybe.clear();
                let mut listed = 0u64;
                let r = c.metadump(hash, |k, exp| {
                    listed += 1;
                    if sure.len() + maybe.len() >= cap {
                        return;
                    }
                    // A key we could not send back (binary-protocol keys) is never ours.
                    let Ok(k) = std::str::from_utf8(k) else {
                        return;
                    };
                    if !memcached_key_is_carryable(k) {
                        return;
                    }
                    match prefixes.matches(k.as_bytes()) {
                        PrefixMatch::Yes => sure.push((k.to_owned(), exp)),
                        PrefixMatch::Maybe => maybe.push((k.to_owned(), exp)),
                        PrefixMatch::No => {}
                    }
                });
                match r {
                    // A server without the hash walk answers with an error line.
                    Err(McError::Server(m)) if hash => Ok(Err(m)),
                    Ok(true) if !hash => {
                        // The LRU walk skips busy items: did it list fewer than the server holds?
                        unlisted = c.curr_items()?.is_some_and(|n| n > listed);
                        Ok(Ok(true))
                    }
                    other => other.map(Ok),
                }
            })?;
            let done = match done {
                Ok(done) => done,
                Err(m) => {
                    tracing::info!(
                        server = %server.name,
                        reply = %m,
                        "memcached: no `lru_crawler metadump hash`; listing keys by LRU walk"
                    );
                    server.no_hash_dump.store(true, Ordering::Relaxed);
                    continue;
                }
            };
            if done {
                break;
            }
            if Instant::now() > deadline {
                return Err(busy());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for (k, exp) in maybe {
            let v = self.run(server, "get", |c| c.get(&k))?;
            let Some(v) = v else { continue };
            let full = match split_mapped(&v.data) {
                Some((key, _)) => prefixes.starts(key),
                None => prefixes.starts(k.as_bytes()),
            };
            if full {
                sure.push((k, exp));
            }
        }
        Ok((sure, unlisted))
    }
}

/// A key a metadump listed (on the wire), with its `exp=` field.
type Listed = (String, Option<i64>);

/// The storage-key prefixes one listing looks for (a prefix invalidation, or all the recorded
/// ones a replay applies at once), each also as the server may hold it (mapped keys).
struct Prefixes(Vec<(MemcachedPrefix, String)>);

impl Prefixes {
    fn new(storage_prefixes: impl IntoIterator<Item = String>) -> Self {
        Prefixes(
            storage_prefixes
                .into_iter()
                .map(|raw| (MemcachedPrefix::new(&raw), raw))
                .collect(),
        )
    }

    /// Whether the wire key belongs to one of the prefixes: `Yes` when one says so, else
    /// `Maybe` when one cannot tell from the wire key, else `No`.
    fn matches(&self, wire: &[u8]) -> PrefixMatch {
        let mut answer = PrefixMatch::No;
        for (p, _) in &self.0 {
            match p.matches(wire) {
                PrefixMatch::Yes => return PrefixMatch::Yes,
                PrefixMatch::Maybe => answer = PrefixMatch::Maybe,
                PrefixMatch::No => {}
            }
        }
        answer
    }

    /// Whether a whole storage key starts with one of the prefixes.
    fn starts(&self, storage_key: &[u8]) -> bool {
        self.0
            .iter()
            .any(|(_, raw)| storage_key.starts_with(raw.as_bytes()))
    }
}

/// The expiry a metadump's `exp=` field gives: `-1` never; else an absolute Unix time, shown as
/// what is left of it (whole seconds, as memcached keeps it).
fn dump_expiry(exp: Option<i64>) -> Expiry {
    match exp {
        Some(-1) => Expiry::Never,
        Some(at) if at >= 0 => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let at = u64::try_from(at).unwrap_or(0);
            Expiry::In(Duration::from_secs(at.saturating_sub(now)))
        }
        _ => Expiry::Unknown,
    }
}

/// The user's key of a listed wire key: a mapped key (`<visible>~<32 hex>`) is decoded, and
/// one whose visible part was cut ends with `…`; the namespace is left out.
pub(super) fn shown_key(wire: &str, namespace: &str) -> String {
    let mapped = wire
        .rsplit_once('~')
        .filter(|(_, h)| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    let storage = match mapped {
        None => wire.to_owned(),
        Some((visible, _)) => {
            let mut buf = Vec::new();
            proto::url_decode(visible.as_bytes(), &mut buf);
            let key = String::from_utf8_lossy(&buf).into_owned();
            if memcached_key(&key) == wire {
                key
            } else {
                format!("{key}…")
            }
        }
    };
    storage
        .strip_prefix(namespace)
        .unwrap_or(&storage)
        .to_owned()
}
