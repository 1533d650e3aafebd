//! The pipeline with the `ldpc` correction stage end to end: two pipelines,
//! the simulated BB84 device and the simulated network (`qkd_core::sim`),
//! fixed seeds.

use std::time::{Duration, Instant};

use qkd_core::module::{ModuleHost, Value};
use qkd_core::sim::{LinkConfig, Network};
use qkd_core::{BlockId, QkdDevice, Role, SecretKey, SimulatedBb84, SimulatorConfig};
use qkd_postproc::amplify::length::finite_key_length;
use qkd_postproc::auth::{PresharedSecret, SecretId};
use qkd_postproc::confirm::ConfirmConfig;
use qkd_postproc::estimate::Estimate;
use qkd_postproc::pipeline::{
    AuthMode, BlockReport, DropReason, Pipeline, PipelineDefinition, PipelineEvent, StageKind,
    WorkItem,
};

const LDPC_TOML: &str = include_str!("../pipelines/ldpc.toml");
const GUIDED_TOML: &str = include_str!("../pipelines/ldpc-guided.toml");

/// The committed `ldpc.toml`, with shorter frames so the blocks of the
/// tests (about 10^5 key bits) fill several frames of several lengths.
fn definition(frame_bits: u64) -> PipelineDefinition {
    definition_from(LDPC_TOML, frame_bits)
}

/// A committed definition (`ldpc.toml`, `ldpc-guided.toml`) with frames of
/// `frame_bits`.
fn definition_from(text: &str, frame_bits: u64) -> PipelineDefinition {
    let text = text.replace("frame_bits = 131072", &format!("frame_bits = {frame_bits}"));
    PipelineDefinition::from_toml(&text).unwrap()
}

fn pair(def: &PipelineDefinition) -> (Pipeline, Pipeline) {
    let secret = SecretKey::from_slice(&vec![0x42; 1 << 16]);
    let a = Pipeline::new(
        def,
        Role::Alice,
        PresharedSecret::new(SecretId::new(1), secret.clone()),
        [1; 32],
    )
    .unwrap();
    let b = Pipeline::new(
        def,
        Role::Bob,
        PresharedSecret::new(SecretId::new(1), secret),
        [2; 32],
    )
    .unwrap();
    (a, b)
}

fn devices(qber: f64, frames: u64, slots: usize) -> (impl QkdDevice, impl QkdDevice) {
    let config = SimulatorConfig {
        qber,
        frame_slots: slots,
        detection_probability: 0.5,
        seed: 11,
        ..Default::default()
    };
    (
        SimulatedBb84::device(config.clone(), Role::Alice)
            .unwrap()
            .with_frame_limit(frames),
        SimulatedBb84::device(config, Role::Bob)
            .unwrap()
            .with_frame_limit(frames),
    )
}

#[derive(Default)]
struct Outcomes {
    keys: Vec<(BlockId, Vec<u8>, BlockReport)>,
    dropped: Vec<(BlockId, StageKind, DropReason)>,
    /// Work items this side handed out.
    work_items: usize,
}

fn collect(events: Vec<PipelineEvent>, out: &mut Outcomes) {
    for e in events {
        match e {
            PipelineEvent::FinalKey { block, key, stats } => {
                out.keys.push((block, key.expose_secret().to_vec(), stats));
            }
            PipelineEvent::Dropped {
                block,
                stage,
                reason,
                ..
            } => out.dropped.push((block, stage, reason)),
            _ => {}
        }
    }
}

fn run(
    net: &mut Network<Pipeline, Pipeline>,
    dev_a: &mut impl QkdDevice,
    dev_b: &mut impl QkdDevice,
    limit: Duration,
) -> (Outcomes, Outcomes) {
    run_with(net, dev_a, dev_b, limit, false)
}

/// [`run`]; with `workers`, both sides hand their decoding steps and
/// privacy amplification out, and the host completes them one network step
/// later, the newest first.
fn run_with(
    net: &mut Network<Pipeline, Pipeline>,
    dev_a: &mut impl QkdDevice,
    dev_b: &mut impl QkdDevice,
    limit: Duration,
    workers: bool,
) -> (Outcomes, Outcomes) {
    let (mut a, mut b) = (Outcomes::default(), Outcomes::default());
    let deadline = net.now() + limit;
    let mut next_a = dev_a.next_frame().unwrap();
    let mut next_b = dev_b.next_frame().unwrap();
    for p in [&mut net.a, &mut net.b] {
        p.set_external_work(workers);
        p.set_external_correction(workers);
    }
    let mut out: [Vec<WorkItem>; 2] = [Vec::new(), Vec::new()];
    loop {
        let now = net.now();
        for (side, items) in out.iter_mut().enumerate() {
            let p = if side == 0 { &mut net.a } else { &mut net.b };
            for item in items.drain(..).rev() {
                p.complete_work(now, item.run());
            }
            while let Some(item) = p.poll_work() {
                items.push(item);
                if side == 0 {
                    a.work_items += 1;
                } else {
                    b.work_items += 1;
                }
            }
        }
        while next_a.is_some() && net.a.wants_frame() {
            net.a.push_frame(now, next_a.take().unwrap()).unwrap();
            next_a = dev_a.next_frame().unwrap();
        }
        while next_b.is_some() && net.b.wants_frame() {
            net.b.push_frame(now, next_b.take().unwrap()).unwrap();
            next_b = dev_b.next_frame().unwrap();
        }
        let busy = out.iter().any(|items| !items.is_empty());
        if !net.step() && !busy && next_a.is_none() && next_b.is_none() {
            break;
        }
        collect(net.take_events_a(), &mut a);
        collect(net.take_events_b(), &mut b);
        if net.now() > deadline {
            break;
        }
    }
    collect(net.take_events_a(), &mut a);
    collect(net.take_events_b(), &mut b);
    (a, b)
}

fn check_same_keys(a: &Outcomes, b: &Outcomes) {
    assert_eq!(a.keys.len(), b.keys.len(), "kept on one side only");
    for ((ba, ka, _), (bb, kb, _)) in a.keys.iter().zip(&b.keys) {
        assert_eq!(ba, bb);
        assert_eq!(ka, kb, "block {ba}: keys differ");
    }
    let mut da: Vec<_> = a.dropped.iter().map(|d| d.0).collect();
    let mut db: Vec<_> = b.dropped.iter().map(|d| d.0).collect();
    da.sort();
    db.sort();
    assert_eq!(da, db, "dropped on one side only");
}

fn check_pools(net: &Network<Pipeline, Pipeline>) {
    assert_eq!(
        net.a.channel().pool().feed_digest(),
        net.b.channel().pool().feed_digest(),
        "the pools were fed differently"
    );
    assert!(!net.a.channel().is_diverged() && !net.b.channel().is_diverged());
}

fn statistic(p: &Pipeline, name: &str) -> u64 {
    let module = p.module("ldpc").unwrap();
    let stat = module.statistics().into_iter().find(|s| s.name == name);
    match stat.map(|s| s.value) {
        Some(Value::U64(v)) => v,
        other => panic!("{name}: {other:?}"),
    }
}

/// Keys identical on both sides at QBER 2 % and 5 %, every length the
/// formula's for the block's numbers with LDPC's leakage, statistics adding
/// up (the Cascade test `keys_identical_lengths_from_the_formula_and_stats_add_up`
/// with LDPC in its place).
#[test]
fn ldpc_keys_identical_lengths_from_the_formula_and_stats_add_up() {
    keys_lengths_and_stats(LDPC_TOML);
}

/// The same with guided frames (`ldpc-guided.toml`): Bob's requests are
/// answered through the stream, and every frame needed some (they start at
/// f = 1).
#[test]
fn guided_keys_identical_lengths_from_the_formula_and_stats_add_up() {
    keys_lengths_and_stats(GUIDED_TOML);
}

fn keys_lengths_and_stats(text: &str) {
    let guided = text.contains("\"guided\"");
    for qber in [0.02, 0.05] {
        // 2^15-bit frames: with the shipped layout (modulated 0.1, first
        // syndrome at 1.08) about 1 in 100 frames of 2^14 bits does not
        // decode at QBER 2 % whatever is revealed (`blind_table`, LDPC_N
        // 16384, 100 frames; 1 in 100 at 5 % with modulated 0.25), and
        // this test's seed meets one.
        let def = definition_from(text, 1 << 15);
        let (alice, bob) = pair(&def);
        let (mut dev_a, mut dev_b) = devices(qber, 3, 1 << 19);
        let mut net = Network::new(
            alice,
            bob,
            LinkConfig::perfect(Duration::from_millis(2)),
            1,
            Instant::now(),
        );
        let (a, b) = run(&mut net, &mut dev_a, &mut dev_b, Duration::from_secs(600));
        assert_eq!(a.keys.len(), 3, "QBER {qber}: dropped {:?}", a.dropped);
        check_same_keys(&a, &b);
        check_pools(&net);
        let confirm = ConfirmConfig {
            tag_bits: 64,
            ..ConfirmConfig::default()
        };
        let mut frames = 0;
        let mut leaked = 0;
        for ((_, key, r), (_, _, rb)) in a.keys.iter().zip(&b.keys) {
            let estimate = Estimate {
                block: BlockId::new(r.block),
                sifted_bits: r.sifted_bits,
                sample_bits: r.sample_bits,
                sample_errors: r.sample_errors,
                qber: r.qber,
                qber_upper: r.qber_upper,
            };
            let input = estimate.finite_key_input(
                r.parity_bits + r.leftover_bits,
                64,
                1e-10,
                confirm.eps_cor(r.corrected_bits),
            );
            assert_eq!(r.final_bits, finite_key_length(&input).unwrap().bits);
            assert_eq!(r.leaked_bits, r.parity_bits + r.leftover_bits);
            assert_eq!(r.sifted_bits, r.sample_bits + r.key_bits);
            assert_eq!(r.key_bits, r.corrected_bits + r.leftover_bits);
            assert_eq!(r.hashed_bits, r.final_bits / 8 * 8);
            assert_eq!(r.hashed_bits, r.pool_bits + r.key_out_bits);
            assert_eq!(key.len() as u64 * 8, r.key_out_bits);
            // Frames of 2^14 bits, then shorter ones down to 2^12: fewer
            // than a 2^12-bit frame's key bits are left over.
            assert!(r.leftover_bits < 4096, "{r:?}");
            assert!(r.chunks >= 2, "{r:?}");
            assert!(r.ldpc_rounds >= u64::from(r.chunks));
            if guided {
                // Started at f = 1: every frame asked for bits.
                assert!(r.ldpc_rounds >= 2 * u64::from(r.chunks), "{r:?}");
                assert!(r.revealed_bits > 0, "{r:?}");
            }
            // Both sides counted the same leakage and rounds.
            assert_eq!(
                (r.parity_bits, r.ldpc_rounds, r.revealed_bits),
                (rb.parity_bits, rb.ldpc_rounds, rb.revealed_bits)
            );
            // The syndrome leaks at least h2(QBER) per corrected bit (the
            // Shannon limit) and, for these codes, under 2·h2.
            let h = qkd_core::h2(r.qber.max(1e-3));
            let f = r.parity_bits as f64 / (r.corrected_bits as f64 * h);
            assert!(f > 1.0 && f < 2.0, "QBER {qber}: f = {f}: {r:?}");
            assert!(r.final_bits > 0);
            frames += u64::from(r.chunks);
            leaked += r.leaked_bits;
        }
        let s = net.a.stats();
        assert_eq!(s.blocks_kept, 3);
        assert_eq!(
            s.sifted_bits,
            s.sample_bits + s.corrected_bits + s.leftover_bits
        );
        assert_eq!(s.hashed_bits, s.pool_bits + s.key_out_bits);
        assert_eq!(net.a.stats().final_bits, net.b.stats().final_bits);
        // The module's statistics.
        for p in [&net.a, &net.b] {
            assert_eq!(statistic(p, "frames"), frames);
            assert_eq!(statistic(p, "decode_failures"), 0);
            assert_eq!(statistic(p, "leaked_bits"), leaked);
            assert_eq!(statistic(p, "blocks_out"), 3);
        }
        assert_eq!(
            statistic(&net.a, "revealed_bits"),
            a.keys.iter().map(|k| k.2.revealed_bits).sum::<u64>()
        );
    }
}

/// Loss, duplication, reordering and corruption: the same keys on both
/// sides or none, blocks dropped on both sides, pools in step.
/// Decoding on "workers" (steps handed out and completed a network step
/// later): the same keys as decoding inline.
#[test]
fn ldpc_decoding_on_workers_gives_the_same_keys() {
    let def = definition(1 << 13);
    let mut keys = Vec::new();
    for workers in [false, true] {
        let (alice, bob) = pair(&def);
        let (mut dev_a, mut dev_b) = devices(0.03, 3, 1 << 17);
        let link = LinkConfig::perfect(Duration::from_millis(2));
        let mut net = Network::new(alice, bob, link, 1, Instant::now());
        let limit = Duration::from_secs(600);
        let (a, b) = run_with(&mut net, &mut dev_a, &mut dev_b, limit, workers);
        assert_eq!(
            a.keys.len(),
            3,
            "workers {workers}: dropped {:?}",
            a.dropped
        );
        check_same_keys(&a, &b);
        check_pools(&net);
        if workers {
            // Bob's decoding steps went out, not only the amplifications.
            assert!(b.work_items > 3 + 3, "{} items", b.work_items);
        }
        keys.push(a.keys);
    }
    assert_eq!(keys[0], keys[1]);
}

#[test]
fn ldpc_on_a_hostile_link_never_gives_a_wrong_key() {
    let runs = [
        (LDPC_TOML, AuthMode::Transcript, 1),
        (LDPC_TOML, AuthMode::PerMessage, 2),
        (GUIDED_TOML, AuthMode::Transcript, 3),
    ];
    for (text, mode, seed) in runs {
        let mut def = definition_from(text, 1 << 13);
        def.authentication = mode;
        let (alice, bob) = pair(&def);
        let (mut dev_a, mut dev_b) = devices(0.03, 3, 1 << 17);
        let mut net = Network::new(
            alice,
            bob,
            LinkConfig::hostile(Duration::from_millis(3)),
            seed,
            Instant::now(),
        );
        let (a, b) = run(&mut net, &mut dev_a, &mut dev_b, Duration::from_secs(3600));
        check_same_keys(&a, &b);
        check_pools(&net);
        assert!(
            !a.keys.is_empty(),
            "{mode:?}: nothing kept: {:?} / {:?}",
            a.dropped,
            b.dropped
        );
    }
}

/// A frame that cannot decode (rate-adaptive, one round, a syndrome far
/// too short for the QBER) drops the block on both sides in the `ldpc`
/// stage with a correction reason; no key comes out.
#[test]
fn a_frame_that_fails_drops_the_block_on_both_sides() {
    let text = LDPC_TOML
        .replace("variant = \"blind\"", "variant = \"rate_adaptive\"")
        .replace("frame_bits = 131072", "frame_bits = 8192")
        .replace("efficiency = 1.08", "efficiency = 1.0")
        .replace("max_iterations = 60", "max_iterations = 2");
    let def = PipelineDefinition::from_toml(&text).unwrap();
    let (alice, bob) = pair(&def);
    let (mut dev_a, mut dev_b) = devices(0.05, 2, 1 << 17);
    let mut net = Network::new(
        alice,
        bob,
        LinkConfig::perfect(Duration::from_millis(2)),
        1,
        Instant::now(),
    );
    let (a, b) = run(&mut net, &mut dev_a, &mut dev_b, Duration::from_secs(600));
    assert!(a.keys.is_empty() && b.keys.is_empty());
    check_same_keys(&a, &b);
    assert_eq!(a.dropped.len(), 2);
    for (_, stage, reason) in &a.dropped {
        assert_eq!(*stage, StageKind::Ldpc);
        assert!(matches!(reason, DropReason::Correction(_)), "{reason:?}");
    }
    assert!(statistic(&net.a, "decode_failures") >= 2);
    check_pools(&net);
}

/// A parameter changed on Alice between blocks takes effect on both sides
/// from the next block (she announces it), and Bob's read-only copy follows.
#[test]
fn a_parameter_change_on_alice_reaches_bob() {
    let def = definition(1 << 14);
    let (alice, bob) = pair(&def);
    let (mut dev_a, mut dev_b) = devices(0.02, 1, 1 << 18);
    let mut net = Network::new(
        alice,
        bob,
        LinkConfig::perfect(Duration::from_millis(2)),
        1,
        Instant::now(),
    );
    net.a
        .module_mut("ldpc")
        .unwrap()
        .set_parameter("max_iterations", &Value::U64(45))
        .unwrap();
    net.a
        .module_mut("ldpc")
        .unwrap()
        .set_parameter("variant", &Value::Text("rate_adaptive".into()))
        .unwrap();
    net.a
        .module_mut("ldpc")
        .unwrap()
        .set_parameter("efficiency", &Value::F64(1.6))
        .unwrap();
    let (a, b) = run(&mut net, &mut dev_a, &mut dev_b, Duration::from_secs(600));
    assert_eq!(a.keys.len(), 1, "{:?}", a.dropped);
    check_same_keys(&a, &b);
    let bob = net.b.module("ldpc").unwrap();
    assert_eq!(bob.parameter("max_iterations").unwrap(), Value::U64(45));
    assert_eq!(
        bob.parameter("variant").unwrap(),
        Value::Text("rate_adaptive".into())
    );
    // Rate-adaptive: one round per frame, nothing revealed.
    let r = &a.keys[0].2;
    assert_eq!(r.ldpc_rounds, u64::from(r.chunks));
    assert_eq!(r.revealed_bits, 0);
}
