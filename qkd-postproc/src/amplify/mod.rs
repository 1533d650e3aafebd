//! Privacy amplification: Toeplitz hashing of the corrected key down to the
//! final key length that the finite-key bound allows.
//!
//! # Toeplitz hashing
//!
//! With an `n`-bit input `x`, an `m`-bit output `y` and an `(n + m − 1)`-bit
//! seed `s`, the Toeplitz matrix is `T[i][j] = s[i − j + n − 1]` and
//! `y[i] = ⊕_j T[i][j]·x[j]` (the convention of `DESIGN.md`). Reading bit
//! strings as GF(2)\[x\] polynomials, `y[i]` is the coefficient of
//! `x^(i + n − 1)` of the product `s(x)·x(x)`: the output is the middle slice
//! `n − 1 .. n + m − 1` of one polynomial product. That product is computed
//! on packed words:
//!
//! | operands (words) | method | cost |
//! | --- | --- | --- |
//! | shorter ≤ 24 | schoolbook, one carry-less multiply per word pair | `O(n·m / 64²)` |
//! | product < 256 words | Karatsuba over words | `O(w^1.585)` |
//! | larger | additive FFT over GF(2^128) ([`fft`](self) module docs) | `O(w log w)` field multiplications |
//!
//! The crossovers were measured with the `crossover` group of
//! `benches/amplify.rs` (balanced operands, this project's AMD EPYC VM,
//! AVX-512 backend): Karatsuba 4.0 µs against FFT 9.2 µs at 64 words each,
//! 15.4 µs against 12.9 µs at 128 words, 105 µs against 59 µs at 512 words,
//! so the FFT takes over at a 256-word product; schoolbook and Karatsuba are
//! level near 32–64 words.
//!
//! Carry-less multiplication uses AVX-512 `VPCLMULQDQ` (four field
//! multiplications per instruction in the FFT butterflies), AVX2
//! `VPCLMULQDQ` (two) or `PCLMULQDQ` when the CPU has them (run-time detection, [`Backend::detect`]) and a
//! constant-time portable routine otherwise; all give identical output
//! (tested). Intermediate buffers that hold key-dependent data are zeroized
//! before they are freed.
//!
//! **Why an additive FFT.** Multiplicative FFTs need roots of unity of
//! order `2^k`, which binary fields lack (their multiplicative groups have odd
//! order); Schönhage's ternary FFT works over GF(2) but moves bits one at a
//! time through `O(n log n log log n)` bit operations. The additive FFT of
//! Lin, Chung and Han over GF(2^128), used for GF(2)\[x\] products as in Chen
//! et al. (2018), instead puts 64 input bits in each field element and costs
//! one carry-less field multiplication per butterfly: `L·2^(L−1)` of them per
//! transform of `2^L` points, which PCLMULQDQ executes in a few cycles. At
//! `n = 10^8`, `m = n/2` that is `2^22` points, three transforms.
//!
//! **Only the middle slice.** The hash needs the product's chunk
//! coefficients only in the window of the output, so it may be computed
//! modulo the subspace polynomial `s_L` of a transform that holds both
//! operands but not their product (`fft::mul_window`): the wrapped top part
//! `H` (coefficients from `2^L` up) comes back as `H·(s_L − y^(2^L))`, whose
//! terms are shifts `H·y^(2^j)` by the lower terms of `s_L`; the shifts that
//! meet the window are cancelled with `H` from the small product of the top
//! chunks of the two operands. At `n = 10^6`, `m = n/2` that is one product
//! of `2^15` points and one of `2^14` instead of five `2^15`-point
//! transforms; at `10^4` one product of `2^8` points with nothing to cancel
//! (`s_8 = y^256 + y`). Where that is not cheaper (`10^8`) the full product
//! is computed.
//!
//! The modified Toeplitz construction ([`Construction::Modified`], Hayashi
//! and Tsurumaru 2016) uses the matrix `(I_m | T')` with `T'` an
//! `m × (n − m)` Toeplitz matrix: `y = x[0..m] ⊕ T'·x[m..n]`, where `T'`
//! follows the same convention with input length `n − m`; its seed has
//! `n − 1` bits instead of `n + m − 1`. Both families are 2-universal.
//!
//! # Example
//!
//! ```
//! use qkd_core::BitVec;
//! use qkd_postproc::amplify::{Construction, ToeplitzHasher};
//!
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
//! # use rand_core::SeedableRng;
//! let key = BitVec::random(10_000, &mut rng);
//! let hasher = ToeplitzHasher::new(10_000, 4_000, Construction::Standard)?;
//! let seed = BitVec::random(hasher.seed_bits(), &mut rng);
//! let out = hasher.hash(seed.as_bitslice(), key.as_bitslice())?;
//! assert_eq!(out.len(), 4_000);
//! // The fast path equals the plain O(n·m) definition.
//! assert_eq!(out, qkd_postproc::amplify::toeplitz_reference(seed.as_bitslice(), key.as_bitslice(), 4_000)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod clmul;
pub(crate) mod fft;
mod gf2x;
pub mod length;

pub use clmul::Backend;

use qkd_core::{BitSlice, BitVec};

/// Longest input accepted, in bits (the additive FFT handles up to `2^40`
/// 64-bit chunks; this bound keeps memory within reason).
pub const MAX_INPUT_BITS: usize = 1 << 34;

/// Errors of the privacy amplification functions: the caller misused the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmplifyError {
    /// The seed does not have the length the construction needs.
    #[error("seed has {actual} bits, the construction needs {expected}")]
    SeedLength {
        /// Bits needed.
        expected: usize,
        /// Bits given.
        actual: usize,
    },
    /// The input does not have the length the hasher was built for.
    #[error("input has {actual} bits, the hasher was built for {expected}")]
    InputLength {
        /// Bits expected.
        expected: usize,
        /// Bits given.
        actual: usize,
    },
    /// Input and output lengths that no hash of this kind can have.
    #[error("invalid lengths: input {input_bits} bits, output {output_bits} bits ({reason})")]
    InvalidLengths {
        /// Input length.
        input_bits: usize,
        /// Output length.
        output_bits: usize,
        /// Which rule was broken.
        reason: &'static str,
    },
    /// The requested backend cannot run on this CPU.
    #[error("backend {0:?} is not available on this CPU")]
    BackendUnavailable(Backend),
}

/// Which Toeplitz family to hash with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Construction {
    /// Plain Toeplitz matrix, seed of `n + m − 1` bits.
    #[default]
    Standard,
    /// Identity concatenated with a Toeplitz matrix, seed of `n − 1` bits;
    /// needs `m < n`.
    Modified,
}

/// A Toeplitz hash from `input_bits` to `output_bits` bits.
///
/// Holds only lengths and the backend: the seed and the key are arguments of
/// [`hash`](Self::hash), so one hasher serves every block of a given size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToeplitzHasher {
    input_bits: usize,
    output_bits: usize,
    construction: Construction,
    backend: Backend,
}

impl ToeplitzHasher {
    /// A hasher with the fastest backend of this CPU.
    ///
    /// # Errors
    /// [`AmplifyError::InvalidLengths`] unless `1 ≤ output_bits ≤ input_bits ≤`
    /// [`MAX_INPUT_BITS`] (and `output_bits < input_bits` for the modified
    /// construction).
    pub fn new(
        input_bits: usize,
        output_bits: usize,
        construction: Construction,
    ) -> Result<Self, AmplifyError> {
        let bad = |reason| AmplifyError::InvalidLengths {
            input_bits,
            output_bits,
            reason,
        };
        if output_bits == 0 {
            return Err(bad("the output must have at least one bit"));
        }
        if output_bits > input_bits {
            return Err(bad("the output must not be longer than the input"));
        }
        if input_bits > MAX_INPUT_BITS {
            return Err(bad("the input is longer than MAX_INPUT_BITS"));
        }
        if construction == Construction::Modified && output_bits == input_bits {
            return Err(bad("the modified construction needs output < input"));
        }
        Ok(Self {
            input_bits,
            output_bits,
            construction,
            backend: Backend::detect(),
        })
    }

    /// The same hasher with a given backend (e.g. to compare with the portable one).
    ///
    /// # Errors
    /// [`AmplifyError::BackendUnavailable`] if this CPU cannot run it.
    pub fn with_backend(mut self, backend: Backend) -> Result<Self, AmplifyError> {
        if !backend.is_available() {
            return Err(AmplifyError::BackendUnavailable(backend));
        }
        self.backend = backend;
        Ok(self)
    }

    /// Input length `n` in bits.
    #[must_use]
    pub fn input_bits(&self) -> usize {
        self.input_bits
    }

    /// Output length `m` in bits.
    #[must_use]
    pub fn output_bits(&self) -> usize {
        self.output_bits
    }

    /// The construction.
    #[must_use]
    pub fn construction(&self) -> Construction {
        self.construction
    }

    /// The backend in use.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Seed length in bits: `n + m − 1` (standard) or `n − 1` (modified).
    #[must_use]
    pub fn seed_bits(&self) -> usize {
        match self.construction {
            Construction::Standard => self.input_bits + self.output_bits - 1,
            Construction::Modified => self.input_bits - 1,
        }
    }

    /// Hashes `input` (`n` bits) with `seed` to `m` bits.
    ///
    /// # Errors
    /// [`AmplifyError::SeedLength`] or [`AmplifyError::InputLength`] on
    /// lengths other than the hasher's.
    pub fn hash(&self, seed: BitSlice<'_>, input: BitSlice<'_>) -> Result<BitVec, AmplifyError> {
        if input.len() != self.input_bits {
            return Err(AmplifyError::InputLength {
                expected: self.input_bits,
                actual: input.len(),
            });
        }
        if seed.len() != self.seed_bits() {
            return Err(AmplifyError::SeedLength {
                expected: self.seed_bits(),
                actual: seed.len(),
            });
        }
        let (n, m) = (self.input_bits, self.output_bits);
        Ok(match self.construction {
            Construction::Standard => {
                let s = seed.to_bitvec();
                let x = input.to_bitvec();
                toeplitz_words(self.backend, s.words(), x.words(), n, m)
            }
            Construction::Modified => {
                let s = seed.to_bitvec();
                let tail = input.slice(m..).to_bitvec();
                let mut y = toeplitz_words(self.backend, s.words(), tail.words(), n - m, m);
                y.xor_range_assign(0, input.slice(..m));
                y
            }
        })
    }
}

/// How [`polynomial_product`] multiplies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProductMethod {
    /// Chosen by operand size (what the hashing uses).
    #[default]
    Auto,
    /// One carry-less multiplication per pair of words.
    Schoolbook,
    /// Karatsuba over words, schoolbook below 24 words.
    Karatsuba,
    /// Additive FFT over GF(2^128).
    AdditiveFft,
}

/// The GF(2)\[x\] product of two packed polynomials (bit `i` of word `w` is the
/// coefficient of `x^(64w + i)`), `a.len() + b.len()` words long. Exposed for
/// benches and for users who need long binary polynomial products.
///
/// # Panics
/// If `backend` is not available on this CPU, or the operands exceed `2^40`
/// words together.
#[must_use]
pub fn polynomial_product(
    backend: Backend,
    method: ProductMethod,
    a: &[u64],
    b: &[u64],
) -> Vec<u64> {
    match method {
        ProductMethod::Auto => gf2x::mul(backend, a, b),
        ProductMethod::Schoolbook => gf2x::mul_with(backend, gf2x::Method::Schoolbook, a, b),
        ProductMethod::Karatsuba => gf2x::mul_with(backend, gf2x::Method::Karatsuba, a, b),
        ProductMethod::AdditiveFft => gf2x::mul_with(backend, gf2x::Method::Fft, a, b),
    }
}

/// Standard Toeplitz hash: `m` output bits of `seed` (`n + m − 1` bits) and
/// `input` (`n` bits), with the fastest backend.
///
/// # Errors
/// As [`ToeplitzHasher::new`] and [`ToeplitzHasher::hash`].
pub fn toeplitz_hash(
    seed: BitSlice<'_>,
    input: BitSlice<'_>,
    output_bits: usize,
) -> Result<BitVec, AmplifyError> {
    ToeplitzHasher::new(input.len(), output_bits, Construction::Standard)?.hash(seed, input)
}

/// The middle slice `n − 1 .. n + m − 1` of `seed·input`. Words past the
/// lengths must be zero (as in a `BitVec`).
fn toeplitz_words(backend: Backend, seed: &[u64], input: &[u64], n: usize, m: usize) -> BitVec {
    let mut product = if gf2x::method_for(seed.len(), input.len()) == gf2x::Method::Fft {
        // extract_bits reads words (n − 1)/64 ..= (n − 1)/64 + ⌈m/64⌉.
        let lo = (n - 1) / 64;
        let hi = (lo + m.div_ceil(64) + 1).min(seed.len() + input.len());
        fft::mul_window(backend, seed, input, lo, hi)
    } else {
        gf2x::mul(backend, seed, input)
    };
    let out = extract_bits(&product, n - 1, m);
    zeroize::Zeroize::zeroize(&mut product);
    out
}

/// Bits `start .. start + len` of `words` as a new vector (the callers'
/// products always hold them: `n − 1 + m ≤ 64 · (seed words)`).
fn extract_bits(words: &[u64], start: usize, len: usize) -> BitVec {
    BitSlice::from_words(words, words.len() * 64)
        .expect("whole words")
        .slice(start..start + len)
        .to_bitvec()
}

/// The plain `O(n·m/64)` Toeplitz hash, straight from the definition: output
/// bit `i` is the parity of the seed window `s[i .. i + n]` AND the reversed
/// input, word by word. Kept as the reference the fast path is tested
/// against; use [`toeplitz_hash`] for real work. Any `n, m ≥ 1` are accepted
/// (also `m > n`).
///
/// # Errors
/// [`AmplifyError::InvalidLengths`] if `n` or `m` is zero,
/// [`AmplifyError::SeedLength`] unless the seed has `n + m − 1` bits.
pub fn toeplitz_reference(
    seed: BitSlice<'_>,
    input: BitSlice<'_>,
    output_bits: usize,
) -> Result<BitVec, AmplifyError> {
    let n = input.len();
    if n == 0 || output_bits == 0 {
        return Err(AmplifyError::InvalidLengths {
            input_bits: n,
            output_bits,
            reason: "input and output must have at least one bit",
        });
    }
    if seed.len() != n + output_bits - 1 {
        return Err(AmplifyError::SeedLength {
            expected: n + output_bits - 1,
            actual: seed.len(),
        });
    }
    // reversed[t] = input[n − 1 − t], so y[i] = parity(seed[i + t] & reversed[t]).
    let reversed: BitVec = (0..n).map(|t| input.get(n - 1 - t)).collect();
    let rev = reversed.as_bitslice();
    let mut out = BitVec::with_capacity(output_bits);
    for i in 0..output_bits {
        let mut acc = 0u64;
        let mut t = 0;
        while t < n {
            let k = (n - t).min(64);
            acc ^= seed.load_bits(i + t, k) & rev.load_bits(t, k);
            t += k;
        }
        out.push(acc.count_ones() % 2 == 1);
    }
    Ok(out)
}

/// The modified Toeplitz hash from its definition, `x[0..m] ⊕ T'·x[m..n]`
/// with [`toeplitz_reference`] for `T'`; the reference for
/// [`Construction::Modified`].
///
/// # Errors
/// As [`ToeplitzHasher::new`] and [`ToeplitzHasher::hash`] with
/// [`Construction::Modified`].
pub fn modified_toeplitz_reference(
    seed: BitSlice<'_>,
    input: BitSlice<'_>,
    output_bits: usize,
) -> Result<BitVec, AmplifyError> {
    let hasher = ToeplitzHasher::new(input.len(), output_bits, Construction::Modified)?;
    if seed.len() != hasher.seed_bits() {
        return Err(AmplifyError::SeedLength {
            expected: hasher.seed_bits(),
            actual: seed.len(),
        });
    }
    let mut y = toeplitz_reference(seed, input.slice(output_bits..), output_bits)?;
    y.xor_range_assign(0, input.slice(..output_bits));
    Ok(y)
}

#[cfg(test)]
mod tests;
