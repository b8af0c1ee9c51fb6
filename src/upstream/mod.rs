//! Upstream clients: one connection pool per upstream, TLS verification always on
//! (built-in webpki roots plus the route's `ca_file`), HTTP/1.1 and HTTP/2 via ALPN,
//! connect and response timeouts, and the classification of failures into the kinds
//! keygate reports.
//!
//! HTTP/1.1 connections are driven by hyper's `client::conn` API and kept in a small
//! LIFO pool ([`pool`]): a connection goes back only once its response body has been
//! read to the end (see [`Lease`]), so an answer that was cut, refused or looked like
//! smuggling never shares a connection with the next request. An HTTP/2 connection
//! (when the upstream's ALPN picks `h2`) is shared by every request. Clients outlive
//! snapshots through the gateway's [`Cache`].
//!
//! Retries: a request is re-sent only when a pooled connection turned out to be closed
//! before any byte of the request was written; keygate adds no other retry and never
//! follows redirects.

mod cache;
mod pool;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::ProxyBody;
use crate::error::UpstreamFailure;
pub(crate) use cache::Cache;
use pool::Pool;

/// The lease on the HTTP/1.1 connection a response came on (see [`pool::Lease`]).
pub(crate) type Lease = pool::Lease<http1::SendRequest<ProxyBody>>;

/// Reads and drops a response body nobody will see (a proof call's answer, an answer
/// replaced by a retry, a batch's answer), so that its HTTP/1.1 connection can go back to
/// the pool. A body longer than `limit` bytes, pausing longer than `idle` between chunks,
/// or not over within `within`, is dropped unread instead, which closes the connection:
/// nothing of it is left on a pooled one.
pub(crate) async fn discard(
    response: Response<Incoming>,
    mut lease: Lease,
    limit: u64,
    idle: Option<Duration>,
    within: Duration,
) {
    use http_body_util::BodyExt;
    let meter = Arc::new(crate::body::Meter::default());
    lease.watch(&meter);
    let mut body =
        crate::body::Metered::new(response.into_body(), meter, Some(limit), idle).with_guard(Box::new(lease));
    let drain = async { while let Some(Ok(_)) = body.frame().await {} };
    let _ = tokio::time::timeout(within, drain).await;
}

/// What makes two upstreams the same client (and lets a reload keep its pool).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct UpstreamKey {
    pub url: String,
    /// SHA-256 of the extra trust anchors' PEM, if any.
    pub ca_digest: Option<String>,
    pub connect_timeout: Duration,
}

/// One upstream base URL and its connection pool.
pub(crate) struct Upstream {
    key: UpstreamKey,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    /// The `Host` line of HTTP/1.1 requests: the host, and the port unless it is the
    /// scheme's default.
    host: HeaderValue,
    connector: Connector,
    pool: Arc<Pool<http1::SendRequest<ProxyBody>>>,
    /// The shared HTTP/2 connection, once ALPN picked `h2`.
    h2: parking_lot::Mutex<Option<http2::SendRequest<ProxyBody>>>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream").field("url", &self.key.url).finish_non_exhaustive()
    }
}

impl Upstream {
    /// Builds the client for `url` (scheme, host, optional port and base path; no query,
    /// no user info: config checks that). `extra_roots` is PEM text of extra anchors.
    pub(crate) fn new(url: &Uri, extra_roots: Option<&[u8]>, key: UpstreamKey) -> Result<Upstream, String> {
        let scheme = url.scheme().cloned().ok_or("the URL has no scheme")?;
        let authority = url.authority().cloned().ok_or("the URL has no host")?;
        let base_path = url.path().trim_end_matches('/').to_owned();
        let tls_on = scheme == Scheme::HTTPS;
        if !tls_on && scheme != Scheme::HTTP {
            return Err(format!("unsupported scheme {scheme}"));
        }
        let default_port = if tls_on { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        // IPv6 literals keep their brackets in the Host line, lose them for connecting.
        let host_text = authority.host();
        let host = match authority.port_u16() {
            Some(p) if p != default_port => format!("{host_text}:{p}"),
            _ => host_text.to_owned(),
        };
        let host = HeaderValue::from_str(&host).map_err(|_| "the host cannot be sent in a Host header")?;
        let connect_host = host_text.trim_start_matches('[').trim_end_matches(']').to_owned();
        let tls = if tls_on {
            let mut config = client_tls(extra_roots)?;
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let name = ServerName::try_from(connect_host.clone())
                .map_err(|_| format!("{connect_host} is not a valid TLS server name"))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let connector = Connector { host: connect_host, port, tls, timeout: key.connect_timeout };
        let (pool, h2) = (Arc::default(), parking_lot::Mutex::new(None));
        Ok(Upstream { key, scheme, authority, base_path, host, connector, pool, h2 })
    }

    /// The identity of this client for reuse across reloads.
    pub(crate) fn key(&self) -> &UpstreamKey {
        &self.key
    }

    /// The configured URL, for display (it never carries a secret).
    pub(crate) fn url(&self) -> &str {
        &self.key.url
    }

    /// The path of the base URL, without a trailing slash.
    pub(crate) fn base_path(&self) -> &str {
        &self.base_path
    }

    /// True when requests go out without TLS.
    pub(crate) fn is_plain_http(&self) -> bool {
        self.scheme == Scheme::HTTP
    }

    /// The request target for `path` and `query` on this upstream (origin form; the
    /// scheme and authority are added for HTTP/2).
    pub(crate) fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let pq = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        Ok(Uri::from(PathAndQuery::try_from(pq)?))
    }

    /// Sends `request`, waiting at most `timeout` for the response head. The [`Lease`]
    /// must travel with the response body: it returns the connection to the pool once
    /// the body has been read to its end.
    pub(crate) async fn send(
        &self,
        request: Request<ProxyBody>,
        timeout: Duration,
    ) -> Result<(Response<Incoming>, Lease), UpstreamFailure> {
        match tokio::time::timeout(timeout, self.dispatch(request)).await {
            Err(_) => Err(UpstreamFailure::Timeout),
            Ok(result) => result,
        }
    }

    async fn dispatch(
        &self,
        mut request: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamFailure> {
        loop {
            let (sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                // Boxed: connecting (TLS, HTTP/2 handshakes) is rare and its state is
                // large; inline, it would make every request's future as large.
                None => (Box::pin(self.connect()).await?, false),
            };
            let mut sender = match sender {
                Sender::H2(mut h2) => {
                    let mut parts = request.uri().clone().into_parts();
                    parts.scheme = Some(self.scheme.clone());
                    parts.authority = Some(self.authority.clone());
                    *request.uri_mut() = Uri::from_parts(parts).map_err(|_| UpstreamFailure::Protocol)?;
                    let response = h2.send_request(request).await.map_err(|e| classify(&e))?;
                    return Ok((response, Lease::none()));
                }
                Sender::H1(sender) => sender,
            };
            if sender.ready().await.is_err() {
                if !reused {
                    // Closed as soon as it was opened.
                    return Err(UpstreamFailure::Protocol);
                }
                // Closed while idle: no byte was written, try the next one.
                continue;
            }
            request.headers_mut().insert(HOST, self.host.clone());
            match sender.try_send_request(request).await {
                Ok(response) => {
                    // Both framings on one answer is the shape of response smuggling:
                    // hyper decodes the chunks, but the stale Content-Length would go
                    // back to the caller and desync its connection. The connection is
                    // dropped with the lease, never pooled again.
                    let headers = response.headers();
                    if headers.contains_key(http::header::TRANSFER_ENCODING)
                        && headers.contains_key(http::header::CONTENT_LENGTH)
                    {
                        return Err(UpstreamFailure::Protocol);
                    }
                    return Ok((response, Lease::new(sender, self.pool.clone())));
                }
                Err(mut error) => match error.take_message() {
                    // The pooled connection closed before the request was written.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(classify(error.error())),
                },
            }
        }
    }

    /// The shared HTTP/2 connection if it is open, else the newest open idle one.
    fn checkout(&self) -> Option<Sender> {
        {
            let mut h2 = self.h2.lock();
            match h2.as_ref() {
                Some(shared) if !shared.is_closed() => return Some(Sender::H2(shared.clone())),
                Some(_) => *h2 = None,
                None => {}
            }
        }
        self.pool.checkout().map(Sender::H1)
    }

    /// Opens a new connection: TCP (bounded by the connect timeout), TLS if the URL is
    /// `https`, then HTTP/2 if ALPN picked it, HTTP/1.1 otherwise.
    async fn connect(&self) -> Result<Sender, UpstreamFailure> {
        let c = &self.connector;
        let tcp = match tokio::time::timeout(c.timeout, TcpStream::connect((c.host.as_str(), c.port))).await {
            Err(_) => return Err(UpstreamFailure::Timeout),
            Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => return Err(UpstreamFailure::Timeout),
            Ok(Err(_)) => return Err(UpstreamFailure::Connect),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let Some((tls, name)) = &c.tls else { return self.handshake(tcp, false).await };
        let stream = tls.connect(name.clone(), tcp).await.map_err(|e| {
            let rustls_error =
                e.get_ref().is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
            if rustls_error { UpstreamFailure::Tls } else { UpstreamFailure::Connect }
        })?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        self.handshake(stream, h2).await
    }

    async fn handshake<I>(&self, io: I, h2: bool) -> Result<Sender, UpstreamFailure>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        if h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|_| UpstreamFailure::Connect)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            *self.h2.lock() = Some(sender.clone());
            return Ok(Sender::H2(sender));
        }
        let (sender, conn) =
            http1::Builder::new().handshake(io).await.map_err(|_| UpstreamFailure::Connect)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        self.pool.start_reaper();
        Ok(Sender::H1(sender))
    }
}

/// Where and how to connect.
struct Connector {
    /// Host name or address, without IPv6 brackets.
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

enum Sender {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
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

/// Sorts an error of an exchange on an open connection into a failure kind.
fn classify(error: &hyper::Error) -> UpstreamFailure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return UpstreamFailure::Tls;
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut {
                return UpstreamFailure::Timeout;
            }
            // `io::Error::source()` skips the error it wraps (tokio-rustls wraps the
            // rustls::Error in an io::Error): step into it.
            if let Some(inner) = io.get_ref() {
                source = Some(inner);
                continue;
            }
        }
        source = e.source();
    }
    UpstreamFailure::Protocol
}

/// A `Retry-After` value as a wait from `now`: delay-seconds or an HTTP date, at most
/// `cap`; `None` when it is neither.
pub(crate) fn retry_after_delay(
    value: &HeaderValue,
    now: std::time::SystemTime,
    cap: Duration,
) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    let wait = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(text).ok()?.duration_since(now).unwrap_or(Duration::ZERO),
    };
    Some(wait.min(cap))
}
