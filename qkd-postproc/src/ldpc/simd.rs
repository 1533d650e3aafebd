//! The layer kernels of the decoder, sum-product and min-sum, each
//! portable and AVX2, and the in-place sum-product kernel also with
//! AVX-512 BW.
//!
//! This is the only module of `ldpc` with `unsafe` code: AVX2 and AVX-512
//! intrinsics behind run-time detection. Both kernels of a rule compute, lane by lane,
//! exactly the update written in [`super::decode`] (16-bit saturating
//! posteriors, their 8-bit saturated view for the check, saturating byte
//! arithmetic on messages, the same table, the same scaling of the minima,
//! ties keep the first minimum), so their results are bit-identical;
//! `tests::kernels_agree` and the property test in `tests/ldpc.rs` check
//! it.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
// Off x86-64 the AVX2 entry points only fall back to the portable code and
// leave their vector-width locals and x86-only constants unused (aarch64
// clippy, ldpc19).
#![cfg_attr(not(target_arch = "x86_64"), allow(unused_variables, dead_code))]

/// Per-layer lane state of the portable kernel and the parity scratch of
/// the syndrome check, `Z` bytes each. Derived from Bob's key: wiped on
/// drop, not printed by `Debug`.
#[derive(Clone)]
pub(crate) struct Scratch {
    min1: Vec<i8>,
    min2: Vec<i8>,
    pos: Vec<u8>,
    sign: Vec<i8>,
    /// Forward partial results of the sum-product kernel (`d` rows).
    forward: Vec<u8>,
    /// The inputs `q` of one vector of lanes, 16-bit and narrowed, of the
    /// in-place AVX2 kernel (`d` rows of 32).
    q16: Vec<i16>,
    /// The narrowed inputs of the AVX2 in-place kernel.
    q8: Vec<i8>,
    pub(crate) parity: Vec<i16>,
}

impl core::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Scratch")
            .field("lanes", &self.min1.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.min1.zeroize();
        self.min2.zeroize();
        self.pos.zeroize();
        self.sign.zeroize();
        self.forward.zeroize();
        self.q16.zeroize();
        self.q8.zeroize();
        self.parity.zeroize();
    }
}

/// Sets a scratch buffer to `len` elements. The buffers hold values
/// derived from Bob's key: growing past the capacity would free the old
/// allocation as it is, so it is wiped first and a new one taken.
fn fit<T: zeroize::DefaultIsZeroes>(buffer: &mut Vec<T>, len: usize) {
    use zeroize::Zeroize;
    if len > buffer.capacity() {
        buffer.zeroize();
        *buffer = vec![T::default(); len];
    } else {
        buffer.resize(len, T::default());
    }
}

impl Scratch {
    pub(crate) fn new(z: usize) -> Self {
        Scratch {
            min1: vec![0; z],
            min2: vec![0; z],
            pos: vec![0; z],
            sign: vec![0; z],
            forward: Vec::new(),
            q16: Vec::new(),
            q8: Vec::new(),
            parity: vec![0; z],
        }
    }
}

/// Whether the AVX2 kernel can run on this CPU.
pub(crate) fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The starting posteriors of a decoding from the channel LLRs: a known
/// bit (`±LLR_MAX`, or below `−LLR_MAX`) starts at `±KNOWN`, any other as
/// its LLR. Compiled for AVX2 where the CPU has it (the same loop,
/// vectorised wider).
///
/// # Panics
/// If the lengths differ.
pub(crate) fn start_posteriors(channel: &[i8], out: &mut [i16]) {
    assert_eq!(channel.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if avx2_available() {
        // SAFETY: AVX2 was detected on this CPU just above.
        unsafe { start_posteriors_avx2(channel, out) };
        return;
    }
    start_posteriors_portable(channel, out);
}

/// [`start_posteriors`] compiled with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn start_posteriors_avx2(channel: &[i8], out: &mut [i16]) {
    start_posteriors_portable(channel, out);
}

#[inline(always)]
fn start_posteriors_portable(channel: &[i8], out: &mut [i16]) {
    for (p, &c) in out.iter_mut().zip(channel) {
        *p = start_posterior(c);
    }
}

/// One channel LLR's starting posterior (see [`start_posteriors`]; also
/// what `Decoder::resume` moves a revealed posterior by).
#[inline(always)]
pub(crate) fn start_posterior(c: i8) -> i16 {
    use super::decode::{KNOWN, LLR_MAX};
    // Written as selects (not a match) so that it vectorises.
    let v = i16::from(c);
    if v >= i16::from(LLR_MAX) {
        KNOWN
    } else if v <= -i16::from(LLR_MAX) {
        -KNOWN
    } else {
        v
    }
}

/// The hard decisions of `posteriors` packed into `words` (bit `i % 64` of
/// word `i / 64` set iff posterior `i` is negative), without a branch per
/// bit (the decisions of random frames are coin flips); compiled for AVX2
/// where the CPU has it.
///
/// # Panics
/// If `words` does not hold one word per 64 posteriors.
pub(crate) fn sign_words(posteriors: &[i16], words: &mut [u64]) {
    assert_eq!(words.len(), posteriors.len().div_ceil(64));
    #[cfg(target_arch = "x86_64")]
    if avx2_available() {
        // SAFETY: AVX2 was detected on this CPU just above.
        unsafe { sign_words_avx2(posteriors, words) };
        return;
    }
    sign_words_portable(posteriors, words);
}

/// [`sign_words`] compiled with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sign_words_avx2(posteriors: &[i16], words: &mut [u64]) {
    sign_words_portable(posteriors, words);
}

#[inline(always)]
fn sign_words_portable(posteriors: &[i16], words: &mut [u64]) {
    for (word, chunk) in words.iter_mut().zip(posteriors.chunks(64)) {
        *word = chunk
            .iter()
            .enumerate()
            .fold(0u64, |w, (i, &p)| w | (u64::from(p < 0) << i));
    }
}

/// The syndrome sign masks of `signs.len()` checks from their bits in
/// `words` (bit `i % 64` of word `i / 64`): `i8::MIN` where the bit is
/// set, 0 where not. With AVX-512 BW one masked move per 64 checks.
///
/// # Panics
/// If `words` holds fewer than `signs.len()` bits.
pub(crate) fn sign_bytes(words: &[u64], signs: &mut [i8]) {
    assert!(words.len() * 64 >= signs.len());
    #[cfg(target_arch = "x86_64")]
    let done = if avx512_available() {
        let done = signs.len() / 64 * 64;
        // SAFETY: AVX-512 F and BW were detected just above; `signs`
        // holds `done` bytes and `words` at least `done / 64` words.
        unsafe { x86_512::sign_bytes(&words[..done / 64], &mut signs[..done]) };
        done
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for (i, sign) in signs.iter_mut().enumerate().skip(done) {
        *sign = if (words[i / 64] >> (i % 64)) & 1 == 1 {
            i8::MIN
        } else {
            0
        };
    }
}

/// The upper bound of a posterior (the lower is `i16::MIN`: a posterior
/// saturates to the `i16` range, which is what the AVX2 saturating adds
/// do without a further clamp).
pub(crate) const POSTERIOR_MAX: i16 = i16::MAX;

/// A posterior sum, saturated to the `i16` range.
#[inline]
fn sat16(x: i32) -> i16 {
    x.clamp(i32::from(i16::MIN), i32::from(POSTERIOR_MAX)) as i16
}

/// The 8-bit view of a variable-to-check value: saturated to `±127`, same
/// sign (0 stays 0).
#[inline]
fn narrow(q: i16) -> i8 {
    q.clamp(-127, 127) as i8
}

/// The scaling of the minimum magnitudes: `max(0, m − (m >> shift) − offset)`
/// (`α = 1 − 2^−shift`, then an offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scaling {
    pub(crate) shift: u8,
    /// A second term `m >> shift2` subtracted (0: none).
    pub(crate) shift2: u8,
    pub(crate) offset: u8,
}

#[inline]
fn normalise(m: i8, scaling: Scaling) -> i8 {
    let second = if scaling.shift2 == 0 {
        0
    } else {
        m >> scaling.shift2
    };
    (m - (m >> scaling.shift) - second)
        .saturating_sub(scaling.offset as i8)
        .max(0)
}

/// One layer, lanes `lanes` of `z`: `layer` holds the `d` rotated
/// posterior rows (`d·z` 16-bit values, updated in place), `messages` the `d` rows
/// of check-to-variable messages, `signs` the syndrome sign of each lane.
pub(crate) fn layer_portable(
    layer: &mut [i16],
    messages: &mut [i8],
    signs: &[i8],
    d: usize,
    z: usize,
    scaling: Scaling,
    scratch: &mut Scratch,
) {
    lanes_portable(layer, messages, signs, d, z, 0..z, scaling, scratch);
}

#[allow(clippy::too_many_arguments)] // the kernel's inputs, all needed
fn lanes_portable(
    layer: &mut [i16],
    messages: &mut [i8],
    signs: &[i8],
    d: usize,
    z: usize,
    lanes: core::ops::Range<usize>,
    scaling: Scaling,
    scratch: &mut Scratch,
) {
    let w = lanes.len();
    let (j0, j1) = (lanes.start, lanes.end);
    fit(&mut scratch.min1, w);
    fit(&mut scratch.min2, w);
    fit(&mut scratch.pos, w);
    fit(&mut scratch.sign, w);
    let Scratch {
        min1,
        min2,
        pos,
        sign,
        ..
    } = scratch;
    let (min1, min2, pos, sign) = (
        &mut min1[..w],
        &mut min2[..w],
        &mut pos[..w],
        &mut sign[..w],
    );
    min1.fill(127);
    min2.fill(127);
    pos.fill(0);
    sign.copy_from_slice(&signs[j0..j1]);
    for k in 0..d {
        let q_row = &mut layer[k * z + j0..k * z + j1];
        let r_row = &messages[k * z + j0..k * z + j1];
        for t in 0..w {
            let q = sat16(i32::from(q_row[t]) - i32::from(r_row[t]));
            q_row[t] = q;
            let q = narrow(q);
            let a = q.abs();
            min2[t] = min2[t].min(min1[t].max(a));
            if a < min1[t] {
                pos[t] = k as u8;
                min1[t] = a;
            }
            sign[t] ^= q;
        }
    }
    for t in 0..w {
        min1[t] = normalise(min1[t], scaling);
        min2[t] = normalise(min2[t], scaling);
    }
    for k in 0..d {
        let q_row = &mut layer[k * z + j0..k * z + j1];
        let r_row = &mut messages[k * z + j0..k * z + j1];
        for t in 0..w {
            let q = q_row[t];
            let mag = if usize::from(pos[t]) == k {
                min2[t]
            } else {
                min1[t]
            };
            let r = if (sign[t] ^ narrow(q)) < 0 { -mag } else { mag };
            q_row[t] = sat16(i32::from(q) + i32::from(r));
            r_row[t] = r;
        }
    }
}

/// The offset the AVX-512 in-place kernel adds to every magnitude (`m ≤ 127`
/// becomes `m + 112 ≤ 239`), so that the byte shuffle's table lookups
/// need no clamp: the index `(a + b + 1) >> 1` of `c(a + b)` is the byte
/// average of two offset magnitudes, `112` more than the plain one, and
/// that of `c(|a − b|)` the average of `|a − b|` and `224`, also `112`
/// more; an index `i + 112` with `i < 16` has low bits `i`, one with
/// `i ≥ 16` has its top bit set, for which the shuffle gives 0, the
/// table's last entry. Minima and maxima keep their order under the
/// offset, and `min + c(a + b) − c(|a − b|)` is never negative
/// (`tests::offset_boxplus_needs_no_floor`), so the floor at 0 of
/// [`boxplus`] is never needed either.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const MAGNITUDE_OFFSET: u8 = 112;

/// The correction term `c(x) = 8·ln(1 + e^(−x/8))` of the box-plus
/// operation on LLRs in steps of 1/8 nat, indexed by
/// `i = min((x + 1) >> 1, 15)`: entry `i` serves `x = 2i − 1` and `2i`
/// and is `c` at their midpoint `2i − ½` (at 0 for `i = 0`), rounded
/// (`tests::correction_table` checks it). One 16-entry table is one byte
/// shuffle in the AVX2 kernel, and `(x + 1) >> 1` of a sum `a + b` is one
/// byte average. Against the table of every `x` (`c(x)` rounded) it
/// differs only at `x = 22` (1 instead of 0; `c(22) = 0.496`).
pub(crate) const CORRECTION: [u8; 16] = [6, 5, 4, 3, 3, 2, 2, 1, 1, 1, 1, 1, 0, 0, 0, 0];

/// `c(x)` from [`CORRECTION`].
#[inline]
fn correction(x: u16) -> u8 {
    CORRECTION[usize::from(((x + 1) >> 1).min(15))]
}

/// The magnitude of `a ⊞ b` for magnitudes `a, b ≤ 127`:
/// `min(a, b) + c(a + b) − c(|a − b|)`, floored at 0, with `c` from the
/// [`CORRECTION`] table (the exact rule is `2·atanh(tanh(a/2)·tanh(b/2))`;
/// the table form is exact to a rounding step). `c` falls as its argument
/// grows, so the result never exceeds `min(a, b)`.
#[inline]
fn boxplus(a: u8, b: u8) -> u8 {
    let (lo, hi) = (a.min(b), a.max(b));
    (lo + correction(u16::from(a) + u16::from(b))).saturating_sub(correction(u16::from(hi - lo)))
}

/// One layer with the sum-product rule, all `z` lanes (see
/// [`layer_portable`] for the arguments).
pub(crate) fn layer_sum_product_portable(
    layer: &mut [i16],
    messages: &mut [i8],
    signs: &[i8],
    d: usize,
    z: usize,
    cap: u8,
    scratch: &mut Scratch,
) {
    lanes_sum_product(layer, messages, signs, d, z, 0..z, cap, scratch);
}

/// Lanes `lanes` of one sum-product layer: `q_k = sat(L_k − R_k)`, then
/// every check's extrinsic magnitudes by forward and backward box-plus
/// chains (`out_k = (a_0 ⊞ … ⊞ a_{k−1}) ⊞ (a_{k+1} ⊞ … ⊞ a_{d−1})`, for a
/// check of degree 1 the largest), capped at `cap`, the sign from
/// the syndrome and the other inputs.
#[allow(clippy::too_many_arguments)] // the kernel's inputs, all needed
fn lanes_sum_product(
    layer: &mut [i16],
    messages: &mut [i8],
    signs: &[i8],
    d: usize,
    z: usize,
    lanes: core::ops::Range<usize>,
    cap: u8,
    scratch: &mut Scratch,
) {
    let w = lanes.len();
    let (j0, j1) = (lanes.start, lanes.end);
    fit(&mut scratch.sign, w);
    fit(&mut scratch.min1, w);
    fit(&mut scratch.forward, d * w);
    let Scratch {
        sign,
        min1: back,
        forward,
        ..
    } = scratch;
    let (sign, back) = (&mut sign[..w], &mut back[..w]);
    sign.copy_from_slice(&signs[j0..j1]);
    for k in 0..d {
        let q_row = &mut layer[k * z + j0..k * z + j1];
        let r_row = &messages[k * z + j0..k * z + j1];
        let (done, rest) = forward.split_at_mut(k * w);
        let f_row = &mut rest[..w];
        for t in 0..w {
            let q = sat16(i32::from(q_row[t]) - i32::from(r_row[t]));
            q_row[t] = q;
            let q = narrow(q);
            sign[t] ^= q;
            let a = q.unsigned_abs();
            f_row[t] = if k == 0 {
                a
            } else {
                boxplus(done[(k - 1) * w + t], a)
            };
        }
    }
    for k in (0..d).rev() {
        let q_row = &mut layer[k * z + j0..k * z + j1];
        let r_row = &mut messages[k * z + j0..k * z + j1];
        for t in 0..w {
            let q = q_row[t];
            let q8 = narrow(q);
            let a = q8.unsigned_abs();
            let mag = match (k == 0, k + 1 == d) {
                (true, true) => 127,
                (true, false) => back[t] as u8,
                (false, true) => forward[(k - 1) * w + t],
                (false, false) => boxplus(forward[(k - 1) * w + t], back[t] as u8),
            }
            .min(cap) as i8;
            back[t] = if k + 1 == d {
                a as i8
            } else {
                boxplus(back[t] as u8, a) as i8
            };
            let r = if (sign[t] ^ q8) < 0 { -mag } else { mag };
            q_row[t] = sat16(i32::from(q) + i32::from(r));
            r_row[t] = r;
        }
    }
}

/// The AVX2 sum-product kernel: 32 lanes per vector, the lanes past the
/// last multiple of 32 through the portable code. Falls back to the
/// portable kernel when AVX2 is missing.
pub(crate) fn layer_sum_product_avx2(
    layer: &mut [i16],
    messages: &mut [i8],
    signs: &[i8],
    d: usize,
    z: usize,
    cap: u8,
    scratch: &mut Scratch,
) {
    assert!(layer.len() >= d * z && messages.len() >= d * z && signs.len() >= z);
    let full = z / 32 * 32;
    #[cfg(target_arch = "x86_64")]
    if full > 0 && avx2_available() {
        fit(&mut scratch.forward, d.max(1) * 32);
        // SAFETY: AVX2 was detected on this CPU just above, the lengths the
        // kernel indexes (d·z values of `layer` and `messages`, z of `signs`)
        // were asserted above, and `forward` holds d·32 bytes.
        unsafe {
            x86::layer_sum_product(
                layer,
                messages,
                signs,
                d,
                z,
                full,
                cap,
                &mut scratch.forward,
            );
        }
        if full < z {
            lanes_sum_product(layer, messages, signs, d, z, full..z, cap, scratch);
        }
        return;
    }
    lanes_sum_product(layer, messages, signs, d, z, 0..z, cap, scratch);
}

/// Whether [`layers_sum_product_columns_avx2`] can decode a code of
/// lifting `z` here: AVX2 present and `z` a positive multiple of 32.
pub(crate) fn columns_kernel_fits(z: usize) -> bool {
    z >= 32 && z.is_multiple_of(32) && avx2_available()
}

/// Values before the first and after the last posterior column in the
/// buffer [`layers_sum_product_columns_avx2`] and
/// [`layers_sum_product_columns_avx512`] work on: a window of 32 (64) lanes
/// that wraps around its column is read and written as two windows that
/// run past the column's ends (the AVX-512 kernel reads past the end
/// only).
pub(crate) const COLUMN_MARGIN: usize = 64;

/// The base rows of a code checked once for the in-place kernels: every
/// row has 1 to 255 entries and lists each column once, every shift is
/// below `z`; `columns` is one more than the largest column. The kernels
/// then check only that the posterior buffer holds `columns` columns.
#[derive(Debug, Clone)]
pub(crate) struct CheckedRows {
    entries: Vec<(u32, u32)>,
    start: Vec<usize>,
    z: usize,
    columns: usize,
}

impl CheckedRows {
    /// The rows, or `None` if one breaks the conditions above.
    pub(crate) fn new<'a>(
        rows: impl IntoIterator<Item = &'a [(u32, u32)]>,
        z: usize,
    ) -> Option<Self> {
        let mut checked = CheckedRows {
            entries: Vec::new(),
            start: vec![0],
            z,
            columns: 0,
        };
        for row in rows {
            let mut columns: Vec<u32> = row.iter().map(|&(c, _)| c).collect();
            columns.sort_unstable();
            if !(1..=255).contains(&row.len())
                || columns.windows(2).any(|w| w[0] == w[1])
                || row.iter().any(|&(_, s)| s as usize >= z)
            {
                return None;
            }
            checked.columns = checked.columns.max(columns[columns.len() - 1] as usize + 1);
            checked.entries.extend_from_slice(row);
            checked.start.push(checked.entries.len());
        }
        Some(checked)
    }

    /// Row `r`.
    fn row(&self, r: usize) -> &[(u32, u32)] {
        &self.entries[self.start[r]..self.start[r + 1]]
    }

    /// The base entries of the rows `layers` together and the most in one
    /// of them.
    ///
    /// # Panics
    /// If `layers` is not within the rows (or runs backwards).
    fn extent(&self, layers: core::ops::Range<usize>) -> (usize, usize) {
        assert!(layers.start <= layers.end && layers.end < self.start.len());
        let edges = self.start[layers.end] - self.start[layers.start];
        let most = layers
            .map(|r| self.start[r + 1] - self.start[r])
            .max()
            .unwrap_or(0);
        (edges, most)
    }

    /// Whether `posterior` holds every column with its margins.
    fn fit(&self, posterior: &[i16]) -> bool {
        self.columns * self.z + 2 * COLUMN_MARGIN <= posterior.len()
    }
}

/// One sum-product layer straight on the posterior columns: `row` lists
/// the layer's base entries `(column, shift)`, lane `t` of entry `(c, s)`
/// is `posterior[COLUMN_MARGIN + c·z + (s + t) mod z]`. Gives exactly what copying the
/// rotated columns into a layer buffer, [`layer_sum_product_portable`] and
/// copying them back give, without the copies. With `fresh` the messages
/// are taken as all zero, without reading them (the first iteration of a
/// decoding: the layer writes every one of its messages).
///
/// # Panics
/// If [`columns_kernel_fits`] is false for the rows' `z`, `r` is not one
/// of `rows`, `posterior` does not hold every column with its margins, or
/// `messages` or `signs` is short (the decoder never calls it so).
#[cfg(test)]
#[allow(clippy::too_many_arguments)] // the kernel's inputs, all needed
pub(crate) fn layer_sum_product_columns_avx2(
    posterior: &mut [i16],
    rows: &CheckedRows,
    r: usize,
    messages: &mut [i8],
    signs: &[i8],
    cap: u8,
    fresh: bool,
    scratch: &mut Scratch,
) {
    layers_sum_product_columns_avx2(
        posterior,
        rows,
        r..r + 1,
        messages,
        signs,
        cap,
        fresh,
        scratch,
    );
}

/// The layers `layers` of `rows` in order, each as
/// `layer_sum_product_columns_avx2` does it: `messages` holds the
/// messages of those layers one after the other (`Z` per base entry),
/// `signs` their syndrome signs (`Z` per layer). One call per iteration
/// of the decoder: the checks and scratch sizing are done once.
///
/// # Panics
/// If [`columns_kernel_fits`] is false for the rows' `z`, `layers` is not
/// within `rows`, `posterior` does not hold every column with its margins,
/// or `messages` or `signs` is short (the decoder never calls it so).
#[allow(clippy::too_many_arguments)] // the kernel's inputs, all needed
pub(crate) fn layers_sum_product_columns_avx2(
    posterior: &mut [i16],
    rows: &CheckedRows,
    layers: core::ops::Range<usize>,
    messages: &mut [i8],
    signs: &[i8],
    cap: u8,
    fresh: bool,
    scratch: &mut Scratch,
) {
    let z = rows.z;
    let (edges, d_max) = rows.extent(layers.clone());
    assert!(
        columns_kernel_fits(z)
            && rows.fit(posterior)
            && messages.len() >= edges * z
            && signs.len() >= layers.len() * z
    );
    // The scratch buffers from a 64-byte boundary, so that no vector
    // access to them crosses a cache line.
    fit(&mut scratch.forward, d_max * 64 + 63);
    fit(&mut scratch.q16, d_max * 64 + 31);
    fit(&mut scratch.q8, d_max * 64 + 63);
    let at = aligned_start(scratch.forward.as_ptr(), 64);
    let forward = &mut scratch.forward[at..at + d_max * 64];
    let at = aligned_start(scratch.q16.as_ptr(), 32);
    let q16 = &mut scratch.q16[at..at + d_max * 64];
    let at = aligned_start(scratch.q8.as_ptr(), 64);
    let q8 = &mut scratch.q8[at..at + d_max * 64];
    let mut at = 0;
    for (i, r) in layers.enumerate() {
        let row = rows.row(r);
        let d = row.len();
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 was detected (`columns_kernel_fits`), z is a
        // positive multiple of 32, `posterior` holds every column with its
        // margins, `messages` holds the `d·z` messages of this layer from
        // `at` and `signs` its z signs from `i·z` (all asserted above: the
        // layers' entries sum to `edges`), `row` has 1 to 255 entries with
        // distinct columns and shifts below z (`CheckedRows`), and the
        // three scratch buffers hold d_max·64 ≥ d·64 values each (sliced
        // just above).
        unsafe {
            x86::columns_sum_product(
                posterior,
                row,
                &mut messages[at..at + d * z],
                &signs[i * z..(i + 1) * z],
                z,
                cap,
                fresh,
                q16,
                q8,
                forward,
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (
            &posterior, &messages, &signs, cap, fresh, i, row, &q16, &q8, &forward, at,
        );
        at += d * z;
    }
}

/// Whether the hard decisions of the posterior columns (laid out as for
/// [`layer_sum_product_columns_avx2`]) satisfy every check of the layer
/// `r` of `rows` with syndrome signs `signs`.
///
/// # Panics
/// As [`layer_sum_product_columns_avx2`].
#[cfg(test)]
pub(crate) fn layer_parity_holds_avx2(
    posterior: &[i16],
    rows: &CheckedRows,
    r: usize,
    signs: &[i8],
) -> bool {
    layers_parity_fail_avx2(posterior, rows, r..r + 1, signs).is_none()
}

/// The first of the layers `layers` of `rows` whose checks the hard
/// decisions of the posterior columns do not all satisfy (`None`: every
/// check of every one of them holds); `signs` holds the syndrome signs of
/// those layers one after the other (`Z` per layer). Checks as
/// `layer_parity_holds_avx2` does, with one set of checks per call.
///
/// # Panics
/// If [`columns_kernel_fits`] is false for the rows' `z`, `layers` is not within
/// `rows`, `posterior` does not hold every column with its margins, or
/// `signs` is short (the decoder never calls it so).
pub(crate) fn layers_parity_fail_avx2(
    posterior: &[i16],
    rows: &CheckedRows,
    layers: core::ops::Range<usize>,
    signs: &[i8],
) -> Option<usize> {
    let z = rows.z;
    assert!(columns_kernel_fits(z) && rows.fit(posterior) && signs.len() >= layers.len() * z);
    let first = layers.start;
    let holds = |row: &[(u32, u32)], signs: &[i8]| -> bool {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 was detected (`columns_kernel_fits`), z is a
        // positive multiple of 32, `posterior` holds every column with its
        // margins and `signs` z values (asserted above), the shifts of
        // `row` are below z (`CheckedRows`).
        unsafe {
            x86::columns_parity_holds(posterior, row, signs, z)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (posterior, signs, row);
            unreachable!("columns_kernel_fits is false off x86-64")
        }
    };
    layers
        .into_iter()
        .find(|&r| !holds(rows.row(r), &signs[(r - first) * z..(r - first + 1) * z]))
}

/// The AVX2 kernel: 32 lanes per vector, the lanes past the last multiple
/// of 32 through the portable code. Falls back to the portable kernel when
/// AVX2 is missing.
pub(crate) fn layer_avx2(
    layer: &mut [i16],
    messages: &mut [i8],
    signs: &[i8],
    d: usize,
    z: usize,
    scaling: Scaling,
    scratch: &mut Scratch,
) {
    assert!(layer.len() >= d * z && messages.len() >= d * z && signs.len() >= z && d <= 256);
    let full = z / 32 * 32;
    #[cfg(target_arch = "x86_64")]
    if full > 0 && avx2_available() {
        // SAFETY: AVX2 was detected on this CPU just above, and the lengths
        // the kernel indexes (d·z values of `layer` and `messages`, z of
        // `signs`) were asserted above.
        unsafe { x86::layer(layer, messages, signs, d, z, full, scaling) };
        if full < z {
            lanes_portable(layer, messages, signs, d, z, full..z, scaling, scratch);
        }
        return;
    }
    lanes_portable(layer, messages, signs, d, z, 0..z, scaling, scratch);
}

/// The element types the byte-vector loads and stores take (one byte
/// each, so a count of bytes is a count of elements).
#[cfg(target_arch = "x86_64")]
trait Byte: Copy {}
#[cfg(target_arch = "x86_64")]
impl Byte for i8 {}
#[cfg(target_arch = "x86_64")]
impl Byte for u8 {}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Byte;
    use core::arch::x86_64::*;

    /// 32 posteriors at `s[at..at + 32]`, as two vectors of 16.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn load16(s: &[i16], at: usize) -> (__m256i, __m256i) {
        let chunk = &s[at..at + 32];
        let (a, b) = chunk.split_at(16);
        // SAFETY: `a` and `b` are 16 readable i16 each (32 bytes); loadu
        // has no alignment requirement.
        unsafe {
            (
                _mm256_loadu_si256(a.as_ptr().cast()),
                _mm256_loadu_si256(b.as_ptr().cast()),
            )
        }
    }

    /// Stores two vectors of 16 posteriors at `s[at..at + 32]`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn store16(s: &mut [i16], at: usize, v0: __m256i, v1: __m256i) {
        let chunk = &mut s[at..at + 32];
        let (a, b) = chunk.split_at_mut(16);
        // SAFETY: `a` and `b` are 16 writable i16 each (32 bytes); storeu
        // has no alignment requirement.
        unsafe {
            _mm256_storeu_si256(a.as_mut_ptr().cast(), v0);
            _mm256_storeu_si256(b.as_mut_ptr().cast(), v1);
        }
    }

    /// 32 posteriors (two vectors of 16) to bytes saturated to ±127, in
    /// lane order (packs interleaves 64-bit quarters; the permute undoes it).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn narrow(v0: __m256i, v1: __m256i) -> __m256i {
        _mm256_max_epi8(
            _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi16(v0, v1)),
            _mm256_set1_epi8(-127),
        )
    }

    /// 32 signed bytes to two vectors of 16 i16.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn widen(r: __m256i) -> (__m256i, __m256i) {
        (
            _mm256_cvtepi8_epi16(_mm256_castsi256_si128(r)),
            _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(r)),
        )
    }

    /// 32 bytes at `s[at..at + 32]`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn load8<T: Byte>(s: &[T], at: usize) -> __m256i {
        let chunk = &s[at..at + 32];
        // SAFETY: `T` is i8 or u8 (`Byte`), so `chunk` is 32 readable
        // bytes; loadu has no alignment requirement.
        unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) }
    }

    /// Stores 32 bytes at `s[at..at + 32]`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn store8<T: Byte>(s: &mut [T], at: usize, v: __m256i) {
        let chunk = &mut s[at..at + 32];
        // SAFETY: `T` is i8 or u8 (`Byte`), so `chunk` is 32 writable
        // bytes; storeu has no alignment requirement.
        unsafe { _mm256_storeu_si256(chunk.as_mut_ptr().cast(), v) }
    }

    /// Lane `t` all ones where `t ≥ tail`: the 32 values from
    /// `TAIL_MASK[32 − tail]`.
    static TAIL_MASK: [i16; 64] = {
        let mut m = [0i16; 64];
        let mut i = 32;
        while i < 64 {
            m[i] = -1;
            i += 1;
        }
        m
    };

    /// 32 posteriors at `p`, as two vectors of 16.
    ///
    /// # Safety
    /// AVX2; `p..p + 32` readable.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn read16(p: *const i16) -> (__m256i, __m256i) {
        // SAFETY: the caller guarantees 32 readable i16 (64 bytes) at `p`;
        // loadu has no alignment requirement.
        unsafe {
            (
                _mm256_loadu_si256(p.cast()),
                _mm256_loadu_si256(p.add(16).cast()),
            )
        }
    }

    /// Stores 32 posteriors at `p`.
    ///
    /// # Safety
    /// AVX2; `p..p + 32` writable.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn write16(p: *mut i16, v0: __m256i, v1: __m256i) {
        // SAFETY: the caller guarantees 32 writable i16 (64 bytes) at `p`;
        // storeu has no alignment requirement.
        unsafe {
            _mm256_storeu_si256(p.cast(), v0);
            _mm256_storeu_si256(p.add(16).cast(), v1);
        }
    }

    /// 32 bytes at `p`.
    ///
    /// # Safety
    /// AVX2; `p..p + 32` readable.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn read8<T: Byte>(p: *const T) -> __m256i {
        // SAFETY: the caller guarantees 32 readable bytes at `p` (`T` is
        // i8 or u8); loadu has no alignment requirement.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }

    /// Stores 32 bytes at `p`.
    ///
    /// # Safety
    /// AVX2; `p..p + 32` writable.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn write8<T: Byte>(p: *mut T, v: __m256i) {
        // SAFETY: the caller guarantees 32 writable bytes at `p` (`T` is
        // i8 or u8); storeu has no alignment requirement.
        unsafe { _mm256_storeu_si256(p.cast(), v) }
    }

    /// The 32 posteriors `col[(start + t) mod z]`, `t < 32`, of the column
    /// of `z ≥ 32` posteriors at `col`, `start < z`. A window that wraps
    /// is two loads, one running past the column's end and one starting
    /// before its start, blended.
    ///
    /// # Safety
    /// AVX2; `col − 32 .. col + z + 32` readable (the column and its
    /// margins, [`super::COLUMN_MARGIN`]).
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load_rotated(col: *const i16, z: usize, start: usize) -> (__m256i, __m256i) {
        // SAFETY: `start < z`, so `col + start .. col + start + 32` lies in
        // `col .. col + z + 32`, and for a window that wraps (`start >
        // z − 32`) `col + start − z ..` starts at or after `col − 31`; the
        // mask table has 64 entries and `32 − (z − start)` is 1 to 31.
        unsafe {
            let x = read16(col.add(start));
            if start + 32 <= z {
                x
            } else {
                let y = read16(col.add(start).sub(z));
                let m = read16(TAIL_MASK.as_ptr().add(32 - (z - start)));
                (
                    _mm256_blendv_epi8(x.0, y.0, m.0),
                    _mm256_blendv_epi8(x.1, y.1, m.1),
                )
            }
        }
    }

    /// Stores `col[(start + t) mod z]`, `t < 32` (see [`load_rotated`]);
    /// a window that wraps is two read-modify-write stores that keep the
    /// values outside it.
    ///
    /// # Safety
    /// AVX2; `col − 32 .. col + z + 32` readable and writable, nothing
    /// else accessing it.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn store_rotated(col: *mut i16, z: usize, start: usize, v0: __m256i, v1: __m256i) {
        // SAFETY: the windows are those of `load_rotated`, inside the
        // range the caller guarantees; the values outside the rotated
        // window are written back as they were read.
        unsafe {
            let at = col.add(start);
            if start + 32 <= z {
                write16(at, v0, v1);
            } else {
                let m = read16(TAIL_MASK.as_ptr().add(32 - (z - start)));
                let x = read16(at);
                write16(
                    at,
                    _mm256_blendv_epi8(v0, x.0, m.0),
                    _mm256_blendv_epi8(v1, x.1, m.1),
                );
                let y = read16(at.sub(z));
                write16(
                    at.sub(z),
                    _mm256_blendv_epi8(y.0, v0, m.0),
                    _mm256_blendv_epi8(y.1, v1, m.1),
                );
            }
        }
    }

    /// `(a + b + 1) >> 1` on 32 unsigned bytes: the byte average
    /// instruction itself (written out, because the compiler rewrites the
    /// intrinsic into 16-bit arithmetic at some call sites, three times the
    /// instructions).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn average(a: __m256i, b: __m256i) -> __m256i {
        let out: __m256i;
        // SAFETY: `vpavgb` on two vector registers: AVX2 is enabled for
        // this function, it touches no memory, stack or flags.
        unsafe {
            core::arch::asm!(
                "vpavgb {out}, {a}, {b}",
                out = lateout(ymm_reg) out,
                a = in(ymm_reg) a,
                b = in(ymm_reg) b,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        out
    }

    /// The [`super::CORRECTION`] table in both 128-bit lanes (the byte
    /// shuffle looks up within a lane).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn correction_table() -> __m256i {
        let mut b = [0u8; 32];
        b[..16].copy_from_slice(&super::CORRECTION);
        b[16..].copy_from_slice(&super::CORRECTION);
        load8(&b, 0)
    }

    /// `a ⊞ b` on 32 lanes of magnitudes, exactly `super::boxplus`:
    /// `min + c(a + b) − c(max − min)`, the table index `(x + 1) >> 1` of
    /// a sum being the byte average of its terms.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn boxplus(a: __m256i, b: __m256i, table: __m256i) -> __m256i {
        let fifteen = _mm256_set1_epi8(15);
        let lo = _mm256_min_epu8(a, b);
        let hi = _mm256_max_epu8(a, b);
        let c_sum = _mm256_shuffle_epi8(table, _mm256_min_epu8(average(a, b), fifteen));
        let diff = average(_mm256_sub_epi8(hi, lo), _mm256_setzero_si256());
        let c_diff = _mm256_shuffle_epi8(table, _mm256_min_epu8(diff, fifteen));
        _mm256_subs_epu8(_mm256_add_epi8(lo, c_sum), c_diff)
    }

    /// The signed message: `mag` negated in the lanes where the syndrome
    /// sign, the product of the signs of all inputs and the lane's own
    /// input sign (`sign ^ q`) is negative.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn signed(mag: __m256i, sign: __m256i, q: __m256i) -> __m256i {
        _mm256_blendv_epi8(
            mag,
            _mm256_sub_epi8(_mm256_setzero_si256(), mag),
            _mm256_xor_si256(sign, q),
        )
    }

    /// Lanes `0..full` (a multiple of 32) of one sum-product layer, the
    /// same operations as `lanes_sum_product` on 32 lanes at once.
    ///
    /// # Safety
    /// The CPU must support AVX2; `layer` and `messages` must hold `d·z`
    /// values, `signs` `z`, `forward` `d·32`, and `full ≤ z`.
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)] // the kernel's inputs, all needed
    pub(super) unsafe fn layer_sum_product(
        layer: &mut [i16],
        messages: &mut [i8],
        signs: &[i8],
        d: usize,
        z: usize,
        full: usize,
        cap: u8,
        forward: &mut [u8],
    ) {
        let top = _mm256_set1_epi8(127);
        let zero = _mm256_setzero_si256();
        let cap = _mm256_set1_epi8(cap as i8);
        let table = correction_table();
        let mut j = 0;
        while j < full {
            let mut sign = load8(signs, j);
            let mut f = zero;
            for k in 0..d {
                let at = k * z + j;
                let (l0, l1) = load16(layer, at);
                let (r0, r1) = widen(load8(messages, at));
                let q0 = _mm256_subs_epi16(l0, r0);
                let q1 = _mm256_subs_epi16(l1, r1);
                store16(layer, at, q0, q1);
                let q = narrow(q0, q1);
                sign = _mm256_xor_si256(sign, q);
                let a = _mm256_abs_epi8(q);
                f = if k == 0 { a } else { boxplus(f, a, table) };
                store8(forward, k * 32, f);
            }
            let mut back = zero;
            for k in (0..d).rev() {
                let at = k * z + j;
                let (q0, q1) = load16(layer, at);
                let q = narrow(q0, q1);
                let a = _mm256_abs_epi8(q);
                let mag = match (k == 0, k + 1 == d) {
                    (true, true) => top,
                    (true, false) => back,
                    (false, true) => load8(forward, (k - 1) * 32),
                    (false, false) => boxplus(load8(forward, (k - 1) * 32), back, table),
                };
                let mag = _mm256_min_epu8(mag, cap);
                back = if k + 1 == d {
                    a
                } else {
                    boxplus(back, a, table)
                };
                let r = signed(mag, sign, q);
                let (r0, r1) = widen(r);
                store16(
                    layer,
                    at,
                    _mm256_adds_epi16(q0, r0),
                    _mm256_adds_epi16(q1, r1),
                );
                store8(messages, at, r);
            }
            j += 32;
        }
    }

    /// One whole sum-product layer read from and written to the posterior
    /// columns in place: the lanes of base entry `k = (c, s)` are
    /// `posterior[COLUMN_MARGIN + c·z + (s + t) mod z]`. The same
    /// operations, lane by lane, as `lanes_sum_product` on a layer buffer
    /// holding the rotated columns, without copying them in and out. The
    /// lanes go two vectors (64 lanes) at a time where `z` allows, for two
    /// independent box-plus chains per step; each group keeps its `d`
    /// inputs `q` (16-bit and narrowed) and forward partial results in the
    /// small `q16`, `q8` and `forward` buffers, which stay in L1. (The
    /// AVX-512 kernel narrows `q` again in the backward pass and uses
    /// offset magnitudes instead; here, on the one CPU measured, that was
    /// 2–6 % slower.)
    ///
    /// # Safety
    /// The CPU must support AVX2; `z` must be a positive multiple of 32,
    /// `posterior` must hold every column of `row` with its margins
    /// (`(c + 1)·z + 2·COLUMN_MARGIN` values), every shift must be below
    /// `z`, `messages` must hold `d·z` values, `signs` `z`, and `q16`,
    /// `q8` and `forward` `d·64` each (`d = row.len()`, 1 to 255). The result
    /// is the portable kernel's when no column appears twice in `row`.
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)] // the kernel's inputs, all needed
    pub(super) unsafe fn columns_sum_product(
        posterior: &mut [i16],
        row: &[(u32, u32)],
        messages: &mut [i8],
        signs: &[i8],
        z: usize,
        cap: u8,
        fresh: bool,
        q16: &mut [i16],
        q8: &mut [i8],
        forward: &mut [u8],
    ) {
        // Column start of each base entry (d ≤ 255).
        let mut columns = [core::ptr::null_mut::<i16>(); 256];
        let p = posterior.as_mut_ptr();
        for (slot, &(c, _)) in columns.iter_mut().zip(row) {
            // SAFETY: the caller guarantees `(c + 1)·z + 2·COLUMN_MARGIN ≤
            // posterior.len()`, so the column start is inside `posterior`.
            *slot = unsafe { p.add(super::COLUMN_MARGIN + c as usize * z) };
        }
        let buffers = Buffers {
            q16: q16.as_mut_ptr(),
            q8: q8.as_mut_ptr(),
            forward: forward.as_mut_ptr(),
            messages: messages.as_mut_ptr(),
        };
        let mut j = 0;
        while j + 64 <= z {
            // SAFETY: lanes j..j + 64 ≤ z, the caller's guarantees.
            unsafe {
                if fresh {
                    lane_group::<2, true>(&columns[..row.len()], row, &buffers, signs, z, j, cap);
                } else {
                    lane_group::<2, false>(&columns[..row.len()], row, &buffers, signs, z, j, cap);
                }
            };
            j += 64;
        }
        if j < z {
            // SAFETY: lanes j..j + 32 = z, the caller's guarantees.
            unsafe {
                if fresh {
                    lane_group::<1, true>(&columns[..row.len()], row, &buffers, signs, z, j, cap);
                } else {
                    lane_group::<1, false>(&columns[..row.len()], row, &buffers, signs, z, j, cap);
                }
            };
        }
    }

    /// Whether the hard decisions (sign bits) of the posterior columns
    /// satisfy every check of one layer: per lane the XOR of the syndrome
    /// sign and the `d` rotated posteriors, OR-ed over all lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2; `z` a positive multiple of 32,
    /// `posterior` must hold every column of `row` with its margins
    /// (`(c + 1)·z + 2·COLUMN_MARGIN` values), every shift must be below
    /// `z`, and `signs` must hold `z` values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn columns_parity_holds(
        posterior: &[i16],
        row: &[(u32, u32)],
        signs: &[i8],
        z: usize,
    ) -> bool {
        let p = posterior.as_ptr();
        let mut any = _mm256_setzero_si256();
        let mut j = 0;
        while j < z {
            let (mut a0, mut a1) = widen(load8(signs, j));
            for &(c, s) in row {
                let start = s as usize + j;
                let start = if start >= z { start - z } else { start };
                // SAFETY: the column start is inside `posterior` and the
                // window is one `load_rotated` reads (caller's guarantees).
                let (l0, l1) =
                    unsafe { load_rotated(p.add(super::COLUMN_MARGIN + c as usize * z), z, start) };
                a0 = _mm256_xor_si256(a0, l0);
                a1 = _mm256_xor_si256(a1, l1);
            }
            any = _mm256_or_si256(any, _mm256_or_si256(a0, a1));
            j += 32;
        }
        _mm256_testz_si256(any, _mm256_set1_epi16(i16::MIN)) == 1
    }

    /// The raw buffers of [`columns_sum_product`].
    struct Buffers {
        q16: *mut i16,
        q8: *mut i8,
        forward: *mut u8,
        messages: *mut i8,
    }

    /// Lanes `j..j + 32·V` of one layer (see [`columns_sum_product`]); with
    /// `FRESH` the messages are taken as zero and not read.
    ///
    /// # Safety
    /// AVX2; the guarantees of [`columns_sum_product`] with `columns[k]`
    /// the start of entry `k`'s column, and `j + 32·V ≤ z`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn lane_group<const V: usize, const FRESH: bool>(
        columns: &[*mut i16],
        row: &[(u32, u32)],
        b: &Buffers,
        signs: &[i8],
        z: usize,
        j: usize,
        cap: u8,
    ) {
        let d = row.len();
        let zero = _mm256_setzero_si256();
        let table = correction_table();
        let rotated = |s: u32, j: usize| {
            let start = s as usize + j;
            if start >= z { start - z } else { start }
        };
        let mut sign = [zero; V];
        for (v, sign) in sign.iter_mut().enumerate() {
            *sign = load8(signs, j + 32 * v);
        }
        let cap = _mm256_set1_epi8(cap as i8);
        let mut f = [zero; V];
        // SAFETY (the whole forward pass): `k < d` and `v < V`, so
        // `(k·V + v)·32 + 32 ≤ d·64` (the scratch buffers) and
        // `k·z + j + 32·v + 32 ≤ d·z` (`messages`); columns and shifts are
        // in range (caller), which is what `load_rotated` needs.
        for (k, &(_, s)) in row.iter().enumerate() {
            for v in 0..V {
                let at = (k * V + v) * 32;
                unsafe {
                    let (l0, l1) = load_rotated(columns[k], z, rotated(s, j + 32 * v));
                    let (q0, q1) = if FRESH {
                        (l0, l1)
                    } else {
                        let (r0, r1) = widen(read8(b.messages.add(k * z + j + 32 * v)));
                        (_mm256_subs_epi16(l0, r0), _mm256_subs_epi16(l1, r1))
                    };
                    write16(b.q16.add(at), q0, q1);
                    let q = narrow(q0, q1);
                    write8(b.q8.add(at), q);
                    sign[v] = _mm256_xor_si256(sign[v], q);
                    let a = _mm256_abs_epi8(q);
                    f[v] = if k == 0 { a } else { boxplus(f[v], a, table) };
                    write8(b.forward.add(at), f[v]);
                }
            }
        }
        // Backward: lane magnitudes from the forward results before `k`
        // and the backward ones after it.
        let mut back = [zero; V];
        for (k, &(_, s)) in row.iter().enumerate().rev() {
            for v in 0..V {
                let at = (k * V + v) * 32;
                // SAFETY: as in the forward pass, and `forward` is read at
                // entry `k − 1 < d`.
                unsafe {
                    let (q0, q1) = read16(b.q16.add(at));
                    let q = read8(b.q8.add(at));
                    let a = _mm256_abs_epi8(q);
                    let mag = if k + 1 == d {
                        if k == 0 {
                            _mm256_set1_epi8(127)
                        } else {
                            read8(b.forward.add(at - 32 * V))
                        }
                    } else if k == 0 {
                        back[v]
                    } else {
                        boxplus(read8(b.forward.add(at - 32 * V)), back[v], table)
                    };
                    let mag = _mm256_min_epu8(mag, cap);
                    back[v] = if k + 1 == d {
                        a
                    } else {
                        boxplus(back[v], a, table)
                    };
                    let r = signed(mag, sign[v], q);
                    let (r0, r1) = widen(r);
                    store_rotated(
                        columns[k],
                        z,
                        rotated(s, j + 32 * v),
                        _mm256_adds_epi16(q0, r0),
                        _mm256_adds_epi16(q1, r1),
                    );
                    write8(b.messages.add(k * z + j + 32 * v), r);
                }
            }
        }
    }

    /// Lanes `0..full` (a multiple of 32) of one layer.
    ///
    /// # Safety
    /// The CPU must support AVX2; `layer` and `messages` must hold `d·z`
    /// values, `signs` `z`, and `full ≤ z`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn layer(
        layer: &mut [i16],
        messages: &mut [i8],
        signs: &[i8],
        d: usize,
        z: usize,
        full: usize,
        scaling: super::Scaling,
    ) {
        let top = _mm256_set1_epi8(127);
        let zero = _mm256_setzero_si256();
        let low = _mm256_set1_epi8((0xffu8 >> scaling.shift) as i8);
        let count = _mm_cvtsi32_si128(i32::from(scaling.shift));
        let offset = _mm256_set1_epi8(scaling.offset as i8);
        let (low2, count2) = if scaling.shift2 == 0 {
            (zero, _mm_cvtsi32_si128(0))
        } else {
            (
                _mm256_set1_epi8((0xffu8 >> scaling.shift2) as i8),
                _mm_cvtsi32_si128(i32::from(scaling.shift2)),
            )
        };
        let scale = |m: __m256i| {
            let scaled = _mm256_sub_epi8(m, _mm256_and_si256(_mm256_srl_epi16(m, count), low));
            let scaled =
                _mm256_sub_epi8(scaled, _mm256_and_si256(_mm256_srl_epi16(m, count2), low2));
            _mm256_max_epi8(_mm256_subs_epi8(scaled, offset), zero)
        };
        let load = |s: &[i8], at: usize| {
            let chunk = &s[at..at + 32];
            // SAFETY: `chunk` is 32 readable bytes; loadu has no alignment
            // requirement.
            unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) }
        };
        let store = |s: &mut [i8], at: usize, v: __m256i| {
            let chunk = &mut s[at..at + 32];
            // SAFETY: `chunk` is 32 writable bytes; storeu has no alignment
            // requirement.
            unsafe { _mm256_storeu_si256(chunk.as_mut_ptr().cast(), v) }
        };
        let mut j = 0;
        while j < full {
            let mut min1 = top;
            let mut min2 = top;
            let mut pos = zero;
            let mut sign = load(signs, j);
            for k in 0..d {
                let at = k * z + j;
                let (l0, l1) = load16(layer, at);
                let (r0, r1) = widen(load(messages, at));
                let q0 = _mm256_subs_epi16(l0, r0);
                let q1 = _mm256_subs_epi16(l1, r1);
                store16(layer, at, q0, q1);
                let q = narrow(q0, q1);
                let a = _mm256_abs_epi8(q);
                min2 = _mm256_min_epi8(min2, _mm256_max_epi8(min1, a));
                let below = _mm256_cmpgt_epi8(min1, a);
                pos = _mm256_blendv_epi8(pos, _mm256_set1_epi8(k as u8 as i8), below);
                min1 = _mm256_min_epi8(min1, a);
                sign = _mm256_xor_si256(sign, q);
            }
            let m1 = scale(min1);
            let m2 = scale(min2);
            for k in 0..d {
                let at = k * z + j;
                let (q0, q1) = load16(layer, at);
                let q = narrow(q0, q1);
                let second = _mm256_cmpeq_epi8(pos, _mm256_set1_epi8(k as u8 as i8));
                let mag = _mm256_blendv_epi8(m1, m2, second);
                let r =
                    _mm256_blendv_epi8(mag, _mm256_sub_epi8(zero, mag), _mm256_xor_si256(sign, q));
                let (r0, r1) = widen(r);
                store16(
                    layer,
                    at,
                    _mm256_adds_epi16(q0, r0),
                    _mm256_adds_epi16(q1, r1),
                );
                store(messages, at, r);
            }
            j += 32;
        }
    }
}

/// Whether the AVX-512 kernels can run on this CPU (AVX-512 F and BW:
/// 64 byte lanes per instruction, mask registers).
pub(crate) fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("gfni")
            && std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`layers_sum_product_columns_avx512`] can decode a code of
/// lifting `z` here: AVX-512 BW present and `z` a positive multiple of 64.
pub(crate) fn columns_kernel_fits_avx512(z: usize) -> bool {
    z >= 64 && z.is_multiple_of(64) && avx512_available()
}

/// [`layer_sum_product_columns_avx2`] with AVX-512 BW: 64 lanes per vector,
/// two vectors per step where `z` allows. The same arguments (`fresh`
/// included), the same result (lane by lane the portable kernel's).
///
/// # Panics
/// If [`columns_kernel_fits_avx512`] is false for the rows' `z`, or as
/// [`layer_sum_product_columns_avx2`].
#[cfg(test)]
#[allow(clippy::too_many_arguments)] // the kernel's inputs, all needed
pub(crate) fn layer_sum_product_columns_avx512(
    posterior: &mut [i16],
    rows: &CheckedRows,
    r: usize,
    messages: &mut [i8],
    signs: &[i8],
    cap: u8,
    fresh: bool,
    scratch: &mut Scratch,
) {
    layers_sum_product_columns_avx512(
        posterior,
        rows,
        r..r + 1,
        messages,
        signs,
        cap,
        fresh,
        scratch,
    );
}

/// [`layers_sum_product_columns_avx2`] with the AVX-512 BW kernel of
/// `layer_sum_product_columns_avx512`.
///
/// # Panics
/// If [`columns_kernel_fits_avx512`] is false for the rows' `z`, or as
/// [`layers_sum_product_columns_avx2`].
#[allow(clippy::too_many_arguments)] // the kernel's inputs, all needed
pub(crate) fn layers_sum_product_columns_avx512(
    posterior: &mut [i16],
    rows: &CheckedRows,
    layers: core::ops::Range<usize>,
    messages: &mut [i8],
    signs: &[i8],
    cap: u8,
    fresh: bool,
    scratch: &mut Scratch,
) {
    let z = rows.z;
    let (edges, d_max) = rows.extent(layers.clone());
    assert!(
        columns_kernel_fits_avx512(z)
            && rows.fit(posterior)
            && messages.len() >= edges * z
            && signs.len() >= layers.len() * z
    );
    // Both scratch buffers from a 64-byte boundary, so that no vector
    // access to them crosses a cache line.
    fit(&mut scratch.forward, d_max * 128 + 63);
    fit(&mut scratch.q16, d_max * 128 + 31);
    let at = aligned_start(scratch.forward.as_ptr(), 64);
    let forward = &mut scratch.forward[at..at + d_max * 128];
    let at = aligned_start(scratch.q16.as_ptr(), 32);
    let q16 = &mut scratch.q16[at..at + d_max * 128];
    let mut at = 0;
    for (i, r) in layers.enumerate() {
        let row = rows.row(r);
        let d = row.len();
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F and BW were detected
        // (`columns_kernel_fits_avx512`), z is a positive multiple of 64,
        // `posterior` holds every column with its margins of 64 values,
        // `messages` holds the `d·z` messages of this layer from `at` and
        // `signs` its z signs from `i·z` (all asserted above: the layers'
        // entries sum to `edges`), `row` has 1 to 255 entries with
        // distinct columns and shifts below z (`CheckedRows`), and the two
        // scratch buffers hold d_max·128 ≥ d·128 values each (sliced just
        // above).
        unsafe {
            x86_512::columns_sum_product(
                posterior,
                row,
                &mut messages[at..at + d * z],
                &signs[i * z..(i + 1) * z],
                z,
                cap,
                fresh,
                q16,
                forward,
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (
            &posterior, &messages, &signs, cap, fresh, i, row, &q16, &forward, at,
        );
        at += d * z;
    }
}

/// The index of the first element of a buffer at `p` that starts on a
/// 64-byte boundary, if one of the first `within` does (0 otherwise: the
/// kernels are correct at any alignment, only slower across cache lines).
pub(crate) fn aligned_start<T>(p: *const T, within: usize) -> usize {
    let at = p.align_offset(64);
    if at < within { at } else { 0 }
}

/// [`layer_parity_holds_avx2`] with AVX-512 BW, 64 lanes per step.
///
/// # Panics
/// If [`columns_kernel_fits_avx512`] is false for `z`, or as
/// [`layer_parity_holds_avx2`].
#[cfg(test)]
pub(crate) fn layer_parity_holds_avx512(
    posterior: &[i16],
    rows: &CheckedRows,
    r: usize,
    signs: &[i8],
) -> bool {
    layers_parity_fail_avx512(posterior, rows, r..r + 1, signs).is_none()
}

/// The first of the layers `layers` of `rows` whose checks the hard
/// decisions of the posterior columns do not all satisfy (`None`: every
/// check of every one of them holds); `signs` holds the syndrome signs of
/// those layers one after the other (`Z` per layer). Checks as
/// `layer_parity_holds_avx512` does, with one set of checks per call.
///
/// # Panics
/// If [`columns_kernel_fits_avx512`] is false for the rows' `z`, `layers` is not within
/// `rows`, `posterior` does not hold every column with its margins, or
/// `signs` is short (the decoder never calls it so).
pub(crate) fn layers_parity_fail_avx512(
    posterior: &[i16],
    rows: &CheckedRows,
    layers: core::ops::Range<usize>,
    signs: &[i8],
) -> Option<usize> {
    let z = rows.z;
    assert!(
        columns_kernel_fits_avx512(z) && rows.fit(posterior) && signs.len() >= layers.len() * z
    );
    let first = layers.start;
    let holds = |row: &[(u32, u32)], signs: &[i8]| -> bool {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F and BW were detected
        // (`columns_kernel_fits_avx512`), z is a positive multiple of 64,
        // `posterior` holds every column with its margins and `signs` z
        // values (asserted above), the shifts of `row` are below z
        // (`CheckedRows`).
        unsafe {
            x86_512::columns_parity_holds(posterior, row, signs, z)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (posterior, signs, row);
            unreachable!("columns_kernel_fits_avx512 is false off x86-64")
        }
    };
    layers
        .into_iter()
        .find(|&r| !holds(rows.row(r), &signs[(r - first) * z..(r - first + 1) * z]))
}

/// The AVX-512 BW form of the in-place sum-product kernel and the parity
/// check: the operations of `x86::lane_group` on vectors of 64 lanes
/// (posteriors as two vectors of 32 `i16`), a window that wraps around its
/// column read and written with masked loads and stores (for the half of
/// 32 lanes that straddles the column's end, `load_rotated`). Within a
/// layer
/// the kernel keeps its byte vectors (inputs, forward results, syndrome
/// signs, new messages) in the pack instruction's order
/// ([`narrow_packed`]), so that narrowing and widening stay inside 128-bit
/// quarters (cross-quarter shuffles cost more on the CPUs measured); the
/// messages are stored in lane order.
#[cfg(target_arch = "x86_64")]
mod x86_512 {
    use super::Byte;
    use core::arch::x86_64::*;

    /// 64 posteriors at `p`, as two vectors of 32.
    ///
    /// # Safety
    /// AVX-512 F/BW; `p..p + 64` readable.
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    unsafe fn read16(p: *const i16) -> (__m512i, __m512i) {
        // SAFETY: the caller guarantees 64 readable i16 (128 bytes) at
        // `p`; loadu has no alignment requirement.
        unsafe {
            (
                _mm512_loadu_si512(p.cast()),
                _mm512_loadu_si512(p.add(32).cast()),
            )
        }
    }

    /// Stores 64 posteriors at `p`.
    ///
    /// # Safety
    /// AVX-512 F/BW; `p..p + 64` writable.
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    unsafe fn write16(p: *mut i16, v0: __m512i, v1: __m512i) {
        // SAFETY: the caller guarantees 64 writable i16 (128 bytes) at
        // `p`; storeu has no alignment requirement.
        unsafe {
            _mm512_storeu_si512(p.cast(), v0);
            _mm512_storeu_si512(p.add(32).cast(), v1);
        }
    }

    /// 64 bytes at `p`.
    ///
    /// # Safety
    /// AVX-512 F/BW; `p..p + 64` readable.
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    unsafe fn read8<T: Byte>(p: *const T) -> __m512i {
        // SAFETY: the caller guarantees 64 readable bytes at `p` (`T` is
        // i8 or u8); loadu has no alignment requirement.
        unsafe { _mm512_loadu_si512(p.cast()) }
    }

    /// Stores 64 bytes at `p`.
    ///
    /// # Safety
    /// AVX-512 F/BW; `p..p + 64` writable.
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    unsafe fn write8<T: Byte>(p: *mut T, v: __m512i) {
        // SAFETY: the caller guarantees 64 writable bytes at `p` (`T` is
        // i8 or u8); storeu has no alignment requirement.
        unsafe { _mm512_storeu_si512(p.cast(), v) }
    }

    /// 64 signed bytes at `p`, widened to two vectors of 32 `i16`.
    ///
    /// # Safety
    /// AVX-512 F/BW; `p..p + 64` readable.
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    unsafe fn read8_widened(p: *const i8) -> (__m512i, __m512i) {
        // SAFETY: the caller guarantees 64 readable bytes at `p`; loadu has
        // no alignment requirement.
        unsafe {
            (
                _mm512_cvtepi8_epi16(_mm256_loadu_si256(p.cast())),
                _mm512_cvtepi8_epi16(_mm256_loadu_si256(p.add(32).cast())),
            )
        }
    }

    /// 64 posteriors (two vectors of 32) to bytes saturated to ±127 in the
    /// kernel's lane order: in each 128-bit quarter `i` the lanes `8i..8i +
    /// 8` of `v0`, then those of `v1` (what the pack instruction gives; the
    /// unpack instructions of [`widen_packed`] undo it without crossing
    /// quarters).
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    fn narrow_packed(v0: __m512i, v1: __m512i) -> __m512i {
        _mm512_max_epi8(_mm512_packs_epi16(v0, v1), _mm512_set1_epi8(-127))
    }

    /// 64 signed bytes in the order of [`narrow_packed`] to the two vectors
    /// of 32 `i16` it was made from: each byte next to its sign (every bit
    /// a copy of its top bit: one affine transform over GF(2)).
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    fn widen_packed(r: __m512i) -> (__m512i, __m512i) {
        let top_bit = _mm512_set1_epi64(0x8080_8080_8080_8080u64 as i64);
        let sign = _mm512_gf2p8affine_epi64_epi8::<0>(r, top_bit);
        (_mm512_unpacklo_epi8(r, sign), _mm512_unpackhi_epi8(r, sign))
    }

    /// Bytes in the order of [`narrow_packed`] to lane order.
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    fn from_packed(r: __m512i) -> __m512i {
        _mm512_permutexvar_epi64(_mm512_set_epi64(7, 5, 3, 1, 6, 4, 2, 0), r)
    }

    /// Bytes in lane order to the order of [`narrow_packed`].
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    fn to_packed(r: __m512i) -> __m512i {
        _mm512_permutexvar_epi64(_mm512_set_epi64(7, 3, 6, 2, 5, 1, 4, 0), r)
    }

    /// The lanes `t ≥ z − start` of a window of 64 at `start < z` (those
    /// that wrap to the column's start), as a mask: empty when the window
    /// fits.
    #[inline]
    fn wrapped(z: usize, start: usize) -> u64 {
        if start + 64 <= z {
            0
        } else {
            u64::MAX << (z - start)
        }
    }

    /// The 64 posteriors `col[(start + t) mod z]`, `t < 64`, of the column
    /// of `z ≥ 64` posteriors at `col`, `start < z`: the window at `start`,
    /// its wrapped lanes replaced by a load from before it (masked for the
    /// half of 32 lanes that straddles the column's end, plain for a half
    /// that lies wholly past it).
    ///
    /// # Safety
    /// AVX-512 F/BW; `col − 64 .. col + z + 64` readable (the column and
    /// its margins, [`super::COLUMN_MARGIN`]).
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    unsafe fn load_rotated(col: *const i16, z: usize, start: usize) -> (__m512i, __m512i) {
        // SAFETY: `start < z`, so `col + start .. col + start + 64` lies in
        // `col .. col + z + 64`; a wrapped lane `t` is read at
        // `col + start + t − z`, inside the column, a masked load touches
        // only its lanes, and the plain load of a half whose lanes all
        // wrap reads `col + start + 32 − z .. col + start + 64 − z`,
        // inside the column as `z − 32 ≤ start < z`.
        unsafe {
            let (x0, x1) = read16(col.add(start));
            let m = wrapped(z, start);
            if m == 0 {
                (x0, x1)
            } else {
                // A half whose lanes all wrap is one plain load.
                let y = col.add(start).sub(z);
                let (m0, m1) = (m as u32, (m >> 32) as u32);
                let x0 = if m0 == 0 {
                    x0
                } else {
                    _mm512_mask_loadu_epi16(x0, m0, y)
                };
                let x1 = if m1 == u32::MAX {
                    _mm512_loadu_si512(y.add(32).cast())
                } else {
                    _mm512_mask_loadu_epi16(x1, m1, y.add(32))
                };
                (x0, x1)
            }
        }
    }

    /// Stores `col[(start + t) mod z]`, `t < 64` (see [`load_rotated`]); in
    /// a window that wraps, the half of 32 lanes that straddles the
    /// column's end is two masked stores (the lanes that fit and the
    /// wrapped ones), the other half one plain store (masked stores cost
    /// more: a wrapped window with four of them made the decoder 2–3 %
    /// slower, BENCHMARKS.md).
    ///
    /// # Safety
    /// AVX-512 F/BW; `col .. col + z` writable, nothing else accessing it.
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    unsafe fn store_rotated(col: *mut i16, z: usize, start: usize, v0: __m512i, v1: __m512i) {
        // SAFETY: the lanes written are `col + start + t` for `t < z −
        // start` and `col + start + t − z` for the others, all inside the
        // column; masked stores write only their lanes, and a half is
        // stored plainly only when all its lanes fit or all wrap.
        unsafe {
            let at = col.add(start);
            let m = wrapped(z, start);
            if m == 0 {
                write16(at, v0, v1);
            } else {
                // A half whose lanes all fit or all wrap is one plain
                // store, the other two masked ones.
                let y = at.sub(z);
                let (m0, m1) = (m as u32, (m >> 32) as u32);
                if m0 == 0 {
                    _mm512_storeu_si512(at.cast(), v0);
                } else {
                    _mm512_mask_storeu_epi16(at, !m0, v0);
                    _mm512_mask_storeu_epi16(y, m0, v0);
                }
                if m1 == u32::MAX {
                    _mm512_storeu_si512(y.add(32).cast(), v1);
                } else {
                    _mm512_mask_storeu_epi16(at.add(32), !m1, v1);
                    _mm512_mask_storeu_epi16(y.add(32), m1, v1);
                }
            }
        }
    }

    /// The [`super::CORRECTION`] table in all four 128-bit lanes (the
    /// byte shuffle looks up within a lane).
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    fn correction_table() -> __m512i {
        let mut b = [0u8; 64];
        for quarter in b.chunks_exact_mut(16) {
            quarter.copy_from_slice(&super::CORRECTION);
        }
        // SAFETY: `b` is 64 readable bytes.
        unsafe { read8(b.as_ptr()) }
    }

    /// `(a + b + 1) >> 1` on 64 unsigned bytes: the byte average
    /// instruction itself (written out: the compiler rewrites the
    /// intrinsic into 16-bit arithmetic, see `x86::average`).
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    fn average(a: __m512i, b: __m512i) -> __m512i {
        let out: __m512i;
        // SAFETY: `vpavgb` on two vector registers: AVX-512 BW is enabled
        // for this function, it touches no memory, stack or flags.
        unsafe {
            core::arch::asm!(
                "vpavgb {out}, {a}, {b}",
                out = lateout(zmm_reg) out,
                a = in(zmm_reg) a,
                b = in(zmm_reg) b,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        out
    }

    /// `a ⊞ b` on 64 lanes of magnitudes in the offset form, exactly
    /// `super::boxplus` (see [`super::MAGNITUDE_OFFSET`]).
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    fn boxplus_offset(a: __m512i, b: __m512i, table: __m512i) -> __m512i {
        let lo = _mm512_min_epu8(a, b);
        let hi = _mm512_max_epu8(a, b);
        let c_sum = _mm512_shuffle_epi8(table, average(a, b));
        let diff = average(
            _mm512_sub_epi8(hi, lo),
            _mm512_set1_epi8((2 * super::MAGNITUDE_OFFSET) as i8),
        );
        let c_diff = _mm512_shuffle_epi8(table, diff);
        _mm512_sub_epi8(_mm512_add_epi8(lo, c_sum), c_diff)
    }

    /// The raw buffers of [`columns_sum_product`].
    struct Buffers {
        q16: *mut i16,
        forward: *mut u8,
        messages: *mut i8,
    }

    /// One whole sum-product layer on the posterior columns in place, 64
    /// lanes per vector (see `x86::columns_sum_product`).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and BW; `z` must be a positive
    /// multiple of 64, `posterior` must hold every column of `row` with its
    /// margins (`(c + 1)·z + 2·COLUMN_MARGIN` values, `COLUMN_MARGIN ≥
    /// 64`), every shift must be below `z`, `messages` must hold `d·z`
    /// values, `signs` `z`, and `q16` and `forward` `d·128` each (`d =
    /// row.len()`, 1 to 255). The result is the portable kernel's when no
    /// column appears twice in `row`.
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[allow(clippy::too_many_arguments)] // the kernel's inputs, all needed
    pub(super) unsafe fn columns_sum_product(
        posterior: &mut [i16],
        row: &[(u32, u32)],
        messages: &mut [i8],
        signs: &[i8],
        z: usize,
        cap: u8,
        fresh: bool,
        q16: &mut [i16],
        forward: &mut [u8],
    ) {
        const _: () = assert!(super::COLUMN_MARGIN >= 64);
        // SAFETY: the caller guarantees that `posterior` holds every column
        // of `row` with its margins, so the start of the first column is
        // inside it.
        let columns = unsafe { posterior.as_mut_ptr().add(super::COLUMN_MARGIN) };
        let buffers = Buffers {
            q16: q16.as_mut_ptr(),
            forward: forward.as_mut_ptr(),
            messages: messages.as_mut_ptr(),
        };
        let mut j = 0;
        while j + 128 <= z {
            // SAFETY: lanes j..j + 128 ≤ z, the caller's guarantees.
            unsafe {
                if fresh {
                    lane_group::<2, true>(columns, row, &buffers, signs, z, j, cap);
                } else {
                    lane_group::<2, false>(columns, row, &buffers, signs, z, j, cap);
                }
            };
            j += 128;
        }
        if j < z {
            // SAFETY: lanes j..j + 64 = z, the caller's guarantees.
            unsafe {
                if fresh {
                    lane_group::<1, true>(columns, row, &buffers, signs, z, j, cap);
                } else {
                    lane_group::<1, false>(columns, row, &buffers, signs, z, j, cap);
                }
            };
        }
    }

    /// Lanes `j..j + 64·V` of one layer (see [`columns_sum_product`]); with
    /// `FRESH` the messages are taken as zero and not read. The forward
    /// result of the last entry and the backward one of the first are not
    /// computed (nothing reads them).
    ///
    /// # Safety
    /// AVX-512 F/BW; the guarantees of [`columns_sum_product`] with
    /// `columns` the start of column 0 (entry `(c, s)`'s column starts at
    /// `columns + c·z`), and `j + 64·V ≤ z`.
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    #[inline]
    unsafe fn lane_group<const V: usize, const FRESH: bool>(
        columns: *mut i16,
        row: &[(u32, u32)],
        b: &Buffers,
        signs: &[i8],
        z: usize,
        j: usize,
        cap: u8,
    ) {
        let d = row.len();
        let zero = _mm512_setzero_si512();
        let table = correction_table();
        let rotated = |s: u32, j: usize| {
            let start = s as usize + j;
            if start >= z { start - z } else { start }
        };
        // SAFETY (the column of an entry): the caller guarantees that
        // `columns + c·z` is the start of a column inside the buffer.
        let column = |c: u32| unsafe { columns.add(c as usize * z) };
        let mut sign = [zero; V];
        for (v, sign) in sign.iter_mut().enumerate() {
            // SAFETY: `j + 64·v + 64 ≤ z` and `signs` holds z bytes.
            *sign = to_packed(unsafe { read8(signs.as_ptr().add(j + 64 * v)) });
        }
        let offset = _mm512_set1_epi8(super::MAGNITUDE_OFFSET as i8);
        let capped = cap < 127;
        let cap = _mm512_set1_epi8(cap.saturating_add(super::MAGNITUDE_OFFSET) as i8);
        let mut f = [zero; V];
        // SAFETY (the whole forward pass): `k < d` and `v < V`, so
        // `(k·V + v)·64 + 64 ≤ d·128` (the scratch buffers) and
        // `k·z + j + 64·v + 64 ≤ d·z` (`messages`); columns and shifts are
        // in range (caller), which is what `load_rotated` needs.
        for (k, &(c, s)) in row.iter().enumerate() {
            for v in 0..V {
                let at = (k * V + v) * 64;
                unsafe {
                    let (l0, l1) = load_rotated(column(c), z, rotated(s, j + 64 * v));
                    let (q0, q1) = if FRESH {
                        (l0, l1)
                    } else {
                        let (r0, r1) = read8_widened(b.messages.add(k * z + j + 64 * v));
                        (_mm512_subs_epi16(l0, r0), _mm512_subs_epi16(l1, r1))
                    };
                    write16(b.q16.add(at), q0, q1);
                    let q = narrow_packed(q0, q1);
                    sign[v] = _mm512_xor_si512(sign[v], q);
                    let a = _mm512_add_epi8(_mm512_abs_epi8(q), offset);
                    if k + 1 < d {
                        f[v] = if k == 0 {
                            a
                        } else {
                            boxplus_offset(f[v], a, table)
                        };
                        write8(b.forward.add(at), f[v]);
                    }
                }
            }
        }
        // Backward: lane magnitudes from the forward results before `k`
        // and the backward ones after it.
        let mut back = [zero; V];
        // The lanes whose product of signs (syndrome and all inputs) is
        // negative; a message is negative where this and its own input's
        // sign differ.
        let negative = sign.map(|s| _mm512_movepi8_mask(s));
        for (k, &(c, s)) in row.iter().enumerate().rev() {
            for v in 0..V {
                let at = (k * V + v) * 64;
                // SAFETY: as in the forward pass, and `forward` is read at
                // entry `k − 1 < d`.
                unsafe {
                    let (q0, q1) = read16(b.q16.add(at));
                    let q = narrow_packed(q0, q1);
                    let a = _mm512_add_epi8(_mm512_abs_epi8(q), offset);
                    let mag = if k + 1 == d {
                        if k == 0 {
                            _mm512_set1_epi8((127 + super::MAGNITUDE_OFFSET) as i8)
                        } else {
                            read8(b.forward.add(at - 64 * V))
                        }
                    } else if k == 0 {
                        back[v]
                    } else {
                        boxplus_offset(read8(b.forward.add(at - 64 * V)), back[v], table)
                    };
                    let mag = if capped {
                        _mm512_min_epu8(mag, cap)
                    } else {
                        mag
                    };
                    if k > 0 {
                        back[v] = if k + 1 == d {
                            a
                        } else {
                            boxplus_offset(back[v], a, table)
                        };
                    }
                    let mag = _mm512_sub_epi8(mag, offset);
                    let r =
                        _mm512_mask_sub_epi8(mag, negative[v] ^ _mm512_movepi8_mask(q), zero, mag);
                    let (r0, r1) = widen_packed(r);
                    store_rotated(
                        column(c),
                        z,
                        rotated(s, j + 64 * v),
                        _mm512_adds_epi16(q0, r0),
                        _mm512_adds_epi16(q1, r1),
                    );
                    write8(b.messages.add(k * z + j + 64 * v), from_packed(r));
                }
            }
        }
    }

    /// [`super::sign_bytes`] for 64 checks per word of `words`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and BW; `signs` must hold 64 bytes
    /// per word of `words`.
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    pub(super) unsafe fn sign_bytes(words: &[u64], signs: &mut [i8]) {
        let set = _mm512_set1_epi8(i8::MIN);
        for (i, &word) in words.iter().enumerate() {
            // SAFETY: `signs` holds 64 bytes per word (caller), so
            // `64·i + 64 ≤ signs.len()`.
            unsafe {
                write8(
                    signs.as_mut_ptr().add(64 * i),
                    _mm512_maskz_mov_epi8(word, set),
                )
            };
        }
    }

    /// Whether the hard decisions (sign bits) of the posterior columns
    /// satisfy every check of one layer (see `x86::columns_parity_holds`).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and BW; `z` a positive multiple of
    /// 64, `posterior` must hold every column of `row` with its margins
    /// (`(c + 1)·z + 2·COLUMN_MARGIN` values), every shift must be below
    /// `z`, and `signs` must hold `z` values.
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    pub(super) unsafe fn columns_parity_holds(
        posterior: &[i16],
        row: &[(u32, u32)],
        signs: &[i8],
        z: usize,
    ) -> bool {
        let p = posterior.as_ptr();
        let mut any = _mm512_setzero_si512();
        let mut j = 0;
        while j < z {
            // SAFETY: `j + 64 ≤ z` and `signs` holds z bytes.
            let (mut a0, mut a1) = unsafe { read8_widened(signs.as_ptr().add(j)) };
            for &(c, s) in row {
                let start = s as usize + j;
                let start = if start >= z { start - z } else { start };
                // SAFETY: the column start is inside `posterior` and the
                // window is one `load_rotated` reads (caller's guarantees).
                let (l0, l1) =
                    unsafe { load_rotated(p.add(super::COLUMN_MARGIN + c as usize * z), z, start) };
                a0 = _mm512_xor_si512(a0, l0);
                a1 = _mm512_xor_si512(a1, l1);
            }
            any = _mm512_or_si512(any, _mm512_or_si512(a0, a1));
            j += 64;
        }
        _mm512_test_epi16_mask(any, _mm512_set1_epi16(i16::MIN)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A posterior from random bits: small values (near the 8-bit range,
    /// where narrowing matters), large ones and the saturation bounds.
    fn posterior(x: u64) -> i16 {
        match x % 4 {
            0 => ((x >> 8) % 301) as i16 - 150,
            1 => (x >> 8) as i16,
            2 => {
                if x & 256 == 0 {
                    POSTERIOR_MAX
                } else {
                    -POSTERIOR_MAX
                }
            }
            _ => ((x >> 8) % 61) as i16 - 30,
        }
        .max(-POSTERIOR_MAX)
    }

    #[test]
    fn kernels_agree() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (d, z, shift, offset) in [
            (3, 32, 2, 0),
            (7, 64, 3, 1),
            (20, 96, 1, 2),
            (5, 45, 2, 0),
            (255, 33, 4, 3),
            (2, 1, 2, 0),
        ] {
            let scaling = Scaling {
                shift,
                shift2: shift + 1,
                offset,
            };
            let layer: Vec<i16> = (0..d * z).map(|_| posterior(next())).collect();
            let messages: Vec<i8> = (0..d * z).map(|_| ((next() % 61) as i8) - 30).collect();
            let signs: Vec<i8> = (0..z)
                .map(|_| if next() & 1 == 1 { i8::MIN } else { 0 })
                .collect();
            let (mut l1, mut m1) = (layer.clone(), messages.clone());
            let (mut l2, mut m2) = (layer, messages);
            layer_portable(
                &mut l1,
                &mut m1,
                &signs,
                d,
                z,
                scaling,
                &mut Scratch::new(z),
            );
            layer_avx2(
                &mut l2,
                &mut m2,
                &signs,
                d,
                z,
                scaling,
                &mut Scratch::new(z),
            );
            assert_eq!((l1, m1), (l2, m2), "d={d} z={z}");
        }
    }

    #[test]
    fn sum_product_kernels_agree() {
        let mut state = 0x0fed_cba9_8765_4321u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (d, z) in [
            (1, 32),
            (2, 32),
            (3, 64),
            (7, 96),
            (20, 45),
            (255, 33),
            (2, 1),
            (50, 64),
        ] {
            let layer: Vec<i16> = (0..d * z).map(|_| posterior(next())).collect();
            let messages: Vec<i8> = (0..d * z)
                .map(|_| ((next() % 255) as i16 - 127) as i8)
                .collect();
            let signs: Vec<i8> = (0..z)
                .map(|_| if next() & 1 == 1 { i8::MIN } else { 0 })
                .collect();
            let (mut l1, mut m1) = (layer.clone(), messages.clone());
            let (mut l2, mut m2) = (layer, messages);
            let cap = [27, 127, 5][d % 3];
            layer_sum_product_portable(&mut l1, &mut m1, &signs, d, z, cap, &mut Scratch::new(z));
            layer_sum_product_avx2(&mut l2, &mut m2, &signs, d, z, cap, &mut Scratch::new(z));
            assert_eq!((l1, m1), (l2, m2), "d={d} z={z}");
        }
    }

    /// Entry `i` is `8·ln(1 + e^(−x/8))` at `x = max(2i − ½, 0)`, rounded,
    /// and `c(x)` is within a rounding step of the exact correction for
    /// every `x`, exactly its rounding except at `x = 22`.
    #[test]
    fn correction_table() {
        let exact = |x: f64| 8.0 * (1.0 + (-x / 8.0).exp()).ln();
        for (i, &c) in CORRECTION.iter().enumerate() {
            let x = (2.0 * i as f64 - 0.5).max(0.0);
            assert_eq!(f64::from(c), exact(x).round(), "entry {i}");
        }
        for x in 0..=254u16 {
            let got = f64::from(correction(x));
            assert!((got - exact(f64::from(x))).abs() < 0.51, "c({x}) = {got}");
            if x != 22 {
                assert_eq!(got, exact(f64::from(x)).round(), "c({x})");
            }
        }
    }

    /// The in-place AVX2 kernel on posterior columns gives exactly what
    /// copying the rotated columns into a layer buffer, the portable
    /// kernel and copying them back give, shifts that wrap inside a
    /// vector of 32 lanes included.
    #[test]
    fn in_place_kernel_matches_layer_buffer() {
        let mut state = 0x005e_ed0f_1a7e_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (z, columns, row) in [
            (32, 4, vec![(0u32, 0u32), (2, 31), (3, 17)]),
            (64, 3, vec![(1, 63)]),
            (96, 8, vec![(7, 5), (0, 64), (3, 95), (5, 32), (6, 1)]),
            (
                256,
                60,
                (0..50u32).map(|k| (k + 10, (k * 37 + 3) % 256)).collect(),
            ),
            (128, 9, vec![(8, 127), (0, 64), (4, 1), (2, 63), (6, 0)]),
            (
                192,
                30,
                (0..20u32).map(|k| (29 - k, (k * 53 + 11) % 192)).collect(),
            ),
        ] {
            if !columns_kernel_fits(z) {
                return;
            }
            let d = row.len();
            let posterior: Vec<i16> = (0..columns * z + 2 * COLUMN_MARGIN)
                .map(|_| posterior(next()))
                .collect();
            let messages: Vec<i8> = (0..d * z)
                .map(|_| ((next() % 255) as i16 - 127) as i8)
                .collect();
            let signs: Vec<i8> = (0..z)
                .map(|_| if next() & 1 == 1 { i8::MIN } else { 0 })
                .collect();
            let cap = [27, 127, 5][(d + z / 32) % 3];
            // Through a layer buffer and the portable kernel.
            let reference = |messages: &[i8]| {
                let (mut p, mut m) = (posterior.clone(), messages.to_vec());
                let mut layer = vec![0i16; d * z];
                for (k, &(c, s)) in row.iter().enumerate() {
                    for t in 0..z {
                        layer[k * z + t] = p[COLUMN_MARGIN + c as usize * z + (s as usize + t) % z];
                    }
                }
                layer_sum_product_portable(
                    &mut layer,
                    &mut m,
                    &signs,
                    d,
                    z,
                    cap,
                    &mut Scratch::new(z),
                );
                for (k, &(c, s)) in row.iter().enumerate() {
                    for t in 0..z {
                        p[COLUMN_MARGIN + c as usize * z + (s as usize + t) % z] = layer[k * z + t];
                    }
                }
                (p, m)
            };
            type Kernel =
                fn(&mut [i16], &CheckedRows, usize, &mut [i8], &[i8], u8, bool, &mut Scratch);
            let rows = CheckedRows::new([&row[..]], z).unwrap();
            let mut kernels: Vec<(&str, Kernel)> = vec![("AVX2", layer_sum_product_columns_avx2)];
            if columns_kernel_fits_avx512(z) {
                kernels.push(("AVX-512", layer_sum_product_columns_avx512));
            }
            let (p1, m1) = reference(&messages);
            // Fresh: the messages are read as zero, whatever they hold.
            let fresh = reference(&vec![0; d * z]);
            let mut p2 = Vec::new();
            for (name, kernel) in kernels {
                let (mut p, mut m) = (posterior.clone(), messages.clone());
                kernel(
                    &mut p,
                    &rows,
                    0,
                    &mut m,
                    &signs,
                    cap,
                    false,
                    &mut Scratch::new(z),
                );
                assert_eq!((&p1, &m1), (&p, &m), "{name} z={z} d={d}");
                let (mut pf, mut mf) = (posterior.clone(), messages.clone());
                kernel(
                    &mut pf,
                    &rows,
                    0,
                    &mut mf,
                    &signs,
                    cap,
                    true,
                    &mut Scratch::new(z),
                );
                assert_eq!((&fresh.0, &fresh.1), (&pf, &mf), "{name} fresh z={z} d={d}");
                p2 = p;
            }
            // The parity check: syndrome signs the decisions satisfy hold,
            // then one lane off fails.
            let mut matching: Vec<i8> = (0..z)
                .map(|t| {
                    let odd = row.iter().fold(false, |o, &(c, s)| {
                        o ^ (p2[COLUMN_MARGIN + c as usize * z + (s as usize + t) % z] < 0)
                    });
                    if odd { i8::MIN } else { 0 }
                })
                .collect();
            assert!(layer_parity_holds_avx2(&p2, &rows, 0, &matching));
            let avx512 = columns_kernel_fits_avx512(z);
            assert!(!avx512 || layer_parity_holds_avx512(&p2, &rows, 0, &matching));
            matching[z - 1 - d % z] ^= i8::MIN;
            assert!(!layer_parity_holds_avx2(&p2, &rows, 0, &matching));
            assert!(!avx512 || !layer_parity_holds_avx512(&p2, &rows, 0, &matching));
            // Each lane alone failing is caught.
            if avx512 {
                matching[z - 1 - d % z] ^= i8::MIN;
                for t in (0..z).step_by(7) {
                    matching[t] ^= i8::MIN;
                    assert!(
                        !layer_parity_holds_avx512(&p2, &rows, 0, &matching),
                        "lane {t}"
                    );
                    matching[t] ^= i8::MIN;
                }
            }
        }
    }

    /// The rows the in-place kernels take: a row that lists a column
    /// twice, an empty or too long row and a shift of `z` are refused.
    #[test]
    fn checked_rows() {
        let ok: [&[(u32, u32)]; 2] = [&[(0, 0), (3, 31)], &[(7, 5)]];
        let rows = CheckedRows::new(ok, 32).unwrap();
        assert_eq!((rows.row(1), rows.columns), (&[(7, 5)][..], 8));
        assert!(rows.fit(&[0; 8 * 32 + 2 * COLUMN_MARGIN]));
        assert!(!rows.fit(&[0; 8 * 32 + 2 * COLUMN_MARGIN - 1]));
        let twice: [&[(u32, u32)]; 1] = [&[(2, 0), (2, 1)]];
        assert!(CheckedRows::new(twice, 32).is_none());
        let empty: [&[(u32, u32)]; 1] = [&[]];
        assert!(CheckedRows::new(empty, 32).is_none());
        let shift: [&[(u32, u32)]; 1] = [&[(1, 32)]];
        assert!(CheckedRows::new(shift, 32).is_none());
        let long: Vec<(u32, u32)> = (0..256).map(|c| (c, 0)).collect();
        assert!(CheckedRows::new([&long[..]], 32).is_none());
        assert!(CheckedRows::new([&long[..255]], 32).is_some());
    }

    /// The syndrome sign bytes: set bits give `i8::MIN`, clear ones 0, at
    /// lengths below, at and past whole words (the vector path and the
    /// tail).
    #[test]
    fn sign_bytes_spread_the_bits() {
        let words = [
            0x8000_0000_0000_0001u64,
            0x0123_4567_89ab_cdef,
            u64::MAX,
            0x5555,
        ];
        for len in [0, 1, 63, 64, 65, 130, 192, 200, 256] {
            let mut signs = vec![7i8; len];
            sign_bytes(&words, &mut signs);
            for (i, &sign) in signs.iter().enumerate() {
                let bit = (words[i / 64] >> (i % 64)) & 1;
                assert_eq!(
                    sign,
                    if bit == 1 { i8::MIN } else { 0 },
                    "len {len} bit {i}"
                );
            }
        }
    }

    /// The packed hard decisions: bit `i` set iff posterior `i` is
    /// negative, lengths that are and are not whole words, 0 and the
    /// bounds included.
    #[test]
    fn sign_words_packs_the_decisions() {
        let mut state = 0x51_9e_u64;
        for n in [0usize, 1, 63, 64, 65, 200, 4096 + 17] {
            let posteriors: Vec<i16> = (0..n)
                .map(|i| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    match i % 5 {
                        0 => 0,
                        1 => i16::MIN,
                        2 => i16::MAX,
                        _ => posterior(state),
                    }
                })
                .collect();
            let mut words = vec![u64::MAX; n.div_ceil(64)];
            sign_words(&posteriors, &mut words);
            let mut portable = vec![u64::MAX; n.div_ceil(64)];
            sign_words_portable(&posteriors, &mut portable);
            assert_eq!(words, portable, "n={n}");
            for (i, &p) in posteriors.iter().enumerate() {
                assert_eq!((words[i / 64] >> (i % 64)) & 1 == 1, p < 0, "n={n} i={i}");
            }
            if n % 64 != 0 {
                assert_eq!(words[n / 64] >> (n % 64), 0, "n={n}: bits past the end");
            }
        }
    }

    /// The offset form of the in-place kernels ([`MAGNITUDE_OFFSET`]):
    /// for every pair of magnitudes the byte shuffle's lookups at the
    /// averages give `c(a + b)` and `c(|a − b|)`, and `min + c(a + b) −
    /// c(|a − b|)` never falls below 0, so the offset result is
    /// `boxplus(a, b) + MAGNITUDE_OFFSET` with no floor.
    #[test]
    fn offset_boxplus_needs_no_floor() {
        let shuffle = |i: u16| {
            let i = u8::try_from(i).unwrap();
            if i & 0x80 != 0 {
                0
            } else {
                CORRECTION[usize::from(i & 15)]
            }
        };
        let k = u16::from(MAGNITUDE_OFFSET);
        for a in 0..=127u8 {
            for b in 0..=127u8 {
                let (oa, ob) = (u16::from(a) + k, u16::from(b) + k);
                let (lo, hi) = (a.min(b), a.max(b));
                let c_sum = shuffle((oa + ob + 1) >> 1);
                let c_diff = shuffle((u16::from(hi - lo) + 2 * k + 1) >> 1);
                assert_eq!(c_sum, correction(u16::from(a) + u16::from(b)));
                assert_eq!(c_diff, correction(u16::from(hi - lo)));
                let offset = i16::from(lo) + i16::from(c_sum) - i16::from(c_diff);
                assert!(offset >= 0, "{a} ⊞ {b}");
                assert_eq!(offset, i16::from(boxplus(a, b)));
            }
        }
    }

    /// Box-plus of two magnitudes against `2·atanh(tanh(a/2)·tanh(b/2))`
    /// in steps of 1/8 nat: within one step everywhere.
    #[test]
    fn boxplus_is_near_exact() {
        for a in 0..=127u8 {
            for b in 0..=127u8 {
                let (x, y) = (f64::from(a) / 8.0, f64::from(b) / 8.0);
                let exact = 2.0 * ((x / 2.0).tanh() * (y / 2.0).tanh()).atanh() * 8.0;
                let got = f64::from(boxplus(a, b));
                assert!(
                    (got - exact.min(127.0)).abs() <= 1.0,
                    "{a} ⊞ {b}: {got} vs {exact}"
                );
            }
        }
    }
}
