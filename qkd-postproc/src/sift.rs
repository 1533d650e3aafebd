//! Sifting: keep the slots where Alice and Bob used the same basis.
//!
//! ```text
//!  Bob                                   Alice
//!  announce(&bob_frame) ──BasisAnnouncement──▶ sift_alice(&alice_frame, &ann)
//!                                              │ keeps matching slots
//!  sift_bob(&bob_frame, &dec) ◀──SiftDecision──┘
//! ```
//!
//! Bob announces which slots he detected and his basis for each; Alice
//! answers with one keep-bit per detection (bases equal). Both keep the values
//! at kept positions, in slot order, so the two sifted keys line up bit for
//! bit. The announcement and decision reveal bases and positions only, never
//! values; they travel over the authenticated channel.
//!
//! ```
//! use qkd_core::{SimulatedBb84, SimulatorConfig};
//! use qkd_postproc::sift;
//!
//! let mut sim = SimulatedBb84::new(SimulatorConfig { qber: 0.0, frame_slots: 10_000, ..Default::default() }).unwrap();
//! let (alice, bob) = sim.next_pair();
//! let ann = sift::announce(&bob).unwrap();
//! let (decision, alice_key) = sift::sift_alice(&alice, &ann).unwrap();
//! let bob_key = sift::sift_bob(&bob, &decision).unwrap();
//! assert_eq!(alice_key, bob_key); // qber 0: identical
//! ```

use std::time::{Duration, Instant};

use bytes::BufMut;
use qkd_core::machine::{ConfigError, Machine, Retransmit, RetransmitDue};
use qkd_core::wire::{Envelope, Protocol, Reader, WireError, append_crc32, put_bits, strip_crc32};
use qkd_core::{BitVec, BlockId, RawFrame};
use serde::{Deserialize, Serialize};

/// Errors of sifting. They name what mismatched, never key values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SiftError {
    /// A frame from the wrong end was given (Alice's where Bob's is needed or
    /// the other way round).
    #[error("frame is from the wrong end of the link")]
    WrongRole,
    /// The two inputs describe different blocks.
    #[error("block mismatch: local block {local}, peer block {peer}")]
    BlockMismatch {
        /// Our block.
        local: BlockId,
        /// The peer's block.
        peer: BlockId,
    },
    /// A length did not match (slots, detections or decision bits).
    #[error("inconsistent lengths: expected {expected}, got {actual}")]
    Length {
        /// What was needed.
        expected: usize,
        /// What was given.
        actual: usize,
    },
}

/// Bob → Alice: where Bob detected, and in which basis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasisAnnouncement {
    /// The block (the frame's number) this refers to.
    pub block: BlockId,
    /// One bit per slot: detection or not.
    pub detections: BitVec,
    /// Bob's basis per detection, in slot order.
    pub bases: BitVec,
}

/// Alice → Bob: which of Bob's detections are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiftDecision {
    /// The block (the frame's number) this refers to.
    pub block: BlockId,
    /// One bit per detection: set where the bases matched.
    pub keep: BitVec,
}

/// Bob's announcement for one of his frames.
///
/// # Errors
/// [`SiftError::WrongRole`] for a frame without detections (Alice's), or
/// [`SiftError::Length`] for an inconsistent frame.
pub fn announce(bob: &RawFrame) -> Result<BasisAnnouncement, SiftError> {
    let detections = bob.detections.as_ref().ok_or(SiftError::WrongRole)?;
    bob.validate().map_err(|_| SiftError::Length {
        expected: detections.count_ones(),
        actual: bob.values.len(),
    })?;
    Ok(BasisAnnouncement {
        block: bob.block,
        detections: detections.clone(),
        bases: bob.bases.clone(),
    })
}

/// Alice's side: compares bases, returns the decision for Bob and her sifted key.
///
/// # Errors
/// [`SiftError`] if the frame is Bob's, the frame IDs differ, or the
/// announcement's lengths do not fit the frame (a malformed or hostile peer).
pub fn sift_alice(
    alice: &RawFrame,
    ann: &BasisAnnouncement,
) -> Result<(SiftDecision, BitVec), SiftError> {
    if alice.detections.is_some() {
        return Err(SiftError::WrongRole);
    }
    if alice.block != ann.block {
        return Err(SiftError::BlockMismatch {
            local: alice.block,
            peer: ann.block,
        });
    }
    if ann.detections.len() != alice.slots
        || alice.values.len() != alice.slots
        || alice.bases.len() != alice.slots
    {
        return Err(SiftError::Length {
            expected: alice.slots,
            actual: ann.detections.len(),
        });
    }
    let detected = ann.detections.count_ones();
    if ann.bases.len() != detected {
        return Err(SiftError::Length {
            expected: detected,
            actual: ann.bases.len(),
        });
    }
    // keep = NOT(Alice's bases at Bob's detections XOR Bob's bases)
    let mut keep = alice.bases.select(&ann.detections);
    keep ^= &ann.bases;
    keep.invert();
    let key = alice.values.select(&ann.detections).select(&keep);
    Ok((
        SiftDecision {
            block: alice.block,
            keep,
        },
        key,
    ))
}

/// Bob's side: keeps his values where Alice's decision says so.
///
/// # Errors
/// [`SiftError`] if the frame is Alice's, the frame IDs differ, or the
/// decision does not have one bit per detection.
pub fn sift_bob(bob: &RawFrame, decision: &SiftDecision) -> Result<BitVec, SiftError> {
    if bob.detections.is_none() {
        return Err(SiftError::WrongRole);
    }
    if bob.block != decision.block {
        return Err(SiftError::BlockMismatch {
            local: bob.block,
            peer: decision.block,
        });
    }
    if decision.keep.len() != bob.values.len() {
        return Err(SiftError::Length {
            expected: bob.values.len(),
            actual: decision.keep.len(),
        });
    }
    let key = bob.values.select(&decision.keep);
    Ok(key)
}

// ----- wire format and machines -----

/// Version of the sifting wire format.
pub const VERSION: u8 = 1;
const TYPE_ANNOUNCEMENT: u8 = 1;
const TYPE_DECISION: u8 = 2;

/// Most time slots one frame may cover on the wire (2^31: a 256 MiB bitmap).
pub const MAX_SLOTS: usize = 1 << 31;

/// The two sifting messages on the wire (protocol [`Protocol::Sift`], version 1).
///
/// Integers big-endian, bits LSB first with zero padding, a CRC-32 trailer
/// ([`qkd_core::wire::append_crc32`]) against damage on a raw link:
///
/// ```text
/// Announcement (type 1): 11 01 01 | block u64 | slots u32 | detections ⌈slots/8⌉ | bases ⌈popcount/8⌉ | crc u32
/// Decision     (type 2): 11 01 02 | block u64 | detected u32 | keep ⌈detected/8⌉ | crc u32
/// ```
///
/// The number of bases is the number of detections, so it is not sent;
/// a Decision for block 3 keeping detections 0 and 2 of three:
///
/// ```text
/// 11 01 02  00 00 00 00 00 00 00 03  00 00 00 03  05  <crc32 of the 16 bytes before it>
/// ```
///
/// ```
/// use qkd_core::{BitVec, BlockId};
/// use qkd_postproc::sift::{SiftDecision, SiftMessage};
///
/// let mut keep = BitVec::zeros(3);
/// keep.set(0, true);
/// keep.set(2, true);
/// let m = SiftMessage::Decision(SiftDecision { block: BlockId::new(3), keep });
/// let bytes = m.encode();
/// assert_eq!(&bytes[..16], [0x11, 1, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 3, 0x05]);
/// assert_eq!(SiftMessage::decode(&bytes).unwrap(), m);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiftMessage {
    /// Bob → Alice.
    Announcement(BasisAnnouncement),
    /// Alice → Bob.
    Decision(SiftDecision),
}

impl SiftMessage {
    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out;
        match self {
            SiftMessage::Announcement(a) => {
                out = Envelope::new(Protocol::Sift, VERSION, TYPE_ANNOUNCEMENT)
                    .start(20 + a.detections.len().div_ceil(8) + a.bases.len().div_ceil(8));
                out.put_u64(a.block.get());
                out.put_u32(a.detections.len() as u32);
                put_bits(&mut out, &a.detections);
                put_bits(&mut out, &a.bases);
            }
            SiftMessage::Decision(d) => {
                out = Envelope::new(Protocol::Sift, VERSION, TYPE_DECISION)
                    .start(20 + d.keep.len().div_ceil(8));
                out.put_u64(d.block.get());
                out.put_u32(d.keep.len() as u32);
                put_bits(&mut out, &d.keep);
            }
        }
        append_crc32(&mut out);
        out
    }

    /// Decodes one message, checking the envelope, lengths, padding and CRC.
    ///
    /// # Errors
    /// Any [`WireError`]; an announcement whose number of bases is not its
    /// number of detections cannot be expressed, so it cannot be sent.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(strip_crc32(bytes)?);
        let message = match r.envelope(Protocol::Sift, VERSION)? {
            TYPE_ANNOUNCEMENT => {
                let block = r.block()?;
                let slots = r.count_u32("slots", MAX_SLOTS, 0)?;
                r.ensure(slots.div_ceil(8))?;
                let detections = r.bits("detections", slots)?;
                let bases = r.bits("bases", detections.count_ones())?;
                SiftMessage::Announcement(BasisAnnouncement {
                    block,
                    detections,
                    bases,
                })
            }
            TYPE_DECISION => {
                let block = r.block()?;
                let detected = r.count_u32("detected", MAX_SLOTS, 0)?;
                r.ensure(detected.div_ceil(8))?;
                let keep = r.bits("keep", detected)?;
                SiftMessage::Decision(SiftDecision { block, keep })
            }
            other => return Err(Reader::unknown_type(Protocol::Sift, other)),
        };
        r.finish()?;
        Ok(message)
    }
}

/// Settings of the sifting machines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiftConfig {
    /// Bob sends his announcement again after this long without a decision.
    /// Default 200 ms.
    pub retransmit_after: Duration,
    /// Bob gives up (event [`SiftEvent::Aborted`]) after this many resends. Default 10.
    pub max_retransmissions: u32,
}

impl Default for SiftConfig {
    fn default() -> Self {
        SiftConfig {
            retransmit_after: Duration::from_millis(200),
            max_retransmissions: 10,
        }
    }
}

impl SiftConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// A zero `retransmit_after`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.retransmit_after.is_zero() {
            return Err(ConfigError::new("retransmit_after", "must be above zero"));
        }
        Ok(())
    }
}

/// Why a block's sifting ended without a key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SiftAbort {
    /// The peer's message does not fit this side's frame (another frame
    /// size, another number of detections).
    Mismatch(SiftError),
    /// Bob had no decision after every retransmission.
    Timeout,
}

/// Outcome of one block's sifting; each machine ends with exactly one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiftEvent {
    /// The sifted key, in slot order; both sides' keys line up bit for bit.
    Sifted {
        /// The block.
        block: BlockId,
        /// The sifted key.
        key: BitVec,
    },
    /// The block is dropped.
    Aborted {
        /// The block.
        block: BlockId,
        /// Why.
        reason: SiftAbort,
    },
}

/// Why a sifting datagram was rejected; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SiftInputError {
    /// Not a valid sifting message.
    #[error("malformed sifting message: {0}")]
    Malformed(#[from] WireError),
    /// A message for another block.
    #[error("sifting message for block {got}, this machine runs block {expected}")]
    WrongBlock {
        /// This machine's block.
        expected: BlockId,
        /// The message's.
        got: BlockId,
    },
    /// A message this side does not expect (an announcement to Bob, a
    /// decision to Alice, a second different announcement, anything after the end).
    #[error("unexpected sifting message")]
    Unexpected,
}

fn frame_check(frame: &RawFrame, bob: bool) -> Result<(), ConfigError> {
    if frame.detections.is_some() != bob {
        return Err(ConfigError::new(
            "frame",
            if bob {
                "Bob's machine needs Bob's frame (with detections)"
            } else {
                "Alice's machine needs Alice's frame (without detections)"
            },
        ));
    }
    if frame.slots > MAX_SLOTS {
        return Err(ConfigError::new(
            "frame.slots",
            format!("at most {MAX_SLOTS} slots fit one sifting message"),
        ));
    }
    frame
        .validate()
        .map_err(|e| ConfigError::new("frame", e.to_string()))
}

/// Bob's side: announces his detections and bases, keeps what Alice decides.
pub struct SiftBob {
    frame: RawFrame,
    announcement: Vec<u8>,
    send_now: bool,
    timer: Retransmit,
    event: Option<SiftEvent>,
    finished: bool,
}

impl core::fmt::Debug for SiftBob {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SiftBob")
            .field("block", &self.frame.block)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl SiftBob {
    /// Bob's machine for one of his frames.
    ///
    /// # Errors
    /// An invalid `config`, or a frame that is not a valid frame of Bob's.
    pub fn new(frame: RawFrame, config: &SiftConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        frame_check(&frame, true)?;
        let announcement = SiftMessage::Announcement(
            announce(&frame).map_err(|e| ConfigError::new("frame", e.to_string()))?,
        )
        .encode();
        Ok(SiftBob {
            frame,
            announcement,
            send_now: true,
            timer: Retransmit::new(config.retransmit_after, config.max_retransmissions),
            event: None,
            finished: false,
        })
    }

    /// The block.
    pub fn block(&self) -> BlockId {
        self.frame.block
    }

    /// Whether the outcome is known.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn finish(&mut self, event: SiftEvent) {
        self.finished = true;
        self.send_now = false;
        self.timer.disarm();
        self.event = Some(event);
    }
}

impl Machine for SiftBob {
    type Event = SiftEvent;
    type Error = SiftInputError;

    fn handle_input(&mut self, _now: Instant, datagram: &[u8]) -> Result<(), SiftInputError> {
        let SiftMessage::Decision(decision) = SiftMessage::decode(datagram)? else {
            return Err(SiftInputError::Unexpected);
        };
        if decision.block != self.frame.block {
            return Err(SiftInputError::WrongBlock {
                expected: self.frame.block,
                got: decision.block,
            });
        }
        if self.finished {
            return Err(SiftInputError::Unexpected);
        }
        let block = self.frame.block;
        let event = match sift_bob(&self.frame, &decision) {
            Ok(key) => SiftEvent::Sifted { block, key },
            Err(e) => SiftEvent::Aborted {
                block,
                reason: SiftAbort::Mismatch(e),
            },
        };
        self.finish(event);
        Ok(())
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !self.send_now {
            return None;
        }
        self.send_now = false;
        self.timer.arm(now);
        Some(self.announcement.clone())
    }

    fn poll_event(&mut self) -> Option<SiftEvent> {
        self.event.take()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.timer.deadline()
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self.timer.poll(now) {
            RetransmitDue::NotYet => {}
            RetransmitDue::Resend => self.send_now = true,
            RetransmitDue::GiveUp => self.finish(SiftEvent::Aborted {
                block: self.frame.block,
                reason: SiftAbort::Timeout,
            }),
        }
    }
}

/// Alice's side: answers Bob's announcement with the decision and keeps
/// the matching slots. She knows the outcome on the announcement and stays
/// able to answer a repeat of it, so a host keeps the machine until the
/// block's next stage has started.
pub struct SiftAlice {
    frame: RawFrame,
    /// After the announcement: its bytes and the decision sent for it.
    answered: Option<(Vec<u8>, Vec<u8>)>,
    send: Option<Vec<u8>>,
    event: Option<SiftEvent>,
    finished: bool,
}

impl core::fmt::Debug for SiftAlice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SiftAlice")
            .field("block", &self.frame.block)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl SiftAlice {
    /// Alice's machine for one of her frames.
    ///
    /// # Errors
    /// An invalid `config`, or a frame that is not a valid frame of Alice's.
    pub fn new(frame: RawFrame, config: &SiftConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        frame_check(&frame, false)?;
        Ok(SiftAlice {
            frame,
            answered: None,
            send: None,
            event: None,
            finished: false,
        })
    }

    /// The block.
    pub fn block(&self) -> BlockId {
        self.frame.block
    }

    /// Whether the outcome is known.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

impl Machine for SiftAlice {
    type Event = SiftEvent;
    type Error = SiftInputError;

    fn handle_input(&mut self, _now: Instant, datagram: &[u8]) -> Result<(), SiftInputError> {
        let SiftMessage::Announcement(announcement) = SiftMessage::decode(datagram)? else {
            return Err(SiftInputError::Unexpected);
        };
        let block = self.frame.block;
        if announcement.block != block {
            return Err(SiftInputError::WrongBlock {
                expected: block,
                got: announcement.block,
            });
        }
        if let Some((seen, decision)) = &self.answered {
            if seen.as_slice() != datagram {
                return Err(SiftInputError::Unexpected);
            }
            self.send = Some(decision.clone());
            return Ok(());
        }
        if self.finished {
            return Err(SiftInputError::Unexpected);
        }
        self.finished = true;
        match sift_alice(&self.frame, &announcement) {
            Ok((decision, key)) => {
                let decision = SiftMessage::Decision(decision).encode();
                self.send = Some(decision.clone());
                self.answered = Some((datagram.to_vec(), decision));
                self.event = Some(SiftEvent::Sifted { block, key });
            }
            Err(e) => {
                self.event = Some(SiftEvent::Aborted {
                    block,
                    reason: SiftAbort::Mismatch(e),
                });
            }
        }
        Ok(())
    }

    fn poll_transmit(&mut self, _now: Instant) -> Option<Vec<u8>> {
        self.send.take()
    }

    fn poll_event(&mut self) -> Option<SiftEvent> {
        self.event.take()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _now: Instant) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use qkd_core::{SimulatedBb84, SimulatorConfig};

    fn pair(qber: f64, seed: u64) -> (RawFrame, RawFrame) {
        SimulatedBb84::new(SimulatorConfig {
            qber,
            frame_slots: 200_000,
            seed,
            ..Default::default()
        })
        .unwrap()
        .next_pair()
    }

    #[test]
    fn sifted_keys_line_up_and_measure_the_qber() {
        let (a, b) = pair(0.05, 1);
        let ann = announce(&b).unwrap();
        let (dec, ka) = sift_alice(&a, &ann).unwrap();
        let kb = sift_bob(&b, &dec).unwrap();
        assert_eq!(ka.len(), kb.len());
        assert_eq!(ka.len(), dec.keep.count_ones());
        let q = ka.hamming_distance(&kb) as f64 / ka.len() as f64;
        assert!((q - 0.05).abs() < 0.01, "{q}");
        // About half the detections survive with unbiased bases.
        let ratio = ka.len() as f64 / b.values.len() as f64;
        assert!((ratio - 0.5).abs() < 0.02, "{ratio}");
    }

    #[test]
    fn wrong_roles_and_mismatches_are_errors() {
        let (a, b) = pair(0.0, 2);
        assert_eq!(announce(&a), Err(SiftError::WrongRole));
        let mut ann = announce(&b).unwrap();
        assert!(matches!(sift_alice(&b, &ann), Err(SiftError::WrongRole)));
        ann.block = BlockId::new(9);
        assert!(matches!(
            sift_alice(&a, &ann),
            Err(SiftError::BlockMismatch { .. })
        ));
        ann.block = a.block;
        ann.bases.push(true);
        assert!(matches!(
            sift_alice(&a, &ann),
            Err(SiftError::Length { .. })
        ));
        let mut ann = announce(&b).unwrap();
        ann.detections.truncate(10);
        assert!(matches!(
            sift_alice(&a, &ann),
            Err(SiftError::Length { .. })
        ));
        let (mut dec, _) = sift_alice(&a, &announce(&b).unwrap()).unwrap();
        assert!(matches!(sift_bob(&a, &dec), Err(SiftError::WrongRole)));
        dec.keep.push(false);
        assert!(matches!(sift_bob(&b, &dec), Err(SiftError::Length { .. })));
    }

    use proptest::prelude::*;
    use qkd_core::sim::{LinkConfig, Network};

    fn run(link: LinkConfig, seed: u64) -> (Vec<SiftEvent>, Vec<SiftEvent>) {
        let (a, b) = pair(0.03, seed);
        let config = SiftConfig::default();
        let alice = SiftAlice::new(a, &config).unwrap();
        let bob = SiftBob::new(b, &config).unwrap();
        let mut net = Network::new(alice, bob, link, seed, std::time::Instant::now());
        net.drive();
        (net.take_events_a(), net.take_events_b())
    }

    #[test]
    fn machines_sift_through_a_faulty_link() {
        let mut both = 0;
        for seed in 0..12 {
            let (ea, eb) = run(LinkConfig::hostile(Duration::from_millis(2)), seed);
            assert_eq!(ea.len(), 1, "Alice ends once");
            assert_eq!(eb.len(), 1, "Bob ends once");
            match (&ea[0], &eb[0]) {
                (SiftEvent::Sifted { key: ka, .. }, SiftEvent::Sifted { key: kb, .. }) => {
                    assert_eq!(ka.len(), kb.len(), "seed {seed}");
                    let q = ka.hamming_distance(kb) as f64 / ka.len() as f64;
                    assert!((q - 0.03).abs() < 0.01, "seed {seed}: {q}");
                    both += 1;
                }
                (
                    _,
                    SiftEvent::Aborted {
                        reason: SiftAbort::Timeout,
                        ..
                    },
                ) => {}
                other => panic!("seed {seed}: {other:?}"),
            }
        }
        assert!(both >= 10, "only {both} of 12 runs sifted on both sides");
    }

    #[test]
    fn machines_refuse_the_wrong_frame_and_foreign_messages() {
        let (a, b) = pair(0.0, 5);
        let config = SiftConfig::default();
        assert_eq!(
            SiftAlice::new(b.clone(), &config).unwrap_err().field(),
            "frame"
        );
        assert_eq!(
            SiftBob::new(a.clone(), &config).unwrap_err().field(),
            "frame"
        );
        let bad = SiftConfig {
            retransmit_after: Duration::ZERO,
            ..config.clone()
        };
        assert_eq!(
            SiftBob::new(b.clone(), &bad).unwrap_err().field(),
            "retransmit_after"
        );
        let now = std::time::Instant::now();
        let mut alice = SiftAlice::new(a, &config).unwrap();
        let mut bob = SiftBob::new(b, &config).unwrap();
        let ann = bob.poll_transmit(now).unwrap();
        // Bob refuses an announcement; Alice refuses a decision and another block.
        assert_eq!(bob.handle_input(now, &ann), Err(SiftInputError::Unexpected));
        let mut other = ann.clone();
        other[10] ^= 1; // block number
        other.truncate(other.len() - 4);
        append_crc32(&mut other);
        assert!(matches!(
            alice.handle_input(now, &other),
            Err(SiftInputError::WrongBlock { .. })
        ));
        alice.handle_input(now, &ann).unwrap();
        let decision = alice.poll_transmit(now).unwrap();
        assert_eq!(
            alice.handle_input(now, &decision),
            Err(SiftInputError::Unexpected)
        );
        // A repeated announcement gets the same decision again.
        alice.handle_input(now, &ann).unwrap();
        assert_eq!(alice.poll_transmit(now), Some(decision.clone()));
        bob.handle_input(now, &decision).unwrap();
        assert!(bob.is_finished() && alice.is_finished());
        assert_eq!(
            bob.handle_input(now, &decision),
            Err(SiftInputError::Unexpected)
        );
    }

    fn arb_message() -> impl Strategy<Value = SiftMessage> {
        let ann = (
            any::<u64>(),
            proptest::collection::vec(any::<bool>(), 0..200),
            any::<u64>(),
        )
            .prop_map(|(block, det, bits)| {
                let detections: BitVec = det.into_iter().collect();
                let n = detections.count_ones();
                let bases: BitVec = (0..n).map(|i| (bits >> (i % 64)) & 1 == 1).collect();
                SiftMessage::Announcement(BasisAnnouncement {
                    block: BlockId::new(block),
                    detections,
                    bases,
                })
            });
        let dec = (
            any::<u64>(),
            proptest::collection::vec(any::<bool>(), 0..200),
        )
            .prop_map(|(block, keep)| {
                SiftMessage::Decision(SiftDecision {
                    block: BlockId::new(block),
                    keep: keep.into_iter().collect(),
                })
            });
        prop_oneof![ann, dec]
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity(m in arb_message()) {
            prop_assert_eq!(SiftMessage::decode(&m.encode()).unwrap(), m);
        }

        #[test]
        fn every_prefix_and_extension_is_rejected(m in arb_message(), extra: u8) {
            let bytes = m.encode();
            for cut in 0..bytes.len() {
                prop_assert!(SiftMessage::decode(&bytes[..cut]).is_err());
            }
            let mut longer = bytes;
            longer.push(extra);
            prop_assert!(SiftMessage::decode(&longer).is_err());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = SiftMessage::decode(&bytes);
            let mut framed = vec![Protocol::Sift.id(), VERSION];
            framed.extend_from_slice(&bytes);
            append_crc32(&mut framed);
            let _ = SiftMessage::decode(&framed);
        }
    }
}
