#![cfg(feature = "sim")]
//! Tests of the deterministic simulated network `qkd_core::sim`.
//!
//! Fault rates are checked statistically: with `n` datagrams and a fault of
//! probability `p`, the count must lie within 4 standard deviations
//! (`4 * sqrt(n p (1 - p))`) of `n p`. The runs are seeded, so they are
//! reproducible; the tolerance only guards against a biased implementation.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use qkd_core::machine::Machine;
use qkd_core::sim::{DirectionStats, LinkConfig, Network, Side};

const MS: Duration = Duration::from_millis(1);
const US: Duration = Duration::from_micros(1);

/// Datagrams per fault-rate test.
const N: u32 = 20_000;

// ---------------------------------------------------------------------------
// Framing shared by the test endpoints: [kind][seq u32 LE][payload][crc32 LE]

const DATA: u8 = 0;
const ACK: u8 = 1;
const PAYLOAD: usize = 11;
const FRAME_LEN: usize = 1 + 4 + PAYLOAD + 4;

fn frame(kind: u8, seq: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.push(kind);
    f.extend_from_slice(&seq.to_le_bytes());
    f.extend((0..PAYLOAD).map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8)));
    seal(&mut f);
    f
}

/// Appends the CRC of everything so far.
fn seal(f: &mut Vec<u8>) {
    let crc = crc32fast::hash(f);
    f.extend_from_slice(&crc.to_le_bytes());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameError {
    Length(usize),
    Crc,
    Kind(u8),
}

/// Checks length and CRC; returns `(kind, seq)`.
fn parse(f: &[u8]) -> Result<(u8, u32), FrameError> {
    if f.len() != FRAME_LEN {
        return Err(FrameError::Length(f.len()));
    }
    let (body, crc) = f.split_at(FRAME_LEN - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().unwrap()) {
        return Err(FrameError::Crc);
    }
    Ok((body[0], u32::from_le_bytes(body[1..5].try_into().unwrap())))
}

fn seq_of(f: &[u8]) -> u32 {
    u32::from_le_bytes(f[1..5].try_into().unwrap())
}

// ---------------------------------------------------------------------------
// Test endpoints

/// Sends `count` DATA frames, the `i`-th at `start + i * interval`.
struct Blaster {
    next: u32,
    count: u32,
    next_at: Instant,
    interval: Duration,
}

impl Blaster {
    fn new(count: u32, interval: Duration, start: Instant) -> Self {
        Blaster {
            next: 0,
            count,
            next_at: start,
            interval,
        }
    }
}

impl Machine for Blaster {
    type Event = std::convert::Infallible;
    type Error = FrameError;
    fn handle_input(&mut self, _now: Instant, datagram: &[u8]) -> Result<(), FrameError> {
        parse(datagram).map(|_| ())
    }
    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.next >= self.count || now < self.next_at {
            return None;
        }
        self.next_at += self.interval;
        self.next += 1;
        Some(frame(DATA, self.next - 1))
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        (self.next < self.count).then_some(self.next_at)
    }
    fn handle_timeout(&mut self, _now: Instant) {}
}

/// Records every datagram it gets with the time; rejects bad frames (after recording them).
#[derive(Default)]
struct Sink {
    got: Vec<(Instant, Vec<u8>)>,
}

impl Machine for Sink {
    type Event = std::convert::Infallible;
    type Error = FrameError;
    fn handle_input(&mut self, now: Instant, datagram: &[u8]) -> Result<(), FrameError> {
        self.got.push((now, datagram.to_vec()));
        parse(datagram).map(|_| ())
    }
    fn poll_transmit(&mut self, _now: Instant) -> Option<Vec<u8>> {
        None
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _now: Instant) {}
}

/// Stop-and-wait sender: DATA(base) until ACK(base + 1), retransmitting after `rto`.
struct ArqSender {
    base: u32,
    total: u32,
    rto: Duration,
    send_now: bool,
    deadline: Option<Instant>,
    retransmits: u32,
}

impl ArqSender {
    fn new(total: u32, rto: Duration) -> Self {
        ArqSender {
            base: 0,
            total,
            rto,
            send_now: true,
            deadline: None,
            retransmits: 0,
        }
    }
}

impl Machine for ArqSender {
    type Event = std::convert::Infallible;
    type Error = FrameError;
    fn handle_input(&mut self, _now: Instant, datagram: &[u8]) -> Result<(), FrameError> {
        let (kind, ack) = parse(datagram)?;
        if kind != ACK {
            return Err(FrameError::Kind(kind));
        }
        if ack > self.base {
            self.base = ack;
            self.deadline = None;
            self.send_now = self.base < self.total;
        }
        Ok(())
    }
    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !self.send_now || self.base >= self.total {
            return None;
        }
        self.send_now = false;
        self.deadline = Some(now + self.rto);
        Some(frame(DATA, self.base))
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
    fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| d <= now) {
            self.deadline = None;
            self.send_now = true;
            self.retransmits += 1;
        }
    }
}

/// Stop-and-wait receiver: accepts DATA(expected), answers every valid DATA with ACK(expected).
#[derive(Default)]
struct ArqReceiver {
    expected: u32,
    accepted: Vec<u32>,
    acks: VecDeque<Vec<u8>>,
}

impl Machine for ArqReceiver {
    type Event = std::convert::Infallible;
    type Error = FrameError;
    fn handle_input(&mut self, _now: Instant, datagram: &[u8]) -> Result<(), FrameError> {
        let (kind, seq) = parse(datagram)?;
        if kind != DATA {
            return Err(FrameError::Kind(kind));
        }
        if seq == self.expected {
            self.accepted.push(seq);
            self.expected += 1;
        }
        self.acks.push_back(frame(ACK, self.expected));
        Ok(())
    }
    fn poll_transmit(&mut self, _now: Instant) -> Option<Vec<u8>> {
        self.acks.pop_front()
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _now: Instant) {}
}

/// Fires its timers one per `handle_timeout`, earliest first, logging `(side, now)`.
struct Timers {
    side: Side,
    pending: Vec<Instant>,
    log: Rc<RefCell<Vec<(Side, Instant)>>>,
}

impl Machine for Timers {
    type Event = std::convert::Infallible;
    type Error = FrameError;
    fn handle_input(&mut self, _now: Instant, _datagram: &[u8]) -> Result<(), FrameError> {
        Ok(())
    }
    fn poll_transmit(&mut self, _now: Instant) -> Option<Vec<u8>> {
        None
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.pending.iter().min().copied()
    }
    fn handle_timeout(&mut self, now: Instant) {
        let earliest = (0..self.pending.len()).min_by_key(|&i| self.pending[i]);
        if let Some(i) = earliest {
            self.pending.swap_remove(i);
            self.log.borrow_mut().push((self.side, now));
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers

/// Asserts `count` is within 4 sigma of `n * p`.
fn assert_rate(what: &str, count: u64, n: u64, p: f64) {
    let n = n as f64;
    let mean = n * p;
    let sigma = (n * p * (1.0 - p)).sqrt();
    let z = (count as f64 - mean) / sigma;
    assert!(
        z.abs() <= 4.0,
        "{what}: counted {count} of {n}, expected {mean:.0} +- {sigma:.1} (z = {z:.2})"
    );
}

/// `N` frames from A to B, one every 10 us, over `config`, with recording on.
fn blast(config: LinkConfig, seed: u64) -> Network<Blaster, Sink> {
    let start = Instant::now();
    let mut net = Network::new(
        Blaster::new(N, 10 * US, start),
        Sink::default(),
        config,
        seed,
        start,
    );
    net.set_recording(true);
    net.drive();
    net
}

fn assert_conservation(s: &DirectionStats) {
    assert_eq!(
        s.delivered,
        s.sent - s.intercepted - s.dropped + s.duplicated + s.injected,
        "{s:?}"
    );
}

fn hamming(x: &[u8], y: &[u8]) -> u32 {
    assert_eq!(x.len(), y.len());
    x.iter().zip(y).map(|(a, b)| (a ^ b).count_ones()).sum()
}

// ---------------------------------------------------------------------------
// Fault rates

#[test]
fn perfect_link_delivers_everything_in_order_after_latency() {
    let net = blast(LinkConfig::perfect(MS), 1);
    let s = net.stats(Side::A);
    assert_eq!(
        *s,
        DirectionStats {
            sent: N.into(),
            delivered: N.into(),
            ..DirectionStats::default()
        }
    );
    assert_eq!(*net.stats(Side::B), DirectionStats::default());
    let sent = net.recorded();
    assert_eq!(sent.len(), N as usize);
    for ((sent_at, side, bytes), (got_at, got)) in sent.iter().zip(&net.b.got) {
        assert_eq!(*side, Side::A);
        assert_eq!(got, bytes);
        assert_eq!(*got_at - *sent_at, MS);
    }
    assert!(net.errors_b().is_empty());
    assert_eq!(net.elapsed(), 10 * US * (N - 1) + MS);
}

#[test]
fn loss_rate_matches_config() {
    let p = 0.1;
    let net = blast(LinkConfig::lossy(MS, p), 2);
    let s = net.stats(Side::A);
    assert_eq!(s.sent, u64::from(N));
    assert_rate("loss", s.dropped, s.sent, p);
    assert_eq!(
        (s.duplicated, s.reordered, s.corrupted, s.rejected),
        (0, 0, 0, 0)
    );
    assert_eq!(net.b.got.len() as u64, s.sent - s.dropped);
    assert_eq!(s.delivered, s.sent - s.dropped);
    // What does arrive, arrives in order and intact.
    let seqs: Vec<u32> = net.b.got.iter().map(|(_, f)| seq_of(f)).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert!(net.b.got.iter().all(|(_, f)| parse(f).is_ok()));
}

#[test]
fn duplicate_rate_matches_config() {
    let p = 0.1;
    let net = blast(LinkConfig::perfect(MS).with_duplicate(p), 3);
    let s = net.stats(Side::A);
    assert_rate("duplicate", s.duplicated, s.sent, p);
    assert_eq!(
        (s.dropped, s.reordered, s.corrupted, s.rejected),
        (0, 0, 0, 0)
    );
    assert_eq!(s.delivered, s.sent + s.duplicated);
    let mut copies: HashMap<u32, u64> = HashMap::new();
    for (_, f) in &net.b.got {
        assert!(parse(f).is_ok());
        *copies.entry(seq_of(f)).or_default() += 1;
    }
    assert_eq!(copies.len(), N as usize, "every datagram arrives");
    assert!(copies.values().all(|&c| c == 1 || c == 2));
    let twice = copies.values().filter(|&&c| c == 2).count() as u64;
    assert_eq!(twice, s.duplicated);
}

#[test]
fn reorder_rate_matches_config_and_datagrams_really_overtake() {
    let p = 0.1;
    let latency = MS;
    let hold = 2 * MS;
    let start = Instant::now();
    let mut net = Network::new(
        Blaster::new(N, 10 * US, start),
        Sink::default(),
        LinkConfig::perfect(latency).with_reorder(p, hold),
        4,
        start,
    );
    net.set_recording(true);
    // Run until the last frame is sent, then inject a marker (higher sequence
    // number, no faults) so that even the last held-back frames get overtaken.
    net.drive_until(start + 10 * US * (N - 1));
    assert_eq!(net.recorded().len(), N as usize);
    net.inject(Side::B, frame(DATA, N), latency);
    net.drive();

    let s = net.stats(Side::A).clone();
    assert_rate("reorder", s.reordered, s.sent, p);
    assert_eq!(
        (s.dropped, s.duplicated, s.corrupted, s.rejected),
        (0, 0, 0, 0)
    );
    assert_eq!((s.injected, s.delivered), (1, s.sent + 1));

    // Exactly the held-back frames arrive after a later-sent one.
    let mut highest = None;
    let mut late = 0u64;
    for (_, f) in &net.b.got {
        let seq = seq_of(f);
        if highest.is_some_and(|h| seq < h) {
            late += 1;
        } else {
            highest = Some(seq);
        }
    }
    assert_eq!(late, s.reordered, "delivery order differs from send order");

    // And each was delayed by exactly latency + hold.
    let sent_at: Vec<Instant> = net.recorded().iter().map(|(t, _, _)| *t).collect();
    let mut held = 0u64;
    for (got_at, f) in &net.b.got[..] {
        let seq = seq_of(f) as usize;
        if seq == N as usize {
            continue; // the marker
        }
        let delay = *got_at - sent_at[seq];
        assert!(delay == latency || delay == latency + hold, "{delay:?}");
        held += u64::from(delay > latency);
    }
    assert_eq!(held, s.reordered);
}

#[test]
fn corrupt_rate_matches_config_and_only_corrupted_frames_differ() {
    let p = 0.1;
    let net = blast(LinkConfig::perfect(MS).with_corrupt(p), 5);
    let s = net.stats(Side::A);
    assert_rate("corrupt", s.corrupted, s.sent, p);
    assert_eq!((s.dropped, s.duplicated, s.reordered), (0, 0, 0));
    assert_eq!(s.delivered, s.sent);

    // Fixed latency: delivery order is send order, so compare one to one.
    let sent = net.recorded();
    assert_eq!(net.b.got.len(), sent.len());
    let mut flips = [0u64; 4];
    for ((_, _, before), (_, after)) in sent.iter().zip(&net.b.got) {
        let d = hamming(before, after) as usize;
        assert!(d <= 3, "{d} bits flipped");
        flips[d] += 1;
    }
    let differing = flips[1] + flips[2] + flips[3];
    assert_eq!(differing, s.corrupted);
    // 1, 2 and 3 flipped bits are equally likely.
    for (bits, &count) in flips.iter().enumerate().skip(1) {
        assert_rate(&format!("{bits}-bit flips"), count, differing, 1.0 / 3.0);
    }
    // The CRC catches every corrupted frame, and only those.
    assert_eq!(s.rejected, s.corrupted);
    assert_eq!(net.errors_b().len() as u64, s.corrupted);
    assert!(net.errors_b().iter().all(|e| *e == FrameError::Crc));
}

#[test]
fn latency_and_jitter_bounds_hold() {
    let latency = 5 * MS;
    let jitter = 2 * MS;
    let net = blast(LinkConfig::perfect(latency).with_jitter(jitter), 6);
    let s = net.stats(Side::A);
    assert_eq!((s.delivered, s.reordered), (s.sent, 0));
    let sent_at: Vec<Instant> = net.recorded().iter().map(|(t, _, _)| *t).collect();
    let delays: Vec<Duration> = net
        .b
        .got
        .iter()
        .map(|(got_at, f)| *got_at - sent_at[seq_of(f) as usize])
        .collect();
    assert_eq!(delays.len(), N as usize);
    let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
    assert!(
        *min >= latency && *max < latency + jitter,
        "{min:?}..{max:?}"
    );
    // The range is covered, and the mean is in the middle (uniform: sd = jitter / sqrt(12)).
    assert!(*min < latency + 10 * US && *max > latency + jitter - 10 * US);
    let mean_extra = delays
        .iter()
        .map(|d| (*d - latency).as_secs_f64())
        .sum::<f64>()
        / delays.len() as f64;
    let tolerance = 4.0 * jitter.as_secs_f64() / 12f64.sqrt() / f64::from(N).sqrt();
    assert!(
        (mean_extra - jitter.as_secs_f64() / 2.0).abs() < tolerance,
        "mean extra delay {mean_extra}"
    );
    // Jitter reorders some datagrams without counting them as `reordered`.
    let seqs: Vec<u32> = net.b.got.iter().map(|(_, f)| seq_of(f)).collect();
    assert!(seqs.windows(2).any(|w| w[0] > w[1]));
}

#[test]
fn each_direction_has_its_own_config() {
    let start = Instant::now();
    let mut net = Network::with_configs(
        ArqSender::new(10, 100 * MS),
        ArqReceiver::default(),
        LinkConfig::perfect(3 * MS),
        LinkConfig::perfect(7 * MS),
        9,
        start,
    );
    net.drive();
    assert_eq!(net.b.accepted, (0..10).collect::<Vec<_>>());
    assert_eq!(net.a.retransmits, 0);
    // Ten round trips of 3 + 7 ms.
    assert_eq!(net.now(), start + 100 * MS);
    assert_eq!(net.config(Side::B).latency, 7 * MS);

    // Switching a direction to a total loss mid-run makes the sender retry.
    net.a.total = 11;
    net.a.send_now = true;
    net.set_config(Side::A, LinkConfig::lossy(3 * MS, 1.0));
    net.drive_for(250 * MS);
    assert_eq!(net.a.retransmits, 2);
    net.set_config(Side::A, LinkConfig::default());
    net.drive();
    assert_eq!(net.b.accepted.len(), 11);
    assert_eq!(net.stats(Side::A).dropped, 3);
}

// ---------------------------------------------------------------------------
// Determinism

/// Everything that identifies a run: stats of both directions, the recorded
/// trace, the end time, the number of steps and the rejections.
type RunSummary = (
    [DirectionStats; 2],
    Vec<(Instant, Side, Vec<u8>)>,
    Instant,
    usize,
    Vec<FrameError>,
);

/// Stop-and-wait over a hostile link.
fn arq_run(seed: u64, start: Instant) -> RunSummary {
    let mut net = Network::new(
        ArqSender::new(300, 40 * MS),
        ArqReceiver::default(),
        LinkConfig::hostile(5 * MS),
        seed,
        start,
    );
    net.set_recording(true);
    let steps = net.drive();
    assert_eq!(net.b.accepted, (0..300).collect::<Vec<_>>());
    assert!(net.a.retransmits > 0);
    for side in [Side::A, Side::B] {
        assert_conservation(net.stats(side));
    }
    let s = [net.stats(Side::A).clone(), net.stats(Side::B).clone()];
    assert!(
        s.iter()
            .all(|s| s.dropped > 0 && s.duplicated > 0 && s.reordered > 0)
    );
    assert!(s.iter().any(|s| s.corrupted > 0));
    // Corrupted frames (and their copies) are rejected; nothing else is.
    for (stats, errors) in [(&s[0], net.errors_b().len()), (&s[1], net.errors_a().len())] {
        assert_eq!(stats.rejected, errors as u64);
        assert!(stats.corrupted <= stats.rejected && stats.rejected <= 2 * stats.corrupted);
    }
    let errors = net
        .errors_a()
        .iter()
        .chain(net.errors_b())
        .copied()
        .collect();
    (s, net.recorded().to_vec(), net.now(), steps, errors)
}

#[test]
fn same_seed_reproduces_the_run_and_another_seed_does_not() {
    let start = Instant::now();
    let first = arq_run(42, start);
    let again = arq_run(42, start);
    assert_eq!(first, again);
    let other = arq_run(43, start);
    assert_ne!(first.1, other.1, "different seed, different trace");
    assert_ne!(first.2, other.2, "different seed, different end time");
}

// ---------------------------------------------------------------------------
// Time, timeouts and driving

fn timers(
    side: Side,
    start: Instant,
    at_ms: &[u32],
    log: &Rc<RefCell<Vec<(Side, Instant)>>>,
) -> Timers {
    Timers {
        side,
        pending: at_ms.iter().map(|&ms| start + ms * MS).collect(),
        log: Rc::clone(log),
    }
}

#[test]
fn timeouts_fire_in_order_and_drive_reaches_idle() {
    let start = Instant::now();
    let log = Rc::new(RefCell::new(Vec::new()));
    let mut net = Network::new(
        timers(Side::A, start, &[5, 1, 3], &log),
        timers(Side::B, start, &[3, 2], &log),
        LinkConfig::default(),
        0,
        start,
    );
    assert_eq!(net.next_wakeup(), Some(start + MS));
    assert_eq!(net.drive(), 5);
    let expected = [
        (Side::A, 1),
        (Side::B, 2),
        (Side::A, 3),
        (Side::B, 3),
        (Side::A, 5),
    ]
    .map(|(side, ms)| (side, start + ms * MS));
    assert_eq!(
        *log.borrow(),
        expected,
        "in time order, A before B on a tie"
    );
    assert_eq!(net.now(), start + 5 * MS);
    assert!(net.is_idle());
    assert!(!net.step());
    assert_eq!(
        net.now(),
        start + 5 * MS,
        "an idle step leaves the time alone"
    );

    // A timer in the past fires now: time never goes backwards.
    net.a.pending.push(start + 2 * MS);
    assert!(net.step());
    assert_eq!(log.borrow().last(), Some(&(Side::A, start + 5 * MS)));
    assert_eq!(net.now(), start + 5 * MS);
    assert_eq!(net.drive(), 0);
}

#[test]
fn drive_until_stops_at_the_deadline_and_never_goes_back() {
    let start = Instant::now();
    let log = Rc::new(RefCell::new(Vec::new()));
    let mut net = Network::new(
        timers(Side::A, start, &[1, 2, 3, 10], &log),
        Sink::default(),
        LinkConfig::default(),
        0,
        start,
    );
    assert_eq!(net.drive_until(start + 5 * MS), 3);
    assert_eq!(net.now(), start + 5 * MS);
    assert_eq!(net.drive_until(start + 4 * MS), 0);
    assert_eq!(net.now(), start + 5 * MS);
    assert_eq!(
        net.drive_until(start + 10 * MS),
        1,
        "the deadline is inclusive"
    );
    assert_eq!(net.now(), start + 10 * MS);
    assert_eq!(net.drive_for(MS), 0);
    assert_eq!(net.elapsed(), 11 * MS);
    assert_eq!(net.drive(), 0);
}

#[test]
fn deliveries_and_timeouts_interleave_by_time() {
    // The sink gets frame i at i * 10 us + latency while the blaster's timers
    // keep firing. (The latency is off the 10 us grid: a send due at the very
    // instant of a delivery would leave with it, without a timeout step.)
    let start = Instant::now();
    let latency = MS + 5 * US;
    let mut net = Network::new(
        Blaster::new(200, 10 * US, start),
        Sink::default(),
        LinkConfig::perfect(latency),
        0,
        start,
    );
    let mut last = net.now();
    let mut steps = 0;
    while net.step() {
        assert!(net.now() >= last);
        last = net.now();
        steps += 1;
    }
    // 199 timeouts (the first frame leaves at start without one) and 200 deliveries.
    assert_eq!(steps, 399);
    assert_eq!(net.in_flight(), 0);
    for (i, (at, f)) in net.b.got.iter().enumerate() {
        assert_eq!(seq_of(f) as usize, i);
        assert_eq!(*at, start + 10 * US * i as u32 + latency);
    }
}

/// Wants a timeout at a fixed instant and never clears it.
struct Stuck(Instant);

impl Machine for Stuck {
    type Event = std::convert::Infallible;
    type Error = FrameError;
    fn handle_input(&mut self, _now: Instant, _datagram: &[u8]) -> Result<(), FrameError> {
        Ok(())
    }
    fn poll_transmit(&mut self, _now: Instant) -> Option<Vec<u8>> {
        None
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.0)
    }
    fn handle_timeout(&mut self, _now: Instant) {}
}

#[test]
#[should_panic(expected = "max_steps = 1000")]
fn a_timer_that_never_clears_panics_at_max_steps() {
    let start = Instant::now();
    let mut net = Network::new(
        Stuck(start),
        Sink::default(),
        LinkConfig::default(),
        0,
        start,
    );
    net.set_max_steps(1000);
    net.drive();
}

/// Sends every datagram it receives straight back.
#[derive(Default)]
struct Echo(VecDeque<Vec<u8>>);

impl Machine for Echo {
    type Event = std::convert::Infallible;
    type Error = FrameError;
    fn handle_input(&mut self, _now: Instant, datagram: &[u8]) -> Result<(), FrameError> {
        self.0.push_back(datagram.to_vec());
        Ok(())
    }
    fn poll_transmit(&mut self, _now: Instant) -> Option<Vec<u8>> {
        self.0.pop_front()
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _now: Instant) {}
}

#[test]
#[should_panic(expected = "livelock")]
fn endless_ping_pong_panics_at_max_steps() {
    let start = Instant::now();
    let mut net = Network::new(
        Echo(VecDeque::from([b"ping".to_vec()])),
        Echo::default(),
        LinkConfig::default(),
        0,
        start,
    );
    net.set_max_steps(500);
    net.drive_until(start + Duration::from_secs(3600));
}

// ---------------------------------------------------------------------------
// Attacker hooks

#[test]
fn inject_delivers_after_the_delay_without_faults() {
    let start = Instant::now();
    let mut net = Network::new(
        Sink::default(),
        Sink::default(),
        LinkConfig::lossy(MS, 1.0).with_corrupt(1.0),
        0,
        start,
    );
    net.set_recording(true);
    net.inject(Side::B, frame(DATA, 7), 7 * MS);
    net.inject(Side::B, b"garbage".to_vec(), 2 * MS);
    net.inject(Side::A, frame(ACK, 1), Duration::ZERO);
    assert_eq!(net.in_flight(), 3);
    assert_eq!(net.drive(), 3);

    assert_eq!(net.a.got, vec![(start, frame(ACK, 1))]);
    assert_eq!(
        net.b.got,
        vec![
            (start + 2 * MS, b"garbage".to_vec()),
            (start + 7 * MS, frame(DATA, 7))
        ]
    );
    let towards_b = net.stats(Side::A);
    assert_eq!(
        *towards_b,
        DirectionStats {
            delivered: 2,
            rejected: 1,
            injected: 2,
            ..DirectionStats::default()
        }
    );
    assert_conservation(towards_b);
    assert_eq!(net.errors_b(), [FrameError::Length(7)]);
    assert!(net.errors_a().is_empty());
    assert!(
        net.recorded().is_empty(),
        "injected datagrams are not recorded"
    );
}

#[test]
fn interceptor_can_forge_and_drop() {
    let start = Instant::now();
    let mut net = Network::new(
        Blaster::new(10, MS, start),
        Sink::default(),
        LinkConfig::default(),
        0,
        start,
    );
    net.set_recording(true);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let log = Rc::clone(&seen);
    net.set_interceptor(Box::new(move |from, datagram| {
        log.borrow_mut().push(from);
        let seq = seq_of(datagram);
        if seq == 3 {
            return false;
        }
        // A man in the middle rewrites the payload and fixes the CRC.
        datagram.truncate(FRAME_LEN - 4);
        datagram[5] = 0xEE;
        seal(datagram);
        true
    }));
    net.drive();

    assert_eq!(*seen.borrow(), vec![Side::A; 10]);
    let s = net.stats(Side::A);
    assert_eq!(
        (s.sent, s.intercepted, s.delivered, s.rejected),
        (10, 1, 9, 0)
    );
    assert_conservation(s);
    let seqs: Vec<u32> = net.b.got.iter().map(|(_, f)| seq_of(f)).collect();
    assert_eq!(seqs, [0, 1, 2, 4, 5, 6, 7, 8, 9]);
    assert!(
        net.b
            .got
            .iter()
            .all(|(_, f)| f[5] == 0xEE && parse(f).is_ok())
    );
    // The recording holds what the sender sent, before the interceptor.
    assert_eq!(net.recorded().len(), 10);
    assert!(
        net.recorded()
            .iter()
            .all(|(_, _, f)| *f == frame(DATA, seq_of(f)))
    );

    net.clear_interceptor();
    net.a.count = 11;
    net.drive();
    assert_eq!(net.b.got.last().unwrap().1, frame(DATA, 10));
}

// ---------------------------------------------------------------------------
// Invariants over random links

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn every_datagram_is_accounted_for(
        seed: u64,
        loss in 0.0..=1.0f64,
        duplicate in 0.0..=1.0f64,
        reorder in 0.0..=1.0f64,
        corrupt in 0.0..=1.0f64,
        latency_us in 0u32..2_000,
        jitter_us in 0u32..2_000,
        interval_us in 0u32..500,
        count in 0u32..300,
    ) {
        let start = Instant::now();
        let config = LinkConfig::perfect(latency_us * US)
            .with_jitter(jitter_us * US)
            .with_loss(loss)
            .with_duplicate(duplicate)
            .with_reorder(reorder, 3 * latency_us * US)
            .with_corrupt(corrupt);
        let mut net = Network::new(
            Blaster::new(count, interval_us * US, start),
            Sink::default(),
            config,
            seed,
            start,
        );
        let mut last = net.now();
        while net.step() {
            prop_assert!(net.now() >= last);
            last = net.now();
        }
        let s = net.stats(Side::A);
        prop_assert_eq!(s.sent, u64::from(count));
        assert_conservation(s);
        prop_assert_eq!(net.b.got.len() as u64, s.delivered);
        prop_assert_eq!(net.errors_b().len() as u64, s.rejected);
        prop_assert!(s.rejected <= 2 * s.corrupted);
        prop_assert!(s.corrupted + s.dropped <= s.sent);
        prop_assert!(s.duplicated + s.dropped <= s.sent);
        prop_assert_eq!(net.in_flight(), 0);
    }
}
