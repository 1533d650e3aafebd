//! The handler's own cost: one `enc_keys` (POST, one 256-bit key) and the
//! matching `dec_keys` (POST, by its ID) on one KME over a `FixedSource`,
//! against the reference of the same take and fetch on the source alone
//! (no parsing, validation or JSON). The ratio is the handler's overhead.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkd_etsi014::{FixedSource, KeySource, Kme, KmeConfig, Request, RequestId};

fn pair(c: &mut Criterion) {
    let mut g = c.benchmark_group("etsi014_pair");
    g.throughput(Throughput::Elements(1));
    let now = Instant::now();

    g.bench_function("handler_enc_dec_256", |b| {
        let mut kme = Kme::new(KmeConfig::new("kme-1", "kme-2")).unwrap();
        let mut source = FixedSource::new([1; 32]).with_budget(usize::MAX);
        let mut n = 0u64;
        let mut dec_body = Vec::with_capacity(128);
        b.iter(|| {
            n += 1;
            kme.handle_request(
                now,
                Request {
                    id: RequestId(n),
                    method: "POST",
                    path: "/api/v1/keys/sae-b/enc_keys",
                    query: "",
                    body: br#"{"number":1,"size":256}"#,
                    caller: "sae-a",
                },
                &mut source,
            );
            let enc = kme.poll_response().unwrap();
            // The slave learns the ID from the master: take it from the body.
            let body = enc.body();
            let start = body
                .windows(10)
                .position(|w| w == br#""key_ID":""#)
                .unwrap()
                + 10;
            let id = &body[start..start + 36];
            dec_body.clear();
            dec_body.extend_from_slice(br#"{"key_IDs":[{"key_ID":""#);
            dec_body.extend_from_slice(id);
            dec_body.extend_from_slice(br#""}]}"#);
            kme.handle_request(
                now,
                Request {
                    id: RequestId(n),
                    method: "POST",
                    path: "/api/v1/keys/sae-a/dec_keys",
                    query: "",
                    body: &dec_body,
                    caller: "sae-b",
                },
                &mut source,
            );
            let dec = kme.poll_response().unwrap();
            assert_eq!(dec.status(), 200);
            black_box((enc.body().len(), dec.body().len()))
        });
    });

    g.bench_function("reference_source_take_fetch_256", |b| {
        let mut source = FixedSource::new([1; 32]).with_budget(usize::MAX);
        b.iter(|| {
            let keys = source.take(now, 1, 256, "sae-a", &["sae-b"]).unwrap();
            let key = source.fetch(now, &keys[0].0, "sae-b").unwrap();
            black_box(key.len())
        });
    });
    g.finish();
}

criterion_group!(benches, pair);
criterion_main!(benches);
