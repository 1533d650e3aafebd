//! Wire format properties and two-node runs over the simulated network.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use qkd_core::machine::Machine;
use qkd_core::sim::{LinkConfig, Network, Side};
use qkd_core::wire::{Protocol, WireError};
use qkd_core::{BlockId, SecretKey};
use qkd_keystore::{
    Binding, GrantedChunk, InsertOutcome, KeyPieces, KeyRange, Notice, NoticeError, StoreConfig,
    StoreRole,
};
use qkd_sync::message::{Ack, Data, Hello, MAX_MESSAGE_LEN, Message};
use qkd_sync::{Event, InputError, Lookup, MIN_MESSAGE_LEN, SyncConfig, SyncError, SyncNode};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn bid(n: u64) -> BlockId {
    BlockId::new(n)
}

fn config(role: StoreRole) -> SyncConfig {
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
    let a = SyncNode::new(config(StoreRole::EvenChunks), &mut rng).unwrap();
    let b = SyncNode::new(config(StoreRole::OddChunks), &mut rng).unwrap();
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
        .insert_block(now, bid(block), material(block, len))
        .unwrap();
    net.b
        .insert_block(now, bid(block), material(block, len))
        .unwrap();
}

#[test]
fn bulk_keys_cross_a_hostile_link_and_match() {
    let link = LinkConfig::hostile(Duration::from_millis(5)).with_corrupt(0.0);
    let mut net = network(link, 11);
    net.drive_for(Duration::from_secs(1));
    assert!(net.a.is_paired() && net.b.is_paired());
    let binding = Arc::new(Binding::pair("alice-app", "bob-app").unwrap());
    let mut taken = Vec::new();
    for block in 1..=40u64 {
        insert_both(&mut net, block, 4096);
        net.drive_for(Duration::from_millis(20));
        taken.extend(net.a.take(50, 256, &binding).unwrap_or_default());
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

/// Keys larger than a chunk (issue 16): 8 KiB keys of 64-byte chunks, 128
/// pieces each, taken 16 at a time, so one Delivered notice (about 32 KiB)
/// is split over messages of the smallest size allowed; every key crosses
/// a link that loses, duplicates and reorders and matches on the peer.
#[test]
fn keys_larger_than_a_chunk_cross_a_hostile_link_and_match() {
    let link = LinkConfig::hostile(Duration::from_millis(5)).with_corrupt(0.0);
    let mut rng = ChaCha20Rng::seed_from_u64(16);
    let cfg = |role| {
        let mut c = config(role);
        c.store = c.store.with_chunk_bytes(64);
        c.max_message_len = MIN_MESSAGE_LEN;
        c
    };
    let a = SyncNode::new(cfg(StoreRole::EvenChunks), &mut rng).unwrap();
    let b = SyncNode::new(cfg(StoreRole::OddChunks), &mut rng).unwrap();
    let mut net = Network::new(a, b, link, 16, Instant::now());
    net.drive_for(Duration::from_secs(1));
    assert!(net.a.is_paired() && net.b.is_paired());
    assert_eq!(net.a.store().max_key_bits(), 65_536);
    let binding = Arc::new(Binding::pair("alice-app", "bob-app").unwrap());
    let mut taken = Vec::new();
    let mut taken_b = Vec::new();
    for block in 1..=66u64 {
        insert_both(&mut net, block, 4096);
        net.drive_for(Duration::from_millis(10));
    }
    net.drive_for(Duration::from_millis(500));
    taken.extend(net.a.take(16, 65_536, &binding).unwrap());
    taken.extend(net.a.take(3, 8 * 1000, &binding).unwrap());
    taken_b.extend(net.b.take(5, 8 * 3000, &binding).unwrap());
    assert!(
        net.a.take(1, 65_536 + 8, &binding).is_err(),
        "above the maximum"
    );
    net.drive_for(Duration::from_secs(3));
    for (id, key) in &taken {
        let now = net.now();
        assert_eq!(
            net.b.lookup(now, id, "bob-app").unwrap(),
            Lookup::Ready(key.clone())
        );
    }
    for (id, key) in &taken_b {
        let now = net.now();
        assert_eq!(
            net.a.lookup(now, id, "bob-app").unwrap(),
            Lookup::Ready(key.clone())
        );
    }
    assert!(taken.iter().all(|(_, k)| k.len() >= 1000));
    let stats = net.stats(Side::A);
    assert!(stats.dropped > 0 && stats.duplicated > 0 && stats.reordered > 0);
    assert!(net.errors_a().is_empty() && net.errors_b().is_empty());
    assert_eq!(net.a.store().stats().peer_violations, 0);
    assert_eq!(net.b.store().stats().peer_violations, 0);
}

#[test]
fn a_pending_lookup_resolves_when_the_notice_arrives() {
    let mut net = network(LinkConfig::perfect(Duration::from_millis(10)), 1);
    net.drive_for(Duration::from_millis(200));
    insert_both(&mut net, 1, 1024);
    net.drive_for(Duration::from_millis(100));
    let binding = Arc::new(Binding::pair("m", "s").unwrap());
    let keys = net.a.take(1, 128, &binding).unwrap();
    let (id, key) = &keys[0];
    net.take_events_b();
    let now = net.now();
    assert_eq!(net.b.lookup(now, id, "s").unwrap(), Lookup::Pending);
    net.drive_for(Duration::from_millis(50));
    assert_eq!(net.take_events_b(), vec![Event::KeyArrived { id: *id }]);
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
        net.take_events_b(),
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
    net.take_events_a();
    // B reboots: new incarnation, nothing kept.
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    net.b = SyncNode::new(config(StoreRole::OddChunks), &mut rng).unwrap();
    net.drive_for(Duration::from_secs(2));
    assert!(net.a.is_paired() && net.b.is_paired());
    assert_eq!(net.a.peer_epoch(), Some(net.b.epoch()));
    assert_eq!(net.a.store().held_bytes(), 0, "A wiped the old session");
    assert!(net.take_events_a().contains(&Event::Paired {
        peer_epoch: net.b.epoch(),
        previous: Some(old_b)
    }));
    // New blocks work in the new session.
    insert_both(&mut net, 10, 1024);
    net.drive_for(Duration::from_millis(500));
    let binding = Arc::new(Binding::pair("m", "s").unwrap());
    assert_eq!(net.b.take(4, 256, &binding).unwrap().len(), 4);
    // An explicit wipe on A is a reboot too.
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    net.a.wipe(&mut rng);
    net.drive_for(Duration::from_secs(2));
    assert_eq!(net.b.store().held_bytes(), 0);
    assert!(net.b.is_paired());
}

#[test]
fn blocks_without_a_session_are_not_stored_and_keys_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut a = SyncNode::new(config(StoreRole::EvenChunks), &mut rng).unwrap();
    let now = Instant::now();
    assert_eq!(
        a.insert_block(now, bid(1), material(1, 64)).unwrap(),
        InsertOutcome::NoSession
    );
    let binding = Arc::new(Binding::pair("m", "s").unwrap());
    assert_eq!(a.take(1, 256, &binding), Err(SyncError::NotPaired));
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
    let mut a = SyncNode::new(config(StoreRole::EvenChunks), &mut rng).unwrap();
    let mut same_role = SyncNode::new(config(StoreRole::EvenChunks), &mut rng).unwrap();
    let hello = same_role.poll_transmit(now).unwrap();
    assert!(matches!(
        a.handle_input(now, &hello),
        Err(InputError::Incompatible(_))
    ));
    let mut other_link = SyncNode::new(
        SyncConfig::new(StoreConfig::new("other", StoreRole::OddChunks).with_chunk_bytes(256)),
        &mut rng,
    )
    .unwrap();
    let hello = other_link.poll_transmit(now).unwrap();
    assert!(matches!(
        a.handle_input(now, &hello),
        Err(InputError::Incompatible(_))
    ));
    // The old format (version byte first) and other protocols are refused
    // by the envelope.
    assert_eq!(
        a.handle_input(now, &[1, 1, 0]),
        Err(InputError::Wire(WireError::WrongProtocol {
            expected: Protocol::Sync,
            found: 1
        }))
    );
    assert_eq!(
        a.handle_input(now, &[0x20, 2, 1]),
        Err(InputError::Wire(WireError::UnsupportedVersion {
            protocol: Protocol::Sync,
            version: 2
        }))
    );
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
        .take(5, 256, &Arc::new(Binding::pair("m", "s").unwrap()));
    net.drive_for(Duration::from_millis(300));
    assert!(net.stats(Side::A).corrupted > 0);
}

fn sae() -> impl Strategy<Value = String> {
    "[a-z0-9-]{1,20}"
}

fn range() -> impl Strategy<Value = KeyRange> {
    (any::<u64>(), any::<u32>(), 1u32..).prop_map(|(block, offset, len)| KeyRange {
        block: bid(block),
        offset,
        len,
    })
}

fn notice() -> impl Strategy<Value = Notice> {
    prop_oneof![
        any::<u64>().prop_map(|block| Notice::Have { block: bid(block) }),
        any::<u64>().prop_map(|block| Notice::Lost { block: bid(block) }),
        range().prop_map(|range| Notice::Drop { range }),
        (
            sae(),
            prop::collection::hash_set(sae(), 1..4),
            prop::collection::vec(
                prop_oneof![
                    3 => range().prop_map(KeyPieces::single),
                    1 => prop::collection::vec(range(), 1..6)
                        .prop_map(|p| KeyPieces::new(p).unwrap()),
                ],
                0..5
            )
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
        any::<(u64, u64)>().prop_map(|(bytes, fresh)| Notice::Borrow { bytes, fresh }),
        prop::collection::vec((any::<u64>(), any::<u32>(), any::<u32>()), 0..5).prop_map(|v| {
            Notice::Grant {
                chunks: v
                    .into_iter()
                    .map(|(block, chunk, from)| GrantedChunk {
                        block: bid(block),
                        chunk,
                        from,
                    })
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
                role: if first {
                    StoreRole::EvenChunks
                } else {
                    StoreRole::OddChunks
                },
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
    /// Decode of encode is identity; every strict prefix and every
    /// extension of a valid message is rejected.
    #[test]
    fn decode_of_encode_is_identity(m in message(), extra in prop::collection::vec(any::<u8>(), 1..9)) {
        let bytes = m.encode();
        prop_assert!(bytes.len() <= MAX_MESSAGE_LEN);
        prop_assert_eq!(&bytes[..2], &[Protocol::Sync.id(), 1]);
        prop_assert_eq!(Message::decode(&bytes).unwrap(), m);
        for cut in 0..bytes.len() {
            prop_assert!(Message::decode(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(
            Message::decode(&longer),
            Err(WireError::TrailingBytes { count: extra.len() })
        );
    }

    /// Random bytes, with or without a valid envelope in front, never panic.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Message::decode(&bytes);
        let mut with_header = vec![Protocol::Sync.id(), 1, (bytes.len() % 4) as u8];
        with_header.extend_from_slice(&bytes);
        let _ = Message::decode(&with_header);
    }

    #[test]
    fn a_node_survives_any_input(bytes in prop::collection::vec(any::<u8>(), 0..300), flip in any::<(usize, u8)>()) {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let now = Instant::now();
        let mut a = SyncNode::new(config(StoreRole::EvenChunks), &mut rng).unwrap();
        let mut b = SyncNode::new(config(StoreRole::OddChunks), &mut rng).unwrap();
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
        role: StoreRole::OddChunks,
        chunk_bytes: 1024,
        link_tag: [0xaa; 16],
    });
    let bytes = hello.encode();
    assert_eq!(bytes.len(), 3 + 5 * 8 + 1 + 4 + 16);
    assert_eq!(&bytes[..3], &[0x20, 1, 1], "Sync, version 1, Hello");
    assert_eq!(&bytes[3..11], &1u64.to_be_bytes());
    assert_eq!(bytes[43], 1, "role odd chunks");
    assert_eq!(&bytes[44..48], &1024u32.to_be_bytes());
    let data = Message::Data(Data {
        from: 7,
        to: 8,
        seq: 1,
        ack: 0,
        notices: vec![
            Notice::Have { block: bid(0x10) },
            Notice::Drop {
                range: KeyRange {
                    block: bid(0x10),
                    offset: 32,
                    len: 8,
                },
            },
            Notice::Borrow {
                bytes: 0x200,
                fresh: 0x30,
            },
        ],
    });
    let bytes = data.encode();
    let mut want = vec![0x20, 1, 2];
    for v in [7u64, 8, 1, 0] {
        want.extend_from_slice(&v.to_be_bytes());
    }
    want.extend_from_slice(&[0, 3]); // three records
    want.push(1); // Have
    want.extend_from_slice(&0x10u64.to_be_bytes());
    want.push(3); // Drop
    want.extend_from_slice(&0x10u64.to_be_bytes());
    want.extend_from_slice(&32u32.to_be_bytes());
    want.extend_from_slice(&8u32.to_be_bytes());
    want.push(6); // Borrow
    want.extend_from_slice(&0x200u64.to_be_bytes());
    want.extend_from_slice(&0x30u64.to_be_bytes());
    assert_eq!(bytes, want);
    assert_eq!(Message::decode(&bytes).unwrap(), data);
}

/// Counts are checked against the bytes left before anything is allocated:
/// a huge count with nothing behind it is `TooMany`, naming the field.
#[test]
fn huge_counts_without_records_are_refused_by_field() {
    let data_header = || {
        let mut bytes = vec![0x20, 1, 2];
        bytes.extend_from_slice(&[0; 32]);
        bytes
    };
    // A Data header claiming 65535 records with none present.
    let mut bytes = data_header();
    bytes.extend_from_slice(&[0xff, 0xff]);
    assert!(matches!(
        Message::decode(&bytes),
        Err(WireError::TooMany {
            field: "records",
            count: 65535,
            ..
        })
    ));
    // A Grant claiming 65535 chunks.
    let mut bytes = data_header();
    bytes.extend_from_slice(&[0, 1, 7, 0xff, 0xff]);
    assert!(matches!(
        Message::decode(&bytes),
        Err(WireError::TooMany {
            field: "chunks",
            ..
        })
    ));
    assert!(matches!(
        Message::decode(&vec![0x20u8; MAX_MESSAGE_LEN + 1]),
        Err(WireError::TooMany {
            field: "message length",
            ..
        })
    ));
    assert_eq!(
        Message::decode(&[0x20, 1, 9]),
        Err(WireError::UnknownType {
            protocol: Protocol::Sync,
            kind: 9
        })
    );
    // An empty key range is invalid.
    let mut bytes = data_header();
    bytes.extend_from_slice(&[0, 1, 3]);
    bytes.extend_from_slice(&[0; 16]);
    assert!(matches!(
        Message::decode(&bytes),
        Err(WireError::Invalid { field: "len", .. })
    ));
    // A Delivered record with pieces claiming 65535 keys, then one key
    // claiming 255 pieces, then one of no piece.
    let delivered_pieces = |rest: &[u8]| {
        let mut bytes = data_header();
        bytes.extend_from_slice(&[0, 1, 8, 1, b'm', 1, 1, b's']);
        bytes.extend_from_slice(rest);
        Message::decode(&bytes)
    };
    assert!(matches!(
        delivered_pieces(&[0xff, 0xff]),
        Err(WireError::TooMany { field: "keys", .. })
    ));
    assert!(matches!(
        delivered_pieces(&[0, 1, 0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]),
        Err(WireError::TooMany {
            field: "pieces",
            ..
        })
    ));
    assert!(matches!(
        delivered_pieces(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(WireError::Invalid {
            field: "pieces",
            ..
        })
    ));
    // An unknown record tag.
    let mut bytes = data_header();
    bytes.extend_from_slice(&[0, 1, 9, 0, 0]);
    assert!(matches!(
        Message::decode(&bytes),
        Err(WireError::Invalid {
            field: "record",
            ..
        })
    ));
}

/// Issue 10: two nodes with the default `StoreConfig` (1 KiB chunks, 64 KiB
/// low-water mark) and 200-byte final key blocks both take keys, and every
/// key taken on one side is served on the other. On 40aba07 the second node
/// never got a key (`Insufficient { available: 0 }` forever).
#[test]
fn default_store_config_both_nodes_take_keys_from_200_byte_blocks() {
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    let cfg = |role| SyncConfig::new(StoreConfig::new("small-link", role));
    let a = SyncNode::new(cfg(StoreRole::EvenChunks), &mut rng).unwrap();
    let b = SyncNode::new(cfg(StoreRole::OddChunks), &mut rng).unwrap();
    let link = LinkConfig::lossy(Duration::from_millis(5), 0.1);
    let mut net = Network::new(a, b, link, 21, Instant::now());
    net.drive_for(Duration::from_secs(1));
    assert!(net.a.is_paired() && net.b.is_paired());
    let binding = Arc::new(Binding::pair("sae-a", "sae-b").unwrap());
    let mut taken: [Vec<_>; 2] = [Vec::new(), Vec::new()];
    for block in 1..=40u64 {
        insert_both(&mut net, block, 200);
        net.drive_for(Duration::from_millis(50));
        for (i, node) in [&mut net.a, &mut net.b].into_iter().enumerate() {
            if let Ok(keys) = node.take(2, 256, &binding) {
                taken[i].extend(keys);
            }
        }
    }
    assert!(
        taken[0].len() >= 20 && taken[1].len() >= 20,
        "a took {}, b took {}",
        taken[0].len(),
        taken[1].len()
    );
    net.drive_for(Duration::from_secs(2));
    for (i, keys) in taken.iter().enumerate() {
        for (id, key) in keys {
            let now = net.now();
            let peer = if i == 0 { &mut net.b } else { &mut net.a };
            assert_eq!(
                peer.lookup(now, id, "sae-b").unwrap(),
                Lookup::Ready(key.clone())
            );
        }
    }
    assert!(net.errors_a().is_empty() && net.errors_b().is_empty());
}

#[test]
fn bad_configuration_is_an_error_naming_the_field_not_a_panic() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let ok = config(StoreRole::EvenChunks);
    let cases = [
        (
            "max_message_len",
            SyncConfig {
                max_message_len: 10,
                ..ok.clone()
            },
        ),
        (
            "window",
            SyncConfig {
                window: 0,
                ..ok.clone()
            },
        ),
        (
            "retransmit_after",
            SyncConfig {
                retransmit_after: Duration::ZERO,
                ..ok.clone()
            },
        ),
        (
            "hello_interval",
            SyncConfig {
                hello_interval: Duration::ZERO,
                ..ok.clone()
            },
        ),
        (
            "lookup_wait",
            SyncConfig {
                lookup_wait: Duration::ZERO,
                ..ok.clone()
            },
        ),
        (
            "max_waiters",
            SyncConfig {
                max_waiters: 0,
                ..ok.clone()
            },
        ),
        (
            "store.chunk_bytes",
            SyncConfig {
                store: ok.store.clone().with_chunk_bytes(0),
                ..ok.clone()
            },
        ),
    ];
    for (field, c) in cases {
        let e = SyncNode::new(c, &mut rng).unwrap_err();
        assert_eq!(e.field(), field);
    }
    let json = r#"{"store":{"link":"l","role":"odd_chunks"},"windw":3}"#;
    assert!(
        serde_json::from_str::<SyncConfig>(json).is_err(),
        "unknown field"
    );
}

/// Two nodes paired over a perfect channel with block 1 (1 KiB) stored on
/// both, and no data message sent yet: the next data message from `b` has
/// sequence number 1.
fn paired_with_a_block() -> (SyncNode, SyncNode, Instant) {
    let mut rng = ChaCha20Rng::seed_from_u64(31);
    let now = Instant::now();
    let mut a = SyncNode::new(config(StoreRole::EvenChunks), &mut rng).unwrap();
    let mut b = SyncNode::new(config(StoreRole::OddChunks), &mut rng).unwrap();
    let pump = |a: &mut SyncNode, b: &mut SyncNode| {
        for _ in 0..8 {
            while let Some(m) = a.poll_transmit(now) {
                b.handle_input(now, &m).unwrap();
            }
            while let Some(m) = b.poll_transmit(now) {
                a.handle_input(now, &m).unwrap();
            }
        }
    };
    pump(&mut a, &mut b);
    assert!(a.is_paired() && b.is_paired());
    a.insert_block(now, bid(1), material(1, 1024)).unwrap();
    while a.poll_event().is_some() {}
    (a, b, now)
}

/// Issue 11, finding 5, through the protocol: a peer's hostile notices are
/// refused one by one with a `PeerMisbehaved` event, and leave no state.
/// On 40aba07 none of these produced an event and each was recorded.
#[test]
fn finding_5_hostile_notices_are_refused_with_an_event_each() {
    let (mut a, b, now) = paired_with_a_block();
    let mut notices = vec![
        Notice::Have {
            block: bid(u64::MAX),
        },
        Notice::Lost {
            block: bid(1 << 40),
        },
    ];
    for i in 0..50 {
        notices.push(Notice::Consumed {
            master: format!("master-{i}"),
            slave: "slave".into(),
            count: 0,
        });
    }
    let forged = Message::Data(Data {
        from: b.epoch(),
        to: a.epoch(),
        seq: 1,
        ack: 0,
        notices,
    });
    a.handle_input(now, &forged.encode()).unwrap();
    let events: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
    assert_eq!(events.len(), 52, "{events:?}");
    assert!(events.iter().all(|e| matches!(e, Event::PeerMisbehaved(_))));
    assert_eq!(
        events[0],
        Event::PeerMisbehaved(NoticeError::BlockTooFarAhead {
            block: bid(u64::MAX)
        })
    );
    assert_eq!(
        events[2],
        Event::PeerMisbehaved(NoticeError::UnknownPairing)
    );
    assert_eq!(a.store().pairings_counted(), 0);
    assert_eq!(a.store().peer_blocks_ahead(), 0);
    // The honest blocks after it are stored, not skipped.
    assert_eq!(
        a.insert_block(now, bid(2), material(2, 64)).unwrap(),
        InsertOutcome::Stored
    );
}

/// Issue 11, finding 7: the crate declares no Cargo feature (on 40aba07 its
/// `model` feature, on under `--all-features`, switched on the keystore's
/// key-byte view and the switch that disabled the ownership rule).
#[test]
fn finding_7_the_sync_crate_has_no_cargo_feature() {
    let manifest = include_str!("../Cargo.toml");
    let mut in_features = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_features = line == "[features]";
            continue;
        }
        assert!(
            !in_features || line.is_empty() || line.starts_with('#') || line == "default = []",
            "qkd-sync declares a feature: {line}"
        );
    }
}
