//! Connections: the accept loop, TLS, HTTP/1.1 + HTTP/2 serving, graceful stop, and the
//! first steps of every request (read the capped body, record, dispatch).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{RecordedRequest, State, export, import, respond};
use respond::Resp;

/// Largest request body read (the UNCONFIRMED 5 MiB import cap); larger gets 413.
pub(super) const MAX_BODY: usize = 5 * 1024 * 1024;
/// How long requests in flight may run on after shutdown starts.
const GRACE: Duration = Duration::from_secs(5);
/// How long a request head may take to arrive (HTTP/1).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts until `stop` changes (or its sender is dropped), then drains connections.
pub(super) async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<Arc<ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let conn = serve_conn(stream, peer, state.clone(), acceptor.clone(), stop.clone());
                    conns.spawn(conn);
                }
                Err(error) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(%error, "sandbox: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(GRACE, async { while conns.join_next().await.is_some() {} });
    if drained.await.is_err() {
        conns.abort_all();
    }
}

async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    acceptor: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
) {
    match acceptor {
        None => serve_io(TokioIo::new(stream), peer, state, stop).await,
        Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => serve_io(TokioIo::new(tls), peer, state, stop).await,
            Ok(Err(error)) => tracing::debug!(%error, %peer, "sandbox: TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "sandbox: TLS handshake timed out"),
        },
    }
}

async fn serve_io<I>(io: I, peer: SocketAddr, state: Arc<State>, mut stop: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(state.clone(), peer, req));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer makes hyper enforce its header-read timeout on HTTP/1 (slow clients).
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, %peer, "sandbox: connection ended with an error");
    }
}

/// Why a request body could not be taken whole.
enum BodyProblem {
    TooLarge,
    Broken,
}

async fn handle(state: Arc<State>, peer: SocketAddr, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let (parts, body) = req.into_parts();
    // The body is read before recording so the record holds its length.
    let (body, body_len) = read_body(body).await;
    state.push_record(record_of(&parts, body_len, peer));
    // Path only: the query may hold the import key.
    tracing::debug!(method = %parts.method, path = parts.uri.path(), "sandbox request");
    let response = match body {
        Ok(body) => dispatch(&state, &parts, peer, body),
        Err(BodyProblem::TooLarge) => respond::error(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            "Payload Too Large",
            vec![format!("the request body exceeds {MAX_BODY} bytes")],
        ),
        Err(BodyProblem::Broken) => respond::error(
            http::StatusCode::BAD_REQUEST,
            "Bad Request",
            vec!["the request body could not be read".to_owned()],
        ),
    };
    Ok(response)
}

/// Reads at most [`MAX_BODY`] + 1 bytes; returns the body and how many bytes were read.
async fn read_body(mut body: Incoming) -> (Result<Bytes, BodyProblem>, usize) {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    buf.extend_from_slice(data);
                    if buf.len() > MAX_BODY {
                        return (Err(BodyProblem::TooLarge), buf.len());
                    }
                }
            }
            Err(_) => return (Err(BodyProblem::Broken), buf.len()),
        }
    }
    let len = buf.len();
    (Ok(buf.freeze()), len)
}

fn record_of(parts: &Parts, body_len: usize, peer: SocketAddr) -> RecordedRequest {
    RecordedRequest {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect(),
        body_len,
        peer,
    }
}

/// Picks the API by the first path segment.
fn dispatch(state: &State, parts: &Parts, peer: SocketAddr, body: Bytes) -> Resp {
    let path = parts.uri.path();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match segments.first().copied() {
        Some("") if segments.len() == 1 => import::status(&parts.method),
        Some("v1" | "v2") => import::handle(state, parts, &segments[1..], &body),
        Some("0.1") => export::handle(state, parts, peer, &segments[1..], &body),
        _ => respond::not_found(),
    }
}
