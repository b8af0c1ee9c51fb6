//! Secrets never leak (reliability 33–34, design §2): a scripted session against the
//! real binary with recognisable sentinel keys — allowed and denied requests, upstream
//! errors, an upstream that echoes the key back in headers, `Location` and error bodies,
//! a key rotation, a bad reload whose broken file holds a key, `check`, `/metrics` and
//! `/config`, then SIGTERM — captures everything a caller, an operator or a log reader
//! could see, and finds no key in it, raw or percent-encoded.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use support::client::{request, send};
use support::upstream::{Answer, FakeUpstream, Recorded, reply};

const IMPORT: &str = "SENTINEL-import/key+1=";
const EXPORT: &str = "SENTINEL-export:key 2";
const GENERIC: &str = "SENTINEL-generic&key3";
const ROTATED: &str = "SENTINEL-rotated/key4";
const BROKEN: &str = "SENTINEL-inline-in-broken-file5";

/// Every form in which a key could show up.
fn forms(key: &str) -> Vec<String> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    const UNRESERVED: &percent_encoding::AsciiSet =
        &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    let mut out = vec![key.to_owned(), key.replace(' ', "+")];
    for set in [NON_ALPHANUMERIC, UNRESERVED] {
        let upper: String = utf8_percent_encode(key, set).collect();
        out.push(upper.to_ascii_lowercase().replace("sentinel", "SENTINEL"));
        out.push(upper.replace("%20", "+"));
        out.push(upper);
    }
    out
}

/// An upstream that echoes whatever credential it received, everywhere it can.
fn echo() -> support::upstream::Handler {
    Arc::new(|r: &Recorded| -> Answer {
        let query_key = r
            .query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter_map(|p| p.split_once('='))
            .filter(|(n, _)| *n == "apikey" || *n == "key")
            .map(|(_, v)| v.to_owned())
            .next()
            .unwrap_or_default();
        let header_key =
            r.header("x-rjm-api-key").into_iter().chain(r.header("authorization")).next().unwrap_or_default();
        let decoded = percent_encoding::percent_decode_str(&query_key).decode_utf8_lossy().into_owned();
        let echo = format!("{query_key} {decoded} {header_key}");
        let location = format!("/next?apikey={query_key}&x=1");
        let body = serde_json::json!({"code": 401, "message": format!("bad key {echo}"), "reasons": [echo]});
        let status = if r.path.contains("fail") {
            401
        } else if r.path.contains("redirect") {
            302
        } else {
            200
        };
        // 2xx bodies stream untouched by contract (design §3), so only errors echo in the body.
        let body = if status == 200 { "ok".to_owned() } else { body.to_string() };
        let ct = if status == 200 { "text/plain" } else { "application/json" };
        reply(status, &[("content-type", ct), ("x-echo", &echo), ("location", &location)], &body)
    })
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn config(dir: &Path, upstream: SocketAddr, closed: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"
[admin]
listen = "127.0.0.1:0"
[reload]
debounce = "20ms"
poll_interval = "1h"
[log]
level = "debug"
[secrets.imp]
file = "{d}/import.key"
[secrets.exp]
file = "{d}/export.key"
[secrets.gen]
env = "KEYGATE_LEAK_TEST_GENERIC"
[[routes]]
name = "imp"
prefix = "/import"
preset = "rjmetrics-import"
client_id = 12345
secret = "imp"
allow = ["127.0.0.0/8"]
upstream = "http://{upstream}"
[[routes]]
name = "exp"
prefix = "/export"
preset = "rjmetrics-export"
client_id = 12345
secret = "exp"
allow = ["127.0.0.0/8"]
upstream = "http://{upstream}"
[[routes]]
name = "gen"
prefix = "/gen"
upstream = "http://{upstream}"
inject = {{ header = "Authorization", format = "Bearer {{secret}}" }}
secret = "gen"
allow = ["127.0.0.0/8"]
[[routes]]
name = "down"
prefix = "/down"
upstream = "http://{closed}"
inject = {{ query = "key" }}
secret = "gen"
allow = ["127.0.0.0/8"]
[[routes]]
name = "closed"
prefix = "/closed"
upstream = "http://{upstream}"
inject = {{ query = "key" }}
secret = "gen"
allow = ["10.0.0.0/8"]
"#,
        d = dir.display()
    )
}

/// A scripted request: method, target, headers, body.
type Call = (Method, String, Vec<(&'static str, &'static str)>, &'static [u8]);

struct Keygate {
    child: Child,
    out: Arc<Mutex<String>>,
    gateway: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Keygate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config: &Path) -> Keygate {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["run", "-c"])
        .arg(config)
        .env("KEYGATE_LEAK_TEST_GENERIC", GENERIC)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let sink = out.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&line);
            sink.lock().unwrap().push('\n');
            let _ = tx.send(line);
        }
    });
    let (mut gateway, mut admin) = (None, None);
    while gateway.is_none() || admin.is_none() {
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("keygate announces its listeners");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if v["message"] == "listening" {
            let addr: SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
            match v["listener"].as_str() {
                Some("gateway") => gateway = Some(addr),
                Some("admin") => admin = Some(addr),
                _ => {}
            }
        }
    }
    Keygate { child, out, gateway: gateway.unwrap(), admin: admin.unwrap() }
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
}

#[tokio::test]
async fn no_key_appears_in_anything_a_caller_or_operator_can_see() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("import.key"), &format!("{IMPORT}\n"));
    write(&d.join("export.key"), EXPORT);
    let upstream = FakeUpstream::start(echo()).await;
    let closed = support::closed_port();
    let cfg_path = d.join("keygate.toml");
    write(&cfg_path, &config(d, upstream.addr, closed));

    let mut seen = String::new();
    let check = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["check", "-c"])
        .arg(&cfg_path)
        .env("KEYGATE_LEAK_TEST_GENERIC", GENERIC)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    seen += &String::from_utf8_lossy(&check.stdout);
    seen += &String::from_utf8_lossy(&check.stderr);

    let mut kg = spawn(&cfg_path);
    let (gw, admin) = (kg.gateway, kg.admin);
    let cid = "/v2/client/12345";
    let calls: Vec<Call> = vec![
        (Method::GET, format!("/import{cid}/authenticate?apikey=dummy"), vec![], b""),
        (Method::POST, format!("/import{cid}/table/redirect/data"), vec![], br#"[{"keys":["id"],"id":1}]"#),
        (
            Method::POST,
            format!("/import{cid}/table/fail/data?apikey=mine"),
            vec![],
            br#"{"keys":["id"],"id":1}"#,
        ),
        (Method::POST, format!("/import{cid}/table/t/data"), vec![], br#"[{"id":1}]"#),
        (Method::GET, "/import/v2/client/999/authenticate".into(), vec![], b""),
        (Method::GET, "/export/0.1/export".into(), vec![("x-rjm-api-key", "mine")], b""),
        (Method::GET, "/export/0.1/export/fail".into(), vec![], b""),
        (Method::GET, "/export/0.1/export/redirect".into(), vec![], b""),
        (Method::GET, "/gen/fail/x?key=1".into(), vec![("authorization", "Bearer mine")], b""),
        (Method::GET, "/gen/ok".into(), vec![], b""),
        (Method::GET, "/down/x".into(), vec![], b""),
        (Method::GET, "/closed/x".into(), vec![], b""),
        (Method::GET, "/nowhere".into(), vec![], b""),
        (Method::GET, "/import/../etc".into(), vec![], b""),
    ];
    let mut statuses = Vec::new();
    for (method, target, headers, body) in &calls {
        let r = send(gw, request(method.clone(), target, headers, body)).await;
        statuses.push(r.status);
        seen += &r.dump();
    }
    assert_eq!(statuses, [200, 302, 401, 400, 403, 200, 401, 302, 401, 200, 502, 403, 404, 400], "{seen}");
    // The upstream really did receive every key, so the echo tests mean something.
    let up = upstream.recorded().iter().map(Recorded::dump).collect::<String>();
    for key in [EXPORT, GENERIC] {
        assert!(up.contains(key), "upstream never saw {key}");
    }
    assert!(up.contains("apikey=SENTINEL-import%2Fkey%2B1%3D"), "{up}");

    // Rotate the import key, then break the config with a key inside the broken file.
    write(&d.join("import.key"), ROTATED);
    signal(&kg.child, "-HUP");
    let admin_get =
        |path: &'static str| async move { send(admin, request(Method::GET, path, &[], b"")).await };
    support::eventually("generation 2", Duration::from_secs(10), || async {
        admin_get("/config").await.json()["generation"] == 2
    })
    .await;
    let r = send(
        gw,
        request(Method::POST, &format!("/import{cid}/table/fail/data"), &[], br#"{"keys":["k"],"k":1}"#),
    )
    .await;
    assert_eq!(r.status, 401);
    seen += &r.dump();
    assert!(
        upstream.recorded().iter().any(|r| r
            .query
            .as_deref()
            .unwrap_or("")
            .contains("SENTINEL-rotated%2Fkey4"))
    );
    let broken = format!("{}\n[secrets.oops]\nvalue = \"{BROKEN}\n", config(d, upstream.addr, closed));
    write(&cfg_path, &broken);
    signal(&kg.child, "-HUP");
    let failures = || async {
        let text = admin_get("/metrics").await.text();
        support::metric_value(&text, "keygate_config_reloads_total", &[("result", "failure")]).unwrap_or(0.0)
    };
    support::eventually("a failed reload", Duration::from_secs(10), || async { failures().await >= 1.0 })
        .await;
    let before = failures().await;
    write(&d.join("export.key"), "");
    write(&cfg_path, &config(d, upstream.addr, closed));
    signal(&kg.child, "-HUP");
    support::eventually("another failed reload", Duration::from_secs(10), || async {
        failures().await > before
    })
    .await;
    for path in ["/metrics", "/config", "/readyz", "/healthz"] {
        seen += &admin_get(path).await.dump();
    }

    signal(&kg.child, "-TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = kg.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "keygate did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let mut stderr = String::new();
    kg.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let stdout = kg.out.lock().unwrap().clone();
    assert!(stdout.contains("\"message\":\"request\""), "the access log ran");
    assert!(stdout.contains("reload failed"), "the failed reloads were logged");
    assert!(!stderr.contains("panicked") && !stdout.contains("panicked"));
    seen += &stdout;
    seen += &stderr;

    for key in [IMPORT, EXPORT, GENERIC, ROTATED, BROKEN] {
        for form in forms(key) {
            assert!(!seen.contains(&form), "{form:?} leaked into:\n{seen}");
        }
    }
    // The redactions did happen where the upstream echoed a key.
    assert!(seen.contains("[REDACTED]"), "{seen}");
}
