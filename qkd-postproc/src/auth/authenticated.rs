//! [`Authenticated`]: any protocol [`Machine`] behind an
//! [`AuthenticatedChannel`], itself a [`Machine`].
//!
//! ```text
//!            handle_input(sealed) ─▶ channel.open ─▶ payload ─▶ inner.handle_input
//!  peer ◀─── poll_transmit  ◀─ channel.seal ◀─ payload ◀─ inner.poll_transmit
//!            poll_event: the channel's events (checkpoint due, low water,
//!            switches, feed diverged), then the inner machine's
//! ```
//!
//! The wrapper is the shape the pipeline composes: the inner machine sees
//! only authentic payloads, in whatever order they arrive, and everything it
//! sends is sealed. The low-level [`AuthenticatedChannel`] stays usable on
//! its own (seal and open by hand, transcripts); the wrapper adds what every
//! user of it needs:
//!
//! - payloads the pool cannot pay for yet (empty, or a checkpoint is due)
//!   wait in order (up to [`AuthenticatedConfig::max_pending`]) and go out
//!   once key is deposited or a checkpoint is committed;
//! - an unacknowledged context switch is sent again every
//!   [`AuthenticatedConfig::retransmit_after`];
//! - a feed notice goes out after each deposit and after a restore
//!   ([`AuthenticatedChannel::is_notice_pending`]), so the peer compares
//!   the pools and skips past this end's receive floor.
//!
//! The host's duties stay the host's: on
//! [`AuthEvent::CheckpointDue`] call [`checkpoint`](Authenticated::checkpoint),
//! persist the state, then [`commit`](Authenticated::commit); on
//! [`AuthEvent::FeedDiverged`] drop the link and start over from a fresh
//! pre-shared secret.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use qkd_core::SecretKey;
use qkd_core::machine::{ConfigError, Machine};
use serde::{Deserialize, Serialize};

use super::channel::{AuthEvent, AuthenticatedChannel, Checkpoint, OpenError, Opened, SealError};
use super::pool::{BlockAccount, PoolError};
use super::tag::TagMode;
use crate::confirm::ConfirmedBlock;

/// Settings of an [`Authenticated`] wrapper (local: the peer may differ).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthenticatedConfig {
    /// How often an unacknowledged context switch is sent again (more than zero).
    pub retransmit_after: Duration,
    /// Payloads of the inner machine held while the pool cannot pay for
    /// them (at least 1); beyond it the oldest is dropped and reported.
    pub max_pending: usize,
}

impl Default for AuthenticatedConfig {
    /// 200 ms, 1024 payloads.
    fn default() -> Self {
        AuthenticatedConfig {
            retransmit_after: Duration::from_millis(200),
            max_pending: 1024,
        }
    }
}

impl AuthenticatedConfig {
    /// Checks every field, naming the first bad one.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `retransmit_after` or `max_pending`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.retransmit_after.is_zero() {
            return Err(ConfigError::new(
                "retransmit_after",
                "must be more than zero",
            ));
        }
        if self.max_pending == 0 {
            return Err(ConfigError::new("max_pending", "must be at least 1"));
        }
        Ok(())
    }
}

/// An event of an [`Authenticated`] machine.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthenticatedEvent<E> {
    /// The inner machine's event.
    Inner(E),
    /// The channel's event.
    Channel(AuthEvent),
    /// A payload of the inner machine that could not be sealed and was
    /// dropped (too large, too many pending, or the pools diverged).
    Dropped(SealError),
}

/// Why an incoming datagram was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthenticatedError<E> {
    /// The channel refused it: nothing changed anywhere.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// It was authentic, but the inner machine rejected its payload. The
    /// channel recorded the pad as used (an authentic message is accepted
    /// once); the inner machine's state is unchanged.
    #[error("authentic payload rejected by the inner machine: {0:?}")]
    Inner(E),
}

/// A protocol machine `M` whose every datagram travels sealed through an
/// [`AuthenticatedChannel`]. See the [module docs](self).
///
/// - Input and output: the [`Machine`] methods.
/// - Application actions: [`checkpoint`](Self::checkpoint) /
///   [`commit`](Self::commit), [`replenish_from_block`](Self::replenish_from_block),
///   [`switch_context`](Self::switch_context), [`inner_mut`](Self::inner_mut).
/// - Getters: [`inner`](Self::inner), [`channel`](Self::channel).
pub struct Authenticated<M> {
    inner: M,
    channel: AuthenticatedChannel,
    config: AuthenticatedConfig,
    /// Inner payloads not sealed yet, oldest first.
    pending: VecDeque<Vec<u8>>,
    /// Sealed datagrams ready to go.
    outbox: VecDeque<Vec<u8>>,
    switch_resend_at: Option<Instant>,
    events: VecDeque<AuthEvent>,
    dropped: VecDeque<SealError>,
}

impl<M: Machine> Authenticated<M> {
    /// `inner` behind `channel` (fresh with its first checkpoint committed,
    /// or restored). A restored channel's wrapper sends a feed notice as
    /// soon as the pool allows it.
    ///
    /// # Errors
    /// The [`ConfigError`] of [`AuthenticatedConfig::validate`].
    pub fn new(
        inner: M,
        channel: AuthenticatedChannel,
        config: AuthenticatedConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Authenticated {
            inner,
            channel,
            config,
            pending: VecDeque::new(),
            outbox: VecDeque::new(),
            switch_resend_at: None,
            events: VecDeque::new(),
            dropped: VecDeque::new(),
        })
    }

    /// The inner machine.
    #[must_use]
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// The inner machine, for its own application actions.
    pub fn inner_mut(&mut self) -> &mut M {
        &mut self.inner
    }

    /// The channel (read-only: sealing and opening go through the wrapper).
    #[must_use]
    pub fn channel(&self) -> &AuthenticatedChannel {
        &self.channel
    }

    /// The inner machine and the channel, to go on with another machine
    /// over the same channel (the next block). Payloads still pending are
    /// dropped.
    #[must_use]
    pub fn into_parts(self) -> (M, AuthenticatedChannel) {
        (self.inner, self.channel)
    }

    /// A checkpoint of the channel (see [`AuthenticatedChannel::checkpoint`]).
    pub fn checkpoint(&self) -> Checkpoint {
        self.channel.checkpoint()
    }

    /// Commits a persisted checkpoint; pending payloads go out at the next
    /// `poll_transmit`.
    ///
    /// # Errors
    /// As [`AuthenticatedChannel::commit`].
    pub fn commit(&mut self, checkpoint: Checkpoint) -> Result<(), PoolError> {
        self.channel.commit(checkpoint)
    }

    /// Feeds the agreed block's share into the pool (see
    /// [`AuthenticatedChannel::replenish_from_block`]) and sends a feed notice.
    ///
    /// # Errors
    /// As [`AuthenticatedChannel::replenish_from_block`].
    pub fn replenish_from_block(
        &mut self,
        agreed: &ConfirmedBlock,
        final_key: SecretKey,
    ) -> Result<(SecretKey, BlockAccount), (PoolError, SecretKey)> {
        let result = self.channel.replenish_from_block(agreed, final_key);
        self.drain_channel_events();
        result
    }

    /// Switches this end's direction to a new context (see
    /// [`AuthenticatedChannel::switch_context`]); the switch is sent now and
    /// again every `retransmit_after` until acknowledged.
    ///
    /// # Errors
    /// As [`AuthenticatedChannel::switch_context`].
    pub fn switch_context(&mut self, now: Instant, mode: TagMode) -> Result<(), SealError> {
        let sealed = self.channel.switch_context(mode)?;
        self.outbox.push_back(sealed);
        self.switch_resend_at = Some(now + self.config.retransmit_after);
        self.drain_channel_events();
        Ok(())
    }

    fn drain_channel_events(&mut self) {
        while let Some(e) = self.channel.poll_event() {
            self.events.push_back(e);
        }
    }

    /// Seals pending payloads in order while the pool pays for them.
    fn seal_pending(&mut self) {
        if self.channel.is_notice_pending() && !self.channel.is_diverged() {
            // On a refusal, wait for key or a committed checkpoint.
            if let Ok(sealed) = self.channel.seal_feed_notice() {
                self.outbox.push_back(sealed);
            }
        }
        while let Some(payload) = self.pending.front() {
            match self.channel.seal(payload) {
                Ok(sealed) => {
                    self.pending.pop_front();
                    self.outbox.push_back(sealed);
                }
                // Wait for a deposit or a committed checkpoint.
                Err(SealError::Pool(_)) => break,
                Err(e) => {
                    self.pending.pop_front();
                    self.dropped.push_back(e);
                }
            }
        }
        self.drain_channel_events();
    }
}

impl<M: Machine> Machine for Authenticated<M> {
    type Event = AuthenticatedEvent<M::Event>;
    type Error = AuthenticatedError<M::Error>;

    fn handle_input(&mut self, now: Instant, datagram: &[u8]) -> Result<(), Self::Error> {
        let opened = self.channel.open(datagram);
        self.drain_channel_events();
        match opened? {
            Opened::Data(payload) => self
                .inner
                .handle_input(now, payload)
                .map_err(AuthenticatedError::Inner),
            Opened::ContextSwitch(_) | Opened::FeedNotice(_) => Ok(()),
        }
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        while let Some(payload) = self.inner.poll_transmit(now) {
            if self.pending.len() == self.config.max_pending {
                self.pending.pop_front();
                self.dropped
                    .push_back(SealError::Pool(PoolError::Exhausted {
                        needed_bits: self.channel.send_context().mode().tag_bits(),
                        available_bits: self.channel.pool().send_remaining_bits(),
                    }));
            }
            self.pending.push_back(payload);
        }
        self.seal_pending();
        self.outbox.pop_front()
    }

    fn poll_event(&mut self) -> Option<Self::Event> {
        if let Some(e) = self.events.pop_front() {
            return Some(AuthenticatedEvent::Channel(e));
        }
        if let Some(e) = self.dropped.pop_front() {
            return Some(AuthenticatedEvent::Dropped(e));
        }
        self.inner.poll_event().map(AuthenticatedEvent::Inner)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match (self.inner.poll_timeout(), self.switch_resend_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.inner.handle_timeout(now);
        if self.switch_resend_at.is_some_and(|at| at <= now) {
            // The same bytes: a copy after the original is a harmless replay.
            match self.channel.unconfirmed_switch() {
                Some(switch) => {
                    self.outbox.push_back(switch.to_vec());
                    self.switch_resend_at = Some(now + self.config.retransmit_after);
                }
                None => self.switch_resend_at = None,
            }
        }
    }
}

impl<M: core::fmt::Debug> core::fmt::Debug for Authenticated<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Authenticated")
            .field("inner", &self.inner)
            .field("channel", &self.channel)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}
