//! Finding 2 of the adversarial review (issue 11): the two authentication
//! pools must be fed the same blocks. Confirmation runs over the
//! authenticated channel (`Authenticated<ConfirmAlice>` against
//! `Authenticated<ConfirmBob>`) through `sim::Network`, block after block,
//! while the network drops every single datagram in turn, and bursts of
//! them; each side feeds its pool only from the `ConfirmedBlock` its
//! machine produced. The pools always end in step (same feed digest, pads
//! that open on the other side), or, when a layer above feeds them
//! differently on purpose, the channel fails with the typed
//! `FeedDiverged`, never silently.
//!
//! On 40aba07 the same drops made Alice abandon (and drop) a block that Bob
//! had confirmed and kept: the pools then differed from that block on.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use qkd_core::machine::Machine;
use qkd_core::sim::{LinkConfig, Network};
use qkd_core::{BitVec, BlockId, Role, SecretKey};
use qkd_postproc::auth::{
    AuthEvent, Authenticated, AuthenticatedChannel, AuthenticatedConfig, AuthenticatedEvent,
    ChannelConfig, FeedComparison, Opened, PresharedSecret, SealError, SecretId,
};
use qkd_postproc::confirm::{ConfirmAlice, ConfirmBob, ConfirmConfig, ConfirmEvent};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const BLOCKS: u64 = 4;
/// Block 3's keys differ: its outcome is a mismatch on both sides.
const MISMATCHED: u64 = 3;

fn started(role: Role) -> AuthenticatedChannel {
    let secret = SecretKey::from_vec((0..32 * 1024u32).map(|i| (i * 29 + 3) as u8).collect());
    let (mut channel, first) = AuthenticatedChannel::new(
        role,
        PresharedSecret::new(SecretId::new(2), secret),
        ChannelConfig::default(),
    )
    .unwrap();
    channel.commit(first).unwrap();
    while channel.poll_event().is_some() {}
    channel
}

fn final_key(block: u64) -> SecretKey {
    SecretKey::from_vec((0..4096u32).map(|i| (i as u64 * 7 + block) as u8).collect())
}

/// What one side decided for each block (None: never decided).
type Decisions = Vec<Option<ConfirmEvent>>;

struct Run {
    alice: AuthenticatedChannel,
    bob: AuthenticatedChannel,
    decided_a: Decisions,
    decided_b: Decisions,
    datagrams: u64,
    diverged: bool,
    /// Times Alice's layer above had to resume an unresolved confirmation.
    resumed: u32,
}

/// The host's side of one event: checkpoints are persisted (here: kept)
/// and committed; returns the confirmation outcome, if the event is one.
fn host<M: Machine>(
    side: &mut Authenticated<M>,
    event: AuthenticatedEvent<ConfirmEvent>,
    diverged: &mut bool,
) -> Option<ConfirmEvent> {
    match event {
        AuthenticatedEvent::Inner(e) => Some(e),
        AuthenticatedEvent::Channel(AuthEvent::CheckpointDue) => {
            let cp = side.checkpoint();
            let _persisted = serde_json::to_vec(cp.state()).unwrap();
            side.commit(cp).unwrap();
            None
        }
        AuthenticatedEvent::Channel(AuthEvent::FeedDiverged { .. }) => {
            *diverged = true;
            None
        }
        _ => None,
    }
}

/// Blocks 1..=BLOCKS over one pair of channels. The datagrams whose
/// running index is in `drop` are lost. `skip_unresolved` makes Alice's
/// layer above misbehave: it drops a block it could not resolve at once
/// instead of resolving it.
fn run(drop: &BTreeSet<u64>, skip_unresolved: bool) -> Run {
    let mut alice = started(Role::Alice);
    let mut bob = started(Role::Bob);
    let counter = Rc::new(Cell::new(0u64));
    let mut decided_a = Vec::new();
    let mut decided_b = Vec::new();
    let mut diverged = false;
    let mut resumed = 0;
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let config = ConfirmConfig {
        max_retransmissions: 3,
        ..ConfirmConfig::default()
    };
    let mut start = Instant::now();
    // One more round at the end (its block is confirmed but not fed)
    // delivers the last feed notices.
    for k in 1..=BLOCKS + 1 {
        let block = BlockId::new(k);
        let key_a = BitVec::random(2000, &mut rng);
        let mut key_b = key_a.clone();
        if k == MISMATCHED {
            key_b.flip(1234);
        }
        let confirm_a =
            ConfirmAlice::new(block, key_a.as_bitslice(), &config, &mut rng, start).unwrap();
        let confirm_b = ConfirmBob::new(block, key_b.as_bitslice(), &config).unwrap();
        let a = Authenticated::new(confirm_a, alice, AuthenticatedConfig::default()).unwrap();
        let b = Authenticated::new(confirm_b, bob, AuthenticatedConfig::default()).unwrap();
        let mut net = Network::new(
            a,
            b,
            LinkConfig::perfect(Duration::from_millis(5)),
            k,
            start,
        );
        let dropped = drop.clone();
        let count = Rc::clone(&counter);
        net.set_interceptor(Box::new(move |_, _| {
            let i = count.get();
            count.set(i + 1);
            !dropped.contains(&i)
        }));
        let (mut out_a, mut out_b) = (None, None);
        for attempt in 0..4 {
            net.drive();
            for e in net.take_events_a() {
                if let Some(o) = host(&mut net.a, e, &mut diverged) {
                    out_a = Some(o);
                }
            }
            for e in net.take_events_b() {
                if let Some(o) = host(&mut net.b, e, &mut diverged) {
                    out_b = Some(o);
                }
            }
            match out_a {
                // The layer above resolves: Alice asks again.
                Some(ConfirmEvent::Unresolved { .. }) if !skip_unresolved && attempt < 3 => {
                    let now = net.now();
                    net.a.inner_mut().resume(now);
                    resumed += 1;
                }
                _ => break,
            }
        }
        start = net.now() + Duration::from_millis(1);
        let Network { a, b, .. } = net;
        let (mut a, mut b) = (a, b);
        if k <= BLOCKS {
            // Feed the pools: only a `Confirmed` outcome carries the proof.
            if let Some(ConfirmEvent::Confirmed(agreed)) = &out_a {
                a.replenish_from_block(agreed, final_key(k)).unwrap();
            }
            if let Some(ConfirmEvent::Confirmed(agreed)) = &out_b {
                b.replenish_from_block(agreed, final_key(k)).unwrap();
            }
            decided_a.push(out_a);
            decided_b.push(out_b);
        }
        alice = a.into_parts().1;
        bob = b.into_parts().1;
        while let Some(e) = alice.poll_event() {
            diverged |= matches!(e, AuthEvent::FeedDiverged { .. });
        }
        while let Some(e) = bob.poll_event() {
            diverged |= matches!(e, AuthEvent::FeedDiverged { .. });
        }
    }
    Run {
        alice,
        bob,
        decided_a,
        decided_b,
        datagrams: counter.get(),
        diverged,
        resumed,
    }
}

/// Both pools in step: the same feed digest, and a pad sealed on either
/// side opens on the other.
fn assert_in_step(run: &mut Run, label: &str) {
    assert!(!run.diverged, "{label}: diverged");
    assert_eq!(
        run.alice.pool().feed_digest(),
        run.bob.pool().feed_digest(),
        "{label}"
    );
    let m = run.alice.seal(b"probe a").unwrap();
    assert_eq!(
        run.bob.open(&m),
        Ok(Opened::Data(&b"probe a"[..])),
        "{label}"
    );
    let m = run.bob.seal(b"probe b").unwrap();
    assert_eq!(
        run.alice.open(&m),
        Ok(Opened::Data(&b"probe b"[..])),
        "{label}"
    );
}

fn assert_agreed(run: &Run, label: &str) {
    for (k, (a, b)) in run.decided_a.iter().zip(&run.decided_b).enumerate() {
        let block = BlockId::new(k as u64 + 1);
        // Resolved in the end: both decided, the same.
        assert_eq!(a, b, "{label}: block {block}");
        match a {
            Some(ConfirmEvent::Confirmed(p)) => {
                assert_eq!(p.block(), block);
                assert_ne!(k as u64 + 1, MISMATCHED, "{label}");
            }
            Some(ConfirmEvent::Mismatch { .. }) => assert_eq!(k as u64 + 1, MISMATCHED),
            other => panic!("{label}: block {block} ended {other:?}"),
        }
    }
}

#[test]
fn finding_2_every_dropped_datagram_and_burst_leaves_the_pools_in_step() {
    let mut clean = run(&BTreeSet::new(), false);
    assert_agreed(&clean, "no loss");
    assert_in_step(&mut clean, "no loss");
    let total = clean.datagrams;
    assert!(total >= 2 * BLOCKS, "{total}");
    let mut schedules: Vec<BTreeSet<u64>> = (0..total).map(|i| BTreeSet::from([i])).collect();
    for len in [2u64, 3, 5, 8, 13] {
        for first in 0..total {
            schedules.push((first..first + len).collect());
        }
    }
    let mut resumed = 0;
    for drop in &schedules {
        let label = format!("drop {drop:?}");
        let mut r = run(drop, false);
        assert_agreed(&r, &label);
        assert_in_step(&mut r, &label);
        resumed += r.resumed;
    }
    // The bursts did leave Alice without a verdict at times.
    assert!(resumed > 0);
}

/// Bob's verdicts for a block are all lost and Alice's layer above (wrongly)
/// drops the block instead of resolving it, as the old code did. Bob kept it
/// and fed his pool; Alice did not. The feed notices expose it: a typed
/// `FeedDiverged`, after which the channel refuses to seal.
#[test]
fn finding_2_pools_fed_differently_fail_typed_never_silently() {
    let clean = run(&BTreeSet::new(), false);
    let mut found = false;
    for first in 0..clean.datagrams {
        // Drop a long burst (every retransmission of one block).
        let drop: BTreeSet<u64> = (first..first + 8).collect();
        let r = run(&drop, true);
        // The first block Alice left unresolved and Bob kept.
        let skipped = r.decided_a.iter().zip(&r.decided_b).position(|(a, b)| {
            matches!(a, Some(ConfirmEvent::Unresolved { .. }))
                && matches!(b, Some(ConfirmEvent::Confirmed(_)))
        });
        let Some(skipped) = skipped else {
            continue;
        };
        found = true;
        let mut r = r;
        // Did both feed some block after it? Then the deposits differ.
        let fed_later = r.decided_a[skipped + 1..]
            .iter()
            .any(|a| matches!(a, Some(ConfirmEvent::Confirmed(_))));
        if fed_later {
            assert!(r.diverged, "burst at {first}: silent divergence");
            let a = r.alice.seal(b"x");
            let b = r.bob.seal(b"x");
            assert!(
                a == Err(SealError::FeedDiverged) || b == Err(SealError::FeedDiverged),
                "burst at {first}: {a:?} {b:?}"
            );
        } else {
            // Nothing was fed after it: Alice's deposits are a prefix of
            // Bob's, which her pool reports as the peer being ahead (her
            // layer above can still feed the block and be in step).
            let (count, digest) = r.bob.pool().feed_digest();
            assert_eq!(
                r.alice.pool().compare_feed(count, &digest),
                FeedComparison::PeerAhead,
                "burst at {first}"
            );
            assert!(!r.diverged);
        }
    }
    assert!(
        found,
        "no schedule left Alice unresolved while Bob kept a block"
    );
}
