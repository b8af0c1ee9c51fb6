//! Listeners and connections, for the gateway and the admin endpoints alike: accept
//! with a connection limit and EMFILE back-off, serve HTTP/1.1 and HTTP/2 (prior
//! knowledge) on each connection, enforce the header and idle timeouts, and drain on
//! shutdown. What each request gets is the listener's [`Handler`]. Plain TCP connections
//! are read by keygate's own HTTP/1.1 server ([`h1`]) until a head it hands to hyper;
//! TLS connections by hyper ([`serving`]). The phases that hyper's connections' header
//! and idle timeouts follow are in [`timeouts`]; a `CONNECT` the handler accepts is
//! served as a connection of its own inside the tunnel ([`tunnel`]).

mod h1;
mod serving;
mod timeouts;
mod tunnel;

pub(crate) use h1::{HeadBuf, itoa, line};

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntGauge;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::body::{BoxError, ProxyBody};
use crate::config::ServerSettings;
use crate::conn::{ConnInfo, TunnelSlot};
use crate::gateway::Gateway;
use crate::proxy;
use crate::request_body::RequestBody;
use crate::tls::ServerTls;
use serving::{Prefixed, Stream};
use timeouts::{Expired, Phases};

/// `make()`'s future, made in its box. `Box::pin(make())` builds the future on the
/// stack and then copies it into the box whole, with room for its every state (4.6 KB
/// for a request's, BENCHMARKS.md round 8); allocated first, the box is where it is built.
#[inline(always)]
pub(crate) fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// The raw answer to a connection over the listener's limit: it never reaches hyper.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nx-keygate-error: overloaded\r\nconnection: close\r\ncontent-length: 69\r\n\r\n{\"error\":\"overloaded\",\"message\":\"keygate is at its connection limit\"}";

/// What a listener does with each request.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Answers one request. Never fails: refusals are responses. `guard` is the
    /// connection's bookkeeping for this request and must live until the response's
    /// last byte has gone (attach it to the body).
    fn handle(
        self: Arc<Self>,
        conn: ConnInfo,
        request: Request<RequestBody>,
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
        request: Request<RequestBody>,
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
pub(crate) struct Listening {
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
    pub(crate) fn gateway(settings: &ServerSettings, open: IntGauge) -> Listening {
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
pub(crate) struct Server {
    shutdown: watch::Sender<bool>,
    permits: Arc<Semaphore>,
    max_connections: u32,
    addrs: Vec<SocketAddr>,
}

impl Server {
    /// Starts accepting on `listeners` with the limits of `listening`, answering each
    /// request with `handler`. With `tls`, every connection speaks TLS, with the
    /// settings [`Handler::tls`] gives when it is accepted.
    pub(crate) fn start<H: Handler>(
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
    pub(crate) fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops accepting, closes idle connections, and waits up to `grace` for the rest.
    /// Returns true when every connection finished in time.
    pub(crate) async fn shutdown(self, grace: Duration) -> bool {
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
                    let info = ConnInfo { peer, identities: Arc::from(Vec::new()), tunnel_caller: None };
                    serve_connection(handler, stream, info, limits, shutdown, Tunnels::Open).await;
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
            let info = ConnInfo { peer, identities: Arc::from(identities), tunnel_caller: None };
            serve_connection(handler, stream, info, limits, shutdown, Tunnels::Open).await;
        }
        Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
    }
}

async fn refuse_overloaded(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(OVERLOADED)).await;
    let _ = stream.shutdown().await;
}

/// Whether a connection may open a tunnel: not one that is itself inside a tunnel.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tunnels {
    Open,
    Closed,
}

/// Serves one connection until it ends, then the tunnel its handler accepted, if any:
/// within this one call, so the tunnel keeps the connection's permit and its count in
/// `keygate_connections_open`.
async fn serve_connection<H: Handler, I>(
    handler: Arc<H>,
    stream: I,
    info: ConnInfo,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
    tunnels: Tunnels,
) where
    I: Stream,
{
    let slot = TunnelSlot::default();
    let offered = (tunnels == Tunnels::Open).then(|| slot.clone());
    let connection = Connection {
        handler: handler.clone(),
        info: info.clone(),
        limits,
        shutdown: shutdown.clone(),
        slot: offered,
    };
    // Boxed, either way: hyper's connection state would otherwise make every plain
    // connection's task as large.
    match stream.into_tcp() {
        Ok(tcp) => match h1::serve(handler.clone(), tcp, info.clone(), limits, shutdown.clone()).await {
            // keygate's HTTP/1.1 server opens no tunnel: a CONNECT is handed over.
            h1::Served::Closed => return,
            // After a request keygate answered, the connection is HTTP/1.1 to its end.
            h1::Served::HandOver(tcp, read, served) => {
                let http1 = served == h1::Spoken::Http1;
                Box::pin(serve_http(connection, Prefixed::new(tcp, read), http1)).await
            }
        },
        Err(stream) => {
            let http1 = stream.negotiated_http1();
            Box::pin(serve_http(connection, stream, http1)).await;
        }
    }
    if let Some(tunnel) = slot.take() {
        // Boxed: a tunnel's connection is served by this same function.
        Box::pin(tunnel::serve(handler, tunnel, info, limits, shutdown)).await;
    }
}

/// What hyper serves a connection with.
struct Connection<H> {
    handler: Arc<H>,
    info: ConnInfo,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
    /// Where a `CONNECT` the handler accepts is left, when the connection may open one.
    slot: Option<TunnelSlot>,
}

/// Serves `stream` with hyper: HTTP/1 when `http1` (known already), else HTTP/1 or
/// HTTP/2 by its first bytes.
async fn serve_http<H: Handler, I>(connection: Connection<H>, stream: I, http1: bool)
where
    I: Stream,
{
    let Connection { handler, info, limits, mut shutdown, slot } = connection;
    let peer = info.peer;
    let phases = Phases::start();
    let timeouts = phases.expired(limits.header_timeout, limits.idle_timeout);
    tokio::pin!(timeouts);
    let io = phases.watch(stream);
    let requests = phases.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let mut request = request.map(RequestBody::Hyper);
        // Where the handler leaves a CONNECT it accepts (HTTP/1 only: an HTTP/2 CONNECT
        // would be a stream, and keygate tunnels whole connections).
        if let Some(slot) = &slot {
            if request.method() == http::Method::CONNECT && request.version() != http::Version::HTTP_2 {
                request.extensions_mut().insert(slot.clone());
            }
        }
        let guard = requests.request_started(request.version() == http::Version::HTTP_2);
        // Boxed: hyper keeps one slot of this future's size for every connection, idle
        // ones too.
        let handler = handler.clone();
        let response: Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>> =
            boxed_in_place(|| handler.handle(info.clone(), request, Box::new(guard)));
        async move { Ok::<_, Infallible>(response.await) }
    });

    let max_buf_size = limits.max_header_bytes.max(8192) * 2;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // keygate times headers itself (see `timeouts`): hyper's timer would also
        // fire on idle keep-alive connections.
        .header_read_timeout(None)
        .max_buf_size(max_buf_size)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256);
    let connection = if http1 {
        // The same HTTP/1 settings, without the version read.
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1.timer(TokioTimer::new()).header_read_timeout(None).max_buf_size(max_buf_size).keep_alive(true);
        Either::Left(http1.serve_connection(TokioIo::new(io), service).with_upgrades())
    } else {
        Either::Right(builder.serve_connection_with_upgrades(TokioIo::new(io), service))
    };
    tokio::pin!(connection);
    // `graceful_shutdown` on whichever connection serves the stream.
    macro_rules! drain {
        ($connection:ident) => {
            match $connection.as_mut().as_pin_mut() {
                Either::Left(c) => c.graceful_shutdown(),
                Either::Right(c) => c.graceful_shutdown(),
            }
        };
    }

    // A tunnel's connection may start after the drain began: it drains from the start.
    let mut draining = *shutdown.borrow_and_update();
    if draining {
        drain!(connection);
    }
    loop {
        tokio::select! {
            // The watcher after the connection: it sees the phase the connection just set.
            biased;
            result = poll_fn(|cx| match connection.as_mut().as_pin_mut() {
                Either::Left(c) => c.poll(cx).map_err(BoxError::from),
                Either::Right(c) => c.poll(cx),
            }) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                drain!(connection);
            }
            expired = &mut timeouts => {
                match expired {
                    // Nothing in flight: closing loses nothing.
                    Expired::Idle => {
                        drain!(connection);
                        let _ = tokio::time::timeout(Duration::from_secs(1), poll_fn(|cx| match connection.as_mut().as_pin_mut() {
                            Either::Left(c) => c.poll(cx).map(|_| ()),
                            Either::Right(c) => c.poll(cx).map(|_| ()),
                        })).await;
                    }
                    Expired::Head => tracing::debug!(peer = %peer, "request head not received in time; closing"),
                }
                return;
            }
        }
    }
}
