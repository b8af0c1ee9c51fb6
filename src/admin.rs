//! The admin listener (design §6): `/metrics` and `/config` for allowed callers,
//! `/healthz` and `/readyz` for every caller. Plain HTTP/1.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::body::{self, ProxyBody};
use crate::error::Refusal;
use crate::gateway::Gateway;
use crate::metrics::unix;

/// Serves the admin endpoints on `listener` until the returned task is aborted.
pub fn start(gw: Arc<Gateway>, listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let gw = gw.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let gw = gw.clone();
                    async move { Ok::<_, Infallible>(handle(&gw, peer, request)) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}

fn handle(gw: &Gateway, peer: SocketAddr, request: Request<Incoming>) -> Response<ProxyBody> {
    let snapshot = gw.snapshot();
    let guarded = matches!(request.uri().path(), "/metrics" | "/config");
    if guarded {
        let allowed = snapshot.admin.as_ref().is_some_and(|a| a.allow.contains(peer.ip()));
        if !allowed {
            return Refusal::CallerNotAllowed.into_response();
        }
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Refusal::MethodNotAllowed("GET, HEAD".into()).into_response();
    }
    match request.uri().path() {
        "/metrics" => text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", gw.metrics.render()),
        "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" => readyz(gw, &snapshot),
        "/config" => text(StatusCode::OK, "application/json", config_json(&snapshot).to_string()),
        _ => Refusal::NoRoute.into_response(),
    }
}

fn readyz(gw: &Gateway, snapshot: &crate::config::Snapshot) -> Response<ProxyBody> {
    if gw.is_shutting_down() {
        return Refusal::ShuttingDown.into_response();
    }
    if snapshot.routes.routes().is_empty() {
        return Refusal::NotReady("no routes are loaded").into_response();
    }
    text(
        StatusCode::OK,
        "application/json",
        json!({"status": "ready", "generation": snapshot.generation}).to_string(),
    )
}

/// The `/config` document: what runs, with fingerprints instead of secrets.
pub fn config_json(snapshot: &crate::config::Snapshot) -> serde_json::Value {
    let routes: Vec<_> = snapshot
        .routes
        .routes()
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "prefix": r.prefix,
                "upstream": r.upstream.url(),
                "operations": r.operation_names(),
                "secret": r.secret_name,
            })
        })
        .collect();
    let secrets: Vec<_> = snapshot
        .secrets
        .iter()
        .map(|s| json!({"name": s.name, "fingerprint": s.fingerprint, "loaded_at": unix(s.loaded_at)}))
        .collect();
    json!({
        "generation": snapshot.generation,
        "loaded_at": unix(snapshot.loaded_at),
        "routes": routes,
        "secrets": secrets,
    })
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
