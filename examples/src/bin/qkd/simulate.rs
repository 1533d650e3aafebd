//! `qkd simulate`: drive `SimulatedBb84`, sift, and measure the QBER.

use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use qkd_core::{SimulatedBb84, SimulatorConfig};
use qkd_postproc::sift;

use crate::{Format, clock, flag};

/// Most `--bits` (about a day of simulation on one core).
const MAX_BITS: u64 = 1 << 40;

/// Largest `--frame-slots`: a frame of 2^28 slots takes about 150 MB.
const MAX_FRAME_SLOTS: u64 = 1 << 28;

/// Options of `qkd simulate`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Quantum bit error rate of the simulated channel (on sifted bits), in [0, 0.5].
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.03, value_parser = flag::simulated_qber)]
    qber: f64,
    /// Raw detections to generate (at least; whole frames are run), 1 to 2^40.
    #[arg(long, allow_negative_numbers = true, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..=MAX_BITS))]
    bits: u64,
    /// Seed of the simulator.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1)]
    seed: u64,
    /// Probability that a slot gives a detection (loss and detector
    /// efficiency), in [2^-32, 1].
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.1, value_parser = flag::detection_probability)]
    detection_probability: f64,
    /// Probability of choosing the Z basis, on both sides, in (0, 1).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.5, value_parser = flag::basis_probability)]
    z_basis_probability: f64,
    /// Time slots per frame, 1 to 2^28.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1 << 22, value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_FRAME_SLOTS))]
    frame_slots: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(serde::Serialize)]
struct Report {
    frames: u64,
    slots: u64,
    raw_detections: u64,
    sifted_bits: u64,
    errors: u64,
    configured_qber: f64,
    /// `None` when no bit survived sifting.
    measured_qber: Option<f64>,
    seconds: f64,
    /// `None` when the run took less than [`clock::MIN_TIMED`].
    raw_detections_per_second: Option<f64>,
}

pub(crate) fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = SimulatorConfig {
        qber: args.qber,
        detection_probability: args.detection_probability,
        z_basis_probability: args.z_basis_probability,
        frame_slots: args.frame_slots,
        seed: args.seed,
    };
    let mut sim = SimulatedBb84::new(config)?;
    let start = Instant::now();
    // Hidden at first; drawn only once the run has taken more than a second.
    let bar = ProgressBar::with_draw_target(Some(args.bits), ProgressDrawTarget::hidden());
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {human_pos}/{human_len} raw detections, eta {eta}",
    )?);
    let mut shown = false;
    let mut r = Report {
        frames: 0,
        slots: 0,
        raw_detections: 0,
        sifted_bits: 0,
        errors: 0,
        configured_qber: args.qber,
        measured_qber: None,
        seconds: 0.0,
        raw_detections_per_second: None,
    };
    while r.raw_detections < args.bits {
        let (alice, bob) = sim.next_pair();
        let announcement = sift::announce(&bob)?;
        let (decision, alice_key) = sift::sift_alice(&alice, &announcement)?;
        let bob_key = sift::sift_bob(&bob, &decision)?;
        r.frames += 1;
        r.slots += alice.slots as u64;
        r.raw_detections += bob.values.len() as u64;
        r.sifted_bits += alice_key.len() as u64;
        r.errors += alice_key.hamming_distance(&bob_key) as u64;
        if !shown && start.elapsed() > Duration::from_secs(1) {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            shown = true;
        }
        bar.set_position(r.raw_detections.min(args.bits));
    }
    bar.finish_and_clear();
    let elapsed = start.elapsed();
    r.seconds = elapsed.as_secs_f64();
    r.measured_qber = (r.sifted_bits > 0).then(|| r.errors as f64 / r.sifted_bits as f64);
    r.raw_detections_per_second = clock::per_second(r.raw_detections as f64, elapsed);
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&r)?),
        Format::Text => {
            println!("frames:          {}", r.frames);
            println!("slots:           {}", r.slots);
            println!(
                "raw detections:  {} (detection rate {:.4})",
                r.raw_detections,
                r.raw_detections as f64 / r.slots.max(1) as f64
            );
            println!(
                "sifted bits:     {} (sifting ratio {:.4})",
                r.sifted_bits,
                r.sifted_bits as f64 / r.raw_detections.max(1) as f64
            );
            println!("errors:          {}", r.errors);
            println!(
                "measured QBER:   {} (configured {})",
                clock::or_text(
                    r.measured_qber,
                    5,
                    "none: no bit survived sifting, raise --bits"
                ),
                r.configured_qber
            );
            println!(
                "time:            {:.3} s ({}, sifting included)",
                r.seconds,
                r.raw_detections_per_second.map_or_else(
                    || "too short to time".to_owned(),
                    |d| format!("{:.1} Mdetections/s", d / 1e6)
                )
            );
        }
    }
    Ok(())
}
