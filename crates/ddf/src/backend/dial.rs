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
//!   stopped, so at most [`PER_NAME`] lookups of one host name may be outstanding at once, and
//!   [`LOOKUPS`] of all names; past either, a connection that needs a lookup fails at once (a
//!   temporary error, as a timeout) rather than start another. That bounds what a resolver
//!   that never answers costs a process (a few idle threads), where each new connection
//!   attempt would otherwise add one; and a name the resolver does not answer for (a server
//!   whose record is gone, a zone whose servers are down) holds only its own slots: the other
//!   names, of this backend and of every other one, are still looked up. Written by hand: std
//!   has no bounded lookup, and the crates that have one replace the system's resolver with
//!   their own DNS client (no `/etc/hosts` order, `nsswitch.conf` or search domains as the
//!   system applies them), which would change which names resolve.
//! - **A unix socket**: on Linux, `connect` to a listener whose backlog is full blocks until the
//!   listener accepts (a stopped server never does). The kernel bounds that wait by the
//!   socket's send timeout (`SO_SNDTIMEO`, read by `unix_stream_connect`), and then fails with
//!   `EAGAIN`: the socket is made with that timeout set to what is left of the deadline, so the
//!   connect is one blocking system call that the kernel ends in time (no poll loop: a
//!   non-blocking unix connect that finds the backlog full fails with `EAGAIN` without queueing,
//!   and would have to be retried on a timer). Other systems refuse such a connect at once
//!   (`ECONNREFUSED`).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Lookups of one host name that may be outstanding at once (see the module docs).
const PER_NAME: usize = 2;

/// Lookups of any names that may be outstanding at once in a process: the ceiling on the
/// threads that resolvers which do not answer can hold.
const LOOKUPS: usize = 16;

/// The system's lookup (`getaddrinfo`).
type Lookup = fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>;

fn system_lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    (host, port).to_socket_addrs().map(Iterator::collect)
}

/// The lookups running now, per name and in all.
static OUTSTANDING: Outstanding = Outstanding::new(PER_NAME, LOOKUPS);

/// Counts the lookups running, per host name (lower-cased: names are case-insensitive) and
/// in all, within the two caps.
struct Outstanding {
    per_name: usize,
    total: usize,
    /// `(name, lookups running)`, a name with none removed: at most `total` entries.
    running: Mutex<Vec<(String, usize)>>,
}

impl Outstanding {
    const fn new(per_name: usize, total: usize) -> Self {
        Outstanding {
            per_name,
            total,
            running: Mutex::new(Vec::new()),
        }
    }

    /// A slot for a lookup of `host`, held until the lookup ends; the reason when either cap
    /// is reached.
    fn take(&'static self, host: &str) -> Result<Slot, String> {
        let name = host.to_ascii_lowercase();
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let all: usize = running.iter().map(|(_, n)| n).sum();
        let mine = running.iter().position(|(n, _)| *n == name);
        let of_name = mine.map_or(0, |i| running[i].1);
        if of_name >= self.per_name {
            return Err(format!(
                "cannot look up {host}: {of_name} earlier lookups of this name have not ended \
                 (the resolver does not answer for it)"
            ));
        }
        if all >= self.total {
            return Err(format!(
                "cannot look up {host}: {all} earlier lookups have not ended (the resolver does \
                 not answer)"
            ));
        }
        match mine {
            Some(i) => running[i].1 += 1,
            None => running.push((name.clone(), 1)),
        }
        Ok(Slot { of: self, name })
    }

    /// Lookups running now, in all.
    #[cfg(test)]
    fn running(&self) -> usize {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.iter().map(|(_, n)| n).sum()
    }
}

/// One running lookup's place in [`Outstanding`], given back when dropped (the lookup ended, or
/// never started).
struct Slot {
    of: &'static Outstanding,
    name: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = self
            .of
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = running.iter().position(|(n, _)| *n == self.name) {
            running[i].1 = running[i].1.saturating_sub(1);
            if running[i].1 == 0 {
                running.swap_remove(i);
            }
        }
    }
}

fn timed_out(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

/// The addresses of `host:port`, looked up before `deadline` (see the module docs).
///
/// # Errors
/// The lookup's own error; a timeout when it did not end in time or when [`PER_NAME`] lookups
/// of this name, or [`LOOKUPS`] in all, are already outstanding.
pub(crate) fn resolve(
    host: &str,
    port: u16,
    deadline: Instant,
) -> std::io::Result<Vec<SocketAddr>> {
    resolve_with(&OUTSTANDING, system_lookup, host, port, deadline)
}

/// [`resolve`] within the caps of `outstanding`, with `lookup` (a test's, or the system's).
fn resolve_with(
    outstanding: &'static Outstanding,
    lookup: Lookup,
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
    let slot = outstanding.take(host).map_err(timed_out)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_owned();
    let spawned = std::thread::Builder::new()
        .name("ddf-resolve".to_owned())
        .spawn(move || {
            let found = lookup(&name, port);
            drop(slot);
            let _ = tx.send(found);
        });
    if spawned.is_err() {
        // No thread to be had (the slot went with the closure): looked up here, unbounded as
        // std's lookup is.
        return lookup(host, port);
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
    use std::sync::atomic::{AtomicBool, Ordering};
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

    /// Set when the test's resolver answers for the `stuck*` names.
    static OPEN: AtomicBool = AtomicBool::new(false);

    /// The test lookup: `stuck*` names answer only once [`OPEN`] is set (or after 10 s, so
    /// that no thread outlives the test run for long); every other name is 127.0.0.1.
    fn fake(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let until = Instant::now() + Duration::from_secs(10);
        while host.starts_with("stuck") && !OPEN.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
    }

    /// Lookups of a name the resolver does not answer for fill only that name's slots: another
    /// name is still looked up, until the ceiling over all names; the slots come back when the
    /// stuck lookups end.
    #[test]
    fn a_stuck_name_holds_only_its_own_lookups() {
        static CAPS: Outstanding = Outstanding::new(2, 3);
        let soon = || Instant::now() + Duration::from_millis(20);
        let later = || Instant::now() + Duration::from_secs(5);
        let ok = |r: std::io::Result<Vec<SocketAddr>>| r.map_err(|e| e.to_string());
        for _ in 0..2 {
            let e = resolve_with(&CAPS, fake, "stuck.example", 7, soon()).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
            assert!(e.to_string().contains("took longer"), "{e}");
        }
        // The third lookup of that name is refused at once (the name's cap, whatever the case).
        let e = resolve_with(&CAPS, fake, "STUCK.example", 7, later()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("lookups of this name"), "{e}");
        // Another name is looked up.
        assert_eq!(
            ok(resolve_with(&CAPS, fake, "other.example", 7, later())),
            Ok(vec![SocketAddr::from(([127, 0, 0, 1], 7))])
        );
        // A second stuck name takes the last slot of all: then no name is looked up.
        assert!(resolve_with(&CAPS, fake, "stuck2.example", 7, soon()).is_err());
        let e = resolve_with(&CAPS, fake, "other.example", 7, later()).unwrap_err();
        assert!(
            e.to_string().contains("3 earlier lookups have not ended"),
            "{e}"
        );
        // The resolver answers: every slot comes back.
        OPEN.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while CAPS.running() > 0 {
            assert!(
                Instant::now() < deadline,
                "the stuck lookups never gave their slots back"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(resolve_with(&CAPS, fake, "stuck.example", 7, later()).is_ok());
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
