//! The `qkd` and `kms-sync` binaries on careless input: every bad value
//! ends in an error that names the flag and a non-zero exit status (2 for a
//! value clap refuses, 1 for a failure while running), never a panic, a NaN
//! or a figure from a clock that read zero. A few good runs, kept small,
//! check that the tools still work.

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use assert_cmd::cargo::cargo_bin_cmd;
use predicates::prelude::*;
use predicates::str::contains;

/// Exit status of a value clap refuses.
const USAGE: i32 = 2;
/// Exit status of a failure while running.
const FAILURE: i32 = 1;

/// Every run here takes well under a second; a regression that lets a huge
/// value through (`--n 4294967295` grew past 16 GB in minutes) is killed
/// and fails instead of holding the machine.
const LIMIT: Duration = Duration::from_secs(20);

fn qkd(args: &[&str]) -> Command {
    let mut cmd = cargo_bin_cmd!("qkd");
    cmd.args(args).timeout(LIMIT);
    cmd
}

fn kms_sync(args: &[&str]) -> Command {
    let mut cmd = cargo_bin_cmd!("kms-sync");
    cmd.args(args).timeout(LIMIT);
    cmd
}

/// Asserts that `cmd` exits with `code` and an error on standard error that
/// contains every one of `words` (the flag first), and that it neither
/// panicked nor printed a result.
fn refused(mut cmd: Command, code: i32, words: &[&str]) {
    let mut assert = cmd.assert().code(code).stdout("");
    for w in words {
        assert = assert.stderr(contains(*w));
    }
    assert.stderr(contains("panicked").not());
}

/// A folder of its own for one test, empty.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

// ---------------------------------------------------------------- qkd auth

#[test]
fn auth_refuses_negative_nan_zero_and_huge_seconds() {
    for value in [
        "--seconds=-1",
        "--seconds=nan",
        "--seconds=0",
        "--seconds=1e999",
    ] {
        refused(qkd(&["auth", value]), USAGE, &["--seconds"]);
    }
    // Without `=`, clap takes `-1` for a flag; still an error naming it.
    refused(qkd(&["auth", "--seconds", "-1"]), USAGE, &["--seconds"]);
}

#[test]
fn auth_refuses_a_qber_that_is_nan_negative_or_leaves_no_key() {
    refused(
        qkd(&["auth", "--qber", "nan"]),
        USAGE,
        &["--qber", "finite"],
    );
    refused(qkd(&["auth", "--qber=-0.1"]), USAGE, &["--qber"]);
    refused(
        qkd(&["auth", "--qber", "0.6"]),
        USAGE,
        &["--qber", "no key"],
    );
    refused(
        qkd(&["auth", "--qber", "0.5"]),
        USAGE,
        &["--qber", "no key"],
    );
}

#[test]
fn auth_refuses_the_other_numbers_out_of_their_domain() {
    for (flag, value) in [
        ("--efficiency", "nan"),
        ("--efficiency", "0.9"),
        ("--sample-fraction", "0"),
        ("--sample-fraction", "1.5"),
        ("--block-bits", "0"),
        ("--block-bits", "18446744073709551615"),
        ("--messages", "0"),
        ("--payload-bytes", "999999999999"),
        ("--tag-bits", "32"),
    ] {
        refused(qkd(&["auth", flag, value]), USAGE, &[flag]);
    }
}

#[test]
fn auth_says_when_a_round_distils_no_key() {
    // QBER 0.2 is a valid input that leaves no final key: a result, not a
    // percentage of zero.
    let out = qkd(&[
        "auth",
        "--qber",
        "0.2",
        "--seconds",
        "0.01",
        "--messages",
        "4",
        "--format",
        "json",
    ])
    .assert()
    .success()
    .get_output()
    .stdout
    .clone();
    let report: serde_json::Value = serde_json::from_slice(&out).expect("JSON report");
    assert_eq!(report["final_key_bits"], 0);
    assert!(report["share_of_final_key_percent"].is_null());
    assert!(
        report["auth_bits_per_round"]
            .as_u64()
            .is_some_and(|b| b > 0)
    );
    for t in report["throughput"].as_array().expect("throughput rows") {
        let ratio = t["ratio"].as_f64().expect("finite ratio");
        assert!(ratio > 0.0 && ratio.is_finite());
    }
}

#[test]
fn auth_good_run() {
    qkd(&[
        "auth",
        "--seconds",
        "0.01",
        "--messages",
        "10",
        "--payload-bytes",
        "64",
    ])
    .assert()
    .success()
    .stdout(contains("% of the final key"))
    .stdout(contains("NaN").not());
}

// ------------------------------------------------------------------ qkd ec

/// The throughput column of each CSV row of `qkd ec`.
fn ec_rows(stdout: &[u8]) -> Vec<Vec<String>> {
    let text = String::from_utf8(stdout.to_vec()).expect("UTF-8");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("method,variant,qber,n,trials,f_mean,f_stddev,channel_uses_mean,fer,throughput_mbps")
    );
    lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

#[test]
fn ec_one_trial_gives_no_throughput_from_a_clock_that_read_zero() {
    let out = qkd(&["ec", "--trials", "1", "--n", "2000"])
        .assert()
        .success()
        .get_output()
        .clone();
    let rows = ec_rows(&out.stdout);
    assert_eq!(rows.len(), 1);
    let throughput = &rows[0][9];
    // Empty when the run was too short to time; otherwise a figure Cascade
    // can reach (well under 100 Gbit/s), never the 10^7 Mbit/s of a CPU
    // clock that did not move.
    if throughput.is_empty() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("too short to time"), "{stderr}");
    } else {
        let mbps: f64 = throughput.parse().expect("a number");
        assert!(mbps > 0.0 && mbps < 100_000.0, "{mbps}");
    }
}

#[test]
fn ec_one_bit_frames_give_no_nan() {
    let out = qkd(&["ec", "--n", "1", "--trials", "20"])
        .assert()
        .success()
        .stdout(contains("NaN").not())
        .stdout(contains("inf").not())
        .stderr(contains("--n"))
        .get_output()
        .clone();
    let rows = ec_rows(&out.stdout);
    assert_eq!(rows[0][5], "", "f_mean of 1-bit frames is undefined");
    qkd(&["ec", "--n", "1", "--trials", "20", "--format", "json"])
        .assert()
        .success()
        .stdout(contains("\"f_mean\": null"));
}

#[test]
fn ec_refuses_key_lengths_it_cannot_hold() {
    refused(
        qkd(&["ec", "--n", "4294967295"]),
        USAGE,
        &["--n", "1048576"],
    );
    refused(qkd(&["ec", "--n", "0"]), USAGE, &["--n"]);
    refused(
        qkd(&["ec", "--variant", "option8", "--n-option8", "4294967296"]),
        USAGE,
        &["--n-option8"],
    );
}

#[test]
fn ec_refuses_the_other_numbers_out_of_their_domain() {
    for (flag, value) in [
        ("--qber", "nan"),
        ("--qber", "0"),
        ("--qber", "0.5"),
        ("--qber", "0.02,0.7"),
        ("--trials", "0"),
        ("--trials", "99999999999"),
        ("--search-waves", "0"),
        ("--variant", "nosuch"),
    ] {
        refused(qkd(&["ec", flag, value]), USAGE, &[flag]);
    }
}

#[test]
fn ec_plot_into_a_missing_folder_names_the_path_before_running() {
    let dir = scratch("ec_plot_missing");
    let target = dir.join("no-such-folder").join("f.svg");
    refused(
        qkd(&["ec", "--plot", s(&target)]),
        USAGE,
        &["--plot", s(&dir.join("no-such-folder"))],
    );
    refused(
        qkd(&["ec", "--plot", s(&dir)]),
        USAGE,
        &["--plot", "folder"],
    );
}

#[test]
fn ec_good_run_with_a_plot() {
    let dir = scratch("ec_good");
    let plot = dir.join("f.svg");
    let out = qkd(&[
        "ec",
        "--n",
        "2000",
        "--trials",
        "10",
        "--qber",
        "0.02,0.05",
        "--variant",
        "original,option8",
        "--plot",
        s(&plot),
    ])
    .assert()
    .success()
    .get_output()
    .clone();
    let rows = ec_rows(&out.stdout);
    assert_eq!(rows.len(), 4);
    for row in &rows {
        let f: f64 = row[5].parse().expect("f_mean defined at 2000 bits");
        assert!(f > 1.0 && f < 2.0, "{row:?}");
        assert_eq!(row[8].parse::<f64>().expect("fer"), 0.0, "{row:?}");
    }
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.contains("<svg"));
}

/// `--method cascade,ldpc` runs both into one table (and one plot); a
/// variant of a method not asked for is refused.
#[test]
fn ec_cascade_and_ldpc_in_one_run() {
    let dir = scratch("ec_both");
    let plot = dir.join("f.svg");
    let out = qkd(&[
        "ec",
        "--method",
        "cascade,ldpc",
        "--n",
        "4096",
        "--trials",
        "3",
        "--qber",
        "0.05",
        "--plot",
        s(&plot),
    ])
    .assert()
    .success()
    .get_output()
    .clone();
    let rows = ec_rows(&out.stdout);
    let methods: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(methods, ["cascade", "ldpc"], "{rows:?}");
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.contains("cascade option8") && svg.contains("ldpc blind"));
    refused(
        qkd(&["ec", "--method", "cascade", "--variant", "blind"]),
        FAILURE,
        &["--variant blind", "--method cascade"],
    );
    refused(
        qkd(&["ec", "--method", "cascade", "--variant", "guided"]),
        FAILURE,
        &["--variant guided", "--method cascade", "guided"],
    );
}

/// `--variant guided` (Bob asks for the bits his decoder is least sure of)
/// gives a row of its own, next to blind's, in the table and the plot: every
/// frame corrected, f above the Shannon limit and below 1.2 (blind_table
/// measured 1.06–1.08 on 2^17-bit frames), channel uses at least the first
/// round.
#[test]
fn ec_ldpc_guided_row_and_plot() {
    let dir = scratch("ec_guided");
    let plot = dir.join("f.svg");
    let out = qkd(&[
        "ec",
        "--method",
        "ldpc",
        "--variant",
        "blind,guided",
        "--qber",
        "0.03",
        "--n",
        "16384",
        "--trials",
        "3",
        "--plot",
        s(&plot),
    ])
    .assert()
    .success()
    .get_output()
    .clone();
    let rows = ec_rows(&out.stdout);
    let variants: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(variants, ["blind", "guided"], "{rows:?}");
    let guided = &rows[1];
    assert_eq!(guided[0], "ldpc");
    assert_eq!(guided[4], "3", "{guided:?}");
    let f: f64 = guided[5].parse().expect("f_mean defined");
    assert!(f > 1.0 && f < 1.2, "{guided:?}");
    let uses: f64 = guided[7].parse().expect("channel_uses_mean");
    assert!(uses >= 1.0, "{guided:?}");
    assert_eq!(guided[8].parse::<f64>().expect("fer"), 0.0, "{guided:?}");
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.contains("ldpc blind") && svg.contains("ldpc guided"));
    // A start of f = 1.5 leaks more than the default start of 1.0 and
    // still corrects every frame.
    let out = qkd(&[
        "ec",
        "--method",
        "ldpc",
        "--variant",
        "guided",
        "--qber",
        "0.03",
        "--n",
        "16384",
        "--trials",
        "3",
        "--ldpc-efficiency",
        "1.5",
        "--format",
        "json",
    ])
    .assert()
    .success()
    .get_output()
    .clone();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let row = &json[0];
    assert_eq!(row["variant"], "guided", "{json}");
    assert_eq!(row["fer"], 0.0, "{json}");
    let f_high = row["f_mean"].as_f64().expect("f_mean");
    assert!(f_high > f + 0.2, "start 1.5: f {f_high}, start 1.0: f {f}");
}

#[test]
fn ldpc_fer_writes_csv_and_plot_and_refuses_bad_flags() {
    let dir = scratch("ldpc_fer");
    let csv = dir.join("fer.csv");
    let plot = dir.join("fer.svg");
    qkd(&[
        "ldpc",
        "fer",
        "--n",
        "1024",
        "--trials",
        "2",
        "--efficiency",
        "1.3",
        "--out",
        s(&csv),
        "--plot",
        s(&plot),
    ])
    .assert()
    .success();
    let text = std::fs::read_to_string(&csv).expect("csv written");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("rate,n,qber,f,trials,failures,fer,iterations_mean")
    );
    assert_eq!(
        lines.count(),
        qkd_postproc::ldpc::MotherRate::ladder().count(),
        "one row per rung"
    );
    assert!(
        std::fs::read_to_string(&plot)
            .expect("plot")
            .contains("R = 0.500")
    );
    for (flag, value) in [
        ("--n", "100"),
        ("--trials", "0"),
        ("--efficiency", "0.9"),
        ("--efficiency", "nan"),
    ] {
        refused(qkd(&["ldpc", "fer", flag, value]), USAGE, &[flag]);
    }
}

// ------------------------------------------------------------ qkd simulate

#[test]
fn simulate_refuses_zero_bits_and_other_bad_numbers() {
    for (flag, value) in [
        ("--bits", "0"),
        ("--qber", "nan"),
        ("--qber", "0.7"),
        ("--detection-probability", "0"),
        ("--detection-probability", "1e-12"),
        ("--detection-probability", "1.5"),
        ("--z-basis-probability", "1"),
        ("--frame-slots", "0"),
        ("--frame-slots", "4294967297"),
    ] {
        refused(qkd(&["simulate", flag, value]), USAGE, &[flag]);
    }
}

#[test]
fn simulate_good_run_reports_rates_not_nan() {
    qkd(&["simulate", "--bits", "1000", "--frame-slots", "65536"])
        .assert()
        .success()
        .stdout(contains("(detection rate 0.0"))
        .stdout(contains("NaN").not());
    // One detection: few or no sifted bits, still no NaN.
    qkd(&["simulate", "--bits", "1", "--frame-slots", "1"])
        .assert()
        .success()
        .stdout(contains("NaN").not());
}

// ------------------------------------------------------------- qkd amplify

/// Writes a 64-bit input and the 95-bit seed (rounded up to 12 bytes) of a
/// 64 → 32 standard Toeplitz hash into `dir`.
fn amplify_files(dir: &Path) -> (PathBuf, PathBuf) {
    let input = dir.join("key.bin");
    let seed = dir.join("seed.bin");
    std::fs::write(&input, [0xa5u8; 8]).expect("input");
    std::fs::write(&seed, [0x3cu8; 12]).expect("seed");
    (input, seed)
}

fn amplify(input: &Path, seed: &Path, out: &Path) -> Command {
    amplify_bits(input, seed, out, "32")
}

fn amplify_bits(input: &Path, seed: &Path, out: &Path, output_bits: &str) -> Command {
    qkd(&[
        "amplify",
        "--input",
        s(input),
        "--seed",
        s(seed),
        "--output-bits",
        output_bits,
        "--out",
        s(out),
    ])
}

#[test]
fn amplify_refuses_to_overwrite_its_input_or_seed() {
    let dir = scratch("amplify_same_file");
    let (input, seed) = amplify_files(&dir);
    // The same path, the same file through `..`, through a symbolic link
    // and through a hard link; the seed too.
    let dotdot = dir.join("sub");
    std::fs::create_dir_all(&dotdot).expect("sub");
    let via_dotdot = dotdot.join("..").join("key.bin");
    let symlink = dir.join("key-link.bin");
    let hardlink = dir.join("key-hard.bin");
    std::os::unix::fs::symlink(&input, &symlink).expect("symlink");
    std::fs::hard_link(&input, &hardlink).expect("hard link");
    for out in [&input, &via_dotdot, &symlink, &hardlink] {
        refused(
            amplify(&input, &seed, out),
            FAILURE,
            &["--out", "--input", "same file"],
        );
    }
    refused(
        amplify(&input, &seed, &seed),
        FAILURE,
        &["--out", "--seed", "same file"],
    );
    assert_eq!(std::fs::read(&input).expect("input"), [0xa5u8; 8]);
    assert_eq!(std::fs::read(&seed).expect("seed"), [0x3cu8; 12]);
}

#[test]
fn amplify_names_missing_files_and_bad_lengths() {
    let dir = scratch("amplify_bad");
    let (input, seed) = amplify_files(&dir);
    let out = dir.join("out.bin");
    refused(
        amplify(&dir.join("missing.bin"), &seed, &out),
        USAGE,
        &["--input", "missing.bin"],
    );
    refused(
        amplify(&input, &dir.join("missing.bin"), &out),
        USAGE,
        &["--seed", "missing.bin"],
    );
    refused(
        amplify(&input, &seed, &dir.join("no-such-folder").join("out.bin")),
        USAGE,
        &["--out", "no-such-folder"],
    );
    refused(amplify(&input, &input, &out), FAILURE, &["--seed"]);
    refused(
        amplify_bits(&input, &seed, &out, "0"),
        USAGE,
        &["--output-bits"],
    );
    refused(
        amplify_bits(&input, &seed, &out, "65"),
        FAILURE,
        &["--output-bits"],
    );
    let mut cmd = amplify(&input, &seed, &out);
    cmd.args(["--input-bits", "0"]);
    refused(cmd, USAGE, &["--input-bits"]);
    let empty = dir.join("empty.bin");
    std::fs::write(&empty, []).expect("empty");
    refused(amplify(&empty, &seed, &out), FAILURE, &["--input", "empty"]);
    assert!(!out.exists());
}

#[test]
fn amplify_good_run() {
    let dir = scratch("amplify_good");
    let (input, seed) = amplify_files(&dir);
    let out = dir.join("out.bin");
    amplify(&input, &seed, &out)
        .assert()
        .success()
        .stdout(contains("64 → 32 bits"));
    assert_eq!(std::fs::read(&out).expect("output").len(), 4);
    assert_eq!(std::fs::read(&input).expect("input"), [0xa5u8; 8]);
}

// ---------------------------------------------------------------- kms-sync

#[test]
fn kms_sync_refuses_bad_numbers() {
    for (flag, value) in [
        ("--seconds", "-1"),
        ("--seconds", "nan"),
        ("--seconds", "1e999"),
        ("--block-bytes", "0"),
        ("--block-bytes", "1099511627776"),
        ("--batch", "0"),
        ("--batch", "10001"),
        ("--threads", "0"),
        ("--threads", "100000"),
        ("--key-bits", "0"),
        ("--key-bits", "7"),
        ("--key-bits", "16384"),
    ] {
        refused(kms_sync(&[&format!("{flag}={value}")]), USAGE, &[flag]);
    }
}

#[test]
fn kms_sync_refuses_blocks_smaller_than_a_key() {
    refused(
        kms_sync(&["--block-bytes", "16", "--key-bits", "256"]),
        FAILURE,
        &["--block-bytes", "--key-bits"],
    );
}

#[test]
fn kms_sync_help_describes_the_tool() {
    kms_sync(&["--help"])
        .assert()
        .success()
        .stdout(contains("Two KMS nodes"))
        .stdout(contains("collision"))
        .stdout(contains("example nodes built on the qkd crates").not());
    qkd(&["--help"])
        .assert()
        .success()
        .stdout(contains("classical side of a QKD link"))
        .stdout(contains("example nodes built on the qkd crates").not());
}

#[test]
fn kms_sync_good_run() {
    kms_sync(&[
        "--seconds",
        "0.2",
        "--block-bytes",
        "65536",
        "--threads",
        "1",
        "--batch",
        "8",
    ])
    .assert()
    .success()
    .stdout(contains("collisions: 0"))
    .stdout(contains("matched: 0 ").not());
}

/// A request larger than four blocks (64 keys of 8192 bits = 64 KiB, blocks
/// of 2 KiB) used to leave the feeder idle below its refill mark: no key was
/// ever taken and the run still exited 0.
#[test]
fn kms_sync_requests_larger_than_the_refill_mark_still_get_keys() {
    kms_sync(&[
        "--seconds",
        "0.3",
        "--block-bytes",
        "2048",
        "--key-bits",
        "8192",
        "--threads",
        "1",
        "--channel",
        "plain",
    ])
    .assert()
    .success()
    .stdout(contains("collisions: 0"))
    .stdout(contains("matched: 0 ").not());
}
