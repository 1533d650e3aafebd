#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
pub mod notice;
pub mod store;

pub use error::{BindingError, LookupError, NoticeError, StoreError, TakeError};
pub use notice::{Binding, GrantedChunk, KeyRange, Notice};
pub use store::{
    InsertOutcome, KeyStore, PairingStats, ReservationId, Role, StoreConfig, StoreStats,
};
