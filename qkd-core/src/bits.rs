//! Bit vectors packed in `u64` words, and borrowed bit slices.
//!
//! Bit `i` is bit `i % 64` of word `i / 64`; as bytes, bit `i` is bit `i % 8`
//! of byte `i / 8` (least significant bit first). Every crate and file format
//! of the workspace uses this order.
//!
//! Range operations (parity, popcount, XOR, copy) work a word at a time; no
//! operation here loops over single bits except [`BitVec::get`]/[`BitVec::set`]
//! themselves and the bit iterators.
//!
//! A [`BitVec`] usually carries key material (sifted, corrected or final key),
//! so its storage is zeroized on drop, no growth leaves a copy of its bits in
//! freed memory (a reallocation moves the words and zeroizes the old buffer
//! before freeing it), equality is decided in constant time for vectors of
//! the same length, and its `Debug` output shows only the length.

use core::fmt;
use core::ops::{BitXorAssign, Bound, Range, RangeBounds};

use rand_core::Rng;
use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, Zeroizing};

use crate::Error;

const WORD: usize = 64;

/// Number of `u64` words needed for `bits` bits.
#[inline]
#[must_use]
pub const fn words_for(bits: usize) -> usize {
    bits.div_ceil(WORD)
}

/// `EXTRACT[mask][value]`: the bits of `value` where `mask` has ones,
/// packed towards bit 0 (a byte-wide parallel bit extract), for
/// [`BitVec::select`].
static EXTRACT: [[u8; 256]; 256] = extract_table();

/// `ONES[byte]`: the number of one bits of `byte` (a table: the baseline
/// x86-64 target has no population-count instruction).
static ONES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = (byte as u8).count_ones() as u8;
        byte += 1;
    }
    table
};

const fn extract_table() -> [[u8; 256]; 256] {
    let mut table = [[0u8; 256]; 256];
    let mut mask = 0;
    while mask < 256 {
        let mut value = 0;
        while value < 256 {
            let mut out = 0u8;
            let mut n = 0;
            let mut bit = 0;
            while bit < 8 {
                if mask >> bit & 1 == 1 {
                    out |= ((value >> bit & 1) as u8) << n;
                    n += 1;
                }
                bit += 1;
            }
            table[mask][value] = out;
            value += 1;
        }
        mask += 1;
    }
    table
}

/// Mask with the low `n` bits set, `n` in `0..=64`.
#[inline]
const fn low_mask(n: usize) -> u64 {
    if n >= WORD { u64::MAX } else { (1u64 << n) - 1 }
}

/// Reads `n` bits (`1..=64`) starting at bit `pos`, returned in the low bits.
#[inline]
fn load(words: &[u64], pos: usize, n: usize) -> u64 {
    debug_assert!((1..=WORD).contains(&n));
    let w = pos / WORD;
    let off = pos % WORD;
    let mut v = words[w] >> off;
    if off != 0 && off + n > WORD {
        v |= words[w + 1] << (WORD - off);
    }
    v & low_mask(n)
}

/// XORs the low `n` bits of `v` into `words` at bit `pos`.
#[inline]
fn xor_at(words: &mut [u64], pos: usize, v: u64, n: usize) {
    let v = v & low_mask(n);
    let w = pos / WORD;
    let off = pos % WORD;
    words[w] ^= v << off;
    if off != 0 && off + n > WORD {
        words[w + 1] ^= v >> (WORD - off);
    }
}

/// XOR of all bits in `[start, end)`.
#[inline]
fn parity_range(words: &[u64], start: usize, end: usize) -> bool {
    // Ranges inside one word (most binary-search steps) take one masked
    // popcount, inlined; the rest fold the words out of line.
    if start < end && start / WORD == (end - 1) / WORD {
        let w = words[start / WORD] >> (start % WORD);
        return (w & low_mask(end - start)).count_ones() & 1 == 1;
    }
    parity_words(words, start, end)
}

#[inline(never)]
fn parity_words(words: &[u64], start: usize, end: usize) -> bool {
    fold_range(words, start, end, 0u64, |acc, w| acc ^ w).count_ones() & 1 == 1
}

/// Number of ones in `[start, end)`.
#[inline]
fn count_ones_range(words: &[u64], start: usize, end: usize) -> usize {
    fold_range(words, start, end, 0usize, |acc, w| {
        acc + w.count_ones() as usize
    })
}

/// Folds `f` over the words covering `[start, end)`, with the bits outside
/// the range masked to zero.
#[inline]
fn fold_range<T>(words: &[u64], start: usize, end: usize, init: T, f: impl Fn(T, u64) -> T) -> T {
    if start >= end {
        return init;
    }
    let first = start / WORD;
    let last = (end - 1) / WORD;
    let head_mask = u64::MAX << (start % WORD);
    let tail_mask = low_mask(end - last * WORD);
    if first == last {
        return f(init, words[first] & head_mask & tail_mask);
    }
    let mut acc = f(init, words[first] & head_mask);
    for &w in &words[first + 1..last] {
        acc = f(acc, w);
    }
    f(acc, words[last] & tail_mask)
}

fn resolve_range(range: impl RangeBounds<usize>, len: usize) -> Range<usize> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e + 1,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => len,
    };
    assert!(
        start <= end && end <= len,
        "bit range {start}..{end} out of bounds for length {len}"
    );
    start..end
}

/// A growable vector of bits packed in `u64` words.
///
/// Bits past [`len`](Self::len) in the last word are always zero. The words are
/// zeroized when the vector is dropped; when the vector grows past its
/// capacity ([`push`](Self::push), [`push_bits`](Self::push_bits),
/// [`extend_from_bitslice`](Self::extend_from_bitslice), `Extend`,
/// `FromIterator`) the words move to a new buffer and the old one is zeroized
/// before it is freed. `==` compares the words in constant time (the lengths
/// are not secret), also available as [`ConstantTimeEq`]. `Debug` shows only
/// the length.
///
/// ```
/// use qkd_core::BitVec;
///
/// let mut key = BitVec::from_bytes_lsb(&[0b0000_0101, 0xff], 12).unwrap();
/// assert!(key.get(0) && !key.get(1) && key.get(2));
/// assert_eq!(key.count_ones(), 6);
/// assert!(!key.parity(0..12)); // six ones: even parity
/// key.flip(1);
/// assert!(key.parity(..));
/// let tail = key.slice(8..12).to_bitvec();
/// assert_eq!(tail.to_bytes_lsb(), vec![0x0f]);
/// ```
#[derive(Clone, Default)]
pub struct BitVec {
    words: Vec<u64>,
    len: usize,
}

impl Drop for BitVec {
    fn drop(&mut self) {
        self.words.zeroize();
    }
}

impl fmt::Debug for BitVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BitVec")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl ConstantTimeEq for BitVec {
    /// Constant time in the bits; vectors of different lengths are unequal
    /// (the lengths are public).
    fn ct_eq(&self, other: &Self) -> Choice {
        if self.len != other.len {
            return Choice::from(0);
        }
        self.words.as_slice().ct_eq(other.words.as_slice())
    }
}

impl PartialEq for BitVec {
    /// Constant time in the bits, as [`ConstantTimeEq::ct_eq`].
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}
impl Eq for BitVec {}

impl BitVec {
    /// An empty vector.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            words: Vec::new(),
            len: 0,
        }
    }

    /// An empty vector with room for `bits` bits.
    #[must_use]
    pub fn with_capacity(bits: usize) -> Self {
        Self {
            words: Vec::with_capacity(words_for(bits)),
            len: 0,
        }
    }

    /// `len` zero bits.
    #[must_use]
    pub fn zeros(len: usize) -> Self {
        Self {
            words: vec![0; words_for(len)],
            len,
        }
    }

    /// `len` one bits.
    #[must_use]
    pub fn ones(len: usize) -> Self {
        let mut v = Self {
            words: vec![u64::MAX; words_for(len)],
            len,
        };
        v.clear_tail();
        v
    }

    /// `len` bits drawn uniformly from `rng`, one `next_u64` per word.
    pub fn random<R: Rng + ?Sized>(len: usize, rng: &mut R) -> Self {
        let mut v = Self::zeros(len);
        v.fill_random(rng);
        v
    }

    /// Overwrites every bit with a uniformly random one from `rng`.
    pub fn fill_random<R: Rng + ?Sized>(&mut self, rng: &mut R) {
        for w in &mut self.words {
            *w = rng.next_u64();
        }
        self.clear_tail();
    }

    /// Builds a vector from packed words; bits past `len` are cleared.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] if `words` does not hold exactly
    /// `ceil(len / 64)` words.
    pub fn from_words(words: Vec<u64>, len: usize) -> Result<Self, Error> {
        if words.len() != words_for(len) {
            return Err(Error::InvalidLength {
                expected: words_for(len),
                actual: words.len(),
            });
        }
        let mut v = Self { words, len };
        v.clear_tail();
        Ok(v)
    }

    /// Reads `len` bits from LSB-first bytes. Bits of the last byte past `len`
    /// are ignored.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] if `bytes` does not hold exactly
    /// `ceil(len / 8)` bytes.
    pub fn from_bytes_lsb(bytes: &[u8], len: usize) -> Result<Self, Error> {
        let need = len.div_ceil(8);
        if bytes.len() != need {
            return Err(Error::InvalidLength {
                expected: need,
                actual: bytes.len(),
            });
        }
        let mut words = vec![0u64; words_for(len)];
        let whole = bytes.chunks_exact(8);
        let tail = whole.remainder();
        for (w, chunk) in words.iter_mut().zip(whole) {
            // `chunks_exact` gives 8 bytes: the conversion cannot fail.
            *w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        }
        if !tail.is_empty() {
            let mut buf = [0u8; 8];
            buf[..tail.len()].copy_from_slice(tail);
            words[bytes.len() / 8] = u64::from_le_bytes(buf);
            buf.zeroize();
        }
        let mut v = Self { words, len };
        v.clear_tail();
        Ok(v)
    }

    /// The bits as LSB-first bytes, `ceil(len / 8)` of them; bits of the last
    /// byte past `len` are zero.
    #[must_use]
    pub fn to_bytes_lsb(&self) -> Vec<u8> {
        self.as_bitslice().to_bytes_lsb()
    }

    /// Number of bits.
    #[inline]
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the vector holds no bits.
    #[inline]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The packed words; bits past `len` in the last word are zero.
    #[inline]
    #[must_use]
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Takes the packed words out, leaving an empty vector; they stay
    /// zeroized on drop.
    #[must_use]
    pub fn into_words(mut self) -> Zeroizing<Vec<u64>> {
        self.len = 0;
        Zeroizing::new(core::mem::take(&mut self.words))
    }

    /// Makes room for `additional` more words. When the buffer must grow, the
    /// words move to a new allocation (at least twice the old capacity, so
    /// pushes stay amortised O(1)) and the old buffer is zeroized before it
    /// is freed: `Vec::reserve` or a `Vec::push` past the capacity would hand
    /// it to the allocator with the bits still in it.
    #[inline]
    fn reserve_words(&mut self, additional: usize) {
        let need = self
            .words
            .len()
            .checked_add(additional)
            .expect("BitVec capacity overflow");
        if need > self.words.capacity() {
            self.grow_words(need);
        }
    }

    /// The slow path of [`reserve_words`](Self::reserve_words).
    #[cold]
    #[inline(never)]
    fn grow_words(&mut self, need: usize) {
        let mut grown = Vec::with_capacity(need.max(2 * self.words.capacity()).max(4));
        grown.extend_from_slice(&self.words);
        let mut old = core::mem::replace(&mut self.words, grown);
        // Zeroizes the whole allocation, spare capacity included.
        old.zeroize();
    }

    /// Bit `i`.
    ///
    /// # Panics
    /// If `i >= len`.
    #[inline]
    #[must_use]
    pub fn get(&self, i: usize) -> bool {
        assert!(
            i < self.len,
            "bit index {i} out of bounds for length {}",
            self.len
        );
        (self.words[i / WORD] >> (i % WORD)) & 1 == 1
    }

    /// Sets bit `i` to `value`.
    ///
    /// # Panics
    /// If `i >= len`.
    #[inline]
    pub fn set(&mut self, i: usize, value: bool) {
        assert!(
            i < self.len,
            "bit index {i} out of bounds for length {}",
            self.len
        );
        let w = &mut self.words[i / WORD];
        let m = 1u64 << (i % WORD);
        if value { *w |= m } else { *w &= !m }
    }

    /// Inverts bit `i`.
    ///
    /// # Panics
    /// If `i >= len`.
    #[inline]
    pub fn flip(&mut self, i: usize) {
        assert!(
            i < self.len,
            "bit index {i} out of bounds for length {}",
            self.len
        );
        self.words[i / WORD] ^= 1u64 << (i % WORD);
    }

    /// Appends one bit.
    #[inline]
    pub fn push(&mut self, value: bool) {
        self.push_bits(u64::from(value), 1);
    }

    /// Appends the low `n` bits of `bits` (`n` in `0..=64`), bit 0 first.
    ///
    /// # Panics
    /// If `n > 64`.
    #[inline]
    pub fn push_bits(&mut self, bits: u64, n: usize) {
        assert!(n <= WORD, "push_bits takes at most 64 bits, got {n}");
        if n == 0 {
            return;
        }
        let bits = bits & low_mask(n);
        let off = self.len % WORD;
        if off == 0 || off + n > WORD {
            self.reserve_words(1);
        }
        if off == 0 {
            self.words.push(bits);
        } else {
            let last = self.words.len() - 1;
            self.words[last] |= bits << off;
            if off + n > WORD {
                self.words.push(bits >> (WORD - off));
            }
        }
        self.len += n;
    }

    /// Appends all bits of `src`, 64 at a time.
    pub fn extend_from_bitslice(&mut self, src: BitSlice<'_>) {
        self.reserve_words(words_for(self.len + src.len) - self.words.len());
        let mut pos = 0;
        while pos < src.len {
            let n = (src.len - pos).min(WORD);
            self.push_bits(load(src.words, src.start + pos, n), n);
            pos += n;
        }
    }

    /// The concatenation of `parts`, in order.
    #[must_use]
    pub fn concat(parts: &[BitSlice<'_>]) -> Self {
        let mut v = Self::with_capacity(parts.iter().map(BitSlice::len).sum());
        for p in parts {
            v.extend_from_bitslice(*p);
        }
        v
    }

    /// Shortens the vector to `len` bits (no effect if already shorter).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        let keep = words_for(len);
        self.words[keep..].zeroize();
        self.words.truncate(keep);
        self.len = len;
        self.clear_tail();
    }

    /// Removes all bits (zeroizing the storage, keeping the allocation).
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// A borrowed view of the whole vector.
    #[inline]
    #[must_use]
    pub fn as_bitslice(&self) -> BitSlice<'_> {
        BitSlice {
            words: &self.words,
            start: 0,
            len: self.len,
        }
    }

    /// A borrowed view of the bits in `range`.
    ///
    /// # Panics
    /// If the range is out of bounds.
    #[inline]
    #[must_use]
    pub fn slice(&self, range: impl RangeBounds<usize>) -> BitSlice<'_> {
        self.as_bitslice().slice(range)
    }

    /// XOR (parity) of the bits in `range`, computed on whole words.
    ///
    /// # Panics
    /// If the range is out of bounds.
    #[inline]
    #[must_use]
    pub fn parity(&self, range: impl RangeBounds<usize>) -> bool {
        let r = resolve_range(range, self.len);
        parity_range(&self.words, r.start, r.end)
    }

    /// Number of one bits.
    #[must_use]
    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Number of positions where `self` and `other` differ.
    ///
    /// # Panics
    /// If the lengths differ.
    #[must_use]
    pub fn hamming_distance(&self, other: &BitVec) -> usize {
        assert_eq!(
            self.len, other.len,
            "hamming_distance of vectors of different lengths"
        );
        self.words
            .iter()
            .zip(&other.words)
            .map(|(a, b)| (a ^ b).count_ones() as usize)
            .sum()
    }

    /// `self[at .. at + src.len()] ^= src`, a word at a time.
    ///
    /// # Panics
    /// If the target range is out of bounds.
    pub fn xor_range_assign(&mut self, at: usize, src: BitSlice<'_>) {
        assert!(
            at.checked_add(src.len).is_some_and(|end| end <= self.len),
            "xor of {} bits at {at} out of bounds for length {}",
            src.len,
            self.len
        );
        let mut pos = 0;
        while pos < src.len {
            let n = (src.len - pos).min(WORD);
            xor_at(
                &mut self.words,
                at + pos,
                load(src.words, src.start + pos, n),
                n,
            );
            pos += n;
        }
    }

    /// Inverts every bit.
    pub fn invert(&mut self) {
        for w in &mut self.words {
            *w = !*w;
        }
        self.clear_tail();
    }

    /// The bits at the positions where `mask` is set, in order (a gather,
    /// as used by sifting). Works a word at a time: one BMI2 `pext` per word
    /// where the CPU has a fast one (checked at run time), else a byte of
    /// the word per table lookup; the same bits either way.
    ///
    /// # Panics
    /// If the lengths differ.
    #[must_use]
    pub fn select(&self, mask: &BitVec) -> BitVec {
        assert_eq!(
            self.len, mask.len,
            "select with a mask of a different length"
        );
        let mut out = BitVec::with_capacity(mask.count_ones());
        if crate::pext::select_words(&self.words, &mask.words, &mut out) {
            return out;
        }
        self.select_by_table(mask, out)
    }

    /// [`select`](Self::select) without BMI2: a byte of each word per
    /// lookup in the extraction table, appended to `out`.
    fn select_by_table(&self, mask: &BitVec, mut out: BitVec) -> BitVec {
        for (&w, &m) in self.words.iter().zip(&mask.words) {
            if m == u64::MAX {
                out.push_bits(w, WORD);
                continue;
            }
            if m == 0 {
                continue;
            }
            // A byte at a time through the extraction table: eight lookups
            // per word instead of a step per selected bit.
            let mut v = 0u64;
            let mut n = 0;
            for byte in 0..8 {
                let mb = (m >> (8 * byte)) as u8;
                let wb = (w >> (8 * byte)) as u8;
                // n ≤ 56 here, so the shift stays inside the word.
                v |= u64::from(EXTRACT[usize::from(mb)][usize::from(wb)]) << n;
                n += usize::from(ONES[usize::from(mb)]);
            }
            out.push_bits(v, n);
        }
        out
    }

    /// Iterator over the bits, first to last.
    #[must_use]
    pub fn iter(&self) -> BitIter<'_> {
        self.as_bitslice().iter()
    }

    /// Iterator over the indices of the one bits, in increasing order.
    pub fn iter_ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            core::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(wi * WORD + b)
            })
        })
    }

    fn clear_tail(&mut self) {
        let r = self.len % WORD;
        if r != 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= low_mask(r);
        }
    }
}

impl BitXorAssign<&BitVec> for BitVec {
    /// Bitwise XOR of two vectors of the same length.
    ///
    /// # Panics
    /// If the lengths differ.
    fn bitxor_assign(&mut self, rhs: &BitVec) {
        assert_eq!(self.len, rhs.len, "xor of vectors of different lengths");
        for (a, b) in self.words.iter_mut().zip(&rhs.words) {
            *a ^= b;
        }
    }
}

impl FromIterator<bool> for BitVec {
    fn from_iter<I: IntoIterator<Item = bool>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut v = BitVec::with_capacity(iter.size_hint().0);
        let mut acc = 0u64;
        let mut n = 0;
        for b in iter {
            acc |= u64::from(b) << n;
            n += 1;
            if n == WORD {
                v.push_bits(acc, WORD);
                acc = 0;
                n = 0;
            }
        }
        v.push_bits(acc, n);
        v
    }
}

impl Extend<bool> for BitVec {
    fn extend<I: IntoIterator<Item = bool>>(&mut self, iter: I) {
        let iter = iter.into_iter();
        self.reserve_words(words_for(self.len + iter.size_hint().0) - self.words.len());
        for b in iter {
            self.push(b);
        }
    }
}

impl<'a> From<BitSlice<'a>> for BitVec {
    fn from(s: BitSlice<'a>) -> Self {
        s.to_bitvec()
    }
}

/// A borrowed, read-only view of a range of bits.
///
/// Slices need not start on a word boundary; every operation reads whole words
/// and shifts.
#[derive(Clone, Copy)]
pub struct BitSlice<'a> {
    words: &'a [u64],
    start: usize,
    len: usize,
}

impl fmt::Debug for BitSlice<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BitSlice")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl ConstantTimeEq for BitSlice<'_> {
    /// Constant time in the bits; slices of different lengths are unequal
    /// (the lengths are public).
    fn ct_eq(&self, other: &Self) -> Choice {
        if self.len != other.len {
            return Choice::from(0);
        }
        let mut diff = 0u64;
        let mut pos = 0;
        while pos < self.len {
            let n = (self.len - pos).min(WORD);
            diff |= load(self.words, self.start + pos, n) ^ load(other.words, other.start + pos, n);
            pos += n;
        }
        diff.ct_eq(&0)
    }
}

impl PartialEq for BitSlice<'_> {
    /// Constant time in the bits, as [`ConstantTimeEq::ct_eq`].
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}
impl Eq for BitSlice<'_> {}

impl<'a> BitSlice<'a> {
    /// A view of the first `len` bits of `words`.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] if `words` holds fewer than `len` bits.
    pub fn from_words(words: &'a [u64], len: usize) -> Result<Self, Error> {
        if words.len() < words_for(len) {
            return Err(Error::InvalidLength {
                expected: words_for(len),
                actual: words.len(),
            });
        }
        Ok(Self {
            words,
            start: 0,
            len,
        })
    }

    /// Number of bits.
    #[inline]
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the slice holds no bits.
    #[inline]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bit `i` of the slice.
    ///
    /// # Panics
    /// If `i >= len`.
    #[inline]
    #[must_use]
    pub fn get(&self, i: usize) -> bool {
        assert!(
            i < self.len,
            "bit index {i} out of bounds for length {}",
            self.len
        );
        let p = self.start + i;
        (self.words[p / WORD] >> (p % WORD)) & 1 == 1
    }

    /// Up to 64 bits starting at `i`, in the low bits of the result
    /// (`n` in `1..=64`).
    ///
    /// # Panics
    /// If `n` is not in `1..=64` or the bits are out of bounds.
    #[inline]
    #[must_use]
    pub fn load_bits(&self, i: usize, n: usize) -> u64 {
        assert!(
            (1..=WORD).contains(&n),
            "load_bits takes 1..=64 bits, got {n}"
        );
        assert!(
            i + n <= self.len,
            "bits {i}..{} out of bounds for length {}",
            i + n,
            self.len
        );
        load(self.words, self.start + i, n)
    }

    /// A sub-slice; bit `0` of the result is bit `range.start` of `self`.
    ///
    /// # Panics
    /// If the range is out of bounds.
    #[inline]
    #[must_use]
    pub fn slice(&self, range: impl RangeBounds<usize>) -> BitSlice<'a> {
        let r = resolve_range(range, self.len);
        BitSlice {
            words: self.words,
            start: self.start + r.start,
            len: r.end - r.start,
        }
    }

    /// XOR (parity) of all bits of the slice.
    #[inline]
    #[must_use]
    pub fn parity(&self) -> bool {
        parity_range(self.words, self.start, self.start + self.len)
    }

    /// Number of one bits.
    #[inline]
    #[must_use]
    pub fn count_ones(&self) -> usize {
        count_ones_range(self.words, self.start, self.start + self.len)
    }

    /// Number of positions where the two slices differ.
    ///
    /// # Panics
    /// If the lengths differ.
    #[must_use]
    pub fn hamming_distance(&self, other: BitSlice<'_>) -> usize {
        assert_eq!(
            self.len, other.len,
            "hamming_distance of slices of different lengths"
        );
        let mut d = 0;
        let mut pos = 0;
        while pos < self.len {
            let n = (self.len - pos).min(WORD);
            let a = load(self.words, self.start + pos, n);
            let b = load(other.words, other.start + pos, n);
            d += (a ^ b).count_ones() as usize;
            pos += n;
        }
        d
    }

    /// An owned copy.
    #[must_use]
    pub fn to_bitvec(&self) -> BitVec {
        if self.start.is_multiple_of(WORD) {
            let first = self.start / WORD;
            let words = self.words[first..first + words_for(self.len)].to_vec();
            let mut v = BitVec {
                words,
                len: self.len,
            };
            v.clear_tail();
            return v;
        }
        let mut v = BitVec::with_capacity(self.len);
        v.extend_from_bitslice(*self);
        v
    }

    /// The bits as LSB-first bytes; bits of the last byte past `len` are zero.
    #[must_use]
    pub fn to_bytes_lsb(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.append_bytes_lsb(&mut out);
        out
    }

    /// Appends the bits to `out` as LSB-first bytes, `ceil(len / 8)` of
    /// them, bits of the last byte past `len` zero: what
    /// [`to_bytes_lsb`](Self::to_bytes_lsb) returns, without a temporary
    /// (a message encoder writes key bits straight into the message).
    pub fn append_bytes_lsb(&self, out: &mut Vec<u8>) {
        let at = out.len();
        out.resize(at + self.len.div_ceil(8), 0);
        let word = |i: usize| {
            let pos = i * WORD;
            let n = (self.len - pos).min(WORD);
            if self.start.is_multiple_of(WORD) {
                self.words[self.start / WORD + i] & low_mask(n)
            } else {
                load(self.words, self.start + pos, n)
            }
        };
        let mut whole = out[at..].chunks_exact_mut(8);
        let mut i = 0;
        for bytes in &mut whole {
            bytes.copy_from_slice(&word(i).to_le_bytes());
            i += 1;
        }
        let tail = whole.into_remainder();
        if !tail.is_empty() {
            let len = tail.len();
            tail.copy_from_slice(&word(i).to_le_bytes()[..len]);
        }
    }

    /// Iterator over the bits, first to last.
    #[must_use]
    pub fn iter(&self) -> BitIter<'a> {
        BitIter {
            slice: *self,
            pos: 0,
        }
    }
}

/// Iterator over the bits of a [`BitSlice`] or [`BitVec`].
#[derive(Clone, Debug)]
pub struct BitIter<'a> {
    slice: BitSlice<'a>,
    pos: usize,
}

impl Iterator for BitIter<'_> {
    type Item = bool;

    #[inline]
    fn next(&mut self) -> Option<bool> {
        if self.pos >= self.slice.len {
            return None;
        }
        let b = self.slice.get(self.pos);
        self.pos += 1;
        Some(b)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.slice.len - self.pos;
        (n, Some(n))
    }
}

impl ExactSizeIterator for BitIter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model(v: &BitVec) -> Vec<bool> {
        v.iter().collect()
    }

    fn bits(max: usize) -> impl Strategy<Value = Vec<bool>> {
        proptest::collection::vec(any::<bool>(), 0..max)
    }

    /// A vector with a range inside it.
    fn bits_and_range(max: usize) -> impl Strategy<Value = (Vec<bool>, Range<usize>)> {
        bits(max).prop_flat_map(|b| {
            let n = b.len();
            (Just(b), 0..=n).prop_flat_map(move |(b, s)| (Just(b), (s..=n).prop_map(move |e| s..e)))
        })
    }

    #[test]
    fn known_layout() {
        let v = BitVec::from_bytes_lsb(&[0x01, 0x80, 0x03], 18).unwrap();
        assert_eq!(v.iter_ones().collect::<Vec<_>>(), vec![0, 15, 16, 17]);
        assert_eq!(v.words(), &[0x0003_8001]);
        let w = BitVec::from_bytes_lsb(&[0xff; 9], 65).unwrap();
        assert_eq!(w.words(), &[u64::MAX, 1]);
        assert_eq!(
            w.to_bytes_lsb(),
            vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn length_errors_are_typed() {
        assert_eq!(
            BitVec::from_bytes_lsb(&[0; 3], 8),
            Err(Error::InvalidLength {
                expected: 1,
                actual: 3
            })
        );
        assert!(BitVec::from_words(vec![0; 2], 64).is_err());
        assert!(BitSlice::from_words(&[0], 65).is_err());
    }

    #[test]
    fn tails_stay_zero() {
        let v = BitVec::ones(70);
        assert_eq!(v.words()[1], 0b11_1111);
        let v = BitVec::from_words(vec![u64::MAX, u64::MAX], 65).unwrap();
        assert_eq!(v.words()[1], 1);
        assert_eq!(v.count_ones(), 65);
    }

    #[test]
    fn random_fill_is_balanced_and_seeded() {
        use rand_chacha::ChaCha8Rng;
        use rand_core::SeedableRng;
        let a = BitVec::random(100_000, &mut ChaCha8Rng::seed_from_u64(7));
        let b = BitVec::random(100_000, &mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!(a, b);
        let ones = a.count_ones() as f64 / 100_000.0;
        assert!((ones - 0.5).abs() < 0.01, "{ones}");
        let c = BitVec::random(100, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(c.words()[1] >> 36, 0, "tail must be cleared");
    }

    #[test]
    fn debug_does_not_show_bits() {
        let v = BitVec::ones(16);
        assert_eq!(format!("{v:?}"), "BitVec { len: 16, .. }");
    }

    proptest! {
        #[test]
        fn from_iter_roundtrips(b in bits(300)) {
            let v: BitVec = b.iter().copied().collect();
            prop_assert_eq!(v.len(), b.len());
            prop_assert_eq!(model(&v), b);
        }

        #[test]
        fn bytes_roundtrip(b in bits(300)) {
            let v: BitVec = b.iter().copied().collect();
            let bytes = v.to_bytes_lsb();
            prop_assert_eq!(bytes.len(), b.len().div_ceil(8));
            for (i, &bit) in b.iter().enumerate() {
                prop_assert_eq!((bytes[i / 8] >> (i % 8)) & 1 == 1, bit);
            }
            prop_assert_eq!(BitVec::from_bytes_lsb(&bytes, b.len()).unwrap(), v);
        }

        /// A slice at any offset appends exactly its bits' bytes after
        /// what the buffer held, the padding bits zero.
        #[test]
        fn slice_bytes_append((b, r) in bits_and_range(300), prefix in proptest::collection::vec(any::<u8>(), 0..5)) {
            let v: BitVec = b.iter().copied().collect();
            let mut out = prefix.clone();
            v.slice(r.clone()).append_bytes_lsb(&mut out);
            let part = &b[r];
            prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
            let bytes = &out[prefix.len()..];
            prop_assert_eq!(bytes.len(), part.len().div_ceil(8));
            for i in 0..bytes.len() * 8 {
                let want = part.get(i).copied().unwrap_or(false);
                prop_assert_eq!((bytes[i / 8] >> (i % 8)) & 1 == 1, want);
            }
        }

        #[test]
        fn set_get_flip((b, r) in bits_and_range(300), value: bool) {
            let mut v: BitVec = b.iter().copied().collect();
            let mut m = b.clone();
            if r.start < b.len() {
                v.set(r.start, value);
                m[r.start] = value;
                prop_assert_eq!(v.get(r.start), value);
                v.flip(r.start);
                m[r.start] = !m[r.start];
            }
            prop_assert_eq!(model(&v), m);
        }

        #[test]
        fn parity_and_count((b, r) in bits_and_range(400)) {
            let v: BitVec = b.iter().copied().collect();
            let ones = b[r.clone()].iter().filter(|&&x| x).count();
            prop_assert_eq!(v.parity(r.clone()), ones % 2 == 1);
            prop_assert_eq!(v.slice(r.clone()).parity(), ones % 2 == 1);
            prop_assert_eq!(v.slice(r.clone()).count_ones(), ones);
            prop_assert_eq!(v.count_ones(), b.iter().filter(|&&x| x).count());
        }

        #[test]
        fn slicing_and_nested_slicing((b, r) in bits_and_range(300), cut in 0usize..300) {
            let v: BitVec = b.iter().copied().collect();
            let s = v.slice(r.clone());
            prop_assert_eq!(s.to_bitvec().iter().collect::<Vec<_>>(), b[r.clone()].to_vec());
            let c = cut % (s.len() + 1);
            let inner = s.slice(c..);
            prop_assert_eq!(inner.iter().collect::<Vec<_>>(), b[r.start + c..r.end].to_vec());
            prop_assert_eq!(inner.to_bytes_lsb(), inner.to_bitvec().to_bytes_lsb());
            for i in 0..s.len().saturating_sub(1).min(64) {
                let n = (s.len() - i).min(64);
                let word = s.load_bits(i, n);
                for k in 0..n {
                    prop_assert_eq!((word >> k) & 1 == 1, b[r.start + i + k]);
                }
            }
        }

        #[test]
        fn concat_and_push_bits(a in bits(200), c in bits(200), w: u64, n in 0usize..=64) {
            let va: BitVec = a.iter().copied().collect();
            let vc: BitVec = c.iter().copied().collect();
            let joined = BitVec::concat(&[va.as_bitslice(), vc.slice(..), va.slice(a.len() / 2..)]);
            let mut m = a.clone();
            m.extend(&c);
            m.extend(&a[a.len() / 2..]);
            prop_assert_eq!(model(&joined), m.clone());
            let mut pushed = joined.clone();
            pushed.push_bits(w, n);
            m.extend((0..n).map(|k| (w >> k) & 1 == 1));
            prop_assert_eq!(model(&pushed), m);
        }

        #[test]
        fn xor_range_assign_matches_model((b, r) in bits_and_range(300), src in bits(300), at in 0usize..300) {
            let mut v: BitVec = b.iter().copied().collect();
            let s: BitVec = src.iter().copied().collect();
            let piece = s.slice(r.start.min(src.len())..r.end.min(src.len()));
            let at = if b.len() >= piece.len() { at % (b.len() - piece.len() + 1) } else { 0 };
            prop_assume!(piece.len() <= b.len());
            v.xor_range_assign(at, piece);
            let mut m = b.clone();
            for (k, bit) in piece.iter().enumerate() {
                m[at + k] ^= bit;
            }
            prop_assert_eq!(model(&v), m);
            prop_assert_eq!(v.words().last().map_or(0, |w| if b.len() % 64 == 0 { 0 } else { w >> (b.len() % 64) }), 0);
        }

        #[test]
        fn hamming_distance_matches_model(pairs in proptest::collection::vec(any::<(bool, bool)>(), 0..300), skip in 0usize..80) {
            let a: BitVec = pairs.iter().map(|p| p.0).collect();
            let b: BitVec = pairs.iter().map(|p| p.1).collect();
            let d = pairs.iter().filter(|p| p.0 != p.1).count();
            prop_assert_eq!(a.hamming_distance(&b), d);
            let k = skip.min(pairs.len());
            let ds = pairs[k..].iter().filter(|p| p.0 != p.1).count();
            prop_assert_eq!(a.slice(k..).hamming_distance(b.slice(k..)), ds);
            let mut x = a.clone();
            x ^= &b;
            prop_assert_eq!(x.count_ones(), d);
        }

        #[test]
        fn truncate_matches_model(b in bits(300), n in 0usize..300) {
            let mut v: BitVec = b.iter().copied().collect();
            v.truncate(n);
            let m: Vec<bool> = b.iter().copied().take(n).collect();
            prop_assert_eq!(model(&v), m.clone());
            let rebuilt: BitVec = m.into_iter().collect();
            prop_assert_eq!(v, rebuilt);
        }

        #[test]
        fn select_and_invert_match_model(pairs in proptest::collection::vec(any::<(bool, bool)>(), 0..400)) {
            let v: BitVec = pairs.iter().map(|p| p.0).collect();
            let mask: BitVec = pairs.iter().map(|p| p.1).collect();
            let want: Vec<bool> = pairs.iter().filter(|p| p.1).map(|p| p.0).collect();
            prop_assert_eq!(model(&v.select(&mask)), want);
            prop_assert_eq!(model(&v.select(&BitVec::ones(v.len()))), model(&v));
            let mut inv = v.clone();
            inv.invert();
            prop_assert_eq!(model(&inv), pairs.iter().map(|p| !p.0).collect::<Vec<_>>());
            prop_assert_eq!(inv.count_ones(), v.len() - v.count_ones());
        }

        #[test]
        fn pext_select_matches_the_table_gather(
            words in proptest::collection::vec(any::<u64>(), 0..40),
            masks in proptest::collection::vec(any::<u64>(), 0..40),
            dense in any::<bool>(),
        ) {
            let n = words.len().min(masks.len());
            let v: BitVec = (0..n * 64).map(|i| words[i / 64] >> (i % 64) & 1 == 1).collect();
            // Dense masks (most bits set) as well as uniform ones.
            let m: BitVec = (0..n * 64)
                .map(|i| {
                    let bit = masks[i / 64] >> (i % 64) & 1 == 1;
                    if dense { bit || i % 3 != 0 } else { bit }
                })
                .collect();
            let by_table = v.select_by_table(&m, BitVec::new());
            prop_assert_eq!(v.select(&m), by_table);
            let mut fast = BitVec::new();
            if crate::pext::select_words(&v.words, &m.words, &mut fast) {
                prop_assert_eq!(fast, v.select_by_table(&m, BitVec::new()));
            }
        }

        #[test]
        fn constant_time_equality_matches_model(a in bits(300), c in bits(300), cut in 0usize..300) {
            let va: BitVec = a.iter().copied().collect();
            let vc: BitVec = c.iter().copied().collect();
            prop_assert_eq!(va == vc, a == c);
            prop_assert_eq!(bool::from(va.ct_eq(&vc)), a == c);
            prop_assert!(va == va.clone());
            // Slices at unaligned offsets compare by their bits.
            let k = cut.min(a.len());
            let shifted: BitVec = a[k..].iter().copied().collect();
            prop_assert!(va.slice(k..) == shifted.as_bitslice());
            prop_assert_eq!(va.slice(k..) == vc.slice(cut.min(c.len())..),
                a[k..] == c[cut.min(c.len())..]);
        }

        #[test]
        fn growth_keeps_the_bits(b in bits(700), split in 0usize..700) {
            // push, extend and extend_from_bitslice past the capacity move
            // the words to a new buffer; the bits must survive the move.
            let k = split.min(b.len());
            let mut v = BitVec::new();
            for &bit in &b[..k] {
                v.push(bit);
            }
            v.extend(b[k..].iter().copied().filter(|_| true));
            prop_assert_eq!(model(&v), b.clone());
            let mut w: BitVec = b[..k].iter().copied().collect();
            let tail: BitVec = b[k..].iter().copied().collect();
            w.extend_from_bitslice(tail.as_bitslice());
            prop_assert_eq!(w, v);
        }

        #[test]
        fn iter_ones_matches_model(b in bits(300)) {
            let v: BitVec = b.iter().copied().collect();
            let ones: Vec<usize> = b.iter().enumerate().filter(|(_, x)| **x).map(|(i, _)| i).collect();
            prop_assert_eq!(v.iter_ones().collect::<Vec<_>>(), ones);
        }
    }
}
