//! Property tests for route matching (`docs/reliability.md` row 36) against a simple reference
//! model: a path that passes the path checks goes to the route whose prefix is the
//! longest one equal to the path or followed in it by `/` (a `/` route matches every
//! path), with the rest of the path as the remainder; a path that fails them is
//! `400 invalid_path` and one that matches nothing is `404 no_route`.
//!
//! Prefixes and paths are drawn from a small alphabet of near-misses: `a`, `ab`, `A`
//! and `%41` (never decoded, never case-folded), `a;b`, dot and empty segments,
//! encoded `/` and `.`, and trailing slashes.
//!
//! Two levels: the route table of a config-built snapshot (`keygate::config::load`,
//! then `RouteTable::find` after `check_path`), and the same model through keygate
//! in-process, where each route's upstream has its own base path `/r<i>` on one
//! recording upstream, so the path the upstream received names the route and the
//! remainder that keygate chose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use crate::support::inprocess::TestGateway;
use crate::support::raw::Raw;
use crate::support::upstream::{FakeUpstream, closed_port, ok};
use proptest::prelude::*;

/// Segments a prefix is made of (config accepts these).
const PREFIX_SEGMENTS: &[&str] = &["a", "b", "ab", "A", "x-y"];
/// Segments a path is made of: the prefix ones, near-misses and path tricks.
const PATH_SEGMENTS: &[&str] =
    &["a", "b", "ab", "A", "x-y", "c", "", ".", "..", "%2e", "%2F", "%41", "a;b", "a%20b", "%2E%2e"];

/// One to six distinct prefixes; sometimes `/` among them.
fn prefixes() -> impl Strategy<Value = Vec<String>> {
    let prefix = prop_oneof![
        1 => Just("/".to_owned()),
        6 => prop::collection::vec(prop::sample::select(PREFIX_SEGMENTS), 1..=3)
            .prop_map(|segs| format!("/{}", segs.join("/"))),
    ];
    prop::collection::btree_set(prefix, 1..=6).prop_map(|set| set.into_iter().collect())
}

/// A path: either free, or one of the prefixes with more segments after it.
fn path(prefixes: Vec<String>) -> impl Strategy<Value = String> {
    let tail = (prop::collection::vec(prop::sample::select(PATH_SEGMENTS), 0..=3), any::<bool>());
    let start = prop_oneof![Just(String::new()), prop::sample::select(prefixes)];
    (start, tail).prop_map(|(start, (segs, trailing))| {
        let mut p = start.trim_end_matches('/').to_owned();
        for s in segs {
            p.push('/');
            p.push_str(s);
        }
        if trailing || p.is_empty() {
            p.push('/');
        }
        p
    })
}

fn case() -> impl Strategy<Value = (Vec<String>, Vec<String>)> {
    prefixes().prop_flat_map(|pre| {
        let paths = prop::collection::vec(path(pre.clone()), 1..=12);
        (Just(pre), paths)
    })
}

/// The model of the path checks: origin form, no `\`, no encoded `/`, `\`, `.` or NUL
/// (either hex case), no dot segment, no empty segment except one trailing `/`.
fn model_path_ok(path: &str) -> bool {
    if !path.starts_with('/') || path.contains('\\') {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if ["%2f", "%5c", "%2e", "%00"].iter().any(|bad| lower.contains(bad)) {
        return false;
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    segments.iter().enumerate().all(|(i, s)| *s != "." && *s != ".." && (!s.is_empty() || i == last))
}

/// The model of route matching: index of the longest prefix matching on a segment
/// boundary, and the remainder.
fn model_route<'p>(prefixes: &[String], path: &'p str) -> Option<(usize, &'p str)> {
    prefixes
        .iter()
        .enumerate()
        .filter(|(_, p)| *p == "/" || path == p.as_str() || path.starts_with(&format!("{p}/")))
        .max_by_key(|(_, p)| p.len())
        .map(|(i, p)| (i, if p == "/" { path } else { &path[p.len()..] }))
}

/// What a caller should get, and the path the upstream should see.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Forwarded(String),
    Refused(u16, &'static str),
}

fn model(prefixes: &[String], path: &str) -> Outcome {
    if !model_path_ok(path) {
        return Outcome::Refused(400, "invalid_path");
    }
    match model_route(prefixes, path) {
        None => Outcome::Refused(404, "no_route"),
        Some((i, rest)) => Outcome::Forwarded(format!("/r{i}{rest}")),
    }
}

/// A config with one generic route per prefix, route `r<i>` to `upstream` + `/r<i>`.
fn config(prefixes: &[String], upstream: &str) -> String {
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"error\"\n\
         access = false\n[secrets.k]\nvalue = \"route-prop-sentinel\"\n",
    );
    for (i, p) in prefixes.iter().enumerate() {
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nprefix = {p:?}\nupstream = \"{upstream}/r{i}\"\n\
             inject = {{ header = \"X-Api-Key\" }}\nsecret = \"k\"\nallow = [\"127.0.0.1/32\"]\n"
        ));
    }
    text
}

#[test]
fn the_model_agrees_with_hand_picked_cases() {
    let pre: Vec<String> = ["/", "/a", "/a/b", "/ab"].iter().map(|s| s.to_string()).collect();
    let f = |p: &str| model(&pre, p);
    assert_eq!(f("/a"), Outcome::Forwarded("/r1".into()));
    assert_eq!(f("/a/"), Outcome::Forwarded("/r1/".into()));
    assert_eq!(f("/a/b/c"), Outcome::Forwarded("/r2/c".into()));
    assert_eq!(f("/ab/c"), Outcome::Forwarded("/r3/c".into()));
    assert_eq!(f("/abc"), Outcome::Forwarded("/r0/abc".into()));
    assert_eq!(f("/A/b"), Outcome::Forwarded("/r0/A/b".into()));
    assert_eq!(f("/a;b/c"), Outcome::Forwarded("/r0/a;b/c".into()));
    assert_eq!(f("/a//b"), Outcome::Refused(400, "invalid_path"));
    assert_eq!(f("/a/%2E%2e"), Outcome::Refused(400, "invalid_path"));
    assert_eq!(model(&pre[1..], "/A"), Outcome::Refused(404, "no_route"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `check_path` then `RouteTable::find` on a snapshot built by `config::load`.
    #[test]
    fn the_route_table_picks_the_longest_segment_prefix((pre, paths) in case()) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keygate.toml");
        // An upstream nothing listens on: nothing is sent.
        std::fs::write(&file, config(&pre, &format!("http://{}", closed_port()))).unwrap();
        let snapshot = keygate::config::load(&file, 1, None).unwrap_or_else(|p| panic!("{p}"));
        let names: BTreeSet<String> = snapshot.routes.routes().iter().map(|r| r.name.clone()).collect();
        prop_assert_eq!(names.len(), pre.len());
        for path in &paths {
            let checked = keygate::routes::check_path(path).is_ok();
            prop_assert_eq!(checked, model_path_ok(path), "check_path({:?})", path);
            if !checked {
                continue;
            }
            let found = snapshot.routes.find(None, path).map(|(r, rest)| (r.name.clone(), rest.to_owned()));
            let want = model_route(&pre, path).map(|(i, rest)| (format!("r{i}"), rest.to_owned()));
            prop_assert_eq!(found, want, "path {:?}, prefixes {:?}", path, pre);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The same model through keygate: status and `x-keygate-error` of refusals, and the
    /// exact upstream path (so the route and the remainder) of forwarded requests.
    #[test]
    fn keygate_routes_each_request_like_the_model((pre, paths) in case()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let up = FakeUpstream::start(ok()).await;
            let gw = TestGateway::from_config(&config(&pre, &up.url())).await;
            // One keep-alive connection: every path is decided on its own.
            let mut raw = Raw::connect(gw.addr).await;
            let mut forwarded = Vec::new();
            for path in &paths {
                raw.send(format!("GET {path} HTTP/1.1\r\nHost: keygate.test\r\n\r\n").as_bytes()).await;
                let reply = raw.response().await.unwrap_or_else(|| panic!("no answer to {path:?}"));
                match model(&pre, path) {
                    Outcome::Refused(status, code) => {
                        reply.assert_refusal(status, code);
                    }
                    Outcome::Forwarded(upstream_path) => {
                        assert_eq!(reply.status, 200, "{path:?} with prefixes {pre:?}: {}", reply.text());
                        assert!(reply.header("x-keygate-error").is_none());
                        forwarded.push(upstream_path);
                    }
                }
            }
            let seen: Vec<String> = up.recorded().into_iter().map(|r| r.path).collect();
            assert_eq!(seen, forwarded, "upstream paths for {paths:?} with prefixes {pre:?}");
        });
    }
}
