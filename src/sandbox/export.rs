//! The Export API under `/0.1`: the key and IP-allowlist check, raw exports, warehouse
//! tables, figures, charts and the update-cycle status.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::header::{CONTENT_DISPOSITION, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::reports::{self, Format, Report};
use super::respond::{self, Resp};
use super::{State, clock, form};

/// The header carrying the export key (matched case-insensitively, first copy used).
const KEY_HEADER: &str = "x-rjm-api-key";

/// Routes `/0.1/...`; `segments` start after `0.1`. Every path, known or not, is
/// authorized first, as the vendor's gateway answers 403 before anything else.
pub(super) fn handle(state: &State, parts: &Parts, peer: SocketAddr, segments: &[&str], body: &[u8]) -> Resp {
    if let Some(refused) = refuse_caller(state, parts, peer) {
        return refused;
    }
    let method = &parts.method;
    let fields = || form_fields(parts, body);
    match segments {
        ["export"] => only(method, &[Method::GET], || list_exports(state)),
        ["export", id] => only(method, &[Method::GET], || download(state, id)),
        ["export", id, "info"] => only(method, &[Method::GET], || export_info(state, id)),
        ["export", id, "copy"] => only(method, &[Method::POST], || copy(state, id, &fields())),
        ["client", cid, rest @ ..] => client(state, method, cid, rest),
        ["figure"] => only(method, &[Method::GET], || list(reports::FIGURES, "figures")),
        ["figure", id, "export"] => {
            only(method, &[Method::POST], || export_report(reports::FIGURES, id, &fields()))
        }
        ["figure", id, "info"] => {
            only(method, &[Method::GET, Method::POST], || report_info(reports::FIGURES, id))
        }
        ["chart"] => only(method, &[Method::GET], || list(reports::CHARTS, "charts")),
        ["chart", id, "export"] => {
            only(method, &[Method::POST], || export_report(reports::CHARTS, id, &fields()))
        }
        ["chart", id, "info"] => {
            only(method, &[Method::GET, Method::POST], || report_info(reports::CHARTS, id))
        }
        _ => respond::not_found(),
    }
}

/// `/client/{cid}/...`: a client id other than the key's is refused like a bad key.
fn client(state: &State, method: &Method, cid: &str, rest: &[&str]) -> Resp {
    if cid.parse::<u64>().ok() != Some(state.settings.client_id) {
        return forbidden("this API key has no access to that client");
    }
    match rest {
        ["table"] => only(method, &[Method::GET], || list_tables(state)),
        ["table", table] => only(method, &[Method::GET], || describe_table(state, table)),
        ["table", table, "export"] => only(method, &[Method::POST], || export_table(state, table)),
        ["fullupdatestatus"] => only(method, &[Method::GET], || update_status(state)),
        _ => respond::not_found(),
    }
}

fn only(method: &Method, allowed: &[Method], answer: impl FnOnce() -> Resp) -> Resp {
    match respond::refuse_method(method, allowed) {
        None => answer(),
        Some(refused) => refused,
    }
}

fn forbidden(reason: &str) -> Resp {
    respond::error(StatusCode::FORBIDDEN, "Forbidden", vec![reason.to_owned()])
}

/// The 403 refusal, unless the first `X-RJM-API-Key` is an accepted export key and the
/// peer is allowed.
fn refuse_caller(state: &State, parts: &Parts, peer: SocketAddr) -> Option<Resp> {
    match parts.headers.get(KEY_HEADER) {
        None => return Some(forbidden("the X-RJM-API-Key header is missing")),
        Some(key) if !state.accepts(super::Api::Export, key.as_bytes()) => {
            return Some(forbidden("the API key is not valid"));
        }
        Some(_) => {}
    }
    let ip = canonical(peer.ip());
    let allow = &state.settings.export_allow;
    if !allow.is_empty() && !allow.iter().any(|net| net.contains(&ip)) {
        return Some(forbidden(&format!("this API key may not be used from {ip}")));
    }
    None
}

/// IPv4-mapped IPv6 peers are matched as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Form fields from a urlencoded body, then from the query string.
fn form_fields(parts: &Parts, body: &[u8]) -> Vec<(String, String)> {
    let mut fields = form::pairs(std::str::from_utf8(body).unwrap_or(""));
    fields.extend(form::pairs(parts.uri.query().unwrap_or("")));
    fields
}

fn list_exports(state: &State) -> Resp {
    let exports: Vec<Value> = state.store().exports().map(|e| e.describe()).collect();
    respond::json(StatusCode::OK, &json!({ "exports": exports }))
}

fn no_export() -> Resp {
    respond::error(StatusCode::NOT_FOUND, "Not Found", vec!["no such export".to_owned()])
}

fn download(state: &State, id: &str) -> Resp {
    let Some(polled) = id.parse().ok().and_then(|id| state.store().poll_export(id)) else {
        return no_export();
    };
    if !polled.ready {
        return respond::error(
            StatusCode::NOT_FOUND,
            "Not Found",
            vec!["the export is not ready yet".to_owned()],
        );
    }
    let mut response = respond::body(StatusCode::OK, "application/zip", polled.zip);
    // Digits only, so always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"export-{id}.zip\"")) {
        response.headers_mut().insert(CONTENT_DISPOSITION, value);
    }
    response
}

fn export_info(state: &State, id: &str) -> Resp {
    match id.parse().ok().and_then(|id| state.store().poll_export(id)) {
        Some(polled) => respond::json(StatusCode::OK, &polled.description),
        None => no_export(),
    }
}

fn copy(state: &State, id: &str, fields: &[(String, String)]) -> Resp {
    let name = form::first(fields, "name").filter(|n| !n.is_empty()).map(str::to_owned);
    let mut store = state.store();
    match id.parse().ok().and_then(|id| store.copy_export(id, name)) {
        Some(export) => respond::json(StatusCode::CREATED, &export.describe()),
        None => no_export(),
    }
}

fn list_tables(state: &State) -> Resp {
    let store = state.store();
    let tables: Vec<Value> = store.tables().map(|(name, _)| json!({ "id": name, "name": name })).collect();
    respond::json(StatusCode::OK, &json!({ "tables": tables }))
}

fn no_table() -> Resp {
    respond::error(StatusCode::NOT_FOUND, "Not Found", vec!["no such table".to_owned()])
}

fn describe_table(state: &State, table: &str) -> Resp {
    let store = state.store();
    let Some(found) = store.table(table) else {
        return no_table();
    };
    let columns: Vec<Value> = found.columns().iter().map(|c| json!({ "name": c })).collect();
    respond::json(StatusCode::OK, &json!({ "id": table, "name": table, "columns": columns }))
}

fn export_table(state: &State, table: &str) -> Resp {
    match state.store().export_table(table) {
        Some(Ok(export)) => respond::json(StatusCode::OK, &export.describe()),
        Some(Err(_)) => respond::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            vec!["the export file could not be built".to_owned()],
        ),
        None => no_table(),
    }
}

/// The vendor's rate limit on `fullupdatestatus`: at least this long between calls.
const UPDATE_STATUS_EVERY: Duration = Duration::from_secs(60);

fn update_status(state: &State) -> Resp {
    {
        let mut last = state.update_status_at.lock();
        let now = std::time::Instant::now();
        if let Some(wait) =
            last.map(|at| UPDATE_STATUS_EVERY.saturating_sub(at.elapsed())).filter(|w| !w.is_zero())
        {
            let mut refused = respond::error(
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests",
                vec!["at most one update status call per minute per client".to_owned()],
            );
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            refused.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
            return refused;
        }
        *last = Some(now);
    }
    // One sample job that completed just before the sandbox started.
    let end = state.started;
    let start = end.checked_sub(Duration::from_secs(17 * 60 + 23)).unwrap_or(end);
    respond::json(
        StatusCode::OK,
        &json!({
            "clientId": state.settings.client_id,
            "lastCompletedUpdateJob": {
                "id": 1001,
                "type": { "id": 1, "name": "Full Update" },
                "start": clock::format_utc(start),
                "end": clock::format_utc(end),
                "status": { "id": 3, "name": "Completed" },
            },
            "lastCompletedUpdateJobWithDataSync": null,
            "timezoneAbbreviation": "UTC",
        }),
    )
}

fn list(reports: &[Report], key: &str) -> Resp {
    let all: Vec<Value> = reports.iter().map(Report::describe).collect();
    respond::json(StatusCode::OK, &json!({ key: all }))
}

fn report_info(reports: &[Report], id: &str) -> Resp {
    match reports::find(reports, id) {
        Some(report) => respond::json(StatusCode::OK, &report.describe()),
        None => respond::not_found(),
    }
}

fn export_report(reports: &[Report], id: &str, fields: &[(String, String)]) -> Resp {
    let Some(report) = reports::find(reports, id) else {
        return respond::not_found();
    };
    let bad = |reason: &str| respond::error(StatusCode::BAD_REQUEST, "Bad Request", vec![reason.to_owned()]);
    let format = match form::first(fields, "format").map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("csv") => Format::Csv,
        Some("json") => Format::Json,
        Some(_) => return bad("format must be csv or json"),
    };
    if !report.supports(format) {
        return bad("SQL Report Builder figures export as CSV only");
    }
    let headers = matches!(form::first(fields, "includeColumnHeaders"), Some("1" | "true"));
    match format {
        Format::Csv => respond::body(StatusCode::OK, "text/csv; charset=utf-8", report.csv(headers)),
        Format::Json => respond::json(StatusCode::OK, &report.json(headers)),
    }
}
