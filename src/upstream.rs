//! Upstream clients: one pooled hyper client per upstream, TLS verification always on
//! (built-in webpki roots plus the route's `ca_file`), HTTP/1.1 and HTTP/2 via ALPN,
//! connect and response timeouts, and the classification of failures into the kinds
//! keygate reports.
//!
//! Retries: hyper's pool re-sends a request only when a pooled connection was found
//! closed before any byte of the request was written; keygate adds no other retry and
//! never follows redirects.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{HttpConnector, capture_connection};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

use crate::body::ProxyBody;

/// What makes two upstreams the same client (and lets a reload keep its pool).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamKey {
    pub url: String,
    /// SHA-256 of the extra trust anchors' PEM, if any.
    pub ca_digest: Option<String>,
    pub connect_timeout: Duration,
}

/// Why an upstream call failed (the `kind` label of `keygate_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Timeout,
    Tls,
    Protocol,
}

impl Failure {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Tls => "tls",
            Failure::Protocol => "protocol",
        }
    }
}

/// One upstream base URL and its connection pool.
pub struct Upstream {
    key: UpstreamKey,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream").field("url", &self.key.url).finish_non_exhaustive()
    }
}

impl Upstream {
    /// Builds the client for `url` (scheme, host, optional port and base path; no query,
    /// no user info: config checks that). `extra_roots` is PEM text of extra anchors.
    pub fn new(url: &Uri, extra_roots: Option<&[u8]>, key: UpstreamKey) -> Result<Upstream, String> {
        let scheme = url.scheme().cloned().ok_or("the URL has no scheme")?;
        let authority = url.authority().cloned().ok_or("the URL has no host")?;
        let base_path = url.path().trim_end_matches('/').to_owned();
        let tls = client_tls(extra_roots)?;

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(key.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        Ok(Upstream { key, scheme, authority, base_path, client })
    }

    /// The identity of this client for reuse across reloads.
    pub fn key(&self) -> &UpstreamKey {
        &self.key
    }

    /// The configured URL, for display (it never carries a secret).
    pub fn url(&self) -> &str {
        &self.key.url
    }

    /// The path of the base URL, without a trailing slash.
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// True when requests go out without TLS.
    pub fn is_plain_http(&self) -> bool {
        self.scheme == Scheme::HTTP
    }

    /// The absolute URI for `path` and `query` on this upstream.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let pq = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::try_from(pq)?)
            .build()
    }

    /// Sends `request`, waiting at most `timeout` for the response head.
    pub async fn send(
        &self,
        mut request: Request<ProxyBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, Failure> {
        let connection = capture_connection(&mut request);
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => Err(Failure::Timeout),
            // Both framings on one answer is the shape of response smuggling: hyper
            // decodes the chunks, but the stale Content-Length would go back to the
            // caller and desync its connection. The upstream connection is poisoned so
            // the pool never hands it out again (hyper may already have read the body).
            Ok(Ok(response))
                if response.headers().contains_key(http::header::TRANSFER_ENCODING)
                    && response.headers().contains_key(http::header::CONTENT_LENGTH) =>
            {
                if let Some(connected) = connection.connection_metadata().as_ref() {
                    connected.poison();
                }
                Err(Failure::Protocol)
            }
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(classify(&error)),
        }
    }
}

/// The rustls client config for upstreams: webpki roots plus `extra_roots`, ring, TLS
/// 1.2 and 1.3, verification always on.
fn client_tls(extra_roots: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_roots {
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot parse PEM: {e}"))?;
        if certs.is_empty() {
            return Err("holds no PEM certificate".into());
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("bad certificate: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Sorts a client error into a failure kind by walking its causes.
fn classify(error: &hyper_util::client::legacy::Error) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return Failure::Tls;
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut {
                return Failure::Timeout;
            }
            // `io::Error::source()` skips the error it wraps (hyper-rustls wraps
            // tokio-rustls' io::Error, which wraps the rustls::Error): step into it.
            if let Some(inner) = io.get_ref() {
                source = Some(inner);
                continue;
            }
        }
        if e.to_string().contains("connect timeout") {
            return Failure::Timeout;
        }
        source = e.source();
    }
    if error.is_connect() { Failure::Connect } else { Failure::Protocol }
}
