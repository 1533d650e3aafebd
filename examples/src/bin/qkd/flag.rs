//! Value parsers of the `qkd` flags.
//!
//! Every number and output path is checked where clap parses it, so a
//! careless value ends in clap's error, which names the flag and the value
//! (`error: invalid value 'nan' for '--qber <QBER>': must be a finite
//! number`), and exit status 2, before any work starts.
//!
//! Counts use [`clap::builder::RangedU64ValueParser`] with the bounds given
//! at each flag; the functions here cover what it cannot: floating-point
//! domains and paths.

use qkd_examples::flag::finite;
pub(crate) use qkd_examples::flag::{input_file, output_file};

use crate::clock::MIN_TIMED;

/// Longest accepted `--seconds` for a throughput measurement (one hour).
pub(crate) const MAX_SECONDS: f64 = 3600.0;

/// A QBER that can leave key: `[0, 0.5)`.
pub(crate) fn qber(s: &str) -> Result<f64, String> {
    let q = finite(s)?;
    if q < 0.0 {
        return Err("must be in [0, 0.5): a QBER is not negative".into());
    }
    if q >= 0.5 {
        return Err(
            "must be in [0, 0.5): at a QBER of 0.5 or more Bob's bits say nothing about \
             Alice's and no key is left"
                .into(),
        );
    }
    Ok(q)
}

/// A QBER for error-correction runs: `(0, 0.5)` (without errors there is
/// no efficiency to measure).
pub(crate) fn qber_with_errors(s: &str) -> Result<f64, String> {
    let q = qber(s)?;
    if q == 0.0 {
        return Err(
            "must be in (0, 0.5): at QBER 0 no frame has errors to correct, and the \
             efficiency f = leaked / (n h2(Q)) is undefined"
                .into(),
        );
    }
    Ok(q)
}

/// The error rate of a simulated channel: `[0, 0.5]` (the simulator can
/// produce a useless channel; the tools downstream then refuse it).
pub(crate) fn simulated_qber(s: &str) -> Result<f64, String> {
    let q = finite(s)?;
    if (0.0..=0.5).contains(&q) {
        Ok(q)
    } else {
        Err("must be in [0, 0.5]".into())
    }
}

/// The simulator draws with probabilities quantized to multiples of 2^-32:
/// anything smaller is zero there.
const SIMULATOR_QUANTUM: f64 = 1.0 / 4_294_967_296.0;

/// A per-slot detection probability: `[2^-32, 1]` (a smaller one is zero in
/// the simulator, which would then wait forever for a detection).
pub(crate) fn detection_probability(s: &str) -> Result<f64, String> {
    let p = finite(s)?;
    if (SIMULATOR_QUANTUM..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(
            "must be in [2^-32, 1] (the simulator quantizes probabilities to 2^-32; \
             a smaller one never gives a detection)"
                .into(),
        )
    }
}

/// A basis-choice probability: `(0, 1)`.
pub(crate) fn basis_probability(s: &str) -> Result<f64, String> {
    let p = finite(s)?;
    if p > 0.0 && p < 1.0 {
        Ok(p)
    } else {
        Err("must be in (0, 1): both bases must be used".into())
    }
}

/// A sampled fraction of a block: `(0, 1)`.
pub(crate) fn fraction(s: &str) -> Result<f64, String> {
    let p = finite(s)?;
    if p > 0.0 && p < 1.0 {
        Ok(p)
    } else {
        Err("must be in (0, 1)".into())
    }
}

/// A reconciliation efficiency: `[1, 10]` (below 1 is below the Shannon
/// limit; above 10 leaks more than any code in use).
pub(crate) fn efficiency(s: &str) -> Result<f64, String> {
    let f = finite(s)?;
    if (1.0..=10.0).contains(&f) {
        Ok(f)
    } else {
        Err("must be in [1, 10] (f = 1 is the Shannon limit)".into())
    }
}

/// A measurement time in seconds: from the shortest run the clock can time
/// ([`MIN_TIMED`]) to [`MAX_SECONDS`].
pub(crate) fn seconds(s: &str) -> Result<f64, String> {
    let t = finite(s)?;
    let min = MIN_TIMED.as_secs_f64();
    if (min..=MAX_SECONDS).contains(&t) {
        Ok(t)
    } else {
        Err(format!("must be between {min} and {MAX_SECONDS} seconds"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_outside_their_domain_are_refused() {
        for bad in ["nan", "NaN", "inf", "-inf", "1e999", "x", ""] {
            assert!(qber(bad).is_err(), "{bad}");
            assert!(seconds(bad).is_err(), "{bad}");
            assert!(efficiency(bad).is_err(), "{bad}");
        }
        assert!(qber("-0.01").is_err());
        assert!(qber("0.5").is_err());
        assert_eq!(qber("0"), Ok(0.0));
        assert_eq!(qber("0.499"), Ok(0.499));
        assert!(qber_with_errors("0").is_err());
        assert_eq!(simulated_qber("0.5"), Ok(0.5));
        assert!(seconds("-1").is_err());
        assert!(seconds("0").is_err());
        assert!(seconds("0.001").is_err());
        assert!(seconds("3601").is_err());
        assert_eq!(seconds("0.5"), Ok(0.5));
        assert!(detection_probability("1e-12").is_err());
        assert!(detection_probability("0").is_err());
        assert_eq!(detection_probability("1"), Ok(1.0));
        assert!(basis_probability("1").is_err());
        assert!(fraction("1").is_err());
        assert!(efficiency("0.99").is_err());
    }

    #[test]
    fn output_files_need_an_existing_folder() {
        assert!(output_file("").is_err());
        assert!(output_file(".").is_err());
        assert!(output_file("/no/such/folder/out.svg").is_err());
        assert!(output_file("out.svg").is_ok());
        assert!(input_file("/no/such/file").is_err());
        assert!(input_file(".").is_err());
    }
}
