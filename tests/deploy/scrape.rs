//! Every metric the alerting rules and the dashboard use exists in a real scrape of the
//! built binary: with a serving and an intercept certificate, traffic of every kind (forwarded and
//! refused by the upstream, a connect error, an allow-list refusal, no route) and a
//! reload, so that the labelled series exist.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::SYNTHETIC_METRICS;
use crate::kit::{have_pyyaml, kit_metric_names};
use crate::support::client::{Reply, get, request, send_on};
use crate::support::files::{write_by_rename, write_private};
use crate::support::metrics::names;
use crate::support::process::Launch;
use crate::support::tls::{Ca, client_config, dns};
use crate::support::upstream::{FakeUpstream, closed_port, status};

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// One GET over a new TLS connection to `addr`, trusting `tls`'s roots for `localhost`.
async fn https_get(addr: SocketAddr, path: &str, tls: &Arc<rustls::ClientConfig>) -> Reply {
    let tcp = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let name = ServerName::try_from("localhost").expect("server name");
    let stream = TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS to {addr}{path}: {e}"));
    send_on(stream, request(Method::GET, path, &[], b"")).await
}

/// The last 40 lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[tokio::test]
async fn every_metric_in_rules_and_dashboard_is_exported_by_keygate() {
    if !have_pyyaml("every_metric_in_rules_and_dashboard_is_exported_by_keygate") {
        return;
    }
    let wanted: BTreeMap<String, BTreeSet<String>> =
        kit_metric_names().into_iter().filter(|(n, _)| !SYNTHETIC_METRICS.contains(&n.as_str())).collect();
    assert!(wanted.len() > 10, "suspiciously few metric names: {wanted:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let private = |name: &str, body: &str| {
        let p = dir.path().join(name);
        write_private(&p, body);
        p.to_str().expect("utf-8 path").to_string()
    };
    // A serving certificate, so keygate_tls_cert_expiry_timestamp_seconds exists.
    let ca = Ca::new("keygate deploy-kit test CA");
    let serving = ca.issue(vec![dns("localhost")], false);
    let cert = private("keygate.crt", &serving.cert_pem);
    let key = private("keygate.key", &serving.key_pem);
    // And an intercept certificate, so keygate_intercept_cert_expiry_timestamp_seconds exists.
    let intercepting = ca.issue(vec![dns("vendor.example")], false);
    let intercept_cert = private("intercept.crt", &intercepting.cert_pem);
    let intercept_key = private("intercept.key", &intercepting.key_pem);
    let secret = private("test-key", "deploy-kit-test-key-0123456789");
    let refusing = FakeUpstream::start(status(401)).await;
    let upstream = refusing.url();
    let closed = format!("http://{}", closed_port());

    let route = |name: &str, upstream: &str, allow: &str, extra: &str| {
        format!(
            "[[routes]]\nname = {}\nprefix = {}\nupstream = {}\n\
             inject = {{ header = \"X-Api-Key\", format = \"{{secret}}\" }}\n\
             secret = \"test\"\nmethods = [\"GET\"]\nallow = [{}]\n{extra}\n",
            q(name),
            q(&format!("/{name}")),
            q(upstream),
            q(allow),
        )
    };
    // The BI presets, for the re-batching and update-status guard series.
    let presets = format!(
        "[[routes]]\nname = \"bi-import\"\nprefix = \"/bi-import\"\npreset = \"rjmetrics-import\"\n\
         client_id = 1\nsecret = \"test\"\nupstream = {0}\nallow = [\"127.0.0.0/8\"]\n\n\
         [[routes]]\nname = \"bi-export\"\nprefix = \"/bi-export\"\npreset = \"rjmetrics-export\"\n\
         client_id = 1\nsecret = \"test\"\nupstream = {0}\nallow = [\"127.0.0.0/8\"]\n",
        q(&closed)
    );
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\nworker_threads = 1\n\n\
         [server.tls]\ncert = {}\nkey = {}\n\n[server.intercept]\ncert = {}\nkey = {}\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\nallow = [\"127.0.0.0/8\"]\n\n\
         [log]\nformat = \"json\"\nlevel = \"info\"\n\n\
         [secrets.test]\nfile = {}\n\n\
         [coordination]\nredis = \"redis://127.0.0.1:1/0\"\n\n{}{}{}{}",
        q(&cert),
        q(&key),
        q(&intercept_cert),
        q(&intercept_key),
        q(&secret),
        // Answered 401 by the upstream; the shadow list refuses loopback callers.
        route("ok", &upstream, "127.0.0.0/8", "shadow_allow = [\"10.0.0.0/8\"]"),
        // Nothing listens: a connect error.
        route("down", &closed, "127.0.0.0/8", ""),
        // Loopback callers are refused.
        route("private", &upstream, "10.0.0.0/8", ""),
        presets,
    );
    let config_path = dir.path().join("keygate.toml");
    std::fs::write(&config_path, &config).expect("write config");
    let kg = Launch::run(&config_path).start().await;
    let diagnostics = || format!("\n--- keygate output ---\n{}", tail(&kg.output()));

    // Traffic, so that the labelled series exist.
    let tls = client_config(&ca.pem(), None, &[b"http/1.1"]);
    for (path, want) in [
        ("/ok/thing", 401),      // forwarded; the upstream refuses the key
        ("/down/thing", 502),    // upstream connect error
        ("/private/thing", 403), // refused by the allow list
        ("/nowhere", 404),       // no route
    ] {
        let reply = https_get(kg.gateway, path, &tls).await;
        assert_eq!(reply.status, want, "GET {path}: {}{}", reply.dump(), diagnostics());
    }

    // A reload, so keygate_config_reloads_total has a series: change the config's
    // bytes (atomically) and send SIGHUP.
    write_by_rename(&config_path, &format!("{config}\n# reloaded by the test\n"));
    kg.sighup();

    // Scrape until every name is there, or the deadline passes.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let scrape = get(kg.admin, "/metrics", &[]).await;
        assert_eq!(scrape.status, 200, "GET /metrics: {}{}", scrape.dump(), diagnostics());
        let exposed = names(&scrape.text());
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(n, _)| !exposed.contains(*n))
            .map(|(n, used)| format!("{n} (used by {used:?})"))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics used by the kit but not exported by keygate:\n  {}\nexported: {exposed:?}{}",
            missing.join("\n  "),
            diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval, not a wait
    }
}
