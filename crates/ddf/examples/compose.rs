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

/// The `image:` of one service, memoized without validation (an hour's TTL): only an explicit
/// invalidation refreshes it before then.
#[cache_with_invalidation(cache = cache(), ttl = 3600, key_prefix = "image")]
fn image(path: &Path, service: &str) -> io::Result<Option<String>> {
    PARSES.fetch_add(1, Ordering::SeqCst);
    let text = std::fs::read_to_string(path)?;
    let lines: Vec<&str> = text.lines().collect();
    let headers = service_lines(&text);
    let Some(pos) = headers.iter().position(|(_, n)| n == service) else {
        return Ok(None);
    };
    let end = headers.get(pos + 1).map_or(lines.len(), |(i, _)| *i);
    Ok(lines[headers[pos].0 + 1..end]
        .iter()
        .find_map(|l| l.trim().strip_prefix("image:"))
        .map(|i| i.trim().to_owned()))
}

/// Removes a service from the file. A mutation: never memoized; after it succeeds, every
/// service list (`service_names:`) and every memoized image (`image:`) is removed from the
/// cache. (`"image:{name}"`-style prefixes would insert an argument.)
#[cache_with_invalidation(cache = cache(), invalidate_on = ["service_names:", "image:"])]
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

/// Runs `f` and says whether it read the file or was served from the cache.
fn show<T: std::fmt::Debug>(label: &str, f: impl FnOnce() -> io::Result<T>) -> io::Result<()> {
    let before = PARSES.load(Ordering::SeqCst);
    let value = f()?;
    let parsed = PARSES.load(Ordering::SeqCst) > before;
    println!(
        "{label:<34} {value:?} ({})",
        if parsed {
            "read the file"
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

    let c = compose.as_path();
    show("1. service_names", || service_names(c))?;
    show("2. service_names again", || service_names(c))?;
    show("3. image(db)", || image(c, "db"))?;
    show("4. image(db) again", || image(c, "db"))?;

    // Edit the file by hand: its SHA-256 changes, so the validated list is recomputed.
    let text = std::fs::read_to_string(c)?;
    std::fs::write(
        c,
        text.replace("services:\n", "services:\n  worker:\n    image: busybox\n"),
    )?;
    show("5. file edited: service_names", || service_names(c))?;
    show("6. service_names again", || service_names(c))?;

    // Remove a service through the mutation: the lists and the images are invalidated.
    remove_service(c, "db")?;
    show("7. after remove_service(db): names", || service_names(c))?;
    show("8. after remove_service(db): image", || image(c, "db"))?;
    show("9. image(db) again", || image(c, "db"))?;

    println!(
        "key of the last call: {}",
        service_names_cache_key(&compose)?
    );
    println!("cache statistics: {}", cache().stats());
    Ok(())
}
