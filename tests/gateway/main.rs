//! keygate in-process (and `check`/`run` on the built binary) as a gateway: the BI flow
//! against the recording sandbox, credentials, errors, responses, smuggling, HTTP/2,
//! config validation, and the property tests of query rewriting and route matching.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod batches;
mod bi;
mod config;
mod credentials;
mod errors;
mod example_config;
mod http2;
mod query_prop;
mod responses;
mod routes_prop;
mod smuggling;
mod update_status;

use keygate::sandbox::Sandbox;
use support::inprocess::{GatewayBuilder, RouteSpec, TestGateway, sandbox};
use support::keys::CID;

/// The recording sandbox (plain HTTP), and keygate with both BI presets in front of it.
async fn bi_gateway() -> (Sandbox, TestGateway) {
    let sb = sandbox(false).await;
    let gw = GatewayBuilder::new()
        .route(RouteSpec::import(&sb.base_url()))
        .route(RouteSpec::export(&sb.base_url()))
        .start()
        .await;
    (sb, gw)
}

/// The import preset's `authenticate` path.
fn auth_path() -> String {
    format!("/import/v2/client/{CID}/authenticate")
}

/// The import preset's upsert path for `table`.
fn data_path(table: &str) -> String {
    format!("/import/v2/client/{CID}/table/{table}/data")
}
