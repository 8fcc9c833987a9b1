//! Compile-fail tests of `#[cache_with_invalidation]` (trybuild goldens in `tests/ui`).
//!
//! The goldens hold rustc's diagnostics, which change between compiler releases: after a
//! toolchain update, review the new text and refresh them with `TRYBUILD=overwrite`.
//! `tests/ui/sync_only` holds what is an error only without feature `async` (an `async fn`).

#[test]
fn misuse_is_a_clear_compile_error() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    #[cfg(not(feature = "async"))]
    t.compile_fail("tests/ui/sync_only/*.rs");
}
