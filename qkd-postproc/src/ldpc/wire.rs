//! The LDPC messages on the wire (`qkd_core::wire`, protocol
//! [`Protocol::Ldpc`], version 1). Every message ends with a CRC-32 of
//! everything before it (corruption on the simulated or a raw link is
//! rejected before decoding; authentication is the channel's job).
//!
//! ```text
//! envelope  [0x14, 0x01, type]
//! 1 Syndrome   A→B  block u64 | plan (rung u8, n u32, punctured u32, shortened u32)
//!                   | m u32 | ⌈m/8⌉ bytes of syndrome bits (LSB first)
//! 2 Reveal     A→B  block u64 | round u16 | start u32 | count u32 | ⌈count/8⌉ bytes
//! 3 Request    B→A  block u64 | round u16            (round `round` failed)
//! 4 Done       B→A  block u64 | converged u8 | rounds u16 | leaked u32
//! 5 DoneAck    A→B  block u64 | leaked u32
//! 6 Ask        B→A  block u64 | round u16 | count u32 | count × position u32
//!                   (round `round` failed; guided: reveal these, ascending)
//! crc32 u32 (big-endian) over all bytes before it
//! ```
//!
//! For example a `Request` for block 7 after round 1:
//! `14 01 03 00 00 00 00 00 00 00 07 00 01` followed by its CRC-32.

use qkd_core::BlockId;
use qkd_core::wire::{Envelope, Protocol, Reader, WireError, append_crc32, strip_crc32};

/// Version of the LDPC format.
pub const VERSION: u8 = 1;
/// Largest syndrome or reveal, in bits (frames up to 2^20 bits).
pub const MAX_BITS: usize = 1 << 20;
/// Most positions one `Ask` names.
pub const MAX_ASK: usize = 1 << 16;

/// The frame layout both sides must share: rung (255 for a code from
/// outside the ladder), frame length, punctured and shortened positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanId {
    /// Ladder index of the mother code (255: another code).
    pub rung: u8,
    /// Frame length.
    pub n: u32,
    /// Punctured positions.
    pub punctured: u32,
    /// Shortened positions.
    pub shortened: u32,
}

/// One LDPC message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LdpcMessage {
    /// Alice's syndrome.
    Syndrome {
        /// The block.
        block: BlockId,
        /// The frame layout.
        plan: PlanId,
        /// `m` syndrome bits, packed LSB first.
        bits: Vec<u8>,
        /// `m`.
        len: u32,
    },
    /// Alice reveals the bits `start..start + count` of the reveal order.
    Reveal {
        /// The block.
        block: BlockId,
        /// The decoding round these bits are for (2 for the first reveal).
        round: u16,
        /// First index in the reveal order.
        start: u32,
        /// Bits revealed.
        count: u32,
        /// The bits, packed LSB first.
        bits: Vec<u8>,
    },
    /// Bob: decoding round `round` failed, reveal more.
    Request {
        /// The block.
        block: BlockId,
        /// The round that failed.
        round: u16,
    },
    /// Bob's outcome.
    Done {
        /// The block.
        block: BlockId,
        /// Whether his decoder matched the syndrome.
        converged: bool,
        /// Decoding rounds run.
        rounds: u16,
        /// Bob's count of leaked bits.
        leaked: u32,
    },
    /// Alice acknowledges `Done` with her count.
    DoneAck {
        /// The block.
        block: BlockId,
        /// Alice's count of leaked bits.
        leaked: u32,
    },
    /// Bob (guided): decoding round `round` failed, reveal the bits at
    /// these frame positions.
    Ask {
        /// The block.
        block: BlockId,
        /// The round that failed.
        round: u16,
        /// Frame positions, strictly ascending, 1 to [`MAX_ASK`] of them.
        positions: Vec<u32>,
    },
}

impl LdpcMessage {
    /// The block the message belongs to.
    #[must_use]
    pub fn block(&self) -> BlockId {
        match self {
            LdpcMessage::Syndrome { block, .. }
            | LdpcMessage::Reveal { block, .. }
            | LdpcMessage::Request { block, .. }
            | LdpcMessage::Done { block, .. }
            | LdpcMessage::DoneAck { block, .. }
            | LdpcMessage::Ask { block, .. } => *block,
        }
    }

    /// The bytes on the wire.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let kind = match self {
            LdpcMessage::Syndrome { .. } => 1,
            LdpcMessage::Reveal { .. } => 2,
            LdpcMessage::Request { .. } => 3,
            LdpcMessage::Done { .. } => 4,
            LdpcMessage::DoneAck { .. } => 5,
            LdpcMessage::Ask { .. } => 6,
        };
        let mut out = Envelope::new(Protocol::Ldpc, VERSION, kind).start(32);
        out.extend_from_slice(&self.block().get().to_be_bytes());
        match self {
            LdpcMessage::Syndrome {
                plan, bits, len, ..
            } => {
                out.push(plan.rung);
                for x in [plan.n, plan.punctured, plan.shortened, *len] {
                    out.extend_from_slice(&x.to_be_bytes());
                }
                out.extend_from_slice(bits);
            }
            LdpcMessage::Reveal {
                round,
                start,
                count,
                bits,
                ..
            } => {
                out.extend_from_slice(&round.to_be_bytes());
                out.extend_from_slice(&start.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
                out.extend_from_slice(bits);
            }
            LdpcMessage::Request { round, .. } => out.extend_from_slice(&round.to_be_bytes()),
            LdpcMessage::Done {
                converged,
                rounds,
                leaked,
                ..
            } => {
                out.push(u8::from(*converged));
                out.extend_from_slice(&rounds.to_be_bytes());
                out.extend_from_slice(&leaked.to_be_bytes());
            }
            LdpcMessage::DoneAck { leaked, .. } => out.extend_from_slice(&leaked.to_be_bytes()),
            LdpcMessage::Ask {
                round, positions, ..
            } => {
                out.extend_from_slice(&round.to_be_bytes());
                out.extend_from_slice(&(positions.len() as u32).to_be_bytes());
                for v in positions {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
        append_crc32(&mut out);
        out
    }

    /// Decodes one message; never panics.
    ///
    /// # Errors
    /// A [`WireError`] for a bad checksum, envelope, count or length, or
    /// trailing bytes.
    pub fn decode(message: &[u8]) -> Result<Self, WireError> {
        let body = strip_crc32(message)?;
        let mut r = Reader::new(body);
        let kind = r.envelope(Protocol::Ldpc, VERSION)?;
        let block = r.block()?;
        let packed =
            |r: &mut Reader<'_>, bits: u32, field: &'static str| -> Result<Vec<u8>, WireError> {
                let bits = bits as usize;
                if bits > MAX_BITS {
                    return Err(WireError::invalid(field, "more than 2^20 bits"));
                }
                Ok(r.packed_bits(field, bits)?.to_vec())
            };
        let message = match kind {
            1 => {
                let rung = r.u8()?;
                let (n, punctured, shortened, len) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
                let bits = packed(&mut r, len, "syndrome")?;
                LdpcMessage::Syndrome {
                    block,
                    plan: PlanId {
                        rung,
                        n,
                        punctured,
                        shortened,
                    },
                    bits,
                    len,
                }
            }
            2 => {
                let (round, start, count) = (r.u16()?, r.u32()?, r.u32()?);
                let bits = packed(&mut r, count, "reveal")?;
                LdpcMessage::Reveal {
                    block,
                    round,
                    start,
                    count,
                    bits,
                }
            }
            3 => LdpcMessage::Request {
                block,
                round: r.u16()?,
            },
            4 => LdpcMessage::Done {
                block,
                converged: r.bool("converged")?,
                rounds: r.u16()?,
                leaked: r.u32()?,
            },
            5 => LdpcMessage::DoneAck {
                block,
                leaked: r.u32()?,
            },
            6 => {
                let round = r.u16()?;
                let count = r.u32()? as usize;
                if count == 0 || count > MAX_ASK {
                    return Err(WireError::invalid("positions", "1 to 2^16 positions"));
                }
                let mut positions = Vec::with_capacity(count.min(body.len() / 4));
                for _ in 0..count {
                    let v = r.u32()?;
                    if positions.last().is_some_and(|&last| v <= last) {
                        return Err(WireError::invalid(
                            "positions",
                            "must be strictly ascending",
                        ));
                    }
                    positions.push(v);
                }
                LdpcMessage::Ask {
                    block,
                    round,
                    positions,
                }
            }
            other => return Err(Reader::unknown_type(Protocol::Ldpc, other)),
        };
        r.finish()?;
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes_match_the_docs() {
        let m = LdpcMessage::Request {
            block: BlockId::new(7),
            round: 1,
        }
        .encode();
        assert_eq!(&m[..13], &[0x14, 1, 3, 0, 0, 0, 0, 0, 0, 0, 7, 0, 1]);
        assert_eq!(m.len(), 17);
    }

    #[test]
    fn an_ask_must_name_ascending_positions() {
        let ask = |positions: Vec<u32>| {
            LdpcMessage::Ask {
                block: BlockId::new(1),
                round: 1,
                positions,
            }
            .encode()
        };
        assert!(LdpcMessage::decode(&ask(vec![1, 2])).is_ok());
        for bad in [vec![], vec![2, 2], vec![3, 1]] {
            assert!(LdpcMessage::decode(&ask(bad)).is_err());
        }
        let too_many: Vec<u32> = (0..=MAX_ASK as u32).collect();
        assert!(LdpcMessage::decode(&ask(too_many)).is_err());
    }

    #[test]
    fn every_message_round_trips_and_every_flip_is_caught() {
        let plan = PlanId {
            rung: 3,
            n: 4096,
            punctured: 10,
            shortened: 20,
        };
        let messages = [
            LdpcMessage::Syndrome {
                block: BlockId::new(1),
                plan,
                bits: vec![0xff, 0x03],
                len: 10,
            },
            LdpcMessage::Reveal {
                block: BlockId::new(2),
                round: 2,
                start: 5,
                count: 3,
                bits: vec![0x05],
            },
            LdpcMessage::Request {
                block: BlockId::new(3),
                round: 1,
            },
            LdpcMessage::Done {
                block: BlockId::new(4),
                converged: true,
                rounds: 2,
                leaked: 99,
            },
            LdpcMessage::DoneAck {
                block: BlockId::new(5),
                leaked: 99,
            },
            LdpcMessage::Ask {
                block: BlockId::new(6),
                round: 3,
                positions: vec![0, 17, 1 << 19],
            },
        ];
        for m in messages {
            let bytes = m.encode();
            assert_eq!(LdpcMessage::decode(&bytes), Ok(m));
            for i in 0..bytes.len() * 8 {
                let mut bad = bytes.clone();
                bad[i / 8] ^= 1 << (i % 8);
                assert!(LdpcMessage::decode(&bad).is_err());
            }
            for cut in 0..bytes.len() {
                assert!(LdpcMessage::decode(&bytes[..cut]).is_err());
            }
        }
    }
}
