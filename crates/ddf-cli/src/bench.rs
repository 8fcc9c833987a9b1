//! `ddf-cache bench`: per-operation latency (median, p99) and throughput on the configured
//! backend, with a progress bar on a terminal and `--json` for machines.
//!
//! A benchmark never touches the cache's real entries: it runs in a namespace of its own under
//! the configured one (`<namespace>ddf-bench:`), gives every key a TTL ([`KEY_TTL`]), removes
//! what an earlier interrupted run left there when it starts, and removes everything it wrote
//! when it ends, also on SIGINT or SIGTERM (a second signal exits at once). Two benchmarks on
//! one namespace at once disturb each other.
//!
//! Both faces go through one driver ([`measure`] over a [`Face`]: threads of the sync face,
//! or with `--async` tasks of the async face, [`tasks`]) and one [`Table`].

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use ddf::CacheManager;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::BenchArgs;

mod tasks;

/// The TTL of every key the benchmark writes: what an interrupted run could not remove (a
/// `kill -9`) expires.
pub const KEY_TTL: Duration = Duration::from_secs(3600);

/// The namespace the benchmark runs in, under the configured one.
pub fn namespace(configured: &str) -> String {
    format!("{configured}ddf-bench:")
}

/// Set by SIGINT or SIGTERM while a benchmark runs.
static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn stopped() -> bool {
    STOP.get().is_some_and(|s| s.load(Ordering::Relaxed))
}

/// The benchmark was interrupted by a signal; what it wrote was removed.
#[derive(Debug)]
pub struct Interrupted {
    /// What the cleanup removed.
    pub removed: u64,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bench interrupted; removed the {} keys it had written",
            self.removed
        )
    }
}

impl std::error::Error for Interrupted {}

/// Turns SIGINT and SIGTERM into [`stopped`] (once per process); a second one exits at once
/// (130 or 143).
fn catch_signals() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for (sig, code) in [(SIGINT, 130), (SIGTERM, 143)] {
        signal_hook::flag::register_conditional_shutdown(sig, code, flag.clone())
            .context("cannot catch SIGINT/SIGTERM")?;
        signal_hook::flag::register(sig, flag.clone()).context("cannot catch SIGINT/SIGTERM")?;
    }
    let _ = STOP.set(flag);
    Ok(())
}

/// One line of the table: a measured operation, or a peer's figure.
pub(crate) struct Row {
    pub(crate) op: String,
    /// Operations (keys for the batch forms).
    pub(crate) ops: usize,
    /// Latency of each call (a peer may give only its median, or neither).
    pub(crate) median: Option<Duration>,
    pub(crate) p99: Option<Duration>,
    /// Keys per second over the whole run, all workers together.
    pub(crate) per_sec: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The measured operations, in the order of the table; both faces run the same list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Set,
    GetHit,
    GetMiss,
    Delete,
    SetMany,
    GetMany,
    DeleteMany,
}

impl Op {
    pub(crate) const ALL: [Op; 7] = [
        Op::Set,
        Op::GetHit,
        Op::GetMiss,
        Op::Delete,
        Op::SetMany,
        Op::GetMany,
        Op::DeleteMany,
    ];

    /// Whether a call handles a batch of keys.
    fn is_batch(self) -> bool {
        matches!(self, Op::SetMany | Op::GetMany | Op::DeleteMany)
    }

    fn name(self, batch: usize) -> String {
        match self {
            Op::Set => "set".into(),
            Op::GetHit => "get (hit)".into(),
            Op::GetMiss => "get (miss)".into(),
            Op::Delete => "delete".into(),
            Op::SetMany => format!("set_many ({batch})"),
            Op::GetMany => format!("get_many ({batch})"),
            Op::DeleteMany => format!("delete_many ({batch})"),
        }
    }
}

/// The keys and the value of one run: worker `t`'s call `i` (or batch `i`) uses its own keys,
/// under a prefix of this process.
#[derive(Clone)]
pub(crate) struct Plan {
    prefix: String,
    pub(crate) batch: usize,
    pub(crate) value: String,
    /// Calls per worker of a single-key operation.
    pub(crate) calls: usize,
}

impl Plan {
    pub(crate) fn key(&self, t: usize, i: usize) -> String {
        format!("{}{t}:{i}", self.prefix)
    }

    pub(crate) fn absent(&self, t: usize, i: usize) -> String {
        format!("{}absent:{t}:{i}", self.prefix)
    }

    pub(crate) fn batch_keys(&self, t: usize, b: usize) -> Vec<String> {
        (0..self.batch)
            .map(|j| format!("{}b{t}:{}", self.prefix, b * self.batch + j))
            .collect()
    }

    /// Calls per worker of `op` (a batch op: as many keys as the single-key ops in all).
    fn calls_of(&self, op: Op) -> usize {
        if op.is_batch() {
            self.calls.div_ceil(self.batch)
        } else {
            self.calls
        }
    }

    /// Progress-bar steps of one measurement of every op with `workers` workers.
    fn steps(&self, workers: usize) -> usize {
        Op::ALL.iter().map(|op| self.calls_of(*op)).sum::<usize>() * workers
    }
}

/// A face under measurement: runs `calls` calls of an op on each of `workers` workers (threads
/// or tasks), each recording the latency of its calls, and stops early once [`stopped`].
pub(crate) trait Face {
    /// How a row names its workers: `[2t]` (threads), `[64 tasks]`.
    fn tag(&self, workers: usize) -> String;

    /// Each worker's latencies, or the error that stopped it.
    fn run(
        &self,
        plan: &Plan,
        op: Op,
        workers: usize,
        calls: usize,
        bar: &ProgressBar,
    ) -> Vec<ddf::Result<Vec<Duration>>>;
}

/// Measures `op` with `workers` workers of `face` (the one driver both faces share).
pub(crate) fn measure(
    face: &dyn Face,
    plan: &Plan,
    op: Op,
    workers: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Row> {
    let name = format!("{} {}", op.name(plan.batch), face.tag(workers));
    bar.set_message(name.clone());
    let calls = plan.calls_of(op);
    let start = Instant::now();
    let results = face.run(plan, op, workers, calls, bar);
    let wall = start.elapsed();
    let mut all = Vec::with_capacity(calls * workers);
    for r in results {
        all.extend(r.with_context(|| format!("bench: {name} failed"))?);
    }
    all.sort_unstable();
    let ops = all.len() * if op.is_batch() { plan.batch } else { 1 };
    Ok(Row {
        op: name,
        ops,
        median: Some(percentile(&all, 0.5)),
        p99: Some(percentile(&all, 0.99)),
        per_sec: ops as f64 / wall.as_secs_f64().max(1e-9),
    })
}

/// Every op of the list with each worker count, in order (a set fills what the gets read).
pub(crate) fn measure_all(
    face: &dyn Face,
    plan: &Plan,
    counts: &[usize],
    bar: &ProgressBar,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &workers in counts {
        for op in Op::ALL {
            rows.push(measure(face, plan, op, workers, bar)?);
        }
    }
    Ok(rows)
}

/// The sync face: `workers` threads.
pub(crate) struct Threads<'a>(pub(crate) &'a CacheManager);

impl Threads<'_> {
    fn call(&self, plan: &Plan, op: Op, t: usize, i: usize) -> ddf::Result<()> {
        let cache = self.0;
        let ttl = Some(KEY_TTL);
        match op {
            Op::Set => cache.set(&plan.key(t, i), &plan.value, ttl),
            Op::GetHit => cache.get::<String>(&plan.key(t, i)).map(drop),
            Op::GetMiss => cache.get::<String>(&plan.absent(t, i)).map(drop),
            Op::Delete => cache.delete(&plan.key(t, i)).map(drop),
            Op::SetMany => {
                let keys = plan.batch_keys(t, i);
                let items: Vec<(&str, &str)> = keys
                    .iter()
                    .map(|k| (k.as_str(), plan.value.as_str()))
                    .collect();
                cache.set_many(&items, ttl)
            }
            Op::GetMany => {
                let keys = plan.batch_keys(t, i);
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                cache.get_many::<String>(&refs).map(drop)
            }
            Op::DeleteMany => {
                let keys = plan.batch_keys(t, i);
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                cache.delete_many(&refs).map(drop)
            }
        }
    }
}

impl Face for Threads<'_> {
    fn tag(&self, workers: usize) -> String {
        format!("[{workers}t]")
    }

    fn run(
        &self,
        plan: &Plan,
        op: Op,
        workers: usize,
        calls: usize,
        bar: &ProgressBar,
    ) -> Vec<ddf::Result<Vec<Duration>>> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|t| {
                    s.spawn(move || {
                        let mut lat = Vec::with_capacity(calls);
                        for i in 0..calls {
                            if stopped() {
                                break;
                            }
                            let t0 = Instant::now();
                            self.call(plan, op, t, i)?;
                            lat.push(t0.elapsed());
                            tick(bar, i);
                        }
                        Ok(lat)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Ok(Vec::new())))
                .collect()
        })
    }
}

/// Advances the progress bar every 64 calls of a worker.
pub(crate) fn tick(bar: &ProgressBar, i: usize) {
    if i % 64 == 63 {
        bar.inc(64);
    }
}

/// A benchmark's namespace, its keys and its progress bar; removes what it wrote when it ends.
pub(crate) struct Session {
    /// The sync face in the benchmark's namespace.
    pub(crate) cache: CacheManager,
    pub(crate) plan: Plan,
    pub(crate) bar: ProgressBar,
}

impl Session {
    /// Catches signals, opens the benchmark's namespace and removes what an earlier
    /// interrupted run left there; `steps` sizes the progress bar, given the plan.
    pub(crate) fn open(
        configured: &CacheManager,
        args: &BenchArgs,
        steps: impl FnOnce(&Plan) -> usize,
    ) -> anyhow::Result<Session> {
        catch_signals()?;
        let ns = namespace(&configured.config().namespace);
        let cache = CacheManager::new(configured.config().clone().with_namespace(ns.clone()))?;
        let left = cache
            .invalidate_pattern("")
            .context("bench: cannot remove what an earlier run left")?;
        if left > 0 {
            eprintln!("ddf-cache: removed {left} keys an earlier interrupted bench left in {ns:?}");
        }
        let plan = Plan {
            prefix: format!("{}:", std::process::id()),
            batch: args.batch.max(1),
            value: "x".repeat(args.value_size),
            calls: args.ops.max(1),
        };
        let bar =
            ProgressBar::with_draw_target(Some(steps(&plan) as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg:<24} [{bar:30}] {pos}/{len}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Ok(Session { cache, plan, bar })
    }

    /// Removes everything the run wrote (whatever `result` is), then gives `result`, or
    /// [`Interrupted`] after a signal.
    pub(crate) fn close<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        self.bar.set_message("removing what it wrote");
        let cleanup = self.cache.invalidate_pattern("");
        self.bar.finish_and_clear();
        if stopped() {
            return Err(Interrupted { removed: cleanup? }.into());
        }
        let out = result?;
        cleanup?;
        Ok(out)
    }
}

/// Runs the benchmark in its own namespace under `configured`'s (see the module docs); with
/// `--async`, the async face's ([`tasks`]).
///
/// # Errors
/// [`Interrupted`] after SIGINT/SIGTERM (what it wrote removed); the cache's errors.
pub fn run(
    configured: &CacheManager,
    args: &BenchArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if args.r#async {
        return tasks::run(configured, args, out);
    }
    let thread_counts: Vec<usize> = if args.threads.is_empty() {
        vec![1]
    } else {
        args.threads.iter().map(|t| (*t).max(1)).collect()
    };
    let fill = args.among;
    let session = Session::open(configured, args, |plan| {
        thread_counts.iter().map(|t| plan.steps(*t)).sum::<usize>() + fill
    })?;
    let (cache, plan, bar) = (&session.cache, &session.plan, &session.bar);
    let result = (|| -> anyhow::Result<Vec<Row>> {
        let mut rows = measure_all(&Threads(cache), plan, &thread_counts, bar)?;
        if fill > 0 {
            rows.push(invalidate_among(
                cache,
                &plan.prefix,
                &plan.value,
                args.invalidate.min(fill),
                fill,
                bar,
            )?);
        }
        Ok(rows)
    })();
    let rows = session.close(result)?;
    let table = Table {
        backend: cache.backend_name(),
        codec: cache.codec().name(),
        workers: ("threads", &thread_counts),
        stats: cache.stats(),
        rows: &rows,
        ratios: &[],
    };
    table.print(args, out)
}

/// Fills `among` keys, `matching` of them under one prefix, then times one
/// `invalidate_pattern` of that prefix.
fn invalidate_among(
    cache: &CacheManager,
    prefix: &str,
    value: &str,
    matching: usize,
    among: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Row> {
    bar.set_message("fill for invalidate");
    let keys: Vec<String> = (0..among)
        .map(|i| {
            if i < matching {
                format!("{prefix}inv:{i}")
            } else {
                format!("{prefix}keep:{i}")
            }
        })
        .collect();
    for chunk in keys.chunks(500) {
        if stopped() {
            break;
        }
        let items: Vec<(&str, &str)> = chunk.iter().map(|k| (k.as_str(), value)).collect();
        cache.set_many(&items, Some(KEY_TTL))?;
        bar.inc(chunk.len() as u64);
    }
    bar.set_message("invalidate");
    let t0 = Instant::now();
    let removed = cache.invalidate_pattern(&format!("{prefix}inv:"))?;
    let took = t0.elapsed();
    Ok(Row {
        op: format!("invalidate ({removed} of {among})"),
        ops: removed as usize,
        median: Some(took),
        p99: Some(took),
        per_sec: removed as f64 / took.as_secs_f64().max(1e-9),
    })
}

/// What a run prints: its rows, and the ratios that set them against their baselines.
pub(crate) struct Table<'a> {
    pub(crate) backend: &'static str,
    pub(crate) codec: &'static str,
    /// What the counts count (`threads`, `tasks`) and the counts.
    pub(crate) workers: (&'static str, &'a [usize]),
    /// The measured face's counters.
    pub(crate) stats: ddf::CacheStats,
    pub(crate) rows: &'a [Row],
    /// (what is compared, the ratio).
    pub(crate) ratios: &'a [(String, f64)],
}

impl Table<'_> {
    fn print(&self, args: &BenchArgs, out: &mut impl Write) -> anyhow::Result<()> {
        let us = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e6);
        let (unit, counts) = self.workers;
        if args.json {
            let results: Vec<serde_json::Value> = self
                .rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "op": r.op,
                        "ops": r.ops,
                        "median_us": us(r.median),
                        "p99_us": us(r.p99),
                        "ops_per_sec": r.per_sec,
                    })
                })
                .collect();
            let ratios: Vec<serde_json::Value> = self
                .ratios
                .iter()
                .map(|(what, ratio)| serde_json::json!({ "what": what, "ratio": ratio }))
                .collect();
            let doc = serde_json::json!({
                "backend": self.backend,
                "codec": self.codec,
                "value_size": args.value_size,
                unit: counts,
                format!("ops_per_{}", unit.trim_end_matches('s')): args.ops,
                "results": results,
                "ratios": ratios,
                "calls": calls_json(&self.stats),
            });
            writeln!(out, "{doc}")?;
            return Ok(());
        }
        let one = unit.trim_end_matches('s');
        writeln!(
            out,
            "backend {} (codec {}), {}-byte values, {} ops per {one}; [Nt] = N threads (the \
             sync face), [N tasks] = the async face",
            self.backend, self.codec, args.value_size, args.ops
        )?;
        writeln!(
            out,
            "{:<34} {:>12} {:>12} {:>14}",
            "operation", "median", "p99", "keys/s"
        )?;
        for r in self.rows {
            writeln!(
                out,
                "{:<34} {:>12} {:>12} {:>14.0}",
                r.op,
                fmt_dur(r.median),
                fmt_dur(r.p99),
                r.per_sec
            )?;
        }
        for (what, ratio) in self.ratios {
            writeln!(out, "{what}: {ratio:.2}")?;
        }
        writeln!(out, "calls: {}", self.stats)?;
        if self.stats.fallback > 0 {
            writeln!(
                out,
                "note: {} calls were answered by the fallback (the server was down or failing): \
                 these figures are not the server's",
                self.stats.fallback
            )?;
        }
        Ok(())
    }
}

/// The manager's counters of the run, for `--json`.
fn calls_json(s: &ddf::CacheStats) -> serde_json::Value {
    serde_json::json!({
        "hits": s.hits,
        "misses": s.misses,
        "sets": s.sets,
        "deletes": s.deletes,
        "invalidated": s.invalidated,
        "errors": s.errors,
        "fallback": s.fallback,
    })
}

fn fmt_dur(d: Option<Duration>) -> String {
    let Some(d) = d else {
        return "-".into();
    };
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}
