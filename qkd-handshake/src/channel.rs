//! The secured channel: a [`Machine`] that runs a handshake, then carries
//! another machine's datagrams in protected records.
//!
//! ```text
//!            poll_transmit                        handle_input
//!  inner M ───────────────▶ seal ─▶ record ─▶ … ─▶ open ─▶ inner M (peer)
//!          ◀─ events ─── SecuredChannel<M> ─── events ─▶
//!  [Handshaking] ──Established──▶ [Open] ──close()/Close──▶ [Closing] ──▶ [Closed]
//!        └──────────── Failed ───────────────────────────────────────────▶ [Failed]
//! ```
//!
//! The inner machine runs unchanged: its timers run from the start, its
//! datagrams wait inside it until the channel is open, and every datagram
//! that reaches it has passed record authentication and replay checks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};

use qkd_core::KeyId;
use qkd_core::machine::{ConfigError, Machine};
use qkd_core::wire::{Envelope, Protocol, WireError};

use crate::capability::CipherSuite;
use crate::handshake::{
    Handshake, HandshakeConfig, HandshakeError, HandshakeEvent, HandshakeRole, InputError,
};
use crate::psk::PskSource;
use crate::record::{ContentType, RecordError, RecordLayer, SealError};
use crate::relay::RelayMessage;

/// Settings of a secured channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// The handshake's settings.
    pub handshake: HandshakeConfig,
    /// AES-256-GCM: move to a new key from fresh QKD key after this many
    /// payload bytes sent.
    pub rekey_after_bytes: u64,
    /// AES-256-GCM: ... or after this long.
    pub rekey_after: Duration,
    /// How long an orderly close waits for the peer's close.
    pub close_timeout: Duration,
    /// One-time pad: while the source has no QKD key for a pad, try again
    /// this often (see [`ChannelEvent::PadsExhausted`]).
    #[serde(default = "default_pad_retry")]
    pub pad_retry: Duration,
}

fn default_pad_retry() -> Duration {
    Duration::from_millis(100)
}

impl ChannelConfig {
    /// Rekey after 1 GiB or 10 minutes; wait 2 s for the peer's close.
    #[must_use]
    pub fn new(handshake: HandshakeConfig) -> Self {
        ChannelConfig {
            handshake,
            rekey_after_bytes: 1 << 30,
            rekey_after: Duration::from_secs(600),
            close_timeout: Duration::from_secs(2),
            pad_retry: default_pad_retry(),
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// The first invalid field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.handshake.validate()?;
        if self.rekey_after_bytes == 0 {
            return Err(ConfigError::new(
                "channel.rekey_after_bytes",
                "must be at least 1",
            ));
        }
        if self.rekey_after.is_zero() {
            return Err(ConfigError::new("channel.rekey_after", "must be positive"));
        }
        if self.pad_retry.is_zero() || self.pad_retry > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "channel.pad_retry",
                "must be positive and at most 60 s",
            ));
        }
        Ok(())
    }
}

/// How a channel starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Start {
    /// Send a client hello (both sides may; roles settle by nonce).
    Initiate,
    /// Wait for the peer's client hello.
    Respond,
}

/// Why the channel ended without an orderly close.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// A record could not be protected (no fresh key for a pad or rekey).
    #[error("cannot protect a record: {0}")]
    Seal(#[from] SealError),
    /// The peer did not answer a close in time.
    #[error("the peer did not confirm the close")]
    CloseTimeout,
}

/// A datagram the channel rejected; nothing changed (except as noted on
/// [`ChannelInputError::Inner`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelInputError<E: core::fmt::Debug> {
    /// Not a message of the handshake or the channel.
    #[error("not a channel message: {0}")]
    Malformed(WireError),
    /// A handshake message was rejected.
    #[error("handshake message rejected: {0}")]
    Handshake(#[from] InputError),
    /// A record was rejected (forged, replayed, altered, unknown key ...).
    #[error("record rejected: {0}")]
    Record(#[from] RecordError),
    /// A record arrived before the channel was open or after it closed.
    #[error("record outside an open channel")]
    NotOpen,
    /// A key forward did not parse.
    #[error("malformed key forward: {0}")]
    Relay(WireError),
    /// The record was authentic; the inner machine rejected its content
    /// (the record counts as received: a replay of it is rejected).
    #[error("inner machine rejected the datagram: {0:?}")]
    Inner(E),
}

/// What the channel reports.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChannelEvent<E> {
    /// The handshake finished; records flow from now on.
    Established {
        /// The role this side ended in.
        role: HandshakeRole,
        /// The suite agreed.
        suite: CipherSuite,
        /// The PSK used.
        psk_id: KeyId,
    },
    /// An event of the inner machine.
    Inner(E),
    /// A key forward or relay message from the peer.
    Relay(RelayMessage),
    /// The AES-256-GCM send key moved to a new epoch keyed by `key_id`.
    Rekeyed {
        /// The new send epoch.
        epoch: u32,
    },
    /// One-time pad: the source has no QKD key for the next record's pad.
    /// The channel does not fall back to anything weaker: it holds that
    /// one record, sends nothing else (the inner machine is not polled, so
    /// its own flow control and retransmission take over) and tries again
    /// every [`ChannelConfig::pad_retry`] and on every
    /// [`poll_transmit`](Machine::poll_transmit), until
    /// [`ChannelEvent::PadsResumed`]. Reported once per shortage.
    PadsExhausted,
    /// One-time pad: key for pads arrived and the held record left.
    PadsResumed,
    /// Both sides closed in order (terminal).
    Closed,
    /// The channel failed (terminal).
    Failed(ChannelError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Handshaking,
    Open,
    Closing { deadline: Instant },
    Closed,
    Failed,
}

/// A secured channel around the inner machine `M`, keyed by the PSK source `S`.
///
/// Getters: [`inner`](Self::inner), [`is_open`](Self::is_open),
/// [`is_finished`](Self::is_finished), [`suite`](Self::suite). For the
/// application: [`inner_mut`](Self::inner_mut), [`forward`](Self::forward),
/// [`rekey`](Self::rekey), [`close`](Self::close), [`source_mut`](Self::source_mut).
/// The [`Machine`] methods drive it; after any call that may make the inner
/// machine want to send, drain [`poll_transmit`](Machine::poll_transmit).
pub struct SecuredChannel<M: Machine, S> {
    config: ChannelConfig,
    handshake: Handshake<S>,
    inner: M,
    records: Option<RecordLayer>,
    phase: Phase,
    control: VecDeque<(ContentType, zeroize::Zeroizing<Vec<u8>>)>,
    events: VecDeque<ChannelEvent<M::Event>>,
    rekey_at: Option<Instant>,
    /// The record waiting for pad (one-time pad suite), and when to retry.
    held: Option<(ContentType, zeroize::Zeroizing<Vec<u8>>)>,
    pad_retry_at: Option<Instant>,
}

impl<M: Machine, S> core::fmt::Debug for SecuredChannel<M, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SecuredChannel")
            .field("phase", &self.phase)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl<M: Machine, S: PskSource> SecuredChannel<M, S> {
    /// A channel that starts its handshake as `start` says and then carries
    /// `inner`.
    ///
    /// # Errors
    /// An invalid configuration.
    pub fn new<R: CryptoRng + ?Sized>(
        config: ChannelConfig,
        start: Start,
        source: S,
        inner: M,
        rng: &mut R,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let hs = match start {
            Start::Initiate => Handshake::initiator(config.handshake.clone(), source, rng, now),
            Start::Respond => Handshake::responder(config.handshake.clone(), source, rng, now),
        }?;
        let mut ch = SecuredChannel {
            config,
            handshake: hs,
            inner,
            records: None,
            phase: Phase::Handshaking,
            control: VecDeque::new(),
            events: VecDeque::new(),
            rekey_at: None,
            held: None,
            pad_retry_at: None,
        };
        ch.drain_handshake(now);
        Ok(ch)
    }

    /// The inner machine.
    #[must_use]
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// The inner machine, to use its API (drain `poll_transmit` after).
    pub fn inner_mut(&mut self) -> &mut M {
        &mut self.inner
    }

    /// The PSK source (the link's supply of fresh QKD key).
    pub fn source_mut(&mut self) -> &mut S {
        self.handshake.source()
    }

    /// Takes the channel apart into the inner machine and the PSK source,
    /// e.g. after the connection under it dropped: a new channel built
    /// from both ([`SecuredChannel::new`]) runs a fresh handshake with a
    /// fresh PSK from the same source (which remembers what it consumed, so
    /// no key is used twice) and carries the same inner state on, instead
    /// of the inner machine starting over.
    ///
    /// The session keys are dropped (zeroized); records in flight are lost
    /// and recovered by the inner machine's own retransmission, as after
    /// any loss.
    #[must_use]
    pub fn into_inner(self) -> (M, S) {
        (self.inner, self.handshake.into_source())
    }

    /// Whether records flow.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// The suite agreed, once open.
    #[must_use]
    pub fn suite(&self) -> Option<CipherSuite> {
        self.records.as_ref().map(RecordLayer::suite)
    }

    /// The record layer (counters), once open.
    #[must_use]
    pub fn records(&self) -> Option<&RecordLayer> {
        self.records.as_ref()
    }

    /// Queues `message` (a key forward or relay status) for the peer;
    /// `false` (and nothing queued) if the channel is not open.
    pub fn forward(&mut self, message: &RelayMessage) -> bool {
        if self.phase != Phase::Open {
            return false;
        }
        self.control
            .push_back((ContentType::KeyForward, message.encode()));
        true
    }

    /// Moves the AES-256-GCM send key to a new epoch now.
    ///
    /// # Errors
    /// The source has no fresh key (the channel goes on with the old key).
    pub fn rekey(&mut self, now: Instant) -> Result<(), crate::psk::PskError> {
        let Some(records) = self.records.as_mut() else {
            return Ok(());
        };
        records.rekey(self.handshake.source())?;
        self.rekey_at = Some(now + self.config.rekey_after);
        if records.suite() == CipherSuite::Aes256GcmBlake3 {
            self.events.push_back(ChannelEvent::Rekeyed {
                epoch: records.send_epoch(),
            });
        }
        Ok(())
    }

    /// Starts an orderly close: a close record, then [`ChannelEvent::Closed`]
    /// when the peer's arrives (or [`ChannelError::CloseTimeout`]).
    pub fn close(&mut self, now: Instant) {
        match self.phase {
            Phase::Open => {
                self.control
                    .push_back((ContentType::Close, zeroize::Zeroizing::new(Vec::new())));
                self.phase = Phase::Closing {
                    deadline: now + self.config.close_timeout,
                };
            }
            Phase::Handshaking => self.phase = Phase::Closed,
            _ => {}
        }
    }

    /// Whether the channel closed or failed.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Closed | Phase::Failed)
    }

    fn drain_handshake(&mut self, now: Instant) {
        while let Some(ev) = self.handshake.poll_event() {
            match ev {
                HandshakeEvent::Established(session) => {
                    self.records = Some(RecordLayer::new(&session));
                    self.phase = Phase::Open;
                    self.rekey_at = Some(now + self.config.rekey_after);
                    self.events.push_back(ChannelEvent::Established {
                        role: session.role,
                        suite: session.suite,
                        psk_id: session.psk_id,
                    });
                }
                HandshakeEvent::Failed(e) => {
                    self.phase = Phase::Failed;
                    self.events.push_back(ChannelEvent::Failed(e.into()));
                }
            }
        }
    }

    fn fail(&mut self, error: ChannelError) {
        self.phase = Phase::Failed;
        self.control.clear();
        self.held = None;
        self.pad_retry_at = None;
        self.events.push_back(ChannelEvent::Failed(error));
    }

    fn seal(&mut self, now: Instant, content: ContentType, payload: &[u8]) -> Option<Vec<u8>> {
        let records = self.records.as_mut()?;
        if records.suite() == CipherSuite::Aes256GcmBlake3
            && (records.sent_since_rekey() >= self.config.rekey_after_bytes
                || self.rekey_at.is_some_and(|t| t <= now))
        {
            match records.rekey(self.handshake.source()) {
                Ok(()) => {
                    self.rekey_at = Some(now + self.config.rekey_after);
                    self.events.push_back(ChannelEvent::Rekeyed {
                        epoch: records.send_epoch(),
                    });
                }
                Err(e) => {
                    self.fail(ChannelError::Seal(SealError::Key(e)));
                    return None;
                }
            }
        }
        match records.seal(self.handshake.source(), content, payload) {
            Ok(r) => Some(r),
            Err(e) => {
                self.fail(e.into());
                None
            }
        }
    }

    /// Seals `payload`, or, when the one-time pad suite finds no QKD key
    /// for its pad, holds it to try again later (see
    /// [`ChannelEvent::PadsExhausted`]).
    fn seal_or_hold(
        &mut self,
        now: Instant,
        content: ContentType,
        payload: zeroize::Zeroizing<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        let records = self.records.as_mut()?;
        if records.suite() == CipherSuite::OtpWegmanCarter {
            return match records.seal(self.handshake.source(), content, &payload) {
                Ok(r) => {
                    if self.pad_retry_at.take().is_some() {
                        self.events.push_back(ChannelEvent::PadsResumed);
                    }
                    Some(r)
                }
                Err(SealError::Key(crate::psk::PskError::Exhausted)) => {
                    if self.pad_retry_at.is_none() {
                        self.events.push_back(ChannelEvent::PadsExhausted);
                    }
                    self.pad_retry_at = Some(now + self.config.pad_retry);
                    self.held = Some((content, payload));
                    None
                }
                Err(e) => {
                    self.fail(e.into());
                    None
                }
            };
        }
        self.seal(now, content, &payload)
    }

    /// Whether a record waits for one-time pad.
    #[must_use]
    pub fn is_waiting_for_pad(&self) -> bool {
        self.held.is_some()
    }
}

impl<M: Machine, S: PskSource> Machine for SecuredChannel<M, S> {
    type Event = ChannelEvent<M::Event>;
    type Error = ChannelInputError<M::Error>;

    fn handle_input(&mut self, now: Instant, datagram: &[u8]) -> Result<(), Self::Error> {
        let protocol = Envelope::peek(datagram)
            .map_err(ChannelInputError::Malformed)?
            .protocol;
        if protocol == Protocol::Handshake {
            if self.is_finished() {
                return Err(ChannelInputError::NotOpen);
            }
            self.handshake.handle_input(now, datagram)?;
            self.drain_handshake(now);
            return Ok(());
        }
        if protocol != Protocol::SecuredChannel {
            return Err(ChannelInputError::Malformed(WireError::WrongProtocol {
                expected: Protocol::SecuredChannel,
                found: protocol.id(),
            }));
        }
        if !matches!(self.phase, Phase::Open | Phase::Closing { .. }) {
            return Err(ChannelInputError::NotOpen);
        }
        let Some(records) = self.records.as_mut() else {
            return Err(ChannelInputError::NotOpen);
        };
        let (content, payload) = records.open(self.handshake.source(), datagram)?;
        match content {
            ContentType::Data => self
                .inner
                .handle_input(now, &payload)
                .map_err(ChannelInputError::Inner)?,
            ContentType::KeyForward => {
                // A key forward carries key material: zeroized when dropped.
                let payload = zeroize::Zeroizing::new(payload);
                let m = RelayMessage::decode(&payload).map_err(ChannelInputError::Relay)?;
                self.events.push_back(ChannelEvent::Relay(m));
            }
            ContentType::Close => {
                if self.phase == Phase::Open {
                    self.control
                        .push_back((ContentType::Close, zeroize::Zeroizing::new(Vec::new())));
                }
                self.phase = Phase::Closed;
                self.events.push_back(ChannelEvent::Closed);
            }
        }
        Ok(())
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let Some(m) = self.handshake.poll_transmit(now) {
            return Some(m);
        }
        // A record waiting for pad goes first; nothing passes it.
        if let Some((content, payload)) = self.held.take() {
            return self.seal_or_hold(now, content, payload);
        }
        if let Some((content, payload)) = self.control.pop_front() {
            return self.seal_or_hold(now, content, payload);
        }
        if self.phase != Phase::Open {
            return None;
        }
        let datagram = zeroize::Zeroizing::new(self.inner.poll_transmit(now)?);
        self.seal_or_hold(now, ContentType::Data, datagram)
    }

    fn poll_event(&mut self) -> Option<Self::Event> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        self.inner.poll_event().map(ChannelEvent::Inner)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let mut t = match self.phase {
            Phase::Handshaking => self.handshake.poll_timeout(),
            Phase::Closing { deadline } => Some(deadline),
            Phase::Open => self.rekey_at,
            Phase::Closed | Phase::Failed => return None,
        };
        if let Some(r) = self.pad_retry_at {
            t = Some(t.map_or(r, |t| t.min(r)));
        }
        // While waiting for pad the inner machine is not polled for
        // datagrams, so a timer of its that wants to send would stay due:
        // its timers are served at the pad retries then.
        let inner = match (self.inner.poll_timeout(), self.pad_retry_at) {
            (Some(i), Some(r)) => Some(i.max(r)),
            (i, _) => i,
        };
        if let Some(i) = inner {
            t = Some(t.map_or(i, |t| t.min(i)));
        }
        t
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Handshaking if self.handshake.poll_timeout().is_some_and(|t| t <= now) => {
                self.handshake.handle_timeout(now);
                self.drain_handshake(now);
            }
            Phase::Closing { deadline } if deadline <= now => {
                self.fail(ChannelError::CloseTimeout);
                return;
            }
            Phase::Open if self.rekey_at.is_some_and(|t| t <= now) => {
                if let Err(e) = self.rekey(now) {
                    self.fail(ChannelError::Seal(SealError::Key(e)));
                    return;
                }
            }
            _ => {}
        }
        if self.pad_retry_at.is_some_and(|t| t <= now) {
            // The host drains poll_transmit after this call: the held
            // record is sealed then if pad arrived; until then retry later.
            self.pad_retry_at = Some(now + self.config.pad_retry);
        }
        if !self.is_finished() && self.inner.poll_timeout().is_some_and(|t| t <= now) {
            self.inner.handle_timeout(now);
        }
    }
}
