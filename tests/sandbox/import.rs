//! The sandbox's import API: status, authentication, upserts and their vendor rules
//! (sizes, keys, table names, replacing rows), v1 like v2.

use http::Method;
use serde_json::{Value, json};

use crate::support::client::IMPORT_JSON;
use crate::support::keys::CID;
use crate::{
    EXPORT_KEY, IMPORT_KEY, bad_request, call, data_path, export_and_download, export_get, get, push, start,
    unauthorized, unzip_single,
};

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

#[tokio::test]
async fn import_answers_are_labelled_so_every_official_client_reads_them() {
    // Not exactly `application/json`: the JS client's HTTP library would parse that
    // itself and the client's own JSON.parse would then throw.
    let sb = start().await;
    let answers = [
        get(&sb, "/").await,
        get(&sb, &format!("/v2/client/{CID}/authenticate?apikey={IMPORT_KEY}")).await,
        get(&sb, &format!("/v2/client/{CID}/authenticate?apikey={EXPORT_KEY}")).await,
        push(&sb, "orders", r#"[{"keys":["id"],"id":1}]"#).await,
        push(&sb, "orders", r#"[{"id":1}]"#).await,
        get(&sb, &format!("/v2/client/{CID}/nowhere?apikey={IMPORT_KEY}")).await,
    ];
    for reply in &answers {
        assert_eq!(reply.header("content-type").as_deref(), Some(IMPORT_JSON), "{}", reply.text());
        let _: Value = reply.json();
    }
    assert_eq!(answers.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 200, 401, 201, 400, 404]);
}
