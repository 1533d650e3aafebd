//! Toeplitz hashing benches: the fast path at n = 10^4 … 10^8 (m = n/2),
//! against the plain O(n·m/64) reference and an NTT-per-bit convolution
//! (one bit per 64-bit word, Goldilocks prime: the approach of stacks that
//! hash with a number-theoretic transform) run in the same process.
//!
//! `cargo bench -p qkd-postproc --bench amplify -- --warm-up-time 1 --measurement-time 3`
//! Filters: `toeplitz/`, `reference/`, `ntt_per_bit/`, `crossover/`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qkd_core::BitVec;
use qkd_postproc::amplify::{
    Backend, Construction, ProductMethod, ToeplitzHasher, polynomial_product, toeplitz_reference,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Goldilocks prime 2^64 − 2^32 + 1.
const P: u64 = 0xffff_ffff_0000_0001;

/// Reduction of a 128-bit value modulo the Goldilocks prime
/// (2^64 ≡ 2^32 − 1, 2^96 ≡ −1).
fn reduce128(x: u128) -> u64 {
    const EPSILON: u64 = 0xffff_ffff;
    let (lo, hi) = (x as u64, (x >> 64) as u64);
    let (hi_hi, hi_lo) = (hi >> 32, hi & EPSILON);
    let (mut t0, borrow) = lo.overflowing_sub(hi_hi);
    if borrow {
        t0 = t0.wrapping_sub(EPSILON);
    }
    let t1 = hi_lo * EPSILON;
    let (res, carry) = t0.overflowing_add(t1);
    let res = res.wrapping_add(EPSILON * u64::from(carry));
    if res >= P { res - P } else { res }
}

fn mul_mod(a: u64, b: u64) -> u64 {
    reduce128(u128::from(a) * u128::from(b))
}

fn pow_mod(mut a: u64, mut e: u64) -> u64 {
    let mut r = 1;
    while e > 0 {
        if e & 1 == 1 {
            r = mul_mod(r, a);
        }
        a = mul_mod(a, a);
        e >>= 1;
    }
    r
}

fn add_mod(a: u64, b: u64) -> u64 {
    let (s, o) = a.overflowing_add(b);
    if o || s >= P { s.wrapping_sub(P) } else { s }
}

fn sub_mod(a: u64, b: u64) -> u64 {
    if a >= b {
        a - b
    } else {
        a.wrapping_sub(b).wrapping_add(P)
    }
}

/// Iterative radix-2 NTT in place (bit-reversal first).
fn ntt(a: &mut [u64], invert: bool) {
    let n = a.len();
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            a.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        // 7 generates the multiplicative group.
        let mut w = pow_mod(7, (P - 1) / len as u64);
        if invert {
            w = pow_mod(w, P - 2);
        }
        for chunk in a.chunks_exact_mut(len) {
            let mut wn = 1;
            let (lo, hi) = chunk.split_at_mut(len / 2);
            for (x, y) in lo.iter_mut().zip(hi.iter_mut()) {
                let u = *x;
                let v = mul_mod(*y, wn);
                *x = add_mod(u, v);
                *y = sub_mod(u, v);
                wn = mul_mod(wn, w);
            }
        }
        len <<= 1;
    }
    if invert {
        let inv = pow_mod(n as u64, P - 2);
        for x in a.iter_mut() {
            *x = mul_mod(*x, inv);
        }
    }
}

/// Toeplitz hash by an integer convolution with one bit per word.
fn toeplitz_ntt_per_bit(seed: &BitVec, input: &BitVec, m: usize) -> BitVec {
    let n = input.len();
    let size = (seed.len() + n - 1).next_power_of_two();
    let mut a: Vec<u64> = seed.iter().map(u64::from).collect();
    a.resize(size, 0);
    let mut b: Vec<u64> = input.iter().map(u64::from).collect();
    b.resize(size, 0);
    ntt(&mut a, false);
    ntt(&mut b, false);
    for (x, y) in a.iter_mut().zip(&b) {
        *x = mul_mod(*x, *y);
    }
    ntt(&mut a, true);
    a[n - 1..n - 1 + m].iter().map(|c| c & 1 == 1).collect()
}

fn case(n: usize) -> (ToeplitzHasher, BitVec, BitVec) {
    let mut rng = ChaCha20Rng::seed_from_u64(n as u64);
    let h = ToeplitzHasher::new(n, n / 2, Construction::Standard).unwrap();
    let x = BitVec::random(n, &mut rng);
    let s = BitVec::random(h.seed_bits(), &mut rng);
    (h, x, s)
}

fn toeplitz(c: &mut Criterion) {
    let mut g = c.benchmark_group("toeplitz");
    g.sample_size(10);
    for n in [10_000usize, 1_000_000, 10_000_000, 100_000_000] {
        let (h, x, s) = case(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("fast", n), &n, |b, _| {
            b.iter(|| {
                h.hash(black_box(s.as_bitslice()), black_box(x.as_bitslice()))
                    .unwrap()
            });
        });
        // The 128-bit PCLMULQDQ kernels, when the fast path is a wider one
        // (AVX2 or AVX-512 VPCLMULQDQ): the same algorithm, one field
        // product per instruction.
        if n <= 10_000_000 && h.backend() != Backend::Pclmul && Backend::Pclmul.is_available() {
            let hc = h.with_backend(Backend::Pclmul).unwrap();
            g.bench_with_input(BenchmarkId::new("pclmul", n), &n, |b, _| {
                b.iter(|| {
                    hc.hash(black_box(s.as_bitslice()), black_box(x.as_bitslice()))
                        .unwrap()
                });
            });
        }
        if n <= 1_000_000 {
            let hp = h.with_backend(Backend::Portable).unwrap();
            g.bench_with_input(BenchmarkId::new("portable", n), &n, |b, _| {
                b.iter(|| {
                    hp.hash(black_box(s.as_bitslice()), black_box(x.as_bitslice()))
                        .unwrap()
                });
            });
        }
        if n <= 100_000 {
            g.bench_with_input(BenchmarkId::new("plain_reference", n), &n, |b, _| {
                b.iter(|| toeplitz_reference(s.as_bitslice(), x.as_bitslice(), n / 2).unwrap());
            });
        }
        if n <= 10_000_000 {
            let mut checked = false;
            g.bench_with_input(BenchmarkId::new("ntt_per_bit", n), &n, |b, _| {
                if !checked {
                    // Same answer as the fast path before it is timed.
                    let fast = h.hash(s.as_bitslice(), x.as_bitslice()).unwrap();
                    assert_eq!(
                        toeplitz_ntt_per_bit(&s, &x, n / 2),
                        fast,
                        "NTT reference disagrees"
                    );
                    checked = true;
                }
                b.iter(|| toeplitz_ntt_per_bit(black_box(&s), black_box(&x), n / 2));
            });
        }
    }
    g.finish();
}

fn crossover(c: &mut Criterion) {
    let mut g = c.benchmark_group("crossover");
    g.sample_size(10);
    let backend = Backend::detect();
    for words in [32usize, 64, 128, 256, 512, 1024, 2048, 4096, 8192] {
        let a: Vec<u64> = (0..words as u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let b = a.clone();
        let methods: &[(&str, ProductMethod)] = if words <= 256 {
            &[
                ("schoolbook", ProductMethod::Schoolbook),
                ("karatsuba", ProductMethod::Karatsuba),
                ("fft", ProductMethod::AdditiveFft),
            ]
        } else {
            &[
                ("karatsuba", ProductMethod::Karatsuba),
                ("fft", ProductMethod::AdditiveFft),
            ]
        };
        for &(name, method) in methods {
            g.bench_with_input(BenchmarkId::new(name, words), &words, |bch, _| {
                bch.iter(|| polynomial_product(backend, method, black_box(&a), black_box(&b)));
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = toeplitz, crossover
}
criterion_main!(benches);
