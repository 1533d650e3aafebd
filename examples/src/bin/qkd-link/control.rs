//! The pipeline's control surface over CoAP (`--coap`, `--qpm`, `--name`,
//! `--state-dir`), served by `qkd_examples::coap_service` on a thread of
//! its own: statistics, run-time parameters, save and load of the
//! pipeline's state, registration with the QKD Protocol Manager. A
//! shutdown asked by the QPM ends the run like Ctrl-C (the state is saved
//! with `--save`).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use qkd_core::Role;
use qkd_core::control::MemoryStateStore;
use qkd_examples::coap_service::{self, EndpointConfig, ServiceHandle};
use qkd_examples::state_directory::StateDirectory;
use qkd_postproc::pipeline::Pipeline;

use crate::Args;
use crate::net::role_name;
use crate::side::Input;
use qkd_examples::peer_socket::Inbox;

/// States kept in memory when no `--state-dir` is given.
const MEMORY_STATES: usize = 4;

/// Starts the CoAP service when `--coap` or `--qpm` asks for it; the
/// service stops when the handle is dropped.
pub(crate) fn serve(
    args: &Args,
    role: Role,
    pipeline: &Arc<Mutex<Pipeline>>,
    input: &Inbox<Input>,
) -> Result<Option<Arc<ServiceHandle>>, String> {
    if args.coap.is_none() && args.qpm.is_none() {
        return Ok(None);
    }
    let bind = args
        .coap
        .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let socket = UdpSocket::bind(bind)
        .map_err(|e| format!("cannot bind the CoAP service to {bind}: {e}"))?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("qkd-link/{}", role_name(role)));
    let config = EndpointConfig::new(name, args.qpm);
    let handle = match &args.state_dir {
        Some(dir) => {
            let states = StateDirectory::open(dir)
                .map_err(|e| format!("cannot open the state folder {}: {e}", dir.display()))?;
            coap_service::spawn(socket, config, Arc::clone(pipeline), states)
        }
        None => coap_service::spawn(
            socket,
            config,
            Arc::clone(pipeline),
            MemoryStateStore::new(MEMORY_STATES),
        ),
    }
    .map_err(|e| format!("cannot start the CoAP service: {e}"))?;
    let handle = Arc::new(handle);
    // The QPM's shutdown ends the run like Ctrl-C.
    let watched = Arc::downgrade(&handle);
    let tx = input.clone();
    thread::spawn(move || {
        while let Some(h) = watched.upgrade() {
            if h.shutdown_requested() {
                let _ = tx.send(Input::Interrupt);
                return;
            }
            drop(h);
            thread::sleep(Duration::from_millis(50));
        }
    });
    Ok(Some(handle))
}
