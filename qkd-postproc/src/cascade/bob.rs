//! Bob's side: holds the noisy key, asks batched parity questions, corrects.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use qkd_core::machine::{ConfigError, Machine, Retransmit, RetransmitDue};
use qkd_core::{BitVec, BlockId};

use super::params::CascadeConfig;
use super::shuffle::{LazyCopy, ShufflePlan};
use super::wire::{AbortReason, CascadeMessage, Question, encode_questions};
use super::{CascadeError, CascadeEvent, CascadeStats};

/// Blocks whose trees have more nodes than this (blocks of more than 2048
/// bits) keep known parities in a hash map rather than a bitmap (two bits
/// per node: at most 512 bytes per block). Large blocks are few and each
/// search remembers one node per level, so a bitmap would be mostly zeros
/// that cost a fresh zeroed allocation per pass (16 KiB for the two
/// half-key blocks of a 2^16-bit key) and room in the caches.
const SPARSE_ABOVE: usize = 1 << 12;

/// A multiplicative hasher for node indices (not exposed to the peer's
/// choice in a way that matters: Bob picks every node himself).
#[derive(Default, Clone, Copy)]
struct NodeHasher(u64);

impl std::hash::Hasher for NodeHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

type NodeMap = HashMap<usize, bool, std::hash::BuildHasherDefault<NodeHasher>>;

/// One pass of the run: its block size and what Bob knows of it.
struct Pass {
    k: usize,
    blocks: usize,
    biconf: bool,
    /// Alice's parity of each block (all known once the pass has started).
    top: BitVec,
    /// Bob's parity of each block, kept up to date on every flip.
    mine: BitVec,
    /// Blocks with a binary search under way.
    active: BitVec,
    /// Blocks that held a flipped bit since their search last computed its
    /// own parity (a block has at most one search): only those searches
    /// need their parity again.
    touched: BitVec,
    /// Bob's key in this pass's order, once a sub-range parity needed it.
    copy: LazyCopy,
    /// Known parities of sub-blocks (reuse only). Only left children are
    /// ever asked (a right child's parity is its parent's ^ its sibling's),
    /// so the table is indexed by the parent: entry `b * (tree / 2) + h`,
    /// for the node with heap index `h` (1 = the whole block) of block `b`,
    /// holds two bits (known, parity of the left child), 32 entries a word,
    /// so a block's entries share one or a few cache lines.
    known: Vec<u64>,
    /// Blocks with at least one node in `known` or `sparse`.
    remembered: BitVec,
    /// Nodes per block tree: twice the block size rounded up to a power
    /// of two.
    tree: usize,
    /// The same for passes whose trees are too large for bitmaps.
    sparse: NodeMap,
}

impl Pass {
    /// Records Alice's parity of the left child of node `parent` of `block`.
    fn remember(&mut self, block: usize, parent: usize, value: bool) {
        // A node with children is at depth below ⌈log2 k⌉ (halves rounded
        // up), so its heap index is below 2^⌈log2 k⌉ = tree / 2: entries
        // never reach the next block's.
        debug_assert!(parent < self.tree / 2, "only inner nodes have children");
        self.remembered.set(block, true);
        let i = block * (self.tree / 2) + parent;
        if self.tree > SPARSE_ABOVE {
            self.sparse.insert(i, value);
            return;
        }
        if self.known.is_empty() {
            self.known = vec![0; (self.blocks * (self.tree / 2)).div_ceil(32)];
        }
        self.known[i / 32] |= (1 | u64::from(value) << 1) << (2 * (i % 32));
    }

    /// Alice's parity of the left child of node `parent` of `block`, if
    /// known.
    fn recall(&self, block: usize, parent: usize) -> Option<bool> {
        if !self.remembered.get(block) {
            // Most lookups are in a block's first search: the large table
            // (a likely cache miss) is not read.
            return None;
        }
        let i = block * (self.tree / 2) + parent;
        if self.tree > SPARSE_ABOVE {
            return self.sparse.get(&i).copied();
        }
        let cell = self.known[i / 32] >> (2 * (i % 32));
        (cell & 1 == 1).then_some(cell & 2 != 0)
    }

    fn block_range(&self, b: usize, n: usize) -> (usize, usize) {
        let s = b * self.k;
        (s, (s + self.k).min(n))
    }
}

/// A binary search for an error in one block.
#[derive(Clone, Copy, Debug)]
struct Search {
    pass: usize,
    block: usize,
    /// Heap index of the current node (1: the whole block).
    node: usize,
    start: usize,
    end: usize,
    /// Alice's parity of the current node.
    alice: bool,
    /// The answer to the question about the current node's left child.
    answer: Option<bool>,
    /// Bob's parity of the current node, valid while `mine_valid` and no
    /// bit of the block has been flipped since (`Pass::touched`).
    mine: bool,
    mine_valid: bool,
    /// The round in which the search last stopped to ask: stepping it
    /// again in that round before a bit of its block is flipped would do
    /// nothing (the known parities change only with answers).
    waiting: u32,
    done: bool,
    /// Number of the search, for the blocks set aside until it ends.
    id: u64,
}

/// What the outstanding questions ask: every round is either the block
/// parities of one new pass or one question per search under way.
#[derive(Clone, Copy, Debug)]
enum Pending {
    Nothing,
    /// The parities of blocks `0 .. asked` of `pass`.
    Top {
        pass: usize,
        asked: usize,
    },
    /// The left child of the current node of searches `0 .. count`.
    Searches(usize),
}

/// The message Bob waits on an answer to.
#[derive(Debug)]
enum Outstanding {
    Nothing,
    /// This round's questions: the bytes until their first sending, then
    /// `None` (a resend encodes them again from `pending` and the searches,
    /// which do not change before the answers come: no copy is kept).
    Questions(Option<Vec<u8>>),
    /// `Done` or `Abort`.
    Message(Vec<u8>),
}

impl Pending {
    fn len(self) -> usize {
        match self {
            Pending::Nothing => 0,
            Pending::Top { asked, .. } => asked,
            Pending::Searches(count) => count,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Asking,
    Finishing,
    Completed,
    Aborted,
}

/// Bob's Cascade machine: asks for parities, finds and flips his errors.
///
/// Bob follows the [`CascadeParams`](super::CascadeParams) schedule. Each round he sends all his
/// questions at once (one channel use): the block parities of a new pass, or
/// the next sub-block of every binary search under way. When an answer shows
/// an error, the flip changes the parity of the block holding that bit in
/// every earlier pass (the bit → block index is the pass's permutation), and
/// each block that turns odd starts a new search in the next round (the
/// cascade effect). With parity reuse, known sub-block parities (asked,
/// implied by a parent and sibling, or the last block of a pass implied by
/// the total parity) are never asked again.
///
/// Every flip Bob makes is a correct one (a one-bit range whose parity
/// differs from Alice's), so the run can only leave errors that no known
/// parity shows. Bob does not know whether any remain; confirmation (a hash
/// comparison) after Cascade decides.
///
/// Driven through [`Machine`] (see the [module docs](super#driving-the-machines)):
/// after creating Bob, send what `poll_transmit` gives (his first
/// questions); feed Alice's datagrams to `handle_input`; call
/// `handle_timeout` at `poll_timeout` (the resend timer); read `poll_event`
/// until [`CascadeEvent::Completed`] or [`CascadeEvent::Aborted`]. Getters:
/// [`block`](Self::block), [`key`](Self::key), [`stats`](Self::stats),
/// [`is_finished`](Self::is_finished). After the run has ended every
/// datagram is ignored.
pub struct CascadeBob {
    block: BlockId,
    key: BitVec,
    plan: Arc<ShufflePlan>,
    config: CascadeConfig,
    passes: Vec<Pass>,
    total_alice: Option<bool>,
    searches: Vec<Search>,
    checks: Vec<(usize, usize)>,
    /// Groups of blocks set aside (see `later`) to look at again, each a
    /// range of `group_blocks`.
    groups: Vec<Range<usize>>,
    group_blocks: Vec<(usize, usize)>,
    /// The blocks (one per started pass) holding each bit flipped and not
    /// yet looked at, one bit after the other; `flip_ends` ends each bit's.
    flip_blocks: Vec<(usize, usize)>,
    flip_ends: Vec<usize>,
    /// Reused buffer for the odd blocks of one group.
    scratch: Vec<(usize, usize)>,
    /// Odd blocks set aside while a smaller block that held the same flipped
    /// bit is searched; checked again once no search is running. Each entry
    /// is the search's number and a range of `later_blocks` (kept in one
    /// buffer: no allocation per flipped bit).
    later: Vec<(u64, Range<usize>)>,
    later_blocks: Vec<(usize, usize)>,
    next_search_id: u64,
    /// Odd blocks of the current pass waiting for their wave.
    deferred: VecDeque<(usize, usize)>,
    wave: usize,
    pending: Pending,
    round: u32,
    biconf_clean_run: u32,
    outstanding: Outstanding,
    send_now: bool,
    /// The resend timer of the outstanding message (a fresh one per message).
    timer: Retransmit,
    events: VecDeque<CascadeEvent>,
    stats: CascadeStats,
    state: State,
}

impl core::fmt::Debug for CascadeBob {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CascadeBob")
            .field("block", &self.block)
            .field("key_len", &self.key.len())
            .field("round", &self.round)
            .field("stats", &self.stats)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl CascadeBob {
    /// Bob's machine for `block` with his noisy `key`, the shuffle `plan`
    /// both sides use and the configuration both sides agreed on. The first
    /// questions are ready for `poll_transmit` at once.
    ///
    /// # Errors
    /// A [`ConfigError`]: an invalid `config`, or a `plan` for another key
    /// length.
    pub fn new(
        block: BlockId,
        key: BitVec,
        plan: Arc<ShufflePlan>,
        config: &CascadeConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        if plan.key_len() != key.len() {
            return Err(ConfigError::new(
                "plan",
                format!(
                    "the shuffle plan is for keys of {} bits, the key has {}",
                    plan.key_len(),
                    key.len()
                ),
            ));
        }
        let mut bob = CascadeBob {
            block,
            stats: CascadeStats {
                key_len: key.len(),
                ..CascadeStats::default()
            },
            key,
            plan,
            config: config.clone(),
            passes: Vec::new(),
            total_alice: None,
            searches: Vec::new(),
            checks: Vec::new(),
            groups: Vec::new(),
            group_blocks: Vec::new(),
            flip_blocks: Vec::new(),
            flip_ends: Vec::new(),
            scratch: Vec::new(),
            later: Vec::new(),
            later_blocks: Vec::new(),
            next_search_id: 0,
            deferred: VecDeque::new(),
            wave: 0,
            pending: Pending::Nothing,
            round: 0,
            biconf_clean_run: 0,
            outstanding: Outstanding::Nothing,
            send_now: false,
            timer: Retransmit::new(config.retransmit_after, config.max_retransmissions),
            events: VecDeque::new(),
            state: State::Asking,
        };
        bob.plan_round();
        Ok(bob)
    }

    /// The block this run reconciles.
    #[must_use]
    pub fn block(&self) -> BlockId {
        self.block
    }

    /// Bob's key: corrected as far as the run has got.
    #[must_use]
    pub fn key(&self) -> &BitVec {
        &self.key
    }

    /// Takes the (corrected) key, ending the machine.
    #[must_use]
    pub fn into_key(self) -> BitVec {
        self.key
    }

    /// The counts so far.
    #[must_use]
    pub fn stats(&self) -> CascadeStats {
        self.stats
    }

    /// Whether the run has ended (completed or aborted).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Completed | State::Aborted)
    }

    fn abort(&mut self, reason: AbortReason, tell_peer: bool) {
        if self.is_finished() {
            return;
        }
        self.state = State::Aborted;
        self.timer.disarm();
        self.outstanding = Outstanding::Nothing;
        self.send_now = false;
        if tell_peer {
            self.outstanding = Outstanding::Message(
                CascadeMessage::Abort {
                    block: self.block,
                    reason,
                }
                .encode(),
            );
            self.send_now = true;
        }
        self.release();
        self.events.push_back(CascadeEvent::Aborted(reason));
    }

    fn release(&mut self) {
        self.passes.clear();
        self.searches.clear();
        self.checks.clear();
        self.groups.clear();
        self.group_blocks.clear();
        self.flip_blocks.clear();
        self.flip_ends.clear();
        self.later.clear();
        self.later_blocks.clear();
        self.pending = Pending::Nothing;
    }

    /// A timer for a new outstanding message: its resends are counted
    /// from zero.
    fn fresh_timer(&self) -> Retransmit {
        Retransmit::new(
            self.config.retransmit_after,
            self.config.max_retransmissions,
        )
    }

    fn reuse(&self) -> bool {
        self.config.params.reuse_known_parities
    }

    // ----- answers -----

    fn apply_answers(&mut self, parities: &BitVec) {
        match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::Nothing => {}
            Pending::Top { pass, asked } => {
                // The answers are blocks `0 .. asked` in order: the top
                // parities are their words (bits past `asked` are zero).
                let p = &mut self.passes[pass];
                debug_assert_eq!(parities.len(), asked);
                let mut words = parities.words().to_vec();
                words.resize(p.blocks.div_ceil(64), 0);
                p.top = BitVec::from_words(words, p.blocks).expect("one word per 64 blocks");
                self.start_pass(pass);
            }
            Pending::Searches(count) => {
                let reuse = self.config.params.reuse_known_parities;
                let words = parities.words();
                for (i, s) in self.searches[..count].iter_mut().enumerate() {
                    let bit = (words[i / 64] >> (i % 64)) & 1 == 1;
                    s.answer = Some(bit);
                    if reuse {
                        // Only left children are asked (a right child's
                        // parity is its parent's ^ the left one's), so only
                        // left children are ever remembered or recalled.
                        self.passes[s.pass].remember(s.block, s.node, bit);
                    }
                }
            }
        }
    }

    /// All block parities of `pass` are known (asked or implied): derive the
    /// implied one and check every block.
    fn start_pass(&mut self, pass: usize) {
        let implied = self.implies_last_block(pass);
        let p = &mut self.passes[pass];
        if implied {
            let total = self.total_alice.unwrap_or(false);
            let others = p.top.count_ones() - usize::from(p.top.get(p.blocks - 1));
            p.top.set(p.blocks - 1, total ^ (others & 1 == 1));
        }
        if pass == 0 {
            self.total_alice = Some(self.passes[0].top.parity(..));
        }
        let blocks = self.passes[pass].blocks;
        if self.passes[pass].biconf {
            let any_odd = (0..blocks).any(|b| self.block_diff(pass, b));
            if any_odd {
                self.biconf_clean_run = 0;
            } else {
                self.biconf_clean_run += 1;
            }
        }
        let waves = self.config.params.search_waves as usize;
        if pass == 0 || waves <= 1 {
            self.checks.extend((0..blocks).map(|b| (pass, b)));
            return;
        }
        for b in 0..blocks {
            if self.block_diff(pass, b) {
                self.deferred.push_back((pass, b));
            }
        }
        self.wave = self.deferred.len().div_ceil(waves);
    }

    fn implies_last_block(&self, pass: usize) -> bool {
        pass > 0 && self.total_alice.is_some() && (self.reuse() || self.passes[pass].biconf)
    }

    // ----- parities and flips -----

    fn block_diff(&self, pass: usize, block: usize) -> bool {
        let p = &self.passes[pass];
        p.top.get(block) ^ p.mine.get(block)
    }

    /// Bob's parities of the blocks of a new pass, on words.
    fn block_parities(&mut self, pass: usize, k: usize) -> BitVec {
        let n = self.key.len();
        if pass > 0 && (k >= n || k == self.plan.half()) {
            // One block, or the two halves through the mask.
            let total = self.key.parity(..);
            if k >= n {
                return std::iter::once(total).collect();
            }
            let first = self.plan.shuffle(pass).half_parity(&self.key);
            return [first, first ^ total].into_iter().collect();
        }
        if pass > 0 && self.passes[pass].copy.copy.is_none() {
            self.passes[pass].copy.copy = Some(self.plan.shuffle(pass).gather(&self.key));
        }
        let bits = match &self.passes[pass].copy.copy {
            Some(copy) => copy,
            None => &self.key,
        };
        (0..n.div_ceil(k))
            .map(|b| bits.parity(b * k..((b + 1) * k).min(n)))
            .collect()
    }

    /// Flips key bit `i` (Bob's error), in the key and every shuffled copy,
    /// and queues the block holding it in every started pass.
    /// `at` is the bit's position in pass `found_in`, where a search just
    /// found it (one lookup in a large table saved).
    ///
    /// Passes of half-key blocks without a shuffled copy need only the
    /// block, which the half mask gives (an 8-bit-per-byte table instead of
    /// a likely cache miss in the permutation).
    fn flip(&mut self, i: usize, found_in: usize, at: usize) {
        self.key.flip(i);
        self.stats.corrected_bits += 1;
        let n = self.key.len();
        let half = self.plan.half();
        for (pass, p) in self.passes.iter_mut().enumerate() {
            let block = if pass == found_in {
                if let Some(copy) = &mut p.copy.copy {
                    copy.flip(at);
                }
                at / p.k
            } else if pass > 0 && p.copy.copy.is_none() && (p.k >= n || p.k == half) {
                if p.k >= n {
                    0
                } else {
                    usize::from(!self.plan.shuffle(pass).in_first_half(i))
                }
            } else {
                let j = self.plan.position(pass, i);
                if let Some(copy) = &mut p.copy.copy {
                    copy.flip(j);
                }
                j / p.k
            };
            p.mine.flip(block);
            p.touched.set(block, true);
            self.flip_blocks.push((pass, block));
        }
        self.flip_ends.push(self.flip_blocks.len());
    }

    // ----- the rounds -----

    /// Runs everything that needs no answer, then prepares the next message.
    fn plan_round(&mut self) {
        loop {
            self.converge();
            if !self.searches.is_empty() {
                let count = self.searches.len();
                self.pending = Pending::Searches(count);
                let msg = self.encode_pending(self.round);
                self.send_questions(msg, count);
                return;
            }
            if !self.later.is_empty() {
                for (_, range) in self.later.drain(..) {
                    let start = self.group_blocks.len();
                    self.group_blocks
                        .extend_from_slice(&self.later_blocks[range]);
                    self.groups.push(start..self.group_blocks.len());
                }
                self.later_blocks.clear();
                continue;
            }
            if !self.deferred.is_empty() {
                let take = self.wave.clamp(1, self.deferred.len());
                self.checks.extend(self.deferred.drain(..take));
                continue;
            }
            let Some((k, biconf)) = self.next_pass() else {
                self.finish();
                return;
            };
            let pass = self.passes.len();
            let n = self.key.len();
            let blocks = n.div_ceil(k);
            let tree = 2 * k.next_power_of_two();
            self.passes.push(Pass {
                k,
                blocks,
                biconf,
                top: BitVec::zeros(blocks),
                mine: BitVec::new(),
                active: BitVec::zeros(blocks),
                touched: BitVec::zeros(blocks),
                copy: LazyCopy::default(),
                tree,
                known: Vec::new(),
                remembered: BitVec::zeros(blocks),
                sparse: NodeMap::default(),
            });
            self.passes[pass].mine = self.block_parities(pass, k);
            self.stats.passes += 1;
            let asked = if self.implies_last_block(pass) {
                blocks - 1
            } else {
                blocks
            };
            if asked == 0 {
                self.start_pass(pass);
                continue;
            }
            self.pending = Pending::Top { pass, asked };
            let msg = self.encode_pending(self.round);
            self.send_questions(msg, asked);
            return;
        }
    }

    fn next_pass(&self) -> Option<(usize, bool)> {
        let params = &self.config.params;
        let done = self.passes.len();
        if done < params.block_sizes.len() {
            return Some((params.block_sizes[done].min(self.key.len()), false));
        }
        let target = params.biconf_clean_passes?;
        if self.biconf_clean_run >= target || done >= params.passes() {
            return None;
        }
        Some((self.plan.half(), true))
    }

    /// The questions that `pending` stands for, as the message of `round`:
    /// the next sub-block of each search, or the blocks of a new pass.
    fn encode_pending(&self, round: u32) -> Vec<u8> {
        let n = self.key.len();
        let (block, seed) = (self.block, self.plan.seed());
        match self.pending {
            Pending::Searches(count) => {
                let questions = self.searches[..count].iter().map(|s| Question {
                    pass: s.pass as u8,
                    start: s.start as u32,
                    len: (s.end - s.start).div_ceil(2) as u32,
                });
                encode_questions(block, round, seed, n as u32, count, questions)
            }
            Pending::Top { pass, asked } => {
                let p = &self.passes[pass];
                let questions = (0..asked).map(|b| {
                    let (s, e) = p.block_range(b, n);
                    Question {
                        pass: pass as u8,
                        start: s as u32,
                        len: (e - s) as u32,
                    }
                });
                encode_questions(block, round, seed, n as u32, asked, questions)
            }
            // Questions are outstanding only while answers are pending.
            Pending::Nothing => encode_questions(block, round, seed, n as u32, 0, [].into_iter()),
        }
    }

    /// Sends `msg`, the encoded questions of this round (`count` of them).
    fn send_questions(&mut self, msg: Vec<u8>, count: usize) {
        self.stats.leaked_bits += count as u64;
        self.stats.channel_uses += 1;
        self.round += 1;
        self.outstanding = Outstanding::Questions(Some(msg));
        self.send_now = true;
    }

    fn finish(&mut self) {
        self.state = State::Finishing;
        self.outstanding = Outstanding::Message(
            CascadeMessage::Done {
                block: self.block,
                rounds: self.round,
                leaked_bits: self.stats.leaked_bits,
            }
            .encode(),
        );
        self.send_now = true;
    }

    /// Starts searches in odd blocks and advances every search as far as
    /// the known parities allow, until each one waits for an answer.
    fn converge(&mut self) {
        loop {
            while let Some((pass, block)) = self.checks.pop() {
                if !self.passes[pass].active.get(block) && self.block_diff(pass, block) {
                    self.start_search(pass, block);
                }
            }
            let (mut blocks, mut ends) = (
                std::mem::take(&mut self.flip_blocks),
                std::mem::take(&mut self.flip_ends),
            );
            let mut from = 0;
            for &end in &ends {
                self.start_smallest(&blocks[from..end]);
                from = end;
            }
            blocks.clear();
            ends.clear();
            (self.flip_blocks, self.flip_ends) = (blocks, ends);
            if !self.groups.is_empty() {
                let (mut groups, mut group_blocks) = (
                    std::mem::take(&mut self.groups),
                    std::mem::take(&mut self.group_blocks),
                );
                for range in &groups {
                    self.start_smallest(&group_blocks[range.clone()]);
                }
                groups.clear();
                group_blocks.clear();
                (self.groups, self.group_blocks) = (groups, group_blocks);
            }
            let mut any_done = false;
            for si in 0..self.searches.len() {
                self.step(si);
                any_done |= self.searches[si].done;
            }
            let mut ended = Vec::new();
            if any_done {
                let passes = &mut self.passes;
                let track = !self.later.is_empty() && !self.config.params.defer_until_idle;
                self.searches.retain(|s| {
                    if s.done {
                        passes[s.pass].active.set(s.block, false);
                        if track {
                            ended.push(s.id);
                        }
                    }
                    !s.done
                });
            }
            if !ended.is_empty() {
                let mut i = 0;
                while i < self.later.len() {
                    if ended.contains(&self.later[i].0) {
                        let (_, range) = self.later.swap_remove(i);
                        let start = self.group_blocks.len();
                        self.group_blocks
                            .extend_from_slice(&self.later_blocks[range]);
                        self.groups.push(start..self.group_blocks.len());
                    } else {
                        i += 1;
                    }
                }
                self.compact_later();
            }
            if self.checks.is_empty() && self.groups.is_empty() && self.flip_ends.is_empty() {
                return;
            }
        }
    }

    /// Of the blocks that held one flipped bit, searches the smallest odd
    /// one now and sets the other odd ones aside: the error the small search
    /// finds often makes them even again, and the small search is cheaper.
    fn start_smallest(&mut self, group: &[(usize, usize)]) {
        let n = self.key.len();
        let mut odd = std::mem::take(&mut self.scratch);
        odd.clear();
        odd.extend(group.iter().copied().filter(|&(pass, block)| {
            !self.passes[pass].active.get(block) && self.block_diff(pass, block)
        }));
        if let Some(best) = (0..odd.len()).min_by_key(|&i| {
            let (s, e) = self.passes[odd[i].0].block_range(odd[i].1, n);
            (e - s, odd[i].0)
        }) {
            let (pass, block) = odd.swap_remove(best);
            let id = self.start_search(pass, block);
            if !odd.is_empty() {
                let start = self.later_blocks.len();
                self.later_blocks.extend_from_slice(&odd);
                self.later.push((id, start..self.later_blocks.len()));
            }
        }
        self.scratch = odd;
    }

    /// Drops the blocks of groups no longer set aside from `later_blocks`
    /// once they are most of it (only groups taken out one by one, when
    /// set-aside blocks are checked as soon as their search ends, leave
    /// such gaps).
    fn compact_later(&mut self) {
        if self.later.is_empty() {
            self.later_blocks.clear();
            return;
        }
        let live: usize = self.later.iter().map(|(_, r)| r.len()).sum();
        if self.later_blocks.len() <= 2 * live + 64 {
            return;
        }
        let mut kept = Vec::with_capacity(live);
        for (_, range) in &mut self.later {
            let start = kept.len();
            kept.extend_from_slice(&self.later_blocks[range.clone()]);
            *range = start..kept.len();
        }
        self.later_blocks = kept;
    }

    fn start_search(&mut self, pass: usize, block: usize) -> u64 {
        let (start, end) = self.passes[pass].block_range(block, self.key.len());
        self.passes[pass].active.set(block, true);
        let alice = self.passes[pass].top.get(block);
        self.searches.push(Search {
            pass,
            block,
            node: 1,
            start,
            end,
            alice,
            answer: None,
            mine: false,
            mine_valid: false,
            waiting: u32::MAX,
            done: false,
            id: self.next_search_id,
        });
        self.next_search_id += 1;
        self.next_search_id - 1
    }

    /// Advances one search until it needs an answer or ends.
    fn step(&mut self, si: usize) {
        let round = self.round;
        let reuse = self.reuse();
        let n = self.key.len();
        let Self {
            searches,
            passes,
            key,
            plan,
            ..
        } = self;
        let s = &mut searches[si];
        if s.answer.is_none() && s.waiting == round && !passes[s.pass].touched.get(s.block) {
            return;
        }
        let found = loop {
            // Bob's parity of the current node: kept from the step that
            // narrowed to it unless a bit of the block has been flipped
            // since.
            if !s.mine_valid || passes[s.pass].touched.get(s.block) {
                s.mine = if s.node == 1 {
                    passes[s.pass].mine.get(s.block)
                } else {
                    range_parity(passes, key, plan, s.pass, s.start, s.end)
                };
                s.mine_valid = true;
                passes[s.pass].touched.set(s.block, false);
            }
            if s.alice == s.mine {
                s.answer = None;
                if s.node == 1 {
                    s.done = true;
                    break None;
                }
                let p = &passes[s.pass];
                (s.start, s.end) = p.block_range(s.block, n);
                s.node = 1;
                s.alice = p.top.get(s.block);
                s.mine_valid = false;
                continue;
            }
            if s.end - s.start == 1 {
                let i = if s.pass == 0 {
                    s.start
                } else {
                    plan.shuffle(s.pass).order.get(s.start)
                };
                s.done = true;
                break Some((i, s.pass, s.start));
            }
            let mid = s.start + (s.end - s.start).div_ceil(2);
            let left = match s.answer.take() {
                Some(a) => Some(a),
                None if reuse => passes[s.pass].recall(s.block, s.node),
                None => None,
            };
            let Some(left) = left else {
                // Ask for the left child's parity.
                s.waiting = round;
                break None;
            };
            let mine_left = range_parity(passes, key, plan, s.pass, s.start, mid);
            if left ^ mine_left {
                s.node *= 2;
                s.end = mid;
                s.alice = left;
                s.mine = mine_left;
            } else {
                s.node = 2 * s.node + 1;
                s.start = mid;
                s.alice ^= left;
                s.mine ^= mine_left;
            }
        };
        if let Some((i, pass, at)) = found {
            self.flip(i, pass, at);
        }
    }
}

/// Bob's parity of `start..end` in the order of `pass`, on words (a free
/// function so that a search can borrow its own entry meanwhile).
#[inline]
fn range_parity(
    passes: &mut [Pass],
    key: &BitVec,
    plan: &ShufflePlan,
    pass: usize,
    start: usize,
    end: usize,
) -> bool {
    if pass == 0 {
        return key.parity(start..end);
    }
    if let Some(copy) = &passes[pass].copy.copy {
        return copy.parity(start..end);
    }
    passes[pass].copy.parity(plan, pass, key, start, end)
}

impl Machine for CascadeBob {
    type Event = CascadeEvent;
    type Error = CascadeError;

    /// Feeds one datagram from Alice.
    ///
    /// # Errors
    /// The datagram was rejected and changed nothing: damaged or malformed,
    /// for another block, a message only Bob sends, or answers whose count
    /// differs from the questions. A `DoneAck` whose leak count differs from
    /// his ends the run: he sends an `Abort`, emits
    /// [`CascadeEvent::Aborted`] and returns `Ok`.
    fn handle_input(&mut self, _now: Instant, datagram: &[u8]) -> Result<(), CascadeError> {
        let msg = CascadeMessage::decode(datagram)?;
        if msg.block() != self.block {
            return Err(CascadeError::WrongBlock {
                expected: self.block,
                got: msg.block(),
            });
        }
        match msg {
            CascadeMessage::Answers {
                round, parities, ..
            } => {
                if self.state != State::Asking || round.checked_add(1) != Some(self.round) {
                    return Ok(()); // a duplicate of an answer already used
                }
                if matches!(self.outstanding, Outstanding::Nothing) {
                    return Ok(());
                }
                if parities.len() != self.pending.len() {
                    return Err(CascadeError::Protocol {
                        reason: "answer count differs from question count",
                    });
                }
                self.outstanding = Outstanding::Nothing;
                self.timer = self.fresh_timer();
                self.apply_answers(&parities);
                self.plan_round();
                Ok(())
            }
            CascadeMessage::DoneAck { leaked_bits, .. } => {
                if self.state != State::Finishing {
                    return Ok(());
                }
                self.outstanding = Outstanding::Nothing;
                self.timer.disarm();
                if leaked_bits != self.stats.leaked_bits {
                    self.abort(AbortReason::Protocol, true);
                    return Ok(());
                }
                self.state = State::Completed;
                self.release();
                self.events.push_back(CascadeEvent::Completed(self.stats));
                Ok(())
            }
            CascadeMessage::Abort { reason, .. } => {
                self.abort(reason, false);
                Ok(())
            }
            CascadeMessage::Questions { .. } | CascadeMessage::Done { .. } => {
                Err(CascadeError::Protocol {
                    reason: "message only Bob sends",
                })
            }
        }
    }

    /// Next datagram for Alice: new questions, a resend, `Done` or `Abort`.
    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !self.send_now {
            return None;
        }
        self.send_now = false;
        let msg = match &mut self.outstanding {
            Outstanding::Nothing => return None,
            Outstanding::Questions(first) => match first.take() {
                Some(msg) => msg,
                None => self.encode_pending(self.round.wrapping_sub(1)),
            },
            Outstanding::Message(msg) => msg.clone(),
        };
        self.timer.arm(now);
        Some(msg)
    }

    fn poll_event(&mut self) -> Option<CascadeEvent> {
        self.events.pop_front()
    }

    /// The resend deadline of the outstanding message.
    fn poll_timeout(&self) -> Option<Instant> {
        self.timer.deadline()
    }

    /// Resends the outstanding message, or aborts after too many resends.
    fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.outstanding, Outstanding::Nothing) {
            return;
        }
        match self.timer.poll(now) {
            RetransmitDue::NotYet => {}
            RetransmitDue::Resend => {
                self.stats.retransmissions += 1;
                self.send_now = true;
            }
            RetransmitDue::GiveUp => self.abort(AbortReason::Timeout, true),
        }
    }
}
