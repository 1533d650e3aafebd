//! What each KMS can do and how its key store is set up: the capability
//! lists of the handshake, and the cipher suite registry.
//!
//! Both sides send their whole [`Capabilities`] in their hello; both hellos
//! are in the transcript that each side authenticates, so a man in the
//! middle that removes a suite, reorders a list or changes a store parameter
//! makes the handshake fail (downgrade detection).

use qkd_core::machine::ConfigError;
use serde::{Deserialize, Serialize};

/// Protocol version of the handshake and of the secured channel records.
pub const PROTOCOL_VERSION: u8 = 1;

/// A cipher suite of the secured channel, by its registry code.
///
/// | code | registry name | protection |
/// | --- | --- | --- |
/// | `0x0001` | `QKD_AES_256_GCM_BLAKE3` | AES-256-GCM, keys from `blake3::derive_key` over the PSK and the transcript hash, one key and IV per direction, nonce = IV ⊕ sequence number |
/// | `0x0002` | `QKD_OTP_WC_POLYVAL` | one-time pad from QKD key, Wegman-Carter tag (POLYVAL hash with a one-time hash key and a one-time tag pad, both from QKD key) |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CipherSuite {
    /// AES-256-GCM with the blake3 key schedule.
    #[serde(rename = "QKD_AES_256_GCM_BLAKE3")]
    Aes256GcmBlake3,
    /// One-time pad with Wegman-Carter tags: information-theoretically secure.
    #[serde(rename = "QKD_OTP_WC_POLYVAL")]
    OtpWegmanCarter,
}

impl CipherSuite {
    /// Every suite, in the default preference order.
    pub const ALL: [CipherSuite; 2] = [CipherSuite::Aes256GcmBlake3, CipherSuite::OtpWegmanCarter];

    /// The registry code (the wire form).
    #[must_use]
    pub const fn code(self) -> u16 {
        match self {
            CipherSuite::Aes256GcmBlake3 => 0x0001,
            CipherSuite::OtpWegmanCarter => 0x0002,
        }
    }

    /// The suite with registry code `code`, if this build knows it.
    #[must_use]
    pub const fn from_code(code: u16) -> Option<Self> {
        match code {
            0x0001 => Some(CipherSuite::Aes256GcmBlake3),
            0x0002 => Some(CipherSuite::OtpWegmanCarter),
            _ => None,
        }
    }

    /// The registry name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            CipherSuite::Aes256GcmBlake3 => "QKD_AES_256_GCM_BLAKE3",
            CipherSuite::OtpWegmanCarter => "QKD_OTP_WC_POLYVAL",
        }
    }

    /// The suite with registry name `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl core::fmt::Display for CipherSuite {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The suite a responder chooses: the first of its own preference list that
/// the initiator also offers. Unknown codes in either list are skipped. The
/// initiator recomputes this from both (authenticated) lists and rejects any
/// other choice.
///
/// ```
/// use qkd_handshake::capability::{negotiate, CipherSuite::*};
///
/// let i = [Aes256GcmBlake3.code(), OtpWegmanCarter.code()];
/// let r = [OtpWegmanCarter.code(), Aes256GcmBlake3.code()];
/// assert_eq!(negotiate(&i, &r), Some(OtpWegmanCarter));
/// assert_eq!(negotiate(&i[..1], &r[..1]), None);
/// ```
#[must_use]
pub fn negotiate(initiator: &[u16], responder: &[u16]) -> Option<CipherSuite> {
    responder
        .iter()
        .filter(|c| initiator.contains(c))
        .find_map(|&c| CipherSuite::from_code(c))
}

/// Which chunks of each block a node's key store owns at first (the key
/// store's role). The two ends of a link must own opposite halves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ownership {
    /// Owns the even-numbered chunks.
    First,
    /// Owns the odd-numbered chunks.
    Second,
}

impl Ownership {
    /// The other side's ownership.
    #[must_use]
    pub const fn peer(self) -> Self {
        match self {
            Ownership::First => Ownership::Second,
            Ownership::Second => Ownership::First,
        }
    }

    pub(crate) const fn to_byte(self) -> u8 {
        match self {
            Ownership::First => 0,
            Ownership::Second => 1,
        }
    }

    pub(crate) const fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Ownership::First),
            1 => Some(Ownership::Second),
            _ => None,
        }
    }
}

/// Key store parameters that must agree between the two KMS of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreParams {
    /// Ownership unit of the store in bytes (equal on both sides).
    pub chunk_bytes: u32,
    /// Smallest key size handed out, in bits (equal on both sides).
    pub min_key_bits: u32,
    /// Largest key size handed out, in bits (equal on both sides).
    pub max_key_bits: u32,
    /// This side's ownership (opposite on the two sides).
    pub ownership: Ownership,
}

/// Which store parameter two sides disagree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreMismatch {
    /// Different chunk sizes.
    #[error("chunk sizes differ: {ours} here, {theirs} at the peer")]
    ChunkBytes {
        /// This side's value.
        ours: u32,
        /// The peer's value.
        theirs: u32,
    },
    /// Different key size ranges.
    #[error("key sizes differ")]
    KeyBits,
    /// Both sides claim the same ownership.
    #[error("both sides own the same chunks")]
    Ownership,
    /// Different sync protocol versions.
    #[error("sync protocol versions differ: {ours} here, {theirs} at the peer")]
    SyncVersion {
        /// This side's value.
        ours: u8,
        /// The peer's value.
        theirs: u8,
    },
}

impl StoreParams {
    /// Whether `peer` (the other side's parameters) fits these.
    ///
    /// # Errors
    /// The first mismatch found.
    pub fn check_peer(&self, peer: &StoreParams) -> Result<(), StoreMismatch> {
        if self.chunk_bytes != peer.chunk_bytes {
            return Err(StoreMismatch::ChunkBytes {
                ours: self.chunk_bytes,
                theirs: peer.chunk_bytes,
            });
        }
        if self.min_key_bits != peer.min_key_bits || self.max_key_bits != peer.max_key_bits {
            return Err(StoreMismatch::KeyBits);
        }
        if self.ownership == peer.ownership {
            return Err(StoreMismatch::Ownership);
        }
        Ok(())
    }
}

/// Everything one side declares in its hello.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Handshake protocol versions, most preferred first.
    pub versions: Vec<u8>,
    /// Cipher suites, most preferred first.
    pub suites: Vec<CipherSuite>,
    /// Key store parameters.
    pub store: StoreParams,
    /// Version of the sync protocol run over the channel (equal on both sides).
    pub sync_version: u8,
    /// Whether this side can relay keys to several peers at once.
    pub multicast: bool,
}

/// Most entries in a version or suite list.
pub const MAX_LIST: usize = 32;

impl Capabilities {
    /// Version 1, both suites (AES-256-GCM first), the given store
    /// parameters, sync protocol version 1, no multicast.
    #[must_use]
    pub fn new(store: StoreParams) -> Self {
        Capabilities {
            versions: vec![PROTOCOL_VERSION],
            suites: CipherSuite::ALL.to_vec(),
            store,
            sync_version: 1,
            multicast: false,
        }
    }

    /// The same with `suites` as the preference list.
    #[must_use]
    pub fn with_suites(mut self, suites: &[CipherSuite]) -> Self {
        self.suites = suites.to_vec();
        self
    }

    /// Checks the lists are non-empty, short enough and free of repeats.
    ///
    /// # Errors
    /// The field (`capabilities.…`) and what is wrong with it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn list<T: PartialEq>(v: &[T], name: &'static str) -> Result<(), ConfigError> {
            if v.is_empty() || v.len() > MAX_LIST {
                return Err(ConfigError::new(name, "must hold 1 to 32 entries"));
            }
            if v.iter().enumerate().any(|(i, x)| v[..i].contains(x)) {
                return Err(ConfigError::new(name, "must not repeat an entry"));
            }
            Ok(())
        }
        list(&self.versions, "capabilities.versions")?;
        if !self.versions.contains(&PROTOCOL_VERSION) {
            return Err(ConfigError::new(
                "capabilities.versions",
                "must include version 1",
            ));
        }
        list(&self.suites, "capabilities.suites")?;
        if self.store.chunk_bytes == 0 {
            return Err(ConfigError::new(
                "capabilities.store.chunk_bytes",
                "must be at least 1",
            ));
        }
        if self.store.min_key_bits == 0
            || self.store.min_key_bits > self.store.max_key_bits
            || !self.store.min_key_bits.is_multiple_of(8)
            || !self.store.max_key_bits.is_multiple_of(8)
        {
            return Err(ConfigError::new(
                "capabilities.store.min_key_bits",
                "key sizes must be whole bytes with 0 < min <= max",
            ));
        }
        Ok(())
    }
}
