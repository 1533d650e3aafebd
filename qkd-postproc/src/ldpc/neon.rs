//! The layer kernels of the decoder for aarch64 NEON: sum-product and
//! min-sum, 16 lanes per 128-bit vector of bytes (8 per vector of 16-bit
//! posteriors), bit-identical with the portable kernels of [`super::simd`].
//!
//! Each kernel does, lane by lane, exactly the update of the portable one
//! (see [`super::decode`]): `q = sat16(L − R)` by NEON's saturating
//! 16-bit subtract, the 8-bit view by a saturating narrow and a floor at
//! −127, magnitudes as absolute bytes, the box-plus of the sum-product rule
//! with [`CORRECTION`] looked up by one `TBL` (`vqtbl1q_u8`; an index of 16
//! or more reads 0, which is the table's last entry, so no clamp is needed,
//! a constant assertion below holds it to that), its index `(x + 1) >> 1` of
//! a sum `a + b` one rounding halving add (`vrhaddq_u8`), the new messages
//! signed by a bit select and added back with a saturating 16-bit add.
//! Min-sum keeps the first minimum on ties (strictly-less compare; on a
//! tie both minima are equal, so the output would not change either way)
//! and scales the minima with the same shifts and saturating offset.
//!
//! The lanes past the last multiple of 16 (a lifting `Z` that is not a
//! multiple of 16) go through the portable kernel on a compact copy of
//! those lanes (the lanes of a layer are independent, so the copy gives
//! the portable kernel's result for them). A layer of more than
//! `MAX_DEGREE` (256) entries, or a CPU without NEON, runs the portable
//! kernel on every lane.
//!
//! NEON is part of the aarch64 baseline; [`available`] still asks the CPU
//! at run time (`is_aarch64_feature_detected!`) and the vector functions
//! enable the feature themselves, so the choice of kernel reads the same as
//! for AVX2. On other targets the kernels here are the portable ones and
//! [`available`] is false.
//!
//! The `unsafe` code here: the two calls into the vector kernels (after
//! detection) and the handful of loads and stores, each on a
//! bounds-checked slice.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use super::simd::{self, CORRECTION, Scaling, Scratch};

/// The largest check degree (entries of a base row) the NEON kernels take:
/// min-sum records the position of the minimum in a byte, sum-product keeps
/// its forward chain in a fixed array of this many vectors.
#[cfg(target_arch = "aarch64")]
pub(crate) const MAX_DEGREE: usize = 256;

// The table lookup returns 0 for an index of 16 or more, where the
// portable code clamps the index to 15: the same only while the last entry
// is 0.
const _: () = assert!(CORRECTION[15] == 0);

/// Whether the NEON kernels can run on this CPU.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

/// One sum-product layer with NEON (the arguments of
/// [`simd::layer_sum_product_portable`]): lanes `0..16·⌊z/16⌋` by vectors,
/// the rest through the portable kernel. The portable kernel alone where
/// NEON is missing or `d` exceeds `MAX_DEGREE`.
pub(crate) fn layer_sum_product_neon(
    layer: &mut [i16],
    messages: &mut [i8],
    signs: &[i8],
    d: usize,
    z: usize,
    cap: u8,
    scratch: &mut Scratch,
) {
    layer_neon(layer, messages, signs, d, z, Rule::SumProduct(cap), scratch);
}

/// One min-sum layer with NEON (the arguments of
/// [`simd::layer_portable`]), split as [`layer_sum_product_neon`].
pub(crate) fn layer_min_sum_neon(
    layer: &mut [i16],
    messages: &mut [i8],
    signs: &[i8],
    d: usize,
    z: usize,
    scaling: Scaling,
    scratch: &mut Scratch,
) {
    layer_neon(layer, messages, signs, d, z, Rule::MinSum(scaling), scratch);
}

/// The check rule of a layer and its parameter.
#[derive(Clone, Copy)]
enum Rule {
    /// Sum-product with this message cap.
    SumProduct(u8),
    /// Offset min-sum with this scaling.
    MinSum(Scaling),
}

/// One layer under `rule`: the vector kernel on the whole vectors of
/// lanes, the portable kernel on the rest (or on all lanes where NEON is
/// missing or `d` exceeds `MAX_DEGREE`).
fn layer_neon(
    layer: &mut [i16],
    messages: &mut [i8],
    signs: &[i8],
    d: usize,
    z: usize,
    rule: Rule,
    scratch: &mut Scratch,
) {
    assert!(layer.len() >= d * z && messages.len() >= d * z && signs.len() >= z);
    let portable =
        |l: &mut [i16], m: &mut [i8], s: &[i8], w: usize, scratch: &mut Scratch| match rule {
            Rule::SumProduct(cap) => simd::layer_sum_product_portable(l, m, s, d, w, cap, scratch),
            Rule::MinSum(scaling) => simd::layer_portable(l, m, s, d, w, scaling, scratch),
        };
    #[cfg(target_arch = "aarch64")]
    {
        let full = z / 16 * 16;
        if full > 0 && d <= MAX_DEGREE && available() {
            match rule {
                // SAFETY: NEON was detected on this CPU just above; the
                // kernel checks every slice it indexes.
                Rule::SumProduct(cap) => unsafe {
                    arm::layer_sum_product(layer, messages, signs, d, z, full, cap);
                },
                // SAFETY: as above.
                Rule::MinSum(scaling) => unsafe {
                    arm::layer_min_sum(layer, messages, signs, d, z, full, scaling);
                },
            }
            if full < z {
                tail_portable(layer, messages, signs, d, z, full, |l, m, s, w| {
                    portable(l, m, s, w, scratch);
                });
            }
            return;
        }
    }
    portable(layer, messages, signs, z, scratch);
}

/// Runs `kernel(layer, messages, signs, w)` on a compact copy of lanes
/// `full..z` (`w = z − full` lanes, `d` rows) and writes the results back.
/// The copies hold posteriors derived from Bob's key: wiped after use.
#[cfg(target_arch = "aarch64")]
fn tail_portable(
    layer: &mut [i16],
    messages: &mut [i8],
    signs: &[i8],
    d: usize,
    z: usize,
    full: usize,
    kernel: impl FnOnce(&mut [i16], &mut [i8], &[i8], usize),
) {
    use zeroize::Zeroize;
    let w = z - full;
    let mut tail_layer = vec![0i16; d * w];
    let mut tail_messages = vec![0i8; d * w];
    for k in 0..d {
        tail_layer[k * w..(k + 1) * w].copy_from_slice(&layer[k * z + full..(k + 1) * z]);
        tail_messages[k * w..(k + 1) * w].copy_from_slice(&messages[k * z + full..(k + 1) * z]);
    }
    kernel(&mut tail_layer, &mut tail_messages, &signs[full..z], w);
    for k in 0..d {
        layer[k * z + full..(k + 1) * z].copy_from_slice(&tail_layer[k * w..(k + 1) * w]);
        messages[k * z + full..(k + 1) * z].copy_from_slice(&tail_messages[k * w..(k + 1) * w]);
    }
    tail_layer.zeroize();
    tail_messages.zeroize();
}

/// The vector code: every function enables NEON, so the register
/// intrinsics inside are safe calls and calling a kernel from outside is
/// `unsafe` (the caller has detected NEON); the loads and stores through
/// pointers are `unsafe` too, each on a slice whose length was checked.
#[cfg(target_arch = "aarch64")]
mod arm {
    use core::arch::aarch64::*;

    use super::super::simd::{CORRECTION, Scaling};
    use super::MAX_DEGREE;

    /// 16 posteriors at `s[at..at + 16]`, as two vectors of 8.
    #[target_feature(enable = "neon")]
    #[inline]
    fn load16(s: &[i16], at: usize) -> (int16x8_t, int16x8_t) {
        let (a, b) = s[at..at + 16].split_at(8);
        // SAFETY: `a` and `b` are 8 readable i16 each (one vector); the
        // load needs only the alignment of i16, which a slice has.
        unsafe { (vld1q_s16(a.as_ptr()), vld1q_s16(b.as_ptr())) }
    }

    /// Stores two vectors of 8 posteriors at `s[at..at + 16]`.
    #[target_feature(enable = "neon")]
    #[inline]
    fn store16(s: &mut [i16], at: usize, v0: int16x8_t, v1: int16x8_t) {
        let (a, b) = s[at..at + 16].split_at_mut(8);
        // SAFETY: `a` and `b` are 8 writable i16 each; the store needs only
        // the alignment of i16.
        unsafe {
            vst1q_s16(a.as_mut_ptr(), v0);
            vst1q_s16(b.as_mut_ptr(), v1);
        }
    }

    /// 16 bytes at `s[at..at + 16]`.
    #[target_feature(enable = "neon")]
    #[inline]
    fn load8(s: &[i8], at: usize) -> int8x16_t {
        let chunk = &s[at..at + 16];
        // SAFETY: `chunk` is 16 readable bytes (one vector).
        unsafe { vld1q_s8(chunk.as_ptr()) }
    }

    /// Stores 16 bytes at `s[at..at + 16]`.
    #[target_feature(enable = "neon")]
    #[inline]
    fn store8(s: &mut [i8], at: usize, v: int8x16_t) {
        let chunk = &mut s[at..at + 16];
        // SAFETY: `chunk` is 16 writable bytes (one vector).
        unsafe { vst1q_s8(chunk.as_mut_ptr(), v) }
    }

    /// [`CORRECTION`] in one vector, for `vqtbl1q_u8`.
    #[target_feature(enable = "neon")]
    #[inline]
    fn correction_table() -> uint8x16_t {
        // SAFETY: `CORRECTION` is an array of 16 readable bytes.
        unsafe { vld1q_u8(CORRECTION.as_ptr()) }
    }

    /// 16 posteriors (two vectors of 8) to bytes saturated to ±127, the
    /// portable `narrow`: a saturating narrow to −128..127, then −128
    /// raised to −127.
    #[target_feature(enable = "neon")]
    #[inline]
    fn narrow(q0: int16x8_t, q1: int16x8_t) -> int8x16_t {
        vmaxq_s8(vqmovn_high_s16(vqmovn_s16(q0), q1), vdupq_n_s8(-127))
    }

    /// 16 signed bytes to two vectors of 8 i16.
    #[target_feature(enable = "neon")]
    #[inline]
    fn widen(r: int8x16_t) -> (int16x8_t, int16x8_t) {
        (vmovl_s8(vget_low_s8(r)), vmovl_high_s8(r))
    }

    /// The magnitudes of 16 narrowed inputs (all in −127..127) as unsigned
    /// bytes.
    #[target_feature(enable = "neon")]
    #[inline]
    fn magnitude(q: int8x16_t) -> uint8x16_t {
        vreinterpretq_u8_s8(vabsq_s8(q))
    }

    /// `a ⊞ b` on 16 lanes of magnitudes (≤ 127), exactly the portable
    /// `boxplus`: `min + c(a + b) − c(max − min)`, floored at 0. The table
    /// index `(x + 1) >> 1` is the rounding halving add of the terms of
    /// `x`, and an index past 15 looks up 0, which is `CORRECTION[15]`.
    #[target_feature(enable = "neon")]
    #[inline]
    fn boxplus(a: uint8x16_t, b: uint8x16_t, table: uint8x16_t) -> uint8x16_t {
        let lo = vminq_u8(a, b);
        let hi = vmaxq_u8(a, b);
        let c_sum = vqtbl1q_u8(table, vrhaddq_u8(a, b));
        let c_diff = vqtbl1q_u8(table, vrhaddq_u8(vsubq_u8(hi, lo), vdupq_n_u8(0)));
        vqsubq_u8(vaddq_u8(lo, c_sum), c_diff)
    }

    /// The signed message: `mag` negated in the lanes where `sign ^ q` (the
    /// syndrome sign, the product of all input signs, the lane's own input
    /// sign) is negative.
    #[target_feature(enable = "neon")]
    #[inline]
    fn signed(mag: int8x16_t, sign: int8x16_t, q: int8x16_t) -> int8x16_t {
        vbslq_s8(vcltzq_s8(veorq_s8(sign, q)), vnegq_s8(mag), mag)
    }

    /// The new posteriors `sat16(q + r)` stored at `layer[at..at + 16]`
    /// and the messages `r` at `messages[at..at + 16]`.
    #[target_feature(enable = "neon")]
    #[inline]
    fn write_back(
        layer: &mut [i16],
        messages: &mut [i8],
        at: usize,
        q: (int16x8_t, int16x8_t),
        r: int8x16_t,
    ) {
        let (r0, r1) = widen(r);
        store16(layer, at, vqaddq_s16(q.0, r0), vqaddq_s16(q.1, r1));
        store8(messages, at, r);
    }

    /// `q = sat16(L − R)` of lanes `at..at + 16`, stored back into `layer`;
    /// returns it, 16-bit and narrowed.
    #[target_feature(enable = "neon")]
    #[inline]
    fn remove_message(
        layer: &mut [i16],
        messages: &[i8],
        at: usize,
    ) -> ((int16x8_t, int16x8_t), int8x16_t) {
        let (l0, l1) = load16(layer, at);
        let (r0, r1) = widen(load8(messages, at));
        let q0 = vqsubq_s16(l0, r0);
        let q1 = vqsubq_s16(l1, r1);
        store16(layer, at, q0, q1);
        ((q0, q1), narrow(q0, q1))
    }

    /// Lanes `0..full` (a multiple of 16, at most `z`) of one sum-product
    /// layer: the forward box-plus chain of each group of 16 lanes kept in
    /// registers spilled to a fixed array, then the backward chain giving
    /// every extrinsic magnitude, capped at `cap`.
    ///
    /// # Panics
    /// If `d` exceeds [`MAX_DEGREE`] or a slice is shorter than the
    /// lanes it indexes (the caller checks both).
    #[target_feature(enable = "neon")]
    pub(super) fn layer_sum_product(
        layer: &mut [i16],
        messages: &mut [i8],
        signs: &[i8],
        d: usize,
        z: usize,
        full: usize,
        cap: u8,
    ) {
        assert!(d <= MAX_DEGREE && full <= z);
        let table = correction_table();
        let zero = vdupq_n_u8(0);
        let top = vdupq_n_u8(127);
        let cap = vdupq_n_u8(cap);
        let mut forward = [zero; MAX_DEGREE];
        let mut j = 0;
        while j < full {
            let mut sign = load8(signs, j);
            let mut f = zero;
            for (k, slot) in forward[..d].iter_mut().enumerate() {
                let (_, q) = remove_message(layer, messages, k * z + j);
                sign = veorq_s8(sign, q);
                let a = magnitude(q);
                f = if k == 0 { a } else { boxplus(f, a, table) };
                *slot = f;
            }
            let mut back = zero;
            for k in (0..d).rev() {
                let at = k * z + j;
                let q16 = load16(layer, at);
                let q = narrow(q16.0, q16.1);
                let a = magnitude(q);
                let mag = match (k == 0, k + 1 == d) {
                    (true, true) => top,
                    (true, false) => back,
                    (false, true) => forward[k - 1],
                    (false, false) => boxplus(forward[k - 1], back, table),
                };
                let mag = vreinterpretq_s8_u8(vminq_u8(mag, cap));
                back = if k + 1 == d {
                    a
                } else {
                    boxplus(back, a, table)
                };
                write_back(layer, messages, at, q16, signed(mag, sign, q));
            }
            j += 16;
        }
    }

    /// Lanes `0..full` (a multiple of 16, at most `z`) of one min-sum
    /// layer: the two smallest magnitudes and the position of the first
    /// smallest, scaled as the portable `normalise`.
    ///
    /// # Panics
    /// As [`layer_sum_product`].
    #[target_feature(enable = "neon")]
    pub(super) fn layer_min_sum(
        layer: &mut [i16],
        messages: &mut [i8],
        signs: &[i8],
        d: usize,
        z: usize,
        full: usize,
        scaling: Scaling,
    ) {
        assert!(d <= MAX_DEGREE && full <= z);
        let zero = vdupq_n_s8(0);
        let top = vdupq_n_s8(127);
        // A negative count shifts right (arithmetic on signed lanes).
        let shift = vdupq_n_s8(-(scaling.shift as i8));
        let shift2 = vdupq_n_s8(-(scaling.shift2 as i8));
        let offset = vdupq_n_s8(scaling.offset as i8);
        let scale = |m: int8x16_t| {
            let mut s = vsubq_s8(m, vshlq_s8(m, shift));
            if scaling.shift2 != 0 {
                s = vsubq_s8(s, vshlq_s8(m, shift2));
            }
            vmaxq_s8(vqsubq_s8(s, offset), zero)
        };
        let mut j = 0;
        while j < full {
            let mut min1 = top;
            let mut min2 = top;
            let mut pos = vdupq_n_u8(0);
            let mut sign = load8(signs, j);
            for k in 0..d {
                let (_, q) = remove_message(layer, messages, k * z + j);
                let a = vabsq_s8(q);
                min2 = vminq_s8(min2, vmaxq_s8(min1, a));
                pos = vbslq_u8(vcgtq_s8(min1, a), vdupq_n_u8(k as u8), pos);
                min1 = vminq_s8(min1, a);
                sign = veorq_s8(sign, q);
            }
            let m1 = scale(min1);
            let m2 = scale(min2);
            for k in 0..d {
                let at = k * z + j;
                let q16 = load16(layer, at);
                let q = narrow(q16.0, q16.1);
                let mag = vbslq_s8(vceqq_u8(pos, vdupq_n_u8(k as u8)), m2, m1);
                write_back(layer, messages, at, q16, signed(mag, sign, q));
            }
            j += 16;
        }
    }
}

/// The NEON kernels against the portable ones, layer by layer and frame by
/// frame. They run on aarch64 only (elsewhere the NEON entry points are the
/// portable kernels): `.ci/aarch64` runs them under `qemu-aarch64`.
#[cfg(all(test, target_arch = "aarch64"))]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use qkd_core::BitVec;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{Rng, SeedableRng};

    use super::*;
    use crate::ldpc::decode::KNOWN;
    use crate::ldpc::{
        Backend, CheckRule, CodeSpec, Decoder, LdpcCode, MotherRate, SHIPPED_SEED,
        channel_magnitude,
    };

    /// xorshift64: the fill of the random layers (proptest draws the seed).
    struct Fill(u64);

    impl Fill {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// A posterior: near the 8-bit range (where narrowing matters),
        /// anything, the saturation bounds, a known bit, small values.
        fn posterior(&mut self) -> i16 {
            let x = self.next();
            let sign = if x & 256 == 0 { 1 } else { -1 };
            match x % 6 {
                0 => ((x >> 16) % 301) as i16 - 150,
                1 => (x >> 16) as i16,
                2 => sign * i16::MAX,
                3 => i16::MIN,
                4 => sign * KNOWN,
                _ => ((x >> 16) % 61) as i16 - 30,
            }
        }

        /// A message: mostly in ±127 as the decoder writes them, sometimes
        /// any byte (−128 included).
        fn message(&mut self) -> i8 {
            let x = self.next();
            if x.is_multiple_of(4) {
                (x >> 16) as i8
            } else {
                (((x >> 16) % 255) as i16 - 127) as i8
            }
        }

        /// A syndrome sign: 0 or −128 as the decoder writes them, or any
        /// byte (only the top bit may matter).
        fn sign(&mut self) -> i8 {
            let x = self.next();
            match x % 3 {
                0 => 0,
                1 => i8::MIN,
                _ => (x >> 16) as i8,
            }
        }
    }

    /// A random layer of `d` rows of `z` lanes: posteriors, messages, signs.
    fn random_layer(d: usize, z: usize, seed: u64) -> (Vec<i16>, Vec<i8>, Vec<i8>) {
        let mut fill = Fill(seed | 1);
        let layer = (0..d * z).map(|_| fill.posterior()).collect();
        let messages = (0..d * z).map(|_| fill.message()).collect();
        let signs = (0..z).map(|_| fill.sign()).collect();
        (layer, messages, signs)
    }

    /// Both sum-product kernels on copies of one layer: (portable, NEON).
    #[allow(clippy::type_complexity)] // two (posteriors, messages) pairs
    fn both_sum_product(
        d: usize,
        z: usize,
        cap: u8,
        (layer, messages, signs): (Vec<i16>, Vec<i8>, Vec<i8>),
    ) -> ((Vec<i16>, Vec<i8>), (Vec<i16>, Vec<i8>)) {
        let (mut l1, mut m1) = (layer.clone(), messages.clone());
        let (mut l2, mut m2) = (layer, messages);
        simd::layer_sum_product_portable(&mut l1, &mut m1, &signs, d, z, cap, &mut Scratch::new(z));
        layer_sum_product_neon(&mut l2, &mut m2, &signs, d, z, cap, &mut Scratch::new(z));
        ((l1, m1), (l2, m2))
    }

    /// Both min-sum kernels on copies of one layer: (portable, NEON).
    #[allow(clippy::type_complexity)] // two (posteriors, messages) pairs
    fn both_min_sum(
        d: usize,
        z: usize,
        scaling: Scaling,
        (layer, messages, signs): (Vec<i16>, Vec<i8>, Vec<i8>),
    ) -> ((Vec<i16>, Vec<i8>), (Vec<i16>, Vec<i8>)) {
        let (mut l1, mut m1) = (layer.clone(), messages.clone());
        let (mut l2, mut m2) = (layer, messages);
        simd::layer_portable(
            &mut l1,
            &mut m1,
            &signs,
            d,
            z,
            scaling,
            &mut Scratch::new(z),
        );
        layer_min_sum_neon(
            &mut l2,
            &mut m2,
            &signs,
            d,
            z,
            scaling,
            &mut Scratch::new(z),
        );
        ((l1, m1), (l2, m2))
    }

    #[test]
    fn neon_is_detected_and_chosen() {
        assert!(available());
        assert_eq!(Backend::detect(), Backend::Neon);
        assert!(Backend::Neon.is_available());
        let code = Arc::new(
            LdpcCode::build(CodeSpec {
                rate: MotherRate::from_index(0).unwrap(),
                n: 1 << 12,
                seed: SHIPPED_SEED,
            })
            .unwrap(),
        );
        assert_eq!(Decoder::new(code).backend(), Backend::Neon);
    }

    /// Every pair of magnitudes through the box-plus: a layer of degree 3
    /// whose middle output is `a_0 ⊞ a_2`, lane `t` holding
    /// `a_0 = t / 128`, `a_2 = t mod 128` (and the outer outputs box-plus
    /// `a_1` with each), signs at random, the portable kernel's result.
    #[test]
    fn boxplus_of_every_pair_matches_portable() {
        let z = 128 * 128;
        let mut fill = Fill(0x0b0c_5eed);
        let mut layer = vec![0i16; 3 * z];
        for t in 0..z {
            let flip = |v: i16, x: u64| if x & 1 == 1 { -v } else { v };
            layer[t] = flip((t / 128) as i16, fill.next());
            layer[z + t] = flip((fill.next() % 128) as i16, fill.next());
            layer[2 * z + t] = flip((t % 128) as i16, fill.next());
        }
        let signs: Vec<i8> = (0..z).map(|_| fill.sign()).collect();
        for cap in [127, 40] {
            let (portable, neon) =
                both_sum_product(3, z, cap, (layer.clone(), vec![0; 3 * z], signs.clone()));
            assert!(portable == neon, "cap {cap}");
        }
    }

    /// The largest degree the vectors take (256), one below, and one above
    /// (the portable fallback), with and without a tail of lanes.
    #[test]
    fn largest_degrees_match_portable() {
        for d in [255, 256, 257] {
            for z in [16, 33] {
                let seed = (d * 1000 + z) as u64;
                let (portable, neon) = both_sum_product(d, z, 127, random_layer(d, z, seed));
                assert!(portable == neon, "sum-product d={d} z={z}");
                let scaling = Scaling {
                    shift: 3,
                    shift2: 5,
                    offset: 1,
                };
                let (portable, neon) = both_min_sum(d, z, scaling, random_layer(d, z, seed));
                assert!(portable == neon, "min-sum d={d} z={z}");
            }
        }
    }

    /// A rotated-columns decode input: Alice's key through a BSC at `qber`,
    /// some punctured (0) and shortened (±127) positions.
    fn frame(code: &LdpcCode, qber: f64, seed: u64) -> (Vec<i8>, BitVec) {
        let n = code.n();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let key = BitVec::random(n, &mut rng);
        let threshold = (qber * 2f64.powi(32)) as u64;
        let magnitude = channel_magnitude(qber);
        let mut llrs: Vec<i8> = (0..n)
            .map(|i| {
                let flipped = u64::from(rng.next_u32()) < threshold;
                if key.get(i) != flipped {
                    -magnitude
                } else {
                    magnitude
                }
            })
            .collect();
        for (k, &v) in code.puncture_order().iter().take(n / 20).enumerate() {
            llrs[v as usize] = match (k % 2, key.get(v as usize)) {
                (0, _) => 0,
                (_, true) => -127,
                (_, false) => 127,
            };
        }
        (llrs, code.syndrome(&key))
    }

    /// The liftings of the shipped frame lengths (Z = 32, 64, 256: whole
    /// vectors of 16), every rung, rounds that stop early and ones that
    /// converge: the NEON decoder gives the portable decoder's outcome and
    /// posteriors.
    #[test]
    fn shipped_liftings_decode_as_portable() {
        for (n, qber) in [(1 << 13, 0.03), (1 << 14, 0.06), (1 << 16, 0.02)] {
            for rung in MotherRate::ladder() {
                let code = Arc::new(
                    LdpcCode::build(CodeSpec {
                        rate: rung,
                        n,
                        seed: SHIPPED_SEED,
                    })
                    .unwrap(),
                );
                let (llrs, syndrome) = frame(&code, qber, u64::from(rung.index()));
                let mut portable = Decoder::with_backend(Arc::clone(&code), Backend::Portable);
                let mut neon = Decoder::with_backend(Arc::clone(&code), Backend::Neon);
                assert_eq!(neon.backend(), Backend::Neon);
                for iterations in [3, 40] {
                    let a = portable.decode(&llrs, &syndrome, iterations).unwrap();
                    let b = neon.decode(&llrs, &syndrome, iterations).unwrap();
                    assert_eq!(a, b, "n={n} rung={}", rung.index());
                    assert!(portable.posteriors() == neon.posteriors());
                }
            }
        }
    }

    proptest! {
        /// One sum-product layer of any shape (lanes below, at and past a
        /// multiple of 16; degrees 1 to 64), any cap.
        #[test]
        fn sum_product_layer_matches_portable(d in 1usize..=64, z in 1usize..=100,
                                              cap in 1u8..=127, seed in any::<u64>()) {
            let (portable, neon) = both_sum_product(d, z, cap, random_layer(d, z, seed));
            prop_assert!(portable == neon);
        }

        /// One min-sum layer of any shape, any scaling the decoder accepts.
        #[test]
        fn min_sum_layer_matches_portable(d in 1usize..=64, z in 1usize..=100, shift in 1u8..=7,
                                          shift2 in 0u8..=7, offset in 0u8..=16,
                                          seed in any::<u64>()) {
            let scaling = Scaling { shift, shift2: if shift2 > shift { shift2 } else { 0 }, offset };
            let (portable, neon) = both_min_sum(d, z, scaling, random_layer(d, z, seed));
            prop_assert!(portable == neon);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whole decodes: the NEON decoder gives exactly the portable
        /// decoder's outcome and posteriors, either rule, every rung, Z
        /// from 4 to 71 (below, at and between multiples of 16).
        #[test]
        fn decoder_matches_portable(seed in any::<u64>(), rung in 0u8..9, n_mult in 4usize..72,
                                    qber in 0.005f64..0.12, iterations in 1u32..30,
                                    min_sum in any::<bool>(), message_max in 1u8..=127,
                                    shift in 1u8..=7, shift2 in 0u8..=7, offset in 0u8..=16) {
            let code = Arc::new(LdpcCode::build(CodeSpec {
                rate: MotherRate::from_index(rung).unwrap(),
                n: 256 * n_mult,
                seed,
            }).unwrap());
            let (llrs, syndrome) = frame(&code, qber, seed);
            let mut portable = Decoder::with_backend(Arc::clone(&code), Backend::Portable);
            let mut neon = Decoder::with_backend(Arc::clone(&code), Backend::Neon);
            for decoder in [&mut portable, &mut neon] {
                if min_sum {
                    decoder.set_rule(CheckRule::MinSum);
                    let shift2 = if shift2 > shift { shift2 } else { 0 };
                    decoder.set_scaling(shift, shift2, offset).unwrap();
                }
                decoder.set_message_max(message_max).unwrap();
            }
            let a = portable.decode(&llrs, &syndrome, iterations).unwrap();
            let b = neon.decode(&llrs, &syndrome, iterations).unwrap();
            prop_assert_eq!(a, b);
            prop_assert!(portable.posteriors() == neon.posteriors());
        }
    }
}

/// Off aarch64 the NEON backend is never available: asking for it gives
/// the portable decoder.
#[cfg(all(test, not(target_arch = "aarch64")))]
mod off_aarch64 {
    use std::sync::Arc;

    use crate::ldpc::{Backend, CodeSpec, Decoder, LdpcCode, MotherRate, SHIPPED_SEED};

    #[test]
    fn neon_falls_back_to_portable() {
        assert!(!super::available());
        assert!(!Backend::Neon.is_available());
        assert_ne!(Backend::detect(), Backend::Neon);
        let code = Arc::new(
            LdpcCode::build(CodeSpec {
                rate: MotherRate::from_index(0).unwrap(),
                n: 1 << 12,
                seed: SHIPPED_SEED,
            })
            .unwrap(),
        );
        assert_eq!(
            Decoder::with_backend(code, Backend::Neon).backend(),
            Backend::Portable
        );
    }
}
