//! Key confirmation: the message decoder and both machines fed arbitrary bytes.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use qkd_core::machine::Machine;
use qkd_core::{BitVec, BlockId};
use qkd_postproc::confirm::{ConfirmAlice, ConfirmBob, ConfirmConfig, ConfirmEvent, ConfirmMessage};

/// A fixed-output generator: the fuzzer explores inputs, not hash points.
struct Fixed;

impl rand_core::TryRng for Fixed {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(0x9e37_79b9)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(0x9e37_79b9_7f4a_7c15)
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        dst.fill(0x5a);
        Ok(())
    }
}
impl rand_core::TryCryptoRng for Fixed {}

fuzz_target!(|data: &[u8]| {
    // Decode never panics; what decodes re-encodes to the same bytes and
    // never carries a degenerate hash point.
    if let Ok(m) = ConfirmMessage::decode(data) {
        assert_eq!(m.encode(), data);
        if let ConfirmMessage::Challenge { hash_point, .. } = m {
            assert!(hash_point > 1);
        }
    }
    let now = Instant::now();
    let key: BitVec = data.iter().map(|b| b & 1 == 1).collect();
    let config = ConfirmConfig::default();
    let block = BlockId::new(1);
    let mut alice = ConfirmAlice::new(block, key.as_bitslice(), &config, &mut Fixed, now).unwrap();
    let mut bob = ConfirmBob::new(block, key.as_bitslice(), &config).unwrap();
    // Arbitrary input, then the honest exchange: both sides end with the
    // same outcome, or Bob rejected the fuzzer's bytes and decides on the
    // honest challenge.
    let _ = alice.handle_input(now, data);
    let _ = bob.handle_input(now, data);
    if let Some(challenge) = alice.poll_transmit(now) {
        if bob.handle_input(now, &challenge).is_ok() {
            while let Some(v) = bob.poll_transmit(now) {
                let _ = alice.handle_input(now, &v);
            }
        }
    }
    let (a, b) = (alice.poll_event(), bob.poll_event());
    if let (Some(a @ ConfirmEvent::Confirmed(_)), Some(b)) = (a, b) {
        assert_eq!(a, b, "the two sides decided differently");
    }
});
