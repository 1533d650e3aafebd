//! The key schedule: Wegman-Carter proofs of the handshake and the
//! AES-256-GCM traffic keys.
//!
//! A handshake PSK of [`PSK_BYTES`] bytes is cut into
//! fixed parts, each used for one purpose only:
//!
//! | bytes | use |
//! | --- | --- |
//! | `[0, 16)` | POLYVAL hash key `H` of the four proofs |
//! | `[16, 32)` | tag pad of the responder's PSK proof |
//! | `[32, 48)` | tag pad of the responder's transcript MAC |
//! | `[48, 64)` | tag pad of the initiator's PSK proof |
//! | `[64, 80)` | tag pad of the initiator's transcript MAC |
//! | `[80, 112)` | schedule secret of the AES-256-GCM suite |
//!
//! A proof is a Wegman-Carter tag `POLYVAL_H(m ‖ 0* ‖ len) ⊕ pad`, which is
//! information-theoretically secure because every pad is used once (the PSK
//! is used for one handshake only). The AES-256-GCM traffic secrets are
//!
//! ```text
//! th          = blake3(ClientHello ‖ ServerHello ‖ Finished)
//! secret_i2r  = blake3::derive_key(CTX_I2R, schedule_secret ‖ th)
//! secret_r2i  = blake3::derive_key(CTX_R2I, schedule_secret ‖ th)
//! key         = blake3::derive_key(CTX_KEY, secret)            (32 bytes)
//! iv          = blake3::derive_key(CTX_IV,  secret)[..12]
//! secret_e    = blake3::derive_key(CTX_REKEY, secret_0 ‖ be32(e) ‖ fresh QKD key K_e)
//! ```
//!
//! with the context strings below. Known-answer vectors are in the tests.

use polyval::Polyval;
use polyval::universal_hash::UniversalHash;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use qkd_core::SecretKey;

use crate::psk::PSK_BYTES;

/// Context of the initiator-to-responder traffic secret.
pub const CTX_I2R: &str = "qkd-handshake 2026-11 initiator-to-responder traffic secret v1";
/// Context of the responder-to-initiator traffic secret.
pub const CTX_R2I: &str = "qkd-handshake 2026-11 responder-to-initiator traffic secret v1";
/// Context of a record key derived from a traffic secret.
pub const CTX_KEY: &str = "qkd-handshake 2026-11 record key v1";
/// Context of a record IV derived from a traffic secret.
pub const CTX_IV: &str = "qkd-handshake 2026-11 record iv v1";
/// Context of the traffic secret of a later key epoch, from the epoch-0
/// secret, the epoch number and fresh QKD key.
pub const CTX_REKEY: &str = "qkd-handshake 2026-11 rekey v1";

/// Which of the four handshake proofs (selects the tag pad).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proof {
    ResponderPsk = 0,
    ResponderTranscript = 1,
    InitiatorPsk = 2,
    InitiatorTranscript = 3,
}

/// The Wegman-Carter hash `POLYVAL_H(aad ‖ 0* ‖ ct ‖ 0* ‖ le64(|aad|) ‖ le64(|ct|))`.
///
/// The trailing length block makes the encoding of the pair injective.
#[must_use]
pub fn wc_hash(hash_key: &[u8; 16], aad: &[u8], ct: &[u8]) -> [u8; 16] {
    let mut p = Polyval::new(hash_key.into());
    p.update_padded(aad);
    p.update_padded(ct);
    let mut len = [0u8; 16];
    len[..8].copy_from_slice(&(aad.len() as u64).to_le_bytes());
    len[8..].copy_from_slice(&(ct.len() as u64).to_le_bytes());
    p.update_padded(&len);
    p.finalize().into()
}

/// The Wegman-Carter tag `wc_hash(H, aad, ct) ⊕ pad`.
#[must_use]
pub fn wc_tag(hash_key: &[u8; 16], pad: &[u8; 16], aad: &[u8], ct: &[u8]) -> [u8; 16] {
    let mut t = wc_hash(hash_key, aad, ct);
    for (t, p) in t.iter_mut().zip(pad) {
        *t ^= p;
    }
    t
}

/// A handshake PSK split into its parts. Zeroized on drop.
pub(crate) struct PskParts {
    bytes: Zeroizing<[u8; PSK_BYTES]>,
}

impl PskParts {
    /// `None` when the key is shorter than [`PSK_BYTES`]; longer keys use
    /// their first [`PSK_BYTES`] bytes.
    pub(crate) fn new(psk: &SecretKey) -> Option<Self> {
        let src = psk.expose_secret().get(..PSK_BYTES)?;
        let mut bytes = Zeroizing::new([0u8; PSK_BYTES]);
        bytes.copy_from_slice(src);
        Some(PskParts { bytes })
    }

    fn hash_key(&self) -> &[u8; 16] {
        self.bytes[..16].try_into().expect("16 bytes")
    }

    fn pad(&self, proof: Proof) -> &[u8; 16] {
        let at = 16 + 16 * proof as usize;
        self.bytes[at..at + 16].try_into().expect("16 bytes")
    }

    pub(crate) fn schedule_secret(&self) -> &[u8] {
        &self.bytes[80..PSK_BYTES]
    }

    /// The proof `proof` over `message`.
    pub(crate) fn prove(&self, proof: Proof, message: &[u8]) -> [u8; 16] {
        wc_tag(self.hash_key(), self.pad(proof), &[proof as u8], message)
    }

    /// Whether `tag` is the proof `proof` over `message` (constant time).
    pub(crate) fn verify(&self, proof: Proof, message: &[u8], tag: &[u8; 16]) -> bool {
        let mut expected = self.prove(proof, message);
        let ok = expected.ct_eq(tag).into();
        expected.zeroize();
        ok
    }
}

/// A traffic secret of one direction of the AES-256-GCM suite. Zeroized on
/// drop, never shown.
#[derive(Clone, zeroize::ZeroizeOnDrop)]
pub struct TrafficSecret([u8; 32]);

impl core::fmt::Debug for TrafficSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TrafficSecret").finish_non_exhaustive()
    }
}

impl TrafficSecret {
    /// The secret's bytes (for known-answer tests and exports).
    #[must_use]
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 32-byte record key.
    #[must_use]
    pub fn record_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(CTX_KEY, &self.0))
    }

    /// The 12-byte record IV.
    #[must_use]
    pub fn record_iv(&self) -> [u8; 12] {
        let mut full = blake3::derive_key(CTX_IV, &self.0);
        let mut iv = [0u8; 12];
        iv.copy_from_slice(&full[..12]);
        full.zeroize();
        iv
    }

    /// The secret of key epoch `epoch`, from this (epoch-0) secret and
    /// `fresh` QKD key. Each epoch is derived from epoch 0 directly, so a
    /// receiver that missed every record of an epoch still follows.
    #[must_use]
    pub fn rekey(&self, epoch: u32, fresh: &SecretKey) -> TrafficSecret {
        let mut hasher = blake3::Hasher::new_derive_key(CTX_REKEY);
        hasher.update(&self.0);
        hasher.update(&epoch.to_be_bytes());
        hasher.update(fresh.expose_secret());
        TrafficSecret(*hasher.finalize().as_bytes())
    }
}

/// The two traffic secrets of a finished AES-256-GCM handshake.
pub(crate) fn traffic_secrets(
    schedule_secret: &[u8],
    transcript_hash: &[u8; 32],
) -> (TrafficSecret, TrafficSecret) {
    let derive = |ctx: &str| {
        let mut h = blake3::Hasher::new_derive_key(ctx);
        h.update(schedule_secret);
        h.update(transcript_hash);
        TrafficSecret(*h.finalize().as_bytes())
    };
    (derive(CTX_I2R), derive(CTX_R2I))
}

/// The traffic secrets `(initiator-to-responder, responder-to-initiator)`
/// of the AES-256-GCM suite for `psk` and the transcript hash `th`, as the
/// handshake derives them. `None` if `psk` is shorter than
/// [`PSK_BYTES`].
#[must_use]
pub fn derive_traffic_secrets(
    psk: &SecretKey,
    th: &[u8; 32],
) -> Option<(TrafficSecret, TrafficSecret)> {
    let parts = PskParts::new(psk)?;
    Some(traffic_secrets(parts.schedule_secret(), th))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;

    fn psk() -> SecretKey {
        SecretKey::from_vec((0..PSK_BYTES as u8).collect())
    }

    fn hex32(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    // Known-answer vectors: PSK = 00 01 02 .. 6f, th = blake3("transcript").
    // Any change to the schedule (contexts, order of inputs, parts of the
    // PSK) changes these.
    #[test]
    fn traffic_secret_known_answers() {
        let th = *blake3::hash(b"transcript").as_bytes();
        let (i2r, r2i) = derive_traffic_secrets(&psk(), &th).unwrap();
        let key = i2r.record_key();
        let iv = i2r.record_iv();
        let next = i2r.rekey(1, &SecretKey::from_slice(&[0xaa; 32]));
        let got = [
            hex32(i2r.expose_secret()),
            hex32(r2i.expose_secret()),
            hex32(&key[..]),
            hex32(&iv),
            hex32(next.expose_secret()),
        ];
        let want = [KAT_I2R, KAT_R2I, KAT_I2R_KEY, KAT_I2R_IV, KAT_I2R_REKEYED];
        assert_eq!(got, want.map(hex32), "{got:#?}");
    }

    const KAT_I2R: &[u8] =
        &hex!("eea38cc40a01ed79c134445c7c3c6def11eec5dcb9eab61f4824edc4d6db8224");
    const KAT_R2I: &[u8] =
        &hex!("ca1b0f55f0f1d234dc570814262ad85f5b0f68fab5d756fb7dd99e89129dd8e9");
    const KAT_I2R_KEY: &[u8] =
        &hex!("af9c76dca48c9e7afbf409e2379e358c79801f19da4cda5f6dd775de1e527cdc");
    const KAT_I2R_IV: &[u8] = &hex!("2ea100471c634853a5d5745c");
    const KAT_I2R_REKEYED: &[u8] =
        &hex!("2d7f2a7fb966815207df8c9a81910e82dea655d2b8c0213cbe8806172bc85581");

    #[test]
    fn traffic_secrets_follow_the_documented_formula() {
        let th = *blake3::hash(b"transcript").as_bytes();
        let p = psk();
        let (i2r, r2i) = derive_traffic_secrets(&p, &th).unwrap();
        let mut ikm = p.expose_secret()[80..112].to_vec();
        ikm.extend_from_slice(&th);
        assert_eq!(i2r.expose_secret(), &blake3::derive_key(CTX_I2R, &ikm));
        assert_eq!(r2i.expose_secret(), &blake3::derive_key(CTX_R2I, &ikm));
        assert_ne!(i2r.expose_secret(), r2i.expose_secret());
        let fresh = SecretKey::from_slice(&[0xaa; 32]);
        let mut rk = i2r.expose_secret().to_vec();
        rk.extend_from_slice(&7u32.to_be_bytes());
        rk.extend_from_slice(fresh.expose_secret());
        assert_eq!(
            i2r.rekey(7, &fresh).expose_secret(),
            &blake3::derive_key(CTX_REKEY, &rk)
        );
        let key = i2r.record_key();
        assert_eq!(&key[..], &blake3::derive_key(CTX_KEY, i2r.expose_secret()));
        assert_eq!(
            i2r.record_iv()[..],
            blake3::derive_key(CTX_IV, i2r.expose_secret())[..12]
        );
    }

    #[test]
    fn wc_tag_depends_on_every_input() {
        let h = [3u8; 16];
        let pad = [5u8; 16];
        let t = wc_tag(&h, &pad, b"ab", b"cd");
        assert_ne!(t, wc_tag(&h, &pad, b"a", b"bcd"), "lengths are bound");
        assert_ne!(t, wc_tag(&h, &[6; 16], b"ab", b"cd"));
        assert_ne!(t, wc_tag(&[4; 16], &pad, b"ab", b"cd"));
        assert_ne!(t, wc_tag(&h, &pad, b"ab", b"cd\0"));
        let mut x = wc_hash(&h, b"ab", b"cd");
        for (x, p) in x.iter_mut().zip(&pad) {
            *x ^= p;
        }
        assert_eq!(t, x);
    }

    #[test]
    fn proofs_use_separate_pads_and_need_the_whole_psk() {
        let parts = PskParts::new(&psk()).unwrap();
        let a = parts.prove(Proof::ResponderPsk, b"m");
        let b = parts.prove(Proof::InitiatorPsk, b"m");
        assert_ne!(a, b);
        assert!(parts.verify(Proof::ResponderPsk, b"m", &a));
        assert!(!parts.verify(Proof::ResponderPsk, b"n", &a));
        assert!(PskParts::new(&SecretKey::from_slice(&[0; PSK_BYTES - 1])).is_none());
    }
}
