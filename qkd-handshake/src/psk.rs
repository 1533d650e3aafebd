//! Where pre-shared keys and fresh QKD key come from: the [`PskSource`] trait.
//!
//! Every handshake is keyed by one pre-shared key (PSK) of [`PSK_BYTES`]
//! bytes, named on the wire by its [`KeyId`]. A PSK is used for at most one
//! handshake: the source marks it consumed the moment a handshake takes it,
//! before anything is sent with it, and never hands it out again, whether the
//! handshake then succeeds or not.
//!
//! # Provisioning
//!
//! - **First handshake of a new link.** No QKD key exists yet, so an operator
//!   installs the same initial secret with the same identifier on both KMS
//!   ([`InitialSecret`]). It serves exactly one handshake.
//! - **Every later handshake, and every rekey and one-time pad of the secured
//!   channel,** draws fresh QKD key that both stores hold under the same key
//!   ID: the initiating side takes a key it owns ([`PskSource::next`], like
//!   ETSI 014 `enc_keys`), the other side takes the same key by its ID
//!   ([`PskSource::find`] then [`PskSource::consume`], like `dec_keys`).
//!   [`PskTable`] is an in-memory source with the key store's ownership
//!   rule (even-indexed keys belong to [`Ownership::First`], odd ones to
//!   [`Ownership::Second`]), so two sides drawing at the same time never
//!   draw the same key.
//!
//! A source backed by a persistent store must record consumption durably
//! before it returns the key, so that a PSK is not reused across restarts.

use std::collections::{HashMap, HashSet};

use qkd_core::{KeyId, SecretKey};

use crate::capability::Ownership;

/// Length of a handshake PSK in bytes.
///
/// Layout (see the crate docs): `[0, 16)` Wegman-Carter hash key, `[16, 80)`
/// four one-time tag pads, `[80, 112)` the secret of the AES-256-GCM key
/// schedule, which nothing else reads.
pub const PSK_BYTES: usize = 112;

/// Why a source could not give a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PskError {
    /// The source holds no key under this ID.
    #[error("no pre-shared key with ID {0}")]
    Unknown(KeyId),
    /// The key was held once and has been consumed.
    #[error("pre-shared key {0} was already used")]
    AlreadyUsed(KeyId),
    /// The source has no fresh key left to hand out.
    #[error("no fresh key left")]
    Exhausted,
    /// The key exists but is not QKD key (e.g. an expansion of an initial
    /// secret), so it may not serve as a one-time pad.
    #[error("key {0} is not QKD key and may not be used as a one-time pad")]
    NotQkdKey(KeyId),
}

/// A supply of pre-shared keys and fresh QKD key, named by key ID.
///
/// The two methods that give key out ([`next`](Self::next) and
/// [`consume`](Self::consume)) mark it used; [`find`](Self::find) only looks,
/// so that a record that fails authentication changes nothing.
pub trait PskSource {
    /// Takes a key this side owns and marks it consumed.
    ///
    /// # Errors
    /// [`PskError::Exhausted`] when none is left.
    fn next(&mut self) -> Result<(KeyId, SecretKey), PskError>;

    /// A copy of the key named `id` without consuming it.
    ///
    /// # Errors
    /// [`PskError::Unknown`] or [`PskError::AlreadyUsed`].
    fn find(&mut self, id: &KeyId) -> Result<SecretKey, PskError>;

    /// Marks the key named `id` consumed.
    ///
    /// # Errors
    /// [`PskError::Unknown`] or [`PskError::AlreadyUsed`].
    fn consume(&mut self, id: &KeyId) -> Result<(), PskError>;

    /// [`find`](Self::find) and [`consume`](Self::consume) in one step.
    ///
    /// # Errors
    /// As [`find`](Self::find).
    fn take(&mut self, id: &KeyId) -> Result<SecretKey, PskError> {
        let key = self.find(id)?;
        self.consume(id)?;
        Ok(key)
    }

    /// Like [`next`](Self::next), for one-time pads: only uniformly random
    /// QKD key may come out of this. The one-time-pad suite's records draw
    /// their pads (and the tag keys cut from them) here, so its security is
    /// information-theoretic only if this method never returns anything
    /// else. The default calls [`next`](Self::next), right for a source
    /// that holds nothing but QKD key; a source that may also serve keys
    /// computed from a seed (an expansion of an initial secret) must
    /// override it and answer [`PskError::Exhausted`] instead of such a
    /// key. The secured channel then waits for pad supply rather than
    /// sending anything under a weaker key.
    ///
    /// # Errors
    /// [`PskError::Exhausted`] when no QKD key is left.
    fn next_pad(&mut self) -> Result<(KeyId, SecretKey), PskError> {
        self.next()
    }

    /// Like [`find`](Self::find), for a one-time pad the peer cut from the
    /// key `id`: a source that may serve computed keys must answer
    /// [`PskError::NotQkdKey`] for one of them (see
    /// [`next_pad`](Self::next_pad)). The default calls
    /// [`find`](Self::find).
    ///
    /// # Errors
    /// As [`find`](Self::find), and [`PskError::NotQkdKey`].
    fn find_pad(&mut self, id: &KeyId) -> Result<SecretKey, PskError> {
        self.find(id)
    }
}

impl<S: PskSource + ?Sized> PskSource for Box<S> {
    fn next(&mut self) -> Result<(KeyId, SecretKey), PskError> {
        (**self).next()
    }
    fn find(&mut self, id: &KeyId) -> Result<SecretKey, PskError> {
        (**self).find(id)
    }
    fn next_pad(&mut self) -> Result<(KeyId, SecretKey), PskError> {
        (**self).next_pad()
    }
    fn find_pad(&mut self, id: &KeyId) -> Result<SecretKey, PskError> {
        (**self).find_pad(id)
    }
    fn consume(&mut self, id: &KeyId) -> Result<(), PskError> {
        (**self).consume(id)
    }
}

/// The operator-installed secret of a new link: one key, one handshake.
///
/// ```
/// use qkd_core::{KeyId, SecretKey};
/// use qkd_handshake::psk::{InitialSecret, PskError, PskSource, PSK_BYTES};
///
/// let id = KeyId::derive(b"link-7 initial secret");
/// let mut s = InitialSecret::new(id, SecretKey::from_slice(&[7; PSK_BYTES]));
/// assert_eq!(s.next().unwrap().0, id);
/// assert_eq!(s.next().unwrap_err(), PskError::Exhausted);
/// assert_eq!(s.find(&id).unwrap_err(), PskError::AlreadyUsed(id));
/// ```
pub struct InitialSecret {
    id: KeyId,
    key: Option<SecretKey>,
}

impl InitialSecret {
    /// The secret `key` named `id`.
    #[must_use]
    pub fn new(id: KeyId, key: SecretKey) -> Self {
        InitialSecret { id, key: Some(key) }
    }

    /// Whether the secret was used.
    #[must_use]
    pub fn is_consumed(&self) -> bool {
        self.key.is_none()
    }
}

impl core::fmt::Debug for InitialSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("InitialSecret")
            .field("id", &self.id)
            .field("consumed", &self.key.is_none())
            .finish_non_exhaustive()
    }
}

impl PskSource for InitialSecret {
    fn next(&mut self) -> Result<(KeyId, SecretKey), PskError> {
        self.key
            .take()
            .map(|k| (self.id, k))
            .ok_or(PskError::Exhausted)
    }
    fn find(&mut self, id: &KeyId) -> Result<SecretKey, PskError> {
        if *id != self.id {
            return Err(PskError::Unknown(*id));
        }
        self.key.clone().ok_or(PskError::AlreadyUsed(*id))
    }
    fn consume(&mut self, id: &KeyId) -> Result<(), PskError> {
        if *id != self.id {
            return Err(PskError::Unknown(*id));
        }
        self.key.take().map(drop).ok_or(PskError::AlreadyUsed(*id))
    }
}

/// An in-memory table of keys both sides hold in the same order, with the
/// key store's ownership rule: [`next`](PskSource::next) hands out the
/// lowest unused key of this side's parity (even indices for
/// [`Ownership::First`], odd for [`Ownership::Second`]).
///
/// ```
/// use qkd_core::{KeyId, SecretKey};
/// use qkd_handshake::capability::Ownership;
/// use qkd_handshake::psk::{PskSource, PskTable};
///
/// let keys: Vec<(KeyId, SecretKey)> = (0..4u8)
///     .map(|i| (KeyId::derive(&[i]), SecretKey::from_slice(&[i; 32])))
///     .collect();
/// let mut a = PskTable::new(Ownership::First, keys.clone());
/// let mut b = PskTable::new(Ownership::Second, keys);
/// let (id, key) = a.next().unwrap();
/// assert_eq!(b.take(&id).unwrap(), key);
/// assert_ne!(b.next().unwrap().0, id);
/// ```
pub struct PskTable {
    ownership: Ownership,
    order: Vec<KeyId>,
    keys: HashMap<KeyId, SecretKey>,
    used: HashSet<KeyId>,
    cursor: usize,
}

impl PskTable {
    /// A table of `keys`, in the order both sides agree on.
    #[must_use]
    pub fn new(ownership: Ownership, keys: Vec<(KeyId, SecretKey)>) -> Self {
        let mut order = Vec::with_capacity(keys.len());
        let mut map = HashMap::with_capacity(keys.len());
        for (id, key) in keys {
            if map.insert(id, key).is_none() {
                order.push(id);
            }
        }
        let cursor = match ownership {
            Ownership::First => 0,
            Ownership::Second => 1,
        };
        PskTable {
            ownership,
            order,
            keys: map,
            used: HashSet::new(),
            cursor,
        }
    }

    /// Keys not yet consumed (of both parities).
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.keys.len()
    }

    /// Keys consumed so far.
    #[must_use]
    pub fn consumed(&self) -> usize {
        self.used.len()
    }

    /// This side's ownership.
    #[must_use]
    pub fn ownership(&self) -> Ownership {
        self.ownership
    }
}

impl core::fmt::Debug for PskTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PskTable")
            .field("ownership", &self.ownership)
            .field("remaining", &self.keys.len())
            .field("consumed", &self.used.len())
            .finish_non_exhaustive()
    }
}

impl PskSource for PskTable {
    fn next(&mut self) -> Result<(KeyId, SecretKey), PskError> {
        while self.cursor < self.order.len() {
            let id = self.order[self.cursor];
            self.cursor += 2;
            if let Some(key) = self.keys.remove(&id) {
                self.used.insert(id);
                return Ok((id, key));
            }
        }
        Err(PskError::Exhausted)
    }

    fn find(&mut self, id: &KeyId) -> Result<SecretKey, PskError> {
        match self.keys.get(id) {
            Some(k) => Ok(k.clone()),
            None if self.used.contains(id) => Err(PskError::AlreadyUsed(*id)),
            None => Err(PskError::Unknown(*id)),
        }
    }

    fn consume(&mut self, id: &KeyId) -> Result<(), PskError> {
        match self.keys.remove(id) {
            Some(_) => {
                self.used.insert(*id);
                Ok(())
            }
            None if self.used.contains(id) => Err(PskError::AlreadyUsed(*id)),
            None => Err(PskError::Unknown(*id)),
        }
    }
}

/// Key material of a simulated QKD link, for tests and demos: both ends
/// derive key `i` of the link from a shared seed with blake3, so no key
/// table is held; each key is still given out once, and
/// [`next`](PskSource::next) walks this side's parity as [`PskTable`] does.
/// The link holds `max_keys` keys.
///
/// ```
/// use qkd_handshake::capability::Ownership;
/// use qkd_handshake::psk::{PskSource, SimulatedLink};
///
/// let mut a = SimulatedLink::new(b"link-7", 42, 1024, 1 << 20, Ownership::First);
/// let mut b = SimulatedLink::new(b"link-7", 42, 1024, 1 << 20, Ownership::Second);
/// let (id, key) = a.next().unwrap();
/// assert_eq!(key.len(), 1024);
/// assert_eq!(b.take(&id).unwrap(), key);
/// assert!(b.take(&id).is_err());
/// ```
pub struct SimulatedLink {
    link: Vec<u8>,
    seed: u64,
    key_len: usize,
    max_keys: u64,
    next_index: u64,
    /// IDs of keys `0..computed`, to recognise the peer's.
    ids: HashMap<KeyId, u64>,
    computed: u64,
    used: HashSet<KeyId>,
    ownership: Ownership,
}

/// How many key IDs [`SimulatedLink`] derives ahead at a time.
const SIMULATED_LOOKAHEAD: u64 = 1 << 14;

impl SimulatedLink {
    /// `max_keys` keys of `key_len` bytes of the link named `link`, from `seed`.
    #[must_use]
    pub fn new(
        link: &[u8],
        seed: u64,
        key_len: usize,
        max_keys: u64,
        ownership: Ownership,
    ) -> Self {
        SimulatedLink {
            link: link.to_vec(),
            seed,
            key_len,
            max_keys,
            next_index: match ownership {
                Ownership::First => 0,
                Ownership::Second => 1,
            },
            ids: HashMap::new(),
            computed: 0,
            used: HashSet::new(),
            ownership,
        }
    }

    /// The ID of key number `index`.
    #[must_use]
    pub fn key_id(&self, index: u64) -> KeyId {
        KeyId::for_block(&self.link, self.seed, index)
    }

    /// Keys consumed so far on this side.
    #[must_use]
    pub fn consumed(&self) -> usize {
        self.used.len()
    }

    fn key(&self, id: &KeyId) -> SecretKey {
        let mut bytes = vec![0u8; self.key_len];
        let mut h = blake3::Hasher::new_derive_key("qkd-handshake 2026-11 simulated link key");
        h.update(&self.seed.to_le_bytes());
        h.update(id.as_bytes());
        h.finalize_xof().fill(&mut bytes);
        SecretKey::from_vec(bytes)
    }

    /// Derives the next batch of IDs; `false` when the link has no more.
    fn extend(&mut self) -> bool {
        let end = (self.computed + SIMULATED_LOOKAHEAD).min(self.max_keys);
        if end == self.computed {
            return false;
        }
        for i in self.computed..end {
            self.ids.insert(self.key_id(i), i);
        }
        self.computed = end;
        true
    }

    fn check(&mut self, id: &KeyId) -> Result<(), PskError> {
        if self.used.contains(id) {
            return Err(PskError::AlreadyUsed(*id));
        }
        // The peer may draw ahead of this side: look one batch further.
        while !self.ids.contains_key(id) {
            if self.computed > self.next_index + 4 * SIMULATED_LOOKAHEAD || !self.extend() {
                return Err(PskError::Unknown(*id));
            }
        }
        Ok(())
    }
}

impl core::fmt::Debug for SimulatedLink {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SimulatedLink")
            .field("ownership", &self.ownership)
            .field("consumed", &self.used.len())
            .finish_non_exhaustive()
    }
}

impl PskSource for SimulatedLink {
    fn next(&mut self) -> Result<(KeyId, SecretKey), PskError> {
        while self.next_index < self.max_keys {
            let id = self.key_id(self.next_index);
            self.next_index += 2;
            if self.used.insert(id) {
                return Ok((id, self.key(&id)));
            }
        }
        Err(PskError::Exhausted)
    }

    fn find(&mut self, id: &KeyId) -> Result<SecretKey, PskError> {
        self.check(id)?;
        Ok(self.key(id))
    }

    fn consume(&mut self, id: &KeyId) -> Result<(), PskError> {
        self.check(id)?;
        self.used.insert(*id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: u8) -> Vec<(KeyId, SecretKey)> {
        (0..n)
            .map(|i| (KeyId::derive(&[i]), SecretKey::from_slice(&[i; 8])))
            .collect()
    }

    #[test]
    fn next_follows_ownership_and_skips_consumed() {
        let mut a = PskTable::new(Ownership::First, table(6));
        a.consume(&KeyId::derive(&[0])).unwrap();
        assert_eq!(a.next().unwrap().0, KeyId::derive(&[2]));
        assert_eq!(a.next().unwrap().0, KeyId::derive(&[4]));
        assert_eq!(a.next().unwrap_err(), PskError::Exhausted);
        assert_eq!(a.remaining(), 3);
        assert_eq!(a.consumed(), 3);
    }

    #[test]
    fn a_key_is_given_out_once() {
        let mut b = PskTable::new(Ownership::Second, table(4));
        let id = KeyId::derive(&[1]);
        assert!(b.find(&id).is_ok());
        assert!(b.find(&id).is_ok(), "find does not consume");
        b.consume(&id).unwrap();
        assert_eq!(b.take(&id).unwrap_err(), PskError::AlreadyUsed(id));
        let unknown = KeyId::derive(b"nope");
        assert_eq!(b.take(&unknown).unwrap_err(), PskError::Unknown(unknown));
        assert_eq!(b.next().unwrap().0, KeyId::derive(&[3]));
    }
}
