//! Behaviour of one link's pair of stores, notices carried by hand in order.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use qkd_core::{BlockId, KeyId, SecretKey};
use qkd_keystore::{
    Binding, GrantedChunk, InsertOutcome, KeyPieces, KeyRange, KeyStore, LookupError, Notice,
    NoticeError, StoreConfig, StoreRole, TakeError,
};

fn bid(n: u64) -> BlockId {
    BlockId::new(n)
}

fn config(role: StoreRole) -> StoreConfig {
    StoreConfig::new("link-t", role)
        .with_chunk_bytes(64)
        .with_borrow_low_water(0)
}

fn pair(cfg: impl Fn(StoreRole) -> StoreConfig) -> (KeyStore, KeyStore) {
    (
        KeyStore::new(cfg(StoreRole::EvenChunks)).unwrap(),
        KeyStore::new(cfg(StoreRole::OddChunks)).unwrap(),
    )
}

fn block_bytes(block: u64, len: usize) -> SecretKey {
    SecretKey::from_vec(
        (0..len)
            .map(|i| (i as u64 * 31 + block * 7) as u8)
            .collect(),
    )
}

/// Carries every queued notice both ways until both queues are empty.
fn sync(now: Instant, a: &mut KeyStore, b: &mut KeyStore) -> Vec<Notice> {
    let mut seen = Vec::new();
    let mut arrived = Vec::new();
    loop {
        let mut moved = false;
        while let Some(n) = a.poll_notice() {
            seen.push(n.clone());
            b.apply(now, n, &mut arrived).unwrap();
            moved = true;
        }
        while let Some(n) = b.poll_notice() {
            seen.push(n.clone());
            a.apply(now, n, &mut arrived).unwrap();
            moved = true;
        }
        if !moved {
            return seen;
        }
    }
}

fn insert_both(now: Instant, a: &mut KeyStore, c: &mut KeyStore, block: u64, len: usize) {
    a.insert_block(now, bid(block), block_bytes(block, len))
        .unwrap();
    c.insert_block(now, bid(block), block_bytes(block, len))
        .unwrap();
}

fn binding() -> Arc<Binding> {
    Arc::new(Binding::pair("master", "slave").unwrap())
}

#[test]
fn ownership_splits_each_block_and_keys_match() {
    let now = Instant::now();
    let (mut a, mut b) = pair(config);
    insert_both(now, &mut a, &mut b, 1, 256); // 4 chunks: a owns 1, 3 (1 + c even); b owns 0, 2
    sync(now, &mut a, &mut b);
    assert_eq!(a.stats().fresh_bytes, 128);
    assert_eq!(b.stats().fresh_bytes, 128);
    let ka = a.take(4, 256, &binding()).unwrap();
    let kb = b.take(4, 256, &binding()).unwrap();
    assert!(matches!(
        a.take(1, 8, &binding()),
        Err(TakeError::Insufficient { available: 0, .. })
    ));
    let ids: HashSet<KeyId> = ka.iter().chain(&kb).map(|k| k.0).collect();
    assert_eq!(ids.len(), 8, "no key ID on both sides");
    sync(now, &mut a, &mut b);
    let block = block_bytes(1, 256);
    for (i, (id, key)) in ka.iter().enumerate() {
        // a cut chunk 1 then chunk 3, 32 bytes at a time.
        let off = [64, 96, 192, 224][i];
        assert_eq!(*id, KeyId::for_block(b"link-t", 1, off as u64));
        assert_eq!(key.expose_secret(), &block.expose_secret()[off..off + 32]);
        assert_eq!(b.lookup(id, "slave").unwrap().as_ref(), Some(key));
        assert_eq!(b.lookup(id, "slave").unwrap(), None, "fetched once");
    }
    for (id, key) in &kb {
        assert_eq!(a.lookup(id, "slave").unwrap().as_ref(), Some(key));
    }
    sync(now, &mut a, &mut b);
    assert_eq!(a.stats().blocks, 0, "everything handed out: block freed");
    assert_eq!(b.stats().blocks, 0);
    assert_eq!(a.held_bytes(), 0);
    assert_eq!(a.pairing("master", "slave").fetched_by_peer, 4);
    assert_eq!(a.pairing("master", "slave").taken, 4);
}

#[test]
fn block_is_usable_only_after_the_peer_announced_it() {
    let now = Instant::now();
    let (mut a, mut b) = pair(config);
    a.insert_block(now, bid(5), block_bytes(5, 128)).unwrap();
    assert!(a.take(1, 256, &binding()).is_err());
    assert_eq!(a.stats().pending_bytes, 64);
    // b announces first: a is ready when its own insert comes.
    b.insert_block(now, bid(5), block_bytes(5, 128)).unwrap();
    sync(now, &mut a, &mut b);
    assert_eq!(a.take(2, 256, &binding()).unwrap().len(), 2);
    let (mut c, mut d) = pair(config);
    d.insert_block(now, bid(9), block_bytes(9, 128)).unwrap();
    sync(now, &mut c, &mut d);
    assert_eq!(
        c.insert_block(now, bid(9), block_bytes(9, 128)).unwrap(),
        InsertOutcome::Ready
    );
}

#[test]
fn lost_block_is_dropped_on_both_and_order_is_enforced() {
    let now = Instant::now();
    let (mut a, mut b) = pair(config);
    a.insert_block(now, bid(1), block_bytes(1, 128)).unwrap();
    b.discard_block(bid(1)).unwrap();
    assert!(b.insert_block(now, bid(1), block_bytes(1, 128)).is_err());
    sync(now, &mut a, &mut b);
    assert_eq!(a.stats().blocks, 0);
    assert_eq!(a.held_bytes(), 0);
    // Lost notice ahead of the local insert.
    b.discard_block(bid(2)).unwrap();
    sync(now, &mut a, &mut b);
    assert_eq!(
        a.insert_block(now, bid(2), block_bytes(2, 64)).unwrap(),
        InsertOutcome::LostByPeer
    );
}

#[test]
fn keys_of_any_byte_size_and_fragments_are_dropped_symmetrically() {
    let now = Instant::now();
    let (mut a, mut b) = pair(config);
    insert_both(now, &mut a, &mut b, 1, 256);
    sync(now, &mut a, &mut b);
    assert!(matches!(
        a.take(1, 12, &binding()),
        Err(TakeError::InvalidSize { .. })
    ));
    assert!(matches!(
        a.take(1, 8 * 8192 + 8, &binding()),
        Err(TakeError::InvalidSize {
            max_bits: 65_536,
            ..
        })
    ));
    assert!(matches!(
        a.take(0, 8, &binding()),
        Err(TakeError::InvalidCount { .. })
    ));
    let k = a.take(1, 8 * 40, &binding()).unwrap(); // chunk 1: 24 bytes left
    assert_eq!(k[0].1.len(), 40);
    assert_eq!(a.fresh_keys(8 * 40), 1);
    let k2 = a.take(1, 8 * 40, &binding()).unwrap(); // skips chunk 1's 24 bytes
    assert_eq!(k2[0].0, KeyId::for_block(b"link-t", 1, 192));
    assert_eq!(a.stats().bytes_dropped, 24);
    let seen = sync(now, &mut a, &mut b);
    assert!(
        seen.iter()
            .any(|n| matches!(n, Notice::Drop { range } if range.len == 24))
    );
    assert_eq!(b.stats().bytes_dropped, 24);
    assert_eq!(b.lookup(&k[0].0, "slave").unwrap().unwrap(), k[0].1);
}

#[test]
fn take_is_all_or_nothing() {
    let now = Instant::now();
    let (mut a, mut b) = pair(config);
    insert_both(now, &mut a, &mut b, 1, 128);
    sync(now, &mut a, &mut b);
    let before = a.stats();
    assert_eq!(
        a.take(3, 256, &binding()),
        Err(TakeError::Insufficient {
            requested: 3,
            available: 2
        })
    );
    assert_eq!(a.stats(), before);
    assert!(!a.has_notices());
}

#[test]
fn expiry_drops_owned_material_and_the_peer_follows() {
    let now = Instant::now();
    let ttl = Duration::from_secs(10);
    let (mut a, mut b) = pair(|r| config(r).with_key_ttl(ttl).with_delivered_ttl(ttl));
    insert_both(now, &mut a, &mut b, 1, 256);
    sync(now, &mut a, &mut b);
    let k = a.take(1, 256, &binding()).unwrap();
    sync(now, &mut a, &mut b);
    assert_eq!(a.next_expiry(), Some(now + ttl));
    assert_eq!(a.expire(now + ttl / 2), 0);
    a.expire(now + ttl);
    b.expire(now + ttl);
    assert_eq!(a.stats().fresh_bytes, 0);
    assert_eq!(b.stats().fresh_bytes, 0);
    assert_eq!(
        b.stats().keys_expired,
        1,
        "the delivered copy timed out too"
    );
    assert_eq!(b.lookup(&k[0].0, "slave").unwrap(), None);
    sync(now + ttl, &mut a, &mut b);
    assert_eq!(a.stats().blocks, 0);
    assert_eq!(b.stats().blocks, 0);
    assert_eq!(a.held_bytes() + b.held_bytes(), 0);
}

#[test]
fn capacity_drops_old_fresh_material_then_refuses() {
    let now = Instant::now();
    let (mut a, mut b) = pair(|r| config(r).with_capacity_bytes(300));
    insert_both(now, &mut a, &mut b, 1, 256);
    sync(now, &mut a, &mut b);
    // Room is made by dropping a's own chunks; the peer's copies stay, so
    // block 2 still does not fit and is refused.
    assert_eq!(
        a.insert_block(now, bid(2), block_bytes(2, 256)).unwrap(),
        InsertOutcome::OverCapacity
    );
    assert_eq!(a.stats().fresh_bytes, 0);
    assert_eq!(a.held_bytes(), 128);
    // A small block fits now.
    assert_eq!(
        a.insert_block(now, bid(3), block_bytes(3, 64)).unwrap(),
        InsertOutcome::Stored
    );
    b.insert_block(now, bid(2), block_bytes(2, 256)).unwrap();
    b.insert_block(now, bid(3), block_bytes(3, 64)).unwrap();
    sync(now, &mut a, &mut b);
    assert!(a.held_bytes() <= 300 && b.held_bytes() <= 300);
    assert_eq!(
        b.block_ids().collect::<Vec<_>>(),
        vec![bid(3)],
        "block 2 lost on a, dropped on b; block 1 dropped by both owners"
    );
    assert_eq!(a.block_ids().collect::<Vec<_>>(), vec![bid(3)]);
}

#[test]
fn reservations_commit_release_and_expire() {
    let now = Instant::now();
    let ttl = Duration::from_secs(1);
    let (mut a, mut b) = pair(|r| config(r).with_reservation_ttl(ttl));
    insert_both(now, &mut a, &mut b, 1, 512);
    sync(now, &mut a, &mut b);
    let r1 = a.reserve(now, 2, 256, &binding()).unwrap();
    let r2 = a.reserve(now, 1, 256, &binding()).unwrap();
    let r3 = a.reserve(now, 1, 256, &binding()).unwrap();
    assert_eq!(a.stats().reserved_keys, 4);
    assert!(!a.has_notices(), "the peer learns nothing before commit");
    let keys = a.commit(r1).unwrap();
    assert_eq!(a.commit(r1), Err(TakeError::UnknownReservation));
    a.release(r2).unwrap();
    a.expire(now + ttl);
    assert_eq!(a.commit(r3), Err(TakeError::UnknownReservation));
    sync(now, &mut a, &mut b);
    for (id, key) in &keys {
        assert_eq!(b.lookup(id, "slave").unwrap().as_ref(), Some(key));
    }
    assert_eq!(
        b.stats().bytes_dropped,
        64,
        "released and expired keys dropped on the peer"
    );
}

#[test]
fn borrowing_moves_ownership_once() {
    let now = Instant::now();
    let (mut a, mut b) = pair(|r| config(r).with_borrow_low_water(64));
    for blk in 1..=4 {
        insert_both(now, &mut a, &mut b, blk, 256);
    }
    sync(now, &mut a, &mut b);
    let fresh_b = b.stats().fresh_bytes;
    // a uses everything it owns, then borrows from b.
    let n = a.fresh_keys(256);
    let mut ids: Vec<KeyId> = a
        .take(n, 256, &binding())
        .unwrap()
        .into_iter()
        .map(|k| k.0)
        .collect();
    sync(now, &mut a, &mut b);
    assert!(a.stats().chunks_borrowed > 0);
    assert_eq!(a.stats().chunks_borrowed, b.stats().chunks_lent);
    assert!(b.stats().fresh_bytes < fresh_b);
    assert!(
        b.stats().fresh_bytes >= a.stats().fresh_bytes,
        "the lender keeps at least what the borrower has"
    );
    let more = a.fresh_keys(256);
    assert!(more > 0);
    ids.extend(
        a.take(more, 256, &binding())
            .unwrap()
            .into_iter()
            .map(|k| k.0),
    );
    let rest = b.fresh_keys(256);
    ids.extend(
        b.take(rest, 256, &binding())
            .unwrap()
            .into_iter()
            .map(|k| k.0),
    );
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());
}

#[test]
fn lookup_respects_the_binding() {
    let now = Instant::now();
    let (mut a, mut b) = pair(config);
    insert_both(now, &mut a, &mut b, 1, 128);
    sync(now, &mut a, &mut b);
    let multi = Arc::new(Binding::new("m", ["s1", "s2"]).unwrap());
    let k = a.take(1, 128, &multi).unwrap();
    sync(now, &mut a, &mut b);
    let id = k[0].0;
    assert_eq!(b.lookup(&id, "intruder"), Err(LookupError::NotAuthorized));
    assert_eq!(b.lookup(&id, "s1").unwrap().as_ref(), Some(&k[0].1));
    assert_eq!(b.lookup(&id, "s1"), Err(LookupError::NotAuthorized));
    assert_eq!(b.pairing("m", "s2").waiting, 1);
    assert_eq!(b.lookup(&id, "s2").unwrap().as_ref(), Some(&k[0].1));
    assert!(!b.is_delivered(&id));
    assert!(Binding::new("m", Vec::<String>::new()).is_err());
    assert!(Binding::new("m", ["x", "x"]).is_err());
    assert!(Binding::pair("", "x").is_err());
}

#[test]
fn wipe_forgets_everything() {
    let now = Instant::now();
    let (mut a, mut b) = pair(config);
    insert_both(now, &mut a, &mut b, 1, 256);
    sync(now, &mut a, &mut b);
    a.take(1, 64, &binding()).unwrap();
    a.wipe();
    assert_eq!(a.held_bytes(), 0);
    assert_eq!(a.stats().blocks, 0);
    assert_eq!(a.stats().wipes, 1);
    assert!(!a.has_notices());
    a.insert_block(now, bid(1), block_bytes(1, 64)).unwrap();
}

#[test]
fn debug_shows_no_key_material() {
    let now = Instant::now();
    let (mut a, _) = pair(config);
    a.insert_block(now, bid(1), SecretKey::from_slice(&[0xab; 64]))
        .unwrap();
    let shown = format!("{a:?}");
    assert!(
        !shown.contains("171") && !shown.to_lowercase().contains("ab, "),
        "{shown}"
    );
}

#[derive(Clone, Debug)]
enum Op {
    Insert { len: usize, skip_on: Option<bool> },
    TakeA { count: usize, bytes: usize },
    TakeB { count: usize, bytes: usize },
    SyncAB,
    SyncBA,
    Expire(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1usize..400, prop::option::weighted(0.1, any::<bool>()))
            .prop_map(|(len, skip_on)| Op::Insert { len, skip_on }),
        (1usize..4, 1usize..160).prop_map(|(count, bytes)| Op::TakeA { count, bytes }),
        (1usize..4, 1usize..160).prop_map(|(count, bytes)| Op::TakeB { count, bytes }),
        Just(Op::SyncAB),
        Just(Op::SyncBA),
        (0u64..30).prop_map(Op::Expire),
    ]
}

proptest! {
    /// With notices carried in order (at any pace), fresh ranges never
    /// overlap across or within nodes, and every delivered key matches;
    /// keys up to 2.5 chunks, so some are made of pieces (checked when
    /// their notice passes, which names the pieces).
    #[test]
    fn fresh_material_is_never_handed_out_twice(ops in prop::collection::vec(op(), 1..60)) {
        let start = Instant::now();
        let cfg = |r| config(r)
            .with_borrow_low_water(96)
            .with_key_ttl(Duration::from_secs(20))
            .with_capacity_bytes(1200);
        let (mut a, mut b) = pair(cfg);
        let mut next_block = 1u64;
        let mut now = start;
        let mut handed: Vec<(u64, u32, u32)> = Vec::new();
        let mut keys_a = Vec::new();
        let mut arrived = Vec::new();
        let mut names = std::collections::HashMap::new();
        let mut large = std::collections::HashMap::new();
        for op in ops {
            match op {
                Op::Insert { len, skip_on } => {
                    let blk = next_block;
                    next_block += 1;
                    for off in 0..len as u32 {
                        names.insert(KeyId::for_block(b"link-t", blk, u64::from(off)), (blk, off));
                    }
                    match skip_on {
                        Some(true) => { a.discard_block(bid(blk)).unwrap(); b.insert_block(now, bid(blk), block_bytes(blk, len)).unwrap(); }
                        Some(false) => { b.discard_block(bid(blk)).unwrap(); a.insert_block(now, bid(blk), block_bytes(blk, len)).unwrap(); }
                        None => insert_both(now, &mut a, &mut b, blk, len),
                    }
                }
                Op::TakeA { count, bytes } | Op::TakeB { count, bytes } => {
                    let on_a = matches!(op, Op::TakeA { .. });
                    let store = if on_a { &mut a } else { &mut b };
                    if let Ok(keys) = store.take(count, bytes * 8, &binding()) {
                        for (id, key) in keys {
                            if bytes > 64 {
                                large.insert(id, key.clone());
                                if on_a { keys_a.push((id, key)); }
                                continue;
                            }
                            // Recover the range from the ID by search over held blocks.
                            let (blk, off) = *names.get(&id).expect("ID of a known block");
                            let whole = block_bytes(blk, 400);
                            prop_assert_eq!(key.expose_secret(), &whole.expose_secret()[off as usize..off as usize + bytes]);
                            for &(hb, ho, hl) in &handed {
                                prop_assert!(hb != blk || ho + hl <= off || off + bytes as u32 <= ho, "overlap");
                            }
                            handed.push((blk, off, bytes as u32));
                            if on_a { keys_a.push((id, key)); }
                        }
                    }
                }
                Op::SyncAB => while let Some(n) = a.poll_notice() {
                    check_pieces(&n, &mut large, &mut handed)?;
                    prop_assert!(b.apply(now, n, &mut arrived).is_ok());
                },
                Op::SyncBA => while let Some(n) = b.poll_notice() {
                    check_pieces(&n, &mut large, &mut handed)?;
                    prop_assert!(a.apply(now, n, &mut arrived).is_ok());
                },
                Op::Expire(s) => { now += Duration::from_secs(s); a.expire(now); b.expire(now); }
            }
            prop_assert!(a.held_bytes() <= 1200 + 64 * 4 && b.held_bytes() <= 1200 + 64 * 4);
            // The running counters agree with the structures they summarise.
            for s in [&a, &b] {
                let st = s.stats();
                prop_assert_eq!(s.held_bytes(), st.chunk_bytes + st.reserved_bytes + st.delivered_bytes);
                prop_assert_eq!(s.fresh_keys(8) as u64, st.fresh_bytes);
            }
        }
        for n in sync(now, &mut a, &mut b) {
            check_pieces(&n, &mut large, &mut handed)?;
        }
        prop_assert!(large.is_empty(), "every key of pieces was announced");
        for (id, key) in keys_a {
            if let Some(copy) = b.lookup(&id, "slave").unwrap() {
                prop_assert_eq!(copy, key);
            }
        }
    }
}

/// For each key of several pieces in a Delivered notice: its bytes (taken
/// earlier, in `large`) are the pieces' bytes in order, and no piece
/// overlaps anything handed out before (recorded in `handed`).
fn check_pieces(
    n: &Notice,
    large: &mut std::collections::HashMap<KeyId, SecretKey>,
    handed: &mut Vec<(u64, u32, u32)>,
) -> Result<(), TestCaseError> {
    let Notice::Delivered { keys, .. } = n else {
        return Ok(());
    };
    for k in keys.iter().filter(|k| k.piece_count() > 1) {
        let first = k.first();
        let id = KeyId::for_block(b"link-t", first.block, u64::from(first.offset));
        let key = large.remove(&id).expect("a key of pieces taken here");
        let mut want = Vec::new();
        for r in k.pieces() {
            let (blk, off, len) = (r.block.get(), r.offset, r.len);
            prop_assert!(
                len <= 64 && off / 64 == (off + len - 1) / 64,
                "a piece in one chunk"
            );
            let whole = block_bytes(blk, 400);
            want.extend_from_slice(&whole.expose_secret()[off as usize..(off + len) as usize]);
            for &(hb, ho, hl) in handed.iter() {
                prop_assert!(hb != blk || ho + hl <= off || off + len <= ho, "overlap");
            }
            handed.push((blk, off, len));
        }
        prop_assert_eq!(key.expose_secret(), want.as_slice());
    }
    Ok(())
}

/// Notices a broken or hostile peer could send about the blocks a store
/// holds (blocks 1 to 3 of 256 bytes, chunks of 64).
fn hostile_notice() -> impl Strategy<Value = Notice> {
    let range = (1u64..=3, 0u32..256, 1u32..80).prop_map(|(block, offset, len)| KeyRange {
        block: bid(block),
        offset,
        len,
    });
    prop_oneof![
        range.clone().prop_map(|range| Notice::Drop { range }),
        prop::collection::vec(prop::collection::vec(range, 1..4), 1..4).prop_map(|keys| {
            Notice::Delivered {
                binding: binding(),
                keys: keys.into_iter().filter_map(KeyPieces::new).collect(),
            }
        }),
        (0u64..512, 0u64..512).prop_map(|(bytes, fresh)| Notice::Borrow { bytes, fresh }),
        (1u64..=3, 0u32..4, 0u32..256).prop_map(|(block, chunk, from)| Notice::Grant {
            chunks: vec![GrantedChunk {
                block: bid(block),
                chunk,
                from
            }]
        }),
        (1u64..=3).prop_map(|block| Notice::Lost { block: bid(block) }),
    ]
}

proptest! {
    /// Whatever a peer sends about held blocks, the store does not panic,
    /// its fresh count stays consistent, and every key it still hands out or
    /// serves is the block's bytes (never a zeroized range), each once.
    #[test]
    fn hostile_notices_never_panic_or_hand_out_zeroed_keys(
        notices in prop::collection::vec(hostile_notice(), 1..12)
    ) {
        let now = Instant::now();
        let cfg = |r| config(r).with_borrow_low_water(64);
        let (mut a, mut b) = pair(cfg);
        for blk in 1..=3 {
            insert_both(now, &mut a, &mut b, blk, 256);
        }
        sync(now, &mut a, &mut b);
        let mut arrived = Vec::new();
        // What each delivered key would be if it was accepted, by ID.
        let mut candidates: std::collections::HashMap<KeyId, Vec<Vec<u8>>> = Default::default();
        for n in notices {
            if let Notice::Delivered { keys, .. } = &n {
                for k in keys {
                    let first = k.first();
                    let mut bytes = Vec::new();
                    for r in k.pieces() {
                        let block = block_bytes(r.block.get(), 256);
                        let end = (r.end() as usize).min(256);
                        bytes.extend_from_slice(&block.expose_secret()[(r.offset as usize).min(end)..end]);
                    }
                    let id = KeyId::for_block(b"link-t", first.block, u64::from(first.offset));
                    candidates.entry(id).or_default().push(bytes);
                }
            }
            let _ = a.apply(now, n, &mut arrived);
            prop_assert_eq!(a.fresh_keys(8) as u64, a.stats().fresh_bytes);
        }
        let mut seen = HashSet::new();
        let mut check = |id: KeyId, key: &SecretKey| -> Result<(), TestCaseError> {
            let (blk, off) = (1..=3u64)
                .flat_map(|blk| (0..256u64).map(move |off| (blk, off)))
                .find(|&(blk, off)| KeyId::for_block(b"link-t", blk, off) == id)
                .expect("ID of a held block");
            let bytes = block_bytes(blk, 256);
            let off = off as usize;
            prop_assert_eq!(key.expose_secret(), &bytes.expose_secret()[off..off + key.len()]);
            prop_assert!(seen.insert(id), "key handed out twice");
            Ok(())
        };
        while let Ok(keys) = a.take(1, 64, &binding()) {
            for (id, key) in &keys {
                check(*id, key)?;
            }
        }
        for id in arrived {
            if let Ok(Some(key)) = a.lookup(&id, "slave") {
                let known = candidates.get(&id).expect("a delivered ID");
                prop_assert!(known.iter().any(|c| c.as_slice() == key.expose_secret()), "not the pieces' bytes");
                prop_assert!(seen.insert(id), "key handed out twice");
            }
        }
    }
}

/// Issue 10: with the default configuration (1 KiB chunks, 64 KiB low-water
/// mark) and final key blocks of 200 bytes, both nodes take keys: one-chunk
/// blocks go to the two nodes in turn.
#[test]
fn default_config_lets_both_nodes_take_keys_from_small_blocks() {
    let now = Instant::now();
    let (mut a, mut b) = pair(|r| StoreConfig::new("link-t", r));
    for blk in 1..=20u64 {
        insert_both(now, &mut a, &mut b, blk, 200);
        sync(now, &mut a, &mut b);
    }
    let (ka, kb) = (a.fresh_keys(256), b.fresh_keys(256));
    assert!(ka >= 50 && kb >= 50, "a: {ka} keys, b: {kb} keys");
    let taken_a = a.take(ka, 256, &binding()).unwrap();
    let taken_b = b.take(kb, 256, &binding()).unwrap();
    sync(now, &mut a, &mut b);
    for (id, key) in &taken_a {
        assert_eq!(b.lookup(id, "slave").unwrap().as_ref(), Some(key));
    }
    for (id, key) in &taken_b {
        assert_eq!(a.lookup(id, "slave").unwrap().as_ref(), Some(key));
    }
}

// ---- Issue 11, finding 5: a peer can make a node keep state forever ----
// Each test below fails on 40aba07 (checked against an equivalent test
// written for that commit's API: `Role::First/Second`, `u64` blocks).

fn ready_pair() -> (KeyStore, KeyStore) {
    let now = Instant::now();
    let (mut a, mut b) = pair(config);
    insert_both(now, &mut a, &mut b, 1, 256);
    sync(now, &mut a, &mut b);
    (a, b)
}

#[test]
fn finding_5_consumed_for_a_pairing_never_taken_is_refused_and_not_recorded() {
    let now = Instant::now();
    let (mut a, _) = ready_pair();
    let mut arrived = Vec::new();
    for i in 0..100 {
        let n = Notice::Consumed {
            master: format!("m{i}"),
            slave: "s".into(),
            count: 0,
        };
        assert_eq!(
            a.apply(now, n, &mut arrived),
            Err(NoticeError::UnknownPairing)
        );
    }
    assert_eq!(
        a.pairings_counted(),
        0,
        "no entry for names the peer made up"
    );
    assert_eq!(a.stats().peer_violations, 100);
}

#[test]
fn finding_5_consumed_counts_no_more_fetches_than_keys_taken_here() {
    let now = Instant::now();
    let (mut a, mut b) = ready_pair();
    let keys = a.take(2, 256, &binding()).unwrap();
    sync(now, &mut a, &mut b);
    let mut arrived = Vec::new();
    let consumed = |count| Notice::Consumed {
        master: "master".into(),
        slave: "slave".into(),
        count,
    };
    assert!(matches!(
        a.apply(now, consumed(0), &mut arrived),
        Err(NoticeError::ConsumedTooMany { .. })
    ));
    assert!(matches!(
        a.apply(now, consumed(3), &mut arrived),
        Err(NoticeError::ConsumedTooMany { .. })
    ));
    assert_eq!(a.pairing("master", "slave").fetched_by_peer, 0);
    // The honest report of the two fetches is accepted.
    for (id, _) in &keys {
        b.lookup(id, "slave").unwrap().unwrap();
    }
    sync(now, &mut a, &mut b);
    assert_eq!(a.pairing("master", "slave").fetched_by_peer, 2);
    assert_eq!(a.stats().keys_fetched_by_peer, 2);
}

#[test]
fn finding_5_pairings_from_delivered_notices_are_bounded() {
    let now = Instant::now();
    let cfg = |r| StoreConfig {
        max_pairings: 4,
        ..config(r)
    };
    let (mut a, mut b) = pair(cfg);
    insert_both(now, &mut a, &mut b, 1, 1024);
    sync(now, &mut a, &mut b);
    // b owns chunks 0, 2, ... of block 1: it hands out one key per master.
    let mut refused = 0;
    for i in 0..8 {
        let binding = Arc::new(Binding::pair(format!("m{i}"), "s").unwrap());
        let keys = b.take(1, 64, &binding).unwrap();
        let mut arrived = Vec::new();
        while let Some(n) = b.poll_notice() {
            if let Err(e) = a.apply(now, n, &mut arrived) {
                assert_eq!(e, NoticeError::TooManyPairings { max: 4 });
                refused += 1;
            }
        }
        // The keys are kept all the same.
        assert_eq!(arrived, [keys[0].0]);
    }
    assert_eq!(refused, 4);
    assert_eq!(a.pairings_counted(), 4);
}

#[test]
fn finding_5_a_delivered_notice_without_a_valid_key_creates_no_pairing() {
    let now = Instant::now();
    let (mut a, _) = ready_pair();
    let mut arrived = Vec::new();
    for i in 0..100 {
        let n = Notice::Delivered {
            binding: Arc::new(Binding::pair(format!("m{i}"), "s").unwrap()),
            keys: vec![KeyPieces::single(KeyRange {
                block: bid(99),
                offset: 0,
                len: 8,
            })],
        };
        assert_eq!(
            a.apply(now, n, &mut arrived),
            Err(NoticeError::UnknownBlock { block: bid(99) })
        );
    }
    assert!(arrived.is_empty());
    assert_eq!(a.pairings_counted(), 0);
}

#[test]
fn finding_5_announcements_far_ahead_are_refused_and_bounded() {
    let now = Instant::now();
    let (mut a, _) = ready_pair();
    let mut arrived = Vec::new();
    let max = a.config().max_blocks_ahead as u64;
    let mut refused = 0;
    for blk in 2..2 + 2 * max {
        let n = if blk % 2 == 0 {
            Notice::Have { block: bid(blk) }
        } else {
            Notice::Lost { block: bid(blk) }
        };
        if let Err(e) = a.apply(now, n, &mut arrived) {
            assert_eq!(e, NoticeError::BlockTooFarAhead { block: bid(blk) });
            refused += 1;
        }
    }
    assert_eq!(refused, max);
    assert!(a.peer_blocks_ahead() as u64 <= max);
    // Before this node's first block only the count is bounded.
    let (mut c, _) = pair(config);
    for blk in 1..=2 * max {
        let _ = c.apply(
            now,
            Notice::Have {
                block: bid(blk * 1000),
            },
            &mut arrived,
        );
    }
    assert_eq!(c.peer_blocks_ahead() as u64, max);
}

#[test]
fn finding_5_a_have_for_block_u64_max_does_not_skip_later_blocks() {
    let now = Instant::now();
    let mut arrived = Vec::new();
    // After this node's first block: refused at once.
    let (mut a, mut b) = ready_pair();
    assert_eq!(
        a.apply(
            now,
            Notice::Have {
                block: bid(u64::MAX)
            },
            &mut arrived
        ),
        Err(NoticeError::BlockTooFarAhead {
            block: bid(u64::MAX)
        })
    );
    insert_both(now, &mut a, &mut b, 2, 256);
    assert_eq!(a.stats().blocks_stored, 2);
    // Before it: forgotten at the first insert, and reported then.
    let (mut c, mut d) = pair(config);
    c.apply(
        now,
        Notice::Have {
            block: bid(u64::MAX),
        },
        &mut arrived,
    )
    .unwrap();
    for blk in 1..=3 {
        assert_eq!(
            c.insert_block(now, bid(blk), block_bytes(blk, 64)).unwrap(),
            InsertOutcome::Stored
        );
        d.insert_block(now, bid(blk), block_bytes(blk, 64)).unwrap();
    }
    assert_eq!(
        c.poll_peer_violation(),
        Some(NoticeError::BlockTooFarAhead {
            block: bid(u64::MAX)
        })
    );
    sync(now, &mut c, &mut d);
    assert!(c.fresh_keys(8) > 0 && d.fresh_keys(8) > 0);
}

#[test]
fn finding_5_wipe_clears_every_per_peer_structure() {
    let now = Instant::now();
    let (mut a, mut b) = ready_pair();
    let keys = a.take(1, 256, &binding()).unwrap();
    let mut arrived = Vec::new();
    a.apply(now, Notice::Have { block: bid(5) }, &mut arrived)
        .unwrap();
    sync(now, &mut a, &mut b);
    b.lookup(&keys[0].0, "slave").unwrap().unwrap();
    sync(now, &mut a, &mut b);
    assert!(a.pairings_counted() > 0 && b.pairings_counted() > 0);
    assert_eq!(a.peer_blocks_ahead(), 1);
    for s in [&mut a, &mut b] {
        s.wipe();
        assert_eq!(s.pairings_counted(), 0);
        assert_eq!(s.peer_blocks_ahead(), 0);
        assert_eq!(s.pairing("master", "slave"), Default::default());
        assert_eq!(s.held_bytes(), 0);
        assert!(!s.has_notices());
    }
}

#[test]
fn finding_5_delivered_keys_are_bounded() {
    let now = Instant::now();
    let cfg = |r| StoreConfig {
        max_delivered_keys: 10,
        ..config(r)
    };
    let (mut a, mut b) = pair(cfg);
    insert_both(now, &mut a, &mut b, 1, 1024);
    sync(now, &mut a, &mut b);
    // a hands out 1-byte keys: at most 10 wait on b, the oldest expire.
    let keys = a.take(64, 8, &binding()).unwrap();
    sync(now, &mut a, &mut b);
    assert_eq!(b.stats().delivered_keys, 10);
    assert_eq!(b.stats().keys_expired, 54);
    assert_eq!(b.pairing("master", "slave").waiting, 10);
    assert_eq!(b.lookup(&keys[0].0, "slave").unwrap(), None);
    assert!(b.lookup(&keys[63].0, "slave").unwrap().is_some());
}

// ---- Issue 11, finding 7: no Cargo feature weakens the store ----

/// On 40aba07 the `model` feature (enabled by `cargo test --all-features`)
/// compiled in a plain view of key bytes and a switch that disabled the
/// ownership rule. The crate must declare no feature at all; the model
/// check's hooks are `#[doc(hidden)]` read-only audits of key ranges.
#[test]
fn finding_7_the_store_has_no_cargo_feature() {
    let manifest = include_str!("../Cargo.toml");
    let mut in_features = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_features = line == "[features]";
            continue;
        }
        assert!(
            !in_features || line.is_empty() || line.starts_with('#') || line == "default = []",
            "qkd-keystore declares a feature: {line}"
        );
    }
}

/// Keys larger than one chunk (issue 16): chunks of 64 bytes, so a key of
/// 100 bytes is at least two pieces.
mod large_keys {
    use super::*;

    fn r(block: u64, offset: u32, len: u32) -> KeyRange {
        KeyRange {
            block: bid(block),
            offset,
            len,
        }
    }

    /// The bytes of `pieces` of blocks of `len` bytes made by `block_bytes`.
    fn bytes_of(pieces: &[KeyRange], len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            let b = block_bytes(p.block.get(), len);
            out.extend_from_slice(&b.expose_secret()[p.offset as usize..p.end() as usize]);
        }
        out
    }

    fn delivered(seen: &[Notice]) -> Vec<KeyPieces> {
        seen.iter()
            .filter_map(|n| match n {
                Notice::Delivered { keys, .. } => Some(keys.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn a_key_across_two_chunks_of_one_block() {
        let now = Instant::now();
        let (mut a, mut b) = pair(config);
        // Block 1, 256 bytes: the even-chunks node owns chunks 1 and 3.
        insert_both(now, &mut a, &mut b, 1, 256);
        sync(now, &mut a, &mut b);
        assert_eq!(a.fresh_keys(8 * 100), 1);
        let keys = a.take(1, 8 * 100, &binding()).unwrap();
        let (id, key) = &keys[0];
        assert_eq!(
            *id,
            KeyId::for_block(b"link-t", 1, 64),
            "named by its first piece"
        );
        let pieces = [r(1, 64, 64), r(1, 192, 36)];
        assert_eq!(key.expose_secret(), bytes_of(&pieces, 256).as_slice());
        let seen = sync(now, &mut a, &mut b);
        let got = delivered(&seen);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].pieces().copied().collect::<Vec<_>>(), pieces);
        assert_eq!(b.lookup(id, "slave").unwrap().as_ref(), Some(key));
        assert_eq!(b.stats().keys_fetched, 1);
        assert_eq!(a.stats().fresh_bytes, 28);
        assert_eq!(a.stats().peer_violations + b.stats().peer_violations, 0);
    }

    #[test]
    fn a_key_across_two_blocks() {
        let now = Instant::now();
        let (mut a, mut b) = pair(config);
        // Blocks 2 and 3 of 96 bytes: the even-chunks node owns chunk 0 of
        // block 2 (64 bytes) and chunk 1 of block 3 (32 bytes).
        insert_both(now, &mut a, &mut b, 2, 96);
        insert_both(now, &mut a, &mut b, 3, 96);
        sync(now, &mut a, &mut b);
        let keys = a.take(1, 8 * 96, &binding()).unwrap();
        let pieces = [r(2, 0, 64), r(3, 64, 32)];
        assert_eq!(keys[0].1.expose_secret(), bytes_of(&pieces, 96).as_slice());
        assert_eq!(keys[0].0, KeyId::for_block(b"link-t", 2, 0));
        sync(now, &mut a, &mut b);
        assert_eq!(
            b.lookup(&keys[0].0, "slave").unwrap(),
            Some(keys[0].1.clone())
        );
        // Both blocks are spent on a; on b only its own chunks are left.
        assert_eq!(a.stats().fresh_bytes, 0);
        assert_eq!(b.stats().fresh_bytes, 32 + 64);
    }

    #[test]
    fn exactly_the_maximum_and_one_byte_over() {
        let now = Instant::now();
        let cfg = |r| config(r).with_max_key_bytes(256);
        let (mut a, mut b) = pair(cfg);
        for blk in 1..=4 {
            insert_both(now, &mut a, &mut b, blk, 256);
        }
        sync(now, &mut a, &mut b);
        assert_eq!(a.max_key_bits(), 2048);
        assert_eq!(
            a.take(1, 2048 + 8, &binding()),
            Err(TakeError::InvalidSize {
                bits: 2056,
                max_bits: 2048
            })
        );
        assert_eq!(a.fresh_keys(2048 + 8), 0);
        assert_eq!(a.fresh_keys(2048), 2);
        let keys = a.take(2, 2048, &binding()).unwrap();
        assert!(keys.iter().all(|(_, k)| k.len() == 256));
        let seen = sync(now, &mut a, &mut b);
        for k in delivered(&seen) {
            assert_eq!(k.len(), 256);
            assert_eq!(k.piece_count(), 4, "four whole chunks");
        }
        for (id, key) in &keys {
            assert_eq!(b.lookup(id, "slave").unwrap().as_ref(), Some(key));
        }
        // The configured maximum is validated.
        assert_eq!(
            KeyStore::new(config(StoreRole::OddChunks).with_max_key_bytes(0))
                .unwrap_err()
                .field(),
            "max_key_bytes"
        );
    }

    #[test]
    fn a_take_that_runs_short_changes_nothing() {
        let now = Instant::now();
        let (mut a, mut b) = pair(config);
        insert_both(now, &mut a, &mut b, 1, 256);
        insert_both(now, &mut a, &mut b, 2, 256);
        sync(now, &mut a, &mut b);
        // 256 bytes owned: two keys of 100 bytes fit, three do not.
        let before = a.stats();
        assert_eq!(
            a.take(3, 800, &binding()),
            Err(TakeError::Insufficient {
                requested: 3,
                available: 2
            })
        );
        assert_eq!(a.stats(), before);
        assert!(!a.has_notices());
        // Reservations are all or nothing too, and a released key of
        // pieces is dropped on both nodes.
        let id = a.reserve(now, 2, 800, &binding()).unwrap();
        assert_eq!(a.stats().reserved_bytes, 200);
        a.release(id).unwrap();
        sync(now, &mut a, &mut b);
        assert_eq!(b.stats().bytes_dropped, 200);
        assert_eq!(
            a.take(1, 800, &binding()).unwrap_err(),
            TakeError::Insufficient {
                requested: 1,
                available: 0
            }
        );
    }

    /// b holds blocks 1 and 2 of 256 bytes; a (the even-chunks node) owns
    /// chunks 1 and 3 of block 1 and chunks 0 and 2 of block 2.
    fn held() -> (KeyStore, KeyStore) {
        let now = Instant::now();
        let (mut a, mut b) = pair(config);
        insert_both(now, &mut a, &mut b, 1, 256);
        insert_both(now, &mut a, &mut b, 2, 256);
        sync(now, &mut a, &mut b);
        (a, b)
    }

    fn forged(pieces: Vec<KeyRange>) -> Notice {
        Notice::Delivered {
            binding: binding(),
            keys: vec![KeyPieces::new(pieces).unwrap()],
        }
    }

    #[test]
    fn the_peer_refuses_forged_pieces_and_changes_nothing() {
        let now = Instant::now();
        let (_, mut b) = held();
        let mut arrived = Vec::new();
        let cases = [
            // A piece of a block b does not hold.
            (
                vec![r(1, 64, 64), r(9, 0, 8)],
                NoticeError::UnknownBlock { block: bid(9) },
            ),
            // A piece of a chunk the sender does not own (b owns chunk 0 of block 1).
            (
                vec![r(1, 64, 64), r(1, 0, 8)],
                NoticeError::NotPeerOwned {
                    block: bid(1),
                    chunk: 0,
                },
            ),
            // The same bytes twice in one key.
            (
                vec![r(1, 64, 64), r(1, 100, 8)],
                NoticeError::BadRange { block: bid(1) },
            ),
            // A piece across a chunk boundary.
            (
                vec![r(1, 64, 64), r(2, 60, 8)],
                NoticeError::BadRange { block: bid(2) },
            ),
        ];
        for (pieces, err) in cases {
            let before = b.stats();
            assert_eq!(b.apply(now, forged(pieces), &mut arrived), Err(err));
            assert!(arrived.is_empty());
            let after = b.stats();
            assert_eq!(after.peer_violations, before.peer_violations + 1);
            assert_eq!(
                (after.chunk_bytes, after.delivered_keys),
                (before.chunk_bytes, before.delivered_keys),
                "no byte left"
            );
        }
        // Too many pieces.
        let many: Vec<KeyRange> = (0..256).map(|i| r(1, 64 + (i % 64), 1)).collect();
        assert!(matches!(
            b.apply(now, forged(many), &mut arrived),
            Err(NoticeError::OversizedKey { pieces: 256, .. })
        ));
        // The good pieces were left whole: a correct notice still applies.
        b.apply(now, forged(vec![r(1, 64, 64), r(2, 0, 36)]), &mut arrived)
            .unwrap();
        assert_eq!(arrived.len(), 1);
        let key = b.lookup(&arrived[0], "slave").unwrap().unwrap();
        let mut want = bytes_of(&[r(1, 64, 64)], 256);
        want.extend_from_slice(&bytes_of(&[r(2, 0, 36)], 256));
        assert_eq!(key.expose_secret(), want.as_slice());
        // A byte that left already (in an earlier key) is refused, whole.
        let before = b.stats().chunk_bytes;
        assert_eq!(
            b.apply(now, forged(vec![r(1, 192, 64), r(2, 30, 10)]), &mut arrived),
            Err(NoticeError::BadRange { block: bid(2) })
        );
        assert_eq!(b.stats().chunk_bytes, before);
        assert_eq!(arrived.len(), 1);
    }

    #[test]
    fn keys_of_pieces_and_of_one_chunk_mix_in_a_session() {
        let now = Instant::now();
        let (mut a, mut b) = pair(config);
        let mut taken = Vec::new();
        for round in 0..20usize {
            let blk = round as u64 + 1;
            insert_both(now, &mut a, &mut b, blk, 40 + (round * 37) % 200);
            sync(now, &mut a, &mut b);
            let bytes = [8usize, 64, 65, 130, 200][round % 5];
            for s in [&mut a, &mut b] {
                if let Ok(keys) = s.take(1, bytes * 8, &binding()) {
                    taken.push((s.config().role, keys));
                }
            }
        }
        sync(now, &mut a, &mut b);
        assert!(taken.len() > 10, "{}", taken.len());
        let mut ids = HashSet::new();
        for (role, keys) in taken {
            let peer = if role == StoreRole::EvenChunks {
                &mut b
            } else {
                &mut a
            };
            for (id, key) in keys {
                assert!(ids.insert(id), "IDs are unique");
                assert_eq!(peer.lookup(&id, "slave").unwrap(), Some(key));
            }
        }
        assert_eq!(a.stats().peer_violations + b.stats().peer_violations, 0);
    }
}
