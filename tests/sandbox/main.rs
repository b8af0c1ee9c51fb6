//! `keygate sandbox` driven over real sockets: one test per vendor rule of the import
//! and export APIs, plus TLS, HTTP/2, routing, the request record and shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod export;
mod import;
mod protocols;

use std::io::Read;

use http::Method;
use ipnet::IpNet;
use keygate::sandbox::Sandbox;
use serde_json::{Value, json};

use support::client::{Reply, request, send};
use support::inprocess::sandbox_with;
use support::keys::CID;

/// Shaped like real BI keys (hex), unlike the gateway suites' sentinels.
const IMPORT_KEY: &str = "0123456789abcdef0123456789abcdef";
const EXPORT_KEY: &str = "fedcba9876543210fedcba9876543210";

async fn start_with(export_allow: Vec<IpNet>, tls: bool) -> Sandbox {
    sandbox_with(IMPORT_KEY, EXPORT_KEY, export_allow, tls).await
}

async fn start() -> Sandbox {
    start_with(Vec::new(), false).await
}

async fn call(sb: &Sandbox, method: Method, target: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    send(sb.local_addr(), request(method, target, headers, body.as_bytes())).await
}

async fn get(sb: &Sandbox, target: &str) -> Reply {
    call(sb, Method::GET, target, &[], "").await
}

async fn export_get(sb: &Sandbox, target: &str) -> Reply {
    call(sb, Method::GET, target, &[("x-rjm-api-key", EXPORT_KEY)], "").await
}

async fn export_post(sb: &Sandbox, target: &str, form: &str) -> Reply {
    let headers = [("x-rjm-api-key", EXPORT_KEY), ("content-type", "application/x-www-form-urlencoded")];
    call(sb, Method::POST, target, &headers, form).await
}

fn data_path(version: &str, table: &str) -> String {
    format!("/{version}/client/{CID}/table/{table}/data?apikey={IMPORT_KEY}")
}

async fn push(sb: &Sandbox, table: &str, body: &str) -> Reply {
    let headers = [("content-type", "application/json")];
    call(sb, Method::POST, &data_path("v2", table), &headers, body).await
}

fn bad_request(reasons: &[&str]) -> Value {
    json!({ "code": 400, "message": "Bad Request", "reasons": reasons })
}

fn forbidden(reason: &str) -> Value {
    json!({ "code": 403, "message": "Forbidden", "reasons": [reason] })
}

fn unauthorized(reason: &str) -> Value {
    json!({ "code": 401, "message": "Authorization failed", "reasons": [reason] })
}

fn unzip_single(bytes: &[u8], name: &str) -> String {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    assert_eq!(archive.len(), 1);
    let mut file = archive.by_name(name).unwrap();
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    text
}

/// Creates an export of `table` and polls its download until it is ready.
async fn export_and_download(sb: &Sandbox, table: &str) -> (u64, Reply) {
    let created = export_post(sb, &format!("/0.1/client/{CID}/table/{table}/export"), "").await;
    assert_eq!(created.status, 200, "{}", created.text());
    let id = created.json()["export_id"].as_u64().unwrap();
    let target = format!("/0.1/export/{id}");
    let first = export_get(sb, &target).await;
    assert_eq!(first.status, 404, "first poll is not ready");
    let second = export_get(sb, &target).await;
    assert_eq!(second.status, 200);
    (id, second)
}
