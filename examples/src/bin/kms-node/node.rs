//! The node's core: the key store (a qkd-sync [`SyncNode`]) inside the
//! secured channel to the peer KME, the ETSI 014 handler ([`Kme`]), the
//! block source, and the threads that move the link's bytes and time.
//!
//! ```text
//!   SAE ──HTTPS──▶ http.rs ──Request──▶ Kme ──take/lookup──▶ SyncNode ◀── BlockSource
//!                     ▲                  │                      │  (blocks, both nodes)
//!                     └────Response──────┘        SecuredChannel (qkd-handshake)
//!                                                              │ TCP, u32-length frames
//!                                                              ▼
//!                                                        peer kms-node
//! ```
//!
//! Everything protocol-related sits in one [`State`] behind one mutex; the
//! HTTP tasks and the link threads hold it only for the length of one
//! machine call and its draining. The link's TCP connection carries
//! length-prefixed records; writes go through a queue to a writer thread,
//! so nothing blocks on a socket while holding the lock.
//!
//! A link that goes down (the connection broke, the handshake failed, the
//! peer stopped) keeps its [`SyncNode`]: [`SecuredChannel::into_inner`]
//! recovers it, and the next connection runs a fresh handshake keyed by a
//! fresh link key and carries the same sync session on (records lost in
//! the cut are retransmitted by the sync node). While the link is down,
//! `enc_keys` and `dec_keys` answer 503. A real restart of the peer shows
//! as a new peer epoch in the sync hello: pairing with it wipes this
//! node's store, as the restarted node's is empty, and a new session (and
//! pipeline run) begins.
//!
//! Before a final key block enters the store, the link's reserve takes its
//! share ([`crate::reserve`], durable before the rest is inserted).

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use qkd_core::machine::Machine;
use qkd_etsi014::{Kme, KmeConfig, Request, RequestId, Response};
use qkd_handshake::capability::{Capabilities, Ownership, StoreParams};
use qkd_handshake::channel::{ChannelConfig, ChannelEvent, SecuredChannel, Start};
use qkd_handshake::handshake::HandshakeConfig;
use qkd_keystore::{StoreConfig, StoreRole};
use qkd_sync::{Event as SyncEvent, SyncConfig, SyncNode};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::sync::oneshot;

use crate::config::NodeConfig;
use crate::fetched::{FetchedKeys, MAX_FETCHED, NodeKeys};
use crate::link_keys::SharedLinkKeys;
use crate::source::{BlockSource, Session};

/// Largest link frame accepted: a sync message plus the record's overhead.
const MAX_FRAME: usize = qkd_sync::message::MAX_MESSAGE_LEN + 8192;
/// How often the ticker runs timers and feeds blocks.
const TICK: Duration = Duration::from_millis(2);
/// How long the connecting node waits between attempts.
const RECONNECT: Duration = Duration::from_millis(200);

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum StartError {
    /// A configuration value the libraries refused.
    #[error("configuration: {0}")]
    Config(#[from] qkd_core::machine::ConfigError),
    /// A socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The system random generator failed.
    #[error("no randomness: {0}")]
    Random(getrandom::Error),
}

type Channel = SecuredChannel<SyncNode, SharedLinkKeys>;

/// The link: a node waiting for a connection, or a connection's channel.
enum Link {
    /// No connection: the node is unpaired and answers 503.
    Down(Box<SyncNode>),
    /// A connection (generation `generation`) and its writer queue.
    Up {
        channel: Box<Channel>,
        generation: u64,
        out: Sender<Vec<u8>>,
        socket: TcpStream,
    },
}

/// Counters for the demo and the logs.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// 2xx answers of the ETSI 014 handler.
    pub(crate) ok: AtomicU64,
    /// 4xx answers.
    pub(crate) client_errors: AtomicU64,
    /// 5xx answers.
    pub(crate) server_errors: AtomicU64,
    /// Link connections established (handshakes completed).
    pub(crate) handshakes: AtomicU64,
    /// Sessions (pairings, each with both stores wiped).
    pub(crate) sessions: AtomicU64,
}

/// Everything behind the node's lock.
struct State {
    link: Link,
    kme: Kme,
    waiters: HashMap<RequestId, oneshot::Sender<Response>>,
    source: Box<dyn BlockSource>,
    sync_config: SyncConfig,
    channel_config: ChannelConfig,
    start: Start,
    keys: SharedLinkKeys,
    rng: ChaCha20Rng,
    generation: u64,
    low_water: u64,
    counters: Arc<Counters>,
    /// The current session (both stores paired), for the reserve's rule.
    session: Option<Session>,
    /// IDs of keys fetched in full here (a second `dec_keys`: 400 at once).
    fetched: FetchedKeys,
}

/// A snapshot for status lines and the demo.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// Whether the stores are paired.
    pub(crate) paired: bool,
    /// The suite of the open channel.
    pub(crate) suite: Option<String>,
    /// The store's counters.
    pub(crate) store: qkd_keystore::StoreStats,
    /// Blocks the source delivered in this session.
    pub(crate) source_blocks: u64,
    /// Bytes the source delivered in this session.
    pub(crate) source_bytes: u64,
    /// Expansion link keys consumed below these indices (even, odd).
    pub(crate) link_key_floors: [u64; 2],
    /// The link's reserve of QKD key.
    pub(crate) reserve: crate::reserve::ReserveStats,
    /// The distillation pipeline's numbers (pipeline source only).
    pub(crate) pipeline: Option<crate::pipeline_source::PipelineReport>,
}

/// One KMS node (shared by the HTTP tasks and the link threads).
pub(crate) struct Node {
    name: String,
    state: Mutex<State>,
    next_request: AtomicU64,
    stop: AtomicBool,
    closing: AtomicBool,
    /// Counters.
    pub(crate) counters: Arc<Counters>,
}

impl Node {
    /// Builds the node of `config` with the block source `source` and the
    /// link keys `keys` (from [`SharedLinkKeys::open_for`], shared with the
    /// source); the link threads start with [`start_link`](Self::start_link).
    pub(crate) fn new(
        config: &NodeConfig,
        source: Box<dyn BlockSource>,
        keys: SharedLinkKeys,
    ) -> Result<Arc<Node>, StartError> {
        let accepts = config.accepts_link();
        let (role, ownership, start) = if accepts {
            (StoreRole::EvenChunks, Ownership::First, Start::Respond)
        } else {
            (StoreRole::OddChunks, Ownership::Second, Start::Initiate)
        };
        let link_name = config.link_name();
        let mut store = StoreConfig::new(link_name.clone(), role)
            .with_chunk_bytes(config.store.chunk_bytes)
            .with_capacity_bytes(config.store.capacity_bytes)
            .with_key_ttl(Duration::from_secs(config.store.key_ttl_s));
        store.max_keys_per_request = config.keys.max_per_request;
        let mut sync_config = SyncConfig::new(store);
        sync_config.max_message_len = qkd_sync::message::MAX_MESSAGE_LEN;
        sync_config.window = 256;
        sync_config.lookup_wait = Duration::from_millis(config.keys.dec_wait_ms);
        sync_config.validate()?;
        let caps = Capabilities::new(StoreParams {
            chunk_bytes: config.store.chunk_bytes,
            min_key_bits: config.keys.min_size,
            max_key_bits: config.keys.max_size,
            ownership,
        })
        .with_suites(&config.peer.suites);
        let channel_config = ChannelConfig::new(HandshakeConfig::new(caps));
        channel_config.validate()?;
        let mut kme_config = KmeConfig::new(config.kme_id.clone(), config.peer.kme_id.clone());
        kme_config.key_size = config.keys.default_size;
        kme_config.min_key_size = config.keys.min_size;
        kme_config.max_key_size = config.keys.max_size;
        kme_config.max_keys_per_request = config.keys.max_per_request;
        kme_config.max_sae_id_count = config.keys.max_additional_slaves;
        kme_config.max_body_bytes = config.keys.max_body_bytes;
        kme_config.dec_keys_wait = Duration::from_millis(config.keys.dec_wait_ms);
        kme_config.max_waiting = config.keys.max_waiting;
        let kme = Kme::new(kme_config)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(StartError::Random)?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let node = SyncNode::new(sync_config.clone(), &mut rng)?;
        let low_water = source.low_water_bytes();
        let counters = Arc::new(Counters::default());
        Ok(Arc::new(Node {
            name: config.kme_id.clone(),
            state: Mutex::new(State {
                link: Link::Down(Box::new(node)),
                kme,
                waiters: HashMap::new(),
                source,
                sync_config,
                channel_config,
                start,
                keys,
                rng,
                generation: 0,
                low_water,
                counters: counters.clone(),
                session: None,
                fetched: FetchedKeys::new(MAX_FETCHED),
            }),
            next_request: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            counters,
        }))
    }

    /// The KME ID.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Handles one API request; the response comes through the receiver
    /// (at once, or when a waiting `dec_keys` is answered).
    pub(crate) fn submit(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
        caller: &str,
    ) -> (RequestId, oneshot::Receiver<Response>) {
        let id = RequestId(self.next_request.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        let mut st = self.lock();
        st.waiters.insert(id, tx);
        let State {
            link, kme, fetched, ..
        } = &mut *st;
        let link_down = link.is_down();
        kme.handle_request(
            now,
            Request {
                id,
                method,
                path,
                query,
                body,
                caller,
            },
            &mut NodeKeys {
                node: link.node_mut(),
                fetched,
                link_down,
            },
        );
        st.after(now);
        (id, rx)
    }

    /// Forgets a request whose client went away.
    pub(crate) fn cancel(&self, id: RequestId) {
        let mut st = self.lock();
        st.kme.cancel(id);
        st.waiters.remove(&id);
    }

    /// A snapshot of the counters.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        let (paired, suite, store) = match &st.link {
            // A node kept across a cut may be paired, but nothing flows.
            Link::Down(n) => (false, None, n.store().stats()),
            Link::Up { channel, .. } => (
                channel.is_open() && channel.inner().is_paired(),
                channel.suite().map(|s| s.to_string()),
                channel.inner().store().stats(),
            ),
        };
        // One guard: two in the literal would live to its end together.
        let (link_key_floors, reserve) = {
            let keys = st.keys.lock();
            (keys.floors(), keys.reserve_stats())
        };
        Snapshot {
            paired,
            suite,
            store,
            source_blocks: st.source.blocks(),
            source_bytes: st.source.bytes(),
            link_key_floors,
            reserve,
            pipeline: st.source.pipeline(),
        }
    }

    /// Whether the node is paired with its peer and holds fresh key.
    pub(crate) fn is_ready(&self) -> bool {
        let s = self.snapshot();
        s.paired && s.store.fresh_bytes > 0
    }

    /// Starts the link threads: the listener or the connector, and the
    /// ticker. Returns their handles.
    pub(crate) fn start_link(
        self: &Arc<Self>,
        config: &NodeConfig,
    ) -> Result<Vec<thread::JoinHandle<()>>, StartError> {
        let mut threads = Vec::new();
        if config.accepts_link() {
            let addr = config.peer.link_listen;
            let listener =
                TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, source })?;
            listener
                .set_nonblocking(true)
                .map_err(|source| StartError::Bind { addr, source })?;
            let node = self.clone();
            threads.push(thread::spawn(move || node.accept_loop(&listener)));
        } else {
            let node = self.clone();
            let addr = config.peer.link_address;
            threads.push(thread::spawn(move || node.connect_loop(addr)));
        }
        let node = self.clone();
        threads.push(thread::spawn(move || node.tick_loop()));
        Ok(threads)
    }

    /// The first step of a shutdown: the link's end is no longer news
    /// (nothing is logged about it) and the block source stops. The demo
    /// calls it on both nodes before stopping either, so neither reports
    /// the other's orderly stop as a failure.
    pub(crate) fn quiesce(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.lock().source.stop();
    }

    /// Stops the link: an orderly close of the channel, then the threads end.
    pub(crate) fn shutdown(&self) {
        self.quiesce();
        {
            let mut st = self.lock();
            let now = Instant::now();
            if let Link::Up { channel, .. } = &mut st.link {
                channel.close(now);
            }
            st.after(now);
        }
        // Give the close record a moment to leave.
        thread::sleep(Duration::from_millis(50));
        self.stop.store(true, Ordering::Relaxed);
        let st = self.lock();
        if let Link::Up { socket, .. } = &st.link {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn accept_loop(self: Arc<Self>, listener: &TcpListener) {
        while !self.stopped() {
            match listener.accept() {
                Ok((stream, from)) => {
                    // Shutting down: no new pairing (it would only draw
                    // link keys and start a session to be torn down).
                    if self.closing.load(Ordering::Relaxed) {
                        let _ = stream.shutdown(Shutdown::Both);
                        continue;
                    }
                    // One link at a time: a second connection while one is
                    // up is refused (so a stranger cannot displace the peer).
                    if self.link_is_up() {
                        eprintln!(
                            "{}: link connection from {from} refused: link already up",
                            self.name
                        );
                        let _ = stream.shutdown(Shutdown::Both);
                        continue;
                    }
                    let _ = stream.set_nonblocking(false);
                    self.run_connection(stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    eprintln!("{}: link accept failed: {e}", self.name);
                    thread::sleep(RECONNECT);
                }
            }
        }
    }

    fn connect_loop(self: Arc<Self>, addr: std::net::SocketAddr) {
        while !self.stopped() {
            if self.link_is_up() || self.closing.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(stream) => self.run_connection(stream),
                Err(_) => thread::sleep(RECONNECT),
            }
        }
    }

    fn link_is_up(&self) -> bool {
        matches!(self.lock().link, Link::Up { .. })
    }

    /// Starts a channel on `stream` and a reader thread for it.
    fn run_connection(self: &Arc<Self>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let (Ok(write_half), Ok(socket)) = (stream.try_clone(), stream.try_clone()) else {
            return;
        };
        let (tx, rx) = channel();
        thread::spawn(move || writer(write_half, &rx));
        let generation = {
            let mut st = self.lock();
            let now = Instant::now();
            st.generation += 1;
            let generation = st.generation;
            let node = st.take_node();
            let State {
                channel_config,
                start,
                keys,
                rng,
                ..
            } = &mut *st;
            match SecuredChannel::new(
                channel_config.clone(),
                *start,
                keys.clone(),
                *node,
                rng,
                now,
            ) {
                Ok(channel) => {
                    st.link = Link::Up {
                        channel: Box::new(channel),
                        generation,
                        out: tx,
                        socket,
                    };
                }
                Err(e) => {
                    eprintln!("{}: cannot start the secured channel: {e}", self.name);
                    st.link_down(now);
                    return;
                }
            }
            st.after(now);
            generation
        };
        let node = self.clone();
        thread::spawn(move || node.read_loop(stream, generation));
    }

    fn read_loop(self: Arc<Self>, stream: TcpStream, generation: u64) {
        let mut r = BufReader::with_capacity(1 << 16, stream);
        let mut len = [0u8; 4];
        let mut buf = Vec::new();
        let reason = loop {
            if self.stopped() {
                break "shutting down".to_owned();
            }
            if let Err(e) = r.read_exact(&mut len) {
                break format!("connection closed ({e})");
            }
            let n = u32::from_be_bytes(len) as usize;
            if n > MAX_FRAME {
                break format!("frame of {n} bytes is over the limit");
            }
            buf.resize(n, 0);
            if let Err(e) = r.read_exact(&mut buf) {
                break format!("connection closed ({e})");
            }
            let mut st = self.lock();
            let now = Instant::now();
            let Link::Up {
                channel,
                generation: g,
                ..
            } = &mut st.link
            else {
                return;
            };
            if *g != generation {
                return;
            }
            if let Err(e) = channel.handle_input(now, &buf) {
                eprintln!("{}: link message rejected: {e}", self.name);
            }
            if let Some(failure) = st.after(now) {
                break failure;
            }
        };
        let mut st = self.lock();
        if matches!(st.link, Link::Up { generation: g, .. } if g == generation) {
            if !self.closing.load(Ordering::Relaxed) {
                eprintln!("{}: link down: {reason}", self.name);
            }
            st.link_down(Instant::now());
        }
    }

    fn tick_loop(self: Arc<Self>) {
        while !self.stopped() {
            thread::sleep(TICK);
            let mut st = self.lock();
            let now = Instant::now();
            let State {
                link, kme, fetched, ..
            } = &mut *st;
            let link_down = link.is_down();
            match link {
                Link::Down(node) => {
                    if node.poll_timeout().is_some_and(|t| t <= now) {
                        node.handle_timeout(now);
                    }
                }
                Link::Up { channel, .. } => {
                    if channel.poll_timeout().is_some_and(|t| t <= now) {
                        channel.handle_timeout(now);
                    }
                }
            }
            if kme.poll_timeout().is_some_and(|t| t <= now) {
                kme.handle_timeout(
                    now,
                    &mut NodeKeys {
                        node: link.node_mut(),
                        fetched,
                        link_down,
                    },
                );
            }
            st.feed(now);
            if let Some(reason) = st.after(now) {
                if !self.closing.load(Ordering::Relaxed) {
                    eprintln!("{}: link down: {reason}", self.name);
                }
                st.link_down(now);
            }
        }
    }
}

impl Link {
    fn is_down(&self) -> bool {
        matches!(self, Link::Down(_))
    }

    fn node_mut(&mut self) -> &mut SyncNode {
        match self {
            Link::Down(n) => n,
            Link::Up { channel, .. } => channel.inner_mut(),
        }
    }
}

impl State {
    /// A new incarnation of the sync node (new epoch, empty store).
    fn fresh_node(&mut self) -> Box<SyncNode> {
        // The configuration was validated when the node was built.
        Box::new(
            SyncNode::new(self.sync_config.clone(), &mut self.rng)
                .unwrap_or_else(|e| unreachable!("validated sync configuration: {e}")),
        )
    }

    /// The node for a new connection: the one the link kept when it went
    /// down (its session goes on if the peer's did; a restarted peer's new
    /// epoch wipes it when they pair).
    fn take_node(&mut self) -> Box<SyncNode> {
        let placeholder = self.fresh_node();
        match std::mem::replace(&mut self.link, Link::Down(placeholder)) {
            Link::Down(node) => node,
            // A connection replaces the one before it: keep its node too.
            Link::Up {
                channel, socket, ..
            } => {
                let _ = socket.shutdown(Shutdown::Both);
                Box::new(channel.into_inner().0)
            }
        }
    }

    /// Drops the connection and keeps its sync node for the next one
    /// (503 meanwhile).
    fn link_down(&mut self, now: Instant) {
        let node = self.take_node();
        self.link = Link::Down(node);
        self.after(now);
    }

    /// Feeds blocks from the source while the node is paired and either
    /// the peer announced blocks this node has not stored yet, or it holds
    /// less than the low-water mark of fresh and pending key.
    fn feed(&mut self, now: Instant) {
        let State {
            link,
            source,
            low_water,
            keys,
            session,
            ..
        } = self;
        let Link::Up { channel, .. } = link else {
            return;
        };
        // A one-time-pad channel waiting for pad: take blocks even with the
        // store above its low water, since only carving them refills the
        // link reserve (every RESERVE_EVERY-th block gives a pad key).
        let starved = channel.is_waiting_for_pad();
        let node = channel.inner_mut();
        for _ in 0..4 {
            if !node.is_paired() {
                return;
            }
            // Catch up with blocks the peer stored already (their keys may
            // be asked for here), else keep a few blocks ahead of demand.
            let s = node.store().stats();
            if node.store().peer_blocks_ahead() == 0
                && s.fresh_bytes + s.pending_bytes >= *low_water
                && !starved
            {
                return;
            }
            let Some((block, key)) = source.poll_block(now) else {
                return;
            };
            // The reserve's share first, durably; the store gets the rest.
            let key = match session.map(|s| keys.lock().carve(s.first_block(), block, &key)) {
                Some(Ok(Some(rest))) => rest,
                Some(Ok(None)) | None => key,
                Some(Err(e)) => {
                    eprintln!(
                        "block {block} discarded: the link reserve could not be written: {e}"
                    );
                    let _ = node.discard_block(block);
                    continue;
                }
            };
            if let Err(e) = node.insert_block(now, block, key) {
                eprintln!("block {block} refused by the store: {e}");
                return;
            }
        }
    }

    /// Drains the machines after a call: the channel's records to the
    /// writer, its events to the handler and the source, the handler's
    /// responses to their requests. Returns why the link failed, if it did.
    fn after(&mut self, now: Instant) -> Option<String> {
        let mut failure = None;
        let State {
            link,
            kme,
            source,
            counters,
            waiters,
            fetched,
            session,
            ..
        } = self;
        match link {
            Link::Down(node) => {
                // Nothing to send to; the events only matter to the handler.
                while node.poll_transmit(now).is_some() {}
                while let Some(ev) = node.poll_event() {
                    sync_event(kme, now, &ev, node, fetched, true);
                }
            }
            Link::Up { channel, out, .. } => {
                let mut frames = Vec::new();
                while let Some(m) = channel.poll_transmit(now) {
                    frames.extend_from_slice(
                        &u32::try_from(m.len()).unwrap_or(u32::MAX).to_be_bytes(),
                    );
                    frames.extend_from_slice(&m);
                }
                if !frames.is_empty() {
                    // The writer is gone only when the connection is.
                    let _ = out.send(frames);
                }
                let mut events = Vec::new();
                while let Some(ev) = channel.poll_event() {
                    events.push(ev);
                }
                for ev in events {
                    match ev {
                        ChannelEvent::Established { .. } => {
                            counters.handshakes.fetch_add(1, Ordering::Relaxed);
                        }
                        ChannelEvent::Inner(ev) => {
                            let node = channel.inner_mut();
                            if let SyncEvent::Paired { peer_epoch, .. } = ev {
                                counters.sessions.fetch_add(1, Ordering::Relaxed);
                                let s = Session::of(node.epoch(), peer_epoch);
                                *session = Some(s);
                                source.start_session(s);
                            }
                            if let SyncEvent::PeerMisbehaved(e) = &ev {
                                eprintln!("peer misbehaved: {e}");
                            }
                            sync_event(kme, now, &ev, node, fetched, false);
                        }
                        ChannelEvent::Failed(e) => {
                            failure = Some(format!("secured channel failed: {e}"))
                        }
                        ChannelEvent::Closed => failure = Some("closed by the peer".to_owned()),
                        _ => {}
                    }
                }
                // Records the events above made the node queue.
                let mut frames = Vec::new();
                while let Some(m) = channel.poll_transmit(now) {
                    frames.extend_from_slice(
                        &u32::try_from(m.len()).unwrap_or(u32::MAX).to_be_bytes(),
                    );
                    frames.extend_from_slice(&m);
                }
                if !frames.is_empty() {
                    let _ = out.send(frames);
                }
            }
        }
        while let Some(r) = kme.poll_response() {
            match r.status() {
                200..=299 => counters.ok.fetch_add(1, Ordering::Relaxed),
                400..=499 => counters.client_errors.fetch_add(1, Ordering::Relaxed),
                _ => counters.server_errors.fetch_add(1, Ordering::Relaxed),
            };
            if let Some(tx) = waiters.remove(&r.request()) {
                // The client may have gone; its response is dropped (zeroized).
                let _ = tx.send(r);
            }
        }
        failure
    }
}

/// Hands a sync event to the handler: key arrivals and ended lookups
/// answer waiting `dec_keys` requests.
fn sync_event(
    kme: &mut Kme,
    now: Instant,
    ev: &SyncEvent,
    node: &mut SyncNode,
    fetched: &mut FetchedKeys,
    link_down: bool,
) {
    let mut keys = NodeKeys {
        node,
        fetched,
        link_down,
    };
    match ev {
        SyncEvent::KeyArrived { id } => kme.handle_arrival(now, id, &mut keys),
        SyncEvent::LookupTimedOut { id } => kme.handle_wait_ended(now, id, &mut keys),
        _ => {}
    }
}

/// Writes the queued frames of one connection in order.
fn writer(mut stream: TcpStream, queue: &Receiver<Vec<u8>>) {
    for buf in queue {
        if stream.write_all(&buf).is_err() {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
}
