//! qkd-handshake: the message decoder (re-encode round trip), and an
//! initiator and a responder fed the fuzzer's bytes as a sequence of
//! datagrams (each prefixed by a one-byte length). Neither may panic, and
//! neither may report an established session: the bytes cannot prove the PSK.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use qkd_core::machine::Machine;
use qkd_core::{KeyId, SecretKey};
use qkd_handshake::capability::{Capabilities, Ownership, StoreParams};
use qkd_handshake::handshake::{Handshake, HandshakeConfig, HandshakeEvent};
use qkd_handshake::message::Message;
use qkd_handshake::psk::{PSK_BYTES, PskTable};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn config(ownership: Ownership) -> HandshakeConfig {
    HandshakeConfig::new(Capabilities::new(StoreParams {
        chunk_bytes: 1024,
        min_key_bits: 64,
        max_key_bits: 8192,
        ownership,
    }))
}

fn source(ownership: Ownership) -> PskTable {
    let keys = (0..4u64)
        .map(|i| {
            (
                KeyId::for_block(b"fuzz", 0, i),
                SecretKey::from_vec(vec![i as u8 ^ 0x3c; PSK_BYTES]),
            )
        })
        .collect();
    PskTable::new(ownership, keys)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }
    let now = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    let mut a = Handshake::initiator(config(Ownership::First), source(Ownership::First), &mut rng, now)
        .unwrap();
    let mut b =
        Handshake::responder(config(Ownership::Second), source(Ownership::Second), &mut rng, now)
            .unwrap();
    let mut rest = data;
    let mut t = now;
    while let Some((&n, tail)) = rest.split_first() {
        let n = usize::from(n).min(tail.len());
        let (datagram, tail) = tail.split_at(n);
        rest = tail;
        let _ = a.handle_input(t, datagram);
        let _ = b.handle_input(t, datagram);
        while a.poll_transmit(t).is_some() {}
        while b.poll_transmit(t).is_some() {}
        t += Duration::from_millis(100);
        if a.poll_timeout().is_some_and(|x| x <= t) {
            a.handle_timeout(t);
        }
        if b.poll_timeout().is_some_and(|x| x <= t) {
            b.handle_timeout(t);
        }
    }
    while let Some(e) = a.poll_event() {
        assert!(!matches!(e, HandshakeEvent::Established(_)));
    }
    while let Some(e) = b.poll_event() {
        assert!(!matches!(e, HandshakeEvent::Established(_)));
    }
});
