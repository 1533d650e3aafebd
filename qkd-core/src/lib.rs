#![doc = include_str!("../README.md")]
#![deny(unsafe_code)] // allowed in `pext` only (BMI2 bit gather)
#![warn(missing_docs)]

pub mod bits;
pub mod bounds;
#[cfg(feature = "control")]
pub mod control;
pub mod device;
mod error;
pub mod key;
pub mod machine;
pub mod module;
mod pext;
#[cfg(feature = "sim")]
pub mod sim;
pub mod wire;

pub use bits::{BitSlice, BitVec};
pub use bounds::h2;
pub use device::{
    DeviceError, QkdDevice, RawFrame, Role, SimulatedBb84, SimulatedDevice, SimulatorConfig,
};
pub use error::Error;
pub use key::{BlockId, KeyId, SecretKey};
pub use machine::{ConfigError, Machine};
