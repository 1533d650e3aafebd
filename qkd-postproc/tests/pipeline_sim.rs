//! The pipeline end to end: two pipelines, the simulated BB84 device and the
//! simulated network (`qkd_core::sim`), fixed seeds.

use std::time::{Duration, Instant};

use qkd_core::module::ModuleHost;
use qkd_core::sim::{LinkConfig, Network};
use qkd_core::{BlockId, QkdDevice, Role, SecretKey, SimulatedBb84, SimulatorConfig};
use qkd_postproc::amplify::length::finite_key_length;
use qkd_postproc::auth::{PresharedSecret, SecretId};
use qkd_postproc::confirm::ConfirmConfig;
use qkd_postproc::estimate::Estimate;
use qkd_postproc::pipeline::{
    AuthMode, BlockReport, Pipeline, PipelineDefinition, PipelineEvent, WorkItem,
};

fn definition(mode: AuthMode) -> PipelineDefinition {
    let mut d = PipelineDefinition::from_toml(include_str!("../pipelines/default.toml")).unwrap();
    d.authentication = mode;
    d
}

fn pair(def: &PipelineDefinition) -> (Pipeline, Pipeline) {
    // Per-message mode seals every Cascade message: it needs a large secret
    // until the first blocks refill the pool.
    let secret = SecretKey::from_slice(&vec![0x42; 1 << 18]);
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

fn devices(frames: u64, slots: usize) -> (impl QkdDevice, impl QkdDevice) {
    let config = SimulatorConfig {
        qber: 0.02,
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
    dropped: Vec<BlockId>,
    reasons: Vec<String>,
    ended: bool,
    exhausted: Vec<u64>,
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
            } => {
                out.dropped.push(block);
                out.reasons.push(format!("{block} {stage}: {reason:?}"));
            }
            PipelineEvent::DefinitionMismatch | PipelineEvent::FeedDiverged { .. } => {
                out.ended = true
            }
            PipelineEvent::AuthExhausted { remaining_bits } => out.exhausted.push(remaining_bits),
            _ => {}
        }
    }
}

/// Runs both pipelines until every frame is settled or `limit` passes.
fn run(
    net: &mut Network<Pipeline, Pipeline>,
    dev_a: &mut impl QkdDevice,
    dev_b: &mut impl QkdDevice,
    a: &mut Outcomes,
    b: &mut Outcomes,
    limit: Duration,
) {
    run_with(net, dev_a, dev_b, a, b, limit, None);
}

/// [`run`]; with `workers = Some(lag)`, both sides hand their heavy steps
/// (Cascade turns and privacy amplification) out as work items, and the
/// host completes each `lag` network steps after it was handed out, the
/// newest first (as workers that finish out of order would).
fn run_with(
    net: &mut Network<Pipeline, Pipeline>,
    dev_a: &mut impl QkdDevice,
    dev_b: &mut impl QkdDevice,
    a: &mut Outcomes,
    b: &mut Outcomes,
    limit: Duration,
    workers: Option<usize>,
) {
    let deadline = net.now() + limit;
    let mut next_a = dev_a.next_frame().unwrap();
    let mut next_b = dev_b.next_frame().unwrap();
    if workers.is_some() {
        for p in [&mut net.a, &mut net.b] {
            p.set_external_work(true);
            p.set_external_correction(true);
        }
    }
    let mut out: [Vec<(usize, WorkItem)>; 2] = [Vec::new(), Vec::new()];
    let mut steps = 0usize;
    loop {
        steps += 1;
        if let Some(lag) = workers {
            let now = net.now();
            for (side, items) in out.iter_mut().enumerate() {
                let p = if side == 0 { &mut net.a } else { &mut net.b };
                let (due, wait): (Vec<_>, Vec<_>) =
                    items.drain(..).partition(|(at, _)| at + lag <= steps);
                *items = wait;
                for (_, item) in due.into_iter().rev() {
                    p.complete_work(now, item.run());
                }
                while let Some(item) = p.poll_work() {
                    items.push((steps, item));
                    if side == 0 {
                        a.work_items += 1;
                    } else {
                        b.work_items += 1;
                    }
                }
            }
        }
        let now = net.now();
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
        collect(net.take_events_a(), a);
        collect(net.take_events_b(), b);
        if net.now() > deadline {
            break;
        }
    }
    collect(net.take_events_a(), a);
    collect(net.take_events_b(), b);
}

fn check_same_keys(a: &Outcomes, b: &Outcomes) {
    assert_eq!(a.keys.len(), b.keys.len(), "kept on one side only");
    for ((ba, ka, _), (bb, kb, _)) in a.keys.iter().zip(&b.keys) {
        assert_eq!(ba, bb);
        assert_eq!(ka, kb, "block {ba}: keys differ");
    }
    let mut da = a.dropped.clone();
    let mut db = b.dropped.clone();
    da.sort();
    db.sort();
    assert_eq!(da, db, "dropped on one side only");
}

#[test]
fn keys_identical_lengths_from_the_formula_and_stats_add_up() {
    let def = definition(AuthMode::Transcript);
    let (alice, bob) = pair(&def);
    let (mut dev_a, mut dev_b) = devices(4, 1 << 19);
    let mut net = Network::new(
        alice,
        bob,
        LinkConfig::perfect(Duration::from_millis(2)),
        1,
        Instant::now(),
    );
    let (mut a, mut b) = (Outcomes::default(), Outcomes::default());
    run(
        &mut net,
        &mut dev_a,
        &mut dev_b,
        &mut a,
        &mut b,
        Duration::from_secs(600),
    );
    assert_eq!(
        a.keys.len(),
        4,
        "dropped: {:?} / {:?}",
        a.reasons,
        b.reasons
    );
    check_same_keys(&a, &b);
    let confirm = ConfirmConfig {
        tag_bits: 64,
        ..ConfirmConfig::default()
    };
    for (_, key, r) in &a.keys {
        // The length is the formula's for exactly this block's numbers.
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
        assert_eq!(r.sifted_bits, r.sample_bits + r.key_bits);
        assert_eq!(r.key_bits, r.corrected_bits + r.leftover_bits);
        assert_eq!(r.hashed_bits, r.final_bits / 8 * 8);
        assert_eq!(r.hashed_bits, r.pool_bits + r.key_out_bits);
        assert_eq!(key.len() as u64 * 8, r.key_out_bits);
        assert!(r.leftover_bits < 1024);
        assert!(r.final_bits * 5 > r.key_bits * 2, "{r:?}");
    }
    let s = net.a.stats();
    assert_eq!(s.blocks_kept, 4);
    assert_eq!(
        s.sifted_bits,
        s.sample_bits + s.corrected_bits + s.leftover_bits
    );
    assert_eq!(s.hashed_bits, s.pool_bits + s.key_out_bits);
    assert_eq!(net.a.stats().final_bits, net.b.stats().final_bits);
    // The pools were fed the same blocks.
    assert_eq!(
        net.a.channel().pool().feed_digest(),
        net.b.channel().pool().feed_digest()
    );
    // The modules see it too.
    let est = net.a.module("estimate").unwrap();
    assert!(est.statistics().iter().any(|s| s.name == "qber"));
}

/// A pre-shared secret too small for the first block's tags: the side
/// that cannot pay says so (once, not on every retry), no key comes out on
/// either side, and with nothing in flight to refill the pool the host can
/// tell the link is over. (Before the event, the pipeline went silent.)
#[test]
fn a_pool_that_cannot_pay_raises_auth_exhausted_once() {
    let def = definition(AuthMode::Transcript);
    for secret_bytes in [64usize, 80, 96] {
        let secret = SecretKey::from_slice(&vec![0x42; secret_bytes]);
        let alice = Pipeline::new(
            &def,
            Role::Alice,
            PresharedSecret::new(SecretId::new(1), secret.clone()),
            [1; 32],
        )
        .unwrap();
        let bob = Pipeline::new(
            &def,
            Role::Bob,
            PresharedSecret::new(SecretId::new(1), secret),
            [2; 32],
        )
        .unwrap();
        let (mut dev_a, mut dev_b) = devices(2, 1 << 16);
        let mut net = Network::new(
            alice,
            bob,
            LinkConfig::perfect(Duration::from_millis(2)),
            1,
            Instant::now(),
        );
        let (mut a, mut b) = (Outcomes::default(), Outcomes::default());
        run(
            &mut net,
            &mut dev_a,
            &mut dev_b,
            &mut a,
            &mut b,
            Duration::from_secs(120),
        );
        check_same_keys(&a, &b);
        let told: Vec<u64> = a.exhausted.iter().chain(&b.exhausted).copied().collect();
        assert!(
            !told.is_empty(),
            "{secret_bytes} B: nobody said the pool is empty"
        );
        assert!(
            told.len() <= 2,
            "{secret_bytes} B: told on every retry: {told:?}"
        );
        assert!(told.iter().all(|&bits| bits < 128), "{told:?}");
        assert!(a.keys.len() < 2, "{secret_bytes} B: every block kept");
    }
}

fn run_link(
    def: &PipelineDefinition,
    link: LinkConfig,
    frames: u64,
    seed: u64,
) -> (Outcomes, Outcomes, Network<Pipeline, Pipeline>) {
    let (alice, bob) = pair(def);
    let (mut dev_a, mut dev_b) = devices(frames, 1 << 16);
    let mut net = Network::new(alice, bob, link, seed, Instant::now());
    let (mut a, mut b) = (Outcomes::default(), Outcomes::default());
    run(
        &mut net,
        &mut dev_a,
        &mut dev_b,
        &mut a,
        &mut b,
        Duration::from_secs(3600),
    );
    (a, b, net)
}

fn check_pools(net: &Network<Pipeline, Pipeline>) {
    assert_eq!(
        net.a.channel().pool().feed_digest(),
        net.b.channel().pool().feed_digest(),
        "the pools were fed differently"
    );
    assert!(!net.a.channel().is_diverged() && !net.b.channel().is_diverged());
}

#[test]
fn per_message_mode_gives_the_same_keys_as_transcript_mode() {
    let (a, b, net) = run_link(
        &definition(AuthMode::PerMessage),
        LinkConfig::perfect(Duration::from_millis(2)),
        3,
        1,
    );
    assert_eq!(a.keys.len(), 3, "{:?}", a.reasons);
    check_same_keys(&a, &b);
    check_pools(&net);
    let (t, _, _) = run_link(
        &definition(AuthMode::Transcript),
        LinkConfig::perfect(Duration::from_millis(2)),
        3,
        1,
    );
    // Same seeds, same blocks: the same keys whatever the authentication.
    for ((_, k1, r1), (_, k2, r2)) in a.keys.iter().zip(&t.keys) {
        assert_eq!(k1, k2);
        // Per-message mode pays a tag per message, transcript mode a few per block.
        assert!(
            r1.auth_bits_sent > 4 * r2.auth_bits_sent,
            "{} vs {}",
            r1.auth_bits_sent,
            r2.auth_bits_sent
        );
    }
}

#[test]
fn hostile_link_never_gives_a_wrong_key_and_drops_on_both_sides() {
    for mode in [AuthMode::Transcript, AuthMode::PerMessage] {
        for seed in 1..=3 {
            let (a, b, net) = run_link(
                &definition(mode),
                LinkConfig::hostile(Duration::from_millis(3)),
                4,
                seed,
            );
            check_same_keys(&a, &b);
            check_pools(&net);
            assert!(!a.ended && !b.ended);
            assert!(
                !a.keys.is_empty(),
                "{mode:?} seed {seed}: nothing kept: {:?} / {:?}",
                a.reasons,
                b.reasons
            );
        }
    }
}

/// Heavy steps on "workers" (Cascade turns and privacy amplification
/// handed out, completed later and out of order): the same keys and the
/// same disclosed bits as computed inline, and on a hostile link (loss,
/// duplication, reordering, corruption) still never a wrong key or a block
/// kept on one side only.
#[test]
fn heavy_steps_on_workers_give_the_same_keys_and_survive_a_hostile_link() {
    let def = definition(AuthMode::Transcript);
    let run_one = |link: LinkConfig, seed: u64, workers: Option<usize>| {
        let (alice, bob) = pair(&def);
        let (mut dev_a, mut dev_b) = devices(4, 1 << 16);
        let mut net = Network::new(alice, bob, link, seed, Instant::now());
        let (mut a, mut b) = (Outcomes::default(), Outcomes::default());
        let limit = Duration::from_secs(3600);
        run_with(
            &mut net, &mut dev_a, &mut dev_b, &mut a, &mut b, limit, workers,
        );
        (a, b, net)
    };
    let perfect = LinkConfig::perfect(Duration::from_millis(2));
    let (inline, _, _) = run_one(perfect.clone(), 1, None);
    for lag in [1, 3] {
        let (a, b, net) = run_one(perfect.clone(), 1, Some(lag));
        assert_eq!(a.keys.len(), 4, "lag {lag}: {:?}", a.reasons);
        // Every Cascade turn went out, not only the four amplifications.
        let turns = a
            .keys
            .iter()
            .map(|(_, _, r)| r.cascade_rounds)
            .max()
            .unwrap_or(0);
        assert!(a.work_items > 4 + turns as usize, "{} items", a.work_items);
        assert!(b.work_items > 4 + turns as usize, "{} items", b.work_items);
        check_same_keys(&a, &b);
        check_pools(&net);
        for ((ba, ka, ra), (bi, ki, ri)) in a.keys.iter().zip(&inline.keys) {
            assert_eq!((ba, ka), (bi, ki), "lag {lag}: another key than inline");
            assert_eq!(ra.parity_bits, ri.parity_bits);
            assert_eq!(ra.cascade_rounds, ri.cascade_rounds);
        }
    }
    for seed in 1..=3 {
        let (a, b, net) = run_one(LinkConfig::hostile(Duration::from_millis(3)), seed, Some(2));
        check_same_keys(&a, &b);
        check_pools(&net);
        assert!(!a.ended && !b.ended);
        assert!(
            !a.keys.is_empty(),
            "seed {seed}: nothing kept: {:?}",
            a.reasons
        );
    }
}

#[test]
fn an_attacker_altering_messages_gets_no_key_through() {
    use qkd_core::sim::Side;
    for mode in [AuthMode::Transcript, AuthMode::PerMessage] {
        let (alice, bob) = pair(&definition(mode));
        let (mut dev_a, mut dev_b) = devices(3, 1 << 16);
        let mut net = Network::new(
            alice,
            bob,
            LinkConfig::perfect(Duration::from_millis(2)),
            5,
            Instant::now(),
        );
        // Flip a payload bit of every 7th data frame from Bob, fixing the CRC
        // so that the frame reaches the authentication layer.
        let mut n = 0u32;
        net.set_interceptor(Box::new(move |side, datagram: &mut Vec<u8>| {
            if side == Side::B && datagram.len() > 40 && datagram[2] == 1 {
                n += 1;
                if n.is_multiple_of(7) {
                    let at = datagram.len() - 10;
                    datagram[at] ^= 0x10;
                    let body = datagram.len() - 4;
                    let crc = crc32(&datagram[..body]);
                    datagram[body..].copy_from_slice(&crc.to_be_bytes());
                }
            }
            true
        }));
        let (mut a, mut b) = (Outcomes::default(), Outcomes::default());
        run(
            &mut net,
            &mut dev_a,
            &mut dev_b,
            &mut a,
            &mut b,
            Duration::from_secs(3600),
        );
        check_same_keys(&a, &b);
        check_pools(&net);
        if mode == AuthMode::PerMessage {
            // Every altered message was refused and resent: nothing lost.
            assert!(net.a.channel().stats().forgeries_rejected > 0);
        } else {
            // The altered rounds were dropped on both sides by the transcript tags.
            assert!(
                a.reasons
                    .iter()
                    .chain(&b.reasons)
                    .any(|r| r.contains("Transcript")
                        || r.contains("Protocol")
                        || r.contains("Correction")
                        || r.contains("Confirm")),
                "{:?}",
                a.reasons
            );
        }
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    // CRC-32 (IEEE), bitwise: the tests only need it for a few frames.
    let mut crc = !0u32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn peers_with_different_definitions_refuse_each_other() {
    let secret = SecretKey::from_slice(&[0x42; 8192]);
    let d1 = definition(AuthMode::Transcript);
    let d2 = PipelineDefinition::from_toml(
        &include_str!("../pipelines/default.toml").replace("option7", "option8"),
    )
    .unwrap();
    let a = Pipeline::new(
        &d1,
        Role::Alice,
        PresharedSecret::new(SecretId::new(1), secret.clone()),
        [1; 32],
    )
    .unwrap();
    let b = Pipeline::new(
        &d2,
        Role::Bob,
        PresharedSecret::new(SecretId::new(1), secret),
        [2; 32],
    )
    .unwrap();
    assert_ne!(a.definition_digest(), b.definition_digest());
    let mut net = Network::new(
        a,
        b,
        LinkConfig::perfect(Duration::from_millis(2)),
        1,
        Instant::now(),
    );
    net.drive_for(Duration::from_secs(5));
    let (mut a, mut b) = (Outcomes::default(), Outcomes::default());
    collect(net.take_events_a(), &mut a);
    collect(net.take_events_b(), &mut b);
    assert!(a.ended && b.ended);
    assert!(net.a.is_finished() && net.b.is_finished());
}

/// Where the entries of a Cascade batch (`17 01 12`) sit in a Data frame
/// of the transcript mode: `(chunk, start, length)` of each message, or
/// `None` if the frame carries something else.
fn batch_entries(datagram: &[u8]) -> Option<Vec<(u32, usize, usize)>> {
    // Data: 17 01 01 | block u64 | ack u32 | seq u32 | sealed u8 | body | crc u32.
    const BODY: usize = 20;
    if datagram.len() < BODY + 11 || datagram[2] != 1 || datagram[19] != 0 {
        return None;
    }
    let end = datagram.len() - 4;
    let body = &datagram[BODY..end];
    if body[..3] != [0x17, 1, 0x12] {
        return None;
    }
    let u32_at = |at: usize| u32::from_be_bytes(body[at..at + 4].try_into().unwrap());
    let count = u32_at(3) as usize;
    let mut at = 7;
    let mut entries = Vec::new();
    for _ in 0..count {
        let chunk = u32_at(at);
        let length = u32_at(at + 4) as usize;
        entries.push((chunk, BODY + at + 8, length));
        at += 8 + length;
    }
    Some(entries)
}

/// An attacker alters one chunk's Cascade message inside a batch (the
/// second entry of the first batch from Bob with at least two), fixing
/// both the Cascade message's CRC and the frame's so that the altered
/// message reaches Alice's Cascade machine. That block is dropped on both
/// sides; no wrong key comes out; the other blocks are kept and the pools
/// stay in step. (Before the batch form existed no frame carried a batch,
/// and the test fails at its first check.)
#[test]
fn an_attacker_altering_one_chunk_inside_a_batch_gets_the_block_dropped_on_both_sides() {
    use std::cell::Cell;
    use std::rc::Rc;

    use qkd_core::sim::Side;
    let (alice, bob) = pair(&definition(AuthMode::Transcript));
    let (mut dev_a, mut dev_b) = devices(3, 1 << 16);
    let mut net = Network::new(
        alice,
        bob,
        LinkConfig::perfect(Duration::from_millis(2)),
        5,
        Instant::now(),
    );
    let altered: Rc<Cell<Option<u64>>> = Rc::default();
    let seen = altered.clone();
    net.set_interceptor(Box::new(move |side, datagram: &mut Vec<u8>| {
        if side != Side::B || seen.get().is_some() {
            return true;
        }
        let Some(entries) = batch_entries(datagram) else {
            return true;
        };
        if entries.len() < 2 {
            return true;
        }
        let (_, start, length) = entries[1];
        // The last byte before the Cascade message's CRC.
        datagram[start + length - 5] ^= 0x01;
        let crc = crc32(&datagram[start..start + length - 4]);
        datagram[start + length - 4..start + length].copy_from_slice(&crc.to_be_bytes());
        let body = datagram.len() - 4;
        let crc = crc32(&datagram[..body]);
        datagram[body..].copy_from_slice(&crc.to_be_bytes());
        seen.set(Some(u64::from_be_bytes(
            datagram[3..11].try_into().unwrap(),
        )));
        true
    }));
    let (mut a, mut b) = (Outcomes::default(), Outcomes::default());
    run(
        &mut net,
        &mut dev_a,
        &mut dev_b,
        &mut a,
        &mut b,
        Duration::from_secs(3600),
    );
    let block = BlockId::new(
        altered
            .get()
            .expect("no batch of two chunks or more was sent"),
    );
    check_same_keys(&a, &b);
    check_pools(&net);
    assert!(a.dropped.contains(&block), "{:?}", a.reasons);
    assert!(b.dropped.contains(&block), "{:?}", b.reasons);
    assert!(a.keys.iter().chain(&b.keys).all(|(k, _, _)| *k != block));
    assert_eq!(a.keys.len(), 2, "{:?} / {:?}", a.reasons, b.reasons);
}

/// All chunks' Cascade messages of a turn travel in one frame: Bob sends
/// about one Data frame per Cascade round of the slowest chunk, not one
/// per round of every chunk (which was more than the block's summed
/// rounds before batching). Chunks of one length, so that their rounds
/// are alike.
#[test]
fn a_cascade_round_of_all_chunks_is_one_frame() {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    use qkd_core::sim::Side;
    let def = PipelineDefinition::from_toml(&include_str!("../pipelines/default.toml").replace(
        "chunk_bits = 65536, min_chunk_bits = 1024",
        "chunk_bits = 8192, min_chunk_bits = 8192",
    ))
    .unwrap();
    let (alice, bob) = pair(&def);
    let (mut dev_a, mut dev_b) = devices(2, 1 << 18);
    let mut net = Network::new(
        alice,
        bob,
        LinkConfig::perfect(Duration::from_millis(2)),
        5,
        Instant::now(),
    );
    let frames: Rc<RefCell<BTreeMap<u64, (u64, u64)>>> = Rc::default();
    let count = frames.clone();
    net.set_interceptor(Box::new(move |side, datagram: &mut Vec<u8>| {
        if side == Side::B && datagram.len() > 20 && datagram[2] == 1 {
            let block = u64::from_be_bytes(datagram[3..11].try_into().unwrap());
            let mut count = count.borrow_mut();
            let entry = count.entry(block).or_default();
            entry.0 += 1;
            if let Some(entries) = batch_entries(datagram) {
                entry.1 = entry.1.max(entries.len() as u64);
            }
        }
        true
    }));
    let (mut a, mut b) = (Outcomes::default(), Outcomes::default());
    run(
        &mut net,
        &mut dev_a,
        &mut dev_b,
        &mut a,
        &mut b,
        Duration::from_secs(3600),
    );
    assert_eq!(a.keys.len(), 2, "{:?}", a.reasons);
    check_same_keys(&a, &b);
    let frames = frames.borrow();
    for (_, _, r) in &a.keys {
        let (data_frames, widest) = frames[&r.block];
        assert!(r.chunks >= 4, "{r:?}");
        // Every chunk had a message in one batch at least.
        assert_eq!(widest, u64::from(r.chunks));
        // Per chunk the rounds are alike: one frame per round of the block
        // is about the summed rounds over the chunk count.
        assert!(
            data_frames * 3 < r.cascade_rounds,
            "block {}: {data_frames} data frames from Bob for {} Cascade rounds over {} chunks",
            r.block,
            r.cascade_rounds,
            r.chunks
        );
    }
}
