//! Variants of Cascade, the block-size schedules they use, and the
//! configuration both machines of a run are built from.

use core::fmt;
use core::str::FromStr;
use std::time::Duration;

use qkd_core::machine::{ConfigError, check_range};
use serde::{Deserialize, Serialize};

/// The most passes (regular and BICONF together) any schedule may have.
/// Shuffles are numbered by pass and the wire format carries the pass in
/// one byte; the bound also caps what a run can make Alice compute (see
/// the [memory bound](super#memory)).
pub const MAX_PASSES: usize = 64;

/// A named Cascade variant from Martinez-Mateo, Pacher, Peev, Ciurana and
/// Martin, "Demystifying the information reconciliation protocol Cascade"
/// (Quantum Inf. Comput. 15, 453–477, 2015; arXiv:1407.3257); each variant
/// below gives its block sizes.
///
/// `Q` below is the QBER estimate given to [`CascadeParams::for_variant`].
/// In configuration files a variant is written by its [name](Self::name)
/// (`"option8"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| {
                ConfigError::new(
                    "variant",
                    format!(
                        "unknown Cascade variant `{s}` (one of original, biconf, yanetal, \
                         option3, option4, option7, option8)"
                    ),
                )
            })
    }
}

/// The schedule one Cascade run follows: block size per regular pass,
/// BICONF, and whether known parities are reused.
///
/// Build it with [`for_variant`](Self::for_variant), or fill the fields for
/// a schedule of your own (block-size sweeps). Both sides build their
/// machines from the same schedule (in a [`CascadeConfig`]): Bob follows
/// it, and Alice answers only questions about the passes it has
/// ([`passes`](Self::passes)), so that a message cannot make her compute
/// shuffles nobody agreed on.
///
/// In a configuration file only `block_sizes` is required; the other
/// fields default as documented on each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeParams {
    /// Block size of each regular pass, first pass first. Pass 1 uses the key
    /// in its own order, later passes a shuffle. Each size is at least 1; a
    /// size of at least the key length makes the whole key one block.
    pub block_sizes: Vec<usize>,
    /// After the regular passes, run BICONF passes (a fresh shuffle, the key
    /// split in two halves, one parity asked) until this many in a row find
    /// no error. `None` (the default): no BICONF.
    #[serde(default)]
    pub biconf_clean_passes: Option<u32>,
    /// The most BICONF passes one run makes, clean or not (default
    /// [`DEFAULT_BICONF_MAX_PASSES`]); a run that reaches it ends, and
    /// confirmation decides about any error left. Unused without BICONF.
    #[serde(default = "default_biconf_max_passes")]
    pub biconf_max_passes: u32,
    /// Reuse every parity both sides already know: a range whose parity is
    /// known (asked before, or implied by its parent and sibling, or the last
    /// block of a pass implied by the total parity) is never asked again, and
    /// binary searches step through known sub-blocks for free. Default `false`.
    #[serde(default)]
    pub reuse_known_parities: bool,
    /// In passes after the first, the blocks found odd are searched in this
    /// many waves, each wave's searches (and the cascades they set off) in
    /// parallel, one wave after the other. Errors left after pass 1 come in
    /// pairs inside a pass-1 block, so two odd blocks of a later pass often
    /// hold the two errors of one pair; searching them one after the other
    /// lets the first search's cascade fix the second error through the
    /// cheap pass-1 block. More waves: fewer parities, more channel uses.
    /// 1 (the default) searches every odd block at once.
    #[serde(default = "one")]
    pub search_waves: u32,
    /// When a flipped bit makes several blocks odd, the smallest is searched
    /// first and the others are set aside. `true` (the default): they are
    /// checked again once no search at all is running (fewest parities, most
    /// channel uses); `false`: once the search that set them aside has ended.
    #[serde(default = "yes")]
    pub defer_until_idle: bool,
}

/// Default of [`CascadeParams::biconf_max_passes`]: about 2.5 times the
/// most BICONF passes the `biconf` variant needed in 200 runs each at QBER
/// 1, 5, 10 and 12 % and 30 to 10^4 bits (19; 11 on average).
pub const DEFAULT_BICONF_MAX_PASSES: u32 = 48;

fn default_biconf_max_passes() -> u32 {
    DEFAULT_BICONF_MAX_PASSES
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

impl CascadeParams {
    /// The schedule of `variant` for a key of `n` bits and QBER estimate
    /// `qber`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `qber` if it is not in `[0, 0.5)`, or `n`
    /// if it is 0. A `qber` of 0 makes every block the whole key.
    pub fn for_variant(variant: Variant, qber: f64, n: usize) -> Result<Self, ConfigError> {
        check_range("qber", qber, 0.0..0.5)?;
        if n == 0 {
            return Err(ConfigError::new("n", "the key length must be positive"));
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
            biconf_max_passes: DEFAULT_BICONF_MAX_PASSES,
            reuse_known_parities: reuse,
            search_waves,
            defer_until_idle: true,
        })
    }

    /// The most passes a run of this schedule makes: the regular passes,
    /// plus [`biconf_max_passes`](Self::biconf_max_passes) with BICONF.
    /// Passes are numbered `0 .. passes()` on the wire.
    #[must_use]
    pub fn passes(&self) -> usize {
        let biconf = match self.biconf_clean_passes {
            Some(_) => self.biconf_max_passes as usize,
            None => 0,
        };
        self.block_sizes.len().saturating_add(biconf)
    }

    /// Checks the schedule.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field: no passes or more than
    /// [`MAX_PASSES`] in all, a zero block size, no search wave, or BICONF
    /// with no clean pass or no pass.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.block_sizes.is_empty() {
            return Err(ConfigError::new(
                "block_sizes",
                "at least one regular pass is needed",
            ));
        }
        if self.block_sizes.contains(&0) {
            return Err(ConfigError::new(
                "block_sizes",
                "every block size must be positive",
            ));
        }
        if self.search_waves == 0 {
            return Err(ConfigError::new("search_waves", "must be at least 1"));
        }
        if self.biconf_clean_passes == Some(0) {
            return Err(ConfigError::new(
                "biconf_clean_passes",
                "BICONF needs at least one clean pass",
            ));
        }
        if self.biconf_clean_passes.is_some() && self.biconf_max_passes == 0 {
            return Err(ConfigError::new(
                "biconf_max_passes",
                "must be at least 1 with BICONF",
            ));
        }
        if self.passes() > MAX_PASSES {
            let field = if self.block_sizes.len() > MAX_PASSES {
                "block_sizes"
            } else {
                "biconf_max_passes"
            };
            return Err(ConfigError::new(
                field,
                format!(
                    "{} passes in all (regular and BICONF), at most {MAX_PASSES} allowed",
                    self.passes()
                ),
            ));
        }
        Ok(())
    }
}

/// The most parity bits Alice discloses in one run. Past it she refuses the
/// round and the run aborts ([`AbortReason::LeakLimit`](super::AbortReason::LeakLimit)).
///
/// In configuration files: `{ "bits": 3000 }` or `{ "per_key_bit": 0.5 }`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LeakBudget {
    /// At most this many parity bits, whatever the key length.
    Bits(u64),
    /// At most `⌊fraction · n⌋` parity bits for a key of `n` bits
    /// (finite, at least 0). A run that discloses as many bits as the key
    /// has leaves no secret key, so values above 1 only make sense for
    /// tests of tiny keys.
    PerKeyBit(f64),
}

impl Default for LeakBudget {
    /// One parity bit per key bit: more leaves nothing to distil.
    fn default() -> Self {
        LeakBudget::PerKeyBit(1.0)
    }
}

impl LeakBudget {
    /// The budget in parity bits for a key of `n` bits.
    #[must_use]
    pub fn bits_for(self, n: usize) -> u64 {
        match self {
            LeakBudget::Bits(bits) => bits,
            // Validated: finite and at least 0; `as` saturates.
            LeakBudget::PerKeyBit(fraction) => (fraction * n as f64).floor() as u64,
        }
    }

    /// Checks the budget.
    ///
    /// # Errors
    /// A fraction that is NaN, infinite or negative (field `per_key_bit`).
    pub fn validate(self) -> Result<(), ConfigError> {
        match self {
            LeakBudget::Bits(_) => Ok(()),
            LeakBudget::PerKeyBit(fraction) => {
                check_range("per_key_bit", fraction, 0.0..).map(|_| ())
            }
        }
    }
}

/// The configuration both machines of a run are built from: the schedule
/// and the leak budget both sides agreed on, and Bob's retransmission timer.
///
/// In a configuration file only `params` is required:
///
/// ```
/// use std::time::Duration;
/// use qkd_postproc::cascade::{CascadeConfig, LeakBudget};
///
/// let config: CascadeConfig = serde_json::from_str(
///     r#"{ "params": { "block_sizes": [64, 256, 5000], "reuse_known_parities": true } }"#,
/// ).unwrap();
/// assert_eq!(config.leak_budget, LeakBudget::PerKeyBit(1.0));
/// assert_eq!(config.retransmit_after, Duration::from_millis(200));
/// assert_eq!(config.max_retransmissions, 20);
/// assert_eq!(config.params.passes(), 3);
/// config.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeConfig {
    /// The schedule. Bob follows it; Alice answers questions about its
    /// passes only.
    pub params: CascadeParams,
    /// The most parity bits Alice discloses (default: one per key bit).
    /// Only Alice enforces it.
    #[serde(default)]
    pub leak_budget: LeakBudget,
    /// Bob resends the outstanding message when no reply came for this long
    /// (default 200 ms). Alice sets no timer.
    #[serde(default = "default_retransmit_after")]
    pub retransmit_after: Duration,
    /// Bob gives up (aborts with [`AbortReason::Timeout`](super::AbortReason::Timeout))
    /// after this many resends of one message (default 20).
    #[serde(default = "default_max_retransmissions")]
    pub max_retransmissions: u32,
}

fn default_retransmit_after() -> Duration {
    Duration::from_millis(200)
}

fn default_max_retransmissions() -> u32 {
    20
}

impl CascadeConfig {
    /// A configuration with `params` and every other field at its default.
    #[must_use]
    pub fn new(params: CascadeParams) -> Self {
        CascadeConfig {
            params,
            leak_budget: LeakBudget::default(),
            retransmit_after: default_retransmit_after(),
            max_retransmissions: default_max_retransmissions(),
        }
    }

    /// The same configuration with another leak budget.
    #[must_use]
    pub fn with_leak_budget(mut self, leak_budget: LeakBudget) -> Self {
        self.leak_budget = leak_budget;
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field (`params.block_sizes`,
    /// `leak_budget.per_key_bit`, `retransmit_after` ...).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.params.validate().map_err(|e| e.within("params"))?;
        self.leak_budget
            .validate()
            .map_err(|e| e.within("leak_budget"))?;
        if self.retransmit_after.is_zero() {
            return Err(ConfigError::new(
                "retransmit_after",
                "must be longer than zero",
            ));
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
