//! `qkd ldpc export`, `qkd ldpc fer` and the LDPC rows of `qkd ec
//! --method ldpc` (variants rate-adaptive, blind and guided).
//!
//! `qkd ldpc export --rate R --n N --out code.alist` writes the built code
//! nearest to rate `R` (the ladder 0.5 … 0.922) of length `N` as `alist`;
//! `qkd ldpc fer --n N --trials T --out fer.csv --plot fer.svg` measures
//! the frame error rate of every mother code of the ladder (whole frame
//! key, no puncturing or shortening, one decoding of at most 100
//! iterations) against QBER;
//! `qkd ec --method ldpc --code code.alist` runs with a code from a file
//! instead of the ladder (no rate adaptation then: the whole frame is key).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use qkd_core::{BitVec, h2};
use qkd_postproc::ldpc::{
    CodeCache, CodeSpec, Decoder, FramePlan, LdpcCode, MotherRate, RateChoice, SHIPPED_SEED,
    Settings, Variant, choose_guided_plan, choose_plan, read_alist, reconcile_in_memory,
    write_alist,
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
    /// Frame error rate against QBER for every mother code of the ladder.
    Fer(FerArgs),
}

/// Options of `qkd ldpc fer`.
#[derive(clap::Args, Debug)]
struct FerArgs {
    /// Frame length: a multiple of 256, 1024 to 2^20.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1 << 16, value_parser = RangedU64ValueParser::<usize>::new().range(1024..=1 << 20))]
    n: usize,
    /// Frames per point, 1 to 100 000.
    #[arg(long, allow_negative_numbers = true, default_value_t = 100, value_parser = RangedU64ValueParser::<u64>::new().range(1..=100_000))]
    trials: u64,
    /// Syndrome efficiencies f = (1 − R) / h2(Q) of the points, each
    /// giving the QBER of the point for every rung (comma-separated, each
    /// in [1, 10]).
    #[arg(long, value_delimiter = ',', default_value = "1.03,1.05,1.07,1.09,1.11,1.13,1.16,1.2,1.25", value_parser = flag::efficiency)]
    efficiency: Vec<f64>,
    /// Seed of the key generator.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1)]
    seed: u64,
    /// Write the rows as CSV into this file (its folder must exist);
    /// default: standard output.
    #[arg(long, value_parser = flag::output_file)]
    out: Option<std::path::PathBuf>,
    /// Also draw fer against QBER, one curve per rung, into this SVG file.
    #[arg(long, value_parser = flag::output_file)]
    plot: Option<std::path::PathBuf>,
}

/// One point of `qkd ldpc fer`.
struct FerRow {
    rate: f64,
    n: usize,
    qber: f64,
    efficiency: f64,
    trials: u64,
    failures: u64,
    iterations_mean: f64,
}

/// The QBER `q ≤ 0.5` with `h2(q) = h`.
fn h2_inverse(h: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 0.5f64);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if h2(mid) < h {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

fn fer(a: &FerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut rows = Vec::new();
    for rung in MotherRate::ladder() {
        let code = Arc::new(LdpcCode::build(CodeSpec {
            rate: rung,
            n: a.n,
            seed: SHIPPED_SEED,
        })?);
        let plan = FramePlan::new(Arc::clone(&code), 0, 0)?;
        let mut decoder = Decoder::new(Arc::clone(&code));
        for &efficiency in &a.efficiency {
            let qber = h2_inverse((1.0 - code.rate()) / efficiency);
            let mut rng = ChaCha8Rng::seed_from_u64(a.seed ^ qber.to_bits().rotate_left(17));
            let threshold = (qber * 2f64.powi(32)) as u64;
            let (mut failures, mut iterations) = (0u64, 0u64);
            for _ in 0..a.trials {
                let alice = BitVec::random(code.n(), &mut rng);
                let mut bob = alice.clone();
                for i in 0..code.n() {
                    if u64::from(rng.next_u32()) < threshold {
                        bob.flip(i);
                    }
                }
                let settings = Settings {
                    qber,
                    variant: Variant::RateAdaptive,
                    max_iterations: 100,
                };
                let out =
                    reconcile_in_memory(&plan, &mut decoder, &alice, &bob, settings, &mut rng)?;
                failures += u64::from(!out.keys_equal);
                iterations += u64::from(out.iterations);
            }
            rows.push(FerRow {
                rate: code.rate(),
                n: code.n(),
                qber,
                efficiency,
                trials: a.trials,
                failures,
                iterations_mean: iterations as f64 / a.trials as f64,
            });
        }
    }
    let mut text = String::from("rate,n,qber,f,trials,failures,fer,iterations_mean\n");
    for r in &rows {
        text += &format!(
            "{:.4},{},{:.5},{},{},{},{},{:.1}\n",
            r.rate,
            r.n,
            r.qber,
            r.efficiency,
            r.trials,
            r.failures,
            r.failures as f64 / r.trials as f64,
            r.iterations_mean
        );
    }
    match &a.out {
        Some(path) => {
            std::fs::write(path, &text).map_err(|e| format!("--out {}: {e}", path.display()))?;
        }
        None => print!("{text}"),
    }
    if let Some(path) = &a.plot {
        plot_fer(path, &rows).map_err(|e| format!("--plot {}: {e}", path.display()))?;
    }
    Ok(())
}

/// fer against QBER on a log scale, one curve per rung; a point with no
/// failed frame is drawn hollow at half of 1/trials.
fn plot_fer(path: &std::path::Path, rows: &[FerRow]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let floor = rows
        .iter()
        .map(|r| 0.5 / r.trials as f64)
        .fold(1.0f64, f64::min);
    let q_max = rows.iter().map(|r| r.qber).fold(0.0f64, f64::max) * 1.05;
    let n = rows.first().map_or(0, |r| r.n);
    let root = SVGBackend::new(path, (900, 650)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "LDPC mother codes, n = {n}: frame error rate against QBER (hollow: no failure)"
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..q_max, (floor * 0.8..1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("QBER")
        .y_desc("frame error rate")
        .x_label_formatter(&|q| format!("{:.1} %", q * 100.0))
        .y_label_formatter(&|f| format!("{f:.0e}"))
        .draw()?;
    let mut rates: Vec<f64> = rows.iter().map(|r| r.rate).collect();
    rates.dedup();
    for (i, &rate) in rates.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64, bool)> = rows
            .iter()
            .filter(|r| r.rate == rate)
            .map(|r| {
                let fer = r.failures as f64 / r.trials as f64;
                (r.qber, fer.max(0.5 / r.trials as f64), r.failures > 0)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(q, f, _)| (q, f)),
                color.stroke_width(2),
            ))?
            .label(format!("R = {rate:.3}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&(q, f, failed)| {
            let style = if failed {
                color.filled()
            } else {
                color.stroke_width(1)
            };
            Circle::new((q, f), 4, style)
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Options of `qkd ldpc export`.
#[derive(clap::Args, Debug)]
struct ExportArgs {
    /// Mother rate; the nearest rung of the ladder (0.5 to 0.922) is used.
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
        Err("must be a rate in [0.4, 0.95] (the ladder runs from 0.5 to 0.922)".into())
    }
}

pub(crate) fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    match &args.command {
        Command::Fer(a) => fer(a),
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
    /// Syndrome aimed at f = 1.05, then reveals of 1 % of n·h2(Q) per round.
    /// (Aiming at 1.05 rather than 1.0 picks lower-rate rungs with less
    /// puncturing: mean f 0.005–0.025 lower from 4 % to 10 % QBER at
    /// 2^17, a third of the rounds; BENCHMARKS.md.)
    Blind,
    /// Syndrome aimed at f = 1.0 on a plan without punctured positions
    /// ([`choose_guided_plan`]); after a failed decoding Bob asks for the
    /// [`GUIDED_STEP`] share of `n·h2(Q)` key positions his decoder is least
    /// sure of and Alice reveals them (Kiktenko et al. 2017), up to
    /// [`GUIDED_ROUNDS`] rounds; the decoder resumes for
    /// [`GUIDED_RESUME_ITERATIONS`] iterations after each reveal. (The
    /// library's `blind_table`, 2^17-bit frames, 3000 per QBER: f
    /// 1.045–1.076 at QBER 1–10 % against blind's 1.057–1.133.)
    Guided,
}

/// Bits revealed per blind round, as a share of `n·h2(Q)`.
const BLIND_STEP: f64 = 0.01;
/// Decoding rounds of a blind frame at most (the first included).
const BLIND_ROUNDS: u32 = 100;
/// Positions asked for per guided round, as a share of `n·h2(Q)`: each
/// round adds about 0.005 to f, so a frame ends within that of where its
/// errors let the decoder succeed.
const GUIDED_STEP: f64 = 0.005;
/// Decoding rounds of a guided frame at most (the first included): twice
/// blind's, as its steps are half as large (200 rounds reach f ≈ 2 from a
/// start at 1).
const GUIDED_ROUNDS: u32 = 200;
/// Decoder iterations of each guided round after the first (it resumes
/// where the last stopped).
const GUIDED_RESUME_ITERATIONS: u32 = 20;
/// Decoder iterations of a frame's first decoding (and of every blind
/// round).
const MAX_ITERATIONS: u32 = 60;

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
/// decoding round (a message each way: the syndrome first, then per extra
/// round Bob's `Request` (blind) or `Ask` naming positions (guided) and
/// Alice's `Reveal`), a frame error is a frame whose corrected key differs
/// from Alice's (failed decoding included).
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
                LdpcVariant::Blind => 1.05,
                LdpcVariant::Guided => 1.0,
            });
            let choice = RateChoice {
                modulated: 0.1,
                target_efficiency: target,
            };
            match point.variant {
                LdpcVariant::Guided => {
                    choose_guided_plan(cache, point.n, SHIPPED_SEED, qber, choice)
                }
                _ => choose_plan(cache, point.n, SHIPPED_SEED, qber, choice),
            }
            .map_err(|e| format!("--n {} at QBER {qber}: {e}", point.n))?
        }
    };
    let key_len = plan.key_len();
    let step = |share: f64| ((key_len as f64) * h2(qber) * share).ceil().max(1.0) as usize;
    let variant = match point.variant {
        LdpcVariant::RateAdaptive => Variant::RateAdaptive,
        LdpcVariant::Blind => Variant::Blind {
            step: step(BLIND_STEP),
            max_rounds: BLIND_ROUNDS,
        },
        LdpcVariant::Guided => Variant::Guided {
            step: step(GUIDED_STEP),
            max_rounds: GUIDED_ROUNDS,
            resume_iterations: GUIDED_RESUME_ITERATIONS,
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
            max_iterations: MAX_ITERATIONS,
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
            LdpcVariant::Guided => "guided",
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
