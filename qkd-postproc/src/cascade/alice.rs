//! Alice's side: holds the reference key, answers parity questions, counts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use qkd_core::BitVec;

use super::params::MAX_PASSES;
use super::shuffle::{LazyCopy, ShufflePlan};
use super::wire::{AbortReason, CascadeMessage, Question};
use super::{CascadeError, CascadeEvent, CascadeStats};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Answering,
    Completed,
    Aborted,
}

/// Alice's Cascade machine: answers Bob's parity questions on her key.
///
/// Alice follows no schedule: she answers each round of questions once,
/// counts every parity bit she discloses, and refuses (with an
/// [`Abort`](CascadeMessage::Abort)) a round that would take her past
/// `max_leak_bits`. A repeated round (Bob retransmitted because the answer
/// was lost) is answered from a cache, disclosing nothing new; an older
/// round is ignored. The run ends when Bob's [`Done`](CascadeMessage::Done)
/// arrives with the same leak count as hers.
///
/// Driving (sans-IO, `now` must not go backwards): feed every datagram from
/// Bob to [`handle_input`](Self::handle_input), then send everything
/// [`poll_transmit`](Self::poll_transmit) gives and read
/// [`poll_event`](Self::poll_event) until `None`. Alice sets no timers.
pub struct CascadeAlice {
    frame_id: u64,
    key: BitVec,
    plan: Arc<ShufflePlan>,
    copies: Vec<LazyCopy>,
    max_leak_bits: u64,
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
            .field("frame_id", &self.frame_id)
            .field("key_len", &self.key.len())
            .field("leaked", &self.leaked)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl CascadeAlice {
    /// Alice's machine for frame `frame_id` with her `key`, the shuffle
    /// `plan` both sides use, and the most parity bits she will disclose.
    ///
    /// # Errors
    /// [`CascadeError::InvalidConfig`] if the plan is for another key length.
    pub fn new(
        frame_id: u64,
        key: BitVec,
        plan: Arc<ShufflePlan>,
        max_leak_bits: u64,
    ) -> Result<Self, CascadeError> {
        if plan.key_len() != key.len() {
            return Err(CascadeError::InvalidConfig {
                reason: "shuffle plan is for another key length",
            });
        }
        Ok(CascadeAlice {
            frame_id,
            key,
            plan,
            copies: Vec::new(),
            max_leak_bits,
            leaked: 0,
            next_round: 0,
            last_questions: Vec::new(),
            last_answer: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            state: State::Answering,
        })
    }

    /// Parity bits disclosed so far.
    #[must_use]
    pub fn leaked_bits(&self) -> u64 {
        self.leaked
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

    /// Feeds one datagram from Bob.
    ///
    /// # Errors
    /// A typed error when the datagram is damaged, for another frame, or
    /// breaks the protocol; the state is unchanged unless the error is fatal
    /// (leak limit, incompatible peer, leak counts that disagree), in which
    /// case Alice sends an `Abort` and emits [`CascadeEvent::Aborted`].
    pub fn handle_input(&mut self, _now: Instant, datagram: &[u8]) -> Result<(), CascadeError> {
        let msg = CascadeMessage::decode(datagram)?;
        if msg.frame_id() != self.frame_id {
            return Err(CascadeError::WrongFrame {
                expected: self.frame_id,
                got: msg.frame_id(),
            });
        }
        match msg {
            CascadeMessage::Questions {
                round,
                shuffle_seed,
                key_len,
                questions,
                ..
            } => {
                if self.state != State::Answering {
                    return Ok(()); // a late duplicate
                }
                if shuffle_seed != self.plan.seed() || key_len as usize != self.key.len() {
                    self.abort(AbortReason::Protocol);
                    return Err(CascadeError::Incompatible {
                        reason: "key length or shuffle seed differ",
                    });
                }
                if round.checked_add(1) == Some(self.next_round) {
                    if questions != self.last_questions {
                        return Err(CascadeError::Protocol {
                            reason: "a repeated round asks other questions",
                        });
                    }
                    if let Some(parities) = &self.last_answer {
                        self.outbox.push_back(
                            CascadeMessage::Answers {
                                frame_id: self.frame_id,
                                round,
                                parities: parities.clone(),
                            }
                            .encode(),
                        );
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
                let n = self.key.len() as u64;
                if questions.iter().any(|q| {
                    usize::from(q.pass) >= MAX_PASSES || u64::from(q.start) + u64::from(q.len) > n
                }) {
                    return Err(CascadeError::Protocol {
                        reason: "question outside the key",
                    });
                }
                let count = questions.len() as u64;
                if self.leaked + count > self.max_leak_bits {
                    self.abort(AbortReason::LeakLimit);
                    return Err(CascadeError::LeakLimit {
                        limit: self.max_leak_bits,
                    });
                }
                self.reserve(&questions);
                let parities: BitVec = questions.iter().map(|q| self.parity(q)).collect();
                self.leaked += count;
                let msg = CascadeMessage::Answers {
                    frame_id: self.frame_id,
                    round,
                    parities,
                };
                self.outbox.push_back(msg.encode());
                if let CascadeMessage::Answers { parities, .. } = msg {
                    self.last_answer = Some(parities);
                }
                self.last_questions = questions;
                self.next_round += 1;
                Ok(())
            }
            CascadeMessage::Done {
                rounds,
                leaked_bits,
                ..
            } => {
                if self.state == State::Aborted {
                    return Ok(());
                }
                if leaked_bits != self.leaked || rounds != self.next_round {
                    self.abort(AbortReason::Protocol);
                    return Err(CascadeError::Protocol {
                        reason: "Bob's leak count differs from Alice's",
                    });
                }
                if self.state == State::Answering {
                    self.state = State::Completed;
                    self.last_answer = None;
                    self.copies.clear();
                    self.events.push_back(CascadeEvent::Completed(self.stats()));
                }
                self.outbox.push_back(
                    CascadeMessage::DoneAck {
                        frame_id: self.frame_id,
                        leaked_bits: self.leaked,
                    }
                    .encode(),
                );
                Ok(())
            }
            CascadeMessage::Abort { reason, .. } => {
                if self.state == State::Answering {
                    self.state = State::Aborted;
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

    /// Next datagram for Bob.
    #[must_use]
    pub fn poll_transmit(&mut self, _now: Instant) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }

    /// Next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<CascadeEvent> {
        self.events.pop_front()
    }

    /// Alice sets no timers: always `None`.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Nothing to do: Alice only reacts to Bob.
    pub fn handle_timeout(&mut self, _now: Instant) {}

    fn abort(&mut self, reason: AbortReason) {
        if self.state == State::Answering {
            self.state = State::Aborted;
            self.events.push_back(CascadeEvent::Aborted(reason));
            self.outbox.push_back(
                CascadeMessage::Abort {
                    frame_id: self.frame_id,
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
