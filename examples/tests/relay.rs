//! Runs `kms-relay`: A and C end with the same keys; a hop without link key
//! is a clear error with nothing delivered in part; careless arguments fail
//! cleanly.

use std::collections::HashMap;
use std::process::Command;

fn relay(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kms-relay"))
        .args(args)
        .output()
        .expect("run kms-relay");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The check values per key ID printed for node `node`.
fn held(stdout: &str, node: &str) -> HashMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[0] == node).then(|| (f[1].to_owned(), f[2].to_owned()))
        })
        .collect()
}

#[test]
fn a_and_c_hold_the_same_keys_with_both_suites() {
    for suite in ["QKD_AES_256_GCM_BLAKE3", "QKD_OTP_WC_POLYVAL"] {
        let (code, stdout, stderr) = relay(&["--keys", "6", "--suite", suite]);
        assert_eq!(code, Some(0), "{suite}: {stdout}\n{stderr}");
        let (a, c) = (held(&stdout, "A"), held(&stdout, "C"));
        assert_eq!(a.len(), 6, "{stdout}");
        assert_eq!(a, c, "{suite}");
        assert!(
            stdout
                .trim_end()
                .ends_with("relayed: 6  delivered: 6  matched: 6  failed: 0"),
            "{stdout}"
        );
    }
}

#[test]
fn a_hop_without_link_key_is_an_error_not_a_partial_delivery() {
    let (code, stdout, stderr) = relay(&["--keys", "5", "--bc-link-keys", "2"]);
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("no link key"), "{stderr}");
    let (a, c) = (held(&stdout, "A"), held(&stdout, "C"));
    assert_eq!(a.len(), 2);
    assert_eq!(a, c, "C holds exactly the keys A counts as delivered");
    assert!(
        stdout.contains("delivered: 2  matched: 2  failed: 3"),
        "{stdout}"
    );
}

#[test]
fn careless_arguments_fail_cleanly() {
    for args in [
        &["--key-bytes", "0"][..],
        &["--key-bytes", "100000"],
        &["--keys", "0"],
        &["--timeout", "NaN"],
        &["--timeout", "-1"],
        &["--suite", "ROT13"],
        &["--keys", "many"],
    ] {
        let (code, _, stderr) = relay(args);
        assert!(matches!(code, Some(c) if c != 0), "{args:?}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.is_empty(), "{args:?}");
    }
}
