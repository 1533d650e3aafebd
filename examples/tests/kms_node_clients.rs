//! ETSI 014 client libraries we did not write, against two kms-node
//! processes: `etsi-qkd-014-client` and `qkdsec` from PyPI, driven by
//! `examples/kms-node/etsi_clients.py`.
//!
//! The Python interpreter is `$KMS_NODE_PYTHON`, else `.venv-etsi/bin/python`
//! at the workspace root (what `.ci/run` installs), else `python3`. The test
//! skips with a message when none has both libraries.

#![allow(clippy::print_stderr)]

#[path = "kms_node/fixture.rs"]
mod fixture;

use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL: &str = "python3 -m venv .venv-etsi && .venv-etsi/bin/pip install etsi-qkd-014-client==0.9.0 qkdsec==0.3.0";

fn python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.to_owned();
    let candidates = [
        std::env::var_os("KMS_NODE_PYTHON").map(PathBuf::from),
        Some(root.join(".venv-etsi/bin/python")),
        Some(PathBuf::from("python3")),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import etsi_qkd_014_client, qkdsec.client"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn two_python_etsi014_clients_round_trip_through_kms_node() {
    if !fixture::have_curl() {
        eprintln!("SKIPPED: curl is not installed (the fixture waits for the nodes with it)");
        return;
    }
    let Some(py) = python() else {
        eprintln!(
            "SKIPPED: no Python with etsi-qkd-014-client and qkdsec; install with: {INSTALL}"
        );
        return;
    };
    let n = fixture::Nodes::start("clients");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("kms-node/etsi_clients.py");
    let o = Command::new(&py)
        .arg(script)
        .arg(n.dir.join("certs"))
        .arg(n.a_port.to_string())
        .arg(n.b_port.to_string())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("{out}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "client checks failed:\n{out}");
    assert!(out.contains("0 failed"), "{out}");
    assert!(
        out.lines().filter(|l| l.starts_with("ok")).count() >= 10,
        "{out}"
    );
}
