//! A deterministic simulated network for testing sans-IO protocol machines.
//!
//! Every two-party protocol of the workspace is a [`Machine`]: fed bytes and
//! time, it hands back bytes, events and wake-up times (see
//! [`crate::machine`]). [`Network`] runs two machines against each other over
//! a simulated link, records their events, entirely in virtual time, with seeded
//! randomness for latency jitter, loss, duplication, reordering and
//! corruption:
//!
//! ```text
//!            poll_transmit                                  handle_input
//!   +-----+ ---------------> [ A -> B link: LinkConfig ] ---------------> +-----+
//!   |  A  |                  [ interceptor, loss, corrupt,               |  B  |
//!   |     |                  [ duplicate, latency + jitter, reorder ]    |     |
//!   |     | <--------------- [ B -> A link: LinkConfig ] <--------------- |     |
//!   +-----+  handle_input                                  poll_transmit +-----+
//!      ^                                                                     ^
//!      |  handle_timeout(now)   +-----------------------------------+       |
//!      +------------------------| virtual clock + event queue       |-------+
//!                               | ordered by (time, sequence)       |
//!                               +-----------------------------------+
//! ```
//!
//! [`Network::step`] first collects every datagram both machines want to send
//! (putting each on its link, where the faults are decided), then jumps the
//! virtual clock to the earliest pending event, a datagram delivery or an
//! endpoint timeout, and performs exactly that one event. [`Network::drive`]
//! steps until nothing is pending; [`Network::drive_until`] steps up to a
//! deadline.
//!
//! Nothing here reads a clock, sleeps or prints: time starts at the `start`
//! instant given to [`Network::new`] and only moves forward by simulated
//! delays. All randomness comes from one `Xoshiro256PlusPlus` seeded with a
//! `u64`, so the same seed and the same endpoints give exactly the same run:
//! the same statistics, the same recorded trace and the same final time.
//!
//! # Example
//!
//! A pinger sends `[0]`, `[1]`, ... one at a time and waits for each echo,
//! retrying after 50 ms; the echo endpoint sends every datagram back. The link
//! loses one datagram in five, yet the run ends with everything echoed.
//!
//! ```
//! use std::collections::VecDeque;
//! use std::time::{Duration, Instant};
//!
//! use qkd_core::machine::Machine;
//! use qkd_core::sim::{LinkConfig, Network, Side};
//!
//! struct Pinger {
//!     acked: u8,
//!     total: u8,
//!     send_now: bool,
//!     retry_at: Option<Instant>,
//!     echoed: Option<u8>,
//! }
//!
//! impl Machine for Pinger {
//!     type Event = u8; // the number of each ping echoed
//!     type Error = &'static str;
//!     fn handle_input(&mut self, _now: Instant, datagram: &[u8]) -> Result<(), Self::Error> {
//!         match datagram {
//!             [n] if *n == self.acked => {
//!                 self.echoed = Some(*n);
//!                 self.acked += 1;
//!                 self.retry_at = None;
//!                 self.send_now = self.acked < self.total;
//!                 Ok(())
//!             }
//!             [_] => Ok(()), // an echo of a retry we no longer wait for
//!             _ => Err("not a ping"),
//!         }
//!     }
//!     fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
//!         if !self.send_now {
//!             return None;
//!         }
//!         self.send_now = false;
//!         self.retry_at = Some(now + Duration::from_millis(50));
//!         Some(vec![self.acked])
//!     }
//!     fn poll_event(&mut self) -> Option<u8> {
//!         self.echoed.take()
//!     }
//!     fn poll_timeout(&self) -> Option<Instant> {
//!         self.retry_at
//!     }
//!     fn handle_timeout(&mut self, now: Instant) {
//!         if self.retry_at.is_some_and(|at| at <= now) {
//!             self.retry_at = None;
//!             self.send_now = true;
//!         }
//!     }
//! }
//!
//! #[derive(Default)]
//! struct Echo {
//!     replies: VecDeque<Vec<u8>>,
//! }
//!
//! impl Machine for Echo {
//!     type Event = std::convert::Infallible;
//!     type Error = std::convert::Infallible;
//!     fn handle_input(&mut self, _now: Instant, datagram: &[u8]) -> Result<(), Self::Error> {
//!         self.replies.push_back(datagram.to_vec());
//!         Ok(())
//!     }
//!     fn poll_transmit(&mut self, _now: Instant) -> Option<Vec<u8>> {
//!         self.replies.pop_front()
//!     }
//!     fn poll_event(&mut self) -> Option<Self::Event> {
//!         None
//!     }
//!     fn poll_timeout(&self) -> Option<Instant> {
//!         None
//!     }
//!     fn handle_timeout(&mut self, _now: Instant) {}
//! }
//!
//! // The one clock read of the run: everything after it is virtual time.
//! let start = Instant::now();
//! let pinger = Pinger { acked: 0, total: 20, send_now: true, retry_at: None, echoed: None };
//! let link = LinkConfig::perfect(Duration::from_millis(10)).with_loss(0.2);
//! let mut net = Network::new(pinger, Echo::default(), link, 7, start);
//!
//! let steps = net.drive();
//! assert!(steps > 0);
//! assert_eq!(net.a.acked, 20);
//! // The network drained the pinger's events: one per echo, in order.
//! assert_eq!(net.events_a(), (0..20).collect::<Vec<u8>>());
//! // Each round trip takes at least 2 x 10 ms of virtual time.
//! assert!(net.now() >= start + Duration::from_millis(20 * 20));
//! let (ab, ba) = (net.stats(Side::A), net.stats(Side::B));
//! assert!(ab.dropped + ba.dropped > 0, "the loss made the pinger retry");
//! assert_eq!(ab.delivered, ab.sent - ab.dropped);
//! assert!(net.errors_a().is_empty());
//! ```
//!
//! # Faults
//!
//! Each datagram a side sends goes through, in this order:
//!
//! 1. the [interceptor](Network::set_interceptor), if one is set, which may
//!    change it or drop it (counted in [`DirectionStats::intercepted`]);
//! 2. loss with probability [`LinkConfig::loss`];
//! 3. corruption with probability [`LinkConfig::corrupt`]: 1 to 3 distinct
//!    random bits are flipped (empty datagrams are never corrupted);
//! 4. duplication with probability [`LinkConfig::duplicate`]: a second copy,
//!    with the same (possibly corrupted) bytes, is scheduled with its own
//!    delay;
//! 5. delay: [`LinkConfig::latency`] plus a uniform draw from
//!    `[0, jitter)`, plus, with probability [`LinkConfig::reorder`],
//!    [`LinkConfig::reorder_delay`] for the original (not the duplicate),
//!    so that datagrams sent later overtake it.
//!
//! Each fault is counted once per sent datagram in [`DirectionStats`], so
//! with a single fault enabled its counter divided by
//! [`DirectionStats::sent`] estimates the configured rate. Jitter can reorder
//! datagrams too, but that is not counted as [`DirectionStats::reordered`].
//!
//! Datagrams put on the wire with [`Network::inject`] skip the interceptor
//! and all faults.
//!
//! # Ordering and time
//!
//! - Time never goes backwards: an endpoint timeout earlier than
//!   [`Network::now`] fires at `now`.
//! - Events at the same instant run in a fixed order: datagram deliveries
//!   first (in the order they were scheduled), then A's timeout, then B's.
//! - After every delivery and timeout both endpoints are asked for transmits,
//!   which leave at the current virtual time.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fmt;
use std::time::{Duration, Instant};

use rand_core::{Rng, SeedableRng};

pub use crate::machine::Machine;
use rand_xoshiro::Xoshiro256PlusPlus;

/// One of the two endpoints of a [`Network`].
///
/// The direction of a datagram is named by the side that sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The first endpoint, [`Network::a`].
    A,
    /// The second endpoint, [`Network::b`].
    B,
}

impl Side {
    /// The other side.
    #[must_use]
    pub const fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    const fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// Behaviour of one direction of the simulated link.
///
/// Probabilities are in `0.0..=1.0`; the builder methods and [`Network`]
/// panic on anything else (including NaN).
///
/// ```
/// use std::time::Duration;
/// use qkd_core::sim::LinkConfig;
///
/// let link = LinkConfig::perfect(Duration::from_millis(5))
///     .with_jitter(Duration::from_millis(2))
///     .with_loss(0.01)
///     .with_reorder(0.05, Duration::from_millis(10));
/// assert_eq!(link.loss, 0.01);
/// assert_eq!(LinkConfig::default(), LinkConfig::perfect(Duration::from_millis(1)));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LinkConfig {
    /// Base one-way delay.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `[0, jitter)` for each delivery.
    pub jitter: Duration,
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram is delivered twice (the copy gets its own delay).
    pub duplicate: f64,
    /// Probability that a datagram is held back an extra
    /// [`reorder_delay`](Self::reorder_delay), so later datagrams overtake it.
    pub reorder: f64,
    /// How long a reordered datagram is held back.
    pub reorder_delay: Duration,
    /// Probability that 1 to 3 random bits of a datagram are flipped.
    pub corrupt: f64,
}

impl LinkConfig {
    /// A link that delivers everything, in order, after exactly `latency`.
    #[must_use]
    pub const fn perfect(latency: Duration) -> Self {
        LinkConfig {
            latency,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            corrupt: 0.0,
        }
    }

    /// A link with fixed `latency` that drops each datagram with probability `loss`.
    #[must_use]
    pub fn lossy(latency: Duration, loss: f64) -> Self {
        Self::perfect(latency).with_loss(loss)
    }

    /// A bad link for robustness tests: `latency` with as much jitter, 10 %
    /// loss, 5 % duplication, 5 % reordering by `4 * latency` and 1 %
    /// corruption.
    #[must_use]
    pub fn hostile(latency: Duration) -> Self {
        Self::perfect(latency)
            .with_jitter(latency)
            .with_loss(0.1)
            .with_duplicate(0.05)
            .with_reorder(0.05, latency * 4)
            .with_corrupt(0.01)
    }

    /// Sets the base one-way delay.
    #[must_use]
    pub const fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Sets the jitter: each delivery is delayed by an extra uniform draw from `[0, jitter)`.
    #[must_use]
    pub const fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the loss probability.
    ///
    /// # Panics
    /// If `p` is not within `0.0..=1.0`.
    #[must_use]
    pub fn with_loss(mut self, p: f64) -> Self {
        self.loss = check_probability("loss", p);
        self
    }

    /// Sets the duplication probability.
    ///
    /// # Panics
    /// If `p` is not within `0.0..=1.0`.
    #[must_use]
    pub fn with_duplicate(mut self, p: f64) -> Self {
        self.duplicate = check_probability("duplicate", p);
        self
    }

    /// Sets the reordering probability and how long a reordered datagram is held back.
    ///
    /// # Panics
    /// If `p` is not within `0.0..=1.0`.
    #[must_use]
    pub fn with_reorder(mut self, p: f64, delay: Duration) -> Self {
        self.reorder = check_probability("reorder", p);
        self.reorder_delay = delay;
        self
    }

    /// Sets the corruption probability.
    ///
    /// # Panics
    /// If `p` is not within `0.0..=1.0`.
    #[must_use]
    pub fn with_corrupt(mut self, p: f64) -> Self {
        self.corrupt = check_probability("corrupt", p);
        self
    }

    fn validate(&self) {
        check_probability("loss", self.loss);
        check_probability("duplicate", self.duplicate);
        check_probability("reorder", self.reorder);
        check_probability("corrupt", self.corrupt);
    }
}

impl Default for LinkConfig {
    /// A perfect link with 1 ms latency.
    fn default() -> Self {
        Self::perfect(Duration::from_millis(1))
    }
}

fn check_probability(name: &str, p: f64) -> f64 {
    assert!(
        (0.0..=1.0).contains(&p),
        "LinkConfig::{name} must be a probability within 0.0..=1.0, got {p}"
    );
    p
}

/// Counters for one direction of the link, named by the sending side.
///
/// Once the network is idle,
/// `delivered == sent - intercepted - dropped + duplicated + injected`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams the sending endpoint put on the wire.
    pub sent: u64,
    /// Datagrams handed to the receiving endpoint (copies and injected ones included).
    pub delivered: u64,
    /// Datagrams lost on the link.
    pub dropped: u64,
    /// Datagrams delivered twice.
    pub duplicated: u64,
    /// Datagrams held back so that later ones could overtake them.
    pub reordered: u64,
    /// Datagrams with flipped bits (counted once, even when duplicated).
    pub corrupted: u64,
    /// Deliveries the receiving endpoint rejected (its `handle_input` returned `Err`).
    pub rejected: u64,
    /// Datagrams the interceptor dropped.
    pub intercepted: u64,
    /// Datagrams put on this direction's wire with [`Network::inject`].
    pub injected: u64,
}

/// A datagram on its way, ordered by `(time, seq)` so that ties are deterministic.
struct InFlight {
    time: Instant,
    seq: u64,
    to: Side,
    datagram: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for InFlight {}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

/// The next thing a [`Network`] will do.
#[derive(Clone, Copy)]
enum Event {
    Deliver,
    Timeout(Side),
}

/// Hook that sees (and may change) every datagram a side sends; returns `false` to drop it.
pub type Interceptor = Box<dyn FnMut(Side, &mut Vec<u8>) -> bool>;

/// Two endpoints connected by a simulated, seeded, lossy link in virtual time.
///
/// See the [module documentation](self) for the model and an example.
pub struct Network<A: Machine, B: Machine> {
    /// The first endpoint; tests may inspect or poke it between steps.
    pub a: A,
    /// The second endpoint; tests may inspect or poke it between steps.
    pub b: B,
    start: Instant,
    now: Instant,
    queue: BinaryHeap<Reverse<InFlight>>,
    next_seq: u64,
    rng: Xoshiro256PlusPlus,
    configs: [LinkConfig; 2],
    stats: [DirectionStats; 2],
    errors_a: Vec<A::Error>,
    errors_b: Vec<B::Error>,
    events_a: Vec<A::Event>,
    events_b: Vec<B::Event>,
    recording: bool,
    recorded: Vec<(Instant, Side, Vec<u8>)>,
    interceptor: Option<Interceptor>,
    max_steps: usize,
}

/// Default limit of [`Network::drive`] and [`Network::drive_until`].
pub const DEFAULT_MAX_STEPS: usize = 10_000_000;

impl<A: Machine, B: Machine> Network<A, B> {
    /// Connects `a` and `b` with the same `config` in both directions.
    ///
    /// `seed` determines every random decision; `start` is the initial virtual time.
    ///
    /// # Panics
    /// If a probability in `config` is outside `0.0..=1.0`.
    pub fn new(a: A, b: B, config: LinkConfig, seed: u64, start: Instant) -> Self {
        Self::with_configs(a, b, config.clone(), config, seed, start)
    }

    /// Connects `a` and `b` with a different configuration for each direction.
    ///
    /// # Panics
    /// If a probability in either configuration is outside `0.0..=1.0`.
    pub fn with_configs(
        a: A,
        b: B,
        a_to_b: LinkConfig,
        b_to_a: LinkConfig,
        seed: u64,
        start: Instant,
    ) -> Self {
        a_to_b.validate();
        b_to_a.validate();
        Network {
            a,
            b,
            start,
            now: start,
            queue: BinaryHeap::new(),
            next_seq: 0,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            configs: [a_to_b, b_to_a],
            stats: [DirectionStats::default(), DirectionStats::default()],
            errors_a: Vec::new(),
            errors_b: Vec::new(),
            events_a: Vec::new(),
            events_b: Vec::new(),
            recording: false,
            recorded: Vec::new(),
            interceptor: None,
            max_steps: DEFAULT_MAX_STEPS,
        }
    }

    /// Replaces the configuration of the direction sent by `from`.
    ///
    /// Datagrams already in flight keep the fate they were given.
    ///
    /// # Panics
    /// If a probability in `config` is outside `0.0..=1.0`.
    pub fn set_config(&mut self, from: Side, config: LinkConfig) {
        config.validate();
        self.configs[from.index()] = config;
    }

    /// The configuration of the direction sent by `from`.
    pub fn config(&self, from: Side) -> &LinkConfig {
        &self.configs[from.index()]
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The virtual time the network started at.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Number of datagrams scheduled but not yet delivered.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Sets how many steps one call of [`drive`](Self::drive) or
    /// [`drive_until`](Self::drive_until) may take before it panics
    /// (default [`DEFAULT_MAX_STEPS`]).
    pub fn set_max_steps(&mut self, max_steps: usize) {
        self.max_steps = max_steps;
    }

    /// Counters of the direction sent by `from`.
    pub fn stats(&self, from: Side) -> &DirectionStats {
        &self.stats[from.index()]
    }

    /// Errors returned by `a.handle_input`, in order.
    pub fn errors_a(&self) -> &[A::Error] {
        &self.errors_a
    }

    /// Errors returned by `b.handle_input`, in order.
    pub fn errors_b(&self) -> &[B::Error] {
        &self.errors_b
    }

    /// Events `a` reported through [`Machine::poll_event`], in order.
    ///
    /// The network drains both machines' events after every step, so a test
    /// reads outcomes here rather than from the machine.
    pub fn events_a(&self) -> &[A::Event] {
        &self.events_a
    }

    /// Events `b` reported through [`Machine::poll_event`], in order.
    pub fn events_b(&self) -> &[B::Event] {
        &self.events_b
    }

    /// Takes the events recorded for `a` so far, leaving none.
    pub fn take_events_a(&mut self) -> Vec<A::Event> {
        std::mem::take(&mut self.events_a)
    }

    /// Takes the events recorded for `b` so far, leaving none.
    pub fn take_events_b(&mut self) -> Vec<B::Event> {
        std::mem::take(&mut self.events_b)
    }

    /// Puts `datagram` on the wire towards `to`, delivered exactly `delay` after now.
    ///
    /// It skips the interceptor and all faults, is not recorded, and counts as
    /// [`DirectionStats::injected`] in the direction sent by `to.peer()`.
    pub fn inject(&mut self, to: Side, datagram: Vec<u8>, delay: Duration) {
        self.stats[to.peer().index()].injected += 1;
        let time = self.now + delay;
        self.schedule(time, to, datagram);
    }

    /// Turns recording of sent datagrams on or off (off by default).
    pub fn set_recording(&mut self, on: bool) {
        self.recording = on;
    }

    /// Every datagram an endpoint put on the wire while recording was on, as
    /// `(send time, sending side, bytes before the interceptor and faults)`, in order.
    pub fn recorded(&self) -> &[(Instant, Side, Vec<u8>)] {
        &self.recorded
    }

    /// Sets a hook that sees every datagram an endpoint sends, before the
    /// faults: it may change the bytes, or return `false` to drop the
    /// datagram (counted in [`DirectionStats::intercepted`]).
    pub fn set_interceptor(&mut self, interceptor: Interceptor) {
        self.interceptor = Some(interceptor);
    }

    /// Removes the interceptor, if any.
    pub fn clear_interceptor(&mut self) {
        self.interceptor = None;
    }

    /// Collects pending transmits and returns the time of the next event
    /// (never earlier than [`now`](Self::now)), or `None` if the network is idle.
    pub fn next_wakeup(&mut self) -> Option<Instant> {
        self.collect_transmits();
        self.next_event().map(|(time, _)| time)
    }

    /// Collects pending transmits and tells whether nothing at all is pending.
    pub fn is_idle(&mut self) -> bool {
        self.next_wakeup().is_none()
    }

    /// Collects all transmits of both sides (putting them on the links, where
    /// faults are decided), then advances virtual time to the earliest pending
    /// delivery or endpoint timeout and performs exactly that one event.
    ///
    /// Returns `false`, without changing the time, if nothing is pending.
    pub fn step(&mut self) -> bool {
        self.collect_transmits();
        match self.next_event() {
            Some((time, event)) => {
                self.perform(time, event);
                true
            }
            None => false,
        }
    }

    /// Steps until the network is idle and returns the number of steps taken.
    ///
    /// # Panics
    /// If the network is still busy after the maximum number of steps
    /// (see [`set_max_steps`](Self::set_max_steps)), which catches livelocks.
    pub fn drive(&mut self) -> usize {
        let mut steps = 0;
        loop {
            self.collect_transmits();
            let Some((time, event)) = self.next_event() else {
                return steps;
            };
            self.check_steps(steps, time);
            self.perform(time, event);
            steps += 1;
        }
    }

    /// Steps while the next event is at or before `deadline`, then moves the
    /// clock to `deadline` if it is later than now. Returns the number of steps taken.
    ///
    /// # Panics
    /// If more than the maximum number of steps would be needed (see
    /// [`set_max_steps`](Self::set_max_steps)).
    pub fn drive_until(&mut self, deadline: Instant) -> usize {
        let mut steps = 0;
        loop {
            self.collect_transmits();
            match self.next_event() {
                Some((time, event)) if time <= deadline => {
                    self.check_steps(steps, time);
                    self.perform(time, event);
                    steps += 1;
                }
                _ => break,
            }
        }
        if deadline > self.now {
            self.now = deadline;
        }
        steps
    }

    /// Advances the clock by `duration`, performing every event on the way
    /// (see [`drive_until`](Self::drive_until)).
    pub fn drive_for(&mut self, duration: Duration) -> usize {
        let deadline = self.now + duration;
        self.drive_until(deadline)
    }

    fn check_steps(&self, steps: usize, next: Instant) {
        assert!(
            steps < self.max_steps,
            "sim::Network still busy after max_steps = {} steps (livelock?): \
             virtual time {:?} after start, next event at +{:?}, {} datagrams in flight",
            self.max_steps,
            self.now - self.start,
            next - self.start,
            self.queue.len(),
        );
    }

    /// The earliest pending event and its (clamped) time; deliveries win
    /// ties, then A's timeout, then B's.
    fn next_event(&self) -> Option<(Instant, Event)> {
        let mut best = self
            .queue
            .peek()
            .map(|Reverse(first)| (first.time, Event::Deliver));
        let timeouts = [
            (self.a.poll_timeout(), Side::A),
            (self.b.poll_timeout(), Side::B),
        ];
        for (timeout, side) in timeouts {
            if let Some(at) = timeout {
                let at = at.max(self.now);
                if best.is_none_or(|(time, _)| at < time) {
                    best = Some((at, Event::Timeout(side)));
                }
            }
        }
        best
    }

    fn perform(&mut self, time: Instant, event: Event) {
        debug_assert!(time >= self.now);
        self.now = time;
        match event {
            Event::Deliver => {
                let Some(Reverse(inflight)) = self.queue.pop() else {
                    return;
                };
                let direction = &mut self.stats[inflight.to.peer().index()];
                direction.delivered += 1;
                match inflight.to {
                    Side::A => {
                        if let Err(e) = self.a.handle_input(time, &inflight.datagram) {
                            direction.rejected += 1;
                            self.errors_a.push(e);
                        }
                    }
                    Side::B => {
                        if let Err(e) = self.b.handle_input(time, &inflight.datagram) {
                            direction.rejected += 1;
                            self.errors_b.push(e);
                        }
                    }
                }
            }
            Event::Timeout(Side::A) => self.a.handle_timeout(time),
            Event::Timeout(Side::B) => self.b.handle_timeout(time),
        }
        self.collect_transmits();
    }

    fn collect_transmits(&mut self) {
        while let Some(datagram) = self.a.poll_transmit(self.now) {
            self.send(Side::A, datagram);
        }
        while let Some(datagram) = self.b.poll_transmit(self.now) {
            self.send(Side::B, datagram);
        }
        while let Some(event) = self.a.poll_event() {
            self.events_a.push(event);
        }
        while let Some(event) = self.b.poll_event() {
            self.events_b.push(event);
        }
    }

    /// Puts a datagram sent by `from` on its link, deciding its fate.
    fn send(&mut self, from: Side, mut datagram: Vec<u8>) {
        let i = from.index();
        self.stats[i].sent += 1;
        if self.recording {
            self.recorded.push((self.now, from, datagram.clone()));
        }
        if let Some(intercept) = self.interceptor.as_mut()
            && !intercept(from, &mut datagram)
        {
            self.stats[i].intercepted += 1;
            return;
        }
        let config = &self.configs[i];
        let (loss, corrupt, duplicate, reorder) = (
            config.loss,
            config.corrupt,
            config.duplicate,
            config.reorder,
        );
        if chance(&mut self.rng, loss) {
            self.stats[i].dropped += 1;
            return;
        }
        if !datagram.is_empty() && chance(&mut self.rng, corrupt) {
            flip_bits(&mut self.rng, &mut datagram);
            self.stats[i].corrupted += 1;
        }
        let to = from.peer();
        if chance(&mut self.rng, duplicate) {
            self.stats[i].duplicated += 1;
            let delay = self.link_delay(i);
            self.schedule_copy(delay, to, datagram.clone(), reorder, i);
            let delay = self.link_delay(i);
            self.schedule(self.now + delay, to, datagram);
        } else {
            let delay = self.link_delay(i);
            self.schedule_copy(delay, to, datagram, reorder, i);
        }
    }

    /// Schedules the original of a datagram, held back with probability `reorder`.
    fn schedule_copy(
        &mut self,
        mut delay: Duration,
        to: Side,
        datagram: Vec<u8>,
        reorder: f64,
        i: usize,
    ) {
        if chance(&mut self.rng, reorder) {
            self.stats[i].reordered += 1;
            delay += self.configs[i].reorder_delay;
        }
        self.schedule(self.now + delay, to, datagram);
    }

    /// Latency plus a jitter draw for direction `i`.
    fn link_delay(&mut self, i: usize) -> Duration {
        let config = &self.configs[i];
        let (latency, jitter) = (config.latency, config.jitter);
        let jitter_ns = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
        if jitter_ns == 0 {
            latency
        } else {
            latency + Duration::from_nanos(below(&mut self.rng, jitter_ns))
        }
    }

    fn schedule(&mut self, time: Instant, to: Side, datagram: Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse(InFlight {
            time,
            seq,
            to,
            datagram,
        }));
    }
}

impl<A, B> fmt::Debug for Network<A, B>
where
    A: Machine + fmt::Debug,
    B: Machine + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("a", &self.a)
            .field("b", &self.b)
            .field("elapsed", &(self.now - self.start))
            .field("in_flight", &self.queue.len())
            .field("configs", &self.configs)
            .field("stats", &self.stats)
            .field("errors_a", &self.errors_a)
            .field("errors_b", &self.errors_b)
            .field("interceptor", &self.interceptor.is_some())
            .finish_non_exhaustive()
    }
}

/// A uniform draw from `[0, 1)` with 53 bits of precision.
fn unit(rng: &mut Xoshiro256PlusPlus) -> f64 {
    // 2^-53: every value is exactly representable.
    const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
    (rng.next_u64() >> 11) as f64 * SCALE
}

/// `true` with probability `p`; draws nothing when the outcome is certain.
fn chance(rng: &mut Xoshiro256PlusPlus, p: f64) -> bool {
    if p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        unit(rng) < p
    }
}

/// A draw from `[0, n)` for `n > 0` (multiply-shift; the bias is below 2^-64 * n).
fn below(rng: &mut Xoshiro256PlusPlus, n: u64) -> u64 {
    ((u128::from(rng.next_u64()) * u128::from(n)) >> 64) as u64
}

/// Flips 1 to 3 distinct random bits of a non-empty datagram.
fn flip_bits(rng: &mut Xoshiro256PlusPlus, datagram: &mut [u8]) {
    let bits = (datagram.len() as u64).saturating_mul(8);
    let count = (1 + below(rng, 3)).min(bits) as usize;
    let mut chosen = [u64::MAX; 3];
    let mut n = 0;
    while n < count {
        let bit = below(rng, bits);
        if !chosen[..n].contains(&bit) {
            chosen[n] = bit;
            n += 1;
        }
    }
    for &bit in &chosen[..count] {
        datagram[(bit / 8) as usize] ^= 1 << (bit % 8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_is_in_range_and_below_is_bounded() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        for _ in 0..10_000 {
            let u = unit(&mut rng);
            assert!((0.0..1.0).contains(&u));
            assert!(below(&mut rng, 3) < 3);
        }
        assert!(!chance(&mut rng, 0.0));
        assert!(chance(&mut rng, 1.0));
    }

    #[test]
    fn flip_bits_flips_one_to_three_distinct_bits() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let mut seen = [0u32; 4];
        for len in [1usize, 2, 16] {
            for _ in 0..3_000 {
                let mut d = vec![0u8; len];
                flip_bits(&mut rng, &mut d);
                let flipped: u32 = d.iter().map(|b| b.count_ones()).sum();
                assert!((1..=3).contains(&flipped), "{flipped} bits flipped");
                seen[flipped as usize] += 1;
            }
        }
        assert!(seen[1..].iter().all(|&n| n > 2_000), "{seen:?}");
    }

    #[test]
    fn in_flight_orders_by_time_then_seq() {
        let t = Instant::now();
        let mut heap = BinaryHeap::new();
        for (dt, seq) in [(5, 3), (1, 2), (5, 1), (1, 4)] {
            heap.push(Reverse(InFlight {
                time: t + Duration::from_millis(dt),
                seq,
                to: Side::A,
                datagram: Vec::new(),
            }));
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|Reverse(f)| f.seq)).collect();
        assert_eq!(order, [2, 4, 1, 3]);
    }

    #[test]
    #[should_panic(expected = "LinkConfig::loss")]
    fn bad_probability_panics() {
        let _ = LinkConfig::default().with_loss(1.5);
    }

    #[test]
    #[should_panic(expected = "LinkConfig::corrupt")]
    fn nan_probability_panics() {
        let _ = LinkConfig::default().with_corrupt(f64::NAN);
    }
}
