//! The fixture of the leak tests: sentinel keys shaped to need every encoding, the
//! config naming them, the built binary started on it, and the content codings a
//! hostile upstream uses.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;

use crate::support::files::write_by_rename as write;
use crate::support::process::{Keygate, Launch};

pub const IMPORT: &str = "SENTINEL-import/key+1=";
pub const EXPORT: &str = "SENTINEL-export:key 2";
pub const GENERIC: &str = "SENTINEL-generic&key3";
pub const ROTATED: &str = "SENTINEL-rotated/key4";
pub const BROKEN: &str = "SENTINEL-inline-in-broken-file5";
/// Shaped like a BI key (hex), so it can also be a header name.
pub const HEX: &str = "5e471e1a0123456789abcdef5e471e1a";
/// Every key keygate loads in these tests, and the two it must never show either.
pub const ALL: [&str; 6] = [IMPORT, EXPORT, GENERIC, ROTATED, BROKEN, HEX];

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

/// Starts `keygate run -c config` (the generic key in its environment) and waits for
/// both listeners' announcements.
pub async fn start_keygate(config: &Path) -> Keygate {
    Launch::run(config).env("KEYGATE_LEAK_TEST_GENERIC", GENERIC).start().await
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
