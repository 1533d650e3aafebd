//! The whole pipeline in one process: both sides, QBER 2 %, about 10^6
//! sifted bits per block, Cascade option 7 (the default definition),
//! transcript authentication. Throughput is sifted bits per second, end to
//! end (sifting to final key on both sides); the simulated device's frames
//! are made before the timed part.
//!
//! - `pipeline/one_thread`: Alice and Bob driven by one thread.
//! - `pipeline/two_threads`: Alice and Bob each on its own thread, datagrams
//!   through `std::sync::mpsc` (the shape of a two-process link).
//! - `pipeline/one_thread_worker`: both on one thread, their privacy
//!   amplification on one worker thread ([`Pipeline::set_external_work`]):
//!   the worker shape of a host that hands heavy steps of different blocks
//!   to other cores.
//! - `pipeline/two_workers_correction`: both sides' protocol on one thread,
//!   their privacy amplification and every Cascade turn
//!   ([`Pipeline::set_external_correction`]) on a pool of two workers.
//!
//! Before timing it prints, for the same blocks, the secret fraction
//! against the finite-key bound evaluated with f = 1 and the
//! authentication cost per block.
#![allow(missing_docs, clippy::print_stderr)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use qkd_core::{QkdDevice, RawFrame, Role, SecretKey, SimulatedBb84, SimulatorConfig, h2};
use qkd_postproc::amplify::length::finite_key_length;
use qkd_postproc::auth::{PresharedSecret, SecretId};
use qkd_postproc::confirm::ConfirmConfig;
use qkd_postproc::estimate::Estimate;
use qkd_postproc::pipeline::{BlockReport, Pipeline, PipelineDefinition};
use shapes::{Workers, one_thread, workers};

#[path = "support/shapes.rs"]
mod shapes;

const BLOCKS: u64 = 6;

fn frames() -> (Vec<RawFrame>, Vec<RawFrame>) {
    // 0.5 detection × 0.5 matching bases: 4·10^6 slots give ≈ 10^6 sifted bits.
    let config = SimulatorConfig {
        qber: 0.02,
        frame_slots: 4_000_000,
        detection_probability: 0.5,
        seed: 1,
        ..Default::default()
    };
    let mut a = SimulatedBb84::device(config.clone(), Role::Alice)
        .unwrap()
        .with_frame_limit(BLOCKS);
    let mut b = SimulatedBb84::device(config, Role::Bob)
        .unwrap()
        .with_frame_limit(BLOCKS);
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    while let Some(f) = a.next_frame().unwrap() {
        fa.push(f);
    }
    while let Some(f) = b.next_frame().unwrap() {
        fb.push(f);
    }
    (fa, fb)
}

fn pipelines() -> (Pipeline, Pipeline) {
    let def = PipelineDefinition::default();
    let secret = SecretKey::from_slice(&vec![0x5a; 1 << 16]);
    (
        Pipeline::new(
            &def,
            Role::Alice,
            PresharedSecret::new(SecretId::new(1), secret.clone()),
            [1; 32],
        )
        .unwrap(),
        Pipeline::new(
            &def,
            Role::Bob,
            PresharedSecret::new(SecretId::new(1), secret),
            [2; 32],
        )
        .unwrap(),
    )
}

/// Drives one side: frames in, datagrams out through `send`, in through
/// `receive`; returns the reports of the kept blocks.
fn report(kept: &[BlockReport]) {
    let confirm = ConfirmConfig::default();
    for r in kept {
        let estimate = Estimate {
            block: qkd_core::BlockId::new(r.block),
            sifted_bits: r.sifted_bits,
            sample_bits: r.sample_bits,
            sample_errors: r.sample_errors,
            qber: r.qber,
            qber_upper: r.qber_upper,
        };
        // The bound for the same block with a reconciliation at the Shannon
        // limit: leak = n·h2(Q), nothing left over.
        let shannon = (r.key_bits as f64 * h2(r.qber)).ceil() as u64;
        let bound = finite_key_length(&estimate.finite_key_input(
            shannon,
            64,
            1e-10,
            confirm.eps_cor(r.key_bits),
        ))
        .unwrap()
        .bits;
        eprintln!(
            "block {}: sifted {} final {} bound(f=1) {} ratio {:.4} f {:.4} chunks {} leftover {} auth bits sent {} received {} ({:.4} % of final)",
            r.block,
            r.sifted_bits,
            r.final_bits,
            bound,
            r.final_bits as f64 / bound as f64,
            r.parity_bits as f64 / (r.corrected_bits as f64 * h2(r.qber)),
            r.chunks,
            r.leftover_bits,
            r.auth_bits_sent,
            r.auth_bits_received,
            100.0 * (r.auth_bits_sent + r.auth_bits_received) as f64 / r.final_bits as f64,
        );
    }
}

const ONE_WORKER: Workers = Workers {
    threads: 1,
    correction: false,
};
const TWO_WORKERS: Workers = Workers {
    threads: 2,
    correction: true,
};

fn bench(c: &mut Criterion) {
    let (fa, fb) = frames();
    let (a, b) = pipelines();
    let kept = one_thread(a, b, fa.clone(), fb.clone());
    assert_eq!(kept.len() as u64, BLOCKS);
    report(&kept);
    // The worker shape keeps the same blocks with the same lengths.
    let (a, b) = pipelines();
    let (with_worker, _) = workers(a, b, fa.clone(), fb.clone(), ONE_WORKER);
    let lengths = |k: &[BlockReport]| {
        k.iter()
            .map(|r| (r.block, r.final_bits))
            .collect::<Vec<_>>()
    };
    assert_eq!(lengths(&with_worker), lengths(&kept));
    let (a, b) = pipelines();
    let (with_workers, _) = workers(a, b, fa.clone(), fb.clone(), TWO_WORKERS);
    assert_eq!(lengths(&with_workers), lengths(&kept));
    let sifted: u64 = kept.iter().map(|r| r.sifted_bits).sum();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(sifted));
    g.sample_size(10);
    g.bench_function("one_thread", |bench| {
        bench.iter_batched(
            || (pipelines(), fa.clone(), fb.clone()),
            |((a, b), fa, fb)| one_thread(a, b, fa, fb),
            BatchSize::PerIteration,
        );
    });
    g.bench_function("two_threads", |bench| {
        bench.iter_batched(
            || (pipelines(), fa.clone(), fb.clone()),
            |((a, b), fa, fb)| {
                shapes::two_threads(
                    a,
                    b,
                    fa,
                    fb,
                    shapes::TwoThreads {
                        spin: std::time::Duration::ZERO,
                        bob_hashing_on_alice: false,
                        pin: false,
                    },
                )
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("one_thread_worker", |bench| {
        bench.iter_batched(
            || (pipelines(), fa.clone(), fb.clone()),
            |((a, b), fa, fb)| workers(a, b, fa, fb, ONE_WORKER),
            BatchSize::PerIteration,
        );
    });
    g.bench_function("two_workers_correction", |bench| {
        bench.iter_batched(
            || (pipelines(), fa.clone(), fb.clone()),
            |((a, b), fa, fb)| workers(a, b, fa, fb, TWO_WORKERS),
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
