//! LDPC reconciliation: one-way syndrome coding with rate adaptation, and
//! blind or guided rounds.
//!
//! ```text
//!  Alice (reference key)                               Bob (noisy key)
//!  frame = key ∪ punctured (random) ∪ shortened (0)
//!  syndrome H·frame ───────────────────────────────▶  decode (sum-product)
//!                     ◀─────── failed, reveal more ─── (blind)
//!  next bits of the reveal order ──────────────────▶  decode again
//!                     ◀── failed, these positions ─── (guided: his least
//!  her bits at those positions ────────────────────▶   reliable; resume)
//!                     ◀─────────── decoded ────────── key = decisions
//! ```
//!
//! Three variants ([`Variant`]): rate-adaptive (one syndrome), blind
//! (Martinez-Mateo et al. 2012: Alice reveals punctured, then key bits in
//! a fixed order) and guided (the reveal choice of Kiktenko et al. 2017:
//! Bob names the key positions his failed decoding is least sure of, on
//! unpunctured frames so that his choice depends on the errors alone; see
//! [`Variant::Guided`] for the leakage argument). Guided reaches
//! f ≤ 1.08 at every QBER from 1 % to 10 % (below), blind from 3 %.
//!
//! - [`code`]: quasi-cyclic codes built from a seed ([`LdpcCode::build`],
//!   a ladder of mother rates 0.5 to 0.922: the BSC-optimised profiles of
//!   Elkouss et al. 2009 up to 0.7, profiles designed for this builder
//!   from 0.75, `tests/ldpc_design.rs`), untainted puncturing orders, the
//!   [`CodeCache`] the caller owns.
//! - [`alist`]: read and write the `alist` format.
//! - [`decode`]: layered sum-product (default) or offset min-sum on 8-bit
//!   messages and 16-bit posteriors, portable, AVX2 and AVX-512 kernels
//!   with the same output, and NEON ones on aarch64 (`neon.rs`, its tests
//!   run under qemu by `.ci/aarch64`).
//! - [`rate`]: frames with punctured and shortened positions, choosing the
//!   code for a QBER, the leakage accounting.
//! - [`machine`]: [`LdpcAlice`] and [`LdpcBob`] on the `Machine` contract,
//!   with their messages in [`wire`].
//! - [`reconcile_in_memory`]: both sides in one call (tests, `qkd ec`).

//! # Measured (AMD EPYC VM, Zen 4, 2 shared vCPUs)
//!
//! Decoder throughput (sum-product on 16-bit posteriors, LLRs in steps
//! of 1/8 nat, the default), reconciled key bits per CPU-second of the
//! decoding thread, n = 2^16, frames at a syndrome efficiency of 1.45
//! (`LDPC_ROUNDS=150 cargo test --release -p qkd-postproc --test
//! ldpc_efficiency -- --ignored --nocapture decoder_cpu_time`, medians of
//! 7 runs alternated with the build before, load 4.5–4.9): with the
//! AVX-512 kernel 113.4 Mbit/s at QBER 2 %, 110.6 at 3 %, 130.1 at 5 %
//! (0.158–0.161 ns per edge update), 1.13–1.19× the build before (100.0,
//! 94.6 and 109.2 in the same runs; the ninth session's aligned buffers,
//! one kernel call per iteration and plainer wrapped windows, with the
//! same outputs), so 100 Mbit/s holds at 2 % with a margin of about 13 %;
//! the AVX2 kernel 87.2, 85.5 and 99.4. Against `ldpc-toolbox` 0.12's
//! fastest decoder on the same codes and frames (`bench-peers/ldpc-toolbox`,
//! n = 2^16, QBER 2, 3 and 5 %): 93–107× its throughput at the same frame
//! error rate (0 of 40), measured before the ninth session. BENCHMARKS.md
//! has the tables.
//!
//! Blind reconciliation, n = 2^17 (117 965 key bits), syndrome aimed at
//! f = 1.05, reveals of 1 % of n·h2(Q) per round, 10 frames per QBER
//! (`qkd ec --method ldpc --variant blind --n 131072 --trials 10`, the
//! same as `LDPC_F=1.05 … blind_table`): every frame reconciled (fer 0 of
//! 10); mean f 1.18, 1.10, 1.08, 1.08, 1.07, 1.07, 1.08, 1.07, 1.07, 1.06
//! at QBER 1, 2, …, 10 %. f ≤ 1.08 holds from 3 % to 10 % (from 5 % with
//! Table I's profiles at rates 0.75–0.9); at 1 % and 2 % the 0.9 and 0.85
//! rungs' own finite-length thresholds are the limit. With the 0.85 and
//! 0.9 profiles chosen by decoding (f ≈ 1.08 and 1.10 at half the frames
//! failing, unpunctured, 2^17 bits, see [`code`]'s ladder) blind
//! reconciliation from f = 1.0 gives f 1.16 at 1 % and 1.087 at 2 %
//! (`LDPC_F=1.0 … blind_table`; before: 1.175, 1.092–1.098). With the
//! 0.914 rung (QBER 1 %), the 0.852 profile chosen by blind decoding and
//! six tenths punctured on the Table I rungs, from f 1.02, 3000 frames
//! per QBER (`LDPC_F=1.02 LDPC_TRIALS=3000 LDPC_ROUNDS=100 LDPC_SEED=31 …
//! blind_table`): f 1.133, 1.088, 1.075, 1.075, 1.075, 1.076, 1.079,
//! 1.075, 1.072, 1.057 at QBER 1, 2, …, 10 %, no frame failing in any of
//! the 33 000 (fer < 10^-3 at 95 % at every QBER; BENCHMARKS.md).
//!
//! Guided reconciliation, n = 2^17, started at f = 1.0 unpunctured
//! ([`choose_guided_plan`]), requests of 0.5 % of `key·h2(Q)` per round,
//! the decoder resuming for 20 iterations after each answer, 3000 frames
//! per QBER (`LDPC_VARIANT=guided LDPC_F=1.0 LDPC_STEP=0.005
//! LDPC_TRIALS=3000 LDPC_ROUNDS=200 LDPC_SEED=31 … blind_table`): f 1.076,
//! 1.068, 1.054, 1.058, 1.045, 1.054, 1.051, 1.051, 1.052, 1.047 at QBER
//! 1, 2, …, 10 %, no frame failing in the 30 000 (fer < 10^-3 at 95 % at
//! every QBER), in 4.5–16 rounds and 121–351 decoder iterations per frame
//! (blind from 1.02: 377–739); the half-percent QBERs between are in
//! BENCHMARKS.md ("guided reconciliation", tenth session).
//!
//! Inside the pipeline (`pipelines/ldpc.toml`: 2^17-bit frames, modulated
//! 0.1, first syndrome at 1.08 — since the ninth session at least 1.08,
//! learned per frame length (`adaptive_start`): f 1.163 at 1 % with 3.1
//! decodings per frame, 2–8 % unchanged —, reveals of 0.25 % of n; 10^6 sifted bits
//! per block, `tests/pipeline_ldpc_tuning.rs`, f on `blind_table`'s
//! footing): f 1.17, 1.097, 1.081, 1.079 at QBER 1, 2, 5, 8 % with 3.8,
//! 2.3, 1.7, 1.3 decodings per frame (before: 2^16 frames, modulated 0.25,
//! 1.1: 1.38, 1.134, 1.104, 1.099); from f 1.0 in 1 % steps the pipeline
//! reaches the standalone 1.092 at 2 % and 1.075 at 5 %, at 9.5 and 15.6
//! decodings per frame.

pub mod alist;
pub mod code;
pub mod decode;
pub mod machine;
mod neon;
pub mod rate;
mod simd;
pub mod wire;

pub use alist::{read_alist, write_alist};
pub use code::{CodeCache, CodeSpec, LdpcCode, MotherRate, SHIPPED_SEED};
pub use decode::{Backend, CheckRule, DecodeOutcome, Decoder, channel_magnitude};
pub use machine::{
    LdpcAbort, LdpcAlice, LdpcBob, LdpcConfig, LdpcEvent, LdpcInputError, LdpcStats,
};
pub use rate::{
    FramePlan, RUNG_EFFICIENCY, RateChoice, choose_guided_plan, choose_plan, guided_plan_for_key,
};
pub use wire::{LdpcMessage, MAX_ASK, PlanId};

use qkd_core::BitVec;
use rand_core::Rng;

/// Errors of the LDPC module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LdpcError {
    /// A parameter is out of range.
    #[error("invalid `{field}`: {reason}")]
    Config {
        /// The parameter.
        field: &'static str,
        /// What is allowed.
        reason: &'static str,
    },
    /// The matrix cannot be used.
    #[error("unusable parity-check matrix: {0}")]
    Code(&'static str),
    /// An `alist` text is malformed.
    #[error("malformed alist: {0}")]
    Alist(&'static str),
    /// A key, frame, LLR vector or syndrome has the wrong length.
    #[error("wrong length of a key, frame or syndrome")]
    Length,
}

/// How reconciliation reacts to a failed decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// One syndrome at the chosen rate; a failure drops the frame.
    RateAdaptive,
    /// Blind: after a failure Alice reveals the next `step` bits of the
    /// reveal order, up to `max_rounds` rounds in all.
    Blind {
        /// Bits revealed per extra round.
        step: usize,
        /// Decoding rounds at most (the first included).
        max_rounds: u32,
    },
    /// Guided blind reconciliation (the reveal choice of Kiktenko et al.,
    /// "Symmetric blind information reconciliation for quantum key
    /// distribution", 2017): after a failure Bob names the `step` key
    /// positions his decoder is least sure of (smallest posterior
    /// magnitude, [`FramePlan::least_reliable`]) and Alice reveals her
    /// bits there, up to `max_rounds` rounds. A revealed bit where the
    /// decoder is stuck is worth far more than one at a fixed position:
    /// at QBER 1 % on 2^17-bit frames f 1.076 against 1.133 (3000 frames
    /// each, BENCHMARKS.md).
    ///
    /// Plans must have no punctured position ([`choose_guided_plan`]).
    /// Then the decoder's posterior magnitudes after a failed decoding,
    /// and so Bob's positions, are a function of the error pattern
    /// `e = a ⊕ b` alone (syndrome decoding is symmetric: decoding `b`
    /// against `H·a` runs the same magnitudes as decoding `e` against
    /// `H·e`; a property test checks it bit for bit on every backend),
    /// which is independent of Alice's key. Only whether a round succeeds
    /// can also depend on Bob's bits (a posterior of exactly 0 decides 0):
    /// one bit per round, which [`Variant::Blind`] discloses too. The leakage
    /// is counted as for [`Variant::Blind`], `m + revealed`: this is the
    /// convention of Cascade (whose error-locating replies also depend on
    /// the errors) and of Kiktenko et al., and it rests on the same
    /// assumption, that what the positions say about the error pattern
    /// tells Eve nothing about the key. It is not a bound on all the
    /// public communication: each Ask carries up to about
    /// log2 C(open positions, step) bits about `e`, which a proof that
    /// counts every message (and a source whose errors Eve can correlate
    /// with her own information) would have to charge; use
    /// [`Variant::Blind`] where that is required. With punctured
    /// positions the magnitudes would depend on Alice's punctured bits
    /// too, and the `− p` of the leakage would no longer hold; the
    /// machines refuse such plans.
    ///
    /// After a reveal Bob's decoder resumes where it stopped
    /// ([`Decoder::resume`]) for at most `resume_iterations` iterations
    /// rather than starting over: at QBER 1, 2 and 6 % (30 frames of 2^17
    /// bits) resumes of 20 iterations cost 2.6, 1.9 and 2.4 times fewer
    /// iterations per frame than decodings of 60 from the start, for f
    /// +0.001, +0.003 and +0.005.
    Guided {
        /// Positions requested (and bits revealed) per extra round.
        step: usize,
        /// Decoding rounds at most (the first included).
        max_rounds: u32,
        /// Decoder iterations of each round after the first, 1 to 1000.
        resume_iterations: u32,
    },
}

/// Result of [`reconcile_in_memory`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InMemoryOutcome {
    /// Whether Bob's decoder matched the syndrome.
    pub converged: bool,
    /// Whether Bob's corrected key equals Alice's key (what confirmation
    /// would find).
    pub keys_equal: bool,
    /// `m − p + revealed` (see [`rate`]).
    pub leaked_bits: usize,
    /// Bits revealed in blind rounds.
    pub revealed: usize,
    /// Decoding rounds run.
    pub rounds: u32,
    /// Decoder iterations over all rounds.
    pub iterations: u32,
}

/// What [`reconcile_in_memory`] runs with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Estimated QBER (sets the channel LLR magnitude).
    pub qber: f64,
    /// Rate-adaptive or blind.
    pub variant: Variant,
    /// Decoder iterations per round at most.
    pub max_iterations: u32,
}

/// Runs Alice and Bob of one frame in memory: Alice's frame and syndrome,
/// Bob's decoding, and for [`Variant::Blind`] reveal rounds until success.
///
/// # Errors
/// [`LdpcError::Length`] if a key is not `plan.key_len()` bits or the
/// decoder belongs to another code.
pub fn reconcile_in_memory<R: Rng + ?Sized>(
    plan: &FramePlan,
    decoder: &mut Decoder,
    alice_key: &BitVec,
    bob_key: &BitVec,
    settings: Settings,
    rng: &mut R,
) -> Result<InMemoryOutcome, LdpcError> {
    if decoder.code().n() != plan.code().n() || decoder.code() != plan.code() {
        return Err(LdpcError::Length);
    }
    let Settings {
        qber,
        variant,
        max_iterations,
    } = settings;
    let guided = matches!(variant, Variant::Guided { .. });
    if guided && plan.punctured() > 0 {
        return Err(LdpcError::Config {
            field: "ldpc.variant",
            reason: "guided reconciliation needs a plan without punctured positions",
        });
    }
    let frame = plan.alice_frame(alice_key, rng)?;
    let syndrome = plan.syndrome(&frame)?;
    // Bob's LLRs are his key: wiped when the frame is done.
    let mut llrs = zeroize::Zeroizing::new(plan.bob_llrs(bob_key, channel_magnitude(qber))?);
    let (step, max_rounds) = match variant {
        Variant::RateAdaptive => (0, 1),
        Variant::Blind { step, max_rounds }
        | Variant::Guided {
            step, max_rounds, ..
        } => (step.max(1), max_rounds.max(1)),
    };
    let resume_iterations = match variant {
        Variant::Guided {
            resume_iterations, ..
        } => Some(resume_iterations.max(1)),
        _ => None,
    };
    let mut known = BitVec::zeros(if guided { plan.code().n() } else { 0 });
    let mut changes = decode::LlrChanges::default();
    let mut revealed = 0;
    let mut rounds = 0;
    let mut iterations = 0;
    loop {
        rounds += 1;
        let out = match resume_iterations {
            Some(more) if rounds > 1 => decoder.resume(&changes.0, more)?,
            _ => decoder.decode(&llrs, &syndrome, max_iterations)?,
        };
        changes.wipe();
        iterations += out.iterations;
        let more = !out.converged && rounds < max_rounds && revealed < plan.max_reveal();
        let count = if more {
            step.min(plan.max_reveal() - revealed)
        } else {
            0
        };
        let positions: Vec<usize> = if guided {
            let chosen = plan.least_reliable(decoder.posteriors(), &known, count)?;
            chosen.into_iter().map(|v| v as usize).collect()
        } else {
            (revealed..revealed + count)
                .filter_map(|k| plan.reveal_position(k))
                .collect()
        };
        if positions.is_empty() {
            let keys_equal = out.converged && plan.key_of(&decoder.decisions()) == *alice_key;
            return Ok(InMemoryOutcome {
                converged: out.converged,
                keys_equal,
                leaked_bits: plan.syndrome_leakage() + revealed,
                revealed,
                rounds,
                iterations,
            });
        }
        for &v in &positions {
            let bit = if frame.get(v) {
                -decode::LLR_MAX
            } else {
                decode::LLR_MAX
            };
            if guided {
                known.set(v, true);
                changes.push((v, llrs[v], bit));
            }
            llrs[v] = bit;
        }
        revealed += positions.len();
    }
}
