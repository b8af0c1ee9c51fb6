//! Listeners and connections, for the gateway and the admin endpoints alike: accept
//! with a connection limit and EMFILE back-off, serve HTTP/1.1 and HTTP/2 (prior
//! knowledge) on each connection, enforce the header and idle timeouts, and drain on
//! shutdown. What each request gets is the listener's [`Handler`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::config::ServerSettings;
use crate::conn::ConnInfo;
use crate::gateway::Gateway;
use crate::proxy;
use crate::tls::ServerTls;

/// The raw answer to a connection over the listener's limit: it never reaches hyper.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nx-keygate-error: overloaded\r\nconnection: close\r\ncontent-length: 69\r\n\r\n{\"error\":\"overloaded\",\"message\":\"keygate is at its connection limit\"}";

/// What a listener does with each request.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. Never fails: refusals are responses. `guard` is the
    /// connection's bookkeeping for this request and must live until the response's
    /// last byte has gone (attach it to the body).
    fn handle(
        self: Arc<Self>,
        conn: ConnInfo,
        request: Request<Incoming>,
        guard: Box<dyn Send>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static;

    /// The TLS settings for a connection accepted now, on a listener started with
    /// `started`.
    fn tls(&self, started: &ServerTls) -> ServerTls {
        started.clone()
    }
}

/// The gateway listener runs the request pipeline.
impl Handler for Gateway {
    fn handle(
        self: Arc<Self>,
        conn: ConnInfo,
        request: Request<Incoming>,
        guard: Box<dyn Send>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
        proxy::handle(self, conn, request, guard)
    }

    /// Each new connection takes the certificate of the current snapshot.
    fn tls(&self, started: &ServerTls) -> ServerTls {
        self.snapshot().tls.clone().unwrap_or_else(|| started.clone())
    }
}

/// How a listener set holds its connections.
#[derive(Clone)]
pub struct Listening {
    /// A name for logs: `gateway`, `admin`.
    pub name: &'static str,
    /// Time allowed for a request head, from the connection's start or the first byte
    /// of the next request.
    pub header_timeout: Duration,
    /// Keep-alive connections with nothing in flight longer than this are closed.
    pub idle_timeout: Duration,
    /// Sizes hyper's read buffer and HTTP/2 header list limit.
    pub max_header_bytes: usize,
    /// Connections beyond this many are answered 503 `overloaded` and closed.
    pub max_connections: usize,
    /// Counts this listener set's open connections, when it should be counted.
    pub open: Option<IntGauge>,
}

impl Listening {
    /// The gateway's limits from `[server]`, with `open` counting its connections.
    pub fn gateway(settings: &ServerSettings, open: IntGauge) -> Listening {
        Listening {
            name: "gateway",
            header_timeout: settings.header_timeout,
            idle_timeout: settings.idle_timeout,
            max_header_bytes: settings.max_header_bytes,
            max_connections: settings.max_connections,
            open: Some(open),
        }
    }
}

/// A running listener set.
pub struct Server {
    shutdown: watch::Sender<bool>,
    permits: Arc<Semaphore>,
    max_connections: u32,
    addrs: Vec<SocketAddr>,
}

impl Server {
    /// Starts accepting on `listeners` with the limits of `listening`, answering each
    /// request with `handler`. With `tls`, every connection speaks TLS, with the
    /// settings [`Handler::tls`] gives when it is accepted.
    pub fn start<H: Handler>(
        handler: Arc<H>,
        listeners: Vec<TcpListener>,
        listening: Listening,
        tls: Option<ServerTls>,
    ) -> Server {
        let (shutdown, _) = watch::channel(false);
        // `Semaphore::acquire_many` takes a u32: larger limits could never be drained.
        let max_connections = listening.max_connections.clamp(1, u32::MAX as usize);
        let permits = Arc::new(Semaphore::new(max_connections));
        let addrs = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
        for listener in listeners {
            let accept = Accept {
                handler: handler.clone(),
                listening: listening.clone(),
                permits: permits.clone(),
                tls: tls.clone(),
            };
            tokio::spawn(accept_loop(accept, listener, shutdown.subscribe()));
        }
        Server { shutdown, permits, max_connections: max_connections as u32, addrs }
    }

    /// The bound addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops accepting, closes idle connections, and waits up to `grace` for the rest.
    /// Returns true when every connection finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let _ = self.shutdown.send(true);
        let drained = self.permits.acquire_many(self.max_connections);
        matches!(tokio::time::timeout(grace, drained).await, Ok(Ok(_)))
    }
}

#[derive(Clone, Copy)]
struct Limits {
    header_timeout: Duration,
    idle_timeout: Duration,
    max_header_bytes: usize,
}

impl From<&Listening> for Limits {
    fn from(l: &Listening) -> Limits {
        Limits {
            header_timeout: l.header_timeout,
            idle_timeout: l.idle_timeout,
            max_header_bytes: l.max_header_bytes,
        }
    }
}

/// What the accept loop hands each connection.
struct Accept<H> {
    handler: Arc<H>,
    listening: Listening,
    permits: Arc<Semaphore>,
    /// The TLS settings at start; `None` for plain HTTP.
    tls: Option<ServerTls>,
}

async fn accept_loop<H: Handler>(
    accept: Accept<H>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let Accept { handler, listening, permits, tls } = accept;
    let limits = Limits::from(&listening);
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning.
                tracing::warn!(
                    listener = listening.name,
                    error = %e,
                    backoff_ms = backoff.as_millis() as u64,
                    "accept failed"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse_overloaded(stream));
            continue;
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let open = listening.open.clone();
        let tls = tls.as_ref().map(|started| handler.tls(started));
        tokio::spawn(async move {
            if let Some(open) = &open {
                open.inc();
            }
            let _ = stream.set_nodelay(true);
            match tls {
                None => {
                    let info = ConnInfo { peer, identities: Arc::from(Vec::new()) };
                    serve_connection(handler, stream, info, limits, shutdown).await;
                }
                // Boxed: a TLS session's state is large, and would otherwise make every
                // plain connection's task as large.
                Some(tls) => Box::pin(serve_tls(handler, stream, peer, tls, limits, shutdown)).await,
            }
            if let Some(open) = &open {
                open.dec();
            }
            drop(permit);
        });
    }
}

/// Completes the TLS handshake (within the header timeout), then serves the connection
/// with the identities of the client certificate, if any.
async fn serve_tls<H: Handler>(
    handler: Arc<H>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: ServerTls,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
    // The handshake counts against the header timeout, like slow headers.
    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let identities = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(crate::tls::identities)
                .unwrap_or_default();
            let info = ConnInfo { peer, identities: Arc::from(identities) };
            serve_connection(handler, stream, info, limits, shutdown).await;
        }
        Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
    }
}

async fn refuse_overloaded(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(OVERLOADED)).await;
    let _ = stream.shutdown().await;
}

/// Where a connection is in its life, for the header and idle timeouts.
#[derive(Debug, Default)]
struct ConnState {
    /// See the `PHASE_*` constants.
    phase: AtomicU8,
    /// When the current phase began, in ms since `epoch`.
    since_ms: AtomicU64,
    in_flight: AtomicU32,
    /// Wakes the timeout watcher: a new phase may have an earlier deadline (a keep-alive
    /// connection that starts a head, a connection found to speak HTTP/2).
    changed: Notify,
}

/// Waiting for the head of a request (the first, or after bytes of the next arrived).
const PHASE_HEAD: u8 = 0;
/// Keep-alive, nothing received since the last response.
const PHASE_IDLE: u8 = 1;
/// Requests are being served.
const PHASE_BUSY: u8 = 2;
/// HTTP/2 with no request in flight: streams are managed by the protocol; only the
/// time since the last request ended is timed.
const PHASE_H2: u8 = 3;

struct Clock(Instant);

impl Clock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

impl ConnState {
    fn set(&self, phase: u8, clock: &Clock) {
        self.since_ms.store(clock.now_ms(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
        self.changed.notify_one();
    }
}

/// Counts a request as started; the returned guard ends it when the response is done.
struct RequestGuard {
    state: Arc<ConnState>,
    clock: Arc<Clock>,
    h2: bool,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.state.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.state.set(if self.h2 { PHASE_H2 } else { PHASE_IDLE }, &self.clock);
        }
    }
}

async fn serve_connection<H: Handler, I>(
    handler: Arc<H>,
    stream: I,
    info: ConnInfo,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let clock = Arc::new(Clock(Instant::now()));
    let state = Arc::new(ConnState::default());
    let io = Watched { inner: stream, state: state.clone(), clock: clock.clone(), sniffed: false };
    let svc_state = state.clone();
    let svc_clock = clock.clone();
    let service = service_fn(move |request| {
        let h2 = request.version() == http::Version::HTTP_2;
        if svc_state.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            svc_state.set(PHASE_BUSY, &svc_clock);
        }
        let guard = RequestGuard { state: svc_state.clone(), clock: svc_clock.clone(), h2 };
        let response = handler.clone().handle(info.clone(), request, Box::new(guard));
        async move { Ok::<_, Infallible>(response.await) }
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // keygate times headers itself (see `watch_timeouts`): hyper's timer would also
        // fire on idle keep-alive connections.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192) * 2)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);

    let timeouts = watch_timeouts(state, clock, limits);
    tokio::pin!(timeouts);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            expired = &mut timeouts => {
                match expired {
                    // Nothing in flight: closing loses nothing.
                    Expired::Idle => {
                        connection.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(1), connection.as_mut()).await;
                    }
                    Expired::Head => tracing::debug!(peer = %peer, "request head not received in time; closing"),
                }
                return;
            }
        }
    }
}

enum Expired {
    Head,
    Idle,
}

/// Resolves when the connection has spent too long waiting for a request head
/// (`header_timeout`, from the connection's start or the first byte of the next
/// request) or idle between requests (`idle_timeout`).
async fn watch_timeouts(state: Arc<ConnState>, clock: Arc<Clock>, limits: Limits) -> Expired {
    loop {
        let phase = state.phase.load(Ordering::Relaxed);
        let since = state.since_ms.load(Ordering::Relaxed);
        let (limit, kind) = match phase {
            PHASE_HEAD => (limits.header_timeout, Expired::Head),
            PHASE_IDLE | PHASE_H2 => (limits.idle_timeout, Expired::Idle),
            // Busy: nothing is timed here until the phase changes.
            _ => {
                state.changed.notified().await;
                continue;
            }
        };
        let deadline = clock.0 + Duration::from_millis(since) + limit;
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                // Expired only if nothing moved meanwhile.
                if state.phase.load(Ordering::Relaxed) == phase && state.since_ms.load(Ordering::Relaxed) == since {
                    return kind;
                }
            }
            () = state.changed.notified() => {}
        }
    }
}

/// The caller's socket, noting when bytes of a new request arrive after idleness.
struct Watched<I> {
    inner: I,
    state: Arc<ConnState>,
    clock: Arc<Clock>,
    sniffed: bool,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            if !this.sniffed {
                this.sniffed = true;
                if read.starts_with(b"PRI * HTTP/2.0") {
                    this.state.set(PHASE_H2, &this.clock);
                }
            }
            // On HTTP/2 only requests restart the idle clock (when the last one ends, see
            // `RequestGuard`): PINGs, SETTINGS or WINDOW_UPDATEs alone must not hold a
            // connection open.
            if this.state.phase.load(Ordering::Relaxed) == PHASE_IDLE {
                this.state.set(PHASE_HEAD, &this.clock);
            }
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
