//! Tests that need several processes run themselves again as children: the parent test starts
//! its own test (by its exact name) with a variable naming the child's job, and the test's first
//! line hands that job to the worker body. No worker is registered as a test of its own, so
//! every test counted really tested something.

use std::process::{Command, Stdio};

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
