//! Credentials and identity through the gateway, against the recording BI sandbox and
//! a recording fake upstream: the real key arrives exactly once whatever the caller
//! sends, caller copies and hop-by-hop headers never leave, forwarding headers are
//! neither forwarded nor believed, and the upstream is chosen by config only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support::client::get;
use crate::support::inprocess::{GatewayBuilder, RouteSpec, query_params, recorded_header};
use crate::support::keys::{CID, EXPORT_KEY, GENERIC_KEY, IMPORT_KEY, assert_no_key};
use crate::support::raw::{Raw, raw_once};
use crate::support::upstream::{FakeUpstream, ok};
use crate::{auth_path, bi_gateway};

#[tokio::test]
async fn import_key_arrives_exactly_once_whatever_apikey_the_caller_sends() {
    let (sb, gw) = bi_gateway().await;
    let queries = [
        "",
        "?apikey=evil",
        "?apikey=a&apikey=b",
        "?APIKEY=x",
        "?%61pikey=x",
        "?ApiKey=&x=1&apikey[]=y&api%4Bey=z",
        "?x=1&apikey=evil&y=2",
    ];
    for q in queries {
        let reply = get(gw.addr, &format!("{}{q}", auth_path()), &[]).await;
        assert_eq!(reply.status, 200, "{q}: {}", reply.text());
        assert_no_key(&reply.dump());
    }
    let seen = sb.recorded();
    assert_eq!(seen.len(), queries.len());
    for (r, q) in seen.iter().zip(queries) {
        assert_eq!(r.path, format!("/v2/client/{CID}/authenticate"));
        assert_eq!(query_params(r.query.as_deref(), "apikey"), [format!("apikey={IMPORT_KEY}")], "{q}");
        assert!(!r.query.as_deref().unwrap_or("").contains("evil"), "{q}");
    }
    // Other parameters keep their order and bytes.
    assert_eq!(seen[6].query.as_deref(), Some(format!("x=1&y=2&apikey={IMPORT_KEY}").as_str()));
}

#[tokio::test]
async fn export_key_header_arrives_exactly_once_whatever_the_caller_sends() {
    let (sb, gw) = bi_gateway().await;
    let cases: [&[(&str, &str)]; 4] = [
        &[],
        &[("X-RJM-API-Key", "evil")],
        &[("X-RJM-API-Key", "evil"), ("x-rjm-api-key", "evil2")],
        &[("X-RJM-API-KEY", "evil"), ("Connection", "X-RJM-API-Key")],
    ];
    for headers in cases {
        let reply = get(gw.addr, "/export/0.1/figure", headers).await;
        assert_eq!(reply.status, 200, "{headers:?}: {}", reply.text());
    }
    let seen = sb.recorded();
    assert_eq!(seen.len(), cases.len());
    for r in &seen {
        assert_eq!(r.path, "/0.1/figure");
        assert_eq!(recorded_header(r, "x-rjm-api-key"), [EXPORT_KEY]);
        assert!(recorded_header(r, "connection").iter().all(|v| !v.to_ascii_lowercase().contains("rjm")));
    }
}

#[tokio::test]
async fn connection_naming_the_credential_header_cannot_remove_the_real_key() {
    let up = FakeUpstream::start(ok()).await;
    let gw = GatewayBuilder::new().route(RouteSpec::generic(&up.url())).start().await;
    let reply = get(gw.addr, "/generic/x", &[("Connection", "Authorization, keep-alive")]).await;
    assert_eq!(reply.status, 200);
    let seen = up.recorded();
    assert_eq!(seen[0].header("authorization"), [format!("Bearer {GENERIC_KEY}")]);
}

#[tokio::test]
async fn hop_by_hop_and_bi_credentials_never_reach_the_upstream() {
    let (sb, gw) = bi_gateway().await;
    let request = "GET /export/0.1/chart HTTP/1.1\r\nHost: keygate.test\r\n\
         Connection: keep-alive, X-Custom-Hop\r\nX-Custom-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\n\
         Trailer: X-T\r\nUpgrade: websocket\r\nAuthorization: Bearer caller\r\nCookie: a=b\r\n\
         X-Kept: yes\r\nConnection: close\r\n\r\n";
    let reply = raw_once(gw.addr, request.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = sb.recorded();
    assert_eq!(seen.len(), 1);
    let names: Vec<&str> = seen[0].headers.iter().map(|(n, _)| n.as_str()).collect();
    for gone in [
        "connection",
        "x-custom-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "authorization",
        "cookie",
    ] {
        assert!(!names.contains(&gone), "{gone} was forwarded: {names:?}");
    }
    assert_eq!(recorded_header(&seen[0], "x-kept"), ["yes"]);
    assert_eq!(recorded_header(&seen[0], "x-rjm-api-key"), [EXPORT_KEY]);
}

#[tokio::test]
async fn header_names_with_underscores_are_never_forwarded() {
    let (sb, gw) = bi_gateway().await;
    let request = "GET /export/0.1/figure HTTP/1.1\r\nHost: x\r\nX_RJM_API_Key: evil\r\n\
                   X_Other: 1\r\nConnection: close\r\n\r\n";
    let reply = raw_once(gw.addr, request.as_bytes()).await;
    // keygate drops such headers (`docs/presets.md#on-the-way-up`: removed, never forwarded).
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(sb.recorded().len(), 1);
    for r in sb.recorded() {
        assert!(r.headers.iter().all(|(n, _)| !n.contains('_')), "{:?}", r.headers);
        assert_eq!(recorded_header(&r, "x-rjm-api-key"), [EXPORT_KEY]);
    }
}

#[tokio::test]
async fn forwarding_headers_are_not_forwarded_and_not_believed_from_untrusted_peers() {
    let up = FakeUpstream::start(ok()).await;
    let gw = GatewayBuilder::new()
        .route(RouteSpec::generic(&up.url()))
        .route(RouteSpec::generic(&up.url()).at("private", "/private").set("allow", "[\"10.0.0.0/8\"]"))
        .start()
        .await;
    let spoof: &[(&str, &str)] =
        &[("X-Forwarded-For", "10.1.2.3"), ("Forwarded", "for=10.1.2.3"), ("X-Real-IP", "10.1.2.3")];
    let denied = get(gw.addr, "/private/x", spoof).await;
    denied.assert_refusal(403, "caller_not_allowed");
    assert!(up.recorded().is_empty());

    let allowed = get(gw.addr, "/generic/x", spoof).await;
    assert_eq!(allowed.status, 200);
    let seen = up.recorded();
    assert_eq!(seen.len(), 1);
    for name in ["x-forwarded-for", "forwarded", "x-real-ip"] {
        assert!(seen[0].header(name).is_empty(), "{name} forwarded");
    }
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies_and_still_not_forwarded() {
    let up = FakeUpstream::start(ok()).await;
    let gw = GatewayBuilder::new()
        .extra("[callers]\ntrusted_proxies = [\"127.0.0.1/32\"]")
        .route(RouteSpec::generic(&up.url()).set("allow", "[\"10.0.0.0/8\"]"))
        .start()
        .await;
    let inside = get(gw.addr, "/generic/x", &[("X-Forwarded-For", "10.9.9.9")]).await;
    assert_eq!(inside.status, 200);
    let outside = get(gw.addr, "/generic/x", &[("X-Forwarded-For", "10.9.9.9, 192.0.2.1")]).await;
    outside.assert_refusal(403, "caller_not_allowed");
    let garbage = get(gw.addr, "/generic/x", &[("X-Forwarded-For", "not-an-ip")]).await;
    garbage.assert_refusal(403, "caller_not_allowed");
    let seen = up.recorded();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].header("x-forwarded-for").is_empty());
}

#[tokio::test]
async fn host_sent_upstream_is_the_upstreams_whatever_the_caller_says() {
    let (sb, gw) = bi_gateway().await;
    let upstream_host = sb.local_addr().to_string();
    let requests = [
        format!("GET {} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n", auth_path()),
        format!(
            "GET http://evil.example{} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            auth_path()
        ),
        format!(
            "GET http://evil.example:9{} HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
            auth_path()
        ),
    ];
    for request in &requests {
        let reply = raw_once(gw.addr, request.as_bytes()).await;
        assert_eq!(reply.status, 200, "{request}: {}", reply.text());
    }
    let seen = sb.recorded();
    assert_eq!(seen.len(), requests.len());
    for r in &seen {
        assert_eq!(recorded_header(r, "host"), [upstream_host.as_str()]);
        assert_eq!(r.path, format!("/v2/client/{CID}/authenticate"));
    }
    // Two Host lines: 400 (RFC 9112 §3.2), nothing forwarded.
    let dup = format!("GET {} HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", auth_path());
    let reply = raw_once(gw.addr, dup.as_bytes()).await;
    reply.assert_refusal(400, "bad_request");
    assert!(reply.text().contains("more than one Host header"), "{}", reply.text());
    assert_eq!(sb.recorded().len(), requests.len());
}

#[tokio::test]
async fn path_tricks_are_never_forwarded() {
    let (sb, gw) = bi_gateway().await;
    let long = format!("/import/{}", "a/".repeat(4000));
    let cases: Vec<(String, u16, &str)> = vec![
        ("/import/../x".into(), 400, "invalid_path"),
        ("/import/./v2/client/12345/authenticate".into(), 400, "invalid_path"),
        ("/import/%2e%2e/x".into(), 400, "invalid_path"),
        ("/import/%2E%2E/export/0.1/figure".into(), 400, "invalid_path"),
        ("//import/v2/client/12345/authenticate".into(), 400, "invalid_path"),
        ("/import//v2/client/12345/authenticate".into(), 400, "invalid_path"),
        ("/import%2Fv2/client/12345/authenticate".into(), 400, "invalid_path"),
        ("/import/v2%2fclient/12345/authenticate".into(), 400, "invalid_path"),
        ("/import/v2/client/12345/authenticate%00".into(), 400, "invalid_path"),
        ("/import\\v2/client/12345/authenticate".into(), 400, "invalid_path"),
        ("/IMPORT/v2/client/12345/authenticate".into(), 404, "no_route"),
        ("/importer/v2/client/12345/authenticate".into(), 404, "no_route"),
        ("/import/v2/client/12345;x/authenticate".into(), 403, "client_mismatch"),
        ("/import/v2/client/12345/authenticate;x".into(), 404, "unknown_operation"),
        ("/import/v2/client/12345/table/t;x/data".into(), 400, "invalid_path"),
        (long, 404, "unknown_operation"),
    ];
    for (path, status, code) in &cases {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let reply = raw_once(gw.addr, request.as_bytes()).await;
        reply.assert_refusal(*status, code);
    }
    assert!(sb.recorded().is_empty(), "forwarded: {:?}", sb.recorded());
}

#[tokio::test]
async fn pipelined_requests_are_decided_one_by_one() {
    let (sb, gw) = bi_gateway().await;
    let allowed = format!("GET {}?apikey=x HTTP/1.1\r\nHost: x\r\n\r\n", auth_path());
    let denied = "GET /import/v2/client/999/authenticate?apikey=y HTTP/1.1\r\nHost: x\r\n\r\n";
    let allowed_again = format!("GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", auth_path());
    let mut raw = Raw::connect(gw.addr).await;
    raw.send(format!("{allowed}{denied}{allowed_again}").as_bytes()).await;
    let first = raw.response().await.expect("first");
    let second = raw.response().await.expect("second");
    let third = raw.response().await.expect("third");
    assert_eq!(first.status, 200, "{}", first.text());
    second.assert_refusal(403, "client_mismatch");
    assert_eq!(third.status, 200);
    let seen = sb.recorded();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.path == format!("/v2/client/{CID}/authenticate")));
}

#[tokio::test]
async fn http11_without_host_is_refused_but_http10_may_omit_it() {
    let (sb, gw) = bi_gateway().await;
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400, even in absolute form.
    for target in [auth_path(), format!("http://evil.example{}", auth_path())] {
        let request = format!("GET {target} HTTP/1.1\r\nConnection: close\r\n\r\n");
        let reply = raw_once(gw.addr, request.as_bytes()).await;
        reply.assert_refusal(400, "bad_request");
        assert!(reply.text().contains("needs a Host header"), "{}", reply.text());
    }
    assert!(sb.recorded().is_empty(), "forwarded: {:?}", sb.recorded());
    // HTTP/1.0 may omit it; the upstream still gets its own Host.
    let request = format!("GET {} HTTP/1.0\r\n\r\n", auth_path());
    let reply = raw_once(gw.addr, request.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = sb.recorded();
    assert_eq!(seen.len(), 1);
    assert_eq!(recorded_header(&seen[0], "host"), [sb.local_addr().to_string()]);
}

/// Headers that ask a server or a framework to rewrite the target, the URL it thinks it
/// serves, or the method.
const STEERING: [&str; 8] = [
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Forwarded-Prefix",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
];

#[tokio::test]
async fn headers_that_steer_the_target_or_method_never_reach_a_bi_upstream() {
    let (sb, gw) = bi_gateway().await;
    let steering: String = STEERING.iter().map(|name| format!("{name}: /import/v2/client/1/x\r\n")).collect();
    let upper: String = STEERING.iter().map(|name| format!("{}: DELETE\r\n", name.to_uppercase())).collect();
    for target in [auth_path(), "/export/0.1/figure".to_owned()] {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\n{steering}{upper}X-Kept: yes\r\nConnection: close\r\n\r\n"
        );
        let reply = raw_once(gw.addr, request.as_bytes()).await;
        assert_eq!(reply.status, 200, "{target}: {}", reply.text());
    }
    let seen = sb.recorded();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        for name in STEERING {
            assert!(recorded_header(r, name).is_empty(), "{name} was forwarded to {}", r.path);
        }
        assert_eq!(recorded_header(r, "x-kept"), ["yes"], "other headers still pass");
    }
}

/// Names that decode to the credential name plus something a parser may cut at.
const LOOK_ALIKES: [&str; 12] = [
    "apikey%00",
    "apikey.",
    "apikey%2E",
    "apikey%5D",
    "apikey%3D",
    "apikey%3Bx",
    "apikey%E2%80%8B",
    "APIKEY%E2%80%8C",
    "apikey%EF%BB%BF",
    "api%E2%80%8Bkey",
    "%00apikey",
    "%2561pikey",
];

#[tokio::test]
async fn apikey_look_alike_parameter_names_are_refused() {
    let (sb, gw) = bi_gateway().await;
    for name in LOOK_ALIKES {
        for query in [format!("{name}=evil"), format!("x=1&{name}=evil&y=2")] {
            let reply = get(gw.addr, &format!("{}?{query}", auth_path()), &[]).await;
            reply.assert_refusal(400, "bad_request");
            assert!(!reply.text().contains("evil"), "{}", reply.text());
        }
    }
    assert!(sb.recorded().is_empty(), "forwarded: {:?}", sb.recorded());
    // Names that only start with `apikey` are other parameters and pass untouched.
    let kept = "apikeyish=1&apikey_id=2&apikey-old=3&apikey2=4";
    let reply = get(gw.addr, &format!("{}?{kept}&apikey=evil", auth_path()), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = sb.recorded();
    assert_eq!(seen[0].query.as_deref(), Some(format!("{kept}&apikey={IMPORT_KEY}").as_str()));
}

#[tokio::test]
async fn look_alikes_of_a_generic_query_credential_are_refused() {
    let up = FakeUpstream::start(ok()).await;
    let route = RouteSpec::generic(&up.url()).set("inject", "{ query = \"api_key\" }");
    let gw = GatewayBuilder::new().route(route).start().await;
    for query in ["api_key%00=evil", "api_key.=evil", "API_KEY%3D=evil", "api_key%E2%80%8B=evil"] {
        let reply = get(gw.addr, &format!("/generic/x?{query}"), &[]).await;
        reply.assert_refusal(400, "bad_request");
    }
    assert!(up.recorded().is_empty());
    let reply = get(gw.addr, "/generic/x?api_keys=1&api_key=evil", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let encoded = GENERIC_KEY.replace('/', "%2F").replace('+', "%2B").replace('&', "%26").replace('=', "%3D");
    assert_eq!(up.recorded()[0].query.as_deref(), Some(format!("api_keys=1&api_key={encoded}").as_str()));
}
