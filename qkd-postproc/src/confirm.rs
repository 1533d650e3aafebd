//! Key confirmation: after error correction, Alice and Bob compare an
//! ε-universal hash of their keys and keep the block only if the hashes agree;
//! on a mismatch both drop it.
//!
//! ```text
//!  Alice (ConfirmAlice)                                  Bob (ConfirmBob)
//!  fresh hash point r ∉ {0, 1}, tag_A = h_r(key_A)
//!  ──── Challenge { block, r, tag_A } ─────────────────▶ tag_B = h_r(key_B)
//!                                                       decides: keep iff tag_A == tag_B
//!  decides the same ◀──── Verdict { block, tag_B } ────  (final: never decides otherwise)
//! ```
//!
//! # One outcome on both sides
//!
//! The outcome is a function of the two tags, and the two tags are fixed
//! once Alice has sent her challenge: Bob decides when the first challenge
//! arrives and answers every repeat of it with the same verdict; Alice
//! decides when a verdict arrives, and it can only say what Bob decided.
//! So the two sides never decide differently. What loss can do is leave
//! Alice without a verdict: after [`max_retransmissions`](ConfirmConfig::max_retransmissions)
//! she reports [`ConfirmEvent::Unresolved`], which is **not** a decision:
//! Bob may have kept the block. The layer above must resolve it (keep the
//! machine, [`resume`](ConfirmAlice::resume) it when the link is back: a
//! late verdict still decides) before it feeds any later block into the
//! authentication pool, and must neither keep nor drop the block until then.
//!
//! Only a [`ConfirmEvent::Confirmed`] carries a [`ConfirmedBlock`], the
//! proof the [authentication pool](crate::auth::AuthKeyPool::replenish)
//! asks for: a block whose outcome is not agreed cannot feed the pool.
//! If a layer above feeds the two pools differently anyway, the
//! authenticated channel reports [`FeedDiverged`](crate::auth::AuthEvent::FeedDiverged).
//!
//! The outcome is only as trustworthy as the messages: they must travel
//! authenticated (each sealed, or the round's transcript verified before the
//! outcome is used).
//!
//! # The hash
//!
//! A polynomial hash over GF(2^128) (`z^128 + z^7 + z^2 + z + 1`, the
//! arithmetic of [`crate::gf128`]): the key's
//! bits, LSB-first, in 128-bit blocks `m_1 … m_d` (the last zero-padded),
//! followed by the block `m_{d+1}` = key length in bits, evaluated at the
//! fresh random point `r`: `h_r = Σ m_i·r^(d+2−i)`, truncated to its low `t`
//! bits. Two different keys give a non-zero difference polynomial of degree
//! at most `d + 1`; for each of the `2^(128−t)` differences that vanish in the
//! low `t` bits it has at most `d + 1` roots, so the tags collide with
//! probability at most `(d + 1)/(2^t − 2^(1−(128−t)))` over `r` uniform in
//! the `2^128 − 2` allowed points, which [`ConfirmConfig::eps_cor`] bounds by
//! `(d + 1)/2^t · (1 + 2^-126)`. The tag discloses `t` bits of the key, which
//! the finite-key length subtracts ([`crate::amplify::length`]).
//!
//! The points 0 and 1 are refused on the wire and never drawn: at 0 every
//! key hashes to 0, at 1 the hash is the XOR of the key's blocks (no key at
//! all). Accepting them would let whoever chose the point confirm keys
//! that differ.
//!
//! # Wire format
//!
//! Every message starts with the [`qkd_core::wire`] envelope: protocol
//! [`Protocol::Confirm`] (`0x15`), version [`VERSION`] (1), type. Integers
//! big-endian; `T = ⌈t/8⌉` tag bytes, the tag's low bits first
//! (little-endian), unused high bits zero; the hash point little-endian.
//!
//! | message | bytes |
//! | --- | --- |
//! | Challenge | `15 01 01` block (8) tag_bits (1) hash_point (16) tag (T) |
//! | Verdict | `15 01 02` block (8) tag_bits (1) tag (T) |
//!
//! Example: the verdict for block 5 with a 16-bit tag `0xbeef` is
//! `15 01 02 00 00 00 00 00 00 00 05 10 ef be`. `tag_bits` must be in
//! `1..=128`, the hash point must not be 0 or 1; a shorter or longer
//! message, another protocol, version or type, or set bits above
//! `tag_bits` are [`WireError`]s, never panics.
//!
//! # Example
//!
//! ```
//! use std::time::Instant;
//! use qkd_core::{BitVec, BlockId};
//! use qkd_core::machine::Machine;
//! use qkd_postproc::confirm::{ConfirmAlice, ConfirmBob, ConfirmConfig, ConfirmEvent};
//! # use rand_core::SeedableRng;
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
//! let key = BitVec::random(10_000, &mut rng);
//! let now = Instant::now();
//! let config = ConfirmConfig::default();
//! let block = BlockId::new(7);
//! let mut alice = ConfirmAlice::new(block, key.as_bitslice(), &config, &mut rng, now)?;
//! let mut bob = ConfirmBob::new(block, key.as_bitslice(), &config)?;
//! let challenge = alice.poll_transmit(now).unwrap();
//! bob.handle_input(now, &challenge).unwrap();
//! let verdict = bob.poll_transmit(now).unwrap();
//! alice.handle_input(now, &verdict).unwrap();
//! assert!(matches!(alice.poll_event(), Some(ConfirmEvent::Confirmed(b)) if b.block() == block));
//! assert!(matches!(bob.poll_event(), Some(ConfirmEvent::Confirmed(b)) if b.block() == block));
//! assert!(alice.is_finished() && bob.is_finished());
//! # Ok::<(), qkd_core::machine::ConfigError>(())
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use qkd_core::machine::{ConfigError, Machine};
use qkd_core::wire::{Envelope, Protocol, Reader, WireError};
use qkd_core::{BitSlice, BitVec, BlockId};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::gf128::{self, Backend};

/// Version of the confirmation format in the envelope.
pub const VERSION: u8 = 1;
const TYPE_CHALLENGE: u8 = 1;
const TYPE_VERDICT: u8 = 2;

/// Settings both sides must share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfirmConfig {
    /// Tag length `t` in bits, `1..=128`.
    pub tag_bits: u8,
    /// Time Alice waits for a verdict before sending the challenge again
    /// (more than zero).
    pub retransmit_after: Duration,
    /// Retransmissions before Alice reports [`ConfirmEvent::Unresolved`].
    pub max_retransmissions: u32,
}

impl Default for ConfirmConfig {
    /// 64-bit tags, retransmit after 200 ms, at most 10 times.
    fn default() -> Self {
        Self {
            tag_bits: 64,
            retransmit_after: Duration::from_millis(200),
            max_retransmissions: 10,
        }
    }
}

impl ConfirmConfig {
    /// An upper bound on the collision probability for keys of `key_bits`
    /// bits: `ε_cor = (⌈key_bits/128⌉ + 1)/2^t`, times `1 + 2^-126` for the
    /// two points that are never drawn (rounded away in `f64`).
    #[must_use]
    pub fn eps_cor(&self, key_bits: u64) -> f64 {
        (key_bits.div_ceil(128) + 1) as f64
            * (-f64::from(self.tag_bits)).exp2()
            * (1.0 + 2f64.powi(-126))
    }

    /// Checks every field, naming the first bad one.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `tag_bits`, `retransmit_after` or
    /// `max_retransmissions`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=128).contains(&self.tag_bits) {
            return Err(ConfigError::new(
                "tag_bits",
                format!("must be between 1 and 128, got {}", self.tag_bits),
            ));
        }
        if self.retransmit_after.is_zero() {
            return Err(ConfigError::new(
                "retransmit_after",
                "must be more than zero",
            ));
        }
        if self.max_retransmissions > 1_000_000 {
            return Err(ConfigError::new(
                "max_retransmissions",
                "must be at most 1 000 000",
            ));
        }
        Ok(())
    }
}

/// Why a message was rejected. Rejection changes no state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfirmError {
    /// The input was malformed.
    #[error("malformed message: {0}")]
    Malformed(#[from] WireError),
    /// A message this side never receives (a challenge at Alice, a verdict at Bob).
    #[error("unexpected message type")]
    UnexpectedMessage,
    /// The message is about another block.
    #[error("message for block {got}, this machine confirms block {expected}")]
    WrongBlock {
        /// Our block.
        expected: BlockId,
        /// The block in the message.
        got: BlockId,
    },
    /// The peer uses another tag length: the peer is incompatible.
    #[error("peer uses {peer}-bit tags, this side {local}")]
    TagLengthMismatch {
        /// Ours.
        local: u8,
        /// Theirs.
        peer: u8,
    },
    /// A second challenge for the same block with a different hash point:
    /// the peer misbehaved; the first decision stands.
    #[error("conflicting challenge for an already decided block")]
    ConflictingChallenge,
}

/// The proof that both sides decided to keep a block: made only by the
/// confirmation machines (in [`ConfirmEvent::Confirmed`]), asked for by
/// [`AuthKeyPool::replenish`](crate::auth::AuthKeyPool::replenish).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfirmedBlock {
    block: BlockId,
}

impl ConfirmedBlock {
    pub(crate) const fn new(block: BlockId) -> Self {
        ConfirmedBlock { block }
    }

    /// The block both sides keep.
    #[must_use]
    pub const fn block(&self) -> BlockId {
        self.block
    }
}

/// What a machine tells its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfirmEvent {
    /// The tags agree: both sides keep the block. The proof feeds the
    /// authentication pool.
    Confirmed(ConfirmedBlock),
    /// The tags differ: both sides drop the block.
    Mismatch {
        /// The block.
        block: BlockId,
    },
    /// Alice had no verdict after every retransmission. Not a decision:
    /// Bob may have kept the block. Resolve it before feeding any later
    /// block to the authentication pool (see the [module docs](self)); a
    /// late verdict still decides, and [`ConfirmAlice::resume`] sends the
    /// challenge again.
    Unresolved {
        /// The block.
        block: BlockId,
    },
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfirmMessage {
    /// Alice → Bob: the hash point and Alice's tag.
    Challenge {
        /// The block.
        block: BlockId,
        /// Tag length in bits.
        tag_bits: u8,
        /// The hash point `r` (never 0 or 1).
        hash_point: u128,
        /// Alice's tag.
        tag: u128,
    },
    /// Bob → Alice: Bob's tag.
    Verdict {
        /// The block.
        block: BlockId,
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

/// Whether `r` may be used as a hash point: 0 and 1 are degenerate (see
/// the [module docs](self#the-hash)).
#[must_use]
pub const fn is_usable_point(r: u128) -> bool {
    r > 1
}

impl ConfirmMessage {
    /// The wire bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let (kind, block, tag_bits, tag, point) = match *self {
            ConfirmMessage::Challenge {
                block,
                tag_bits,
                hash_point,
                tag,
            } => (TYPE_CHALLENGE, block, tag_bits, tag, Some(hash_point)),
            ConfirmMessage::Verdict {
                block,
                tag_bits,
                tag,
            } => (TYPE_VERDICT, block, tag_bits, tag, None),
        };
        let n = usize::from(tag_bits).div_ceil(8).min(16);
        let mut out = Envelope::new(Protocol::Confirm, VERSION, kind).start(9 + 16 + n);
        out.extend_from_slice(&block.get().to_be_bytes());
        out.push(tag_bits);
        if let Some(r) = point {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&(tag & tag_mask(tag_bits)).to_le_bytes()[..n]);
        out
    }

    /// Parses one message; never panics.
    ///
    /// # Errors
    /// A [`WireError`] on anything but exactly one well-formed message.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let kind = r.envelope(Protocol::Confirm, VERSION)?;
        if kind != TYPE_CHALLENGE && kind != TYPE_VERDICT {
            return Err(Reader::unknown_type(Protocol::Confirm, kind));
        }
        let block = r.block()?;
        let tag_bits = r.u8()?;
        if !(1..=128).contains(&tag_bits) {
            return Err(WireError::invalid("tag_bits", "must be between 1 and 128"));
        }
        let hash_point = if kind == TYPE_CHALLENGE {
            let point = u128::from_le_bytes(r.array::<16>()?);
            if !is_usable_point(point) {
                return Err(WireError::invalid(
                    "hash_point",
                    "degenerate point (0 or 1) refused",
                ));
            }
            Some(point)
        } else {
            None
        };
        let n = usize::from(tag_bits).div_ceil(8);
        let mut tag_le = [0u8; 16];
        tag_le[..n].copy_from_slice(r.bytes(n)?);
        r.finish()?;
        let tag = u128::from_le_bytes(tag_le);
        if tag & !tag_mask(tag_bits) != 0 {
            return Err(WireError::invalid("tag", "bits set above tag_bits"));
        }
        Ok(match hash_point {
            Some(hash_point) => ConfirmMessage::Challenge {
                block,
                tag_bits,
                hash_point,
                tag,
            },
            None => ConfirmMessage::Verdict {
                block,
                tag_bits,
                tag,
            },
        })
    }
}

/// The confirmation tag of `key` at the point `hash_point`, truncated to
/// `tag_bits` (module docs for the construction). A `tag_bits` outside
/// `1..=128` is clamped into it.
#[must_use]
pub fn confirmation_tag(key: BitSlice<'_>, hash_point: u128, tag_bits: u8) -> u128 {
    confirmation_tag_with(Backend::detect(), key, hash_point, tag_bits)
}

/// [`confirmation_tag`] with a given backend (the portable one is the
/// reference); a backend this CPU cannot run falls back to the portable one.
#[must_use]
pub fn confirmation_tag_with(
    backend: Backend,
    key: BitSlice<'_>,
    hash_point: u128,
    tag_bits: u8,
) -> u128 {
    let tag_bits = tag_bits.clamp(1, 128);
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
        acc = gf128::horner(backend, acc, hash_point, &blocks[..count]);
    }
    blocks.zeroize();
    acc = gf128::horner(backend, acc, hash_point, &[key.len() as u128]);
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

/// Alice's side: picks the hash point, sends the challenge, decides on Bob's tag.
///
/// Driven through [`Machine`] only: after every input drain
/// `poll_transmit` and `poll_event`, then wake at `poll_timeout`; `now`
/// must not go backwards. The key is hashed in [`new`](Self::new) and not
/// kept. Getters: [`block`](Self::block), [`is_finished`](Self::is_finished),
/// [`disclosed_bits`](Self::disclosed_bits). Application action:
/// [`resume`](Self::resume) after [`ConfirmEvent::Unresolved`].
pub struct ConfirmAlice {
    block: BlockId,
    config: ConfirmConfig,
    hash_point: u128,
    tag: Tag,
    send_now: bool,
    retransmissions: u32,
    deadline: Option<Instant>,
    decided: bool,
    events: VecDeque<ConfirmEvent>,
}

impl core::fmt::Debug for ConfirmAlice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ConfirmAlice")
            .field("block", &self.block)
            .field("decided", &self.decided)
            .finish_non_exhaustive()
    }
}

impl ConfirmAlice {
    /// Starts confirming `key` as `block`, with a fresh hash point from `rng`.
    ///
    /// # Errors
    /// The [`ConfigError`] of [`ConfirmConfig::validate`].
    pub fn new<R: CryptoRng + ?Sized>(
        block: BlockId,
        key: BitSlice<'_>,
        config: &ConfirmConfig,
        rng: &mut R,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut hash_point = 0u128;
        // 0 and 1 are degenerate; each draw hits them with probability 2^-127.
        while !is_usable_point(hash_point) {
            let mut k = [0u8; 16];
            rng.fill_bytes(&mut k);
            hash_point = u128::from_le_bytes(k);
            k.zeroize();
        }
        let tag = Tag(confirmation_tag(key, hash_point, config.tag_bits));
        let _ = now;
        Ok(Self {
            block,
            config: config.clone(),
            hash_point,
            tag,
            send_now: true,
            retransmissions: 0,
            deadline: None,
            decided: false,
            events: VecDeque::new(),
        })
    }

    /// The block being confirmed.
    #[must_use]
    pub fn block(&self) -> BlockId {
        self.block
    }

    /// Whether the outcome is decided (a `Confirmed` or `Mismatch` event).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.decided
    }

    /// Bits of the key the exchange disclosed: the tag length.
    #[must_use]
    pub fn disclosed_bits(&self) -> u32 {
        u32::from(self.config.tag_bits)
    }

    /// After [`ConfirmEvent::Unresolved`]: sends the same challenge again,
    /// with a fresh retransmission budget. Does nothing once decided or
    /// while still retransmitting.
    pub fn resume(&mut self, now: Instant) {
        if self.decided || self.deadline.is_some() || self.send_now {
            return;
        }
        let _ = now;
        self.retransmissions = 0;
        self.send_now = true;
    }
}

impl Machine for ConfirmAlice {
    type Event = ConfirmEvent;
    type Error = ConfirmError;

    fn handle_input(&mut self, now: Instant, datagram: &[u8]) -> Result<(), ConfirmError> {
        let _ = now;
        match ConfirmMessage::decode(datagram)? {
            ConfirmMessage::Challenge { .. } => Err(ConfirmError::UnexpectedMessage),
            ConfirmMessage::Verdict {
                block,
                tag_bits,
                tag,
            } => {
                if block != self.block {
                    return Err(ConfirmError::WrongBlock {
                        expected: self.block,
                        got: block,
                    });
                }
                if tag_bits != self.config.tag_bits {
                    return Err(ConfirmError::TagLengthMismatch {
                        local: self.config.tag_bits,
                        peer: tag_bits,
                    });
                }
                if !self.decided {
                    // Also after `Unresolved`: a late verdict decides.
                    self.decided = true;
                    self.deadline = None;
                    self.send_now = false;
                    self.events.push_back(if self.tag.ct_eq(tag) {
                        ConfirmEvent::Confirmed(ConfirmedBlock::new(block))
                    } else {
                        ConfirmEvent::Mismatch { block }
                    });
                }
                Ok(())
            }
        }
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !self.send_now || self.decided {
            return None;
        }
        self.send_now = false;
        self.deadline = Some(now + self.config.retransmit_after);
        Some(
            ConfirmMessage::Challenge {
                block: self.block,
                tag_bits: self.config.tag_bits,
                hash_point: self.hash_point,
                tag: self.tag.0,
            }
            .encode(),
        )
    }

    fn poll_event(&mut self) -> Option<ConfirmEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Retransmits, or reports [`ConfirmEvent::Unresolved`] after
    /// `max_retransmissions`.
    fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline || self.decided {
            return;
        }
        self.deadline = None;
        if self.retransmissions >= self.config.max_retransmissions {
            self.events
                .push_back(ConfirmEvent::Unresolved { block: self.block });
        } else {
            self.retransmissions += 1;
            self.send_now = true;
        }
    }
}

/// Bob's side: hashes his key at Alice's point, decides, and answers with
/// his tag.
///
/// Driven through [`Machine`] only, like [`ConfirmAlice`]; Bob has no
/// timers. He keeps a copy of the key (zeroized on drop) until the first
/// challenge arrives, then only his tag, to answer repeated challenges with
/// the same verdict. His decision is final the moment he makes it.
pub struct ConfirmBob {
    block: BlockId,
    config: ConfirmConfig,
    key: Option<BitVec>,
    answered: Option<(u128, Tag)>,
    outbox: VecDeque<Vec<u8>>,
    events: VecDeque<ConfirmEvent>,
}

impl core::fmt::Debug for ConfirmBob {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ConfirmBob")
            .field("block", &self.block)
            .field("decided", &self.answered.is_some())
            .finish_non_exhaustive()
    }
}

impl ConfirmBob {
    /// Waits for Alice's challenge for `block` of `key`.
    ///
    /// # Errors
    /// The [`ConfigError`] of [`ConfirmConfig::validate`].
    pub fn new(
        block: BlockId,
        key: BitSlice<'_>,
        config: &ConfirmConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            block,
            config: config.clone(),
            key: Some(key.to_bitvec()),
            answered: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    /// The block being confirmed.
    #[must_use]
    pub fn block(&self) -> BlockId {
        self.block
    }

    /// Whether the outcome is decided.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.answered.is_some()
    }

    /// Bits of the key the exchange disclosed: the tag length.
    #[must_use]
    pub fn disclosed_bits(&self) -> u32 {
        u32::from(self.config.tag_bits)
    }
}

impl Machine for ConfirmBob {
    type Event = ConfirmEvent;
    type Error = ConfirmError;

    fn handle_input(&mut self, now: Instant, datagram: &[u8]) -> Result<(), ConfirmError> {
        let _ = now;
        let ConfirmMessage::Challenge {
            block,
            tag_bits,
            hash_point,
            tag,
        } = ConfirmMessage::decode(datagram)?
        else {
            return Err(ConfirmError::UnexpectedMessage);
        };
        if block != self.block {
            return Err(ConfirmError::WrongBlock {
                expected: self.block,
                got: block,
            });
        }
        if tag_bits != self.config.tag_bits {
            return Err(ConfirmError::TagLengthMismatch {
                local: self.config.tag_bits,
                peer: tag_bits,
            });
        }
        let mine = match (&self.answered, self.key.take()) {
            (Some((answered_point, mine)), _) => {
                if *answered_point != hash_point {
                    return Err(ConfirmError::ConflictingChallenge);
                }
                mine.0
            }
            (None, Some(key)) => {
                let mine = Tag(confirmation_tag(key.as_bitslice(), hash_point, tag_bits));
                drop(key);
                self.events.push_back(if mine.ct_eq(tag) {
                    ConfirmEvent::Confirmed(ConfirmedBlock::new(block))
                } else {
                    ConfirmEvent::Mismatch { block }
                });
                let value = mine.0;
                self.answered = Some((hash_point, mine));
                value
            }
            // The key is held until the first challenge, which sets `answered`.
            (None, None) => return Err(ConfirmError::UnexpectedMessage),
        };
        self.outbox.push_back(
            ConfirmMessage::Verdict {
                block,
                tag_bits,
                tag: mine,
            }
            .encode(),
        );
        Ok(())
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let _ = now;
        self.outbox.pop_front()
    }

    fn poll_event(&mut self) -> Option<ConfirmEvent> {
        self.events.pop_front()
    }

    /// Bob has no timers: always `None`.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Nothing to do (no timers).
    fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
    }
}

#[cfg(test)]
mod tests;
