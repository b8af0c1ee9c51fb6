//! keygate: an authenticating reverse proxy that injects Magento BI (RJMetrics) API keys
//! on behalf of internal callers, so that those callers never hold the raw keys.
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod app;
pub mod body;
pub mod caller;
pub mod cli;
pub mod config;
pub mod conn;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod rewrite;
pub mod routes;
pub mod sandbox;
pub mod scrub;
pub mod secret;
pub mod server;
pub mod signal;
pub mod telemetry;
pub mod tls;
pub mod upstream;
