//! Host routes: a request is matched first among the routes for its host (`Host`,
//! `:authority`, or an absolute-form target's authority, which replaces `Host`; any
//! letter case; port 80 or 443 ignored), then among host-less routes. Host names are
//! checked when the config is compiled.

use std::path::Path;

use http::Method;

use crate::support::client::{Conn, request, send};
use crate::support::inprocess::{GatewayBuilder, RouteSpec};
use crate::support::upstream::{FakeUpstream, ok};

const HOST: &str = "svc.example";

/// Sends `GET target` with `Host: host` and returns which upstream answered: "named"
/// (the host route), "any" (the host-less one) or the status keygate answered.
async fn which(
    gw: std::net::SocketAddr,
    named: &FakeUpstream,
    any: &FakeUpstream,
    target: &str,
    host: &str,
) -> String {
    let (before_named, before_any) = (named.recorded().len(), any.recorded().len());
    let mut req = request(Method::GET, target, &[], b"");
    req.headers_mut().insert("host", http::HeaderValue::from_str(host).unwrap());
    let reply = send(gw, req).await;
    match (named.recorded().len() - before_named, any.recorded().len() - before_any, reply.status) {
        (1, 0, 200) => "named".into(),
        (0, 1, 200) => "any".into(),
        (_, _, status) => format!("{status}"),
    }
}

#[tokio::test]
async fn host_routes_are_tried_first_in_any_case_with_the_default_port_ignored() {
    let named = FakeUpstream::start(ok()).await;
    let any = FakeUpstream::start(ok()).await;
    let gw = GatewayBuilder::new()
        .route(RouteSpec::generic(&any.url()))
        .route(
            RouteSpec::generic(&named.url()).at("generic-svc", "/generic").set("host", &format!("{HOST:?}")),
        )
        .start()
        .await;
    for (host, expected) in [
        (HOST, "named"),
        ("SVC.Example", "named"),
        ("svc.example:80", "named"),
        ("svc.example:443", "named"),
        ("svc.example.", "named"),
        ("svc.example:8080", "any"),
        ("other.example", "any"),
        ("127.0.0.1", "any"),
        ("xsvc.example", "any"),
    ] {
        assert_eq!(which(gw.addr, &named, &any, "/generic/x", host).await, expected, "Host: {host}");
    }
    // A path only the host-less table has still reaches it from the named host.
    let gw2 = GatewayBuilder::new()
        .route(RouteSpec::generic(&any.url()).at("other", "/other"))
        .route(
            RouteSpec::generic(&named.url()).at("generic-svc", "/generic").set("host", &format!("{HOST:?}")),
        )
        .start()
        .await;
    assert_eq!(which(gw2.addr, &named, &any, "/other/x", HOST).await, "any");
    assert_eq!(which(gw2.addr, &named, &any, "/generic/x", "other.example").await, "404");
}

#[tokio::test]
async fn an_absolute_form_target_names_the_host_instead_of_host() {
    let named = FakeUpstream::start(ok()).await;
    let any = FakeUpstream::start(ok()).await;
    let gw = GatewayBuilder::new()
        .route(RouteSpec::generic(&any.url()))
        .route(
            RouteSpec::generic(&named.url()).at("generic-svc", "/generic").set("host", &format!("{HOST:?}")),
        )
        .start()
        .await;
    // What a client sends to an HTTP_PROXY for an http:// URL.
    let mut conn: Conn = Conn::open(gw.addr).await;
    let mut req = request(Method::GET, "/generic/x", &[], b"");
    *req.uri_mut() = format!("http://{HOST}/generic/x").parse().unwrap();
    req.headers_mut().insert("host", http::HeaderValue::from_static("other.example"));
    let reply = conn.send(req).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!((named.recorded().len(), any.recorded().len()), (1, 0));
    // And the reverse: the Host line names the host, the target another.
    let mut req = request(Method::GET, "/generic/y", &[], b"");
    *req.uri_mut() = "http://other.example/generic/y".parse().unwrap();
    req.headers_mut().insert("host", http::HeaderValue::from_static(HOST));
    let reply = conn.send(req).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!((named.recorded().len(), any.recorded().len()), (1, 1));
    // The upstream URL is still built from config: its path is the route's.
    assert_eq!(named.recorded()[0].path, "/x");
}

fn problems(routes: &str) -> Vec<String> {
    let text = format!("[secrets.k]\nvalue = \"k\"\n{routes}");
    let inputs = keygate::config::Inputs::parse(Path::new("keygate.toml"), text.as_bytes()).expect("parses");
    match keygate::config::compile(&inputs, 1, None) {
        Ok(_) => Vec::new(),
        Err(p) => p.list.iter().map(|p| format!("{}: {}: {}", p.location, p.field, p.message)).collect(),
    }
}

fn route(name: &str, host: Option<&str>, prefix: Option<&str>) -> String {
    let mut out = format!(
        "[[routes]]\nname = \"{name}\"\nsecret = \"k\"\nupstream = \"http://127.0.0.1:9\"\n\
         inject = {{ header = \"x-key\" }}\nallow = [\"127.0.0.1\"]\n"
    );
    if let Some(host) = host {
        out.push_str(&format!("host = {host:?}\n"));
    }
    if let Some(prefix) = prefix {
        out.push_str(&format!("prefix = {prefix:?}\n"));
    }
    out
}

#[test]
fn hosts_are_checked_and_each_host_and_prefix_is_used_once() {
    for bad in ["*.rjmetrics.com", "connect.rjmetrics.com:443", "10.0.0.1", "[::1]", "a_b.example", ""] {
        let found = problems(&route("r", Some(bad), None));
        assert_eq!(found.len(), 1, "{bad:?}: {found:?}");
        assert!(found[0].starts_with("routes[0] \"r\": host: "), "{bad:?}: {found:?}");
    }
    // The same prefix on two hosts, and on a host and host-less, is fine; twice on one
    // host (in any letter case) is not. A host route's prefix defaults to `/`.
    let ok = [
        route("a", Some("a.example"), None),
        route("b", Some("b.example"), None),
        route("c", None, Some("/")),
    ];
    assert_eq!(problems(&ok.concat()), Vec::<String>::new());
    let twice = [route("a", Some("a.example"), Some("/")), route("b", Some("A.Example"), None)];
    assert_eq!(
        problems(&twice.concat()),
        ["routes[1] \"b\": prefix: \"/\" is used by another route for host \"a.example\""]
    );
    assert_eq!(problems(&route("r", None, None)), ["routes[0] \"r\": prefix: is required (or a host)"]);
}
