//! The key material of one store: blocks cut into chunks, who owns each
//! chunk, which bytes already left, and which chunks keys can be cut from.
//!
//! [`Blocks`] knows nothing of notices, statistics or time: it changes the
//! material and reports what it changed (the ranges dropped, the bytes
//! freed), and the [`KeyStore`](crate::KeyStore) turns that into notices and
//! counters.

use std::collections::BTreeSet;

use qkd_core::{BitVec, BlockId, SecretKey};
use zeroize::{Zeroize, Zeroizing};

use crate::NoticeError;
use crate::config::StoreRole;
use crate::id_hash::IdMap;
use crate::lending;
use crate::notice::{GrantedChunk, KeyPieces, KeyRange, MAX_KEY_PIECES};

/// Who may cut a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
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
    /// Length of the buffer (0 once freed).
    fn len(&self) -> u32 {
        self.bytes.as_ref().map_or(0, |b| b.len() as u32)
    }

    /// Bytes not yet zeroized.
    fn live(&self) -> u32 {
        (self.gone.len() - self.gone.count_ones()) as u32
    }

    /// Owned bytes not cut yet.
    fn uncut(&self) -> u32 {
        if self.owner == Owner::Mine {
            self.len().saturating_sub(self.cursor)
        } else {
            0
        }
    }
}

struct Block {
    chunks: Vec<Chunk>,
    /// Chunks not finished.
    open: u32,
    /// The peer announced it holds the block.
    peer_has: bool,
}

/// What dropping a whole block freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockDropped {
    /// Bytes that had not left yet (now zeroized).
    pub(crate) live: u64,
}

/// The blocks a store holds, chunk by chunk.
///
/// Invariants (checked by the unit tests after every operation):
/// `usable` holds exactly the chunks owned here, of blocks the peer holds,
/// with uncut bytes; `fresh` is the sum of their uncut bytes and `pending`
/// the same sum over blocks the peer has not announced; `held` is the sum
/// of the buffers still allocated; `unready` holds the blocks the peer has
/// not announced.
pub(crate) struct Blocks {
    chunk_size: u32,
    role: StoreRole,
    blocks: IdMap<BlockId, Block>,
    /// Usable chunks owned here, oldest first.
    usable: BTreeSet<(BlockId, u32)>,
    /// Blocks held here that the peer has not announced.
    unready: BTreeSet<BlockId>,
    held: u64,
    fresh: u64,
    pending: u64,
}

impl Blocks {
    pub(crate) fn new(chunk_size: u32, role: StoreRole) -> Self {
        Blocks {
            chunk_size,
            role,
            blocks: IdMap::default(),
            usable: BTreeSet::new(),
            unready: BTreeSet::new(),
            held: 0,
            fresh: 0,
            pending: 0,
        }
    }

    /// Blocks held.
    pub(crate) fn len(&self) -> usize {
        self.blocks.len()
    }

    pub(crate) fn contains(&self, block: BlockId) -> bool {
        self.blocks.contains_key(&block)
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = BlockId> + '_ {
        self.blocks.keys().copied()
    }

    /// Bytes in chunk buffers.
    pub(crate) fn held_bytes(&self) -> u64 {
        self.held
    }

    /// Uncut bytes owned here of blocks the peer holds.
    pub(crate) fn fresh_bytes(&self) -> u64 {
        self.fresh
    }

    /// Uncut bytes owned here of blocks the peer has not announced.
    pub(crate) fn pending_bytes(&self) -> u64 {
        self.pending
    }

    /// Uncut bytes of chunk `chunk` of `block` (0 if not owned here).
    fn remaining(&self, block: BlockId, chunk: u32) -> u32 {
        self.blocks
            .get(&block)
            .and_then(|b| b.chunks.get(chunk as usize))
            .map_or(0, Chunk::uncut)
    }

    /// Keys of `len` bytes that can be cut now: counted per chunk for a
    /// key of at most one chunk, by [`plan_pieces`](Self::plan_pieces)
    /// for a larger one.
    pub(crate) fn fresh_keys(&self, len: u32) -> usize {
        if len > self.chunk_size {
            return self.plan_pieces(usize::MAX, len);
        }
        self.usable
            .iter()
            .map(|&(b, c)| (self.remaining(b, c) / len) as usize)
            .sum()
    }

    /// How many keys of `len` bytes (up to `count`) can be made of pieces
    /// of the usable chunks, oldest first, each key of at most
    /// [`MAX_KEY_PIECES`] pieces: the walk [`cut`](Self::cut) makes, without
    /// changing anything. It stops at the first key that would need more
    /// pieces (material left in many small rests serves smaller keys).
    fn plan_pieces(&self, count: usize, len: u32) -> usize {
        let mut found = 0usize;
        let mut need = len;
        let mut pieces = 0usize;
        for &(b, c) in &self.usable {
            let mut rem = self.remaining(b, c);
            while rem > 0 {
                if pieces == MAX_KEY_PIECES {
                    return found;
                }
                let t = rem.min(need);
                pieces += 1;
                need -= t;
                rem -= t;
                if need == 0 {
                    found += 1;
                    if found >= count {
                        return found;
                    }
                    need = len;
                    pieces = 0;
                }
            }
        }
        found
    }

    /// Stores `bytes` as `block` (not held yet, 1 to `u32::MAX` bytes), cut
    /// into chunks owned by the rule of the role.
    pub(crate) fn insert(&mut self, block: BlockId, bytes: &[u8]) {
        let len = bytes.len();
        let size = self.chunk_size as usize;
        let n_chunks = len.div_ceil(size) as u32;
        let mut chunks = Vec::with_capacity(n_chunks as usize);
        for (c, piece) in bytes.chunks(size).enumerate() {
            let mine = self.role.owns_initially(block, c as u32);
            if mine {
                self.pending += piece.len() as u64;
            }
            chunks.push(Chunk {
                bytes: Some(Zeroizing::new(piece.to_vec())),
                owner: if mine { Owner::Mine } else { Owner::Peer },
                cursor: 0,
                gone: BitVec::zeros(piece.len()),
            });
        }
        self.held += len as u64;
        self.blocks.insert(
            block,
            Block {
                chunks,
                open: n_chunks,
                peer_has: false,
            },
        );
        self.unready.insert(block);
    }

    /// The peer holds `block`: its owned chunks become usable. Returns
    /// whether anything changed.
    pub(crate) fn mark_ready(&mut self, block: BlockId) -> bool {
        let Some(b) = self.blocks.get_mut(&block) else {
            return false;
        };
        if b.peer_has {
            return false;
        }
        b.peer_has = true;
        self.unready.remove(&block);
        let mut moved = 0u64;
        for (i, ch) in b.chunks.iter().enumerate() {
            let uncut = ch.uncut();
            if uncut > 0 {
                moved += u64::from(uncut);
                self.usable.insert((block, i as u32));
            }
        }
        self.pending -= moved;
        self.fresh += moved;
        true
    }

    /// Whether the peer announced `block` (false if not held).
    pub(crate) fn is_ready(&self, block: BlockId) -> bool {
        self.blocks.get(&block).is_some_and(|b| b.peer_has)
    }

    /// Blocks held that the peer has not announced, before `block`: the peer
    /// announces in block order, so it skipped them. They are removed from
    /// the unready set and returned for the caller to drop.
    pub(crate) fn unready_before(&mut self, block: BlockId) -> BTreeSet<BlockId> {
        let rest = self.unready.split_off(&block);
        std::mem::replace(&mut self.unready, rest)
    }

    /// Zeroizes `len` bytes at `start` (relative to the chunk) and returns a
    /// copy; frees the chunk when all of it left, and the block when all its
    /// chunks did. `None` (nothing changed) if any of the bytes left already.
    pub(crate) fn zero_range(
        &mut self,
        block: BlockId,
        chunk: u32,
        start: u32,
        len: u32,
    ) -> Option<SecretKey> {
        let mut key = None;
        self.zero_range_with(block, chunk, start, len, |bytes| {
            key = Some(SecretKey::from_slice(bytes));
        });
        key
    }

    /// Whether the `len` bytes at `start` of chunk `chunk` of `block` are all
    /// still here (none cut, delivered or dropped).
    pub(crate) fn is_whole(&self, block: BlockId, chunk: u32, start: u32, len: u32) -> bool {
        let Some(ch) = self
            .blocks
            .get(&block)
            .and_then(|b| b.chunks.get(chunk as usize))
        else {
            return false;
        };
        let (s, e) = (start as usize, start as usize + len as usize);
        e <= ch.len() as usize && ch.gone.slice(s..e).count_ones() == 0
    }

    /// As [`zero_range`](Self::zero_range), but hands the bytes to `copy`
    /// before they are zeroized instead of returning a key; returns whether
    /// it did (false: nothing changed).
    pub(crate) fn zero_range_with(
        &mut self,
        block: BlockId,
        chunk: u32,
        start: u32,
        len: u32,
        copy: impl FnOnce(&[u8]),
    ) -> bool {
        let Some(b) = self.blocks.get_mut(&block) else {
            return false;
        };
        let Some(ch) = b.chunks.get_mut(chunk as usize) else {
            return false;
        };
        let Some(buf) = ch.bytes.as_mut() else {
            return false;
        };
        let s = start as usize;
        let e = s + len as usize;
        if e > buf.len() || ch.gone.slice(s..e).count_ones() != 0 {
            return false;
        }
        copy(&buf[s..e]);
        buf[s..e].zeroize();
        let size = buf.len() as u64;
        for i in s..e {
            ch.gone.set(i, true);
        }
        if ch.live() == 0 {
            ch.bytes = None;
            b.open -= 1;
            self.held -= size;
            if b.open == 0 {
                self.blocks.remove(&block);
                self.unready.remove(&block);
            }
        }
        true
    }

    /// Drops `block` whole (zeroizing every buffer); `on_range` sees every
    /// chunk buffer that was still allocated, as a range of the block.
    pub(crate) fn drop_block(
        &mut self,
        block: BlockId,
        mut on_range: impl FnMut(KeyRange),
    ) -> Option<BlockDropped> {
        let b = self.blocks.remove(&block)?;
        self.unready.remove(&block);
        let mut live = 0u64;
        for (i, ch) in b.chunks.iter().enumerate() {
            let Some(buf) = &ch.bytes else {
                continue;
            };
            self.held -= buf.len() as u64;
            live += u64::from(ch.live());
            let uncut = u64::from(ch.uncut());
            if b.peer_has {
                if uncut > 0 {
                    self.fresh -= uncut;
                    self.usable.remove(&(block, i as u32));
                }
            } else {
                self.pending -= uncut;
            }
            on_range(KeyRange {
                block,
                offset: i as u32 * self.chunk_size,
                len: buf.len() as u32,
            });
        }
        // Dropping `b` zeroizes every buffer.
        Some(BlockDropped { live })
    }

    /// Drops the uncut rest of chunk `chunk` of `block` if it is owned here,
    /// and returns the range dropped (which the peer must drop too).
    #[inline(never)]
    pub(crate) fn drop_owned_tail(&mut self, block: BlockId, chunk: u32) -> Option<KeyRange> {
        let Some(b) = self.blocks.get_mut(&block) else {
            self.usable.remove(&(block, chunk));
            return None;
        };
        let ready = b.peer_has;
        let ch = b.chunks.get_mut(chunk as usize)?;
        let uncut = ch.uncut();
        if uncut == 0 {
            self.usable.remove(&(block, chunk));
            return None;
        }
        let cursor = ch.cursor;
        ch.cursor += uncut;
        if ready {
            self.usable.remove(&(block, chunk));
            self.fresh -= u64::from(uncut);
        } else {
            self.pending -= u64::from(uncut);
        }
        // The bytes after the cursor of an owned chunk are all live.
        drop(self.zero_range(block, chunk, cursor, uncut));
        Some(KeyRange {
            block,
            offset: chunk * self.chunk_size + cursor,
            len: uncut,
        })
    }

    /// Drops the uncut rest of every chunk of `block` owned here (expiry).
    pub(crate) fn drop_owned_tails(&mut self, block: BlockId, mut on_range: impl FnMut(KeyRange)) {
        let Some(n) = self.blocks.get(&block).map(|b| b.chunks.len() as u32) else {
            return;
        };
        for c in 0..n {
            if let Some(r) = self.drop_owned_tail(block, c) {
                on_range(r);
            }
        }
    }

    /// The oldest usable chunk.
    pub(crate) fn oldest_usable(&self) -> Option<(BlockId, u32)> {
        self.usable.first().copied()
    }

    /// The chunk and start within the chunk of a range the peer names in a
    /// notice. The range must lie in one chunk and in bytes the peer may
    /// have taken: a chunk it owns, or below this node's cursor in one this
    /// node owns (keys it cut and then lent).
    pub(crate) fn locate(&self, range: &KeyRange) -> Result<(u32, u32), NoticeError> {
        let b = self
            .blocks
            .get(&range.block)
            .ok_or(NoticeError::UnknownBlock { block: range.block })?;
        let chunk = range.offset / self.chunk_size;
        let start = range.offset % self.chunk_size;
        let bad = NoticeError::BadRange { block: range.block };
        let ch = b.chunks.get(chunk as usize).ok_or(bad.clone())?;
        let end = u64::from(start) + u64::from(range.len);
        if range.len == 0 || end > u64::from(ch.len()) {
            return Err(bad);
        }
        if ch.owner == Owner::Mine && end > u64::from(ch.cursor) {
            return Err(NoticeError::NotPeerOwned {
                block: range.block,
                chunk,
            });
        }
        Ok((chunk, start))
    }

    /// Cuts `count` keys of `len` bytes from the oldest usable chunks, all or
    /// nothing, each made into an output element by `make`.
    ///
    /// A key of at most one chunk is one piece: chunks passed over with less
    /// than `len` bytes left have their rest dropped (the ranges go to
    /// `dropped`). A larger key is made of pieces of consecutive usable
    /// chunks (see [`plan_pieces`](Self::plan_pieces)); nothing is dropped.
    ///
    /// # Errors
    /// The keys available if fewer than `count` (nothing changed then).
    pub(crate) fn cut<T>(
        &mut self,
        count: usize,
        len: u32,
        dropped: &mut Vec<KeyRange>,
        make: impl FnMut(KeyPieces, SecretKey) -> T,
    ) -> Result<Vec<T>, usize> {
        if len > self.chunk_size {
            return self.cut_pieces(count, len, make);
        }
        self.cut_single(count, len, dropped, make)
    }

    /// [`cut`](Self::cut) of keys of at most one chunk.
    fn cut_single<T>(
        &mut self,
        count: usize,
        len: u32,
        dropped: &mut Vec<KeyRange>,
        mut make: impl FnMut(KeyPieces, SecretKey) -> T,
    ) -> Result<Vec<T>, usize> {
        // Plan without changing anything.
        let mut found = 0usize;
        for &(b, c) in &self.usable {
            found += (self.remaining(b, c) / len) as usize;
            if found >= count {
                break;
            }
        }
        if found < count {
            return Err(found);
        }
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let Some(&(b, c)) = self.usable.first() else {
                break;
            };
            let Some(ch) = self
                .blocks
                .get_mut(&b)
                .and_then(|blk| blk.chunks.get_mut(c as usize))
            else {
                // Not reachable (a usable chunk's block is held); never
                // worth a panic.
                self.usable.remove(&(b, c));
                continue;
            };
            let rem = ch.uncut();
            if rem < len {
                dropped.extend(self.drop_owned_tail(b, c));
                continue;
            }
            let cursor = ch.cursor;
            ch.cursor += len;
            self.fresh -= u64::from(len);
            if rem == len {
                self.usable.remove(&(b, c));
            }
            let range = KeyRange {
                block: b,
                offset: c * self.chunk_size + cursor,
                len,
            };
            // The bytes after the cursor of an owned chunk are all live.
            if let Some(key) = self.zero_range(b, c, cursor, len) {
                out.push(make(KeyPieces::single(range), key));
            }
        }
        Ok(out)
    }

    /// [`cut`](Self::cut) of keys larger than a chunk: each key takes the
    /// uncut bytes of the oldest usable chunks in order until it is whole,
    /// and its bytes are gathered in one buffer of its final size (no
    /// reallocation leaves a copy behind).
    fn cut_pieces<T>(
        &mut self,
        count: usize,
        len: u32,
        mut make: impl FnMut(KeyPieces, SecretKey) -> T,
    ) -> Result<Vec<T>, usize> {
        let found = self.plan_pieces(count, len);
        if found < count {
            return Err(found);
        }
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let mut key = Zeroizing::new(Vec::with_capacity(len as usize));
            let mut pieces = Vec::new();
            let mut need = len;
            while need > 0 {
                let Some(&(b, c)) = self.usable.first() else {
                    // Not reachable: the plan found the bytes.
                    return Ok(out);
                };
                let Some(ch) = self
                    .blocks
                    .get_mut(&b)
                    .and_then(|blk| blk.chunks.get_mut(c as usize))
                else {
                    self.usable.remove(&(b, c));
                    continue;
                };
                let rem = ch.uncut();
                let t = rem.min(need);
                let cursor = ch.cursor;
                ch.cursor += t;
                self.fresh -= u64::from(t);
                if t == rem {
                    self.usable.remove(&(b, c));
                }
                if t == 0 {
                    continue;
                }
                need -= t;
                pieces.push(KeyRange {
                    block: b,
                    offset: c * self.chunk_size + cursor,
                    len: t,
                });
                // The bytes after the cursor of an owned chunk are all live.
                self.zero_range_with(b, c, cursor, t, |bytes| key.extend_from_slice(bytes));
            }
            if let Some(pieces) = KeyPieces::new(pieces) {
                let key = SecretKey::from_vec(std::mem::take(&mut *key));
                out.push(make(pieces, key));
            }
        }
        Ok(out)
    }

    /// Gives the peer whole usable chunks, newest first, by the lending
    /// rule ([`lending::may_lend`]) for a request of `requested` bytes from
    /// a peer that owns `peer_fresh`. The chunks are given up here before
    /// the grant is returned.
    pub(crate) fn lend(&mut self, requested: u64, peer_fresh: u64) -> Vec<GrantedChunk> {
        let mut granted = Vec::new();
        let mut lent = 0u64;
        while let Some(&(b, c)) = self.usable.last() {
            let rem = self.remaining(b, c);
            if !lending::may_lend(requested, peer_fresh, self.fresh + lent, lent, rem) {
                break;
            }
            self.usable.remove(&(b, c));
            let Some(ch) = self
                .blocks
                .get_mut(&b)
                .and_then(|blk| blk.chunks.get_mut(c as usize))
            else {
                continue;
            };
            ch.owner = Owner::Peer;
            self.fresh -= u64::from(rem);
            lent += u64::from(rem);
            granted.push(GrantedChunk {
                block: b,
                chunk: c,
                from: c * self.chunk_size + ch.cursor,
            });
        }
        granted
    }

    /// Takes ownership of a chunk the peer lent.
    ///
    /// # Errors
    /// The chunk is not held here, not the peer's, or its granted rest is
    /// not whole here.
    pub(crate) fn accept_grant(&mut self, g: GrantedChunk) -> Result<(), NoticeError> {
        let size = self.chunk_size;
        let b = self
            .blocks
            .get_mut(&g.block)
            .ok_or(NoticeError::UnknownBlock { block: g.block })?;
        let ready = b.peer_has;
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
        let start = g.chunk.checked_mul(size);
        // The granted rest must be whole here: the peer cannot hand over
        // bytes it already delivered or dropped.
        let from = match start {
            Some(start) if g.from >= start && g.from - start <= len => g.from - start,
            _ => return Err(NoticeError::BadRange { block: g.block }),
        };
        if ch.gone.slice(from as usize..).count_ones() != 0 {
            return Err(NoticeError::BadRange { block: g.block });
        }
        ch.owner = Owner::Mine;
        ch.cursor = from;
        let rem = len - from;
        if rem > 0 {
            if ready {
                self.usable.insert((g.block, g.chunk));
                self.fresh += u64::from(rem);
            } else {
                self.pending += u64::from(rem);
            }
        }
        Ok(())
    }

    /// Forgets everything (every buffer zeroized).
    pub(crate) fn clear(&mut self) {
        self.blocks.clear();
        self.usable.clear();
        self.unready.clear();
        self.held = 0;
        self.fresh = 0;
        self.pending = 0;
    }

    /// A copy of the bytes still buffered for a chunk (tests of zeroization).
    #[cfg(test)]
    pub(crate) fn chunk_buffer(&self, block: BlockId, chunk: u32) -> Option<Vec<u8>> {
        let b = self.blocks.get(&block)?;
        b.chunks
            .get(chunk as usize)?
            .bytes
            .as_ref()
            .map(|x| x.to_vec())
    }

    /// Recomputes every counter and set from the chunks and compares.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let (mut held, mut fresh, mut pending) = (0u64, 0u64, 0u64);
        let mut usable = BTreeSet::new();
        let mut unready = BTreeSet::new();
        for (&id, b) in &self.blocks {
            let mut open = 0;
            for (i, ch) in b.chunks.iter().enumerate() {
                if ch.bytes.is_some() {
                    open += 1;
                    assert!(ch.live() > 0, "a chunk with nothing live is freed");
                }
                held += u64::from(ch.len());
                let uncut = u64::from(ch.uncut());
                if b.peer_has {
                    fresh += uncut;
                    if uncut > 0 {
                        usable.insert((id, i as u32));
                    }
                } else {
                    pending += uncut;
                }
            }
            assert_eq!(open, b.open);
            assert!(open > 0, "a block with no open chunk is freed");
            if !b.peer_has {
                unready.insert(id);
            }
        }
        assert_eq!(held, self.held, "held");
        assert_eq!(fresh, self.fresh, "fresh");
        assert_eq!(pending, self.pending, "pending");
        assert_eq!(usable, self.usable, "usable");
        assert_eq!(unready, self.unready, "unready");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: u64) -> BlockId {
        BlockId::new(n)
    }

    fn material(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 1) as u8).collect()
    }

    /// Even-chunks node, 64-byte chunks, block 2 of 256 bytes: owns chunks 0 and 2.
    fn store_with_block() -> Blocks {
        let mut s = Blocks::new(64, StoreRole::EvenChunks);
        s.insert(b(2), &material(256));
        s.check_invariants();
        s
    }

    #[test]
    fn insert_splits_ownership_and_waits_for_the_peer() {
        let mut s = store_with_block();
        assert_eq!(s.held_bytes(), 256);
        assert_eq!(s.pending_bytes(), 128);
        assert_eq!(s.fresh_bytes(), 0);
        assert_eq!(s.fresh_keys(8), 0);
        assert!(!s.is_ready(b(2)));
        assert!(s.mark_ready(b(2)));
        assert!(!s.mark_ready(b(2)), "once");
        s.check_invariants();
        assert_eq!(s.fresh_bytes(), 128);
        assert_eq!(s.fresh_keys(32), 4);
        assert_eq!(s.oldest_usable(), Some((b(2), 0)));
        // An odd block: the even-chunks node owns chunks 1 and 3.
        s.insert(b(3), &material(200));
        s.mark_ready(b(3));
        s.check_invariants();
        assert_eq!(s.fresh_bytes(), 128 + 64 + 8);
    }

    #[test]
    fn cut_takes_the_oldest_bytes_and_drops_fragments() {
        let mut s = store_with_block();
        s.mark_ready(b(2));
        let mut dropped = Vec::new();
        assert_eq!(s.cut(5, 32, &mut dropped, |r, k| (r, k)).unwrap_err(), 4);
        s.check_invariants();
        let keys = s.cut(1, 40, &mut dropped, |r, k| (r, k)).unwrap();
        assert_eq!(keys[0].0.first().offset, 0);
        assert_eq!(keys[0].1.expose_secret(), &material(256)[..40]);
        // The next 40-byte key does not fit in chunk 0's 24 bytes.
        let keys = s.cut(1, 40, &mut dropped, |r, k| (r, k)).unwrap();
        assert_eq!(keys[0].0.first().offset, 128);
        assert_eq!(
            dropped,
            [KeyRange {
                block: b(2),
                offset: 40,
                len: 24
            }]
        );
        s.check_invariants();
        assert_eq!(s.chunk_buffer(b(2), 0), None, "chunk 0 finished and freed");
        assert_eq!(s.held_bytes(), 192);
    }

    #[test]
    fn keys_larger_than_a_chunk_are_pieces_of_owned_chunks_across_blocks() {
        // Owned by the even-chunks node: chunks 0 and 2 of block 2, chunk 1
        // of block 3 (all of 64 bytes, block 3 is 96 bytes: chunk 1 is 32).
        let mut s = store_with_block();
        s.insert(b(3), &material(96));
        s.mark_ready(b(2));
        s.mark_ready(b(3));
        s.check_invariants();
        assert_eq!(s.fresh_bytes(), 160);
        // 40 bytes cut first: the 24 left of chunk 0 start the next key.
        s.cut(1, 40, &mut Vec::new(), |_, _| ()).unwrap();
        assert_eq!(s.fresh_keys(100), 1, "120 bytes left");
        assert_eq!(s.plan_pieces(2, 100), 1);
        let mut dropped = Vec::new();
        assert_eq!(
            s.cut(2, 100, &mut dropped, |p, k| (p, k)).unwrap_err(),
            1,
            "all or nothing"
        );
        s.check_invariants();
        assert_eq!(s.fresh_bytes(), 120, "nothing changed");
        let keys = s.cut(1, 100, &mut dropped, |p, k| (p, k)).unwrap();
        assert!(dropped.is_empty(), "a key of pieces drops no fragment");
        let (pieces, key) = &keys[0];
        let r = |block, offset, len| KeyRange {
            block: b(block),
            offset,
            len,
        };
        let got: Vec<KeyRange> = pieces.pieces().copied().collect();
        assert_eq!(got, [r(2, 40, 24), r(2, 128, 64), r(3, 64, 12)]);
        let m2 = material(256);
        let m3 = material(96);
        let mut want = m2[40..64].to_vec();
        want.extend_from_slice(&m2[128..192]);
        want.extend_from_slice(&m3[64..76]);
        assert_eq!(key.expose_secret(), want.as_slice());
        s.check_invariants();
        assert_eq!(s.fresh_bytes(), 20);
        assert_eq!(s.chunk_buffer(b(2), 0), None, "chunk 0 finished");
        let c3 = s.chunk_buffer(b(3), 1).unwrap();
        assert_eq!(&c3[..12], &[0; 12], "zeroized where cut");
    }

    #[test]
    fn a_key_of_more_pieces_than_allowed_is_not_planned() {
        // One-byte blocks: every other one is owned here, one piece each.
        let mut s = Blocks::new(64, StoreRole::EvenChunks);
        for n in 1..=(2 * MAX_KEY_PIECES as u64 + 4) {
            s.insert(b(n), &material(1));
            s.mark_ready(b(n));
        }
        let owned = s.fresh_bytes();
        assert!(owned > MAX_KEY_PIECES as u64);
        assert_eq!(s.plan_pieces(1, 65), 1, "65 pieces");
        assert_eq!(s.plan_pieces(1, MAX_KEY_PIECES as u32), 1);
        assert_eq!(s.plan_pieces(1, MAX_KEY_PIECES as u32 + 1), 0);
        assert_eq!(
            s.cut(1, MAX_KEY_PIECES as u32 + 1, &mut Vec::new(), |p, _| p)
                .unwrap_err(),
            0
        );
        let keys = s
            .cut(1, MAX_KEY_PIECES as u32, &mut Vec::new(), |p, _| p)
            .unwrap();
        assert_eq!(keys[0].piece_count(), MAX_KEY_PIECES);
        s.check_invariants();
    }

    #[test]
    fn bytes_leave_once_and_are_zeroized() {
        let mut s = store_with_block();
        s.mark_ready(b(2));
        // The peer's chunk 1: a range it delivered leaves here once.
        let key = s.zero_range(b(2), 1, 8, 8).unwrap();
        assert_eq!(key.expose_secret(), &material(256)[72..80]);
        assert!(
            s.zero_range(b(2), 1, 4, 8).is_none(),
            "overlaps a gone byte"
        );
        let buf = s.chunk_buffer(b(2), 1).unwrap();
        assert_eq!(&buf[8..16], &[0; 8]);
        assert_eq!(&buf[..8], &material(256)[64..72]);
        s.check_invariants();
    }

    #[test]
    fn locate_allows_only_bytes_the_peer_may_have_taken() {
        let mut s = store_with_block();
        s.mark_ready(b(2));
        let r = |offset, len| KeyRange {
            block: b(2),
            offset,
            len,
        };
        assert_eq!(s.locate(&r(64, 64)), Ok((1, 0)), "the peer's chunk");
        assert!(matches!(
            s.locate(&r(56, 8)),
            Err(NoticeError::NotPeerOwned { .. })
        ));
        assert!(
            matches!(s.locate(&r(60, 8)), Err(NoticeError::BadRange { .. })),
            "two chunks"
        );
        assert!(matches!(
            s.locate(&r(0, 8)),
            Err(NoticeError::NotPeerOwned { .. })
        ));
        assert!(matches!(
            s.locate(&r(100, 40)),
            Err(NoticeError::BadRange { .. })
        ));
        assert!(matches!(
            s.locate(&r(64, 0)),
            Err(NoticeError::BadRange { .. })
        ));
        assert!(matches!(
            s.locate(&r(256, 1)),
            Err(NoticeError::BadRange { .. })
        ));
        assert!(matches!(
            s.locate(&KeyRange {
                block: b(9),
                offset: 0,
                len: 1
            }),
            Err(NoticeError::UnknownBlock { .. })
        ));
        // Below the cursor of an owned chunk: keys cut here, then lent.
        s.cut(1, 16, &mut Vec::new(), |r, _| r).unwrap();
        assert_eq!(s.locate(&r(0, 16)), Ok((0, 0)));
    }

    #[test]
    fn dropping_tails_and_blocks_keeps_the_counters() {
        let mut s = store_with_block();
        assert_eq!(
            s.drop_owned_tail(b(2), 0),
            Some(KeyRange {
                block: b(2),
                offset: 0,
                len: 64
            })
        );
        assert_eq!(s.drop_owned_tail(b(2), 1), None, "not owned here");
        s.check_invariants();
        s.mark_ready(b(2));
        let mut ranges = Vec::new();
        s.drop_owned_tails(b(2), |r| ranges.push(r));
        assert_eq!(ranges.len(), 1, "chunk 2 only");
        s.check_invariants();
        let mut seen = Vec::new();
        let dropped = s.drop_block(b(2), |r| seen.push(r)).unwrap();
        assert_eq!(dropped.live, 128, "the peer's two chunks");
        assert_eq!(seen.len(), 2);
        assert_eq!(s.len(), 0);
        s.check_invariants();
        assert!(s.drop_block(b(2), |_| {}).is_none());
    }

    #[test]
    fn unready_blocks_before_an_announcement_are_handed_back() {
        let mut s = Blocks::new(64, StoreRole::OddChunks);
        for n in 1..=4 {
            s.insert(b(n), &material(64));
        }
        s.mark_ready(b(2));
        let skipped = s.unready_before(b(4));
        assert_eq!(skipped.into_iter().collect::<Vec<_>>(), [b(1), b(3)]);
        for n in [1, 3] {
            s.drop_block(b(n), |_| {});
        }
        s.check_invariants();
    }

    #[test]
    fn lending_gives_newest_chunks_and_grants_are_checked() {
        let mut lender = Blocks::new(64, StoreRole::EvenChunks);
        let mut borrower = Blocks::new(64, StoreRole::OddChunks);
        for n in [2u64, 4] {
            lender.insert(b(n), &material(256));
            borrower.insert(b(n), &material(256));
            lender.mark_ready(b(n));
            borrower.mark_ready(b(n));
        }
        assert_eq!(lender.fresh_bytes(), 256);
        // The borrower has 256 too: nothing moves from an equal node.
        assert!(lender.lend(1 << 20, 256).is_empty());
        // A borrower with nothing gets half, newest chunks first.
        let granted = lender.lend(1 << 20, 0);
        assert_eq!(granted.len(), 2);
        assert_eq!((granted[0].block, granted[0].chunk), (b(4), 2));
        assert_eq!(lender.fresh_bytes(), 128);
        lender.check_invariants();
        for g in &granted {
            borrower.accept_grant(*g).unwrap();
        }
        borrower.check_invariants();
        assert_eq!(borrower.fresh_bytes(), 256 + 128);
        // A chunk granted twice, or one the granter does not own, is refused.
        assert!(matches!(
            borrower.accept_grant(granted[0]),
            Err(NoticeError::NotPeerOwned { .. })
        ));
        let bad = GrantedChunk {
            block: b(2),
            chunk: 0,
            from: 0,
        };
        assert!(lender.accept_grant(bad).is_err(), "its own chunk");
        // A grant of bytes the lender already let go of is refused.
        let mut s = store_with_block();
        s.mark_ready(b(2));
        s.zero_range(b(2), 1, 0, 8).unwrap();
        let g = GrantedChunk {
            block: b(2),
            chunk: 1,
            from: 64,
        };
        assert!(matches!(
            s.accept_grant(g),
            Err(NoticeError::BadRange { .. })
        ));
        let g = GrantedChunk { from: 72, ..g };
        s.accept_grant(g).unwrap();
        s.check_invariants();
        assert_eq!(s.fresh_bytes(), 128 + 56);
        let huge = GrantedChunk {
            block: b(2),
            chunk: u32::MAX,
            from: 0,
        };
        assert!(s.accept_grant(huge).is_err());
    }

    #[test]
    fn clear_forgets_everything() {
        let mut s = store_with_block();
        s.mark_ready(b(2));
        s.clear();
        s.check_invariants();
        assert_eq!((s.len(), s.held_bytes(), s.fresh_bytes()), (0, 0, 0));
    }
}
