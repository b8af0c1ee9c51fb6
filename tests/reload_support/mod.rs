//! Helpers for the reload tests: the real binary run as a child process (killed on
//! drop, its output captured, or its stdout sent to a file it may watch), a fake
//! upstream that echoes the credential it received, a small HTTP client, file writers
//! that mimic editors and the kubelet, busy neighbours, and polling with a deadline.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

mod noise;
// Not every test binary including this module makes noise.
#[allow(unused_imports)]
pub use noise::Noise;

/// A generous bound for anything that should happen "soon" on a loaded machine.
pub const SOON: Duration = Duration::from_secs(10);

/// Polls `f` every 10 ms until it yields `Some`, or panics naming `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------
// The binary

/// `keygate run -c <config>` as a child process, killed when dropped.
pub struct Keygate {
    child: Child,
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Where stdout goes when it is a file rather than a pipe (re-read on each look).
    stdout_file: Option<PathBuf>,
}

fn capture(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl Keygate {
    /// Starts the binary and waits for its two "listening" lines.
    pub async fn start(config: &Path) -> Keygate {
        Keygate::spawn(config, None).await
    }

    /// Like [`Keygate::start`], with keygate's stdout appended to `log` (a file keygate
    /// may watch itself) instead of a pipe.
    pub async fn start_logging_to(config: &Path, log: &Path) -> Keygate {
        Keygate::spawn(config, Some(log)).await
    }

    async fn spawn(config: &Path, log: Option<&Path>) -> Keygate {
        let stdout = match log {
            Some(path) => Stdio::from(std::fs::File::options().create(true).append(true).open(path).unwrap()),
            None => Stdio::piped(),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .arg("run")
            .arg("-c")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keygate");
        let stdout = match child.stdout.take() {
            Some(pipe) => capture(pipe),
            None => Arc::default(),
        };
        let stderr = capture(child.stderr.take().unwrap());
        let mut kg = Keygate {
            child,
            gateway: ([0, 0, 0, 0], 0).into(),
            admin: ([0, 0, 0, 0], 0).into(),
            stdout,
            stderr,
            stdout_file: log.map(Path::to_owned),
        };
        let (gateway, admin) = eventually("the listening lines", SOON, || {
            let exited = kg.child.try_wait().unwrap();
            assert!(exited.is_none(), "keygate exited ({exited:?}): {}", kg.output());
            let find = |which: &str| {
                kg.logs("listening")
                    .into_iter()
                    .find(|l| l["listener"] == which)
                    .and_then(|l| l["addr"].as_str()?.parse::<SocketAddr>().ok())
            };
            std::future::ready(find("gateway").zip(find("admin")))
        })
        .await;
        kg.gateway = gateway;
        kg.admin = admin;
        kg
    }

    /// The stdout lines so far (complete lines only, when stdout is a file).
    fn stdout_lines(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        let mut lines = self.stdout.lock().unwrap();
        if let Some(path) = &self.stdout_file {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let complete = text.rfind('\n').map_or("", |end| &text[..end]);
            *lines = complete.lines().map(str::to_owned).collect();
        }
        lines
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP.
    pub fn sighup(&self) {
        let status = Command::new("kill").arg("-HUP").arg(self.pid().to_string()).status().unwrap();
        assert!(status.success(), "kill -HUP failed");
    }

    /// Everything written to stdout and stderr so far.
    pub fn output(&self) -> String {
        let mut all = self.stdout_lines().join("\n");
        all.push_str("\n--- stderr ---\n");
        all.push_str(&self.stderr.lock().unwrap().join("\n"));
        all
    }

    /// Number of stdout lines so far (a position for [`Keygate::logs_since`]).
    pub fn mark(&self) -> usize {
        self.stdout_lines().len()
    }

    /// JSON log lines with this message.
    pub fn logs(&self, message: &str) -> Vec<Value> {
        self.logs_since(0, message)
    }

    /// JSON log lines with this message written after `mark`.
    pub fn logs_since(&self, mark: usize, message: &str) -> Vec<Value> {
        let lines = self.stdout_lines();
        lines[mark.min(lines.len())..]
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }

    /// Waits for a log line with this message after `mark` satisfying `pred`.
    pub async fn wait_log(&self, mark: usize, message: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let what = format!("a log line {message:?}");
        eventually(&what, SOON, || {
            std::future::ready(self.logs_since(mark, message).into_iter().find(|v| pred(v)))
        })
        .await
    }

    /// Panics if any sentinel appears in anything the binary wrote.
    pub fn assert_output_free_of(&self, sentinels: &[&str]) {
        let out = self.output();
        for s in sentinels {
            assert!(!out.contains(s), "the secret {s:?} appeared in keygate's output");
        }
        // Not vacuous: the capture holds the startup lines at least.
        assert!(out.contains("listening"), "no output captured");
    }

    /// A request through the gateway.
    pub async fn get(&self, path: &str) -> Reply {
        get(self.gateway, path).await
    }

    /// The value of one series of `/metrics`, e.g. `keygate_config_reloads_total{result="failure"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = get(self.admin, "/metrics").await.text;
        metric(&text, series).unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
    }

    /// The reload counters and gauges: (successes, failures, last successful, generation).
    pub async fn reload_state(&self) -> (f64, f64, f64, f64) {
        let text = get(self.admin, "/metrics").await.text;
        let m = |s: &str| metric(&text, s).unwrap_or_else(|| panic!("no series {s}"));
        (
            m("keygate_config_reloads_total{result=\"success\"}"),
            m("keygate_config_reloads_total{result=\"failure\"}"),
            m("keygate_config_last_reload_successful"),
            m("keygate_config_generation"),
        )
    }

    /// The `/config` document.
    pub async fn config(&self) -> Value {
        let reply = get(self.admin, "/config").await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        serde_json::from_str(&reply.text).unwrap()
    }

    /// Waits until the failure counter reaches `n`.
    pub async fn wait_failures(&self, n: f64) {
        eventually(&format!("{n} failed reload(s)"), SOON, || async {
            (self.reload_state().await.1 >= n).then_some(())
        })
        .await;
    }

    /// Waits until requests to `path` carry `key`.
    pub async fn wait_key(&self, path: &str, key: &str, limit: Duration) {
        eventually(&format!("requests to {path} carrying the new key"), limit, || async {
            let r = self.get(path).await;
            (r.status == 200 && r.key() == key).then_some(())
        })
        .await;
    }
}

impl Drop for Keygate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One series' value in a Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `sha256(value)[..4]` in hex: keygate's fingerprint of a secret.
pub fn fingerprint(value: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(value.as_bytes())[..4])
}

// ---------------------------------------------------------------------------------
// HTTP

/// A response as the caller saw it.
pub struct Reply {
    pub status: u16,
    pub text: String,
}

impl Reply {
    /// The echo upstream's view: `{"path", "key"}`.
    pub fn echo(&self) -> Value {
        assert_eq!(self.status, 200, "{}", self.text);
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The credential the upstream received.
    pub fn key(&self) -> String {
        if self.status != 200 {
            return String::new();
        }
        self.echo()["key"].as_str().unwrap_or_default().to_owned()
    }
}

fn request(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path).header("host", "keygate.test").body(Empty::new()).unwrap()
}

/// One GET on its own connection.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(request(path)).await.unwrap();
    read(response).await
}

async fn read(response: Response<Incoming>) -> Reply {
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply { status, text: String::from_utf8_lossy(&body).into_owned() }
}

/// A keep-alive HTTP/1.1 connection for many requests.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Conn { sender, addr }
    }

    /// One GET; an error is a failed request.
    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        self.sender.ready().await.map_err(|e| format!("connection not ready: {e}"))?;
        let response =
            self.sender.send_request(request(path)).await.map_err(|e| format!("request failed: {e}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| format!("body failed: {e}"))?;
        Ok(Reply { status, text: String::from_utf8_lossy(&body.to_bytes()).into_owned() })
    }

    /// One GET of a load loop: the reply if it is a 200; otherwise the problem is noted
    /// in `problems` and, if the connection broke, a new one replaces it.
    pub async fn get_ok(&mut self, path: &str, problems: &mut Vec<String>) -> Option<Reply> {
        match self.get(path).await {
            Ok(r) if r.status == 200 => Some(r),
            Ok(r) => {
                problems.push(format!("status {}: {}", r.status, r.text));
                None
            }
            Err(e) => {
                problems.push(e);
                *self = Conn::open(self.addr).await;
                None
            }
        }
    }
}

/// A fake upstream that answers every request with 200 and `{"path", "key"}`: the path
/// it was asked for and the `X-Api-Key` header it received.
pub struct Echo {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    pub async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<Incoming>| async move {
                        let key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or("");
                        let body = json!({"path": req.uri().path(), "key": key}).to_string();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Echo { addr, task }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------
// Files

/// The test config: one generic route `/echo` to the echo upstream injecting secret
/// `echo` as `X-Api-Key`, plus whatever `extra` adds.
pub fn config_text(upstream: &str, key_file: &Path, poll: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[reload]
poll_interval = "{poll}"
debounce = "50ms"

[secrets.echo]
file = "{key}"
{extra}
[[routes]]
name = "echo"
prefix = "/echo"
upstream = "{upstream}"
inject = {{ header = "X-Api-Key" }}
secret = "echo"
allow = ["127.0.0.0/8"]
"#,
        key = key_file.display()
    )
}

/// Writes `path` the way editors save: a temporary file in the same directory, renamed
/// over the old one.
pub fn write_by_rename(path: &Path, contents: &str) {
    let name = path.file_name().unwrap().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.swp"));
    std::fs::write(&tmp, contents).unwrap();
    set_private(&tmp);
    std::fs::rename(&tmp, path).unwrap();
}

/// Truncates `path` and writes it again (same inode).
pub fn write_in_place(path: &Path, contents: &str) {
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap();
    f.write_all(contents.as_bytes()).unwrap();
}

/// Creates `path` with mode 600 (keygate warns about readable secret files).
pub fn write_new(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
    set_private(path);
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A Kubernetes secret volume as the kubelet lays it out: `..<timestamp>/<file>`,
/// `..data -> ..<timestamp>`, and `<file> -> ..data/<file>` for each file.
pub struct KubeMount {
    pub dir: PathBuf,
    version: u32,
    current: String,
}

impl KubeMount {
    pub fn create(dir: PathBuf, files: &[(&str, &str)]) -> KubeMount {
        std::fs::create_dir_all(&dir).unwrap();
        let mut mount = KubeMount { dir, version: 0, current: String::new() };
        let ts = mount.write_version(files);
        std::os::unix::fs::symlink(&ts, mount.dir.join("..data")).unwrap();
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), mount.dir.join(name)).unwrap();
        }
        mount.current = ts;
        mount
    }

    fn write_version(&mut self, files: &[(&str, &str)]) -> String {
        self.version += 1;
        let ts = format!("..2026_03_01_12_00_{:02}.{:09}", self.version, 100 + self.version);
        let dir = self.dir.join(&ts);
        std::fs::create_dir(&dir).unwrap();
        for (name, contents) in files {
            write_new(&dir.join(name), contents);
        }
        ts
    }

    /// The kubelet's atomic update: write a new timestamped directory, point
    /// `..data_tmp` at it, rename `..data_tmp` over `..data`, remove the old directory.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        let ts = self.write_version(files);
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        let old = std::mem::replace(&mut self.current, ts);
        std::fs::remove_dir_all(self.dir.join(old)).unwrap();
    }
}
