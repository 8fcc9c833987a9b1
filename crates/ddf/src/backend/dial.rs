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
//!   waits for until its deadline and then leaves to end on its own (the thread cannot be
//!   stopped). At most one lookup of a host name runs at once: a caller that finds the name
//!   being looked up waits for that lookup (until its own deadline) and takes its answer, so
//!   that the connections of a fan-out (several Memcached servers or Cluster nodes on one
//!   name, a fresh pool) cost one lookup and never refuse one another. The answer lives as
//!   long as the lookup's callers (no DNS cache: the next lookup asks the resolver again). At
//!   most [`LOOKUPS`] names are looked up at once; past that, a connection whose name is not
//!   being looked up fails at once (a temporary error, as a timeout) rather than start
//!   another thread. That bounds what resolvers that never answer cost a process (a few idle
//!   threads), where each new connection attempt would otherwise add one; and a name the
//!   resolver does not answer for (a server whose record is gone, a zone whose servers are
//!   down) holds one thread: the other names, of this backend and of every other one, are
//!   still looked up. Written by hand: std has no bounded lookup, and the crates that have one
//!   replace the system's resolver with their own DNS client (no `/etc/hosts` order,
//!   `nsswitch.conf` or search domains as the system applies them), which would change which
//!   names resolve.
//! - **A unix socket**: on Linux, `connect` to a listener whose backlog is full blocks until the
//!   listener accepts (a stopped server never does). The kernel bounds that wait by the
//!   socket's send timeout (`SO_SNDTIMEO`, read by `unix_stream_connect`), and then fails with
//!   `EAGAIN`: the socket is made with that timeout set to what is left of the deadline, so the
//!   connect is one blocking system call that the kernel ends in time (no poll loop: a
//!   non-blocking unix connect that finds the backlog full fails with `EAGAIN` without queueing,
//!   and would have to be retried on a timer). Other systems refuse such a connect at once
//!   (`ECONNREFUSED`).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

/// Host names that may be looked up at once in a process: the ceiling on the threads that
/// resolvers which do not answer can hold.
const LOOKUPS: usize = 16;

/// The system's lookup (`getaddrinfo`).
type Lookup = fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>;

fn system_lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    (host, port).to_socket_addrs().map(Iterator::collect)
}

/// The lookups running now.
static OUTSTANDING: Outstanding = Outstanding::new(LOOKUPS);

/// A lookup's answer, as every caller of its name takes it (an `io::Error` is not `Clone`).
type Answer = Result<Vec<SocketAddr>, (std::io::ErrorKind, String)>;

/// One running lookup of a name, which every caller of that name waits for.
#[derive(Default)]
struct Flight {
    answer: Mutex<Option<Answer>>,
    landed: Condvar,
}

impl Flight {
    /// The answer, once the lookup gives it before `deadline`; `None` past the deadline.
    fn wait(&self, deadline: Instant) -> Option<Answer> {
        let mut answer = self.answer.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(a) = answer.as_ref() {
                return Some(a.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            answer = self
                .landed
                .wait_timeout(answer, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The lookups running, one per host name (lower-cased: names are case-insensitive), within
/// the ceiling.
struct Outstanding {
    total: usize,
    /// `(name, its lookup)`, removed when the lookup ends: at most `total` entries.
    running: Mutex<Vec<(String, Arc<Flight>)>>,
}

impl Outstanding {
    const fn new(total: usize) -> Self {
        Outstanding {
            total,
            running: Mutex::new(Vec::new()),
        }
    }

    /// The running lookup of `host` to wait for, and whether this caller must start it (it
    /// was not running); the reason when it is not running and the ceiling is reached.
    fn join(&self, host: &str) -> Result<(Arc<Flight>, Option<String>), String> {
        let name = host.to_ascii_lowercase();
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, f)) = running.iter().find(|(n, _)| *n == name) {
            return Ok((f.clone(), None));
        }
        if running.len() >= self.total {
            return Err(format!(
                "cannot look up {host}: the lookups of {} other names have not ended (the \
                 resolver does not answer)",
                running.len()
            ));
        }
        let flight = Arc::new(Flight::default());
        running.push((name.clone(), flight.clone()));
        Ok((flight, Some(name)))
    }

    /// The lookup of `name` gave `found`: it no longer runs, and its callers take the answer.
    fn land(&self, name: &str, flight: &Arc<Flight>, found: std::io::Result<Vec<SocketAddr>>) {
        {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            running.retain(|(n, f)| !(n == name && Arc::ptr_eq(f, flight)));
        }
        let answer = found.map_err(|e| (e.kind(), e.to_string()));
        *flight.answer.lock().unwrap_or_else(PoisonError::into_inner) = Some(answer);
        flight.landed.notify_all();
    }

    /// Names being looked up now.
    #[cfg(test)]
    fn running(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// How many hold the running lookup of `name` (0 when none runs): the table, the lookup's
    /// thread, and each caller waiting.
    #[cfg(test)]
    fn holders(&self, name: &str) -> usize {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, f)| Arc::strong_count(f))
    }
}

fn timed_out(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

/// The addresses of `host:port`, looked up before `deadline` (see the module docs).
///
/// # Errors
/// The lookup's own error; a timeout when it did not end in time, or when the name is not
/// being looked up and [`LOOKUPS`] other names are.
pub(crate) fn resolve(
    host: &str,
    port: u16,
    deadline: Instant,
) -> std::io::Result<Vec<SocketAddr>> {
    resolve_with(&OUTSTANDING, system_lookup, host, port, deadline)
}

/// [`resolve`] within the ceiling of `outstanding`, with `lookup` (a test's, or the system's).
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
    if deadline <= Instant::now() {
        return Err(timed_out(format!(
            "no time left in connect_timeout to look up {host}"
        )));
    }
    let (flight, start) = outstanding.join(host).map_err(timed_out)?;
    if let Some(name) = start {
        let (of, host_owned) = (flight.clone(), host.to_owned());
        let spawned = std::thread::Builder::new()
            .name("ddf-resolve".to_owned())
            .spawn(move || outstanding.land(&name, &of, lookup(&host_owned, port)));
        if spawned.is_err() {
            // No thread to be had: looked up here, unbounded as std's lookup is (the callers
            // that joined meanwhile take its answer too).
            let name = host.to_ascii_lowercase();
            outstanding.land(&name, &flight, lookup(host, port));
        }
    }
    match flight.wait(deadline) {
        // The lookup was made with the port of the caller that started it: the addresses
        // are this caller's with its own port.
        Some(Ok(mut addrs)) => {
            addrs.iter_mut().for_each(|a| a.set_port(port));
            Ok(addrs)
        }
        Some(Err((kind, message))) => Err(std::io::Error::new(kind, message)),
        None => Err(timed_out(format!(
            "looking up {host} took longer than connect_timeout"
        ))),
    }
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
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    /// Set when the test's resolver answers for the `slow*` names...
    static SLOW_OPEN: AtomicBool = AtomicBool::new(false);
    /// ... and how many times it was asked for one.
    static SLOW_ASKED: AtomicUsize = AtomicUsize::new(0);

    /// The test lookup: `stuck*` names answer only once [`OPEN`] is set, `slow*` names once
    /// [`SLOW_OPEN`] is (or after 10 s, so that no thread outlives the test run for long);
    /// every other name is 127.0.0.1.
    fn fake(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let until = Instant::now() + Duration::from_secs(10);
        let gate = if host.starts_with("stuck") {
            Some(&OPEN)
        } else if host.starts_with("slow") {
            SLOW_ASKED.fetch_add(1, Ordering::SeqCst);
            Some(&SLOW_OPEN)
        } else {
            None
        };
        while gate.is_some_and(|g| !g.load(Ordering::SeqCst)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
    }

    /// Waits (generously) until `done`.
    fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Four callers of one slow name (a fan-out to four servers on one host) make one lookup
    /// and all take its answer, each with its own port.
    #[test]
    fn callers_of_one_name_share_its_lookup() {
        static CAPS: Outstanding = Outstanding::new(2);
        let later = || Instant::now() + Duration::from_secs(20);
        let callers: Vec<_> = (0..4u16)
            .map(|i| {
                std::thread::spawn(move || {
                    resolve_with(&CAPS, fake, "slow.example", 7000 + i, later())
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        // The table, the lookup's thread and the four callers hold the lookup.
        until("the four callers never joined one lookup", || {
            CAPS.holders("slow.example") == 6
        });
        SLOW_OPEN.store(true, Ordering::SeqCst);
        for (i, c) in (0..4u16).zip(callers) {
            assert_eq!(
                c.join().unwrap(),
                Ok(vec![SocketAddr::from(([127, 0, 0, 1], 7000 + i))])
            );
        }
        assert_eq!(
            SLOW_ASKED.load(Ordering::SeqCst),
            1,
            "one lookup for four callers"
        );
    }

    /// A name the resolver does not answer for: each caller gives up at its own deadline
    /// (none is refused for the others waiting), another name is still looked up, until the
    /// ceiling over all names; the lookups end and leave nothing behind.
    #[test]
    fn a_stuck_name_holds_only_its_own_lookup() {
        static CAPS: Outstanding = Outstanding::new(2);
        let soon = || Instant::now() + Duration::from_millis(20);
        let later = || Instant::now() + Duration::from_secs(5);
        let ok = |r: std::io::Result<Vec<SocketAddr>>| r.map_err(|e| e.to_string());
        for host in ["stuck.example", "STUCK.example", "stuck.example"] {
            let e = resolve_with(&CAPS, fake, host, 7, soon()).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
            assert!(e.to_string().contains("took longer"), "{e}");
        }
        assert_eq!(CAPS.running(), 1, "one lookup of the stuck name");
        // Another name is looked up.
        assert_eq!(
            ok(resolve_with(&CAPS, fake, "other.example", 7, later())),
            Ok(vec![SocketAddr::from(([127, 0, 0, 1], 7))])
        );
        // A second stuck name reaches the ceiling: then no other name is looked up.
        assert!(resolve_with(&CAPS, fake, "stuck2.example", 7, soon()).is_err());
        let e = resolve_with(&CAPS, fake, "other.example", 7, later()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("2 other names"), "{e}");
        // The resolver answers: the lookups end.
        OPEN.store(true, Ordering::SeqCst);
        until("the stuck lookups never ended", || CAPS.running() == 0);
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
