//! Compile-fail tests of `#[cache_with_invalidation]` (trybuild goldens in `tests/ui`).
//!
//! The goldens hold rustc's diagnostics, which change between compiler releases: after a
//! toolchain update, review the new text and refresh them with `TRYBUILD=overwrite`.

#[test]
fn misuse_is_a_clear_compile_error() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
