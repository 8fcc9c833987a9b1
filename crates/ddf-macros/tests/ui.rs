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

#[test]
fn misuse_is_a_clear_compile_error() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.compile_fail("tests/ui/async/*.rs");
}
