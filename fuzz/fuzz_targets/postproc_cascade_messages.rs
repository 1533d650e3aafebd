//! Cascade's message decoder and both machines fed arbitrary datagrams.
//!
//! Decoding must never panic; whatever decodes must re-encode to the same
//! bytes; and neither machine may panic or disclose a parity it does not
//! count, whatever it is fed.
#![no_main]

use std::sync::Arc;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use qkd_core::BitVec;
use qkd_postproc::cascade::{
    CascadeAlice, CascadeBob, CascadeConfig, CascadeMessage, CascadeParams, ShufflePlan, Variant,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = CascadeMessage::decode(data) {
        assert_eq!(msg.encode(), data);
    }
    let n = 256;
    let key = BitVec::from_bytes_lsb(&[0x5a; 32], n).unwrap();
    let plan = Arc::new(ShufflePlan::new(n, 3).unwrap());
    let now = Instant::now();
    let mut alice = CascadeAlice::new(1, key.clone(), plan.clone(), 64).unwrap();
    let params = CascadeParams::for_variant(Variant::Option8, 0.05, n).unwrap();
    let mut bob = CascadeBob::new(1, key, plan, CascadeConfig::new(params)).unwrap();
    // The input may hold several datagrams, each prefixed by a length byte.
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        let _ = alice.handle_input(now, datagram);
        let _ = bob.handle_input(now, datagram);
        let mut disclosed = 0u64;
        while let Some(out) = alice.poll_transmit(now) {
            if let Ok(CascadeMessage::Answers { parities, .. }) = CascadeMessage::decode(&out) {
                disclosed += parities.len() as u64;
            }
        }
        assert!(disclosed <= alice.leaked_bits());
        assert!(alice.leaked_bits() <= 64);
        while bob.poll_transmit(now).is_some() {}
        rest = tail;
    }
});
