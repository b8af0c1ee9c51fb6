//! Per-request steps of the pipeline, each on its own: route matching against 1, 100
//! and 10k routes (the request names the *last* route), and the request rewrite that
//! strips every caller copy of the credential and injects the real one (header and
//! query variants).
//!
//! `cargo bench --bench hot_path`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use keygate::config::Snapshot;
use keygate::rewrite::{request_headers, rewrite_query};
use keygate::secret::Secret;

/// A config with `n` generic routes `/svc{i}` (one shared upstream) compiled into a
/// snapshot, the way `keygate run` would.
fn snapshot_with_routes(n: usize) -> Snapshot {
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = false\n\
         [secrets.k]\nvalue = \"bench-key\"\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[routes]]\nname = \"svc{i}\"\nprefix = \"/svc{i}\"\nupstream = \"http://127.0.0.1:9/base\"\n\
             inject = {{ header = \"X-RJM-API-Key\", format = \"{{secret}}\" }}\nsecret = \"k\"\n\
             methods = [\"GET\"]\nallow = [\"127.0.0.0/8\"]\n"
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, text).expect("write config");
    keygate::config::load(&path, 1, None).unwrap_or_else(|p| panic!("{p}"))
}

fn route_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for n in [1usize, 100, 10_000] {
        let snapshot = snapshot_with_routes(n);
        let path = format!("/svc{}/v1/items/42/detail", n - 1);
        assert_eq!(
            snapshot.routes.find(None, &path).map(|(r, _)| r.name.clone()),
            Some(format!("svc{}", n - 1))
        );
        group.bench_with_input(BenchmarkId::from_parameter(n), &path, |b, path| {
            b.iter(|| black_box(&snapshot.routes).find(None, black_box(path)).map(|(_, rest)| rest.len()))
        });
    }
    group.finish();
}

/// A realistic caller head carrying every kind of credential copy keygate must drop.
fn caller_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in [
        ("host", "127.0.0.1:8080"),
        ("user-agent", "bi-client/2.1"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip"),
        ("connection", "keep-alive, X-Trace-Hop"),
        ("x-trace-hop", "1"),
        ("x-request-id", "4f1c2a7e-58b1-4b1e-9d0e-1c2b3a4d5e6f"),
        ("x-rjm-api-key", "caller-copy"),
        ("X-RJM-API-KEY", "another-copy"),
        ("x_rjm_api_key", "underscore-copy"),
        ("authorization", "Bearer caller"),
        ("cookie", "session=abc"),
        ("x-forwarded-for", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6"),
    ] {
        h.append(HeaderName::from_bytes(n.as_bytes()).expect("name"), HeaderValue::from_static(v));
    }
    h
}

fn rewrite(c: &mut Criterion) {
    let secret = Secret::parse("0123456789abcdef0123456789abcdef").expect("secret");
    let headers = caller_headers();
    let drop = [header::AUTHORIZATION, header::COOKIE, HeaderName::from_static("x-rjm-api-key")];
    // The injected value is built once per config generation, as a route's credential
    // holds it; each request clones it.
    let mut value = HeaderValue::from_str(secret.expose()).expect("header-safe");
    value.set_sensitive(true);
    c.bench_function("rewrite_headers_strip_and_inject", |b| {
        b.iter(|| {
            let mut out = request_headers(black_box(&headers), &drop);
            out.insert(HeaderName::from_static("x-rjm-api-key"), value.clone());
            out
        })
    });

    let hostile =
        "since=2024-01-01&apikey=evil&APIKEY=x&%61pikey=y&ApiKey=&api%4Bey=z&apikey[]=w&+apikey=v&page=2";
    c.bench_function("rewrite_query_strip_all_variants_and_inject", |b| {
        b.iter(|| rewrite_query(black_box(Some(hostile)), &["apikey"], Some(("apikey", &secret))))
    });
    let plain = "since=2024-01-01&page=2";
    c.bench_function("rewrite_query_plain_and_inject", |b| {
        b.iter(|| rewrite_query(black_box(Some(plain)), &["apikey"], Some(("apikey", &secret))))
    });
}

criterion_group!(benches, route_match, rewrite);
criterion_main!(benches);
