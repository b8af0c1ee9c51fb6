//! The demo's walkthrough: numbered steps, each one or more copy-paste commands (`curl`
//! requests with literal `http://127.0.0.1:PORT/...` URLs, and the shell lines that
//! replace a key file); the last steps send the vendor's own `https://` URLs through
//! `HTTPS_PROXY` instead. The end-to-end test runs exactly these commands.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use super::files::{IMPORT_KEY_FILE, REFUSED_CALLER, SHADOW_CALLER};
use super::intercept::{CA_FILE, VENDOR_HOSTS};
use super::{CLIENT_ID, Ports};

/// One walkthrough step: why, and the commands to run in order.
#[derive(Debug, Clone)]
pub struct Step {
    /// A stable name for the step (the test asserts each by it).
    pub id: &'static str,
    pub title: String,
    pub commands: Vec<Command>,
}

/// One command of a step.
#[derive(Debug, Clone)]
pub enum Command {
    Curl(Curl),
    /// A POSIX shell line (file changes in the demo's directory).
    Shell(String),
}

impl Command {
    /// The line printed for this command.
    pub fn line(&self) -> String {
        match self {
            Command::Curl(curl) => curl.line(),
            Command::Shell(line) => line.clone(),
        }
    }
}

/// One `curl` request.
#[derive(Debug, Clone)]
pub struct Curl {
    pub method: &'static str,
    /// A literal `http://127.0.0.1:PORT/...` URL, or the vendor's own `https://` URL
    /// when `proxy` is set.
    pub url: String,
    pub content_type: Option<&'static str>,
    pub body: Option<&'static str>,
    /// A shell command whose output is the body, piped into curl (`--data-binary @-`).
    pub body_command: Option<&'static str>,
    /// Save the response body to this file instead of printing it.
    pub output: Option<&'static str>,
    /// Pipe the output through `grep` with these arguments (a POSIX shell word list).
    pub grep: Option<&'static str>,
    /// Send from this loopback address (`--interface`).
    pub from: Option<IpAddr>,
    /// Print the status line and headers too (`-i`): where a header is the point.
    pub headers: bool,
    /// Sent through `HTTPS_PROXY=<this>` (the gateway), trusting `cacert`.
    pub proxy: Option<String>,
    /// The CA file `curl --cacert` trusts (the run's throw-away intercept CA).
    pub cacert: Option<String>,
}

impl Curl {
    fn get(url: String) -> Curl {
        Curl {
            method: "GET",
            url,
            content_type: None,
            body: None,
            body_command: None,
            output: None,
            grep: None,
            from: None,
            headers: false,
            proxy: None,
            cacert: None,
        }
    }

    /// The copy-paste `curl` command.
    pub fn line(&self) -> String {
        let mut cmd = match self.body_command {
            Some(command) => format!("{command} | "),
            None => String::new(),
        };
        if let Some(proxy) = &self.proxy {
            let _ = write!(cmd, "HTTPS_PROXY={proxy} ");
        }
        cmd.push_str(if self.headers { "curl -si" } else { "curl -s" });
        if let Some(ca) = &self.cacert {
            let _ = write!(cmd, " --cacert {ca}");
        }
        if let Some(from) = self.from {
            let _ = write!(cmd, " --interface {from}");
        }
        if self.method != "GET" {
            let _ = write!(cmd, " -X {}", self.method);
        }
        if let Some(ct) = self.content_type {
            let _ = write!(cmd, " -H 'Content-Type: {ct}'");
        }
        if let Some(body) = self.body {
            let _ = write!(cmd, " -d '{body}'");
        }
        if self.body_command.is_some() {
            cmd.push_str(" --data-binary @-");
        }
        if let Some(out) = self.output {
            let _ = write!(cmd, " -o {out}");
        }
        let _ = write!(cmd, " '{}'", self.url);
        if let Some(pattern) = self.grep {
            let _ = write!(cmd, " | grep {pattern}");
        }
        cmd
    }
}

impl From<Curl> for Command {
    fn from(curl: Curl) -> Command {
        Command::Curl(curl)
    }
}

/// Rows the walkthrough pushes.
const ROWS: &str =
    r#"[{"keys":["id"],"id":1,"item":"lamp","total":19.5},{"keys":["id"],"id":2,"item":"desk","total":120}]"#;

/// The walkthrough, in order, for a demo serving on `ports` with its files in `dir`.
pub fn walkthrough(ports: &Ports, dir: &Path) -> Vec<Step> {
    let urls = Urls { gw: format!("http://{}", ports.gateway), admin: format!("http://{}", ports.admin) };
    let mut steps = data_steps(&urls);
    steps.extend(refusal_steps(&urls));
    steps.push(rotation(&urls, dir));
    steps.push(restore(&urls, dir));
    steps.push(step(
        "metrics",
        "What keygate counted: every request, by route, operation, caller group and code.",
        vec![urls.metrics("^keygate_requests_total").into()],
    ));
    steps.extend(vendor_limits(&urls));
    steps.extend(proxy_steps(&urls, dir));
    steps
}

/// Prints 1,050 rows for table `events`: more than one upsert may carry.
const BULK_ROWS: &str = r#"awk 'BEGIN { printf "["; for (i = 1; i <= 1050; i++) printf "%s{\"keys\":[\"id\"],\"id\":%d,\"kind\":\"click\"}", (i > 1 ? "," : ""), i; print "]" }'"#;

/// The vendor's limits met by keygate: a push of 1,050 rows answered with its batches,
/// and update-status calls (one a minute upstream) answered by the guard.
fn vendor_limits(urls: &Urls) -> Vec<Step> {
    let status =
        || Curl { headers: true, ..urls.gw(&format!("/export/0.1/client/{CLIENT_ID}/fullupdatestatus")) };
    let bulk = Curl {
        method: "POST",
        content_type: Some("application/json"),
        body_command: Some(BULK_ROWS),
        ..urls.gw(&format!("/import/v2/client/{CLIENT_ID}/table/events/data"))
    };
    vec![
        step(
            "bulk_push",
            "Push 1,050 rows in one request. The vendor takes 100 per upsert: keygate sends 11 in order (retrying 429 and 5xx) and answers with the batches.",
            vec![bulk.into()],
        ),
        step(
            "update_status",
            "Ask for the update-cycle status twice (the vendor allows one call a minute): the second answer comes from keygate's guard (see age and cache-control) instead of a 429.",
            vec![status().into(), status().into()],
        ),
        step(
            "vendor_metrics",
            "What the batches and the guard did.",
            vec![urls.metrics("-E '^keygate_(import_batches|update_status_answers)_total'").into()],
        ),
    ]
}

/// The gateway's and the admin listener's base URLs, and the requests steps share.
struct Urls {
    gw: String,
    admin: String,
}

impl Urls {
    fn gw(&self, path: &str) -> Curl {
        Curl::get(format!("{}{path}", self.gw))
    }

    /// The walkthrough's push of [`ROWS`], with a placeholder key.
    fn push(&self) -> Curl {
        let path = format!("/import/v2/client/{CLIENT_ID}/table/orders/data?apikey=placeholder");
        Curl { method: "POST", content_type: Some("application/json"), body: Some(ROWS), ..self.gw(&path) }
    }

    fn metrics(&self, grep: &'static str) -> Curl {
        Curl { grep: Some(grep), ..Curl::get(format!("{}/metrics", self.admin)) }
    }

    /// `/config` is one line of JSON; its secrets (name and fingerprint) come last.
    fn config_secrets(&self) -> Curl {
        Curl { grep: Some(r#"-o '"secrets":.*'"#), ..Curl::get(format!("{}/config", self.admin)) }
    }
}

fn step(id: &'static str, title: &str, commands: Vec<Command>) -> Step {
    Step { id, title: title.to_owned(), commands }
}

/// Rows in, and tables and an export out, through the two routes.
fn data_steps(urls: &Urls) -> Vec<Step> {
    let export = format!("/export/0.1/client/{CLIENT_ID}/table/orders/export");
    vec![
        step(
            "push",
            "Push two rows into table `orders` through the import route. The apikey here is a placeholder: keygate removes it and adds the real one.",
            vec![urls.push().into()],
        ),
        step(
            "tables",
            "List the warehouse tables through the export route (no key in the request).",
            vec![urls.gw(&format!("/export/0.1/client/{CLIENT_ID}/table")).into()],
        ),
        step(
            "export",
            "Start an export of the whole table; the answer holds its export_id (1).",
            vec![Curl { method: "POST", ..urls.gw(&export) }.into()],
        ),
        step(
            "export_info",
            "Ask how the export is doing: the first poll says Pending, later ones Completed.",
            vec![urls.gw("/export/0.1/export/1/info").into()],
        ),
        step(
            "download",
            "Download the export: a zip holding orders.csv (try `unzip -p orders.zip`).",
            vec![Curl { output: Some("orders.zip"), ..urls.gw("/export/0.1/export/1") }.into()],
        ),
    ]
}

/// What keygate refuses (another client id, a caller outside the group), and what a
/// `shadow_allow` would refuse without refusing it.
fn refusal_steps(urls: &Urls) -> Vec<Step> {
    let tables = format!("/export/0.1/client/{CLIENT_ID}/table");
    let authenticate = format!("/import/v2/client/{CLIENT_ID}/authenticate");
    vec![
        step(
            "client_mismatch",
            "A refused request: another client id. keygate answers itself: 403 with the header x-keygate-error: client_mismatch.",
            vec![Curl { headers: true, ..urls.gw("/export/0.1/client/999/table") }.into()],
        ),
        step(
            "caller_not_allowed",
            "A refused caller: 127.0.0.2 is not in group `local`, so the import route answers 403 caller_not_allowed before anything goes upstream.",
            vec![Curl { from: Some(REFUSED_CALLER), headers: true, ..urls.gw(&authenticate) }.into()],
        ),
        step(
            "shadow_allow",
            "A dry run of a narrower list: the export route admits 127.0.0.3, its shadow_allow (group `local` only) would not. The request succeeds, and is counted and logged (a `keygate::shadow` line below).",
            vec![
                Curl { from: Some(SHADOW_CALLER), ..urls.gw(&tables) }.into(),
                urls.metrics("^keygate_shadow_denied_total").into(),
            ],
        ),
    ]
}

/// A key rotation, the way an operator does it: keep a copy of the old key, save a new
/// one by rename (keygate reloads it at once), see the new fingerprint in `/config`, and
/// the upstream's 401 for a key it does not know, counted.
fn rotation(urls: &Urls, dir: &Path) -> Step {
    let key = file(dir, IMPORT_KEY_FILE);
    let (old, new) =
        (file(dir, &format!("{IMPORT_KEY_FILE}.old")), file(dir, &format!("{IMPORT_KEY_FILE}.new")));
    step(
        "rotate",
        "Rotate the import key to one the vendor does not know: keep a copy of the old one, save a new random key by rename. keygate proves a changed key before using it (one authenticate call to the sandbox), and the sandbox refuses this one: `/config` shows its fingerprint under `rejected` while bi_import keeps the old fingerprint, the push still gets its 201, and the refusal is counted (the reload is reported as failed). A key the vendor accepts is switched to, and the old one kept for `[reload] overlap` should the new one be refused later.",
        vec![
            Command::Shell(format!("cp -p {key} {old}")),
            Command::Shell(format!(
                "(umask 077; head -c16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > {new})"
            )),
            Command::Shell(format!("mv {new} {key}")),
            urls.config_secrets().into(),
            Curl { headers: true, ..urls.push() }.into(),
            urls.metrics(r#"'^keygate_secret_verifications_total{result="rejected"'"#).into(),
        ],
    )
}

/// The old key back where it was, by rename.
fn restore(urls: &Urls, dir: &Path) -> Step {
    let (key, old) = (file(dir, IMPORT_KEY_FILE), file(dir, &format!("{IMPORT_KEY_FILE}.old")));
    step(
        "restore",
        "Put the old key back: the file holds the running key again, so the rejection clears (`rejected` is null) and the push is accepted as before.",
        vec![Command::Shell(format!("mv {old} {key}")), urls.config_secrets().into(), urls.push().into()],
    )
}

/// The vendor's own URLs, unchanged, through `HTTPS_PROXY` pointing at the gateway and
/// trusting the run's CA: what an unmodified client sends.
fn proxy_steps(urls: &Urls, dir: &Path) -> Vec<Step> {
    let [import, export] = VENDOR_HOSTS;
    let proxied = |url: String| Curl {
        proxy: Some(urls.gw.clone()),
        cacert: Some(file(dir, CA_FILE)),
        ..Curl::get(url)
    };
    let push = format!("https://{import}/v2/client/{CLIENT_ID}/table/orders/data?apikey=placeholder");
    vec![
        step(
            "proxy_push",
            "No base URL at all: the vendor's own import URL through HTTPS_PROXY, as an unmodified client sends it. keygate accepts the CONNECT for this host only, presents a certificate from the CA made for this run, and injects the key.",
            vec![
                Curl {
                    method: "POST",
                    content_type: Some("application/json"),
                    body: Some(ROWS),
                    ..proxied(push)
                }
                .into(),
            ],
        ),
        step(
            "proxy_tables",
            "The vendor's export URL the same way.",
            vec![proxied(format!("https://{export}/0.1/client/{CLIENT_ID}/table")).into()],
        ),
        step(
            "proxy_refusal",
            "A refusal on an import route comes in the Import API's own error shape ({code, message, reasons}), which the vendor's clients report instead of failing to parse.",
            vec![
                Curl {
                    headers: true,
                    ..proxied(format!("https://{import}/v2/client/999/authenticate?apikey=placeholder"))
                }
                .into(),
            ],
        ),
    ]
}

/// A file of the demo's directory, quoted for the shell when it needs to be.
fn file(dir: &Path, name: &str) -> String {
    let path = dir.join(name).display().to_string();
    if path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b)) {
        path
    } else {
        format!("'{}'", path.replace('\'', r"'\''"))
    }
}
