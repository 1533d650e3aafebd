//! The `ldpc` correction stage: LDPC frames ([`crate::ldpc`]) in place of
//! Cascade chunks, through the same per-block stream.
//!
//! Alice chooses, from the estimate's QBER (at least 0.1 %), the mother
//! code and the punctured/shortened split of each frame
//! ([`choose_plan`]): as many frames of `frame_bits` as the key fills;
//! the rest goes to the shortest power-of-two frame (at least
//! `min_frame_bits`) whose usual key length holds it, shortened further so
//! that its key is exactly the rest when no more than 40 % of the frame is
//! then punctured or shortened, else to a frame of half that length and
//! the same again with what remains. Bits that no frame of
//! `min_frame_bits` takes are left over, not corrected, and counted as
//! disclosed, as for Cascade (at 10^6 sifted bits, 2^17-bit frames and
//! QBER 1–8 %: 604 leftover bits per block on average, against 1 660 with
//! one frame of each shorter length that fits, `tests/pipeline_ldpc_tuning.rs`). Her first message of the stage
//! ([`StageParameters::Ldpc`]) names every frame's code and layout, the
//! variant, the rounds and the decoder iterations; Bob rebuilds the same
//! plans from it (codes of the built-in ladder, [`SHIPPED_SEED`]). Each
//! frame is one [`LdpcAlice`]/[`LdpcBob`] pair whose messages travel as
//! chunk messages (`wire::encode_chunk`, the frame's index as the chunk).
//!
//! Leakage per frame is `m − p + revealed` (see [`crate::ldpc::rate`]);
//! both sides check each other's count at the end of every frame. A frame
//! that does not decode within its rounds (or whose counts differ) drops
//! the block on both sides with [`DropReason::Correction`]. A decoded
//! frame is not a proof of equal keys: the confirmation stage checks the
//! whole block.
//!
//! With `variant = "guided"` ([`Variant::Guided`], `pipelines/ldpc-guided.toml`)
//! every frame is planned without punctured positions
//! ([`choose_guided_plan`]; a block's partial last frame by
//! [`guided_plan_for_key`]), starts at `efficiency` (the learner below is
//! not used) and, after a failed decoding, Bob asks for
//! `guided_step · key · h2(QBER)` of his least reliable key positions, up to
//! `max_blind_rounds` rounds, his decoder resuming for `resume_iterations`
//! iterations after each answer.
//!
//! Decoding runs inline, in Bob's `handle_input` (one decoding per frame
//! and round), or in work items with
//! [`Pipeline::set_external_correction`](super::Pipeline::set_external_correction).
//!
//! With `adaptive_start` (the default) Alice aims each block's first
//! syndromes not at `efficiency` but at the 10th percentile of the
//! efficiency her last [`START_WINDOW`] frames needed, never lower than
//! `efficiency` ([`StartLearner`]): where the codes need more than the
//! configured start (QBER 1 %, where frames started at 1.08 needed about
//! four decodings each), frames start near what they will need. The
//! learner is Alice's alone (Bob follows her announced plans) and is not
//! saved: a restored pipeline starts again from `efficiency`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use qkd_core::machine::Machine;
use qkd_core::{BitVec, Role};

use super::wire::{self, LdpcFrame, LdpcMode, StageParameters};
use super::{Block, DropReason, Pipeline, StageKind};
use crate::ldpc::{
    CodeCache, CodeSpec, FramePlan, LdpcAbort, LdpcAlice, LdpcBob, LdpcConfig, LdpcError,
    LdpcEvent, MAX_ASK, MotherRate, RateChoice, SHIPPED_SEED, Variant, choose_guided_plan,
    choose_plan, guided_plan_for_key,
};

/// Codes kept at most; the cache starts over beyond (a peer naming many
/// different codes cannot make it grow without bound).
const MAX_CODES: usize = 32;

/// The QBER the rate is chosen for: the estimate's, at least 0.1 % (a
/// sample without errors), at most 0.45.
fn rate_qber(qber: f64) -> f64 {
    if qber.is_finite() {
        qber.clamp(1e-3, 0.45)
    } else {
        0.45
    }
}

/// Fewest bits revealed per blind round: short frames need many more
/// reveals relative to their length than long ones (their codes are
/// further from capacity), and a step of a few bits would use up the
/// rounds before decoding.
const MIN_STEP_BITS: usize = 32;

/// The largest share of a frame punctured or shortened to fit the last
/// key bits of a block exactly (at most 0.4 of the frame's positions not
/// key; beyond, the rest goes to a shorter frame or is left over).
const TAIL_MODULATED: f64 = 0.4;

/// Frames of one length whose needed efficiency sets that length's next
/// start.
pub(super) const START_WINDOW: usize = 32;

/// Alice's record of the efficiency her last [`START_WINDOW`] frames of
/// each length needed, `leaked / (key bits · h2(QBER the frame was
/// planned for))` (a block's short last frames need more than its whole
/// ones, so each length learns its own start; lengths are powers of two
/// up to 2^20, so at most 21 records). A frame decoded in its first round
/// is recorded one blind step below what it leaked (it might have decoded
/// there), so the start keeps probing downwards until about a tenth of
/// the frames decode at once.
#[derive(Debug, Default)]
pub(super) struct StartLearner {
    needed: BTreeMap<usize, VecDeque<f64>>,
}

impl StartLearner {
    /// Records one decoded frame of `n` bits: `leaked` bits disclosed over
    /// `rounds` rounds with `step` bits per extra round, `key_bits` key
    /// bits planned for `qber`.
    pub(super) fn record(
        &mut self,
        n: usize,
        leaked: usize,
        rounds: u16,
        step: usize,
        key_bits: usize,
        qber: f64,
    ) {
        let unit = key_bits as f64 * qkd_core::h2(qber);
        if unit <= 0.0 || !unit.is_finite() || !n.is_power_of_two() || n > 1 << 20 {
            return;
        }
        let bits = if rounds <= 1 {
            leaked.saturating_sub(step)
        } else {
            leaked
        };
        let window = self.needed.entry(n).or_default();
        if window.len() == START_WINDOW {
            window.pop_front();
        }
        window.push_back(bits as f64 / unit);
    }

    /// The efficiency the next frames of `n` bits start at: the 10th
    /// percentile of their record once it holds a quarter of the window,
    /// never below `floor` nor at or above 3 (the plan's limit).
    pub(super) fn start(&self, n: usize, floor: f64) -> f64 {
        let Some(window) = self.needed.get(&n).filter(|w| w.len() >= START_WINDOW / 4) else {
            return floor;
        };
        let mut sorted: Vec<f64> = window.iter().copied().collect();
        sorted.sort_unstable_by(f64::total_cmp);
        sorted[sorted.len() / 10].clamp(floor, 2.99_f64.max(floor))
    }
}

/// Bits revealed per blind round for a frame of `n` bits.
fn step_bits(share: f64, n: usize) -> usize {
    ((share * n as f64).round() as usize).clamp(MIN_STEP_BITS.min(n), n)
}

/// Bits asked for per guided round for a frame of `key_bits` key bits
/// planned for `qber`: `share · key_bits · h2(qber)`, 1 to 2^16.
fn guided_step_bits(share: f64, key_bits: usize, qber: f64) -> usize {
    let bits = (share * key_bits as f64 * qkd_core::h2(qber)).ceil();
    if bits.is_finite() {
        (bits as usize).clamp(1, MAX_ASK)
    } else {
        1
    }
}

impl Pipeline {
    fn code_cache(&mut self) -> &mut CodeCache {
        if self.codes.len() >= MAX_CODES {
            self.codes = CodeCache::new();
        }
        &mut self.codes
    }

    fn ldpc_config(
        &self,
        mode: LdpcMode,
        step: usize,
        max_rounds: u16,
        iterations: u16,
    ) -> LdpcConfig {
        LdpcConfig {
            variant: match mode {
                LdpcMode::RateAdaptive => Variant::RateAdaptive,
                LdpcMode::Blind => Variant::Blind {
                    step,
                    max_rounds: u32::from(max_rounds),
                },
                LdpcMode::Guided { resume_iterations } => Variant::Guided {
                    step,
                    max_rounds: u32::from(max_rounds),
                    resume_iterations: u32::from(resume_iterations),
                },
            },
            max_iterations: u32::from(iterations),
            retransmit_after: self.definition.retransmit_after,
            max_retransmissions: self.definition.max_retransmissions,
        }
    }

    /// A frame's plan: [`choose_guided_plan`]'s for guided frames,
    /// [`choose_plan`]'s otherwise.
    fn choose_frame_plan(
        &mut self,
        guided: bool,
        n: usize,
        qber: f64,
        choice: RateChoice,
    ) -> Result<FramePlan, LdpcError> {
        let cache = self.code_cache();
        if guided {
            choose_guided_plan(cache, n, SHIPPED_SEED, qber, choice)
        } else {
            choose_plan(cache, n, SHIPPED_SEED, qber, choice)
        }
    }

    /// The frames of a key of `len` bits: as many of `frame_bits` as it
    /// fills, then the rest (see the module docs).
    fn plan_frames(
        &mut self,
        len: usize,
        s: &super::stages::Settings,
        qber: f64,
        choice: RateChoice,
    ) -> Result<Vec<FramePlan>, DropReason> {
        let correction = |e: crate::ldpc::LdpcError| DropReason::Correction(e.to_string());
        // The start of frames of `n` bits (see `StartLearner`; guided
        // frames start at `efficiency`, their requests do the rest).
        let guided = s.ldpc_variant == super::stages::LdpcVariant::Guided;
        let adaptive = s.adaptive_start && !guided;
        let learned = &self.ldpc_start;
        let starts: BTreeMap<usize, f64> = (10..=20)
            .map(|b| 1usize << b)
            .map(|n| {
                let f = if adaptive {
                    learned.start(n, choice.target_efficiency)
                } else {
                    choice.target_efficiency
                };
                (n, f)
            })
            .collect();
        let aim = |n: usize, choice: RateChoice| RateChoice {
            target_efficiency: starts.get(&n).copied().unwrap_or(choice.target_efficiency),
            ..choice
        };
        let (top, bottom) = (
            s.frame_bits as usize,
            (s.min_frame_bits as usize).max(1 << 10),
        );
        let mut plans = Vec::new();
        let mut rest = len;
        if top < bottom {
            return Ok(plans);
        }
        let whole = self
            .choose_frame_plan(guided, top, qber, aim(top, choice))
            .map_err(correction)?;
        while rest >= whole.key_len() {
            plans.push(whole.clone());
            rest -= whole.key_len();
        }
        // The rest: the shortest frame whose usual key length holds it,
        // shortened further so that its key is exactly the rest when that
        // takes at most TAIL_MODULATED of the frame; else a frame of half
        // that length (its key fits) and again with what remains.
        let usual = |n: usize| n - (choice.modulated * n as f64).round() as usize;
        while rest > 0 {
            let mut n = bottom;
            while n < top && usual(n) < rest {
                n *= 2;
            }
            let share = (n - rest) as f64 / n as f64;
            if usual(n) >= rest && share <= TAIL_MODULATED {
                let exact = RateChoice {
                    modulated: share.max(choice.modulated),
                    ..choice
                };
                let fitted = if guided {
                    guided_plan_for_key(
                        self.code_cache(),
                        n,
                        SHIPPED_SEED,
                        qber,
                        aim(n, exact),
                        rest,
                    )
                } else {
                    choose_plan(self.code_cache(), n, SHIPPED_SEED, qber, aim(n, exact))
                };
                if let Ok(plan) = fitted
                    && plan.key_len() == rest
                {
                    plans.push(plan);
                    break;
                }
            }
            if n / 2 < bottom {
                break;
            }
            let plan = self
                .choose_frame_plan(guided, n / 2, qber, aim(n / 2, choice))
                .map_err(correction)?;
            if plan.key_len() > rest {
                break;
            }
            rest -= plan.key_len();
            plans.push(plan);
        }
        Ok(plans)
    }

    /// Alice: plans the frames, announces them and sends every syndrome.
    pub(super) fn start_ldpc(&mut self, now: Instant, block: &mut Block) -> Result<(), DropReason> {
        let s = self.stage_mut(StageKind::Ldpc).settings.clone();
        let key = block.key.take().ok_or(DropReason::TooSmall)?;
        let qber = rate_qber(block.estimate.as_ref().map_or(0.0, |e| e.qber));
        let choice = RateChoice {
            modulated: s.modulated,
            target_efficiency: s.efficiency,
        };
        let plans = self.plan_frames(key.len(), &s, qber, choice)?;
        let rest = key.len() - plans.iter().map(FramePlan::key_len).sum::<usize>();
        if plans.is_empty() {
            return Err(DropReason::TooSmall);
        }
        let mode = match s.ldpc_variant {
            super::stages::LdpcVariant::RateAdaptive => LdpcMode::RateAdaptive,
            super::stages::LdpcVariant::Blind => LdpcMode::Blind,
            super::stages::LdpcVariant::Guided => LdpcMode::Guided {
                resume_iterations: s.resume_iterations.clamp(1, 1000) as u16,
            },
        };
        let max_rounds = if mode == LdpcMode::RateAdaptive {
            1
        } else {
            s.max_blind_rounds.min(u32::from(u16::MAX)) as u16
        };
        let iterations = s.max_iterations.min(1000) as u16;
        let frames: Vec<LdpcFrame> = plans
            .iter()
            .map(|p| LdpcFrame {
                rung: p.rung().map_or(u8::MAX, MotherRate::index),
                n: p.code().n() as u32,
                punctured: p.punctured() as u32,
                shortened: p.shortened() as u32,
                step: match mode {
                    LdpcMode::RateAdaptive => 0,
                    LdpcMode::Blind => step_bits(s.blind_step, p.code().n()) as u32,
                    LdpcMode::Guided { .. } => {
                        guided_step_bits(s.guided_step, p.key_len(), qber) as u32
                    }
                },
            })
            .collect();
        self.push_message(
            block,
            StageParameters::Ldpc {
                mode,
                max_rounds,
                max_iterations: iterations,
                frames: frames.clone(),
            }
            .encode(),
        );
        let mut at = 0usize;
        let mut lengths = Vec::with_capacity(plans.len());
        for (plan, frame) in plans.into_iter().zip(&frames) {
            let k = plan.key_len();
            let part = key.slice(at..at + k).to_bitvec();
            at += k;
            let config = self.ldpc_config(mode, frame.step as usize, max_rounds, iterations);
            let alice = LdpcAlice::new(block.id, plan, part, config, &mut block.rng)
                .map_err(|e| DropReason::Protocol(e.to_string()))?;
            block.ldpc_alice.push(alice);
            lengths.push(k as u32);
        }
        drop(key);
        block.report.leftover_bits = rest as u64;
        block.report.chunks = lengths.len() as u32;
        block.chunks = lengths;
        self.pump_ldpc(now, block)
    }

    /// Bob: Alice's LDPC parameters; builds a machine per frame.
    pub(super) fn bob_ldpc(
        &mut self,
        now: Instant,
        block: &mut Block,
        parameters: (LdpcMode, u16, u16),
        frames: &[LdpcFrame],
    ) -> Result<(), DropReason> {
        let (mode, max_rounds, iterations) = parameters;
        let bad = |what: &str| DropReason::Protocol(what.to_owned());
        if !block.ldpc_bob.is_empty() {
            return Err(bad("correction parameters twice"));
        }
        if frames.is_empty() {
            return Err(bad("no LDPC frame"));
        }
        let key = block.key.take().ok_or_else(|| bad("no key"))?;
        let total: u64 = frames.iter().map(LdpcFrame::key_bits).sum();
        if total > key.len() as u64 {
            return Err(bad("frames longer than the key"));
        }
        {
            let settings = &mut self.stage_mut(StageKind::Ldpc).settings;
            settings.ldpc_variant = match mode {
                LdpcMode::RateAdaptive => super::stages::LdpcVariant::RateAdaptive,
                LdpcMode::Blind => super::stages::LdpcVariant::Blind,
                LdpcMode::Guided { resume_iterations } => {
                    settings.resume_iterations = u32::from(resume_iterations);
                    super::stages::LdpcVariant::Guided
                }
            };
            if mode != LdpcMode::RateAdaptive {
                settings.max_blind_rounds = u32::from(max_rounds);
            }
            settings.max_iterations = u32::from(iterations);
        }
        let qber = block.estimate.as_ref().map_or(0.0, |e| e.qber);
        let mut at = 0usize;
        let mut lengths = Vec::with_capacity(frames.len());
        // The whole frames share one layout: built once, then cloned.
        let mut last: Option<(LdpcFrame, FramePlan)> = None;
        for f in frames {
            let plan = match &last {
                Some((seen, plan)) if seen == f => plan.clone(),
                _ => {
                    let rate = MotherRate::from_index(f.rung).ok_or_else(|| bad("no such code"))?;
                    let spec = CodeSpec {
                        rate,
                        n: f.n as usize,
                        seed: SHIPPED_SEED,
                    };
                    let plan = FramePlan::for_rung(
                        self.code_cache(),
                        spec,
                        f.punctured as usize,
                        f.shortened as usize,
                    )
                    .map_err(|e| bad(&e.to_string()))?;
                    last = Some((*f, plan.clone()));
                    plan
                }
            };
            let k = plan.key_len();
            let part = key.slice(at..at + k).to_bitvec();
            at += k;
            let config = self.ldpc_config(mode, f.step as usize, max_rounds, iterations);
            let bob = LdpcBob::new(block.id, plan, &part, qber, config)
                .map_err(|e| bad(&e.to_string()))?;
            block.ldpc_bob.push(bob);
            lengths.push(k as u32);
        }
        block.report.leftover_bits = key.len() as u64 - total;
        drop(key);
        block.report.chunks = lengths.len() as u32;
        block.chunks = lengths;
        self.pump_ldpc(now, block)
    }

    /// Moves LDPC messages into the stream and collects the outcomes.
    pub(super) fn pump_ldpc(&mut self, now: Instant, block: &mut Block) -> Result<(), DropReason> {
        let mut out = Vec::new();
        let mut events = Vec::new();
        match self.role {
            Role::Alice => {
                for (i, m) in block.ldpc_alice.iter_mut().enumerate() {
                    while let Some(msg) = m.poll_transmit(now) {
                        out.push(wire::encode_chunk(i as u32, &msg));
                    }
                    while let Some(e) = m.poll_event() {
                        events.push((i, e));
                    }
                }
            }
            Role::Bob => {
                for (i, m) in block.ldpc_bob.iter_mut().enumerate() {
                    while let Some(msg) = m.poll_transmit(now) {
                        out.push(wire::encode_chunk(i as u32, &msg));
                    }
                    while let Some(e) = m.poll_event() {
                        events.push((i, e));
                    }
                }
            }
        }
        for m in out {
            self.push_message(block, m);
        }
        for (i, e) in events {
            let (stats, failure) = match e {
                LdpcEvent::Completed(stats) => (stats, None),
                LdpcEvent::Aborted(reason, stats) => (stats, Some(reason)),
            };
            let stage = &mut self.stage_mut(StageKind::Ldpc).stats;
            stage.frames += 1;
            stage.blind_rounds += u64::from(stats.rounds.saturating_sub(1));
            stage.revealed_bits += stats.revealed as u64;
            if failure == Some(LdpcAbort::DecodingFailed) {
                stage.decode_failures += 1;
            }
            if let Some(reason) = failure {
                return Err(DropReason::Correction(format!(
                    "LDPC frame {i}: {reason:?} after {} rounds",
                    stats.rounds
                )));
            }
            // Guided frames start at `efficiency`: nothing to learn.
            let learns = |a: &&LdpcAlice| !matches!(a.config().variant, Variant::Guided { .. });
            if let Some(alice) = block.ldpc_alice.get(i).filter(learns) {
                let step = match alice.config().variant {
                    Variant::Blind { step, .. } => step,
                    Variant::RateAdaptive | Variant::Guided { .. } => 0,
                };
                let qber = rate_qber(block.estimate.as_ref().map_or(0.0, |e| e.qber));
                let n = alice.plan().code().n();
                self.ldpc_start.record(
                    n,
                    stats.leaked_bits,
                    stats.rounds,
                    step,
                    stats.key_len,
                    qber,
                );
            }
            block.chunks_done += 1;
            block.report.ldpc_rounds += u64::from(stats.rounds);
            block.report.revealed_bits += stats.revealed as u64;
        }
        if block.chunks_done == block.chunks.len() && !block.chunks.is_empty() {
            self.corrected(now, block)?;
        }
        Ok(())
    }

    /// The corrected key of every frame, in order, and the bits disclosed.
    pub(super) fn ldpc_key(&mut self, block: &mut Block) -> Result<(BitVec, u64), DropReason> {
        let (parts, leaked): (Vec<BitVec>, u64) = match self.role {
            Role::Alice => {
                let leaked = block
                    .ldpc_alice
                    .iter()
                    .map(|m| m.leaked_bits() as u64)
                    .sum();
                let parts = block
                    .ldpc_alice
                    .drain(..)
                    .map(LdpcAlice::into_key)
                    .collect();
                (parts, leaked)
            }
            Role::Bob => {
                let leaked = block.ldpc_bob.iter().map(|m| m.leaked_bits() as u64).sum();
                let parts = block
                    .ldpc_bob
                    .drain(..)
                    .map(|mut m| m.take_corrected_key())
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| DropReason::Correction("a frame without a key".into()))?;
                (parts, leaked)
            }
        };
        let slices: Vec<_> = parts.iter().map(BitVec::as_bitslice).collect();
        Ok((BitVec::concat(&slices), leaked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_follows_what_frames_needed_and_stays_above_the_floor() {
        let mut learner = StartLearner::default();
        let (n, key, q) = (1 << 17, 100_000, 0.01);
        let unit = key as f64 * qkd_core::h2(q);
        let bits = |f: f64| (f * unit).round() as usize;
        assert_eq!(learner.start(n, 1.08), 1.08, "nothing recorded yet");
        // Frames that needed 1.15–1.18 over several rounds.
        for i in 0..START_WINDOW {
            learner.record(n, bits(1.15 + 0.001 * i as f64), 3, 500, key, q);
        }
        let start = learner.start(n, 1.08);
        assert!((start - 1.153).abs() < 2e-3, "{start}");
        // Each length learns its own start.
        assert_eq!(learner.start(n / 2, 1.08), 1.08);
        // Never below the configured efficiency.
        assert_eq!(learner.start(n, 1.2), 1.2);
        // First-round decodings count one step lower: the start drifts down
        // while frames keep decoding at once.
        for _ in 0..START_WINDOW {
            learner.record(n, bits(1.10), 1, bits(0.02), key, q);
        }
        assert!((learner.start(n, 1.0) - 1.08).abs() < 2e-3);
        // Bounded: one window per power-of-two length up to 2^20.
        assert_eq!(learner.needed[&n].len(), START_WINDOW);
        learner.record(n, 10, 2, 0, 0, q);
        learner.record(n, 10, 2, 0, key, f64::NAN);
        learner.record(3 << 10, 10, 2, 0, key, q);
        learner.record(1 << 21, 10, 2, 0, key, q);
        assert_eq!(learner.needed.len(), 1);
        assert_eq!(learner.needed[&n].len(), START_WINDOW);
    }

    #[test]
    fn rate_qber_and_step_stay_in_range() {
        assert_eq!(rate_qber(0.0), 1e-3);
        assert_eq!(rate_qber(f64::NAN), 0.45);
        assert_eq!(rate_qber(0.03), 0.03);
        assert_eq!(step_bits(0.004, 1 << 16), 262);
        assert_eq!(step_bits(1e-9, 1 << 10), MIN_STEP_BITS);
    }
}
