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
//! each block for `Q` (the paper used the estimate). Alice counts on her side
//! and refuses to go past her limit; at the end Bob's `Done` carries his
//! count and both must agree.
//!
//! # Faults on the channel
//! Every message carries its block ID, round number and a CRC-32: a damaged
//! message is rejected with [`CascadeError::Malformed`] and changes nothing,
//! a lost one is resent by Bob after [`CascadeConfig::retransmit_after`], a
//! duplicate or late one is ignored (Alice answers a repeated round from a
//! cache, so a resend discloses nothing). Why the CRC stays under an
//! authenticated channel is in the [`wire`] docs.
//!
//! # The channel under Cascade
//!
//! Cascade itself authenticates nothing: whoever can put bytes on the link
//! can send it messages. What protects a run is the
//! [`auth`](crate::auth) layer under it, in one of two modes:
//!
//! - **Per message** ([`AuthenticatedChannel::seal`](crate::auth::AuthenticatedChannel::seal)
//!   / [`open`](crate::auth::AuthenticatedChannel::open)): every Cascade
//!   message carries its own Wegman–Carter tag, and `open` hands Cascade a
//!   message only once its tag verified and its pad position was not used
//!   before. Every message a machine receives is then one the peer sent,
//!   unchanged and not replayed (it may still be late, duplicated by a
//!   retransmission, or never arrive, which Cascade handles).
//! - **Transcript** ([`auth::transcript`](crate::auth::transcript)): the
//!   messages of a round travel framed but unauthenticated; both ends hash
//!   the round's conversation and compare one tag per direction at the end
//!   of the round, and keep the round's key only if both verify. Until
//!   then, any message a machine receives may have been injected, altered
//!   or replayed by an attacker. The tags make sure such a round's key is
//!   never kept; the bounds below limit what the messages can cost before
//!   the tags are checked.
//!
//! What one unauthenticated message can cost before the tag is checked,
//! whatever it holds:
//!
//! - **Memory.** Decoding allocates at most 4/3 of the message's own length
//!   (12 bytes in memory per 9-byte question, counts checked against the
//!   bytes behind them). Alice answers questions only about the passes of
//!   the agreed schedule (`0 .. params.passes()`; anything else is
//!   rejected and changes nothing), so she never asks the shared
//!   [`ShufflePlan`] for more than `params.passes() − 1` shuffles, at most
//!   [`SHUFFLE_BYTES_PER_KEY_BIT`] bytes per key bit each, computed once per
//!   key length and shared by every block. Her own state is bounded too; see
//!   [Memory](#memory).
//! - **Disclosure.** Every parity Alice answers counts in her
//!   [`leaked_bits`](CascadeAlice::leaked_bits), and she never goes past the
//!   agreed [`LeakBudget`]: forged questions can only use up the budget
//!   (the run then aborts) or lead to a count that differs from Bob's at the
//!   end (the run aborts too). The layer above must charge Alice's count,
//!   not Bob's, to privacy amplification.
//! - **Work.** Answering costs time proportional to the questions' total
//!   length in 64-bit words (at most the budget times `n/64`), plus building
//!   one packed copy of the key for each agreed pass.
//! - **Bob's key.** A forged answer sends Bob's searches the wrong way and
//!   he flips correct bits; a forged `DoneAck`, `Abort` or leak count ends
//!   the run. Confirmation and the transcript tags make sure such a key is
//!   dropped on both sides: the attacker gains a denial of service, which it
//!   has anyway.
//!
//! # Memory
//!
//! For a key of `n` bits and a schedule of `P = params.passes()` passes:
//!
//! - Alice holds her key (`n/8` bytes), at most one packed shuffled copy per
//!   pass (`n/8` bytes each, built once a pass's questions read much of the
//!   key), and the questions and answers of the last round (for resends):
//!   at most `(1 + P) / 8` bytes per key bit plus the last message's size.
//! - Bob asks only what his own schedule plans, so his state is bounded by
//!   it: his key, per pass a packed copy (`n/8` bytes), five bits per block
//!   and, with parity reuse, two bits per inner node of the block trees (a
//!   hash map of the asked nodes instead for blocks of more than 2048 bits):
//!   at most `1/8 + 10 P / 8` bytes per key bit (block size 1; a few
//!   hundredths per pass for usual block sizes), plus the searches under
//!   way (a few dozen bytes per odd block).
//! - The [`ShufflePlan`] both share holds at most
//!   [`SHUFFLE_BYTES_PER_KEY_BIT`] (15.6) bytes per key bit for each of the
//!   `P − 1` shuffled passes, once per key length and seed.
//!
//! At n = 2^17 with option 7 (14 passes) Alice holds at most 0.25 MiB of
//! her own and the plan about 25 MiB, whatever her peer sends; the test
//! `finding_3_hostile_pass_numbers_leave_alice_memory_bounded`
//! (`tests/cascade_memory.rs`) checks it with a counting allocator.
//!
//! # Driving the machines
//!
//! Both machines implement `qkd_core::machine::Machine` and
//! nothing else drives them: feed the peer's datagrams to `handle_input`,
//! send what `poll_transmit` gives, call `handle_timeout` at `poll_timeout`
//! (only Bob sets timers), and read `poll_event` until
//! [`CascadeEvent::Completed`] or [`CascadeEvent::Aborted`]. An `Err` from
//! `handle_input` means only that the datagram was rejected (damaged, for
//! another block, out of place); every end of a run is an event. Bob's
//! first questions are ready at once. `now` must not go backwards.
//! [`run_in_memory`] drives both over a perfect in-memory channel;
//! `qkd_core::sim::Network` drives them over a faulty one.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use qkd_core::{BitVec, BlockId};
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
//! let config = CascadeConfig::new(CascadeParams::for_variant(Variant::Option7, 0.027, n).unwrap());
//! let block = BlockId::new(7);
//! let mut alice = CascadeAlice::new(block, alice_key.clone(), plan.clone(), &config).unwrap();
//! let mut bob = CascadeBob::new(block, bob_key, plan, &config).unwrap();
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

use qkd_core::BlockId;
use qkd_core::machine::Machine;

pub use alice::CascadeAlice;
pub use bob::CascadeBob;
pub use params::{
    CascadeConfig, CascadeParams, DEFAULT_BICONF_MAX_PASSES, LeakBudget, MAX_PASSES, Variant,
};
pub use shuffle::{SHUFFLE_BYTES_PER_KEY_BIT, ShufflePlan};
pub use wire::{AbortReason, CascadeMessage, Question};

/// Why a Cascade machine rejected a datagram (nothing changed), or why
/// [`run_in_memory`] stopped. They carry counts and block IDs, never key
/// bits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CascadeError {
    /// The input could not be decoded (damaged or malformed message).
    #[error("malformed message: {0}")]
    Malformed(#[from] qkd_core::wire::WireError),
    /// A message for another block.
    #[error("message for block {got}, this machine runs block {expected}")]
    WrongBlock {
        /// This machine's block.
        expected: BlockId,
        /// The message's block.
        got: BlockId,
    },
    /// A well-formed message that does not fit the run: a message only this
    /// side sends, a round out of sequence, a question outside the key or
    /// the agreed passes, an answer count that differs from the questions.
    #[error("protocol violation: {reason}")]
    Protocol {
        /// What was wrong.
        reason: &'static str,
    },
    /// [`run_in_memory`] only: the run ended with an abort.
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

/// What a machine reports: each run ends with exactly one of these.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CascadeEvent {
    /// The run ended and both sides agree on the leak count.
    Completed(CascadeStats),
    /// The run was given up; the key must not be used.
    Aborted(AbortReason),
}

/// Runs Alice and Bob against each other in memory (a perfect channel) until
/// Bob's run ends; returns Bob's statistics.
///
/// # Errors
/// [`CascadeError::Aborted`] if the run aborted (Alice's leak budget, an
/// incompatible plan ...); any error a machine returned for a datagram of
/// the other, which on a perfect channel means a bug.
pub fn run_in_memory(
    alice: &mut CascadeAlice,
    bob: &mut CascadeBob,
    now: Instant,
) -> Result<CascadeStats, CascadeError> {
    loop {
        let mut moved = false;
        while let Some(msg) = bob.poll_transmit(now) {
            alice.handle_input(now, &msg)?;
            moved = true;
        }
        while let Some(msg) = alice.poll_transmit(now) {
            bob.handle_input(now, &msg)?;
            moved = true;
        }
        while alice.poll_event().is_some() {}
        match bob.poll_event() {
            Some(CascadeEvent::Completed(stats)) => return Ok(stats),
            Some(CascadeEvent::Aborted(reason)) => return Err(CascadeError::Aborted(reason)),
            None => {}
        }
        if bob.is_finished() || !moved {
            return Err(CascadeError::Protocol {
                reason: "run stalled without an event",
            });
        }
    }
}
