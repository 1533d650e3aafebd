//! [`KeyStore`]: the key material of one link on one node.
//!
//! The store is a composition of sub-states, each in its own module with
//! its own tests: the material and its ownership ([`Blocks`]), the block
//! sequence and the peer's announcements ahead of it ([`PeerView`]), keys
//! waiting for slaves ([`DeliveredKeys`]), reservations, per-pairing
//! counters ([`Pairings`]) and the borrowing side of lending ([`Lending`]).
//! This module sequences them and turns what they change into notices and
//! statistics.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use qkd_core::machine::ConfigError;
use qkd_core::{BlockId, KeyId, SecretKey};

use crate::chunks::Blocks;
use crate::config::StoreConfig;
use crate::delivered::DeliveredKeys;
use crate::lending::Lending;
use crate::notice::{Binding, GrantedChunk, KeyPieces, KeyRange, MAX_KEY_PIECES, Notice};
use crate::peer::{Decision, PeerView, Placement};
use crate::reservations::{ReservationId, Reservations};
use crate::stats::{PairingStats, Pairings, StoreStats};
use crate::{LookupError, NoticeError, StoreError, TakeError};

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

/// The key material of one link on one node.
///
/// Final key blocks go in with [`insert_block`](Self::insert_block) in the
/// same order on both nodes; keys of any whole number of bytes up to
/// [`StoreConfig::max_key_bytes`] (one piece of a chunk, or pieces of
/// several chunks for a key larger than a chunk: see [`KeyPieces`]) come
/// out of [`take`](Self::take) on the node that owns the material and of
/// [`lookup`](Self::lookup) on the other. Every change the
/// peer must mirror is queued as a [`Notice`] ([`poll_notice`](Self::poll_notice));
/// the peer's notices go into [`apply`](Self::apply).
///
/// # Ownership
///
/// Each block is cut into chunks of `chunk_bytes`, and each chunk has one
/// owner: at insertion the node whose [`StoreRole`](crate::StoreRole)
/// matches the parity of `block + chunk`, so both nodes own about half of
/// every link's material whatever the block size. Only the owner of a
/// chunk hands its bytes out fresh or drops them; the other node keeps a
/// copy, from which it serves the keys the owner announces as delivered,
/// and which it drops only when the owner says so (or on a wipe). A chunk
/// is usable once both nodes announced its block. Ownership moves only by
/// [`Notice::Grant`]: the lender gives the chunk up before the notice
/// leaves, so at every moment a chunk has at most one owner. When and how
/// much is lent is documented on [`StoreConfig`] ("Ownership and lending").
///
/// # The peer
///
/// The peer is authenticated but not trusted to be well behaved: every
/// notice is checked against what this store holds and knows (ranges within
/// bytes the peer may have taken, each byte once; grants of chunks the
/// peer owned, whole; consumed counts within keys taken here; blocks
/// announced not too far ahead), and every structure the peer's notices
/// create is bounded by the configuration. A notice that fails a check is
/// refused ([`apply`](Self::apply) returns the [`NoticeError`]; the few
/// found later come out of [`poll_peer_violation`](Self::poll_peer_violation)).
///
/// Every operation is O(log n) or amortised O(1) in the number of chunks and
/// keys held, plus the work proportional to the keys asked for.
pub struct KeyStore {
    config: StoreConfig,
    blocks: Blocks,
    peer: PeerView,
    /// Blocks in insertion order with the time their owned rest expires.
    expiry: VecDeque<(Instant, BlockId)>,
    delivered: DeliveredKeys,
    reservations: Reservations,
    pairings: Pairings,
    lending: Lending,
    notices: VecDeque<Notice>,
    /// Peer violations found outside [`apply`](Self::apply).
    violations: VecDeque<NoticeError>,
    /// Cumulative counters (the "held" figures come from the parts).
    stats: StoreStats,
    /// Ranges dropped since the last [`take_drop_audit`](Self::take_drop_audit), when on.
    audit: Option<Vec<KeyRange>>,
    /// Reused buffer of ranges dropped by one operation.
    scratch: Vec<KeyRange>,
}

impl KeyStore {
    /// An empty store.
    ///
    /// # Errors
    /// [`ConfigError`] if the configuration does not pass
    /// [`StoreConfig::validate`].
    pub fn new(config: StoreConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(KeyStore {
            blocks: Blocks::new(config.chunk_bytes, config.role),
            peer: PeerView::new(config.max_blocks_ahead),
            expiry: VecDeque::new(),
            delivered: DeliveredKeys::new(config.max_delivered_keys),
            reservations: Reservations::default(),
            pairings: Pairings::new(config.max_pairings),
            lending: Lending::new(config.borrow_low_water),
            notices: VecDeque::new(),
            violations: VecDeque::new(),
            stats: StoreStats::default(),
            audit: None,
            scratch: Vec::new(),
            config,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The ID both nodes give the key starting at byte `offset` of `block`.
    #[must_use]
    pub fn key_id(&self, block: BlockId, offset: u32) -> KeyId {
        KeyId::for_block(self.config.link.as_bytes(), block, u64::from(offset))
    }

    /// Largest key size in bits ([`StoreConfig::max_key_bytes`] × 8).
    #[must_use]
    pub fn max_key_bits(&self) -> usize {
        self.config.max_key_bytes as usize * 8
    }

    /// Counts of what the store holds and has done.
    #[must_use]
    pub fn stats(&self) -> StoreStats {
        let mut s = self.stats.clone();
        s.blocks = self.blocks.len();
        s.chunk_bytes = self.blocks.held_bytes();
        s.fresh_bytes = self.blocks.fresh_bytes();
        s.pending_bytes = self.blocks.pending_bytes();
        s.reserved_keys = self.reservations.keys();
        s.reserved_bytes = self.reservations.bytes();
        s.delivered_keys = self.delivered.len() as u64;
        s.delivered_bytes = self.delivered.bytes();
        s
    }

    /// Counts for the pairing (`master`, `slave`) (zero if not counted).
    #[must_use]
    pub fn pairing(&self, master: &str, slave: &str) -> PairingStats {
        self.pairings
            .get(master, slave)
            .cloned()
            .unwrap_or_default()
    }

    /// Pairings whose counters are kept (at most
    /// [`StoreConfig::max_pairings`]).
    #[must_use]
    pub fn pairings_counted(&self) -> usize {
        self.pairings.len()
    }

    /// The peer's announcements of blocks this node has not reached yet
    /// (at most [`StoreConfig::max_blocks_ahead`]).
    #[must_use]
    pub fn peer_blocks_ahead(&self) -> usize {
        self.peer.ahead_len()
    }

    /// Keys of `bits` bits this node could hand out fresh now (counted per
    /// chunk for keys of one chunk or less, by the pieces a take would cut
    /// for larger ones; O(number of usable chunks)).
    #[must_use]
    pub fn fresh_keys(&self, bits: usize) -> usize {
        if bits == 0 || !bits.is_multiple_of(8) || bits > self.max_key_bits() {
            return 0;
        }
        self.blocks.fresh_keys((bits / 8) as u32)
    }

    /// Bytes held (chunk buffers, reserved and delivered keys), as bounded by
    /// [`StoreConfig::capacity_bytes`].
    #[must_use]
    pub fn held_bytes(&self) -> u64 {
        self.blocks.held_bytes() + self.reservations.bytes() + self.delivered.bytes()
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

    /// The next violation of the peer found outside [`apply`](Self::apply):
    /// announcements made before this node's first block that the first
    /// insert showed to lie too far ahead.
    pub fn poll_peer_violation(&mut self) -> Option<NoticeError> {
        self.violations.pop_front()
    }

    /// Block IDs held, in no particular order (for audits and tests).
    pub fn block_ids(&self) -> impl Iterator<Item = BlockId> + '_ {
        self.blocks.ids()
    }

    // ---- blocks in ----

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
        block: BlockId,
        key: SecretKey,
    ) -> Result<InsertOutcome, StoreError> {
        self.peer.check_next(block)?;
        let len = key.len();
        if len == 0 || len > u32::MAX as usize {
            return Err(StoreError::BadBlockLength { len });
        }
        let decision = self.advance(block);
        match decision {
            Decision::Lost => {
                self.stats.blocks_lost += 1;
                return Ok(InsertOutcome::LostByPeer);
            }
            Decision::Skipped => {
                self.stats.blocks_lost += 1;
                return Ok(InsertOutcome::SkippedByPeer);
            }
            Decision::Have | Decision::Unknown => {}
        }
        let fits = |s: &Self| s.held_bytes() + len as u64 <= s.config.capacity_bytes;
        while !fits(self) {
            let Some((b, c)) = self.blocks.oldest_usable() else {
                break;
            };
            if let Some(range) = self.blocks.drop_owned_tail(b, c) {
                self.dropped_here(range);
            }
        }
        if !fits(self) {
            self.stats.blocks_lost += 1;
            self.notices.push_back(Notice::Lost { block });
            return Ok(InsertOutcome::OverCapacity);
        }
        self.blocks.insert(block, key.expose_secret());
        drop(key);
        self.stats.blocks_stored += 1;
        self.expiry.push_back((now + self.config.key_ttl, block));
        self.notices.push_back(Notice::Have { block });
        if decision == Decision::Have {
            self.blocks.mark_ready(block);
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
    pub fn discard_block(&mut self, block: BlockId) -> Result<(), StoreError> {
        self.peer.check_next(block)?;
        self.advance(block);
        self.stats.blocks_lost += 1;
        self.notices.push_back(Notice::Lost { block });
        Ok(())
    }

    /// Moves the block sequence on to `block`, reporting the peer's
    /// announcements that turn out to lie too far ahead.
    fn advance(&mut self, block: BlockId) -> Decision {
        let mut refused = Vec::new();
        let decision = self.peer.advance(block, &mut refused);
        for block in refused {
            self.stats.peer_violations += 1;
            if self.violations.len() < self.config.max_blocks_ahead as usize {
                self.violations
                    .push_back(NoticeError::BlockTooFarAhead { block });
            }
        }
        decision
    }

    // ---- keys out ----

    fn check_take(&self, count: usize, bits: usize) -> Result<u32, TakeError> {
        if bits == 0 || !bits.is_multiple_of(8) || bits > self.max_key_bits() {
            return Err(TakeError::InvalidSize {
                bits,
                max_bits: self.max_key_bits(),
            });
        }
        let max = self.config.max_keys_per_request as usize;
        if count == 0 || count > max {
            return Err(TakeError::InvalidCount { count, max });
        }
        Ok((bits / 8) as u32)
    }

    /// Cuts `count` keys of `len` bytes, all or nothing, with their IDs
    /// (derived from each key's first piece).
    fn cut(
        &mut self,
        count: usize,
        len: u32,
    ) -> Result<Vec<(KeyId, KeyPieces, SecretKey)>, TakeError> {
        let mut dropped = std::mem::take(&mut self.scratch);
        let link = self.config.link.as_bytes();
        let result = self.blocks.cut(count, len, &mut dropped, |pieces, key| {
            let first = pieces.first();
            let id = KeyId::for_block(link, first.block, u64::from(first.offset));
            (id, pieces, key)
        });
        for range in dropped.drain(..) {
            self.dropped_here(range);
        }
        self.scratch = dropped;
        self.maybe_borrow();
        result.map_err(|available| TakeError::Insufficient {
            requested: count,
            available,
        })
    }

    /// Hands out `count` fresh keys of `bits` bits for `binding` (ETSI 014
    /// `enc_keys`): all or nothing, removed from the store at once; queues
    /// [`Notice::Delivered`] so the peer keeps its copies for the slaves.
    ///
    /// `bits` is a multiple of 8 up to [`max_key_bits`](Self::max_key_bits).
    /// A key of at most one chunk is cut from one chunk (a chunk rest too
    /// short for the next key is dropped); a larger key is made of the
    /// pieces of several owned chunks, oldest first, possibly of several
    /// blocks, at most [`MAX_KEY_PIECES`] of them.
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
        cut: Vec<(KeyId, KeyPieces, SecretKey)>,
    ) -> Vec<(KeyId, SecretKey)> {
        self.stats.keys_taken += cut.len() as u64;
        self.pairings.taken(&binding, cut.len() as u64);
        let mut ranges = Vec::with_capacity(cut.len());
        let mut keys = Vec::with_capacity(cut.len());
        for (id, pieces, key) in cut {
            ranges.push(pieces);
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
        let deadline = now + self.config.reservation_ttl;
        Ok(self.reservations.add(keys, binding.clone(), deadline))
    }

    /// Hands out the reserved keys (as [`take`](Self::take) would have).
    ///
    /// # Errors
    /// [`TakeError::UnknownReservation`] if it was committed, released or expired.
    pub fn commit(&mut self, id: ReservationId) -> Result<Vec<(KeyId, SecretKey)>, TakeError> {
        let r = self
            .reservations
            .remove(id)
            .ok_or(TakeError::UnknownReservation)?;
        Ok(self.deliver(r.binding, r.keys))
    }

    /// Drops the reserved keys (zeroized here, dropped on the peer by notice).
    ///
    /// # Errors
    /// [`TakeError::UnknownReservation`] if it was committed, released or expired.
    pub fn release(&mut self, id: ReservationId) -> Result<(), TakeError> {
        let r = self
            .reservations
            .remove(id)
            .ok_or(TakeError::UnknownReservation)?;
        for (_, pieces, key) in r.keys {
            drop(key);
            for range in pieces.pieces() {
                self.dropped_here(*range);
            }
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
        let Some((key, binding)) = self.delivered.fetch(id, slave)? else {
            return Ok(None);
        };
        self.stats.keys_fetched += 1;
        self.pairings.fetched(binding.master(), slave);
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
        self.delivered.contains(id)
    }

    /// The binding of the delivered key `id` and whether `slave` may still
    /// fetch it ([`lookup`](Self::lookup) would hand it out), without
    /// fetching anything; `None` if the key does not wait here. Lets a
    /// caller check every key of a multi-key request before taking any.
    #[must_use]
    pub fn delivered_binding(&self, id: &KeyId, slave: &str) -> Option<(&Binding, bool)> {
        self.delivered.binding(id, slave)
    }

    // ---- the peer's notices ----

    /// Applies a notice from the peer at time `now`. Key IDs that became
    /// available for lookup are appended to `arrived`.
    ///
    /// # Errors
    /// [`NoticeError`] if the notice does not fit this store (the rest of the
    /// notice is still applied where it fits); counted in
    /// [`StoreStats::peer_violations`].
    pub fn apply(
        &mut self,
        now: Instant,
        notice: Notice,
        arrived: &mut Vec<KeyId>,
    ) -> Result<(), NoticeError> {
        let result = self.apply_checked(now, notice, arrived);
        if result.is_err() {
            self.stats.peer_violations += 1;
        }
        result
    }

    fn apply_checked(
        &mut self,
        now: Instant,
        notice: Notice,
        arrived: &mut Vec<KeyId>,
    ) -> Result<(), NoticeError> {
        match notice {
            Notice::Delivered { binding, keys } => self.on_delivered(now, &binding, keys, arrived),
            Notice::Consumed {
                master,
                slave,
                count,
            } => self.on_consumed(&master, &slave, count),
            Notice::Have { block } => self.on_announced(block, true),
            Notice::Lost { block } => self.on_announced(block, false),
            Notice::Drop { range } => self.on_drop(range),
            Notice::Borrow { bytes, fresh } => {
                self.on_borrow(bytes, fresh);
                Ok(())
            }
            Notice::Grant { chunks } => self.on_grant(chunks),
        }
    }

    /// The peer handed out keys: keep them for the slaves of `binding`.
    /// Each key is checked and applied whole: a key with a bad piece is
    /// refused and none of its bytes leave.
    fn on_delivered(
        &mut self,
        now: Instant,
        binding: &Arc<Binding>,
        keys: Vec<KeyPieces>,
        arrived: &mut Vec<KeyId>,
    ) -> Result<(), NoticeError> {
        let deadline = now + self.config.delivered_ttl;
        let mut result = Ok(());
        let mut stored = 0u64;
        // Keys that make room for these are taken off their pairings after
        // these are counted (they may be of the same one).
        let mut evicted = Vec::new();
        for pieces in keys {
            let key = if pieces.piece_count() == 1 {
                let range = pieces.first();
                self.blocks.locate(&range).and_then(|(chunk, start)| {
                    self.blocks
                        .zero_range(range.block, chunk, start, range.len)
                        .ok_or(NoticeError::BadRange { block: range.block })
                })
            } else {
                self.take_pieces(&pieces)
            };
            let key = match key {
                Ok(key) => key,
                Err(e) => {
                    result = Err(e);
                    continue;
                }
            };
            let first = pieces.first();
            let id = self.key_id(first.block, first.offset);
            self.delivered
                .insert(id, key, binding.clone(), deadline, |b, remaining| {
                    evicted.push((Arc::clone(b), remaining));
                });
            arrived.push(id);
            stored += 1;
        }
        if stored > 0 {
            // The keys wait whether or not their pairing is counted; a
            // pairing is never created for a notice with no key.
            if let Err(e) = self.pairings.delivered(binding, stored) {
                result = Err(e);
            }
        }
        for (b, remaining) in evicted {
            self.pairings.expired(&b, remaining);
            self.stats.keys_expired += 1;
        }
        result
    }

    /// The bytes of a key of several pieces the peer delivered, gathered in
    /// order into one buffer of the key's size; every piece is checked
    /// first (within one chunk of bytes the peer may have taken, every byte
    /// still here, no byte named twice), so a refused key changes nothing.
    fn take_pieces(&mut self, pieces: &KeyPieces) -> Result<SecretKey, NoticeError> {
        let first = pieces.first();
        let len = pieces.len();
        if pieces.piece_count() > MAX_KEY_PIECES || len > u64::from(crate::MAX_KEY_BYTES) {
            return Err(NoticeError::OversizedKey {
                block: first.block,
                pieces: pieces.piece_count(),
                bytes: len,
            });
        }
        let mut located = Vec::with_capacity(pieces.piece_count());
        for range in pieces.pieces() {
            let (chunk, start) = self.blocks.locate(range)?;
            if !self.blocks.is_whole(range.block, chunk, start, range.len) {
                return Err(NoticeError::BadRange { block: range.block });
            }
            located.push((*range, chunk, start));
        }
        // No byte twice: sorted, each piece ends before the next begins.
        let mut sorted: Vec<KeyRange> = pieces.pieces().copied().collect();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            if w[0].block == w[1].block && w[0].end() > u64::from(w[1].offset) {
                return Err(NoticeError::BadRange { block: w[1].block });
            }
        }
        let mut key = zeroize::Zeroizing::new(Vec::with_capacity(len as usize));
        for (range, chunk, start) in located {
            // Checked above: whole, and no other piece touches these bytes.
            self.blocks
                .zero_range_with(range.block, chunk, start, range.len, |bytes| {
                    key.extend_from_slice(bytes);
                });
        }
        Ok(SecretKey::from_vec(std::mem::take(&mut *key)))
    }

    /// The peer's slave fetched keys this node took.
    fn on_consumed(&mut self, master: &str, slave: &str, count: u32) -> Result<(), NoticeError> {
        self.pairings.consumed(master, slave, count)?;
        self.stats.keys_fetched_by_peer += u64::from(count);
        Ok(())
    }

    /// The peer stored (`has`) or will never hold `block`.
    #[inline(never)]
    fn on_announced(&mut self, block: BlockId, has: bool) -> Result<(), NoticeError> {
        let placement = self.peer.announce(block, has)?;
        self.peer_passed(block);
        if placement == Placement::Ahead {
            return Ok(());
        }
        if has {
            if self.blocks.mark_ready(block) {
                self.maybe_borrow();
            }
        } else if self.blocks.contains(block) {
            if self.blocks.is_ready(block) {
                return Err(NoticeError::LostAfterHave { block });
            }
            self.drop_block(block);
        }
        Ok(())
    }

    /// The peer dropped bytes of a chunk it owns.
    #[inline(never)]
    fn on_drop(&mut self, range: KeyRange) -> Result<(), NoticeError> {
        if !self.blocks.contains(range.block) {
            // A block this node never stored or already dropped whole
            // (the peer drops its own chunks of an unready block too).
            return Ok(());
        }
        let (chunk, start) = self.blocks.locate(&range)?;
        self.blocks
            .zero_range(range.block, chunk, start, range.len)
            .ok_or(NoticeError::BadRange { block: range.block })?;
        self.stats.bytes_dropped += u64::from(range.len);
        self.audit_drop(range);
        Ok(())
    }

    /// The peer asks to borrow: lend by the rule, answer with a grant.
    #[inline(never)]
    fn on_borrow(&mut self, bytes: u64, fresh: u64) {
        let granted = self.blocks.lend(bytes, fresh);
        self.stats.chunks_lent += granted.len() as u64;
        self.notices.push_back(Notice::Grant { chunks: granted });
    }

    /// The peer answered this node's borrow.
    #[inline(never)]
    fn on_grant(&mut self, chunks: Vec<GrantedChunk>) -> Result<(), NoticeError> {
        self.lending.answered();
        let mut result = Ok(());
        for g in chunks {
            match self.blocks.accept_grant(g) {
                Ok(()) => self.stats.chunks_borrowed += 1,
                Err(e) => result = Err(e),
            }
        }
        result
    }

    /// The peer decided on `block`; it decides in block order, so blocks
    /// before it that it never announced it will never hold: drop them.
    fn peer_passed(&mut self, block: BlockId) {
        for b in self.blocks.unready_before(block) {
            self.drop_block(b);
        }
    }

    fn drop_block(&mut self, block: BlockId) {
        let audit = &mut self.audit;
        let Some(dropped) = self.blocks.drop_block(block, |range| {
            if let Some(a) = audit {
                a.push(range);
            }
        }) else {
            return;
        };
        self.stats.bytes_dropped += dropped.live;
        self.stats.blocks_lost += 1;
    }

    /// This node dropped `range` (owned here, never handed out): count it
    /// and tell the peer.
    #[inline(never)]
    fn dropped_here(&mut self, range: KeyRange) {
        self.stats.bytes_dropped += u64::from(range.len);
        self.audit_drop(range);
        self.notices.push_back(Notice::Drop { range });
    }

    fn audit_drop(&mut self, range: KeyRange) {
        if let Some(a) = &mut self.audit {
            a.push(range);
        }
    }

    fn maybe_borrow(&mut self) {
        if let Some(n) = self.lending.want(self.blocks.fresh_bytes()) {
            self.notices.push_back(n);
        }
    }

    // ---- time ----

    /// The earliest time [`expire`](Self::expire) has work to do.
    #[must_use]
    pub fn next_expiry(&self) -> Option<Instant> {
        [
            self.expiry.front().map(|e| e.0),
            self.delivered.next_deadline(),
            self.reservations.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Drops what is due at `now`: owned fresh material older than the key
    /// TTL (with notices), reservations past their TTL (with notices) and
    /// delivered keys nobody fetched in time (no notice: the owner already
    /// handed them out). Returns the number of keys and chunk rests dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        let mut dropped = std::mem::take(&mut self.scratch);
        while let Some(&(at, block)) = self.expiry.front() {
            if at > now {
                break;
            }
            self.expiry.pop_front();
            self.blocks.drop_owned_tails(block, |r| dropped.push(r));
        }
        n += dropped.len();
        for range in dropped.drain(..) {
            self.dropped_here(range);
        }
        self.scratch = dropped;
        while let Some(id) = self.reservations.due(now) {
            let _ = self.release(id);
            n += 1;
        }
        let (pairings, stats) = (&mut self.pairings, &mut self.stats);
        n += self.delivered.expire(now, |b, remaining| {
            pairings.expired(b, remaining);
            stats.keys_expired += 1;
        });
        n
    }

    /// Zeroizes and forgets everything: blocks, the block sequence and the
    /// peer's announcements, reservations, delivered keys, pairing
    /// counters, queued notices and violations. The cumulative counters of
    /// [`stats`](Self::stats) are kept; `wipes` counts up.
    pub fn wipe(&mut self) {
        self.blocks.clear();
        self.peer.clear();
        self.expiry.clear();
        self.delivered.clear();
        self.reservations.clear();
        self.pairings.clear();
        self.lending.clear();
        self.notices.clear();
        self.violations.clear();
        if let Some(a) = &mut self.audit {
            a.clear();
        }
        self.stats.wipes += 1;
    }

    // ---- audit hooks ----

    /// Records the ranges dropped here without being handed out from now on
    /// (by this node's expiry, capacity, fragments and releases, by the
    /// peer's drop notices, and whole blocks lost): key ranges only, never
    /// key bytes. For the model check of qkd-sync; costs memory until
    /// drained with [`take_drop_audit`](Self::take_drop_audit).
    #[doc(hidden)]
    pub fn enable_drop_audit(&mut self) {
        self.audit.get_or_insert_with(Vec::new);
    }

    /// The ranges recorded since the last call (none unless
    /// [`enable_drop_audit`](Self::enable_drop_audit) was called; wipes excluded).
    #[doc(hidden)]
    pub fn take_drop_audit(&mut self) -> Vec<KeyRange> {
        self.audit.as_mut().map(std::mem::take).unwrap_or_default()
    }
}

impl core::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyStore")
            .field("role", &self.config.role)
            .field("blocks", &self.blocks.len())
            .field("fresh_bytes", &self.blocks.fresh_bytes())
            .field("delivered_keys", &self.delivered.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::StoreRole;

    fn b(n: u64) -> BlockId {
        BlockId::new(n)
    }

    fn pair(chunk: u32) -> (KeyStore, KeyStore) {
        let cfg = |r| {
            StoreConfig::new("z", r)
                .with_chunk_bytes(chunk)
                .with_borrow_low_water(0)
        };
        (
            KeyStore::new(cfg(StoreRole::EvenChunks)).unwrap(),
            KeyStore::new(cfg(StoreRole::OddChunks)).unwrap(),
        )
    }

    fn carry(now: Instant, from: &mut KeyStore, to: &mut KeyStore) {
        let mut arrived = Vec::new();
        while let Some(n) = from.poll_notice() {
            to.apply(now, n, &mut arrived).unwrap();
        }
    }

    /// Every range that leaves the store is zeroized in its buffer at once.
    #[test]
    fn taken_delivered_and_dropped_ranges_are_zeroized() {
        let now = Instant::now();
        let (mut a, mut c) = pair(32);
        // Block 2: the even node owns chunk 0, the odd node chunk 1.
        let block = SecretKey::from_slice(&[0xff; 64]);
        a.insert_block(now, b(2), block.clone()).unwrap();
        c.insert_block(now, b(2), block).unwrap();
        carry(now, &mut a, &mut c);
        carry(now, &mut c, &mut a);
        let binding = Arc::new(Binding::pair("m", "s").unwrap());
        let keys = a.take(1, 64, &binding).unwrap();
        assert_eq!(keys[0].1.expose_secret(), &[0xff; 8]);
        let mut want = vec![0u8; 8];
        want.extend_from_slice(&[0xff; 24]);
        assert_eq!(
            a.blocks.chunk_buffer(b(2), 0).unwrap(),
            want,
            "owner zeroized the cut key"
        );
        carry(now, &mut a, &mut c);
        assert_eq!(
            c.blocks.chunk_buffer(b(2), 0).unwrap(),
            want,
            "peer zeroized its copy on delivery"
        );
        // The delivered copy of a's key leaves c through lookup.
        assert_eq!(
            c.lookup(&keys[0].0, "s").unwrap().unwrap().expose_secret(),
            &[0xff; 8]
        );
        assert!(!c.is_delivered(&keys[0].0));
        // A 24-byte take uses the rest of the chunk: finished and freed.
        a.take(1, 8 * 24, &binding).unwrap();
        assert_eq!(a.blocks.chunk_buffer(b(2), 0), None, "finished chunk freed");
        // Dropping the rest of c's chunk 1 by expiry zeroizes it on both.
        let later = now + c.config().key_ttl;
        c.take(1, 8 * 8, &binding).unwrap();
        carry(now, &mut c, &mut a);
        c.expire(later);
        assert_eq!(c.blocks.chunk_buffer(b(2), 1), None);
        carry(later, &mut c, &mut a);
        assert_eq!(
            a.blocks.chunk_buffer(b(2), 1),
            None,
            "peer copy freed after the drop notice"
        );
    }

    #[test]
    fn the_parts_stay_consistent_through_a_session() {
        let now = Instant::now();
        let (mut a, mut c) = pair(16);
        let binding = Arc::new(Binding::new("m", ["s1", "s2"]).unwrap());
        a.enable_drop_audit();
        for n in 1..=6u64 {
            let key = SecretKey::from_vec(vec![n as u8; 40]);
            a.insert_block(now, b(n), key.clone()).unwrap();
            c.insert_block(now, b(n), key).unwrap();
        }
        carry(now, &mut a, &mut c);
        carry(now, &mut c, &mut a);
        let r = a.reserve(now, 2, 64, &binding).unwrap();
        let keys = a.take(3, 96, &binding).unwrap();
        a.release(r).unwrap();
        carry(now, &mut a, &mut c);
        for (id, key) in &keys {
            assert_eq!(c.lookup(id, "s2").unwrap().as_ref(), Some(key));
        }
        carry(now, &mut c, &mut a);
        for s in [&a, &c] {
            s.blocks.check_invariants();
            let st = s.stats();
            assert_eq!(
                s.held_bytes(),
                st.chunk_bytes + st.reserved_bytes + st.delivered_bytes
            );
        }
        assert_eq!(a.pairing("m", "s2").fetched_by_peer, 3);
        assert_eq!(c.pairing("m", "s1").waiting, 3);
        assert!(!a.take_drop_audit().is_empty(), "the released keys");
        assert_eq!(a.stats().peer_violations + c.stats().peer_violations, 0);
        c.expire(now + Duration::from_secs(7200));
        assert_eq!(c.pairing("m", "s1").waiting, 0);
        a.wipe();
        a.blocks.check_invariants();
        assert_eq!(a.pairings_counted(), 0);
        assert_eq!(a.held_bytes(), 0);
        assert!(a.take_drop_audit().is_empty());
    }
}
