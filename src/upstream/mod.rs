//! Upstream clients: one connection pool per upstream, TLS verification always on
//! (built-in webpki roots plus the route's `ca_file`), HTTP/1.1 and HTTP/2 via ALPN,
//! connect and response timeouts, and the classification of failures into the kinds
//! keygate reports.
//!
//! HTTP/1.1 requests whose body is in hand (none, or a known length up to
//! [`h1::INLINE_BODY`]) go through keygate's own client ([`h1`]), in the request's
//! task; its connections are kept in a small LIFO pool ([`pool`]) and go back only from
//! the body of the answer they carried, once it was read to its end, so an answer that
//! was cut, refused or looked like smuggling never shares a connection with the next
//! request. A longer or unknown-length body goes through hyper's client on a connection
//! of the same pool, which then closes after its one exchange. An HTTP/2 connection
//! (when the upstream's ALPN picks `h2`) is shared by every request. Clients outlive
//! snapshots through the gateway's [`Cache`].
//!
//! Retries: a request is re-sent only when a pooled connection turned out to be closed
//! before any byte of the request was written; keygate adds no other retry and never
//! follows redirects.

mod cache;
mod h1;
mod pool;

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::body::{BoxError, ProxyBody};
use crate::error::UpstreamFailure;
use crate::rewrite::UpstreamHead;
pub(crate) use cache::Cache;
use h1::{Conn, Io};
use pool::Pool;

/// A request to send: built, or still the caller's head with the rules that rewrite it
/// ([`UpstreamHead`]), which keygate's HTTP/1.1 client writes as bytes with no map in
/// between; every other client has it built first. A built request (one batch of a
/// re-batched import, a stored answer's refresh) is boxed: every request's `Outbound`
/// is moved into the futures that send it, and the usual one, the head, is half the
/// size.
pub(crate) enum Outbound<'a> {
    Built(Box<Request<ProxyBody>>),
    Head(UpstreamHead<'a>, ProxyBody),
}

impl Outbound<'_> {
    /// A request already built.
    pub(crate) fn built(request: Request<ProxyBody>) -> Outbound<'static> {
        Outbound::Built(Box::new(request))
    }

    fn body(&self) -> &ProxyBody {
        match self {
            Outbound::Built(request) => request.body(),
            Outbound::Head(_, body) => body,
        }
    }

    /// The request, built (an HTTP/1.1 origin-form target, no `Host`).
    pub(crate) fn into_request(self) -> Result<Request<ProxyBody>, UpstreamFailure> {
        match self {
            Outbound::Built(request) => Ok(*request),
            Outbound::Head(head, body) => {
                let mut request = Request::new(body);
                *request.method_mut() = head.method().clone();
                *request.uri_mut() = head.uri().map_err(|_| UpstreamFailure::Protocol)?;
                *request.headers_mut() = head.headers();
                Ok(request)
            }
        }
    }
}

/// An upstream's answer body: read by keygate's HTTP/1.1 client, or by hyper's (HTTP/2,
/// and HTTP/1.1 requests with long or unknown-length bodies).
pub(crate) enum Body {
    H1(h1::Body),
    Hyper(Incoming),
}

impl Body {
    /// The whole body, when it came in full with the head on keygate's HTTP/1.1 client
    /// ([`h1::Body::take_whole`]); `None` otherwise, and the body is left as it was.
    pub(crate) fn take_whole(&mut self) -> Option<Bytes> {
        match self {
            Body::H1(body) => body.take_whole(),
            Body::Hyper(_) => None,
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::H1(body) => Pin::new(body).poll_frame(cx),
            Body::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::H1(body) => body.is_end_stream(),
            Body::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::H1(body) => body.size_hint(),
            Body::Hyper(body) => body.size_hint(),
        }
    }
}

/// Reads and drops a response body nobody will see (a proof call's answer, an answer
/// replaced by a retry, a batch's answer), so that its HTTP/1.1 connection can go back to
/// the pool. A body longer than `limit` bytes, pausing longer than `idle` between chunks,
/// or not over within `within`, is dropped unread instead, which closes the connection:
/// nothing of it is left on a pooled one.
pub(crate) async fn discard(response: Response<Body>, limit: u64, idle: Option<Duration>, within: Duration) {
    use http_body_util::BodyExt as _;
    let meter = Arc::new(crate::body::Meter::default());
    let mut body = crate::body::Metered::new(response.into_body(), meter, Some(limit), idle);
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
    pool: Arc<Pool<Conn>>,
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

    /// Sends `request`, waiting at most `timeout` from `now` for the response head
    /// (connecting included). `now` is the caller's reading of the clock as it sends,
    /// so that one reading serves its own timing, the deadline and the pool. keygate's
    /// HTTP/1.1 client times the exchange with its connection's own timer
    /// ([`h1::exchange`]); a new connection, HTTP/2 and hyper's client with a timer each.
    pub(crate) async fn send(
        &self,
        request: Outbound<'_>,
        now: Instant,
        timeout: Duration,
    ) -> Result<Response<Body>, UpstreamFailure> {
        let deadline = now + timeout;
        if let Some(h2) = self.shared_h2() {
            // Boxed: inline, its future would be most of every request's (1.9 KB of 3),
            // and each request's futures are moved into place at every level.
            return within(deadline, Box::pin(self.send_h2(h2, request.into_request()?))).await;
        }
        let body = request.body();
        let in_hand = body.is_end_stream() || body.size_hint().exact().is_some_and(|n| n <= h1::INLINE_BODY);
        if !in_hand {
            // Boxed, like every rare path, to keep each request's future small.
            return within(deadline, Box::pin(self.send_hyper(request.into_request()?, now))).await;
        }
        let mut out = None;
        let mut request = Some(request);
        loop {
            let (mut conn, reused) = match self.pool.checkout(now) {
                Some(conn) => (conn, true),
                None => match within(deadline, Box::pin(self.connect())).await? {
                    Connected::H1(conn) => (conn, false),
                    Connected::H2(h2) => {
                        // The upstream's ALPN picks HTTP/2 on a new connection while an
                        // idle HTTP/1.1 one, which took the body's first bytes, has
                        // just failed: nothing was sent, but the request is spent.
                        let Some(request) = request.take() else {
                            return Err(UpstreamFailure::Protocol);
                        };
                        return within(deadline, Box::pin(self.send_h2(h2, request.into_request()?))).await;
                    }
                },
            };
            let out = match (&mut out, request.take()) {
                (Some(out), _) => out,
                (None, Some(request)) => out.insert(h1::Outgoing::new(request, &self.host)?),
                (None, None) => return Err(UpstreamFailure::Protocol),
            };
            match h1::exchange(&mut conn, out, deadline).await {
                Ok(answer) => return Ok(answer.into_response(conn, self.pool.clone()).map(Body::H1)),
                // Closed while idle: no byte was written, try the next one.
                Err(h1::Failure::Unsent(_)) if reused => {}
                Err(h1::Failure::Unsent(failure) | h1::Failure::Failed(failure)) => return Err(failure),
            }
        }
    }

    /// The shared HTTP/2 connection, if it is open.
    fn shared_h2(&self) -> Option<http2::SendRequest<ProxyBody>> {
        let mut h2 = self.h2.lock();
        match h2.as_ref() {
            Some(shared) if !shared.is_closed() => Some(shared.clone()),
            Some(_) => {
                *h2 = None;
                None
            }
            None => None,
        }
    }

    async fn send_h2(
        &self,
        mut h2: http2::SendRequest<ProxyBody>,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<Body>, UpstreamFailure> {
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        *request.uri_mut() = Uri::from_parts(parts).map_err(|_| UpstreamFailure::Protocol)?;
        let response = h2.send_request(request).await.map_err(|e| classify(&e))?;
        Ok(response.map(Body::Hyper))
    }

    /// Sends a request whose body is long or of unknown length through hyper's client,
    /// which writes it while it reads the answer, on a connection that then closes.
    async fn send_hyper(
        &self,
        mut request: Request<ProxyBody>,
        now: Instant,
    ) -> Result<Response<Body>, UpstreamFailure> {
        request.headers_mut().insert(http::header::HOST, self.host.clone());
        loop {
            let (conn, reused) = match self.pool.checkout(now) {
                Some(conn) => (conn, true),
                None => match self.connect().await? {
                    Connected::H1(conn) => (conn, false),
                    Connected::H2(h2) => return self.send_h2(h2, request).await,
                },
            };
            let (mut sender, connection) = http1::Builder::new()
                .handshake(TokioIo::new(conn.into_io()))
                .await
                .map_err(|_| UpstreamFailure::Connect)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            match sender.try_send_request(request).await {
                Ok(response) => {
                    // hyper decodes the chunks of such an answer but leaves its length.
                    if h1::both_framings(response.headers()) {
                        return Err(UpstreamFailure::Protocol);
                    }
                    return Ok(response.map(Body::Hyper));
                }
                Err(mut error) => match error.take_message() {
                    // The pooled connection closed before the request was written.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(classify(error.error())),
                },
            }
        }
    }

    /// Opens a new connection: TCP (bounded by the connect timeout), TLS if the URL is
    /// `https`, then HTTP/2 if ALPN picked it, HTTP/1.1 otherwise.
    async fn connect(&self) -> Result<Connected, UpstreamFailure> {
        let c = &self.connector;
        let tcp = match tokio::time::timeout(c.timeout, TcpStream::connect((c.host.as_str(), c.port))).await {
            Err(_) => return Err(UpstreamFailure::Timeout),
            Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => return Err(UpstreamFailure::Timeout),
            Ok(Err(_)) => return Err(UpstreamFailure::Connect),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        self.pool.start_reaper();
        let Some((tls, name)) = &c.tls else { return Ok(Connected::H1(Conn::new(Io::Tcp(tcp)))) };
        let stream = tls.connect(name.clone(), tcp).await.map_err(|e| {
            if h1::carries_rustls_error(&e) { UpstreamFailure::Tls } else { UpstreamFailure::Connect }
        })?;
        let io = Io::Tls(Box::new(stream));
        let h2 = matches!(&io, Io::Tls(s) if s.get_ref().1.alpn_protocol() == Some(b"h2"));
        if !h2 {
            return Ok(Connected::H1(Conn::new(io)));
        }
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|_| UpstreamFailure::Connect)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        *self.h2.lock() = Some(sender.clone());
        Ok(Connected::H2(sender))
    }
}

/// `work`, failing as [`UpstreamFailure::Timeout`] once `deadline` has passed.
async fn within<T>(
    deadline: Instant,
    work: impl Future<Output = Result<T, UpstreamFailure>>,
) -> Result<T, UpstreamFailure> {
    tokio::time::timeout_at(deadline, work).await.unwrap_or(Err(UpstreamFailure::Timeout))
}

/// A new connection, by the protocol its upstream speaks.
enum Connected {
    H1(Conn),
    H2(http2::SendRequest<ProxyBody>),
}

/// Where and how to connect.
struct Connector {
    /// Host name or address, without IPv6 brackets.
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
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
