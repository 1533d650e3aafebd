//! Binary messages of Cascade.
//!
//! Every message is
//!
//! ```text
//! version u8 (= 1) | type u8 | frame_id u64 | body | crc32 u32
//! ```
//!
//! with integers big-endian and the CRC-32 (IEEE 802.3 polynomial, as in
//! zlib) taken over everything before it. The bodies:
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
//! Example: the answers of round 3 of frame 7, five parities `1,0,1,1,0`:
//!
//! ```text
//! 01 02 00 00 00 00 00 00 00 07   version 1, Answers, frame 7
//! 00 00 00 03 00 00 00 05         round 3, 5 parities
//! 0d                              0b01101: bits 0, 2, 3 set
//! xx xx xx xx                     CRC-32 of the 19 bytes before
//! ```
//!
//! Decoding checks the CRC first, then the version, type and every length
//! against [`MAX_QUESTIONS`] before allocating; trailing bytes are an error,
//! and no input makes it panic. The CRC catches transmission errors (all
//! one- and two-bit errors); it is not authentication: in a deployment the
//! messages travel over the Wegman–Carter authenticated channel.

use bytes::{Buf, BufMut};
use qkd_core::BitVec;

/// The wire format version this module writes and reads.
pub const VERSION: u8 = 1;

/// The most questions (and answers) one message may carry.
pub const MAX_QUESTIONS: usize = 1 << 24;

const HEADER: usize = 10;
const TRAILER: usize = 4;
const QUESTION: usize = 9;

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
    /// The peer's messages did not fit the protocol (wrong key length, seed,
    /// round or answer count).
    Protocol,
    /// Bob gave up after too many retransmissions.
    Timeout,
    /// A reason code this version does not know.
    Other(u8),
}

impl AbortReason {
    fn code(self) -> u8 {
        match self {
            AbortReason::LeakLimit => 1,
            AbortReason::Protocol => 2,
            AbortReason::Timeout => 3,
            AbortReason::Other(c) => c,
        }
    }

    fn from_code(c: u8) -> Self {
        match c {
            1 => AbortReason::LeakLimit,
            2 => AbortReason::Protocol,
            3 => AbortReason::Timeout,
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
        /// The frame (key block) this run reconciles.
        frame_id: u64,
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
        /// The frame.
        frame_id: u64,
        /// The round answered.
        round: u32,
        /// One parity per question, in order.
        parities: BitVec,
    },
    /// Bob has finished; the totals he counted.
    Done {
        /// The frame.
        frame_id: u64,
        /// Rounds of questions Bob sent.
        rounds: u32,
        /// Parity bits Bob asked for in total.
        leaked_bits: u64,
    },
    /// Alice agrees that the run is over.
    DoneAck {
        /// The frame.
        frame_id: u64,
        /// Parity bits Alice disclosed in total.
        leaked_bits: u64,
    },
    /// The sender gave up on this frame.
    Abort {
        /// The frame.
        frame_id: u64,
        /// Why.
        reason: AbortReason,
    },
}

/// Why a message could not be decoded. Says nothing about key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended before the message did.
    #[error("message truncated")]
    Truncated,
    /// The CRC did not match: the message was damaged in transit.
    #[error("checksum mismatch")]
    Checksum,
    /// A version this implementation does not speak.
    #[error("unsupported version {0}")]
    Version(u8),
    /// An unknown message type.
    #[error("unknown message type {0}")]
    Type(u8),
    /// A count above [`MAX_QUESTIONS`] or a range that is empty or overflows.
    #[error("field out of range: {0}")]
    OutOfRange(&'static str),
    /// Bytes left after the message (or set padding bits).
    #[error("trailing bytes after message")]
    Trailing,
}

impl CascadeMessage {
    /// The frame the message is about.
    #[must_use]
    pub fn frame_id(&self) -> u64 {
        match self {
            CascadeMessage::Questions { frame_id, .. }
            | CascadeMessage::Answers { frame_id, .. }
            | CascadeMessage::Done { frame_id, .. }
            | CascadeMessage::DoneAck { frame_id, .. }
            | CascadeMessage::Abort { frame_id, .. } => *frame_id,
        }
    }

    /// Encodes the message.
    ///
    /// # Panics
    /// If a message holds more than [`MAX_QUESTIONS`] questions or answers
    /// (the machines never build such a message).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        out.put_u8(VERSION);
        match self {
            CascadeMessage::Questions {
                frame_id,
                round,
                shuffle_seed,
                key_len,
                questions,
            } => {
                assert!(questions.len() <= MAX_QUESTIONS, "too many questions");
                out.put_u8(1);
                out.put_u64(*frame_id);
                out.put_u32(*round);
                out.put_u64(*shuffle_seed);
                out.put_u32(*key_len);
                out.put_u32(questions.len() as u32);
                for q in questions {
                    let mut bytes = [0u8; QUESTION];
                    bytes[0] = q.pass;
                    bytes[1..5].copy_from_slice(&q.start.to_be_bytes());
                    bytes[5..].copy_from_slice(&q.len.to_be_bytes());
                    out.extend_from_slice(&bytes);
                }
            }
            CascadeMessage::Answers {
                frame_id,
                round,
                parities,
            } => {
                assert!(parities.len() <= MAX_QUESTIONS, "too many answers");
                out.put_u8(2);
                out.put_u64(*frame_id);
                out.put_u32(*round);
                out.put_u32(parities.len() as u32);
                out.extend_from_slice(&parities.to_bytes_lsb());
            }
            CascadeMessage::Done {
                frame_id,
                rounds,
                leaked_bits,
            } => {
                out.put_u8(3);
                out.put_u64(*frame_id);
                out.put_u32(*rounds);
                out.put_u64(*leaked_bits);
            }
            CascadeMessage::DoneAck {
                frame_id,
                leaked_bits,
            } => {
                out.put_u8(4);
                out.put_u64(*frame_id);
                out.put_u64(*leaked_bits);
            }
            CascadeMessage::Abort { frame_id, reason } => {
                out.put_u8(5);
                out.put_u64(*frame_id);
                out.put_u8(reason.code());
            }
        }
        let crc = crc32fast::hash(&out);
        out.put_u32(crc);
        out
    }

    fn encoded_len_hint(&self) -> usize {
        HEADER
            + TRAILER
            + match self {
                CascadeMessage::Questions { questions, .. } => 20 + QUESTION * questions.len(),
                CascadeMessage::Answers { parities, .. } => 8 + parities.len().div_ceil(8),
                _ => 12,
            }
    }

    /// Decodes one message, checking everything described in the module docs.
    ///
    /// # Errors
    /// A [`WireError`] naming the first problem found.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() < HEADER + TRAILER {
            return Err(WireError::Truncated);
        }
        let (body, crc) = bytes.split_at(bytes.len() - TRAILER);
        let crc = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(body) != crc {
            return Err(WireError::Checksum);
        }
        let mut buf = body;
        let version = buf.get_u8();
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let kind = buf.get_u8();
        let frame_id = buf.get_u64();
        let msg = match kind {
            1 => {
                need(&buf, 20)?;
                let round = buf.get_u32();
                let shuffle_seed = buf.get_u64();
                let key_len = buf.get_u32();
                let count = buf.get_u32() as usize;
                if count > MAX_QUESTIONS {
                    return Err(WireError::OutOfRange("question count"));
                }
                need(&buf, count * QUESTION)?;
                let mut questions = Vec::with_capacity(count);
                for chunk in buf[..count * QUESTION].chunks_exact(QUESTION) {
                    let word = |at: usize| {
                        u32::from_be_bytes([chunk[at], chunk[at + 1], chunk[at + 2], chunk[at + 3]])
                    };
                    let (pass, start, len) = (chunk[0], word(1), word(5));
                    if len == 0 || start.checked_add(len).is_none() {
                        return Err(WireError::OutOfRange("question range"));
                    }
                    questions.push(Question { pass, start, len });
                }
                buf.advance(count * QUESTION);
                CascadeMessage::Questions {
                    frame_id,
                    round,
                    shuffle_seed,
                    key_len,
                    questions,
                }
            }
            2 => {
                need(&buf, 8)?;
                let round = buf.get_u32();
                let count = buf.get_u32() as usize;
                if count > MAX_QUESTIONS {
                    return Err(WireError::OutOfRange("answer count"));
                }
                let nbytes = count.div_ceil(8);
                need(&buf, nbytes)?;
                let parities = BitVec::from_bytes_lsb(&buf[..nbytes], count)
                    .map_err(|_| WireError::OutOfRange("answer bytes"))?;
                if !count.is_multiple_of(8) && buf[nbytes - 1] >> (count % 8) != 0 {
                    return Err(WireError::Trailing);
                }
                buf.advance(nbytes);
                CascadeMessage::Answers {
                    frame_id,
                    round,
                    parities,
                }
            }
            3 => {
                need(&buf, 12)?;
                CascadeMessage::Done {
                    frame_id,
                    rounds: buf.get_u32(),
                    leaked_bits: buf.get_u64(),
                }
            }
            4 => {
                need(&buf, 8)?;
                CascadeMessage::DoneAck {
                    frame_id,
                    leaked_bits: buf.get_u64(),
                }
            }
            5 => {
                need(&buf, 1)?;
                CascadeMessage::Abort {
                    frame_id,
                    reason: AbortReason::from_code(buf.get_u8()),
                }
            }
            t => return Err(WireError::Type(t)),
        };
        if buf.has_remaining() {
            return Err(WireError::Trailing);
        }
        Ok(msg)
    }
}

fn need(buf: &&[u8], n: usize) -> Result<(), WireError> {
    if buf.remaining() < n {
        Err(WireError::Truncated)
    } else {
        Ok(())
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
            frame_id: 7,
            round: 3,
            parities,
        };
        let bytes = msg.encode();
        assert_eq!(
            &bytes[..19],
            &[1, 2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 5, 0x0d]
        );
        assert_eq!(bytes.len(), 23);
        assert_eq!(CascadeMessage::decode(&bytes).unwrap(), msg);
    }

    fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes.truncate(bytes.len() - 4);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        bytes
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        let msg = CascadeMessage::Done {
            frame_id: 1,
            rounds: 2,
            leaked_bits: 3,
        };
        let good = msg.encode();
        assert_eq!(
            CascadeMessage::decode(&good[..5]),
            Err(WireError::Truncated)
        );
        let mut bad = good.clone();
        bad[12] ^= 1;
        assert_eq!(CascadeMessage::decode(&bad), Err(WireError::Checksum));
        let mut v = good.clone();
        v[0] = 2;
        assert_eq!(
            CascadeMessage::decode(&reseal(v)),
            Err(WireError::Version(2))
        );
        let mut t = good.clone();
        t[1] = 9;
        assert_eq!(CascadeMessage::decode(&reseal(t)), Err(WireError::Type(9)));
        let mut long = good.clone();
        long.insert(good.len() - 4, 0);
        assert_eq!(
            CascadeMessage::decode(&reseal(long)),
            Err(WireError::Trailing)
        );
        // A huge question count is rejected before allocating.
        let q = CascadeMessage::Questions {
            frame_id: 1,
            round: 0,
            shuffle_seed: 0,
            key_len: 10,
            questions: vec![],
        };
        let mut huge = q.encode();
        huge[26..30].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            CascadeMessage::decode(&reseal(huge)),
            Err(WireError::OutOfRange("question count"))
        );
        let mut short = q.encode();
        short[26..30].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(
            CascadeMessage::decode(&reseal(short)),
            Err(WireError::Truncated)
        );
        // Padding bits of the answers must be zero.
        let a = CascadeMessage::Answers {
            frame_id: 1,
            round: 0,
            parities: [true, true].into_iter().collect(),
        };
        let mut pad = a.encode();
        pad[18] |= 0x80;
        assert_eq!(
            CascadeMessage::decode(&reseal(pad)),
            Err(WireError::Trailing)
        );
    }

    fn question() -> impl Strategy<Value = Question> {
        (any::<u8>(), 0u32..1 << 31, 1u32..1 << 31).prop_map(|(pass, start, len)| Question {
            pass,
            start,
            len,
        })
    }

    fn message() -> impl Strategy<Value = CascadeMessage> {
        prop_oneof![
            (
                any::<u64>(),
                any::<u32>(),
                any::<u64>(),
                any::<u32>(),
                proptest::collection::vec(question(), 0..50)
            )
                .prop_map(|(frame_id, round, shuffle_seed, key_len, questions)| {
                    CascadeMessage::Questions {
                        frame_id,
                        round,
                        shuffle_seed,
                        key_len,
                        questions,
                    }
                }),
            (
                any::<u64>(),
                any::<u32>(),
                proptest::collection::vec(any::<bool>(), 0..100)
            )
                .prop_map(|(frame_id, round, bits)| CascadeMessage::Answers {
                    frame_id,
                    round,
                    parities: bits.into_iter().collect()
                }),
            (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(
                |(frame_id, rounds, leaked_bits)| {
                    CascadeMessage::Done {
                        frame_id,
                        rounds,
                        leaked_bits,
                    }
                }
            ),
            (any::<u64>(), any::<u64>()).prop_map(|(frame_id, leaked_bits)| {
                CascadeMessage::DoneAck {
                    frame_id,
                    leaked_bits,
                }
            }),
            (any::<u64>(), any::<u8>()).prop_map(|(frame_id, c)| CascadeMessage::Abort {
                frame_id,
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

        #[test]
        fn any_bit_flip_is_detected(msg in message(), bit in any::<proptest::sample::Index>()) {
            let mut bytes = msg.encode();
            let i = bit.index(bytes.len() * 8);
            bytes[i / 8] ^= 1 << (i % 8);
            prop_assert!(CascadeMessage::decode(&bytes).is_err());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = CascadeMessage::decode(&bytes);
            let _ = CascadeMessage::decode(&reseal_or_empty(bytes));
        }
    }

    fn reseal_or_empty(bytes: Vec<u8>) -> Vec<u8> {
        if bytes.len() < 4 {
            bytes
        } else {
            reseal(bytes)
        }
    }
}
