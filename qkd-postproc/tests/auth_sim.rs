//! Two parties talking through `AuthenticatedChannel` over the simulated
//! network: loss, duplication and reordering keep both pad streams in step,
//! context switches and a mid-run replenishment survive them, and a
//! man-in-the-middle's forgeries all fail and are counted.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use qkd_core::machine::Machine;
use qkd_core::sim::{LinkConfig, Network, Side};
use qkd_core::{Role, SecretKey};
use qkd_postproc::auth::{
    AuthenticatedChannel, ChannelConfig, HEADER_LEN, OpenError, Opened, PoolConfig, TagMode,
};

const RETRY: Duration = Duration::from_millis(40);
const DATA: u8 = b'D';
const ACK: u8 = b'A';

/// A reliable bidirectional transfer of `total` numbered messages per side
/// over the authenticated channel: each data message is re-sealed (new pad)
/// until acknowledged; every accepted data message is acknowledged.
struct Node {
    channel: AuthenticatedChannel,
    total: u32,
    /// Sequence numbers sent but not yet acknowledged.
    unacked: BTreeSet<u32>,
    next_new: u32,
    window: u32,
    /// Data sequence numbers received from the peer (each counted once).
    delivered: BTreeMap<u32, u32>,
    outbox: Vec<Vec<u8>>,
    retry_at: Option<Instant>,
    /// Switch the sending context to this mode once this many messages are acked.
    switch_after: Option<(u32, TagMode)>,
    /// Deposit this block at this time (both ends deposit the same bytes).
    deposit: Option<(Instant, u64, SecretKey)>,
    acked: u32,
    refused_for_empty_pool: u64,
    /// Every datagram this node sealed, and every one it accepted.
    sealed_log: BTreeSet<Vec<u8>>,
    accepted_log: Vec<Vec<u8>>,
}

impl Node {
    fn new(channel: AuthenticatedChannel, total: u32) -> Self {
        Node {
            channel,
            total,
            unacked: BTreeSet::new(),
            next_new: 0,
            window: 4,
            delivered: BTreeMap::new(),
            outbox: Vec::new(),
            retry_at: None,
            switch_after: None,
            deposit: None,
            acked: 0,
            refused_for_empty_pool: 0,
            sealed_log: BTreeSet::new(),
            accepted_log: Vec::new(),
        }
    }

    fn seal(&mut self, kind: u8, seq: u32) {
        let mut payload = vec![kind];
        payload.extend_from_slice(&seq.to_be_bytes());
        match self.channel.seal(&payload) {
            Ok(m) => {
                self.sealed_log.insert(m.clone());
                self.outbox.push(m);
            }
            // The pool is empty until the next deposit: send nothing now,
            // the retry timer tries again.
            Err(_) => self.refused_for_empty_pool += 1,
        }
    }

    fn send_new(&mut self, now: Instant) {
        while self.next_new < self.total && (self.unacked.len() as u32) < self.window {
            let seq = self.next_new;
            self.next_new += 1;
            self.unacked.insert(seq);
            self.seal(DATA, seq);
        }
        if !self.unacked.is_empty() && self.retry_at.is_none() {
            self.retry_at = Some(now + RETRY);
        }
    }

    fn done(&self) -> bool {
        self.acked == self.total
    }
}

impl Machine for Node {
    type Event = std::convert::Infallible;
    type Error = OpenError;

    fn handle_input(&mut self, now: Instant, datagram: &[u8]) -> Result<(), OpenError> {
        let opened = self.channel.open(datagram)?;
        self.accepted_log.push(datagram.to_vec());
        match opened {
            Opened::Data(payload) => {
                assert_eq!(payload.len(), 5, "only honest payloads are ever accepted");
                let seq = u32::from_be_bytes(payload[1..5].try_into().unwrap());
                match payload[0] {
                    DATA => {
                        *self.delivered.entry(seq).or_default() += 1;
                        self.seal(ACK, seq);
                    }
                    ACK => {
                        if self.unacked.remove(&seq) {
                            self.acked += 1;
                        }
                        if let Some((after, mode)) = self.switch_after
                            && self.acked >= after
                        {
                            // An empty pool refuses the switch: try again
                            // at the next acknowledgement.
                            if let Ok(m) = self.channel.switch_context(mode) {
                                self.switch_after = None;
                                self.outbox.push(m);
                            }
                        }
                        self.send_new(now);
                    }
                    other => panic!("forged payload kind {other} accepted"),
                }
            }
            Opened::ContextSwitch(_) => {}
            _ => unreachable!(),
        }
        Ok(())
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.next_new == 0 && self.total > 0 {
            self.send_new(now);
        }
        if self.outbox.is_empty() {
            None
        } else {
            Some(self.outbox.remove(0))
        }
    }

    fn poll_event(&mut self) -> Option<Self::Event> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let deposit = self.deposit.as_ref().map(|(at, _, _)| *at);
        match (self.retry_at, deposit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some((at, _, _)) = &self.deposit
            && *at <= now
        {
            let (_, block, key) = self.deposit.take().unwrap();
            self.channel.replenish(block, &key).unwrap();
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            // A switch the peer has not acknowledged goes out again first
            // (same bytes: costs no key; a duplicate is rejected as a replay).
            if let Some(switch) = self.channel.unconfirmed_switch() {
                self.outbox.push(switch.to_vec());
            }
            let pending: Vec<u32> = self.unacked.iter().copied().collect();
            for seq in pending {
                self.seal(DATA, seq);
            }
            if !self.unacked.is_empty() || self.channel.unconfirmed_switch().is_some() {
                self.retry_at = Some(now + RETRY);
            }
        }
    }
}

fn secret(len: usize, seed: u8) -> SecretKey {
    SecretKey::from_vec(
        (0..len)
            .map(|i| ((i * 131 + 17) as u8) ^ seed.rotate_left(i as u32 % 8))
            .collect(),
    )
}

fn channels(
    secret_len: usize,
    config: ChannelConfig,
) -> (AuthenticatedChannel, AuthenticatedChannel) {
    let s = secret(secret_len, 0x3c);
    (
        AuthenticatedChannel::new(Role::Alice, &s, config.clone()).unwrap(),
        AuthenticatedChannel::new(Role::Bob, &s, config).unwrap(),
    )
}

/// After a run, each side seals one more message that the other must
/// accept: the proof that the pad streams stayed in step.
fn assert_pads_in_step(net: &mut Network<Node, Node>) {
    let probe_a = net.a.channel.seal(b"probe from alice").unwrap();
    assert_eq!(
        net.b.channel.open(&probe_a),
        Ok(Opened::Data(&b"probe from alice"[..]))
    );
    let probe_b = net.b.channel.seal(b"probe from bob").unwrap();
    assert_eq!(
        net.a.channel.open(&probe_b),
        Ok(Opened::Data(&b"probe from bob"[..]))
    );
    // Neither end accepted a position its peer never sealed.
    assert!(net.b.channel.pool().receive_end() <= net.a.channel.pool().send_position());
    assert!(net.a.channel.pool().receive_end() <= net.b.channel.pool().send_position());
}

fn assert_delivered_all(node: &Node, total: u32) {
    assert!(node.done(), "{} of {total} acknowledged", node.acked);
    assert_eq!(node.delivered.len() as u32, total);
}

#[test]
fn lossy_reordering_link_keeps_pads_in_step_through_switches_and_a_deposit() {
    const TOTAL: u32 = 150;
    let config = ChannelConfig {
        pool: PoolConfig {
            window_units: 256,
            ..PoolConfig::default()
        },
        mode: TagMode::Bits128,
        ..ChannelConfig::default()
    };
    // 4 KiB pre-shared: 2 KiB per stream, 127 pads of 128 bits: not enough
    // for 150 data messages, their acks and the retransmissions, so the run
    // needs the deposit of block 1 (made at different times on the two ends).
    let (a, b) = channels(4096, config);
    let start = Instant::now();
    let block = secret(64 * 1024, 0x91);
    let mut alice = Node::new(a, TOTAL);
    alice.switch_after = Some((40, TagMode::Bits64));
    alice.deposit = Some((start + Duration::from_millis(300), 1, block.clone()));
    let mut bob = Node::new(b, TOTAL);
    bob.switch_after = Some((90, TagMode::Bits128));
    bob.deposit = Some((start + Duration::from_millis(450), 1, block));

    let link = LinkConfig::perfect(Duration::from_millis(5))
        .with_jitter(Duration::from_millis(3))
        .with_loss(0.15)
        .with_duplicate(0.05)
        .with_reorder(0.1, Duration::from_millis(12));
    let mut net = Network::new(alice, bob, link, 2026, start);
    net.drive();

    assert_delivered_all(&net.a, TOTAL);
    assert_delivered_all(&net.b, TOTAL);
    let (ab, ba) = (net.stats(Side::A).clone(), net.stats(Side::B).clone());
    assert!(ab.dropped > 10 && ba.dropped > 10, "{ab:?} {ba:?}");
    assert!(ab.reordered > 5 && ab.duplicated > 0, "{ab:?}");
    // The deposit was needed: both ends ran dry before it.
    assert!(net.a.refused_for_empty_pool + net.b.refused_for_empty_pool > 0);
    // Every rejection is a typed, harmless one: duplicates, late copies
    // beyond the window, messages ahead of a deposit or of a lost switch.
    for e in net.errors_a().iter().chain(net.errors_b()) {
        assert!(
            matches!(
                e,
                OpenError::Replay
                    | OpenError::TooOld
                    | OpenError::PadUnavailable
                    | OpenError::UnknownContext(_)
            ),
            "{e:?}"
        );
    }
    assert_eq!(net.a.channel.stats().forgeries_rejected, 0);
    assert_eq!(net.b.channel.stats().forgeries_rejected, 0);
    let (sa, sb) = (net.a.channel.stats(), net.b.channel.stats());
    // This seed exercises the recoveries: messages ahead of a lost switch
    // and messages ahead of Bob's deposit were refused, then re-sent.
    assert!(sa.unknown_context_rejected + sb.unknown_context_rejected > 0);
    assert!(sb.unavailable_rejected > 0);
    assert!(sa.replays_rejected + sb.replays_rejected > 0);
    // Both switches happened and were confirmed.
    assert_eq!(net.a.channel.send_context().id(), 2);
    assert_eq!(net.a.channel.send_context().mode(), TagMode::Bits64);
    assert_eq!(net.b.channel.receive_context().id(), 2);
    assert_eq!(net.b.channel.send_context().id(), 2);
    assert_eq!(net.a.channel.receive_context().id(), 2);
    assert!(net.a.channel.unconfirmed_switch().is_none());
    assert!(net.b.channel.unconfirmed_switch().is_none());

    // Accounting: what each end accepted is what it counted.
    let (pa, pb) = (
        net.a.channel.pool().stats().clone(),
        net.b.channel.pool().stats().clone(),
    );
    assert_eq!(pa.sent_messages, net.a.channel.stats().sealed);
    assert_eq!(pb.received_messages, net.b.channel.stats().opened);
    assert!(pb.received_messages <= pa.sent_messages);
    assert_eq!(pa.replenished_bits, 64 * 1024 * 8);
    assert_pads_in_step(&mut net);
}

#[test]
fn same_seed_same_run() {
    let run = || {
        let (a, b) = channels(64 * 1024, ChannelConfig::default());
        let link = LinkConfig::perfect(Duration::from_millis(2))
            .with_loss(0.2)
            .with_reorder(0.2, Duration::from_millis(7));
        let mut net = Network::new(Node::new(a, 60), Node::new(b, 60), link, 5, Instant::now());
        net.drive();
        (
            net.a.channel.pool().stats().clone(),
            net.b.channel.pool().stats().clone(),
            net.elapsed(),
        )
    };
    assert_eq!(run(), run());
}

/// What the attacker did, for the final count.
#[derive(Default)]
struct Attack {
    captured: Vec<(Side, Vec<u8>)>,
    tampered_in_flight: u64,
}

#[test]
fn man_in_the_middle_forgeries_all_fail_and_are_counted() {
    const TOTAL: u32 = 80;
    let (a, b) = channels(64 * 1024, ChannelConfig::default());
    let start = Instant::now();
    let mut net = Network::new(
        Node::new(a, TOTAL),
        Node::new(b, TOTAL),
        LinkConfig::perfect(Duration::from_millis(3)),
        77,
        start,
    );
    let attack = Rc::new(RefCell::new(Attack::default()));
    {
        let attack = Rc::clone(&attack);
        let mut n = 0u64;
        // In the middle: keep a copy of everything; tamper with every 7th
        // datagram in flight (one payload or tag bit), which then never
        // reaches the peer intact; drop every 11th other one.
        net.set_interceptor(Box::new(move |from, datagram| {
            n += 1;
            let mut at = attack.borrow_mut();
            at.captured.push((from, datagram.clone()));
            if n.is_multiple_of(7) && datagram.len() > HEADER_LEN {
                let bit = (n as usize * 13) % ((datagram.len() - HEADER_LEN) * 8);
                datagram[HEADER_LEN + bit / 8] ^= 1 << (bit % 8);
                at.tampered_in_flight += 1;
                return true;
            }
            !n.is_multiple_of(11)
        }));
    }

    let (mut tag_forgeries, mut reflected, mut replayed) = (0u64, 0u64, 0u64);
    let mut forged_upto = 0usize;
    while net.step() {
        // Forge from every datagram captured since the last step, while the
        // honest transfer runs (each captured message is used once).
        if net.a.done() && net.b.done() {
            continue;
        }
        let latest: Vec<(Side, Vec<u8>)> = {
            let at = attack.borrow();
            let new = at.captured[forged_upto..].to_vec();
            forged_upto = at.captured.len();
            new
        };
        for (from, m) in latest {
            let to = from.peer();
            let tag_at = m.len() - 16;
            let mut forgeries = Vec::new();
            // 1. Replace the payload with the attacker's, keep header and tag.
            let mut f = m.clone();
            f[HEADER_LEN] = 0xEE;
            forgeries.push(f);
            // 2. Same message, tag guessed.
            let mut f = m.clone();
            f[tag_at..].copy_from_slice(&[0xA5; 16]);
            forgeries.push(f);
            // 3. Moved to a fresh future position (an unused pad).
            let mut f = m.clone();
            let pos = u64::from_be_bytes(f[12..20].try_into().unwrap());
            f[12..20].copy_from_slice(&(pos + 40).to_be_bytes());
            forgeries.push(f);
            // 4. Reflected back to its sender.
            net.inject(from, m.clone(), Duration::from_millis(1));
            reflected += 1;
            // 5. The same message replayed once the original has arrived.
            net.inject(to, m.clone(), Duration::from_millis(30));
            replayed += 1;
            // 6. (the 4th tag forgery) Attacker's own payload and a tag derived from the captured one
            //    (XOR-malleability: flip the same bits in payload and tag).
            let mut f = m.clone();
            f[HEADER_LEN + 1] ^= 0x01;
            f[tag_at] ^= 0x01;
            forgeries.push(f);
            for f in forgeries {
                net.inject(to, f, Duration::from_millis(1));
                tag_forgeries += 1;
            }
        }
    }
    assert_delivered_all(&net.a, TOTAL);
    assert_delivered_all(&net.b, TOTAL);
    let at = attack.borrow();
    let rejected = net.stats(Side::A).rejected + net.stats(Side::B).rejected;
    let (sa, sb) = (net.a.channel.stats().clone(), net.b.channel.stats().clone());
    // Each tag forgery and each datagram tampered in flight failed its tag
    // check, and was counted as such.
    assert!(at.tampered_in_flight > 5, "{}", at.tampered_in_flight);
    assert!(tag_forgeries > 400, "{tag_forgeries}");
    // No forgery was accepted: every datagram either end accepted is, byte
    // for byte, one its peer sealed.
    for (node, peer) in [(&net.a, &net.b), (&net.b, &net.a)] {
        for m in &node.accepted_log {
            assert!(
                peer.sealed_log.contains(m),
                "a forged datagram was accepted"
            );
        }
    }
    // Tag forgeries that arrive before their original fail the tag check;
    // those arriving after it (the attacker forges after the step that
    // carried the original) are rejected as replays of a used position.
    let tag_failures = sa.forgeries_rejected + sb.forgeries_rejected;
    let replays = sa.replays_rejected + sb.replays_rejected;
    assert!(tag_failures <= tag_forgeries + at.tampered_in_flight);
    assert!(
        tag_failures * 100 >= (tag_forgeries + at.tampered_in_flight) * 95,
        "{sa:?} {sb:?}"
    );
    assert!(tag_failures + replays >= tag_forgeries + at.tampered_in_flight);
    // Reflections are refused before any tag check.
    assert_eq!(sa.malformed_rejected + sb.malformed_rejected, reflected);
    // Every message sealed was accepted exactly once: the attacker's
    // replayed copies even delivered those it had tampered with or dropped.
    assert_eq!(sa.opened, sb.sealed);
    assert_eq!(sb.opened, sa.sealed);
    assert!(replayed > 400);
    // Every rejection is one of the counted kinds.
    let counted: u64 = [&sa, &sb]
        .iter()
        .map(|s| {
            s.forgeries_rejected
                + s.replays_rejected
                + s.too_old_rejected
                + s.malformed_rejected
                + s.unknown_context_rejected
                + s.unavailable_rejected
        })
        .sum();
    assert_eq!(counted, rejected);
    for e in net.errors_a().iter().chain(net.errors_b()) {
        assert!(
            matches!(
                e,
                OpenError::AuthenticationFailed
                    | OpenError::Replay
                    | OpenError::TooOld
                    | OpenError::WrongSender
                    | OpenError::PadUnavailable
            ),
            "{e:?}"
        );
    }
    assert_pads_in_step(&mut net);
}

#[test]
fn hostile_link_with_corruption_never_delivers_a_corrupted_message() {
    const TOTAL: u32 = 100;
    let config = ChannelConfig {
        mode: TagMode::Bits64,
        ..ChannelConfig::default()
    };
    let (a, b) = channels(64 * 1024, config);
    // 10 % loss, 5 % duplication, 5 % reordering, jitter, and 1 to 3 bits
    // flipped in 5 % of the datagrams.
    let link = LinkConfig::hostile(Duration::from_millis(4)).with_corrupt(0.05);
    let mut net = Network::new(
        Node::new(a, TOTAL),
        Node::new(b, TOTAL),
        link,
        11,
        Instant::now(),
    );
    net.drive();
    assert_delivered_all(&net.a, TOTAL);
    assert_delivered_all(&net.b, TOTAL);
    let corrupted = net.stats(Side::A).corrupted + net.stats(Side::B).corrupted;
    assert!(corrupted > 10, "{corrupted}");
    for (node, peer) in [(&net.a, &net.b), (&net.b, &net.a)] {
        for m in &node.accepted_log {
            assert!(
                peer.sealed_log.contains(m),
                "a corrupted datagram was accepted"
            );
        }
    }
    // Corrupted datagrams end in typed errors: a failed tag, or a header
    // that no longer parses or no longer names a valid context or position.
    let failed_tags =
        net.a.channel.stats().forgeries_rejected + net.b.channel.stats().forgeries_rejected;
    assert!(failed_tags > 0);
    assert_pads_in_step(&mut net);
}
