//! `kms-sync` over the qkd-handshake secured channel: both suites and plain
//! TCP end without a collision; an unknown channel is refused.

use std::process::Command;

fn kms_sync(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kms-sync"))
        .args(args)
        .output()
        .expect("run kms-sync");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_channel_ends_without_a_collision() {
    for channel in ["QKD_AES_256_GCM_BLAKE3", "QKD_OTP_WC_POLYVAL", "plain"] {
        let (code, stdout, stderr) = kms_sync(&["--seconds", "0.3", "--channel", channel]);
        assert_eq!(code, Some(0), "{channel}: {stdout}\n{stderr}");
        let last = stdout.lines().last().unwrap_or_default();
        assert!(last.ends_with("collisions: 0"), "{channel}: {last}");
        assert!(
            !last.contains("matched: 0 "),
            "{channel}: no key matched: {last}"
        );
        assert!(!stderr.contains("channel failed"), "{channel}: {stderr}");
        if channel != "plain" {
            assert!(stdout.contains(&format!("channel {channel}")), "{stdout}");
        }
    }
}

#[test]
fn an_unknown_channel_is_refused() {
    let (code, _, stderr) = kms_sync(&["--channel", "ROT13"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--channel"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}
