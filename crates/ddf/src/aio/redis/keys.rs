//! The async Redis backend's commands over several keys: `UNLINK` of many keys and `SCAN` +
//! `UNLINK` of a pattern (the requests are `backend/redis/commands.rs`'s).

use redis::RedisResult;

use super::Conn;
use crate::backend::redis::commands;

/// `UNLINK` of many keys; the number removed.
pub(super) async fn unlink(c: &mut Conn, keys: &[String]) -> RedisResult<u64> {
    c.query(&commands::unlink(keys)).await
}

/// SCAN + UNLINK of `pattern`; the number removed.
pub(super) async fn scan_unlink(c: &mut Conn, pattern: &str) -> RedisResult<u64> {
    let mut cursor = 0u64;
    let mut removed = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = c.query(&commands::scan(cursor, pattern)).await?;
        if !keys.is_empty() {
            removed += unlink(c, &keys).await?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}
