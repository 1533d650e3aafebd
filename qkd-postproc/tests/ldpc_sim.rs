//! `LdpcAlice` and `LdpcBob` through the simulated network: loss,
//! duplication, reordering and corruption; blind and guided rounds; a
//! hostile peer and an injecting attacker.

use std::time::{Duration, Instant};

use qkd_core::machine::Machine;
use qkd_core::sim::{LinkConfig, Network};
use qkd_core::{BitVec, BlockId};
use qkd_postproc::ldpc::{
    CodeCache, LdpcAbort, LdpcAlice, LdpcBob, LdpcConfig, LdpcEvent, LdpcInputError, LdpcMessage,
    RateChoice, SHIPPED_SEED, Variant, choose_guided_plan, choose_plan,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

const QBER: f64 = 0.04;

fn pair(seed: u64, target: f64, config: LdpcConfig) -> (LdpcAlice, LdpcBob, BitVec) {
    let mut cache = CodeCache::new();
    let choice = RateChoice {
        modulated: 0.1,
        target_efficiency: target,
    };
    let plan = if matches!(config.variant, Variant::Guided { .. }) {
        choose_guided_plan(&mut cache, 1 << 13, SHIPPED_SEED, QBER, choice).unwrap()
    } else {
        choose_plan(&mut cache, 1 << 13, SHIPPED_SEED, QBER, choice).unwrap()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let alice_key = BitVec::random(plan.key_len(), &mut rng);
    let mut bob_key = alice_key.clone();
    let threshold = (QBER * 2f64.powi(32)) as u64;
    for i in 0..bob_key.len() {
        if u64::from(rng.next_u32()) < threshold {
            bob_key.flip(i);
        }
    }
    let block = BlockId::new(seed);
    let alice = LdpcAlice::new(block, plan.clone(), alice_key.clone(), config, &mut rng).unwrap();
    let bob = LdpcBob::new(block, plan, &bob_key, QBER, config).unwrap();
    (alice, bob, alice_key)
}

fn blind() -> LdpcConfig {
    LdpcConfig {
        variant: Variant::Blind {
            step: 60,
            max_rounds: 60,
        },
        retransmit_after: Duration::from_millis(50),
        max_retransmissions: 40,
        ..LdpcConfig::default()
    }
}

fn guided() -> LdpcConfig {
    LdpcConfig {
        variant: Variant::Guided {
            step: 20,
            max_rounds: 100,
            resume_iterations: 20,
        },
        ..blind()
    }
}

fn run(
    link: LinkConfig,
    seed: u64,
    target: f64,
) -> (
    Network<LdpcAlice, LdpcBob>,
    BitVec,
    Vec<LdpcEvent>,
    Vec<LdpcEvent>,
) {
    run_with(link, seed, target, blind())
}

fn run_with(
    link: LinkConfig,
    seed: u64,
    target: f64,
    config: LdpcConfig,
) -> (
    Network<LdpcAlice, LdpcBob>,
    BitVec,
    Vec<LdpcEvent>,
    Vec<LdpcEvent>,
) {
    let (alice, bob, key) = pair(seed, target, config);
    let mut net = Network::new(alice, bob, link, seed, Instant::now());
    net.drive();
    let ea = net.take_events_a();
    let eb = net.take_events_b();
    (net, key, ea, eb)
}

#[test]
fn clean_link_one_round_at_a_generous_rate() {
    let (net, key, ea, eb) = run(LinkConfig::lossy(Duration::from_millis(5), 0.0), 1, 1.4);
    let [LdpcEvent::Completed(a)] = ea.as_slice() else {
        panic!("{ea:?}")
    };
    let [LdpcEvent::Completed(b)] = eb.as_slice() else {
        panic!("{eb:?}")
    };
    assert_eq!(a, b);
    assert_eq!(a.rounds, 1);
    assert_eq!(net.b.corrected_key(), Some(&key));
}

#[test]
fn blind_rounds_through_loss_duplication_reordering_and_corruption() {
    let link = LinkConfig::lossy(Duration::from_millis(5), 0.2)
        .with_duplicate(0.2)
        .with_reorder(0.2, Duration::from_millis(30))
        .with_corrupt(0.1);
    for seed in 1..5 {
        // Aim below what the decoder reaches, so blind rounds are needed.
        let (net, key, ea, eb) = run(link.clone(), seed, 1.0);
        let [LdpcEvent::Completed(a)] = ea.as_slice() else {
            panic!("seed {seed}: {ea:?}")
        };
        let [LdpcEvent::Completed(b)] = eb.as_slice() else {
            panic!("seed {seed}: {eb:?}")
        };
        assert_eq!(a, b);
        assert!(a.rounds > 1, "seed {seed}: no blind round");
        assert_eq!(a.leaked_bits, net.a.leaked_bits());
        assert_eq!(net.b.corrected_key(), Some(&key));
        assert!(net.a.is_finished() && net.b.is_finished());
    }
}

#[test]
fn guided_rounds_through_loss_duplication_reordering_and_corruption() {
    let link = LinkConfig::lossy(Duration::from_millis(5), 0.2)
        .with_duplicate(0.2)
        .with_reorder(0.2, Duration::from_millis(30))
        .with_corrupt(0.1);
    for seed in 1..5 {
        let (net, key, ea, eb) = run_with(link.clone(), seed, 1.0, guided());
        let [LdpcEvent::Completed(a)] = ea.as_slice() else {
            panic!("seed {seed}: {ea:?}")
        };
        let [LdpcEvent::Completed(b)] = eb.as_slice() else {
            panic!("seed {seed}: {eb:?}")
        };
        assert_eq!(a, b);
        assert!(a.rounds > 1, "seed {seed}: no guided round");
        assert_eq!(a.leaked_bits, net.a.leaked_bits());
        assert_eq!(a.revealed, (usize::from(a.rounds) - 1) * 20);
        assert_eq!(net.b.corrected_key(), Some(&key));
    }
}

/// `Ask`s Alice must not answer (shortened positions, beyond the frame,
/// too many, the wrong round, a different Ask for a round she answered, a
/// position already revealed, a blind `Request`) are refused: her count of
/// revealed bits does not move, and the block completes as if they had not
/// been sent. (A well-formed Ask injected before Bob's own would be
/// answered, as any injected message on an unauthenticated link could
/// derail the frame; the pipeline authenticates every message.)
#[test]
fn injected_asks_reveal_nothing() {
    let now = Instant::now();
    // Started at f = 1.05 the plan shortens a few positions.
    let (mut alice, mut bob, key) = pair(11, 1.05, guided());
    let syndrome = alice.poll_transmit(now).unwrap();
    bob.handle_input(now, &syndrome).unwrap();
    let first_ask = bob.poll_transmit(now).unwrap();
    let Ok(LdpcMessage::Ask {
        block, positions, ..
    }) = LdpcMessage::decode(&first_ask)
    else {
        panic!("no guided round at f = 1.05");
    };
    let n = 1u32 << 13;
    let shortened = (0..n)
        .find(|&v| !alice.plan().is_key_position(v as usize))
        .unwrap();
    let ask = |round: u16, positions: Vec<u32>| {
        LdpcMessage::Ask {
            block,
            round,
            positions,
        }
        .encode()
    };
    let hostile = [
        ask(1, vec![shortened]),
        ask(1, vec![n]),
        ask(1, (0..21).collect()),
        ask(2, positions.clone()),
        ask(0, positions.clone()),
        LdpcMessage::Request { block, round: 1 }.encode(),
    ];
    for (i, message) in hostile.iter().enumerate() {
        assert_eq!(
            alice.handle_input(now, message),
            Err(LdpcInputError::Unexpected),
            "{i}"
        );
        assert_eq!(alice.leaked_bits(), alice.plan().code().m(), "{i}");
        assert!(alice.poll_transmit(now).is_none(), "{i}");
    }
    // Bob's own Ask is answered; a different Ask for the answered round,
    // or one naming a revealed position in the next, is refused.
    alice.handle_input(now, &first_ask).unwrap();
    let leaked = alice.leaked_bits();
    let reveal = alice.poll_transmit(now).unwrap();
    let other: Vec<u32> = positions.iter().map(|v| v ^ 1).collect();
    let mut other = other;
    other.sort_unstable();
    other.dedup();
    assert_eq!(
        alice.handle_input(now, &ask(1, other)),
        Err(LdpcInputError::Unexpected)
    );
    assert_eq!(
        alice.handle_input(now, &ask(2, positions[..1].to_vec())),
        Err(LdpcInputError::Unexpected)
    );
    assert_eq!(alice.leaked_bits(), leaked);
    // The repeat of Bob's Ask gets the same Reveal again.
    alice.handle_input(now, &first_ask).unwrap();
    assert_eq!(alice.poll_transmit(now).unwrap(), reveal);
    // The block still completes.
    let mut net = Network::new(
        alice,
        bob,
        LinkConfig::lossy(Duration::from_millis(5), 0.0),
        11,
        now,
    );
    net.inject(qkd_core::sim::Side::B, reveal, Duration::from_millis(1));
    net.drive();
    assert!(matches!(
        net.take_events_b().as_slice(),
        [LdpcEvent::Completed(_)]
    ));
    assert_eq!(net.b.corrected_key(), Some(&key));
}

#[test]
fn guided_machines_refuse_punctured_plans() {
    let mut cache = CodeCache::new();
    let choice = RateChoice {
        modulated: 0.1,
        target_efficiency: 1.0,
    };
    let plan = choose_plan(&mut cache, 1 << 13, SHIPPED_SEED, QBER, choice).unwrap();
    assert!(plan.punctured() > 0);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let key = BitVec::random(plan.key_len(), &mut rng);
    let block = BlockId::new(1);
    let err = LdpcAlice::new(block, plan.clone(), key.clone(), guided(), &mut rng).unwrap_err();
    assert_eq!(err.field(), "ldpc.variant");
    let err = LdpcBob::new(block, plan, &key, QBER, guided()).unwrap_err();
    assert_eq!(err.field(), "ldpc.variant");
}

#[test]
fn rate_adaptive_failure_is_reported_on_both_sides() {
    let config = LdpcConfig {
        variant: Variant::RateAdaptive,
        ..blind()
    };
    let (alice, bob, _) = pair(9, 1.0, config);
    let mut net = Network::new(
        alice,
        bob,
        LinkConfig::lossy(Duration::from_millis(5), 0.0),
        9,
        Instant::now(),
    );
    net.drive();
    let ea = net.take_events_a();
    let eb = net.take_events_b();
    assert!(
        matches!(
            ea.as_slice(),
            [LdpcEvent::Aborted(LdpcAbort::DecodingFailed, _)]
        ),
        "{ea:?}"
    );
    assert!(
        matches!(
            eb.as_slice(),
            [LdpcEvent::Aborted(LdpcAbort::DecodingFailed, _)]
        ),
        "{eb:?}"
    );
    assert_eq!(net.b.corrected_key(), None);
}

#[test]
fn silence_ends_in_a_timeout() {
    let (alice, bob, _) = pair(3, 1.4, blind());
    let mut net = Network::new(
        alice,
        bob,
        LinkConfig::lossy(Duration::from_millis(5), 1.0),
        3,
        Instant::now(),
    );
    net.drive();
    assert!(matches!(
        net.take_events_a().as_slice(),
        [LdpcEvent::Aborted(LdpcAbort::Timeout, _)]
    ));
}

#[test]
fn hostile_messages_are_rejected_without_changing_state() {
    let now = Instant::now();
    let (mut alice, mut bob, key) = pair(4, 1.0, blind());
    let syndrome = alice.poll_transmit(now).unwrap();
    // Another block, a reveal out of order, an ack before Done.
    let other = LdpcMessage::Request {
        block: BlockId::new(999),
        round: 1,
    }
    .encode();
    assert!(matches!(
        alice.handle_input(now, &other),
        Err(LdpcInputError::WrongBlock { .. })
    ));
    let early = LdpcMessage::Reveal {
        block: bob.block(),
        round: 5,
        start: 0,
        count: 1,
        bits: vec![1],
    }
    .encode();
    assert_eq!(
        bob.handle_input(now, &early),
        Err(LdpcInputError::Unexpected)
    );
    let ack = LdpcMessage::DoneAck {
        block: bob.block(),
        leaked: 0,
    }
    .encode();
    assert_eq!(bob.handle_input(now, &ack), Err(LdpcInputError::Unexpected));
    // A Done with a wrong leak count is caught by Alice.
    bob.handle_input(now, &syndrome).unwrap();
    let lie = loop {
        let msg = bob.poll_transmit(now).unwrap();
        if let Ok(LdpcMessage::Done {
            block,
            converged,
            rounds,
            leaked,
        }) = LdpcMessage::decode(&msg)
        {
            break LdpcMessage::Done {
                block,
                converged,
                rounds,
                leaked: leaked - 1,
            }
            .encode();
        }
        alice.handle_input(now, &msg).unwrap();
        let reveal = alice.poll_transmit(now).unwrap();
        bob.handle_input(now, &reveal).unwrap();
    };
    alice.handle_input(now, &lie).unwrap();
    assert!(matches!(
        alice.poll_event(),
        Some(LdpcEvent::Aborted(LdpcAbort::LeakageMismatch, _))
    ));
    assert_eq!(bob.corrected_key(), Some(&key));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// The decoder never panics; what it accepts encodes back to the same
    /// bytes; Asks with random positions round-trip when ascending and are
    /// refused otherwise; a guided Alice fed any of them either refuses it
    /// with her count unchanged or reveals at most `step` bits.
    #[test]
    fn random_bytes_and_asks_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                                         set in proptest::collection::btree_set(0u32..(1 << 13), 0..24),
                                         shuffled in proptest::prelude::any::<bool>(),
                                         round in proptest::prelude::prop_oneof![0u16..4, proptest::prelude::Just(u16::MAX)]) {
        // Ascending (a set) or not (reversed).
        let mut positions: Vec<u32> = set.into_iter().collect();
        if shuffled {
            positions.reverse();
        }
        if let Ok(m) = LdpcMessage::decode(&bytes) {
            proptest::prop_assert_eq!(m.encode(), bytes.clone());
        }
        let now = Instant::now();
        let (mut alice, _, _) = pair(5, 1.0, guided());
        let ask = LdpcMessage::Ask { block: alice.block(), round, positions: positions.clone() }.encode();
        let ascending = !positions.is_empty() && positions.windows(2).all(|w| w[0] < w[1]);
        proptest::prop_assert_eq!(LdpcMessage::decode(&ask).is_ok(), ascending);
        for message in [&bytes, &ask] {
            let before = alice.leaked_bits();
            match alice.handle_input(now, message) {
                Ok(()) => proptest::prop_assert!(alice.leaked_bits() - before <= 20),
                Err(_) => proptest::prop_assert_eq!(alice.leaked_bits(), before),
            }
        }
    }
}
