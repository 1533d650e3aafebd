//! Sifting: the message decoder and both machines fed arbitrary bytes.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use qkd_core::{Machine, SimulatedBb84, SimulatorConfig};
use qkd_postproc::sift::{SiftAlice, SiftBob, SiftConfig, SiftMessage};

fuzz_target!(|data: &[u8]| {
    // Decode never panics; what decodes re-encodes to the same bytes.
    if let Ok(m) = SiftMessage::decode(data) {
        assert_eq!(m.encode(), data);
    }
    // Neither machine panics on any datagram; a rejected one changes nothing.
    let mut sim = SimulatedBb84::new(SimulatorConfig {
        frame_slots: 512,
        ..Default::default()
    })
    .unwrap();
    let (a, b) = sim.next_pair();
    let config = SiftConfig::default();
    let now = Instant::now();
    let mut alice = SiftAlice::new(a, &config).unwrap();
    if alice.handle_input(now, data).is_err() {
        assert!(alice.poll_event().is_none() && alice.poll_transmit(now).is_none());
    }
    let mut bob = SiftBob::new(b, &config).unwrap();
    let _ = bob.poll_transmit(now);
    if bob.handle_input(now, data).is_err() {
        assert!(bob.poll_event().is_none());
    }
});
