//! `LdpcAlice` and `LdpcBob`: one block of LDPC reconciliation as two
//! sans-IO machines on the [`Machine`] contract.
//!
//! ```text
//!  LdpcAlice                                          LdpcBob
//!  Syndrome{plan, m bits} ────────────────────────▶  decode round 1
//!            ◀──────────────────── Request{round 1}   (blind, failed)
//!  Reveal{round 2, next step bits} ───────────────▶  decode round 2
//!            ◀────────────── Ask{round 2, positions}  (guided, failed)
//!  Reveal{round 3, bits at those positions} ──────▶  decode round 3
//!            ◀─────────────── Done{converged, leaked}
//!  DoneAck{leaked} ───────────────────────────────▶  Completed / Aborted
//! ```
//!
//! Both machines are built with the same [`FramePlan`] (chosen from the
//! estimated QBER both sides know); the syndrome names the plan so a
//! mismatch is caught. Alice resends her last message after
//! `retransmit_after` until Bob answers; Bob answers a repeat with his last
//! answer, and resends `Done` until the `DoneAck`. Both count
//! `leaked_bits = m − p + revealed` (see [`super::rate`]) and the end
//! messages carry the counts, which must agree. A converged decoding is
//! not a proof of equal keys: the confirmation stage checks that.
//!
//! Guided reconciliation ([`Variant::Guided`]) needs a plan without
//! punctured positions (the constructors refuse others). Alice checks
//! every `Ask` before she reveals anything: the round, at most `step`
//! positions and no more than are left, each a key position of the frame
//! she has not revealed yet; a repeat of the `Ask` she answered gets the
//! same `Reveal` again, any other is refused.
//!
//! Getters: `block`, `is_finished`, `leaked_bits`, Alice's `key`, Bob's
//! `corrected_key`. Input: `handle_input`, `handle_timeout`. Output:
//! `poll_transmit` until `None`, then `poll_event`, `poll_timeout`. `now`
//! must not go backwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qkd_core::machine::{ConfigError, Machine, Retransmit, RetransmitDue};
use qkd_core::wire::WireError;
use qkd_core::{BitVec, BlockId};
use rand_core::Rng;
use zeroize::Zeroize;

use super::decode::{Decoder, LLR_MAX, LlrChanges, channel_magnitude};
use super::rate::FramePlan;
use super::wire::{LdpcMessage, PlanId};
use super::{MotherRate, Variant};

/// Settings of one block's reconciliation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LdpcConfig {
    /// Rate-adaptive (one round) or blind.
    pub variant: Variant,
    /// Decoder iterations per round.
    pub max_iterations: u32,
    /// Wait before resending an unanswered message.
    pub retransmit_after: Duration,
    /// Resends before giving up.
    pub max_retransmissions: u32,
}

impl Default for LdpcConfig {
    fn default() -> Self {
        LdpcConfig {
            variant: Variant::Blind {
                step: 256,
                max_rounds: 40,
            },
            max_iterations: 60,
            retransmit_after: Duration::from_millis(200),
            max_retransmissions: 10,
        }
    }
}

impl LdpcConfig {
    /// Checks the ranges.
    ///
    /// # Errors
    /// The field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1000).contains(&self.max_iterations) {
            return Err(ConfigError::new("ldpc.max_iterations", "must be 1 to 1000"));
        }
        if let Variant::Guided {
            resume_iterations, ..
        } = self.variant
            && !(1..=1000).contains(&resume_iterations)
        {
            return Err(ConfigError::new(
                "ldpc.variant.resume_iterations",
                "must be 1 to 1000",
            ));
        }
        if let Variant::Blind { step, max_rounds }
        | Variant::Guided {
            step, max_rounds, ..
        } = self.variant
        {
            let most = if matches!(self.variant, Variant::Guided { .. }) {
                super::wire::MAX_ASK
            } else {
                super::wire::MAX_BITS
            };
            if step == 0 || step > most {
                return Err(ConfigError::new(
                    "ldpc.variant.step",
                    "must be 1 to 2^20 (blind) or 2^16 (guided)",
                ));
            }
            if !(1..=u32::from(u16::MAX)).contains(&max_rounds) {
                return Err(ConfigError::new(
                    "ldpc.variant.max_rounds",
                    "must be 1 to 65535",
                ));
            }
        }
        if self.retransmit_after.is_zero() {
            return Err(ConfigError::new(
                "ldpc.retransmit_after",
                "must be positive",
            ));
        }
        Ok(())
    }

    fn limits(&self) -> (usize, u16) {
        match self.variant {
            Variant::RateAdaptive => (0, 1),
            Variant::Blind { step, max_rounds }
            | Variant::Guided {
                step, max_rounds, ..
            } => (step, max_rounds.min(u32::from(u16::MAX)) as u16),
        }
    }

    fn guided(&self) -> bool {
        matches!(self.variant, Variant::Guided { .. })
    }

    /// Guided reconciliation needs a plan without punctured positions.
    fn check_plan(&self, plan: &FramePlan) -> Result<(), ConfigError> {
        if self.guided() && plan.punctured() > 0 {
            return Err(ConfigError::new(
                "ldpc.variant",
                "guided reconciliation needs a plan without punctured positions",
            ));
        }
        Ok(())
    }
}

/// What one block's reconciliation ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LdpcStats {
    /// The block.
    pub block: BlockId,
    /// Key bits of the block.
    pub key_len: usize,
    /// `m − p + revealed`.
    pub leaked_bits: usize,
    /// Bits revealed in blind rounds.
    pub revealed: usize,
    /// Decoding rounds.
    pub rounds: u16,
}

/// Why a block was given up; its key must not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LdpcAbort {
    /// Bob's decoder did not match the syndrome within the rounds allowed.
    DecodingFailed,
    /// The two counts of leaked bits differ.
    LeakageMismatch,
    /// The peer stopped answering.
    Timeout,
}

/// The terminal outcome of a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LdpcEvent {
    /// Bob's decoder matched the syndrome and both counts agree.
    Completed(LdpcStats),
    /// The block was given up (`stats.leaked_bits` still counts what was
    /// disclosed).
    Aborted(LdpcAbort, LdpcStats),
}

/// Why a datagram was rejected; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LdpcInputError {
    /// Not a valid LDPC message.
    #[error("malformed LDPC message: {0}")]
    Malformed(#[from] WireError),
    /// A message for another block.
    #[error("LDPC message for block {got}, this machine runs block {expected}")]
    WrongBlock {
        /// This machine's block.
        expected: BlockId,
        /// The message's.
        got: BlockId,
    },
    /// The syndrome names another frame layout than this side's.
    #[error("the peer uses another code or rate")]
    PlanMismatch,
    /// A message this side does not expect now.
    #[error("unexpected LDPC message")]
    Unexpected,
}

fn plan_id(plan: &FramePlan) -> PlanId {
    PlanId {
        rung: plan.rung().map_or(255, MotherRate::index),
        n: plan.code().n() as u32,
        punctured: plan.punctured() as u32,
        shortened: plan.shortened() as u32,
    }
}

fn pack(bits: impl Iterator<Item = bool>, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len.div_ceil(8)];
    for (i, b) in bits.enumerate() {
        if b {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

/// Alice's side: sends the syndrome of her frame and reveals bits when
/// Bob asks.
pub struct LdpcAlice {
    block: BlockId,
    plan: FramePlan,
    key: BitVec,
    frame: BitVec,
    config: LdpcConfig,
    syndrome_message: Vec<u8>,
    last_sent: Vec<u8>,
    send_now: bool,
    timer: Retransmit,
    round: u16,
    revealed: usize,
    /// Guided: the positions revealed so far (empty otherwise).
    known: BitVec,
    /// Guided: the last `Ask` answered, to recognise its repeats.
    last_ask: Option<Vec<u8>>,
    event: Option<LdpcEvent>,
    finished: bool,
    ack: Option<Vec<u8>>,
}

impl core::fmt::Debug for LdpcAlice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LdpcAlice")
            .field("block", &self.block)
            .field("round", &self.round)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl LdpcAlice {
    /// Alice's machine for `key` (exactly `plan.key_len()` bits); `rng`
    /// fills the punctured positions.
    ///
    /// # Errors
    /// An invalid `config` or a key of the wrong length.
    pub fn new<R: Rng + ?Sized>(
        block: BlockId,
        plan: FramePlan,
        key: BitVec,
        config: LdpcConfig,
        rng: &mut R,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        config.check_plan(&plan)?;
        let frame = plan
            .alice_frame(&key, rng)
            .map_err(|_| ConfigError::new("ldpc.key", "must have the plan's key length"))?;
        let syndrome = plan
            .syndrome(&frame)
            .map_err(|_| ConfigError::new("ldpc.key", "must have the plan's key length"))?;
        let m = syndrome.len();
        let message = LdpcMessage::Syndrome {
            block,
            plan: plan_id(&plan),
            bits: pack(syndrome.iter(), m),
            len: m as u32,
        }
        .encode();
        Ok(LdpcAlice {
            block,
            key,
            frame,
            timer: Retransmit::new(config.retransmit_after, config.max_retransmissions),
            config,
            last_sent: message.clone(),
            syndrome_message: message,
            send_now: true,
            round: 1,
            revealed: 0,
            known: BitVec::zeros(if config.guided() { plan.code().n() } else { 0 }),
            last_ask: None,
            event: None,
            finished: false,
            ack: None,
            plan,
        })
    }

    /// The block.
    #[must_use]
    pub fn block(&self) -> BlockId {
        self.block
    }

    /// Whether the outcome is known.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Alice's key (unchanged by reconciliation).
    #[must_use]
    pub fn key(&self) -> &BitVec {
        &self.key
    }

    /// `m − p + revealed` so far.
    #[must_use]
    pub fn leaked_bits(&self) -> usize {
        self.plan.syndrome_leakage() + self.revealed
    }

    /// The settings this machine runs with.
    #[must_use]
    pub fn config(&self) -> &LdpcConfig {
        &self.config
    }

    /// The frame's code and layout.
    #[must_use]
    pub fn plan(&self) -> &FramePlan {
        &self.plan
    }

    /// Alice's key, consuming the machine.
    #[must_use]
    pub fn into_key(self) -> BitVec {
        self.key
    }

    /// The first message (for hosts that send it outside `poll_transmit`).
    #[must_use]
    pub fn syndrome_message(&self) -> &[u8] {
        &self.syndrome_message
    }

    fn stats(&self) -> LdpcStats {
        LdpcStats {
            block: self.block,
            key_len: self.plan.key_len(),
            leaked_bits: self.leaked_bits(),
            revealed: self.revealed,
            rounds: self.round,
        }
    }

    fn finish(&mut self, event: LdpcEvent) {
        self.finished = true;
        self.send_now = false;
        self.timer.disarm();
        self.event = Some(event);
    }
}

impl Machine for LdpcAlice {
    type Event = LdpcEvent;
    type Error = LdpcInputError;

    fn handle_input(&mut self, _now: Instant, datagram: &[u8]) -> Result<(), LdpcInputError> {
        let message = LdpcMessage::decode(datagram)?;
        if message.block() != self.block {
            return Err(LdpcInputError::WrongBlock {
                expected: self.block,
                got: message.block(),
            });
        }
        match message {
            LdpcMessage::Request { round, .. } if !self.finished && !self.config.guided() => {
                if round.checked_add(1) == Some(self.round) && round >= 1 {
                    // A repeat: our reveal was lost.
                    self.send_now = true;
                    return Ok(());
                }
                let (step, max_rounds) = self.config.limits();
                let left = self.plan.max_reveal() - self.revealed;
                let refused = round != self.round || self.round >= max_rounds || left == 0;
                if refused || step == 0 || self.config.guided() {
                    return Err(LdpcInputError::Unexpected);
                }
                let count = step.min(left);
                let start = self.revealed;
                let bits = (start..start + count).map(|k| {
                    self.plan
                        .reveal_position(k)
                        .is_some_and(|v| self.frame.get(v))
                });
                let reveal = LdpcMessage::Reveal {
                    block: self.block,
                    round: self.round + 1,
                    start: start as u32,
                    count: count as u32,
                    bits: pack(bits, count),
                };
                self.revealed += count;
                self.round += 1;
                self.last_sent = reveal.encode();
                self.send_now = true;
                Ok(())
            }
            LdpcMessage::Ask {
                round, positions, ..
            } if !self.finished && self.config.guided() => {
                if round.checked_add(1) == Some(self.round) && round >= 1 {
                    if self.last_ask.as_deref() != Some(datagram) {
                        return Err(LdpcInputError::Unexpected);
                    }
                    // A repeat: our reveal was lost.
                    self.send_now = true;
                    return Ok(());
                }
                let (step, max_rounds) = self.config.limits();
                let left = self.plan.max_reveal() - self.revealed;
                let n = self.plan.code().n();
                let allowed = |&v: &u32| {
                    (v as usize) < n
                        && self.plan.is_key_position(v as usize)
                        && !self.known.get(v as usize)
                };
                if round != self.round
                    || self.round >= max_rounds
                    || positions.len() > step.min(left)
                    || !positions.iter().all(allowed)
                {
                    return Err(LdpcInputError::Unexpected);
                }
                let count = positions.len();
                let bits = positions.iter().map(|&v| self.frame.get(v as usize));
                let reveal = LdpcMessage::Reveal {
                    block: self.block,
                    round: self.round + 1,
                    start: self.revealed as u32,
                    count: count as u32,
                    bits: pack(bits, count),
                };
                for &v in &positions {
                    self.known.set(v as usize, true);
                }
                self.revealed += count;
                self.round += 1;
                self.last_ask = Some(datagram.to_vec());
                self.last_sent = reveal.encode();
                self.send_now = true;
                Ok(())
            }
            LdpcMessage::Done {
                converged,
                rounds,
                leaked,
                ..
            } => {
                if let Some(ack) = &self.ack {
                    self.last_sent = ack.clone();
                    self.send_now = true;
                    return Ok(());
                }
                if self.finished {
                    return Err(LdpcInputError::Unexpected);
                }
                let stats = self.stats();
                let ack = LdpcMessage::DoneAck {
                    block: self.block,
                    leaked: stats.leaked_bits as u32,
                }
                .encode();
                let event = if leaked as usize != stats.leaked_bits || rounds != self.round {
                    LdpcEvent::Aborted(LdpcAbort::LeakageMismatch, stats)
                } else if !converged {
                    LdpcEvent::Aborted(LdpcAbort::DecodingFailed, stats)
                } else {
                    LdpcEvent::Completed(stats)
                };
                self.finish(event);
                self.ack = Some(ack.clone());
                self.last_sent = ack;
                self.send_now = true;
                Ok(())
            }
            _ => Err(LdpcInputError::Unexpected),
        }
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !self.send_now {
            return None;
        }
        self.send_now = false;
        if !self.finished {
            self.timer.arm(now);
        }
        Some(self.last_sent.clone())
    }

    fn poll_event(&mut self) -> Option<LdpcEvent> {
        self.event.take()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.timer.deadline()
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self.timer.poll(now) {
            RetransmitDue::NotYet => {}
            RetransmitDue::Resend => self.send_now = true,
            RetransmitDue::GiveUp => {
                let stats = self.stats();
                self.finish(LdpcEvent::Aborted(LdpcAbort::Timeout, stats));
            }
        }
    }
}

/// Bob's side: decodes after the syndrome and after every reveal.
pub struct LdpcBob {
    block: BlockId,
    plan: FramePlan,
    plan_id: PlanId,
    llrs: Vec<i8>,
    decoder: Decoder,
    config: LdpcConfig,
    syndrome: Option<(Vec<u8>, BitVec)>,
    round: u16,
    revealed: usize,
    /// Guided: the positions revealed so far (empty otherwise).
    known: BitVec,
    /// Guided: the positions of the outstanding `Ask`.
    asked: Vec<u32>,
    /// Guided: the LLRs a reveal changed, (position, old, new), for the
    /// decoder to resume with (key-derived: wiped on drop).
    changes: LlrChanges,
    last_sent: Option<Vec<u8>>,
    send_now: bool,
    done: Option<(bool, Vec<u8>)>,
    timer: Retransmit,
    corrected: Option<BitVec>,
    event: Option<LdpcEvent>,
    finished: bool,
}

impl core::fmt::Debug for LdpcBob {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LdpcBob")
            .field("block", &self.block)
            .field("round", &self.round)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl LdpcBob {
    /// Bob's machine for his noisy `key` (`plan.key_len()` bits).
    ///
    /// # Errors
    /// An invalid `config` or a key of the wrong length.
    pub fn new(
        block: BlockId,
        plan: FramePlan,
        key: &BitVec,
        qber: f64,
        config: LdpcConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        config.check_plan(&plan)?;
        let llrs = plan
            .bob_llrs(key, channel_magnitude(qber))
            .map_err(|_| ConfigError::new("ldpc.key", "must have the plan's key length"))?;
        let decoder = Decoder::new(Arc::clone(plan.code()));
        let known = BitVec::zeros(if config.guided() { plan.code().n() } else { 0 });
        Ok(LdpcBob {
            block,
            plan_id: plan_id(&plan),
            plan,
            llrs,
            decoder,
            timer: Retransmit::new(config.retransmit_after, config.max_retransmissions),
            config,
            syndrome: None,
            round: 0,
            revealed: 0,
            known,
            asked: Vec::new(),
            changes: LlrChanges::default(),
            last_sent: None,
            send_now: false,
            done: None,
            corrected: None,
            event: None,
            finished: false,
        })
    }

    /// The block.
    #[must_use]
    pub fn block(&self) -> BlockId {
        self.block
    }

    /// Whether the outcome is known.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// `m − p + revealed` so far.
    #[must_use]
    pub fn leaked_bits(&self) -> usize {
        self.plan.syndrome_leakage() + self.revealed
    }

    /// Bob's corrected key, once his decoder converged.
    #[must_use]
    pub fn corrected_key(&self) -> Option<&BitVec> {
        self.corrected.as_ref()
    }

    /// Takes Bob's corrected key out (once the block completed).
    pub fn take_corrected_key(&mut self) -> Option<BitVec> {
        self.corrected.take()
    }

    fn stats(&self) -> LdpcStats {
        LdpcStats {
            block: self.block,
            key_len: self.plan.key_len(),
            leaked_bits: self.leaked_bits(),
            revealed: self.revealed,
            rounds: self.round,
        }
    }

    /// Decodes one round and answers: `Done` on success or when no
    /// further round is allowed, else `Request`.
    fn decode_round(&mut self) {
        let Some((_, syndrome)) = &self.syndrome else {
            return;
        };
        self.round += 1;
        let outcome = match self.config.variant {
            Variant::Guided {
                resume_iterations, ..
            } if self.round > 1 => {
                let outcome = self.decoder.resume(&self.changes.0, resume_iterations);
                self.changes.wipe();
                outcome
            }
            _ => self
                .decoder
                .decode(&self.llrs, syndrome, self.config.max_iterations),
        };
        let converged = outcome.is_ok_and(|o| o.converged);
        let (step, max_rounds) = self.config.limits();
        let more = self.plan.max_reveal() > self.revealed && self.round < max_rounds;
        if !converged && more && self.config.guided() {
            let count = step.min(self.plan.max_reveal() - self.revealed);
            self.asked = self
                .plan
                .least_reliable(self.decoder.posteriors(), &self.known, count)
                .unwrap_or_default();
        }
        let more = more && !(self.config.guided() && self.asked.is_empty());
        if converged || !more {
            if converged {
                self.corrected = Some(self.plan.key_of(&self.decoder.decisions()));
            }
            let done = LdpcMessage::Done {
                block: self.block,
                converged,
                rounds: self.round,
                leaked: self.leaked_bits() as u32,
            }
            .encode();
            self.done = Some((converged, done.clone()));
            self.last_sent = Some(done);
        } else if self.config.guided() {
            self.last_sent = Some(
                LdpcMessage::Ask {
                    block: self.block,
                    round: self.round,
                    positions: self.asked.clone(),
                }
                .encode(),
            );
        } else {
            self.last_sent = Some(
                LdpcMessage::Request {
                    block: self.block,
                    round: self.round,
                }
                .encode(),
            );
        }
        self.send_now = true;
    }
}

impl Drop for LdpcBob {
    fn drop(&mut self) {
        self.llrs.zeroize();
    }
}

impl Machine for LdpcBob {
    type Event = LdpcEvent;
    type Error = LdpcInputError;

    fn handle_input(&mut self, _now: Instant, datagram: &[u8]) -> Result<(), LdpcInputError> {
        let message = LdpcMessage::decode(datagram)?;
        if message.block() != self.block {
            return Err(LdpcInputError::WrongBlock {
                expected: self.block,
                got: message.block(),
            });
        }
        if self.finished {
            return Err(LdpcInputError::Unexpected);
        }
        match message {
            LdpcMessage::Syndrome {
                plan, bits, len, ..
            } => {
                if let Some((seen, _)) = &self.syndrome {
                    if seen.as_slice() != datagram {
                        return Err(LdpcInputError::Unexpected);
                    }
                    if self.round == 1 {
                        self.send_now = true;
                    }
                    return Ok(());
                }
                if plan != self.plan_id || len as usize != self.plan.code().m() {
                    return Err(LdpcInputError::PlanMismatch);
                }
                let syndrome = BitVec::from_bytes_lsb(&bits, len as usize)
                    .map_err(|_| LdpcInputError::Unexpected)?;
                self.syndrome = Some((datagram.to_vec(), syndrome));
                self.decode_round();
                Ok(())
            }
            LdpcMessage::Reveal {
                round,
                start,
                count,
                bits,
                ..
            } => {
                if round == self.round && round >= 2 {
                    // A repeat: our answer was lost.
                    self.send_now = true;
                    return Ok(());
                }
                let (step, _) = self.config.limits();
                let expected = if self.config.guided() {
                    self.asked.len()
                } else {
                    step.min(self.plan.max_reveal() - self.revealed)
                };
                if self.syndrome.is_none()
                    || self.done.is_some()
                    || round != self.round + 1
                    || start as usize != self.revealed
                    || count as usize != expected
                {
                    return Err(LdpcInputError::Unexpected);
                }
                let revealed = BitVec::from_bytes_lsb(&bits, count as usize)
                    .map_err(|_| LdpcInputError::Unexpected)?;
                if self.config.guided() {
                    for (i, &v) in self.asked.iter().enumerate() {
                        let v = v as usize;
                        let bit = if revealed.get(i) { -LLR_MAX } else { LLR_MAX };
                        self.known.set(v, true);
                        self.changes.push((v, self.llrs[v], bit));
                        self.llrs[v] = bit;
                    }
                    self.asked.clear();
                } else {
                    for (i, k) in (self.revealed..self.revealed + count as usize).enumerate() {
                        if let Some(v) = self.plan.reveal_position(k) {
                            self.llrs[v] = if revealed.get(i) { -LLR_MAX } else { LLR_MAX };
                        }
                    }
                }
                self.revealed += count as usize;
                self.decode_round();
                Ok(())
            }
            LdpcMessage::DoneAck { leaked, .. } => {
                let Some((converged, _)) = self.done else {
                    return Err(LdpcInputError::Unexpected);
                };
                let stats = self.stats();
                let event = if leaked as usize != stats.leaked_bits {
                    LdpcEvent::Aborted(LdpcAbort::LeakageMismatch, stats)
                } else if !converged {
                    LdpcEvent::Aborted(LdpcAbort::DecodingFailed, stats)
                } else {
                    LdpcEvent::Completed(stats)
                };
                if !matches!(event, LdpcEvent::Completed(_)) {
                    // BitVec zeroizes on drop.
                    self.corrected = None;
                }
                self.finished = true;
                self.send_now = false;
                self.timer.disarm();
                self.event = Some(event);
                Ok(())
            }
            _ => Err(LdpcInputError::Unexpected),
        }
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !self.send_now {
            return None;
        }
        self.send_now = false;
        if self.done.is_some() {
            self.timer.arm(now);
        }
        self.last_sent.clone()
    }

    fn poll_event(&mut self) -> Option<LdpcEvent> {
        self.event.take()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.timer.deadline()
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self.timer.poll(now) {
            RetransmitDue::NotYet => {}
            RetransmitDue::Resend => self.send_now = true,
            RetransmitDue::GiveUp => {
                let stats = self.stats();
                self.finished = true;
                self.send_now = false;
                self.event = Some(LdpcEvent::Aborted(LdpcAbort::Timeout, stats));
            }
        }
    }
}
