//! qkd-sync messages: the decoder, and a paired node fed arbitrary messages.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use qkd_core::machine::Machine;
use qkd_core::wire::Protocol;
use qkd_core::BlockId;
use qkd_keystore::{StoreConfig, StoreRole};
use qkd_sync::message::Message;
use qkd_sync::{SyncConfig, SyncNode};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn pump(now: Instant, a: &mut SyncNode, b: &mut SyncNode) {
    for _ in 0..4 {
        while let Some(m) = a.poll_transmit(now) {
            let _ = b.handle_input(now, &m);
        }
        while let Some(m) = b.poll_transmit(now) {
            let _ = a.handle_input(now, &m);
        }
    }
}

/// Two paired nodes that both hold block 1 (256 bytes, chunks of 64), each
/// having sent one data message (its `Have`).
fn paired(now: Instant) -> (SyncNode, SyncNode) {
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    let cfg = |r| {
        SyncConfig::new(
            StoreConfig::new("fuzz", r)
                .with_chunk_bytes(64)
                .with_borrow_low_water(0),
        )
    };
    let mut a = SyncNode::new(cfg(StoreRole::EvenChunks), &mut rng).expect("valid config");
    let mut b = SyncNode::new(cfg(StoreRole::OddChunks), &mut rng).expect("valid config");
    pump(now, &mut a, &mut b);
    let block = qkd_core::SecretKey::from_slice(&[5; 256]);
    let _ = a.insert_block(now, BlockId::new(1), block.clone());
    let _ = b.insert_block(now, BlockId::new(1), block);
    pump(now, &mut a, &mut b);
    (a, b)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::decode(data) {
        let again = msg.encode();
        assert_eq!(Message::decode(&again).unwrap(), msg);
    }
    let now = Instant::now();
    let (mut a, b) = paired(now);
    // The fuzzer's bytes as data from the real peer's session: the Sync
    // envelope with the Data type, the epochs of the session, and sequence
    // number 2 (the next one `a` expects), then whatever the fuzzer chose
    // for the ack and the records. This reaches the store's checks of every
    // notice, not only the decoder.
    let mut forged = vec![Protocol::Sync.id(), 1, 2];
    forged.extend_from_slice(&b.epoch().to_be_bytes());
    forged.extend_from_slice(&a.epoch().to_be_bytes());
    forged.extend_from_slice(&2u64.to_be_bytes());
    forged.extend_from_slice(data);
    let _ = a.handle_input(now, data);
    let _ = a.handle_input(now, &forged);
    let later = now + Duration::from_secs(5);
    a.handle_timeout(later);
    while a.poll_transmit(later).is_some() {}
    while a.poll_event().is_some() {}
    assert!(a.store().peer_blocks_ahead() <= a.store().config().max_blocks_ahead as usize);
});
