//! Store throughput: take (owner) + lookup-and-delete (peer) of 256-bit keys,
//! against a naive reference (a `Mutex<BTreeMap>` per node) in the same run.
//!
//! `cargo bench -p qkd-keystore --bench store -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkd_core::{BlockId, KeyId, SecretKey};
use qkd_keystore::{Binding, KeyStore, StoreConfig, StoreRole};

const CHUNK: usize = 20_000;
const BLOCK: usize = 1 << 20;

fn paired(keys: usize) -> (KeyStore, KeyStore) {
    let now = Instant::now();
    let cfg = |r| StoreConfig::new("bench", r).with_borrow_low_water(0);
    let mut a = KeyStore::new(cfg(StoreRole::EvenChunks)).unwrap();
    let mut b = KeyStore::new(cfg(StoreRole::OddChunks)).unwrap();
    // a owns half of every block.
    let blocks = (keys * 32 * 2).div_ceil(BLOCK) + 1;
    for i in 0..blocks as u64 {
        let k = SecretKey::from_vec(vec![i as u8; BLOCK]);
        a.insert_block(now, BlockId::new(i + 1), k.clone()).unwrap();
        b.insert_block(now, BlockId::new(i + 1), k).unwrap();
    }
    let mut arrived = Vec::new();
    while let Some(n) = a.poll_notice() {
        b.apply(now, n, &mut arrived).unwrap();
    }
    while let Some(n) = b.poll_notice() {
        a.apply(now, n, &mut arrived).unwrap();
    }
    (a, b)
}

fn store_ops(c: &mut Criterion) {
    let mut g = c.benchmark_group("store");
    g.sample_size(10);
    let binding = Arc::new(Binding::pair("m", "s").unwrap());
    // 3 operations per key: take on the owner, lookup and delete on the peer.
    for batch in [1usize, 64] {
        g.throughput(Throughput::Elements(3 * batch as u64));
        g.bench_function(format!("take_lookup_delete_256bit/batch{batch}"), |bch| {
            bch.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                let now = Instant::now();
                let mut arrived = Vec::new();
                while left > 0 {
                    let n = left.min(CHUNK);
                    left -= n;
                    let (mut a, mut b) = paired(n * batch);
                    let t = Instant::now();
                    for _ in 0..n {
                        let keys = a.take(batch, 256, &binding).unwrap();
                        while let Some(notice) = a.poll_notice() {
                            b.apply(now, notice, &mut arrived).unwrap();
                        }
                        arrived.clear();
                        for (id, key) in keys {
                            let copy = b.lookup(&id, "s").unwrap().unwrap();
                            black_box(copy == key);
                        }
                        while b.poll_notice().is_some() {}
                    }
                    total += t.elapsed();
                }
                total
            });
        });
    }
    g.throughput(Throughput::Elements(3));
    g.bench_function("reference_btreemap_mutex/batch1", |bch| {
        bch.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(CHUNK);
                left -= n;
                let mut fill = BTreeMap::new();
                for i in 0..n as u64 {
                    fill.insert(
                        KeyId::for_block(b"bench", i / 1000, i % 1000),
                        vec![i as u8; 32],
                    );
                }
                let a = Mutex::new(fill.clone());
                let b = Mutex::new(fill);
                let t = Instant::now();
                for _ in 0..n {
                    let (id, key) = a.lock().unwrap().pop_first().unwrap();
                    let copy = b.lock().unwrap().remove(&id).unwrap();
                    black_box(copy == key);
                }
                total += t.elapsed();
            }
            total
        });
    });
    g.finish();
}

criterion_group!(benches, store_ops);
criterion_main!(benches);
