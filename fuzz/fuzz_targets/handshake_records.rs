//! qkd-handshake: the record decoder and both suites' record layers fed
//! arbitrary records (nothing may be accepted, no key consumed), a relay
//! message decoder (re-encode round trip), and bit masks XORed onto an
//! honest record (every change rejected, the honest record still opens).
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use qkd_core::machine::Machine;
use qkd_core::{KeyId, SecretKey};
use qkd_handshake::capability::{Capabilities, CipherSuite, Ownership, StoreParams};
use qkd_handshake::handshake::{Handshake, HandshakeConfig, HandshakeEvent};
use qkd_handshake::psk::{PSK_BYTES, PskTable};
use qkd_handshake::record::{ContentType, RecordLayer, decode_record};
use qkd_handshake::relay::RelayMessage;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn layers(suite: CipherSuite) -> ((RecordLayer, PskTable), (RecordLayer, PskTable)) {
    let now = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    let keys: Vec<(KeyId, SecretKey)> = (0..16u64)
        .map(|i| {
            (
                KeyId::for_block(b"fuzz", 0, i),
                SecretKey::from_vec(vec![i as u8 ^ 0xa5; PSK_BYTES]),
            )
        })
        .collect();
    let cfg = |ownership| {
        HandshakeConfig::new(
            Capabilities::new(StoreParams {
                chunk_bytes: 1024,
                min_key_bits: 64,
                max_key_bits: 8192,
                ownership,
            })
            .with_suites(&[suite]),
        )
    };
    let mut a = Handshake::initiator(
        cfg(Ownership::First),
        PskTable::new(Ownership::First, keys.clone()),
        &mut rng,
        now,
    )
    .unwrap();
    let mut b = Handshake::responder(
        cfg(Ownership::Second),
        PskTable::new(Ownership::Second, keys),
        &mut rng,
        now,
    )
    .unwrap();
    for _ in 0..3 {
        while let Some(m) = a.poll_transmit(now) {
            let _ = b.handle_input(now, &m);
        }
        while let Some(m) = b.poll_transmit(now) {
            let _ = a.handle_input(now, &m);
        }
    }
    let (Some(HandshakeEvent::Established(x)), Some(HandshakeEvent::Established(y))) =
        (a.poll_event(), b.poll_event())
    else {
        panic!("honest handshake failed")
    };
    (
        (RecordLayer::new(&x), a.into_source()),
        (RecordLayer::new(&y), b.into_source()),
    )
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_record(data);
    if let Ok(m) = RelayMessage::decode(data) {
        assert_eq!(RelayMessage::decode(&m.encode()).unwrap(), m);
    }
    for suite in CipherSuite::ALL {
        let ((mut la, mut sa), (mut lb, mut sb)) = layers(suite);
        let consumed = sb.consumed();
        assert!(lb.open(&mut sb, data).is_err());
        let honest = la.seal(&mut sa, ContentType::Data, b"grant").unwrap();
        let mut forged = honest.clone();
        let mut changed = false;
        for (f, d) in forged.iter_mut().zip(data) {
            *f ^= d;
            changed |= *d != 0;
        }
        if changed {
            assert!(lb.open(&mut sb, &forged).is_err());
        }
        assert_eq!(sb.consumed(), consumed);
        assert_eq!(lb.open(&mut sb, &honest).unwrap().1.as_slice(), b"grant");
    }
});
