//! Any bytes: the pickle decoder returns a value or an error, never panics, hangs or aborts; a
//! decoded value that can be written again reads back as the same bytes.
#![no_main]

use ddf::codec::pickle;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pickle::from_slice::<serde_json::Value>(data);
    let Ok(v) = pickle::from_slice_value(data) else {
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
