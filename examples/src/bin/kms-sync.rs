//! `kms-sync`: two key stores kept in step by qkd-sync over loopback TCP.
//!
//! Node A (even chunks) listens, node B (odd chunks) connects. A feeder
//! thread plays the post-processing pipeline and inserts the same final key
//! blocks into both. Several application threads on each side take fresh
//! keys (ETSI 014 `enc_keys`); every key taken on one side is looked up by
//! ID on the other (`dec_keys`) by a slave thread and compared byte for byte.
//!
//! The last line is `keys/s: N  matched: N  collisions: N`, where a
//! collision is a key ID handed out fresh on both sides or a matched pair
//! whose bytes differ; the exit status is non-zero if there was one.
//!
//! The sync messages run inside a qkd-handshake secured channel
//! (`--channel QKD_AES_256_GCM_BLAKE3`, the default, or `QKD_OTP_WC_POLYVAL`),
//! keyed by a simulated QKD link's key material; `--channel plain` runs them
//! over bare TCP for comparison.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::{HashSet, VecDeque};
use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use clap::builder::RangedU64ValueParser;
use qkd_core::machine::Machine;
use qkd_core::{BlockId, KeyId, SecretKey};
use qkd_handshake::capability::{Capabilities, CipherSuite, Ownership, StoreParams};
use qkd_handshake::channel::{ChannelConfig, ChannelEvent, SecuredChannel, Start};
use qkd_handshake::handshake::HandshakeConfig;
use qkd_handshake::psk::SimulatedLink;
use qkd_keystore::{Binding, StoreConfig, StoreRole};
use qkd_sync::{Lookup, SyncConfig, SyncNode};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// Two KMS nodes keeping their key stores in step with qkd-sync over loopback TCP.
///
/// Node A listens, node B connects. A feeder thread plays the
/// post-processing pipeline and inserts the same final key blocks into
/// both. Application threads on each side take fresh keys (ETSI 014
/// `enc_keys`); every key taken on one side is looked up by ID on the other
/// (`dec_keys`) and compared byte for byte.
///
/// The last line is `keys/s: N  matched: N  collisions: N`, where a
/// collision is a key ID handed out fresh on both sides or a matched pair
/// whose bytes differ. Exit status: 0 when keys were taken and every one was
/// matched on the other side without a collision; 1 with a collision, an
/// unmatched key, no key taken at all, a failed thread or another failure;
/// 2 for a bad flag value.
#[derive(Parser, Debug)]
#[command(name = "kms-sync", version)]
struct Args {
    /// How long the application threads take keys, in seconds (0.01 to 86400).
    #[arg(long, allow_negative_numbers = true, default_value_t = 3.0, value_parser = seconds)]
    seconds: f64,
    /// Key size in bits: a multiple of 8 from 8 to 8192 (the store's chunk).
    #[arg(long, allow_negative_numbers = true, default_value_t = 256, value_parser = key_bits)]
    key_bits: usize,
    /// Keys per take request, 1 to 10 000 (the store's limit per request).
    #[arg(long, allow_negative_numbers = true, default_value_t = 64, value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_BATCH))]
    batch: usize,
    /// Application threads taking keys on each side, 1 to 64.
    #[arg(long, allow_negative_numbers = true, default_value_t = 2, value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_THREADS))]
    threads: usize,
    /// Size of each final key block fed to both nodes, in bytes: at least one
    /// key (--key-bits / 8), at most 16 MiB.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1 << 20, value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_BLOCK_BYTES))]
    block_bytes: usize,
    /// Seed of the simulated pipeline's key material.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1)]
    seed: u64,
    /// How the sync messages travel: inside a secured channel with the suite
    /// QKD_AES_256_GCM_BLAKE3 or QKD_OTP_WC_POLYVAL, or `plain` TCP.
    #[arg(long, default_value = "QKD_AES_256_GCM_BLAKE3", value_parser = channel_kind)]
    channel: ChannelKind,
}

/// What `--channel` selects: a cipher suite, or none (plain TCP).
#[derive(Clone, Copy, Debug)]
struct ChannelKind(Option<CipherSuite>);

/// Parses `--channel`: a suite's registry name, or `plain` (no channel).
fn channel_kind(s: &str) -> Result<ChannelKind, String> {
    if s == "plain" {
        return Ok(ChannelKind(None));
    }
    CipherSuite::from_name(s)
        .map(|s| ChannelKind(Some(s)))
        .ok_or_else(|| {
            format!(
                "must be {}, {} or plain",
                CipherSuite::Aes256GcmBlake3,
                CipherSuite::OtpWegmanCarter
            )
        })
}

/// Bytes of each key of the simulated QKD link that keys the channel (the
/// handshake PSK, AES rekeys, one-time pads).
const LINK_KEY_BYTES: usize = 1024;

/// A node's connection: the sync machine alone, or inside a secured channel.
enum Conn {
    Plain(Box<SyncNode>),
    Secured(Box<SecuredChannel<SyncNode, SimulatedLink>>),
}

impl Conn {
    fn node(&mut self) -> &mut SyncNode {
        match self {
            Conn::Plain(n) => n,
            Conn::Secured(c) => c.inner_mut(),
        }
    }

    fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), String> {
        match self {
            Conn::Plain(n) => n.handle_input(now, bytes).map_err(|e| e.to_string()),
            Conn::Secured(c) => c.handle_input(now, bytes).map_err(|e| e.to_string()),
        }
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        match self {
            Conn::Plain(n) => n.poll_transmit(now),
            Conn::Secured(c) => c.poll_transmit(now),
        }
    }

    /// Drains the events; returns a channel failure, if one happened.
    fn drain_events(&mut self) -> Option<String> {
        let mut failure = None;
        match self {
            Conn::Plain(n) => while n.poll_event().is_some() {},
            Conn::Secured(c) => {
                while let Some(e) = c.poll_event() {
                    if let ChannelEvent::Failed(e) = e {
                        failure = Some(e.to_string());
                    }
                }
            }
        }
        failure
    }

    fn tick(&mut self, now: Instant) {
        let due = match self {
            Conn::Plain(n) => n.poll_timeout(),
            Conn::Secured(c) => c.poll_timeout(),
        };
        if due.is_some_and(|t| t <= now) {
            match self {
                Conn::Plain(n) => n.handle_timeout(now),
                Conn::Secured(c) => c.handle_timeout(now),
            }
        }
    }
}

/// Longest `--seconds`: a day.
const MAX_SECONDS: f64 = 86_400.0;
/// Shortest `--seconds`.
const MIN_SECONDS: f64 = 0.01;
/// Most `--batch`: the store's default `max_keys_per_request`.
const MAX_BATCH: u64 = 10_000;
/// Most `--threads` per side.
const MAX_THREADS: u64 = 64;
/// Largest `--block-bytes`: the feeder keeps up to five blocks per node, well
/// inside the store's 256 MiB.
const MAX_BLOCK_BYTES: u64 = 16 << 20;
/// Largest `--key-bits`: one 1024-byte chunk of the store.
const MAX_KEY_BITS: usize = 8192;

/// Parses `--seconds`: finite, in `MIN_SECONDS..=MAX_SECONDS`.
fn seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(t) if (MIN_SECONDS..=MAX_SECONDS).contains(&t) => Ok(t),
        Ok(t) if t.is_finite() => Err(format!(
            "must be between {MIN_SECONDS} and {MAX_SECONDS} seconds"
        )),
        Ok(_) => Err("must be a finite number".into()),
        Err(_) => Err("must be a number".into()),
    }
}

/// Parses `--key-bits`: a multiple of 8 in `8..=MAX_KEY_BITS`.
fn key_bits(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(b) if b > 0 && b.is_multiple_of(8) && b <= MAX_KEY_BITS => Ok(b),
        _ => Err(format!("must be a multiple of 8 from 8 to {MAX_KEY_BITS}")),
    }
}

/// One node: the protocol machine, the queue to its socket's writer thread,
/// and the socket (to shut it down).
struct Side {
    name: &'static str,
    node: Mutex<Conn>,
    out: Sender<Vec<u8>>,
    socket: TcpStream,
}

/// Writes what a node queued, in queue order. The queue is filled under the
/// node lock, so records reach the peer in the order they were sealed (the
/// secured channel's replay window and one-time pads expect that), and the
/// socket write happens outside the node lock, so that two nodes writing to
/// each other cannot deadlock.
fn writer(mut stream: TcpStream, queue: Receiver<Vec<u8>>) {
    for buf in queue {
        // A closed peer at shutdown is not an error worth reporting.
        if stream.write_all(&buf).is_err() {
            return;
        }
    }
}

impl Side {
    /// Runs `f` on the node, then queues what it wants to send.
    fn with<T>(&self, f: impl FnOnce(&mut SyncNode, Instant) -> T) -> T {
        self.with_conn(|conn, now| f(conn.node(), now))
    }

    /// As [`with`](Self::with), on the connection (channel or plain).
    fn with_conn<T>(&self, f: impl FnOnce(&mut Conn, Instant) -> T) -> T {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut conn = self.node.lock().expect("node lock");
        let r = f(&mut conn, now);
        {
            while let Some(m) = conn.poll_transmit(now) {
                out.push(m);
            }
            if let Some(e) = conn.drain_events() {
                eprintln!("{}: secured channel failed: {e}", self.name);
            }
            if !out.is_empty() {
                let mut buf = Vec::with_capacity(out.iter().map(|m| m.len() + 4).sum());
                for m in &out {
                    buf.extend_from_slice(&(m.len() as u32).to_be_bytes());
                    buf.extend_from_slice(m);
                }
                // The writer is gone only at shutdown.
                let _ = self.out.send(buf);
            }
        }
        r
    }
}

fn reader(side: Arc<Side>, stream: TcpStream, stop: Arc<AtomicBool>) {
    let mut r = BufReader::with_capacity(1 << 20, stream);
    let mut len = [0u8; 4];
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if r.read_exact(&mut len).is_err() {
            return;
        }
        let n = u32::from_be_bytes(len) as usize;
        // A record adds its header, pad segments and tag to the message.
        if n > qkd_sync::message::MAX_MESSAGE_LEN + 8192 {
            eprintln!("{}: oversized frame", side.name);
            return;
        }
        buf.resize(n, 0);
        if r.read_exact(&mut buf).is_err() {
            return;
        }
        side.with_conn(|conn, now| {
            if let Err(e) = conn.handle_input(now, &buf) {
                eprintln!("{}: rejected message: {e}", side.name);
            }
        });
    }
}

fn ticker(side: Arc<Side>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(2));
        side.with_conn(|conn, now| conn.tick(now));
    }
}

/// Shared tallies.
#[derive(Default)]
struct Tally {
    taken: AtomicU64,
    matched: AtomicU64,
    collisions: AtomicU64,
    fresh_ids: Mutex<HashSet<KeyId>>,
}

fn taker(
    side: Arc<Side>,
    binding: Arc<Binding>,
    args: Arc<Args>,
    tally: Arc<Tally>,
    to_peer: Sender<(KeyId, SecretKey)>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let keys = side.with(|node, _| node.take(args.batch, args.key_bits, &binding));
        let Ok(keys) = keys else {
            thread::sleep(Duration::from_micros(200));
            continue;
        };
        {
            let mut ids = tally.fresh_ids.lock().expect("tally lock");
            for (id, _) in &keys {
                if !ids.insert(*id) {
                    eprintln!("collision: key {id} handed out fresh twice");
                    tally.collisions.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tally.taken.fetch_add(keys.len() as u64, Ordering::Relaxed);
        for k in keys {
            if to_peer.send(k).is_err() {
                return;
            }
        }
    }
}

/// The slave application on `side`: looks up every key the peer handed out.
fn matcher(
    side: Arc<Side>,
    slave: &'static str,
    from_peer: Receiver<(KeyId, SecretKey)>,
    tally: Arc<Tally>,
    done: Arc<AtomicBool>,
) {
    let mut pending: VecDeque<(KeyId, SecretKey)> = VecDeque::new();
    loop {
        // Read the end flag before draining the queue: every key was sent
        // before the flag was set (Release/Acquire), so a drain that follows
        // a `true` sees them all. Read after the drain, the flag could turn
        // true between the two and the keys sent in between would be lost.
        let finishing = done.load(Ordering::Acquire);
        let mut got_any = false;
        while let Ok(k) = from_peer.try_recv() {
            pending.push_back(k);
            got_any = true;
            if pending.len() >= 4096 {
                break;
            }
        }
        let batch: Vec<_> = pending.drain(..pending.len().min(4096)).collect();
        let results = side.with(|node, now| {
            batch
                .iter()
                .map(|(id, _)| node.lookup(now, id, slave))
                .collect::<Vec<_>>()
        });
        let mut progressed = false;
        for ((id, key), r) in batch.into_iter().zip(results) {
            match r {
                Ok(Lookup::Ready(copy)) => {
                    progressed = true;
                    if copy == key {
                        tally.matched.fetch_add(1, Ordering::Relaxed);
                    } else {
                        eprintln!("collision: key {id} differs between the nodes");
                        tally.collisions.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Lookup::Pending) | Err(_) => pending.push_back((id, key)),
            }
        }
        if finishing && pending.is_empty() && !got_any {
            return;
        }
        if !progressed && !got_any {
            thread::sleep(Duration::from_micros(300));
        }
    }
}

fn feeder(a: Arc<Side>, b: Arc<Side>, args: Arc<Args>, stop: Arc<AtomicBool>) {
    let mut rng = ChaCha20Rng::seed_from_u64(args.seed);
    let mut block = 1u64;
    // Refill before either side could run short of a whole request: each
    // side takes only from its own half of the chunks, so keep at least four
    // requests' worth (two per side) above the refill mark, and never less
    // than four blocks.
    let request_bytes = (args.batch * args.key_bits / 8) as u64;
    let low_water = (4 * args.block_bytes as u64).max(4 * request_bytes);
    while !stop.load(Ordering::Relaxed) {
        let established = a.with(|n, _| n.is_paired()) && b.with(|n, _| n.is_paired());
        let fresh = a
            .with(|n, _| n.store().stats().fresh_bytes + n.store().stats().pending_bytes)
            .min(b.with(|n, _| n.store().stats().fresh_bytes + n.store().stats().pending_bytes));
        if !established || fresh > low_water {
            thread::sleep(Duration::from_micros(500));
            continue;
        }
        let mut bytes = vec![0u8; args.block_bytes];
        rng.fill_bytes(&mut bytes);
        let key = SecretKey::from_vec(bytes);
        let id = block;
        block += 1;
        let k2 = key.clone();
        a.with(|n, now| n.insert_block(now, BlockId::new(id), key))
            .expect("block order");
        b.with(|n, now| n.insert_block(now, BlockId::new(id), k2))
            .expect("block order");
    }
}

fn main() -> ExitCode {
    let args = Arc::new(Args::parse());
    match run(args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Arc<Args>) -> Result<u64, Box<dyn std::error::Error>> {
    if args.block_bytes * 8 < args.key_bits {
        return Err(format!(
            "--block-bytes {} is smaller than one key of --key-bits {}",
            args.block_bytes, args.key_bits
        )
        .into());
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let b_stream = TcpStream::connect(addr)?;
    let (a_stream, _) = listener.accept()?;
    a_stream.set_nodelay(true)?;
    b_stream.set_nodelay(true)?;

    let mut rng = ChaCha20Rng::seed_from_u64(args.seed ^ 0x5eed);
    let cfg = |role| {
        let mut c = SyncConfig::new(
            StoreConfig::new("kms-sync-demo", role)
                .with_chunk_bytes(1024)
                .with_borrow_low_water(0),
        );
        c.max_message_len = qkd_sync::message::MAX_MESSAGE_LEN;
        c.window = 256;
        c.lookup_wait = Duration::from_millis(50);
        c
    };
    let mut conn = |role: StoreRole| -> Result<Conn, Box<dyn std::error::Error>> {
        let node = SyncNode::new(cfg(role), &mut rng)?;
        let Some(suite) = args.channel.0 else {
            return Ok(Conn::Plain(Box::new(node)));
        };
        let (ownership, start) = match role {
            StoreRole::EvenChunks => (Ownership::First, Start::Respond),
            StoreRole::OddChunks => (Ownership::Second, Start::Initiate),
        };
        let caps = Capabilities::new(StoreParams {
            chunk_bytes: 1024,
            min_key_bits: 8,
            max_key_bits: MAX_KEY_BITS as u32,
            ownership,
        })
        .with_suites(&[suite]);
        // The channel's key: a simulated QKD link both nodes hold (the first
        // key serves as the operator-installed PSK).
        let link = SimulatedLink::new(
            b"kms-sync-demo",
            args.seed,
            LINK_KEY_BYTES,
            1 << 24,
            ownership,
        );
        let channel = SecuredChannel::new(
            ChannelConfig::new(HandshakeConfig::new(caps)),
            start,
            link,
            node,
            &mut rng,
            Instant::now(),
        )?;
        Ok(Conn::Secured(Box::new(channel)))
    };
    let (a_queue, a_out) = channel();
    let (b_queue, b_out) = channel();
    let writers = [
        thread::spawn({
            let s = a_stream.try_clone()?;
            move || writer(s, a_out)
        }),
        thread::spawn({
            let s = b_stream.try_clone()?;
            move || writer(s, b_out)
        }),
    ];
    let a = Arc::new(Side {
        name: "A",
        node: Mutex::new(conn(StoreRole::EvenChunks)?),
        out: a_queue,
        socket: a_stream.try_clone()?,
    });
    let b = Arc::new(Side {
        name: "B",
        node: Mutex::new(conn(StoreRole::OddChunks)?),
        out: b_queue,
        socket: b_stream.try_clone()?,
    });
    let stop_io = Arc::new(AtomicBool::new(false));
    let stop_take = Arc::new(AtomicBool::new(false));
    let done_taking = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut io = Vec::new();
    for (side, stream) in [(a.clone(), a_stream), (b.clone(), b_stream)] {
        let s = stop_io.clone();
        let side2 = side.clone();
        io.push(thread::spawn(move || reader(side2, stream, s)));
        let s = stop_io.clone();
        io.push(thread::spawn(move || ticker(side, s)));
    }
    // Wait for the session.
    let t0 = Instant::now();
    while !(a.with(|n, _| n.is_paired()) && b.with(|n, _| n.is_paired())) {
        if t0.elapsed() > Duration::from_secs(5) {
            return Err("the nodes did not pair within 5 s".into());
        }
        thread::sleep(Duration::from_millis(1));
    }
    let feed = {
        let (a, b, args, s) = (a.clone(), b.clone(), args.clone(), stop_io.clone());
        thread::spawn(move || feeder(a, b, args, s))
    };

    // Start the clock once the first block is in both stores, so that a
    // slow start (a loaded machine) is not counted as time without keys.
    let t0 = Instant::now();
    while !(a.with(|n, _| n.store().stats().fresh_bytes > 0)
        && b.with(|n, _| n.store().stats().fresh_bytes > 0))
    {
        if t0.elapsed() > Duration::from_secs(10) {
            return Err("no key block reached both stores within 10 s".into());
        }
        thread::sleep(Duration::from_millis(1));
    }

    let a_binding = Arc::new(Binding::pair("sae-a", "sae-b")?);
    let b_binding = Arc::new(Binding::pair("sae-b", "sae-a")?);
    let mut takers = Vec::new();
    let mut matchers = Vec::new();
    for (side, peer, binding, slave) in [
        (a.clone(), b.clone(), a_binding, "sae-b"),
        (b.clone(), a.clone(), b_binding, "sae-a"),
    ] {
        let (tx, rx) = channel();
        for _ in 0..args.threads {
            let (side, binding, args, tally, tx, s) = (
                side.clone(),
                binding.clone(),
                args.clone(),
                tally.clone(),
                tx.clone(),
                stop_take.clone(),
            );
            takers.push(thread::spawn(move || {
                taker(side, binding, args, tally, tx, s)
            }));
        }
        let (tally, done) = (tally.clone(), done_taking.clone());
        matchers.push(thread::spawn(move || matcher(peer, slave, rx, tally, done)));
    }

    let start = Instant::now();
    thread::sleep(Duration::from_secs_f64(args.seconds));
    stop_take.store(true, Ordering::Relaxed);
    let mut failed_threads = 0u32;
    for t in takers {
        if t.join().is_err() {
            failed_threads += 1;
        }
    }
    let taking = start.elapsed();
    done_taking.store(true, Ordering::Release);
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    for m in matchers {
        while !m.is_finished() && Instant::now() < drain_deadline {
            thread::sleep(Duration::from_millis(5));
        }
        if m.is_finished() {
            if m.join().is_err() {
                failed_threads += 1;
            }
        } else {
            eprintln!("error: a matcher did not finish within 10 s of the end");
            failed_threads += 1;
        }
    }
    let elapsed = start.elapsed();
    stop_io.store(true, Ordering::Relaxed);
    if feed.join().is_err() {
        failed_threads += 1;
    }
    // Closing the sockets ends the readers.
    for side in [&a, &b] {
        let _ = side.socket.shutdown(std::net::Shutdown::Both);
    }
    for t in io {
        if t.join().is_err() {
            failed_threads += 1;
        }
    }
    // The writers end once their queues close (the last Side dropped) or a
    // write fails on the closed socket; they are not waited for.
    drop(writers);

    let taken = tally.taken.load(Ordering::Relaxed);
    let matched = tally.matched.load(Ordering::Relaxed);
    let collisions = tally.collisions.load(Ordering::Relaxed);
    let (sa, sb) = (
        a.node.lock().expect("node lock").node().store().stats(),
        b.node.lock().expect("node lock").node().store().stats(),
    );
    for side in [&a, &b] {
        if let Conn::Secured(c) = &*side.node.lock().expect("node lock")
            && let (Some(suite), Some(r)) = (c.suite(), c.records())
        {
            println!(
                "{}: channel {suite}, key epoch {}, one-time pad used {} bytes",
                side.name,
                r.send_epoch(),
                r.pad_bytes_used()
            );
        }
    }
    println!(
        "taken: {taken} keys of {} bits in {:.2} s; matched within {:.2} s; unmatched: {}",
        args.key_bits,
        taking.as_secs_f64(),
        elapsed.as_secs_f64(),
        taken - matched.min(taken),
    );
    println!(
        "A: blocks stored {}, keys taken {}, fetched {}  |  B: blocks stored {}, keys taken {}, fetched {}",
        sa.blocks_stored,
        sa.keys_taken,
        sa.keys_fetched,
        sb.blocks_stored,
        sb.keys_taken,
        sb.keys_fetched
    );
    let rate = matched as f64 / elapsed.as_secs_f64();
    println!("keys/s: {rate:.0}  matched: {matched}  collisions: {collisions}");
    if failed_threads > 0 {
        return Err(format!(
            "{failed_threads} thread(s) panicked or hung; the figures above are incomplete"
        )
        .into());
    }
    if taken == 0 {
        return Err(format!(
            "no key was taken in {:.2} s (--batch {} x --key-bits {} per request)",
            taking.as_secs_f64(),
            args.batch,
            args.key_bits
        )
        .into());
    }
    if matched < taken && collisions == 0 {
        return Err(format!(
            "{} key(s) taken on one side were never matched on the other",
            taken - matched
        )
        .into());
    }
    Ok(collisions)
}
