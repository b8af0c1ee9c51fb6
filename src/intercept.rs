//! `CONNECT` interception (docs/configuration.md, `[server.intercept]`): which tunnels
//! keygate opens. Only to port 443 of a host that a route names, only with
//! `[server.intercept]` configured, and only for a caller that one of that host's routes
//! admits; anything else is 403 `no_route` (or `caller_not_allowed`) and nothing is
//! connected anywhere: keygate is never an open proxy. An accepted tunnel is not
//! connected upstream either: the server completes TLS inside it with the intercept
//! certificate and runs every request in it through the pipeline again
//! ([`crate::server`]).

use std::net::IpAddr;

use http::{Request, Response, StatusCode, Version};
use hyper::ext::ReasonPhrase;

use crate::access::Exchange;
use crate::body::{self, ProxyBody};
use crate::config::Snapshot;
use crate::conn::{ConnInfo, Tunnel, TunnelCaller, TunnelSlot};
use crate::error::Refusal;
use crate::request_body::RequestBody;

/// The only port keygate intercepts: the callers' clients speak HTTPS to the vendor.
const PORT: u16 = 443;

/// The reason phrase of an accepted `CONNECT`. PHP's Httpful removes the proxy's answer
/// from what it parses only when it reads this phrase.
const ESTABLISHED: ReasonPhrase = ReasonPhrase::from_static(b"Connection established");

/// Decides a `CONNECT`: `200 Connection established` with the tunnel left for the
/// server, or the refusal.
pub(crate) fn accept(
    snapshot: &Snapshot,
    conn: &ConnInfo,
    mut request: Request<RequestBody>,
    exchange: &mut Exchange,
) -> Result<Response<ProxyBody>, Refusal> {
    exchange.operation = "connect";
    let Some(intercept) = &snapshot.intercept else {
        return Err(Refusal::TunnelRefused("no [server.intercept] is configured"));
    };
    let caller = admit(snapshot, conn, &request, exchange)?;
    // The server offers a slot only where it can serve a tunnel (HTTP/1, not inside a
    // tunnel already).
    let Some(slot) = request.extensions_mut().remove::<TunnelSlot>() else {
        return Err(Refusal::TunnelRefused("CONNECT is served on HTTP/1.1 connections outside a tunnel"));
    };
    let caller = TunnelCaller { addr: caller };
    slot.offer(Tunnel { upgrade: hyper::upgrade::on(&mut request), tls: intercept.config.clone(), caller });
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::OK;
    *response.version_mut() = Version::HTTP_11;
    response.extensions_mut().insert(ESTABLISHED);
    Ok(response)
}

/// Refuses the tunnel unless its host is one a route names and one of that host's
/// routes admits the caller. The caller of the tunnel is the caller of every request in
/// it; one that no route admits learns nothing more (each request is checked again).
fn admit(
    snapshot: &Snapshot,
    conn: &ConnInfo,
    request: &Request<RequestBody>,
    exchange: &mut Exchange,
) -> Result<Option<IpAddr>, Refusal> {
    let host = tunnel_host(request)?;
    let mut routes = snapshot.routes.routes_for_host(host).peekable();
    if routes.peek().is_none() {
        return Err(Refusal::TunnelRefused("no route names this host"));
    }
    let caller = snapshot.callers.of(conn, request.headers());
    exchange.caller = caller.group.clone();
    exchange.caller_addr = caller.addr;
    if routes.any(|route| route.allow.permits(&caller)) {
        Ok(caller.addr)
    } else {
        Err(Refusal::CallerNotAllowed)
    }
}

/// The host of a `CONNECT` target keygate may intercept: `name:443`, a DNS name.
fn tunnel_host(request: &Request<RequestBody>) -> Result<&str, Refusal> {
    let authority = request.uri().authority().ok_or(Refusal::TunnelRefused("the target is not host:port"))?;
    if authority.port_u16() != Some(PORT) {
        return Err(Refusal::TunnelRefused("only port 443 is intercepted"));
    }
    // `user:password@host:443` is no target keygate opens: it would be a credential
    // the caller still holds, and the access log writes the target.
    if authority.as_str().contains('@') {
        return Err(Refusal::TunnelRefused("the target carries user information"));
    }
    let host = authority.host();
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return Err(Refusal::TunnelRefused("an IP address is never intercepted"));
    }
    Ok(host)
}
