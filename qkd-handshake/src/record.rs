//! Record protection of the secured channel: framing, sequence numbers,
//! replay rejection, rekeying, for both cipher suites.
//!
//! Record wire forms (protocol id `SecuredChannel`, version 1):
//!
//! ```text
//! AES-256-GCM (type 1):
//!   [proto][1][1] epoch:u32 key_id:[16] seq:u64 | AES-256-GCM(payload ‖ content_type:u8) tag:[16]
//!   AAD = the 31 header bytes; nonce = iv ⊕ (0:u32 ‖ seq:u64)
//! one-time pad + Wegman-Carter (type 2):
//!   [proto][1][2] seq:u64 n:u8 n × (key_id:[16] offset:u32 len:u32) | ct tag:[16]
//!   pad = the n segments of QKD key, concatenated, 32 + |ct| bytes:
//!         pad[0..16] hash key, pad[16..32] tag pad, pad[32..] ⊕ plaintext = ct
//!   tag = POLYVAL_hashkey(header ‖ 0* ‖ ct ‖ 0* ‖ lengths) ⊕ tag pad
//! ```
//!
//! The AES-256-GCM sender moves to epoch `e + 1` by drawing a fresh QKD key
//! `K` from its source and setting `secret_e+1 = derive_key(CTX_REKEY, secret_0 ‖ be32(e + 1) ‖ K)`;
//! every record names its epoch's key ID, so the receiver follows (it looks
//! `K` up, and consumes it only once a record of the new epoch verifies).

use std::collections::HashMap;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use qkd_core::{KeyId, SecretKey};

use crate::capability::{CipherSuite, PROTOCOL_VERSION};
use crate::handshake::Session;
use crate::psk::{PskError, PskSource};
use crate::schedule::{TrafficSecret, wc_tag};
use qkd_core::wire::{Envelope, Protocol, Reader, WireError};

/// Record type of an AES-256-GCM record.
pub const TYPE_AEAD: u8 = 1;
/// Record type of a one-time-pad record.
pub const TYPE_OTP: u8 = 2;
/// Header length of an AES-256-GCM record.
pub const AEAD_HEADER: usize = 3 + 4 + 16 + 8;
/// Length of a tag (both suites).
pub const TAG_BYTES: usize = 16;
/// Most pad segments in one one-time-pad record.
pub const MAX_SEGMENTS: usize = 255;
/// Width of the replay window in records.
pub const REPLAY_WINDOW: u64 = 64;

/// What a record carries (the first plaintext byte, encrypted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContentType {
    /// A datagram of the wrapped machine.
    Data,
    /// The sender closes the channel.
    Close,
    /// Key material forwarded to the peer (key forwarding and relay).
    KeyForward,
}

impl ContentType {
    const fn to_byte(self) -> u8 {
        match self {
            ContentType::Data => 0,
            ContentType::Close => 1,
            ContentType::KeyForward => 2,
        }
    }
    const fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(ContentType::Data),
            1 => Some(ContentType::Close),
            2 => Some(ContentType::KeyForward),
            _ => None,
        }
    }
}

/// One pad segment of a one-time-pad record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The QKD key the pad bytes come from.
    pub key_id: KeyId,
    /// First byte used.
    pub offset: u32,
    /// Bytes used.
    pub len: u32,
}

/// A record's header and protected body, as parsed (nothing verified yet).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordView<'a> {
    /// An AES-256-GCM record.
    Aead {
        /// Sender's key epoch.
        epoch: u32,
        /// The key the epoch was derived with (the PSK at epoch 0).
        key_id: KeyId,
        /// Sequence number.
        seq: u64,
        /// The 31 header bytes (the AAD).
        header: &'a [u8],
        /// Ciphertext followed by the tag.
        body: &'a [u8],
    },
    /// A one-time-pad record.
    Otp {
        /// Sequence number.
        seq: u64,
        /// Where the pad comes from.
        segments: Vec<Segment>,
        /// The header bytes (authenticated).
        header: &'a [u8],
        /// Ciphertext.
        ct: &'a [u8],
        /// The tag.
        tag: [u8; TAG_BYTES],
    },
}

/// Parses a record without verifying it; never panics.
///
/// # Errors
/// A [`WireError`] for anything that is not one well-formed record.
pub fn decode_record(bytes: &[u8]) -> Result<RecordView<'_>, WireError> {
    let mut r = Reader::new(bytes);
    match r.envelope(Protocol::SecuredChannel, PROTOCOL_VERSION)? {
        TYPE_AEAD => {
            let epoch = r.u32()?;
            let key_id = KeyId::from_bytes(r.array()?);
            let seq = r.u64()?;
            r.ensure(TAG_BYTES + 1)?;
            let body = r.rest();
            Ok(RecordView::Aead {
                epoch,
                key_id,
                seq,
                header: &bytes[..AEAD_HEADER],
                body,
            })
        }
        TYPE_OTP => {
            let seq = r.u64()?;
            let n = r.count_u8("segments", MAX_SEGMENTS, 24)?;
            let mut segments = Vec::with_capacity(n);
            for _ in 0..n {
                segments.push(Segment {
                    key_id: KeyId::from_bytes(r.array()?),
                    offset: r.u32()?,
                    len: r.u32()?,
                });
            }
            let header_len = bytes.len() - r.remaining();
            r.ensure(TAG_BYTES + 1)?;
            let rest = r.rest();
            let (ct, tag) = rest.split_at(rest.len() - TAG_BYTES);
            Ok(RecordView::Otp {
                seq,
                segments,
                header: &bytes[..header_len],
                ct,
                tag: tag
                    .try_into()
                    .map_err(|_| WireError::invalid("tag", "must be 16 bytes"))?,
            })
        }
        t => Err(Reader::unknown_type(Protocol::SecuredChannel, t)),
    }
}

/// Why a record was rejected. Authentication failures say nothing more.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Not a well-formed record.
    #[error("malformed record: {0}")]
    Malformed(#[from] WireError),
    /// A record of the other suite.
    #[error("record of the wrong cipher suite")]
    WrongSuite,
    /// The tag did not verify.
    #[error("record authentication failed")]
    BadTag,
    /// A sequence number seen before or left behind the window.
    #[error("replayed record")]
    Replay,
    /// A key epoch older than the current one (or epoch 0 with another key).
    #[error("record of key epoch {0} cannot be followed")]
    Epoch(u32),
    /// The pad of a one-time-pad record is not usable: wrong length, a
    /// repeated key, bytes already used, or outside the key.
    #[error("unusable one-time pad")]
    Pad,
    /// The key the record names is not available here.
    #[error("key for the record: {0}")]
    Key(#[from] PskError),
    /// Decrypted, but the content type is unknown.
    #[error("unknown content type")]
    ContentType,
}

/// Why a record could not be sealed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// No fresh QKD key for a rekey or a pad.
    #[error("no key to protect the record: {0}")]
    Key(#[from] PskError),
    /// The payload needs more pad segments than a record holds.
    #[error("payload too large for one record")]
    TooLarge,
    /// The sequence numbers are used up (after 2^64 records).
    #[error("sequence numbers exhausted")]
    SequenceExhausted,
}

/// A sliding window of seen sequence numbers.
#[derive(Clone, Debug, Default)]
struct ReplayWindow {
    /// One more than the highest sequence number accepted (0: none yet).
    top: u64,
    /// Bit `i`: `top - 1 - i` was accepted.
    bits: u64,
}

impl ReplayWindow {
    fn check(&self, seq: u64) -> bool {
        if seq >= self.top {
            return true;
        }
        let back = self.top - 1 - seq;
        back < REPLAY_WINDOW && self.bits & (1 << back) == 0
    }

    fn accept(&mut self, seq: u64) {
        if seq >= self.top {
            let shift = seq + 1 - self.top;
            self.bits = if shift >= 64 { 0 } else { self.bits << shift };
            self.bits |= 1;
            self.top = seq + 1;
        } else {
            self.bits |= 1 << (self.top - 1 - seq);
        }
    }
}

struct AeadDirection {
    /// The epoch-0 secret every later epoch is derived from.
    base: TrafficSecret,
    epoch: u32,
    key_id: KeyId,
    cipher: Aes256Gcm,
    iv: [u8; 12],
}

impl AeadDirection {
    fn new(base: TrafficSecret, epoch: u32, key_id: KeyId, secret: TrafficSecret) -> Self {
        let key = secret.record_key();
        AeadDirection {
            base,
            epoch,
            key_id,
            cipher: Aes256Gcm::new((&*key).into()),
            iv: secret.record_iv(),
        }
    }

    fn nonce(&self, seq: u64) -> [u8; 12] {
        let mut n = self.iv;
        for (n, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        n
    }
}

struct OtpKey {
    key: SecretKey,
    cursor: usize,
}

/// A pad key the peer cuts from, with the byte ranges already used here
/// (sorted, disjoint): records may arrive out of order, but no byte of pad
/// is accepted twice.
struct RecvPadKey {
    key: SecretKey,
    used: Vec<(usize, usize)>,
}

/// Most separate used ranges kept per receive pad key.
const MAX_PAD_RANGES: usize = 64;

impl RecvPadKey {
    fn overlaps(&self, start: usize, end: usize) -> bool {
        self.used.iter().any(|&(s, e)| start < e && s < end)
    }

    /// Marks `start..end` used; `false` if that needs too many ranges.
    fn mark(&mut self, start: usize, end: usize) -> bool {
        let at = self.used.partition_point(|&(s, _)| s < start);
        self.used.insert(at, (start, end));
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.used.len());
        for &(s, e) in &self.used {
            match merged.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => merged.push((s, e)),
            }
        }
        self.used = merged;
        self.used.len() <= MAX_PAD_RANGES
    }

    fn is_spent(&self) -> bool {
        self.used == [(0, self.key.len())]
    }
}

enum Protection {
    Aead {
        send: Box<AeadDirection>,
        recv: Box<AeadDirection>,
    },
    Otp {
        /// The key pads are being cut from, and how far.
        send: Option<(KeyId, OtpKey)>,
        /// Keys the peer started cutting pads from.
        recv: HashMap<KeyId, RecvPadKey>,
    },
}

/// Most partly used receive pad keys kept; the oldest is dropped beyond.
const MAX_OPEN_PAD_KEYS: usize = 64;

/// The record protection of one side of a secured channel.
pub struct RecordLayer {
    protection: Protection,
    next_seq: u64,
    window: ReplayWindow,
    sent_since_rekey: u64,
    pad_bytes_used: u64,
}

impl core::fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RecordLayer")
            .field("suite", &self.suite())
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl RecordLayer {
    /// The record layer of a finished handshake.
    #[must_use]
    pub fn new(session: &Session) -> Self {
        let protection = match session.traffic_secrets() {
            Some((send, recv)) => Protection::Aead {
                send: Box::new(AeadDirection::new(
                    send.clone(),
                    0,
                    session.psk_id,
                    send.clone(),
                )),
                recv: Box::new(AeadDirection::new(
                    recv.clone(),
                    0,
                    session.psk_id,
                    recv.clone(),
                )),
            },
            None => Protection::Otp {
                send: None,
                recv: HashMap::new(),
            },
        };
        RecordLayer {
            protection,
            next_seq: 0,
            window: ReplayWindow::default(),
            sent_since_rekey: 0,
            pad_bytes_used: 0,
        }
    }

    /// The cipher suite.
    #[must_use]
    pub fn suite(&self) -> CipherSuite {
        match self.protection {
            Protection::Aead { .. } => CipherSuite::Aes256GcmBlake3,
            Protection::Otp { .. } => CipherSuite::OtpWegmanCarter,
        }
    }

    /// The AES-256-GCM send epoch (0 for the one-time pad).
    #[must_use]
    pub fn send_epoch(&self) -> u32 {
        match &self.protection {
            Protection::Aead { send, .. } => send.epoch,
            Protection::Otp { .. } => 0,
        }
    }

    /// Payload bytes sealed since the last rekey.
    #[must_use]
    pub fn sent_since_rekey(&self) -> u64 {
        self.sent_since_rekey
    }

    /// QKD key bytes drawn as one-time pad for sending so far.
    #[must_use]
    pub fn pad_bytes_used(&self) -> u64 {
        self.pad_bytes_used
    }

    /// Moves the AES-256-GCM send direction to a new epoch keyed with fresh
    /// QKD key from `source` (nothing to do for the one-time pad).
    ///
    /// # Errors
    /// The source has no key; nothing changed.
    pub fn rekey(&mut self, source: &mut dyn PskSource) -> Result<(), PskError> {
        if let Protection::Aead { send, .. } = &mut self.protection {
            let (id, fresh) = source.next()?;
            let Some(epoch) = send.epoch.checked_add(1) else {
                return Err(PskError::Exhausted);
            };
            let secret = send.base.rekey(epoch, &fresh);
            **send = AeadDirection::new(send.base.clone(), epoch, id, secret);
        }
        self.sent_since_rekey = 0;
        Ok(())
    }

    /// Protects `payload` as one record of type `content`.
    ///
    /// # Errors
    /// No pad or key left, or a payload too large; nothing was sent.
    pub fn seal(
        &mut self,
        source: &mut dyn PskSource,
        content: ContentType,
        payload: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let seq = self.next_seq;
        if seq == u64::MAX {
            return Err(SealError::SequenceExhausted);
        }
        let out = match &mut self.protection {
            Protection::Aead { send, .. } => {
                let mut out = Vec::with_capacity(AEAD_HEADER + 1 + payload.len() + TAG_BYTES);
                Envelope::new(Protocol::SecuredChannel, PROTOCOL_VERSION, TYPE_AEAD)
                    .write(&mut out);
                out.extend_from_slice(&send.epoch.to_be_bytes());
                out.extend_from_slice(send.key_id.as_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(payload);
                out.push(content.to_byte());
                let (header, body) = out.split_at_mut(AEAD_HEADER);
                let nonce = send.nonce(seq);
                let tag = send
                    .cipher
                    .encrypt_in_place_detached(Nonce::from_slice(&nonce), header, body)
                    .map_err(|_| SealError::TooLarge)?;
                out.extend_from_slice(&tag);
                out
            }
            Protection::Otp { send, .. } => {
                let need = 2 * TAG_BYTES + 1 + payload.len();
                let (segments, pad) = cut_pad(send, source, need)?;
                self.pad_bytes_used += need as u64;
                let mut out = Vec::with_capacity(12 + 24 * segments.len() + need);
                Envelope::new(Protocol::SecuredChannel, PROTOCOL_VERSION, TYPE_OTP).write(&mut out);
                out.extend_from_slice(&seq.to_be_bytes());
                out.push(segments.len() as u8);
                for s in &segments {
                    out.extend_from_slice(s.key_id.as_bytes());
                    out.extend_from_slice(&s.offset.to_be_bytes());
                    out.extend_from_slice(&s.len.to_be_bytes());
                }
                let header_len = out.len();
                out.extend_from_slice(payload);
                out.push(content.to_byte());
                for (c, p) in out[header_len..].iter_mut().zip(&pad[32..]) {
                    *c ^= p;
                }
                let (header, ct) = out.split_at(header_len);
                let tag = wc_tag(
                    pad[..16].try_into().expect("16 bytes"),
                    pad[16..32].try_into().expect("16 bytes"),
                    header,
                    ct,
                );
                out.extend_from_slice(&tag);
                out
            }
        };
        self.next_seq += 1;
        self.sent_since_rekey += payload.len() as u64;
        Ok(out)
    }

    /// Verifies and decrypts one record. A rejected record changes nothing
    /// (no key is consumed, the replay window does not move). The plaintext
    /// is not zeroized: a caller that receives key material in it (the
    /// channel, for key forwards) wraps it.
    ///
    /// # Errors
    /// See [`RecordError`].
    pub fn open(
        &mut self,
        source: &mut dyn PskSource,
        record: &[u8],
    ) -> Result<(ContentType, Vec<u8>), RecordError> {
        let view = decode_record(record)?;
        let plain = match (&mut self.protection, view) {
            (
                Protection::Aead { recv, .. },
                RecordView::Aead {
                    epoch,
                    key_id,
                    seq,
                    header,
                    body,
                },
            ) => {
                if !self.window.check(seq) {
                    return Err(RecordError::Replay);
                }
                let candidate = if epoch == recv.epoch && key_id == recv.key_id {
                    None
                } else if epoch > recv.epoch {
                    let fresh = source.find(&key_id)?;
                    let secret = recv.base.rekey(epoch, &fresh);
                    Some(AeadDirection::new(recv.base.clone(), epoch, key_id, secret))
                } else {
                    return Err(RecordError::Epoch(epoch));
                };
                let dir = candidate.as_ref().unwrap_or(&**recv);
                let (ct, tag) = body.split_at(body.len() - TAG_BYTES);
                let mut plain = ct.to_vec();
                dir.cipher
                    .decrypt_in_place_detached(
                        Nonce::from_slice(&dir.nonce(seq)),
                        header,
                        &mut plain,
                        tag.into(),
                    )
                    .map_err(|_| RecordError::BadTag)?;
                if plain
                    .last()
                    .copied()
                    .and_then(ContentType::from_byte)
                    .is_none()
                {
                    return Err(RecordError::ContentType);
                }
                if let Some(next) = candidate {
                    source.consume(&key_id)?;
                    **recv = next;
                }
                self.window.accept(seq);
                plain
            }
            (
                Protection::Otp { recv, .. },
                RecordView::Otp {
                    seq,
                    segments,
                    header,
                    ct,
                    tag,
                },
            ) => {
                if !self.window.check(seq) {
                    return Err(RecordError::Replay);
                }
                let plain = open_otp(recv, source, &segments, header, ct, &tag)?;
                self.window.accept(seq);
                plain
            }
            _ => return Err(RecordError::WrongSuite),
        };
        let mut plain = plain;
        let content = plain
            .pop()
            .and_then(ContentType::from_byte)
            .ok_or(RecordError::ContentType)?;
        Ok((content, plain))
    }
}

/// Cuts `need` pad bytes from the send key, drawing fresh keys as needed.
/// On error nothing of the current key is used, but keys drawn are lost
/// (they were consumed at the source and must not be reused).
fn cut_pad(
    send: &mut Option<(KeyId, OtpKey)>,
    source: &mut dyn PskSource,
    need: usize,
) -> Result<(Vec<Segment>, Zeroizing<Vec<u8>>), SealError> {
    let mut segments = Vec::new();
    let mut pad = Zeroizing::new(Vec::with_capacity(need));
    while pad.len() < need {
        if send.as_ref().is_none_or(|(_, k)| k.cursor >= k.key.len()) {
            let (id, key) = source.next_pad()?;
            *send = Some((id, OtpKey { key, cursor: 0 }));
        }
        let Some((id, k)) = send.as_mut() else {
            continue;
        };
        if segments.len() == MAX_SEGMENTS {
            return Err(SealError::TooLarge);
        }
        let take = (need - pad.len()).min(k.key.len() - k.cursor);
        let (Ok(offset), Ok(len)) = (u32::try_from(k.cursor), u32::try_from(take)) else {
            return Err(SealError::TooLarge);
        };
        pad.extend_from_slice(&k.key.expose_secret()[k.cursor..k.cursor + take]);
        k.cursor += take;
        segments.push(Segment {
            key_id: *id,
            offset,
            len,
        });
    }
    Ok((segments, pad))
}

fn open_otp(
    recv: &mut HashMap<KeyId, RecvPadKey>,
    source: &mut dyn PskSource,
    segments: &[Segment],
    header: &[u8],
    ct: &[u8],
    tag: &[u8; TAG_BYTES],
) -> Result<Vec<u8>, RecordError> {
    let total: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
    if total != (2 * TAG_BYTES + ct.len()) as u64 {
        return Err(RecordError::Pad);
    }
    for (i, s) in segments.iter().enumerate() {
        if s.len == 0 || segments[..i].iter().any(|t| t.key_id == s.key_id) {
            return Err(RecordError::Pad);
        }
    }
    // Gather the pad without changing anything: keys not yet open are only looked up.
    let mut fresh: Vec<(KeyId, SecretKey)> = Vec::new();
    let mut pad = Zeroizing::new(Vec::with_capacity(total as usize));
    for s in segments {
        let (start, end) = (s.offset as usize, s.offset as usize + s.len as usize);
        let bytes = if let Some(k) = recv.get(&s.key_id) {
            if k.overlaps(start, end) || k.used.len() >= MAX_PAD_RANGES {
                return Err(RecordError::Pad);
            }
            k.key.expose_secret().get(start..end)
        } else {
            let key = source.find_pad(&s.key_id)?;
            fresh.push((s.key_id, key));
            fresh
                .last()
                .and_then(|(_, k)| k.expose_secret().get(start..end))
        };
        pad.extend_from_slice(bytes.ok_or(RecordError::Pad)?);
    }
    let mut expected = wc_tag(
        pad[..16].try_into().expect("16 bytes"),
        pad[16..32].try_into().expect("16 bytes"),
        header,
        ct,
    );
    let ok: bool = expected.ct_eq(tag).into();
    expected.zeroize();
    if !ok {
        return Err(RecordError::BadTag);
    }
    let mut plain = ct.to_vec();
    for (c, p) in plain.iter_mut().zip(&pad[32..]) {
        *c ^= p;
    }
    if plain
        .last()
        .copied()
        .and_then(ContentType::from_byte)
        .is_none()
    {
        return Err(RecordError::ContentType);
    }
    // Accepted: consume the new keys and mark every range used.
    for (id, key) in fresh {
        source.consume(&id)?;
        recv.insert(
            id,
            RecvPadKey {
                key,
                used: Vec::new(),
            },
        );
    }
    for s in segments {
        let (start, end) = (s.offset as usize, s.offset as usize + s.len as usize);
        if let Some(k) = recv.get_mut(&s.key_id)
            && (!k.mark(start, end) || k.is_spent())
        {
            recv.remove(&s.key_id);
        }
    }
    while recv.len() > MAX_OPEN_PAD_KEYS {
        // Drop a partly used key (its rest can no longer be used here).
        let Some(id) = recv.keys().next().copied() else {
            break;
        };
        recv.remove(&id);
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window_accepts_each_number_once() {
        let mut w = ReplayWindow::default();
        for s in [0, 2, 1, 5, 70] {
            assert!(w.check(s), "{s}");
            w.accept(s);
            assert!(!w.check(s), "{s}");
        }
        assert!(w.check(69));
        assert!(!w.check(5), "left behind the window");
        assert!(w.check(200));
    }
}

#[cfg(test)]
mod layer_tests {
    use super::*;
    use crate::capability::{Capabilities, Ownership, StoreParams};
    use crate::handshake::{Handshake, HandshakeConfig, HandshakeEvent};
    use crate::psk::{PSK_BYTES, PskTable};
    use qkd_core::machine::Machine;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use std::time::Instant;

    fn keys(n: u16, len: usize) -> Vec<(KeyId, SecretKey)> {
        (0..n)
            .map(|i| {
                let id = KeyId::for_block(b"record-test", 0, u64::from(i));
                let k: Vec<u8> = blake3::Hasher::new()
                    .update(id.as_bytes())
                    .finalize_xof()
                    .fill_and_return(len);
                (id, SecretKey::from_vec(k))
            })
            .collect()
    }

    trait Fill {
        fn fill_and_return(self, len: usize) -> Vec<u8>;
    }
    impl Fill for blake3::OutputReader {
        fn fill_and_return(mut self, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            self.fill(&mut v);
            v
        }
    }

    /// Two record layers after a handshake with `suite`, and both sources.
    fn layers(
        suite: CipherSuite,
        key_len: usize,
    ) -> ((RecordLayer, PskTable), (RecordLayer, PskTable)) {
        let now = Instant::now();
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let store = |ownership| StoreParams {
            chunk_bytes: 1024,
            min_key_bits: 64,
            max_key_bits: 8192,
            ownership,
        };
        let cfg = |o| HandshakeConfig::new(Capabilities::new(store(o)).with_suites(&[suite]));
        let all = keys(512, key_len.max(PSK_BYTES));
        let mut a = Handshake::initiator(
            cfg(Ownership::First),
            PskTable::new(Ownership::First, all.clone()),
            &mut rng,
            now,
        )
        .unwrap();
        let mut b = Handshake::responder(
            cfg(Ownership::Second),
            PskTable::new(Ownership::Second, all),
            &mut rng,
            now,
        )
        .unwrap();
        for _ in 0..3 {
            while let Some(m) = a.poll_transmit(now) {
                b.handle_input(now, &m).unwrap();
            }
            while let Some(m) = b.poll_transmit(now) {
                a.handle_input(now, &m).unwrap();
            }
        }
        let Some(HandshakeEvent::Established(sa)) = a.poll_event() else {
            panic!("a established")
        };
        let Some(HandshakeEvent::Established(sb)) = b.poll_event() else {
            panic!("b established")
        };
        (
            (RecordLayer::new(&sa), a.into_source()),
            (RecordLayer::new(&sb), b.into_source()),
        )
    }

    #[test]
    fn both_suites_carry_data_both_ways_and_reject_replays() {
        for suite in CipherSuite::ALL {
            let ((mut la, mut sa), (mut lb, mut sb)) = layers(suite, 112);
            for i in 0..20u8 {
                let msg = vec![i; 1 + 37 * usize::from(i)];
                let r = la.seal(&mut sa, ContentType::Data, &msg).unwrap();
                let (ct, got) = lb.open(&mut sb, &r).unwrap();
                assert_eq!((ct, got.as_slice()), (ContentType::Data, msg.as_slice()));
                assert_eq!(
                    lb.open(&mut sb, &r).unwrap_err(),
                    RecordError::Replay,
                    "{suite}"
                );
                let back = lb.seal(&mut sb, ContentType::Close, &msg).unwrap();
                assert_eq!(la.open(&mut sa, &back).unwrap().0, ContentType::Close);
            }
        }
    }

    #[test]
    fn any_altered_byte_is_rejected_and_changes_nothing() {
        for suite in CipherSuite::ALL {
            let ((mut la, mut sa), (mut lb, mut sb)) = layers(suite, 112);
            let r = la
                .seal(&mut sa, ContentType::Data, b"grant 4 keys")
                .unwrap();
            let consumed = sb.consumed();
            for i in 0..r.len() {
                for bit in [0x01, 0x80] {
                    let mut bad = r.clone();
                    bad[i] ^= bit;
                    assert!(lb.open(&mut sb, &bad).is_err(), "{suite} byte {i}");
                }
            }
            assert_eq!(
                sb.consumed(),
                consumed,
                "{suite}: no key consumed by forgeries"
            );
            assert_eq!(lb.open(&mut sb, &r).unwrap().1.as_slice(), b"grant 4 keys");
        }
    }

    #[test]
    fn aes_rekey_is_followed_by_the_receiver() {
        let ((mut la, mut sa), (mut lb, mut sb)) = layers(CipherSuite::Aes256GcmBlake3, 112);
        let r0 = la.seal(&mut sa, ContentType::Data, b"epoch 0").unwrap();
        la.rekey(&mut sa).unwrap();
        assert_eq!(la.send_epoch(), 1);
        let r1 = la.seal(&mut sa, ContentType::Data, b"epoch 1").unwrap();
        // The old-epoch record was lost; the new one still opens.
        drop(r0);
        assert_eq!(lb.open(&mut sb, &r1).unwrap().1.as_slice(), b"epoch 1");
        la.rekey(&mut sa).unwrap();
        la.rekey(&mut sa).unwrap();
        let r3 = la.seal(&mut sa, ContentType::Data, b"epoch 3").unwrap();
        // Epoch 2 was never seen: epoch 3 still opens, and epoch 1 is over.
        assert_eq!(lb.open(&mut sb, &r3).unwrap().1.as_slice(), b"epoch 3");
        let mut late = r1.clone();
        late[30] ^= 1; // a new sequence number, same epoch 1
        assert_eq!(lb.open(&mut sb, &late).unwrap_err(), RecordError::Epoch(1));
    }

    #[test]
    fn otp_uses_each_pad_byte_once_and_reports_its_key_use() {
        let ((mut la, mut sa), (mut lb, mut sb)) = layers(CipherSuite::OtpWegmanCarter, 112);
        let before = sa.consumed();
        let msg = vec![7u8; 1000];
        let r = la.seal(&mut sa, ContentType::Data, &msg).unwrap();
        assert_eq!(la.pad_bytes_used(), 1000 + 1 + 32);
        // 1033 pad bytes need ten 112-byte keys.
        assert_eq!(sa.consumed() - before, 10);
        assert_eq!(lb.open(&mut sb, &r).unwrap().1.as_slice(), msg.as_slice());
        let RecordView::Otp { segments, .. } = decode_record(&r).unwrap() else {
            panic!("otp")
        };
        assert_eq!(segments.len(), 10);
        // The ciphertext is not the plaintext.
        assert!(!r.windows(16).any(|w| w == [7u8; 16]));
    }

    #[test]
    fn otp_records_out_of_order_open_once_and_a_reused_pad_is_rejected() {
        let ((mut la, mut sa), (mut lb, mut sb)) = layers(CipherSuite::OtpWegmanCarter, 112);
        let r1 = la.seal(&mut sa, ContentType::Data, b"a").unwrap();
        let r2 = la.seal(&mut sa, ContentType::Data, b"b").unwrap();
        lb.open(&mut sb, &r2).unwrap();
        assert_eq!(lb.open(&mut sb, &r1).unwrap().1.as_slice(), b"a");
        // A forged record that reuses r1's pad under a new sequence number.
        let mut again = r1.clone();
        again[10] ^= 0x40;
        assert_eq!(lb.open(&mut sb, &again).unwrap_err(), RecordError::Pad);
    }

    #[test]
    fn pad_ranges_merge_and_never_overlap() {
        let mut k = RecvPadKey {
            key: SecretKey::from_slice(&[0; 100]),
            used: Vec::new(),
        };
        assert!(k.mark(40, 60));
        assert!(k.overlaps(50, 51) && k.overlaps(0, 41) && !k.overlaps(60, 100));
        assert!(k.mark(0, 40));
        assert!(k.mark(60, 100));
        assert_eq!(k.used, [(0, 100)]);
        assert!(k.is_spent());
    }

    #[test]
    fn records_of_the_other_suite_are_refused() {
        let ((mut la, mut sa), _) = layers(CipherSuite::Aes256GcmBlake3, 112);
        let (_, (mut lb, mut sb)) = layers(CipherSuite::OtpWegmanCarter, 112);
        let r = la.seal(&mut sa, ContentType::Data, b"x").unwrap();
        assert_eq!(lb.open(&mut sb, &r).unwrap_err(), RecordError::WrongSuite);
    }

    proptest::proptest! {
        #[test]
        fn decode_record_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = decode_record(&bytes);
        }
    }
}
