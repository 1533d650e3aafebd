//! qkd-sync messages: the decoder, and a paired node fed arbitrary messages.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use qkd_keystore::{Role, StoreConfig};
use qkd_sync::message::Message;
use qkd_sync::{SyncConfig, SyncNode};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn paired(now: Instant) -> (SyncNode, SyncNode) {
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    let cfg = |r| SyncConfig::new(StoreConfig::new("fuzz", r).with_chunk_bytes(64));
    let mut a = SyncNode::new(cfg(Role::First), &mut rng);
    let mut b = SyncNode::new(cfg(Role::Second), &mut rng);
    for _ in 0..4 {
        while let Some(m) = a.poll_transmit(now) {
            let _ = b.handle_input(now, &m);
        }
        while let Some(m) = b.poll_transmit(now) {
            let _ = a.handle_input(now, &m);
        }
    }
    (a, b)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::decode(data) {
        let again = msg.encode();
        assert_eq!(Message::decode(&again).unwrap(), msg);
    }
    let now = Instant::now();
    let (mut a, b) = paired(now);
    let _ = a.insert_block(now, 1, qkd_core::SecretKey::from_slice(&[5; 256]));
    // The fuzzer's bytes as data from the real peer's session: rewrite the
    // epochs of a Data message so it passes the session check.
    let mut forged = data.to_vec();
    if forged.len() >= 18 && forged[1] == 2 {
        forged[2..10].copy_from_slice(&b.epoch().to_be_bytes());
        forged[10..18].copy_from_slice(&a.epoch().to_be_bytes());
    }
    let _ = a.handle_input(now, data);
    let _ = a.handle_input(now, &forged);
    let later = now + Duration::from_secs(5);
    a.handle_timeout(later);
    while a.poll_transmit(later).is_some() {}
    while a.poll_event().is_some() {}
});
