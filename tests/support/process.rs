//! The built keygate binary as a child process: started with [`Launch`] (a config path
//! or text written to a temp dir, extra env, an fd limit, stdout to a file), killed on
//! drop, its stdout and stderr captured. It reads the bound addresses from the
//! `listening` log lines, looks up JSON log lines, sends signals, waits for the exit,
//! reads its RSS, and asks its admin listener for metrics and `/config`. [`run`] runs a
//! one-shot command (`check`) to completion.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{Reply, get};
use super::metrics;
use super::poll::{SOON, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// How to start the binary.
pub struct Launch {
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    nofile: Option<u32>,
    stdout_file: Option<PathBuf>,
    dir: Option<tempfile::TempDir>,
}

/// A finished run of the binary.
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `keygate <args>` to completion (20 s at most).
pub fn run(args: &[&str]) -> Outcome {
    Launch::args(args).output()
}

impl Launch {
    /// `keygate run -c <config>`.
    pub fn run(config: &Path) -> Launch {
        Launch::args(["run".as_ref(), "-c".as_ref(), config.as_os_str()])
    }

    /// `keygate run -c` on `text`, written to `keygate.toml` in a temp dir kept as long
    /// as the process.
    pub fn with_config(text: &str) -> Launch {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, text).expect("write config");
        Launch { dir: Some(dir), ..Launch::run(&path) }
    }

    /// `keygate` with any arguments (`demo --port 0`, `check -c FILE`).
    pub fn args<I, S>(args: I) -> Launch
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Launch {
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            nofile: None,
            stdout_file: None,
            dir: None,
        }
    }

    /// Sets an environment variable for the child (never for this process).
    pub fn env(mut self, name: &str, value: &str) -> Launch {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Runs under this `RLIMIT_NOFILE` (set by `sh -c 'ulimit -n N; exec …'`).
    pub fn nofile(mut self, n: u32) -> Launch {
        self.nofile = Some(n);
        self
    }

    /// Appends stdout to `log` (a file keygate may watch itself) instead of a pipe.
    pub fn stdout_to(mut self, log: &Path) -> Launch {
        self.stdout_file = Some(log.to_owned());
        self
    }

    fn command(&self) -> Command {
        let mut command = match self.nofile {
            None => Command::new(BIN),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" \"$@\"")).arg(BIN);
                c
            }
        };
        command.args(&self.args).env_remove("KEYGATE_CONFIG").stdin(Stdio::null()).stderr(Stdio::piped());
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    /// Starts the binary without waiting for anything; the addresses are unset until
    /// [`Keygate::listening`].
    pub fn spawn(self) -> Keygate {
        let mut command = self.command();
        command.stdout(match &self.stdout_file {
            Some(path) => {
                Stdio::from(std::fs::File::options().create(true).append(true).open(path).expect("log"))
            }
            None => Stdio::piped(),
        });
        let mut child = command.spawn().expect("spawn keygate");
        let unset = SocketAddr::from(([0, 0, 0, 0], 0));
        let (stdout, mut readers) = match child.stdout.take() {
            Some(pipe) => capture(pipe),
            None => (Arc::default(), Vec::new()),
        };
        let (stderr, more) = capture(child.stderr.take().expect("stderr"));
        readers.extend(more);
        Keygate {
            child,
            stop_signal: None,
            gateway: unset,
            admin: unset,
            stdout,
            stderr,
            readers,
            stdout_file: self.stdout_file,
            dir: self.dir,
        }
    }

    /// Starts the binary and waits for its two `listening` lines.
    pub async fn start(self) -> Keygate {
        let mut kg = self.spawn();
        kg.listening().await;
        kg
    }

    /// Runs the binary to completion (20 s at most) and returns what it printed.
    pub fn output(self) -> Outcome {
        let mut kg = self.spawn();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = kg.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "keygate {:?} did not exit", kg.child.id());
            std::thread::sleep(Duration::from_millis(20));
        };
        kg.finish_reading();
        Outcome { code: status.code(), stdout: kg.stdout(), stderr: kg.stderr() }
    }
}

type Lines = Arc<Mutex<Vec<String>>>;

fn capture(stream: impl std::io::Read + Send + 'static) -> (Lines, Vec<JoinHandle<()>>) {
    let lines = Lines::default();
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    (lines, vec![reader])
}

/// A string field of a JSON log line: top level, or tracing's nested `fields`.
fn log_field<'a>(line: &'a Value, key: &str) -> Option<&'a str> {
    line.get(key).or_else(|| line.get("fields").and_then(|f| f.get(key))).and_then(Value::as_str)
}

/// The running binary; killed when dropped (after [`Keygate::stopped_by`]'s signal).
pub struct Keygate {
    child: Child,
    /// Sent first when dropped, so that what the process cleans up when it stops (the
    /// demo's directory of keys) is not left behind by the test.
    stop_signal: Option<&'static str>,
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    stdout: Lines,
    stderr: Lines,
    readers: Vec<JoinHandle<()>>,
    /// Where stdout goes when it is a file rather than a pipe (re-read on each look).
    stdout_file: Option<PathBuf>,
    dir: Option<tempfile::TempDir>,
}

impl Drop for Keygate {
    fn drop(&mut self) {
        if let (Some(signal), Ok(None)) = (self.stop_signal, self.child.try_wait()) {
            self.send(signal);
            // Blocking (a drop cannot wait otherwise); bounded, then killed below.
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Keygate {
    /// `keygate run -c <config>`, once listening.
    pub async fn start(config: &Path) -> Keygate {
        Launch::run(config).start().await
    }

    /// Waits for the `listening` lines of both listeners and records their addresses.
    pub async fn listening(&mut self) {
        let (gateway, admin) = eventually("the listening lines", SOON, || {
            let exited = self.child.try_wait().expect("wait");
            assert!(exited.is_none(), "keygate exited ({exited:?}): {}", self.output());
            let find = |which: &str| {
                self.logs("listening")
                    .into_iter()
                    .find(|l| log_field(l, "listener") == Some(which))
                    .and_then(|l| log_field(&l, "addr")?.parse::<SocketAddr>().ok())
            };
            std::future::ready(find("gateway").zip(find("admin")))
        })
        .await;
        self.gateway = gateway;
        self.admin = admin;
    }

    /// Sends `signal` (e.g. "INT") when dropped while it runs, and waits for it to exit.
    pub fn stopped_by(mut self, signal: &'static str) -> Keygate {
        self.stop_signal = Some(signal);
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temp dir holding the config, when started [`Launch::with_config`].
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("a config written by the harness").path()
    }

    /// Sends `signal` (e.g. "TERM") with kill(1).
    pub fn signal(&self, signal: &str) {
        assert!(self.send(signal), "kill -{signal} failed");
    }

    /// Sends `signal` with kill(1): whether it was sent (a drop cannot assert).
    fn send(&self, signal: &str) -> bool {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status();
        status.is_ok_and(|s| s.success())
    }

    /// Sends SIGHUP.
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    /// Waits up to `limit` for the process to exit: its exit code (-1 when a signal
    /// ended it), or None while it still runs. Once it exited, all its output is read.
    pub async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                self.finish_reading();
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// After the exit: waits for the readers to reach the end of the pipes.
    fn finish_reading(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// The stdout lines so far (complete lines only, when stdout is a file).
    fn stdout_lines(&self) -> MutexGuard<'_, Vec<String>> {
        let mut lines = self.stdout.lock().expect("lines");
        if let Some(path) = &self.stdout_file {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let complete = text.rfind('\n').map_or("", |end| &text[..end]);
            *lines = complete.lines().map(str::to_owned).collect();
        }
        lines
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout_lines().join("\n")
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lines").join("\n")
    }

    /// Everything written to stdout and stderr so far.
    pub fn output(&self) -> String {
        format!("{}\n--- stderr ---\n{}", self.stdout(), self.stderr())
    }

    /// Waits for a stdout line matching `pred`; returns stdout up to and including it.
    pub async fn wait_line(&self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        eventually(what, limit, || {
            let lines = self.stdout_lines();
            let upto = lines.iter().position(|l| pred(l)).map(|i| lines[..=i].join("\n") + "\n");
            std::future::ready(upto)
        })
        .await
    }

    /// Every JSON log line so far, in order, each with its `message` at the top level.
    pub fn json_lines(&self) -> Vec<Value> {
        let lines = self.stdout_lines();
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|mut v| {
                if let Some(m) = log_field(&v, "message").map(str::to_owned) {
                    v["message"] = Value::String(m);
                }
                v
            })
            .collect()
    }

    /// Waits until keygate's watches are in place after its last reload attempt with no
    /// further look pending (needs `[log] level = "debug"`): from then on a change to a
    /// watched file is announced by its own event, not found by a look keygate takes
    /// after re-arming its watches.
    pub async fn watches_settled(&self) {
        eventually("keygate's watches in place with no look pending", SOON, || {
            let lines = self.json_lines();
            let last_look = lines.iter().rposition(|l| l["message"] == "reload attempt");
            let armed =
                lines.iter().rposition(|l| l["message"] == "watches in place" && l["recheck"] == false);
            std::future::ready(matches!((last_look, armed), (Some(a), Some(b)) if b > a))
        })
        .await;
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
            .filter(|v| log_field(v, "message") == Some(message))
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
    #[track_caller]
    pub fn assert_output_free_of(&self, sentinels: &[&str]) {
        let out = self.output();
        for s in sentinels {
            assert!(!out.contains(s), "the secret {s:?} appeared in keygate's output");
        }
        // Not vacuous: the capture holds the startup lines at least.
        assert!(out.contains("listening"), "no output captured");
    }

    /// Resident set size of the process in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(&format!("/proc/{}/status", self.pid()))
    }

    /// A GET through the gateway.
    pub async fn get(&self, path: &str) -> Reply {
        get(self.gateway, path, &[]).await
    }

    /// The value of one series of `/metrics`, e.g. `keygate_config_reloads_total{result="failure"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = get(self.admin, "/metrics", &[]).await.text();
        metrics::sample(&text, series).unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
    }

    /// The reload counters and gauges: (successes, failures, last successful, generation).
    pub async fn reload_state(&self) -> (f64, f64, f64, f64) {
        let text = get(self.admin, "/metrics", &[]).await.text();
        let m = |s: &str| metrics::sample(&text, s).unwrap_or_else(|| panic!("no series {s}"));
        (
            m("keygate_config_reloads_total{result=\"success\"}"),
            m("keygate_config_reloads_total{result=\"failure\"}"),
            m("keygate_config_last_reload_successful"),
            m("keygate_config_generation"),
        )
    }

    /// The `/config` document.
    pub async fn config(&self) -> Value {
        let reply = get(self.admin, "/config", &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()
    }

    /// Waits until the failure counter reaches `n`.
    pub async fn wait_failures(&self, n: f64) {
        eventually(&format!("{n} failed reload(s)"), SOON, || async { self.reload_state().await.1 >= n })
            .await;
    }

    /// Waits until requests to `path` carry `key` (as the echo upstream reports it).
    pub async fn wait_key(&self, path: &str, key: &str, limit: Duration) {
        eventually(&format!("requests to {path} carrying the new key"), limit, || async {
            let r = self.get(path).await;
            r.status == 200 && r.key() == key
        })
        .await;
    }
}

/// The resident set size of this test process, in KiB.
pub fn self_rss_kib() -> u64 {
    rss_kib_of("/proc/self/status")
}

fn rss_kib_of(status: &str) -> u64 {
    let text = std::fs::read_to_string(status).unwrap_or_else(|e| panic!("{status}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .expect("VmRSS")
}
