//! The one integration test binary (ripgrep's layout): a module per backend or feature, all
//! sharing the conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aio;
mod aio_face;
mod aio_faults;
mod aio_model;
mod amemo;
mod conformance;
mod file;
mod hostile;
mod memcached;
mod memcached_hostile;
mod memo;
mod outage;
mod pickle;
mod process;
mod redis;
mod redis_hostile;
mod resilience;
mod sentinel;
mod soak;
mod ui;
mod waits;
