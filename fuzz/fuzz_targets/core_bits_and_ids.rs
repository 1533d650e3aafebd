//! Parsers of qkd-core: LSB-first bytes into bit vectors, key-ID text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qkd_core::{BitVec, KeyId};

fuzz_target!(|data: &[u8]| {
    if let Some((&n, bytes)) = data.split_first() {
        // Any length claim must give Ok with a round trip, or a typed error.
        let len = bytes.len() * 8 - usize::from(n % 8).min(bytes.len() * 8);
        if let Ok(v) = BitVec::from_bytes_lsb(bytes, len) {
            assert_eq!(v.len(), len);
            let back = v.to_bytes_lsb();
            assert_eq!(BitVec::from_bytes_lsb(&back, len).unwrap(), v);
            let cut = usize::from(n) % (len + 1);
            assert_eq!(v.slice(..cut).parity() ^ v.slice(cut..).parity(), v.parity(..));
        }
    }
    if let Ok(s) = core::str::from_utf8(data) {
        if let Ok(id) = s.parse::<KeyId>() {
            assert_eq!(id.to_string().parse::<KeyId>().unwrap(), id);
        }
    }
});
