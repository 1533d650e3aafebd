//! `kms-node demo`: the whole link on loopback in one process.
//!
//! Generates a throw-away CA and certificates, writes two node
//! configurations (KME_A, KME_B), starts both nodes (HTTPS for SAEs, the
//! qkd-handshake + qkd-sync link between them, and the QKD link itself:
//! Alice's end of the distillation pipeline on KME_A and Bob's on KME_B,
//! each fed by its end of the simulated BB84 device, their final keys
//! filling the two stores), then the master SAE_A asks node A for keys (`enc_keys`)
//! and the slave SAE_B asks node B for the same IDs (`dec_keys`), over
//! HTTPS with client certificates. It checks every key matches, that a key
//! is delivered only once, prints
//! the statistics and exits 0 only if all of that held.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qkd_core::SecretKey;
use qkd_etsi014::KeyContainer;

use crate::certs::{CertRequest, generate};
use crate::client::SaeClient;
use crate::config::NodeConfig;
use crate::node::{Node, Snapshot};
use crate::{RunningNode, start_node};

/// Demo settings (from the command line).
#[derive(Debug, Clone)]
pub(crate) struct DemoArgs {
    /// Keys to exchange.
    pub(crate) keys: usize,
    /// Key size in bits.
    pub(crate) size: u32,
    /// Keys per request.
    pub(crate) batch: usize,
    /// Keep the generated folder (certificates, configurations) here.
    pub(crate) dir: Option<PathBuf>,
}

/// How long the demo waits for the first final key in both stores.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long an `enc_keys` answered 503 (the pipeline has not distilled
/// enough key yet) is retried.
const KEYS_WITHIN: Duration = Duration::from_secs(60);

/// Free loopback ports (bound and released; the nodes bind them next).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// The TOML of one demo node.
pub(crate) fn node_toml(
    kme: &str,
    peer: &str,
    sae: &str,
    peer_sae: &str,
    role: &str,
    https: u16,
    [link_listen, link_peer, pipeline_listen, pipeline_peer]: [u16; 4],
) -> String {
    format!(
        r#"kme_id = "{kme}"
listen = "127.0.0.1:{https}"

[tls]
ca = "ca.pem"
cert = "{kme}.pem"
key = "{kme}.key"
sae_id_from = "subject_cn"

[[sae]]
id = "{sae}"

[keys]
default_size = 256
min_size = 64
max_size = 8192
max_per_request = 1000
max_additional_slaves = 0
dec_wait_ms = 2000
max_body_bytes = 65536
max_waiting = 1024

[store]
capacity_bytes = 268435456
chunk_bytes = 1024
key_ttl_s = 3600

[peer]
kme_id = "{peer}"
saes = ["{peer_sae}"]
link_listen = "127.0.0.1:{link_listen}"
link_address = "127.0.0.1:{link_peer}"
initial_secret_file = "link.secret"
link_state_file = "{kme}.link-state"

[source]
kind = "pipeline"
role = "{role}"
link_listen = "127.0.0.1:{pipeline_listen}"
link_address = "127.0.0.1:{pipeline_peer}"
seed = 7
frame_slots = 4000000
qber = 0.02
detection_probability = 0.5
z_basis_probability = 0.5
workers = 1
"#
    )
}

/// Runs the demo; `Ok(true)` when every check held.
pub(crate) fn run(args: &DemoArgs) -> Result<bool, Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let (dir, remove) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => {
            let mut nonce = [0u8; 8];
            getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
            let d = std::env::temp_dir().join(format!(
                "kms-node-demo-{}-{:016x}",
                std::process::id(),
                u64::from_le_bytes(nonce)
            ));
            (d, true)
        }
    };
    let result = run_in(args, &dir, t0);
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(args: &DemoArgs, dir: &Path, t0: Instant) -> Result<bool, Box<dyn std::error::Error>> {
    generate(&CertRequest {
        out: dir.to_owned(),
        ca_name: "kms-node demo CA".into(),
        kmes: vec!["KME_A".into(), "KME_B".into()],
        saes: vec!["SAE_A".into(), "SAE_B".into()],
        secret: true,
        bootstrap_pads: 0,
    })?;
    let p = free_ports(6)?;
    let a_path = dir.join("node-a.toml");
    let b_path = dir.join("node-b.toml");
    std::fs::write(
        &a_path,
        node_toml(
            "KME_A",
            "KME_B",
            "SAE_A",
            "SAE_B",
            "alice",
            p[0],
            [p[2], p[3], p[4], p[5]],
        ),
    )?;
    std::fs::write(
        &b_path,
        node_toml(
            "KME_B",
            "KME_A",
            "SAE_B",
            "SAE_A",
            "bob",
            p[1],
            [p[3], p[2], p[5], p[4]],
        ),
    )?;
    let a_cfg = NodeConfig::load(&a_path)?;
    let b_cfg = NodeConfig::load(&b_path)?;
    println!(
        "certificates and configurations in {} ({} ms)",
        dir.display(),
        t0.elapsed().as_millis()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ok = rt.block_on(async {
        let a = start_node(&a_cfg).await?;
        let b = start_node(&b_cfg).await?;
        println!(
            "node KME_A on https://{}, node KME_B on https://{}; link {} <-> {}",
            a.https, b.https, a_cfg.peer.link_listen, b_cfg.peer.link_listen
        );
        let ready = Instant::now();
        while !(a.node.is_ready() && b.node.is_ready()) {
            if ready.elapsed() > READY_WITHIN {
                return Err::<bool, Box<dyn std::error::Error>>(
                    format!(
                        "the nodes did not pair and receive final key within {} s",
                        READY_WITHIN.as_secs()
                    )
                    .into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!(
            "link up: handshake done, stores paired, first final key distilled and stored in {} ms",
            ready.elapsed().as_millis()
        );
        let ok = exchange(args, dir, &a, &b).await;
        a.node.quiesce();
        b.node.quiesce();
        a.stop().await;
        b.stop().await;
        ok
    })?;
    println!("total {:.2} s", t0.elapsed().as_secs_f64());
    Ok(ok)
}

async fn exchange(
    args: &DemoArgs,
    dir: &Path,
    a: &RunningNode,
    b: &RunningNode,
) -> Result<bool, Box<dyn std::error::Error>> {
    let ca = dir.join("ca.pem");
    let mut master =
        SaeClient::connect(a.https, &ca, &dir.join("SAE_A.pem"), &dir.join("SAE_A.key")).await?;
    let mut slave =
        SaeClient::connect(b.https, &ca, &dir.join("SAE_B.pem"), &dir.join("SAE_B.key")).await?;

    let (status, body) = master
        .call("GET", "/api/v1/keys/SAE_B/status", None)
        .await?;
    println!(
        "SAE_A  GET  /api/v1/keys/SAE_B/status -> {status} {}",
        String::from_utf8_lossy(&body)
    );

    let mut matched = 0usize;
    let mut mismatched = 0usize;
    let mut enc_time = Duration::ZERO;
    let mut dec_time = Duration::ZERO;
    let mut first_id = None;
    let mut seen = std::collections::HashSet::new();
    let mut repeated = 0usize;
    let mut waits = 0u64;
    let mut remaining = args.keys;
    while remaining > 0 {
        let n = remaining.min(args.batch);
        remaining -= n;
        let asked = Instant::now();
        let (status, body) = loop {
            let t = Instant::now();
            let (status, body) = master
                .call(
                    "POST",
                    "/api/v1/keys/SAE_B/enc_keys",
                    Some(format!(r#"{{"number": {n}, "size": {}}}"#, args.size)),
                )
                .await?;
            enc_time += t.elapsed();
            // 503: the pipeline has not distilled enough key yet; an SAE
            // asks again a little later.
            if status != 503 || asked.elapsed() > KEYS_WITHIN {
                break (status, body);
            }
            waits += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if status != 200 {
            println!(
                "enc_keys answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
            return Ok(false);
        }
        let enc: KeyContainer = serde_json::from_slice(&body)?;
        // Each key leaves KME_A once: no ID may come back.
        repeated += enc.keys.iter().filter(|k| !seen.insert(k.key_id)).count();
        let mut ids = String::from(r#"{"key_IDs": ["#);
        for (i, k) in enc.keys.iter().enumerate() {
            if i > 0 {
                ids.push(',');
            }
            let _ = write!(ids, r#"{{"key_ID": "{}"}}"#, k.key_id);
        }
        ids.push_str("]}");
        let t = Instant::now();
        let (status, body) = slave
            .call("POST", "/api/v1/keys/SAE_A/dec_keys", Some(ids))
            .await?;
        dec_time += t.elapsed();
        if status != 200 {
            println!(
                "dec_keys answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
            return Ok(false);
        }
        let dec: KeyContainer = serde_json::from_slice(&body)?;
        for (e, d) in enc.keys.iter().zip(&dec.keys) {
            let same_key: bool =
                e.key.len() * 8 == args.size as usize && keys_equal(&e.key, &d.key);
            if e.key_id == d.key_id && same_key {
                matched += 1;
            } else {
                mismatched += 1;
            }
        }
        mismatched += enc.keys.len().abs_diff(dec.keys.len()) + n.abs_diff(enc.keys.len());
        first_id.get_or_insert(enc.keys.first().map(|k| k.key_id));
    }

    // A key leaves each KME once: asking again is refused.
    let mut again_refused = false;
    if let Some(Some(id)) = first_id {
        let t = Instant::now();
        let (status, body) = slave
            .call(
                "GET",
                &format!("/api/v1/keys/SAE_A/dec_keys?key_ID={id}"),
                None,
            )
            .await?;
        again_refused = status == 400;
        println!(
            "SAE_B  GET  dec_keys of key {id} again -> {status} in {} ms {}",
            t.elapsed().as_millis(),
            String::from_utf8_lossy(&body)
        );
    }
    let total = args.keys;
    println!(
        "SAE_A enc_keys on KME_A, SAE_B dec_keys on KME_B: {total} keys of {} bits in batches of {}",
        args.size, args.batch
    );
    println!(
        "keys match: {matched} of {total}  mismatched: {mismatched}  repeated IDs: {repeated}  (enc {:.1} ms, dec {:.1} ms in all; {waits} enc_keys answered 503 while the pipeline caught up)",
        enc_time.as_secs_f64() * 1e3,
        dec_time.as_secs_f64() * 1e3
    );
    for (name, n) in [("KME_A", &a.node), ("KME_B", &b.node)] {
        let snapshot = n.snapshot();
        print_pipeline(name, &snapshot);
        print_stats(name, &snapshot, n);
    }
    let ok = matched == total && mismatched == 0 && repeated == 0 && again_refused;
    println!(
        "{}",
        if ok {
            "ALL KEYS MATCHED"
        } else {
            "FAILED: see above"
        }
    );
    Ok(ok)
}

fn keys_equal(a: &SecretKey, b: &SecretKey) -> bool {
    a == b
}

/// The pipeline's numbers: blocks, QBER, secret fraction, final bits.
fn print_pipeline(name: &str, s: &Snapshot) {
    let Some(p) = &s.pipeline else {
        return;
    };
    let t = &p.stats;
    let fraction = if t.sifted_bits > 0 {
        t.final_bits as f64 / t.sifted_bits as f64
    } else {
        0.0
    };
    println!(
        "{name}: pipeline ({}) blocks kept {} dropped {} | sifted {:.2} Mbit, QBER {:.3} %, leaked {:.1} kbit | final {:.2} Mbit = secret fraction {:.1} % of sifted ({:.2} Mbit to the store, {:.1} kbit to authentication) | {:.2} s, {:.0} kbit/s secret key | auth key left {:.1} kbit | runs {}",
        match p.role {
            qkd_core::Role::Alice => "Alice",
            qkd_core::Role::Bob => "Bob",
        },
        t.blocks_kept,
        t.blocks_dropped,
        t.sifted_bits as f64 / 1e6,
        t.qber() * 100.0,
        (t.parity_bits + t.leftover_bits) as f64 / 1e3,
        t.final_bits as f64 / 1e6,
        fraction * 100.0,
        t.key_out_bits as f64 / 1e6,
        t.pool_bits as f64 / 1e3,
        t.elapsed_s,
        t.secret_key_rate() / 1e3,
        p.auth_key_left as f64 / 1e3,
        p.runs,
    );
}

fn print_stats(name: &str, s: &Snapshot, node: &Arc<Node>) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &node.counters;
    println!(
        "{name}: channel {} | blocks from source {} ({} KiB) | store: blocks stored {}, keys taken {}, fetched {}, fresh {} KiB, chunks lent {} borrowed {} | HTTP 2xx {} 4xx {} 5xx {} | handshakes {} sessions {} | link reserve: {} carved, {} live, {} used here; initial-secret expansion keys used below {:?}",
        s.suite.as_deref().unwrap_or("-"),
        s.source_blocks,
        s.source_bytes >> 10,
        s.store.blocks_stored,
        s.store.keys_taken,
        s.store.keys_fetched,
        s.store.fresh_bytes >> 10,
        s.store.chunks_lent,
        s.store.chunks_borrowed,
        c.ok.load(Relaxed),
        c.client_errors.load(Relaxed),
        c.server_errors.load(Relaxed),
        c.handshakes.load(Relaxed),
        c.sessions.load(Relaxed),
        s.reserve.carved,
        s.reserve.live[0] + s.reserve.live[1],
        s.reserve.used,
        s.link_key_floors,
    );
}
