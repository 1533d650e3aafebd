//! Parameter estimation: the message decoder and both machines fed arbitrary bytes.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use qkd_core::{BitVec, BlockId, Machine};
use qkd_postproc::estimate::{EstimateAlice, EstimateBob, EstimateConfig, EstimateMessage};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fuzz_target!(|data: &[u8]| {
    // Decode never panics; what decodes re-encodes to the same bytes.
    if let Ok(m) = EstimateMessage::decode(data) {
        assert_eq!(m.encode(), data);
    }
    // Neither machine panics on any datagram, and a rejected one leaves
    // Alice's machine still waiting (no event).
    let config = EstimateConfig::default();
    let now = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let key = BitVec::random(4_000, &mut rng);
    let mut alice = EstimateAlice::new(BlockId::new(1), key.clone(), &config, &mut rng).unwrap();
    let _ = alice.poll_transmit(now);
    if alice.handle_input(now, data).is_err() {
        assert!(alice.poll_event().is_none());
    }
    let mut bob = EstimateBob::new(BlockId::new(1), key, &config).unwrap();
    let _ = bob.handle_input(now, data);
    let _ = bob.poll_transmit(now);
    let _ = bob.poll_event();
});
