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
//! default: the built-in definition), `IN_FLIGHT` (the `pipeline` module's
//! `max_blocks_in_flight`, set on both sides; default: the definition's).
//! The frames are made before the timed part.
//!
//! `WORKERS=N` hands both sides' privacy amplification to a pool of N worker
//! threads (with `WORKERS=1` the `pipeline/one_thread_worker` shape), and with
//! `CORRECTION=1` every Cascade turn as well
//! ([`Pipeline::set_external_correction`]): one thread drives both sides'
//! protocol, the workers run different blocks' heavy steps at once. The CPU
//! figure then counts the workers' time too. `THREADS=2` runs the
//! `pipeline/two_threads` shape instead: Alice and Bob on a thread each,
//! datagrams through `std::sync::mpsc`, each datagram answered before the
//! next is taken; `SPIN_US=N`: each side polls its queue N µs before it
//! sleeps in it (a large N keeps both threads awake for the whole run);
//! `PIN=1` pins Alice's thread to the first CPU the process may use and
//! Bob's to the second; `BOB_HASHING_ON_ALICE=1` runs Bob's privacy
//! amplification on Alice's thread (Bob's side of Cascade is the heavier).
//! The rate per CPU-second is then of both threads together (what the
//! thread crossing and the spinning cost). Either way the last line is the median wall-clock rate (sifted
//! bits over elapsed time: what one or two cores give when the machine has
//! them free). For instruction counts that no load moves, run it under
//! `valgrind --tool=callgrind --toggle-collect=pipeline_cpu::one_thread`
//! with 2N and N blocks and take the difference over N (the one-off set-up
//! of a fresh pipeline cancels).
#![allow(missing_docs, clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use qkd_core::module::{ModuleHost, Value};
use qkd_core::{QkdDevice, RawFrame, Role, SecretKey, SimulatedBb84, SimulatorConfig, h2};
use qkd_postproc::auth::{PresharedSecret, SecretId};
use qkd_postproc::pipeline::{BlockReport, Pipeline, PipelineDefinition};
use shapes::{TwoThreads, Workers, thread_cpu, two_threads, workers};

#[path = "../benches/support/shapes.rs"]
mod shapes;

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
    let in_flight: u64 = env("IN_FLIGHT", 0);
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
    let (mut a, mut b) = (side(Role::Alice, 1), side(Role::Bob, 2));
    if in_flight > 0 {
        for p in [&mut a, &mut b] {
            p.module_mut("pipeline")
                .expect("pipeline module")
                .set_parameter("max_blocks_in_flight", &Value::U64(in_flight))
                .expect("max_blocks_in_flight");
        }
    }
    (a, b)
}

/// The thread's CPU time (Linux; the scheduler's own account).
/// The `one_thread` shape under its own name (`--toggle-collect` below).
#[inline(never)]
fn one_thread(a: Pipeline, b: Pipeline, fa: Vec<RawFrame>, fb: Vec<RawFrame>) -> Vec<BlockReport> {
    shapes::one_thread(a, b, fa, fb)
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
    let threads: usize = env("THREADS", 1);
    let pool = Workers {
        threads: env("WORKERS", 0),
        correction: env("CORRECTION", 0) == 1,
    };
    let how = TwoThreads {
        spin: Duration::from_micros(env("SPIN_US", 0)),
        bob_hashing_on_alice: env("BOB_HASHING_ON_ALICE", 0) != 0,
        pin: env("PIN", 0) != 0,
    };
    let mut walls = Vec::new();
    for round in 0..rounds {
        let (a, b) = pipelines(&def);
        let (kept, cpu) = if threads == 2 {
            let run = two_threads(a, b, fa.clone(), fb.clone(), how);
            let (kept, cpu, wall) = (run.kept, run.cpu, run.wall);
            let sifted: u64 = kept.iter().map(|r| r.sifted_bits).sum();
            let rate = sifted as f64 / wall.as_secs_f64() / 1e6;
            println!(
                "round {round}: two threads, {rate:.2} Mbit/s of sifted key by the wall clock ({:.3} s; \
                 busy: Alice's thread {:.3} s, Bob's {:.3} s)",
                wall.as_secs_f64(),
                run.busy[0].as_secs_f64(),
                run.busy[1].as_secs_f64(),
            );
            walls.push(rate);
            (kept, cpu)
        } else {
            let (start, wall) = (thread_cpu(), Instant::now());
            let (kept, worker) = if pool.threads > 0 {
                workers(a, b, fa.clone(), fb.clone(), pool)
            } else {
                (one_thread(a, b, fa.clone(), fb.clone()), Duration::ZERO)
            };
            let sifted: u64 = kept.iter().map(|r| r.sifted_bits).sum();
            walls.push(sifted as f64 / wall.elapsed().as_secs_f64() / 1e6);
            (kept, thread_cpu() - start + worker)
        };
        let cpu = cpu.as_secs_f64().max(1e-9);
        let sifted: u64 = kept.iter().map(|r| r.sifted_bits).sum();
        let final_bits: u64 = kept.iter().map(|r| r.final_bits).sum();
        let f: f64 = kept
            .iter()
            .map(|r| r.parity_bits as f64 / (r.key_bits as f64 * h2(r.qber)).max(1.0))
            .sum::<f64>()
            / kept.len().max(1) as f64;
        let rate = sifted as f64 / cpu / 1e6;
        // LDPC: decodings (rounds) per frame; Cascade reports none.
        let rounds: u64 = kept.iter().map(|r| r.ldpc_rounds).sum();
        let frames: u64 = kept.iter().map(|r| u64::from(r.chunks)).sum();
        let decodings = if rounds > 0 {
            format!(
                ", {:.2} decodings per LDPC frame",
                rounds as f64 / frames.max(1) as f64
            )
        } else {
            String::new()
        };
        println!(
            "round {round}: {} of {blocks} blocks kept, {rate:.2} Mbit/s of sifted key per CPU-second \
             ({cpu:.3} s), secret fraction {:.4}, f {f:.3}{decodings}",
            kept.len(),
            final_bits as f64 / sifted.max(1) as f64
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!("median {:.2} Mbit/s per CPU-second", rates[rates.len() / 2]);
    walls.sort_by(f64::total_cmp);
    let shape = match (threads, pool.threads, pool.correction) {
        (2, _, _) => "two threads".to_owned(),
        (_, 0, _) => "one thread".to_owned(),
        (_, n, false) => format!("one thread and {n} worker(s) for amplification"),
        (_, n, true) => format!("one thread and {n} worker(s) for correction and amplification"),
    };
    println!(
        "median {:.2} Mbit/s by the wall clock ({shape})",
        walls[walls.len() / 2]
    );
}
