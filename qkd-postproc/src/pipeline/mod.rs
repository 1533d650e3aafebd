//! The distillation pipeline: raw frames in, identical final keys out on
//! both sides, every message over one Wegman–Carter authenticated channel.
//!
//! ```text
//!  QkdDevice ─push_frame─▶ ┌──────────────────────── Pipeline (one per side) ───────────────────────┐
//!                          │ sift ─▶ estimate ─▶ cascade (chunks) ─▶ confirm ─▶ amplify ─▶ commit   │ ─▶ FinalKey / Dropped
//!   peer ◀─poll_transmit── │   per-block streams (numbered, acked, resent, in order) + control msgs │
//!   peer ──handle_input──▶ │   AuthenticatedChannel: transcript tags or a tag per message; pool     │
//!                          └────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! See [`Pipeline`] for the API a host uses, [`wire`] for the framing and
//! [`definition`] for definition files.
//!
//! # One block, step by step
//!
//! Alice owns every stage: she draws every seed and announces the
//! parameters both sides must share in the stage's first message.
//!
//! 1. **Sift.** Bob announces his detections and bases; Alice answers
//!    keep-bits ([`crate::sift`]).
//! 2. **Estimate.** Alice announces `abort_qber` and `eps_pe`, then sends a
//!    sample drawn from a fresh seed; Bob answers with his bits; both decide
//!    on the same numbers ([`crate::estimate`]). The sample leaves the key.
//! 3. **Correct.** Alice cuts the `n` key bits into Cascade *chunks*:
//!    `⌊n / chunk_bits⌋` chunks of `chunk_bits` and, for the rest, one chunk
//!    of each power of two down to `min_chunk_bits` that fits; fewer than
//!    `min_chunk_bits` bits are left over, never corrected, and counted as
//!    disclosed. She announces the variant, the chunk lengths and the
//!    shuffle seed; every chunk is one Cascade run ([`crate::cascade`]),
//!    all in parallel, and the messages the runs have to send at one turn
//!    travel as one stream message (a [batch](wire#cascade-rounds-in-one-message)),
//!    so a block costs about one frame per Cascade round in each direction,
//!    not one per round of every chunk. The shuffle seed is drawn once per pipeline (the
//!    shuffles are public; reusing a seed is safe, see
//!    [`ShufflePlan`]) so that the shuffle plans of the few chunk lengths
//!    are built once and shared by every block.
//!
//!    With the `ldpc` stage in place of `cascade` (one or the other, named
//!    by the definition), Alice instead chooses from the estimate's QBER
//!    the mother code and the punctured/shortened split of each frame
//!    ([`crate::ldpc::choose_plan`]), cuts the key into frames of
//!    `frame_bits` and one of each shorter power of two down to
//!    `min_frame_bits` (the rest left over and counted as disclosed, as
//!    above), and announces every frame's code and layout, the variant,
//!    the blind step and rounds and the decoder iterations; each frame is
//!    one [`LdpcAlice`]/[`LdpcBob`] pair in the block's stream, Bob decoding
//!    in the pipeline's calls or on a worker
//!    ([`Pipeline::set_external_correction`]). The disclosed bits are `m − p + revealed` per frame
//!    ([`crate::ldpc::rate`]); a frame that does not decode drops the block
//!    on both sides ([`DropReason::Correction`]).
//! 4. **Confirm.** Alice sends a challenge ([`crate::confirm`]) and, with
//!    it, the Toeplitz seed for the final length `ℓ`.
//! 5. **Amplify.** `ℓ` is [`finite_key_length`] of exactly the estimate's
//!    `n`, `k` and sample errors, `leak_EC` = the parities Alice disclosed
//!    (LDPC: syndrome and revealed bits) plus the leftover bits, the
//!    confirmation tag length, `ε_sec` and the confirmation's `ε_cor`;
//!    both sides hash their corrected key with the seed.
//! 6. **Commit** (symmetric). In transcript mode Alice then sends her
//!    transcript tag over every message she sent for the block; Bob checks
//!    it against what he received and answers with his own tag (per-message
//!    mode: Bob sends a sealed round end). Alice, once Bob's tag verified,
//!    the key is confirmed and every earlier block is settled, sends a
//!    sealed **Outcome** (keep, `ℓ`); Bob keeps the block when he has it
//!    ready with the same `ℓ`, feeds the pool and answers a sealed
//!    **OutcomeAck** (kept or not); Alice keeps it only on `kept = true`.
//!    So a block is kept on both sides or on neither: Bob keeps only on
//!    Alice's Outcome, Alice only on Bob's acknowledgement that he did,
//!    and before her Outcome either side may drop a block alone (it tells
//!    the peer with a sealed Abandon, and answers anything later about the
//!    block with one). Alice resends her Outcome until it is acknowledged,
//!    however long the link is down ([`PipelineEvent::Stalled`] tells the
//!    host), and settles blocks in order, so both pools are fed the same
//!    blocks in the same order. An Outcome for block `b` also tells Bob
//!    that every earlier block he still holds was dropped by Alice.
//!
//! # Accounting
//!
//! For every kept block: `sifted_bits = sample_bits + key_bits` and
//! `key_bits = corrected_bits + leftover_bits`; the final length `ℓ`
//! ([`BlockReport::final_bits`]) is rounded down to whole bytes
//! ([`BlockReport::hashed_bits`], what the Toeplitz hash outputs) and split
//! into the pool's share
//! ([`BlockReport::pool_bits`]) and the key handed out
//! ([`BlockReport::key_out_bits`]). [`PipelineStats`] sums these over kept
//! blocks, and counts dropped blocks and their sifted bits separately.
//!
//! # Restarts
//!
//! [`save_state`](qkd_core::module::ModuleHost::save_state) writes a
//! versioned state: the authentication channel's checkpoint (pool positions
//! and unused pads), the parameters and statistics, the pipeline's secret
//! seed, the blocks Alice has decided to keep and is waiting to have
//! acknowledged, and Bob's last commit. Blocks still in earlier stages are
//! not saved: a restored side has dropped them, and answers the peer's
//! messages about them with an Abandon, so the peer drops them too.
//! Per-block randomness is derived from the pipeline's seed and the block
//! number, so blocks after a restore get the same keys as in an
//! uninterrupted run. The channel's [restart rules](crate::auth#restarts)
//! apply: only the newest saved state may be restored; with
//! [`CheckpointMode::Manual`] the pipeline waits at
//! [`PipelineEvent::SaveDue`] until the host has saved, which makes a crash
//! safe; with [`CheckpointMode::Auto`] only a state saved right before the
//! pipeline was dropped (hibernation) may be restored. A crash of Alice
//! between her Outcome and its acknowledgement, restored from a state
//! saved before the Outcome, would feed the pools differently: the
//! channel's feed digests then report [`PipelineEvent::FeedDiverged`], and
//! the link must start over from a fresh pre-shared secret. With manual
//! checkpoints this cannot happen: Alice asks for a save
//! ([`PipelineEvent::SaveDue`]) when she decides to keep a block, and the
//! Outcome leaves only once it is written.
//!
//! **Two processes are saved one after the other**, never at the same
//! instant: a block settled between the two saves is in one state and not
//! in the other, and the restored pools disagree (`FeedDiverged`). Quiet the
//! link first: set the `pipeline` module's `hold_from_block` parameter to
//! the same value on both sides (the larger of their `next_block`
//! statistics, raised again if either side started past it meanwhile),
//! wait until both report `blocks_in_flight` 0, then save both. Frames
//! pushed but held are not in the state (the device offers them again after
//! the restore); the hold itself is not saved. The QPM example does this
//! for every save.
//!
//! # Threads
//!
//! The pipeline owns no thread. A host that wants several cores can
//! (a) run Alice's and Bob's pipelines on different threads when both are
//! in one process, and (b) hand the heavy steps of blocks to worker
//! threads: with [`Pipeline::set_external_work`] the pipeline queues each
//! block's Toeplitz hash, and with [`Pipeline::set_external_correction`]
//! each Cascade turn (the peer's messages for all the block's chunks and
//! the answers or questions they lead to) or LDPC decoding step, as a
//! [`WorkItem`] (`Send`); the host runs [`WorkItem::run`] anywhere and gives
//! the [`WorkDone`] back with [`Pipeline::complete_work`]. A block has at
//! most one step out; the peer's further messages for it wait in order.
//! Different blocks' steps run at once, so the gain needs several blocks in
//! flight, and each step costs two thread hand-overs: for Cascade's many
//! short turns that is worth it only where a turn is long (large chunks) or
//! the peer's answer is far away anyway. The example on [`Pipeline`] shows
//! the loop.
//!
//! For (a), a side's thread should answer each datagram before it takes
//! the next ([`poll_transmit`](Machine::poll_transmit) after every
//! [`handle_input`](Machine::handle_input)): handling everything queued
//! first and then sending makes the two threads fall into step, each idle
//! while the other works, and the several blocks in flight stop
//! overlapping. On a host whose two cores serve the link alone, a side
//! that polls its queue for a short while before it sleeps (and threads
//! pinned to different cores) also saves the wake-up of every Cascade
//! turn. Measured on 2 cores (BENCHMARKS.md, eighth session; the
//! `pipeline_cpu` example's `THREADS=2`): one thread for both sides 42–47
//! Mbit/s of sifted key at QBER 2 %, a thread per side 34–39 Mbit/s when
//! each sleeps in its queue, 54–58 Mbit/s when each polls 200 µs first.

pub mod definition;
mod ldpc;
mod stages;
mod stream;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qkd_core::machine::{ConfigError, Machine};
use qkd_core::module::{Module, ModuleHost};
use qkd_core::wire::{Protocol, WireError};
use qkd_core::{BitVec, BlockId, RawFrame, Role, SecretKey};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::amplify::ToeplitzHasher;
use crate::amplify::length::{FinalKeyLength, finite_key_length};
use crate::auth::{
    AuthEvent, AuthenticatedChannel, ChannelConfig, ChannelState, OpenError, Opened, PoolConfig,
    PresharedSecret, ReplenishShare, SealError, TagMode, Transcript,
};
use crate::cascade::{
    CascadeAlice, CascadeBob, CascadeConfig, CascadeEvent, CascadeParams, ShufflePlan,
};
use crate::confirm::{
    ConfirmAlice, ConfirmBob, ConfirmConfig, ConfirmEvent, ConfirmMessage, ConfirmedBlock,
};
use crate::estimate::{
    self, Estimate, EstimateAlice, EstimateBob, EstimateConfig, EstimateEvent, EstimateMessage,
};
use crate::ldpc::{CodeCache, LdpcAlice, LdpcBob};
use crate::sift::{self, SiftMessage};

pub use definition::{AuthMode, CheckpointMode, DefinitionError, PipelineDefinition};
pub use stages::{AuthModule, AuthStats, PipelineModule, Stage, StageKind, StageStats};
use stream::{RecvStream, SendStream};
use wire::{ControlBody, ControlKind, Frame, SeedMessage, StageParameters};

/// Version of the saved state format.
pub const STATE_VERSION: u32 = 1;
/// Blocks remembered after they are settled (to answer late messages).
const HISTORY: usize = 256;

/// The numbers of one block, for a progress line or one JSON object per block.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockReport {
    /// The block.
    pub block: u64,
    /// `"kept"` or `"dropped"`.
    pub outcome: String,
    /// Sifted bits (`sample_bits + key_bits`).
    pub sifted_bits: u64,
    /// Bits disclosed for estimation (`k`).
    pub sample_bits: u64,
    /// Errors in the sample.
    pub sample_errors: u64,
    /// The sample's error rate.
    pub qber: f64,
    /// Clopper–Pearson upper bound on the QBER at `1 − eps_pe`.
    pub qber_upper: f64,
    /// Key bits after the sample (`n = corrected_bits + leftover_bits`).
    pub key_bits: u64,
    /// Bits corrected (by Cascade or LDPC).
    pub corrected_bits: u64,
    /// Bits too few for a Cascade chunk or an LDPC frame: not corrected,
    /// counted as disclosed.
    pub leftover_bits: u64,
    /// Bits the correction disclosed: Cascade's parities (Alice's count),
    /// or LDPC's `m − p + revealed` summed over the frames (see
    /// [`crate::ldpc::rate`]).
    pub parity_bits: u64,
    /// `leak_EC` fed to the length formula: `parity_bits + leftover_bits`.
    pub leaked_bits: u64,
    /// Confirmation tag bits.
    pub confirm_tag_bits: u32,
    /// `ε_sec` used.
    pub eps_sec: f64,
    /// `ε_cor` of the confirmation.
    pub eps_cor: f64,
    /// `ε_PE` of the length formula (`ε_sec / 2`).
    pub eps_pe: f64,
    /// Final key length `ℓ` from the formula.
    pub final_bits: u64,
    /// The Toeplitz output: `ℓ` rounded down to whole bytes (keys are bytes).
    pub hashed_bits: u64,
    /// Of the hashed bits, the ones that went to the authentication pool.
    pub pool_bits: u64,
    /// Of the hashed bits, the ones handed out in [`PipelineEvent::FinalKey`].
    pub key_out_bits: u64,
    /// Cascade chunks, or LDPC frames.
    pub chunks: u32,
    /// Cascade rounds (channel uses), summed over chunks.
    pub cascade_rounds: u64,
    /// LDPC: decoding rounds, summed over frames (one per frame without
    /// blind reveals).
    #[serde(default)]
    pub ldpc_rounds: u64,
    /// LDPC: bits revealed in blind rounds (part of `parity_bits`).
    #[serde(default)]
    pub revealed_bits: u64,
    /// Wegman–Carter pad bits this side spent sealing the block's messages.
    pub auth_bits_sent: u64,
    /// Pad bits this side spent verifying the peer's messages of the block.
    pub auth_bits_received: u64,
}

/// Totals over the pipeline's life (saved with its state).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineStats {
    /// Blocks kept.
    pub blocks_kept: u64,
    /// Blocks dropped.
    pub blocks_dropped: u64,
    /// Sifted bits of kept blocks.
    pub sifted_bits: u64,
    /// Sifted bits of dropped blocks (0 if dropped before sifting).
    pub dropped_sifted_bits: u64,
    /// Sample bits of kept blocks.
    pub sample_bits: u64,
    /// Sample errors of kept blocks.
    pub sample_errors: u64,
    /// Corrected bits of kept blocks.
    pub corrected_bits: u64,
    /// Leftover bits of kept blocks.
    pub leftover_bits: u64,
    /// Parity bits of kept blocks.
    pub parity_bits: u64,
    /// Confirmation tag bits of kept blocks.
    pub confirm_tag_bits: u64,
    /// Final bits (`ℓ`) of kept blocks.
    pub final_bits: u64,
    /// Hashed bits (`ℓ` rounded down to bytes) of kept blocks.
    pub hashed_bits: u64,
    /// Of those, bits fed to the authentication pool.
    pub pool_bits: u64,
    /// Of those, bits handed out.
    pub key_out_bits: u64,
    /// Pad bits spent, both directions, all blocks and control messages.
    pub auth_bits_spent: u64,
    /// Seconds between the first frame and the last settled block.
    pub elapsed_s: f64,
}

impl PipelineStats {
    /// The QBER over every kept block's sample.
    #[must_use]
    pub fn qber(&self) -> f64 {
        if self.sample_bits == 0 {
            0.0
        } else {
            self.sample_errors as f64 / self.sample_bits as f64
        }
    }

    /// Final key bits per second (`final_bits / elapsed_s`).
    #[must_use]
    pub fn secret_key_rate(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.final_bits as f64 / self.elapsed_s
        } else {
            0.0
        }
    }
}

/// Why a block was dropped.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum DropReason {
    /// Sifting failed (inconsistent frames).
    Sift(String),
    /// Estimation aborted the block (QBER above threshold, too small ...).
    Estimate(estimate::AbortReason),
    /// Too few key bits for the smallest Cascade chunk or LDPC frame.
    TooSmall,
    /// A Cascade run aborted, or an LDPC frame did not decode.
    Correction(String),
    /// The confirmation tags differ: the keys differ.
    ConfirmMismatch,
    /// The finite-key bound leaves no secret bit.
    NoSecretKey,
    /// The round's transcript tag did not verify: messages were altered.
    TranscriptMismatch,
    /// The peer dropped the block (its Abandon, or its OutcomeAck said not kept).
    PeerDropped,
    /// No progress after every retransmission.
    Timeout,
    /// A message of the peer did not fit (a hostile or incompatible peer).
    Protocol(String),
    /// The block was in flight when the state was restored.
    Restored,
}

/// What the pipeline reports. [`FinalKey`](Self::FinalKey) and
/// [`Dropped`](Self::Dropped) are the two terminal outcomes of a block;
/// [`DefinitionMismatch`](Self::DefinitionMismatch) and
/// [`FeedDiverged`](Self::FeedDiverged) end the pipeline.
#[derive(Debug)]
#[non_exhaustive]
pub enum PipelineEvent {
    /// A block's final key, the same on both sides.
    FinalKey {
        /// The block.
        block: BlockId,
        /// The key (the pool's share already taken out).
        key: SecretKey,
        /// The block's numbers.
        stats: BlockReport,
    },
    /// A block was dropped (on both sides).
    Dropped {
        /// The block.
        block: BlockId,
        /// The stage it was in.
        stage: StageKind,
        /// Why.
        reason: DropReason,
        /// The numbers known so far.
        stats: BlockReport,
    },
    /// Call [`save_state`](qkd_core::module::ModuleHost::save_state) and
    /// write the state durably: with [`CheckpointMode::Manual`] the pipeline
    /// waits for it; with `Auto` it is a hint. Handle the events in order:
    /// the `SaveDue` of a block's deposit comes before its
    /// [`PipelineEvent::FinalKey`], so the key is handed out only once the
    /// state that keeps the block is durable.
    SaveDue,
    /// The peer's hello arrived with the same definition: blocks start.
    PeerReady,
    /// The authentication pool is running low.
    AuthLowWater {
        /// Bits left to seal with.
        remaining_bits: u64,
    },
    /// The authentication pool could not pay for a tag: the message waits.
    /// Raised once, then again only after a tag was paid for in between.
    /// A block being committed may still refill the pool (its share
    /// arrives with the outcome); when none is in flight
    /// ([`blocks_in_flight`](Pipeline::blocks_in_flight) is 0) nothing
    /// will, and the link cannot go on: start a new one from a fresh
    /// pre-shared secret.
    AuthExhausted {
        /// Bits left to seal with (less than one tag).
        remaining_bits: u64,
    },
    /// A block cannot be settled: its Outcome (Alice) has not been
    /// acknowledged after every retransmission. It is still resent; later
    /// blocks wait.
    Stalled {
        /// The block.
        block: BlockId,
    },
    /// Terminal: the peer runs another pipeline definition.
    DefinitionMismatch,
    /// Terminal: the authentication pools were fed differently. Remedy:
    /// start a new link from a fresh pre-shared secret.
    FeedDiverged {
        /// The deposit count at which they differ.
        count: u64,
    },
}

/// Why a datagram was rejected; nothing changed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// Not a well-formed pipeline frame (or damaged: CRC).
    #[error("malformed frame: {0}")]
    Malformed(#[from] WireError),
    /// The authenticated channel refused the sealed message.
    #[error("authentication refused the message: {0}")]
    Auth(#[from] OpenError),
    /// A frame for a block this side cannot take now (too far ahead).
    #[error("no room for block {0}")]
    NoRoom(BlockId),
    /// The frame does not fit this side's mode or role.
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
    /// The pipeline has ended (definition mismatch or diverged pools).
    #[error("the pipeline has ended")]
    Ended,
}

/// Why a frame from the device was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// A frame of the other role.
    #[error("frame from the wrong end of the link")]
    WrongRole,
    /// The frame's lengths are inconsistent.
    #[error("inconsistent frame: {0}")]
    Invalid(String),
    /// The frame's block is not after the last one.
    #[error("block {block} is not after block {last}")]
    OutOfOrder {
        /// The frame's block.
        block: BlockId,
        /// The last block taken.
        last: BlockId,
    },
    /// Too many frames wait already; retry after the next event.
    #[error("too many frames waiting")]
    Busy,
}

/// Why a state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The bytes are not a saved pipeline state (corrupt or truncated).
    #[error("corrupt pipeline state: {0}")]
    Corrupt(String),
    /// A state of another format version.
    #[error("pipeline state version {found}, this build reads {STATE_VERSION}")]
    Version {
        /// The version found.
        found: u32,
    },
    /// The state was saved by the other side of the link.
    #[error("pipeline state saved by {saved:?}, this pipeline is {this:?}")]
    OtherSide {
        /// The role in the state.
        saved: Role,
        /// This pipeline's role.
        this: Role,
    },
    /// The state was saved with another pipeline definition.
    #[error("pipeline state saved with another pipeline definition")]
    Definition,
    /// The authentication channel refused the state or the checkpoint.
    #[error("authentication state refused: {0}")]
    Auth(String),
    /// The pipeline has ended.
    #[error("the pipeline has ended")]
    Ended,
}

/// A heavy step of one block handed to a worker thread: its privacy
/// amplification ([`Pipeline::set_external_work`]) or one Cascade turn of
/// all its chunks ([`Pipeline::set_external_correction`]). `Send`; holds
/// key material, zeroized on drop.
pub struct WorkItem {
    /// The pipeline (and restore) that handed it out.
    epoch: u64,
    block: BlockId,
    job: Job,
}

/// Numbers each pipeline object and each restore, so that a result handed
/// out before a restore (or by another pipeline object) is never applied
/// to a block of the same number after it.
static NEXT_EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_epoch() -> u64 {
    NEXT_EPOCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What a [`WorkItem`] does.
enum Job {
    /// The Toeplitz hash of the corrected key.
    Amplify {
        hasher: ToeplitzHasher,
        seed: BitVec,
        input: BitVec,
    },
    /// The peer's correction messages of one turn, chunk (or LDPC frame)
    /// by chunk, into this side's machines (which compute the answers, the
    /// next questions or a decoding).
    Correct {
        now: Instant,
        machines: Correctors,
        entries: Vec<(u32, Vec<u8>)>,
    },
}

/// One block's correction machines, one per Cascade chunk or LDPC frame.
enum Correctors {
    CascadeAlice(Vec<CascadeAlice>),
    CascadeBob(Vec<CascadeBob>),
    LdpcAlice(Vec<LdpcAlice>),
    LdpcBob(Vec<LdpcBob>),
}

impl Correctors {
    /// This side's machines of the block's correction stage, taken out of
    /// the block (put back with [`restore`](Self::restore)).
    fn take(block: &mut Block, role: Role, correction: StageKind) -> Self {
        use core::mem::take;
        match (correction, role) {
            (StageKind::Ldpc, Role::Alice) => Correctors::LdpcAlice(take(&mut block.ldpc_alice)),
            (StageKind::Ldpc, _) => Correctors::LdpcBob(take(&mut block.ldpc_bob)),
            (_, Role::Alice) => Correctors::CascadeAlice(take(&mut block.cascade_alice)),
            _ => Correctors::CascadeBob(take(&mut block.cascade_bob)),
        }
    }

    fn restore(self, block: &mut Block) {
        match self {
            Correctors::CascadeAlice(m) => block.cascade_alice = m,
            Correctors::CascadeBob(m) => block.cascade_bob = m,
            Correctors::LdpcAlice(m) => block.ldpc_alice = m,
            Correctors::LdpcBob(m) => block.ldpc_bob = m,
        }
    }

    /// Hands each message to its chunk's (frame's) machine, in order; the
    /// first refusal ends the turn.
    fn absorb<M: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        entries: &[(u32, M)],
    ) -> Result<(), DropReason> {
        for (chunk, inner) in entries {
            let (i, inner) = (*chunk as usize, inner.as_ref());
            match self {
                Correctors::CascadeAlice(m) => feed(m, i, now, inner)?,
                Correctors::CascadeBob(m) => feed(m, i, now, inner)?,
                Correctors::LdpcAlice(m) => feed(m, i, now, inner)?,
                Correctors::LdpcBob(m) => feed(m, i, now, inner)?,
            }
        }
        Ok(())
    }
}

/// One message into machine `i` of `machines`. A rejected message changes
/// nothing: a late duplicate cannot happen in an ordered stream, so it is a
/// protocol fault.
fn feed<M: Machine>(
    machines: &mut [M],
    i: usize,
    now: Instant,
    inner: &[u8],
) -> Result<(), DropReason>
where
    M::Error: core::fmt::Display,
{
    machines
        .get_mut(i)
        .ok_or_else(|| DropReason::Protocol("no such chunk".into()))?
        .handle_input(now, inner)
        .map_err(|e| DropReason::Correction(e.to_string()))
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Job::Correct { entries, .. } = self {
            for (_, m) in entries {
                m.zeroize();
            }
        }
    }
}

impl core::fmt::Debug for WorkItem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WorkItem")
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

impl WorkItem {
    /// The block.
    #[must_use]
    pub fn block(&self) -> BlockId {
        self.block
    }

    /// Runs the step (on any thread).
    #[must_use]
    pub fn run(mut self) -> WorkDone {
        let result = match &mut self.job {
            Job::Amplify {
                hasher,
                seed,
                input,
            } => Done::Amplified(
                hasher
                    .hash(seed.as_bitslice(), input.as_bitslice())
                    .ok()
                    .and_then(|bits| SecretKey::from_bits(&bits).ok()),
            ),
            Job::Correct {
                now,
                machines,
                entries,
            } => {
                let outcome = machines.absorb(*now, entries);
                let machines = core::mem::replace(machines, Correctors::CascadeAlice(Vec::new()));
                Done::Corrected { machines, outcome }
            }
        };
        WorkDone {
            epoch: self.epoch,
            block: self.block,
            result,
        }
    }
}

/// The result of a [`WorkItem`], for [`Pipeline::complete_work`].
pub struct WorkDone {
    epoch: u64,
    block: BlockId,
    result: Done,
}

enum Done {
    Amplified(Option<SecretKey>),
    Corrected {
        machines: Correctors,
        outcome: Result<(), DropReason>,
    },
}

impl core::fmt::Debug for WorkDone {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WorkDone")
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

impl WorkDone {
    /// The block.
    #[must_use]
    pub fn block(&self) -> BlockId {
        self.block
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for this side's frame (messages of the peer may be buffered).
    WaitFrame,
    Sift,
    Estimate,
    Correct,
    Confirm,
    /// Waiting for the round's end (tags, amplification).
    RoundEnd,
    /// Alice: Outcome (keep) sent, waiting for its acknowledgement.
    Committing,
}

impl Phase {
    /// The stage of this phase; `correction` is the definition's correction stage.
    fn stage(self, correction: StageKind) -> StageKind {
        match self {
            Phase::WaitFrame | Phase::Sift => StageKind::Sift,
            Phase::Estimate => StageKind::Estimate,
            Phase::Correct => correction,
            Phase::Confirm => StageKind::Confirm,
            Phase::RoundEnd | Phase::Committing => StageKind::Amplify,
        }
    }
}

/// One block in flight.
struct Block {
    id: BlockId,
    frame: Option<RawFrame>,
    phase: Phase,
    send: SendStream,
    recv: RecvStream,
    own_transcript: Option<Transcript>,
    peer_transcript: Option<Transcript>,
    rng: ChaCha20Rng,
    est_alice: Option<EstimateAlice>,
    est_bob: Option<EstimateBob>,
    est_params: Option<(f64, f64)>,
    estimate: Option<Estimate>,
    key: Option<BitVec>,
    chunks: Vec<u32>,
    cascade_alice: Vec<CascadeAlice>,
    cascade_bob: Vec<CascadeBob>,
    ldpc_alice: Vec<LdpcAlice>,
    ldpc_bob: Vec<LdpcBob>,
    chunks_done: usize,
    confirm_alice: Option<ConfirmAlice>,
    confirm_bob: Option<ConfirmBob>,
    confirmed: Option<ConfirmedBlock>,
    seed: Option<SeedMessage>,
    length: Option<FinalKeyLength>,
    final_key: Option<SecretKey>,
    /// A heavy step of this block is on a worker ([`WorkItem`]): the
    /// peer's further messages wait in the receive stream, and the idle
    /// timeout does not run.
    working: bool,
    /// Alice: Bob's round end arrived (his tag verified, or his RoundEnd).
    peer_round_end: bool,
    /// Bob: Alice's tag verified (transcript mode).
    own_round_ok: bool,
    /// The control message this side resends until answered (tag, round
    /// end, outcome), as a full frame.
    control: Option<Vec<u8>>,
    /// The frame answering a repeat of the peer's control message.
    reply: Option<Vec<u8>>,
    control_deadline: Option<Instant>,
    control_retries: u32,
    stalled_reported: bool,
    idle_deadline: Instant,
    report: BlockReport,
}

impl Block {
    /// Boxed: a block is a few kilobytes and moves in and out of the
    /// pipeline's map on every message; a box makes each move a pointer.
    fn new(id: BlockId, master: &[u8; 32], now: Instant, idle: Duration) -> Box<Self> {
        let mut seed = blake3::Hasher::new_keyed(master);
        seed.update(b"block rng");
        seed.update(&id.to_be_bytes());
        let mut bytes = *seed.finalize().as_bytes();
        let rng = ChaCha20Rng::from_seed(bytes);
        bytes.zeroize();
        Box::new(Block {
            id,
            frame: None,
            phase: Phase::WaitFrame,
            send: SendStream::default(),
            recv: RecvStream::default(),
            own_transcript: None,
            peer_transcript: None,
            rng,
            est_alice: None,
            est_bob: None,
            est_params: None,
            estimate: None,
            key: None,
            chunks: Vec::new(),
            cascade_alice: Vec::new(),
            cascade_bob: Vec::new(),
            ldpc_alice: Vec::new(),
            ldpc_bob: Vec::new(),
            chunks_done: 0,
            confirm_alice: None,
            confirm_bob: None,
            confirmed: None,
            seed: None,
            length: None,
            final_key: None,
            working: false,
            peer_round_end: false,
            own_round_ok: false,
            control: None,
            reply: None,
            control_deadline: None,
            control_retries: 0,
            stalled_reported: false,
            idle_deadline: now + idle,
            report: BlockReport {
                block: id.get(),
                outcome: "dropped".into(),
                ..BlockReport::default()
            },
        })
    }
}

/// What happened to a settled block (kept for late messages).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Settled {
    Kept,
    Dropped,
}

/// The parts of a saved state applied after the channel is restored.
struct Restored {
    stages: Vec<(StageKind, stages::Settings, StageStats)>,
    totals: PipelineStats,
    next_block: Option<u64>,
    last_committed: Option<u64>,
    committing: Vec<SavedCommit>,
    max_blocks_in_flight: u32,
    in_flight: Vec<SavedInFlight>,
    undelivered: Vec<SavedCommit>,
}

/// A block that was in flight (not committing) when the state was saved:
/// a restored pipeline reports it dropped.
#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedInFlight {
    block: u64,
    stage: StageKind,
}

/// Alice's block waiting for Bob's acknowledgement, or a kept block whose
/// [`PipelineEvent::FinalKey`] the host had not taken yet, as saved.
#[derive(Serialize, Deserialize)]
struct SavedCommit {
    block: u64,
    final_key: Vec<u8>,
    report: BlockReport,
}

impl Drop for SavedCommit {
    fn drop(&mut self) {
        self.final_key.zeroize();
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedState {
    version: u32,
    role: Role,
    digest: [u8; 32],
    master: Zeroizing<[u8; 32]>,
    channel: ChannelState,
    stages: Vec<(StageKind, stages::Settings, StageStats)>,
    totals: PipelineStats,
    next_block: Option<u64>,
    last_committed: Option<u64>,
    committing: Vec<SavedCommit>,
    max_blocks_in_flight: u32,
    /// Absent in states saved before it was recorded.
    #[serde(default)]
    in_flight: Vec<SavedInFlight>,
    /// Blocks kept since the save before this one, whose keys the host
    /// hands out after this save (absent in states saved before it was
    /// recorded).
    #[serde(default)]
    undelivered: Vec<SavedCommit>,
}

/// One side's distillation pipeline: a [`Machine`].
///
/// - **Create**: [`Pipeline::new`] from a [`PipelineDefinition`], the
///   [`Role`], the [`PresharedSecret`] (consumed: see the
///   [restart rules](crate::auth#restarts)) and a 32-byte secret seed from
///   the host's CSPRNG (every random choice of the pipeline is derived from
///   it); or [`Pipeline::from_state`] from a saved state.
/// - **Input**: [`push_frame`](Self::push_frame) (the device's frames, in
///   block order; [`wants_frame`](Self::wants_frame) says when there is
///   room), and the [`Machine`] methods `handle_input` (the peer's
///   datagrams) and `handle_timeout`.
/// - **Output**: `poll_transmit` (datagrams for the peer: the host frames
///   them on a byte stream, e.g. with a length prefix), `poll_event`
///   ([`PipelineEvent`]), `poll_timeout`; with external work,
///   [`poll_work`](Self::poll_work) / [`complete_work`](Self::complete_work).
/// - **Getters**: [`stats`](Self::stats) (totals for a progress line),
///   [`auth_key_left`](Self::auth_key_left), [`definition_digest`](Self::definition_digest),
///   [`blocks_in_flight`](Self::blocks_in_flight), and the modules through
///   [`ModuleHost`] (`module("cascade")` ...), which also saves and restores.
///
/// After every input drain `poll_transmit` and `poll_event`, then wait for
/// the next datagram or `poll_timeout`. `now` must not go backwards.
///
/// ```
/// use std::time::Instant;
/// use qkd_core::machine::Machine;
/// use qkd_core::module::ModuleHost;
/// use qkd_core::{QkdDevice, Role, SecretKey, SimulatedBb84, SimulatorConfig};
/// use qkd_postproc::auth::{PresharedSecret, SecretId};
/// use qkd_postproc::pipeline::{Pipeline, PipelineDefinition, PipelineEvent};
///
/// let definition = PipelineDefinition::default();
/// let secret = SecretKey::from_slice(&[7; 4096]); // provisioned on both nodes
/// let new = |role, seed| {
///     Pipeline::new(&definition, role, PresharedSecret::new(SecretId::new(1), secret.clone()), seed)
/// };
/// let mut alice = new(Role::Alice, [1; 32])?;
/// let mut bob = new(Role::Bob, [2; 32])?;
/// let device = SimulatorConfig { qber: 0.02, frame_slots: 1 << 17, seed: 5, ..Default::default() };
/// let mut dev_a = SimulatedBb84::device(device.clone(), Role::Alice)?.with_frame_limit(2);
/// let mut dev_b = SimulatedBb84::device(device, Role::Bob)?.with_frame_limit(2);
/// let now = Instant::now();
/// while let Some(frame) = dev_a.next_frame()? { alice.push_frame(now, frame)?; }
/// while let Some(frame) = dev_b.next_frame()? { bob.push_frame(now, frame)?; }
///
/// // The host's loop: here a perfect in-memory link instead of TCP.
/// let (mut keys_a, mut keys_b) = (Vec::new(), Vec::new());
/// for _ in 0..10_000 {
///     let mut moved = false;
///     while let Some(d) = alice.poll_transmit(now) { let _ = bob.handle_input(now, &d); moved = true; }
///     while let Some(d) = bob.poll_transmit(now) { let _ = alice.handle_input(now, &d); moved = true; }
///     for (p, keys) in [(&mut alice, &mut keys_a), (&mut bob, &mut keys_b)] {
///         // With `set_external_work(true)`, worker threads would run these:
///         while let Some(work) = p.poll_work() { p.complete_work(now, work.run()); moved = true; }
///         while let Some(event) = p.poll_event() {
///             match event {
///                 PipelineEvent::FinalKey { block, key, stats } => {
///                     assert_eq!(stats.hashed_bits, stats.pool_bits + stats.key_out_bits);
///                     keys.push((block, key));
///                 }
///                 PipelineEvent::SaveDue => { let _state = p.save_state()?; /* write it */ }
///                 _ => {}
///             }
///         }
///     }
///     if !moved { break; }
/// }
/// assert_eq!(keys_a.len(), 2);
/// for ((ba, ka), (bb, kb)) in keys_a.iter().zip(&keys_b) {
///     assert_eq!(ba, bb);
///     assert_eq!(ka.expose_secret(), kb.expose_secret());
/// }
/// let s = alice.stats();
/// println!("{} blocks, QBER {:.4}, {} auth bits left", s.blocks_kept, s.qber(), alice.auth_key_left());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pipeline {
    role: Role,
    definition: PipelineDefinition,
    digest: [u8; 32],
    channel: AuthenticatedChannel,
    master: Zeroizing<[u8; 32]>,
    shuffle_seed: u64,
    plans: HashMap<(usize, u64), Arc<ShufflePlan>>,
    /// LDPC codes built so far (a few per frame length).
    codes: CodeCache,
    /// Alice: the efficiencies her last LDPC frames needed (the start of
    /// the next block's frames, `adaptive_start`).
    ldpc_start: ldpc::StartLearner,
    /// The definition's correction stage (`cascade` or `ldpc`).
    correction: StageKind,
    blocks: BTreeMap<BlockId, Box<Block>>,
    frames: VecDeque<RawFrame>,
    history: BTreeMap<BlockId, (Settled, Option<Vec<u8>>)>,
    last_committed: Option<BlockId>,
    last_frame: Option<BlockId>,
    /// Blocks below this are forgotten (dropped at a restore).
    forgotten_below: Option<BlockId>,
    outbox: VecDeque<Vec<u8>>,
    events: VecDeque<PipelineEvent>,
    hello_deadline: Option<Instant>,
    peer_ready: bool,
    ended: bool,
    /// A seal failed for want of pad and none succeeded since (so
    /// [`PipelineEvent::AuthExhausted`] is raised once per shortage).
    auth_starved: bool,
    waiting_for_save: bool,
    /// Manual checkpoints: the keys of blocks kept since the last save, so
    /// that the next state can hand them out again after a crash.
    kept_since_save: Vec<SavedCommit>,
    external_work: bool,
    external_correction: bool,
    /// This object's number since its creation or last restore (see
    /// [`WorkItem`]).
    epoch: u64,
    work: VecDeque<WorkItem>,
    totals: PipelineStats,
    auth: AuthModule,
    control_module: PipelineModule,
    start: Option<Instant>,
    now: Option<Instant>,
    /// Pad bits spent before the current accounting (kept across restores).
    auth_bits_base: u64,
}

impl core::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pipeline")
            .field("role", &self.role)
            .field("peer_ready", &self.peer_ready)
            .field(
                "blocks",
                &self
                    .blocks
                    .values()
                    .map(|b| {
                        (
                            b.id,
                            b.phase,
                            b.frame.is_some(),
                            b.send.next_seq(),
                            b.recv.next,
                            b.control.is_some(),
                        )
                    })
                    .collect::<Vec<_>>(),
            )
            .field("frames_waiting", &self.frames.len())
            .field("totals", &self.totals)
            .finish_non_exhaustive()
    }
}

fn channel_config(definition: &PipelineDefinition) -> ChannelConfig {
    ChannelConfig {
        pool: PoolConfig {
            share: ReplenishShare::PartsPerMillion {
                ppm: definition.auth_share_ppm,
            },
            ..PoolConfig::default()
        },
        mode: if definition.tag_bits == 64 {
            TagMode::Bits64
        } else {
            TagMode::Bits128
        },
        max_payload: crate::auth::MAX_PAYLOAD,
    }
}

fn derive_u64(master: &[u8; 32], label: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new_keyed(master);
    h.update(label);
    let out = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// The chunk lengths for `n` key bits and the leftover.
fn chunk_lengths(n: u64, chunk_bits: u32, min_chunk_bits: u32) -> (Vec<u32>, u64) {
    let c = u64::from(chunk_bits);
    let mut chunks = vec![chunk_bits; (n / c) as usize];
    let mut rest = n % c;
    let mut p = chunk_bits / 2;
    while p >= min_chunk_bits && p > 0 {
        if rest >= u64::from(p) {
            chunks.push(p);
            rest -= u64::from(p);
        }
        p /= 2;
    }
    (chunks, rest)
}

impl Pipeline {
    /// A fresh pipeline for `role`, keyed from the pre-shared `secret`
    /// (identical on both sides, used once), with `seed` from the host's
    /// CSPRNG (different per side and per start).
    ///
    /// # Errors
    /// A [`ConfigError`] for a secret the pool refuses (too short).
    pub fn new(
        definition: &PipelineDefinition,
        role: Role,
        secret: PresharedSecret,
        seed: [u8; 32],
    ) -> Result<Self, ConfigError> {
        let (channel, first) = AuthenticatedChannel::new(role, secret, channel_config(definition))
            .map_err(|e| ConfigError::new("secret", e.to_string()))?;
        let mut pipeline = Self::assemble(definition, role, channel, seed);
        match definition.checkpoints {
            CheckpointMode::Auto => pipeline
                .channel
                .commit(first)
                .map_err(|e| ConfigError::new("secret", e.to_string()))?,
            CheckpointMode::Manual => {
                // The first state must be written before anything is sent.
                drop(first);
                pipeline.waiting_for_save = true;
                pipeline.events.push_back(PipelineEvent::SaveDue);
            }
        }
        Ok(pipeline)
    }

    fn assemble(
        definition: &PipelineDefinition,
        role: Role,
        channel: AuthenticatedChannel,
        seed: [u8; 32],
    ) -> Self {
        let mut definition = definition.clone();
        for s in &mut definition.stages {
            s.role = Some(role);
        }
        let master = Zeroizing::new(seed);
        let correction = definition
            .stages
            .iter()
            .find(|s| s.kind.is_correction())
            .map_or(StageKind::Cascade, |s| s.kind);
        Pipeline {
            role,
            digest: definition.digest(),
            shuffle_seed: derive_u64(&master, b"shuffle seed"),
            auth: AuthModule {
                stats: AuthStats::default(),
                mode: definition.authentication,
                tag_bits: definition.tag_bits,
                share_ppm: definition.auth_share_ppm,
            },
            control_module: PipelineModule {
                max_blocks_in_flight: definition.max_blocks_in_flight,
                hold_from_block: stages::NO_HOLD,
                blocks_in_flight: 0,
                frames_waiting: 0,
                next_block: 0,
            },
            definition,
            channel,
            master,
            plans: HashMap::new(),
            codes: CodeCache::new(),
            ldpc_start: ldpc::StartLearner::default(),
            correction,
            blocks: BTreeMap::new(),
            frames: VecDeque::new(),
            history: BTreeMap::new(),
            last_committed: None,
            last_frame: None,
            forgotten_below: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            hello_deadline: None,
            peer_ready: false,
            ended: false,
            auth_starved: false,
            waiting_for_save: false,
            kept_since_save: Vec::new(),
            external_work: false,
            external_correction: false,
            epoch: next_epoch(),
            work: VecDeque::new(),
            totals: PipelineStats::default(),
            start: None,
            now: None,
            auth_bits_base: 0,
        }
    }

    /// A pipeline restored from a state [saved](ModuleHost::save_state) by
    /// this side with this definition. It continues strictly after every
    /// pad position the saved pipeline may have used; blocks that were in
    /// flight are dropped on both sides.
    ///
    /// # Errors
    /// A [`StateError`]: corrupt, another version, the other side's, another definition.
    pub fn from_state(
        definition: &PipelineDefinition,
        role: Role,
        state: &[u8],
    ) -> Result<Self, StateError> {
        let SavedState {
            version: _,
            role: _,
            digest: _,
            master,
            channel,
            stages,
            totals,
            next_block,
            last_committed,
            committing,
            max_blocks_in_flight,
            in_flight,
            undelivered,
        } = Self::parse_state(definition, role, state)?;
        let channel = AuthenticatedChannel::restore(role, &channel_config(definition), channel)
            .map_err(|e| StateError::Auth(e.to_string()))?;
        let mut pipeline = Self::assemble(definition, role, channel, *master);
        pipeline.apply_saved(Restored {
            stages,
            totals,
            next_block,
            last_committed,
            committing,
            max_blocks_in_flight,
            in_flight,
            undelivered,
        });
        Ok(pipeline)
    }

    fn parse_state(
        definition: &PipelineDefinition,
        role: Role,
        state: &[u8],
    ) -> Result<SavedState, StateError> {
        let saved: SavedState =
            serde_json::from_slice(state).map_err(|e| StateError::Corrupt(e.to_string()))?;
        if saved.version != STATE_VERSION {
            return Err(StateError::Version {
                found: saved.version,
            });
        }
        if saved.role != role {
            return Err(StateError::OtherSide {
                saved: saved.role,
                this: role,
            });
        }
        if saved.digest != definition.digest() {
            return Err(StateError::Definition);
        }
        Ok(saved)
    }

    fn apply_saved(&mut self, saved: Restored) {
        for (kind, settings, stats) in &saved.stages {
            if let Some(stage) = self.definition.stages.iter_mut().find(|s| s.kind == *kind) {
                stage.settings = settings.clone();
                stage.stats = stats.clone();
            }
        }
        self.totals = saved.totals.clone();
        self.auth_bits_base = saved.totals.auth_bits_spent;
        self.control_module.max_blocks_in_flight = saved.max_blocks_in_flight;
        self.last_frame = saved
            .next_block
            .and_then(|n| n.checked_sub(1))
            .map(BlockId::new);
        self.control_module.next_block = saved.next_block.unwrap_or(0);
        self.forgotten_below = saved.next_block.map(BlockId::new);
        self.last_committed = saved.last_committed.map(BlockId::new);
        if let Some(b) = self.last_committed {
            self.history.insert(b, (Settled::Kept, None));
        }
        let now_placeholder = Instant::now();
        for commit in &saved.committing {
            let id = BlockId::new(commit.block);
            let mut block = Block::new(id, &self.master, now_placeholder, Duration::ZERO);
            block.phase = Phase::Committing;
            block.report = commit.report.clone();
            block.final_key = Some(SecretKey::from_slice(&commit.final_key));
            // Saved only when confirmed (see `save_state`): the proof the
            // pool asks for when the acknowledgement comes.
            block.confirmed = Some(crate::confirm::ConfirmedBlock::new(id));
            block.peer_round_end = true;
            // Re-sealed with a fresh pad when first sent (the old one lies
            // below the peer's restored window).
            block.control = None;
            self.blocks.insert(id, block);
        }
        // Keys of the blocks kept just before the save, which the host
        // hands out after it: again (a host that did gets one twice, the
        // same key for the same block).
        for kept in &saved.undelivered {
            self.events.push_back(PipelineEvent::FinalKey {
                block: BlockId::new(kept.block),
                key: SecretKey::from_slice(&kept.final_key),
                stats: kept.report.clone(),
            });
        }
        // Blocks in flight at the save are gone on both sides (the peer's
        // restored pipeline drops its own): say so, so the host does not
        // wait for them.
        for lost in &saved.in_flight {
            let id = BlockId::new(lost.block);
            if !self.blocks.contains_key(&id) {
                self.events.push_back(PipelineEvent::Dropped {
                    block: id,
                    stage: lost.stage,
                    reason: DropReason::Restored,
                    stats: BlockReport {
                        block: id.get(),
                        outcome: "dropped".into(),
                        ..BlockReport::default()
                    },
                });
            }
        }
        // The first checkpoint of the restored channel.
        match self.definition.checkpoints {
            CheckpointMode::Auto => {
                let checkpoint = self.channel.checkpoint();
                let _ = self.channel.commit(checkpoint);
            }
            CheckpointMode::Manual => {
                self.waiting_for_save = true;
                self.events.push_back(PipelineEvent::SaveDue);
            }
        }
        self.drain_channel_events();
    }

    /// This side.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// The digest of the definition (see [`PipelineDefinition::digest`]).
    #[must_use]
    pub fn definition_digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Totals since the pipeline was created (saved with its state).
    #[must_use]
    pub fn stats(&self) -> &PipelineStats {
        &self.totals
    }

    /// Bits left in this side's authentication key stream.
    #[must_use]
    pub fn auth_key_left(&self) -> u64 {
        self.channel.pool().send_remaining_bits()
    }

    /// The authenticated channel (read-only).
    #[must_use]
    pub fn channel(&self) -> &AuthenticatedChannel {
        &self.channel
    }

    /// Blocks in flight on this side.
    #[must_use]
    pub fn blocks_in_flight(&self) -> usize {
        self.blocks.len()
    }

    /// Whether a frame pushed now would start at once.
    #[must_use]
    pub fn wants_frame(&self) -> bool {
        !self.ended
            && self.frames.is_empty()
            && self.started_blocks() < self.control_module.max_blocks_in_flight as usize
    }

    /// Whether the pipeline has ended ([`PipelineEvent::DefinitionMismatch`]
    /// or [`PipelineEvent::FeedDiverged`]).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.ended
    }

    /// With `true`, privacy amplification is handed out as [`WorkItem`]s
    /// ([`poll_work`](Self::poll_work)) instead of being computed inside
    /// the pipeline's calls.
    pub fn set_external_work(&mut self, external: bool) {
        self.external_work = external;
    }

    /// With `true`, each Cascade turn of a block (the peer's messages for
    /// all its chunks, and the answers or next questions they lead to) is
    /// handed out as a [`WorkItem`] instead of being computed inside
    /// [`handle_input`](Machine::handle_input). Different blocks' turns can
    /// then run on different worker threads while this thread keeps the
    /// protocol going; one block has at most one step out at a time, and
    /// the peer's further messages for it wait, in order, until the step
    /// comes back. The messages sent are the same bits either way.
    pub fn set_external_correction(&mut self, external: bool) {
        self.external_correction = external;
    }

    /// The next heavy step to run on a worker thread (external work only).
    pub fn poll_work(&mut self) -> Option<WorkItem> {
        self.work.pop_front()
    }

    /// Gives back a finished [`WorkItem`]. A result for a block that was
    /// dropped meanwhile, or handed out before a restore or by another
    /// pipeline object, is ignored.
    pub fn complete_work(&mut self, now: Instant, done: WorkDone) {
        self.touch(now);
        if done.epoch != self.epoch {
            return;
        }
        let Some(mut block) = self.blocks.remove(&done.block) else {
            return;
        };
        if !block.working {
            self.put_back(now, block);
            return;
        }
        block.working = false;
        let result = match done.result {
            Done::Amplified(Some(key)) => {
                block.final_key = Some(key);
                self.after_amplify(now, &mut block);
                Ok(())
            }
            Done::Amplified(None) => Err(DropReason::NoSecretKey),
            Done::Corrected { machines, outcome } => {
                machines.restore(&mut block);
                outcome
                    .and_then(|()| match self.correction {
                        StageKind::Ldpc => self.pump_ldpc(now, &mut block),
                        _ => self.pump_cascade(now, &mut block),
                    })
                    // The peer's messages that waited for this step.
                    .and_then(|()| self.deliver(now, &mut block).map_or(Ok(()), Err))
            }
        };
        match result {
            Ok(()) => self.put_back(now, block),
            Err(reason) => self.drop_block(now, block, reason, true),
        }
        self.drain_channel_events();
        self.progress(now);
    }

    /// Whether the first waiting frame may start now.
    fn can_start_frame(&self) -> bool {
        self.frames.front().is_some_and(|f| {
            f.block.get() < self.control_module.hold_from_block
                && self.started_blocks() < self.control_module.max_blocks_in_flight as usize
        })
    }

    fn started_blocks(&self) -> usize {
        self.blocks.values().filter(|b| b.frame.is_some()).count()
    }

    fn touch(&mut self, now: Instant) {
        self.start.get_or_insert(now);
        self.now = Some(now);
        let elapsed = now.duration_since(self.start.unwrap_or(now)).as_secs_f64();
        self.totals.elapsed_s = self.totals.elapsed_s.max(elapsed);
        for s in &mut self.definition.stages {
            s.stats.elapsed_s = self.totals.elapsed_s;
        }
    }

    fn stage_mut(&mut self, kind: StageKind) -> &mut Stage {
        let index = self
            .definition
            .stages
            .iter()
            .position(|s| s.kind == kind)
            .unwrap_or(0);
        &mut self.definition.stages[index]
    }

    fn idle_timeout(&self) -> Duration {
        self.definition
            .retransmit_after
            .saturating_mul(self.definition.max_retransmissions.saturating_mul(2).max(4))
    }

    /// Feeds one frame from this side's device. Frames must come in
    /// increasing block order; a frame waits while
    /// [`max_blocks_in_flight`](PipelineDefinition::max_blocks_in_flight)
    /// blocks are in flight (at most as many wait again; beyond,
    /// [`PushError::Busy`]).
    ///
    /// # Errors
    /// [`PushError`]; the frame is not taken.
    pub fn push_frame(&mut self, now: Instant, frame: RawFrame) -> Result<(), PushError> {
        self.touch(now);
        if (frame.detections.is_some()) != (self.role == Role::Bob) {
            return Err(PushError::WrongRole);
        }
        frame
            .validate()
            .map_err(|e| PushError::Invalid(e.to_string()))?;
        if let Some(last) = self.frames.back().map(|f| f.block).or(self.last_frame)
            && frame.block <= last
        {
            return Err(PushError::OutOfOrder {
                block: frame.block,
                last,
            });
        }
        if self.frames.len() >= self.control_module.max_blocks_in_flight as usize {
            return Err(PushError::Busy);
        }
        self.frames.push_back(frame);
        self.progress(now);
        Ok(())
    }

    // ----- starting blocks -----

    fn start_frames(&mut self, now: Instant) {
        if !self.peer_ready || self.ended {
            return;
        }
        while self.can_start_frame() {
            let Some(frame) = self.frames.pop_front() else {
                break;
            };
            let id = frame.block;
            self.last_frame = Some(id);
            self.control_module.next_block = id.get().saturating_add(1);
            let mut block = self
                .blocks
                .remove(&id)
                .unwrap_or_else(|| Block::new(id, &self.master, now, Duration::ZERO));
            block.idle_deadline = now + self.idle_timeout();
            let stage = self.stage_mut(StageKind::Sift);
            stage.stats.blocks_in += 1;
            stage.stats.bits_in += frame.slots as u64;
            block.frame = Some(frame);
            block.phase = Phase::Sift;
            if self.definition.authentication == AuthMode::Transcript {
                block.own_transcript = Some(self.channel.start_transcript());
                block.peer_transcript = Some(self.channel.start_peer_transcript());
            }
            if self.role == Role::Bob {
                let announcement = block
                    .frame
                    .as_ref()
                    .map(|f| sift::announce(f).map(|a| SiftMessage::Announcement(a).encode()));
                match announcement {
                    Some(Ok(bytes)) => self.push_message(&mut block, bytes),
                    Some(Err(e)) => {
                        self.drop_block(now, block, DropReason::Sift(e.to_string()), true);
                        continue;
                    }
                    None => {}
                }
            }
            // Alice speaks second (Bob announces): an empty acknowledgement
            // tells Bob she has the block, so a Bob that dropped it at a
            // restore answers with an Abandon at once instead of leaving
            // her to wait for every retransmission to time out.
            if self.role == Role::Alice && block.recv.next == 0 {
                block.recv.ack_due = true;
            }
            // Messages the peer sent before the frame arrived.
            match self.deliver(now, &mut block) {
                Some(reason) => self.drop_block(now, block, reason, true),
                None => self.put_back(now, block),
            }
        }
        // Blocks of the peer far ahead that never got a frame here: forget
        // the oldest when the map is full.
        self.control_module.frames_waiting = self.frames.len() as u64;
    }

    fn push_message(&mut self, block: &mut Block, message: Vec<u8>) {
        let seq = block.send.next_seq();
        if let Some(t) = &mut block.own_transcript {
            let (header, message) = transcript_entry(block.id, seq, &message);
            t.absorb_parts(self.role, &[&header, message]);
        }
        block.send.push(message);
    }

    /// Puts a block back into the map unless it has been settled.
    fn put_back(&mut self, _now: Instant, block: Box<Block>) {
        self.blocks.insert(block.id, block);
        self.control_module.blocks_in_flight = self.blocks.len() as u64;
    }

    // ----- in-order delivery and the stages -----

    /// Delivers the block's messages in order; `Some(reason)` when the
    /// block must be dropped.
    fn deliver(&mut self, now: Instant, block: &mut Block) -> Option<DropReason> {
        block.frame.as_ref()?;
        while !block.working
            && let Some(message) = block.recv.pop()
        {
            let seq = block.recv.next - 1;
            if let Some(t) = &mut block.peer_transcript {
                let (header, message) = transcript_entry(block.id, seq, &message);
                t.absorb_parts(self.role.peer(), &[&header, message]);
            }
            block.idle_deadline = now + self.idle_timeout();
            if let Err(reason) = self.on_message(now, block, &message) {
                return Some(reason);
            }
        }
        None
    }
}

/// A message's entry in the round transcript, `block u64 | seq u32 |
/// message`, as the pieces [`Transcript::absorb_parts`] hashes in place.
fn transcript_entry(block: BlockId, seq: u32, message: &[u8]) -> ([u8; 12], &[u8]) {
    let mut header = [0u8; 12];
    header[..8].copy_from_slice(&block.to_be_bytes());
    header[8..].copy_from_slice(&seq.to_be_bytes());
    (header, message)
}

impl Pipeline {
    /// One stage message of the peer, in order.
    fn on_message(
        &mut self,
        now: Instant,
        block: &mut Block,
        message: &[u8],
    ) -> Result<(), DropReason> {
        let protocol = message.first().copied().and_then(Protocol::from_id);
        let bad = |what: &str| DropReason::Protocol(what.to_owned());
        match (self.role, block.phase, protocol) {
            // Alice: Bob's announcement.
            (Role::Alice, Phase::Sift, Some(Protocol::Sift)) => {
                let SiftMessage::Announcement(ann) =
                    SiftMessage::decode(message).map_err(|e| bad(&e.to_string()))?
                else {
                    return Err(bad("expected an announcement"));
                };
                let frame = block.frame.as_ref().ok_or_else(|| bad("no frame"))?;
                let (decision, key) =
                    sift::sift_alice(frame, &ann).map_err(|e| DropReason::Sift(e.to_string()))?;
                self.push_message(block, SiftMessage::Decision(decision).encode());
                self.sifted(block, key)?;
                self.start_estimate(now, block)
            }
            // Bob: Alice's decision.
            (Role::Bob, Phase::Sift, Some(Protocol::Sift)) => {
                let SiftMessage::Decision(decision) =
                    SiftMessage::decode(message).map_err(|e| bad(&e.to_string()))?
                else {
                    return Err(bad("expected a decision"));
                };
                let frame = block.frame.as_ref().ok_or_else(|| bad("no frame"))?;
                let key = sift::sift_bob(frame, &decision)
                    .map_err(|e| DropReason::Sift(e.to_string()))?;
                self.sifted(block, key)?;
                block.phase = Phase::Estimate;
                Ok(())
            }
            // Bob: Alice's estimation parameters, then her sample.
            (Role::Bob, Phase::Estimate, Some(Protocol::Pipeline)) => {
                match StageParameters::decode(message).map_err(|e| bad(&e.to_string()))? {
                    StageParameters::Estimate { abort_qber, eps_pe } => {
                        block.est_params = Some((abort_qber, eps_pe));
                        // Bob's read-only copy follows what Alice announced.
                        let settings = &mut self.stage_mut(StageKind::Estimate).settings;
                        settings.abort_qber = abort_qber;
                        settings.eps_pe = eps_pe;
                        Ok(())
                    }
                    _ => Err(bad("parameters out of place")),
                }
            }
            (Role::Bob, Phase::Estimate, Some(Protocol::Estimate)) => {
                let (abort_qber, eps_pe) = block
                    .est_params
                    .ok_or_else(|| bad("sample before parameters"))?;
                if block.est_bob.is_none() {
                    let EstimateMessage::Sample {
                        sifted_bits, bits, ..
                    } = EstimateMessage::decode(message).map_err(|e| bad(&e.to_string()))?
                    else {
                        return Err(bad("expected a sample"));
                    };
                    let k = bits.len() as u64;
                    if k == 0 || k >= sifted_bits {
                        return Err(bad("sample size"));
                    }
                    // Alice chose the sample size; Bob checks the rest.
                    let config = EstimateConfig {
                        sample_fraction: k as f64 / sifted_bits as f64,
                        min_sample_bits: 1,
                        abort_qber,
                        eps_pe,
                        ..EstimateConfig::default()
                    };
                    let key = block.key.take().ok_or_else(|| bad("no key"))?;
                    block.est_bob = Some(
                        EstimateBob::new(block.id, key, &config)
                            .map_err(|e| bad(&e.to_string()))?,
                    );
                }
                let bob = block.est_bob.as_mut().ok_or_else(|| bad("no machine"))?;
                bob.handle_input(now, message)
                    .map_err(|e| bad(&e.to_string()))?;
                let mut replies = Vec::new();
                while let Some(reply) = bob.poll_transmit(now) {
                    replies.push(reply);
                }
                for reply in replies {
                    self.push_message(block, reply);
                }
                match block.est_bob.as_mut().and_then(Machine::poll_event) {
                    Some(event) => self.estimated(block, event),
                    None => Ok(()),
                }
            }
            // Alice: Bob's reply.
            (Role::Alice, Phase::Estimate, Some(Protocol::Estimate)) => {
                let alice = block.est_alice.as_mut().ok_or_else(|| bad("no machine"))?;
                alice
                    .handle_input(now, message)
                    .map_err(|e| bad(&e.to_string()))?;
                match alice.poll_event() {
                    Some(event) => {
                        self.estimated(block, event)?;
                        self.start_correction(now, block)
                    }
                    None => Ok(()),
                }
            }
            // Bob: the LDPC parameters.
            (Role::Bob, Phase::Correct, Some(Protocol::Pipeline))
                if !wire::is_chunk(message) && self.correction == StageKind::Ldpc =>
            {
                let StageParameters::Ldpc {
                    mode,
                    max_rounds,
                    max_iterations,
                    frames,
                } = StageParameters::decode(message).map_err(|e| bad(&e.to_string()))?
                else {
                    return Err(bad("expected LDPC parameters"));
                };
                self.bob_ldpc(now, block, (mode, max_rounds, max_iterations), &frames)
            }
            // Bob: the correction parameters.
            (Role::Bob, Phase::Correct, Some(Protocol::Pipeline))
                if !wire::is_chunk(message) && !wire::is_chunk_batch(message) =>
            {
                let StageParameters::Correct {
                    variant,
                    shuffle_seed,
                    chunks,
                } = StageParameters::decode(message).map_err(|e| bad(&e.to_string()))?
                else {
                    return Err(bad("expected correction parameters"));
                };
                if !block.cascade_bob.is_empty() {
                    return Err(bad("correction parameters twice"));
                }
                let key = block.key.take().ok_or_else(|| bad("no key"))?;
                let total: u64 = chunks.iter().map(|c| u64::from(*c)).sum();
                if total > key.len() as u64 {
                    return Err(bad("chunks longer than the key"));
                }
                block.report.leftover_bits = key.len() as u64 - total;
                self.stage_mut(StageKind::Cascade).settings.variant = variant;
                let qber = block.estimate.as_ref().map_or(0.0, |e| e.qber);
                let mut at = 0usize;
                for &c in &chunks {
                    let c = c as usize;
                    let part = key.slice(at..at + c).to_bitvec();
                    at += c;
                    let plan = self
                        .plan(c, shuffle_seed)
                        .map_err(|e| bad(&e.to_string()))?;
                    let config =
                        cascade_config(variant, qber, c).map_err(|e| bad(&e.to_string()))?;
                    let bob = CascadeBob::new(block.id, part, plan, &config)
                        .map_err(|e| bad(&e.to_string()))?;
                    block.cascade_bob.push(bob);
                }
                drop(key);
                block.chunks = chunks;
                block.report.chunks = block.chunks.len() as u32;
                self.pump_cascade(now, block)
            }
            // One round of several chunks' Cascade messages.
            (_, Phase::Correct, Some(Protocol::Pipeline))
                if self.correction == StageKind::Cascade =>
            {
                let entries = wire::decode_chunk_batch(message, block.chunks.len())
                    .map_err(|e| bad(&e.to_string()))?;
                if self.correct(now, block, &entries)? {
                    self.pump_cascade(now, block)?;
                }
                Ok(())
            }
            (_, Phase::Correct, Some(Protocol::Pipeline)) => {
                let entry = wire::decode_chunk(message).map_err(|e| bad(&e.to_string()))?;
                if self.correct(now, block, &[entry])? {
                    self.pump_ldpc(now, block)?;
                }
                Ok(())
            }
            // Bob: Alice's challenge, then the Toeplitz seed.
            (Role::Bob, Phase::Confirm, Some(Protocol::Confirm)) => {
                let ConfirmMessage::Challenge { tag_bits, .. } =
                    ConfirmMessage::decode(message).map_err(|e| bad(&e.to_string()))?
                else {
                    return Err(bad("expected a challenge"));
                };
                if tag_bits < 32 {
                    return Err(bad("confirmation tag shorter than 32 bits"));
                }
                let key = block.key.as_ref().ok_or_else(|| bad("no key"))?;
                let config = ConfirmConfig {
                    tag_bits,
                    ..ConfirmConfig::default()
                };
                let mut bob = ConfirmBob::new(block.id, key.as_bitslice(), &config)
                    .map_err(|e| bad(&e.to_string()))?;
                bob.handle_input(now, message)
                    .map_err(|e| bad(&e.to_string()))?;
                while let Some(verdict) = bob.poll_transmit(now) {
                    self.push_message(block, verdict);
                }
                block.report.confirm_tag_bits = u32::from(tag_bits);
                self.stage_mut(StageKind::Confirm).settings.tag_bits = tag_bits;
                match bob.poll_event() {
                    Some(ConfirmEvent::Confirmed(proof)) => {
                        block.confirmed = Some(proof);
                        block.confirm_bob = Some(bob);
                        Ok(())
                    }
                    _ => Err(DropReason::ConfirmMismatch),
                }
            }
            (Role::Bob, Phase::Confirm, Some(Protocol::Pipeline)) => {
                let StageParameters::Amplify { eps_sec } =
                    StageParameters::decode(message).map_err(|e| bad(&e.to_string()))?
                else {
                    return Err(bad("expected amplification parameters"));
                };
                if block.confirmed.is_none() {
                    return Err(bad("amplification before confirmation"));
                }
                // Bob computes the length himself from the same numbers.
                let key_len = block.key.as_ref().map_or(0, BitVec::len) as u64;
                let tag_bits = block.report.confirm_tag_bits;
                let eps_cor = ConfirmConfig {
                    tag_bits: tag_bits as u8,
                    ..ConfirmConfig::default()
                }
                .eps_cor(key_len);
                let estimate = block.estimate.as_ref().ok_or_else(|| bad("no estimate"))?;
                let input =
                    estimate.finite_key_input(block.report.leaked_bits, tag_bits, eps_sec, eps_cor);
                let length = finite_key_length(&input).map_err(|e| bad(&e.to_string()))?;
                self.stage_mut(StageKind::Amplify).settings.eps_sec = eps_sec;
                block.report.eps_sec = input.eps_sec;
                block.report.eps_cor = input.eps_cor;
                block.report.eps_pe = input.eps_pe;
                block.report.final_bits = length.bits;
                block.length = Some(length);
                Ok(())
            }
            (Role::Bob, Phase::Confirm, Some(Protocol::Amplify)) => {
                let seed = SeedMessage::decode(message).map_err(|e| bad(&e.to_string()))?;
                let key = block.key.as_ref().ok_or_else(|| bad("no key"))?;
                let Some(length) = block.length else {
                    return Err(bad("seed before the amplification parameters"));
                };
                if seed.block != block.id || seed.input_bits != key.len() as u64 {
                    return Err(bad("seed for another key"));
                }
                if seed.output_bits != length.bits / 8 * 8 {
                    return Err(bad("final length differs from this side's formula"));
                }
                block.report.hashed_bits = seed.output_bits;
                block.seed = Some(seed);
                self.start_amplify(now, block)
            }
            // Alice: Bob's verdict.
            (Role::Alice, Phase::Confirm, Some(Protocol::Confirm)) => {
                let alice = block
                    .confirm_alice
                    .as_mut()
                    .ok_or_else(|| bad("no machine"))?;
                alice
                    .handle_input(now, message)
                    .map_err(|e| bad(&e.to_string()))?;
                match alice.poll_event() {
                    Some(ConfirmEvent::Confirmed(proof)) => {
                        block.confirmed = Some(proof);
                        self.stage_mut(StageKind::Confirm).stats.blocks_out += 1;
                        self.start_amplify(now, block)?;
                        if self.definition.authentication == AuthMode::Transcript {
                            // Alice's tag over every message she sent.
                            let transcript = block
                                .own_transcript
                                .take()
                                .ok_or_else(|| bad("no transcript"))?;
                            let count = block.send.next_seq();
                            let sealed = self
                                .channel
                                .seal_transcript(transcript)
                                .map_err(|e| bad(&e.to_string()))?;
                            block.report.auth_bits_sent += u64::from(self.definition.tag_bits);
                            block.control = Some(
                                Frame::Control {
                                    kind: ControlKind::TranscriptTag,
                                    block: block.id,
                                    count,
                                    sealed: &sealed,
                                }
                                .encode(),
                            );
                            block.control_deadline = None;
                            block.control_retries = 0;
                        }
                        Ok(())
                    }
                    Some(_) => Err(DropReason::ConfirmMismatch),
                    None => Ok(()),
                }
            }
            _ => Err(bad("message out of place")),
        }
    }

    fn sifted(&mut self, block: &mut Block, key: BitVec) -> Result<(), DropReason> {
        block.report.sifted_bits = key.len() as u64;
        let stage = self.stage_mut(StageKind::Sift);
        stage.stats.blocks_out += 1;
        stage.stats.bits_out += key.len() as u64;
        block.key = Some(key);
        block.phase = Phase::Estimate;
        let stage = self.stage_mut(StageKind::Estimate);
        stage.stats.blocks_in += 1;
        stage.stats.bits_in += block.report.sifted_bits;
        Ok(())
    }

    fn start_estimate(&mut self, now: Instant, block: &mut Block) -> Result<(), DropReason> {
        let s = self.stage_mut(StageKind::Estimate).settings.clone();
        let config = EstimateConfig {
            sample_fraction: s.sample_fraction,
            min_sample_bits: s.min_sample_bits,
            abort_qber: s.abort_qber,
            eps_pe: s.eps_pe,
            ..EstimateConfig::default()
        };
        let key = block.key.take().ok_or(DropReason::TooSmall)?;
        let mut alice = EstimateAlice::new(block.id, key, &config, &mut block.rng)
            .map_err(|e| DropReason::Protocol(e.to_string()))?;
        if let Some(event) = alice.poll_event() {
            return self.estimated(block, event);
        }
        self.push_message(
            block,
            StageParameters::Estimate {
                abort_qber: s.abort_qber,
                eps_pe: s.eps_pe,
            }
            .encode(),
        );
        while let Some(sample) = alice.poll_transmit(now) {
            self.push_message(block, sample);
        }
        block.est_alice = Some(alice);
        Ok(())
    }

    fn estimated(&mut self, block: &mut Block, event: EstimateEvent) -> Result<(), DropReason> {
        match event {
            EstimateEvent::Estimated { estimate, key } => {
                let r = &mut block.report;
                r.sample_bits = estimate.sample_bits;
                r.sample_errors = estimate.sample_errors;
                r.qber = estimate.qber;
                r.qber_upper = estimate.qber_upper;
                r.key_bits = estimate.key_bits();
                let stage = self.stage_mut(StageKind::Estimate);
                stage.stats.blocks_out += 1;
                stage.stats.bits_out += key.len() as u64;
                stage.stats.leaked_bits += estimate.sample_bits;
                stage.stats.sample_bits += estimate.sample_bits;
                stage.stats.sample_errors += estimate.sample_errors;
                stage.stats.last_qber = estimate.qber;
                let correction = self.stage_mut(self.correction);
                correction.stats.blocks_in += 1;
                correction.stats.bits_in += key.len() as u64;
                block.key = Some(key);
                block.estimate = Some(estimate);
                block.phase = Phase::Correct;
                block.est_alice = None;
                Ok(())
            }
            EstimateEvent::Aborted { reason, .. } => Err(DropReason::Estimate(reason)),
        }
    }

    fn plan(&mut self, n: usize, seed: u64) -> Result<Arc<ShufflePlan>, ConfigError> {
        if let Some(plan) = self.plans.get(&(n, seed)) {
            return Ok(plan.clone());
        }
        if self.plans.len() >= 32 {
            self.plans.clear();
        }
        let plan = Arc::new(ShufflePlan::new(n, seed)?);
        self.plans.insert((n, seed), plan.clone());
        Ok(plan)
    }

    fn start_correction(&mut self, now: Instant, block: &mut Block) -> Result<(), DropReason> {
        if self.correction == StageKind::Ldpc {
            return self.start_ldpc(now, block);
        }
        let s = self.stage_mut(StageKind::Cascade).settings.clone();
        let key = block.key.take().ok_or(DropReason::TooSmall)?;
        let (chunks, leftover) = chunk_lengths(key.len() as u64, s.chunk_bits, s.min_chunk_bits);
        if chunks.is_empty() {
            return Err(DropReason::TooSmall);
        }
        block.report.leftover_bits = leftover;
        self.push_message(
            block,
            StageParameters::Correct {
                variant: s.variant,
                shuffle_seed: self.shuffle_seed,
                chunks: chunks.clone(),
            }
            .encode(),
        );
        let qber = block.estimate.as_ref().map_or(0.0, |e| e.qber);
        let mut at = 0usize;
        for &c in &chunks {
            let c = c as usize;
            let part = key.slice(at..at + c).to_bitvec();
            at += c;
            let plan = self
                .plan(c, self.shuffle_seed)
                .map_err(|e| DropReason::Protocol(e.to_string()))?;
            let config = cascade_config(s.variant, qber, c)
                .map_err(|e| DropReason::Protocol(e.to_string()))?;
            block.cascade_alice.push(
                CascadeAlice::new(block.id, part, plan, &config)
                    .map_err(|e| DropReason::Protocol(e.to_string()))?,
            );
        }
        drop(key);
        block.report.chunks = chunks.len() as u32;
        block.chunks = chunks;
        Ok(())
    }

    /// Moves Cascade messages into the stream, every chunk's in one batch
    /// (see [`wire`](wire#cascade-rounds-in-one-message)), and collects the
    /// outcomes.
    /// The peer's correction messages of one turn into this side's
    /// machines: here (then the caller pumps the machines' output), or,
    /// with external correction, as a [`WorkItem`] (`Ok(false)`: the block
    /// waits for [`complete_work`](Self::complete_work), which pumps).
    fn correct(
        &mut self,
        now: Instant,
        block: &mut Block,
        entries: &[(u32, &[u8])],
    ) -> Result<bool, DropReason> {
        let mut machines = Correctors::take(block, self.role, self.correction);
        if self.external_correction {
            block.working = true;
            let entries = entries
                .iter()
                .map(|(chunk, inner)| (*chunk, inner.to_vec()))
                .collect();
            self.work.push_back(WorkItem {
                epoch: self.epoch,
                block: block.id,
                job: Job::Correct {
                    now,
                    machines,
                    entries,
                },
            });
            return Ok(false);
        }
        let outcome = machines.absorb(now, entries);
        machines.restore(block);
        outcome.map(|()| true)
    }

    fn pump_cascade(&mut self, now: Instant, block: &mut Block) -> Result<(), DropReason> {
        // One message per chunk and turn is the rule; `later` holds any
        // further ones (none with today's machines) for following batches.
        let mut batch: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut later: Vec<Vec<(u32, Vec<u8>)>> = Vec::new();
        let mut events = Vec::new();
        let mut take = |i: usize, msg: Vec<u8>, turn: usize| {
            if turn == 0 {
                batch.push((i as u32, msg));
            } else {
                if later.len() < turn {
                    later.resize_with(turn, Vec::new);
                }
                later[turn - 1].push((i as u32, msg));
            }
        };
        match self.role {
            Role::Alice => {
                for (i, m) in block.cascade_alice.iter_mut().enumerate() {
                    let mut turn = 0;
                    while let Some(msg) = m.poll_transmit(now) {
                        take(i, msg, turn);
                        turn += 1;
                    }
                    while let Some(e) = m.poll_event() {
                        events.push(e);
                    }
                }
            }
            Role::Bob => {
                for (i, m) in block.cascade_bob.iter_mut().enumerate() {
                    let mut turn = 0;
                    while let Some(msg) = m.poll_transmit(now) {
                        take(i, msg, turn);
                        turn += 1;
                    }
                    while let Some(e) = m.poll_event() {
                        events.push(e);
                    }
                }
            }
        }
        for mut entries in core::iter::once(batch).chain(later) {
            if !entries.is_empty() {
                let borrowed: Vec<(u32, &[u8])> =
                    entries.iter().map(|(i, m)| (*i, m.as_slice())).collect();
                let message = wire::encode_chunk_batch(&borrowed);
                drop(borrowed);
                for (_, m) in &mut entries {
                    m.zeroize();
                }
                self.push_message(block, message);
            }
        }
        for e in events {
            match e {
                CascadeEvent::Completed(stats) => {
                    block.chunks_done += 1;
                    block.report.cascade_rounds += u64::from(stats.channel_uses);
                }
                CascadeEvent::Aborted(reason) => {
                    return Err(DropReason::Correction(format!("{reason:?}")));
                }
            }
        }
        if block.chunks_done == block.chunks.len() && !block.chunks.is_empty() {
            self.corrected(now, block)?;
        }
        Ok(())
    }

    fn corrected(&mut self, now: Instant, block: &mut Block) -> Result<(), DropReason> {
        let (key, parity) = match self.role {
            _ if self.correction == StageKind::Ldpc => self.ldpc_key(block)?,
            Role::Alice => {
                let parity = block
                    .cascade_alice
                    .iter()
                    .map(CascadeAlice::leaked_bits)
                    .sum::<u64>();
                let parts: Vec<_> = block
                    .cascade_alice
                    .drain(..)
                    .map(CascadeAlice::into_key)
                    .collect();
                let slices: Vec<_> = parts.iter().map(BitVec::as_bitslice).collect();
                (BitVec::concat(&slices), parity)
            }
            Role::Bob => {
                let parity = block
                    .cascade_bob
                    .iter()
                    .map(|b| b.stats().leaked_bits)
                    .sum::<u64>();
                let parts: Vec<_> = block
                    .cascade_bob
                    .drain(..)
                    .map(CascadeBob::into_key)
                    .collect();
                let slices: Vec<_> = parts.iter().map(BitVec::as_bitslice).collect();
                (BitVec::concat(&slices), parity)
            }
        };
        block.report.corrected_bits = key.len() as u64;
        block.report.parity_bits = parity;
        block.report.leaked_bits = parity + block.report.leftover_bits;
        let stage = self.stage_mut(self.correction);
        stage.stats.blocks_out += 1;
        stage.stats.bits_out += key.len() as u64;
        stage.stats.leaked_bits += parity + block.report.leftover_bits;
        let confirm = self.stage_mut(StageKind::Confirm);
        confirm.stats.blocks_in += 1;
        confirm.stats.bits_in += key.len() as u64;
        block.phase = Phase::Confirm;
        block.key = Some(key);
        if self.role == Role::Alice {
            self.start_confirm(now, block)?;
        }
        Ok(())
    }

    fn start_confirm(&mut self, now: Instant, block: &mut Block) -> Result<(), DropReason> {
        let tag_bits = self.stage_mut(StageKind::Confirm).settings.tag_bits;
        let amplify = self.stage_mut(StageKind::Amplify).settings.clone();
        let key = block.key.as_ref().ok_or(DropReason::TooSmall)?;
        let config = ConfirmConfig {
            tag_bits,
            ..ConfirmConfig::default()
        };
        let estimate = block.estimate.as_ref().ok_or(DropReason::TooSmall)?;
        let eps_cor = config.eps_cor(key.len() as u64);
        let input = estimate.finite_key_input(
            block.report.leaked_bits,
            u32::from(tag_bits),
            amplify.eps_sec,
            eps_cor,
        );
        block.report.confirm_tag_bits = u32::from(tag_bits);
        block.report.eps_sec = input.eps_sec;
        block.report.eps_cor = input.eps_cor;
        block.report.eps_pe = input.eps_pe;
        let length = finite_key_length(&input).map_err(|e| DropReason::Protocol(e.to_string()))?;
        block.report.final_bits = length.bits;
        block.length = Some(length);
        if length.bits == 0 || length.bits >= key.len() as u64 {
            return Err(DropReason::NoSecretKey);
        }
        let mut alice =
            ConfirmAlice::new(block.id, key.as_bitslice(), &config, &mut block.rng, now)
                .map_err(|e| DropReason::Protocol(e.to_string()))?;
        let construction = amplify.construction();
        let output_bits = length.bits / 8 * 8;
        if output_bits == 0 {
            return Err(DropReason::NoSecretKey);
        }
        block.report.hashed_bits = output_bits;
        let bits = wire::seed_bits(construction, key.len() as u64, output_bits);
        let seed = BitVec::random(bits as usize, &mut block.rng);
        let seed = SeedMessage {
            block: block.id,
            construction,
            output_bits,
            input_bits: key.len() as u64,
            seed,
        };
        while let Some(challenge) = alice.poll_transmit(now) {
            self.push_message(block, challenge);
        }
        self.push_message(
            block,
            StageParameters::Amplify {
                eps_sec: amplify.eps_sec,
            }
            .encode(),
        );
        self.push_message(block, seed.encode());
        block.seed = Some(seed);
        block.confirm_alice = Some(alice);
        Ok(())
    }

    fn start_amplify(&mut self, now: Instant, block: &mut Block) -> Result<(), DropReason> {
        let seed = block.seed.as_ref().ok_or(DropReason::NoSecretKey)?;
        let key = block.key.take().ok_or(DropReason::NoSecretKey)?;
        let hasher = ToeplitzHasher::new(key.len(), seed.output_bits as usize, seed.construction)
            .map_err(|e| DropReason::Protocol(e.to_string()))?;
        block.phase = Phase::RoundEnd;
        let stage = self.stage_mut(StageKind::Amplify);
        stage.stats.blocks_in += 1;
        stage.stats.bits_in += key.len() as u64;
        let item = WorkItem {
            epoch: self.epoch,
            block: block.id,
            job: Job::Amplify {
                hasher,
                seed: seed.seed.clone(),
                input: key,
            },
        };
        if self.external_work {
            block.working = true;
            self.work.push_back(item);
            return Ok(());
        }
        let Done::Amplified(key) = item.run().result else {
            unreachable!("an amplification gives a key");
        };
        block.final_key = Some(key.ok_or(DropReason::NoSecretKey)?);
        self.after_amplify(now, block);
        Ok(())
    }

    /// The final key is ready on this side.
    fn after_amplify(&mut self, now: Instant, block: &mut Block) {
        if self.role == Role::Bob {
            self.bob_round_end(now, block);
        }
    }

    /// Bob, once the key is ready (and, in transcript mode, Alice's tag verified):
    /// his tag or round end.
    fn bob_round_end(&mut self, _now: Instant, block: &mut Block) {
        if block.final_key.is_none() || block.control.is_some() {
            return;
        }
        let frame = match self.definition.authentication {
            AuthMode::Transcript => {
                if !block.own_round_ok {
                    return;
                }
                let Some(transcript) = block.own_transcript.as_ref() else {
                    return;
                };
                let count = block.send.next_seq();
                // Sealed from a copy: a refused seal keeps the round's
                // transcript for the next try.
                let result = self.channel.seal_transcript(transcript.clone());
                self.note_seal(&result);
                match result {
                    Ok(sealed) => {
                        block.own_transcript = None;
                        Frame::Control {
                            kind: ControlKind::TranscriptTag,
                            block: block.id,
                            count,
                            sealed: &sealed,
                        }
                        .encode()
                    }
                    Err(_) => return,
                }
            }
            AuthMode::PerMessage => {
                let body = ControlBody::RoundEnd { block: block.id }.encode();
                let result = self.channel.seal(&body);
                self.note_seal(&result);
                match result {
                    Ok(sealed) => Frame::Control {
                        kind: ControlKind::RoundEnd,
                        block: block.id,
                        count: 0,
                        sealed: &sealed,
                    }
                    .encode(),
                    Err(_) => return,
                }
            }
        };
        block.report.auth_bits_sent += u64::from(self.definition.tag_bits);
        block.reply = Some(frame.clone());
        block.control = Some(frame);
        block.control_deadline = None;
        block.control_retries = 0;
    }
}

fn cascade_config(
    variant: crate::cascade::Variant,
    qber: f64,
    n: usize,
) -> Result<CascadeConfig, ConfigError> {
    Ok(CascadeConfig::new(CascadeParams::for_variant(
        variant,
        qber.min(0.49),
        n,
    )?))
}

impl Pipeline {
    /// Records the outcome of a seal: a pool that cannot pay raises
    /// [`PipelineEvent::AuthExhausted`] once per shortage.
    fn note_seal<T>(&mut self, result: &Result<T, SealError>) {
        match result {
            Ok(_) => self.auth_starved = false,
            // A checkpoint not yet written is a wait, not a shortage.
            Err(SealError::Pool(crate::auth::PoolError::CheckpointRequired)) => {}
            Err(SealError::Pool(_)) if !self.auth_starved => {
                self.auth_starved = true;
                self.events.push_back(PipelineEvent::AuthExhausted {
                    remaining_bits: self.auth_key_left(),
                });
            }
            Err(_) => {}
        }
    }

    fn seal_control(&mut self, body: &ControlBody) -> Result<Vec<u8>, SealError> {
        let result = self.channel.seal(&body.encode());
        self.note_seal(&result);
        let sealed = result?;
        Ok(Frame::Control {
            kind: body.kind(),
            block: body.block(),
            count: 0,
            sealed: &sealed,
        }
        .encode())
    }

    fn remember(&mut self, id: BlockId, settled: Settled, reply: Option<Vec<u8>>) {
        self.history.insert(id, (settled, reply));
        while self.history.len() > HISTORY {
            self.history.pop_first();
        }
    }

    /// Drops a block on this side; `tell` sends the peer a sealed Abandon.
    fn drop_block(&mut self, now: Instant, mut block: Box<Block>, reason: DropReason, tell: bool) {
        let _ = now;
        let stage = block.phase.stage(self.correction);
        self.stage_mut(stage).stats.blocks_dropped += 1;
        self.totals.blocks_dropped += 1;
        self.totals.dropped_sifted_bits += block.report.sifted_bits;
        block.report.outcome = "dropped".into();
        let abandon = if tell && block.frame.is_some() {
            self.seal_control(&ControlBody::Abandon { block: block.id })
                .ok()
        } else {
            None
        };
        if let Some(frame) = &abandon {
            block.report.auth_bits_sent += u64::from(self.definition.tag_bits);
            self.outbox.push_back(frame.clone());
        }
        self.remember(block.id, Settled::Dropped, abandon);
        self.events.push_back(PipelineEvent::Dropped {
            block: block.id,
            stage,
            reason,
            stats: block.report.clone(),
        });
        self.control_module.blocks_in_flight = self.blocks.len() as u64;
    }

    /// Keeps a block: feeds the pool, hands the key out.
    fn keep_block(&mut self, now: Instant, mut block: Box<Block>) {
        let (Some(proof), Some(key)) = (block.confirmed, block.final_key.take()) else {
            self.drop_block(
                now,
                block,
                DropReason::Protocol("nothing to keep".into()),
                false,
            );
            return;
        };
        let hashed_bits = key.bit_len() as u64;
        match self.channel.replenish_from_block(&proof, key) {
            Ok((rest, _account)) => {
                let r = &mut block.report;
                r.outcome = "kept".into();
                r.key_out_bits = rest.bit_len() as u64;
                r.hashed_bits = hashed_bits;
                r.pool_bits = hashed_bits - r.key_out_bits;
                let t = &mut self.totals;
                t.blocks_kept += 1;
                t.sifted_bits += r.sifted_bits;
                t.sample_bits += r.sample_bits;
                t.sample_errors += r.sample_errors;
                t.corrected_bits += r.corrected_bits;
                t.leftover_bits += r.leftover_bits;
                t.parity_bits += r.parity_bits;
                t.confirm_tag_bits += u64::from(r.confirm_tag_bits);
                t.final_bits += r.final_bits;
                t.hashed_bits += r.hashed_bits;
                t.pool_bits += r.pool_bits;
                t.key_out_bits += r.key_out_bits;
                let stage = self.stage_mut(StageKind::Amplify);
                stage.stats.blocks_out += 1;
                stage.stats.bits_out += hashed_bits;
                self.last_committed = Some(block.id);
                let reply = block.reply.take();
                self.remember(block.id, Settled::Kept, reply);
                // The deposit's checkpoint request first: a host that
                // handles the events in order writes the state holding
                // the deposit before it hands the key out, so a crash
                // never leaves a key delivered here for a block that the
                // restored pipeline (and so the peer) does not keep.
                self.drain_channel_events();
                if self.definition.checkpoints == CheckpointMode::Manual {
                    self.kept_since_save.push(SavedCommit {
                        block: block.id.get(),
                        final_key: rest.expose_secret().to_vec(),
                        report: block.report.clone(),
                    });
                }
                self.events.push_back(PipelineEvent::FinalKey {
                    block: block.id,
                    key: rest,
                    stats: block.report.clone(),
                });
            }
            Err((e, key)) => {
                drop(key);
                self.drop_block(now, block, DropReason::Protocol(e.to_string()), false);
            }
        }
        self.control_module.blocks_in_flight = self.blocks.len() as u64;
    }

    fn drain_channel_events(&mut self) {
        while let Some(event) = self.channel.poll_event() {
            match event {
                AuthEvent::CheckpointDue => match self.definition.checkpoints {
                    CheckpointMode::Auto => {
                        let checkpoint = self.channel.checkpoint();
                        let _ = self.channel.commit(checkpoint);
                    }
                    CheckpointMode::Manual => {
                        if !self.waiting_for_save {
                            self.waiting_for_save = true;
                            self.events.push_back(PipelineEvent::SaveDue);
                        }
                    }
                },
                AuthEvent::LowWater { remaining_bits } => {
                    self.events
                        .push_back(PipelineEvent::AuthLowWater { remaining_bits });
                }
                AuthEvent::FeedDiverged { count } => {
                    self.ended = true;
                    self.events.push_back(PipelineEvent::FeedDiverged { count });
                }
                _ => {}
            }
        }
        let p = self.channel.pool().stats();
        let c = self.channel.stats();
        self.auth.stats = AuthStats {
            sent_pad_bits: p.sent_pad_bits,
            received_pad_bits: p.received_pad_bits,
            replenished_bits: p.replenished_bits,
            remaining_bits: self.channel.pool().send_remaining_bits(),
            forgeries_rejected: c.forgeries_rejected,
            replays_rejected: c.replays_rejected,
            forgery_bound: c.forgery_bound,
        };
        self.totals.auth_bits_spent = p.sent_pad_bits + p.received_pad_bits;
    }

    /// Starts waiting frames, sends Alice's outcomes in block order.
    fn progress(&mut self, now: Instant) {
        self.start_frames(now);
        if self.role != Role::Alice || self.ended {
            return;
        }
        // Alice settles blocks in order: the oldest block decides.
        let ids: Vec<BlockId> = self.blocks.keys().copied().collect();
        for id in ids {
            let Some(block) = self.blocks.get(&id) else {
                continue;
            };
            let ready =
                block.phase == Phase::RoundEnd && block.peer_round_end && block.final_key.is_some();
            if block.phase == Phase::Committing {
                if block.control.is_none() {
                    // Restored: seal the outcome again with a fresh pad.
                    let final_bits = block.report.hashed_bits;
                    if let Ok(frame) = self.seal_control(&ControlBody::Outcome {
                        block: id,
                        keep: true,
                        final_bits,
                    }) && let Some(b) = self.blocks.get_mut(&id)
                    {
                        b.control = Some(frame);
                        b.control_deadline = None;
                    }
                }
                break;
            }
            if !ready {
                // A block not yet ready holds back every later outcome.
                if block.frame.is_some() || block.phase != Phase::WaitFrame {
                    break;
                }
                continue;
            }
            let final_bits = block.report.hashed_bits;
            if let Ok(frame) = self.seal_control(&ControlBody::Outcome {
                block: id,
                keep: true,
                final_bits,
            }) && let Some(b) = self.blocks.get_mut(&id)
            {
                b.report.auth_bits_sent += u64::from(self.definition.tag_bits);
                b.phase = Phase::Committing;
                b.control = Some(frame);
                b.control_deadline = None;
                b.control_retries = 0;
                // Manual checkpoints: the decision to keep is written
                // before the Outcome leaves. Bob may deposit the block as
                // soon as it arrives; an Alice restored from a state saved
                // before it would drop the block, and the pools would be
                // fed differently (the two-process crash of the QPM test).
                // Restored with it, she seals the Outcome again and Bob
                // answers from what he kept.
                if self.definition.checkpoints == CheckpointMode::Manual && !self.waiting_for_save {
                    self.waiting_for_save = true;
                    self.events.push_back(PipelineEvent::SaveDue);
                }
            }
            break;
        }
        self.drain_channel_events();
    }

    fn on_control(
        &mut self,
        now: Instant,
        kind: ControlKind,
        id: BlockId,
        count: u32,
        sealed: &[u8],
    ) -> Result<(), PipelineError> {
        if kind == ControlKind::TranscriptTag {
            return self.on_transcript_tag(now, id, count, sealed);
        }
        let payload = match self.channel.open(sealed) {
            Ok(Opened::Data(payload)) if kind != ControlKind::FeedNotice => payload.to_vec(),
            Ok(Opened::FeedNotice(_)) if kind == ControlKind::FeedNotice => {
                // Compared by the channel; a difference ends the pipeline
                // (FeedDiverged, from drain_channel_events).
                self.drain_channel_events();
                return Ok(());
            }
            Ok(_) => return Err(PipelineError::Unexpected("not a control message")),
            Err(OpenError::Replay | OpenError::TooOld) => {
                // A repeat (or one from before a restore): answer it again.
                self.answer_repeat(now, kind, id);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let body = ControlBody::decode(&payload)?;
        if body.kind() != kind || (kind != ControlKind::Hello && body.block() != id) {
            return Err(PipelineError::Unexpected("control frame and body differ"));
        }
        match body {
            ControlBody::Hello { digest, answer } => {
                if digest != self.digest {
                    self.ended = true;
                    self.events.push_back(PipelineEvent::DefinitionMismatch);
                    return Ok(());
                }
                if !self.peer_ready {
                    self.peer_ready = true;
                    self.hello_deadline = None;
                    self.events.push_back(PipelineEvent::PeerReady);
                }
                if !answer
                    && let Ok(frame) = self.seal_control(&ControlBody::Hello {
                        digest: self.digest,
                        answer: true,
                    })
                {
                    self.outbox.push_back(frame);
                }
            }
            ControlBody::RoundEnd { block } => {
                if self.role == Role::Alice
                    && let Some(b) = self.blocks.get_mut(&block)
                    && b.phase == Phase::RoundEnd
                {
                    b.peer_round_end = true;
                    b.report.auth_bits_received += u64::from(self.definition.tag_bits);
                }
            }
            ControlBody::Outcome {
                block,
                keep,
                final_bits,
            } if self.role == Role::Bob => {
                self.on_outcome(now, block, keep, final_bits);
            }
            ControlBody::OutcomeAck { block, kept } if self.role == Role::Alice => {
                if let Some(mut b) = self.blocks.remove(&block) {
                    b.report.auth_bits_received += u64::from(self.definition.tag_bits);
                    if b.phase == Phase::Committing && kept {
                        self.keep_block(now, b);
                    } else if b.phase == Phase::Committing {
                        self.drop_block(now, b, DropReason::PeerDropped, false);
                    } else {
                        self.put_back(now, b);
                    }
                }
            }
            ControlBody::Abandon { block } => {
                if let Some(b) = self.blocks.remove(&block) {
                    if self.role == Role::Alice && b.phase == Phase::Committing {
                        // Bob never kept it (he keeps only on our outcome and
                        // never abandons a block he kept).
                        self.drop_block(now, b, DropReason::PeerDropped, false);
                    } else {
                        self.drop_block(now, b, DropReason::PeerDropped, false);
                    }
                } else if !self.history.contains_key(&block) {
                    self.remember(block, Settled::Dropped, None);
                }
            }
            _ => {
                return Err(PipelineError::Unexpected(
                    "control message for the other role",
                ));
            }
        }
        self.progress(now);
        Ok(())
    }

    fn on_outcome(&mut self, now: Instant, id: BlockId, keep: bool, final_bits: u64) {
        // Every earlier block still here was dropped by Alice.
        let earlier: Vec<BlockId> = self.blocks.range(..id).map(|(k, _)| *k).collect();
        for e in earlier {
            if let Some(b) = self.blocks.remove(&e)
                && b.frame.is_some()
            {
                self.drop_block(now, b, DropReason::PeerDropped, false);
            }
        }
        let kept = match self.blocks.remove(&id) {
            Some(mut b) => {
                let ready = keep
                    && b.phase == Phase::RoundEnd
                    && b.control.is_some()
                    && b.final_key.is_some()
                    && b.report.hashed_bits == final_bits;
                let ack = self
                    .seal_control(&ControlBody::OutcomeAck {
                        block: id,
                        kept: ready,
                    })
                    .ok();
                if let Some(a) = &ack {
                    self.outbox.push_back(a.clone());
                    b.report.auth_bits_sent += u64::from(self.definition.tag_bits);
                }
                b.report.auth_bits_received += u64::from(self.definition.tag_bits);
                b.reply = ack;
                if ready {
                    self.keep_block(now, b);
                } else {
                    let reason = if keep {
                        DropReason::Protocol("outcome does not match this side".into())
                    } else {
                        DropReason::PeerDropped
                    };
                    let reply = b.reply.clone();
                    self.drop_block(now, b, reason, false);
                    if let Some(entry) = self.history.get_mut(&id) {
                        entry.1 = reply;
                    }
                }
                return;
            }
            None => false,
        };
        // Unknown or settled: answer from the history, or "not kept".
        match self.history.get(&id) {
            Some((Settled::Kept, Some(reply))) => self.outbox.push_back(reply.clone()),
            Some((Settled::Kept, None)) => {
                if let Ok(a) = self.seal_control(&ControlBody::OutcomeAck {
                    block: id,
                    kept: true,
                }) {
                    self.outbox.push_back(a.clone());
                    self.history.insert(id, (Settled::Kept, Some(a)));
                }
            }
            _ => {
                if let Ok(a) = self.seal_control(&ControlBody::OutcomeAck { block: id, kept }) {
                    self.outbox.push_back(a.clone());
                    self.remember(id, Settled::Dropped, Some(a));
                }
            }
        }
    }

    /// The peer repeated a control message (its copy was a replay here).
    /// The peer repeated a control message (its copy was a replay here, or
    /// older than a restore). Only requests are answered, never answers, so
    /// two sides never bounce messages between them.
    fn answer_repeat(&mut self, now: Instant, kind: ControlKind, id: BlockId) {
        match kind {
            ControlKind::Outcome if self.role == Role::Bob => match self.history.get(&id) {
                Some((_, Some(reply))) => self.outbox.push_back(reply.clone()),
                Some((Settled::Kept, None)) => {
                    // Kept before a restore: acknowledge again, freshly sealed.
                    if let Ok(a) = self.seal_control(&ControlBody::OutcomeAck {
                        block: id,
                        kept: true,
                    }) {
                        self.outbox.push_back(a.clone());
                        self.history.insert(id, (Settled::Kept, Some(a)));
                    }
                }
                _ => {
                    if !self.blocks.contains_key(&id) && self.is_forgotten(id) {
                        self.on_outcome(now, id, false, 0);
                    }
                }
            },
            ControlKind::RoundEnd if self.role == Role::Alice => {
                if let Some((Settled::Dropped, Some(reply))) = self.history.get(&id) {
                    self.outbox.push_back(reply.clone());
                }
            }
            _ => {}
        }
    }

    fn is_forgotten(&self, id: BlockId) -> bool {
        self.forgotten_below.is_some_and(|f| id < f) || self.last_frame.is_some_and(|l| id <= l)
    }

    fn on_transcript_tag(
        &mut self,
        now: Instant,
        id: BlockId,
        count: u32,
        sealed: &[u8],
    ) -> Result<(), PipelineError> {
        if self.definition.authentication != AuthMode::Transcript {
            return Err(PipelineError::Unexpected(
                "transcript tag in per-message mode",
            ));
        }
        let Some(mut block) = self.blocks.remove(&id) else {
            // A settled block: answer with what we said then.
            if let Some((_, Some(reply))) = self.history.get(&id) {
                self.outbox.push_back(reply.clone());
            } else if self.is_forgotten(id) {
                self.abandon_unknown(id);
            }
            return Ok(());
        };
        let expecting = match self.role {
            Role::Bob => !block.own_round_ok,
            Role::Alice => !block.peer_round_end && block.phase == Phase::RoundEnd,
        };
        if !expecting {
            // A repeat of Alice's tag: Bob answers with his again.
            if let Some(reply) = &block.reply {
                self.outbox.push_back(reply.clone());
            }
            self.put_back(now, block);
            return Ok(());
        }
        if block.recv.next != count || block.peer_transcript.is_none() {
            // Not everything it covers has arrived yet: the peer resends.
            self.put_back(now, block);
            return Ok(());
        }
        let transcript = block
            .peer_transcript
            .clone()
            .unwrap_or_else(|| self.channel.start_peer_transcript());
        match self.channel.open_transcript(sealed, transcript) {
            Ok(()) => {
                block.peer_transcript = None;
                block.report.auth_bits_received += u64::from(self.definition.tag_bits);
                match self.role {
                    Role::Bob => {
                        block.own_round_ok = true;
                        self.bob_round_end(now, &mut block);
                    }
                    Role::Alice => {
                        // Bob has her tag (he answered it): stop resending.
                        block.peer_round_end = true;
                        block.control = None;
                        block.control_deadline = None;
                    }
                }
                self.put_back(now, block);
                self.progress(now);
                Ok(())
            }
            Err(OpenError::AuthenticationFailed) => {
                // The conversation differs from what the peer sent: drop.
                self.drop_block(now, block, DropReason::TranscriptMismatch, true);
                Ok(())
            }
            Err(e) => {
                self.put_back(now, block);
                Err(e.into())
            }
        }
    }

    /// A message about a block this side no longer has: a (cached) Abandon.
    /// A message about block `id`, which is not held here: if this side
    /// settled or forgot it, tells the peer (an Abandon, unless it was
    /// kept) and returns `true`.
    fn answer_unheld(&mut self, id: BlockId) -> bool {
        if !(self.history.contains_key(&id) || self.is_forgotten(id)) {
            return false;
        }
        if !matches!(self.history.get(&id), Some((Settled::Kept, _))) {
            self.abandon_unknown(id);
        }
        true
    }

    fn abandon_unknown(&mut self, id: BlockId) {
        if let Some((Settled::Dropped, Some(reply))) = self.history.get(&id) {
            self.outbox.push_back(reply.clone());
            return;
        }
        if self.history.contains_key(&id) {
            return;
        }
        if let Ok(frame) = self.seal_control(&ControlBody::Abandon { block: id }) {
            self.outbox.push_back(frame.clone());
            self.remember(id, Settled::Dropped, Some(frame));
        }
    }

    fn on_data(
        &mut self,
        now: Instant,
        id: BlockId,
        ack: u32,
        seq: u32,
        sealed: bool,
        body: &[u8],
    ) -> Result<(), PipelineError> {
        if sealed != (self.definition.authentication == AuthMode::PerMessage) {
            return Err(PipelineError::Unexpected("authentication mode differs"));
        }
        let mut block = match self.blocks.remove(&id) {
            Some(b) => b,
            None => {
                if self.answer_unheld(id) {
                    return Ok(());
                }
                // The peer is ahead of our device: hold its messages a while.
                if self.blocks.len() >= 2 * self.control_module.max_blocks_in_flight as usize {
                    return Err(PipelineError::NoRoom(id));
                }
                Block::new(id, &self.master, now, self.idle_timeout())
            }
        };
        block.send.acknowledge(ack);
        let message = if sealed {
            match self.channel.open(body) {
                Ok(Opened::Data(payload)) => {
                    if payload.len() < 12
                        || payload[..8] != id.to_be_bytes()
                        || payload[8..12] != seq.to_be_bytes()
                    {
                        self.put_back(now, block);
                        return Err(PipelineError::Unexpected("sealed position differs"));
                    }
                    block.report.auth_bits_received += u64::from(self.definition.tag_bits);
                    payload[12..].to_vec()
                }
                Ok(_) => {
                    self.put_back(now, block);
                    return Err(PipelineError::Unexpected("not a data message"));
                }
                Err(OpenError::Replay) => {
                    block.recv.ack_due = true;
                    self.put_back(now, block);
                    return Ok(());
                }
                Err(e) => {
                    self.put_back(now, block);
                    return Err(e.into());
                }
            }
        } else {
            body.to_vec()
        };
        block.recv.accept(seq, message);
        match self.deliver(now, &mut block) {
            Some(reason) => self.drop_block(now, block, reason, true),
            None => self.put_back(now, block),
        }
        self.drain_channel_events();
        self.progress(now);
        Ok(())
    }

    fn transmit_block(&mut self, now: Instant, block: &mut Block) {
        let retransmit_after = self.definition.retransmit_after;
        // First transmissions.
        let ack = block.recv.next;
        let mut sent_any = false;
        while block.send.unsent < block.send.next_seq() {
            let i = (block.send.unsent - block.send.base) as usize;
            if !self.send_one(block, i, ack) {
                break;
            }
            block.send.unsent += 1;
            sent_any = true;
        }
        if sent_any {
            block.recv.ack_due = false;
            if block.send.deadline.is_none() {
                block.send.deadline = Some(now + retransmit_after);
            }
        }
        if block.recv.ack_due {
            block.recv.ack_due = false;
            self.outbox.push_back(
                Frame::Ack {
                    block: block.id,
                    ack,
                }
                .encode(),
            );
        }
        if block.control.is_some() && block.control_deadline.is_none() {
            if let Some(c) = &block.control {
                self.outbox.push_back(c.clone());
            }
            block.control_deadline = Some(now + retransmit_after);
        }
    }

    /// Sends message `i` of the unacknowledged ones; `false` when the pool
    /// cannot pay for it yet.
    fn send_one(&mut self, block: &mut Block, i: usize, ack: u32) -> bool {
        let seq = block.send.base + i as u32;
        let per_message = self.definition.authentication == AuthMode::PerMessage;
        let Some(out) = block.send.unacked.get_mut(i) else {
            return false;
        };
        if per_message && out.sealed.is_none() {
            let mut payload = Zeroizing::new(Vec::with_capacity(12 + out.plain.len()));
            payload.extend_from_slice(&block.id.to_be_bytes());
            payload.extend_from_slice(&seq.to_be_bytes());
            payload.extend_from_slice(&out.plain);
            let result = self.channel.seal(&payload);
            self.note_seal(&result);
            match result {
                Ok(sealed) => {
                    out.sealed = Some(sealed);
                    block.report.auth_bits_sent += u64::from(self.definition.tag_bits);
                }
                Err(_) => return false,
            }
        }
        let body = out.sealed.as_deref().unwrap_or(&out.plain);
        self.outbox.push_back(
            Frame::Data {
                block: block.id,
                ack,
                seq,
                sealed: per_message,
                body,
            }
            .encode(),
        );
        true
    }

    fn timeouts(&mut self, now: Instant) {
        let max = self.definition.max_retransmissions;
        let retransmit_after = self.definition.retransmit_after;
        let ids: Vec<BlockId> = self.blocks.keys().copied().collect();
        for id in ids {
            let Some(mut block) = self.blocks.remove(&id) else {
                continue;
            };
            let committing = block.phase == Phase::Committing;
            if block.send.deadline.is_some_and(|d| d <= now) {
                if block.send.retries >= max && !committing {
                    self.drop_block(now, block, DropReason::Timeout, true);
                    continue;
                }
                block.send.retries += 1;
                let ack = block.recv.next;
                for i in 0..(block.send.unsent - block.send.base) as usize {
                    self.send_one(&mut block, i, ack);
                }
                block.send.deadline = Some(now + retransmit_after);
            }
            if block.control_deadline.is_some_and(|d| d <= now) {
                block.control_retries += 1;
                if block.control_retries > max {
                    if committing {
                        if !block.stalled_reported {
                            block.stalled_reported = true;
                            self.events.push_back(PipelineEvent::Stalled { block: id });
                        }
                    } else if self.role == Role::Alice {
                        self.drop_block(now, block, DropReason::Timeout, true);
                        continue;
                    }
                }
                if let Some(c) = &block.control {
                    self.outbox.push_back(c.clone());
                }
                block.control_deadline = Some(now + retransmit_after);
            }
            // A block ready to settle waits for the blocks before it, which
            // settle or time out themselves.
            let ready = block.peer_round_end && block.final_key.is_some();
            if !committing
                && !ready
                && block.control.is_none()
                && !block.working
                && block.idle_deadline <= now
                && (block.frame.is_some() || block.send.is_idle())
            {
                let tell = block.frame.is_some();
                self.drop_block(now, block, DropReason::Timeout, tell);
                continue;
            }
            self.put_back(now, block);
        }
        if self.hello_deadline.is_some_and(|d| d <= now) && !self.peer_ready {
            self.send_hello(now);
        }
    }

    fn ensure_hello(&mut self, now: Instant) {
        if self.hello_deadline.is_none()
            && !self.peer_ready
            && !self.waiting_for_save
            && !self.ended
        {
            self.send_hello(now);
        }
    }

    /// A fresh hello (each costs a pad: resent copies of one would be
    /// replays the peer cannot answer).
    fn send_hello(&mut self, now: Instant) {
        if let Ok(frame) = self.seal_control(&ControlBody::Hello {
            digest: self.digest,
            answer: false,
        }) {
            self.outbox.push_back(frame);
        }
        self.hello_deadline = Some(now + self.definition.retransmit_after);
    }
}

impl Machine for Pipeline {
    type Event = PipelineEvent;
    type Error = PipelineError;

    fn handle_input(&mut self, now: Instant, datagram: &[u8]) -> Result<(), PipelineError> {
        self.touch(now);
        if self.ended {
            return Err(PipelineError::Ended);
        }
        let result = match Frame::decode(datagram)? {
            Frame::Data {
                block,
                ack,
                seq,
                sealed,
                body,
            } => self.on_data(now, block, ack, seq, sealed, body),
            Frame::Ack { block, ack } => {
                if let Some(b) = self.blocks.get_mut(&block) {
                    b.send.acknowledge(ack);
                } else {
                    // The peer may hold a block this side dropped or forgot
                    // (e.g. in flight at a restore).
                    self.answer_unheld(block);
                }
                Ok(())
            }
            Frame::Control {
                kind,
                block,
                count,
                sealed,
            } => self.on_control(now, kind, block, count, sealed),
        };
        self.drain_channel_events();
        result
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.touch(now);
        // Nothing leaves before the host has written a checkpoint it was
        // asked for: an acknowledgement sealed with a deposit would
        // otherwise reach the peer while the state that holds the deposit
        // is not yet durable, and a crash then would leave the two pools
        // fed differently.
        if self.waiting_for_save {
            return None;
        }
        // A restored Alice re-seals the Outcome of a block she committed
        // before the save; sealing waits for the restored channel's first
        // checkpoint, which the host has just written if it got here.
        if self.role == Role::Alice
            && self
                .blocks
                .values()
                .any(|b| b.phase == Phase::Committing && b.control.is_none())
        {
            self.progress(now);
        }
        if let Some(d) = self.outbox.pop_front() {
            return Some(d);
        }
        if self.ended {
            return None;
        }
        self.ensure_hello(now);
        self.progress(now);
        if self.channel.is_notice_pending()
            && !self.channel.is_diverged()
            && let Ok(sealed) = self.channel.seal_feed_notice()
        {
            self.outbox.push_back(
                Frame::Control {
                    kind: ControlKind::FeedNotice,
                    block: self.last_committed.unwrap_or(BlockId::new(0)),
                    count: 0,
                    sealed: &sealed,
                }
                .encode(),
            );
        }
        let ids: Vec<BlockId> = self.blocks.keys().copied().collect();
        for id in ids {
            if let Some(mut block) = self.blocks.remove(&id) {
                self.transmit_block(now, &mut block);
                self.blocks.insert(id, block);
            }
        }
        self.drain_channel_events();
        self.outbox.pop_front()
    }

    fn poll_event(&mut self) -> Option<PipelineEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        let mut t: Option<Instant> = if self.peer_ready {
            None
        } else {
            self.hello_deadline
        };
        let mut earliest = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for b in self.blocks.values() {
            earliest(b.send.deadline);
            earliest(b.control_deadline);
            let ready = b.peer_round_end && b.final_key.is_some();
            if b.phase != Phase::Committing && !ready && b.control.is_none() && !b.working {
                earliest(Some(b.idle_deadline));
            }
        }
        // A frame that may start now (a hold was lifted, a parameter
        // raised the blocks in flight): at once.
        if self.peer_ready && self.can_start_frame() {
            earliest(self.now);
        }
        t
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        if self.ended {
            return;
        }
        self.timeouts(now);
        self.drain_channel_events();
        self.progress(now);
    }
}

impl ModuleHost for Pipeline {
    type StateError = StateError;

    fn module_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .definition
            .stages
            .iter()
            .map(|s| s.kind.name().to_owned())
            .collect();
        names.push("auth".into());
        names.push("pipeline".into());
        names
    }

    fn module(&self, name: &str) -> Option<&dyn Module> {
        match name {
            "auth" => Some(&self.auth),
            "pipeline" => Some(&self.control_module),
            _ => self
                .definition
                .stages
                .iter()
                .find(|s| s.kind.name() == name)
                .map(|s| s as &dyn Module),
        }
    }

    fn module_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        match name {
            "auth" => Some(&mut self.auth),
            "pipeline" => Some(&mut self.control_module),
            _ => self
                .definition
                .stages
                .iter_mut()
                .find(|s| s.kind.name() == name)
                .map(|s| s as &mut dyn Module),
        }
    }

    /// Saves the whole state (see [restarts](self#restarts)) and commits
    /// the authentication checkpoint it contains: write the bytes durably
    /// before the next call into the pipeline. Contains key material (pads,
    /// the pipeline's seed, keys awaiting acknowledgement).
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        if self.ended {
            return Err(StateError::Ended);
        }
        let checkpoint = self.channel.checkpoint();
        let mut committing = Vec::new();
        for b in self.blocks.values() {
            // Only a confirmed block is ever committed (its proof feeds the
            // pool when the acknowledgement comes).
            if b.phase == Phase::Committing
                && b.confirmed.is_some()
                && let Some(key) = &b.final_key
            {
                committing.push(SavedCommit {
                    block: b.id.get(),
                    final_key: key.expose_secret().to_vec(),
                    report: b.report.clone(),
                });
            }
        }
        // Blocks kept since the last save: the host hands their keys out
        // after this save (their FinalKey follows the SaveDue), and after a
        // crash only this state can hand them out again.
        let undelivered = &self.kept_since_save;
        let in_flight = self
            .blocks
            .values()
            .filter(|b| b.phase != Phase::Committing)
            .map(|b| SavedInFlight {
                block: b.id.get(),
                stage: b.phase.stage(self.correction),
            })
            .collect();
        let next_block = self
            .blocks
            .keys()
            .copied()
            .chain(self.last_frame)
            .max()
            .map(|b| b.get() + 1);
        let bytes = {
            let saved = SavedStateRef {
                version: STATE_VERSION,
                role: self.role,
                digest: self.digest,
                master: self.master.clone(),
                channel: checkpoint.state(),
                stages: self
                    .definition
                    .stages
                    .iter()
                    .map(|s| (s.kind, s.settings.clone(), s.stats.clone()))
                    .collect(),
                totals: self.totals.clone(),
                next_block,
                last_committed: self.last_committed.map(BlockId::get),
                committing,
                max_blocks_in_flight: self.control_module.max_blocks_in_flight,
                in_flight,
                undelivered,
            };
            serde_json::to_vec(&saved).map_err(|e| StateError::Corrupt(e.to_string()))?
        };
        self.channel
            .commit(checkpoint)
            .map_err(|e| StateError::Auth(e.to_string()))?;
        self.waiting_for_save = false;
        self.kept_since_save.clear();
        self.drain_channel_events();
        Ok(bytes)
    }

    /// Replaces this pipeline's state with a saved one (of this side and
    /// definition); blocks in flight here are dropped (on both sides: the
    /// peer's messages about them are answered with an Abandon).
    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let restored = Pipeline::from_state(&self.definition, self.role, state)?;
        let (external, external_correction) = (self.external_work, self.external_correction);
        let in_flight: Vec<BlockId> = self.blocks.keys().copied().collect();
        *self = restored;
        self.external_work = external;
        self.external_correction = external_correction;
        let reported: BTreeSet<BlockId> = self
            .events
            .iter()
            .filter_map(|e| match e {
                PipelineEvent::Dropped { block, .. } => Some(*block),
                _ => None,
            })
            .collect();
        for id in in_flight {
            if !self.blocks.contains_key(&id) && !reported.contains(&id) {
                self.events.push_back(PipelineEvent::Dropped {
                    block: id,
                    stage: StageKind::Sift,
                    reason: DropReason::Restored,
                    stats: BlockReport {
                        block: id.get(),
                        outcome: "dropped".into(),
                        ..BlockReport::default()
                    },
                });
            }
        }
        Ok(())
    }
}

/// The saved state as written (borrowing the channel's state).
#[derive(Serialize)]
struct SavedStateRef<'a> {
    version: u32,
    role: Role,
    digest: [u8; 32],
    master: Zeroizing<[u8; 32]>,
    channel: &'a ChannelState,
    stages: Vec<(StageKind, stages::Settings, StageStats)>,
    totals: PipelineStats,
    next_block: Option<u64>,
    last_committed: Option<u64>,
    committing: Vec<SavedCommit>,
    max_blocks_in_flight: u32,
    in_flight: Vec<SavedInFlight>,
    undelivered: &'a [SavedCommit],
}
