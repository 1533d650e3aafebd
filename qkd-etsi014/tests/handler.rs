//! Every method and form of the API against a [`FixedSource`], every 400
//! cause with its message, 401, 503, 404, 405, waiting `dec_keys`; every
//! response validated against `openapi.json`.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Answer, Checked};
use qkd_etsi014::{FixedSource, Kme, KmeConfig, RequestId, messages};

const ENC: &str = "/api/v1/keys/sae-b/enc_keys";
const DEC: &str = "/api/v1/keys/sae-a/dec_keys";
const STATUS: &str = "/api/v1/keys/sae-b/status";

struct T {
    h: Checked,
    source: FixedSource,
    now: Instant,
}

impl T {
    fn new() -> Self {
        Self::with(KmeConfig::new("kme-1", "kme-2"), FixedSource::new([3; 32]))
    }

    fn with(config: KmeConfig, source: FixedSource) -> Self {
        T {
            h: Checked::new(Kme::new(config).unwrap()),
            source,
            now: Instant::now(),
        }
    }

    fn call(&mut self, method: &str, path: &str, query: &str, body: &[u8], caller: &str) -> Answer {
        self.h.call(
            self.now,
            &mut self.source,
            method,
            path,
            query,
            body,
            caller,
        )
    }

    fn enc(&mut self, query: &str) -> Answer {
        self.call("GET", ENC, query, b"", "sae-a")
    }

    fn enc_post(&mut self, body: &str) -> Answer {
        self.call("POST", ENC, "", body.as_bytes(), "sae-a")
    }

    fn dec_post(&mut self, ids: &[&str], caller: &str) -> Answer {
        let list: Vec<String> = ids
            .iter()
            .map(|i| format!(r#"{{"key_ID":"{i}"}}"#))
            .collect();
        let body = format!(r#"{{"key_IDs":[{}]}}"#, list.join(","));
        self.call("POST", DEC, "", body.as_bytes(), caller)
    }

    fn bad(&self, a: &Answer, message: &str) {
        assert_eq!(a.status, 400, "{}", a.body);
        assert!(
            a.message().contains(message),
            "{:?} lacks {message:?}",
            a.message()
        );
    }
}

fn key_bytes(b64: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

#[test]
fn status_reports_the_limits_honestly() {
    let mut t = T::with(
        KmeConfig::new("kme-1", "kme-2"),
        FixedSource::new([1; 32])
            .with_budget(40)
            .with_max_key_bits(4096),
    );
    let a = t.call("GET", STATUS, "", b"", "sae-a");
    assert_eq!(a.status, 200);
    let s = &a.body;
    assert_eq!(s["source_KME_ID"], "kme-1");
    assert_eq!(s["target_KME_ID"], "kme-2");
    assert_eq!(s["master_SAE_ID"], "sae-a");
    assert_eq!(s["slave_SAE_ID"], "sae-b");
    assert_eq!(s["key_size"], 256);
    assert_eq!(s["stored_key_count"], 40);
    assert_eq!(s["max_key_count"], 40);
    assert_eq!(
        s["max_key_size"], 4096,
        "lowered to the source's largest key"
    );
    assert_eq!(s["min_key_size"], 64);
    assert_eq!(s["max_key_per_request"], 1024);
    assert_eq!(s["max_SAE_ID_count"], 16);
    t.enc("number=5");
    let a = t.call("GET", STATUS, "", b"", "sae-a");
    assert_eq!(a.body["stored_key_count"], 35);
    // Status takes no parameters and no POST.
    let a = t.call("GET", STATUS, "number=1", b"", "sae-a");
    t.bad(&a, "no query parameters");
    let a = t.call("POST", STATUS, "", b"{}", "sae-a");
    assert_eq!((a.status, a.allow), (405, Some("GET")));
}

#[test]
fn enc_keys_get_and_post_forms() {
    let mut t = T::new();
    // An empty request: one key of the default size.
    let a = t.enc("");
    assert_eq!(a.status, 200);
    let keys = a.keys();
    assert_eq!(keys.len(), 1);
    assert_eq!(key_bytes(&keys[0].1).len(), 32);
    // number and size by query.
    let a = t.enc("number=3&size=1024");
    let keys = a.keys();
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| key_bytes(&k.1).len() == 128));
    // By POST: empty body, {}, and a full request.
    assert_eq!(t.call("POST", ENC, "", b"", "sae-a").keys().len(), 1);
    assert_eq!(t.enc_post("{}").keys().len(), 1);
    let a = t.enc_post(r#"{"number": 2, "size": 512, "additional_slave_SAE_IDs": ["sae-c"], "extension_optional": [{"abc_route_type": "direct"}]}"#);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.keys().len(), 2);
    // Every key ID is distinct.
    let mut ids: Vec<String> = (0..5)
        .flat_map(|_| t.enc("number=4").keys())
        .map(|k| k.0)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
}

#[test]
fn every_400_cause_of_enc_keys_has_its_message() {
    let mut t = T::new();
    let cases: &[(&str, &str)] = &[
        (r#"{"number": "#, "malformed Key request"),
        (r#"[1, 2]"#, "the body shall be a JSON object"),
        (r#" "x""#, "the body shall be a JSON object"),
        (r#"{"number": "3"}"#, "malformed Key request"),
        (r#"{"number": 2.5}"#, "not an integer"),
        (r#"{"number": -1}"#, "negative"),
        (r#"{"size": true}"#, "malformed Key request"),
        (r#"{"Number": 1}"#, "unknown field `Number`"),
        (
            r#"{"number": 1, "colour": "red"}"#,
            "unknown field `colour`",
        ),
        (r#"{"number": 0}"#, "number shall be between 1 and 1024"),
        (r#"{"number": 1025}"#, "number shall be between 1 and 1024"),
        (
            r#"{"number": 99999999999999999999999}"#,
            "number shall be between 1 and 1024",
        ),
        (r#"{"number": 1e300}"#, "number shall be between 1 and 1024"),
        (r#"{"size": 100}"#, messages::SIZE_NOT_MULTIPLE_OF_8),
        (r#"{"size": 0}"#, "size shall be between 64 and 65536 bits"),
        (r#"{"size": 56}"#, "size shall be between 64 and 65536 bits"),
        (
            r#"{"size": 65544}"#,
            "size shall be between 64 and 65536 bits",
        ),
        (
            r#"{"size": 18446744073709551615}"#,
            messages::SIZE_NOT_MULTIPLE_OF_8,
        ),
        (
            r#"{"extension_mandatory": [{"abc_route_type": "direct"}]}"#,
            messages::EXTENSION_MANDATORY_UNSUPPORTED,
        ),
        (r#"{"extension_optional": "x"}"#, "malformed Key request"),
        (r#"{"additional_slave_SAE_IDs": [""]}"#, "is empty"),
        (
            r#"{"additional_slave_SAE_IDs": ["a\u0001"]}"#,
            "control character",
        ),
        (
            r#"{"additional_slave_SAE_IDs": ["sae-b"]}"#,
            "distinct SAEs",
        ),
        (
            r#"{"additional_slave_SAE_IDs": ["x", "x"]}"#,
            "distinct SAEs",
        ),
    ];
    for (body, message) in cases {
        let a = t.enc_post(body);
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert!(
            a.message().contains(message),
            "{body}: {:?} lacks {message:?}",
            a.message()
        );
    }
    // The unsupported mandatory extension is named in the details.
    let a = t.enc_post(r#"{"extension_mandatory": [{"abc_route_type": "direct"}]}"#);
    assert_eq!(
        a.body["details"][0]["extension_mandatory"],
        "abc_route_type"
    );
    // Too many additional slaves.
    let many: Vec<String> = (0..17).map(|i| format!("\"s{i}\"")).collect();
    let a = t.enc_post(&format!(
        r#"{{"additional_slave_SAE_IDs": [{}]}}"#,
        many.join(",")
    ));
    t.bad(&a, "at most 16 additional_slave_SAE_IDs");
    // An oversized body.
    let big = format!(
        r#"{{"extension_optional": [{{"abc_pad": "{}"}}]}}"#,
        "x".repeat(70_000)
    );
    let a = t.enc_post(&big);
    t.bad(&a, "request body larger than 65536 bytes");
    // The GET form: number and size only, once each, decimal.
    for (query, message) in [
        ("number=0", "number shall be between 1 and 1024"),
        (
            "number=99999999999999999999999",
            "number shall be between 1 and 1024",
        ),
        ("number=-1", "number shall be a non-negative integer"),
        ("number=two", "number shall be a non-negative integer"),
        ("number=", "number shall be a non-negative integer"),
        ("size=100", messages::SIZE_NOT_MULTIPLE_OF_8),
        ("number=1&number=2", "given twice"),
        (
            "additional_slave_SAE_IDs=x",
            "only the query parameters number and size",
        ),
        ("number=%FF", "percent-encoded UTF-8"),
    ] {
        let a = t.enc(query);
        assert_eq!(a.status, 400, "{query}: {}", a.body);
        assert!(
            a.message().contains(message),
            "{query}: {:?} lacks {message:?}",
            a.message()
        );
    }
    let a = t.call("GET", ENC, "", b"{}", "sae-a");
    t.bad(&a, "GET takes no request body");
    let a = t.call("POST", ENC, "number=1", b"{}", "sae-a");
    t.bad(&a, "not in the query string");
    // Nothing was taken by any of these.
    let a = t.call("GET", STATUS, "", b"", "sae-a");
    assert_eq!(a.body["stored_key_count"], 1_000_000);
}

#[test]
fn dec_keys_get_and_post_forms_deliver_each_key_once() {
    let mut t = T::new();
    let keys = t.enc("number=3").keys();
    // GET, one key_ID.
    let a = t.call("GET", DEC, &format!("key_ID={}", keys[0].0), b"", "sae-b");
    assert_eq!(a.status, 200);
    assert_eq!(a.keys(), vec![keys[0].clone()]);
    // POST, two at once.
    let a = t.dec_post(&[&keys[1].0, &keys[2].0], "sae-b");
    assert_eq!(a.status, 200);
    assert_eq!(a.keys(), keys[1..].to_vec());
    // A second fetch of a delivered key is refused: the key left this KME.
    let id = t.h.send(
        t.now,
        &mut t.source,
        "GET",
        DEC,
        &format!("key_ID={}", keys[0].0),
        b"",
        "sae-b",
    );
    assert!(
        t.h.drain().is_empty(),
        "an unknown key waits for the peer's notice"
    );
    t.now += Duration::from_secs(2);
    t.h.kme.handle_timeout(t.now, &mut t.source);
    let a = t.h.drain().pop().unwrap();
    assert_eq!(a.request, id);
    t.bad(&a, messages::KEYS_NOT_FOUND);
    assert_eq!(a.body["details"][0]["key_ID"], keys[0].0.as_str());
    assert_eq!(t.h.kme.waiting(), 0);
}

#[test]
fn a_slave_not_named_gets_401_and_takes_nothing() {
    let mut t = T::new();
    let keys = t
        .enc_post(r#"{"number": 2, "additional_slave_SAE_IDs": ["sae-c"]}"#)
        .keys();
    let a = t.call("GET", DEC, &format!("key_ID={}", keys[0].0), b"", "sae-x");
    assert_eq!(a.status, 401);
    assert_eq!(a.message(), messages::NOT_A_SLAVE);
    // All or nothing: one ID refused leaves the other with its slaves.
    let other = t.enc("").keys(); // for sae-b only
    let a = t.dec_post(&[&keys[1].0, &other[0].0], "sae-c");
    assert_eq!(a.status, 401);
    // Both slaves of the multicast keys fetch the same keys, once each.
    let b = t.dec_post(&[&keys[0].0, &keys[1].0], "sae-b");
    let c = t.dec_post(&[&keys[0].0, &keys[1].0], "sae-c");
    assert_eq!((b.status, c.status), (200, 200));
    assert_eq!(b.keys(), keys);
    assert_eq!(c.keys(), keys);
    // The master named in the path must be the one that took the keys.
    let a = t.call(
        "POST",
        "/api/v1/keys/sae-z/dec_keys",
        "",
        format!(r#"{{"key_IDs":[{{"key_ID":"{}"}}]}}"#, other[0].0).as_bytes(),
        "sae-b",
    );
    t.bad(&a, messages::KEYS_NOT_FOUND);
    // No caller SAE ID: 401.
    let a = t.call("GET", STATUS, "", b"", "");
    assert_eq!((a.status, a.message()), (401, messages::NO_CALLER));
}

#[test]
fn every_400_cause_of_dec_keys_has_its_message() {
    let mut t = T::new();
    let id = t.enc("").keys()[0].0.clone();
    for (query, message) in [
        ("", "exactly one query parameter, key_ID"),
        ("key_ID=42", "key_ID shall be a UUID"),
        (
            "key_ID={8c8b5a5e-1f0b-4d55-9c52-3d2e4f1f0a11}",
            "key_ID shall be a UUID",
        ),
        (
            "key_ID=8c8b5a5e1f0b4d559c523d2e4f1f0a11",
            "key_ID shall be a UUID",
        ),
        (
            &format!("key_ID={id}&key_ID={id}"),
            "exactly one query parameter",
        ),
        (
            &format!("key_ID={id}&size=8"),
            "exactly one query parameter",
        ),
    ] {
        let a = t.call("GET", DEC, query, b"", "sae-b");
        assert_eq!(a.status, 400, "{query}: {}", a.body);
        assert!(a.message().contains(message), "{query}: {:?}", a.message());
    }
    for (body, message) in [
        ("", "needs a Key IDs body"),
        ("{", "malformed Key IDs"),
        (
            r#"[[{"key_ID": "8c8b5a5e-1f0b-4d55-9c52-3d2e4f1f0a11"}]]"#,
            "the body shall be a JSON object",
        ),
        ("{}", "missing field `key_IDs`"),
        (r#"{"key_IDs": []}"#, "shall name 1 to 1024 keys"),
        (
            r#"{"key_IDs": [{"key_ID": "not-a-uuid"}]}"#,
            "key_ID shall be a UUID",
        ),
        (r#"{"key_IDs": [{"key_ID": 7}]}"#, "malformed Key IDs"),
        (
            r#"{"key_IDs": [{"key_id": "8c8b5a5e-1f0b-4d55-9c52-3d2e4f1f0a11"}]}"#,
            "unknown field `key_id`",
        ),
        (
            r#"{"key_IDs": "8c8b5a5e-1f0b-4d55-9c52-3d2e4f1f0a11"}"#,
            "malformed Key IDs",
        ),
    ] {
        let a = t.call("POST", DEC, "", body.as_bytes(), "sae-b");
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert!(a.message().contains(message), "{body}: {:?}", a.message());
    }
    let a = t.dec_post(&[&id, &id], "sae-b");
    t.bad(&a, "shall not name a key twice");
    // The key is still there for its slave after all of these.
    assert_eq!(t.dec_post(&[&id], "sae-b").status, 200);
}

#[test]
fn paths_methods_and_encoded_sae_ids() {
    let mut t = T::new();
    for path in [
        "/",
        "/api/v1/keys",
        "/api/v1/keys/sae-b",
        "/api/v1/keys/sae-b/other",
        "/api/v2/keys/sae-b/status",
        "/api/v1/keys/sae-b/status/",
    ] {
        let a = t.call("GET", path, "", b"", "sae-a");
        assert_eq!(a.status, 404, "{path}");
        assert_eq!(a.message(), messages::NO_SUCH_RESOURCE);
    }
    for method in ["PUT", "DELETE", "HEAD", "get"] {
        let a = t.call(method, ENC, "", b"", "sae-a");
        assert_eq!((a.status, a.allow), (405, Some("GET, POST")), "{method}");
    }
    // A URL-encoded SAE ID is decoded: the slave is "sae b/1".
    let keys = t
        .call("GET", "/api/v1/keys/sae%20b%2F1/enc_keys", "", b"", "sae-a")
        .keys();
    let a = t.call(
        "GET",
        "/api/v1/keys/sae-a/dec_keys",
        &format!("key_ID={}", keys[0].0),
        b"",
        "sae b/1",
    );
    assert_eq!(a.status, 200);
    let a = t.call("GET", "/api/v1/keys/%FF/status", "", b"", "sae-a");
    t.bad(&a, "not valid percent-encoded UTF-8");
    let a = t.call("GET", "/api/v1/keys//status", "", b"", "sae-a");
    t.bad(&a, "SAE ID in the path is empty");
    let a = t.call(
        "GET",
        &format!("/api/v1/keys/{}/status", "s".repeat(256)),
        "",
        b"",
        "sae-a",
    );
    t.bad(&a, "longer than 255 bytes");
}

#[test]
fn unavailable_and_exhausted_sources_answer_503() {
    let mut t = T::with(
        KmeConfig::new("kme-1", "kme-2"),
        FixedSource::new([5; 32]).with_budget(3),
    );
    let keys = t.enc("").keys();
    let a = t.enc("number=3");
    assert_eq!(a.status, 503);
    assert_eq!(
        a.message(),
        "not enough key material: 3 keys of 256 bits asked for, 2 available"
    );
    t.source
        .set_unavailable(Some("the link to the peer KME is down".into()));
    for a in [
        t.call("GET", STATUS, "", b"", "sae-a"),
        t.enc(""),
        t.call("GET", DEC, &format!("key_ID={}", keys[0].0), b"", "sae-b"),
    ] {
        assert_eq!(
            (a.status, a.message()),
            (503, "the link to the peer KME is down")
        );
    }
    // Requests are still validated first.
    let a = t.enc("size=7");
    t.bad(&a, messages::SIZE_NOT_MULTIPLE_OF_8);
    t.source.set_unavailable(None);
    assert_eq!(
        t.call("GET", DEC, &format!("key_ID={}", keys[0].0), b"", "sae-b")
            .status,
        200
    );
}

#[test]
fn waiting_requests_are_bounded_cancelled_and_timed() {
    let mut config = KmeConfig::new("kme-1", "kme-2");
    config.max_waiting = 2;
    config.dec_keys_wait = Duration::from_millis(500);
    let mut t = T::with(config, FixedSource::new([9; 32]));
    let unknown = "8c8b5a5e-1f0b-4d55-9c52-3d2e4f1f0a11";
    let start = t.now;
    let first = t.h.send(
        t.now,
        &mut t.source,
        "GET",
        DEC,
        &format!("key_ID={unknown}"),
        b"",
        "sae-b",
    );
    t.now += Duration::from_millis(100);
    let second = t.h.send(
        t.now,
        &mut t.source,
        "POST",
        DEC,
        "",
        format!(r#"{{"key_IDs":[{{"key_ID":"{unknown}"}}]}}"#).as_bytes(),
        "sae-c",
    );
    assert!(t.h.drain().is_empty());
    assert_eq!(t.h.kme.waiting(), 2);
    let a = t.call("GET", DEC, &format!("key_ID={unknown}"), b"", "sae-d");
    assert_eq!((a.status, a.message()), (503, messages::TOO_MANY_WAITING));
    assert_eq!(
        t.h.kme.poll_timeout(),
        Some(start + Duration::from_millis(500))
    );
    // The first times out at its own deadline, the second later.
    t.now = start + Duration::from_millis(500);
    t.h.kme.handle_timeout(t.now, &mut t.source);
    let answers = t.h.drain();
    assert_eq!(answers.len(), 1);
    assert_eq!((answers[0].request, answers[0].status), (first, 400));
    assert!(t.h.kme.cancel(second));
    assert!(!t.h.kme.cancel(second));
    assert!(!t.h.kme.cancel(RequestId(999)));
    assert_eq!((t.h.kme.waiting(), t.h.kme.poll_timeout()), (0, None));
}

#[test]
fn config_errors_name_their_field() {
    let ok = KmeConfig::new("kme-1", "kme-2");
    let cases: Vec<(&str, KmeConfig)> = vec![
        (
            "kme_id",
            KmeConfig {
                kme_id: String::new(),
                ..ok.clone()
            },
        ),
        (
            "peer_kme_id",
            KmeConfig {
                peer_kme_id: "x\n".into(),
                ..ok.clone()
            },
        ),
        (
            "min_key_size",
            KmeConfig {
                min_key_size: 0,
                ..ok.clone()
            },
        ),
        (
            "max_key_size",
            KmeConfig {
                max_key_size: 12,
                ..ok.clone()
            },
        ),
        (
            "key_size",
            KmeConfig {
                key_size: 100,
                ..ok.clone()
            },
        ),
        (
            "key_size",
            KmeConfig {
                key_size: 32,
                ..ok.clone()
            },
        ),
        (
            "max_key_size",
            KmeConfig {
                max_key_size: 32,
                key_size: 32,
                ..ok.clone()
            },
        ),
        (
            "max_keys_per_request",
            KmeConfig {
                max_keys_per_request: 0,
                ..ok.clone()
            },
        ),
        (
            "max_sae_id_count",
            KmeConfig {
                max_sae_id_count: 64,
                ..ok.clone()
            },
        ),
        (
            "max_body_bytes",
            KmeConfig {
                max_body_bytes: 10,
                ..ok.clone()
            },
        ),
        (
            "dec_keys_wait",
            KmeConfig {
                dec_keys_wait: Duration::ZERO,
                ..ok.clone()
            },
        ),
        (
            "max_waiting",
            KmeConfig {
                max_waiting: 0,
                ..ok.clone()
            },
        ),
    ];
    for (field, c) in cases {
        assert_eq!(Kme::new(c).unwrap_err().field(), field);
    }
}

#[test]
fn every_response_of_this_file_was_validated() {
    // Runs with the others in one binary; at least its own call counts.
    let mut t = T::new();
    let before = common::VALIDATED.load(std::sync::atomic::Ordering::Relaxed);
    t.enc("");
    assert!(common::VALIDATED.load(std::sync::atomic::Ordering::Relaxed) > before);
    assert_eq!(t.h.outstanding(), 0);
}
