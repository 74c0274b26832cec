//! The control-envelope decoder never panics; a decoded envelope re-encodes to its input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = genesis_trust::SignedEnvelope::decode(data) {
        assert_eq!(env.encode(), data);
        let _ = env.envelope();
    }
});
