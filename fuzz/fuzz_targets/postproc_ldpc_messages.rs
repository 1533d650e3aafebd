//! The LDPC message decoder and `LdpcAlice` / `LdpcBob` input handling,
//! plus the `alist` reader.
//!
//! Even modes decode raw bytes (a decoded message must encode back to the
//! same bytes) and feed them to both machines of a small block, blind
//! (mode 0 mod 4) or guided (mode 2 mod 4, an unpunctured plan): nothing
//! may panic. Odd modes parse the bytes as an `alist` file: errors only.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use qkd_core::machine::Machine;
use qkd_core::{BitVec, BlockId};
use qkd_postproc::ldpc::{
    CodeCache, LdpcAlice, LdpcBob, LdpcConfig, LdpcMessage, RateChoice, SHIPPED_SEED, Variant,
    choose_guided_plan, choose_plan, read_alist,
};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 1 {
        let _ = read_alist(&String::from_utf8_lossy(rest), 0);
        return;
    }
    if let Ok(message) = LdpcMessage::decode(rest) {
        assert_eq!(message.encode(), rest);
    }
    let mut cache = CodeCache::new();
    let guided = mode % 4 == 2;
    let plan = if guided {
        choose_guided_plan(&mut cache, 1 << 10, SHIPPED_SEED, 0.05, RateChoice::default()).unwrap()
    } else {
        choose_plan(&mut cache, 1 << 10, SHIPPED_SEED, 0.05, RateChoice::default()).unwrap()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let key = BitVec::random(plan.key_len(), &mut rng);
    let block = BlockId::new(0);
    let config = if guided {
        LdpcConfig {
            variant: Variant::Guided {
                step: 16,
                max_rounds: 40,
                resume_iterations: 20,
            },
            ..LdpcConfig::default()
        }
    } else {
        LdpcConfig::default()
    };
    let now = Instant::now();
    let mut alice = LdpcAlice::new(block, plan.clone(), key.clone(), config, &mut rng).unwrap();
    let mut bob = LdpcBob::new(block, plan, &key, 0.05, config).unwrap();
    let _ = alice.handle_input(now, rest);
    let _ = bob.handle_input(now, rest);
    let _ = alice.poll_transmit(now);
    let _ = bob.poll_transmit(now);
});
