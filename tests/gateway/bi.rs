//! The BI import flow end to end, through keygate to the sandbox: what an RJMetrics
//! client library does (authenticate with a dummy key, then push batches of 100 on one
//! connection), and upsert bodies refused locally with the record index named.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use http::Method;
use serde_json::json;

use crate::data_path;
use crate::support::client::{Conn, get, post, request};
use crate::support::inprocess::{GatewayBuilder, RouteSpec, query_params, recorded_header, sandbox};
use crate::support::keys::{CID, IMPORT_KEY};

#[tokio::test]
async fn rjmetrics_client_authenticates_then_pushes_batches_of_100() {
    let sb = sandbox(false).await;
    let gw = GatewayBuilder::new().route(RouteSpec::import(&sb.base_url())).start().await;
    let mut conn = Conn::open(gw.addr).await;

    let mut call = async |method: Method, target: String, body: Vec<u8>| {
        let req = request(method, &target, &[("content-type", "application/json")], &body);
        let reply = conn.send(req).await.unwrap();
        (reply.status, serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap())
    };

    let auth = format!("/import/v2/client/{CID}/authenticate?apikey=dummy-key-from-the-client");
    let (status, body) = call(Method::GET, auth, Vec::new()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"code": 200, "message": "authenticated"}));

    const BATCHES: usize = 3;
    for batch in 0..BATCHES {
        let records: Vec<_> = (0..100)
            .map(|i| {
                let id = batch * 100 + i;
                json!({"keys": ["id"], "id": id, "name": format!("row {id}"), "total": id as f64 / 4.0})
            })
            .collect();
        let target = format!("{}?apikey=dummy-key-from-the-client", data_path("orders"));
        let (status, body) = call(Method::POST, target, serde_json::to_vec(&records).unwrap()).await;
        assert_eq!(status, 201, "batch {batch}: {body}");
        assert_eq!(body, json!({"code": 201, "message": "created", "count": 100}));
    }

    let seen = sb.recorded();
    assert_eq!(seen.len(), 1 + BATCHES);
    assert_eq!(seen[0].method, "GET");
    for r in &seen {
        assert_eq!(query_params(r.query.as_deref(), "apikey"), [format!("apikey={IMPORT_KEY}")]);
    }
    for r in &seen[1..] {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, format!("/v2/client/{CID}/table/orders/data"));
        assert_eq!(recorded_header(r, "content-type"), ["application/json"]);
        assert!(r.body_len > 100 * 30, "{}", r.body_len);
    }
    let ok = [("route", "bi-import"), ("operation", "upsert"), ("code", "201")];
    assert_eq!(gw.metric("keygate_requests_total", &ok), Some(BATCHES as f64));
}

#[tokio::test]
async fn invalid_upserts_are_refused_locally_naming_the_record() {
    let sb = sandbox(false).await;
    let gw = GatewayBuilder::new().route(RouteSpec::import(&sb.base_url())).start().await;
    let json = [("content-type", "application/json")];
    let cases: [(&str, &str); 6] = [
        (r#"[{"keys":["id"],"id":1},{"id":2}]"#, "record 1"),
        (r#"[{"keys":["id"],"id":1},{"keys":["id"],"id":2},{"keys":["sku"],"id":3}]"#, "record 2"),
        (r#"[{"keys":[],"id":1}]"#, "record 0"),
        (r#"[{"keys":["id"],"id":1}, 7]"#, "record 1"),
        (r#"[]"#, "1 to 100"),
        (r#"{"keys":["id"]"#, "JSON"),
    ];
    for (body, reason) in cases {
        let reply = post(gw.addr, &data_path("orders"), &json, body.as_bytes()).await;
        reply.assert_refusal(400, "invalid_body");
        let message = reply.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(reason), "{body}: {message}");
    }
    assert!(sb.recorded().is_empty(), "an invalid upsert was forwarded");
}

#[tokio::test]
async fn with_validate_body_off_the_upstream_judges_the_upsert() {
    let sb = sandbox(false).await;
    let gw = GatewayBuilder::new()
        .route(RouteSpec::import(&sb.base_url()).set("validate_body", "false"))
        .start()
        .await;
    let json = [("content-type", "application/json")];
    let reply = post(gw.addr, &data_path("orders"), &json, br#"[{"keys":["id"],"id":1},{"id":2}]"#).await;
    assert_eq!(reply.status, 400);
    assert!(reply.header("x-keygate-error").is_none(), "the sandbox's answer, passed through");
    assert_eq!(reply.json()["reasons"], json!(["record 1: the keys field is missing"]));
    assert_eq!(sb.recorded().len(), 1);
}

#[tokio::test]
async fn import_status_check_carries_no_key() {
    let sb = sandbox(false).await;
    let gw = GatewayBuilder::new().route(RouteSpec::import(&sb.base_url())).start().await;
    let reply = get(gw.addr, "/import/?apikey=caller", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"code": 200, "message": "ok"}));
    let seen = sb.recorded();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/");
    assert_eq!(seen[0].query, None, "neither the caller's nor the real key");
}
