//! Pieces the example binaries share: the control surface served over CoAP
//! (hosts of modules register with `qpm` through it), a small CoAP client,
//! and a folder of saved states.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod coap_client;
pub mod coap_service;
pub mod flag;
pub mod state_directory;
