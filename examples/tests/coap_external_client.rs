//! The `qpm` flow, with real `qkd-link` hosts, driven by a CoAP client we
//! did not write: `coap-client`
//! from libcoap (Debian: `apt-get install libcoap3-bin`, installed as
//! `coap-client-notls` and friends) or `aiocoap-client` (PyPI:
//! `pip install aiocoap`). The test installs nothing: it looks for either
//! on `PATH` and, when neither is there, says so and passes without
//! running. `.ci/run` installs libcoap where it can.
//!
//! ```sh
//! apt-get install -y libcoap3-bin      # or: python3 -m pip install aiocoap
//! cargo test -p qkd-examples --test coap_external_client -- --nocapture
//! ```

#![allow(clippy::print_stderr)] // the skip message and the client used, for the CI log

mod fixture;

use fixture::link::{LinkSetup, block_lines, scratch};

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
enum Client {
    Libcoap(PathBuf),
    Aiocoap(PathBuf),
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn find_client() -> Option<Client> {
    for name in [
        "coap-client",
        "coap-client-notls",
        "coap-client-openssl",
        "coap-client-gnutls",
    ] {
        if let Some(p) = on_path(name) {
            return Some(Client::Libcoap(p));
        }
    }
    on_path("aiocoap-client").map(Client::Aiocoap)
}

/// What the client printed, and whether it reported an error code.
struct Outcome {
    text: String,
}

impl Client {
    fn run(&self, method: &str, uri: &str, payload: Option<&str>) -> Outcome {
        let mut cmd = match self {
            Client::Libcoap(p) => {
                let mut c = Command::new(p);
                c.args(["-m", method, "-B", "10", "-v", "3"]);
                if let Some(body) = payload {
                    c.args(["-t", "50", "-e", body]);
                }
                c.arg(uri);
                c
            }
            Client::Aiocoap(p) => {
                let mut c = Command::new(p);
                c.args(["-m", &method.to_uppercase()]);
                if let Some(body) = payload {
                    c.args(["--content-format", "application/json", "--payload", body]);
                }
                c.arg(uri);
                c
            }
        };
        let out = cmd.stdin(Stdio::null()).output().expect("the client runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Outcome { text }
    }
}

struct Running(Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn qpm_driven_by_an_outside_coap_client() {
    let Some(client) = find_client() else {
        eprintln!(
            "SKIPPED: no outside CoAP client on PATH (looked for coap-client, coap-client-notls, \
             coap-client-openssl, coap-client-gnutls, aiocoap-client); install one with \
             `apt-get install libcoap3-bin` or `python3 -m pip install aiocoap`"
        );
        return;
    };
    eprintln!("using {client:?}");
    // Real `qkd-link` hosts (alice and bob of link `tuning`), as in
    // tests/qpm_link.rs, from a layout and a secret written here.
    let dir = scratch("external-client");
    let setup = LinkSetup::write(&dir);
    let _qpm = Running(
        Command::new(env!("CARGO_BIN_EXE_qpm"))
            .arg("--layout")
            .arg(&setup.layout)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("coap://{}", setup.qpm);
    let link = format!("{base}/links/tuning");
    let wait_for = |what: &str, uri: &str, needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = client.run("get", uri, None);
            if o.text.contains(needle) {
                return o;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: `{needle}` never appeared; last:\n{}",
                o.text
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for("the link runs", &link, "\"state\":\"running\"");

    // Discovery (the QPM's tree and, through it, a host's), statistics, a
    // parameter changed and read back, in effect in the next blocks.
    let o = client.run("get", &format!("{base}/.well-known/core"), None);
    assert!(o.text.contains("</links/tuning/hibernate>"), "{}", o.text);
    let o = client.run("get", &format!("{link}/alice/.well-known/core"), None);
    assert!(o.text.contains("</modules/cascade/params"), "{}", o.text);
    let stats = format!("{link}/alice/modules/amplify/stats");
    let o = client.run("get", &stats, None);
    assert!(o.text.contains("\"name\":\"blocks_out\""), "{}", o.text);
    let param = format!("{link}/alice/modules/confirm/params/tag_bits");
    client.run("put", &param, Some("96"));
    let o = client.run("get", &param, None);
    assert!(o.text.trim_end().ends_with("96"), "{}", o.text);
    // Bob's blocks take Alice's value (announced with each block).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !block_lines(&setup.host_dir("tuning", "bob"))
        .iter()
        .any(|l| l["confirm_tag_bits"] == 96)
    {
        assert!(
            Instant::now() < deadline,
            "no block of bob's used the new tag length"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Errors come back as CoAP codes the client shows.
    let o = client.run("put", &param, Some("7"));
    assert!(
        o.text.contains("4.00") || o.text.contains("Bad Request"),
        "{}",
        o.text
    );
    let o = client.run("get", &format!("{link}/alice/modules/nothing/stats"), None);
    assert!(
        o.text.contains("4.04") || o.text.contains("Not Found"),
        "{}",
        o.text
    );

    // Hibernate and resume: the parameter comes back with the state.
    let o = client.run("post", &format!("{link}/hibernate"), None);
    assert!(o.text.contains("\"state\":\"hibernated\""), "{}", o.text);
    let o = client.run("post", &format!("{link}/resume"), None);
    assert!(o.text.contains("\"state\":\"starting\""), "{}", o.text);
    wait_for("the link resumes", &link, "\"state\":\"running\"");
    let o = client.run("get", &param, None);
    assert!(
        o.text.trim_end().ends_with("96"),
        "the parameter came back with the state: {}",
        o.text
    );
    let o = client.run("post", &format!("{link}/save"), None);
    assert!(o.text.contains("\"saved_state\""), "{}", o.text);

    client.run("post", &format!("{link}/stop"), None);
}
