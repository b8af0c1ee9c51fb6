//! The sandbox's export API: credentials (key, allow list, client id), raw exports and
//! tables, figures, charts and the update status.

use http::Method;
use serde_json::{Value, json};

use crate::support::client::{request, send_from};
use crate::support::keys::CID;
use crate::{
    EXPORT_KEY, IMPORT_KEY, bad_request, call, export_and_download, export_get, export_post, forbidden, get,
    push, start, start_with, unzip_single,
};

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
    let two = "127.0.0.2".parse().unwrap();
    let req = request(Method::GET, "/0.1/export", &[("x-rjm-api-key", EXPORT_KEY)], b"");
    let reply = send_from(two, sb.local_addr(), req).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json(), forbidden("this API key may not be used from 127.0.0.2"));
    assert_eq!(export_get(&sb, "/0.1/export").await.status, 200, "127.0.0.1 is allowed");
    // The import API has no allow list.
    assert_eq!(send_from(two, sb.local_addr(), request(Method::GET, "/", &[], b"")).await.status, 200);
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

#[tokio::test]
async fn fullupdatestatus_answers_429_within_a_minute_of_the_last_call() {
    let sb = start().await;
    let target = format!("/0.1/client/{CID}/fullupdatestatus");
    assert_eq!(export_get(&sb, &target).await.status, 200);
    let again = export_get(&sb, &target).await;
    assert_eq!(again.status, 429, "{}", again.text());
    let wait: u64 = again.header("retry-after").unwrap().parse().unwrap();
    assert!((59..=60).contains(&wait), "{wait}");
    assert_eq!(again.json()["code"], 429);
}
