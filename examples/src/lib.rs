//! Pieces the example binaries share: the control surface served over CoAP
//! (hosts of modules register with `qpm` through it), a small CoAP client,
//! a folder of saved states, and the pipeline's TCP connection to its peer
//! with the inbox of the event loop that drives it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod coap_client;
pub mod coap_service;
pub mod flag;
pub mod peer_socket;
pub mod state_directory;
