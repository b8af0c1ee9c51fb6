//! Callers (`docs/configuration.md#callers`) over real connections from different source addresses: groups,
//! CIDR edges, IPv4-mapped peers on a dual-stack listener, trusted-proxy chains,
//! shadow mode, the admin allow list, and a non-loopback IPv6 caller in a network
//! namespace when the machine allows creating one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};

use crate::support::client::{Reply, request, send_from};
use crate::support::inprocess::TestGateway;
use crate::support::metrics::sample;
use crate::support::upstream::{FakeUpstream, status};
use http::Method;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One GET from a client bound to `from`.
async fn call(from: IpAddr, to: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    send_from(from, to, request(Method::GET, path, headers, b"")).await
}

/// A generic route `/NAME` to `upstream` injecting `X-Api-Key`, with `allow` (TOML) and
/// any `extra` lines.
fn route(name: &str, upstream: &FakeUpstream, allow: &str, extra: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\nprefix = \"/{name}\"\nupstream = \"http://{}\"\n\
         inject = {{ header = \"X-Api-Key\" }}\nsecret = \"k\"\nallow = {allow}\n{extra}\n",
        upstream.addr
    )
}

fn config(listen: &str, upstream: &FakeUpstream, extra_routes: &str, callers: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
[admin]
listen = "127.0.0.1:0"
allow = ["127.0.0.2/32"]
[log]
level = "error"
access = false
{callers}
[secrets.k]
value = "callers-test-sentinel"
[[routes]]
name = "two-only"
prefix = "/two"
upstream = "http://{up}"
inject = {{ header = "X-Api-Key" }}
secret = "k"
allow = ["127.0.0.2/32"]
{extra_routes}
"#,
        up = upstream.addr
    )
}

#[tokio::test]
async fn slash_32_admits_exactly_one_source_address() {
    let up = FakeUpstream::start(status(200)).await;
    let gw = TestGateway::from_config(&config("127.0.0.1:0", &up, "", "")).await;
    let to = gw.addr;
    assert_eq!(call(ip("127.0.0.2"), to, "/two/x", &[]).await.status, 200);
    for other in ["127.0.0.1", "127.0.0.3"] {
        let a = call(ip(other), to, "/two/x", &[]).await;
        assert_eq!(a.code(), (403, Some("caller_not_allowed".into())), "{other}");
    }
    assert_eq!(up.recorded().len(), 1, "refused callers reach nothing upstream");
}

#[tokio::test]
async fn groups_name_callers_in_metrics_and_admit_by_membership() {
    let up = FakeUpstream::start(status(200)).await;
    let callers = r#"
[callers.groups.etl]
cidrs = ["127.0.0.2/32", "127.0.0.3/32"]
[callers.groups.loop]
cidrs = ["127.0.0.0/8"]
"#;
    let routes = route("etl", &up, r#"["etl"]"#, "");
    let gw = TestGateway::from_config(&config("127.0.0.1:0", &up, &routes, callers)).await;
    let to = gw.addr;
    assert_eq!(call(ip("127.0.0.2"), to, "/etl/a", &[]).await.status, 200);
    assert_eq!(call(ip("127.0.0.3"), to, "/etl/a", &[]).await.status, 200);
    assert_eq!(call(ip("127.0.0.4"), to, "/etl/a", &[]).await.status, 403);
    let m = gw.metrics();
    // The first group that admits a caller names it; the label set stays closed.
    assert_eq!(
        sample(&m, r#"keygate_requests_total{caller="etl",code="200",operation="get",route="etl"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&m, r#"keygate_requests_total{caller="loop",code="403",operation="-",route="etl"}"#),
        Some(1.0)
    );
    assert!(!m.contains("127.0.0."), "no caller address in any label:\n{m}");
}

#[tokio::test]
async fn dual_stack_listener_matches_ipv4_rules_for_mapped_peers_and_ipv6_rules_for_v6() {
    let up = FakeUpstream::start(status(200)).await;
    let routes = route("v6", &up, r#"["::1/128"]"#, "");
    // The upstream stays here: it stops when dropped.
    let text = config("[::]:0", &up, &routes, "");
    let Ok(gw) = tokio::spawn(async move { TestGateway::from_config(&text).await }).await else {
        eprintln!("skipped: this machine cannot listen on [::]");
        return;
    };
    let port = gw.addr.port();
    let v4 = std::net::SocketAddr::new(ip("127.0.0.1"), port);
    let v6 = std::net::SocketAddr::new(ip("::1"), port);
    // An IPv4 caller arrives as ::ffff:127.0.0.2 and must match 127.0.0.2/32.
    assert_eq!(call(ip("127.0.0.2"), v4, "/two/x", &[]).await.status, 200);
    assert_eq!(call(ip("127.0.0.3"), v4, "/two/x", &[]).await.status, 403);
    assert_eq!(call(ip("::1"), v6, "/v6/x", &[]).await.status, 200);
    assert_eq!(call(ip("::1"), v6, "/two/x", &[]).await.status, 403);
    assert_eq!(call(ip("127.0.0.2"), v4, "/v6/x", &[]).await.status, 403);
}

fn proxy_config(up: &FakeUpstream) -> String {
    let callers = r#"
[callers]
trusted_proxies = ["127.0.0.9/32", "10.9.0.0/16"]
"#;
    let routes = route("office", up, r#"["10.1.0.0/16"]"#, "");
    config("127.0.0.1:0", up, &routes, callers)
}

#[tokio::test]
async fn trusted_proxy_chains_are_walked_from_the_right() {
    let up = FakeUpstream::start(status(200)).await;
    let gw = TestGateway::from_config(&proxy_config(&up)).await;
    let to = gw.addr;
    let proxy = ip("127.0.0.9");
    let cases: &[(&[&str], u16)] = &[
        // Spoofed entries on the left are never reached.
        (&["6.6.6.6, 10.1.2.3"], 200),
        (&["10.1.2.3, 6.6.6.6"], 403),
        // Trusted hops are skipped; several header lines form one list.
        (&["10.1.2.3", "10.9.0.5"], 200),
        (&["6.6.6.6, 10.1.2.3, 10.9.0.7, 10.9.0.8"], 200),
        // Every entry trusted: the leftmost is the caller.
        (&["10.9.0.1, 10.9.0.2"], 403),
        // Malformed entries make the caller unknown.
        (&["10.1.2.3, not-an-ip"], 403),
        (&["10.1.2.3,,10.9.0.2"], 403),
        // No header: the trusted peer itself is the caller.
        (&[], 403),
    ];
    for (xff, want) in cases {
        let headers: Vec<(&str, &str)> = xff.iter().map(|v| ("x-forwarded-for", *v)).collect();
        let a = call(proxy, to, "/office/r", &headers).await;
        assert_eq!(a.status, *want, "X-Forwarded-For {xff:?}: {}", a.text());
        if *want == 403 {
            assert_eq!(a.code(), (403, Some("caller_not_allowed".into())));
        }
    }
    // Nothing about callers travels upstream.
    for seen in up.recorded() {
        assert!(
            seen.headers.iter().all(|(n, _)| n != "x-forwarded-for" && n != "forwarded" && n != "x-real-ip"),
            "{seen:?}"
        );
    }
}

#[tokio::test]
async fn untrusted_peers_cannot_claim_an_address() {
    let up = FakeUpstream::start(status(200)).await;
    let gw = TestGateway::from_config(&proxy_config(&up)).await;
    for header in ["x-forwarded-for", "x-real-ip", "forwarded"] {
        let value = if header == "forwarded" { "for=10.1.2.3" } else { "10.1.2.3" };
        let a = call(ip("127.0.0.8"), gw.addr, "/office/r", &[(header, value)]).await;
        assert_eq!(a.status, 403, "{header}");
    }
    // Forwarded and X-Real-IP are never believed, even from a trusted proxy.
    for (header, value) in [("x-real-ip", "10.1.2.3"), ("forwarded", "for=10.1.2.3")] {
        let a = call(ip("127.0.0.9"), gw.addr, "/office/r", &[(header, value)]).await;
        assert_eq!(a.status, 403, "{header}");
    }
    assert!(up.recorded().is_empty());
}

#[tokio::test]
async fn shadow_allow_counts_without_deciding() {
    let up = FakeUpstream::start(status(200)).await;
    let routes = route("trial", &up, r#"["127.0.0.0/8"]"#, r#"shadow_allow = ["127.0.0.2/32"]"#);
    let gw = TestGateway::from_config(&config("127.0.0.1:0", &up, &routes, "")).await;
    let to = gw.addr;
    assert_eq!(sample(&gw.metrics(), r#"keygate_shadow_denied_total{route="trial"}"#), Some(0.0));
    assert_eq!(call(ip("127.0.0.2"), to, "/trial/a", &[]).await.status, 200);
    assert_eq!(call(ip("127.0.0.3"), to, "/trial/a", &[]).await.status, 200);
    assert_eq!(call(ip("127.0.0.4"), to, "/trial/a", &[]).await.status, 200);
    assert_eq!(sample(&gw.metrics(), r#"keygate_shadow_denied_total{route="trial"}"#), Some(2.0));
}

#[tokio::test]
async fn admin_allow_guards_metrics_and_config_but_not_probes() {
    let up = FakeUpstream::start(status(200)).await;
    let gw = TestGateway::from_config(&config("127.0.0.1:0", &up, "", "")).await;
    let admin = gw.admin;
    for path in ["/metrics", "/config"] {
        let a = call(ip("127.0.0.1"), admin, path, &[]).await;
        assert_eq!(a.code(), (403, Some("caller_not_allowed".into())), "{path}");
        assert_eq!(call(ip("127.0.0.2"), admin, path, &[]).await.status, 200, "{path}");
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(call(ip("127.0.0.3"), admin, path, &[]).await.status, 200, "{path}");
    }
}

/// A caller on a non-loopback IPv6 address, from a network namespace this test creates
/// (veth pair fd00:6b67::1 ↔ fd00:6b67::2). Needs root and iproute2; skipped otherwise.
#[tokio::test]
async fn ipv6_caller_from_a_network_namespace() {
    use std::process::Command;
    let ns = format!("kg{}", std::process::id());
    let veth = format!("kgv{}", std::process::id() % 100_000);
    let peer = format!("{veth}p");
    let run =
        |args: &[&str]| Command::new("ip").args(args).output().map(|o| o.status.success()).unwrap_or(false);
    if !run(&["netns", "add", &ns]) {
        eprintln!("skipped: cannot create a network namespace (needs root and iproute2)");
        return;
    }
    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.1]).output();
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }
    let _cleanup = Cleanup(ns.clone(), veth.clone());
    let setup: &[&[&str]] = &[
        &["link", "add", &veth, "type", "veth", "peer", "name", &peer],
        &["link", "set", &peer, "netns", &ns],
        &["addr", "add", "fd00:6b67::1/64", "dev", &veth, "nodad"],
        &["link", "set", &veth, "up"],
        &["-n", &ns, "addr", "add", "fd00:6b67::2/64", "dev", &peer, "nodad"],
        &["-n", &ns, "link", "set", &peer, "up"],
        &["-n", &ns, "link", "set", "lo", "up"],
    ];
    for args in setup {
        assert!(run(args), "ip {args:?} failed");
    }

    let up = FakeUpstream::start(status(200)).await;
    let routes = route("lab", &up, r#"["fd00:6b67::2/128"]"#, "");
    let gw = TestGateway::from_config(&config("[fd00:6b67::1]:0", &up, &routes, "")).await;
    let port = gw.addr.port();
    let ns_name = ns.clone();
    let fetch = move |path: &str| {
        let url = format!("http://[fd00:6b67::1]:{port}{path}");
        let script = "import sys, urllib.request, urllib.error\n\
                      try:\n  print(urllib.request.urlopen(sys.argv[1], timeout=10).status)\n\
                      except urllib.error.HTTPError as e:\n  print(e.code)";
        let out = Command::new("ip")
            .args(["netns", "exec", &ns_name, "python3", "-c", script, &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let (lab, two) = tokio::task::spawn_blocking(move || (fetch("/lab/x"), fetch("/two/x"))).await.unwrap();
    assert_eq!(lab, "200");
    assert_eq!(two, "403");
    assert_eq!(up.recorded().len(), 1);
}
