//! Tests of key confirmation: the hash, the wire format, and the two machines
//! through the simulated network.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use qkd_core::BitVec;
use qkd_core::machine::Machine;
use qkd_core::sim::{LinkConfig, Network};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::amplify::gf128_mul_reference;

/// The hash from its definition: Horner over 128-bit blocks, then the length.
fn tag_by_definition(key: &BitVec, r: u128, t: u8) -> u128 {
    let mut acc = 0u128;
    let bits = key.len();
    let mut i = 0;
    while i < bits {
        let mut block = 0u128;
        for j in 0..128.min(bits - i) {
            if key.get(i + j) {
                block |= 1 << j;
            }
        }
        acc = gf128_mul_reference(acc ^ block, r);
        i += 128;
    }
    acc = gf128_mul_reference(acc ^ bits as u128, r);
    acc & tag_mask(t)
}

#[test]
fn tag_matches_definition_and_backends() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    for len in [0usize, 1, 63, 64, 127, 128, 129, 1000, 8192, 8193, 20_000] {
        let key = BitVec::random(len, &mut rng);
        let r = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128 ^ len as u128;
        let want = tag_by_definition(&key, r, 128);
        assert_eq!(
            confirmation_tag_with(Backend::Portable, key.as_bitslice(), r, 128),
            want,
            "len {len}"
        );
        assert_eq!(
            confirmation_tag(key.as_bitslice(), r, 128),
            want,
            "len {len}"
        );
        assert_eq!(
            confirmation_tag(key.as_bitslice(), r, 40),
            want & ((1 << 40) - 1)
        );
    }
}

#[test]
fn tag_known_answers() {
    // Empty key: only the length block 0, times r: 0.
    assert_eq!(confirmation_tag(BitVec::new().as_bitslice(), 5, 128), 0);
    // One set bit, r = 1: h = m_1·1 ^ len = 1 ^ 1 = 0 then ·1 → (1·1 ^ 1)·1 = 0.
    let one: BitVec = [true].into_iter().collect();
    assert_eq!(confirmation_tag(one.as_bitslice(), 1, 128), 0);
    // r = z (2): ((1·z) ^ 1)·z = z^2 + z = 6.
    assert_eq!(confirmation_tag(one.as_bitslice(), 2, 128), 6);
    // Length binds: a zero bit and two zero bits differ (h = len·z).
    let z1: BitVec = [false].into_iter().collect();
    let z2: BitVec = [false, false].into_iter().collect();
    assert_eq!(confirmation_tag(z1.as_bitslice(), 2, 128), 2);
    assert_eq!(confirmation_tag(z2.as_bitslice(), 2, 128), 4);
}

#[test]
fn eps_cor_values() {
    let c = ConfirmConfig::default();
    assert_eq!(c.eps_cor(128), 2.0 * 2f64.powi(-64));
    assert_eq!(c.eps_cor(1_000_000), 7814.0 * 2f64.powi(-64));
    let c = ConfirmConfig { tag_bits: 128, ..c };
    assert_eq!(c.eps_cor(0), 2f64.powi(-128));
}

#[test]
fn wire_example_from_docs() {
    let m = ConfirmMessage::Verdict {
        block_id: 5,
        tag_bits: 16,
        tag: 0xbeef,
    };
    assert_eq!(m.encode(), [1, 2, 0, 0, 0, 0, 0, 0, 0, 5, 16, 0xef, 0xbe]);
    assert_eq!(ConfirmMessage::decode(&m.encode()), Ok(m));
}

#[test]
fn decode_rejects_bad_input() {
    let good = ConfirmMessage::Challenge {
        block_id: 9,
        tag_bits: 12,
        hash_key: 77,
        tag: 0xabc,
    }
    .encode();
    assert!(ConfirmMessage::decode(&good).is_ok());
    for cut in 0..good.len() {
        assert_eq!(
            ConfirmMessage::decode(&good[..cut]),
            Err(DecodeError::Truncated),
            "cut {cut}"
        );
    }
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        ConfirmMessage::decode(&long),
        Err(DecodeError::TrailingBytes(1))
    );
    let mut v = good.clone();
    v[0] = 2;
    assert_eq!(
        ConfirmMessage::decode(&v),
        Err(DecodeError::UnsupportedVersion(2))
    );
    let mut t = good.clone();
    t[1] = 9;
    assert_eq!(ConfirmMessage::decode(&t), Err(DecodeError::UnknownType(9)));
    let mut pad = good.clone();
    *pad.last_mut().unwrap() |= 0x80; // bit 15 of a 12-bit tag
    assert_eq!(ConfirmMessage::decode(&pad), Err(DecodeError::InvalidTag));
    let mut zero = good;
    zero[10] = 0;
    assert_eq!(ConfirmMessage::decode(&zero), Err(DecodeError::InvalidTag));
}

fn message() -> impl Strategy<Value = ConfirmMessage> {
    (
        any::<u64>(),
        1u8..=128,
        any::<u128>(),
        any::<u128>(),
        any::<bool>(),
    )
        .prop_map(|(b, t, k, tag, c)| {
            let tag = tag & tag_mask(t);
            if c {
                ConfirmMessage::Challenge {
                    block_id: b,
                    tag_bits: t,
                    hash_key: k,
                    tag,
                }
            } else {
                ConfirmMessage::Verdict {
                    block_id: b,
                    tag_bits: t,
                    tag,
                }
            }
        })
}

proptest! {
    #[test]
    fn decode_of_encode_is_identity(m in message()) {
        prop_assert_eq!(ConfirmMessage::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = ConfirmMessage::decode(&bytes);
    }

    /// Keys differing anywhere give different 64-bit tags (ε ≈ 2^-57 here).
    #[test]
    fn one_flipped_bit_changes_the_tag(len in 1usize..3000, pos in any::<prop::sample::Index>(), seed: u64) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let a = BitVec::random(len, &mut rng);
        let mut b = a.clone();
        b.flip(pos.index(len));
        let r = u128::from(seed) << 64 | u128::from(!seed);
        prop_assert_ne!(confirmation_tag(a.as_bitslice(), r, 64), confirmation_tag(b.as_bitslice(), r, 64));
    }
}

/// The two machines as `sim` endpoints.
struct AliceEnd(ConfirmAlice, Vec<ConfirmEvent>);
struct BobEnd(ConfirmBob, Vec<ConfirmEvent>);

impl Machine for AliceEnd {
    type Event = std::convert::Infallible;
    type Error = ConfirmError;
    fn handle_input(&mut self, now: Instant, d: &[u8]) -> Result<(), ConfirmError> {
        let r = self.0.handle_input(now, d);
        self.1.extend(std::iter::from_fn(|| self.0.poll_event()));
        r
    }
    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.0.poll_transmit(now)
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.0.poll_timeout()
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.0.handle_timeout(now);
        self.1.extend(std::iter::from_fn(|| self.0.poll_event()));
    }
}

impl Machine for BobEnd {
    type Event = std::convert::Infallible;
    type Error = ConfirmError;
    fn handle_input(&mut self, now: Instant, d: &[u8]) -> Result<(), ConfirmError> {
        let r = self.0.handle_input(now, d);
        self.1.extend(std::iter::from_fn(|| self.0.poll_event()));
        r
    }
    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.0.poll_transmit(now)
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.0.poll_timeout()
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.0.handle_timeout(now);
    }
}

fn run_pair(flip: Option<usize>, link: LinkConfig, seed: u64) -> Network<AliceEnd, BobEnd> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let key_a = BitVec::random(50_000, &mut rng);
    let mut key_b = key_a.clone();
    if let Some(i) = flip {
        key_b.flip(i);
    }
    let start = Instant::now();
    let config = ConfirmConfig::default();
    let alice = ConfirmAlice::new(42, key_a.as_bitslice(), config, &mut rng, start);
    let bob = ConfirmBob::new(42, key_b.as_bitslice(), config);
    let mut net = Network::new(
        AliceEnd(alice, vec![]),
        BobEnd(bob, vec![]),
        link,
        seed,
        start,
    );
    net.drive();
    net
}

#[test]
fn equal_keys_are_kept_on_both_sides() {
    let net = run_pair(None, LinkConfig::perfect(Duration::from_millis(5)), 1);
    assert_eq!(net.a.1, [ConfirmEvent::Confirmed { block_id: 42 }]);
    assert_eq!(net.b.1, [ConfirmEvent::Confirmed { block_id: 42 }]);
}

#[test]
fn a_mismatch_drops_the_block_on_both_sides() {
    for flip in [0, 1, 12_345, 49_999] {
        let net = run_pair(Some(flip), LinkConfig::perfect(Duration::from_millis(5)), 2);
        assert_eq!(
            net.a.1,
            [ConfirmEvent::Mismatch { block_id: 42 }],
            "flip {flip}"
        );
        assert_eq!(
            net.b.1,
            [ConfirmEvent::Mismatch { block_id: 42 }],
            "flip {flip}"
        );
    }
}

#[test]
fn loss_duplication_and_reordering_keep_both_sides_agreeing() {
    for seed in 0..40u64 {
        let link = LinkConfig::perfect(Duration::from_millis(5))
            .with_loss(0.3)
            .with_duplicate(0.3)
            .with_reorder(0.3, Duration::from_millis(300))
            .with_jitter(Duration::from_millis(50));
        let flip = (seed % 2 == 0).then_some(seed as usize * 997);
        let net = run_pair(flip, link, seed);
        assert!(
            net.errors_a().is_empty() && net.errors_b().is_empty(),
            "seed {seed}"
        );
        let alice = net.a.1.clone();
        let bob = net.b.1.clone();
        assert_eq!(alice.len(), 1, "seed {seed}: one decision at Alice");
        match alice[0] {
            // Alice gave up: Bob may have decided; the key store drops it there.
            ConfirmEvent::Abandoned { .. } => assert!(bob.len() <= 1),
            decided => assert_eq!(bob, [decided], "seed {seed}"),
        }
        if let ConfirmEvent::Confirmed { .. } = alice[0] {
            assert!(flip.is_none(), "seed {seed}: a differing key was confirmed");
        }
    }
}

#[test]
fn machines_reject_misdirected_messages() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let key = BitVec::random(1000, &mut rng);
    let now = Instant::now();
    let config = ConfirmConfig::default();
    let mut alice = ConfirmAlice::new(1, key.as_bitslice(), config, &mut rng, now);
    let mut bob = ConfirmBob::new(2, key.as_bitslice(), config);
    let challenge = alice.poll_transmit(now).unwrap();
    assert_eq!(
        bob.handle_input(now, &challenge),
        Err(ConfirmError::WrongBlock {
            expected: 2,
            got: 1
        })
    );
    assert_eq!(
        alice.handle_input(now, &challenge),
        Err(ConfirmError::UnexpectedMessage)
    );
    let mut bob = ConfirmBob::new(
        1,
        key.as_bitslice(),
        ConfirmConfig {
            tag_bits: 32,
            ..config
        },
    );
    assert_eq!(
        bob.handle_input(now, &challenge),
        Err(ConfirmError::TagLengthMismatch {
            local: 32,
            peer: 64
        })
    );
    let mut bob = ConfirmBob::new(1, key.as_bitslice(), config);
    bob.handle_input(now, &challenge).unwrap();
    bob.handle_input(now, &challenge).unwrap(); // idempotent repeat
    assert_eq!(bob.poll_transmit(now), bob.poll_transmit(now));
    let other = ConfirmMessage::Challenge {
        block_id: 1,
        tag_bits: 64,
        hash_key: 1,
        tag: 0,
    }
    .encode();
    assert_eq!(
        bob.handle_input(now, &other),
        Err(ConfirmError::ConflictingChallenge)
    );
    assert_eq!(
        bob.poll_event(),
        Some(ConfirmEvent::Confirmed { block_id: 1 })
    );
    assert_eq!(bob.poll_event(), None);
}

#[test]
fn alice_gives_up_after_her_retransmissions() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let key = BitVec::random(100, &mut rng);
    let mut now = Instant::now();
    let config = ConfirmConfig {
        max_retransmits: 2,
        ..ConfirmConfig::default()
    };
    let mut alice = ConfirmAlice::new(1, key.as_bitslice(), config, &mut rng, now);
    let mut sent = 0;
    while !alice.is_done() {
        while alice.poll_transmit(now).is_some() {
            sent += 1;
        }
        now = alice.poll_timeout().unwrap();
        alice.handle_timeout(now);
    }
    assert_eq!(sent, 3);
    assert_eq!(
        alice.poll_event(),
        Some(ConfirmEvent::Abandoned { block_id: 1 })
    );
}
