//! The sandbox's protocols and plumbing: unknown paths and methods, the request record,
//! TLS with ALPN h2, plain HTTP/2 with prior knowledge, and shutdown.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use serde_json::json;
use tokio::net::TcpStream;

use crate::support::client::{Conn, request};
use crate::support::keys::CID;
use crate::support::tls::client_config;
use crate::{EXPORT_KEY, IMPORT_KEY, call, data_path, export_get, export_post, get, start, start_with};

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let sb = start().await;
    let missing = get(&sb, "/nowhere").await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json(),
        json!({ "code": 404, "message": "Not Found", "reasons": ["no such resource"] })
    );
    assert_eq!(get(&sb, "/v2/client/12345/tables").await.status, 404);
    assert_eq!(export_get(&sb, "/0.1/nowhere").await.status, 404);

    let wrong = get(&sb, &data_path("v2", "orders")).await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.headers["allow"], "POST");
    let put = call(&sb, Method::PUT, &data_path("v2", "orders"), &[], "{}").await;
    assert_eq!(put.status, 405);
    let post_status = call(&sb, Method::POST, "/", &[], "").await;
    assert_eq!(post_status.status, 405);
    let delete =
        call(&sb, Method::DELETE, "/0.1/figure/101/info", &[("x-rjm-api-key", EXPORT_KEY)], "").await;
    assert_eq!(delete.status, 405);
    assert_eq!(delete.headers["allow"], "GET, POST");
    assert_eq!(export_post(&sb, "/0.1/export", "").await.status, 405);
}

// ---- recording ----

#[tokio::test]
async fn recorded_shows_duplicate_headers_and_params_as_received() {
    let sb = start().await;
    // First apikey wins: a wrong first copy fails even when the real key follows.
    let target = format!("/v2/client/{CID}/authenticate?apikey=caller-copy&APIKEY=x&apikey={IMPORT_KEY}");
    assert_eq!(get(&sb, &target).await.status, 401);
    let target = format!("/v2/client/{CID}/authenticate?apikey={IMPORT_KEY}&apikey=caller-copy");
    assert_eq!(get(&sb, &target).await.status, 200);
    let headers = [("x-rjm-api-key", "caller-copy"), ("accept", "*/*"), ("X-RJM-API-Key", EXPORT_KEY)];
    assert_eq!(call(&sb, Method::GET, "/0.1/figure", &headers, "").await.status, 403);
    let headers = [("x-rjm-api-key", EXPORT_KEY), ("x-rjm-api-key", "caller-copy")];
    assert_eq!(call(&sb, Method::POST, "/0.1/figure/101/info", &headers, "abc").await.status, 200);

    let record = sb.recorded();
    assert_eq!(record.len(), 4);
    assert_eq!(record[0].method, "GET");
    assert_eq!(record[0].path, format!("/v2/client/{CID}/authenticate"));
    assert_eq!(
        record[0].query.as_deref(),
        Some(format!("apikey=caller-copy&APIKEY=x&apikey={IMPORT_KEY}").as_str())
    );
    assert_eq!(record[0].peer.ip(), "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
    let keys: Vec<&[u8]> = record[2]
        .headers
        .iter()
        .filter(|(name, _)| name == "x-rjm-api-key")
        .map(|(_, value)| value.as_slice())
        .collect();
    assert_eq!(keys, [b"caller-copy".as_slice(), EXPORT_KEY.as_bytes()]);
    assert!(record[2].headers.iter().any(|(name, value)| name == "accept" && value == b"*/*"));
    assert_eq!(record[3].method, "POST");
    assert_eq!(record[3].body_len, 3);
    assert_eq!(record[3].query, None);
}

// ---- protocols ----

fn tls_client(ca_pem: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(client_config(ca_pem, None, alpn))
}

#[tokio::test]
async fn tls_mode_negotiates_h2_with_a_client_trusting_ca_pem() {
    let sb = start_with(Vec::new(), true).await;
    let port = sb.local_addr().port();
    assert_eq!(sb.base_url(), format!("https://127.0.0.1:{port}"));
    let ca = sb.ca_pem().expect("TLS mode has a CA");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));

    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tcp = TcpStream::connect(sb.local_addr()).await.unwrap();
    let tls = tls_client(&ca, &[b"h2", b"http/1.1"]).connect(name.clone(), tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let mut sender = Conn::over_h2(tls).await.unwrap();
    let req = http::Request::get(format!("https://127.0.0.1:{port}/0.1/chart"))
        .header("x-rjm-api-key", EXPORT_KEY)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.respond(req).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);

    // HTTP/1.1 over TLS too, and by name.
    let tcp = TcpStream::connect(sb.local_addr()).await.unwrap();
    let localhost = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_client(&ca, &[b"http/1.1"]).connect(localhost, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"http/1.1".as_slice()));
    let mut sender = Conn::over(tls).await.unwrap();
    let reply = sender.send(request(Method::GET, "/", &[], b"")).await.unwrap();
    assert_eq!(reply.status, 200);

    // A client that does not trust the CA fails the handshake.
    let other = start_with(Vec::new(), true).await;
    let tcp = TcpStream::connect(sb.local_addr()).await.unwrap();
    let foreign = tls_client(&other.ca_pem().unwrap(), &[b"h2"]).connect(name, tcp).await;
    assert!(foreign.is_err());
}

#[tokio::test]
async fn plain_http2_with_prior_knowledge_works() {
    let sb = start().await;
    assert_eq!(sb.ca_pem(), None);
    assert_eq!(sb.base_url(), format!("http://127.0.0.1:{}", sb.local_addr().port()));
    let mut sender = Conn::open_h2(sb.local_addr()).await;
    let req = http::Request::get(format!("{}/", sb.base_url())).body(Full::new(Bytes::new())).unwrap();
    let response = sender.respond(req).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let sb = start().await;
    let addr: SocketAddr = sb.local_addr();
    assert_eq!(get(&sb, "/").await.status, 200);
    sb.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());
}
