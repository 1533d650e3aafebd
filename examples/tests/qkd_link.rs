//! The `qkd-link` binary end to end: `--both` and the two-process form give
//! identical key files on both sides (and the same keys as each other with
//! the same seeds); saving after N blocks and resuming gives the keys of an
//! uninterrupted run, and a state is resumed only once; every bad input
//! (unreachable peer, another pipeline definition, another pre-shared
//! secret, a corrupt state file, the other side's state file, bad flag
//! values) ends in a clear error and a non-zero exit, never a panic.
//!
//! Blocks are kept small (200 000 slots, about 50 000 sifted bits) so that
//! each run takes about a second.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qkd-link");
/// Exit status of a value clap refuses.
const USAGE: i32 = 2;
/// Exit status of a failure while running.
const FAILURE: i32 = 1;
/// Longest a run may take before the test kills it and fails.
const LIMIT: Duration = Duration::from_secs(120);

/// Device and seeds shared by every run that must give the same keys.
const SMALL: &[&str] = &[
    "--frame-slots",
    "200000",
    "--device-seed",
    "5",
    "--psk-seed",
    "11",
    "--pipeline-seed",
    "3",
];

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("qkd_link-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn spawn(args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qkd-link starts")
}

/// Waits for `child`, killing it after [`LIMIT`].
fn finish(mut child: Child) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "qkd-link ran past {LIMIT:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn run(args: &[&str]) -> Output {
    finish(spawn(args))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}; stderr: {}",
        o.status.code(),
        stderr(o)
    );
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
}

/// Asserts a failure with `code` whose stderr holds every one of `words`.
fn assert_refused(o: &Output, code: i32, words: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for w in words {
        assert!(err.contains(w), "expected {w:?} in: {err}");
    }
}

/// Alice and Bob as two processes on loopback; returns (alice, bob).
fn two_processes(alice: &[&str], bob: &[&str]) -> (Output, Output) {
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut a_args = vec!["alice", "--listen", &listen];
    a_args.extend_from_slice(alice);
    let a = spawn(&a_args);
    let mut b_args = vec!["bob", "--connect", &listen];
    b_args.extend_from_slice(bob);
    let b = spawn(&b_args);
    (finish(a), finish(b))
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn with<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    let mut v = base.to_vec();
    v.extend_from_slice(more);
    v
}

#[test]
fn both_and_two_processes_give_identical_keys_on_both_sides() {
    let dir = scratch("identical");
    let both_dir = dir.join("both");
    std::fs::create_dir_all(&both_dir).unwrap();
    let o = run(&with(
        SMALL,
        &[
            "--both",
            "--blocks",
            "3",
            "--out-dir",
            s(&both_dir),
            "--format",
            "json",
        ],
    ));
    assert_ok(&o);
    let a_both = read(&both_dir.join("alice.key"));
    let b_both = read(&both_dir.join("bob.key"));
    assert!(!a_both.is_empty());
    assert_eq!(a_both, b_both, "--both: the two key files differ");

    // One JSON object per block and side, then the totals of each side.
    let stdout = String::from_utf8(o.stdout).unwrap();
    let objects: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let blocks = objects.iter().filter(|v| v["type"] == "block").count();
    let totals: Vec<&serde_json::Value> =
        objects.iter().filter(|v| v["type"] == "totals").collect();
    assert_eq!(blocks, 6, "{stdout}");
    assert_eq!(totals.len(), 2);
    for t in &totals {
        assert_eq!(
            t["blocks_kept"].as_u64().unwrap() + t["blocks_dropped"].as_u64().unwrap(),
            3
        );
        assert_eq!(
            t["key_bytes_written"].as_u64().unwrap(),
            a_both.len() as u64
        );
    }
    for v in objects
        .iter()
        .filter(|v| v["type"] == "block" && v["outcome"] == "kept")
    {
        for field in [
            "block",
            "key_bits",
            "sample_bits",
            "sample_errors",
            "leaked_bits",
            "confirm_tag_bits",
            "eps_sec",
            "eps_cor",
            "final_bits",
        ] {
            assert!(!v[field].is_null(), "{field} missing in {v}");
        }
        assert_eq!(
            v["sifted_bits"].as_u64().unwrap(),
            v["sample_bits"].as_u64().unwrap() + v["key_bits"].as_u64().unwrap()
        );
    }

    let a_key = dir.join("a.key");
    let b_key = dir.join("b.key");
    let (a, b) = two_processes(
        &with(SMALL, &["--blocks", "3", "--out", s(&a_key)]),
        &with(
            SMALL,
            &["--blocks", "3", "--out", s(&b_key), "--workers", "0"],
        ),
    );
    assert_ok(&a);
    assert_ok(&b);
    let a_two = read(&a_key);
    assert_eq!(a_two, read(&b_key), "two processes: the key files differ");
    assert_eq!(
        a_two, a_both,
        "the same seeds gave other keys in two processes"
    );
}

#[test]
fn save_after_n_blocks_and_resume_gives_the_keys_of_an_uninterrupted_run() {
    let dir = scratch("resume");
    let o = run(&with(
        SMALL,
        &["--both", "--blocks", "4", "--out-dir", s(&dir)],
    ));
    assert_ok(&o);
    let whole = read(&dir.join("alice.key"));
    assert_eq!(whole, read(&dir.join("bob.key")));

    let (sa, sb) = (dir.join("alice.state"), dir.join("bob.state"));
    let (a1, b1, a2, b2) = (
        dir.join("a1.key"),
        dir.join("b1.key"),
        dir.join("a2.key"),
        dir.join("b2.key"),
    );
    let (a, b) = two_processes(
        &with(SMALL, &["--blocks", "2", "--out", s(&a1), "--save", s(&sa)]),
        &with(SMALL, &["--blocks", "2", "--out", s(&b1), "--save", s(&sb)]),
    );
    assert_ok(&a);
    assert_ok(&b);
    assert!(sa.is_file() && sb.is_file(), "states saved");
    // A fresh start onto a saved state is refused (it would reuse pads).
    let refused = run(&with(
        SMALL,
        &["alice", "--listen", "127.0.0.1:1", "--save", s(&sa)],
    ));
    assert_refused(&refused, USAGE, &["--save", "resume"]);

    let (a, b) = two_processes(
        &["--resume", s(&sa), "--blocks", "2", "--out", s(&a2)],
        &["--resume", s(&sb), "--blocks", "2", "--out", s(&b2)],
    );
    assert_ok(&a);
    assert_ok(&b);
    let mut resumed_a = read(&a1);
    resumed_a.extend(read(&a2));
    let mut resumed_b = read(&b1);
    resumed_b.extend(read(&b2));
    assert_eq!(resumed_a, resumed_b, "the two sides differ after resuming");
    assert_eq!(
        resumed_a, whole,
        "save + resume gave other keys than one run"
    );

    // A state is resumed once: the file is gone, and resuming it again is refused.
    assert!(
        !sa.exists() && !sb.exists(),
        "resumed states must be consumed"
    );
    let again = run(&["alice", "--listen", "127.0.0.1:1", "--resume", s(&sa)]);
    assert_refused(&again, USAGE, &["--resume"]);
}

#[test]
fn a_peer_with_another_definition_or_secret_is_refused() {
    let dir = scratch("mismatch");
    let other = dir.join("other.toml");
    let default = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../qkd-postproc/pipelines/default.toml"),
    )
    .unwrap();
    std::fs::write(
        &other,
        default.replace("abort_qber = 0.11", "abort_qber = 0.1"),
    )
    .unwrap();
    let (a, b) = two_processes(
        &with(SMALL, &["--blocks", "1", "--timeout", "10"]),
        &with(
            SMALL,
            &["--blocks", "1", "--timeout", "10", "--pipeline", s(&other)],
        ),
    );
    assert_refused(&a, FAILURE, &["another pipeline definition"]);
    assert_refused(&b, FAILURE, &["another pipeline definition"]);

    let other_psk: Vec<&str> = SMALL
        .iter()
        .map(|a| if *a == "11" { "99" } else { *a })
        .collect();
    let (a, b) = two_processes(
        &with(SMALL, &["--blocks", "1", "--timeout", "10"]),
        &with(&other_psk, &["--blocks", "1", "--timeout", "10"]),
    );
    assert_refused(&a, FAILURE, &["pre-shared secret"]);
    assert_refused(&b, FAILURE, &["pre-shared secret"]);

    // Something that is not qkd-link.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let a = spawn(&with(
        SMALL,
        &["alice", "--listen", &addr, "--timeout", "10"],
    ));
    thread::sleep(Duration::from_millis(300));
    let mut stream = None;
    for _ in 0..50 {
        if let Ok(s) = std::net::TcpStream::connect(&addr) {
            stream = Some(s);
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let mut stream = stream.expect("alice listens");
    use std::io::Write;
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let a = finish(a);
    assert_refused(&a, FAILURE, &["not a qkd-link"]);
}

#[test]
fn unreachable_peer_and_broken_state_files_end_in_clear_errors() {
    let dir = scratch("broken");
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let o = run(&with(
        SMALL,
        &["bob", "--connect", &addr, "--timeout", "0.5"],
    ));
    assert_refused(&o, FAILURE, &["cannot reach the peer", &addr]);
    let o = run(&with(
        SMALL,
        &["alice", "--listen", &addr, "--timeout", "0.3"],
    ));
    assert_refused(&o, FAILURE, &["no peer connected"]);

    // Real states of both sides, then damaged copies.
    let (sa, sb) = (dir.join("alice.state"), dir.join("bob.state"));
    let (a, b) = two_processes(
        &with(SMALL, &["--blocks", "1", "--save", s(&sa)]),
        &with(SMALL, &["--blocks", "1", "--save", s(&sb)]),
    );
    assert_ok(&a);
    assert_ok(&b);
    let resume = |path: &Path| {
        run(&[
            "alice",
            "--listen",
            &addr,
            "--timeout",
            "0.3",
            "--resume",
            s(path),
        ])
    };
    assert_refused(
        &resume(&sb),
        FAILURE,
        &["saved by bob", "this side is alice"],
    );
    let garbage = dir.join("garbage.state");
    std::fs::write(&garbage, b"this is not a state").unwrap();
    assert_refused(&resume(&garbage), FAILURE, &["not a qkd-link state file"]);
    let good = read(&sa);
    let flipped = dir.join("flipped.state");
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x20;
    std::fs::write(&flipped, &bad).unwrap();
    assert_refused(&resume(&flipped), FAILURE, &["corrupt", "checksum"]);
    let cut = dir.join("cut.state");
    std::fs::write(&cut, &good[..good.len() - 100]).unwrap();
    assert_refused(&resume(&cut), FAILURE, &["corrupt"]);
    // Another definition than the one it was saved with.
    let other = dir.join("other.toml");
    let default = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../qkd-postproc/pipelines/default.toml"),
    )
    .unwrap();
    std::fs::write(
        &other,
        default.replace("abort_qber = 0.11", "abort_qber = 0.1"),
    )
    .unwrap();
    let o = run(&[
        "alice",
        "--listen",
        &addr,
        "--timeout",
        "0.3",
        "--resume",
        s(&sa),
        "--pipeline",
        s(&other),
    ]);
    assert_refused(&o, FAILURE, &["another pipeline definition"]);
    // None of these refusals consumed the state.
    assert!(sa.is_file());
}

#[test]
fn bad_flag_values_are_refused_before_anything_starts() {
    let dir = scratch("flags");
    let short = dir.join("short.hex");
    std::fs::write(&short, "00ff").unwrap();
    let odd = dir.join("odd.hex");
    std::fs::write(&odd, "0".repeat(129)).unwrap();
    let bad_toml = dir.join("bad.toml");
    std::fs::write(&bad_toml, "name = \"x\"\nmax_blocks_in_flight = \"many\"\n").unwrap();
    let missing = dir.join("missing");
    let no_folder = dir.join("no/such/key.bin");
    let cases: &[(&[&str], &[&str])] = &[
        (&["--both", "--qber", "nan"], &["--qber"]),
        (&["--both", "--qber", "0.5"], &["--qber"]),
        (&["--both", "--qber", "-0.1"], &["--qber"]),
        (&["--both", "--frame-slots", "0"], &["--frame-slots"]),
        (
            &["--both", "--frame-slots", "99999999999"],
            &["--frame-slots"],
        ),
        (
            &["--both", "--detection-probability", "0"],
            &["--detection-probability"],
        ),
        (
            &["--both", "--z-basis-probability", "1"],
            &["--z-basis-probability"],
        ),
        (&["--both", "--workers", "65"], &["--workers"]),
        (&["--both", "--blocks", "0"], &["--blocks"]),
        (&["--both", "--timeout", "0"], &["--timeout"]),
        (&["--both", "--timeout", "inf"], &["--timeout"]),
        (&["--both", "--psk-file", s(&missing)], &["--psk-file"]),
        (
            &["--both", "--psk-file", s(&short)],
            &["--psk-file", "bytes"],
        ),
        (&["--both", "--psk-file", s(&odd)], &["--psk-file", "odd"]),
        (
            &["--both", "--pipeline", s(&bad_toml)],
            &["--pipeline", "line 2"],
        ),
        (&["--both", "--out-dir", s(&missing)], &["--out-dir"]),
        (
            &[
                "alice",
                "--listen",
                "127.0.0.1:1",
                "--psk-seed",
                "1",
                "--out",
                s(&no_folder),
            ],
            &["--out"],
        ),
        (
            &["alice", "--listen", "nowhere", "--psk-seed", "1"],
            &["--listen"],
        ),
        (&["alice", "--psk-seed", "1"], &["--listen"]),
        (&["bob", "--psk-seed", "1"], &["--connect"]),
        (&["alice", "--listen", "127.0.0.1:1"], &["--psk-file"]),
        (
            &[
                "bob",
                "--connect",
                "127.0.0.1:1",
                "--listen",
                "127.0.0.1:2",
                "--psk-seed",
                "1",
            ],
            &["--listen"],
        ),
        (&["--both", "alice"], &["--both"]),
        (&[], &["<ROLE>"]),
        (&["--both", "--out", "x.key"], &["--out"]),
        (&["--both", "--resume", s(&missing)], &["--resume"]),
        (&["--both", "--link", "pigeon"], &["--link"]),
    ];
    for (args, words) in cases {
        let o = run(args);
        assert_refused(&o, USAGE, words);
        assert!(o.stdout.is_empty(), "{args:?} printed a result");
    }
    // Nothing was created by the refused runs.
    assert!(!Path::new("x.key").exists());
}

/// A confirmable CoAP GET of `path` (no token), the answer's code and payload.
fn coap_get(addr: &str, path: &str) -> Option<(u8, String)> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut msg = vec![0x40, 0x01, 0x12, 0x34];
    let mut last = 0u8;
    for seg in path.trim_matches('/').split('/') {
        let delta = 11 - last;
        last = 11;
        msg.push((delta << 4) | seg.len() as u8);
        msg.extend_from_slice(seg.as_bytes());
    }
    socket.send_to(&msg, addr).ok()?;
    let mut buf = [0u8; 2048];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    let data = &buf[..n];
    let payload = data
        .iter()
        .position(|&b| b == 0xff)
        .map(|i| String::from_utf8_lossy(&data[i + 1..]).into_owned())
        .unwrap_or_default();
    Some((data[1], payload))
}

#[test]
fn the_pipeline_is_served_over_coap_while_the_link_runs() {
    let coap_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
        .port();
    let coap = format!("127.0.0.1:{coap_port}");
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let a = spawn(&with(
        SMALL,
        &["alice", "--listen", &listen, "--coap", &coap],
    ));
    // No `--blocks`: the link runs until the checks below are done (with a
    // block limit a quiet machine finished the link before the first query).
    let b = spawn(&with(SMALL, &["bob", "--connect", &listen]));
    let mut answer = None;
    for _ in 0..100 {
        if let Some(a) = coap_get(&coap, "/modules") {
            answer = Some(a);
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let (code, payload) = answer.expect("the CoAP service answers");
    assert_eq!(code, 0x45, "2.05 Content");
    assert!(
        payload.contains("cascade") && payload.contains("pipeline"),
        "{payload}"
    );
    let (code, payload) = coap_get(&coap, "/modules/cascade/params").expect("params");
    assert_eq!(code, 0x45);
    assert!(payload.contains("variant"), "{payload}");
    let (code, _) = coap_get(&coap, "/modules/nonsense/stats").expect("answer");
    assert_eq!(code >> 5, 4, "a 4.xx for an unknown module");
    for mut child in [a, b] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A peer that greets correctly and then misbehaves on the stream: a
/// frame of length 0, a length above the limit, a stream cut inside a
/// frame, silence past `--timeout`, and frames that are not the pipeline's:
/// each ends the run with its own clear error, never a panic or a hang.
#[test]
fn a_hostile_peer_stream_ends_the_link_with_a_clear_error() {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    let hello = *b"qkd-link\x01\x01";
    let cases: [(&str, Vec<u8>, bool, &str); 5] = [
        (
            "empty",
            0u32.to_be_bytes().to_vec(),
            false,
            "a frame of 0 bytes",
        ),
        (
            "huge",
            (1u32 << 31).to_be_bytes().to_vec(),
            false,
            "a frame of 2147483648 bytes",
        ),
        (
            "cut",
            [&100u32.to_be_bytes()[..], &[7u8; 40]].concat(),
            true,
            "closed the connection in a frame",
        ),
        ("silent", Vec::new(), false, "sent nothing for"),
        (
            "garbage",
            [1u8, 2, 3, 4, 5]
                .iter()
                .flat_map(|&b| [&9u32.to_be_bytes()[..], &[b; 9]].concat())
                .collect(),
            false,
            "refused",
        ),
    ];
    for (name, bytes, close, words) in cases {
        let addr = format!("127.0.0.1:{}", free_port());
        let alice = spawn(&with(
            SMALL,
            &[
                "alice",
                "--listen",
                &addr,
                "--timeout",
                "1.5",
                "--blocks",
                "1",
            ],
        ));
        let start = Instant::now();
        let mut peer = loop {
            match TcpStream::connect(&addr) {
                Ok(s) => break s,
                Err(e) if start.elapsed() < Duration::from_secs(20) => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("{name}: alice never listened: {e}"),
            }
        };
        peer.write_all(&hello).unwrap();
        let mut theirs = [0u8; 10];
        peer.read_exact(&mut theirs).unwrap();
        assert_eq!(&theirs[..8], b"qkd-link", "{name}");
        peer.write_all(&bytes).unwrap();
        if close {
            peer.shutdown(std::net::Shutdown::Write).unwrap();
        }
        // Keep reading what Alice sends so she is never held up writing.
        let drain = thread::spawn(move || {
            let mut sink = [0u8; 1 << 14];
            while matches!(peer.read(&mut sink), Ok(n) if n > 0) {}
        });
        let o = finish(alice);
        assert_refused(&o, FAILURE, &[words]);
        let _ = drain.join();
    }
}

/// Ctrl-C (SIGINT) on one side of a two-process link mid-stream: that side
/// stops at once, saves its state with `--save` and exits successfully
/// with an interrupted summary; the peer ends with a clear error, not a
/// hang. (Over TCP the signal reaches the event loop through its inbox's
/// waker, which ends the loop's socket wait.)
#[test]
fn ctrl_c_saves_the_state_and_ends_both_sides() {
    let dir = scratch("ctrl_c");
    let state = dir.join("alice.state");
    let keys = dir.join("alice.keys");
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let alice = spawn(&with(
        SMALL,
        &[
            "alice",
            "--listen",
            &listen,
            "--blocks",
            "100000",
            "--save",
            s(&state),
            "--out",
            s(&keys),
        ],
    ));
    let bob = spawn(&with(
        SMALL,
        &["bob", "--connect", &listen, "--blocks", "100000"],
    ));
    // Wait for the first keys, then interrupt Alice.
    let start = Instant::now();
    while std::fs::metadata(&keys).map_or(0, |m| m.len()) == 0 {
        assert!(start.elapsed() < LIMIT, "no key within {LIMIT:?}");
        thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-INT", &alice.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let a = finish(alice);
    let b = finish(bob);
    assert_ok(&a);
    assert!(
        String::from_utf8_lossy(&a.stdout).contains("interrupted"),
        "{}",
        String::from_utf8_lossy(&a.stdout)
    );
    assert!(state.is_file(), "no state saved; stderr: {}", stderr(&a));
    assert_refused(&b, FAILURE, &["the peer closed the connection"]);
}
