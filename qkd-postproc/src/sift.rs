//! Sifting: keep the slots where Alice and Bob used the same basis.
//!
//! ```text
//!  Bob                                   Alice
//!  announce(&bob_frame) ──BasisAnnouncement──▶ sift_alice(&alice_frame, &ann)
//!                                              │ keeps matching slots
//!  sift_bob(&bob_frame, &dec) ◀──SiftDecision──┘
//! ```
//!
//! Bob announces which slots he detected and his basis for each; Alice
//! answers with one keep-bit per detection (bases equal). Both keep the values
//! at kept positions, in slot order, so the two sifted keys line up bit for
//! bit. The announcement and decision reveal bases and positions only, never
//! values; they travel over the authenticated channel.
//!
//! ```
//! use qkd_core::{SimulatedBb84, SimulatorConfig};
//! use qkd_postproc::sift;
//!
//! let mut sim = SimulatedBb84::new(SimulatorConfig { qber: 0.0, frame_slots: 10_000, ..Default::default() }).unwrap();
//! let (alice, bob) = sim.next_pair();
//! let ann = sift::announce(&bob).unwrap();
//! let (decision, alice_key) = sift::sift_alice(&alice, &ann).unwrap();
//! let bob_key = sift::sift_bob(&bob, &decision).unwrap();
//! assert_eq!(alice_key, bob_key); // qber 0: identical
//! ```

use qkd_core::{BitVec, RawFrame};

/// Errors of sifting. They name what mismatched, never key values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SiftError {
    /// A frame from the wrong end was given (Alice's where Bob's is needed or
    /// the other way round).
    #[error("frame is from the wrong end of the link")]
    WrongRole,
    /// The two inputs describe different frames.
    #[error("frame mismatch: local frame {local}, peer frame {peer}")]
    FrameMismatch {
        /// Our frame ID.
        local: u64,
        /// The peer's frame ID.
        peer: u64,
    },
    /// A length did not match (slots, detections or decision bits).
    #[error("inconsistent lengths: expected {expected}, got {actual}")]
    Length {
        /// What was needed.
        expected: usize,
        /// What was given.
        actual: usize,
    },
}

/// Bob → Alice: where Bob detected, and in which basis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasisAnnouncement {
    /// The frame this refers to.
    pub frame_id: u64,
    /// One bit per slot: detection or not.
    pub detections: BitVec,
    /// Bob's basis per detection, in slot order.
    pub bases: BitVec,
}

/// Alice → Bob: which of Bob's detections are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiftDecision {
    /// The frame this refers to.
    pub frame_id: u64,
    /// One bit per detection: set where the bases matched.
    pub keep: BitVec,
}

/// Bob's announcement for one of his frames.
///
/// # Errors
/// [`SiftError::WrongRole`] for a frame without detections (Alice's), or
/// [`SiftError::Length`] for an inconsistent frame.
pub fn announce(bob: &RawFrame) -> Result<BasisAnnouncement, SiftError> {
    let detections = bob.detections.as_ref().ok_or(SiftError::WrongRole)?;
    bob.validate().map_err(|_| SiftError::Length {
        expected: detections.count_ones(),
        actual: bob.values.len(),
    })?;
    Ok(BasisAnnouncement {
        frame_id: bob.frame_id,
        detections: detections.clone(),
        bases: bob.bases.clone(),
    })
}

/// Alice's side: compares bases, returns the decision for Bob and her sifted key.
///
/// # Errors
/// [`SiftError`] if the frame is Bob's, the frame IDs differ, or the
/// announcement's lengths do not fit the frame (a malformed or hostile peer).
pub fn sift_alice(
    alice: &RawFrame,
    ann: &BasisAnnouncement,
) -> Result<(SiftDecision, BitVec), SiftError> {
    if alice.detections.is_some() {
        return Err(SiftError::WrongRole);
    }
    if alice.frame_id != ann.frame_id {
        return Err(SiftError::FrameMismatch {
            local: alice.frame_id,
            peer: ann.frame_id,
        });
    }
    if ann.detections.len() != alice.slots
        || alice.values.len() != alice.slots
        || alice.bases.len() != alice.slots
    {
        return Err(SiftError::Length {
            expected: alice.slots,
            actual: ann.detections.len(),
        });
    }
    let detected = ann.detections.count_ones();
    if ann.bases.len() != detected {
        return Err(SiftError::Length {
            expected: detected,
            actual: ann.bases.len(),
        });
    }
    // keep = NOT(Alice's bases at Bob's detections XOR Bob's bases)
    let mut keep = alice.bases.select(&ann.detections);
    keep ^= &ann.bases;
    keep.invert();
    let key = alice.values.select(&ann.detections).select(&keep);
    Ok((
        SiftDecision {
            frame_id: alice.frame_id,
            keep,
        },
        key,
    ))
}

/// Bob's side: keeps his values where Alice's decision says so.
///
/// # Errors
/// [`SiftError`] if the frame is Alice's, the frame IDs differ, or the
/// decision does not have one bit per detection.
pub fn sift_bob(bob: &RawFrame, decision: &SiftDecision) -> Result<BitVec, SiftError> {
    if bob.detections.is_none() {
        return Err(SiftError::WrongRole);
    }
    if bob.frame_id != decision.frame_id {
        return Err(SiftError::FrameMismatch {
            local: bob.frame_id,
            peer: decision.frame_id,
        });
    }
    if decision.keep.len() != bob.values.len() {
        return Err(SiftError::Length {
            expected: bob.values.len(),
            actual: decision.keep.len(),
        });
    }
    let key = bob.values.select(&decision.keep);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qkd_core::{SimulatedBb84, SimulatorConfig};

    fn pair(qber: f64, seed: u64) -> (RawFrame, RawFrame) {
        SimulatedBb84::new(SimulatorConfig {
            qber,
            frame_slots: 200_000,
            seed,
            ..Default::default()
        })
        .unwrap()
        .next_pair()
    }

    #[test]
    fn sifted_keys_line_up_and_measure_the_qber() {
        let (a, b) = pair(0.05, 1);
        let ann = announce(&b).unwrap();
        let (dec, ka) = sift_alice(&a, &ann).unwrap();
        let kb = sift_bob(&b, &dec).unwrap();
        assert_eq!(ka.len(), kb.len());
        assert_eq!(ka.len(), dec.keep.count_ones());
        let q = ka.hamming_distance(&kb) as f64 / ka.len() as f64;
        assert!((q - 0.05).abs() < 0.01, "{q}");
        // About half the detections survive with unbiased bases.
        let ratio = ka.len() as f64 / b.values.len() as f64;
        assert!((ratio - 0.5).abs() < 0.02, "{ratio}");
    }

    #[test]
    fn wrong_roles_and_mismatches_are_errors() {
        let (a, b) = pair(0.0, 2);
        assert_eq!(announce(&a), Err(SiftError::WrongRole));
        let mut ann = announce(&b).unwrap();
        assert!(matches!(sift_alice(&b, &ann), Err(SiftError::WrongRole)));
        ann.frame_id = 9;
        assert!(matches!(
            sift_alice(&a, &ann),
            Err(SiftError::FrameMismatch { .. })
        ));
        ann.frame_id = a.frame_id;
        ann.bases.push(true);
        assert!(matches!(
            sift_alice(&a, &ann),
            Err(SiftError::Length { .. })
        ));
        let mut ann = announce(&b).unwrap();
        ann.detections.truncate(10);
        assert!(matches!(
            sift_alice(&a, &ann),
            Err(SiftError::Length { .. })
        ));
        let (mut dec, _) = sift_alice(&a, &announce(&b).unwrap()).unwrap();
        assert!(matches!(sift_bob(&a, &dec), Err(SiftError::WrongRole)));
        dec.keep.push(false);
        assert!(matches!(sift_bob(&b, &dec), Err(SiftError::Length { .. })));
    }
}
