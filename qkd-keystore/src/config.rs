//! [`StoreConfig`] and the node's [`StoreRole`].

use std::time::Duration;

use qkd_core::BlockId;
use qkd_core::machine::ConfigError;
use serde::{Deserialize, Serialize};

use crate::notice::MAX_SAE_ID_LEN;

/// Which half of the key material a node owns when a block arrives.
///
/// The chunks of all blocks are numbered link-wide by the parity of
/// `block + chunk` (block number plus chunk index within the block): the
/// [`EvenChunks`](StoreRole::EvenChunks) node owns the chunks where that sum
/// is even, the [`OddChunks`](StoreRole::OddChunks) node those where it is
/// odd. A block of one chunk therefore goes to one node or the other in
/// turn, and a block of many chunks is split evenly. The two nodes of a link
/// must have different roles (qkd-sync checks this in its hello).
///
/// The role says nothing about who prepared or measured the photons; the
/// usual choice is `StoreRole::from(qkd_core::Role::Alice)` on Alice's node
/// and `from(Role::Bob)` on Bob's:
///
/// ```
/// use qkd_keystore::StoreRole;
///
/// assert_eq!(StoreRole::from(qkd_core::Role::Alice), StoreRole::EvenChunks);
/// assert_eq!(StoreRole::from(qkd_core::Role::Bob), StoreRole::OddChunks);
/// assert_eq!(StoreRole::EvenChunks.peer(), StoreRole::OddChunks);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreRole {
    /// Owns the chunks whose `block + chunk` is even until it lends them.
    EvenChunks,
    /// Owns the chunks whose `block + chunk` is odd until it lends them.
    OddChunks,
}

impl StoreRole {
    /// The other role.
    #[must_use]
    pub const fn peer(self) -> StoreRole {
        match self {
            StoreRole::EvenChunks => StoreRole::OddChunks,
            StoreRole::OddChunks => StoreRole::EvenChunks,
        }
    }

    /// Whether this role owns chunk `chunk` of `block` before any transfer.
    #[must_use]
    pub const fn owns_initially(self, block: BlockId, chunk: u32) -> bool {
        let odd = (block.get() ^ chunk as u64) & 1 == 1;
        match self {
            StoreRole::EvenChunks => !odd,
            StoreRole::OddChunks => odd,
        }
    }

    /// The wire byte of the role (0 = even chunks, 1 = odd chunks).
    #[must_use]
    pub const fn to_byte(self) -> u8 {
        match self {
            StoreRole::EvenChunks => 0,
            StoreRole::OddChunks => 1,
        }
    }

    /// The role of a wire byte, if it names one.
    #[must_use]
    pub const fn from_byte(byte: u8) -> Option<StoreRole> {
        match byte {
            0 => Some(StoreRole::EvenChunks),
            1 => Some(StoreRole::OddChunks),
            _ => None,
        }
    }
}

impl From<qkd_core::Role> for StoreRole {
    /// Alice's node owns the even chunks, Bob's the odd ones.
    fn from(role: qkd_core::Role) -> Self {
        match role {
            qkd_core::Role::Alice => StoreRole::EvenChunks,
            qkd_core::Role::Bob => StoreRole::OddChunks,
        }
    }
}

/// Largest chunk a store cuts, in bytes: 64 KiB.
pub const MAX_CHUNK_BYTES: u32 = 1 << 16;

/// Largest value of [`StoreConfig::max_key_bytes`]: 64 KiB, a 524 288-bit key.
pub const MAX_KEY_BYTES: u32 = 1 << 16;

/// Default of [`StoreConfig::max_key_bytes`]: 8 KiB, a 65 536-bit key
/// (eight chunks of the default size).
pub const DEFAULT_MAX_KEY_BYTES: u32 = 8 << 10;

/// Settings of a [`KeyStore`](crate::KeyStore).
///
/// Both nodes of a link must use the same `link` and `chunk_bytes` (qkd-sync
/// checks this in its hello); the rest may differ. Every field but `link`
/// and `role` has a default (shown below, the same as
/// [`StoreConfig::new`]) that works for a small link (final key blocks of a
/// few hundred bytes) as well as for a large one (blocks of megabytes).
///
/// # Ownership and lending
///
/// Every block is cut into chunks of `chunk_bytes` (the last one shorter);
/// a chunk is owned by exactly one node, first by the rule of
/// [`StoreRole`], so each node owns about half of the material of a link
/// whatever its block size. Only a chunk's owner hands keys out of it
/// fresh. When a node's fresh bytes fall below `borrow_low_water` it asks
/// the peer to lend it `2 * borrow_low_water` minus what it has, and says
/// how much it has. The lender gives whole chunks, newest first, up to that
/// amount, but only as long as it keeps at least as many fresh bytes as the
/// borrower then has: material flows from the richer node to the poorer
/// one and never back and forth. A lent chunk is given up before the grant
/// leaves, so it has at most one owner at every moment.
///
/// # Keys larger than a chunk
///
/// A key of at most `chunk_bytes` is cut from one chunk, as one piece; a
/// larger one, up to `max_key_bytes`, is made of pieces of several chunks
/// owned here, oldest first, possibly of several blocks (see
/// [`KeyPieces`](crate::KeyPieces)). The maximum is bounded because one
/// key travels to the peer in one notice record (at most
/// [`MAX_KEY_PIECES`](crate::notice::MAX_KEY_PIECES) pieces, which must
/// fit one qkd-sync message), and because each node builds the whole key
/// in one zeroizing buffer (and an ETSI 014 answer holds `number` of them),
/// so the largest key bounds the memory one request takes.
///
/// # Bounds on what the peer can make this node hold
///
/// `max_pairings`, `max_blocks_ahead` and `max_delivered_keys` bound the
/// state the peer's notices create (see the field docs); a notice beyond
/// them is refused and reported as the peer's misbehaviour, except that
/// delivered keys beyond `max_delivered_keys` expire oldest first.
///
/// ```
/// use qkd_keystore::{StoreConfig, StoreRole};
///
/// let json = r#"{ "link": "link-1", "role": "odd_chunks", "chunk_bytes": 512 }"#;
/// let config: StoreConfig = serde_json::from_str(json).unwrap();
/// assert_eq!(config.chunk_bytes, 512);
/// assert_eq!(config.capacity_bytes, StoreConfig::new("x", StoreRole::OddChunks).capacity_bytes);
/// assert!(config.validate().is_ok());
/// // Unknown fields are refused, and so are values out of range, by name.
/// assert!(serde_json::from_str::<StoreConfig>(r#"{ "link": "l", "role": "odd_chunks", "chunk": 1 }"#).is_err());
/// let bad = StoreConfig { chunk_bytes: 0, ..config };
/// assert_eq!(bad.validate().unwrap_err().field(), "chunk_bytes");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Name of the link, mixed into every key ID (1 to 255 bytes).
    pub link: String,
    /// This node's role.
    pub role: StoreRole,
    /// Size of an ownership unit in bytes, also the largest key cut in one
    /// piece (1 to [`MAX_CHUNK_BYTES`]; default 1024, an 8192-bit key).
    #[serde(default = "defaults::chunk_bytes")]
    pub chunk_bytes: u32,
    /// Largest key [`take`](crate::KeyStore::take) hands out, in bytes;
    /// larger than `chunk_bytes` means keys of several pieces (1 to
    /// [`MAX_KEY_BYTES`]; default [`DEFAULT_MAX_KEY_BYTES`], 8 KiB). See
    /// "Keys larger than a chunk".
    #[serde(default = "defaults::max_key_bytes")]
    pub max_key_bytes: u32,
    /// Most bytes held: chunk copies, reserved and delivered keys
    /// (at least `chunk_bytes`; default 256 MiB).
    #[serde(default = "defaults::capacity_bytes")]
    pub capacity_bytes: u64,
    /// How long fresh material may wait after its block was stored before
    /// its owner drops it (more than zero; default one hour).
    #[serde(default = "defaults::key_ttl")]
    pub key_ttl: Duration,
    /// How long a key handed out on the peer waits here for its slaves
    /// (more than zero; default ten minutes).
    #[serde(default = "defaults::delivered_ttl")]
    pub delivered_ttl: Duration,
    /// How long a reservation holds its keys before they are dropped
    /// (more than zero; default one minute).
    #[serde(default = "defaults::reservation_ttl")]
    pub reservation_ttl: Duration,
    /// Below this many fresh bytes the store asks the peer to lend it
    /// chunks (0 never borrows; default 64 KiB). See "Ownership and lending".
    #[serde(default = "defaults::borrow_low_water")]
    pub borrow_low_water: u64,
    /// Most keys one take or reservation may ask for (at least 1; default 10 000).
    #[serde(default = "defaults::max_keys_per_request")]
    pub max_keys_per_request: u32,
    /// Most (master SAE, slave SAE) pairings whose counters are kept
    /// (at least 1; default 1024). A delivered notice that would add one
    /// more is reported as misbehaviour; its keys are kept, uncounted.
    #[serde(default = "defaults::max_pairings")]
    pub max_pairings: u32,
    /// How far ahead of this node's last block the peer may announce a
    /// block it stored or lost, in block numbers; this also bounds how
    /// many such announcements are remembered (at least 1; default 4096).
    #[serde(default = "defaults::max_blocks_ahead")]
    pub max_blocks_ahead: u32,
    /// Most keys handed out on the peer that wait here for their slaves;
    /// beyond it the oldest expire early (at least 1; default 2^20).
    #[serde(default = "defaults::max_delivered_keys")]
    pub max_delivered_keys: u32,
}

/// The documented defaults, one function per field (serde needs them so).
mod defaults {
    use std::time::Duration;

    pub(super) const fn chunk_bytes() -> u32 {
        1024
    }
    pub(super) const fn max_key_bytes() -> u32 {
        super::DEFAULT_MAX_KEY_BYTES
    }
    pub(super) const fn capacity_bytes() -> u64 {
        256 << 20
    }
    pub(super) const fn key_ttl() -> Duration {
        Duration::from_secs(3600)
    }
    pub(super) const fn delivered_ttl() -> Duration {
        Duration::from_secs(600)
    }
    pub(super) const fn reservation_ttl() -> Duration {
        Duration::from_secs(60)
    }
    pub(super) const fn borrow_low_water() -> u64 {
        64 << 10
    }
    pub(super) const fn max_keys_per_request() -> u32 {
        10_000
    }
    pub(super) const fn max_pairings() -> u32 {
        1024
    }
    pub(super) const fn max_blocks_ahead() -> u32 {
        4096
    }
    pub(super) const fn max_delivered_keys() -> u32 {
        1 << 20
    }
}

impl StoreConfig {
    /// The defaults (see the fields) for `link` and `role`.
    #[must_use]
    pub fn new(link: impl Into<String>, role: StoreRole) -> Self {
        StoreConfig {
            link: link.into(),
            role,
            chunk_bytes: defaults::chunk_bytes(),
            max_key_bytes: defaults::max_key_bytes(),
            capacity_bytes: defaults::capacity_bytes(),
            key_ttl: defaults::key_ttl(),
            delivered_ttl: defaults::delivered_ttl(),
            reservation_ttl: defaults::reservation_ttl(),
            borrow_low_water: defaults::borrow_low_water(),
            max_keys_per_request: defaults::max_keys_per_request(),
            max_pairings: defaults::max_pairings(),
            max_blocks_ahead: defaults::max_blocks_ahead(),
            max_delivered_keys: defaults::max_delivered_keys(),
        }
    }

    /// Checks every field against the ranges in its documentation.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.link.is_empty() || self.link.len() > MAX_SAE_ID_LEN {
            return Err(ConfigError::new(
                "link",
                format!("must be 1 to 255 bytes, got {}", self.link.len()),
            ));
        }
        if self.chunk_bytes == 0 || self.chunk_bytes > MAX_CHUNK_BYTES {
            return Err(ConfigError::new(
                "chunk_bytes",
                format!("must be 1 to {MAX_CHUNK_BYTES}, got {}", self.chunk_bytes),
            ));
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > MAX_KEY_BYTES {
            return Err(ConfigError::new(
                "max_key_bytes",
                format!("must be 1 to {MAX_KEY_BYTES}, got {}", self.max_key_bytes),
            ));
        }
        if self.capacity_bytes < u64::from(self.chunk_bytes) {
            return Err(ConfigError::new(
                "capacity_bytes",
                format!(
                    "must be at least chunk_bytes ({}), got {}",
                    self.chunk_bytes, self.capacity_bytes
                ),
            ));
        }
        for (field, ttl) in [
            ("key_ttl", self.key_ttl),
            ("delivered_ttl", self.delivered_ttl),
            ("reservation_ttl", self.reservation_ttl),
        ] {
            if ttl.is_zero() {
                return Err(ConfigError::new(field, "must be more than zero"));
            }
        }
        if self.borrow_low_water > self.capacity_bytes {
            return Err(ConfigError::new(
                "borrow_low_water",
                format!(
                    "must be at most capacity_bytes ({}), got {}",
                    self.capacity_bytes, self.borrow_low_water
                ),
            ));
        }
        for (field, value) in [
            ("max_keys_per_request", self.max_keys_per_request),
            ("max_pairings", self.max_pairings),
            ("max_blocks_ahead", self.max_blocks_ahead),
            ("max_delivered_keys", self.max_delivered_keys),
        ] {
            if value == 0 {
                return Err(ConfigError::new(field, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// Sets the chunk size in bytes.
    #[must_use]
    pub fn with_chunk_bytes(mut self, chunk_bytes: u32) -> Self {
        self.chunk_bytes = chunk_bytes;
        self
    }

    /// Sets the largest key in bytes.
    #[must_use]
    pub fn with_max_key_bytes(mut self, max_key_bytes: u32) -> Self {
        self.max_key_bytes = max_key_bytes;
        self
    }

    /// Sets the capacity in bytes.
    #[must_use]
    pub fn with_capacity_bytes(mut self, capacity_bytes: u64) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_split_every_chunk_between_the_nodes() {
        for block in [0u64, 1, 2, 7, u64::MAX] {
            for chunk in 0..6u32 {
                let b = BlockId::new(block);
                assert_ne!(
                    StoreRole::EvenChunks.owns_initially(b, chunk),
                    StoreRole::OddChunks.owns_initially(b, chunk)
                );
            }
        }
        // One-chunk blocks alternate between the nodes.
        let owners: Vec<bool> = (1..=4u64)
            .map(|b| StoreRole::EvenChunks.owns_initially(BlockId::new(b), 0))
            .collect();
        assert_eq!(owners, [false, true, false, true]);
        for r in [StoreRole::EvenChunks, StoreRole::OddChunks] {
            assert_eq!(StoreRole::from_byte(r.to_byte()), Some(r));
            assert_eq!(r.peer().peer(), r);
        }
        assert_eq!(StoreRole::from_byte(2), None);
    }

    #[test]
    fn defaults_are_valid_and_every_bound_names_its_field() {
        let ok = StoreConfig::new("l", StoreRole::EvenChunks);
        ok.validate().unwrap();
        let cases: [(&str, StoreConfig); 13] = [
            (
                "link",
                StoreConfig {
                    link: String::new(),
                    ..ok.clone()
                },
            ),
            (
                "link",
                StoreConfig {
                    link: "x".repeat(256),
                    ..ok.clone()
                },
            ),
            ("chunk_bytes", ok.clone().with_chunk_bytes(0)),
            (
                "chunk_bytes",
                ok.clone().with_chunk_bytes(MAX_CHUNK_BYTES + 1),
            ),
            ("max_key_bytes", ok.clone().with_max_key_bytes(0)),
            (
                "max_key_bytes",
                ok.clone().with_max_key_bytes(MAX_KEY_BYTES + 1),
            ),
            ("capacity_bytes", ok.clone().with_capacity_bytes(1023)),
            ("key_ttl", ok.clone().with_key_ttl(Duration::ZERO)),
            (
                "delivered_ttl",
                ok.clone().with_delivered_ttl(Duration::ZERO),
            ),
            (
                "reservation_ttl",
                ok.clone().with_reservation_ttl(Duration::ZERO),
            ),
            (
                "borrow_low_water",
                ok.clone()
                    .with_capacity_bytes(4096)
                    .with_borrow_low_water(4097),
            ),
            (
                "max_pairings",
                StoreConfig {
                    max_pairings: 0,
                    ..ok.clone()
                },
            ),
            (
                "max_blocks_ahead",
                StoreConfig {
                    max_blocks_ahead: 0,
                    ..ok.clone()
                },
            ),
        ];
        for (field, c) in cases {
            assert_eq!(c.validate().unwrap_err().field(), field, "{c:?}");
        }
        let c = StoreConfig {
            max_keys_per_request: 0,
            ..ok.clone()
        };
        assert_eq!(c.validate().unwrap_err().field(), "max_keys_per_request");
        let c = StoreConfig {
            max_delivered_keys: 0,
            ..ok
        };
        assert_eq!(c.validate().unwrap_err().field(), "max_delivered_keys");
    }

    #[test]
    fn serde_round_trip_with_defaults_and_no_unknown_fields() {
        let c = StoreConfig::new("link-9", StoreRole::OddChunks).with_chunk_bytes(64);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<StoreConfig>(&json).unwrap(), c);
        let short: StoreConfig =
            serde_json::from_str(r#"{"link":"link-9","role":"even_chunks"}"#).unwrap();
        assert_eq!(short, StoreConfig::new("link-9", StoreRole::EvenChunks));
        assert!(
            serde_json::from_str::<StoreConfig>(r#"{"link":"l","role":"even_chunks","x":1}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<StoreConfig>(r#"{"link":"l","role":"first"}"#).is_err());
    }
}
