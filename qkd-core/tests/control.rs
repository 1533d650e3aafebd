//! The control surface over a small host with two modules: every resource,
//! every error status, save and load through a state store, and property
//! tests on request decoding.

use std::fmt;

use proptest::prelude::*;
use qkd_core::control::{
    Command, JSON, LINK_FORMAT, MemoryStateStore, Method, Request, Response, StateStore, Status,
    TEXT_PLAIN, discovery, respond,
};
use qkd_core::machine::check_range;
use qkd_core::module::{Module, ModuleHost, ParameterError, ParameterInfo, Statistic, Value};

/// Counts blocks and drops those above a QBER threshold.
#[derive(Clone, Debug, PartialEq)]
struct Gate {
    max_qber: f64,
    passed: u64,
    dropped: u64,
}

/// Splits blocks into a fixed-size sample, by a variant name.
#[derive(Clone, Debug, PartialEq)]
struct Sampler {
    sample_bits: u64,
    variant: String,
    enabled: bool,
}

impl Module for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    fn statistics(&self) -> Vec<Statistic> {
        vec![
            Statistic::new("passed_blocks", Value::U64(self.passed), "blocks"),
            Statistic::new("dropped_blocks", Value::U64(self.dropped), "blocks"),
        ]
    }
    fn parameters(&self) -> Vec<ParameterInfo> {
        vec![
            ParameterInfo::writable("max_qber", Value::F64(self.max_qber), "abort threshold"),
            ParameterInfo::read_only("block_bits", Value::U64(4096), "fixed block length"),
        ]
    }
    fn set_parameter(&mut self, name: &str, value: &Value) -> Result<(), ParameterError> {
        match name {
            "max_qber" => {
                let q = value
                    .as_f64()
                    .ok_or_else(|| ParameterError::type_mismatch(name, "a number"))?;
                check_range(name, q, 0.0..0.5)?;
                self.max_qber = q;
                Ok(())
            }
            "block_bits" => Err(ParameterError::ReadOnly { name: name.into() }),
            _ => Err(ParameterError::Unknown { name: name.into() }),
        }
    }
}

impl Module for Sampler {
    fn name(&self) -> &str {
        "sampler"
    }
    fn statistics(&self) -> Vec<Statistic> {
        vec![Statistic::new(
            "sample_bits",
            Value::U64(self.sample_bits),
            "bits",
        )]
    }
    fn parameters(&self) -> Vec<ParameterInfo> {
        vec![
            ParameterInfo::writable("sample_bits", Value::U64(self.sample_bits), "1..=65536"),
            ParameterInfo::writable(
                "variant",
                Value::Text(self.variant.clone()),
                "uniform or stratified",
            ),
            ParameterInfo::writable("enabled", Value::Bool(self.enabled), "switch"),
        ]
    }
    fn set_parameter(&mut self, name: &str, value: &Value) -> Result<(), ParameterError> {
        match name {
            "sample_bits" => {
                let n = value
                    .as_u64()
                    .ok_or_else(|| ParameterError::type_mismatch(name, "a count"))?;
                check_range(name, n as f64, 1.0..=65536.0)?;
                self.sample_bits = n;
            }
            "variant" => match value.as_str() {
                Some(v @ ("uniform" | "stratified")) => self.variant = v.to_owned(),
                _ => return Err(ParameterError::type_mismatch(name, "uniform or stratified")),
            },
            "enabled" => {
                self.enabled = value
                    .as_bool()
                    .ok_or_else(|| ParameterError::type_mismatch(name, "true or false"))?;
            }
            _ => return Err(ParameterError::Unknown { name: name.into() }),
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Host {
    gate: Gate,
    sampler: Sampler,
    /// When set, `save_state` fails (a host mid-restart, say).
    refuse_save: bool,
}

#[derive(Debug)]
struct StateError(&'static str);

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
impl std::error::Error for StateError {}

impl ModuleHost for Host {
    type StateError = StateError;
    fn module_names(&self) -> Vec<String> {
        vec!["gate".into(), "sampler".into()]
    }
    fn module(&self, name: &str) -> Option<&dyn Module> {
        match name {
            "gate" => Some(&self.gate),
            "sampler" => Some(&self.sampler),
            _ => None,
        }
    }
    fn module_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        match name {
            "gate" => Some(&mut self.gate),
            "sampler" => Some(&mut self.sampler),
            _ => None,
        }
    }
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        if self.refuse_save {
            return Err(StateError("busy"));
        }
        let mut out = b"HOST1".to_vec();
        out.extend_from_slice(&self.gate.max_qber.to_be_bytes());
        out.extend_from_slice(&self.gate.passed.to_be_bytes());
        out.extend_from_slice(&self.gate.dropped.to_be_bytes());
        out.extend_from_slice(&self.sampler.sample_bits.to_be_bytes());
        Ok(out)
    }
    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let body = state
            .strip_prefix(b"HOST1")
            .ok_or(StateError("not a host state"))?;
        if body.len() != 32 {
            return Err(StateError("truncated"));
        }
        let word = |i: usize| <[u8; 8]>::try_from(&body[8 * i..8 * i + 8]).expect("length checked");
        self.gate.max_qber = f64::from_be_bytes(word(0));
        self.gate.passed = u64::from_be_bytes(word(1));
        self.gate.dropped = u64::from_be_bytes(word(2));
        self.sampler.sample_bits = u64::from_be_bytes(word(3));
        Ok(())
    }
}

fn host() -> Host {
    Host {
        gate: Gate {
            max_qber: 0.11,
            passed: 7,
            dropped: 1,
        },
        sampler: Sampler {
            sample_bits: 512,
            variant: "uniform".into(),
            enabled: true,
        },
        refuse_save: false,
    }
}

fn ask(host: &mut Host, states: &mut MemoryStateStore, request: Request<'_>) -> Response {
    respond(host, states, &request)
}

#[test]
fn reads_modules_statistics_and_parameters() {
    let (mut h, mut s) = (host(), MemoryStateStore::new(4));
    let r = ask(&mut h, &mut s, Request::from_path(Method::Get, "/modules"));
    assert_eq!((r.status, r.content_format), (Status::Content, Some(JSON)));
    assert_eq!(r.text(), r#"["gate","sampler"]"#);

    let r = ask(
        &mut h,
        &mut s,
        Request::from_path(Method::Get, "/modules/gate/stats"),
    );
    assert_eq!(r.status, Status::Content);
    assert_eq!(
        r.text(),
        r#"[{"name":"passed_blocks","value":7,"unit":"blocks"},{"name":"dropped_blocks","value":1,"unit":"blocks"}]"#
    );

    let r = ask(
        &mut h,
        &mut s,
        Request::from_path(Method::Get, "/modules/sampler/params"),
    );
    let params: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(params[1]["name"], "variant");
    assert_eq!(params[1]["value"], "uniform");
    assert_eq!(params[2]["value"], true);
    assert_eq!(params[0]["writable"], true);

    let r = ask(
        &mut h,
        &mut s,
        Request::from_path(Method::Get, "/modules/gate/params/max_qber"),
    );
    assert_eq!((r.status, r.text().as_str()), (Status::Content, "0.11"));
}

#[test]
fn writes_parameters_with_validation() {
    let (mut h, mut s) = (host(), MemoryStateStore::new(4));
    let put = |path, body| Request::from_path(Method::Put, path).with_payload(body);

    let r = ask(
        &mut h,
        &mut s,
        put("/modules/sampler/params/sample_bits", b"1024"),
    );
    assert_eq!((r.status, r.text().as_str()), (Status::Changed, "1024"));
    assert_eq!(h.sampler.sample_bits, 1024);

    let r = ask(
        &mut h,
        &mut s,
        put("/modules/sampler/params/variant", b"stratified").with_content_format(TEXT_PLAIN),
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (Status::Changed, "\"stratified\"")
    );

    let r = ask(
        &mut h,
        &mut s,
        put("/modules/sampler/params/enabled", b"false"),
    );
    assert_eq!(r.status, Status::Changed);
    assert!(!h.sampler.enabled);

    // Each refusal has its own status and leaves the host as it was.
    let before = h.clone();
    for (path, body, status) in [
        (
            "/modules/sampler/params/sample_bits",
            &b"0"[..],
            Status::BadRequest,
        ),
        (
            "/modules/sampler/params/sample_bits",
            b"0.5",
            Status::BadRequest,
        ),
        (
            "/modules/sampler/params/variant",
            b"\"other\"",
            Status::BadRequest,
        ),
        ("/modules/gate/params/max_qber", b"0.5", Status::BadRequest),
        ("/modules/gate/params/max_qber", b"NaN", Status::BadRequest),
        (
            "/modules/gate/params/max_qber",
            b"1e999",
            Status::BadRequest,
        ),
        (
            "/modules/gate/params/block_bits",
            b"8192",
            Status::MethodNotAllowed,
        ),
        ("/modules/gate/params/nothing", b"1", Status::NotFound),
        ("/modules/nothing/params/max_qber", b"0.1", Status::NotFound),
    ] {
        let r = ask(&mut h, &mut s, put(path, body));
        assert_eq!(r.status, status, "{path} {:?}: {}", body, r.text());
        assert_eq!(r.content_format, None, "errors carry a diagnostic");
        assert!(!r.payload.is_empty());
    }
    assert_eq!(h, before);
}

#[test]
fn unknown_resources_and_modules_are_not_found() {
    let (mut h, mut s) = (host(), MemoryStateStore::new(4));
    for path in [
        "/",
        "/modules/nothing/stats",
        "/modules/gate",
        "/pipeline",
        "/modules/gate/params/x",
    ] {
        let r = ask(&mut h, &mut s, Request::from_path(Method::Get, path));
        assert_eq!(r.status, Status::NotFound, "{path}");
    }
    let r = ask(
        &mut h,
        &mut s,
        Request::from_path(Method::Get, "/modules/nothing/stats"),
    );
    assert_eq!(r.text(), "no module `nothing`");
}

#[test]
fn discovery_lists_every_resource_in_link_format() {
    let (mut h, mut s) = (host(), MemoryStateStore::new(4));
    let r = ask(
        &mut h,
        &mut s,
        Request::from_path(Method::Get, "/.well-known/core"),
    );
    assert_eq!(
        (r.status, r.content_format),
        (Status::Content, Some(LINK_FORMAT))
    );
    let text = r.text();
    assert_eq!(text, discovery(&h));
    let links: Vec<&str> = text.split(',').collect();
    assert!(links.contains(&"</modules>;ct=50;rt=\"qkd.modules\""));
    assert!(links.contains(&"</modules/gate/stats>;ct=50;rt=\"qkd.stats\";obs"));
    assert!(links.contains(&"</modules/sampler/params/variant>;ct=50;rt=\"qkd.param\""));
    assert!(links.contains(&"</pipeline/load>;ct=50;rt=\"qkd.load\""));
    // Every advertised path answers a GET or names its method.
    for link in links {
        let path = &link[1..link.find('>').unwrap()];
        let r = ask(&mut h, &mut s, Request::from_path(Method::Get, path));
        assert!(
            r.status == Status::Content || r.status == Status::MethodNotAllowed,
            "{path}: {}",
            r.status
        );
    }
}

#[test]
fn save_and_load_go_through_the_store() {
    let (mut h, mut s) = (host(), MemoryStateStore::new(4));
    let post = |path| Request::from_path(Method::Post, path);

    let r = ask(&mut h, &mut s, post("/pipeline/load"));
    assert_eq!(
        (r.status, r.text().as_str()),
        (Status::NotFound, "no saved state")
    );

    let r = ask(&mut h, &mut s, post("/pipeline/save"));
    assert_eq!(r.status, Status::Changed);
    assert_eq!(r.text(), r#"{"state":"state-1","bytes":37}"#);
    let saved = h.clone();

    h.gate.passed = 99;
    h.sampler.sample_bits = 4;
    let r = ask(&mut h, &mut s, post("/pipeline/save"));
    assert_eq!(r.text(), r#"{"state":"state-2","bytes":37}"#);

    // An explicit label, then the latest.
    let r = ask(
        &mut h,
        &mut s,
        post("/pipeline/load").with_payload(br#"{"state":"state-1"}"#),
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (Status::Changed, r#"{"state":"state-1","bytes":37}"#)
    );
    assert_eq!(h, saved);
    let r = ask(&mut h, &mut s, post("/pipeline/load"));
    assert_eq!(r.status, Status::Changed);
    assert_eq!(h.gate.passed, 99);

    let r = ask(
        &mut h,
        &mut s,
        post("/pipeline/load").with_payload(br#"{"state":"state-9"}"#),
    );
    assert_eq!(r.status, Status::NotFound);

    // A corrupt state and a refused save answer 5.00 and change nothing.
    s.store(b"garbage").unwrap();
    let before = h.clone();
    let r = ask(&mut h, &mut s, post("/pipeline/load"));
    assert_eq!(r.status, Status::InternalServerError);
    assert!(r.text().contains("host is unchanged"), "{}", r.text());
    assert_eq!(h, before);
    h.refuse_save = true;
    let r = ask(&mut h, &mut s, post("/pipeline/save"));
    assert_eq!(r.status, Status::InternalServerError);
    assert_eq!(s.load(None).unwrap().unwrap().0, "state-3");
}

fn segment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"modules".to_vec()),
        Just(b"gate".to_vec()),
        Just(b"sampler".to_vec()),
        Just(b"stats".to_vec()),
        Just(b"params".to_vec()),
        Just(b"max_qber".to_vec()),
        Just(b"sample_bits".to_vec()),
        Just(b"pipeline".to_vec()),
        Just(b"save".to_vec()),
        Just(b"load".to_vec()),
        Just(b".well-known".to_vec()),
        Just(b"core".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..12),
    ]
}

proptest! {
    /// Any request gets an answer, never a panic; a refused request changes
    /// nothing; a success status matches the method.
    #[test]
    fn any_request_is_answered_and_refusals_change_nothing(
        method in 0u8..8,
        segments in proptest::collection::vec(segment(), 0..6),
        content_format in proptest::option::of(prop_oneof![Just(0u16), Just(50), Just(42), any::<u16>()]),
        accept in proptest::option::of(prop_oneof![Just(40u16), Just(50), any::<u16>()]),
        payload in prop_oneof![
            Just(b"0.05".to_vec()),
            Just(b"600".to_vec()),
            Just(b"\"stratified\"".to_vec()),
            Just(br#"{"state":"state-1"}"#.to_vec()),
            proptest::collection::vec(any::<u8>(), 0..40),
        ],
    ) {
        let (mut h, mut s) = (host(), MemoryStateStore::new(4));
        s.store(&host().save_state().unwrap()).unwrap();
        let request = Request {
            method: Method::from_code_detail(method),
            segments: segments.iter().map(Vec::as_slice).collect(),
            content_format,
            accept,
            payload: &payload,
        };
        let before = h.clone();
        let r = respond(&mut h, &mut s, &request);
        if r.status.is_success() {
            let expected = if request.method == Method::Get { Status::Content } else { Status::Changed };
            prop_assert_eq!(r.status, expected);
            prop_assert!(r.content_format.is_some());
        } else {
            prop_assert_eq!(&h, &before);
            prop_assert_eq!(r.content_format, None);
            prop_assert!(std::str::from_utf8(&r.payload).is_ok());
        }
        if request.method == Method::Get {
            prop_assert_eq!(&h, &before);
        }
    }

    /// A parameter written through the surface reads back equal, whatever
    /// the number's spelling.
    #[test]
    fn written_parameters_read_back(n in 1u64..=65536, q in 0.0f64..0.5) {
        let (mut h, mut s) = (host(), MemoryStateStore::new(4));
        let body = n.to_string();
        let put = Request::from_path(Method::Put, "/modules/sampler/params/sample_bits").with_payload(body.as_bytes());
        prop_assert_eq!(respond(&mut h, &mut s, &put).status, Status::Changed);
        let get = Request::from_path(Method::Get, "/modules/sampler/params/sample_bits");
        prop_assert_eq!(respond(&mut h, &mut s, &get).text(), body);

        let body = serde_json::to_string(&q).unwrap();
        let put = Request::from_path(Method::Put, "/modules/gate/params/max_qber").with_payload(body.as_bytes());
        prop_assert_eq!(respond(&mut h, &mut s, &put).status, Status::Changed);
        prop_assert_eq!(h.gate.max_qber, q);
    }

    /// Decoding looks only at the request: the same request decodes the same
    /// way twice, and a decoded read names the module from the path.
    #[test]
    fn decoding_is_deterministic(name in "[a-z_]{1,12}") {
        let path = format!("/modules/{name}/stats");
        let r = Request::from_path(Method::Get, &path);
        prop_assert_eq!(Command::decode(&r), Ok(Command::Statistics { module: name.clone() }));
        prop_assert!(Command::decode(&r).unwrap().is_observable());
    }
}
