//! [`Kme`]: the transport-free request handler, and its [`KmeConfig`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use qkd_core::KeyId;
use qkd_core::machine::ConfigError;
use serde::{Deserialize, Serialize};

use crate::model::{ErrorBody, Extension, Key, KeyContainer, KeyIds, KeyRequest, Status};
use crate::request::{Operation, Request, RequestId, check_sae_id, decode, query_pairs, route};
use crate::response::{Response, messages};
use crate::source::{KeySource, Probe, SourceError};

/// Settings of a [`Kme`].
///
/// Every field but the two KME IDs has a default (shown, the same as
/// [`KmeConfig::new`]). The limits the handler reports and enforces are
/// these, lowered to what the key source supports (its largest key, keys
/// per request and slaves per binding).
///
/// ```
/// use qkd_etsi014::KmeConfig;
///
/// let c: KmeConfig = serde_json::from_str(r#"{"kme_id": "kme-a", "peer_kme_id": "kme-b", "key_size": 512}"#).unwrap();
/// assert_eq!(c.key_size, 512);
/// c.validate().unwrap();
/// let bad = KmeConfig { key_size: 100, ..c };
/// assert_eq!(bad.validate().unwrap_err().field(), "key_size");
/// assert!(serde_json::from_str::<KmeConfig>(r#"{"kme_id": "a", "peer_kme_id": "b", "typo": 1}"#).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmeConfig {
    /// This KME's ID (`source_KME_ID` in status answers).
    pub kme_id: String,
    /// The peer KME's ID, where the slave SAEs fetch their keys (`target_KME_ID`).
    pub peer_kme_id: String,
    /// Default key size in bits (a multiple of 8, between the two bounds; default 256).
    #[serde(default = "defaults::key_size")]
    pub key_size: u32,
    /// Smallest key size in bits (a multiple of 8, at least 8; default 64).
    #[serde(default = "defaults::min_key_size")]
    pub min_key_size: u32,
    /// Largest key size in bits (a multiple of 8; default 65 536). The
    /// source may lower it (qkd-sync: the store's
    /// `StoreConfig::max_key_bytes` × 8, 65 536 by default); the status
    /// answer reports the lower of the two.
    #[serde(default = "defaults::max_key_size")]
    pub max_key_size: u32,
    /// Most keys (or key IDs) per request (at least 1; default 1024).
    #[serde(default = "defaults::max_keys_per_request")]
    pub max_keys_per_request: u32,
    /// Most `additional_slave_SAE_IDs` per request (0 = no multicast, at
    /// most 63; default 16).
    #[serde(default = "defaults::max_sae_id_count")]
    pub max_sae_id_count: u32,
    /// Largest request body in bytes (64 to 16 MiB; default 64 KiB).
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// How long a `dec_keys` for keys not known here yet waits for the
    /// peer's notice before it is answered 400 (more than zero; default
    /// 2 s). With qkd-sync the node's `lookup_wait` bounds it too.
    #[serde(default = "defaults::dec_keys_wait")]
    pub dec_keys_wait: Duration,
    /// Most `dec_keys` requests waiting at once; more are answered 503
    /// (at least 1; default 1024).
    #[serde(default = "defaults::max_waiting")]
    pub max_waiting: u32,
}

/// The documented defaults, one function per field (serde needs them so).
mod defaults {
    use std::time::Duration;

    pub(super) const fn key_size() -> u32 {
        256
    }
    pub(super) const fn min_key_size() -> u32 {
        64
    }
    pub(super) const fn max_key_size() -> u32 {
        65_536
    }
    pub(super) const fn max_keys_per_request() -> u32 {
        1024
    }
    pub(super) const fn max_sae_id_count() -> u32 {
        16
    }
    pub(super) const fn max_body_bytes() -> usize {
        64 << 10
    }
    pub(super) const fn dec_keys_wait() -> Duration {
        Duration::from_secs(2)
    }
    pub(super) const fn max_waiting() -> u32 {
        1024
    }
}

/// Most additional slaves: a binding names at most 64 slaves.
const MAX_SAE_ID_COUNT: u32 = 63;

impl KmeConfig {
    /// The defaults (see the fields) for this KME and its peer.
    #[must_use]
    pub fn new(kme_id: impl Into<String>, peer_kme_id: impl Into<String>) -> Self {
        KmeConfig {
            kme_id: kme_id.into(),
            peer_kme_id: peer_kme_id.into(),
            key_size: defaults::key_size(),
            min_key_size: defaults::min_key_size(),
            max_key_size: defaults::max_key_size(),
            max_keys_per_request: defaults::max_keys_per_request(),
            max_sae_id_count: defaults::max_sae_id_count(),
            max_body_bytes: defaults::max_body_bytes(),
            dec_keys_wait: defaults::dec_keys_wait(),
            max_waiting: defaults::max_waiting(),
        }
    }

    /// Checks every field against the ranges in its documentation.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, id) in [("kme_id", &self.kme_id), ("peer_kme_id", &self.peer_kme_id)] {
            check_sae_id(id).map_err(|why| ConfigError::new(field, why))?;
        }
        for (field, bits) in [
            ("min_key_size", self.min_key_size),
            ("max_key_size", self.max_key_size),
            ("key_size", self.key_size),
        ] {
            if bits == 0 || !bits.is_multiple_of(8) {
                return Err(ConfigError::new(
                    field,
                    format!("must be a positive multiple of 8, got {bits}"),
                ));
            }
        }
        if self.max_key_size < self.min_key_size {
            return Err(ConfigError::new(
                "max_key_size",
                format!(
                    "must be at least min_key_size ({}), got {}",
                    self.min_key_size, self.max_key_size
                ),
            ));
        }
        if !(self.min_key_size..=self.max_key_size).contains(&self.key_size) {
            return Err(ConfigError::new(
                "key_size",
                format!(
                    "must be between min_key_size ({}) and max_key_size ({}), got {}",
                    self.min_key_size, self.max_key_size, self.key_size
                ),
            ));
        }
        if self.max_keys_per_request == 0 {
            return Err(ConfigError::new(
                "max_keys_per_request",
                "must be at least 1",
            ));
        }
        if self.max_sae_id_count > MAX_SAE_ID_COUNT {
            return Err(ConfigError::new(
                "max_sae_id_count",
                format!(
                    "must be at most {MAX_SAE_ID_COUNT}, got {}",
                    self.max_sae_id_count
                ),
            ));
        }
        if !(64..=16 << 20).contains(&self.max_body_bytes) {
            return Err(ConfigError::new(
                "max_body_bytes",
                format!("must be 64 to 16777216, got {}", self.max_body_bytes),
            ));
        }
        if self.dec_keys_wait.is_zero() {
            return Err(ConfigError::new("dec_keys_wait", "must be more than zero"));
        }
        if self.max_waiting == 0 {
            return Err(ConfigError::new("max_waiting", "must be at least 1"));
        }
        Ok(())
    }
}

/// The limits in force for one request: the configuration lowered to the source's.
#[derive(Clone, Copy, Debug)]
struct Limits {
    key_size: u64,
    min_key_size: u64,
    max_key_size: u64,
    max_keys_per_request: u64,
    max_sae_id_count: u64,
}

/// A `dec_keys` request waiting for keys the peer's notice has not brought yet.
struct Waiting {
    request: RequestId,
    deadline: Instant,
    master: String,
    slave: String,
    ids: Vec<KeyId>,
}

/// What the keys of a `dec_keys` request are, for its caller.
enum Verdict {
    /// All fetchable now.
    Ready,
    /// One is not for this slave (401).
    NotAuthorized,
    /// These are held for another master SAE (400).
    OtherMaster(Vec<KeyId>),
    /// These are not known here (yet).
    Absent(Vec<KeyId>),
}

/// The KME side of the ETSI GS QKD 014 API, sans IO: requests in,
/// responses out.
///
/// The host (an HTTPS server) authenticates the SAE by its client
/// certificate and hands each request to
/// [`handle_request`](Self::handle_request), with the [`KeySource`] the
/// keys come from (a `qkd_sync::SyncNode` with the `sync` feature). Every
/// request gets exactly one [`Response`], drained with
/// [`poll_response`](Self::poll_response), in the order they are ready:
///
/// - at once for `status`, `enc_keys` and every error;
/// - later for a `dec_keys` whose keys the peer's notice has not brought
///   yet: the request waits (at most [`KmeConfig::dec_keys_wait`], at most
///   [`KmeConfig::max_waiting`] of them) and is answered when the host
///   reports the keys' arrival ([`handle_arrival`](Self::handle_arrival),
///   or [`handle_sync_event`](Self::handle_sync_event) with qkd-sync), when
///   the source gives up waiting ([`handle_wait_ended`](Self::handle_wait_ended)),
///   or at the deadline ([`poll_timeout`](Self::poll_timeout),
///   [`handle_timeout`](Self::handle_timeout)).
///
/// Input: `handle_*`; output: `poll_*`; after every input drain
/// `poll_response` until `None` and set a timer for `poll_timeout`.
/// `now` never goes backwards. Getters: [`config`](Self::config),
/// [`waiting`](Self::waiting).
///
/// # Answers
///
/// | status | when | body |
/// | --- | --- | --- |
/// | 200 | success | `Status` or `KeyContainer` |
/// | 400 | malformed or refused request (messages in [`messages`]) | `Error` |
/// | 401 | `dec_keys` by an SAE not named slave of a key, or no caller SAE ID | `Error` |
/// | 503 | the source cannot serve (peer link down, not enough keys, too many waiting) | `Error` |
/// | 404 | a path outside the three of the API | `Error` |
/// | 405 | a method the API path does not allow ([`Response::allow`] set) | `Error` |
///
/// An unknown key is never 404: `dec_keys` answers 400 with the
/// standard's message. Paths outside the API are 404 and other methods
/// on an API path 405, both with an `Error` body: the standard defines
/// neither, and neither is an answer about keys.
#[derive(Debug)]
pub struct Kme {
    config: KmeConfig,
    responses: VecDeque<Response>,
    waiting: BTreeMap<u64, Waiting>,
    deadlines: BTreeSet<(Instant, u64)>,
    by_key: HashMap<KeyId, Vec<u64>>,
    next_seq: u64,
}

impl core::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Waiting")
            .field("request", &self.request)
            .field("keys", &self.ids.len())
            .finish_non_exhaustive()
    }
}

fn error(request: RequestId, status: u16, message: impl Into<String>) -> Response {
    Response::error(request, status, &ErrorBody::new(message))
}

fn bad_request(request: RequestId, message: impl Into<String>) -> Response {
    error(request, 400, message)
}

fn source_error(request: RequestId, e: SourceError, size: Option<u64>) -> Response {
    match e {
        SourceError::Unavailable(reason) => error(request, 503, reason),
        SourceError::Insufficient {
            requested,
            available,
        } => error(
            request,
            503,
            format!(
                "not enough key material: {requested} keys{} asked for, {available} available",
                size.map(|s| format!(" of {s} bits")).unwrap_or_default()
            ),
        ),
        SourceError::NotAuthorized => error(request, 401, messages::NOT_A_SLAVE),
        SourceError::NotFound => bad_request(request, messages::KEYS_NOT_FOUND),
    }
}

fn not_found(request: RequestId, ids: &[KeyId]) -> Response {
    let mut body = ErrorBody::new(messages::KEYS_NOT_FOUND);
    for id in ids {
        body = body.with_detail("key_ID", id.to_string());
    }
    Response::error(request, 400, &body)
}

/// A body that must be one JSON object (serde would also take a struct
/// from an array of its members in order, which the standard does not allow).
fn json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(body).map_err(|e| e.to_string()),
        _ => Err("the body shall be a JSON object".to_owned()),
    }
}

/// A decimal query value; too large saturates (the range check refuses it).
fn query_number(name: &str, value: &str) -> Result<u64, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{name} shall be a non-negative integer"));
    }
    Ok(value.parse().unwrap_or(u64::MAX))
}

fn judge<S: KeySource + ?Sized>(source: &S, ids: &[KeyId], master: &str, slave: &str) -> Verdict {
    let mut absent = Vec::new();
    let mut other = Vec::new();
    for id in ids {
        match source.probe(id, master, slave) {
            Probe::Ready => {}
            Probe::NotAuthorized => return Verdict::NotAuthorized,
            Probe::OtherMaster => other.push(*id),
            Probe::Absent => absent.push(*id),
        }
    }
    if !other.is_empty() {
        Verdict::OtherMaster(other)
    } else if absent.is_empty() {
        Verdict::Ready
    } else {
        Verdict::Absent(absent)
    }
}

impl Kme {
    /// A handler with no request waiting.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field if `config` does not pass
    /// [`KmeConfig::validate`].
    pub fn new(config: KmeConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Kme {
            config,
            responses: VecDeque::new(),
            waiting: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            by_key: HashMap::new(),
            next_seq: 0,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &KmeConfig {
        &self.config
    }

    /// `dec_keys` requests waiting for keys.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Handles one request at `now`; its response comes out of
    /// [`poll_response`](Self::poll_response), at once or (a `dec_keys`
    /// waiting for the peer) later.
    pub fn handle_request<S: KeySource + ?Sized>(
        &mut self,
        now: Instant,
        request: Request<'_>,
        source: &mut S,
    ) {
        if let Some(r) = self.answer(now, request, source) {
            self.responses.push_back(r);
        }
    }

    /// The next response, until `None`.
    #[must_use]
    pub fn poll_response(&mut self) -> Option<Response> {
        self.responses.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next
    /// (the earliest deadline of a waiting `dec_keys`).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|d| d.0)
    }

    /// Answers the waiting requests whose deadline passed at `now`: with
    /// the keys if they arrived meanwhile, 400 otherwise.
    pub fn handle_timeout<S: KeySource + ?Sized>(&mut self, now: Instant, source: &mut S) {
        while let Some(&(at, seq)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.reconsider(now, seq, true, source);
        }
    }

    /// Key `id` arrived from the peer: answers the requests that waited
    /// for it and now have all their keys.
    pub fn handle_arrival<S: KeySource + ?Sized>(
        &mut self,
        now: Instant,
        id: &KeyId,
        source: &mut S,
    ) {
        for seq in self.by_key.remove(id).unwrap_or_default() {
            self.reconsider(now, seq, false, source);
        }
    }

    /// The source stopped waiting for key `id` (its own deadline, or the
    /// link was reset): answers the requests that waited for it.
    pub fn handle_wait_ended<S: KeySource + ?Sized>(
        &mut self,
        now: Instant,
        id: &KeyId,
        source: &mut S,
    ) {
        for seq in self.by_key.remove(id).unwrap_or_default() {
            self.reconsider(now, seq, true, source);
        }
    }

    /// Forgets a waiting request whose client went away; no response
    /// follows, and no key was taken for it. Returns whether it waited.
    pub fn cancel(&mut self, request: RequestId) -> bool {
        let Some(seq) = self
            .waiting
            .iter()
            .find(|(_, w)| w.request == request)
            .map(|(s, _)| *s)
        else {
            return false;
        };
        self.remove(seq);
        true
    }

    /// Takes a qkd-sync event the host drained from the node: key arrivals
    /// and ended lookups answer waiting requests. Returns whether the event
    /// was one of those (others are the host's to handle).
    #[cfg(feature = "sync")]
    pub fn handle_sync_event(
        &mut self,
        now: Instant,
        event: &qkd_sync::Event,
        node: &mut qkd_sync::SyncNode,
    ) -> bool {
        match event {
            qkd_sync::Event::KeyArrived { id } => {
                self.handle_arrival(now, id, node);
                true
            }
            qkd_sync::Event::LookupTimedOut { id } => {
                self.handle_wait_ended(now, id, node);
                true
            }
            _ => false,
        }
    }

    fn limits<S: KeySource + ?Sized>(&self, source: &S) -> Limits {
        let c = &self.config;
        let source_max = source.max_key_bits() as u64 / 8 * 8;
        Limits {
            key_size: u64::from(c.key_size),
            min_key_size: u64::from(c.min_key_size),
            max_key_size: u64::from(c.max_key_size).min(source_max),
            max_keys_per_request: u64::from(c.max_keys_per_request)
                .min(source.max_keys_per_request() as u64),
            max_sae_id_count: u64::from(c.max_sae_id_count)
                .min(source.max_slaves().saturating_sub(1) as u64),
        }
    }

    fn answer<S: KeySource + ?Sized>(
        &mut self,
        now: Instant,
        r: Request<'_>,
        source: &mut S,
    ) -> Option<Response> {
        let id = r.id;
        let Some((op, sae)) = route(r.path) else {
            return Some(error(id, 404, messages::NO_SUCH_RESOURCE));
        };
        let get = match (r.method, op) {
            ("GET", _) => true,
            ("POST", Operation::EncKeys | Operation::DecKeys) => false,
            _ => {
                return Some(
                    error(id, 405, format!("method not allowed: use {}", op.allowed()))
                        .with_allow(op.allowed()),
                );
            }
        };
        let Some(sae) = decode(sae) else {
            return Some(bad_request(
                id,
                "the SAE ID in the path is not valid percent-encoded UTF-8",
            ));
        };
        if let Err(why) = check_sae_id(&sae) {
            return Some(bad_request(id, format!("the SAE ID in the path {why}")));
        }
        if check_sae_id(r.caller).is_err() {
            return Some(error(id, 401, messages::NO_CALLER));
        }
        if r.body.len() > self.config.max_body_bytes {
            return Some(bad_request(
                id,
                format!(
                    "request body larger than {} bytes",
                    self.config.max_body_bytes
                ),
            ));
        }
        if get && !r.body.is_empty() {
            return Some(bad_request(id, "GET takes no request body; use POST"));
        }
        if !get && !r.query.is_empty() {
            return Some(bad_request(
                id,
                "POST takes its parameters in the body, not in the query string",
            ));
        }
        match op {
            Operation::Status => Some(self.status(r, &sae, source)),
            Operation::EncKeys => Some(self.enc_keys(now, r, get, &sae, source)),
            Operation::DecKeys => self.dec_keys(now, r, get, &sae, source),
        }
    }

    fn status<S: KeySource + ?Sized>(&self, r: Request<'_>, slave: &str, source: &S) -> Response {
        if !r.query.is_empty() {
            return bad_request(r.id, "status takes no query parameters");
        }
        if let Some(reason) = source.unavailable() {
            return error(r.id, 503, reason);
        }
        let l = self.limits(source);
        let bits = usize::try_from(l.key_size).unwrap_or(usize::MAX);
        let max_key_count = source.max_key_count(bits) as u64;
        let status = Status {
            source_kme_id: self.config.kme_id.clone(),
            target_kme_id: self.config.peer_kme_id.clone(),
            master_sae_id: r.caller.to_owned(),
            slave_sae_id: slave.to_owned(),
            key_size: l.key_size,
            stored_key_count: (source.fresh_keys(bits) as u64).min(max_key_count),
            max_key_count,
            max_key_per_request: l.max_keys_per_request,
            max_key_size: l.max_key_size,
            min_key_size: l.min_key_size,
            max_sae_id_count: l.max_sae_id_count,
            status_extension: None,
        };
        Response::json(r.id, 200, &status, 512 + 2 * MAX_ID_TEXT)
    }

    fn enc_keys<S: KeySource + ?Sized>(
        &self,
        now: Instant,
        r: Request<'_>,
        get: bool,
        slave: &str,
        source: &mut S,
    ) -> Response {
        let id = r.id;
        let request = if get {
            let pairs = match query_pairs(r.query) {
                Ok(p) => p,
                Err(e) => return bad_request(id, e),
            };
            let mut request = KeyRequest::default();
            for (name, value) in pairs {
                let slot = match name.as_str() {
                    "number" => &mut request.number,
                    "size" => &mut request.size,
                    _ => {
                        return bad_request(
                            id,
                            "GET enc_keys takes only the query parameters number and size; \
                             use POST with a Key request body for the other members",
                        );
                    }
                };
                if slot.is_some() {
                    return bad_request(id, format!("query parameter {name} given twice"));
                }
                match query_number(&name, &value) {
                    Ok(v) => *slot = Some(v),
                    Err(e) => return bad_request(id, e),
                }
            }
            request
        } else if r.body.is_empty() {
            KeyRequest::default()
        } else {
            match json_object::<KeyRequest>(r.body) {
                Ok(k) => k,
                Err(e) => return bad_request(id, format!("malformed Key request: {e}")),
            }
        };
        let l = self.limits(source);
        let number = request.number.unwrap_or(1);
        if number == 0 || number > l.max_keys_per_request {
            return bad_request(
                id,
                format!(
                    "number shall be between 1 and {} (max_key_per_request)",
                    l.max_keys_per_request
                ),
            );
        }
        let size = request.size.unwrap_or(l.key_size);
        if !size.is_multiple_of(8) {
            return bad_request(id, messages::SIZE_NOT_MULTIPLE_OF_8);
        }
        if size < l.min_key_size || size > l.max_key_size {
            return bad_request(
                id,
                format!(
                    "size shall be between {} and {} bits",
                    l.min_key_size, l.max_key_size
                ),
            );
        }
        if !request.extension_mandatory.is_empty() {
            let mut body = ErrorBody::new(messages::EXTENSION_MANDATORY_UNSUPPORTED);
            for name in request.extension_mandatory.iter().flat_map(Extension::keys) {
                body = body.with_detail("extension_mandatory", name.as_str());
            }
            return Response::error(id, 400, &body);
        }
        let extra = &request.additional_slave_sae_ids;
        if extra.len() as u64 > l.max_sae_id_count {
            return bad_request(
                id,
                if l.max_sae_id_count == 0 {
                    "this KME does not support multicast: additional_slave_SAE_IDs shall be empty"
                        .to_owned()
                } else {
                    format!(
                        "at most {} additional_slave_SAE_IDs are allowed (max_SAE_ID_count)",
                        l.max_sae_id_count
                    )
                },
            );
        }
        let mut slaves: Vec<&str> = Vec::with_capacity(1 + extra.len());
        slaves.push(slave);
        for s in extra {
            if let Err(why) = check_sae_id(s) {
                return bad_request(id, format!("an SAE ID in additional_slave_SAE_IDs {why}"));
            }
            if slaves.contains(&s.as_str()) {
                return bad_request(
                    id,
                    "additional_slave_SAE_IDs shall name distinct SAEs other than the slave SAE \
                     in the path",
                );
            }
            slaves.push(s);
        }
        if let Some(reason) = source.unavailable() {
            return error(id, 503, reason);
        }
        // Bounded above by the limits checked: the casts cannot truncate.
        let (count, bits) = (number as usize, size as usize);
        match source.take(now, count, bits, r.caller, &slaves) {
            Ok(keys) => {
                let container = KeyContainer {
                    keys: keys
                        .into_iter()
                        .map(|(key_id, key)| Key {
                            key_id,
                            key_id_extension: None,
                            key,
                            key_extension: None,
                        })
                        .collect(),
                    key_container_extension: None,
                };
                Response::keys(id, &container)
            }
            Err(e) => source_error(id, e, Some(size)),
        }
    }

    fn dec_keys<S: KeySource + ?Sized>(
        &mut self,
        now: Instant,
        r: Request<'_>,
        get: bool,
        master: &str,
        source: &mut S,
    ) -> Option<Response> {
        let id = r.id;
        let ids: Vec<KeyId> = if get {
            let pairs = match query_pairs(r.query) {
                Ok(p) => p,
                Err(e) => return Some(bad_request(id, e)),
            };
            match pairs.as_slice() {
                [(name, value)] if name == "key_ID" => match crate::model::parse_key_id(value) {
                    Some(k) => vec![k],
                    None => {
                        return Some(bad_request(
                            id,
                            "key_ID shall be a UUID (8-4-4-4-12 hexadecimal digits)",
                        ));
                    }
                },
                _ => {
                    return Some(bad_request(
                        id,
                        "GET dec_keys takes exactly one query parameter, key_ID; use POST with a \
                         Key IDs body for more keys or extensions",
                    ));
                }
            }
        } else {
            if r.body.is_empty() {
                return Some(bad_request(id, "POST dec_keys needs a Key IDs body"));
            }
            match json_object::<KeyIds>(r.body) {
                Ok(k) => k.key_ids.into_iter().map(|e| e.key_id).collect(),
                Err(e) => return Some(bad_request(id, format!("malformed Key IDs: {e}"))),
            }
        };
        let l = self.limits(source);
        if ids.is_empty() || ids.len() as u64 > l.max_keys_per_request {
            return Some(bad_request(
                id,
                format!(
                    "key_IDs shall name 1 to {} keys (max_key_per_request)",
                    l.max_keys_per_request
                ),
            ));
        }
        let mut seen = HashSet::with_capacity(ids.len());
        if !ids.iter().all(|k| seen.insert(*k)) {
            return Some(bad_request(id, "key_IDs shall not name a key twice"));
        }
        if let Some(reason) = source.unavailable() {
            return Some(error(id, 503, reason));
        }
        match judge(source, &ids, master, r.caller) {
            Verdict::Ready => Some(fetch_all(now, id, source, &ids, r.caller)),
            Verdict::NotAuthorized => Some(error(id, 401, messages::NOT_A_SLAVE)),
            Verdict::OtherMaster(other) => Some(not_found(id, &other)),
            Verdict::Absent(absent) => {
                if self.waiting.len() >= self.config.max_waiting as usize {
                    return Some(error(id, 503, messages::TOO_MANY_WAITING));
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                let deadline = now + self.config.dec_keys_wait;
                for k in &absent {
                    source.watch(now, k, r.caller);
                    self.by_key.entry(*k).or_default().push(seq);
                }
                self.deadlines.insert((deadline, seq));
                self.waiting.insert(
                    seq,
                    Waiting {
                        request: id,
                        deadline,
                        master: master.to_owned(),
                        slave: r.caller.to_owned(),
                        ids,
                    },
                );
                None
            }
        }
    }

    /// Looks at waiting request `seq` again: answers it if its keys are
    /// all here, if one is refused, if the source is unavailable, or (when
    /// `last`) with 400 for the keys still missing.
    fn reconsider<S: KeySource + ?Sized>(
        &mut self,
        now: Instant,
        seq: u64,
        last: bool,
        source: &mut S,
    ) {
        let Some(w) = self.waiting.get(&seq) else {
            return;
        };
        let request = w.request;
        let response = if let Some(reason) = source.unavailable() {
            error(request, 503, reason)
        } else {
            match judge(source, &w.ids, &w.master, &w.slave) {
                Verdict::Ready => fetch_all(now, request, source, &w.ids, &w.slave),
                Verdict::NotAuthorized => error(request, 401, messages::NOT_A_SLAVE),
                Verdict::OtherMaster(other) => not_found(request, &other),
                Verdict::Absent(absent) if last => not_found(request, &absent),
                Verdict::Absent(_) => return,
            }
        };
        self.remove(seq);
        self.responses.push_back(response);
    }

    fn remove(&mut self, seq: u64) {
        let Some(w) = self.waiting.remove(&seq) else {
            return;
        };
        self.deadlines.remove(&(w.deadline, seq));
        for k in &w.ids {
            if let Some(list) = self.by_key.get_mut(k) {
                list.retain(|&s| s != seq);
                if list.is_empty() {
                    self.by_key.remove(k);
                }
            }
        }
    }
}

/// Longest KME or SAE ID as JSON text (every byte escaped as `\u00XX`).
const MAX_ID_TEXT: usize = 6 * crate::request::MAX_SAE_ID_LEN + 2;

/// Fetches every key of `ids` for `slave` (all checked fetchable just
/// before) and answers with them; if one fails after all, the ones fetched
/// are dropped (zeroized) and the failure answered.
fn fetch_all<S: KeySource + ?Sized>(
    now: Instant,
    request: RequestId,
    source: &mut S,
    ids: &[KeyId],
    slave: &str,
) -> Response {
    let mut keys = Vec::with_capacity(ids.len());
    for id in ids {
        match source.fetch(now, id, slave) {
            Ok(key) => keys.push(Key {
                key_id: *id,
                key_id_extension: None,
                key,
                key_extension: None,
            }),
            Err(e) => return source_error(request, e, None),
        }
    }
    Response::keys(
        request,
        &KeyContainer {
            keys,
            key_container_extension: None,
        },
    )
}
