//! The binary messages of the sync protocol.
//!
//! Every message starts with a version byte ([`VERSION`] = 1) and a type
//! byte. Integers are big-endian. A message is at most [`MAX_MESSAGE_LEN`]
//! bytes; counts are checked against the bytes left before anything is
//! allocated; trailing bytes are an error; decoding never panics.
//!
//! ```text
//! Hello (type 1): from u64 | paired_to u64 | nonce u64 | echo_epoch u64 | echo_nonce u64
//!                 | role u8 (0 first, 1 second) | chunk_bytes u32 | link_tag [16]
//! Data  (type 2): from u64 | to u64 | seq u64 | ack u64 | count u16 | count x record
//! Ack   (type 3): from u64 | to u64 | ack u64
//!
//! record: tag u8, then
//!   1 Have      block u64
//!   2 Lost      block u64
//!   3 Drop      block u64 | offset u32 | len u32
//!   4 Delivered master str8 | n_slaves u8 | n_slaves x str8 | n u16 | n x (block u64 | offset u32 | len u32)
//!   5 Consumed  master str8 | slave str8 | count u32
//!   6 Borrow    bytes u64
//!   7 Grant     n u16 | n x (block u64 | chunk u32 | from u32)
//! str8: len u8 (1..=255) | UTF-8 bytes
//! ```
//!
//! Example: an `Ack` from epoch 0x0102030405060708 to epoch 9 acknowledging
//! sequence number 5 is 26 bytes:
//!
//! ```
//! use qkd_sync::message::{Ack, Message};
//!
//! let msg = Message::Ack(Ack { from: 0x0102030405060708, to: 9, ack: 5 });
//! let bytes = msg.encode();
//! assert_eq!(bytes, [
//!     1, 3,                                   // version 1, type Ack
//!     1, 2, 3, 4, 5, 6, 7, 8,                 // from
//!     0, 0, 0, 0, 0, 0, 0, 9,                 // to
//!     0, 0, 0, 0, 0, 0, 0, 5,                 // ack
//! ]);
//! assert_eq!(Message::decode(&bytes).unwrap(), msg);
//! ```

use std::sync::Arc;

use bytes::{Buf, BufMut};
use qkd_keystore::{Binding, GrantedChunk, KeyRange, Notice, Role};

/// Protocol version written and accepted.
pub const VERSION: u8 = 1;
/// Longest message accepted, in bytes.
pub const MAX_MESSAGE_LEN: usize = 1 << 16;

const T_HELLO: u8 = 1;
const T_DATA: u8 = 2;
const T_ACK: u8 = 3;

const R_HAVE: u8 = 1;
const R_LOST: u8 = 2;
const R_DROP: u8 = 3;
const R_DELIVERED: u8 = 4;
const R_CONSUMED: u8 = 5;
const R_BORROW: u8 = 6;
const R_GRANT: u8 = 7;

/// Size of the fixed part of a [`Data`] message.
pub const DATA_HEADER_LEN: usize = 2 + 8 * 4 + 2;
/// Encoded size of one key range in a Delivered record.
pub const KEY_RANGE_LEN: usize = 16;

/// Why a message was rejected. Carries no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The message ended early.
    #[error("message truncated")]
    Truncated,
    /// The message is longer than [`MAX_MESSAGE_LEN`].
    #[error("message of {len} bytes is too long")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// A version this implementation does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// An unknown message type.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// An unknown record tag.
    #[error("unknown record tag {0}")]
    UnknownRecord(u8),
    /// Bytes left after the message.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// A field holds a value outside its domain.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// Session setup: who I am, whom I am paired with, my challenge, and the
/// answer to yours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's boot epoch.
    pub from: u64,
    /// The epoch of the peer the sender is paired with, 0 if none.
    pub paired_to: u64,
    /// The sender's current challenge.
    pub nonce: u64,
    /// The epoch whose challenge is echoed, 0 if none.
    pub echo_epoch: u64,
    /// The echoed challenge.
    pub echo_nonce: u64,
    /// The sender's role.
    pub role: Role,
    /// The sender's chunk size.
    pub chunk_bytes: u32,
    /// A tag of the sender's link name.
    pub link_tag: [u8; 16],
}

/// Notices of the ordered stream, numbered `seq`, plus a cumulative ack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    /// Sender's epoch.
    pub from: u64,
    /// Receiver's epoch as the sender knows it.
    pub to: u64,
    /// Sequence number (from 1 in each session).
    pub seq: u64,
    /// Highest sequence number received in order from the receiver.
    pub ack: u64,
    /// The notices.
    pub notices: Vec<Notice>,
}

/// A cumulative acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Sender's epoch.
    pub from: u64,
    /// Receiver's epoch as the sender knows it.
    pub to: u64,
    /// Highest sequence number received in order.
    pub ack: u64,
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Session setup.
    Hello(Hello),
    /// Stream data.
    Data(Data),
    /// Acknowledgement.
    Ack(Ack),
}

impl Message {
    /// The encoded bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Message::Hello(h) => {
                out.put_u8(VERSION);
                out.put_u8(T_HELLO);
                out.put_u64(h.from);
                out.put_u64(h.paired_to);
                out.put_u64(h.nonce);
                out.put_u64(h.echo_epoch);
                out.put_u64(h.echo_nonce);
                out.put_u8(h.role.to_byte());
                out.put_u32(h.chunk_bytes);
                out.put_slice(&h.link_tag);
            }
            Message::Data(d) => {
                write_data_header(&mut out, d.from, d.to, d.seq, d.ack, d.notices.len() as u16);
                for n in &d.notices {
                    encode_notice(n, &mut out);
                }
            }
            Message::Ack(a) => {
                out.put_u8(VERSION);
                out.put_u8(T_ACK);
                out.put_u64(a.from);
                out.put_u64(a.to);
                out.put_u64(a.ack);
            }
        }
        out
    }

    /// Decodes one message.
    ///
    /// # Errors
    /// [`WireError`] for anything that is not exactly one valid message.
    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(WireError::TooLong { len: bytes.len() });
        }
        let mut b = bytes;
        let version = get_u8(&mut b)?;
        if version != VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let msg = match get_u8(&mut b)? {
            T_HELLO => {
                let from = get_u64(&mut b)?;
                let paired_to = get_u64(&mut b)?;
                let nonce = get_u64(&mut b)?;
                let echo_epoch = get_u64(&mut b)?;
                let echo_nonce = get_u64(&mut b)?;
                let role = match get_u8(&mut b)? {
                    0 => Role::First,
                    1 => Role::Second,
                    _ => return Err(WireError::Invalid("role")),
                };
                let chunk_bytes = get_u32(&mut b)?;
                let mut link_tag = [0u8; 16];
                need(&b, 16)?;
                b.copy_to_slice(&mut link_tag);
                Message::Hello(Hello {
                    from,
                    paired_to,
                    nonce,
                    echo_epoch,
                    echo_nonce,
                    role,
                    chunk_bytes,
                    link_tag,
                })
            }
            T_DATA => {
                let from = get_u64(&mut b)?;
                let to = get_u64(&mut b)?;
                let seq = get_u64(&mut b)?;
                let ack = get_u64(&mut b)?;
                let count = get_u16(&mut b)? as usize;
                // Every record is at least 3 bytes (an empty grant).
                if count * 3 > b.remaining() {
                    return Err(WireError::Truncated);
                }
                let mut notices = Vec::with_capacity(count);
                for _ in 0..count {
                    notices.push(decode_notice(&mut b)?);
                }
                Message::Data(Data {
                    from,
                    to,
                    seq,
                    ack,
                    notices,
                })
            }
            T_ACK => Message::Ack(Ack {
                from: get_u64(&mut b)?,
                to: get_u64(&mut b)?,
                ack: get_u64(&mut b)?,
            }),
            t => return Err(WireError::UnknownType(t)),
        };
        if !b.is_empty() {
            return Err(WireError::TrailingBytes(b.len()));
        }
        Ok(msg)
    }
}

/// Writes the fixed part of a Data message; `count` records must follow.
pub fn write_data_header(out: &mut Vec<u8>, from: u64, to: u64, seq: u64, ack: u64, count: u16) {
    out.put_u8(VERSION);
    out.put_u8(T_DATA);
    out.put_u64(from);
    out.put_u64(to);
    out.put_u64(seq);
    out.put_u64(ack);
    out.put_u16(count);
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    // Binding and the store keep SAE IDs at 1..=255 bytes.
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
}

/// Encoded size of a notice as one record.
#[must_use]
pub fn notice_len(n: &Notice) -> usize {
    1 + match n {
        Notice::Have { .. } | Notice::Lost { .. } | Notice::Borrow { .. } => 8,
        Notice::Drop { .. } => 16,
        Notice::Delivered { binding, keys } => delivered_header_len(binding) + keys.len() * 16,
        Notice::Consumed { master, slave, .. } => 2 + master.len() + slave.len() + 4,
        Notice::Grant { chunks } => 2 + chunks.len() * 16,
    }
}

/// Bytes of a Delivered record before its key ranges (tag excluded).
#[must_use]
pub fn delivered_header_len(binding: &Binding) -> usize {
    1 + binding.master().len() + 1 + binding.slaves().iter().map(|s| 1 + s.len()).sum::<usize>() + 2
}

/// Appends `n` as one record.
pub fn encode_notice(n: &Notice, out: &mut Vec<u8>) {
    match n {
        Notice::Have { block } => {
            out.put_u8(R_HAVE);
            out.put_u64(*block);
        }
        Notice::Lost { block } => {
            out.put_u8(R_LOST);
            out.put_u64(*block);
        }
        Notice::Drop { range } => {
            out.put_u8(R_DROP);
            put_range(out, range);
        }
        Notice::Delivered { binding, keys } => {
            out.put_u8(R_DELIVERED);
            put_str8(out, binding.master());
            out.put_u8(binding.slaves().len() as u8);
            for s in binding.slaves() {
                put_str8(out, s);
            }
            out.put_u16(keys.len() as u16);
            for k in keys {
                put_range(out, k);
            }
        }
        Notice::Consumed {
            master,
            slave,
            count,
        } => {
            out.put_u8(R_CONSUMED);
            put_str8(out, master);
            put_str8(out, slave);
            out.put_u32(*count);
        }
        Notice::Borrow { bytes } => {
            out.put_u8(R_BORROW);
            out.put_u64(*bytes);
        }
        Notice::Grant { chunks } => {
            out.put_u8(R_GRANT);
            out.put_u16(chunks.len() as u16);
            for g in chunks {
                out.put_u64(g.block);
                out.put_u32(g.chunk);
                out.put_u32(g.from);
            }
        }
    }
}

fn put_range(out: &mut Vec<u8>, r: &KeyRange) {
    out.put_u64(r.block);
    out.put_u32(r.offset);
    out.put_u32(r.len);
}

fn need(b: &&[u8], n: usize) -> Result<(), WireError> {
    if b.remaining() < n {
        Err(WireError::Truncated)
    } else {
        Ok(())
    }
}

fn get_u8(b: &mut &[u8]) -> Result<u8, WireError> {
    need(b, 1)?;
    Ok(b.get_u8())
}

fn get_u16(b: &mut &[u8]) -> Result<u16, WireError> {
    need(b, 2)?;
    Ok(b.get_u16())
}

fn get_u32(b: &mut &[u8]) -> Result<u32, WireError> {
    need(b, 4)?;
    Ok(b.get_u32())
}

fn get_u64(b: &mut &[u8]) -> Result<u64, WireError> {
    need(b, 8)?;
    Ok(b.get_u64())
}

fn get_str8(b: &mut &[u8]) -> Result<String, WireError> {
    let len = get_u8(b)? as usize;
    if len == 0 {
        return Err(WireError::Invalid("empty SAE ID"));
    }
    need(b, len)?;
    let s = std::str::from_utf8(&b[..len]).map_err(|_| WireError::Invalid("SAE ID not UTF-8"))?;
    let s = s.to_owned();
    b.advance(len);
    Ok(s)
}

fn get_range(b: &mut &[u8]) -> Result<KeyRange, WireError> {
    let block = get_u64(b)?;
    let offset = get_u32(b)?;
    let len = get_u32(b)?;
    if len == 0 {
        return Err(WireError::Invalid("empty key range"));
    }
    Ok(KeyRange { block, offset, len })
}

/// Decodes one record.
///
/// # Errors
/// [`WireError`] if the bytes do not start with a valid record.
pub fn decode_notice(b: &mut &[u8]) -> Result<Notice, WireError> {
    Ok(match get_u8(b)? {
        R_HAVE => Notice::Have { block: get_u64(b)? },
        R_LOST => Notice::Lost { block: get_u64(b)? },
        R_DROP => Notice::Drop {
            range: get_range(b)?,
        },
        R_DELIVERED => {
            let master = get_str8(b)?;
            let n_slaves = get_u8(b)? as usize;
            if n_slaves * 2 > b.remaining() {
                return Err(WireError::Truncated);
            }
            let mut slaves = Vec::with_capacity(n_slaves);
            for _ in 0..n_slaves {
                slaves.push(get_str8(b)?);
            }
            let binding =
                Binding::new(master, slaves).map_err(|_| WireError::Invalid("binding"))?;
            let n = get_u16(b)? as usize;
            if n * KEY_RANGE_LEN > b.remaining() {
                return Err(WireError::Truncated);
            }
            let mut keys = Vec::with_capacity(n);
            for _ in 0..n {
                keys.push(get_range(b)?);
            }
            Notice::Delivered {
                binding: Arc::new(binding),
                keys,
            }
        }
        R_CONSUMED => Notice::Consumed {
            master: get_str8(b)?,
            slave: get_str8(b)?,
            count: get_u32(b)?,
        },
        R_BORROW => Notice::Borrow { bytes: get_u64(b)? },
        R_GRANT => {
            let n = get_u16(b)? as usize;
            if n * 16 > b.remaining() {
                return Err(WireError::Truncated);
            }
            let mut chunks = Vec::with_capacity(n);
            for _ in 0..n {
                chunks.push(GrantedChunk {
                    block: get_u64(b)?,
                    chunk: get_u32(b)?,
                    from: get_u32(b)?,
                });
            }
            Notice::Grant { chunks }
        }
        t => return Err(WireError::UnknownRecord(t)),
    })
}
