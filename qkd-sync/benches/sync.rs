//! Sync throughput: keys taken on node A, carried by the protocol (encode,
//! decode, ordered stream, acks) and looked up on node B, in one thread with a
//! perfect in-memory channel; against the bare stores with notices handed
//! over directly (no protocol), in the same run.
//!
//! `cargo bench -p qkd-sync --bench sync -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkd_core::machine::Machine;
use qkd_core::{BlockId, SecretKey};
use qkd_keystore::{Binding, KeyStore, StoreConfig, StoreRole};
use qkd_sync::{Lookup, SyncConfig, SyncNode};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const BATCH: usize = 256;
const ROUNDS: usize = 200;
const BLOCK: usize = 1 << 20;

fn store_cfg(r: StoreRole) -> StoreConfig {
    StoreConfig::new("bench", r).with_borrow_low_water(0)
}

fn pump(now: Instant, a: &mut SyncNode, b: &mut SyncNode) {
    loop {
        let mut moved = false;
        while let Some(m) = a.poll_transmit(now) {
            b.handle_input(now, &m).unwrap();
            moved = true;
        }
        while let Some(m) = b.poll_transmit(now) {
            a.handle_input(now, &m).unwrap();
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn nodes() -> (SyncNode, SyncNode) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let now = Instant::now();
    let cfg = |r| {
        let mut c = SyncConfig::new(store_cfg(r));
        c.max_message_len = qkd_sync::message::MAX_MESSAGE_LEN;
        c
    };
    let mut a = SyncNode::new(cfg(StoreRole::EvenChunks), &mut rng).unwrap();
    let mut b = SyncNode::new(cfg(StoreRole::OddChunks), &mut rng).unwrap();
    pump(now, &mut a, &mut b);
    let blocks = (BATCH * ROUNDS * 32 * 2).div_ceil(BLOCK) + 1;
    for i in 0..blocks as u64 {
        let k = SecretKey::from_vec(vec![i as u8; BLOCK]);
        a.insert_block(now, BlockId::new(i + 1), k.clone()).unwrap();
        b.insert_block(now, BlockId::new(i + 1), k).unwrap();
    }
    pump(now, &mut a, &mut b);
    (a, b)
}

fn stores() -> (KeyStore, KeyStore) {
    let now = Instant::now();
    let mut a = KeyStore::new(store_cfg(StoreRole::EvenChunks)).unwrap();
    let mut b = KeyStore::new(store_cfg(StoreRole::OddChunks)).unwrap();
    let blocks = (BATCH * ROUNDS * 32 * 2).div_ceil(BLOCK) + 1;
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

fn sync(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync");
    g.sample_size(10);
    g.throughput(Throughput::Elements((BATCH * ROUNDS) as u64));
    let binding = Arc::new(Binding::pair("m", "s").unwrap());
    g.bench_function("take_sync_lookup_256bit", |bch| {
        bch.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (mut a, mut b) = nodes();
                let now = Instant::now();
                let t = Instant::now();
                for _ in 0..ROUNDS {
                    let keys = a.take(BATCH, 256, &binding).unwrap();
                    pump(now, &mut a, &mut b);
                    for (id, key) in keys {
                        let Lookup::Ready(copy) = b.lookup(now, &id, "s").unwrap() else {
                            panic!("not delivered");
                        };
                        black_box(copy == key);
                    }
                }
                pump(now, &mut a, &mut b);
                total += t.elapsed();
            }
            total
        });
    });
    g.bench_function("reference_bare_stores_no_protocol", |bch| {
        bch.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (mut a, mut b) = stores();
                let now = Instant::now();
                let mut arrived = Vec::new();
                let t = Instant::now();
                for _ in 0..ROUNDS {
                    let keys = a.take(BATCH, 256, &binding).unwrap();
                    while let Some(n) = a.poll_notice() {
                        b.apply(now, n, &mut arrived).unwrap();
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
    g.finish();
}

criterion_group!(benches, sync);
criterion_main!(benches);
