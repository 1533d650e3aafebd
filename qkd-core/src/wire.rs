//! The binary wire layer shared by every protocol of the workspace: one
//! envelope, one checked reader, one error type.
//!
//! # The envelope
//!
//! Every message of every protocol starts with three bytes:
//!
//! ```text
//!  byte 0        byte 1     byte 2    bytes 3..
//! ┌────────────┬──────────┬─────────┬────────────────────────────────┐
//! │ protocol id│ version  │ type    │ body (the protocol's own format)│
//! └────────────┴──────────┴─────────┴────────────────────────────────┘
//! ```
//!
//! The protocol identifiers are registered in one place, [`Protocol`], so
//! that payloads sharing one channel (the pipeline multiplexes Cascade,
//! confirmation, estimation and amplification messages over one
//! authenticated channel) can always be told apart by their first byte.
//! Integers are big-endian (network order). Bit strings are packed LSB
//! first, as everywhere in the workspace.
//!
//! # Decoding
//!
//! [`Reader`] reads over a byte slice with the `bytes` crate's checked
//! getters. Every read checks the remaining length first; counts read from
//! the wire are checked against a limit and against the bytes that remain
//! *before* anything is allocated ([`Reader::count_u32`]); [`Reader::finish`]
//! rejects trailing bytes. Decoding never panics: every failure is a
//! [`WireError`].
//!
//! ```
//! use qkd_core::wire::{Envelope, Protocol, Reader, WireError};
//!
//! // Encode: envelope, then the body.
//! let mut out = Vec::new();
//! Envelope::new(Protocol::Confirm, 1, 7).write(&mut out);
//! out.extend_from_slice(&42u32.to_be_bytes());
//! assert_eq!(out, [0x15, 0x01, 0x07, 0x00, 0x00, 0x00, 0x2a]);
//!
//! // Decode: check the envelope, read the body, refuse trailing bytes.
//! let mut r = Reader::new(&out);
//! let kind = r.envelope(Protocol::Confirm, 1)?;
//! assert_eq!(kind, 7);
//! assert_eq!(r.u32()?, 42);
//! r.finish()?;
//!
//! // Another protocol's message is refused by its first byte.
//! let mut r = Reader::new(&out);
//! assert!(matches!(
//!     r.envelope(Protocol::Cascade, 1),
//!     Err(WireError::WrongProtocol { expected: Protocol::Cascade, found: 0x15 })
//! ));
//! # Ok::<(), WireError>(())
//! ```

use std::fmt;

use bytes::{Buf, BufMut};

use crate::BitVec;
use crate::key::BlockId;

/// The registry of protocol identifiers: the first byte of every message.
///
/// Values are never reused; a retired protocol keeps its number. The
/// numbers start at `0x10` so that no message of the formats used before
/// the envelope existed (which all started with the byte `0x01`) is taken
/// for a registered protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
#[non_exhaustive]
pub enum Protocol {
    /// The Wegman–Carter authenticated channel's own framing (`qkd-postproc::auth`).
    Auth = 0x10,
    /// Sifting: basis announcements (`qkd-postproc::sift`).
    Sift = 0x11,
    /// Parameter estimation: sample seed and disclosed sample (`qkd-postproc::estimate`).
    Estimate = 0x12,
    /// Cascade error correction (`qkd-postproc::cascade`).
    Cascade = 0x13,
    /// LDPC error correction (`qkd-postproc::ldpc`).
    Ldpc = 0x14,
    /// Key confirmation (`qkd-postproc::confirm`).
    Confirm = 0x15,
    /// Privacy amplification: the Toeplitz seed (`qkd-postproc::amplify`).
    Amplify = 0x16,
    /// The pipeline's own control messages: block outcomes and their
    /// acknowledgements (`qkd-postproc::pipeline`).
    Pipeline = 0x17,
    /// Key-store synchronisation (`qkd-sync`).
    Sync = 0x20,
    /// The KMS-to-KMS handshake (`qkd-handshake`).
    Handshake = 0x30,
    /// Records of the secured channel after the handshake (`qkd-handshake`).
    SecuredChannel = 0x31,
    /// Key forwarding and trusted-node relay (`qkd-handshake`).
    Relay = 0x32,
}

impl Protocol {
    /// Every registered protocol, in identifier order.
    pub const ALL: [Protocol; 12] = [
        Protocol::Auth,
        Protocol::Sift,
        Protocol::Estimate,
        Protocol::Cascade,
        Protocol::Ldpc,
        Protocol::Confirm,
        Protocol::Amplify,
        Protocol::Pipeline,
        Protocol::Sync,
        Protocol::Handshake,
        Protocol::SecuredChannel,
        Protocol::Relay,
    ];

    /// The identifier byte.
    pub const fn id(self) -> u8 {
        self as u8
    }

    /// The protocol registered under `id`, if any.
    pub fn from_id(id: u8) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.id() == id)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The three bytes that start every message: protocol, version, type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Envelope {
    /// Which protocol the message belongs to.
    pub protocol: Protocol,
    /// The version of that protocol's format.
    pub version: u8,
    /// The message type within the protocol.
    pub kind: u8,
}

impl Envelope {
    /// Length of an envelope on the wire.
    pub const LEN: usize = 3;

    /// An envelope for a message of type `kind` of `protocol` at `version`.
    pub const fn new(protocol: Protocol, version: u8, kind: u8) -> Self {
        Envelope {
            protocol,
            version,
            kind,
        }
    }

    /// Appends the three envelope bytes to `out`.
    pub fn write(&self, out: &mut impl BufMut) {
        out.put_u8(self.protocol.id());
        out.put_u8(self.version);
        out.put_u8(self.kind);
    }

    /// A new message buffer holding this envelope, with room for `body` more bytes.
    pub fn start(&self, body: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN + body);
        self.write(&mut out);
        out
    }

    /// Reads the envelope at the start of `message` without checking which
    /// protocol or version it names beyond that the protocol is registered:
    /// what a demultiplexer needs to route a message to its machine.
    ///
    /// # Errors
    /// Fewer than three bytes, or an unregistered protocol identifier.
    pub fn peek(message: &[u8]) -> Result<Envelope, WireError> {
        let mut r = Reader::new(message);
        let id = r.u8()?;
        let protocol = Protocol::from_id(id).ok_or(WireError::UnknownProtocol { id })?;
        Ok(Envelope {
            protocol,
            version: r.u8()?,
            kind: r.u8()?,
        })
    }
}

/// Why bytes from the wire could not be decoded. One type for every format.
///
/// Errors carry sizes, counts and field names, never the bytes themselves.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The message ended before a field did.
    #[error("truncated: {needed} more bytes needed, {remaining} left")]
    Truncated {
        /// Bytes the next field needs.
        needed: usize,
        /// Bytes that were left.
        remaining: usize,
    },
    /// Bytes were left after the last field.
    #[error("{count} trailing bytes after the message")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The first byte names no registered protocol.
    #[error("unknown protocol identifier {id:#04x}")]
    UnknownProtocol {
        /// The byte found.
        id: u8,
    },
    /// The message belongs to another protocol than the one decoding it.
    #[error("message of protocol {found:#04x}, expected {expected}")]
    WrongProtocol {
        /// The protocol that was decoding.
        expected: Protocol,
        /// The identifier byte found.
        found: u8,
    },
    /// A version of the protocol's format this build does not speak.
    #[error("unsupported {protocol} version {version}")]
    UnsupportedVersion {
        /// The protocol.
        protocol: Protocol,
        /// The version found.
        version: u8,
    },
    /// A message type the protocol does not define.
    #[error("unknown {protocol} message type {kind}")]
    UnknownType {
        /// The protocol.
        protocol: Protocol,
        /// The type byte found.
        kind: u8,
    },
    /// A count above its limit, or more elements than the bytes left can hold.
    #[error("`{field}`: count {count} above the limit {max}")]
    TooMany {
        /// The field that carried the count.
        field: &'static str,
        /// The count found.
        count: u64,
        /// The largest count accepted here.
        max: u64,
    },
    /// A field whose value is outside its domain.
    #[error("`{field}`: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A checksum over the message did not match (the message was damaged).
    #[error("checksum mismatch")]
    Checksum,
}

impl WireError {
    /// Shorthand for [`WireError::Invalid`].
    pub const fn invalid(field: &'static str, reason: &'static str) -> Self {
        WireError::Invalid { field, reason }
    }
}

/// A checked reader over one message.
///
/// Every getter checks that enough bytes remain and returns
/// [`WireError::Truncated`] otherwise; nothing here panics or allocates.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    len: usize,
}

macro_rules! getter {
    ($(#[$doc:meta])* $name:ident, $ty:ty, $try_get:ident) => {
        $(#[$doc])*
        ///
        /// # Errors
        /// [`WireError::Truncated`] if too few bytes remain.
        pub fn $name(&mut self) -> Result<$ty, WireError> {
            let needed = size_of::<$ty>();
            let remaining = self.buf.remaining();
            self.buf
                .$try_get()
                .map_err(|_| WireError::Truncated { needed, remaining })
        }
    };
}

impl<'a> Reader<'a> {
    /// A reader at the start of `message`.
    pub fn new(message: &'a [u8]) -> Self {
        Reader {
            buf: message,
            len: message.len(),
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.len - self.buf.len()
    }

    /// Reads and checks the envelope: the protocol must be `protocol` and
    /// the version `version`. Returns the message type, which the caller
    /// matches (answering [`WireError::UnknownType`] for the rest, see
    /// [`Reader::unknown_type`]).
    ///
    /// # Errors
    /// Truncated, another protocol, or another version.
    pub fn envelope(&mut self, protocol: Protocol, version: u8) -> Result<u8, WireError> {
        let found = self.u8()?;
        if found != protocol.id() {
            return Err(WireError::WrongProtocol {
                expected: protocol,
                found,
            });
        }
        let v = self.u8()?;
        if v != version {
            return Err(WireError::UnsupportedVersion {
                protocol,
                version: v,
            });
        }
        self.u8()
    }

    /// The error for a message type `kind` that `protocol` does not define.
    pub const fn unknown_type(protocol: Protocol, kind: u8) -> WireError {
        WireError::UnknownType { protocol, kind }
    }

    getter!(
        /// Reads one byte.
        u8, u8, try_get_u8
    );
    getter!(
        /// Reads a big-endian `u16`.
        u16, u16, try_get_u16
    );
    getter!(
        /// Reads a big-endian `u32`.
        u32, u32, try_get_u32
    );
    getter!(
        /// Reads a big-endian `u64`.
        u64, u64, try_get_u64
    );
    getter!(
        /// Reads a big-endian `u128`.
        u128, u128, try_get_u128
    );

    /// Reads a [`BlockId`] (a big-endian `u64`).
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn block(&mut self) -> Result<BlockId, WireError> {
        self.u64().map(BlockId::new)
    }

    /// Reads a boolean byte: `0` or `1`, anything else is [`WireError::Invalid`].
    ///
    /// # Errors
    /// Truncated, or a byte other than 0 and 1.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::invalid(field, "a boolean must be 0 or 1")),
        }
    }

    /// Fails unless at least `needed` bytes remain (without consuming them).
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn ensure(&self, needed: usize) -> Result<(), WireError> {
        if self.buf.len() < needed {
            Err(WireError::Truncated {
                needed,
                remaining: self.buf.len(),
            })
        } else {
            Ok(())
        }
    }

    /// Reads the next `n` bytes as a slice of the message (no copy).
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        self.ensure(n)?;
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Reads the next `N` bytes as an array.
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// Reads `len` bits packed LSB first in `⌈len/8⌉` bytes, refusing
    /// non-zero padding bits so every bit string has one encoding; returns
    /// the packed bytes (no copy).
    ///
    /// # Errors
    /// Truncated, or [`WireError::Invalid`] naming `field` for set padding bits.
    pub fn packed_bits(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], WireError> {
        let bytes = self.bytes(len.div_ceil(8))?;
        if !len.is_multiple_of(8) && bytes[bytes.len() - 1] >> (len % 8) != 0 {
            return Err(WireError::invalid(field, "padding bits must be zero"));
        }
        Ok(bytes)
    }

    /// [`packed_bits`](Self::packed_bits) as a [`BitVec`].
    ///
    /// # Errors
    /// As [`packed_bits`](Self::packed_bits).
    pub fn bits(&mut self, field: &'static str, len: usize) -> Result<BitVec, WireError> {
        let bytes = self.packed_bits(field, len)?;
        BitVec::from_bytes_lsb(bytes, len).map_err(|_| WireError::invalid(field, "length"))
    }

    /// Reads a `u8` count of elements of `bytes_each` bytes, checked
    /// against `max` and against the bytes that remain. See [`count_u32`](Self::count_u32).
    ///
    /// # Errors
    /// Truncated or [`WireError::TooMany`].
    pub fn count_u8(
        &mut self,
        field: &'static str,
        max: usize,
        bytes_each: usize,
    ) -> Result<usize, WireError> {
        let count = u64::from(self.u8()?);
        self.check_count(field, count, max, bytes_each)
    }

    /// Reads a `u16` count; see [`count_u32`](Self::count_u32).
    ///
    /// # Errors
    /// Truncated or [`WireError::TooMany`].
    pub fn count_u16(
        &mut self,
        field: &'static str,
        max: usize,
        bytes_each: usize,
    ) -> Result<usize, WireError> {
        let count = u64::from(self.u16()?);
        self.check_count(field, count, max, bytes_each)
    }

    /// Reads a big-endian `u32` count of elements that take `bytes_each`
    /// bytes each on the wire, and checks it before the caller allocates
    /// anything: it must be at most `max`, and `count * bytes_each` must not
    /// exceed the bytes that remain. Elements smaller than a byte (packed
    /// bits) pass `bytes_each = 0` and call [`ensure`](Self::ensure) with
    /// their packed length.
    ///
    /// ```
    /// use qkd_core::wire::{Reader, WireError};
    ///
    /// // A count of 1000 eight-byte elements with only 16 bytes behind it.
    /// let mut msg = 1000u32.to_be_bytes().to_vec();
    /// msg.extend_from_slice(&[0; 16]);
    /// let err = Reader::new(&msg).count_u32("questions", 1 << 20, 8).unwrap_err();
    /// assert_eq!(err, WireError::TooMany { field: "questions", count: 1000, max: 2 });
    /// ```
    ///
    /// # Errors
    /// Truncated, or [`WireError::TooMany`] (with `max` the largest count
    /// that would have been accepted).
    pub fn count_u32(
        &mut self,
        field: &'static str,
        max: usize,
        bytes_each: usize,
    ) -> Result<usize, WireError> {
        let count = u64::from(self.u32()?);
        self.check_count(field, count, max, bytes_each)
    }

    fn check_count(
        &self,
        field: &'static str,
        count: u64,
        max: usize,
        bytes_each: usize,
    ) -> Result<usize, WireError> {
        let fit = self.buf.len().checked_div(bytes_each).unwrap_or(usize::MAX);
        let limit = max.min(fit) as u64;
        if count > limit {
            return Err(WireError::TooMany {
                field,
                count,
                max: limit,
            });
        }
        // count <= limit <= usize::MAX
        Ok(count as usize)
    }

    /// Everything not read yet, consuming it.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Ends decoding: fails if any byte is left.
    ///
    /// # Errors
    /// [`WireError::TrailingBytes`].
    pub fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes {
                count: self.buf.len(),
            })
        }
    }
}

/// Appends `bits` packed LSB first, the padding bits of the last byte zero
/// (what [`Reader::bits`] reads), straight into `out` (no temporary copy
/// of the bits is made).
pub fn put_bits(out: &mut Vec<u8>, bits: &BitVec) {
    bits.as_bitslice().append_bytes_lsb(out);
}

/// Appends a CRC-32 (IEEE) of everything in `message` so far, big-endian.
///
/// The CRC catches damage on a raw link (a protocol run without the
/// authenticated channel, as in tests over a lossy simulated network); it
/// is not authentication. Decode with [`strip_crc32`].
pub fn append_crc32(message: &mut Vec<u8>) {
    let crc = crc32fast::hash(message);
    message.put_u32(crc);
}

/// Checks and removes the CRC-32 that [`append_crc32`] appended, returning
/// the bytes before it.
///
/// # Errors
/// [`WireError::Truncated`] for fewer than four bytes,
/// [`WireError::Checksum`] for a mismatch.
pub fn strip_crc32(message: &[u8]) -> Result<&[u8], WireError> {
    let Some(body_len) = message.len().checked_sub(4) else {
        return Err(WireError::Truncated {
            needed: 4,
            remaining: message.len(),
        });
    };
    let (body, crc) = message.split_at(body_len);
    if crc32fast::hash(body).to_be_bytes() == crc {
        Ok(body)
    } else {
        Err(WireError::Checksum)
    }
}

/// Largest datagram a [stream frame](stream_frame) may carry (64 MiB).
pub const MAX_STREAM_FRAME: u32 = 64 << 20;

/// What the start of a byte stream holds, read as stream frames (see
/// [`stream_frame`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFrame {
    /// A whole frame: the datagram is `bytes[range]` and the frame ends at
    /// `range.end`.
    Whole(core::ops::Range<usize>),
    /// Not a whole frame yet: more bytes are needed.
    Partial,
    /// A length of 0 or above [`MAX_STREAM_FRAME`]: the stream is broken
    /// (nothing after it can be trusted to start a frame).
    BadLength(u32),
}

/// Reads the first frame of a stream of datagrams sent over TCP (or any
/// byte stream): `length u32 (big-endian, 1 ..= MAX_STREAM_FRAME) |
/// datagram`. Never allocates: a host grows its buffer with the bytes that
/// arrive, not with the announced length.
///
/// ```
/// use qkd_core::wire::{put_stream_frame, stream_frame, StreamFrame};
/// let mut stream = Vec::new();
/// put_stream_frame(&mut stream, b"parities").unwrap();
/// let StreamFrame::Whole(range) = stream_frame(&stream) else { panic!() };
/// assert_eq!(&stream[range.clone()], b"parities");
/// assert_eq!(range.end, stream.len());
/// assert_eq!(stream_frame(&stream[..5]), StreamFrame::Partial);
/// ```
#[must_use]
pub fn stream_frame(bytes: &[u8]) -> StreamFrame {
    let Some(&[a, b, c, d]) = bytes.first_chunk::<4>() else {
        return StreamFrame::Partial;
    };
    let len = u32::from_be_bytes([a, b, c, d]);
    if len == 0 || len > MAX_STREAM_FRAME {
        return StreamFrame::BadLength(len);
    }
    let end = 4 + len as usize;
    if bytes.len() < end {
        StreamFrame::Partial
    } else {
        StreamFrame::Whole(4..end)
    }
}

/// Appends `datagram` as one stream frame (what [`stream_frame`] reads).
///
/// # Errors
/// [`WireError::Invalid`] for an empty datagram or one above
/// [`MAX_STREAM_FRAME`] bytes; nothing is appended.
pub fn put_stream_frame(out: &mut Vec<u8>, datagram: &[u8]) -> Result<(), WireError> {
    let len = u32::try_from(datagram.len())
        .ok()
        .filter(|&l| l > 0 && l <= MAX_STREAM_FRAME)
        .ok_or(WireError::invalid(
            "length",
            "a stream frame carries 1 byte to 64 MiB",
        ))?;
    out.put_u32(len);
    out.extend_from_slice(datagram);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Datagrams framed into one stream come back whole and in order
        /// however the stream is cut into reads; a bad length is reported
        /// at its frame.
        #[test]
        fn stream_frames_survive_any_cutting(
            datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..12),
            cuts in proptest::collection::vec(1usize..97, 1..40),
            bad in any::<bool>(),
        ) {
            let mut stream = Vec::new();
            for d in &datagrams {
                put_stream_frame(&mut stream, d).unwrap();
            }
            if bad {
                stream.extend_from_slice(&0u32.to_be_bytes());
            }
            // Feed the stream in pieces, as reads would deliver it.
            let (mut buffer, mut got, mut at, mut broken) = (Vec::new(), Vec::new(), 0, None);
            let mut piece = cuts.iter().cycle();
            while at < stream.len() && broken.is_none() {
                let n = (*piece.next().unwrap()).min(stream.len() - at);
                buffer.extend_from_slice(&stream[at..at + n]);
                at += n;
                loop {
                    match stream_frame(&buffer) {
                        StreamFrame::Whole(r) => {
                            got.push(buffer[r.clone()].to_vec());
                            buffer.drain(..r.end);
                        }
                        StreamFrame::Partial => break,
                        StreamFrame::BadLength(l) => {
                            broken = Some(l);
                            break;
                        }
                    }
                }
            }
            prop_assert_eq!(got, datagrams);
            prop_assert_eq!(broken, bad.then_some(0));
        }
    }

    #[test]
    fn stream_frame_lengths_are_checked() {
        let mut out = Vec::new();
        assert!(put_stream_frame(&mut out, &[]).is_err());
        assert!(out.is_empty());
        let over = (MAX_STREAM_FRAME + 1).to_be_bytes();
        assert_eq!(
            stream_frame(&over),
            StreamFrame::BadLength(MAX_STREAM_FRAME + 1)
        );
        let max = MAX_STREAM_FRAME.to_be_bytes();
        assert_eq!(stream_frame(&max), StreamFrame::Partial);
        assert_eq!(stream_frame(&[0, 0, 0]), StreamFrame::Partial);
        assert_eq!(stream_frame(&[0, 0, 0, 1, 9, 8]), StreamFrame::Whole(4..5));
    }

    #[test]
    fn protocol_ids_are_distinct_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for p in Protocol::ALL {
            assert!(seen.insert(p.id()), "{p} reuses identifier {:#04x}", p.id());
            assert_eq!(Protocol::from_id(p.id()), Some(p));
            // None of them can be taken for a pre-envelope message (first byte 0x01).
            assert!(p.id() >= 0x10);
        }
        assert_eq!(Protocol::from_id(0x01), None);
        assert_eq!(Protocol::from_id(0xff), None);
    }

    #[test]
    fn envelope_checks_protocol_version_and_length() {
        let msg = Envelope::new(Protocol::Sync, 2, 9).start(0);
        assert_eq!(msg, [0x20, 2, 9]);
        assert_eq!(
            Envelope::peek(&msg).unwrap(),
            Envelope::new(Protocol::Sync, 2, 9)
        );
        assert_eq!(Reader::new(&msg).envelope(Protocol::Sync, 2), Ok(9));
        assert_eq!(
            Reader::new(&msg).envelope(Protocol::Sync, 1),
            Err(WireError::UnsupportedVersion {
                protocol: Protocol::Sync,
                version: 2
            })
        );
        assert_eq!(
            Reader::new(&msg[..2]).envelope(Protocol::Sync, 2),
            Err(WireError::Truncated {
                needed: 1,
                remaining: 0
            })
        );
        assert_eq!(
            Envelope::peek(&[0x02, 1, 1]),
            Err(WireError::UnknownProtocol { id: 2 })
        );
    }

    #[test]
    fn getters_are_big_endian_and_checked() {
        let msg = [1u8, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0];
        let mut r = Reader::new(&msg);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(2));
        assert_eq!(r.u32(), Ok(3));
        assert_eq!(r.block(), Ok(BlockId::new(4)));
        assert_eq!(r.bool("flag"), Ok(true));
        assert_eq!(r.position(), 16);
        assert_eq!(
            r.clone().finish(),
            Err(WireError::TrailingBytes { count: 1 })
        );
        assert_eq!(r.bool("flag"), Ok(false));
        assert_eq!(
            r.u32(),
            Err(WireError::Truncated {
                needed: 4,
                remaining: 0
            })
        );
        r.finish().unwrap();
        assert_eq!(
            Reader::new(&[7]).bool("flag"),
            Err(WireError::invalid("flag", "a boolean must be 0 or 1"))
        );
    }

    #[test]
    fn counts_are_checked_against_limit_and_remaining_bytes() {
        let mut msg = 3u16.to_be_bytes().to_vec();
        msg.extend_from_slice(&[0; 6]);
        assert_eq!(Reader::new(&msg).count_u16("x", 10, 2), Ok(3));
        assert_eq!(
            Reader::new(&msg).count_u16("x", 2, 2),
            Err(WireError::TooMany {
                field: "x",
                count: 3,
                max: 2
            })
        );
        assert_eq!(
            Reader::new(&msg).count_u16("x", 10, 4),
            Err(WireError::TooMany {
                field: "x",
                count: 3,
                max: 1
            })
        );
        // Zero-size elements are bounded by the limit only.
        assert_eq!(Reader::new(&msg).count_u16("x", 10, 0), Ok(3));
        assert_eq!(
            Reader::new(&[5])
                .count_u8("x", 4, 0)
                .unwrap_err()
                .to_string(),
            "`x`: count 5 above the limit 4"
        );
    }

    #[test]
    fn crc_trailer_round_trips_and_catches_damage() {
        let mut msg = Envelope::new(Protocol::Sift, 1, 1).start(4);
        msg.extend_from_slice(b"abc");
        append_crc32(&mut msg);
        assert_eq!(msg.len(), 10);
        assert_eq!(strip_crc32(&msg), Ok(&msg[..6]));
        for i in 0..msg.len() * 8 {
            let mut bad = msg.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert_eq!(strip_crc32(&bad), Err(WireError::Checksum));
        }
        assert!(matches!(
            strip_crc32(&msg[..3]),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn bits_round_trip_and_padding_is_refused() {
        let bits: BitVec = [true, false, true].into_iter().collect();
        let mut out = Vec::new();
        put_bits(&mut out, &bits);
        assert_eq!(out, [0b101]);
        assert_eq!(Reader::new(&out).bits("b", 3), Ok(bits));
        assert_eq!(
            Reader::new(&[0b1101]).bits("b", 3),
            Err(WireError::invalid("b", "padding bits must be zero"))
        );
        assert_eq!(Reader::new(&[0xff]).packed_bits("b", 8), Ok(&[0xffu8][..]));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Envelope::peek(&bytes);
            let mut r = Reader::new(&bytes);
            let _ = r.envelope(Protocol::Cascade, 1);
            let _ = r.count_u32("n", usize::MAX, 3);
            let _ = r.u128();
            let _ = r.bytes(5);
            let _ = r.array::<7>();
            let _ = r.finish();
        }

        #[test]
        fn bytes_and_rest_partition_the_message(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            n in 0usize..70,
        ) {
            let mut r = Reader::new(&bytes);
            match r.bytes(n) {
                Ok(head) => {
                    prop_assert_eq!(head, &bytes[..n]);
                    prop_assert_eq!(r.rest(), &bytes[n..]);
                }
                Err(e) => {
                    prop_assert!(n > bytes.len());
                    prop_assert_eq!(e, WireError::Truncated { needed: n, remaining: bytes.len() });
                    prop_assert_eq!(r.remaining(), bytes.len());
                }
            }
        }
    }
}
