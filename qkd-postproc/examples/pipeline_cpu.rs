//! CPU cost of the whole pipeline, both sides on one thread (the
//! `pipeline/one_thread` shape of the criterion bench), measured as the
//! thread's own CPU time so that other work on a shared machine does not
//! count. Prints sifted megabits per CPU-second, the secret fraction and f
//! (bits disclosed by correction over n·h2(QBER)) of the kept blocks.
//!
//! ```text
//! cargo run --release -p qkd-postproc --example pipeline_cpu -- [BLOCKS] [ROUNDS]
//! ```
//!
//! Environment: `QBER` (default 0.02), `SLOTS` per frame (default
//! 4 000 000, about 10^6 sifted bits), `PIPELINE` (a TOML definition file;
//! default: the built-in definition). The frames are made before the timed
//! part. For instruction counts that no load moves, run it under
//! `valgrind --tool=callgrind --toggle-collect=pipeline_cpu::one_thread`
//! with 2N and N blocks and take the difference over N (the one-off set-up
//! of a fresh pipeline cancels).
#![allow(missing_docs, clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use qkd_core::machine::Machine;
use qkd_core::{QkdDevice, RawFrame, Role, SecretKey, SimulatedBb84, SimulatorConfig, h2};
use qkd_postproc::auth::{PresharedSecret, SecretId};
use qkd_postproc::pipeline::{BlockReport, Pipeline, PipelineDefinition, PipelineEvent};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn frames(blocks: u64, qber: f64, slots: usize) -> (Vec<RawFrame>, Vec<RawFrame>) {
    let config = SimulatorConfig {
        qber,
        frame_slots: slots,
        detection_probability: 0.5,
        seed: 1,
        ..Default::default()
    };
    let take = |role| {
        let mut device = SimulatedBb84::device(config.clone(), role)
            .expect("device")
            .with_frame_limit(blocks);
        let mut out = Vec::new();
        while let Some(f) = device.next_frame().expect("frame") {
            out.push(f);
        }
        out
    };
    (take(Role::Alice), take(Role::Bob))
}

fn pipelines(def: &PipelineDefinition) -> (Pipeline, Pipeline) {
    let secret = SecretKey::from_slice(&vec![0x5a; 1 << 20]);
    let side = |role, seed| {
        Pipeline::new(
            def,
            role,
            PresharedSecret::new(SecretId::new(1), secret.clone()),
            [seed; 32],
        )
        .expect("pipeline")
    };
    (side(Role::Alice, 1), side(Role::Bob, 2))
}

/// The thread's CPU time (Linux; the scheduler's own account).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

#[inline(never)]
fn one_thread(
    mut a: Pipeline,
    mut b: Pipeline,
    fa: Vec<RawFrame>,
    fb: Vec<RawFrame>,
) -> Vec<BlockReport> {
    let total = fa.len();
    let (mut fa, mut fb) = (fa.into_iter().peekable(), fb.into_iter().peekable());
    let (mut kept, mut settled) = (Vec::new(), 0);
    while settled < total {
        let now = Instant::now();
        while fa.peek().is_some() && a.wants_frame() {
            a.push_frame(now, fa.next().expect("peeked"))
                .expect("frame");
        }
        while fb.peek().is_some() && b.wants_frame() {
            b.push_frame(now, fb.next().expect("peeked"))
                .expect("frame");
        }
        let mut moved = false;
        while let Some(d) = a.poll_transmit(now) {
            let _ = b.handle_input(now, &d);
            moved = true;
        }
        while let Some(d) = b.poll_transmit(now) {
            let _ = a.handle_input(now, &d);
            moved = true;
        }
        while let Some(e) = a.poll_event() {
            match e {
                PipelineEvent::FinalKey { stats, .. } => {
                    kept.push(stats);
                    settled += 1;
                }
                PipelineEvent::Dropped { .. } => settled += 1,
                _ => {}
            }
        }
        while b.poll_event().is_some() {}
        if !moved {
            a.handle_timeout(Instant::now());
            b.handle_timeout(Instant::now());
        }
    }
    kept
}

fn main() {
    let mut args = std::env::args().skip(1);
    let blocks: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(6);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let qber: f64 = env("QBER", 0.02);
    let slots: usize = env("SLOTS", 4_000_000);
    let def = match std::env::var("PIPELINE") {
        Ok(path) => {
            let text = std::fs::read_to_string(&path).expect("PIPELINE file");
            PipelineDefinition::from_toml(&text).expect("PIPELINE definition")
        }
        Err(_) => PipelineDefinition::default(),
    };
    let (fa, fb) = frames(blocks, qber, slots);
    let mut rates = Vec::new();
    for round in 0..rounds {
        let (a, b) = pipelines(&def);
        let start = thread_cpu();
        let kept = one_thread(a, b, fa.clone(), fb.clone());
        let cpu = (thread_cpu() - start).as_secs_f64().max(1e-9);
        let sifted: u64 = kept.iter().map(|r| r.sifted_bits).sum();
        let final_bits: u64 = kept.iter().map(|r| r.final_bits).sum();
        let f: f64 = kept
            .iter()
            .map(|r| r.parity_bits as f64 / (r.key_bits as f64 * h2(r.qber)).max(1.0))
            .sum::<f64>()
            / kept.len().max(1) as f64;
        let rate = sifted as f64 / cpu / 1e6;
        println!(
            "round {round}: {} of {blocks} blocks kept, {rate:.2} Mbit/s of sifted key per CPU-second \
             ({cpu:.3} s), secret fraction {:.4}, f {f:.3}",
            kept.len(),
            final_bits as f64 / sifted.max(1) as f64
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!("median {:.2} Mbit/s per CPU-second", rates[rates.len() / 2]);
}
