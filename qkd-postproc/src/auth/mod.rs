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
//! - [`AuthenticatedChannel`]: the low-level sans-IO seal/open layer:
//!   [`seal`](AuthenticatedChannel::seal) and
//!   [`open`](AuthenticatedChannel::open), checkpoints and restore.
//! - [`Authenticated`]: any [`Machine`](qkd_core::machine::Machine) behind
//!   a channel, itself a `Machine`: what the pipeline composes.
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
//! Every sealed message starts with the [`qkd_core::wire`] envelope:
//! protocol [`Protocol::Auth`](qkd_core::wire::Protocol::Auth) (`0x10`),
//! version [`VERSION`](channel::VERSION) (1), type. All integers
//! big-endian. The tag covers every byte before it.
//!
//! ```text
//! offset  size  field
//!  0       1    protocol 0x10
//!  1       1    version 1
//!  2       1    type: 0x01 data, 0x02 context switch (body in `context` docs),
//!               0x03 transcript tag (body in `transcript` docs),
//!               0x04 feed notice (deposit count 8, feed digest 16, receive floor 8)
//!  3       1    tag mode: 1 = 128-bit, 2 = 64-bit
//!  4       1    sender: 0 = Alice, 1 = Bob
//!  5       4    context ID the message is sealed under
//!  9       4    ack context: newest context of the other direction the sender holds
//! 13       8    pad position (first 64-bit unit in the sender's stream)
//! 21       4    payload length n (at most the receiver's max_payload)
//! 25       n    payload
//! 25+n     t    tag, t = 16 or 8 bytes
//! ```
//!
//! Alice's first message, payload `"hello"` (context 1, 128-bit tags; units
//! 0 and 1 of her stream are the hash key, so the first pad is at position 2):
//!
//! ```text
//! 10 01 01 01 00  00 00 00 01  00 00 00 01  00 00 00 00 00 00 00 02  00 00 00 05
//! 68 65 6c 6c 6f  <16 tag bytes>
//! ```
//!
//! ```
//! use qkd_core::{Role, SecretKey};
//! use qkd_postproc::auth::{AuthenticatedChannel, ChannelConfig, PresharedSecret, SealedMessage, SecretId};
//!
//! let secret = PresharedSecret::new(SecretId::new(1), SecretKey::from_slice(&[1u8; 256]));
//! let (mut alice, first) = AuthenticatedChannel::new(Role::Alice, secret, ChannelConfig::default()).unwrap();
//! // (persist `first.state()` here)
//! alice.commit(first).unwrap();
//! let sealed = alice.seal(b"hello").unwrap();
//! assert_eq!(
//!     &sealed[..30],
//!     &[0x10, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 5,
//!       b'h', b'e', b'l', b'l', b'o'][..]
//! );
//! assert_eq!(sealed.len(), 25 + 5 + 16);
//! let parsed = SealedMessage::decode(&sealed, 1024).unwrap();
//! assert_eq!(parsed.header.pad_position, 2);
//! ```
//!
//! # Restarts
//!
//! A pad used twice gives away the hash key (two tags at one position are
//! two equations in it), and a receive position accepted twice lets a
//! message be replayed. Both must hold across restarts, which the pool
//! cannot know about by itself; these are the rules, and what the types
//! enforce:
//!
//! 1. **A pre-shared secret starts one pool, once.** [`PresharedSecret`]
//!    (an identifier and the key) is not `Clone`; [`AuthenticatedChannel::new`]
//!    consumes it. The state saved from then on records its [`SecretId`].
//!    The host deletes the secret (or marks its identifier spent in its own
//!    records) as soon as the first checkpoint is written, and from then on
//!    starts from the saved state, never from the secret. If the process
//!    dies before the first checkpoint is written, nothing was sealed or
//!    accepted with the secret (the channel cannot, see 2.), so starting
//!    from it again is safe.
//! 2. **Write-ahead horizons.** The pool never seals at, nor accepts, a
//!    position at or beyond its *durable horizons* (one per direction). A
//!    [`Checkpoint`] moves them [`checkpoint_units`](PoolConfig::checkpoint_units)
//!    beyond the send cursor and the receive window; it takes effect only
//!    when the host has **written it durably** (replacing the previous state
//!    atomically: write, flush, rename) and handed it to
//!    [`commit`](AuthenticatedChannel::commit). A fresh channel returns its
//!    first checkpoint from `new`; a fresh or restored channel can do
//!    nothing before one is committed. [`AuthEvent::CheckpointDue`] asks for
//!    the next one when half the reserve is used in a direction, and after
//!    every deposit; meanwhile the channel refuses with
//!    [`PoolError::CheckpointRequired`] / [`OpenError::CheckpointRequired`]
//!    without changing anything, so a late checkpoint stalls, never reuses.
//! 3. **Restore continues strictly after.** [`AuthenticatedChannel::restore`]
//!    puts the send cursor at the saved send horizon and refuses every
//!    position of the peer's stream below the saved receive horizon as too
//!    old: every position the saved process may have used is behind both.
//!    Units reserved and not used are lost (at most `checkpoint_units` per
//!    direction per restart). A restored end sends a feed notice
//!    ([`AuthenticatedChannel::is_notice_pending`]; [`Authenticated`] does it
//!    by itself) so that the peer skips its send cursor past the restored
//!    receive floor.
//! 4. **Only the newest state.** Restoring an older state than the newest
//!    one written would reuse positions: keep exactly one, replaced
//!    atomically; [`ChannelState::generation`] numbers them.
//! 5. **The saved state is key material**: the unused pads of both streams
//!    and the hash keys in force. It is zeroized in memory and hidden from
//!    `Debug`; its serialized copy is the host's to protect and wipe.
//!
//! What the layer above persists, and when: the newest [`ChannelState`],
//! written before [`commit`](AuthenticatedChannel::commit) (so before any
//! message that uses the new reserve is sealed or accepted), at least at
//! every [`AuthEvent::CheckpointDue`] and right after every deposit; and,
//! outside this crate, the spent pre-shared secret identifiers.
//!
//! # Feeding the pool: agreed blocks only
//!
//! Both ends must deposit the same blocks in the same order, or every later
//! pad differs in both directions. So the pool takes a block only with a
//! [`ConfirmedBlock`](crate::confirm::ConfirmedBlock), which only the
//! confirmation machines make, when the outcome is agreed (see
//! [`crate::confirm`]). As a second line, each pool keeps a digest of what
//! it was fed (block numbers and lengths, public) and the ends exchange it
//! in authenticated feed notices: a difference is
//! [`AuthEvent::FeedDiverged`], after which the channel refuses everything
//! ([`SealError::FeedDiverged`]) and the layer above must start over from a
//! fresh pre-shared secret.

//! # Key consumption
//!
//! Each sealed message costs one pad: 128 bits (or 64) of shared key, counted once
//! by its sender ([`PoolStats::sent_pad_bits`]) and once by its receiver
//! ([`PoolStats::received_pad_bits`]). Each context costs 128 bits of hash key
//! per direction. Re-sent copies of the same sealed bytes cost nothing;
//! re-sealing costs a new pad. A [round transcript](transcript) costs one
//! pad per direction for the whole round. BENCHMARKS.md gives the
//! consumption per post-processing round against the distilled key.

pub mod authenticated;
pub mod channel;
pub mod context;
pub mod pool;
pub mod tag;
pub mod transcript;

pub use authenticated::{
    Authenticated, AuthenticatedConfig, AuthenticatedError, AuthenticatedEvent,
};
pub use channel::{
    AuthEvent, AuthenticatedChannel, CHANNEL_STATE_VERSION, ChannelConfig, ChannelState,
    ChannelStats, Checkpoint, FEED_NOTICE_LEN, HEADER_LEN, Header, MAX_PAYLOAD, MessageType,
    OpenError, Opened, SealError, SealedMessage,
};
pub use context::{ContextSwitch, CryptoContext};
pub use pool::{
    AuthKeyPool, BlockAccount, FeedComparison, POOL_STATE_VERSION, Pad, PoolConfig, PoolError,
    PoolEvent, PoolState, PoolStats, PresharedSecret, ReplenishShare, SecretId,
};
pub use tag::{HashKey, HashStream, MAX_MESSAGE_BYTES, Tag, TagError, TagMode, epsilon};
pub use transcript::Transcript;

#[cfg(test)]
mod tests;
