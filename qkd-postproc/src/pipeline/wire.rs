//! The pipeline's own framing: the outer frames every datagram travels in,
//! and the few stage messages the pipeline adds to the stages' own.
//!
//! # Outer frames (protocol [`Protocol::Pipeline`], `0x17`, version 1)
//!
//! Every datagram between two pipelines is one frame. Integers big-endian;
//! every frame ends with a CRC-32 (IEEE) over all bytes before it, so a
//! damaged datagram is dropped before anything else looks at it (it is
//! then resent like a lost one). The CRC is not authentication: that is the
//! [`auth`](crate::auth) layer's, inside.
//!
//! ```text
//! Data    (type 1): 17 01 01 | block u64 | ack u32 | seq u32 | sealed u8 | body | crc u32
//! Ack     (type 2): 17 01 02 | block u64 | ack u32 | crc u32
//! Control (type 3): 17 01 03 | kind u8 | block u64 | count u32 | sealed message | crc u32
//! ```
//!
//! - **Data** carries message `seq` (0, 1, 2 ...) of the sender's stream
//!   for `block`, and acknowledges the first `ack` messages of the
//!   receiver's stream. `sealed = 0`: `body` is the stage message itself
//!   (transcript authentication: it is absorbed into the round's
//!   transcript); `sealed = 1`: `body` is a sealed
//!   [`auth`](crate::auth) message whose payload is
//!   `block u64 | seq u32 | stage message` (per-message authentication).
//! - **Ack** acknowledges without data.
//! - **Control** carries one sealed message outside the streams:
//!   [`ControlKind`]. `count` is the number of stream messages a
//!   transcript tag covers (0 for the other kinds). For every kind but the
//!   transcript tag and the feed notice (the channel's own bodies) the
//!   sealed payload is `kind u8 | block u64 | body`
//!   (see [`ControlBody`]).
//!
//! The `block`, `ack`, `seq` and `count` fields of the outer frame are not
//! authenticated; they only route a datagram and drive retransmission. A
//! forged value can at worst make a message wait, be resent, or make a
//! round's transcript tag fail, which drops the block on both sides.
//!
//! An Ack for block 3 acknowledging 2 messages:
//!
//! ```text
//! 17 01 02  00 00 00 00 00 00 00 03  00 00 00 02  <crc32 of the 15 bytes before it>
//! ```
//!
//! # Stage messages the pipeline adds
//!
//! Inside the streams, next to the stages' own messages (sift `0x11`,
//! estimate `0x12`, Cascade `0x13`, confirm `0x15`), the pipeline sends:
//!
//! ```text
//! Chunk      17 01 10 | chunk u32 | LDPC message             (one LDPC frame per chunk of the key)
//! Batch      17 01 12 | count u32 | count × (chunk u32 | length u32 | Cascade message [length])
//!                                                             (one message of each of several chunks)
//! Parameters 17 01 11 | stage u8 | body                      (Alice announces a stage's parameters:
//!            stage 2 estimate: abort_qber f64 | eps_pe f64; stage 3 cascade: variant u8 | shuffle_seed u64 |
//!            chunks u32 | chunk bits u32 each; stage 5 amplify: eps_sec f64;
//!            stage 6 ldpc: blind u8 | max_rounds u16 | max_iterations u16 | frames u32 |
//!            per frame: rung u8 | n u32 | punctured u32 | shortened u32 | step u32)
//! Seed       16 01 01 | block u64 | construction u8 | output_bits u64 | input_bits u64 | seed bits
//! ```
//!
//! [`StageParameters`] gives the bodies. Bits are packed LSB first.
//!
//! # Cascade rounds in one message
//!
//! Every chunk of a block's key is one Cascade run, and the runs go on side
//! by side. A **Batch** carries the messages of every chunk that has one
//! to send at the same moment, in one stream message (so in one Data
//! frame): after a side has handled a whole batch of the peer, it polls
//! every chunk's Cascade machine and puts what they produced into the next
//! batch. Chunks need not be in the same round: a chunk that has finished
//! simply has nothing in the batch, and one that lags is answered in the
//! batch after. The rule, checked by [`decode_chunk_batch`]:
//! `1 ≤ count ≤` the block's chunk count, chunk indices strictly increasing
//! (at most one message per chunk, one encoding per batch) and below the
//! chunk count, every `length ≥ 1`, no trailing bytes. A Cascade machine
//! emits at most one message per input, so one batch is enough per turn;
//! should a chunk ever have two, the second goes into a following batch,
//! which keeps every chunk's messages in order.
//!
//! The batch is a stream message like any other: it is absorbed into the
//! block's transcript as `block u64 | seq u32 | batch bytes` (the
//! encoding is injective: a length before every message), so the
//! transcript tags cover every chunk's message and its index, as they did
//! when each chunk message was a stream message of its own.
//!
//! The batch is new in version 1 of the framing (builds before it sent each
//! Cascade message in its own Chunk). The two forms do not mix: a side of
//! either build drops a Cascade block whose correction messages come in the
//! other form ([`DropReason::Protocol`](super::DropReason::Protocol), on
//! both sides, no key), so two such builds keep the link up but agree on
//! no block; LDPC frames still travel as Chunks.
//!
//! Example: the messages of chunks 0 and 2 (3 and 2 bytes):
//!
//! ```text
//! 17 01 12  00 00 00 02                                count 2
//! 00 00 00 00  00 00 00 03  aa bb cc                    chunk 0, 3 bytes
//! 00 00 00 02  00 00 00 02  dd ee                       chunk 2, 2 bytes
//! ```

use bytes::BufMut;
use qkd_core::wire::{Envelope, Protocol, Reader, WireError, append_crc32, put_bits, strip_crc32};
use qkd_core::{BitVec, BlockId};

use crate::amplify::Construction;
use crate::cascade::Variant;

/// Version of the pipeline framing.
pub const VERSION: u8 = 1;
const TYPE_DATA: u8 = 1;
const TYPE_ACK: u8 = 2;
const TYPE_CONTROL: u8 = 3;
const TYPE_CHUNK: u8 = 0x10;
const TYPE_PARAMETERS: u8 = 0x11;
const TYPE_CHUNK_BATCH: u8 = 0x12;
const AMPLIFY_VERSION: u8 = 1;
const TYPE_SEED: u8 = 1;

/// Largest Toeplitz seed accepted on the wire, in bits (2^33: 1 GiB).
pub const MAX_SEED_BITS: u64 = 1 << 33;
/// Most Cascade chunks of one block.
pub const MAX_CHUNKS: usize = 1 << 16;

/// What a control frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ControlKind {
    /// Each side's first message: the digest of its pipeline definition.
    Hello,
    /// A round's transcript tag (transcript authentication).
    TranscriptTag,
    /// Bob's end of a round in per-message mode: his side is ready to keep.
    RoundEnd,
    /// Alice's decision on a block (keep or drop, and the key length).
    Outcome,
    /// Bob's answer to an outcome: whether he kept the block.
    OutcomeAck,
    /// The sender dropped the block (or never had it).
    Abandon,
    /// The authentication channel's feed notice (deposit count and digest,
    /// receive floor), sent after each kept block and after a restore.
    FeedNotice,
}

impl ControlKind {
    /// The kind byte.
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            ControlKind::Hello => 1,
            ControlKind::TranscriptTag => 2,
            ControlKind::RoundEnd => 3,
            ControlKind::Outcome => 4,
            ControlKind::OutcomeAck => 5,
            ControlKind::Abandon => 6,
            ControlKind::FeedNotice => 7,
        }
    }

    /// The kind of a byte.
    #[must_use]
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => ControlKind::Hello,
            2 => ControlKind::TranscriptTag,
            3 => ControlKind::RoundEnd,
            4 => ControlKind::Outcome,
            5 => ControlKind::OutcomeAck,
            6 => ControlKind::Abandon,
            7 => ControlKind::FeedNotice,
            _ => return None,
        })
    }
}

/// One decoded outer frame, borrowing the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame<'a> {
    /// A stream message.
    Data {
        /// The block.
        block: BlockId,
        /// Messages of the receiver's stream the sender has received in order.
        ack: u32,
        /// Position of this message in the sender's stream.
        seq: u32,
        /// Whether `body` is a sealed message.
        sealed: bool,
        /// The stage message, or the sealed message carrying it.
        body: &'a [u8],
    },
    /// An acknowledgement without data.
    Ack {
        /// The block.
        block: BlockId,
        /// Messages of the receiver's stream received in order.
        ack: u32,
    },
    /// A sealed message outside the streams.
    Control {
        /// What it carries.
        kind: ControlKind,
        /// The block (zero for a hello).
        block: BlockId,
        /// Stream messages a transcript tag covers.
        count: u32,
        /// The sealed message.
        sealed: &'a [u8],
    },
}

impl<'a> Frame<'a> {
    /// Decodes one frame, checking the CRC, the envelope and every length.
    ///
    /// # Errors
    /// A [`WireError`] for anything malformed; never panics.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(strip_crc32(bytes)?);
        let frame = match r.envelope(Protocol::Pipeline, VERSION)? {
            TYPE_DATA => {
                let block = r.block()?;
                let ack = r.u32()?;
                let seq = r.u32()?;
                let sealed = r.bool("sealed")?;
                let body = r.rest();
                if body.is_empty() {
                    return Err(WireError::invalid("body", "must not be empty"));
                }
                Frame::Data {
                    block,
                    ack,
                    seq,
                    sealed,
                    body,
                }
            }
            TYPE_ACK => {
                let block = r.block()?;
                let ack = r.u32()?;
                Frame::Ack { block, ack }
            }
            TYPE_CONTROL => {
                let kind = ControlKind::from_code(r.u8()?)
                    .ok_or(WireError::invalid("kind", "unknown control kind"))?;
                let block = r.block()?;
                let count = r.u32()?;
                let sealed = r.rest();
                if sealed.is_empty() {
                    return Err(WireError::invalid("sealed", "must not be empty"));
                }
                Frame::Control {
                    kind,
                    block,
                    count,
                    sealed,
                }
            }
            other => return Err(Reader::unknown_type(Protocol::Pipeline, other)),
        };
        r.finish()?;
        Ok(frame)
    }

    /// Encodes the frame.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out;
        match *self {
            Frame::Data {
                block,
                ack,
                seq,
                sealed,
                body,
            } => {
                out = Envelope::new(Protocol::Pipeline, VERSION, TYPE_DATA).start(21 + body.len());
                out.put_u64(block.get());
                out.put_u32(ack);
                out.put_u32(seq);
                out.put_u8(u8::from(sealed));
                out.extend_from_slice(body);
            }
            Frame::Ack { block, ack } => {
                out = Envelope::new(Protocol::Pipeline, VERSION, TYPE_ACK).start(16);
                out.put_u64(block.get());
                out.put_u32(ack);
            }
            Frame::Control {
                kind,
                block,
                count,
                sealed,
            } => {
                out = Envelope::new(Protocol::Pipeline, VERSION, TYPE_CONTROL)
                    .start(17 + sealed.len());
                out.put_u8(kind.code());
                out.put_u64(block.get());
                out.put_u32(count);
                out.extend_from_slice(sealed);
            }
        }
        append_crc32(&mut out);
        out
    }
}

/// The authenticated payload of a control message (all kinds but the
/// transcript tag, whose sealed body is the channel's own).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlBody {
    /// `01 | 0 u64 | digest [32] | answer u8`.
    Hello {
        /// The blake3 digest of the sender's pipeline definition.
        digest: [u8; 32],
        /// Whether this hello answers the peer's (no answer is due then).
        answer: bool,
    },
    /// `03 | block u64`.
    RoundEnd {
        /// The block.
        block: BlockId,
    },
    /// `04 | block u64 | keep u8 | final_bits u64`.
    Outcome {
        /// The block.
        block: BlockId,
        /// Whether Alice keeps it.
        keep: bool,
        /// The hashed key length in bits (before the authentication pool's share).
        final_bits: u64,
    },
    /// `05 | block u64 | kept u8`.
    OutcomeAck {
        /// The block.
        block: BlockId,
        /// Whether Bob kept it.
        kept: bool,
    },
    /// `06 | block u64`.
    Abandon {
        /// The block.
        block: BlockId,
    },
}

impl ControlBody {
    /// The kind of this body.
    #[must_use]
    pub fn kind(&self) -> ControlKind {
        match self {
            ControlBody::Hello { .. } => ControlKind::Hello,
            ControlBody::RoundEnd { .. } => ControlKind::RoundEnd,
            ControlBody::Outcome { .. } => ControlKind::Outcome,
            ControlBody::OutcomeAck { .. } => ControlKind::OutcomeAck,
            ControlBody::Abandon { .. } => ControlKind::Abandon,
        }
    }

    /// The block it is about (zero for a hello).
    #[must_use]
    pub fn block(&self) -> BlockId {
        match *self {
            ControlBody::Hello { .. } => BlockId::new(0),
            ControlBody::RoundEnd { block }
            | ControlBody::Outcome { block, .. }
            | ControlBody::OutcomeAck { block, .. }
            | ControlBody::Abandon { block } => block,
        }
    }

    /// The payload bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        out.put_u8(self.kind().code());
        out.put_u64(self.block().get());
        match self {
            ControlBody::Hello { digest, answer } => {
                out.extend_from_slice(digest);
                out.put_u8(u8::from(*answer));
            }
            ControlBody::Outcome {
                keep, final_bits, ..
            } => {
                out.put_u8(u8::from(*keep));
                out.put_u64(*final_bits);
            }
            ControlBody::OutcomeAck { kept, .. } => out.put_u8(u8::from(*kept)),
            ControlBody::RoundEnd { .. } | ControlBody::Abandon { .. } => {}
        }
        out
    }

    /// Decodes a payload.
    ///
    /// # Errors
    /// A [`WireError`] for anything malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let kind = ControlKind::from_code(r.u8()?)
            .ok_or(WireError::invalid("kind", "unknown control kind"))?;
        let block = r.block()?;
        let body = match kind {
            ControlKind::Hello => {
                if block.get() != 0 {
                    return Err(WireError::invalid("block", "a hello carries block 0"));
                }
                ControlBody::Hello {
                    digest: r.array()?,
                    answer: r.bool("answer")?,
                }
            }
            ControlKind::RoundEnd => ControlBody::RoundEnd { block },
            ControlKind::Outcome => ControlBody::Outcome {
                block,
                keep: r.bool("keep")?,
                final_bits: r.u64()?,
            },
            ControlKind::OutcomeAck => ControlBody::OutcomeAck {
                block,
                kept: r.bool("kept")?,
            },
            ControlKind::Abandon => ControlBody::Abandon { block },
            ControlKind::TranscriptTag | ControlKind::FeedNotice => {
                return Err(WireError::invalid("kind", "no pipeline body for this kind"));
            }
        };
        r.finish()?;
        Ok(body)
    }
}

/// The parameters Alice announces at the start of a stage, so that a change
/// on her side takes effect in the next block on both sides.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum StageParameters {
    /// Stage 2: `abort_qber f64 | eps_pe f64` (IEEE 754 bits, big-endian).
    Estimate {
        /// The tolerated QBER.
        abort_qber: f64,
        /// Confidence of the QBER upper bound.
        eps_pe: f64,
    },
    /// Stage 3: `variant u8 | shuffle_seed u64 | chunks u32 | chunk bits u32 ...`.
    Correct {
        /// The Cascade variant (by its index in [`Variant::ALL`]).
        variant: Variant,
        /// The seed of the shuffles of every chunk.
        shuffle_seed: u64,
        /// The length of each chunk, in key order.
        chunks: Vec<u32>,
    },
    /// Stage 6 (LDPC correction): `mode u8 [| resume_iterations u16] |
    /// max_rounds u16 | max_iterations u16 | frames u32 | frame ...`, mode
    /// 0 rate-adaptive, 1 blind, 2 guided (followed by its resume
    /// iterations), each frame `rung u8 | n u32 | punctured u32 |
    /// shortened u32 | step u32`.
    Ldpc {
        /// Rate-adaptive (one round), blind or guided.
        mode: LdpcMode,
        /// Decoding rounds per frame at most (1 when not blind).
        max_rounds: u16,
        /// Decoder iterations per round.
        max_iterations: u16,
        /// The frames, in key order.
        frames: Vec<LdpcFrame>,
    },
    /// Stage 5: `eps_sec f64`.
    Amplify {
        /// The secrecy parameter of the length formula.
        eps_sec: f64,
    },
}

/// What the LDPC stage's frames do after a failed decoding
/// ([`crate::ldpc::Variant`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LdpcMode {
    /// Nothing: the frame (and its block) is dropped.
    RateAdaptive,
    /// Alice reveals the next bits of the frame's reveal order.
    Blind,
    /// Bob asks for the bits his decoder is least sure of; frames have no
    /// punctured position.
    Guided {
        /// Decoder iterations of each round after the first, 1 to 1000.
        resume_iterations: u16,
    },
}

/// One LDPC frame as Alice announces it: a code of the built-in ladder
/// (codes built from [`SHIPPED_SEED`](crate::ldpc::SHIPPED_SEED)) and its
/// punctured and shortened positions. Its key bits are
/// `n − punctured − shortened`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LdpcFrame {
    /// Ladder index of the mother code.
    pub rung: u8,
    /// Frame length: a power of two in 2^10..=2^20.
    pub n: u32,
    /// Punctured positions.
    pub punctured: u32,
    /// Shortened positions.
    pub shortened: u32,
    /// Bits revealed per blind round.
    pub step: u32,
}

impl LdpcFrame {
    /// Key bits of the frame (0 for an impossible layout).
    #[must_use]
    pub fn key_bits(&self) -> u64 {
        u64::from(self.n).saturating_sub(u64::from(self.punctured) + u64::from(self.shortened))
    }
}

/// Shortest and longest LDPC frame on the wire.
const LDPC_FRAME_BITS: core::ops::RangeInclusive<u32> = (1 << 10)..=(1 << 20);

impl StageParameters {
    fn stage_code(&self) -> u8 {
        match self {
            StageParameters::Estimate { .. } => 2,
            StageParameters::Correct { .. } => 3,
            StageParameters::Amplify { .. } => 5,
            StageParameters::Ldpc { .. } => 6,
        }
    }

    /// The message bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Envelope::new(Protocol::Pipeline, VERSION, TYPE_PARAMETERS).start(32);
        out.put_u8(self.stage_code());
        match self {
            StageParameters::Estimate { abort_qber, eps_pe } => {
                out.put_f64(*abort_qber);
                out.put_f64(*eps_pe);
            }
            StageParameters::Correct {
                variant,
                shuffle_seed,
                chunks,
            } => {
                let index = Variant::ALL.iter().position(|v| v == variant).unwrap_or(0);
                out.put_u8(index as u8);
                out.put_u64(*shuffle_seed);
                out.put_u32(chunks.len() as u32);
                for c in chunks {
                    out.put_u32(*c);
                }
            }
            StageParameters::Amplify { eps_sec } => out.put_f64(*eps_sec),
            StageParameters::Ldpc {
                mode,
                max_rounds,
                max_iterations,
                frames,
            } => {
                match mode {
                    LdpcMode::RateAdaptive => out.put_u8(0),
                    LdpcMode::Blind => out.put_u8(1),
                    LdpcMode::Guided { resume_iterations } => {
                        out.put_u8(2);
                        out.put_u16(*resume_iterations);
                    }
                }
                out.put_u16(*max_rounds);
                out.put_u16(*max_iterations);
                out.put_u32(frames.len() as u32);
                for f in frames {
                    out.put_u8(f.rung);
                    out.put_u32(f.n);
                    out.put_u32(f.punctured);
                    out.put_u32(f.shortened);
                    out.put_u32(f.step);
                }
            }
        }
        out
    }

    /// Decodes the message.
    ///
    /// # Errors
    /// A [`WireError`] for anything malformed or out of range.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        if r.envelope(Protocol::Pipeline, VERSION)? != TYPE_PARAMETERS {
            return Err(WireError::invalid("type", "not a parameters message"));
        }
        let parameters = match r.u8()? {
            2 => {
                let abort_qber = f64::from_bits(r.u64()?);
                let eps_pe = f64::from_bits(r.u64()?);
                if !(0.0..0.5).contains(&abort_qber) {
                    return Err(WireError::invalid("abort_qber", "must be in [0, 0.5)"));
                }
                if !(eps_pe > 0.0 && eps_pe < 1.0) {
                    return Err(WireError::invalid("eps_pe", "must be in (0, 1)"));
                }
                StageParameters::Estimate { abort_qber, eps_pe }
            }
            3 => {
                let variant = *Variant::ALL
                    .get(usize::from(r.u8()?))
                    .ok_or(WireError::invalid("variant", "unknown Cascade variant"))?;
                let shuffle_seed = r.u64()?;
                let n = r.count_u32("chunks", MAX_CHUNKS, 4)?;
                let mut chunks = Vec::with_capacity(n);
                for _ in 0..n {
                    let c = r.u32()?;
                    if c == 0 {
                        return Err(WireError::invalid("chunks", "a chunk must not be empty"));
                    }
                    chunks.push(c);
                }
                StageParameters::Correct {
                    variant,
                    shuffle_seed,
                    chunks,
                }
            }
            5 => {
                let eps_sec = f64::from_bits(r.u64()?);
                if !(eps_sec > 0.0 && eps_sec <= 1e-3) {
                    return Err(WireError::invalid("eps_sec", "must be in (0, 1e-3]"));
                }
                StageParameters::Amplify { eps_sec }
            }
            6 => {
                let mode = match r.u8()? {
                    0 => LdpcMode::RateAdaptive,
                    1 => LdpcMode::Blind,
                    2 => {
                        let resume_iterations = r.u16()?;
                        if !(1..=1000).contains(&resume_iterations) {
                            return Err(WireError::invalid(
                                "resume_iterations",
                                "must be 1 to 1000",
                            ));
                        }
                        LdpcMode::Guided { resume_iterations }
                    }
                    _ => return Err(WireError::invalid("mode", "0, 1 or 2")),
                };
                let blind = mode != LdpcMode::RateAdaptive;
                let guided = matches!(mode, LdpcMode::Guided { .. });
                let max_rounds = r.u16()?;
                let max_iterations = r.u16()?;
                if max_rounds == 0 || (!blind && max_rounds != 1) {
                    return Err(WireError::invalid(
                        "max_rounds",
                        "must be 1 without blind rounds, at least 1 with",
                    ));
                }
                if !(1..=1000).contains(&max_iterations) {
                    return Err(WireError::invalid("max_iterations", "must be 1 to 1000"));
                }
                let n = r.count_u32("frames", MAX_CHUNKS, 17)?;
                let mut frames = Vec::with_capacity(n);
                for _ in 0..n {
                    let f = LdpcFrame {
                        rung: r.u8()?,
                        n: r.u32()?,
                        punctured: r.u32()?,
                        shortened: r.u32()?,
                        step: r.u32()?,
                    };
                    if crate::ldpc::MotherRate::from_index(f.rung).is_none() {
                        return Err(WireError::invalid("rung", "no such mother code"));
                    }
                    if !f.n.is_power_of_two() || !LDPC_FRAME_BITS.contains(&f.n) {
                        return Err(WireError::invalid(
                            "n",
                            "must be a power of two in 2^10..=2^20",
                        ));
                    }
                    if u64::from(f.punctured) + u64::from(f.shortened) >= u64::from(f.n) / 2 {
                        return Err(WireError::invalid(
                            "shortened",
                            "punctured + shortened must stay below n / 2",
                        ));
                    }
                    if f.step > f.n {
                        return Err(WireError::invalid("step", "must be at most n"));
                    }
                    if blind && f.step == 0 {
                        return Err(WireError::invalid("step", "must be above 0"));
                    }
                    if guided && (f.punctured != 0 || f.step as usize > crate::ldpc::MAX_ASK) {
                        return Err(WireError::invalid(
                            "punctured",
                            "guided frames have no punctured position and steps to 2^16",
                        ));
                    }
                    frames.push(f);
                }
                StageParameters::Ldpc {
                    mode,
                    max_rounds,
                    max_iterations,
                    frames,
                }
            }
            _ => return Err(WireError::invalid("stage", "no parameters for this stage")),
        };
        r.finish()?;
        Ok(parameters)
    }
}

/// Wraps one LDPC message for frame `chunk` (Cascade's go in batches:
/// [`encode_chunk_batch`]).
#[must_use]
pub fn encode_chunk(chunk: u32, cascade: &[u8]) -> Vec<u8> {
    let mut out = Envelope::new(Protocol::Pipeline, VERSION, TYPE_CHUNK).start(4 + cascade.len());
    out.put_u32(chunk);
    out.extend_from_slice(cascade);
    out
}

/// Unwraps a chunk message: the chunk and the LDPC message.
///
/// # Errors
/// A [`WireError`] if it is not a chunk message.
pub fn decode_chunk(bytes: &[u8]) -> Result<(u32, &[u8]), WireError> {
    let mut r = Reader::new(bytes);
    if r.envelope(Protocol::Pipeline, VERSION)? != TYPE_CHUNK {
        return Err(WireError::invalid("type", "not a chunk message"));
    }
    let chunk = r.u32()?;
    let rest = r.rest();
    if rest.is_empty() {
        return Err(WireError::invalid("cascade", "empty chunk message"));
    }
    Ok((chunk, rest))
}

/// Wraps one message of each of several chunks (a [Batch](self#cascade-rounds-in-one-message)):
/// `entries` in strictly increasing chunk order, every message non-empty.
#[must_use]
pub fn encode_chunk_batch(entries: &[(u32, &[u8])]) -> Vec<u8> {
    let body: usize = entries.iter().map(|(_, m)| 8 + m.len()).sum();
    let mut out = Envelope::new(Protocol::Pipeline, VERSION, TYPE_CHUNK_BATCH).start(4 + body);
    out.put_u32(entries.len() as u32);
    for (chunk, message) in entries {
        out.put_u32(*chunk);
        out.put_u32(message.len() as u32);
        out.extend_from_slice(message);
    }
    out
}

/// Unwraps a batch for a block of `chunks` chunks: the chunk and message of
/// each entry, borrowing `bytes`.
///
/// # Errors
/// A [`WireError`] if it is not a batch, has no entry or more than `chunks`
/// (checked before anything is allocated), a chunk index that is not above
/// the previous one or not below `chunks`, an empty or overlong message, or
/// trailing bytes.
pub fn decode_chunk_batch(bytes: &[u8], chunks: usize) -> Result<Vec<(u32, &[u8])>, WireError> {
    let mut r = Reader::new(bytes);
    if r.envelope(Protocol::Pipeline, VERSION)? != TYPE_CHUNK_BATCH {
        return Err(WireError::invalid("type", "not a chunk batch"));
    }
    // An entry takes 9 bytes at least: chunk, length, one byte of message.
    let count = r.count_u32("count", chunks.min(MAX_CHUNKS), 9)?;
    if count == 0 {
        return Err(WireError::invalid("count", "a batch must not be empty"));
    }
    let mut entries = Vec::with_capacity(count);
    let mut next = 0u32;
    for _ in 0..count {
        let chunk = r.u32()?;
        if chunk < next || chunk as usize >= chunks {
            return Err(WireError::invalid(
                "chunk",
                "must be above the previous one and below the chunk count",
            ));
        }
        next = chunk + 1;
        let length = r.u32()? as usize;
        if length == 0 {
            return Err(WireError::invalid(
                "length",
                "a chunk message must not be empty",
            ));
        }
        entries.push((chunk, r.bytes(length)?));
    }
    r.finish()?;
    Ok(entries)
}

/// The type byte of a pipeline stage message (`Chunk` or `Parameters`), if
/// `bytes` is one.
#[must_use]
pub fn pipeline_type(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [p, v, t, ..] if *p == Protocol::Pipeline.id() && *v == VERSION => Some(*t),
        _ => None,
    }
}

/// Whether a pipeline stage message is a chunk.
#[must_use]
pub fn is_chunk(bytes: &[u8]) -> bool {
    pipeline_type(bytes) == Some(TYPE_CHUNK)
}

/// Whether a pipeline stage message is a batch of chunk messages.
#[must_use]
pub fn is_chunk_batch(bytes: &[u8]) -> bool {
    pipeline_type(bytes) == Some(TYPE_CHUNK_BATCH)
}

/// The Toeplitz seed Alice sends with her confirmation challenge.
#[derive(Clone, PartialEq, Eq)]
pub struct SeedMessage {
    /// The block.
    pub block: BlockId,
    /// The Toeplitz construction.
    pub construction: Construction,
    /// Final key bits (the hash's output length).
    pub output_bits: u64,
    /// Corrected key bits (the hash's input length).
    pub input_bits: u64,
    /// The seed.
    pub seed: BitVec,
}

impl core::fmt::Debug for SeedMessage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SeedMessage")
            .field("block", &self.block)
            .field("output_bits", &self.output_bits)
            .field("input_bits", &self.input_bits)
            .finish_non_exhaustive()
    }
}

/// Seed bits of a Toeplitz hash from `n` to `m` bits.
#[must_use]
pub fn seed_bits(construction: Construction, n: u64, m: u64) -> u64 {
    match construction {
        Construction::Standard => n + m - 1,
        _ => n - 1,
    }
}

impl SeedMessage {
    /// The message bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Envelope::new(Protocol::Amplify, AMPLIFY_VERSION, TYPE_SEED)
            .start(25 + self.seed.len().div_ceil(8));
        out.put_u64(self.block.get());
        out.put_u8(match self.construction {
            Construction::Standard => 1,
            _ => 2,
        });
        out.put_u64(self.output_bits);
        out.put_u64(self.input_bits);
        put_bits(&mut out, &self.seed);
        out
    }

    /// Decodes the message; the seed length must be the one the lengths and
    /// construction give.
    ///
    /// # Errors
    /// A [`WireError`] for anything malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let kind = r.envelope(Protocol::Amplify, AMPLIFY_VERSION)?;
        if kind != TYPE_SEED {
            return Err(Reader::unknown_type(Protocol::Amplify, kind));
        }
        let block = r.block()?;
        let construction = match r.u8()? {
            1 => Construction::Standard,
            2 => Construction::Modified,
            _ => return Err(WireError::invalid("construction", "must be 1 or 2")),
        };
        let output_bits = r.u64()?;
        let input_bits = r.u64()?;
        if output_bits == 0 || output_bits > input_bits || input_bits > MAX_SEED_BITS {
            return Err(WireError::invalid(
                "output_bits",
                "must be between 1 and the input length",
            ));
        }
        if construction == Construction::Modified && output_bits == input_bits {
            return Err(WireError::invalid(
                "output_bits",
                "the modified construction needs output < input",
            ));
        }
        let bits = seed_bits(construction, input_bits, output_bits);
        if bits > MAX_SEED_BITS {
            return Err(WireError::invalid("seed", "too long"));
        }
        let bits = usize::try_from(bits).map_err(|_| WireError::invalid("seed", "too long"))?;
        r.ensure(bits.div_ceil(8))?;
        let seed = r.bits("seed", bits)?;
        r.finish()?;
        Ok(SeedMessage {
            block,
            construction,
            output_bits,
            input_bits,
            seed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_example_bytes() {
        let bytes = Frame::Ack {
            block: BlockId::new(3),
            ack: 2,
        }
        .encode();
        assert_eq!(
            &bytes[..15],
            &[0x17, 1, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2]
        );
        assert_eq!(
            Frame::decode(&bytes).unwrap(),
            Frame::Ack {
                block: BlockId::new(3),
                ack: 2
            }
        );
        let mut damaged = bytes.clone();
        damaged[5] ^= 1;
        assert_eq!(Frame::decode(&damaged), Err(WireError::Checksum));
    }

    #[test]
    fn frames_and_bodies_round_trip() {
        let data = Frame::Data {
            block: BlockId::new(9),
            ack: 1,
            seq: 4,
            sealed: true,
            body: b"xyz",
        };
        assert_eq!(Frame::decode(&data.encode()).unwrap(), data);
        let control = Frame::Control {
            kind: ControlKind::Outcome,
            block: BlockId::new(2),
            count: 0,
            sealed: b"s",
        };
        assert_eq!(Frame::decode(&control.encode()).unwrap(), control);
        for body in [
            ControlBody::Hello {
                digest: [7; 32],
                answer: true,
            },
            ControlBody::RoundEnd {
                block: BlockId::new(1),
            },
            ControlBody::Outcome {
                block: BlockId::new(1),
                keep: true,
                final_bits: 12345,
            },
            ControlBody::OutcomeAck {
                block: BlockId::new(1),
                kept: false,
            },
            ControlBody::Abandon {
                block: BlockId::new(5),
            },
        ] {
            assert_eq!(ControlBody::decode(&body.encode()).unwrap(), body);
        }
        let p = StageParameters::Correct {
            variant: Variant::Option7,
            shuffle_seed: 99,
            chunks: vec![65536, 1024],
        };
        assert_eq!(StageParameters::decode(&p.encode()).unwrap(), p);
        let e = StageParameters::Estimate {
            abort_qber: 0.11,
            eps_pe: 1e-10,
        };
        assert_eq!(StageParameters::decode(&e.encode()).unwrap(), e);
        let l = StageParameters::Ldpc {
            mode: LdpcMode::Blind,
            max_rounds: 40,
            max_iterations: 60,
            frames: vec![
                LdpcFrame {
                    rung: 7,
                    n: 1 << 16,
                    punctured: 100,
                    shortened: 6454,
                    step: 262,
                },
                LdpcFrame {
                    rung: 7,
                    n: 1 << 10,
                    punctured: 2,
                    shortened: 100,
                    step: 4,
                },
            ],
        };
        assert_eq!(StageParameters::decode(&l.encode()).unwrap(), l);
        let mut bad = l.encode();
        // A frame length that is not a power of two.
        bad[14..18].copy_from_slice(&1000u32.to_be_bytes());
        assert!(StageParameters::decode(&bad).is_err());
        // Guided: its resume iterations travel; punctured frames, a step
        // above 2^16, resume iterations out of range and an unknown mode
        // are refused.
        let unpunctured = LdpcFrame {
            rung: 10,
            n: 1 << 17,
            punctured: 0,
            shortened: 4329,
            step: 52,
        };
        let guided = |resume_iterations: u16, frame: LdpcFrame| StageParameters::Ldpc {
            mode: LdpcMode::Guided { resume_iterations },
            max_rounds: 200,
            max_iterations: 60,
            frames: vec![frame],
        };
        let g = guided(20, unpunctured);
        assert_eq!(StageParameters::decode(&g.encode()).unwrap(), g);
        let punctured = LdpcFrame {
            punctured: 1,
            ..unpunctured
        };
        let wide = LdpcFrame {
            step: (1 << 16) + 1,
            ..unpunctured
        };
        for bad in [
            guided(20, punctured),
            guided(20, wide),
            guided(0, unpunctured),
            guided(1001, unpunctured),
        ] {
            assert!(StageParameters::decode(&bad.encode()).is_err(), "{bad:?}");
        }
        let mut unknown = g.encode();
        // The mode byte (the frame length of `l` sits at 14, ten bytes on).
        assert_eq!(unknown[4], 2);
        unknown[4] = 3;
        assert!(StageParameters::decode(&unknown).is_err());
        let s = SeedMessage {
            block: BlockId::new(3),
            construction: Construction::Standard,
            output_bits: 10,
            input_bits: 20,
            seed: BitVec::ones(29),
        };
        assert_eq!(SeedMessage::decode(&s.encode()).unwrap(), s);
        let chunk = encode_chunk(7, b"abc");
        let (c, m) = decode_chunk(&chunk).unwrap();
        assert_eq!((c, m), (7, &b"abc"[..]));
    }

    #[test]
    fn hostile_lengths_are_refused() {
        let mut s = SeedMessage {
            block: BlockId::new(3),
            construction: Construction::Standard,
            output_bits: 10,
            input_bits: 20,
            seed: BitVec::ones(29),
        }
        .encode();
        // Claim a huge input: the seed no longer fits the bytes.
        s[20..28].copy_from_slice(&(1u64 << 32).to_be_bytes());
        assert!(SeedMessage::decode(&s).is_err());
        let mut p = StageParameters::Correct {
            variant: Variant::Option7,
            shuffle_seed: 1,
            chunks: vec![8],
        }
        .encode();
        let at = p.len() - 8;
        p[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(StageParameters::decode(&p).is_err());
        assert!(Frame::decode(&[]).is_err());
        assert!(ControlBody::decode(&[2, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    /// Fuzz finding (CI, postproc_pipeline): a hello with a non-zero block
    /// decoded, and re-encoded with block 0, so two byte strings meant the
    /// same hello. The block of a hello must be zero.
    #[test]
    fn a_hello_with_a_block_is_refused() {
        let mut hello = ControlBody::Hello {
            digest: [0; 32],
            answer: false,
        }
        .encode();
        assert_eq!(ControlBody::decode(&hello).unwrap().encode(), hello);
        hello[4..9].fill(0xf0);
        assert!(ControlBody::decode(&hello).is_err());
    }

    #[test]
    fn batch_example_bytes() {
        let bytes = encode_chunk_batch(&[(0, &[0xaa, 0xbb, 0xcc][..]), (2, &[0xdd, 0xee][..])]);
        assert_eq!(
            bytes,
            [
                0x17, 1, 0x12, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0xaa, 0xbb, 0xcc, 0, 0, 0, 2, 0,
                0, 0, 2, 0xdd, 0xee
            ]
        );
        assert!(is_chunk_batch(&bytes) && !is_chunk(&bytes));
        assert_eq!(
            decode_chunk_batch(&bytes, 3).unwrap(),
            vec![(0, &[0xaa, 0xbb, 0xcc][..]), (2, &[0xdd, 0xee][..])]
        );
        // Chunk 2 of a block of two chunks.
        assert!(decode_chunk_batch(&bytes, 2).is_err());
        // A chunk count above the block's, checked before allocating.
        let mut many = bytes.clone();
        many[3..7].copy_from_slice(&3u32.to_be_bytes());
        assert!(matches!(
            decode_chunk_batch(&many, 2),
            Err(WireError::TooMany { .. })
        ));
        // A count the bytes cannot hold.
        many[3..7].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_chunk_batch(&many, MAX_CHUNKS).is_err());
    }

    #[test]
    fn malformed_batches_are_refused() {
        let good = |entries: &[(u32, &[u8])]| encode_chunk_batch(entries);
        // Empty.
        assert!(decode_chunk_batch(&good(&[]), 4).is_err());
        // The same chunk twice, or out of order: two encodings of one turn.
        assert!(decode_chunk_batch(&good(&[(1, b"a"), (1, b"b")]), 4).is_err());
        assert!(decode_chunk_batch(&good(&[(2, b"a"), (1, b"b")]), 4).is_err());
        // An empty message.
        assert!(decode_chunk_batch(&good(&[(1, b"")]), 4).is_err());
        // A length past the end, and trailing bytes.
        let mut long = good(&[(1, b"ab")]);
        long[14] = 3;
        assert!(decode_chunk_batch(&long, 4).is_err());
        let mut trailing = good(&[(1, b"ab")]);
        trailing.push(0);
        assert!(decode_chunk_batch(&trailing, 4).is_err());
        // A chunk message is not a batch.
        assert!(decode_chunk_batch(&encode_chunk(0, b"ab"), 4).is_err());
        assert!(decode_chunk_batch(&good(&[(1, b"ab")]), 0).is_err());
    }

    proptest::proptest! {
        /// A batch decodes to the entries it was made of.
        #[test]
        fn batches_round_trip(
            messages in proptest::collection::btree_map(
                0u32..64,
                proptest::collection::vec(proptest::prelude::any::<u8>(), 1..40),
                1..16,
            ),
        ) {
            let entries: Vec<(u32, &[u8])> =
                messages.iter().map(|(c, m)| (*c, m.as_slice())).collect();
            let bytes = encode_chunk_batch(&entries);
            proptest::prop_assert_eq!(decode_chunk_batch(&bytes, 64).unwrap(), entries.clone());
            let last = entries.last().map_or(0, |e| e.0) as usize;
            proptest::prop_assert!(decode_chunk_batch(&bytes, last).is_err());
        }

        /// Whatever decodes re-encodes to the same bytes (one encoding per
        /// message), for every decoder of this module.
        #[test]
        fn decoders_are_canonical(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Ok(f) = Frame::decode(&bytes) {
                proptest::prop_assert_eq!(f.encode(), bytes.clone());
            }
            if let Ok(b) = ControlBody::decode(&bytes) {
                proptest::prop_assert_eq!(b.encode(), bytes.clone());
            }
            if let Ok(s) = SeedMessage::decode(&bytes) {
                proptest::prop_assert_eq!(s.encode(), bytes.clone());
            }
            if let Ok(p) = StageParameters::decode(&bytes) {
                proptest::prop_assert_eq!(p.encode(), bytes.clone());
            }
            if let Ok((chunk, inner)) = decode_chunk(&bytes) {
                proptest::prop_assert_eq!(encode_chunk(chunk, inner), bytes.clone());
            }
            if let Ok(entries) = decode_chunk_batch(&bytes, MAX_CHUNKS) {
                proptest::prop_assert_eq!(encode_chunk_batch(&entries), bytes.clone());
            }
        }

        /// A hello with any non-zero block is refused.
        #[test]
        fn hellos_carry_block_zero(block in 1u64.., digest in proptest::prelude::any::<[u8; 32]>()) {
            let mut bytes = ControlBody::Hello { digest, answer: true }.encode();
            bytes[1..9].copy_from_slice(&block.to_be_bytes());
            proptest::prop_assert!(ControlBody::decode(&bytes).is_err());
        }
    }
}
