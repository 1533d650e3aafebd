//! Handshakes per second in one process, and secured channel throughput for
//! both suites, against the bare `aes-gcm` crate and blake3 hashing of the
//! same bytes measured in the same run.
//!
//! `cargo bench -p qkd-handshake --bench handshake -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkd_core::machine::Machine;
use qkd_core::{KeyId, SecretKey};
use qkd_handshake::capability::{Capabilities, CipherSuite, Ownership, StoreParams};
use qkd_handshake::handshake::{Handshake, HandshakeConfig, HandshakeEvent, Session};
use qkd_handshake::psk::{PSK_BYTES, PskError, PskSource};
use qkd_handshake::record::{ContentType, RecordLayer};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// A source that never runs out: every ID maps to key bytes derived from it
/// (bench only: real sources hand each key out once).
struct Endless {
    next: u64,
    len: usize,
}

impl Endless {
    fn key(&self, id: &KeyId) -> SecretKey {
        let mut v = vec![0u8; self.len];
        blake3::Hasher::new()
            .update(id.as_bytes())
            .finalize_xof()
            .fill(&mut v);
        SecretKey::from_vec(v)
    }
}

impl PskSource for Endless {
    fn next(&mut self) -> Result<(KeyId, SecretKey), PskError> {
        self.next += 1;
        let id = KeyId::for_block(b"bench", 0, self.next);
        Ok((id, self.key(&id)))
    }
    fn find(&mut self, id: &KeyId) -> Result<SecretKey, PskError> {
        Ok(self.key(id))
    }
    fn consume(&mut self, _id: &KeyId) -> Result<(), PskError> {
        Ok(())
    }
}

fn config(ownership: Ownership, suite: CipherSuite) -> HandshakeConfig {
    HandshakeConfig::new(
        Capabilities::new(StoreParams {
            chunk_bytes: 1024,
            min_key_bits: 64,
            max_key_bits: 8192,
            ownership,
        })
        .with_suites(&[suite]),
    )
}

/// One full handshake; returns both sessions.
fn handshake(
    rng: &mut ChaCha20Rng,
    suite: CipherSuite,
    sa: Endless,
    sb: Endless,
    now: Instant,
) -> (Session, Session) {
    let mut a = Handshake::initiator(config(Ownership::First, suite), sa, rng, now).unwrap();
    let mut b = Handshake::responder(config(Ownership::Second, suite), sb, rng, now).unwrap();
    let ch = a.poll_transmit(now).unwrap();
    b.handle_input(now, &ch).unwrap();
    let sh = b.poll_transmit(now).unwrap();
    a.handle_input(now, &sh).unwrap();
    let fin = a.poll_transmit(now).unwrap();
    b.handle_input(now, &fin).unwrap();
    let (Some(HandshakeEvent::Established(x)), Some(HandshakeEvent::Established(y))) =
        (a.poll_event(), b.poll_event())
    else {
        panic!("handshake failed")
    };
    (*x, *y)
}

fn endless(len: usize) -> Endless {
    Endless { next: 0, len }
}

fn bench_handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    let now = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for suite in CipherSuite::ALL {
        g.bench_function(suite.name(), |b| {
            b.iter(|| {
                black_box(handshake(
                    &mut rng,
                    suite,
                    endless(PSK_BYTES),
                    endless(PSK_BYTES),
                    now,
                ))
            })
        });
    }
    g.finish();
}

const RECORD: usize = 16 << 10;

fn bench_channel(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel");
    g.throughput(Throughput::Bytes(RECORD as u64));
    let now = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let payload = vec![0x5au8; RECORD];
    for suite in CipherSuite::ALL {
        // One-time pads come in 1 KiB keys, the store's default chunk.
        let (x, y) = handshake(&mut rng, suite, endless(1024), endless(1024), now);
        let (mut la, mut lb) = (RecordLayer::new(&x), RecordLayer::new(&y));
        let (mut sa, mut sb) = (endless(1024), endless(1024));
        g.bench_function(format!("seal/{}", suite.name()), |b| {
            b.iter(|| black_box(la.seal(&mut sa, ContentType::Data, &payload).unwrap()))
        });
        g.bench_function(format!("seal+open/{}", suite.name()), |b| {
            b.iter(|| {
                let r = la.seal(&mut sa, ContentType::Data, &payload).unwrap();
                black_box(lb.open(&mut sb, &r).unwrap())
            })
        });
    }
    // References in the same run: the bare AEAD over the same bytes, and blake3.
    let cipher = Aes256Gcm::new((&[7u8; 32]).into());
    let mut buf = payload.clone();
    let mut seq = 0u64;
    g.bench_function("reference/aes-gcm-encrypt", |b| {
        b.iter(|| {
            seq += 1;
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&seq.to_be_bytes());
            black_box(
                cipher
                    .encrypt_in_place_detached(Nonce::from_slice(&n), b"", &mut buf)
                    .unwrap(),
            )
        })
    });
    g.bench_function("reference/blake3", |b| {
        b.iter(|| black_box(blake3::hash(&payload)))
    });
    g.finish();
}

criterion_group!(benches, bench_handshake, bench_channel);
criterion_main!(benches);
