//! [`SyncNode`]: one end of the sync protocol, sans IO.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qkd_core::machine::{ConfigError, Machine};
use qkd_core::wire::WireError;
use qkd_core::{BlockId, KeyId, SecretKey};
use qkd_keystore::notice::{MAX_SAE_ID_LEN, MAX_SLAVES};
use qkd_keystore::{
    Binding, InsertOutcome, KeyRange, KeyStore, LookupError, Notice, NoticeError, PairingStats,
    ReservationId, StoreConfig, StoreError, TakeError,
};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};

use crate::message::{
    self, Ack, DATA_HEADER_LEN, GRANTED_CHUNK_LEN, Hello, MAX_KEY_LEN, MAX_MESSAGE_LEN, Message,
};

/// Smallest message size a node may be configured with: room for a
/// Delivered record of the largest binding (master and 64 slaves of 255
/// bytes) and one key of the most pieces.
pub const MIN_MESSAGE_LEN: usize = DATA_HEADER_LEN
    + 1
    + (1 + MAX_SAE_ID_LEN)
    + 1
    + MAX_SLAVES * (1 + MAX_SAE_ID_LEN)
    + 2
    + MAX_KEY_LEN;

/// Largest window accepted: the messages a node keeps unacknowledged and
/// buffers out of order are bounded by `window * max_message_len`.
pub const MAX_WINDOW: u32 = 4096;

/// Settings of a [`SyncNode`].
///
/// Every field but `store` has a default that works on a lossy wide-area
/// link as well as on a local one (the numbers below, the same as
/// [`SyncConfig::new`]); `store` is the store's configuration (see
/// [`StoreConfig`], whose defaults work for small and large blocks alike).
///
/// ```
/// use qkd_sync::SyncConfig;
///
/// let json = r#"{ "store": { "link": "l", "role": "even_chunks" }, "window": 16 }"#;
/// let config: SyncConfig = serde_json::from_str(json).unwrap();
/// assert_eq!(config.window, 16);
/// config.validate().unwrap();
/// let bad = SyncConfig { max_message_len: 100, ..config };
/// assert_eq!(bad.validate().unwrap_err().field(), "max_message_len");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// The store's settings (link name, role, chunk size, TTLs, capacity).
    pub store: StoreConfig,
    /// Largest message sent, in bytes ([`MIN_MESSAGE_LEN`] to
    /// [`MAX_MESSAGE_LEN`]; default 32 KiB).
    #[serde(default = "defaults::max_message_len")]
    pub max_message_len: usize,
    /// Resend unacknowledged data after this long (more than zero; default 200 ms).
    #[serde(default = "defaults::retransmit_after")]
    pub retransmit_after: Duration,
    /// Resend hellos this often until the session is established (more
    /// than zero; default 500 ms).
    #[serde(default = "defaults::hello_interval")]
    pub hello_interval: Duration,
    /// Most data messages in flight, and buffered out of order (1 to
    /// [`MAX_WINDOW`]; default 64).
    #[serde(default = "defaults::window")]
    pub window: u32,
    /// How long a pending lookup waits for the peer's notice (more than
    /// zero; default 2 s).
    #[serde(default = "defaults::lookup_wait")]
    pub lookup_wait: Duration,
    /// Most lookups waiting at once; more are answered
    /// [`Lookup::Pending`] without an event (at least 1; default 100 000).
    #[serde(default = "defaults::max_waiters")]
    pub max_waiters: u32,
}

/// The documented defaults, one function per field (serde needs them so).
mod defaults {
    use std::time::Duration;

    pub(super) const fn max_message_len() -> usize {
        32 << 10
    }
    pub(super) const fn retransmit_after() -> Duration {
        Duration::from_millis(200)
    }
    pub(super) const fn hello_interval() -> Duration {
        Duration::from_millis(500)
    }
    pub(super) const fn window() -> u32 {
        64
    }
    pub(super) const fn lookup_wait() -> Duration {
        Duration::from_secs(2)
    }
    pub(super) const fn max_waiters() -> u32 {
        100_000
    }
}

impl SyncConfig {
    /// The defaults (see the fields) around `store`.
    #[must_use]
    pub fn new(store: StoreConfig) -> Self {
        SyncConfig {
            store,
            max_message_len: defaults::max_message_len(),
            retransmit_after: defaults::retransmit_after(),
            hello_interval: defaults::hello_interval(),
            window: defaults::window(),
            lookup_wait: defaults::lookup_wait(),
            max_waiters: defaults::max_waiters(),
        }
    }

    /// Checks every field against the ranges in its documentation
    /// (the store's fields are named `store.*`).
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.store.validate().map_err(|e| e.within("store"))?;
        if !(MIN_MESSAGE_LEN..=MAX_MESSAGE_LEN).contains(&self.max_message_len) {
            return Err(ConfigError::new(
                "max_message_len",
                format!(
                    "must be {MIN_MESSAGE_LEN} to {MAX_MESSAGE_LEN}, got {}",
                    self.max_message_len
                ),
            ));
        }
        for (field, d) in [
            ("retransmit_after", self.retransmit_after),
            ("hello_interval", self.hello_interval),
            ("lookup_wait", self.lookup_wait),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(field, "must be more than zero"));
            }
        }
        if !(1..=MAX_WINDOW).contains(&self.window) {
            return Err(ConfigError::new(
                "window",
                format!("must be 1 to {MAX_WINDOW}, got {}", self.window),
            ));
        }
        if self.max_waiters == 0 {
            return Err(ConfigError::new("max_waiters", "must be at least 1"));
        }
        Ok(())
    }
}

/// What happened, for the application. Drain with [`SyncNode::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A session with the peer incarnation `peer_epoch` began. The store was
    /// wiped if there was a previous session (the peer rebooted or wiped).
    Paired {
        /// The peer's epoch.
        peer_epoch: u64,
        /// The epoch of the previous session's peer, if any.
        previous: Option<u64>,
    },
    /// A key a lookup waited for can be looked up now.
    KeyArrived {
        /// The key.
        id: KeyId,
    },
    /// A pending lookup was not answered in time (or the session ended).
    LookupTimedOut {
        /// The key.
        id: KeyId,
    },
    /// The peer sent a notice that does not fit the store: refused (the
    /// store is unchanged by it), the session goes on. See "What happens
    /// when the peer misbehaves" in the crate docs.
    PeerMisbehaved(NoticeError),
}

/// Result of [`SyncNode::lookup`].
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The key, removed for this slave.
    Ready(SecretKey),
    /// Not known here yet; [`Event::KeyArrived`] or [`Event::LookupTimedOut`] follows.
    Pending,
}

/// Errors of the application-facing calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// No session with the peer.
    #[error("no session with the peer")]
    NotPaired,
    /// Taking keys failed.
    #[error(transparent)]
    Take(#[from] TakeError),
    /// The lookup was refused.
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// The store refused the block.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an incoming message was rejected (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// Malformed bytes, or a field outside its domain (a hello from epoch 0).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer's settings do not match ours (role, chunk size, link name).
    #[error("incompatible peer: {0}")]
    Incompatible(&'static str),
}

/// Per-pairing status for ETSI 014 `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PairingStatus {
    /// Fresh keys of the asked size this node could hand out now.
    pub fresh_keys: usize,
    /// Counters of the pairing.
    pub counts: PairingStats,
}

struct Outgoing {
    seq: u64,
    count: u16,
    records: Vec<u8>,
}

/// One end of the sync protocol between the two key stores of a link.
///
/// Sans IO, a [`Machine`]: the caller moves bytes and time. After anything
/// that may change state ([`handle_input`](Machine::handle_input),
/// [`handle_timeout`](Machine::handle_timeout), or an application call) it
/// drains [`poll_transmit`](Machine::poll_transmit) until `None` and sends
/// each message to the peer over an **authenticated** channel
/// (qkd-handshake's secured channel; a forged grant or drop would break the
/// ownership rule), drains [`poll_event`](Machine::poll_event), and calls
/// `handle_timeout` at [`poll_timeout`](Machine::poll_timeout). `now` must
/// never go backwards.
///
/// The channel may lose, duplicate, delay and reorder messages; the node
/// numbers its notices, retransmits until acknowledged, and applies each
/// exactly once and in order. It needs nothing else from the channel.
///
/// Sessions: every node has a random boot epoch. A node pairs with a peer
/// epoch only after that peer echoed the node's current challenge, which
/// proves the peer was alive after the node's last pairing; a stale message
/// from an older incarnation can therefore never re-pair it. Pairing with a
/// new peer epoch wipes the store: a reboot on one side deletes everything
/// on both.
///
/// Application calls: [`insert_block`](Self::insert_block) and
/// [`discard_block`](Self::discard_block) (from the pipeline),
/// [`take`](Self::take), [`reserve`](Self::reserve),
/// [`commit`](Self::commit), [`release`](Self::release) (enc),
/// [`lookup`](Self::lookup) (dec), [`wipe`](Self::wipe). Getters:
/// [`is_paired`](Self::is_paired), [`epoch`](Self::epoch),
/// [`peer_epoch`](Self::peer_epoch), [`store`](Self::store),
/// [`status`](Self::status), [`in_flight`](Self::in_flight).
pub struct SyncNode {
    config: SyncConfig,
    store: KeyStore,
    link_tag: [u8; 16],
    epoch: u64,
    challenge: u64,
    peer: Option<u64>,
    confirmed: bool,
    last_hello: Option<(u64, u64)>,
    hello_due: bool,
    next_hello: Option<Instant>,
    send_seq: u64,
    unacked: VecDeque<Outgoing>,
    next_unsent: usize,
    oldest_sent_at: Option<Instant>,
    carry: Option<Notice>,
    recv_next: u64,
    recv_buf: BTreeMap<u64, Vec<Notice>>,
    ack_due: bool,
    waiters: HashMap<KeyId, Instant>,
    waiter_order: BTreeSet<(Instant, KeyId)>,
    events: VecDeque<Event>,
    arrived: Vec<KeyId>,
}

impl SyncNode {
    /// A node with a fresh random epoch and an empty store.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field if `config` does not pass
    /// [`SyncConfig::validate`].
    pub fn new<R: CryptoRng + ?Sized>(
        config: SyncConfig,
        rng: &mut R,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let link_tag = *KeyId::derive(config.store.link.as_bytes()).as_bytes();
        let store = KeyStore::new(config.store.clone()).map_err(|e| e.within("store"))?;
        Ok(SyncNode {
            config,
            store,
            link_tag,
            epoch: fresh_epoch(rng),
            challenge: 1,
            peer: None,
            confirmed: false,
            last_hello: None,
            hello_due: true,
            next_hello: None,
            send_seq: 1,
            unacked: VecDeque::new(),
            next_unsent: 0,
            oldest_sent_at: None,
            carry: None,
            recv_next: 1,
            recv_buf: BTreeMap::new(),
            ack_due: false,
            waiters: HashMap::new(),
            waiter_order: BTreeSet::new(),
            events: VecDeque::new(),
            arrived: Vec::new(),
        })
    }

    /// This node's epoch (changes on [`wipe`](Self::wipe)).
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The epoch of the peer this node is paired with.
    #[must_use]
    pub fn peer_epoch(&self) -> Option<u64> {
        self.peer
    }

    /// Whether both sides are paired with each other (as far as this node knows).
    #[must_use]
    pub fn is_paired(&self) -> bool {
        self.peer.is_some() && self.confirmed
    }

    /// The store (read only: changes go through the node).
    #[must_use]
    pub fn store(&self) -> &KeyStore {
        &self.store
    }

    /// Records the key ranges dropped here without being handed out (see
    /// `KeyStore::enable_drop_audit`): ranges only, never key bytes. For
    /// the model check.
    #[doc(hidden)]
    pub fn enable_drop_audit(&mut self) {
        self.store.enable_drop_audit();
    }

    /// The ranges recorded since the last call (see `KeyStore::take_drop_audit`).
    #[doc(hidden)]
    pub fn take_drop_audit(&mut self) -> Vec<KeyRange> {
        self.store.take_drop_audit()
    }

    /// Notices and messages not yet acknowledged by the peer.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.unacked.len() + usize::from(self.carry.is_some() || self.store.has_notices())
    }

    /// Forgets everything and starts as a new incarnation (new epoch): the
    /// peer wipes too when it sees the new epoch.
    pub fn wipe<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) {
        self.store.wipe();
        self.epoch = fresh_epoch(rng);
        self.challenge = 1;
        self.peer = None;
        self.confirmed = false;
        self.last_hello = None;
        self.hello_due = true;
        self.next_hello = None;
        self.reset_stream();
    }

    fn reset_stream(&mut self) {
        self.send_seq = 1;
        self.unacked.clear();
        self.next_unsent = 0;
        self.oldest_sent_at = None;
        self.carry = None;
        self.recv_next = 1;
        self.recv_buf.clear();
        self.ack_due = false;
        for (_, id) in std::mem::take(&mut self.waiter_order) {
            self.events.push_back(Event::LookupTimedOut { id });
        }
        self.waiters.clear();
    }

    fn adopt(&mut self, peer: u64) {
        let previous = self.peer.replace(peer);
        if previous.is_some() || self.store.held_bytes() > 0 || self.store.has_notices() {
            self.store.wipe();
        }
        self.reset_stream();
        self.challenge += 1;
        self.events.push_back(Event::Paired {
            peer_epoch: peer,
            previous,
        });
    }

    // ---- input ----

    fn in_session(&self, from: u64, to: u64) -> bool {
        self.peer == Some(from) && to == self.epoch
    }

    fn on_hello(&mut self, h: Hello) -> Result<(), InputError> {
        if h.from == 0 {
            return Err(InputError::Wire(WireError::invalid(
                "from",
                "epoch 0 is reserved",
            )));
        }
        if h.role == self.config.store.role {
            return Err(InputError::Incompatible("both nodes have the same role"));
        }
        if h.chunk_bytes != self.config.store.chunk_bytes {
            return Err(InputError::Incompatible("chunk sizes differ"));
        }
        if h.link_tag != self.link_tag {
            return Err(InputError::Incompatible("link names differ"));
        }
        self.last_hello = Some((h.from, h.nonce));
        if self.peer == Some(h.from) {
            if h.paired_to == self.epoch {
                // The peer paired with us but may not know that we paired
                // with it: an ack (which needs no answer) tells it.
                self.confirmed = true;
                self.ack_due = true;
            } else {
                self.hello_due = true;
            }
            return Ok(());
        }
        if h.echo_epoch == self.epoch && h.echo_nonce == self.challenge {
            self.adopt(h.from);
            self.confirmed = h.paired_to == self.epoch;
        }
        self.hello_due = true;
        Ok(())
    }

    fn on_ack(&mut self, now: Instant, ack: u64) {
        let mut popped = false;
        while self.unacked.front().is_some_and(|o| o.seq <= ack) {
            self.unacked.pop_front();
            self.next_unsent = self.next_unsent.saturating_sub(1);
            popped = true;
        }
        if popped {
            // Progress: restart the timer for what is still unacknowledged.
            self.oldest_sent_at = if self.next_unsent > 0 {
                Some(now)
            } else {
                None
            };
        }
    }

    fn on_data(&mut self, now: Instant, seq: u64, notices: Vec<Notice>) {
        self.ack_due = true;
        if seq < self.recv_next || seq >= self.recv_next + u64::from(self.config.window) {
            return;
        }
        if seq > self.recv_next {
            self.recv_buf.entry(seq).or_insert(notices);
            return;
        }
        self.apply(now, notices);
        self.recv_next += 1;
        while let Some(n) = self.recv_buf.remove(&self.recv_next) {
            self.apply(now, n);
            self.recv_next += 1;
        }
    }

    fn apply(&mut self, now: Instant, notices: Vec<Notice>) {
        for n in notices {
            if let Err(e) = self.store.apply(now, n, &mut self.arrived) {
                self.events.push_back(Event::PeerMisbehaved(e));
            }
        }
        self.collect_violations();
        if self.waiters.is_empty() {
            self.arrived.clear();
            return;
        }
        for id in self.arrived.drain(..) {
            if let Some(at) = self.waiters.remove(&id) {
                self.waiter_order.remove(&(at, id));
                self.events.push_back(Event::KeyArrived { id });
            }
        }
    }

    // ---- output ----

    fn hello(&self) -> Vec<u8> {
        let (echo_epoch, echo_nonce) = self.last_hello.unwrap_or((0, 0));
        Message::Hello(Hello {
            from: self.epoch,
            paired_to: self.peer.unwrap_or(0),
            nonce: self.challenge,
            echo_epoch,
            echo_nonce,
            role: self.config.store.role,
            chunk_bytes: self.config.store.chunk_bytes,
            link_tag: self.link_tag,
        })
        .encode()
    }

    fn data_message(&mut self, i: usize) -> Vec<u8> {
        self.ack_due = false;
        let o = &self.unacked[i];
        let mut out = Vec::with_capacity(DATA_HEADER_LEN + o.records.len());
        message::write_data_header(
            &mut out,
            self.epoch,
            self.peer.unwrap_or(0),
            o.seq,
            self.recv_next - 1,
            o.count,
        );
        out.extend_from_slice(&o.records);
        out
    }

    /// Packs queued notices into the next data message.
    fn pack(&mut self) -> Option<Outgoing> {
        let space = self.config.max_message_len - DATA_HEADER_LEN;
        let mut records = Vec::new();
        let mut count: u16 = 0;
        while count < u16::MAX {
            let Some(n) = self.carry.take().or_else(|| self.store.poll_notice()) else {
                break;
            };
            let len = message::notice_len(&n);
            if records.len() + len <= space {
                message::encode_notice(&n, &mut records);
                count += 1;
                continue;
            }
            // Split a long Delivered or Grant into what fits now and the rest.
            let room = space - records.len();
            match n {
                Notice::Delivered { binding, mut keys } => {
                    let fit = message::delivered_keys_that_fit(&binding, &keys, room);
                    if fit > 0 {
                        let rest = keys.split_off(fit);
                        message::encode_notice(
                            &Notice::Delivered {
                                binding: binding.clone(),
                                keys,
                            },
                            &mut records,
                        );
                        count += 1;
                        self.carry = Some(Notice::Delivered {
                            binding,
                            keys: rest,
                        });
                    } else {
                        self.carry = Some(Notice::Delivered { binding, keys });
                    }
                }
                Notice::Grant { mut chunks } => {
                    let fit = room.saturating_sub(3) / GRANTED_CHUNK_LEN;
                    if fit > 0 {
                        let rest = chunks.split_off(fit);
                        message::encode_notice(&Notice::Grant { chunks }, &mut records);
                        count += 1;
                        self.carry = Some(Notice::Grant { chunks: rest });
                    } else {
                        self.carry = Some(Notice::Grant { chunks });
                    }
                }
                other => self.carry = Some(other),
            }
            break;
        }
        if count == 0 {
            return None;
        }
        let seq = self.send_seq;
        self.send_seq += 1;
        Some(Outgoing {
            seq,
            count,
            records,
        })
    }

    // ---- application ----

    /// Stores a final key block from the pipeline (see
    /// [`KeyStore::insert_block`]). Without a session the block is not
    /// stored ([`InsertOutcome::NoSession`]).
    ///
    /// # Errors
    /// [`SyncError::Store`] if the block is out of order or empty.
    pub fn insert_block(
        &mut self,
        now: Instant,
        block: BlockId,
        key: SecretKey,
    ) -> Result<InsertOutcome, SyncError> {
        if self.peer.is_none() {
            return Ok(InsertOutcome::NoSession);
        }
        let outcome = self.store.insert_block(now, block, key);
        self.collect_violations();
        Ok(outcome?)
    }

    /// Turns the peer's violations the store found outside `apply` into events.
    fn collect_violations(&mut self) {
        while let Some(e) = self.store.poll_peer_violation() {
            self.events.push_back(Event::PeerMisbehaved(e));
        }
    }

    /// Records that block `block` failed here; the peer drops its copy.
    ///
    /// # Errors
    /// [`SyncError::Store`] if the block is out of order.
    pub fn discard_block(&mut self, block: BlockId) -> Result<(), SyncError> {
        if self.peer.is_none() {
            return Ok(());
        }
        let result = self.store.discard_block(block);
        self.collect_violations();
        Ok(result?)
    }

    /// Takes `count` fresh keys of `bits` bits for `binding` (ETSI 014
    /// `enc_keys`), all or nothing. The peer learns of them by notice.
    ///
    /// # Errors
    /// [`SyncError::NotPaired`] without a session; [`SyncError::Take`] otherwise.
    pub fn take(
        &mut self,
        count: usize,
        bits: usize,
        binding: &Arc<Binding>,
    ) -> Result<Vec<(KeyId, SecretKey)>, SyncError> {
        if self.peer.is_none() {
            return Err(SyncError::NotPaired);
        }
        Ok(self.store.take(count, bits, binding)?)
    }

    /// Reserves keys (see [`KeyStore::reserve`]).
    ///
    /// # Errors
    /// As [`take`](Self::take).
    pub fn reserve(
        &mut self,
        now: Instant,
        count: usize,
        bits: usize,
        binding: &Arc<Binding>,
    ) -> Result<ReservationId, SyncError> {
        if self.peer.is_none() {
            return Err(SyncError::NotPaired);
        }
        Ok(self.store.reserve(now, count, bits, binding)?)
    }

    /// Hands out reserved keys (see [`KeyStore::commit`]).
    ///
    /// # Errors
    /// [`SyncError::Take`] if the reservation is gone (expired, or wiped).
    pub fn commit(&mut self, id: ReservationId) -> Result<Vec<(KeyId, SecretKey)>, SyncError> {
        Ok(self.store.commit(id)?)
    }

    /// Drops reserved keys on both nodes (see [`KeyStore::release`]).
    ///
    /// # Errors
    /// [`SyncError::Take`] if the reservation is gone.
    pub fn release(&mut self, id: ReservationId) -> Result<(), SyncError> {
        Ok(self.store.release(id)?)
    }

    /// Looks up key `id` for `slave` (ETSI 014 `dec_keys`). If the peer's
    /// notice has not arrived yet the result is [`Lookup::Pending`] and an
    /// [`Event::KeyArrived`] or [`Event::LookupTimedOut`] follows (within
    /// [`SyncConfig::lookup_wait`]).
    ///
    /// # Errors
    /// [`SyncError::NotPaired`] without a session; [`SyncError::Lookup`] if
    /// the slave may not fetch it.
    pub fn lookup(&mut self, now: Instant, id: &KeyId, slave: &str) -> Result<Lookup, SyncError> {
        if self.peer.is_none() {
            return Err(SyncError::NotPaired);
        }
        if let Some(key) = self.store.lookup(id, slave)? {
            return Ok(Lookup::Ready(key));
        }
        if !self.waiters.contains_key(id) && self.waiters.len() < self.config.max_waiters as usize {
            let at = now + self.config.lookup_wait;
            self.waiters.insert(*id, at);
            self.waiter_order.insert((at, *id));
        }
        Ok(Lookup::Pending)
    }

    /// Status of the pairing (`master`, `slave`) for keys of `bits` bits.
    #[must_use]
    pub fn status(&self, master: &str, slave: &str, bits: usize) -> PairingStatus {
        PairingStatus {
            fresh_keys: if self.peer.is_some() {
                self.store.fresh_keys(bits)
            } else {
                0
            },
            counts: self.store.pairing(master, slave),
        }
    }
}

impl core::fmt::Debug for SyncNode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SyncNode")
            .field("epoch", &self.epoch)
            .field("peer", &self.peer)
            .field("confirmed", &self.confirmed)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

fn fresh_epoch<R: CryptoRng + ?Sized>(rng: &mut R) -> u64 {
    loop {
        let e = rng.next_u64();
        if e != 0 {
            return e;
        }
    }
}

impl Machine for SyncNode {
    type Event = Event;
    type Error = InputError;

    /// Feeds one message from the peer.
    ///
    /// # Errors
    /// [`InputError`] if it is malformed or from an incompatible peer; the
    /// node is unchanged then. A well-formed message with a notice that
    /// does not fit the store is accepted, and the notice refused with
    /// [`Event::PeerMisbehaved`].
    fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), InputError> {
        match Message::decode(bytes)? {
            Message::Hello(h) => self.on_hello(h),
            Message::Data(d) => {
                if self.in_session(d.from, d.to) {
                    self.confirmed = true;
                    self.on_ack(now, d.ack);
                    self.on_data(now, d.seq, d.notices);
                } else {
                    self.hello_due = true;
                }
                Ok(())
            }
            Message::Ack(a) => {
                if self.in_session(a.from, a.to) {
                    self.confirmed = true;
                    self.on_ack(now, a.ack);
                } else {
                    self.hello_due = true;
                }
                Ok(())
            }
        }
    }

    /// The next message to send, until `None`.
    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let hello_timer = !self.is_paired() && self.next_hello.is_none_or(|t| t <= now);
        if self.hello_due || hello_timer {
            self.hello_due = false;
            self.next_hello = Some(now + self.config.hello_interval);
            return Some(self.hello());
        }
        if !self.is_paired() {
            return None;
        }
        if self
            .oldest_sent_at
            .is_some_and(|t| t + self.config.retransmit_after <= now)
        {
            self.next_unsent = 0;
            self.oldest_sent_at = None;
        }
        if self.next_unsent < self.unacked.len() {
            let i = self.next_unsent;
            self.next_unsent += 1;
            if i == 0 || self.oldest_sent_at.is_none() {
                self.oldest_sent_at = Some(now);
            }
            return Some(self.data_message(i));
        }
        if self.unacked.len() < self.config.window as usize
            && let Some(out) = self.pack()
        {
            self.unacked.push_back(out);
            let i = self.unacked.len() - 1;
            self.next_unsent = self.unacked.len();
            if self.oldest_sent_at.is_none() {
                self.oldest_sent_at = Some(now);
            }
            return Some(self.data_message(i));
        }
        if self.ack_due {
            self.ack_due = false;
            return Some(
                Message::Ack(Ack {
                    from: self.epoch,
                    to: self.peer.unwrap_or(0),
                    ack: self.recv_next - 1,
                })
                .encode(),
            );
        }
        None
    }

    /// The next event, until `None`.
    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next.
    fn poll_timeout(&self) -> Option<Instant> {
        let hello = if self.is_paired() {
            None
        } else {
            self.next_hello
        };
        let resend = self
            .oldest_sent_at
            .filter(|_| !self.unacked.is_empty())
            .map(|t| t + self.config.retransmit_after);
        [
            hello,
            resend,
            self.store.next_expiry(),
            self.waiter_order.first().map(|w| w.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs what is due at `now`: expiry in the store, lookup deadlines,
    /// retransmission and hello timers.
    fn handle_timeout(&mut self, now: Instant) {
        self.store.expire(now);
        while let Some(&(at, id)) = self.waiter_order.first() {
            if at > now {
                break;
            }
            self.waiter_order.pop_first();
            self.waiters.remove(&id);
            self.events.push_back(Event::LookupTimedOut { id });
        }
        if self
            .oldest_sent_at
            .is_some_and(|t| t + self.config.retransmit_after <= now)
        {
            self.next_unsent = 0;
            self.oldest_sent_at = None;
        }
        if !self.is_paired() && self.next_hello.is_some_and(|t| t <= now) {
            self.hello_due = true;
        }
    }
}
