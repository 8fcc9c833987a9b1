//! Compile-fail tests of `#[cache_with_invalidation]` (trybuild goldens in `tests/ui`).
//!
//! The goldens hold rustc's diagnostics, which change between compiler releases: after a
//! toolchain update, review the new text and refresh them with `TRYBUILD=overwrite`.
//! `tests/ui/sync_only` holds what is an error only without feature `async` (an `async fn`;
//! ddf's own tests build with the feature, so ddf-macros' unit tests check that message in every
//! build), and `tests/ui/async` what is an error with it.

#[test]
fn misuse_is_a_clear_compile_error() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    #[cfg(not(feature = "async"))]
    t.compile_fail("tests/ui/sync_only/*.rs");
    #[cfg(feature = "async")]
    t.compile_fail("tests/ui/async/*.rs");
}
