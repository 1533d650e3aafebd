//! The borrowing and lending rule (documented on
//! [`StoreConfig`](crate::StoreConfig), "Ownership and lending").
//!
//! A node whose fresh bytes fall below the low-water mark asks once
//! ([`Lending::want`]) and asks again only after the answer came
//! ([`Lending::answered`]). The lender gives whole chunks while
//! [`may_lend`] allows: never more than asked for (the last chunk may go
//! over), and never so much that it ends with fewer fresh bytes than the
//! borrower. Material therefore moves from the richer node to the poorer
//! one only, and two nodes that both run low do not pass chunks back and
//! forth.

use crate::notice::Notice;

/// Whether a lender that owned `my_fresh` fresh bytes before this grant,
/// and put `lent` of them in it so far, may add a chunk of `rem` bytes for
/// a borrower that asked for `requested` bytes and owns `peer_fresh`.
#[must_use]
pub(crate) fn may_lend(
    requested: u64,
    peer_fresh: u64,
    my_fresh: u64,
    lent: u64,
    rem: u32,
) -> bool {
    let after = lent.saturating_add(u64::from(rem));
    lent < requested
        && rem > 0
        && my_fresh
            .checked_sub(after)
            .is_some_and(|mine| mine >= peer_fresh.saturating_add(after))
}

/// The borrower's side: at most one request outstanding.
#[derive(Debug)]
pub(crate) struct Lending {
    low_water: u64,
    outstanding: bool,
}

impl Lending {
    pub(crate) fn new(low_water: u64) -> Self {
        Lending {
            low_water,
            outstanding: false,
        }
    }

    /// The request to send when this node owns `fresh` bytes, if any: a
    /// [`Notice::Borrow`] for twice the low-water mark minus what it has.
    pub(crate) fn want(&mut self, fresh: u64) -> Option<Notice> {
        if self.low_water == 0 || self.outstanding || fresh >= self.low_water {
            return None;
        }
        self.outstanding = true;
        Some(Notice::Borrow {
            bytes: self.low_water.saturating_mul(2) - fresh,
            fresh,
        })
    }

    /// The peer answered the request (with a grant, possibly empty).
    pub(crate) fn answered(&mut self) {
        self.outstanding = false;
    }

    /// Forgets the outstanding request (a wipe: the answer will never come).
    pub(crate) fn clear(&mut self) {
        self.outstanding = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lender_keeps_at_least_what_the_borrower_ends_with() {
        // 10 chunks of 100 against nothing: five move.
        let mut lent = 0;
        while may_lend(u64::MAX, 0, 1000, lent, 100) {
            lent += 100;
        }
        assert_eq!(lent, 500);
        // Against a borrower with 400: three move (700 against 700).
        let mut lent = 0;
        while may_lend(u64::MAX, 400, 1000, lent, 100) {
            lent += 100;
        }
        assert_eq!(lent, 300);
        // Never more than asked (the last chunk may go over).
        assert!(may_lend(150, 0, 1000, 100, 100));
        assert!(!may_lend(150, 0, 1000, 200, 100));
        // A single chunk is never lent: the lender would end with nothing.
        assert!(!may_lend(u64::MAX, 0, 193, 0, 193));
        // Empty chunks and absurd claims neither panic nor move anything.
        assert!(!may_lend(u64::MAX, 0, 1000, 0, 0));
        assert!(!may_lend(u64::MAX, u64::MAX, u64::MAX, 0, 1));
        assert!(!may_lend(u64::MAX, 0, 10, u64::MAX - 1, u32::MAX));
    }

    #[test]
    fn two_poor_nodes_do_not_pass_chunks_back_and_forth() {
        // A node that lent until it was level is never the richer one
        // afterwards, so the other lends it nothing back.
        let (a, b) = (600u64, 0u64);
        let mut lent = 0;
        while may_lend(u64::MAX, b, a, lent, 100) {
            lent += 100;
        }
        let (a, b) = (a - lent, b + lent);
        assert!(a >= b);
        assert!(!may_lend(u64::MAX, a, b, 0, 100));
    }

    #[test]
    fn one_request_at_a_time_below_the_low_water_mark() {
        let mut l = Lending::new(100);
        assert_eq!(l.want(100), None);
        assert_eq!(
            l.want(30),
            Some(Notice::Borrow {
                bytes: 170,
                fresh: 30
            })
        );
        assert_eq!(l.want(0), None, "outstanding");
        l.answered();
        assert!(l.want(0).is_some());
        l.clear();
        assert!(l.want(0).is_some());
        assert_eq!(Lending::new(0).want(0), None, "0 never borrows");
    }
}
