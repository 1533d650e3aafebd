//! The control surface: requests that name a module and a resource, answered
//! with a status and a payload. Transport-free: a CoAP (or HTTP) handler maps
//! its messages onto [`Request`] and [`Response`]; nothing here owns a socket.
//!
//! It serves any [`ModuleHost`] (a pipeline, a KMS node) and a
//! [`StateStore`] that keeps the states the host saves. Saved states never
//! travel in a response: they can contain secrets (pads, keys), and the
//! control channel is not encrypted. A save answers with the label under
//! which the store kept it, a load names a label.
//!
//! # Resources
//!
//! | method | path | answer (status, content format) |
//! | --- | --- | --- |
//! | GET | `/.well-known/core` | every resource below in link format (RFC 6690), 2.05, 40 |
//! | GET | `/modules` | the module names in pipeline order, `["sift","cascade"]`, 2.05, 50 |
//! | GET | `/modules/{m}/stats` | `[{"name":"bits_in","value":4096,"unit":"bits"}, ...]`, 2.05, 50; observable |
//! | GET | `/modules/{m}/params` | `[{"name":"max_qber","value":0.11,"writable":true,"description":"..."}, ...]`, 2.05, 50 |
//! | GET | `/modules/{m}/params/{p}` | the value as one JSON scalar, `0.11`, 2.05, 50 |
//! | PUT | `/modules/{m}/params/{p}` | payload one JSON scalar (content format 50 or none), or with text/plain (0) a bare word taken as text; 2.04 and the value now in force |
//! | POST | `/pipeline/save` | no payload; the host's state goes to the store; 2.04, `{"state":"state-3","bytes":812}` |
//! | POST | `/pipeline/load` | payload empty (the latest state) or `{"state":"state-3"}`; 2.04, `{"state":"state-3","bytes":812}` |
//!
//! Errors carry a one-line diagnostic in UTF-8 without a content format, as
//! RFC 7252 §5.5.2 describes: 4.00 (payload not valid JSON, a value that
//! fails the module's validation), 4.04 (no such resource, module, parameter
//! or saved state), 4.05 (method not allowed on the resource; a read-only
//! parameter), 4.06 (an Accept the resource cannot answer in), 4.13 (payload
//! over [`MAX_PAYLOAD`]), 4.15 (a content format the resource does not
//! take), 5.00 (the host could not save or restore its state; it is
//! unchanged).
//!
//! # Example
//!
//! ```
//! use qkd_core::control::{respond, MemoryStateStore, Method, Request, Status};
//! # use qkd_core::module::{Module, ModuleHost, ParameterError, ParameterInfo, Statistic, Value};
//! # struct Gate { max_qber: f64 }
//! # impl Module for Gate {
//! #     fn name(&self) -> &str { "gate" }
//! #     fn statistics(&self) -> Vec<Statistic> { vec![] }
//! #     fn parameters(&self) -> Vec<ParameterInfo> {
//! #         vec![ParameterInfo::writable("max_qber", Value::F64(self.max_qber), "abort threshold")]
//! #     }
//! #     fn set_parameter(&mut self, name: &str, value: &Value) -> Result<(), ParameterError> {
//! #         let q = value.as_f64().ok_or_else(|| ParameterError::type_mismatch(name, "a number"))?;
//! #         qkd_core::machine::check_range(name, q, 0.0..0.5)?;
//! #         self.max_qber = q;
//! #         Ok(())
//! #     }
//! # }
//! # struct Host { gate: Gate }
//! # impl ModuleHost for Host {
//! #     type StateError = std::io::Error;
//! #     fn module_names(&self) -> Vec<String> { vec!["gate".into()] }
//! #     fn module(&self, n: &str) -> Option<&dyn Module> { (n == "gate").then_some(&self.gate as &dyn Module) }
//! #     fn module_mut(&mut self, n: &str) -> Option<&mut dyn Module> { (n == "gate").then_some(&mut self.gate as &mut dyn Module) }
//! #     fn save_state(&mut self) -> Result<Vec<u8>, std::io::Error> { Ok(self.gate.max_qber.to_be_bytes().to_vec()) }
//! #     fn restore_state(&mut self, s: &[u8]) -> Result<(), std::io::Error> {
//! #         let b: [u8; 8] = s.try_into().map_err(|_| std::io::Error::other("corrupt"))?;
//! #         self.gate.max_qber = f64::from_be_bytes(b);
//! #         Ok(())
//! #     }
//! # }
//! let mut host = Host { gate: Gate { max_qber: 0.11 } };
//! let mut states = MemoryStateStore::new(4);
//!
//! let put = Request::from_path(Method::Put, "/modules/gate/params/max_qber").with_payload(b"0.05");
//! let answer = respond(&mut host, &mut states, &put);
//! assert_eq!(answer.status, Status::Changed);
//! assert_eq!(answer.payload, b"0.05");
//!
//! let bad = Request::from_path(Method::Put, "/modules/gate/params/max_qber").with_payload(b"0.7");
//! assert_eq!(respond(&mut host, &mut states, &bad).status, Status::BadRequest);
//!
//! let get = Request::from_path(Method::Get, "/modules/gate/params/max_qber");
//! assert_eq!(respond(&mut host, &mut states, &get).payload, b"0.05");
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::module::{ModuleHost, ParameterError, Value};

/// Content format `text/plain; charset=utf-8` (CoAP registry number).
pub const TEXT_PLAIN: u16 = 0;
/// Content format `application/link-format` (RFC 6690).
pub const LINK_FORMAT: u16 = 40;
/// Content format `application/octet-stream`.
pub const OCTET_STREAM: u16 = 42;
/// Content format `application/json`.
pub const JSON: u16 = 50;

/// The largest request payload the control surface reads, in bytes. A
/// parameter value or a state label is far smaller.
pub const MAX_PAYLOAD: usize = 1024;

/// The most path segments a request may have.
pub const MAX_SEGMENTS: usize = 8;

/// A request method, with the CoAP method codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// Read (0.01).
    Get,
    /// Act (0.02).
    Post,
    /// Replace (0.03).
    Put,
    /// Remove (0.04); no resource here takes it.
    Delete,
    /// Any other request code (FETCH, PATCH, ...), by its detail number.
    Other(u8),
}

impl Method {
    /// The method from a CoAP request code's detail (class 0).
    pub fn from_code_detail(detail: u8) -> Method {
        match detail {
            1 => Method::Get,
            2 => Method::Post,
            3 => Method::Put,
            4 => Method::Delete,
            other => Method::Other(other),
        }
    }

    /// The CoAP request code's detail (class 0).
    pub fn code_detail(self) -> u8 {
        match self {
            Method::Get => 1,
            Method::Post => 2,
            Method::Put => 3,
            Method::Delete => 4,
            Method::Other(d) => d,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Get => f.write_str("GET"),
            Method::Post => f.write_str("POST"),
            Method::Put => f.write_str("PUT"),
            Method::Delete => f.write_str("DELETE"),
            Method::Other(d) => write!(f, "0.{d:02}"),
        }
    }
}

/// A response status, with its CoAP response code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// 2.01: something new was made (a registration).
    Created,
    /// 2.04: the action was done (a parameter written, a state saved or loaded).
    Changed,
    /// 2.05: here is the representation asked for.
    Content,
    /// 4.00: the payload is malformed or a value failed validation.
    BadRequest,
    /// 4.02: the request has an option the server does not understand, or
    /// asks for a block that does not exist.
    BadOption,
    /// 4.03: the requester may not do this (a registration from an unexpected
    /// address or name).
    Forbidden,
    /// 4.04: no such resource, module, parameter or saved state.
    NotFound,
    /// 4.05: the resource does not take this method.
    MethodNotAllowed,
    /// 4.06: the resource cannot answer in the format the Accept option asks for.
    NotAcceptable,
    /// 4.09: the request conflicts with the current state (a duplicate name).
    Conflict,
    /// 4.13: the payload is larger than the resource takes.
    RequestEntityTooLarge,
    /// 4.15: the resource does not take the payload's content format.
    UnsupportedContentFormat,
    /// 5.00: the server failed to do what was asked; nothing changed.
    InternalServerError,
    /// 5.02: a proxied server answered with something unusable.
    BadGateway,
    /// 5.03: the resource is not available now (a host not running).
    ServiceUnavailable,
    /// 5.04: a proxied server did not answer in time.
    GatewayTimeout,
}

impl Status {
    /// The response code as one byte, class in the top three bits
    /// (2.05 is `0x45`).
    pub fn code(self) -> u8 {
        let (class, detail) = self.class_detail();
        (class << 5) | detail
    }

    /// The status from a CoAP response code byte, if it is one of these.
    pub fn from_code(code: u8) -> Option<Status> {
        ALL_STATUSES.iter().copied().find(|s| s.code() == code)
    }

    /// Class and detail (2 and 5 for 2.05).
    pub fn class_detail(self) -> (u8, u8) {
        match self {
            Status::Created => (2, 1),
            Status::Changed => (2, 4),
            Status::Content => (2, 5),
            Status::BadRequest => (4, 0),
            Status::BadOption => (4, 2),
            Status::Forbidden => (4, 3),
            Status::NotFound => (4, 4),
            Status::MethodNotAllowed => (4, 5),
            Status::NotAcceptable => (4, 6),
            Status::Conflict => (4, 9),
            Status::RequestEntityTooLarge => (4, 13),
            Status::UnsupportedContentFormat => (4, 15),
            Status::InternalServerError => (5, 0),
            Status::BadGateway => (5, 2),
            Status::ServiceUnavailable => (5, 3),
            Status::GatewayTimeout => (5, 4),
        }
    }

    /// Whether the status reports success (class 2).
    pub fn is_success(self) -> bool {
        self.class_detail().0 == 2
    }
}

const ALL_STATUSES: [Status; 16] = [
    Status::Created,
    Status::Changed,
    Status::Content,
    Status::BadRequest,
    Status::BadOption,
    Status::Forbidden,
    Status::NotFound,
    Status::MethodNotAllowed,
    Status::NotAcceptable,
    Status::Conflict,
    Status::RequestEntityTooLarge,
    Status::UnsupportedContentFormat,
    Status::InternalServerError,
    Status::BadGateway,
    Status::ServiceUnavailable,
    Status::GatewayTimeout,
];

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (class, detail) = self.class_detail();
        write!(f, "{class}.{detail:02}")
    }
}

/// One request, as a transport decoded it: the method, the path as
/// segments (CoAP's Uri-Path options, unchecked bytes), the content format
/// and Accept options if present, and the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// The path segments, in order, as received (not yet checked for UTF-8).
    pub segments: Vec<&'a [u8]>,
    /// The payload's content format, if the request named one.
    pub content_format: Option<u16>,
    /// The content format the requester accepts, if it named one.
    pub accept: Option<u16>,
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> Request<'a> {
    /// A request for `path` written with slashes (`/modules/sift/stats`),
    /// without payload or options.
    pub fn from_path(method: Method, path: &'a str) -> Self {
        Request {
            method,
            segments: path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::as_bytes)
                .collect(),
            content_format: None,
            accept: None,
            payload: &[],
        }
    }

    /// The same request with `payload`.
    pub fn with_payload(mut self, payload: &'a [u8]) -> Self {
        self.payload = payload;
        self
    }

    /// The same request with a content format for its payload.
    pub fn with_content_format(mut self, format: u16) -> Self {
        self.content_format = Some(format);
        self
    }

    /// The same request with an Accept option.
    pub fn with_accept(mut self, format: u16) -> Self {
        self.accept = Some(format);
        self
    }

    /// The path with slashes, non-UTF-8 bytes replaced, for logs and errors.
    pub fn path(&self) -> String {
        let mut out = String::new();
        for s in &self.segments {
            out.push('/');
            out.push_str(&String::from_utf8_lossy(s));
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status.
    pub status: Status,
    /// The payload's content format, `None` for a diagnostic or no payload.
    pub content_format: Option<u16>,
    /// The payload: a representation on success, a one-line UTF-8
    /// diagnostic on error.
    pub payload: Vec<u8>,
}

impl Response {
    /// A success answer carrying `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(status: Status, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(payload) => Response {
                status,
                content_format: Some(JSON),
                payload,
            },
            Err(e) => Response::error(
                Status::InternalServerError,
                &format!("cannot encode the answer: {e}"),
            ),
        }
    }

    /// An error answer with a diagnostic message.
    pub fn error(status: Status, message: &str) -> Response {
        Response {
            status,
            content_format: None,
            payload: message.as_bytes().to_vec(),
        }
    }

    /// The diagnostic or payload as text, for logs and tests.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A request decoded into what it asks for.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Command {
    /// `GET /.well-known/core`.
    Discover,
    /// `GET /modules`.
    ListModules,
    /// `GET /modules/{module}/stats`.
    Statistics {
        /// The module.
        module: String,
    },
    /// `GET /modules/{module}/params`.
    Parameters {
        /// The module.
        module: String,
    },
    /// `GET /modules/{module}/params/{parameter}`.
    ReadParameter {
        /// The module.
        module: String,
        /// The parameter.
        parameter: String,
    },
    /// `PUT /modules/{module}/params/{parameter}`.
    WriteParameter {
        /// The module.
        module: String,
        /// The parameter.
        parameter: String,
        /// The new value.
        value: Value,
    },
    /// `POST /pipeline/save`.
    SaveState,
    /// `POST /pipeline/load`.
    LoadState {
        /// The label of the state to load; `None` for the latest.
        state: Option<String>,
    },
}

impl Command {
    /// Whether a client may observe the resource (RFC 7641): the statistics.
    pub fn is_observable(&self) -> bool {
        matches!(self, Command::Statistics { .. })
    }

    /// Decodes a request. Checks the path, the method, the Accept option,
    /// the content format and size of the payload and parses it; it does
    /// not look at the host, so an unknown module is found later.
    ///
    /// # Errors
    /// A [`RequestError`] whose [`status`](RequestError::status) is the
    /// answer to send.
    pub fn decode(request: &Request<'_>) -> Result<Command, RequestError> {
        if request.segments.len() > MAX_SEGMENTS {
            return Err(RequestError::NoSuchResource {
                path: request.path(),
            });
        }
        let mut segments = Vec::with_capacity(request.segments.len());
        for s in &request.segments {
            match std::str::from_utf8(s) {
                Ok(s) => segments.push(s),
                Err(_) => {
                    return Err(RequestError::NoSuchResource {
                        path: request.path(),
                    });
                }
            }
        }
        let not_found = || RequestError::NoSuchResource {
            path: request.path(),
        };
        let (allowed, format) = match segments.as_slice() {
            [".well-known", "core"] => (Method::Get, LINK_FORMAT),
            ["modules"] | ["modules", _, "stats"] | ["modules", _, "params"] => (Method::Get, JSON),
            ["modules", _, "params", _] => {
                if request.method == Method::Put {
                    (Method::Put, JSON)
                } else {
                    (Method::Get, JSON)
                }
            }
            ["pipeline", "save"] | ["pipeline", "load"] => (Method::Post, JSON),
            _ => return Err(not_found()),
        };
        if request.method != allowed {
            let allowed = if matches!(segments.as_slice(), ["modules", _, "params", _]) {
                "GET, PUT"
            } else if allowed == Method::Post {
                "POST"
            } else {
                "GET"
            };
            return Err(RequestError::MethodNotAllowed {
                method: request.method,
                allowed,
            });
        }
        if let Some(accept) = request.accept.filter(|&a| a != format) {
            return Err(RequestError::NotAcceptable { accept });
        }
        if request.payload.len() > MAX_PAYLOAD {
            return Err(RequestError::PayloadTooLarge {
                len: request.payload.len(),
            });
        }
        let command = match segments.as_slice() {
            [".well-known", "core"] => Command::Discover,
            ["modules"] => Command::ListModules,
            ["modules", m, "stats"] => Command::Statistics {
                module: (*m).to_owned(),
            },
            ["modules", m, "params"] => Command::Parameters {
                module: (*m).to_owned(),
            },
            ["modules", m, "params", p] if request.method == Method::Get => {
                Command::ReadParameter {
                    module: (*m).to_owned(),
                    parameter: (*p).to_owned(),
                }
            }
            ["modules", m, "params", p] => Command::WriteParameter {
                module: (*m).to_owned(),
                parameter: (*p).to_owned(),
                value: decode_value(request)?,
            },
            ["pipeline", "save"] => Command::SaveState,
            ["pipeline", "load"] => Command::LoadState {
                state: decode_load(request)?,
            },
            _ => return Err(not_found()),
        };
        if !matches!(
            command,
            Command::WriteParameter { .. } | Command::LoadState { .. }
        ) && !request.payload.is_empty()
        {
            return Err(RequestError::UnexpectedPayload);
        }
        Ok(command)
    }
}

/// A parameter value from a PUT payload.
fn decode_value(request: &Request<'_>) -> Result<Value, RequestError> {
    match request.content_format {
        None | Some(JSON) => serde_json::from_slice::<Value>(request.payload)
            .map_err(|e| RequestError::BadPayload(format!("not a JSON scalar: {e}"))),
        Some(TEXT_PLAIN) => {
            let text = std::str::from_utf8(request.payload)
                .map_err(|_| RequestError::BadPayload("text is not UTF-8".into()))?
                .trim();
            if text.is_empty() {
                return Err(RequestError::BadPayload("empty value".into()));
            }
            Ok(
                serde_json::from_str::<Value>(text)
                    .unwrap_or_else(|_| Value::Text(text.to_owned())),
            )
        }
        Some(other) => Err(RequestError::UnsupportedContentFormat { format: other }),
    }
}

/// The payload of `POST /pipeline/load`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct LoadRequest {
    state: String,
}

/// The answer to a save or a load.
#[derive(Debug, Deserialize, Serialize)]
struct StateAnswer<'a> {
    state: &'a str,
    bytes: usize,
}

fn decode_load(request: &Request<'_>) -> Result<Option<String>, RequestError> {
    if request.payload.is_empty() {
        return Ok(None);
    }
    match request.content_format {
        None | Some(JSON) => serde_json::from_slice::<LoadRequest>(request.payload)
            .map(|l| Some(l.state))
            .map_err(|e| {
                RequestError::BadPayload(format!("expected {{\"state\":\"LABEL\"}}: {e}"))
            }),
        Some(other) => Err(RequestError::UnsupportedContentFormat { format: other }),
    }
}

/// Why a request was refused before it reached the host.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No resource has this path.
    #[error("no resource {path}")]
    NoSuchResource {
        /// The path asked for.
        path: String,
    },
    /// The resource exists but does not take the method.
    #[error("{method} not allowed here (allowed: {allowed})")]
    MethodNotAllowed {
        /// The method used.
        method: Method,
        /// The methods the resource takes.
        allowed: &'static str,
    },
    /// The resource cannot answer in the format asked for.
    #[error("cannot answer in content format {accept}")]
    NotAcceptable {
        /// The Accept option's value.
        accept: u16,
    },
    /// The payload's content format is not one the resource takes.
    #[error("content format {format} not supported here")]
    UnsupportedContentFormat {
        /// The content format.
        format: u16,
    },
    /// The payload is longer than [`MAX_PAYLOAD`].
    #[error("payload of {len} bytes is over the limit of {MAX_PAYLOAD}")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
    },
    /// A request that takes no payload had one.
    #[error("this request takes no payload")]
    UnexpectedPayload,
    /// The payload could not be parsed.
    #[error("bad payload: {0}")]
    BadPayload(String),
}

impl RequestError {
    /// The status to answer with.
    pub fn status(&self) -> Status {
        match self {
            RequestError::NoSuchResource { .. } => Status::NotFound,
            RequestError::MethodNotAllowed { .. } => Status::MethodNotAllowed,
            RequestError::NotAcceptable { .. } => Status::NotAcceptable,
            RequestError::UnsupportedContentFormat { .. } => Status::UnsupportedContentFormat,
            RequestError::PayloadTooLarge { .. } => Status::RequestEntityTooLarge,
            RequestError::UnexpectedPayload | RequestError::BadPayload(_) => Status::BadRequest,
        }
    }
}

/// Where the states a host saves are kept, under labels the store chooses.
///
/// A saved state may contain secrets: a store keeps it as carefully as the
/// pre-shared secret (an in-memory store zeroizes what it drops; a file store
/// writes files only its owner can read).
pub trait StateStore {
    /// Why storing or loading failed.
    type Error: std::error::Error;

    /// Keeps `state` and returns its label.
    ///
    /// # Errors
    /// The state could not be kept.
    fn store(&mut self, state: &[u8]) -> Result<String, Self::Error>;

    /// The state under `label`, or the latest when `label` is `None`, with its
    /// label; `Ok(None)` when there is none.
    ///
    /// # Errors
    /// The state exists but could not be read.
    #[allow(clippy::type_complexity)]
    fn load(
        &self,
        label: Option<&str>,
    ) -> Result<Option<(String, Zeroizing<Vec<u8>>)>, Self::Error>;
}

/// A [`StateStore`] in memory that keeps the last `capacity` states,
/// labelled `state-1`, `state-2`, ... and zeroized when dropped.
pub struct MemoryStateStore {
    capacity: usize,
    next: u64,
    states: Vec<(String, Zeroizing<Vec<u8>>)>,
}

impl fmt::Debug for MemoryStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStateStore")
            .field("capacity", &self.capacity)
            .field(
                "labels",
                &self
                    .states
                    .iter()
                    .map(|(l, _)| l.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl MemoryStateStore {
    /// A store keeping the last `capacity` states (at least one).
    pub fn new(capacity: usize) -> Self {
        MemoryStateStore {
            capacity: capacity.max(1),
            next: 1,
            states: Vec::new(),
        }
    }
}

impl StateStore for MemoryStateStore {
    type Error = std::convert::Infallible;

    fn store(&mut self, state: &[u8]) -> Result<String, Self::Error> {
        let label = format!("state-{}", self.next);
        self.next += 1;
        if self.states.len() == self.capacity {
            self.states.remove(0);
        }
        self.states
            .push((label.clone(), Zeroizing::new(state.to_vec())));
        Ok(label)
    }

    fn load(
        &self,
        label: Option<&str>,
    ) -> Result<Option<(String, Zeroizing<Vec<u8>>)>, Self::Error> {
        let found = match label {
            None => self.states.last(),
            Some(l) => self.states.iter().find(|(s, _)| s == l),
        };
        Ok(found.map(|(l, s)| (l.clone(), s.clone())))
    }
}

/// Decodes `request` and carries it out on `host` and `states`.
pub fn respond<H, S>(host: &mut H, states: &mut S, request: &Request<'_>) -> Response
where
    H: ModuleHost + ?Sized,
    S: StateStore + ?Sized,
{
    match Command::decode(request) {
        Ok(command) => execute(host, states, &command),
        Err(e) => Response::error(e.status(), &e.to_string()),
    }
}

/// Carries out a decoded command.
pub fn execute<H, S>(host: &mut H, states: &mut S, command: &Command) -> Response
where
    H: ModuleHost + ?Sized,
    S: StateStore + ?Sized,
{
    let no_module = |m: &str| Response::error(Status::NotFound, &format!("no module `{m}`"));
    match command {
        Command::Discover => Response {
            status: Status::Content,
            content_format: Some(LINK_FORMAT),
            payload: discovery(host).into_bytes(),
        },
        Command::ListModules => Response::json(Status::Content, &host.module_names()),
        Command::Statistics { module } => match host.module(module) {
            Some(m) => Response::json(Status::Content, &m.statistics()),
            None => no_module(module),
        },
        Command::Parameters { module } => match host.module(module) {
            Some(m) => Response::json(Status::Content, &m.parameters()),
            None => no_module(module),
        },
        Command::ReadParameter { module, parameter } => match host.module(module) {
            Some(m) => match m.parameter(parameter) {
                Ok(v) => Response::json(Status::Content, &v),
                Err(e) => parameter_error(module, &e),
            },
            None => no_module(module),
        },
        Command::WriteParameter {
            module,
            parameter,
            value,
        } => match host.module_mut(module) {
            Some(m) => match m.set_parameter(parameter, value) {
                Ok(()) => match m.parameter(parameter) {
                    Ok(v) => Response::json(Status::Changed, &v),
                    Err(e) => parameter_error(module, &e),
                },
                Err(e) => parameter_error(module, &e),
            },
            None => no_module(module),
        },
        Command::SaveState => {
            let state = match host.save_state() {
                Ok(s) => Zeroizing::new(s),
                Err(e) => {
                    return Response::error(
                        Status::InternalServerError,
                        &format!("cannot save the state: {e}"),
                    );
                }
            };
            match states.store(&state) {
                Ok(label) => Response::json(
                    Status::Changed,
                    &StateAnswer {
                        state: &label,
                        bytes: state.len(),
                    },
                ),
                Err(e) => Response::error(
                    Status::InternalServerError,
                    &format!("cannot keep the saved state: {e}"),
                ),
            }
        }
        Command::LoadState { state } => {
            let (label, bytes) = match states.load(state.as_deref()) {
                Ok(Some(found)) => found,
                Ok(None) => {
                    let what = state.as_deref().map_or_else(
                        || "no saved state".to_owned(),
                        |l| format!("no saved state `{l}`"),
                    );
                    return Response::error(Status::NotFound, &what);
                }
                Err(e) => {
                    return Response::error(
                        Status::InternalServerError,
                        &format!("cannot read the saved state: {e}"),
                    );
                }
            };
            match host.restore_state(&bytes) {
                Ok(()) => Response::json(
                    Status::Changed,
                    &StateAnswer {
                        state: &label,
                        bytes: bytes.len(),
                    },
                ),
                Err(e) => Response::error(
                    Status::InternalServerError,
                    &format!("cannot restore `{label}`: {e}; the host is unchanged"),
                ),
            }
        }
    }
}

fn parameter_error(module: &str, e: &ParameterError) -> Response {
    let status = match e {
        ParameterError::Unknown { .. } => Status::NotFound,
        ParameterError::ReadOnly { .. } => Status::MethodNotAllowed,
        _ => Status::BadRequest,
    };
    Response::error(status, &format!("module `{module}`: {e}"))
}

/// The host's resources in link format (RFC 6690), for
/// `GET /.well-known/core`: content format `ct`, resource type `rt`
/// (`qkd.modules`, `qkd.stats`, `qkd.params`, `qkd.param`, `qkd.save`,
/// `qkd.load`), `obs` on the observable statistics.
pub fn discovery<H: ModuleHost + ?Sized>(host: &H) -> String {
    let mut links = vec![format!("</modules>;ct={JSON};rt=\"qkd.modules\"")];
    for name in host.module_names() {
        let m = percent_encode(&name);
        links.push(format!(
            "</modules/{m}/stats>;ct={JSON};rt=\"qkd.stats\";obs"
        ));
        links.push(format!("</modules/{m}/params>;ct={JSON};rt=\"qkd.params\""));
        if let Some(module) = host.module(&name) {
            for p in module.parameters() {
                links.push(format!(
                    "</modules/{m}/params/{}>;ct={JSON};rt=\"qkd.param\"",
                    percent_encode(&p.name)
                ));
            }
        }
    }
    links.push(format!("</pipeline/save>;ct={JSON};rt=\"qkd.save\""));
    links.push(format!("</pipeline/load>;ct={JSON};rt=\"qkd.load\""));
    links.join(",")
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a
/// name cannot break the link format.
pub fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_coaps() {
        assert_eq!(Status::Content.code(), 0x45);
        assert_eq!(Status::Changed.code(), 0x44);
        assert_eq!(Status::NotFound.code(), 0x84);
        assert_eq!(Status::UnsupportedContentFormat.code(), 0x8F);
        assert_eq!(Status::RequestEntityTooLarge.code(), 0x8D);
        assert_eq!(Status::InternalServerError.code(), 0xA0);
        assert_eq!(Status::GatewayTimeout.to_string(), "5.04");
        for s in ALL_STATUSES {
            assert_eq!(Status::from_code(s.code()), Some(s));
        }
        assert_eq!(Status::from_code(0x01), None);
    }

    #[test]
    fn paths_decode_to_commands() {
        let get = |p| Command::decode(&Request::from_path(Method::Get, p));
        assert_eq!(get("/modules"), Ok(Command::ListModules));
        assert_eq!(get("/.well-known/core"), Ok(Command::Discover));
        assert_eq!(
            get("/modules/sift/stats"),
            Ok(Command::Statistics {
                module: "sift".into()
            })
        );
        assert_eq!(
            get("/modules/sift/params/max_qber"),
            Ok(Command::ReadParameter {
                module: "sift".into(),
                parameter: "max_qber".into()
            })
        );
        assert_eq!(get("/modules/sift").unwrap_err().status(), Status::NotFound);
        assert_eq!(
            get("/pipeline/save").unwrap_err().status(),
            Status::MethodNotAllowed
        );
        let post = Request::from_path(Method::Post, "/modules");
        assert_eq!(
            Command::decode(&post).unwrap_err().status(),
            Status::MethodNotAllowed
        );
        let delete = Request::from_path(Method::Delete, "/modules/a/params/b");
        assert_eq!(
            Command::decode(&delete).unwrap_err().to_string(),
            "DELETE not allowed here (allowed: GET, PUT)"
        );
    }

    #[test]
    fn payloads_are_checked() {
        let put = |body: &'static [u8], cf: Option<u16>| {
            let mut r = Request::from_path(Method::Put, "/modules/m/params/p").with_payload(body);
            r.content_format = cf;
            Command::decode(&r)
        };
        let value = |c: Result<Command, RequestError>| match c {
            Ok(Command::WriteParameter { value, .. }) => Ok(value),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => Err(e.status()),
        };
        assert_eq!(value(put(b"0.05", None)), Ok(Value::F64(0.05)));
        assert_eq!(value(put(b"7", Some(JSON))), Ok(Value::U64(7)));
        assert_eq!(
            value(put(b"\"option7\"", None)),
            Ok(Value::Text("option7".into()))
        );
        assert_eq!(
            value(put(b"option7", Some(TEXT_PLAIN))),
            Ok(Value::Text("option7".into()))
        );
        assert_eq!(
            value(put(b"true\n", Some(TEXT_PLAIN))),
            Ok(Value::Bool(true))
        );
        assert_eq!(value(put(b"option7", None)), Err(Status::BadRequest));
        assert_eq!(value(put(b"null", None)), Err(Status::BadRequest));
        assert_eq!(value(put(b"[1]", None)), Err(Status::BadRequest));
        assert_eq!(value(put(b"", None)), Err(Status::BadRequest));
        assert_eq!(
            value(put(b"1", Some(OCTET_STREAM))),
            Err(Status::UnsupportedContentFormat)
        );
        let big = vec![b'1'; MAX_PAYLOAD + 1];
        let r = Request::from_path(Method::Put, "/modules/m/params/p").with_payload(&big);
        assert_eq!(
            Command::decode(&r).unwrap_err().status(),
            Status::RequestEntityTooLarge
        );
        let r = Request::from_path(Method::Get, "/modules").with_payload(b"x");
        assert_eq!(
            Command::decode(&r).unwrap_err().status(),
            Status::BadRequest
        );
        let r = Request::from_path(Method::Post, "/pipeline/load")
            .with_payload(br#"{"state":"s","x":1}"#);
        assert_eq!(
            Command::decode(&r).unwrap_err().status(),
            Status::BadRequest
        );
        let r =
            Request::from_path(Method::Post, "/pipeline/load").with_payload(br#"{"state":"s"}"#);
        assert_eq!(
            Command::decode(&r),
            Ok(Command::LoadState {
                state: Some("s".into())
            })
        );
        let r = Request::from_path(Method::Get, "/modules").with_accept(LINK_FORMAT);
        assert_eq!(
            Command::decode(&r).unwrap_err().status(),
            Status::NotAcceptable
        );
        let r = Request::from_path(Method::Get, "/.well-known/core").with_accept(LINK_FORMAT);
        assert_eq!(Command::decode(&r), Ok(Command::Discover));
    }

    #[test]
    fn non_utf8_and_long_paths_are_not_found() {
        let r = Request {
            method: Method::Get,
            segments: vec![b"modules", b"\xff", b"stats"],
            content_format: None,
            accept: None,
            payload: &[],
        };
        assert_eq!(Command::decode(&r).unwrap_err().status(), Status::NotFound);
        let r = Request::from_path(Method::Get, "/a/b/c/d/e/f/g/h/i");
        assert_eq!(Command::decode(&r).unwrap_err().status(), Status::NotFound);
    }

    #[test]
    fn memory_store_keeps_the_last_states() {
        let mut s = MemoryStateStore::new(2);
        assert_eq!(s.load(None).unwrap(), None);
        assert_eq!(s.store(b"a").unwrap(), "state-1");
        assert_eq!(s.store(b"b").unwrap(), "state-2");
        assert_eq!(s.store(b"c").unwrap(), "state-3");
        assert_eq!(s.load(Some("state-1")).unwrap(), None);
        let (label, bytes) = s.load(None).unwrap().unwrap();
        assert_eq!((label.as_str(), bytes.as_slice()), ("state-3", &b"c"[..]));
        s.store(b"secret-pad").unwrap();
        assert!(!format!("{s:?}").contains("secret-pad"));
    }

    #[test]
    fn names_are_percent_encoded_in_links() {
        assert_eq!(percent_encode("max_qber"), "max_qber");
        assert_eq!(percent_encode("a>b,c"), "a%3Eb%2Cc");
    }
}
