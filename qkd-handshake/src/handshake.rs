//! The handshake machine, for both roles.
//!
//! ```text
//!  initiator                                    responder
//!  ─────────                                    ─────────
//!  [SentHello] ── ClientHello(nonce_i, psk_id, offer) ──▶ [Idle]
//!                                                 take PSK by ID, check
//!                                                 versions, suites, store
//!  [SentHello] ◀── ServerHello(nonce_r, choice, offer, proofs) ── [SentServerHello]
//!  verify proofs, check the choice,
//!  derive keys
//!  [Done] ──── Finished(proofs) ──────────────────▶ [SentServerHello]
//!                                                 verify proofs, derive keys
//!                                                 [Done]
//! ```
//!
//! Every failure ends in [`State::Failed`] with a [`HandshakeEvent::Failed`]
//! and, where the cause is one the peer can act on, an [`Alert`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};

use qkd_core::KeyId;
use qkd_core::machine::{ConfigError, Machine};

use crate::capability::{Capabilities, CipherSuite, PROTOCOL_VERSION, StoreMismatch, negotiate};
use crate::message::{
    Alert, AlertCode, ClientHello, Finished, Message, NONCE_BYTES, Offer, SERVER_HELLO_PROOFS,
    ServerHello, TYPE_FINISHED,
};
use crate::psk::{PskError, PskSource};
use crate::schedule::{Proof, PskParts, TrafficSecret, traffic_secrets};
use qkd_core::wire::WireError;

/// Settings of a handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandshakeConfig {
    /// What this side offers.
    pub capabilities: Capabilities,
    /// The handshake fails if it has not finished this long after it started.
    pub timeout: Duration,
    /// Resend the last flight after this long without an answer.
    pub retransmit_after: Duration,
    /// Most resends of one flight.
    pub max_retransmissions: u32,
}

impl HandshakeConfig {
    /// `capabilities`, a 10 s timeout, resends after 500 ms, at most 5.
    #[must_use]
    pub fn new(capabilities: Capabilities) -> Self {
        HandshakeConfig {
            capabilities,
            timeout: Duration::from_secs(10),
            retransmit_after: Duration::from_millis(500),
            max_retransmissions: 5,
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// The first invalid field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.capabilities.validate()?;
        if self.timeout.is_zero() {
            return Err(ConfigError::new("handshake.timeout", "must be positive"));
        }
        if self.retransmit_after.is_zero() {
            return Err(ConfigError::new(
                "handshake.retransmit_after",
                "must be positive",
            ));
        }
        Ok(())
    }

    fn offer(&self) -> Offer {
        let c = &self.capabilities;
        Offer {
            versions: c.versions.clone(),
            suites: c.suites.iter().map(|s| s.code()).collect(),
            store: c.store,
            sync_version: c.sync_version,
            multicast: c.multicast,
        }
    }
}

/// The role a side ends up in (it may differ from how it started when both
/// sides initiate at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeRole {
    /// Sent the client hello that the handshake completed with.
    Initiator,
    /// Answered it.
    Responder,
}

/// The peer did something the protocol forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerMisbehaved {
    /// The peer's PSK proof did not verify: it holds a different key under
    /// this ID (or the nonces were altered on the way).
    #[error("the peer does not hold the pre-shared key")]
    WrongPsk,
    /// The PSK proof verified but the transcript MAC did not: a message was
    /// altered on the way (a downgrade attempt, for example).
    #[error("the transcript was altered")]
    TamperedTranscript,
    /// The peer's choice of version or suite breaks the negotiation rule.
    #[error("the peer's choice breaks the negotiation rule")]
    IllegalChoice,
}

/// The peer cannot work with this side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerIncompatible {
    /// No protocol version in common.
    #[error("no common protocol version")]
    NoCommonVersion,
    /// No cipher suite in common.
    #[error("no common cipher suite")]
    NoCommonSuite,
    /// Key store parameters or sync versions do not fit.
    #[error("incompatible key store: {0}")]
    Store(StoreMismatch),
}

/// Why a handshake failed. No keys are derived in any of these cases.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer broke the protocol.
    #[error("peer misbehaved: {0}")]
    PeerMisbehaved(#[from] PeerMisbehaved),
    /// The peer's capabilities do not fit this side's.
    #[error("peer incompatible: {0}")]
    PeerIncompatible(#[from] PeerIncompatible),
    /// This side's PSK source could not give the key.
    #[error("pre-shared key: {0}")]
    Psk(#[from] PskError),
    /// The key the source gave is shorter than [`PSK_BYTES`](crate::psk::PSK_BYTES).
    #[error("pre-shared key {0} is too short")]
    PskTooShort(KeyId),
    /// The peer gave up and said why.
    #[error("the peer sent alert {0:?}")]
    AlertReceived(AlertCode),
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    Timeout,
}

impl HandshakeError {
    /// The alert to send the peer for this failure, if one is sent.
    fn alert(&self) -> Option<AlertCode> {
        Some(match self {
            HandshakeError::PeerMisbehaved(PeerMisbehaved::WrongPsk) => AlertCode::BadPskProof,
            HandshakeError::PeerMisbehaved(PeerMisbehaved::TamperedTranscript) => {
                AlertCode::BadTranscript
            }
            HandshakeError::PeerMisbehaved(PeerMisbehaved::IllegalChoice) => {
                AlertCode::IllegalChoice
            }
            HandshakeError::PeerIncompatible(PeerIncompatible::NoCommonVersion) => {
                AlertCode::NoCommonVersion
            }
            HandshakeError::PeerIncompatible(PeerIncompatible::NoCommonSuite) => {
                AlertCode::NoCommonSuite
            }
            HandshakeError::PeerIncompatible(PeerIncompatible::Store(_)) => {
                AlertCode::IncompatibleStore
            }
            HandshakeError::Psk(PskError::Unknown(_)) => AlertCode::UnknownPsk,
            HandshakeError::Psk(PskError::AlreadyUsed(_)) => AlertCode::PskAlreadyUsed,
            HandshakeError::PskTooShort(_) => AlertCode::UnknownPsk,
            _ => return None,
        })
    }
}

/// A datagram the handshake did not accept; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// Not a well-formed handshake message.
    #[error("malformed handshake message: {0}")]
    Malformed(#[from] WireError),
    /// A well-formed message this state does not expect.
    #[error("unexpected handshake message")]
    Unexpected,
}

/// The outcome of a finished handshake: what was agreed and, for
/// AES-256-GCM, the traffic secrets. Secrets are zeroized on drop and not
/// shown by `Debug`.
#[derive(Debug)]
pub struct Session {
    /// The role this side ended in.
    pub role: HandshakeRole,
    /// The protocol version agreed.
    pub version: u8,
    /// The cipher suite agreed.
    pub suite: CipherSuite,
    /// The PSK used (consumed on both sides).
    pub psk_id: KeyId,
    /// What the peer offered.
    pub peer: Offer,
    /// Whether both sides support multicast.
    pub multicast: bool,
    /// blake3 of the whole transcript (ClientHello ‖ ServerHello ‖ Finished).
    pub transcript_hash: [u8; 32],
    pub(crate) secrets: Option<(TrafficSecret, TrafficSecret)>,
}

impl Session {
    /// The traffic secrets `(this side sends, this side receives)` of the
    /// AES-256-GCM suite, `None` for the one-time-pad suite.
    #[must_use]
    pub fn traffic_secrets(&self) -> Option<(&TrafficSecret, &TrafficSecret)> {
        let (i2r, r2i) = self.secrets.as_ref()?;
        Some(match self.role {
            HandshakeRole::Initiator => (i2r, r2i),
            HandshakeRole::Responder => (r2i, i2r),
        })
    }
}

/// What a handshake reports. Both are terminal.
#[derive(Debug)]
#[non_exhaustive]
pub enum HandshakeEvent {
    /// Both sides proved the PSK and agree on everything.
    Established(Box<Session>),
    /// The handshake failed; see the error.
    Failed(HandshakeError),
}

/// Where a handshake is (see the diagram in the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// A responder waiting for a client hello.
    Idle,
    /// An initiator waiting for the server hello.
    SentHello,
    /// A responder waiting for the finished message.
    SentServerHello,
    /// Established.
    Done,
    /// Failed.
    Failed,
}

enum Inner {
    Idle,
    SentHello {
        nonce: [u8; NONCE_BYTES],
        psk_id: KeyId,
        parts: PskParts,
        ch: Vec<u8>,
    },
    SentServerHello {
        nonce_i: [u8; NONCE_BYTES],
        nonce_r: [u8; NONCE_BYTES],
        psk_id: KeyId,
        parts: PskParts,
        ch: Vec<u8>,
        sh: Vec<u8>,
        version: u8,
        suite: CipherSuite,
        peer: Offer,
    },
    /// Keeps the initiator's last flight, to answer a repeated server hello.
    Done {
        sh: Vec<u8>,
        fin: Vec<u8>,
    },
    Failed,
}

/// One handshake, as initiator or responder (a `Machine`; see the crate
/// docs for the driving loop).
///
/// Getters: [`state`](Self::state), [`is_finished`](Self::is_finished),
/// [`source`](Self::source). Input: [`handle_input`](Self::handle_input),
/// [`handle_timeout`](Self::handle_timeout). Output:
/// [`poll_transmit`](Self::poll_transmit), [`poll_event`](Self::poll_event),
/// [`poll_timeout`](Self::poll_timeout). `now` must never go backwards.
pub struct Handshake<S> {
    config: HandshakeConfig,
    offer: Offer,
    source: S,
    nonce: [u8; NONCE_BYTES],
    inner: Inner,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<HandshakeEvent>,
    deadline: Instant,
    retransmit_at: Option<Instant>,
    retransmissions: u32,
}

impl<S> core::fmt::Debug for Handshake<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Handshake")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl<S> Handshake<S> {
    /// Where the handshake is.
    #[must_use]
    pub fn state(&self) -> State {
        match self.inner {
            Inner::Idle => State::Idle,
            Inner::SentHello { .. } => State::SentHello,
            Inner::SentServerHello { .. } => State::SentServerHello,
            Inner::Done { .. } => State::Done,
            Inner::Failed => State::Failed,
        }
    }

    /// Whether the handshake is established or failed.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        matches!(self.inner, Inner::Done { .. } | Inner::Failed)
    }
}

impl<S: PskSource> Handshake<S> {
    /// An initiator: takes the next PSK from `source` and sends its client
    /// hello at the first [`poll_transmit`](Self::poll_transmit). A source
    /// with no key ends the handshake at once with
    /// [`HandshakeError::Psk`].
    ///
    /// # Errors
    /// An invalid configuration.
    pub fn initiator<R: CryptoRng + ?Sized>(
        config: HandshakeConfig,
        source: S,
        rng: &mut R,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        let mut hs = Self::new(config, source, rng, now)?;
        match hs.source.next() {
            Err(e) => hs.fail(HandshakeError::Psk(e), false),
            Ok((psk_id, psk)) => match PskParts::new(&psk) {
                None => hs.fail(HandshakeError::PskTooShort(psk_id), false),
                Some(parts) => {
                    let ch = Message::ClientHello(ClientHello {
                        nonce: hs.nonce,
                        psk_id,
                        offer: hs.offer.clone(),
                    })
                    .encode();
                    hs.out.push_back(ch.clone());
                    hs.retransmit_at = Some(now + hs.config.retransmit_after);
                    hs.inner = Inner::SentHello {
                        nonce: hs.nonce,
                        psk_id,
                        parts,
                        ch,
                    };
                }
            },
        }
        Ok(hs)
    }

    /// A responder: waits for a client hello.
    ///
    /// # Errors
    /// An invalid configuration.
    pub fn responder<R: CryptoRng + ?Sized>(
        config: HandshakeConfig,
        source: S,
        rng: &mut R,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        Self::new(config, source, rng, now)
    }

    fn new<R: CryptoRng + ?Sized>(
        config: HandshakeConfig,
        source: S,
        rng: &mut R,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut nonce = [0u8; NONCE_BYTES];
        rng.fill_bytes(&mut nonce);
        Ok(Handshake {
            offer: config.offer(),
            deadline: now + config.timeout,
            config,
            source,
            nonce,
            inner: Inner::Idle,
            out: VecDeque::new(),
            events: VecDeque::new(),
            retransmit_at: None,
            retransmissions: 0,
        })
    }

    /// The PSK source.
    pub fn source(&mut self) -> &mut S {
        &mut self.source
    }

    /// The PSK source, giving up the handshake.
    pub fn into_source(self) -> S {
        self.source
    }

    fn fail(&mut self, error: HandshakeError, send_alert: bool) {
        if send_alert && let Some(code) = error.alert() {
            self.out.push_back(Message::Alert(Alert { code }).encode());
        }
        self.inner = Inner::Failed;
        self.retransmit_at = None;
        self.events.push_back(HandshakeEvent::Failed(error));
    }

    /// Answers client hello `ch` (its bytes `raw`). `own` is the PSK this side
    /// already took when it initiated too and the peer named the same one.
    fn respond(&mut self, now: Instant, raw: &[u8], ch: &ClientHello, own: Option<PskParts>) {
        let Some(&version) = ch
            .offer
            .versions
            .iter()
            .find(|v| self.offer.versions.contains(v))
        else {
            return self.fail(PeerIncompatible::NoCommonVersion.into(), true);
        };
        let Some(suite) = negotiate(&ch.offer.suites, &self.offer.suites) else {
            return self.fail(PeerIncompatible::NoCommonSuite.into(), true);
        };
        if let Err(m) = check_store(&self.offer, &ch.offer) {
            return self.fail(PeerIncompatible::Store(m).into(), true);
        }
        let parts = match own {
            Some(p) => p,
            None => match self.source.take(&ch.psk_id) {
                Err(e) => return self.fail(e.into(), true),
                Ok(psk) => match PskParts::new(&psk) {
                    Some(p) => p,
                    None => return self.fail(HandshakeError::PskTooShort(ch.psk_id), true),
                },
            },
        };
        let nonce_r = self.nonce;
        let mut sh = Message::ServerHello(ServerHello {
            nonce: nonce_r,
            version,
            suite: suite.code(),
            offer: self.offer.clone(),
            psk_proof: [0; 16],
            transcript_mac: [0; 16],
        })
        .encode();
        let body = sh.len() - SERVER_HELLO_PROOFS;
        let psk_proof = parts.prove(
            Proof::ResponderPsk,
            &psk_binding(&ch.psk_id, &ch.nonce, &nonce_r),
        );
        let mut transcript = Vec::with_capacity(raw.len() + body);
        transcript.extend_from_slice(raw);
        transcript.extend_from_slice(&sh[..body]);
        let mac = parts.prove(Proof::ResponderTranscript, &transcript);
        sh[body..body + 16].copy_from_slice(&psk_proof);
        sh[body + 16..].copy_from_slice(&mac);
        self.out.push_back(sh.clone());
        self.retransmit_at = Some(now + self.config.retransmit_after);
        self.inner = Inner::SentServerHello {
            nonce_i: ch.nonce,
            nonce_r,
            psk_id: ch.psk_id,
            parts,
            ch: raw.to_vec(),
            sh,
            version,
            suite,
            peer: ch.offer.clone(),
        };
    }

    fn finish_initiator(&mut self, raw: &[u8], sh: &ServerHello) {
        let outcome = match &self.inner {
            Inner::SentHello {
                nonce,
                psk_id,
                parts,
                ch,
            } => check_server_hello(&self.offer, *nonce, *psk_id, parts, ch, raw, sh),
            _ => return,
        };
        match outcome {
            Err(e) => self.fail(e, true),
            Ok((session, fin)) => {
                self.out.push_back(fin.clone());
                self.retransmit_at = None;
                self.inner = Inner::Done {
                    sh: raw.to_vec(),
                    fin,
                };
                self.events
                    .push_back(HandshakeEvent::Established(Box::new(session)));
            }
        }
    }

    fn finish_responder(&mut self, raw: &[u8], fin: &Finished) {
        let outcome = match &self.inner {
            Inner::SentServerHello {
                nonce_i,
                nonce_r,
                psk_id,
                parts,
                ch,
                sh,
                version,
                suite,
                peer,
            } => {
                let mut transcript = Vec::with_capacity(ch.len() + sh.len() + 3);
                transcript.extend_from_slice(ch);
                transcript.extend_from_slice(sh);
                transcript.extend_from_slice(&raw[..3]);
                if !parts.verify(
                    Proof::InitiatorPsk,
                    &psk_binding(psk_id, nonce_i, nonce_r),
                    &fin.psk_proof,
                ) {
                    Err(PeerMisbehaved::WrongPsk)
                } else if !parts.verify(
                    Proof::InitiatorTranscript,
                    &transcript,
                    &fin.transcript_mac,
                ) {
                    Err(PeerMisbehaved::TamperedTranscript)
                } else {
                    Ok(session(
                        HandshakeRole::Responder,
                        *version,
                        *suite,
                        *psk_id,
                        peer.clone(),
                        self.offer.multicast,
                        parts,
                        [ch.as_slice(), sh.as_slice(), raw],
                    ))
                }
            }
            _ => return,
        };
        match outcome {
            Err(e) => self.fail(e.into(), true),
            Ok(session) => {
                self.retransmit_at = None;
                self.inner = Inner::Done {
                    sh: Vec::new(),
                    fin: Vec::new(),
                };
                self.events
                    .push_back(HandshakeEvent::Established(Box::new(session)));
            }
        }
    }
}

impl<S: PskSource> Machine for Handshake<S> {
    type Event = HandshakeEvent;
    type Error = InputError;

    /// Feeds one datagram from the peer.
    ///
    /// # Errors
    /// The datagram was not a handshake message this state accepts; nothing
    /// changed. Failures of the handshake itself are events, not errors.
    fn handle_input(&mut self, now: Instant, datagram: &[u8]) -> Result<(), InputError> {
        let msg = Message::decode(datagram)?;
        if let Message::Alert(a) = msg {
            return match self.inner {
                Inner::Done { .. } | Inner::Failed => Err(InputError::Unexpected),
                _ => {
                    self.fail(HandshakeError::AlertReceived(a.code), false);
                    Ok(())
                }
            };
        }
        match (&self.inner, msg) {
            (Inner::Idle, Message::ClientHello(ch)) => {
                self.respond(now, datagram, &ch, None);
                Ok(())
            }
            (Inner::SentHello { nonce, .. }, Message::ClientHello(ch)) => {
                // Both sides initiated: the larger nonce stays initiator.
                if *nonce >= ch.nonce {
                    return Ok(());
                }
                let own = match core::mem::replace(&mut self.inner, Inner::Idle) {
                    Inner::SentHello { psk_id, parts, .. } if psk_id == ch.psk_id => Some(parts),
                    _ => None,
                };
                self.retransmit_at = None;
                self.retransmissions = 0;
                self.out.clear();
                self.respond(now, datagram, &ch, own);
                Ok(())
            }
            (Inner::SentServerHello { ch, sh, .. }, Message::ClientHello(_)) => {
                if ch.as_slice() == datagram {
                    self.out.push_back(sh.clone());
                    Ok(())
                } else {
                    Err(InputError::Unexpected)
                }
            }
            (Inner::SentHello { .. }, Message::ServerHello(sh)) => {
                self.finish_initiator(datagram, &sh);
                Ok(())
            }
            (Inner::Done { sh, fin }, Message::ServerHello(_)) => {
                if sh.as_slice() == datagram {
                    self.out.push_back(fin.clone());
                    Ok(())
                } else {
                    Err(InputError::Unexpected)
                }
            }
            (Inner::SentServerHello { .. }, Message::Finished(fin)) => {
                self.finish_responder(datagram, &fin);
                Ok(())
            }
            _ => Err(InputError::Unexpected),
        }
    }

    /// The next message to send, until `None`.
    fn poll_transmit(&mut self, _now: Instant) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// The next event ([`HandshakeEvent::Established`] or
    /// [`HandshakeEvent::Failed`], once).
    fn poll_event(&mut self) -> Option<HandshakeEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due.
    fn poll_timeout(&self) -> Option<Instant> {
        match self.inner {
            Inner::Done { .. } | Inner::Failed => None,
            Inner::Idle => Some(self.deadline),
            _ => Some(
                self.retransmit_at
                    .map_or(self.deadline, |t| t.min(self.deadline)),
            ),
        }
    }

    /// Resends the last flight or fails with [`HandshakeError::Timeout`].
    fn handle_timeout(&mut self, now: Instant) {
        if self.is_finished() {
            return;
        }
        if now >= self.deadline {
            return self.fail(HandshakeError::Timeout, false);
        }
        if self.retransmit_at.is_some_and(|t| t <= now) {
            if self.retransmissions >= self.config.max_retransmissions {
                self.retransmit_at = None;
                return;
            }
            self.retransmissions += 1;
            self.retransmit_at = Some(now + self.config.retransmit_after);
            match &self.inner {
                Inner::SentHello { ch, .. } => self.out.push_back(ch.clone()),
                Inner::SentServerHello { sh, .. } => self.out.push_back(sh.clone()),
                _ => {}
            }
        }
    }
}

/// The initiator's checks of a server hello and its finished message.
fn check_server_hello(
    offer: &Offer,
    nonce: [u8; NONCE_BYTES],
    psk_id: KeyId,
    parts: &PskParts,
    ch: &[u8],
    raw: &[u8],
    sh: &ServerHello,
) -> Result<(Session, Vec<u8>), HandshakeError> {
    if !parts.verify(
        Proof::ResponderPsk,
        &psk_binding(&psk_id, &nonce, &sh.nonce),
        &sh.psk_proof,
    ) {
        return Err(PeerMisbehaved::WrongPsk.into());
    }
    let body = raw.len() - SERVER_HELLO_PROOFS;
    let mut transcript = Vec::with_capacity(ch.len() + raw.len() + 3);
    transcript.extend_from_slice(ch);
    transcript.extend_from_slice(&raw[..body]);
    if !parts.verify(Proof::ResponderTranscript, &transcript, &sh.transcript_mac) {
        return Err(PeerMisbehaved::TamperedTranscript.into());
    }
    // Authentic from here on: a bad choice is the responder's own.
    let version = offer
        .versions
        .iter()
        .find(|v| sh.offer.versions.contains(v))
        .copied();
    if version != Some(sh.version) {
        return Err(PeerMisbehaved::IllegalChoice.into());
    }
    let Some(suite) = negotiate(&offer.suites, &sh.offer.suites) else {
        return Err(PeerIncompatible::NoCommonSuite.into());
    };
    if suite.code() != sh.suite {
        return Err(PeerMisbehaved::IllegalChoice.into());
    }
    check_store(offer, &sh.offer).map_err(PeerIncompatible::Store)?;
    // The finished message's proofs cover both hellos and its own header.
    transcript.truncate(ch.len());
    transcript.extend_from_slice(raw);
    crate::message::header(TYPE_FINISHED).write(&mut transcript);
    let fin = Message::Finished(Finished {
        psk_proof: parts.prove(
            Proof::InitiatorPsk,
            &psk_binding(&psk_id, &nonce, &sh.nonce),
        ),
        transcript_mac: parts.prove(Proof::InitiatorTranscript, &transcript),
    })
    .encode();
    let session = session(
        HandshakeRole::Initiator,
        sh.version,
        suite,
        psk_id,
        sh.offer.clone(),
        offer.multicast,
        parts,
        [ch, raw, fin.as_slice()],
    );
    Ok((session, fin))
}

/// What the PSK proofs cover: the PSK ID and both nonces.
fn psk_binding(psk_id: &KeyId, nonce_i: &[u8; 32], nonce_r: &[u8; 32]) -> [u8; 80] {
    let mut b = [0u8; 80];
    b[..16].copy_from_slice(psk_id.as_bytes());
    b[16..48].copy_from_slice(nonce_i);
    b[48..].copy_from_slice(nonce_r);
    b
}

fn check_store(ours: &Offer, theirs: &Offer) -> Result<(), StoreMismatch> {
    ours.store.check_peer(&theirs.store)?;
    if ours.sync_version != theirs.sync_version {
        return Err(StoreMismatch::SyncVersion {
            ours: ours.sync_version,
            theirs: theirs.sync_version,
        });
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn session(
    role: HandshakeRole,
    version: u8,
    suite: CipherSuite,
    psk_id: KeyId,
    peer: Offer,
    multicast: bool,
    parts: &PskParts,
    transcript: [&[u8]; 3],
) -> Session {
    let mut h = blake3::Hasher::new();
    for t in transcript {
        h.update(t);
    }
    let transcript_hash = *h.finalize().as_bytes();
    let secrets = (suite == CipherSuite::Aes256GcmBlake3)
        .then(|| traffic_secrets(parts.schedule_secret(), &transcript_hash));
    debug_assert_eq!(version, PROTOCOL_VERSION);
    Session {
        role,
        version,
        suite,
        psk_id,
        multicast: multicast && peer.multicast,
        peer,
        transcript_hash,
        secrets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::{Ownership, StoreParams};
    use crate::psk::{InitialSecret, PSK_BYTES, PskTable};
    use CipherSuite::{Aes256GcmBlake3 as Aes, OtpWegmanCarter as Otp};
    use qkd_core::SecretKey;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn store(ownership: Ownership) -> StoreParams {
        StoreParams {
            chunk_bytes: 1024,
            min_key_bits: 64,
            max_key_bits: 8192,
            ownership,
        }
    }

    fn config(ownership: Ownership, suites: &[CipherSuite]) -> HandshakeConfig {
        HandshakeConfig::new(Capabilities::new(store(ownership)).with_suites(suites))
    }

    fn keys(n: u8) -> Vec<(KeyId, SecretKey)> {
        (0..n)
            .map(|i| {
                let id = KeyId::for_block(b"test-link", 0, u64::from(i));
                let mut k = vec![0u8; PSK_BYTES];
                for (j, b) in k.iter_mut().enumerate() {
                    *b = (j as u8).wrapping_mul(31) ^ i;
                }
                (id, SecretKey::from_vec(k))
            })
            .collect()
    }

    type Hs = Handshake<PskTable>;

    fn pair(ci: HandshakeConfig, cr: HandshakeConfig, now: Instant) -> (Hs, Hs) {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let a = Handshake::initiator(ci, PskTable::new(Ownership::First, keys(4)), &mut rng, now)
            .unwrap();
        let b = Handshake::responder(cr, PskTable::new(Ownership::Second, keys(4)), &mut rng, now)
            .unwrap();
        (a, b)
    }

    /// Shuttles messages until neither side sends; `tamper` may change them.
    fn run(
        a: &mut Hs,
        b: &mut Hs,
        now: Instant,
        mut tamper: impl FnMut(usize, &mut Vec<u8>),
    ) -> (Vec<HandshakeEvent>, Vec<HandshakeEvent>) {
        let mut n = 0;
        loop {
            let mut moved = false;
            while let Some(mut m) = a.poll_transmit(now) {
                tamper(n, &mut m);
                n += 1;
                let _ = b.handle_input(now, &m);
                moved = true;
            }
            while let Some(mut m) = b.poll_transmit(now) {
                tamper(n, &mut m);
                n += 1;
                let _ = a.handle_input(now, &m);
                moved = true;
            }
            if !moved {
                break;
            }
        }
        (
            core::iter::from_fn(|| a.poll_event()).collect(),
            core::iter::from_fn(|| b.poll_event()).collect(),
        )
    }

    fn established(evs: &[HandshakeEvent]) -> Option<&Session> {
        match evs {
            [HandshakeEvent::Established(s)] => Some(s),
            _ => None,
        }
    }

    fn failed(evs: &[HandshakeEvent]) -> Option<&HandshakeError> {
        match evs {
            [HandshakeEvent::Failed(e)] => Some(e),
            _ => None,
        }
    }

    #[test]
    fn every_suite_pair_follows_the_responders_preference() {
        let lists: [&[CipherSuite]; 4] = [&[Aes], &[Otp], &[Aes, Otp], &[Otp, Aes]];
        let now = Instant::now();
        for li in lists {
            for lr in lists {
                let (mut a, mut b) = pair(
                    config(Ownership::First, li),
                    config(Ownership::Second, lr),
                    now,
                );
                let (ea, eb) = run(&mut a, &mut b, now, |_, _| {});
                let want = lr.iter().find(|s| li.contains(s)).copied();
                match want {
                    Some(suite) => {
                        let (sa, sb) = (established(&ea).unwrap(), established(&eb).unwrap());
                        assert_eq!((sa.suite, sb.suite), (suite, suite), "{li:?} {lr:?}");
                        assert_eq!(sa.role, HandshakeRole::Initiator);
                        assert_eq!(sb.role, HandshakeRole::Responder);
                        assert_eq!(sa.transcript_hash, sb.transcript_hash);
                        assert_eq!(sa.psk_id, sb.psk_id);
                        match (sa.traffic_secrets(), sb.traffic_secrets()) {
                            (Some((s_a, r_a)), Some((s_b, r_b))) => {
                                assert_eq!(s_a.expose_secret(), r_b.expose_secret());
                                assert_eq!(r_a.expose_secret(), s_b.expose_secret());
                                assert_ne!(s_a.expose_secret(), r_a.expose_secret());
                            }
                            (None, None) => assert_eq!(suite, Otp),
                            _ => panic!("one side derived keys"),
                        }
                        assert_eq!(a.state(), State::Done);
                        assert_eq!(b.state(), State::Done);
                    }
                    None => {
                        assert_eq!(
                            failed(&eb),
                            Some(&HandshakeError::PeerIncompatible(
                                PeerIncompatible::NoCommonSuite
                            ))
                        );
                        assert_eq!(
                            failed(&ea),
                            Some(&HandshakeError::AlertReceived(AlertCode::NoCommonSuite))
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn simultaneous_initiation_settles_one_role_each() {
        let now = Instant::now();
        for seed in 0..16 {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let mut a = Handshake::initiator(
                config(Ownership::First, &[Aes, Otp]),
                PskTable::new(Ownership::First, keys(4)),
                &mut rng,
                now,
            )
            .unwrap();
            let mut b = Handshake::initiator(
                config(Ownership::Second, &[Otp, Aes]),
                PskTable::new(Ownership::Second, keys(4)),
                &mut rng,
                now,
            )
            .unwrap();
            // Both hellos cross on the wire before either side reads.
            let ha = a.poll_transmit(now).unwrap();
            let hb = b.poll_transmit(now).unwrap();
            a.handle_input(now, &hb).unwrap();
            b.handle_input(now, &ha).unwrap();
            let (ea, eb) = run(&mut a, &mut b, now, |_, _| {});
            let (sa, sb) = (established(&ea).unwrap(), established(&eb).unwrap());
            assert_ne!(sa.role, sb.role);
            assert_eq!(sa.psk_id, sb.psk_id);
            assert_eq!(sa.transcript_hash, sb.transcript_hash);
            // The responder's preference decides.
            let want = if sa.role == HandshakeRole::Responder {
                Aes
            } else {
                Otp
            };
            assert_eq!(sa.suite, want);
        }
    }

    #[test]
    fn simultaneous_initiation_with_one_initial_secret() {
        let now = Instant::now();
        let id = KeyId::derive(b"initial");
        let secret = || InitialSecret::new(id, keys(1).remove(0).1);
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let mut a = Handshake::initiator(config(Ownership::First, &[Aes]), secret(), &mut rng, now)
            .unwrap();
        let mut b =
            Handshake::initiator(config(Ownership::Second, &[Aes]), secret(), &mut rng, now)
                .unwrap();
        let ha = a.poll_transmit(now).unwrap();
        let hb = b.poll_transmit(now).unwrap();
        a.handle_input(now, &hb).unwrap();
        b.handle_input(now, &ha).unwrap();
        let mut ea = Vec::new();
        let mut eb = Vec::new();
        for _ in 0..4 {
            while let Some(m) = a.poll_transmit(now) {
                let _ = b.handle_input(now, &m);
            }
            while let Some(m) = b.poll_transmit(now) {
                let _ = a.handle_input(now, &m);
            }
        }
        ea.extend(core::iter::from_fn(|| a.poll_event()));
        eb.extend(core::iter::from_fn(|| b.poll_event()));
        let (sa, sb) = (
            matches!(ea.as_slice(), [HandshakeEvent::Established(_)]),
            matches!(eb.as_slice(), [HandshakeEvent::Established(_)]),
        );
        assert!(sa && sb, "{ea:?} {eb:?}");
        assert!(a.source().is_consumed() && b.source().is_consumed());
    }

    #[test]
    fn wrong_psk_fails_on_the_psk_proof() {
        let now = Instant::now();
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let mut other = keys(4);
        other[0].1 = SecretKey::from_slice(&[0xee; PSK_BYTES]);
        let mut a = Handshake::initiator(
            config(Ownership::First, &[Aes]),
            PskTable::new(Ownership::First, keys(4)),
            &mut rng,
            now,
        )
        .unwrap();
        let mut b = Handshake::responder(
            config(Ownership::Second, &[Aes]),
            PskTable::new(Ownership::Second, other),
            &mut rng,
            now,
        )
        .unwrap();
        let (ea, eb) = run(&mut a, &mut b, now, |_, _| {});
        assert_eq!(
            failed(&ea),
            Some(&HandshakeError::PeerMisbehaved(PeerMisbehaved::WrongPsk))
        );
        assert_eq!(
            failed(&eb),
            Some(&HandshakeError::AlertReceived(AlertCode::BadPskProof))
        );
    }

    #[test]
    fn a_downgrade_on_the_path_fails_on_the_transcript() {
        let now = Instant::now();
        let (mut a, mut b) = pair(
            config(Ownership::First, &[Otp, Aes]),
            config(Ownership::Second, &[Otp, Aes]),
            now,
        );
        // The attacker strips the OTP suite from the client hello: the
        // responder then chooses AES, which both support.
        let (ea, eb) = run(&mut a, &mut b, now, |n, m| {
            if n == 0 {
                let ch = Message::decode(m).unwrap();
                let Message::ClientHello(mut ch) = ch else {
                    panic!("hello")
                };
                ch.offer.suites = vec![Aes.code()];
                *m = Message::ClientHello(ch).encode();
            }
        });
        assert_eq!(
            failed(&ea),
            Some(&HandshakeError::PeerMisbehaved(
                PeerMisbehaved::TamperedTranscript
            ))
        );
        assert_eq!(
            failed(&eb),
            Some(&HandshakeError::AlertReceived(AlertCode::BadTranscript))
        );
    }

    #[test]
    fn a_single_altered_byte_anywhere_stops_the_handshake() {
        let now = Instant::now();
        // Learn the message lengths of an honest run first.
        let (mut a, mut b) = pair(
            config(Ownership::First, &[Aes, Otp]),
            config(Ownership::Second, &[Aes, Otp]),
            now,
        );
        let mut lens = Vec::new();
        run(&mut a, &mut b, now, |_, m| lens.push(m.len()));
        assert_eq!(lens.len(), 3, "ClientHello, ServerHello, Finished");
        for (msg, &len) in lens.iter().enumerate() {
            for byte in 0..len {
                let (mut a, mut b) = pair(
                    config(Ownership::First, &[Aes, Otp]),
                    config(Ownership::Second, &[Aes, Otp]),
                    now,
                );
                let (ea, eb) = run(&mut a, &mut b, now, |n, m| {
                    if n == msg {
                        m[byte] ^= 0x01;
                    }
                });
                let both = established(&ea).is_some() && established(&eb).is_some();
                assert!(!both, "message {msg} byte {byte}: both established");
                // Whatever one side established, the other did not agree to it.
                if let (Some(sa), Some(sb)) = (established(&ea), established(&eb)) {
                    assert_ne!(sa.transcript_hash, sb.transcript_hash);
                }
            }
        }
    }

    #[test]
    fn unknown_and_used_psk_are_refused() {
        let now = Instant::now();
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let id = KeyId::derive(b"initial");
        let psk = keys(1).remove(0).1;
        // Unknown: the responder holds another ID.
        let mut a = Handshake::initiator(
            config(Ownership::First, &[Aes]),
            InitialSecret::new(id, psk.clone()),
            &mut rng,
            now,
        )
        .unwrap();
        let mut b = Handshake::responder(
            config(Ownership::Second, &[Aes]),
            InitialSecret::new(KeyId::derive(b"other"), psk.clone()),
            &mut rng,
            now,
        )
        .unwrap();
        let ch = a.poll_transmit(now).unwrap();
        b.handle_input(now, &ch).unwrap();
        assert!(matches!(
            b.poll_event(),
            Some(HandshakeEvent::Failed(HandshakeError::Psk(PskError::Unknown(x)))) if x == id
        ));
        let alert = b.poll_transmit(now).unwrap();
        a.handle_input(now, &alert).unwrap();
        assert!(matches!(
            a.poll_event(),
            Some(HandshakeEvent::Failed(HandshakeError::AlertReceived(
                AlertCode::UnknownPsk
            )))
        ));

        // Used: a first handshake succeeds, a second one with the same PSK
        // (a recorded client hello replayed) is refused.
        let mut source_b = InitialSecret::new(id, psk.clone());
        let mut a = Handshake::initiator(
            config(Ownership::First, &[Aes]),
            InitialSecret::new(id, psk.clone()),
            &mut rng,
            now,
        )
        .unwrap();
        let ch = a.poll_transmit(now).unwrap();
        let mut b =
            Handshake::responder(config(Ownership::Second, &[Aes]), source_b, &mut rng, now)
                .unwrap();
        b.handle_input(now, &ch).unwrap();
        let sh = b.poll_transmit(now).unwrap();
        a.handle_input(now, &sh).unwrap();
        let fin = a.poll_transmit(now).unwrap();
        b.handle_input(now, &fin).unwrap();
        assert!(matches!(
            b.poll_event(),
            Some(HandshakeEvent::Established(_))
        ));
        source_b = b.into_source();
        let mut b2 =
            Handshake::responder(config(Ownership::Second, &[Aes]), source_b, &mut rng, now)
                .unwrap();
        b2.handle_input(now, &ch).unwrap();
        assert!(matches!(
            b2.poll_event(),
            Some(HandshakeEvent::Failed(HandshakeError::Psk(PskError::AlreadyUsed(x)))) if x == id
        ));
        // An initiator cannot start a second handshake with it either.
        let mut a2 = Handshake::initiator(
            config(Ownership::First, &[Aes]),
            a.into_source(),
            &mut rng,
            now,
        )
        .unwrap();
        assert!(a2.poll_transmit(now).is_none());
        assert!(matches!(
            a2.poll_event(),
            Some(HandshakeEvent::Failed(HandshakeError::Psk(
                PskError::Exhausted
            )))
        ));
    }

    #[test]
    fn a_recorded_server_hello_does_not_answer_a_new_challenge() {
        let now = Instant::now();
        let (mut a, mut b) = pair(
            config(Ownership::First, &[Aes]),
            config(Ownership::Second, &[Aes]),
            now,
        );
        let mut recorded = Vec::new();
        run(&mut a, &mut b, now, |_, m| recorded.push(m.clone()));
        // A new initiator with the same PSK table state as the first one
        // (same key, so only the nonce differs) receives the old reply.
        let mut rng = ChaCha20Rng::seed_from_u64(77);
        let mut a2 = Handshake::initiator(
            config(Ownership::First, &[Aes]),
            PskTable::new(Ownership::First, keys(4)),
            &mut rng,
            now,
        )
        .unwrap();
        let _ = a2.poll_transmit(now);
        a2.handle_input(now, &recorded[1]).unwrap();
        assert!(matches!(
            a2.poll_event(),
            Some(HandshakeEvent::Failed(HandshakeError::PeerMisbehaved(
                PeerMisbehaved::WrongPsk
            )))
        ));
    }

    #[test]
    fn incompatible_store_parameters_are_refused() {
        let now = Instant::now();
        let mut cr = config(Ownership::Second, &[Aes]);
        cr.capabilities.store.chunk_bytes = 2048;
        let (mut a, mut b) = pair(config(Ownership::First, &[Aes]), cr, now);
        let (ea, eb) = run(&mut a, &mut b, now, |_, _| {});
        assert!(matches!(
            failed(&eb),
            Some(HandshakeError::PeerIncompatible(PeerIncompatible::Store(
                StoreMismatch::ChunkBytes {
                    ours: 2048,
                    theirs: 1024
                }
            )))
        ));
        assert_eq!(
            failed(&ea),
            Some(&HandshakeError::AlertReceived(AlertCode::IncompatibleStore))
        );
        // Both sides claiming the same chunks.
        let (mut a, mut b) = pair(
            config(Ownership::First, &[Aes]),
            config(Ownership::First, &[Aes]),
            now,
        );
        let (_, eb) = run(&mut a, &mut b, now, |_, _| {});
        assert_eq!(
            failed(&eb),
            Some(&HandshakeError::PeerIncompatible(PeerIncompatible::Store(
                StoreMismatch::Ownership
            )))
        );
        // Different sync protocol versions.
        let mut cr = config(Ownership::Second, &[Aes]);
        cr.capabilities.sync_version = 2;
        let (mut a, mut b) = pair(config(Ownership::First, &[Aes]), cr, now);
        let (_, eb) = run(&mut a, &mut b, now, |_, _| {});
        assert!(matches!(
            failed(&eb),
            Some(HandshakeError::PeerIncompatible(PeerIncompatible::Store(
                StoreMismatch::SyncVersion { .. }
            )))
        ));
    }

    #[test]
    fn silence_times_out_after_the_retransmissions() {
        let start = Instant::now();
        let (mut a, _b) = pair(
            config(Ownership::First, &[Aes]),
            config(Ownership::Second, &[Aes]),
            start,
        );
        let first = a.poll_transmit(start).unwrap();
        let mut resent = 0;
        while let Some(t) = a.poll_timeout() {
            a.handle_timeout(t);
            while let Some(m) = a.poll_transmit(t) {
                assert_eq!(m, first, "a resend is the same hello");
                resent += 1;
            }
        }
        assert_eq!(resent, 5);
        assert!(matches!(
            a.poll_event(),
            Some(HandshakeEvent::Failed(HandshakeError::Timeout))
        ));
        assert!(a.is_finished());
    }

    #[test]
    fn lost_finished_is_recovered_by_the_resent_server_hello() {
        let now = Instant::now();
        let (mut a, mut b) = pair(
            config(Ownership::First, &[Aes]),
            config(Ownership::Second, &[Aes]),
            now,
        );
        let ch = a.poll_transmit(now).unwrap();
        b.handle_input(now, &ch).unwrap();
        let sh = b.poll_transmit(now).unwrap();
        a.handle_input(now, &sh).unwrap();
        let _lost = a.poll_transmit(now).unwrap();
        let later = b.poll_timeout().unwrap();
        b.handle_timeout(later);
        let sh2 = b.poll_transmit(later).unwrap();
        a.handle_input(later, &sh2).unwrap();
        let fin = a.poll_transmit(later).unwrap();
        b.handle_input(later, &fin).unwrap();
        assert!(matches!(
            a.poll_event(),
            Some(HandshakeEvent::Established(_))
        ));
        assert!(matches!(
            b.poll_event(),
            Some(HandshakeEvent::Established(_))
        ));
    }

    #[test]
    fn config_is_validated() {
        let mut c = config(Ownership::First, &[]);
        assert_eq!(c.validate().unwrap_err().field(), "capabilities.suites");
        c = config(Ownership::First, &[Aes, Aes]);
        assert!(c.validate().is_err());
        c = config(Ownership::First, &[Aes]);
        c.timeout = Duration::ZERO;
        assert_eq!(c.validate().unwrap_err().field(), "handshake.timeout");
        c = config(Ownership::First, &[Aes]);
        c.capabilities.store.min_key_bits = 9;
        assert!(c.validate().is_err());
    }
}
