//! The stream framing of qkd-core (`wire::stream_frame`), which hosts use
//! to read pipeline datagrams from TCP: any bytes give whole frames inside
//! the input that re-encode to the same bytes, a partial frame, or a bad
//! length, never a panic or a range past the end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qkd_core::wire::{MAX_STREAM_FRAME, StreamFrame, put_stream_frame, stream_frame};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match stream_frame(rest) {
            StreamFrame::Whole(r) => {
                assert_eq!(r.start, 4);
                assert!(r.end <= rest.len() && r.end > r.start);
                let mut again = Vec::new();
                put_stream_frame(&mut again, &rest[r.clone()]).unwrap();
                assert_eq!(&again[..], &rest[..r.end]);
                rest = &rest[r.end..];
            }
            StreamFrame::Partial => break,
            StreamFrame::BadLength(l) => {
                assert!(l == 0 || l > MAX_STREAM_FRAME);
                break;
            }
        }
    }
});
