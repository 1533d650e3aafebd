//! [`KeyStore`]: the key material of one link on one node.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qkd_core::{BitVec, KeyId, SecretKey};
use zeroize::{Zeroize, Zeroizing};

use crate::notice::{Binding, GrantedChunk, KeyRange, Notice};
use crate::{LookupError, NoticeError, StoreError, TakeError};

/// Hasher for maps keyed by [`KeyId`] (already uniformly distributed: the
/// blake3 output) and by block numbers (multiplicative mixing). Not for keys
/// an attacker chooses freely; the peer is authenticated.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Which end of the pairing a node is. Fixed when the link is paired; the two
/// nodes of a link must have different roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Owns the even-numbered chunks of every block at first.
    First,
    /// Owns the odd-numbered chunks of every block at first.
    Second,
}

impl Role {
    /// The other role.
    #[must_use]
    pub const fn peer(self) -> Role {
        match self {
            Role::First => Role::Second,
            Role::Second => Role::First,
        }
    }

    /// Whether this role owns chunk `chunk` of a block before any transfer.
    #[must_use]
    pub const fn owns_initially(self, chunk: u32) -> bool {
        match self {
            Role::First => chunk.is_multiple_of(2),
            Role::Second => chunk % 2 == 1,
        }
    }

    /// The wire byte of the role (0 = first, 1 = second).
    #[must_use]
    pub const fn to_byte(self) -> u8 {
        match self {
            Role::First => 0,
            Role::Second => 1,
        }
    }
}

/// Settings of a [`KeyStore`]. Both nodes of a link must use the same `link`
/// and `chunk_bytes` (qkd-sync checks this in its hello).
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Name of the link, mixed into every [`KeyId`].
    pub link: Vec<u8>,
    /// This node's role.
    pub role: Role,
    /// Size of an ownership unit in bytes; also the largest key cut.
    pub chunk_bytes: u32,
    /// Most bytes held (chunk copies, reserved and delivered keys).
    pub capacity_bytes: usize,
    /// How long fresh material may wait after its block was stored before
    /// its owner drops it.
    pub key_ttl: Duration,
    /// How long a key handed out on the peer waits here for its slave.
    pub delivered_ttl: Duration,
    /// How long a reservation holds its keys before they are dropped.
    pub reservation_ttl: Duration,
    /// Below this many fresh bytes the store asks the peer to lend ownership.
    pub borrow_low_water: u64,
    /// Most keys one take or reservation may ask for.
    pub max_keys_per_request: usize,
}

impl StoreConfig {
    /// Defaults: 1 KiB chunks, 256 MiB capacity, one hour of key TTL, ten
    /// minutes for delivered keys and one minute for reservations, borrow
    /// below 64 KiB, 10 000 keys per request.
    #[must_use]
    pub fn new(link: impl Into<Vec<u8>>, role: Role) -> Self {
        StoreConfig {
            link: link.into(),
            role,
            chunk_bytes: 1024,
            capacity_bytes: 256 << 20,
            key_ttl: Duration::from_secs(3600),
            delivered_ttl: Duration::from_secs(600),
            reservation_ttl: Duration::from_secs(60),
            borrow_low_water: 64 << 10,
            max_keys_per_request: 10_000,
        }
    }

    /// Sets the chunk size in bytes (at least 1).
    #[must_use]
    pub fn with_chunk_bytes(mut self, chunk_bytes: u32) -> Self {
        self.chunk_bytes = chunk_bytes.max(1);
        self
    }

    /// Sets the capacity in bytes.
    #[must_use]
    pub fn with_capacity_bytes(mut self, capacity_bytes: usize) -> Self {
        self.capacity_bytes = capacity_bytes;
        self
    }

    /// Sets the TTL of fresh material.
    #[must_use]
    pub fn with_key_ttl(mut self, ttl: Duration) -> Self {
        self.key_ttl = ttl;
        self
    }

    /// Sets the TTL of delivered keys waiting for their slave.
    #[must_use]
    pub fn with_delivered_ttl(mut self, ttl: Duration) -> Self {
        self.delivered_ttl = ttl;
        self
    }

    /// Sets the TTL of reservations.
    #[must_use]
    pub fn with_reservation_ttl(mut self, ttl: Duration) -> Self {
        self.reservation_ttl = ttl;
        self
    }

    /// Sets the borrow low-water mark in bytes (0 never borrows).
    #[must_use]
    pub fn with_borrow_low_water(mut self, bytes: u64) -> Self {
        self.borrow_low_water = bytes;
        self
    }
}

/// Counts of what a store holds and has done. Bits are `8 *` the byte figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Blocks held (at least one chunk not finished).
    pub blocks: usize,
    /// Bytes held in chunk buffers (fresh, pending and peer-owned copies).
    pub chunk_bytes: u64,
    /// Fresh bytes: owned here, block held by both, not yet cut.
    pub fresh_bytes: u64,
    /// Owned bytes of blocks the peer has not announced yet.
    pub pending_bytes: u64,
    /// Keys reserved and not yet committed or released.
    pub reserved_keys: u64,
    /// Bytes of reserved keys.
    pub reserved_bytes: u64,
    /// Keys handed out on the peer and waiting here for their slaves.
    pub delivered_keys: u64,
    /// Bytes of those keys.
    pub delivered_bytes: u64,
    /// Blocks stored since creation.
    pub blocks_stored: u64,
    /// Blocks refused or dropped whole (capacity, lost on one side).
    pub blocks_lost: u64,
    /// Keys handed out fresh here.
    pub keys_taken: u64,
    /// Keys fetched here by a slave.
    pub keys_fetched: u64,
    /// Keys fetched on the peer (from its consumed notices).
    pub keys_fetched_by_peer: u64,
    /// Delivered keys that expired before their slave fetched them.
    pub keys_expired: u64,
    /// Bytes dropped without being handed out (expiry, capacity,
    /// fragments, reservations released, the peer's drops).
    pub bytes_dropped: u64,
    /// Chunks lent to the peer.
    pub chunks_lent: u64,
    /// Chunks borrowed from the peer.
    pub chunks_borrowed: u64,
    /// Whole-store wipes.
    pub wipes: u64,
}

/// Per-pairing counts (master SAE, slave SAE), for ETSI 014 status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PairingStats {
    /// Keys taken here with this master for this slave.
    pub taken: u64,
    /// Keys delivered from the peer for this slave and not yet fetched here.
    pub waiting: u64,
    /// Keys this slave fetched here.
    pub fetched: u64,
    /// Keys this slave fetched on the peer.
    pub fetched_by_peer: u64,
}

/// What happened to an inserted block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InsertOutcome {
    /// Stored; usable once the peer has it too.
    Stored,
    /// Stored and usable at once (the peer's notice came first).
    Ready,
    /// Not stored: the peer announced it lost.
    LostByPeer,
    /// Not stored: no room even after dropping old fresh material.
    OverCapacity,
    /// Not stored: the peer already announced a later block without this
    /// one, so it will never hold it.
    SkippedByPeer,
    /// Not stored: no session with the peer (used by qkd-sync).
    NoSession,
}

/// A handle to reserved keys; see [`KeyStore::reserve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId(u64);

/// Who may cut a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Mine,
    Peer,
}

/// One ownership unit of a block.
struct Chunk {
    /// The bytes; zeroized range by range as they leave, freed when done.
    bytes: Option<Zeroizing<Vec<u8>>>,
    owner: Owner,
    /// Next byte to cut, relative to the chunk (owner side).
    cursor: u32,
    /// One bit per byte: already zeroized (cut, delivered or dropped). A
    /// byte leaves once; a notice naming a gone byte again is refused.
    gone: BitVec,
}

impl Chunk {
    /// Bytes not yet zeroized.
    fn live(&self) -> u32 {
        (self.gone.len() - self.gone.count_ones()) as u32
    }
}

struct Block {
    chunks: Vec<Chunk>,
    /// Chunks not finished.
    open: u32,
    /// The peer announced it holds the block.
    peer_has: bool,
}

struct DeliveredKey {
    key: SecretKey,
    binding: Arc<Binding>,
    /// Bit i set: slave i may still fetch.
    remaining: u64,
}

struct Reservation {
    keys: Vec<(KeyId, KeyRange, SecretKey)>,
    binding: Arc<Binding>,
    deadline: Instant,
}

/// The key material of one link on one node.
///
/// Final key blocks go in with [`insert_block`](Self::insert_block) in the
/// same order on both nodes; keys of any whole number of bytes (up to a
/// chunk) come out of [`take`](Self::take) on the node that owns the
/// material and of [`lookup`](Self::lookup) on the other. Every change the
/// peer must mirror is queued as a [`Notice`] ([`poll_notice`](Self::poll_notice));
/// the peer's notices go into [`apply`](Self::apply).
///
/// # Ownership
///
/// Each block is cut into chunks of `chunk_bytes`. At insertion the
/// [`Role::First`] node owns the even chunks and [`Role::Second`] the odd
/// ones. Only the owner of a chunk hands its bytes out fresh or drops them;
/// the other node keeps a copy, from which it serves the keys the owner
/// announces as delivered, and which it drops only when the owner says so
/// (or on a wipe). A chunk is usable once both nodes announced its block.
/// Ownership moves only by [`Notice::Grant`]: the lender gives the chunk up
/// before the notice leaves, so at every moment a chunk has at most one owner.
///
/// Every operation is O(log n) or amortised O(1) in the number of chunks and
/// keys held, plus the work proportional to the keys asked for.
pub struct KeyStore {
    config: StoreConfig,
    blocks: IdMap<u64, Block>,
    /// Usable chunks owned here, oldest first.
    usable: BTreeSet<(u64, u32)>,
    /// Peer decisions on blocks not inserted here yet: true = has, false = lost.
    peer_ahead: BTreeMap<u64, bool>,
    /// Highest block the peer announced (stored or lost).
    peer_high: Option<u64>,
    /// Blocks held here that the peer has not announced.
    unready: BTreeSet<u64>,
    last_block: Option<u64>,
    expiry: VecDeque<(Instant, u64)>,
    delivered: IdMap<KeyId, DeliveredKey>,
    delivered_expiry: VecDeque<(Instant, KeyId)>,
    reservations: HashMap<u64, Reservation>,
    reservation_expiry: BTreeSet<(Instant, u64)>,
    next_reservation: u64,
    /// Per master, per slave.
    pairings: HashMap<String, HashMap<String, PairingStats>>,
    notices: VecDeque<Notice>,
    borrow_outstanding: bool,
    stats: StoreStats,
    #[cfg(feature = "model")]
    ownership_rule: bool,
    #[cfg(feature = "model")]
    audit: Vec<KeyRange>,
}

impl KeyStore {
    /// An empty store.
    #[must_use]
    pub fn new(config: StoreConfig) -> Self {
        KeyStore {
            config,
            blocks: IdMap::default(),
            usable: BTreeSet::new(),
            peer_ahead: BTreeMap::new(),
            peer_high: None,
            unready: BTreeSet::new(),
            last_block: None,
            expiry: VecDeque::new(),
            delivered: IdMap::default(),
            delivered_expiry: VecDeque::new(),
            reservations: HashMap::new(),
            reservation_expiry: BTreeSet::new(),
            next_reservation: 0,
            pairings: HashMap::new(),
            notices: VecDeque::new(),
            borrow_outstanding: false,
            stats: StoreStats::default(),
            #[cfg(feature = "model")]
            ownership_rule: true,
            #[cfg(feature = "model")]
            audit: Vec::new(),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The ID both nodes give the key starting at byte `offset` of `block`.
    #[must_use]
    pub fn key_id(&self, block: u64, offset: u32) -> KeyId {
        KeyId::for_block(&self.config.link, block, u64::from(offset))
    }

    /// Largest key size in bits.
    #[must_use]
    pub fn max_key_bits(&self) -> usize {
        self.config.chunk_bytes as usize * 8
    }

    /// Counts of what the store holds and has done.
    #[must_use]
    pub fn stats(&self) -> StoreStats {
        let mut s = self.stats.clone();
        s.blocks = self.blocks.len();
        s.delivered_keys = self.delivered.len() as u64;
        s
    }

    /// Counts for the pairing (`master`, `slave`).
    #[must_use]
    pub fn pairing(&self, master: &str, slave: &str) -> PairingStats {
        self.pairings
            .get(master)
            .and_then(|m| m.get(slave))
            .cloned()
            .unwrap_or_default()
    }

    /// Keys of `bits` bits this node could hand out fresh now (counted per
    /// chunk; O(number of usable chunks)).
    #[must_use]
    pub fn fresh_keys(&self, bits: usize) -> usize {
        if bits == 0 || !bits.is_multiple_of(8) || bits > self.max_key_bits() {
            return 0;
        }
        let len = (bits / 8) as u32;
        self.usable
            .iter()
            .map(|&(b, c)| (self.remaining(b, c) / len) as usize)
            .sum()
    }

    /// Bytes held (chunk buffers, reserved and delivered keys), as bounded by
    /// [`StoreConfig::capacity_bytes`].
    #[must_use]
    pub fn held_bytes(&self) -> u64 {
        self.stats.chunk_bytes + self.stats.reserved_bytes + self.stats.delivered_bytes
    }

    /// The next notice for the peer, oldest first.
    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    /// Whether notices are queued.
    #[must_use]
    pub fn has_notices(&self) -> bool {
        !self.notices.is_empty()
    }

    fn chunk_span(&self, block_len: usize, chunk: u32) -> (u32, u32) {
        let start = chunk as usize * self.config.chunk_bytes as usize;
        let end = (start + self.config.chunk_bytes as usize).min(block_len);
        (start as u32, (end - start) as u32)
    }

    fn chunk_len(block: &Block, chunk: u32) -> u32 {
        block.chunks[chunk as usize]
            .bytes
            .as_ref()
            .map_or(0, |b| b.len() as u32)
    }

    fn remaining(&self, block: u64, chunk: u32) -> u32 {
        let Some(b) = self.blocks.get(&block) else {
            return 0;
        };
        let len = Self::chunk_len(b, chunk);
        len.saturating_sub(b.chunks[chunk as usize].cursor)
    }

    fn owns_initially(&self, chunk: u32) -> bool {
        #[cfg(feature = "model")]
        if !self.ownership_rule {
            return true;
        }
        self.config.role.owns_initially(chunk)
    }

    /// Stores final key block `block` (IDs strictly increasing, the same
    /// blocks in the same order on both nodes, never repeated for the life of
    /// the link). Queues [`Notice::Have`], or [`Notice::Lost`] if it is refused.
    ///
    /// When the block does not fit, the oldest fresh chunks owned here are
    /// dropped first (with notices); if that is not enough it is refused.
    ///
    /// # Errors
    /// [`StoreError`] if the block is out of order or empty.
    pub fn insert_block(
        &mut self,
        now: Instant,
        block: u64,
        key: SecretKey,
    ) -> Result<InsertOutcome, StoreError> {
        if let Some(last) = self.last_block
            && block <= last
        {
            return Err(StoreError::BlockOutOfOrder { block, last });
        }
        let len = key.len();
        if len == 0 || len > u32::MAX as usize {
            return Err(StoreError::BadBlockLength { len });
        }
        self.last_block = Some(block);
        // Decisions on earlier blocks can never be used now.
        let ahead = self.peer_ahead.split_off(&block);
        let decision = {
            let mut ahead = ahead;
            let d = ahead.remove(&block);
            self.peer_ahead = ahead;
            d
        };
        if decision == Some(false) {
            self.stats.blocks_lost += 1;
            return Ok(InsertOutcome::LostByPeer);
        }
        if decision.is_none() && self.peer_high.is_some_and(|h| block < h) {
            self.stats.blocks_lost += 1;
            return Ok(InsertOutcome::SkippedByPeer);
        }
        while self.held_bytes() + len as u64 > self.config.capacity_bytes as u64 {
            let Some(&(b, c)) = self.usable.first() else {
                break;
            };
            self.drop_owned_tail(b, c);
        }
        if self.held_bytes() + len as u64 > self.config.capacity_bytes as u64 {
            self.stats.blocks_lost += 1;
            self.notices.push_back(Notice::Lost { block });
            return Ok(InsertOutcome::OverCapacity);
        }
        let bytes = key.expose_secret();
        let n_chunks = len.div_ceil(self.config.chunk_bytes as usize) as u32;
        let mut chunks = Vec::with_capacity(n_chunks as usize);
        let mut pending = 0u64;
        for c in 0..n_chunks {
            let (start, clen) = self.chunk_span(len, c);
            let mine = self.owns_initially(c);
            if mine {
                pending += u64::from(clen);
            }
            chunks.push(Chunk {
                bytes: Some(Zeroizing::new(
                    bytes[start as usize..(start + clen) as usize].to_vec(),
                )),
                owner: if mine { Owner::Mine } else { Owner::Peer },
                cursor: 0,
                gone: BitVec::zeros(clen as usize),
            });
        }
        drop(key);
        self.stats.chunk_bytes += len as u64;
        self.stats.pending_bytes += pending;
        self.stats.blocks_stored += 1;
        self.blocks.insert(
            block,
            Block {
                chunks,
                open: n_chunks,
                peer_has: false,
            },
        );
        self.expiry.push_back((now + self.config.key_ttl, block));
        self.unready.insert(block);
        self.notices.push_back(Notice::Have { block });
        if decision == Some(true) {
            self.mark_ready(block);
            self.maybe_borrow();
            Ok(InsertOutcome::Ready)
        } else {
            Ok(InsertOutcome::Stored)
        }
    }

    /// Records that block `block` will never be stored here (e.g. it failed
    /// confirmation on this node) and queues [`Notice::Lost`] so the peer
    /// drops its copy.
    ///
    /// # Errors
    /// [`StoreError::BlockOutOfOrder`] if `block` does not follow the last block.
    pub fn discard_block(&mut self, block: u64) -> Result<(), StoreError> {
        if let Some(last) = self.last_block
            && block <= last
        {
            return Err(StoreError::BlockOutOfOrder { block, last });
        }
        self.last_block = Some(block);
        self.peer_ahead = self.peer_ahead.split_off(&(block.saturating_add(1)));
        self.stats.blocks_lost += 1;
        self.notices.push_back(Notice::Lost { block });
        Ok(())
    }

    fn mark_ready(&mut self, block: u64) {
        let Some(b) = self.blocks.get_mut(&block) else {
            return;
        };
        if b.peer_has {
            return;
        }
        b.peer_has = true;
        self.unready.remove(&block);
        let mut moved = 0u64;
        for (i, ch) in b.chunks.iter().enumerate() {
            if ch.owner == Owner::Mine && ch.bytes.is_some() {
                let len = ch.bytes.as_ref().map_or(0, |x| x.len() as u32);
                if ch.cursor < len {
                    moved += u64::from(len - ch.cursor);
                    self.usable.insert((block, i as u32));
                }
            }
        }
        self.stats.pending_bytes -= moved;
        self.stats.fresh_bytes += moved;
    }

    /// Zeroizes `range` (relative to the chunk) of a chunk and frees what is done.
    fn zero_range(&mut self, block: u64, chunk: u32, start: u32, len: u32) -> Option<SecretKey> {
        let b = self.blocks.get_mut(&block)?;
        let ch = b.chunks.get_mut(chunk as usize)?;
        let buf = ch.bytes.as_mut()?;
        let s = start as usize;
        let e = s + len as usize;
        if e > buf.len() || ch.gone.slice(s..e).count_ones() != 0 {
            return None;
        }
        let key = SecretKey::from_slice(&buf[s..e]);
        buf[s..e].zeroize();
        let size = buf.len() as u64;
        for i in s..e {
            ch.gone.set(i, true);
        }
        if ch.live() == 0 {
            ch.bytes = None;
            b.open -= 1;
            self.stats.chunk_bytes -= size;
            if b.open == 0 {
                self.blocks.remove(&block);
                self.unready.remove(&block);
            }
        }
        Some(key)
    }

    /// Drops the uncut rest of an owned chunk and tells the peer.
    fn drop_owned_tail(&mut self, block: u64, chunk: u32) {
        let Some(b) = self.blocks.get_mut(&block) else {
            self.usable.remove(&(block, chunk));
            return;
        };
        let ready = b.peer_has;
        let Some(ch) = b.chunks.get_mut(chunk as usize) else {
            return;
        };
        let Some(buf) = ch.bytes.as_ref() else {
            self.usable.remove(&(block, chunk));
            return;
        };
        let len = buf.len() as u32;
        let cursor = ch.cursor;
        if ch.owner != Owner::Mine || cursor >= len {
            self.usable.remove(&(block, chunk));
            return;
        }
        ch.cursor = len;
        let n = len - cursor;
        if ready {
            self.usable.remove(&(block, chunk));
            self.stats.fresh_bytes -= u64::from(n);
        } else {
            self.stats.pending_bytes -= u64::from(n);
        }
        self.stats.bytes_dropped += u64::from(n);
        let offset = chunk * self.config.chunk_bytes + cursor;
        let range = KeyRange {
            block,
            offset,
            len: n,
        };
        self.audit_drop(range);
        drop(self.zero_range(block, chunk, cursor, n));
        self.notices.push_back(Notice::Drop { range });
    }

    #[cfg(feature = "model")]
    fn audit_drop(&mut self, range: KeyRange) {
        self.audit.push(range);
    }

    #[cfg(not(feature = "model"))]
    fn audit_drop(&mut self, _range: KeyRange) {}

    fn check_take(&self, count: usize, bits: usize) -> Result<u32, TakeError> {
        if bits == 0 || !bits.is_multiple_of(8) || bits > self.max_key_bits() {
            return Err(TakeError::InvalidSize {
                bits,
                max_bits: self.max_key_bits(),
            });
        }
        if count == 0 || count > self.config.max_keys_per_request {
            return Err(TakeError::InvalidCount {
                count,
                max: self.config.max_keys_per_request,
            });
        }
        Ok((bits / 8) as u32)
    }

    /// Cuts `count` keys of `len` bytes from the oldest usable chunks, all or
    /// nothing. Chunks passed over with less than `len` bytes left have
    /// their rest dropped (with a notice).
    fn cut(
        &mut self,
        count: usize,
        len: u32,
    ) -> Result<Vec<(KeyId, KeyRange, SecretKey)>, TakeError> {
        // Plan without changing anything.
        let mut found = 0usize;
        let mut last_needed: Option<(u64, u32)> = None;
        for &(b, c) in &self.usable {
            found += (self.remaining(b, c) / len) as usize;
            if found >= count {
                last_needed = Some((b, c));
                break;
            }
        }
        if last_needed.is_none() {
            self.maybe_borrow();
            return Err(TakeError::Insufficient {
                requested: count,
                available: found,
            });
        };
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let Some(&(b, c)) = self.usable.first() else {
                break;
            };
            let rem = self.remaining(b, c);
            if rem < len {
                self.drop_owned_tail(b, c);
                continue;
            }
            let cursor = self.blocks[&b].chunks[c as usize].cursor;
            let offset = c * self.config.chunk_bytes + cursor;
            let range = KeyRange {
                block: b,
                offset,
                len,
            };
            let id = self.key_id(b, offset);
            {
                let ch = &mut self
                    .blocks
                    .get_mut(&b)
                    .expect("usable chunk's block is held")
                    .chunks[c as usize];
                ch.cursor += len;
            }
            self.stats.fresh_bytes -= u64::from(len);
            if rem == len {
                self.usable.remove(&(b, c));
            }
            let key = self
                .zero_range(b, c, cursor, len)
                .expect("usable chunk holds its bytes");
            out.push((id, range, key));
        }
        self.maybe_borrow();
        Ok(out)
    }

    fn maybe_borrow(&mut self) {
        if self.config.borrow_low_water == 0 || self.borrow_outstanding {
            return;
        }
        if self.stats.fresh_bytes < self.config.borrow_low_water {
            self.borrow_outstanding = true;
            self.notices.push_back(Notice::Borrow {
                bytes: self.config.borrow_low_water * 2,
            });
        }
    }

    /// The counters of a pairing, created on first use (no allocation
    /// once it exists).
    fn pairing_mut(&mut self, master: &str, slave: &str) -> &mut PairingStats {
        if !self.pairings.contains_key(master) {
            self.pairings.insert(master.to_owned(), HashMap::new());
        }
        let per_slave = self.pairings.get_mut(master).expect("just inserted");
        if !per_slave.contains_key(slave) {
            per_slave.insert(slave.to_owned(), PairingStats::default());
        }
        per_slave.get_mut(slave).expect("just inserted")
    }

    fn count_taken(&mut self, binding: &Binding, n: usize) {
        self.stats.keys_taken += n as u64;
        for s in binding.slaves() {
            self.pairing_mut(binding.master(), s).taken += n as u64;
        }
    }

    /// Hands out `count` fresh keys of `bits` bits for `binding` (ETSI 014
    /// `enc_keys`): all or nothing, removed from the store at once; queues
    /// [`Notice::Delivered`] so the peer keeps its copies for the slaves.
    ///
    /// # Errors
    /// [`TakeError`] for a bad size or count, or too little fresh material
    /// owned here (then a [`Notice::Borrow`] may be queued).
    pub fn take(
        &mut self,
        count: usize,
        bits: usize,
        binding: &Arc<Binding>,
    ) -> Result<Vec<(KeyId, SecretKey)>, TakeError> {
        let len = self.check_take(count, bits)?;
        let cut = self.cut(count, len)?;
        Ok(self.deliver(binding.clone(), cut))
    }

    /// Hands cut keys to `binding`'s master: counts them, tells the peer
    /// which ranges left ([`Notice::Delivered`]) and returns the keys.
    fn deliver(
        &mut self,
        binding: Arc<Binding>,
        cut: Vec<(KeyId, KeyRange, SecretKey)>,
    ) -> Vec<(KeyId, SecretKey)> {
        self.count_taken(&binding, cut.len());
        let mut ranges = Vec::with_capacity(cut.len());
        let mut keys = Vec::with_capacity(cut.len());
        for (id, range, key) in cut {
            ranges.push(range);
            keys.push((id, key));
        }
        self.notices.push_back(Notice::Delivered {
            binding,
            keys: ranges,
        });
        keys
    }

    /// Cuts `count` keys of `bits` bits and holds them for `binding` until
    /// [`commit`](Self::commit), [`release`](Self::release) or
    /// [`StoreConfig::reservation_ttl`] after `now`. The peer learns nothing
    /// until then.
    ///
    /// # Errors
    /// As [`take`](Self::take).
    pub fn reserve(
        &mut self,
        now: Instant,
        count: usize,
        bits: usize,
        binding: &Arc<Binding>,
    ) -> Result<ReservationId, TakeError> {
        let len = self.check_take(count, bits)?;
        let keys = self.cut(count, len)?;
        let id = self.next_reservation;
        self.next_reservation += 1;
        let bytes = u64::from(len) * keys.len() as u64;
        self.stats.reserved_bytes += bytes;
        self.stats.reserved_keys += keys.len() as u64;
        let deadline = now + self.config.reservation_ttl;
        self.reservations.insert(
            id,
            Reservation {
                keys,
                binding: binding.clone(),
                deadline,
            },
        );
        self.reservation_expiry.insert((deadline, id));
        Ok(ReservationId(id))
    }

    fn remove_reservation(&mut self, id: ReservationId) -> Option<Reservation> {
        let r = self.reservations.remove(&id.0)?;
        self.reservation_expiry.remove(&(r.deadline, id.0));
        let bytes: u64 = r.keys.iter().map(|k| u64::from(k.1.len)).sum();
        self.stats.reserved_bytes -= bytes;
        self.stats.reserved_keys -= r.keys.len() as u64;
        Some(r)
    }

    /// Hands out the reserved keys (as [`take`](Self::take) would have).
    ///
    /// # Errors
    /// [`TakeError::UnknownReservation`] if it was committed, released or expired.
    pub fn commit(&mut self, id: ReservationId) -> Result<Vec<(KeyId, SecretKey)>, TakeError> {
        let r = self
            .remove_reservation(id)
            .ok_or(TakeError::UnknownReservation)?;
        Ok(self.deliver(r.binding, r.keys))
    }

    /// Drops the reserved keys (zeroized here, dropped on the peer by notice).
    ///
    /// # Errors
    /// [`TakeError::UnknownReservation`] if it was committed, released or expired.
    pub fn release(&mut self, id: ReservationId) -> Result<(), TakeError> {
        let r = self
            .remove_reservation(id)
            .ok_or(TakeError::UnknownReservation)?;
        for (_, range, key) in r.keys {
            drop(key);
            self.stats.bytes_dropped += u64::from(range.len);
            self.audit_drop(range);
            self.notices.push_back(Notice::Drop { range });
        }
        Ok(())
    }

    /// Fetches the key `id` for `slave` (ETSI 014 `dec_keys`): the key the
    /// peer handed out and announced. `Ok(None)` means it is not known here
    /// (yet): its notice may still be on its way. The key leaves the store
    /// (zeroized) once every slave of its binding fetched it.
    ///
    /// # Errors
    /// [`LookupError::NotAuthorized`] if `slave` is not a remaining slave of the key.
    pub fn lookup(&mut self, id: &KeyId, slave: &str) -> Result<Option<SecretKey>, LookupError> {
        let Some(entry) = self.delivered.get_mut(id) else {
            return Ok(None);
        };
        let i = entry
            .binding
            .slave_index(slave)
            .ok_or(LookupError::NotAuthorized)?;
        if entry.remaining & (1 << i) == 0 {
            return Err(LookupError::NotAuthorized);
        }
        entry.remaining &= !(1 << i);
        let binding = entry.binding.clone();
        let key = if entry.remaining == 0 {
            let e = self.delivered.remove(id).expect("entry just seen");
            let n = e.key.len() as u64;
            self.stats.delivered_bytes -= n;
            e.key
        } else {
            entry.key.clone()
        };
        self.stats.keys_fetched += 1;
        let p = self.pairing_mut(binding.master(), slave);
        p.fetched += 1;
        p.waiting = p.waiting.saturating_sub(1);
        if let Some(Notice::Consumed {
            master,
            slave: s,
            count,
        }) = self.notices.back_mut()
            && master == binding.master()
            && s == slave
            && *count < u32::MAX
        {
            *count += 1;
            return Ok(Some(key));
        }
        self.notices.push_back(Notice::Consumed {
            master: binding.master().to_owned(),
            slave: slave.to_owned(),
            count: 1,
        });
        Ok(Some(key))
    }

    /// Whether key `id` waits here for a slave.
    #[must_use]
    pub fn is_delivered(&self, id: &KeyId) -> bool {
        self.delivered.contains_key(id)
    }

    /// Applies a notice from the peer at time `now`. Key IDs that became
    /// available for lookup are appended to `arrived`.
    ///
    /// # Errors
    /// [`NoticeError`] if the notice does not fit this store (the rest of the
    /// notice is still applied where it fits).
    pub fn apply(
        &mut self,
        now: Instant,
        notice: Notice,
        arrived: &mut Vec<KeyId>,
    ) -> Result<(), NoticeError> {
        match notice {
            Notice::Have { block } => {
                self.peer_passed(block);
                if self.blocks.contains_key(&block) {
                    self.mark_ready(block);
                    self.maybe_borrow();
                } else if self.last_block.is_none_or(|l| block > l) {
                    self.peer_ahead.insert(block, true);
                }
                Ok(())
            }
            Notice::Lost { block } => {
                self.peer_passed(block);
                if let Some(b) = self.blocks.get(&block) {
                    if b.peer_has {
                        return Err(NoticeError::LostAfterHave { block });
                    }
                    self.drop_block(block);
                } else if self.last_block.is_none_or(|l| block > l) {
                    self.peer_ahead.insert(block, false);
                }
                Ok(())
            }
            Notice::Drop { range } => {
                if !self.blocks.contains_key(&range.block) {
                    // A block this node never stored or already dropped whole
                    // (the peer drops its own chunks of an unready block too).
                    return Ok(());
                }
                let (chunk, start) = self.locate(&range)?;
                self.stats.bytes_dropped += u64::from(range.len);
                self.audit_drop(range);
                drop(self.zero_range(range.block, chunk, start, range.len));
                Ok(())
            }
            Notice::Delivered { binding, keys } => {
                let mut result = Ok(());
                let deadline = now + self.config.delivered_ttl;
                let all = if binding.slaves().len() == 64 {
                    u64::MAX
                } else {
                    (1u64 << binding.slaves().len()) - 1
                };
                let mut n = 0u64;
                for range in keys {
                    let (chunk, start) = match self.locate(&range) {
                        Ok(x) => x,
                        Err(e) => {
                            result = Err(e);
                            continue;
                        }
                    };
                    let Some(key) = self.zero_range(range.block, chunk, start, range.len) else {
                        result = Err(NoticeError::BadRange { block: range.block });
                        continue;
                    };
                    let id = self.key_id(range.block, range.offset);
                    self.stats.delivered_bytes += u64::from(range.len);
                    self.delivered.insert(
                        id,
                        DeliveredKey {
                            key,
                            binding: binding.clone(),
                            remaining: all,
                        },
                    );
                    self.delivered_expiry.push_back((deadline, id));
                    arrived.push(id);
                    n += 1;
                }
                for s in binding.slaves() {
                    self.pairing_mut(binding.master(), s).waiting += n;
                }
                result
            }
            Notice::Consumed {
                master,
                slave,
                count,
            } => {
                self.stats.keys_fetched_by_peer += u64::from(count);
                self.pairing_mut(&master, &slave).fetched_by_peer += u64::from(count);
                Ok(())
            }
            Notice::Borrow { bytes } => {
                self.lend(bytes);
                Ok(())
            }
            Notice::Grant { chunks } => {
                self.borrow_outstanding = false;
                let mut result = Ok(());
                for g in chunks {
                    if let Err(e) = self.accept_grant(g) {
                        result = Err(e);
                    }
                }
                result
            }
        }
    }

    /// Chunk index and start within the chunk of a peer-named range.
    /// The chunk and start of a range the peer names in a notice. The range
    /// must lie in one chunk and in bytes the peer may have taken: a chunk
    /// it owns, or below this node's cursor in one this node owns (keys it
    /// cut and then lent).
    fn locate(&self, range: &KeyRange) -> Result<(u32, u32), NoticeError> {
        let b = self
            .blocks
            .get(&range.block)
            .ok_or(NoticeError::UnknownBlock { block: range.block })?;
        let cb = self.config.chunk_bytes;
        let chunk = range.offset / cb;
        let start = range.offset % cb;
        let bad = NoticeError::BadRange { block: range.block };
        if range.len == 0 || chunk as usize >= b.chunks.len() {
            return Err(bad);
        }
        let end = u64::from(start) + u64::from(range.len);
        if end > u64::from(Self::chunk_len(b, chunk)) {
            return Err(bad);
        }
        let ch = &b.chunks[chunk as usize];
        if ch.owner == Owner::Mine && end > u64::from(ch.cursor) {
            return Err(NoticeError::NotPeerOwned {
                block: range.block,
                chunk,
            });
        }
        Ok((chunk, start))
    }

    /// The peer decided on `block`; it decides in block order, so blocks
    /// before it that it never announced it will never hold: drop them.
    fn peer_passed(&mut self, block: u64) {
        if self.peer_high.is_some_and(|h| h >= block) {
            return;
        }
        self.peer_high = Some(block);
        let rest = self.unready.split_off(&block);
        let skipped = std::mem::replace(&mut self.unready, rest);
        for b in skipped {
            self.drop_block(b);
        }
    }

    fn drop_block(&mut self, block: u64) {
        let Some(b) = self.blocks.remove(&block) else {
            return;
        };
        self.unready.remove(&block);
        for (i, ch) in b.chunks.iter().enumerate() {
            if let Some(buf) = &ch.bytes {
                let size = buf.len() as u64;
                self.stats.chunk_bytes -= size;
                self.stats.bytes_dropped += u64::from(ch.live());
                if ch.owner == Owner::Mine {
                    let rest = u64::from((buf.len() as u32).saturating_sub(ch.cursor));
                    if b.peer_has {
                        self.stats.fresh_bytes -= rest;
                        self.usable.remove(&(block, i as u32));
                    } else {
                        self.stats.pending_bytes -= rest;
                    }
                }
                #[cfg(feature = "model")]
                self.audit.push(KeyRange {
                    block,
                    offset: i as u32 * self.config.chunk_bytes,
                    len: buf.len() as u32,
                });
            }
        }
        self.stats.blocks_lost += 1;
        // Dropping `b` zeroizes every buffer.
    }

    /// Gives up to about `bytes` of the newest usable chunks to the peer.
    fn lend(&mut self, bytes: u64) {
        let mut granted = Vec::new();
        let mut total = 0u64;
        // Keep at least the low-water mark for ourselves.
        while total < bytes && self.stats.fresh_bytes > self.config.borrow_low_water {
            let Some(&(b, c)) = self.usable.last() else {
                break;
            };
            let rem = self.remaining(b, c);
            let Some(block) = self.blocks.get_mut(&b) else {
                // Cannot happen (a usable chunk's block is held); never
                // worth a panic on a peer's request.
                self.usable.remove(&(b, c));
                continue;
            };
            let ch = &mut block.chunks[c as usize];
            let from = c * self.config.chunk_bytes + ch.cursor;
            ch.owner = Owner::Peer;
            self.usable.remove(&(b, c));
            self.stats.fresh_bytes -= u64::from(rem);
            self.stats.chunks_lent += 1;
            total += u64::from(rem);
            granted.push(GrantedChunk {
                block: b,
                chunk: c,
                from,
            });
        }
        self.notices.push_back(Notice::Grant { chunks: granted });
    }

    fn accept_grant(&mut self, g: GrantedChunk) -> Result<(), NoticeError> {
        let cb = self.config.chunk_bytes;
        let b = self
            .blocks
            .get_mut(&g.block)
            .ok_or(NoticeError::UnknownBlock { block: g.block })?;
        let ch = b
            .chunks
            .get_mut(g.chunk as usize)
            .ok_or(NoticeError::BadRange { block: g.block })?;
        if ch.owner != Owner::Peer {
            return Err(NoticeError::NotPeerOwned {
                block: g.block,
                chunk: g.chunk,
            });
        }
        let Some(buf) = ch.bytes.as_ref() else {
            return Ok(()); // nothing left of it here
        };
        let len = buf.len() as u32;
        let start = g.chunk * cb;
        // The granted rest must be whole here: the peer cannot hand over
        // bytes it already delivered or dropped.
        if g.from < start
            || g.from - start > len
            || ch.gone.slice((g.from - start) as usize..).count_ones() != 0
        {
            return Err(NoticeError::BadRange { block: g.block });
        }
        ch.owner = Owner::Mine;
        ch.cursor = g.from - start;
        let rem = len - ch.cursor;
        self.stats.chunks_borrowed += 1;
        if rem > 0 {
            if b.peer_has {
                self.usable.insert((g.block, g.chunk));
                self.stats.fresh_bytes += u64::from(rem);
            } else {
                self.stats.pending_bytes += u64::from(rem);
            }
        }
        Ok(())
    }

    /// The earliest time [`expire`](Self::expire) has work to do.
    #[must_use]
    pub fn next_expiry(&self) -> Option<Instant> {
        [
            self.expiry.front().map(|e| e.0),
            self.delivered_expiry.front().map(|e| e.0),
            self.reservation_expiry.first().map(|e| e.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Drops what is due at `now`: owned fresh material older than the key
    /// TTL (with notices), reservations past their TTL (with notices) and
    /// delivered keys nobody fetched in time (no notice: the owner already
    /// handed them out). Returns the number of keys and chunks dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(&(at, block)) = self.expiry.front() {
            if at > now {
                break;
            }
            self.expiry.pop_front();
            let owned: Vec<u32> = match self.blocks.get(&block) {
                Some(b) => (0..b.chunks.len() as u32)
                    .filter(|&c| b.chunks[c as usize].owner == Owner::Mine)
                    .collect(),
                None => continue,
            };
            for c in owned {
                self.drop_owned_tail(block, c);
                n += 1;
            }
        }
        while let Some(&(at, id)) = self.reservation_expiry.first() {
            if at > now {
                break;
            }
            let _ = self.release(ReservationId(id));
            n += 1;
        }
        while let Some(&(at, id)) = self.delivered_expiry.front() {
            if at > now {
                break;
            }
            self.delivered_expiry.pop_front();
            if let Some(e) = self.delivered.remove(&id) {
                let len = e.key.len() as u64;
                self.stats.delivered_bytes -= len;
                self.stats.keys_expired += 1;
                for (i, s) in e.binding.slaves().iter().enumerate() {
                    if e.remaining & (1 << i) != 0
                        && let Some(p) = self
                            .pairings
                            .get_mut(e.binding.master())
                            .and_then(|m| m.get_mut(s.as_str()))
                    {
                        p.waiting = p.waiting.saturating_sub(1);
                    }
                }
                n += 1;
            }
        }
        n
    }

    /// Zeroizes and forgets everything (blocks, reservations, delivered keys,
    /// queued notices). Cumulative counters are kept; `wipes` counts up.
    pub fn wipe(&mut self) {
        self.blocks.clear();
        self.usable.clear();
        self.peer_ahead.clear();
        self.peer_high = None;
        self.unready.clear();
        self.last_block = None;
        self.expiry.clear();
        self.delivered.clear();
        self.delivered_expiry.clear();
        self.reservations.clear();
        self.reservation_expiry.clear();
        for p in self.pairings.values_mut().flat_map(|m| m.values_mut()) {
            p.waiting = 0;
        }
        self.notices.clear();
        self.borrow_outstanding = false;
        let s = &mut self.stats;
        s.chunk_bytes = 0;
        s.fresh_bytes = 0;
        s.pending_bytes = 0;
        s.reserved_bytes = 0;
        s.reserved_keys = 0;
        s.delivered_bytes = 0;
        s.wipes += 1;
    }

    /// Block IDs held, in no particular order (for audits and tests).
    pub fn block_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.blocks.keys().copied()
    }

    /// Test-only: turns the ownership rule off, so that this node believes it
    /// owns every chunk. Exists to show that the model check catches it.
    #[cfg(feature = "model")]
    pub fn disable_ownership_rule(&mut self) {
        self.ownership_rule = false;
    }

    /// Test-only: a copy of the bytes still buffered for chunk `chunk` of
    /// `block` (`None` once the chunk is finished and its buffer freed), to
    /// check that ranges that left the store were zeroized.
    #[cfg(feature = "model")]
    pub fn chunk_buffer(&self, block: u64, chunk: u32) -> Option<Vec<u8>> {
        let b = self.blocks.get(&block)?;
        b.chunks
            .get(chunk as usize)?
            .bytes
            .as_ref()
            .map(|x| x.to_vec())
    }

    /// Test-only: the ranges dropped here without being handed out since the
    /// last call (wipes excluded).
    #[cfg(feature = "model")]
    pub fn take_audit(&mut self) -> Vec<KeyRange> {
        std::mem::take(&mut self.audit)
    }
}

impl core::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyStore")
            .field("role", &self.config.role)
            .field("blocks", &self.blocks.len())
            .field("fresh_bytes", &self.stats.fresh_bytes)
            .field("delivered_keys", &self.delivered.len())
            .finish_non_exhaustive()
    }
}
