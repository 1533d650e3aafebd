//! Property tests of the decoders: decode of encode is identity, arbitrary
//! bytes never panic, and arbitrary requests always get exactly one
//! response that validates against `openapi.json`.

mod common;

use std::time::{Duration, Instant};

use common::Checked;
use proptest::prelude::*;
use qkd_core::{KeyId, SecretKey};
use qkd_etsi014::model::{Key, KeyContainer, KeyIdEntry, KeyIds, KeyRequest, Status};
use qkd_etsi014::{FixedSource, Kme, KmeConfig};

fn sae() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _./-]{1,40}"
}

proptest! {
    #[test]
    fn key_request_round_trips(
        number in proptest::option::of(any::<u64>()),
        size in proptest::option::of(any::<u64>()),
        slaves in proptest::collection::vec(sae(), 0..5),
        opt in proptest::collection::vec(("[a-z]{1,8}_[a-z]{1,8}", any::<i64>()), 0..3),
    ) {
        let r = KeyRequest {
            number,
            size,
            additional_slave_sae_ids: slaves,
            extension_mandatory: Vec::new(),
            extension_optional: opt
                .into_iter()
                .map(|(k, v)| [(k, serde_json::Value::from(v))].into_iter().collect())
                .collect(),
        };
        let json = serde_json::to_vec(&r).unwrap();
        prop_assert_eq!(serde_json::from_slice::<KeyRequest>(&json).unwrap(), r);
    }

    #[test]
    fn key_ids_and_containers_round_trip(
        ids in proptest::collection::vec(any::<[u8; 16]>(), 1..6),
        keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..6),
    ) {
        let k = KeyIds {
            key_ids: ids.iter().map(|b| KeyIdEntry { key_id: KeyId::from_bytes(*b), key_id_extension: None }).collect(),
            key_ids_extension: None,
        };
        let json = serde_json::to_vec(&k).unwrap();
        prop_assert_eq!(serde_json::from_slice::<KeyIds>(&json).unwrap(), k);
        let c = KeyContainer {
            keys: keys
                .iter()
                .zip(ids.iter().cycle())
                .map(|(k, id)| Key { key_id: KeyId::from_bytes(*id), key_id_extension: None, key: SecretKey::from_slice(k), key_extension: None })
                .collect(),
            key_container_extension: None,
        };
        let json = serde_json::to_vec(&c).unwrap();
        prop_assert_eq!(serde_json::from_slice::<KeyContainer>(&json).unwrap(), c);
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = serde_json::from_slice::<KeyRequest>(&bytes);
        let _ = serde_json::from_slice::<KeyIds>(&bytes);
        let _ = serde_json::from_slice::<KeyContainer>(&bytes);
        let _ = serde_json::from_slice::<Status>(&bytes);
    }

    #[test]
    fn every_request_gets_one_valid_response(
        method in prop_oneof![Just("GET"), Just("POST"), Just("PUT")],
        op in prop_oneof![Just("status"), Just("enc_keys"), Just("dec_keys"), Just("x")],
        path_sae in "[a-z%0-9-]{0,12}",
        query in prop_oneof![
            Just(String::new()),
            "(number|size|key_ID|x)=[0-9a-f-]{0,40}",
            "number=[0-9]{1,25}&size=[0-9]{1,25}",
            any::<String>(),
        ],
        body in prop_oneof![
            Just(String::new()),
            "\\{\"(number|size)\": ?-?[0-9.e]{1,25}\\}",
            "\\{\"key_IDs\": ?\\[\\{\"key_ID\": ?\"[0-9a-f-]{0,40}\"\\}\\]\\}",
            any::<String>(),
        ],
        caller in prop_oneof![Just("sae-b".to_owned()), any::<String>()],
    ) {
        let mut h = Checked::new(Kme::new(KmeConfig::new("kme-1", "kme-2")).unwrap());
        let mut source = FixedSource::new([2; 32]).with_budget(2000);
        let now = Instant::now();
        let path = format!("/api/v1/keys/{path_sae}/{op}");
        h.send(now, &mut source, method, &path, &query, body.as_bytes(), &caller);
        let mut answers = h.drain();
        if answers.is_empty() {
            h.kme.handle_timeout(now + Duration::from_secs(2), &mut source);
            answers = h.drain();
        }
        // `drain` validated each against the document.
        prop_assert_eq!(answers.len(), 1);
        prop_assert_eq!(h.outstanding(), 0);
    }
}
