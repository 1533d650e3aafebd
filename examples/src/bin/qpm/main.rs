//! `qpm`: the QKD Protocol Manager of the AIT seed. It listens for CoAP on
//! one well-known address, starts the pipeline hosts a process layout file
//! names (one child process per side of each link), accepts their
//! registrations, supervises them (a host that exits or stops refreshing
//! its registration gets its link restarted from the last saved states,
//! a bounded number of times), and serves administrators one tree:
//! `/links`, `/links/{link}` with `start`, `stop`, `hibernate`, `resume`
//! and `save` (a checkpoint), and every host's own resources under
//! `/links/{link}/{alice|bob}/...`. See the examples README.
//!
//! ```text
//! qpm --layout examples/qpm/layout.toml [--listen 127.0.0.1:5683]
//! ```

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod layout;
mod manager;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use qkd_examples::coap_service::{CoapServer, MAX_DATAGRAM};

use crate::layout::Layout;
use crate::manager::Manager;

/// The QKD Protocol Manager: starts, registers, supervises and hibernates
/// pipeline hosts over CoAP.
#[derive(Parser, Debug)]
#[command(name = "qpm", version)]
struct Args {
    /// The process layout file (TOML).
    #[arg(long)]
    layout: PathBuf,
    /// The well-known address to serve on (overrides the layout's
    /// `qpm.listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Stop after this many seconds (stopping every host), for scripts.
    #[arg(long, value_parser = parse_seconds)]
    run_for: Option<f64>,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !(v.is_finite() && v > 0.0 && v <= 1e7) {
        return Err("must be a number of seconds above 0 and at most 1e7".into());
    }
    Ok(v)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let layout = match Layout::load(&args.layout) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let listen = args.listen.unwrap_or(layout.qpm.listen);
    match run(layout, listen, args.run_for.map(Duration::from_secs_f64)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(layout: Layout, listen: SocketAddr, run_for: Option<Duration>) -> std::io::Result<()> {
    let socket = UdpSocket::bind(listen)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let start = Instant::now();
    let mut manager = Manager::new(layout, socket.try_clone()?, start)?;
    manager
        .log
        .line(&format!("listening on coap://{}", socket.local_addr()?));
    let mut server = CoapServer::new(std::process::id() as u16);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = Vec::new();
    loop {
        let now = Instant::now();
        if run_for.is_some_and(|d| manager.uptime(now) >= d) {
            manager.log.line("run time over; stopping every link");
            manager.stop_all();
            return Ok(());
        }
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let _ = server.handle(Instant::now(), from, &buf[..n], &mut out, |incoming| {
                    manager.route(Instant::now(), incoming)
                });
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => return Err(e),
        }
        for (to, d) in out.drain(..) {
            let _ = socket.send_to(&d, to);
        }
        manager.tick(Instant::now());
    }
}
