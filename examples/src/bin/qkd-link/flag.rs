//! Value parsers of the `qkd-link` flags.
//!
//! Every number, address and path is checked where clap parses it, so a
//! careless value ends in clap's error naming the flag, and exit status 2,
//! before any socket is opened.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use qkd_examples::flag::finite;
pub(crate) use qkd_examples::flag::{input_file, output_file};

/// Largest accepted `--frame-slots` (2^26): a frame's announcement is then
/// at most 16 MiB, well inside [`qkd_examples::peer_socket::MAX_FRAME_BYTES`].
pub(crate) const MAX_FRAME_SLOTS: u64 = 1 << 26;
/// Smallest accepted `--frame-slots`.
pub(crate) const MIN_FRAME_SLOTS: u64 = 1024;
/// Most worker threads.
pub(crate) const MAX_WORKERS: u64 = 64;
/// Longest accepted `--timeout`, in seconds (one day).
pub(crate) const MAX_TIMEOUT_S: f64 = 86_400.0;
/// Shortest accepted `--timeout`, in seconds.
pub(crate) const MIN_TIMEOUT_S: f64 = 0.1;

/// The simulated channel's error rate: `[0, 0.5)` (at 0.5 no key is left).
pub(crate) fn qber(s: &str) -> Result<f64, String> {
    let q = finite(s)?;
    if (0.0..0.5).contains(&q) {
        Ok(q)
    } else {
        Err("must be in [0, 0.5): at a QBER of 0.5 or more no key is left".into())
    }
}

/// A per-slot detection probability: `[2^-32, 1]` (the simulator quantizes
/// probabilities to 2^-32; a smaller one never gives a detection).
pub(crate) fn detection_probability(s: &str) -> Result<f64, String> {
    let p = finite(s)?;
    if (1.0 / 4_294_967_296.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err("must be in [2^-32, 1]".into())
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

/// Seconds to wait for the peer: `[0.1, 86400]`.
pub(crate) fn timeout(s: &str) -> Result<f64, String> {
    let t = finite(s)?;
    if (MIN_TIMEOUT_S..=MAX_TIMEOUT_S).contains(&t) {
        Ok(t)
    } else {
        Err(format!(
            "must be between {MIN_TIMEOUT_S} and {MAX_TIMEOUT_S} seconds"
        ))
    }
}

/// An address to listen on or connect to (`host:port`), resolved now.
pub(crate) fn address(s: &str) -> Result<SocketAddr, String> {
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("is not an address of the form host:port ({e})"))?;
    addrs
        .next()
        .ok_or_else(|| "resolves to no address".to_string())
}

/// A folder that exists.
pub(crate) fn output_dir(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if path.is_dir() {
        Ok(path)
    } else {
        Err("is not an existing folder".into())
    }
}

/// A name for logs and for the protocol manager: 1 to 64 characters out
/// of letters, digits, `-`, `_`, `.` and `/` between non-empty parts (the
/// QPM names its hosts `LINK/SIDE`).
pub(crate) fn name(s: &str) -> Result<String, String> {
    if !s.is_empty()
        && s.len() <= 64
        && s.split('/').all(|part| !part.is_empty())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        Ok(s.to_string())
    } else {
        Err(
            "must be 1 to 64 characters out of letters, digits, '-', '_', '.' and '/' \
             between non-empty parts"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_outside_their_domain_are_refused() {
        for bad in ["nan", "inf", "-inf", "1e999", "x", ""] {
            assert!(qber(bad).is_err(), "{bad}");
            assert!(timeout(bad).is_err(), "{bad}");
            assert!(detection_probability(bad).is_err(), "{bad}");
            assert!(basis_probability(bad).is_err(), "{bad}");
        }
        assert!(qber("-0.01").is_err());
        assert!(qber("0.5").is_err());
        assert_eq!(qber("0.02"), Ok(0.02));
        assert!(timeout("0").is_err());
        assert!(timeout("86401").is_err());
        assert!(detection_probability("0").is_err());
        assert_eq!(detection_probability("1"), Ok(1.0));
        assert!(basis_probability("1").is_err());
    }

    #[test]
    fn addresses_paths_and_names_are_checked() {
        assert!(address("127.0.0.1:7000").is_ok());
        assert!(address("127.0.0.1").is_err());
        assert!(address("no port").is_err());
        assert!(output_file("").is_err());
        assert!(output_file(".").is_err());
        assert!(output_file("/no/such/folder/key.bin").is_err());
        assert!(input_file("/no/such/file").is_err());
        assert!(output_dir("/no/such/folder").is_err());
        assert!(name("alice-1").is_ok());
        assert!(name("").is_err());
        assert_eq!(name("ground-1/alice"), Ok("ground-1/alice".into()));
        assert!(name("a//b").is_err());
        assert!(name("/a").is_err());
        assert!(name("a b").is_err());
    }
}
