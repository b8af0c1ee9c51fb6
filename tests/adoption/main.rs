//! Zero-change adoption: unmodified clients reach keygate through their environment
//! alone. Host routes ([`hosts`]), `CONNECT` interception for routed hosts and everything
//! it must refuse ([`connect`]), the intercept certificate's rotation and metrics
//! ([`rotation`]), and the vendor's Python client from PyPI through `HTTPS_PROXY`
//! ([`python`]). [`tunnel`] opens tunnels the way a client behind `HTTPS_PROXY` does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod connect;
mod hosts;
mod python;
mod rotation;
mod tunnel;
