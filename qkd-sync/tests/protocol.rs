//! Wire format properties and two-node runs over the simulated network.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use qkd_core::SecretKey;
use qkd_core::sim::{LinkConfig, Network, Side};
use qkd_keystore::{Binding, GrantedChunk, InsertOutcome, KeyRange, Notice, Role, StoreConfig};
use qkd_sync::message::{Ack, Data, Hello, MAX_MESSAGE_LEN, Message, WireError};
use qkd_sync::{Event, InputError, Lookup, SyncConfig, SyncError, SyncNode};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn config(role: Role) -> SyncConfig {
    let mut c = SyncConfig::new(
        StoreConfig::new("proto-link", role)
            .with_chunk_bytes(256)
            .with_borrow_low_water(0),
    );
    c.retransmit_after = Duration::from_millis(30);
    c.hello_interval = Duration::from_millis(50);
    c
}

fn network(link: LinkConfig, seed: u64) -> Network<SyncNode, SyncNode> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let a = SyncNode::new(config(Role::First), &mut rng);
    let b = SyncNode::new(config(Role::Second), &mut rng);
    Network::new(a, b, link, seed, Instant::now())
}

fn material(block: u64, len: usize) -> SecretKey {
    SecretKey::from_vec(
        (0..len)
            .map(|i| (i as u64 ^ block.wrapping_mul(77)) as u8)
            .collect(),
    )
}

fn insert_both(net: &mut Network<SyncNode, SyncNode>, block: u64, len: usize) {
    let now = net.now();
    net.a
        .insert_block(now, block, material(block, len))
        .unwrap();
    net.b
        .insert_block(now, block, material(block, len))
        .unwrap();
}

/// Events of one side: those the network drained, then any the node holds
/// from calls made outside a network step.
fn events(net: &mut Network<SyncNode, SyncNode>, side: Side) -> Vec<Event> {
    let (mut seen, n) = match side {
        Side::A => (net.take_events_a(), &mut net.a),
        Side::B => (net.take_events_b(), &mut net.b),
    };
    seen.extend(std::iter::from_fn(|| n.poll_event()));
    seen
}

#[test]
fn bulk_keys_cross_a_hostile_link_and_match() {
    let link = LinkConfig::hostile(Duration::from_millis(5)).with_corrupt(0.0);
    let mut net = network(link, 11);
    net.drive_for(Duration::from_secs(1));
    assert!(net.a.is_established() && net.b.is_established());
    let binding = Arc::new(Binding::pair("alice-app", "bob-app").unwrap());
    let mut taken = Vec::new();
    for block in 1..=40u64 {
        insert_both(&mut net, block, 4096);
        net.drive_for(Duration::from_millis(20));
        taken.extend(net.a.take_fresh(50, 256, &binding).unwrap_or_default());
    }
    assert!(taken.len() >= 1500, "{}", taken.len());
    net.drive_for(Duration::from_secs(2));
    for (id, key) in &taken {
        let now = net.now();
        assert_eq!(
            net.b.lookup(now, id, "bob-app").unwrap(),
            Lookup::Ready(key.clone())
        );
    }
    net.drive_for(Duration::from_secs(1));
    let stats = net.stats(Side::A);
    assert!(stats.dropped > 0 && stats.duplicated > 0 && stats.reordered > 0);
    assert!(net.errors_a().is_empty() && net.errors_b().is_empty());
    assert_eq!(
        net.a
            .status("alice-app", "bob-app", 256)
            .counts
            .fetched_by_peer,
        taken.len() as u64
    );
}

#[test]
fn a_pending_lookup_resolves_when_the_notice_arrives() {
    let mut net = network(LinkConfig::perfect(Duration::from_millis(10)), 1);
    net.drive_for(Duration::from_millis(200));
    insert_both(&mut net, 1, 1024);
    net.drive_for(Duration::from_millis(100));
    let binding = Arc::new(Binding::pair("m", "s").unwrap());
    let keys = net.a.take_fresh(1, 128, &binding).unwrap();
    let (id, key) = &keys[0];
    events(&mut net, Side::B);
    let now = net.now();
    assert_eq!(net.b.lookup(now, id, "s").unwrap(), Lookup::Pending);
    net.drive_for(Duration::from_millis(50));
    assert_eq!(
        events(&mut net, Side::B),
        vec![Event::KeyArrived { id: *id }]
    );
    let now = net.now();
    assert_eq!(
        net.b.lookup(now, id, "s").unwrap(),
        Lookup::Ready(key.clone())
    );
    // A key that never comes times out.
    let unknown = qkd_core::KeyId::derive(b"never");
    assert_eq!(net.b.lookup(now, &unknown, "s").unwrap(), Lookup::Pending);
    net.drive_for(Duration::from_secs(3));
    assert_eq!(
        events(&mut net, Side::B),
        vec![Event::LookupTimedOut { id: unknown }]
    );
}

#[test]
fn a_reboot_wipes_both_stores_and_a_new_session_starts() {
    let mut net = network(LinkConfig::lossy(Duration::from_millis(3), 0.2), 5);
    net.drive_for(Duration::from_millis(500));
    for b in 1..=3 {
        insert_both(&mut net, b, 1024);
    }
    net.drive_for(Duration::from_millis(500));
    assert!(net.a.store().held_bytes() > 0);
    let old_b = net.b.epoch();
    events(&mut net, Side::A);
    // B reboots: new incarnation, nothing kept.
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    net.b = SyncNode::new(config(Role::Second), &mut rng);
    net.drive_for(Duration::from_secs(2));
    assert!(net.a.is_established() && net.b.is_established());
    assert_eq!(net.a.peer_epoch(), Some(net.b.epoch()));
    assert_eq!(net.a.store().held_bytes(), 0, "A wiped the old session");
    assert!(events(&mut net, Side::A).contains(&Event::Paired {
        peer_epoch: net.b.epoch(),
        previous: Some(old_b)
    }));
    // New blocks work in the new session.
    insert_both(&mut net, 10, 1024);
    net.drive_for(Duration::from_millis(500));
    let binding = Arc::new(Binding::pair("m", "s").unwrap());
    assert_eq!(net.b.take_fresh(4, 256, &binding).unwrap().len(), 4);
    // An explicit wipe on A is a reboot too.
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    net.a.wipe(&mut rng);
    net.drive_for(Duration::from_secs(2));
    assert_eq!(net.b.store().held_bytes(), 0);
    assert!(net.b.is_established());
}

#[test]
fn blocks_without_a_session_are_not_stored_and_keys_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut a = SyncNode::new(config(Role::First), &mut rng);
    let now = Instant::now();
    assert_eq!(
        a.insert_block(now, 1, material(1, 64)).unwrap(),
        InsertOutcome::NoSession
    );
    let binding = Arc::new(Binding::pair("m", "s").unwrap());
    assert_eq!(a.take_fresh(1, 256, &binding), Err(SyncError::NotPaired));
    assert_eq!(
        a.lookup(now, &qkd_core::KeyId::derive(b"x"), "s"),
        Err(SyncError::NotPaired)
    );
    assert_eq!(a.status("m", "s", 256).fresh_keys, 0);
}

#[test]
fn incompatible_peers_are_rejected() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let now = Instant::now();
    let mut a = SyncNode::new(config(Role::First), &mut rng);
    let mut same_role = SyncNode::new(config(Role::First), &mut rng);
    let hello = same_role.poll_transmit(now).unwrap();
    assert!(matches!(
        a.handle_input(now, &hello),
        Err(InputError::Incompatible(_))
    ));
    let mut other_link = SyncNode::new(
        SyncConfig::new(StoreConfig::new("other", Role::Second).with_chunk_bytes(256)),
        &mut rng,
    );
    let hello = other_link.poll_transmit(now).unwrap();
    assert!(matches!(
        a.handle_input(now, &hello),
        Err(InputError::Incompatible(_))
    ));
    assert!(matches!(
        a.handle_input(now, &[9, 1]),
        Err(InputError::Wire(WireError::UnsupportedVersion(9)))
    ));
    assert_eq!(a.peer_epoch(), None);
}

#[test]
fn corrupted_messages_never_panic() {
    // The real channel authenticates; this only checks robustness of decoding.
    let link = LinkConfig::perfect(Duration::from_millis(2)).with_corrupt(0.3);
    let mut net = network(link, 8);
    net.drive_for(Duration::from_millis(300));
    insert_both(&mut net, 1, 4096);
    net.drive_for(Duration::from_millis(300));
    let _ = net
        .a
        .take_fresh(5, 256, &Arc::new(Binding::pair("m", "s").unwrap()));
    net.drive_for(Duration::from_millis(300));
    assert!(net.stats(Side::A).corrupted > 0);
}

fn sae() -> impl Strategy<Value = String> {
    "[a-z0-9-]{1,20}"
}

fn range() -> impl Strategy<Value = KeyRange> {
    (any::<u64>(), any::<u32>(), 1u32..).prop_map(|(block, offset, len)| KeyRange {
        block,
        offset,
        len,
    })
}

fn notice() -> impl Strategy<Value = Notice> {
    prop_oneof![
        any::<u64>().prop_map(|block| Notice::Have { block }),
        any::<u64>().prop_map(|block| Notice::Lost { block }),
        range().prop_map(|range| Notice::Drop { range }),
        (
            sae(),
            prop::collection::hash_set(sae(), 1..4),
            prop::collection::vec(range(), 0..5)
        )
            .prop_map(|(m, s, keys)| Notice::Delivered {
                binding: Arc::new(Binding::new(m, s).unwrap()),
                keys
            }),
        (sae(), sae(), any::<u32>()).prop_map(|(master, slave, count)| Notice::Consumed {
            master,
            slave,
            count
        }),
        any::<u64>().prop_map(|bytes| Notice::Borrow { bytes }),
        prop::collection::vec((any::<u64>(), any::<u32>(), any::<u32>()), 0..5).prop_map(|v| {
            Notice::Grant {
                chunks: v
                    .into_iter()
                    .map(|(block, chunk, from)| GrantedChunk { block, chunk, from })
                    .collect(),
            }
        }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<[u64; 5]>(),
            any::<bool>(),
            any::<u32>(),
            any::<[u8; 16]>()
        )
            .prop_map(|(e, first, chunk_bytes, link_tag)| Message::Hello(Hello {
                from: e[0],
                paired_to: e[1],
                nonce: e[2],
                echo_epoch: e[3],
                echo_nonce: e[4],
                role: if first { Role::First } else { Role::Second },
                chunk_bytes,
                link_tag,
            })),
        (any::<[u64; 4]>(), prop::collection::vec(notice(), 0..6)).prop_map(|(h, notices)| {
            Message::Data(Data {
                from: h[0],
                to: h[1],
                seq: h[2],
                ack: h[3],
                notices,
            })
        }),
        any::<[u64; 3]>().prop_map(|h| Message::Ack(Ack {
            from: h[0],
            to: h[1],
            ack: h[2]
        })),
    ]
}

proptest! {
    #[test]
    fn decode_of_encode_is_identity(m in message()) {
        let bytes = m.encode();
        prop_assert!(bytes.len() <= MAX_MESSAGE_LEN);
        prop_assert_eq!(Message::decode(&bytes).unwrap(), m);
        // Any strict prefix or extension is rejected.
        for cut in 0..bytes.len() {
            prop_assert!(Message::decode(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert_eq!(Message::decode(&longer), Err(WireError::TrailingBytes(1)));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Message::decode(&bytes);
        let mut with_header = vec![1, (bytes.len() % 4) as u8];
        with_header.extend_from_slice(&bytes);
        let _ = Message::decode(&with_header);
    }

    #[test]
    fn a_node_survives_any_input(bytes in prop::collection::vec(any::<u8>(), 0..300), flip in any::<(usize, u8)>()) {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let now = Instant::now();
        let mut a = SyncNode::new(config(Role::First), &mut rng);
        let mut b = SyncNode::new(config(Role::Second), &mut rng);
        let _ = a.handle_input(now, &bytes);
        // A valid hello with one byte changed.
        let mut hello = b.poll_transmit(now).unwrap();
        let i = flip.0 % hello.len();
        hello[i] ^= flip.1;
        let _ = a.handle_input(now, &hello);
        while a.poll_transmit(now).is_some() {}
    }
}

#[test]
fn hello_and_data_layout_known_answer() {
    let hello = Message::Hello(Hello {
        from: 1,
        paired_to: 2,
        nonce: 3,
        echo_epoch: 4,
        echo_nonce: 5,
        role: Role::Second,
        chunk_bytes: 1024,
        link_tag: [0xaa; 16],
    });
    let bytes = hello.encode();
    assert_eq!(bytes.len(), 2 + 5 * 8 + 1 + 4 + 16);
    assert_eq!(&bytes[..2], &[1, 1]);
    assert_eq!(&bytes[2..10], &1u64.to_be_bytes());
    assert_eq!(bytes[42], 1, "role second");
    assert_eq!(&bytes[43..47], &1024u32.to_be_bytes());
    let data = Message::Data(Data {
        from: 7,
        to: 8,
        seq: 1,
        ack: 0,
        notices: vec![
            Notice::Have { block: 0x10 },
            Notice::Drop {
                range: KeyRange {
                    block: 0x10,
                    offset: 32,
                    len: 8,
                },
            },
        ],
    });
    let bytes = data.encode();
    let mut want = vec![1, 2];
    for v in [7u64, 8, 1, 0] {
        want.extend_from_slice(&v.to_be_bytes());
    }
    want.extend_from_slice(&[0, 2]); // two records
    want.push(1); // Have
    want.extend_from_slice(&0x10u64.to_be_bytes());
    want.push(3); // Drop
    want.extend_from_slice(&0x10u64.to_be_bytes());
    want.extend_from_slice(&32u32.to_be_bytes());
    want.extend_from_slice(&8u32.to_be_bytes());
    assert_eq!(bytes, want);
}

/// Huge counts with nothing behind them end as `Truncated` (the decoder
/// also checks them before allocating, which this test cannot observe).
#[test]
fn huge_counts_without_records_are_truncated() {
    // A Data header claiming 65535 records with none present.
    let mut bytes = vec![1, 2];
    bytes.extend_from_slice(&[0; 32]);
    bytes.extend_from_slice(&[0xff, 0xff]);
    assert_eq!(Message::decode(&bytes), Err(WireError::Truncated));
    // A Grant claiming 65535 chunks.
    let mut bytes = vec![1, 2];
    bytes.extend_from_slice(&[0; 32]);
    bytes.extend_from_slice(&[0, 1, 7, 0xff, 0xff]);
    assert_eq!(Message::decode(&bytes), Err(WireError::Truncated));
    assert!(matches!(
        Message::decode(&vec![1u8; MAX_MESSAGE_LEN + 1]),
        Err(WireError::TooLong { .. })
    ));
    assert_eq!(Message::decode(&[1, 9]), Err(WireError::UnknownType(9)));
    // An empty key range is invalid.
    let mut bytes = vec![1, 2];
    bytes.extend_from_slice(&[0; 32]);
    bytes.extend_from_slice(&[0, 1, 3]);
    bytes.extend_from_slice(&[0; 16]);
    assert_eq!(
        Message::decode(&bytes),
        Err(WireError::Invalid("empty key range"))
    );
}
