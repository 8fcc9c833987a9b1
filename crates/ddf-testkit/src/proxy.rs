//! A TCP proxy in front of a real server that can start drip-feeding the server's bytes to the
//! client: for tests that a client bounds a whole request, whatever the protocol on top (TLS
//! included: the proxy forwards bytes and understands nothing).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A proxy on a free loopback port that forwards every connection to `127.0.0.1:target`. While
/// [`DripProxy::drip`] is set, the server's bytes reach the client one at a time, with the
/// interval before each (the client's bytes always pass at once). Dropping it closes every
/// connection and stops its threads.
///
/// ```no_run
/// use std::time::Duration;
/// use ddf_testkit::{DripProxy, RedisServer};
/// let server = RedisServer::start().unwrap();
/// let proxy = DripProxy::start(server.port());
/// // ... connect to proxy.port(), then:
/// proxy.drip(Some(Duration::from_millis(150)));
/// ```
#[derive(Debug)]
pub struct DripProxy {
    port: u16,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// The interval before each byte from the server, in microseconds; 0: no drip.
    drip_us: AtomicU64,
    accepted: AtomicUsize,
    /// Every socket, to shut down on drop (a thread blocked in a read then returns).
    sockets: Mutex<Vec<TcpStream>>,
}

impl DripProxy {
    /// Starts forwarding to `127.0.0.1:target`, without drip.
    pub fn start(target: u16) -> DripProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            let mut threads = Vec::new();
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        s.accepted.fetch_add(1, Ordering::Relaxed);
                        let Ok(server) =
                            TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], target)))
                        else {
                            continue;
                        };
                        let _ = client.set_nonblocking(false);
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        {
                            let mut sockets = s.sockets.lock().unwrap();
                            sockets.push(client.try_clone().unwrap());
                            sockets.push(server.try_clone().unwrap());
                        }
                        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        let up = s.clone();
                        threads.push(std::thread::spawn(move || pump(c2, s2, &up, false)));
                        let down = s.clone();
                        threads.push(std::thread::spawn(move || {
                            pump(server, client, &down, true)
                        }));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
            for t in threads {
                let _ = t.join();
            }
        });
        DripProxy {
            port,
            shared,
            thread: Some(thread),
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// From now on, the server's bytes reach the client one at a time with `every` before each
    /// (`None`: at once again). Applies to the connections already open too.
    pub fn drip(&self, every: Option<Duration>) {
        let us = every.map_or(0, |d| {
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
        });
        self.shared.drip_us.store(us, Ordering::Relaxed);
    }

    /// How many connections it accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

/// Copies `from` to `to` until either end closes; from the server (`down`), a byte at a time
/// while drip is set.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, down: bool) {
    let mut buf = [0u8; 16384];
    while !shared.stop.load(Ordering::Relaxed) {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let drip = shared.drip_us.load(Ordering::Relaxed);
        let sent = if down && drip > 0 {
            buf[..n].iter().try_for_each(|b| {
                std::thread::sleep(Duration::from_micros(drip));
                if shared.stop.load(Ordering::Relaxed) {
                    return Err(std::io::ErrorKind::Interrupted.into());
                }
                to.write_all(std::slice::from_ref(b))
            })
        } else {
            to.write_all(&buf[..n])
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

impl Drop for DripProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for s in self.shared.sockets.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
