//! keygate in-process (temp config, `127.0.0.1:0`), the built binary as a child process,
//! and small HTTP clients: one that speaks through hyper and one that writes raw bytes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use keygate::app::App;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The route secret: recognisable, so a leak is easy to spot.
pub const SECRET: &str = "kgsentinelsecret5f3a9c";
/// Put in callers' queries to prove no error body or log line carries a query.
pub const QUERY_SENTINEL: &str = "qsentinel7d1e";

/// A generic route `name` on `prefix` to `upstream`, injecting the secret as the
/// `api_key` query parameter (so the upstream URL's query carries it), plus `extra`
/// TOML lines (timeouts, `ca_file`, `max_body_bytes`…).
pub fn route(name: &str, prefix: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\n\
         inject = {{ query = \"api_key\" }}\nsecret = \"key\"\nmethods = [\"GET\", \"POST\"]\n\
         allow = [\"127.0.0.0/8\"]\n{extra}\n"
    )
}

/// The whole config file: `[server]` lines, an admin listener, the secret, `routes`.
pub fn config_text(server: &str, routes: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [log]\nlevel = \"debug\"\n\n[secrets.key]\nvalue = \"{SECRET}\"\n\n{routes}"
    )
}

/// keygate running in this process.
pub struct Keygate {
    pub app: Option<App>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Keygate {
    pub async fn start(server: &str, routes: &str) -> Keygate {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, config_text(server, routes)).unwrap();
        let snapshot = keygate::config::load(&path, 1, None).unwrap_or_else(|p| panic!("{p}"));
        let app = App::start(snapshot, None, None).await.unwrap();
        let addr = app.local_addrs()[0];
        let admin = app.admin_addr.unwrap();
        Keygate { app: Some(app), addr, admin, _dir: dir }
    }

    /// The Prometheus text of this instance.
    pub fn metrics(&self) -> String {
        self.app.as_ref().unwrap().gateway.metrics.render()
    }

    /// The value of the sample whose name and labels are exactly `series`
    /// (e.g. `keygate_upstream_errors_total{kind="connect",route="f"}`), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// `keygate_upstream_errors_total` for `route` and `kind` (0 when absent).
    pub fn upstream_errors(&self, route: &str, kind: &str) -> f64 {
        self.metric(&format!("keygate_upstream_errors_total{{kind=\"{kind}\",route=\"{route}\"}}"))
            .unwrap_or(0.0)
    }

    pub fn in_flight(&self) -> f64 {
        self.metric("keygate_requests_in_flight").unwrap_or(-1.0)
    }

    /// Drains as on SIGTERM; true when everything finished within the grace.
    pub async fn shutdown(&mut self) -> bool {
        self.app.take().unwrap().shutdown().await
    }
}

/// Polls `check` every 10 ms until it holds, or panics naming `what` after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A response read through hyper.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `x-keygate-error`, or "" when the answer is the upstream's.
    pub fn error_code(&self) -> &str {
        self.headers.get("x-keygate-error").map_or("", |v| v.to_str().unwrap())
    }

    /// Asserts keygate answered `status` itself with `code`, as JSON (design §7).
    pub fn assert_refusal(&self, status: u16, code: &str) {
        assert_eq!((self.status, self.error_code()), (status, code), "body: {}", self.text());
        let json: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(json["error"], code, "{json}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()), "{json}");
        let text = self.text();
        assert!(!text.contains(QUERY_SENTINEL) && !text.contains(SECRET), "a query leaked: {text}");
        for (name, value) in &self.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(!value.contains(QUERY_SENTINEL) && !value.contains(SECRET), "{name}: {value}");
        }
    }
}

/// Sends `request` on a new HTTP/1.1 connection to `addr` and reads the whole answer.
pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    Reply { status: parts.status.as_u16(), headers: parts.headers, body }
}

/// `GET target` on a new connection.
pub async fn get(addr: SocketAddr, target: &str) -> Reply {
    send(addr, Request::get(target).header("host", "keygate.test").body(Full::default()).unwrap()).await
}

/// `POST target` with `body` on a new connection.
pub async fn post(addr: SocketAddr, target: &str, body: &'static [u8]) -> Reply {
    let request =
        Request::post(target).header("host", "keygate.test").body(Full::new(Bytes::from_static(body)));
    send(addr, request.unwrap()).await
}

/// What came back on a raw socket.
#[derive(Debug)]
pub struct Raw {
    pub bytes: Vec<u8>,
    /// The server closed the connection (EOF or reset) before `limit` ran out.
    pub closed: bool,
}

impl Raw {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status codes of every response in the bytes, in order.
    pub fn statuses(&self) -> Vec<u16> {
        let text = self.text();
        text.match_indices("HTTP/1.1 ").filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok()).collect()
    }
}

/// Writes `bytes` on a new connection, then reads until the server closes or `limit`.
pub async fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Raw {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything; that is not our error.
    let _ = stream.write_all(bytes).await;
    read_until_close(&mut stream, limit).await
}

/// Reads one whole response (head plus `content-length` body) from a kept-open stream.
pub async fn read_answer(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:")?.trim().parse::<usize>().ok()
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed mid-answer: {text}");
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until EOF/reset or `limit`.
pub async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> Raw {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return Raw { bytes: out, closed: false },
            Ok(Ok(0)) | Ok(Err(_)) => return Raw { bytes: out, closed: true },
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The built keygate binary running `run -c <config>`, killed on drop. Its stdout
/// (JSON log lines) is collected.
pub struct Process {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Writes `config` to a temp dir and spawns keygate on it; with `nofile`, under
    /// that `RLIMIT_NOFILE` (set by `sh -c 'ulimit -n N; exec …'`).
    pub fn spawn(config: &str, nofile: Option<u32>) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, config).unwrap();
        let bin = env!("CARGO_BIN_EXE_keygate");
        let mut command = match nofile {
            None => {
                let mut c = Command::new(bin);
                c.arg("run").arg("-c").arg(&path);
                c
            }
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" run -c \"$1\"")).arg(bin).arg(&path);
                c
            }
        };
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Process { child, lines, dir }
    }

    /// Waits for the `listening` lines; returns (gateway, admin).
    pub async fn addrs(&self) -> (SocketAddr, SocketAddr) {
        let find = |listener: &str| -> Option<SocketAddr> {
            self.lines.lock().unwrap().iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"] == "listening" && v["listener"] == listener)
                    .then(|| v["addr"].as_str()?.parse().ok())?
            })
        };
        eventually("keygate prints its listening lines", Duration::from_secs(20), || {
            find("gateway").is_some() && find("admin").is_some()
        })
        .await;
        (find("gateway").unwrap(), find("admin").unwrap())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM") with kill(1).
    pub fn signal(&self, signal: &str) {
        let status =
            Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit; its exit code, or None if still running.
    pub async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every output line so far, joined.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Output lines whose JSON `message` is `message`.
    pub fn messages(&self, message: &str) -> Vec<serde_json::Value> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }

    /// Resident set size of the process in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
            .unwrap()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("keygate.toml")
    }
}

/// Writes a file into `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}
