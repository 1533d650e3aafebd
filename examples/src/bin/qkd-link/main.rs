//! `qkd-link`: a whole QKD link's classical post-processing over TCP.
//!
//! Alice and Bob each run a `qkd_postproc::pipeline::Pipeline` fed by the
//! simulated BB84 device; the two pipelines talk over one TCP connection
//! (length-prefixed frames, see [`net`]), in two processes
//! (`qkd-link alice --listen ADDR`, `qkd-link bob --connect ADDR`) or in
//! one (`qkd-link --both`). Final keys go to a file per side and/or a
//! `qkd-keystore` store; `--save`/`--resume` hibernate a link ([`state`]).
//!
//! Exit status: 0 when every block asked for is settled (or Ctrl-C saved
//! the state); 1 for a failure while running (`error: …`); 2 for a bad
//! flag value or combination, before anything starts.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::{CommandFactory, Parser, ValueEnum};
use qkd_core::{Role, SecretKey, SimulatorConfig};
use qkd_postproc::auth::{PresharedSecret, SecretId};
use qkd_postproc::pipeline::{CheckpointMode, Pipeline, PipelineDefinition, StateError};
use zeroize::Zeroizing;

mod control;
mod flag;
mod net;
mod report;
mod side;
mod state;

use net::{LinkError, Outgoing, role_name};
use qkd_examples::peer_socket::{Inbox, PeerSocket};
use report::{Format, Progress};
use side::{Failure, Input, Side, Summary};

/// Bytes of the pre-shared secret derived from `--psk-seed` or drawn for `--both`.
/// 64 KiB: a restore sets a part of the authentication pool aside (the
/// pads the saved pipeline may have used), and 4 KiB left nothing to seal with.
const DEMO_PSK_BYTES: usize = 64 << 10;
/// Bounds of a `--psk-file`'s secret.
const MIN_PSK_BYTES: usize = 32;
const MAX_PSK_BYTES: usize = 16 << 20;

/// A QKD link's post-processing over TCP: the simulated BB84 device, the
/// whole distillation pipeline (sift, estimate, Cascade, confirm, Toeplitz
/// amplification, Wegman-Carter authentication), final keys on both sides.
///
/// Two processes: `qkd-link alice --listen 127.0.0.1:7000 --psk-file psk.hex`
/// and `qkd-link bob --connect 127.0.0.1:7000 --psk-file psk.hex`; or both
/// in one: `qkd-link --both`. Both ends must be given the same device flags,
/// pipeline definition and pre-shared secret.
///
/// Exit status: 0 when every block asked for is settled (or Ctrl-C saved
/// the state); 1 for a failure while running; 2 for a bad flag.
#[derive(Parser, Debug)]
#[command(name = "qkd-link", version)]
struct Args {
    /// The end this process runs: `alice` (listens) or `bob` (connects).
    /// Leave it out with --both.
    #[arg(value_enum, required_unless_present = "both", conflicts_with = "both")]
    role: Option<RoleArg>,
    /// Run Alice and Bob in this process, over loopback TCP.
    #[arg(long)]
    both: bool,
    /// Alice: the address to listen on (host:port).
    #[arg(long, value_parser = flag::address, conflicts_with = "both")]
    listen: Option<SocketAddr>,
    /// Bob: Alice's address (host:port).
    #[arg(long, value_parser = flag::address, conflicts_with = "both")]
    connect: Option<SocketAddr>,
    /// With --both: `tcp` (loopback TCP, the default) or `memory` (in-process
    /// queues, no sockets: the in-process reference for benchmarks).
    #[arg(long, value_enum, default_value = "tcp", requires = "both")]
    link: LinkKind,
    /// Seconds to wait for the peer to connect or answer, and the longest
    /// silence of the peer while running (0.1 to 86400).
    #[arg(long, default_value_t = 30.0, allow_negative_numbers = true, value_parser = flag::timeout)]
    timeout: f64,

    /// Simulated device: the channel's QBER, in [0, 0.5) [default: 0.02].
    /// The device flags go with a fresh start, or with --resume of a state
    /// saved over CoAP (a --save state file holds the device's settings).
    #[arg(long, allow_negative_numbers = true, value_parser = flag::qber)]
    qber: Option<f64>,
    /// Simulated device: time slots per frame (one frame is one block),
    /// 1024 to 2^26 [default: 4000000, about 10^6 sifted bits].
    #[arg(long, allow_negative_numbers = true,
          value_parser = RangedU64ValueParser::<u64>::new().range(flag::MIN_FRAME_SLOTS..=flag::MAX_FRAME_SLOTS))]
    frame_slots: Option<u64>,
    /// Simulated device: detection probability per slot [default: 0.5].
    #[arg(long, allow_negative_numbers = true, value_parser = flag::detection_probability)]
    detection_probability: Option<f64>,
    /// Simulated device: probability of the Z basis, in (0, 1) [default: 0.5].
    #[arg(long, allow_negative_numbers = true, value_parser = flag::basis_probability)]
    z_basis_probability: Option<f64>,
    /// Simulated device: seed (the same on both ends: it plays the quantum
    /// channel) [default: 1].
    #[arg(long)]
    device_seed: Option<u64>,

    /// Pipeline definition file, TOML (`.toml`) or XML (`.xml`); default:
    /// the library's default definition. Both ends must use the same.
    #[arg(long, value_parser = definition)]
    pipeline: Option<PipelineDefinition>,
    /// The pre-shared secret (the same file on both ends, used once): a
    /// file of hex digits (whitespace ignored) or, if it holds anything
    /// else, raw bytes; 32 bytes to 16 MiB.
    #[arg(long, value_parser = psk_file, conflicts_with_all = ["psk_seed", "resume"])]
    psk_file: Option<Psk>,
    /// DEMO ONLY, NOT SECRET: derive the pre-shared secret from this number.
    #[arg(long, conflicts_with = "resume")]
    psk_seed: Option<u64>,
    /// TESTS ONLY: derive the pipeline's secret seed from this number instead
    /// of the operating system's generator (runs become repeatable).
    #[arg(long, conflicts_with = "resume")]
    pipeline_seed: Option<u64>,

    /// Stop after this many blocks (from 1; default: run until Ctrl-C).
    #[arg(long, allow_negative_numbers = true, value_parser = RangedU64ValueParser::<u64>::new().range(1..=1_000_000_000))]
    blocks: Option<u64>,
    /// Worker threads for privacy amplification per side, 0 to 64 (0: in the
    /// event loop).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=flag::MAX_WORKERS))]
    workers: usize,

    /// Write this side's final keys (raw bytes, block after block) to FILE.
    #[arg(long, value_parser = flag::output_file, conflicts_with_all = ["both", "out_dir"])]
    out: Option<PathBuf>,
    /// Write the final keys to DIR/alice.key and/or DIR/bob.key.
    #[arg(long, value_parser = flag::output_dir)]
    out_dir: Option<PathBuf>,
    /// Also feed the final keys into a qkd-keystore key store (reported at the end).
    #[arg(long)]
    store: bool,
    /// Save the link's state to STATE at the end, after --blocks, on Ctrl-C
    /// or when the peer goes (with --both: STATE.alice and STATE.bob).
    #[arg(long, value_parser = flag::output_file)]
    save: Option<PathBuf>,
    /// Resume from a state saved with --save (the file is removed once the
    /// link is up: a state is resumed once).
    #[arg(long, value_parser = resume_file)]
    resume: Option<PathBuf>,
    /// Register this side's control surface with the QKD Protocol Manager
    /// (`qpm`) at ADDR and keep the registration alive (CoAP over UDP).
    #[arg(long, value_parser = flag::address, conflicts_with = "both")]
    qpm: Option<SocketAddr>,
    /// This side's name for the QPM and in logs [default: qkd-link/SIDE].
    #[arg(long, value_parser = flag::name, conflicts_with = "both")]
    name: Option<String>,
    /// Serve the pipeline's control surface (statistics, parameters, save
    /// and load) over CoAP on this UDP address; with --qpm the default is
    /// 127.0.0.1 on a free port.
    #[arg(long, value_parser = flag::address, conflicts_with = "both")]
    coap: Option<SocketAddr>,
    /// Where states saved over CoAP go (`state-00000001.bin`, ...; only the
    /// newest is kept); with manual checkpoints and no --save, also every
    /// checkpoint's state. Default: kept in memory only.
    #[arg(long, conflicts_with = "both")]
    state_dir: Option<PathBuf>,
    /// Output: `text` (progress line, totals) or `json` (one object per
    /// block and per side's totals, on stdout).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RoleArg {
    Alice,
    Bob,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LinkKind {
    Tcp,
    Memory,
}

/// The bytes of a pre-shared secret.
#[derive(Clone)]
struct Psk(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Psk({} bytes)", self.0.len())
    }
}

/// Reads `--psk-file`: hex digits (whitespace ignored) or raw bytes.
fn psk_file(s: &str) -> Result<Psk, String> {
    let path = flag::input_file(s)?;
    let len = std::fs::metadata(&path)
        .map_err(|e| format!("cannot be read: {e}"))?
        .len();
    if len > 2 * MAX_PSK_BYTES as u64 + 4096 {
        return Err(format!(
            "is larger than any secret accepted ({MAX_PSK_BYTES} bytes)"
        ));
    }
    let raw = Zeroizing::new(std::fs::read(&path).map_err(|e| format!("cannot be read: {e}"))?);
    let digits: Zeroizing<Vec<u8>> = Zeroizing::new(
        raw.iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect(),
    );
    let bytes = if !digits.is_empty() && digits.iter().all(u8::is_ascii_hexdigit) {
        if !digits.len().is_multiple_of(2) {
            return Err("holds an odd number of hex digits".into());
        }
        let nibble = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
        Zeroizing::new(
            digits
                .chunks(2)
                .map(|p| nibble(p[0]) << 4 | nibble(p[1]))
                .collect(),
        )
    } else {
        raw
    };
    if !(MIN_PSK_BYTES..=MAX_PSK_BYTES).contains(&bytes.len()) {
        return Err(format!(
            "holds a secret of {} bytes; it must have {MIN_PSK_BYTES} bytes to {MAX_PSK_BYTES}",
            bytes.len()
        ));
    }
    Ok(Psk(bytes))
}

/// Reads and validates `--pipeline`.
fn definition(s: &str) -> Result<PipelineDefinition, String> {
    let path = flag::input_file(s)?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot be read: {e}"))?;
    let xml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("xml"))
        || text.trim_start().starts_with('<');
    let parsed = if xml {
        PipelineDefinition::from_xml(&text)
    } else {
        PipelineDefinition::from_toml(&text)
    };
    parsed.map_err(|e| format!("is not a valid pipeline definition: {e}"))
}

/// `--resume`: a file (or, for --both, FILE.alice) that exists.
fn resume_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if path.is_file() || suffixed(&path, Role::Alice).is_file() {
        Ok(path)
    } else {
        Err("is not a state file (nor, for --both, the prefix of one)".into())
    }
}

fn suffixed(path: &Path, role: Role) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(role_name(role));
    PathBuf::from(s)
}

/// A usage error: clap's format, exit status 2.
fn usage(message: &str) -> ! {
    Args::command()
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

fn main() -> ExitCode {
    let args = Args::parse();
    check(&args);
    let progress = Progress::start();
    let interrupts: Arc<Mutex<Vec<Inbox<Input>>>> = Arc::default();
    {
        let interrupts = Arc::clone(&interrupts);
        let once = AtomicBool::new(false);
        let _ = ctrlc::set_handler(move || {
            side::INTERRUPTED.store(true, Ordering::SeqCst);
            if once.swap(true, Ordering::SeqCst) {
                // A second Ctrl-C: stop without saving.
                std::process::exit(130);
            }
            if let Ok(list) = interrupts.lock() {
                for tx in list.iter() {
                    let _ = tx.send(Input::Interrupt);
                }
            }
        });
    }
    let results = if args.both {
        run_both(&args, &progress, &interrupts)
    } else {
        let role = match args.role {
            Some(RoleArg::Alice) => Role::Alice,
            _ => Role::Bob,
        };
        vec![run_one(&args, role, &progress, &interrupts)]
    };
    progress.clear();
    let mut status = ExitCode::SUCCESS;
    for r in results {
        match r {
            Ok(summary) => report::totals(args.format, &summary),
            Err(failure) => {
                eprintln!("error: {failure}");
                status = ExitCode::FAILURE;
            }
        }
    }
    status
}

/// Flag combinations clap cannot express.
fn check(args: &Args) {
    match args.role {
        Some(RoleArg::Alice) if args.listen.is_none() => usage("alice needs --listen ADDR"),
        Some(RoleArg::Alice) if args.connect.is_some() => {
            usage("alice listens: --connect is for bob")
        }
        Some(RoleArg::Bob) if args.connect.is_none() => usage("bob needs --connect ADDR"),
        Some(RoleArg::Bob) if args.listen.is_some() => usage("bob connects: --listen is for alice"),
        _ => {}
    }
    if !args.both && args.resume.is_none() && args.psk_file.is_none() && args.psk_seed.is_none() {
        usage(
            "give the pre-shared secret: --psk-file FILE (or, for a demo only, --psk-seed N); \
             --both draws a fresh one when neither is given",
        );
    }
    if args.save.is_none()
        && args.state_dir.is_none()
        && args.resume.is_none()
        && args
            .pipeline
            .as_ref()
            .is_some_and(|d| d.checkpoints == CheckpointMode::Manual)
    {
        usage(
            "the pipeline definition asks for manual checkpoints (crash-safe): give --save STATE \
             (or --state-dir DIR; a --resume writes them to its state file)",
        );
    }
    if let Some(save) = &args.save
        && args.resume.is_none()
    {
        let paths: Vec<PathBuf> = if args.both {
            vec![suffixed(save, Role::Alice), suffixed(save, Role::Bob)]
        } else {
            vec![save.clone()]
        };
        for p in paths {
            if p.exists() {
                usage(&format!(
                    "--save {}: a saved state is there already; resume from it (--resume) or \
                     remove it (a fresh start from the same pre-shared secret would reuse \
                     authentication pads)",
                    p.display()
                ));
            }
        }
    }
}

/// Whether any flag of the simulated device was given.
fn device_flags_given(args: &Args) -> bool {
    args.qber.is_some()
        || args.frame_slots.is_some()
        || args.detection_probability.is_some()
        || args.z_basis_probability.is_some()
        || args.device_seed.is_some()
}

fn device_config(args: &Args) -> SimulatorConfig {
    SimulatorConfig {
        qber: args.qber.unwrap_or(0.02),
        detection_probability: args.detection_probability.unwrap_or(0.5),
        z_basis_probability: args.z_basis_probability.unwrap_or(0.5),
        frame_slots: args.frame_slots.unwrap_or(4_000_000) as usize,
        seed: args.device_seed.unwrap_or(1),
    }
}

/// The secret every fresh start needs.
fn psk_bytes(args: &Args) -> Result<Zeroizing<Vec<u8>>, String> {
    if let Some(Psk(bytes)) = &args.psk_file {
        return Ok(bytes.clone());
    }
    let mut bytes = Zeroizing::new(vec![0u8; DEMO_PSK_BYTES]);
    match args.psk_seed {
        Some(seed) => {
            let mut h = blake3::Hasher::new_derive_key("qkd-link 2026 demo pre-shared secret");
            h.update(&seed.to_be_bytes());
            h.finalize_xof().fill(&mut bytes);
        }
        None => getrandom::fill(&mut bytes)
            .map_err(|e| format!("the operating system's random generator failed: {e}"))?,
    }
    Ok(bytes)
}

fn pipeline_seed(args: &Args, role: Role) -> Result<[u8; 32], String> {
    let mut seed = [0u8; 32];
    match args.pipeline_seed {
        Some(n) => {
            let mut h = blake3::Hasher::new_derive_key("qkd-link 2026 test pipeline seed");
            h.update(&n.to_be_bytes());
            h.update(role_name(role).as_bytes());
            seed = *h.finalize().as_bytes();
        }
        None => getrandom::fill(&mut seed)
            .map_err(|e| format!("the operating system's random generator failed: {e}"))?,
    }
    Ok(seed)
}

/// Builds one side's pipeline (fresh or resumed) and its settings.
fn prepare(
    args: &Args,
    role: Role,
    psk: Option<&Zeroizing<Vec<u8>>>,
    progress: &Arc<Progress>,
) -> Result<Side, Failure> {
    let fail = |message: String| Failure {
        role,
        message,
        saved: None,
    };
    let definition = args.pipeline.clone().unwrap_or_default();
    let both = args.both;
    let path_for = |p: &Path| {
        if both {
            suffixed(p, role)
        } else {
            p.to_path_buf()
        }
    };
    let (pipeline, device, next_frame, resumed_from) = match &args.resume {
        Some(resume) => {
            let path = path_for(resume);
            let mut raw = false;
            let (host, bytes) = match state::read(&path, role) {
                Ok(_) if device_flags_given(args) => {
                    return Err(fail(format!(
                        "the state file {} holds the simulated device's settings: leave out the \
                         device flags (--qber, --frame-slots, --detection-probability, \
                         --z-basis-probability, --device-seed); they are for a state saved over CoAP",
                        path.display()
                    )));
                }
                Ok(found) => found,
                // A state saved over the control surface (qpm): the
                // pipeline's own bytes; the device starts from the flags
                // and skips the frames the pipeline has already had.
                Err(state::StateFileError::NotAState { .. }) => {
                    let bytes = state::read_raw(&path).map_err(|e| fail(e.to_string()))?;
                    raw = true;
                    let host = state::HostState {
                        role,
                        device: device_config(args),
                        next_frame: 0,
                    };
                    (host, bytes)
                }
                Err(e) => return Err(fail(e.to_string())),
            };
            let pipeline = Pipeline::from_state(&definition, role, &bytes).map_err(|e| {
                fail(match e {
                    StateError::Definition => format!(
                        "the state file {} was saved with another pipeline definition: give the \
                         --pipeline it was saved with",
                        path.display()
                    ),
                    StateError::Corrupt(e) if raw => format!(
                        "{} is not a qkd-link state file, nor a pipeline state saved over CoAP ({e})",
                        path.display()
                    ),
                    other => format!("cannot resume from {}: {other}", path.display()),
                })
            })?;
            if pipeline.auth_key_left() == 0 {
                return Err(fail(format!(
                    "the state {} has no authentication key left: start the link again from a \
                     fresh (larger) pre-shared secret",
                    path.display()
                )));
            }
            (pipeline, host.device, host.next_frame, Some(path))
        }
        None => {
            let psk = psk.ok_or_else(|| fail("no pre-shared secret".into()))?;
            let seed = Zeroizing::new(pipeline_seed(args, role).map_err(fail)?);
            let secret = PresharedSecret::new(SecretId::new(1), SecretKey::from_slice(psk));
            let pipeline = Pipeline::new(&definition, role, secret, *seed)
                .map_err(|e| fail(format!("cannot start the pipeline: {e}")))?;
            (pipeline, device_config(args), 0, None)
        }
    };
    let out = match (&args.out, &args.out_dir) {
        (Some(out), _) => Some(out.clone()),
        (None, Some(dir)) => Some(dir.join(format!("{}.key", role_name(role)))),
        (None, None) => None,
    };
    Ok(Side {
        role,
        pipeline: Arc::new(Mutex::new(pipeline)),
        device,
        next_frame,
        blocks: args.blocks,
        workers: args.workers,
        out,
        store: args.store,
        // Manual checkpoints with neither --save nor --state-dir: a resumed
        // side writes its checkpoints where it resumed from.
        save: args
            .save
            .as_deref()
            .or(args.resume.as_deref().filter(|_| {
                args.state_dir.is_none() && definition.checkpoints == CheckpointMode::Manual
            }))
            .map(path_for),
        state_dir: args.state_dir.clone(),
        checkpoints: definition.checkpoints,
        resumed_from,
        format: args.format,
        progress: Arc::clone(progress),
    })
}

fn link_failure(role: Role, e: LinkError) -> Failure {
    Failure {
        role,
        message: e.to_string(),
        saved: None,
    }
}

fn run_one(
    args: &Args,
    role: Role,
    progress: &Arc<Progress>,
    interrupts: &Arc<Mutex<Vec<Inbox<Input>>>>,
) -> Result<Summary, Failure> {
    let psk = if args.resume.is_none() {
        Some(psk_bytes(args).map_err(|message| Failure {
            role,
            message,
            saved: None,
        })?)
    } else {
        None
    };
    let side = prepare(args, role, psk.as_ref(), progress)?;
    drop(psk);
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut stream = match role {
        Role::Alice => {
            let addr = args
                .listen
                .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
            let listener = net::listen(addr).map_err(|e| link_failure(role, e))?;
            net::accept(&listener, timeout).map_err(|e| link_failure(role, e))?
        }
        Role::Bob => {
            let addr = args
                .connect
                .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
            net::connect(addr, timeout).map_err(|e| link_failure(role, e))?
        }
    };
    net::greet(&mut stream, role, timeout).map_err(|e| link_failure(role, e))?;
    let socket =
        PeerSocket::new(stream, Some(timeout)).map_err(|e| link_failure(role, e.into()))?;
    let (tx, rx) = Inbox::new(Some(socket.waker()));
    register(interrupts, &tx);
    let _service = control::serve(args, role, &side.pipeline, &tx).map_err(|message| Failure {
        role,
        message,
        saved: None,
    })?;
    side::run(side, Outgoing::Tcp(Box::new(socket)), rx, tx)
}

fn register(interrupts: &Arc<Mutex<Vec<Inbox<Input>>>>, tx: &Inbox<Input>) {
    if let Ok(mut list) = interrupts.lock() {
        list.push(tx.clone());
    }
}

fn run_both(
    args: &Args,
    progress: &Arc<Progress>,
    interrupts: &Arc<Mutex<Vec<Inbox<Input>>>>,
) -> Vec<Result<Summary, Failure>> {
    let psk = if args.resume.is_none() {
        match psk_bytes(args) {
            Ok(p) => Some(p),
            Err(message) => {
                return vec![Err(Failure {
                    role: Role::Alice,
                    message,
                    saved: None,
                })];
            }
        }
    } else {
        None
    };
    let sides = [Role::Alice, Role::Bob].map(|r| prepare(args, r, psk.as_ref(), progress));
    drop(psk);
    let [alice, bob] = sides;
    let (alice, bob) = match (alice, bob) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => return [a.err(), b.err()].into_iter().flatten().map(Err).collect(),
    };
    let timeout = Duration::from_secs_f64(args.timeout);
    let links = match args.link {
        LinkKind::Memory => None,
        LinkKind::Tcp => match loopback_pair(timeout).and_then(|(a, b)| {
            Ok((
                PeerSocket::new(a, Some(timeout))?,
                PeerSocket::new(b, Some(timeout))?,
            ))
        }) {
            Ok(pair) => Some(pair),
            Err(e) => return vec![Err(link_failure(Role::Alice, e))],
        },
    };
    let ((a_tx, a_rx), (b_tx, b_rx)) = match &links {
        None => (Inbox::new(None), Inbox::new(None)),
        Some((a, b)) => (Inbox::new(Some(a.waker())), Inbox::new(Some(b.waker()))),
    };
    register(interrupts, &a_tx);
    register(interrupts, &b_tx);
    let (a_out, b_out) = match links {
        None => (
            Outgoing::Memory(b_tx.clone()),
            Outgoing::Memory(a_tx.clone()),
        ),
        Some((a, b)) => (Outgoing::Tcp(Box::new(a)), Outgoing::Tcp(Box::new(b))),
    };
    let run = |side: Side, out: Outgoing, rx: Receiver<Input>, tx: Inbox<Input>| {
        thread::spawn(move || side::run(side, out, rx, tx))
    };
    let a = run(alice, a_out, a_rx, a_tx);
    let b = run(bob, b_out, b_rx, b_tx);
    [(a, Role::Alice), (b, Role::Bob)]
        .into_iter()
        .map(|(h, role)| {
            h.join().unwrap_or_else(|_| {
                Err(Failure {
                    role,
                    message: "internal: the side's thread panicked".into(),
                    saved: None,
                })
            })
        })
        .collect()
}

/// Alice's and Bob's ends of one loopback TCP connection, greeted.
fn loopback_pair(
    timeout: Duration,
) -> Result<(std::net::TcpStream, std::net::TcpStream), LinkError> {
    let listener = net::listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let addr = listener.local_addr()?;
    let bob = thread::spawn(move || -> Result<std::net::TcpStream, LinkError> {
        let mut s = net::connect(addr, timeout)?;
        net::greet(&mut s, Role::Bob, timeout)?;
        Ok(s)
    });
    let mut alice = net::accept(&listener, timeout)?;
    net::greet(&mut alice, Role::Alice, timeout)?;
    let bob = bob
        .join()
        .map_err(|_| LinkError::WrongPeer("thread panicked".into()))??;
    Ok((alice, bob))
}
