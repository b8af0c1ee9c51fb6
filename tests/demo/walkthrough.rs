//! `keygate demo` end to end: spawn the built binary on free ports, check it prints the
//! walkthrough, run exactly those commands (the curl requests through the gateway, never
//! directly against the sandbox, from the source address each names; the shell lines
//! with `sh`; each `| grep …` with grep), and assert what each step promises. The last
//! steps' requests go as curl sends them through `HTTPS_PROXY`: a `CONNECT` to the URL's
//! host, TLS inside trusting the run's CA, then the request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use http::{HeaderValue, Method};
use keygate::demo::{Command, Curl, Ports, SHADOW_CALLER, Step, walkthrough};

use crate::support::client::{IMPORT_JSON, Reply, request, send_from};
use crate::support::poll::{SOON, eventually};
use crate::support::process::{Keygate, Launch, run};
use crate::support::tunnel::open;

/// A running demo and what it printed.
pub struct Demo {
    pub process: Keygate,
    pub printed: String,
    pub ports: Ports,
    pub dir: PathBuf,
}

/// The second word of the banner line starting with `label`.
fn word_after(output: &str, label: &str) -> String {
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line in:\n{output}"));
    line.split_whitespace().nth(1).unwrap().to_owned()
}

fn addr_after(output: &str, label: &str) -> SocketAddr {
    word_after(output, label).trim_start_matches("http://").parse().unwrap()
}

/// Starts `keygate demo --port 0` and reads its ports and directory off the banner.
pub async fn start_demo() -> Demo {
    // Stopped as a user stops it, so that no test leaves the demo's keys behind.
    let process = Launch::args(["demo", "--port", "0"]).spawn().stopped_by("INT");
    let printed = process
        .wait_line("the demo's walkthrough", Duration::from_secs(30), |l| {
            l.starts_with("Log lines (access, reloads, SIGHUP, shadow_allow) follow")
        })
        .await;
    let ports = Ports {
        gateway: addr_after(&printed, "gateway"),
        admin: addr_after(&printed, "admin"),
        sandbox: addr_after(&printed, "sandbox"),
    };
    let dir = PathBuf::from(word_after(&printed, "files"));
    Demo { process, printed, ports, dir }
}

/// What a curl command showed: the reply, and its body as printed (after `| grep …`).
struct Shown {
    reply: Reply,
    text: String,
}

/// Sends exactly the request `curl` describes: its method, URL (host and port, path and
/// query), content type and body, from its source address; through the proxy it names,
/// trusting its CA file, when it names one.
async fn send_curl(curl: &Curl) -> Shown {
    let uri: http::Uri = curl.url.parse().unwrap();
    let authority = uri.authority().unwrap().as_str();
    let headers: Vec<(&str, &str)> = curl.content_type.iter().map(|ct| ("content-type", *ct)).collect();
    let method = Method::from_bytes(curl.method.as_bytes()).unwrap();
    // A body a shell command prints is exactly what it printed.
    let body = match curl.body_command {
        Some(command) => Process::new("sh").arg("-c").arg(command).output().unwrap().stdout,
        None => curl.body.unwrap_or("").as_bytes().to_vec(),
    };
    let mut req = request(method, uri.path_and_query().unwrap().as_str(), &headers, &body);
    req.headers_mut().insert("host", HeaderValue::from_str(authority).unwrap());
    let reply = match (&curl.proxy, &curl.cacert) {
        (Some(proxy), Some(ca)) => {
            assert_eq!(uri.scheme_str(), Some("https"), "through the proxy: the vendor's https URL");
            let gateway = proxy.strip_prefix("http://").unwrap().parse().unwrap();
            let ca_pem = std::fs::read_to_string(ca).unwrap();
            let mut tunnel = open(gateway, &ca_pem, uri.host().unwrap(), false).await;
            tunnel.send(req).await.unwrap()
        }
        (None, None) => {
            send_from(curl.from.unwrap_or([127, 0, 0, 1].into()), authority.parse().unwrap(), req).await
        }
        _ => panic!("a proxy and its CA go together: {}", curl.line()),
    };
    let text = match curl.grep {
        Some(args) => grep(args, &reply.body),
        None => reply.text(),
    };
    Shown { reply, text }
}

/// `grep ARGS` over `input`, as the printed pipe runs it.
fn grep(args: &str, input: &[u8]) -> String {
    let mut child = Process::new("sh")
        .arg("-c")
        .arg(format!("grep {args}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

async fn curl(command: &Command) -> Shown {
    match command {
        Command::Curl(c) => send_curl(c).await,
        Command::Shell(line) => panic!("expected a curl command, got `{line}`"),
    }
}

fn shell(command: &Command) {
    let Command::Shell(line) = command else { panic!("expected a shell line, got `{}`", command.line()) };
    let out = Process::new("sh").arg("-c").arg(line).output().unwrap();
    assert!(out.status.success(), "`{line}`: {}", String::from_utf8_lossy(&out.stderr));
}

/// The secrets in the `"secrets":[…]}` tail of `/config` the walkthrough greps out.
fn secrets(shown: &str) -> Vec<serde_json::Value> {
    let list = shown.trim().strip_prefix("\"secrets\":").and_then(|s| s.strip_suffix('}'));
    let list: serde_json::Value = serde_json::from_str(list.unwrap_or_else(|| panic!("{shown}"))).unwrap();
    list.as_array().unwrap().clone()
}

/// The fingerprint of each secret's key in use.
fn fingerprints(shown: &str) -> BTreeMap<String, String> {
    let secret = |s: &serde_json::Value| {
        (s["name"].as_str().unwrap().into(), s["fingerprint"].as_str().unwrap().into())
    };
    secrets(shown).iter().map(secret).collect()
}

/// The fingerprint of each secret's rejected key, for those that have one.
fn rejected(shown: &str) -> BTreeMap<String, String> {
    let secret = |s: &serde_json::Value| {
        Some((s["name"].as_str()?.into(), s["rejected"]["fingerprint"].as_str()?.into()))
    };
    secrets(shown).iter().filter_map(secret).collect()
}

fn key_fingerprint(path: &Path) -> String {
    keygate::secret::Secret::parse(&std::fs::read_to_string(path).unwrap()).unwrap().fingerprint()
}

#[tokio::test]
async fn demo_walkthrough_runs_through_the_gateway() {
    let Demo { mut process, printed, ports, dir } = start_demo().await;
    let steps = walkthrough(&ports, &dir);
    let ids: Vec<&str> = steps.iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        [
            "push",
            "tables",
            "export",
            "export_info",
            "download",
            "client_mismatch",
            "caller_not_allowed",
            "shadow_allow",
            "rotate",
            "restore",
            "metrics",
            "bulk_push",
            "update_status",
            "vendor_metrics",
            "proxy_push",
            "proxy_tables",
            "proxy_refusal"
        ]
    );
    for command in steps.iter().flat_map(|s| &s.commands) {
        assert!(printed.contains(&command.line()), "the demo must print `{}`", command.line());
        match command {
            Command::Curl(Curl { proxy: Some(proxy), url, .. }) => {
                assert_eq!(proxy, &format!("http://{}", ports.gateway), "through keygate");
                assert!(url.starts_with("https://") && url.contains(".rjmetrics.com/"), "vendor URLs: {url}");
            }
            Command::Curl(c) => {
                assert!(c.url.starts_with("http://127.0.0.1:"), "literal loopback URLs: {}", c.url);
                assert!(!c.url.contains(&ports.sandbox.to_string()), "steps go through keygate: {}", c.url);
            }
            Command::Shell(_) => {}
        }
    }
    for file in ["keygate.toml", "bi-import-key", "bi-export-key", "ca.crt", "intercept.crt", "intercept.key"]
    {
        assert!(dir.join(file).exists(), "the banner's directory holds {file}");
    }
    // The run's CA: its certificate only (its key was never written), named on the banner.
    let ca = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    assert!(ca.contains("BEGIN CERTIFICATE") && !ca.contains("PRIVATE KEY"), "{ca}");
    assert!(printed.contains(&format!("ca       {}", dir.join("ca.crt").display())), "{printed}");
    assert!(printed.contains("HTTPS_PROXY=http://"), "how an unmodified client is pointed: {printed}");
    let original = key_fingerprint(&dir.join("bi-import-key"));
    assert!(printed.contains(&format!("bi_import sha256:{original}")), "{printed}");

    for step in &steps {
        run_step(step, &process, &dir, &original).await;
    }

    // A SIGHUP with nothing changed is acknowledged at the demo's log level.
    process.sighup();
    process
        .wait_line("the SIGHUP acknowledgement", SOON, |l| l.contains("SIGHUP handled: nothing changed"))
        .await;

    // Ctrl-C stops it cleanly and removes the config and the keys.
    process.signal("INT");
    let exit = process.exit_code(Duration::from_secs(20)).await;
    assert_eq!(exit, Some(0), "the demo exits 0 on Ctrl-C");
    assert!(!dir.exists(), "the demo removes its directory");
    let stderr = process.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Runs one step's commands and asserts what its title promises.
async fn run_step(step: &Step, process: &Keygate, dir: &Path, original: &str) {
    let c = &step.commands;
    match step.id {
        "push" => assert_eq!(curl(&c[0]).await.reply.status, 201),
        "tables" => {
            let shown = curl(&c[0]).await;
            assert_eq!(shown.reply.status, 200);
            assert!(shown.text.contains("\"orders\""), "tables: {}", shown.text);
        }
        "export" => {
            let created: serde_json::Value = serde_json::from_str(&curl(&c[0]).await.text).unwrap();
            assert_eq!(created["export_id"], 1, "{created}");
        }
        "export_info" => assert_eq!(curl(&c[0]).await.reply.status, 200),
        "download" => {
            let shown = curl(&c[0]).await;
            assert_eq!(shown.reply.status, 200, "download: {}", shown.text);
            // A real zip holding orders.csv with the pushed rows.
            let mut zip = zip::ZipArchive::new(std::io::Cursor::new(shown.reply.body.clone())).unwrap();
            let mut csv = String::new();
            zip.by_name("orders.csv").unwrap().read_to_string(&mut csv).unwrap();
            let lines: Vec<&str> = csv.lines().collect();
            assert_eq!(lines, ["id,item,total", "1,lamp,19.5", "2,desk,120"], "{csv}");
        }
        "client_mismatch" | "caller_not_allowed" => {
            let Command::Curl(request) = &c[0] else { panic!() };
            assert!(request.headers, "the header is the point: `curl -i`");
            curl(&c[0]).await.reply.assert_refusal(403, step.id);
        }
        "shadow_allow" => {
            let shown = curl(&c[0]).await;
            assert_eq!((shown.reply.status, shown.reply.header("x-keygate-error")), (200, None));
            let counted = curl(&c[1]).await.text;
            assert_eq!(counted, "keygate_shadow_denied_total{route=\"bi-export\"} 1\n");
            process
                .wait_line("the keygate::shadow line", SOON, |l| {
                    l.contains("keygate::shadow") && l.contains(&format!("caller={SHADOW_CALLER}"))
                })
                .await;
        }
        "rotate" => rotate(c, dir, original).await,
        "restore" => {
            shell(&c[0]);
            eventually("the rejection cleared in /config", SOON, || async {
                let shown = curl(&c[1]).await.text;
                rejected(&shown).is_empty() && fingerprints(&shown)["bi_import"] == original
            })
            .await;
            assert_eq!(curl(&c[2]).await.reply.status, 201, "the old key is still accepted");
        }
        "metrics" => {
            let shown = curl(&c[0]).await.text;
            for line in [
                // The push, the push during the rejected rotation, the push after it.
                "keygate_requests_total{caller=\"local\",code=\"201\",operation=\"upsert\",route=\"bi-import\"} 3",
                "keygate_requests_total{caller=\"local\",code=\"403\",operation=\"-\",route=\"bi-export\"} 1",
                "keygate_requests_total{caller=\"-\",code=\"403\",operation=\"-\",route=\"bi-import\"} 1",
                "keygate_requests_total{caller=\"-\",code=\"200\",operation=\"list_tables\",route=\"bi-export\"} 1",
                "keygate_requests_total{caller=\"local\",code=\"200\",operation=\"download_export\",route=\"bi-export\"} 1",
            ] {
                assert!(shown.lines().any(|l| l == line), "metrics lack {line}:\n{shown}");
            }
            assert!(shown.lines().all(|l| l.starts_with("keygate_requests_total{")), "{shown}");
            assert!(!shown.contains("code=\"401\""), "a rotation never made a request fail:\n{shown}");
        }
        "proxy_push" => {
            let shown = curl(&c[0]).await;
            assert_eq!(shown.reply.status, 201, "{}", shown.text);
            assert_eq!(shown.reply.header("content-type").as_deref(), Some(IMPORT_JSON));
        }
        "proxy_tables" => {
            let shown = curl(&c[0]).await;
            assert_eq!(shown.reply.status, 200);
            assert!(shown.text.contains("\"orders\""), "tables: {}", shown.text);
        }
        "proxy_refusal" => {
            let Command::Curl(request) = &c[0] else { panic!() };
            assert!(request.headers, "`curl -i` shows the x-keygate-error header");
            let reply = curl(&c[0]).await.reply;
            // assert_refusal checks the Import API's {code, message, reasons} shape too.
            reply.assert_refusal(403, "client_mismatch");
            assert_eq!(reply.header("content-type").as_deref(), Some(IMPORT_JSON));
        }
        "bulk_push" | "update_status" | "vendor_metrics" => vendor_limits(step).await,
        other => panic!("no assertions for step {other}: every printed step must be run"),
    }
}

/// The key rotation: the old key is copied aside, a new one saved by rename; keygate
/// proves it, the sandbox refuses it, `/config` shows it rejected beside the running key,
/// the push still succeeds, and keygate counts the rejection.
async fn rotate(c: &[Command], dir: &Path, original: &str) {
    for line in &c[..3] {
        shell(line);
    }
    let key = dir.join("bi-import-key");
    let rotated = key_fingerprint(&key);
    assert_ne!(rotated, original, "a new key");
    assert_eq!(key_fingerprint(&dir.join("bi-import-key.old")), original, "the old key is kept aside");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the new key file is private: {mode:o}");
    }
    // Proven before use, refused by the sandbox: the running key stays.
    let shown = eventually("the new key rejected in /config", SOON, || async {
        let shown = curl(&c[3]).await.text;
        (rejected(&shown).get("bi_import") == Some(&rotated)).then_some(shown)
    })
    .await;
    assert_eq!(fingerprints(&shown)["bi_import"], original, "the running key stays in use");
    assert!(!shown.contains(&std::fs::read_to_string(&key).unwrap()), "/config shows no key");
    let Command::Curl(push) = &c[4] else { panic!() };
    assert!(push.headers, "`curl -i` shows that the push still goes through");
    let pushed = curl(&c[4]).await.reply;
    assert_eq!((pushed.status, pushed.header("x-keygate-error")), (201, None), "{}", pushed.text());
    let counted = curl(&c[5]).await.text;
    assert_eq!(
        counted,
        "keygate_secret_verifications_total{result=\"rejected\",secret=\"bi_export\"} 0\n\
         keygate_secret_verifications_total{result=\"rejected\",secret=\"bi_import\"} 1\n"
    );
}

#[tokio::test]
async fn the_demo_gateway_answers_on_both_loopbacks() {
    let demo = start_demo().await;
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, demo.ports.gateway.port()));
    if demo.printed.contains(&format!("(and http://{v6})")) {
        let path = "/export/0.1/client/12345/table";
        let reply = crate::support::client::get_from(v6.ip(), v6, path).await;
        assert_eq!(reply.status, 200, "::1 is in group `local`: {}", reply.text());
    } else {
        // No ::1 here: the demo still runs, and said why on stderr.
        let stderr = demo.process.stderr();
        assert!(stderr.contains("the gateway serves 127.0.0.1 only"), "{stderr}");
    }
    // A test's demo is stopped with Ctrl-C when dropped: its keys go with it.
    let dir = demo.dir.clone();
    assert!(dir.exists());
    drop(demo);
    assert!(!dir.exists(), "a test's demo leaves its keys behind");
}

#[test]
fn demo_refuses_a_busy_port_with_a_clear_message() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    // The sandbox takes PORT+2: make PORT itself the busy one by asking for PORT.
    let out = run(&["demo", "--port", &port.to_string()]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("cannot listen on"), "{}", out.stderr);
}

/// The vendor's limits: 1,050 rows answered with 11 stored batches; a second
/// update-status call answered by the guard (the sandbox would have answered 429).
async fn vendor_limits(step: &Step) {
    let c = &step.commands;
    match step.id {
        "bulk_push" => {
            let shown = curl(&c[0]).await;
            assert_eq!(shown.reply.status, 201, "bulk push: {}", shown.text);
            assert_eq!(shown.reply.header("x-keygate-batches").as_deref(), Some("11"));
            let bulk: serde_json::Value = serde_json::from_str(&shown.text).unwrap();
            assert_eq!(bulk["batches"].as_array().map(Vec::len), Some(11), "{bulk}");
        }
        "update_status" => {
            let (first, second) = (curl(&c[0]).await.reply, curl(&c[1]).await.reply);
            assert_eq!((first.status, second.status), (200, 200), "{} / {}", first.text(), second.text());
            assert_eq!(first.body, second.body);
            let cache = second.header("cache-control");
            assert!(
                second.header("age").is_some() && cache.as_deref().is_some_and(|c| c.starts_with("max-age=")),
                "{cache:?}"
            );
        }
        _ => {
            let shown = curl(&c[0]).await.text;
            for line in [
                "keygate_import_batches_total{result=\"created\",route=\"bi-import\"} 11",
                "keygate_update_status_answers_total{route=\"bi-export\",source=\"cached\"} 1",
                "keygate_update_status_answers_total{route=\"bi-export\",source=\"upstream\"} 1",
            ] {
                assert!(shown.lines().any(|l| l == line), "metrics lack {line}:\n{shown}");
            }
        }
    }
}
