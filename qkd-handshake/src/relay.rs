//! Key forwarding and hop-by-hop relay through trusted nodes.
//!
//! A KMS forwards key material to a peer inside the secured channel as a
//! [`RelayMessage::Forward`] (record content type `KeyForward`). Over
//! several hops the key travels one-time-pad style, as trusted-node QKD
//! networks carry it: on every hop it is XORed with a fresh link key of that
//! hop's QKD link, so each trusted node sees it only in its own memory.
//!
//! ```text
//!   A ──(K ⊕ L_AB, id of L_AB)──▶ B ──(K ⊕ L_BC, id of L_BC)──▶ C
//!   A ◀──────────── Status(Delivered) ◀───────────────────────── C
//! ```
//!
//! - The origin draws `K` and calls [`originate`] with its link's key source.
//! - A trusted node calls [`relay`]: it takes the incoming link key by ID
//!   (consumed whatever happens, since the sender consumed its copy), then
//!   draws an outgoing link key of the same length. If the next hop's link
//!   has no key the relay stops with [`RelayError::NoLinkKey`]: nothing goes
//!   further, and the node answers the origin with
//!   [`RelayMessage::Status`] `NoLinkKey`; there is no partial delivery.
//! - The destination calls [`receive`] and gets `K`.
//!
//! Wire form of the payload (inside an encrypted record):
//!
//! ```text
//! Forward: [Relay, 1, 1] transfer:[16] dest_len:u8 dest link_key_id:[16] len:u16 masked:[len]
//! Status:  [Relay, 1, 2] transfer:[16] code:u8     (0 delivered, 1 no link key, 2 unknown key, 3 refused)
//! ```

use qkd_core::{KeyId, SecretKey};
use zeroize::Zeroizing;

use crate::psk::{PskError, PskSource};
use qkd_core::wire::{Envelope, Protocol, Reader, WireError};

use crate::capability::PROTOCOL_VERSION;

/// Longest key relayed, in bytes.
pub const MAX_RELAY_KEY: usize = 4096;
/// Longest node name.
pub const MAX_NODE_NAME: usize = 64;

/// How a relay ended, as reported back to the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RelayStatus {
    /// The destination holds the key.
    Delivered,
    /// A hop had no link key: nothing was delivered.
    NoLinkKey,
    /// A hop did not know the link key the previous hop named.
    UnknownLinkKey,
    /// A hop refused (malformed, too long, or no route).
    Refused,
}

impl RelayStatus {
    const fn to_byte(self) -> u8 {
        match self {
            RelayStatus::Delivered => 0,
            RelayStatus::NoLinkKey => 1,
            RelayStatus::UnknownLinkKey => 2,
            RelayStatus::Refused => 3,
        }
    }
    const fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(RelayStatus::Delivered),
            1 => Some(RelayStatus::NoLinkKey),
            2 => Some(RelayStatus::UnknownLinkKey),
            3 => Some(RelayStatus::Refused),
            _ => None,
        }
    }
}

/// A relay message, carried in a `KeyForward` record.
#[derive(PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayMessage {
    /// A key on its way, masked with this hop's link key.
    Forward {
        /// The ID of the end-to-end key.
        transfer: KeyId,
        /// The node that is to hold the key.
        destination: String,
        /// The link key it is masked with.
        link_key_id: KeyId,
        /// The key XOR the link key.
        masked: SecretKey,
    },
    /// The outcome, on its way back to the origin.
    Status {
        /// The ID of the end-to-end key.
        transfer: KeyId,
        /// What happened.
        status: RelayStatus,
    },
}

impl core::fmt::Debug for RelayMessage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RelayMessage::Forward {
                transfer,
                destination,
                link_key_id,
                masked,
            } => f
                .debug_struct("Forward")
                .field("transfer", transfer)
                .field("destination", destination)
                .field("link_key_id", link_key_id)
                .field("len", &masked.len())
                .finish_non_exhaustive(),
            RelayMessage::Status { transfer, status } => f
                .debug_struct("Status")
                .field("transfer", transfer)
                .field("status", status)
                .finish(),
        }
    }
}

/// Why a relay step failed. No key is delivered or sent on after any of these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The next hop's link has no key left.
    #[error("no link key towards the next hop: {0}")]
    NoLinkKey(PskError),
    /// The link key named by the previous hop is not available here.
    #[error("link key of the previous hop: {0}")]
    UnknownLinkKey(PskError),
    /// The key and the link key differ in length.
    #[error("link key of {link} bytes for a key of {key} bytes")]
    LengthMismatch {
        /// Key length.
        key: usize,
        /// Link key length.
        link: usize,
    },
    /// Empty, too long, or a node name out of range.
    #[error("key or node name out of range")]
    OutOfRange,
    /// The message was not a forward.
    #[error("not a forward message")]
    NotForward,
}

impl RelayError {
    /// The status reported back to the origin for this failure.
    #[must_use]
    pub fn status(&self) -> RelayStatus {
        match self {
            RelayError::NoLinkKey(_) => RelayStatus::NoLinkKey,
            RelayError::UnknownLinkKey(_) => RelayStatus::UnknownLinkKey,
            _ => RelayStatus::Refused,
        }
    }
}

fn xor(key: &SecretKey, link: &SecretKey) -> Result<SecretKey, RelayError> {
    if key.len() != link.len() {
        return Err(RelayError::LengthMismatch {
            key: key.len(),
            link: link.len(),
        });
    }
    let mut out = Zeroizing::new(key.expose_secret().to_vec());
    for (o, l) in out.iter_mut().zip(link.expose_secret()) {
        *o ^= l;
    }
    Ok(SecretKey::from_slice(&out))
}

fn check(key: &SecretKey, destination: &str) -> Result<(), RelayError> {
    if key.is_empty() || key.len() > MAX_RELAY_KEY || destination.len() > MAX_NODE_NAME {
        return Err(RelayError::OutOfRange);
    }
    Ok(())
}

/// The first hop: masks `key` (named `transfer`) for `destination` with a
/// link key drawn from `link`. The link's keys must be as long as `key`.
///
/// # Errors
/// [`RelayError::NoLinkKey`] when the link has no key (nothing consumed
/// besides), [`RelayError::LengthMismatch`], [`RelayError::OutOfRange`].
pub fn originate(
    transfer: KeyId,
    key: &SecretKey,
    destination: &str,
    link: &mut dyn PskSource,
) -> Result<RelayMessage, RelayError> {
    check(key, destination)?;
    let (link_key_id, link_key) = link.next().map_err(RelayError::NoLinkKey)?;
    Ok(RelayMessage::Forward {
        transfer,
        destination: destination.to_owned(),
        link_key_id,
        masked: xor(key, &link_key)?,
    })
}

/// A trusted node: unmasks with the incoming link's key and masks again with
/// a fresh key of the outgoing link.
///
/// # Errors
/// [`RelayError::UnknownLinkKey`], [`RelayError::NoLinkKey`] (the key goes
/// no further), [`RelayError::LengthMismatch`], [`RelayError::NotForward`].
pub fn relay(
    message: &RelayMessage,
    incoming: &mut dyn PskSource,
    outgoing: &mut dyn PskSource,
) -> Result<RelayMessage, RelayError> {
    let key = receive(message, incoming)?;
    let RelayMessage::Forward {
        transfer,
        destination,
        ..
    } = message
    else {
        return Err(RelayError::NotForward);
    };
    originate(*transfer, &key, destination, outgoing)
}

/// The destination (or a trusted node, inside [`relay`]): takes the link key
/// the message names and recovers the key.
///
/// # Errors
/// [`RelayError::UnknownLinkKey`], [`RelayError::LengthMismatch`],
/// [`RelayError::NotForward`].
pub fn receive(message: &RelayMessage, link: &mut dyn PskSource) -> Result<SecretKey, RelayError> {
    let RelayMessage::Forward {
        destination,
        link_key_id,
        masked,
        ..
    } = message
    else {
        return Err(RelayError::NotForward);
    };
    check(masked, destination)?;
    let link_key = link.take(link_key_id).map_err(RelayError::UnknownLinkKey)?;
    xor(masked, &link_key)
}

impl RelayMessage {
    /// The wire form.
    #[must_use]
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::new());
        match self {
            RelayMessage::Forward {
                transfer,
                destination,
                link_key_id,
                masked,
            } => {
                Envelope::new(Protocol::Relay, PROTOCOL_VERSION, 1).write(&mut *out);
                out.extend_from_slice(transfer.as_bytes());
                out.push(destination.len() as u8);
                out.extend_from_slice(destination.as_bytes());
                out.extend_from_slice(link_key_id.as_bytes());
                out.extend_from_slice(&(masked.len() as u16).to_be_bytes());
                out.extend_from_slice(masked.expose_secret());
            }
            RelayMessage::Status { transfer, status } => {
                Envelope::new(Protocol::Relay, PROTOCOL_VERSION, 2).write(&mut *out);
                out.extend_from_slice(transfer.as_bytes());
                out.push(status.to_byte());
            }
        }
        out
    }

    /// Parses a relay message; never panics.
    ///
    /// # Errors
    /// A [`WireError`] for anything malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let m = match r.envelope(Protocol::Relay, PROTOCOL_VERSION)? {
            1 => {
                let transfer = KeyId::from_bytes(r.array()?);
                let n = r.count_u8("destination", MAX_NODE_NAME, 1)?;
                let destination = core::str::from_utf8(r.bytes(n)?)
                    .map_err(|_| WireError::invalid("destination", "must be UTF-8"))?
                    .to_owned();
                let link_key_id = KeyId::from_bytes(r.array()?);
                let len = usize::from(r.u16()?);
                if len == 0 || len > MAX_RELAY_KEY {
                    return Err(WireError::invalid("key length", "must be 1 to 4096 bytes"));
                }
                RelayMessage::Forward {
                    transfer,
                    destination,
                    link_key_id,
                    masked: SecretKey::from_slice(r.bytes(len)?),
                }
            }
            2 => RelayMessage::Status {
                transfer: KeyId::from_bytes(r.array()?),
                status: RelayStatus::from_byte(r.u8()?)
                    .ok_or(WireError::invalid("status", "unknown relay status"))?,
            },
            t => return Err(Reader::unknown_type(Protocol::Relay, t)),
        };
        r.finish()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::Ownership;
    use crate::psk::PskTable;

    fn link(name: &[u8], n: u8, len: usize) -> (PskTable, PskTable) {
        let keys: Vec<(KeyId, SecretKey)> = (0..n)
            .map(|i| {
                let id = KeyId::for_block(name, 0, u64::from(i));
                (
                    id,
                    SecretKey::from_vec(blake3::hash(id.as_bytes()).as_bytes()[..len].to_vec()),
                )
            })
            .collect();
        (
            PskTable::new(Ownership::First, keys.clone()),
            PskTable::new(Ownership::Second, keys),
        )
    }

    #[test]
    fn three_nodes_end_with_the_same_key() {
        let (mut ab_a, mut ab_b) = link(b"ab", 4, 32);
        let (mut bc_b, mut bc_c) = link(b"bc", 4, 32);
        let k = SecretKey::from_slice(&[0x5a; 32]);
        let id = KeyId::derive(b"end-to-end");
        let m1 = originate(id, &k, "C", &mut ab_a).unwrap();
        let m1 = RelayMessage::decode(&m1.encode()).unwrap();
        let m2 = relay(&m1, &mut ab_b, &mut bc_b).unwrap();
        let RelayMessage::Forward { masked, .. } = &m2 else {
            panic!("a forward")
        };
        assert_ne!(masked, &k, "the key never travels in the clear");
        assert_eq!(receive(&m2, &mut bc_c).unwrap(), k);
        // Every link key is used once.
        assert!(receive(&m2, &mut bc_c).is_err());
    }

    #[test]
    fn a_hop_without_link_key_stops_the_relay() {
        let (mut ab_a, mut ab_b) = link(b"ab", 4, 32);
        let (mut bc_b, _) = link(b"bc", 0, 32);
        let k = SecretKey::from_slice(&[1; 32]);
        let m1 = originate(KeyId::derive(b"t"), &k, "C", &mut ab_a).unwrap();
        let err = relay(&m1, &mut ab_b, &mut bc_b).unwrap_err();
        assert_eq!(err, RelayError::NoLinkKey(PskError::Exhausted));
        assert_eq!(err.status(), RelayStatus::NoLinkKey);
        assert_eq!(ab_b.consumed(), 1, "the incoming link key is spent");
    }

    #[test]
    fn decode_rejects_malformed() {
        let m = RelayMessage::Status {
            transfer: KeyId::derive(b"t"),
            status: RelayStatus::NoLinkKey,
        };
        let b = m.encode();
        assert_eq!(RelayMessage::decode(&b).unwrap(), m);
        for cut in 0..b.len() {
            assert!(RelayMessage::decode(&b[..cut]).is_err());
        }
        let mut bad = b.to_vec();
        bad[19] = 9;
        assert!(RelayMessage::decode(&bad).is_err());
    }
}
