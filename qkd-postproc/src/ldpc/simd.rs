//! The layer kernels of the decoder, sum-product and min-sum, each
//! portable and AVX2.
//!
//! This is the only module of `ldpc` with `unsafe` code: AVX2 intrinsics
//! behind run-time detection. Both kernels of a rule compute, lane by lane,
//! exactly the update written in [`super::decode`] (16-bit saturating
//! posteriors, their 8-bit saturated view for the check, saturating byte
//! arithmetic on messages, the same table, the same scaling of the minima,
//! ties keep the first minimum), so their results are bit-identical;
//! `tests::kernels_agree` and the property test in `tests/ldpc.rs` check
//! it.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

/// Per-layer lane state of the portable kernel and the parity scratch of
/// the syndrome check, `Z` bytes each.
#[derive(Debug, Clone)]
pub(crate) struct Scratch {
    min1: Vec<i8>,
    min2: Vec<i8>,
    pos: Vec<u8>,
    sign: Vec<i8>,
    /// Forward partial results of the sum-product kernel (`d` rows).
    forward: Vec<u8>,
    pub(crate) parity: Vec<i16>,
}

impl Scratch {
    pub(crate) fn new(z: usize) -> Self {
        Scratch {
            min1: vec![0; z],
            min2: vec![0; z],
            pos: vec![0; z],
            sign: vec![0; z],
            forward: Vec::new(),
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

/// The bound of a posterior: 16-bit, symmetric.
pub(crate) const POSTERIOR_MAX: i16 = i16::MAX;

/// A posterior sum, saturated to `±POSTERIOR_MAX`.
#[inline]
fn sat16(x: i32) -> i16 {
    x.clamp(-i32::from(POSTERIOR_MAX), i32::from(POSTERIOR_MAX)) as i16
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
    scratch.min1.resize(w, 0);
    scratch.min2.resize(w, 0);
    scratch.pos.resize(w, 0);
    scratch.sign.resize(w, 0);
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

/// `8·ln(1 + e^(−x/8))` for `x = i`, rounded: the correction term of the
/// box-plus operation on LLRs in steps of 1/8 nat, indexed by `min(x, 31)`
/// (0 from `x = 22`; `tests::correction_table` checks it).
pub(crate) const CORRECTION: [u8; 32] = [
    6, 5, 5, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

#[inline]
fn correction(x: u8) -> u8 {
    CORRECTION[usize::from(x.min(31))]
}

/// The magnitude of `a ⊞ b` for magnitudes `a, b ≤ 127`:
/// `min(a, b) + c(a + b) − c(|a − b|)`, floored at 0, capped at 127, with
/// `c` the [`CORRECTION`] table (the exact rule is
/// `2·atanh(tanh(a/2)·tanh(b/2))`; the table form is exact to a rounding
/// step).
#[inline]
fn boxplus(a: u8, b: u8) -> u8 {
    a.min(b)
        .saturating_add(correction(a.saturating_add(b)))
        .saturating_sub(correction(a.abs_diff(b)))
        .min(127)
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
    scratch.sign.resize(w, 0);
    scratch.min1.resize(w, 0);
    scratch.forward.resize(d * w, 0);
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
        scratch.forward.resize(d.max(1) * 32, 0);
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

#[cfg(target_arch = "x86_64")]
mod x86 {
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
        let thirty_one = _mm256_set1_epi8(31);
        let cap = _mm256_set1_epi8(cap as i8);
        let lo16 = _mm256_set1_epi16(-super::POSTERIOR_MAX);
        // The two halves of the table, each repeated in both 128-bit lanes
        // (the shuffle looks up within a lane).
        let half = |h: usize| {
            let t = &super::CORRECTION[16 * h..16 * h + 16];
            let mut b = [0u8; 32];
            b[..16].copy_from_slice(t);
            b[16..].copy_from_slice(t);
            // SAFETY: `b` is 32 readable bytes; loadu has no alignment
            // requirement.
            unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
        };
        let (table_lo, table_hi) = (half(0), half(1));
        // c(x) = CORRECTION[min(x, 31)] for unsigned bytes x: both halves
        // looked up by the low 4 bits, bit 4 (moved to bit 7) picks one.
        let correction = |x: __m256i| {
            let i = _mm256_min_epu8(x, thirty_one);
            _mm256_blendv_epi8(
                _mm256_shuffle_epi8(table_lo, i),
                _mm256_shuffle_epi8(table_hi, i),
                _mm256_slli_epi16::<3>(i),
            )
        };
        let boxplus = |a: __m256i, b: __m256i| {
            let sum = _mm256_adds_epu8(a, b);
            let diff = _mm256_or_si256(_mm256_subs_epu8(a, b), _mm256_subs_epu8(b, a));
            let m = _mm256_adds_epu8(_mm256_min_epu8(a, b), correction(sum));
            _mm256_min_epu8(_mm256_subs_epu8(m, correction(diff)), top)
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
        let load_f = |s: &[u8], k: usize| {
            let chunk = &s[k * 32..k * 32 + 32];
            // SAFETY: `chunk` is 32 readable bytes; loadu has no alignment
            // requirement.
            unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) }
        };
        let store_f = |s: &mut [u8], k: usize, v: __m256i| {
            let chunk = &mut s[k * 32..k * 32 + 32];
            // SAFETY: `chunk` is 32 writable bytes; storeu has no alignment
            // requirement.
            unsafe { _mm256_storeu_si256(chunk.as_mut_ptr().cast(), v) }
        };
        let mut j = 0;
        while j < full {
            let mut sign = load(signs, j);
            let mut f = zero;
            for k in 0..d {
                let at = k * z + j;
                let (l0, l1) = load16(layer, at);
                let (r0, r1) = widen(load(messages, at));
                let q0 = _mm256_max_epi16(_mm256_subs_epi16(l0, r0), lo16);
                let q1 = _mm256_max_epi16(_mm256_subs_epi16(l1, r1), lo16);
                store16(layer, at, q0, q1);
                let q = narrow(q0, q1);
                sign = _mm256_xor_si256(sign, q);
                let a = _mm256_abs_epi8(q);
                f = if k == 0 { a } else { boxplus(f, a) };
                store_f(forward, k, f);
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
                    (false, true) => load_f(forward, k - 1),
                    (false, false) => boxplus(load_f(forward, k - 1), back),
                };
                let mag = _mm256_min_epu8(mag, cap);
                back = if k + 1 == d { a } else { boxplus(back, a) };
                let r =
                    _mm256_blendv_epi8(mag, _mm256_sub_epi8(zero, mag), _mm256_xor_si256(sign, q));
                let (r0, r1) = widen(r);
                store16(
                    layer,
                    at,
                    _mm256_max_epi16(_mm256_adds_epi16(q0, r0), lo16),
                    _mm256_max_epi16(_mm256_adds_epi16(q1, r1), lo16),
                );
                store(messages, at, r);
            }
            j += 32;
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
        let lo16 = _mm256_set1_epi16(-super::POSTERIOR_MAX);
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
                let q0 = _mm256_max_epi16(_mm256_subs_epi16(l0, r0), lo16);
                let q1 = _mm256_max_epi16(_mm256_subs_epi16(l1, r1), lo16);
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
                    _mm256_max_epi16(_mm256_adds_epi16(q0, r0), lo16),
                    _mm256_max_epi16(_mm256_adds_epi16(q1, r1), lo16),
                );
                store(messages, at, r);
            }
            j += 32;
        }
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

    /// The table is `8·ln(1 + e^(−x/8))`.
    #[test]
    fn correction_table() {
        for (i, &c) in CORRECTION.iter().enumerate() {
            let x = i as f64;
            let want = (8.0 * (1.0 + (-x / 8.0).exp()).ln()).round();
            assert_eq!(f64::from(c), want, "entry {i}");
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
