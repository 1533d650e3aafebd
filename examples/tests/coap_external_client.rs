//! The `qpm` flow driven by a CoAP client we did not write: `coap-client`
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

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[test]
#[ignore = "not a test: the pipeline host that qpm starts as a child process"]
fn fixture_host() {
    fixture::run_if_asked();
}

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
    let dir = std::env::temp_dir().join(format!("qpm-external-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (exe, args) = fixture::host_command(&[]);
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    let side = format!(
        "address = \"127.0.0.1\"\nprogram = {exe:?}\nargs = [{}]\n",
        args.join(", ")
    );
    let layout = format!(
        "[qpm]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"states\"\nhost_timeout_ms = 2500\nadopt_wait_ms = 100\n\
         [[link]]\nname = \"ground-1\"\n[link.alice]\n{side}[link.bob]\n{side}"
    );
    std::fs::write(dir.join("layout.toml"), layout).unwrap();
    let _qpm = Running(
        Command::new(env!("CARGO_BIN_EXE_qpm"))
            .arg("--layout")
            .arg(dir.join("layout.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("coap://127.0.0.1:{port}");
    let link = format!("{base}/links/ground-1");
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

    // Discovery, statistics, a parameter changed and read back.
    let o = client.run("get", &format!("{base}/.well-known/core"), None);
    assert!(o.text.contains("</links/ground-1/hibernate>"), "{}", o.text);
    let stats = format!("{link}/alice/modules/source/stats");
    let o = client.run("get", &stats, None);
    assert!(o.text.contains("\"name\":\"blocks\""), "{}", o.text);
    let param = format!("{link}/alice/modules/source/params/block_bits");
    client.run("put", &param, Some("1000"));
    let o = client.run("get", &param, None);
    assert!(o.text.trim_end().ends_with("1000"), "{}", o.text);
    wait_for(
        "the new block length takes effect",
        &stats,
        "{\"name\":\"last_block_bits\",\"value\":1000,",
    );

    // Errors come back as CoAP codes the client shows.
    let o = client.run("put", &param, Some("10"));
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

    // Hibernate and resume.
    let o = client.run("post", &format!("{link}/hibernate"), None);
    assert!(o.text.contains("\"state\":\"hibernated\""), "{}", o.text);
    let o = client.run("post", &format!("{link}/resume"), None);
    assert!(o.text.contains("\"state\":\"starting\""), "{}", o.text);
    wait_for("the link resumes", &link, "\"state\":\"running\"");
    let o = client.run("get", &param, None);
    assert!(
        o.text.trim_end().ends_with("1000"),
        "the parameter came back with the state: {}",
        o.text
    );
    let o = client.run("get", &stats, None);
    assert!(
        !o.text.contains("{\"name\":\"resumed_blocks\",\"value\":0,"),
        "{}",
        o.text
    );

    client.run("post", &format!("{link}/stop"), None);
}
