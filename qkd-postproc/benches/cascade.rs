//! Cascade throughput: one block of n = 10^5 bits at QBER 2 % through both
//! machines in memory, per variant; and block parities on words against a
//! bit-by-bit loop.
//!
//! `cargo bench -p qkd-postproc --bench cascade -- --warm-up-time 1 --measurement-time 3`

use std::sync::Arc;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use qkd_core::device::binary_symmetric_channel;
use qkd_core::{BitVec, BlockId};
use qkd_postproc::cascade::{
    CascadeAlice, CascadeBob, CascadeConfig, CascadeParams, ShufflePlan, Variant, run_in_memory,
};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

const N: usize = 100_000;
const QBER: f64 = 0.02;

fn frame(rng: &mut ChaCha8Rng) -> (BitVec, BitVec) {
    let alice = BitVec::random(N, rng);
    let bob = binary_symmetric_channel(&alice, QBER, rng).expect("a valid QBER");
    (alice, bob)
}

fn frames(c: &mut Criterion) {
    let plan = Arc::new(ShufflePlan::new(N, 1).unwrap());
    plan.prepare(20);
    let mut group = c.benchmark_group("cascade_frame_n1e5_q2");
    group.sample_size(20);
    group.throughput(Throughput::Elements(N as u64));
    let cases: [(&str, Variant, bool); 4] = [
        ("original", Variant::Original, true),
        ("option7", Variant::Option7, true),
        ("option8", Variant::Option8, true),
        ("option8_eager", Variant::Option8, false),
    ];
    for (name, variant, idle) in cases {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        group.bench_function(name, |b| {
            b.iter_batched(
                || frame(&mut rng),
                |(a, k)| {
                    let mut params = CascadeParams::for_variant(variant, QBER, N).unwrap();
                    params.defer_until_idle = idle;
                    let config = CascadeConfig::new(params);
                    let block = BlockId::new(1);
                    let mut alice = CascadeAlice::new(block, a, plan.clone(), &config).unwrap();
                    let mut bob = CascadeBob::new(block, k, plan.clone(), &config).unwrap();
                    run_in_memory(&mut alice, &mut bob, Instant::now()).unwrap()
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

fn block_parities(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let key = BitVec::random(N, &mut rng);
    let k = 64;
    let mut group = c.benchmark_group("pass1_block_parities_n1e5_k64");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("words", |b| {
        b.iter(|| {
            (0..N.div_ceil(k))
                .map(|blk| key.parity(blk * k..((blk + 1) * k).min(N)))
                .collect::<BitVec>()
        });
    });
    group.bench_function("bit_loop_reference", |b| {
        b.iter(|| {
            (0..N.div_ceil(k))
                .map(|blk| (blk * k..((blk + 1) * k).min(N)).fold(false, |p, i| p ^ key.get(i)))
                .collect::<BitVec>()
        });
    });
    group.finish();
}

criterion_group!(benches, frames, block_parities);
criterion_main!(benches);
