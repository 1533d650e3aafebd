//! Carry-less multiplication and GF(2^128) arithmetic: a portable,
//! constant-time implementation and a PCLMULQDQ one, chosen at run time.
//!
//! This is the only module of the crate with `unsafe` code: the calls into
//! `#[target_feature]` functions after the CPU was checked for the feature.
//! Every kernel exists once per backend (portable, PCLMULQDQ, VPCLMULQDQ on
//! 256-bit AVX2 vectors, AVX-512 VPCLMULQDQ), mostly generated from one macro body, so the paths run the
//! same algorithm and give identical output (the tests compare them bit for
//! bit).
//!
//! Field: GF(2^128) = GF(2)[z] / (z^128 + z^7 + z^2 + z + 1), an element is a
//! `u128` whose bit `i` is the coefficient of `z^i` (no bit reflection).
#![allow(unsafe_code)]

/// Which carry-less multiplication the hashing uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// Plain integer code, constant-time (integer multiplications with holes,
    /// no secret-dependent table lookups or branches); runs everywhere.
    Portable,
    /// x86-64 `PCLMULQDQ` (with SSE4.1), detected at run time.
    Pclmul,
    /// x86-64 `VPCLMULQDQ` on 512-bit vectors (AVX-512F/BW): four field
    /// multiplications per instruction in the FFT butterflies.
    Avx512,
    /// x86-64 `VPCLMULQDQ` on 256-bit vectors (AVX2): two field
    /// multiplications per instruction in the FFT butterflies, for CPUs
    /// with `VPCLMULQDQ` but without AVX-512 (e.g. AMD Zen 3, Intel Alder
    /// Lake).
    Avx2,
}

impl Backend {
    /// The fastest backend this CPU supports.
    #[must_use]
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("pclmulqdq") && has!("sse4.1") {
                if has!("avx512f") && has!("avx512bw") && has!("vpclmulqdq") {
                    return Backend::Avx512;
                }
                if has!("avx2") && has!("vpclmulqdq") {
                    return Backend::Avx2;
                }
                return Backend::Pclmul;
            }
        }
        Backend::Portable
    }

    /// Whether this backend can run on this CPU.
    #[must_use]
    pub fn is_available(self) -> bool {
        match self {
            Backend::Portable => true,
            Backend::Pclmul => Backend::detect() != Backend::Portable,
            Backend::Avx512 => Backend::detect() == Backend::Avx512,
            Backend::Avx2 => {
                #[cfg(target_arch = "x86_64")]
                {
                    use std::arch::is_x86_feature_detected as has;
                    has!("pclmulqdq") && has!("sse4.1") && has!("avx2") && has!("vpclmulqdq")
                }
                #[cfg(not(target_arch = "x86_64"))]
                false
            }
        }
    }
}

/// Masks with every fifth bit set, offset by 0..5.
const HOLE_MASKS: [u64; 5] = {
    let mut m = [0u64; 5];
    let mut i = 0;
    while i < 64 {
        m[i % 5] |= 1 << i;
        i += 1;
    }
    m
};

/// 128-bit versions of the masks for the product bits.
const HOLE_MASKS_128: [u128; 5] = {
    let mut m = [0u128; 5];
    let mut i = 0;
    while i < 128 {
        m[i % 5] |= 1 << i;
        i += 1;
    }
    m
};

/// Carry-less product of two 64-bit words, portable and constant-time.
///
/// Both operands are split into five interleaved masks with four-bit holes
/// between the set bits; an integer product of two such parts sums at most 13
/// terms per output position, so the carries stay inside the holes and the
/// parity of each position is its lowest bit.
#[inline]
#[must_use]
pub(crate) fn clmul64_portable(a: u64, b: u64) -> u128 {
    let mut r = 0u128;
    let av = HOLE_MASKS.map(|m| u128::from(a & m));
    let bv = HOLE_MASKS.map(|m| u128::from(b & m));
    for (k, mask) in HOLE_MASKS_128.iter().enumerate() {
        let mut acc = 0u128;
        for (i, x) in av.iter().enumerate() {
            acc ^= x * bv[(k + 5 - i) % 5];
        }
        r |= acc & mask;
    }
    r
}

/// Reduce a 256-bit product `[x0, x1, x2, x3]` modulo z^128 + z^7 + z^2 + z + 1.
#[inline]
fn reduce_portable(x0: u64, mut x1: u64, mut x2: u64, x3: u64) -> u128 {
    x1 ^= x3 ^ (x3 << 1) ^ (x3 << 2) ^ (x3 << 7);
    x2 ^= (x3 >> 63) ^ (x3 >> 62) ^ (x3 >> 57);
    let lo = x0 ^ x2 ^ (x2 << 1) ^ (x2 << 2) ^ (x2 << 7);
    x1 ^= (x2 >> 63) ^ (x2 >> 62) ^ (x2 >> 57);
    (u128::from(x1) << 64) | u128::from(lo)
}

/// Product in GF(2^128), portable.
#[inline]
#[must_use]
pub(crate) fn gf128_mul_portable(a: u128, b: u128) -> u128 {
    let (a0, a1) = (a as u64, (a >> 64) as u64);
    let (b0, b1) = (b as u64, (b >> 64) as u64);
    let lo = clmul64_portable(a0, b0);
    let hi = clmul64_portable(a1, b1);
    let mid = clmul64_portable(a0 ^ a1, b0 ^ b1) ^ lo ^ hi;
    let x0 = lo as u64;
    let x1 = (lo >> 64) as u64 ^ mid as u64;
    let x2 = hi as u64 ^ (mid >> 64) as u64;
    let x3 = (hi >> 64) as u64;
    reduce_portable(x0, x1, x2, x3)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::{
        __m128i, _mm_clmulepi64_si128, _mm_cvtsi64_si128, _mm_slli_si128, _mm_srli_si128,
        _mm_xor_si128,
    };

    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
    pub(super) fn to_m128(x: u128) -> __m128i {
        // SAFETY: both types are 16 plain bytes with no invalid bit
        // patterns; on little-endian x86-64 the low 64 bits of the u128 are
        // the low lane, as `_mm_set_epi64x(hi, lo)` would put them.
        unsafe { core::mem::transmute::<u128, __m128i>(x) }
    }

    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
    pub(super) fn from_m128(x: __m128i) -> u128 {
        // SAFETY: as in `to_m128`.
        unsafe { core::mem::transmute::<__m128i, u128>(x) }
    }

    /// Carry-less 64 x 64 -> 128 with PCLMULQDQ.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
    pub(super) fn clmul64(a: u64, b: u64) -> u128 {
        from_m128(_mm_clmulepi64_si128::<0>(
            _mm_cvtsi64_si128(a as i64),
            _mm_cvtsi64_si128(b as i64),
        ))
    }

    /// GF(2^128) product; `b_fold` is `b ^ (b >> 64)` in its low word
    /// (precomputed when `b` is a twiddle reused many times).
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
    pub(super) fn gf128_mul_m(a: __m128i, b: __m128i, b_fold: __m128i) -> __m128i {
        let lo = _mm_clmulepi64_si128::<0x00>(a, b);
        let hi = _mm_clmulepi64_si128::<0x11>(a, b);
        let a_fold = _mm_xor_si128(a, _mm_srli_si128::<8>(a));
        let mid = _mm_xor_si128(
            _mm_clmulepi64_si128::<0x00>(a_fold, b_fold),
            _mm_xor_si128(lo, hi),
        );
        let x01 = _mm_xor_si128(lo, _mm_slli_si128::<8>(mid));
        let x23 = _mm_xor_si128(hi, _mm_srli_si128::<8>(mid));
        let poly = _mm_cvtsi64_si128(0x87);
        // x3 * (z^7 + z^2 + z + 1) lands at words 1..2.
        let t = _mm_clmulepi64_si128::<0x01>(x23, poly);
        let x01 = _mm_xor_si128(x01, _mm_slli_si128::<8>(t));
        let x23 = _mm_xor_si128(x23, _mm_srli_si128::<8>(t));
        // x2 * (z^7 + z^2 + z + 1) lands at words 0..1.
        let u = _mm_clmulepi64_si128::<0x00>(x23, poly);
        _mm_xor_si128(x01, u)
    }

    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
    pub(super) fn fold(b: __m128i) -> __m128i {
        _mm_xor_si128(b, _mm_srli_si128::<8>(b))
    }

    /// A twiddle prepared for repeated multiplication.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
    pub(super) fn prep(w: u128) -> (__m128i, __m128i) {
        let wm = to_m128(w);
        (wm, fold(wm))
    }

    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
    pub(super) fn apply(w: (__m128i, __m128i), x: u128) -> u128 {
        from_m128(gf128_mul_m(to_m128(x), w.0, w.1))
    }

    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
    pub(super) fn gf128_mul(a: u128, b: u128) -> u128 {
        let bm = to_m128(b);
        from_m128(gf128_mul_m(to_m128(a), bm, fold(bm)))
    }
}

/// Generates the kernels for one backend from one body. `$attr` is the
/// target-feature attribute (or `inline`), `$clmul` the 64-bit carry-less
/// product, `$prep` prepares a constant factor and `$apply` multiplies by it.
macro_rules! kernels {
    ($name:ident, [$($attr:meta),*], $clmul:path, $prep:path, $apply:path) => {
        /// Kernels of one backend.
        pub(crate) mod $name {
            #[allow(unused_imports)]
            use super::*;

            /// `out ^= a * b` (schoolbook over words); `out.len() >= a.len() + b.len()`.
            $(#[$attr])*
            pub(crate) fn mul_schoolbook_xor(a: &[u64], b: &[u64], out: &mut [u64]) {
                for (i, &x) in a.iter().enumerate() {
                    if b.is_empty() {
                        break;
                    }
                    let row = &mut out[i..i + b.len() + 1];
                    let mut carry = 0u64;
                    for (o, &y) in row.iter_mut().zip(b) {
                        let p = $clmul(x, y);
                        *o ^= p as u64 ^ carry;
                        carry = (p >> 64) as u64;
                    }
                    row[b.len()] ^= carry;
                }
            }

            /// One forward butterfly pass: `lo[i] += w·hi[i]; hi[i] += lo[i]`.
            $(#[$attr])*
            pub(crate) fn butterfly_forward(lo: &mut [u128], hi: &mut [u128], w: u128) {
                if w == 0 {
                    for (l, h) in lo.iter().zip(hi.iter_mut()) {
                        *h ^= *l;
                    }
                    return;
                }
                let wp = $prep(w);
                for (l, h) in lo.iter_mut().zip(hi.iter_mut()) {
                    *l ^= $apply(wp, *h);
                    *h ^= *l;
                }
            }

            /// One inverse butterfly pass: `hi[i] += lo[i]; lo[i] += w·hi[i]`.
            $(#[$attr])*
            pub(crate) fn butterfly_inverse(lo: &mut [u128], hi: &mut [u128], w: u128) {
                if w == 0 {
                    for (l, h) in lo.iter().zip(hi.iter_mut()) {
                        *h ^= *l;
                    }
                    return;
                }
                let wp = $prep(w);
                for (l, h) in lo.iter_mut().zip(hi.iter_mut()) {
                    *h ^= *l;
                    *l ^= $apply(wp, *h);
                }
            }

            /// Several butterfly levels on a block that fits in cache, block
            /// start index `u0` (a multiple of `data.len()`), levels `k < top`.
            $(#[$attr])*
            pub(crate) fn fft_forward_leaf(data: &mut [u128], u0: usize, basis: &crate::amplify::fft::CantorBasis) {
                let n = data.len();
                let mut half = n / 2;
                while half >= 1 {
                    let k = half.trailing_zeros() as usize;
                    let mut w = basis.omega(u0 >> k);
                    for (b, block) in data.chunks_exact_mut(2 * half).enumerate() {
                        if b > 0 {
                            w ^= basis.prefix(b.trailing_zeros() as usize + 1);
                        }
                        let (lo, hi) = block.split_at_mut(half);
                        if w == 0 {
                            for (l, h) in lo.iter().zip(hi.iter_mut()) {
                                *h ^= *l;
                            }
                        } else {
                            let wp = $prep(w);
                            for (l, h) in lo.iter_mut().zip(hi.iter_mut()) {
                                *l ^= $apply(wp, *h);
                                *h ^= *l;
                            }
                        }
                    }
                    half /= 2;
                }
            }

            /// Inverse of [`fft_forward_leaf`].
            $(#[$attr])*
            pub(crate) fn fft_inverse_leaf(data: &mut [u128], u0: usize, basis: &crate::amplify::fft::CantorBasis) {
                let n = data.len();
                let mut half = 1;
                while half < n {
                    let k = half.trailing_zeros() as usize;
                    let mut w = basis.omega(u0 >> k);
                    for (b, block) in data.chunks_exact_mut(2 * half).enumerate() {
                        if b > 0 {
                            w ^= basis.prefix(b.trailing_zeros() as usize + 1);
                        }
                        let (lo, hi) = block.split_at_mut(half);
                        if w == 0 {
                            for (l, h) in lo.iter().zip(hi.iter_mut()) {
                                *h ^= *l;
                            }
                        } else {
                            let wp = $prep(w);
                            for (l, h) in lo.iter_mut().zip(hi.iter_mut()) {
                                *h ^= *l;
                                *l ^= $apply(wp, *h);
                            }
                        }
                    }
                    half *= 2;
                }
            }

            /// The levels with blocks of at most `2·max_half` elements, forward
            /// (the AVX-512 leaf ends with these).
            #[allow(dead_code)]
            $(#[$attr])*
            pub(crate) fn fft_forward_low(data: &mut [u128], u0: usize, basis: &crate::amplify::fft::CantorBasis, max_half: usize) {
                let mut half = max_half.min(data.len() / 2);
                while half >= 1 {
                    let k = half.trailing_zeros() as usize;
                    let mut w = basis.omega(u0 >> k);
                    for (b, block) in data.chunks_exact_mut(2 * half).enumerate() {
                        if b > 0 {
                            w ^= basis.prefix(b.trailing_zeros() as usize + 1);
                        }
                        let (lo, hi) = block.split_at_mut(half);
                        let wp = $prep(w);
                        for (l, h) in lo.iter_mut().zip(hi.iter_mut()) {
                            *l ^= $apply(wp, *h);
                            *h ^= *l;
                        }
                    }
                    half /= 2;
                }
            }

            /// The levels with blocks of at most `2·max_half` elements, inverse.
            #[allow(dead_code)]
            $(#[$attr])*
            pub(crate) fn fft_inverse_low(data: &mut [u128], u0: usize, basis: &crate::amplify::fft::CantorBasis, max_half: usize) {
                let mut half = 1;
                while half <= max_half && half < data.len() {
                    let k = half.trailing_zeros() as usize;
                    let mut w = basis.omega(u0 >> k);
                    for (b, block) in data.chunks_exact_mut(2 * half).enumerate() {
                        if b > 0 {
                            w ^= basis.prefix(b.trailing_zeros() as usize + 1);
                        }
                        let (lo, hi) = block.split_at_mut(half);
                        let wp = $prep(w);
                        for (l, h) in lo.iter_mut().zip(hi.iter_mut()) {
                            *h ^= *l;
                            *l ^= $apply(wp, *h);
                        }
                    }
                    half *= 2;
                }
            }

            /// `a[i] = a[i]·b[i]` in GF(2^128).
            $(#[$attr])*
            pub(crate) fn pointwise_mul(a: &mut [u128], b: &[u128]) {
                for (x, &y) in a.iter_mut().zip(b) {
                    *x = $apply($prep(y), *x);
                }
            }

            /// Polynomial hash `((k·m_0 + m_1)·k + ...)`: Horner steps over
            /// the 128-bit blocks, starting from `acc`.
            $(#[$attr])*
            pub(crate) fn horner(mut acc: u128, key: u128, blocks: &[u128]) -> u128 {
                let kp = $prep(key);
                for &m in blocks {
                    acc = $apply(kp, acc ^ m);
                }
                acc
            }
        }
    };
}

#[inline]
fn prep_portable(w: u128) -> u128 {
    w
}

#[inline]
fn apply_portable(w: u128, x: u128) -> u128 {
    gf128_mul_portable(x, w)
}

kernels!(
    portable,
    [inline],
    clmul64_portable,
    prep_portable,
    apply_portable
);

#[cfg(target_arch = "x86_64")]
kernels!(
    pclmul,
    [target_feature(enable = "pclmulqdq,sse2,sse4.1")],
    x86::clmul64,
    x86::prep,
    x86::apply
);

/// Generates the wide-vector VPCLMULQDQ kernels of one vector width from
/// one body: butterflies on `$lanes` field elements per vector; the rest is
/// the PCLMULQDQ code (the features include its). The parameters name the
/// vector type and its intrinsics (carry-less multiply, XOR, byte shifts
/// within 128-bit lanes, unaligned load and store, 128-bit broadcast,
/// 64-bit splat).
#[cfg(target_arch = "x86_64")]
macro_rules! vpclmul_kernels {
    (
        $(#[$doc:meta])*
        $name:ident, $features:literal, $v:ty, $lanes:literal,
        $clmul:ident, $xor:ident, $bslli:ident, $bsrli:ident,
        $loadu:ident, $storeu:ident, $bcast:ident, $set1:ident
    ) => {
        $(#[$doc])*
        pub(crate) mod $name {
            use core::arch::x86_64::{$v, $bcast, $bslli, $bsrli, $clmul, $loadu, $set1, $storeu, $xor};

            use super::{pclmul, x86};
            use crate::amplify::fft::CantorBasis;

            /// Field elements per vector.
            const LANES: usize = $lanes;

            /// `LANES` GF(2^128) products, lane by lane (the 128-bit
            /// `gf128_mul_m` on each lane).
            #[inline]
            #[target_feature(enable = $features)]
            fn mul_lanes(a: $v, b: $v, b_fold: $v) -> $v {
                let lo = $clmul::<0x00>(a, b);
                let hi = $clmul::<0x11>(a, b);
                let a_fold = $xor(a, $bsrli::<8>(a));
                let mid = $xor($clmul::<0x00>(a_fold, b_fold), $xor(lo, hi));
                let x01 = $xor(lo, $bslli::<8>(mid));
                let x23 = $xor(hi, $bsrli::<8>(mid));
                let poly = $set1(0x87);
                let t = $clmul::<0x01>(x23, poly);
                let x01 = $xor(x01, $bslli::<8>(t));
                let x23 = $xor(x23, $bsrli::<8>(t));
                let u = $clmul::<0x00>(x23, poly);
                $xor(x01, u)
            }

            #[inline]
            #[target_feature(enable = $features)]
            fn load(x: &[u128]) -> $v {
                assert!(x.len() >= LANES);
                // SAFETY: `x` holds at least one vector of readable bytes
                // (asserted); unaligned loads are allowed.
                unsafe { $loadu(x.as_ptr().cast()) }
            }

            #[inline]
            #[target_feature(enable = $features)]
            fn store(x: &mut [u128], v: $v) {
                assert!(x.len() >= LANES);
                // SAFETY: `x` holds at least one vector of writable bytes
                // (asserted), borrowed mutably; unaligned stores are allowed.
                unsafe { $storeu(x.as_mut_ptr().cast(), v) }
            }

            #[inline]
            #[target_feature(enable = $features)]
            fn broadcast(w: u128) -> ($v, $v) {
                let wv = $bcast(x86::to_m128(w));
                (wv, $xor(wv, $bsrli::<8>(wv)))
            }

            /// `out ^= a·b`, schoolbook.
            #[target_feature(enable = $features)]
            pub(crate) fn mul_schoolbook_xor(a: &[u64], b: &[u64], out: &mut [u64]) {
                pclmul::mul_schoolbook_xor(a, b, out);
            }

            /// Forward butterflies of one level.
            #[target_feature(enable = $features)]
            pub(crate) fn butterfly_forward(lo: &mut [u128], hi: &mut [u128], w: u128) {
                if w == 0 || !lo.len().is_multiple_of(LANES) {
                    return pclmul::butterfly_forward(lo, hi, w);
                }
                let (wv, wf) = broadcast(w);
                for (l, h) in lo.chunks_exact_mut(LANES).zip(hi.chunks_exact_mut(LANES)) {
                    let hv = load(h);
                    let lv = $xor(load(l), mul_lanes(hv, wv, wf));
                    store(l, lv);
                    store(h, $xor(hv, lv));
                }
            }

            /// Inverse butterflies of one level.
            #[target_feature(enable = $features)]
            pub(crate) fn butterfly_inverse(lo: &mut [u128], hi: &mut [u128], w: u128) {
                if w == 0 || !lo.len().is_multiple_of(LANES) {
                    return pclmul::butterfly_inverse(lo, hi, w);
                }
                let (wv, wf) = broadcast(w);
                for (l, h) in lo.chunks_exact_mut(LANES).zip(hi.chunks_exact_mut(LANES)) {
                    let lv = load(l);
                    let hv = $xor(load(h), lv);
                    store(h, hv);
                    store(l, $xor(lv, mul_lanes(hv, wv, wf)));
                }
            }

            /// All levels of a cached block, forward.
            #[target_feature(enable = $features)]
            pub(crate) fn fft_forward_leaf(data: &mut [u128], u0: usize, basis: &CantorBasis) {
                let n = data.len();
                let mut half = n / 2;
                while half >= LANES {
                    let k = half.trailing_zeros() as usize;
                    let mut w = basis.omega(u0 >> k);
                    for (b, block) in data.chunks_exact_mut(2 * half).enumerate() {
                        if b > 0 {
                            w ^= basis.prefix(b.trailing_zeros() as usize + 1);
                        }
                        let (lo, hi) = block.split_at_mut(half);
                        butterfly_forward(lo, hi, w);
                    }
                    half /= 2;
                }
                pclmul::fft_forward_low(data, u0, basis, LANES / 2);
            }

            /// All levels of a cached block, inverse.
            #[target_feature(enable = $features)]
            pub(crate) fn fft_inverse_leaf(data: &mut [u128], u0: usize, basis: &CantorBasis) {
                let n = data.len();
                pclmul::fft_inverse_low(data, u0, basis, LANES / 2);
                let mut half = LANES;
                while half < n {
                    let k = half.trailing_zeros() as usize;
                    let mut w = basis.omega(u0 >> k);
                    for (b, block) in data.chunks_exact_mut(2 * half).enumerate() {
                        if b > 0 {
                            w ^= basis.prefix(b.trailing_zeros() as usize + 1);
                        }
                        let (lo, hi) = block.split_at_mut(half);
                        butterfly_inverse(lo, hi, w);
                    }
                    half *= 2;
                }
            }

            /// Pointwise products.
            #[target_feature(enable = $features)]
            pub(crate) fn pointwise_mul(a: &mut [u128], b: &[u128]) {
                let split = a.len().min(b.len()) / LANES * LANES;
                let (a_vec, a_rest) = a.split_at_mut(split);
                for (x, y) in a_vec.chunks_exact_mut(LANES).zip(b.chunks_exact(LANES)) {
                    let yv = load(y);
                    let yf = $xor(yv, $bsrli::<8>(yv));
                    store(x, mul_lanes(load(x), yv, yf));
                }
                pclmul::pointwise_mul(a_rest, &b[split..]);
            }

            /// Horner steps of the polynomial hash (sequential: the 128-bit code).
            #[target_feature(enable = $features)]
            pub(crate) fn horner(acc: u128, key: u128, blocks: &[u128]) -> u128 {
                pclmul::horner(acc, key, blocks)
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
vpclmul_kernels!(
    /// The AVX-512 kernels: butterflies on four field elements per vector.
    avx512, "avx512f,avx512bw,vpclmulqdq,pclmulqdq,sse4.1", __m512i, 4,
    _mm512_clmulepi64_epi128, _mm512_xor_si512, _mm512_bslli_epi128, _mm512_bsrli_epi128,
    _mm512_loadu_si512, _mm512_storeu_si512, _mm512_broadcast_i32x4, _mm512_set1_epi64
);

#[cfg(target_arch = "x86_64")]
vpclmul_kernels!(
    /// The AVX2 VPCLMULQDQ kernels: butterflies on two field elements per
    /// 256-bit vector, for CPUs with VPCLMULQDQ but without AVX-512.
    avx2, "avx2,vpclmulqdq,pclmulqdq,sse4.1", __m256i, 2,
    _mm256_clmulepi64_epi128, _mm256_xor_si256, _mm256_bslli_epi128, _mm256_bsrli_epi128,
    _mm256_loadu_si256, _mm256_storeu_si256, _mm256_broadcastsi128_si256, _mm256_set1_epi64x
);

/// Safe entry points: each calls the kernel of the chosen backend, after
/// checking that the CPU can run it.
macro_rules! entry_points {
    ($( $(#[$doc:meta])* fn $f:ident ( $($arg:ident : $ty:ty),* ) $(-> $ret:ty)?; )*) => {
        $(
            $(#[$doc])*
            pub(crate) fn $f(backend: Backend, $($arg: $ty),*) $(-> $ret)? {
                match backend {
                    #[cfg(target_arch = "x86_64")]
                    Backend::Pclmul => {
                        assert!(backend.is_available(), "PCLMULQDQ backend requested on a CPU without it");
                        // SAFETY: the assertion above checked that the CPU has
                        // the target features the pclmul kernels are compiled with.
                        unsafe { pclmul::$f($($arg),*) }
                    }
                    #[cfg(target_arch = "x86_64")]
                    Backend::Avx512 => {
                        assert!(backend.is_available(), "AVX-512 VPCLMULQDQ backend requested on a CPU without it");
                        // SAFETY: the assertion above checked that the CPU has
                        // the target features the avx512 kernels are compiled with.
                        unsafe { avx512::$f($($arg),*) }
                    }
                    #[cfg(target_arch = "x86_64")]
                    Backend::Avx2 => {
                        assert!(backend.is_available(), "AVX2 VPCLMULQDQ backend requested on a CPU without it");
                        // SAFETY: the assertion above checked that the CPU has
                        // the target features the avx2 kernels are compiled with.
                        unsafe { avx2::$f($($arg),*) }
                    }
                    _ => portable::$f($($arg),*),
                }
            }
        )*
    };
}

/// Backend-dispatched kernels.
pub(crate) mod run {
    use super::{Backend, portable};
    #[cfg(target_arch = "x86_64")]
    use super::{avx2, avx512, pclmul};
    use crate::amplify::fft::CantorBasis;

    entry_points! {
        /// `out ^= a·b`, schoolbook.
        fn mul_schoolbook_xor(a: &[u64], b: &[u64], out: &mut [u64]);
        /// Forward butterflies of one level.
        fn butterfly_forward(lo: &mut [u128], hi: &mut [u128], w: u128);
        /// Inverse butterflies of one level.
        fn butterfly_inverse(lo: &mut [u128], hi: &mut [u128], w: u128);
        /// All levels of a cached block, forward.
        fn fft_forward_leaf(data: &mut [u128], u0: usize, basis: &CantorBasis);
        /// All levels of a cached block, inverse.
        fn fft_inverse_leaf(data: &mut [u128], u0: usize, basis: &CantorBasis);
        /// Pointwise products.
        fn pointwise_mul(a: &mut [u128], b: &[u128]);
        /// Horner steps of the polynomial hash.
        fn horner(acc: u128, key: u128, blocks: &[u128]) -> u128;
    }
}

/// Carry-less 64 x 64 -> 128 product with the given backend.
#[cfg(test)]
#[must_use]
pub(crate) fn clmul64(backend: Backend, a: u64, b: u64) -> u128 {
    match backend {
        #[cfg(target_arch = "x86_64")]
        Backend::Pclmul | Backend::Avx512 | Backend::Avx2 => {
            assert!(backend.is_available(), "PCLMULQDQ not available");
            // SAFETY: the CPU has the features (checked just above).
            unsafe { x86::clmul64(a, b) }
        }
        _ => clmul64_portable(a, b),
    }
}

/// GF(2^128) product with the given backend (the safe API is [`crate::gf128`]).
///
/// # Panics
/// If `backend` is not available on this CPU (callers check first).
#[must_use]
pub(crate) fn gf128_mul(backend: Backend, a: u128, b: u128) -> u128 {
    match backend {
        #[cfg(target_arch = "x86_64")]
        Backend::Pclmul | Backend::Avx512 | Backend::Avx2 => {
            assert!(backend.is_available(), "PCLMULQDQ not available");
            // SAFETY: the CPU has the features (checked just above).
            unsafe { x86::gf128_mul(a, b) }
        }
        _ => gf128_mul_portable(a, b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn clmul_naive(a: u64, b: u64) -> u128 {
        let mut r = 0u128;
        for i in 0..64 {
            if (b >> i) & 1 == 1 {
                r ^= u128::from(a) << i;
            }
        }
        r
    }

    #[test]
    fn clmul_known_answers() {
        assert_eq!(clmul64_portable(0b11, 0b11), 0b101); // (x+1)^2 = x^2+1
        assert_eq!(clmul64_portable(u64::MAX, 1), u128::from(u64::MAX));
        assert_eq!(clmul64_portable(1 << 63, 1 << 63), 1u128 << 126);
        // (x^2+x+1)(x+1) = x^3+1
        assert_eq!(clmul64_portable(0b111, 0b11), 0b1001);
        // All-ones squared has the even positions set.
        let sq = clmul64_portable(u64::MAX, u64::MAX);
        let want: u128 = (0..64).fold(0, |acc, i| acc | (1u128 << (2 * i)));
        assert_eq!(sq ^ want, clmul_naive(u64::MAX, u64::MAX) ^ want);
    }

    proptest! {
        #[test]
        fn clmul_portable_matches_naive(a: u64, b: u64) {
            prop_assert_eq!(clmul64_portable(a, b), clmul_naive(a, b));
        }

        #[test]
        fn clmul_backends_agree(a: u64, b: u64) {
            let want = clmul64_portable(a, b);
            prop_assert_eq!(clmul64(Backend::detect(), a, b), want);
        }

        #[test]
        fn schoolbook_backends_agree(a in prop::collection::vec(any::<u64>(), 0..9),
                                     b in prop::collection::vec(any::<u64>(), 0..9)) {
            let mut p = vec![0u64; a.len() + b.len() + 1];
            let mut q = p.clone();
            portable::mul_schoolbook_xor(&a, &b, &mut p);
            run::mul_schoolbook_xor(Backend::detect(), &a, &b, &mut q);
            prop_assert_eq!(p, q);
        }
    }
}
