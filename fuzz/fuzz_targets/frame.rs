//! The frame decoder never panics on any byte stream; every decoded frame re-encodes to the
//! exact bytes it came from.
#![no_main]
use genesis_sidecar::frame::FrameDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut dec = FrameDecoder::new();
    dec.push(data);
    let mut offset = 0;
    while let Ok(Some(frame)) = dec.next_frame() {
        let len = dec.last_frame_len();
        assert_eq!(frame.encode(), &data[offset..offset + len]);
        offset += len;
    }
});
