//! kms-node over real HTTPS on loopback: two `kms-node run` processes with
//! the committed example configurations, driven by curl with client
//! certificates (skipped, with a message, where curl is absent), and the
//! command line with careless input.

#![allow(clippy::print_stderr)]

#[path = "kms_node/fixture.rs"]
mod fixture;

use std::process::Command;
use std::time::{Duration, Instant};

use fixture::{Nodes, bin, have_curl};

const NOT_FOUND: &str = "one or more keys specified are not found on KME";

fn skip_without_curl() -> bool {
    if have_curl() {
        return false;
    }
    eprintln!(
        "SKIPPED: curl is not installed (apt-get install curl); the kms-node HTTPS tests need it"
    );
    true
}

/// Keys and IDs of a key container.
fn keys(a: &fixture::Answer) -> Vec<(String, String)> {
    a.json()["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("no keys: {}", a.body))
        .iter()
        .map(|k| {
            (
                k["key_ID"].as_str().unwrap().to_owned(),
                k["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn key_ids_body(ids: &[&str]) -> String {
    let entries: Vec<String> = ids
        .iter()
        .map(|i| format!(r#"{{"key_ID": "{i}"}}"#))
        .collect();
    format!(r#"{{"key_IDs": [{}]}}"#, entries.join(", "))
}

fn b64_len(bits: usize) -> usize {
    (bits / 8).div_ceil(3) * 4
}

#[test]
fn every_method_and_form_over_https_with_client_certificates() {
    if skip_without_curl() {
        return;
    }
    let n = Nodes::start("forms");
    let (a, b) = (n.a_port, n.b_port);

    // Status (GET).
    let s = n.curl(a, Some("SAE_A"), "GET", "/api/v1/keys/SAE_B/status", None);
    assert_eq!(s.status, Some(200), "{s:?}");
    assert_eq!(s.content_type, "application/json");
    let j = s.json();
    assert_eq!(j["source_KME_ID"], "KME_A");
    assert_eq!(j["target_KME_ID"], "KME_B");
    assert_eq!(j["master_SAE_ID"], "SAE_A");
    assert_eq!(j["slave_SAE_ID"], "SAE_B");
    assert_eq!(j["key_size"], 256);
    assert_eq!(j["max_key_per_request"], 1000);
    assert_eq!(j["max_SAE_ID_count"], 0);
    assert!(j["stored_key_count"].as_u64().unwrap() <= j["max_key_count"].as_u64().unwrap());

    // enc_keys by GET: no parameters (one key of the default size), then
    // number and size.
    let e1 = n.curl(a, Some("SAE_A"), "GET", "/api/v1/keys/SAE_B/enc_keys", None);
    assert_eq!(e1.status, Some(200), "{e1:?}");
    let k1 = keys(&e1);
    assert_eq!(k1.len(), 1);
    assert_eq!(k1[0].1.len(), b64_len(256));
    let e2 = n.curl(
        a,
        Some("SAE_A"),
        "GET",
        "/api/v1/keys/SAE_B/enc_keys?number=3&size=512",
        None,
    );
    assert_eq!(e2.status, Some(200), "{e2:?}");
    let k2 = keys(&e2);
    assert_eq!(k2.len(), 3);
    assert!(k2.iter().all(|k| k.1.len() == b64_len(512)));
    // enc_keys by POST.
    let e3 = n.curl(
        a,
        Some("SAE_A"),
        "POST",
        "/api/v1/keys/SAE_B/enc_keys",
        Some(r#"{"number": 2, "size": 128}"#),
    );
    assert_eq!(e3.status, Some(200), "{e3:?}");
    let k3 = keys(&e3);
    assert_eq!(k3.len(), 2);
    assert!(k3.iter().all(|k| k.1.len() == b64_len(128)));

    // dec_keys by GET (one ID) and by POST (several), at the other node.
    let d1 = n.curl(
        b,
        Some("SAE_B"),
        "GET",
        &format!("/api/v1/keys/SAE_A/dec_keys?key_ID={}", k1[0].0),
        None,
    );
    assert_eq!(d1.status, Some(200), "{d1:?}");
    assert_eq!(keys(&d1), k1);
    let ids: Vec<&str> = k2.iter().map(|k| k.0.as_str()).collect();
    let d2 = n.curl(
        b,
        Some("SAE_B"),
        "POST",
        "/api/v1/keys/SAE_A/dec_keys",
        Some(&key_ids_body(&ids)),
    );
    assert_eq!(d2.status, Some(200), "{d2:?}");
    assert_eq!(keys(&d2), k2);

    // A key is delivered once per side: asking again is refused.
    let again = n.curl(
        b,
        Some("SAE_B"),
        "GET",
        &format!("/api/v1/keys/SAE_A/dec_keys?key_ID={}", k1[0].0),
        None,
    );
    assert_eq!(again.status, Some(400), "{again:?}");
    assert_eq!(again.message(), NOT_FOUND);
    // ... and the master cannot take it out of its own KME as a slave.
    let own = n.curl(
        a,
        Some("SAE_A"),
        "GET",
        &format!("/api/v1/keys/SAE_A/dec_keys?key_ID={}", k3[0].0),
        None,
    );
    assert!(matches!(own.status, Some(400 | 401)), "{own:?}");

    // A slave not named cannot fetch: SAE_C is attached to KME_B too, but
    // the keys were for SAE_B. SAE_B still can afterwards.
    let stranger = n.curl(
        b,
        Some("SAE_C"),
        "GET",
        &format!("/api/v1/keys/SAE_A/dec_keys?key_ID={}", k3[0].0),
        None,
    );
    assert_eq!(stranger.status, Some(401), "{stranger:?}");
    let d3 = n.curl(
        b,
        Some("SAE_B"),
        "GET",
        &format!("/api/v1/keys/SAE_A/dec_keys?key_ID={}", k3[0].0),
        None,
    );
    assert_eq!(d3.status, Some(200), "{d3:?}");
    assert_eq!(keys(&d3)[0], k3[0]);

    // No certificate, a certificate of another CA: refused in the TLS
    // handshake (no HTTP answer at all).
    let none = n.curl(a, None, "GET", "/api/v1/keys/SAE_B/status", None);
    assert_eq!(none.status, None, "{none:?}");
    let other = n.dir.join("other");
    let foreign = n.curl_with(
        a,
        Some((&other.join("SAE_A.pem"), &other.join("SAE_A.key"))),
        "GET",
        "/api/v1/keys/SAE_B/status",
        None,
    );
    assert_eq!(foreign.status, None, "{foreign:?}");
    // The right CA, but an SAE this KME does not know (SAE_X), or one
    // attached to the other KME (SAE_B at KME_A): 401.
    for (port, sae) in [(a, "SAE_X"), (b, "SAE_X"), (a, "SAE_B")] {
        let r = n.curl(port, Some(sae), "GET", "/api/v1/keys/SAE_B/enc_keys", None);
        assert_eq!(r.status, Some(401), "{sae}: {r:?}");
        assert!(r.message().contains("not an SAE of this KME"), "{r:?}");
    }

    // Malformed requests: 400 with the right message, and the node keeps
    // serving other clients between them.
    let big_body = format!(r#"{{"number": 1, "pad": "{}"}}"#, "x".repeat(70_000));
    let cases: Vec<(&str, &str, Option<&str>, &str)> = vec![
        (
            "POST",
            "/api/v1/keys/SAE_B/enc_keys",
            Some(r#"{"number": 1"#),
            "malformed Key request",
        ),
        (
            "POST",
            "/api/v1/keys/SAE_B/enc_keys",
            Some(r#"{"number": "two"}"#),
            "malformed Key request",
        ),
        (
            "POST",
            "/api/v1/keys/SAE_B/enc_keys",
            Some(r#"{"size": 1.5}"#),
            "malformed Key request",
        ),
        (
            "POST",
            "/api/v1/keys/SAE_B/enc_keys",
            Some(r#"{"number": 1, "colour": "red"}"#),
            "malformed Key request",
        ),
        (
            "POST",
            "/api/v1/keys/SAE_B/enc_keys",
            Some(&big_body),
            "body",
        ),
        (
            "POST",
            "/api/v1/keys/SAE_B/enc_keys",
            Some(r#"{"number": 18446744073709551616}"#),
            "",
        ),
        (
            "POST",
            "/api/v1/keys/SAE_B/enc_keys",
            Some(r#"{"number": 1000000}"#),
            "number",
        ),
        (
            "GET",
            "/api/v1/keys/SAE_B/enc_keys?number=1001",
            None,
            "number",
        ),
        (
            "GET",
            "/api/v1/keys/SAE_B/enc_keys?number=0",
            None,
            "number",
        ),
        (
            "GET",
            "/api/v1/keys/SAE_B/enc_keys?size=100",
            None,
            "size shall be a multiple of 8",
        ),
        (
            "POST",
            "/api/v1/keys/SAE_B/enc_keys",
            Some(r#"{"size": 100}"#),
            "size shall be a multiple of 8",
        ),
        ("GET", "/api/v1/keys/SAE_B/enc_keys?colour=red", None, ""),
        (
            "GET",
            "/api/v1/keys/SAE_A/dec_keys?key_ID=not-a-uuid",
            None,
            "",
        ),
        (
            "POST",
            "/api/v1/keys/SAE_A/dec_keys",
            Some(r#"{"key_IDs": [{"key_ID": "12345"}]}"#),
            "",
        ),
        (
            "POST",
            "/api/v1/keys/SAE_A/dec_keys",
            Some(r#"{"key_IDs": "all"}"#),
            "",
        ),
        (
            "POST",
            "/api/v1/keys/SAE_B/enc_keys",
            Some(r#"{"extension_mandatory": [{"abc_route_type": "direct"}]}"#),
            "not all extension_mandatory parameters are supported",
        ),
    ];
    for (method, path, body, message) in cases {
        // dec_keys paths go to node B as SAE_B, enc_keys to node A as SAE_A.
        let (port, sae) = if path.contains("dec_keys") {
            (b, "SAE_B")
        } else {
            (a, "SAE_A")
        };
        let r = n.curl(port, Some(sae), method, path, body);
        let shown = body.map(|b| &b[..b.len().min(60)]);
        assert_eq!(r.status, Some(400), "{method} {path} {shown:?}: {r:?}");
        assert_eq!(r.content_type, "application/json", "{r:?}");
        let m = r.message();
        assert!(!m.is_empty(), "{method} {path}: no message: {r:?}");
        assert!(
            m.contains(message),
            "{method} {path} {shown:?}: {m:?} lacks {message:?}"
        );
        let ok = n.curl(b, Some("SAE_B"), "GET", "/api/v1/keys/SAE_A/status", None);
        assert_eq!(
            ok.status,
            Some(200),
            "node B stopped serving after {method} {path}: {ok:?}"
        );
    }
    // extension_optional is accepted (ignored), never a 400.
    let opt = n.curl(
        a,
        Some("SAE_A"),
        "POST",
        "/api/v1/keys/SAE_B/enc_keys",
        Some(r#"{"number": 1, "extension_optional": [{"abc_route_type": "direct"}]}"#),
    );
    assert_eq!(opt.status, Some(200), "{opt:?}");
    // A method the API does not have.
    let del = n.curl(
        a,
        Some("SAE_A"),
        "DELETE",
        "/api/v1/keys/SAE_B/enc_keys",
        None,
    );
    assert_eq!(del.status, Some(405), "{del:?}");
}

/// Entries of a link reserve file (see kms-node's reserve.rs: an 8-byte
/// magic, then records `ordinal u64 | block u64 | owner u8 | live u8 |
/// key [1024]`): those of the even owner (KME_A) no longer live.
#[derive(Debug, Default)]
struct ReserveEntries {
    used_even: usize,
}

fn reserve_entries(path: &std::path::Path) -> ReserveEntries {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut r = ReserveEntries::default();
    for rec in bytes.get(8..).unwrap_or_default().chunks_exact(18 + 1024) {
        if rec[16] == 0 && rec[17] == 0 {
            r.used_even += 1;
        }
    }
    r
}

#[test]
fn a_restart_wipes_both_stores_and_clients_see_503_until_keys_flow_again() {
    if skip_without_curl() {
        return;
    }
    // The real source: a restart must start the pipeline again too.
    let mut n = Nodes::start_with("restart", fixture::Source::Pipeline);
    let (a, b) = (n.a_port, n.b_port);
    let e = n.curl(
        a,
        Some("SAE_A"),
        "GET",
        "/api/v1/keys/SAE_B/enc_keys?number=2",
        None,
    );
    assert_eq!(e.status, Some(200), "{e:?}");
    let taken = keys(&e);
    let state_before = std::fs::read_to_string(n.dir.join("KME_A.link-state")).unwrap();
    let reserve_before = reserve_entries(&n.dir.join("KME_A.link-state.reserve"));

    let status = n.stop_a();
    assert!(
        status.success(),
        "SIGTERM should end kms-node cleanly: {status:?}"
    );
    // Node B loses the link: it cannot vouch for its keys any more.
    let t0 = Instant::now();
    let down = loop {
        let r = n.curl(b, Some("SAE_B"), "GET", "/api/v1/keys/SAE_A/enc_keys", None);
        if r.status == Some(503) || t0.elapsed() > Duration::from_secs(10) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(down.status, Some(503), "{down:?}");
    assert!(
        down.message().contains("link to the peer KME is down"),
        "{down:?}"
    );
    let d = n.curl(
        b,
        Some("SAE_B"),
        "GET",
        &format!("/api/v1/keys/SAE_A/dec_keys?key_ID={}", taken[0].0),
        None,
    );
    assert_eq!(d.status, Some(503), "{d:?}");

    n.start_a();
    n.wait_ready();
    // The link keys used before the restart are not used again.
    let state_after = std::fs::read_to_string(n.dir.join("KME_A.link-state")).unwrap();
    assert_ne!(state_before, state_after);
    // KME_A draws the even link keys, and only its pipeline runs draw them
    // (the handshakes are KME_B's, odd): the new session's pipeline
    // started from a fresh link key, from the initial secret's expansion
    // above every one used before the restart, or from the link's reserve
    // (one more of KME_A's entries used).
    let even = |s: &str| -> u64 { s.split_whitespace().next().unwrap().parse().unwrap() };
    let reserve_after = reserve_entries(&n.dir.join("KME_A.link-state.reserve"));
    assert!(
        even(&state_before) >= 2
            && (even(&state_after) > even(&state_before)
                || reserve_after.used_even > reserve_before.used_even),
        "the pipeline did not take a fresh link key: {state_before:?} -> {state_after:?}, \
         reserve {reserve_before:?} -> {reserve_after:?}"
    );
    // Both stores were wiped: the key handed out before the restart is
    // gone at B, and new keys flow.
    let d = n.curl(
        b,
        Some("SAE_B"),
        "GET",
        &format!("/api/v1/keys/SAE_A/dec_keys?key_ID={}", taken[1].0),
        None,
    );
    assert_eq!(d.status, Some(400), "{d:?}");
    assert_eq!(d.message(), NOT_FOUND);
    let e = n.curl(a, Some("SAE_A"), "GET", "/api/v1/keys/SAE_B/enc_keys", None);
    assert_eq!(e.status, Some(200), "{e:?}");
    let k = keys(&e);
    assert!(
        taken.iter().all(|t| t.0 != k[0].0),
        "a key ID of the old session came back"
    );
    let d = n.curl(
        b,
        Some("SAE_B"),
        "GET",
        &format!("/api/v1/keys/SAE_A/dec_keys?key_ID={}", k[0].0),
        None,
    );
    assert_eq!(d.status, Some(200), "{d:?}");
    assert_eq!(keys(&d), k);
}

#[test]
fn a_second_dec_keys_of_a_delivered_key_is_refused_at_once() {
    if skip_without_curl() {
        return;
    }
    let n = Nodes::start("again");
    let (a, b) = (n.a_port, n.b_port);
    let e = n.curl(
        a,
        Some("SAE_A"),
        "GET",
        "/api/v1/keys/SAE_B/enc_keys?number=2",
        None,
    );
    assert_eq!(e.status, Some(200), "{e:?}");
    let k = keys(&e);
    let first = format!("/api/v1/keys/SAE_A/dec_keys?key_ID={}", k[0].0);
    let d = n.curl(b, Some("SAE_B"), "GET", &first, None);
    assert_eq!(d.status, Some(200), "{d:?}");
    // The node's dec_keys wait is 2 s (example configuration): an answer
    // well before it comes from knowing the key was delivered.
    let t = Instant::now();
    let again = n.curl(b, Some("SAE_B"), "GET", &first, None);
    let took = t.elapsed();
    assert_eq!(again.status, Some(400), "{again:?}");
    assert_eq!(again.message(), NOT_FOUND);
    assert!(
        took < Duration::from_millis(1000),
        "the second dec_keys waited {took:?}"
    );
    // With a key not fetched yet in the same request: refused at once,
    // naming the delivered one, and the other key stays fetchable.
    let t = Instant::now();
    let mixed = n.curl(
        b,
        Some("SAE_B"),
        "POST",
        "/api/v1/keys/SAE_A/dec_keys",
        Some(&key_ids_body(&[&k[1].0, &k[0].0])),
    );
    assert!(t.elapsed() < Duration::from_millis(1000));
    assert_eq!(mixed.status, Some(400), "{mixed:?}");
    let details = mixed.json()["details"].to_string();
    assert!(
        details.contains(&k[0].0) && !details.contains(&k[1].0),
        "{mixed:?}"
    );
    let d = n.curl(
        b,
        Some("SAE_B"),
        "GET",
        &format!("/api/v1/keys/SAE_A/dec_keys?key_ID={}", k[1].0),
        None,
    );
    assert_eq!(d.status, Some(200), "{d:?}");
    assert_eq!(keys(&d), vec![k[1].clone()]);
}

/// Issue 16: keys larger than one store chunk (16 384 bits with the
/// example's 1024-byte chunks: pieces of several chunks) taken at A are
/// the same bytes at B; the status reports the key store's maximum, and
/// one byte more is refused with the standard's 400.
#[test]
fn keys_larger_than_a_store_chunk_round_trip_and_the_maximum_is_honest() {
    if skip_without_curl() {
        return;
    }
    let n = Nodes::start("large");
    let (a, b) = (n.a_port, n.b_port);
    let s = n.curl(a, Some("SAE_A"), "GET", "/api/v1/keys/SAE_B/status", None);
    assert_eq!(s.status, Some(200), "{s:?}");
    assert_eq!(s.json()["max_key_size"], 65_536, "the store's largest key");
    let e = n.curl(
        a,
        Some("SAE_A"),
        "POST",
        "/api/v1/keys/SAE_B/enc_keys",
        Some(r#"{"number": 2, "size": 16384}"#),
    );
    assert_eq!(e.status, Some(200), "{e:?}");
    let k = keys(&e);
    assert_eq!(k.len(), 2);
    assert!(k.iter().all(|k| k.1.len() == b64_len(16_384)));
    let ids: Vec<&str> = k.iter().map(|k| k.0.as_str()).collect();
    let d = n.curl(
        b,
        Some("SAE_B"),
        "POST",
        "/api/v1/keys/SAE_A/dec_keys",
        Some(&key_ids_body(&ids)),
    );
    assert_eq!(d.status, Some(200), "{d:?}");
    assert_eq!(keys(&d), k, "the same bytes at both KMEs");
    // The largest key is served too, and one byte more is refused.
    let max = n.curl(
        a,
        Some("SAE_A"),
        "GET",
        "/api/v1/keys/SAE_B/enc_keys?size=65536",
        None,
    );
    assert_eq!(max.status, Some(200), "{max:?}");
    let over = n.curl(
        a,
        Some("SAE_A"),
        "GET",
        "/api/v1/keys/SAE_B/enc_keys?size=65544",
        None,
    );
    assert_eq!(over.status, Some(400), "{over:?}");
    assert_eq!(over.content_type, "application/json");
    assert_eq!(over.message(), "size shall be between 64 and 65536 bits");
}

#[test]
fn the_demo_matches_every_key() {
    let o = Command::new(bin())
        .args(["demo", "--keys", "3000", "--batch", "300"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "demo failed: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("keys match: 3000 of 3000  mismatched: 0  repeated IDs: 0"),
        "{out}"
    );
    assert!(out.contains("ALL KEYS MATCHED"), "{out}");
}

#[test]
fn careless_command_lines_and_configurations_end_in_clear_errors() {
    let dir = fixture::temp_dir("careless");
    // A missing file.
    let o = Command::new(bin())
        .args(["run", "--config"])
        .arg(dir.join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read"));
    // The example with each of these changes: refused, naming the field.
    let base = fixture::example("node-a.toml");
    for (from, to, field) in [
        (
            "default_size = 256",
            "default_size = 100",
            "keys.default_size",
        ),
        ("max_size = 65536", "max_size = 65544", "keys.max_size"),
        (
            "max_per_request = 1000",
            "max_per_request = 0",
            "keys.max_per_request",
        ),
        ("chunk_bytes = 1024", "chunk_bytes = 0", "store.chunk_bytes"),
        ("kme_id = \"KME_B\"", "kme_id = \"KME_A\"", "peer.kme_id"),
        ("dec_wait_ms = 2000", "dec_wait_ms = 0", "keys.dec_wait_ms"),
        (
            "frame_slots = 4000000",
            "frame_slots = 10",
            "source.frame_slots",
        ),
        ("qber = 0.02", "qber = 0.7", "source.qber"),
        ("role = \"alice\"\n", "", "source.role"),
        ("role = \"alice\"", "role = \"carol\"", "role"),
        (
            "link_address = \"127.0.0.1:9444\"",
            "link_address = \"127.0.0.1:9442\"",
            "source.link_address",
        ),
        (
            "sae_id_from = \"subject_cn\"",
            "sae_id_from = \"serial\"",
            "sae_id_from",
        ),
        ("seed = 7", "seed = 7\ncolour = 1", "colour"),
        ("max_size = 65536", "max_size = \"big\"", "max_size"),
        (
            "initial_secret_file =",
            "suites = [\"QKD_ROT13\"]\ninitial_secret_file =",
            "suites",
        ),
        (
            "initial_secret_file =",
            "suites = []\ninitial_secret_file =",
            "peer.suites",
        ),
    ] {
        assert!(base.contains(from), "{from}");
        let path = dir.join("bad.toml");
        std::fs::write(&path, base.replacen(from, to, 1)).unwrap();
        let o = Command::new(bin())
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{to}: {err}");
        assert!(err.contains(field), "{to}: {err}");
    }
    // A valid configuration whose certificate files are missing: exit 1.
    let path = dir.join("nocerts.toml");
    std::fs::write(&path, &base).unwrap();
    let o = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ca.pem"));
    // Bad flags and names.
    for args in [
        vec!["demo", "--keys", "0"],
        vec!["demo", "--size", "100"],
        vec!["demo", "--batch", "-1"],
        vec!["certs", "--out", "/tmp/x", "--sae", "../evil"],
        vec!["certs", "--out", "/tmp/x", "--bootstrap-pads", "4097"],
        vec!["certs", "--out", "/tmp/x", "--bootstrap-pads", "-1"],
        vec!["certs", "--out", "/tmp/x", "--bootstrap-pads", "many"],
    ] {
        let o = Command::new(bin()).args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
