//! Key IDs this node has handed to every slave they were bound to, so that
//! a second `dec_keys` of one is answered 400 at once.
//!
//! The store forgets a delivered key once its last slave fetched it (the
//! key is zeroized and gone). Without a record, a second `dec_keys` of that
//! ID looks like a key whose notice from the peer has not arrived yet, and
//! waits the whole `dec_keys` wait before it is answered 400 "not found".
//! [`FetchedKeys`] remembers the IDs (never the keys) of the last
//! [`MAX_FETCHED`] keys fetched in full on this node; [`NodeKeys`] is the
//! key source the ETSI 014 handler sees: the sync node, with those IDs
//! reported as known and not fetchable, which the handler answers at once
//! with 400 "not found" naming them (the answer the standard gives for a
//! key that is not on the KME, the same as for a key of another master).
//! An ID that fell out of the record is answered as before, after the wait.
//! Key IDs never repeat (a session numbers its blocks from a random base),
//! so the record is kept across sessions.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use qkd_core::{KeyId, SecretKey};
use qkd_etsi014::{KeySource, Probe, SourceError};
use qkd_sync::SyncNode;

/// IDs remembered (about 50 bytes each: 13 MB at most).
pub(crate) const MAX_FETCHED: usize = 1 << 18;

/// The IDs of keys fetched by every slave on this node, newest last.
#[derive(Debug)]
pub(crate) struct FetchedKeys {
    ids: HashSet<KeyId>,
    order: VecDeque<KeyId>,
    max: usize,
}

impl FetchedKeys {
    /// An empty record of at most `max` IDs.
    pub(crate) fn new(max: usize) -> Self {
        FetchedKeys {
            ids: HashSet::new(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// Whether `id` was fetched in full here (and is still remembered).
    pub(crate) fn contains(&self, id: &KeyId) -> bool {
        self.ids.contains(id)
    }

    /// Records `id`, forgetting the oldest beyond the limit.
    pub(crate) fn record(&mut self, id: KeyId) {
        if !self.ids.insert(id) {
            return;
        }
        self.order.push_back(id);
        while self.order.len() > self.max {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }

    /// IDs remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

/// The key source the handler sees: the sync node and the record.
pub(crate) struct NodeKeys<'a> {
    pub(crate) node: &'a mut SyncNode,
    pub(crate) fetched: &'a mut FetchedKeys,
    /// The peer link is down (the node is kept for the reconnection, but
    /// nothing is delivered meanwhile).
    pub(crate) link_down: bool,
}

impl KeySource for NodeKeys<'_> {
    fn unavailable(&self) -> Option<String> {
        if self.link_down {
            return Some(qkd_etsi014::sync::NOT_PAIRED.to_owned());
        }
        self.node.unavailable()
    }

    fn max_key_bits(&self) -> usize {
        KeySource::max_key_bits(&*self.node)
    }

    fn max_keys_per_request(&self) -> usize {
        self.node.max_keys_per_request()
    }

    fn max_slaves(&self) -> usize {
        self.node.max_slaves()
    }

    fn fresh_keys(&self, bits: usize) -> usize {
        KeySource::fresh_keys(&*self.node, bits)
    }

    fn max_key_count(&self, bits: usize) -> usize {
        self.node.max_key_count(bits)
    }

    fn take(
        &mut self,
        now: Instant,
        count: usize,
        bits: usize,
        master: &str,
        slaves: &[&str],
    ) -> Result<Vec<(KeyId, SecretKey)>, SourceError> {
        KeySource::take(self.node, now, count, bits, master, slaves)
    }

    fn probe(&self, id: &KeyId, master: &str, slave: &str) -> Probe {
        match self.node.probe(id, master, slave) {
            // Delivered here already: it can never be fetched again.
            Probe::Absent if self.fetched.contains(id) => Probe::OtherMaster,
            p => p,
        }
    }

    fn fetch(&mut self, now: Instant, id: &KeyId, slave: &str) -> Result<SecretKey, SourceError> {
        let key = KeySource::fetch(self.node, now, id, slave)?;
        // The last slave fetched it: the store has forgotten it.
        if !self.node.store().is_delivered(id) {
            self.fetched.record(*id);
        }
        Ok(key)
    }

    fn watch(&mut self, now: Instant, id: &KeyId, slave: &str) {
        if !self.fetched.contains(id) {
            self.node.watch(now, id, slave);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_bounded_and_forgets_the_oldest() {
        let mut f = FetchedKeys::new(2);
        let ids: Vec<KeyId> = (0u8..3).map(|i| KeyId::derive(&[i])).collect();
        for id in &ids {
            f.record(*id);
        }
        f.record(ids[2]);
        assert_eq!(f.len(), 2);
        assert!(!f.contains(&ids[0]));
        assert!(f.contains(&ids[1]) && f.contains(&ids[2]));
    }
}
