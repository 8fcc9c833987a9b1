//! Any text: reading it as a `ddf.ini` (Python configparser rules, then the `[cache]` settings)
//! gives a configuration or an error, never a panic or a hang.
//!
//! The round trip of what the reader accepts is a property test beside the reader
//! (`config/ini.rs`): the reader is crate-private, and this target goes through the public
//! entry point, as a user's file does.
#![no_main]

use ddf::CacheConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = CacheConfig::from_ini_str(text) {
        let _ = format!("{config:?}");
    }
});
