//! The audit-record parser and the chain verifier never panic on any input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(rec) = genesis_trust::AuditRecord::parse_line(s) {
            let _ = rec.compute_hash();
        }
    }
    let _ = genesis_trust::verify_audit(std::io::Cursor::new(data));
});
