//! qkd-etsi014 requests: arbitrary method, path, query, body and caller
//! into a `Kme` over a `FixedSource`, and arbitrary bytes into the model's
//! decoders. Every request gets exactly one response (at once, or at the
//! waiting deadline), with a status the handler documents, a JSON body,
//! and an Error body with a message for every 4xx and 5xx.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use qkd_etsi014::model::{KeyContainer, KeyIds, KeyRequest, Status};
use qkd_etsi014::{FixedSource, Kme, KmeConfig, Request, RequestId};

const METHODS: [&str; 4] = ["GET", "POST", "PUT", "get"];
const PATHS: [&str; 5] = [
    "/api/v1/keys/sae-b/enc_keys",
    "/api/v1/keys/sae-a/dec_keys",
    "/api/v1/keys/sae-b/status",
    "/api/v1/keys/",
    "",
];

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("")
}

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<KeyRequest>(data);
    let _ = serde_json::from_slice::<KeyIds>(data);
    let _ = serde_json::from_slice::<KeyContainer>(data);
    let _ = serde_json::from_slice::<Status>(data);
    if data.len() < 2 {
        return;
    }
    // data: [selector, split, rest...]: rest is cut into path suffix,
    // query, body and caller at positions derived from `split`.
    let (sel, split, rest) = (data[0], data[1] as usize, &data[2..]);
    let cut = |i: usize| (split.wrapping_mul(i + 1)) % (rest.len() + 1);
    let (mut c1, mut c2, mut c3) = (cut(0), cut(1), cut(2));
    if c1 > c2 {
        std::mem::swap(&mut c1, &mut c2);
    }
    if c2 > c3 {
        std::mem::swap(&mut c2, &mut c3);
    }
    if c1 > c2 {
        std::mem::swap(&mut c1, &mut c2);
    }
    let (suffix, query, body, caller) = (
        text(&rest[..c1]),
        text(&rest[c1..c2]),
        &rest[c2..c3],
        text(&rest[c3..]),
    );
    let path = if sel & 0x80 != 0 {
        format!("/api/v1/keys/{suffix}")
    } else {
        PATHS[usize::from(sel >> 2 & 3) % PATHS.len()].to_owned()
    };
    let method = METHODS[usize::from(sel & 3)];
    let caller = if sel & 0x40 != 0 { caller } else { "sae-b" };

    let mut kme = Kme::new(KmeConfig::new("kme-1", "kme-2")).expect("valid config");
    let mut source = FixedSource::new([0; 32]).with_budget(64);
    let now = Instant::now();
    // A key for sae-a -> sae-b, so that dec_keys can find one.
    kme.handle_request(
        now,
        Request { id: RequestId(0), method: "GET", path: PATHS[0], query: "", body: b"", caller: "sae-a" },
        &mut source,
    );
    assert_eq!(kme.poll_response().map(|r| r.status()), Some(200));
    kme.handle_request(
        now,
        Request { id: RequestId(1), method, path: &path, query, body, caller },
        &mut source,
    );
    let later = now + Duration::from_secs(3);
    kme.handle_timeout(later, &mut source);
    let r = kme.poll_response().expect("every request is answered");
    assert_eq!(r.request(), RequestId(1));
    assert!(kme.poll_response().is_none());
    assert_eq!(kme.waiting(), 0);
    let status = r.status();
    assert!(
        [200, 400, 401, 404, 405, 503].contains(&status),
        "undocumented status {status}"
    );
    let json: serde_json::Value = serde_json::from_slice(r.body()).expect("JSON body");
    if status >= 400 {
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    if status == 200 && path.ends_with("_keys") {
        serde_json::from_slice::<KeyContainer>(r.body()).expect("a key container");
    }
});
