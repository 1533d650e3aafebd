#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod amplify;
pub mod auth;
pub mod cascade;
pub mod confirm;
pub mod estimate;
pub mod gf128;
pub mod ldpc;
pub mod pipeline;
pub mod sift;
