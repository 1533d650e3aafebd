//! Every range that leaves the store is zeroized in its buffer at once.
#![cfg(feature = "model")]

use std::sync::Arc;
use std::time::Instant;

use qkd_core::SecretKey;
use qkd_keystore::{Binding, KeyStore, Role, StoreConfig};

#[test]
fn taken_delivered_and_dropped_ranges_are_zeroized() {
    let now = Instant::now();
    let cfg = |r| {
        StoreConfig::new("z", r)
            .with_chunk_bytes(32)
            .with_borrow_low_water(0)
    };
    let mut a = KeyStore::new(cfg(Role::First));
    let mut b = KeyStore::new(cfg(Role::Second));
    let block = SecretKey::from_slice(&[0xff; 64]);
    a.insert_block(now, 1, block.clone()).unwrap();
    b.insert_block(now, 1, block).unwrap();
    let mut arrived = Vec::new();
    while let Some(n) = a.poll_notice() {
        b.apply(now, n, &mut arrived).unwrap();
    }
    while let Some(n) = b.poll_notice() {
        a.apply(now, n, &mut arrived).unwrap();
    }
    let binding = Arc::new(Binding::pair("m", "s").unwrap());
    let keys = a.take(1, 64, &binding).unwrap();
    assert_eq!(keys[0].1.expose_secret(), &[0xff; 8]);
    let mut want = vec![0u8; 8];
    want.extend_from_slice(&[0xff; 24]);
    assert_eq!(
        a.chunk_buffer(1, 0).unwrap(),
        want,
        "owner zeroized the cut key"
    );
    while let Some(n) = a.poll_notice() {
        b.apply(now, n, &mut arrived).unwrap();
    }
    assert_eq!(
        b.chunk_buffer(1, 0).unwrap(),
        want,
        "peer zeroized its copy on delivery"
    );
    // The delivered copy of a's key leaves b zeroized through lookup.
    assert_eq!(
        b.lookup(&keys[0].0, "s").unwrap().unwrap().expose_secret(),
        &[0xff; 8]
    );
    assert!(!b.is_delivered(&keys[0].0));
    // A 24-byte take uses the rest of the chunk: finished and freed.
    a.take(1, 8 * 24, &binding).unwrap();
    assert_eq!(a.chunk_buffer(1, 0), None, "finished chunk freed");
    // Dropping the rest of b's chunk 1 by expiry zeroizes it on both.
    let later = now + b.config().key_ttl;
    b.take(1, 8 * 8, &binding).unwrap();
    while let Some(n) = b.poll_notice() {
        a.apply(now, n, &mut arrived).unwrap();
    }
    b.expire(later);
    assert_eq!(b.chunk_buffer(1, 1), None);
    while let Some(n) = b.poll_notice() {
        a.apply(later, n, &mut arrived).unwrap();
    }
    assert_eq!(
        a.chunk_buffer(1, 1),
        None,
        "peer copy freed after the drop notice"
    );
}
