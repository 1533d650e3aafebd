//! Additive FFT over GF(2^128) in the novel polynomial basis of Lin, Chung
//! and Han (FOCS 2014), on the subspace spanned by a Cantor basis, used to
//! multiply long GF(2)\[x\] polynomials (Chen, Cheng, Kuo, Li and Yang, "Faster
//! multiplication for long binary polynomials", 2018).
//!
//! A GF(2)\[x\] polynomial is cut into 64-bit chunks `a_i(x)`, read as elements
//! of GF(2^128): `A(y) = Σ a_i y^i` with `y = x^64`. The product of two chunks
//! has degree at most 126, so the coefficients of `C(y) = A(y)·B(y)` computed
//! in GF(2^128)[y] never meet the field's reduction: each is the exact
//! GF(2)\[x\] sum, and XOR-folding the 128-bit coefficients at 64-bit offsets
//! gives the exact product. `C` is found by evaluating `A` and `B` at `2^L`
//! points of the subspace `V_L = span(β_0, …, β_{L-1})`, multiplying point by
//! point and interpolating back.
//!
//! With a Cantor basis (`β_0 = 1`, `β_i^2 + β_i = β_{i-1}`) the subspace
//! polynomials are `s_k(x) = Σ_{j ⊆ k} x^{2^j}` (coefficients in GF(2),
//! `j ⊆ k` meaning the bits of `j` are a subset of those of `k`), `s_k`
//! vanishes on `V_k` and `s_k(β_k) = 1`. So:
//!
//! - the novel basis `X_i = Π_{bit j of i} s_j` needs no normalisation;
//! - converting between the monomial and the novel basis is a recursive
//!   division by the sparse `s_k`: XORs only, no field multiplication;
//! - the butterfly twiddle of level `k` for the block starting at index `u`
//!   is `s_k(ω_u) = ω_{u >> k}` with `ω_v = Σ_{bit j of v} β_j`, so it costs
//!   one XOR from the previous block's.
//!
//! One FFT of size `2^L` costs `L·2^(L-1)` field multiplications (one per
//! butterfly); a product takes three FFTs, `2^L` pointwise products and three
//! basis conversions of about `2^L·Σ_k 2^popcount(k)` XORs. Both are run
//! depth-first so that, below a few levels, each block is in cache.
//!
//! A transform of `2^L` points gives the product modulo `s_L`; when only a
//! window of the product is needed (Toeplitz hashing), [`mul_window`] uses a
//! transform too small for the whole product and cancels the wrapped part
//! where it lands in the window.

use std::sync::OnceLock;

use super::clmul::{Backend, gf128_mul_portable, run};

/// Largest `L` (transform of `2^L` points) supported.
pub(crate) const MAX_LOG: usize = 40;

/// Blocks of at most this many elements are transformed level by level
/// inside the cache; larger ones recursively.
const LEAF: usize = 1 << 14;

/// The first Cantor basis elements of GF(2^128) and their prefix sums.
pub(crate) struct CantorBasis {
    beta: [u128; MAX_LOG + 2],
    /// `prefix[t] = β_1 + … + β_t`.
    prefix: [u128; MAX_LOG + 2],
}

/// Solves `x^2 + x = c` in GF(2^128) by Gaussian elimination on the
/// GF(2)-linear map `x ↦ x^2 + x`; `None` if `c` has trace 1.
fn solve_artin_schreier(c: u128) -> Option<u128> {
    // pivots[p] = (image vector with highest bit p, combination of basis bits)
    let mut pivots: [(u128, u128); 128] = [(0, 0); 128];
    for j in 0..128 {
        let x = 1u128 << j;
        let mut v = gf128_mul_portable(x, x) ^ x;
        let mut comb = x;
        while v != 0 {
            let p = 127 - v.leading_zeros() as usize;
            if pivots[p].0 == 0 {
                pivots[p] = (v, comb);
                break;
            }
            v ^= pivots[p].0;
            comb ^= pivots[p].1;
        }
    }
    let (mut v, mut comb) = (c, 0u128);
    while v != 0 {
        let p = 127 - v.leading_zeros() as usize;
        if pivots[p].0 == 0 {
            return None;
        }
        v ^= pivots[p].0;
        comb ^= pivots[p].1;
    }
    Some(comb)
}

impl CantorBasis {
    fn compute() -> Self {
        let mut beta = [0u128; MAX_LOG + 2];
        beta[0] = 1;
        for i in 1..beta.len() {
            beta[i] = solve_artin_schreier(beta[i - 1])
                .expect("a Cantor basis of GF(2^128) has 128 elements");
        }
        let mut prefix = [0u128; MAX_LOG + 2];
        for t in 1..prefix.len() {
            prefix[t] = prefix[t - 1] ^ beta[t];
        }
        Self { beta, prefix }
    }

    /// The basis, computed once.
    pub(crate) fn get() -> &'static Self {
        static BASIS: OnceLock<CantorBasis> = OnceLock::new();
        BASIS.get_or_init(Self::compute)
    }

    /// `ω_v = Σ_{bit j of v} β_j`.
    #[inline]
    pub(crate) fn omega(&self, mut v: usize) -> u128 {
        let mut r = 0;
        while v != 0 {
            r ^= self.beta[v.trailing_zeros() as usize];
            v &= v - 1;
        }
        r
    }

    /// `β_1 + … + β_t`.
    #[inline]
    pub(crate) fn prefix(&self, t: usize) -> u128 {
        self.prefix[t]
    }

    #[cfg(test)]
    pub(crate) fn beta(&self, i: usize) -> u128 {
        self.beta[i]
    }
}

/// Offsets `2^j` for the lower terms of `s_k` (`j ⊆ k`, `j < k`).
fn lower_terms(k: usize) -> impl Iterator<Item = usize> {
    (0..k).filter(move |j| j & !k == 0).map(|j| 1usize << j)
}

/// The lower terms of `s_k` in a fixed array (no allocation): (offsets, count).
#[cfg(test)]
fn lower_terms_array(k: usize) -> ([usize; MAX_LOG + 2], usize) {
    let mut out = [0usize; MAX_LOG + 2];
    let mut count = 0;
    for o in lower_terms(k) {
        out[count] = o;
        count += 1;
    }
    (out, count)
}

/// Blocks of at most this many coefficients are converted level by level.
#[cfg(test)]
const CONVERT_LEAF: usize = 1 << 12;

/// `data` (`2^(k+1)` coefficients) becomes `f_0 + x^(2^k)·f_1` with
/// `f = f_0 + s_k·f_1`: long division by `s_k`, top coefficient first.
///
/// The step for coefficient `i` XORs it into `i − 2^k + o` for each lower
/// term `x^o` of `s_k`, `o ≤ 2^(k−1)`, so it only changes coefficients at
/// least `2^(k−1)` below `i`: a run of `2^(k−1)` consecutive steps reads
/// nothing it writes, and is done as whole-slice XORs.
#[cfg(test)]
fn divide_by_subspace_polynomial<T>(data: &mut [T], k: usize)
where
    T: Copy + core::ops::BitXorAssign,
{
    let half = 1usize << k;
    let (terms, count) = lower_terms_array(k);
    let terms = &terms[..count];
    if terms.is_empty() {
        return;
    }
    let run = (half / 2).clamp(1, 512);
    let mut end = 2 * half;
    while end > half {
        let start = end - run;
        for &o in terms {
            let (dst, src) = data.split_at_mut(start);
            let dst = &mut dst[start - half + o..start - half + o + run];
            for (d, s) in dst.iter_mut().zip(&src[..run]) {
                *d ^= *s;
            }
        }
        end = start;
    }
}

/// Inverse of [`divide_by_subspace_polynomial`]: the same steps, bottom first.
#[cfg(test)]
fn multiply_by_subspace_polynomial<T>(data: &mut [T], k: usize)
where
    T: Copy + core::ops::BitXorAssign,
{
    let half = 1usize << k;
    let (terms, count) = lower_terms_array(k);
    let terms = &terms[..count];
    if terms.is_empty() {
        return;
    }
    let run = (half / 2).clamp(1, 512);
    let mut start = half;
    while start < 2 * half {
        for &o in terms.iter().rev() {
            let (dst, src) = data.split_at_mut(start);
            let dst = &mut dst[start - half + o..start - half + o + run];
            for (d, s) in dst.iter_mut().zip(&src[..run]) {
                *d ^= *s;
            }
        }
        start += run;
    }
}

/// Monomial to novel basis, in place; `data.len()` is a power of two and
/// only the first `used` entries may be non-zero.
#[cfg(test)]
pub(crate) fn to_novel_by_division<T>(data: &mut [T], used: usize)
where
    T: Copy + core::ops::BitXorAssign,
{
    let n = data.len();
    if n <= 1 || used == 0 {
        return;
    }
    let half = n / 2;
    if used <= half {
        // s_k f_1 with f_1 = 0: nothing to divide, the top half stays zero.
        to_novel_by_division(&mut data[..half], used);
        return;
    }
    if n <= CONVERT_LEAF {
        // Level by level inside the cache: every block of a level is divided
        // before the next level down.
        let mut k = half.trailing_zeros() as usize;
        loop {
            for block in data.chunks_exact_mut(2 << k) {
                divide_by_subspace_polynomial(block, k);
            }
            if k == 0 {
                return;
            }
            k -= 1;
        }
    }
    let k = half.trailing_zeros() as usize;
    divide_by_subspace_polynomial(data, k);
    let (lo, hi) = data.split_at_mut(half);
    to_novel_by_division(lo, half);
    to_novel_by_division(hi, used - half);
}

/// Novel to monomial basis, in place (inverse of [`to_novel`]).
#[cfg(test)]
pub(crate) fn from_novel_by_division<T>(data: &mut [T])
where
    T: Copy + core::ops::BitXorAssign,
{
    let n = data.len();
    if n <= 1 {
        return;
    }
    let half = n / 2;
    let k = half.trailing_zeros() as usize;
    if n <= CONVERT_LEAF {
        for j in 0..=k {
            for block in data.chunks_exact_mut(2 << j) {
                multiply_by_subspace_polynomial(block, j);
            }
        }
        return;
    }
    {
        let (lo, hi) = data.split_at_mut(half);
        from_novel_by_division(lo);
        from_novel_by_division(hi);
    }
    multiply_by_subspace_polynomial(data, k);
}

/// `dst ^= src`, element-wise.
#[inline]
fn xor_into<T: Copy + core::ops::BitXorAssign>(dst: &mut [T], src: &[T]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= *s;
    }
}

/// Taylor expansion in powers of `x^τ + x` (`τ = 2^(2^t)`), in place, on a
/// polynomial of `data.len() / row` coefficients that are rows of `row`
/// elements: afterwards block `i` of `τ` rows holds `g_i` with
/// `f = Σ g_i·(x^τ + x)^i` (Gao and Mateer 2010, section 3).
///
/// Each step divides by `(x^τ + x)^B = x^(τB) + x^B`, a binomial: the top
/// half is XORed into the rows `τB − B` lower, top first, in runs of
/// `τB − B ≥ τB/2` rows that read nothing they write.
fn taylor<T: Copy + core::ops::BitXorAssign>(data: &mut [T], tau: usize, row: usize) {
    let n = data.len() / row;
    if n <= tau {
        return;
    }
    let half = n / 2;
    let b = half / tau;
    let d = half - b;
    // c[t] ^= c[t + d] for t = n − 1 − d down to b, in runs of d.
    let mut end = n - d;
    while end > b {
        let start = end.saturating_sub(d).max(b);
        let (lo, hi) = data.split_at_mut((start + d) * row);
        xor_into(&mut lo[start * row..end * row], &hi[..(end - start) * row]);
        end = start;
    }
    let (lo, hi) = data.split_at_mut(half * row);
    taylor(lo, tau, row);
    taylor(hi, tau, row);
}

/// Inverse of [`taylor`].
fn taylor_inverse<T: Copy + core::ops::BitXorAssign>(data: &mut [T], tau: usize, row: usize) {
    let n = data.len() / row;
    if n <= tau {
        return;
    }
    let half = n / 2;
    let b = half / tau;
    let d = half - b;
    {
        let (lo, hi) = data.split_at_mut(half * row);
        taylor_inverse(lo, tau, row);
        taylor_inverse(hi, tau, row);
    }
    let mut start = b;
    while start < n - d {
        let end = (start + d).min(n - d);
        let (lo, hi) = data.split_at_mut((start + d) * row);
        xor_into(&mut lo[start * row..end * row], &hi[..(end - start) * row]);
        start = end;
    }
}

/// Largest power of two below `log_n` (`log_n ≥ 2`).
fn split_log(log_n: usize) -> usize {
    1 << (usize::BITS - 1 - (log_n - 1).leading_zeros())
}

/// Monomial to novel basis on `2^log_n` coefficient rows of `row` elements.
///
/// With `K` the largest power of two below `log_n`, `s_K = x^(2^K) + x` and
/// `X_{a + 2^K·b}(x) = X_a(x)·X_b(s_K(x))` (because `s_{K+j} = s_j ∘ s_K`):
/// a Taylor expansion in `s_K`, a conversion of size `2^(log_n − K)` whose
/// coefficients are the blocks of `2^K` rows, and `2^(log_n − K)`
/// conversions of size `2^K` (the Chen et al. 2018 basis conversion).
fn convert_rows<T: Copy + core::ops::BitXorAssign>(data: &mut [T], log_n: usize, row: usize) {
    if log_n <= 1 {
        // X_0 = 1, X_1 = s_0 = x: the bases agree.
        return;
    }
    if log_n == 2 {
        // x^2 = X_2 + X_1, x^3 = X_3 + X_2 + X_1: row 2 ^= row 3, row 1 ^= row 2.
        let (lo, hi) = data.split_at_mut(3 * row);
        xor_into(&mut lo[2 * row..], hi);
        let (lo, hi) = lo.split_at_mut(2 * row);
        xor_into(&mut lo[row..], hi);
        return;
    }
    let k = split_log(log_n);
    taylor(data, 1 << k, row);
    convert_rows(data, log_n - k, row << k);
    for block in data.chunks_exact_mut(row << k) {
        convert_rows(block, k, row);
    }
}

/// Inverse of [`convert_rows`].
fn convert_rows_inverse<T: Copy + core::ops::BitXorAssign>(
    data: &mut [T],
    log_n: usize,
    row: usize,
) {
    if log_n <= 1 {
        return;
    }
    if log_n == 2 {
        let (lo, hi) = data.split_at_mut(2 * row);
        xor_into(&mut lo[row..], &hi[..row]);
        let (lo, hi) = data.split_at_mut(3 * row);
        xor_into(&mut lo[2 * row..], hi);
        return;
    }
    let k = split_log(log_n);
    for block in data.chunks_exact_mut(row << k) {
        convert_rows_inverse(block, k, row);
    }
    convert_rows_inverse(data, log_n - k, row << k);
    taylor_inverse(data, 1 << k, row);
}

/// Monomial to novel basis, in place; `data.len()` is a power of two.
pub(crate) fn to_novel<T: Copy + core::ops::BitXorAssign>(data: &mut [T]) {
    let log_n = data.len().trailing_zeros() as usize;
    convert_rows(data, log_n, 1);
}

/// Novel to monomial basis, in place (inverse of [`to_novel`]).
pub(crate) fn from_novel<T: Copy + core::ops::BitXorAssign>(data: &mut [T]) {
    let log_n = data.len().trailing_zeros() as usize;
    convert_rows_inverse(data, log_n, 1);
}

/// Evaluates the novel-basis polynomial in `data` at `ω_{u+i}`, in place
/// (`u` is the absolute index of `data[0]`, a multiple of `data.len()`).
pub(crate) fn fft_forward(backend: Backend, data: &mut [u128], u: usize, basis: &CantorBasis) {
    let n = data.len();
    if n <= LEAF {
        run::fft_forward_leaf(backend, data, u, basis);
        return;
    }
    let half = n / 2;
    let k = half.trailing_zeros() as usize;
    let w = basis.omega(u >> k);
    let (lo, hi) = data.split_at_mut(half);
    run::butterfly_forward(backend, lo, hi, w);
    fft_forward(backend, lo, u, basis);
    fft_forward(backend, hi, u + half, basis);
}

/// Inverse of [`fft_forward`].
pub(crate) fn fft_inverse(backend: Backend, data: &mut [u128], u: usize, basis: &CantorBasis) {
    let n = data.len();
    if n <= LEAF {
        run::fft_inverse_leaf(backend, data, u, basis);
        return;
    }
    let half = n / 2;
    let k = half.trailing_zeros() as usize;
    let w = basis.omega(u >> k);
    let (lo, hi) = data.split_at_mut(half);
    fft_inverse(backend, lo, u, basis);
    fft_inverse(backend, hi, u + half, basis);
    run::butterfly_inverse(backend, lo, hi, w);
}

/// `log2` of the transform size for a product of `a_len` and `b_len` chunks.
pub(crate) fn transform_log(a_len: usize, b_len: usize) -> usize {
    let terms = a_len + b_len - 1;
    (terms.next_power_of_two().trailing_zeros() as usize).max(1)
}

/// Transforms `words` into `out` (`2^log` points), with `tmp` (`2^log`
/// words) as scratch for the basis conversion on 64-bit chunks.
fn forward_operand_into(
    backend: Backend,
    words: &[u64],
    tmp: &mut [u64],
    out: &mut [u128],
    basis: &CantorBasis,
) {
    tmp[..words.len()].copy_from_slice(words);
    tmp[words.len()..].fill(0);
    to_novel(tmp);
    for (o, &w) in out.iter_mut().zip(tmp.iter()) {
        *o = u128::from(w);
    }
    fft_forward(backend, out, 0, basis);
}

#[cfg(test)]
fn forward_operand(backend: Backend, words: &[u64], log: usize, basis: &CantorBasis) -> Vec<u128> {
    let mut tmp = vec![0u64; 1 << log];
    let mut out = vec![0u128; 1 << log];
    forward_operand_into(backend, words, &mut tmp, &mut out, basis);
    out
}

/// How to run a product of `long` and `short` chunks: `(log2 of the
/// transform size, chunks of the longer operand per transform)`.
///
/// One transform of `2^L ≥ long + short − 1` points costs three transforms;
/// when that leaves much padding, cutting the longer operand into pieces that
/// fit `2^(L−1)` points costs `1 + 2·pieces` transforms of half the size
/// (the shorter operand is transformed once). The cheaper plan wins: at
/// n = 10^6, m = n/2 that is two pieces of 2^15 points instead of 2^16.
pub(crate) fn plan(long: usize, short: usize) -> (usize, usize) {
    let (_, log, piece) = plan_with_cost(long, short);
    (log, piece)
}

/// [`plan`] with its cost in butterflies: `(cost, log, piece)`.
fn plan_with_cost(long: usize, short: usize) -> (usize, usize, usize) {
    let log0 = transform_log(long, short);
    let mut best = (3 * (1usize << log0) * log0, log0, long);
    if log0 >= 2 {
        let log1 = log0 - 1;
        let points = 1usize << log1;
        if points > short {
            let piece = points - short + 1;
            let pieces = long.div_ceil(piece);
            let cost = (1 + 2 * pieces) * points * log1;
            if cost < best.0 {
                best = (cost, log1, piece);
            }
        }
    }
    best
}

/// The coefficients (128-bit chunk products, before folding) of
/// `a·b mod s_log` from one transform of `2^log` points; `a` and `b` have at
/// most `2^log` words each.
fn product_coeffs(
    backend: Backend,
    a: &[u64],
    b: &[u64],
    log: usize,
    basis: &CantorBasis,
) -> Vec<u128> {
    let n = 1usize << log;
    let mut tmp = vec![0u64; n];
    let mut fa = vec![0u128; n];
    let mut fb = vec![0u128; n];
    forward_operand_into(backend, a, &mut tmp, &mut fa, basis);
    forward_operand_into(backend, b, &mut tmp, &mut fb, basis);
    run::pointwise_mul(backend, &mut fa, &fb);
    fft_inverse(backend, &mut fa, 0, basis);
    from_novel(&mut fa);
    zeroize::Zeroize::zeroize(&mut tmp);
    zeroize::Zeroize::zeroize(&mut fb);
    fa
}

/// Plan of [`mul_window`]: `(log, top)` with `top` whether the wrapped part
/// of the product is needed, or `None` when the plain [`mul`] is cheaper.
fn window_plan(la: usize, lb: usize, lo: usize, hi: usize) -> Option<(usize, bool)> {
    if la == 0 || lb == 0 || lo >= hi {
        return None;
    }
    let terms = la + lb - 1;
    let log0 = transform_log(la, lb);
    if log0 < 2 {
        return None;
    }
    let log = log0 - 1;
    let n = 1usize << log;
    let (klo, khi) = (lo.saturating_sub(1), hi.min(terms));
    if la > n || lb > n || terms <= n || khi > n {
        return None;
    }
    let wrap = terms - n;
    let max_term = lower_terms(log).max().unwrap_or(0);
    if wrap - 1 + max_term >= n {
        return None;
    }
    let top = lower_terms(log).any(|o| o < khi && o + wrap > klo);
    let mut cost = 3 * n * log;
    if top {
        let log2 = transform_log(wrap, wrap);
        cost += 3 * (1usize << log2) * log2;
    }
    (cost < plan_with_cost(la.max(lb), la.min(lb)).0).then_some((log, top))
}

/// Words `lo .. hi` of the product `a·b` (`a.len() + b.len()` words, the
/// others unspecified), as needed for a Toeplitz hash.
///
/// When the operands fit `2^L` points but their product does not, the
/// transform gives `R = a·b mod s_L = P_lo + H·(s_L − y^(2^L))` with `P_lo`
/// the chunk coefficients below `2^L` and `H` those from `2^L` up. `H` is the
/// top half of the product of the top `wrap = terms − 2^L` chunks of each
/// operand; it is computed (one smaller transform) only if one of its shifts
/// `H·y^o`, `o` a lower term of `s_L`, meets the window. At n = 10^6,
/// m = n/2 that is one 2^15-point product plus one 2^14-point product
/// (`o = 2^14` meets the window) instead of five 2^15-point transforms.
pub(crate) fn mul_window(backend: Backend, a: &[u64], b: &[u64], lo: usize, hi: usize) -> Vec<u64> {
    let Some((log, need_top)) = window_plan(a.len(), b.len(), lo, hi) else {
        return mul(backend, a, b);
    };
    let basis = CantorBasis::get();
    let (la, lb) = (a.len(), b.len());
    let terms = la + lb - 1;
    let n = 1usize << log;
    let wrap = terms - n;
    let (klo, khi) = (lo.saturating_sub(1), hi.min(terms));
    let mut r = product_coeffs(backend, a, b, log, basis);
    if need_top {
        // H_i = P_(2^L + i) = Q_(wrap − 1 + i), Q = a[la − wrap..]·b[lb − wrap..].
        let mut q = product_coeffs(
            backend,
            &a[la - wrap..],
            &b[lb - wrap..],
            transform_log(wrap, wrap),
            basis,
        );
        for o in lower_terms(log) {
            let start = klo.saturating_sub(o);
            let end = wrap.min(khi.saturating_sub(o));
            for i in start..end {
                r[o + i] ^= q[wrap - 1 + i];
            }
        }
        zeroize::Zeroize::zeroize(&mut q);
    }
    let mut out = vec![0u64; la + lb];
    for (k, &c) in r.iter().enumerate().take(khi).skip(klo) {
        out[k] ^= c as u64;
        out[k + 1] ^= (c >> 64) as u64;
    }
    zeroize::Zeroize::zeroize(&mut r);
    out
}

/// The GF(2)\[x\] product of `a` and `b` (packed words, bit `i` of word `w` is
/// the coefficient of `x^(64w+i)`), `a.len() + b.len()` words.
pub(crate) fn mul(backend: Backend, a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = vec![0u64; a.len() + b.len()];
    if a.is_empty() || b.is_empty() {
        return out;
    }
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let (log, piece) = plan(long.len(), short.len());
    assert!(log <= MAX_LOG, "operands too long for the additive FFT");
    let basis = CantorBasis::get();
    let n = 1usize << log;
    let mut tmp = vec![0u64; n];
    let mut fs = vec![0u128; n];
    let mut fc = vec![0u128; n];
    forward_operand_into(backend, short, &mut tmp, &mut fs, basis);
    for (i, chunk) in long.chunks(piece).enumerate() {
        forward_operand_into(backend, chunk, &mut tmp, &mut fc, basis);
        run::pointwise_mul(backend, &mut fc, &fs);
        fft_inverse(backend, &mut fc, 0, basis);
        from_novel(&mut fc);
        let off = i * piece;
        let terms = chunk.len() + short.len() - 1;
        for (k, &c) in fc[..terms].iter().enumerate() {
            out[off + k] ^= c as u64;
            out[off + k + 1] ^= (c >> 64) as u64;
        }
    }
    zeroize::Zeroize::zeroize(&mut tmp);
    zeroize::Zeroize::zeroize(&mut fc);
    zeroize::Zeroize::zeroize(&mut fs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cantor_basis_relations() {
        let b = CantorBasis::get();
        assert_eq!(b.beta(0), 1);
        for i in 1..MAX_LOG + 2 {
            let x = b.beta(i);
            assert_eq!(gf128_mul_portable(x, x) ^ x, b.beta(i - 1), "β_{i}");
        }
        // Linear independence: the span of the first t has 2^t elements,
        // checked by elimination.
        let mut pivots = [0u128; 128];
        for i in 0..MAX_LOG + 2 {
            let mut v = b.beta(i);
            while v != 0 {
                let p = 127 - v.leading_zeros() as usize;
                if pivots[p] == 0 {
                    pivots[p] = v;
                    break;
                }
                v ^= pivots[p];
            }
            assert_ne!(v, 0, "β_{i} depends on the earlier ones");
        }
    }

    #[test]
    fn subspace_polynomial_maps_basis_down() {
        // s_k(β_j) = β_{j-k} for j ≥ k and 0 below, evaluated from its sparse form.
        let b = CantorBasis::get();
        let pow2 = |mut x: u128, j: usize| {
            for _ in 0..j {
                x = gf128_mul_portable(x, x);
            }
            x
        };
        for k in 0..7 {
            for j in 0..10 {
                let x = b.beta(j);
                let mut s = pow2(x, k);
                for o in lower_terms(k) {
                    s ^= pow2(x, o.trailing_zeros() as usize);
                }
                let want = if j >= k { b.beta(j - k) } else { 0 };
                assert_eq!(s, want, "s_{k}(β_{j})");
            }
        }
    }

    #[test]
    fn plan_splits_only_when_cheaper() {
        // 10^6 bits, m = n/2: 23 438 and 15 625 words -> two pieces of 2^15.
        assert_eq!(plan(23_438, 15_625), (15, 32_768 - 15_625 + 1));
        // 10^8 bits: one transform of 2^22.
        assert_eq!(plan(2_343_750, 1_562_500), (22, 2_343_750));
        // A split product equals the unsplit one.
        let a: Vec<u64> = (0..3000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let b: Vec<u64> = (0..1100u64)
            .map(|i| i.wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
            .collect();
        let (log, piece) = plan(a.len(), b.len());
        assert!(piece < a.len(), "this size is split ({log}, {piece})");
        let want = crate::amplify::gf2x::mul_with(
            Backend::Portable,
            crate::amplify::gf2x::Method::Karatsuba,
            &a,
            &b,
        );
        assert_eq!(mul(Backend::detect(), &a, &b), want);
        assert_eq!(mul(Backend::detect(), &b, &a), want);
    }

    /// Interleaved A/B of the split plan against one big transform at the
    /// 10^6-bit Toeplitz sizes (best of 30 each):
    /// `cargo test --release -p qkd-postproc --lib split_ab -- --ignored --nocapture`
    #[test]
    #[ignore]
    #[allow(clippy::print_stdout)]
    fn split_ab() {
        let backend = Backend::detect();
        let basis = CantorBasis::get();
        let a: Vec<u64> = (0..23_438u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let b: Vec<u64> = (0..15_625u64)
            .map(|i| i.wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
            .collect();
        let unsplit = |a: &[u64], b: &[u64]| {
            let log = transform_log(a.len(), b.len());
            let mut fa = forward_operand(backend, a, log, basis);
            let fb = forward_operand(backend, b, log, basis);
            run::pointwise_mul(backend, &mut fa, &fb);
            fft_inverse(backend, &mut fa, 0, basis);
            from_novel(&mut fa);
            let mut out = vec![0u64; a.len() + b.len()];
            for (k, &c) in fa[..a.len() + b.len() - 1].iter().enumerate() {
                out[k] ^= c as u64;
                out[k + 1] ^= (c >> 64) as u64;
            }
            out
        };
        assert_eq!(unsplit(&a, &b), mul(backend, &a, &b));
        let (mut best_split, mut best_one) = (f64::MAX, f64::MAX);
        for _ in 0..30 {
            let t = std::time::Instant::now();
            let _ = mul(backend, &a, &b);
            best_split = best_split.min(t.elapsed().as_secs_f64() * 1e3);
            let t = std::time::Instant::now();
            let _ = unsplit(&a, &b);
            best_one = best_one.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("split {best_split:.2} ms, one transform {best_one:.2} ms");
    }

    #[test]
    fn window_product_matches_full_product() {
        // (la, lb, n bits, m bits) of Toeplitz hashes, plus wrapped shapes.
        let cases = [
            (23_438usize, 15_625usize, 1_000_000usize, 500_000usize),
            (235, 157, 10_000, 5_000),
            (1200, 900, 900 * 64 - 5, 300 * 64 + 3),
            (3000, 2000, 2000 * 64 - 63, 1000 * 64),
            (600, 550, 550 * 64, 50 * 64 + 1),
        ];
        for (la, lb, n, m) in cases {
            let a: Vec<u64> = (0..la as u64)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i << 5))
                .collect();
            let b: Vec<u64> = (0..lb as u64)
                .map(|i| i.wrapping_mul(0xc2b2_ae3d_27d4_eb4f).rotate_left(11))
                .collect();
            let lo = (n - 1) / 64;
            let hi = (lo + m.div_ceil(64) + 1).min(la + lb);
            let want = mul(Backend::detect(), &a, &b);
            for backend in [
                Backend::Portable,
                Backend::Pclmul,
                Backend::Avx512,
                Backend::Avx2,
            ] {
                if !backend.is_available() || (backend == Backend::Portable && la > 5000) {
                    continue;
                }
                let got = mul_window(backend, &a, &b, lo, hi);
                assert_eq!(got[lo..hi], want[lo..hi], "{la} {lb} {lo} {hi} {backend:?}");
            }
        }
        assert_eq!(
            window_plan(23_438, 15_625, 15_624, 23_438),
            Some((15, true))
        );
        assert_eq!(window_plan(235, 157, 156, 236), Some((8, false)));
        assert_eq!(
            window_plan(2_343_750, 1_562_500, 1_562_499, 2_343_750),
            None
        );
    }

    /// Interleaved A/B of [`mul_window`] against the full [`mul`] at the
    /// 10^6-bit Toeplitz sizes (best of 40 each):
    /// `cargo test --release -p qkd-postproc --lib window_ab -- --ignored --nocapture`
    #[test]
    #[ignore]
    #[allow(clippy::print_stdout)]
    fn window_ab() {
        let backend = Backend::detect();
        let a: Vec<u64> = (0..23_438u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let b: Vec<u64> = (0..15_625u64)
            .map(|i| i.wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
            .collect();
        let (mut best_window, mut best_full) = (f64::MAX, f64::MAX);
        for _ in 0..40 {
            let t = std::time::Instant::now();
            let _ = mul_window(backend, &a, &b, 15_624, 23_438);
            best_window = best_window.min(t.elapsed().as_secs_f64() * 1e3);
            let t = std::time::Instant::now();
            let _ = mul(backend, &a, &b);
            best_full = best_full.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("window {best_window:.3} ms, full {best_full:.3} ms");
    }

    #[test]
    fn novel_basis_round_trip() {
        let mut x: Vec<u128> = (0..256u128)
            .map(|i| i * 0x9e37_79b9_7f4a_7c15 + 3)
            .collect();
        let orig = x.clone();
        to_novel(&mut x);
        assert_ne!(x, orig);
        let mut y = orig.clone();
        to_novel_by_division(&mut y, 256);
        assert_eq!(x, y, "Taylor-based conversion equals division by s_k");
        from_novel_by_division(&mut y);
        assert_eq!(y, orig);
        from_novel(&mut x);
        assert_eq!(x, orig);
    }

    #[test]
    fn fft_round_trip_and_evaluation() {
        let basis = CantorBasis::get();
        for log in [1usize, 3, 5, 12, 13] {
            let n = 1 << log;
            let coeffs: Vec<u128> = (0..n as u128)
                .map(|i| (i * 0x1234_5678_9abc_def1).rotate_left(i as u32))
                .collect();
            let mut novel = coeffs.clone();
            to_novel(&mut novel);
            let mut by_division = coeffs.clone();
            to_novel_by_division(&mut by_division, n);
            assert_eq!(novel, by_division);
            let mut evals = novel.clone();
            fft_forward(Backend::Portable, &mut evals, 0, basis);
            if log <= 5 {
                // Direct Horner evaluation of the monomial form at ω_u.
                for (u, &e) in evals.iter().enumerate() {
                    let p = basis.omega(u);
                    let mut acc = 0u128;
                    for &c in coeffs.iter().rev() {
                        acc = gf128_mul_portable(acc, p) ^ c;
                    }
                    assert_eq!(e, acc, "log {log} point {u}");
                }
            }
            for backend in [Backend::Pclmul, Backend::Avx512, Backend::Avx2] {
                if !backend.is_available() {
                    continue;
                }
                let mut simd = novel.clone();
                fft_forward(backend, &mut simd, 0, basis);
                assert_eq!(simd, evals, "{backend:?}");
                fft_inverse(backend, &mut simd, 0, basis);
                assert_eq!(simd, novel, "{backend:?}");
            }
            fft_inverse(Backend::Portable, &mut evals, 0, basis);
            assert_eq!(evals, novel);
        }
    }
}
