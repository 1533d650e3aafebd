//! Shared fixture of the kms-node tests: certificates from `kms-node
//! certs`, the committed example configurations with free loopback ports,
//! two `kms-node run` processes, and curl with client certificates.

#![allow(dead_code, clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The built binary.
pub(crate) fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kms-node"))
}

/// Whether curl can be run.
pub(crate) fn have_curl() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Free loopback ports (bound, read, released).
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// A fresh folder under the system's temporary folder.
pub(crate) fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("kms-node-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `kms-node certs` into `out`.
pub(crate) fn certs(out: &Path, kmes: &[&str], saes: &[&str], secret: bool) {
    let mut c = Command::new(bin());
    c.arg("certs").arg("--out").arg(out);
    for k in kmes {
        c.args(["--kme", k]);
    }
    for s in saes {
        c.args(["--sae", s]);
    }
    if !secret {
        c.arg("--no-secret");
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "certs failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// An example configuration, as committed.
pub(crate) fn example(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("kms-node")
        .join(name);
    std::fs::read_to_string(p).unwrap()
}

/// The block source the nodes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// `kind = "simulated"`: blocks from a shared seed, at once.
    Simulated,
    /// `kind = "pipeline"`: the distillation pipeline, as committed.
    Pipeline,
}

/// Two nodes running as processes.
pub(crate) struct Nodes {
    pub(crate) dir: PathBuf,
    pub(crate) a: Option<Child>,
    pub(crate) b: Option<Child>,
    pub(crate) a_port: u16,
    pub(crate) b_port: u16,
    pub(crate) a_config: PathBuf,
    pub(crate) b_config: PathBuf,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in [self.a.as_mut(), self.b.as_mut()].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What curl returned: the HTTP status (None if no HTTP answer, e.g. a TLS
/// refusal), the body and the Content-Type.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: Option<u16>,
    pub(crate) body: String,
    pub(crate) content_type: String,
}

impl Answer {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub(crate) fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Nodes {
    /// Certificates, configurations (the examples with free ports and an
    /// extra SAE_C attached to KME_B, the simulated block source: these
    /// tests are about the API, and the debug build's pipeline would take
    /// the machine's cores), both nodes started, paired and holding key.
    pub(crate) fn start(name: &str) -> Nodes {
        Self::start_with(name, Source::Simulated)
    }

    /// As [`Nodes::start`], with the given block source.
    pub(crate) fn start_with(name: &str, source: Source) -> Nodes {
        let dir = temp_dir(name);
        certs(
            &dir.join("certs"),
            &["KME_A", "KME_B"],
            &["SAE_A", "SAE_B", "SAE_C", "SAE_X"],
            true,
        );
        certs(&dir.join("other"), &[], &["SAE_A", "SAE_B"], false);
        let p = free_ports(6);
        let source = |text: String| match source {
            Source::Simulated => text.replace(r#"kind = "pipeline""#, r#"kind = "simulated""#),
            // Smaller frames: the first final key comes sooner in a debug build.
            Source::Pipeline => text.replace("frame_slots = 4000000", "frame_slots = 1000000"),
        };
        let a = source(example("node-a.toml"))
            .replace("127.0.0.1:8443", &format!("127.0.0.1:{}", p[0]))
            .replace("127.0.0.1:9441", &format!("127.0.0.1:{}", p[2]))
            .replace("127.0.0.1:9442", &format!("127.0.0.1:{}", p[3]))
            .replace("127.0.0.1:9443", &format!("127.0.0.1:{}", p[4]))
            .replace("127.0.0.1:9444", &format!("127.0.0.1:{}", p[5]))
            .replace(r#"saes = ["SAE_B"]"#, r#"saes = ["SAE_B", "SAE_C"]"#);
        let b = source(example("node-b.toml"))
            .replace("127.0.0.1:8444", &format!("127.0.0.1:{}", p[1]))
            .replace("127.0.0.1:9441", &format!("127.0.0.1:{}", p[2]))
            .replace("127.0.0.1:9442", &format!("127.0.0.1:{}", p[3]))
            .replace("127.0.0.1:9443", &format!("127.0.0.1:{}", p[4]))
            .replace("127.0.0.1:9444", &format!("127.0.0.1:{}", p[5]))
            + "\n[[sae]]\nid = \"SAE_C\"\n";
        let (a_config, b_config) = (dir.join("node-a.toml"), dir.join("node-b.toml"));
        std::fs::write(&a_config, a).unwrap();
        std::fs::write(&b_config, b).unwrap();
        let mut n = Nodes {
            dir,
            a: None,
            b: None,
            a_port: p[0],
            b_port: p[1],
            a_config,
            b_config,
        };
        n.a = Some(spawn(&n.a_config));
        n.b = Some(spawn(&n.b_config));
        n.wait_ready();
        n
    }

    /// Waits until both nodes report key for the pair SAE_A/SAE_B.
    pub(crate) fn wait_ready(&self) {
        let t0 = Instant::now();
        for (port, sae, slave) in [
            (self.a_port, "SAE_A", "SAE_B"),
            (self.b_port, "SAE_B", "SAE_A"),
        ] {
            loop {
                let r = self.curl(
                    port,
                    Some(sae),
                    "GET",
                    &format!("/api/v1/keys/{slave}/status"),
                    None,
                );
                if r.status == Some(200) && r.json()["stored_key_count"].as_u64().unwrap_or(0) > 0 {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(90),
                    "nodes not ready within 90 s: {r:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Certificate and key of `sae` (from the nodes' CA).
    pub(crate) fn cert(&self, sae: &str) -> (PathBuf, PathBuf) {
        let d = self.dir.join("certs");
        (d.join(format!("{sae}.pem")), d.join(format!("{sae}.key")))
    }

    /// curl as `sae` (None: without a client certificate).
    pub(crate) fn curl(
        &self,
        port: u16,
        sae: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Answer {
        let cert = sae.map(|s| self.cert(s));
        self.curl_with(
            port,
            cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            method,
            path,
            body,
        )
    }

    /// curl with an explicit certificate and key.
    pub(crate) fn curl_with(
        &self,
        port: u16,
        cert: Option<(&Path, &Path)>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Answer {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "10", "-X", method])
            .arg("--cacert")
            .arg(self.dir.join("certs/ca.pem"))
            .args(["-o", "-", "-w", "\n%{http_code} %{content_type}"]);
        if let Some((cert, key)) = cert {
            c.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if let Some(b) = body {
            let file = self
                .dir
                .join(format!("body-{:?}", std::thread::current().id()).replace(['(', ')'], ""));
            std::fs::write(&file, b).unwrap();
            c.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(format!("@{}", file.display()));
        }
        c.arg(format!("https://127.0.0.1:{port}{path}"));
        let o = c.output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
        let (code, ct) = tail.split_once(' ').unwrap_or((tail, ""));
        let status = code.trim().parse::<u16>().ok().filter(|&c| c != 0);
        Answer {
            status,
            body: body.to_owned(),
            content_type: ct.trim().to_owned(),
        }
    }

    /// Stops node A with SIGTERM (graceful) and waits for it.
    pub(crate) fn stop_a(&mut self) -> std::process::ExitStatus {
        let mut c = self.a.take().expect("node A runs");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let t0 = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = c.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts node A again with its configuration.
    pub(crate) fn start_a(&mut self) {
        self.a = Some(spawn(&self.a_config));
    }
}

/// Starts `kms-node run --config` and waits for its "serving" line.
pub(crate) fn spawn(config: &Path) -> Child {
    let mut c = Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = c.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    match lines.next() {
        Some(Ok(l)) if l.contains("serving ETSI GS QKD 014") => {}
        other => {
            let _ = c.kill();
            panic!("kms-node did not start: {other:?}");
        }
    }
    // Keep draining stdout so that the node never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    c
}
