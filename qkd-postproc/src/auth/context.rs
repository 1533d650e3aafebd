//! Crypto contexts and the in-band context switch.
//!
//! A **crypto context** of one direction is a context ID, a [`TagMode`] and a
//! recycled [`HashKey`]. Each direction (Alice → Bob, Bob → Alice) has its
//! own, and only its sender changes it: a switch never races with one from
//! the other side.
//!
//! # Switching
//!
//! [`AuthenticatedChannel::switch_context`](super::AuthenticatedChannel::switch_context)
//! seals a **context-switch message** (type `0x02`) under the *old* context,
//! at pad position `p` with `u` units. Its 13-byte body names the new context:
//!
//! ```text
//! offset size field
//!  0      4   new context ID (old + 1), big-endian
//!  4      1   new tag mode code (1: 128-bit, 2: 64-bit)
//!  5      8   position q of the new hash key in the sender's stream (= p + u)
//! ```
//!
//! The new hash key is the two units at `q`, taken by both ends from the
//! sender's pad stream, so it is fresh key never seen on the wire. Every
//! message the sender seals after it uses the new context, at positions from
//! `q + 2` on. The receiver installs the new context only once the switch
//! message verified under the old one, keeps the old context for late
//! messages at positions below `p` (reordering within the window), and
//! rejects messages of a context it does not know yet with
//! [`OpenError::UnknownContext`](super::OpenError::UnknownContext), without
//! changing any state.
//!
//! A lost switch message is recovered by sending the *same bytes* again:
//! [`AuthenticatedChannel::unconfirmed_switch`](super::AuthenticatedChannel::unconfirmed_switch)
//! holds them until the peer's own messages acknowledge the new context (the
//! `ack context` field of every header); a copy that arrives after the
//! original is rejected as a replay, so re-sending is idempotent and costs no key.
//!
//! Reasons to switch: a fresh hash key after many verifications (Portmann's
//! bound grows by ε per verification), after rejected forgeries, or a
//! change of tag length.

use bytes::BufMut;
use qkd_core::wire::{Reader, WireError};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::tag::{HASH_KEY_BYTES, HashKey, TagMode};

/// Length of the context-switch body in bytes.
pub const SWITCH_BODY_LEN: usize = 13;

/// One direction's crypto context: ID, tag mode and recycled hash key.
pub struct CryptoContext {
    id: u32,
    mode: TagMode,
    key: HashKey,
    /// The key's bytes, kept for [saving](ContextState) (zeroized on drop).
    key_bytes: Zeroizing<[u8; HASH_KEY_BYTES]>,
    /// Positions `[from, until)` of the sender's stream sealed under this context.
    from: u64,
    until: u64,
}

impl CryptoContext {
    pub(crate) fn new(id: u32, mode: TagMode, key_bytes: &[u8; HASH_KEY_BYTES], from: u64) -> Self {
        CryptoContext {
            id,
            mode,
            key: HashKey::new(key_bytes),
            key_bytes: Zeroizing::new(*key_bytes),
            from,
            until: u64::MAX,
        }
    }

    pub(crate) fn save(&self) -> ContextState {
        ContextState {
            id: self.id,
            mode: self.mode,
            key: Zeroizing::new(self.key_bytes.to_vec()),
            from: self.from,
            until: self.until,
        }
    }

    pub(crate) fn restore(state: &ContextState) -> Option<Self> {
        let bytes: &[u8; HASH_KEY_BYTES] = state.key.as_slice().try_into().ok()?;
        if state.from > state.until {
            return None;
        }
        let mut c = CryptoContext::new(state.id, state.mode, bytes, state.from);
        c.until = state.until;
        Some(c)
    }

    /// The context ID (1 for the first context).
    #[must_use]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The tag mode.
    #[must_use]
    pub fn mode(&self) -> TagMode {
        self.mode
    }

    pub(crate) fn key(&self) -> &HashKey {
        &self.key
    }

    /// Whether pad position `pos` may be used under this context.
    pub(crate) fn covers(&self, pos: u64) -> bool {
        pos >= self.from && pos < self.until
    }

    pub(crate) fn close_at(&mut self, until: u64) {
        self.until = until;
    }
}

/// A crypto context in a saved channel state: the hash key is key
/// material (zeroized on drop, hidden from `Debug`).
#[derive(PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContextState {
    id: u32,
    mode: TagMode,
    key: Zeroizing<Vec<u8>>,
    from: u64,
    until: u64,
}

impl core::fmt::Debug for ContextState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ContextState")
            .field("id", &self.id)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl core::fmt::Debug for CryptoContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CryptoContext")
            .field("id", &self.id)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// The body of a context-switch message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextSwitch {
    /// ID of the new context.
    pub new_context: u32,
    /// Tag mode of the new context.
    pub mode: TagMode,
    /// Position of the new hash key's two units in the sender's stream.
    pub key_position: u64,
}

impl ContextSwitch {
    /// The 13-byte body.
    #[must_use]
    pub fn encode(&self) -> [u8; SWITCH_BODY_LEN] {
        let mut out = [0u8; SWITCH_BODY_LEN];
        let mut w = &mut out[..];
        w.put_u32(self.new_context);
        w.put_u8(self.mode.code());
        w.put_u64(self.key_position);
        out
    }

    /// Parses a body.
    ///
    /// # Errors
    /// A [`WireError`] for a wrong length or an unknown mode.
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let new_context = r.u32()?;
        let mode = TagMode::from_code(r.u8()?).ok_or(WireError::invalid(
            "tag_mode",
            "must be 1 (128-bit) or 2 (64-bit)",
        ))?;
        let key_position = r.u64()?;
        r.finish()?;
        Ok(ContextSwitch {
            new_context,
            mode,
            key_position,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_body_round_trips_and_rejects_bad_input() {
        let s = ContextSwitch {
            new_context: 2,
            mode: TagMode::Bits64,
            key_position: 0x0102_0304_0506_0708,
        };
        let body = s.encode();
        assert_eq!(
            body,
            [0, 0, 0, 2, 2, 1, 2, 3, 4, 5, 6, 7, 8],
            "documented layout"
        );
        assert_eq!(ContextSwitch::decode(&body), Ok(s));
        assert!(ContextSwitch::decode(&body[..12]).is_err());
        let mut long = body.to_vec();
        long.push(0);
        assert!(ContextSwitch::decode(&long).is_err());
        let mut bad = body;
        bad[4] = 9;
        assert!(ContextSwitch::decode(&bad).is_err());
    }

    #[test]
    fn context_covers_its_positions_and_hides_its_key() {
        let mut c = CryptoContext::new(1, TagMode::Bits128, &[1; 16], 4);
        assert!(!c.covers(3));
        assert!(c.covers(4) && c.covers(u64::MAX - 1));
        c.close_at(10);
        assert!(c.covers(9) && !c.covers(10));
        assert_eq!(
            format!("{c:?}"),
            "CryptoContext { id: 1, mode: Bits128, .. }"
        );
    }
}
