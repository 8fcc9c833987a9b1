//! The Redis commands ddf sends and the parsing of what it reads back, pure: no connection,
//! no I/O. The sync backend (`backend/redis.rs`, over redis-rs's blocking connections) and the
//! async one (`aio/redis.rs`, over redis-rs's multiplexed and cluster connections) both build
//! their requests here, so that the two faces send the same bytes.

use std::time::Duration;

use crate::key::{Keyspace, glob_escape};

/// What a `delete_prefix("")` with an empty namespace would remove, for its refusal.
pub(crate) const WHOLE: &str = "every key of the Redis database";
/// What `clear` with an empty namespace and `server_flush` removes.
pub(crate) const WHOLE_FLUSH: &str = "every key of the Redis database (FLUSHDB)";

/// Keys asked for per `SCAN` step (a hint to the server).
pub(crate) const SCAN_COUNT: usize = 1000;

/// `GET key`.
pub(crate) fn get(key: &str) -> redis::Cmd {
    let mut c = redis::cmd("GET");
    c.arg(key);
    c
}

/// `GET key; PTTL key`, pipelined: a value and how long it has left, in one round trip (a near
/// cache fill). Not in `MULTI` (which cost 24% over a plain `GET`, against 7% for this): a
/// change of the key between the two commands is a write the server's tracking pushes, so the
/// fill is refused or evicted (docs/near-cache.md, "The near miss"). Read the reply as
/// `(Option<Vec<u8>>, i64)`; see [`expiry`].
pub(crate) fn get_expiring(key: &str) -> redis::Pipeline {
    let mut p = redis::pipe();
    p.cmd("GET").arg(key).cmd("PTTL").arg(key);
    p
}

/// The expiry a `PTTL` reply says (ms; -1 no expiry; -2 absent, read as expired).
pub(crate) fn expiry(pttl: i64) -> crate::backend::Expiry {
    match pttl {
        -1 => crate::backend::Expiry::Never,
        ms => crate::backend::Expiry::In(std::time::Duration::from_millis(
            u64::try_from(ms).unwrap_or(0),
        )),
    }
}

/// `SET key data [PX ms]`.
pub(crate) fn set(key: &str, data: &[u8], ttl: Option<Duration>) -> redis::Cmd {
    let mut c = redis::cmd("SET");
    c.arg(key).arg(data);
    px(&mut c, ttl);
    c
}

/// `PX ms` for a TTL: whole milliseconds; a sub-millisecond TTL still expires.
fn px(c: &mut redis::Cmd, ttl: Option<Duration>) {
    if let Some(t) = ttl {
        c.arg("PX").arg(millis(t));
    }
}

/// A TTL in whole milliseconds, at least 1.
pub(super) fn millis(t: Duration) -> u64 {
    u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `SET key data NX [PX ms]` (`add`): the reply is `OK` when stored, nil when the key exists
/// (read it as `Option<String>`).
pub(crate) fn add(key: &str, data: &[u8], ttl: Option<Duration>) -> redis::Cmd {
    let mut c = redis::cmd("SET");
    c.arg(key).arg(data).arg("NX");
    px(&mut c, ttl);
    c
}

/// `incr`: `INCRBY` under the one range rule ([`counter_step`](crate::backend::counter_step)),
/// atomic in one script. Replies `{1, value}` when applied; `{0, value}` when the step would
/// leave the range (undone: the old text is put back with its TTL, or the key removed if it
/// was absent); `{2, value}` when Redis refused it as an overflow. `value` is the stored
/// decimal text (exact at any size, where a Lua number is not), nil for an absent key.
///
/// The undo puts the old text back rather than stepping back: `DECRBY` by the step itself
/// overflows for `i64::MIN`, and a script that fails part-way keeps what it wrote.
const INCR_SCRIPT: &str = r"
local old = redis.call('GET', KEYS[1])
local v = redis.pcall('INCRBY', KEYS[1], ARGV[1])
if type(v) == 'table' and v.err then
  if string.find(v.err, 'overflow') then return {2, old} end
  return v
end
if v < 0 then
  if old then redis.call('SET', KEYS[1], old, 'KEEPTTL') else redis.call('DEL', KEYS[1]) end
  return {0, old}
end
return {1, redis.call('GET', KEYS[1])}
";

/// `EVAL` of the `incr` script on `key` with `delta` (read the reply with [`incr_reply`]).
pub(crate) fn incr(key: &str, delta: i64) -> redis::Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(INCR_SCRIPT).arg(1).arg(key).arg(delta);
    c
}

/// The new value from the `incr` script's reply, or the range rule's error.
///
/// # Errors
/// The range rule's error (`code` 0 or 2); a protocol error for a reply no script sends.
pub(crate) fn incr_reply(
    code: i64,
    value: Option<String>,
    delta: i64,
) -> crate::error::Result<i64> {
    let parsed = value.as_deref().map(str::parse::<i64>);
    match (code, parsed) {
        (1, Some(Ok(n))) => Ok(n),
        (0 | 2, Some(Ok(current))) => crate::backend::counter_step(current, delta),
        (0 | 2, None) => crate::backend::counter_step(0, delta),
        _ => Err(crate::error::Error::Backend {
            backend: "redis",
            message: format!("unexpected reply to the incr script: {code} {value:?}"),
            temporary: false,
            source: None,
        }),
    }
}

/// `touch`: `PEXPIRE key ms`, or for no expiry a script that `PERSIST`s a present key;
/// both reply 1 when the key is there.
pub(crate) fn touch(key: &str, ttl: Option<Duration>) -> redis::Cmd {
    match ttl {
        Some(t) => {
            let mut c = redis::cmd("PEXPIRE");
            c.arg(key).arg(millis(t));
            c
        }
        None => {
            let mut c = redis::cmd("EVAL");
            c.arg("if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PERSIST', KEYS[1]) return 1 end return 0")
                .arg(1)
                .arg(key);
            c
        }
    }
}

/// `MULTI; PTTL key; STRLEN key; EXEC`: a key's TTL (ms; -1 no expiry, -2 absent) and size
/// in one atomic round trip (a delete between two separate commands would give a TTL with
/// size 0). Read the reply as `(i64, u64)`.
#[cfg(feature = "async")]
pub(crate) fn ttl_and_size(key: &str) -> redis::Pipeline {
    let mut p = redis::pipe();
    p.atomic().cmd("PTTL").arg(key).cmd("STRLEN").arg(key);
    p
}

/// `UNLINK key...`.
pub(crate) fn unlink<K: redis::ToRedisArgs>(keys: &[K]) -> redis::Cmd {
    let mut c = redis::cmd("UNLINK");
    c.arg(keys);
    c
}

/// `MGET key...`.
pub(crate) fn mget<K: redis::ToRedisArgs>(keys: &[K]) -> redis::Cmd {
    let mut c = redis::cmd("MGET");
    c.arg(keys);
    c
}

/// The `SCAN MATCH` pattern of every key of `keyspace` that starts with `prefix` (literal).
pub(crate) fn prefix_pattern(keyspace: &Keyspace, prefix: &str) -> String {
    format!("{}*", glob_escape(&keyspace.storage_key(prefix)))
}

/// `SCAN cursor MATCH pattern COUNT 1000`.
pub(crate) fn scan(cursor: u64, pattern: &str) -> redis::Cmd {
    let mut c = redis::cmd("SCAN");
    c.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_COUNT);
    c
}

/// `FLUSHDB`.
pub(crate) fn flushdb() -> redis::Cmd {
    redis::cmd("FLUSHDB")
}

/// `PING`.
pub(crate) fn ping() -> redis::Cmd {
    redis::cmd("PING")
}

/// `INFO`.
pub(crate) fn info() -> redis::Cmd {
    redis::cmd("INFO")
}

/// `CLUSTER INFO`.
pub(crate) fn cluster_info() -> redis::Cmd {
    let mut c = redis::cmd("CLUSTER");
    c.arg("INFO");
    c
}

/// `CLUSTER NODES`.
pub(crate) fn cluster_nodes() -> redis::Cmd {
    let mut c = redis::cmd("CLUSTER");
    c.arg("NODES");
    c
}

/// The compare-and-delete script: removes `KEYS[1]` only while it holds `ARGV[1]`; returns 1
/// when it removed it, 0 otherwise. One script runs atomically on the server.
pub(crate) const COMPARE_AND_DELETE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('DEL', KEYS[1]) else return 0 end";

/// `EVAL <compare-and-delete> 1 key expected` (one key: a cluster routes it by that key).
pub(crate) fn compare_and_delete(key: &str, expected: &[u8]) -> redis::Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(COMPARE_AND_DELETE).arg(1).arg(key).arg(expected);
    c
}

/// The fenced store of `get_or_set`: sets `KEYS[1]` to `ARGV[1]` (with `PX ARGV[3]` unless
/// it is empty) only while `KEYS[2]` (the lease) holds `ARGV[2]`; returns 1 when it stored.
pub(crate) const SET_IF_LEASE: &str = "if redis.call('GET', KEYS[2]) == ARGV[2] then \
     if ARGV[3] == '' then redis.call('SET', KEYS[1], ARGV[1]) \
     else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) end \
     return 1 else return 0 end";

/// `EVAL <set-if-lease> 2 key lease data token ms` (standalone and Sentinel only: on a
/// cluster the two keys may be in two slots).
pub(crate) fn set_if_lease(
    key: &str,
    data: &[u8],
    ttl: Option<Duration>,
    lease: &str,
    token: &[u8],
) -> redis::Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(SET_IF_LEASE)
        .arg(2)
        .arg(key)
        .arg(lease)
        .arg(data)
        .arg(token);
    match ttl {
        Some(t) => c.arg(millis(t)),
        None => c.arg(""),
    };
    c
}

/// The lease heartbeat: `PEXPIRE KEYS[1] ARGV[2]` only while it holds `ARGV[1]`; returns 1
/// when it extended it.
pub(crate) const EXTEND_LEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

/// `EVAL <extend-lease> 1 lease token ms` (one key: a cluster routes it by that key).
pub(crate) fn extend_lease(lease: &str, token: &[u8], ttl: Duration) -> redis::Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(EXTEND_LEASE)
        .arg(1)
        .arg(lease)
        .arg(token)
        .arg(millis(ttl));
    c
}

/// A cluster pipeline of `name key` for every key: one round trip per node.
pub(crate) fn per_key_pipeline<K: redis::ToRedisArgs>(
    name: &str,
    keys: &[K],
) -> redis::cluster::ClusterPipeline {
    let mut p = redis::cluster::cluster_pipe();
    for k in keys {
        p.cmd(name).arg(k);
    }
    p
}

/// Primaries' `host:port` in `CLUSTER NODES` output: lines `id ip:port@cport[,hostname] flags
/// ...`; keeps `master` nodes not flagged `fail` or `noaddr`.
pub(crate) fn parse_cluster_nodes(text: &str) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(_id), Some(addr), Some(flags)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master") || flags.iter().any(|x| *x == "fail" || *x == "noaddr") {
            continue;
        }
        let hostport = addr.split(['@', ',']).next().unwrap_or("");
        if let Some((h, p)) = hostport.rsplit_once(':')
            && let Ok(p) = p.parse::<u16>()
            && !h.is_empty()
            && p != 0
        {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            out.push((h.to_owned(), p));
        }
    }
    out
}

/// The rows of `ddf-cache stats` from `INFO` (and `CLUSTER INFO` on a cluster).
pub(crate) fn info_rows(
    place: &str,
    sentinel_master: Option<String>,
    info: &str,
    cluster: Option<&str>,
) -> Vec<(String, String)> {
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    };
    let mut out = vec![("server".to_owned(), place.to_owned())];
    if let Some(master) = sentinel_master {
        out.push(("sentinel_master".to_owned(), master));
    }
    for name in [
        "redis_version",
        "used_memory_human",
        "connected_clients",
        "evicted_keys",
        "maxmemory_policy",
    ] {
        if let Some(v) = field(info, name) {
            out.push((name.to_owned(), v));
        }
    }
    for line in info.lines().filter(|l| l.starts_with("db")) {
        if let Some((db, v)) = line.split_once(':') {
            out.push((db.to_owned(), v.trim().to_owned()));
        }
    }
    if let Some(ci) = cluster {
        for name in ["cluster_state", "cluster_known_nodes", "cluster_size"] {
            if let Some(v) = field(ci, name) {
                out.push((name.to_owned(), v));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_parsing_keeps_live_primaries() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,host-b master - 0 1 2 connected 5461-10922
c3 127.0.0.1:7002@17002 slave a1 0 1 3 connected
d4 127.0.0.1:7003@17003 master,fail - 0 1 4 disconnected
e5 :0@0 master,noaddr - 0 1 5 disconnected
";
        assert_eq!(
            parse_cluster_nodes(text),
            vec![
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001)
            ]
        );
    }

    fn args(c: &redis::Cmd) -> Vec<Vec<u8>> {
        c.args_iter()
            .filter_map(|a| match a {
                redis::Arg::Simple(b) => Some(b.to_vec()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn add_is_set_nx_px() {
        let c = add("k", b"v", Some(Duration::from_millis(1500)));
        assert_eq!(args(&c), [&b"SET"[..], b"k", b"v", b"NX", b"PX", b"1500"]);
        assert_eq!(
            args(&add("k", b"v", None)),
            [&b"SET"[..], b"k", b"v", b"NX"]
        );
    }

    #[test]
    fn set_uses_px() {
        let c = set("k", b"v", Some(Duration::from_micros(10)));
        let args: Vec<&[u8]> = c
            .args_iter()
            .filter_map(|a| match a {
                redis::Arg::Simple(b) => Some(b),
                _ => None,
            })
            .collect();
        assert_eq!(args, [&b"SET"[..], b"k", b"v", b"PX", b"1"]);
    }
}
