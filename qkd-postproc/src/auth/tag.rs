//! Wegman-Carter tags: an ε-almost-XOR-universal polynomial hash over
//! GF(2^128), encrypted with a one-time pad.
//!
//! # The hash
//!
//! For a 128-bit hash key `k` and a message `m` of `ℓ` bytes, the message is
//! cut into `s = ⌈ℓ / 16⌉` blocks of 16 bytes (the last one padded with zero
//! bytes) and one **length block** is appended:
//!
//! ```text
//! X_1 .. X_s  = m ‖ 0^(16s - ℓ)
//! X_{s+1}     = le64(ℓ) ‖ le64(LENGTH_BLOCK_DOMAIN)
//! h_k(m)      = POLYVAL(k, X_1, .., X_{s+1})
//! ```
//!
//! POLYVAL (RFC 8452) computes `Σ_i X_i · G^(s+2-i)` in GF(2^128) with
//! `G = k · x^-128`, a bijection of `k`: a uniformly random `k` gives a
//! uniformly random evaluation point `G`. The field arithmetic is the
//! `polyval` crate's (PCLMULQDQ / PMULL with run-time detection, constant-time
//! portable fallback).
//!
//! # ε for the supported message lengths
//!
//! Let `L = ⌈ℓ_max / 16⌉ + 1` be the number of blocks of the longest message
//! the tags cover. For two different messages `m ≠ m'` of at most `ℓ_max`
//! bytes, `h_k(m) ⊕ h_k(m') = P(G)` where `P(x) = Σ_j (X_j ⊕ X'_j) x^j`
//! (blocks aligned from the end, `j = 1` being the length block). `P` is not
//! the zero polynomial: if `ℓ ≠ ℓ'` the length blocks (coefficient of `x^1`)
//! differ; if `ℓ = ℓ'` both are padded the same way and some block differs. It
//! has no constant term and degree at most `L`. So for any 128-bit `c`,
//! `P(x) ⊕ c` is a non-zero polynomial of degree between 1 and `L`, with at
//! most `L` roots, and
//!
//! ```text
//! Pr_k[ h_k(m) ⊕ h_k(m') = c ] ≤ L / 2^128          (ε-AXU, 128-bit tags)
//! ```
//!
//! With [`MAX_MESSAGE_BYTES`] `= 2^32` this is at most `(2^28 + 1) / 2^128 ≈ 2^-100`;
//! for a 4 KiB message `257 / 2^128 ≈ 2^-120`. [`epsilon`] computes the bound.
//!
//! **64-bit tags** keep the first 8 bytes of `h_k(m)`. For any 64-bit `c`,
//! the event `trunc(P(G)) = c` is the union of `2^64` events `P(G) = c'` over
//! the completions `c'` of `c`, each with at most `L` roots among the `2^128`
//! values of `G`, so `ε_64 ≤ 2^64 · L / 2^128 = L / 2^64`: `2^-56` for a 4 KiB
//! message, `2^-48` for 1 MiB. Use them for the short messages of the
//! post-processing protocols, where they halve the key consumption.
//!
//! # The pad
//!
//! `tag = trunc_t(h_k(m)) ⊕ r` with `r` a fresh `t`-bit one-time pad from the
//! key pool ([`super::pool`]). Since `r` is uniform and used once, the family
//! `(k, r) ↦ h_k(m) ⊕ r` is ε-almost strongly universal₂, and by Portmann
//! ("Key recycling in authentication", IEEE Trans. Inf. Theory 60(7), 2014)
//! the hash key `k` can be recycled for the next message at a cost of `ε` per
//! message (accepted or rejected) in the composable security error; only `r`
//! must be fresh. A forger who sees `N` honest tags and makes `q` attempts
//! succeeds with probability at most `q · ε` (`ε` for the longest message).

use polyval::Polyval;
use polyval::universal_hash::UniversalHash;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The longest message a tag covers, in bytes (`2^32`): the bound the ε of
/// [`epsilon`] is stated for.
pub const MAX_MESSAGE_BYTES: u64 = 1 << 32;

/// Second half of the length block: separates these tags from any other use
/// of POLYVAL with the same key (ASCII `"qkd-auth"`, little-endian).
pub const LENGTH_BLOCK_DOMAIN: u64 = u64::from_le_bytes(*b"qkd-auth");

/// Length of a hash key in bytes.
pub const HASH_KEY_BYTES: usize = 16;

/// Tag length of a crypto context.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TagMode {
    /// 128-bit tags, ε = L / 2^128 (the default).
    #[default]
    Bits128,
    /// 64-bit tags for low key consumption, ε = L / 2^64.
    Bits64,
}

impl TagMode {
    /// Tag length in bytes.
    #[must_use]
    pub const fn tag_bytes(self) -> usize {
        match self {
            TagMode::Bits128 => 16,
            TagMode::Bits64 => 8,
        }
    }

    /// Tag length in bits: the pad, i.e. key, each tagged message consumes.
    #[must_use]
    pub const fn tag_bits(self) -> u64 {
        self.tag_bytes() as u64 * 8
    }

    /// Number of 64-bit pad units a tag consumes.
    #[must_use]
    pub const fn pad_units(self) -> u64 {
        self.tag_bytes() as u64 / 8
    }

    /// Wire code of the mode (see the [format](super#wire-format)).
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            TagMode::Bits128 => 1,
            TagMode::Bits64 => 2,
        }
    }

    /// The mode with wire code `code`, if any.
    #[must_use]
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(TagMode::Bits128),
            2 => Some(TagMode::Bits64),
            _ => None,
        }
    }
}

/// Upper bound on the probability that a forger wins one attempt against
/// messages of at most `max_message_bytes` bytes: `(⌈ℓ/16⌉ + 1) / 2^t`
/// for `t`-bit tags (see the [module docs](self) for the derivation).
///
/// Lengths above [`MAX_MESSAGE_BYTES`] are clamped to it (longer messages
/// are refused by [`HashKey::hash`]).
///
/// ```
/// use qkd_postproc::auth::{epsilon, TagMode};
///
/// // 4 KiB: 257 blocks (256 + the length block).
/// assert_eq!(epsilon(TagMode::Bits128, 4096), 257.0 / 2f64.powi(128));
/// assert_eq!(epsilon(TagMode::Bits64, 4096), 257.0 / 2f64.powi(64));
/// ```
#[must_use]
pub fn epsilon(mode: TagMode, max_message_bytes: u64) -> f64 {
    let bytes = max_message_bytes.min(MAX_MESSAGE_BYTES);
    let blocks = bytes.div_ceil(16) + 1;
    blocks as f64 / 2f64.powi(mode.tag_bits() as i32)
}

/// Error of the tag functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TagError {
    /// The message is longer than [`MAX_MESSAGE_BYTES`].
    #[error("message of {len} bytes exceeds the tag bound of {MAX_MESSAGE_BYTES} bytes")]
    MessageTooLong {
        /// Length of the message in bytes.
        len: u64,
    },
    /// The one-time pad is not as long as the tag.
    #[error("pad of {actual} bytes for a {expected}-byte tag")]
    PadLength {
        /// Tag length in bytes.
        expected: usize,
        /// Pad length given.
        actual: usize,
    },
}

/// A recyclable 128-bit hash key, with the POLYVAL key schedule expanded once.
///
/// Zeroized on drop (the expanded powers too); `Debug` shows nothing.
#[derive(Clone)]
pub struct HashKey {
    polyval: Polyval,
}

impl HashKey {
    /// The hash key `k` from 16 key bytes (for example two pad units of the
    /// pool). The bytes are copied into the expanded key; the caller zeroizes
    /// its copy.
    #[must_use]
    pub fn new(bytes: &[u8; HASH_KEY_BYTES]) -> Self {
        HashKey {
            polyval: Polyval::new(bytes.into()),
        }
    }

    /// `h_k(message)`, the 128-bit ε-AXU hash of the [module docs](self).
    ///
    /// # Errors
    /// [`TagError::MessageTooLong`] above [`MAX_MESSAGE_BYTES`].
    pub fn hash(&self, message: &[u8]) -> Result<[u8; 16], TagError> {
        self.hash_parts(&[message])
    }

    /// `h_k(p_0 ‖ p_1 ‖ ...)`: the hash of the concatenation of `parts`,
    /// without copying them into one buffer.
    ///
    /// # Errors
    /// [`TagError::MessageTooLong`] above [`MAX_MESSAGE_BYTES`].
    pub fn hash_parts(&self, parts: &[&[u8]]) -> Result<[u8; 16], TagError> {
        let mut stream = self.stream();
        for part in parts {
            stream.update(part);
        }
        stream.finalize()
    }

    /// An incremental hash of a message given piece by piece.
    #[must_use]
    pub fn stream(&self) -> HashStream {
        HashStream {
            state: self.polyval.clone(),
            carry: [0u8; 16],
            carried: 0,
            len: 0,
        }
    }

    /// The tag of `parts` (concatenated) with one-time pad `pad`:
    /// `trunc(h_k(m)) ⊕ pad`, `pad.len()` bytes long (16 or 8, see [`TagMode`]).
    ///
    /// # Errors
    /// [`TagError::PadLength`] if `pad` is not 8 or 16 bytes long,
    /// [`TagError::MessageTooLong`] above [`MAX_MESSAGE_BYTES`].
    pub fn tag_parts(&self, parts: &[&[u8]], pad: &[u8]) -> Result<Tag, TagError> {
        let mut stream = self.stream();
        for part in parts {
            stream.update(part);
        }
        stream.tag(pad)
    }

    /// The tag of `message` with one-time pad `pad` (see [`tag_parts`](Self::tag_parts)).
    ///
    /// # Errors
    /// As [`tag_parts`](Self::tag_parts).
    pub fn tag(&self, message: &[u8], pad: &[u8]) -> Result<Tag, TagError> {
        self.tag_parts(&[message], pad)
    }

    /// Whether `received` is the tag of `parts` under `pad`, compared in
    /// constant time. A pad or tag of the wrong length never verifies.
    #[must_use]
    pub fn verify_parts(&self, parts: &[&[u8]], pad: &[u8], received: &[u8]) -> bool {
        match self.tag_parts(parts, pad) {
            Ok(expected) => expected.ct_eq_bytes(received),
            Err(_) => false,
        }
    }
}

/// The hash `h_k` of a message fed in pieces of any length: the blocks are
/// those of the concatenation. Made by [`HashKey::stream`]; holds the
/// expanded key, zeroized on drop.
#[derive(Clone)]
pub struct HashStream {
    state: Polyval,
    carry: [u8; 16],
    carried: usize,
    len: u64,
}

impl HashStream {
    /// Appends `bytes` to the message.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len = self.len.saturating_add(bytes.len() as u64);
        // Bytes of a piece that do not fill a block wait in `carry` for the next one.
        if self.carried > 0 {
            let take = (16 - self.carried).min(bytes.len());
            self.carry[self.carried..self.carried + take].copy_from_slice(&bytes[..take]);
            self.carried += take;
            bytes = &bytes[take..];
            if self.carried < 16 {
                return;
            }
            self.state.update(&[self.carry.into()]);
        }
        let whole = bytes.len() / 16 * 16;
        // `update_padded` on a multiple of 16 bytes: no padding, and the
        // 4-block parallel path of the backend.
        self.state.update_padded(&bytes[..whole]);
        let rest = &bytes[whole..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carried = rest.len();
    }

    /// Bytes fed so far.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `h_k(message)`.
    ///
    /// # Errors
    /// [`TagError::MessageTooLong`] above [`MAX_MESSAGE_BYTES`].
    pub fn finalize(mut self) -> Result<[u8; 16], TagError> {
        if self.len > MAX_MESSAGE_BYTES {
            return Err(TagError::MessageTooLong { len: self.len });
        }
        if self.carried > 0 {
            self.carry[self.carried..].fill(0);
            self.state.update(&[self.carry.into()]);
        }
        let mut length_block = [0u8; 16];
        length_block[..8].copy_from_slice(&self.len.to_le_bytes());
        length_block[8..].copy_from_slice(&LENGTH_BLOCK_DOMAIN.to_le_bytes());
        self.state.update(&[length_block.into()]);
        Ok(self.state.clone().finalize().into())
    }

    /// `trunc(h_k(message)) ⊕ pad` for an 8- or 16-byte pad.
    ///
    /// # Errors
    /// [`TagError::PadLength`] or [`TagError::MessageTooLong`].
    pub fn tag(self, pad: &[u8]) -> Result<Tag, TagError> {
        let mode = match pad.len() {
            16 => TagMode::Bits128,
            8 => TagMode::Bits64,
            actual => {
                return Err(TagError::PadLength {
                    expected: 16,
                    actual,
                });
            }
        };
        let mut h = self.finalize()?;
        let mut tag = Tag {
            bytes: [0u8; 16],
            mode,
        };
        for (t, (h, r)) in tag.bytes.iter_mut().zip(h.iter().zip(pad)) {
            *t = h ^ r;
        }
        h.zeroize();
        Ok(tag)
    }

    /// Whether `received` is the tag of the message under `pad`, compared
    /// in constant time. A pad or tag of the wrong length never verifies.
    #[must_use]
    pub fn verify(self, pad: &[u8], received: &[u8]) -> bool {
        match self.tag(pad) {
            Ok(expected) => expected.ct_eq_bytes(received),
            Err(_) => false,
        }
    }
}

impl Drop for HashStream {
    fn drop(&mut self) {
        // The carried bytes are message bytes, but the state is keyed: the
        // `Polyval` in it zeroizes itself.
        self.carry.zeroize();
    }
}

impl core::fmt::Debug for HashStream {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HashStream")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl core::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HashKey").finish_non_exhaustive()
    }
}

// `Polyval` zeroizes itself on drop (feature `zeroize` of the `polyval` crate).
impl ZeroizeOnDrop for HashKey {}

/// A computed tag (8 or 16 bytes). Compared in constant time; zeroized on
/// drop (the expected tag of a verification is not public either).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Tag {
    bytes: [u8; 16],
    #[zeroize(skip)]
    mode: TagMode,
}

impl Tag {
    /// The tag bytes (`mode.tag_bytes()` of them).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.mode.tag_bytes()]
    }

    /// The tag length.
    #[must_use]
    pub fn mode(&self) -> TagMode {
        self.mode
    }

    /// Constant-time comparison with received tag bytes; `false` for a length
    /// mismatch (the length is public).
    #[must_use]
    pub fn ct_eq_bytes(&self, received: &[u8]) -> bool {
        self.as_bytes().ct_eq(received).into()
    }
}

impl ConstantTimeEq for Tag {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.as_bytes().ct_eq(other.as_bytes())
    }
}

impl PartialEq for Tag {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for Tag {}

impl core::fmt::Debug for Tag {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Tags are public once sent, but a tag computed for verification is
        // not: print only its length.
        f.debug_struct("Tag")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Plain bit-by-bit multiplication in POLYVAL's field (RFC 8452):
    /// `dot(a, b) = a · b · x^-128` modulo `x^128 + x^127 + x^126 + x^121 + 1`,
    /// elements as little-endian 128-bit integers (bit i = coefficient of x^i).
    fn dot(a: u128, b: u128) -> u128 {
        // a * b mod p, by shift-and-add.
        let reduce_shift = |v: u128| -> u128 {
            // v * x mod p
            let carry = v >> 127;
            let v = v << 1;
            if carry == 1 {
                v ^ ((1u128 << 127) | (1u128 << 126) | (1u128 << 121) | 1)
            } else {
                v
            }
        };
        let mut acc = 0u128;
        let mut cur = a;
        for i in 0..128 {
            if (b >> i) & 1 == 1 {
                acc ^= cur;
            }
            cur = reduce_shift(cur);
        }
        // multiply by x^-128: divide by x 128 times. x^-1 = (p - 1)/x: for
        // even v, v/x = v >> 1; for odd v, (v + p)/x.
        for _ in 0..128 {
            if acc & 1 == 1 {
                acc ^= (1u128 << 127) | (1u128 << 126) | (1u128 << 121) | 1;
                acc = (acc >> 1) | (1u128 << 127);
            } else {
                acc >>= 1;
            }
        }
        acc
    }

    /// The hash of the module docs, from the definition, with [`dot`].
    fn reference_hash(key: &[u8; 16], message: &[u8]) -> [u8; 16] {
        let h = u128::from_le_bytes(*key);
        let mut acc = 0u128;
        let mut blocks: Vec<[u8; 16]> = message
            .chunks(16)
            .map(|c| {
                let mut b = [0u8; 16];
                b[..c.len()].copy_from_slice(c);
                b
            })
            .collect();
        let mut len_block = [0u8; 16];
        len_block[..8].copy_from_slice(&(message.len() as u64).to_le_bytes());
        len_block[8..].copy_from_slice(b"qkd-auth");
        blocks.push(len_block);
        for b in blocks {
            acc = dot(acc ^ u128::from_le_bytes(b), h);
        }
        acc.to_le_bytes()
    }

    #[test]
    fn reference_dot_matches_rfc8452_vector() {
        // RFC 8452 Appendix A: POLYVAL(H, X_1, X_2).
        let h = u128::from_le_bytes(hex_literal(b"25629347589242761d31f826ba4b757b"));
        let x1 = u128::from_le_bytes(hex_literal(b"4f4f95668c83dfb6401762bb2d01a262"));
        let x2 = u128::from_le_bytes(hex_literal(b"d1a24ddd2721d006bbe45f20d3c9f362"));
        let s = dot(dot(x1, h) ^ x2, h);
        assert_eq!(
            s.to_le_bytes(),
            hex_literal(b"f7a3b47b846119fae5b7866cf5e5b77e")
        );
    }

    fn hex_literal(hex: &[u8; 32]) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let s = core::str::from_utf8(pair).unwrap();
            out[i] = u8::from_str_radix(s, 16).unwrap();
        }
        out
    }

    #[test]
    fn known_answer_empty_message_is_length_block_times_key() {
        // For the empty message h = dot(length block, k).
        let key = [7u8; 16];
        let k = HashKey::new(&key);
        let mut len_block = [0u8; 16];
        len_block[8..].copy_from_slice(b"qkd-auth");
        let expected = dot(u128::from_le_bytes(len_block), u128::from_le_bytes(key));
        assert_eq!(k.hash(b"").unwrap(), expected.to_le_bytes());
    }

    #[test]
    fn epsilon_matches_the_stated_bounds() {
        assert_eq!(epsilon(TagMode::Bits128, 0), 2f64.powi(-128));
        assert_eq!(epsilon(TagMode::Bits128, 16), 2.0 * 2f64.powi(-128));
        assert_eq!(epsilon(TagMode::Bits128, 17), 3.0 * 2f64.powi(-128));
        let at_limit = epsilon(TagMode::Bits128, u64::MAX);
        assert_eq!(at_limit, ((1u64 << 28) + 1) as f64 * 2f64.powi(-128));
        assert!(at_limit < 2f64.powi(-99));
        assert_eq!(epsilon(TagMode::Bits64, 1 << 20), 65537.0 * 2f64.powi(-64));
    }

    #[test]
    fn wrong_pad_length_is_refused_and_never_verifies() {
        let k = HashKey::new(&[1; 16]);
        assert_eq!(
            k.tag(b"m", &[0; 12]).unwrap_err(),
            TagError::PadLength {
                expected: 16,
                actual: 12
            }
        );
        let t = k.tag(b"m", &[0; 16]).unwrap();
        assert!(!k.verify_parts(&[b"m"], &[0; 12], t.as_bytes()));
        assert!(!k.verify_parts(&[b"m"], &[0; 16], &t.as_bytes()[..15]));
        assert!(k.verify_parts(&[b"m"], &[0; 16], t.as_bytes()));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let k = HashKey::new(&[0xab; 16]);
        assert_eq!(format!("{k:?}"), "HashKey { .. }");
        let t = k.tag(b"x", &[0; 8]).unwrap();
        assert_eq!(format!("{t:?}"), "Tag { mode: Bits64, .. }");
    }

    #[test]
    fn sixty_four_bit_tag_is_the_truncated_128_bit_tag_xor_pad() {
        let k = HashKey::new(&[9; 16]);
        let h = k.hash(b"hello").unwrap();
        let pad = [0x5a; 8];
        let t = k.tag(b"hello", &pad).unwrap();
        let expected: Vec<u8> = h[..8].iter().zip(pad).map(|(a, b)| a ^ b).collect();
        assert_eq!(t.as_bytes(), expected.as_slice());
    }

    proptest! {
        #[test]
        fn fast_hash_equals_reference(key in any::<[u8; 16]>(), msg in proptest::collection::vec(any::<u8>(), 0..200)) {
            let k = HashKey::new(&key);
            prop_assert_eq!(k.hash(&msg).unwrap(), reference_hash(&key, &msg));
        }

        #[test]
        fn parts_hash_equals_concatenation(
            key in any::<[u8; 16]>(),
            msg in proptest::collection::vec(any::<u8>(), 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..5),
        ) {
            let k = HashKey::new(&key);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(msg.len())).collect();
            cuts.sort_unstable();
            let mut parts = Vec::new();
            let mut at = 0;
            for c in cuts {
                parts.push(&msg[at..c]);
                at = c;
            }
            parts.push(&msg[at..]);
            prop_assert_eq!(k.hash_parts(&parts).unwrap(), k.hash(&msg).unwrap());
        }

        #[test]
        fn zero_extension_changes_the_hash(key in any::<[u8; 16]>(), msg in proptest::collection::vec(any::<u8>(), 0..64), extra in 1usize..20) {
            // The length block keeps m and m ‖ 0^j apart (same padded blocks otherwise).
            let k = HashKey::new(&key);
            let mut longer = msg.clone();
            longer.resize(msg.len() + extra, 0);
            prop_assume!(key != [0u8; 16]);
            prop_assert_ne!(k.hash(&msg).unwrap(), k.hash(&longer).unwrap());
        }

        #[test]
        fn honest_tags_verify_and_flipped_bits_do_not(
            key in any::<[u8; 16]>(),
            pad in any::<[u8; 16]>(),
            msg in proptest::collection::vec(any::<u8>(), 1..100),
            bit in any::<usize>(),
        ) {
            let k = HashKey::new(&key);
            let t = k.tag(&msg, &pad).unwrap();
            prop_assert!(k.verify_parts(&[&msg], &pad, t.as_bytes()));
            let mut tag = t.as_bytes().to_vec();
            let b = bit % 128;
            tag[b / 8] ^= 1 << (b % 8);
            prop_assert!(!k.verify_parts(&[&msg], &pad, &tag));
        }
    }
}
