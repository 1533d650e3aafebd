//! Rate adaptation: one mother code serves a range of QBER by puncturing
//! and shortening a fixed number `d` of its `n` positions; blind
//! reconciliation reveals them step by step.
//!
//! A frame of `n` bits holds `n − p − s` key bits, `p` punctured bits
//! (Alice's fresh random bits, unknown to Bob: LLR 0) and `s` shortened
//! bits (zero, known to both: LLR +127). Punctured positions are the first
//! `p` of the code's untainted puncturing order, shortened ones the last
//! `s` of the same order, so the two never meet.
//!
//! # Leakage
//! Alice sends the `m` syndrome bits. Because the punctured bits are
//! uniform, secret and discarded, and untainted puncturing gives the
//! punctured columns of `H` full rank, the syndrome tells Eve at most
//! `m − p` bits about the key. Every bit revealed later (a punctured bit's
//! value, then key bits) costs one more:
//!
//! ```text
//! leaked_bits = m − p + revealed,   key length = n − p − s,
//! f = leaked_bits / ((n − p − s) · h2(qber))
//! ```

use std::sync::Arc;

use qkd_core::{BitVec, h2};
use rand_core::Rng;

use super::LdpcError;
use super::code::{CodeCache, CodeSpec, LdpcCode, MotherRate};
use super::decode::LLR_MAX;

/// How a frame of one code is filled: `p` punctured and `s` shortened
/// positions, the rest key.
#[derive(Clone, Debug)]
pub struct FramePlan {
    code: Arc<LdpcCode>,
    punctured: usize,
    shortened: usize,
    rung: Option<MotherRate>,
    /// 0 = key, 1 = punctured, 2 = shortened.
    kind: Vec<u8>,
    /// Set at the key positions (gathers and scatters a word at a time).
    key_mask: BitVec,
    /// The punctured positions, ascending.
    punctured_at: Vec<u32>,
}

const KEY: u8 = 0;
const PUNCTURED: u8 = 1;
const SHORTENED: u8 = 2;

impl FramePlan {
    /// A plan with `punctured` and `shortened` positions.
    ///
    /// # Errors
    /// [`LdpcError::Config`] if `punctured` exceeds the untainted positions
    /// of the code or no key bit would be left.
    pub fn new(code: Arc<LdpcCode>, punctured: usize, shortened: usize) -> Result<Self, LdpcError> {
        let n = code.n();
        if punctured > code.untainted() {
            return Err(LdpcError::Config {
                field: "ldpc.punctured",
                reason: "more than the code's untainted positions",
            });
        }
        if punctured + shortened >= n.saturating_sub(code.m()) {
            return Err(LdpcError::Config {
                field: "ldpc.shortened",
                reason: "punctured + shortened must stay below n − m",
            });
        }
        let order = code.puncture_order();
        let mut kind = vec![KEY; n];
        for &v in &order[..punctured] {
            kind[v as usize] = PUNCTURED;
        }
        for &v in &order[n - shortened..] {
            kind[v as usize] = SHORTENED;
        }
        let mut key_mask = BitVec::zeros(n);
        let mut punctured_at = Vec::with_capacity(punctured);
        for (v, &k) in kind.iter().enumerate() {
            match k {
                KEY => key_mask.set(v, true),
                PUNCTURED => punctured_at.push(v as u32),
                _ => {}
            }
        }
        Ok(FramePlan {
            code,
            punctured,
            shortened,
            rung: None,
            kind,
            key_mask,
            punctured_at,
        })
    }

    /// The plan of a ladder code with `punctured` and `shortened`
    /// positions, named by its rung (what the peer rebuilds from a
    /// [`PlanId`](super::PlanId) it was told).
    ///
    /// # Errors
    /// As [`CodeCache::get`] and [`FramePlan::new`].
    pub fn for_rung(
        cache: &mut CodeCache,
        spec: CodeSpec,
        punctured: usize,
        shortened: usize,
    ) -> Result<Self, LdpcError> {
        let code = cache.get(spec)?;
        let mut plan = FramePlan::new(code, punctured, shortened)?;
        plan.rung = Some(spec.rate);
        Ok(plan)
    }

    /// The code.
    #[must_use]
    pub fn code(&self) -> &Arc<LdpcCode> {
        &self.code
    }

    /// The ladder rung of the code, when the plan came from
    /// [`choose_plan`] (named on the wire so both sides check they agree).
    #[must_use]
    pub fn rung(&self) -> Option<MotherRate> {
        self.rung
    }

    /// Punctured positions.
    #[must_use]
    pub fn punctured(&self) -> usize {
        self.punctured
    }

    /// Shortened positions.
    #[must_use]
    pub fn shortened(&self) -> usize {
        self.shortened
    }

    /// Key bits per frame: `n − p − s`.
    #[must_use]
    pub fn key_len(&self) -> usize {
        self.code.n() - self.punctured - self.shortened
    }

    /// Leakage of the syndrome alone: `m − p`.
    #[must_use]
    pub fn syndrome_leakage(&self) -> usize {
        self.code.m() - self.punctured
    }

    /// The largest number of bits blind reconciliation may reveal: the
    /// punctured ones, then key bits up to half the key.
    #[must_use]
    pub fn max_reveal(&self) -> usize {
        self.punctured + self.key_len() / 2
    }

    /// Frame position of the `k`-th revealed bit: the punctured positions
    /// last-punctured first, then key positions in the order they would be
    /// shortened next (`k < max_reveal()`).
    #[must_use]
    pub fn reveal_position(&self, k: usize) -> Option<usize> {
        let order = self.code.puncture_order();
        if k >= self.max_reveal() {
            return None;
        }
        let v = if k < self.punctured {
            order[self.punctured - 1 - k]
        } else {
            order[self.code.n() - self.shortened - 1 - (k - self.punctured)]
        };
        Some(v as usize)
    }

    /// Alice's frame: her key at the key positions, fresh random bits from
    /// `rng` at the punctured ones, zeros at the shortened ones.
    ///
    /// # Errors
    /// [`LdpcError::Length`] if `key` is not `key_len()` bits.
    pub fn alice_frame<R: Rng + ?Sized>(
        &self,
        key: &BitVec,
        rng: &mut R,
    ) -> Result<BitVec, LdpcError> {
        if key.len() != self.key_len() {
            return Err(LdpcError::Length);
        }
        let mut frame = self.scatter(key);
        // One 64-bit draw per 64 punctured positions, in position order.
        let (mut random, mut left) = (0u64, 0u32);
        for &v in &self.punctured_at {
            if left == 0 {
                random = rng.next_u64();
                left = 64;
            }
            left -= 1;
            frame.set(v as usize, random & 1 == 1);
            random >>= 1;
        }
        Ok(frame)
    }

    /// Whether frame position `v` holds a key bit (neither punctured nor
    /// shortened); false beyond the frame.
    #[must_use]
    pub fn is_key_position(&self, v: usize) -> bool {
        self.kind.get(v) == Some(&KEY)
    }

    /// Guided reconciliation's request: the `count` key positions (neither
    /// punctured nor shortened) not set in `known` whose posteriors in
    /// `posteriors` (the `n` posteriors of a failed decoding,
    /// [`Decoder::posteriors`](super::Decoder::posteriors)) are weakest,
    /// ties to the lower position, in ascending order; fewer when fewer
    /// are left. A counting pass over the posteriors' magnitudes, no sort.
    ///
    /// With no punctured position the magnitudes, and so the positions,
    /// depend on the error pattern alone, not on the key (see
    /// [`Variant::Guided`](super::Variant::Guided)).
    ///
    /// # Errors
    /// [`LdpcError::Length`] if `posteriors` or `known` is not `n` long.
    pub fn least_reliable(
        &self,
        posteriors: &[i16],
        known: &BitVec,
        count: usize,
    ) -> Result<Vec<u32>, LdpcError> {
        let n = self.code.n();
        if posteriors.len() != n || known.len() != n {
            return Err(LdpcError::Length);
        }
        let open = |v: usize| self.kind[v] == KEY && !known.get(v);
        let mut histogram = vec![0u32; 1 << 15 | 1];
        for (v, p) in posteriors.iter().enumerate() {
            if open(v) {
                histogram[usize::from(p.unsigned_abs())] += 1;
            }
        }
        // The largest magnitude taken, and how many of it.
        let (mut cutoff, mut below) = (0usize, 0usize);
        while cutoff < histogram.len() && below + (histogram[cutoff] as usize) < count {
            below += histogram[cutoff] as usize;
            cutoff += 1;
        }
        let mut at_cutoff = count.saturating_sub(below);
        let mut chosen = Vec::with_capacity(count.min(n));
        for (v, p) in posteriors.iter().enumerate() {
            if !open(v) {
                continue;
            }
            let magnitude = usize::from(p.unsigned_abs());
            if magnitude < cutoff {
                chosen.push(v as u32);
            } else if magnitude == cutoff && at_cutoff > 0 {
                at_cutoff -= 1;
                chosen.push(v as u32);
            }
        }
        Ok(chosen)
    }

    /// The key bits of a frame.
    ///
    /// # Panics
    /// If `frame` is not `n` bits.
    #[must_use]
    pub fn key_of(&self, frame: &BitVec) -> BitVec {
        frame.select(&self.key_mask)
    }

    /// A frame with `key` at the key positions and zeros elsewhere (the
    /// inverse of [`Self::key_of`]), a word of the frame at a time.
    fn scatter(&self, key: &BitVec) -> BitVec {
        let key = key.as_bitslice();
        let mut words = Vec::with_capacity(self.key_mask.words().len());
        let mut next = 0;
        for &mask in self.key_mask.words() {
            let count = mask.count_ones() as usize;
            if count == 0 {
                words.push(0);
                continue;
            }
            let mut bits = key.load_bits(next, count);
            next += count;
            if mask == u64::MAX {
                words.push(bits);
                continue;
            }
            let (mut word, mut mask) = (0u64, mask);
            while mask != 0 {
                word |= (bits & 1) << mask.trailing_zeros();
                bits >>= 1;
                mask &= mask - 1;
            }
            words.push(word);
        }
        BitVec::from_words(words, self.code.n()).expect("the mask has n bits")
    }

    /// The syndrome `H·frame` of this plan's code
    /// ([`LdpcCode::syndrome`], with the frame's length checked).
    ///
    /// # Errors
    /// [`LdpcError::Length`] if `frame` is not `n` bits.
    pub fn syndrome(&self, frame: &BitVec) -> Result<BitVec, LdpcError> {
        if frame.len() != self.code.n() {
            return Err(LdpcError::Length);
        }
        Ok(self.code.syndrome(frame))
    }

    /// Bob's starting LLRs: `±magnitude` from his key bits, 0 at punctured
    /// positions, +127 at shortened ones.
    ///
    /// # Errors
    /// [`LdpcError::Length`] if `key` is not `key_len()` bits.
    pub fn bob_llrs(&self, key: &BitVec, magnitude: i8) -> Result<Vec<i8>, LdpcError> {
        if key.len() != self.key_len() {
            return Err(LdpcError::Length);
        }
        let frame = self.scatter(key);
        let words = frame.words();
        Ok(self
            .kind
            .iter()
            .enumerate()
            .map(|(v, &kind)| match kind {
                KEY => {
                    if (words[v / 64] >> (v % 64)) & 1 == 1 {
                        -magnitude
                    } else {
                        magnitude
                    }
                }
                PUNCTURED => 0,
                _ => LLR_MAX,
            })
            .collect())
    }
}

/// Parameters of rate selection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateChoice {
    /// Fraction of each frame that is punctured or shortened (`d/n`).
    pub modulated: f64,
    /// Efficiency the syndrome alone aims at.
    pub target_efficiency: f64,
}

impl Default for RateChoice {
    fn default() -> Self {
        RateChoice {
            modulated: 0.1,
            target_efficiency: 1.1,
        }
    }
}

/// The efficiency at which [`choose_plan`] picks the rung for a higher
/// target: the one `punctured_share` was measured at (blind, from 1.02).
/// Picked at a higher target, the rung shifts down the ladder at the same
/// QBER: at 1 % a start at 1.08 took the 0.898 rung (f 1.161, 100 frames)
/// where the 0.914 rung chosen at 1.02 and started at 1.08 gives 1.135.
pub const RUNG_EFFICIENCY: f64 = 1.02;

/// Chooses the mother code and the split of `d = modulated·n` positions
/// into punctured and shortened so that the syndrome leaks
/// `target_efficiency · h2(qber)` per key bit: `p = m − f·h2·(n − d)`.
/// Among the rungs where that `p` fits in `0..=min(d, untainted)`, the one
/// with `p` nearest its preferred share of `d` wins (six tenths for the
/// rungs of Elkouss et al. 2009, a quarter for the rungs designed here up
/// to 0.9 and an eighth above, see `MotherRate::punctured_share`): a rung
/// used near either end of its range does worse. Rungs are given only
/// frames of at least their `MotherRate::shortest_frame`. Measured with the sum-product decoder, blind, n = 2^17,
/// 10 frames per QBER 1–10 %: mean f 1.12 over the ten QBERs (worst 1.20)
/// against 1.15 (worst 1.24) when the rung that punctures least won, which
/// ran the 6 %, 7 % and 9 % frames almost only shortened; with the designed
/// rungs, a quarter rather than a half moved 2 % and 3 % to the next rung
/// up (f 1.10 and 1.08 against 1.12 and 1.10), and a quarter everywhere
/// made 6 %, 7 % and 9 % worse (1.20, 1.13, 1.15).
///
/// A target above [`RUNG_EFFICIENCY`] keeps the rung chosen at
/// `RUNG_EFFICIENCY` and punctures fewer positions (`p` from the target),
/// as long as that rung's syndrome reaches the target; otherwise the rung
/// is chosen at the target as above.
///
/// # Errors
/// [`LdpcError::Config`] for a QBER outside (0, 0.5), a modulated fraction
/// outside [0, 0.5), or a QBER no rung can serve.
pub fn choose_plan(
    cache: &mut CodeCache,
    n: usize,
    seed: u64,
    qber: f64,
    choice: RateChoice,
) -> Result<FramePlan, LdpcError> {
    check_choice(qber, choice)?;
    let d = (choice.modulated * n as f64).round() as usize;
    let need_at = |f: f64| f * h2(qber) * (n - d) as f64;
    let syndrome = |rate: MotherRate| ((1.0 - rate.rate()) * n as f64).round();
    // The rung whose punctured positions `p` for efficiency `f` sit
    // nearest its preferred share of `d` (see the function docs).
    let pick = |f: f64| {
        let mut best: Option<(f64, MotherRate, usize)> = None;
        let rungs =
            MotherRate::ladder().filter(|r| n >= r.shortest_frame(false) && !r.guided_only());
        for rate in rungs {
            let p = syndrome(rate) - need_at(f);
            if p < 0.0 {
                continue;
            }
            let p = p.round() as usize;
            if p > d {
                continue;
            }
            let score = (p as f64 - d as f64 * rate.punctured_share()).abs();
            if best.is_none_or(|(s, _, _)| score < s) {
                best = Some((score, rate, p));
            }
        }
        best.map(|(_, rate, p)| (rate, p))
    };
    // Above RUNG_EFFICIENCY the rung is the one chosen there, punctured
    // less to start at the target, while its syndrome is long enough.
    let at_reference = (choice.target_efficiency > RUNG_EFFICIENCY)
        .then(|| pick(RUNG_EFFICIENCY))
        .flatten()
        .and_then(|(rate, _)| {
            let p = syndrome(rate) - need_at(choice.target_efficiency);
            (p >= 0.0).then(|| (rate, p.round() as usize))
        });
    let Some((rate, p)) = at_reference.or_else(|| pick(choice.target_efficiency)) else {
        return Err(LdpcError::Config {
            field: "ldpc.qber",
            reason: "no mother code serves this QBER",
        });
    };
    let code = cache.get(CodeSpec { rate, n, seed })?;
    let p = p.min(code.untainted());
    let mut plan = FramePlan::new(code, p, d - p)?;
    plan.rung = Some(rate);
    Ok(plan)
}

/// Chooses the plan of guided reconciliation ([`Variant::Guided`]): no
/// punctured position (so Bob's requests cannot depend on Alice's
/// punctured bits); each rung is shortened towards a start of
/// `target_efficiency · h2(qber)` per key bit (`s = n − m / (f·h2)`, at
/// most `modulated · n`, none when the rung's syndrome alone is longer)
/// and the rung whose start comes nearest the target wins (ties to the
/// higher rate), among those that start less than 0.1 below it (from
/// further below the requests would have to carry the reconciliation). Nearest, not the first that reaches it: at QBER 2.5 %
/// the 0.852 rung starts at 0.975 with a tenth shortened, the 0.801 rung
/// at 1.18 unshortened (500 frames of 2^17 bits, when the rung that
/// reached the target won: f 1.182 in one round). Rungs are given only frames of at least their
/// `MotherRate::shortest_frame` (2^14 bits above rate 0.9).
///
/// The start matters less than in blind reconciliation, because a
/// request reveals the bits the decoder is least sure of: at QBER 1.5 %
/// on the 0.898 rung (30 frames of 2^17 bits, reveals of 0.5 % of
/// `key·h2(q)`), starts at f = 0.9, 0.95 and 1.0 ended at 1.055, 1.054 and
/// 1.061 after 31, 22 and 13 rounds; from 0.72 (QBER 2 % on the same rung)
/// 100 rounds were not enough. So the default start is 1.0.
///
/// [`Variant::Guided`]: super::Variant::Guided
///
/// # Errors
/// [`LdpcError::Config`] as [`choose_plan`], or for a QBER no rung can
/// serve.
pub fn choose_guided_plan(
    cache: &mut CodeCache,
    n: usize,
    seed: u64,
    qber: f64,
    choice: RateChoice,
) -> Result<FramePlan, LdpcError> {
    check_choice(qber, choice)?;
    let d = (choice.modulated * n as f64).round() as usize;
    let h = h2(qber);
    let per_key_bit = choice.target_efficiency * h;
    // Each rung shortened towards the target (`s` positions start at
    // m / ((n − s)·h2)), scored by how far its start stays from it.
    let mut best: Option<(f64, MotherRate, usize)> = None;
    let top_down = MotherRate::ladder()
        .rev()
        .filter(|r| n >= r.shortest_frame(true));
    for rate in top_down {
        let m = ((1.0 - rate.rate()) * n as f64).round();
        let s = (n as f64 - m / per_key_bit).ceil().clamp(0.0, d as f64) as usize;
        if s as f64 >= n as f64 - m {
            continue;
        }
        let start = m / ((n - s) as f64 * h);
        if start <= choice.target_efficiency - 0.1 {
            // Far below the target even shortened: too many requests.
            continue;
        }
        let miss = (start - choice.target_efficiency).abs();
        if best.is_none_or(|(b, _, _)| miss < b) {
            best = Some((miss, rate, s));
        }
    }
    // None: every rung starts a tenth or more below the target (QBER above
    // about 11 %, where even the lowest rung shortened is too short).
    let Some((_, rate, s)) = best else {
        return Err(LdpcError::Config {
            field: "ldpc.qber",
            reason: "no mother code serves this QBER",
        });
    };
    FramePlan::for_rung(cache, CodeSpec { rate, n, seed }, 0, s)
}

/// A guided plan ([`choose_guided_plan`]'s kind: no punctured position)
/// holding exactly `key_len` key bits in a frame of `n`: the highest-rate
/// rung whose syndrome reaches `target_efficiency · h2(qber)` per key bit,
/// shortened to `n − key_len` (for the last, partial frame of a block; it
/// starts up to a rung's step above the target).
///
/// # Errors
/// [`LdpcError::Config`] as [`choose_plan`], or when no rung fits
/// `key_len` key bits in `n` at that start.
pub fn guided_plan_for_key(
    cache: &mut CodeCache,
    n: usize,
    seed: u64,
    qber: f64,
    choice: RateChoice,
    key_len: usize,
) -> Result<FramePlan, LdpcError> {
    check_choice(qber, choice)?;
    let need = choice.target_efficiency * h2(qber) * key_len as f64;
    let fits = |rate: MotherRate| {
        let m = ((1.0 - rate.rate()) * n as f64).round();
        n >= rate.shortest_frame(true) && m >= need && (m as usize) < key_len && key_len <= n
    };
    let Some(rate) = MotherRate::ladder().rev().find(|&r| fits(r)) else {
        return Err(LdpcError::Config {
            field: "ldpc.qber",
            reason: "no mother code fits this key length at this QBER",
        });
    };
    FramePlan::for_rung(cache, CodeSpec { rate, n, seed }, 0, n - key_len)
}

/// The ranges [`choose_plan`] and [`choose_guided_plan`] accept.
fn check_choice(qber: f64, choice: RateChoice) -> Result<(), LdpcError> {
    if !(qber > 0.0 && qber < 0.5) {
        return Err(LdpcError::Config {
            field: "ldpc.qber",
            reason: "must be in (0, 0.5)",
        });
    }
    let efficiency_ok = choice.target_efficiency >= 1.0 && choice.target_efficiency < 3.0;
    if !(0.0..0.5).contains(&choice.modulated) || !efficiency_ok {
        return Err(LdpcError::Config {
            field: "ldpc.rate_choice",
            reason: "modulated in [0, 0.5), target efficiency in [1, 3)",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ldpc::SHIPPED_SEED;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    /// The syndrome by its definition, one check at a time: bit `r·z + j`
    /// is the parity of bits `c·z + (j + s) mod z` over the entries `(c, s)`
    /// of base row `r` (the word-at-a-time `LdpcCode::syndrome` must agree).
    fn syndrome_bit_by_bit(code: &LdpcCode, frame: &BitVec) -> BitVec {
        let z = code.lifting();
        let mut out = BitVec::zeros(code.m());
        for r in 0..code.base_rows() {
            for j in 0..z {
                let mut p = false;
                for &(c, s) in code.row(r) {
                    p ^= frame.get(c as usize * z + (j + s as usize) % z);
                }
                out.set(r * z + j, p);
            }
        }
        out
    }

    /// A start above `RUNG_EFFICIENCY` keeps the rung chosen there
    /// (punctured less) while its syndrome reaches the target, else picks
    /// the rung at the target.
    #[test]
    fn the_rung_is_chosen_at_the_reference_efficiency() {
        let mut cache = CodeCache::new();
        let n = 1 << 17;
        let mut plan = |qber: f64, f: f64| {
            let choice = RateChoice {
                modulated: 0.1,
                target_efficiency: f,
            };
            let plan = choose_plan(&mut cache, n, SHIPPED_SEED, qber, choice).unwrap();
            (plan.rung().unwrap().index(), plan.punctured())
        };
        // QBER 1 %: the 0.914 rung (index 9) from 1.02, and from 1.08 and
        // 1.15 with fewer punctured positions (picked at 1.08 it was the
        // 0.898 rung); at 1.2 its syndrome is too short: picked at 1.2.
        let (rung, p102) = plan(0.01, 1.02);
        assert_eq!(rung, 9);
        let (rung, p108) = plan(0.01, 1.08);
        assert_eq!(rung, 9);
        assert!(p108 < p102);
        assert_eq!(plan(0.01, 1.15).0, 9);
        assert_eq!(plan(0.01, 1.2).0, 8);
        // QBER 5 %: the 0.699 rung (index 4) from 1.02 and 1.08.
        assert_eq!(plan(0.05, 1.02).0, 4);
        assert_eq!(plan(0.05, 1.08).0, 4);
        // Frames under 2^17 bits never get the rung above 0.9.
        let choice = RateChoice {
            modulated: 0.1,
            target_efficiency: 1.02,
        };
        let short = choose_plan(&mut cache, 1 << 16, SHIPPED_SEED, 0.01, choice).unwrap();
        assert_eq!(short.rung().unwrap().index(), 8);
    }

    /// The frame position by position, as `alice_frame` was first written:
    /// the word-at-a-time version must give the same bits from the same
    /// random draws.
    fn frame_bit_by_bit(plan: &FramePlan, key: &BitVec, rng: &mut ChaCha8Rng) -> BitVec {
        let mut frame = BitVec::zeros(plan.code().n());
        let (mut next, mut random, mut left) = (0, 0u64, 0u32);
        for (v, &kind) in plan.kind.iter().enumerate() {
            match kind {
                KEY => {
                    frame.set(v, key.get(next));
                    next += 1;
                }
                PUNCTURED => {
                    if left == 0 {
                        random = rng.next_u64();
                        left = 64;
                    }
                    left -= 1;
                    frame.set(v, random & 1 == 1);
                    random >>= 1;
                }
                _ => {}
            }
        }
        frame
    }

    #[test]
    fn word_at_a_time_frames_llrs_keys_and_syndromes_match_the_bitwise_ones() {
        let mut cache = CodeCache::new();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (n, qber, modulated) in [
            (1 << 12, 0.02, 0.1),
            (1 << 13, 0.05, 0.25),
            (1 << 12, 0.08, 0.05),
        ] {
            let choice = RateChoice {
                modulated,
                target_efficiency: 1.1,
            };
            let plan = choose_plan(&mut cache, n, SHIPPED_SEED, qber, choice).unwrap();
            let key = BitVec::random(plan.key_len(), &mut rng);
            let (mut r1, mut r2) = (rng.clone(), rng.clone());
            let frame = plan.alice_frame(&key, &mut r1).unwrap();
            assert_eq!(frame, frame_bit_by_bit(&plan, &key, &mut r2), "n {n}");
            assert_eq!(r1.next_u64(), r2.next_u64(), "the same draws");
            assert_eq!(plan.key_of(&frame), key);
            assert_eq!(
                plan.syndrome(&frame).unwrap(),
                syndrome_bit_by_bit(plan.code(), &frame)
            );
            let random = BitVec::random(n, &mut rng);
            assert_eq!(
                plan.syndrome(&random).unwrap(),
                syndrome_bit_by_bit(plan.code(), &random)
            );
            let llrs = plan.bob_llrs(&key, 9).unwrap();
            let mut next = 0;
            for (v, &kind) in plan.kind.iter().enumerate() {
                let want = match kind {
                    KEY => {
                        next += 1;
                        if key.get(next - 1) { -9 } else { 9 }
                    }
                    PUNCTURED => 0,
                    _ => LLR_MAX,
                };
                assert_eq!(llrs[v], want, "position {v}");
            }
            assert_eq!(plan.syndrome(&BitVec::zeros(n - 1)), Err(LdpcError::Length));
        }
    }

    /// The counting pass picks exactly what sorting the open key positions
    /// by (|posterior|, position) and taking the first `count` picks.
    #[test]
    fn least_reliable_takes_the_weakest_open_key_positions() {
        let mut cache = CodeCache::new();
        let n = 1 << 12;
        let spec = CodeSpec {
            rate: MotherRate::from_index(4).unwrap(),
            n,
            seed: SHIPPED_SEED,
        };
        let plan = FramePlan::for_rung(&mut cache, spec, 100, 300).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for round in 0..40 {
            // Few distinct magnitudes (ties) in some rounds, the full range
            // (i16::MIN included) in others.
            let spread = if round % 2 == 0 { 8 } else { 1 << 16 };
            let posteriors: Vec<i16> = (0..n)
                .map(|_| (rng.next_u32() % spread) as u16 as i16)
                .collect();
            let known = BitVec::random(n, &mut rng);
            let count = (rng.next_u32() % 3000) as usize;
            let got = plan.least_reliable(&posteriors, &known, count).unwrap();
            let mut open: Vec<(u16, u32)> = (0..n)
                .filter(|&v| plan.is_key_position(v) && !known.get(v))
                .map(|v| (posteriors[v].unsigned_abs(), v as u32))
                .collect();
            open.sort_unstable();
            let mut want: Vec<u32> = open.iter().take(count).map(|&(_, v)| v).collect();
            want.sort_unstable();
            assert_eq!(got, want, "round {round}");
        }
        let short = vec![0i16; n - 1];
        assert_eq!(
            plan.least_reliable(&short, &BitVec::zeros(n), 1),
            Err(LdpcError::Length)
        );
    }
}
