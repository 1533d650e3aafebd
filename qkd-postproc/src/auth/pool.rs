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

use qkd_core::machine::ConfigError;
use qkd_core::{BlockId, Role, SecretKey};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::tag::{HASH_KEY_BYTES, TagMode};
use crate::confirm::ConfirmedBlock;

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
    #[error("block {block} deposited after block {last}")]
    BlockOrder {
        /// The block given.
        block: BlockId,
        /// The last block deposited.
        last: BlockId,
    },
    /// The configuration is inconsistent.
    #[error("invalid pool configuration: {0}")]
    Config(&'static str),
    /// The position lies beyond the durable horizon: no checkpoint that
    /// covers it has been committed, so using it now could reuse it after a
    /// restart. Take a [checkpoint](AuthKeyPool::checkpoint), persist it,
    /// [commit](AuthKeyPool::commit) it, and retry. Nothing changed.
    #[error("checkpoint required before this pad may be used")]
    CheckpointRequired,
    /// A saved state that cannot be restored (another format version, a
    /// broken invariant, another role or configuration).
    #[error("saved pool state refused: {0}")]
    State(&'static str),
}

/// How much of each final key block flows back into the pool.
///
/// Both ends must use the same share: the amount is computed from the block
/// length only, so both deposit the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Replay window `W` in units (at least 2). Reordering by more than `W`
    /// units (`W / 2` messages with 128-bit tags) is rejected as too old.
    pub window_units: u64,
    /// A [`PoolEvent::LowWater`] is raised when the send stream falls below
    /// this many bits.
    pub low_water_bits: u64,
    /// Share of each final block deposited by [`AuthKeyPool::replenish_from_block`].
    pub share: ReplenishShare,
    /// Units each [checkpoint](AuthKeyPool::checkpoint) reserves ahead of
    /// the send cursor and of the receive window (at least 2): how far the
    /// pool may go between two saves. A restart skips what was reserved and
    /// not used, so this is also the most key a restart can waste per
    /// direction (`checkpoint_units * 64` bits).
    pub checkpoint_units: u64,
}

impl Default for PoolConfig {
    /// `W` = 1024 units, low water at 16 384 bits (128 messages with 128-bit
    /// tags), a share of 1 % of each block, 1024 units (64 Kibit) reserved
    /// per checkpoint.
    fn default() -> Self {
        PoolConfig {
            window_units: 1024,
            low_water_bits: 16_384,
            share: ReplenishShare::PartsPerMillion { ppm: 10_000 },
            checkpoint_units: 1024,
        }
    }
}

impl PoolConfig {
    /// Checks every field, naming the first bad one.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `window_units`, `checkpoint_units` or `share`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.window_units < 2 {
            return Err(ConfigError::new("window_units", "must be at least 2"));
        }
        if self.window_units > 1 << 24 {
            return Err(ConfigError::new("window_units", "must be at most 2^24"));
        }
        if self.checkpoint_units < HASH_KEY_UNITS {
            return Err(ConfigError::new("checkpoint_units", "must be at least 2"));
        }
        if let ReplenishShare::PartsPerMillion { ppm } = self.share
            && ppm > 1_000_000
        {
            return Err(ConfigError::new(
                "share.parts_per_million.ppm",
                "must be at most 1 000 000",
            ));
        }
        Ok(())
    }
}

/// The identifier of a pre-shared secret, as provisioned with it (for
/// example the serial number of the secret's record in the key-provisioning
/// system). It is public; [`PoolState`] records it so that a host can tell
/// which secret a saved state descends from and refuse a second fresh start
/// from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretId(u64);

impl SecretId {
    /// The identifier `id`.
    #[must_use]
    pub const fn new(id: u64) -> Self {
        SecretId(id)
    }

    /// The number.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl core::fmt::Display for SecretId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "secret {}", self.0)
    }
}

/// A pre-shared secret with its identifier: the only thing a *fresh* pool
/// can be made from, and consumed by it.
///
/// It is neither `Clone` nor `Copy`: [`AuthKeyPool::new`] and
/// [`AuthenticatedChannel::new`](super::AuthenticatedChannel::new) take it
/// by value, so one value starts one pool. A restart never needs it again:
/// it [restores](AuthKeyPool::restore) the saved state, which holds what is
/// left of the secret. See the [restart rules](super#restarts).
pub struct PresharedSecret {
    id: SecretId,
    key: SecretKey,
}

impl PresharedSecret {
    /// The secret `key` provisioned under `id` (identical on both ends).
    #[must_use]
    pub fn new(id: SecretId, key: SecretKey) -> Self {
        PresharedSecret { id, key }
    }

    /// Its identifier.
    #[must_use]
    pub fn id(&self) -> SecretId {
        self.id
    }

    /// Its length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.key.len()
    }

    /// Whether it is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.key.is_empty()
    }
}

impl core::fmt::Debug for PresharedSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PresharedSecret")
            .field("id", &self.id)
            .field("len", &self.key.len())
            .finish_non_exhaustive()
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
    /// Take a [checkpoint](AuthKeyPool::checkpoint) soon: half of the
    /// reserve of the last one is used up in one direction, or key was
    /// deposited since (a restore from an older state would lose it).
    /// Raised once until the next commit.
    CheckpointDue,
}

/// Key bits through one end's pool since it was created (across restores).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// Bits skipped at restores: units a checkpoint reserved that were not
    /// used before the restart (never used after it either).
    #[serde(default)]
    pub skipped_bits: u64,
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
        self.sent_pad_bits
            + self.received_pad_bits
            + self.hash_key_bits
            + self.discarded_bits
            + self.skipped_bits
    }
}

/// Key bits of one block: what the messages of one post-processing round cost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockAccount {
    /// The block the account was closed for.
    pub block: BlockId,
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

    /// A copy of the units from `from` (at least `freed`) to the end.
    fn save_from(&self, from: u64) -> StreamState {
        // Below the end: a horizon beyond it keeps nothing, and the stream
        // goes on at its end with the next deposit.
        let from = from.max(self.freed).min(self.end);
        let mut words = Zeroizing::new(Vec::with_capacity((self.end - from) as usize));
        for chunk in &self.chunks {
            let start = chunk.start;
            let stop = start + chunk.words.len() as u64;
            if stop <= from {
                continue;
            }
            let skip = from.saturating_sub(start) as usize;
            words.extend_from_slice(&chunk.words[skip..]);
        }
        StreamState {
            first_unit: from,
            units: SecretUnits(words),
        }
    }

    /// The stream saved in `state`: units below its first are gone.
    fn restore(state: StreamState) -> Self {
        let mut stream = PadStream {
            chunks: VecDeque::new(),
            freed: state.first_unit,
            end: state.first_unit,
        };
        let SecretUnits(words) = state.units;
        if !words.is_empty() {
            stream.end = state.first_unit + words.len() as u64;
            stream.chunks.push_back(Chunk {
                start: state.first_unit,
                words,
            });
        }
        stream
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

/// Version of the [`PoolState`] format.
pub const POOL_STATE_VERSION: u32 = 1;

/// Unit words of a pad stream in a saved state: zeroized on drop, `Debug`
/// shows only the count. Serialized as a sequence of `u64`.
#[derive(Default, PartialEq, Eq)]
pub(crate) struct SecretUnits(Zeroizing<Vec<u64>>);

impl core::fmt::Debug for SecretUnits {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SecretUnits({} units)", self.0.len())
    }
}

impl Serialize for SecretUnits {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for w in self.0.iter() {
            seq.serialize_element(w)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for SecretUnits {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Units;
        impl<'de> serde::de::Visitor<'de> for Units {
            type Value = SecretUnits;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("a sequence of 64-bit pad units")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<SecretUnits, A::Error> {
                // Sized from the hint (bounded) so that a well-hinted format
                // never reallocates and leaves a copy behind; growth beyond
                // it goes through a zeroizing copy.
                let hint = seq.size_hint().unwrap_or(0).min(1 << 24);
                let mut words = Zeroizing::new(Vec::with_capacity(hint));
                while let Some(w) = seq.next_element::<u64>()? {
                    if words.len() == words.capacity() {
                        let mut grown =
                            Zeroizing::new(Vec::with_capacity((words.capacity() * 2).max(64)));
                        grown.extend_from_slice(&words);
                        words = grown;
                    }
                    words.push(w);
                }
                Ok(SecretUnits(words))
            }
        }
        deserializer.deserialize_seq(Units)
    }
}

/// The unused part of one pad stream in a saved state.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamState {
    /// Position of the first unit kept.
    first_unit: u64,
    /// The units from `first_unit` on (key material).
    units: SecretUnits,
}

/// The saved state of an [`AuthKeyPool`]: what a restart needs so that no
/// pad and no receive position is ever used twice. Made by
/// [`AuthKeyPool::checkpoint`], put back by [`AuthKeyPool::restore`].
///
/// It holds key material (the unused pad units of both streams): it is
/// zeroized on drop, never shown by `Debug`, and must be stored as
/// carefully as the pre-shared secret it replaces. The serialized form
/// (serde, any format) is a copy the host owns and must protect and wipe
/// likewise. The format is versioned ([`POOL_STATE_VERSION`]).
#[derive(PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolState {
    version: u32,
    role: Role,
    config: PoolConfig,
    secret_id: SecretId,
    generation: u64,
    send_limit: u64,
    recv_limit: u64,
    send_stream: StreamState,
    recv_stream: StreamState,
    feed: FeedLog,
    last_block: Option<BlockId>,
    stats: PoolStats,
}

impl PoolState {
    /// The pre-shared secret the saved pool descends from.
    #[must_use]
    pub fn secret_id(&self) -> SecretId {
        self.secret_id
    }

    /// The checkpoint's number: 1 for the first after the fresh start, one
    /// more for each after it. A host keeps only the newest.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The end that saved it.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// The horizons `(send, receive)` this state puts in force.
    #[must_use]
    pub fn limits(&self) -> (u64, u64) {
        (self.send_limit, self.recv_limit)
    }
}

impl core::fmt::Debug for PoolState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PoolState")
            .field("version", &self.version)
            .field("role", &self.role)
            .field("secret_id", &self.secret_id)
            .field("generation", &self.generation)
            .field("send_limit", &self.send_limit)
            .field("recv_limit", &self.recv_limit)
            .finish_non_exhaustive()
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
/// use qkd_postproc::auth::{AuthKeyPool, PoolConfig, PresharedSecret, SecretId, TagMode};
///
/// let key = SecretKey::from_slice(&[7u8; 1024]);
/// let start = |role, key| {
///     let secret = PresharedSecret::new(SecretId::new(1), key);
///     let mut pool = AuthKeyPool::new(role, secret, PoolConfig::default()).unwrap();
///     let state = pool.checkpoint(); // persist it, then:
///     pool.commit(&state).unwrap();
///     pool
/// };
/// let mut alice = start(Role::Alice, key.clone());
/// let mut bob = start(Role::Bob, key);
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
    secret_id: SecretId,
    /// Index 0: the stream Alice seals with; 1: Bob's.
    streams: [PadStream; 2],
    /// Next unit this end seals with, in its own stream.
    send_cursor: u64,
    /// Highest `pos + units` accepted in the peer's stream.
    recv_end: u64,
    /// Whether each unit of the peer's stream in `[recv_end - W, recv_end)`
    /// (saturating at 0) was used: entry `i` is unit `low + i`.
    recv_used: VecDeque<bool>,
    /// The durable horizons: no unit at or above them may be used (sealed
    /// with, or accepted) until a checkpoint that covers it is committed.
    send_limit: u64,
    recv_limit: u64,
    /// Checkpoints committed (0 for a fresh pool).
    generation: u64,
    checkpoint_armed: bool,
    feed: FeedLog,
    stats: PoolStats,
    block: BlockAccount,
    last_block: Option<BlockId>,
    low_water_armed: bool,
    events: VecDeque<PoolEvent>,
}

/// The running digest of what was fed into the pool: the pre-shared
/// secret's identifier and length, then each deposit's block and length.
/// Public data only (never key bytes): two ends fed the same blocks have the
/// same digest, and their key material is then the same too (the shares are
/// a function of the agreed final keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedLog {
    /// Deposits so far (the pre-shared secret is deposit 0).
    count: u64,
    /// Digest after deposit `count`.
    digest: [u8; FEED_DIGEST_BYTES],
    /// `(count, digest)` of the last [`FEED_HISTORY`] deposits, oldest first,
    /// to compare with a peer that is a few deposits behind.
    history: VecDeque<(u64, [u8; FEED_DIGEST_BYTES])>,
}

/// Bytes of a feed digest.
pub const FEED_DIGEST_BYTES: usize = 16;
/// Deposits whose digests a pool keeps to compare with a peer.
pub const FEED_HISTORY: usize = 64;

impl FeedLog {
    const CONTEXT: &'static str = "qkd-postproc auth pool feed digest v1";

    fn new(id: SecretId, preshared_bytes: u64) -> Self {
        let mut h = blake3::Hasher::new_derive_key(Self::CONTEXT);
        h.update(&id.get().to_be_bytes());
        h.update(&preshared_bytes.to_be_bytes());
        let mut digest = [0u8; FEED_DIGEST_BYTES];
        digest.copy_from_slice(&h.finalize().as_bytes()[..FEED_DIGEST_BYTES]);
        FeedLog {
            count: 0,
            digest,
            history: VecDeque::from([(0, digest)]),
        }
    }

    fn add(&mut self, block: BlockId, bytes: u64) {
        let mut h = blake3::Hasher::new_derive_key(Self::CONTEXT);
        h.update(&self.digest);
        h.update(&block.get().to_be_bytes());
        h.update(&bytes.to_be_bytes());
        self.digest
            .copy_from_slice(&h.finalize().as_bytes()[..FEED_DIGEST_BYTES]);
        self.count += 1;
        if self.history.len() == FEED_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((self.count, self.digest));
    }

    fn at(&self, count: u64) -> Option<[u8; FEED_DIGEST_BYTES]> {
        self.history
            .iter()
            .find(|(c, _)| *c == count)
            .map(|(_, d)| *d)
    }
}

/// How a peer's feed digest compares with this pool's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FeedComparison {
    /// Same digest after the same number of deposits.
    InStep,
    /// The peer has fed more deposits than this end: compare again later.
    PeerAhead,
    /// This end's history no longer reaches back to the peer's count.
    TooOld,
    /// Different digests after the same number of deposits: the two pad
    /// streams differ from that deposit on. Nothing recovers this but a fresh
    /// pre-shared secret.
    Diverged,
}

impl AuthKeyPool {
    /// A fresh pool for the end with `role`, filled from the pre-shared
    /// `secret` (both ends give the same one), which it consumes. The first
    /// 16 bytes of each half are the first hash keys; at least 32 bytes are
    /// needed.
    ///
    /// A fresh pool can neither seal nor accept anything before its first
    /// [checkpoint](Self::checkpoint) is committed: the host must have
    /// persisted a state that names this secret before the secret's pads
    /// are used. See the [restart rules](super#restarts).
    ///
    /// # Errors
    /// [`PoolError::SecretTooShort`], or [`PoolError::Config`] for a
    /// configuration [`PoolConfig::validate`] refuses.
    pub fn new(role: Role, secret: PresharedSecret, config: PoolConfig) -> Result<Self, PoolError> {
        if config.validate().is_err() {
            return Err(PoolError::Config(
                "invalid pool configuration (see PoolConfig::validate)",
            ));
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
            secret_id: secret.id,
            streams: [PadStream::default(), PadStream::default()],
            send_cursor: 0,
            recv_end: 0,
            recv_used: VecDeque::new(),
            // The first hash keys are taken at once, before any checkpoint.
            send_limit: HASH_KEY_UNITS,
            recv_limit: HASH_KEY_UNITS,
            generation: 0,
            checkpoint_armed: true,
            feed: FeedLog::new(secret.id, secret.len() as u64),
            stats: PoolStats::default(),
            block: BlockAccount::default(),
            last_block: None,
            low_water_armed: true,
            events: VecDeque::new(),
        };
        let bits = pool.deposit(secret.key.expose_secret());
        drop(secret);
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

    /// The pre-shared secret this pool descends from.
    #[must_use]
    pub fn secret_id(&self) -> SecretId {
        self.secret_id
    }

    /// Checkpoints committed since the fresh start (restores included).
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The durable horizons `(send, receive)`: units at or above them are
    /// used only after a checkpoint covering them is committed.
    #[must_use]
    pub fn limits(&self) -> (u64, u64) {
        (self.send_limit, self.recv_limit)
    }

    /// Deposits fed so far (the pre-shared secret is deposit 0) and the
    /// digest after the last one.
    #[must_use]
    pub fn feed_digest(&self) -> (u64, [u8; FEED_DIGEST_BYTES]) {
        (self.feed.count, self.feed.digest)
    }

    /// Compares the peer's feed digest after `count` deposits with this
    /// end's.
    #[must_use]
    pub fn compare_feed(&self, count: u64, digest: &[u8; FEED_DIGEST_BYTES]) -> FeedComparison {
        if count > self.feed.count {
            return FeedComparison::PeerAhead;
        }
        match self.feed.at(count) {
            None => FeedComparison::TooOld,
            Some(mine) if mine == *digest => FeedComparison::InStep,
            Some(_) => FeedComparison::Diverged,
        }
    }

    /// The state to persist so that a restart continues strictly after
    /// every position this pool may use: the durable horizons move to
    /// `reserve` units ([`PoolConfig::checkpoint_units`]) beyond the send
    /// cursor and the receive window. Nothing changes here: the new horizons
    /// take effect when the state, once written durably, is
    /// [committed](Self::commit).
    #[must_use]
    pub fn checkpoint(&self) -> PoolState {
        let reserve = self.config.checkpoint_units;
        let send_limit = self
            .send_limit
            .max(self.send_cursor.saturating_add(reserve));
        let recv_limit = self.recv_limit.max(self.recv_end.saturating_add(reserve));
        let own = Self::stream_index(self.role);
        let peer = Self::stream_index(self.role.peer());
        PoolState {
            version: POOL_STATE_VERSION,
            role: self.role,
            config: self.config.clone(),
            secret_id: self.secret_id,
            generation: self.generation + 1,
            send_limit,
            recv_limit,
            send_stream: self.streams[own].save_from(send_limit),
            recv_stream: self.streams[peer].save_from(recv_limit),
            feed: self.feed.clone(),
            last_block: self.last_block,
            stats: self.stats.clone(),
        }
    }

    /// Puts in force the horizons of `state`, a checkpoint of this pool that
    /// the host has written durably. A state of another pool, or one older
    /// than the horizons in force, changes nothing.
    ///
    /// # Errors
    /// [`PoolError::State`] if `state` is not a checkpoint of this pool.
    pub fn commit(&mut self, state: &PoolState) -> Result<(), PoolError> {
        if state.role != self.role
            || state.secret_id != self.secret_id
            || state.generation != self.generation + 1
            || state.send_limit < self.send_limit
            || state.recv_limit < self.recv_limit
        {
            return Err(PoolError::State("not the latest checkpoint of this pool"));
        }
        self.send_limit = state.send_limit;
        self.recv_limit = state.recv_limit;
        self.generation = state.generation;
        self.checkpoint_armed = true;
        Ok(())
    }

    /// The pool saved in `state`, continuing strictly after every position
    /// the saved pool may have used: the send cursor restarts at the saved
    /// send horizon and every position of the peer's stream below the saved
    /// receive horizon is refused as too old (so no message accepted before
    /// the restart can be accepted again). The restored pool's horizons are
    /// where it starts: take and commit a checkpoint before sealing or
    /// accepting anything.
    ///
    /// # Errors
    /// [`PoolError::State`] for another format version, a role or
    /// configuration other than `role` and `config`, or a state whose
    /// fields contradict each other.
    pub fn restore(role: Role, config: &PoolConfig, state: PoolState) -> Result<Self, PoolError> {
        if state.version != POOL_STATE_VERSION {
            return Err(PoolError::State("unsupported state version"));
        }
        if state.role != role {
            return Err(PoolError::State("state saved by the other end"));
        }
        if &state.config != config {
            return Err(PoolError::State("state saved with another configuration"));
        }
        if config.validate().is_err() {
            return Err(PoolError::State("invalid configuration in the state"));
        }
        let stream_fits = |st: &StreamState, limit: u64| {
            st.first_unit == limit || (st.first_unit < limit && st.units.0.is_empty())
        };
        if !stream_fits(&state.send_stream, state.send_limit)
            || !stream_fits(&state.recv_stream, state.recv_limit)
            || state
                .send_stream
                .first_unit
                .checked_add(state.send_stream.units.0.len() as u64)
                .is_none()
            || state
                .recv_stream
                .first_unit
                .checked_add(state.recv_stream.units.0.len() as u64)
                .is_none()
            || state.feed.history.back().map(|(c, d)| (*c, *d))
                != Some((state.feed.count, state.feed.digest))
            || state.feed.history.len() > FEED_HISTORY
        {
            return Err(PoolError::State("inconsistent state"));
        }
        let own = Self::stream_index(role);
        let peer = Self::stream_index(role.peer());
        let mut streams = [PadStream::default(), PadStream::default()];
        let stats = state.stats.clone();
        let PoolState {
            send_stream,
            recv_stream,
            ..
        } = state;
        streams[own] = PadStream::restore(send_stream);
        streams[peer] = PadStream::restore(recv_stream);
        let window = config.window_units;
        let low = state.recv_limit.saturating_sub(window);
        let mut pool = AuthKeyPool {
            role,
            config: config.clone(),
            secret_id: state.secret_id,
            streams,
            send_cursor: state.send_limit,
            recv_end: state.recv_limit,
            // Everything below the receive horizon counts as used.
            recv_used: VecDeque::from(vec![true; (state.recv_limit - low) as usize]),
            send_limit: state.send_limit,
            recv_limit: state.recv_limit,
            generation: state.generation,
            checkpoint_armed: false,
            feed: state.feed.clone(),
            stats: PoolStats::default(),
            block: BlockAccount::default(),
            last_block: state.last_block,
            low_water_armed: true,
            events: VecDeque::from([PoolEvent::CheckpointDue]),
        };
        // Units the saved pool reserved beyond its cursor and window are
        // skipped; how many of them it used before the restart is unknown
        // here, so they are not counted apart (stats.skipped_bits counts
        // only units skipped by this process, see `commit`).
        pool.stats = stats;
        Ok(pool)
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

    /// Deposits `key`, this end's share of the final key of an agreed block,
    /// and counts it for that block.
    ///
    /// `agreed` is the proof, made only by the [confirmation](crate::confirm)
    /// machines, that both ends decided to keep the block: a block whose
    /// outcome is not agreed cannot feed the pool. Both ends must feed the
    /// same agreed blocks in the same order; compare
    /// [`feed_digest`](Self::feed_digest)s (the channel does, see
    /// [`FeedComparison`]) to catch a layer above that did not.
    ///
    /// # Errors
    /// [`PoolError::BlockOrder`] if the block is not above the last one
    /// deposited; nothing is deposited then.
    pub fn replenish(
        &mut self,
        agreed: &ConfirmedBlock,
        key: &SecretKey,
    ) -> Result<u64, PoolError> {
        let block = agreed.block();
        if let Some(last) = self.last_block
            && block <= last
        {
            return Err(PoolError::BlockOrder { block, last });
        }
        self.last_block = Some(block);
        let bits = self.deposit(key.expose_secret());
        self.feed.add(block, bits / 8);
        self.stats.replenished_bits += bits;
        self.block.replenished_bits += bits;
        // A restore from a state older than this deposit would lose it.
        self.raise_checkpoint_due(true);
        Ok(bits)
    }

    /// Takes the configured [share](PoolConfig::share) from the front of the
    /// final key of the agreed block, deposits it, and closes the block's
    /// account. Returns the rest of the key (for the key store) and the account.
    ///
    /// # Errors
    /// [`PoolError::BlockOrder`] as [`replenish`](Self::replenish); the key
    /// is given back untouched in that case.
    pub fn replenish_from_block(
        &mut self,
        agreed: &ConfirmedBlock,
        mut final_key: SecretKey,
    ) -> Result<(SecretKey, BlockAccount), (PoolError, SecretKey)> {
        let take = self.config.share.bytes_of(final_key.len());
        let rest = match final_key.split_off(take) {
            Ok(rest) => rest,
            Err(_) => return Err((PoolError::Config("share larger than block"), final_key)),
        };
        if let Err(e) = self.replenish(agreed, &final_key) {
            // Put the key back together for the caller.
            // Allocated at its final size: no reallocation leaves a copy behind.
            let mut whole = Vec::with_capacity(final_key.len() + rest.len());
            whole.extend_from_slice(final_key.expose_secret());
            whole.extend_from_slice(rest.expose_secret());
            return Err((e, SecretKey::from_vec(whole)));
        }
        drop(final_key);
        Ok((rest, self.close_block(agreed.block())))
    }

    fn raise_checkpoint_due(&mut self, force: bool) {
        if !self.checkpoint_armed {
            return;
        }
        let half = self.config.checkpoint_units / 2;
        let send_left = self.send_limit.saturating_sub(self.send_cursor);
        let recv_left = self.recv_limit.saturating_sub(self.recv_end);
        if force || send_left <= half || recv_left <= half {
            self.checkpoint_armed = false;
            self.events.push_back(PoolEvent::CheckpointDue);
        }
    }

    /// Returns the account of everything since the last close, labelled
    /// `block`, and starts a new one.
    pub fn close_block(&mut self, block: BlockId) -> BlockAccount {
        let mut account = core::mem::take(&mut self.block);
        account.block = block;
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
        if pos
            .checked_add(units)
            .is_none_or(|end| end > self.send_limit)
        {
            return Err(PoolError::CheckpointRequired);
        }
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
        self.raise_checkpoint_due(false);
        Ok(pad)
    }

    /// The lowest position of the peer's stream this end can still accept:
    /// after a restore, everything below the saved receive horizon is
    /// refused, and the peer should [skip](Self::skip_send_to) there.
    #[must_use]
    pub fn receive_floor(&self) -> u64 {
        let low = self.recv_end.saturating_sub(self.config.window_units);
        let peer = &self.streams[Self::stream_index(self.role.peer())];
        low.max(peer.freed)
    }

    /// Moves the send cursor forward to `pos` (the peer's
    /// [receive floor](Self::receive_floor), announced in an authentic
    /// message): the units skipped are zeroized and counted in
    /// [`PoolStats::skipped_bits`]; they are never used. A position at or
    /// below the cursor changes nothing.
    pub fn skip_send_to(&mut self, pos: u64) {
        if pos <= self.send_cursor {
            return;
        }
        let stream_end = self.streams[Self::stream_index(self.role)].end;
        let skipped = pos.min(stream_end).saturating_sub(self.send_cursor);
        self.stats.skipped_bits += skipped * 64;
        self.send_stream().free_below(pos);
        self.send_cursor = pos;
        self.raise_checkpoint_due(false);
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
        if end > self.recv_limit {
            return Err(PoolError::CheckpointRequired);
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
        self.raise_checkpoint_due(false);
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

    /// A fresh pool with its first checkpoint committed.
    fn fresh(role: Role, s: &SecretKey, config: PoolConfig) -> AuthKeyPool {
        let mut pool = AuthKeyPool::new(
            role,
            PresharedSecret::new(SecretId::new(9), s.clone()),
            config,
        )
        .unwrap();
        let state = pool.checkpoint();
        pool.commit(&state).unwrap();
        pool
    }

    fn agreed(block: u64) -> ConfirmedBlock {
        ConfirmedBlock::new(BlockId::new(block))
    }

    fn pair(len: usize, config: PoolConfig) -> (AuthKeyPool, AuthKeyPool) {
        let s = secret(len);
        (
            fresh(Role::Alice, &s, config.clone()),
            fresh(Role::Bob, &s, config),
        )
    }

    #[test]
    fn layout_splits_each_deposit_in_halves() {
        let s = secret(64);
        let mut a = fresh(Role::Alice, &s, PoolConfig::default());
        let mut b = fresh(Role::Bob, &s, PoolConfig::default());
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
            AuthKeyPool::new(
                Role::Alice,
                PresharedSecret::new(SecretId::new(1), secret(31)),
                PoolConfig::default()
            )
            .unwrap_err(),
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
            AuthKeyPool::new(
                Role::Alice,
                PresharedSecret::new(SecretId::new(1), secret(64)),
                config
            ),
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
        a.replenish(&agreed(1), &secret(128)).unwrap(); // +512: 576 left, re-armed
        // A deposit asks for a checkpoint (a restore would lose it otherwise).
        assert_eq!(a.poll_event(), Some(PoolEvent::CheckpointDue));
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
        let (rest, account) = a.replenish_from_block(&agreed(7), block.clone()).unwrap();
        assert_eq!(rest.len(), 125_000 - 1248);
        assert_eq!(rest.expose_secret(), &block.expose_secret()[1248..]);
        assert_eq!(account.block, BlockId::new(7));
        assert_eq!(account.replenished_bits, 1248 * 8);
        assert_eq!(account.sent_messages, 1);
        assert_eq!(account.consumed_bits(), 128);
        let (_, account_b) = b.replenish_from_block(&agreed(7), block.clone()).unwrap();
        assert_eq!(account_b.received_messages, 1);
        assert_eq!(account_b.consumed_bits(), 128);
        // Out of order: refused, key handed back whole.
        let (err, back) = a
            .replenish_from_block(&agreed(7), block.clone())
            .unwrap_err();
        assert_eq!(
            err,
            PoolError::BlockOrder {
                block: BlockId::new(7),
                last: BlockId::new(7)
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
    fn horizons_refuse_without_change_until_a_checkpoint_is_committed() {
        let s = secret(4096);
        let config = PoolConfig {
            checkpoint_units: 8,
            ..PoolConfig::default()
        };
        let mut a = AuthKeyPool::new(
            Role::Alice,
            PresharedSecret::new(SecretId::new(4), s.clone()),
            config.clone(),
        )
        .unwrap();
        // Fresh: nothing beyond the two hash key units before a checkpoint.
        a.take_send_hash_key().unwrap();
        assert_eq!(
            a.take_send_pad(TagMode::Bits64).unwrap_err(),
            PoolError::CheckpointRequired
        );
        let state = a.checkpoint();
        assert_eq!(state.limits(), (10, 8));
        a.commit(&state).unwrap();
        assert_eq!(a.generation(), 1);
        while a.poll_event().is_some() {}
        for _ in 0..4 {
            a.take_send_pad(TagMode::Bits128).unwrap();
        }
        // Half the reserve was used: a checkpoint is due.
        assert_eq!(a.poll_event(), Some(PoolEvent::CheckpointDue));
        let before = (a.send_position(), a.stats().clone());
        assert_eq!(
            a.take_send_pad(TagMode::Bits64).unwrap_err(),
            PoolError::CheckpointRequired
        );
        assert_eq!((a.send_position(), a.stats().clone()), before);
        // The restored pool starts at the saved horizon, not at the cursor.
        let restored = AuthKeyPool::restore(Role::Alice, &config, a.checkpoint()).unwrap();
        assert_eq!(restored.send_position(), 18);
        // A peer's floor far ahead, even absurd, only moves the cursor.
        let mut b = fresh(Role::Bob, &s, PoolConfig::default());
        b.skip_send_to(u64::MAX);
        assert_eq!(b.send_remaining_bits(), 0);
        assert!(b.take_send_pad(TagMode::Bits64).is_err());
        let _ = b.checkpoint();
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
