//! `ddf-cache`: inspect, set, invalidate, flush, ping and benchmark a ddf cache.
//!
//! A thin binary (ripgrep's shape): parse arguments, build the cache from the usual
//! configuration sources, run one command, print, and map the outcome to an exit code
//! (0 success, 1 miss / nothing removed, 2 error, 3 a change the fallback took instead of the
//! server). Errors print as one line,
//! `ddf-cache: {err:#}`; a closed stdout (`| head`) exits 0.

mod args;
mod bench;
mod import;
mod value;

use std::io::{self, IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use ddf::{CacheBackend, CacheConfig, CacheManager};

use crate::args::{Args, Command};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    init_logging(args.verbose);
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            if err
                .chain()
                .filter_map(|e| e.downcast_ref::<io::Error>())
                .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("ddf-cache: {err:#}");
            if err.downcast_ref::<bench::Interrupted>().is_some() {
                return ExitCode::from(130);
            }
            ExitCode::from(2)
        }
    }
}

/// `--help` and `--version` print as clap prints them; a usage error is one line, like every
/// other error, with the way to the help.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            let text = e.to_string();
            // clap's message runs until its blank line (then usage and tips): one line of it.
            let message = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            let message = message.trim_start_matches("error: ");
            eprintln!("ddf-cache: {message} (see ddf-cache --help)");
            ExitCode::from(2)
        }
    }
}

fn init_logging(verbose: u8) {
    // -v: what was chosen (file, backend, servers, state changes); -vv: connections and every
    // hit and miss; -vvv: everything, other crates included.
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug,ddf=trace",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DDF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// The configuration: file and environment, then the command-line overrides.
fn load_config(args: &Args) -> anyhow::Result<CacheConfig> {
    let mut config = CacheConfig::load_from(args.config.as_deref())?;
    if let Some(b) = &args.backend {
        let backend: CacheBackend = b.parse().context("--backend")?;
        config = config.with_backend(backend);
    }
    if let Some(ns) = &args.namespace {
        config = config.with_namespace(ns.clone());
    }
    Ok(config)
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = load_config(&args)?;
    if let Command::Config = args.command {
        return print_config(&config);
    }
    let cache = CacheManager::new(config)?;
    let mut out = io::stdout().lock();
    let fallback_ok = args.fallback_ok;
    let fallback_before = cache.stats().fallback;
    // A change the fallback took instead of the server: one line, exit 3 (unless
    // --fallback-ok).
    let landed = |what: &str, code: ExitCode| -> ExitCode {
        if fallback_ok || cache.stats().fallback == fallback_before {
            return code;
        }
        let config = cache.config();
        let fate = match (what, config.fallback) {
            ("write", ddf::FallbackMode::None) => "was dropped (fallback = none)".to_owned(),
            ("write", _) => format!(
                "went to the local fallback in {}, not to the server, and will not be there \
                 when the server returns",
                config.pickle_dir().display()
            ),
            _ => "was recorded and reaches the server when it answers again".to_owned(),
        };
        eprintln!(
            "ddf-cache: {} did not answer: the {what} {fate}; exit code 3 (--fallback-ok to \
             accept)",
            cache.backend_name()
        );
        ExitCode::from(3)
    };
    match args.command {
        Command::Get { key, meta: true } => match cache.get_meta(&key)? {
            Some(entry) => {
                writeln!(out, "key: {}", entry.key)?;
                writeln!(out, "ttl: {}", shown_expiry(entry.expiry))?;
                writeln!(out, "stored form: {}", cache.stored_form(&entry))?;
                match entry.flags {
                    Some(f) => writeln!(out, "flags: {f}")?,
                    None => writeln!(out, "flags: none ({} keeps no flags)", cache.backend_name())?,
                }
                if let Some(size) = entry.size {
                    writeln!(out, "size: {size} bytes")?;
                }
                Ok(ExitCode::SUCCESS)
            }
            None => Ok(ExitCode::from(1)),
        },
        Command::Keys { prefix, limit } => {
            let keys = cache.keys(&prefix, limit)?;
            for k in &keys {
                writeln!(out, "{}\t{}", k.key, shown_expiry(k.expiry))?;
            }
            out.flush()?;
            if keys.len() >= limit && limit > 0 {
                eprintln!("ddf-cache: stopped at --limit {limit}; more keys may match");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { key, meta: false } => match cache.get_value(&key)? {
            Some(v) => {
                writeln!(out, "{}", value::print(&v))?;
                Ok(ExitCode::SUCCESS)
            }
            None => Ok(ExitCode::from(1)),
        },
        Command::Set {
            key,
            value,
            ttl,
            json,
        } => {
            let ttl = ttl.map(parse_ttl).transpose()?;
            match input(&cache, value, json)? {
                Input::Json(v) => cache.set(&key, &v, ttl)?,
                Input::Text(s) => cache.set(&key, &s, ttl)?,
            }
            Ok(landed("write", ExitCode::SUCCESS))
        }
        Command::Add {
            key,
            value,
            ttl,
            json,
        } => {
            let ttl = ttl.map(parse_ttl).transpose()?;
            let stored = match input(&cache, value, json)? {
                Input::Json(v) => cache.add(&key, &v, ttl)?,
                Input::Text(s) => cache.add(&key, &s, ttl)?,
            };
            let code = if stored {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
            Ok(landed("write", code))
        }
        Command::Incr { key, delta } => {
            writeln!(out, "{}", cache.incr(&key, delta)?)?;
            out.flush()?;
            Ok(landed("write", ExitCode::SUCCESS))
        }
        Command::Decr { key, delta } => {
            writeln!(out, "{}", cache.decr(&key, delta)?)?;
            out.flush()?;
            Ok(landed("write", ExitCode::SUCCESS))
        }
        Command::Touch { key, ttl } => {
            let ttl = ttl.map(parse_ttl).transpose()?;
            let code = if cache.touch(&key, ttl)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
            Ok(landed("write", code))
        }
        Command::Ttl { key } => match cache.ttl(&key)? {
            Some(e) => {
                writeln!(out, "{}", shown_ttl(e))?;
                Ok(ExitCode::SUCCESS)
            }
            None => Ok(ExitCode::from(1)),
        },
        Command::Delete { key } => {
            let code = if cache.delete(&key)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
            Ok(landed("delete", code))
        }
        Command::Invalidate { prefix } => {
            let n = cache.invalidate_pattern(&prefix)?;
            writeln!(out, "{n}")?;
            out.flush()?;
            Ok(landed("invalidation", ExitCode::SUCCESS))
        }
        Command::Flush => {
            cache.flush_all()?;
            Ok(landed("flush", ExitCode::SUCCESS))
        }
        Command::Ping => {
            let (status, rtt) = cache.ping()?;
            writeln!(
                out,
                "{}: {} ({:.3} ms)",
                cache.backend_name(),
                status.detail,
                rtt.as_secs_f64() * 1000.0
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats => {
            writeln!(out, "backend: {}", cache.backend_name())?;
            writeln!(out, "namespace: {:?}", cache.config().namespace)?;
            writeln!(out, "enabled: {}", cache.config().enabled)?;
            for (k, v) in cache.backend_info()? {
                writeln!(out, "{k}: {v}")?;
            }
            let c = cache.config();
            if c.near_cache {
                let s = cache.stats();
                writeln!(
                    out,
                    "near_cache: at most {} entries, {} s each; this process: hits {} misses {} \
                     evictions {} resets (lost {} breaker {} flush {} topology {})",
                    c.near_cache_size,
                    c.near_cache_ttl.as_secs_f64(),
                    s.near_hits,
                    s.near_misses,
                    s.near_evictions,
                    s.near_resets_lost,
                    s.near_resets_breaker,
                    s.near_resets_flush,
                    s.near_resets_topology
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::ImportPickleDir { dir, ttl } => {
            let ttl = ttl.map(parse_ttl).transpose()?;
            let outcome = import::run(&cache, &dir, ttl, &mut out)?;
            Ok(ExitCode::from(u8::from(outcome.refused > 0)))
        }
        Command::Bench(b) => {
            bench::run(&cache, &b, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        // Handled above, before a cache is built (so that it works when the backend cannot).
        Command::Config => print_config(cache.config()),
    }
}

/// A value given on the command line (`-`: standard input): a string, or with `--json` the
/// value its JSON form stands for.
enum Input {
    Json(ddf::pickle::Value),
    Text(String),
}

fn input(cache: &CacheManager, value: String, json: bool) -> anyhow::Result<Input> {
    let value = if value == "-" {
        let mut s = String::new();
        io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the value from standard input")?;
        s
    } else {
        value
    };
    if !json {
        return Ok(Input::Text(value));
    }
    let v = value::parse(&value)?;
    if cache.config().backend == CacheBackend::Redis
        && let Some(what) = value::not_json(&v)
    {
        bail!(
            "--json: the redis backend stores JSON, which has no form for {what}: \
             it would read back changed (use redis_pickle)"
        );
    }
    Ok(Input::Json(v))
}

/// An expiry as `ttl` prints it: milliseconds where the backend keeps them.
fn shown_ttl(e: ddf::Expiry) -> String {
    match e {
        ddf::Expiry::In(d) => format!("{:.3} s", d.as_secs_f64()),
        other => shown_expiry(other),
    }
}

/// An expiry as `keys` and `get --meta` print it.
fn shown_expiry(e: ddf::Expiry) -> String {
    match e {
        ddf::Expiry::Never => "no expiry".to_owned(),
        ddf::Expiry::In(d) => format!("{:.0} s", d.as_secs_f64().ceil()),
        _ => "unknown (this backend does not tell)".to_owned(),
    }
}

fn parse_ttl(secs: f64) -> anyhow::Result<Duration> {
    if !(secs.is_finite() && secs > 0.0 && secs <= 1e10) {
        bail!(
            "--ttl {secs}: a TTL is a number of seconds greater than 0 and at most 1e10 \
             (fractions allowed, e.g. 0.5); leave --ttl out for the configured ttl"
        );
    }
    Ok(Duration::from_secs_f64(secs))
}

fn print_config(config: &CacheConfig) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    match config.file() {
        Some(f) => writeln!(out, "# file: {}", f.display())?,
        None => writeln!(out, "# file: none (defaults and environment)")?,
    }
    let rows = config.describe();
    let kw = rows.iter().map(|r| r.key.len()).max().unwrap_or(0);
    let vw = rows
        .iter()
        .map(|r| r.value.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(5, 40);
    writeln!(out, "{:kw$}  {:vw$}  SOURCE", "KEY", "VALUE")?;
    for row in rows {
        let value = if row.value.is_empty() {
            "(empty)".to_owned()
        } else {
            row.value
        };
        writeln!(out, "{:kw$}  {:vw$}  {}", row.key, value, row.source)?;
    }
    if config.pickle_dir.is_none() {
        writeln!(
            out,
            "; pickle_dir resolves to {}",
            config.pickle_dir().display()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
