//! Shared by the integration tests: every response a test takes from a
//! handler goes through [`Checked`], which validates it against the
//! committed OpenAPI document (`openapi.json`).

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use qkd_etsi014::{KeySource, Kme, Request, RequestId, Response};
use serde_json::Value;

/// Responses validated so far in this test binary.
pub static VALIDATED: AtomicUsize = AtomicUsize::new(0);

fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_json::from_str(include_str!("../../openapi.json")).expect("openapi.json is JSON")
    })
}

/// Follows a local `$ref` in the document.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let ptr = r.strip_prefix('#').expect("local reference");
            resolve(doc, doc.pointer(ptr).expect("reference resolves"))
        }
        None => v,
    }
}

/// The template of `path` in the document, if it is an API path.
fn template(path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/api/v1/keys/")?;
    let (_, op) = rest.split_once('/')?;
    Some(match op {
        "status" => "/api/v1/keys/{slave_SAE_ID}/status",
        "enc_keys" => "/api/v1/keys/{slave_SAE_ID}/enc_keys",
        "dec_keys" => "/api/v1/keys/{master_SAE_ID}/dec_keys",
        _ => return None,
    })
}

/// Validates one response to `method path` against the document: its
/// status must be one the operation declares (404 and 405 only outside
/// the declared operations), its body JSON that matches the declared schema.
pub fn validate(method: &str, path: &str, status: u16, body: &[u8]) {
    let doc = document();
    let instance: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{method} {path} -> {status}: body is not JSON: {e}"));
    let op = template(path)
        .and_then(|t| doc["paths"].get(t))
        .and_then(|p| match method {
            "GET" => p.get("get"),
            "POST" => p.get("post"),
            _ => None,
        });
    let schema_ref = match op {
        Some(op) => {
            let response = op["responses"]
                .get(status.to_string())
                .unwrap_or_else(|| panic!("{method} {path}: status {status} not in the document"));
            let response = resolve(doc, response);
            response["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .expect("schema by reference")
                .to_owned()
        }
        None => {
            assert!(
                status == 404 || status == 405,
                "{method} {path}: undocumented operation answered {status}"
            );
            "#/components/schemas/Error".to_owned()
        }
    };
    let root = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": schema_ref,
        "components": doc["components"],
    });
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .expect("the document's schemas compile");
    if let Err(e) = validator.validate(&instance) {
        panic!("{method} {path} -> {status}: body does not match {schema_ref}: {e}\n{instance}");
    }
    if status >= 400 {
        assert!(
            instance["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{status} without an Error message"
        );
    }
    VALIDATED.fetch_add(1, Ordering::Relaxed);
}

/// One answered request.
pub struct Answer {
    pub request: RequestId,
    pub status: u16,
    pub body: Value,
    pub allow: Option<&'static str>,
}

impl Answer {
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }

    /// The keys of a key container, as (ID, base64).
    pub fn keys(&self) -> Vec<(String, String)> {
        self.body["keys"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|k| {
                        (
                            k["key_ID"].as_str().unwrap().to_owned(),
                            k["key"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A handler whose every response is validated against the document.
pub struct Checked {
    pub kme: Kme,
    next: u64,
    sent: HashMap<RequestId, (String, String)>,
}

impl Checked {
    pub fn new(kme: Kme) -> Self {
        Checked {
            kme,
            next: 1,
            sent: HashMap::new(),
        }
    }

    /// Sends a request; returns its ID.
    #[allow(clippy::too_many_arguments)]
    pub fn send<S: KeySource + ?Sized>(
        &mut self,
        now: Instant,
        source: &mut S,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
        caller: &str,
    ) -> RequestId {
        let id = RequestId(self.next);
        self.next += 1;
        self.sent.insert(id, (method.to_owned(), path.to_owned()));
        self.kme.handle_request(
            now,
            Request {
                id,
                method,
                path,
                query,
                body,
                caller,
            },
            source,
        );
        id
    }

    /// Every response ready now, validated.
    pub fn drain(&mut self) -> Vec<Answer> {
        let mut out = Vec::new();
        while let Some(r) = self.kme.poll_response() {
            out.push(self.check(r));
        }
        out
    }

    fn check(&mut self, r: Response) -> Answer {
        let (method, path) = self
            .sent
            .remove(&r.request())
            .expect("a response answers a request sent and not answered yet");
        validate(&method, &path, r.status(), r.body());
        if r.status() == 405 {
            assert!(r.allow().is_some(), "405 without Allow");
        }
        Answer {
            request: r.request(),
            status: r.status(),
            body: serde_json::from_slice(r.body()).unwrap(),
            allow: r.allow(),
        }
    }

    /// Sends a request that must be answered at once; returns the answer.
    #[allow(clippy::too_many_arguments)]
    pub fn call<S: KeySource + ?Sized>(
        &mut self,
        now: Instant,
        source: &mut S,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
        caller: &str,
    ) -> Answer {
        let id = self.send(now, source, method, path, query, body, caller);
        let mut answers = self.drain();
        assert_eq!(answers.len(), 1, "{method} {path}?{query} answered at once");
        let a = answers.pop().unwrap();
        assert_eq!(a.request, id);
        a
    }

    /// Requests sent and not answered yet.
    pub fn outstanding(&self) -> usize {
        self.sent.len()
    }
}
