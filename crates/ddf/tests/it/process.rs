//! Tests that need several processes run themselves again as children: the parent test starts
//! its own test (by its exact name) with a variable naming the child's job, and the test's first
//! line hands that job to the worker body. No worker is registered as a test of its own, so
//! every test counted really tested something.

use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::time::Instant;

/// The job this process was started for by [`child`], if it is a child.
pub fn job(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// A command that runs the test `test` (its path in this binary, e.g. `file::name`) alone in a
/// child process with `var = job`; stdout and stderr are piped.
pub fn child(test: &str, var: &str, job: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("the test binary's path"));
    c.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(var, job)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for a child and fails the test with its output if it failed.
pub fn check(child: std::process::Child, what: &str) -> String {
    let out = child
        .wait_with_output()
        .expect("waiting for a child process");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: a child process failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The peak virtual memory of this process, in bytes (0 where `/proc` does not say).
fn vm_peak() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// In a child: runs `body` and fails unless the peak virtual memory grew by less than
/// `limit` bytes (an announced length that was reserved shows here even if never touched).
pub fn assert_peak_growth_below(limit: u64, body: impl FnOnce()) {
    let before = vm_peak();
    body();
    let grown = vm_peak().saturating_sub(before);
    println!("peak virtual memory grew by {} MB", grown >> 20);
    assert!(
        grown < limit,
        "peak virtual memory grew by {} MB",
        grown >> 20
    );
}

/// Runs the test `test` alone in a child with `var` set, for a peak-memory measurement: one
/// malloc arena, because every cache has a background thread and glibc reserves 64 MB of
/// address space per thread arena, which would blur the peak.
pub fn measure_in_child(test: &str, var: &str) {
    let c = child(test, var, "1")
        .env("MALLOC_ARENA_MAX", "1")
        .spawn()
        .expect("spawning the measuring child");
    eprintln!("{}", check(c, "allocation worker"));
}

/// `CLOCK_MONOTONIC` in nanoseconds, the clock every process of a coherence test shares, so
/// that their logs compare after the run (`Instant`'s `Debug` shows the timespec: read once,
/// then advanced with `Instant` arithmetic).
pub fn mono_ns() -> u64 {
    static BASE: LazyLock<(Instant, u64)> = LazyLock::new(|| {
        let now = Instant::now();
        let text = format!("{now:?}");
        let num = |field: &str| -> u64 {
            let at = text.find(field).expect("a timespec field") + field.len();
            text[at..]
                .trim_start_matches([':', ' '])
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .expect("a number")
        };
        (now, num("tv_sec") * 1_000_000_000 + num("tv_nsec"))
    });
    let (at, ns) = *BASE;
    ns + at.elapsed().as_nanos() as u64
}
