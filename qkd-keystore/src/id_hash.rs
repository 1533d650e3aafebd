//! The hasher of the store's maps keyed by [`KeyId`](qkd_core::KeyId) and
//! [`BlockId`](qkd_core::BlockId).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// Hasher for maps keyed by key IDs (already uniformly distributed: blake3
/// output) and by block numbers (multiplicative mixing). Block numbers come
/// from this node's own inserts and key IDs from blake3 over ranges of held
/// blocks, so the peer cannot choose colliding keys.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A map with [`IdHasher`].
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, BuildHasherDefault};

    use qkd_core::{BlockId, KeyId};

    use super::IdHasher;

    #[test]
    fn consecutive_blocks_and_key_ids_spread() {
        let h = BuildHasherDefault::<IdHasher>::default();
        let blocks: std::collections::HashSet<u64> = (0..1000u64)
            .map(|b| h.hash_one(BlockId::new(b)) >> 54)
            .collect();
        assert!(
            blocks.len() > 500,
            "top bits of 1000 block hashes: {}",
            blocks.len()
        );
        let ids: std::collections::HashSet<u64> = (0..1000u64)
            .map(|i| h.hash_one(KeyId::for_block(b"l", BlockId::new(1), i)) >> 54)
            .collect();
        assert!(ids.len() > 500, "{}", ids.len());
    }
}
