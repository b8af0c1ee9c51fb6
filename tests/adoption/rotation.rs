//! The intercept certificate is reloaded like `[server.tls]`: a rotated pair is seen by
//! new tunnels while an open one keeps working, a mismatched pair is a failed reload
//! that keeps the old one, and its notAfter is exported as
//! `keygate_intercept_cert_expiry_timestamp_seconds`.

use http::Method;
use rustls::pki_types::CertificateDer;

use crate::support::client::request;
use crate::support::files::write_by_rename as write;
use crate::support::inprocess::{GatewayBuilder, TestGateway};
use crate::support::keys::CID;
use crate::support::poll::{SOON, eventually};
use crate::support::tls::dns;
use crate::support::tunnel::{IMPORT_HOST, Intercept, import_host_route, open, presented};
use crate::support::upstream::{FakeUpstream, ok};

fn not_after(der: &CertificateDer<'_>) -> i64 {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.validity().not_after.timestamp()
}

/// A watched gateway with `[server.intercept]` and an import host route.
async fn watched(intercept: &Intercept, upstream: &FakeUpstream) -> TestGateway {
    intercept
        .configure(GatewayBuilder::new().extra("[reload]\npoll_interval = \"250ms\"\ndebounce = \"50ms\""))
        .route(import_host_route(&upstream.url()))
        .start_watched()
        .await
}

#[tokio::test]
async fn a_rotated_intercept_certificate_is_seen_by_new_tunnels_only() {
    let upstream = FakeUpstream::start(ok()).await;
    let intercept = Intercept::new(&[IMPORT_HOST]);
    let gw = watched(&intercept, &upstream).await;
    let ca = intercept.ca.pem();
    assert_eq!(presented(gw.addr, &ca, IMPORT_HOST).await, Some(intercept.leaf.der.clone()));
    let expiry = |gw: &TestGateway| gw.sample("keygate_intercept_cert_expiry_timestamp_seconds");
    assert_eq!(expiry(&gw), Some(not_after(&intercept.leaf.der) as f64));

    let mut before = open(gw.addr, &ca, IMPORT_HOST, false).await;
    let target = format!("/v2/client/{CID}/authenticate?apikey=placeholder");
    let tunnelled = || {
        let mut req = request(Method::GET, &target, &[], b"");
        req.headers_mut().insert("host", http::HeaderValue::from_static(IMPORT_HOST));
        req
    };
    assert_eq!(before.send(tunnelled()).await.unwrap().status, 200);

    let new = intercept.ca.issue(vec![dns(IMPORT_HOST)], false);
    // Key first, then certificate: the pair is briefly mismatched, which must not apply.
    write(&gw.dir().join("intercept.key"), &new.key_pem);
    write(&gw.dir().join("intercept.crt"), &new.cert_pem);
    eventually("new tunnels get the new certificate", SOON, || async {
        presented(gw.addr, &ca, IMPORT_HOST).await == Some(new.der.clone())
    })
    .await;
    assert_eq!(expiry(&gw), Some(not_after(&new.der) as f64));
    // The tunnel opened before keeps working.
    assert_eq!(before.send(tunnelled()).await.unwrap().status, 200);
}

#[tokio::test]
async fn a_mismatched_intercept_pair_is_a_failed_reload_that_keeps_the_old_one() {
    let upstream = FakeUpstream::start(ok()).await;
    let intercept = Intercept::new(&[IMPORT_HOST]);
    let gw = watched(&intercept, &upstream).await;
    let other = intercept.ca.issue(vec![dns(IMPORT_HOST)], false);
    write(&gw.dir().join("intercept.crt"), &other.cert_pem);
    eventually("the failed reload is counted", SOON, || async {
        gw.metrics().contains("keygate_config_reloads_total{result=\"failure\"} 1")
    })
    .await;
    assert_eq!(presented(gw.addr, &intercept.ca.pem(), IMPORT_HOST).await, Some(intercept.leaf.der.clone()));
}

#[test]
fn a_mismatched_intercept_pair_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let intercept = Intercept::new(&[IMPORT_HOST]);
    let other = intercept.ca.issue(vec![dns(IMPORT_HOST)], false);
    write(&dir.path().join("i.crt"), &intercept.leaf.cert_pem);
    write(&dir.path().join("i.key"), &other.key_pem);
    let config = format!(
        "[server.intercept]\ncert = \"{d}/i.crt\"\nkey = \"{d}/i.key\"\n[secrets.k]\nvalue = \"v\"\n\
         [[routes]]\nname = \"a\"\nhost = \"{IMPORT_HOST}\"\nupstream = \"http://127.0.0.1:9\"\n\
         inject = {{ query = \"k\" }}\nsecret = \"k\"\nallow = [\"127.0.0.1\"]\n",
        d = dir.path().display()
    );
    let path = dir.path().join("k.toml");
    write(&path, &config);
    let problems = keygate::config::load(&path, 1, None).unwrap_err().to_string();
    assert!(problems.contains("server.intercept: the certificate does not match the key"), "{problems}");
}

#[test]
fn a_certificate_that_does_not_name_a_routed_host_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let intercept = Intercept::new(&["other.example"]);
    write(&dir.path().join("i.crt"), &intercept.leaf.cert_pem);
    write(&dir.path().join("i.key"), &intercept.leaf.key_pem);
    let config = format!(
        "[server.intercept]\ncert = \"{d}/i.crt\"\nkey = \"{d}/i.key\"\n[secrets.k]\nvalue = \"v\"\n\
         [[routes]]\nname = \"a\"\nhost = \"{IMPORT_HOST}\"\nupstream = \"http://127.0.0.1:9\"\n\
         inject = {{ query = \"k\" }}\nsecret = \"k\"\nallow = [\"127.0.0.1\"]\n",
        d = dir.path().display()
    );
    let path = dir.path().join("k.toml");
    write(&path, &config);
    let snapshot = keygate::config::load(&path, 1, None).unwrap();
    assert!(
        snapshot.warnings.iter().any(|w| w.contains("does not name \"connect.rjmetrics.com\"")),
        "{:?}",
        snapshot.warnings
    );
}
