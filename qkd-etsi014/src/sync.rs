//! [`KeySource`] for [`qkd_sync::SyncNode`] (feature `sync`): `enc_keys`
//! takes fresh keys from this node's store for a master/slave
//! [`Binding`]; the peer node learns of them by qkd-sync's notice, and
//! its handler serves them to the named slaves with `dec_keys`.
//!
//! The host drives the node as any [`Machine`](qkd_core::machine::Machine)
//! and hands its events to the handler with
//! [`Kme::handle_sync_event`](crate::Kme::handle_sync_event), which takes
//! [`Event::KeyArrived`](qkd_sync::Event::KeyArrived) and [`Event::LookupTimedOut`](qkd_sync::Event::LookupTimedOut) to answer parked
//! `dec_keys` requests.
//!
//! Limits: a key is at most the store's maximum
//! ([`KeyStore::max_key_bits`](qkd_keystore::KeyStore::max_key_bits),
//! `8 * StoreConfig::max_key_bytes`: 65 536 bits by default, up to
//! 524 288), and `max_key_size` in the status answer is the lower of that
//! and [`KmeConfig::max_key_size`](crate::KmeConfig::max_key_size). A key
//! larger than one store chunk is cut from several chunks the taking node
//! owns ([`KeyPieces`](qkd_keystore::KeyPieces)) and travels to the peer as
//! one notice record naming every piece; a larger `size` is answered 400
//! with `size shall be between … bits`. A binding names at most 64 slaves,
//! so `max_SAE_ID_count` is at most 63.

use std::sync::Arc;
use std::time::Instant;

use qkd_core::{KeyId, SecretKey};
use qkd_keystore::notice::MAX_SLAVES;
use qkd_keystore::{Binding, LookupError, TakeError};
use qkd_sync::{Lookup, SyncError, SyncNode};

use crate::source::{KeySource, Probe, SourceError};

/// The message of the 503 answers while the node has no session with its peer.
pub const NOT_PAIRED: &str = "the link to the peer KME is down: no keys can be delivered until \
     it is re-established and new keys have been distilled (a restart of either KME empties both \
     key stores)";

fn source_error(e: SyncError) -> SourceError {
    match e {
        SyncError::NotPaired => SourceError::Unavailable(NOT_PAIRED.to_owned()),
        SyncError::Take(TakeError::Insufficient {
            requested,
            available,
        }) => SourceError::Insufficient {
            requested,
            available,
        },
        SyncError::Lookup(LookupError::NotAuthorized) => SourceError::NotAuthorized,
        other => SourceError::Unavailable(format!("key store: {other}")),
    }
}

impl KeySource for SyncNode {
    fn unavailable(&self) -> Option<String> {
        (!self.is_paired()).then(|| NOT_PAIRED.to_owned())
    }

    fn max_key_bits(&self) -> usize {
        self.store().max_key_bits()
    }

    fn max_keys_per_request(&self) -> usize {
        self.store().config().max_keys_per_request as usize
    }

    fn max_slaves(&self) -> usize {
        MAX_SLAVES
    }

    fn fresh_keys(&self, bits: usize) -> usize {
        if self.is_paired() {
            self.store().fresh_keys(bits)
        } else {
            0
        }
    }

    fn max_key_count(&self, bits: usize) -> usize {
        let bytes = (bits / 8).max(1) as u64;
        usize::try_from(self.store().config().capacity_bytes / bytes).unwrap_or(usize::MAX)
    }

    fn take(
        &mut self,
        _now: Instant,
        count: usize,
        bits: usize,
        master: &str,
        slaves: &[&str],
    ) -> Result<Vec<(KeyId, SecretKey)>, SourceError> {
        if !self.is_paired() {
            return Err(SourceError::Unavailable(NOT_PAIRED.to_owned()));
        }
        let binding = Binding::new(master, slaves.iter().copied())
            .map_err(|e| SourceError::Unavailable(format!("binding refused: {e}")))?;
        SyncNode::take(self, count, bits, &Arc::new(binding)).map_err(source_error)
    }

    fn probe(&self, id: &KeyId, master: &str, slave: &str) -> Probe {
        match self.store().delivered_binding(id, slave) {
            None => Probe::Absent,
            Some((b, _)) if b.master() != master => Probe::OtherMaster,
            Some((_, true)) => Probe::Ready,
            Some((_, false)) => Probe::NotAuthorized,
        }
    }

    fn fetch(&mut self, now: Instant, id: &KeyId, slave: &str) -> Result<SecretKey, SourceError> {
        if !self.store().is_delivered(id) {
            return Err(SourceError::NotFound);
        }
        match self.lookup(now, id, slave).map_err(source_error)? {
            Lookup::Ready(key) => Ok(key),
            Lookup::Pending => Err(SourceError::NotFound),
        }
    }

    fn watch(&mut self, now: Instant, id: &KeyId, slave: &str) {
        // Only for a key not here: a lookup of a key that is here would
        // hand it out.
        if !self.store().is_delivered(id) {
            let _ = self.lookup(now, id, slave);
        }
    }
}
