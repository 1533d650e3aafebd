//! The module contract: what every stage of a pipeline (and every other
//! long-running part of a node) shows to an operator.
//!
//! A module is one step of a QKD pipeline in the sense of the AIT framework:
//! sifting, estimation, error correction, confirmation, amplification,
//! authentication. Each one
//!
//! - reports **statistics** ([`Module::statistics`]): named counters and
//!   rates, read-only, e.g. `bits_in`, `leaked_bits`, `qber`;
//! - exposes **parameters** ([`Module::parameters`],
//!   [`Module::set_parameter`]): named settings readable at any time and,
//!   where [`ParameterInfo::writable`] says so, writable at run time with
//!   validation. A refused value changes nothing.
//!
//! Saving and restoring state belongs to the host of the modules (a pipeline
//! saves all its stages and its authentication pool together, because they
//! must be restored together); see [`ModuleHost`].
//!
//! The contract is transport-free. A control surface (a CoAP or HTTP
//! handler, a command line) maps requests onto these calls; values travel as
//! [`Value`], which serialises to plain JSON (`true`, `42`, `0.02`, `"text"`).
//!
//! ```
//! use qkd_core::module::{Module, ParameterError, ParameterInfo, Statistic, Value};
//!
//! /// A toy stage that drops blocks whose QBER is above a threshold.
//! struct Gate {
//!     max_qber: f64,
//!     dropped: u64,
//! }
//!
//! impl Module for Gate {
//!     fn name(&self) -> &str {
//!         "gate"
//!     }
//!     fn statistics(&self) -> Vec<Statistic> {
//!         vec![Statistic::new("dropped_blocks", Value::U64(self.dropped), "blocks")]
//!     }
//!     fn parameters(&self) -> Vec<ParameterInfo> {
//!         vec![ParameterInfo::writable(
//!             "max_qber",
//!             Value::F64(self.max_qber),
//!             "abort threshold on the estimated QBER",
//!         )]
//!     }
//!     fn set_parameter(&mut self, name: &str, value: &Value) -> Result<(), ParameterError> {
//!         match name {
//!             "max_qber" => {
//!                 let q = value.as_f64().ok_or_else(|| ParameterError::type_mismatch(name, "a number"))?;
//!                 qkd_core::machine::check_range(name, q, 0.0..0.5)?;
//!                 self.max_qber = q;
//!                 Ok(())
//!             }
//!             _ => Err(ParameterError::Unknown { name: name.to_owned() }),
//!         }
//!     }
//! }
//!
//! let mut gate = Gate { max_qber: 0.11, dropped: 0 };
//! assert!(gate.set_parameter("max_qber", &Value::F64(0.7)).is_err());
//! assert_eq!(gate.parameter("max_qber").unwrap(), Value::F64(0.11)); // unchanged
//! gate.set_parameter("max_qber", &Value::F64(0.05)).unwrap();
//! assert_eq!(gate.parameter("max_qber").unwrap(), Value::F64(0.05));
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::machine::ConfigError;

/// A statistic's or parameter's value.
///
/// Serialises untagged, so a JSON control surface sees `true`, `42`, `0.02`
/// or `"original"`. Deserialising picks the first variant that fits:
/// an integer that fits `u64` is [`Value::U64`], any other number
/// [`Value::F64`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum Value {
    /// A switch.
    Bool(bool),
    /// A count (bits, blocks, messages, nanoseconds).
    U64(u64),
    /// A ratio, rate or probability.
    F64(f64),
    /// A name from a fixed set (e.g. a Cascade variant) or free text.
    Text(String),
}

impl Value {
    /// The value as a number: a [`Value::U64`] converts (exactly below 2^53),
    /// a [`Value::F64`] is returned as is.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::U64(v) => Some(*v as f64),
            Value::F64(v) => Some(*v),
            _ => None,
        }
    }

    /// The value as a count: only a [`Value::U64`].
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::U64(v) => Some(*v),
            _ => None,
        }
    }

    /// The value as a switch.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(v) => Some(*v),
            _ => None,
        }
    }

    /// The value as text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Text(v) => write!(f, "{v}"),
        }
    }
}

/// One named, read-only figure a module reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Statistic {
    /// The name, lower snake case, unique within the module (`leaked_bits`).
    pub name: String,
    /// The current value.
    pub value: Value,
    /// The unit in words (`bits`, `blocks`, `bit/s`, `ratio`, `ns`), or empty.
    pub unit: String,
}

impl Statistic {
    /// A statistic `name` = `value` in `unit`.
    pub fn new(name: impl Into<String>, value: Value, unit: impl Into<String>) -> Self {
        Statistic {
            name: name.into(),
            value,
            unit: unit.into(),
        }
    }
}

/// One named parameter of a module, as read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParameterInfo {
    /// The name, lower snake case, unique within the module (`max_qber`).
    pub name: String,
    /// The value in force.
    pub value: Value,
    /// Whether [`Module::set_parameter`] may change it at run time.
    pub writable: bool,
    /// One line for an operator: what it does and, where it helps, its range.
    pub description: String,
}

impl ParameterInfo {
    /// A parameter that can be changed at run time.
    pub fn writable(name: impl Into<String>, value: Value, description: impl Into<String>) -> Self {
        ParameterInfo {
            name: name.into(),
            value,
            writable: true,
            description: description.into(),
        }
    }

    /// A parameter fixed for the module's lifetime (e.g. the block length of a
    /// pre-built code), shown for information.
    pub fn read_only(
        name: impl Into<String>,
        value: Value,
        description: impl Into<String>,
    ) -> Self {
        ParameterInfo {
            name: name.into(),
            value,
            writable: false,
            description: description.into(),
        }
    }
}

/// Why a parameter was not read or not changed. A refused change leaves the
/// module exactly as it was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParameterError {
    /// The module has no parameter of that name.
    #[error("no parameter `{name}`")]
    Unknown {
        /// The name asked for.
        name: String,
    },
    /// The parameter exists but cannot be changed at run time.
    #[error("parameter `{name}` is read-only")]
    ReadOnly {
        /// The parameter.
        name: String,
    },
    /// The value has the wrong type or fails validation.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

impl ParameterError {
    /// A value of the wrong type for `name`; `expected` says what fits
    /// (`"a number"`, `"one of original, option7, option8"`).
    pub fn type_mismatch(name: &str, expected: &str) -> Self {
        ParameterError::Invalid(ConfigError::new(name, format!("must be {expected}")))
    }
}

/// One module's statistics and parameters. See the [module docs](self).
pub trait Module {
    /// The module's name, unique within its host (`cascade`, `amplify`).
    fn name(&self) -> &str;

    /// The module's statistics now.
    fn statistics(&self) -> Vec<Statistic>;

    /// Every parameter with its value in force.
    fn parameters(&self) -> Vec<ParameterInfo>;

    /// The value of one parameter.
    ///
    /// # Errors
    /// [`ParameterError::Unknown`] when there is no such parameter.
    fn parameter(&self, name: &str) -> Result<Value, ParameterError> {
        self.parameters()
            .into_iter()
            .find(|p| p.name == name)
            .map(|p| p.value)
            .ok_or_else(|| ParameterError::Unknown {
                name: name.to_owned(),
            })
    }

    /// Changes one parameter. The new value takes effect where the module's
    /// docs say (for pipeline stages: from the next block the stage starts).
    ///
    /// # Errors
    /// Unknown name, a read-only parameter, or a value that fails validation;
    /// nothing changes then.
    fn set_parameter(&mut self, name: &str, value: &Value) -> Result<(), ParameterError>;
}

/// Something that holds named modules and can save and restore their state as
/// one unit (a pipeline; a KMS node).
///
/// The saved form is opaque bytes in a versioned format of the host's
/// choosing. It may contain secrets (authentication pool positions are not
/// secret, but pads and keys are): a host documents what it contains, and a
/// caller stores it as carefully as the pre-shared secret.
pub trait ModuleHost {
    /// Why saving or restoring failed.
    type StateError: std::error::Error;

    /// The names of the modules, in pipeline order.
    fn module_names(&self) -> Vec<String>;

    /// The module named `name`.
    fn module(&self, name: &str) -> Option<&dyn Module>;

    /// The module named `name`, for changing parameters.
    fn module_mut(&mut self, name: &str) -> Option<&mut dyn Module>;

    /// The host's whole state, to hibernate it.
    ///
    /// # Errors
    /// When the state cannot be saved now (the host documents when).
    fn save_state(&mut self) -> Result<Vec<u8>, Self::StateError>;

    /// Replaces the host's state with one saved by [`save_state`](Self::save_state).
    ///
    /// # Errors
    /// A corrupt state, one of another version, or one saved by the other side
    /// of the link; the host is unchanged then.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), Self::StateError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_serialise_as_plain_json_scalars() {
        // serde's untagged representation through a tiny hand check of the
        // Display form; the JSON form is checked by the control surface tests.
        assert_eq!(Value::U64(42).to_string(), "42");
        assert_eq!(Value::Text("option7".into()).to_string(), "option7");
        assert_eq!(Value::U64(3).as_f64(), Some(3.0));
        assert_eq!(Value::F64(0.5).as_u64(), None);
        assert_eq!(Value::Bool(true).as_bool(), Some(true));
        assert_eq!(Value::Text("x".into()).as_str(), Some("x"));
    }

    #[test]
    fn type_mismatch_names_the_parameter() {
        let e = ParameterError::type_mismatch("max_qber", "a number");
        assert_eq!(
            e.to_string(),
            "invalid configuration `max_qber`: must be a number"
        );
    }
}
