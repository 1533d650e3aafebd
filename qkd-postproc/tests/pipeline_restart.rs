//! Hibernation and run-time parameter changes, through `qkd_core::sim`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use qkd_core::module::{ModuleHost, Value};
use qkd_core::sim::{LinkConfig, Network};
use qkd_core::{BlockId, QkdDevice, RawFrame, Role, SecretKey, SimulatedBb84, SimulatorConfig};
use qkd_postproc::auth::{PresharedSecret, SealedMessage, SecretId};
use qkd_postproc::pipeline::wire::Frame;
use qkd_postproc::pipeline::{Pipeline, PipelineDefinition, PipelineEvent, StageKind};

type Pads = Rc<RefCell<HashMap<(u8, u64), Vec<u8>>>>;

fn frames(n: u64) -> (Vec<RawFrame>, Vec<RawFrame>) {
    let config = SimulatorConfig {
        qber: 0.02,
        frame_slots: 1 << 16,
        detection_probability: 0.5,
        seed: 21,
        ..Default::default()
    };
    let mut a = SimulatedBb84::device(config.clone(), Role::Alice)
        .unwrap()
        .with_frame_limit(n);
    let mut b = SimulatedBb84::device(config, Role::Bob)
        .unwrap()
        .with_frame_limit(n);
    let mut fa = Vec::new();
    let mut fb = Vec::new();
    while let Some(f) = a.next_frame().unwrap() {
        fa.push(f);
    }
    while let Some(f) = b.next_frame().unwrap() {
        fb.push(f);
    }
    (fa, fb)
}

fn fresh(def: &PipelineDefinition) -> (Pipeline, Pipeline) {
    // Each restart skips the units the last checkpoint reserved (1024 per
    // direction): the secret must cover a few.
    let secret = SecretKey::from_slice(&vec![9; 1 << 17]);
    (
        Pipeline::new(
            def,
            Role::Alice,
            PresharedSecret::new(SecretId::new(7), secret.clone()),
            [4; 32],
        )
        .unwrap(),
        Pipeline::new(
            def,
            Role::Bob,
            PresharedSecret::new(SecretId::new(7), secret),
            [5; 32],
        )
        .unwrap(),
    )
}

/// Records the pad position of every sealed message; panics if one
/// position of one sender carries two different messages.
fn record_pads(net: &mut Network<Pipeline, Pipeline>, pads: Pads) {
    record_pads_until(net, pads, Rc::default());
}

/// [`record_pads`], and once `b_dead` is set nothing more leaves Bob (his
/// process is gone).
fn record_pads_until(net: &mut Network<Pipeline, Pipeline>, pads: Pads, b_dead: Rc<Cell<bool>>) {
    net.set_interceptor(Box::new(move |from, datagram: &mut Vec<u8>| {
        if from == qkd_core::sim::Side::B && b_dead.get() {
            return false;
        }
        let sealed = match Frame::decode(datagram) {
            Ok(Frame::Data {
                sealed: true, body, ..
            }) => Some(body.to_vec()),
            Ok(Frame::Control { sealed, .. }) => Some(sealed.to_vec()),
            _ => None,
        };
        if let Some(bytes) = sealed {
            let m = SealedMessage::decode(&bytes, 1 << 24).unwrap();
            let key = (
                u8::from(m.header.sender == Role::Bob),
                m.header.pad_position,
            );
            let mut pads = pads.borrow_mut();
            let seen = pads.entry(key).or_insert_with(|| bytes.clone());
            assert_eq!(*seen, bytes, "pad position {key:?} used twice");
        }
        true
    }));
}

#[derive(Default)]
struct Keys {
    a: BTreeMap<BlockId, Vec<u8>>,
    b: BTreeMap<BlockId, Vec<u8>>,
    dropped_a: Vec<(BlockId, StageKind, String)>,
    dropped_b: Vec<(BlockId, StageKind, String)>,
}

fn take(
    events: Vec<PipelineEvent>,
    keys: &mut BTreeMap<BlockId, Vec<u8>>,
    dropped: &mut Vec<(BlockId, StageKind, String)>,
) {
    for e in events {
        match e {
            PipelineEvent::FinalKey { block, key, .. } => {
                assert!(keys.insert(block, key.expose_secret().to_vec()).is_none());
            }
            PipelineEvent::Dropped {
                block,
                stage,
                reason,
                ..
            } => dropped.push((block, stage, format!("{reason:?}"))),
            _ => {}
        }
    }
}

/// Feeds frames while there is room and steps until `stop` or idle.
fn drive(
    net: &mut Network<Pipeline, Pipeline>,
    fa: &mut std::vec::IntoIter<RawFrame>,
    fb: &mut std::vec::IntoIter<RawFrame>,
    keys: &mut Keys,
    stop: impl Fn(&Keys) -> bool,
) {
    let (mut pending_a, mut pending_b) = (None, None);
    let mut idle = 0;
    let deadline = net.now() + Duration::from_secs(600);
    loop {
        let now = net.now();
        if pending_a.is_none() {
            pending_a = fa.next();
        }
        if pending_b.is_none() {
            pending_b = fb.next();
        }
        if pending_a.is_some() && net.a.wants_frame() {
            net.a.push_frame(now, pending_a.take().unwrap()).unwrap();
        }
        if pending_b.is_some() && net.b.wants_frame() {
            net.b.push_frame(now, pending_b.take().unwrap()).unwrap();
        }
        let moved = net.step();
        assert!(
            net.now() < deadline,
            "no end in sight: {:?} {:?} pending {} {}",
            net.a,
            net.b,
            pending_a.is_some(),
            pending_b.is_some()
        );
        if !moved && (pending_a.is_some() || pending_b.is_some()) {
            idle += 1;
            assert!(
                idle < 3,
                "stuck: {:?} {:?} wants {} {}",
                net.a,
                net.b,
                net.a.wants_frame(),
                net.b.wants_frame()
            );
        } else {
            idle = 0;
        }
        take(net.take_events_a(), &mut keys.a, &mut keys.dropped_a);
        take(net.take_events_b(), &mut keys.b, &mut keys.dropped_b);
        if stop(keys) || (!moved && pending_a.is_none() && pending_b.is_none()) {
            // Frames taken but not pushed go back to the device.
            let rest_a: Vec<RawFrame> = pending_a.into_iter().chain(fa.by_ref()).collect();
            let rest_b: Vec<RawFrame> = pending_b.into_iter().chain(fb.by_ref()).collect();
            *fa = rest_a.into_iter();
            *fb = rest_b.into_iter();
            return;
        }
    }
}

#[test]
fn hibernation_gives_the_same_keys_and_never_reuses_a_pad() {
    hibernation(&PipelineDefinition::default(), 8, 3);
}

/// The same with the `ldpc` correction stage (`pipelines/ldpc.toml`). The
/// blocks here are small (about 3 000 sample bits, frames of 2^14 bits and
/// less): a block may be dropped in the uninterrupted run too (a frame
/// that does not decode), on both sides and in both runs alike.
#[test]
fn hibernation_with_ldpc_gives_the_same_keys_and_never_reuses_a_pad() {
    let def = PipelineDefinition::from_toml(include_str!("../pipelines/ldpc.toml")).unwrap();
    hibernation(&def, 6, 2);
}

/// Runs 8 blocks uninterrupted (at least `kept` kept) and again with a
/// save and restore once `save_after` blocks are kept.
fn hibernation(def: &PipelineDefinition, kept: usize, save_after: usize) {
    let link = LinkConfig::perfect(Duration::from_millis(3));
    // Uninterrupted.
    let (fa, fb) = frames(8);
    let (a, b) = fresh(def);
    let mut net = Network::new(a, b, link.clone(), 3, Instant::now());
    let mut whole = Keys::default();
    drive(
        &mut net,
        &mut fa.into_iter(),
        &mut fb.into_iter(),
        &mut whole,
        |_| false,
    );
    assert!(
        whole.a.len() >= kept,
        "{:?} {:?}",
        whole.dropped_a,
        whole.dropped_b
    );
    assert_eq!(whole.a, whole.b);

    // Hibernated after three blocks, with the fourth and later in flight.
    let (fa, fb) = frames(8);
    let (mut fa, mut fb) = (fa.into_iter(), fb.into_iter());
    let pads: Pads = Rc::default();
    let (a, b) = fresh(def);
    let mut net = Network::new(a, b, link.clone(), 3, Instant::now());
    record_pads(&mut net, pads.clone());
    let mut split = Keys::default();
    drive(&mut net, &mut fa, &mut fb, &mut split, |k| {
        k.a.len() >= save_after && k.b.len() >= save_after
    });
    let in_flight = net.a.blocks_in_flight() + net.b.blocks_in_flight();
    assert!(in_flight > 0, "the save must happen mid-stream");
    let state_a = net.a.save_state().unwrap();
    let state_b = net.b.save_state().unwrap();
    let before = pads.borrow().len();
    drop(net);
    let a = Pipeline::from_state(def, Role::Alice, &state_a).unwrap();
    let b = Pipeline::from_state(def, Role::Bob, &state_b).unwrap();
    let start = Instant::now() + Duration::from_secs(3600);
    let mut net = Network::new(a, b, link, 4, start);
    record_pads(&mut net, pads.clone());
    drive(&mut net, &mut fa, &mut fb, &mut split, |_| false);
    assert!(pads.borrow().len() > before);

    // Both sides kept the same blocks, and each kept block has the key of
    // the uninterrupted run.
    assert_eq!(
        split.a, split.b,
        "dropped: {:?} / {:?}",
        split.dropped_a, split.dropped_b
    );
    for (block, key) in &split.a {
        assert_eq!(Some(key), whole.a.get(block), "block {block}");
    }
    // Blocks in flight at the save are dropped on both sides; blocks after
    // the restore are kept again.
    assert!(
        split.a.keys().any(|b| b.get() > 3),
        "kept {:?}, dropped {:?} / {:?}",
        split.a.keys(),
        split.dropped_a,
        split.dropped_b
    );
    assert_eq!(
        net.a.channel().pool().feed_digest(),
        net.b.channel().pool().feed_digest()
    );
    // Totals survive the restore.
    assert_eq!(net.a.stats().blocks_kept, split.a.len() as u64);
    // Every block pushed is accounted for on both sides: kept, or reported
    // dropped (the blocks in flight at the save are reported by the
    // restored pipelines, as `Restored`), never silently lost.
    for (kept, dropped, side) in [
        (&split.a, &split.dropped_a, "alice"),
        (&split.b, &split.dropped_b, "bob"),
    ] {
        let mut settled: Vec<u64> = kept
            .keys()
            .map(|b| b.get())
            .chain(dropped.iter().map(|(b, _, _)| b.get()))
            .collect();
        settled.sort_unstable();
        assert_eq!(settled, (0..8).collect::<Vec<u64>>(), "{side}: {dropped:?}");
        assert!(
            dropped.iter().any(|(_, _, why)| why == "Restored"),
            "{side}: the blocks in flight at the save were not reported: {dropped:?}"
        );
    }
}

#[test]
fn a_parameter_change_on_alice_takes_effect_in_the_next_block_on_both_sides() {
    let mut def = PipelineDefinition::default();
    def.max_blocks_in_flight = 1;
    let (a, b) = fresh(&def);
    let mut net = Network::new(
        a,
        b,
        LinkConfig::perfect(Duration::from_millis(3)),
        3,
        Instant::now(),
    );
    let (fa, fb) = frames(4);
    let (mut fa, mut fb) = (fa.into_iter(), fb.into_iter());
    let mut keys = Keys::default();
    drive(&mut net, &mut fa, &mut fb, &mut keys, |k| {
        !k.a.is_empty() && !k.b.is_empty()
    });
    // The QBER is 2 %: a threshold of 0.5 % drops every later block, on both
    // sides (Bob uses the threshold Alice announces, not his own).
    net.a
        .module_mut("estimate")
        .unwrap()
        .set_parameter("abort_qber", &Value::F64(0.005))
        .unwrap();
    assert_eq!(
        net.b
            .module("estimate")
            .unwrap()
            .parameter("abort_qber")
            .unwrap(),
        Value::F64(0.11)
    );
    drive(&mut net, &mut fa, &mut fb, &mut keys, |_| false);
    assert_eq!(keys.a.len(), keys.b.len());
    assert!(keys.a.len() <= 2, "{:?}", keys.a.keys());
    let late: Vec<_> = keys
        .dropped_b
        .iter()
        .filter(|(_, s, r)| *s == StageKind::Estimate && r.contains("QberAboveThreshold"))
        .collect();
    assert!(late.len() >= 2, "{:?}", keys.dropped_b);
    let mut da: Vec<_> = keys.dropped_a.iter().map(|d| d.0).collect();
    let mut db: Vec<_> = keys.dropped_b.iter().map(|d| d.0).collect();
    da.sort();
    db.sort();
    assert_eq!(da, db, "{:?} / {:?}", keys.dropped_a, keys.dropped_b);
    // Bob's read-only copy of the parameter follows Alice's announcement.
    assert_eq!(
        net.b
            .module("estimate")
            .unwrap()
            .parameter("abort_qber")
            .unwrap(),
        Value::F64(0.005)
    );
}

/// The `pipeline` module's statistic `name` on one side.
fn pipeline_stat(p: &Pipeline, name: &str) -> u64 {
    p.module("pipeline")
        .unwrap()
        .statistics()
        .into_iter()
        .find(|s| s.name == name)
        .and_then(|s| s.value.as_u64())
        .unwrap()
}

fn hold(p: &mut Pipeline, from: u64) {
    p.module_mut("pipeline")
        .unwrap()
        .set_parameter("hold_from_block", &Value::U64(from))
        .unwrap();
}

/// Runs the network with frames offered for `span` of simulated time,
/// collecting events. Frames the pipelines queue but do not start (held)
/// are not in a saved state: the device offers them again after a
/// restore, as `qkd-link` does, so they go back to the iterators.
fn run_for(
    net: &mut Network<Pipeline, Pipeline>,
    fa: &mut std::vec::IntoIter<RawFrame>,
    fb: &mut std::vec::IntoIter<RawFrame>,
    keys: &mut Keys,
    span: Duration,
) {
    let end = net.now() + span;
    let (mut pending_a, mut pending_b) = (fa.next(), fb.next());
    let (mut queued_a, mut queued_b) = (Vec::new(), Vec::new());
    while net.now() < end {
        let now = net.now();
        if let Some(f) = pending_a.take_if(|_| net.a.wants_frame()) {
            queued_a.push(f.clone());
            net.a.push_frame(now, f).unwrap();
            pending_a = fa.next();
        }
        if let Some(f) = pending_b.take_if(|_| net.b.wants_frame()) {
            queued_b.push(f.clone());
            net.b.push_frame(now, f).unwrap();
            pending_b = fb.next();
        }
        if !net.step() {
            net.drive_for(Duration::from_millis(10));
        }
        take(net.take_events_a(), &mut keys.a, &mut keys.dropped_a);
        take(net.take_events_b(), &mut keys.b, &mut keys.dropped_b);
    }
    let started_a = pipeline_stat(&net.a, "next_block");
    let started_b = pipeline_stat(&net.b, "next_block");
    let rest_a: Vec<RawFrame> = queued_a
        .into_iter()
        .filter(|f| f.block.get() >= started_a)
        .chain(pending_a)
        .chain(fa.by_ref())
        .collect();
    let rest_b: Vec<RawFrame> = queued_b
        .into_iter()
        .filter(|f| f.block.get() >= started_b)
        .chain(pending_b)
        .chain(fb.by_ref())
        .collect();
    *fa = rest_a.into_iter();
    *fb = rest_b.into_iter();
}

/// Two processes cannot save at the same instant (the QPM saves one host,
/// then the other). With a hold on both sides (`hold_from_block`, the same
/// value) and both drained to no block in flight, the link is quiet: the
/// two states hold the same committed blocks whatever happens between the
/// two saves, the restored link runs on with the uninterrupted run's keys,
/// in step, and no pad is used twice.
#[test]
fn a_hold_makes_saves_at_different_moments_agree() {
    let def = PipelineDefinition::default();
    let link = LinkConfig::perfect(Duration::from_millis(3));
    let (fa, fb) = frames(8);
    let (a, b) = fresh(&def);
    let mut net = Network::new(a, b, link.clone(), 3, Instant::now());
    let mut whole = Keys::default();
    drive(
        &mut net,
        &mut fa.into_iter(),
        &mut fb.into_iter(),
        &mut whole,
        |_| false,
    );
    assert_eq!(whole.a, whole.b);

    let (fa, fb) = frames(8);
    let (mut fa, mut fb) = (fa.into_iter(), fb.into_iter());
    let pads: Pads = Rc::default();
    let (a, b) = fresh(&def);
    let mut net = Network::new(a, b, link.clone(), 3, Instant::now());
    record_pads(&mut net, pads.clone());
    let mut split = Keys::default();
    drive(&mut net, &mut fa, &mut fb, &mut split, |k| {
        k.a.len() >= 2 && k.b.len() >= 2
    });
    assert!(net.a.blocks_in_flight() + net.b.blocks_in_flight() > 0);
    // The hold: the larger of the two sides' next blocks, raised until
    // neither side started past it.
    let mut from = 0;
    loop {
        let next = pipeline_stat(&net.a, "next_block").max(pipeline_stat(&net.b, "next_block"));
        if next <= from {
            break;
        }
        from = next;
        hold(&mut net.a, from);
        hold(&mut net.b, from);
    }
    run_for(
        &mut net,
        &mut fa,
        &mut fb,
        &mut split,
        Duration::from_secs(30),
    );
    assert_eq!(
        (net.a.blocks_in_flight(), net.b.blocks_in_flight()),
        (0, 0),
        "drained"
    );
    let state_a = net.a.save_state().unwrap();
    // Time passes and frames are offered between the two saves: nothing
    // starts.
    let kept_before = (split.a.len(), split.b.len());
    run_for(
        &mut net,
        &mut fa,
        &mut fb,
        &mut split,
        Duration::from_secs(5),
    );
    assert_eq!((split.a.len(), split.b.len()), kept_before);
    assert_eq!(pipeline_stat(&net.a, "next_block"), from);
    let state_b = net.b.save_state().unwrap();
    drop(net);

    let a = Pipeline::from_state(&def, Role::Alice, &state_a).unwrap();
    let b = Pipeline::from_state(&def, Role::Bob, &state_b).unwrap();
    // A restored pipeline holds nothing.
    assert_eq!(
        a.module("pipeline")
            .unwrap()
            .parameter("hold_from_block")
            .unwrap(),
        Value::U64(u64::MAX)
    );
    let mut net = Network::new(a, b, link, 4, Instant::now() + Duration::from_secs(3600));
    record_pads(&mut net, pads);
    drive(&mut net, &mut fa, &mut fb, &mut split, |_| false);
    assert_eq!(split.a, split.b);
    assert!(
        split.a.keys().any(|b| b.get() >= from),
        "ran on after the restore"
    );
    for (block, key) in &split.a {
        assert_eq!(Some(key), whole.a.get(block), "block {block}");
    }
    assert_eq!(
        net.a.channel().pool().feed_digest(),
        net.b.channel().pool().feed_digest()
    );
    // Nothing was in flight at the saves: every block is kept.
    assert_eq!(split.a.len(), 8, "dropped {:?}", split.dropped_a);
}

/// The race the hold prevents: Alice saved mid-stream, Bob saved after two
/// more blocks settled. The restored pools differ and the link ends with
/// `FeedDiverged` (or, at best, keeps no block the two agree on). (After
/// one block only it may not: Alice saves the one block whose Outcome
/// awaits its acknowledgement and completes it after the restore; the
/// next block's Outcome she decides only after that, so it is in no state
/// of hers.)
#[test]
fn saves_at_different_moments_without_a_hold_diverge() {
    let def = PipelineDefinition::default();
    let link = LinkConfig::perfect(Duration::from_millis(3));
    let (fa, fb) = frames(8);
    let (mut fa, mut fb) = (fa.into_iter(), fb.into_iter());
    let (a, b) = fresh(&def);
    let mut net = Network::new(a, b, link.clone(), 3, Instant::now());
    let mut split = Keys::default();
    drive(&mut net, &mut fa, &mut fb, &mut split, |k| {
        k.a.len() >= 2 && k.b.len() >= 2
    });
    let state_a = net.a.save_state().unwrap();
    let kept_b = split.b.len();
    drive(&mut net, &mut fa, &mut fb, &mut split, |k| {
        k.b.len() > kept_b + 1
    });
    let state_b = net.b.save_state().unwrap();
    drop(net);
    let a = Pipeline::from_state(&def, Role::Alice, &state_a).unwrap();
    let b = Pipeline::from_state(&def, Role::Bob, &state_b).unwrap();
    let mut net = Network::new(a, b, link, 4, Instant::now() + Duration::from_secs(3600));
    let mut diverged = false;
    for _ in 0..100_000 {
        if !net.step() {
            break;
        }
        for e in net.take_events_a().into_iter().chain(net.take_events_b()) {
            diverged |= matches!(e, PipelineEvent::FeedDiverged { .. });
        }
    }
    assert!(
        diverged || net.a.channel().pool().feed_digest() != net.b.channel().pool().feed_digest(),
        "the two states should disagree"
    );
}

/// With manual checkpoints the host writes a state at every `SaveDue`
/// before the pipeline goes on. A crash of both processes at any moment,
/// each restarted from the newest state it wrote, must leave the link in
/// step: no pad used twice (recorded across the crash), the same keys on
/// both sides and equal to the uninterrupted run's, equal feed digests.
/// The crash comes at many points of one run: 24 points evenly spread over
/// its events by default (every 293rd of about 7 000 events when each
/// chunk's Cascade message was a frame of its own; every 140th of about
/// 3 400 since a round's messages travel in one batch); a smaller
/// stride with e.g.
/// `CRASH_STRIDE=11 cargo test -p qkd-postproc --test pipeline_restart manual`.
#[test]
fn manual_checkpoints_survive_a_crash_of_both_sides_at_any_moment() {
    use qkd_postproc::pipeline::CheckpointMode;
    let stride: Option<usize> = std::env::var("CRASH_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok());
    let mut def = PipelineDefinition::default();
    def.checkpoints = CheckpointMode::Manual;
    let link = LinkConfig::perfect(Duration::from_millis(3));
    let (fa, fb) = frames(6);
    let (a, b) = fresh(&def);
    let mut net = Network::new(a, b, link.clone(), 3, Instant::now());
    let mut whole = Keys::default();
    let mut newest: [Option<Vec<u8>>; 2] = [None, None];
    let mut bob_checkpoints = 0;
    let total = run_manual_with(
        &mut net,
        &mut fa.into_iter(),
        &mut fb.into_iter(),
        &mut whole,
        &mut newest,
        usize::MAX,
        None,
        &mut bob_checkpoints,
    );
    assert_eq!(whole.a, whole.b);
    assert_eq!(whole.a.len(), 6);
    let stride = stride.unwrap_or(total / 24);

    let mut crashes = 0;
    // Both sides at every `stride`-th event; Bob alone at each of his
    // checkpoints, once before he writes it and once right after (then
    // nothing he sends afterwards leaves, e.g. the acknowledgement of the
    // Outcome his checkpoint deposited; Alice, who never gets it, is
    // stopped a second later and restored from her newest state: the
    // two-process crash the QPM test found).
    let both = (1..total).step_by(stride.max(1)).map(|p| (p, Crash::Both));
    let bob_alone =
        (1..=bob_checkpoints).flat_map(|k| [(k, Crash::BobBeforeWrite), (k, Crash::BobAfterWrite)]);
    for (crash_at, crash) in both.chain(bob_alone) {
        let bob_alone = crash != Crash::Both;
        let (fa, fb) = frames(6);
        let (mut fa, mut fb) = (fa.into_iter(), fb.into_iter());
        let pads: Pads = Rc::default();
        let (a, b) = fresh(&def);
        let mut net = Network::new(a, b, link.clone(), 3, Instant::now());
        let b_dead: Rc<Cell<bool>> = Rc::default();
        record_pads_until(&mut net, pads.clone(), b_dead.clone());
        let mut keys = Keys::default();
        let mut newest: [Option<Vec<u8>>; 2] = [None, None];
        if bob_alone {
            // Bob dies at a checkpoint (before or after writing it), after
            // sending what his pipeline let him send; Alice runs on (and
            // saves) for another second, then stops.
            run_manual_with(
                &mut net,
                &mut fa,
                &mut fb,
                &mut keys,
                &mut newest,
                crash_at,
                Some((b_dead, crash == Crash::BobAfterWrite)),
                &mut 0,
            );
        } else {
            // Both die at once: what is in flight is lost.
            run_manual(&mut net, &mut fa, &mut fb, &mut keys, &mut newest, crash_at);
        }
        drop(net);
        let [Some(state_a), Some(state_b)] = newest else {
            continue;
        };
        crashes += 1;
        let a = Pipeline::from_state(&def, Role::Alice, &state_a).unwrap();
        let b = Pipeline::from_state(&def, Role::Bob, &state_b).unwrap();
        // The device offers every frame again; the restored pipelines
        // refuse the ones they are past.
        let (fa, fb) = frames(6);
        let mut net = Network::new(
            a,
            b,
            link.clone(),
            4,
            Instant::now() + Duration::from_secs(3600),
        );
        record_pads(&mut net, pads);
        let mut after = Keys::default();
        let mut newest: [Option<Vec<u8>>; 2] = [None, None];
        run_manual(
            &mut net,
            &mut fa.into_iter(),
            &mut fb.into_iter(),
            &mut after,
            &mut newest,
            usize::MAX,
        );
        // Nothing waits for a timeout after the restore: a block one side
        // dropped there is dropped by the other at its first message (or
        // its first acknowledgement: Alice speaks second).
        let timed_out: Vec<_> = after
            .dropped_a
            .iter()
            .chain(&after.dropped_b)
            .filter(|d| d.2 == "Timeout")
            .collect();
        assert!(
            timed_out.is_empty(),
            "crash at {crash_at} ({crash:?}): {timed_out:?}"
        );
        for (block, key) in after.a.iter().chain(&after.b).chain(&keys.a).chain(&keys.b) {
            assert_eq!(
                Some(key),
                whole.a.get(block),
                "crash at {crash_at}: block {block}"
            );
        }
        assert_eq!(
            net.a.channel().pool().feed_digest(),
            net.b.channel().pool().feed_digest(),
            "crash at {crash_at} ({crash:?})"
        );
        // Every block is kept on both sides, before or after the crash,
        // or reported dropped on both.
        for block in 0..6u64 {
            let id = BlockId::new(block);
            let kept = |k: &BTreeMap<BlockId, Vec<u8>>, l: &BTreeMap<BlockId, Vec<u8>>| {
                k.contains_key(&id) || l.contains_key(&id)
            };
            assert_eq!(
                kept(&keys.a, &after.a),
                kept(&keys.b, &after.b),
                "crash at {crash_at} ({crash:?}): block {block} kept on one side only: a {:?} {:?}, b {:?} {:?}",
                keys.a.keys().collect::<Vec<_>>(),
                after.a.keys().collect::<Vec<_>>(),
                keys.b.keys().collect::<Vec<_>>(),
                after.b.keys().collect::<Vec<_>>()
            );
        }
    }
    assert!(total > 1000, "{total} events");
    assert!(crashes >= 20, "{crashes} crash points of {total} events");
}

/// Who dies in [`manual_checkpoints_survive_a_crash_of_both_sides_at_any_moment`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crash {
    /// Both at once, at an event.
    Both,
    /// Bob at a checkpoint, before writing it.
    BobBeforeWrite,
    /// Bob at a checkpoint, right after writing it.
    BobAfterWrite,
}

/// Drives a manual-checkpoint pair for at most `limit` events, writing
/// each side's state at its `SaveDue` (the newest kept in `newest`);
/// returns the events taken.
fn run_manual(
    net: &mut Network<Pipeline, Pipeline>,
    fa: &mut std::vec::IntoIter<RawFrame>,
    fb: &mut std::vec::IntoIter<RawFrame>,
    keys: &mut Keys,
    newest: &mut [Option<Vec<u8>>; 2],
    limit: usize,
) -> usize {
    run_manual_with(net, fa, fb, keys, newest, limit, None, &mut 0)
}

/// [`run_manual`]; with `b_dies`, Bob dies at his `limit`-th checkpoint,
/// before he writes it (or, with its flag, right after: nothing more
/// leaves him, his events and saves stop), and Alice runs on alone for
/// one more second of simulated time.
/// Bob's checkpoints are counted in `bob_saves`.
#[allow(clippy::too_many_arguments)]
fn run_manual_with(
    net: &mut Network<Pipeline, Pipeline>,
    fa: &mut std::vec::IntoIter<RawFrame>,
    fb: &mut std::vec::IntoIter<RawFrame>,
    keys: &mut Keys,
    newest: &mut [Option<Vec<u8>>; 2],
    limit: usize,
    b_dies: Option<(Rc<Cell<bool>>, bool)>,
    bob_saves: &mut usize,
) -> usize {
    let (mut pending_a, mut pending_b) = (fa.next(), fb.next());
    let mut steps = 0;
    let deadline = net.now() + Duration::from_secs(600);
    let mut alone_until: Option<Instant> = None;
    // Privacy amplification and Cascade turns on "worker threads", as
    // `qkd-link --workers` runs them: each item done one event after it was
    // handed out (a crash loses the items out).
    for p in [&mut net.a, &mut net.b] {
        p.set_external_work(true);
        p.set_external_correction(true);
    }
    let mut work: [Vec<qkd_postproc::pipeline::WorkItem>; 2] = [Vec::new(), Vec::new()];
    loop {
        let now = net.now();
        for (side, items) in work.iter_mut().enumerate() {
            let p = if side == 0 { &mut net.a } else { &mut net.b };
            for item in items.drain(..) {
                p.complete_work(now, item.run());
            }
            while let Some(item) = p.poll_work() {
                items.push(item);
            }
        }
        match alone_until {
            Some(t) if net.now() >= t => break,
            None if b_dies.is_none() && steps >= limit => break,
            _ => {}
        }
        let now = net.now();
        for (p, pending, it) in [
            (&mut net.a, &mut pending_a, &mut *fa),
            (&mut net.b, &mut pending_b, &mut *fb),
        ] {
            while let Some(f) = pending.take_if(|_| p.wants_frame()) {
                match p.push_frame(now, f) {
                    Ok(()) | Err(qkd_postproc::pipeline::PushError::OutOfOrder { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
                *pending = it.next();
            }
        }
        let moved = net.step();
        steps += 1;
        // A host sends what the pipeline has to send before it looks at
        // the events (as `qkd-link` does): nothing that depends on a
        // checkpoint may leave before the host has saved it.
        let _ = net.next_wakeup();
        // A save lets the pipeline send again: step at least once more.
        let mut saved_now = false;
        for (side, events) in [(0, net.take_events_a()), (1, net.take_events_b())] {
            if side == 1 && alone_until.is_some() {
                continue;
            }
            // In order, as a host does: a key is handed out (recorded)
            // only after the checkpoint requested before it was written.
            for event in events {
                if !matches!(event, PipelineEvent::SaveDue) {
                    if side == 0 {
                        take(vec![event], &mut keys.a, &mut keys.dropped_a);
                    } else {
                        take(vec![event], &mut keys.b, &mut keys.dropped_b);
                    }
                    continue;
                }
                let mut dies_after = false;
                if side == 1 {
                    *bob_saves += 1;
                    if let Some((dead, after_write)) = &b_dies
                        && *bob_saves == limit
                    {
                        // Bob dies at this checkpoint, before or right
                        // after writing it, having sent what his pipeline
                        // let him send; nothing after it happens.
                        dead.set(true);
                        alone_until = Some(net.now() + Duration::from_secs(1));
                        if !*after_write {
                            break;
                        }
                        dies_after = true;
                    }
                }
                let p = if side == 0 { &mut net.a } else { &mut net.b };
                saved_now = true;
                match p.save_state() {
                    Ok(state) => newest[side] = Some(state),
                    // Ended meanwhile (the feed digests of the caller
                    // tell why): nothing more to save.
                    Err(qkd_postproc::pipeline::StateError::Ended) => {}
                    Err(e) => panic!("save: {e}"),
                }
                if dies_after {
                    break;
                }
            }
        }
        if !moved && !saved_now && pending_a.is_none() && pending_b.is_none() {
            if alone_until.is_some() {
                net.drive_for(Duration::from_millis(10));
                continue;
            }
            break;
        }
        assert!(net.now() < deadline, "no end in sight");
    }
    steps
}
