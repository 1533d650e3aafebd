//! Key confirmation: after error correction, Alice and Bob compare an
//! ε-universal hash of their keys and keep the block only if the hashes agree;
//! on a mismatch both drop it.
//!
//! ```text
//!  Alice (ConfirmAlice)                                  Bob (ConfirmBob)
//!  fresh hash key r, tag_A = h_r(key_A)
//!  ──── Challenge { block, r, tag_A } ─────────────────▶ tag_B = h_r(key_B)
//!                                                       keep iff tag_A == tag_B
//!  keep iff tag_A == tag_B ◀──── Verdict { block, tag_B } ────
//! ```
//!
//! Both sides decide on the same pair of tags, so as long as the messages
//! arrive unchanged (they travel over the authenticated channel of
//! `qkd-postproc::auth`) both keep the block or both drop it. Alice
//! retransmits the challenge until a verdict arrives; Bob answers a repeated
//! challenge with the same verdict (idempotent). If Alice gives up
//! ([`ConfirmEvent::Abandoned`]) she drops the block; Bob may have kept it,
//! and the key store's symmetric drop (qkd-sync) removes it there.
//!
//! # The hash
//!
//! A polynomial hash over GF(2^128) (`z^128 + z^7 + z^2 + z + 1`): the key's
//! bits, LSB-first, in 128-bit blocks `m_1 … m_d` (the last zero-padded),
//! followed by the block `m_{d+1}` = key length in bits, evaluated at the
//! fresh random point `r`: `h_r = Σ m_i·r^(d+2−i)`, truncated to its low `t`
//! bits. Two different keys give a non-zero difference polynomial of degree
//! at most `d + 1`; for each of the `2^(128−t)` differences that vanish in the
//! low `t` bits it has at most `d + 1` roots, so the tags collide with
//! probability at most `ε_cor = (d + 1)/2^t` over `r`
//! ([`ConfirmConfig::eps_cor`]). The tag discloses `t` bits of the key, which
//! the finite-key length subtracts ([`crate::amplify::length`]).
//!
//! # Wire format (version 1)
//!
//! Integers big-endian; `T = ⌈t/8⌉` tag bytes, the tag's low bits first
//! (little-endian), unused high bits zero.
//!
//! | message | bytes |
//! | --- | --- |
//! | Challenge | `01` `01` block_id (8) tag_bits (1) hash_key (16, little-endian) tag (T) |
//! | Verdict | `01` `02` block_id (8) tag_bits (1) tag (T) |
//!
//! Example: the verdict for block 5 with a 16-bit tag `0xbeef` is
//! `01 02 00 00 00 00 00 00 00 05 10 ef be`. `tag_bits` must be in
//! `1..=128`; a shorter or longer message, an unknown version or type, or
//! set bits above `tag_bits` are errors, never panics.
//!
//! # Example
//!
//! ```
//! use std::time::Instant;
//! use qkd_core::BitVec;
//! use qkd_postproc::confirm::{ConfirmAlice, ConfirmBob, ConfirmConfig, ConfirmEvent};
//! # use rand_core::SeedableRng;
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
//! let key = BitVec::random(10_000, &mut rng);
//! let now = Instant::now();
//! let config = ConfirmConfig::default();
//! let mut alice = ConfirmAlice::new(7, key.as_bitslice(), config, &mut rng, now);
//! let mut bob = ConfirmBob::new(7, key.as_bitslice(), config);
//! let challenge = alice.poll_transmit(now).unwrap();
//! bob.handle_input(now, &challenge)?;
//! let verdict = bob.poll_transmit(now).unwrap();
//! alice.handle_input(now, &verdict)?;
//! assert_eq!(alice.poll_event(), Some(ConfirmEvent::Confirmed { block_id: 7 }));
//! assert_eq!(bob.poll_event(), Some(ConfirmEvent::Confirmed { block_id: 7 }));
//! # Ok::<(), qkd_postproc::confirm::ConfirmError>(())
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use qkd_core::{BitSlice, BitVec};
use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::amplify::Backend;
use crate::amplify::clmul::run;

/// Wire format version.
pub const VERSION: u8 = 1;
const TYPE_CHALLENGE: u8 = 1;
const TYPE_VERDICT: u8 = 2;

/// Settings both sides must share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfirmConfig {
    /// Tag length `t` in bits, `1..=128`.
    pub tag_bits: u8,
    /// Time Alice waits for a verdict before sending the challenge again.
    pub retransmit_after: Duration,
    /// Retransmissions before Alice gives up.
    pub max_retransmits: u32,
}

impl Default for ConfirmConfig {
    /// 64-bit tags, retransmit after 200 ms, at most 10 times.
    fn default() -> Self {
        Self {
            tag_bits: 64,
            retransmit_after: Duration::from_millis(200),
            max_retransmits: 10,
        }
    }
}

impl ConfirmConfig {
    /// The collision probability `ε_cor = (⌈key_bits/128⌉ + 1)/2^t` for keys
    /// of `key_bits` bits.
    #[must_use]
    pub fn eps_cor(&self, key_bits: u64) -> f64 {
        (key_bits.div_ceil(128) + 1) as f64 * (-f64::from(self.tag_bits)).exp2()
    }
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than its header or its declared content.
    #[error("message truncated")]
    Truncated,
    /// Bytes after the end of the message.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// A version this implementation does not speak.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// An unknown message type.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// `tag_bits` outside `1..=128`, or tag bits set above it.
    #[error("invalid tag length or padding")]
    InvalidTag,
}

/// Errors of the confirmation machines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfirmError {
    /// The input was malformed.
    #[error("malformed message: {0}")]
    Malformed(#[from] DecodeError),
    /// A message this side never receives (a challenge at Alice, a verdict at Bob).
    #[error("unexpected message type")]
    UnexpectedMessage,
    /// The message is about another block.
    #[error("message for block {got}, this machine confirms block {expected}")]
    WrongBlock {
        /// Our block.
        expected: u64,
        /// The block in the message.
        got: u64,
    },
    /// The peer uses another tag length: the peer is incompatible.
    #[error("peer uses {peer}-bit tags, this side {local}")]
    TagLengthMismatch {
        /// Ours.
        local: u8,
        /// Theirs.
        peer: u8,
    },
    /// A second challenge for the same block with a different hash key:
    /// the peer misbehaved; the first decision stands.
    #[error("conflicting challenge for an already decided block")]
    ConflictingChallenge,
}

/// What a machine tells its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfirmEvent {
    /// The tags agree: keep the block.
    Confirmed {
        /// The block.
        block_id: u64,
    },
    /// The tags differ: drop the block (the peer drops it too).
    Mismatch {
        /// The block.
        block_id: u64,
    },
    /// Alice had no verdict after every retransmission: drop the block.
    Abandoned {
        /// The block.
        block_id: u64,
    },
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfirmMessage {
    /// Alice → Bob: the hash key and Alice's tag.
    Challenge {
        /// The block.
        block_id: u64,
        /// Tag length in bits.
        tag_bits: u8,
        /// The hash point `r`.
        hash_key: u128,
        /// Alice's tag.
        tag: u128,
    },
    /// Bob → Alice: Bob's tag.
    Verdict {
        /// The block.
        block_id: u64,
        /// Tag length in bits.
        tag_bits: u8,
        /// Bob's tag.
        tag: u128,
    },
}

fn tag_mask(tag_bits: u8) -> u128 {
    if tag_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << tag_bits) - 1
    }
}

impl ConfirmMessage {
    /// The wire bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 8 + 1 + 16 + 16);
        out.put_u8(VERSION);
        let (block_id, tag_bits, tag) = match *self {
            ConfirmMessage::Challenge {
                block_id,
                tag_bits,
                hash_key,
                tag,
            } => {
                out.put_u8(TYPE_CHALLENGE);
                out.put_u64(block_id);
                out.put_u8(tag_bits);
                out.put_u128_le(hash_key);
                (block_id, tag_bits, tag)
            }
            ConfirmMessage::Verdict {
                block_id,
                tag_bits,
                tag,
            } => {
                out.put_u8(TYPE_VERDICT);
                out.put_u64(block_id);
                out.put_u8(tag_bits);
                (block_id, tag_bits, tag)
            }
        };
        let _ = block_id;
        let n = usize::from(tag_bits).div_ceil(8).min(16);
        out.extend_from_slice(&(tag & tag_mask(tag_bits)).to_le_bytes()[..n]);
        out
    }

    /// Parses one message; never panics.
    ///
    /// # Errors
    /// [`DecodeError`] on anything but exactly one well-formed message.
    pub fn decode(mut bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.remaining() < 2 {
            return Err(DecodeError::Truncated);
        }
        let version = bytes.get_u8();
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let kind = bytes.get_u8();
        let key_len = match kind {
            TYPE_CHALLENGE => 16,
            TYPE_VERDICT => 0,
            other => return Err(DecodeError::UnknownType(other)),
        };
        if bytes.remaining() < 9 + key_len {
            return Err(DecodeError::Truncated);
        }
        let block_id = bytes.get_u64();
        let tag_bits = bytes.get_u8();
        if !(1..=128).contains(&tag_bits) {
            return Err(DecodeError::InvalidTag);
        }
        let hash_key = if key_len == 16 {
            bytes.get_u128_le()
        } else {
            0
        };
        let n = usize::from(tag_bits).div_ceil(8);
        if bytes.remaining() < n {
            return Err(DecodeError::Truncated);
        }
        if bytes.remaining() > n {
            return Err(DecodeError::TrailingBytes(bytes.remaining() - n));
        }
        let mut tag_le = [0u8; 16];
        bytes.copy_to_slice(&mut tag_le[..n]);
        let tag = u128::from_le_bytes(tag_le);
        if tag & !tag_mask(tag_bits) != 0 {
            return Err(DecodeError::InvalidTag);
        }
        Ok(match kind {
            TYPE_CHALLENGE => ConfirmMessage::Challenge {
                block_id,
                tag_bits,
                hash_key,
                tag,
            },
            _ => ConfirmMessage::Verdict {
                block_id,
                tag_bits,
                tag,
            },
        })
    }
}

/// The confirmation tag of `key` at the point `hash_key`, truncated to
/// `tag_bits` (module docs for the construction).
///
/// # Panics
/// If `tag_bits` is not in `1..=128`.
#[must_use]
pub fn confirmation_tag(key: BitSlice<'_>, hash_key: u128, tag_bits: u8) -> u128 {
    confirmation_tag_with(Backend::detect(), key, hash_key, tag_bits)
}

/// [`confirmation_tag`] with a given backend (the portable one is the reference).
///
/// # Panics
/// If `tag_bits` is not in `1..=128` or the backend is not available.
#[must_use]
pub fn confirmation_tag_with(
    backend: Backend,
    key: BitSlice<'_>,
    hash_key: u128,
    tag_bits: u8,
) -> u128 {
    assert!((1..=128).contains(&tag_bits), "tag_bits must be in 1..=128");
    // The key's 64-bit words, read from the slice (no copy of the key).
    let n_words = key.len().div_ceil(64);
    let word = |j: usize| {
        let at = 64 * j;
        u128::from(key.load_bits(at, (key.len() - at).min(64)))
    };
    let mut acc = 0u128;
    let mut blocks = [0u128; 64];
    for first in (0..n_words).step_by(128) {
        let mut count = 0;
        for j in (first..(first + 128).min(n_words)).step_by(2) {
            let hi = if j + 1 < n_words { word(j + 1) } else { 0 };
            blocks[count] = word(j) | (hi << 64);
            count += 1;
        }
        acc = run::horner(backend, acc, hash_key, &blocks[..count]);
    }
    blocks.zeroize();
    acc = run::horner(backend, acc, hash_key, &[key.len() as u128]);
    let tag = acc & tag_mask(tag_bits);
    acc.zeroize();
    tag
}

/// A tag that zeroizes on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
struct Tag(u128);

impl Tag {
    fn ct_eq(&self, other: u128) -> bool {
        self.0.to_le_bytes().ct_eq(&other.to_le_bytes()).into()
    }
}

/// Alice's side: picks the hash key, sends the challenge, decides on Bob's tag.
///
/// Sans-IO: feed [`handle_input`](Self::handle_input) and
/// [`handle_timeout`](Self::handle_timeout); drain
/// [`poll_transmit`](Self::poll_transmit) and [`poll_event`](Self::poll_event)
/// after each; wake at [`poll_timeout`](Self::poll_timeout). `now` must not
/// go backwards. The key is hashed in [`new`](Self::new) and not kept.
pub struct ConfirmAlice {
    block_id: u64,
    config: ConfirmConfig,
    hash_key: u128,
    tag: Tag,
    send_now: bool,
    retransmits: u32,
    deadline: Option<Instant>,
    decided: bool,
    events: VecDeque<ConfirmEvent>,
}

impl core::fmt::Debug for ConfirmAlice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ConfirmAlice")
            .field("block_id", &self.block_id)
            .field("decided", &self.decided)
            .finish_non_exhaustive()
    }
}

impl ConfirmAlice {
    /// Starts confirming `key` as block `block_id`, with a fresh hash key from `rng`.
    ///
    /// # Panics
    /// If `config.tag_bits` is not in `1..=128`.
    pub fn new<R: CryptoRng + ?Sized>(
        block_id: u64,
        key: BitSlice<'_>,
        config: ConfirmConfig,
        rng: &mut R,
        now: Instant,
    ) -> Self {
        let mut k = [0u8; 16];
        rng.fill_bytes(&mut k);
        let hash_key = u128::from_le_bytes(k);
        let tag = Tag(confirmation_tag(key, hash_key, config.tag_bits));
        let _ = now;
        Self {
            block_id,
            config,
            hash_key,
            tag,
            send_now: true,
            retransmits: 0,
            deadline: None,
            decided: false,
            events: VecDeque::new(),
        }
    }

    /// The block being confirmed.
    #[must_use]
    pub fn block_id(&self) -> u64 {
        self.block_id
    }

    /// Whether a decision (event) has been made.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.decided
    }

    /// Bits of the key the exchange disclosed: the tag length.
    #[must_use]
    pub fn disclosed_bits(&self) -> u32 {
        u32::from(self.config.tag_bits)
    }

    /// Feeds a message from Bob.
    ///
    /// # Errors
    /// [`ConfirmError`] for a malformed or unexpected message; the state is
    /// unchanged then.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), ConfirmError> {
        let _ = now;
        match ConfirmMessage::decode(bytes)? {
            ConfirmMessage::Challenge { .. } => Err(ConfirmError::UnexpectedMessage),
            ConfirmMessage::Verdict {
                block_id,
                tag_bits,
                tag,
            } => {
                if block_id != self.block_id {
                    return Err(ConfirmError::WrongBlock {
                        expected: self.block_id,
                        got: block_id,
                    });
                }
                if tag_bits != self.config.tag_bits {
                    return Err(ConfirmError::TagLengthMismatch {
                        local: self.config.tag_bits,
                        peer: tag_bits,
                    });
                }
                if !self.decided {
                    self.decided = true;
                    self.deadline = None;
                    self.send_now = false;
                    self.events.push_back(if self.tag.ct_eq(tag) {
                        ConfirmEvent::Confirmed { block_id }
                    } else {
                        ConfirmEvent::Mismatch { block_id }
                    });
                }
                Ok(())
            }
        }
    }

    /// The next message to send to Bob.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !self.send_now || self.decided {
            return None;
        }
        self.send_now = false;
        self.deadline = Some(now + self.config.retransmit_after);
        Some(
            ConfirmMessage::Challenge {
                block_id: self.block_id,
                tag_bits: self.config.tag_bits,
                hash_key: self.hash_key,
                tag: self.tag.0,
            }
            .encode(),
        )
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Retransmits, or gives up after `max_retransmits`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline || self.decided {
            return;
        }
        self.deadline = None;
        if self.retransmits >= self.config.max_retransmits {
            self.decided = true;
            self.events.push_back(ConfirmEvent::Abandoned {
                block_id: self.block_id,
            });
        } else {
            self.retransmits += 1;
            self.send_now = true;
        }
    }

    /// The next outcome.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ConfirmEvent> {
        self.events.pop_front()
    }
}

/// Bob's side: hashes his key at Alice's point and answers with his tag.
///
/// Same driving contract as [`ConfirmAlice`]; Bob has no timers. He keeps a
/// copy of the key (zeroized on drop) until the challenge arrives, then only
/// his tag, to answer repeated challenges.
pub struct ConfirmBob {
    block_id: u64,
    config: ConfirmConfig,
    key: Option<BitVec>,
    answered: Option<(u128, Tag)>,
    outbox: VecDeque<Vec<u8>>,
    events: VecDeque<ConfirmEvent>,
}

impl core::fmt::Debug for ConfirmBob {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ConfirmBob")
            .field("block_id", &self.block_id)
            .field("decided", &self.answered.is_some())
            .finish_non_exhaustive()
    }
}

impl ConfirmBob {
    /// Waits for Alice's challenge for block `block_id` of `key`.
    #[must_use]
    pub fn new(block_id: u64, key: BitSlice<'_>, config: ConfirmConfig) -> Self {
        Self {
            block_id,
            config,
            key: Some(key.to_bitvec()),
            answered: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Whether a decision (event) has been made.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.answered.is_some()
    }

    /// Feeds a message from Alice.
    ///
    /// # Errors
    /// [`ConfirmError`] for a malformed, unexpected or conflicting message;
    /// the state is unchanged then.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), ConfirmError> {
        let _ = now;
        let ConfirmMessage::Challenge {
            block_id,
            tag_bits,
            hash_key,
            tag,
        } = ConfirmMessage::decode(bytes)?
        else {
            return Err(ConfirmError::UnexpectedMessage);
        };
        if block_id != self.block_id {
            return Err(ConfirmError::WrongBlock {
                expected: self.block_id,
                got: block_id,
            });
        }
        if tag_bits != self.config.tag_bits {
            return Err(ConfirmError::TagLengthMismatch {
                local: self.config.tag_bits,
                peer: tag_bits,
            });
        }
        if let Some((answered_key, _)) = &self.answered {
            if *answered_key != hash_key {
                return Err(ConfirmError::ConflictingChallenge);
            }
        } else {
            let key = self
                .key
                .take()
                .expect("key is held until the first challenge");
            let mine = Tag(confirmation_tag(key.as_bitslice(), hash_key, tag_bits));
            drop(key);
            self.events.push_back(if mine.ct_eq(tag) {
                ConfirmEvent::Confirmed { block_id }
            } else {
                ConfirmEvent::Mismatch { block_id }
            });
            self.answered = Some((hash_key, mine));
        }
        let (_, mine) = self.answered.as_ref().expect("set above");
        self.outbox.push_back(
            ConfirmMessage::Verdict {
                block_id,
                tag_bits,
                tag: mine.0,
            }
            .encode(),
        );
        Ok(())
    }

    /// The next message to send to Alice.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let _ = now;
        self.outbox.pop_front()
    }

    /// Bob has no timers: always `None`.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Nothing to do (no timers).
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
    }

    /// The next outcome.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ConfirmEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;
