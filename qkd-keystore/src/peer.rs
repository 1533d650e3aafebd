//! What this node knows of the block sequence: its own last block, and the
//! peer's announcements (stored or lost) of blocks it has not reached yet.
//!
//! Both nodes are fed the same blocks in the same increasing order, and
//! each announces its decisions in that order. So when the peer announces
//! block `n`, every block before `n` that it never announced it will never
//! hold; and a block this node inserts after the peer announced a later one
//! without it was skipped by the peer. The peer's announcements ahead of
//! this node are bounded: at most
//! [`max_blocks_ahead`](crate::StoreConfig::max_blocks_ahead) of them, none
//! further than that many block numbers past this node's last block, so
//! that one notice for block `u64::MAX` can neither grow the state nor make
//! every later block look skipped.

use std::collections::BTreeMap;

use qkd_core::BlockId;

use crate::{NoticeError, StoreError};

/// What the peer decided on a block this node inserts now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The peer stored it.
    Have,
    /// The peer will never hold it.
    Lost,
    /// The peer announced a later block without it: it will never hold it.
    Skipped,
    /// Nothing yet.
    Unknown,
}

/// Where a peer's announcement falls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// At or before this node's last block: the caller applies it to what
    /// it holds.
    Reached,
    /// After this node's last block: remembered for the insert.
    Ahead,
}

#[derive(Debug)]
pub(crate) struct PeerView {
    max_ahead: u64,
    /// The last block inserted or discarded here.
    last: Option<BlockId>,
    /// The peer's decisions on blocks after `last`: true = stored, false = lost.
    ahead: BTreeMap<BlockId, bool>,
}

impl PeerView {
    pub(crate) fn new(max_ahead: u32) -> Self {
        PeerView {
            max_ahead: u64::from(max_ahead),
            last: None,
            ahead: BTreeMap::new(),
        }
    }

    /// Checks that `block` may be inserted or discarded next.
    ///
    /// # Errors
    /// [`StoreError::BlockOutOfOrder`].
    pub(crate) fn check_next(&self, block: BlockId) -> Result<(), StoreError> {
        match self.last {
            Some(last) if block <= last => Err(StoreError::BlockOutOfOrder { block, last }),
            _ => Ok(()),
        }
    }

    /// The peer's decisions remembered ahead of this node.
    pub(crate) fn ahead_len(&self) -> usize {
        self.ahead.len()
    }

    /// This node moves on to `block` (checked with [`check_next`](Self::check_next)).
    /// Returns the peer's decision on it; announcements beyond the allowed
    /// lead from `block` are forgotten and appended to `refused` (they
    /// could only be checked now if they came before this node's first
    /// block).
    pub(crate) fn advance(&mut self, block: BlockId, refused: &mut Vec<BlockId>) -> Decision {
        self.last = Some(block);
        let limit = block.get().saturating_add(self.max_ahead);
        while let Some((&b, _)) = self.ahead.last_key_value() {
            if b.get() <= limit {
                break;
            }
            self.ahead.pop_last();
            refused.push(b);
        }
        let mut later = self.ahead.split_off(&block);
        let decision = later.remove(&block);
        let skipped = !later.is_empty();
        self.ahead = later;
        match decision {
            Some(true) => Decision::Have,
            Some(false) => Decision::Lost,
            None if skipped => Decision::Skipped,
            None => Decision::Unknown,
        }
    }

    /// The peer announced `block` (`has`: stored, or lost).
    ///
    /// # Errors
    /// [`NoticeError::BlockTooFarAhead`] if it lies further ahead of this
    /// node's last block than allowed, or (before this node's first block)
    /// too many announcements are remembered already. Nothing is recorded.
    pub(crate) fn announce(&mut self, block: BlockId, has: bool) -> Result<Placement, NoticeError> {
        match self.last {
            Some(last) if block <= last => return Ok(Placement::Reached),
            Some(last) if block.get() - last.get() > self.max_ahead => {
                return Err(NoticeError::BlockTooFarAhead { block });
            }
            None if self.ahead.len() as u64 >= self.max_ahead
                && !self.ahead.contains_key(&block) =>
            {
                return Err(NoticeError::BlockTooFarAhead { block });
            }
            _ => {}
        }
        self.ahead.insert(block, has);
        Ok(Placement::Ahead)
    }

    pub(crate) fn clear(&mut self) {
        self.last = None;
        self.ahead.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: u64) -> BlockId {
        BlockId::new(n)
    }

    #[test]
    fn decisions_ahead_are_found_at_insert() {
        let mut p = PeerView::new(100);
        let mut refused = Vec::new();
        assert_eq!(p.announce(b(2), true), Ok(Placement::Ahead));
        assert_eq!(p.announce(b(3), false), Ok(Placement::Ahead));
        assert_eq!(p.advance(b(1), &mut refused), Decision::Skipped);
        assert_eq!(p.advance(b(2), &mut refused), Decision::Have);
        assert_eq!(p.advance(b(3), &mut refused), Decision::Lost);
        assert_eq!(p.advance(b(4), &mut refused), Decision::Unknown);
        assert!(refused.is_empty());
        assert_eq!(p.announce(b(4), true), Ok(Placement::Reached));
        assert_eq!(p.ahead_len(), 0);
        assert!(p.check_next(b(4)).is_err());
        assert!(p.check_next(b(5)).is_ok());
    }

    #[test]
    fn announcements_far_ahead_are_refused_and_bounded() {
        let mut p = PeerView::new(10);
        let mut refused = Vec::new();
        p.advance(b(5), &mut refused);
        assert_eq!(p.announce(b(15), true), Ok(Placement::Ahead));
        assert_eq!(
            p.announce(b(16), true),
            Err(NoticeError::BlockTooFarAhead { block: b(16) })
        );
        assert_eq!(
            p.announce(b(u64::MAX), true),
            Err(NoticeError::BlockTooFarAhead { block: b(u64::MAX) })
        );
        // Before this node's first block, only the count is bounded ...
        let mut p = PeerView::new(2);
        assert!(p.announce(b(u64::MAX), true).is_ok());
        assert!(p.announce(b(7), true).is_ok());
        assert!(p.announce(b(8), true).is_err(), "a third one");
        assert!(p.announce(b(7), false).is_ok(), "the same block again");
        // ... and the insert forgets what lies too far from it, so one
        // notice for u64::MAX does not make the block look skipped.
        assert_eq!(p.advance(b(7), &mut refused), Decision::Lost);
        assert_eq!(refused, [b(u64::MAX)]);
        assert_eq!(p.ahead_len(), 0);
    }

    #[test]
    fn clear_forgets_the_sequence() {
        let mut p = PeerView::new(10);
        p.advance(b(5), &mut Vec::new());
        p.announce(b(6), true).unwrap();
        p.clear();
        assert_eq!(p.ahead_len(), 0);
        assert!(p.check_next(b(1)).is_ok());
    }
}
