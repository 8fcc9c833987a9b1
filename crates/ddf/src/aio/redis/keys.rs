//! The async Redis backend's commands over several keys or the whole keyspace: `UNLINK` of
//! many keys, `SCAN` + `UNLINK` of a pattern, and a Cluster's primaries (the requests are
//! `backend/redis/commands.rs`'s).

use redis::FromRedisValue;
use redis::RedisResult;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::Conn;
use crate::backend::redis::commands;

/// `host:port` of every primary of the cluster.
pub(super) async fn primaries(cc: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let v = cc
        .route_command(
            commands::cluster_nodes(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    let text: String = redis::from_redis_value(v)?;
    Ok(commands::parse_cluster_nodes(&text))
}

pub(super) fn on_node(host: &str, port: u16) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
        host: host.to_owned(),
        port,
    })
}

/// `name key` for every key, sent at once on the cluster connection (it pipelines them per
/// node), the replies in order.
pub(super) async fn per_key<T: FromRedisValue>(
    cc: &ClusterConnection,
    name: &str,
    keys: &[String],
) -> RedisResult<Vec<T>> {
    let calls = keys.iter().map(|k| {
        let mut cc = cc.clone();
        let mut cmd = redis::cmd(name);
        cmd.arg(k);
        async move { cmd.query_async::<T>(&mut cc).await }
    });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .collect()
}

/// `UNLINK` of many keys; the number removed.
pub(super) async fn unlink(c: &mut Conn, keys: &[String]) -> RedisResult<u64> {
    match c {
        Conn::Single(_) => c.query(&commands::unlink(keys)).await,
        Conn::Cluster(cc) => Ok(per_key::<u64>(cc, "UNLINK", keys).await?.iter().sum()),
    }
}

/// SCAN + UNLINK of `pattern` on the connection or one node of the cluster.
pub(super) async fn scan_unlink(
    c: &mut Conn,
    pattern: &str,
    node: Option<&(String, u16)>,
) -> RedisResult<u64> {
    let mut cursor = 0u64;
    let mut removed = 0u64;
    loop {
        let scan = commands::scan(cursor, pattern);
        let (next, keys): (u64, Vec<String>) = match (&mut *c, node) {
            (Conn::Cluster(cc), Some((host, port))) => {
                redis::from_redis_value(cc.route_command(scan, on_node(host, *port)).await?)?
            }
            (c, _) => c.query(&scan).await?,
        };
        if !keys.is_empty() {
            removed += unlink(c, &keys).await?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}
