//! One block's message stream in one direction: numbered, acknowledged,
//! resent until acknowledged, delivered in order exactly once.
//!
//! The stages' messages of a block travel in two such streams (Alice to
//! Bob, Bob to Alice). In-order, exactly-once delivery is what lets both
//! sides absorb the same messages in the same order into the block's
//! transcripts, whatever the link does (loss, duplication, reordering).

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use zeroize::Zeroize;

/// Most messages held for in-order delivery ahead of the next expected one.
pub(crate) const MAX_BUFFERED: usize = 256;

/// A message body waiting in the send stream.
pub(crate) struct Outgoing {
    /// The stage message.
    pub(crate) plain: Vec<u8>,
    /// Per-message mode: the sealed form, once sealed (resent as is).
    pub(crate) sealed: Option<Vec<u8>>,
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        // Stage messages disclose only what the protocol discloses, but
        // they are derived from key bits: wipe them anyway.
        self.plain.zeroize();
    }
}

/// The sending half.
#[derive(Default)]
pub(crate) struct SendStream {
    /// Sequence number of `unacked[0]`.
    pub(crate) base: u32,
    pub(crate) unacked: VecDeque<Outgoing>,
    /// Sequence number of the first message never transmitted.
    pub(crate) unsent: u32,
    pub(crate) deadline: Option<Instant>,
    pub(crate) retries: u32,
}

impl SendStream {
    /// Sequence number the next pushed message gets.
    pub(crate) fn next_seq(&self) -> u32 {
        self.base + self.unacked.len() as u32
    }

    pub(crate) fn push(&mut self, plain: Vec<u8>) -> u32 {
        let seq = self.next_seq();
        self.unacked.push_back(Outgoing {
            plain,
            sealed: None,
        });
        seq
    }

    /// The peer has the first `count` messages. Returns whether anything
    /// new was acknowledged.
    pub(crate) fn acknowledge(&mut self, count: u32) -> bool {
        let mut moved = false;
        while self.base < count && !self.unacked.is_empty() {
            self.unacked.pop_front();
            self.base += 1;
            moved = true;
        }
        if moved {
            self.retries = 0;
            if self.unacked.is_empty() {
                self.deadline = None;
            }
        }
        self.unsent = self.unsent.max(self.base);
        moved
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.unacked.is_empty()
    }
}

/// The receiving half.
#[derive(Default)]
pub(crate) struct RecvStream {
    /// Messages delivered so far (the acknowledgement we send).
    pub(crate) next: u32,
    pub(crate) buffer: BTreeMap<u32, Vec<u8>>,
    /// An acknowledgement should go out.
    pub(crate) ack_due: bool,
}

impl RecvStream {
    /// Accepts message `seq`; returns `false` when it is a duplicate or
    /// beyond the reorder buffer (it is then dropped, and acknowledged).
    pub(crate) fn accept(&mut self, seq: u32, message: Vec<u8>) -> bool {
        self.ack_due = true;
        if seq < self.next || self.buffer.contains_key(&seq) {
            return false;
        }
        if (seq - self.next) as usize >= MAX_BUFFERED {
            return false;
        }
        self.buffer.insert(seq, message);
        true
    }

    /// The next message in order, if it has arrived.
    pub(crate) fn pop(&mut self) -> Option<Vec<u8>> {
        let message = self.buffer.remove(&self.next)?;
        self.next += 1;
        Some(message)
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        for m in self.buffer.values_mut() {
            m.zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_exactly_once() {
        let mut r = RecvStream::default();
        assert!(r.accept(1, vec![1]));
        assert!(r.pop().is_none());
        assert!(r.accept(0, vec![0]));
        assert!(!r.accept(0, vec![0]));
        assert_eq!(r.pop(), Some(vec![0]));
        assert_eq!(r.pop(), Some(vec![1]));
        assert!(r.pop().is_none());
        assert!(!r.accept(1, vec![1]));
        assert!(!r.accept(2 + MAX_BUFFERED as u32, vec![9]));
        let mut s = SendStream::default();
        assert_eq!(s.push(vec![1]), 0);
        assert_eq!(s.push(vec![2]), 1);
        assert!(!s.acknowledge(0));
        assert!(s.acknowledge(1));
        assert_eq!(s.base, 1);
        assert!(s.acknowledge(5));
        assert!(s.is_idle());
        assert_eq!(s.next_seq(), 2);
    }
}
