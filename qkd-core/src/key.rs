//! Secret key material and key identifiers.
//!
//! [`SecretKey`] holds key bytes: zeroized on drop, compared in constant time,
//! never shown by `Debug`. [`KeyId`] names a key with a UUID that both ends of
//! a link derive from shared context (link name, block number, index), so
//! neither has to send it to the other.

use core::fmt;
use core::str::FromStr;

use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{BitVec, Error};

/// Key material: bytes that are zeroized on drop and never printed.
///
/// Equality is constant-time in the content (the length is not secret).
///
/// ```
/// use qkd_core::SecretKey;
///
/// let k = SecretKey::from_slice(&[0x2a; 32]);
/// assert_eq!(k.len(), 32);
/// assert_eq!(format!("{k:?}"), "SecretKey { len: 32, .. }");
/// assert_eq!(k, SecretKey::from_slice(&[0x2a; 32]));
/// ```
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey {
    bytes: Vec<u8>,
}

impl SecretKey {
    /// Takes ownership of `bytes` (they are zeroized when the key drops).
    #[must_use]
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        Self { bytes }
    }

    /// Copies `bytes` into a new key.
    #[must_use]
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self {
            bytes: bytes.to_vec(),
        }
    }

    /// The bits of `bits` as LSB-first bytes.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] if the length is not a multiple of 8 bits.
    pub fn from_bits(bits: &BitVec) -> Result<Self, Error> {
        if !bits.len().is_multiple_of(8) {
            return Err(Error::InvalidLength {
                expected: bits.len() / 8 * 8,
                actual: bits.len(),
            });
        }
        Ok(Self {
            bytes: bits.to_bytes_lsb(),
        })
    }

    /// `len` bytes from a cryptographically secure generator.
    pub fn random<R: CryptoRng + ?Sized>(len: usize, rng: &mut R) -> Self {
        let mut bytes = vec![0u8; len];
        rng.fill_bytes(&mut bytes);
        Self { bytes }
    }

    /// The key bytes. Named so that every place that reads key material is
    /// easy to find.
    #[must_use]
    pub fn expose_secret(&self) -> &[u8] {
        &self.bytes
    }

    /// Length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Length in bits.
    #[must_use]
    pub fn bit_len(&self) -> usize {
        self.bytes.len() * 8
    }

    /// Whether the key holds no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Splits off the bytes from `at` on into a new key; `self` keeps `..at`.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] if `at > len`.
    pub fn split_off(&mut self, at: usize) -> Result<SecretKey, Error> {
        if at > self.bytes.len() {
            return Err(Error::InvalidLength {
                expected: self.bytes.len(),
                actual: at,
            });
        }
        Ok(SecretKey {
            bytes: self.bytes.split_off(at),
        })
    }
}

impl ConstantTimeEq for SecretKey {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.bytes.as_slice().ct_eq(other.bytes.as_slice())
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}
impl Eq for SecretKey {}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

/// The identifier of one block: the unit of work of every protocol of the
/// workspace, from a device frame through sifting, estimation, correction,
/// confirmation and amplification to the final key that enters the store.
///
/// Both ends of a link number their blocks the same way, so a `BlockId`
/// names the same block on both sides; it is carried on the wire as a
/// big-endian `u64` ([`crate::wire::Reader::block`]) and in serde as a plain
/// number.
///
/// ```
/// use qkd_core::BlockId;
///
/// let b = BlockId::new(7);
/// assert_eq!(b.get(), 7);
/// assert_eq!(b.next(), Some(BlockId::new(8)));
/// assert_eq!(BlockId::new(u64::MAX).next(), None);
/// assert_eq!(b.to_string(), "7");
/// assert_eq!(BlockId::from(7u64), b);
/// assert!(BlockId::new(1) < b);
/// ```
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct BlockId(u64);

impl BlockId {
    /// The block numbered `n`.
    #[must_use]
    pub const fn new(n: u64) -> Self {
        BlockId(n)
    }

    /// Its number.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The block after this one, or `None` after `u64::MAX`.
    #[must_use]
    pub const fn next(self) -> Option<Self> {
        match self.0.checked_add(1) {
            Some(n) => Some(BlockId(n)),
            None => None,
        }
    }

    /// Its eight bytes on the wire (big-endian).
    #[must_use]
    pub const fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl From<u64> for BlockId {
    fn from(n: u64) -> Self {
        BlockId(n)
    }
}

impl From<BlockId> for u64 {
    fn from(b: BlockId) -> Self {
        b.0
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The blake3 key-derivation context for [`KeyId::derive`]. Changing it
/// changes every derived ID, so it is fixed for the life of the format.
const KEY_ID_CONTEXT: &str = "qkd-core 2026-11 KeyId v1";

/// A key identifier: a UUID, shown in the usual hyphenated form.
///
/// [`KeyId::derive`] makes a version-8 UUID from context bytes with blake3,
/// so both ends of a link compute the same ID for the same key without
/// talking. [`KeyId::for_block`] is the layout the qkd crates use.
///
/// ```
/// use qkd_core::KeyId;
///
/// let a = KeyId::for_block(b"link-7", 42, 0);
/// let b = KeyId::for_block(b"link-7", 42, 0);
/// assert_eq!(a, b);
/// assert_ne!(a, KeyId::for_block(b"link-7", 42, 1));
/// let text = a.to_string();
/// assert_eq!(text.parse::<KeyId>().unwrap(), a);
/// assert_eq!(a.as_uuid().get_version_num(), 8);
/// ```
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct KeyId(uuid::Uuid);

impl KeyId {
    /// Derives an ID from arbitrary context bytes (blake3 in key-derivation
    /// mode, truncated to 122 bits, stamped as a version-8 UUID).
    #[must_use]
    pub fn derive(context: &[u8]) -> Self {
        Self::derive_parts(&[context])
    }

    /// [`KeyId::derive`] of the concatenation of `parts`, without building it.
    fn derive_parts(parts: &[&[u8]]) -> Self {
        // The context key of blake3's derive-key mode depends only on the
        // fixed context string: compute it once, clone the hasher per call.
        static BASE: std::sync::OnceLock<blake3::Hasher> = std::sync::OnceLock::new();
        let mut hasher = BASE
            .get_or_init(|| blake3::Hasher::new_derive_key(KEY_ID_CONTEXT))
            .clone();
        for part in parts {
            hasher.update(part);
        }
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest.as_bytes()[..16]);
        KeyId(uuid::Uuid::new_v8(bytes))
    }

    /// The ID of key number `index` cut from final key block `block` of the
    /// link named `link`. Fields are length-prefixed, so no two distinct
    /// triples share an encoding.
    #[must_use]
    pub fn for_block(link: &[u8], block: impl Into<BlockId>, index: u64) -> Self {
        let block = block.into().get();
        Self::derive_parts(&[
            &(link.len() as u64).to_le_bytes(),
            link,
            &block.to_le_bytes(),
            &index.to_le_bytes(),
        ])
    }

    /// Wraps an existing UUID (for IDs chosen elsewhere, e.g. by a peer).
    #[must_use]
    pub const fn from_uuid(id: uuid::Uuid) -> Self {
        KeyId(id)
    }

    /// The UUID.
    #[must_use]
    pub const fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }

    /// The 16 bytes of the UUID, big-endian as in RFC 9562.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Rebuilds an ID from its 16 bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        KeyId(uuid::Uuid::from_bytes(bytes))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0.hyphenated())
    }
}

impl FromStr for KeyId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        uuid::Uuid::parse_str(s)
            .map(KeyId)
            .map_err(|_| Error::MalformedId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_key_equality_and_redaction() {
        let a = SecretKey::from_slice(b"0123456789abcdef");
        let b = SecretKey::from_vec(b"0123456789abcdef".to_vec());
        let c = SecretKey::from_slice(b"0123456789abcdeF");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, SecretKey::from_slice(b"0123"));
        let shown = format!("{a:?}");
        assert!(!shown.contains("0123"), "{shown}");
        assert_eq!(a.bit_len(), 128);
    }

    #[test]
    fn secret_key_from_bits_needs_whole_bytes() {
        let bits = BitVec::from_bytes_lsb(&[0xa5, 0x01], 16).unwrap();
        assert_eq!(
            SecretKey::from_bits(&bits).unwrap().expose_secret(),
            &[0xa5, 0x01]
        );
        let odd = BitVec::zeros(12);
        assert!(matches!(
            SecretKey::from_bits(&odd),
            Err(Error::InvalidLength { .. })
        ));
    }

    #[test]
    fn split_off_keeps_both_halves() {
        let mut k = SecretKey::from_slice(&[1, 2, 3, 4, 5]);
        let tail = k.split_off(2).unwrap();
        assert_eq!(k.expose_secret(), &[1, 2]);
        assert_eq!(tail.expose_secret(), &[3, 4, 5]);
        assert!(k.split_off(3).is_err());
    }

    #[test]
    fn zeroize_clears_bytes() {
        let mut k = SecretKey::from_slice(&[9; 8]);
        k.zeroize();
        assert!(k.is_empty());
    }

    #[test]
    fn key_id_known_answer() {
        // blake3::derive_key("qkd-core 2026-11 KeyId v1", b"abc"), first 16 bytes,
        // with the version nibble set to 8 and the variant bits to 10.
        let digest = blake3::derive_key(KEY_ID_CONTEXT, b"abc");
        let id = KeyId::derive(b"abc");
        let b = id.as_bytes();
        assert_eq!(b[6] >> 4, 8);
        assert_eq!(b[8] >> 6, 0b10);
        assert_eq!(b[..6], digest[..6]);
        assert_eq!(b[6] & 0x0f, digest[6] & 0x0f);
        assert_eq!(b[9..], digest[9..16]);
    }

    #[test]
    fn for_block_is_derive_of_the_length_prefixed_encoding() {
        let mut ctx = Vec::new();
        ctx.extend_from_slice(&6u64.to_le_bytes());
        ctx.extend_from_slice(b"link-7");
        ctx.extend_from_slice(&42u64.to_le_bytes());
        ctx.extend_from_slice(&3u64.to_le_bytes());
        assert_eq!(KeyId::for_block(b"link-7", 42, 3), KeyId::derive(&ctx));
    }

    #[test]
    fn key_id_fields_do_not_alias() {
        assert_ne!(KeyId::for_block(b"ab", 1, 0), KeyId::for_block(b"a", 1, 0));
        assert_ne!(KeyId::for_block(b"a", 1, 0), KeyId::for_block(b"a", 0, 1));
        assert!("not-a-uuid".parse::<KeyId>().is_err());
        let id = KeyId::for_block(b"x", 3, 4);
        assert_eq!(KeyId::from_bytes(*id.as_bytes()), id);
        let json = format!("\"{id}\"");
        assert_eq!(id.to_string().len(), 36);
        assert!(json.contains('-'));
    }
}
