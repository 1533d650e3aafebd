//! Tests of key confirmation: the hash, the wire format, and the two machines
//! through the simulated network.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use qkd_core::machine::Machine;
use qkd_core::sim::{LinkConfig, Network, Side};
use qkd_core::{BitVec, BlockId};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::gf128::mul_portable as gf128_mul_reference;
use qkd_core::wire::Protocol;

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
    let slack = 1.0 + 2f64.powi(-126);
    assert_eq!(c.eps_cor(128), 2.0 * 2f64.powi(-64) * slack);
    assert_eq!(c.eps_cor(1_000_000), 7814.0 * 2f64.powi(-64) * slack);
    let c = ConfirmConfig { tag_bits: 128, ..c };
    assert_eq!(c.eps_cor(0), 2f64.powi(-128) * slack);
}

#[test]
fn config_is_validated_by_field_and_round_trips_through_serde() {
    let bad = [
        (
            ConfirmConfig {
                tag_bits: 0,
                ..ConfirmConfig::default()
            },
            "tag_bits",
        ),
        (
            ConfirmConfig {
                tag_bits: 129,
                ..ConfirmConfig::default()
            },
            "tag_bits",
        ),
        (
            ConfirmConfig {
                retransmit_after: Duration::ZERO,
                ..ConfirmConfig::default()
            },
            "retransmit_after",
        ),
        (
            ConfirmConfig {
                max_retransmissions: u32::MAX,
                ..ConfirmConfig::default()
            },
            "max_retransmissions",
        ),
    ];
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let key = BitVec::random(100, &mut rng);
    for (config, field) in bad {
        let e = ConfirmAlice::new(
            BlockId::new(1),
            key.as_bitslice(),
            &config,
            &mut rng,
            Instant::now(),
        )
        .unwrap_err();
        assert_eq!(e.field(), field);
        let e = ConfirmBob::new(BlockId::new(1), key.as_bitslice(), &config).unwrap_err();
        assert_eq!(e.field(), field);
    }
    let c = ConfirmConfig::default();
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<ConfirmConfig>(&json).unwrap(), c);
    let unknown = json.replace("\"tag_bits\"", "\"tag_bitz\"");
    assert!(serde_json::from_str::<ConfirmConfig>(&unknown).is_err());
}

#[test]
fn wire_example_from_docs() {
    let m = ConfirmMessage::Verdict {
        block: BlockId::new(5),
        tag_bits: 16,
        tag: 0xbeef,
    };
    assert_eq!(
        m.encode(),
        [0x15, 1, 2, 0, 0, 0, 0, 0, 0, 0, 5, 16, 0xef, 0xbe]
    );
    assert_eq!(ConfirmMessage::decode(&m.encode()), Ok(m));
}

#[test]
fn decode_rejects_bad_input() {
    let good = ConfirmMessage::Challenge {
        block: BlockId::new(9),
        tag_bits: 12,
        hash_point: 77,
        tag: 0xabc,
    }
    .encode();
    assert!(ConfirmMessage::decode(&good).is_ok());
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        ConfirmMessage::decode(&long),
        Err(WireError::TrailingBytes { count: 1 })
    );
    let mut v = good.clone();
    v[1] = 2;
    assert_eq!(
        ConfirmMessage::decode(&v),
        Err(WireError::UnsupportedVersion {
            protocol: Protocol::Confirm,
            version: 2
        })
    );
    let mut p = good.clone();
    p[0] = 0x13;
    assert!(matches!(
        ConfirmMessage::decode(&p),
        Err(WireError::WrongProtocol { .. })
    ));
    let mut t = good.clone();
    t[2] = 9;
    assert_eq!(
        ConfirmMessage::decode(&t),
        Err(WireError::UnknownType {
            protocol: Protocol::Confirm,
            kind: 9
        })
    );
    let mut pad = good.clone();
    *pad.last_mut().unwrap() |= 0x80; // bit 15 of a 12-bit tag
    assert!(matches!(
        ConfirmMessage::decode(&pad),
        Err(WireError::Invalid { field: "tag", .. })
    ));
    let mut zero = good;
    zero[11] = 0;
    assert!(matches!(
        ConfirmMessage::decode(&zero),
        Err(WireError::Invalid {
            field: "tag_bits",
            ..
        })
    ));
}

/// Finding 6 of the adversarial review (issue 11): with the hash point
/// r = 0 every key hashes to 0, so `{r = 0, tag = 0}` made Bob confirm any
/// key (and r = 1 hashes to the XOR of the key's blocks, no key at all).
/// Both points are refused by the decoder, so Bob never decides on them.
#[test]
fn finding_6_degenerate_hash_points_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(66);
    let key = BitVec::random(5000, &mut rng);
    // The attack: at r = 0 the tag of any key is 0.
    assert_eq!(confirmation_tag(key.as_bitslice(), 0, 64), 0);
    for point in [0u128, 1] {
        let forged = ConfirmMessage::Challenge {
            block: BlockId::new(3),
            tag_bits: 64,
            hash_point: point,
            tag: confirmation_tag(BitVec::new().as_bitslice(), point, 64)
                ^ confirmation_tag(key.as_bitslice(), point, 64)
                ^ confirmation_tag(key.as_bitslice(), point, 64),
        }
        .encode();
        assert!(matches!(
            ConfirmMessage::decode(&forged),
            Err(WireError::Invalid {
                field: "hash_point",
                ..
            })
        ));
        let mut bob = ConfirmBob::new(
            BlockId::new(3),
            key.as_bitslice(),
            &ConfirmConfig::default(),
        )
        .unwrap();
        assert!(matches!(
            bob.handle_input(Instant::now(), &forged),
            Err(ConfirmError::Malformed(_))
        ));
        assert!(!bob.is_finished());
        assert_eq!(bob.poll_event(), None);
        assert_eq!(bob.poll_transmit(Instant::now()), None);
    }
    // Alice never draws them, even from a generator that offers them.
    struct Offers(u8);
    impl rand_core::TryRng for Offers {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok(0)
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            Ok(0)
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            // 0, then 1, then 2 (little-endian u128 points).
            dst.fill(0);
            dst[0] = self.0;
            self.0 += 1;
            Ok(())
        }
    }
    impl rand_core::TryCryptoRng for Offers {}
    let now = Instant::now();
    let mut alice = ConfirmAlice::new(
        BlockId::new(3),
        key.as_bitslice(),
        &ConfirmConfig::default(),
        &mut Offers(0),
        now,
    )
    .unwrap();
    let challenge = alice.poll_transmit(now).unwrap();
    match ConfirmMessage::decode(&challenge).unwrap() {
        ConfirmMessage::Challenge { hash_point, .. } => assert_eq!(hash_point, 2),
        other => panic!("{other:?}"),
    }
}

fn message() -> impl Strategy<Value = ConfirmMessage> {
    (
        any::<u64>(),
        1u8..=128,
        2u128..,
        any::<u128>(),
        any::<bool>(),
    )
        .prop_map(|(b, t, k, tag, c)| {
            let tag = tag & tag_mask(t);
            if c {
                ConfirmMessage::Challenge {
                    block: BlockId::new(b),
                    tag_bits: t,
                    hash_point: k,
                    tag,
                }
            } else {
                ConfirmMessage::Verdict {
                    block: BlockId::new(b),
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

    /// Every strict prefix and every one-byte extension is refused.
    #[test]
    fn prefixes_and_extensions_are_rejected(m in message(), extra: u8) {
        let bytes = m.encode();
        for cut in 0..bytes.len() {
            prop_assert!(ConfirmMessage::decode(&bytes[..cut]).is_err(), "prefix {}", cut);
        }
        let mut long = bytes.clone();
        long.push(extra);
        prop_assert_eq!(ConfirmMessage::decode(&long), Err(WireError::TrailingBytes { count: 1 }));
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

const BLOCK: BlockId = BlockId::new(42);

fn pair(flip: Option<usize>, seed: u64) -> (ConfirmAlice, ConfirmBob) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let key_a = BitVec::random(50_000, &mut rng);
    let mut key_b = key_a.clone();
    if let Some(i) = flip {
        key_b.flip(i);
    }
    let config = ConfirmConfig::default();
    (
        ConfirmAlice::new(
            BLOCK,
            key_a.as_bitslice(),
            &config,
            &mut rng,
            Instant::now(),
        )
        .unwrap(),
        ConfirmBob::new(BLOCK, key_b.as_bitslice(), &config).unwrap(),
    )
}

fn run_pair(flip: Option<usize>, link: LinkConfig, seed: u64) -> Network<ConfirmAlice, ConfirmBob> {
    let (alice, bob) = pair(flip, seed);
    let mut net = Network::new(alice, bob, link, seed, Instant::now());
    net.drive();
    net
}

#[test]
fn equal_keys_are_kept_on_both_sides() {
    let net = run_pair(None, LinkConfig::perfect(Duration::from_millis(5)), 1);
    let kept = ConfirmEvent::Confirmed(ConfirmedBlock::new(BLOCK));
    assert_eq!(net.events_a(), [kept]);
    assert_eq!(net.events_b(), [kept]);
    assert!(net.a.is_finished() && net.b.is_finished());
}

#[test]
fn a_mismatch_drops_the_block_on_both_sides() {
    for flip in [0, 1, 12_345, 49_999] {
        let net = run_pair(Some(flip), LinkConfig::perfect(Duration::from_millis(5)), 2);
        let dropped = ConfirmEvent::Mismatch { block: BLOCK };
        assert_eq!(net.events_a(), [dropped], "flip {flip}");
        assert_eq!(net.events_b(), [dropped], "flip {flip}");
    }
}

#[test]
fn loss_duplication_and_reordering_never_make_the_sides_disagree() {
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
        let alice = net.events_a();
        let bob = net.events_b();
        assert_eq!(alice.len(), 1, "seed {seed}: one outcome at Alice");
        match alice[0] {
            // Alice never learned the outcome: Bob may have decided; nobody decided otherwise.
            ConfirmEvent::Unresolved { block } => {
                assert_eq!(block, BLOCK);
                assert!(bob.len() <= 1);
            }
            decided => assert_eq!(bob, [decided], "seed {seed}"),
        }
        if let ConfirmEvent::Confirmed(_) = alice[0] {
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
    let mut alice =
        ConfirmAlice::new(BlockId::new(1), key.as_bitslice(), &config, &mut rng, now).unwrap();
    let mut bob = ConfirmBob::new(BlockId::new(2), key.as_bitslice(), &config).unwrap();
    let challenge = alice.poll_transmit(now).unwrap();
    assert_eq!(
        bob.handle_input(now, &challenge),
        Err(ConfirmError::WrongBlock {
            expected: BlockId::new(2),
            got: BlockId::new(1)
        })
    );
    assert_eq!(
        alice.handle_input(now, &challenge),
        Err(ConfirmError::UnexpectedMessage)
    );
    let narrow = ConfirmConfig {
        tag_bits: 32,
        ..config.clone()
    };
    let mut bob = ConfirmBob::new(BlockId::new(1), key.as_bitslice(), &narrow).unwrap();
    assert_eq!(
        bob.handle_input(now, &challenge),
        Err(ConfirmError::TagLengthMismatch {
            local: 32,
            peer: 64
        })
    );
    let mut bob = ConfirmBob::new(BlockId::new(1), key.as_bitslice(), &config).unwrap();
    bob.handle_input(now, &challenge).unwrap();
    bob.handle_input(now, &challenge).unwrap(); // idempotent repeat
    assert_eq!(bob.poll_transmit(now), bob.poll_transmit(now));
    let other = ConfirmMessage::Challenge {
        block: BlockId::new(1),
        tag_bits: 64,
        hash_point: 2,
        tag: 0,
    }
    .encode();
    assert_eq!(
        bob.handle_input(now, &other),
        Err(ConfirmError::ConflictingChallenge)
    );
    assert_eq!(
        bob.poll_event(),
        Some(ConfirmEvent::Confirmed(ConfirmedBlock::new(BlockId::new(
            1
        ))))
    );
    assert_eq!(bob.poll_event(), None);
}

/// Bob's verdicts are all lost: Alice reports `Unresolved` (not a drop),
/// and a verdict that arrives later, after `resume`, still decides, the
/// same way as Bob did.
#[test]
fn alice_without_a_verdict_is_unresolved_until_one_arrives() {
    let (alice, bob) = pair(None, 6);
    let config = ConfirmConfig::default();
    let mut net = Network::new(
        alice,
        bob,
        LinkConfig::perfect(Duration::from_millis(3)),
        6,
        Instant::now(),
    );
    net.set_interceptor(Box::new(|from, _| from == Side::A)); // B → A all dropped
    net.drive();
    assert_eq!(net.events_a(), [ConfirmEvent::Unresolved { block: BLOCK }]);
    let kept = ConfirmEvent::Confirmed(ConfirmedBlock::new(BLOCK));
    assert_eq!(net.events_b(), [kept]);
    assert!(!net.a.is_finished());
    assert_eq!(
        net.stats(Side::A).sent,
        u64::from(config.max_retransmissions) + 1
    );
    // The link is back; the layer above resumes Alice.
    net.clear_interceptor();
    let now = net.now();
    net.a.resume(now);
    net.drive();
    assert_eq!(
        net.events_a(),
        [ConfirmEvent::Unresolved { block: BLOCK }, kept]
    );
    assert_eq!(net.events_b(), [kept]);
    assert!(net.a.is_finished());
}
