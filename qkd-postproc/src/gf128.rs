//! Arithmetic in GF(2^128) = GF(2)\[z\] / (z^128 + z^7 + z^2 + z + 1).
//!
//! An element is a `u128` whose bit `i` is the coefficient of `z^i` (no bit
//! reflection). Two parts of the crate compute in this field: key
//! [confirmation](crate::confirm) (a polynomial hash evaluated by Horner's
//! rule at a random point) and [privacy amplification](crate::amplify)
//! (the additive FFT for long keys).
//!
//! This module is the field's API and where its differential tests live.
//! The kernels themselves (a portable constant-time one, PCLMULQDQ, and the
//! AVX-512 FFT butterflies) stay in `amplify`'s carry-less multiplication
//! module, the crate's only module with `unsafe` code, because they share
//! their SIMD plumbing and `// SAFETY:` arguments with the carry-less
//! products of Toeplitz hashing: moving them here would make two `unsafe`
//! modules out of one. Every function here is safe, checks that the CPU can
//! run the backend it is given, and falls back to the portable kernel
//! otherwise; every backend gives identical results.
//!
//! ```
//! use qkd_postproc::gf128;
//!
//! // z^127 · z = z^128 = z^7 + z^2 + z + 1.
//! assert_eq!(gf128::mul(1 << 127, 2), 0x87);
//! // Horner: ((0 ^ m1)·r ^ m2)·r.
//! let r = 0x1234_5678_9abc_def0_0fed_cba9_8765_4321;
//! let h = gf128::horner(gf128::Backend::detect(), 0, r, &[5, 9]);
//! assert_eq!(h, gf128::mul(gf128::mul(5, r) ^ 9, r));
//! ```

pub use crate::amplify::Backend;
use crate::amplify::clmul;

/// `a · b` with the fastest backend of this CPU.
#[must_use]
pub fn mul(a: u128, b: u128) -> u128 {
    mul_with(Backend::detect(), a, b)
}

/// `a · b` with `backend` (the portable kernel if this CPU cannot run it).
#[must_use]
pub fn mul_with(backend: Backend, a: u128, b: u128) -> u128 {
    if backend.is_available() {
        clmul::gf128_mul(backend, a, b)
    } else {
        clmul::gf128_mul_portable(a, b)
    }
}

/// `a · b` with the portable, constant-time kernel: the reference the
/// other backends are tested against.
#[must_use]
pub fn mul_portable(a: u128, b: u128) -> u128 {
    clmul::gf128_mul_portable(a, b)
}

/// Horner's rule: `acc ← (acc ⊕ m) · point` for each `m` of `blocks`, in
/// order; returns the final `acc`. With `acc = 0` this evaluates
/// `Σ m_i · point^(s+1-i)` for `s` blocks.
#[must_use]
pub fn horner(backend: Backend, acc: u128, point: u128, blocks: &[u128]) -> u128 {
    let backend = if backend.is_available() {
        backend
    } else {
        Backend::Portable
    };
    clmul::run::horner(backend, acc, point, blocks)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Shift-and-add with a reduction at each step: the field from its definition.
    fn mul_naive(a: u128, b: u128) -> u128 {
        let mut r = 0u128;
        let mut x = a;
        for i in 0..128 {
            if (b >> i) & 1 == 1 {
                r ^= x;
            }
            let carry = x >> 127;
            x <<= 1;
            if carry == 1 {
                x ^= 0x87;
            }
        }
        r
    }

    #[test]
    fn known_answers() {
        assert_eq!(mul_portable(1u128 << 127, 2), 0x87);
        assert_eq!(mul_portable(1, 0xdead_beef), 0xdead_beef);
        assert_eq!(mul(0, u128::MAX), 0);
        assert_eq!(horner(Backend::Portable, 7, 3, &[]), 7);
    }

    proptest! {
        #[test]
        fn portable_matches_the_definition(a: u128, b: u128) {
            prop_assert_eq!(mul_portable(a, b), mul_naive(a, b));
        }

        #[test]
        fn backends_agree(a: u128, b: u128) {
            for backend in [Backend::Portable, Backend::Pclmul, Backend::Avx512, Backend::Avx2, Backend::detect()] {
                prop_assert_eq!(mul_with(backend, a, b), mul_portable(a, b));
            }
        }

        #[test]
        fn horner_matches_repeated_products(
            acc: u128,
            point: u128,
            blocks in prop::collection::vec(any::<u128>(), 0..40),
        ) {
            let want = blocks.iter().fold(acc, |h, &m| mul_naive(h ^ m, point));
            for backend in [Backend::Portable, Backend::detect()] {
                prop_assert_eq!(horner(backend, acc, point, &blocks), want);
            }
        }
    }
}
