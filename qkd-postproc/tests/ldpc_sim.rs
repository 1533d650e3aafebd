//! `LdpcAlice` and `LdpcBob` through the simulated network: loss,
//! duplication, reordering and corruption; blind rounds; a hostile peer.

use std::time::{Duration, Instant};

use qkd_core::machine::Machine;
use qkd_core::sim::{LinkConfig, Network};
use qkd_core::{BitVec, BlockId};
use qkd_postproc::ldpc::{
    CodeCache, LdpcAbort, LdpcAlice, LdpcBob, LdpcConfig, LdpcEvent, LdpcInputError, LdpcMessage,
    RateChoice, SHIPPED_SEED, Variant, choose_plan,
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
    let plan = choose_plan(&mut cache, 1 << 13, SHIPPED_SEED, QBER, choice).unwrap();
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
    let (alice, bob, key) = pair(seed, target, blind());
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
