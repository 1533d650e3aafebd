//! `qkd auth`: Wegman-Carter tagging throughput against BLAKE3 keyed hashing,
//! and the authentication key one post-processing round consumes compared
//! with the key it distils.

use std::hint::black_box;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use qkd_core::{Role, SecretKey, h2};
use qkd_postproc::amplify::length::{FiniteKeyInput, finite_key_length};
use qkd_postproc::auth::{
    AuthenticatedChannel, ChannelConfig, HashKey, MAX_PAYLOAD, PoolConfig, TagMode,
};

use crate::{Format, clock, flag};

/// Largest `--block-bits` (10^12: beyond any finite-key block in use).
const MAX_BLOCK_BITS: u64 = 1_000_000_000_000;

/// Most `--messages` in a round.
const MAX_MESSAGES: u32 = 1_000_000;

/// Tag length, as a command-line value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TagBits {
    /// 128-bit tags.
    #[value(name = "128")]
    B128,
    /// 64-bit tags.
    #[value(name = "64")]
    B64,
}

impl From<TagBits> for TagMode {
    fn from(bits: TagBits) -> Self {
        match bits {
            TagBits::B128 => TagMode::Bits128,
            TagBits::B64 => TagMode::Bits64,
        }
    }
}

/// Options of `qkd auth`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Sifted bits per block entering error correction (after the
    /// estimation sample), 1 to 10^12.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=MAX_BLOCK_BITS))]
    block_bits: u64,
    /// QBER of the block, in [0, 0.5).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.02, value_parser = flag::qber)]
    qber: f64,
    /// Reconciliation efficiency f assumed for the leakage, in [1, 10].
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.05, value_parser = flag::efficiency)]
    efficiency: f64,
    /// Bits sampled for parameter estimation, as a fraction of the block, in (0, 1).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.1, value_parser = flag::fraction)]
    sample_fraction: f64,
    /// Messages exchanged in one round (both directions together): sifting,
    /// estimation, error correction, confirmation, amplification; 1 to 10^6.
    #[arg(long, allow_negative_numbers = true, default_value_t = 110, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_MESSAGES)))]
    messages: u32,
    /// Payload bytes per message, 0 to 16 MiB.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1024, value_parser = RangedU64ValueParser::<usize>::new().range(0..=MAX_PAYLOAD as u64))]
    payload_bytes: usize,
    /// Tag length.
    #[arg(long, value_enum, default_value_t = TagBits::B128)]
    tag_bits: TagBits,
    /// Authenticate the round with one transcript tag per direction instead
    /// of sealing every message.
    #[arg(long)]
    transcript: bool,
    /// Seconds spent on each throughput measurement, 0.01 to 3600.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.5, value_parser = flag::seconds)]
    seconds: f64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(serde::Serialize)]
struct Throughput {
    message_bytes: usize,
    wegman_carter_gbps: f64,
    blake3_keyed_gbps: f64,
    ratio: f64,
}

#[derive(serde::Serialize)]
struct Report {
    throughput: Vec<Throughput>,
    block_bits: u64,
    qber: f64,
    final_key_bits: u64,
    messages: u32,
    tag_bits: u64,
    transcript: bool,
    auth_bits_per_round: u64,
    auth_bits_per_message: f64,
    /// `None` when the round distils no final key.
    share_of_final_key_percent: Option<f64>,
}

/// Bytes per second of `f` over `len`-byte messages, measured for at least
/// `seconds` (at least [`clock::MIN_TIMED`], so never a rate over no time).
fn rate(len: usize, seconds: f64, mut f: impl FnMut()) -> f64 {
    let budget = Duration::from_secs_f64(seconds).max(clock::MIN_TIMED);
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..16 {
            f();
        }
        n += 16;
        let elapsed = start.elapsed();
        if elapsed >= budget {
            return (n as f64 * len as f64) / elapsed.as_secs_f64();
        }
    }
}

fn throughput(seconds: f64) -> Vec<Throughput> {
    let key = HashKey::new(&[0x42; 16]);
    let pad = [0x17u8; 16];
    let blake_key = [0x42u8; 32];
    [64usize, 4096, 1 << 20]
        .into_iter()
        .map(|len| {
            let msg: Vec<u8> = (0..len).map(|i| (i * 131 + 7) as u8).collect();
            let wc = rate(len, seconds, || {
                black_box(key.tag(black_box(&msg), &pad).ok());
            });
            let b3 = rate(len, seconds, || {
                black_box(blake3::keyed_hash(&blake_key, black_box(&msg)));
            });
            Throughput {
                message_bytes: len,
                wegman_carter_gbps: wc / 1e9,
                blake3_keyed_gbps: b3 / 1e9,
                ratio: wc / b3,
            }
        })
        .collect()
}

/// Final key of a block from `amplify::length::finite_key_length`
/// (Tomamichel et al. 2012): the sample's errors at the given QBER, leakage
/// `f · n · h(Q)`, a 64-bit confirmation tag, ε_sec = 1e-10, ε_cor = 1e-15,
/// ε_PE = ε_sec / 2.
fn final_key_bits(args: &Args) -> Result<u64, Box<dyn std::error::Error>> {
    let n = args.block_bits;
    let k = ((n as f64) * args.sample_fraction).round().max(1.0) as u64;
    let length = finite_key_length(&FiniteKeyInput {
        key_bits: n,
        sample_bits: k,
        sample_errors: (args.qber * k as f64).round() as u64,
        leak_ec_bits: (args.efficiency * n as f64 * h2(args.qber)).ceil() as u64,
        confirm_tag_bits: 64,
        eps_sec: 1e-10,
        eps_cor: 1e-15,
        eps_pe: 0.5e-10,
    })?;
    Ok(length.bits)
}

/// Runs one round through two channels in this process and returns the
/// authentication key it consumed (Alice's block account; Bob's is equal).
/// What the round's final key gives back to the pool does not change it.
fn round_cost(args: &Args) -> Result<u64, Box<dyn std::error::Error>> {
    let mode = TagMode::from(args.tag_bits);
    let config = ChannelConfig {
        mode,
        pool: PoolConfig::default(),
        max_payload: args.payload_bytes.max(64),
    };
    let secret = SecretKey::from_vec(
        (0..1u32 << 20)
            .map(|i| i.wrapping_mul(2_654_435_761) as u8)
            .collect(),
    );
    let mut alice = AuthenticatedChannel::new(Role::Alice, &secret, config.clone())?;
    let mut bob = AuthenticatedChannel::new(Role::Bob, &secret, config)?;
    // The pre-shared hash keys belong to set-up, not to the round.
    alice.close_block(0);
    bob.close_block(0);
    let payload = vec![0x5au8; args.payload_bytes];
    let (mut a_own, mut a_peer) = (alice.start_transcript(), alice.start_peer_transcript());
    let (mut b_own, mut b_peer) = (bob.start_transcript(), bob.start_peer_transcript());
    for i in 0..args.messages {
        let (sender, from, to) = if i % 2 == 0 {
            (Role::Bob, &mut bob, &mut alice)
        } else {
            (Role::Alice, &mut alice, &mut bob)
        };
        if args.transcript {
            for t in [&mut a_own, &mut a_peer, &mut b_own, &mut b_peer] {
                t.absorb(sender, &payload);
            }
        } else {
            let sealed = from.seal(&payload)?;
            to.open(&sealed)?;
        }
    }
    if args.transcript {
        let tag_a = alice.seal_transcript(a_own)?;
        let tag_b = bob.seal_transcript(b_own)?;
        bob.open_transcript(&tag_a, b_peer)?;
        alice.open_transcript(&tag_b, a_peer)?;
    }
    let (account, account_b) = (alice.close_block(1), bob.close_block(1));
    if account.consumed_bits() != account_b.consumed_bits() {
        return Err(format!(
            "the two ends' accounts differ: Alice {} bits, Bob {} bits",
            account.consumed_bits(),
            account_b.consumed_bits()
        )
        .into());
    }
    Ok(account.consumed_bits())
}

pub(crate) fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let throughput = throughput(args.seconds);
    let final_bits = final_key_bits(args)?;
    let auth_bits = round_cost(args)?;
    let tag_bits = TagMode::from(args.tag_bits).tag_bits();
    // One end's account counts the pads it sent and those it received:
    // every pad of the round once, i.e. the shared key the round used.
    let report = Report {
        throughput,
        block_bits: args.block_bits,
        qber: args.qber,
        final_key_bits: final_bits,
        messages: args.messages,
        tag_bits,
        transcript: args.transcript,
        auth_bits_per_round: auth_bits,
        auth_bits_per_message: auth_bits as f64 / f64::from(args.messages),
        share_of_final_key_percent: (final_bits > 0)
            .then(|| 100.0 * auth_bits as f64 / final_bits as f64),
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => {
            println!("tagging throughput (one core), Wegman-Carter POLYVAL vs BLAKE3 keyed:");
            for t in &report.throughput {
                println!(
                    "  {:>8} B: {:6.2} GB/s vs {:6.2} GB/s  (ratio {:.2})",
                    t.message_bytes, t.wegman_carter_gbps, t.blake3_keyed_gbps, t.ratio
                );
            }
            println!(
                "round: {} bits at QBER {:.3} -> {} final key bits",
                report.block_bits, report.qber, report.final_key_bits
            );
            println!(
                "authentication: {} messages, {}-bit tags{}: {} bits ({:.1} per message), {}",
                report.messages,
                report.tag_bits,
                if report.transcript {
                    ", one transcript tag per direction"
                } else {
                    ", every message sealed"
                },
                report.auth_bits_per_round,
                report.auth_bits_per_message,
                report.share_of_final_key_percent.map_or_else(
                    || "and no final key to pay for it: the round only spends stored key"
                        .to_owned(),
                    |p| format!("{p:.3} % of the final key")
                )
            );
        }
    }
    Ok(())
}
