//! The stages as [`Module`]s: their parameters (validated, changed at run
//! time from the next block) and their statistics.

use qkd_core::Role;
use qkd_core::machine::{ConfigError, check_range};
use qkd_core::module::{Module, ParameterError, ParameterInfo, Statistic, Value};
use serde::{Deserialize, Serialize};

use crate::amplify::Construction;
use crate::cascade::Variant;

/// The stages, in pipeline order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    /// Sifting.
    Sift,
    /// Parameter estimation.
    Estimate,
    /// Error correction with Cascade.
    Cascade,
    /// Error correction with LDPC syndrome coding (in place of Cascade).
    Ldpc,
    /// Key confirmation.
    Confirm,
    /// Privacy amplification.
    Amplify,
}

impl StageKind {
    /// The stages of the default definition, in order. Every definition has
    /// these, except that [`Ldpc`](Self::Ldpc) may stand in place of
    /// [`Cascade`](Self::Cascade) (exactly one correction stage).
    pub const REQUIRED: [StageKind; 5] = [
        StageKind::Sift,
        StageKind::Estimate,
        StageKind::Cascade,
        StageKind::Confirm,
        StageKind::Amplify,
    ];

    /// Whether this is a correction stage (`cascade` or `ldpc`).
    #[must_use]
    pub const fn is_correction(self) -> bool {
        matches!(self, StageKind::Cascade | StageKind::Ldpc)
    }

    /// The stage's name in definitions and on the control surface.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            StageKind::Sift => "sift",
            StageKind::Estimate => "estimate",
            StageKind::Cascade => "cascade",
            StageKind::Ldpc => "ldpc",
            StageKind::Confirm => "confirm",
            StageKind::Amplify => "amplify",
        }
    }
}

impl core::fmt::Display for StageKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The `ldpc` stage's parameters that only the guided variant reads.
pub(crate) const GUIDED_PARAMETERS: [&str; 2] = ["guided_step", "resume_iterations"];

/// What the `ldpc` stage does when a frame does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LdpcVariant {
    /// Blind: Alice reveals more bits, round by round.
    Blind,
    /// One syndrome; a frame that fails drops the block.
    RateAdaptive,
    /// Guided: Bob asks for the bits his decoder is least sure of.
    Guided,
}

impl LdpcVariant {
    pub(crate) fn name(self) -> &'static str {
        match self {
            LdpcVariant::Blind => "blind",
            LdpcVariant::RateAdaptive => "rate_adaptive",
            LdpcVariant::Guided => "guided",
        }
    }
}

/// Parameters of the stages. Alice owns every stage: she announces what
/// Bob must know in the stage's first message (see [`super::wire`]).
/// Fields missing from a saved state take their defaults (states saved
/// before the `ldpc` stage existed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Settings {
    pub(crate) sample_fraction: f64,
    pub(crate) min_sample_bits: u32,
    pub(crate) abort_qber: f64,
    pub(crate) eps_pe: f64,
    pub(crate) variant: Variant,
    pub(crate) chunk_bits: u32,
    pub(crate) min_chunk_bits: u32,
    pub(crate) tag_bits: u8,
    pub(crate) eps_sec: f64,
    pub(crate) modified_toeplitz: bool,
    pub(crate) ldpc_variant: LdpcVariant,
    pub(crate) frame_bits: u32,
    pub(crate) min_frame_bits: u32,
    pub(crate) blind_step: f64,
    pub(crate) max_blind_rounds: u32,
    pub(crate) max_iterations: u32,
    pub(crate) efficiency: f64,
    pub(crate) adaptive_start: bool,
    pub(crate) modulated: f64,
    pub(crate) guided_step: f64,
    pub(crate) resume_iterations: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sample_fraction: 0.1,
            min_sample_bits: 1_000,
            abort_qber: 0.11,
            eps_pe: 1e-10,
            variant: Variant::Option7,
            chunk_bits: 1 << 16,
            min_chunk_bits: 1 << 10,
            tag_bits: 64,
            eps_sec: 1e-10,
            modified_toeplitz: true,
            ldpc_variant: LdpcVariant::Blind,
            // As `pipelines/ldpc.toml` (BENCHMARKS.md, "the pipeline's
            // LDPC settings", eighth session).
            frame_bits: 1 << 17,
            min_frame_bits: 1 << 12,
            blind_step: 0.0025,
            max_blind_rounds: 40,
            max_iterations: 60,
            efficiency: 1.08,
            adaptive_start: true,
            modulated: 0.1,
            // BENCHMARKS.md, "guided reconciliation" (tenth session).
            guided_step: 0.005,
            resume_iterations: 20,
        }
    }
}

impl Settings {
    pub(crate) fn construction(&self) -> Construction {
        if self.modified_toeplitz {
            Construction::Modified
        } else {
            Construction::Standard
        }
    }
}

/// Counters of one stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageStats {
    /// Blocks that entered the stage.
    pub blocks_in: u64,
    /// Blocks that left it for the next stage (or as final key).
    pub blocks_out: u64,
    /// Blocks dropped in this stage.
    pub blocks_dropped: u64,
    /// Bits that entered the stage.
    pub bits_in: u64,
    /// Bits that left it.
    pub bits_out: u64,
    /// Bits disclosed in this stage (sample, parities, tag; leftover of the
    /// correction chunks counted with Cascade).
    pub leaked_bits: u64,
    /// Estimate only: errors found in the samples.
    pub sample_errors: u64,
    /// Estimate only: bits sampled.
    pub sample_bits: u64,
    /// Estimate only: the last block's QBER estimate.
    pub last_qber: f64,
    /// Seconds since the pipeline's first frame, at the last update.
    pub elapsed_s: f64,
    /// LDPC only: frames reconciled or given up.
    #[serde(default)]
    pub frames: u64,
    /// LDPC only: frames whose decoding failed (each dropped its block).
    #[serde(default)]
    pub decode_failures: u64,
    /// LDPC only: decoding rounds after the first (blind reveals).
    #[serde(default)]
    pub blind_rounds: u64,
    /// LDPC only: bits revealed in blind rounds (part of `leaked_bits`).
    #[serde(default)]
    pub revealed_bits: u64,
}

/// One stage: its kind, parameters and statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    pub(crate) kind: StageKind,
    pub(crate) settings: Settings,
    pub(crate) stats: StageStats,
    /// `Some(Bob)` makes the agreed parameters read-only (Alice owns them).
    pub(crate) role: Option<Role>,
}

fn number(name: &str, value: &Value) -> Result<f64, ParameterError> {
    value
        .as_f64()
        .ok_or_else(|| ParameterError::type_mismatch(name, "a number"))
}

fn count(name: &str, value: &Value) -> Result<u64, ParameterError> {
    value
        .as_u64()
        .ok_or_else(|| ParameterError::type_mismatch(name, "a whole number"))
}

impl Stage {
    pub(crate) fn new(kind: StageKind) -> Self {
        Stage {
            kind,
            settings: Settings::default(),
            stats: StageStats::default(),
            role: None,
        }
    }

    /// The stage's kind.
    #[must_use]
    pub fn kind(&self) -> StageKind {
        self.kind
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &StageStats {
        &self.stats
    }

    /// Sets a parameter while building a definition (no role check).
    pub(crate) fn configure(&mut self, name: &str, value: &Value) -> Result<(), ParameterError> {
        let role = self.role.take();
        let result = self.set_parameter(name, value);
        self.role = role;
        result
    }

    fn writable(&self) -> bool {
        self.role != Some(Role::Bob)
    }

    fn info(&self, name: &str, value: Value, description: &str) -> ParameterInfo {
        if self.writable() {
            ParameterInfo::writable(name, value, description)
        } else {
            ParameterInfo::read_only(name, value, format!("{description} (set on Alice's side)"))
        }
    }
}

impl Module for Stage {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn statistics(&self) -> Vec<Statistic> {
        let s = &self.stats;
        let mut out = vec![
            Statistic::new("blocks_in", Value::U64(s.blocks_in), "blocks"),
            Statistic::new("blocks_out", Value::U64(s.blocks_out), "blocks"),
            Statistic::new("blocks_dropped", Value::U64(s.blocks_dropped), "blocks"),
            Statistic::new("bits_in", Value::U64(s.bits_in), "bits"),
            Statistic::new("bits_out", Value::U64(s.bits_out), "bits"),
            Statistic::new("leaked_bits", Value::U64(s.leaked_bits), "bits"),
        ];
        let rate = if s.elapsed_s > 0.0 {
            s.bits_out as f64 / s.elapsed_s
        } else {
            0.0
        };
        out.push(Statistic::new("key_rate", Value::F64(rate), "bit/s"));
        if self.kind == StageKind::Estimate {
            let qber = if s.sample_bits > 0 {
                s.sample_errors as f64 / s.sample_bits as f64
            } else {
                0.0
            };
            out.push(Statistic::new("qber", Value::F64(qber), "ratio"));
            out.push(Statistic::new(
                "last_qber",
                Value::F64(s.last_qber),
                "ratio",
            ));
            out.push(Statistic::new(
                "sample_bits",
                Value::U64(s.sample_bits),
                "bits",
            ));
            out.push(Statistic::new(
                "sample_errors",
                Value::U64(s.sample_errors),
                "bits",
            ));
        }
        if self.kind == StageKind::Ldpc {
            out.push(Statistic::new("frames", Value::U64(s.frames), "frames"));
            out.push(Statistic::new(
                "decode_failures",
                Value::U64(s.decode_failures),
                "frames",
            ));
            out.push(Statistic::new(
                "blind_rounds",
                Value::U64(s.blind_rounds),
                "rounds",
            ));
            out.push(Statistic::new(
                "revealed_bits",
                Value::U64(s.revealed_bits),
                "bits",
            ));
        }
        out
    }

    fn parameters(&self) -> Vec<ParameterInfo> {
        let s = &self.settings;
        match self.kind {
            StageKind::Sift => Vec::new(),
            StageKind::Estimate => vec![
                self.info(
                    "sample_fraction",
                    Value::F64(s.sample_fraction),
                    "share of the sifted bits disclosed as the sample, in (0, 1)",
                ),
                self.info(
                    "min_sample_bits",
                    Value::U64(u64::from(s.min_sample_bits)),
                    "fewest bits sampled; smaller blocks are dropped",
                ),
                self.info(
                    "abort_qber",
                    Value::F64(s.abort_qber),
                    "blocks whose sample QBER is above this are dropped, in [0, 0.5)",
                ),
                self.info(
                    "eps_pe",
                    Value::F64(s.eps_pe),
                    "confidence of the reported QBER upper bound, in (0, 1)",
                ),
            ],
            StageKind::Cascade => vec![
                self.info(
                    "variant",
                    Value::Text(s.variant.name().into()),
                    "Cascade variant: original, biconf, yanetal, option3, option4, option7, option8",
                ),
                self.info(
                    "chunk_bits",
                    Value::U64(u64::from(s.chunk_bits)),
                    "key bits per Cascade run, a power of two in 2^10..=2^20",
                ),
                self.info(
                    "min_chunk_bits",
                    Value::U64(u64::from(s.min_chunk_bits)),
                    "smallest run for the rest of a block, a power of two in 2^6..=chunk_bits; \
                     fewer leftover bits are not corrected and count as disclosed",
                ),
            ],
            StageKind::Ldpc => vec![
                self.info(
                    "variant",
                    Value::Text(s.ldpc_variant.name().into()),
                    "blind (reveal more bits after a failed decoding), guided (Bob asks for \
                     the bits his decoder is least sure of; frames unpunctured) or \
                     rate_adaptive (a failed frame drops the block)",
                ),
                self.info(
                    "frame_bits",
                    Value::U64(u64::from(s.frame_bits)),
                    "LDPC frame length n, a power of two in 2^10..=2^20",
                ),
                self.info(
                    "min_frame_bits",
                    Value::U64(u64::from(s.min_frame_bits)),
                    "shortest frame for the rest of a block, a power of two in \
                     2^10..=frame_bits; fewer leftover key bits are not corrected and count \
                     as disclosed (frames under 2^12 bits decode poorly)",
                ),
                self.info(
                    "blind_step",
                    Value::F64(s.blind_step),
                    "bits revealed per extra blind round, as a share of the frame length \
                     (at least 32 bits), in (0, 0.1]",
                ),
                self.info(
                    "max_blind_rounds",
                    Value::U64(u64::from(s.max_blind_rounds)),
                    "decoding rounds per frame at most (the first included), 1..=65535",
                ),
                self.info(
                    "max_iterations",
                    Value::U64(u64::from(s.max_iterations)),
                    "decoder iterations per round, 1..=1000",
                ),
                self.info(
                    "efficiency",
                    Value::F64(s.efficiency),
                    "efficiency f the first syndrome aims at (leak = f·h2(QBER) per key bit, \
                     QBER the estimate's), in [1, 3)",
                ),
                self.info(
                    "adaptive_start",
                    Value::Bool(s.adaptive_start),
                    "Alice starts each block's frames at the 10th percentile of the f her \
                     last 32 frames needed (never below `efficiency`) instead of at \
                     `efficiency`: fewer blind rounds where the codes need more",
                ),
                self.info(
                    "modulated",
                    Value::F64(s.modulated),
                    "share of each frame punctured or shortened for rate adaptation, \
                     in [0, 0.4] (guided: shortened at most)",
                ),
                self.info(
                    "guided_step",
                    Value::F64(s.guided_step),
                    "guided: bits asked for per extra round, as a share of the frame's key \
                     bits times h2(QBER) (at least 1 bit, at most 2^16), in (0, 0.1]",
                ),
                self.info(
                    "resume_iterations",
                    Value::U64(u64::from(s.resume_iterations)),
                    "guided: decoder iterations of each round after the first (the decoder \
                     resumes where it stopped), 1..=1000",
                ),
            ],
            StageKind::Confirm => vec![self.info(
                "tag_bits",
                Value::U64(u64::from(s.tag_bits)),
                "confirmation tag length in bits, 32..=128",
            )],
            StageKind::Amplify => vec![
                self.info(
                    "eps_sec",
                    Value::F64(s.eps_sec),
                    "secrecy parameter of the finite-key bound, in (0, 1e-3]",
                ),
                self.info(
                    "construction",
                    Value::Text(if s.modified_toeplitz { "modified" } else { "standard" }.into()),
                    "Toeplitz family: modified (default: (I | T'), seed n − 1 bits) or standard",
                ),
            ],
        }
    }

    fn set_parameter(&mut self, name: &str, value: &Value) -> Result<(), ParameterError> {
        let known = self.parameters().iter().any(|p| p.name == name);
        if !known {
            return Err(ParameterError::Unknown {
                name: name.to_owned(),
            });
        }
        if !self.writable() {
            return Err(ParameterError::ReadOnly {
                name: name.to_owned(),
            });
        }
        let mut next = self.settings.clone();
        match name {
            "sample_fraction" => {
                let v = check_range(name, number(name, value)?, 0.0..1.0)?;
                if v == 0.0 {
                    return Err(ConfigError::new(name, "must be above 0").into());
                }
                next.sample_fraction = v;
            }
            "min_sample_bits" => {
                let v = count(name, value)?;
                if !(1..=u64::from(crate::estimate::MAX_SAMPLE_BITS)).contains(&v) {
                    return Err(ConfigError::new(name, "must be between 1 and 2^28").into());
                }
                next.min_sample_bits = v as u32;
            }
            "abort_qber" => next.abort_qber = check_range(name, number(name, value)?, 0.0..0.5)?,
            "eps_pe" => {
                let v = check_range(name, number(name, value)?, 0.0..1.0)?;
                if v == 0.0 {
                    return Err(ConfigError::new(name, "must be above 0").into());
                }
                next.eps_pe = v;
            }
            "variant" if self.kind == StageKind::Ldpc => {
                next.ldpc_variant = match value.as_str() {
                    Some("blind") => LdpcVariant::Blind,
                    Some("rate_adaptive") => LdpcVariant::RateAdaptive,
                    Some("guided") => LdpcVariant::Guided,
                    _ => {
                        return Err(ParameterError::type_mismatch(
                            name,
                            "`blind`, `guided` or `rate_adaptive`",
                        ));
                    }
                };
            }
            "frame_bits" | "min_frame_bits" => {
                let v = count(name, value)?;
                let (lo, hi) = if name == "frame_bits" {
                    (1 << 10, 1 << 20)
                } else {
                    (1 << 10, u64::from(next.frame_bits))
                };
                if !v.is_power_of_two() || v < lo || v > hi {
                    return Err(ConfigError::new(
                        name,
                        format!("must be a power of two in {lo}..={hi}, got {v}"),
                    )
                    .into());
                }
                if name == "frame_bits" {
                    next.frame_bits = v as u32;
                    next.min_frame_bits = next.min_frame_bits.min(next.frame_bits);
                } else {
                    next.min_frame_bits = v as u32;
                }
            }
            "blind_step" => {
                let v = check_range(name, number(name, value)?, 0.0..=0.1)?;
                if v == 0.0 {
                    return Err(ConfigError::new(name, "must be above 0").into());
                }
                next.blind_step = v;
            }
            "guided_step" => {
                let v = check_range(name, number(name, value)?, 0.0..=0.1)?;
                if v == 0.0 {
                    return Err(ConfigError::new(name, "must be above 0").into());
                }
                next.guided_step = v;
            }
            "resume_iterations" => {
                let v = count(name, value)?;
                if !(1..=1000).contains(&v) {
                    return Err(ConfigError::new(name, "must be in 1..=1000").into());
                }
                next.resume_iterations = v as u32;
            }
            "max_blind_rounds" => {
                let v = count(name, value)?;
                if !(1..=u64::from(u16::MAX)).contains(&v) {
                    return Err(ConfigError::new(name, "must be in 1..=65535").into());
                }
                next.max_blind_rounds = v as u32;
            }
            "max_iterations" => {
                let v = count(name, value)?;
                if !(1..=1000).contains(&v) {
                    return Err(ConfigError::new(name, "must be in 1..=1000").into());
                }
                next.max_iterations = v as u32;
            }
            "efficiency" => next.efficiency = check_range(name, number(name, value)?, 1.0..3.0)?,
            "modulated" => next.modulated = check_range(name, number(name, value)?, 0.0..=0.4)?,
            "adaptive_start" => {
                next.adaptive_start = value
                    .as_bool()
                    .ok_or_else(|| ParameterError::type_mismatch(name, "true or false"))?;
            }
            "variant" => {
                let text = value
                    .as_str()
                    .ok_or_else(|| ParameterError::type_mismatch(name, "a variant name"))?;
                next.variant = text.parse::<Variant>()?;
            }
            "chunk_bits" | "min_chunk_bits" => {
                let v = count(name, value)?;
                let (lo, hi) = if name == "chunk_bits" {
                    (1 << 10, 1 << 20)
                } else {
                    (1 << 6, u64::from(next.chunk_bits))
                };
                if !v.is_power_of_two() || v < lo || v > hi {
                    return Err(ConfigError::new(
                        name,
                        format!("must be a power of two in {lo}..={hi}, got {v}"),
                    )
                    .into());
                }
                if name == "chunk_bits" {
                    next.chunk_bits = v as u32;
                    next.min_chunk_bits = next.min_chunk_bits.min(next.chunk_bits);
                } else {
                    next.min_chunk_bits = v as u32;
                }
            }
            "tag_bits" => {
                let v = count(name, value)?;
                if !(32..=128).contains(&v) {
                    return Err(
                        ConfigError::new(name, format!("must be in 32..=128, got {v}")).into(),
                    );
                }
                next.tag_bits = v as u8;
            }
            "eps_sec" => {
                let v = check_range(name, number(name, value)?, 0.0..=1e-3)?;
                if v == 0.0 {
                    return Err(ConfigError::new(name, "must be above 0").into());
                }
                next.eps_sec = v;
            }
            "construction" => {
                next.modified_toeplitz = match value.as_str() {
                    Some("standard") => false,
                    Some("modified") => true,
                    _ => {
                        return Err(ParameterError::type_mismatch(
                            name,
                            "`standard` or `modified`",
                        ));
                    }
                };
            }
            _ => {
                return Err(ParameterError::Unknown {
                    name: name.to_owned(),
                });
            }
        }
        self.settings = next;
        Ok(())
    }
}

/// The authentication channel and the pipeline's own settings as modules.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthStats {
    /// Bits of pad this side used to seal (tags sent).
    pub sent_pad_bits: u64,
    /// Bits of pad used to verify the peer's tags.
    pub received_pad_bits: u64,
    /// Bits deposited into the pool from final keys.
    pub replenished_bits: u64,
    /// Bits left in this side's send stream.
    pub remaining_bits: u64,
    /// Tags that failed to verify.
    pub forgeries_rejected: u64,
    /// Replays rejected.
    pub replays_rejected: u64,
    /// Upper bound on the probability that any forgery was accepted.
    pub forgery_bound: f64,
}

/// The `auth` module: the authenticated channel's counters (read-only
/// parameters: the mode, tag length and pool share are part of the
/// definition).
#[derive(Clone, Debug, PartialEq)]
pub struct AuthModule {
    pub(crate) stats: AuthStats,
    pub(crate) mode: super::AuthMode,
    pub(crate) tag_bits: u32,
    pub(crate) share_ppm: u32,
}

impl Module for AuthModule {
    fn name(&self) -> &str {
        "auth"
    }

    fn statistics(&self) -> Vec<Statistic> {
        let s = &self.stats;
        vec![
            Statistic::new("sent_pad_bits", Value::U64(s.sent_pad_bits), "bits"),
            Statistic::new("received_pad_bits", Value::U64(s.received_pad_bits), "bits"),
            Statistic::new(
                "auth_bits_spent",
                Value::U64(s.sent_pad_bits + s.received_pad_bits),
                "bits",
            ),
            Statistic::new("replenished_bits", Value::U64(s.replenished_bits), "bits"),
            Statistic::new("remaining_bits", Value::U64(s.remaining_bits), "bits"),
            Statistic::new(
                "forgeries_rejected",
                Value::U64(s.forgeries_rejected),
                "messages",
            ),
            Statistic::new(
                "replays_rejected",
                Value::U64(s.replays_rejected),
                "messages",
            ),
            Statistic::new("forgery_bound", Value::F64(s.forgery_bound), "probability"),
        ]
    }

    fn parameters(&self) -> Vec<ParameterInfo> {
        vec![
            ParameterInfo::read_only(
                "mode",
                Value::Text(
                    match self.mode {
                        super::AuthMode::Transcript => "transcript",
                        super::AuthMode::PerMessage => "per_message",
                    }
                    .into(),
                ),
                "transcript tags per block, or a tag per message (definition)",
            ),
            ParameterInfo::read_only(
                "tag_bits",
                Value::U64(u64::from(self.tag_bits)),
                "Wegman-Carter tag length (definition)",
            ),
            ParameterInfo::read_only(
                "share_ppm",
                Value::U64(u64::from(self.share_ppm)),
                "share of each final key fed to the pool, parts per million (definition)",
            ),
        ]
    }

    fn set_parameter(&mut self, name: &str, _value: &Value) -> Result<(), ParameterError> {
        if self.parameters().iter().any(|p| p.name == name) {
            Err(ParameterError::ReadOnly {
                name: name.to_owned(),
            })
        } else {
            Err(ParameterError::Unknown {
                name: name.to_owned(),
            })
        }
    }
}

/// The `pipeline` module: the local settings that may change at run time.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineModule {
    pub(crate) max_blocks_in_flight: u32,
    /// Blocks numbered this or higher are not started (a hold for a
    /// consistent save of both sides); `u64::MAX`: no hold. Not saved.
    pub(crate) hold_from_block: u64,
    pub(crate) blocks_in_flight: u64,
    pub(crate) frames_waiting: u64,
    /// One past the last block started on this side (0 before the first).
    pub(crate) next_block: u64,
}

/// The value of `hold_from_block` that holds nothing.
pub(crate) const NO_HOLD: u64 = u64::MAX;

impl Module for PipelineModule {
    fn name(&self) -> &str {
        "pipeline"
    }

    fn statistics(&self) -> Vec<Statistic> {
        vec![
            Statistic::new(
                "blocks_in_flight",
                Value::U64(self.blocks_in_flight),
                "blocks",
            ),
            Statistic::new("frames_waiting", Value::U64(self.frames_waiting), "frames"),
            Statistic::new("next_block", Value::U64(self.next_block), "block"),
        ]
    }

    fn parameters(&self) -> Vec<ParameterInfo> {
        vec![
            ParameterInfo::writable(
                "max_blocks_in_flight",
                Value::U64(u64::from(self.max_blocks_in_flight)),
                "blocks processed at once on this side, 1..=1024",
            ),
            ParameterInfo::writable(
                "hold_from_block",
                Value::U64(self.hold_from_block),
                "blocks numbered this or higher are not started (18446744073709551615: no \
                 hold); set the same value on both sides, wait for blocks_in_flight 0 on both, \
                 then save both: the two states hold the same committed blocks. Not saved",
            ),
        ]
    }

    fn set_parameter(&mut self, name: &str, value: &Value) -> Result<(), ParameterError> {
        match name {
            "max_blocks_in_flight" => {
                let v = count(name, value)?;
                if !(1..=1024).contains(&v) {
                    return Err(ConfigError::new(name, "must be between 1 and 1024").into());
                }
                self.max_blocks_in_flight = v as u32;
                Ok(())
            }
            "hold_from_block" => {
                self.hold_from_block = count(name, value)?;
                Ok(())
            }
            _ => Err(ParameterError::Unknown {
                name: name.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_values_change_nothing() {
        let mut s = Stage::new(StageKind::Cascade);
        assert!(s.set_parameter("chunk_bits", &Value::U64(1000)).is_err());
        assert!(
            s.set_parameter("variant", &Value::Text("option9".into()))
                .is_err()
        );
        assert_eq!(s.settings, Settings::default());
        s.set_parameter("variant", &Value::Text("option8".into()))
            .unwrap();
        assert_eq!(
            s.parameter("variant").unwrap(),
            Value::Text("option8".into())
        );
        s.role = Some(Role::Bob);
        assert_eq!(
            s.set_parameter("variant", &Value::Text("original".into())),
            Err(ParameterError::ReadOnly {
                name: "variant".into()
            })
        );
        assert!(matches!(
            s.set_parameter("nope", &Value::U64(1)),
            Err(ParameterError::Unknown { .. })
        ));
    }
}
