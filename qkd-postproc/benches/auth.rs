//! Wegman-Carter tagging throughput against BLAKE3 keyed hashing of the
//! same messages, and the per-message cost of sealing and opening through
//! `AuthenticatedChannel`.
//!
//! ```sh
//! cargo bench -p qkd-postproc --bench auth -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qkd_core::{Role, SecretKey};
use qkd_postproc::auth::{
    AuthenticatedChannel, ChannelConfig, HashKey, PoolConfig, PresharedSecret, SecretId, TagMode,
};

const SIZES: [(usize, &str); 3] = [(64, "64B"), (4096, "4KiB"), (1 << 20, "1MiB")];

fn message(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + 7) as u8).collect()
}

fn tagging(c: &mut Criterion) {
    let mut group = c.benchmark_group("auth_tag");
    group.sample_size(10);
    let key = HashKey::new(&[0x42; 16]);
    let pad = [0x17u8; 16];
    let blake_key = [0x42u8; 32];
    for (len, name) in SIZES {
        let msg = message(len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("polyval_wc_128", name), &msg, |b, m| {
            b.iter(|| key.tag(black_box(m), &pad).unwrap());
        });
        group.bench_with_input(BenchmarkId::new("polyval_wc_64", name), &msg, |b, m| {
            b.iter(|| key.tag(black_box(m), &pad[..8]).unwrap());
        });
        group.bench_with_input(BenchmarkId::new("blake3_keyed", name), &msg, |b, m| {
            b.iter(|| blake3::keyed_hash(&blake_key, black_box(m)));
        });
    }
    group.finish();
}

/// Seal on one end and open on the other, including pool bookkeeping and
/// the replay window; pools are refilled outside the timed region.
fn channel_round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("auth_channel");
    group.sample_size(10);
    const PER_PAIR: u64 = 50_000;
    let secret = SecretKey::from_vec(message(PER_PAIR as usize * 2 * 16 + 64));
    for (len, name) in [(64usize, "64B"), (4096, "4KiB")] {
        let msg = message(len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::new("seal_open_128", name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    // One checkpoint covers the whole pair's run, as a host
                    // checkpointing every few thousand messages would.
                    let config = ChannelConfig {
                        mode: TagMode::Bits128,
                        pool: PoolConfig {
                            checkpoint_units: 4 * PER_PAIR,
                            ..PoolConfig::default()
                        },
                        ..ChannelConfig::default()
                    };
                    let start = |role| {
                        let s = PresharedSecret::new(SecretId::new(1), secret.clone());
                        let (mut c, first) =
                            AuthenticatedChannel::new(role, s, config.clone()).unwrap();
                        c.commit(first).unwrap();
                        c
                    };
                    let mut a = start(Role::Alice);
                    let mut bob = start(Role::Bob);
                    let n = left.min(PER_PAIR);
                    let start = Instant::now();
                    for _ in 0..n {
                        let sealed = a.seal(black_box(&msg)).unwrap();
                        black_box(bob.open(&sealed).unwrap());
                    }
                    total += start.elapsed();
                    left -= n;
                }
                total
            });
        });
    }
    group.finish();
}

criterion_group!(benches, tagging, channel_round_trip);
criterion_main!(benches);
