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
//! A real deployment runs the sync messages inside the authenticated and
//! encrypted qkd-handshake channel; this example uses plain loopback TCP.

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
use qkd_core::machine::Machine;
use qkd_core::{BlockId, KeyId, SecretKey};
use qkd_keystore::{Binding, StoreConfig, StoreRole};
use qkd_sync::{Lookup, SyncConfig, SyncNode};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// Two KMS nodes syncing their key stores over loopback TCP.
#[derive(Parser, Debug)]
#[command(name = "kms-sync", version, about)]
struct Args {
    /// How long the application threads take keys, in seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Key size in bits (a multiple of 8).
    #[arg(long, default_value_t = 256)]
    key_bits: usize,
    /// Keys per take request.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Application threads taking keys on each side.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Size of each final key block fed to both nodes, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    block_bytes: usize,
    /// Seed of the simulated pipeline's key material.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// One node: the protocol machine and the write half of its socket.
struct Side {
    name: &'static str,
    node: Mutex<SyncNode>,
    out: Mutex<TcpStream>,
}

impl Side {
    /// Runs `f` on the node, then sends what it wants to send (outside the
    /// node lock, so that two nodes writing to each other cannot deadlock).
    fn with<T>(&self, f: impl FnOnce(&mut SyncNode, Instant) -> T) -> T {
        let now = Instant::now();
        let mut out = Vec::new();
        let result = {
            let mut node = self.node.lock().expect("node lock");
            let r = f(&mut node, now);
            while let Some(m) = node.poll_transmit(now) {
                out.push(m);
            }
            while node.poll_event().is_some() {}
            r
        };
        if !out.is_empty() {
            let mut buf = Vec::with_capacity(out.iter().map(|m| m.len() + 4).sum());
            for m in &out {
                buf.extend_from_slice(&(m.len() as u32).to_be_bytes());
                buf.extend_from_slice(m);
            }
            let mut w = self.out.lock().expect("socket lock");
            // A closed peer at shutdown is not an error worth reporting.
            let _ = w.write_all(&buf);
        }
        result
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
        if n > qkd_sync::message::MAX_MESSAGE_LEN {
            eprintln!("{}: oversized frame", side.name);
            return;
        }
        buf.resize(n, 0);
        if r.read_exact(&mut buf).is_err() {
            return;
        }
        side.with(|node, now| {
            if let Err(e) = node.handle_input(now, &buf) {
                eprintln!("{}: rejected message: {e}", side.name);
            }
        });
    }
}

fn ticker(side: Arc<Side>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(2));
        side.with(|node, now| {
            if node.poll_timeout().is_some_and(|t| t <= now) {
                node.handle_timeout(now);
            }
        });
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
        if done.load(Ordering::Relaxed) && pending.is_empty() && !got_any {
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
    let low_water = (4 * args.block_bytes) as u64;
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
    if args.key_bits == 0 || !args.key_bits.is_multiple_of(8) || args.key_bits > 8192 {
        return Err("--key-bits must be a multiple of 8 up to 8192".into());
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
    let a = Arc::new(Side {
        name: "A",
        node: Mutex::new(SyncNode::new(cfg(StoreRole::EvenChunks), &mut rng)?),
        out: Mutex::new(a_stream.try_clone()?),
    });
    let b = Arc::new(Side {
        name: "B",
        node: Mutex::new(SyncNode::new(cfg(StoreRole::OddChunks), &mut rng)?),
        out: Mutex::new(b_stream.try_clone()?),
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
    for t in takers {
        let _ = t.join();
    }
    let taking = start.elapsed();
    done_taking.store(true, Ordering::Relaxed);
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    for m in matchers {
        while !m.is_finished() && Instant::now() < drain_deadline {
            thread::sleep(Duration::from_millis(5));
        }
        if m.is_finished() {
            let _ = m.join();
        }
    }
    let elapsed = start.elapsed();
    stop_io.store(true, Ordering::Relaxed);
    let _ = feed.join();
    // Closing the sockets ends the readers.
    for side in [&a, &b] {
        let _ = side
            .out
            .lock()
            .expect("socket lock")
            .shutdown(std::net::Shutdown::Both);
    }
    for t in io {
        let _ = t.join();
    }

    let taken = tally.taken.load(Ordering::Relaxed);
    let matched = tally.matched.load(Ordering::Relaxed);
    let collisions = tally.collisions.load(Ordering::Relaxed);
    let (sa, sb) = (
        a.node.lock().expect("node lock").store().stats(),
        b.node.lock().expect("node lock").store().stats(),
    );
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
    Ok(collisions)
}
