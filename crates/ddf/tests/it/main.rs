//! The one integration test binary of `ddf`.

mod redis;
