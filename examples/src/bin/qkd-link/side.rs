//! One side of the link: the event loop that drives a [`Pipeline`] with
//! the device's frames, the peer's datagrams, worker threads and timers.
//!
//! ```text
//!  device thread ──Frame──┐                        ┌──▶ worker threads (correction, hashing)
//!  workers ───────Work────┼──▶ inbox ──┐           │        │
//!  Ctrl-C ───Interrupt────┘            ├──▶ event loop ─────┴──▶ peer (length-prefixed frames)
//!  peer (TCP socket) ───Peer───────────┘           │
//!                                                  └──▶ key file, key store, JSON lines, progress
//! ```
//!
//! Over TCP the loop reads the socket itself and waits in one `epoll`
//! wait that the inbox's senders can end ([`qkd_examples::peer_socket`]); linked
//! in memory, the peer's loop puts datagrams into this loop's inbox.
//!
//! The pipeline sits in an `Arc<Mutex<_>>` so that another thread (a
//! control surface) can read its statistics or change its parameters
//! between two steps of the loop; the loop holds the lock only while it
//! steps the pipeline, never while it waits.

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use qkd_core::control::StateStore;
use qkd_core::machine::Machine;
use qkd_core::module::ModuleHost;
use qkd_core::{BlockId, QkdDevice, RawFrame, Role, SimulatedBb84, SimulatorConfig};
use qkd_examples::state_directory::StateDirectory;
use qkd_keystore::{KeyStore, StoreConfig, StoreRole};
use qkd_postproc::pipeline::{
    CheckpointMode, DropReason, Pipeline, PipelineEvent, PipelineStats, PushError, WorkDone,
    WorkItem,
};

use crate::net::{Outgoing, role_name};
use crate::report::{self, Format, Progress};
use crate::state::{self, HostState};
use qkd_examples::peer_socket::{self, Inbox, Next, PeerFault, Received};

/// Set by Ctrl-C: a peer that closes after it is an interruption too.
pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Datagrams refused before the peer's hello verified after which the
/// link gives up: the two sides cannot be talking about the same link.
const REFUSALS_BEFORE_READY: u32 = 3;

/// What reaches the event loop.
pub(crate) enum Input {
    /// A datagram from the peer.
    Peer(Vec<u8>),
    /// The peer closed its end cleanly.
    PeerClosed,
    /// The connection broke.
    PeerFailed(String),
    /// A frame from the device.
    Frame(RawFrame),
    /// The device has no more frames (`--blocks`).
    DeviceDone,
    /// The device failed.
    DeviceFailed(String),
    /// A worker finished.
    Work(WorkDone),
    /// Ctrl-C.
    Interrupt,
}

/// How a side starts.
pub(crate) struct Side {
    pub(crate) role: Role,
    pub(crate) pipeline: Arc<Mutex<Pipeline>>,
    pub(crate) device: SimulatorConfig,
    /// Device frames already taken in an earlier run.
    pub(crate) next_frame: u64,
    pub(crate) blocks: Option<u64>,
    pub(crate) workers: usize,
    pub(crate) out: Option<PathBuf>,
    pub(crate) store: bool,
    pub(crate) save: Option<PathBuf>,
    /// `--state-dir`: with manual checkpoints and no `--save`, every
    /// `SaveDue` state goes there (the newest replaces the others).
    pub(crate) state_dir: Option<PathBuf>,
    /// The definition's checkpoint mode (manual: save at every `SaveDue`).
    pub(crate) checkpoints: CheckpointMode,
    /// The state file this run resumed from: removed once the link is up.
    pub(crate) resumed_from: Option<PathBuf>,
    pub(crate) format: Format,
    pub(crate) progress: Arc<Progress>,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Every block asked for is settled and both sides closed.
    Completed,
    /// Ctrl-C.
    Interrupted,
}

/// What a run did.
pub(crate) struct Summary {
    pub(crate) role: Role,
    pub(crate) ending: Ending,
    pub(crate) stats: PipelineStats,
    pub(crate) auth_key_left: u64,
    pub(crate) wall_s: f64,
    pub(crate) refused: u64,
    pub(crate) key_bytes: u64,
    pub(crate) out: Option<PathBuf>,
    pub(crate) saved: Option<PathBuf>,
    pub(crate) store: Option<qkd_keystore::StoreStats>,
}

/// A run that failed; the state was saved where possible.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) role: Role,
    pub(crate) message: String,
    pub(crate) saved: Option<PathBuf>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", role_name(self.role), self.message)?;
        if let Some(p) = &self.saved {
            write!(f, " (state saved to {}; resume with --resume)", p.display())?;
        }
        Ok(())
    }
}

struct Loop {
    side: Side,
    out: Outgoing,
    keys: Option<BufWriter<File>>,
    key_bytes: u64,
    store: Option<KeyStore>,
    ready: VecDeque<RawFrame>,
    outstanding: BTreeSet<BlockId>,
    /// Frames the pipeline has taken or skipped (the device position).
    next_frame: u64,
    credit: Option<Sender<()>>,
    work: Option<Sender<WorkItem>>,
    device_done: bool,
    peer_ready: bool,
    refused_before_ready: u32,
    refused: u64,
    last_refusal: String,
    closed: bool,
    peer_closed: bool,
    low_water_told: bool,
    started: Instant,
}

/// Runs one side until the blocks asked for are settled, Ctrl-C, or a failure.
pub(crate) fn run(
    side: Side,
    out: Outgoing,
    input: Receiver<Input>,
    input_tx: Inbox<Input>,
) -> Result<Summary, Failure> {
    let role = side.role;
    let fail = |message: String| Failure {
        role,
        message,
        saved: None,
    };
    let keys = match &side.out {
        Some(path) => Some(BufWriter::new(create_private(path).map_err(|e| {
            fail(format!(
                "cannot create the key file {}: {e}",
                path.display()
            ))
        })?)),
        None => None,
    };
    let store = if side.store {
        let role = match role {
            Role::Alice => StoreRole::EvenChunks,
            Role::Bob => StoreRole::OddChunks,
        };
        Some(
            KeyStore::new(StoreConfig::new("qkd-link", role))
                .map_err(|e| fail(format!("key store: {e}")))?,
        )
    } else {
        None
    };
    // A state may be resumed once: it goes as soon as the link is up,
    // before the restored pipeline seals anything.
    if let Some(path) = &side.resumed_from
        && let Err(e) = std::fs::remove_file(path)
    {
        return Err(fail(format!(
            "cannot remove the state file {} after resuming from it (it must not be resumed twice): {e}",
            path.display()
        )));
    }

    // Workers.
    let work = if side.workers > 0 {
        let (work_tx, work_rx) = mpsc::channel::<WorkItem>();
        let work_rx = Arc::new(Mutex::new(work_rx));
        for _ in 0..side.workers {
            let rx = Arc::clone(&work_rx);
            let tx = input_tx.clone();
            thread::spawn(move || {
                loop {
                    let item = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(item) = item else { return };
                    if tx.send(Input::Work(item.run())).is_err() {
                        return;
                    }
                }
            });
        }
        lock(&side.pipeline).set_external_work(true);
        Some(work_tx)
    } else {
        lock(&side.pipeline).set_external_work(false);
        None
    };

    // The device: a thread producing frames on credit (two ahead).
    let (credit_tx, credit_rx) = mpsc::channel::<()>();
    {
        let mut device = SimulatedBb84::device(side.device.clone(), role)
            .map_err(|e| fail(format!("simulated device: {e}")))?;
        if let Some(n) = side.blocks {
            device = device.with_frame_limit(side.next_frame.saturating_add(n));
        }
        let skip = side.next_frame;
        let tx = input_tx.clone();
        thread::spawn(move || {
            // Resuming: the simulator is sequential, so run it up to where
            // the saved link stopped.
            for _ in 0..skip {
                match device.next_frame() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Input::DeviceFailed(e.to_string()));
                        return;
                    }
                }
            }
            for () in credit_rx {
                let input = match device.next_frame() {
                    Ok(Some(frame)) => Input::Frame(frame),
                    Ok(None) => Input::DeviceDone,
                    Err(e) => Input::DeviceFailed(e.to_string()),
                };
                let last = !matches!(input, Input::Frame(_));
                if tx.send(input).is_err() || last {
                    return;
                }
            }
        });
        for _ in 0..2 {
            let _ = credit_tx.send(());
        }
    }
    drop(input_tx);

    let next_frame = side.next_frame;
    let mut l = Loop {
        side,
        out,
        keys,
        key_bytes: 0,
        store,
        ready: VecDeque::new(),
        outstanding: BTreeSet::new(),
        next_frame,
        credit: Some(credit_tx),
        work,
        device_done: false,
        peer_ready: false,
        refused_before_ready: 0,
        refused: 0,
        last_refusal: String::new(),
        closed: false,
        peer_closed: false,
        low_water_told: false,
        started: Instant::now(),
    };
    match l.drive(&input) {
        Ok(ending) => {
            let saved = l.save_if_asked().map_err(fail)?;
            l.finish_files().map_err(fail)?;
            Ok(l.summary(ending, saved))
        }
        Err(message) => {
            // Keep what can be resumed: the pipeline is still consistent
            // (blocks in flight are dropped on both sides at a restore).
            let saved = l.save_if_asked().ok().flatten();
            let _ = l.finish_files();
            l.out.finish();
            Err(Failure {
                role,
                message,
                saved,
            })
        }
    }
}

/// Most inputs handled between two steps of the pipeline.
const DRAIN_PER_STEP: usize = 64;

impl Loop {
    fn drive(&mut self, input: &Receiver<Input>) -> Result<Ending, String> {
        // Inputs taken while draining that must see the pipeline stepped
        // first (the peer's end, the device's end, a signal), in order.
        let mut held: VecDeque<Input> = VecDeque::new();
        loop {
            let now = Instant::now();
            let deadline = self.step(now)?;
            if !self.closed
                && self.device_done
                && self.ready.is_empty()
                && self.outstanding.is_empty()
            {
                self.out.close();
                self.closed = true;
            }
            if self.closed && self.peer_closed {
                return Ok(Ending::Completed);
            }
            if let Some(i) = held.pop_front() {
                if let Some(ending) = self.on_input(i)? {
                    return Ok(ending);
                }
                continue;
            }
            let wait = deadline
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            if let Some(i) = self.next_input(input, Some(wait))? {
                if let Some(ending) = self.on_input(i)? {
                    return Ok(ending);
                }
                // The peer's datagrams and finished work that have
                // arrived meanwhile are handled before the next step, so
                // that one step (and one flush to the peer) answers them
                // all; anything else waits for that step.
                for _ in 0..DRAIN_PER_STEP {
                    match self.next_input(input, None)? {
                        Some(i @ (Input::Peer(_) | Input::Work(_))) => {
                            if let Some(ending) = self.on_input(i)? {
                                return Ok(ending);
                            }
                        }
                        Some(other) => {
                            held.push_back(other);
                            break;
                        }
                        None => break,
                    }
                }
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                lock(&self.side.pipeline).handle_timeout(now);
            }
        }
    }

    /// The next input from the socket (TCP) or the inbox; with `wait`,
    /// waits for one at most that long, without, only takes what is there.
    fn next_input(
        &mut self,
        input: &Receiver<Input>,
        wait: Option<Duration>,
    ) -> Result<Option<Input>, String> {
        let Outgoing::Tcp(socket) = &mut self.out else {
            return match wait {
                None => Ok(input.try_recv().ok()),
                Some(wait) => match input.recv_timeout(wait) {
                    Ok(i) => Ok(Some(i)),
                    Err(RecvTimeoutError::Timeout) => Ok(None),
                    Err(RecvTimeoutError::Disconnected) => {
                        Err("internal: every input of the event loop has gone".into())
                    }
                },
            };
        };
        let next = peer_socket::next_input(socket, input, wait)
            .map_err(|e| format!("waiting for the peer failed: {e}"))?;
        Ok(next.map(|n| match n {
            Next::Inbox(i) => i,
            Next::Peer(Received::Datagram(d)) => Input::Peer(d),
            Next::Peer(Received::Closed) => Input::PeerClosed,
            Next::Peer(Received::Failed(f @ PeerFault::Silent(_))) => {
                Input::PeerFailed(format!("{f} (--timeout)"))
            }
            Next::Peer(Received::Failed(f)) => Input::PeerFailed(f.to_string()),
        }))
    }

    /// Steps the pipeline until it has nothing more to do; returns its next timeout.
    fn step(&mut self, now: Instant) -> Result<Option<Instant>, String> {
        let pipeline = Arc::clone(&self.side.pipeline);
        let mut p = lock(&pipeline);
        loop {
            let mut moved = false;
            while !self.ready.is_empty() && p.wants_frame() {
                let Some(frame) = self.ready.pop_front() else {
                    break;
                };
                let block = frame.block;
                match p.push_frame(now, frame) {
                    Ok(()) => {
                        self.outstanding.insert(block);
                    }
                    // After a restore the peer may have gone further: the
                    // blocks it dropped are skipped here.
                    Err(PushError::OutOfOrder { .. }) => {}
                    Err(PushError::Busy) => {
                        return Err("internal: the pipeline refused a frame it asked for".into());
                    }
                    Err(e) => return Err(format!("the device's frame {block}: {e}")),
                }
                self.next_frame = block.get() + 1;
                if let Some(c) = &self.credit {
                    let _ = c.send(());
                }
                moved = true;
            }
            while let Some(datagram) = p.poll_transmit(now) {
                if !self.closed {
                    self.out
                        .send(&datagram)
                        .map_err(|e| format!("sending to the peer failed: {e}"))?;
                }
                moved = true;
            }
            while let Some(item) = p.poll_work() {
                match &self.work {
                    Some(w) => {
                        if w.send(item).is_err() {
                            return Err("internal: the worker threads have gone".into());
                        }
                    }
                    None => {
                        let done = item.run();
                        p.complete_work(now, done);
                    }
                }
                moved = true;
            }
            while let Some(event) = p.poll_event() {
                self.on_event(&mut p, event)?;
                moved = true;
            }
            if !moved {
                break;
            }
        }
        if !self.closed {
            self.out
                .flush()
                .map_err(|e| format!("sending to the peer failed: {e}"))?;
        }
        self.side
            .progress
            .update(self.side.role, p.stats(), p.auth_key_left());
        Ok(p.poll_timeout())
    }

    fn on_input(&mut self, input: Input) -> Result<Option<Ending>, String> {
        let now = Instant::now();
        match input {
            Input::Peer(datagram) => {
                let result = lock(&self.side.pipeline).handle_input(now, &datagram);
                if let Err(e) = result {
                    self.refused += 1;
                    self.last_refusal = e.to_string();
                    if !self.peer_ready {
                        self.refused_before_ready += 1;
                        if self.refused_before_ready >= REFUSALS_BEFORE_READY {
                            return Err(self.refused_message());
                        }
                    }
                }
            }
            Input::PeerClosed => {
                self.peer_closed = true;
                if !self.closed && INTERRUPTED.load(Ordering::SeqCst) {
                    return Ok(Some(Ending::Interrupted));
                }
                if !self.closed && !self.peer_ready && self.refused_before_ready > 0 {
                    return Err(self.refused_message());
                }
                if !self.closed {
                    return Err(format!(
                        "the peer closed the connection with {} block(s) of this run unsettled",
                        self.outstanding.len() + self.ready.len()
                    ));
                }
            }
            Input::PeerFailed(reason) => {
                if self.closed {
                    // Everything is settled here; the peer's end just went.
                    self.peer_closed = true;
                } else {
                    return Err(reason);
                }
            }
            Input::Frame(frame) => self.ready.push_back(frame),
            Input::DeviceDone => {
                self.device_done = true;
                self.credit = None;
            }
            Input::DeviceFailed(e) => return Err(format!("the device failed: {e}")),
            Input::Work(done) => lock(&self.side.pipeline).complete_work(now, done),
            Input::Interrupt => return Ok(Some(Ending::Interrupted)),
        }
        Ok(None)
    }

    fn refused_message(&self) -> String {
        format!(
            "the peer's first messages were refused ({}): the two sides do not hold the same \
             pre-shared secret, or one side resumed from a saved state and the other did not \
             (or from states of different runs)",
            self.last_refusal
        )
    }

    fn on_event(&mut self, p: &mut Pipeline, event: PipelineEvent) -> Result<(), String> {
        let role = self.side.role;
        match event {
            PipelineEvent::FinalKey { block, key, stats } => {
                self.outstanding.remove(&block);
                if let Some(w) = &mut self.keys {
                    // Flushed per block: a process killed later (SIGKILL,
                    // power) must not lose keys its peer has written.
                    w.write_all(key.expose_secret())
                        .and_then(|()| w.flush())
                        .map_err(|e| format!("writing the key file failed: {e}"))?;
                }
                self.key_bytes += key.len() as u64;
                if let Some(store) = &mut self.store
                    && !key.is_empty()
                {
                    let _ = store.insert_block(Instant::now(), block, key);
                }
                report::block(self.side.format, role, &stats, None);
            }
            PipelineEvent::Dropped {
                block,
                stage,
                reason,
                stats,
            } => {
                self.outstanding.remove(&block);
                if let Some(store) = &mut self.store {
                    let _ = store.discard_block(block);
                }
                let why = drop_reason(&reason);
                report::block(
                    self.side.format,
                    role,
                    &stats,
                    Some((stage.to_string(), why)),
                );
            }
            PipelineEvent::PeerReady => self.peer_ready = true,
            PipelineEvent::SaveDue if self.side.checkpoints == CheckpointMode::Manual => {
                match (self.side.save.clone(), self.side.state_dir.clone()) {
                    (Some(path), _) => self.write_state(p, &path)?,
                    (None, Some(dir)) => store_state(p, &dir)?,
                    (None, None) => {
                        return Err("the pipeline definition asks for manual checkpoints: give \
                                    --save or --state-dir"
                            .into());
                    }
                }
            }
            PipelineEvent::AuthLowWater { remaining_bits } if !self.low_water_told => {
                self.low_water_told = true;
                report::warn(
                    role,
                    &format!("the authentication key runs low ({remaining_bits} bits left)"),
                );
            }
            PipelineEvent::AuthExhausted { remaining_bits } => report::warn(
                role,
                &format!(
                    "the authentication key is used up ({remaining_bits} bits left, less than one \
                     tag): waiting for a block being settled to refill it; if none is, start the \
                     link again from a fresh pre-shared secret"
                ),
            ),
            PipelineEvent::Stalled { block } => report::warn(
                role,
                &format!("block {block} cannot be settled yet: the peer does not acknowledge it"),
            ),
            PipelineEvent::DefinitionMismatch => {
                return Err(
                    "the peer runs another pipeline definition (give both sides the same --pipeline)"
                        .into(),
                );
            }
            PipelineEvent::FeedDiverged { count } => {
                return Err(format!(
                    "the authentication pools were fed differently (deposit {count}): start the \
                     link again from a fresh pre-shared secret"
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn write_state(&self, p: &mut Pipeline, path: &Path) -> Result<(), String> {
        let bytes = zeroize::Zeroizing::new(
            p.save_state()
                .map_err(|e| format!("saving the pipeline failed: {e}"))?,
        );
        let host = HostState {
            role: self.side.role,
            device: self.side.device.clone(),
            next_frame: self.next_frame,
        };
        state::write(path, &host, &bytes).map_err(|e| e.to_string())
    }

    fn save_if_asked(&mut self) -> Result<Option<PathBuf>, String> {
        let Some(path) = self.side.save.clone() else {
            return Ok(None);
        };
        let pipeline = Arc::clone(&self.side.pipeline);
        let mut p = lock(&pipeline);
        if p.is_finished() {
            return Ok(None);
        }
        self.write_state(&mut p, &path)?;
        Ok(Some(path))
    }

    fn finish_files(&mut self) -> Result<(), String> {
        if let Some(w) = &mut self.keys {
            w.flush()
                .and_then(|()| w.get_ref().sync_all())
                .map_err(|e| format!("writing the key file failed: {e}"))?;
        }
        Ok(())
    }

    fn summary(&mut self, ending: Ending, saved: Option<PathBuf>) -> Summary {
        self.out.finish();
        let p = lock(&self.side.pipeline);
        Summary {
            role: self.side.role,
            ending,
            stats: p.stats().clone(),
            auth_key_left: p.auth_key_left(),
            wall_s: self.started.elapsed().as_secs_f64(),
            refused: self.refused,
            key_bytes: self.key_bytes,
            out: self.side.out.clone(),
            saved,
            store: self.store.as_ref().map(KeyStore::stats),
        }
    }
}

/// Locks the pipeline (a panicked holder leaves it usable: every call
/// into it is a whole step).
pub(crate) fn lock(p: &Mutex<Pipeline>) -> MutexGuard<'_, Pipeline> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A file only this user may read (key material).
fn create_private(path: &std::path::Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// A short text for a drop reason.
fn drop_reason(reason: &DropReason) -> String {
    match reason {
        DropReason::Sift(e) => format!("sifting failed: {e}"),
        DropReason::Estimate(a) => format!("estimation aborted: {a:?}"),
        DropReason::TooSmall => "too few key bits for a Cascade chunk".into(),
        DropReason::Correction(e) => format!("error correction aborted: {e}"),
        DropReason::ConfirmMismatch => "confirmation tags differ".into(),
        DropReason::NoSecretKey => "the finite-key bound leaves no secret bit".into(),
        DropReason::TranscriptMismatch => "transcript tag did not verify (altered messages)".into(),
        DropReason::PeerDropped => "the peer dropped it".into(),
        DropReason::Timeout => "no progress after every retransmission".into(),
        DropReason::Protocol(e) => format!("peer message did not fit: {e}"),
        DropReason::Restored => "in flight when the state was restored".into(),
        other => format!("{other:?}"),
    }
}

/// Writes the pipeline's state into the state folder (the form the control
/// surface saves and `--resume` reads; the folder keeps only the newest).
fn store_state(p: &mut Pipeline, dir: &Path) -> Result<(), String> {
    let bytes = zeroize::Zeroizing::new(
        p.save_state()
            .map_err(|e| format!("saving the pipeline failed: {e}"))?,
    );
    StateDirectory::open(dir)
        .and_then(|mut states| states.store(&bytes))
        .map(|_| ())
        .map_err(|e| format!("cannot write a state into {}: {e}", dir.display()))
}
