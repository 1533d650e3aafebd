//! How long the final key may be: the finite-key bound for BB84 and, for
//! comparison, the asymptotic rule.
//!
//! # Finite-key bound (Tomamichel, Lim, Gisin, Renner 2012)
//!
//! Tomamichel, Lim, Gisin and Renner, "Tight finite-key analysis for quantum
//! cryptography", Nat. Commun. 3, 634 (2012), eq. (2) with `q = 1` (BB84 with
//! ideal bases) gives an `ε_sec`-secret, `ε_cor`-correct key of length
//!
//! ```text
//! ℓ = ⌊ n·(1 − h(Q + μ)) − leak_EC − t − log2(2 / ε_sec²) ⌋
//! μ = sqrt( (n + k)/(n·k) · (k + 1)/k · ln(1/ε_PE) )
//! ```
//!
//! | term | meaning | source |
//! | --- | --- | --- |
//! | `n` | key bits after sifting and after removing the sample ([`FiniteKeyInput::key_bits`]) | TLGR `n` |
//! | `k` | sampled bits disclosed for parameter estimation ([`FiniteKeyInput::sample_bits`]) | TLGR `k` |
//! | `Q` | error rate of the sample, `errors / k`, used as the tolerated QBER the block passed | TLGR `Q_tol` |
//! | `μ` | deviation of the unsampled key's error rate from the sample's, except with probability `ε_PE` (random sampling without replacement, Serfling), [`qkd_core::bounds::sampling_deviation`] | TLGR eq. (3); they take `ε_PE = ε_sec/2` |
//! | `h` | binary entropy, [`qkd_core::h2`] | |
//! | `leak_EC` | every bit the error correction disclosed, as counted by it | TLGR `leak_EC` |
//! | `t` | bits of the confirmation tag ([`crate::confirm`]); TLGR subtract `log2(1/ε_cor)` for a hash that is `ε_cor`-universal with `log2(1/ε_cor)` output bits; our tag discloses `t ≥ log2(1/ε_cor)` bits, so subtracting `t` is the conservative choice | TLGR, EC verification |
//! | `log2(2/ε_sec²)` | leftover hash lemma with smoothing | TLGR eq. (2) |
//!
//! `ε_PE` must be at most `ε_sec / 2`: a smaller value only widens `μ`, so
//! the TLGR statement still holds. The key is then `ε_sec`-secret and
//! `ε_cor`-correct, `(ε_sec + ε_cor)`-secure overall; `ε_cor` comes from the
//! confirmation ([`crate::confirm::ConfirmConfig::eps_cor`]) and is checked
//! to be at least `2^−t`, since no `t`-bit tag does better.
//!
//! # Asymptotic rule
//!
//! `ℓ = ⌊ n·(1 − h(Q)) − leak_EC − s ⌋` with `Q` the sample's error rate and
//! `s` a fixed number of "security bits": what older stacks use. It ignores the
//! statistical fluctuation of `Q` and is not a security proof at finite `n`;
//! it is here to show how much the finite-key bound costs.
//!
//! # Key length against block size
//!
//! `k = n/10` sampled bits (on top of the `n` key bits), `Q` exactly the
//! sample's error rate, `leak_EC = ⌈1.1·n·h(Q)⌉` (efficiency f = 1.1),
//! `t = 64`, `ε_sec = 10^−10`, `ε_PE = ε_sec/2`; asymptotic with `s = 67`
//! (`⌈2·log2(1/ε_sec)⌉`). Checked by the test `doc_table_is_current`.
//!
//! | n | QBER | μ | finite-key ℓ | ℓ/n | asymptotic ℓ |
//! | ---: | ---: | ---: | ---: | ---: | ---: |
//! | 10^4 | 2 % | 0.1616 | 1 476 | 0.148 | 6 962 |
//! | 10^5 | 2 % | 0.0511 | 47 314 | 0.473 | 70 229 |
//! | 10^6 | 2 % | 0.0162 | 619 917 | 0.620 | 702 907 |
//! | 10^7 | 2 % | 0.0051 | 6 751 712 | 0.675 | 7 029 681 |
//! | 10^8 | 2 % | 0.0016 | 69 399 787 | 0.694 | 70 297 418 |
//! | 10^4 | 5 % | 0.1616 | 0 | 0 | 3 918 |
//! | 10^5 | 5 % | 0.0511 | 21 123 | 0.211 | 39 789 |
//! | 10^6 | 5 % | 0.0162 | 333 431 | 0.333 | 398 499 |
//! | 10^7 | 5 % | 0.0051 | 3 772 391 | 0.377 | 3 985 596 |
//! | 10^8 | 5 % | 0.0016 | 39 174 275 | 0.392 | 39 856 571 |

use qkd_core::{bounds, h2};

/// Errors of the key-length computation: parameters outside their domain.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LengthError {
    /// A parameter was outside its valid range.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// Why.
        reason: &'static str,
    },
}

fn invalid(name: &'static str, reason: &'static str) -> LengthError {
    LengthError::InvalidParameter { name, reason }
}

/// What the finite-key bound needs to know about one block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FiniteKeyInput {
    /// `n`: key bits entering error correction (sifted, sample removed).
    pub key_bits: u64,
    /// `k`: bits disclosed for parameter estimation.
    pub sample_bits: u64,
    /// Errors found in the sample.
    pub sample_errors: u64,
    /// Bits disclosed by error correction (parities, syndromes), as counted.
    pub leak_ec_bits: u64,
    /// Length of the confirmation tag in bits.
    pub confirm_tag_bits: u32,
    /// Secrecy parameter `ε_sec`.
    pub eps_sec: f64,
    /// Correctness parameter `ε_cor` that the confirmation achieves.
    pub eps_cor: f64,
    /// Parameter-estimation failure probability `ε_PE` (at most `ε_sec/2`).
    pub eps_pe: f64,
}

/// The result of [`finite_key_length`], with its intermediate terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FinalKeyLength {
    /// Final key bits `ℓ` (0 when nothing can be distilled).
    pub bits: u64,
    /// The sample's error rate `Q`.
    pub sample_qber: f64,
    /// The deviation `μ`.
    pub mu: f64,
    /// `n·(1 − h(Q + μ))`: the smooth min-entropy bound before subtractions.
    pub entropy_bits: f64,
    /// `ε_sec + ε_cor`: the security of the final key.
    pub eps_total: f64,
}

fn check_eps(name: &'static str, eps: f64) -> Result<(), LengthError> {
    if eps > 0.0 && eps < 1.0 {
        Ok(())
    } else {
        Err(invalid(name, "must be in the open interval (0, 1)"))
    }
}

/// The TLGR 2012 finite-key length (module docs).
///
/// ```
/// use qkd_postproc::amplify::length::{finite_key_length, FiniteKeyInput};
/// let l = finite_key_length(&FiniteKeyInput {
///     key_bits: 1_000_000,
///     sample_bits: 100_000,
///     sample_errors: 2_000,
///     leak_ec_bits: 155_585,
///     confirm_tag_bits: 64,
///     eps_sec: 1e-10,
///     eps_cor: 1e-15,
///     eps_pe: 0.5e-10,
/// })?;
/// assert_eq!(l.bits, 619_917);
/// # Ok::<(), qkd_postproc::amplify::length::LengthError>(())
/// ```
///
/// # Errors
/// [`LengthError::InvalidParameter`] for an empty key or sample, more errors
/// than sampled bits, an ε outside `(0, 1)`, `ε_PE > ε_sec/2` or
/// `ε_cor < 2^−t`.
pub fn finite_key_length(input: &FiniteKeyInput) -> Result<FinalKeyLength, LengthError> {
    let FiniteKeyInput {
        key_bits: n,
        sample_bits: k,
        sample_errors,
        leak_ec_bits,
        confirm_tag_bits: t,
        eps_sec,
        eps_cor,
        eps_pe,
    } = *input;
    if n == 0 {
        return Err(invalid("key_bits", "must not be zero"));
    }
    if k == 0 {
        return Err(invalid("sample_bits", "must not be zero"));
    }
    if sample_errors > k {
        return Err(invalid("sample_errors", "more errors than sampled bits"));
    }
    check_eps("eps_sec", eps_sec)?;
    check_eps("eps_cor", eps_cor)?;
    check_eps("eps_pe", eps_pe)?;
    if eps_pe > eps_sec / 2.0 {
        return Err(invalid("eps_pe", "must be at most eps_sec / 2 (TLGR)"));
    }
    if eps_cor < (-f64::from(t)).exp2() {
        return Err(invalid("eps_cor", "a t-bit tag cannot be better than 2^-t"));
    }
    let q = sample_errors as f64 / k as f64;
    let mu = bounds::sampling_deviation(n, k, eps_pe)
        .map_err(|_| invalid("eps_pe", "rejected by sampling_deviation"))?;
    let bound = q + mu;
    let entropy_bits = if bound >= 0.5 {
        0.0
    } else {
        n as f64 * (1.0 - h2(bound))
    };
    let l = entropy_bits - leak_ec_bits as f64 - f64::from(t) - (2.0 / (eps_sec * eps_sec)).log2();
    Ok(FinalKeyLength {
        bits: if l > 0.0 { l.floor() as u64 } else { 0 },
        sample_qber: q,
        mu,
        entropy_bits,
        eps_total: eps_sec + eps_cor,
    })
}

/// The asymptotic rule `⌊n·(1 − h(Q)) − leak_EC − security_bits⌋`, 0 if negative.
///
/// # Errors
/// [`LengthError::InvalidParameter`] if `qber` is not in `[0, 1]`.
pub fn asymptotic_key_length(
    key_bits: u64,
    qber: f64,
    leak_ec_bits: u64,
    security_bits: u32,
) -> Result<u64, LengthError> {
    if !(0.0..=1.0).contains(&qber) {
        return Err(invalid("qber", "must be in [0, 1]"));
    }
    let l = key_bits as f64 * (1.0 - h2(qber)) - leak_ec_bits as f64 - f64::from(security_bits);
    Ok(if l > 0.0 { l.floor() as u64 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(n: u64, k: u64, e: u64, leak: u64) -> FiniteKeyInput {
        FiniteKeyInput {
            key_bits: n,
            sample_bits: k,
            sample_errors: e,
            leak_ec_bits: leak,
            confirm_tag_bits: 64,
            eps_sec: 1e-10,
            eps_cor: 1e-15,
            eps_pe: 0.5e-10,
        }
    }

    /// Values computed independently in Python (math module, the formula
    /// typed in from the paper).
    #[test]
    fn matches_independent_values() {
        let l = finite_key_length(&input(1_000_000, 100_000, 2000, 155_585)).unwrap();
        assert_eq!(l.bits, 619_917);
        assert!((l.mu - 0.016_152_757_916_383_71).abs() < 1e-12);
        let mut i = input(100_000, 10_000, 500, 20_000);
        i.eps_sec = 1e-9;
        i.eps_pe = 0.5e-9;
        let l = finite_key_length(&i).unwrap();
        assert_eq!(l.bits, 33_440);
        assert!((l.mu - 0.048_539_066_868_543_035).abs() < 1e-12);
        assert!((l.eps_total - (1e-9 + 1e-15)).abs() < 1e-20);
    }

    #[test]
    fn doc_table_is_current() {
        // (n, qber, finite ℓ, asymptotic ℓ) as in the module docs.
        let rows: [(u64, f64, u64, u64); 10] = [
            (10_000, 0.02, 1_476, 6_962),
            (100_000, 0.02, 47_314, 70_229),
            (1_000_000, 0.02, 619_917, 702_907),
            (10_000_000, 0.02, 6_751_712, 7_029_681),
            (100_000_000, 0.02, 69_399_787, 70_297_418),
            (10_000, 0.05, 0, 3_918),
            (100_000, 0.05, 21_123, 39_789),
            (1_000_000, 0.05, 333_431, 398_499),
            (10_000_000, 0.05, 3_772_391, 3_985_596),
            (100_000_000, 0.05, 39_174_275, 39_856_571),
        ];
        for (n, q, finite, asym) in rows {
            let k = n / 10;
            let e = (q * k as f64).round() as u64;
            let leak = (1.1 * n as f64 * h2(q)).ceil() as u64;
            let got = finite_key_length(&input(n, k, e, leak)).unwrap().bits;
            assert!(got.abs_diff(finite) <= 1, "n={n} q={q}: {got} vs {finite}");
            let got = asymptotic_key_length(n, q, leak, 67).unwrap();
            assert!(got.abs_diff(asym) <= 1, "asym n={n} q={q}: {got} vs {asym}");
        }
    }

    #[test]
    fn monotone_in_its_inputs() {
        let base = finite_key_length(&input(1_000_000, 100_000, 2000, 155_585))
            .unwrap()
            .bits;
        assert!(
            finite_key_length(&input(1_000_000, 100_000, 2100, 155_585))
                .unwrap()
                .bits
                < base
        );
        assert!(
            finite_key_length(&input(1_000_000, 100_000, 2000, 160_000))
                .unwrap()
                .bits
                < base
        );
        assert!(
            finite_key_length(&input(1_000_000, 200_000, 4000, 155_585))
                .unwrap()
                .bits
                > base
        );
        let mut tighter = input(1_000_000, 100_000, 2000, 155_585);
        tighter.eps_sec = 1e-12;
        tighter.eps_pe = 0.5e-12;
        assert!(finite_key_length(&tighter).unwrap().bits < base);
        // Finite-size costs something compared with the asymptotic rule.
        assert!(base < asymptotic_key_length(1_000_000, 0.02, 155_585, 67).unwrap());
        // Too noisy: nothing.
        assert_eq!(
            finite_key_length(&input(10_000, 1000, 300, 0))
                .unwrap()
                .bits,
            0
        );
    }

    #[test]
    fn bad_parameters() {
        assert!(finite_key_length(&input(0, 10, 0, 0)).is_err());
        assert!(finite_key_length(&input(10, 0, 0, 0)).is_err());
        assert!(finite_key_length(&input(10, 10, 11, 0)).is_err());
        let mut i = input(1000, 100, 1, 0);
        i.eps_pe = 1e-10;
        assert!(finite_key_length(&i).is_err(), "eps_pe > eps_sec/2");
        let mut i = input(1000, 100, 1, 0);
        i.eps_cor = 1e-30;
        assert!(finite_key_length(&i).is_err(), "eps_cor < 2^-64");
        assert!(asymptotic_key_length(10, 1.5, 0, 0).is_err());
    }
}
