//! `qpm` driving real `qkd-link` processes (no fixture, no outside tool):
//! from a layout file written here, with a pre-shared secret file generated
//! here, the QPM starts each link as two `qkd-link` processes on loopback;
//! both register; statistics are read and a parameter changed through the
//! QPM's tree, and the change shows in the next blocks' per-block output of
//! both sides; a link is hibernated and resumed, then checkpointed and one
//! host killed with SIGKILL, which the QPM restarts from the saved states;
//! the link runs to its last block, and the keys of both sides are compared
//! block by block with an uninterrupted run with the same seeds.
//!
//! Blocks are small (60 000 slots, about 15 000 sifted bits) so that the
//! whole test takes well under a minute in a debug build.

#![allow(clippy::print_stderr)] // the key comparison's summary, for the test log

mod fixture;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fixture::link::{BLOCKS, Keys, LinkSetup, Qpm, assemble, block_lines, reference_run, scratch};
use qkd_core::control::Status;
use serde_json::Value as Json;

/// Waits until `side`'s output of `link` has at least `n` block lines.
fn wait_blocks(qpm: &mut Qpm, setup: &LinkSetup, link: &str, side: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let lines = block_lines(&setup.host_dir(link, side));
        if lines.len() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{link}/{side} never reached {n} blocks (has {})\n{}",
            lines.len(),
            qpm.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kept blocks of every launch in `dir` and their confirmation tag length.
fn kept_tags(dir: &Path) -> BTreeMap<u64, u64> {
    block_lines(dir)
        .iter()
        .filter(|l| l["outcome"] == "kept")
        .map(|l| {
            (
                l["block"].as_u64().unwrap(),
                l["confirm_tag_bits"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn qpm_runs_qkd_link_hosts_reads_their_statistics_and_tunes_a_parameter() {
    let dir = scratch("main");
    let setup = LinkSetup::write(&dir);
    let mut qpm = Qpm::start(&setup);

    // 1. Both hosts of `tuning` register; statistics through the QPM.
    let v = qpm.wait_link("tuning", "ran", |v| v["state"] == "running");
    assert_eq!(v["hosts"][0]["state"], "registered", "{v}");
    assert_eq!(v["hosts"][1]["state"], "registered", "{v}");
    let modules = qpm.json("/links/tuning/alice/modules");
    for m in [
        "sift", "estimate", "cascade", "confirm", "amplify", "auth", "pipeline",
    ] {
        assert!(
            modules.as_array().unwrap().iter().any(|x| x == m),
            "{m} in {modules}"
        );
    }
    let stats = "/links/tuning/alice/modules/amplify/stats";
    let out0 = qpm.stat(stats, "blocks_out").as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while qpm.stat(stats, "blocks_out").as_u64().unwrap() <= out0 {
        assert!(
            Instant::now() < deadline,
            "no block settled through qpm's eyes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(qpm.stat(stats, "bits_out").as_u64().unwrap() > 0);
    let qber = qpm
        .stat("/links/tuning/bob/modules/estimate/stats", "qber")
        .as_f64()
        .unwrap();
    assert!((0.005..0.05).contains(&qber), "bob's estimated QBER {qber}");

    // 2. A parameter changed through the QPM, read back, and in effect from
    // the next block on, on both sides (Alice's value is announced to Bob).
    let param = "/links/tuning/alice/modules/confirm/params/tag_bits";
    assert_eq!(qpm.ask_text(param), "64");
    let alice_dir = setup.host_dir("tuning", "alice");
    let settled_before: Vec<u64> = kept_tags(&alice_dir).keys().copied().collect();
    let r = qpm.put(param, "96");
    assert_eq!(
        (r.status(), r.text().as_str()),
        (Some(Status::Changed), "96"),
        "{}",
        r.text()
    );
    let last_after = kept_tags(&alice_dir)
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0);
    assert_eq!(qpm.ask_text(param), "96");
    // Refusals come back with their codes and change nothing.
    let r = qpm.put(param, "7");
    assert_eq!(r.status(), Some(Status::BadRequest), "{}", r.text());
    let r = qpm.put("/links/tuning/bob/modules/confirm/params/tag_bits", "80");
    assert_eq!(r.status(), Some(Status::MethodNotAllowed), "{}", r.text());
    assert_eq!(qpm.ask_text(param), "96");
    // Alice reads the tag length when a block reaches the confirmation
    // and announces it to Bob. When the PUT was answered at most 2 blocks
    // were in flight (`max_blocks_in_flight`), none above `last_after + 2`:
    // every later block confirms with 96, every block settled before the
    // PUT with 64, and both sides report the same length for each block.
    let first_new = last_after + 3;
    for side in ["alice", "bob"] {
        let deadline = Instant::now() + Duration::from_secs(40);
        while kept_tags(&setup.host_dir("tuning", side))
            .range(first_new..)
            .count()
            < 3
        {
            assert!(
                Instant::now() < deadline,
                "tuning/{side}: no blocks after the change\n{}",
                qpm.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let alice_tags = kept_tags(&alice_dir);
    let bob_tags = kept_tags(&setup.host_dir("tuning", "bob"));
    for (block, tag) in &alice_tags {
        if settled_before.contains(block) {
            assert_eq!(
                *tag, 64,
                "block {block} settled before the change: {alice_tags:?}"
            );
        }
        if *block >= first_new {
            assert_eq!(
                *tag, 96,
                "block {block} began after the change: {alice_tags:?}"
            );
        }
        if let Some(b) = bob_tags.get(block) {
            assert_eq!(b, tag, "block {block}: bob confirmed with another length");
        }
    }
    let r = qpm.post("/links/tuning/stop");
    assert_eq!(r.status(), Some(Status::Changed), "{}", r.text());
}

/// Hibernation: the QPM quiets the link (both pipelines hold from the same
/// block and settle what is in flight), saves both hosts and stops them;
/// resumed, the link runs to its end with the keys of an uninterrupted run
/// and no block lost.
#[test]
fn qpm_hibernates_and_resumes_a_qkd_link_with_the_keys_of_an_uninterrupted_run() {
    hibernation(false);
}

/// Hibernation as above, then a checkpoint and a SIGKILLed host, which the
/// QPM restarts from each host's newest checkpoint.
///
/// This test found two faults of the crash restart, both fixed in the
/// pipeline and guarded in-process by
/// `manual_checkpoints_survive_a_crash_of_both_sides_at_any_moment`
/// (qkd-postproc, its `BobAfterWrite` crash points): Bob killed right after
/// writing the checkpoint of a deposit, with Alice's newest state older than
/// her Outcome for that block (`FeedDiverged`: Alice now writes her decision
/// before the Outcome leaves), and, after the restart, every other block
/// waiting for all its retransmissions to time out (Alice now acknowledges
/// a block she starts, and a side that dropped it answers with an Abandon).
#[test]
fn qpm_hibernates_resumes_and_restarts_a_killed_qkd_link() {
    hibernation(true);
}

fn hibernation(kill: bool) {
    let dir = scratch(if kill { "hibernate-kill" } else { "hibernate" });
    let setup = LinkSetup::write(&dir);
    // The uninterrupted run everything is compared with.
    let reference = reference_run(&setup, &dir.join("reference"));
    let mut qpm = Qpm::start(&setup);
    qpm.wait_link("tuning", "ran", |v| v["state"] == "running");
    let r = qpm.post("/links/tuning/stop");
    assert_eq!(r.status(), Some(Status::Changed), "{}", r.text());

    // 3. `keys`: started by an operator, hibernated mid-run, resumed.
    let r = qpm.post("/links/keys/start");
    assert_eq!(r.status(), Some(Status::Changed), "{}", r.text());
    qpm.wait_link("keys", "ran", |v| v["state"] == "running");
    wait_blocks(&mut qpm, &setup, "keys", "alice", 8);
    let r = qpm.post("/links/keys/hibernate");
    assert_eq!(
        r.status(),
        Some(Status::Changed),
        "{}\n{}",
        r.text(),
        qpm.log()
    );
    let v: Json = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(v["state"], "hibernated", "{v}");
    for (h, side) in ["alice", "bob"].into_iter().enumerate() {
        let label = v["hosts"][h]["saved_state"].as_str().unwrap();
        assert!(
            setup.state_dir("keys", side).join(label).is_file(),
            "{side}'s saved state {label}"
        );
    }
    let r = qpm.get("/links/keys/alice/modules");
    assert_eq!(
        r.status(),
        Some(Status::ServiceUnavailable),
        "hosts are gone"
    );
    let r = qpm.post("/links/keys/resume");
    assert_eq!(
        r.status(),
        Some(Status::Changed),
        "{}\n{}",
        r.text(),
        qpm.log()
    );
    qpm.wait_link("keys", "resumed", |v| v["state"] == "running");
    let after_resume = block_lines(&setup.host_dir("keys", "alice")).len();

    // 4. A checkpoint, then SIGKILL: the QPM restarts the link from the
    // newest checkpoints.
    if kill {
        wait_blocks(&mut qpm, &setup, "keys", "alice", after_resume + 4);
        let r = qpm.post("/links/keys/save");
        assert_eq!(
            r.status(),
            Some(Status::Changed),
            "{}\n{}",
            r.text(),
            qpm.log()
        );
        let after_save = block_lines(&setup.host_dir("keys", "bob")).len();
        wait_blocks(&mut qpm, &setup, "keys", "bob", after_save + 3);
        let v = qpm.json("/links/keys");
        let pid = v["hosts"][1]["pid"].as_u64().unwrap();
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let v = qpm.wait_link("keys", "restarted", |v| {
            v["restarts"] == 1 && v["hosts"][1]["pid"].as_u64() != Some(pid)
        });
        assert_ne!(v["state"], "failed", "{v}\n{}", qpm.log());
        let log = qpm.log();
        assert!(
            log.contains("restart 1 of 2 from the last saved states"),
            "{log}"
        );
    }
    // The link runs to its last block; both processes exit by themselves.
    let v = qpm.wait_link("keys", "finished", |v| v["state"] == "finished");
    assert_eq!(v["restarts"], u64::from(kill), "{v}");

    // Keys: the same on both sides, block for block the uninterrupted
    // run's; the only blocks missing are the ones in flight at a kill.
    let alice = assemble(&setup.host_dir("keys", "alice"));
    let bob = assemble(&setup.host_dir("keys", "bob"));
    compare(&alice, &bob, &reference, if kill { 2 } else { 0 });
    for keys in [&alice, &bob] {
        assert_eq!(
            keys.last_block(),
            Some(BLOCKS - 1),
            "the link ran to its last block"
        );
    }
}

/// What the two sides' keys must be, given how the pipeline and `qkd-link`
/// restart:
/// - every key either side holds is the uninterrupted run's key of that
///   block (and a block settled twice, before a kill and again after the
///   restart from the earlier checkpoint, got the same key both times);
/// - the two sides hold the same blocks: `qkd-link` flushes its key file
///   after every block, so a process killed with SIGKILL loses no key its
///   peer wrote (before it did, the killed side lost its buffered tail);
/// - a block neither side ever settled was in flight when a host was
///   killed (the restart comes from the newest checkpoints, and
///   `Pipeline::from_state` drops the blocks in flight): at most
///   `max_blocks_in_flight` (2). None is lost to a hibernation: the QPM
///   holds both pipelines from the same block and lets them settle what is
///   in flight before it saves them.
fn compare(alice: &Keys, bob: &Keys, reference: &Keys, max_lost: usize) {
    for (name, keys) in [("alice", alice), ("bob", bob)] {
        for (block, key) in &keys.blocks {
            assert!(
                reference.blocks.get(block) == Some(key),
                "{name}, block {block}: not the uninterrupted run's key"
            );
        }
    }
    for (name, keys, other) in [("alice", alice, bob), ("bob", bob, alice)] {
        for block in other.blocks.keys() {
            assert!(
                keys.blocks.contains_key(block) || keys.unwritten.contains(block),
                "block {block}: {name} neither holds its key nor lost it to a kill"
            );
        }
    }
    assert!(
        alice.unwritten.is_empty() && bob.unwritten.is_empty(),
        "settled but not in the key file after a SIGKILL: alice {:?}, bob {:?}",
        alice.unwritten,
        bob.unwritten
    );
    // The QPM quiets a link before saving it (both pipelines hold from the
    // same block and settle what is in flight): nothing is in flight at a
    // hibernation. A crash restart comes from each host's newest checkpoint,
    // and the blocks in flight at the crash are dropped by the restored
    // pipelines: at most `max_blocks_in_flight` (2).
    let never: Vec<u64> = reference
        .blocks
        .keys()
        .filter(|b| !alice.blocks.contains_key(b) && !bob.blocks.contains_key(b))
        .copied()
        .collect();
    assert!(never.len() <= max_lost, "blocks never settled: {never:?}");
    eprintln!(
        "keys: {} of {} blocks on both sides equal to the uninterrupted run's; \
         in flight at a save and dropped at the restart: {never:?}; settled but lost to \
         SIGKILL (unflushed key file): alice {:?}, bob {:?}",
        alice
            .blocks
            .keys()
            .filter(|b| bob.blocks.contains_key(b))
            .count(),
        reference.blocks.len(),
        alice.unwritten,
        bob.unwritten
    );
}

#[test]
fn qkd_link_takes_the_device_flags_only_with_a_state_that_lacks_them() {
    let dir = scratch("device-flags");
    let setup = LinkSetup::write(&dir);
    let qkd_link = env!("CARGO_BIN_EXE_qkd-link");
    let state = dir.join("link.state");
    let out = Command::new(qkd_link)
        .args(["--both", "--blocks", "1", "--frame-slots", "60000"])
        .arg("--psk-file")
        .arg(&setup.psk)
        .arg("--pipeline")
        .arg(&setup.pipeline)
        .arg("--save")
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A state file of `--save` holds the device: the flags are refused,
    // and the state is not consumed by the refusal.
    let alice_state = dir.join("link.state.alice");
    let out = Command::new(qkd_link)
        .args(["alice", "--listen", "127.0.0.1:1", "--frame-slots", "60000"])
        .arg("--pipeline")
        .arg(&setup.pipeline)
        .arg("--resume")
        .arg(&alice_state)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("leave out the device flags"), "{err}");
    assert!(alice_state.is_file());
    // `--name` takes the QPM's LINK/SIDE names (and still refuses junk).
    for (name, ok) in [("ground-1/alice", true), ("a//b", false), ("a b", false)] {
        let out = Command::new(qkd_link)
            .args(["alice", "--listen", "127.0.0.1:1", "--psk-seed", "1"])
            .args(["--name", name, "--timeout", "0.1"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code() != Some(2), ok, "--name {name}: {err}");
    }
}

/// A link whose pipeline commits its own checkpoints (`checkpoints =
/// "auto"`) is not restarted after a crash, even from a state the QPM
/// saved: the killed host went on using authentication pads after that
/// save, and a restart from it would use them again.
#[test]
fn a_crashed_link_with_automatic_checkpoints_is_not_restarted() {
    let dir = scratch("auto-crash");
    let setup = LinkSetup::write(&dir);
    let text = std::fs::read_to_string(&setup.pipeline).unwrap();
    assert!(text.contains("checkpoints = \"manual\""));
    std::fs::write(
        &setup.pipeline,
        text.replace("checkpoints = \"manual\"", "checkpoints = \"auto\""),
    )
    .unwrap();
    let mut qpm = Qpm::start(&setup);
    qpm.wait_link("tuning", "ran", |v| v["state"] == "running");
    wait_blocks(&mut qpm, &setup, "tuning", "alice", 2);
    let r = qpm.post("/links/tuning/save");
    assert_eq!(r.status(), Some(Status::Changed), "{}", r.text());
    let pid = qpm.json("/links/tuning")["hosts"][1]["pid"]
        .as_u64()
        .unwrap();
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let v = qpm.wait_link("tuning", "failed", |v| v["state"] == "failed");
    assert_eq!(v["restarts"], 0, "{v}");
    let log = qpm.log();
    assert!(
        log.contains("not restarted: its pipeline commits its checkpoints itself"),
        "{log}"
    );
}
