#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod chunks;
mod config;
mod delivered;
mod error;
mod id_hash;
mod lending;
pub mod notice;
mod peer;
mod reservations;
mod stats;
mod store;

pub use config::{DEFAULT_MAX_KEY_BYTES, MAX_CHUNK_BYTES, MAX_KEY_BYTES, StoreConfig, StoreRole};
pub use error::{BindingError, LookupError, NoticeError, StoreError, TakeError};
pub use notice::{Binding, GrantedChunk, KeyPieces, KeyRange, Notice};
pub use reservations::ReservationId;
pub use stats::{PairingStats, StoreStats};
pub use store::{InsertOutcome, KeyStore};
