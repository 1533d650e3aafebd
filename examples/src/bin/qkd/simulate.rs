//! `qkd simulate`: drive `SimulatedBb84`, sift, and measure the QBER.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use qkd_core::{SimulatedBb84, SimulatorConfig};
use qkd_postproc::sift;

use crate::Format;

/// Options of `qkd simulate`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Quantum bit error rate of the simulated channel (on sifted bits).
    #[arg(long, default_value_t = 0.03)]
    qber: f64,
    /// Raw detections to generate (at least; whole frames are run).
    #[arg(long, default_value_t = 10_000_000)]
    bits: u64,
    /// Seed of the simulator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Probability that a slot gives a detection (loss and detector efficiency).
    #[arg(long, default_value_t = 0.1)]
    detection_probability: f64,
    /// Probability of choosing the Z basis, on both sides.
    #[arg(long, default_value_t = 0.5)]
    z_basis_probability: f64,
    /// Time slots per frame.
    #[arg(long, default_value_t = 1 << 22)]
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
    measured_qber: f64,
    seconds: f64,
    raw_detections_per_second: f64,
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
        measured_qber: 0.0,
        seconds: 0.0,
        raw_detections_per_second: 0.0,
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
    r.seconds = start.elapsed().as_secs_f64();
    r.measured_qber = if r.sifted_bits == 0 {
        0.0
    } else {
        r.errors as f64 / r.sifted_bits as f64
    };
    r.raw_detections_per_second = r.raw_detections as f64 / r.seconds.max(1e-9);
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&r)?),
        Format::Text => {
            println!("frames:          {}", r.frames);
            println!("slots:           {}", r.slots);
            println!(
                "raw detections:  {} (detection rate {:.4})",
                r.raw_detections,
                r.raw_detections as f64 / r.slots as f64
            );
            println!(
                "sifted bits:     {} (sifting ratio {:.4})",
                r.sifted_bits,
                r.sifted_bits as f64 / r.raw_detections.max(1) as f64
            );
            println!("errors:          {}", r.errors);
            println!(
                "measured QBER:   {:.5} (configured {})",
                r.measured_qber, r.configured_qber
            );
            println!(
                "time:            {:.3} s ({:.1} Mdetections/s, sifting included)",
                r.seconds,
                r.raw_detections_per_second / 1e6
            );
        }
    }
    Ok(())
}
