//! The hardware boundary: what a QKD device hands to the post-processing, and
//! a seeded BB84 simulator that stands in for one.
//!
//! A vendor implements [`QkdDevice`] for each end of a link. The device
//! delivers [`RawFrame`]s: for Alice (the transmitter) the bit and basis she
//! prepared in every time slot; for Bob (the receiver) which slots produced a
//! detection, and the basis and bit he measured there. Sifting (in
//! `qkd-postproc`) compares bases over the authenticated channel and keeps the
//! slots where both used the same one.
//!
//! Bases are bits: `0` is the Z (rectilinear) basis, `1` the X (diagonal) one.
//!
//! [`SimulatedBb84`] produces both halves of such a link from one seed, with a
//! configurable QBER, detection probability (channel loss and detector
//! efficiency together), basis bias and frame size; [`SimulatedDevice`] wraps
//! one end of it as a [`QkdDevice`].
//!
//! ```
//! use qkd_core::{QkdDevice, Role, SimulatedBb84, SimulatorConfig};
//!
//! let config = SimulatorConfig { qber: 0.03, frame_slots: 1 << 16, seed: 1, ..Default::default() };
//! let mut alice = SimulatedBb84::device(config.clone(), Role::Alice).unwrap();
//! let mut bob = SimulatedBb84::device(config, Role::Bob).unwrap();
//! let a = alice.next_frame().unwrap().unwrap();
//! let b = bob.next_frame().unwrap().unwrap();
//! assert_eq!(a.block, b.block);
//! assert_eq!(a.values.len(), 1 << 16);
//! assert_eq!(b.values.len(), b.detections.as_ref().unwrap().count_ones());
//! ```

use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::{BitVec, BlockId, Error};

/// Which end of the link a device or protocol machine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The transmitter: prepares states, knows a bit and basis for every slot.
    Alice,
    /// The receiver: measures, knows bit and basis only where it detected.
    Bob,
}

impl Role {
    /// The other end.
    #[must_use]
    pub const fn peer(self) -> Role {
        match self {
            Role::Alice => Role::Bob,
            Role::Bob => Role::Alice,
        }
    }
}

/// One frame of raw data from a device.
///
/// Alice's frame has `detections == None` and one basis and value per slot.
/// Bob's frame has `detections == Some(d)` with `d.len() == slots`, and one
/// basis and value per detection, in slot order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    /// The block this frame starts: both ends number the same time window
    /// alike, and the block keeps this number through every later stage.
    pub block: BlockId,
    /// Number of time slots (sent pulses) the frame covers.
    pub slots: usize,
    /// Bob only: bit `s` is set when slot `s` produced a detection.
    pub detections: Option<BitVec>,
    /// Basis per recorded position: `0` = Z, `1` = X.
    pub bases: BitVec,
    /// Bit value per recorded position.
    pub values: BitVec,
}

impl RawFrame {
    /// Checks the length relations documented on the type.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] when a field's length does not match.
    pub fn validate(&self) -> Result<(), Error> {
        let expected = match &self.detections {
            None => self.slots,
            Some(d) => {
                if d.len() != self.slots {
                    return Err(Error::InvalidLength {
                        expected: self.slots,
                        actual: d.len(),
                    });
                }
                d.count_ones()
            }
        };
        for len in [self.bases.len(), self.values.len()] {
            if len != expected {
                return Err(Error::InvalidLength {
                    expected,
                    actual: len,
                });
            }
        }
        Ok(())
    }

    /// Number of recorded positions (slots for Alice, detections for Bob).
    #[must_use]
    pub fn recorded(&self) -> usize {
        self.values.len()
    }
}

/// Errors a device reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The device is not connected or stopped responding.
    #[error("device disconnected")]
    Disconnected,
    /// The device rejected its configuration.
    #[error("device configuration rejected: {0}")]
    Config(String),
    /// A vendor-specific failure.
    #[error("device failure: {0}")]
    Vendor(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One end of a QKD link, as the post-processing sees it.
///
/// `next_frame` may block until the hardware has a frame; it is called from the
/// application's own thread, never from a library crate. Frames must come in
/// increasing `block` order, and both ends must number the same time window
/// with the same ID.
pub trait QkdDevice {
    /// Which end this device is.
    fn role(&self) -> Role;

    /// The next frame, or `Ok(None)` when the device has stopped for good.
    ///
    /// # Errors
    /// A [`DeviceError`] when the hardware fails.
    fn next_frame(&mut self) -> Result<Option<RawFrame>, DeviceError>;
}

/// Configuration of [`SimulatedBb84`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SimulatorConfig {
    /// Probability that Bob's bit differs from Alice's where their bases match.
    pub qber: f64,
    /// Probability that a slot produces a detection at Bob (loss and detector
    /// efficiency together).
    pub detection_probability: f64,
    /// Probability that either side picks the Z basis (0.5 is unbiased BB84;
    /// larger values raise the sifting ratio, as in efficient BB84).
    pub z_basis_probability: f64,
    /// Time slots per frame.
    pub frame_slots: usize,
    /// Seed of the generator; the same seed gives the same frames.
    pub seed: u64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            qber: 0.03,
            detection_probability: 0.1,
            z_basis_probability: 0.5,
            frame_slots: 1 << 20,
            seed: 0,
        }
    }
}

/// Largest accepted frame, in slots.
pub const MAX_FRAME_SLOTS: usize = 1 << 32;

impl SimulatorConfig {
    /// Checks every field's domain.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the first bad field.
    pub fn validate(&self) -> Result<(), Error> {
        if !(0.0..=0.5).contains(&self.qber) {
            return Err(Error::invalid("qber", "must be in [0, 0.5]"));
        }
        if !(self.detection_probability > 0.0 && self.detection_probability <= 1.0) {
            return Err(Error::invalid("detection_probability", "must be in (0, 1]"));
        }
        if !(self.z_basis_probability > 0.0 && self.z_basis_probability < 1.0) {
            return Err(Error::invalid("z_basis_probability", "must be in (0, 1)"));
        }
        if self.frame_slots == 0 || self.frame_slots > MAX_FRAME_SLOTS {
            return Err(Error::invalid("frame_slots", "must be in 1..=2^32"));
        }
        Ok(())
    }
}

/// A probability quantized to 32 bits, for drawing 64 Bernoulli trials per
/// word: `P[bit = 1] = threshold / 2^32` (the configured value to within 2^-32).
#[derive(Clone, Copy, Debug)]
struct Bernoulli {
    threshold: u64,
}

impl Bernoulli {
    const BITS: u32 = 32;

    fn new(p: f64) -> Self {
        let scaled = (p * (1u64 << Self::BITS) as f64).round();
        Self {
            threshold: (scaled as u64).min(1u64 << Self::BITS),
        }
    }

    /// 64 independent trials. Each lane compares a uniform 32-bit fraction
    /// `U` with the threshold, most significant bit first: where the random
    /// bit is below the threshold bit the lane is decided `1` (`U < p`),
    /// where above it is decided `0`; equal lanes stay open. About half the
    /// open lanes close per random word, so all 64 are decided after about
    /// eight words instead of 32 (one word for `p = 1/2`). Lanes still open after 32 bits have
    /// `U = p`, so `U < p` is false: `P[m_i = 1] = threshold / 2^32` exactly.
    #[inline]
    fn word<R: Rng>(self, rng: &mut R) -> u64 {
        let t = self.threshold;
        if t == 0 {
            return 0;
        }
        if t >= 1u64 << Self::BITS {
            return u64::MAX;
        }
        // Bits of the threshold below its lowest set bit cannot turn an
        // open lane into a `1`: the comparison stops there.
        let steps = Self::BITS - t.trailing_zeros();
        let mut ones = 0u64;
        let mut open = u64::MAX;
        let mut step = |b: u32, ones: &mut u64, open: &mut u64| {
            let r = rng.next_u64();
            let tb = 0u64.wrapping_sub((t >> b) & 1);
            *ones |= *open & !r & tb;
            *open &= !(r ^ tb);
        };
        // A fixed, branch-free first stretch decides almost every lane
        // (each step halves the open ones) ...
        let first = steps.min(8);
        for i in 0..first {
            step(Self::BITS - 1 - i, &mut ones, &mut open);
        }
        // ... and the rare rest goes on while a lane is open.
        let mut i = first;
        while open != 0 && i < steps {
            step(Self::BITS - 1 - i, &mut ones, &mut open);
            i += 1;
        }
        ones
    }

    /// One trial from 32 random bits.
    #[inline]
    fn trial(self, r: u32) -> bool {
        u64::from(r) < self.threshold
    }
}

/// A seeded simulator of a BB84 link producing Alice's and Bob's raw frames.
///
/// Per slot: Alice draws a bit and a basis; the slot is detected with
/// `detection_probability`; Bob draws a basis; where the bases match Bob's
/// bit is Alice's flipped with probability `qber`, elsewhere it is uniform.
/// The generator is xoshiro256++ (fast, not cryptographic: this is a test
/// and demo device). Probabilities are quantized to multiples of 2^-32.
#[derive(Clone, Debug)]
pub struct SimulatedBb84 {
    config: SimulatorConfig,
    rng: Xoshiro256PlusPlus,
    next_block: u64,
    x_basis: Bernoulli,
    detection: Bernoulli,
    error: Bernoulli,
}

impl SimulatedBb84 {
    /// A simulator with a validated configuration.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if the configuration is out of range.
    pub fn new(config: SimulatorConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            rng: Xoshiro256PlusPlus::seed_from_u64(config.seed),
            next_block: 0,
            x_basis: Bernoulli::new(1.0 - config.z_basis_probability),
            detection: Bernoulli::new(config.detection_probability),
            error: Bernoulli::new(config.qber),
            config,
        })
    }

    /// One end of a simulated link as a [`QkdDevice`]. Two devices made from
    /// the same configuration (same seed) form a matching pair.
    ///
    /// # Errors
    /// As [`SimulatedBb84::new`].
    pub fn device(config: SimulatorConfig, role: Role) -> Result<SimulatedDevice, Error> {
        Ok(SimulatedDevice {
            sim: Self::new(config)?,
            role,
            frames_left: None,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &SimulatorConfig {
        &self.config
    }

    /// Generates the next frame of both ends: `(alice, bob)`.
    pub fn next_pair(&mut self) -> (RawFrame, RawFrame) {
        let slots = self.config.frame_slots;
        let nwords = slots.div_ceil(64);
        let mut a_values = Vec::with_capacity(nwords);
        let mut a_bases = Vec::with_capacity(nwords);
        let mut det_words = Vec::with_capacity(nwords);
        let expect = (slots as f64 * self.config.detection_probability * 1.01) as usize + 64;
        let mut b_values = BitVec::with_capacity(expect);
        let mut b_bases = BitVec::with_capacity(expect);
        let rng = &mut self.rng;
        let mut pool = 0u64;
        let mut pool_left = 0u32;
        for w in 0..nwords {
            let valid = if w + 1 == nwords && !slots.is_multiple_of(64) {
                (1u64 << (slots % 64)) - 1
            } else {
                u64::MAX
            };
            let av = rng.next_u64() & valid;
            let ab = self.x_basis.word(rng) & valid;
            let det = self.detection.word(rng) & valid;
            a_values.push(av);
            a_bases.push(ab);
            det_words.push(det);
            if det == 0 {
                continue;
            }
            // Bob's basis, error flips and the coins for mismatched bases, a
            // word each; Bob's bit in every lane, then the detected lanes are
            // compressed out.
            let bb = self.x_basis.word(rng);
            let coin = rng.next_u64();
            let same = !(ab ^ bb);
            // Errors matter only where a detection meets matching bases
            // (a few lanes per word): one 32-bit trial each.
            let mut flips = 0u64;
            let mut sifted = det & same;
            while sifted != 0 {
                let s = sifted.trailing_zeros();
                sifted &= sifted - 1;
                if pool_left == 0 {
                    pool = rng.next_u64();
                    pool_left = 2;
                }
                pool_left -= 1;
                flips |= u64::from(self.error.trial(pool as u32)) << s;
                pool >>= 32;
            }
            let bob = (same & (av ^ flips)) | (!same & coin);
            let mut vals = 0u64;
            let mut bases = 0u64;
            let mut n = 0;
            let mut d = det;
            while d != 0 {
                let s = d.trailing_zeros();
                d &= d - 1;
                vals |= ((bob >> s) & 1) << n;
                bases |= ((bb >> s) & 1) << n;
                n += 1;
            }
            b_values.push_bits(vals, n);
            b_bases.push_bits(bases, n);
        }
        let block = BlockId::new(self.next_block);
        self.next_block += 1;
        let words = |v: Vec<u64>| BitVec::from_words(v, slots).expect("word count matches slots");
        let alice = RawFrame {
            block,
            slots,
            detections: None,
            bases: words(a_bases),
            values: words(a_values),
        };
        let bob = RawFrame {
            block,
            slots,
            detections: Some(words(det_words)),
            bases: b_bases,
            values: b_values,
        };
        (alice, bob)
    }
}

/// One end of a [`SimulatedBb84`] link as a [`QkdDevice`].
///
/// It runs the whole simulation and keeps its own half, so two devices built
/// from the same configuration produce matching frames without sharing state.
#[derive(Clone, Debug)]
pub struct SimulatedDevice {
    sim: SimulatedBb84,
    role: Role,
    frames_left: Option<u64>,
}

impl SimulatedDevice {
    /// Stop after `frames` frames (`next_frame` then returns `Ok(None)`).
    #[must_use]
    pub fn with_frame_limit(mut self, frames: u64) -> Self {
        self.frames_left = Some(frames);
        self
    }
}

impl QkdDevice for SimulatedDevice {
    fn role(&self) -> Role {
        self.role
    }

    fn next_frame(&mut self) -> Result<Option<RawFrame>, DeviceError> {
        if let Some(left) = &mut self.frames_left {
            if *left == 0 {
                return Ok(None);
            }
            *left -= 1;
        }
        let (a, b) = self.sim.next_pair();
        Ok(Some(match self.role {
            Role::Alice => a,
            Role::Bob => b,
        }))
    }
}

/// Bob's copy of `key` after a binary symmetric channel: each bit flipped
/// independently with probability `qber`, drawn from the caller's `rng`.
///
/// The noisy-key model of error-correction tests, benchmarks and the
/// `qkd ec` tool (what [`SimulatedBb84`] does to the sifted bits, without
/// the rest of the link). The draws are fixed, so a seeded `rng` gives the
/// same key everywhere: one `next_u32` per bit, in bit order, and bit `i`
/// flips when that draw is below `⌊qber · 2^32⌋` (the probability is
/// `qber` quantized down to a multiple of 2^-32; exactly 0 and 1 at the
/// ends).
///
/// ```
/// use qkd_core::BitVec;
/// use qkd_core::device::binary_symmetric_channel;
/// use rand_chacha::ChaCha20Rng;
/// use rand_core::SeedableRng;
///
/// let mut rng = ChaCha20Rng::seed_from_u64(1);
/// let alice = BitVec::random(100_000, &mut rng);
/// let bob = binary_symmetric_channel(&alice, 0.02, &mut rng).unwrap();
/// let errors = alice.hamming_distance(&bob);
/// assert!((1_800..2_200).contains(&errors), "{errors}");
/// assert!(binary_symmetric_channel(&alice, f64::NAN, &mut rng).is_err());
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] naming `qber` unless it is a number in
/// `[0, 1]`.
pub fn binary_symmetric_channel<R: Rng + ?Sized>(
    key: &BitVec,
    qber: f64,
    rng: &mut R,
) -> Result<BitVec, Error> {
    if !(0.0..=1.0).contains(&qber) {
        return Err(Error::invalid(
            "qber",
            format!("must be a probability in [0, 1], got {qber}"),
        ));
    }
    // In [0, 2^32]: a draw below it has probability threshold / 2^32.
    let threshold = (qber * 2f64.powi(32)) as u64;
    let mut noisy = key.clone();
    for i in 0..key.len() {
        if u64::from(rng.next_u32()) < threshold {
            noisy.flip(i);
        }
    }
    Ok(noisy)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Statistics of a simulated run measured directly on the frames.
    struct Measured {
        slots: usize,
        detections: usize,
        sifted: usize,
        errors: usize,
        z_alice: usize,
    }

    fn measure(config: SimulatorConfig, frames: usize) -> Measured {
        let mut sim = SimulatedBb84::new(config).unwrap();
        let mut m = Measured {
            slots: 0,
            detections: 0,
            sifted: 0,
            errors: 0,
            z_alice: 0,
        };
        for _ in 0..frames {
            let (a, b) = sim.next_pair();
            a.validate().unwrap();
            b.validate().unwrap();
            m.slots += a.slots;
            m.z_alice += a.slots - a.bases.count_ones();
            let det = b.detections.as_ref().unwrap();
            for (k, s) in det.iter_ones().enumerate() {
                m.detections += 1;
                if a.bases.get(s) == b.bases.get(k) {
                    m.sifted += 1;
                    m.errors += usize::from(a.values.get(s) != b.values.get(k));
                }
            }
        }
        m
    }

    /// |measured − expected| within `sigmas` binomial standard deviations.
    fn within(count: usize, trials: usize, p: f64, sigmas: f64) -> bool {
        let mean = trials as f64 * p;
        let sd = (trials as f64 * p * (1.0 - p)).sqrt();
        (count as f64 - mean).abs() <= sigmas * sd.max(1.0)
    }

    #[test]
    fn statistics_match_configuration_over_a_million_detections() {
        let config = SimulatorConfig {
            qber: 0.04,
            detection_probability: 0.25,
            z_basis_probability: 0.5,
            frame_slots: 1 << 20,
            seed: 11,
        };
        let m = measure(config, 4);
        assert!(m.detections > 1_000_000);
        assert!(
            within(m.detections, m.slots, 0.25, 5.0),
            "loss: {}/{}",
            m.detections,
            m.slots
        );
        assert!(
            within(m.sifted, m.detections, 0.5, 5.0),
            "sifting: {}/{}",
            m.sifted,
            m.detections
        );
        assert!(
            within(m.errors, m.sifted, 0.04, 5.0),
            "qber: {}/{}",
            m.errors,
            m.sifted
        );
        assert!(within(m.z_alice, m.slots, 0.5, 5.0));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(6))]
        /// Any valid configuration: measured loss, sifting ratio and QBER
        /// within 5 sigma of the configured values over more than 10^6
        /// detections.
        #[test]
        fn statistics_hold_for_random_configurations(
            qber in 0.0f64..0.15,
            detection in 0.5f64..=1.0,
            z in 0.3f64..0.9,
            seed: u64,
        ) {
            let config = SimulatorConfig {
                qber,
                detection_probability: detection,
                z_basis_probability: z,
                frame_slots: 1 << 21,
                seed,
            };
            let m = measure(config, 1);
            proptest::prop_assert!(m.detections >= 1_000_000);
            proptest::prop_assert!(within(m.detections, m.slots, detection, 5.0));
            let same = z * z + (1.0 - z) * (1.0 - z);
            proptest::prop_assert!(within(m.sifted, m.detections, same, 5.0));
            proptest::prop_assert!(within(m.errors, m.sifted, qber, 5.0), "{} / {}", m.errors, m.sifted);
        }
    }

    #[test]
    fn basis_bias_raises_sifting_ratio() {
        let config = SimulatorConfig {
            qber: 0.01,
            detection_probability: 0.5,
            z_basis_probability: 0.9,
            frame_slots: 1 << 18,
            seed: 3,
        };
        let m = measure(config, 1);
        // P(same basis) = 0.9^2 + 0.1^2 = 0.82
        assert!(
            within(m.sifted, m.detections, 0.82, 5.0),
            "{}/{}",
            m.sifted,
            m.detections
        );
        assert!(within(m.z_alice, m.slots, 0.9, 5.0));
        assert!(within(m.errors, m.sifted, 0.01, 5.0));
    }

    #[test]
    fn edge_probabilities_and_odd_frame_sizes() {
        let config = SimulatorConfig {
            qber: 0.0,
            detection_probability: 1.0,
            frame_slots: 1000,
            seed: 5,
            ..Default::default()
        };
        let m = measure(config, 3);
        assert_eq!(m.detections, 3000);
        assert_eq!(m.errors, 0);
        let half = SimulatorConfig {
            qber: 0.5,
            frame_slots: 77,
            ..Default::default()
        };
        let mut sim = SimulatedBb84::new(half).unwrap();
        let (a, b) = sim.next_pair();
        assert_eq!(a.values.len(), 77);
        assert_eq!(b.detections.unwrap().len(), 77);
    }

    #[test]
    fn same_seed_same_frames_and_ids_advance() {
        let config = SimulatorConfig {
            frame_slots: 5000,
            seed: 9,
            ..Default::default()
        };
        let mut s1 = SimulatedBb84::new(config.clone()).unwrap();
        let mut s2 = SimulatedBb84::new(config.clone()).unwrap();
        for id in 0..3 {
            let (a1, b1) = s1.next_pair();
            let (a2, b2) = s2.next_pair();
            assert_eq!(a1.block, BlockId::new(id));
            assert_eq!((a1, b1), (a2, b2));
        }
        let mut other = SimulatedBb84::new(SimulatorConfig { seed: 10, ..config }).unwrap();
        let (a3, _) = other.next_pair();
        let (a4, _) = SimulatedBb84::new(SimulatorConfig {
            frame_slots: 5000,
            seed: 9,
            ..Default::default()
        })
        .unwrap()
        .next_pair();
        assert_ne!(a3, a4);
    }

    #[test]
    fn devices_pair_up_and_stop() {
        let config = SimulatorConfig {
            frame_slots: 4096,
            seed: 2,
            ..Default::default()
        };
        let mut a = SimulatedBb84::device(config.clone(), Role::Alice)
            .unwrap()
            .with_frame_limit(2);
        let mut b = SimulatedBb84::device(config, Role::Bob)
            .unwrap()
            .with_frame_limit(2);
        assert_eq!(a.role(), Role::Alice);
        assert_eq!(b.role().peer(), Role::Alice);
        for _ in 0..2 {
            let fa = a.next_frame().unwrap().unwrap();
            let fb = b.next_frame().unwrap().unwrap();
            assert!(fa.detections.is_none());
            assert_eq!(fa.block, fb.block);
            let det = fb.detections.unwrap();
            // Where bases match and qber is small, most bits agree.
            let mut agree = 0;
            let mut sifted = 0;
            for (k, s) in det.iter_ones().enumerate() {
                if fa.bases.get(s) == fb.bases.get(k) {
                    sifted += 1;
                    agree += usize::from(fa.values.get(s) == fb.values.get(k));
                }
            }
            assert!(agree as f64 > 0.9 * sifted as f64);
        }
        assert!(a.next_frame().unwrap().is_none());
    }

    #[test]
    fn bad_configurations_are_rejected() {
        for c in [
            SimulatorConfig {
                qber: 0.6,
                ..Default::default()
            },
            SimulatorConfig {
                qber: f64::NAN,
                ..Default::default()
            },
            SimulatorConfig {
                detection_probability: 0.0,
                ..Default::default()
            },
            SimulatorConfig {
                z_basis_probability: 1.0,
                ..Default::default()
            },
            SimulatorConfig {
                frame_slots: 0,
                ..Default::default()
            },
        ] {
            assert!(matches!(
                SimulatedBb84::new(c),
                Err(Error::InvalidParameter { .. })
            ));
        }
    }

    #[test]
    fn binary_symmetric_channel_flips_at_the_given_rate() {
        use rand_chacha::ChaCha8Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let key = BitVec::random(200_000, &mut rng);
        // The ends are exact.
        assert_eq!(binary_symmetric_channel(&key, 0.0, &mut rng).unwrap(), key);
        let mut inverted = key.clone();
        inverted.invert();
        assert_eq!(
            binary_symmetric_channel(&key, 1.0, &mut rng).unwrap(),
            inverted
        );
        // 200 000 bits at 5 %: 10 000 flips expected, sigma about 97.
        let noisy = binary_symmetric_channel(&key, 0.05, &mut rng).unwrap();
        let flips = key.hamming_distance(&noisy);
        assert!((9_500..10_500).contains(&flips), "{flips}");
        // The flips are spread evenly: each quarter holds about a quarter.
        let diff: Vec<usize> = (0..key.len())
            .filter(|&i| key.get(i) != noisy.get(i))
            .collect();
        for q in 0..4 {
            let range = q * 50_000..(q + 1) * 50_000;
            let in_quarter = diff.iter().filter(|&&i| range.contains(&i)).count();
            assert!((2_250..2_750).contains(&in_quarter), "{in_quarter}");
        }
        // Seeded: the same draws give the same key, documented draw by draw.
        let mut a = ChaCha8Rng::seed_from_u64(9);
        let mut b = ChaCha8Rng::seed_from_u64(9);
        let once = binary_symmetric_channel(&key, 0.1, &mut a).unwrap();
        let threshold = (0.1 * 2f64.powi(32)) as u64;
        let by_hand: BitVec = key
            .iter()
            .map(|bit| bit ^ (u64::from(b.next_u32()) < threshold))
            .collect();
        assert_eq!(once, by_hand);
    }

    #[test]
    fn binary_symmetric_channel_refuses_non_probabilities() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let key = BitVec::zeros(10);
        for bad in [f64::NAN, f64::INFINITY, -0.01, 1.01] {
            let err = binary_symmetric_channel(&key, bad, &mut rng).unwrap_err();
            assert!(
                matches!(err, Error::InvalidParameter { name: "qber", .. }),
                "{err:?}"
            );
        }
        assert!(binary_symmetric_channel(&BitVec::new(), 0.5, &mut rng).is_ok());
    }
}
