//! The harness of `tests/leaks.rs`: sentinel keys, the config naming them, the built
//! binary started on it, the scan that finds a key in any form and letter case, the
//! content codings a hostile upstream uses, and a raw upstream that sends trailers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const IMPORT: &str = "SENTINEL-import/key+1=";
pub const EXPORT: &str = "SENTINEL-export:key 2";
pub const GENERIC: &str = "SENTINEL-generic&key3";
pub const ROTATED: &str = "SENTINEL-rotated/key4";
pub const BROKEN: &str = "SENTINEL-inline-in-broken-file5";
/// Shaped like a BI key (hex), so it can also be a header name.
pub const HEX: &str = "5e471e1a0123456789abcdef5e471e1a";
/// Every key keygate loads in these tests, and the two it must never show either.
pub const ALL: [&str; 6] = [IMPORT, EXPORT, GENERIC, ROTATED, BROKEN, HEX];

/// Every form in which a key could show up, lower-cased (the scan ignores case).
pub fn forms(key: &str) -> Vec<String> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    const UNRESERVED: &percent_encoding::AsciiSet =
        &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    let mut out = vec![key.to_owned(), key.replace(' ', "+"), key.replace('/', "\\/")];
    for set in [NON_ALPHANUMERIC, UNRESERVED] {
        let encoded: String = utf8_percent_encode(key, set).collect();
        out.push(encoded.replace("%20", "+"));
        out.push(encoded);
    }
    out.iter().map(|f| f.to_ascii_lowercase()).collect()
}

/// Fails naming the form and the text when any key of `ALL` is in `seen`, in any form
/// and any letter case.
pub fn assert_no_key(seen: &str) {
    let lower = seen.to_ascii_lowercase();
    for key in ALL {
        for form in forms(key) {
            assert!(!lower.contains(&form), "{form:?} leaked into:\n{seen}");
        }
    }
}

/// Writes by rename, as editors and Kubernetes do.
pub fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The key files `config` names.
pub fn write_keys(dir: &Path) {
    write(&dir.join("import.key"), &format!("{IMPORT}\n"));
    write(&dir.join("export.key"), EXPORT);
    write(&dir.join("hex.key"), HEX);
}

/// Routes `imp`, `exp`, `gen` and `hex` to `upstream`, `down` to `closed`, `closed`
/// refusing every loopback caller.
pub fn config(dir: &Path, upstream: SocketAddr, closed: SocketAddr) -> String {
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
[secrets.hex]
file = "{d}/hex.key"
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
name = "hex"
prefix = "/hex"
upstream = "http://{upstream}"
inject = {{ header = "X-Api-Key", format = "{{secret}}" }}
secret = "hex"
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

/// The built binary, running; killed when dropped.
pub struct Keygate {
    pub child: Child,
    /// Everything it printed on stdout so far.
    pub out: Arc<Mutex<String>>,
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
}

impl Drop for Keygate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Keygate {
    /// stdout so far and, once the process has exited, stderr.
    pub fn output(&mut self) -> String {
        let mut text = self.out.lock().unwrap().clone();
        if self.child.try_wait().ok().flatten().is_some() {
            if let Some(mut err) = self.child.stderr.take() {
                let _ = err.read_to_string(&mut text);
            }
        }
        text
    }
}

/// Starts `keygate run -c config` and waits for both listeners' announcements.
pub fn spawn(config: &Path) -> Keygate {
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

pub fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
    w.write_all(data).unwrap();
    drop(w);
    out
}

/// `body` as a caller would read it: decoded by its `Content-Encoding` when that is one
/// the test knows (up to 16 MiB), else as sent.
pub fn decoded(content_encoding: Option<&str>, body: &[u8]) -> String {
    let reader: Box<dyn Read + '_> = match content_encoding {
        Some("gzip") => Box::new(flate2::read::MultiGzDecoder::new(body)),
        Some("deflate") => Box::new(flate2::read::ZlibDecoder::new(body)),
        Some("br") => Box::new(brotli::Decompressor::new(body, 4096)),
        _ => return String::from_utf8_lossy(body).into_owned(),
    };
    let mut out = Vec::new();
    let _ = reader.take(16 << 20).read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP/1.1 upstream written by hand, because it must send what a well-behaved
/// server library would not: a chunked answer with trailers to a request that never
/// asked for them. Each connection gets one answer, then is closed: `status` 401 for a
/// path containing `/fail`, else 200, the body `body`, and the given trailers.
pub async fn trailer_upstream(body: &'static str, trailers: Vec<(String, String)>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let trailers: String = trailers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let trailers = trailers.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let status =
                    if String::from_utf8_lossy(&head).contains("/fail") { "401 No" } else { "200 OK" };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\
                     connection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n{trailers}\r\n",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}
