//! Freed-memory scan (issue 11, finding 4): no heap block that held key
//! material is handed back to the allocator with the key still in it.
//!
//! A scanning global allocator checks every block freed (or moved by a
//! reallocation) on a thread that has armed it for a recognisable marker
//! that the test planted in the key: 32 high-entropy bytes, looked for as
//! packed bytes at every bit shift (16-byte windows) and spread to one byte
//! per bit (128-byte windows, the form of Cascade's gather buffer). Each
//! scenario runs Cascade (both sides), confirmation, Toeplitz hashing on
//! every product path and backend, the authentication pool and the key
//! store with keys that carry the marker, drops everything, and asserts
//! that no freed block held it.
//!
//! Scanning stays cheap: only the arming thread's blocks are scanned, only
//! while a scenario runs, only blocks up to [`MAX_SCANNED_BYTES`], with a
//! two-byte prefilter so that most offsets cost one table lookup.

// A `GlobalAlloc` impl is unsafe by nature; every unsafe block below says why
// it is sound.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use qkd_core::{BitVec, BlockId, Machine, Role, SecretKey};
use qkd_postproc::amplify::{Backend, Construction, ToeplitzHasher};
use qkd_postproc::auth::{
    AuthKeyPool, AuthenticatedChannel, ChannelConfig, Opened, PoolConfig, PresharedSecret, SecretId,
};
use qkd_postproc::cascade::{
    CascadeAlice, CascadeBob, CascadeConfig, CascadeParams, ShufflePlan, Variant, run_in_memory,
};
use qkd_postproc::confirm::{
    ConfirmAlice, ConfirmBob, ConfirmConfig, ConfirmEvent, ConfirmedBlock,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use zeroize::Zeroizing;

/// The marker planted in every key (bytes of a BLAKE3 output, typed in).
const MARKER: [u8; 32] = [
    0x9c, 0x3e, 0x71, 0xd4, 0x28, 0xb5, 0x0f, 0xe6, 0x5a, 0x93, 0xc1, 0x47, 0x2d, 0xf8, 0x86, 0x1b,
    0xe3, 0x54, 0xa9, 0x0c, 0x7f, 0xd2, 0x36, 0x8b, 0x41, 0xee, 0x15, 0x6a, 0xb7, 0x02, 0xcf, 0x98,
];
const MARKER_BITS: usize = 8 * MARKER.len();

/// Blocks larger than this are not scanned (none of the scenarios frees
/// key material in blocks this large).
const MAX_SCANNED_BYTES: usize = 64 << 20;

const PACKED_LEN: usize = 16;
const SPREAD_LEN: usize = 128;

/// What the scanner looks for, built once before any scenario arms it.
struct Needles {
    /// The marker shifted by 0..8 bits, two 16-byte windows per shift.
    packed: [[u8; PACKED_LEN]; 16],
    /// The marker at one byte per bit (bits 0..128 and 128..256).
    spread: [[u8; SPREAD_LEN]; 2],
    /// Bit `p` set when some needle starts with the two bytes `p` (LE).
    prefix: [u64; 1024],
}

impl Needles {
    fn build() -> Box<Needles> {
        let mut n = Box::new(Needles {
            packed: [[0; PACKED_LEN]; 16],
            spread: [[0; SPREAD_LEN]; 2],
            prefix: [0; 1024],
        });
        for s in 0..8 {
            // Bytes 1..32 of the marker shifted left by `s` bits are fully
            // determined by it.
            let shifted: Vec<u8> = (1..MARKER.len())
                .map(|k| {
                    let lo = if s == 0 { 0 } else { MARKER[k - 1] >> (8 - s) };
                    (MARKER[k] << s) | lo
                })
                .collect();
            n.packed[2 * s].copy_from_slice(&shifted[..PACKED_LEN]);
            n.packed[2 * s + 1].copy_from_slice(&shifted[shifted.len() - PACKED_LEN..]);
        }
        for (half, needle) in n.spread.iter_mut().enumerate() {
            for (j, byte) in needle.iter_mut().enumerate() {
                let bit = half * SPREAD_LEN + j;
                *byte = (MARKER[bit / 8] >> (bit % 8)) & 1;
            }
        }
        let starts: Vec<[u8; 2]> = n
            .packed
            .iter()
            .map(|p| [p[0], p[1]])
            .chain(n.spread.iter().map(|p| [p[0], p[1]]))
            .collect();
        for [a, b] in starts {
            let p = usize::from(u16::from_le_bytes([a, b]));
            n.prefix[p / 64] |= 1 << (p % 64);
        }
        n
    }

    /// Whether `block` holds any needle.
    fn found_in(&self, block: &[u8]) -> bool {
        if block.len() < PACKED_LEN {
            return false;
        }
        for i in 0..=block.len() - PACKED_LEN {
            let p = usize::from(u16::from_le_bytes([block[i], block[i + 1]]));
            if self.prefix[p / 64] >> (p % 64) & 1 == 0 {
                continue;
            }
            let rest = &block[i..];
            if self.packed.iter().any(|n| rest.starts_with(n))
                || self.spread.iter().any(|n| rest.starts_with(n))
            {
                return true;
            }
        }
        false
    }
}

static NEEDLES: OnceLock<Box<Needles>> = OnceLock::new();

thread_local! {
    /// Whether blocks freed on this thread are scanned.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    /// Freed blocks on this thread that held the marker, since arming.
    static HITS: Cell<usize> = const { Cell::new(0) };
    /// Size of the first such block.
    static FIRST_HIT_SIZE: Cell<usize> = const { Cell::new(0) };
    /// Bytes scanned since arming (to keep the test's cost in view).
    static SCANNED: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, with freed blocks scanned for the marker.
struct ScanningAllocator;

impl ScanningAllocator {
    /// Scans a block about to be freed, if this thread armed the scan.
    /// Allocates nothing.
    fn scan(ptr: *const u8, size: usize) {
        let armed = ARMED.try_with(Cell::get).unwrap_or(false);
        if !armed || size > MAX_SCANNED_BYTES {
            return;
        }
        let Some(needles) = NEEDLES.get() else {
            return;
        };
        // SAFETY: `ptr` is a live allocation of `size` bytes handed to
        // `dealloc`/`realloc` by its owner, who no longer uses it; every
        // allocation of this allocator comes from `System::alloc` or
        // `System::alloc_zeroed`, so its bytes are initialised as far as the
        // allocator is concerned (a freed `u8` buffer may hold stale but
        // initialised bytes; we only read them as `u8`).
        let block = unsafe { core::slice::from_raw_parts(ptr, size) };
        let _ = SCANNED.try_with(|s| s.set(s.get() + size));
        if needles.found_in(block) {
            let _ = HITS.try_with(|h| {
                if h.get() == 0 {
                    let _ = FIRST_HIT_SIZE.try_with(|f| f.set(size));
                }
                h.set(h.get() + 1);
            });
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's pointer and
// layout unchanged; the scan only reads a block before it is freed.
unsafe impl GlobalAlloc for ScanningAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        Self::scan(ptr, layout.size());
        // SAFETY: `ptr` was allocated by `System` with `layout` (all our
        // allocations are), as the caller guarantees for this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A reallocation is treated as "allocate, copy, free the old block"
        // whether or not the system could grow in place: code that grows a
        // buffer holding key bits must not rely on luck.
        let new_layout = match Layout::from_size_align(new_size, layout.align()) {
            Ok(l) => l,
            Err(_) => return core::ptr::null_mut(),
        };
        // SAFETY: `new_layout` has a non-zero size (the caller's contract
        // for `realloc`) and a valid alignment (checked above).
        let new = unsafe { System.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and at least
            // `min(old, new)` bytes long.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            // SAFETY: as `dealloc`; the old block is no longer used.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: ScanningAllocator = ScanningAllocator;

/// What one armed run saw.
#[derive(Debug)]
struct Scan {
    hits: usize,
    first_hit_size: usize,
    scanned_bytes: usize,
}

/// Runs `f` with the scan armed on this thread. `f` must drop everything it
/// creates: key material freed later would not be scanned.
fn scanned(f: impl FnOnce()) -> Scan {
    NEEDLES.get_or_init(Needles::build);
    HITS.with(|h| h.set(0));
    FIRST_HIT_SIZE.with(|h| h.set(0));
    SCANNED.with(|h| h.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    Scan {
        hits: HITS.with(Cell::get),
        first_hit_size: FIRST_HIT_SIZE.with(Cell::get),
        scanned_bytes: SCANNED.with(Cell::get),
    }
}

fn assert_clean(what: &str, scan: &Scan) {
    assert_eq!(
        scan.hits, 0,
        "{what}: {} freed block(s) still held the key (first: {} bytes); {scan:?}",
        scan.hits, scan.first_hit_size
    );
}

/// `n` random bits with the marker planted at every bit offset in
/// `offsets`.
fn marked_key(n: usize, offsets: &[usize], rng: &mut ChaCha20Rng) -> BitVec {
    let mut key = BitVec::random(n, rng);
    let marker = BitVec::from_bytes_lsb(&MARKER, MARKER_BITS).expect("whole bytes");
    for &at in offsets {
        let old = key.slice(at..at + MARKER_BITS).to_bitvec();
        key.xor_range_assign(at, old.as_bitslice());
        key.xor_range_assign(at, marker.as_bitslice());
    }
    key
}

#[test]
fn the_scanner_finds_the_marker_packed_shifted_and_spread() {
    // The scan must be able to fail: a plain Vec holding the key, freed
    // without zeroizing, is found in every form the test relies on.
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for at in [0, 3, 64, 1001] {
        let key = marked_key(4096, &[at], &mut rng);
        let scan = scanned(|| drop(key.to_bytes_lsb()));
        assert_eq!(scan.hits, 1, "packed at bit {at}");
        let shifted = key.slice(at % 8 + 5..).to_bitvec();
        let scan = scanned(|| drop(shifted.to_bytes_lsb()));
        assert_eq!(scan.hits, 1, "shifted, marker at bit {at}");
        let spread: Vec<u8> = key.iter().map(u8::from).collect();
        let scan = scanned(|| drop(spread));
        assert_eq!(scan.hits, 1, "spread at bit {at}");
        // Zeroized before the free: nothing found.
        let scan = scanned(|| drop(Zeroizing::new(key.to_bytes_lsb())));
        assert_eq!(scan.hits, 0);
        let scan = scanned(|| drop(key));
        assert_eq!(scan.hits, 0, "a dropped BitVec is zeroized");
    }
    // Random data without the marker is not found.
    let noise = BitVec::random(1 << 20, &mut rng);
    let scan = scanned(|| drop(noise.to_bytes_lsb()));
    assert_eq!(scan.hits, 0);
}

#[test]
fn finding_4_bitvec_growth_leaves_no_key_in_freed_buffers() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let key = marked_key(20_000, &[100, 9_001], &mut rng);
    let scan = scanned(|| {
        // push, one bit at a time from an empty vector.
        let mut pushed = BitVec::new();
        for b in key.iter() {
            pushed.push(b);
        }
        assert_eq!(pushed, key);
        // push_bits, 13 bits at a time.
        let mut by_thirteen = BitVec::new();
        let mut i = 0;
        while i < key.len() {
            let k = (key.len() - i).min(13);
            by_thirteen.push_bits(key.slice(i..).load_bits(0, k), k);
            i += k;
        }
        assert_eq!(by_thirteen, key);
        // FromIterator, with no size hint to reserve from.
        let collected: BitVec = key.iter().filter(|_| true).collect();
        assert_eq!(collected, key);
        // Extend, onto a vector that already holds part of the key.
        let mut extended = key.slice(..5_000).to_bitvec();
        extended.extend(key.slice(5_000..).iter().filter(|_| true));
        assert_eq!(extended, key);
        // extend_from_bitslice onto a vector without spare room.
        let mut appended = key.slice(..7_003).to_bitvec();
        appended.extend_from_bitslice(key.slice(7_003..));
        assert_eq!(appended, key);
        // Clone, truncate, clear, select.
        let mut copy = key.clone();
        copy.truncate(10_000);
        copy.clear();
        drop(key.select(&BitVec::ones(key.len())));
    });
    drop(key);
    assert_clean("BitVec growth", &scan);
}

#[test]
fn finding_4_cascade_leaves_no_key_in_freed_memory() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let n = 1 << 15;
    let offsets = [512, 8_195, 20_000];
    let alice_key = marked_key(n, &offsets, &mut rng);
    let scan = scanned(|| {
        for (t, variant) in [Variant::Original, Variant::Option8]
            .into_iter()
            .enumerate()
        {
            // Bob's key: 2 % errors, none inside a marker (so both sides hold
            // the marker from the start).
            let mut bob_key = alice_key.clone();
            for _ in 0..n / 50 {
                let i = ((u64::from(rng.next_u32()) * n as u64) >> 32) as usize;
                if !offsets.iter().any(|&o| (o..o + MARKER_BITS).contains(&i)) {
                    bob_key.flip(i);
                }
            }
            let plan = Arc::new(ShufflePlan::new(n, t as u64).unwrap());
            let params = CascadeParams::for_variant(variant, 0.02, n).unwrap();
            let config = CascadeConfig::new(params);
            let block = BlockId::new(t as u64);
            let mut alice =
                CascadeAlice::new(block, alice_key.clone(), plan.clone(), &config).unwrap();
            let mut bob = CascadeBob::new(block, bob_key, plan, &config).unwrap();
            run_in_memory(&mut alice, &mut bob, Instant::now()).unwrap();
            assert_eq!(bob.key(), alice.key(), "{variant:?} corrected the key");
        }
    });
    drop(alice_key);
    assert_clean("Cascade", &scan);
    assert!(scan.scanned_bytes > 0);
}

#[test]
fn finding_4_confirmation_leaves_no_key_in_freed_memory() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let key = marked_key(50_000, &[0, 777, 30_001], &mut rng);
    let scan = scanned(|| {
        let now = Instant::now();
        let config = ConfirmConfig::default();
        let mut alice =
            ConfirmAlice::new(BlockId::new(9), key.slice(..), &config, &mut rng, now).unwrap();
        let mut bob = ConfirmBob::new(BlockId::new(9), key.slice(..), &config).unwrap();
        for _ in 0..4 {
            while let Some(m) = alice.poll_transmit(now) {
                bob.handle_input(now, &m).unwrap();
            }
            while let Some(m) = bob.poll_transmit(now) {
                alice.handle_input(now, &m).unwrap();
            }
        }
        assert!(matches!(
            alice.poll_event(),
            Some(ConfirmEvent::Confirmed(_))
        ));
    });
    drop(key);
    assert_clean("confirmation", &scan);
}

#[test]
fn finding_4_amplification_leaves_no_key_in_freed_memory() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    // Schoolbook (16 input words), Karatsuba (63 and 94 words), the FFT
    // window product (10^4 bits) and the FFT with the wrapped top part
    // (10^5 bits), both constructions, every backend this CPU runs.
    let sizes = [
        (1_000, 500),
        (4_000, 2_000),
        (10_000, 5_000),
        (100_000, 50_000),
    ];
    let backends = [
        Backend::Portable,
        Backend::Pclmul,
        Backend::Avx512,
        Backend::Avx2,
    ];
    let keys: Vec<BitVec> = sizes
        .iter()
        .map(|&(n, _)| marked_key(n, &[8, n / 2 + 3, n - MARKER_BITS - 1], &mut rng))
        .collect();
    let seeds: Vec<BitVec> = sizes
        .iter()
        .map(|&(n, m)| BitVec::random(n + m - 1, &mut rng))
        .collect();
    let mut ran = 0;
    let scan = scanned(|| {
        for ((&(n, m), key), seed) in sizes.iter().zip(&keys).zip(&seeds) {
            for construction in [Construction::Standard, Construction::Modified] {
                for backend in backends.into_iter().filter(|b| b.is_available()) {
                    let hasher = ToeplitzHasher::new(n, m, construction)
                        .unwrap()
                        .with_backend(backend)
                        .unwrap();
                    let seed = seed.slice(..hasher.seed_bits());
                    let out = hasher.hash(seed, key.as_bitslice()).unwrap();
                    assert_eq!(out.len(), m);
                    ran += 1;
                }
            }
        }
    });
    drop(keys);
    assert_clean("amplification", &scan);
    assert!(ran >= 8);
}

/// Runs one honest confirmation of a small key as `block` and returns what
/// each side holds afterwards: the agreed block, on Alice's and Bob's side.
fn confirmed(block: u64) -> (ConfirmedBlock, ConfirmedBlock) {
    let mut rng = ChaCha20Rng::seed_from_u64(block);
    let key = BitVec::random(1024, &mut rng);
    let now = Instant::now();
    let config = ConfirmConfig::default();
    let block = BlockId::new(block);
    let mut alice = ConfirmAlice::new(block, key.slice(..), &config, &mut rng, now).unwrap();
    let mut bob = ConfirmBob::new(block, key.slice(..), &config).unwrap();
    let (mut got_a, mut got_b) = (None, None);
    for _ in 0..8 {
        while let Some(m) = alice.poll_transmit(now) {
            bob.handle_input(now, &m).unwrap();
        }
        while let Some(m) = bob.poll_transmit(now) {
            alice.handle_input(now, &m).unwrap();
        }
        while let Some(e) = alice.poll_event() {
            if let ConfirmEvent::Confirmed(c) = e {
                got_a = Some(c);
            }
        }
        while let Some(e) = bob.poll_event() {
            if let ConfirmEvent::Confirmed(c) = e {
                got_b = Some(c);
            }
        }
    }
    (
        got_a.expect("Alice confirmed"),
        got_b.expect("Bob confirmed"),
    )
}

#[test]
fn finding_4_auth_pool_leaves_no_key_in_freed_memory() {
    // The pre-shared secret and every deposit carry the marker in each
    // half (the pool splits deposits between the two pad streams).
    let bytes = |len: usize| {
        let mut b = Zeroizing::new(vec![0x5au8; len]);
        for at in [0, len / 4, len / 2, 3 * len / 4] {
            b[at..at + MARKER.len()].copy_from_slice(&MARKER);
        }
        SecretKey::from_slice(&b)
    };
    let secret = bytes(4096);
    let deposit = bytes(2048);
    // The blocks both sides agreed on, from real confirmations (only the
    // confirmation machine makes a ConfirmedBlock), before the scan starts.
    let agreed: Vec<(ConfirmedBlock, ConfirmedBlock)> = (1..=6).map(confirmed).collect();
    let psk = || PresharedSecret::new(SecretId::new(1), secret.clone());
    let scan = scanned(|| {
        let config = ChannelConfig::default();
        let started = |role| {
            let (mut channel, first) =
                AuthenticatedChannel::new(role, psk(), config.clone()).unwrap();
            channel.commit(first).unwrap();
            channel
        };
        let mut alice = started(Role::Alice);
        let mut bob = started(Role::Bob);
        let mut deposits = agreed.iter();
        for round in 0..40u64 {
            let sealed = alice.seal(&round.to_be_bytes()).unwrap();
            assert!(matches!(bob.open(&sealed), Ok(Opened::Data(_))));
            let sealed = bob.seal(b"ack").unwrap();
            assert!(matches!(alice.open(&sealed), Ok(Opened::Data(_))));
            if round % 10 == 9 {
                let (a, b) = deposits.next().unwrap();
                alice.replenish(a, &deposit).unwrap();
                bob.replenish(b, &deposit).unwrap();
            }
        }
        drop((alice, bob));
        let mut pool = AuthKeyPool::new(Role::Alice, psk(), PoolConfig::default()).unwrap();
        pool.replenish(&agreed[4].0, &deposit).unwrap();
        let (rest, _) = pool
            .replenish_from_block(&agreed[5].0, bytes(8192))
            .map_err(|(e, _)| e)
            .unwrap();
        drop(rest);
    });
    drop((secret, deposit));
    assert_clean("auth pool", &scan);
}

#[test]
fn finding_4_key_store_leaves_no_key_in_freed_memory() {
    use qkd_keystore::{Binding, KeyStore, StoreConfig};
    let block_key = || {
        let mut b = Zeroizing::new(vec![0xa5u8; 8192]);
        for at in (0..8192 - 64).step_by(96) {
            b[at..at + MARKER.len()].copy_from_slice(&MARKER);
        }
        SecretKey::from_slice(&b)
    };
    let keys = [block_key(), block_key(), block_key()];
    let scan = scanned(|| {
        let now = Instant::now();
        let cfg = |r| {
            StoreConfig::new("freed-memory", r)
                .with_chunk_bytes(1024)
                .with_borrow_low_water(0)
        };
        let mut a = KeyStore::new(cfg(qkd_keystore::StoreRole::EvenChunks)).unwrap();
        let mut b = KeyStore::new(cfg(qkd_keystore::StoreRole::OddChunks)).unwrap();
        let mut arrived = Vec::new();
        let binding = Arc::new(Binding::pair("m", "s").unwrap());
        for (block, key) in (1u64..).zip(&keys) {
            a.insert_block(now, BlockId::new(block), key.clone())
                .unwrap();
            b.insert_block(now, BlockId::new(block), key.clone())
                .unwrap();
            loop {
                let mut moved = false;
                while let Some(n) = a.poll_notice() {
                    b.apply(now, n, &mut arrived).unwrap();
                    moved = true;
                }
                while let Some(n) = b.poll_notice() {
                    a.apply(now, n, &mut arrived).unwrap();
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
            // Take keys on both nodes, look the peer's copies up, drop all;
            // one key per node larger than a chunk, gathered from pieces
            // of several chunks into one buffer on each node.
            let mut taken_a = a.take(8, 256, &binding).unwrap();
            let mut taken_b = b.take(8, 256, &binding).unwrap();
            taken_a.extend(a.take(1, 16_384, &binding).unwrap());
            taken_b.extend(b.take(1, 16_384, &binding).unwrap());
            while let Some(n) = a.poll_notice() {
                b.apply(now, n, &mut arrived).unwrap();
            }
            while let Some(n) = b.poll_notice() {
                a.apply(now, n, &mut arrived).unwrap();
            }
            for (id, _) in &taken_a {
                assert!(b.lookup(id, "s").unwrap().is_some());
            }
            for (id, _) in &taken_b {
                assert!(a.lookup(id, "s").unwrap().is_some());
            }
            drop((taken_a, taken_b));
        }
        // Expiry of the rest of one node's chunks, then a wipe of both.
        a.expire(now + a.config().key_ttl);
        a.wipe();
        b.wipe();
        drop((a, b));
        drop(arrived);
    });
    drop(keys);
    assert_clean("key store", &scan);
}
