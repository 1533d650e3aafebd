#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod message;
pub mod node;

pub use node::{
    Event, InputError, Lookup, MAX_WINDOW, MIN_MESSAGE_LEN, PairingStatus, SyncConfig, SyncError,
    SyncNode,
};
