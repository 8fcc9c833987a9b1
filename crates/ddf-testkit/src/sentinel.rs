//! A Redis Sentinel deployment on free loopback ports: a master, a replica and three
//! `redis-sentinel` processes with a quorum of 2, quick to fail over.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{RedisServer, ServerProcess, TlsFiles, free_port, missing, roundtrip, which};

/// The name the Sentinels monitor the master under.
pub const SENTINEL_MASTER: &str = "m";

/// Sentinel's `down-after-milliseconds`: how long the master must not answer to be down.
pub const DOWN_AFTER_MS: u64 = 1000;

/// Sentinel's `failover-timeout`.
pub const FAILOVER_TIMEOUT_MS: u64 = 3000;

/// A master, its replica (`--replicaof`) and three Sentinels (`sentinel monitor m 127.0.0.1
/// PORT 2`, `down-after-milliseconds` [`DOWN_AFTER_MS`], `failover-timeout`
/// [`FAILOVER_TIMEOUT_MS`]). Ready once every Sentinel knows the replica and the two other
/// Sentinels, so that a failover can be authorized at once. Everything is stopped on drop.
#[derive(Debug)]
pub struct RedisSentinel {
    /// The master at start (after a failover, a dead process or a replica).
    pub master: RedisServer,
    /// The replica at start (promoted by a failover).
    pub replica: RedisServer,
    /// The three Sentinels.
    pub sentinels: Vec<ServerProcess>,
    /// The master's and replica's password (`requirepass`), if any.
    master_password: Option<String>,
    /// The Sentinels' password (`requirepass` in their configuration), if any.
    sentinel_password: Option<String>,
    /// The CA `redis-cli` trusts, for a TLS deployment.
    tls_ca: Option<PathBuf>,
}

impl RedisSentinel {
    /// Starts the deployment; `None` (after a loud message) when `redis-server`, `redis-cli` or
    /// `redis-sentinel` is missing and servers are not required. Panics, with the logs, when it
    /// does not become ready within 30 s.
    pub fn start() -> Option<Self> {
        Self::start_with_passwords(None, None)
    }

    /// [`RedisSentinel::start`] with a password on the master and replica (`requirepass`,
    /// `masterauth`, and `sentinel auth-pass` for the Sentinels) and one on the Sentinels
    /// themselves (`requirepass` in their configuration).
    pub fn start_with_passwords(master: Option<&str>, sentinel: Option<&str>) -> Option<Self> {
        Self::start_inner(master, sentinel, None)
    }

    /// A deployment that speaks only TLS (servers, replication, Sentinels), with the
    /// certificate of `tls` (it names 127.0.0.1, the address the Sentinels give).
    pub fn start_tls(tls: &TlsFiles) -> Option<Self> {
        Self::start_inner(None, None, Some(tls))
    }

    fn start_inner(
        master: Option<&str>,
        sentinel: Option<&str>,
        tls: Option<&TlsFiles>,
    ) -> Option<Self> {
        let Some(bin) = which("redis-sentinel") else {
            match missing("redis-sentinel", "this Redis Sentinel test")? {}
        };
        if which("redis-cli").is_none() {
            match missing("redis-cli", "this Redis Sentinel test")? {}
        }
        let auth: Vec<&str> = match master {
            Some(pw) => vec!["--requirepass", pw, "--masterauth", pw],
            None => Vec::new(),
        };
        let start = |args: &[&str]| match tls {
            None => RedisServer::start_with(args),
            Some(t) => RedisServer::start_tls(t, &[args, &["--tls-replication", "yes"]].concat()),
        };
        let master_server = start(&auth)?;
        let mport = master_server.port().to_string();
        let replica = start(&[&auth[..], &["--replicaof", "127.0.0.1", &mport]].concat())?;
        let mut extra = String::new();
        if let Some(t) = tls {
            extra.push_str(&format!(
                "tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                 tls-auth-clients no\ntls-replication yes\n",
                t.cert().display(),
                t.key().display(),
                t.ca().display()
            ));
        }
        if let Some(pw) = master {
            extra.push_str(&format!("sentinel auth-pass {SENTINEL_MASTER} {pw}\n"));
        }
        if let Some(pw) = sentinel {
            extra.push_str(&format!("requirepass {pw}\n"));
        }
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("sentinel.log");
            // Sentinel rewrites its configuration file: it lives in the temporary directory.
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "{listen}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
                     dir {dir}\nlogfile {log}\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {mport} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} {DOWN_AFTER_MS}\n\
                     sentinel failover-timeout {SENTINEL_MASTER} {FAILOVER_TIMEOUT_MS}\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n{extra}",
                    listen = if tls.is_some() {
                        format!("port 0\ntls-port {port}")
                    } else {
                        format!("port {port}")
                    },
                    dir = dir.path().display(),
                    log = log.display(),
                ),
            )
            .unwrap();
            let mut cmd = Command::new(&bin);
            cmd.arg(&conf);
            let needs_auth = sentinel.is_some();
            let plain = tls.is_none();
            sentinels.push(ServerProcess::spawn(
                "redis-sentinel",
                cmd,
                port,
                dir,
                log,
                move |p, _| {
                    if !plain {
                        // The TLS port accepts TCP connections.
                        TcpStream::connect_timeout(
                            &SocketAddr::from(([127, 0, 0, 1], p)),
                            Duration::from_millis(200),
                        )
                        .is_ok()
                    } else if needs_auth {
                        roundtrip(p, b"PING\r\n", b"-NOAUTH")
                    } else {
                        roundtrip(p, b"PING\r\n", b"+PONG\r\n")
                    }
                },
            ));
        }
        let deployment = RedisSentinel {
            master: master_server,
            replica,
            sentinels,
            master_password: master.map(str::to_owned),
            sentinel_password: sentinel.map(str::to_owned),
            tls_ca: tls.map(TlsFiles::ca),
        };
        deployment.wait_ready();
        Some(deployment)
    }

    /// Waits until the replica is in sync and every Sentinel sees it and the two others.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let synced = self
                .server_cli(self.replica.port(), &["INFO", "replication"])
                .contains("master_link_status:up");
            let known = self.sentinels.iter().all(|s| {
                let info = self.sentinel_cli(s.port, &["SENTINEL", "MASTER", SENTINEL_MASTER]);
                field(&info, "num-slaves") == Some("1")
                    && field(&info, "num-other-sentinels") == Some("2")
            });
            if synced && known {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the Sentinel deployment was not ready within 30 s (replica in sync: \
                     {synced}):\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:port` of every Sentinel.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// The master's port as each Sentinel reports it (`SENTINEL get-master-addr-by-name m`);
    /// `None` for a Sentinel that does not answer. During a failover the leader names the
    /// promoted replica first, the others when they hear of it.
    pub fn master_ports(&self) -> Vec<Option<u16>> {
        self.sentinels
            .iter()
            .map(|s| self.ask_master_port(s.port))
            .collect()
    }

    /// `SENTINEL get-master-addr-by-name m` on one Sentinel over a plain socket (a process per
    /// poll would blur a measurement of the failover time); the port of the reply. Through
    /// `redis-cli` for a TLS deployment.
    fn ask_master_port(&self, port: u16) -> Option<u16> {
        if self.tls_ca.is_some() {
            let out = self.sentinel_cli(
                port,
                &["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER],
            );
            return out.lines().nth(1)?.trim().parse().ok();
        }
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(200),
        )
        .ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        let mut request = Vec::new();
        if let Some(pw) = &self.sentinel_password {
            request.extend(resp(&["AUTH", pw]));
        }
        request.extend(resp(&[
            "SENTINEL",
            "get-master-addr-by-name",
            SENTINEL_MASTER,
        ]));
        s.write_all(&request).ok()?;
        // The reply: `*2`, `$N`, the address, `$N`, the port (after `+OK` for AUTH).
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            let n = s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            let lines: Vec<&str> = text.split("\r\n").collect();
            if lines.iter().any(|l| l.starts_with('-') || *l == "*-1") {
                return None;
            }
            if let Some(i) = lines.iter().position(|l| *l == "*2")
                && lines.len() > i + 5
            {
                return lines[i + 4].parse().ok();
            }
        }
    }

    /// `redis-cli` against the master or the replica (with their password); its output.
    pub fn server_cli(&self, port: u16, args: &[&str]) -> String {
        cli(
            port,
            self.master_password.as_deref(),
            self.tls_ca.as_ref(),
            args,
        )
    }

    /// `redis-cli` against a Sentinel (with its password); its output.
    pub fn sentinel_cli(&self, port: u16, args: &[&str]) -> String {
        cli(
            port,
            self.sentinel_password.as_deref(),
            self.tls_ca.as_ref(),
            args,
        )
    }

    /// Every process's log, for panic messages.
    pub fn logs(&self) -> String {
        let mut out = vec![self.master.process.logs(), self.replica.process.logs()];
        out.extend(self.sentinels.iter().map(ServerProcess::logs));
        out.join("\n")
    }
}

/// A command as a RESP array of bulk strings.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n{a}\r\n", a.len()).into_bytes());
    }
    out
}

/// `redis-cli -p PORT [-a PASSWORD] [--tls --cacert CA] ARGS` on 127.0.0.1; its standard
/// output.
fn cli(port: u16, password: Option<&str>, ca: Option<&PathBuf>, args: &[&str]) -> String {
    let mut cmd = Command::new(which("redis-cli").expect("redis-cli"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(ca) = ca {
        cmd.arg("--tls").arg("--cacert").arg(ca);
    }
    if let Some(pw) = password {
        cmd.args(["-a", pw, "--no-auth-warning"]);
    }
    let out = cmd
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `name` line's value in redis-cli's output of a flat reply (`name` then its value).
fn field<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = out.lines();
    while let Some(l) = lines.next() {
        if l.trim() == name {
            return lines.next().map(str::trim);
        }
    }
    None
}
