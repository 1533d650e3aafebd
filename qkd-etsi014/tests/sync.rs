#![cfg(feature = "sync")]
//! Two KMEs over qkd-sync through `qkd_core::sim`: `enc_keys` on one,
//! `dec_keys` on the other, with the `dec_keys` racing the notice across a
//! lossy, reordering link; a restart wiping both stores; keys larger than
//! a chunk served (pieces of several chunks) up to the store's maximum,
//! and one byte more refused by name. Every response validated against
//! `openapi.json`.

mod common;

use std::time::{Duration, Instant};

use common::{Answer, Checked};
use qkd_core::machine::Machine;
use qkd_core::sim::{LinkConfig, Network};
use qkd_core::{BlockId, SecretKey};
use qkd_etsi014::sync::NOT_PAIRED;
use qkd_etsi014::{Kme, KmeConfig, messages};
use qkd_keystore::{StoreConfig, StoreRole};
use qkd_sync::{SyncConfig, SyncNode};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const CHUNK: u32 = 512;
/// The store's largest key: eight chunks (below the handler's own default
/// of 65 536 bits, so the status shows whose limit it is).
const MAX_KEY_BYTES: u32 = 8 * CHUNK;

fn node_config(role: StoreRole) -> SyncConfig {
    let mut c = SyncConfig::new(
        StoreConfig::new("etsi-link", role)
            .with_chunk_bytes(CHUNK)
            .with_max_key_bytes(MAX_KEY_BYTES)
            .with_borrow_low_water(0),
    );
    c.retransmit_after = Duration::from_millis(30);
    c.hello_interval = Duration::from_millis(50);
    c.lookup_wait = Duration::from_secs(1);
    c
}

struct Link {
    net: Network<SyncNode, SyncNode>,
    a: Checked,
    b: Checked,
    block: u64,
    rng: ChaCha20Rng,
}

impl Link {
    fn new(link: LinkConfig, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let na = SyncNode::new(node_config(StoreRole::EvenChunks), &mut rng).unwrap();
        let nb = SyncNode::new(node_config(StoreRole::OddChunks), &mut rng).unwrap();
        let mut config = KmeConfig::new("kme-a", "kme-b");
        config.dec_keys_wait = Duration::from_secs(3);
        let a = Checked::new(Kme::new(config.clone()).unwrap());
        let b = Checked::new(
            Kme::new(KmeConfig {
                kme_id: "kme-b".into(),
                peer_kme_id: "kme-a".into(),
                ..config
            })
            .unwrap(),
        );
        Link {
            net: Network::new(na, nb, link, seed, Instant::now()),
            a,
            b,
            block: 0,
            rng,
        }
    }

    /// Runs the link for `d`, handing the nodes' events and the handlers'
    /// deadlines to the handlers as a host would.
    fn run(&mut self, d: Duration) {
        let end = self.net.now() + d;
        loop {
            let step = Duration::from_millis(5);
            let until = (self.net.now() + step).min(end);
            self.net.drive_until(until);
            let now = self.net.now().max(until);
            for e in self.net.take_events_a() {
                self.a.kme.handle_sync_event(now, &e, &mut self.net.a);
            }
            for e in self.net.take_events_b() {
                self.b.kme.handle_sync_event(now, &e, &mut self.net.b);
            }
            if self.a.kme.poll_timeout().is_some_and(|t| t <= now) {
                self.a.kme.handle_timeout(now, &mut self.net.a);
            }
            if self.b.kme.poll_timeout().is_some_and(|t| t <= now) {
                self.b.kme.handle_timeout(now, &mut self.net.b);
            }
            if until >= end {
                break;
            }
        }
    }

    fn blocks(&mut self, n: usize, len: usize) {
        for _ in 0..n {
            self.block += 1;
            let key = SecretKey::random(len, &mut self.rng);
            let now = self.net.now();
            self.net
                .a
                .insert_block(now, BlockId::new(self.block), key.clone())
                .unwrap();
            self.net
                .b
                .insert_block(now, BlockId::new(self.block), key)
                .unwrap();
        }
    }

    fn enc(&mut self, body: &str) -> Answer {
        let now = self.net.now();
        self.a.call(
            now,
            &mut self.net.a,
            "POST",
            "/api/v1/keys/sae-b/enc_keys",
            "",
            body.as_bytes(),
            "sae-a",
        )
    }

    fn dec_send(&mut self, ids: &[String], caller: &str) -> qkd_etsi014::RequestId {
        let list: Vec<String> = ids
            .iter()
            .map(|i| format!(r#"{{"key_ID":"{i}"}}"#))
            .collect();
        let body = format!(r#"{{"key_IDs":[{}]}}"#, list.join(","));
        let now = self.net.now();
        self.b.send(
            now,
            &mut self.net.b,
            "POST",
            "/api/v1/keys/sae-a/dec_keys",
            "",
            body.as_bytes(),
            caller,
        )
    }
}

fn ids(keys: &[(String, String)]) -> Vec<String> {
    keys.iter().map(|k| k.0.clone()).collect()
}

#[test]
fn dec_keys_racing_the_notice_waits_and_gets_the_same_keys_over_a_lossy_link() {
    let link = LinkConfig::perfect(Duration::from_millis(10))
        .with_jitter(Duration::from_millis(5))
        .with_loss(0.2)
        .with_duplicate(0.1)
        .with_reorder(0.2, Duration::from_millis(40));
    let mut l = Link::new(link, 7);
    // Before pairing: 503 with the clear message on both sides.
    let a = l.enc("{}");
    assert_eq!((a.status, a.message()), (503, NOT_PAIRED));
    l.run(Duration::from_millis(500));
    assert!(l.net.a.is_paired() && l.net.b.is_paired());
    l.blocks(8, 4096);
    l.run(Duration::from_millis(500));
    let mut rounds = 0;
    for round in 0..20 {
        let a = l.enc(r#"{"number": 3, "size": 256}"#);
        if a.status != 200 {
            // This node owns only half the chunks; the other half is the peer's.
            assert_eq!(a.status, 503, "{}", a.body);
            continue;
        }
        rounds += 1;
        let keys = a.keys();
        // The slave asks at once: the notice is still on its way.
        let request = l.dec_send(&ids(&keys), "sae-b");
        assert!(
            l.b.drain().is_empty(),
            "round {round}: answered before the notice"
        );
        assert_eq!(l.b.kme.waiting(), 1);
        let mut answers = Vec::new();
        for _ in 0..100 {
            l.run(Duration::from_millis(20));
            answers.extend(l.b.drain());
            if !answers.is_empty() {
                break;
            }
        }
        assert_eq!(answers.len(), 1, "round {round}");
        assert_eq!(
            (answers[0].request, answers[0].status),
            (request, 200),
            "{}",
            answers[0].body
        );
        assert_eq!(answers[0].keys(), keys, "the same keys on both sides");
        // Delivered once per side: the slave cannot fetch them again.
        l.dec_send(&ids(&keys[..1]), "sae-b");
        l.run(Duration::from_secs(4));
        let again = l.b.drain();
        assert_eq!(again.len(), 1);
        assert_eq!(
            (again[0].status, again[0].message()),
            (400, messages::KEYS_NOT_FOUND)
        );
    }
    assert!(rounds >= 5, "{rounds}");
    assert!(l.net.errors_a().is_empty() && l.net.errors_b().is_empty());
    assert_eq!(l.a.outstanding() + l.b.outstanding(), 0);
}

#[test]
fn multicast_slaves_each_fetch_once_and_a_stranger_is_refused() {
    let mut l = Link::new(LinkConfig::perfect(Duration::from_millis(5)), 3);
    l.run(Duration::from_millis(300));
    l.blocks(4, 2048);
    l.run(Duration::from_millis(200));
    let now = l.net.now();
    let status = l.a.call(
        now,
        &mut l.net.a,
        "GET",
        "/api/v1/keys/sae-b/status",
        "",
        b"",
        "sae-a",
    );
    assert_eq!(status.status, 200);
    assert_eq!(status.body["max_SAE_ID_count"], 16);
    assert_eq!(status.body["max_key_size"], u64::from(MAX_KEY_BYTES) * 8);
    let fresh = status.body["stored_key_count"].as_u64().unwrap();
    assert!(fresh > 0 && fresh <= status.body["max_key_count"].as_u64().unwrap());
    let a = l.enc(r#"{"number": 2, "additional_slave_SAE_IDs": ["sae-c", "sae-d"]}"#);
    assert_eq!(a.status, 200, "{}", a.body);
    let keys = a.keys();
    l.run(Duration::from_millis(100));
    // A stranger is refused while the keys wait for their slaves.
    l.dec_send(&ids(&keys), "sae-x");
    assert_eq!(l.b.drain()[0].status, 401);
    for slave in ["sae-b", "sae-c", "sae-d"] {
        l.dec_send(&ids(&keys), slave);
        let got = l.b.drain();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].status, got[0].keys()),
            (200, keys.clone()),
            "{slave}"
        );
    }
    // Each slave fetched once: a second fetch is refused.
    l.dec_send(&ids(&keys), "sae-c");
    assert_eq!(
        l.b.drain().len(),
        0,
        "all slaves fetched: the keys left, the request waits"
    );
    l.run(Duration::from_secs(4));
    assert_eq!(l.b.drain()[0].status, 400);
    // Keys larger than the store's maximum are refused by name.
    let a = l.enc(&format!(r#"{{"size": {}}}"#, MAX_KEY_BYTES * 8 + 8));
    assert_eq!(a.status, 400);
    assert_eq!(
        a.message(),
        format!("size shall be between 64 and {} bits", MAX_KEY_BYTES * 8)
    );
    // A whole chunk is fine.
    let a = l.enc(&format!(r#"{{"size": {}}}"#, CHUNK * 8));
    assert_eq!(a.status, 200, "{}", a.body);
}

/// Issue 16: keys larger than one store chunk (here two chunks and a half,
/// then the store's maximum of eight) are delivered by `enc_keys` on one
/// KME and the same bytes by `dec_keys` on the other, over a lossy link.
#[test]
fn keys_larger_than_a_chunk_travel_in_pieces_and_match() {
    let link = LinkConfig::perfect(Duration::from_millis(5))
        .with_loss(0.2)
        .with_duplicate(0.1)
        .with_reorder(0.2, Duration::from_millis(20));
    let mut l = Link::new(link, 16);
    l.run(Duration::from_millis(500));
    assert!(l.net.a.is_paired() && l.net.b.is_paired());
    l.blocks(16, 4096);
    l.run(Duration::from_millis(500));
    for (number, size) in [(3, CHUNK * 8 * 5 / 2), (2, MAX_KEY_BYTES * 8)] {
        let a = l.enc(&format!(r#"{{"number": {number}, "size": {size}}}"#));
        assert_eq!(a.status, 200, "{}", a.body);
        let keys = a.keys();
        assert_eq!(keys.len(), number);
        l.dec_send(&ids(&keys), "sae-b");
        let mut answers = l.b.drain();
        for _ in 0..100 {
            if !answers.is_empty() {
                break;
            }
            l.run(Duration::from_millis(20));
            answers.extend(l.b.drain());
        }
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].status, 200, "{}", answers[0].body);
        assert_eq!(
            answers[0].keys(),
            keys,
            "the same {size}-bit keys on both sides"
        );
    }
    assert!(l.net.errors_a().is_empty() && l.net.errors_b().is_empty());
    assert_eq!(l.net.b.store().stats().peer_violations, 0);
}

#[test]
fn a_restart_wipes_both_stores_and_clients_see_503_until_keys_flow_again() {
    let mut l = Link::new(LinkConfig::perfect(Duration::from_millis(5)), 5);
    l.run(Duration::from_millis(300));
    l.blocks(4, 2048);
    l.run(Duration::from_millis(200));
    let keys = l.enc(r#"{"number": 2}"#).keys();
    assert_eq!(keys.len(), 2);
    // B restarts before the slave asks: a new incarnation with an empty store.
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    l.net.b.wipe(&mut rng);
    l.dec_send(&ids(&keys), "sae-b");
    let a = l.b.drain();
    assert_eq!((a[0].status, a[0].message()), (503, NOT_PAIRED));
    // Pairing again wipes A too; the old keys are gone on both sides.
    l.run(Duration::from_millis(500));
    assert!(l.net.a.is_paired() && l.net.b.is_paired());
    let a = l.enc("{}");
    assert_eq!(a.status, 503, "no keys before new blocks: {}", a.body);
    l.dec_send(&ids(&keys), "sae-b");
    l.run(Duration::from_secs(4));
    let a = l.b.drain();
    assert_eq!(
        (a[0].status, a[0].message()),
        (400, messages::KEYS_NOT_FOUND)
    );
    // New blocks: keys flow again.
    l.blocks(2, 2048);
    l.run(Duration::from_millis(200));
    let keys = l.enc("{}").keys();
    l.run(Duration::from_millis(100));
    l.dec_send(&ids(&keys), "sae-b");
    assert_eq!(l.b.drain()[0].keys(), keys);
}

#[test]
fn a_waiting_dec_keys_is_answered_503_when_the_link_drops() {
    let mut l = Link::new(LinkConfig::perfect(Duration::from_millis(5)), 11);
    l.run(Duration::from_millis(300));
    let unknown = "8c8b5a5e-1f0b-4d55-9c52-3d2e4f1f0a11".to_owned();
    l.dec_send(std::slice::from_ref(&unknown), "sae-b");
    assert_eq!(l.b.kme.waiting(), 1);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    l.net.b.wipe(&mut rng);
    // The wipe ends the node's lookups; the handler hears it from the node.
    let now = l.net.now();
    while let Some(e) = l.net.b.poll_event() {
        l.b.kme.handle_sync_event(now, &e, &mut l.net.b);
    }
    let a = l.b.drain();
    assert_eq!((a.len(), a[0].status, a[0].message()), (1, 503, NOT_PAIRED));
}
