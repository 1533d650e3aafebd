//! Channel-level tests: bit flips, replays, honest tags, context switches,
//! exhaustion and accounting. The two-party runs through `qkd_core::sim`
//! are in `tests/auth_sim.rs`.

use proptest::prelude::*;
use qkd_core::wire::{Protocol, WireError};
use qkd_core::{BlockId, Role, SecretKey};

use super::*;
use crate::confirm::ConfirmedBlock;

/// A fresh channel with its first checkpoint committed (as a host does
/// after persisting it).
pub(crate) fn started(role: Role, s: &SecretKey, config: ChannelConfig) -> AuthenticatedChannel {
    let (mut channel, first) = AuthenticatedChannel::new(
        role,
        PresharedSecret::new(SecretId::new(1), s.clone()),
        config,
    )
    .unwrap();
    channel.commit(first).unwrap();
    while channel.poll_event().is_some() {}
    channel
}

fn agreed(block: u64) -> ConfirmedBlock {
    ConfirmedBlock::new(BlockId::new(block))
}

fn secret(len: usize, seed: u8) -> SecretKey {
    SecretKey::from_vec(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(167).wrapping_add(seed))
            .collect(),
    )
}

fn pair_with(len: usize, config: ChannelConfig) -> (AuthenticatedChannel, AuthenticatedChannel) {
    let s = secret(len, 3);
    (
        started(Role::Alice, &s, config.clone()),
        started(Role::Bob, &s, config),
    )
}

fn pair(mode: TagMode) -> (AuthenticatedChannel, AuthenticatedChannel) {
    pair_with(
        8192,
        ChannelConfig {
            mode,
            ..ChannelConfig::default()
        },
    )
}

fn mode_strategy() -> impl Strategy<Value = TagMode> {
    prop_oneof![Just(TagMode::Bits128), Just(TagMode::Bits64)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any single bit flip in header, payload or tag is rejected, changes
    /// no state, and the original still opens afterwards.
    #[test]
    fn any_single_bit_flip_is_rejected_without_consuming_state(
        mode in mode_strategy(),
        payload in proptest::collection::vec(any::<u8>(), 0..80),
        bit in any::<prop::sample::Index>(),
        earlier in 0usize..3,
    ) {
        let (mut a, mut b) = pair(mode);
        for _ in 0..earlier {
            let m = a.seal(b"earlier").unwrap();
            b.open(&m).unwrap();
        }
        let sealed = a.seal(&payload).unwrap();
        let bit = bit.index(sealed.len() * 8);
        let mut flipped = sealed.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let pool_before = b.pool().stats().clone();
        let end_before = b.pool().receive_end();
        let err = b.open(&flipped).unwrap_err();
        // Flips in the tag or payload can only be caught by the tag.
        if bit / 8 >= HEADER_LEN {
            prop_assert_eq!(&err, &OpenError::AuthenticationFailed);
        }
        prop_assert_eq!(b.pool().stats(), &pool_before);
        prop_assert_eq!(b.pool().receive_end(), end_before);
        prop_assert_eq!(b.stats().opened, earlier as u64);
        prop_assert_eq!(b.open(&sealed), Ok(Opened::Data(&payload[..])));
    }

    /// Honest tags verify for any payloads, delivered in any order within
    /// the window; every replay is rejected.
    #[test]
    fn honest_messages_verify_in_any_order_and_replays_do_not(
        mode in mode_strategy(),
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..20),
        order in any::<u64>(),
    ) {
        let (mut a, mut b) = pair(mode);
        let mut sealed: Vec<(Vec<u8>, Vec<u8>)> =
            payloads.iter().map(|p| (a.seal(p).unwrap(), p.clone())).collect();
        // A seeded permutation.
        let mut state = order | 1;
        for i in (1..sealed.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            sealed.swap(i, (state % (i as u64 + 1)) as usize);
        }
        for (m, p) in &sealed {
            prop_assert_eq!(b.open(m), Ok(Opened::Data(&p[..])));
        }
        for (m, _) in &sealed {
            prop_assert_eq!(b.open(m), Err(OpenError::Replay));
        }
        prop_assert_eq!(b.stats().opened, payloads.len() as u64);
        prop_assert_eq!(b.stats().replays_rejected, payloads.len() as u64);
        let tag_bits = mode.tag_bits() * payloads.len() as u64;
        prop_assert_eq!(a.pool().stats().sent_pad_bits, tag_bits);
        prop_assert_eq!(b.pool().stats().received_pad_bits, tag_bits);
    }

    /// The decoder never panics and decode(encode) is the identity on
    /// everything the channel seals.
    #[test]
    fn decoder_accepts_what_seal_writes_and_survives_garbage(
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let (mut a, _) = pair(TagMode::Bits128);
        let sealed = a.seal(&payload).unwrap();
        let m = SealedMessage::decode(&sealed, 1024).unwrap();
        prop_assert_eq!(m.payload, &payload[..]);
        prop_assert_eq!(m.tag.len(), 16);
        prop_assert_eq!(m.header.sender, Role::Alice);
        let _ = SealedMessage::decode(&garbage, 1024);
    }
}

#[test]
fn decoder_errors_name_the_fault() {
    let (mut a, _) = pair(TagMode::Bits64);
    let sealed = a.seal(b"abc").unwrap();
    let max = 1024;
    assert!(matches!(
        SealedMessage::decode(&sealed[..10], max),
        Err(WireError::Truncated { .. })
    ));
    assert!(matches!(
        SealedMessage::decode(&sealed[..sealed.len() - 1], max),
        Err(WireError::Truncated { .. })
    ));
    let mut long = sealed.clone();
    long.push(0);
    assert_eq!(
        SealedMessage::decode(&long, max),
        Err(WireError::TrailingBytes { count: 1 })
    );
    let mut m = sealed.clone();
    m[0] = 0x13;
    assert_eq!(
        SealedMessage::decode(&m, max),
        Err(WireError::WrongProtocol {
            expected: Protocol::Auth,
            found: 0x13
        })
    );
    let mut m = sealed.clone();
    m[1] = 2;
    assert_eq!(
        SealedMessage::decode(&m, max),
        Err(WireError::UnsupportedVersion {
            protocol: Protocol::Auth,
            version: 2
        })
    );
    let mut m = sealed.clone();
    m[2] = 9;
    assert_eq!(
        SealedMessage::decode(&m, max),
        Err(WireError::UnknownType {
            protocol: Protocol::Auth,
            kind: 9
        })
    );
    let mut m = sealed.clone();
    m[3] = 0;
    assert!(matches!(
        SealedMessage::decode(&m, max),
        Err(WireError::Invalid {
            field: "tag_mode",
            ..
        })
    ));
    let mut m = sealed.clone();
    m[4] = 2;
    assert!(matches!(
        SealedMessage::decode(&m, max),
        Err(WireError::Invalid {
            field: "sender",
            ..
        })
    ));
    let mut m = sealed.clone();
    m[21..25].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        SealedMessage::decode(&m, max),
        Err(WireError::TooMany {
            field: "payload",
            count: 0xffff_ffff,
            ..
        })
    ));
}

#[test]
fn reflected_messages_are_rejected() {
    let (mut a, _) = pair(TagMode::Bits128);
    let sealed = a.seal(b"to bob").unwrap();
    assert_eq!(a.open(&sealed), Err(OpenError::WrongSender));
    assert_eq!(a.stats().malformed_rejected, 1);
}

#[test]
fn exhausted_pool_refuses_to_seal_and_takes_nothing() {
    // 64 bytes: 32 per stream = 4 units, 2 of them the hash key.
    let (mut a, mut b) = pair_with(64, ChannelConfig::default());
    let m = a.seal(b"one").unwrap();
    let before = (a.pool().stats().clone(), a.stats().clone());
    assert_eq!(
        a.seal(b"two"),
        Err(SealError::Pool(PoolError::Exhausted {
            needed_bits: 128,
            available_bits: 0
        }))
    );
    assert_eq!((a.pool().stats().clone(), a.stats().clone()), before);
    assert_eq!(b.open(&m), Ok(Opened::Data(&b"one"[..])));
    // Replenishing on both ends in the same order restores the channel.
    let block = secret(4096, 9);
    a.replenish(&agreed(1), &block).unwrap();
    let m2 = a.seal(b"two").unwrap();
    // Bob has not deposited block 1 yet: the pad is not available to him,
    // and nothing is consumed.
    assert_eq!(b.open(&m2), Err(OpenError::PadUnavailable));
    b.replenish(&agreed(1), &block).unwrap();
    assert_eq!(b.open(&m2), Ok(Opened::Data(&b"two"[..])));
}

#[test]
fn oversized_payloads_are_refused_both_ways() {
    let config = ChannelConfig {
        max_payload: 100,
        ..ChannelConfig::default()
    };
    let (mut a, mut b) = pair_with(4096, config);
    assert_eq!(
        a.seal(&[0; 101]),
        Err(SealError::PayloadTooLarge { len: 101, max: 100 })
    );
    // A peer with a larger limit cannot push more onto this end.
    let (mut big, _) = pair_with(4096, ChannelConfig::default());
    let m = big.seal(&[0; 101]).unwrap();
    assert!(matches!(
        b.open(&m),
        Err(OpenError::Malformed(WireError::TooMany {
            field: "payload",
            ..
        }))
    ));
    assert!(matches!(
        AuthenticatedChannel::new(
            Role::Alice,
            PresharedSecret::new(SecretId::new(1), secret(64, 1)),
            ChannelConfig {
                max_payload: MAX_PAYLOAD + 1,
                ..ChannelConfig::default()
            }
        ),
        Err(PoolError::Config(_))
    ));
}

#[test]
fn messages_beyond_the_window_are_rejected_as_too_old() {
    let config = ChannelConfig {
        pool: PoolConfig {
            window_units: 8,
            ..PoolConfig::default()
        },
        ..ChannelConfig::default()
    };
    let (mut a, mut b) = pair_with(4096, config);
    let late = a.seal(b"late").unwrap(); // units 2..4
    let sealed: Vec<Vec<u8>> = (0..5).map(|_| a.seal(b"x").unwrap()).collect(); // 4..14
    for m in &sealed {
        b.open(m).unwrap();
    }
    // Window: [14 - 8, 14) = [6, 14); the late message at 2 is gone.
    assert_eq!(b.open(&late), Err(OpenError::TooOld));
    assert_eq!(b.stats().too_old_rejected, 1);
    // Its pad was counted as discarded when it left the window.
    assert_eq!(b.pool().stats().discarded_bits, 128);
}

#[test]
fn context_switch_moves_to_a_fresh_key_and_mode() {
    let (mut a, mut b) = pair(TagMode::Bits128);
    let before_switch = a.seal(b"old context, delivered late").unwrap();
    let switch = a.switch_context(TagMode::Bits64).unwrap();
    assert_eq!(a.send_context().id(), 2);
    assert_eq!(a.send_context().mode(), TagMode::Bits64);
    assert_eq!(a.unconfirmed_switch(), Some(&switch[..]));
    // A second switch must wait for the first to be acknowledged.
    assert_eq!(
        a.switch_context(TagMode::Bits128),
        Err(SealError::SwitchPending)
    );
    let new = a.seal(b"new context").unwrap();
    assert_eq!(new.len(), HEADER_LEN + 11 + 8);

    // The switch was "lost": the new context is unknown to Bob, nothing changes.
    let end_before = b.pool().receive_end();
    assert_eq!(b.open(&new), Err(OpenError::UnknownContext(2)));
    assert_eq!(b.pool().receive_end(), end_before);

    // Alice re-sends the same switch bytes; Bob installs the new context.
    let resent = a.unconfirmed_switch().unwrap().to_vec();
    assert!(matches!(
        b.open(&resent),
        Ok(Opened::ContextSwitch(ContextSwitch {
            new_context: 2,
            mode: TagMode::Bits64,
            ..
        }))
    ));
    assert_eq!(
        b.poll_event(),
        Some(AuthEvent::PeerSwitched {
            context: 2,
            mode: TagMode::Bits64
        })
    );
    assert_eq!(b.receive_context().id(), 2);
    // A duplicate of the switch is a replay.
    assert_eq!(b.open(&switch), Err(OpenError::Replay));
    assert_eq!(b.open(&new), Ok(Opened::Data(&b"new context"[..])));
    // A message sealed before the switch still opens under the old context.
    assert_eq!(
        b.open(&before_switch),
        Ok(Opened::Data(&b"old context, delivered late"[..]))
    );
    assert_eq!(b.stats().switches_received, 1);
    // The hash key units count as consumed on both ends: 2 initial keys + 1.
    assert_eq!(a.pool().stats().hash_key_bits, 3 * 128);
    assert_eq!(b.pool().stats().hash_key_bits, 3 * 128);

    // Bob's next message acknowledges context 2; Alice's switch is confirmed.
    let reply = b.seal(b"ack").unwrap();
    assert_eq!(a.open(&reply), Ok(Opened::Data(&b"ack"[..])));
    assert_eq!(a.unconfirmed_switch(), None);
    assert_eq!(
        a.poll_event(),
        Some(AuthEvent::SwitchConfirmed { context: 2 })
    );
    // Now a new switch is allowed, and Bob can switch his own direction.
    let back = a.switch_context(TagMode::Bits128).unwrap();
    assert!(matches!(b.open(&back), Ok(Opened::ContextSwitch(_))));
    let bob_switch = b.switch_context(TagMode::Bits64).unwrap();
    assert!(matches!(a.open(&bob_switch), Ok(Opened::ContextSwitch(_))));
    let m = b.seal(b"bob under context 2").unwrap();
    assert_eq!(a.open(&m), Ok(Opened::Data(&b"bob under context 2"[..])));
    // Context 1 of Alice is gone at Bob after two switches.
    assert_eq!(b.open(&before_switch), Err(OpenError::UnknownContext(1)));
}

#[test]
fn old_context_cannot_seal_beyond_the_switch() {
    let (mut a, mut b) = pair(TagMode::Bits128);
    let switch = a.switch_context(TagMode::Bits128).unwrap();
    b.open(&switch).unwrap();
    // A forger who rewrites a new message to claim the old context fails on
    // the position check before any tag is computed.
    let mut m = a.seal(b"new").unwrap();
    m[5..9].copy_from_slice(&1u32.to_be_bytes());
    assert_eq!(b.open(&m), Err(OpenError::ContextMismatch));
    // And a switch body that lies about the key position is refused.
    let (mut a, mut b) = pair(TagMode::Bits128);
    let mut switch = a.switch_context(TagMode::Bits128).unwrap();
    switch[HEADER_LEN + 12] ^= 1;
    assert_eq!(b.open(&switch), Err(OpenError::ContextMismatch));
    assert_eq!(b.receive_context().id(), 1);
}

#[test]
fn switch_refused_when_the_pool_cannot_pay() {
    // 4 units per stream: 2 hash key + 2 for one 128-bit pad; a switch needs 4.
    let (mut a, _) = pair_with(64, ChannelConfig::default());
    assert!(matches!(
        a.switch_context(TagMode::Bits64),
        Err(SealError::Pool(PoolError::Exhausted {
            needed_bits: 256,
            available_bits: 128
        }))
    ));
    assert_eq!(a.send_context().id(), 1);
    assert_eq!(a.pool().send_remaining_bits(), 128);
}

#[test]
fn low_water_event_reaches_the_channel() {
    let config = ChannelConfig {
        pool: PoolConfig {
            low_water_bits: 512,
            ..PoolConfig::default()
        },
        ..ChannelConfig::default()
    };
    // 256 bytes: 128 per stream = 16 units = 1024 bits, 128 of them hash key.
    let (mut a, _) = pair_with(256, config);
    let mut sent = 0;
    while a.poll_event().is_none() {
        a.seal(b"m").unwrap();
        sent += 1;
    }
    // 896 - 128 * 3 = 512 is not below; the fourth message crosses.
    assert_eq!(sent, 4);
}

#[test]
fn block_accounts_add_up_per_message() {
    let (mut a, mut b) = pair(TagMode::Bits64);
    for i in 0..10u8 {
        let m = a.seal(&[i]).unwrap();
        b.open(&m).unwrap();
        let r = b.seal(&[i]).unwrap();
        a.open(&r).unwrap();
    }
    let block = secret(125_000, 5);
    let (rest_a, acc_a) = a.replenish_from_block(&agreed(1), block.clone()).unwrap();
    let (rest_b, acc_b) = b.replenish_from_block(&agreed(1), block).unwrap();
    assert_eq!(rest_a, rest_b);
    for acc in [&acc_a, &acc_b] {
        assert_eq!(acc.sent_messages, 10);
        assert_eq!(acc.received_messages, 10);
        // The first block also carries the two initial hash keys.
        assert_eq!(acc.consumed_bits(), 20 * 64 + 2 * 128);
        assert_eq!(acc.replenished_bits, 1248 * 8);
    }
    let m = a.seal(b"next block").unwrap();
    b.open(&m).unwrap();
    assert_eq!(a.close_block(BlockId::new(2)).consumed_bits(), 64);
    assert_eq!(b.close_block(BlockId::new(2)).consumed_bits(), 64);
}

#[test]
fn forgery_bound_grows_by_epsilon_per_verification() {
    let (mut a, mut b) = pair(TagMode::Bits64);
    let eps = epsilon(TagMode::Bits64, (HEADER_LEN + b.max_payload()) as u64);
    let m = a.seal(b"m").unwrap();
    let mut forged = m.clone();
    forged[HEADER_LEN] ^= 1;
    assert_eq!(b.open(&forged), Err(OpenError::AuthenticationFailed));
    b.open(&m).unwrap();
    assert_eq!(b.stats().forgery_bound, 2.0 * eps);
    assert!(eps < 2f64.powi(-47));
}

/// A host's persistence in miniature: the JSON bytes of the newest state.
fn persist(checkpoint: &Checkpoint) -> Vec<u8> {
    serde_json::to_vec(checkpoint.state()).unwrap()
}

fn load(bytes: &[u8]) -> ChannelState {
    serde_json::from_slice(bytes).unwrap()
}

fn pad_position(sealed: &[u8]) -> u64 {
    SealedMessage::decode(sealed, MAX_PAYLOAD)
        .unwrap()
        .header
        .pad_position
}

/// Finding 1 of the adversarial review (issue 11): a restart rebuilt the
/// pool from the pre-shared secret, so Bob accepted a replay from before
/// the restart, and Alice sealed at positions she had used before, two
/// tags under one pad that give away the hash key. Now a restart restores
/// the saved state: Bob refuses every pre-restart message, and Alice's
/// positions after the restart are strictly above every one she used.
/// (On 40aba07 the same schedule, with the restart done the only way it
/// allowed, `AuthenticatedChannel::new` from the secret, accepts the
/// replay and seals twice at position 2.)
#[test]
fn finding_1_restart_reuses_no_pad_and_accepts_no_replay() {
    let config = ChannelConfig::default();
    let s = secret(64 * 1024, 11);
    let fresh = |role| {
        AuthenticatedChannel::new(
            role,
            PresharedSecret::new(SecretId::new(77), s.clone()),
            config.clone(),
        )
        .unwrap()
    };
    let (mut alice, first_a) = fresh(Role::Alice);
    let (mut bob, first_b) = fresh(Role::Bob);
    // Nothing is sealed before the first checkpoint is committed.
    assert_eq!(
        alice.seal(b"too early"),
        Err(SealError::Pool(PoolError::CheckpointRequired))
    );
    let mut alice_disk = persist(&first_a);
    let mut bob_disk = persist(&first_b);
    alice.commit(first_a).unwrap();
    bob.commit(first_b).unwrap();

    // Session 1: Alice sends 40 messages; Bob accepts them all; each side
    // checkpoints whenever asked (write first, then commit).
    let mut positions = std::collections::BTreeSet::new();
    let mut before_restart = Vec::new();
    for i in 0..40u32 {
        let m = alice.seal(&i.to_be_bytes()).unwrap();
        assert!(positions.insert(pad_position(&m)));
        assert!(bob.open(&m).is_ok());
        before_restart.push(m);
        for (channel, disk) in [(&mut alice, &mut alice_disk), (&mut bob, &mut bob_disk)] {
            while let Some(e) = channel.poll_event() {
                if e == AuthEvent::CheckpointDue {
                    let cp = channel.checkpoint();
                    *disk = persist(&cp);
                    channel.commit(cp).unwrap();
                }
            }
        }
    }
    // Both processes die after the last message; their states on disk are
    // the last ones committed.
    drop(alice);
    drop(bob);
    let mut bob = AuthenticatedChannel::restore(Role::Bob, &config, load(&bob_disk)).unwrap();
    let mut alice = AuthenticatedChannel::restore(Role::Alice, &config, load(&alice_disk)).unwrap();
    // A restored channel asks for a checkpoint and does nothing before it.
    assert_eq!(bob.poll_event(), Some(AuthEvent::CheckpointDue));
    assert_eq!(bob.open(&before_restart[39]), Err(OpenError::TooOld));
    for (channel, disk) in [(&mut alice, &mut alice_disk), (&mut bob, &mut bob_disk)] {
        let cp = channel.checkpoint();
        *disk = persist(&cp);
        channel.commit(cp).unwrap();
    }
    // The attack, part 1: every message from before the restart, replayed,
    // is refused.
    for m in &before_restart {
        assert_eq!(bob.open(m), Err(OpenError::TooOld));
    }
    assert!(bob.stats().too_old_rejected >= 40);
    // Part 2: Alice's new tags never sit on a position she used before.
    let max_before = *positions.iter().max().unwrap();
    // Bob announces his receive floor; Alice skips past it.
    let notice = bob.seal_feed_notice().unwrap();
    assert_eq!(
        alice.open(&notice),
        Ok(Opened::FeedNotice(FeedComparison::InStep))
    );
    for i in 0..40u32 {
        let m = alice.seal(&i.to_be_bytes()).unwrap();
        let p = pad_position(&m);
        assert!(p > max_before, "position {p} reused after the restart");
        assert!(positions.insert(p), "two tags at position {p}");
        // And the restored pair still talks.
        assert_eq!(bob.open(&m), Ok(Opened::Data(&i.to_be_bytes()[..])));
    }
    assert_eq!(alice.pool().secret_id(), SecretId::new(77));
}

#[test]
fn restore_refuses_foreign_and_damaged_states() {
    let config = ChannelConfig::default();
    let s = secret(4096, 1);
    let (mut alice, first) = AuthenticatedChannel::new(
        Role::Alice,
        PresharedSecret::new(SecretId::new(1), s),
        config.clone(),
    )
    .unwrap();
    let disk = persist(&first);
    alice.commit(first).unwrap();
    assert!(matches!(
        AuthenticatedChannel::restore(Role::Bob, &config, load(&disk)),
        Err(PoolError::State(_))
    ));
    let other = ChannelConfig {
        mode: TagMode::Bits64,
        ..config.clone()
    };
    assert!(matches!(
        AuthenticatedChannel::restore(Role::Alice, &other, load(&disk)),
        Err(PoolError::State(_))
    ));
    // Another format version.
    let text = String::from_utf8(disk.clone()).unwrap();
    let bumped = text.replacen("\"version\":1", "\"version\":2", 1);
    assert!(matches!(
        AuthenticatedChannel::restore(Role::Alice, &config, load(bumped.as_bytes())),
        Err(PoolError::State(_))
    ));
    // An unknown field is refused by the decoder.
    let extra = text.replacen("{", "{\"extra\":0,", 1);
    assert!(serde_json::from_str::<ChannelState>(&extra).is_err());
    // A checkpoint is committed once, in order.
    let cp1 = alice.checkpoint();
    let cp2 = alice.checkpoint();
    alice.commit(cp1).unwrap();
    assert!(matches!(alice.commit(cp2), Err(PoolError::State(_))));
    // The state's Debug shows no key material.
    let cp = alice.checkpoint();
    let debug = format!("{:?}", cp.state());
    assert!(debug.starts_with("ChannelState {") && !debug.contains("units"));
}

#[test]
fn feed_notices_catch_pools_fed_differently() {
    let (mut a, mut b) = pair(TagMode::Bits128);
    let block = secret(4096, 4);
    // Both feed block 1: in step.
    a.replenish(&agreed(1), &block).unwrap();
    b.replenish(&agreed(1), &block).unwrap();
    let n = a.seal_feed_notice().unwrap();
    assert_eq!(b.open(&n), Ok(Opened::FeedNotice(FeedComparison::InStep)));
    // Alice feeds block 2, Bob (wrongly) block 3.
    a.replenish(&agreed(2), &block).unwrap();
    let n = a.seal_feed_notice().unwrap();
    // Bob is behind: compared later.
    assert_eq!(
        b.open(&n),
        Ok(Opened::FeedNotice(FeedComparison::PeerAhead))
    );
    while b.poll_event().is_some() {}
    b.replenish(&agreed(3), &block).unwrap();
    assert!(b.is_diverged());
    assert!(
        std::iter::from_fn(|| b.poll_event()).any(|e| e == AuthEvent::FeedDiverged { count: 2 })
    );
    assert_eq!(b.seal(b"x"), Err(SealError::FeedDiverged));
    // Alice learns it from Bob's notice... which Bob can no longer seal:
    // she learns it from her own comparison when Bob's earlier notice arrives.
    let (mut a2, mut b2) = pair(TagMode::Bits128);
    a2.replenish(&agreed(2), &block).unwrap();
    b2.replenish(&agreed(3), &block).unwrap();
    let n = b2.seal_feed_notice().unwrap();
    assert_eq!(
        a2.open(&n),
        Ok(Opened::FeedNotice(FeedComparison::Diverged))
    );
    assert!(a2.is_diverged());
    assert_eq!(a2.open(&a2_probe(&mut b2)), Err(OpenError::FeedDiverged));
}

fn a2_probe(b: &mut AuthenticatedChannel) -> Vec<u8> {
    b.seal(b"probe").unwrap()
}

fn any_header() -> impl Strategy<Value = (Header, Vec<u8>, Vec<u8>)> {
    (
        prop_oneof![
            Just(MessageType::Data),
            Just(MessageType::ContextSwitch),
            Just(MessageType::TranscriptTag),
            Just(MessageType::FeedNotice)
        ],
        mode_strategy(),
        any::<bool>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..100),
        proptest::collection::vec(any::<u8>(), 16),
    )
        .prop_map(|(t, mode, bob, context, ack, pos, payload, mut tag)| {
            tag.truncate(mode.tag_bytes());
            let header = Header {
                message_type: t,
                mode,
                sender: if bob { Role::Bob } else { Role::Alice },
                context,
                ack_context: ack,
                pad_position: pos,
            };
            (header, payload, tag)
        })
}

proptest! {
    /// The sealed-message format: decode of encode is the identity; every
    /// strict prefix and every one-byte extension is refused.
    #[test]
    fn sealed_format_round_trips_and_refuses_prefixes_and_extensions(
        (header, payload, tag) in any_header(),
        extra: u8,
    ) {
        let mut bytes = header.encode(payload.len() as u32).to_vec();
        bytes.extend_from_slice(&payload);
        bytes.extend_from_slice(&tag);
        let m = SealedMessage::decode(&bytes, 1024).unwrap();
        prop_assert_eq!(m.header, header);
        prop_assert_eq!(m.header_bytes, &bytes[..HEADER_LEN]);
        prop_assert_eq!(m.payload, &payload[..]);
        prop_assert_eq!(m.tag, &tag[..]);
        for cut in 0..bytes.len() {
            prop_assert!(SealedMessage::decode(&bytes[..cut], 1024).is_err(), "prefix {}", cut);
        }
        let mut long = bytes.clone();
        long.push(extra);
        prop_assert_eq!(
            SealedMessage::decode(&long, 1024),
            Err(WireError::TrailingBytes { count: 1 })
        );
    }

    /// The context-switch body: the same three properties.
    #[test]
    fn switch_body_round_trips_and_refuses_prefixes_and_extensions(
        new_context: u32,
        mode in mode_strategy(),
        key_position: u64,
        extra: u8,
        garbage in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let s = ContextSwitch { new_context, mode, key_position };
        let body = s.encode();
        prop_assert_eq!(ContextSwitch::decode(&body), Ok(s));
        for cut in 0..body.len() {
            prop_assert!(ContextSwitch::decode(&body[..cut]).is_err());
        }
        let mut long = body.to_vec();
        long.push(extra);
        prop_assert!(ContextSwitch::decode(&long).is_err());
        let _ = ContextSwitch::decode(&garbage);
    }

    /// Random bytes never panic the decoder nor an open, and are never accepted.
    #[test]
    fn random_bytes_never_panic_nor_open(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = SealedMessage::decode(&bytes, 1024);
        let (mut a, mut b) = pair(TagMode::Bits64);
        prop_assert!(a.open(&bytes).is_err());
        prop_assert!(b.open(&bytes).is_err());
    }

    /// The saved state: JSON of a checkpoint restores to a channel that
    /// checkpoints to the same JSON (the horizons aside, which move on).
    #[test]
    fn saved_state_round_trips(messages in 0usize..20) {
        let (mut a, mut b) = pair(TagMode::Bits128);
        for i in 0..messages {
            let m = a.seal(&[i as u8]).unwrap();
            b.open(&m).unwrap();
        }
        let cp = b.checkpoint();
        let json = serde_json::to_vec(cp.state()).unwrap();
        let state: ChannelState = serde_json::from_slice(&json).unwrap();
        // (The counters hold an f64 that JSON may round; the keys may not.)
        prop_assert!(state.pool() == cp.state().pool());
        let restored = AuthenticatedChannel::restore(Role::Bob, b.config(), state).unwrap();
        prop_assert_eq!(restored.pool().secret_id(), b.pool().secret_id());
        prop_assert_eq!(restored.pool().feed_digest(), b.pool().feed_digest());
        prop_assert_eq!(restored.pool().limits(), cp.state().pool().limits());
    }
}
