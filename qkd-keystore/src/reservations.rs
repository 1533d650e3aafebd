//! Keys cut and held for a caller until it commits or releases them, or
//! their time runs out. The peer learns of them only then.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use qkd_core::{KeyId, SecretKey};

use crate::notice::{Binding, KeyPieces};

/// A handle to reserved keys; see [`KeyStore::reserve`](crate::KeyStore::reserve).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId(u64);

/// Keys held for one caller.
pub(crate) struct Reservation {
    pub(crate) keys: Vec<(KeyId, KeyPieces, SecretKey)>,
    pub(crate) binding: Arc<Binding>,
    deadline: Instant,
}

#[derive(Default)]
pub(crate) struct Reservations {
    open: HashMap<u64, Reservation>,
    by_deadline: BTreeSet<(Instant, u64)>,
    next: u64,
    keys: u64,
    bytes: u64,
}

impl Reservations {
    /// Holds `keys` for `binding` until `deadline`.
    pub(crate) fn add(
        &mut self,
        keys: Vec<(KeyId, KeyPieces, SecretKey)>,
        binding: Arc<Binding>,
        deadline: Instant,
    ) -> ReservationId {
        let id = self.next;
        self.next += 1;
        self.keys += keys.len() as u64;
        self.bytes += keys.iter().map(|k| k.1.len()).sum::<u64>();
        self.open.insert(
            id,
            Reservation {
                keys,
                binding,
                deadline,
            },
        );
        self.by_deadline.insert((deadline, id));
        ReservationId(id)
    }

    /// Takes reservation `id` out, if it is still held.
    pub(crate) fn remove(&mut self, id: ReservationId) -> Option<Reservation> {
        let r = self.open.remove(&id.0)?;
        self.by_deadline.remove(&(r.deadline, id.0));
        self.keys -= r.keys.len() as u64;
        self.bytes -= r.keys.iter().map(|k| k.1.len()).sum::<u64>();
        Some(r)
    }

    /// The reservation whose time is up at `now`, earliest first.
    pub(crate) fn due(&self, now: Instant) -> Option<ReservationId> {
        self.by_deadline
            .first()
            .filter(|(at, _)| *at <= now)
            .map(|&(_, id)| ReservationId(id))
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|e| e.0)
    }

    /// Keys held.
    pub(crate) fn keys(&self) -> u64 {
        self.keys
    }

    /// Bytes of the keys held.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Forgets every reservation (keys zeroized); handles stay unique.
    pub(crate) fn clear(&mut self) {
        self.open.clear();
        self.by_deadline.clear();
        self.keys = 0;
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use qkd_core::BlockId;

    use super::*;
    use crate::notice::KeyRange;

    fn keys(n: u32, len: u32) -> Vec<(KeyId, KeyPieces, SecretKey)> {
        (0..n)
            .map(|i| {
                let range = KeyRange {
                    block: BlockId::new(1),
                    offset: i * len,
                    len,
                };
                let id = KeyId::for_block(b"l", range.block, u64::from(range.offset));
                (
                    id,
                    KeyPieces::single(range),
                    SecretKey::from_vec(vec![i as u8; len as usize]),
                )
            })
            .collect()
    }

    #[test]
    fn held_until_removed_or_due() {
        let now = Instant::now();
        let binding = Arc::new(Binding::pair("m", "s").unwrap());
        let mut r = Reservations::default();
        let a = r.add(keys(2, 32), binding.clone(), now + Duration::from_secs(2));
        let b = r.add(keys(1, 8), binding, now + Duration::from_secs(1));
        assert_ne!(a, b);
        assert_eq!((r.keys(), r.bytes()), (3, 72));
        assert_eq!(r.next_deadline(), Some(now + Duration::from_secs(1)));
        assert_eq!(r.due(now), None);
        assert_eq!(r.due(now + Duration::from_secs(1)), Some(b));
        let got = r.remove(b).unwrap();
        assert_eq!(got.keys.len(), 1);
        assert!(r.remove(b).is_none(), "once");
        assert_eq!((r.keys(), r.bytes()), (2, 64));
        assert_eq!(r.due(now + Duration::from_secs(5)), Some(a));
        r.clear();
        assert_eq!((r.keys(), r.bytes(), r.next_deadline()), (0, 0, None));
        assert!(r.remove(a).is_none());
        let c = r.add(keys(1, 8), Arc::new(Binding::pair("m", "s").unwrap()), now);
        assert!(c != a && c != b, "handles are never reused");
    }
}
