//! Variants of Cascade and the block-size schedules they use.

use core::fmt;
use core::str::FromStr;

use super::CascadeError;

/// The most passes (regular and BICONF) one run may use. Shuffles are
/// numbered by pass, and the wire format carries the pass in one byte.
pub const MAX_PASSES: usize = 255;

/// A named Cascade variant from Martinez-Mateo, Pacher, Peev, Ciurana and
/// Martin, "Demystifying the information reconciliation protocol Cascade"
/// (Quantum Inf. Comput. 15, 453–477, 2015; arXiv:1407.3257); each variant
/// below gives its block sizes.
///
/// `Q` below is the QBER estimate given to [`CascadeParams::for_variant`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Variant {
    /// Brassard–Salvail: `k_1 = 0.73/Q`, `k_i = 2·k_{i−1}`, each rounded
    /// up when used (`⌈2^(i−1)·0.73/Q⌉`), 4 passes.
    ///
    /// The odd blocks of passes 2 to 4 are searched in two waves
    /// ([`CascadeParams::search_waves`] = 2). With both choices `f` is
    /// within 0.005 of the paper at QBER 1, 2, 5 and 10 %. Brassard and
    /// Salvail search one block at a time (about 0.01 lower `f`, four to
    /// twenty times the rounds); searching all odd blocks of a pass at once
    /// (`search_waves = 1`) halves the rounds but adds about 0.012 to `f`.
    /// See BENCHMARKS.md for the measurements.
    Original,
    /// The paper's "mod. (1)": `k1 = ⌈0.92/Q⌉`, `k2 = 3·k1`, then BICONF
    /// until 10 clean BICONF passes in a row.
    Biconf,
    /// Yan et al., the paper's "opt. (2)": `k1 = ⌈0.80/Q⌉`, `k2 = 5·k1`, then
    /// `n/2`; 10 passes.
    YanEtAl,
    /// `k1 = ⌈1/Q⌉`, `k2 = 2·k1`, then `n/2`; 16 passes.
    Option3,
    /// Option 3 plus reuse of every parity already known to both sides.
    Option4,
    /// `k1 = 2^⌈log2(1/Q)⌉`, `k2 = 4·k1`, then `n/2`; 14 passes; reuse.
    Option7,
    /// `α = log2(1/Q) − 0.5`, `k1 = 2^⌈α⌉`, `k2 = 2^⌈(α+12)/2⌉`, `k3 = 4096`,
    /// then `n/2`; 14 passes; reuse.
    Option8,
}

impl Variant {
    /// All variants, in the order of the paper's tables.
    pub const ALL: [Variant; 7] = [
        Variant::Original,
        Variant::Biconf,
        Variant::YanEtAl,
        Variant::Option3,
        Variant::Option4,
        Variant::Option7,
        Variant::Option8,
    ];

    /// The lower-case name used on the command line and in tables.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Variant::Original => "original",
            Variant::Biconf => "biconf",
            Variant::YanEtAl => "yanetal",
            Variant::Option3 => "option3",
            Variant::Option4 => "option4",
            Variant::Option7 => "option7",
            Variant::Option8 => "option8",
        }
    }

    /// Whether this variant reuses known parities (options 4, 7 and 8).
    #[must_use]
    pub const fn reuses_parities(self) -> bool {
        matches!(self, Variant::Option4 | Variant::Option7 | Variant::Option8)
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Variant {
    type Err = CascadeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or(CascadeError::InvalidConfig {
                reason: "unknown Cascade variant",
            })
    }
}

/// The schedule one Cascade run follows: block size per regular pass,
/// BICONF, and whether known parities are reused.
///
/// Build it with [`for_variant`](Self::for_variant), or fill the fields for
/// a schedule of your own (block-size sweeps). Both sides need not agree on
/// it: only Bob follows the schedule, Alice answers whatever he asks and
/// counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CascadeParams {
    /// Block size of each regular pass, first pass first. Pass 1 uses the key
    /// in its own order, later passes a shuffle. Each size is at least 1; a
    /// size of at least the key length makes the whole key one block.
    pub block_sizes: Vec<usize>,
    /// After the regular passes, run BICONF passes (a fresh shuffle, the key
    /// split in two halves, one parity asked) until this many in a row find
    /// no error. `None`: no BICONF.
    pub biconf_clean_passes: Option<u32>,
    /// Reuse every parity both sides already know: a range whose parity is
    /// known (asked before, or implied by its parent and sibling, or the last
    /// block of a pass implied by the total parity) is never asked again, and
    /// binary searches step through known sub-blocks for free.
    pub reuse_known_parities: bool,
    /// In passes after the first, the blocks found odd are searched in this
    /// many waves, each wave's searches (and the cascades they set off) in
    /// parallel, one wave after the other. Errors left after pass 1 come in
    /// pairs inside a pass-1 block, so two odd blocks of a later pass often
    /// hold the two errors of one pair; searching them one after the other
    /// lets the first search's cascade fix the second error through the
    /// cheap pass-1 block. More waves: fewer parities, more channel uses.
    /// 1 searches every odd block at once.
    pub search_waves: u32,
    /// When a flipped bit makes several blocks odd, the smallest is searched
    /// first and the others are set aside. `true`: they are checked again
    /// once no search at all is running (fewest parities, most channel
    /// uses); `false`: once the search that set them aside has ended.
    pub defer_until_idle: bool,
}

impl CascadeParams {
    /// The schedule of `variant` for a key of `n` bits and QBER estimate
    /// `qber`.
    ///
    /// # Errors
    /// [`CascadeError::InvalidConfig`] if `qber` is not in `[0, 0.5)` or
    /// `n` is 0. A `qber` of 0 makes every block the whole key.
    pub fn for_variant(variant: Variant, qber: f64, n: usize) -> Result<Self, CascadeError> {
        if !(0.0..0.5).contains(&qber) {
            return Err(CascadeError::InvalidConfig {
                reason: "QBER estimate must be in [0, 0.5)",
            });
        }
        if n == 0 {
            return Err(CascadeError::InvalidConfig {
                reason: "key length must be positive",
            });
        }
        let half = n.div_ceil(2);
        let inv = if qber > 0.0 {
            1.0 / qber
        } else {
            f64::INFINITY
        };
        let clamp = |x: f64| -> usize {
            if x.is_finite() && x < n as f64 {
                (x.ceil() as usize).max(1)
            } else {
                n
            }
        };
        let pow2 = |e: f64| -> usize {
            if e.is_finite() && e < 62.0 {
                clamp(2f64.powi(e.ceil() as i32))
            } else {
                n
            }
        };
        let then_half = |mut sizes: Vec<usize>, passes: usize| -> Vec<usize> {
            sizes.resize(passes.max(sizes.len()), half);
            sizes
        };
        let mut search_waves = 1;
        let (block_sizes, biconf, reuse) = match variant {
            Variant::Original => {
                // k_i = 2^(i-1) · 0.73/Q, each rounded up when used.
                let sizes = (0..4)
                    .map(|i| clamp(0.73 * inv * f64::from(1 << i)))
                    .collect();
                search_waves = 2;
                (sizes, None, false)
            }
            Variant::Biconf => {
                let k1 = clamp(0.92 * inv);
                (vec![k1, k1.saturating_mul(3).min(n)], Some(10), false)
            }
            Variant::YanEtAl => {
                let k1 = clamp(0.80 * inv);
                (
                    then_half(vec![k1, k1.saturating_mul(5).min(n)], 10),
                    None,
                    false,
                )
            }
            Variant::Option3 | Variant::Option4 => {
                let k1 = clamp(inv);
                let sizes = then_half(vec![k1, k1.saturating_mul(2).min(n)], 16);
                (sizes, None, variant == Variant::Option4)
            }
            Variant::Option7 => {
                let k1 = pow2(inv.log2());
                (
                    then_half(vec![k1, k1.saturating_mul(4).min(n)], 14),
                    None,
                    true,
                )
            }
            Variant::Option8 => {
                let alpha = inv.log2() - 0.5;
                let k1 = pow2(alpha);
                let k2 = pow2((alpha + 12.0) / 2.0);
                (then_half(vec![k1, k2, 4096.min(n)], 14), None, true)
            }
        };
        Ok(CascadeParams {
            block_sizes,
            biconf_clean_passes: biconf,
            reuse_known_parities: reuse,
            search_waves,
            defer_until_idle: true,
        })
    }

    /// Checks the schedule.
    ///
    /// # Errors
    /// [`CascadeError::InvalidConfig`] for no passes, a zero block size, or
    /// more than [`MAX_PASSES`] regular passes.
    pub fn validate(&self) -> Result<(), CascadeError> {
        if self.block_sizes.is_empty() || self.block_sizes.len() > MAX_PASSES {
            return Err(CascadeError::InvalidConfig {
                reason: "number of passes must be in 1..=255",
            });
        }
        if self.block_sizes.contains(&0) {
            return Err(CascadeError::InvalidConfig {
                reason: "block sizes must be positive",
            });
        }
        if self.search_waves == 0 {
            return Err(CascadeError::InvalidConfig {
                reason: "search waves must be at least 1",
            });
        }
        if self.biconf_clean_passes == Some(0) {
            return Err(CascadeError::InvalidConfig {
                reason: "BICONF needs at least one clean pass",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_the_spec() {
        let p = CascadeParams::for_variant(Variant::Original, 0.02, 10_000).unwrap();
        assert_eq!(p.block_sizes, vec![37, 73, 146, 292]);
        assert_eq!(p.search_waves, 2);
        let sizes = |q| {
            CascadeParams::for_variant(Variant::Original, q, 10_000)
                .unwrap()
                .block_sizes
        };
        assert_eq!(sizes(0.01), vec![73, 146, 292, 584]);
        assert_eq!(sizes(0.05), vec![15, 30, 59, 117]);
        assert_eq!(sizes(0.1), vec![8, 15, 30, 59]);
        let p = CascadeParams::for_variant(Variant::Biconf, 0.05, 10_000).unwrap();
        assert_eq!(p.block_sizes, vec![19, 57]);
        assert_eq!(p.biconf_clean_passes, Some(10));
        let p = CascadeParams::for_variant(Variant::YanEtAl, 0.1, 10_000).unwrap();
        assert_eq!(p.block_sizes.len(), 10);
        assert_eq!(&p.block_sizes[..3], &[8, 40, 5000]);
        let p = CascadeParams::for_variant(Variant::Option4, 0.01, 10_001).unwrap();
        assert_eq!(p.block_sizes.len(), 16);
        assert_eq!(&p.block_sizes[..3], &[100, 200, 5001]);
        assert!(p.reuse_known_parities);
        let p = CascadeParams::for_variant(Variant::Option7, 0.02, 10_000).unwrap();
        assert_eq!(&p.block_sizes[..3], &[64, 256, 5000]);
        assert_eq!(p.block_sizes.len(), 14);
        assert_eq!(p.search_waves, 1);
        // alpha = log2(50) - 0.5 = 5.14: k1 = 64, k2 = 2^ceil(8.57) = 512.
        let p = CascadeParams::for_variant(Variant::Option8, 0.02, 1 << 14).unwrap();
        assert_eq!(&p.block_sizes[..4], &[64, 512, 4096, 8192]);
        // alpha = log2(10) - 0.5 = 2.82: k1 = 8, k2 = 2^ceil(7.41) = 256.
        let p = CascadeParams::for_variant(Variant::Option8, 0.1, 1 << 14).unwrap();
        assert_eq!(&p.block_sizes[..3], &[8, 256, 4096]);
    }

    #[test]
    fn zero_qber_and_bad_input() {
        let p = CascadeParams::for_variant(Variant::Option8, 0.0, 1000).unwrap();
        assert!(p.block_sizes.iter().all(|&k| k >= 500));
        assert!(CascadeParams::for_variant(Variant::Original, 0.5, 1000).is_err());
        assert!(CascadeParams::for_variant(Variant::Original, f64::NAN, 1000).is_err());
        assert!(CascadeParams::for_variant(Variant::Original, 0.1, 0).is_err());
        for v in Variant::ALL {
            assert_eq!(v.name().parse::<Variant>().unwrap(), v);
        }
        assert!("option9".parse::<Variant>().is_err());
    }
}
