//! Alice's side: holds the reference key, answers parity questions, counts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use qkd_core::machine::{ConfigError, Machine};
use qkd_core::{BitVec, BlockId};

use super::params::CascadeConfig;
use super::shuffle::{LazyCopy, ShufflePlan};
use super::wire::{AbortReason, CascadeMessage, Question, encode_answers};
use super::{CascadeError, CascadeEvent, CascadeStats};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Answering,
    Completed,
    Aborted,
}

/// Alice's Cascade machine: answers Bob's parity questions on her key.
///
/// Alice follows no schedule of her own: she answers each round of
/// questions once, counts every parity bit she discloses, and refuses (with
/// an [`Abort`](CascadeMessage::Abort)) a round that would take her past
/// the agreed [`LeakBudget`](super::LeakBudget). She answers only questions
/// about the passes of the agreed schedule
/// ([`CascadeParams::passes`](super::CascadeParams::passes)) and inside the
/// key; any other question is rejected and changes nothing, so no message
/// can make her compute a shuffle nobody agreed on (see the
/// [memory bound](super#memory)). A repeated round (Bob retransmitted
/// because the answer was lost) is answered from a cache, disclosing
/// nothing new; an older round is ignored. The run ends when Bob's
/// [`Done`](CascadeMessage::Done) arrives with the same leak count as hers.
///
/// Driven through [`Machine`] (see the [module docs](super#driving-the-machines)):
/// input `handle_input` (Bob's datagrams); output `poll_transmit`,
/// `poll_event`; Alice sets no timers (`poll_timeout` is always `None`: the
/// layer above decides how long to wait for Bob). Getters: [`block`](Self::block),
/// [`leaked_bits`](Self::leaked_bits), [`rounds`](Self::rounds),
/// [`is_finished`](Self::is_finished), [`key`](Self::key), [`stats`](Self::stats).
///
/// After the run completed she still answers a repeated `Done` with a
/// `DoneAck` (Bob's may have been lost); after an abort she ignores
/// everything.
pub struct CascadeAlice {
    block: BlockId,
    key: BitVec,
    plan: Arc<ShufflePlan>,
    copies: Vec<LazyCopy>,
    /// Passes of the agreed schedule: questions name passes `0 .. passes`.
    passes: usize,
    max_leaked_bits: u64,
    leaked: u64,
    next_round: u32,
    last_questions: Vec<Question>,
    last_answer: Option<BitVec>,
    outbox: VecDeque<Vec<u8>>,
    events: VecDeque<CascadeEvent>,
    state: State,
}

impl core::fmt::Debug for CascadeAlice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CascadeAlice")
            .field("block", &self.block)
            .field("key_len", &self.key.len())
            .field("leaked", &self.leaked)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl CascadeAlice {
    /// Alice's machine for `block` with her `key`, the shuffle `plan` both
    /// sides use, and the configuration both sides agreed on (its schedule
    /// bounds the passes she answers, its leak budget what she discloses).
    ///
    /// # Errors
    /// A [`ConfigError`]: an invalid `config`, or a `plan` for another key
    /// length.
    pub fn new(
        block: BlockId,
        key: BitVec,
        plan: Arc<ShufflePlan>,
        config: &CascadeConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        if plan.key_len() != key.len() {
            return Err(ConfigError::new(
                "plan",
                format!(
                    "the shuffle plan is for keys of {} bits, the key has {}",
                    plan.key_len(),
                    key.len()
                ),
            ));
        }
        Ok(CascadeAlice {
            block,
            max_leaked_bits: config.leak_budget.bits_for(key.len()),
            passes: config.params.passes(),
            key,
            plan,
            copies: Vec::new(),
            leaked: 0,
            next_round: 0,
            last_questions: Vec::new(),
            last_answer: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            state: State::Answering,
        })
    }

    /// The block this run reconciles.
    #[must_use]
    pub fn block(&self) -> BlockId {
        self.block
    }

    /// Parity bits disclosed so far.
    #[must_use]
    pub fn leaked_bits(&self) -> u64 {
        self.leaked
    }

    /// The most parity bits she will disclose (the agreed budget for her key).
    #[must_use]
    pub fn max_leaked_bits(&self) -> u64 {
        self.max_leaked_bits
    }

    /// Rounds of questions answered so far.
    #[must_use]
    pub fn rounds(&self) -> u32 {
        self.next_round
    }

    /// Whether the run has ended (completed or aborted).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.state != State::Answering
    }

    /// Alice's key (unchanged by the protocol).
    #[must_use]
    pub fn key(&self) -> &BitVec {
        &self.key
    }

    /// Takes back the key, ending the machine.
    #[must_use]
    pub fn into_key(self) -> BitVec {
        self.key
    }

    /// Alice's statistics (`corrected_bits` is always 0 on her side).
    #[must_use]
    pub fn stats(&self) -> CascadeStats {
        CascadeStats {
            key_len: self.key.len(),
            leaked_bits: self.leaked,
            channel_uses: self.next_round,
            ..CascadeStats::default()
        }
    }

    fn on_questions(
        &mut self,
        round: u32,
        shuffle_seed: u64,
        key_len: u32,
        questions: Vec<Question>,
    ) -> Result<(), CascadeError> {
        if self.state != State::Answering {
            return Ok(()); // a late duplicate
        }
        if shuffle_seed != self.plan.seed() || key_len as usize != self.key.len() {
            self.abort(AbortReason::Incompatible);
            return Ok(());
        }
        if round.checked_add(1) == Some(self.next_round) {
            if questions != self.last_questions {
                return Err(CascadeError::Protocol {
                    reason: "a repeated round asks other questions",
                });
            }
            if let Some(parities) = &self.last_answer {
                self.outbox
                    .push_back(encode_answers(self.block, round, parities));
            }
            return Ok(());
        }
        if round < self.next_round {
            return Ok(()); // an old round, answered long ago
        }
        if round != self.next_round {
            return Err(CascadeError::Protocol {
                reason: "round out of sequence",
            });
        }
        // Checked before anything is computed: no shuffle of a pass outside
        // the agreed schedule is ever built.
        if questions.iter().any(|q| usize::from(q.pass) >= self.passes) {
            return Err(CascadeError::Protocol {
                reason: "question about a pass outside the agreed schedule",
            });
        }
        let n = self.key.len() as u64;
        if questions
            .iter()
            .any(|q| u64::from(q.start) + u64::from(q.len) > n)
        {
            return Err(CascadeError::Protocol {
                reason: "question outside the key",
            });
        }
        let count = questions.len() as u64;
        if self.leaked.saturating_add(count) > self.max_leaked_bits {
            self.abort(AbortReason::LeakLimit);
            return Ok(());
        }
        self.reserve(&questions);
        let parities: BitVec = questions.iter().map(|q| self.parity(q)).collect();
        self.leaked += count;
        self.outbox
            .push_back(encode_answers(self.block, round, &parities));
        self.last_answer = Some(parities);
        self.last_questions = questions;
        self.next_round += 1;
        Ok(())
    }

    fn on_done(&mut self, rounds: u32, leaked_bits: u64) -> Result<(), CascadeError> {
        let agrees = leaked_bits == self.leaked && rounds == self.next_round;
        match self.state {
            State::Aborted => return Ok(()),
            State::Answering if !agrees => {
                self.abort(AbortReason::Protocol);
                return Ok(());
            }
            State::Answering => {
                self.state = State::Completed;
                self.release();
                self.events.push_back(CascadeEvent::Completed(self.stats()));
            }
            State::Completed if !agrees => {
                return Err(CascadeError::Protocol {
                    reason: "a Done with other counts than the one accepted",
                });
            }
            State::Completed => {} // Bob lost the DoneAck: send it again
        }
        self.outbox.push_back(
            CascadeMessage::DoneAck {
                block: self.block,
                leaked_bits: self.leaked,
            }
            .encode(),
        );
        Ok(())
    }

    /// Frees what the run no longer needs once it has ended.
    fn release(&mut self) {
        self.last_answer = None;
        self.last_questions = Vec::new();
        self.copies = Vec::new();
    }

    fn abort(&mut self, reason: AbortReason) {
        if self.state == State::Answering {
            self.state = State::Aborted;
            self.release();
            self.events.push_back(CascadeEvent::Aborted(reason));
            self.outbox.push_back(
                CascadeMessage::Abort {
                    block: self.block,
                    reason,
                }
                .encode(),
            );
        }
    }

    /// Builds the shuffled copies of the passes this round reads much of.
    fn reserve(&mut self, questions: &[Question]) {
        // Questions come grouped by pass: sum the run of each pass.
        let mut run = (0usize, 0usize);
        for q in questions {
            let pass = usize::from(q.pass);
            // Only long ranges can have a mask (halves, nodes of 4096 bits
            // and more).
            let long = q.len as usize >= 4096.min(self.key.len() / 2);
            if pass == 0
                || (long
                    && self
                        .plan
                        .shuffle(pass)
                        .has_mask(q.start as usize, (q.start + q.len) as usize))
            {
                continue;
            }
            if pass != run.0 {
                self.reserve_pass(run.0, run.1);
                run = (pass, 0);
            }
            run.1 += q.len as usize;
        }
        self.reserve_pass(run.0, run.1);
    }

    fn reserve_pass(&mut self, pass: usize, bits: usize) {
        if pass == 0 || bits == 0 {
            return;
        }
        if self.copies.len() <= pass {
            self.copies.resize_with(pass + 1, LazyCopy::default);
        }
        self.copies[pass].reserve(self.plan.shuffle(pass), &self.key, bits);
    }

    #[inline]
    fn parity(&mut self, q: &Question) -> bool {
        let (start, end) = (q.start as usize, q.start as usize + q.len as usize);
        let pass = usize::from(q.pass);
        if pass == 0 {
            return self.key.parity(start..end);
        }
        if let Some(Some(copy)) = self.copies.get(pass).map(|c| &c.copy) {
            return copy.parity(start..end);
        }
        if self.copies.len() <= pass {
            self.copies.resize_with(pass + 1, LazyCopy::default);
        }
        self.copies[pass].parity(&self.plan, pass, &self.key, start, end)
    }
}

impl Machine for CascadeAlice {
    type Event = CascadeEvent;
    type Error = CascadeError;

    /// Feeds one datagram from Bob.
    ///
    /// # Errors
    /// The datagram was rejected and changed nothing: damaged or malformed,
    /// for another block, a message only Alice sends, a round out of
    /// sequence, a question outside the key or the agreed passes. A
    /// different seed or key length, a round past the leak budget, or a
    /// `Done` whose counts differ from hers end the run: she sends an
    /// `Abort`, emits [`CascadeEvent::Aborted`] and returns `Ok`.
    fn handle_input(&mut self, _now: Instant, datagram: &[u8]) -> Result<(), CascadeError> {
        let msg = CascadeMessage::decode(datagram)?;
        if msg.block() != self.block {
            return Err(CascadeError::WrongBlock {
                expected: self.block,
                got: msg.block(),
            });
        }
        match msg {
            CascadeMessage::Questions {
                round,
                shuffle_seed,
                key_len,
                questions,
                ..
            } => self.on_questions(round, shuffle_seed, key_len, questions),
            CascadeMessage::Done {
                rounds,
                leaked_bits,
                ..
            } => self.on_done(rounds, leaked_bits),
            CascadeMessage::Abort { reason, .. } => {
                if self.state == State::Answering {
                    self.state = State::Aborted;
                    self.release();
                    self.events.push_back(CascadeEvent::Aborted(reason));
                }
                Ok(())
            }
            CascadeMessage::Answers { .. } | CascadeMessage::DoneAck { .. } => {
                Err(CascadeError::Protocol {
                    reason: "message only Alice sends",
                })
            }
        }
    }

    fn poll_transmit(&mut self, _now: Instant) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }

    fn poll_event(&mut self) -> Option<CascadeEvent> {
        self.events.pop_front()
    }

    /// Alice sets no timers: always `None`.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Nothing to do: Alice only reacts to Bob.
    fn handle_timeout(&mut self, _now: Instant) {}
}
