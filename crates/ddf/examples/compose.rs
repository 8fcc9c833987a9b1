//! The seed's own case: the service list of a docker-compose.yml, memoized, invalidated
//! automatically when the file changes.
//!
//! ```text
//! cargo run -p ddf --example compose
//! ```
//!
//! Needs no server: the cache is a local cache directory (the `pickle` backend) in a temporary
//! directory, and the example edits a copy of `examples/docker-compose.yml` there.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use ddf::{CacheBackend, CacheConfig, CacheManager, cache_with_invalidation};

static CACHE: OnceLock<CacheManager> = OnceLock::new();
/// How many times the file was actually parsed.
static PARSES: AtomicUsize = AtomicUsize::new(0);

fn cache() -> &'static CacheManager {
    CACHE.get().expect("main sets the cache first")
}

/// The names of the top-level `services:` of a compose file. Memoized under the SHA-256 of
/// the file: an entry made for another version of the file is never served.
#[cache_with_invalidation(
    cache = cache(),
    ttl = 3600,
    key_prefix = "service_names",
    validation = ddf::memo::file_sha256(path)
)]
fn service_names(path: &Path) -> io::Result<Vec<String>> {
    PARSES.fetch_add(1, Ordering::SeqCst);
    Ok(parse_services(&std::fs::read_to_string(path)?))
}

/// Removes a service from the file. A mutation: never memoized; after it succeeds, every
/// service list (`service_names:`) and every entry of that service (`service:<name>:`) is
/// removed from the cache.
#[cache_with_invalidation(cache = cache(), invalidate_on = ["service_names:", "service:{name}:"])]
fn remove_service(path: &Path, name: &str) -> io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    std::fs::write(path, without_service(&text, name))
}

/// A tiny parser for what this example needs, not YAML: the keys one indentation level
/// below a top-level `services:` line, until the next top-level key.
fn parse_services(text: &str) -> Vec<String> {
    service_lines(text)
        .into_iter()
        .map(|(_, name)| name)
        .collect()
}

/// `(line index, name)` of each service header line.
fn service_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_services = false;
    let mut indent = None;
    for (i, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or("").trim_end();
        if content.trim().is_empty() {
            continue;
        }
        let depth = content.len() - content.trim_start().len();
        if depth == 0 {
            in_services = content == "services:";
            continue;
        }
        if !in_services {
            continue;
        }
        let level = *indent.get_or_insert(depth);
        if depth == level
            && let Some(name) = content.trim().strip_suffix(':')
        {
            out.push((i, name.trim_matches(['"', '\'']).to_owned()));
        }
    }
    out
}

fn without_service(text: &str, name: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let headers = service_lines(text);
    let Some(pos) = headers.iter().position(|(_, n)| n == name) else {
        return text.to_owned();
    };
    let start = headers[pos].0;
    let end = headers.get(pos + 1).map_or_else(
        // The last service ends at the next top-level key.
        || {
            (start + 1..lines.len())
                .find(|&i| lines[i].starts_with(|c: char| !c.is_whitespace() && c != '#'))
                .unwrap_or(lines.len())
        },
        |(i, _)| *i,
    );
    let mut out: Vec<&str> = lines[..start].to_vec();
    out.extend_from_slice(&lines[end..]);
    out.join("\n") + "\n"
}

fn show(label: &str, path: &Path) -> io::Result<()> {
    let before = PARSES.load(Ordering::SeqCst);
    let names = service_names(path)?;
    let parsed = PARSES.load(Ordering::SeqCst) > before;
    println!(
        "{label:<32} {names:?} ({})",
        if parsed {
            "parsed the file"
        } else {
            "from the cache"
        }
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = CacheConfig::default()
        .with_backend(CacheBackend::Pickle)
        .with_pickle_dir(dir.path().join("cache"));
    CACHE
        .set(CacheManager::new(config)?)
        .map_err(|_| "cache already set")?;

    let compose: PathBuf = dir.path().join("docker-compose.yml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/docker-compose.yml"),
        &compose,
    )?;

    show("1. first call", &compose)?;
    show("2. same file", &compose)?;

    let mut text = std::fs::read_to_string(&compose)?;
    text = text.replace("services:\n", "services:\n  worker:\n    image: busybox\n");
    std::fs::write(&compose, text)?;
    show("3. file edited (worker added)", &compose)?;
    show("4. same file", &compose)?;

    remove_service(&compose, "db")?;
    show("5. after remove_service(db)", &compose)?;
    show("6. same file", &compose)?;

    println!(
        "key of the last call: {}",
        service_names_cache_key(&compose)?
    );
    println!("cache statistics: {}", cache().stats());
    Ok(())
}
