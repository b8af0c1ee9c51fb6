//! `keygate sandbox` driven over real sockets: one test per vendor rule of the import
//! and export APIs, plus TLS, HTTP/2, the request record and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ipnet::IpNet;
use keygate::sandbox::{Sandbox, Settings};
use keygate::secret::Secret;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const CID: u64 = 12345;
const IMPORT_KEY: &str = "0123456789abcdef0123456789abcdef";
const EXPORT_KEY: &str = "fedcba9876543210fedcba9876543210";

async fn start_with(export_allow: Vec<IpNet>, tls: bool) -> Sandbox {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let settings = Settings {
        client_id: CID,
        import_key: Secret::new(IMPORT_KEY.to_owned()),
        export_key: Secret::new(EXPORT_KEY.to_owned()),
        export_allow,
        tls,
    };
    Sandbox::start(listener, settings).unwrap()
}

async fn start() -> Sandbox {
    start_with(Vec::new(), false).await
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

fn request(
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(target).header("host", "sandbox.test");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body.into())).unwrap()
}

/// One HTTP/1.1 request on its own connection.
async fn send_on(stream: TcpStream, req: Request<Full<Bytes>>) -> Reply {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    Reply { status: parts.status.as_u16(), headers: parts.headers, body }
}

async fn call(sb: &Sandbox, method: Method, target: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let stream = TcpStream::connect(sb.local_addr()).await.unwrap();
    send_on(stream, request(method, target, headers, body.to_owned())).await
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

// ---- import API ----

#[tokio::test]
async fn status_is_200_without_credentials() {
    let sb = start().await;
    let reply = get(&sb, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({ "code": 200, "message": "ok" }));
}

#[tokio::test]
async fn authenticate_accepts_the_import_key() {
    let sb = start().await;
    let reply = get(&sb, &format!("/v2/client/{CID}/authenticate?apikey={IMPORT_KEY}")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({ "code": 200, "message": "authenticated" }));
}

#[tokio::test]
async fn authenticate_refuses_a_wrong_key() {
    let sb = start().await;
    let reply = get(&sb, &format!("/v2/client/{CID}/authenticate?apikey={EXPORT_KEY}")).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json(), unauthorized("the apikey is not valid"));
}

#[tokio::test]
async fn authenticate_refuses_another_client_id() {
    let sb = start().await;
    let reply = get(&sb, &format!("/v2/client/54321/authenticate?apikey={IMPORT_KEY}")).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json(), unauthorized("the apikey is not valid for this client"));
}

#[tokio::test]
async fn authenticate_refuses_a_missing_key() {
    let sb = start().await;
    let reply = get(&sb, &format!("/v2/client/{CID}/authenticate")).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json(), unauthorized("the apikey parameter is missing"));
}

#[tokio::test]
async fn upsert_returns_201() {
    let sb = start().await;
    let reply = push(&sb, "orders", r#"[{"keys":["id"],"id":1,"total":9.5},{"keys":["id"],"id":2}]"#).await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.json(), json!({ "code": 201, "message": "created", "count": 2 }));
    let single = push(&sb, "orders", r#"{"keys":["id"],"id":3}"#).await;
    assert_eq!(single.status, 201);
    assert_eq!(single.json()["count"], 1);
}

#[tokio::test]
async fn upsert_needs_the_key() {
    let sb = start().await;
    let target = format!("/v2/client/{CID}/table/orders/data?apikey=nope");
    let reply = call(&sb, Method::POST, &target, &[], r#"{"keys":["id"],"id":1}"#).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json(), unauthorized("the apikey is not valid"));
}

#[tokio::test]
async fn upsert_refuses_invalid_json_with_reasons() {
    let sb = start().await;
    let reply = push(&sb, "orders", r#"[{"keys":["id"],"id":1"#).await;
    assert_eq!(reply.status, 400);
    let body = reply.json();
    assert_eq!(body["code"], 400);
    assert_eq!(body["message"], "Bad Request");
    let reasons = body["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1);
    assert!(reasons[0].as_str().unwrap().starts_with("the body is not valid JSON: "), "{body}");
}

#[tokio::test]
async fn upsert_refuses_more_than_100_records() {
    let sb = start().await;
    let records: Vec<Value> = (0..101).map(|i| json!({ "keys": ["id"], "id": i })).collect();
    let reply = push(&sb, "orders", &Value::Array(records.clone()).to_string()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json(), bad_request(&["at most 100 data points per request, got 101"]));
    let hundred = Value::Array(records[..100].to_vec()).to_string();
    assert_eq!(push(&sb, "orders", &hundred).await.status, 201);
}

#[tokio::test]
async fn upsert_refuses_an_empty_array() {
    let sb = start().await;
    let reply = push(&sb, "orders", "[]").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json(), bad_request(&["the array holds no data points (send 1 to 100)"]));
}

#[tokio::test]
async fn upsert_names_the_record_with_missing_keys() {
    let sb = start().await;
    let reply = push(&sb, "orders", r#"[{"keys":["id"],"id":1},{"id":2}]"#).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json(), bad_request(&["record 1: the keys field is missing"]));
}

#[tokio::test]
async fn upsert_names_the_record_with_empty_keys() {
    let sb = start().await;
    let reply = push(&sb, "orders", r#"[{"keys":[],"id":1}]"#).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json(), bad_request(&["record 0: keys must be a non-empty array of field names"]));
    let not_array = push(&sb, "orders", r#"{"keys":"id","id":1}"#).await;
    assert_eq!(not_array.json(), bad_request(&["record 0: keys must be a non-empty array of field names"]));
}

#[tokio::test]
async fn upsert_names_the_record_with_non_string_keys() {
    let sb = start().await;
    let reply =
        push(&sb, "orders", r#"[{"keys":["id"],"id":1},{"keys":["id"],"id":2},{"keys":[7],"id":3}]"#).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json(), bad_request(&["record 2: keys must contain only strings"]));
}

#[tokio::test]
async fn upsert_refuses_a_key_naming_an_absent_field() {
    let sb = start().await;
    let reply = push(&sb, "orders", r#"{"keys":["id","day"],"id":1}"#).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json(), bad_request(&["record 0: key field \"day\" is not present in the record"]));
}

#[tokio::test]
async fn upsert_refuses_a_bad_table_name() {
    let sb = start().await;
    let reason = ["table names may contain only letters, digits and underscores"];
    for table in ["bad-name", "bad%2Ename", "caf%C3%A9"] {
        let reply = push(&sb, table, r#"{"keys":["id"],"id":1}"#).await;
        assert_eq!(reply.status, 400, "{table}");
        assert_eq!(reply.json(), bad_request(&reason), "{table}");
    }
    assert_eq!(push(&sb, "Good_Name_2", r#"{"keys":["id"],"id":1}"#).await.status, 201);
}

#[tokio::test]
async fn upsert_over_5_mib_is_413() {
    let sb = start().await;
    let body = " ".repeat(5 * 1024 * 1024 + 1);
    let reply = call(&sb, Method::POST, &data_path("v2", "big"), &[], &body).await;
    assert_eq!(reply.status, 413);
    assert_eq!(
        reply.json(),
        json!({ "code": 413, "message": "Payload Too Large", "reasons": ["the request body exceeds 5242880 bytes"] })
    );
    let record = sb.recorded();
    assert_eq!(record.last().unwrap().body_len, 5 * 1024 * 1024 + 1);
}

#[tokio::test]
async fn v1_works_like_v2() {
    let sb = start().await;
    let auth = get(&sb, &format!("/v1/client/{CID}/authenticate?apikey={IMPORT_KEY}")).await;
    assert_eq!(auth.status, 200);
    let reply = call(&sb, Method::POST, &data_path("v1", "legacy"), &[], r#"{"keys":["id"],"id":1}"#).await;
    assert_eq!(reply.status, 201);
    let missing_keys = call(&sb, Method::POST, &data_path("v1", "legacy"), &[], r#"{"id":1}"#).await;
    assert_eq!(missing_keys.status, 400);
    let tables = export_get(&sb, &format!("/0.1/client/{CID}/table")).await;
    assert_eq!(tables.json(), json!({ "tables": [{ "id": "legacy", "name": "legacy" }] }));
}

#[tokio::test]
async fn upsert_replaces_rows_with_the_same_key() {
    let sb = start().await;
    assert_eq!(
        push(&sb, "items", r#"[{"keys":["id"],"id":1,"name":"old"},{"keys":["id"],"id":2,"name":"b"}]"#)
            .await
            .status,
        201
    );
    assert_eq!(push(&sb, "items", r#"{"keys":["id"],"id":1,"name":"new"}"#).await.status, 201);
    let (_, download) = export_and_download(&sb, "items").await;
    assert_eq!(unzip_single(&download.body, "items.csv"), "id,name\r\n1,new\r\n2,b\r\n");
}

// ---- export API: credentials ----

#[tokio::test]
async fn export_refuses_a_missing_or_wrong_key() {
    let sb = start().await;
    for target in
        ["/0.1/export", "/0.1/figure", &format!("/0.1/client/{CID}/fullupdatestatus"), "/0.1/nowhere"]
    {
        let missing = get(&sb, target).await;
        assert_eq!(missing.status, 403, "{target}");
        assert_eq!(missing.json(), forbidden("the X-RJM-API-Key header is missing"));
        let wrong = call(&sb, Method::GET, target, &[("X-RJM-API-Key", IMPORT_KEY)], "").await;
        assert_eq!(wrong.status, 403, "{target}");
        assert_eq!(wrong.json(), forbidden("the API key is not valid"));
    }
    let right = call(&sb, Method::GET, "/0.1/export", &[("X-Rjm-Api-Key", EXPORT_KEY)], "").await;
    assert_eq!(right.status, 200);
}

#[tokio::test]
async fn export_refuses_a_peer_outside_the_allow_list() {
    let sb = start_with(vec!["127.0.0.1/32".parse().unwrap()], false).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(sb.local_addr()).await.unwrap();
    let req = request(Method::GET, "/0.1/export", &[("x-rjm-api-key", EXPORT_KEY)], "");
    let reply = send_on(stream, req).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json(), forbidden("this API key may not be used from 127.0.0.2"));
    assert_eq!(export_get(&sb, "/0.1/export").await.status, 200, "127.0.0.1 is allowed");
    // The import API has no allow list.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(sb.local_addr()).await.unwrap();
    assert_eq!(send_on(stream, request(Method::GET, "/", &[], "")).await.status, 200);
}

#[tokio::test]
async fn export_refuses_another_client_id() {
    let sb = start().await;
    for target in ["/0.1/client/54321/table", "/0.1/client/54321/fullupdatestatus", "/0.1/client/x/table"] {
        let reply = export_get(&sb, target).await;
        assert_eq!(reply.status, 403, "{target}");
        assert_eq!(reply.json(), forbidden("this API key has no access to that client"));
    }
}

// ---- export API: raw exports and tables ----

#[tokio::test]
async fn full_table_export_flow() {
    let sb = start().await;
    let rows = r#"[{"keys":["id"],"id":1,"name":"Smith, Jane","note":"says \"hi\""},
                   {"keys":["id"],"id":2,"name":"Lee","city":"Oslo\nNorway"}]"#;
    assert_eq!(push(&sb, "customers", rows).await.status, 201);
    assert_eq!(push(&sb, "orders", r#"{"keys":["id"],"id":1}"#).await.status, 201);

    let tables = export_get(&sb, &format!("/0.1/client/{CID}/table")).await;
    assert_eq!(tables.status, 200);
    assert_eq!(
        tables.json(),
        json!({ "tables": [{ "id": "customers", "name": "customers" }, { "id": "orders", "name": "orders" }] })
    );
    let described = export_get(&sb, &format!("/0.1/client/{CID}/table/customers")).await;
    assert_eq!(
        described.json(),
        json!({ "id": "customers", "name": "customers",
                "columns": [{ "name": "id" }, { "name": "name" }, { "name": "note" }, { "name": "city" }] })
    );
    let missing = export_get(&sb, &format!("/0.1/client/{CID}/table/nope")).await;
    assert_eq!(missing.status, 404);

    let (id, download) = export_and_download(&sb, "customers").await;
    assert_eq!(download.headers["content-type"], "application/zip");
    assert_eq!(download.headers["content-disposition"], format!("attachment; filename=\"export-{id}.zip\""));
    assert_eq!(
        unzip_single(&download.body, "customers.csv"),
        "id,name,note,city\r\n1,\"Smith, Jane\",\"says \"\"hi\"\"\",\r\n2,Lee,,\"Oslo\nNorway\"\r\n"
    );

    let info = export_get(&sb, &format!("/0.1/export/{id}/info")).await;
    assert_eq!(info.status, 200);
    assert_eq!(info.json()["status"], "Completed");
    assert_eq!(info.json()["rows"], 2);
    let list = export_get(&sb, "/0.1/export").await.json();
    assert_eq!(list["exports"].as_array().unwrap().len(), 1);
    assert_eq!(list["exports"][0]["export_id"], id);
    assert_eq!(export_get(&sb, "/0.1/export/999").await.status, 404);
}

#[tokio::test]
async fn export_info_is_pending_then_completed() {
    let sb = start().await;
    assert_eq!(push(&sb, "t", r#"{"keys":["id"],"id":1}"#).await.status, 201);
    let created = export_post(&sb, &format!("/0.1/client/{CID}/table/t/export"), "").await.json();
    assert_eq!(created["status"], "Pending");
    let id = created["export_id"].as_u64().unwrap();
    let target = format!("/0.1/export/{id}/info");
    assert_eq!(export_get(&sb, &target).await.json()["status"], "Pending");
    assert_eq!(export_get(&sb, &target).await.json()["status"], "Completed");
    assert_eq!(export_get(&sb, &format!("/0.1/export/{id}")).await.status, 200, "ready after info poll");
}

#[tokio::test]
async fn copy_export_returns_201() {
    let sb = start().await;
    assert_eq!(push(&sb, "t", r#"{"keys":["id"],"id":1,"v":"x"}"#).await.status, 201);
    let (id, original) = export_and_download(&sb, "t").await;
    let copied = export_post(&sb, &format!("/0.1/export/{id}/copy"), "name=New+Copied%20Export").await;
    assert_eq!(copied.status, 201);
    let body = copied.json();
    let copy_id = body["export_id"].as_u64().unwrap();
    assert_ne!(copy_id, id);
    assert_eq!(body["name"], "New Copied Export");
    assert_eq!(body["status"], "Pending");
    let unnamed = export_post(&sb, &format!("/0.1/export/{id}/copy"), "").await.json();
    assert_eq!(unnamed["name"], "Copy of Table export: t");
    let target = format!("/0.1/export/{copy_id}");
    assert_eq!(export_get(&sb, &target).await.status, 404);
    assert_eq!(export_get(&sb, &target).await.body, original.body);
    assert_eq!(export_post(&sb, "/0.1/export/999/copy", "").await.status, 404);
}

// ---- export API: figures, charts, update status ----

#[tokio::test]
async fn figure_export_csv_and_json_with_and_without_headers() {
    let sb = start().await;
    let target = "/0.1/figure/101/export";
    let csv = export_post(&sb, target, "format=csv").await;
    assert_eq!(csv.status, 200);
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    assert_eq!(csv.text(), "2024-01,12500.5\r\n2024-02,13100.0\r\n2024-03,14875.25\r\n");
    let csv_headers = export_post(&sb, target, "format=csv&includeColumnHeaders=1").await;
    assert_eq!(
        csv_headers.text(),
        "Month,Revenue\r\n2024-01,12500.5\r\n2024-02,13100.0\r\n2024-03,14875.25\r\n"
    );
    let default = export_post(&sb, target, "").await;
    assert_eq!(default.text(), csv.text(), "csv is the default");
    let json = export_post(&sb, target, "format=json").await;
    assert_eq!(json.headers["content-type"], "application/json");
    assert_eq!(json.json(), json!([["2024-01", 12500.5], ["2024-02", 13100.0], ["2024-03", 14875.25]]));
    let json_headers = export_post(&sb, target, "format=json&includeColumnHeaders=1").await;
    assert_eq!(json_headers.json()[0], json!(["Month", "Revenue"]));
    assert_eq!(json_headers.json().as_array().unwrap().len(), 4);

    let sql_json = export_post(&sb, "/0.1/figure/102/export", "format=json").await;
    assert_eq!(sql_json.status, 400);
    assert_eq!(sql_json.json(), bad_request(&["SQL Report Builder figures export as CSV only"]));
    let bad_format = export_post(&sb, target, "format=xml").await;
    assert_eq!(bad_format.json(), bad_request(&["format must be csv or json"]));
    assert_eq!(export_post(&sb, "/0.1/figure/999/export", "").await.status, 404);
    assert_eq!(export_get(&sb, target).await.status, 405);
}

#[tokio::test]
async fn figures_and_charts_list_and_describe() {
    let sb = start().await;
    let figures = export_get(&sb, "/0.1/figure").await.json();
    let ids: Vec<&Value> = figures["figures"].as_array().unwrap().iter().map(|f| &f["id"]).collect();
    assert_eq!(ids, [&json!(101), &json!(102)]);
    let info_get = export_get(&sb, "/0.1/figure/102/info").await;
    let info_post = export_post(&sb, "/0.1/figure/102/info", "").await;
    assert_eq!(info_get.status, 200);
    assert_eq!(info_post.status, 200);
    assert_eq!(
        info_get.json(),
        json!({ "id": 102, "name": "Orders by status", "type": "sql", "formats": ["csv"], "columns": ["Status", "Orders"] })
    );
    assert_eq!(info_post.json(), info_get.json());
    assert_eq!(export_get(&sb, "/0.1/figure/1/info").await.status, 404);

    let charts = export_get(&sb, "/0.1/chart").await.json();
    assert_eq!(charts["charts"][0]["id"], 201);
    assert_eq!(export_post(&sb, "/0.1/chart/201/info", "").await.json()["type"], "cohort");
    let chart_csv = export_post(&sb, "/0.1/chart/201/export", "includeColumnHeaders=1").await;
    assert_eq!(
        chart_csv.text(),
        "Cohort,Customers,Month 1,Month 2\r\n2024-01,120,0.42,0.31\r\n2024-02,98,0.39,0.0\r\n"
    );
    let chart_json = export_post(&sb, "/0.1/chart/201/export", "format=json").await;
    assert_eq!(chart_json.json()[0], json!(["2024-01", 120, 0.42, 0.31]));
}

#[tokio::test]
async fn fullupdatestatus_has_the_documented_shape() {
    let sb = start().await;
    let reply = call(
        &sb,
        Method::GET,
        &format!("/0.1/client/{CID}/fullupdatestatus"),
        &[("x-rjm-api-key", EXPORT_KEY), ("accept", "application/json")],
        "",
    )
    .await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["clientId", "lastCompletedUpdateJob", "lastCompletedUpdateJobWithDataSync", "timezoneAbbreviation"]
    );
    assert_eq!(body["clientId"], CID);
    assert_eq!(body["lastCompletedUpdateJobWithDataSync"], Value::Null);
    assert_eq!(body["timezoneAbbreviation"], "UTC");
    let job = &body["lastCompletedUpdateJob"];
    assert_eq!(job["id"], 1001);
    assert_eq!(job["type"], json!({ "id": 1, "name": "Full Update" }));
    assert_eq!(job["status"], json!({ "id": 3, "name": "Completed" }));
    for field in ["start", "end"] {
        let time = job[field].as_str().unwrap();
        let shape: String = time.chars().map(|c| if c.is_ascii_digit() { 'd' } else { c }).collect();
        assert_eq!(shape, "dddd-dd-dd dd:dd:dd", "{field}: {time}");
    }
    assert!(job["start"].as_str() < job["end"].as_str());
}

// ---- routing ----

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let sb = start().await;
    let missing = get(&sb, "/nowhere").await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json(),
        json!({ "code": 404, "message": "Not Found", "reasons": ["no such resource"] })
    );
    assert_eq!(get(&sb, "/v2/client/12345/tables").await.status, 404);
    assert_eq!(export_get(&sb, "/0.1/nowhere").await.status, 404);

    let wrong = get(&sb, &data_path("v2", "orders")).await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.headers["allow"], "POST");
    let put = call(&sb, Method::PUT, &data_path("v2", "orders"), &[], "{}").await;
    assert_eq!(put.status, 405);
    let post_status = call(&sb, Method::POST, "/", &[], "").await;
    assert_eq!(post_status.status, 405);
    let delete =
        call(&sb, Method::DELETE, "/0.1/figure/101/info", &[("x-rjm-api-key", EXPORT_KEY)], "").await;
    assert_eq!(delete.status, 405);
    assert_eq!(delete.headers["allow"], "GET, POST");
    assert_eq!(export_post(&sb, "/0.1/export", "").await.status, 405);
}

// ---- recording ----

#[tokio::test]
async fn recorded_shows_duplicate_headers_and_params_as_received() {
    let sb = start().await;
    // First apikey wins: a wrong first copy fails even when the real key follows.
    let target = format!("/v2/client/{CID}/authenticate?apikey=caller-copy&APIKEY=x&apikey={IMPORT_KEY}");
    assert_eq!(get(&sb, &target).await.status, 401);
    let target = format!("/v2/client/{CID}/authenticate?apikey={IMPORT_KEY}&apikey=caller-copy");
    assert_eq!(get(&sb, &target).await.status, 200);
    let headers = [("x-rjm-api-key", "caller-copy"), ("accept", "*/*"), ("X-RJM-API-Key", EXPORT_KEY)];
    assert_eq!(call(&sb, Method::GET, "/0.1/figure", &headers, "").await.status, 403);
    let headers = [("x-rjm-api-key", EXPORT_KEY), ("x-rjm-api-key", "caller-copy")];
    assert_eq!(call(&sb, Method::POST, "/0.1/figure/101/info", &headers, "abc").await.status, 200);

    let record = sb.recorded();
    assert_eq!(record.len(), 4);
    assert_eq!(record[0].method, "GET");
    assert_eq!(record[0].path, format!("/v2/client/{CID}/authenticate"));
    assert_eq!(
        record[0].query.as_deref(),
        Some(format!("apikey=caller-copy&APIKEY=x&apikey={IMPORT_KEY}").as_str())
    );
    assert_eq!(record[0].peer.ip(), "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
    let keys: Vec<&[u8]> = record[2]
        .headers
        .iter()
        .filter(|(name, _)| name == "x-rjm-api-key")
        .map(|(_, value)| value.as_slice())
        .collect();
    assert_eq!(keys, [b"caller-copy".as_slice(), EXPORT_KEY.as_bytes()]);
    assert!(record[2].headers.iter().any(|(name, value)| name == "accept" && value == b"*/*"));
    assert_eq!(record[3].method, "POST");
    assert_eq!(record[3].body_len, 3);
    assert_eq!(record[3].query, None);
}

// ---- protocols ----

fn tls_client(ca_pem: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn tls_mode_negotiates_h2_with_a_client_trusting_ca_pem() {
    let sb = start_with(Vec::new(), true).await;
    let port = sb.local_addr().port();
    assert_eq!(sb.base_url(), format!("https://127.0.0.1:{port}"));
    let ca = sb.ca_pem().expect("TLS mode has a CA");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));

    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tcp = TcpStream::connect(sb.local_addr()).await.unwrap();
    let tls = tls_client(&ca, &[b"h2", b"http/1.1"]).connect(name.clone(), tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("https://127.0.0.1:{port}/0.1/chart"))
        .header("x-rjm-api-key", EXPORT_KEY)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);

    // HTTP/1.1 over TLS too, and by name.
    let tcp = TcpStream::connect(sb.local_addr()).await.unwrap();
    let localhost = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_client(&ca, &[b"http/1.1"]).connect(localhost, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"http/1.1".as_slice()));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let reply = sender.send_request(request(Method::GET, "/", &[], "")).await.unwrap();
    assert_eq!(reply.status(), 200);

    // A client that does not trust the CA fails the handshake.
    let other = start_with(Vec::new(), true).await;
    let tcp = TcpStream::connect(sb.local_addr()).await.unwrap();
    let foreign = tls_client(&other.ca_pem().unwrap(), &[b"h2"]).connect(name, tcp).await;
    assert!(foreign.is_err());
}

#[tokio::test]
async fn plain_http2_with_prior_knowledge_works() {
    let sb = start().await;
    assert_eq!(sb.ca_pem(), None);
    assert_eq!(sb.base_url(), format!("http://127.0.0.1:{}", sb.local_addr().port()));
    let tcp = TcpStream::connect(sb.local_addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("{}/", sb.base_url())).body(Full::new(Bytes::new())).unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let sb = start().await;
    let addr: SocketAddr = sb.local_addr();
    assert_eq!(get(&sb, "/").await.status, 200);
    sb.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());
}
