//! Two parties talking through `Authenticated<Transfer>` over the
//! simulated network: loss, duplication and reordering keep both pad
//! streams in step, context switches and a mid-run replenishment survive
//! them, and a man-in-the-middle's forgeries all fail and are counted.
//!
//! `Transfer` is a small reliable-delivery protocol written for these tests
//! (numbered data messages, acknowledgements, retransmission); the channel
//! under it is the library's wrapper, driven by `sim::Network` directly.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use qkd_core::machine::Machine;
use qkd_core::sim::{LinkConfig, Network, Side};
use qkd_core::{BitVec, BlockId, Role, SecretKey};
use qkd_postproc::auth::{
    AuthEvent, Authenticated, AuthenticatedChannel, AuthenticatedConfig, AuthenticatedError,
    AuthenticatedEvent, ChannelConfig, HEADER_LEN, OpenError, Opened, PoolConfig, PresharedSecret,
    ReplenishShare, SecretId, TagMode,
};
use qkd_postproc::confirm::{
    ConfirmAlice, ConfirmBob, ConfirmConfig, ConfirmEvent, ConfirmedBlock,
};
use rand_core::SeedableRng;

const RETRY: Duration = Duration::from_millis(40);
const DATA: u8 = b'D';
const ACK: u8 = b'A';

/// Reliable transfer of `total` numbered messages per side: each data
/// message is sent again until acknowledged; every data message received
/// is acknowledged.
struct Transfer {
    total: u32,
    unacked: BTreeSet<u32>,
    next_new: u32,
    window: u32,
    /// Data sequence numbers received from the peer, with how often.
    delivered: BTreeMap<u32, u32>,
    outbox: VecDeque<Vec<u8>>,
    retry_at: Option<Instant>,
    acked: u32,
}

impl Transfer {
    fn new(total: u32) -> Self {
        Transfer {
            total,
            unacked: BTreeSet::new(),
            next_new: 0,
            window: 4,
            delivered: BTreeMap::new(),
            outbox: VecDeque::new(),
            retry_at: None,
            acked: 0,
        }
    }

    fn send(&mut self, kind: u8, seq: u32) {
        let mut payload = vec![kind];
        payload.extend_from_slice(&seq.to_be_bytes());
        self.outbox.push_back(payload);
    }

    fn send_new(&mut self, now: Instant) {
        while self.next_new < self.total && (self.unacked.len() as u32) < self.window {
            let seq = self.next_new;
            self.next_new += 1;
            self.unacked.insert(seq);
            self.send(DATA, seq);
        }
        if !self.unacked.is_empty() && self.retry_at.is_none() {
            self.retry_at = Some(now + RETRY);
        }
    }

    fn done(&self) -> bool {
        self.acked == self.total
    }
}

impl Machine for Transfer {
    type Event = std::convert::Infallible;
    type Error = &'static str;

    fn handle_input(&mut self, now: Instant, payload: &[u8]) -> Result<(), &'static str> {
        let [kind, a, b, c, d] = payload else {
            return Err("payload of the wrong length");
        };
        let seq = u32::from_be_bytes([*a, *b, *c, *d]);
        match *kind {
            DATA if seq < self.total => {
                *self.delivered.entry(seq).or_default() += 1;
                self.send(ACK, seq);
            }
            ACK if self.unacked.remove(&seq) => {
                self.acked += 1;
                self.send_new(now);
            }
            ACK => {}
            _ => return Err("forged payload"),
        }
        Ok(())
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.next_new == 0 && self.total > 0 {
            self.send_new(now);
        }
        self.outbox.pop_front()
    }

    fn poll_event(&mut self) -> Option<Self::Event> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.retry_at
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            let pending: Vec<u32> = self.unacked.iter().copied().collect();
            for seq in pending {
                self.send(DATA, seq);
            }
            if !self.unacked.is_empty() {
                self.retry_at = Some(now + RETRY);
            }
        }
    }
}

type End = Authenticated<Transfer>;

fn secret(len: usize, seed: u8) -> SecretKey {
    SecretKey::from_vec(
        (0..len)
            .map(|i| ((i * 131 + 17) as u8) ^ seed.rotate_left(i as u32 % 8))
            .collect(),
    )
}

fn started(role: Role, s: &SecretKey, config: ChannelConfig) -> AuthenticatedChannel {
    let (mut channel, first) = AuthenticatedChannel::new(
        role,
        PresharedSecret::new(SecretId::new(3), s.clone()),
        config,
    )
    .unwrap();
    channel.commit(first).unwrap();
    while channel.poll_event().is_some() {}
    channel
}

fn ends(secret_len: usize, config: ChannelConfig, total: u32) -> (End, End) {
    let s = secret(secret_len, 0x3c);
    let wrap = |role| {
        Authenticated::new(
            Transfer::new(total),
            started(role, &s, config.clone()),
            AuthenticatedConfig::default(),
        )
        .unwrap()
    };
    (wrap(Role::Alice), wrap(Role::Bob))
}

/// Both sides agree on block `block` through the confirmation machines,
/// the only way to get the proof the pools ask for.
fn agree(block: u64) -> (ConfirmedBlock, ConfirmedBlock) {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(block);
    let key = BitVec::random(256, &mut rng);
    let now = Instant::now();
    let config = ConfirmConfig::default();
    let block = BlockId::new(block);
    let mut alice = ConfirmAlice::new(block, key.as_bitslice(), &config, &mut rng, now).unwrap();
    let mut bob = ConfirmBob::new(block, key.as_bitslice(), &config).unwrap();
    bob.handle_input(now, &alice.poll_transmit(now).unwrap())
        .unwrap();
    alice
        .handle_input(now, &bob.poll_transmit(now).unwrap())
        .unwrap();
    match (alice.poll_event(), bob.poll_event()) {
        (Some(ConfirmEvent::Confirmed(a)), Some(ConfirmEvent::Confirmed(b))) => (a, b),
        other => panic!("{other:?}"),
    }
}

/// The host's duty: checkpoints are persisted (here: serialized) and committed.
fn host(end: &mut End, events: Vec<AuthenticatedEvent<std::convert::Infallible>>) {
    for e in events {
        if e == AuthenticatedEvent::Channel(AuthEvent::CheckpointDue) {
            let cp = end.checkpoint();
            let _persisted = serde_json::to_vec(cp.state()).unwrap();
            end.commit(cp).unwrap();
        }
    }
}

/// Steps the network, doing the host's duties after each step.
fn drive(net: &mut Network<End, End>, mut each: impl FnMut(&mut Network<End, End>)) {
    while net.step() {
        let (ea, eb) = (net.take_events_a(), net.take_events_b());
        host(&mut net.a, ea);
        host(&mut net.b, eb);
        each(net);
    }
}

/// After a run, each side seals one more message that the other must
/// accept: the proof that the pad streams stayed in step.
fn assert_pads_in_step(net: Network<End, End>) {
    let (_, mut a) = net.a.into_parts();
    let (_, mut b) = net.b.into_parts();
    let probe = a.seal(b"probe from alice").unwrap();
    assert_eq!(b.open(&probe), Ok(Opened::Data(&b"probe from alice"[..])));
    let probe = b.seal(b"probe from bob").unwrap();
    assert_eq!(a.open(&probe), Ok(Opened::Data(&b"probe from bob"[..])));
    assert!(b.pool().receive_end() <= a.pool().send_position());
    assert!(a.pool().receive_end() <= b.pool().send_position());
}

fn assert_delivered_all(end: &End, total: u32) {
    let t = end.inner();
    assert!(t.done(), "{} of {total} acknowledged", t.acked);
    assert_eq!(t.delivered.len() as u32, total);
}

#[test]
fn lossy_reordering_link_keeps_pads_in_step_through_switches_and_a_deposit() {
    const TOTAL: u32 = 150;
    let config = ChannelConfig {
        pool: PoolConfig {
            window_units: 256,
            // The whole block feeds the pool.
            share: ReplenishShare::PartsPerMillion { ppm: 1_000_000 },
            ..PoolConfig::default()
        },
        mode: TagMode::Bits128,
        ..ChannelConfig::default()
    };
    // 4 KiB pre-shared: 2 KiB per stream, 127 pads of 128 bits: not enough
    // for 150 data messages, their acks and the retransmissions, so the run
    // needs the deposit of block 1 (made at different times on the two ends).
    let (a, b) = ends(4096, config, TOTAL);
    let start = Instant::now();
    let block = secret(64 * 1024, 0x91);
    let (agreed_a, agreed_b) = agree(1);
    let link = LinkConfig::perfect(Duration::from_millis(5))
        .with_jitter(Duration::from_millis(3))
        .with_loss(0.15)
        .with_duplicate(0.05)
        .with_reorder(0.1, Duration::from_millis(12));
    let mut net = Network::new(a, b, link, 2026, start);
    let (mut switched_a, mut switched_b) = (false, false);
    let (mut deposit_a, mut deposit_b) = (Some(block.clone()), Some(block));
    drive(&mut net, |net| {
        let now = net.now();
        if !switched_a && net.a.inner().acked >= 40 {
            switched_a = net.a.switch_context(now, TagMode::Bits64).is_ok();
        }
        if !switched_b && net.b.inner().acked >= 90 {
            switched_b = net.b.switch_context(now, TagMode::Bits128).is_ok();
        }
        if now >= start + Duration::from_millis(300)
            && let Some(key) = deposit_a.take()
        {
            net.a.replenish_from_block(&agreed_a, key).unwrap();
        }
        if now >= start + Duration::from_millis(450)
            && let Some(key) = deposit_b.take()
        {
            net.b.replenish_from_block(&agreed_b, key).unwrap();
        }
    });

    assert_delivered_all(&net.a, TOTAL);
    assert_delivered_all(&net.b, TOTAL);
    assert!(deposit_a.is_none() && deposit_b.is_none() && switched_a && switched_b);
    let (ab, ba) = (net.stats(Side::A).clone(), net.stats(Side::B).clone());
    assert!(ab.dropped > 10 && ba.dropped > 10, "{ab:?} {ba:?}");
    assert!(ab.reordered > 5 && ab.duplicated > 0, "{ab:?}");
    // Every rejection is a typed, harmless one: duplicates, late copies
    // beyond the window, messages ahead of a deposit or of a lost switch.
    for e in net.errors_a().iter().chain(net.errors_b()) {
        assert!(
            matches!(
                e,
                AuthenticatedError::Open(
                    OpenError::Replay
                        | OpenError::TooOld
                        | OpenError::PadUnavailable
                        | OpenError::UnknownContext(_)
                )
            ),
            "{e:?}"
        );
    }
    let (sa, sb) = (net.a.channel().stats(), net.b.channel().stats());
    assert_eq!(sa.forgeries_rejected + sb.forgeries_rejected, 0);
    assert!(sa.replays_rejected + sb.replays_rejected > 0);
    // Both switches happened and were confirmed.
    assert_eq!(net.a.channel().send_context().id(), 2);
    assert_eq!(net.a.channel().send_context().mode(), TagMode::Bits64);
    assert_eq!(net.b.channel().receive_context().id(), 2);
    assert_eq!(net.b.channel().send_context().id(), 2);
    assert_eq!(net.a.channel().receive_context().id(), 2);
    assert!(net.a.channel().unconfirmed_switch().is_none());
    assert!(net.b.channel().unconfirmed_switch().is_none());
    // Accounting: what each end accepted is what it counted.
    let (pa, pb) = (
        net.a.channel().pool().stats().clone(),
        net.b.channel().pool().stats().clone(),
    );
    assert_eq!(pa.sent_messages, net.a.channel().stats().sealed);
    assert_eq!(pb.received_messages, net.b.channel().stats().opened);
    assert!(pb.received_messages <= pa.sent_messages);
    assert_eq!(pa.replenished_bits, 64 * 1024 * 8);
    assert_eq!(
        net.a.channel().pool().feed_digest(),
        net.b.channel().pool().feed_digest()
    );
    assert_pads_in_step(net);
}

#[test]
fn same_seed_same_run() {
    let run = || {
        let (a, b) = ends(64 * 1024, ChannelConfig::default(), 60);
        let link = LinkConfig::perfect(Duration::from_millis(2))
            .with_loss(0.2)
            .with_reorder(0.2, Duration::from_millis(7));
        let mut net = Network::new(a, b, link, 5, Instant::now());
        drive(&mut net, |_| {});
        (
            net.a.channel().pool().stats().clone(),
            net.b.channel().pool().stats().clone(),
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
    let (a, b) = ends(64 * 1024, ChannelConfig::default(), TOTAL);
    let mut net = Network::new(
        a,
        b,
        LinkConfig::perfect(Duration::from_millis(3)),
        77,
        Instant::now(),
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
    let (mut tag_forgeries, mut reflected) = (0u64, 0u64);
    let mut forged_upto = 0usize;
    drive(&mut net, |net| {
        if net.a.inner().done() && net.b.inner().done() {
            return;
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
            // 1. The payload replaced, header and tag kept.
            let mut f = m.clone();
            f[HEADER_LEN] = 0xEE;
            forgeries.push(f);
            // 2. The tag guessed.
            let mut f = m.clone();
            f[tag_at..].copy_from_slice(&[0xA5; 16]);
            forgeries.push(f);
            // 3. Moved to a fresh future position (an unused pad).
            let mut f = m.clone();
            let pos = u64::from_be_bytes(f[13..21].try_into().unwrap());
            f[13..21].copy_from_slice(&(pos + 40).to_be_bytes());
            forgeries.push(f);
            // 4. XOR-malleability: the same bits flipped in payload and tag.
            let mut f = m.clone();
            f[HEADER_LEN + 1] ^= 0x01;
            f[tag_at] ^= 0x01;
            forgeries.push(f);
            // 5. Reflected back to its sender.
            net.inject(from, m.clone(), Duration::from_millis(1));
            reflected += 1;
            // 6. Replayed once the original has arrived.
            net.inject(to, m.clone(), Duration::from_millis(30));
            for f in forgeries {
                net.inject(to, f, Duration::from_millis(1));
                tag_forgeries += 1;
            }
        }
    });
    assert_delivered_all(&net.a, TOTAL);
    assert_delivered_all(&net.b, TOTAL);
    let at = attack.borrow();
    let (sa, sb) = (
        net.a.channel().stats().clone(),
        net.b.channel().stats().clone(),
    );
    assert!(at.tampered_in_flight > 5, "{}", at.tampered_in_flight);
    assert!(tag_forgeries > 400, "{tag_forgeries}");
    // No forged payload ever reached a Transfer: it would have rejected it
    // (an `Inner` error) or counted a sequence number twice... by design
    // every accepted payload is one of the peer's, so none is `Inner`.
    for e in net.errors_a().iter().chain(net.errors_b()) {
        assert!(
            matches!(
                e,
                AuthenticatedError::Open(
                    OpenError::AuthenticationFailed
                        | OpenError::Replay
                        | OpenError::TooOld
                        | OpenError::WrongSender
                        | OpenError::PadUnavailable
                )
            ),
            "{e:?}"
        );
    }
    let tag_failures = sa.forgeries_rejected + sb.forgeries_rejected;
    let replays = sa.replays_rejected + sb.replays_rejected;
    assert!(tag_failures * 100 >= (tag_forgeries + at.tampered_in_flight) * 95);
    assert!(tag_failures + replays >= tag_forgeries + at.tampered_in_flight);
    assert_eq!(sa.malformed_rejected + sb.malformed_rejected, reflected);
    assert_eq!(sa.opened, sb.sealed);
    assert_eq!(sb.opened, sa.sealed);
    drop(at);
    assert_pads_in_step(net);
}

#[test]
fn hostile_link_with_corruption_never_delivers_a_corrupted_message() {
    const TOTAL: u32 = 100;
    let config = ChannelConfig {
        mode: TagMode::Bits64,
        ..ChannelConfig::default()
    };
    let (a, b) = ends(64 * 1024, config, TOTAL);
    let link = LinkConfig::hostile(Duration::from_millis(4)).with_corrupt(0.05);
    let mut net = Network::new(a, b, link, 11, Instant::now());
    drive(&mut net, |_| {});
    assert_delivered_all(&net.a, TOTAL);
    assert_delivered_all(&net.b, TOTAL);
    let corrupted = net.stats(Side::A).corrupted + net.stats(Side::B).corrupted;
    assert!(corrupted > 10, "{corrupted}");
    // A corrupted payload never reached a Transfer.
    for e in net.errors_a().iter().chain(net.errors_b()) {
        assert!(matches!(e, AuthenticatedError::Open(_)), "{e:?}");
    }
    let failed_tags =
        net.a.channel().stats().forgeries_rejected + net.b.channel().stats().forgeries_rejected;
    assert!(failed_tags > 0);
    assert_pads_in_step(net);
}
