//! `ddf-cache bench`: per-operation latency (median, p99) and throughput on the configured
//! backend, with a progress bar on a terminal and `--json` for machines.
//!
//! A benchmark never touches the cache's real entries: it runs in a namespace of its own under
//! the configured one (`<namespace>ddf-bench:`), gives every key a TTL ([`KEY_TTL`]), removes
//! what an earlier interrupted run left there when it starts, and removes everything it wrote
//! when it ends, also on SIGINT or SIGTERM (a second signal exits at once). Two benchmarks on
//! one namespace at once disturb each other.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use ddf::CacheManager;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::BenchArgs;

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

/// One measured operation.
struct Row {
    op: String,
    /// Operations (keys for the batch forms).
    ops: usize,
    /// Latency of each call.
    median: Duration,
    p99: Duration,
    /// Keys per second over the whole run, all threads together.
    per_sec: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Runs `calls` calls of `f(thread, i)` on each of `threads` threads; each call handles
/// `keys_per_call` keys.
fn measure(
    name: &str,
    threads: usize,
    calls: usize,
    keys_per_call: usize,
    bar: &ProgressBar,
    f: &(dyn Fn(usize, usize) -> ddf::Result<()> + Sync),
) -> anyhow::Result<Row> {
    bar.set_message(name.to_owned());
    let start = Instant::now();
    let results: Vec<ddf::Result<Vec<Duration>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(calls);
                    for i in 0..calls {
                        if stopped() {
                            break;
                        }
                        let t0 = Instant::now();
                        f(t, i)?;
                        lat.push(t0.elapsed());
                        if i % 64 == 63 {
                            bar.inc(64);
                        }
                    }
                    Ok(lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Ok(Vec::new())))
            .collect()
    });
    let wall = start.elapsed();
    let mut all = Vec::with_capacity(calls * threads);
    for r in results {
        all.extend(r.with_context(|| format!("bench: {name} failed"))?);
    }
    all.sort_unstable();
    let ops = calls * threads * keys_per_call;
    Ok(Row {
        op: name.to_owned(),
        ops,
        median: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        per_sec: ops as f64 / wall.as_secs_f64().max(1e-9),
    })
}

/// Runs the benchmark in its own namespace under `configured`'s (see the module docs).
///
/// # Errors
/// [`Interrupted`] after SIGINT/SIGTERM (what it wrote removed); the cache's errors.
pub fn run(
    configured: &CacheManager,
    args: &BenchArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    catch_signals()?;
    let ns = namespace(&configured.config().namespace);
    let cache = &CacheManager::new(configured.config().clone().with_namespace(ns.clone()))?;
    let left = cache
        .invalidate_pattern("")
        .context("bench: cannot remove what an earlier run left")?;
    if left > 0 {
        eprintln!("ddf-cache: removed {left} keys an earlier interrupted bench left in {ns:?}");
    }
    let ttl = Some(KEY_TTL);
    let n = args.ops.max(1);
    let batch = args.batch.max(1);
    let batches = n.div_ceil(batch);
    let thread_counts: Vec<usize> = if args.threads.is_empty() {
        vec![1]
    } else {
        args.threads.iter().map(|t| (*t).max(1)).collect()
    };
    let prefix = format!("{}:", std::process::id());
    let value = "x".repeat(args.value_size);
    let key = |t: usize, i: usize| format!("{prefix}{t}:{i}");
    let batch_keys = |t: usize, b: usize| -> Vec<String> {
        (0..batch)
            .map(|j| format!("{prefix}b{t}:{}", b * batch + j))
            .collect()
    };

    let fill = if args.among > 0 { args.among } else { 0 };
    let total: usize = thread_counts
        .iter()
        .map(|t| (4 * n + 3 * batches) * t)
        .sum::<usize>()
        + fill;
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:<24} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );

    let mut rows = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for &threads in &thread_counts {
            let tag = |op: &str| format!("{op} [{threads}t]");
            rows.push(measure(&tag("set"), threads, n, 1, &bar, &|t, i| {
                cache.set(&key(t, i), &value, ttl)
            })?);
            rows.push(measure(&tag("get (hit)"), threads, n, 1, &bar, &|t, i| {
                cache.get::<String>(&key(t, i)).map(|_| ())
            })?);
            rows.push(measure(
                &tag("get (miss)"),
                threads,
                n,
                1,
                &bar,
                &|t, i| {
                    cache
                        .get::<String>(&format!("{prefix}absent:{t}:{i}"))
                        .map(|_| ())
                },
            )?);
            rows.push(measure(&tag("delete"), threads, n, 1, &bar, &|t, i| {
                cache.delete(&key(t, i)).map(|_| ())
            })?);
            rows.push(measure(
                &tag(&format!("set_many ({batch})")),
                threads,
                batches,
                batch,
                &bar,
                &|t, b| {
                    let keys = batch_keys(t, b);
                    let items: Vec<(&str, &str)> =
                        keys.iter().map(|k| (k.as_str(), value.as_str())).collect();
                    cache.set_many(&items, ttl)
                },
            )?);
            rows.push(measure(
                &tag(&format!("get_many ({batch})")),
                threads,
                batches,
                batch,
                &bar,
                &|t, b| {
                    let keys = batch_keys(t, b);
                    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                    cache.get_many::<String>(&refs).map(|_| ())
                },
            )?);
            rows.push(measure(
                &tag(&format!("delete_many ({batch})")),
                threads,
                batches,
                batch,
                &bar,
                &|t, b| {
                    let keys = batch_keys(t, b);
                    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                    cache.delete_many(&refs).map(|_| ())
                },
            )?);
        }
        if fill > 0 {
            rows.push(invalidate_among(
                cache,
                &prefix,
                &value,
                args.invalidate.min(fill),
                fill,
                &bar,
            )?);
        }
        Ok(())
    })();
    // Leave nothing behind, whatever happened.
    bar.set_message("removing what it wrote");
    let cleanup = cache.invalidate_pattern("");
    bar.finish_and_clear();
    if stopped() {
        return Err(Interrupted { removed: cleanup? }.into());
    }
    result?;
    cleanup?;
    print(cache, args, &thread_counts, &rows, out)
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
        median: took,
        p99: took,
        per_sec: removed as f64 / took.as_secs_f64().max(1e-9),
    })
}

fn print(
    cache: &CacheManager,
    args: &BenchArgs,
    threads: &[usize],
    rows: &[Row],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if args.json {
        let results: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "op": r.op,
                    "ops": r.ops,
                    "median_us": r.median.as_secs_f64() * 1e6,
                    "p99_us": r.p99.as_secs_f64() * 1e6,
                    "ops_per_sec": r.per_sec,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "backend": cache.backend_name(),
            "codec": cache.codec().name(),
            "value_size": args.value_size,
            "threads": threads,
            "ops_per_thread": args.ops,
            "results": results,
            "calls": calls_json(&cache.stats()),
        });
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    writeln!(
        out,
        "backend {} (codec {}), {}-byte values, {} ops per thread; [Nt] = N threads",
        cache.backend_name(),
        cache.codec().name(),
        args.value_size,
        args.ops
    )?;
    writeln!(
        out,
        "{:<30} {:>12} {:>12} {:>14}",
        "operation", "median", "p99", "keys/s"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<30} {:>12} {:>12} {:>14.0}",
            r.op,
            fmt_dur(r.median),
            fmt_dur(r.p99),
            r.per_sec
        )?;
    }
    let stats = cache.stats();
    writeln!(out, "calls: {stats}")?;
    if stats.fallback > 0 {
        writeln!(
            out,
            "note: {} calls were answered by the fallback (the server was down or failing): \
             these figures are not the server's",
            stats.fallback
        )?;
    }
    Ok(())
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

fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}
