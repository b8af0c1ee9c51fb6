//! Zero-change adoption: unmodified clients reach keygate through their environment
//! alone. Host routes ([`hosts`]), `CONNECT` interception for routed hosts and everything
//! it must refuse ([`connect`]), the intercept certificate's rotation and metrics
//! ([`rotation`]), and the vendor's Python client from PyPI through `HTTPS_PROXY`
//! ([`python`]). Tunnels are opened as a client behind `HTTPS_PROXY` opens them
//! (`support::tunnel`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod connect;
mod hosts;
mod python;
mod rotation;
