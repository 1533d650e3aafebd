//! The control surface of [`qkd_core::control`] served over CoAP (RFC 7252)
//! on a UDP socket, the way the AIT seed gives every QKD module a CoAP
//! service context: bind to any port, register with the QKD Protocol Manager
//! (`qpm`), answer GET/PUT/POST on the module resources.
//!
//! Three layers, usable alone:
//!
//! - [`CoapServer`]: the message layer for any resource handler: decoding
//!   (a malformed message is dropped, or answered with Reset when it was
//!   confirmable), piggybacked answers, duplicate detection by message ID,
//!   block-wise answers (RFC 7959, Block2) for representations over
//!   [`BLOCK_SIZE`] bytes, 4.02 on unknown critical options. `qpm` serves its
//!   own tree through it.
//! - [`ControlEndpoint`]: sans-IO, the control surface over a
//!   [`ModuleHost`] and a [`StateStore`] passed in at each call, plus
//!   registration with the QPM (a `POST /hosts` repeated every
//!   [`EndpointConfig::refresh`], so a restarted QPM learns the host again),
//!   CoAP Observe (RFC 7641) on the statistics, and `POST /host/shutdown`
//!   from the QPM. A host with its own event loop feeds it datagrams and
//!   timeouts and sends what [`ControlEndpoint::poll_transmit`] gives.
//! - [`spawn`]: a thread that runs the endpoint on a `UdpSocket` for a host
//!   behind an `Arc<Mutex<_>>`.
//!
//! The control channel is neither authenticated nor encrypted (no DTLS or
//! OSCORE): bind it to loopback or a management network. Saved states never
//! travel over it (see [`qkd_core::control`]).

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet};
use qkd_core::control::{self, Command, Method, Request, Response, StateStore, Status};
use qkd_core::module::ModuleHost;
use serde::{Deserialize, Serialize};

/// The block size of block-wise answers, bytes (SZX 6). A larger payload is
/// sent in blocks; the whole datagram stays under RFC 7252's 1152 bytes.
pub const BLOCK_SIZE: usize = 1024;

/// The largest datagram read, bytes.
pub const MAX_DATAGRAM: usize = 1280;

/// How long an answer is kept to resend to a duplicate request (the same
/// peer and message ID), and a block-wise body to serve its later blocks.
const EXCHANGE_LIFETIME: Duration = Duration::from_secs(30);

/// How many answers are kept for duplicates and block-wise bodies.
const CACHE_ENTRIES: usize = 128;

/// Options this server understands; any other critical (odd-numbered)
/// option in a request is refused with 4.02.
const KNOWN_CRITICAL: [u16; 6] = [3, 7, 11, 15, 23, 27];
/// Accept.
const OPTION_ACCEPT: u16 = 17;

/// A request as the message layer hands it to a resource handler: the
/// control surface's [`Request`] plus who sent it.
#[derive(Debug)]
pub struct Incoming<'a> {
    /// The sender.
    pub from: SocketAddr,
    /// The request.
    pub request: Request<'a>,
    /// The Observe option's value, when present (0 registers, 1 deregisters).
    pub observe: Option<u32>,
    /// The request's token.
    pub token: &'a [u8],
}

/// What a resource handler answers: the response and, for a request that
/// registered an observation, the Observe sequence number to put in it.
#[derive(Debug)]
pub struct Reply {
    /// The response.
    pub response: Response,
    /// The Observe option of the answer (RFC 7641), when the request
    /// registered an observation.
    pub observe: Option<u32>,
}

impl From<Response> for Reply {
    fn from(response: Response) -> Self {
        Reply {
            response,
            observe: None,
        }
    }
}

/// A response, ACK or Reset that arrived (the endpoint acts as a client for
/// its registrations).
#[derive(Debug)]
pub struct Answer {
    /// The sender.
    pub from: SocketAddr,
    /// The message type.
    pub kind: MessageType,
    /// The message ID.
    pub message_id: u16,
    /// The token.
    pub token: Vec<u8>,
    /// The response code, `None` for an empty message (a bare ACK or Reset).
    pub status: Option<u8>,
    /// The payload.
    pub payload: Vec<u8>,
}

struct CachedReply {
    at: Instant,
    peer: SocketAddr,
    message_id: u16,
    datagram: Vec<u8>,
}

struct CachedBody {
    at: Instant,
    peer: SocketAddr,
    key: String,
    response: Response,
}

/// The CoAP message layer (see the [module docs](self)).
pub struct CoapServer {
    replies: VecDeque<CachedReply>,
    bodies: VecDeque<CachedBody>,
    next_message_id: u16,
}

impl Default for CoapServer {
    fn default() -> Self {
        Self::new(0)
    }
}

impl std::fmt::Debug for CoapServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoapServer")
            .field("cached_replies", &self.replies.len())
            .field("cached_bodies", &self.bodies.len())
            .finish_non_exhaustive()
    }
}

impl CoapServer {
    /// A message layer whose own messages (notifications, requests) start at
    /// message ID `first_message_id`.
    pub fn new(first_message_id: u16) -> Self {
        CoapServer {
            replies: VecDeque::new(),
            bodies: VecDeque::new(),
            next_message_id: first_message_id,
        }
    }

    /// A fresh message ID for a message this side starts.
    pub fn next_message_id(&mut self) -> u16 {
        self.next_message_id = self.next_message_id.wrapping_add(1);
        self.next_message_id
    }

    /// Handles one datagram with `handler` for requests. Everything to send
    /// back is appended to `out`; a response, empty ACK or Reset that
    /// arrived (for requests this side sent) is returned.
    pub fn handle<F>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut Vec<(SocketAddr, Vec<u8>)>,
        mut handler: F,
    ) -> Option<Answer>
    where
        F: FnMut(&Incoming<'_>) -> Reply,
    {
        self.expire(now);
        let packet = match Packet::from_bytes(datagram) {
            Ok(p) if p.header.get_version() == 1 => p,
            _ => {
                // Malformed: a confirmable one is rejected with Reset
                // (RFC 7252 §4.2), anything else silently dropped.
                if datagram.len() >= 4 && datagram[0] >> 6 == 1 && (datagram[0] >> 4) & 3 == 0 {
                    out.push((from, reset(u16::from_be_bytes([datagram[2], datagram[3]]))));
                }
                return None;
            }
        };
        let kind = packet.header.get_type();
        let message_id = packet.header.message_id;
        let code: u8 = packet.header.code.into();
        match packet.header.code {
            MessageClass::Empty => {
                if kind == MessageType::Confirmable {
                    out.push((from, reset(message_id)));
                    return None;
                }
                return Some(Answer {
                    from,
                    kind,
                    message_id,
                    token: packet.get_token().to_vec(),
                    status: None,
                    payload: Vec::new(),
                });
            }
            MessageClass::Request(_) => {}
            _ if code >> 5 >= 2 => {
                if kind == MessageType::Confirmable {
                    out.push((from, empty_ack(message_id)));
                }
                return Some(Answer {
                    from,
                    kind,
                    message_id,
                    token: packet.get_token().to_vec(),
                    status: Some(code),
                    payload: packet.payload,
                });
            }
            _ => {
                if kind == MessageType::Confirmable {
                    out.push((from, reset(message_id)));
                }
                return None;
            }
        }
        if kind == MessageType::Acknowledgement || kind == MessageType::Reset {
            return None;
        }
        if let Some(cached) = self
            .replies
            .iter()
            .find(|r| r.peer == from && r.message_id == message_id)
        {
            out.push((from, cached.datagram.clone()));
            return None;
        }
        let response = self.answer(now, from, &packet, code, &mut handler);
        let message_id_out = if kind == MessageType::Confirmable {
            message_id
        } else {
            self.next_message_id()
        };
        let reply_kind = if kind == MessageType::Confirmable {
            MessageType::Acknowledgement
        } else {
            MessageType::NonConfirmable
        };
        let datagram = encode_response(&response, reply_kind, message_id_out, packet.get_token());
        self.replies.push_back(CachedReply {
            at: now,
            peer: from,
            message_id,
            datagram: datagram.clone(),
        });
        if self.replies.len() > CACHE_ENTRIES {
            self.replies.pop_front();
        }
        out.push((from, datagram));
        None
    }

    fn answer<F>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        packet: &Packet,
        code: u8,
        handler: &mut F,
    ) -> OutResponse
    where
        F: FnMut(&Incoming<'_>) -> Reply,
    {
        for (&number, _) in packet.options() {
            if number % 2 == 1 && !KNOWN_CRITICAL.contains(&number) && number != OPTION_ACCEPT {
                return OutResponse::whole(Response::error(
                    Status::BadOption,
                    &format!("critical option {number} not understood"),
                ));
            }
        }
        let segments: Vec<&[u8]> = packet
            .get_option(CoapOption::UriPath)
            .map(|l| {
                l.iter()
                    .map(Vec::as_slice)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let uint = |o: CoapOption| packet.get_first_option(o).and_then(|v| decode_uint(v));
        let content_format = uint(CoapOption::ContentFormat).and_then(|v| u16::try_from(v).ok());
        let accept = uint(CoapOption::Accept).and_then(|v| u16::try_from(v).ok());
        let observe = uint(CoapOption::Observe);
        let block2 = uint(CoapOption::Block2).map(BlockOption::from_value);
        if let Some(b1) = uint(CoapOption::Block1).map(BlockOption::from_value)
            && (b1.num != 0 || b1.more)
        {
            return OutResponse::whole(Response::error(
                Status::RequestEntityTooLarge,
                "block-wise requests are not taken; payloads fit one message",
            ));
        }
        let request = Request {
            method: Method::from_code_detail(code & 0x1f),
            segments,
            content_format,
            accept,
            payload: &packet.payload,
        };
        let key = format!("{} {}", request.method, request.path());
        let response = match block2 {
            Some(b) if b.num > 0 => {
                let cached = self
                    .bodies
                    .iter()
                    .find(|c| c.peer == from && c.key == key)
                    .map(|c| c.response.clone());
                match cached {
                    Some(r) => Reply::from(r),
                    None => handler(&Incoming {
                        from,
                        request,
                        observe: None,
                        token: packet.get_token(),
                    }),
                }
            }
            _ => handler(&Incoming {
                from,
                request,
                observe,
                token: packet.get_token(),
            }),
        };
        let Reply {
            response,
            observe: observe_seq,
        } = response;
        let size = block2.map_or(BLOCK_SIZE, |b| b.size().min(BLOCK_SIZE));
        if response.payload.len() <= size && block2.is_none_or(|b| b.num == 0) {
            let mut out = OutResponse::whole(response);
            out.observe = observe_seq;
            return out;
        }
        let num = block2.map_or(0, |b| b.num);
        let start = (num as usize).saturating_mul(size);
        if start >= response.payload.len() && !(start == 0 && response.payload.is_empty()) {
            return OutResponse::whole(Response::error(Status::BadOption, "no such block"));
        }
        let end = (start + size).min(response.payload.len());
        let more = end < response.payload.len();
        if num == 0 {
            self.bodies.retain(|c| !(c.peer == from && c.key == key));
            self.bodies.push_back(CachedBody {
                at: now,
                peer: from,
                key,
                response: response.clone(),
            });
            if self.bodies.len() > CACHE_ENTRIES {
                self.bodies.pop_front();
            }
        }
        OutResponse {
            block2: Some(BlockOption {
                num,
                more,
                szx: szx_of(size),
            }),
            payload: response.payload[start..end].to_vec(),
            size2: Some(response.payload.len()),
            response: Response {
                payload: Vec::new(),
                ..response
            },
            observe: if num == 0 { observe_seq } else { None },
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .replies
            .front()
            .is_some_and(|r| now.duration_since(r.at) > EXCHANGE_LIFETIME)
        {
            self.replies.pop_front();
        }
        while self
            .bodies
            .front()
            .is_some_and(|r| now.duration_since(r.at) > EXCHANGE_LIFETIME)
        {
            self.bodies.pop_front();
        }
    }
}

/// An answer on its way out: the whole response or one block of it.
struct OutResponse {
    response: Response,
    payload: Vec<u8>,
    block2: Option<BlockOption>,
    size2: Option<usize>,
    observe: Option<u32>,
}

impl OutResponse {
    fn whole(response: Response) -> Self {
        let payload = response.payload.clone();
        OutResponse {
            response,
            payload,
            block2: None,
            size2: None,
            observe: None,
        }
    }
}

/// A Block1/Block2 option value (RFC 7959 §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockOption {
    /// The block number.
    pub num: u32,
    /// Whether more blocks follow.
    pub more: bool,
    /// The size exponent: blocks are `16 << szx` bytes (0..=6).
    pub szx: u8,
}

impl BlockOption {
    /// Decodes the option's unsigned value.
    pub fn from_value(v: u32) -> Self {
        BlockOption {
            num: v >> 4,
            more: v & 8 != 0,
            szx: (v & 7).min(6) as u8,
        }
    }

    /// The option's unsigned value.
    pub fn value(self) -> u32 {
        (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx.min(6))
    }

    /// The block size in bytes.
    pub fn size(self) -> usize {
        16 << self.szx.min(6)
    }
}

fn szx_of(size: usize) -> u8 {
    (size.max(16).trailing_zeros().saturating_sub(4)).min(6) as u8
}

/// Decodes a CoAP unsigned-integer option value (0 to 4 bytes, big-endian).
pub fn decode_uint(bytes: &[u8]) -> Option<u32> {
    if bytes.len() > 4 {
        return None;
    }
    Some(bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
}

/// Encodes an unsigned-integer option value in the fewest bytes.
pub fn encode_uint(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    bytes[skip..].to_vec()
}

fn reset(message_id: u16) -> Vec<u8> {
    let [hi, lo] = message_id.to_be_bytes();
    vec![0x70, 0x00, hi, lo]
}

fn empty_ack(message_id: u16) -> Vec<u8> {
    let [hi, lo] = message_id.to_be_bytes();
    vec![0x60, 0x00, hi, lo]
}

fn encode_response(out: &OutResponse, kind: MessageType, message_id: u16, token: &[u8]) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(kind);
    p.header.message_id = message_id;
    p.header.code = MessageClass::from(out.response.status.code());
    p.set_token(token.to_vec());
    if let Some(seq) = out.observe {
        p.add_option(CoapOption::Observe, encode_uint(seq & 0x00ff_ffff));
    }
    if let Some(cf) = out.response.content_format {
        p.add_option(CoapOption::ContentFormat, encode_uint(u32::from(cf)));
    }
    if let Some(b) = out.block2 {
        p.add_option(CoapOption::Block2, encode_uint(b.value()));
    }
    if let Some(size) = out.size2 {
        p.add_option(
            CoapOption::Size2,
            encode_uint(u32::try_from(size).unwrap_or(u32::MAX)),
        );
    }
    p.payload = out.payload.clone();
    match p.to_bytes() {
        Ok(bytes) => bytes,
        Err(_) => {
            // Only an oversized message fails; answer 5.00 without payload.
            let mut p = Packet::new();
            p.header.set_version(1);
            p.header.set_type(kind);
            p.header.message_id = message_id;
            p.header.code = MessageClass::from(Status::InternalServerError.code());
            p.set_token(token.to_vec());
            p.to_bytes().unwrap_or_else(|_| reset(message_id))
        }
    }
}

// One argument per field of the CoAP message; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
/// Encodes a request this side starts (a registration, a proxied request,
/// a client's request), with path segments from `path` (slashes).
pub fn encode_request(
    kind: MessageType,
    message_id: u16,
    token: &[u8],
    method: Method,
    path: &str,
    content_format: Option<u16>,
    payload: &[u8],
    block2: Option<BlockOption>,
) -> io::Result<Vec<u8>> {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(kind);
    p.header.message_id = message_id;
    p.header.code = MessageClass::from(method.code_detail());
    p.set_token(token.to_vec());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    if let Some(cf) = content_format {
        p.add_option(CoapOption::ContentFormat, encode_uint(u32::from(cf)));
    }
    if let Some(b) = block2 {
        p.add_option(CoapOption::Block2, encode_uint(b.value()));
    }
    p.payload = payload.to_vec();
    p.to_bytes().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot encode the request: {e:?}"),
        )
    })
}

/// Settings of a [`ControlEndpoint`].
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// The host's name as the QPM knows it (`link/side`, e.g. `ground-1/alice`).
    pub name: String,
    /// The QPM to register with; `None` serves without registering.
    pub qpm: Option<SocketAddr>,
    /// How often the registration is sent again (it doubles as the
    /// heartbeat the QPM supervises).
    pub refresh: Duration,
    /// How often observed statistics are checked for a change.
    pub observe_interval: Duration,
    /// The most observations kept at once; a new one beyond it replaces
    /// the oldest.
    pub max_observers: usize,
}

impl EndpointConfig {
    /// Defaults: refresh every 2 s, statistics checked every 500 ms, 16 observers.
    pub fn new(name: impl Into<String>, qpm: Option<SocketAddr>) -> Self {
        EndpointConfig {
            name: name.into(),
            qpm,
            refresh: Duration::from_secs(2),
            observe_interval: Duration::from_millis(500),
            max_observers: 16,
        }
    }
}

/// The payload of a registration, `POST /hosts` on the QPM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The host's name (`link/side`).
    pub name: String,
    /// The host's process ID, so the QPM can tell its own child from an
    /// impostor and adopt a host it did not start after a restart.
    pub pid: u32,
}

/// Where the registration with the QPM stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// No QPM configured.
    NoQpm,
    /// Sent, not (yet) answered.
    Pending,
    /// The QPM accepted it (2.01 or 2.04).
    Registered,
    /// The QPM refused it: the status and its diagnostic.
    Refused(Status, String),
}

struct Observer {
    peer: SocketAddr,
    token: Vec<u8>,
    module: String,
    last: Vec<u8>,
}

/// The control surface over CoAP, sans-IO (see the [module docs](self)).
pub struct ControlEndpoint {
    config: EndpointConfig,
    server: CoapServer,
    observers: Vec<Observer>,
    observe_seq: u32,
    next_refresh: Option<Instant>,
    next_observe: Option<Instant>,
    registration: RegistrationState,
    registration_token: Vec<u8>,
    shutdown_requested: bool,
    transmit: VecDeque<(SocketAddr, Vec<u8>)>,
}

impl std::fmt::Debug for ControlEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlEndpoint")
            .field("config", &self.config)
            .field("observers", &self.observers.len())
            .field("registration", &self.registration)
            .finish_non_exhaustive()
    }
}

impl ControlEndpoint {
    /// An endpoint; `now` schedules the first registration at once.
    pub fn new(config: EndpointConfig, now: Instant) -> Self {
        let pid = std::process::id();
        ControlEndpoint {
            next_refresh: config.qpm.map(|_| now),
            next_observe: None,
            registration: if config.qpm.is_some() {
                RegistrationState::Pending
            } else {
                RegistrationState::NoQpm
            },
            registration_token: pid.to_be_bytes().to_vec(),
            server: CoapServer::new((pid as u16).wrapping_mul(7919)),
            observers: Vec::new(),
            observe_seq: 1,
            shutdown_requested: false,
            transmit: VecDeque::new(),
            config,
        }
    }

    /// Where the registration stands.
    pub fn registration(&self) -> &RegistrationState {
        &self.registration
    }

    /// Whether the QPM asked this host to shut down (`POST /host/shutdown`).
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown_requested
    }

    /// How many observations are registered.
    pub fn observers(&self) -> usize {
        self.observers.len()
    }

    /// Feeds one datagram. Never panics on any input; whatever it answers
    /// is queued for [`poll_transmit`](Self::poll_transmit).
    pub fn handle_datagram<H, S>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        host: &mut H,
        states: &mut S,
    ) where
        H: ModuleHost + ?Sized,
        S: StateStore + ?Sized,
    {
        let mut out = Vec::new();
        let qpm = self.config.qpm;
        let mut shutdown = false;
        let mut new_observer: Option<Observer> = None;
        let mut deregister: Option<(SocketAddr, Vec<u8>)> = None;
        let observe_seq = self.observe_seq;
        let answer = self
            .server
            .handle(now, from, datagram, &mut out, |incoming| {
                let segments = &incoming.request.segments;
                if segments.as_slice() == [&b"host"[..], &b"shutdown"[..]] {
                    if incoming.request.method != Method::Post {
                        return Response::error(Status::MethodNotAllowed, "POST only").into();
                    }
                    if Some(incoming.from) != qpm {
                        return Response::error(
                            Status::Forbidden,
                            "only the QPM may shut this host down",
                        )
                        .into();
                    }
                    shutdown = true;
                    return Response::json(Status::Changed, &"shutting down").into();
                }
                let command = match Command::decode(&incoming.request) {
                    Ok(c) => c,
                    Err(e) => return Response::error(e.status(), &e.to_string()).into(),
                };
                let response = control::execute(host, states, &command);
                match (&command, incoming.observe) {
                    (Command::Statistics { module }, Some(0)) if response.status.is_success() => {
                        new_observer = Some(Observer {
                            peer: incoming.from,
                            token: incoming.token.to_vec(),
                            module: module.clone(),
                            last: response.payload.clone(),
                        });
                        Reply {
                            response,
                            observe: Some(observe_seq),
                        }
                    }
                    (_, Some(1)) => {
                        deregister = Some((incoming.from, incoming.token.to_vec()));
                        response.into()
                    }
                    _ => response.into(),
                }
            });
        if shutdown {
            self.shutdown_requested = true;
        }
        if let Some((peer, token)) = deregister {
            self.observers
                .retain(|o| !(o.peer == peer && o.token == token));
        }
        if let Some(o) = new_observer {
            self.observers
                .retain(|x| !(x.peer == o.peer && x.token == o.token));
            if self.observers.len() >= self.config.max_observers {
                self.observers.remove(0);
            }
            self.observers.push(o);
            self.observe_seq = self.observe_seq.wrapping_add(1) & 0x00ff_ffff;
            self.next_observe
                .get_or_insert(now + self.config.observe_interval);
        }
        if let Some(answer) = answer {
            self.take_answer(answer);
        }
        self.transmit.extend(out);
    }

    fn take_answer(&mut self, answer: Answer) {
        match answer.kind {
            MessageType::Reset => {
                // A Reset to a notification ends that observation.
                let peer = answer.from;
                self.observers.retain(|o| o.peer != peer);
            }
            _ => {
                if Some(answer.from) != self.config.qpm || answer.token != self.registration_token {
                    return;
                }
                match answer.status.and_then(Status::from_code) {
                    Some(s) if s.is_success() => self.registration = RegistrationState::Registered,
                    Some(s) => {
                        self.registration = RegistrationState::Refused(
                            s,
                            String::from_utf8_lossy(&answer.payload).into_owned(),
                        );
                    }
                    None => {}
                }
            }
        }
    }

    /// Sends the registration when it is due and notifications for
    /// observed statistics that changed.
    pub fn handle_timeout<H, S>(&mut self, now: Instant, host: &mut H, states: &mut S)
    where
        H: ModuleHost + ?Sized,
        S: StateStore + ?Sized,
    {
        if let (Some(at), Some(qpm)) = (self.next_refresh, self.config.qpm)
            && now >= at
        {
            self.next_refresh = Some(now + self.config.refresh);
            let body = Registration {
                name: self.config.name.clone(),
                pid: std::process::id(),
            };
            let payload = serde_json::to_vec(&body).unwrap_or_default();
            let mid = self.server.next_message_id();
            if let Ok(datagram) = encode_request(
                MessageType::Confirmable,
                mid,
                &self.registration_token,
                Method::Post,
                "/hosts",
                Some(control::JSON),
                &payload,
                None,
            ) {
                self.transmit.push_back((qpm, datagram));
            }
        }
        if let Some(at) = self.next_observe
            && now >= at
        {
            self.next_observe = if self.observers.is_empty() {
                None
            } else {
                Some(now + self.config.observe_interval)
            };
            let mut gone = Vec::new();
            for (i, o) in self.observers.iter_mut().enumerate() {
                let r = control::execute(
                    host,
                    states,
                    &Command::Statistics {
                        module: o.module.clone(),
                    },
                );
                if r.payload == o.last && r.status.is_success() {
                    continue;
                }
                if !r.status.is_success() {
                    gone.push(i);
                }
                o.last = r.payload.clone();
                self.observe_seq = self.observe_seq.wrapping_add(1) & 0x00ff_ffff;
                let mid = self.server.next_message_id();
                let mut out = if r.payload.len() > BLOCK_SIZE {
                    let first = r.payload[..BLOCK_SIZE].to_vec();
                    OutResponse {
                        size2: Some(r.payload.len()),
                        block2: Some(BlockOption {
                            num: 0,
                            more: true,
                            szx: 6,
                        }),
                        payload: first,
                        response: r,
                        observe: None,
                    }
                } else {
                    OutResponse::whole(r)
                };
                out.observe = Some(self.observe_seq);
                self.transmit.push_back((
                    o.peer,
                    encode_response(&out, MessageType::NonConfirmable, mid, &o.token),
                ));
            }
            for i in gone.into_iter().rev() {
                self.observers.remove(i);
            }
        }
    }

    /// The next datagram to send and where.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmit.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.next_refresh, self.next_observe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A running CoAP service thread (see [`spawn`]).
#[derive(Debug)]
pub struct ServiceHandle {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
    registration: Arc<Mutex<RegistrationState>>,
    thread: Option<JoinHandle<()>>,
}

impl ServiceHandle {
    /// The address the service answers on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether the QPM asked the host to shut down; the host should save
    /// what it must and exit.
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// Where the registration with the QPM stands.
    pub fn registration(&self) -> RegistrationState {
        lock(&self.registration).clone()
    }

    /// Stops the service thread and waits for it.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A host thread that panicked while holding the lock leaves the data as
    // it was at the panic; serving it is better than stopping the service.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs a [`ControlEndpoint`] on `socket` in a new thread, serving `host`
/// (locked for each request, never across a wait) and `states`.
///
/// # Errors
/// The socket's address or timeout could not be read or set, or the thread
/// could not start.
pub fn spawn<H, S>(
    socket: UdpSocket,
    config: EndpointConfig,
    host: Arc<Mutex<H>>,
    mut states: S,
) -> io::Result<ServiceHandle>
where
    H: ModuleHost + Send + 'static,
    S: StateStore + Send + 'static,
{
    let local = socket.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let shutdown = Arc::new(AtomicBool::new(false));
    let registration = Arc::new(Mutex::new(RegistrationState::Pending));
    let (stop2, shutdown2, registration2) = (stop.clone(), shutdown.clone(), registration.clone());
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let thread = std::thread::Builder::new()
        .name(format!("coap {}", config.name))
        .spawn(move || {
            let mut endpoint = ControlEndpoint::new(config, Instant::now());
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while !stop2.load(Ordering::Relaxed) {
                let now = Instant::now();
                if endpoint.poll_timeout().is_some_and(|t| t <= now) {
                    let mut h = lock(&host);
                    endpoint.handle_timeout(now, &mut *h, &mut states);
                }
                let wait = endpoint
                    .poll_timeout()
                    .map_or(Duration::from_millis(100), |t| {
                        t.saturating_duration_since(now)
                    })
                    .clamp(Duration::from_millis(1), Duration::from_millis(100));
                let _ = socket.set_read_timeout(Some(wait));
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let mut h = lock(&host);
                    endpoint.handle_datagram(Instant::now(), from, &buf[..n], &mut *h, &mut states);
                }
                while let Some((to, datagram)) = endpoint.poll_transmit() {
                    let _ = socket.send_to(&datagram, to);
                }
                if endpoint.shutdown_requested() {
                    shutdown2.store(true, Ordering::Relaxed);
                }
                let state = endpoint.registration().clone();
                *lock(&registration2) = state;
            }
        })?;
    Ok(ServiceHandle {
        local,
        stop,
        shutdown,
        registration,
        thread: Some(thread),
    })
}

/// The command-line options a pipeline host takes to be managed by `qpm`;
/// `#[command(flatten)]` them into the host's arguments and call
/// [`serve`](Self::serve) once its [`ModuleHost`] exists.
///
/// ```no_run
/// use std::sync::{Arc, Mutex};
/// use clap::Parser;
/// use qkd_core::module::ModuleHost;
/// use qkd_examples::coap_service::HostControlArgs;
///
/// #[derive(Parser)]
/// struct Args {
///     #[command(flatten)]
///     control: HostControlArgs,
/// }
///
/// fn run<H: ModuleHost + Send + 'static>(pipeline: H) -> std::io::Result<()> {
///     let args = Args::parse();
///     let pipeline = Arc::new(Mutex::new(pipeline));
///     let service = args.control.serve(pipeline.clone())?;
///     while !service.as_ref().is_some_and(|s| s.shutdown_requested()) {
///         // drive the pipeline, locking it for each step
/// #       break;
///     }
///     Ok(())
/// }
/// ```
#[derive(clap::Args, Clone, Debug)]
pub struct HostControlArgs {
    /// Register with the QKD Protocol Manager at this address (and serve
    /// the control surface over CoAP).
    #[arg(long, value_name = "ADDR")]
    pub qpm: Option<SocketAddr>,
    /// The name to register under, `LINK/SIDE`.
    #[arg(long, value_name = "LINK/SIDE", default_value = "link/side")]
    pub name: String,
    /// The folder of saved states (`POST /pipeline/save`).
    #[arg(long, value_name = "DIR", default_value = "qkd-state")]
    pub state_dir: std::path::PathBuf,
    /// Serve the control surface over CoAP on this address even without a
    /// QPM (port 0: any free port).
    #[arg(long, value_name = "ADDR")]
    pub coap: Option<SocketAddr>,
}

impl HostControlArgs {
    /// Binds the CoAP service and starts it (and the registration, with
    /// `--qpm`); `None` when neither `--qpm` nor `--coap` was given.
    ///
    /// # Errors
    /// The state folder or the socket could not be opened.
    pub fn serve<H>(&self, host: Arc<Mutex<H>>) -> io::Result<Option<ServiceHandle>>
    where
        H: ModuleHost + Send + 'static,
    {
        let bind = match (self.coap, self.qpm) {
            (Some(a), _) => a,
            (None, Some(q)) => SocketAddr::new(q.ip(), 0),
            (None, None) => return Ok(None),
        };
        let states = crate::state_directory::StateDirectory::open(&self.state_dir)?;
        let socket = UdpSocket::bind(bind)?;
        let config = EndpointConfig::new(self.name.clone(), self.qpm);
        spawn(socket, config, host, states).map(Some)
    }
}
