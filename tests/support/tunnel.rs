//! Tunnels through keygate as a client behind `HTTPS_PROXY` opens them: `CONNECT
//! host:443` on a plain connection, the exact answer line read byte by byte, then TLS
//! with a chosen SNI and ALPN over the same socket. Also the intercept setup the tests
//! share: a CA made at test time, a certificate it issues for the routed hosts, and a
//! gateway config with host routes to a recording upstream.

use std::net::SocketAddr;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::client::{Conn, READ_LIMIT};
use super::inprocess::{GatewayBuilder, RouteSpec};
use super::tls::{Ca, Leaf, client_config, dns};

/// The vendor's import host, which the tests' host routes name.
pub const IMPORT_HOST: &str = "connect.rjmetrics.com";

/// A CA and the intercept certificate it issued for `hosts`.
pub struct Intercept {
    pub ca: Ca,
    pub leaf: Leaf,
}

impl Intercept {
    pub fn new(hosts: &[&str]) -> Intercept {
        let ca = Ca::new("keygate test intercept CA");
        let leaf = ca.issue(hosts.iter().map(|h| dns(h)).collect(), false);
        Intercept { ca, leaf }
    }

    /// Writes the certificate and key into the builder's directory and adds
    /// `[server.intercept]` naming them.
    pub fn configure(&self, builder: GatewayBuilder) -> GatewayBuilder {
        let cert = builder.file("intercept.crt", &self.leaf.cert_pem);
        let key = builder.file("intercept.key", &self.leaf.key_pem);
        builder.extra(&format!(
            "[server.intercept]\ncert = {:?}\nkey = {:?}\n",
            cert.display(),
            key.display()
        ))
    }
}

/// An import route for [`IMPORT_HOST`] (prefix `/`), to `upstream`.
pub fn import_host_route(upstream: &str) -> RouteSpec {
    RouteSpec::import(upstream).at("bi-import-host", "/").set("host", &format!("{IMPORT_HOST:?}"))
}

/// What keygate answered to a `CONNECT`: the raw head, and the socket for what follows.
pub struct Connected {
    pub head: String,
    pub stream: TcpStream,
}

impl Connected {
    /// The status line.
    pub fn status_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// The value of `name` in the answer's head, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Sends `CONNECT target` (with `extra` header lines) and reads the answer's head,
/// byte by byte so that nothing of what follows is consumed.
pub async fn connect(gateway: SocketAddr, target: &str, extra: &[&str]) -> Connected {
    let mut stream = TcpStream::connect(gateway).await.expect("connect");
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write CONNECT");
    let mut read = Vec::new();
    let mut byte = [0u8; 1];
    while !read.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(READ_LIMIT, stream.read(&mut byte)).await.expect("an answer in time");
        match n.expect("read") {
            0 => break,
            _ => read.push(byte[0]),
        }
    }
    Connected { head: String::from_utf8_lossy(&read).into_owned(), stream }
}

/// Reads the body of a refused `CONNECT`'s answer (its `Content-Length` bytes).
pub async fn rest(connected: &mut Connected) -> String {
    let len: usize = connected.header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    tokio::time::timeout(READ_LIMIT, connected.stream.read_exact(&mut body))
        .await
        .expect("the body in time")
        .expect("the whole body");
    String::from_utf8_lossy(&body).into_owned()
}

/// TLS over an accepted tunnel, trusting `ca_pem`, with `server_name` (a DNS name is
/// sent as SNI; an IP address sends none) and `alpn`.
pub async fn tls(
    connected: Connected,
    ca_pem: &str,
    server_name: ServerName<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let config = client_config(ca_pem, None, alpn);
    let connector = tokio_rustls::TlsConnector::from(config);
    tokio::time::timeout(READ_LIMIT, connector.connect(server_name, connected.stream))
        .await
        .map_err(|_| std::io::Error::other("the handshake did not finish in time"))?
}

/// The DNS server name `host`.
pub fn name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.to_owned()).expect("a server name")
}

/// A tunnel to `host` with TLS and an HTTP connection over it: HTTP/2 when `h2`.
pub async fn open(gateway: SocketAddr, ca_pem: &str, host: &str, h2: bool) -> Conn {
    let connected = connect(gateway, &format!("{host}:443"), &[]).await;
    assert_eq!(connected.status_line(), "HTTP/1.1 200 Connection established", "{}", connected.head);
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let stream = tls(connected, ca_pem, name(host), alpn).await.expect("TLS in the tunnel");
    let negotiated = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    assert_eq!(negotiated.as_deref(), Some(alpn[0]), "ALPN in the tunnel");
    if h2 { Conn::over_h2(stream).await.unwrap() } else { Conn::over(stream).await.unwrap() }
}

/// The certificate presented inside a fresh tunnel to `host`.
pub async fn presented(gateway: SocketAddr, ca_pem: &str, host: &str) -> Option<CertificateDer<'static>> {
    let connected = connect(gateway, &format!("{host}:443"), &[]).await;
    let stream = tls(connected, ca_pem, name(host), &[b"http/1.1"]).await.ok()?;
    stream.get_ref().1.peer_certificates().and_then(|c| c.first().cloned())
}
