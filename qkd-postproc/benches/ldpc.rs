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
//! `cargo bench -p qkd-postproc --bench ldpc -- --warm-up-time 1 --measurement-time 3`

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use qkd_core::BitVec;
use qkd_postproc::ldpc::{
    Backend, CodeCache, Decoder, RateChoice, SHIPPED_SEED, channel_magnitude, choose_plan,
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

criterion_group!(benches, decode);
criterion_main!(benches);
