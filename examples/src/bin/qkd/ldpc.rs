//! `qkd ldpc export` and the LDPC rows of `qkd ec --method ldpc`.
//!
//! `qkd ldpc export --rate R --n N --out code.alist` writes the built code
//! nearest to rate `R` (the ladder 0.5 … 0.898) of length `N` as `alist`;
//! `qkd ec --method ldpc --code code.alist` runs with a code from a file
//! instead of the ladder (no rate adaptation then: the whole frame is key).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use qkd_core::{BitVec, h2};
use qkd_postproc::ldpc::{
    CodeCache, CodeSpec, Decoder, FramePlan, LdpcCode, MotherRate, RateChoice, SHIPPED_SEED,
    Settings, Variant, choose_plan, read_alist, reconcile_in_memory, write_alist,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::ec::Row;
use crate::{clock, flag};

/// Options of `qkd ldpc`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Write a built code as an alist file.
    Export(ExportArgs),
}

/// Options of `qkd ldpc export`.
#[derive(clap::Args, Debug)]
struct ExportArgs {
    /// Mother rate; the nearest rung of the ladder (0.5 to 0.898) is used.
    #[arg(long, allow_negative_numbers = true, value_parser = rate)]
    rate: f64,
    /// Frame length: a multiple of 256, 1024 to 2^20.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1 << 16, value_parser = RangedU64ValueParser::<usize>::new().range(1024..=1 << 20))]
    n: usize,
    /// Seed of the construction (default: the shipped codes').
    #[arg(long, allow_negative_numbers = true, default_value_t = SHIPPED_SEED)]
    seed: u64,
    /// The alist file to write (its folder must exist).
    #[arg(long, value_parser = flag::output_file)]
    out: std::path::PathBuf,
}

fn rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| String::from("must be a number"))?;
    if r.is_finite() && (0.4..=0.95).contains(&r) {
        Ok(r)
    } else {
        Err("must be a rate in [0.4, 0.95] (the ladder runs from 0.5 to 0.898)".into())
    }
}

pub(crate) fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    match &args.command {
        Command::Export(a) => {
            let rung = MotherRate::nearest(a.rate).ok_or("no rung for this rate")?;
            let code = LdpcCode::build(CodeSpec {
                rate: rung,
                n: a.n,
                seed: a.seed,
            })?;
            std::fs::write(&a.out, write_alist(&code))
                .map_err(|e| format!("--out {}: {e}", a.out.display()))?;
            println!(
                "wrote {}: n = {}, m = {}, rate {:.4}, {} edges",
                a.out.display(),
                code.n(),
                code.m(),
                code.rate(),
                code.edges()
            );
            Ok(())
        }
    }
}

/// The LDPC variants of `qkd ec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LdpcVariant {
    /// One syndrome at a rate aimed at `--ldpc-efficiency` (default 1.25).
    RateAdaptive,
    /// Syndrome aimed at f = 1.0, then reveals of 1 % of n·h2(Q) per round.
    Blind,
}

/// What `qkd ec` passes for an LDPC row.
pub(crate) struct Point<'a> {
    pub(crate) variant: LdpcVariant,
    pub(crate) qber: f64,
    pub(crate) n: usize,
    pub(crate) trials: u64,
    pub(crate) seed: u64,
    pub(crate) efficiency: Option<f64>,
    pub(crate) code: Option<&'a std::path::Path>,
}

/// One row of `qkd ec --method ldpc`: `n` is the key length per frame
/// (frame length minus punctured and shortened bits), a channel use is a
/// decoding round (a message each way), a frame error is a frame whose
/// corrected key differs from Alice's (failed decoding included).
pub(crate) fn run_point(
    point: &Point<'_>,
    cache: &mut CodeCache,
) -> Result<Row, Box<dyn std::error::Error>> {
    let qber = point.qber;
    let plan = match point.code {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--code {}: {e}", path.display()))?;
            let code = read_alist(&text, point.seed)
                .map_err(|e| format!("--code {}: {e}", path.display()))?;
            FramePlan::new(Arc::new(code), 0, 0)?
        }
        None => {
            let target = point.efficiency.unwrap_or(match point.variant {
                LdpcVariant::RateAdaptive => 1.25,
                LdpcVariant::Blind => 1.0,
            });
            let choice = RateChoice {
                modulated: 0.1,
                target_efficiency: target,
            };
            choose_plan(cache, point.n, SHIPPED_SEED, qber, choice)
                .map_err(|e| format!("--n {} at QBER {qber}: {e}", point.n))?
        }
    };
    let key_len = plan.key_len();
    let variant = match point.variant {
        LdpcVariant::RateAdaptive => Variant::RateAdaptive,
        LdpcVariant::Blind => Variant::Blind {
            step: ((key_len as f64) * h2(qber) * 0.01).ceil().max(1.0) as usize,
            max_rounds: 100,
        },
    };
    let mut decoder = Decoder::new(Arc::clone(plan.code()));
    let mut rng = ChaCha8Rng::seed_from_u64(point.seed ^ qber.to_bits().rotate_left(17));
    let threshold = (qber * 2f64.powi(32)) as u64;
    let (mut sum, mut sum_sq, mut counted) = (0.0, 0.0, 0u64);
    let (mut uses, mut failures) = (0u64, 0u64);
    let mut timed = Duration::ZERO;
    for _ in 0..point.trials {
        let alice = BitVec::random(key_len, &mut rng);
        let mut bob = alice.clone();
        for i in 0..key_len {
            if u64::from(rng.next_u32()) < threshold {
                bob.flip(i);
            }
        }
        let errors = alice.hamming_distance(&bob);
        let settings = Settings {
            qber,
            variant,
            max_iterations: 60,
        };
        let start = Instant::now();
        let out = reconcile_in_memory(&plan, &mut decoder, &alice, &bob, settings, &mut rng)?;
        timed += start.elapsed();
        uses += u64::from(out.rounds);
        if !out.keys_equal {
            failures += 1;
        } else if 0 < errors && errors < key_len {
            let f = out.leaked_bits as f64 / (key_len as f64 * h2(errors as f64 / key_len as f64));
            sum += f;
            sum_sq += f * f;
            counted += 1;
        }
    }
    let mean = (counted > 0).then(|| sum / counted as f64);
    let stddev = (counted > 1).then(|| {
        ((sum_sq - sum * sum / counted as f64) / (counted - 1) as f64)
            .max(0.0)
            .sqrt()
    });
    Ok(Row {
        method: "ldpc",
        variant: match point.variant {
            LdpcVariant::RateAdaptive => "rate-adaptive",
            LdpcVariant::Blind => "blind",
        },
        qber,
        n: key_len,
        trials: point.trials,
        f_mean: mean,
        f_stddev: stddev,
        channel_uses_mean: uses as f64 / point.trials as f64,
        fer: failures as f64 / point.trials as f64,
        throughput_mbps: clock::per_second((key_len as u64 * point.trials) as f64 / 1e6, timed),
    })
}
