//! The secured channel in the simulated network: qkd-sync's `SyncNode` runs
//! through it unchanged for every suite and start; a man in the middle,
//! replays and a forged sync `Grant` are all rejected.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qkd_core::sim::{LinkConfig, Network, Side};
use qkd_core::wire::Protocol;
use qkd_core::{BlockId, SecretKey};
use qkd_handshake::capability::{Capabilities, CipherSuite, Ownership, StoreParams};
use qkd_handshake::channel::{
    ChannelConfig, ChannelError, ChannelEvent, ChannelInputError, SecuredChannel, Start,
};
use qkd_handshake::handshake::{HandshakeConfig, HandshakeError, HandshakeRole};
use qkd_handshake::psk::SimulatedLink;
use qkd_handshake::record::{RecordError, RecordView, decode_record};
use qkd_handshake::relay::{RelayMessage, RelayStatus};
use qkd_keystore::{Binding, GrantedChunk, Notice, StoreConfig, StoreRole};
use qkd_sync::message::{Data, Message};
use qkd_sync::{Lookup, SyncConfig, SyncNode};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use CipherSuite::{Aes256GcmBlake3 as Aes, OtpWegmanCarter as Otp};

type Chan = SecuredChannel<SyncNode, SimulatedLink>;

const PAD_KEY: usize = 1024;

fn config(ownership: Ownership, suites: &[CipherSuite]) -> ChannelConfig {
    let mut hs = HandshakeConfig::new(
        Capabilities::new(StoreParams {
            chunk_bytes: 1024,
            min_key_bits: 64,
            max_key_bits: 8192,
            ownership,
        })
        .with_suites(suites),
    );
    hs.retransmit_after = Duration::from_millis(100);
    ChannelConfig::new(hs)
}

fn channel(
    start: Start,
    ownership: Ownership,
    config: ChannelConfig,
    seed: u64,
    now: Instant,
) -> Chan {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let role = match ownership {
        Ownership::First => StoreRole::EvenChunks,
        Ownership::Second => StoreRole::OddChunks,
    };
    let node = SyncNode::new(
        SyncConfig::new(StoreConfig::new("sim-link", role).with_borrow_low_water(0)),
        &mut rng,
    )
    .unwrap();
    let source = SimulatedLink::new(b"sim-link", 7, PAD_KEY, 1 << 20, ownership);
    SecuredChannel::new(config, start, source, node, &mut rng, now).unwrap()
}

fn network(
    starts: (Start, Start),
    suites: (&[CipherSuite], &[CipherSuite]),
    link: LinkConfig,
    seed: u64,
) -> Network<Chan, Chan> {
    let now = Instant::now();
    let a = channel(
        starts.0,
        Ownership::First,
        config(Ownership::First, suites.0),
        seed,
        now,
    );
    let b = channel(
        starts.1,
        Ownership::Second,
        config(Ownership::Second, suites.1),
        seed + 1,
        now,
    );
    Network::new(a, b, link, seed, now)
}

fn both_synced<S: qkd_handshake::psk::PskSource>(
    net: &Network<SecuredChannel<SyncNode, S>, SecuredChannel<SyncNode, S>>,
) -> bool {
    net.a.is_open() && net.b.is_open() && net.a.inner().is_paired() && net.b.inner().is_paired()
}

/// Feeds the same block to both stores, takes keys on A, looks them up on B.
fn keys_match(net: &mut Network<Chan, Chan>, block: u64, count: usize) -> usize {
    let now = net.now();
    let key = SecretKey::from_vec(
        (0..64 << 10)
            .map(|i: u32| (i * 7 + block as u32) as u8)
            .collect(),
    );
    net.a
        .inner_mut()
        .insert_block(now, BlockId::new(block), key.clone())
        .unwrap();
    net.b
        .inner_mut()
        .insert_block(now, BlockId::new(block), key)
        .unwrap();
    net.drive_for(Duration::from_millis(500));
    let binding = Arc::new(Binding::pair("sae-a", "sae-b").unwrap());
    let taken = net.a.inner_mut().take(count, 256, &binding).unwrap();
    net.drive_for(Duration::from_millis(500));
    let now = net.now();
    let mut matched = 0;
    for (id, k) in &taken {
        if let Ok(Lookup::Ready(copy)) = net.b.inner_mut().lookup(now, id, "sae-b") {
            assert_eq!(&copy, k, "key {id} differs");
            matched += 1;
        }
    }
    matched
}

#[test]
fn sync_runs_through_the_channel_for_every_suite_and_start() {
    let lists: [&[CipherSuite]; 3] = [&[Aes], &[Otp], &[Otp, Aes]];
    let starts = [
        (Start::Initiate, Start::Respond),
        (Start::Respond, Start::Initiate),
        (Start::Initiate, Start::Initiate),
    ];
    let mut seed = 10;
    for la in lists {
        for lb in lists {
            for st in starts {
                seed += 1;
                let link = LinkConfig::lossy(Duration::from_millis(5), 0.05)
                    .with_duplicate(0.05)
                    .with_reorder(0.05, Duration::from_millis(20));
                let mut net = network(st, (la, lb), link, seed);
                net.drive_for(Duration::from_secs(3));
                if !la.iter().any(|s| lb.contains(s)) {
                    let no_suite = |e: &ChannelEvent<qkd_sync::Event>| {
                        matches!(e, ChannelEvent::Failed(ChannelError::Handshake(_)))
                    };
                    assert!(
                        net.events_a().iter().any(no_suite) && net.events_b().iter().any(no_suite)
                    );
                    assert!(
                        net.a.suite().is_none() && net.b.suite().is_none(),
                        "no keys derived"
                    );
                    continue;
                }
                assert!(
                    both_synced(&net),
                    "{la:?} {lb:?} {st:?}: {:?} {:?}",
                    net.a,
                    net.b
                );
                let (sa, sb) = (net.a.suite().unwrap(), net.b.suite().unwrap());
                assert_eq!(sa, sb);
                // The responder's preference decides.
                let roles: Vec<HandshakeRole> = net
                    .events_a()
                    .iter()
                    .filter_map(|e| match e {
                        ChannelEvent::Established { role, .. } => Some(*role),
                        _ => None,
                    })
                    .collect();
                assert_eq!(roles.len(), 1);
                let responder_list = if roles[0] == HandshakeRole::Responder {
                    la
                } else {
                    lb
                };
                let initiator_list = if roles[0] == HandshakeRole::Responder {
                    lb
                } else {
                    la
                };
                let expect = responder_list
                    .iter()
                    .find(|s| initiator_list.contains(s))
                    .unwrap();
                assert_eq!(sa, *expect);
                assert_eq!(keys_match(&mut net, 1, 32), 32, "{la:?} {lb:?} {st:?}");
                assert!(
                    !net.errors_a()
                        .iter()
                        .chain(net.errors_b())
                        .any(|e| matches!(e, ChannelInputError::Inner(_))),
                    "no forged or altered datagram reached the sync node"
                );
            }
        }
    }
}

/// A connection drops: both ends take their channel apart, build a new one
/// over a new connection from the same sync node and PSK source, and the
/// stores carry on in step (keys taken before and after match, none twice)
/// under a second handshake keyed by a fresh PSK.
#[test]
fn a_reconnected_channel_carries_the_same_sync_state_on_with_a_fresh_psk() {
    let link = LinkConfig::perfect(Duration::from_millis(5));
    let mut net = network(
        (Start::Initiate, Start::Respond),
        (&[Aes], &[Aes]),
        link.clone(),
        90,
    );
    net.drive_for(Duration::from_secs(2));
    assert!(both_synced(&net), "{:?} {:?}", net.a, net.b);
    assert_eq!(keys_match(&mut net, 1, 16), 16);
    let now = net.now();
    let (a, b) = (net.a, net.b);
    let (node_a, source_a) = a.into_inner();
    let (node_b, source_b) = b.into_inner();
    let used = (source_a.consumed(), source_b.consumed());
    let epochs = (node_a.epoch(), node_b.epoch());
    let mut rng = ChaCha20Rng::seed_from_u64(91);
    let a = SecuredChannel::new(
        config(Ownership::First, &[Aes]),
        Start::Initiate,
        source_a,
        node_a,
        &mut rng,
        now,
    )
    .unwrap();
    let b = SecuredChannel::new(
        config(Ownership::Second, &[Aes]),
        Start::Respond,
        source_b,
        node_b,
        &mut rng,
        now,
    )
    .unwrap();
    let mut net = Network::new(a, b, link, 92, now);
    net.drive_for(Duration::from_secs(2));
    assert!(both_synced(&net), "{:?} {:?}", net.a, net.b);
    // The same sync session (no restart wiped the stores) ...
    assert_eq!((net.a.inner().epoch(), net.b.inner().epoch()), epochs);
    // ... under a new handshake that consumed a fresh PSK on each side.
    assert!(net.a.source_mut().consumed() > used.0);
    assert!(net.b.source_mut().consumed() > used.1);
    assert_eq!(keys_match(&mut net, 2, 16), 16);
}

#[test]
fn a_handshake_over_a_dead_link_times_out() {
    let mut net = network(
        (Start::Initiate, Start::Respond),
        (&[Aes], &[Aes]),
        LinkConfig::lossy(Duration::from_millis(5), 1.0),
        3,
    );
    net.drive_for(Duration::from_secs(15));
    assert!(net.events_a().iter().any(|e| matches!(
        e,
        ChannelEvent::Failed(ChannelError::Handshake(HandshakeError::Timeout))
    )));
    assert!(net.a.is_finished());
}

/// Flips one bit of byte `byte` of the `index`-th datagram sent (either way).
fn flip(net: &mut Network<Chan, Chan>, index: usize, byte: usize) -> Rc<Cell<bool>> {
    let count = Rc::new(Cell::new(0usize));
    let hit = Rc::new(Cell::new(false));
    let (c, h) = (count.clone(), hit.clone());
    net.set_interceptor(Box::new(move |_, m| {
        if c.get() == index && byte < m.len() {
            m[byte] ^= 0x10;
            h.set(true);
        }
        c.set(c.get() + 1);
        true
    }));
    hit
}

#[test]
fn a_man_in_the_middle_altering_any_byte_of_any_handshake_message_fails_it() {
    for suites in [&[Aes][..], &[Otp]] {
        for index in 0..3 {
            for byte in 0..200 {
                let mut cfg_a = config(Ownership::First, suites);
                let mut cfg_b = config(Ownership::Second, suites);
                // No resends: the altered message is the only one.
                cfg_a.handshake.max_retransmissions = 0;
                cfg_b.handshake.max_retransmissions = 0;
                let now = Instant::now();
                let a = channel(Start::Initiate, Ownership::First, cfg_a, 1, now);
                let b = channel(Start::Respond, Ownership::Second, cfg_b, 2, now);
                let mut net =
                    Network::new(a, b, LinkConfig::perfect(Duration::from_millis(1)), 1, now);
                let hit = flip(&mut net, index, byte);
                net.drive_for(Duration::from_secs(12));
                if !hit.get() {
                    break; // past the end of this message
                }
                assert!(
                    !(net.a.is_open() && net.b.is_open()),
                    "{suites:?}: message {index} byte {byte} altered, both sides open"
                );
            }
        }
    }
}

#[test]
fn a_man_in_the_middle_altering_any_byte_of_a_record_is_caught() {
    for suites in [&[Aes][..], &[Otp]] {
        // The handshake is datagrams 0..3; the next few are sync records.
        for index in 3..7 {
            for byte in (0..400).step_by(3) {
                let mut net = network(
                    (Start::Initiate, Start::Respond),
                    (suites, suites),
                    LinkConfig::perfect(Duration::from_millis(1)),
                    5,
                );
                let hit = flip(&mut net, index, byte);
                net.drive_for(Duration::from_secs(2));
                if !hit.get() {
                    break;
                }
                let record_errors = net
                    .errors_a()
                    .iter()
                    .chain(net.errors_b())
                    .filter(|e| {
                        matches!(
                            e,
                            ChannelInputError::Record(_)
                                | ChannelInputError::Malformed(_)
                                | ChannelInputError::NotOpen
                        )
                    })
                    .count();
                assert_eq!(record_errors, 1, "{suites:?} datagram {index} byte {byte}");
                assert!(
                    !net.errors_a()
                        .iter()
                        .chain(net.errors_b())
                        .any(|e| matches!(e, ChannelInputError::Inner(_))),
                    "the altered record never reaches the sync node"
                );
                // The sync layer resends; the link still works.
                assert!(both_synced(&net), "{suites:?} datagram {index} byte {byte}");
            }
        }
    }
}

#[test]
fn replayed_records_are_rejected_and_change_nothing() {
    for suites in [&[Aes][..], &[Otp]] {
        let mut net = network(
            (Start::Initiate, Start::Respond),
            (suites, suites),
            LinkConfig::perfect(Duration::from_millis(1)),
            8,
        );
        net.set_recording(true);
        net.drive_for(Duration::from_secs(1));
        assert_eq!(keys_match(&mut net, 1, 8), 8);
        net.drive_for(Duration::from_millis(500));
        let recorded: Vec<(Side, Vec<u8>)> = net
            .recorded()
            .iter()
            .filter(|(_, _, m)| m[0] == Protocol::SecuredChannel.id())
            .map(|(_, s, m)| (*s, m.clone()))
            .collect();
        assert!(recorded.len() > 4);
        let before = (net.a.inner().store().stats(), net.b.inner().store().stats());
        let (ea, eb) = (net.errors_a().len(), net.errors_b().len());
        for (from, m) in &recorded {
            net.inject(from.peer(), m.clone(), Duration::from_millis(1));
        }
        net.drive_for(Duration::from_millis(100));
        let rejected = net.errors_a().len() - ea + net.errors_b().len() - eb;
        assert_eq!(
            rejected,
            recorded.len(),
            "{suites:?}: every replay rejected"
        );
        assert!(
            net.errors_a()[ea..]
                .iter()
                .chain(&net.errors_b()[eb..])
                .all(|e| matches!(e, ChannelInputError::Record(RecordError::Replay)))
        );
        assert_eq!(
            (net.a.inner().store().stats(), net.b.inner().store().stats()),
            before
        );
    }
}

#[test]
fn a_forged_grant_is_rejected_by_the_channel_and_the_stores_do_not_change() {
    for suites in [&[Aes][..], &[Otp]] {
        let mut net = network(
            (Start::Initiate, Start::Respond),
            (suites, suites),
            LinkConfig::perfect(Duration::from_millis(1)),
            9,
        );
        net.set_recording(true);
        net.drive_for(Duration::from_secs(1));
        assert_eq!(keys_match(&mut net, 1, 4), 4);
        net.drive_for(Duration::from_millis(500));
        // The review's attack: B "grants" A all of its chunks of block 1.
        let grant = Message::Data(Data {
            from: net.b.inner().epoch(),
            to: net.a.inner().epoch(),
            seq: 1000,
            ack: 0,
            notices: vec![Notice::Grant {
                chunks: (0..64)
                    .filter(|c| c % 2 == 1)
                    .map(|chunk| GrantedChunk {
                        block: BlockId::new(1),
                        chunk,
                        from: 0,
                    })
                    .collect(),
            }],
        })
        .encode();
        // A record-shaped forgery: the newest record B sent, its body replaced.
        let (_, _, last_from_b) = net
            .recorded()
            .iter()
            .rev()
            .find(|(_, s, m)| *s == Side::B && m[0] == Protocol::SecuredChannel.id())
            .cloned()
            .unwrap();
        let (header, seq_at) = match decode_record(&last_from_b).unwrap() {
            RecordView::Aead { header, .. } => (header.len(), 23),
            RecordView::Otp { header, .. } => (header.len(), 3),
            _ => unreachable!("two suites"),
        };
        let mut shell = last_from_b[..header].to_vec();
        // The next sequence number, so the replay window does not stop it.
        let seq = u64::from_be_bytes(shell[seq_at..seq_at + 8].try_into().unwrap()) + 1;
        shell[seq_at..seq_at + 8].copy_from_slice(&seq.to_be_bytes());
        shell.extend_from_slice(&grant);
        shell.extend_from_slice(&[0u8; 16]);
        let before = net.a.inner().store().stats();
        let errors = net.errors_a().len();
        net.inject(Side::A, grant, Duration::from_millis(1));
        net.inject(Side::A, shell, Duration::from_millis(1));
        net.drive_for(Duration::from_millis(100));
        assert_eq!(net.errors_a().len() - errors, 2, "{suites:?}");
        assert!(matches!(
            net.errors_a()[errors],
            ChannelInputError::Malformed(_)
        ));
        assert!(matches!(
            net.errors_a()[errors + 1],
            ChannelInputError::Record(_)
        ));
        assert_eq!(net.a.inner().store().stats(), before);
        // Both still take disjoint keys: nothing is handed out twice.
        let binding_a = Arc::new(Binding::pair("sae-a", "sae-b").unwrap());
        let binding_b = Arc::new(Binding::pair("sae-b", "sae-a").unwrap());
        let ka = net.a.inner_mut().take(16, 256, &binding_a).unwrap();
        let kb = net.b.inner_mut().take(16, 256, &binding_b).unwrap();
        assert!(ka.iter().all(|(ia, _)| kb.iter().all(|(ib, _)| ia != ib)));
    }
}

#[test]
fn rekeying_by_volume_and_time_keeps_the_sync_running() {
    let now = Instant::now();
    let mut ca = config(Ownership::First, &[Aes]);
    ca.rekey_after_bytes = 2048;
    ca.rekey_after = Duration::from_millis(300);
    let mut cb = config(Ownership::Second, &[Aes]);
    cb.rekey_after = Duration::from_millis(300);
    let a = channel(Start::Initiate, Ownership::First, ca, 1, now);
    let b = channel(Start::Respond, Ownership::Second, cb, 2, now);
    let mut net = Network::new(
        a,
        b,
        LinkConfig::lossy(Duration::from_millis(2), 0.02),
        4,
        now,
    );
    net.drive_for(Duration::from_secs(1));
    for block in 1..=4 {
        assert_eq!(keys_match(&mut net, block, 64), 64, "block {block}");
    }
    let rekeys = |evs: &[ChannelEvent<qkd_sync::Event>]| {
        evs.iter()
            .filter(|e| matches!(e, ChannelEvent::Rekeyed { .. }))
            .count()
    };
    assert!(rekeys(net.events_a()) >= 6, "{}", rekeys(net.events_a()));
    assert!(rekeys(net.events_b()) >= 6, "{}", rekeys(net.events_b()));
    assert!(net.a.records().unwrap().send_epoch() >= 6);
}

#[test]
fn key_forwarding_and_orderly_close() {
    let mut net = network(
        (Start::Initiate, Start::Respond),
        (&[Otp], &[Otp]),
        LinkConfig::perfect(Duration::from_millis(1)),
        12,
    );
    net.drive_for(Duration::from_millis(500));
    let status = RelayMessage::Status {
        transfer: qkd_core::KeyId::derive(b"t"),
        status: RelayStatus::Delivered,
    };
    assert!(net.a.forward(&status));
    net.drive_for(Duration::from_millis(50));
    assert!(
        net.events_b()
            .iter()
            .any(|e| matches!(e, ChannelEvent::Relay(m) if *m == status))
    );
    let now = net.now();
    net.a.close(now);
    net.drive_for(Duration::from_millis(100));
    assert!(
        net.events_a()
            .iter()
            .any(|e| matches!(e, ChannelEvent::Closed))
    );
    assert!(
        net.events_b()
            .iter()
            .any(|e| matches!(e, ChannelEvent::Closed))
    );
    assert!(net.a.is_finished() && net.b.is_finished());
}

/// A link whose one-time pads are rationed: `next_pad` gives out as many
/// keys as the shared counter allows and then reports `Exhausted`, as a
/// node does whose reserve of QKD key is empty (its handshake key comes
/// from elsewhere and is not rationed).
struct Rationed {
    link: SimulatedLink,
    pads: Rc<Cell<usize>>,
}

impl qkd_handshake::psk::PskSource for Rationed {
    fn next(&mut self) -> Result<(qkd_core::KeyId, SecretKey), qkd_handshake::psk::PskError> {
        self.link.next()
    }
    fn find(&mut self, id: &qkd_core::KeyId) -> Result<SecretKey, qkd_handshake::psk::PskError> {
        self.link.find(id)
    }
    fn consume(&mut self, id: &qkd_core::KeyId) -> Result<(), qkd_handshake::psk::PskError> {
        self.link.consume(id)
    }
    fn next_pad(&mut self) -> Result<(qkd_core::KeyId, SecretKey), qkd_handshake::psk::PskError> {
        match self.pads.get() {
            0 => Err(qkd_handshake::psk::PskError::Exhausted),
            n => {
                self.pads.set(n - 1);
                self.link.next()
            }
        }
    }
}

#[test]
fn a_one_time_pad_channel_waits_for_key_instead_of_failing_or_weakening() {
    type Rat = SecuredChannel<SyncNode, Rationed>;
    let now = Instant::now();
    let pads = Rc::new(Cell::new(0usize));
    let make = |start, ownership, seed: u64| -> Rat {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let role = match ownership {
            Ownership::First => StoreRole::EvenChunks,
            Ownership::Second => StoreRole::OddChunks,
        };
        let node = SyncNode::new(
            SyncConfig::new(StoreConfig::new("sim-link", role).with_borrow_low_water(0)),
            &mut rng,
        )
        .unwrap();
        let source = Rationed {
            link: SimulatedLink::new(b"sim-link", 7, PAD_KEY, 1 << 20, ownership),
            pads: pads.clone(),
        };
        SecuredChannel::new(
            config(ownership, &[Otp]),
            start,
            source,
            node,
            &mut rng,
            now,
        )
        .unwrap()
    };
    let a = make(Start::Initiate, Ownership::First, 70);
    let b = make(Start::Respond, Ownership::Second, 71);
    let mut net: Network<Rat, Rat> = Network::new(
        a,
        b,
        LinkConfig::lossy(Duration::from_millis(5), 0.0),
        70,
        now,
    );
    // The handshake needs no pad; the first records do, and there is none.
    net.drive_for(Duration::from_secs(2));
    let waiting = |e: &ChannelEvent<qkd_sync::Event>| matches!(e, ChannelEvent::PadsExhausted);
    assert!(net.a.is_open() && net.b.is_open());
    assert!(!net.a.is_finished() && !net.b.is_finished(), "no failure");
    assert!(net.events_a().iter().chain(net.events_b()).any(waiting));
    assert_eq!(
        net.events_a().iter().filter(|e| waiting(e)).count(),
        1,
        "reported once per shortage"
    );
    assert!(net.a.is_waiting_for_pad() || net.b.is_waiting_for_pad());
    assert!(!net.a.inner().is_paired() || !net.b.inner().is_paired());
    let records_while_starved = net.stats(Side::A).sent + net.stats(Side::B).sent;
    net.drive_for(Duration::from_secs(2));
    assert_eq!(
        net.stats(Side::A).sent + net.stats(Side::B).sent,
        records_while_starved,
        "nothing leaves while no pad is there"
    );
    assert_eq!(net.a.records().unwrap().pad_bytes_used(), 0);
    // QKD key arrives: the held records leave and the sync pairs.
    pads.set(64);
    net.drive_for(Duration::from_secs(3));
    let resumed = |e: &ChannelEvent<qkd_sync::Event>| matches!(e, ChannelEvent::PadsResumed);
    assert!(net.events_a().iter().chain(net.events_b()).any(resumed));
    assert!(both_synced(&net), "{:?} {:?}", net.a, net.b);
    assert!(net.a.records().unwrap().pad_bytes_used() > 0);
    assert!(!net.a.is_waiting_for_pad() && !net.b.is_waiting_for_pad());
}
