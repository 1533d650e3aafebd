//! Two-machine tests of Cascade: correctness properties, accounting, and
//! runs through the simulated network with faults.

// The ignored statistical runs print their tables.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use qkd_core::BitVec;
use qkd_core::sim::{LinkConfig, Network};
use qkd_postproc::cascade::{
    CascadeAlice, CascadeBob, CascadeConfig, CascadeError, CascadeEvent, CascadeMessage,
    CascadeParams, CascadeStats, ShufflePlan, Variant, run_in_memory,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// Alice's key and Bob's, with each bit flipped with probability `qber`.
fn keys(n: usize, qber: f64, seed: u64) -> (BitVec, BitVec) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let alice = BitVec::random(n, &mut rng);
    let mut bob = alice.clone();
    let threshold = (qber * 2f64.powi(32)) as u64;
    for i in 0..n {
        if u64::from(rng.next_u32()) < threshold {
            bob.flip(i);
        }
    }
    (alice, bob)
}

fn machines(
    variant: Variant,
    qber: f64,
    alice_key: &BitVec,
    bob_key: &BitVec,
    seed: u64,
) -> (CascadeAlice, CascadeBob) {
    let n = alice_key.len();
    let plan = Arc::new(ShufflePlan::new(n, seed).unwrap());
    let params = CascadeParams::for_variant(variant, qber.max(0.001), n).unwrap();
    let alice = CascadeAlice::new(seed, alice_key.clone(), plan.clone(), 2 * n as u64).unwrap();
    let bob = CascadeBob::new(seed, bob_key.clone(), plan, CascadeConfig::new(params)).unwrap();
    (alice, bob)
}

/// Mean efficiency, frames whose key still differed, and mean channel uses
/// over `frames` frames at `qber`: frame `t` has its keys from seed
/// `key_seed(t)` and its shuffles from seed `t`; Bob follows `params`.
fn mean_run(
    n: usize,
    qber: f64,
    frames: u64,
    key_seed: impl Fn(u64) -> u64,
    params: &CascadeParams,
) -> (f64, u32, u32) {
    let (mut f, mut fails, mut uses) = (0.0, 0, 0);
    for t in 0..frames {
        let (a, b) = keys(n, qber, key_seed(t));
        let q = a.hamming_distance(&b) as f64 / n as f64;
        let plan = Arc::new(ShufflePlan::new(n, t).unwrap());
        let mut alice = CascadeAlice::new(t, a.clone(), plan.clone(), 2 * n as u64).unwrap();
        let config = CascadeConfig::new(params.clone());
        let mut bob = CascadeBob::new(t, b, plan, config).unwrap();
        let stats = run_in_memory(&mut alice, &mut bob, Instant::now()).unwrap();
        f += stats.efficiency(q);
        uses += stats.channel_uses;
        if bob.key() != &a {
            fails += 1;
        }
    }
    (f / frames as f64, fails, uses / frames as u32)
}

/// Checks what must hold after any completed run, whatever the outcome.
fn check_run(
    variant: Variant,
    alice: &CascadeAlice,
    bob: &CascadeBob,
    bob_before: &BitVec,
    stats: &CascadeStats,
) {
    let errors_before = alice.key().hamming_distance(bob_before);
    let errors_after = alice.key().hamming_distance(bob.key());
    // Every flip corrected an error: no flip ever made things worse.
    assert_eq!(
        bob.key().hamming_distance(bob_before) as u64,
        stats.corrected_bits
    );
    assert_eq!(
        errors_after as u64 + stats.corrected_bits,
        errors_before as u64
    );
    // Both sides counted the same leak and the same rounds.
    assert_eq!(stats.leaked_bits, alice.leaked_bits());
    assert_eq!(stats.channel_uses, alice.rounds());
    let regular = CascadeParams::for_variant(variant, 0.01, 100)
        .unwrap()
        .block_sizes
        .len();
    assert!(stats.passes as usize >= regular);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// For random keys and error patterns at QBER 0–12 %, every variant ends
    /// with both leak counts equal, every flip a correction, and errors left
    /// only where no known parity shows them (checked on the residual).
    #[test]
    fn every_variant_corrects_or_accounts(
        variant_ix in 0usize..7,
        n in 1usize..3000,
        qber in 0.0f64..0.12,
        seed in any::<u64>(),
    ) {
        let variant = Variant::ALL[variant_ix];
        let (alice_key, bob_key) = keys(n, qber, seed);
        let (mut alice, mut bob) = machines(variant, qber, &alice_key, &bob_key, seed);
        let stats = match run_in_memory(&mut alice, &mut bob, Instant::now()) {
            Ok(stats) => stats,
            Err(CascadeError::LeakLimit { limit }) => {
                // Tiny keys can need more parities than Alice's limit of 2n
                // allows (BICONF's ten clean passes alone): she stops at it.
                prop_assert_eq!(limit, 2 * n as u64);
                prop_assert!(alice.leaked_bits() <= limit);
                prop_assert!(alice.is_finished());
                return Ok(());
            }
            Err(e) => panic!("{e:?}"),
        };
        check_run(variant, &alice, &bob, &bob_key, &stats);
        // Residual errors must be invisible to pass 1: every block of pass 1
        // holds an even number of them.
        let params = CascadeParams::for_variant(variant, qber.max(0.001), n).unwrap();
        let k1 = params.block_sizes[0].min(n);
        let residual: Vec<usize> = (0..n).filter(|&i| alice_key.get(i) != bob.key().get(i)).collect();
        for b in 0..n.div_ceil(k1) {
            let in_block = residual.iter().filter(|&&i| i / k1 == b).count();
            prop_assert_eq!(in_block % 2, 0);
        }
    }
}

#[test]
fn original_and_option7_correct_typical_frames() {
    for (variant, seed) in [
        (Variant::Original, 1),
        (Variant::Option7, 2),
        (Variant::Biconf, 3),
        (Variant::Option8, 4),
    ] {
        for qber in [0.01, 0.05, 0.1] {
            let (alice_key, bob_key) = keys(10_000, qber, seed);
            let (mut alice, mut bob) = machines(variant, qber, &alice_key, &bob_key, seed);
            let stats = run_in_memory(&mut alice, &mut bob, Instant::now()).unwrap();
            check_run(variant, &alice, &bob, &bob_key, &stats);
            assert_eq!(bob.key(), &alice_key, "{variant} at {qber}");
            let true_q = alice_key.hamming_distance(&bob_key) as f64 / 1e4;
            let f = stats.efficiency(true_q);
            assert!(f > 1.0 && f < 1.4, "{variant} at {qber}: f = {f}");
        }
    }
}

/// The schedules reach the paper's efficiency on average (seeded, so the
/// result is fixed; the bands are several standard errors wide around the
/// T = 1000 figures in BENCHMARKS.md and exclude the schedules they replace:
/// original with one search wave gives 1.164 at 2 %, option 8 without the
/// deferred cascades 1.055).
#[test]
fn original_and_option8_reach_the_papers_efficiency() {
    for (variant, n, frames, low, high) in [
        (Variant::Original, 10_000, 60, 1.144, 1.160),
        (Variant::Option8, 1 << 14, 40, 1.035, 1.052),
    ] {
        let params = CascadeParams::for_variant(variant, 0.02, n).unwrap();
        let (f, _, _) = mean_run(n, 0.02, frames, |t| 1000 + t, &params);
        assert!(
            (low..high).contains(&f),
            "{variant} at 2 %: mean f = {f:.4}, expected {low}..{high}"
        );
    }
}

/// Found by the property test: a block size between n/2 and n (here 512 of
/// 623 bits in pass 2) was taken for the two-halves case, so Bob's block
/// parities were wrong and a search looped. Must complete and correct.
#[test]
fn block_between_half_and_whole_key_regression() {
    let (n, qber, seed) = (623, 2.239628659379048e-2, 11173652249682906452);
    let (alice_key, bob_key) = keys(n, qber, seed);
    let (mut alice, mut bob) = machines(Variant::Option8, qber, &alice_key, &bob_key, seed);
    let stats = run_in_memory(&mut alice, &mut bob, Instant::now()).unwrap();
    check_run(Variant::Option8, &alice, &bob, &bob_key, &stats);
    assert_eq!(bob.key(), &alice_key);
}

#[test]
fn identical_keys_leak_little_and_change_nothing() {
    let (alice_key, _) = keys(5000, 0.0, 9);
    let (mut alice, mut bob) = machines(Variant::Option8, 0.02, &alice_key, &alice_key, 9);
    let stats = run_in_memory(&mut alice, &mut bob, Instant::now()).unwrap();
    assert_eq!(stats.corrected_bits, 0);
    assert_eq!(bob.key(), &alice_key);
    // Only top-level block parities are asked: no searches.
    let params = CascadeParams::for_variant(Variant::Option8, 0.02, 5000).unwrap();
    let first = 5000usize.div_ceil(params.block_sizes[0]) as u64;
    assert!(stats.leaked_bits >= first);
    // One round per pass: nothing to search.
    assert_eq!(stats.channel_uses, stats.passes);
    assert_eq!(stats.passes as usize, params.block_sizes.len());
    // Pass 1 asks every block; each later pass one block less (the last is
    // implied by the total parity).
    let later: u64 = params.block_sizes[1..]
        .iter()
        .map(|&k| 5000usize.div_ceil(k) as u64 - 1)
        .sum();
    assert_eq!(stats.leaked_bits, first + later);
}

/// Alice refuses to go past her leak limit: she discloses nothing more and
/// both sides abort.
#[test]
fn leak_limit_aborts_both_sides() {
    let (alice_key, bob_key) = keys(4000, 0.05, 11);
    let plan = Arc::new(ShufflePlan::new(4000, 11).unwrap());
    let params = CascadeParams::for_variant(Variant::Original, 0.05, 4000).unwrap();
    let mut alice = CascadeAlice::new(11, alice_key, plan.clone(), 300).unwrap();
    let mut bob = CascadeBob::new(11, bob_key, plan, CascadeConfig::new(params)).unwrap();
    let err = run_in_memory(&mut alice, &mut bob, Instant::now()).unwrap_err();
    assert_eq!(err, CascadeError::LeakLimit { limit: 300 });
    assert!(alice.leaked_bits() <= 300);
    assert!(alice.is_finished());
    // Bob gets the Abort.
    let now = Instant::now();
    while let Some(m) = alice.poll_transmit(now) {
        bob.handle_input(now, &m).unwrap();
    }
    assert!(bob.is_finished());
    assert!(matches!(bob.poll_event(), Some(CascadeEvent::Aborted(_))));
}

#[test]
fn mismatched_seed_or_length_is_incompatible() {
    let (alice_key, bob_key) = keys(1000, 0.05, 12);
    let params = CascadeParams::for_variant(Variant::Original, 0.05, 1000).unwrap();
    let mut alice = CascadeAlice::new(
        1,
        alice_key,
        Arc::new(ShufflePlan::new(1000, 1).unwrap()),
        1000,
    )
    .unwrap();
    let mut bob = CascadeBob::new(
        1,
        bob_key,
        Arc::new(ShufflePlan::new(1000, 2).unwrap()),
        CascadeConfig::new(params),
    )
    .unwrap();
    let err = run_in_memory(&mut alice, &mut bob, Instant::now()).unwrap_err();
    assert!(matches!(err, CascadeError::Incompatible { .. }));
    assert_eq!(alice.leaked_bits(), 0);
}

#[test]
fn messages_for_another_frame_or_from_the_wrong_side_are_rejected() {
    let (alice_key, bob_key) = keys(1000, 0.05, 13);
    let (mut alice, mut bob) = machines(Variant::Original, 0.05, &alice_key, &bob_key, 13);
    let now = Instant::now();
    let q = bob.poll_transmit(now).unwrap();
    // Bob does not accept his own questions; Alice not another frame.
    assert!(matches!(
        bob.handle_input(now, &q),
        Err(CascadeError::Protocol { .. })
    ));
    let other = CascadeMessage::Done {
        frame_id: 99,
        rounds: 0,
        leaked_bits: 0,
    }
    .encode();
    assert!(matches!(
        alice.handle_input(now, &other),
        Err(CascadeError::WrongFrame { .. })
    ));
    assert_eq!(alice.leaked_bits(), 0);
    // A Done with a leak count that differs from Alice's aborts her.
    alice.handle_input(now, &q).unwrap();
    let lie = CascadeMessage::Done {
        frame_id: 13,
        rounds: 1,
        leaked_bits: 1,
    }
    .encode();
    assert!(alice.handle_input(now, &lie).is_err());
    assert!(matches!(alice.poll_event(), Some(CascadeEvent::Aborted(_))));
}

// ----- through the simulated network -----

fn run_sim(
    link: LinkConfig,
    net_seed: u64,
    variant: Variant,
) -> (
    Network<CascadeAlice, CascadeBob>,
    BitVec,
    BitVec,
    Vec<CascadeEvent>,
    Vec<CascadeEvent>,
) {
    let (alice_key, bob_key) = keys(3000, 0.04, net_seed);
    let (alice, bob) = machines(variant, 0.04, &alice_key, &bob_key, net_seed);
    let mut net = Network::new(alice, bob, link, net_seed, Instant::now());
    net.drive();
    let ea = net.take_events_a();
    let eb = net.take_events_b();
    (net, alice_key, bob_key, ea, eb)
}

#[test]
fn sim_loss_duplication_and_reordering_complete_correctly() {
    let link = LinkConfig::lossy(Duration::from_millis(5), 0.2)
        .with_duplicate(0.2)
        .with_reorder(0.2, Duration::from_millis(30))
        .with_jitter(Duration::from_millis(3));
    for seed in 1..6 {
        for variant in [Variant::Original, Variant::Option8, Variant::Biconf] {
            let (net, alice_key, bob_key, ea, eb) = run_sim(link.clone(), seed, variant);
            let bob = &net.b;
            assert!(
                matches!(eb.as_slice(), [CascadeEvent::Completed(_)]),
                "{eb:?}"
            );
            assert!(
                matches!(ea.as_slice(), [CascadeEvent::Completed(_)]),
                "{ea:?}"
            );
            assert_eq!(bob.key(), &alice_key);
            check_run(variant, &net.a, bob, &bob_key, &bob.stats());
            assert!(bob.stats().retransmissions > 0);
            // Duplicates and late copies were ignored, not errors.
            assert!(net.errors_a().is_empty() && net.errors_b().is_empty());
        }
    }
}

#[test]
fn sim_corruption_is_rejected_and_never_gives_a_wrong_key() {
    let link = LinkConfig::perfect(Duration::from_millis(5)).with_corrupt(0.3);
    let mut rejected = 0;
    for seed in 1..9 {
        let (net, alice_key, bob_key, ea, eb) = run_sim(link.clone(), seed, Variant::Option7);
        rejected += net.errors_a().len() + net.errors_b().len();
        // Every damaged datagram ended in a typed error and was dropped.
        for e in net.errors_a().iter().chain(net.errors_b()) {
            assert!(matches!(e, CascadeError::Malformed(_)), "{e:?}");
        }
        let bob = &net.b;
        match eb.as_slice() {
            [CascadeEvent::Completed(_)] => {
                assert!(matches!(ea.as_slice(), [CascadeEvent::Completed(_)]));
                assert_eq!(bob.key(), &alice_key);
                check_run(Variant::Option7, &net.a, bob, &bob_key, &bob.stats());
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert!(
        rejected > 10,
        "the link should have damaged datagrams: {rejected}"
    );
}

#[test]
fn total_loss_ends_in_a_timeout_abort() {
    let link = LinkConfig::lossy(Duration::from_millis(5), 1.0);
    let (net, _, _, ea, eb) = run_sim(link, 3, Variant::Original);
    assert!(ea.is_empty());
    assert!(matches!(eb.as_slice(), [CascadeEvent::Aborted(_)]));
    assert!(net.b.is_finished());
}

/// Efficiency over many frames; `cargo test -p qkd-postproc --release --test cascade -- --ignored --nocapture efficiency_table`.
#[test]
#[ignore = "statistical run, minutes"]
fn efficiency_table() {
    for variant in Variant::ALL {
        let n = if variant == Variant::Option8 {
            1 << 14
        } else {
            10_000
        };
        let mut line = format!("{variant:>9}");
        for qber in [0.01, 0.02, 0.05, 0.1] {
            let params = CascadeParams::for_variant(variant, qber, n).unwrap();
            let (f, fails, uses) = mean_run(n, qber, 200, |t| t * 7 + 1, &params);
            line += &format!("  {f:.4} ({fails}, {uses})");
        }
        println!("{line}");
    }
}

/// Parameter sweep driven by environment variables (development aid):
/// `SWEEP_VARIANTS=option8 SWEEP_QBERS=0.02 SWEEP_WAVES=1,4 SWEEP_TRIALS=100
/// cargo test -p qkd-postproc --release --test cascade -- --ignored --nocapture sweep`.
#[test]
#[ignore = "development sweep"]
fn sweep() {
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let variants: Vec<Variant> = var("SWEEP_VARIANTS", "option8")
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let qbers: Vec<f64> = var("SWEEP_QBERS", "0.02")
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let waves: Vec<u32> = var("SWEEP_WAVES", "0")
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let trials: u64 = var("SWEEP_TRIALS", "100").parse().unwrap();
    let k1s: Vec<usize> = var("SWEEP_K", "0")
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let k2: usize = var("SWEEP_K2", "0").parse().unwrap();
    let n_override: usize = var("SWEEP_N", "0").parse().unwrap();
    for variant in variants {
        let n = if n_override > 0 {
            n_override
        } else if variant == Variant::Option8 {
            1 << 14
        } else {
            10_000
        };
        for &qber in &qbers {
            for &w in &waves {
                for &k in &k1s {
                    let mut params = CascadeParams::for_variant(variant, qber, n).unwrap();
                    if w > 0 {
                        params.search_waves = w;
                    }
                    if k > 0 && variant == Variant::Original {
                        // Doubling the integer k1 (sweeps only).
                        params.block_sizes = (0..4).map(|i| (k << i).min(n)).collect();
                    } else if k > 0 {
                        params.block_sizes[0] = k;
                    }
                    if k2 > 0 {
                        params.block_sizes[1] = k2;
                    }
                    let (f, fails, uses) = mean_run(n, qber, trials, |t| t * 7 + 1, &params);
                    println!(
                        "{variant} q={qber} waves={w} k1={k}: f={f:.4} fails={fails} uses={uses}"
                    );
                }
            }
        }
    }
}
