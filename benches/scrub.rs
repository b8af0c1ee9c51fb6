//! What redaction costs, and the measurement behind "decode compressed error bodies"
//! rather than "ask the upstream for `identity`" (`src/scrub/body.rs`):
//! - `scrub_headers`: the per-request header pass over a typical upstream answer;
//! - `error_body/<coding>/<size>`: a whole non-2xx body through `error_body`, plain or
//!   decoded from gzip / deflate / br, for 1, 16 and 64 KiB of JSON error text;
//! - printed once before the timings: how many bytes a typical 2xx export download and
//!   those error bodies take with and without compression, which is what `identity`
//!   on every request would give up (keygate cannot know in advance which answers will
//!   be errors).
//!
//! `cargo bench --bench scrub`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full};
use keygate::scrub::Scrubber;
use keygate::scrub::body::error_body;
use keygate::secret::Secret;

/// Five loaded secrets, BI-shaped (hex) and generic.
fn scrubber() -> Arc<Scrubber> {
    let keys = [
        "5e471e1a0123456789abcdef5e471e1a",
        "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "generic-service-key/with+symbols=",
        "another generic key 42",
        "a1b2c3d4e5f60718293a4b5c6d7e8f90",
    ];
    let secrets: Vec<Secret> = keys.iter().map(|k| Secret::parse(k).expect("secret")).collect();
    Arc::new(Scrubber::new(&secrets).expect("scrubber"))
}

fn answer_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in [
        ("content-type", "application/json; charset=utf-8"),
        ("date", "Tue, 01 Dec 2026 10:00:00 GMT"),
        ("server", "nginx"),
        ("cache-control", "no-cache, private"),
        ("x-request-id", "4f1c2a7e-58b1-4b1e-9d0e-1c2b3a4d5e6f"),
        ("x-ratelimit-remaining", "4999"),
        ("vary", "Accept-Encoding"),
        ("strict-transport-security", "max-age=31536000; includeSubDomains"),
        ("set-cookie", "laravel_session=eyJpdiI6IjRmMWMyYTdlIiwidmFsdWUiOiIifQ%3D%3D; path=/; httponly"),
        ("content-length", "1234"),
    ] {
        h.append(n, HeaderValue::from_static(v));
    }
    h
}

/// JSON error text of about `size` bytes, like a framework's validation error list.
fn error_text(size: usize) -> Vec<u8> {
    let mut out = String::from("{\"code\":422,\"message\":\"The given data was invalid.\",\"reasons\":[");
    let mut i = 0;
    while out.len() + 80 < size {
        out.push_str(&format!(
            "\"records.{i}.keys: the field customer_id_{i} is required for table orders\","
        ));
        i += 1;
    }
    out.push_str("\"end\"]}");
    out.into_bytes()
}

/// A BI export download: CSV rows of orders, `size` bytes.
fn export_csv(size: usize) -> Vec<u8> {
    let mut out = String::from("id,created_at,customer_email,order_total,status,sku\n");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let statuses = ["complete", "pending", "canceled", "processing"];
    let mut id = 100_000;
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        id += 1 + x % 3;
        out.push_str(&format!(
            "{id},2026-{:02}-{:02} {:02}:{:02}:{:02},customer{}@example.com,{}.{:02},{},SKU-{:05}\n",
            1 + x % 12,
            1 + (x >> 8) % 28,
            (x >> 16) % 24,
            (x >> 24) % 60,
            (x >> 32) % 60,
            (x >> 40) % 50_000,
            (x >> 12) % 900,
            (x >> 20) % 100,
            statuses[(x >> 4) as usize % 4],
            (x >> 28) % 20_000,
        ));
    }
    out.into_bytes()
}

fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
    match coding {
        "identity" => data.to_vec(),
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).expect("gzip");
            e.finish().expect("gzip")
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).expect("deflate");
            e.finish().expect("deflate")
        }
        _ => {
            let mut out = Vec::new();
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(data).expect("br");
            drop(w);
            out
        }
    }
}

const CODINGS: [&str; 4] = ["identity", "gzip", "deflate", "br"];

fn print_sizes() {
    println!("bytes on the wire, by coding (identity / gzip / deflate / br):");
    let export = export_csv(1 << 20);
    let error_bodies = [1024, 16 * 1024, 64 * 1024].map(error_text);
    for (name, data) in std::iter::once(("2xx export CSV 1 MiB", &export))
        .chain(error_bodies.iter().map(|d| ("error JSON", d)))
    {
        let sizes: Vec<String> = CODINGS.iter().map(|c| encode(c, data).len().to_string()).collect();
        println!("  {name} ({} B): {}", data.len(), sizes.join(" / "));
    }
}

fn scrub_headers(c: &mut Criterion) {
    print_sizes();
    let scrub = scrubber();
    let headers = answer_headers();
    c.bench_function("scrub_headers", |b| {
        b.iter_batched_ref(
            || headers.clone(),
            |h| scrub.headers(black_box(h)),
            criterion::BatchSize::SmallInput,
        )
    });
}

fn error_bodies(c: &mut Criterion) {
    let scrub = scrubber();
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let mut group = c.benchmark_group("error_body");
    for size in [1024usize, 16 * 1024, 64 * 1024] {
        let text = error_text(size - 100);
        // One key echoed near the end, so the scrub really replaces something.
        let text = [&text[..text.len() - 8], b" 5E471E1A0123456789ABCDEF5E471E1A\"]}"].concat();
        for coding in CODINGS {
            let encoded = Bytes::from(encode(coding, &text));
            group.bench_with_input(BenchmarkId::new(coding, size), &encoded, |b, encoded| {
                b.iter(|| {
                    let mut h = HeaderMap::new();
                    if coding != "identity" {
                        h.insert("content-encoding", HeaderValue::from_static(coding));
                    }
                    let body = Full::new(encoded.clone()).map_err(|never| match never {}).boxed_unsync();
                    rt.block_on(async {
                        let out = error_body(&scrub, "bench", body, &mut h).await;
                        let bytes = out.collect().await.expect("body").to_bytes();
                        assert!(bytes.len() >= size / 2 && h.get("x-keygate-error").is_none());
                        bytes.len()
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, scrub_headers, error_bodies);
criterion_main!(benches);
