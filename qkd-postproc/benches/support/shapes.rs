//! The driving loops of the pipeline's measured shapes, shared by the
//! criterion bench (`benches/pipeline.rs`) and the CPU driver
//! (`examples/pipeline_cpu.rs`), which include this file with `#[path]`
//! (it is not a bench target of its own: cargo looks for benches only in
//! `benches/*.rs` and `benches/*/main.rs`).

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use qkd_core::RawFrame;
use qkd_core::Role;
use qkd_core::machine::Machine;
use qkd_postproc::pipeline::{BlockReport, Pipeline, PipelineEvent, WorkDone, WorkItem};

/// This thread's CPU time so far (zero where the kernel does not say).
pub(crate) fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Alice and Bob driven by one thread; the kept blocks' reports.
#[inline(never)]
pub(crate) fn one_thread(
    a: Pipeline,
    b: Pipeline,
    fa: Vec<RawFrame>,
    fb: Vec<RawFrame>,
) -> Vec<BlockReport> {
    drive(a, b, fa, fb, |_, _, _, _| false)
}

/// The host loop of the one-thread shapes: frames in, datagrams across,
/// Alice's events counted; `step` runs once per turn of the loop after the
/// datagrams (with whether anything moved so far) and says whether it
/// moved anything itself. Idle turns run the timers.
fn drive(
    mut a: Pipeline,
    mut b: Pipeline,
    fa: Vec<RawFrame>,
    fb: Vec<RawFrame>,
    mut step: impl FnMut(Instant, &mut Pipeline, &mut Pipeline, bool) -> bool,
) -> Vec<BlockReport> {
    let total = fa.len();
    let (mut fa, mut fb) = (fa.into_iter().peekable(), fb.into_iter().peekable());
    let (mut kept, mut settled) = (Vec::new(), 0);
    while settled < total {
        let now = Instant::now();
        while fa.peek().is_some() && a.wants_frame() {
            a.push_frame(now, fa.next().expect("peeked"))
                .expect("frame");
        }
        while fb.peek().is_some() && b.wants_frame() {
            b.push_frame(now, fb.next().expect("peeked"))
                .expect("frame");
        }
        let mut moved = false;
        while let Some(d) = a.poll_transmit(now) {
            let _ = b.handle_input(now, &d);
            moved = true;
        }
        while let Some(d) = b.poll_transmit(now) {
            let _ = a.handle_input(now, &d);
            moved = true;
        }
        moved |= step(now, &mut a, &mut b, moved);
        while let Some(e) = a.poll_event() {
            match e {
                PipelineEvent::FinalKey { stats, .. } => {
                    kept.push(stats);
                    settled += 1;
                }
                PipelineEvent::Dropped { .. } => settled += 1,
                _ => {}
            }
        }
        while b.poll_event().is_some() {}
        if !moved {
            a.handle_timeout(Instant::now());
            b.handle_timeout(Instant::now());
        }
    }
    kept
}

/// How [`workers`] splits the work.
#[derive(Clone, Copy)]
pub(crate) struct Workers {
    /// Worker threads.
    pub(crate) threads: usize,
    /// Cascade turns on the workers too (not only privacy amplification).
    pub(crate) correction: bool,
}

/// [`one_thread`] with both sides' heavy steps on a pool of worker
/// threads: privacy amplification, and with `correction` every Cascade
/// turn, so that different blocks' steps run at once while this thread
/// keeps the protocol going. The kept blocks and the workers' CPU time.
#[inline(never)]
pub(crate) fn workers(
    mut a: Pipeline,
    mut b: Pipeline,
    fa: Vec<RawFrame>,
    fb: Vec<RawFrame>,
    pool: Workers,
) -> (Vec<BlockReport>, Duration) {
    for p in [&mut a, &mut b] {
        p.set_external_work(true);
        p.set_external_correction(pool.correction);
    }
    let (to_worker, jobs) = mpsc::channel::<(Role, WorkItem)>();
    let jobs = std::sync::Arc::new(std::sync::Mutex::new(jobs));
    let (to_host, done) = mpsc::channel::<(Role, WorkDone)>();
    let threads: Vec<_> = (0..pool.threads.max(1))
        .map(|_| {
            let (jobs, to_host) = (jobs.clone(), to_host.clone());
            thread::spawn(move || {
                let start = thread_cpu();
                loop {
                    let job = jobs.lock().expect("job queue").recv();
                    let Ok((role, item)) = job else { break };
                    if to_host.send((role, item.run())).is_err() {
                        break;
                    }
                }
                thread_cpu() - start
            })
        })
        .collect();
    drop(to_host);
    let mut outstanding = 0usize;
    let kept = drive(a, b, fa, fb, |now, a, b, moved_before| {
        let mut moved = false;
        for (role, p) in [(Role::Alice, &mut *a), (Role::Bob, &mut *b)] {
            while let Some(item) = p.poll_work() {
                to_worker.send((role, item)).expect("worker");
                outstanding += 1;
                moved = true;
            }
        }
        let mut finished: Vec<(Role, WorkDone)> = done.try_iter().collect();
        if finished.is_empty() && !moved_before && !moved && outstanding > 0 {
            finished.extend(done.recv_timeout(Duration::from_millis(50)));
        }
        for (role, work) in finished {
            match role {
                Role::Alice => a.complete_work(now, work),
                _ => b.complete_work(now, work),
            }
            outstanding -= 1;
            moved = true;
        }
        moved
    });
    drop(to_worker);
    let cpu = threads.into_iter().map(|t| t.join().expect("worker")).sum();
    (kept, cpu)
}

/// What one side's thread receives in the two-thread shape: the peer's
/// datagrams and, when one side hands its privacy amplification to the
/// other's thread, the work and its results.
pub(crate) enum Input {
    /// A datagram from the peer.
    Datagram(Vec<u8>),
    /// The peer's work to run here.
    Work(WorkItem),
    /// This side's work, run by the peer's thread.
    Done(WorkDone),
}

/// How the two-thread shape runs: see [`side`].
#[derive(Clone, Copy)]
pub(crate) struct TwoThreads {
    /// How long a side polls its queue before it sleeps in it.
    pub(crate) spin: Duration,
    /// Bob's privacy amplification runs on Alice's thread (Bob's Cascade
    /// side is the heavier one, so this evens the two threads' loads).
    pub(crate) bob_hashing_on_alice: bool,
    /// Alice's thread is pinned to the first CPU the process may use, Bob's
    /// to the second (where there are two).
    pub(crate) pin: bool,
}

/// Pins this thread to `core` (where the host lets it: a pin that fails
/// leaves the thread where it was).
fn pin_to(core: Option<core_affinity::CoreId>) {
    if let Some(core) = core {
        core_affinity::set_for_current(core);
    }
}

/// One side on its own thread (the loop of the `pipeline/two_threads`
/// bench): frames in, datagrams through `send` and `receive`; returns the
/// kept blocks' reports, the thread's CPU time and the wall-clock time it
/// spent waiting for input (spinning or asleep).
///
/// Every datagram handled is answered at once (the side's transmits are
/// sent before it takes the next datagram), so the peer starts on one
/// block's answer while this side works on another block: handling all
/// queued datagrams first and then sending lets the two threads fall into
/// step, each idle while the other works.
///
/// With a non-zero `spin` the thread polls its queue that long before it
/// sleeps in it: a sleeping thread costs the sender a wake-up (on a
/// virtual machine, an interrupt to a halted virtual CPU), a spinning one
/// sees the datagram at once. With `hand_out` this side's privacy
/// amplification goes to the peer's thread as [`Input::Work`]; a side
/// runs any [`Input::Work`] it receives and sends back [`Input::Done`],
/// and with `serve_peer` goes on doing so after its own blocks are
/// settled, until the peer's end of the queue closes.
pub(crate) fn side(
    mut p: Pipeline,
    frames: Vec<RawFrame>,
    send: mpsc::Sender<Input>,
    receive: mpsc::Receiver<Input>,
    spin: Duration,
    hand_out: bool,
    serve_peer: bool,
) -> (Vec<BlockReport>, Duration, Duration) {
    let start = thread_cpu();
    let mut waited = Duration::ZERO;
    p.set_external_work(hand_out);
    let total = frames.len();
    let mut frames = frames.into_iter().peekable();
    let (mut kept, mut settled) = (Vec::new(), 0);
    let flush = |p: &mut Pipeline, now: Instant| {
        while let Some(d) = p.poll_transmit(now) {
            let _ = send.send(Input::Datagram(d));
        }
        while let Some(item) = p.poll_work() {
            let _ = send.send(Input::Work(item));
        }
    };
    let take = |p: &mut Pipeline, input: Input| {
        let now = Instant::now();
        match input {
            Input::Datagram(d) => {
                let _ = p.handle_input(now, &d);
            }
            Input::Work(item) => {
                let _ = send.send(Input::Done(item.run()));
            }
            Input::Done(done) => p.complete_work(now, done),
        }
        flush(p, now);
    };
    while settled < total {
        let now = Instant::now();
        while frames.peek().is_some() && p.wants_frame() {
            p.push_frame(now, frames.next().expect("peeked"))
                .expect("frame");
        }
        flush(&mut p, now);
        while let Some(e) = p.poll_event() {
            match e {
                PipelineEvent::FinalKey { stats, .. } => {
                    kept.push(stats);
                    settled += 1;
                }
                PipelineEvent::Dropped { .. } => settled += 1,
                _ => {}
            }
        }
        if settled == total {
            break;
        }
        let wait_start = Instant::now();
        let mut first = None;
        if !spin.is_zero() {
            let until = Instant::now() + spin;
            while first.is_none() && Instant::now() < until {
                first = receive.try_recv().ok();
                std::hint::spin_loop();
            }
        }
        let got = match first {
            Some(input) => Ok(input),
            None => receive.recv_timeout(Duration::from_millis(50)),
        };
        waited += wait_start.elapsed();
        match got {
            Ok(input) => {
                take(&mut p, input);
                while let Ok(input) = receive.try_recv() {
                    take(&mut p, input);
                }
            }
            Err(_) => p.handle_timeout(Instant::now()),
        }
    }
    // A peer that hands its hashing here may still need this thread:
    // serve it until the peer is done too (its end of the queue closes).
    drop(p);
    if serve_peer {
        while let Ok(input) = receive.recv() {
            if let Input::Work(item) = input {
                let _ = send.send(Input::Done(item.run()));
            }
        }
    }
    (kept, thread_cpu() - start, waited)
}

/// What [`two_threads`] measured.
#[allow(dead_code)] // the criterion bench reads none of it
pub(crate) struct TwoThreadRun {
    /// Alice's kept blocks.
    pub(crate) kept: Vec<BlockReport>,
    /// Both threads' CPU time.
    pub(crate) cpu: Duration,
    /// From the start of the threads to the end of both.
    pub(crate) wall: Duration,
    /// How long Alice's and Bob's threads worked (their wall-clock time
    /// less their waits for input): the larger is the run's bottleneck.
    pub(crate) busy: [Duration; 2],
}

/// Alice and Bob on a thread each (see [`side`]).
pub(crate) fn two_threads(
    a: Pipeline,
    b: Pipeline,
    fa: Vec<RawFrame>,
    fb: Vec<RawFrame>,
    how: TwoThreads,
) -> TwoThreadRun {
    // The CPUs this thread may use, read before either side is pinned (a
    // pinned thread sees only its own CPU, and its children inherit that).
    let cores = if how.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let (core_a, core_b) = match cores.as_slice() {
        [first, second, ..] => (Some(*first), Some(*second)),
        _ => (None, None),
    };
    let start = Instant::now();
    let (to_b, from_a) = mpsc::channel();
    let (to_a, from_b) = mpsc::channel();
    let spin = how.spin;
    let hand_out = how.bob_hashing_on_alice;
    let bob = thread::spawn(move || {
        pin_to(core_b);
        side(b, fb, to_a, from_a, spin, hand_out, false)
    });
    let alice = thread::spawn(move || {
        pin_to(core_a);
        side(a, fa, to_b, from_b, spin, false, hand_out)
    });
    let (kept, cpu_a, waited_a) = alice.join().expect("Alice's thread");
    let (_, cpu_b, waited_b) = bob.join().expect("Bob's thread");
    let wall = start.elapsed();
    TwoThreadRun {
        kept,
        cpu: cpu_a + cpu_b,
        wall,
        busy: [wall.saturating_sub(waited_a), wall.saturating_sub(waited_b)],
    }
}
