//! Fuzzes the frame decoder: arbitrary bytes in arbitrary chunk sizes never panic, never yield a
//! frame over the limit, and never buffer much more than the limit.
#![no_main]

use handover_proto::frame::FrameDecoder;

const LIMIT: usize = 64 * 1024;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let mut decoder = FrameDecoder::new(LIMIT);
    for piece in rest.chunks(usize::from(chunk).max(1)) {
        decoder.push(piece);
        while let Ok(Some(frame)) = decoder.next_frame() {
            assert!(frame.len() <= LIMIT);
        }
        assert!(decoder.buffered() <= LIMIT + 4 + 256);
    }
    let _ = decoder.finish();
});
