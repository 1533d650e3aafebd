//! The clock that times the subcommands' rates.
//!
//! Rates are measured on the monotonic wall clock ([`std::time::Instant`],
//! nanosecond resolution on Linux) over the timed part only. A part that
//! took less than [`MIN_TIMED`] gives no rate: the figure would be mostly
//! the clock's granularity and the scheduler's noise. The tools then print
//! an empty field (CSV), `null` (JSON) or "too short to time" (text).

use std::time::Duration;

/// The shortest timed part that gives a rate.
pub(crate) const MIN_TIMED: Duration = Duration::from_millis(10);

/// `count / elapsed` per second, or `None` when `elapsed` is below
/// [`MIN_TIMED`].
pub(crate) fn per_second(count: f64, elapsed: Duration) -> Option<f64> {
    (elapsed >= MIN_TIMED).then(|| count / elapsed.as_secs_f64())
}

/// `x` with `digits` decimals, or `text` for `None`.
pub(crate) fn or_text(x: Option<f64>, digits: usize, text: &str) -> String {
    x.map_or_else(|| text.to_owned(), |x| format!("{x:.digits$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_runs_give_no_rate() {
        assert_eq!(per_second(1e6, Duration::ZERO), None);
        assert_eq!(per_second(1e6, MIN_TIMED - Duration::from_nanos(1)), None);
        assert_eq!(per_second(1e6, Duration::from_secs(2)), Some(5e5));
        assert_eq!(or_text(None, 1, "too short to time"), "too short to time");
        assert_eq!(or_text(Some(2.0), 1, "-"), "2.0");
    }
}
