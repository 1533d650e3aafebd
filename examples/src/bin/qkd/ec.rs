//! `qkd ec`: run frames through error correction and report efficiency.
//!
//! Each frame is a random key for Alice and a copy for Bob with every bit
//! flipped with probability `qber` (a binary symmetric channel); both
//! machines run in this process over an in-memory channel. One row per
//! (variant, qber): mean and standard deviation of `f` (leaked parity bits
//! over `n · h2(q)`, with `q` the true error rate of each frame), channel
//! uses (rounds of questions), frame error rate (frames whose corrected key
//! still differs from Alice's), and corrected-key throughput in Mbit per
//! second of wall-clock time (protocol only: key generation and the one-off
//! shuffle plan are outside the timed part; see [`crate::clock`]).
//!
//! Where no frame of a row had `0 < errors < n`, `f` is undefined and its fields
//! are left empty (`null` in JSON), as is `f_stddev` with fewer than two
//! such frames and the throughput of a row timed for less than
//! [`clock::MIN_TIMED`]; a note on standard error says which flag to raise.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use qkd_core::device::binary_symmetric_channel;
use qkd_core::{BitVec, BlockId};
use qkd_postproc::cascade::{
    CascadeAlice, CascadeBob, CascadeConfig, CascadeParams, ShufflePlan, Variant, run_in_memory,
};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::{clock, flag};

/// Largest `--n` and `--n-option8` (2^20, above the 10^6-bit frames in
/// use). The shuffles of 20 passes, computed up front and kept, take about
/// 300 bytes per key bit: the run peaks at about 320 MB at this bound.
pub(crate) const MAX_N: u64 = 1 << 20;

/// Most `--trials` per row.
pub(crate) const MAX_TRIALS: u64 = 1_000_000;

/// Error-correction methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Method {
    /// Interactive Cascade (`qkd_postproc::cascade`).
    Cascade,
    /// LDPC syndrome coding (`qkd_postproc::ldpc`), with `--variant
    /// rate-adaptive`, `--variant blind` or `--variant guided`.
    Ldpc,
}

/// Cascade variants (Martinez-Mateo et al. 2015).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum VariantArg {
    /// Brassard–Salvail: k_i = 2^(i-1) 0.73/Q rounded up, 4 passes, two search waves.
    Original,
    /// k1 = 0.92/Q, k2 = 3 k1, then BICONF until 10 clean.
    Biconf,
    /// Yan et al.: k1 = 0.80/Q, k2 = 5 k1, then n/2; 10 passes.
    Yanetal,
    /// k1 = 1/Q, k2 = 2 k1, then n/2; 16 passes.
    Option3,
    /// Option 3 with parity reuse.
    Option4,
    /// Powers of two, k2 = 4 k1, then n/2; 14 passes; reuse.
    Option7,
    /// Powers of two from log2(1/Q) - 0.5, k3 = 4096, then n/2; 14 passes; reuse.
    Option8,
    /// LDPC: one syndrome at a rate aimed at --ldpc-efficiency (default 1.25).
    RateAdaptive,
    /// LDPC: syndrome aimed at f = 1.05, then reveals of 1 % of n h2(Q) per
    /// round, up to 100 rounds.
    Blind,
    /// LDPC: after a failure Bob asks for the 0.5 % of n h2(Q) bits his
    /// decoder is least sure of (Kiktenko et al. 2017), up to 200 rounds;
    /// unpunctured plans, syndrome aimed at f = 1.
    Guided,
}

impl VariantArg {
    fn ldpc(self) -> Option<crate::ldpc::LdpcVariant> {
        match self {
            VariantArg::RateAdaptive => Some(crate::ldpc::LdpcVariant::RateAdaptive),
            VariantArg::Blind => Some(crate::ldpc::LdpcVariant::Blind),
            VariantArg::Guided => Some(crate::ldpc::LdpcVariant::Guided),
            _ => None,
        }
    }
}

impl From<VariantArg> for Variant {
    /// Only for the Cascade variants (`run` checks before converting).
    fn from(v: VariantArg) -> Self {
        match v {
            VariantArg::RateAdaptive | VariantArg::Blind | VariantArg::Guided => Variant::Option8,
            VariantArg::Original => Variant::Original,
            VariantArg::Biconf => Variant::Biconf,
            VariantArg::Yanetal => Variant::YanEtAl,
            VariantArg::Option3 => Variant::Option3,
            VariantArg::Option4 => Variant::Option4,
            VariantArg::Option7 => Variant::Option7,
            VariantArg::Option8 => Variant::Option8,
        }
    }
}

/// Output formats of `qkd ec`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum EcFormat {
    /// A header line and one comma-separated row per (variant, qber).
    #[default]
    Csv,
    /// A JSON array of row objects.
    Json,
}

/// Options of `qkd ec`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Error-correction methods (comma-separated: `cascade,ldpc` runs both
    /// into one table and one plot).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "cascade")]
    method: Vec<Method>,
    /// Variants to run (comma-separated), each of one of the methods.
    /// Default: option8 for Cascade, blind for LDPC.
    #[arg(long, value_enum, value_delimiter = ',')]
    variant: Vec<VariantArg>,
    /// Channel QBER in (0, 0.5) (comma-separated to sweep), also given to
    /// Cascade as its estimate.
    #[arg(long, allow_negative_numbers = true, value_delimiter = ',', default_value = "0.02", value_parser = flag::qber_with_errors)]
    qber: Vec<f64>,
    /// Key length per frame in bits, 1 to 2^20 (the shuffles take about 300
    /// bytes per bit).
    #[arg(long, allow_negative_numbers = true, default_value_t = 10_000, value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_N))]
    n: usize,
    /// Key length for option 8 (the paper used 2^14 for it), 1 to 2^20;
    /// default: --n.
    #[arg(long, allow_negative_numbers = true, value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_N))]
    n_option8: Option<usize>,
    /// Frames per (variant, qber), 1 to 1 000 000.
    #[arg(long, allow_negative_numbers = true, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=MAX_TRIALS))]
    trials: u64,
    /// Seed of the key generator and the shuffles.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1)]
    seed: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = EcFormat::Csv)]
    format: EcFormat,
    /// Re-check blocks set aside by a cascade as soon as the search that set
    /// them aside ends, not when no search runs: fewer channel uses, a
    /// little more leakage.
    #[arg(long)]
    eager_cascades: bool,
    /// Search the odd blocks of each pass after the first in this many waves
    /// (`CascadeParams::search_waves`): lower f, more channel uses. Default:
    /// the variant's own (2 for original, 1 for the others).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..))]
    search_waves: Option<u32>,
    /// LDPC: the syndrome efficiency the rate is chosen for (rate-adaptive
    /// default 1.25, blind default 1.05, guided default 1.0: where its
    /// rounds start), in [1, 10].
    #[arg(long, allow_negative_numbers = true, value_parser = flag::efficiency)]
    ldpc_efficiency: Option<f64>,
    /// LDPC: run with this alist code instead of the built ladder (the
    /// whole frame is key; --n is ignored).
    #[arg(long, value_parser = flag::input_file)]
    code: Option<std::path::PathBuf>,
    /// Also draw f against QBER, per variant, into this SVG file (its
    /// folder must exist).
    #[arg(long, value_parser = flag::output_file)]
    plot: Option<std::path::PathBuf>,
}

/// One output row.
#[derive(serde::Serialize, Clone, Debug)]
pub(crate) struct Row {
    pub(crate) method: &'static str,
    pub(crate) variant: &'static str,
    pub(crate) qber: f64,
    pub(crate) n: usize,
    pub(crate) trials: u64,
    /// `None` when no frame had an error.
    pub(crate) f_mean: Option<f64>,
    /// `None` with fewer than two frames with errors.
    pub(crate) f_stddev: Option<f64>,
    pub(crate) channel_uses_mean: f64,
    pub(crate) fer: f64,
    /// `None` when the timed part was shorter than [`clock::MIN_TIMED`].
    pub(crate) throughput_mbps: Option<f64>,
}

pub(crate) fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut rows = Vec::new();
    let mut plans: Vec<Arc<ShufflePlan>> = Vec::new();
    let method_of = |v: &VariantArg| {
        if v.ldpc().is_some() {
            Method::Ldpc
        } else {
            Method::Cascade
        }
    };
    let variants: Vec<VariantArg> = if args.variant.is_empty() {
        args.method
            .iter()
            .map(|m| match m {
                Method::Ldpc => VariantArg::Blind,
                Method::Cascade => VariantArg::Option8,
            })
            .collect()
    } else {
        args.variant.clone()
    };
    if let Some(bad) = variants
        .iter()
        .find(|v| !args.method.contains(&method_of(v)))
    {
        return Err(format!(
            "--variant {} does not go with --method {}: LDPC takes rate-adaptive, \
             blind or guided, Cascade the others",
            format!("{bad:?}").to_lowercase(),
            args.method
                .iter()
                .map(|m| format!("{m:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(",")
        )
        .into());
    }
    let mut cache = qkd_postproc::ldpc::CodeCache::new();
    for &variant in &variants {
        if let Some(v) = variant.ldpc() {
            for &qber in &args.qber {
                let point = crate::ldpc::Point {
                    variant: v,
                    qber,
                    n: args.n,
                    trials: args.trials,
                    seed: args.seed,
                    efficiency: args.ldpc_efficiency,
                    code: args.code.as_deref(),
                };
                rows.push(crate::ldpc::run_point(&point, &mut cache)?);
            }
            continue;
        }
        let variant = Variant::from(variant);
        let n = match variant {
            Variant::Option8 => args.n_option8.unwrap_or(args.n),
            _ => args.n,
        };
        let plan = match plans.iter().find(|p| p.key_len() == n) {
            Some(plan) => plan.clone(),
            None => {
                // The shuffles are computed once per key length and seed,
                // outside the timed part (BICONF may draw more on first use).
                let plan = Arc::new(ShufflePlan::new(n, args.seed)?);
                plan.prepare(20);
                plans.push(plan.clone());
                plan
            }
        };
        for &qber in &args.qber {
            rows.push(run_point(args, variant, qber, &plan)?);
        }
    }
    let mut out = std::io::stdout().lock();
    match args.format {
        EcFormat::Csv => {
            writeln!(
                out,
                "method,variant,qber,n,trials,f_mean,f_stddev,channel_uses_mean,fer,throughput_mbps"
            )?;
            for r in &rows {
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{:.1},{:e},{}",
                    r.method,
                    r.variant,
                    r.qber,
                    r.n,
                    r.trials,
                    clock::or_text(r.f_mean, 4, ""),
                    clock::or_text(r.f_stddev, 4, ""),
                    r.channel_uses_mean,
                    r.fer,
                    clock::or_text(r.throughput_mbps, 1, "")
                )?;
            }
        }
        EcFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?,
    }
    out.flush()?;
    notes(&rows);
    if let Some(path) = &args.plot {
        plot(path, &rows).map_err(|e| format!("--plot {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Says on standard error why fields of some rows are empty.
fn notes(rows: &[Row]) {
    let undefined: Vec<_> = rows.iter().filter(|r| r.f_mean.is_none()).collect();
    if let Some(r) = undefined.first() {
        eprintln!(
            "note: {} row(s) (first: {} at QBER {}, n = {}) had no frame with 0 < errors < n, \
             so f = leaked / (n h2(errors / n)) is undefined and left empty; raise --n or \
             --trials",
            undefined.len(),
            r.variant,
            r.qber,
            r.n
        );
    }
    if rows
        .iter()
        .any(|r| r.f_mean.is_some() && r.f_stddev.is_none())
    {
        eprintln!(
            "note: f_stddev needs two frames with errors and is left empty where there \
             were fewer; raise --trials"
        );
    }
    if rows.iter().any(|r| r.throughput_mbps.is_none()) {
        eprintln!(
            "note: throughput_mbps is left empty where a row's timed part took less than \
             {} ms, too short to time; raise --trials or --n",
            clock::MIN_TIMED.as_millis()
        );
    }
}

fn run_point(
    args: &Args,
    variant: Variant,
    qber: f64,
    plan: &Arc<ShufflePlan>,
) -> Result<Row, Box<dyn std::error::Error>> {
    let n = plan.key_len();
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ qber.to_bits().rotate_left(17));
    let (mut sum, mut sum_sq, mut counted) = (0.0, 0.0, 0u64);
    let (mut uses, mut failures) = (0u64, 0u64);
    let mut timed = Duration::ZERO;
    let mut corrected_bits = 0u64;
    for frame in 0..args.trials {
        let alice_key = BitVec::random(n, &mut rng);
        let bob_key = binary_symmetric_channel(&alice_key, qber, &mut rng)?;
        let errors = alice_key.hamming_distance(&bob_key);
        let mut params = CascadeParams::for_variant(variant, qber, n)?;
        params.defer_until_idle = !args.eager_cascades;
        if let Some(waves) = args.search_waves {
            params.search_waves = waves;
        }
        // One parity per key bit at most (the default budget).
        let config = CascadeConfig::new(params);
        let block = BlockId::new(frame);
        let start = Instant::now();
        let mut alice = CascadeAlice::new(block, alice_key, plan.clone(), &config)?;
        let mut bob = CascadeBob::new(block, bob_key, plan.clone(), &config)?;
        let stats = run_in_memory(&mut alice, &mut bob, Instant::now())?;
        timed += start.elapsed();
        corrected_bits += n as u64;
        uses += u64::from(stats.channel_uses);
        if bob.key() != alice.key() {
            failures += 1;
        }
        // f = leaked / (n h2(errors / n)) is defined where h2 is positive.
        if 0 < errors && errors < n {
            let f = stats.efficiency(errors as f64 / n as f64);
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
        method: "cascade",
        variant: variant.name(),
        qber,
        n,
        trials: args.trials,
        f_mean: mean,
        f_stddev: stddev,
        channel_uses_mean: uses as f64 / args.trials as f64,
        fer: failures as f64 / args.trials as f64,
        throughput_mbps: clock::per_second(corrected_bits as f64 / 1e6, timed),
    })
}

/// The paper's efficiencies at QBER 1, 2, 5, 10 % (Martinez-Mateo et al.
/// 2015, read off its figures).
const PAPER: [(&str, [f64; 4]); 7] = [
    ("original", [1.135, 1.15, 1.18, 1.21]),
    ("biconf", [1.095, 1.09, 1.095, 1.115]),
    ("yanetal", [1.09, 1.085, 1.09, 1.12]),
    ("option3", [1.085, 1.085, 1.10, 1.125]),
    ("option4", [1.07, 1.065, 1.077, 1.10]),
    ("option7", [1.05, 1.05, 1.05, 1.07]),
    ("option8", [1.045, 1.04, 1.045, 1.06]),
];
const PAPER_QBERS: [f64; 4] = [0.01, 0.02, 0.05, 0.10];

fn plot(path: &std::path::Path, rows: &[Row]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let mut variants: Vec<(&str, &str)> = rows.iter().map(|r| (r.method, r.variant)).collect();
    variants.dedup();
    let q_max = rows.iter().map(|r| r.qber).fold(0.1f64, f64::max) * 1.05;
    let f_max = rows.iter().filter_map(|r| r.f_mean).fold(1.25f64, f64::max) + 0.2; // room above the curves for the legend
    let root = SVGBackend::new(path, (900, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Efficiency f = leaked / (n h2(Q)): measured (solid), Cascade paper values (dashed)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..q_max, 0.98..f_max)?;
    chart
        .configure_mesh()
        .x_desc("QBER")
        .y_desc("f")
        .x_label_formatter(&|q| format!("{:.0} %", q * 100.0))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 1.0), (q_max, 1.0)],
            BLACK.stroke_width(2),
        ))?
        .label("Shannon limit f = 1")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    for (i, &(method, variant)) in variants.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.variant == variant)
            .filter_map(|r| Some((r.qber, r.f_mean?)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(format!("{method} {variant} (measured)"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        if let Some((_, paper)) = PAPER.iter().find(|(name, _)| *name == variant) {
            let pts: Vec<(f64, f64)> = PAPER_QBERS
                .iter()
                .copied()
                .zip(paper.iter().copied())
                .collect();
            chart
                .draw_series(
                    pts.iter()
                        .map(|&p| TriangleMarker::new(p, 6, color.stroke_width(1))),
                )?
                .label(format!("{method} {variant} (paper)"))
                .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, color.stroke_width(1)));
            chart.draw_series(DashedLineSeries::new(pts, 4, 4, color.stroke_width(1)))?;
        }
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
