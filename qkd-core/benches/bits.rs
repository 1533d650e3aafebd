//! Bit-vector hot paths against plain `Vec<bool>` references.
//!
//! `cargo bench -p qkd-core --bench bits`

#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkd_core::BitVec;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use std::hint::black_box;

const N: usize = 1_000_000;

fn parity(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let v = BitVec::random(N, &mut rng);
    let plain: Vec<bool> = v.iter().collect();
    let mut g = c.benchmark_group("parity_1e6_bits");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("bitvec_words", |b| b.iter(|| black_box(&v).parity(..)));
    // Unaligned range: both ends mid-word.
    g.bench_function("bitvec_words_unaligned", |b| {
        b.iter(|| black_box(&v).parity(3..N - 5))
    });
    g.bench_function("vec_bool_reference", |b| {
        b.iter(|| black_box(&plain).iter().fold(false, |acc, &x| acc ^ x))
    });
    g.finish();
}

fn hamming(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let a = BitVec::random(N, &mut rng);
    let b2 = BitVec::random(N, &mut rng);
    let pa: Vec<bool> = a.iter().collect();
    let pb: Vec<bool> = b2.iter().collect();
    let mut g = c.benchmark_group("hamming_1e6_bits");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("bitvec_words", |b| {
        b.iter(|| black_box(&a).hamming_distance(black_box(&b2)))
    });
    g.bench_function("bitvec_slices_unaligned", |b| {
        b.iter(|| {
            black_box(&a)
                .slice(7..N - 9)
                .hamming_distance(black_box(&b2).slice(7..N - 9))
        })
    });
    g.bench_function("vec_bool_reference", |b| {
        b.iter(|| {
            black_box(&pa)
                .iter()
                .zip(black_box(&pb))
                .filter(|(x, y)| x != y)
                .count()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = parity, hamming
}
criterion_main!(benches);
