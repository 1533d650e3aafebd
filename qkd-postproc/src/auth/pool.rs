//! The authentication key pool: pre-shared secret first, then a share of
//! every distilled block; one-time pads and hash keys cut from it in an order
//! both ends agree on without talking.
//!
//! # Layout
//!
//! Every deposit (the pre-shared secret, then the share of each final key
//! block, in block order on both ends) is rounded down to a multiple of 16
//! bytes and split in two halves: the first half extends the **pad stream
//! sent by Alice**, the second the **pad stream sent by Bob**. A stream is a
//! sequence of 64-bit **units** (8 key bytes each, little-endian) numbered
//! from 0; a 128-bit tag uses two consecutive units, a 64-bit tag one, a hash
//! key two. Both ends deposit the same bytes in the same order, so unit `i`
//! of a stream is the same key on both ends: the position of a pad is a
//! public index, never key material.
//!
//! ```text
//! deposit d:  [ .......... first half ......... | .......... second half ........ ]
//!                        │                                   │
//! Alice's stream: u0 u1 u2 u3 ... (previous deposits) ▸ ...  │  (Alice seals with these;
//! Bob's stream:   u0 u1 u2 u3 ... (previous deposits) ▸ ...  ◂  Bob opens with them)
//! ```
//!
//! Units 0 and 1 of each stream are the hash key of that direction's first
//! crypto context.
//!
//! # Sending and receiving
//!
//! - The **sender** takes units of its own stream strictly in order (a
//!   cursor), writes the position of the first unit in the message header and
//!   zeroizes the units at once. If the stream holds too few units it refuses
//!   with [`PoolError::Exhausted`] and nothing changes.
//! - The **receiver** finds the pad from the position in the header. It keeps
//!   a **replay window** of `W` units below `end`, the highest `pos + units`
//!   it has accepted: a position below `end - W` is [too old](PoolError::TooOld),
//!   a unit already used in the window is a [replay](PoolError::Replay), a
//!   unit beyond what has been deposited is [not yet available](PoolError::Unavailable).
//!   These checks ([`AuthKeyPool::receive_pad`]) change nothing; only after
//!   the tag verified does [`AuthKeyPool::commit_receive`] mark the units
//!   used, move `end` and zeroize every unit that fell out of the window
//!   (those never used are counted as discarded: the pads of lost messages).
//!
//! So a lost message costs its pad and nothing else; reordering within `W`
//! units is accepted; a forged, replayed or malformed message changes no
//! state, and an attacker cannot move the window: only authentic messages do.
//!
//! # Accounting
//!
//! [`PoolStats`] counts every bit in and out since creation;
//! [`BlockAccount`] the bits of one block (from one
//! [`close_block`](AuthKeyPool::close_block) or
//! [`replenish_from_block`](AuthKeyPool::replenish_from_block) to the next).
//! Pads count once on each end: what this end sent plus what it accepted;
//! the key the two ends consumed together is the same on both ends once the
//! in-flight messages have arrived.

use std::collections::VecDeque;

use qkd_core::{Role, SecretKey};
use zeroize::{Zeroize, Zeroizing};

use super::tag::{HASH_KEY_BYTES, TagMode};

/// Bytes of one pad unit.
pub const UNIT_BYTES: usize = 8;

/// Units of a hash key.
pub const HASH_KEY_UNITS: u64 = (HASH_KEY_BYTES / UNIT_BYTES) as u64;

/// Refusals of the key pool. None of them changes the pool.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The send stream holds fewer units than needed: nothing was sent.
    #[error("authentication key pool exhausted: {needed_bits} bits needed, {available_bits} left")]
    Exhausted {
        /// Bits the operation needs.
        needed_bits: u64,
        /// Bits left in this end's send stream.
        available_bits: u64,
    },
    /// The position is below the replay window: the pad is gone.
    #[error("pad position below the replay window")]
    TooOld,
    /// A unit at the position was already used.
    #[error("pad already used (replay)")]
    Replay,
    /// The position is beyond the key deposited on this end so far.
    #[error("pad not yet deposited on this end")]
    Unavailable,
    /// The pre-shared secret is too short for the two first hash keys.
    #[error("pre-shared secret of {actual} bytes, at least {minimum} needed")]
    SecretTooShort {
        /// Minimum length in bytes.
        minimum: usize,
        /// Length given.
        actual: usize,
    },
    /// Blocks must be deposited in strictly increasing order of their IDs.
    #[error("block {block_id} deposited after block {last}")]
    BlockOrder {
        /// The block given.
        block_id: u64,
        /// The last block deposited.
        last: u64,
    },
    /// The configuration is inconsistent.
    #[error("invalid pool configuration: {0}")]
    Config(&'static str),
}

/// How much of each final key block flows back into the pool.
///
/// Both ends must use the same share: the amount is computed from the block
/// length only, so both deposit the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplenishShare {
    /// A fixed number of bytes per block (or the whole block if it is shorter).
    Fixed {
        /// Bytes taken from each block.
        bytes: usize,
    },
    /// A fraction of each block, in parts per million.
    PartsPerMillion {
        /// Share of the block, `0..=1_000_000`.
        ppm: u32,
    },
}

impl ReplenishShare {
    /// Bytes taken from a block of `block_bytes`, rounded down to a multiple of 16.
    #[must_use]
    pub fn bytes_of(self, block_bytes: usize) -> usize {
        let raw = match self {
            ReplenishShare::Fixed { bytes } => bytes.min(block_bytes),
            ReplenishShare::PartsPerMillion { ppm } => {
                let ppm = u128::from(ppm.min(1_000_000));
                (block_bytes as u128 * ppm / 1_000_000) as usize
            }
        };
        raw / 16 * 16
    }
}

/// Configuration of an [`AuthKeyPool`]; both ends must use the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Replay window `W` in units (at least 2). Reordering by more than `W`
    /// units (`W / 2` messages with 128-bit tags) is rejected as too old.
    pub window_units: u64,
    /// A [`PoolEvent::LowWater`] is raised when the send stream falls below
    /// this many bits.
    pub low_water_bits: u64,
    /// Share of each final block deposited by [`AuthKeyPool::replenish_from_block`].
    pub share: ReplenishShare,
}

impl Default for PoolConfig {
    /// `W` = 1024 units, low water at 16 384 bits (128 messages with 128-bit
    /// tags), a share of 1 % of each block.
    fn default() -> Self {
        PoolConfig {
            window_units: 1024,
            low_water_bits: 16_384,
            share: ReplenishShare::PartsPerMillion { ppm: 10_000 },
        }
    }
}

/// Events of the pool, taken with [`AuthKeyPool::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolEvent {
    /// The send stream fell below [`PoolConfig::low_water_bits`]: replenish
    /// before it runs dry. Raised once per crossing.
    LowWater {
        /// Bits left in the send stream.
        remaining_bits: u64,
    },
}

/// Key bits through one end's pool since it was created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bits of the pre-shared secret put into the streams.
    pub preshared_bits: u64,
    /// Bits deposited from distilled blocks.
    pub replenished_bits: u64,
    /// Pad bits of messages this end sealed.
    pub sent_pad_bits: u64,
    /// Pad bits of messages this end accepted.
    pub received_pad_bits: u64,
    /// Bits used as hash keys (both directions).
    pub hash_key_bits: u64,
    /// Bits thrown away: units that left the replay window unused (pads of
    /// lost messages) and deposit remainders below 16 bytes.
    pub discarded_bits: u64,
    /// Messages sealed.
    pub sent_messages: u64,
    /// Messages accepted.
    pub received_messages: u64,
}

impl PoolStats {
    /// All key bits this end consumed: pads, hash keys and discarded units.
    #[must_use]
    pub fn consumed_bits(&self) -> u64 {
        self.sent_pad_bits + self.received_pad_bits + self.hash_key_bits + self.discarded_bits
    }
}

/// Key bits of one block: what the messages of one post-processing round cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockAccount {
    /// The block the account was closed for.
    pub block_id: u64,
    /// Messages sealed during the block.
    pub sent_messages: u64,
    /// Messages accepted during the block.
    pub received_messages: u64,
    /// Pad bits of the sealed messages.
    pub sent_pad_bits: u64,
    /// Pad bits of the accepted messages.
    pub received_pad_bits: u64,
    /// Hash key bits taken (context switches).
    pub hash_key_bits: u64,
    /// Units discarded (lost messages' pads).
    pub discarded_bits: u64,
    /// Bits of this block's final key deposited into the pool.
    pub replenished_bits: u64,
}

impl BlockAccount {
    /// Key bits consumed during the block.
    #[must_use]
    pub fn consumed_bits(&self) -> u64 {
        self.sent_pad_bits + self.received_pad_bits + self.hash_key_bits + self.discarded_bits
    }
}

/// A one-time pad taken from the pool: 8 or 16 bytes, zeroized on drop.
pub struct Pad {
    bytes: Zeroizing<[u8; 16]>,
    len: usize,
    position: u64,
}

impl Pad {
    /// The pad bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Position of the pad's first unit in its stream.
    #[must_use]
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Units the pad covers.
    #[must_use]
    pub fn units(&self) -> u64 {
        (self.len / UNIT_BYTES) as u64
    }
}

impl core::fmt::Debug for Pad {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pad")
            .field("len", &self.len)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// A run of units deposited together. Words are zeroized on drop, so a
/// chunk never leaves key material behind in freed memory (the vector is
/// allocated once at its final size and never grows).
struct Chunk {
    start: u64,
    words: Zeroizing<Vec<u64>>,
}

/// One direction's pad stream, as seen by one end.
#[derive(Default)]
struct PadStream {
    chunks: VecDeque<Chunk>,
    /// Units `< freed` are zeroized and dropped.
    freed: u64,
    /// Units deposited so far.
    end: u64,
}

impl PadStream {
    fn deposit(&mut self, bytes: &[u8]) {
        debug_assert_eq!(bytes.len() % UNIT_BYTES, 0);
        if bytes.is_empty() {
            return;
        }
        let mut words = Zeroizing::new(Vec::with_capacity(bytes.len() / UNIT_BYTES));
        for c in bytes.chunks_exact(UNIT_BYTES) {
            let mut unit = [0u8; UNIT_BYTES];
            unit.copy_from_slice(c);
            words.push(u64::from_le_bytes(unit));
            unit.zeroize();
        }
        let start = self.end;
        self.end += words.len() as u64;
        self.chunks.push_back(Chunk { start, words });
    }

    fn unit_mut(&mut self, pos: u64) -> Option<&mut u64> {
        if pos < self.freed || pos >= self.end {
            return None;
        }
        // Chunks are few (one per deposit) and sorted: binary search.
        let i = self.chunks.partition_point(|c| c.start <= pos) - 1;
        let chunk = &mut self.chunks[i];
        chunk.words.get_mut((pos - chunk.start) as usize)
    }

    /// Copies `units` units at `pos` into a pad and zeroizes them if `burn`.
    fn read(&mut self, pos: u64, units: u64, burn: bool) -> Option<Pad> {
        let mut bytes = Zeroizing::new([0u8; 16]);
        for k in 0..units {
            let word = self.unit_mut(pos + k)?;
            let off = (k as usize) * UNIT_BYTES;
            bytes[off..off + UNIT_BYTES].copy_from_slice(&word.to_le_bytes());
            if burn {
                word.zeroize();
            }
        }
        Some(Pad {
            bytes,
            len: units as usize * UNIT_BYTES,
            position: pos,
        })
    }

    /// Zeroizes and drops every unit below `pos`.
    fn free_below(&mut self, pos: u64) {
        let pos = pos.min(self.end);
        if pos <= self.freed {
            return;
        }
        for p in self.freed..pos {
            if let Some(w) = self.unit_mut(p) {
                w.zeroize();
            }
        }
        self.freed = pos;
        while let Some(front) = self.chunks.front() {
            if front.start + front.words.len() as u64 <= pos {
                self.chunks.pop_front();
            } else {
                break;
            }
        }
    }
}

/// The key material of one link end for Wegman-Carter authentication.
///
/// Holds both pad streams (the one this end seals with, the one the peer
/// seals with), the send cursor and the replay window, and counts every bit.
/// See the [module docs](self) for the layout and the indexing rules.
///
/// ```
/// use qkd_core::{Role, SecretKey};
/// use qkd_postproc::auth::{AuthKeyPool, PoolConfig, TagMode};
///
/// let secret = SecretKey::from_slice(&[7u8; 1024]);
/// let mut alice = AuthKeyPool::new(Role::Alice, &secret, PoolConfig::default()).unwrap();
/// let mut bob = AuthKeyPool::new(Role::Bob, &secret, PoolConfig::default()).unwrap();
///
/// let pad = alice.take_send_pad(TagMode::Bits128).unwrap();
/// let same = bob.receive_pad(pad.position(), pad.units()).unwrap();
/// assert_eq!(pad.as_bytes(), same.as_bytes());
/// bob.commit_receive(pad.position(), pad.units());
/// // The same position again is a replay.
/// assert!(bob.receive_pad(pad.position(), pad.units()).is_err());
/// assert_eq!(alice.stats().sent_pad_bits, 128);
/// assert_eq!(bob.stats().received_pad_bits, 128);
/// ```
pub struct AuthKeyPool {
    role: Role,
    config: PoolConfig,
    /// Index 0: the stream Alice seals with; 1: Bob's.
    streams: [PadStream; 2],
    /// Next unit this end seals with, in its own stream.
    send_cursor: u64,
    /// Highest `pos + units` accepted in the peer's stream.
    recv_end: u64,
    /// Whether each unit of the peer's stream in `[recv_end - W, recv_end)`
    /// (saturating at 0) was used: entry `i` is unit `low + i`.
    recv_used: VecDeque<bool>,
    /// Units of deposits that were rounded off, kept to be honest in stats.
    stats: PoolStats,
    block: BlockAccount,
    last_block: Option<u64>,
    low_water_armed: bool,
    events: VecDeque<PoolEvent>,
}

impl AuthKeyPool {
    /// A pool for the end with `role`, filled from the pre-shared `secret`
    /// (both ends give the same bytes). The first 16 bytes of each half are
    /// the first hash keys; at least 32 bytes are needed.
    ///
    /// # Errors
    /// [`PoolError::SecretTooShort`], or [`PoolError::Config`] for a window
    /// below 2 units.
    pub fn new(role: Role, secret: &SecretKey, config: PoolConfig) -> Result<Self, PoolError> {
        if config.window_units < 2 {
            return Err(PoolError::Config("window_units must be at least 2"));
        }
        let minimum = 2 * HASH_KEY_BYTES;
        if secret.len() / 16 * 16 < minimum {
            return Err(PoolError::SecretTooShort {
                minimum,
                actual: secret.len(),
            });
        }
        let mut pool = AuthKeyPool {
            role,
            config,
            streams: [PadStream::default(), PadStream::default()],
            send_cursor: 0,
            recv_end: 0,
            recv_used: VecDeque::new(),
            stats: PoolStats::default(),
            block: BlockAccount::default(),
            last_block: None,
            low_water_armed: true,
            events: VecDeque::new(),
        };
        let bits = pool.deposit(secret.expose_secret());
        pool.stats.preshared_bits = bits;
        Ok(pool)
    }

    /// Which end this pool belongs to.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    fn stream_index(role: Role) -> usize {
        match role {
            Role::Alice => 0,
            Role::Bob => 1,
        }
    }

    fn send_stream(&mut self) -> &mut PadStream {
        &mut self.streams[Self::stream_index(self.role)]
    }

    fn recv_stream(&mut self) -> &mut PadStream {
        &mut self.streams[Self::stream_index(self.role.peer())]
    }

    /// Splits `bytes` (rounded down to 16) between the two streams; returns
    /// the bits deposited.
    fn deposit(&mut self, bytes: &[u8]) -> u64 {
        let usable = bytes.len() / 16 * 16;
        let half = usable / 2;
        self.streams[0].deposit(&bytes[..half]);
        self.streams[1].deposit(&bytes[half..usable]);
        let dropped = ((bytes.len() - usable) * 8) as u64;
        self.stats.discarded_bits += dropped;
        self.block.discarded_bits += dropped;
        if self.send_remaining_bits() >= self.config.low_water_bits {
            self.low_water_armed = true;
        }
        (usable * 8) as u64
    }

    /// Deposits `key` (already agreed on both ends, e.g. a share of a final
    /// block) and counts it for block `block_id`.
    ///
    /// # Errors
    /// [`PoolError::BlockOrder`] if `block_id` is not above the last one
    /// deposited; nothing is deposited then.
    pub fn replenish(&mut self, block_id: u64, key: &SecretKey) -> Result<u64, PoolError> {
        if let Some(last) = self.last_block
            && block_id <= last
        {
            return Err(PoolError::BlockOrder { block_id, last });
        }
        self.last_block = Some(block_id);
        let bits = self.deposit(key.expose_secret());
        self.stats.replenished_bits += bits;
        self.block.replenished_bits += bits;
        Ok(bits)
    }

    /// Takes the configured [share](PoolConfig::share) from the front of the
    /// final key of block `block_id`, deposits it, and closes the block's
    /// account. Returns the rest of the key (for the key store) and the account.
    ///
    /// # Errors
    /// [`PoolError::BlockOrder`] as [`replenish`](Self::replenish); the key
    /// is given back untouched in that case.
    pub fn replenish_from_block(
        &mut self,
        block_id: u64,
        mut final_key: SecretKey,
    ) -> Result<(SecretKey, BlockAccount), (PoolError, SecretKey)> {
        let take = self.config.share.bytes_of(final_key.len());
        let rest = match final_key.split_off(take) {
            Ok(rest) => rest,
            Err(_) => return Err((PoolError::Config("share larger than block"), final_key)),
        };
        if let Err(e) = self.replenish(block_id, &final_key) {
            // Put the key back together for the caller.
            // Allocated at its final size: no reallocation leaves a copy behind.
            let mut whole = Vec::with_capacity(final_key.len() + rest.len());
            whole.extend_from_slice(final_key.expose_secret());
            whole.extend_from_slice(rest.expose_secret());
            return Err((e, SecretKey::from_vec(whole)));
        }
        drop(final_key);
        Ok((rest, self.close_block(block_id)))
    }

    /// Returns the account of everything since the last close, labelled
    /// `block_id`, and starts a new one.
    pub fn close_block(&mut self, block_id: u64) -> BlockAccount {
        let mut account = core::mem::take(&mut self.block);
        account.block_id = block_id;
        account
    }

    /// The account of the block in progress.
    #[must_use]
    pub fn current_block(&self) -> &BlockAccount {
        &self.block
    }

    /// Counters since creation.
    #[must_use]
    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Bits left for this end to seal with.
    #[must_use]
    pub fn send_remaining_bits(&self) -> u64 {
        let s = &self.streams[Self::stream_index(self.role)];
        (s.end - self.send_cursor.min(s.end)) * 64
    }

    /// Bits deposited in the peer's stream beyond the highest accepted position.
    #[must_use]
    pub fn receive_remaining_bits(&self) -> u64 {
        let s = &self.streams[Self::stream_index(self.role.peer())];
        (s.end - self.recv_end.min(s.end)) * 64
    }

    /// Position of the next unit this end will seal with.
    #[must_use]
    pub fn send_position(&self) -> u64 {
        self.send_cursor
    }

    /// Highest `position + units` accepted from the peer.
    #[must_use]
    pub fn receive_end(&self) -> u64 {
        self.recv_end
    }

    fn take_send_units(&mut self, units: u64) -> Result<Pad, PoolError> {
        let available = self.send_remaining_bits();
        let needed_bits = units * 64;
        if available < needed_bits {
            return Err(PoolError::Exhausted {
                needed_bits,
                available_bits: available,
            });
        }
        let pos = self.send_cursor;
        let stream = self.send_stream();
        let pad = stream.read(pos, units, true).ok_or(PoolError::Exhausted {
            needed_bits,
            available_bits: available,
        })?;
        stream.free_below(pos + units);
        self.send_cursor = pos + units;
        if self.low_water_armed && self.send_remaining_bits() < self.config.low_water_bits {
            self.low_water_armed = false;
            self.events.push_back(PoolEvent::LowWater {
                remaining_bits: self.send_remaining_bits(),
            });
        }
        Ok(pad)
    }

    /// Takes the next pad of this end's stream for a `mode` tag, zeroizing
    /// it in the pool and counting one sent message.
    ///
    /// # Errors
    /// [`PoolError::Exhausted`]: nothing is taken.
    pub fn take_send_pad(&mut self, mode: TagMode) -> Result<Pad, PoolError> {
        let pad = self.take_send_units(mode.pad_units())?;
        self.stats.sent_pad_bits += mode.tag_bits();
        self.stats.sent_messages += 1;
        self.block.sent_pad_bits += mode.tag_bits();
        self.block.sent_messages += 1;
        Ok(pad)
    }

    /// Takes the next two units of this end's stream as a hash key.
    ///
    /// # Errors
    /// [`PoolError::Exhausted`]: nothing is taken.
    pub fn take_send_hash_key(&mut self) -> Result<Pad, PoolError> {
        let pad = self.take_send_units(HASH_KEY_UNITS)?;
        self.count_hash_key();
        Ok(pad)
    }

    /// Bits this end can still seal with, if it took `units` more.
    #[must_use]
    pub fn can_send(&self, units: u64) -> bool {
        self.send_remaining_bits() >= units * 64
    }

    fn count_hash_key(&mut self) {
        let bits = HASH_KEY_UNITS * 64;
        self.stats.hash_key_bits += bits;
        self.block.hash_key_bits += bits;
    }

    /// Checks that the peer's units `[pos, pos + units)` may be used and
    /// returns a copy of them. Changes nothing.
    ///
    /// # Errors
    /// [`PoolError::TooOld`], [`PoolError::Replay`] or [`PoolError::Unavailable`];
    /// [`PoolError::Config`] for `units` other than 1 or 2.
    pub fn receive_pad(&mut self, pos: u64, units: u64) -> Result<Pad, PoolError> {
        self.check_receive(pos, units)?;
        self.recv_stream()
            .read(pos, units, false)
            .ok_or(PoolError::Unavailable)
    }

    /// The checks of [`receive_pad`](Self::receive_pad) without the copy.
    ///
    /// # Errors
    /// As [`receive_pad`](Self::receive_pad), and [`PoolError::Config`] for
    /// `units` other than 1 or 2 (a pad is at most a hash key long, and the
    /// replay window holds at least 2 units).
    pub fn check_receive(&self, pos: u64, units: u64) -> Result<(), PoolError> {
        if !(1..=HASH_KEY_UNITS).contains(&units) {
            return Err(PoolError::Config("a pad is 1 or 2 units"));
        }
        let end = pos.checked_add(units).ok_or(PoolError::Unavailable)?;
        let low = self.recv_end.saturating_sub(self.config.window_units);
        let stream = &self.streams[Self::stream_index(self.role.peer())];
        if pos < low || pos < stream.freed {
            return Err(PoolError::TooOld);
        }
        let used = (pos..end.min(self.recv_end)).any(|p| self.recv_used[(p - low) as usize]);
        if used {
            return Err(PoolError::Replay);
        }
        if end > stream.end {
            return Err(PoolError::Unavailable);
        }
        Ok(())
    }

    /// Marks the peer's units `[pos, pos + units)` used after their tag
    /// verified, counting one accepted message, and moves the window.
    ///
    /// Call it only after [`receive_pad`](Self::receive_pad) succeeded for
    /// the same units; a position that fails those checks is ignored.
    pub fn commit_receive(&mut self, pos: u64, units: u64) {
        if self.commit_units(pos, units) {
            let bits = units * 64;
            self.stats.received_pad_bits += bits;
            self.stats.received_messages += 1;
            self.block.received_pad_bits += bits;
            self.block.received_messages += 1;
        }
    }

    /// Takes the peer's units `[pos, pos + 2)` as the hash key of the peer's
    /// next crypto context (announced in an authentic message).
    ///
    /// # Errors
    /// As [`receive_pad`](Self::receive_pad); nothing changes then.
    pub fn take_receive_hash_key(&mut self, pos: u64) -> Result<Pad, PoolError> {
        let key = self.receive_pad(pos, HASH_KEY_UNITS)?;
        self.commit_hash_key(pos);
        Ok(key)
    }

    /// Marks the peer's units `[pos, pos + 2)`, read before with
    /// [`receive_pad`](Self::receive_pad), used as a hash key.
    pub(crate) fn commit_hash_key(&mut self, pos: u64) {
        if self.commit_units(pos, HASH_KEY_UNITS) {
            self.count_hash_key();
        }
    }

    fn commit_units(&mut self, pos: u64, units: u64) -> bool {
        if self.check_receive(pos, units).is_err() {
            return false;
        }
        let end = pos + units;
        let window = self.config.window_units;
        let stream_index = Self::stream_index(self.role.peer());
        if end > self.recv_end {
            let old_low = self.recv_end.saturating_sub(window);
            let new_low = end.saturating_sub(window);
            // Units leaving the window unused are the pads of lost messages.
            let mut unused = 0u64;
            if new_low >= self.recv_end {
                // A jump past the whole old window.
                unused += self.recv_used.iter().filter(|u| !**u).count() as u64;
                unused += new_low - self.recv_end;
                self.recv_used.clear();
                self.recv_used.resize((end - new_low) as usize, false);
            } else {
                self.recv_used.resize((end - old_low) as usize, false);
                for _ in old_low..new_low {
                    if self.recv_used.pop_front() == Some(false) {
                        unused += 1;
                    }
                }
            }
            self.recv_end = end;
            self.stats.discarded_bits += unused * 64;
            self.block.discarded_bits += unused * 64;
            self.streams[stream_index].free_below(new_low);
        }
        let low = self.recv_end.saturating_sub(window);
        for p in pos..end {
            self.recv_used[(p - low) as usize] = true;
            if let Some(w) = self.streams[stream_index].unit_mut(p) {
                w.zeroize();
            }
        }
        true
    }

    /// Next pool event, if any.
    pub fn poll_event(&mut self) -> Option<PoolEvent> {
        self.events.pop_front()
    }

    /// Marks the first hash key units of both streams used (units 0 and 1),
    /// returning the keys (own direction, peer's direction).
    pub(crate) fn take_initial_hash_keys(&mut self) -> Option<(Pad, Pad)> {
        if self.send_cursor != 0 || self.recv_end != 0 {
            return None;
        }
        let own = self.take_send_units(HASH_KEY_UNITS).ok()?;
        let peer = self.take_receive_hash_key(0).ok()?;
        self.count_hash_key();
        Some((own, peer))
    }
}

impl core::fmt::Debug for AuthKeyPool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AuthKeyPool")
            .field("role", &self.role)
            .field("send_position", &self.send_cursor)
            .field("send_remaining_bits", &self.send_remaining_bits())
            .field("receive_end", &self.recv_end)
            .field("receive_remaining_bits", &self.receive_remaining_bits())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(len: usize) -> SecretKey {
        SecretKey::from_vec((0..len).map(|i| (i * 31 + 7) as u8).collect())
    }

    fn pair(len: usize, config: PoolConfig) -> (AuthKeyPool, AuthKeyPool) {
        let s = secret(len);
        (
            AuthKeyPool::new(Role::Alice, &s, config.clone()).unwrap(),
            AuthKeyPool::new(Role::Bob, &s, config).unwrap(),
        )
    }

    #[test]
    fn layout_splits_each_deposit_in_halves() {
        let s = secret(64);
        let mut a = AuthKeyPool::new(Role::Alice, &s, PoolConfig::default()).unwrap();
        let mut b = AuthKeyPool::new(Role::Bob, &s, PoolConfig::default()).unwrap();
        let pa = a.take_send_pad(TagMode::Bits128).unwrap();
        assert_eq!(pa.as_bytes(), &s.expose_secret()[..16]);
        let pb = b.take_send_pad(TagMode::Bits64).unwrap();
        assert_eq!(pb.as_bytes(), &s.expose_secret()[32..40]);
        assert_eq!(a.send_remaining_bits(), 128);
        assert_eq!(b.send_remaining_bits(), 192);
    }

    #[test]
    fn short_secret_and_bad_window_are_refused() {
        assert_eq!(
            AuthKeyPool::new(Role::Alice, &secret(31), PoolConfig::default()).unwrap_err(),
            PoolError::SecretTooShort {
                minimum: 32,
                actual: 31
            }
        );
        let config = PoolConfig {
            window_units: 1,
            ..PoolConfig::default()
        };
        assert!(matches!(
            AuthKeyPool::new(Role::Alice, &secret(64), config),
            Err(PoolError::Config(_))
        ));
    }

    #[test]
    fn exhaustion_is_a_refusal_that_takes_nothing() {
        let (mut a, _) = pair(64, PoolConfig::default());
        a.take_send_pad(TagMode::Bits128).unwrap();
        a.take_send_pad(TagMode::Bits64).unwrap();
        let before = a.stats().clone();
        let err = a.take_send_pad(TagMode::Bits128).unwrap_err();
        assert_eq!(
            err,
            PoolError::Exhausted {
                needed_bits: 128,
                available_bits: 64
            }
        );
        assert_eq!(a.stats(), &before);
        assert_eq!(a.send_position(), 3);
        a.take_send_pad(TagMode::Bits64).unwrap();
        assert_eq!(a.send_remaining_bits(), 0);
    }

    #[test]
    fn low_water_fires_once_per_crossing() {
        let config = PoolConfig {
            low_water_bits: 256,
            ..PoolConfig::default()
        };
        let (mut a, _) = pair(128, config); // 64 bytes = 512 bits per stream
        a.take_send_pad(TagMode::Bits128).unwrap(); // 384 left
        assert_eq!(a.poll_event(), None);
        a.take_send_pad(TagMode::Bits128).unwrap(); // 256 left
        assert_eq!(a.poll_event(), None);
        a.take_send_pad(TagMode::Bits128).unwrap(); // 128 left
        assert_eq!(
            a.poll_event(),
            Some(PoolEvent::LowWater {
                remaining_bits: 128
            })
        );
        a.take_send_pad(TagMode::Bits64).unwrap();
        assert_eq!(a.poll_event(), None);
        a.replenish(1, &secret(128)).unwrap(); // +512: 576 left, re-armed
        for _ in 0..3 {
            a.take_send_pad(TagMode::Bits128).unwrap();
        }
        assert!(matches!(a.poll_event(), Some(PoolEvent::LowWater { .. })));
    }

    #[test]
    fn pads_of_other_sizes_are_refused_not_a_panic() {
        let config = PoolConfig {
            window_units: 8,
            ..PoolConfig::default()
        };
        let (_, mut b) = pair(1024, config);
        for units in [0, 3, 10] {
            assert!(matches!(b.receive_pad(0, units), Err(PoolError::Config(_))));
            b.commit_receive(0, units); // ignored
        }
        assert_eq!(b.receive_end(), 0);
        assert_eq!(b.stats().received_messages, 0);
    }

    #[test]
    fn window_rejects_old_replayed_and_unavailable_positions() {
        let config = PoolConfig {
            window_units: 8,
            ..PoolConfig::default()
        };
        let (_, mut b) = pair(1024, config); // 64 units per stream
        assert_eq!(b.check_receive(64, 1), Err(PoolError::Unavailable));
        assert_eq!(b.check_receive(63, 2), Err(PoolError::Unavailable));
        assert_eq!(b.check_receive(u64::MAX, 2), Err(PoolError::Unavailable));
        b.commit_receive(20, 2);
        assert_eq!(b.receive_end(), 22);
        assert_eq!(b.check_receive(20, 2), Err(PoolError::Replay));
        assert_eq!(b.check_receive(21, 1), Err(PoolError::Replay));
        assert_eq!(b.check_receive(13, 1), Err(PoolError::TooOld));
        assert_eq!(b.check_receive(14, 2), Ok(())); // late, within the window
        b.commit_receive(14, 2);
        assert_eq!(b.check_receive(14, 2), Err(PoolError::Replay));
        b.commit_receive(30, 2);
        // Units 14..24 left the window: 14,15,20,21 were used, 6 were not.
        assert_eq!(b.stats().discarded_bits, 14 * 64 + 6 * 64);
        assert_eq!(b.check_receive(22, 2), Err(PoolError::TooOld));
        assert_eq!(b.stats().received_messages, 3);
    }

    #[test]
    fn failed_checks_change_nothing() {
        let (_, mut b) = pair(1024, PoolConfig::default());
        b.commit_receive(100, 2); // Unavailable: ignored
        b.commit_receive(10, 2);
        let before = (b.stats().clone(), b.receive_end());
        b.commit_receive(10, 2); // replay: ignored
        assert_eq!((b.stats().clone(), b.receive_end()), before);
    }

    #[test]
    fn replenish_from_block_takes_the_share_and_accounts_the_block() {
        let config = PoolConfig {
            share: ReplenishShare::PartsPerMillion { ppm: 10_000 },
            ..PoolConfig::default()
        };
        let (mut a, mut b) = pair(64, config);
        let block = secret(125_000); // 10^6 bits
        let pad = a.take_send_pad(TagMode::Bits128).unwrap();
        b.receive_pad(pad.position(), 2).unwrap();
        b.commit_receive(pad.position(), 2);
        let (rest, account) = a.replenish_from_block(7, block.clone()).unwrap();
        assert_eq!(rest.len(), 125_000 - 1248);
        assert_eq!(rest.expose_secret(), &block.expose_secret()[1248..]);
        assert_eq!(account.block_id, 7);
        assert_eq!(account.replenished_bits, 1248 * 8);
        assert_eq!(account.sent_messages, 1);
        assert_eq!(account.consumed_bits(), 128);
        let (_, account_b) = b.replenish_from_block(7, block.clone()).unwrap();
        assert_eq!(account_b.received_messages, 1);
        assert_eq!(account_b.consumed_bits(), 128);
        // Out of order: refused, key handed back whole.
        let (err, back) = a.replenish_from_block(7, block.clone()).unwrap_err();
        assert_eq!(
            err,
            PoolError::BlockOrder {
                block_id: 7,
                last: 7
            }
        );
        assert_eq!(back, block);
        // Both ends now see the same new pads.
        let base = a.send_position();
        let pa = a.take_send_pad(TagMode::Bits128).unwrap();
        assert_eq!(pa.position(), base);
        let pb = b.receive_pad(base, 2).unwrap();
        assert_eq!(pa.as_bytes(), pb.as_bytes());
    }

    #[test]
    fn share_rounds_down_to_sixteen_bytes() {
        assert_eq!(ReplenishShare::Fixed { bytes: 100 }.bytes_of(50), 48);
        assert_eq!(ReplenishShare::Fixed { bytes: 100 }.bytes_of(500), 96);
        assert_eq!(
            ReplenishShare::PartsPerMillion { ppm: 2_000_000 }.bytes_of(33),
            32
        );
    }

    #[test]
    fn pads_are_zeroized_in_the_pool_after_use() {
        let (mut a, mut b) = pair(64, PoolConfig::default());
        let p = a.take_send_pad(TagMode::Bits64).unwrap();
        // The sender's units are freed: reading them again is impossible.
        assert!(a.streams[0].read(p.position(), 1, false).is_none());
        let q = b.receive_pad(0, 1).unwrap();
        assert_eq!(p.as_bytes(), q.as_bytes());
        b.commit_receive(0, 1);
        // Inside the window the unit is kept but zeroed.
        assert_eq!(
            b.streams[0].read(0, 1, false).unwrap().as_bytes(),
            &[0u8; 8]
        );
    }

    proptest::proptest! {
        /// The replay window against a plain model: a set of used units and
        /// the highest end, with every rule written out directly.
        #[test]
        fn window_matches_a_plain_model(
            window in 2u64..40,
            ops in proptest::collection::vec((0u64..300, 1u64..3, proptest::bool::ANY), 1..200),
        ) {
            let config = PoolConfig { window_units: window, ..PoolConfig::default() };
            let (_, mut b) = pair(4096, config); // 256 units per stream
            let mut used = std::collections::BTreeSet::new();
            let mut end = 0u64;
            let mut discarded = 0u64;
            for (pos, units, commit) in ops {
                let low = end.saturating_sub(window);
                let expected = if pos < low {
                    Err(PoolError::TooOld)
                } else if (pos..pos + units).any(|p| used.contains(&p)) {
                    Err(PoolError::Replay)
                } else if pos + units > 256 {
                    Err(PoolError::Unavailable)
                } else {
                    Ok(())
                };
                proptest::prop_assert_eq!(b.check_receive(pos, units), expected.clone());
                if commit && expected.is_ok() {
                    b.commit_receive(pos, units);
                    used.extend(pos..pos + units);
                    if pos + units > end {
                        let new_low = (pos + units).saturating_sub(window);
                        discarded += (low..new_low).filter(|p| !used.contains(p)).count() as u64;
                        end = pos + units;
                    }
                }
                proptest::prop_assert_eq!(b.receive_end(), end);
                proptest::prop_assert_eq!(b.stats().discarded_bits, discarded * 64);
            }
        }
    }

    #[test]
    fn debug_is_redacted() {
        let (a, _) = pair(64, PoolConfig::default());
        let s = format!("{a:?}");
        assert!(s.starts_with("AuthKeyPool { role: Alice"));
        let p = Pad {
            bytes: Zeroizing::new([0x42; 16]),
            len: 16,
            position: 3,
        };
        assert_eq!(format!("{p:?}"), "Pad { len: 16, position: 3, .. }");
    }
}
