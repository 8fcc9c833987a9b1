//! Compile-fail tests of `#[cache_with_invalidation]` (trybuild goldens in `tests/ui`).
//!
//! They live in this crate rather than in ddf's integration tests because trybuild compiles a
//! project with the dev-dependencies of the crate under test: here only ddf (without its server
//! backends) and trybuild.
//!
//! The goldens hold rustc's diagnostics, which change between compiler releases: after a
//! toolchain update, review the new text and refresh them with `TRYBUILD=overwrite`.
//! `tests/ui/sync_only` holds what is an error only without ddf's feature `async` (an `async
//! fn`; the unit tests of this crate check that message in every build), and `tests/ui/async`
//! what is an error with it. The dev-dependency on ddf turns `async` on.

use std::process::Command;

/// What `scripts/test` sets to lint the workspace while it builds it (clippy-driver as the
/// workspace's compiler). trybuild's project must be compiled by plain rustc: clippy-driver
/// prints full paths in rustc's notes, which the goldens do not hold.
const LINT_IN_BUILD: [&str; 2] = ["RUSTC_WORKSPACE_WRAPPER", "CLIPPY_ARGS"];

#[test]
fn misuse_is_a_clear_compile_error() {
    if LINT_IN_BUILD.iter().any(|v| std::env::var_os(v).is_some()) {
        // Run this test again in a child process without them (changing this process's
        // environment is `unsafe`; a child's is not).
        let me = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(me);
        child.args(["misuse_is_a_clear_compile_error", "--exact", "--nocapture"]);
        for v in LINT_IN_BUILD {
            child.env_remove(v);
        }
        let status = child.status().expect("the test binary runs");
        assert!(
            status.success(),
            "the compile-fail tests failed (output above)"
        );
        return;
    }
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.compile_fail("tests/ui/async/*.rs");
}
