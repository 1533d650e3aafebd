//! The one contract every protocol machine of the workspace implements.
//!
//! A protocol machine is a sans-IO state machine: it owns no socket, thread,
//! clock or global random generator. The caller (a host binary, a test, the
//! simulated [`Network`](crate::sim::Network), or another machine that wraps
//! it) feeds it what the peer sent and the current time, and takes out what
//! it wants sent, what happened, and when it wants to be woken up:
//!
//! ```text
//!                 handle_input(now, bytes) ──▶ ┌─────────┐ ──▶ poll_transmit(now) ─▶ to the peer
//!  from the peer                               │ Machine │ ──▶ poll_event()       ─▶ to the application
//!                 handle_timeout(now)      ──▶ └─────────┘ ──▶ poll_timeout()     ─▶ to the host's timer
//! ```
//!
//! The shape is quinn-proto's: input methods (`handle_*`), output methods
//! (`poll_*`), and getters, which each machine adds for itself. The same
//! shape is used by Cascade, confirmation, the authenticated channel, the
//! key-store synchronisation, the KMS handshake and the secured channel, so
//! composite machines wrap leaf machines, and one driver loop drives them all.
//!
//! # The rules every implementation follows
//!
//! - **Input** ([`Machine::handle_input`], [`Machine::handle_timeout`]).
//!   `Err` from `handle_input` means only "this datagram was rejected" (it
//!   was malformed, not authentic, a replay, for another block ...); it
//!   changes no state, and the run goes on. A machine never panics on
//!   anything that came from the peer.
//! - **Output** ([`Machine::poll_transmit`], [`Machine::poll_event`],
//!   [`Machine::poll_timeout`]). After every input the caller drains
//!   transmits and events until `None`, then asks for the next timeout. The
//!   order of draining transmits and events does not matter.
//! - **Terminal outcomes are events.** A key corrected, a block confirmed or
//!   dropped, a peer that rebooted, an abort: each is an event, never an
//!   `Err` of an input method. After a terminal event
//!   [`is_finished`](#the-getters)-style getters report it, and further
//!   input is rejected or ignored as each machine documents.
//! - **Time** is an argument and never goes backwards: every `now` passed to
//!   a machine is at or after the previous one. A timeout returned by
//!   [`Machine::poll_timeout`] may be in the past; the caller then calls
//!   [`Machine::handle_timeout`] at once.
//! - **Configuration** is checked by the constructor, which returns
//!   `Result<_, ConfigError>` and never panics; configuration types derive
//!   `serde` with `deny_unknown_fields`.
//! - **Determinism**: given the same configuration, random generator seed
//!   and inputs, a machine does the same thing. Randomness is a
//!   `rand_core::CryptoRng` passed in by the caller.
//!
//! # The getters
//!
//! Each machine adds its own read-only getters (`block()`, `is_finished()`,
//! `stats()`, `leaked_bits()` ...). Getters never change state.
//!
//! # Driving a machine
//!
//! A host's loop over a datagram socket looks like this (no_run: `socket`
//! and `timer` stand for whatever the host uses):
//!
//! ```no_run
//! use std::time::Instant;
//! use qkd_core::machine::Machine;
//!
//! fn drive<M: Machine>(
//!     machine: &mut M,
//!     mut receive: impl FnMut(Option<Instant>) -> Option<Vec<u8>>,
//!     mut send: impl FnMut(Vec<u8>),
//!     mut on_event: impl FnMut(M::Event) -> bool,
//! ) {
//!     loop {
//!         let now = Instant::now();
//!         while let Some(datagram) = machine.poll_transmit(now) {
//!             send(datagram);
//!         }
//!         while let Some(event) = machine.poll_event() {
//!             if !on_event(event) {
//!                 return; // the application saw the outcome it waited for
//!             }
//!         }
//!         // Wait for a datagram or the machine's timeout, whichever comes first.
//!         match receive(machine.poll_timeout()) {
//!             Some(datagram) => {
//!                 // A rejected datagram changes nothing: log it and go on.
//!                 let _ = machine.handle_input(Instant::now(), &datagram);
//!             }
//!             None => machine.handle_timeout(Instant::now()),
//!         }
//!     }
//! }
//! ```
//!
//! In tests, [`sim::Network`](crate::sim::Network) (feature `sim`) runs two
//! machines against each other in virtual time, with faults.

use std::fmt;
use std::time::{Duration, Instant};

/// A sans-IO protocol machine: bytes and time in, bytes, events and
/// wake-up times out. See the [module documentation](self) for the rules.
pub trait Machine {
    /// What the machine reports to the application: progress, results and
    /// every terminal outcome.
    type Event;

    /// Why one incoming datagram was rejected. Rejection changes no state.
    type Error: fmt::Debug;

    /// Feeds one datagram the peer sent, received at `now`.
    ///
    /// # Errors
    /// The datagram was rejected (malformed, not authentic, a replay, not
    /// expected in this state ...). The machine's state is unchanged.
    fn handle_input(&mut self, now: Instant, datagram: &[u8]) -> Result<(), Self::Error>;

    /// The next datagram to send to the peer, until `None`.
    #[must_use]
    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>>;

    /// The next event for the application, until `None`.
    #[must_use]
    fn poll_event(&mut self) -> Option<Self::Event>;

    /// The earliest time the machine wants [`handle_timeout`](Self::handle_timeout)
    /// to be called, if any. It may be in the past.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Tells the machine that `now` is at or after the time it asked for in
    /// [`poll_timeout`](Self::poll_timeout). Calling it early, or when no
    /// timeout was asked for, does nothing.
    fn handle_timeout(&mut self, now: Instant);
}

/// A configuration value that a constructor refused.
///
/// `field` names the offending field as a dotted path from the root of the
/// configuration the caller passed (`"cascade.max_passes"`,
/// `"store.chunk_bytes"`), so a message about a configuration file points at
/// the right line. It never carries key material.
///
/// ```
/// use qkd_core::machine::ConfigError;
///
/// let e = ConfigError::new("max_passes", "must be between 1 and 16, got 0").within("cascade");
/// assert_eq!(e.field(), "cascade.max_passes");
/// assert_eq!(
///     e.to_string(),
///     "invalid configuration `cascade.max_passes`: must be between 1 and 16, got 0"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration `{field}`: {reason}")]
pub struct ConfigError {
    field: String,
    reason: String,
}

impl ConfigError {
    /// A refusal of `field` for `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same refusal, with its field placed inside `parent`
    /// (`"max_passes"` within `"cascade"` is `"cascade.max_passes"`).
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        if !parent.is_empty() {
            self.field = if self.field.is_empty() {
                parent.to_owned()
            } else {
                format!("{parent}.{}", self.field)
            };
        }
        self
    }

    /// The dotted path of the refused field.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl From<crate::Error> for ConfigError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::InvalidParameter { name, reason } => ConfigError::new(name, reason),
            other => ConfigError::new("", other.to_string()),
        }
    }
}

/// Checks that a probability-like parameter is finite and inside `range`,
/// naming `field` otherwise. A helper for `validate` methods of configurations.
///
/// ```
/// use qkd_core::machine::check_range;
///
/// assert!(check_range("qber", 0.02, 0.0..0.5).is_ok());
/// assert_eq!(
///     check_range("qber", f64::NAN, 0.0..0.5).unwrap_err().field(),
///     "qber"
/// );
/// ```
///
/// # Errors
/// `value` is NaN, infinite, or outside `range`.
pub fn check_range(
    field: &str,
    value: f64,
    range: impl std::ops::RangeBounds<f64> + fmt::Debug,
) -> Result<f64, ConfigError> {
    if value.is_finite() && range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(
            field,
            format!("must be a finite number in {range:?}, got {value}"),
        ))
    }
}

/// What a [`Retransmit`] timer says when the machine's timeout fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetransmitDue {
    /// Not armed, or not yet due: nothing to do.
    NotYet,
    /// Send the message again (the timer is disarmed until [`Retransmit::arm`]).
    Resend,
    /// Every retransmission was spent: the machine gives up.
    GiveUp,
}

/// The retransmission timer most request–reply machines need: armed when a
/// message leaves, due `retransmit_after` later, at most
/// `max_retransmissions` resends, then give up.
///
/// ```
/// use std::time::{Duration, Instant};
/// use qkd_core::machine::{Retransmit, RetransmitDue};
///
/// let t0 = Instant::now();
/// let mut timer = Retransmit::new(Duration::from_millis(100), 1);
/// timer.arm(t0);
/// assert_eq!(timer.deadline(), Some(t0 + Duration::from_millis(100)));
/// assert_eq!(timer.poll(t0), RetransmitDue::NotYet);
/// assert_eq!(timer.poll(t0 + Duration::from_millis(100)), RetransmitDue::Resend);
/// timer.arm(t0 + Duration::from_millis(100));
/// assert_eq!(timer.poll(t0 + Duration::from_secs(1)), RetransmitDue::GiveUp);
/// assert_eq!(timer.deadline(), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retransmit {
    retransmit_after: Duration,
    max_retransmissions: u32,
    sent_again: u32,
    at: Option<Instant>,
}

impl Retransmit {
    /// A disarmed timer.
    pub const fn new(retransmit_after: Duration, max_retransmissions: u32) -> Self {
        Retransmit {
            retransmit_after,
            max_retransmissions,
            sent_again: 0,
            at: None,
        }
    }

    /// The message left at `now`: due `retransmit_after` later.
    pub fn arm(&mut self, now: Instant) {
        self.at = Some(now + self.retransmit_after);
    }

    /// No reply is awaited any more.
    pub fn disarm(&mut self) {
        self.at = None;
    }

    /// When the timer is due, for [`Machine::poll_timeout`].
    pub const fn deadline(&self) -> Option<Instant> {
        self.at
    }

    /// Resends so far.
    pub const fn retransmissions(&self) -> u32 {
        self.sent_again
    }

    /// For [`Machine::handle_timeout`]: whether to resend or give up at
    /// `now`. Both disarm the timer.
    pub fn poll(&mut self, now: Instant) -> RetransmitDue {
        match self.at {
            Some(at) if at <= now => {
                self.at = None;
                if self.sent_again >= self.max_retransmissions {
                    RetransmitDue::GiveUp
                } else {
                    self.sent_again += 1;
                    RetransmitDue::Resend
                }
            }
            _ => RetransmitDue::NotYet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_field_paths() {
        let e = ConfigError::new("chunk_bytes", "must be a power of two")
            .within("store")
            .within("sync");
        assert_eq!(e.field(), "sync.store.chunk_bytes");
        assert_eq!(e.reason(), "must be a power of two");
        assert_eq!(ConfigError::new("", "x").within("a").field(), "a");
        assert_eq!(ConfigError::new("b", "x").within("").field(), "b");
    }

    #[test]
    fn check_range_refuses_nan_infinity_and_outside() {
        assert_eq!(check_range("p", 0.25, 0.0..=1.0), Ok(0.25));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.1, 1.5] {
            let e = check_range("p", bad, 0.0..=1.0).unwrap_err();
            assert_eq!(e.field(), "p");
        }
    }

    #[test]
    fn core_parameter_errors_convert_with_their_name() {
        let e: ConfigError = crate::Error::invalid("qber", "too high").into();
        assert_eq!(e.field(), "qber");
        assert_eq!(e.reason(), "too high");
    }
}
