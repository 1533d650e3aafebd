//! What a store counts: [`StoreStats`] for the whole store and
//! [`PairingStats`] per (master SAE, slave SAE) pairing, the latter bounded
//! and checked against the peer's consumed notices.

use std::collections::HashMap;

use crate::NoticeError;
use crate::notice::Binding;

/// Counts of what a store holds and has done. Bits are `8 *` the byte figures.
///
/// The "held" figures describe the store now; the others count since the
/// store was created (a [`wipe`](crate::KeyStore::wipe) keeps them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Blocks held (at least one chunk not finished).
    pub blocks: usize,
    /// Bytes held in chunk buffers (fresh, pending and peer-owned copies).
    pub chunk_bytes: u64,
    /// Fresh bytes: owned here, block held by both, not yet cut.
    pub fresh_bytes: u64,
    /// Owned bytes of blocks the peer has not announced yet.
    pub pending_bytes: u64,
    /// Keys reserved and not yet committed or released.
    pub reserved_keys: u64,
    /// Bytes of reserved keys.
    pub reserved_bytes: u64,
    /// Keys handed out on the peer and waiting here for their slaves.
    pub delivered_keys: u64,
    /// Bytes of those keys.
    pub delivered_bytes: u64,
    /// Blocks stored since creation.
    pub blocks_stored: u64,
    /// Blocks refused or dropped whole (capacity, lost on one side).
    pub blocks_lost: u64,
    /// Keys handed out fresh here.
    pub keys_taken: u64,
    /// Keys fetched here by a slave.
    pub keys_fetched: u64,
    /// Keys fetched on the peer (from its consumed notices).
    pub keys_fetched_by_peer: u64,
    /// Delivered keys that expired (or made room for newer ones) before
    /// their slaves fetched them.
    pub keys_expired: u64,
    /// Bytes dropped without being handed out (expiry, capacity,
    /// fragments, reservations released, the peer's drops).
    pub bytes_dropped: u64,
    /// Chunks lent to the peer.
    pub chunks_lent: u64,
    /// Chunks borrowed from the peer.
    pub chunks_borrowed: u64,
    /// Notices of the peer refused as misbehaviour.
    pub peer_violations: u64,
    /// Whole-store wipes.
    pub wipes: u64,
}

/// Per-pairing counts (master SAE, slave SAE), for ETSI 014 status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PairingStats {
    /// Keys taken here with this master for this slave.
    pub taken: u64,
    /// Keys delivered from the peer for this slave and not yet fetched here.
    pub waiting: u64,
    /// Keys this slave fetched here.
    pub fetched: u64,
    /// Keys this slave fetched on the peer.
    pub fetched_by_peer: u64,
}

/// The counters of at most `max` pairings.
///
/// Pairings are created by this node's takes and by the peer's delivered
/// notices; beyond `max` a new pairing is not counted. The peer's consumed
/// notices only ever update a pairing this node took keys for, and never
/// count more fetches than keys taken.
pub(crate) struct Pairings {
    /// Per master, per slave.
    by_master: HashMap<String, HashMap<String, PairingStats>>,
    len: usize,
    max: usize,
    /// Keys taken here for pairings not counted (the limit), per slave:
    /// how many consumed notices for unknown pairings to accept.
    untracked_fetchable: u64,
}

impl Pairings {
    pub(crate) fn new(max: u32) -> Self {
        Pairings {
            by_master: HashMap::new(),
            len: 0,
            max: max as usize,
            untracked_fetchable: 0,
        }
    }

    /// Pairings counted.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, master: &str, slave: &str) -> Option<&PairingStats> {
        self.by_master.get(master)?.get(slave)
    }

    fn get_mut(&mut self, master: &str, slave: &str) -> Option<&mut PairingStats> {
        self.by_master.get_mut(master)?.get_mut(slave)
    }

    /// The counters of a pairing, created if there is room (no allocation
    /// once it exists).
    /// Applies `f` to the counters of a pairing, created if there is room
    /// (two map lookups and no allocation once it exists). Returns whether
    /// the pairing is counted.
    fn update(&mut self, master: &str, slave: &str, f: impl FnOnce(&mut PairingStats)) -> bool {
        if let Some(p) = self.get_mut(master, slave) {
            f(p);
            return true;
        }
        if !self.create(master, slave) {
            return false;
        }
        self.get_mut(master, slave).map(f).is_some()
    }

    /// Creates the counters of a new pairing if there is room (out of the
    /// hot path of every take and delivery).
    #[cold]
    #[inline(never)]
    fn create(&mut self, master: &str, slave: &str) -> bool {
        if self.len >= self.max {
            return false;
        }
        self.len += 1;
        self.by_master
            .entry(master.to_owned())
            .or_default()
            .insert(slave.to_owned(), PairingStats::default());
        true
    }

    /// This node took `n` keys for `binding`.
    pub(crate) fn taken(&mut self, binding: &Binding, n: u64) {
        for s in binding.slaves() {
            if !self.update(binding.master(), s, |p| p.taken += n) {
                self.untracked_fetchable += n;
            }
        }
    }

    /// The peer handed out `n` keys for `binding`, now waiting here.
    ///
    /// # Errors
    /// [`NoticeError::TooManyPairings`] if a pairing could not be counted
    /// (the keys wait all the same).
    pub(crate) fn delivered(&mut self, binding: &Binding, n: u64) -> Result<(), NoticeError> {
        let mut result = Ok(());
        for s in binding.slaves() {
            if !self.update(binding.master(), s, |p| p.waiting += n) {
                result = Err(NoticeError::TooManyPairings {
                    max: self.max as u32,
                });
            }
        }
        result
    }

    /// `slave` fetched a key of `master` here.
    pub(crate) fn fetched(&mut self, master: &str, slave: &str) {
        if let Some(p) = self.get_mut(master, slave) {
            p.fetched += 1;
            p.waiting = p.waiting.saturating_sub(1);
        }
    }

    /// A key of `binding` expired here before the slaves in `remaining`
    /// (bit i: slave i) fetched it.
    pub(crate) fn expired(&mut self, binding: &Binding, remaining: u64) {
        for (i, s) in binding.slaves().iter().enumerate() {
            if remaining & (1 << i) != 0
                && let Some(p) = self.get_mut(binding.master(), s)
            {
                p.waiting = p.waiting.saturating_sub(1);
            }
        }
    }

    /// The peer's slave `slave` fetched `count` keys of `master` there:
    /// keys this node took.
    ///
    /// # Errors
    /// [`NoticeError::UnknownPairing`] if no key was taken here for the
    /// pairing, [`NoticeError::ConsumedTooMany`] if `count` is zero or more
    /// than the keys taken here not reported fetched yet. Nothing is counted then.
    pub(crate) fn consumed(
        &mut self,
        master: &str,
        slave: &str,
        count: u32,
    ) -> Result<(), NoticeError> {
        let n = u64::from(count);
        let check = |outstanding: u64| {
            if n == 0 || n > outstanding {
                Err(NoticeError::ConsumedTooMany { count, outstanding })
            } else {
                Ok(())
            }
        };
        let untracked = self.untracked_fetchable;
        match self.get_mut(master, slave) {
            Some(p) => {
                check(p.taken - p.fetched_by_peer)?;
                p.fetched_by_peer += n;
            }
            None if untracked > 0 => {
                check(untracked)?;
                self.untracked_fetchable -= n;
            }
            None => return Err(NoticeError::UnknownPairing),
        }
        Ok(())
    }

    /// Forgets every pairing.
    pub(crate) fn clear(&mut self) {
        self.by_master.clear();
        self.len = 0;
        self.untracked_fetchable = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumed_notices_only_count_keys_taken_here() {
        let mut p = Pairings::new(10);
        let b = Binding::new("m", ["s1", "s2"]).unwrap();
        assert_eq!(p.consumed("m", "s1", 1), Err(NoticeError::UnknownPairing));
        p.taken(&b, 3);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p.consumed("m", "s1", 0),
            Err(NoticeError::ConsumedTooMany {
                count: 0,
                outstanding: 3
            })
        );
        p.consumed("m", "s1", 2).unwrap();
        assert_eq!(
            p.consumed("m", "s1", 2),
            Err(NoticeError::ConsumedTooMany {
                count: 2,
                outstanding: 1
            })
        );
        p.consumed("m", "s2", 3).unwrap();
        assert_eq!(p.get("m", "s1").unwrap().fetched_by_peer, 2);
        assert_eq!(p.get("m", "s2").unwrap().fetched_by_peer, 3);
        assert_eq!(
            p.consumed("other", "s1", 1),
            Err(NoticeError::UnknownPairing)
        );
        assert_eq!(p.len(), 2, "no entry for a name the peer made up");
    }

    #[test]
    fn pairings_are_bounded() {
        let mut p = Pairings::new(2);
        let b = Binding::new("m", ["s1", "s2", "s3"]).unwrap();
        assert_eq!(
            p.delivered(&b, 4),
            Err(NoticeError::TooManyPairings { max: 2 })
        );
        assert_eq!(p.len(), 2);
        assert_eq!(p.get("m", "s2").unwrap().waiting, 4);
        assert!(p.get("m", "s3").is_none());
        p.fetched("m", "s1");
        p.fetched("m", "s3"); // not counted: no entry is created
        assert_eq!(p.get("m", "s1").unwrap().fetched, 1);
        p.expired(&b, 0b111);
        assert_eq!(p.get("m", "s1").unwrap().waiting, 2);
        // Keys taken for a pairing beyond the limit still let the peer
        // report their fetches, up to what was taken.
        let other = Binding::pair("m2", "s").unwrap();
        p.taken(&other, 2);
        assert!(p.get("m2", "s").is_none());
        p.consumed("m2", "s", 2).unwrap();
        assert!(p.consumed("m2", "s", 1).is_err());
        p.clear();
        assert_eq!(p.len(), 0);
        assert!(p.get("m", "s1").is_none());
    }
}
