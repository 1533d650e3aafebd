//! The real block source: each node runs its end of the distillation
//! pipeline (`qkd_postproc::pipeline::Pipeline`), fed by its end of the
//! simulated BB84 device, and hands the pipeline's final keys to its store.
//!
//! ```text
//!  device thread ──Frame──┐                       ┌──▶ worker thread (Toeplitz hashing)
//!  worker ─────────Work───┼──▶ inbox ─┐           │
//!  peer node (TCP, u32-length frames) ┴──▶ session thread ─┴──▶ peer node
//!                                          │
//!                                          └──FinalKey──▶ channel ──poll_block──▶ store (node.rs)
//! ```
//!
//! The session thread reads and writes the pipeline's connection itself,
//! in one wait that the inbox's senders end
//! ([`qkd_examples::peer_socket`]): a peer's message costs one wake-up.
//!
//! # The pipeline's own connection
//!
//! The pipeline's datagrams travel over a second TCP connection between the
//! nodes (`source.link_listen` / `source.link_address`), not inside the
//! peer link's secured channel:
//!
//! - every pipeline message is already authenticated by the pipeline's own
//!   Wegman–Carter channel (the classical channel of QKD must be
//!   authenticated, not secret: sifting, parities and seeds are public), so
//!   the secured channel would add nothing but a second layer;
//! - the pipeline's datagrams are large (a frame's sift announcement is
//!   megabytes) where the peer link carries small sync records; on one
//!   connection they would queue the `dec_keys` notices behind them (head
//!   of line blocking) and exceed the secured channel's record limit.
//!
//! The node that accepts the peer link accepts this connection too. Its
//! greeting is not authenticated; what it carries (session, block base,
//! link key ID) is bound into the pipeline's secret, so an altered
//! greeting only makes the pipeline's authentication refuse every message.
//!
//! ```text
//! hello   (connector → acceptor): "kms-pipe" | version u8 = 1 | 1 | role u8 | session u64 | next block u64
//! welcome (acceptor → connector): "kms-pipe" | version u8 = 1 | 2 | role u8 | block base u64 | link key ID [16]
//! then:   length u32 (1 ..= 64 MiB) | one pipeline datagram, both ways
//! ```
//!
//! # No authentication pad is ever used twice
//!
//! Each *run* of the pipeline (the first of a session, and a new one after
//! its connection broke) starts from its own pre-shared secret, derived by
//! [`run_secret`] from one **link key** ([`crate::link_keys`]) that the
//! accepting node draws with `next()` and the connecting node takes with
//! `find` + `consume`. A link key is handed out once: its index is written
//! durably (fsync, rename) *before* the key leaves the link-key source, on
//! both nodes, and every index below the recorded floor is refused
//! afterwards, across restarts too. The peer link's handshakes and rekeys
//! draw from the same source, so they never get the pipeline's keys either.
//! Two runs (of one session, of two sessions, before and after a restart of
//! either node) therefore start from different link keys and so from
//! different secrets, and the Wegman–Carter channel never reuses a pad
//! within one secret. Starting every session from the configured initial
//! secret, as a naive source would, would reuse the first pads of the
//! secret at every restart.
//!
//! Where the link key comes from ([`crate::link_keys`]): from the link's
//! reserve of QKD key ([`crate::reserve`]), carved out of earlier final
//! key, as soon as the reserve holds a drawable entry of the accepting
//! node's (every session after the first, and later runs of the first);
//! from the computational expansion of the operator-installed initial
//! secret only for the first run(s) of a new link, before the reserve has
//! any. Limitation: the 64 KiB pipeline secret of a run is still a blake3
//! expansion of that one 1 KiB link key (computational, keyed by fresh QKD
//! key); within a run the pipeline then replenishes its pool from final
//! key.
//!
//! # Blocks
//!
//! A run numbers its device frames from 0; final key of frame `f` becomes
//! store block `base + f`, where `base` is agreed in the greeting (the
//! session's first block for its first run, after every block either node
//! has seen for a later one), so numbers only grow within a session.
//! `FinalKey` and `Dropped` are symmetric outcomes of the pipeline: a
//! dropped block is skipped on both nodes (a store block number is simply
//! never used). If the connection breaks while a block is being settled,
//! one node may keep a block the other lacks; the stores reconcile it as
//! lost.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use qkd_core::machine::Machine;
use qkd_core::module::ModuleHost;
use qkd_core::{BlockId, KeyId, QkdDevice, RawFrame, Role, SecretKey, SimulatedBb84};
use qkd_examples::peer_socket::{self, Inbox, Next, PeerSocket, Received};
use qkd_handshake::psk::PskSource;
use qkd_postproc::auth::{PresharedSecret, SecretId};
use qkd_postproc::pipeline::{
    Pipeline, PipelineDefinition, PipelineEvent, PipelineStats, WorkDone, WorkItem,
};
use zeroize::Zeroizing;

use crate::config::NodeConfig;
use crate::link_keys::{LINK_KEY_BYTES, SharedLinkKeys};
use crate::source::{BlockSource, Session};

const MAGIC: &[u8; 8] = b"kms-pipe";
const VERSION: u8 = 1;
const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const HELLO_LEN: usize = 8 + 3 + 16;
const WELCOME_LEN: usize = 8 + 3 + 8 + 16;
/// Bytes of a run's pre-shared secret (the pool of the first blocks, until
/// final key replenishes it).
pub(crate) const RUN_SECRET_BYTES: usize = 64 << 10;
/// Final keys waiting for the store after which the pipeline takes no new
/// frame (the peer's pipeline then waits for this one).
const MAX_QUEUED_BLOCKS: usize = 8;
/// The store is fed while it holds less fresh and pending key than this.
const LOW_WATER_BYTES: u64 = 4 << 20;
/// Pause between connection attempts, and after a failed run.
const RETRY: Duration = Duration::from_millis(200);
/// How long a greeting may take.
const GREETING_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait of the session thread between two looks at its stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Refused datagrams before the peer's hello verified after which a run
/// gives up (the two ends do not hold the same secret).
const REFUSALS_BEFORE_READY: u32 = 3;

/// Why the pipeline source could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PipelineSourceError {
    /// The configuration lacks a pipeline setting (validated configurations
    /// always have them).
    #[error("source: {0} is required for the pipeline source")]
    Missing(&'static str),
    /// The pipeline's listening socket could not be bound.
    #[error("cannot listen for the pipeline on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// The pipeline's numbers, for the demo and status lines.
#[derive(Clone, Debug)]
pub(crate) struct PipelineReport {
    /// This node's end.
    pub(crate) role: Role,
    /// Pipeline runs started since the node started (one per session, plus
    /// one per broken pipeline connection).
    pub(crate) runs: u64,
    /// Totals of the current run.
    pub(crate) stats: PipelineStats,
    /// Authentication key bits left to seal with.
    pub(crate) auth_key_left: u64,
}

/// What every run needs, fixed at start.
struct Settings {
    name: String,
    role: Role,
    definition: PipelineDefinition,
    device: qkd_core::SimulatorConfig,
    accepts: bool,
    address: SocketAddr,
    workers: usize,
}

/// The running session: dropping it stops its thread.
struct SessionRun {
    stop: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    keys: Receiver<(BlockId, SecretKey)>,
}

impl Drop for SessionRun {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The distillation pipeline as a [`BlockSource`].
pub(crate) struct PipelineSource {
    settings: Arc<Settings>,
    keys: SharedLinkKeys,
    listener: Option<Arc<TcpListener>>,
    run: Option<SessionRun>,
    /// Set by [`BlockSource::stop`]: no session starts any more.
    stopped: bool,
    blocks: u64,
    bytes: u64,
    report: Arc<Mutex<PipelineReport>>,
}

impl PipelineSource {
    /// The source of the node configured by `config`, drawing its runs'
    /// secrets from `keys` (shared with the peer link). The accepting node
    /// binds its pipeline listener here.
    pub(crate) fn new(
        config: &NodeConfig,
        keys: SharedLinkKeys,
    ) -> Result<Self, PipelineSourceError> {
        let src = &config.source;
        let role = src
            .role
            .ok_or(PipelineSourceError::Missing("source.role"))?;
        let accepts = config.accepts_link();
        let listener = if accepts {
            let addr = src
                .link_listen
                .ok_or(PipelineSourceError::Missing("source.link_listen"))?;
            let l = TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| PipelineSourceError::Bind { addr, source })?;
            Some(Arc::new(l))
        } else {
            None
        };
        let address = src
            .link_address
            .ok_or(PipelineSourceError::Missing("source.link_address"))?;
        Ok(PipelineSource {
            settings: Arc::new(Settings {
                name: config.kme_id.clone(),
                role,
                definition: src.definition.clone().unwrap_or_default(),
                device: src.device(),
                accepts,
                address,
                workers: src.workers,
            }),
            keys,
            listener,
            run: None,
            stopped: false,
            blocks: 0,
            bytes: 0,
            report: Arc::new(Mutex::new(PipelineReport {
                role,
                runs: 0,
                stats: PipelineStats::default(),
                auth_key_left: 0,
            })),
        })
    }
}

impl BlockSource for PipelineSource {
    fn start_session(&mut self, session: Session) {
        // The previous session's thread stops; its keys go with it.
        self.run = None;
        if self.stopped {
            // The node is shutting down: no new run (nor link key) for a
            // pairing that races with the shutdown.
            return;
        }
        self.blocks = 0;
        self.bytes = 0;
        let stop = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let ctx = SessionContext {
            settings: Arc::clone(&self.settings),
            keys: self.keys.clone(),
            listener: self.listener.clone(),
            session,
            stop: Arc::clone(&stop),
            queued: Arc::clone(&queued),
            out: tx,
            report: Arc::clone(&self.report),
        };
        thread::spawn(move || ctx.run());
        self.run = Some(SessionRun {
            stop,
            queued,
            keys: rx,
        });
    }

    fn poll_block(&mut self, _now: Instant) -> Option<(BlockId, SecretKey)> {
        let run = self.run.as_ref()?;
        let (block, key) = run.keys.try_recv().ok()?;
        run.queued.fetch_sub(1, Ordering::Relaxed);
        self.blocks += 1;
        self.bytes += key.len() as u64;
        Some((block, key))
    }

    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn low_water_bytes(&self) -> u64 {
        LOW_WATER_BYTES
    }

    fn pipeline(&self) -> Option<PipelineReport> {
        Some(lock(&self.report).clone())
    }

    fn stop(&mut self) {
        self.stopped = true;
        self.run = None;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The pre-shared secret of one pipeline run: [`RUN_SECRET_BYTES`] expanded
/// from the link key `key` (named `id`), bound to the session and the
/// run's block base. Both nodes compute it from what the greeting carried;
/// if the greeting was altered they compute different secrets and the
/// pipeline's authentication refuses every message.
pub(crate) fn run_secret(
    key: &SecretKey,
    id: &KeyId,
    session: Session,
    base: u64,
) -> Zeroizing<Vec<u8>> {
    let mut h = blake3::Hasher::new_derive_key("qkd kms-node 2026 pipeline pre-shared secret");
    // Link keys have a fixed length, so the fields cannot run into each other.
    debug_assert_eq!(key.len(), LINK_KEY_BYTES);
    h.update(key.expose_secret());
    h.update(id.as_bytes());
    h.update(&session.0.to_be_bytes());
    h.update(&base.to_be_bytes());
    let mut out = Zeroizing::new(vec![0u8; RUN_SECRET_BYTES]);
    h.finalize_xof().fill(&mut out);
    out
}

/// The simulated device's seed for a run: both nodes compute it, and each
/// run (session, base) plays a fresh quantum channel.
fn device_seed(seed: u64, session: Session, base: u64) -> u64 {
    let mut h = blake3::Hasher::new_derive_key("qkd kms-node 2026 simulated device seed");
    h.update(&seed.to_be_bytes());
    h.update(&session.0.to_be_bytes());
    h.update(&base.to_be_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_be_bytes(b)
}

fn role_code(role: Role) -> u8 {
    match role {
        Role::Alice => 0,
        Role::Bob => 1,
    }
}

/// One side of the greeting over TCP: [`welcome`] or [`greet`].
type GreetingSide = fn(
    TcpStream,
    &mut SharedLinkKeys,
    Role,
    Session,
    u64,
) -> Result<Established<TcpStream>, String>;

/// A run's connection with its agreed secret and block base.
pub(crate) struct Established<S> {
    pub(crate) stream: S,
    pub(crate) secret: Zeroizing<Vec<u8>>,
    pub(crate) secret_id: SecretId,
    pub(crate) base: u64,
}

/// The accepting side of the greeting: reads the peer's hello, checks it
/// belongs to `session` and the other role, draws a fresh link key and
/// answers with its ID and the block base.
pub(crate) fn welcome<S: Read + Write>(
    mut stream: S,
    keys: &mut SharedLinkKeys,
    role: Role,
    session: Session,
    next_block: u64,
) -> Result<Established<S>, String> {
    let mut hello = [0u8; HELLO_LEN];
    stream
        .read_exact(&mut hello)
        .map_err(|e| format!("no greeting from the peer's pipeline: {e}"))?;
    if &hello[..8] != MAGIC || hello[8] != VERSION || hello[9] != HELLO {
        return Err("the connection is not a kms-node pipeline of this version".into());
    }
    if hello[10] != role_code(role.peer()) {
        return Err(format!(
            "the peer's pipeline runs the same role ({role:?}): set source.role to alice on one node and bob on the other"
        ));
    }
    let peer_session = u64::from_be_bytes(hello[11..19].try_into().unwrap_or_default());
    if peer_session != session.0 {
        return Err("the peer's pipeline belongs to another session".into());
    }
    let peer_next = u64::from_be_bytes(hello[19..27].try_into().unwrap_or_default());
    let base = next_block.max(peer_next);
    let (id, key) = keys
        .next()
        .map_err(|e| format!("no link key for the pipeline: {e}"))?;
    let mut w = [0u8; WELCOME_LEN];
    w[..8].copy_from_slice(MAGIC);
    w[8] = VERSION;
    w[9] = WELCOME;
    w[10] = role_code(role);
    w[11..19].copy_from_slice(&base.to_be_bytes());
    w[19..35].copy_from_slice(id.as_bytes());
    stream
        .write_all(&w)
        .and_then(|()| stream.flush())
        .map_err(|e| format!("greeting the peer's pipeline failed: {e}"))?;
    Ok(Established {
        stream,
        secret: run_secret(&key, &id, session, base),
        secret_id: secret_id(&id),
        base,
    })
}

/// The connecting side of the greeting: sends the hello, reads the
/// welcome, takes the link key it names (once).
pub(crate) fn greet<S: Read + Write>(
    mut stream: S,
    keys: &mut SharedLinkKeys,
    role: Role,
    session: Session,
    next_block: u64,
) -> Result<Established<S>, String> {
    let mut h = [0u8; HELLO_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8] = VERSION;
    h[9] = HELLO;
    h[10] = role_code(role);
    h[11..19].copy_from_slice(&session.0.to_be_bytes());
    h[19..27].copy_from_slice(&next_block.to_be_bytes());
    stream
        .write_all(&h)
        .and_then(|()| stream.flush())
        .map_err(|e| format!("greeting the peer's pipeline failed: {e}"))?;
    let mut w = [0u8; WELCOME_LEN];
    stream.read_exact(&mut w).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            "the peer's pipeline closed the connection (it is not in this session yet)".to_owned()
        } else {
            format!("no greeting from the peer's pipeline: {e}")
        }
    })?;
    if &w[..8] != MAGIC || w[8] != VERSION || w[9] != WELCOME {
        return Err("the peer is not a kms-node pipeline of this version".into());
    }
    if w[10] != role_code(role.peer()) {
        return Err(format!(
            "the peer's pipeline runs the same role ({role:?}): set source.role to alice on one node and bob on the other"
        ));
    }
    let base = u64::from_be_bytes(w[11..19].try_into().unwrap_or_default());
    if base < next_block {
        return Err(format!(
            "the peer's pipeline proposed block {base}, below this node's next block {next_block}"
        ));
    }
    let mut idb = [0u8; 16];
    idb.copy_from_slice(&w[19..35]);
    let id = KeyId::from_bytes(idb);
    let key = keys
        .find(&id)
        .map_err(|e| format!("the peer's pipeline named a link key this node refuses: {e}"))?;
    keys.consume(&id)
        .map_err(|e| format!("the pipeline's link key could not be recorded: {e}"))?;
    Ok(Established {
        stream,
        secret: run_secret(&key, &id, session, base),
        secret_id: secret_id(&id),
        base,
    })
}

/// The pool's (public) name of a run's secret: the link key ID's first bytes.
fn secret_id(id: &KeyId) -> SecretId {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.as_bytes()[..8]);
    SecretId::new(u64::from_be_bytes(b))
}

/// What reaches a run's loop.
enum Input {
    Peer(Vec<u8>),
    PeerEnded(String),
    Frame(RawFrame),
    DeviceFailed(String),
    Work(WorkDone),
}

/// One session's thread.
struct SessionContext {
    settings: Arc<Settings>,
    keys: SharedLinkKeys,
    listener: Option<Arc<TcpListener>>,
    session: Session,
    stop: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    out: Sender<(BlockId, SecretKey)>,
    report: Arc<Mutex<PipelineReport>>,
}

impl SessionContext {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn run(mut self) {
        let mut next = self.session.first_block().get();
        let mut failures = 0u64;
        while !self.stopped() {
            let link = if self.settings.accepts {
                self.accept(next)
            } else {
                self.connect(next)
            };
            let link = match link {
                Ok(Some(l)) => l,
                Ok(None) => return,
                Err(e) => {
                    // Retried every RETRY: say it once in a while.
                    if failures.is_multiple_of(50) && !self.stopped() {
                        eprintln!(
                            "{}: pipeline connection: {e} (retrying)",
                            self.settings.name
                        );
                    }
                    failures += 1;
                    thread::sleep(RETRY);
                    continue;
                }
            };
            failures = 0;
            lock(&self.report).runs += 1;
            match self.run_pipeline(link, &mut next) {
                Ok(()) => return,
                Err(e) => {
                    if !self.stopped() {
                        eprintln!(
                            "{}: pipeline run ended: {e}; starting a new run from a fresh link key",
                            self.settings.name
                        );
                    }
                    thread::sleep(RETRY);
                }
            }
        }
    }

    /// Waits for the peer's connection of this session; `None` once stopped.
    fn accept(&mut self, next: u64) -> Result<Option<Established<TcpStream>>, String> {
        let Some(listener) = self.listener.clone() else {
            return Err("internal: the accepting node has no listener".into());
        };
        loop {
            if self.stopped() {
                return Ok(None);
            }
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                    return self.greeted(stream, next, welcome).map(Some);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL / 2),
                Err(e) => return Err(format!("accept failed: {e}")),
            }
        }
    }

    /// Runs one side of the greeting (`welcome` or `greet`) on a fresh
    /// connection, bounded by [`GREETING_TIMEOUT`].
    fn greeted(
        &mut self,
        stream: TcpStream,
        next: u64,
        side: GreetingSide,
    ) -> Result<Established<TcpStream>, String> {
        stream
            .set_read_timeout(Some(GREETING_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let est = side(
            stream,
            &mut self.keys,
            self.settings.role,
            self.session,
            next,
        )?;
        est.stream
            .set_read_timeout(None)
            .map_err(|e| e.to_string())?;
        Ok(est)
    }

    /// Connects to the peer's pipeline; `None` once stopped.
    fn connect(&mut self, next: u64) -> Result<Option<Established<TcpStream>>, String> {
        loop {
            if self.stopped() {
                return Ok(None);
            }
            match TcpStream::connect_timeout(&self.settings.address, Duration::from_secs(2)) {
                Ok(stream) => return self.greeted(stream, next, greet).map(Some),
                Err(_) => thread::sleep(RETRY),
            }
        }
    }

    /// Runs one pipeline over `link` until stopped (`Ok`) or broken.
    fn run_pipeline(&self, link: Established<TcpStream>, next: &mut u64) -> Result<(), String> {
        let Established {
            stream,
            secret,
            secret_id,
            base,
        } = link;
        let _ = stream.set_nodelay(true);
        let socket = stream.try_clone().map_err(|e| e.to_string())?;
        let result = self.drive(stream, secret, secret_id, base, next);
        // Ends the reader thread and tells the peer.
        let _ = socket.shutdown(Shutdown::Both);
        result
    }

    fn drive(
        &self,
        stream: TcpStream,
        secret: Zeroizing<Vec<u8>>,
        secret_id: SecretId,
        base: u64,
        next: &mut u64,
    ) -> Result<(), String> {
        let s = &self.settings;
        let mut socket = PeerSocket::new(stream, None).map_err(|e| e.to_string())?;
        let (tx, rx) = Inbox::<Input>::new(Some(socket.waker()));

        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *seed).map_err(|e| format!("no randomness: {e}"))?;
        let psk = PresharedSecret::new(secret_id, SecretKey::from_slice(&secret));
        drop(secret);
        let mut p = Pipeline::new(&s.definition, s.role, psk, *seed)
            .map_err(|e| format!("cannot start the pipeline: {e}"))?;

        // Privacy amplification on worker threads (they end with the run:
        // their queue's sender is dropped below).
        let work = if s.workers > 0 {
            let (work_tx, work_rx) = mpsc::channel::<WorkItem>();
            let work_rx = Arc::new(Mutex::new(work_rx));
            for _ in 0..s.workers {
                let rx = Arc::clone(&work_rx);
                let tx = tx.clone();
                thread::spawn(move || {
                    loop {
                        let item = lock(&rx).recv();
                        let Ok(item) = item else { return };
                        if tx.send(Input::Work(item.run())).is_err() {
                            return;
                        }
                    }
                });
            }
            Some(work_tx)
        } else {
            None
        };
        p.set_external_work(work.is_some());

        // The device: frames on credit, two ahead of the pipeline.
        let mut config = s.device.clone();
        config.seed = device_seed(config.seed, self.session, base);
        let mut device =
            SimulatedBb84::device(config, s.role).map_err(|e| format!("simulated device: {e}"))?;
        let (credit, credit_rx) = mpsc::channel::<()>();
        {
            let tx = tx.clone();
            thread::spawn(move || {
                for () in credit_rx {
                    let input = match device.next_frame() {
                        Ok(Some(frame)) => Input::Frame(frame),
                        Ok(None) => return,
                        Err(e) => Input::DeviceFailed(e.to_string()),
                    };
                    if tx.send(input).is_err() {
                        return;
                    }
                }
            });
        }
        for _ in 0..2 {
            let _ = credit.send(());
        }
        drop(tx);

        let mut ready: VecDeque<RawFrame> = VecDeque::new();
        let mut held: Option<Input> = None;
        let mut peer_ready = false;
        let mut refused = 0u32;
        let mut low_water_told = false;
        loop {
            if self.stopped() {
                return Ok(());
            }
            let now = Instant::now();
            loop {
                let mut moved = false;
                while !ready.is_empty()
                    && p.wants_frame()
                    && self.queued.load(Ordering::Relaxed) < MAX_QUEUED_BLOCKS
                {
                    let Some(frame) = ready.pop_front() else {
                        break;
                    };
                    let block = frame.block.get();
                    p.push_frame(now, frame)
                        .map_err(|e| format!("the device's frame {block}: {e}"))?;
                    *next = (*next).max(base.saturating_add(block).saturating_add(1));
                    let _ = credit.send(());
                    moved = true;
                }
                while let Some(d) = p.poll_transmit(now) {
                    socket
                        .send(&d)
                        .map_err(|e| format!("sending to the peer's pipeline failed: {e}"))?;
                    moved = true;
                }
                while let Some(item) = p.poll_work() {
                    match &work {
                        Some(w) => w
                            .send(item)
                            .map_err(|_| "internal: the worker threads have gone".to_owned())?,
                        None => p.complete_work(now, item.run()),
                    }
                    moved = true;
                }
                while let Some(event) = p.poll_event() {
                    moved = true;
                    match event {
                        PipelineEvent::FinalKey { block, key, .. } => {
                            if key.is_empty() {
                                continue;
                            }
                            let id = base.checked_add(block.get()).ok_or_else(|| {
                                "the session's block numbers are used up".to_owned()
                            })?;
                            self.queued.fetch_add(1, Ordering::Relaxed);
                            // The source has gone only when it stopped us.
                            let _ = self.out.send((BlockId::new(id), key));
                        }
                        PipelineEvent::PeerReady => peer_ready = true,
                        PipelineEvent::SaveDue => {
                            // A definition with manual checkpoints waits for
                            // a save. A node never resumes a pipeline (a
                            // restart starts a new session from a new link
                            // key), so the state is written nowhere.
                            let state = Zeroizing::new(
                                p.save_state().map_err(|e| format!("pipeline save: {e}"))?,
                            );
                            drop(state);
                        }
                        PipelineEvent::AuthLowWater { remaining_bits } if !low_water_told => {
                            low_water_told = true;
                            eprintln!(
                                "{}: the pipeline's authentication key runs low ({remaining_bits} bits left)",
                                s.name
                            );
                        }
                        // With no block in flight nothing will refill the
                        // pool: this run is over, and the next one starts
                        // from a fresh link key (the remedy the pipeline asks for).
                        PipelineEvent::AuthExhausted { remaining_bits }
                            if p.blocks_in_flight() == 0 =>
                        {
                            return Err(format!(
                                "the authentication key is used up ({remaining_bits} bits left) and no block in flight can refill it"
                            ));
                        }
                        PipelineEvent::DefinitionMismatch => {
                            return Err("the peer node runs another pipeline definition (give both nodes the same source.pipeline)".into());
                        }
                        PipelineEvent::FeedDiverged { count } => {
                            return Err(format!(
                                "the authentication pools were fed differently (deposit {count})"
                            ));
                        }
                        _ => {}
                    }
                }
                if !moved {
                    break;
                }
            }
            socket
                .flush()
                .map_err(|e| format!("sending to the peer's pipeline failed: {e}"))?;
            {
                let mut r = lock(&self.report);
                r.stats.clone_from(p.stats());
                r.auth_key_left = p.auth_key_left();
            }
            if let Some(input) = held.take() {
                Self::on_input(&mut p, input, peer_ready, &mut refused, &mut ready)?;
                continue;
            }
            let deadline = p.poll_timeout();
            let wait = deadline
                .map_or(POLL, |d| d.saturating_duration_since(now))
                .min(POLL);
            if let Some(input) = next_input(&mut socket, &rx, Some(wait))? {
                Self::on_input(&mut p, input, peer_ready, &mut refused, &mut ready)?;
                // The peer's datagrams and finished work that are already
                // here are handled before the next step (one step, one
                // write answers them all); anything else waits for it.
                for _ in 0..DRAIN_PER_STEP {
                    match next_input(&mut socket, &rx, None)? {
                        Some(input @ (Input::Peer(_) | Input::Work(_))) => {
                            Self::on_input(&mut p, input, peer_ready, &mut refused, &mut ready)?;
                        }
                        Some(other) => {
                            held = Some(other);
                            break;
                        }
                        None => break,
                    }
                }
            }
            let now = Instant::now();
            if p.poll_timeout().is_some_and(|d| d <= now) {
                p.handle_timeout(now);
            }
        }
    }

    /// Handles one input; `Err` ends the run.
    fn on_input(
        p: &mut Pipeline,
        input: Input,
        peer_ready: bool,
        refused: &mut u32,
        ready: &mut VecDeque<RawFrame>,
    ) -> Result<(), String> {
        let now = Instant::now();
        match input {
            Input::Peer(d) => {
                if p.handle_input(now, &d).is_err() && !peer_ready {
                    *refused += 1;
                    if *refused >= REFUSALS_BEFORE_READY {
                        return Err("the peer's pipeline messages do not authenticate (the nodes derived different secrets: an altered greeting, or another initial secret)".into());
                    }
                }
            }
            Input::PeerEnded(reason) => return Err(reason),
            Input::Frame(f) => ready.push_back(f),
            Input::DeviceFailed(e) => return Err(format!("the device failed: {e}")),
            Input::Work(done) => p.complete_work(now, done),
        }
        Ok(())
    }
}

/// Most inputs handled between two steps of the pipeline.
const DRAIN_PER_STEP: usize = 64;

/// The next input from the pipeline's connection or the inbox; with
/// `wait`, waits at most that long for one, without, takes what is there.
fn next_input(
    socket: &mut PeerSocket,
    inbox: &Receiver<Input>,
    wait: Option<Duration>,
) -> Result<Option<Input>, String> {
    let next = peer_socket::next_input(socket, inbox, wait)
        .map_err(|e| format!("waiting for the peer's pipeline failed: {e}"))?;
    Ok(next.map(|n| match n {
        Next::Inbox(i) => i,
        Next::Peer(Received::Datagram(d)) => Input::Peer(d),
        Next::Peer(Received::Closed) => {
            Input::PeerEnded("the peer's pipeline connection ended".into())
        }
        Next::Peer(Received::Failed(f)) => {
            Input::PeerEnded(format!("the peer's pipeline connection failed: {f}"))
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qkd_handshake::capability::Ownership;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "kms-node-pipeline-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("secret"), "5a".repeat(32)).unwrap();
        d
    }

    fn open(dir: &Path) -> (SharedLinkKeys, SharedLinkKeys) {
        let s = dir.join("secret");
        (
            SharedLinkKeys::open("l", &s, &dir.join("a.state"), Ownership::First).unwrap(),
            SharedLinkKeys::open("l", &s, &dir.join("b.state"), Ownership::Second).unwrap(),
        )
    }

    /// Both greetings over a loopback TCP pair, as the nodes run them.
    fn agree(
        a: &SharedLinkKeys,
        b: &SharedLinkKeys,
        session: Session,
        next: u64,
    ) -> (Established<TcpStream>, Established<TcpStream>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut bk = b.clone();
        let t = thread::spawn(move || {
            let s = TcpStream::connect(addr).unwrap();
            greet(s, &mut bk, Role::Bob, session, next).unwrap()
        });
        let (s, _) = l.accept().unwrap();
        let mut ak = a.clone();
        let ea = welcome(s, &mut ak, Role::Alice, session, next).unwrap();
        (ea, t.join().unwrap())
    }

    /// The first datagram an Alice pipeline sends (its sealed hello), from
    /// `secret` with a fixed seed.
    fn first_datagram(secret: &[u8], id: SecretId) -> Vec<u8> {
        let mut p = Pipeline::new(
            &PipelineDefinition::default(),
            Role::Alice,
            PresharedSecret::new(id, SecretKey::from_slice(secret)),
            [9; 32],
        )
        .unwrap();
        p.poll_transmit(Instant::now()).unwrap()
    }

    #[test]
    fn no_two_runs_authenticate_with_the_same_pads_even_across_restarts() {
        let dir = temp("pads");
        // The same session value every time: what keeps the secrets apart
        // must be the once-only link key, not the session.
        let session = Session(42);
        let mut secrets: Vec<(Zeroizing<Vec<u8>>, SecretId)> = Vec::new();
        for _restart in 0..2 {
            let (a, b) = open(&dir);
            for _run in 0..2 {
                let (ea, eb) = agree(&a, &b, session, session.first_block().get());
                assert_eq!(*ea.secret, *eb.secret, "the two ends must agree");
                assert_eq!(ea.base, eb.base);
                assert_eq!(ea.secret.len(), RUN_SECRET_BYTES);
                secrets.push((ea.secret, ea.secret_id));
            }
            // Both nodes stop (the link-key state files stay).
        }
        for i in 0..secrets.len() {
            for j in i + 1..secrets.len() {
                assert_ne!(
                    *secrets[i].0, *secrets[j].0,
                    "runs {i} and {j} share a secret"
                );
                // The pads themselves: the first sealed message differs.
                assert_ne!(
                    first_datagram(&secrets[i].0, secrets[i].1),
                    first_datagram(&secrets[j].0, secrets[j].1),
                    "runs {i} and {j} seal with the same pad"
                );
            }
        }
        // The check can fail: one secret twice seals the same way.
        assert_eq!(
            first_datagram(&secrets[0].0, secrets[0].1),
            first_datagram(&secrets[0].0, secrets[0].1)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_altered_or_mismatched_greeting_never_yields_a_shared_secret() {
        let dir = temp("greeting");
        let (a, b) = open(&dir);
        let key = SecretKey::from_slice(&[1u8; LINK_KEY_BYTES]);
        let id = KeyId::derive(b"x");
        let s = Session(5);
        assert_ne!(*run_secret(&key, &id, s, 10), *run_secret(&key, &id, s, 11));
        assert_ne!(
            *run_secret(&key, &id, s, 10),
            *run_secret(&key, &id, Session(6), 10)
        );
        // A hello of another session is refused before a link key is drawn.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut bk = b.clone();
        let t = thread::spawn(move || {
            let st = TcpStream::connect(addr).unwrap();
            greet(st, &mut bk, Role::Bob, Session(6), 1).err()
        });
        let (st, _) = l.accept().unwrap();
        let floors = a.lock().floors();
        let mut ak = a.clone();
        let e = welcome(st, &mut ak, Role::Alice, s, 1).err().unwrap();
        assert!(e.contains("another session"), "{e}");
        assert_eq!(a.lock().floors(), floors, "no link key drawn");
        assert!(t.join().unwrap().is_some());
        // Two Alices are refused.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut bk = b.clone();
        let t = thread::spawn(move || {
            let st = TcpStream::connect(addr).unwrap();
            greet(st, &mut bk, Role::Alice, s, 1).err()
        });
        let (st, _) = l.accept().unwrap();
        let mut ak = a.clone();
        let e = welcome(st, &mut ak, Role::Alice, s, 1).err().unwrap();
        assert!(e.contains("same role"), "{e}");
        let _ = t.join();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_second_sessions_pipeline_secret_comes_from_the_reserve() {
        let dir = temp("reserve");
        let (a, b) = open(&dir);
        // The first session of a new link: the reserve is empty, so the
        // run's link key is the initial secret's expansion.
        let s1 = Session(11);
        let first = s1.first_block();
        let (ea, eb) = agree(&a, &b, s1, first.get());
        assert_eq!(*ea.secret, *eb.secret);
        assert_eq!(a.lock().expansion_draws(), 1);
        // The session's final keys reach both stores through the reserve.
        for k in 0..16 {
            let key = crate::link_keys::tests::final_block(k, 4096);
            let block = BlockId::new(first.get() + k);
            let ra = a.lock().carve(first, block, &key).unwrap();
            let rb = b.lock().carve(first, block, &key).unwrap();
            assert_eq!(ra, rb);
        }
        let floors = (a.lock().floors(), b.lock().floors());
        // The next session's run: keyed by the reserve's first entry (the
        // first block of session 1, owned by the accepting node).
        let s2 = Session(12);
        let base = s2.first_block().get();
        let (ea, eb) = agree(&a, &b, s2, base);
        assert_eq!(*ea.secret, *eb.secret);
        let id = a.lock().reserve_key_id(first);
        let entry = SecretKey::from_slice(
            &crate::link_keys::tests::final_block(0, 4096).expose_secret()[..LINK_KEY_BYTES],
        );
        assert_eq!(
            *ea.secret,
            *run_secret(&entry, &id, s2, base),
            "the second session's pipeline secret is not the reserve's"
        );
        assert_eq!(ea.secret_id, secret_id(&id));
        assert_eq!((a.lock().floors(), b.lock().floors()), floors);
        assert_eq!(a.lock().expansion_draws(), 1, "the expansion was drawn");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_block_base_covers_what_either_node_has_seen() {
        let dir = temp("base");
        let (a, b) = open(&dir);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut bk = b.clone();
        let s = Session(3);
        let t = thread::spawn(move || {
            let st = TcpStream::connect(addr).unwrap();
            greet(st, &mut bk, Role::Bob, s, 500).unwrap().base
        });
        let (st, _) = l.accept().unwrap();
        let mut ak = a.clone();
        let ea = welcome(st, &mut ak, Role::Alice, s, 200).unwrap();
        assert_eq!(ea.base, 500);
        assert_eq!(t.join().unwrap(), 500);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The two nodes' sources in one process (the example configurations
    /// with free ports and small frames): both deliver the same blocks,
    /// and a second session starts a new run from a new link key.
    #[test]
    fn two_sources_deliver_the_same_final_keys_session_after_session() {
        let dir = temp("sources");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("kms-node");
        let ports: Vec<u16> = (0..2)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect::<Vec<_>>()
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let mut configs = Vec::new();
        for (file, state, listen, address) in [
            ("node-a.toml", "a.state", ports[0], ports[1]),
            ("node-b.toml", "b.state", ports[1], ports[0]),
        ] {
            let mut c = NodeConfig::load(&root.join(file)).unwrap();
            c.source.link_listen = Some(SocketAddr::from(([127, 0, 0, 1], listen)));
            c.source.link_address = Some(SocketAddr::from(([127, 0, 0, 1], address)));
            c.source.frame_slots = 1_000_000;
            c.peer.initial_secret_file = dir.join("secret");
            c.peer.link_state_file = dir.join(state);
            configs.push(c);
        }
        let keys: Vec<SharedLinkKeys> = configs
            .iter()
            .map(|c| SharedLinkKeys::open_for(c).unwrap())
            .collect();
        let mut a = PipelineSource::new(&configs[0], keys[0].clone()).unwrap();
        let mut b = PipelineSource::new(&configs[1], keys[1].clone()).unwrap();
        let mut firsts = Vec::new();
        for session in [Session::of(1, 2), Session::of(3, 4)] {
            a.start_session(session);
            b.start_session(session);
            let t0 = Instant::now();
            let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
            while got_a.len() < 2 || got_b.len() < 2 {
                assert!(t0.elapsed() < Duration::from_secs(120), "no final key");
                let now = Instant::now();
                got_a.extend(a.poll_block(now));
                got_b.extend(b.poll_block(now));
                thread::sleep(Duration::from_millis(10));
            }
            got_a.truncate(2);
            got_b.truncate(2);
            assert_eq!(got_a, got_b, "both nodes get the same blocks");
            assert!(got_a[0].0 >= session.first_block());
            assert!(got_a[0].0 < got_a[1].0);
            let report = a.pipeline().unwrap();
            assert_eq!(report.role, Role::Alice);
            assert!(report.stats.blocks_kept >= 2);
            firsts.push(got_a.remove(0));
        }
        assert_eq!(a.pipeline().unwrap().runs, 2);
        assert_ne!(firsts[0].0, firsts[1].0);
        assert_ne!(firsts[0].1, firsts[1].1);
        // Each run took its own link key: the acceptor drew indices 0 and 2.
        assert_eq!(keys[0].lock().floors()[0], 4);
        a.stop();
        b.stop();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
