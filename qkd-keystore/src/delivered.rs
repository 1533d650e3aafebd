//! Keys the peer handed out fresh, kept here for the slave SAEs of their
//! binding until each fetched its copy or the keys expire.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use qkd_core::{KeyId, SecretKey};

use crate::LookupError;
use crate::id_hash::IdMap;
use crate::notice::Binding;

struct DeliveredKey {
    key: SecretKey,
    binding: Arc<Binding>,
    /// Bit i set: slave i may still fetch.
    remaining: u64,
}

/// The bit mask of every slave of `binding`.
fn all_slaves(binding: &Binding) -> u64 {
    match binding.slaves().len() {
        64 => u64::MAX,
        n => (1u64 << n) - 1,
    }
}

/// Keys waiting for their slaves, at most `max` of them.
pub(crate) struct DeliveredKeys {
    keys: IdMap<KeyId, DeliveredKey>,
    /// Deadlines in insertion order (the TTL is the same for all); entries
    /// of keys fetched in the meantime are skipped when they come up.
    expiry: VecDeque<(Instant, KeyId)>,
    bytes: u64,
    max: usize,
}

impl DeliveredKeys {
    pub(crate) fn new(max: u32) -> Self {
        DeliveredKeys {
            keys: IdMap::default(),
            expiry: VecDeque::new(),
            bytes: 0,
            max: max as usize,
        }
    }

    /// Keys waiting.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Bytes of the keys waiting.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn contains(&self, id: &KeyId) -> bool {
        self.keys.contains_key(id)
    }

    /// The binding of key `id` and whether `slave` may still fetch it,
    /// without fetching; `None` if it is not here.
    pub(crate) fn binding(&self, id: &KeyId, slave: &str) -> Option<(&Binding, bool)> {
        let entry = self.keys.get(id)?;
        let may = entry
            .binding
            .slave_index(slave)
            .is_some_and(|i| entry.remaining & (1 << i) != 0);
        Some((&entry.binding, may))
    }

    /// Keeps `key` for every slave of `binding` until `deadline`
    /// (deadlines must not decrease). If `max` keys wait already, the
    /// oldest is dropped first and handed to `on_expired` with the mask of
    /// the slaves that had not fetched it.
    pub(crate) fn insert(
        &mut self,
        id: KeyId,
        key: SecretKey,
        binding: Arc<Binding>,
        deadline: Instant,
        mut on_expired: impl FnMut(&Arc<Binding>, u64),
    ) {
        while self.keys.len() >= self.max {
            let Some((_, old)) = self.expiry.pop_front() else {
                break;
            };
            if let Some(e) = self.remove(&old) {
                on_expired(&e.binding, e.remaining);
            }
        }
        self.bytes += key.len() as u64;
        let remaining = all_slaves(&binding);
        if let Some(old) = self.keys.insert(
            id,
            DeliveredKey {
                key,
                binding,
                remaining,
            },
        ) {
            // Not reachable: a key ID names bytes that leave the store once.
            self.bytes -= old.key.len() as u64;
        }
        self.expiry.push_back((deadline, id));
    }

    fn remove(&mut self, id: &KeyId) -> Option<DeliveredKey> {
        let e = self.keys.remove(id)?;
        self.bytes -= e.key.len() as u64;
        Some(e)
    }

    /// Key `id` for `slave`: `Ok(None)` if it is not here, the key and its
    /// binding otherwise. The key leaves (zeroized) once every slave of its
    /// binding fetched it.
    ///
    /// # Errors
    /// [`LookupError::NotAuthorized`] if `slave` is not a remaining slave of the key.
    pub(crate) fn fetch(
        &mut self,
        id: &KeyId,
        slave: &str,
    ) -> Result<Option<(SecretKey, Arc<Binding>)>, LookupError> {
        let Some(entry) = self.keys.get_mut(id) else {
            return Ok(None);
        };
        let i = entry
            .binding
            .slave_index(slave)
            .ok_or(LookupError::NotAuthorized)?;
        if entry.remaining & (1 << i) == 0 {
            return Err(LookupError::NotAuthorized);
        }
        entry.remaining &= !(1 << i);
        if entry.remaining != 0 {
            return Ok(Some((entry.key.clone(), entry.binding.clone())));
        }
        Ok(self.remove(id).map(|e| (e.key, e.binding)))
    }

    /// The earliest deadline (possibly of a key fetched since).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.expiry.front().map(|e| e.0)
    }

    /// Drops the keys due at `now`, each handed to `on_expired` with the
    /// mask of the slaves that had not fetched it. Returns how many.
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        mut on_expired: impl FnMut(&Arc<Binding>, u64),
    ) -> usize {
        let mut n = 0;
        while let Some(&(at, id)) = self.expiry.front() {
            if at > now {
                break;
            }
            self.expiry.pop_front();
            if let Some(e) = self.remove(&id) {
                on_expired(&e.binding, e.remaining);
                n += 1;
            }
        }
        n
    }

    /// Forgets every key (zeroized).
    pub(crate) fn clear(&mut self) {
        self.keys.clear();
        self.expiry.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use qkd_core::BlockId;

    use super::*;

    fn id(n: u64) -> KeyId {
        KeyId::for_block(b"l", BlockId::new(1), n)
    }

    #[test]
    fn each_slave_fetches_once_then_the_key_leaves() {
        let now = Instant::now();
        let mut d = DeliveredKeys::new(10);
        let multi = Arc::new(Binding::new("m", ["s1", "s2"]).unwrap());
        d.insert(id(1), SecretKey::from_slice(&[9; 4]), multi, now, |_, _| {});
        assert_eq!((d.len(), d.bytes()), (1, 4));
        assert_eq!(d.fetch(&id(1), "x"), Err(LookupError::NotAuthorized));
        let may = |d: &DeliveredKeys, s: &str| {
            d.binding(&id(1), s)
                .map(|(b, may)| (b.master().to_owned(), may))
        };
        assert_eq!(may(&d, "s2"), Some(("m".to_owned(), true)));
        assert_eq!(may(&d, "x"), Some(("m".to_owned(), false)));
        let (key, binding) = d.fetch(&id(1), "s2").unwrap().unwrap();
        assert_eq!(
            may(&d, "s2"),
            Some(("m".to_owned(), false)),
            "fetched already"
        );
        assert_eq!(
            may(&d, "s1"),
            Some(("m".to_owned(), true)),
            "probing took nothing"
        );
        assert_eq!(key.expose_secret(), &[9; 4]);
        assert_eq!(binding.master(), "m");
        assert_eq!(d.fetch(&id(1), "s2"), Err(LookupError::NotAuthorized));
        assert!(d.contains(&id(1)));
        assert!(d.fetch(&id(1), "s1").unwrap().is_some());
        assert!(!d.contains(&id(1)));
        assert_eq!((d.len(), d.bytes()), (0, 0));
        assert_eq!(d.fetch(&id(1), "s1"), Ok(None));
        assert_eq!(may(&d, "s1"), None);
    }

    #[test]
    fn keys_expire_in_order_and_the_oldest_make_room() {
        let now = Instant::now();
        let s = Duration::from_secs(1);
        let mut d = DeliveredKeys::new(2);
        let pair = Arc::new(Binding::pair("m", "s").unwrap());
        let mut expired = Vec::new();
        for n in 0..3u64 {
            d.insert(
                id(n),
                SecretKey::from_slice(&[1; 8]),
                pair.clone(),
                now + s * n as u32,
                |_, mask| expired.push(mask),
            );
        }
        assert_eq!(d.len(), 2, "bounded");
        assert_eq!(expired, [1], "the oldest made room, unfetched");
        assert!(!d.contains(&id(0)));
        d.fetch(&id(1), "s").unwrap().unwrap();
        assert_eq!(d.next_deadline(), Some(now + s), "stale entry");
        let mut later = Vec::new();
        assert_eq!(d.expire(now + s * 5, |_, mask| later.push(mask)), 1);
        assert_eq!(later, [1]);
        assert_eq!((d.len(), d.bytes(), d.next_deadline()), (0, 0, None));
        d.insert(id(7), SecretKey::from_slice(&[1]), pair, now, |_, _| {});
        d.clear();
        assert_eq!((d.len(), d.bytes()), (0, 0));
    }

    #[test]
    fn a_binding_of_64_slaves_has_a_full_mask() {
        let slaves: Vec<String> = (0..64).map(|i| format!("s{i}")).collect();
        assert_eq!(all_slaves(&Binding::new("m", slaves).unwrap()), u64::MAX);
        assert_eq!(all_slaves(&Binding::pair("m", "s").unwrap()), 1);
    }
}
