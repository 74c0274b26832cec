//! The identity parser refuses or accepts; an accepted identity formats back to its input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = genesis_trust::Identity::parse(s) {
            assert_eq!(id.uri(), s, "one formatter, one parser: round trip must be exact");
        }
    }
});
