//! Binary messages of Cascade.
//!
//! Every message is
//!
//! ```text
//! 13 | version u8 (= 1) | type u8 | block u64 | body | crc32 u32
//! ```
//!
//! The first three bytes are the workspace's envelope
//! ([`qkd_core::wire`], protocol [`Protocol::Cascade`] = `0x13`), integers
//! are big-endian, and the CRC-32 (IEEE 802.3 polynomial, as in zlib) is
//! taken over every byte before it. The bodies:
//!
//! | type | message | body |
//! | --- | --- | --- |
//! | 1 | [`Questions`](CascadeMessage::Questions) (Bob → Alice) | `round u32, shuffle_seed u64, key_len u32, count u32`, then `count` × `pass u8, start u32, len u32` |
//! | 2 | [`Answers`](CascadeMessage::Answers) (Alice → Bob) | `round u32, count u32`, then `⌈count/8⌉` bytes of parities, LSB first, unused bits zero |
//! | 3 | [`Done`](CascadeMessage::Done) (Bob → Alice) | `rounds u32, leaked_bits u64` |
//! | 4 | [`DoneAck`](CascadeMessage::DoneAck) (Alice → Bob) | `leaked_bits u64` |
//! | 5 | [`Abort`](CascadeMessage::Abort) (either way) | `reason u8` ([`AbortReason`]) |
//!
//! A question names a range `start .. start+len` of the key in the order of
//! pass `pass` (pass 0: the key's own order; pass `p ≥ 1`: the shuffle of
//! [`ShufflePlan`](super::ShufflePlan)); its answer is Alice's parity of
//! that range. Answers come in the order of the questions.
//!
//! Example: the answers of round 3 of block 7, five parities `1,0,1,1,0`:
//!
//! ```text
//! 13 01 02                  Cascade, version 1, Answers
//! 00 00 00 00 00 00 00 07   block 7
//! 00 00 00 03 00 00 00 05   round 3, 5 parities
//! 0d                        0b01101: bits 0, 2, 3 set
//! f5 02 77 96               CRC-32 of the 20 bytes before
//! ```
//!
//! Decoding ([`CascadeMessage::decode`]) checks the envelope, then the CRC,
//! then reads the body through [`Reader`]: every count is checked against
//! the bytes that remain before anything is allocated (a decoded message
//! takes at most 4/3 of its length in memory), ranges must be non-empty and
//! must not overflow, padding bits must be zero, and trailing bytes are an
//! error. No input makes it panic; every failure is a [`WireError`].
//!
//! # Why the CRC stays
//!
//! The CRC is not authentication: anyone can recompute it. It is kept
//! because Cascade messages do not always travel sealed one by one:
//!
//! - Sealed per message ([`AuthenticatedChannel::seal`](crate::auth::AuthenticatedChannel::seal)),
//!   a damaged message fails its tag and never reaches Cascade; the CRC
//!   costs four bytes and never fails.
//! - In the transcript mode ([`crate::auth::transcript`]) the messages of a
//!   round travel unauthenticated and the tags are only compared at the end
//!   of the round. A transmission error there that still decoded (a flipped
//!   parity) would send Bob's search the wrong way, and the whole round's
//!   key would be dropped at the tag; with the CRC the damaged copy is
//!   rejected, Bob resends, and the round survives.
//! - Standalone over a lossy link (the `qkd ec` tool, a vendor's own
//!   transport) it is the only integrity check.
//!
//! It catches every error of up to three bits and every burst of up to 32
//! bits in these short messages, for a hash over a few bytes per message.
//! What the authenticated channel protects in each mode, and what an
//! unauthenticated message can cost before the round's tag is checked, is
//! in the [module documentation](super#the-channel-under-cascade).

use bytes::BufMut;
use qkd_core::wire::{Envelope, Protocol, Reader, WireError, append_crc32, strip_crc32};
use qkd_core::{BitVec, BlockId};

/// The version of Cascade's format this module writes and reads.
pub const VERSION: u8 = 1;

/// The most questions (and answers) one message may carry: the count is a
/// `u32`. A decoder never allocates more than the message's own bytes allow.
pub const MAX_QUESTIONS: usize = u32::MAX as usize;

/// Envelope and block ID.
const HEADER: usize = Envelope::LEN + 8;
const TRAILER: usize = 4;
const QUESTION: usize = 9;

const QUESTIONS: u8 = 1;
const ANSWERS: u8 = 2;
const DONE: u8 = 3;
const DONE_ACK: u8 = 4;
const ABORT: u8 = 5;

/// One parity question: the range `start .. start + len` in the order of `pass`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Question {
    /// The pass whose order the range is in (0: the key's own order).
    pub pass: u8,
    /// First position of the range.
    pub start: u32,
    /// Number of bits in the range (at least 1).
    pub len: u32,
}

/// Why a run was aborted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AbortReason {
    /// Alice would have disclosed more parities than her limit allows.
    LeakLimit,
    /// The peer's messages did not fit the protocol (leak counts that
    /// differ at the end).
    Protocol,
    /// Bob gave up after too many retransmissions.
    Timeout,
    /// The peer runs with another key length or shuffle seed.
    Incompatible,
    /// A reason code this version does not know.
    Other(u8),
}

impl AbortReason {
    fn code(self) -> u8 {
        match self {
            AbortReason::LeakLimit => 1,
            AbortReason::Protocol => 2,
            AbortReason::Timeout => 3,
            AbortReason::Incompatible => 4,
            AbortReason::Other(c) => c,
        }
    }

    fn from_code(c: u8) -> Self {
        match c {
            1 => AbortReason::LeakLimit,
            2 => AbortReason::Protocol,
            3 => AbortReason::Timeout,
            4 => AbortReason::Incompatible,
            c => AbortReason::Other(c),
        }
    }
}

/// A Cascade message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CascadeMessage {
    /// Bob's questions of one round.
    Questions {
        /// The block this run reconciles.
        block: BlockId,
        /// Round number, from 0, one more for each new set of questions.
        round: u32,
        /// The seed of Bob's [`ShufflePlan`](super::ShufflePlan).
        shuffle_seed: u64,
        /// Bob's key length.
        key_len: u32,
        /// The questions.
        questions: Vec<Question>,
    },
    /// Alice's parities for the questions of one round.
    Answers {
        /// The block.
        block: BlockId,
        /// The round answered.
        round: u32,
        /// One parity per question, in order.
        parities: BitVec,
    },
    /// Bob has finished; the totals he counted.
    Done {
        /// The block.
        block: BlockId,
        /// Rounds of questions Bob sent.
        rounds: u32,
        /// Parity bits Bob asked for in total.
        leaked_bits: u64,
    },
    /// Alice agrees that the run is over.
    DoneAck {
        /// The block.
        block: BlockId,
        /// Parity bits Alice disclosed in total.
        leaked_bits: u64,
    },
    /// The sender gave up on this block.
    Abort {
        /// The block.
        block: BlockId,
        /// Why.
        reason: AbortReason,
    },
}

/// The bytes of a [`CascadeMessage::Questions`] with these fields and the
/// `count` questions of `questions`, without building the message first
/// (Bob's rounds; [`CascadeMessage::encode`] goes through here too, so
/// both give the same bytes).
///
/// # Panics
/// If `count` exceeds [`MAX_QUESTIONS`] or `questions` yields another
/// number of questions than `count`.
pub(crate) fn encode_questions(
    block: BlockId,
    round: u32,
    shuffle_seed: u64,
    key_len: u32,
    count: usize,
    questions: impl Iterator<Item = Question>,
) -> Vec<u8> {
    let body = 20 + QUESTION * count;
    let mut out = Envelope::new(Protocol::Cascade, VERSION, QUESTIONS).start(8 + body + TRAILER);
    out.put_u64(block.get());
    out.put_u32(round);
    out.put_u64(shuffle_seed);
    out.put_u32(key_len);
    out.put_u32(u32::try_from(count).expect("at most 2^32 - 1 questions"));
    let at = out.len();
    out.resize(at + QUESTION * count, 0);
    let mut written = 0;
    for (record, q) in out[at..].chunks_exact_mut(QUESTION).zip(questions) {
        record[0] = q.pass;
        record[1..5].copy_from_slice(&q.start.to_be_bytes());
        record[5..].copy_from_slice(&q.len.to_be_bytes());
        written += 1;
    }
    assert_eq!(written, count, "the question count announced");
    append_crc32(&mut out);
    out
}

/// The bytes of a [`CascadeMessage::Answers`] with these fields, without
/// building the message first (Alice's rounds and resends;
/// [`CascadeMessage::encode`] goes through here too).
///
/// # Panics
/// If `parities` holds more than [`MAX_QUESTIONS`] bits.
pub(crate) fn encode_answers(block: BlockId, round: u32, parities: &BitVec) -> Vec<u8> {
    let count = parities.len();
    let bytes = count.div_ceil(8);
    let mut out = Envelope::new(Protocol::Cascade, VERSION, ANSWERS).start(8 + 8 + bytes + TRAILER);
    out.put_u64(block.get());
    out.put_u32(round);
    out.put_u32(u32::try_from(count).expect("at most 2^32 - 1 answers"));
    // LSB first: the little-endian bytes of the packed words (bits past
    // `count` are zero in a `BitVec`).
    let mut left = bytes;
    for w in parities.words() {
        let take = left.min(8);
        out.extend_from_slice(&w.to_le_bytes()[..take]);
        left -= take;
    }
    append_crc32(&mut out);
    out
}

impl CascadeMessage {
    /// The block the message is about.
    #[must_use]
    pub fn block(&self) -> BlockId {
        match self {
            CascadeMessage::Questions { block, .. }
            | CascadeMessage::Answers { block, .. }
            | CascadeMessage::Done { block, .. }
            | CascadeMessage::DoneAck { block, .. }
            | CascadeMessage::Abort { block, .. } => *block,
        }
    }

    /// Encodes the message.
    ///
    /// # Panics
    /// If a message holds more than [`MAX_QUESTIONS`] questions or answers
    /// (the machines never build one: a key has fewer than 2^32 bits).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        if let CascadeMessage::Questions {
            block,
            round,
            shuffle_seed,
            key_len,
            questions,
        } = self
        {
            return encode_questions(
                *block,
                *round,
                *shuffle_seed,
                *key_len,
                questions.len(),
                questions.iter().copied(),
            );
        }
        if let CascadeMessage::Answers {
            block,
            round,
            parities,
        } = self
        {
            return encode_answers(*block, *round, parities);
        }
        let (kind, body) = match self {
            CascadeMessage::Questions { questions, .. } => {
                (QUESTIONS, 20 + QUESTION * questions.len())
            }
            CascadeMessage::Answers { parities, .. } => (ANSWERS, 8 + parities.len().div_ceil(8)),
            CascadeMessage::Done { .. } => (DONE, 12),
            CascadeMessage::DoneAck { .. } => (DONE_ACK, 8),
            CascadeMessage::Abort { .. } => (ABORT, 1),
        };
        let mut out = Envelope::new(Protocol::Cascade, VERSION, kind).start(8 + body + TRAILER);
        out.put_u64(self.block().get());
        match self {
            CascadeMessage::Questions { .. } | CascadeMessage::Answers { .. } => {
                unreachable!("encoded above")
            }
            CascadeMessage::Done {
                rounds,
                leaked_bits,
                ..
            } => {
                out.put_u32(*rounds);
                out.put_u64(*leaked_bits);
            }
            CascadeMessage::DoneAck { leaked_bits, .. } => out.put_u64(*leaked_bits),
            CascadeMessage::Abort { reason, .. } => out.put_u8(reason.code()),
        }
        append_crc32(&mut out);
        out
    }

    /// Decodes one message, checking everything described in the module docs.
    ///
    /// # Errors
    /// A [`WireError`] naming the first problem found: another protocol or
    /// version, too short, a CRC mismatch ([`WireError::Checksum`]), an
    /// unknown type, a count larger than the bytes behind it, an empty or
    /// overflowing range, set padding bits, or trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let kind = r.envelope(Protocol::Cascade, VERSION)?;
        r.ensure(HEADER - Envelope::LEN + TRAILER)?;
        let covered = strip_crc32(bytes)?;
        let mut r = Reader::new(&covered[Envelope::LEN..]);
        let block = r.block()?;
        let msg = match kind {
            QUESTIONS => {
                let round = r.u32()?;
                let shuffle_seed = r.u64()?;
                let key_len = r.u32()?;
                let count = r.count_u32("questions", MAX_QUESTIONS, QUESTION)?;
                let mut questions = Vec::with_capacity(count);
                // `count` was checked against the bytes left: one slice read,
                // then fixed-size records.
                for record in r.bytes(count * QUESTION)?.chunks_exact(QUESTION) {
                    let word = |at: usize| {
                        u32::from_be_bytes([
                            record[at],
                            record[at + 1],
                            record[at + 2],
                            record[at + 3],
                        ])
                    };
                    let (pass, start, len) = (record[0], word(1), word(5));
                    if len == 0 || start.checked_add(len).is_none() {
                        return Err(WireError::invalid(
                            "question",
                            "a range must be non-empty and end below 2^32",
                        ));
                    }
                    questions.push(Question { pass, start, len });
                }
                CascadeMessage::Questions {
                    block,
                    round,
                    shuffle_seed,
                    key_len,
                    questions,
                }
            }
            ANSWERS => {
                let round = r.u32()?;
                let count = r.count_u32("parities", MAX_QUESTIONS, 0)?;
                let packed = r.bytes(count.div_ceil(8))?;
                if !count.is_multiple_of(8) && packed[packed.len() - 1] >> (count % 8) != 0 {
                    return Err(WireError::invalid(
                        "parities",
                        "the padding bits of the last byte must be zero",
                    ));
                }
                let parities = BitVec::from_bytes_lsb(packed, count)
                    .map_err(|_| WireError::invalid("parities", "wrong length"))?;
                CascadeMessage::Answers {
                    block,
                    round,
                    parities,
                }
            }
            DONE => CascadeMessage::Done {
                block,
                rounds: r.u32()?,
                leaked_bits: r.u64()?,
            },
            DONE_ACK => CascadeMessage::DoneAck {
                block,
                leaked_bits: r.u64()?,
            },
            ABORT => CascadeMessage::Abort {
                block,
                reason: AbortReason::from_code(r.u8()?),
            },
            t => return Err(Reader::unknown_type(Protocol::Cascade, t)),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn answers_example_from_the_docs() {
        let parities: BitVec = [true, false, true, true, false].into_iter().collect();
        let msg = CascadeMessage::Answers {
            block: BlockId::new(7),
            round: 3,
            parities,
        };
        let bytes = msg.encode();
        assert_eq!(
            bytes,
            [
                0x13, 1, 2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 5, 0x0d, 0xf5, 0x02, 0x77,
                0x96
            ]
        );
        assert_eq!(CascadeMessage::decode(&bytes).unwrap(), msg);
    }

    fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes.truncate(bytes.len() - TRAILER);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        bytes
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        let msg = CascadeMessage::Done {
            block: BlockId::new(1),
            rounds: 2,
            leaked_bits: 3,
        };
        let good = msg.encode();
        assert!(matches!(
            CascadeMessage::decode(&good[..5]),
            Err(WireError::Truncated { .. })
        ));
        let mut bad = good.clone();
        bad[12] ^= 1;
        assert_eq!(CascadeMessage::decode(&bad), Err(WireError::Checksum));
        let mut v = good.clone();
        v[1] = 2;
        assert_eq!(
            CascadeMessage::decode(&reseal(v)),
            Err(WireError::UnsupportedVersion {
                protocol: Protocol::Cascade,
                version: 2
            })
        );
        let mut p = good.clone();
        p[0] = Protocol::Confirm.id();
        assert!(matches!(
            CascadeMessage::decode(&reseal(p)),
            Err(WireError::WrongProtocol { .. })
        ));
        let mut t = good.clone();
        t[2] = 9;
        assert_eq!(
            CascadeMessage::decode(&reseal(t)),
            Err(WireError::UnknownType {
                protocol: Protocol::Cascade,
                kind: 9
            })
        );
        let mut long = good.clone();
        long.insert(good.len() - TRAILER, 0);
        assert_eq!(
            CascadeMessage::decode(&reseal(long)),
            Err(WireError::TrailingBytes { count: 1 })
        );
        // A huge question count is rejected before allocating.
        let q = CascadeMessage::Questions {
            block: BlockId::new(1),
            round: 0,
            shuffle_seed: 0,
            key_len: 10,
            questions: vec![],
        };
        let count_at = HEADER + 16;
        let mut huge = q.encode();
        huge[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            CascadeMessage::decode(&reseal(huge)),
            Err(WireError::TooMany {
                field: "questions",
                count: 0xffff_ffff,
                max: 0
            })
        ));
        // An empty range is refused.
        let one = CascadeMessage::Questions {
            block: BlockId::new(1),
            round: 0,
            shuffle_seed: 0,
            key_len: 10,
            questions: vec![Question {
                pass: 0,
                start: 1,
                len: 1,
            }],
        };
        let mut empty = one.encode();
        empty[count_at + 4 + 5..count_at + 4 + 9].copy_from_slice(&[0; 4]);
        assert!(matches!(
            CascadeMessage::decode(&reseal(empty)),
            Err(WireError::Invalid {
                field: "question",
                ..
            })
        ));
        // Padding bits of the answers must be zero.
        let a = CascadeMessage::Answers {
            block: BlockId::new(1),
            round: 0,
            parities: [true, true].into_iter().collect(),
        };
        let mut pad = a.encode();
        pad[HEADER + 8] |= 0x80;
        assert!(matches!(
            CascadeMessage::decode(&reseal(pad)),
            Err(WireError::Invalid {
                field: "parities",
                ..
            })
        ));
    }

    fn question() -> impl Strategy<Value = Question> {
        (any::<u8>(), 0u32..1 << 31, 1u32..1 << 31).prop_map(|(pass, start, len)| Question {
            pass,
            start,
            len,
        })
    }

    fn message() -> impl Strategy<Value = CascadeMessage> {
        let block = any::<u64>().prop_map(BlockId::new);
        prop_oneof![
            (
                block.clone(),
                any::<u32>(),
                any::<u64>(),
                any::<u32>(),
                proptest::collection::vec(question(), 0..50)
            )
                .prop_map(|(block, round, shuffle_seed, key_len, questions)| {
                    CascadeMessage::Questions {
                        block,
                        round,
                        shuffle_seed,
                        key_len,
                        questions,
                    }
                }),
            (
                block.clone(),
                any::<u32>(),
                proptest::collection::vec(any::<bool>(), 0..100)
            )
                .prop_map(|(block, round, bits)| CascadeMessage::Answers {
                    block,
                    round,
                    parities: bits.into_iter().collect()
                }),
            (block.clone(), any::<u32>(), any::<u64>()).prop_map(|(block, rounds, leaked_bits)| {
                CascadeMessage::Done {
                    block,
                    rounds,
                    leaked_bits,
                }
            }),
            (block.clone(), any::<u64>()).prop_map(|(block, leaked_bits)| {
                CascadeMessage::DoneAck { block, leaked_bits }
            }),
            (block, any::<u8>()).prop_map(|(block, c)| CascadeMessage::Abort {
                block,
                reason: AbortReason::from_code(c)
            }),
        ]
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity(msg in message()) {
            let bytes = msg.encode();
            prop_assert_eq!(CascadeMessage::decode(&bytes).unwrap(), msg);
        }

        /// Every strict prefix is refused, even with its CRC recomputed.
        #[test]
        fn every_strict_prefix_is_rejected(msg in message()) {
            let bytes = msg.encode();
            for len in 0..bytes.len() {
                prop_assert!(CascadeMessage::decode(&bytes[..len]).is_err());
                if len >= HEADER + TRAILER {
                    prop_assert!(CascadeMessage::decode(&reseal(bytes[..len].to_vec())).is_err());
                }
            }
        }

        /// Every one-byte extension is refused, as is the body extended by
        /// one byte under a recomputed CRC.
        #[test]
        fn every_one_byte_extension_is_rejected(msg in message(), extra in any::<u8>()) {
            let bytes = msg.encode();
            let mut longer = bytes.clone();
            longer.push(extra);
            prop_assert!(CascadeMessage::decode(&longer).is_err());
            let mut body = bytes[..bytes.len() - TRAILER].to_vec();
            body.push(extra);
            body.extend_from_slice(&[0; TRAILER]);
            prop_assert!(CascadeMessage::decode(&reseal(body)).is_err());
        }

        #[test]
        fn any_bit_flip_is_detected(msg in message(), bit in any::<proptest::sample::Index>()) {
            let mut bytes = msg.encode();
            let i = bit.index(bytes.len() * 8);
            bytes[i / 8] ^= 1 << (i % 8);
            prop_assert!(CascadeMessage::decode(&bytes).is_err());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            kind in 0u8..7,
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let _ = CascadeMessage::decode(&bytes);
            // With a valid envelope and CRC, to reach the body's checks.
            let mut framed = vec![Protocol::Cascade.id(), VERSION, kind];
            framed.extend_from_slice(&bytes);
            framed.extend_from_slice(&[0; TRAILER]);
            let _ = CascadeMessage::decode(&reseal(framed));
        }
    }
}
