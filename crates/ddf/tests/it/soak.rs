//! A soak with a reference model (issue #14, point 4): threads run random `get`, `set`,
//! `delete`, `invalidate_pattern` and `flush_all` over 64 keys under 8 prefixes on one
//! `CacheManager` with short timeouts and the pickle fallback (and pause together at random, as
//! a long-running process that sleeps through an outage), while a chaos thread kills (-9)
//! and restarts, or stops (SIGSTOP) and resumes (SIGCONT), servers at random. Every call is
//! recorded; at the end [`ddf_testkit::model::check_with`] replays the whole history and the
//! test fails listing each stale or phantom read with its key's history and the faults around
//! it. The one lag the design allows is granted ([`model::Grace`]): a removal a process may
//! have recorded during its outage (slow, or its process not up around it) counts for the other
//! processes' reads from 300 ms after it ended or after the server answered again, whichever
//! is later (`breaker_retry` 0.1 s, plus applying it).
//!
//! The `*_processes` variants also run short-lived child processes (this test binary run again,
//! see `process.rs`) that share the fallback directory, which is where most of issue #14's stale
//! reads come from. Every process stamps each call with `CLOCK_MONOTONIC` read exactly
//! ([`process::mono_ns`]): one kernel clock, the same for every process on the machine, which
//! never steps. (A clock made of the wall clock read once and advanced by `Instant` is ahead by
//! however long the process was paused between its two readings: a child process 0.06-0.14 ms
//! ahead of the parent made 16 legal histories look stale, issue #14 wave 8.)
//!
//! `DDF_SOAK_SECS` sets how long each soak runs (default 4 s: the four run in CI in under 30 s);
//! `scripts/soak --minutes N` runs them for longer in release. Each prints one line starting
//! with `soak summary:` (operations, faults injected, violations) for that script; with
//! `DDF_SOAK_REPORT=<dir>` the full report of a failing soak is also written there, with its
//! whole history (JSON lines, by start) and every process's breaker states.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ddf::{CacheConfig, CacheManager};
use ddf_testkit::model::{self, Action, Op, Outcome, Violation};
use ddf_testkit::{MemcachedServer, RedisServer, ServerProcess, free_port};

use crate::process;

const SECS: &str = "DDF_SOAK_SECS";
const REPORT: &str = "DDF_SOAK_REPORT";
const CHILD: &str = "DDF_SOAK_CHILD";
/// Threads of the long-running (parent) process.
const THREADS: u32 = 4;
/// Threads of each child process.
const CHILD_THREADS: u32 = 2;
const PREFIXES: u64 = 8;
const KEYS_PER_PREFIX: u64 = 8;

fn soak_duration() -> Duration {
    let secs = std::env::var(SECS)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(4.0);
    Duration::from_secs_f64(secs)
}

/// `CLOCK_MONOTONIC` in nanoseconds ([`process::mono_ns`]): every process of the soak reads
/// the same kernel clock, so their histories share one time line (what the checker requires).
/// Nothing is sampled twice per process: a clock built from two readings (the wall clock once,
/// then `Instant`) is off by any pause between them.
#[derive(Clone, Copy)]
struct Clock;

impl Clock {
    fn new() -> Self {
        Clock
    }

    fn now(self) -> u64 {
        process::mono_ns()
    }
}

/// A xorshift generator: no dependency, and a seed printed for a rerun.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

fn seed() -> u64 {
    std::env::var("DDF_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
        })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Redis,
    Memcached,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Memcached => "memcached",
        }
    }

    fn parse(s: &str) -> Kind {
        if s == "redis" {
            Kind::Redis
        } else {
            Kind::Memcached
        }
    }
}

enum Server {
    Redis(RedisServer),
    Memcached(MemcachedServer),
}

impl Server {
    fn start_on(kind: Kind, port: u16) -> Option<Server> {
        Some(match kind {
            Kind::Redis => Server::Redis(RedisServer::start_on(port, &[])?),
            Kind::Memcached => Server::Memcached(MemcachedServer::start_on(port, &[])?),
        })
    }

    fn process(&mut self) -> &mut ServerProcess {
        match self {
            Server::Redis(s) => &mut s.process,
            Server::Memcached(s) => &mut s.process,
        }
    }
}

/// The configuration under test, through the public INI surface only.
fn config(kind: Kind, ports: &[u16], dir: &Path) -> CacheConfig {
    let servers = match kind {
        Kind::Redis => format!(
            "backend = redis\nredis_host = 127.0.0.1\nredis_port = {}\n",
            ports[0]
        ),
        Kind::Memcached => {
            let list: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            format!(
                "backend = memcached\nmemcached_servers = {}\n",
                list.join(", ")
            )
        }
    };
    CacheConfig::from_ini_str(&format!(
        "[cache]\n{servers}namespace = soak:\ntimeout = 0.3\nconnect_timeout = 0.2\n\
         breaker_retry = 0.1\nfallback = pickle\n"
    ))
    .unwrap()
    .with_pickle_dir(dir)
}

/// When the parent process is idle (all its threads together): a process that sleeps through
/// an outage and then reads is the victim of several of issue #14's findings.
fn naps(start: Instant, until: Instant, rng: &mut Rng) -> Vec<(Instant, Instant)> {
    let mut naps = Vec::new();
    let mut t = start;
    while t < until {
        let from = t + rng.millis(300, 1500);
        let to = from + rng.millis(300, 2000);
        naps.push((from, to));
        t = to;
    }
    naps
}

/// One worker thread: random operations until `until`, idle during `naps`; every set writes
/// `t<thread>-<seq>`.
fn work(
    cache: &CacheManager,
    thread: u32,
    clock: Clock,
    until: Instant,
    naps: &[(Instant, Instant)],
    seed: u64,
) -> Vec<Op> {
    let mut rng = Rng::new(seed ^ (u64::from(thread) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut ops = Vec::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        if let Some(&(_, to)) = naps.iter().find(|(from, to)| *from <= now && now < *to) {
            std::thread::sleep(to - now);
            continue;
        }
        if now >= until {
            break;
        }
        let prefix = format!("p{}:", rng.below(PREFIXES));
        let key = format!("{prefix}k{}", rng.below(KEYS_PER_PREFIX));
        let start = clock.now();
        let (action, outcome) = match rng.below(1000) {
            0..=549 => {
                let r = cache.get::<String>(&key);
                (Action::Get { key }, outcome(r))
            }
            550..=859 => {
                seq += 1;
                let value = format!("t{thread}-{seq}");
                let r = cache.set(&key, &value, None);
                (Action::Set { key, value }, outcome(r.map(|()| None)))
            }
            860..=979 => {
                let r = cache.delete(&key);
                (Action::Delete { key }, outcome(r.map(|_| None)))
            }
            980..=997 => {
                let r = cache.invalidate_pattern(&prefix);
                (
                    Action::InvalidatePattern { prefix },
                    outcome(r.map(|_| None)),
                )
            }
            _ => {
                let r = cache.flush_all();
                (Action::FlushAll, outcome(r.map(|()| None)))
            }
        };
        let end = clock.now();
        ops.push(Op {
            thread,
            action,
            start,
            end,
            outcome,
        });
    }
    ops
}

fn outcome(r: ddf::Result<Option<String>>) -> Outcome {
    match r {
        Ok(v) => Outcome::Ok(v),
        Err(e) => Outcome::Err(e.to_string()),
    }
}

/// A history as JSON lines (a child process hands its history to the parent this way).
fn to_json_line(op: &Op) -> String {
    let (name, key, prefix, value) = match &op.action {
        Action::Get { key } => ("get", Some(key), None, None),
        Action::Set { key, value } => ("set", Some(key), None, Some(value)),
        Action::Delete { key } => ("delete", Some(key), None, None),
        Action::InvalidatePattern { prefix } => ("invalidate_pattern", None, Some(prefix), None),
        Action::FlushAll => ("flush_all", None, None, None),
    };
    let (result, error) = match &op.outcome {
        Outcome::Ok(v) => (v.as_ref(), None),
        Outcome::Err(e) => (None, Some(e)),
    };
    serde_json::json!({
        "thread": op.thread, "op": name, "key": key, "prefix": prefix, "value": value,
        "start": op.start, "end": op.end, "result": result, "error": error,
    })
    .to_string()
}

fn from_json_line(line: &str) -> Op {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let s = |f: &str| v[f].as_str().map(str::to_string);
    let key = || s("key").unwrap();
    let action = match v["op"].as_str().unwrap() {
        "get" => Action::Get { key: key() },
        "set" => Action::Set {
            key: key(),
            value: s("value").unwrap(),
        },
        "delete" => Action::Delete { key: key() },
        "invalidate_pattern" => Action::InvalidatePattern {
            prefix: s("prefix").unwrap(),
        },
        "flush_all" => Action::FlushAll,
        other => panic!("unknown operation {other:?} in {line}"),
    };
    Op {
        thread: v["thread"].as_u64().unwrap() as u32,
        action,
        start: v["start"].as_u64().unwrap(),
        end: v["end"].as_u64().unwrap(),
        outcome: match s("error") {
            Some(e) => Outcome::Err(e),
            None => Outcome::Ok(s("result")),
        },
    }
}

/// A fault the chaos thread injected: when, what.
struct Fault {
    start: u64,
    end: u64,
    what: String,
}

/// Kills and restarts, or stops and resumes, a random server every 0.2-0.7 s until `stop`;
/// every server runs again when it returns.
fn chaos(
    kind: Kind,
    servers: &mut [Server],
    ports: &[u16],
    clock: Clock,
    stop: &AtomicBool,
    rng: &mut Rng,
) -> Vec<Fault> {
    let mut faults = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(rng.millis(200, 700));
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let i = rng.below(servers.len() as u64) as usize;
        let outage = rng.millis(100, 900);
        let start = clock.now();
        // Mostly SIGSTOP: a stopped server keeps its values, a restarted one comes back empty.
        let what = if rng.below(3) == 0 {
            servers[i].process().kill();
            std::thread::sleep(outage);
            servers[i] = Server::start_on(kind, ports[i]).unwrap();
            format!("kill -9 and restart of server {i} (port {})", ports[i])
        } else {
            servers[i].process().signal("STOP");
            std::thread::sleep(outage);
            servers[i].process().signal("CONT");
            format!("SIGSTOP, SIGCONT of server {i} (port {})", ports[i])
        };
        faults.push(Fault {
            start,
            end: clock.now(),
            what: format!("{what}, {outage:?}"),
        });
    }
    faults
}

/// A process's breaker state over time, as `backend_info` shows it, sampled every 10 ms until
/// `stop`: `(time, "state (transitions n)")` at each change. It tells a report whether a read
/// was served while its process was up, down or recovering. `backend_info` asks the server
/// (a ping, and `INFO` while up): against a stopped server one sample takes a timeout or two,
/// and the state it shows was read somewhere in that time. Such a sample says
/// [`BLOCKED`] from its start to its end: the state then is not known (issue #14 wave 8: a
/// parent that went down 94 ms before its blocked sample returned was shown up until then).
fn sample_states(cache: &CacheManager, clock: Clock, stop: &AtomicBool) -> Vec<(u64, String)> {
    let mut timeline: Vec<(u64, String)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let before = clock.now();
        let info = cache.backend_info().unwrap_or_default();
        let after = clock.now();
        let field = |name: &str| {
            info.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let state = format!("{} (transitions {})", field("state"), field("transitions"));
        if after - before > SAMPLE_BLOCKED_NS {
            timeline.push((before, BLOCKED.to_string()));
        }
        if timeline.last().is_none_or(|(_, last)| *last != state) {
            timeline.push((after, state));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    timeline
}

/// The state shown while a sample waited on the server for longer than
/// [`SAMPLE_BLOCKED_NS`] (a ping answers in well under a millisecond).
const BLOCKED: &str = "unknown (the sample waited on the server)";
const SAMPLE_BLOCKED_NS: u64 = 50_000_000;

/// The job of a child process: `kind|ports|dir|history file|first thread id|secs|seed`.
fn child_job(spec: &str) {
    let f: Vec<&str> = spec.split('|').collect();
    let kind = Kind::parse(f[0]);
    let ports: Vec<u16> = f[1].split(',').map(|p| p.parse().unwrap()).collect();
    let (dir, out) = (Path::new(f[2]), Path::new(f[3]));
    let first: u32 = f[4].parse().unwrap();
    let secs: f64 = f[5].parse().unwrap();
    let seed: u64 = f[6].parse().unwrap();
    let clock = Clock::new();
    let cache = CacheManager::new(config(kind, &ports, dir)).unwrap();
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let stop = AtomicBool::new(false);
    let (ops, states): (Vec<Op>, _) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..CHILD_THREADS)
            .map(|t| {
                let cache = &cache;
                s.spawn(move || work(cache, first + t, clock, until, &[], seed))
            })
            .collect();
        let sampler = s.spawn(|| sample_states(&cache, clock, &stop));
        let ops = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        (ops, sampler.join().unwrap())
    });
    let text: String = ops.iter().map(|o| to_json_line(o) + "\n").collect();
    std::fs::write(out, text).unwrap();
    let text: String = states.iter().map(|(t, s)| format!("{t}\t{s}\n")).collect();
    std::fs::write(out.with_extension("states"), text).unwrap();
}

/// Runs the soak: `servers` servers of `kind`, the parent's threads, chaos, and (when
/// `test` names this test) child processes one after another; then checks the history.
fn soak(kind: Kind, servers: usize, children_of: Option<&str>) {
    let ports: Vec<u16> = (0..servers).map(|_| free_port()).collect();
    let mut fleet = Vec::new();
    for &p in &ports {
        let Some(s) = Server::start_on(kind, p) else {
            return;
        };
        fleet.push(s);
    }
    let dir = tempfile::tempdir().unwrap();
    let histories = tempfile::tempdir().unwrap();
    let seed = seed();
    let duration = soak_duration();
    let name = format!(
        "{}{}",
        kind.name(),
        if children_of.is_some() {
            "+processes"
        } else {
            ""
        }
    );
    eprintln!("soak {name}: seed {seed} (DDF_SOAK_SEED), {duration:?}");
    let clock = Clock::new();
    let cache = CacheManager::new(config(kind, &ports, dir.path())).unwrap();
    let until = Instant::now() + duration;
    let naps = naps(Instant::now(), until, &mut Rng::new(seed ^ 0x5EE9));
    let stop = AtomicBool::new(false);
    let children = AtomicU64::new(0);
    let child_files = Mutex::new(Vec::new());
    let (mut history, faults, parent_states) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (cache, naps) = (&cache, &naps);
                s.spawn(move || work(cache, t, clock, until, naps, seed))
            })
            .collect();
        let spawner = children_of.map(|test| {
            let (ports, dir, histories) = (&ports, dir.path(), histories.path());
            let (children, child_files) = (&children, &child_files);
            s.spawn(move || {
                let mut rng = Rng::new(seed ^ 0xC41D);
                while Instant::now() + Duration::from_millis(300) < until {
                    let n = children.fetch_add(1, Ordering::Relaxed) as u32;
                    let out = histories.join(format!("child-{n}.jsonl"));
                    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                    let secs = rng.millis(200, 1200).as_secs_f64();
                    let job = format!(
                        "{}|{}|{}|{}|{}|{secs}|{}",
                        kind.name(),
                        ports.join(","),
                        dir.display(),
                        out.display(),
                        100 * (n + 1),
                        seed.wrapping_add(u64::from(n) + 1),
                    );
                    let c = process::child(test, CHILD, &job)
                        .arg("--include-ignored")
                        .spawn()
                        .unwrap();
                    process::check(c, "soak child");
                    child_files.lock().unwrap().push(out);
                    // A gap without children: an outage value left in the fallback stays there.
                    std::thread::sleep(rng.millis(0, 2000));
                }
            })
        });
        let sampler = s.spawn(|| sample_states(&cache, clock, &stop));
        let chaos_thread = {
            let (stop, ports) = (&stop, &ports);
            let fleet = &mut fleet;
            s.spawn(move || {
                chaos(
                    kind,
                    fleet,
                    ports,
                    clock,
                    stop,
                    &mut Rng::new(seed ^ 0xC4A05),
                )
            })
        };
        let mut ops: Vec<Op> = Vec::new();
        for w in workers {
            ops.extend(w.join().unwrap());
        }
        if let Some(sp) = spawner {
            sp.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        (ops, chaos_thread.join().unwrap(), sampler.join().unwrap())
    });
    let mut states = HashMap::from([(0, parent_states)]);
    for (n, f) in child_files.into_inner().unwrap().iter().enumerate() {
        let text = std::fs::read_to_string(f).unwrap();
        history.extend(text.lines().map(from_json_line));
        let text = std::fs::read_to_string(f.with_extension("states")).unwrap();
        let timeline = text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(t, s)| (t.parse().unwrap(), s.to_string()))
            .collect();
        states.insert(n as u32 + 1, timeline);
    }
    let context = Context { faults, states };
    let worst = Duration::from_nanos(history.iter().map(|o| o.end - o.start).max().unwrap_or(0));
    let grace = model::Grace {
        window: GRACE.as_nanos() as u64,
        recorded: history
            .iter()
            .map(|op| maybe_recorded(op, &context))
            .collect(),
        process_of: |t| t / 100,
    };
    let report = model::check_with(&history, Some(&grace));
    println!(
        "soak summary: backend={name} ops={} faults={} violations={} hits={} misses={} \
         errors={} processes={} worst_call_ms={} secs={}",
        history.len(),
        context.faults.len(),
        report.violations.len(),
        report.hits,
        report.misses,
        report.errors,
        1 + children.load(Ordering::Relaxed),
        worst.as_millis(),
        duration.as_secs_f64()
    );
    if report.is_ok() {
        return;
    }
    let text = render(&report, &history, &context, 10);
    if let Some(dir) = std::env::var_os(REPORT) {
        let path = Path::new(&dir).join(format!("soak-{name}-{seed}.txt"));
        let full = render(&report, &history, &context, usize::MAX);
        std::fs::write(&path, full).unwrap();
        let mut sorted: Vec<&Op> = history.iter().collect();
        sorted.sort_by_key(|o| o.start);
        let lines: String = sorted.iter().map(|o| to_json_line(o) + "\n").collect();
        std::fs::write(path.with_extension("history.jsonl"), lines).unwrap();
        let mut states: Vec<String> = Vec::new();
        for (p, timeline) in &context.states {
            states.extend(
                timeline
                    .iter()
                    .map(|(t, s)| format!("{t}\tprocess {p}\t{s}")),
            );
        }
        states.sort();
        std::fs::write(path.with_extension("states"), states.join("\n")).unwrap();
        eprintln!(
            "soak {name}: full report in {} (with the history and the states beside it)",
            path.display()
        );
    }
    panic!(
        "soak {name} (seed {seed}): {} of {} reads returned a value they may not:\n{text}",
        report.violations.len(),
        report.hits
    );
}

/// How late a removal that a process recorded during its outage may reach the other processes:
/// `breaker_retry` (0.1 s here: their watcher's interval) plus the time it takes to apply it
/// on a loaded machine, counted from the removal's end or its server's return
/// ([`maybe_recorded`]). The README promises "within `breaker_retry`" of the server answering
/// again.
const GRACE: Duration = Duration::from_millis(300);

/// Whether `op` may have been recorded (its process was not up, or it failed on the server)
/// rather than made on the server: it took long enough to have met a timeout, or its process's
/// state at its start is unknown or not up, or a change of state (transitions counted) was
/// sampled from its start to just after its end. States are sampled every 10 ms with the
/// number of transitions, so even an outage shorter than that leaves a change behind it.
/// Reads are never recorded.
///
/// When it may have been, the time from which the other processes' watchers can apply it: its
/// end, or the end of a fault going on then (the server answers again; the README promises the
/// removal within `breaker_retry` of that). Which server a key lives on is not tracked, so any
/// server's fault counts.
fn maybe_recorded(op: &Op, context: &Context) -> Option<u64> {
    if !may_be_recorded(op, context) {
        return None;
    }
    let back = context
        .faults
        .iter()
        .filter(|f| f.start <= op.end && op.end < f.end)
        .map(|f| f.end)
        .max();
    Some(back.unwrap_or(op.end))
}

/// The first half of [`maybe_recorded`]: whether `op` may have been recorded at all.
fn may_be_recorded(op: &Op, context: &Context) -> bool {
    if matches!(op.action, Action::Get { .. }) {
        return false;
    }
    if op.end - op.start >= 100_000_000 {
        return true;
    }
    let Some(timeline) = context.states.get(&(op.thread / 100)) else {
        return true;
    };
    let at_start = timeline.partition_point(|(t, _)| *t <= op.start);
    let Some(first) = at_start.checked_sub(1) else {
        return true;
    };
    let changed = timeline
        .get(at_start)
        .is_some_and(|(t, _)| *t <= op.end + 30_000_000);
    changed || !timeline[first].1.starts_with("up")
}

/// Which process a thread id belongs to: the parent's threads are below 100, child `n`'s are
/// `100 * (n + 1) + t`.
fn process_of(thread: u32) -> String {
    match thread / 100 {
        0 => "the parent".to_string(),
        n => format!("child {}", n - 1),
    }
}

/// What the soak knows beside the history: the faults it injected, and each process's breaker
/// states over time (by process: 0 the parent, `n + 1` child `n`).
struct Context {
    faults: Vec<Fault>,
    states: HashMap<u32, Vec<(u64, String)>>,
}

/// The state of `thread`'s process from just before `from` to `to`.
fn states_between(context: &Context, thread: u32, from: u64, to: u64) -> String {
    let Some(timeline) = context.states.get(&(thread / 100)) else {
        return "unknown".to_string();
    };
    let first = timeline
        .partition_point(|(t, _)| *t <= from)
        .saturating_sub(1);
    let seen: Vec<&str> = timeline[first..]
        .iter()
        .take_while(|(t, _)| *t <= to)
        .map(|(_, s)| s.as_str())
        .collect();
    if seen.is_empty() {
        "unknown".to_string()
    } else {
        seen.join(" -> ")
    }
}

/// The checker's report with, for each violation, the state of the reading process (sampled
/// every 10 ms) and the faults injected between its write and its read (and in the second
/// before).
fn render(report: &model::Report, history: &[Op], context: &Context, max: usize) -> String {
    let origin = history.iter().map(|o| o.start).min().unwrap_or(0);
    let ms = |t: u64| t.saturating_sub(origin) as f64 / 1e6;
    let mut out = String::new();
    for v in report.violations.iter().take(max) {
        let one = model::Report {
            violations: vec![v.clone()],
            ..Default::default()
        };
        // Rendering the whole history for each keeps the times relative to one origin.
        let text = one.render(history, 1);
        out.push_str(&text.replacen("violation 1:", "violation:", 1));
        let read = &history[v.read()];
        if let Violation::Stale { write, removal, .. } = v {
            out.push_str(&format!(
                "  processes: read by {}, written by {}, removed by {}\n",
                process_of(read.thread),
                process_of(history[*write].thread),
                process_of(history[*removal].thread)
            ));
        }
        if let Violation::BeforeWrite { write, .. } = v {
            out.push_str(&format!(
                "  processes: read by {}, written by {}\n",
                process_of(read.thread),
                process_of(history[*write].thread)
            ));
        }
        let from = match v {
            Violation::Stale { write, .. } => history[*write].start,
            Violation::Phantom { .. } | Violation::BeforeWrite { .. } => read.start,
        }
        .saturating_sub(1_000_000_000);
        out.push_str(&format!(
            "  state of the reading process from the write to the read: {}\n",
            states_between(context, read.thread, from + 1_000_000_000, read.end)
        ));
        let near: Vec<&Fault> = context
            .faults
            .iter()
            .filter(|f| f.end >= from && f.start <= read.end)
            .collect();
        if near.is_empty() {
            out.push_str("  faults: none from 1 s before the write to the read\n");
        }
        for f in near {
            out.push_str(&format!(
                "  fault   [{:>10.3} .. {:>10.3} ms] {}\n",
                ms(f.start),
                ms(f.end),
                f.what
            ));
        }
    }
    if report.violations.len() > max {
        out.push_str(&format!(
            "... and {} more violations\n",
            report.violations.len() - max
        ));
    }
    out
}

/// The checker can fail: a history recorded the way the soak records one (through its JSON
/// lines), with a read of a value deleted before the read began, is caught and reported with
/// the delete and the fault.
#[test]
fn a_recorded_stale_read_is_caught() {
    let ms = 1_000_000u64;
    let t0 = 1_700_000_000_000_000_000u64;
    let history = vec![
        Op::set(0, "p1:k1", "t0-1", t0, t0 + ms),
        Op::get(
            1,
            "p1:k1",
            Outcome::Ok(Some("t0-1".into())),
            t0 + 2 * ms,
            t0 + 3 * ms,
        ),
        Op::delete(100, "p1:k1", t0 + 5 * ms, t0 + 305 * ms),
        Op::set(2, "p1:k2", "t2-1", t0 + 6 * ms, t0 + 7 * ms)
            .with(Outcome::Err("timed out".into())),
        Op::get(
            1,
            "p1:k1",
            Outcome::Err("timed out".into()),
            t0 + 8 * ms,
            t0 + 9 * ms,
        ),
        // Stale: the delete ended 5 ms before this read began.
        Op::get(
            1,
            "p1:k1",
            Outcome::Ok(Some("t0-1".into())),
            t0 + 310 * ms,
            t0 + 311 * ms,
        ),
        // Legal: the failed set may have landed.
        Op::get(
            3,
            "p1:k2",
            Outcome::Ok(Some("t2-1".into())),
            t0 + 320 * ms,
            t0 + 321 * ms,
        ),
    ];
    let lines: Vec<String> = history.iter().map(to_json_line).collect();
    let parsed: Vec<Op> = lines.iter().map(|l| from_json_line(l)).collect();
    assert_eq!(parsed, history, "JSON lines round-trip");
    let report = model::check(&parsed);
    assert_eq!(
        report.violations,
        [Violation::Stale {
            read: 5,
            write: 0,
            removal: 2
        }]
    );
    let context = Context {
        faults: vec![Fault {
            start: t0 + 4 * ms,
            end: t0 + 200 * ms,
            what: "SIGSTOP, SIGCONT of server 0".into(),
        }],
        states: HashMap::from([(0, vec![(t0, "up (transitions 0)".to_string())])]),
    };
    let text = render(&report, &parsed, &context, 10);
    assert!(
        text.contains("stale read: get(p1:k1) returned t0-1"),
        "{text}"
    );
    assert!(text.contains("t100  delete(p1:k1) -> ok"), "{text}");
    assert!(text.contains("SIGSTOP, SIGCONT of server 0"), "{text}");
    assert!(
        text.contains("reading process from the write to the read: up"),
        "{text}"
    );
}

#[test]
fn redis() {
    soak(Kind::Redis, 1, None);
}

#[test]
fn memcached() {
    soak(Kind::Memcached, 3, None);
}

#[test]
fn redis_processes() {
    if let Some(job) = process::job(CHILD) {
        return child_job(&job);
    }
    soak(Kind::Redis, 1, Some("soak::redis_processes"));
}

#[test]
fn memcached_processes() {
    if let Some(job) = process::job(CHILD) {
        return child_job(&job);
    }
    soak(Kind::Memcached, 3, Some("soak::memcached_processes"));
}
