//! Products of GF(2)\[x\] polynomials on packed words: schoolbook with
//! carry-less multiplication for short operands, Karatsuba for the middle
//! sizes, the additive FFT of [`super::fft`] for long ones.
//!
//! Bit `i` of word `w` is the coefficient of `x^(64w+i)`.

use super::clmul::{Backend, run};
use super::fft;

/// Below this many words in the shorter operand, schoolbook multiplication.
pub(crate) const KARATSUBA_MIN_WORDS: usize = 24;

/// From this many words in the product, the additive FFT (tuned with the
/// `crossover` bench group on this project's machine).
pub(crate) const FFT_MIN_WORDS: usize = 256;

/// The method [`mul`] uses for operands of these lengths (in words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Schoolbook,
    Karatsuba,
    Fft,
}

pub(crate) fn method_for(a_len: usize, b_len: usize) -> Method {
    let short = a_len.min(b_len);
    if short <= KARATSUBA_MIN_WORDS {
        Method::Schoolbook
    } else if a_len + b_len >= FFT_MIN_WORDS {
        Method::Fft
    } else {
        Method::Karatsuba
    }
}

/// The product `a·b`, `a.len() + b.len()` words, with the method chosen by size.
pub(crate) fn mul(backend: Backend, a: &[u64], b: &[u64]) -> Vec<u64> {
    mul_with(backend, method_for(a.len(), b.len()), a, b)
}

/// The product with a forced method (for tests and benches).
pub(crate) fn mul_with(backend: Backend, method: Method, a: &[u64], b: &[u64]) -> Vec<u64> {
    match method {
        Method::Fft => fft::mul(backend, a, b),
        Method::Schoolbook => {
            let mut out = vec![0u64; a.len() + b.len() + 1];
            run::mul_schoolbook_xor(backend, a, b, &mut out);
            out.truncate(a.len() + b.len());
            out
        }
        Method::Karatsuba => {
            let mut out = vec![0u64; a.len() + b.len() + 1];
            karatsuba_unbalanced_xor(backend, a, b, &mut out);
            out.truncate(a.len() + b.len());
            out
        }
    }
}

/// `out ^= a·b` for any lengths: the longer operand is cut into pieces as
/// long as the shorter one. `out` has at least `a.len() + b.len() + 1` words.
fn karatsuba_unbalanced_xor(backend: Backend, a: &[u64], b: &[u64], out: &mut [u64]) {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    if short.is_empty() {
        return;
    }
    let mut tmp = vec![0u64; 2 * short.len() + 1];
    for (i, piece) in long.chunks(short.len()).enumerate() {
        let off = i * short.len();
        if piece.len() == short.len() {
            tmp.fill(0);
            karatsuba_xor(backend, piece, short, &mut tmp);
            for (o, t) in out[off..].iter_mut().zip(&tmp[..2 * short.len()]) {
                *o ^= t;
            }
        } else if piece.len() <= KARATSUBA_MIN_WORDS {
            run::mul_schoolbook_xor(backend, piece, short, &mut out[off..]);
        } else {
            karatsuba_unbalanced_xor(backend, piece, short, &mut out[off..]);
        }
    }
    // Products of the key with the seed, like every other temporary.
    zeroize::Zeroize::zeroize(&mut tmp);
}

/// `out ^= a·b` for operands of equal length `n`; `out.len() >= 2n + 1`
/// (the schoolbook base case may touch word `2n`, with a zero).
fn karatsuba_xor(backend: Backend, a: &[u64], b: &[u64], out: &mut [u64]) {
    let n = a.len();
    debug_assert_eq!(n, b.len());
    if n <= KARATSUBA_MIN_WORDS {
        run::mul_schoolbook_xor(backend, a, b, out);
        return;
    }
    let h = n.div_ceil(2);
    let (a0, a1) = a.split_at(h);
    let (b0, b1) = b.split_at(h);
    // z0 = a0·b0, z2 = a1·b1, z1 = (a0+a1)(b0+b1) - z0 - z2.
    let mut z0 = vec![0u64; 2 * h + 1];
    let mut z2 = vec![0u64; 2 * h + 1];
    let mut z1 = vec![0u64; 2 * h + 1];
    karatsuba_xor(backend, a0, b0, &mut z0);
    karatsuba_xor(backend, a1, b1, &mut z2[..2 * (n - h) + 1]);
    let mut asum = a0.to_vec();
    let mut bsum = b0.to_vec();
    for (s, x) in asum.iter_mut().zip(a1) {
        *s ^= x;
    }
    for (s, x) in bsum.iter_mut().zip(b1) {
        *s ^= x;
    }
    karatsuba_xor(backend, &asum, &bsum, &mut z1);
    for i in 0..2 * h {
        z1[i] ^= z0[i] ^ z2[i];
    }
    for i in 0..2 * h {
        out[i] ^= z0[i];
        out[h + i] ^= z1[i];
    }
    for i in 0..2 * (n - h) {
        out[2 * h + i] ^= z2[i];
    }
    zeroize::Zeroize::zeroize(&mut asum);
    zeroize::Zeroize::zeroize(&mut bsum);
    zeroize::Zeroize::zeroize(&mut z0);
    zeroize::Zeroize::zeroize(&mut z1);
    zeroize::Zeroize::zeroize(&mut z2);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(a: &[u64], b: &[u64]) -> Vec<u64> {
        let mut out = vec![0u64; a.len() + b.len()];
        for i in 0..a.len() * 64 {
            if (a[i / 64] >> (i % 64)) & 1 == 1 {
                for j in 0..b.len() * 64 {
                    if (b[j / 64] >> (j % 64)) & 1 == 1 {
                        out[(i + j) / 64] ^= 1 << ((i + j) % 64);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn small_known_answer() {
        // (x^64 + 1)·(x + 1) = x^65 + x^64 + x + 1
        let p = mul_with(Backend::Portable, Method::Schoolbook, &[1, 1], &[3]);
        assert_eq!(p, vec![3, 3, 0]);
        for m in [Method::Karatsuba, Method::Fft] {
            assert_eq!(mul_with(Backend::Portable, m, &[1, 1], &[3]), p, "{m:?}");
        }
    }

    fn words(max: usize) -> impl Strategy<Value = Vec<u64>> {
        prop::collection::vec(any::<u64>(), 0..max)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn schoolbook_matches_bitwise(a in words(6), b in words(6)) {
            prop_assert_eq!(mul_with(Backend::Portable, Method::Schoolbook, &a, &b), naive(&a, &b));
        }

        #[test]
        fn all_methods_and_backends_agree(a in words(300), b in words(300)) {
            let want = mul_with(Backend::detect(), Method::Schoolbook, &a, &b);
            for backend in [Backend::Portable, Backend::Pclmul, Backend::Avx512, Backend::Avx2] {
                if !backend.is_available() {
                    continue;
                }
                for m in [Method::Karatsuba, Method::Fft] {
                    prop_assert_eq!(&mul_with(backend, m, &a, &b), &want, "{:?} {:?}", backend, m);
                }
            }
        }
    }

    #[test]
    fn fft_matches_karatsuba_at_a_large_size() {
        let a: Vec<u64> = (0..5000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i << 7))
            .collect();
        let b: Vec<u64> = (0..3001u64)
            .map(|i| i.wrapping_mul(0xc2b2_ae3d_27d4_eb4f).rotate_left(17))
            .collect();
        let k = mul_with(Backend::detect(), Method::Karatsuba, &a, &b);
        let f = mul_with(Backend::detect(), Method::Fft, &a, &b);
        assert_eq!(k, f);
    }
}
