//! `qkd`: the command-line tool of the qkd workspace.
//!
//! Each subcommand lives in its own module; `qkd --help` lists them.
//! Numeric flags and output paths are checked where they are parsed
//! ([`flag`]): a bad value ends in an error naming the flag and exit
//! status 2; a failure while running ends in `error: …` and exit status 1.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod amplify;
mod auth;
mod clock;
mod ec;
mod flag;
mod ldpc;
mod simulate;

/// Tools for the classical side of a QKD link.
///
/// A bad flag value ends in an error naming the flag and exit status 2; a
/// failure while running ends in `error: …` and exit status 1.
#[derive(Parser, Debug)]
#[command(name = "qkd", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the simulated BB84 device and report raw, sifted and error counts.
    Simulate(simulate::Args),
    /// Measure Wegman-Carter tagging throughput and the authentication key a round consumes.
    Auth(auth::Args),
    /// Toeplitz-hash a key file with a seed file (privacy amplification).
    Amplify(amplify::Args),
    /// Run error correction (Cascade or LDPC) on simulated frames; report efficiency, channel uses, FER.
    Ec(ec::Args),
    /// LDPC codes: export a built code as alist.
    Ldpc(ldpc::Args),
}

/// How a subcommand prints its result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object, for scripts.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Simulate(args) => simulate::run(&args),
        Command::Auth(args) => auth::run(&args),
        Command::Amplify(args) => amplify::run(&args),
        Command::Ec(args) => ec::run(&args),
        Command::Ldpc(args) => ldpc::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
