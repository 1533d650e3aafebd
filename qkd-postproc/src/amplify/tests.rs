//! Tests of the Toeplitz hashing: known answers, the fast path against the
//! plain reference, backends against each other.

use proptest::prelude::*;
use qkd_core::BitVec;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;

fn bits(s: &str) -> BitVec {
    s.chars().map(|c| c == '1').collect()
}

fn to_string(v: &BitVec) -> String {
    v.iter().map(|b| if b { '1' } else { '0' }).collect()
}

/// `T[i][j] = seed[i − j + n − 1]` multiplied out by hand.
#[test]
fn known_answer_3x2() {
    // n = 3, m = 2, seed s0..s3 = 1,0,1,1.
    // T = [[s2 s1 s0], [s3 s2 s1]] = [[1 0 1], [1 1 0]]
    let seed = bits("1011");
    for (x, y) in [
        ("100", "11"),
        ("010", "01"),
        ("001", "10"),
        ("111", "00"),
        ("101", "01"),
    ] {
        let x = bits(x);
        let out = toeplitz_hash(seed.as_bitslice(), x.as_bitslice(), 2).unwrap();
        assert_eq!(to_string(&out), y, "x = {}", to_string(&x));
        let r = toeplitz_reference(seed.as_bitslice(), x.as_bitslice(), 2).unwrap();
        assert_eq!(r, out);
    }
}

#[test]
fn known_answer_4x4_identity_like() {
    // seed with only s[n−1] set: T is the identity.
    let seed = bits("0001000");
    let x = bits("1101");
    assert_eq!(
        to_string(&toeplitz_hash(seed.as_bitslice(), x.as_bitslice(), 4).unwrap()),
        "1101"
    );
    // s[n] set: T is the shift y[i] = x[i − 1].
    let seed = bits("0000100");
    assert_eq!(
        to_string(&toeplitz_hash(seed.as_bitslice(), x.as_bitslice(), 4).unwrap()),
        "0110"
    );
}

#[test]
fn known_answer_modified() {
    // n = 4, m = 2: y = x[0..2] ⊕ T'·x[2..4], T' 2×2 with seed s0..s2 = 1,1,0:
    // T' = [[s1 s0], [s2 s1]] = [[1 1], [0 1]].
    let seed = bits("110");
    let h = ToeplitzHasher::new(4, 2, Construction::Modified).unwrap();
    assert_eq!(h.seed_bits(), 3);
    for (x, y) in [
        ("0010", "10"),
        ("0001", "11"),
        ("1000", "10"),
        ("1111", "10"),
    ] {
        let x = bits(x);
        let out = h.hash(seed.as_bitslice(), x.as_bitslice()).unwrap();
        assert_eq!(to_string(&out), y, "x = {}", to_string(&x));
        assert_eq!(
            modified_toeplitz_reference(seed.as_bitslice(), x.as_bitslice(), 2).unwrap(),
            out
        );
    }
}

#[test]
fn lengths_are_checked() {
    let h = ToeplitzHasher::new(100, 40, Construction::Standard).unwrap();
    assert_eq!(h.seed_bits(), 139);
    let x = BitVec::zeros(100);
    assert_eq!(
        h.hash(BitVec::zeros(138).as_bitslice(), x.as_bitslice()),
        Err(AmplifyError::SeedLength {
            expected: 139,
            actual: 138
        })
    );
    assert_eq!(
        h.hash(
            BitVec::zeros(139).as_bitslice(),
            BitVec::zeros(99).as_bitslice()
        ),
        Err(AmplifyError::InputLength {
            expected: 100,
            actual: 99
        })
    );
    assert!(ToeplitzHasher::new(10, 0, Construction::Standard).is_err());
    assert!(ToeplitzHasher::new(10, 11, Construction::Standard).is_err());
    assert!(ToeplitzHasher::new(10, 10, Construction::Modified).is_err());
    assert!(ToeplitzHasher::new(10, 10, Construction::Standard).is_ok());
    assert!(ToeplitzHasher::new(1, 1, Construction::Standard).is_ok());
}

fn check_against_reference(n: usize, m: usize, seed_rng: u64) -> Result<(), TestCaseError> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed_rng);
    let x = BitVec::random(n, &mut rng);
    let h = ToeplitzHasher::new(n, m, Construction::Standard).unwrap();
    let s = BitVec::random(h.seed_bits(), &mut rng);
    let want = toeplitz_reference(s.as_bitslice(), x.as_bitslice(), m).unwrap();
    let fast = h.hash(s.as_bitslice(), x.as_bitslice()).unwrap();
    prop_assert_eq!(&fast, &want, "n = {}, m = {}", n, m);
    let portable = h.with_backend(Backend::Portable).unwrap();
    prop_assert_eq!(
        &portable.hash(s.as_bitslice(), x.as_bitslice()).unwrap(),
        &want
    );
    if m < n {
        let hm = ToeplitzHasher::new(n, m, Construction::Modified).unwrap();
        let sm = s.slice(..hm.seed_bits()).to_bitvec();
        let want = modified_toeplitz_reference(sm.as_bitslice(), x.as_bitslice(), m).unwrap();
        prop_assert_eq!(&hm.hash(sm.as_bitslice(), x.as_bitslice()).unwrap(), &want);
        let hp = hm.with_backend(Backend::Portable).unwrap();
        prop_assert_eq!(&hp.hash(sm.as_bitslice(), x.as_bitslice()).unwrap(), &want);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random n, m up to a few thousand bits: schoolbook, Karatsuba and (from
    /// 256 product words) the additive FFT.
    #[test]
    fn fast_equals_reference_small(n in 1usize..6000, frac in 0.0f64..=1.0, seed: u64) {
        let m = ((n as f64 * frac) as usize).clamp(1, n);
        check_against_reference(n, m, seed)?;
    }

    /// Edge lengths: m = 1, m = n, multiples of 64 and one off.
    #[test]
    fn fast_equals_reference_edges(k in 1usize..40, delta in 0usize..3, seed: u64) {
        let n = (64 * k + delta).saturating_sub(1).max(1);
        check_against_reference(n, 1, seed)?;
        check_against_reference(n, n, seed)?;
        check_against_reference(n, n.div_ceil(2), seed)?;
    }
}

/// Sizes that go through the additive FFT (product ≥ 256 words) at several
/// transform lengths.
#[test]
fn fast_equals_reference_fft_sizes() {
    for (n, m, seed) in [
        (150_001, 75_000, 1u64),
        (131_072, 1, 2),
        (140_000, 140_000, 3),
        (200_003, 99_999, 4),
    ] {
        check_against_reference(n, m, seed).unwrap();
    }
}

#[test]
fn fft_method_is_used_at_large_sizes() {
    assert_eq!(gf2x::method_for(4000, 2000), gf2x::Method::Fft);
    assert_eq!(gf2x::method_for(60, 100), gf2x::Method::Karatsuba);
    assert_eq!(gf2x::method_for(100, 200), gf2x::Method::Fft);
    assert_eq!(gf2x::method_for(10, 2000), gf2x::Method::Schoolbook);
}

/// Best-of-N wall time of the hash at 10^6 and 10^8 bits (m = n/2), for a
/// loaded machine where criterion medians wander:
/// `cargo test --release -p qkd-postproc --lib timing_toeplitz -- --ignored --nocapture`
#[test]
#[ignore]
#[allow(clippy::print_stdout)]
fn timing_toeplitz() {
    for (n, reps) in [(1_000_000usize, 50), (100_000_000, 5)] {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let x = BitVec::random(n, &mut rng);
        let h = ToeplitzHasher::new(n, n / 2, Construction::Standard).unwrap();
        let s = BitVec::random(h.seed_bits(), &mut rng);
        let mut best = f64::MAX;
        for _ in 0..reps {
            let t = std::time::Instant::now();
            let y = h.hash(s.as_bitslice(), x.as_bitslice()).unwrap();
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(y.len(), n / 2);
        }
        println!("n {n}: best of {reps}: {best:.2} ms");
    }
}

/// Output bit `i` of the standard hash is the plain reference with `m = 1`
/// on the seed window `i .. i + n`: checks sampled bits of a large hash.
fn spot_check(n: usize, m: usize, samples: usize, seed: u64) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let x = BitVec::random(n, &mut rng);
    let h = ToeplitzHasher::new(n, m, Construction::Standard).unwrap();
    let s = BitVec::random(h.seed_bits(), &mut rng);
    let y = h.hash(s.as_bitslice(), x.as_bitslice()).unwrap();
    let picks = BitVec::random(64 * samples, &mut rng);
    for k in 0..samples {
        let i = match k {
            0 => 0,
            1 => m - 1,
            _ => picks.slice(64 * k..64 * k + 64).load_bits(0, 64) as usize % m,
        };
        let want = toeplitz_reference(s.slice(i..i + n), x.as_bitslice(), 1).unwrap();
        assert_eq!(y.get(i), want.get(0), "n = {n}, m = {m}, bit {i}");
    }
}

/// 2·10^6 bits (split FFT plan) and an odd size, sampled bits.
#[test]
fn large_hash_spot_checked_against_definition() {
    spot_check(2_000_000, 1_000_000, 24, 11);
    spot_check(1_234_567, 1_234_567, 24, 12);
}

/// 2·10^8 bits, m = n/2:
/// `cargo test --release -p qkd-postproc --lib spot_check_2e8 -- --ignored`
#[test]
#[ignore]
fn spot_check_2e8() {
    spot_check(200_000_000, 100_000_000, 32, 13);
}
