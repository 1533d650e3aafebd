//! Errors of the key store, split by cause. None carries key material.

use qkd_core::BlockId;

/// The caller gave a bad [`Binding`](crate::Binding).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindingError {
    /// An SAE ID is empty or too long.
    #[error("SAE ID of {len} bytes (1 to 255 allowed)")]
    BadSaeId {
        /// Its length in bytes.
        len: usize,
    },
    /// No slave SAE was named.
    #[error("a binding needs at least one slave SAE")]
    NoSlave,
    /// Too many slave SAEs.
    #[error("{count} slave SAEs (at most 64)")]
    TooManySlaves {
        /// How many were given.
        count: usize,
    },
    /// A slave SAE was named twice.
    #[error("a slave SAE is named twice")]
    DuplicateSlave,
}

/// The caller misused [`KeyStore::insert_block`](crate::KeyStore::insert_block)
/// or the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Blocks must arrive with strictly increasing IDs, in the same order on both nodes.
    #[error("block {block} does not follow block {last}")]
    BlockOutOfOrder {
        /// The block given.
        block: BlockId,
        /// The last block inserted or discarded.
        last: BlockId,
    },
    /// A block was empty or longer than `u32::MAX` bytes.
    #[error("block of {len} bytes (1 to 4294967295 allowed)")]
    BadBlockLength {
        /// Its length in bytes.
        len: usize,
    },
}

/// Why keys could not be taken or a reservation used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TakeError {
    /// The key size is zero, not a multiple of 8 bits, or larger than the
    /// store's maximum ([`StoreConfig::max_key_bytes`](crate::StoreConfig::max_key_bytes)).
    #[error("key size of {bits} bits not allowed (multiple of 8, 8 to {max_bits})")]
    InvalidSize {
        /// The size asked for.
        bits: usize,
        /// The largest size this store cuts.
        max_bits: usize,
    },
    /// Zero keys, or more keys than one request may take.
    #[error("{count} keys asked for (1 to {max} per request)")]
    InvalidCount {
        /// How many were asked for.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Not enough fresh material owned here; nothing was taken.
    #[error("{requested} keys asked for, {available} available")]
    Insufficient {
        /// Keys asked for.
        requested: usize,
        /// Keys of that size this node could hand out now.
        available: usize,
    },
    /// The reservation does not exist (any more).
    #[error("unknown or expired reservation")]
    UnknownReservation,
}

/// Why a lookup by key ID was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// The key exists but the named slave SAE may not fetch it (not in its
    /// binding, or it fetched it already).
    #[error("the key is not available to this SAE")]
    NotAuthorized,
}

/// The peer sent a notice that does not fit this store's state: it broke the
/// protocol, or the two nodes were not fed the same blocks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoticeError {
    /// The notice names a block this store does not hold.
    #[error("notice for block {block}, which is not held here")]
    UnknownBlock {
        /// The block.
        block: BlockId,
    },
    /// A range lies outside its block, spans chunks, is empty, or names a
    /// byte that left already (or that another piece of the same key names).
    #[error("range outside block {block}, across a chunk boundary, or of bytes already gone")]
    BadRange {
        /// The block.
        block: BlockId,
    },
    /// A delivered key has more than
    /// [`MAX_KEY_PIECES`](crate::notice::MAX_KEY_PIECES) pieces or more
    /// than [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES) bytes.
    #[error("key at block {block} of {pieces} pieces and {bytes} bytes (at most 255 and 65536)")]
    OversizedKey {
        /// The block of its first piece.
        block: BlockId,
        /// Its pieces.
        pieces: usize,
        /// Its bytes.
        bytes: u64,
    },
    /// The peer claimed or granted a chunk it does not own.
    #[error("block {block} chunk {chunk} is not owned by the peer")]
    NotPeerOwned {
        /// The block.
        block: BlockId,
        /// The chunk.
        chunk: u32,
    },
    /// The peer announced a block lost after announcing it stored.
    #[error("block {block} announced lost after being announced stored")]
    LostAfterHave {
        /// The block.
        block: BlockId,
    },
    /// The peer announced a block further ahead of this node's last block
    /// than [`StoreConfig::max_blocks_ahead`](crate::StoreConfig::max_blocks_ahead)
    /// allows (or more announcements ahead than it allows); the
    /// announcement is forgotten.
    #[error("block {block} announced too far ahead of this node")]
    BlockTooFarAhead {
        /// The block.
        block: BlockId,
    },
    /// A consumed notice names a pairing no key was taken for here.
    #[error("consumed notice for a pairing no key was taken for")]
    UnknownPairing,
    /// A consumed notice counts zero keys, or more than were taken here for
    /// the pairing and not reported fetched yet.
    #[error("consumed notice for {count} keys, {outstanding} outstanding")]
    ConsumedTooMany {
        /// The count in the notice.
        count: u32,
        /// Keys of the pairing the peer's slave could still have fetched.
        outstanding: u64,
    },
    /// A delivered notice names a pairing beyond
    /// [`StoreConfig::max_pairings`](crate::StoreConfig::max_pairings); its
    /// keys were kept but are not counted.
    #[error("more pairings than the {max} this store counts")]
    TooManyPairings {
        /// The limit.
        max: u32,
    },
}
