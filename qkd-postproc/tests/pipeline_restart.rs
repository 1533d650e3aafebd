//! Hibernation and run-time parameter changes, through `qkd_core::sim`.

use std::cell::RefCell;
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
    net.set_interceptor(Box::new(move |_, datagram: &mut Vec<u8>| {
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
