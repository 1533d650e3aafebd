//! Wegman-Carter authentication of the classical channel, with key
//! accounting and recycling.
//!
//! QKD is secure only if every post-processing message between Alice and
//! Bob is authenticated with information-theoretic security. This module
//! gives:
//!
//! - [`tag`]: an ε-almost-XOR-universal polynomial hash over GF(2^128)
//!   (POLYVAL, with the message length bound in), encrypted with a one-time
//!   pad: `tag = h_k(m) ⊕ r`. The hash key `k` is recycled (Portmann 2014),
//!   the pad `r` is used once. 128-bit tags (`ε ≤ L / 2^128`) or 64-bit tags
//!   (`ε ≤ L / 2^64`), `L` the number of 16-byte blocks of the longest
//!   message plus one; the derivation is in the [`tag`] docs.
//! - [`pool`]: [`AuthKeyPool`], fed from a pre-shared secret and then from a
//!   configurable share of each distilled block; exact accounting of bits
//!   per message and per block; a low-water event; a typed refusal when
//!   empty; pads indexed by position so that lost or reordered messages
//!   never desynchronise the two ends (replay window).
//! - [`context`]: crypto contexts (ID, tag mode, hash key) and the in-band
//!   context switch, authenticated by the old context.
//! - [`AuthenticatedChannel`]: the sans-IO wrapper every post-processing
//!   machine talks through: [`seal`](AuthenticatedChannel::seal) and
//!   [`open`](AuthenticatedChannel::open).
//! - [`transcript`]: the low-consumption alternative for whole rounds: one
//!   tag per direction over every message of the round, checked before the
//!   round's key is kept.
//!
//! ```text
//!  Alice                                                        Bob
//!  machine ─payload─▶ seal ──[hdr | payload | tag]──▶ open ─payload─▶ machine
//!                      │ pad p (Alice's stream)         │ pad p (same stream, same unit)
//!                  AuthKeyPool ◀── pre-shared secret ──▶ AuthKeyPool
//!                      ▲        then a share of each        ▲
//!                      └──────── final key block ───────────┘
//! ```
//!
//! # Pad indexing
//!
//! Each direction has its own pad stream cut from the pool in the same way
//! on both ends ([`pool`] docs). The sender takes units in order and writes
//! the position of the pad in the header; the receiver looks the pad up by
//! that position, within a replay window of `W` units below the highest
//! position it has accepted. A lost message leaves a gap that is simply
//! never filled (its pad is zeroized and counted as discarded when it leaves
//! the window); a reordered message within the window is accepted; a
//! replayed one is rejected because its units are marked used; a message
//! older than the window is rejected. Nothing is consumed before the tag
//! verifies, so forgeries cannot move the window or burn pads.
//!
//! # Wire format
//!
//! All integers big-endian. The tag covers every byte before it.
//!
//! ```text
//! offset  size  field
//!  0       1    version (1)
//!  1       1    type: 0x01 data, 0x02 context switch (body in `context` docs),
//!               0x03 transcript tag (body in `transcript` docs)
//!  2       1    tag mode: 1 = 128-bit, 2 = 64-bit
//!  3       1    sender: 0 = Alice, 1 = Bob
//!  4       4    context ID the message is sealed under
//!  8       4    ack context: newest context of the other direction the sender holds
//! 12       8    pad position (first 64-bit unit in the sender's stream)
//! 20       4    payload length n (at most the receiver's max_payload)
//! 24       n    payload
//! 24+n     t    tag, t = 16 or 8 bytes
//! ```
//!
//! Alice's first message, payload `"hello"` (context 1, 128-bit tags; units
//! 0 and 1 of her stream are the hash key, so the first pad is at position 2):
//!
//! ```text
//! 01 01 01 00  00 00 00 01  00 00 00 01  00 00 00 00 00 00 00 02  00 00 00 05
//! 68 65 6c 6c 6f  <16 tag bytes>
//! ```
//!
//! ```
//! use qkd_core::{Role, SecretKey};
//! use qkd_postproc::auth::{AuthenticatedChannel, ChannelConfig, SealedMessage};
//!
//! let secret = SecretKey::from_slice(&[1u8; 256]);
//! let mut alice = AuthenticatedChannel::new(Role::Alice, &secret, ChannelConfig::default()).unwrap();
//! let sealed = alice.seal(b"hello").unwrap();
//! assert_eq!(
//!     &sealed[..29],
//!     &[1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 5,
//!       b'h', b'e', b'l', b'l', b'o'][..]
//! );
//! assert_eq!(sealed.len(), 24 + 5 + 16);
//! let parsed = SealedMessage::decode(&sealed, 1024).unwrap();
//! assert_eq!(parsed.header.pad_position, 2);
//! ```
//!
//! # Key consumption
//!
//! Each sealed message costs one pad: 128 bits (or 64) of shared key, counted once
//! by its sender ([`PoolStats::sent_pad_bits`]) and once by its receiver
//! ([`PoolStats::received_pad_bits`]). Each context costs 128 bits of hash key
//! per direction. Re-sent copies of the same sealed bytes cost nothing;
//! re-sealing costs a new pad. A [round transcript](transcript) costs one
//! pad per direction for the whole round. BENCHMARKS.md gives the
//! consumption per post-processing round against the distilled key.

pub mod channel;
pub mod context;
pub mod pool;
pub mod tag;
pub mod transcript;

pub use channel::{
    AuthEvent, AuthenticatedChannel, ChannelConfig, ChannelStats, DecodeError, HEADER_LEN, Header,
    MAX_PAYLOAD, MessageType, OpenError, Opened, SealError, SealedMessage,
};
pub use context::{ContextSwitch, CryptoContext};
pub use pool::{
    AuthKeyPool, BlockAccount, Pad, PoolConfig, PoolError, PoolEvent, PoolStats, ReplenishShare,
};
pub use tag::{HashKey, HashStream, MAX_MESSAGE_BYTES, Tag, TagError, TagMode, epsilon};
pub use transcript::Transcript;

#[cfg(test)]
mod tests;
