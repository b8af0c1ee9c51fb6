//! The admin listener (docs/metrics.md, "Admin endpoints"): `/metrics` and `/config`
//! for allowed callers, `/healthz` and `/readyz` for every caller. It is served by the
//! gateway's listener machinery ([`crate::server`]): a connection cap of its own, the
//! gateway's header and idle timeouts, and a drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::net::TcpListener;

use crate::body::{self, Meter, Metered, ProxyBody};
use crate::config::ServerSettings;
use crate::conn::ConnInfo;
use crate::error::Refusal;
use crate::gateway::Gateway;
use crate::metrics::unix;
use crate::request_body::RequestBody;
use crate::server::{Handler, Listening, Server};

/// Open admin connections beyond this are answered 503 `overloaded`. Probes and
/// scrapers need a handful; the cap keeps anyone who can reach the port from holding
/// the file descriptors the gateway shares.
pub const MAX_CONNECTIONS: usize = 64;

/// The admin endpoints as a listener's request handler.
pub(crate) struct Admin {
    gw: Arc<Gateway>,
}

impl Handler for Admin {
    fn handle(
        self: Arc<Self>,
        conn: ConnInfo,
        request: Request<RequestBody>,
        guard: Box<dyn Send>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
        let response = handle(&self.gw, conn.peer, request);
        // The guard goes with the body, so the connection counts as busy until it is sent.
        let response =
            response.map(|b| Metered::new(b, Arc::new(Meter::default()), None, None).with_guard(guard));
        std::future::ready(response.map(BodyExt::boxed_unsync))
    }
}

/// Serves the admin endpoints on `listener` with the header and idle timeouts of
/// `settings` and [`MAX_CONNECTIONS`], until the returned server is shut down.
pub(crate) fn start(gw: Arc<Gateway>, listener: TcpListener, settings: &ServerSettings) -> Server {
    let listening = Listening {
        name: "admin",
        header_timeout: settings.header_timeout,
        idle_timeout: settings.idle_timeout,
        max_header_bytes: settings.max_header_bytes,
        max_connections: MAX_CONNECTIONS,
        open: None,
    };
    Server::start(Arc::new(Admin { gw }), vec![listener], listening, None)
}

fn handle(gw: &Gateway, peer: SocketAddr, request: Request<RequestBody>) -> Response<ProxyBody> {
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

/// The `/config` document: what runs, with fingerprints instead of secrets (for each
/// secret, also of its candidate, previous and rejected values, or `null`).
pub(crate) fn config_json(snapshot: &crate::config::Snapshot) -> serde_json::Value {
    let routes: Vec<_> = snapshot
        .routes
        .routes()
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "host": r.host,
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
        .map(|s| {
            json!({
                "name": s.name,
                "fingerprint": s.fingerprint,
                "loaded_at": unix(s.loaded_at),
                "candidate": s.candidate.as_ref().map(|c| json!({"fingerprint": c.fingerprint, "since": unix(c.since)})),
                "previous": s.previous.as_ref().map(|p| json!({"fingerprint": p.fingerprint, "expires_at": unix(p.expires_at)})),
                "rejected": s.rejected.as_ref().map(|r| json!({"fingerprint": r.fingerprint, "reason": r.reason})),
            })
        })
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
