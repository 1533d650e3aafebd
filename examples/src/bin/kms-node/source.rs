//! Where the node's final key blocks come from: the [`BlockSource`] seam.
//!
//! A source yields final key blocks numbered by [`BlockId`] in increasing
//! order, the same blocks with the same numbers on both nodes (a block one
//! node lacks is reconciled by the stores as lost). The real one is
//! [`crate::pipeline_source::PipelineSource`], the distillation pipeline
//! fed by the simulated device; [`SimulatedSource`] derives the blocks
//! from a shared seed, for tests that need key fast and nothing else.

use std::time::Instant;

use qkd_core::{BlockId, SecretKey};

/// A session of the link: both stores were wiped and start again. Both
/// nodes compute the same value from the two sync epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Session(pub(crate) u64);

impl Session {
    /// The session of the pairing between epochs `a` and `b` (order-free).
    pub(crate) fn of(a: u64, b: u64) -> Self {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let mut h = blake3::Hasher::new_derive_key("qkd kms-node 2026 session");
        h.update(&lo.to_le_bytes());
        h.update(&hi.to_le_bytes());
        let mut s = [0u8; 8];
        s.copy_from_slice(&h.finalize().as_bytes()[..8]);
        Session(u64::from_le_bytes(s))
    }

    /// The first block number of the session: key IDs derive from the
    /// link name and block number, so each session numbers its blocks from
    /// its own random base (2^24 blocks apart from another session's with
    /// probability 1 - 2^-39), and a key ID from before a restart never
    /// names a key of the new session.
    pub(crate) fn first_block(self) -> BlockId {
        BlockId::new(((self.0 & ((1 << 39) - 1)) << 24) | 1)
    }
}

/// A supply of final key blocks, identical on both nodes.
pub(crate) trait BlockSource: Send {
    /// A new session began (both stores are empty): start again from its
    /// first block.
    fn start_session(&mut self, session: Session);

    /// The next block if one is ready at `now`.
    fn poll_block(&mut self, now: Instant) -> Option<(BlockId, SecretKey)>;

    /// Blocks delivered in the current session.
    fn blocks(&self) -> u64;

    /// Bytes delivered in the current session.
    fn bytes(&self) -> u64;

    /// The store is fed from this source while it holds less fresh and
    /// pending key than this (or the peer stored blocks this node has not).
    fn low_water_bytes(&self) -> u64;

    /// The distillation pipeline's numbers, for a source that runs one.
    fn pipeline(&self) -> Option<crate::pipeline_source::PipelineReport> {
        None
    }

    /// The node is shutting down: stop any work of the source's own.
    fn stop(&mut self) {}
}

/// Stand-in for the pipeline: block `b` of session `s` is a blake3 stream
/// keyed by the seed, `s` and `b`; optionally paced to a byte rate.
pub(crate) struct SimulatedSource {
    seed: u64,
    block_bytes: usize,
    bytes_per_second: u64,
    session: Option<Session>,
    next: BlockId,
    blocks: u64,
    bytes: u64,
    started: Option<Instant>,
}

impl SimulatedSource {
    /// Blocks of `block_bytes` from `seed`, at most `bytes_per_second` (0:
    /// unpaced).
    pub(crate) fn new(seed: u64, block_bytes: usize, bytes_per_second: u64) -> Self {
        SimulatedSource {
            seed,
            block_bytes,
            bytes_per_second,
            session: None,
            next: BlockId::new(1),
            blocks: 0,
            bytes: 0,
            started: None,
        }
    }
}

impl BlockSource for SimulatedSource {
    fn start_session(&mut self, session: Session) {
        self.session = Some(session);
        self.next = session.first_block();
        self.blocks = 0;
        self.bytes = 0;
        self.started = None;
    }

    fn poll_block(&mut self, now: Instant) -> Option<(BlockId, SecretKey)> {
        let session = self.session?;
        let started = *self.started.get_or_insert(now);
        if self.bytes_per_second > 0 {
            let allowed = (now - started).as_secs_f64() * self.bytes_per_second as f64;
            if (self.bytes + self.block_bytes as u64) as f64 > allowed + self.block_bytes as f64 {
                return None;
            }
        }
        let block = self.next;
        // The session's base leaves 2^24 blocks before a u64 overflow.
        self.next = block.next()?;
        let mut h = blake3::Hasher::new_derive_key("qkd kms-node 2026 simulated final key");
        h.update(&self.seed.to_le_bytes());
        h.update(&session.0.to_le_bytes());
        h.update(&block.get().to_le_bytes());
        let mut bytes = vec![0u8; self.block_bytes];
        h.finalize_xof().fill(&mut bytes);
        self.blocks += 1;
        self.bytes += self.block_bytes as u64;
        Some((block, SecretKey::from_vec(bytes)))
    }

    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn low_water_bytes(&self) -> u64 {
        4 * self.block_bytes as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn both_nodes_derive_the_same_blocks_and_sessions_differ() {
        let now = Instant::now();
        let s = Session::of(7, 9);
        assert_eq!(s, Session::of(9, 7));
        let mut a = SimulatedSource::new(1, 64, 0);
        let mut b = SimulatedSource::new(1, 64, 0);
        assert!(a.poll_block(now).is_none(), "no block before a session");
        a.start_session(s);
        b.start_session(s);
        let (ba, ka) = a.poll_block(now).unwrap();
        let (bb, kb) = b.poll_block(now).unwrap();
        assert_eq!((ba, &ka), (bb, &kb));
        assert_eq!(ba, s.first_block());
        let mut c = SimulatedSource::new(1, 64, 0);
        let other = Session::of(7, 10);
        c.start_session(other);
        let (bc, kc) = c.poll_block(now).unwrap();
        assert_ne!(bc, ba);
        assert_ne!(kc, ka);
    }

    #[test]
    fn a_paced_source_waits() {
        let t0 = Instant::now();
        let mut a = SimulatedSource::new(1, 1000, 1000);
        a.start_session(Session::of(1, 2));
        assert!(a.poll_block(t0).is_some());
        assert!(a.poll_block(t0).is_none());
        assert!(a.poll_block(t0 + Duration::from_millis(1100)).is_some());
    }
}
