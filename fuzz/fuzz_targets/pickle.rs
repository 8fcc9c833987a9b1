//! Any bytes: the pickle decoder returns a value or an error, never panics, hangs or aborts; a
//! decoded value that can be written again reads back as the same bytes.
#![no_main]

use ddf::testing::internals::pickle::{self, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Smaller expansion limits than the defaults: a 300-byte DUP/memo DAG legitimately expands
    // to the default 2,000,000 elements (32 ms natively), which under ASan plus the round trip
    // below exceeds libFuzzer's timeout without being a bug.
    let limits = Limits::default()
        .with_max_elements(50_000)
        .with_max_decoded_bytes(16 << 20);
    let _ = pickle::from_slice_with_limits::<serde_json::Value>(data, &limits);
    let Ok(v) = pickle::from_slice_value_with_limits(data, &limits) else {
        return;
    };
    let _ = v.to_json();
    // A tuple key holding a list decodes (only top-level hashability is checked) but cannot be
    // written: the encoder refuses it, which is fine.
    let Ok(bytes) = pickle::to_vec(&v) else {
        return;
    };
    let again = pickle::from_slice_value(&bytes).expect("our own encoding decodes");
    assert_eq!(pickle::to_vec(&again).expect("re-encode"), bytes);
});
