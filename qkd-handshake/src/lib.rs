#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod capability;
pub mod channel;
pub mod handshake;
pub mod message;
pub mod psk;
pub mod record;
pub mod relay;
pub mod schedule;
