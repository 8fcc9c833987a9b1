//! The one integration test binary (ripgrep's layout): a module per backend or feature, all
//! sharing the conformance suite. The modules of a server backend need its cargo feature (on by
//! default); `cargo test -p ddf --no-default-features` runs the rest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(
    not(all(feature = "redis", feature = "memcached")),
    allow(dead_code, unused_imports)
)]

#[cfg(all(feature = "redis", feature = "memcached"))]
mod aio;
mod aio_face;
#[cfg(all(feature = "redis", feature = "memcached"))]
mod aio_faults;
#[cfg(all(feature = "redis", feature = "memcached"))]
mod aio_model;
mod amemo;
#[cfg(all(feature = "redis", feature = "memcached"))]
mod atomic;
mod conformance;
mod docs;
mod file;
#[cfg(feature = "memcached")]
mod hostile;
#[cfg(all(feature = "redis", feature = "memcached"))]
mod interop;
#[cfg(feature = "memcached")]
mod memcached;
#[cfg(feature = "memcached")]
mod memcached_hostile;
mod memo;
#[cfg(feature = "redis")]
mod near;
#[cfg(feature = "redis")]
mod near_checks;
#[cfg(feature = "redis")]
mod near_cluster;
mod near_file;
#[cfg(all(feature = "redis", feature = "memcached"))]
mod outage;
#[cfg(all(feature = "redis", feature = "memcached"))]
mod per_server;
mod pickle;
mod process;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redis_cluster;
#[cfg(feature = "redis")]
mod redis_config;
#[cfg(feature = "redis")]
mod redis_hostile;
#[cfg(all(feature = "redis", feature = "memcached"))]
mod resilience;
#[cfg(feature = "redis")]
mod sentinel;
#[cfg(all(feature = "redis", feature = "memcached"))]
mod soak;
#[cfg(all(feature = "redis", feature = "memcached"))]
mod stampede;
#[cfg(all(feature = "redis", feature = "memcached"))]
mod stampede_refresh;
#[cfg(all(feature = "redis", feature = "memcached"))]
mod stats;
mod timing;
#[cfg(all(feature = "redis", feature = "memcached"))]
mod waits;
