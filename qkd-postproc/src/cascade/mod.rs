//! Cascade error correction: two sans-IO machines, batched questions.
//!
//! ```text
//!  Bob (noisy key)                                   Alice (reference key)
//!  CascadeBob ──Questions{round r: pass, ranges}──▶ CascadeAlice
//!      ▲        (all questions of a round, one use)        │ parity of each range
//!      └──────────Answers{round r: packed parities}◀───────┘ counts every bit
//!      ...  rounds until the schedule is done  ...
//!  CascadeBob ──Done{rounds, leaked}──▶ CascadeAlice ──DoneAck{leaked}──▶ Bob
//! ```
//!
//! Cascade (Brassard and Salvail 1993) splits the key into blocks, compares
//! block parities, and binary-searches every block whose parities differ for
//! one error; later passes shuffle the key, use larger blocks, and each error
//! found there reopens the blocks of earlier passes that held it (the cascade
//! effect). The variants and their schedules are those of Martinez-Mateo et
//! al., "Demystifying the information reconciliation protocol Cascade"
//! (2015): see [`Variant`] and [`CascadeParams`].
//!
//! How this implementation is built:
//! - **Batched.** Bob sends all questions of a round in one message: the
//!   block parities of a pass, or the next sub-block of every binary search
//!   under way (including the searches the cascade effect started).
//!   Answers are packed bits. A channel use is one message of questions.
//! - **Shuffles from a seed.** Every pass's permutation is drawn from a seed
//!   both sides hold ([`ShufflePlan`]); Bob's questions carry the seed so a
//!   mismatch is caught.
//! - **On words.** Block parities are popcounts over packed `u64` words: the
//!   key itself for pass 1, a packed shuffled copy for later passes (built
//!   only when a pass needs a sub-range; flips reach it through the
//!   permutation), and a precomputed mask for the half-key blocks of late
//!   passes. The bit → block index of the cascade effect is the pass's
//!   permutation: bit `i` sits in block `pos_p(i) / k_p` of pass `p`.
//! - **Parity reuse** (options 4, 7 and 8): every parity known to both sides
//!   is remembered per pass in the binary-search tree of its block; a range
//!   whose parity is known, or implied by its parent and sibling, is never
//!   asked again, and the last block of every pass after the first is
//!   implied by the total parity known from pass 1.
//!
//! - **Smallest block first.** A flipped bit makes the blocks holding it odd
//!   in several passes at once. Searching all of them in parallel would find
//!   the same errors twice; Bob searches only the smallest odd one and sets
//!   the others aside, checking them again when no search runs
//!   ([`CascadeParams::defer_until_idle`]); by then most are even again.
//!   This is what brings options 7 and 8 down to the paper's figures in a
//!   batched protocol (option 8 at QBER 2 %, n = 2^14: f = 1.045 instead of
//!   1.062 with everything in parallel), at the price of more rounds.
//!
//! # Accounting
//! `leaked_bits` counts every parity Alice discloses (one per question; a
//! resent answer discloses nothing new). Efficiency is
//! `f = leaked_bits / (n · h2(Q))`; the `qkd ec` command uses the true QBER of
//! each frame for `Q` (the paper used the estimate). Alice counts on her side
//! and refuses to go past her limit; at the end Bob's `Done` carries his
//! count and both must agree.
//!
//! # Faults on the channel
//! Every message carries its frame ID, round number and a CRC-32: a damaged
//! message is rejected with [`CascadeError::Malformed`] and changes nothing,
//! a lost one is resent by Bob after [`CascadeConfig::retransmit_after`], a
//! duplicate or late one is ignored (Alice answers a repeated round from a
//! cache, so a resend discloses nothing). The CRC is not authentication:
//! in a deployment the channel is authenticated (Wegman–Carter), and a key
//! confirmation hash after Cascade catches residual errors.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use qkd_core::BitVec;
//! use qkd_postproc::cascade::{
//!     run_in_memory, CascadeAlice, CascadeBob, CascadeConfig, CascadeParams, ShufflePlan, Variant,
//! };
//! use rand_chacha::ChaCha20Rng;
//! use rand_core::SeedableRng;
//!
//! let mut rng = ChaCha20Rng::seed_from_u64(1);
//! let n = 10_000;
//! let alice_key = BitVec::random(n, &mut rng);
//! let mut bob_key = alice_key.clone();
//! for i in (0..n).step_by(37) {
//!     bob_key.flip(i); // 271 errors, QBER 2.7 %
//! }
//! let plan = Arc::new(ShufflePlan::random(n, &mut rng).unwrap());
//! let params = CascadeParams::for_variant(Variant::Option7, 0.027, n).unwrap();
//! let mut alice = CascadeAlice::new(7, alice_key.clone(), plan.clone(), n as u64).unwrap();
//! let mut bob = CascadeBob::new(7, bob_key, plan, CascadeConfig::new(params)).unwrap();
//! let stats = run_in_memory(&mut alice, &mut bob, Instant::now()).unwrap();
//! assert_eq!(bob.key(), &alice_key);
//! assert_eq!(stats.corrected_bits, 271);
//! assert_eq!(stats.leaked_bits, alice.leaked_bits());
//! ```

mod alice;
mod bob;
mod params;
mod shuffle;
pub mod wire;

use std::time::Instant;

pub use alice::CascadeAlice;
pub use bob::{CascadeBob, CascadeConfig};
pub use params::{CascadeParams, MAX_PASSES, Variant};
pub use shuffle::ShufflePlan;
pub use wire::{AbortReason, CascadeMessage, Question, WireError};

/// Errors of the Cascade machines, split by cause. They carry counts and
/// frame IDs, never key bits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CascadeError {
    /// The input could not be decoded (damaged or malformed message).
    #[error("malformed message: {0}")]
    Malformed(#[from] WireError),
    /// A message for another frame.
    #[error("message for frame {got}, expected frame {expected}")]
    WrongFrame {
        /// This machine's frame.
        expected: u64,
        /// The message's frame.
        got: u64,
    },
    /// The peer uses another key length or shuffle seed.
    #[error("incompatible peer: {reason}")]
    Incompatible {
        /// What differs.
        reason: &'static str,
    },
    /// The peer broke the protocol (order of rounds, counts).
    #[error("protocol violation: {reason}")]
    Protocol {
        /// What was wrong.
        reason: &'static str,
    },
    /// Answering would disclose more parity bits than allowed.
    #[error("leak limit of {limit} parity bits reached")]
    LeakLimit {
        /// The limit.
        limit: u64,
    },
    /// The caller gave an invalid parameter.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What was wrong.
        reason: &'static str,
    },
    /// The in-memory driver stopped because the run aborted.
    #[error("run aborted: {0:?}")]
    Aborted(AbortReason),
}

/// The counts of one Cascade run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CascadeStats {
    /// Key length in bits.
    pub key_len: usize,
    /// Parity bits Alice disclosed (one per question).
    pub leaked_bits: u64,
    /// Messages of questions Bob sent (rounds), not counting resends and the
    /// final `Done`. Alice sends as many answers.
    pub channel_uses: u32,
    /// Resends after a timeout.
    pub retransmissions: u32,
    /// Passes run, regular and BICONF.
    pub passes: u32,
    /// Bits Bob flipped (each flip corrects an error).
    pub corrected_bits: u64,
}

impl CascadeStats {
    /// Efficiency `leaked_bits / (n · h2(qber))`; infinite at `qber = 0`.
    #[must_use]
    pub fn efficiency(&self, qber: f64) -> f64 {
        self.leaked_bits as f64 / (self.key_len as f64 * qkd_core::h2(qber))
    }
}

/// What a machine reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CascadeEvent {
    /// The run ended and both sides agree on the leak count.
    Completed(CascadeStats),
    /// The run was given up; the key must not be used.
    Aborted(AbortReason),
}

/// Runs Alice and Bob against each other in memory (a perfect channel) until
/// Bob completes; returns Bob's statistics.
///
/// # Errors
/// An error either machine returned, or [`CascadeError::Aborted`].
pub fn run_in_memory(
    alice: &mut CascadeAlice,
    bob: &mut CascadeBob,
    now: Instant,
) -> Result<CascadeStats, CascadeError> {
    loop {
        while let Some(msg) = bob.poll_transmit(now) {
            alice.handle_input(now, &msg)?;
        }
        while let Some(msg) = alice.poll_transmit(now) {
            bob.handle_input(now, &msg)?;
        }
        while alice.poll_event().is_some() {}
        match bob.poll_event() {
            Some(CascadeEvent::Completed(stats)) => return Ok(stats),
            Some(CascadeEvent::Aborted(reason)) => return Err(CascadeError::Aborted(reason)),
            None => {}
        }
        if bob.is_finished() {
            return Err(CascadeError::Protocol {
                reason: "run ended without an event",
            });
        }
    }
}

/// Both machines implement the workspace's one [`Machine`](qkd_core::machine::Machine)
/// contract; each method is the machine's own.
mod machine_impls {
    use std::time::Instant;

    use qkd_core::machine::Machine;

    use super::{CascadeAlice, CascadeBob, CascadeError, CascadeEvent};

    impl Machine for CascadeAlice {
        type Event = CascadeEvent;
        type Error = CascadeError;

        fn handle_input(&mut self, now: Instant, datagram: &[u8]) -> Result<(), CascadeError> {
            CascadeAlice::handle_input(self, now, datagram)
        }

        fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
            CascadeAlice::poll_transmit(self, now)
        }

        fn poll_event(&mut self) -> Option<CascadeEvent> {
            CascadeAlice::poll_event(self)
        }

        fn poll_timeout(&self) -> Option<Instant> {
            CascadeAlice::poll_timeout(self)
        }

        fn handle_timeout(&mut self, now: Instant) {
            CascadeAlice::handle_timeout(self, now);
        }
    }

    impl Machine for CascadeBob {
        type Event = CascadeEvent;
        type Error = CascadeError;

        fn handle_input(&mut self, now: Instant, datagram: &[u8]) -> Result<(), CascadeError> {
            CascadeBob::handle_input(self, now, datagram)
        }

        fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
            CascadeBob::poll_transmit(self, now)
        }

        fn poll_event(&mut self) -> Option<CascadeEvent> {
            CascadeBob::poll_event(self)
        }

        fn poll_timeout(&self) -> Option<Instant> {
            CascadeBob::poll_timeout(self)
        }

        fn handle_timeout(&mut self, now: Instant) {
            CascadeBob::handle_timeout(self, now);
        }
    }
}
