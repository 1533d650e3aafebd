//! The bit gather of [`BitVec::select`](crate::BitVec::select) with the BMI2
//! `pext` instruction: one instruction per 64-bit word instead of eight
//! table lookups. The only `unsafe` of the crate: calling a function
//! compiled for BMI2, after checking at run time that the CPU has it.
//!
//! AMD's Zen 1 and Zen 2 (CPU family 0x17) run `pext` in microcode, tens
//! to hundreds of cycles per word; there, and on any CPU without BMI2, the
//! portable table gather is used. Both give the same bits (property test
//! `pext_select_matches_the_table_gather` in `bits.rs`).
#![allow(unsafe_code)]

use crate::BitVec;

/// Whether the fast `pext` path is used on this machine (checked once;
/// there is none off x86_64).
#[cfg(target_arch = "x86_64")]
#[must_use]
pub(crate) fn fast_pext() -> bool {
    static FAST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAST.get_or_init(|| std::is_x86_feature_detected!("bmi2") && !microcoded_pext())
}

/// AMD family 0x17 (Zen 1, Zen 2): `pext` is microcoded there.
#[cfg(target_arch = "x86_64")]
fn microcoded_pext() -> bool {
    use core::arch::x86_64::__cpuid;
    // CPUID exists on every x86_64 CPU; leaves 0 and 1 are always valid.
    let (vendor, signature) = (__cpuid(0), __cpuid(1));
    let amd = vendor.ebx == u32::from_le_bytes(*b"Auth")
        && vendor.edx == u32::from_le_bytes(*b"enti")
        && vendor.ecx == u32::from_le_bytes(*b"cAMD");
    let base = (signature.eax >> 8) & 0xf;
    let family = if base == 0xf {
        base + ((signature.eax >> 20) & 0xff)
    } else {
        base
    };
    amd && family == 0x17
}

/// Appends to `out`, word by word, the bits of `words` where `masks` has
/// ones. Returns `false` (and appends nothing) where the fast path is not
/// available.
pub(crate) fn select_words(words: &[u64], masks: &[u64], out: &mut BitVec) -> bool {
    #[cfg(target_arch = "x86_64")]
    if fast_pext() {
        // SAFETY: `fast_pext` checked at run time that the CPU has BMI2,
        // the only target feature `gather_bmi2` is compiled with.
        unsafe { gather_bmi2(words, masks, out) };
        return true;
    }
    let _ = (words, masks, out);
    false
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2")]
fn gather_bmi2(words: &[u64], masks: &[u64], out: &mut BitVec) {
    use core::arch::x86_64::_pext_u64;
    for (&w, &m) in words.iter().zip(masks) {
        if m == 0 {
            continue;
        }
        out.push_bits(_pext_u64(w, m), m.count_ones() as usize);
    }
}
