#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod kme;
pub mod model;
pub mod request;
pub mod response;
pub mod source;
#[cfg(feature = "sync")]
pub mod sync;

pub use kme::{Kme, KmeConfig};
pub use model::{ErrorBody, Key, KeyContainer, KeyIdEntry, KeyIds, KeyRequest, Status};
pub use request::{Request, RequestId};
pub use response::{Body, CONTENT_TYPE, Response, messages};
pub use source::{FixedSource, KeySource, Probe, SourceError};
