//! keygate: an authenticating reverse proxy that injects Magento BI (RJMetrics) API keys
//! on behalf of internal callers, so that those callers never hold the raw keys.
//!
//! Where each decision lives: a route's credential policy (what is stripped from
//! callers, how the real key is injected, what `Location` loses) in
//! [`routes::credential`], the BI presets' part of it in [`routes::preset`]; what no
//! route forwards in [`rewrite`]; every secret redacted on the way down in [`scrub`];
//! the request pipeline in `proxy`; every answer keygate writes itself in `error`; a
//! rotated key's proof, overlap and fallback in `rotation` (run by `reload`).
//!
//! `sandbox` and `demo` exist with the default `sandbox` feature only; a production
//! gateway is built without it.
//!
//! Modules are public only where the integration tests, benches, fuzz targets or the
//! binary use them, and then only for the items they use.
#![warn(unreachable_pub)]
// What must not run on the request path (clippy.toml lists it) is refused in all of
// keygate, not only where a request passes.
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

mod access;
pub mod admin;
pub mod app;
mod batch;
mod body;
pub mod caller;
pub mod cli;
pub mod config;
mod conn;
#[cfg(feature = "sandbox")]
pub mod demo;
mod error;
mod forward;
#[cfg(test)]
#[allow(unsafe_code, reason = "a test allocator: see src/freed.rs")]
mod freed;
pub mod gateway;
mod guard;
mod header_names;
mod intercept;
mod lazy_timer;
pub mod metrics;
mod proxy;
mod reload;
mod request_body;
pub mod rewrite;
mod rotation;
pub mod routes;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod scrub;
pub mod secret;
mod server;
mod signal;
pub mod telemetry;
mod tls;
mod upstream;
