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

/// One side on its own thread (the loop of the `pipeline/two_threads`
/// bench): frames in, datagrams through `send` and `receive`; returns the
/// kept blocks' reports and the thread's CPU time.
///
/// With a non-zero `spin` the thread polls its queue that long before it
/// sleeps in it: a sleeping thread costs the sender a wake-up (on a
/// virtual machine, an interrupt to a halted virtual CPU), a spinning one
/// sees the datagram at once.
pub(crate) fn side(
    mut p: Pipeline,
    frames: Vec<RawFrame>,
    send: mpsc::Sender<Vec<u8>>,
    receive: mpsc::Receiver<Vec<u8>>,
    spin: Duration,
) -> (Vec<BlockReport>, Duration) {
    let start = thread_cpu();
    let total = frames.len();
    let mut frames = frames.into_iter().peekable();
    let (mut kept, mut settled) = (Vec::new(), 0);
    while settled < total {
        let now = Instant::now();
        while frames.peek().is_some() && p.wants_frame() {
            p.push_frame(now, frames.next().expect("peeked"))
                .expect("frame");
        }
        while let Some(d) = p.poll_transmit(now) {
            let _ = send.send(d);
        }
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
        let mut first = None;
        if !spin.is_zero() {
            let until = Instant::now() + spin;
            while first.is_none() && Instant::now() < until {
                first = receive.try_recv().ok();
                std::hint::spin_loop();
            }
        }
        let got = match first {
            Some(d) => Ok(d),
            None => receive.recv_timeout(Duration::from_millis(50)),
        };
        match got {
            Ok(d) => {
                let _ = p.handle_input(Instant::now(), &d);
                while let Ok(d) = receive.try_recv() {
                    let _ = p.handle_input(Instant::now(), &d);
                }
            }
            Err(_) => p.handle_timeout(Instant::now()),
        }
    }
    (kept, thread_cpu() - start)
}

/// Alice and Bob on a thread each (each spinning `spin` before it sleeps,
/// see [`side`]); the kept blocks, both threads' CPU time and the
/// wall-clock time.
pub(crate) fn two_threads(
    a: Pipeline,
    b: Pipeline,
    fa: Vec<RawFrame>,
    fb: Vec<RawFrame>,
    spin: Duration,
) -> (Vec<BlockReport>, Duration, Duration) {
    let start = Instant::now();
    let (to_b, from_a) = mpsc::channel();
    let (to_a, from_b) = mpsc::channel();
    let bob = thread::spawn(move || side(b, fb, to_a, from_a, spin));
    let (kept, cpu_a) = side(a, fa, to_b, from_b, spin);
    let (_, cpu_b) = bob.join().expect("Bob's thread");
    (kept, cpu_a + cpu_b, start.elapsed())
}
