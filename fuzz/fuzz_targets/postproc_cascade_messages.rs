//! Cascade's message decoder and both machines fed arbitrary datagrams.
//!
//! Decoding must never panic; whatever decodes must re-encode to the same
//! bytes; neither machine may panic or disclose a parity it does not count,
//! whatever it is fed; Alice never answers past her budget, and a rejected
//! datagram changes nothing she reports.
#![no_main]

use std::sync::Arc;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use qkd_core::machine::Machine;
use qkd_core::{BitVec, BlockId};
use qkd_postproc::cascade::{
    CascadeAlice, CascadeBob, CascadeConfig, CascadeMessage, CascadeParams, LeakBudget,
    ShufflePlan, Variant,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = CascadeMessage::decode(data) {
        assert_eq!(msg.encode(), data);
    }
    let n = 256;
    let key = BitVec::from_bytes_lsb(&[0x5a; 32], n).unwrap();
    let plan = Arc::new(ShufflePlan::new(n, 3).unwrap());
    let now = Instant::now();
    let params = CascadeParams::for_variant(Variant::Option8, 0.05, n).unwrap();
    let config = CascadeConfig::new(params).with_leak_budget(LeakBudget::Bits(64));
    let block = BlockId::new(1);
    let mut alice = CascadeAlice::new(block, key.clone(), plan.clone(), &config).unwrap();
    let mut bob = CascadeBob::new(block, key, plan, &config).unwrap();
    // The input may hold several datagrams, each prefixed by a length byte.
    // An odd length byte takes the datagram as a message without its CRC
    // and appends a correct one, so that the body checks and the machines'
    // logic are reached, not only the checksum.
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let take = usize::from(len).min(tail.len());
        let (raw, tail) = tail.split_at(take);
        let mut datagram = raw.to_vec();
        if len % 2 == 1 {
            let crc = crc32fast::hash(&datagram);
            datagram.extend_from_slice(&crc.to_be_bytes());
        }
        let datagram = datagram.as_slice();
        let before = (alice.leaked_bits(), alice.rounds(), alice.is_finished());
        if alice.handle_input(now, datagram).is_err() {
            let after = (alice.leaked_bits(), alice.rounds(), alice.is_finished());
            assert_eq!(before, after, "a rejected datagram changed Alice");
        }
        let _ = bob.handle_input(now, datagram);
        let mut disclosed = 0u64;
        while let Some(out) = alice.poll_transmit(now) {
            if let Ok(CascadeMessage::Answers { parities, .. }) = CascadeMessage::decode(&out) {
                disclosed += parities.len() as u64;
            }
        }
        assert!(disclosed <= alice.leaked_bits());
        assert!(alice.leaked_bits() <= 64);
        while bob.poll_transmit(now).is_some() {}
        rest = tail;
    }
});
