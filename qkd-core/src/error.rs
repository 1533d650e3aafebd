//! Error kinds shared by the qkd crates.

/// Errors of the qkd-core types: bad lengths and parameters given by the caller.
///
/// Messages carry sizes and parameter names, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A buffer or count did not have the length the operation needs.
    #[error("invalid length: expected {expected}, got {actual}")]
    InvalidLength {
        /// The length that was needed.
        expected: usize,
        /// The length that was given.
        actual: usize,
    },
    /// A parameter was outside its valid domain.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A textual identifier could not be parsed.
    #[error("malformed identifier")]
    MalformedId,
}

impl Error {
    /// Shorthand for [`Error::InvalidParameter`].
    pub fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidParameter {
            name,
            reason: reason.into(),
        }
    }
}
