//! Secrets never leak (`docs/reliability.md` rows 33–34): a scripted session against the
//! real binary with recognisable sentinel keys — allowed and denied requests, upstream
//! errors, an upstream that echoes the key back in headers, `Location` and error bodies,
//! a key rotation, a bad reload whose broken file holds a key, `check`, `/metrics` and
//! `/config`, then SIGTERM — captures everything a caller, an operator or a log reader
//! could see, and finds no key in it, raw or percent-encoded, in any letter case.
//!
//! Then a hostile upstream (row 38), one case per test, each against its own
//! keygate: another route's key echoed, a key as a header name, a key in another
//! letter case, gzip / deflate / br error bodies, a bogus `Content-Encoding`, an error
//! body without `Content-Type`, a long error body, a compression bomb, and keys in the
//! trailers an HTTP/2 caller receives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::leak_fixture::*;
use crate::support::client::{Conn, Reply, request, send};
use crate::support::files::write_by_rename as write;
use crate::support::keys::assert_no_key_in;
use crate::support::metrics::metric_value;
use crate::support::poll::eventually;
use crate::support::process::{Keygate, Launch};
use crate::support::upstream::{Answer, FakeUpstream, Handler, Recorded, closed_port, reply};

/// An upstream that echoes whatever credential it received, everywhere it can.
fn echo() -> Handler {
    Arc::new(|r: &Recorded| -> Answer {
        let query_key = r
            .query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter_map(|p| p.split_once('='))
            .filter(|(n, _)| *n == "apikey" || *n == "key")
            .map(|(_, v)| v.to_owned())
            .next()
            .unwrap_or_default();
        let header_key =
            r.header("x-rjm-api-key").into_iter().chain(r.header("authorization")).next().unwrap_or_default();
        let decoded = percent_encoding::percent_decode_str(&query_key).decode_utf8_lossy().into_owned();
        let echo = format!("{query_key} {decoded} {header_key}");
        let location = format!("/next?apikey={query_key}&x=1");
        let body = serde_json::json!({"code": 401, "message": format!("bad key {echo}"), "reasons": [echo]});
        let status = if r.path.contains("fail") {
            401
        } else if r.path.contains("redirect") {
            302
        } else {
            200
        };
        // 2xx bodies stream untouched by contract (`docs/presets.md#on-the-way-down`), so only errors echo in the body.
        let body = if status == 200 { "ok".to_owned() } else { body.to_string() };
        let ct = if status == 200 { "text/plain" } else { "application/json" };
        reply(status, &[("content-type", ct), ("x-echo", &echo), ("location", &location)], &body)
    })
}

/// A scripted request: method, target, headers, body.
type Call = (Method, String, Vec<(&'static str, &'static str)>, &'static [u8]);

#[tokio::test]
async fn no_key_appears_in_anything_a_caller_or_operator_can_see() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_keys(d);
    let upstream = FakeUpstream::start(echo()).await;
    let closed = closed_port();
    let cfg_path = d.join("keygate.toml");
    write(&cfg_path, &config(d, upstream.addr, closed));

    let mut seen = String::new();
    let check = Launch::args(["check".as_ref(), "-c".as_ref(), cfg_path.as_os_str()])
        .env("KEYGATE_LEAK_TEST_GENERIC", GENERIC)
        .output();
    assert_eq!(check.code, Some(0), "{}", check.stderr);
    seen += &check.stdout;
    seen += &check.stderr;

    let mut kg = start_keygate(&cfg_path).await;
    let (gw, admin) = (kg.gateway, kg.admin);
    let cid = "/v2/client/12345";
    let calls: Vec<Call> = vec![
        (Method::GET, format!("/import{cid}/authenticate?apikey=dummy"), vec![], b""),
        (Method::POST, format!("/import{cid}/table/redirect/data"), vec![], br#"[{"keys":["id"],"id":1}]"#),
        (
            Method::POST,
            format!("/import{cid}/table/fail/data?apikey=mine"),
            vec![],
            br#"{"keys":["id"],"id":1}"#,
        ),
        (Method::POST, format!("/import{cid}/table/t/data"), vec![], br#"[{"id":1}]"#),
        (Method::GET, "/import/v2/client/999/authenticate".into(), vec![], b""),
        (Method::GET, "/export/0.1/export".into(), vec![("x-rjm-api-key", "mine")], b""),
        (Method::GET, "/export/0.1/export/fail".into(), vec![], b""),
        (Method::GET, "/export/0.1/export/redirect".into(), vec![], b""),
        (Method::GET, "/gen/fail/x?key=1".into(), vec![("authorization", "Bearer mine")], b""),
        (Method::GET, "/gen/ok".into(), vec![], b""),
        (Method::GET, "/down/x".into(), vec![], b""),
        (Method::GET, "/closed/x".into(), vec![], b""),
        (Method::GET, "/nowhere".into(), vec![], b""),
        (Method::GET, "/import/../etc".into(), vec![], b""),
    ];
    let mut statuses = Vec::new();
    for (method, target, headers, body) in &calls {
        let r = send(gw, request(method.clone(), target, headers, body)).await;
        statuses.push(r.status);
        seen += &r.dump();
    }
    assert_eq!(statuses, [200, 302, 401, 400, 403, 200, 401, 302, 401, 200, 502, 403, 404, 400], "{seen}");
    // The upstream really did receive every key, so the echo tests mean something.
    let up = upstream.recorded().iter().map(Recorded::dump).collect::<String>();
    for key in [EXPORT, GENERIC] {
        assert!(up.contains(key), "upstream never saw {key}");
    }
    assert!(up.contains("apikey=SENTINEL-import%2Fkey%2B1%3D"), "{up}");

    // Rotate the import key, then break the config with a key inside the broken file.
    write(&d.join("import.key"), ROTATED);
    kg.sighup();
    let admin_get =
        |path: &'static str| async move { send(admin, request(Method::GET, path, &[], b"")).await };
    // The echo upstream accepts every key, so the rotated one is proven and promoted.
    let rotated = crate::support::keys::fingerprint(ROTATED);
    eventually("the rotated key in use", Duration::from_secs(10), || async {
        let config = admin_get("/config").await.json();
        config["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "imp" && s["fingerprint"] == rotated)
    })
    .await;
    let r = send(
        gw,
        request(Method::POST, &format!("/import{cid}/table/fail/data"), &[], br#"{"keys":["k"],"k":1}"#),
    )
    .await;
    assert_eq!(r.status, 401);
    seen += &r.dump();
    assert!(
        upstream
            .recorded()
            .iter()
            .any(|r| r.method == "POST"
                && r.query.as_deref().unwrap_or("").contains("SENTINEL-rotated%2Fkey4")),
        "a caller's request carried the rotated key"
    );
    let broken = format!("{}\n[secrets.oops]\nvalue = \"{BROKEN}\n", config(d, upstream.addr, closed));
    write(&cfg_path, &broken);
    kg.sighup();
    let failures = || async {
        let text = admin_get("/metrics").await.text();
        metric_value(&text, "keygate_config_reloads_total", &[("result", "failure")]).unwrap_or(0.0)
    };
    eventually("a failed reload", Duration::from_secs(10), || async { failures().await >= 1.0 }).await;
    let before = failures().await;
    write(&d.join("export.key"), "");
    write(&cfg_path, &config(d, upstream.addr, closed));
    kg.sighup();
    eventually("another failed reload", Duration::from_secs(10), || async { failures().await > before })
        .await;
    for path in ["/metrics", "/config", "/readyz", "/healthz"] {
        seen += &admin_get(path).await.dump();
    }

    kg.signal("TERM");
    assert_eq!(kg.exit_code(Duration::from_secs(20)).await, Some(0), "keygate exits 0 after SIGTERM");
    let stderr = kg.stderr();
    let stdout = kg.stdout();
    assert!(stdout.contains("\"message\":\"request\""), "the access log ran");
    assert!(stdout.contains("reload failed"), "the failed reloads were logged");
    assert!(!stderr.contains("panicked") && !stdout.contains("panicked"));
    seen += &stdout;
    seen += &stderr;

    assert_no_key_in(&seen, &ALL);
    // The redactions did happen where the upstream echoed a key.
    assert!(seen.contains("[REDACTED]"), "{seen}");
}

// ---- a hostile upstream, one case per test ----

/// `key` percent-encoded the way keygate sends it in a query.
fn encoded(key: &str) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    percent_encoding::utf8_percent_encode(key, UNRESERVED).collect()
}

/// The error body of the body cases. It holds the export route's own key, which is the
/// one today's scrubber knows, so each case shows its own gap and no other.
fn key_json() -> String {
    format!(r#"{{"code":401,"message":"bad key {EXPORT}"}}"#)
}

const KEY_JSON_SCRUBBED: &str = r#"{"code":401,"message":"bad key [REDACTED]"}"#;

/// A long HTML error page with the route's key all through it, in three forms.
fn long_page() -> String {
    let upper = EXPORT.to_ascii_uppercase();
    format!("<p>{EXPORT} · {upper} · {}</p>\n", encoded(EXPORT)).repeat(4000)
}

/// An upstream that knows every key (it saw them all on earlier calls) and puts them
/// where the last path segment says.
fn hostile() -> Handler {
    Arc::new(|r: &Recorded| -> Answer {
        let case = r.path.rsplit('/').next().unwrap_or("");
        let compressed = |coding: &str, body: Vec<u8>| Answer::Reply {
            status: 401,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("content-encoding".into(), coding.into()),
            ],
            body,
        };
        let json = key_json();
        match case {
            "other" => reply(
                200,
                &[
                    ("x-echo", &format!("apikey={IMPORT}")),
                    ("x-echo-auth", &format!("Bearer {GENERIC}")),
                    ("x-echo-encoded", &encoded(IMPORT)),
                    ("x-echo-hex", HEX),
                ],
                "ok",
            ),
            "other-body" => {
                reply(401, &[("content-type", "text/plain")], &format!("{IMPORT} {GENERIC} {HEX}"))
            }
            "named" => reply(
                401,
                &[(&format!("x-{}", encoded(EXPORT)), "1"), (&encoded(EXPORT), "2"), ("x-control", "kept")],
                "{}",
            ),
            "named-hex" => reply(401, &[(&format!("x-{HEX}"), "1"), (HEX, "2"), ("x-control", "kept")], "{}"),
            "upper" => reply(
                401,
                &[("content-type", "application/json"), ("x-echo", &EXPORT.to_ascii_uppercase())],
                &format!(r#"{{"echo":"{}"}}"#, EXPORT.to_ascii_uppercase()),
            ),
            "upper-hex" => reply(401, &[("x-echo", &HEX.to_ascii_uppercase())], ""),
            "gzip" => compressed("gzip", gzip(json.as_bytes())),
            "deflate" => compressed("deflate", deflate(json.as_bytes())),
            "br" => compressed("br", brotli(json.as_bytes())),
            "bomb" => compressed("gzip", gzip(&[json.as_bytes(), &vec![b' '; 16 << 20]].concat())),
            "bogus" => reply(401, &[("content-type", "text/plain"), ("content-encoding", "x-bogus")], &json),
            "untyped" => reply(401, &[], &json),
            "long" => reply(500, &[("content-type", "text/html")], &long_page()),
            _ => reply(404, &[], "no such case"),
        }
    })
}

/// Waits until `n` access log lines are out, so the scan covers them.
async fn access_logged(kg: &Keygate, n: usize) {
    eventually("the access log lines", Duration::from_secs(10), || async { kg.logs("request").len() >= n })
        .await;
}

/// keygate on the sentinel config, every route's upstream at `upstream`.
async fn start(dir: &std::path::Path, upstream: std::net::SocketAddr) -> Keygate {
    write_keys(dir);
    let cfg = dir.join("keygate.toml");
    write(&cfg, &config(dir, upstream, closed_port()));
    start_keygate(&cfg).await
}

/// One request to the hostile upstream through keygate: the reply, and everything
/// seen (headers, body as sent and as decoded, keygate's output) already scanned.
async fn hostile_case(target: &str, headers: &[(&str, &str)]) -> (Reply, FakeUpstream) {
    let dir = tempfile::tempdir().unwrap();
    let upstream = FakeUpstream::start(hostile()).await;
    let kg = start(dir.path(), upstream.addr).await;
    let r = send(kg.gateway, request(Method::GET, target, headers, b"")).await;
    access_logged(&kg, 1).await;
    let mut seen = r.dump();
    seen += &decoded(r.header("content-encoding").as_deref(), &r.body);
    seen += &kg.output();
    assert_no_key_in(&seen, &ALL);
    (r, upstream)
}

#[tokio::test]
async fn another_routes_key_is_redacted_on_every_route() {
    for target in ["/export/0.1/export/other", "/hex/other", "/gen/other"] {
        let (r, _) = hostile_case(target, &[]).await;
        assert_eq!(r.status, 200, "{target}");
        for (name, redacted) in [
            ("x-echo", "apikey=[REDACTED]"),
            ("x-echo-auth", "Bearer [REDACTED]"),
            ("x-echo-encoded", "[REDACTED]"),
            ("x-echo-hex", "[REDACTED]"),
        ] {
            assert_eq!(r.header(name).as_deref(), Some(redacted), "{target} {name}");
        }
    }
    let (r, _) = hostile_case("/export/0.1/export/other-body", &[]).await;
    assert_eq!(r.text(), "[REDACTED] [REDACTED] [REDACTED]");
}

#[tokio::test]
async fn a_header_named_after_a_key_is_removed() {
    for target in ["/export/0.1/export/named", "/hex/named-hex"] {
        let (r, _) = hostile_case(target, &[]).await;
        assert_eq!(r.status, 401, "{target}");
        assert_eq!(r.header("x-control").as_deref(), Some("kept"), "{target}: the other headers stay");
    }
}

#[tokio::test]
async fn a_key_in_another_letter_case_is_redacted() {
    let (r, _) = hostile_case("/export/0.1/export/upper", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-echo").as_deref(), Some("[REDACTED]"));
    assert_eq!(r.json()["echo"], "[REDACTED]");
    // BI keys are hex: the same key in upper case.
    let (r, _) = hostile_case("/hex/upper-hex", &[]).await;
    assert_eq!(r.header("x-echo").as_deref(), Some("[REDACTED]"));
}

#[tokio::test]
async fn compressed_error_bodies_are_decoded_scrubbed_and_sent_decoded() {
    for coding in ["gzip", "deflate", "br"] {
        let accept = [("accept-encoding", "gzip, deflate, br, zstd")];
        let (r, upstream) = hostile_case(&format!("/export/0.1/export/{coding}"), &accept).await;
        assert_eq!(r.status, 401, "{coding}");
        assert_eq!(r.header("content-encoding"), None, "{coding}: sent decoded");
        assert_eq!(r.text(), KEY_JSON_SCRUBBED, "{coding}");
        // Only codings keygate can decode are offered upstream.
        assert_eq!(upstream.recorded()[0].header("accept-encoding"), ["gzip, deflate, br"], "{coding}");
    }
}

#[tokio::test]
async fn a_bogus_content_encoding_does_not_switch_redaction_off() {
    let (r, _) = hostile_case("/export/0.1/export/bogus", &[]).await;
    assert_eq!(r.status, 401, "the upstream's status is kept");
    assert_eq!(r.header("x-keygate-error").as_deref(), Some("upstream_body_withheld"));
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.json()["error"], "upstream_body_withheld");
}

#[tokio::test]
async fn a_compression_bomb_is_withheld() {
    let (r, _) = hostile_case("/export/0.1/export/bomb", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-keygate-error").as_deref(), Some("upstream_body_withheld"));
    assert_eq!(r.header("content-encoding"), None);
    assert!(r.body.len() < 1024, "{} bytes", r.body.len());
}

#[tokio::test]
async fn an_error_body_without_content_type_is_scrubbed() {
    let (r, _) = hostile_case("/export/0.1/export/untyped", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.text(), KEY_JSON_SCRUBBED);
}

#[tokio::test]
async fn a_long_error_body_is_scrubbed_as_it_streams() {
    let (r, _) = hostile_case("/export/0.1/export/long", &[]).await;
    assert_eq!(r.status, 500);
    let page = long_page();
    assert!(page.len() > 4 * 64 * 1024, "longer than keygate buffers");
    let expected = page
        .replace(EXPORT, "[REDACTED]")
        .replace(&EXPORT.to_ascii_uppercase(), "[REDACTED]")
        .replace(&encoded(EXPORT), "[REDACTED]");
    assert!(r.text() == expected, "{} bytes, expected {}", r.body.len(), expected.len());
}

#[tokio::test]
async fn trailers_reach_http2_callers_scrubbed() {
    use http_body_util::{BodyExt, Empty};

    let trailers = vec![
        ("x-control-trailer".to_owned(), "fine".to_owned()),
        ("x-echo-trailer".to_owned(), format!("key={}", encoded(EXPORT))),
        (format!("x-{}", encoded(EXPORT)), "1".to_owned()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let upstream = FakeUpstream::trailers("ok", trailers).await;
    let kg = start(dir.path(), upstream.addr).await;
    let mut h2 = Conn::<Empty<bytes::Bytes>>::open_h2(kg.gateway).await;
    let mut seen = String::new();
    for (path, status) in [("/export/0.1/export/x", 200), ("/export/0.1/export/fail", 401)] {
        let req =
            http::Request::get(format!("http://{}{path}", kg.gateway)).body(Empty::<bytes::Bytes>::new());
        let response = h2.respond(req.unwrap()).await.unwrap();
        assert_eq!(response.status(), status);
        let body = response.into_body().collect().await.unwrap();
        let got =
            body.trailers().cloned().unwrap_or_else(|| panic!("{path}: no trailers reached the caller"));
        seen += &format!("{got:?}\n");
        assert_eq!(got["x-control-trailer"], "fine", "{path}");
        assert_eq!(got["x-echo-trailer"], "key=[REDACTED]", "{path}");
        assert_eq!(got.len(), 2, "{path}: the trailer named after a key is removed: {got:?}");
        assert_eq!(body.to_bytes(), "ok", "{path}");
    }
    access_logged(&kg, 2).await;
    seen += &kg.output();
    assert_no_key_in(&seen, &ALL);
}
