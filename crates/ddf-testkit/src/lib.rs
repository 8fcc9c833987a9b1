//! Test support for ddf: real `redis-server` and `memcached` processes on free loopback ports.
//!
//! Modeled on redis-rs's `redis-test`: each fixture picks a free port on 127.0.0.1, spawns the
//! server with its log in a temporary directory, polls until it accepts connections (with a
//! deadline), and on `Drop` kills it and waits for it. One server per test; statics are never
//! dropped, so never keep a fixture in one.
//!
//! Skip policy: when a server binary is missing, [`RedisServer::start`] and
//! [`MemcachedServer::start`] return `None` after printing a loud message — unless
//! `DDF_TEST_REQUIRE_SERVERS=1` is set (the README's test command and CI set it), in which case
//! they panic. A server that is present but fails to start always panics, with its log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod model;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod proxy;
pub use proxy::DripProxy;

mod sentinel;
pub use sentinel::{DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS, RedisSentinel, SENTINEL_MASTER};

/// The environment variable that turns a missing server binary from a skip into a failure.
pub const REQUIRE_SERVERS: &str = "DDF_TEST_REQUIRE_SERVERS";

/// Whether tests must fail rather than skip when a server binary is missing.
pub fn servers_required() -> bool {
    std::env::var(REQUIRE_SERVERS).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A free TCP port on 127.0.0.1 (bound, then released; the caller binds it next), never one
/// handed out before in this process (tests that draw several ports before they start their
/// servers do not get the same one twice).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Finds an executable on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Reports a missing binary: `None` (skip, loudly) or a panic under [`REQUIRE_SERVERS`].
fn missing(binary: &str, test_hint: &str) -> Option<std::convert::Infallible> {
    let msg = format!(
        "{binary} is not installed: {test_hint} cannot run. Install it (apt-get install -y \
         redis-server redis-tools redis-sentinel memcached) or run the README's test command \
         (scripts/test)."
    );
    if servers_required() {
        panic!("{msg} ({REQUIRE_SERVERS} is set, so this is a failure, not a skip)");
    }
    eprintln!("\n!!! SKIPPED: {msg}\n");
    None
}

fn is_root() -> bool {
    // `id -u` avoids libc and unsafe code.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A spawned server process with its temporary directory and log.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    dir: tempfile::TempDir,
    log: PathBuf,
    name: &'static str,
}

impl ServerProcess {
    /// Spawns `cmd` (which logs to `log`) and waits until `ready(port, pid)` answers, at most
    /// 10 s; panics, with the log, if it exits at start-up.
    fn spawn(
        name: &'static str,
        cmd: Command,
        port: u16,
        dir: tempfile::TempDir,
        log: PathBuf,
        ready: impl Fn(u16, u32) -> bool,
    ) -> Self {
        Self::try_spawn(name, cmd, port, dir, log, ready).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ServerProcess::spawn`], with an exit at start-up (the port was taken by another
    /// process meanwhile) as an error, for a caller that can retry on another port. A port that
    /// answers is ready only while the child still runs (and, where `ready` can tell, it is the
    /// child that answered: memcached's `stats` names its pid).
    fn try_spawn(
        name: &'static str,
        mut cmd: Command,
        port: u16,
        dir: tempfile::TempDir,
        log: PathBuf,
        ready: impl Fn(u16, u32) -> bool,
    ) -> Result<Self, String> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                std::fs::File::create(dir.path().join("stdout.log")).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("stderr.log")).unwrap(),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {name}: {e}"));
        let mut server = ServerProcess {
            child,
            port,
            dir,
            log,
            name,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = server.child.id();
        loop {
            let answered = ready(port, pid);
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "{name} on port {port} exited at start-up ({status}):\n{}",
                    server.logs()
                ));
            }
            if answered {
                return Ok(server);
            }
            if Instant::now() > deadline {
                panic!(
                    "{name} on port {port} did not answer within 10 s:\n{}",
                    server.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log, stdout and stderr, for panic messages.
    pub fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "--- {} log ---\n{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.name,
            read(&self.log),
            read(&self.dir.path().join("stdout.log")),
            read(&self.dir.path().join("stderr.log"))
        )
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temporary directory the server runs in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Sends a signal (`STOP`, `CONT`, `KILL`...) with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {} failed", self.child.id());
        if sig == "STOP" {
            self.wait_stopped();
        }
    }

    /// Waits (at most 5 s) until every thread of the process is stopped: `kill -STOP` returns
    /// before the kernel has stopped them, and a request sent in between can still be answered
    /// (a SIGSTOP test then sees a server that is "down" answer once). Panics with each
    /// thread's state when they are not all stopped by then, or the process is a zombie (it
    /// died: a STOP stopped nothing).
    fn wait_stopped(&self) {
        let tasks = format!("/proc/{}/task", self.child.id());
        if !Path::new("/proc/self/task").exists() {
            return; // not Linux: nothing to look at
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // `pid (comm) state ...`: the state follows the last ')'.
            let states: Vec<String> = std::fs::read_dir(&tasks)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|t| {
                            let stat =
                                std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                            stat.rsplit_once(')')
                                .and_then(|(_, rest)| rest.split_whitespace().next())
                                .unwrap_or("?")
                                .to_owned()
                        })
                        .collect()
                })
                .unwrap_or_default();
            if states.iter().any(|s| s == "Z" || s == "X") || states.is_empty() {
                panic!(
                    "{} (pid {}) on port {} is dead, not stopped (threads: {states:?}):\n{}",
                    self.name,
                    self.child.id(),
                    self.port,
                    self.logs()
                );
            }
            if states.iter().all(|s| s == "T" || s == "t") {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} (pid {}) not stopped 5 s after kill -STOP (threads: {states:?})",
                    self.name,
                    self.child.id()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // A stopped process must be continued to die promptly on some kernels.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn roundtrip(port: u16, request: &[u8], expect: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(request).is_err() {
        return false;
    }
    let mut buf = vec![0u8; expect.len()];
    s.read_exact(&mut buf).is_ok() && buf == expect
}

/// A `redis-server` on a free loopback port, with no persistence.
#[derive(Debug)]
pub struct RedisServer {
    /// The process.
    pub process: ServerProcess,
}

impl RedisServer {
    /// Starts a server; `None` (after a loud message) when `redis-server` is not installed and
    /// servers are not required. Extra arguments are appended to the command line.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// [`RedisServer::start`] with extra `redis-server` arguments (`["--requirepass", "x"]`).
    pub fn start_with(extra: &[&str]) -> Option<Self> {
        let Some(bin) = which("redis-server") else {
            match missing("redis-server", "this Redis test")? {}
        };
        let port = free_port();
        Some(Self::spawn_on(&bin, port, extra))
    }

    /// Starts a server on a given port (a restart on the same port after [`ServerProcess::kill`]).
    pub fn start_on(port: u16, extra: &[&str]) -> Option<Self> {
        let Some(bin) = which("redis-server") else {
            match missing("redis-server", "this Redis test")? {}
        };
        Some(Self::spawn_on(&bin, port, extra))
    }

    fn spawn_on(bin: &Path, port: u16, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("redis.log");
        let mut cmd = Command::new(bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(extra);
        let needs_auth = extra.contains(&"--requirepass");
        let process = ServerProcess::spawn("redis-server", cmd, port, dir, log, |p, _| {
            if needs_auth {
                // An unauthenticated PING gets -NOAUTH: the server is up.
                roundtrip(p, b"PING\r\n", b"-NOAUTH")
            } else {
                roundtrip(p, b"PING\r\n", b"+PONG\r\n")
            }
        });
        RedisServer { process }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// `redis://127.0.0.1:port/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.process.port)
    }
}

/// Throwaway TLS material made with the `openssl` CLI: a CA and a server certificate for
/// `localhost` and `127.0.0.1`, valid for a day, in a temporary directory.
#[derive(Debug)]
pub struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    /// Generates the files; `None` (after a loud message; a panic under [`REQUIRE_SERVERS`]) when
    /// `openssl` is not installed.
    pub fn generate() -> Option<Self> {
        if which("openssl").is_none() {
            match missing("openssl", "this TLS test")? {}
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "1",
                "-subj",
                "/CN=ddf test CA",
            ],
        ]
        .concat());
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ]);
        Some(TlsFiles { dir })
    }

    /// The CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
    /// The server certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }
    /// The server key (PEM).
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

impl RedisServer {
    /// A server that accepts only TLS (`--port 0 --tls-port <port>`), with the certificate of
    /// `tls`, not asking clients for certificates. `None` as [`RedisServer::start`].
    pub fn start_tls(tls: &TlsFiles, extra: &[&str]) -> Option<Self> {
        let Some(bin) = which("redis-server") else {
            match missing("redis-server", "this Redis TLS test")? {}
        };
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("redis.log");
        let mut cmd = Command::new(bin);
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
        ])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--tls-cert-file")
        .arg(tls.cert())
        .arg("--tls-key-file")
        .arg(tls.key())
        .arg("--tls-ca-cert-file")
        .arg(tls.ca())
        .args(["--tls-auth-clients", "no"])
        .arg("--dir")
        .arg(dir.path())
        .arg("--logfile")
        .arg(&log)
        .args(extra);
        // Readiness: the TLS port accepts TCP connections.
        let process = ServerProcess::spawn("redis-server (TLS)", cmd, port, dir, log, |p, _| {
            TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], p)),
                Duration::from_millis(200),
            )
            .is_ok()
        });
        Some(RedisServer { process })
    }
}

/// A Redis Cluster of three primaries (no replicas) on free loopback ports, created with
/// `redis-cli --cluster create`; ready once every node reports `cluster_state:ok`.
#[derive(Debug)]
pub struct RedisCluster {
    /// The three primaries.
    pub nodes: Vec<RedisServer>,
    /// The CA `redis-cli` trusts, for a TLS cluster.
    cli_tls: Option<PathBuf>,
}

impl RedisCluster {
    /// Starts the cluster; `None` as [`RedisServer::start`] when `redis-server` or `redis-cli`
    /// is missing.
    pub fn start() -> Option<Self> {
        Self::start_inner(None)
    }

    /// A cluster whose nodes accept only TLS (client and cluster bus), with the certificate of
    /// `tls`; `None` as [`RedisCluster::start`].
    pub fn start_tls(tls: &TlsFiles) -> Option<Self> {
        Self::start_inner(Some(tls))
    }

    fn start_inner(tls: Option<&TlsFiles>) -> Option<Self> {
        if which("redis-cli").is_none() {
            match missing("redis-cli", "this Redis Cluster test")? {}
        }
        let mut nodes = Vec::new();
        for _ in 0..3 {
            // The bus port is given explicitly: port + 10000 could exceed 65535.
            let bus = free_port().to_string();
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &bus,
                "--cluster-node-timeout",
                "5000",
            ];
            nodes.push(match tls {
                None => RedisServer::start_with(&args)?,
                Some(t) => {
                    let tls_args = [&args[..], &["--tls-cluster", "yes"]].concat();
                    RedisServer::start_tls(t, &tls_args)?
                }
            });
        }
        let cluster = RedisCluster {
            nodes,
            cli_tls: tls.map(|t| t.ca()),
        };
        // redis-cli waits forever when the nodes cannot meet (it polls "Waiting for the cluster
        // to join"): give it 30 s, then fail with the nodes' logs.
        let dir = tempfile::tempdir().unwrap();
        let out_path = dir.path().join("create.log");
        let mut child = cluster
            .cli_command(None)
            .args(["--cluster", "create"])
            .args(cluster.addrs())
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("err.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.is_some_and(|s| s.success()) {
            let logs: Vec<String> = cluster.nodes.iter().map(|n| n.process.logs()).collect();
            panic!(
                "redis-cli --cluster create failed ({status:?}):\n{}\n{}\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(dir.path().join("err.log")).unwrap_or_default(),
                logs.join("\n")
            );
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = cluster.nodes.iter().all(|n| {
                cluster
                    .cli(n.port(), &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            });
            if ok {
                return Some(cluster);
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = cluster.nodes.iter().map(|n| n.process.logs()).collect();
                panic!(
                    "the cluster did not reach cluster_state:ok within 20 s:\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis-cli` (with `--tls --cacert` for a TLS cluster), at a node's port when given.
    fn cli_command(&self, port: Option<u16>) -> Command {
        let mut cmd = Command::new(which("redis-cli").expect("redis-cli"));
        if let Some(ca) = &self.cli_tls {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        if let Some(p) = port {
            cmd.args(["-h", "127.0.0.1", "-p", &p.to_string()]);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `redis-cli` against one node (over TLS for a TLS cluster); its standard output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = self
            .cli_command(Some(port))
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `127.0.0.1:port` of every node.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect()
    }
}

/// Runs `redis-cli -p <port> <args>` on 127.0.0.1 and returns its standard output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(which("redis-cli").expect("redis-cli"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `memcached` on a free loopback port (`-u root` when run as root).
#[derive(Debug)]
pub struct MemcachedServer {
    /// The process.
    pub process: ServerProcess,
}

impl MemcachedServer {
    /// Starts a server; `None` (after a loud message) when `memcached` is not installed and
    /// servers are not required.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// [`MemcachedServer::start`] with extra arguments (`["-I", "2m"]`). A port taken by
    /// another process between [`free_port`] and the server's bind is given up for another.
    pub fn start_with(extra: &[&str]) -> Option<Self> {
        let bin = Self::binary()?;
        let mut tries = 3;
        loop {
            tries -= 1;
            match Self::try_start(&bin, free_port(), extra) {
                Ok(s) => return Some(s),
                Err(e) if tries == 0 => panic!("{e}"),
                Err(_) => {}
            }
        }
    }

    /// Starts a server on a given port (a restart on the same port).
    pub fn start_on(port: u16, extra: &[&str]) -> Option<Self> {
        let bin = Self::binary()?;
        Some(Self::try_start(&bin, port, extra).unwrap_or_else(|e| panic!("{e}")))
    }

    fn binary() -> Option<PathBuf> {
        let Some(bin) = which("memcached") else {
            match missing("memcached", "this Memcached test")? {}
        };
        Some(bin)
    }

    fn try_start(bin: &Path, port: u16, extra: &[&str]) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        let mut cmd = Command::new(bin);
        cmd.args([
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-m",
            "64",
        ]);
        if is_root() {
            cmd.args(["-u", "root"]);
        }
        cmd.args(extra);
        // Ready when the server on the port is this child (`stats` names its pid), not
        // another process that took the port.
        let process = ServerProcess::try_spawn("memcached", cmd, port, dir, log, |p, pid| {
            roundtrip(
                p,
                b"stats\r\nquit\r\n",
                format!("STAT pid {pid}\r\n").as_bytes(),
            )
        })?;
        Ok(MemcachedServer { process })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// `127.0.0.1:port`.
    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.process.port)
    }
}

/// A Python interpreter with redis-py and pymemcache, for interop tests: `$DDF_TEST_PYTHON`
/// (the README's test command prepares a virtual environment and sets it), else `None` after a
/// loud message (a panic under [`REQUIRE_SERVERS`]).
pub fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DDF_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let msg = "DDF_TEST_PYTHON is not set: the Python interop test cannot run. Run the README's \
               test command (scripts/test), which prepares a virtual environment with redis-py \
               and pymemcache.";
    if servers_required() {
        panic!("{msg} ({REQUIRE_SERVERS} is set, so this is a failure, not a skip)");
    }
    eprintln!("\n!!! SKIPPED: {msg}\n");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port another memcached already serves (taken between `free_port()` and the bind):
    /// the kit fails with the log, rather than handing back a dead process whose port answers.
    #[test]
    fn a_taken_port_is_an_error_not_someone_elses_server() {
        let Some(other) = MemcachedServer::start() else {
            return;
        };
        let bin = MemcachedServer::binary().unwrap();
        let taken = MemcachedServer::try_start(&bin, other.port(), &[]);
        let e = taken.expect_err("the port was taken");
        assert!(e.contains("exited at start-up"), "{e}");
    }

    /// A STOP of a process that died stops nothing: it fails, naming the threads' states.
    #[test]
    #[should_panic(expected = "is dead, not stopped")]
    fn a_stop_of_a_dead_server_fails() {
        let Some(s) = MemcachedServer::start() else {
            panic!("is dead, not stopped (memcached not installed: nothing to test)");
        };
        s.process.signal("KILL");
        s.process.signal("STOP");
    }

    #[test]
    fn free_ports_are_not_handed_out_twice() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
    }

    #[test]
    fn free_ports_are_bindable() {
        let p = free_port();
        TcpListener::bind(("127.0.0.1", p)).unwrap();
    }

    #[test]
    fn redis_and_memcached_fixtures_start_and_stop() {
        if let Some(r) = RedisServer::start() {
            assert!(roundtrip(r.port(), b"PING\r\n", b"+PONG\r\n"));
            let port = r.port();
            drop(r);
            assert!(!roundtrip(port, b"PING\r\n", b"+PONG\r\n"));
        }
        if let Some(m) = MemcachedServer::start() {
            assert!(roundtrip(m.port(), b"version\r\n", b"VERSION "));
        }
    }
}

/// What a [`FakeServer`]'s script does with one request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeReply {
    /// Write these bytes (possibly a partial or hostile reply) and read the next line.
    Send(Vec<u8>),
    /// Write these bytes, then hold the connection open without answering anything more (a
    /// server stalled mid-reply) until the fake server is dropped.
    SendThenStall(Vec<u8>),
    /// Write these bytes one at a time, waiting the given interval before each (a server that
    /// drip-feeds its reply, each byte within a client's read timeout), then read the next line.
    Drip(Vec<u8>, Duration),
    /// Wait the given time, then write these bytes (a slow server), and read the next line.
    Late(Duration, Vec<u8>),
    /// Say nothing and read the next line (a line that is part of a larger request).
    Nothing,
    /// Close the connection.
    Close,
}

/// A hostile or broken server on a free loopback port: a `TcpListener` thread that reads each
/// connection line by line (up to `\n`) and answers what a script says, for tests that a client
/// survives garbage, partial lines, enormous announced lengths and stalls. Dropping it stops the
/// threads and closes every connection.
///
/// ```no_run
/// use ddf_testkit::{FakeReply, FakeServer};
/// // A memcached that reports a 1 MiB item limit, then announces a 1 GB value and stalls.
/// let fake = FakeServer::start(|line: &[u8]| match line {
///     l if l.starts_with(b"stats") => FakeReply::Send(b"STAT item_size_max 1048576\r\nEND\r\n".to_vec()),
///     l if l.starts_with(b"mg ") => FakeReply::SendThenStall(b"VA 999999999 f0\r\n".to_vec()),
///     _ => FakeReply::Send(b"ERROR\r\n".to_vec()),
/// });
/// let server = fake.server(); // "127.0.0.1:port"
/// ```
#[derive(Debug)]
pub struct FakeServer {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    /// Starts the server; `script` is called with every request line (without its line end).
    pub fn start<F>(script: F) -> FakeServer
    where
        F: Fn(&[u8]) -> FakeReply + Send + Sync + 'static,
    {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        accepted2.fetch_add(1, Ordering::Relaxed);
                        let (script, stop) = (script.clone(), stop2.clone());
                        conns.push(std::thread::spawn(move || fake_conn(s, &*script, &stop)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        FakeServer {
            port,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// A fake memcached: `stats` (a 1 MiB `item_size_max`) and `version` answered as memcached
    /// answers them, every other request line handed to `script`.
    ///
    /// ```no_run
    /// use ddf_testkit::{FakeReply, FakeServer};
    /// // Every `mg` is a miss; anything else is refused.
    /// let fake = FakeServer::memcached(|line: &[u8]| match line {
    ///     l if l.starts_with(b"mg ") => FakeReply::Send(b"EN\r\n".to_vec()),
    ///     _ => FakeReply::Send(b"ERROR\r\n".to_vec()),
    /// });
    /// # drop(fake);
    /// ```
    pub fn memcached<F>(script: F) -> FakeServer
    where
        F: Fn(&[u8]) -> FakeReply + Send + Sync + 'static,
    {
        FakeServer::start(move |line: &[u8]| {
            if line.starts_with(b"stats") {
                FakeReply::Send(b"STAT pid 1\r\nSTAT item_size_max 1048576\r\nEND\r\n".to_vec())
            } else if line == b"version" {
                FakeReply::Send(b"VERSION 1.6.18\r\n".to_vec())
            } else {
                script(line)
            }
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How many connections it accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection of a [`FakeServer`]: reads lines, answers per the script, stalls or closes.
fn fake_conn(
    mut s: TcpStream,
    script: &dyn Fn(&[u8]) -> FakeReply,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering;
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut stalled = false;
    while !stop.load(Ordering::Relaxed) {
        if stalled {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return,
        }
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match script(line) {
                FakeReply::Send(b) => {
                    if s.write_all(&b).is_err() {
                        return;
                    }
                }
                FakeReply::SendThenStall(b) => {
                    let _ = s.write_all(&b);
                    stalled = true;
                    break;
                }
                FakeReply::Drip(b, every) => {
                    for byte in b {
                        std::thread::sleep(every);
                        if stop.load(Ordering::Relaxed) || s.write_all(&[byte]).is_err() {
                            return;
                        }
                    }
                }
                FakeReply::Late(after, b) => {
                    std::thread::sleep(after);
                    if s.write_all(&b).is_err() {
                        return;
                    }
                }
                FakeReply::Nothing => {}
                FakeReply::Close => return,
            }
        }
    }
}
