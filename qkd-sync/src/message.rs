//! The binary messages of the sync protocol.
//!
//! Every message starts with the workspace envelope (see
//! [`qkd_core::wire`]): protocol [`Protocol::Sync`] (`0x20`), version
//! [`VERSION`] (1) and a type byte. Integers are big-endian. A message is
//! at most [`MAX_MESSAGE_LEN`] bytes; it is read with the checked
//! [`Reader`], so every count is checked against its limit and against the
//! bytes left before anything is allocated, trailing bytes are an error,
//! and decoding never panics; every failure is a [`WireError`].
//!
//! ```text
//! envelope: 0x20 | version 0x01 | type u8
//! Hello (type 1): from u64 | paired_to u64 | nonce u64 | echo_epoch u64 | echo_nonce u64
//!                 | role u8 (0 even chunks, 1 odd chunks) | chunk_bytes u32 | link_tag [16]
//! Data  (type 2): from u64 | to u64 | seq u64 | ack u64 | count u16 | count x record
//! Ack   (type 3): from u64 | to u64 | ack u64
//!
//! record: tag u8, then
//!   1 Have      block u64
//!   2 Lost      block u64
//!   3 Drop      block u64 | offset u32 | len u32 (len >= 1)
//!   4 Delivered master str8 | n_slaves u8 (1..=64) | n_slaves x str8
//!               | n u16 | n x (block u64 | offset u32 | len u32)
//!   5 Consumed  master str8 | slave str8 | count u32
//!   6 Borrow    bytes u64 | fresh u64
//!   7 Grant     n u16 | n x (block u64 | chunk u32 | from u32)
//!   8 Delivered master str8 | n_slaves u8 (1..=64) | n_slaves x str8
//!     (pieces)  | n u16 | n x (pieces u8 (1..=255) | pieces x (block u64 | offset u32 | len u32))
//! str8: len u8 (1..=255) | UTF-8 bytes
//! ```
//!
//! A Delivered notice whose keys are each one range (every key of at most
//! one store chunk) is written as record 4, the form it always had; one
//! with a key of several pieces (a key larger than a chunk, see
//! [`KeyPieces`]) as record 8, which gives each key its piece count. Both
//! decode to the same [`Notice::Delivered`]. Record 8 came with keys
//! larger than a chunk: a node that does not know it refuses the message,
//! so both ends of a link are upgraded together before such keys are taken.
//!
//! Example: a Delivered record (type 8) for master `m`, slave `s` and one
//! key of two pieces, 64 bytes at byte 960 of block 2 and 36 bytes at byte
//! 2048 of block 2:
//!
//! ```
//! use std::sync::Arc;
//! use qkd_core::BlockId;
//! use qkd_keystore::{Binding, KeyPieces, KeyRange, Notice};
//! use qkd_sync::message::{decode_notice, encode_notice, notice_len};
//!
//! let r = |offset, len| KeyRange { block: BlockId::new(2), offset, len };
//! let n = Notice::Delivered {
//!     binding: Arc::new(Binding::pair("m", "s").unwrap()),
//!     keys: vec![KeyPieces::new(vec![r(960, 64), r(2048, 36)]).unwrap()],
//! };
//! let mut bytes = Vec::new();
//! encode_notice(&n, &mut bytes);
//! assert_eq!(bytes, [
//!     8,                                     // record: Delivered (pieces)
//!     1, b'm', 1, 1, b's',                   // master, one slave
//!     0, 1,                                  // one key
//!     2,                                     // of two pieces
//!     0, 0, 0, 0, 0, 0, 0, 2,  0, 0, 3, 0xc0,  0, 0, 0, 64,
//!     0, 0, 0, 0, 0, 0, 0, 2,  0, 0, 8, 0,     0, 0, 0, 36,
//! ]);
//! assert_eq!(notice_len(&n), bytes.len());
//! let mut r = qkd_core::wire::Reader::new(&bytes);
//! assert_eq!(decode_notice(&mut r).unwrap(), n);
//! ```
//!
//! Example: an `Ack` from epoch 0x0102030405060708 to epoch 9 acknowledging
//! sequence number 5 is 27 bytes:
//!
//! ```
//! use qkd_sync::message::{Ack, Message};
//!
//! let msg = Message::Ack(Ack { from: 0x0102030405060708, to: 9, ack: 5 });
//! let bytes = msg.encode();
//! assert_eq!(bytes, [
//!     0x20, 1, 3,                             // protocol Sync, version 1, type Ack
//!     1, 2, 3, 4, 5, 6, 7, 8,                 // from
//!     0, 0, 0, 0, 0, 0, 0, 9,                 // to
//!     0, 0, 0, 0, 0, 0, 0, 5,                 // ack
//! ]);
//! assert_eq!(Message::decode(&bytes).unwrap(), msg);
//! ```

use std::sync::Arc;

use bytes::BufMut;
use qkd_core::wire::{Envelope, Protocol, Reader, WireError};
use qkd_keystore::notice::{MAX_KEY_PIECES, MAX_SLAVES};
use qkd_keystore::{Binding, GrantedChunk, KeyPieces, KeyRange, Notice, StoreRole};

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
const R_DELIVERED_PIECES: u8 = 8;

/// Size of the fixed part of a [`Data`] message (envelope included).
pub const DATA_HEADER_LEN: usize = Envelope::LEN + 8 * 4 + 2;
/// Encoded size of one key range in a Delivered record.
pub const KEY_RANGE_LEN: usize = 16;
/// Encoded size of the longest key (of [`MAX_KEY_PIECES`] pieces) in a
/// Delivered record.
pub const MAX_KEY_LEN: usize = 1 + MAX_KEY_PIECES * KEY_RANGE_LEN;
/// Encoded size of one granted chunk in a Grant record.
pub const GRANTED_CHUNK_LEN: usize = 16;
/// The shortest record (an empty Grant: tag and count).
const MIN_RECORD_LEN: usize = 3;

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
    pub role: StoreRole,
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

fn envelope(kind: u8) -> Envelope {
    Envelope::new(Protocol::Sync, VERSION, kind)
}

impl Message {
    /// The encoded bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Hello(h) => {
                let mut out = envelope(T_HELLO).start(5 * 8 + 1 + 4 + 16);
                out.put_u64(h.from);
                out.put_u64(h.paired_to);
                out.put_u64(h.nonce);
                out.put_u64(h.echo_epoch);
                out.put_u64(h.echo_nonce);
                out.put_u8(h.role.to_byte());
                out.put_u32(h.chunk_bytes);
                out.put_slice(&h.link_tag);
                out
            }
            Message::Data(d) => {
                let body: usize = d.notices.iter().map(notice_len).sum();
                let mut out = Vec::with_capacity(DATA_HEADER_LEN + body);
                write_data_header(&mut out, d.from, d.to, d.seq, d.ack, d.notices.len() as u16);
                for n in &d.notices {
                    encode_notice(n, &mut out);
                }
                out
            }
            Message::Ack(a) => {
                let mut out = envelope(T_ACK).start(3 * 8);
                out.put_u64(a.from);
                out.put_u64(a.to);
                out.put_u64(a.ack);
                out
            }
        }
    }

    /// Decodes one message.
    ///
    /// # Errors
    /// [`WireError`] for anything that is not exactly one valid message.
    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(WireError::TooMany {
                field: "message length",
                count: bytes.len() as u64,
                max: MAX_MESSAGE_LEN as u64,
            });
        }
        let mut r = Reader::new(bytes);
        let msg = match r.envelope(Protocol::Sync, VERSION)? {
            T_HELLO => Message::Hello(Hello {
                from: r.u64()?,
                paired_to: r.u64()?,
                nonce: r.u64()?,
                echo_epoch: r.u64()?,
                echo_nonce: r.u64()?,
                role: StoreRole::from_byte(r.u8()?)
                    .ok_or(WireError::invalid("role", "must be 0 or 1"))?,
                chunk_bytes: r.u32()?,
                link_tag: r.array()?,
            }),
            T_DATA => {
                let from = r.u64()?;
                let to = r.u64()?;
                let seq = r.u64()?;
                let ack = r.u64()?;
                let count = r.count_u16("records", usize::MAX, MIN_RECORD_LEN)?;
                let mut notices = Vec::with_capacity(count);
                for _ in 0..count {
                    notices.push(decode_notice(&mut r)?);
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
                from: r.u64()?,
                to: r.u64()?,
                ack: r.u64()?,
            }),
            kind => return Err(Reader::unknown_type(Protocol::Sync, kind)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// Writes the fixed part of a Data message; `count` records must follow.
pub fn write_data_header(out: &mut Vec<u8>, from: u64, to: u64, seq: u64, ack: u64, count: u16) {
    envelope(T_DATA).write(out);
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
        Notice::Have { .. } | Notice::Lost { .. } => 8,
        Notice::Borrow { .. } => 16,
        Notice::Drop { .. } => KEY_RANGE_LEN,
        Notice::Delivered { binding, keys } => {
            let pieces = in_pieces(keys);
            delivered_header_len(binding)
                + keys
                    .iter()
                    .map(|k| delivered_key_len(pieces, k))
                    .sum::<usize>()
        }
        Notice::Consumed { master, slave, .. } => 2 + master.len() + slave.len() + 4,
        Notice::Grant { chunks } => 2 + chunks.len() * GRANTED_CHUNK_LEN,
    }
}

/// Bytes of a Delivered record before its key ranges (tag excluded).
#[must_use]
pub fn delivered_header_len(binding: &Binding) -> usize {
    1 + binding.master().len() + 1 + binding.slaves().iter().map(|s| 1 + s.len()).sum::<usize>() + 2
}

/// Whether a Delivered notice of `keys` is written in the form with piece
/// counts (record 8): some key has more than one piece.
fn in_pieces(keys: &[KeyPieces]) -> bool {
    keys.iter().any(|k| k.piece_count() > 1)
}

fn delivered_key_len(pieces: bool, k: &KeyPieces) -> usize {
    if pieces {
        1 + k.piece_count() * KEY_RANGE_LEN
    } else {
        KEY_RANGE_LEN
    }
}

/// How many of the first `keys` fit, with their binding, in a Delivered
/// record of at most `room` bytes (tag included): where a sender splits a
/// long notice. Any leading part of `keys` is written in at most that many
/// bytes.
#[must_use]
pub fn delivered_keys_that_fit(binding: &Binding, keys: &[KeyPieces], room: usize) -> usize {
    let pieces = in_pieces(keys);
    let mut left = room.saturating_sub(1 + delivered_header_len(binding));
    let mut n = 0;
    for k in keys {
        let len = delivered_key_len(pieces, k);
        if len > left {
            break;
        }
        left -= len;
        n += 1;
    }
    n
}

/// Appends `n` as one record.
pub fn encode_notice(n: &Notice, out: &mut Vec<u8>) {
    match n {
        Notice::Have { block } => {
            out.put_u8(R_HAVE);
            out.put_u64(block.get());
        }
        Notice::Lost { block } => {
            out.put_u8(R_LOST);
            out.put_u64(block.get());
        }
        Notice::Drop { range } => {
            out.put_u8(R_DROP);
            put_range(out, range);
        }
        Notice::Delivered { binding, keys } => {
            let pieces = in_pieces(keys);
            out.put_u8(if pieces {
                R_DELIVERED_PIECES
            } else {
                R_DELIVERED
            });
            put_str8(out, binding.master());
            out.put_u8(binding.slaves().len() as u8);
            for s in binding.slaves() {
                put_str8(out, s);
            }
            out.put_u16(keys.len() as u16);
            for k in keys {
                if pieces {
                    // The store builds keys of at most MAX_KEY_PIECES pieces.
                    out.put_u8(k.piece_count() as u8);
                    for r in k.pieces() {
                        put_range(out, r);
                    }
                } else {
                    put_range(out, &k.first());
                }
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
        Notice::Borrow { bytes, fresh } => {
            out.put_u8(R_BORROW);
            out.put_u64(*bytes);
            out.put_u64(*fresh);
        }
        Notice::Grant { chunks } => {
            out.put_u8(R_GRANT);
            out.put_u16(chunks.len() as u16);
            for g in chunks {
                out.put_u64(g.block.get());
                out.put_u32(g.chunk);
                out.put_u32(g.from);
            }
        }
    }
}

fn put_range(out: &mut Vec<u8>, r: &KeyRange) {
    out.put_u64(r.block.get());
    out.put_u32(r.offset);
    out.put_u32(r.len);
}

fn get_str8(r: &mut Reader<'_>, field: &'static str) -> Result<String, WireError> {
    let len = r.u8()? as usize;
    if len == 0 {
        return Err(WireError::invalid(field, "an SAE ID is 1 to 255 bytes"));
    }
    let s = std::str::from_utf8(r.bytes(len)?)
        .map_err(|_| WireError::invalid(field, "an SAE ID is UTF-8"))?;
    Ok(s.to_owned())
}

fn get_range(r: &mut Reader<'_>) -> Result<KeyRange, WireError> {
    let block = r.block()?;
    let offset = r.u32()?;
    let len = r.u32()?;
    if len == 0 {
        return Err(WireError::invalid(
            "len",
            "a key range is at least one byte",
        ));
    }
    Ok(KeyRange { block, offset, len })
}

fn get_binding(r: &mut Reader<'_>) -> Result<Binding, WireError> {
    let master = get_str8(r, "master")?;
    // Each slave is at least two bytes (length and one byte).
    let n_slaves = r.count_u8("slaves", MAX_SLAVES, 2)?;
    let mut slaves = Vec::with_capacity(n_slaves);
    for _ in 0..n_slaves {
        slaves.push(get_str8(r, "slave")?);
    }
    Binding::new(master, slaves)
        .map_err(|_| WireError::invalid("slaves", "a binding names 1 to 64 distinct slaves"))
}

/// Decodes one record.
///
/// # Errors
/// [`WireError`] if the bytes do not start with a valid record.
pub fn decode_notice(r: &mut Reader<'_>) -> Result<Notice, WireError> {
    Ok(match r.u8()? {
        R_HAVE => Notice::Have { block: r.block()? },
        R_LOST => Notice::Lost { block: r.block()? },
        R_DROP => Notice::Drop {
            range: get_range(r)?,
        },
        R_DELIVERED => {
            let binding = get_binding(r)?;
            let n = r.count_u16("keys", usize::MAX, KEY_RANGE_LEN)?;
            let mut keys = Vec::with_capacity(n);
            for _ in 0..n {
                keys.push(KeyPieces::single(get_range(r)?));
            }
            Notice::Delivered {
                binding: Arc::new(binding),
                keys,
            }
        }
        R_DELIVERED_PIECES => {
            let binding = get_binding(r)?;
            // Each key is at least its count and one range.
            let n = r.count_u16("keys", usize::MAX, 1 + KEY_RANGE_LEN)?;
            let mut keys = Vec::with_capacity(n);
            for _ in 0..n {
                let p = r.count_u8("pieces", MAX_KEY_PIECES, KEY_RANGE_LEN)?;
                let mut pieces = Vec::with_capacity(p);
                for _ in 0..p {
                    pieces.push(get_range(r)?);
                }
                keys.push(
                    KeyPieces::new(pieces)
                        .ok_or(WireError::invalid("pieces", "a key is at least one piece"))?,
                );
            }
            Notice::Delivered {
                binding: Arc::new(binding),
                keys,
            }
        }
        R_CONSUMED => Notice::Consumed {
            master: get_str8(r, "master")?,
            slave: get_str8(r, "slave")?,
            count: r.u32()?,
        },
        R_BORROW => Notice::Borrow {
            bytes: r.u64()?,
            fresh: r.u64()?,
        },
        R_GRANT => {
            let n = r.count_u16("chunks", usize::MAX, GRANTED_CHUNK_LEN)?;
            let mut chunks = Vec::with_capacity(n);
            for _ in 0..n {
                chunks.push(GrantedChunk {
                    block: r.block()?,
                    chunk: r.u32()?,
                    from: r.u32()?,
                });
            }
            Notice::Grant { chunks }
        }
        _ => return Err(WireError::invalid("record", "unknown record tag")),
    })
}
