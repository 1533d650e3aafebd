//! The shuffles of Cascade's passes, derived from a seed both sides agree on.

use std::sync::OnceLock;

use qkd_core::BitVec;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use qkd_core::machine::ConfigError;

use super::params::MAX_PASSES;

/// The permutations of every pass of a Cascade run on keys of one length.
///
/// Pass 0 uses the key in its own order; pass `p ≥ 1` uses a permutation
/// drawn by a Fisher–Yates shuffle from ChaCha8 keyed with
/// `seed (8 bytes, little-endian) ‖ p (4 bytes, little-endian) ‖ 20 zero bytes`:
/// for `i = n−1` down to `1`, `j = ⌊next_u32() · (i+1) / 2^32⌋`, swap `i` and `j`.
/// Both ends compute the same permutations from the same seed; the seed and
/// the shuffles are public (every parity they lead to is counted as leaked).
///
/// A plan computes each pass's permutation on first use and keeps it, so one
/// plan shared (through an `Arc`) by many blocks of the same length, and by
/// both machines in a test, pays for the shuffles once. Reusing one seed for
/// many blocks is safe: the shuffles reveal nothing about the key, and the
/// errors of each block are fresh. Derive a new seed (for example from the
/// block ID) when you want different shuffles per block.
///
/// Memory: each pass computed holds its permutation and its inverse (8
/// bytes per key bit; 4 for keys of at most 2^16 bits), the half-key mask (1/8 byte per key bit) and the
/// masks of the first tree levels of the two halves (at most 60 masks of
/// 1/8 byte per key bit, only for keys of 2^13 bits and more): at most
/// [`SHUFFLE_BYTES_PER_KEY_BIT`] per pass. The machines only ever ask for
/// the passes of their agreed schedule ([`CascadeParams::passes`](super::CascadeParams::passes)).
pub struct ShufflePlan {
    n: usize,
    seed: u64,
    passes: Box<[OnceLock<Shuffle>]>,
}

impl core::fmt::Debug for ShufflePlan {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ShufflePlan")
            .field("n", &self.n)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// A pass's packed shuffled copy of a key, built once the bit-by-bit range
/// parities asked of the pass have cost twice a key's worth of reads: a pass
/// with a few searches never pays for the whole copy.
#[derive(Default)]
pub(crate) struct LazyCopy {
    pub(crate) copy: Option<BitVec>,
    spent: usize,
}

impl LazyCopy {
    /// Announces `bits` of range reads about to be made at once (one round):
    /// builds the copy now when they are a large share of the key or would
    /// exceed the budget anyway.
    pub(crate) fn reserve(&mut self, shuffle: &Shuffle, key: &BitVec, bits: usize) {
        let n = key.len();
        if self.copy.is_none() && (bits > n / 4 || self.spent + bits > 2 * n) {
            self.copy = Some(shuffle.gather(key));
        }
    }

    /// Parity of `start..end` of `key` in the order of `pass`: from the
    /// copy if there is one, else the whole key and its halves on words,
    /// a node with a mask, or bit by bit (building the copy once those reads
    /// add up). Out of line: callers test for the copy themselves on their
    /// hot path.
    #[inline(never)]
    pub(crate) fn parity(
        &mut self,
        plan: &ShufflePlan,
        pass: usize,
        key: &BitVec,
        start: usize,
        end: usize,
    ) -> bool {
        if let Some(copy) = &self.copy {
            return copy.parity(start..end);
        }
        let shuffle = plan.shuffle(pass);
        let (n, half) = (key.len(), key.len().div_ceil(2));
        if start == 0 && end == n {
            return key.parity(..);
        }
        if start == 0 && end == half {
            return shuffle.half_parity(key);
        }
        if start == half && end == n {
            return key.parity(..) ^ shuffle.half_parity(key);
        }
        if let Some(p) = shuffle.node_parity(key, start, end) {
            return p;
        }
        // Reading bit by bit costs about a third of building the copy per
        // bit: build it once the reads add up to about twice the key.
        let n = key.len();
        self.spent += end - start;
        if self.spent <= 2 * n {
            return shuffle.range_parity(key, start, end);
        }
        let copy = shuffle.gather(key);
        let p = copy.parity(start..end);
        self.copy = Some(copy);
        p
    }
}

/// A table of key positions: 16 bits an entry for keys of at most 2^16
/// bits (the pipeline's chunks), else 32. Half the bytes means half the
/// cache misses when a flipped bit is mapped into another pass.
pub(crate) enum Positions {
    Short(Vec<u16>),
    Long(Vec<u32>),
}

/// An entry of a position table.
trait Entry: Copy + Default {
    fn at(self) -> usize;
    /// `i`, which the caller keeps below the table's key length.
    fn of(i: usize) -> Self;
}

impl Entry for u16 {
    #[inline]
    fn at(self) -> usize {
        usize::from(self)
    }
    #[inline]
    fn of(i: usize) -> Self {
        i as u16
    }
}

impl Entry for u32 {
    #[inline]
    fn at(self) -> usize {
        self as usize
    }
    #[inline]
    fn of(i: usize) -> Self {
        i as u32
    }
}

impl Positions {
    /// Entry `i`.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> usize {
        match self {
            Positions::Short(v) => usize::from(v[i]),
            Positions::Long(v) => v[i] as usize,
        }
    }

    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<u32> {
        match self {
            Positions::Short(v) => v.iter().map(|&x| u32::from(x)).collect(),
            Positions::Long(v) => v.clone(),
        }
    }
}

/// One pass's permutation: position `j` of the shuffled key holds bit
/// `order[j]` of the key, and bit `i` of the key sits at `pos[i]`.
pub(crate) struct Shuffle {
    pub(crate) order: Positions,
    pub(crate) pos: Positions,
    n: usize,
    /// Bit `i` set where `pos[i] < ⌈n/2⌉`: the first half of the shuffled key
    /// as a mask in key order, so the parity of a half is a word operation.
    pub(crate) half_mask: Vec<u64>,
    /// Masks (in key order) of the nodes at depth 1 to [`MASK_DEPTH`] of the
    /// binary-search trees of the two halves, so the first steps of a
    /// search in a half-key block are word operations too.
    node_masks: Vec<(u32, u32, Vec<u64>)>,
}

/// Depth of the half-block tree nodes that get a precomputed mask.
const MASK_DEPTH: u32 = 4;

/// The most bytes one pass's shuffle holds per key bit (rounded up): the
/// permutation and its inverse (8), the half mask (1/8) and at most
/// `2 · (2 + 4 + 8 + 16) = 60` node masks (60/8). Keys whose length is not
/// a multiple of 64 add less than one word per mask.
pub const SHUFFLE_BYTES_PER_KEY_BIT: f64 = 8.0 + (1.0 + 60.0) / 8.0;

impl ShufflePlan {
    /// A plan for keys of `n` bits with the shuffle seed `seed`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `n` if it is 0 or does not fit in 32 bits.
    pub fn new(n: usize, seed: u64) -> Result<Self, ConfigError> {
        if n == 0 || u32::try_from(n).is_err() {
            return Err(ConfigError::new(
                "n",
                format!("the key length must be in 1..2^32, got {n}"),
            ));
        }
        Ok(ShufflePlan {
            n,
            seed,
            passes: (0..MAX_PASSES).map(|_| OnceLock::new()).collect(),
        })
    }

    /// A plan with a seed drawn from `rng`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn random<R: rand_core::CryptoRng + ?Sized>(
        n: usize,
        rng: &mut R,
    ) -> Result<Self, ConfigError> {
        Self::new(n, rng.next_u64())
    }

    /// The key length this plan is for.
    #[must_use]
    pub fn key_len(&self) -> usize {
        self.n
    }

    /// The shuffle seed.
    #[must_use]
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Computes the shuffles of passes `1 .. passes` now, so that no run
    /// pays for them later (each is otherwise computed on first use).
    pub fn prepare(&self, passes: usize) {
        for pass in 1..passes.min(MAX_PASSES) {
            let _ = self.shuffle(pass);
        }
    }

    /// Length of the first half of a shuffled key, `⌈n/2⌉`.
    pub(crate) fn half(&self) -> usize {
        self.n.div_ceil(2)
    }

    /// The shuffle of pass `pass ≥ 1` (computed on first use).
    pub(crate) fn shuffle(&self, pass: usize) -> &Shuffle {
        debug_assert!((1..MAX_PASSES).contains(&pass));
        self.passes[pass].get_or_init(|| Shuffle::generate(self.n, self.seed, pass))
    }

    /// Position of key bit `i` in the order of `pass`.
    #[inline]
    pub(crate) fn position(&self, pass: usize, i: usize) -> usize {
        if pass == 0 {
            i
        } else {
            self.shuffle(pass).pos.get(i)
        }
    }
}

impl Shuffle {
    fn generate(n: usize, seed: u64, pass: usize) -> Shuffle {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..12].copy_from_slice(&(pass as u32).to_le_bytes());
        let mut rng = ChaCha8Rng::from_seed(key);
        let ((half_mask, node_masks), order, pos) = if n <= 1 << 16 {
            let (order, pos) = Self::permutation::<u16>(n, &mut rng);
            (
                Self::masks(n, &order),
                Positions::Short(order),
                Positions::Short(pos),
            )
        } else {
            let (order, pos) = Self::permutation::<u32>(n, &mut rng);
            (
                Self::masks(n, &order),
                Positions::Long(order),
                Positions::Long(pos),
            )
        };
        Shuffle {
            order,
            pos,
            n,
            half_mask,
            node_masks,
        }
    }

    /// The Fisher–Yates permutation of the type docs and its inverse.
    fn permutation<T: Entry>(n: usize, rng: &mut ChaCha8Rng) -> (Vec<T>, Vec<T>) {
        let mut order: Vec<T> = (0..n).map(T::of).collect();
        for i in (1..n).rev() {
            let j = ((u64::from(rng.next_u32()) * (i as u64 + 1)) >> 32) as usize;
            order.swap(i, j);
        }
        let mut pos = vec![T::default(); n];
        for (j, &i) in order.iter().enumerate() {
            pos[i.at()] = T::of(j);
        }
        (order, pos)
    }

    /// The half mask and the node masks of a permutation `order`.
    #[allow(clippy::type_complexity)]
    fn masks<T: Entry>(n: usize, order: &[T]) -> (Vec<u64>, Vec<(u32, u32, Vec<u64>)>) {
        let mut half_mask = vec![0u64; n.div_ceil(64)];
        for &i in &order[..n.div_ceil(2)] {
            half_mask[i.at() / 64] |= 1 << (i.at() % 64);
        }
        let mut node_masks = Vec::new();
        let mut level = vec![(0, n.div_ceil(2)), (n.div_ceil(2), n)];
        for _ in 0..MASK_DEPTH {
            let mut next = Vec::new();
            for (s, e) in level {
                if e - s < 2 {
                    continue;
                }
                let m = s + (e - s).div_ceil(2);
                next.push((s, m));
                next.push((m, e));
            }
            for &(s, e) in &next {
                // Only the node masks: a node is useful when its range is
                // large enough that bit-by-bit reads would cost more.
                if e - s >= 4096 {
                    let mut mask = vec![0u64; n.div_ceil(64)];
                    for &i in &order[s..e] {
                        mask[i.at() / 64] |= 1 << (i.at() % 64);
                    }
                    node_masks.push((s as u32, e as u32, mask));
                }
            }
            level = next;
        }
        (half_mask, node_masks)
    }

    /// The key in this pass's order, packed.
    ///
    /// Each one bit of the key is written to its position in the copy
    /// (`pos`, read in key order, so the reads stream; the writes land in
    /// the copy, `n/8` bytes, which stays in the L1 cache). No key-sized
    /// temporary is built, so nothing besides the copy needs zeroizing.
    pub(crate) fn gather(&self, key: &BitVec) -> BitVec {
        match &self.pos {
            Positions::Short(pos) => Self::scatter(pos, key, self.n),
            Positions::Long(pos) => Self::scatter(pos, key, self.n),
        }
    }

    fn scatter<T: Entry>(pos: &[T], key: &BitVec, n: usize) -> BitVec {
        let len = n.div_ceil(64);
        // A power-of-two number of words, so that `& wrap` keeps every
        // index in bounds without a check (positions are below `n`, so the
        // words past `len` stay zero and are cut off below).
        let wrap = len.next_power_of_two() - 1;
        let mut words = vec![0u64; wrap + 1];
        let (full, last) = pos.as_chunks::<64>();
        let key_words = key.words();
        for (&w, pos) in key_words.iter().zip(full) {
            let mut rest = w;
            while rest != 0 {
                let j = pos[rest.trailing_zeros() as usize & 63].at();
                rest &= rest - 1;
                words[(j >> 6) & wrap] |= 1 << (j & 63);
            }
        }
        if let Some(&w) = key_words.get(full.len()) {
            // The last, partial word: its bits past `n` are zero.
            let mut rest = w;
            while rest != 0 {
                let j = last[rest.trailing_zeros() as usize].at();
                rest &= rest - 1;
                words[(j >> 6) & wrap] |= 1 << (j & 63);
            }
        }
        words.truncate(len);
        BitVec::from_words(words, n).expect("one word per 64 positions")
    }

    /// Parity of `start..end` of the shuffled key, bit by bit through the
    /// permutation (for a pass whose shuffled copy is not worth building).
    pub(crate) fn range_parity(&self, key: &BitVec, start: usize, end: usize) -> bool {
        fn fold<T: Entry>(order: &[T], src: &[u64]) -> bool {
            let acc = order
                .iter()
                .fold(0u64, |acc, &i| acc ^ (src[i.at() >> 6] >> (i.at() & 63)));
            acc & 1 == 1
        }
        match &self.order {
            Positions::Short(order) => fold(&order[start..end], key.words()),
            Positions::Long(order) => fold(&order[start..end], key.words()),
        }
    }

    /// Whether the parity of `start..end` is a word operation without the
    /// shuffled copy: the whole key, a half, or a node with a mask.
    pub(crate) fn has_mask(&self, start: usize, end: usize) -> bool {
        let (n, half) = (self.n, self.n.div_ceil(2));
        matches!((start, end), (0, e) if e == n || e == half)
            || (start == half && end == n)
            || self
                .node_masks
                .iter()
                .any(|(s, e, _)| *s as usize == start && *e as usize == end)
    }

    /// Parity of `start..end` of the shuffled key through a precomputed
    /// node mask, if there is one for exactly this range.
    pub(crate) fn node_parity(&self, key: &BitVec, start: usize, end: usize) -> Option<bool> {
        let (_, _, mask) = self
            .node_masks
            .iter()
            .find(|(s, e, _)| *s as usize == start && *e as usize == end)?;
        let acc = key
            .words()
            .iter()
            .zip(mask)
            .fold(0u64, |acc, (k, m)| acc ^ (k & m));
        Some(acc.count_ones() & 1 == 1)
    }

    /// Whether key bit `i` lies in the first half (`⌈n/2⌉` positions) of
    /// this pass's order.
    #[inline]
    pub(crate) fn in_first_half(&self, i: usize) -> bool {
        (self.half_mask[i / 64] >> (i % 64)) & 1 == 1
    }

    /// Parity of the first half of the shuffled key, on words.
    pub(crate) fn half_parity(&self, key: &BitVec) -> bool {
        let acc = key
            .words()
            .iter()
            .zip(&self.half_mask)
            .fold(0u64, |acc, (k, m)| acc ^ (k & m));
        acc.count_ones() & 1 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_are_permutations_and_reproducible() {
        let plan = ShufflePlan::new(1000, 42).unwrap();
        let again = ShufflePlan::new(1000, 42).unwrap();
        let other = ShufflePlan::new(1000, 43).unwrap();
        for pass in 1..4 {
            let s = plan.shuffle(pass);
            let order = s.order.to_vec();
            let mut seen = order.clone();
            seen.sort_unstable();
            assert!(seen.iter().enumerate().all(|(j, &i)| i as usize == j));
            assert!(
                order
                    .iter()
                    .enumerate()
                    .all(|(j, &i)| s.pos.get(i as usize) == j)
            );
            assert_eq!(order, again.shuffle(pass).order.to_vec());
            assert_ne!(order, other.shuffle(pass).order.to_vec());
        }
        assert_ne!(
            plan.shuffle(1).order.to_vec(),
            plan.shuffle(2).order.to_vec()
        );
        assert_eq!(plan.position(0, 17), 17);
    }

    #[test]
    fn gather_and_half_parity_match_bit_by_bit() {
        use rand_core::SeedableRng;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for n in [1usize, 2, 63, 64, 65, 999, 1000] {
            let plan = ShufflePlan::new(n, 9).unwrap();
            let key = BitVec::random(n, &mut rng);
            let s = plan.shuffle(1);
            let g = s.gather(&key);
            for j in 0..n {
                assert_eq!(g.get(j), key.get(s.order.get(j)));
            }
            assert_eq!(s.half_parity(&key), g.parity(0..n.div_ceil(2)));
            for (a, b, _) in &s.node_masks {
                let (a, b) = (*a as usize, *b as usize);
                assert_eq!(s.node_parity(&key, a, b), Some(g.parity(a..b)));
            }
            for (a, b) in [(0, n / 3), (n / 4, n / 2 + 1)] {
                assert_eq!(s.range_parity(&key, a, b), g.parity(a..b));
            }
        }
        // Large keys get node masks for the first levels of the half trees.
        let n = 40_000;
        let plan = ShufflePlan::new(n, 4).unwrap();
        let key = BitVec::random(n, &mut rng);
        let s = plan.shuffle(2);
        // Depth 1 and 2 below the two halves (10 000 and 5 000 bits); nodes of
        // 2 500 bits are too small to need a mask.
        assert_eq!(s.node_masks.len(), 4 + 8);
        let g = s.gather(&key);
        for (a, b, _) in &s.node_masks {
            let (a, b) = (*a as usize, *b as usize);
            assert_eq!(s.node_parity(&key, a, b), Some(g.parity(a..b)));
        }
    }

    #[test]
    fn bad_lengths_are_rejected() {
        assert!(ShufflePlan::new(0, 1).is_err());
    }
}
