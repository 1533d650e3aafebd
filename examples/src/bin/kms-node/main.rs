//! `kms-node`: a key management entity serving ETSI GS QKD 014 over HTTPS
//! with mutual TLS, its key store kept in step with the peer KME's by
//! qkd-sync inside a qkd-handshake secured channel.
//!
//! ```text
//! kms-node run --config node-a.toml     serve until Ctrl-C (or SIGTERM)
//! kms-node certs --out DIR --kme KME_A --kme KME_B --sae SAE_A --sae SAE_B
//! kms-node demo                         two nodes on loopback, keys matched end to end
//! ```
//!
//! Exit status: 0 on success (and for `demo`, only if every key matched),
//! 1 on a failure while running, 2 for a bad argument or configuration.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod certs;
mod client;
mod config;
mod demo;
mod fetched;
mod http;
mod link_keys;
mod node;
mod pipeline_source;
mod reserve;
mod source;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{NodeConfig, SourceKind};
use crate::link_keys::SharedLinkKeys;
use crate::node::Node;
use crate::pipeline_source::PipelineSource;
use crate::source::{BlockSource, SimulatedSource};
use crate::tls::SaeMap;

/// A KMS node: ETSI GS QKD 014 over HTTPS with mutual TLS, key stores kept
/// in step with the peer KME over a qkd-handshake secured channel.
#[derive(Parser, Debug)]
#[command(name = "kms-node", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the node described by a TOML configuration until Ctrl-C.
    Run {
        /// The configuration file (see examples/kms-node/node-a.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Generate a throw-away CA, KME server and SAE client certificates
    /// and a link secret (PEM files) for demos and tests.
    Certs {
        /// Output folder (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// A KME ID to make a server certificate for (repeat).
        #[arg(long = "kme")]
        kmes: Vec<String>,
        /// An SAE ID to make a client certificate for (repeat).
        #[arg(long = "sae")]
        saes: Vec<String>,
        /// The CA's common name.
        #[arg(long, default_value = "kms-node throw-away CA")]
        ca_name: String,
        /// Do not write link.secret.
        #[arg(long)]
        no_secret: bool,
        /// Append this many bootstrap pads of 1 KiB of random bytes to
        /// link.secret (0 to 4096): one-time pads for a link that allows
        /// only the one-time-pad suite, used before the link reserve holds
        /// QKD key.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=4096))]
        bootstrap_pads: u32,
    },
    /// Run two nodes on loopback and match keys end to end over HTTPS.
    Demo {
        /// Keys to exchange (1 to 1 000 000).
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        keys: u32,
        /// Key size in bits (a multiple of 8 from 64 to 8192).
        #[arg(long, default_value_t = 256, value_parser = key_size)]
        size: u32,
        /// Keys per request (1 to 1000).
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1000))]
        batch: u32,
        /// Keep the certificates and configurations in this folder
        /// (default: a temporary folder, removed at the end).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn key_size(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(b) if (64..=8192).contains(&b) && b % 8 == 0 => Ok(b),
        _ => Err("must be a multiple of 8 from 64 to 8192".into()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Run { config } => {
            let config = match NodeConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            match serve(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Certs {
            out,
            kmes,
            saes,
            ca_name,
            no_secret,
            bootstrap_pads,
        } => {
            let req = certs::CertRequest {
                out,
                ca_name,
                kmes,
                saes,
                secret: !no_secret,
                bootstrap_pads,
            };
            match certs::generate(&req) {
                Ok(files) => {
                    for f in files {
                        println!("{}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e @ certs::CertError::BadName(_)) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo {
            keys,
            size,
            batch,
            dir,
        } => {
            let args = demo::DemoArgs {
                keys: keys as usize,
                size,
                batch: batch as usize,
                dir,
            };
            match demo::run(&args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// A node serving in the current runtime.
pub(crate) struct RunningNode {
    /// The node.
    pub(crate) node: Arc<Node>,
    /// Where it serves HTTPS.
    pub(crate) https: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl RunningNode {
    /// Stops serving and closes the link.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
        let node = self.node.clone();
        let _ = tokio::task::spawn_blocking(move || node.shutdown()).await;
    }
}

/// Builds and starts the node of `config` in the current tokio runtime.
pub(crate) async fn start_node(
    config: &NodeConfig,
) -> Result<RunningNode, Box<dyn std::error::Error>> {
    let tls = tls::server_config(config)?;
    let saes = Arc::new(SaeMap::new(config));
    let keys = SharedLinkKeys::open_for(config)?;
    let source: Box<dyn BlockSource> = match config.source.kind {
        SourceKind::Pipeline => Box::new(PipelineSource::new(config, keys.clone())?),
        SourceKind::Simulated => Box::new(SimulatedSource::new(
            config.source.seed,
            config.source.block_bytes,
            config.source.bytes_per_second,
        )),
    };
    let node = Node::new(config, source, keys)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let https = listener.local_addr()?;
    node.start_link(config)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(
        node.clone(),
        listener,
        tls,
        saes,
        config.keys.max_body_bytes,
        async move {
            let _ = stopped.await;
        },
    ));
    Ok(RunningNode {
        node,
        https,
        stop,
        server,
    })
}

/// `kms-node run`: serve until Ctrl-C or SIGTERM.
fn serve(config: &NodeConfig) -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let running = start_node(config).await?;
        println!(
            "kms-node {}: serving ETSI GS QKD 014 on https://{} (link {} {})",
            config.kme_id,
            running.https,
            if config.accepts_link() {
                "accepting on"
            } else {
                "connecting to"
            },
            if config.accepts_link() {
                config.peer.link_listen
            } else {
                config.peer.link_address
            },
        );
        shutdown_signal().await;
        println!("kms-node {}: shutting down", config.kme_id);
        running.stop().await;
        Ok(())
    })
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
