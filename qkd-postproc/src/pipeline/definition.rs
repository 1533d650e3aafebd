//! Pipeline definition files: which stages, in which order, with which
//! parameters; TOML, or the same structure as XML (the AIT seed's format).
//!
//! ```toml
//! name = "default"
//! authentication = "transcript"   # or "per_message"
//! max_blocks_in_flight = 4
//!
//! [[stage]]
//! name = "sift"
//!
//! [[stage]]
//! name = "estimate"
//! params = { sample_fraction = 0.1, abort_qber = 0.11 }
//!
//! [[stage]]
//! name = "cascade"
//! params = { variant = "option7", chunk_bits = 65536 }
//!
//! [[stage]]
//! name = "confirm"
//! params = { tag_bits = 64 }
//!
//! [[stage]]
//! name = "amplify"
//! params = { eps_sec = 1e-10 }
//! ```
//!
//! ```xml
//! <pipeline name="default" authentication="transcript" max_blocks_in_flight="4">
//!   <stage name="sift"/>
//!   <stage name="cascade"><param name="variant" value="option7"/></stage>
//!   ...
//! </pipeline>
//! ```
//!
//! The stages are `sift`, `estimate`, a correction stage, `confirm`,
//! `amplify`, in this order, each once. The correction stage is exactly one
//! of `cascade` and `ldpc`; `pipelines/ldpc.toml` shows the second:
//!
//! ```toml
//! [[stage]]
//! name = "ldpc"
//! params = { variant = "blind", frame_bits = 131072, min_frame_bits = 4096, efficiency = 1.08 }
//! ```
//!
//! A stage's
//! parameters are the ones its [`Module`] lists
//! ([`Pipeline::module`](super::Pipeline)), checked by the same validation
//! as a change at run time. Errors name the line (TOML) and the field.
//!
//! [`PipelineDefinition::digest`] is a blake3 hash of the normalised
//! definition: two peers with different definitions find it out from the
//! pipelines' first messages ([`PipelineEvent::DefinitionMismatch`](super::PipelineEvent::DefinitionMismatch)).

use std::collections::BTreeMap;
use std::time::Duration;

use qkd_core::module::{Module, Value};
use serde::{Deserialize, Serialize};

use super::stages::{Stage, StageKind};

/// How the pipeline authenticates its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// One tag per direction per block over the block's whole conversation
    /// (checked before the block's key is kept), plus the sealed control
    /// messages of the block's commit. The default.
    Transcript,
    /// Every message sealed with its own tag.
    PerMessage,
}

/// When the authentication pool's checkpoints are committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointMode {
    /// The pipeline commits its own checkpoints. Restoring is then safe only
    /// from a state saved right before the pipeline was dropped
    /// (hibernation), never after a crash (see [`super`] on restarts).
    Auto,
    /// The pipeline stops at [`PipelineEvent::SaveDue`](super::PipelineEvent::SaveDue)
    /// until the host has called [`save_state`](qkd_core::module::ModuleHost::save_state)
    /// and written the state durably: crash-safe.
    Manual,
}

/// Why a definition was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionError {
    /// The file does not parse (syntax, types, unknown keys).
    #[error("{}{message}", line_prefix(*line))]
    Syntax {
        /// 1-based line, when known.
        line: Option<usize>,
        /// What the parser said.
        message: String,
    },
    /// A field has a value that is not allowed.
    #[error("{}`{field}`: {reason}", line_prefix(*line))]
    Invalid {
        /// 1-based line, when known.
        line: Option<usize>,
        /// The dotted path of the field (`stage[2].params.variant`).
        field: String,
        /// Why.
        reason: String,
    },
    /// A stage name nobody knows.
    #[error("{}unknown stage `{name}` (known: sift, estimate, cascade, ldpc, confirm, amplify)", line_prefix(*line))]
    UnknownStage {
        /// 1-based line, when known.
        line: Option<usize>,
        /// The name.
        name: String,
    },
    /// A known stage the pipeline cannot run yet.
    #[error("{}stage `{name}` is not implemented in the pipeline yet: {reason}", line_prefix(*line))]
    NotImplemented {
        /// 1-based line, when known.
        line: Option<usize>,
        /// The name.
        name: String,
        /// What is missing.
        reason: String,
    },
}

fn line_prefix(line: Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

/// A validated pipeline definition. Build it with [`from_toml`](Self::from_toml),
/// [`from_xml`](Self::from_xml) or [`Default`] (the stages of
/// `pipelines/default.toml`).
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineDefinition {
    /// A name for logs.
    pub name: String,
    /// Authentication mode (both sides must agree: part of the digest).
    pub authentication: AuthMode,
    /// Wegman–Carter tag length, 128 or 64 (both sides: part of the digest).
    pub tag_bits: u32,
    /// Share of each final key that goes to the authentication pool, in
    /// parts per million (both sides: part of the digest).
    pub auth_share_ppm: u32,
    /// Blocks in flight at once (local).
    pub max_blocks_in_flight: u32,
    /// When checkpoints are committed (local).
    pub checkpoints: CheckpointMode,
    /// Resend an unacknowledged message after this long (local).
    pub retransmit_after: Duration,
    /// Resends of one message before a block is given up, or reported as
    /// stalled when it cannot be given up (local).
    pub max_retransmissions: u32,
    pub(crate) stages: Vec<Stage>,
}

impl Default for PipelineDefinition {
    fn default() -> Self {
        PipelineDefinition {
            name: "default".into(),
            authentication: AuthMode::Transcript,
            tag_bits: 128,
            auth_share_ppm: 10_000,
            max_blocks_in_flight: 4,
            checkpoints: CheckpointMode::Auto,
            retransmit_after: Duration::from_millis(200),
            max_retransmissions: 20,
            stages: StageKind::REQUIRED.iter().map(|k| Stage::new(*k)).collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    name: Option<String>,
    authentication: Option<toml::Spanned<String>>,
    tag_bits: Option<toml::Spanned<u32>>,
    auth_share_ppm: Option<toml::Spanned<u32>>,
    max_blocks_in_flight: Option<toml::Spanned<u32>>,
    checkpoints: Option<toml::Spanned<String>>,
    retransmit_after_ms: Option<toml::Spanned<u64>>,
    max_retransmissions: Option<toml::Spanned<u32>>,
    stage: Vec<TomlStage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlStage {
    name: toml::Spanned<String>,
    #[serde(default)]
    params: BTreeMap<String, toml::Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct XmlFile {
    #[serde(rename = "@name")]
    name: Option<String>,
    #[serde(rename = "@authentication")]
    authentication: Option<String>,
    #[serde(rename = "@tag_bits")]
    tag_bits: Option<String>,
    #[serde(rename = "@auth_share_ppm")]
    auth_share_ppm: Option<String>,
    #[serde(rename = "@max_blocks_in_flight")]
    max_blocks_in_flight: Option<String>,
    #[serde(rename = "@checkpoints")]
    checkpoints: Option<String>,
    #[serde(rename = "@retransmit_after_ms")]
    retransmit_after_ms: Option<String>,
    #[serde(rename = "@max_retransmissions")]
    max_retransmissions: Option<String>,
    #[serde(default)]
    stage: Vec<XmlStage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct XmlStage {
    #[serde(rename = "@name")]
    name: String,
    #[serde(default)]
    param: Vec<XmlParam>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct XmlParam {
    #[serde(rename = "@name")]
    name: String,
    #[serde(rename = "@value")]
    value: String,
}

/// One top-level setting before validation: value, line.
struct Raw<T> {
    value: T,
    line: Option<usize>,
}

struct RawStage {
    name: String,
    line: Option<usize>,
    params: Vec<(String, Value, Option<usize>)>,
}

#[derive(Default)]
struct RawDefinition {
    name: Option<String>,
    authentication: Option<Raw<String>>,
    tag_bits: Option<Raw<u64>>,
    auth_share_ppm: Option<Raw<u64>>,
    max_blocks_in_flight: Option<Raw<u64>>,
    checkpoints: Option<Raw<String>>,
    retransmit_after_ms: Option<Raw<u64>>,
    max_retransmissions: Option<Raw<u64>>,
    stages: Vec<RawStage>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn toml_value(v: &toml::Value) -> Option<Value> {
    Some(match v {
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Integer(i) => Value::U64(u64::try_from(*i).ok()?),
        toml::Value::Float(f) => Value::F64(*f),
        toml::Value::String(s) => Value::Text(s.clone()),
        _ => return None,
    })
}

/// XML attributes are text: `true`/`false`, an integer, a number, or text.
fn xml_value(s: &str) -> Value {
    let t = s.trim();
    if t == "true" || t == "false" {
        Value::Bool(t == "true")
    } else if let Ok(u) = t.parse::<u64>() {
        Value::U64(u)
    } else if let Ok(f) = t.parse::<f64>() {
        Value::F64(f)
    } else {
        Value::Text(s.to_owned())
    }
}

fn xml_number(field: &str, s: Option<String>) -> Result<Option<Raw<u64>>, DefinitionError> {
    s.map(|s| {
        s.trim()
            .parse::<u64>()
            .map(|value| Raw { value, line: None })
            .map_err(|_| DefinitionError::Invalid {
                line: None,
                field: field.to_owned(),
                reason: format!("must be a whole number, got `{s}`"),
            })
    })
    .transpose()
}

impl PipelineDefinition {
    /// Parses and validates a TOML definition.
    ///
    /// # Errors
    /// A [`DefinitionError`] naming the line and field.
    pub fn from_toml(text: &str) -> Result<Self, DefinitionError> {
        let file: TomlFile = toml::from_str(text).map_err(|e| DefinitionError::Syntax {
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().to_owned(),
        })?;
        let spanned = |s: &toml::Spanned<u32>| Raw {
            value: u64::from(*s.get_ref()),
            line: Some(line_of(text, s.span().start)),
        };
        let string = |s: &toml::Spanned<String>| Raw {
            value: s.get_ref().clone(),
            line: Some(line_of(text, s.span().start)),
        };
        let mut raw = RawDefinition {
            name: file.name,
            authentication: file.authentication.as_ref().map(string),
            tag_bits: file.tag_bits.as_ref().map(spanned),
            auth_share_ppm: file.auth_share_ppm.as_ref().map(spanned),
            max_blocks_in_flight: file.max_blocks_in_flight.as_ref().map(spanned),
            checkpoints: file.checkpoints.as_ref().map(string),
            retransmit_after_ms: file.retransmit_after_ms.as_ref().map(|s| Raw {
                value: *s.get_ref(),
                line: Some(line_of(text, s.span().start)),
            }),
            max_retransmissions: file.max_retransmissions.as_ref().map(spanned),
            stages: Vec::new(),
        };
        for (i, stage) in file.stage.iter().enumerate() {
            let mut params = Vec::new();
            for (key, value) in &stage.params {
                let line = Some(line_of(text, value.span().start));
                let v = toml_value(value.get_ref()).ok_or_else(|| DefinitionError::Invalid {
                    line,
                    field: format!("stage[{i}].params.{key}"),
                    reason: "must be a boolean, a non-negative integer, a number or a string"
                        .into(),
                })?;
                params.push((key.clone(), v, line));
            }
            raw.stages.push(RawStage {
                name: stage.name.get_ref().clone(),
                line: Some(line_of(text, stage.name.span().start)),
                params,
            });
        }
        Self::validate(raw)
    }

    /// Parses and validates the same structure written as XML (attribute
    /// values are text, read as a boolean, an integer, a number or text).
    ///
    /// # Errors
    /// A [`DefinitionError`] naming the field (XML errors carry no line).
    pub fn from_xml(text: &str) -> Result<Self, DefinitionError> {
        let file: XmlFile = quick_xml::de::from_str(text).map_err(|e| DefinitionError::Syntax {
            line: None,
            message: e.to_string(),
        })?;
        let raw = RawDefinition {
            name: file.name,
            authentication: file.authentication.map(|value| Raw { value, line: None }),
            tag_bits: xml_number("tag_bits", file.tag_bits)?,
            auth_share_ppm: xml_number("auth_share_ppm", file.auth_share_ppm)?,
            max_blocks_in_flight: xml_number("max_blocks_in_flight", file.max_blocks_in_flight)?,
            checkpoints: file.checkpoints.map(|value| Raw { value, line: None }),
            retransmit_after_ms: xml_number("retransmit_after_ms", file.retransmit_after_ms)?,
            max_retransmissions: xml_number("max_retransmissions", file.max_retransmissions)?,
            stages: file
                .stage
                .into_iter()
                .map(|s| RawStage {
                    name: s.name,
                    line: None,
                    params: s
                        .param
                        .into_iter()
                        .map(|p| {
                            let v = xml_value(&p.value);
                            (p.name, v, None)
                        })
                        .collect(),
                })
                .collect(),
        };
        Self::validate(raw)
    }

    fn validate(raw: RawDefinition) -> Result<Self, DefinitionError> {
        let mut def = PipelineDefinition {
            stages: Vec::new(),
            ..PipelineDefinition::default()
        };
        let invalid = |line, field: &str, reason: String| DefinitionError::Invalid {
            line,
            field: field.to_owned(),
            reason,
        };
        if let Some(name) = raw.name {
            def.name = name;
        }
        if let Some(a) = raw.authentication {
            def.authentication = match a.value.as_str() {
                "transcript" => AuthMode::Transcript,
                "per_message" => AuthMode::PerMessage,
                other => {
                    return Err(invalid(
                        a.line,
                        "authentication",
                        format!("must be `transcript` or `per_message`, got `{other}`"),
                    ));
                }
            };
        }
        if let Some(c) = raw.checkpoints {
            def.checkpoints = match c.value.as_str() {
                "auto" => CheckpointMode::Auto,
                "manual" => CheckpointMode::Manual,
                other => {
                    return Err(invalid(
                        c.line,
                        "checkpoints",
                        format!("must be `auto` or `manual`, got `{other}`"),
                    ));
                }
            };
        }
        if let Some(t) = raw.tag_bits {
            if t.value != 128 && t.value != 64 {
                return Err(invalid(
                    t.line,
                    "tag_bits",
                    format!("must be 64 or 128, got {}", t.value),
                ));
            }
            def.tag_bits = t.value as u32;
        }
        if let Some(s) = raw.auth_share_ppm {
            if s.value > 1_000_000 {
                return Err(invalid(
                    s.line,
                    "auth_share_ppm",
                    "must be at most 1 000 000".into(),
                ));
            }
            def.auth_share_ppm = s.value as u32;
        }
        if let Some(m) = raw.max_blocks_in_flight {
            if !(1..=1024).contains(&m.value) {
                return Err(invalid(
                    m.line,
                    "max_blocks_in_flight",
                    format!("must be between 1 and 1024, got {}", m.value),
                ));
            }
            def.max_blocks_in_flight = m.value as u32;
        }
        if let Some(r) = raw.retransmit_after_ms {
            if !(1..=600_000).contains(&r.value) {
                return Err(invalid(
                    r.line,
                    "retransmit_after_ms",
                    format!("must be between 1 and 600000, got {}", r.value),
                ));
            }
            def.retransmit_after = Duration::from_millis(r.value);
        }
        if let Some(r) = raw.max_retransmissions {
            if !(1..=100_000).contains(&r.value) {
                return Err(invalid(
                    r.line,
                    "max_retransmissions",
                    format!("must be between 1 and 100000, got {}", r.value),
                ));
            }
            def.max_retransmissions = r.value as u32;
        }
        let mut last: Option<(usize, StageKind)> = None;
        for (i, s) in raw.stages.into_iter().enumerate() {
            let kind = match s.name.as_str() {
                "sift" => StageKind::Sift,
                "estimate" => StageKind::Estimate,
                "cascade" => StageKind::Cascade,
                "ldpc" => StageKind::Ldpc,
                "confirm" => StageKind::Confirm,
                "amplify" => StageKind::Amplify,
                _ => {
                    return Err(DefinitionError::UnknownStage {
                        line: s.line,
                        name: s.name,
                    });
                }
            };
            if kind.is_correction()
                && let Some(other) = def.stages.iter().find(|s| s.kind.is_correction())
            {
                return Err(invalid(
                    s.line,
                    &format!("stage[{i}].name"),
                    format!(
                        "only one correction stage: `{}` and `{}` both given",
                        other.kind.name(),
                        kind.name()
                    ),
                ));
            }
            if let Some((_, prev)) = last
                && prev >= kind
            {
                return Err(invalid(
                    s.line,
                    &format!("stage[{i}].name"),
                    format!(
                        "stage `{}` must come after `{}` (order: sift, estimate, cascade or ldpc, confirm, amplify; each once)",
                        prev.name(),
                        kind.name()
                    ),
                ));
            }
            last = Some((i, kind));
            let mut stage = Stage::new(kind);
            for (key, value, line) in s.params {
                stage.configure(&key, &value).map_err(|e| {
                    invalid(
                        line.or(s.line),
                        &format!("stage[{i}].params.{key}"),
                        e.to_string(),
                    )
                })?;
            }
            def.stages.push(stage);
        }
        for required in StageKind::REQUIRED {
            let present = if required.is_correction() {
                def.stages.iter().any(|s| s.kind.is_correction())
            } else {
                def.stages.iter().any(|s| s.kind == required)
            };
            if !present {
                if required.is_correction() {
                    return Err(invalid(
                        None,
                        "stage",
                        "a correction stage (`cascade` or `ldpc`) is required".into(),
                    ));
                }
                return Err(invalid(
                    None,
                    "stage",
                    format!("the `{}` stage is required", required.name()),
                ));
            }
        }
        Ok(def)
    }

    /// A blake3 digest of everything both sides must agree on: the stages in
    /// order with every parameter, the authentication mode, tag length and
    /// pool share. Local settings (blocks in flight, timers, checkpoint
    /// mode, the name) are not part of it.
    #[must_use]
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("qkd-postproc pipeline definition v1");
        h.update(
            format!(
                "{:?}|{}|{}\n",
                self.authentication, self.tag_bits, self.auth_share_ppm
            )
            .as_bytes(),
        );
        for stage in &self.stages {
            h.update(stage.kind.name().as_bytes());
            // The guided variant's own parameters count only where it runs:
            // blind and rate-adaptive definitions keep the digest (and the
            // saved states) they had before those parameters existed.
            let guided = stage.settings.ldpc_variant == super::stages::LdpcVariant::Guided;
            for p in stage.parameters() {
                if !guided && super::stages::GUIDED_PARAMETERS.contains(&p.name.as_str()) {
                    continue;
                }
                h.update(format!("|{}={}", p.name, p.value).as_bytes());
            }
            h.update(b"\n");
        }
        *h.finalize().as_bytes()
    }

    /// The stage names in order.
    #[must_use]
    pub fn stage_names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.kind.name()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_line_and_field() {
        let text = "name = \"x\"\n[[stage]]\nname = \"sift\"\n[[stage]]\nname = \"estimate\"\nparams = { abort_qber = 0.7 }\n";
        let e = PipelineDefinition::from_toml(text).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("line 6: `stage[1].params.abort_qber`"), "{s}");
        let e = PipelineDefinition::from_toml("[[stage]]\nname = \"sifter\"\n").unwrap_err();
        assert_eq!(
            e,
            DefinitionError::UnknownStage {
                line: Some(2),
                name: "sifter".into()
            }
        );
        let both = "[[stage]]\nname = \"sift\"\n[[stage]]\nname = \"estimate\"\n\
                    [[stage]]\nname = \"cascade\"\n[[stage]]\nname = \"ldpc\"\n";
        let e = PipelineDefinition::from_toml(both).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("line 8: `stage[3].name`: only one correction stage"),
            "{e}"
        );
        let none = "[[stage]]\nname = \"sift\"\n[[stage]]\nname = \"estimate\"\n\
                    [[stage]]\nname = \"confirm\"\n[[stage]]\nname = \"amplify\"\n";
        let e = PipelineDefinition::from_toml(none).unwrap_err();
        assert!(e.to_string().contains("correction stage"), "{e}");
        let ldpc = "[[stage]]\nname = \"sift\"\n[[stage]]\nname = \"estimate\"\n\
                    [[stage]]\nname = \"ldpc\"\nparams = { frame_bits = 3000 }\n";
        let e = PipelineDefinition::from_toml(ldpc).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("line 7: `stage[2].params.frame_bits`"),
            "{e}"
        );
        let e = PipelineDefinition::from_toml("bogus = 1\nstage = []\n").unwrap_err();
        assert!(
            matches!(e, DefinitionError::Syntax { line: Some(1), .. }),
            "{e}"
        );
        let e = PipelineDefinition::from_toml(
            "[[stage]]\nname = \"estimate\"\n[[stage]]\nname = \"sift\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("line 4"), "{e}");
    }

    #[test]
    fn digest_covers_shared_parameters_only() {
        let a = PipelineDefinition::default();
        let mut b = a.clone();
        b.max_blocks_in_flight = 9;
        b.name = "other".into();
        assert_eq!(a.digest(), b.digest());
        b.authentication = AuthMode::PerMessage;
        assert_ne!(a.digest(), b.digest());
        let mut c = a.clone();
        c.stages[2]
            .configure("variant", &Value::Text("option8".into()))
            .unwrap();
        assert_ne!(a.digest(), c.digest());
        // The same parameters under the other correction stage differ too,
        // and so does every LDPC parameter.
        let mut l = a.clone();
        l.stages[2] = Stage::new(StageKind::Ldpc);
        assert_ne!(a.digest(), l.digest());
        let mut m = l.clone();
        m.stages[2]
            .configure("variant", &Value::Text("rate_adaptive".into()))
            .unwrap();
        assert_ne!(l.digest(), m.digest());
        let mut m = l.clone();
        m.stages[2]
            .configure("max_iterations", &Value::U64(61))
            .unwrap();
        assert_ne!(l.digest(), m.digest());
    }
}
