//! The sealed-message decoder and `AuthenticatedChannel::open` of
//! qkd-postproc::auth.
//!
//! Mode 0 feeds raw bytes to the decoder and to a channel: nothing may
//! panic, what decodes is partitioned exactly into header, payload and tag,
//! and nothing the fuzzer writes may be accepted (it does not know the key). Mode 1 XORs the input onto an honest
//! sealed message: any non-zero mask must be rejected, and the honest
//! message must still open afterwards (a rejection consumes no state).
//! Mode 2 does the same to a round-transcript tag checked with
//! `open_transcript`. Mode 3 feeds the bytes to `Authenticated<_>` and to
//! the saved-state decoder (JSON): no panic, and a state that decodes
//! restores or is refused with a typed error.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use qkd_core::machine::Machine;
use qkd_core::{Role, SecretKey};
use qkd_postproc::auth::{
    AuthenticatedChannel, ChannelConfig, ChannelState, Opened, PresharedSecret, SealedMessage,
    SecretId,
};

fn config() -> ChannelConfig {
    ChannelConfig {
        max_payload: 4096,
        ..ChannelConfig::default()
    }
}

fn channels() -> (AuthenticatedChannel, AuthenticatedChannel) {
    let secret = SecretKey::from_vec((0..2048u32).map(|i| (i * 73 + 11) as u8).collect());
    let start = |role| {
        let s = PresharedSecret::new(SecretId::new(1), secret.clone());
        let (mut c, first) = AuthenticatedChannel::new(role, s, config()).unwrap();
        c.commit(first).unwrap();
        c
    };
    (start(Role::Alice), start(Role::Bob))
}

/// A machine that accepts every payload: what `Authenticated` wraps here.
struct Sink;

impl Machine for Sink {
    type Event = ();
    type Error = ();
    fn handle_input(&mut self, _: Instant, _: &[u8]) -> Result<(), ()> {
        Ok(())
    }
    fn poll_transmit(&mut self, _: Instant) -> Option<Vec<u8>> {
        None
    }
    fn poll_event(&mut self) -> Option<()> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _: Instant) {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (mut alice, mut bob) = channels();
    match mode % 4 {
        0 => {
            if let Ok(m) = SealedMessage::decode(rest, 4096) {
                assert!(m.payload.len() <= 4096);
                assert!(m.tag.len() == 8 || m.tag.len() == 16);
                assert_eq!(m.header_bytes.len() + m.payload.len() + m.tag.len(), rest.len());
            }
            assert!(bob.open(rest).is_err(), "the fuzzer forged a message");
            assert!(alice.open(rest).is_err(), "the fuzzer forged a message");
        }
        2 => {
            let round: [&[u8]; 3] = [b"announce", b"decide", b"parities"];
            let absorb = |t: &mut qkd_postproc::auth::Transcript| {
                for (i, m) in round.iter().enumerate() {
                    t.absorb(if i % 2 == 0 { Role::Bob } else { Role::Alice }, m);
                }
            };
            let mut own = alice.start_transcript();
            absorb(&mut own);
            let sealed = alice.seal_transcript(own).unwrap();
            let mut forged = sealed.clone();
            let mut changed = false;
            for (b, m) in forged.iter_mut().zip(rest) {
                *b ^= m;
                changed |= *m != 0;
            }
            if changed {
                let mut copy = bob.start_peer_transcript();
                absorb(&mut copy);
                assert!(bob.open_transcript(&forged, copy).is_err(), "a modified tag was accepted");
            }
            let mut copy = bob.start_peer_transcript();
            absorb(&mut copy);
            assert_eq!(bob.open_transcript(&sealed, copy), Ok(()));
        }
        3 => {
            let mut wrapped = qkd_postproc::auth::Authenticated::new(
                Sink,
                bob,
                qkd_postproc::auth::AuthenticatedConfig::default(),
            )
            .unwrap();
            assert!(wrapped.handle_input(Instant::now(), rest).is_err());
            if let Ok(state) = serde_json::from_slice::<ChannelState>(rest) {
                let _ = AuthenticatedChannel::restore(Role::Alice, &config(), state);
            }
        }
        _ => {
            let payload: &[u8] = b"cascade parities for block 7";
            let sealed = alice.seal(payload).unwrap();
            let mut forged = sealed.clone();
            let mut changed = false;
            for (b, m) in forged.iter_mut().zip(rest) {
                *b ^= m;
                changed |= *m != 0;
            }
            if changed {
                assert!(bob.open(&forged).is_err(), "a modified message was accepted");
            }
            assert_eq!(bob.open(&sealed), Ok(Opened::Data(payload)));
        }
    }
});
