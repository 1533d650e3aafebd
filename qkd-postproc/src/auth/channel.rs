//! The sealed-message format and [`AuthenticatedChannel`].

use std::collections::VecDeque;

use bytes::BufMut;
use qkd_core::wire::{Envelope, Protocol, Reader, WireError};
use qkd_core::{BlockId, Role, SecretKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::context::{ContextState, ContextSwitch, CryptoContext, SWITCH_BODY_LEN};
use super::pool::{
    AuthKeyPool, BlockAccount, FEED_DIGEST_BYTES, FeedComparison, HASH_KEY_UNITS, PoolConfig,
    PoolError, PoolEvent, PoolState, PresharedSecret,
};
use super::tag::{HASH_KEY_BYTES, MAX_MESSAGE_BYTES, TagMode, epsilon};
use super::transcript::Transcript;
use crate::confirm::ConfirmedBlock;

/// Version of the sealed-message format in the envelope.
pub const VERSION: u8 = 1;
/// Length of the header in bytes (envelope included).
pub const HEADER_LEN: usize = 25;
/// Default and largest accepted payload length (16 MiB).
pub const MAX_PAYLOAD: usize = 16 << 20;
/// Length of the body of a feed notice: deposit count (8), feed digest
/// (16) and the sender's receive floor (8).
pub const FEED_NOTICE_LEN: usize = 8 + FEED_DIGEST_BYTES + 8;

/// What a sealed message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageType {
    /// Application payload (type byte `0x01`).
    Data,
    /// A [context switch](super::context) (type byte `0x02`).
    ContextSwitch,
    /// The tag of a round [transcript](super::transcript) (type byte `0x03`).
    TranscriptTag,
    /// The sender's pool status (type byte `0x04`, body: deposit count (8),
    /// feed digest (16), receive floor (8)): the receiver compares the
    /// digest (see [`AuthKeyPool::compare_feed`]) and moves its send cursor
    /// up to the floor ([`AuthKeyPool::skip_send_to`]), so that after a
    /// restart its messages are not refused as too old.
    FeedNotice,
}

impl MessageType {
    /// The type byte.
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            MessageType::Data => 0x01,
            MessageType::ContextSwitch => 0x02,
            MessageType::TranscriptTag => 0x03,
            MessageType::FeedNotice => 0x04,
        }
    }

    const fn from_code(code: u8) -> Option<Self> {
        match code {
            0x01 => Some(MessageType::Data),
            0x02 => Some(MessageType::ContextSwitch),
            0x03 => Some(MessageType::TranscriptTag),
            0x04 => Some(MessageType::FeedNotice),
            _ => None,
        }
    }
}

pub(crate) fn role_code(role: Role) -> u8 {
    match role {
        Role::Alice => 0,
        Role::Bob => 1,
    }
}

/// The parsed header of a sealed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the message carries.
    pub message_type: MessageType,
    /// Tag length.
    pub mode: TagMode,
    /// The sending end.
    pub sender: Role,
    /// The sender's crypto context the message is sealed under.
    pub context: u32,
    /// The highest context of the receiver's direction the sender has accepted.
    pub ack_context: u32,
    /// Position of the pad's first unit in the sender's stream.
    pub pad_position: u64,
}

impl Header {
    pub(crate) fn encode(&self, payload_len: u32) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let mut w = &mut out[..];
        Envelope::new(Protocol::Auth, VERSION, self.message_type.code()).write(&mut w);
        w.put_u8(self.mode.code());
        w.put_u8(role_code(self.sender));
        w.put_u32(self.context);
        w.put_u32(self.ack_context);
        w.put_u64(self.pad_position);
        w.put_u32(payload_len);
        out
    }
}

/// A decoded, not yet verified, sealed message borrowing the input bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedMessage<'a> {
    /// The header fields.
    pub header: Header,
    /// Header bytes, as received (authenticated with the payload).
    pub header_bytes: &'a [u8],
    /// The payload.
    pub payload: &'a [u8],
    /// The tag (8 or 16 bytes).
    pub tag: &'a [u8],
}

impl<'a> SealedMessage<'a> {
    /// Parses a sealed message (format in the [module docs](super#wire-format)).
    /// Checks the payload length against `max_payload` and the bytes left
    /// before looking further; never allocates and never panics.
    ///
    /// # Errors
    /// A [`WireError`] naming the first structural fault.
    pub fn decode(bytes: &'a [u8], max_payload: usize) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let type_code = r.envelope(Protocol::Auth, VERSION)?;
        let message_type = MessageType::from_code(type_code)
            .ok_or(Reader::unknown_type(Protocol::Auth, type_code))?;
        let mode = TagMode::from_code(r.u8()?).ok_or(WireError::invalid(
            "tag_mode",
            "must be 1 (128-bit) or 2 (64-bit)",
        ))?;
        let sender = match r.u8()? {
            0 => Role::Alice,
            1 => Role::Bob,
            _ => return Err(WireError::invalid("sender", "must be 0 (Alice) or 1 (Bob)")),
        };
        let context = r.u32()?;
        let ack_context = r.u32()?;
        let pad_position = r.u64()?;
        let len = r.count_u32("payload", max_payload, 1)?;
        let header_bytes = &bytes[..r.position()];
        let payload = r.bytes(len)?;
        let tag = r.bytes(mode.tag_bytes())?;
        r.finish()?;
        Ok(SealedMessage {
            header: Header {
                message_type,
                mode,
                sender,
                context,
                ack_context,
                pad_position,
            },
            header_bytes,
            payload,
            tag,
        })
    }
}

/// Why a message was not sealed. Nothing was taken from the pool.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The key pool cannot pay for the tag.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The payload is longer than the channel's limit.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A context switch is already waiting for the peer's acknowledgement.
    #[error("a context switch is still unconfirmed")]
    SwitchPending,
    /// The context ID space is used up.
    #[error("no context ID left")]
    ContextIdsExhausted,
    /// The transcript was started for another context or the other direction.
    #[error("transcript started under another context")]
    TranscriptContext,
    /// The two pools were fed differently ([`AuthEvent::FeedDiverged`]):
    /// the channel is dead; start a new one from a fresh pre-shared secret.
    #[error("authentication pools diverged")]
    FeedDiverged,
}

/// Why an incoming message was rejected. No key material and no detail about
/// the tag is given; a rejected message changes no state but counters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Not a well-formed sealed message.
    #[error("malformed sealed message: {0}")]
    Malformed(#[from] WireError),
    /// The message claims to come from this end (a reflection).
    #[error("message sent by this end's role")]
    WrongSender,
    /// The message is sealed under a context this end does not hold (not
    /// yet switched to, or long gone). Resend the context switch.
    #[error("unknown crypto context {0}")]
    UnknownContext(u32),
    /// The tag mode or pad position does not belong to the named context,
    /// or a context-switch body is invalid.
    #[error("message inconsistent with its crypto context")]
    ContextMismatch,
    /// The pad position is below the replay window.
    #[error("message too old (below the replay window)")]
    TooOld,
    /// The pad was already used: a replay or duplicate.
    #[error("replayed message")]
    Replay,
    /// The pad is beyond the key deposited on this end (deposit the block
    /// first, then retry).
    #[error("pad not yet available on this end")]
    PadUnavailable,
    /// The tag did not verify.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// The message is a transcript tag: verify it with
    /// [`AuthenticatedChannel::open_transcript`]. Nothing was consumed.
    #[error("transcript tag given to open")]
    TranscriptTag,
    /// The pad lies beyond this end's durable receive horizon: take, persist
    /// and commit a [checkpoint](AuthenticatedChannel::checkpoint), then
    /// the peer's retransmission is accepted. Nothing was consumed.
    #[error("checkpoint required before accepting this message")]
    CheckpointRequired,
    /// The two pools were fed differently: the channel is dead.
    #[error("authentication pools diverged")]
    FeedDiverged,
}

impl From<PoolError> for OpenError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::TooOld => OpenError::TooOld,
            PoolError::Replay => OpenError::Replay,
            PoolError::CheckpointRequired => OpenError::CheckpointRequired,
            _ => OpenError::PadUnavailable,
        }
    }
}

/// Configuration of an [`AuthenticatedChannel`]; both ends must use the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelConfig {
    /// The key pool's configuration.
    pub pool: PoolConfig,
    /// Tag mode of the first context of both directions.
    pub mode: TagMode,
    /// Longest payload sealed or accepted (at most [`MAX_PAYLOAD`]).
    pub max_payload: usize,
}

impl Default for ChannelConfig {
    /// The default pool, 128-bit tags, payloads up to 1 MiB.
    fn default() -> Self {
        ChannelConfig {
            pool: PoolConfig::default(),
            mode: TagMode::Bits128,
            max_payload: 1 << 20,
        }
    }
}

impl ChannelConfig {
    /// Checks every field, naming the first bad one (`pool.*` for the pool's).
    ///
    /// # Errors
    /// A [`ConfigError`](qkd_core::machine::ConfigError).
    pub fn validate(&self) -> Result<(), qkd_core::machine::ConfigError> {
        self.pool.validate().map_err(|e| e.within("pool"))?;
        if self.max_payload > MAX_PAYLOAD {
            return Err(qkd_core::machine::ConfigError::new(
                "max_payload",
                format!("must be at most {MAX_PAYLOAD}"),
            ));
        }
        Ok(())
    }
}

/// Outcomes reported by [`AuthenticatedChannel::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthEvent {
    /// This end's pad stream fell below the low-water mark.
    LowWater {
        /// Bits left to seal with.
        remaining_bits: u64,
    },
    /// The peer moved its direction to a new context.
    PeerSwitched {
        /// The new context ID.
        context: u32,
        /// Its tag mode.
        mode: TagMode,
    },
    /// The peer acknowledged this end's last context switch.
    SwitchConfirmed {
        /// The context ID now in use.
        context: u32,
    },
    /// Take a [checkpoint](AuthenticatedChannel::checkpoint) now: the
    /// durable horizon is near, or key was deposited since the last one.
    CheckpointDue,
    /// The peer's authentic feed notice shows that the two pools were fed
    /// different blocks from deposit `count` on: the two pad streams differ
    /// and nothing in the channel can bring them back. The channel refuses
    /// everything from now on; the layer above must start a new one from a
    /// fresh pre-shared secret.
    FeedDiverged {
        /// The first deposit count at which the digests differ (or the
        /// peer's count, if this end compared later).
        count: u64,
    },
}

/// Counters of one channel end.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelStats {
    /// Messages sealed (context switches included).
    pub sealed: u64,
    /// Messages accepted (context switches included).
    pub opened: u64,
    /// Context switches sent.
    pub switches_sent: u64,
    /// Context switches accepted.
    pub switches_received: u64,
    /// Messages whose tag did not verify: forgery attempts or corruption.
    pub forgeries_rejected: u64,
    /// Replays and duplicates rejected.
    pub replays_rejected: u64,
    /// Messages below the replay window rejected.
    pub too_old_rejected: u64,
    /// Malformed, reflected or context-inconsistent messages rejected.
    pub malformed_rejected: u64,
    /// Messages of an unknown context rejected.
    pub unknown_context_rejected: u64,
    /// Messages whose pad was not yet deposited here.
    pub unavailable_rejected: u64,
    /// Messages beyond the durable horizon (a checkpoint was due).
    #[serde(default)]
    pub checkpoint_rejected: u64,
    /// Messages refused because the pools diverged.
    #[serde(default)]
    pub diverged_rejected: u64,
    /// Sum over every tag verification of the per-attempt forgery bound ε:
    /// an upper bound on the probability that any forgery was accepted so
    /// far (Portmann: the recycled hash key costs ε per round).
    pub forgery_bound: f64,
}

/// An accepted message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Opened<'a> {
    /// Authentic application payload, borrowed from the input.
    Data(&'a [u8]),
    /// The peer switched its direction's context (also reported as
    /// [`AuthEvent::PeerSwitched`]).
    ContextSwitch(ContextSwitch),
    /// The peer's feed notice, compared with this end's pool: `InStep`,
    /// `PeerAhead` (compared again after this end's next deposits),
    /// `TooOld`, or `Diverged` (also reported as [`AuthEvent::FeedDiverged`]).
    FeedNotice(FeedComparison),
}

/// One end of a Wegman-Carter authenticated channel (sans-IO).
///
/// Every post-processing message goes through [`seal`](Self::seal) before it
/// is sent and through [`open`](Self::open) when it arrives; the channel owns
/// the [`AuthKeyPool`] and the crypto contexts of both directions. It does
/// no I/O and keeps no timers: the caller sends the bytes `seal` returns and
/// feeds what arrives to `open`.
///
/// - Input: [`open`](Self::open) (received bytes).
/// - Application actions: [`seal`](Self::seal), [`switch_context`](Self::switch_context),
///   [`replenish_from_block`](Self::replenish_from_block),
///   [`checkpoint`](Self::checkpoint) / [`commit`](Self::commit),
///   [`seal_feed_notice`](Self::seal_feed_notice).
/// - Construction: [`new`](Self::new) (consumes a [`PresharedSecret`]) or
///   [`restore`](Self::restore) (a saved [`ChannelState`]); see the
///   [restart rules](super#restarts).
///
/// To drive it as a [`Machine`](qkd_core::machine::Machine) around another
/// machine, wrap it in [`Authenticated`](super::Authenticated).
/// - Output: [`poll_event`](Self::poll_event) until `None` after each call;
///   [`unconfirmed_switch`](Self::unconfirmed_switch) to re-send a switch.
/// - Getters: [`stats`](Self::stats), [`pool`](Self::pool),
///   [`send_context`](Self::send_context), [`receive_context`](Self::receive_context).
///
/// A rejected message ([`OpenError`]) changes nothing but a counter: the
/// replay window moves, pads are consumed and contexts change only for
/// authentic messages.
///
/// ```
/// use qkd_core::{Role, SecretKey};
/// use qkd_postproc::auth::{
///     AuthenticatedChannel, ChannelConfig, OpenError, Opened, PresharedSecret, SecretId,
/// };
///
/// let key = SecretKey::from_slice(&[0x5c; 4096]); // pre-shared
/// let start = |role, key| {
///     let secret = PresharedSecret::new(SecretId::new(1), key);
///     let (mut channel, first) = AuthenticatedChannel::new(role, secret, ChannelConfig::default())?;
///     // Persist `first.state()` durably here, then:
///     channel.commit(first)?;
///     Ok::<_, qkd_postproc::auth::PoolError>(channel)
/// };
/// let mut alice = start(Role::Alice, key.clone()).unwrap();
/// let mut bob = start(Role::Bob, key).unwrap();
///
/// let sealed = alice.seal(b"parities 0110").unwrap();
/// assert_eq!(bob.open(&sealed), Ok(Opened::Data(&b"parities 0110"[..])));
/// assert_eq!(bob.open(&sealed), Err(OpenError::Replay));
///
/// let mut forged = sealed.clone();
/// *forged.last_mut().unwrap() ^= 1;
/// assert_eq!(bob.open(&forged), Err(OpenError::Replay)); // position already used
/// let mut forged = alice.seal(b"parities 1111").unwrap();
/// forged[30] ^= 0x80; // a payload bit
/// assert_eq!(bob.open(&forged), Err(OpenError::AuthenticationFailed));
/// assert_eq!(bob.stats().forgeries_rejected, 1);
/// ```
pub struct AuthenticatedChannel {
    role: Role,
    config: ChannelConfig,
    pool: AuthKeyPool,
    max_payload: usize,
    send: CryptoContext,
    recv: CryptoContext,
    recv_previous: Option<CryptoContext>,
    /// The last switch sent, until the peer acknowledges it.
    unconfirmed: Option<(u32, Vec<u8>)>,
    /// A peer feed notice ahead of this end's deposits, compared again at
    /// each deposit.
    peer_feed: Option<(u64, [u8; FEED_DIGEST_BYTES])>,
    /// A feed notice should go out (after a deposit or a restore).
    notice_pending: bool,
    diverged: bool,
    stats: ChannelStats,
    events: VecDeque<AuthEvent>,
}

fn hash_key_bytes(pad: &super::pool::Pad) -> Zeroizing<[u8; HASH_KEY_BYTES]> {
    let mut bytes = Zeroizing::new([0u8; HASH_KEY_BYTES]);
    bytes.copy_from_slice(pad.as_bytes());
    bytes
}

/// Version of the [`ChannelState`] format.
pub const CHANNEL_STATE_VERSION: u32 = 1;

/// The saved state of an [`AuthenticatedChannel`]: its [pool's](PoolState)
/// and the crypto contexts in force (hash keys included), the unconfirmed
/// context switch, the counters. Key material: zeroized on drop, hidden
/// from `Debug`; store it like the pre-shared secret (see the
/// [restart rules](super#restarts)). Versioned ([`CHANNEL_STATE_VERSION`]).
#[derive(PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelState {
    version: u32,
    role: Role,
    config: ChannelConfig,
    pool: PoolState,
    send: ContextState,
    recv: ContextState,
    recv_previous: Option<ContextState>,
    unconfirmed: Option<(u32, Vec<u8>)>,
    diverged: bool,
    stats: ChannelStats,
}

impl ChannelState {
    /// The pool's saved state.
    #[must_use]
    pub fn pool(&self) -> &PoolState {
        &self.pool
    }

    /// The checkpoint's number (see [`PoolState::generation`]).
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.pool.generation()
    }
}

impl core::fmt::Debug for ChannelState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ChannelState")
            .field("version", &self.version)
            .field("role", &self.role)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// A checkpoint of a channel, to write durably and then hand back to
/// [`AuthenticatedChannel::commit`]. Until it is committed, the channel
/// stays within the horizons of the previous one.
#[must_use = "a checkpoint does nothing until it is persisted and committed"]
#[derive(Debug)]
pub struct Checkpoint {
    state: ChannelState,
}

impl Checkpoint {
    /// The state to persist (serde). Write it, replacing the previous one
    /// atomically (write, flush, rename), before [committing](AuthenticatedChannel::commit).
    #[must_use]
    pub fn state(&self) -> &ChannelState {
        &self.state
    }

    /// The state, when the host wants to own it (it was persisted already).
    #[must_use]
    pub fn into_state(self) -> ChannelState {
        self.state
    }
}

impl AuthenticatedChannel {
    /// A fresh end with `role`, keyed from the pre-shared `secret`
    /// (identical on both ends; see [`AuthKeyPool::new`]), which it
    /// consumes. Returns the channel and its first [`Checkpoint`]: persist
    /// it and [commit](Self::commit) it before sealing or opening anything
    /// (nothing can be sealed or accepted before), and from then on never
    /// use the same secret again. See the [restart rules](super#restarts).
    ///
    /// # Errors
    /// The pool's refusals; [`PoolError::Config`] for a configuration
    /// [`ChannelConfig::validate`] refuses.
    pub fn new(
        role: Role,
        secret: PresharedSecret,
        config: ChannelConfig,
    ) -> Result<(Self, Checkpoint), PoolError> {
        if config.validate().is_err() {
            return Err(PoolError::Config(
                "invalid channel configuration (see ChannelConfig::validate)",
            ));
        }
        let mut pool = AuthKeyPool::new(role, secret, config.pool.clone())?;
        let (own, peer) = pool
            .take_initial_hash_keys()
            .ok_or(PoolError::Config("fresh pool without hash keys"))?;
        let mut channel = AuthenticatedChannel {
            role,
            max_payload: config.max_payload,
            send: CryptoContext::new(1, config.mode, &hash_key_bytes(&own), HASH_KEY_UNITS),
            recv: CryptoContext::new(1, config.mode, &hash_key_bytes(&peer), HASH_KEY_UNITS),
            config,
            pool,
            recv_previous: None,
            unconfirmed: None,
            peer_feed: None,
            notice_pending: false,
            diverged: false,
            stats: ChannelStats::default(),
            events: VecDeque::new(),
        };
        // The first checkpoint is handed out here: the event would repeat it.
        while channel.pool.poll_event().is_some() {}
        let first = channel.checkpoint();
        Ok((channel, first))
    }

    /// A checkpoint of this channel: the state with horizons moved
    /// [`checkpoint_units`](PoolConfig::checkpoint_units) ahead. Changes
    /// nothing until [committed](Self::commit). Take one on
    /// [`AuthEvent::CheckpointDue`] (and whenever the host likes, e.g. before
    /// hibernating).
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            state: ChannelState {
                version: CHANNEL_STATE_VERSION,
                role: self.role,
                config: self.config.clone(),
                pool: self.pool.checkpoint(),
                send: self.send.save(),
                recv: self.recv.save(),
                recv_previous: self.recv_previous.as_ref().map(CryptoContext::save),
                unconfirmed: self.unconfirmed.clone(),
                diverged: self.diverged,
                stats: self.stats.clone(),
            },
        }
    }

    /// Puts a persisted checkpoint of this channel in force: the pool may
    /// now use positions up to its horizons.
    ///
    /// # Errors
    /// [`PoolError::State`] for a checkpoint of another channel, or one
    /// that is not the next after the last committed.
    pub fn commit(&mut self, checkpoint: Checkpoint) -> Result<(), PoolError> {
        if checkpoint.state.role != self.role {
            return Err(PoolError::State("checkpoint of the other end"));
        }
        self.pool.commit(&checkpoint.state.pool)
    }

    /// The channel saved in `state`, continuing strictly after every pad
    /// position and receive position the saved channel may have used (see
    /// [`AuthKeyPool::restore`]). The restored channel raises
    /// [`AuthEvent::CheckpointDue`]: persist and commit a checkpoint before
    /// it can seal or accept anything.
    ///
    /// # Errors
    /// [`PoolError::State`] for another version, role or configuration, or
    /// a damaged state.
    pub fn restore(
        role: Role,
        config: &ChannelConfig,
        state: ChannelState,
    ) -> Result<Self, PoolError> {
        if state.version != CHANNEL_STATE_VERSION {
            return Err(PoolError::State("unsupported state version"));
        }
        if state.role != role {
            return Err(PoolError::State("state saved by the other end"));
        }
        if &state.config != config {
            return Err(PoolError::State("state saved with another configuration"));
        }
        let damaged = PoolError::State("damaged crypto context");
        let send = CryptoContext::restore(&state.send).ok_or(damaged.clone())?;
        let recv = CryptoContext::restore(&state.recv).ok_or(damaged.clone())?;
        let recv_previous = match &state.recv_previous {
            Some(c) => Some(CryptoContext::restore(c).ok_or(damaged)?),
            None => None,
        };
        let ChannelState {
            pool,
            unconfirmed,
            diverged,
            stats,
            ..
        } = state;
        let pool = AuthKeyPool::restore(role, &config.pool, pool)?;
        let mut channel = AuthenticatedChannel {
            role,
            config: config.clone(),
            pool,
            max_payload: config.max_payload,
            send,
            recv,
            recv_previous,
            unconfirmed,
            peer_feed: None,
            notice_pending: true,
            diverged,
            stats,
            events: VecDeque::new(),
        };
        channel.drain_pool_events();
        Ok(channel)
    }

    /// The configuration (both ends use the same).
    #[must_use]
    pub fn config(&self) -> &ChannelConfig {
        &self.config
    }

    /// This end's role.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// The context this end seals with.
    #[must_use]
    pub fn send_context(&self) -> &CryptoContext {
        &self.send
    }

    /// The newest context of the peer's direction.
    #[must_use]
    pub fn receive_context(&self) -> &CryptoContext {
        &self.recv
    }

    /// The key pool (read-only: pads are taken through the channel).
    #[must_use]
    pub fn pool(&self) -> &AuthKeyPool {
        &self.pool
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> &ChannelStats {
        &self.stats
    }

    /// Longest payload sealed or accepted.
    #[must_use]
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Bytes a sealed message of `payload_len` bytes takes on the wire now.
    #[must_use]
    pub fn sealed_len(&self, payload_len: usize) -> usize {
        HEADER_LEN + payload_len + self.send.mode().tag_bytes()
    }

    fn seal_typed(
        &mut self,
        message_type: MessageType,
        payload: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        if self.diverged {
            return Err(SealError::FeedDiverged);
        }
        if payload.len() > self.max_payload {
            return Err(SealError::PayloadTooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        let mode = self.send.mode();
        let pad = self.pool.take_send_pad(mode)?;
        let header = Header {
            message_type,
            mode,
            sender: self.role,
            context: self.send.id(),
            ack_context: self.recv.id(),
            pad_position: pad.position(),
        };
        // `max_payload <= MAX_PAYLOAD < 2^32`.
        let header_bytes = header.encode(payload.len() as u32);
        let tag = self
            .send
            .key()
            .tag_parts(&[&header_bytes, payload], pad.as_bytes())
            .map_err(|_| SealError::PayloadTooLarge {
                len: payload.len(),
                max: self.max_payload,
            })?;
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + mode.tag_bytes());
        out.extend_from_slice(&header_bytes);
        out.extend_from_slice(payload);
        out.extend_from_slice(tag.as_bytes());
        self.stats.sealed += 1;
        self.drain_pool_events();
        Ok(out)
    }

    /// Seals `payload`: header, payload and tag, ready to send. Uses one pad
    /// of the current context's length.
    ///
    /// # Errors
    /// [`SealError::PayloadTooLarge`], or [`SealError::Pool`] with
    /// [`PoolError::Exhausted`] when the pool is empty: nothing is consumed
    /// and nothing must be sent.
    pub fn seal(&mut self, payload: &[u8]) -> Result<Vec<u8>, SealError> {
        self.seal_typed(MessageType::Data, payload)
    }

    /// Moves this end's direction to a new context with tag mode `mode` and
    /// a fresh hash key from the pool, and returns the switch message (sealed
    /// under the old context) to send. See [the protocol](super::context).
    ///
    /// # Errors
    /// [`SealError::SwitchPending`] while the previous switch is
    /// unconfirmed; [`SealError::Pool`] if the pool cannot pay for the
    /// message pad and the two key units. Nothing changes on error.
    pub fn switch_context(&mut self, mode: TagMode) -> Result<Vec<u8>, SealError> {
        if self.unconfirmed.is_some() {
            return Err(SealError::SwitchPending);
        }
        let new_id = self
            .send
            .id()
            .checked_add(1)
            .ok_or(SealError::ContextIdsExhausted)?;
        let units = self.send.mode().pad_units() + HASH_KEY_UNITS;
        if !self.pool.can_send(units) {
            return Err(PoolError::Exhausted {
                needed_bits: units * 64,
                available_bits: self.pool.send_remaining_bits(),
            }
            .into());
        }
        let p = self.pool.send_position();
        let key_position = p + self.send.mode().pad_units();
        let body = ContextSwitch {
            new_context: new_id,
            mode,
            key_position,
        }
        .encode();
        let sealed = self.seal_typed(MessageType::ContextSwitch, &body)?;
        let key = self.pool.take_send_hash_key()?;
        debug_assert_eq!(key.position(), key_position);
        let mut old = core::mem::replace(
            &mut self.send,
            CryptoContext::new(
                new_id,
                mode,
                &hash_key_bytes(&key),
                key_position + HASH_KEY_UNITS,
            ),
        );
        old.close_at(p + 1);
        drop(old);
        self.stats.switches_sent += 1;
        self.unconfirmed = Some((new_id, sealed.clone()));
        Ok(sealed)
    }

    /// The last context-switch message sent, until the peer acknowledges it
    /// (re-send these exact bytes when messages may have been lost: a copy
    /// arriving after the original is rejected as a replay and costs nothing).
    #[must_use]
    pub fn unconfirmed_switch(&self) -> Option<&[u8]> {
        self.unconfirmed.as_ref().map(|(_, m)| m.as_slice())
    }

    /// Verifies and opens a received message.
    ///
    /// # Errors
    /// An [`OpenError`]; the channel's state is unchanged then except for
    /// its rejection counters.
    pub fn open<'a>(&mut self, datagram: &'a [u8]) -> Result<Opened<'a>, OpenError> {
        let result = self.open_inner(datagram);
        if let Err(e) = &result {
            self.count_rejection(e);
        }
        result
    }

    /// Counts a refused message in the statistics (both `open` paths).
    fn count_rejection(&mut self, e: &OpenError) {
        let counter = match e {
            OpenError::Malformed(_)
            | OpenError::WrongSender
            | OpenError::ContextMismatch
            | OpenError::TranscriptTag => &mut self.stats.malformed_rejected,
            OpenError::UnknownContext(_) => &mut self.stats.unknown_context_rejected,
            OpenError::TooOld => &mut self.stats.too_old_rejected,
            OpenError::Replay => &mut self.stats.replays_rejected,
            OpenError::PadUnavailable => &mut self.stats.unavailable_rejected,
            OpenError::AuthenticationFailed => &mut self.stats.forgeries_rejected,
            OpenError::CheckpointRequired => &mut self.stats.checkpoint_rejected,
            OpenError::FeedDiverged => &mut self.stats.diverged_rejected,
        };
        *counter += 1;
    }

    /// The checks every incoming message passes before its tag is computed:
    /// direction, context, replay window, pad availability. Returns whether
    /// the message is under the current (not the previous) context.
    fn locate(&self, h: &Header) -> Result<bool, OpenError> {
        if h.sender != self.role.peer() {
            return Err(OpenError::WrongSender);
        }
        let is_current = h.context == self.recv.id();
        if !is_current && self.recv_previous.as_ref().map(CryptoContext::id) != Some(h.context) {
            return Err(OpenError::UnknownContext(h.context));
        }
        // Replays and positions outside the window first: a duplicate of
        // any message, switches included, is reported as a replay.
        self.pool
            .check_receive(h.pad_position, h.mode.pad_units())?;
        let context = self.context(is_current);
        if context.mode() != h.mode || !context.covers(h.pad_position) {
            return Err(OpenError::ContextMismatch);
        }
        Ok(is_current)
    }

    fn context(&self, is_current: bool) -> &CryptoContext {
        match (is_current, &self.recv_previous) {
            (false, Some(previous)) => previous,
            _ => &self.recv,
        }
    }

    fn open_inner<'a>(&mut self, datagram: &'a [u8]) -> Result<Opened<'a>, OpenError> {
        if self.diverged {
            return Err(OpenError::FeedDiverged);
        }
        let msg = SealedMessage::decode(datagram, self.max_payload)?;
        let h = msg.header;
        if h.message_type == MessageType::TranscriptTag {
            return Err(OpenError::TranscriptTag);
        }
        let is_current = self.locate(&h)?;
        let units = h.mode.pad_units();
        let switch = match h.message_type {
            MessageType::Data => None,
            MessageType::FeedNotice => {
                if msg.payload.len() != FEED_NOTICE_LEN {
                    return Err(OpenError::ContextMismatch);
                }
                None
            }
            MessageType::TranscriptTag => return Err(OpenError::TranscriptTag),
            MessageType::ContextSwitch => {
                let body =
                    ContextSwitch::decode(msg.payload).map_err(|_| OpenError::ContextMismatch)?;
                if !is_current
                    || Some(body.new_context) != h.context.checked_add(1)
                    || Some(body.key_position) != h.pad_position.checked_add(units)
                {
                    return Err(OpenError::ContextMismatch);
                }
                // Read (not yet used) before the tag check, so that nothing
                // after the message is accepted can fail.
                let key = self.pool.receive_pad(body.key_position, HASH_KEY_UNITS)?;
                Some((body, key))
            }
        };
        let pad = self.pool.receive_pad(h.pad_position, units)?;
        self.stats.forgery_bound += epsilon(h.mode, (HEADER_LEN + self.max_payload) as u64);
        let mut stream = self.context(is_current).key().stream();
        stream.update(msg.header_bytes);
        stream.update(msg.payload);
        if !stream.verify(pad.as_bytes(), msg.tag) {
            return Err(OpenError::AuthenticationFailed);
        }
        drop(pad);
        // Authentic from here on: consume the pad, move the window.
        self.accept(&h);
        let opened = match switch {
            None if h.message_type == MessageType::FeedNotice => {
                let mut count = [0u8; 8];
                count.copy_from_slice(&msg.payload[..8]);
                let mut digest = [0u8; FEED_DIGEST_BYTES];
                digest.copy_from_slice(&msg.payload[8..8 + FEED_DIGEST_BYTES]);
                let mut floor = [0u8; 8];
                floor.copy_from_slice(&msg.payload[8 + FEED_DIGEST_BYTES..]);
                self.pool.skip_send_to(u64::from_be_bytes(floor));
                Opened::FeedNotice(self.compare_peer_feed(u64::from_be_bytes(count), digest))
            }
            None => Opened::Data(msg.payload),
            Some((body, key)) => {
                self.pool.commit_hash_key(body.key_position);
                let mut old = core::mem::replace(
                    &mut self.recv,
                    CryptoContext::new(
                        body.new_context,
                        body.mode,
                        &hash_key_bytes(&key),
                        body.key_position + HASH_KEY_UNITS,
                    ),
                );
                old.close_at(h.pad_position);
                self.recv_previous = Some(old);
                self.stats.switches_received += 1;
                self.events.push_back(AuthEvent::PeerSwitched {
                    context: body.new_context,
                    mode: body.mode,
                });
                Opened::ContextSwitch(body)
            }
        };
        self.drain_pool_events();
        Ok(opened)
    }

    /// Compares an authentic peer feed notice; a peer ahead is kept to be
    /// compared after this end's next deposits.
    fn compare_peer_feed(&mut self, count: u64, digest: [u8; FEED_DIGEST_BYTES]) -> FeedComparison {
        let outcome = self.pool.compare_feed(count, &digest);
        match outcome {
            FeedComparison::PeerAhead if self.peer_feed.is_none_or(|(c, _)| c < count) => {
                self.peer_feed = Some((count, digest));
            }
            FeedComparison::Diverged => self.diverge(count),
            _ => {}
        }
        outcome
    }

    fn diverge(&mut self, count: u64) {
        if !self.diverged {
            self.diverged = true;
            self.events.push_back(AuthEvent::FeedDiverged { count });
        }
    }

    /// Seals a feed notice: this end's deposit count, feed digest and
    /// receive floor (public data), for the peer to
    /// [compare](AuthKeyPool::compare_feed) and to skip its send cursor to
    /// the floor. Send one after each deposit and after a restore; a lost
    /// one is harmless (the next carries the whole history in its digest).
    /// Costs one pad.
    ///
    /// # Errors
    /// As [`seal`](Self::seal).
    pub fn seal_feed_notice(&mut self) -> Result<Vec<u8>, SealError> {
        let (count, digest) = self.pool.feed_digest();
        let mut body = [0u8; FEED_NOTICE_LEN];
        body[..8].copy_from_slice(&count.to_be_bytes());
        body[8..8 + FEED_DIGEST_BYTES].copy_from_slice(&digest);
        body[8 + FEED_DIGEST_BYTES..].copy_from_slice(&self.pool.receive_floor().to_be_bytes());
        let sealed = self.seal_typed(MessageType::FeedNotice, &body)?;
        self.notice_pending = false;
        Ok(sealed)
    }

    /// Whether a feed notice is due: a deposit or a restore happened since
    /// the last one was sealed. [`Authenticated`](super::Authenticated)
    /// sends it by itself.
    #[must_use]
    pub fn is_notice_pending(&self) -> bool {
        self.notice_pending
    }

    /// Whether the pools were found [diverged](AuthEvent::FeedDiverged).
    #[must_use]
    pub fn is_diverged(&self) -> bool {
        self.diverged
    }

    /// Consumes the pad of an authentic message and takes its acknowledgement.
    fn accept(&mut self, h: &Header) {
        self.pool.commit_receive(h.pad_position, h.mode.pad_units());
        self.stats.opened += 1;
        if let Some((pending, _)) = &self.unconfirmed
            && h.ack_context >= *pending
        {
            let context = *pending;
            self.unconfirmed = None;
            self.events
                .push_back(AuthEvent::SwitchConfirmed { context });
        }
    }

    /// A transcript of this round, keyed for this end's tag (see
    /// [`seal_transcript`](Self::seal_transcript)).
    #[must_use]
    pub fn start_transcript(&self) -> Transcript {
        Transcript::new(&self.send, self.role)
    }

    /// A transcript of this round, keyed to verify the peer's tag (see
    /// [`open_transcript`](Self::open_transcript)).
    #[must_use]
    pub fn start_peer_transcript(&self) -> Transcript {
        Transcript::new(&self.recv, self.role.peer())
    }

    /// Seals the tag of a round transcript: one pad authenticates every
    /// message [absorbed](Transcript::absorb) (see [the scheme](super::transcript)).
    /// The transcript itself is not sent.
    ///
    /// # Errors
    /// [`SealError::TranscriptContext`] if `transcript` was not started with
    /// [`start_transcript`](Self::start_transcript) under the current
    /// context; [`SealError::Pool`] when the pool is empty. Nothing changes then.
    pub fn seal_transcript(&mut self, transcript: Transcript) -> Result<Vec<u8>, SealError> {
        if self.diverged {
            return Err(SealError::FeedDiverged);
        }
        if transcript.keyed_for != self.role || transcript.context != self.send.id() {
            return Err(SealError::TranscriptContext);
        }
        // The tag bound covers MAX_MESSAGE_BYTES of hash input: refuse a
        // longer transcript before any pad is taken.
        let input_len = transcript.hashed_len() + (HEADER_LEN + 12) as u64;
        if input_len > MAX_MESSAGE_BYTES {
            return Err(SealError::PayloadTooLarge {
                len: usize::try_from(input_len).unwrap_or(usize::MAX),
                max: usize::try_from(MAX_MESSAGE_BYTES).unwrap_or(usize::MAX),
            });
        }
        let mode = self.send.mode();
        let pad = self.pool.take_send_pad(mode)?;
        let header = Header {
            message_type: MessageType::TranscriptTag,
            mode,
            sender: self.role,
            context: self.send.id(),
            ack_context: self.recv.id(),
            pad_position: pad.position(),
        };
        let body = transcript.summary();
        let header_bytes = header.encode(body.len() as u32);
        let mut stream = transcript.into_stream();
        stream.update(&header_bytes);
        stream.update(&body);
        let tag = stream
            .tag(pad.as_bytes())
            .map_err(|_| SealError::TranscriptContext)?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + mode.tag_bytes());
        out.extend_from_slice(&header_bytes);
        out.extend_from_slice(&body);
        out.extend_from_slice(tag.as_bytes());
        self.stats.sealed += 1;
        self.drain_pool_events();
        Ok(out)
    }

    /// Verifies the peer's transcript tag against this end's copy of the
    /// round (started with [`start_peer_transcript`](Self::start_peer_transcript)).
    /// `Ok` means the peer saw exactly the messages this end absorbed, in
    /// the same order.
    ///
    /// # Errors
    /// As [`open`](Self::open); [`OpenError::AuthenticationFailed`] when the
    /// transcripts differ (drop the round's key on both ends);
    /// [`OpenError::ContextMismatch`] for a transcript started under another
    /// context or a message that is not a transcript tag. Nothing is consumed then.
    pub fn open_transcript(
        &mut self,
        datagram: &[u8],
        transcript: Transcript,
    ) -> Result<(), OpenError> {
        let result = self.open_transcript_inner(datagram, transcript);
        if let Err(e) = &result {
            self.count_rejection(e);
        }
        result
    }

    fn open_transcript_inner(
        &mut self,
        datagram: &[u8],
        transcript: Transcript,
    ) -> Result<(), OpenError> {
        if self.diverged {
            return Err(OpenError::FeedDiverged);
        }
        let msg = SealedMessage::decode(datagram, self.max_payload)?;
        let h = msg.header;
        if h.message_type != MessageType::TranscriptTag {
            return Err(OpenError::ContextMismatch);
        }
        let is_current = self.locate(&h)?;
        if transcript.keyed_for != self.role.peer() || transcript.context != h.context {
            return Err(OpenError::ContextMismatch);
        }
        let pad = self.pool.receive_pad(h.pad_position, h.mode.pad_units())?;
        self.stats.forgery_bound += epsilon(h.mode, MAX_MESSAGE_BYTES);
        debug_assert_eq!(self.context(is_current).id(), transcript.context);
        let mut stream = transcript.into_stream();
        stream.update(msg.header_bytes);
        stream.update(msg.payload);
        if !stream.verify(pad.as_bytes(), msg.tag) {
            return Err(OpenError::AuthenticationFailed);
        }
        drop(pad);
        self.accept(&h);
        self.drain_pool_events();
        Ok(())
    }

    /// Takes the configured share of the agreed block's final key into the
    /// pool (see [`AuthKeyPool::replenish_from_block`]); returns the rest for
    /// the key store and the block's key account. Take a checkpoint after
    /// it ([`AuthEvent::CheckpointDue`] is raised) and send a
    /// [feed notice](Self::seal_feed_notice).
    ///
    /// # Errors
    /// As [`AuthKeyPool::replenish_from_block`].
    pub fn replenish_from_block(
        &mut self,
        agreed: &ConfirmedBlock,
        final_key: SecretKey,
    ) -> Result<(SecretKey, BlockAccount), (PoolError, SecretKey)> {
        let result = self.pool.replenish_from_block(agreed, final_key);
        self.after_deposit();
        result
    }

    /// Deposits agreed key into the pool (see [`AuthKeyPool::replenish`]).
    ///
    /// # Errors
    /// As [`AuthKeyPool::replenish`].
    pub fn replenish(
        &mut self,
        agreed: &ConfirmedBlock,
        key: &SecretKey,
    ) -> Result<u64, PoolError> {
        let result = self.pool.replenish(agreed, key);
        self.after_deposit();
        result
    }

    fn after_deposit(&mut self) {
        self.notice_pending = true;
        if let Some((count, digest)) = self.peer_feed
            && self.pool.compare_feed(count, &digest) != FeedComparison::PeerAhead
        {
            self.peer_feed = None;
            self.compare_peer_feed(count, digest);
        }
        self.drain_pool_events();
    }

    /// Closes the current block account (see [`AuthKeyPool::close_block`]).
    pub fn close_block(&mut self, block: BlockId) -> BlockAccount {
        self.pool.close_block(block)
    }

    fn drain_pool_events(&mut self) {
        while let Some(event) = self.pool.poll_event() {
            match event {
                PoolEvent::LowWater { remaining_bits } => {
                    self.events
                        .push_back(AuthEvent::LowWater { remaining_bits });
                }
                PoolEvent::CheckpointDue => self.events.push_back(AuthEvent::CheckpointDue),
            }
        }
    }

    /// Next event, until `None`.
    pub fn poll_event(&mut self) -> Option<AuthEvent> {
        self.events.pop_front()
    }
}

impl core::fmt::Debug for AuthenticatedChannel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AuthenticatedChannel")
            .field("role", &self.role)
            .field("send", &self.send)
            .field("recv", &self.recv)
            .field("pool", &self.pool)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

// Keep the body length in step with the decoder's expectations.
const _: () = assert!(SWITCH_BODY_LEN == 13);
