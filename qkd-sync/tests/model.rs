//! Model check of the sync protocol: two nodes on a simulated link that
//! loses, duplicates, delays and reorders messages, random interleavings of
//! pipeline blocks, application requests, wipes and reboots, and after
//! every step:
//!
//! 1. no key material (hence no key ID) is ever handed out fresh twice, on
//!    the same node or on both, and every key has its block's bytes;
//! 2. no key is served (fresh or by lookup) on one node after the other node
//!    dropped it explicitly; a lookup only ever serves a key the peer handed
//!    out, with the same bytes, to a slave of its binding, once per slave;
//! 3. once a node is paired with the peer's current incarnation, its store
//!    holds no block it held when the peer rebooted or wiped, and a
//!    reservation made before a wipe or a re-pairing cannot be committed;
//! 4. a block ID a node was already given is refused, and changes nothing;
//! 5. honest nodes never report each other; notices a hostile peer adds to
//!    the stream are refused (`PeerMisbehaved`) and change nothing, so 1 to
//!    4 still hold; what the peer can make a node remember stays bounded;
//! 6. the store's counters agree with its structures.
//!
//! The schedules generate: blocks each side gets at once, late (the two
//! nodes insert the same block at different times), never, or as failed;
//! the two nodes with different configurations (capacity, TTLs, lending,
//! bounds); takes and reservations (committed or released at once, or held
//! open across deliveries, lending, expiry, wipes and re-pairings); bindings
//! with one, three and 64 slaves (the last so large that every notice of
//! two keys or more is split across messages, which are as small as a
//! node allows); lookups by every slave and by strangers, and lookups of
//! keys the owner dropped, racing the drop notice; reused block IDs;
//! wipes; reboots (old incarnations' messages stay in flight); and a
//! hostile peer whose extra notices ride on its honest data messages. A
//! coverage floor checks that each of these was reached.
//!
//! The default run explores 100 000 random schedules;
//! `cargo test -p qkd-sync --release --test model -- --ignored` runs
//! 1 000 000 longer ones.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qkd_core::machine::Machine;
use qkd_core::sim::{LinkConfig, Network, Side};
use qkd_core::{BlockId, KeyId, SecretKey};
use qkd_keystore::{
    Binding, GrantedChunk, KeyPieces, KeyRange, Notice, ReservationId, StoreConfig, StoreRole,
};
use qkd_sync::message::Message;
use qkd_sync::{Event, Lookup, MIN_MESSAGE_LEN, SyncConfig, SyncError, SyncNode};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

const LINK: &str = "model-link";
const CHUNK: u32 = 32;
/// Longest a side's pipeline runs behind (blocks queued for a late insert).
const MAX_LAG: usize = 6;
/// The bound on the peer's announcements ahead; above the lag, so honest
/// nodes never hit it.
const MAX_AHEAD: u32 = 16;

/// The store settings both nodes must share, and those drawn per node.
fn config(side: Side, rng: &mut ChaCha20Rng, varied: bool) -> SyncConfig {
    let mut store = StoreConfig::new(LINK, role(side))
        .with_chunk_bytes(CHUNK)
        .with_capacity_bytes(1024)
        .with_key_ttl(Duration::from_millis(400))
        .with_delivered_ttl(Duration::from_millis(300))
        .with_reservation_ttl(Duration::from_millis(50))
        .with_borrow_low_water(48);
    store.max_blocks_ahead = MAX_AHEAD;
    if varied {
        let pick =
            |rng: &mut ChaCha20Rng, xs: &[u64]| xs[(rng.next_u64() % xs.len() as u64) as usize];
        store.capacity_bytes = pick(rng, &[600, 1024, 4096]);
        store.key_ttl = Duration::from_millis(pick(rng, &[250, 400, 1000]));
        store.delivered_ttl = Duration::from_millis(pick(rng, &[150, 300]));
        store.reservation_ttl = Duration::from_millis(pick(rng, &[30, 50, 200]));
        store.borrow_low_water = pick(rng, &[0, 48, 96]);
        store.max_delivered_keys = pick(rng, &[6, 1 << 20]) as u32;
    }
    let mut c = SyncConfig::new(store);
    c.max_message_len = MIN_MESSAGE_LEN;
    c.retransmit_after = Duration::from_millis(15);
    c.hello_interval = Duration::from_millis(40);
    c.window = 8;
    c.lookup_wait = Duration::from_millis(100);
    c
}

fn role(side: Side) -> StoreRole {
    match side {
        Side::A => StoreRole::EvenChunks,
        Side::B => StoreRole::OddChunks,
    }
}

fn idx(s: Side) -> usize {
    match s {
        Side::A => 0,
        Side::B => 1,
    }
}

fn block_material(block: u64, len: usize) -> Vec<u8> {
    let mut x = block.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The bindings applications use: one slave, three slaves, and the largest
/// binding there is (64 slaves, names of 255 bytes), whose delivered notice
/// leaves room for one key in a message of `MIN_MESSAGE_LEN`.
struct Bindings([Arc<Binding>; 3]);

impl Bindings {
    fn new() -> Self {
        let big_slaves: Vec<String> = (0..64).map(|i| format!("{i:0>255}")).collect();
        Bindings([
            Arc::new(Binding::pair("m", "s").unwrap()),
            Arc::new(Binding::new("m3", ["s0", "s1", "s2"]).unwrap()),
            Arc::new(Binding::new("M".repeat(255), big_slaves).unwrap()),
        ])
    }
}

/// A broken invariant, with enough context to replay the schedule.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug when a test fails
struct Violation {
    seed: u64,
    step: usize,
    what: String,
}

#[derive(Clone, Copy)]
struct Params {
    actions: usize,
    /// The control: the peer appends grants of chunks it keeps using.
    liar: bool,
}

/// What a hostile peer adds to its next data message (per sending side).
#[derive(Default)]
struct Hostile {
    pending: [Vec<Notice>; 2],
    /// Grants of chunks the sender keeps (the control run).
    lies: [Vec<GrantedChunk>; 2],
    /// Datagrams longer than the nodes' `max_message_len` (must stay 0).
    oversized: usize,
}

/// Appends the pending notices to the next data message of each side.
fn interceptor(hostile: Rc<RefCell<Hostile>>) -> qkd_core::sim::Interceptor {
    Box::new(move |from, bytes| {
        let mut h = hostile.borrow_mut();
        h.oversized += usize::from(bytes.len() > MIN_MESSAGE_LEN);
        let i = idx(from);
        if h.pending[i].is_empty() && h.lies[i].is_empty() {
            return true;
        }
        if let Ok(Message::Data(mut d)) = Message::decode(bytes) {
            let extra: Vec<Notice> = std::mem::take(&mut h.pending[i]);
            d.notices.extend(extra);
            let lies = std::mem::take(&mut h.lies[i]);
            if !lies.is_empty() {
                d.notices.push(Notice::Grant { chunks: lies });
            }
            *bytes = Message::Data(d).encode();
        }
        true
    })
}

/// Notices that a store must refuse whatever its state: block numbers far
/// ahead, blocks nobody holds, pairings nobody took keys for, zero counts.
fn hostile_notices(rng: &mut ChaCha20Rng) -> Vec<Notice> {
    let far = u64::MAX - rng.next_u64() % 1000;
    let nowhere = BlockId::new(u64::MAX / 3 + rng.next_u64() % 1000);
    vec![
        Notice::Have {
            block: BlockId::new(far),
        },
        Notice::Lost {
            block: BlockId::new(far - 1),
        },
        Notice::Consumed {
            master: format!("hostile-{}", rng.next_u64() % 1000),
            slave: "s".into(),
            count: 1 + (rng.next_u64() % 5) as u32,
        },
        Notice::Consumed {
            master: "m".into(),
            slave: "s".into(),
            count: 0,
        },
        Notice::Delivered {
            binding: Arc::new(Binding::pair(format!("h{}", rng.next_u64() % 100), "hs").unwrap()),
            keys: vec![KeyPieces::single(KeyRange {
                block: nowhere,
                offset: 0,
                len: 8,
            })],
        },
        Notice::Grant {
            chunks: vec![GrantedChunk {
                block: nowhere,
                chunk: 0,
                from: 0,
            }],
        },
        // An absurd claim that moves nothing: the lender keeps at least
        // what the borrower claims to have.
        Notice::Borrow {
            bytes: u64::MAX,
            fresh: u64::MAX,
        },
    ]
}

/// A reservation held open by the application.
struct Held {
    id: ReservationId,
    /// Index of its binding in [`Bindings`].
    binding: usize,
    /// Deliveries (takes and commits, on either side) when it was made.
    deliveries: u64,
    /// Chunks lent and borrowed by its node when it was made.
    moved: u64,
    made: Instant,
    ttl: Duration,
    /// A wipe or re-pairing of its node since: it must be gone.
    doomed: bool,
}

/// A block a side's pipeline has not handed to its node yet.
#[derive(Clone, Copy)]
enum Late {
    Insert(u64),
    Discard(u64),
}

/// Ghost state the checker keeps beside the two real nodes.
struct Ghost {
    /// Fresh hand-outs per block: (offset, len, side).
    fresh: HashMap<u64, Vec<(u32, u32, Side)>>,
    /// Every key handed out fresh: its side, range and binding.
    fresh_ids: HashMap<KeyId, (Side, KeyRange, usize)>,
    /// Explicit drops per side per block.
    dropped: [HashMap<u64, Vec<(u32, u32)>>; 2],
    /// IDs of ranges each side dropped (lookups race them).
    dropped_ids: [Vec<KeyId>; 2],
    /// Blocks a side held when its peer rebooted or wiped.
    forget: [HashSet<BlockId>; 2],
    /// Keys handed out, for lookups on the other side.
    taken: [Vec<KeyId>; 2],
    /// (key, slave) pairs served.
    served: HashSet<(KeyId, String)>,
    held: [Vec<Held>; 2],
    late: [VecDeque<Late>; 2],
    /// The last block ID each node was given since its store was last
    /// emptied (a reuse of it must be refused).
    last_fed: [Option<u64>; 2],
    /// Hostile batches aimed at each side.
    hostile_sent: [usize; 2],
    deliveries: u64,
    drops: usize,
}

fn overlaps(list: &[(u32, u32)], off: u32, len: u32) -> bool {
    list.iter().any(|&(o, l)| o < off + len && off < o + l)
}

impl Ghost {
    fn new() -> Self {
        Ghost {
            fresh: HashMap::new(),
            fresh_ids: HashMap::new(),
            dropped: [HashMap::new(), HashMap::new()],
            dropped_ids: [Vec::new(), Vec::new()],
            forget: [HashSet::new(), HashSet::new()],
            taken: [Vec::new(), Vec::new()],
            served: HashSet::new(),
            held: [Vec::new(), Vec::new()],
            late: [VecDeque::new(), VecDeque::new()],
            last_fed: [None, None],
            hostile_sent: [0, 0],
            deliveries: 0,
            drops: 0,
        }
    }

    fn dropped_on(&self, side: Side, r: &KeyRange) -> bool {
        self.dropped[idx(side)]
            .get(&r.block.get())
            .is_some_and(|l| overlaps(l, r.offset, r.len))
    }

    fn record_drops(&mut self, side: Side, drops: Vec<KeyRange>) {
        for r in drops {
            self.drops += 1;
            self.dropped[idx(side)]
                .entry(r.block.get())
                .or_default()
                .push((r.offset, r.len));
            let list = &mut self.dropped_ids[idx(side)];
            if list.len() < 64 {
                list.push(KeyId::for_block(
                    LINK.as_bytes(),
                    r.block,
                    u64::from(r.offset),
                ));
            }
        }
    }

    /// A node's store was emptied (wipe, reboot, re-pairing).
    fn store_emptied(&mut self, side: Side) {
        self.last_fed[idx(side)] = None;
        for h in &mut self.held[idx(side)] {
            h.doomed = true;
        }
    }
}

fn node(net: &mut Network<SyncNode, SyncNode>, side: Side) -> &mut SyncNode {
    match side {
        Side::A => &mut net.a,
        Side::B => &mut net.b,
    }
}

fn fresh_node(side: Side, rng: &mut ChaCha20Rng, varied: bool) -> SyncNode {
    let mut n = SyncNode::new(config(side, rng, varied), rng).unwrap();
    n.enable_drop_audit();
    n
}

/// What the schedules exercised, so that a passing run is not a vacuous one.
#[derive(Default, Debug)]
struct Coverage {
    fresh: usize,
    served: usize,
    pending: usize,
    reboots: usize,
    wipes: usize,
    repairs: usize,
    borrowed: u64,
    dropped: usize,
    varied_configs: usize,
    late_inserts: usize,
    reuse_refused: usize,
    held_committed_after_delivery: usize,
    held_committed_after_lending: usize,
    held_expired: usize,
    held_doomed_refused: usize,
    multi_slave_served: usize,
    split_served: usize,
    stranger_refused: usize,
    dropped_lookups: usize,
    hostile_refused: usize,
}

/// Checks a key handed out fresh by `side` and records it.
fn check_fresh(
    ghost: &mut Ghost,
    names: &HashMap<KeyId, (u64, u32)>,
    block_len: &HashMap<u64, usize>,
    side: Side,
    binding: usize,
    id: KeyId,
    key: &SecretKey,
) -> Result<(), String> {
    let Some(&(block, offset)) = names.get(&id) else {
        return Err(format!("{side:?} handed out unknown {id}"));
    };
    let r = KeyRange {
        block: BlockId::new(block),
        offset,
        len: key.len() as u32,
    };
    if let Some((other, _, _)) = ghost.fresh_ids.get(&id) {
        return Err(format!(
            "key {id} handed out fresh on {other:?} and {side:?}"
        ));
    }
    let list = ghost.fresh.entry(block).or_default();
    if let Some(&(_, _, other)) = list
        .iter()
        .find(|&&(o, l, _)| o < r.offset + r.len && r.offset < o + l)
    {
        return Err(format!(
            "material of {id} handed out fresh on {other:?} and {side:?}"
        ));
    }
    list.push((r.offset, r.len, side));
    if ghost.dropped_on(side.peer(), &r) {
        return Err(format!(
            "{side:?} handed out {id} after {:?} dropped it",
            side.peer()
        ));
    }
    let material = block_material(block, block_len[&block]);
    if key.expose_secret() != &material[offset as usize..offset as usize + key.len()] {
        return Err(format!("{side:?} key {id} has wrong bytes"));
    }
    ghost.fresh_ids.insert(id, (side, r, binding));
    ghost.taken[idx(side)].push(id);
    Ok(())
}

#[allow(clippy::too_many_lines)] // one schedule, read top to bottom
fn run_schedule(
    seed: u64,
    p: Params,
    bindings: &Bindings,
    cov: &mut Coverage,
) -> Result<(), Violation> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let fail = |step: usize, what: String| Violation { seed, step, what };
    let start = Instant::now();
    let link = LinkConfig::perfect(Duration::from_millis(1 + rng.next_u64() % 4))
        .with_jitter(Duration::from_millis(3))
        .with_loss([0.0, 0.1, 0.3][(rng.next_u64() % 3) as usize])
        .with_duplicate(0.1)
        .with_reorder(0.15, Duration::from_millis(12));
    let varied = rng.next_u64() % 2 == 0;
    cov.varied_configs += usize::from(varied);
    let a = fresh_node(Side::A, &mut rng, varied);
    let b = fresh_node(Side::B, &mut rng, varied);
    let mut net = Network::new(a, b, link, seed, start);
    let hostile = Rc::new(RefCell::new(Hostile::default()));
    net.set_interceptor(interceptor(hostile.clone()));
    net.drive_for(Duration::from_millis(rng.next_u64() % 40));
    // The first pairing, with empty stores.
    net.take_events_a();
    net.take_events_b();
    let mut ghost = Ghost::new();
    let mut next_block = 1u64;
    let mut block_len: HashMap<u64, usize> = HashMap::new();
    // Every ID a key may have: keys are 8, 16 or 32 bytes cut from 32-byte
    // chunks, so they start at multiples of 8.
    let mut names: HashMap<KeyId, (u64, u32)> = HashMap::new();

    for step in 0..p.actions {
        let roll = rng.next_u64() % 100;
        let side = if rng.next_u64() % 2 == 0 {
            Side::A
        } else {
            Side::B
        };
        let now = net.now();
        match roll {
            0..=35 => {
                net.step();
            }
            36..=47 => {
                // The pipeline makes a block; each side gets it now, later,
                // never, or as failed.
                let id = next_block;
                next_block += 1;
                let len = 16 + (rng.next_u64() % 120) as usize;
                block_len.insert(id, len);
                for off in (0..len as u32).step_by(8) {
                    names.insert(
                        KeyId::for_block(LINK.as_bytes(), id, u64::from(off)),
                        (id, off),
                    );
                }
                if p.liar {
                    // The control: the sender of the next data message
                    // "grants" its first chunk of the block, and keeps it.
                    for s in [Side::A, Side::B] {
                        let chunk = u32::from(!role(s).owns_initially(BlockId::new(id), 0));
                        if (chunk * CHUNK) < len as u32 {
                            hostile.borrow_mut().lies[idx(s)].push(GrantedChunk {
                                block: BlockId::new(id),
                                chunk,
                                from: chunk * CHUNK,
                            });
                        }
                    }
                }
                for s in [Side::A, Side::B] {
                    let r = rng.next_u64() % 20;
                    let entry = match r {
                        0 => Some(Late::Discard(id)),
                        1 => None,
                        _ => Some(Late::Insert(id)),
                    };
                    let Some(entry) = entry else { continue };
                    let q = &mut ghost.late[idx(s)];
                    if q.len() >= MAX_LAG {
                        let first = q.pop_front().unwrap();
                        feed(&mut net, &mut ghost, &block_len, s, first, now);
                    }
                    let q = &mut ghost.late[idx(s)];
                    if q.is_empty() && rng.next_u64() % 5 != 0 {
                        feed(&mut net, &mut ghost, &block_len, s, entry, now);
                    } else {
                        q.push_back(entry);
                    }
                }
            }
            48..=51 => {
                // A side's pipeline catches up.
                let n = 1 + rng.next_u64() % 3;
                for _ in 0..n {
                    let Some(entry) = ghost.late[idx(side)].pop_front() else {
                        break;
                    };
                    feed(&mut net, &mut ghost, &block_len, side, entry, now);
                    cov.late_inserts += 1;
                }
            }
            52..=67 => {
                // Take or reserve.
                let which = match rng.next_u64() % 10 {
                    0..=6 => 0,
                    7 | 8 => 1,
                    _ => 2,
                };
                let (count, bits) = if which == 2 {
                    (2 + (rng.next_u64() % 2) as usize, 64)
                } else if rng.next_u64() % 8 == 0 {
                    (6 + (rng.next_u64() % 10) as usize, 64)
                } else {
                    (
                        1 + (rng.next_u64() % 3) as usize,
                        [64, 128, 256][(rng.next_u64() % 3) as usize],
                    )
                };
                let binding = &bindings.0[which];
                let n = node(&mut net, side);
                let keys = match rng.next_u64() % 6 {
                    0 => match n.reserve(now, count, bits, binding) {
                        Ok(r) if rng.next_u64() % 3 == 0 => {
                            let _ = n.release(r);
                            Vec::new()
                        }
                        Ok(r) => n.commit(r).unwrap_or_default(),
                        Err(_) => Vec::new(),
                    },
                    1 | 2 => {
                        if let Ok(id) = n.reserve(now, count, bits, binding) {
                            let st = n.store().stats();
                            let ttl = n.store().config().reservation_ttl;
                            ghost.held[idx(side)].push(Held {
                                id,
                                binding: which,
                                deliveries: ghost.deliveries,
                                moved: st.chunks_lent + st.chunks_borrowed,
                                made: now,
                                ttl,
                                doomed: false,
                            });
                        }
                        Vec::new()
                    }
                    _ => n.take(count, bits, binding).unwrap_or_default(),
                };
                if !keys.is_empty() {
                    ghost.deliveries += 1;
                }
                let drops = node(&mut net, side).take_drop_audit();
                ghost.record_drops(side, drops);
                for (id, key) in keys {
                    check_fresh(&mut ghost, &names, &block_len, side, which, id, &key)
                        .map_err(|w| fail(step, w))?;
                }
            }
            68..=71 => {
                // The application finishes a reservation it held open.
                let list = &mut ghost.held[idx(side)];
                if list.is_empty() {
                    continue;
                }
                let h = list.swap_remove((rng.next_u64() % list.len() as u64) as usize);
                let commit = rng.next_u64() % 4 != 0;
                let n = node(&mut net, side);
                let st = n.store().stats();
                let result = if commit {
                    n.commit(h.id)
                } else {
                    n.release(h.id).map(|()| Vec::new())
                };
                match result {
                    Ok(_) if h.doomed => {
                        return Err(fail(
                            step,
                            format!("{side:?} used a reservation made before a wipe or re-pairing"),
                        ));
                    }
                    Ok(keys) => {
                        if commit {
                            if ghost.deliveries > h.deliveries {
                                cov.held_committed_after_delivery += 1;
                            }
                            if st.chunks_lent + st.chunks_borrowed > h.moved {
                                cov.held_committed_after_lending += 1;
                            }
                            ghost.deliveries += 1;
                        }
                        let drops = node(&mut net, side).take_drop_audit();
                        ghost.record_drops(side, drops);
                        for (id, key) in keys {
                            check_fresh(&mut ghost, &names, &block_len, side, h.binding, id, &key)
                                .map_err(|w| fail(step, w))?;
                        }
                    }
                    Err(SyncError::Take(_)) if h.doomed => cov.held_doomed_refused += 1,
                    Err(SyncError::Take(_)) if now >= h.made + h.ttl => cov.held_expired += 1,
                    Err(e) => {
                        return Err(fail(
                            step,
                            format!("{side:?} lost a live reservation: {e:?}"),
                        ));
                    }
                }
            }
            72..=85 => {
                // A slave on `side` asks for a key the other side handed out
                // (or, racing its drop, for one the other side dropped).
                let racing = rng.next_u64() % 5 == 0;
                let list = if racing {
                    &ghost.dropped_ids[idx(side.peer())]
                } else {
                    &ghost.taken[idx(side.peer())]
                };
                if list.is_empty() {
                    continue;
                }
                let id = list[(rng.next_u64() % list.len() as u64) as usize];
                let binding = ghost.fresh_ids.get(&id).map_or(0, |f| f.2);
                let slaves = bindings.0[binding].slaves();
                let stranger = rng.next_u64() % 10 == 0;
                let slave = if stranger {
                    "stranger".to_owned()
                } else {
                    slaves[(rng.next_u64() % slaves.len() as u64) as usize].clone()
                };
                let result = node(&mut net, side).lookup(now, &id, &slave);
                if racing {
                    cov.dropped_lookups += 1;
                }
                match result {
                    Ok(Lookup::Pending) => cov.pending += 1,
                    Err(SyncError::Lookup(_)) if stranger => cov.stranger_refused += 1,
                    Ok(Lookup::Ready(key)) => {
                        cov.served += 1;
                        let Some(&(owner, r, _)) = ghost.fresh_ids.get(&id) else {
                            return Err(fail(
                                step,
                                format!("{side:?} served {id}, never handed out"),
                            ));
                        };
                        if owner == side {
                            return Err(fail(step, format!("{side:?} served its own key {id}")));
                        }
                        if stranger {
                            return Err(fail(step, format!("{side:?} served {id} to a stranger")));
                        }
                        if !ghost.served.insert((id, slave.clone())) {
                            return Err(fail(
                                step,
                                format!("{side:?} served {id} twice to {slave}"),
                            ));
                        }
                        if binding == 1
                            && slaves
                                .iter()
                                .filter(|s| ghost.served.contains(&(id, (*s).clone())))
                                .count()
                                >= 2
                        {
                            cov.multi_slave_served += 1;
                        }
                        if binding == 2 {
                            cov.split_served += 1;
                        }
                        let material = block_material(r.block.get(), block_len[&r.block.get()]);
                        if key.expose_secret()
                            != &material[r.offset as usize..r.offset as usize + r.len as usize]
                        {
                            return Err(fail(
                                step,
                                format!("{side:?} served {id} with wrong bytes"),
                            ));
                        }
                        let drops = node(&mut net, side).take_drop_audit();
                        ghost.record_drops(side, drops);
                    }
                    Err(_) => {}
                }
            }
            86..=87 => {
                // The pipeline of `side` hands it a block ID it had already.
                let Some(last) = ghost.last_fed[idx(side)] else {
                    continue;
                };
                let reused = BlockId::new(last - rng.next_u64() % last.min(3));
                let n = node(&mut net, side);
                if n.peer_epoch().is_none() {
                    continue;
                }
                let before = (n.store().stats(), n.in_flight());
                let result = if rng.next_u64() % 2 == 0 {
                    n.insert_block(now, reused, SecretKey::from_slice(&[1; 16]))
                        .map(|_| ())
                } else {
                    n.discard_block(reused)
                };
                if !matches!(result, Err(SyncError::Store(_))) {
                    return Err(fail(
                        step,
                        format!("{side:?} accepted block {reused} again: {result:?}"),
                    ));
                }
                if (n.store().stats(), n.in_flight()) != before {
                    return Err(fail(
                        step,
                        format!("{side:?} changed on a refused block {reused}"),
                    ));
                }
                cov.reuse_refused += 1;
            }
            88..=89 => {
                // The peer of `side` turns hostile for one message.
                if !p.liar {
                    let extra = hostile_notices(&mut rng);
                    hostile.borrow_mut().pending[idx(side.peer())].extend(extra);
                    ghost.hostile_sent[idx(side)] += 1;
                }
            }
            90..=96 => {
                let ms = rng.next_u64() % 60;
                net.drive_for(Duration::from_millis(ms));
            }
            97 => {
                // The application wipes `side`: a new incarnation in the same node.
                let drops = node(&mut net, side).take_drop_audit();
                ghost.record_drops(side, drops);
                ghost.forget[idx(side.peer())] =
                    node(&mut net, side.peer()).store().block_ids().collect();
                node(&mut net, side).wipe(&mut rng);
                if node(&mut net, side).store().held_bytes() != 0 {
                    return Err(fail(step, format!("{side:?} holds bytes after a wipe")));
                }
                ghost.store_emptied(side);
                cov.wipes += 1;
            }
            _ => {
                // Reboot one side: a new incarnation with an empty store.
                // Messages of the old one may still be in flight.
                let drops = node(&mut net, side).take_drop_audit();
                ghost.record_drops(side, drops);
                ghost.forget[idx(side.peer())] =
                    node(&mut net, side.peer()).store().block_ids().collect();
                let fresh = fresh_node(side, &mut rng, varied);
                match side {
                    Side::A => net.a = fresh,
                    Side::B => net.b = fresh,
                }
                ghost.store_emptied(side);
                // The handles belong to the old incarnation.
                ghost.held[idx(side)].clear();
                cov.reboots += 1;
            }
        }
        // Collect drops and events, and check the invariants after every step.
        for s in [Side::A, Side::B] {
            let drops = node(&mut net, s).take_drop_audit();
            ghost.record_drops(s, drops);
            let mut events = match s {
                Side::A => net.take_events_a(),
                Side::B => net.take_events_b(),
            };
            events.extend(std::iter::from_fn(|| node(&mut net, s).poll_event()));
            for ev in events {
                match ev {
                    Event::PeerMisbehaved(e) if !p.liar => {
                        if ghost.hostile_sent[idx(s)] == 0 {
                            return Err(fail(step, format!("{s:?} honest peer reported: {e:?}")));
                        }
                        cov.hostile_refused += 1;
                    }
                    Event::Paired { previous, .. } => {
                        cov.repairs += usize::from(previous.is_some());
                        ghost.store_emptied(s);
                        if node(&mut net, s).store().held_bytes() != 0 {
                            return Err(fail(step, format!("{s:?} paired without an empty store")));
                        }
                    }
                    _ => {}
                }
            }
        }
        for s in [Side::A, Side::B] {
            let store = node(&mut net, s).store();
            let st = store.stats();
            if store.held_bytes() != st.chunk_bytes + st.reserved_bytes + st.delivered_bytes
                || store.fresh_keys(8) as u64 != st.fresh_bytes
            {
                return Err(fail(step, format!("{s:?} store counters disagree: {st:?}")));
            }
            if store.peer_blocks_ahead() > MAX_AHEAD as usize || store.pairings_counted() > 68 {
                return Err(fail(step, format!("{s:?} remembers too much of the peer")));
            }
        }
        for s in [Side::A, Side::B] {
            let other_epoch = node(&mut net, s.peer()).epoch();
            let n = node(&mut net, s);
            if n.peer_epoch() == Some(other_epoch)
                && let Some(old) = n
                    .store()
                    .block_ids()
                    .find(|b| ghost.forget[idx(s)].contains(b))
            {
                return Err(fail(
                    step,
                    format!(
                        "{s:?} paired with the new {:?} still holds old block {old}",
                        s.peer()
                    ),
                ));
            }
        }
    }
    if hostile.borrow().oversized > 0 {
        return Err(fail(
            p.actions,
            "a message longer than max_message_len".into(),
        ));
    }
    cov.fresh += ghost.fresh_ids.len();
    cov.dropped += ghost.drops;
    cov.borrowed += net.a.store().stats().chunks_borrowed + net.b.store().stats().chunks_borrowed;
    Ok(())
}

/// Hands `entry` to `side`'s node as its pipeline would.
fn feed(
    net: &mut Network<SyncNode, SyncNode>,
    ghost: &mut Ghost,
    block_len: &HashMap<u64, usize>,
    side: Side,
    entry: Late,
    now: Instant,
) {
    let n = node(net, side);
    let paired = n.peer_epoch().is_some();
    let (id, result) = match entry {
        Late::Discard(id) => (id, n.discard_block(BlockId::new(id))),
        Late::Insert(id) => {
            let key = SecretKey::from_vec(block_material(id, block_len[&id]));
            (id, n.insert_block(now, BlockId::new(id), key).map(|_| ()))
        }
    };
    if paired && result.is_ok() {
        ghost.last_fed[idx(side)] = Some(id);
    }
}

fn explore(schedules: u64, first_seed: u64, p: Params) -> (Option<Violation>, Coverage) {
    let bindings = Bindings::new();
    let mut cov = Coverage::default();
    for seed in first_seed..first_seed + schedules {
        if let Err(v) = run_schedule(seed, p, &bindings, &mut cov) {
            return (Some(v), cov);
        }
    }
    (None, cov)
}

/// Issue 11, finding 8: the schedules reach every case listed in the
/// module docs, each many times (on 40aba07 the model generated none of
/// held reservations, wipes, a hostile peer, late inserts, varied
/// configurations, multi-slave or split notices, reused IDs or racing
/// lookups).
#[test]
fn finding_8_invariants_hold_in_100k_random_schedules_covering_every_case() {
    let p = Params {
        actions: 40,
        liar: false,
    };
    let (violation, cov) = explore(100_000, 0, p);
    assert!(violation.is_none(), "{violation:?}");
    // Not vacuous: every kind of event happened, many times.
    // The run is deterministic; each floor is about half of what it reaches.
    let floors: [(&str, usize, usize); 20] = [
        ("fresh", cov.fresh, 40_000),
        ("served", cov.served, 3_000),
        ("pending", cov.pending, 10_000),
        ("reboots", cov.reboots, 40_000),
        ("wipes", cov.wipes, 20_000),
        ("repairs", cov.repairs, 20_000),
        ("borrowed", cov.borrowed as usize, 5_000),
        ("dropped", cov.dropped, 100_000),
        ("varied_configs", cov.varied_configs, 40_000),
        ("late_inserts", cov.late_inserts, 30_000),
        ("reuse_refused", cov.reuse_refused, 15_000),
        (
            "held_committed_after_delivery",
            cov.held_committed_after_delivery,
            200,
        ),
        (
            "held_committed_after_lending",
            cov.held_committed_after_lending,
            50,
        ),
        ("held_expired", cov.held_expired, 300),
        ("held_doomed_refused", cov.held_doomed_refused, 200),
        ("multi_slave_served", cov.multi_slave_served, 80),
        ("split_served", cov.split_served, 400),
        ("stranger_refused", cov.stranger_refused, 300),
        ("dropped_lookups", cov.dropped_lookups, 8_000),
        ("hostile_refused", cov.hostile_refused, 100_000),
    ];
    for (what, got, floor) in floors {
        assert!(got >= floor, "{what}: {got} < {floor}\n{cov:#?}");
    }
}

#[test]
#[ignore = "long: cargo test -p qkd-sync --release --test model -- --ignored"]
fn invariants_hold_in_1m_longer_schedules() {
    let p = Params {
        actions: 100,
        liar: false,
    };
    let (violation, _) = explore(1_000_000, 1 << 32, p);
    assert!(violation.is_none(), "{violation:?}");
}

/// The control: a peer that grants chunks and keeps using them breaks the
/// ownership rule the protocol relies on, and the checker must see a key
/// handed out fresh on both nodes.
#[test]
fn the_checker_catches_a_grant_the_lender_did_not_give_up() {
    let p = Params {
        actions: 40,
        liar: true,
    };
    let (violation, _) = explore(10_000, 0, p);
    let v = violation.expect("with lying grants a key is handed out on both nodes");
    assert!(v.what.contains("fresh"), "{v:?}");
}

/// Liveness: after the faults stop, every key handed out in the live session
/// can be looked up on the other side with the same bytes.
#[test]
fn keys_handed_out_reach_the_peer_once_the_link_heals() {
    for seed in 0..300u64 {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let start = Instant::now();
        let a = fresh_node(Side::A, &mut rng, false);
        let b = fresh_node(Side::B, &mut rng, false);
        let mut net = Network::new(
            a,
            b,
            LinkConfig::hostile(Duration::from_millis(2)).with_corrupt(0.0),
            seed,
            start,
        );
        net.drive_for(Duration::from_millis(300));
        assert!(
            net.a.is_paired() && net.b.is_paired(),
            "seed {seed}: {:?} {:?}",
            net.a,
            net.b
        );
        let binding = Arc::new(Binding::pair("m", "s").unwrap());
        let mut taken = [Vec::new(), Vec::new()];
        for blk in 1..=4u64 {
            let now = net.now();
            for s in [Side::A, Side::B] {
                node(&mut net, s)
                    .insert_block(
                        now,
                        BlockId::new(blk),
                        SecretKey::from_vec(block_material(blk, 128)),
                    )
                    .unwrap();
            }
            net.drive_for(Duration::from_millis(30));
            for s in [Side::A, Side::B] {
                if let Ok(keys) = node(&mut net, s).take(2, 128, &binding) {
                    taken[idx(s)].extend(keys);
                }
            }
        }
        net.set_config(Side::A, LinkConfig::perfect(Duration::from_millis(2)));
        net.set_config(Side::B, LinkConfig::perfect(Duration::from_millis(2)));
        net.drive_for(Duration::from_millis(100));
        assert!(
            taken[0].len() + taken[1].len() >= 8,
            "seed {seed}: keys were taken"
        );
        for s in [Side::A, Side::B] {
            for (id, key) in &taken[idx(s)] {
                let now = net.now();
                let got = node(&mut net, s.peer()).lookup(now, id, "s").unwrap();
                assert_eq!(got, Lookup::Ready(key.clone()), "seed {seed} key {id}");
            }
        }
    }
}
