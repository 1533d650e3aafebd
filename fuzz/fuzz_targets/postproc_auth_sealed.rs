//! The sealed-message decoder and `AuthenticatedChannel::open` of
//! qkd-postproc::auth.
//!
//! Mode 0 feeds raw bytes to the decoder and to a channel: nothing may
//! panic, and nothing the fuzzer writes may be accepted (it does not know
//! the key). Mode 1 XORs the input onto an honest sealed message: any
//! non-zero mask must be rejected, and the honest message must still open
//! afterwards (a rejection consumes no state). Mode 2 does the same to a
//! round-transcript tag checked with `open_transcript`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qkd_core::{Role, SecretKey};
use qkd_postproc::auth::{AuthenticatedChannel, ChannelConfig, Opened, SealedMessage};

fn channels() -> (AuthenticatedChannel, AuthenticatedChannel) {
    let secret = SecretKey::from_vec((0..2048u32).map(|i| (i * 73 + 11) as u8).collect());
    let config = ChannelConfig {
        max_payload: 4096,
        ..ChannelConfig::default()
    };
    (
        AuthenticatedChannel::new(Role::Alice, &secret, config.clone()).unwrap(),
        AuthenticatedChannel::new(Role::Bob, &secret, config).unwrap(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (mut alice, mut bob) = channels();
    if mode % 3 == 0 {
        if let Ok(m) = SealedMessage::decode(rest, 4096) {
            assert!(m.payload.len() <= 4096);
            assert!(m.tag.len() == 8 || m.tag.len() == 16);
        }
        assert!(bob.open(rest).is_err(), "the fuzzer forged a message");
        assert!(alice.open(rest).is_err(), "the fuzzer forged a message");
    } else if mode % 3 == 2 {
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
    } else {
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
});
