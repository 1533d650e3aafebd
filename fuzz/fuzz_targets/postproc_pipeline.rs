//! The pipeline's own framing (outer frames, control bodies, stage
//! parameters, chunk wrappers and Cascade batches, the Toeplitz seed
//! message) and both pipelines, with Cascade and with LDPC correction, fed
//! arbitrary datagrams.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use qkd_core::machine::Machine;
use qkd_core::{Role, SecretKey};
use qkd_postproc::auth::{PresharedSecret, SecretId};
use qkd_postproc::pipeline::wire::{
    ControlBody, Frame, MAX_CHUNKS, SeedMessage, StageParameters, decode_chunk, decode_chunk_batch,
    encode_chunk, encode_chunk_batch,
};
use qkd_postproc::pipeline::{Pipeline, PipelineDefinition};

fn definitions() -> &'static [PipelineDefinition; 2] {
    static D: OnceLock<[PipelineDefinition; 2]> = OnceLock::new();
    D.get_or_init(|| {
        [
            PipelineDefinition::default(),
            PipelineDefinition::from_toml(include_str!("../../qkd-postproc/pipelines/ldpc.toml"))
                .expect("the committed ldpc.toml loads"),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    // Decoders never panic; what decodes re-encodes to the same bytes.
    if let Ok(f) = Frame::decode(data) {
        assert_eq!(f.encode(), data);
    }
    if let Ok(b) = ControlBody::decode(data) {
        assert_eq!(b.encode(), data);
    }
    if let Ok(p) = StageParameters::decode(data) {
        assert_eq!(StageParameters::decode(&p.encode()).unwrap(), p);
    }
    if let Ok(s) = SeedMessage::decode(data) {
        assert_eq!(s.encode(), data);
    }
    if let Ok((chunk, inner)) = decode_chunk(data) {
        assert_eq!(encode_chunk(chunk, inner), data);
    }
    // The bound on a batch is the block's chunk count: the largest, and a
    // small one taken from the input's last byte.
    let chunks = data.last().map_or(0, |b| usize::from(*b));
    for bound in [MAX_CHUNKS, chunks] {
        if let Ok(entries) = decode_chunk_batch(data, bound) {
            assert!(!entries.is_empty() && entries.len() <= bound);
            assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
            assert_eq!(encode_chunk_batch(&entries), data);
        }
    }
    // Both sides take any datagram without panicking; a rejected one
    // changes nothing they report.
    let now = Instant::now();
    for (definition, role) in definitions()
        .iter()
        .flat_map(|d| [(d, Role::Alice), (d, Role::Bob)])
    {
        let secret = PresharedSecret::new(SecretId::new(1), SecretKey::from_slice(&[3; 4096]));
        let mut p = Pipeline::new(definition, role, secret, [1; 32]).unwrap();
        while p.poll_transmit(now).is_some() {}
        let before = p.stats().clone();
        if p.handle_input(now, data).is_err() {
            assert_eq!(p.stats(), &before);
        }
        while p.poll_transmit(now).is_some() {}
        while p.poll_event().is_some() {}
        p.handle_timeout(now);
    }
});
