//! Issue 11, finding 3: one small message made Cascade Alice allocate
//! hundreds of MiB (a shuffle built and cached for every pass number up to
//! 254). This test binary counts every allocation with a global allocator
//! and checks that what Alice holds stays within the bound documented in
//! `qkd_postproc::cascade` (section "Memory"), whatever her peer sends.
//!
//! One test function only: the counters are global to the process.

// The counting allocator is the one place that needs `unsafe`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use qkd_core::machine::Machine;
use qkd_core::{BitVec, BlockId};
use qkd_postproc::cascade::{
    CascadeAlice, CascadeConfig, CascadeError, CascadeMessage, CascadeParams, Question,
    SHUFFLE_BYTES_PER_KEY_BIT, ShufflePlan, Variant,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Bytes allocated and not freed yet, and the most there ever were.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

struct Counting;

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged and only updates two counters besides, so the
// `GlobalAlloc` contract holds exactly as it does for `System`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract for `layout`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this allocator)
        // with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `realloc`'s contract; `ptr` came from
        // `System` with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live bytes now, and resets the peak to them.
fn mark() -> usize {
    let now = LIVE.load(Ordering::SeqCst);
    PEAK.store(now, Ordering::SeqCst);
    now
}

fn questions(block: BlockId, key_len: u32, questions: Vec<Question>) -> Vec<u8> {
    CascadeMessage::Questions {
        block,
        round: 0,
        shuffle_seed: 1,
        key_len,
        questions,
    }
    .encode()
}

#[test]
fn finding_3_hostile_pass_numbers_leave_alice_memory_bounded() {
    let n: usize = 1 << 17;
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let key = BitVec::random(n, &mut rng);
    let config = CascadeConfig::new(CascadeParams::for_variant(Variant::Option7, 0.02, n).unwrap());
    let passes = config.params.passes();
    assert_eq!(passes, 14);
    let plan = Arc::new(ShufflePlan::new(n, 1).unwrap());
    let block = BlockId::new(9);
    let mut alice = CascadeAlice::new(block, key, plan, &config).unwrap();
    let now = Instant::now();

    // The documented bound on what a message can make Alice hold: the
    // shuffles of the agreed passes (in the shared plan), one packed copy
    // per pass and the last round (her own state), the spread buffer of a
    // copy being built (at most two bytes per key bit, for the build only),
    // and a little slack for the small vectors of a round.
    let bound = (passes - 1) as f64 * SHUFFLE_BYTES_PER_KEY_BIT * n as f64
        + (1 + passes) as f64 / 8.0 * n as f64
        + 2.0 * n as f64
        + 64.0 * 1024.0;

    // The message of the finding: 254 one-bit questions, one per pass
    // 1 ..= 254 (2 321 bytes). Before the fix Alice built and kept a
    // shuffle for each, about 15.6 bytes per key bit per pass: +496 MiB.
    let hostile = questions(
        block,
        n as u32,
        (1..=254)
            .map(|pass| Question {
                pass,
                start: 0,
                len: 1,
            })
            .collect(),
    );
    assert_eq!(hostile.len(), 2321);
    let before = mark();
    let result = alice.handle_input(now, &hostile);
    let held = LIVE.load(Ordering::SeqCst).saturating_sub(before);
    let peak = PEAK.load(Ordering::SeqCst).saturating_sub(before);
    assert!(
        peak as f64 <= bound,
        "a {}-byte message made Alice allocate {peak} bytes at the peak (bound {bound:.0})",
        hostile.len()
    );
    assert!(
        held as f64 <= bound,
        "Alice still holds {held} more bytes (bound {bound:.0})"
    );
    // Rejected, nothing disclosed, nothing kept.
    assert!(matches!(result, Err(CascadeError::Protocol { .. })));
    assert_eq!(alice.leaked_bits(), 0);
    assert!(held < 4096, "a rejected message left {held} bytes behind");

    // The most an honest-looking round can cost: long questions about every
    // agreed pass, so that each shuffle and each packed copy gets built.
    let widest = questions(
        block,
        n as u32,
        (0..passes as u8)
            .map(|pass| Question {
                pass,
                start: 0,
                len: n as u32 / 3,
            })
            .collect(),
    );
    let before = mark();
    alice.handle_input(now, &widest).unwrap();
    let held = LIVE.load(Ordering::SeqCst).saturating_sub(before);
    let peak = PEAK.load(Ordering::SeqCst).saturating_sub(before);
    assert_eq!(alice.leaked_bits(), passes as u64);
    assert!(
        peak as f64 <= bound,
        "a round over every agreed pass peaked at {peak} bytes (bound {bound:.0})"
    );
    // It did build most of that: the bound is not loose by an order of
    // magnitude.
    assert!(held as f64 > bound / 3.0, "{held} of {bound:.0}");
}
