//! `qpm` end to end with fixture hosts (this test binary started as child
//! processes, see `fixture/mod.rs`): two links at once, registrations and
//! refusals, statistics and parameters through the union tree, hibernate
//! and resume, a host killed with SIGKILL restarted from its saved state,
//! bounded restarts, a restarted QPM adopting the hosts still running, and
//! careless input.

mod fixture;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qkd_core::control::{JSON, Method, Status};
use qkd_examples::coap_client::{ClientResponse, CoapClient};
use serde_json::Value as Json;

#[test]
#[ignore = "not a test: the pipeline host that qpm starts as a child process"]
fn fixture_host() {
    fixture::run_if_asked();
}

struct Qpm {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    client: CoapClient,
}

impl Drop for Qpm {
    fn drop(&mut self) {
        // Stop every link (the hosts exit), then the QPM.
        if let Ok(r) = self
            .client
            .request(self.addr, Method::Get, "/links", None, &[])
            && let Ok(Json::Array(links)) = serde_json::from_slice::<Json>(&r.payload)
        {
            for l in links {
                let name = l["name"].as_str().unwrap_or_default().to_owned();
                let _ = self.client.request(
                    self.addr,
                    Method::Post,
                    &format!("/links/{name}/stop"),
                    None,
                    &[],
                );
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qpm-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn side(program: &str, args: &[String]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "address = \"127.0.0.1\"\nprogram = {program:?}\nargs = [{}]\n",
        args.join(", ")
    )
}

fn layout(dir: &Path, port: u16, links: &[&str], extra_args: &[&str], qpm_extra: &str) -> PathBuf {
    let (exe, args) = fixture::host_command(extra_args);
    let mut text = format!(
        "[qpm]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"states\"\nhost_timeout_ms = 2500\n\
         adopt_wait_ms = 100\nproxy_timeout_ms = 2000\nmax_restarts = 3\n{qpm_extra}\n"
    );
    for l in links {
        text.push_str(&format!(
            "[[link]]\nname = \"{l}\"\n[link.alice]\n{}[link.bob]\n{}\n",
            side(&exe, &args),
            side(&exe, &args)
        ));
    }
    let path = dir.join("layout.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start_qpm(dir: &Path, layout: &Path, port: u16) -> Qpm {
    let log =
        std::fs::File::create(dir.join(format!("qpm-{}.log", Instant::now().elapsed().as_nanos())))
            .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_qpm"))
        .arg("--layout")
        .arg(layout)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Qpm {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        dir: dir.to_owned(),
        client: CoapClient::new(Duration::from_secs(5)).unwrap(),
    }
}

impl Qpm {
    fn ask(&mut self, method: Method, path: &str, payload: &[u8]) -> ClientResponse {
        let cf = (!payload.is_empty()).then_some(JSON);
        self.client
            .request(self.addr, method, path, cf, payload)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    fn json(&mut self, path: &str) -> Json {
        let r = self.ask(Method::Get, path, &[]);
        assert_eq!(
            r.status(),
            Some(Status::Content),
            "GET {path}: {} {}",
            r.code_text(),
            r.text()
        );
        serde_json::from_slice(&r.payload).unwrap()
    }

    fn log(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("qpm-") {
                    out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    /// Waits until `check` holds on `GET /links/{link}`.
    fn wait_link(&mut self, link: &str, what: &str, check: impl Fn(&Json) -> bool) -> Json {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.json(&format!("/links/{link}"));
            if check(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "link {link} never {what}: {v}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stat(&mut self, path: &str, name: &str) -> Json {
        let stats = self.json(path);
        stats
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no statistic {name} in {stats}"))["value"]
            .clone()
    }
}

fn running(v: &Json) -> bool {
    v["state"] == "running"
}

#[test]
fn qpm_runs_two_links_hibernates_resumes_and_restarts_a_killed_host() {
    let dir = temp_dir("main");
    let port = free_port();
    let path = layout(&dir, port, &["ground-1", "ground-2"], &[], "");
    let mut qpm = start_qpm(&dir, &path, port);

    // Both links start, all four hosts register.
    let g1 = qpm.wait_link("ground-1", "ran", running);
    qpm.wait_link("ground-2", "ran", running);
    assert_eq!(g1["hosts"][0]["state"], "registered");
    assert_eq!(g1["hosts"][1]["name"], "ground-1/bob");

    // Discovery of the QPM's tree and, through it, of a host's.
    let r = qpm.ask(Method::Get, "/.well-known/core", &[]);
    assert!(
        r.text().contains("</links/ground-2/hibernate>"),
        "{}",
        r.text()
    );
    let r = qpm.ask(Method::Get, "/links/ground-1/alice/.well-known/core", &[]);
    assert!(
        r.text()
            .contains("</modules/source/stats>;ct=50;rt=\"qkd.stats\";obs"),
        "{}",
        r.text()
    );

    // Statistics and parameters through the union tree.
    assert_eq!(
        qpm.json("/links/ground-1/alice/modules"),
        serde_json::json!(["source"])
    );
    let stats = "/links/ground-1/alice/modules/source/stats";
    let b0 = qpm.stat(stats, "blocks").as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        qpm.stat(stats, "blocks").as_u64().unwrap() > b0,
        "blocks advance"
    );

    let param = "/links/ground-1/alice/modules/source/params/block_bits";
    let r = qpm.ask(Method::Put, param, b"1000");
    assert_eq!(
        (r.status(), r.text().as_str()),
        (Some(Status::Changed), "1000")
    );
    assert_eq!(qpm.ask(Method::Get, param, &[]).text(), "1000");
    let deadline = Instant::now() + Duration::from_secs(5);
    while qpm.stat(stats, "last_block_bits") != 1000 {
        assert!(
            Instant::now() < deadline,
            "the new block length never took effect"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The other side and the other link are untouched.
    assert_eq!(
        qpm.ask(
            Method::Get,
            "/links/ground-1/bob/modules/source/params/block_bits",
            &[]
        )
        .text(),
        "4096"
    );

    // Bad requests get their codes and leave everything running.
    for (method, p, body, status) in [
        (Method::Put, param, &b"10"[..], Status::BadRequest),
        (Method::Put, param, b"\"many\"", Status::BadRequest),
        (
            Method::Put,
            "/links/ground-1/alice/modules/source/params/owner",
            b"\"x\"",
            Status::MethodNotAllowed,
        ),
        (
            Method::Get,
            "/links/ground-1/alice/modules/nothing/stats",
            b"",
            Status::NotFound,
        ),
        (
            Method::Get,
            "/links/ground-9/alice/modules",
            b"",
            Status::NotFound,
        ),
        (
            Method::Get,
            "/links/ground-1/carol/modules",
            b"",
            Status::NotFound,
        ),
        (
            Method::Delete,
            "/links/ground-1/alice/modules/source/params/block_bits",
            b"",
            Status::MethodNotAllowed,
        ),
        (
            Method::Get,
            "/links/ground-1/hibernate",
            b"",
            Status::MethodNotAllowed,
        ),
        (Method::Post, "/links/ground-1/start", b"", Status::Conflict),
    ] {
        let r = qpm.ask(method, p, body);
        assert_eq!(
            r.status(),
            Some(status),
            "{method} {p}: {} {}",
            r.code_text(),
            r.text()
        );
    }

    // Registrations from strangers are refused.
    let reg = |name: &str, pid: u32| serde_json::json!({ "name": name, "pid": pid }).to_string();
    let r = qpm.ask(Method::Post, "/hosts", reg("ground-1/alice", 1).as_bytes());
    assert_eq!(
        r.status(),
        Some(Status::Conflict),
        "duplicate name: {}",
        r.text()
    );
    let r = qpm.ask(Method::Post, "/hosts", reg("ground-7/alice", 1).as_bytes());
    assert_eq!(
        r.status(),
        Some(Status::Forbidden),
        "unknown host: {}",
        r.text()
    );
    let r = qpm.ask(Method::Post, "/hosts", b"{\"name\":1}");
    assert_eq!(r.status(), Some(Status::BadRequest));
    // Garbage datagrams do not stop the QPM.
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for d in [
        &b""[..],
        b"\x40",
        b"\x40\x01\x00\x01\xff",
        b"\x4f\x01\x00\x01",
        &[0xff; 64],
    ] {
        s.send_to(d, qpm.addr).unwrap();
    }
    qpm.wait_link("ground-1", "stayed up", running);

    // Hibernate: both sides save, then stop.
    let r = qpm.ask(Method::Post, "/links/ground-1/hibernate", b"");
    assert_eq!(
        r.status(),
        Some(Status::Changed),
        "{}\n{}",
        r.text(),
        qpm.log()
    );
    let v: Json = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(v["state"], "hibernated");
    let label = v["hosts"][0]["saved_state"].as_str().unwrap().to_owned();
    let saved = fixture::read_state(&dir.join("states/ground-1/alice").join(&label));
    assert_eq!(saved.block_bits, 1000);
    assert!(saved.blocks > b0);
    let r = qpm.ask(Method::Get, "/links/ground-1/alice/modules", &[]);
    assert_eq!(r.status(), Some(Status::ServiceUnavailable));
    qpm.wait_link("ground-2", "kept running", running);

    // Resume: each side continues from exactly its saved state.
    let r = qpm.ask(Method::Post, "/links/ground-1/resume", b"");
    assert_eq!(r.status(), Some(Status::Changed), "{}", r.text());
    qpm.wait_link("ground-1", "resumed", running);
    assert_eq!(qpm.stat(stats, "resumed_blocks"), saved.blocks);
    assert_eq!(
        qpm.ask(Method::Get, param, &[]).text(),
        "1000",
        "parameters come back with the state"
    );
    let bob_saved = fixture::read_state(
        &dir.join("states/ground-1/bob")
            .join(v["hosts"][1]["saved_state"].as_str().unwrap()),
    );
    assert_eq!(
        qpm.stat("/links/ground-1/bob/modules/source/stats", "resumed_blocks"),
        bob_saved.blocks
    );

    // SIGKILL one host: the link is restarted from the last saved states.
    let pid = qpm.json("/links/ground-1")["hosts"][1]["pid"]
        .as_u64()
        .unwrap();
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let v = qpm.wait_link("ground-1", "restarted", |v| {
        running(v) && v["restarts"] == 1 && v["hosts"][1]["pid"].as_u64() != Some(pid)
    });
    assert_eq!(v["hosts"][1]["saved_state"], bob_saved_label(&v));
    assert_eq!(
        qpm.stat("/links/ground-1/bob/modules/source/stats", "resumed_blocks"),
        bob_saved.blocks,
        "restarted from its saved state\n{}",
        qpm.log()
    );
    assert!(
        qpm.log()
            .contains("restart 1 of 3 from the last saved states"),
        "{}",
        qpm.log()
    );
    qpm.wait_link("ground-2", "kept running", running);
    assert_eq!(qpm.json("/links/ground-2")["restarts"], 0);
}

fn bob_saved_label(v: &Json) -> Json {
    v["hosts"][1]["saved_state"].clone()
}

#[test]
fn a_host_that_keeps_failing_is_restarted_a_bounded_number_of_times() {
    let dir = temp_dir("crash");
    let port = free_port();
    let path = layout(&dir, port, &["flaky"], &["crash=1"], "");
    let mut qpm = start_qpm(&dir, &path, port);
    let v = qpm.wait_link("flaky", "failed", |v| v["state"] == "failed");
    assert_eq!(v["restarts"], 3);
    let log = qpm.log();
    assert!(log.contains("restart 3 of 3"), "{log}");
    assert!(log.contains("3 restarts used, leaving it stopped"), "{log}");
    // An operator's start tries again.
    let r = qpm.ask(Method::Post, "/links/flaky/start", b"");
    assert_eq!(r.status(), Some(Status::Changed));
}

#[test]
fn a_link_that_ran_without_a_saved_state_is_not_restarted_fresh() {
    let dir = temp_dir("nofresh");
    let port = free_port();
    let path = layout(&dir, port, &["once"], &[], "");
    let mut qpm = start_qpm(&dir, &path, port);
    let v = qpm.wait_link("once", "ran", running);
    let pid = v["hosts"][0]["pid"].as_u64().unwrap();
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let v = qpm.wait_link("once", "failed", |v| v["state"] == "failed");
    assert_eq!(v["restarts"], 0, "no fresh restart: {v}");
    let log = qpm.log();
    assert!(
        log.contains("not restarted: it ran and has no saved state"),
        "{log}"
    );
    // An operator's start is a new run.
    let r = qpm.ask(Method::Post, "/links/once/start", b"");
    assert_eq!(r.status(), Some(Status::Changed));
    qpm.wait_link("once", "ran again", running);
}

#[test]
fn a_restarted_qpm_adopts_the_hosts_that_register_again() {
    let dir = temp_dir("adopt");
    let port = free_port();
    let path = layout(&dir, port, &["sat"], &[], "");
    let mut qpm = start_qpm(&dir, &path, port);
    let v = qpm.wait_link("sat", "ran", running);
    let pids: Vec<Json> = (0..2).map(|h| v["hosts"][h]["pid"].clone()).collect();

    // The QPM dies; its hosts keep running and keep registering.
    qpm.child.kill().unwrap();
    qpm.child.wait().unwrap();
    let path2 = dir.join("layout2.toml");
    std::fs::write(
        &path2,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("adopt_wait_ms = 100", "adopt_wait_ms = 2000"),
    )
    .unwrap();
    let mut qpm2 = start_qpm(&dir, &path2, port);
    let v = qpm2.wait_link("sat", "adopted", running);
    for h in 0..2 {
        assert_eq!(
            v["hosts"][h]["pid"], pids[h],
            "the same processes, none started anew"
        );
    }
    assert_eq!(
        qpm2.json("/links/sat/alice/modules"),
        serde_json::json!(["source"])
    );
    // Stopping reaches the adopted hosts too.
    let r = qpm2.ask(Method::Post, "/links/sat/stop", b"");
    assert_eq!(r.status(), Some(Status::Changed));
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in pids {
        let pid = pid.as_u64().unwrap().to_string();
        while Command::new("kill")
            .args(["-0", &pid])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "adopted host {pid} did not shut down"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(qpm);
}

#[test]
fn qpm_refuses_careless_input() {
    let out = Command::new(env!("CARGO_BIN_EXE_qpm"))
        .args(["--layout", "/nonexistent/layout.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/layout.toml"));

    let dir = temp_dir("careless");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[qpm]\nhost_timeout_ms = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qpm"))
        .arg("--layout")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("qpm.host_timeout_ms"));

    std::fs::write(&bad, "[[link]]\nname = \"x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qpm"))
        .arg("--layout")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("alice"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for run_for in ["0", "-1", "NaN", "inf"] {
        let out = Command::new(env!("CARGO_BIN_EXE_qpm"))
            .args(["--layout", "x.toml", "--run-for", run_for])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--run-for {run_for}");
    }

    // A port in use is a clear error.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qpm"))
        .arg("--layout")
        .arg(&good)
        .arg("--listen")
        .arg(taken.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on"));
}
