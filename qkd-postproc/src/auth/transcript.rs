//! Round transcripts: one tag per direction authenticates every message of
//! a post-processing round (the "ping-pong" scheme).
//!
//! Sealing each message costs one pad per message. A round of error
//! correction exchanges tens to hundreds of messages, which at 128 bits
//! each can cost several percent of a 10^6-bit block's final key
//! (BENCHMARKS.md). The key of a round is only used after the round, so it
//! is enough that both ends confirm, before they keep the key, that they saw
//! the same conversation (Kiktenko et al., "Lightweight authentication for
//! quantum key distribution", IEEE Trans. Inf. Theory 66(10), 2020):
//!
//! ```text
//!  Alice                                         Bob
//!   m1 ───────────────── (framed, not sealed) ──▶ │  both absorb every message,
//!   │ ◀──────────────────────────────────────── m2  in the round's order,
//!   ...                                           │  into a Transcript
//!   seal_transcript(A's transcript) ── tag_A ───▶ open_transcript(B's copy)
//!   open_transcript(A's copy) ◀─────── tag_B ──── seal_transcript(B's transcript)
//!   keep the round's key only if both verified; otherwise drop it on both ends
//! ```
//!
//! Two pads per round instead of one per message. The messages of the round
//! travel unauthenticated, so a man in the middle can change them, but not
//! without the tags failing (probability `1 - ε` with `ε ≤ L / 2^t`, `L` the
//! transcript's blocks), and then the round's key is discarded: the
//! attacker gains nothing but a denial of service, which it has anyway.
//!
//! # Hash input
//!
//! A transcript tag is the Wegman-Carter tag (same recycled hash key, fresh
//! pad) of
//!
//! ```text
//! TRANSCRIPT_DOMAIN (16 bytes, starts with 10 01 03)
//! ‖ for each message: sender (1 byte: 0 Alice, 1 Bob) ‖ length (8 bytes, BE) ‖ bytes
//! ‖ header of the tag message (25 bytes, type 0x03)
//! ‖ body: transcript length in bytes (8, BE) ‖ message count (4, BE)
//! ```
//!
//! The encoding is injective (it parses from the end: body, header, then
//! length-prefixed messages), and it can never equal the hash input of an
//! ordinary sealed message, whose third byte is its type (`0x01`, `0x02` or
//! `0x04`), while a transcript's is `0x03`: a transcript tag cannot be
//! replayed as the tag of a data message.

use qkd_core::Role;

use super::channel::{VERSION, role_code};
use super::context::CryptoContext;
use super::tag::HashStream;

/// First block of every transcript hash input (see the [module docs](self)):
/// the envelope of a transcript tag message, then `"qkd-transcri"` and a
/// zero byte.
pub const TRANSCRIPT_DOMAIN: [u8; 16] = [
    0x10, VERSION, 0x03, b'q', b'k', b'd', b'-', b't', b'r', b'a', b'n', b's', b'c', b'r', b'i',
    0x00,
];

const _: () = assert!(TRANSCRIPT_DOMAIN[0] == qkd_core::wire::Protocol::Auth.id());

/// The running hash of one round's messages, keyed with one direction's
/// hash key. Made by
/// [`AuthenticatedChannel::start_transcript`](super::AuthenticatedChannel::start_transcript)
/// (to seal) or
/// [`start_peer_transcript`](super::AuthenticatedChannel::start_peer_transcript)
/// (to verify); consumed by `seal_transcript` / `open_transcript`.
///
/// Holds no message bytes, only the keyed hash state (zeroized on drop).
/// `seal_transcript` and `open_transcript` take it by value and a refusal
/// (an empty pool, a pad not deposited yet) drops it: clone it first to
/// retry without absorbing the round again.
#[derive(Clone, Debug)]
pub struct Transcript {
    stream: HashStream,
    pub(crate) context: u32,
    /// The end whose tag this transcript is for.
    pub(crate) keyed_for: Role,
    messages: u32,
    bytes: u64,
}

impl Transcript {
    pub(crate) fn new(context: &CryptoContext, keyed_for: Role) -> Self {
        let mut stream = context.key().stream();
        stream.update(&TRANSCRIPT_DOMAIN);
        Transcript {
            stream,
            context: context.id(),
            keyed_for,
            messages: 0,
            bytes: 0,
        }
    }

    /// Appends one message of the round, sent by `sender`. Both ends must
    /// absorb the same messages in the same order (for example the order of
    /// the round's sequence numbers).
    pub fn absorb(&mut self, sender: Role, message: &[u8]) {
        let len = message.len() as u64;
        self.stream.update(&[role_code(sender)]);
        self.stream.update(&len.to_be_bytes());
        self.stream.update(message);
        self.messages = self.messages.saturating_add(1);
        self.bytes = self.bytes.saturating_add(9 + len);
    }

    /// Appends one message given in pieces: the same as [`absorb`](Self::absorb)
    /// of their concatenation, without building it (a host that frames
    /// each message with a header hashes header and message in place).
    pub fn absorb_parts(&mut self, sender: Role, parts: &[&[u8]]) {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        self.stream.update(&[role_code(sender)]);
        self.stream.update(&len.to_be_bytes());
        for part in parts {
            self.stream.update(part);
        }
        self.messages = self.messages.saturating_add(1);
        self.bytes = self.bytes.saturating_add(9 + len);
    }

    /// Messages absorbed.
    #[must_use]
    pub fn messages(&self) -> u32 {
        self.messages
    }

    /// Bytes absorbed, framing included.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.bytes
    }

    /// Whether no message was absorbed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Bytes hashed so far, the domain block included.
    pub(crate) fn hashed_len(&self) -> u64 {
        self.stream.len()
    }

    /// The 12-byte body of the tag message.
    pub(crate) fn summary(&self) -> [u8; 12] {
        let mut body = [0u8; 12];
        body[..8].copy_from_slice(&self.bytes.to_be_bytes());
        body[8..].copy_from_slice(&self.messages.to_be_bytes());
        body
    }

    pub(crate) fn into_stream(self) -> HashStream {
        self.stream
    }
}

#[cfg(test)]
mod tests {
    use qkd_core::SecretKey;

    use crate::auth::{AuthenticatedChannel, ChannelConfig, OpenError, Opened, TagMode};

    use super::*;

    fn pair() -> (AuthenticatedChannel, AuthenticatedChannel) {
        let s = SecretKey::from_vec((0..4096u32).map(|i| (i * 7 + 1) as u8).collect());
        (
            crate::auth::tests::started(Role::Alice, &s, ChannelConfig::default()),
            crate::auth::tests::started(Role::Bob, &s, ChannelConfig::default()),
        )
    }

    fn round() -> Vec<(Role, Vec<u8>)> {
        (0..40u32)
            .map(|i| {
                let sender = if i % 2 == 0 { Role::Bob } else { Role::Alice };
                (sender, vec![i as u8; (i as usize * 37) % 300])
            })
            .collect()
    }

    /// Both ends absorb `messages` (one side's view may differ) and exchange
    /// the two tags; returns (Bob's verdict on Alice, Alice's verdict on Bob).
    fn exchange(
        a: &mut AuthenticatedChannel,
        b: &mut AuthenticatedChannel,
        alice_view: &[(Role, Vec<u8>)],
        bob_view: &[(Role, Vec<u8>)],
    ) -> (Result<(), OpenError>, Result<(), OpenError>) {
        let mut a_own = a.start_transcript();
        let mut a_peer = a.start_peer_transcript();
        for (sender, m) in alice_view {
            a_own.absorb(*sender, m);
            a_peer.absorb(*sender, m);
        }
        let mut b_own = b.start_transcript();
        let mut b_peer = b.start_peer_transcript();
        for (sender, m) in bob_view {
            b_own.absorb(*sender, m);
            b_peer.absorb(*sender, m);
        }
        let tag_a = a.seal_transcript(a_own).unwrap();
        let tag_b = b.seal_transcript(b_own).unwrap();
        (
            b.open_transcript(&tag_a, b_peer),
            a.open_transcript(&tag_b, a_peer),
        )
    }

    #[test]
    fn equal_transcripts_verify_with_two_pads_per_round() {
        let (mut a, mut b) = pair();
        let r = round();
        assert_eq!(exchange(&mut a, &mut b, &r, &r), (Ok(()), Ok(())));
        // One pad each way for 40 messages.
        assert_eq!(a.pool().stats().sent_pad_bits, 128);
        assert_eq!(a.pool().stats().received_pad_bits, 128);
        assert_eq!(b.pool().stats().sent_pad_bits, 128);
    }

    /// A message absorbed in pieces is the message absorbed whole, however
    /// it is cut: a transcript built with `absorb_parts` verifies against
    /// one built with `absorb`.
    #[test]
    fn absorbing_in_parts_is_absorbing_the_whole() {
        let (mut a, mut b) = pair();
        let r = round();
        let mut a_own = a.start_transcript();
        for (i, (sender, m)) in r.iter().enumerate() {
            let cut = i % (m.len() + 1);
            let (head, tail) = m.split_at(cut);
            a_own.absorb_parts(*sender, &[head, &[], tail]);
        }
        let mut b_peer = b.start_peer_transcript();
        for (sender, m) in &r {
            b_peer.absorb(*sender, m);
        }
        assert_eq!(a_own.len(), b_peer.len());
        let tag = a.seal_transcript(a_own).unwrap();
        assert_eq!(b.open_transcript(&tag, b_peer), Ok(()));
    }

    #[test]
    fn any_difference_in_the_round_fails_both_ways() {
        let r = round();
        let mut changed: Vec<Vec<(Role, Vec<u8>)>> = Vec::new();
        let mut v = r.clone();
        v[7].1[0] ^= 1; // one bit of one message
        changed.push(v);
        let mut v = r.clone();
        v.swap(3, 5); // order
        changed.push(v);
        let mut v = r.clone();
        v.pop(); // a message dropped
        changed.push(v);
        let mut v = r.clone();
        v[10].0 = v[10].0.peer(); // attributed to the other sender
        changed.push(v);
        let mut v = r.clone();
        // Bytes moved from one message to the next: same concatenation.
        let moved = v[11].1.pop().unwrap();
        v[12].1.insert(0, moved);
        changed.push(v);
        for bob_view in changed {
            let (mut a, mut b) = pair();
            let (at_bob, at_alice) = exchange(&mut a, &mut b, &r, &bob_view);
            assert_eq!(at_bob, Err(OpenError::AuthenticationFailed));
            assert_eq!(at_alice, Err(OpenError::AuthenticationFailed));
            // Nothing consumed on failure: the pads are still there.
            assert_eq!(b.pool().stats().received_messages, 0);
        }
    }

    #[test]
    fn transcript_tags_are_not_data_messages_and_vice_versa() {
        let (mut a, mut b) = pair();
        let t = a.start_transcript();
        let tag = a.seal_transcript(t).unwrap();
        assert_eq!(b.open(&tag), Err(OpenError::TranscriptTag));
        let data = a.seal(b"data").unwrap();
        assert_eq!(
            b.open_transcript(&data, b.start_peer_transcript()),
            Err(OpenError::ContextMismatch)
        );
        // Both still open the right way afterwards: nothing was consumed.
        assert_eq!(b.open_transcript(&tag, b.start_peer_transcript()), Ok(()));
        assert_eq!(b.open(&data), Ok(Opened::Data(&b"data"[..])));
        // A transcript keyed for the wrong end is refused before any pad is taken.
        assert!(a.seal_transcript(a.start_peer_transcript()).is_err());
        assert_eq!(a.pool().stats().sent_messages, 2);
    }

    #[test]
    fn transcript_follows_a_context_switch() {
        let (mut a, mut b) = pair();
        let stale = a.start_transcript();
        let switch = a.switch_context(TagMode::Bits64).unwrap();
        b.open(&switch).unwrap();
        assert!(a.seal_transcript(stale).is_err());
        let r = round();
        let (x, y) = exchange(&mut a, &mut b, &r, &r);
        assert_eq!((x, y), (Ok(()), Ok(())));
        assert_eq!(a.pool().stats().sent_pad_bits, 128 + 64);
    }
}
