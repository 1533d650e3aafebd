//! Throughput of `SimulatedBb84` against a plain per-slot simulator.
//!
//! `cargo bench -p qkd-core --bench simulator`
//!
//! Throughput is counted in raw detections (Bob's detected slots) per second.

#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkd_core::{SimulatedBb84, SimulatorConfig};
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::hint::black_box;

const SLOTS: usize = 1 << 22;
const DETECTION: f64 = 0.1;
const QBER: f64 = 0.03;

/// The obvious simulator: one uniform draw per decision per slot, one bool per bit.
fn plain_frame(rng: &mut Xoshiro256PlusPlus) -> (Vec<bool>, Vec<bool>, Vec<bool>, Vec<bool>) {
    let uniform =
        |rng: &mut Xoshiro256PlusPlus| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let mut a_val = Vec::with_capacity(SLOTS);
    let mut a_bas = Vec::with_capacity(SLOTS);
    let mut b_val = Vec::new();
    let mut b_bas = Vec::new();
    for _ in 0..SLOTS {
        let v = uniform(rng) < 0.5;
        let basis = uniform(rng) < 0.5;
        a_val.push(v);
        a_bas.push(basis);
        if uniform(rng) < DETECTION {
            let bb = uniform(rng) < 0.5;
            let bit = if bb == basis {
                v ^ (uniform(rng) < QBER)
            } else {
                uniform(rng) < 0.5
            };
            b_val.push(bit);
            b_bas.push(bb);
        }
    }
    (a_val, a_bas, b_val, b_bas)
}

fn simulator(c: &mut Criterion) {
    let config = SimulatorConfig {
        qber: QBER,
        detection_probability: DETECTION,
        z_basis_probability: 0.5,
        frame_slots: SLOTS,
        seed: 1,
    };
    let mut sim = SimulatedBb84::new(config).unwrap();
    let detections = (SLOTS as f64 * DETECTION) as u64;
    let mut g = c.benchmark_group("bb84_frame_4Mslots_p0.1");
    g.throughput(Throughput::Elements(detections));
    g.bench_function("simulated_bb84", |b| b.iter(|| black_box(sim.next_pair())));
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    g.bench_function("plain_per_slot_reference", |b| {
        b.iter(|| black_box(plain_frame(&mut rng)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = simulator
}
criterion_main!(benches);
