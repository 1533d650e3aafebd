//! Cascade throughput: one block of n = 10^5 bits at QBER 2 % through both
//! machines in memory, per variant; a 10^6-bit block as the pipeline runs
//! it (15 chunks of 2^16 bits in lockstep); and block parities on words
//! against a bit-by-bit loop.
//!
//! `cargo bench -p qkd-postproc --bench cascade -- --warm-up-time 1 --measurement-time 3`

use std::sync::Arc;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use qkd_core::device::binary_symmetric_channel;
use qkd_core::machine::Machine;
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

/// The pipeline's shape: a 10^6-bit block as 15 chunks of 2^16 bits
/// (option 7, QBER 2 %), one machine pair per chunk on one shared plan,
/// advanced in lockstep (every chunk's messages of a turn, then the
/// answers), as `pipeline` drives them with one frame per turn.
fn chunks_in_lockstep(c: &mut Criterion) {
    const CHUNK: usize = 1 << 16;
    const CHUNKS: usize = 15;
    let plan = Arc::new(ShufflePlan::new(CHUNK, 5).unwrap());
    plan.prepare(20);
    let config =
        CascadeConfig::new(CascadeParams::for_variant(Variant::Option7, QBER, CHUNK).unwrap());
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut group = c.benchmark_group("cascade_block_15x65536_q2_lockstep");
    group.sample_size(10);
    group.throughput(Throughput::Elements((CHUNK * CHUNKS) as u64));
    group.bench_function("option7", |b| {
        b.iter_batched(
            || {
                (0..CHUNKS)
                    .map(|_| {
                        let alice = BitVec::random(CHUNK, &mut rng);
                        let bob = binary_symmetric_channel(&alice, QBER, &mut rng).unwrap();
                        (alice, bob)
                    })
                    .collect::<Vec<_>>()
            },
            |keys| {
                let now = Instant::now();
                let block = BlockId::new(1);
                let mut runs: Vec<_> = keys
                    .into_iter()
                    .map(|(a, k)| {
                        let alice = CascadeAlice::new(block, a, plan.clone(), &config).unwrap();
                        let bob = CascadeBob::new(block, k, plan.clone(), &config).unwrap();
                        (alice, bob, false)
                    })
                    .collect();
                while runs.iter().any(|(_, _, done)| !done) {
                    for (alice, bob, done) in runs.iter_mut().filter(|r| !r.2) {
                        while let Some(m) = bob.poll_transmit(now) {
                            alice.handle_input(now, &m).unwrap();
                        }
                        while let Some(m) = alice.poll_transmit(now) {
                            bob.handle_input(now, &m).unwrap();
                        }
                        while alice.poll_event().is_some() {}
                        *done = bob.poll_event().is_some();
                    }
                }
                runs
            },
            BatchSize::LargeInput,
        );
    });
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

criterion_group!(benches, frames, chunks_in_lockstep, block_parities);
criterion_main!(benches);
