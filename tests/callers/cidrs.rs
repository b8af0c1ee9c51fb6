//! Who the caller is (`docs/reliability.md` row 14): IPv4-mapped IPv6 peers on a dual-stack
//! socket match IPv4 CIDRs, /0, /32, /30 and /128 edges are exact, and a 10,000-entry
//! allow list (literal or through a group) still admits exactly its members.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::support::client::get_from;
use crate::support::inprocess::{GatewayBuilder, RouteSpec};
use crate::support::upstream::{FakeUpstream, ok};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn route(up: &FakeUpstream, name: &str, allow: &str) -> RouteSpec {
    RouteSpec::generic(&up.url()).at(name, &format!("/{name}")).set("allow", allow)
}

#[tokio::test]
async fn ipv4_mapped_peers_match_ipv4_cidrs() {
    let up = FakeUpstream::start(ok()).await;
    // An IPv6 socket bound to a v4-mapped loopback address: IPv4 callers appear as
    // ::ffff:127.0.0.1, and traffic stays on loopback.
    let gw = GatewayBuilder::new()
        .listen("\"[::ffff:127.0.0.1]:0\"")
        .route(route(&up, "v4", "[\"127.0.0.1/32\"]"))
        .route(route(&up, "v6", "[\"::1/128\"]"))
        .start()
        .await;
    assert!(gw.addr.is_ipv6(), "{}", gw.addr);
    let target = std::net::SocketAddr::new(ip("127.0.0.1"), gw.addr.port());
    assert_eq!(get_from(ip("127.0.0.1"), target, "/v4/x").await.status, 200);
    get_from(ip("127.0.0.1"), target, "/v6/x").await.assert_refusal(403, "caller_not_allowed");
    get_from(ip("127.0.0.2"), target, "/v4/x").await.assert_refusal(403, "caller_not_allowed");
    assert_eq!(up.recorded().len(), 1);
}

#[tokio::test]
async fn cidr_edges_are_exact() {
    let up = FakeUpstream::start(ok()).await;
    let gw = GatewayBuilder::new()
        .listen("[\"127.0.0.1:0\", \"[::1]:0\"]")
        .route(route(&up, "all4", "[\"0.0.0.0/0\"]"))
        .route(route(&up, "all6", "[\"::/0\"]"))
        .route(route(&up, "one", "[\"127.0.0.1/32\"]"))
        .route(route(&up, "four", "[\"127.0.0.4/30\"]"))
        .route(route(&up, "loop6", "[\"::1/128\"]"))
        .start()
        .await;
    let (v4, v6) = (gw.addrs[0], gw.addrs[1]);
    assert!(v6.is_ipv6());
    let cases: &[(&str, std::net::SocketAddr, &str, u16)] = &[
        ("127.0.0.9", v4, "/all4/x", 200),
        ("127.0.0.9", v4, "/all6/x", 403),
        ("::1", v6, "/all6/x", 200),
        ("::1", v6, "/all4/x", 403),
        ("127.0.0.1", v4, "/one/x", 200),
        ("127.0.0.2", v4, "/one/x", 403),
        ("127.0.0.3", v4, "/four/x", 403),
        ("127.0.0.4", v4, "/four/x", 200),
        ("127.0.0.7", v4, "/four/x", 200),
        ("127.0.0.8", v4, "/four/x", 403),
        ("::1", v6, "/loop6/x", 200),
        ("127.0.0.1", v4, "/loop6/x", 403),
    ];
    for (from, to, path, status) in cases {
        let reply = get_from(ip(from), *to, path).await;
        if *status == 403 {
            reply.assert_refusal(403, "caller_not_allowed");
        } else {
            assert_eq!(reply.status, *status, "{from} {path}");
        }
    }
    let allowed = cases.iter().filter(|c| c.3 == 200).count();
    assert_eq!(up.recorded().len(), allowed);
}

#[tokio::test]
async fn ten_thousand_cidrs_admit_exactly_their_members() {
    let up = FakeUpstream::start(ok()).await;
    let mut cidrs = String::new();
    for i in 0..10_000u32 {
        let _ = write!(cidrs, "\"10.{}.{}.0/24\", ", i / 256, i % 256);
        if i == 5_000 {
            cidrs.push_str("\"127.0.0.5/32\", ");
        }
    }
    cidrs.push_str("\"fd00::/64\"");
    let gw = GatewayBuilder::new()
        .extra(&format!("[callers.groups.big]\ncidrs = [{cidrs}]\n"))
        .route(route(&up, "literal", &format!("[{cidrs}]")))
        .route(route(&up, "grouped", "[\"big\"]"))
        .start()
        .await;
    for path in ["/literal/x", "/grouped/x"] {
        assert_eq!(get_from(ip("127.0.0.5"), gw.addr, path).await.status, 200, "{path}");
        for outsider in ["127.0.0.4", "127.0.0.6", "127.0.0.1"] {
            get_from(ip(outsider), gw.addr, path).await.assert_refusal(403, "caller_not_allowed");
        }
    }
    assert_eq!(up.recorded().len(), 2);
    let grouped = [("route", "grouped"), ("caller", "big"), ("code", "200")];
    assert_eq!(gw.metric("keygate_requests_total", &grouped), Some(1.0));
}
