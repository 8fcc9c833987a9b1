//! Reaching a server within `connect_timeout`: the two steps of a connection std does not
//! bound, the host name's lookup and the connect of a unix socket. Used by every connection
//! ddf opens itself: Redis (`redis/conn.rs`: TCP, TLS, unix, Sentinel, Cluster nodes), the near
//! cache's tracking connection (`near/socket.rs`, `near/tracking.rs`) and the Memcached sync
//! client (`memcached/client.rs`).
//!
//! - **The lookup**: `getaddrinfo` (what `ToSocketAddrs` calls) has no timeout and cannot be
//!   interrupted; a resolver that does not answer holds it for the resolver's own timeouts
//!   (`resolv.conf`: 5 s per attempt, twice, per server). An address given as an IP is used
//!   as is (no lookup, no thread). A name is looked up on a thread of its own, which the caller
//!   waits for until the deadline and then leaves to end on its own: the thread cannot be
//!   stopped, so at most [`LOOKUPS`] may be outstanding at once; past that, a connection that
//!   needs a lookup fails at once (a temporary error, as a timeout) rather than start another.
//!   That bounds what a resolver that never answers costs a process (a few idle threads), where
//!   each new connection attempt would otherwise add one.
//! - **A unix socket**: on Linux, `connect` to a listener whose backlog is full blocks until the
//!   listener accepts (a stopped server never does). The kernel bounds that wait by the
//!   socket's send timeout (`SO_SNDTIMEO`, read by `unix_stream_connect`), and then fails with
//!   `EAGAIN`: the socket is made with that timeout set to what is left of the deadline, so the
//!   connect is one blocking system call that the kernel ends in time (no poll loop: a
//!   non-blocking unix connect that finds the backlog full fails with `EAGAIN` without queueing,
//!   and would have to be retried on a timer). Other systems refuse such a connect at once
//!   (`ECONNREFUSED`).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Name lookups that may be outstanding at once in a process (see the module docs).
const LOOKUPS: usize = 4;

/// Lookups running now.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

fn timed_out(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

/// The addresses of `host:port`, looked up before `deadline` (see the module docs).
///
/// # Errors
/// The lookup's own error; a timeout when it did not end in time or when [`LOOKUPS`] lookups
/// are already outstanding.
pub(crate) fn resolve(
    host: &str,
    port: u16,
    deadline: Instant,
) -> std::io::Result<Vec<SocketAddr>> {
    // `[::1]` as redis-rs keeps a bracketed IPv6 host.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out(format!(
            "no time left in connect_timeout to look up {host}"
        )));
    }
    if RUNNING.fetch_add(1, Ordering::AcqRel) >= LOOKUPS {
        RUNNING.fetch_sub(1, Ordering::AcqRel);
        return Err(timed_out(format!(
            "cannot look up {host}: {LOOKUPS} earlier lookups have not ended (the resolver does \
             not answer)"
        )));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_owned();
    let spawned = std::thread::Builder::new()
        .name("ddf-resolve".to_owned())
        .spawn(move || {
            let found = (name.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect::<Vec<_>>);
            RUNNING.fetch_sub(1, Ordering::AcqRel);
            let _ = tx.send(found);
        });
    if spawned.is_err() {
        RUNNING.fetch_sub(1, Ordering::AcqRel);
        // No thread to be had: looked up here, unbounded as std's lookup is.
        return (host, port).to_socket_addrs().map(Iterator::collect);
    }
    rx.recv_timeout(left).unwrap_or_else(|_| {
        Err(timed_out(format!(
            "looking up {host} took longer than connect_timeout"
        )))
    })
}

/// Connects to the unix socket at `path` before `deadline` (see the module docs).
///
/// # Errors
/// The connect's error; a timeout when the listener's backlog stayed full until the deadline.
#[cfg(all(unix, feature = "redis"))]
pub(crate) fn unix(
    path: &std::path::Path,
    deadline: Instant,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, sockopt};
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out(format!(
            "no time left in connect_timeout to connect to {}",
            path.display()
        )));
    }
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(left))?;
    let addr = SocketAddrUnix::new(path)?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INPROGRESS => {
            return Err(timed_out(format!(
                "connecting to {}: the server accepted no connection within connect_timeout \
                 (its listen backlog is full)",
                path.display()
            )));
        }
        Err(e) => return Err(e.into()),
    }
    // The requests set their own write timeouts; none is left from the connect.
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, None)?;
    Ok(std::os::unix::net::UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_ip_needs_no_lookup_and_a_name_is_looked_up() {
        let soon = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            resolve("127.0.0.1", 7, soon).unwrap(),
            ["127.0.0.1:7".parse().unwrap()]
        );
        assert_eq!(
            resolve("[::1]", 7, soon).unwrap(),
            ["[::1]:7".parse().unwrap()]
        );
        let past = Instant::now();
        let e = resolve("localhost", 7, past).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(!resolve("localhost", 7, soon).unwrap().is_empty());
    }

    /// A listener with a backlog of 0 and one connection waiting: the next connect is given
    /// up at the deadline (Linux blocks there; other systems refuse at once).
    #[cfg(all(unix, feature = "redis"))]
    #[test]
    fn a_full_backlog_costs_the_connect_timeout_at_most() {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.sock");
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::bind(&listener, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        rustix::net::listen(&listener, 0).unwrap();
        let soon = || Instant::now() + Duration::from_millis(200);
        // Fill the backlog (never accepted); stop at the first connect that does not pass.
        let mut queued = Vec::new();
        let refused = loop {
            match unix(&path, soon()) {
                Ok(s) => queued.push(s),
                Err(e) => break e,
            }
            assert!(queued.len() < 64, "the backlog never filled");
        };
        let t = Instant::now();
        let again = unix(&path, Instant::now() + Duration::from_millis(300));
        let took = t.elapsed();
        assert!(again.is_err());
        if cfg!(target_os = "linux") {
            assert_eq!(refused.kind(), std::io::ErrorKind::TimedOut, "{refused}");
        }
        // Generous: "does not hang" (it blocked until the listener accepted).
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}
