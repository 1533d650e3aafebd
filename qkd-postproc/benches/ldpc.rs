//! LDPC decoding throughput: Bob's side of one frame (syndrome decoding,
//! layered sum-product on 8-bit messages and 16-bit posteriors, the
//! default rule) at QBER 2 %,
//! 3 % and 5 %, n = 2^14 and 2^16, the AVX-512 and AVX2 kernels against the
//! portable kernel in the same run.
//! Throughput is counted in reconciled key bits (`n − p − s`) per second.
//!
//! The rate of each frame is chosen for a syndrome efficiency of 1.45 so
//! that every frame decodes in one round (with 8-bit posteriors 2–5 % of
//! them diverged there; see `decode`'s docs); the number of
//! iterations, and so the time, grows as the rate approaches the code's
//! threshold.
//!
//! The `ldpc_reconcile` groups time one whole frame of n = 2^17 bits in
//! memory (`reconcile_in_memory`: Alice's frame and syndrome, Bob's
//! decodings and every reveal round) at QBER 1, 2 and 5 %, guided
//! reconciliation against blind in the same run: blind from f 1.02 with
//! reveals of 1 % of `key·h2(Q)` and 60 iterations a round, guided from
//! f 1.0 with requests of 0.5 % and 20-iteration resumes (`blind_table`'s
//! settings, BENCHMARKS.md).
//!
//! `cargo bench -p qkd-postproc --bench ldpc -- --warm-up-time 1 --measurement-time 3`

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use qkd_core::BitVec;
use qkd_core::h2;
use qkd_postproc::ldpc::{
    Backend, CodeCache, Decoder, RateChoice, SHIPPED_SEED, Settings, Variant, channel_magnitude,
    choose_guided_plan, choose_plan, reconcile_in_memory,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

fn noisy(key: &BitVec, qber: f64, rng: &mut ChaCha8Rng) -> BitVec {
    let mut bob = key.clone();
    let threshold = (qber * 2f64.powi(32)) as u64;
    for i in 0..key.len() {
        if u64::from(rng.next_u32()) < threshold {
            bob.flip(i);
        }
    }
    bob
}

fn decode(c: &mut Criterion) {
    let mut cache = CodeCache::new();
    for n in [1usize << 14, 1 << 16] {
        for qber in [0.02, 0.03, 0.05] {
            let choice = RateChoice {
                modulated: 0.1,
                target_efficiency: 1.45,
            };
            let plan = choose_plan(&mut cache, n, SHIPPED_SEED, qber, choice).unwrap();
            let mut group =
                c.benchmark_group(format!("ldpc_decode_n{n}_q{}", (qber * 100.0) as u32));
            group.sample_size(20);
            group.throughput(Throughput::Elements(plan.key_len() as u64));
            for backend in [
                Backend::Avx512,
                Backend::Avx2,
                Backend::Neon,
                Backend::Portable,
            ] {
                if !backend.is_available() {
                    continue;
                }
                let mut decoder = Decoder::with_backend(Arc::clone(plan.code()), backend);
                let mut rng = ChaCha8Rng::seed_from_u64(3);
                let (mut failures, mut frames) = (0u32, 0u32);
                group.bench_function(format!("{backend:?}"), |b| {
                    b.iter_batched(
                        || {
                            let alice = BitVec::random(plan.key_len(), &mut rng);
                            let bob = noisy(&alice, qber, &mut rng);
                            let frame = plan.alice_frame(&alice, &mut rng).unwrap();
                            let syndrome = plan.code().syndrome(&frame);
                            let llrs = plan.bob_llrs(&bob, channel_magnitude(qber)).unwrap();
                            (llrs, syndrome)
                        },
                        |(llrs, syndrome)| {
                            let out = decoder.decode(&llrs, &syndrome, 100).unwrap();
                            failures += u32::from(!out.converged);
                            frames += 1;
                            out
                        },
                        BatchSize::LargeInput,
                    );
                });
                assert!(
                    failures * 20 <= frames,
                    "{failures} of {frames} frames failed to decode"
                );
            }
            group.finish();
        }
    }
}

fn reconcile(c: &mut Criterion) {
    let mut cache = CodeCache::new();
    let n = 1usize << 17;
    for qber in [0.01, 0.02, 0.05] {
        let mut group =
            c.benchmark_group(format!("ldpc_reconcile_n{n}_q{}", (qber * 100.0) as u32));
        group.sample_size(10);
        for guided in [false, true] {
            let (plan, step_share) = if guided {
                let choice = RateChoice {
                    modulated: 0.1,
                    target_efficiency: 1.0,
                };
                let plan = choose_guided_plan(&mut cache, n, SHIPPED_SEED, qber, choice);
                (plan.unwrap(), 0.005)
            } else {
                let choice = RateChoice {
                    modulated: 0.1,
                    target_efficiency: 1.02,
                };
                (
                    choose_plan(&mut cache, n, SHIPPED_SEED, qber, choice).unwrap(),
                    0.01,
                )
            };
            let step = (plan.key_len() as f64 * h2(qber) * step_share).ceil() as usize;
            let variant = if guided {
                Variant::Guided {
                    step,
                    max_rounds: 200,
                    resume_iterations: 20,
                }
            } else {
                Variant::Blind {
                    step,
                    max_rounds: 100,
                }
            };
            let settings = Settings {
                qber,
                variant,
                max_iterations: 60,
            };
            group.throughput(Throughput::Elements(plan.key_len() as u64));
            let mut decoder = Decoder::new(Arc::clone(plan.code()));
            // Keys from one stream, Alice's punctured bits from another.
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let mut punctured = ChaCha8Rng::seed_from_u64(6);
            let (mut failures, mut frames) = (0u32, 0u32);
            let name = if guided { "guided" } else { "blind" };
            group.bench_function(name, |b| {
                b.iter_batched(
                    || {
                        let alice = BitVec::random(plan.key_len(), &mut rng);
                        let bob = noisy(&alice, qber, &mut rng);
                        (alice, bob)
                    },
                    |(alice, bob)| {
                        let out = reconcile_in_memory(
                            &plan,
                            &mut decoder,
                            &alice,
                            &bob,
                            settings,
                            &mut punctured,
                        )
                        .unwrap();
                        failures += u32::from(!out.keys_equal);
                        frames += 1;
                        out
                    },
                    BatchSize::LargeInput,
                );
            });
            assert_eq!(failures, 0, "{name}: {failures} of {frames} frames failed");
        }
        group.finish();
    }
}

criterion_group!(benches, decode, reconcile);
criterion_main!(benches);
