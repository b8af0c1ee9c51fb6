//! The vendor's Python client from PyPI (`rjmetrics` 0.1.0), unmodified and with its
//! default `API_BASE` (`https://connect.rjmetrics.com/v2`), reaching keygate through
//! `HTTPS_PROXY` alone. The client runs in a network namespace with only loopback, whose
//! one way out leads to keygate (`support::netns`): whatever it did with the vendor's
//! name, nothing could leave the machine. The upstream is the sandbox, recording what
//! arrived.

use std::path::Path;

use serde_json::Value;

use crate::support::client::IMPORT_JSON;
use crate::support::inprocess::{GatewayBuilder, RouteSpec, TestGateway, sandbox};
use crate::support::keys::{CID, IMPORT_KEY};
use crate::support::netns;
use crate::support::python::rjmetrics_python;
use crate::support::tunnel::{IMPORT_HOST, Intercept, import_host_route};

/// What the script does with the client: authenticate, push 250 rows, then the same
/// calls for another client id, each answer as JSON.
const SCRIPT: &str = r#"
import json, sys
import requests
from rjmetrics.client import Client

def answers(responses):
    return [[r.status_code, r.headers.get("content-type"), r.json()] for r in responses]

out = {}
try:
    client = Client(int(sys.argv[1]), "placeholder")
    out["authenticate"] = client.authenticate()
    rows = [{"keys": ["id"], "id": i, "total": i * 1.5} for i in range(250)]
    out["push"] = answers(client.push_data("orders", rows))
    other = Client(999, "placeholder")
    out["other_authenticate"] = other.authenticate()
    out["other_push"] = answers(other.push_data("orders", rows[:1]))
except requests.exceptions.RequestException as e:
    out["error"] = str(e)
print(json.dumps(out))
"#;

/// Runs [`SCRIPT`] for client `cid` with only the proxy and the CA in its environment,
/// in a network namespace whose only way out leads to keygate.
fn run_client(python: &Path, gw: &TestGateway, ca: &Path, cid: u64) -> Value {
    let out = netns::python(python, gw.dir(), SCRIPT, &[&cid.to_string()], gw.addr)
        .env_clear()
        .env("HTTPS_PROXY", "relay")
        .env("REQUESTS_CA_BUNDLE", ca)
        .env("NO_PROXY", "")
        .env("no_proxy", "")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn import_error(status: u16, code: &str) -> impl Fn(&Value) {
    let code = code.to_owned();
    move |answer: &Value| {
        assert_eq!(answer[0], status, "{answer}");
        assert_eq!(answer[1], IMPORT_JSON, "{answer}");
        let body = &answer[2];
        assert_eq!(body["code"], status, "{body}");
        assert_eq!(body["error"], code.as_str(), "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        assert!(body["reasons"].as_array().is_some_and(|r| r.len() == 1), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vendors_python_client_pushes_through_https_proxy_alone() {
    let test = "the_vendors_python_client_pushes_through_https_proxy_alone";
    let Some(python) = rjmetrics_python(test).filter(|_| netns::available(test)) else { return };
    let sb = sandbox(false).await;
    let intercept = Intercept::new(&[IMPORT_HOST]);
    let gw =
        intercept.configure(GatewayBuilder::new()).route(import_host_route(&sb.base_url())).start().await;
    let ca = gw.dir().join("ca.pem");
    std::fs::write(&ca, intercept.ca.pem()).unwrap();

    let out = tokio::task::block_in_place(|| run_client(&python, &gw, &ca, CID));
    assert_eq!(out["authenticate"], true, "{out}");
    let push = out["push"].as_array().unwrap_or_else(|| panic!("{out}"));
    assert_eq!(push.len(), 3, "{out}");
    for (answer, count) in push.iter().zip([100, 100, 50]) {
        assert_eq!(answer[0], 201, "{answer}");
        assert_eq!(answer[1], IMPORT_JSON, "{answer}");
        assert_eq!(answer[2]["count"], count, "{answer}");
    }
    // The wrong client id, as the vendor's errors: 403 with {code, message, reasons}.
    assert_eq!(out["other_authenticate"], false, "{out}");
    out["other_push"].as_array().unwrap().iter().for_each(import_error(403, "client_mismatch"));

    // Upstream: one authenticate and three upserts, each with the real key once and
    // never the caller's placeholder.
    let recorded = sb.recorded();
    let paths: Vec<&str> = recorded.iter().map(|r| r.path.as_str()).collect();
    let data = format!("/v2/client/{CID}/table/orders/data");
    assert_eq!(paths, [format!("/v2/client/{CID}/authenticate"), data.clone(), data.clone(), data], "{out}");
    for r in &recorded {
        assert_eq!(r.query.as_deref(), Some(format!("apikey={IMPORT_KEY}").as_str()), "{}", r.path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vendors_python_client_reports_a_refused_caller() {
    let test = "the_vendors_python_client_reports_a_refused_caller";
    let Some(python) = rjmetrics_python(test).filter(|_| netns::available(test)) else { return };
    let sb = sandbox(false).await;
    let intercept = Intercept::new(&[IMPORT_HOST]);
    // 127.0.0.1 may open a tunnel to the host (another route admits it) but not use
    // its import route: refused inside the tunnel, in the vendor's shape.
    let import = import_host_route(&sb.base_url()).set("allow", "[\"127.0.0.2/32\"]");
    let other =
        RouteSpec::generic(&sb.base_url()).at("status", "/status").set("host", &format!("{IMPORT_HOST:?}"));
    let gw = intercept.configure(GatewayBuilder::new()).route(import).route(other).start().await;
    let ca = gw.dir().join("ca.pem");
    std::fs::write(&ca, intercept.ca.pem()).unwrap();
    let out = tokio::task::block_in_place(|| run_client(&python, &gw, &ca, CID));
    assert_eq!(out["authenticate"], false, "{out}");
    out["push"]
        .as_array()
        .unwrap_or_else(|| panic!("{out}"))
        .iter()
        .for_each(import_error(403, "caller_not_allowed"));
    assert_eq!(out["push"].as_array().unwrap().len(), 3);

    // A caller no route of the host admits gets no tunnel at all: the client reports
    // the proxy's 403 as a connection error.
    let refused = import_host_route(&sb.base_url()).set("allow", "[\"127.0.0.2/32\"]");
    let gw = intercept.configure(GatewayBuilder::new()).route(refused).start().await;
    let ca = gw.dir().join("ca.pem");
    std::fs::write(&ca, intercept.ca.pem()).unwrap();
    let out = tokio::task::block_in_place(|| run_client(&python, &gw, &ca, CID));
    let error = out["error"].as_str().unwrap_or_else(|| panic!("{out}"));
    assert!(error.contains("403"), "{error}");
    assert!(sb.recorded().is_empty(), "a refused caller's request reached the upstream");
}
