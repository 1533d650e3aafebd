//! Handshake messages and their wire form (see the crate docs for the
//! byte layout).

use qkd_core::KeyId;

use crate::capability::{MAX_LIST, Ownership, PROTOCOL_VERSION, StoreParams};
use qkd_core::wire::{Envelope, Protocol, Reader, WireError};

/// Message type of a [`ClientHello`].
pub const TYPE_CLIENT_HELLO: u8 = 1;
/// Message type of a [`ServerHello`].
pub const TYPE_SERVER_HELLO: u8 = 2;
/// Message type of a [`Finished`].
pub const TYPE_FINISHED: u8 = 3;
/// Message type of an [`Alert`].
pub const TYPE_ALERT: u8 = 4;

/// Length of a nonce (a challenge) in bytes.
pub const NONCE_BYTES: usize = 32;

/// A side's declared capabilities as sent: suite codes are kept as numbers,
/// known or not, because the choice is checked against the lists as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// Handshake protocol versions, most preferred first.
    pub versions: Vec<u8>,
    /// Cipher suite registry codes, most preferred first.
    pub suites: Vec<u16>,
    /// Key store parameters.
    pub store: StoreParams,
    /// Sync protocol version.
    pub sync_version: u8,
    /// Multicast support.
    pub multicast: bool,
}

impl Offer {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.versions.len() as u8);
        out.extend_from_slice(&self.versions);
        out.push(self.suites.len() as u8);
        for s in &self.suites {
            out.extend_from_slice(&s.to_be_bytes());
        }
        out.extend_from_slice(&self.store.chunk_bytes.to_be_bytes());
        out.extend_from_slice(&self.store.min_key_bits.to_be_bytes());
        out.extend_from_slice(&self.store.max_key_bits.to_be_bytes());
        out.push(self.store.ownership.to_byte());
        out.push(self.sync_version);
        out.push(u8::from(self.multicast));
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let n = r.count_u8("versions", MAX_LIST, 1)?;
        let versions = r.bytes(n)?.to_vec();
        let n = r.count_u8("suites", MAX_LIST, 2)?;
        let mut suites = Vec::with_capacity(n);
        for _ in 0..n {
            suites.push(r.u16()?);
        }
        let chunk_bytes = r.u32()?;
        let min_key_bits = r.u32()?;
        let max_key_bits = r.u32()?;
        let ownership = Ownership::from_byte(r.u8()?)
            .ok_or(WireError::invalid("ownership", "must be 0 or 1"))?;
        let sync_version = r.u8()?;
        let multicast = r.bool("multicast")?;
        Ok(Offer {
            versions,
            suites,
            store: StoreParams {
                chunk_bytes,
                min_key_bits,
                max_key_bits,
                ownership,
            },
            sync_version,
            multicast,
        })
    }
}

/// The initiator's first message: its challenge, the PSK it uses, its offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// The initiator's nonce.
    pub nonce: [u8; NONCE_BYTES],
    /// The ID of the PSK.
    pub psk_id: KeyId,
    /// The initiator's capabilities.
    pub offer: Offer,
}

/// The responder's answer: its challenge, its offer and choice, and its two
/// proofs (PSK possession, then the transcript so far).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHello {
    /// The responder's nonce.
    pub nonce: [u8; NONCE_BYTES],
    /// The chosen protocol version.
    pub version: u8,
    /// The chosen cipher suite code.
    pub suite: u16,
    /// The responder's capabilities.
    pub offer: Offer,
    /// Wegman-Carter proof over the PSK ID and both nonces.
    pub psk_proof: [u8; 16],
    /// Wegman-Carter MAC over the client hello and this message up to here.
    pub transcript_mac: [u8; 16],
}

/// The initiator's proofs, ending the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// Wegman-Carter proof over the PSK ID and both nonces.
    pub psk_proof: [u8; 16],
    /// Wegman-Carter MAC over both hellos and this message's header.
    pub transcript_mac: [u8; 16],
}

/// Why a side gave up, sent in the clear to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AlertCode {
    /// The peer's PSK proof did not verify (different PSK).
    BadPskProof,
    /// The peer's transcript MAC did not verify (transcript altered).
    BadTranscript,
    /// The PSK ID is not known here.
    UnknownPsk,
    /// The PSK was already used.
    PskAlreadyUsed,
    /// No cipher suite in common.
    NoCommonSuite,
    /// No protocol version in common.
    NoCommonVersion,
    /// Key store parameters or sync protocol versions do not fit.
    IncompatibleStore,
    /// The peer chose what the rules do not allow (a downgrade).
    IllegalChoice,
    /// A code this build does not know.
    Unknown(u8),
}

impl AlertCode {
    /// The wire byte.
    #[must_use]
    pub const fn to_byte(self) -> u8 {
        match self {
            AlertCode::BadPskProof => 1,
            AlertCode::BadTranscript => 2,
            AlertCode::UnknownPsk => 3,
            AlertCode::PskAlreadyUsed => 4,
            AlertCode::NoCommonSuite => 5,
            AlertCode::NoCommonVersion => 6,
            AlertCode::IncompatibleStore => 7,
            AlertCode::IllegalChoice => 8,
            AlertCode::Unknown(b) => b,
        }
    }

    /// The code of wire byte `b`.
    #[must_use]
    pub const fn from_byte(b: u8) -> Self {
        match b {
            1 => AlertCode::BadPskProof,
            2 => AlertCode::BadTranscript,
            3 => AlertCode::UnknownPsk,
            4 => AlertCode::PskAlreadyUsed,
            5 => AlertCode::NoCommonSuite,
            6 => AlertCode::NoCommonVersion,
            7 => AlertCode::IncompatibleStore,
            8 => AlertCode::IllegalChoice,
            b => AlertCode::Unknown(b),
        }
    }
}

/// An alert (unauthenticated: it can only end a handshake, which anyone on
/// the path can do anyway by dropping messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alert {
    /// Why.
    pub code: AlertCode,
}

/// One handshake message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// See [`ClientHello`].
    ClientHello(ClientHello),
    /// See [`ServerHello`].
    ServerHello(ServerHello),
    /// See [`Finished`].
    Finished(Finished),
    /// See [`Alert`].
    Alert(Alert),
}

/// The envelope of handshake message type `kind`.
pub(crate) const fn header(kind: u8) -> Envelope {
    Envelope::new(Protocol::Handshake, PROTOCOL_VERSION, kind)
}

/// Offset of the responder's proofs in an encoded [`ServerHello`], counted
/// from the end (the two 16-byte tags).
pub(crate) const SERVER_HELLO_PROOFS: usize = 32;

impl Message {
    /// The wire form.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        match self {
            Message::ClientHello(m) => {
                header(TYPE_CLIENT_HELLO).write(&mut out);
                out.extend_from_slice(&m.nonce);
                out.extend_from_slice(m.psk_id.as_bytes());
                m.offer.encode(&mut out);
            }
            Message::ServerHello(m) => {
                header(TYPE_SERVER_HELLO).write(&mut out);
                out.extend_from_slice(&m.nonce);
                out.push(m.version);
                out.extend_from_slice(&m.suite.to_be_bytes());
                m.offer.encode(&mut out);
                out.extend_from_slice(&m.psk_proof);
                out.extend_from_slice(&m.transcript_mac);
            }
            Message::Finished(m) => {
                header(TYPE_FINISHED).write(&mut out);
                out.extend_from_slice(&m.psk_proof);
                out.extend_from_slice(&m.transcript_mac);
            }
            Message::Alert(m) => {
                header(TYPE_ALERT).write(&mut out);
                out.push(m.code.to_byte());
            }
        }
        out
    }

    /// Parses one message; never panics.
    ///
    /// # Errors
    /// A [`WireError`] for anything that is not exactly one well-formed
    /// message of protocol version 1.
    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader::new(bytes);
        let ty = r.envelope(Protocol::Handshake, PROTOCOL_VERSION)?;
        let m = match ty {
            TYPE_CLIENT_HELLO => Message::ClientHello(ClientHello {
                nonce: r.array()?,
                psk_id: KeyId::from_bytes(r.array()?),
                offer: Offer::decode(&mut r)?,
            }),
            TYPE_SERVER_HELLO => Message::ServerHello(ServerHello {
                nonce: r.array()?,
                version: r.u8()?,
                suite: r.u16()?,
                offer: Offer::decode(&mut r)?,
                psk_proof: r.array()?,
                transcript_mac: r.array()?,
            }),
            TYPE_FINISHED => Message::Finished(Finished {
                psk_proof: r.array()?,
                transcript_mac: r.array()?,
            }),
            TYPE_ALERT => Message::Alert(Alert {
                code: AlertCode::from_byte(r.u8()?),
            }),
            t => return Err(Reader::unknown_type(Protocol::Handshake, t)),
        };
        r.finish()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn offer() -> Offer {
        Offer {
            versions: vec![1],
            suites: vec![1, 2, 0xbeef],
            store: StoreParams {
                chunk_bytes: 1024,
                min_key_bits: 64,
                max_key_bits: 8192,
                ownership: Ownership::Second,
            },
            sync_version: 1,
            multicast: true,
        }
    }

    #[test]
    fn every_message_round_trips() {
        let msgs = [
            Message::ClientHello(ClientHello {
                nonce: [7; 32],
                psk_id: KeyId::derive(b"x"),
                offer: offer(),
            }),
            Message::ServerHello(ServerHello {
                nonce: [8; 32],
                version: 1,
                suite: 2,
                offer: offer(),
                psk_proof: [1; 16],
                transcript_mac: [2; 16],
            }),
            Message::Finished(Finished {
                psk_proof: [3; 16],
                transcript_mac: [4; 16],
            }),
            Message::Alert(Alert {
                code: AlertCode::NoCommonSuite,
            }),
        ];
        for m in msgs {
            let bytes = m.encode();
            assert_eq!(Message::decode(&bytes).unwrap(), m);
            for cut in 0..bytes.len() {
                assert!(Message::decode(&bytes[..cut]).is_err(), "{cut}");
            }
            let mut long = bytes.clone();
            long.push(0);
            assert!(Message::decode(&long).is_err());
        }
    }

    #[test]
    fn bad_flags_are_rejected() {
        let m = Message::ClientHello(ClientHello {
            nonce: [7; 32],
            psk_id: KeyId::derive(b"x"),
            offer: offer(),
        });
        let mut b = m.encode();
        let last = b.len() - 1;
        b[last] = 2;
        assert!(Message::decode(&b).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn decode_of_encode_is_identity(
            nonce in any::<[u8; 32]>(),
            suites in proptest::collection::vec(any::<u16>(), 1..8),
            chunk in any::<u32>(),
            multicast in any::<bool>(),
        ) {
            let mut o = offer();
            o.suites = suites;
            o.store.chunk_bytes = chunk;
            o.multicast = multicast;
            let m = Message::ClientHello(ClientHello { nonce, psk_id: KeyId::derive(&nonce), offer: o });
            prop_assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }
}
