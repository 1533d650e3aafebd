//! `kms-relay`: three KMS nodes A, B, C on loopback TCP, A to B and B to C
//! each over a qkd-handshake secured channel. A obtains keys shared with C
//! through the trusted node B: each key travels XORed with one fresh link
//! key per hop (qkd_handshake::relay), and C's delivery status travels back.
//!
//! Each line `A <key id> <check value>` / `C <key id> <check value>` names
//! a key and a blake3 check value of it (never the key). The last line is
//! `relayed: N  delivered: N  matched: N  failed: N`; the exit status is
//! non-zero unless every key was delivered and A and C hold the same bytes.
//! With too few B-C link keys (`--bc-link-keys`), B refuses the keys it
//! cannot forward: A is told `no link key at a hop`, C gets nothing of them.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use qkd_core::machine::Machine;
use qkd_core::{KeyId, SecretKey};
use qkd_handshake::capability::{Capabilities, CipherSuite, Ownership, StoreParams};
use qkd_handshake::channel::{ChannelConfig, ChannelEvent, SecuredChannel, Start};
use qkd_handshake::handshake::HandshakeConfig;
use qkd_handshake::psk::{PSK_BYTES, PskTable};
use qkd_handshake::relay::{self, RelayMessage, RelayStatus};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Three KMS nodes relaying keys from A to C through B.
#[derive(Parser, Debug, Clone)]
#[command(name = "kms-relay", version, about)]
struct Args {
    /// Keys A obtains with C.
    #[arg(long, default_value_t = 8)]
    keys: usize,
    /// Key size in bytes.
    #[arg(long, default_value_t = 32)]
    key_bytes: usize,
    /// Link keys (of --key-bytes) the A-B link holds for relaying.
    #[arg(long, default_value_t = 64)]
    ab_link_keys: usize,
    /// Link keys the B-C link holds for relaying.
    #[arg(long, default_value_t = 64)]
    bc_link_keys: usize,
    /// Cipher suite of both channels: QKD_AES_256_GCM_BLAKE3 or QKD_OTP_WC_POLYVAL.
    #[arg(long, default_value = "QKD_AES_256_GCM_BLAKE3")]
    suite: String,
    /// Seed of the simulated QKD links' key material and of the nonces.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

/// The relay needs no inner protocol: a machine that never sends.
struct Quiet;

impl Machine for Quiet {
    type Event = Infallible;
    type Error = Infallible;
    fn handle_input(&mut self, _now: Instant, _datagram: &[u8]) -> Result<(), Infallible> {
        Ok(())
    }
    fn poll_transmit(&mut self, _now: Instant) -> Option<Vec<u8>> {
        None
    }
    fn poll_event(&mut self) -> Option<Infallible> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _now: Instant) {}
}

/// The key material both ends of a simulated QKD link hold: `n` keys of
/// `len` bytes, with IDs derived from the link name.
fn link_keys(link: &str, seed: u64, n: usize, len: usize) -> Vec<(KeyId, SecretKey)> {
    (0..n as u64)
        .map(|i| {
            let id = KeyId::for_block(link.as_bytes(), seed, i);
            let mut bytes = vec![0u8; len];
            blake3::Hasher::new_derive_key("kms-relay demo QKD link")
                .update(&seed.to_le_bytes())
                .update(id.as_bytes())
                .finalize_xof()
                .fill(&mut bytes);
            (id, SecretKey::from_vec(bytes))
        })
        .collect()
}

/// A blake3 check value of a key, safe to print.
fn check_value(key: &SecretKey) -> String {
    blake3::derive_key("kms-relay 2026-11 key check value", key.expose_secret())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One end of one link: the secured channel, the socket, and the link's
/// relay keys.
struct Link {
    channel: SecuredChannel<Quiet, PskTable>,
    out: TcpStream,
    relay_keys: PskTable,
}

impl Link {
    fn flush(&mut self, now: Instant) -> std::io::Result<()> {
        let mut buf = Vec::new();
        while let Some(m) = self.channel.poll_transmit(now) {
            buf.extend_from_slice(&(m.len() as u32).to_be_bytes());
            buf.extend_from_slice(&m);
        }
        if !buf.is_empty() {
            self.out.write_all(&buf)?;
        }
        Ok(())
    }
}

enum Input {
    Frame(usize, Vec<u8>),
    Gone(usize),
}

fn reader(link: usize, stream: TcpStream, tx: Sender<Input>) {
    let mut r = BufReader::new(stream);
    let mut len = [0u8; 4];
    loop {
        if r.read_exact(&mut len).is_err() {
            let _ = tx.send(Input::Gone(link));
            return;
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > 1 << 20 {
            let _ = tx.send(Input::Gone(link));
            return;
        }
        let mut buf = vec![0u8; n];
        if r.read_exact(&mut buf).is_err() || tx.send(Input::Frame(link, buf)).is_err() {
            let _ = tx.send(Input::Gone(link));
            return;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn link(
    name: &str,
    start: Start,
    ownership: Ownership,
    suite: CipherSuite,
    args: &Args,
    relay_keys: usize,
    stream: TcpStream,
    rng: &mut ChaCha20Rng,
    tx: Sender<Input>,
    index: usize,
) -> Result<Link, Box<dyn std::error::Error>> {
    let caps = Capabilities::new(StoreParams {
        chunk_bytes: 1024,
        min_key_bits: 8,
        max_key_bits: 8192,
        ownership,
    })
    .with_suites(&[suite]);
    let cfg = ChannelConfig::new(HandshakeConfig::new(caps));
    // Key for the handshake, rekeys and one-time pads; and the relay's link keys.
    let psks = PskTable::new(
        ownership,
        link_keys(&format!("{name} channel"), args.seed, 4096, PSK_BYTES),
    );
    let relay_keys = PskTable::new(
        ownership,
        link_keys(
            &format!("{name} relay"),
            args.seed,
            2 * relay_keys,
            args.key_bytes,
        ),
    );
    let channel = SecuredChannel::new(cfg, start, psks, Quiet, rng, Instant::now())?;
    let reader_stream = stream.try_clone()?;
    thread::spawn(move || reader(index, reader_stream, tx));
    Ok(Link {
        channel,
        out: stream,
        relay_keys,
    })
}

/// What a node does with the events of its links.
trait Role {
    /// Called for every relay message from link `from`; returns messages
    /// to forward as `(link, message)`.
    fn on_relay(
        &mut self,
        links: &mut [Link],
        from: usize,
        m: RelayMessage,
    ) -> Vec<(usize, RelayMessage)>;
    /// Called when link `index` is established.
    fn on_open(&mut self, _links: &mut [Link], _index: usize) -> Vec<(usize, RelayMessage)> {
        Vec::new()
    }
    /// Whether the node is done.
    fn done(&self) -> bool;
    /// Whether a peer hanging up ends this node normally.
    fn ends_on_hangup(&self) -> bool {
        true
    }
}

struct Origin {
    keys: usize,
    key_bytes: usize,
    rng: ChaCha20Rng,
    sent: HashMap<KeyId, SecretKey>,
    outcome: Vec<(KeyId, String, RelayStatus)>,
    refused_here: usize,
}

impl Role for Origin {
    fn on_open(&mut self, links: &mut [Link], _index: usize) -> Vec<(usize, RelayMessage)> {
        let mut out = Vec::new();
        for i in 0..self.keys {
            let key = SecretKey::random(self.key_bytes, &mut self.rng);
            let id =
                KeyId::derive(format!("kms-relay transfer {i} {}", check_value(&key)).as_bytes());
            match relay::originate(id, &key, "C", &mut links[0].relay_keys) {
                Ok(m) => {
                    self.sent.insert(id, key);
                    out.push((0, m));
                }
                Err(e) => {
                    eprintln!("A: cannot send key {id}: {e}");
                    self.refused_here += 1;
                }
            }
        }
        out
    }

    fn on_relay(
        &mut self,
        _links: &mut [Link],
        _from: usize,
        m: RelayMessage,
    ) -> Vec<(usize, RelayMessage)> {
        if let RelayMessage::Status { transfer, status } = m
            && let Some(key) = self.sent.remove(&transfer)
        {
            self.outcome.push((transfer, check_value(&key), status));
        }
        Vec::new()
    }

    fn done(&self) -> bool {
        self.outcome.len() + self.refused_here == self.keys
    }
    fn ends_on_hangup(&self) -> bool {
        false
    }
}

struct Trusted;

impl Role for Trusted {
    fn on_relay(
        &mut self,
        links: &mut [Link],
        from: usize,
        m: RelayMessage,
    ) -> Vec<(usize, RelayMessage)> {
        match (&m, from) {
            (RelayMessage::Forward { transfer, .. }, 0) => {
                let (incoming, outgoing) = links.split_at_mut(1);
                match relay::relay(&m, &mut incoming[0].relay_keys, &mut outgoing[0].relay_keys) {
                    Ok(next) => vec![(1, next)],
                    Err(e) => {
                        eprintln!("B: key {transfer} not relayed: {e}");
                        vec![(
                            0,
                            RelayMessage::Status {
                                transfer: *transfer,
                                status: e.status(),
                            },
                        )]
                    }
                }
            }
            (RelayMessage::Status { .. }, 1) => vec![(0, m)],
            _ => Vec::new(),
        }
    }
    fn done(&self) -> bool {
        false
    }
}

struct Destination {
    received: Vec<(KeyId, String)>,
}

impl Role for Destination {
    fn on_relay(
        &mut self,
        links: &mut [Link],
        from: usize,
        m: RelayMessage,
    ) -> Vec<(usize, RelayMessage)> {
        let RelayMessage::Forward { transfer, .. } = &m else {
            return Vec::new();
        };
        let status = match relay::receive(&m, &mut links[from].relay_keys) {
            Ok(key) => {
                self.received.push((*transfer, check_value(&key)));
                RelayStatus::Delivered
            }
            Err(e) => {
                eprintln!("C: key {transfer} not received: {e}");
                e.status()
            }
        };
        vec![(
            from,
            RelayMessage::Status {
                transfer: *transfer,
                status,
            },
        )]
    }
    fn done(&self) -> bool {
        false
    }
}

/// The event loop of one node until its role is done, a peer hangs up, a
/// link fails, or the deadline; then closes its links and sockets.
fn run_node<R: Role>(
    name: &str,
    mut links: Vec<Link>,
    rx: Receiver<Input>,
    role: R,
    deadline: Instant,
) -> Result<R, String> {
    let result = node_loop(name, &mut links, &rx, role, deadline);
    let now = Instant::now();
    for l in &mut links {
        l.channel.close(now);
        let _ = l.flush(now);
        let _ = l.out.shutdown(std::net::Shutdown::Both);
    }
    result
}

fn node_loop<R: Role>(
    name: &str,
    links: &mut [Link],
    rx: &Receiver<Input>,
    mut role: R,
    deadline: Instant,
) -> Result<R, String> {
    let mut waiting: Vec<Vec<RelayMessage>> = links.iter().map(|_| Vec::new()).collect();
    loop {
        let now = Instant::now();
        if role.done() {
            return Ok(role);
        }
        if now >= deadline {
            return Err(format!("{name}: timed out"));
        }
        let wake = links
            .iter()
            .filter_map(|l| l.channel.poll_timeout())
            .min()
            .unwrap_or(deadline)
            .min(deadline)
            .max(now + Duration::from_micros(100));
        match rx.recv_timeout(wake - now) {
            Ok(Input::Frame(i, bytes)) => {
                if let Err(e) = links[i].channel.handle_input(Instant::now(), &bytes) {
                    eprintln!("{name}: rejected a message on link {i}: {e}");
                }
            }
            Ok(Input::Gone(i)) => {
                return if role.done() || role.ends_on_hangup() {
                    Ok(role)
                } else {
                    Err(format!("{name}: the peer on link {i} hung up"))
                };
            }
            Err(_) => {}
        }
        let now = Instant::now();
        for l in links.iter_mut() {
            if l.channel.poll_timeout().is_some_and(|t| t <= now) {
                l.channel.handle_timeout(now);
            }
        }
        for i in 0..links.len() {
            while let Some(ev) = links[i].channel.poll_event() {
                let out = match ev {
                    ChannelEvent::Established { .. } => {
                        // Messages that waited for this link to open.
                        for m in core::mem::take(&mut waiting[i]) {
                            links[i].channel.forward(&m);
                        }
                        role.on_open(links, i)
                    }
                    ChannelEvent::Relay(m) => role.on_relay(links, i, m),
                    ChannelEvent::Failed(e) => return Err(format!("{name}: link {i} failed: {e}")),
                    _ => Vec::new(),
                };
                for (to, m) in out {
                    if !links[to].channel.forward(&m) {
                        if links[to].channel.is_finished() {
                            return Err(format!("{name}: link {to} is closed"));
                        }
                        waiting[to].push(m);
                    }
                }
            }
        }
        for l in links.iter_mut() {
            l.flush(now).map_err(|e| format!("{name}: send: {e}"))?;
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pair() -> std::io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    Ok((client, server))
}

fn run(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    if args.key_bytes == 0 || args.key_bytes > relay::MAX_RELAY_KEY {
        return Err(format!("--key-bytes must be 1 to {}", relay::MAX_RELAY_KEY).into());
    }
    if args.keys == 0 || args.keys > 100_000 {
        return Err("--keys must be 1 to 100000".into());
    }
    if args.ab_link_keys > 1_000_000 || args.bc_link_keys > 1_000_000 {
        return Err("--ab-link-keys and --bc-link-keys must be at most 1000000".into());
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 3600.0) {
        return Err("--timeout must be a number of seconds in (0, 3600]".into());
    }
    let suite = CipherSuite::from_name(&args.suite).ok_or_else(|| {
        format!(
            "--suite must be {} or {}",
            CipherSuite::Aes256GcmBlake3,
            CipherSuite::OtpWegmanCarter
        )
    })?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    let mut rng = ChaCha20Rng::seed_from_u64(args.seed);
    let (ab_a, ab_b) = pair()?;
    let (bc_b, bc_c) = pair()?;
    let (tx_a, rx_a) = channel();
    let (tx_b, rx_b) = channel();
    let (tx_c, rx_c) = channel();
    let a_links = vec![link(
        "A-B",
        Start::Initiate,
        Ownership::First,
        suite,
        args,
        args.ab_link_keys,
        ab_a,
        &mut rng,
        tx_a,
        0,
    )?];
    let b_links = vec![
        link(
            "A-B",
            Start::Respond,
            Ownership::Second,
            suite,
            args,
            args.ab_link_keys,
            ab_b,
            &mut rng,
            tx_b.clone(),
            0,
        )?,
        link(
            "B-C",
            Start::Initiate,
            Ownership::First,
            suite,
            args,
            args.bc_link_keys,
            bc_b,
            &mut rng,
            tx_b,
            1,
        )?,
    ];
    let c_links = vec![link(
        "B-C",
        Start::Respond,
        Ownership::Second,
        suite,
        args,
        args.bc_link_keys,
        bc_c,
        &mut rng,
        tx_c,
        0,
    )?];

    let origin = Origin {
        keys: args.keys,
        key_bytes: args.key_bytes,
        rng: ChaCha20Rng::seed_from_u64(args.seed ^ 0xa11ce),
        sent: HashMap::new(),
        outcome: Vec::new(),
        refused_here: 0,
    };
    let b = thread::spawn(move || run_node("B", b_links, rx_b, Trusted, deadline));
    let c = thread::spawn(move || {
        run_node(
            "C",
            c_links,
            rx_c,
            Destination {
                received: Vec::new(),
            },
            deadline,
        )
    });
    let a = run_node("A", a_links, rx_a, origin, deadline);
    let a = match a {
        Ok(a) => a,
        Err(e) => {
            if let Ok(Err(b)) = b.join() {
                eprintln!("{b}");
            }
            return Err(e.into());
        }
    };
    // A hung up: B ends and hangs up on C, which ends too.
    match b.join() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("{e}"),
        Err(_) => return Err("B panicked".into()),
    }
    let c = match c.join() {
        Ok(r) => r?,
        Err(_) => return Err("C panicked".into()),
    };

    let c_keys: HashMap<KeyId, String> = c.received.iter().cloned().collect();
    let mut delivered = 0;
    let mut matched = 0;
    let mut failed = 0;
    for (id, cv, status) in &a.outcome {
        match status {
            RelayStatus::Delivered => {
                delivered += 1;
                println!("A {id} {cv}");
                match c_keys.get(id) {
                    Some(c_cv) => {
                        println!("C {id} {c_cv}");
                        if c_cv == cv {
                            matched += 1;
                        } else {
                            eprintln!("mismatch: key {id} differs between A and C");
                        }
                    }
                    None => eprintln!("missing: key {id} reported delivered, not held by C"),
                }
            }
            RelayStatus::NoLinkKey => {
                failed += 1;
                eprintln!("A: key {id} failed: no link key at a hop");
            }
            other => {
                failed += 1;
                eprintln!("A: key {id} failed: {other:?}");
            }
        }
    }
    failed += a.refused_here;
    for (id, _) in &c.received {
        if !a
            .outcome
            .iter()
            .any(|(x, _, s)| x == id && *s == RelayStatus::Delivered)
        {
            eprintln!("unexpected: C holds key {id} that A does not count as delivered");
        }
    }
    println!(
        "relayed: {}  delivered: {delivered}  matched: {matched}  failed: {failed}",
        args.keys
    );
    Ok(matched == args.keys && c.received.len() == args.keys)
}
