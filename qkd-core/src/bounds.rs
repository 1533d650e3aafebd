//! Binary entropy and the finite-size statistics the post-processing needs.
//!
//! | function | what it gives | source |
//! | --- | --- | --- |
//! | [`h2`] | binary entropy in bits | Shannon |
//! | [`qber_upper_bound`] | exact (Clopper–Pearson) one-sided upper confidence bound on an error rate from `k` errors in `m` sampled bits | Clopper & Pearson, Biometrika 26 (1934) |
//! | [`qber_upper_bound_hoeffding`] | the looser closed form `k/m + sqrt(ln(1/ε) / 2m)` | Hoeffding (1963) |
//! | [`sampling_deviation`] | how far the error rate of the `n` unsampled bits may exceed that of the `k` sampled ones, except with probability ε (random sampling without replacement) | Tomamichel, Lim, Gisin, Renner, Nat. Commun. 3, 634 (2012), via Serfling |
//! | [`binomial_cdf`] | `P[Bin(m, p) ≤ k]` | regularized incomplete beta function |
//!
//! The incomplete beta function is evaluated with its continued fraction
//! (modified Lentz method) and `ln Γ` with a Lanczos approximation; results
//! agree with 40-digit reference values to about 1e-12 relative (see the tests).

use crate::Error;

/// Binary entropy `h2(p) = −p·log2 p − (1−p)·log2(1−p)`, in bits.
///
/// `h2(0) = h2(1) = 0`; values outside `[0, 1]` are clamped into it.
///
/// ```
/// assert!((qkd_core::h2(0.11) - 0.49991595816).abs() < 1e-10);
/// assert_eq!(qkd_core::h2(0.5), 1.0);
/// ```
#[must_use]
pub fn h2(p: f64) -> f64 {
    let p = p.clamp(0.0, 1.0);
    if p == 0.0 || p == 1.0 {
        return 0.0;
    }
    -p * p.log2() - (1.0 - p) * (1.0 - p).log2()
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, 9 terms).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection keeps the approximation in its accurate range.
        let pi = core::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * core::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the incomplete beta function (modified Lentz).
fn beta_continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-16;
    let qab = a + b;
    let qap = a + 1.0;
    let qam = a - 1.0;
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..100_000 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// Regularized incomplete beta function `I_x(a, b)`, `a, b > 0`, `x ∈ [0, 1]`.
fn regularized_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_continued_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_continued_fraction(b, a, 1.0 - x) / b
    }
}

/// `P[X ≤ k]` for `X ~ Binomial(m, p)`.
///
/// # Errors
/// [`Error::InvalidParameter`] if `p` is not in `[0, 1]`.
pub fn binomial_cdf(k: u64, m: u64, p: f64) -> Result<f64, Error> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::invalid("p", "must be a probability in [0, 1]"));
    }
    if k >= m {
        return Ok(1.0);
    }
    // P[X ≤ k] = I_{1−p}(m − k, k + 1)
    Ok(regularized_beta((m - k) as f64, (k + 1) as f64, 1.0 - p))
}

fn check_eps(eps: f64) -> Result<(), Error> {
    if eps > 0.0 && eps < 1.0 {
        Ok(())
    } else {
        Err(Error::invalid("eps", "must be in the open interval (0, 1)"))
    }
}

/// Exact one-sided upper confidence bound on an error rate (Clopper–Pearson):
/// the largest `p` with `P[Bin(m, p) ≤ k] ≥ eps`. Given `k` errors in `m`
/// sampled bits, the true rate exceeds the result with probability at most `eps`.
///
/// ```
/// // 20 errors in 1000 sampled bits, failure probability 1e-10:
/// let q = qkd_core::bounds::qber_upper_bound(20, 1000, 1e-10).unwrap();
/// assert!((q - 0.0629229571).abs() < 1e-9);
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] if `m == 0`, `k > m` or `eps` is not in `(0, 1)`.
pub fn qber_upper_bound(k: u64, m: u64, eps: f64) -> Result<f64, Error> {
    if m == 0 {
        return Err(Error::invalid("m", "the sample must not be empty"));
    }
    if k > m {
        return Err(Error::invalid("k", "more errors than sampled bits"));
    }
    check_eps(eps)?;
    if k == m {
        return Ok(1.0);
    }
    // The CDF falls monotonically in p: bisect on [k/m, 1].
    let (mut lo, mut hi) = (k as f64 / m as f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if binomial_cdf(k, m, mid)? > eps {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(hi)
}

/// Hoeffding's upper bound `k/m + sqrt(ln(1/eps) / (2m))`, capped at 1: the
/// closed form older stacks use; looser than [`qber_upper_bound`].
///
/// # Errors
/// As [`qber_upper_bound`].
pub fn qber_upper_bound_hoeffding(k: u64, m: u64, eps: f64) -> Result<f64, Error> {
    if m == 0 {
        return Err(Error::invalid("m", "the sample must not be empty"));
    }
    if k > m {
        return Err(Error::invalid("k", "more errors than sampled bits"));
    }
    check_eps(eps)?;
    let m_f = m as f64;
    Ok((k as f64 / m_f + ((1.0 / eps).ln() / (2.0 * m_f)).sqrt()).min(1.0))
}

/// The deviation `μ = sqrt((n + k)/(n·k) · (k + 1)/k · ln(1/eps))`: when `k`
/// of `n + k` bits are sampled uniformly at random, the error rate of the
/// other `n` exceeds the sample's by more than `μ` with probability at most
/// `eps` (Tomamichel et al. 2012, supplementary eq. for the `μ` term; they use
/// `eps = ε_sec / 2`, i.e. `ln(2/ε_sec)`).
///
/// # Errors
/// [`Error::InvalidParameter`] if `n` or `k` is zero or `eps` is not in `(0, 1)`.
pub fn sampling_deviation(n: u64, k: u64, eps: f64) -> Result<f64, Error> {
    if n == 0 || k == 0 {
        return Err(Error::invalid(
            "n, k",
            "key and sample must both be non-empty",
        ));
    }
    check_eps(eps)?;
    let (n, k) = (n as f64, k as f64);
    Ok(((n + k) / (n * k) * (k + 1.0) / k * (1.0 / eps).ln()).sqrt())
}

#[cfg(test)]
#[allow(clippy::excessive_precision)] // reference values quoted as computed
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn h2_reference_values() {
        // 40-digit values from mpmath.
        for (p, want) in [
            (0.01, 0.080_793_135_895_911_17),
            (0.02, 0.141_440_542_541_820_65),
            (0.05, 0.286_396_957_115_956_13),
            (0.11, 0.499_915_958_164_527_99),
            (0.25, 0.811_278_124_459_132_86),
            (0.5, 1.0),
        ] {
            assert!(close(h2(p), want, 1e-14), "h2({p}) = {} != {want}", h2(p));
            assert!(close(h2(1.0 - p), want, 1e-13));
        }
        assert_eq!(h2(0.0), 0.0);
        assert_eq!(h2(1.0), 0.0);
        assert_eq!(h2(-3.0), 0.0);
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut fact = 1.0f64;
        for n in 1..30u32 {
            assert!(close(ln_gamma(f64::from(n)), fact.ln(), 1e-13) || fact.ln() == 0.0);
            fact *= f64::from(n);
        }
        assert!(close(
            ln_gamma(0.5),
            core::f64::consts::PI.sqrt().ln(),
            1e-13
        ));
    }

    #[test]
    fn binomial_cdf_matches_direct_sum() {
        // Direct summation for small m.
        for &(k, m, p) in &[
            (0u64, 10u64, 0.3f64),
            (3, 10, 0.3),
            (7, 20, 0.5),
            (2, 50, 0.02),
        ] {
            let mut sum = 0.0;
            for i in 0..=k {
                let ln_c = ln_gamma((m + 1) as f64)
                    - ln_gamma((i + 1) as f64)
                    - ln_gamma((m - i + 1) as f64);
                sum += (ln_c + i as f64 * p.ln() + (m - i) as f64 * (1.0 - p).ln()).exp();
            }
            assert!(
                close(binomial_cdf(k, m, p).unwrap(), sum, 1e-12),
                "{k} {m} {p}"
            );
        }
        assert_eq!(binomial_cdf(10, 10, 0.4).unwrap(), 1.0);
        assert!(binomial_cdf(1, 10, 1.5).is_err());
    }

    #[test]
    fn clopper_pearson_reference_values() {
        // beta.ppf(1 - eps, k + 1, m - k), 40-digit values from mpmath.
        for &(k, m, eps, want) in &[
            (0u64, 1000u64, 1e-10, 0.022_762_779_044_189_317),
            (20, 1000, 1e-10, 0.062_922_957_103_474_004),
            (200, 10_000, 1e-9, 0.029_654_492_338_190_340),
            (1, 10, 0.05, 0.394_163_302_436_504_78),
            (3, 100, 0.01, 0.096_971_045_265_344_468),
            (50, 2000, 1e-6, 0.045_708_629_378_995_770),
        ] {
            let got = qber_upper_bound(k, m, eps).unwrap();
            assert!(
                close(got, want, 1e-10),
                "CP({k}, {m}, {eps}) = {got}, want {want}"
            );
        }
        assert_eq!(qber_upper_bound(5, 5, 0.1).unwrap(), 1.0);
    }

    #[test]
    fn hoeffding_is_looser_than_clopper_pearson() {
        for &(k, m) in &[(0u64, 1000u64), (20, 1000), (200, 10_000), (5000, 100_000)] {
            let cp = qber_upper_bound(k, m, 1e-10).unwrap();
            let hf = qber_upper_bound_hoeffding(k, m, 1e-10).unwrap();
            assert!(hf > cp, "{k}/{m}: hoeffding {hf} <= cp {cp}");
        }
        let want = 0.02 + ((1e10f64).ln() / 2000.0).sqrt();
        assert!(close(
            qber_upper_bound_hoeffding(20, 1000, 1e-10).unwrap(),
            want,
            1e-15
        ));
    }

    #[test]
    fn sampling_deviation_formula() {
        // n = 10^6, k = 10^5, eps = 1e-10 by hand:
        // sqrt(1.1e6 / 1e11 * 1.00001 * ln(1e10)), evaluated independently in Python
        let got = sampling_deviation(1_000_000, 100_000, 1e-10).unwrap();
        assert!(close(got, 0.015_914_989_571_876_8, 1e-9), "{got}");
        assert!(sampling_deviation(0, 10, 0.1).is_err());
        assert!(sampling_deviation(10, 10, 1.0).is_err());
    }

    #[test]
    fn bad_arguments_are_typed_errors() {
        assert!(qber_upper_bound(1, 0, 0.1).is_err());
        assert!(qber_upper_bound(11, 10, 0.1).is_err());
        assert!(qber_upper_bound(1, 10, 0.0).is_err());
        assert!(qber_upper_bound(1, 10, f64::NAN).is_err());
    }
}
