//! Layered syndrome decoding with 16-bit posteriors and 8-bit messages:
//! sum-product (the default) or offset min-sum.
//!
//! Bob holds a noisy copy `y` of Alice's frame `x` and her syndrome
//! `s = H·x`; the decoder looks for the `x̂` with `H·x̂ = s` nearest to `y`.
//! Log-likelihood ratios `L(v) = ln P(x_v = 0) / P(x_v = 1)` are integers
//! in steps of 1/8 nat. The channel gives signed bytes: a key bit starts
//! at `±c` (the channel magnitude `8·ln((1 − q)/q)`, see
//! [`channel_magnitude`]), a punctured bit at 0, a shortened or revealed
//! bit at `±127` ([`LLR_MAX`]), which the decoder reads as known
//! (posterior `±`[`KNOWN`]). Posteriors are 16-bit, saturated to the
//! `i16` range; check-to-variable messages are bytes.
//!
//! One iteration visits the base rows in order (a layer is the `Z` checks
//! of one base row; in a quasi-cyclic code they share no variable, so they
//! are updated together, one lane each). For a check with syndrome bit
//! `s_i` and variables `v_1..v_d`:
//!
//! ```text
//! q_k   = sat16(L(v_k) − R_k)                    (remove the old message)
//! b_k   = sat8(q_k)                              (the check's 8-bit view)
//! R'_k  = (−1)^(s_i) · Π_{l≠k} sign(b_l) · M_k
//! L(v_k) = sat16(q_k + R'_k),   R_k = R'_k
//! ```
//!
//! where `sign(0) = +`, `sat16` clamps to `[−32768, 32767]` and `sat8` to
//! `[−127, 127]`. The magnitude `M_k` depends on the [`CheckRule`]:
//!
//! - [`CheckRule::SumProduct`] (default): `M_k = ⊞_{l≠k} |b_l|`, the
//!   box-plus `a ⊞ b = min(a, b) + c(a + b) − c(|a − b|)` on magnitudes with
//!   the correction `c(x) = 8·ln(1 + e^(−x/8))` from a 16-entry table
//!   indexed by `(x + 1) >> 1` (floored at 0; the exact belief-propagation
//!   rule to a rounding step), computed by a forward and a backward chain
//!   per check,
//!   then capped at the message limit ([`Decoder::set_message_max`],
//!   default [`DEFAULT_MESSAGE_MAX`]).
//!   The codes of the ladder are optimised for belief propagation and need
//!   it: min-sum decodes none of them near their thresholds.
//! - [`CheckRule::MinSum`]: `M_k = α · min_{l≠k} |b_l|`, computed as
//!   `max(0, m − (m >> 5) − 1)` (offset min-sum with a slight
//!   normalisation; the shifts and offset can be set with
//!   [`Decoder::set_scaling`]); faster, for codes designed for it.
//!
//! Why 16-bit posteriors: with 8-bit posteriors a high-degree variable's
//! evidence is clipped at 127, one strong message undoes it, and 2–4 % of
//! the frames diverged even at a generous f = 1.45 (thousands of wrong
//! bits); capping messages at 27 to protect clipped posteriors left a few
//! wrong bits in others. With 16-bit posteriors neither happens (the
//! `plan_probe` measurements are in BENCHMARKS.md), and the cap is no
//! longer needed.
//!
//! After each iteration the hard decisions
//! (`x̂_v = 1` iff `L(v) < 0`) are checked against the syndrome and decoding
//! stops on a match. Every operation is on integers and defined lane by
//! lane, so the portable, AVX2 and AVX-512 kernels ([`Backend`]) give the
//! same bits; property tests compare them.
//!
//! The AVX2 and AVX-512 sum-product kernels work on the posterior columns
//! in place (lane `t` of base entry `(c, s)` is variable
//! `c·Z + (s + t) mod Z`; a window of 32 lanes that wraps is two loads
//! blended, one of 64 a load and a masked load for the half that
//! straddles the column's end), the portable one and
//! min-sum on a layer buffer the rotated columns are copied into and back;
//! the lanes compute the same either way. The AVX-512 kernel (AVX-512 F
//! and BW, detected at run time, the default where present) needs a
//! lifting that is a multiple of 64; otherwise its decoder runs the AVX2
//! kernels. The in-place kernels and their parity check take every layer
//! of an iteration in one call, and the messages and the kernels' scratch
//! start on 64-byte boundaries (vectors straddling cache lines cost the
//! AVX-512 decoder 2–11 %, BENCHMARKS.md).
//!
//! On the binary symmetric channel every key bit has the same |LLR|; the
//! sum-product rule needs it on the scale of 1/8 nat, min-sum is invariant
//! to scaling up to its offset (which is in steps of 1/8 nat). Steps of
//! 1/8 nat rather than 1/4 (messages then reach 15.9 nats, ample for
//! the check rule) lowered the blind f by 0.01–0.03 from 4 % to 10 %
//! QBER and the frame error rate of every rung at f = 1.08 (BENCHMARKS.md).

use std::sync::Arc;

use qkd_core::BitVec;

use super::code::LdpcCode;
use super::simd;

/// Default normalisation shift: `α = 1 − 2^−5 = 31/32`.
pub const DEFAULT_SHIFT: u8 = 5;
/// Default second normalisation shift (0: none).
pub const DEFAULT_SHIFT2: u8 = 0;
/// Default offset subtracted after normalising.
pub const DEFAULT_OFFSET: u8 = 1;

/// Saturation bound of channel LLRs and messages; a channel LLR of
/// `±LLR_MAX` marks a bit the decoder knows (shortened or revealed).
pub const LLR_MAX: i8 = 127;

/// The posterior of a known bit (channel LLR `±LLR_MAX`): far above what
/// the messages of any column can sum to against it.
pub const KNOWN: i16 = 16_384;

/// Default cap of sum-product messages (see [`Decoder::set_message_max`]):
/// the byte range, no cap. Measured with `plan_probe` (BENCHMARKS.md):
/// with 16-bit posteriors caps of 40, 63 and 127 fail alike (0–2 frames
/// of 400), 27 leaves a few wrong bits in up to 2 % of the frames.
pub const DEFAULT_MESSAGE_MAX: u8 = 127;

/// Which layer kernel the decoder runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// Plain Rust, one lane at a time; runs everywhere.
    Portable,
    /// x86-64 AVX2, 32 lanes per instruction, detected at run time.
    Avx2,
    /// aarch64 NEON, 16 lanes per instruction, detected at run time
    /// (NEON hook, `neon.rs`).
    Neon,
    /// x86-64 AVX-512 BW, 64 lanes per instruction, detected at run time:
    /// the in-place sum-product kernel where the lifting is a multiple of
    /// 64, the AVX2 kernels otherwise.
    Avx512,
}

impl Backend {
    /// The fastest kernel this CPU runs.
    #[must_use]
    pub fn detect() -> Self {
        if simd::avx512_available() {
            Backend::Avx512
        } else if simd::avx2_available() {
            Backend::Avx2
        } else if super::neon::available() {
            Backend::Neon // NEON hook
        } else {
            Backend::Portable
        }
    }

    /// Whether this kernel can run here.
    #[must_use]
    pub fn is_available(self) -> bool {
        match self {
            Backend::Portable => true,
            Backend::Avx2 => simd::avx2_available(),
            Backend::Neon => super::neon::available(), // NEON hook
            Backend::Avx512 => simd::avx512_available(),
        }
    }
}

/// The channel LLR magnitude of a key bit at `qber`: `8·ln((1 − q)/q)`
/// rounded (LLRs in steps of 1/8 nat), from 1 to 126 (127,
/// [`LLR_MAX`], marks a known bit); 18 at 10 %, 37 at 1 %. A QBER outside
/// (0, 0.5) gives the nearest end.
#[must_use]
pub fn channel_magnitude(qber: f64) -> i8 {
    if qber.is_nan() || qber >= 0.5 {
        return 1;
    }
    if qber <= 0.0 {
        return LLR_MAX - 1;
    }
    (LLR_STEPS_PER_NAT * ((1.0 - qber) / qber).ln())
        .round()
        .clamp(1.0, f64::from(LLR_MAX - 1)) as i8
}

/// LLR steps per nat: messages are `round(8·LLR)`.
pub const LLR_STEPS_PER_NAT: f64 = 8.0;

/// How a check combines its inputs (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum CheckRule {
    /// Box-plus from a correction table: belief propagation to a rounding
    /// step.
    #[default]
    SumProduct,
    /// Offset min-sum ([`Decoder::set_scaling`]).
    MinSum,
}

/// An in-place sum-product kernel over a range of layers
/// (`simd::layers_sum_product_columns_*`).
type Kernel = fn(
    &mut [i16],
    &simd::CheckedRows,
    core::ops::Range<usize>,
    &mut [i8],
    &[i8],
    u8,
    bool,
    &mut simd::Scratch,
);

/// An in-place parity check over a range of layers
/// (`simd::layers_parity_fail_*`).
type Parity = fn(&[i16], &simd::CheckedRows, core::ops::Range<usize>, &[i8]) -> Option<usize>;

/// Result of one decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeOutcome {
    /// Whether the hard decisions matched the syndrome.
    pub converged: bool,
    /// Iterations run.
    pub iterations: u32,
}

/// A decoder for one code: message memory is allocated once and reused
/// for every frame. Its buffers are derived from Bob's key: `Debug` shows
/// the code and settings only, and they are wiped on drop.
pub struct Decoder {
    code: Arc<LdpcCode>,
    backend: Backend,
    /// Posteriors (16-bit), block column by block column, from
    /// `simd::COLUMN_MARGIN` on (the in-place kernel reads and writes past
    /// a column's ends where a rotated window wraps; the margins are never
    /// read as posteriors).
    posterior: Vec<i16>,
    /// Check-to-variable messages, base entry by base entry, lane by lane,
    /// from `message_start` on (a 64-byte boundary where the allocation
    /// allows: a base entry's `Z` messages then start on one when `Z` is a
    /// multiple of 64).
    messages: Vec<i8>,
    /// Where the messages start in `messages`.
    message_start: usize,
    /// Base entries before each base row (`base_rows + 1` of them): row
    /// `r`'s messages are entries `edge_start[r]..edge_start[r + 1]`.
    edge_start: Vec<usize>,
    /// One layer's rotated posteriors.
    layer: Vec<i16>,
    /// Syndrome sign masks (0 or −128), check by check.
    syndrome_signs: Vec<i8>,
    /// Per-layer scratch of the kernels (`Z` bytes each).
    scratch: simd::Scratch,
    scaling: simd::Scaling,
    rule: CheckRule,
    /// The largest magnitude of a sum-product message.
    message_max: u8,
    /// Which sum-product kernel can run in place on the posterior columns:
    /// AVX-512 for a lifting that is a multiple of 64 lanes, AVX2 for one
    /// that is a multiple of 32, with rows that list each column once.
    /// Otherwise (and for min-sum) the rotated columns are copied into
    /// `layer` and back around the kernel.
    columns: Columns,
    /// The rows as the in-place kernels take them (checked once).
    rows: Option<simd::CheckedRows>,
    /// Whether the posteriors and messages are those of a decoding that
    /// [`Decoder::resume`] may continue.
    resumable: bool,
}

/// The in-place kernel a decoder runs (see `Decoder::columns`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Columns {
    /// None: the layer buffer.
    No,
    /// `simd::layers_sum_product_columns_avx2`.
    Avx2,
    /// `simd::layers_sum_product_columns_avx512`.
    Avx512,
}

impl core::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Decoder")
            .field("n", &self.code.n())
            .field("rate", &self.code.rate())
            .field("backend", &self.backend)
            .field("rule", &self.rule)
            .field("message_max", &self.message_max)
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

/// LLR changes for [`Decoder::resume`], `(position, old, new)`: Bob's
/// bits and Alice's revealed ones, so wiped when cleared or dropped.
#[derive(Default)]
pub(crate) struct LlrChanges(pub(crate) Vec<(usize, i8, i8)>);

impl LlrChanges {
    /// Appends a change; a full list moves to a larger allocation through
    /// a copy and wipes the old one (a plain `Vec::push` would free it
    /// unwiped).
    pub(crate) fn push(&mut self, change: (usize, i8, i8)) {
        if self.0.len() == self.0.capacity() {
            let mut larger = Vec::with_capacity((self.0.capacity() * 2).max(64));
            larger.extend_from_slice(&self.0);
            self.wipe();
            self.0 = larger;
        }
        self.0.push(change);
    }

    /// Wipes the LLRs and empties the list.
    pub(crate) fn wipe(&mut self) {
        use zeroize::Zeroize;
        for (_, old, new) in &mut self.0 {
            old.zeroize();
            new.zeroize();
        }
        self.0.clear();
    }
}

impl Drop for LlrChanges {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl Drop for Decoder {
    /// Posteriors and messages are derived from Bob's key: wiped.
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.posterior.zeroize();
        self.messages.zeroize();
        self.layer.zeroize();
    }
}

impl Decoder {
    /// A decoder with the fastest available kernel.
    #[must_use]
    pub fn new(code: Arc<LdpcCode>) -> Self {
        Self::with_backend(code, Backend::detect())
    }

    /// A decoder with `backend` (the portable kernel if `backend` cannot
    /// run here).
    #[must_use]
    pub fn with_backend(code: Arc<LdpcCode>, backend: Backend) -> Self {
        let backend = if backend.is_available() {
            backend
        } else {
            Backend::Portable
        };
        let z = code.lifting();
        let max_d = (0..code.base_rows())
            .map(|r| code.row(r).len())
            .max()
            .unwrap_or(0);
        let rows = simd::CheckedRows::new((0..code.base_rows()).map(|r| code.row(r)), z);
        let messages = vec![0; code.edges() + 63];
        let message_start = simd::aligned_start(messages.as_ptr(), 64);
        let mut edge_start = vec![0; code.base_rows() + 1];
        for r in 0..code.base_rows() {
            edge_start[r + 1] = edge_start[r] + code.row(r).len();
        }
        Decoder {
            posterior: vec![0; code.n() + 2 * simd::COLUMN_MARGIN],
            messages,
            message_start,
            edge_start,
            layer: vec![0; max_d * z],
            syndrome_signs: vec![0; code.m()],
            scratch: simd::Scratch::new(z),
            scaling: simd::Scaling {
                shift: DEFAULT_SHIFT,
                shift2: DEFAULT_SHIFT2,
                offset: DEFAULT_OFFSET,
            },
            rule: CheckRule::default(),
            message_max: DEFAULT_MESSAGE_MAX,
            columns: if rows.is_none() {
                Columns::No
            } else if backend == Backend::Avx512 && simd::columns_kernel_fits_avx512(z) {
                Columns::Avx512
            } else if backend != Backend::Portable && simd::columns_kernel_fits(z) {
                Columns::Avx2
            } else {
                Columns::No
            },
            rows,
            code,
            backend,
            resumable: false,
        }
    }

    /// Sets the scaling of check messages: `α = 1 − 2^−shift − 2^−shift2`
    /// (shift 1 to 7, shift2 0 for none or above shift), then `offset`
    /// subtracted (at most 16); the defaults are
    /// [`DEFAULT_SHIFT`] and [`DEFAULT_OFFSET`].
    ///
    /// # Errors
    /// [`super::LdpcError::Config`] outside those ranges.
    pub fn set_scaling(
        &mut self,
        shift: u8,
        shift2: u8,
        offset: u8,
    ) -> Result<(), super::LdpcError> {
        if !(1..=7).contains(&shift)
            || (shift2 != 0 && !(shift + 1..=7).contains(&shift2))
            || offset > 16
        {
            return Err(super::LdpcError::Config {
                field: "ldpc.scaling",
                reason: "shift 1 to 7, offset at most 16",
            });
        }
        self.scaling = simd::Scaling {
            shift,
            shift2,
            offset,
        };
        self.resumable = false;
        Ok(())
    }

    /// Sets the check rule (default [`CheckRule::SumProduct`]).
    pub fn set_rule(&mut self, rule: CheckRule) {
        self.rule = rule;
        self.resumable = false;
    }

    /// Sets the largest magnitude of a sum-product check message, 1 to
    /// 127 (default [`DEFAULT_MESSAGE_MAX`]).
    ///
    /// # Errors
    /// [`super::LdpcError::Config`] outside 1 to 127.
    pub fn set_message_max(&mut self, max: u8) -> Result<(), super::LdpcError> {
        if !(1..=127).contains(&max) {
            return Err(super::LdpcError::Config {
                field: "ldpc.message_max",
                reason: "1 to 127",
            });
        }
        self.message_max = max;
        self.resumable = false;
        Ok(())
    }

    /// The check rule in use.
    #[must_use]
    pub fn rule(&self) -> CheckRule {
        self.rule
    }

    /// The code.
    #[must_use]
    pub fn code(&self) -> &Arc<LdpcCode> {
        &self.code
    }

    /// The kernel in use.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Decodes: `channel` holds the `n` starting LLRs (see the module
    /// docs), `syndrome` Alice's `m` syndrome bits. Stops after at most
    /// `max_iterations` iterations. The decisions are read with
    /// [`Self::decisions`].
    ///
    /// # Errors
    /// [`super::LdpcError::Length`] if `channel` or `syndrome` has the
    /// wrong length.
    pub fn decode(
        &mut self,
        channel: &[i8],
        syndrome: &BitVec,
        max_iterations: u32,
    ) -> Result<DecodeOutcome, super::LdpcError> {
        let code = Arc::clone(&self.code);
        self.resumable = false;
        if channel.len() != code.n() || syndrome.len() != code.m() {
            return Err(super::LdpcError::Length);
        }
        let columns = simd::COLUMN_MARGIN..simd::COLUMN_MARGIN + code.n();
        simd::start_posteriors(channel, &mut self.posterior[columns.clone()]);
        let in_place = if self.rule == CheckRule::SumProduct {
            self.columns
        } else {
            Columns::No
        };
        if in_place == Columns::No {
            // (The in-place kernels read no message in the first
            // iteration and write every one.)
            self.messages.fill(0);
        }
        simd::sign_bytes(syndrome.words(), &mut self.syndrome_signs);
        let outcome = self.iterate(max_iterations, true)?;
        // The in-place kernels write the messages in their first
        // iteration: without one, the messages are another frame's.
        self.resumable = outcome.iterations > 0 || in_place == Columns::No;
        Ok(outcome)
    }

    /// Continues the last decoding (same syndrome, messages kept) after
    /// the channel LLRs at some positions changed: each `(v, old, new)`
    /// moves posterior `v` by `new − old` (an LLR of ±[`LLR_MAX`] counts
    /// as ±[`KNOWN`], as [`Self::decode`] starts it). Guided
    /// reconciliation resumes after each reveal instead of starting over:
    /// the decoder is already near the answer (BENCHMARKS.md).
    ///
    /// # Errors
    /// [`super::LdpcError::Length`] for a position beyond the frame, and
    /// [`super::LdpcError::Config`] when there is no decoding to continue
    /// (none yet, or the rule or scaling changed since).
    pub fn resume(
        &mut self,
        changes: &[(usize, i8, i8)],
        max_iterations: u32,
    ) -> Result<DecodeOutcome, super::LdpcError> {
        if !self.resumable {
            return Err(super::LdpcError::Config {
                field: "ldpc.decoder",
                reason: "resume needs a decoding to continue",
            });
        }
        let n = self.code.n();
        if changes.iter().any(|&(v, _, _)| v >= n) {
            return Err(super::LdpcError::Length);
        }
        let start = |c: i8| i32::from(simd::start_posterior(c));
        for &(v, old, new) in changes {
            let p = &mut self.posterior[simd::COLUMN_MARGIN + v];
            let moved = i32::from(*p) - start(old) + start(new);
            *p = moved.clamp(
                -i32::from(simd::POSTERIOR_MAX),
                i32::from(simd::POSTERIOR_MAX),
            ) as i16;
        }
        self.iterate(max_iterations, false)
    }

    /// Runs up to `max_iterations` iterations on the current posteriors
    /// and messages; `fresh`: the messages are all zero (a new decoding).
    fn iterate(
        &mut self,
        max_iterations: u32,
        fresh: bool,
    ) -> Result<DecodeOutcome, super::LdpcError> {
        let code = Arc::clone(&self.code);
        let columns = simd::COLUMN_MARGIN..simd::COLUMN_MARGIN + code.n();
        let in_place = if self.rule == CheckRule::SumProduct {
            self.columns
        } else {
            Columns::No
        };
        let z = code.lifting();
        if self.syndrome_matches() {
            return Ok(DecodeOutcome {
                converged: true,
                iterations: 0,
            });
        }
        let m0 = self.message_start;
        let in_place_kernel = match in_place {
            Columns::No => None,
            Columns::Avx2 => Some(simd::layers_sum_product_columns_avx2 as Kernel),
            Columns::Avx512 => Some(simd::layers_sum_product_columns_avx512 as Kernel),
        };
        for it in 1..=max_iterations {
            if let (Some(kernel), Some(rows)) = (in_place_kernel, &self.rows) {
                // Every layer in one call.
                kernel(
                    &mut self.posterior,
                    rows,
                    0..code.base_rows(),
                    &mut self.messages[m0..m0 + code.edges()],
                    &self.syndrome_signs,
                    self.message_max,
                    fresh && it == 1,
                    &mut self.scratch,
                );
                if self.syndrome_matches() {
                    return Ok(DecodeOutcome {
                        converged: true,
                        iterations: it,
                    });
                }
                continue;
            }
            for r in 0..code.base_rows() {
                let row = code.row(r);
                let d = row.len();
                let layer = &mut self.layer[..d * z];
                for (k, &(c, s)) in row.iter().enumerate() {
                    let col =
                        &self.posterior[columns.clone()][c as usize * z..(c as usize + 1) * z];
                    let s = s as usize;
                    let dst = &mut layer[k * z..(k + 1) * z];
                    dst[..z - s].copy_from_slice(&col[s..]);
                    dst[z - s..].copy_from_slice(&col[..s]);
                }
                let (from, to) = (self.edge_start[r], self.edge_start[r + 1]);
                let messages = &mut self.messages[m0 + from * z..m0 + to * z];
                let signs = &self.syndrome_signs[r * z..(r + 1) * z];
                match (self.rule, self.backend) {
                    (CheckRule::SumProduct, Backend::Avx2 | Backend::Avx512) => {
                        simd::layer_sum_product_avx2(
                            layer,
                            messages,
                            signs,
                            d,
                            z,
                            self.message_max,
                            &mut self.scratch,
                        )
                    }
                    (CheckRule::SumProduct, Backend::Portable) => {
                        simd::layer_sum_product_portable(
                            layer,
                            messages,
                            signs,
                            d,
                            z,
                            self.message_max,
                            &mut self.scratch,
                        );
                    }
                    (CheckRule::MinSum, Backend::Avx2 | Backend::Avx512) => simd::layer_avx2(
                        layer,
                        messages,
                        signs,
                        d,
                        z,
                        self.scaling,
                        &mut self.scratch,
                    ),
                    // NEON hook: both rules' aarch64 kernels are in neon.rs.
                    (CheckRule::SumProduct, Backend::Neon) => super::neon::layer_sum_product_neon(
                        layer,
                        messages,
                        signs,
                        d,
                        z,
                        self.message_max,
                        &mut self.scratch,
                    ),
                    (CheckRule::MinSum, Backend::Neon) => super::neon::layer_min_sum_neon(
                        layer,
                        messages,
                        signs,
                        d,
                        z,
                        self.scaling,
                        &mut self.scratch,
                    ),
                    (CheckRule::MinSum, Backend::Portable) => simd::layer_portable(
                        layer,
                        messages,
                        signs,
                        d,
                        z,
                        self.scaling,
                        &mut self.scratch,
                    ),
                }
                for (k, &(c, s)) in row.iter().enumerate() {
                    let col =
                        &mut self.posterior[columns.clone()][c as usize * z..(c as usize + 1) * z];
                    let s = s as usize;
                    let src = &layer[k * z..(k + 1) * z];
                    col[s..].copy_from_slice(&src[..z - s]);
                    col[..s].copy_from_slice(&src[z - s..]);
                }
            }
            if self.syndrome_matches() {
                return Ok(DecodeOutcome {
                    converged: true,
                    iterations: it,
                });
            }
        }
        Ok(DecodeOutcome {
            converged: false,
            iterations: max_iterations,
        })
    }

    /// Whether the hard decisions of the posteriors satisfy every check;
    /// stops at the first layer that fails.
    fn syndrome_matches(&mut self) -> bool {
        let code = &self.code;
        let z = code.lifting();
        let fails = match self.columns {
            Columns::No => None,
            Columns::Avx2 => Some(simd::layers_parity_fail_avx2 as Parity),
            Columns::Avx512 => Some(simd::layers_parity_fail_avx512 as Parity),
        };
        if let (Some(fails), Some(rows)) = (fails, &self.rows) {
            return fails(
                &self.posterior,
                rows,
                0..code.base_rows(),
                &self.syndrome_signs,
            )
            .is_none();
        }
        let acc = &mut self.scratch.parity;
        for r in 0..code.base_rows() {
            for (a, &s) in acc.iter_mut().zip(&self.syndrome_signs[r * z..(r + 1) * z]) {
                *a = i16::from(s);
            }
            for &(c, s) in code.row(r) {
                let at = simd::COLUMN_MARGIN + c as usize * z;
                let col = &self.posterior[at..at + z];
                let s = s as usize;
                for (a, &p) in acc[..z - s].iter_mut().zip(&col[s..]) {
                    *a ^= p;
                }
                for (a, &p) in acc[z - s..].iter_mut().zip(&col[..s]) {
                    *a ^= p;
                }
            }
            if acc.iter().fold(0i16, |o, &a| o | a) < 0 {
                return false;
            }
        }
        true
    }

    /// The hard decisions of the last decoding: bit `v` is 1 iff its
    /// posterior is negative.
    #[must_use]
    pub fn decisions(&self) -> BitVec {
        let n = self.code.n();
        let mut words = vec![0u64; n.div_ceil(64)];
        simd::sign_words(self.posteriors(), &mut words);
        BitVec::from_words(words, n).expect("one word per 64 posteriors")
    }

    /// The posteriors of the last decoding (for tests and diagnostics).
    #[must_use]
    pub fn posteriors(&self) -> &[i16] {
        &self.posterior[simd::COLUMN_MARGIN..simd::COLUMN_MARGIN + self.code.n()]
    }
}
