//! The near cache over the file backend (`backend = pickle`, `near_cache = true`): coherence
//! across processes through the directory's change counters (docs/near-cache.md, "The file
//! backend").
//!
//! The model: a writer process sets a new value of one key about every millisecond (with a
//! delete and an `invalidate_pattern` now and then), the reader (this process) reads it in a
//! loop through its near cache, both record every call with its start and end on
//! `CLOCK_MONOTONIC`, and the soak's checker (`ddf_testkit::model::check`) replays the history:
//! no read may return a value that a write which *ended before the read began* had replaced.
//! The bound is 0 ms (no grace), not Redis's 5 ms. The checker is shown to catch a planted stale
//! read, and a writer that bypasses the counters (raw SQL) is caught by the same check.

use std::io::Write;
use std::time::{Duration, Instant};

use ddf::{CacheConfig, CacheManager};
use ddf_testkit::model::{self, Op, Outcome};

use crate::process;

const JOB: &str = "DDF_NEAR_FILE_JOB";

fn config(dir: &std::path::Path, near: bool) -> CacheConfig {
    let mut c = CacheConfig::default()
        .with_pickle_dir(dir)
        .with_namespace("nf:");
    c.near_cache = near;
    c
}

/// The writer child (for `ms` milliseconds, at least 150 operations): `S n start end` per set of `w-n`, `D`/`P start end` per delete and
/// `invalidate_pattern("k")`, `E n start end` for a set that failed (it may have landed).
#[test]
fn file_writer() {
    let Some(job) = process::job(JOB) else {
        return;
    };
    let (dir, rest) = job.split_once(' ').unwrap();
    let (ms, log) = rest.split_once(' ').unwrap();
    let ms: u64 = ms.parse().unwrap();
    let cache = CacheManager::new(config(std::path::Path::new(dir), false)).unwrap();
    let mut out = std::io::BufWriter::new(std::fs::File::create(log).unwrap());
    let end = Instant::now() + Duration::from_millis(ms);
    let mut n = 0u64;
    // At least 150 operations, however slow the machine.
    while Instant::now() < end || n < 150 {
        n += 1;
        let start = process::mono_ns();
        let line = if n.is_multiple_of(40) {
            let ok = cache.delete("k").is_ok();
            format!(
                "{} {start} {}",
                if ok { "D" } else { "X" },
                process::mono_ns()
            )
        } else if n.is_multiple_of(25) {
            let ok = cache.invalidate_pattern("k").is_ok();
            format!(
                "{} {start} {}",
                if ok { "P" } else { "X" },
                process::mono_ns()
            )
        } else {
            let ok = cache.set("k", &format!("w-{n}"), None).is_ok();
            format!(
                "{} {n} {start} {}",
                if ok { "S" } else { "E" },
                process::mono_ns()
            )
        };
        writeln!(out, "{line}").unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    out.flush().unwrap();
}

fn parse(log: &str) -> Vec<Op> {
    log.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let t = |i: usize| f[i].parse::<u64>().unwrap();
            Some(match f[0] {
                "S" => Op::set(0, "k", &format!("w-{}", f[1]), t(2), t(3)),
                "E" => Op::set(0, "k", &format!("w-{}", f[1]), t(2), t(3))
                    .with(Outcome::Err("failed".into())),
                "D" => Op::delete(0, "k", t(1), t(2)),
                "P" => Op::invalidate_pattern(0, "k", t(1), t(2)),
                _ => return None,
            })
        })
        .collect()
}

/// One read through `cache`, recorded.
fn read(cache: &CacheManager) -> Op {
    let start = process::mono_ns();
    let r = cache.get::<String>("k");
    let end = process::mono_ns();
    let outcome = match r {
        Ok(v) => Outcome::Ok(v),
        Err(e) => Outcome::Err(e.to_string()),
    };
    Op::get(1, "k", outcome, start, end)
}

#[test]
fn a_reader_never_sees_a_value_replaced_before_its_read_began_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("writes.log");
    let reader = CacheManager::new(config(dir.path(), true)).unwrap();
    reader.set("k", "w-0", None).unwrap();
    let mut history = vec![Op::set(1, "k", "w-0", 0, process::mono_ns())];
    let mut writer = process::child(
        "near_file::file_writer",
        JOB,
        &format!("{} 700 {}", dir.path().display(), log.display()),
    )
    .spawn()
    .unwrap();
    let mut reads = 0u64;
    loop {
        history.push(read(&reader));
        reads += 1;
        if reads.is_multiple_of(256) && writer.try_wait().unwrap().is_some() {
            break;
        }
    }
    process::check(writer, "the writer");
    let stats = reader.stats();
    let writes = parse(&std::fs::read_to_string(&log).unwrap());
    let n_writes = writes.len();
    history.extend(writes);
    let report = model::check(&history);
    eprintln!(
        "near cache over the file backend: {n_writes} writes, {reads} reads, {} violations (bound 0 ms); {stats}",
        report.violations.len()
    );
    assert!(n_writes > 100, "the writer wrote too little");
    assert!(report.is_ok(), "{}", report.render(&history, 5));
    assert!(stats.near_hits > 0, "the near cache never served: {stats}");
    assert!(
        stats.near_evictions > 0,
        "another process's writes never evicted: {stats}"
    );
    // The checker catches a stale read planted in this very history: the value the last set
    // replaced, read after it ended.
    let sets: Vec<&Op> = history
        .iter()
        .filter(|o| o.ok() && matches!(o.action, model::Action::Set { .. }))
        .collect();
    let (prev, last) = (sets[sets.len() - 2], sets[sets.len() - 1]);
    let model::Action::Set { value, .. } = &prev.action else {
        unreachable!()
    };
    if prev.end < last.start {
        let mut planted = history.clone();
        let at = last.end + 1;
        planted.push(Op::get(
            1,
            "k",
            Outcome::Ok(Some(value.clone())),
            at,
            at + 1,
        ));
        assert!(
            !model::check(&planted).is_ok(),
            "the checker missed a planted stale read"
        );
    }
}

/// The counters are what keeps it coherent: a writer that changes the database without them
/// (raw SQL, as a ddf older than the counters would) leaves the near cache serving the old
/// value, and the same check flags it.
#[test]
fn a_write_that_bypasses_the_counters_is_caught_by_the_same_check() {
    let dir = tempfile::tempdir().unwrap();
    let reader = CacheManager::new(config(dir.path(), true)).unwrap();
    let writer = CacheManager::new(config(dir.path(), false)).unwrap();
    writer.set("k", "w-1", None).unwrap();
    writer.set("other", "w-2", None).unwrap();
    let mut history = vec![Op::set(0, "k", "w-1", 0, process::mono_ns())];
    history.push(read(&reader)); // fills
    history.push(read(&reader)); // hits
    // Through ddf: the next read sees it at once.
    let start = process::mono_ns();
    writer.set("k", "w-3", None).unwrap();
    history.push(Op::set(0, "k", "w-3", start, process::mono_ns()));
    history.push(read(&reader));
    history.push(read(&reader));
    assert!(
        model::check(&history).is_ok(),
        "{}",
        model::check(&history).render(&history, 5)
    );
    assert_eq!(reader.get::<String>("k").unwrap().as_deref(), Some("w-3"));
    // Around ddf: copy `other`'s stored value over `k`'s row.
    let db = rusqlite::Connection::open(dir.path().join("ddf-cache.sqlite3")).unwrap();
    let start = process::mono_ns();
    db.execute(
        "UPDATE entries SET v = (SELECT v FROM entries WHERE k = CAST('nf:other' AS BLOB)) \
         WHERE k = CAST('nf:k' AS BLOB)",
        [],
    )
    .unwrap();
    history.push(Op::set(0, "k", "w-2", start, process::mono_ns()));
    history.push(read(&reader));
    let report = model::check(&history);
    assert_eq!(report.violations.len(), 1, "{}", report.render(&history, 5));
    // A reader without a near cache reads the row as it is.
    assert_eq!(writer.get::<String>("k").unwrap().as_deref(), Some("w-2"));
}

/// `flush_all` and `invalidate_pattern` in another cache move the epoch: every near entry of
/// the directory stops serving at once; the async face checks the same counters.
#[test]
fn changes_of_many_keys_elsewhere_stop_every_near_entry_and_the_async_face_checks_too() {
    let dir = tempfile::tempdir().unwrap();
    let reader = CacheManager::new(config(dir.path(), true)).unwrap();
    let writer = CacheManager::new(config(dir.path(), false)).unwrap();
    for k in ["a", "b"] {
        writer.set(k, "v1", None).unwrap();
        assert_eq!(reader.get::<String>(k).unwrap().as_deref(), Some("v1"));
    }
    let hits = reader.stats().near_hits;
    assert_eq!(reader.get::<String>("a").unwrap().as_deref(), Some("v1"));
    assert_eq!(reader.stats().near_hits, hits + 1, "a held entry is served");
    writer.invalidate_pattern("a").unwrap();
    assert_eq!(reader.get::<String>("a").unwrap(), None);
    writer.flush_all().unwrap();
    assert_eq!(reader.get::<String>("b").unwrap(), None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let areader = ddf::AsyncCacheManager::new(config(dir.path(), true)).unwrap();
        writer.set("c", "v1", None).unwrap();
        assert_eq!(
            areader.get::<String>("c").await.unwrap().as_deref(),
            Some("v1")
        );
        assert_eq!(
            areader.get::<String>("c").await.unwrap().as_deref(),
            Some("v1")
        );
        assert!(areader.stats().near_hits > 0);
        writer.set("c", "v2", None).unwrap();
        assert_eq!(
            areader.get::<String>("c").await.unwrap().as_deref(),
            Some("v2")
        );
    });
}
