//! Redis Sentinel: finding the current master through the Sentinels, and following a failover.
//!
//! Written here rather than with redis-rs's `sentinel` module: its sync client (1.8) connects to
//! the Sentinels, and to the master it verifies, with `get_connection()`, which has no connect
//! timeout, and reads their replies without a read timeout, so one Sentinel that stalls (or a
//! host that drops packets) would block a call forever. What a client has to do is small (the
//! Sentinel client specification, <https://redis.io/docs/latest/develop/reference/sentinel-clients/>):
//!
//! 1. ask the Sentinels in turn `SENTINEL get-master-addr-by-name NAME`;
//! 2. connect to the address one gives and check with `ROLE` that the server is a master; when
//!    it is not, or does not answer, ask the next Sentinel (during a failover the Sentinels other
//!    than the leader name the old master for up to a couple of seconds). The Sentinel whose
//!    master answered is asked first next time;
//! 3. ask again when the master fails: the backend calls [`Sentinels::forget`] after a
//!    connection error, a timeout or a `READONLY` reply (a demoted master; Sentinel also closes
//!    the clients of a server it turns into a replica): [`master_may_have_moved`], the one
//!    decision both faces take.
//!
//! The async face (`aio/redis/sentinel.rs`) runs [`Sentinels::locate`], this same lookup, on
//! tokio's blocking pool once per (re)connect, and opens its own async connections to the
//! address found.
//!
//! Every connection opened here, to a Sentinel or to the master, is a [`Bounded`] one (TLS
//! included): each request ends within its deadline however the server drip-feeds its reply,
//! and the whole of one [`Sentinels::connect`] takes at most `connect_timeout`.

use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisResult};

use super::conn::{Bounded, TlsConfig};
use crate::config::{RedisEndpoint, RedisSettings, Secret, ServerAddr};

/// The Sentinels of one master, and the master last found through them.
pub(crate) struct Sentinels {
    /// One client per Sentinel, with its `host:port` for logs.
    sentinels: Vec<(String, redis::Client)>,
    /// The name the Sentinels monitor the master under.
    name: String,
    /// The master's settings (credentials, database, TLS): a client for each address found.
    settings: RedisSettings,
    /// With a CA: the TLS configuration of the Sentinels and of the master.
    tls: Option<TlsConfig>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The Sentinel asked first: the last one that answered.
    first: usize,
    /// The master last found and verified; `None` makes the next connection ask the Sentinels.
    master: Option<Master>,
}

#[derive(Clone)]
struct Master {
    addr: String,
    client: redis::Client,
}

impl Sentinels {
    /// Clients of the Sentinels (TLS with the settings' CA when there is one); no connection is
    /// opened here.
    pub(crate) fn new(
        settings: &RedisSettings,
        sentinels: &[ServerAddr],
        name: &str,
        password: Option<&Secret>,
    ) -> RedisResult<Self> {
        let clients = sentinels
            .iter()
            .map(|a| Ok((a.to_string(), sentinel_client(settings, a, password)?)))
            .collect::<RedisResult<Vec<_>>>()?;
        let tls = match &settings.ca {
            #[cfg(feature = "tls")]
            Some(ca) => Some(TlsConfig::new(Some(ca), false)?),
            _ => None,
        };
        Ok(Sentinels {
            sentinels: clients,
            name: name.to_owned(),
            settings: settings.clone(),
            tls,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is two plain fields, valid whatever a panicking thread was doing.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `host:port` of the master last found, if any.
    pub(crate) fn current(&self) -> Option<String> {
        self.state().master.as_ref().map(|m| m.addr.clone())
    }

    /// Whether the master is reached over plain TCP in RESP2 (no CA, no RESP3): what the
    /// async face's caller-driven connection speaks.
    #[cfg(feature = "async")]
    pub(crate) fn plain_resp2(&self) -> bool {
        self.settings.ca.is_none() && !self.settings.resp3
    }

    /// Makes the next connection ask the Sentinels where the master is.
    pub(crate) fn forget(&self) {
        if self.state().master.take().is_some() {
            tracing::debug!(master = %self.name, "Sentinel: the master will be looked up again");
        }
    }

    /// Finds the current master and verifies it with `ROLE` (a connection opened and closed),
    /// so that [`Sentinels::current`] names it: what the near cache's tracking connection needs.
    pub(crate) fn find_master(&self) -> RedisResult<()> {
        self.connect().map(drop)
    }

    /// A connection to the current master, verified with `ROLE`, on `redis_db`: to the master
    /// last found while it still is one, else to the one the Sentinels name now. Takes at most
    /// `connect_timeout` in all; each later request on it waits at most `timeout`.
    pub(super) fn connect(&self) -> RedisResult<Bounded> {
        self.connect_until(Instant::now() + self.settings.connect_timeout)
            .map(|(_, c)| c)
    }

    /// Where the current master is, found and verified with `ROLE` as [`Sentinels::connect`]
    /// does (the verifying connection is then closed), before `deadline`: its `host:port` and
    /// a client of it on `redis_db`, for the async face's connections (which open their own).
    #[cfg(feature = "async")]
    pub(crate) fn locate(&self, deadline: Instant) -> RedisResult<(String, redis::Client)> {
        let (m, _verified) = self.connect_until(deadline)?;
        let client = super::on_db(&m.client, self.settings.db)?;
        Ok((m.addr, client))
    }

    /// [`Sentinels::connect`] before `deadline`, with the master it connected to.
    fn connect_until(&self, deadline: Instant) -> RedisResult<(Master, Bounded)> {
        let known = self.state().master.clone();
        if let Some(m) = known {
            match self.open_master(&m, deadline) {
                Ok(c) => return Ok((m, c)),
                Err(e) => {
                    tracing::debug!(master = %self.name, addr = %m.addr, error = %e,
                        "Sentinel: the known master failed; asking the Sentinels");
                    self.forget();
                }
            }
        }
        let (m, c) = self.discover(deadline)?;
        let mut state = self.state();
        if state.master.as_ref().map(|k| &k.addr) != Some(&m.addr) {
            tracing::info!(master = %self.name, addr = %m.addr, "Sentinel: using the master at {}", m.addr);
        }
        state.master = Some(m.clone());
        Ok((m, c))
    }

    /// Asks the Sentinels in turn, from the one whose master answered last, where the master
    /// is, until one names a server that answers `ROLE` as a master; a connection to it. Each
    /// Sentinel (and the master it names) gets an equal share of the time left.
    fn discover(&self, deadline: Instant) -> RedisResult<(Master, Bounded)> {
        let n = self.sentinels.len();
        let first = self.state().first;
        let mut last = None;
        for i in 0..n {
            let idx = (first + i) % n;
            let Some((label, client)) = self.sentinels.get(idx) else {
                continue;
            };
            let share = left(deadline)? / u32::try_from(n - i).unwrap_or(1);
            let until = Instant::now() + share;
            match self.ask(client, share) {
                Ok(Some((host, port))) => {
                    let endpoint = if self.settings.ca.is_some() {
                        RedisEndpoint::Tls {
                            host: host.clone(),
                            port,
                            insecure: false,
                        }
                    } else {
                        RedisEndpoint::Tcp {
                            host: host.clone(),
                            port,
                        }
                    };
                    let addr = ServerAddr { host, port }.to_string();
                    let m = Master {
                        addr,
                        client: super::client(&self.settings, &endpoint)?,
                    };
                    match self.open_master(&m, until) {
                        Ok(c) => {
                            self.state().first = idx;
                            return Ok((m, c));
                        }
                        Err(e) => {
                            tracing::debug!(sentinel = %label, addr = %m.addr, error = %e,
                                "the master this Sentinel names does not answer as a master");
                            last = Some(e);
                        }
                    }
                }
                Ok(None) => {
                    tracing::debug!(sentinel = %label, master = %self.name, "Sentinel does not know the master");
                    last = Some(redis::RedisError::from((
                        redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown),
                        "no Sentinel knows the master",
                        format!(
                            "Sentinel {label} does not monitor a master named {:?} \
                             (check redis_sentinel_master)",
                            self.name
                        ),
                    )));
                }
                Err(e) => {
                    tracing::debug!(sentinel = %label, error = %e, "Sentinel did not answer");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| timed_out("no Sentinel answered in time")))
    }

    /// `SENTINEL get-master-addr-by-name NAME` on one Sentinel, within `budget`.
    fn ask(&self, client: &redis::Client, budget: Duration) -> RedisResult<Option<(String, u16)>> {
        let deadline = Instant::now() + budget;
        let mut c = Bounded::open(client, self.tls.as_ref(), 0, budget, budget)?;
        c.set_timeout(left(deadline)?);
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.name)
            .query(&mut c)
    }

    /// A connection to `m` on `redis_db` if it answers `ROLE` as a master, before `deadline`;
    /// its later requests wait at most `timeout`.
    fn open_master(&self, m: &Master, deadline: Instant) -> RedisResult<Bounded> {
        let timeout = self.settings.timeout;
        let mut c = Bounded::open(
            &m.client,
            self.tls.as_ref(),
            self.settings.db,
            left(deadline)?,
            timeout,
        )?;
        c.set_timeout(left(deadline)?.min(timeout));
        let role = redis::cmd("ROLE").query::<redis::Role>(&mut c)?;
        c.set_timeout(timeout);
        self.must_be_master(&role, &m.addr).map(|()| c)
    }

    /// Whether a connection to `addr` that answered `ROLE` with `role` may be used as this
    /// group's master: only a master may. The one decision, for both faces (each asks it on
    /// the connection it then uses).
    ///
    /// # Errors
    /// A replica or a Sentinel: a `MASTERDOWN` error ([`master_may_have_moved`]: the
    /// Sentinels are asked again), naming the address and the group.
    pub(crate) fn must_be_master(&self, role: &redis::Role, addr: &str) -> RedisResult<()> {
        match role {
            redis::Role::Primary { .. } => Ok(()),
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown),
                "not a master",
                format!(
                    "{addr} is not a master (yet); the Sentinels of {:?} are asked again",
                    self.name
                ),
            ))),
        }
    }
}

/// Whether an error may mean that the master moved (a connection error, a timeout, `READONLY`
/// from a demoted master, `MASTERDOWN`): then the next connection asks the Sentinels again and
/// the connections open to the old one are dropped. The one decision, for both faces.
pub(crate) fn master_may_have_moved(e: &redis::RedisError) -> bool {
    e.is_timeout()
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::ReadOnly | redis::ServerErrorKind::MasterDown
            )
        )
}

/// The time left before `deadline`, or a timeout error when there is none.
fn left(deadline: Instant) -> RedisResult<Duration> {
    let rest = deadline.saturating_duration_since(Instant::now());
    if rest.is_zero() {
        return Err(timed_out(
            "connect_timeout elapsed while looking the master up through Sentinel",
        ));
    }
    Ok(rest)
}

fn timed_out(what: &'static str) -> redis::RedisError {
    redis::RedisError::from(io::Error::new(io::ErrorKind::TimedOut, what))
}

/// A client of one Sentinel: database 0, the Sentinels' own password, TLS when a CA is set.
fn sentinel_client(
    settings: &RedisSettings,
    at: &ServerAddr,
    password: Option<&Secret>,
) -> RedisResult<redis::Client> {
    let addr = match settings.ca {
        Some(_) => ConnectionAddr::TcpTls {
            host: at.host.clone(),
            port: at.port,
            insecure: false,
            tls_params: None,
        },
        None => ConnectionAddr::Tcp(at.host.clone(), at.port),
    };
    // No `CLIENT SETINFO`: a round trip a Sentinel does not need, whose replies redis-rs reads
    // one after the other, each with the whole timeout, and then ignores when they time out: a
    // stalled Sentinel cost twice its share with it.
    let mut redis = RedisConnectionInfo::default().set_skip_set_lib_name();
    if let Some(p) = password {
        redis = redis.set_password(p.expose());
    }
    // TLS is [`Bounded`]'s (the Sentinels' `tls`): the client carries the address and settings.
    let info = addr
        .into_connection_info()?
        .set_redis_settings(redis)
        .set_tcp_settings(super::tcp_settings());
    redis::Client::open(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one decision both faces take: what makes them ask the Sentinels again. A reply
    /// error of the command itself (a wrong type) does not; a demoted master does.
    #[test]
    fn what_means_the_master_may_have_moved() {
        let server = |code: &str| {
            let mut reply = Vec::new();
            reply.extend_from_slice(format!("-{code} detail\r\n").as_bytes());
            match redis::parse_redis_value(&reply) {
                Ok(redis::Value::ServerError(e)) => redis::RedisError::from(e),
                other => panic!("{other:?}"),
            }
        };
        assert!(master_may_have_moved(&server("READONLY")));
        assert!(master_may_have_moved(&server("MASTERDOWN")));
        assert!(master_may_have_moved(&timed_out("t")));
        assert!(master_may_have_moved(&redis::RedisError::from(
            io::Error::from(io::ErrorKind::ConnectionReset)
        )));
        assert!(!master_may_have_moved(&server("WRONGTYPE")));
        assert!(!master_may_have_moved(&server("NOAUTH")));
    }
}
