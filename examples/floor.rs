//! Not keygate: a measuring instrument for `bench/ab.py --floor` (BENCHMARKS.md, "The
//! floor").
//!
//! The least a tokio proxy can do for the benchmark's one request shape, with the same
//! system calls as keygate and nginx: one single-threaded runtime, keep-alive on both
//! sides, a LIFO pool of upstream connections, the head read with httparse, the route
//! prefix cut, the caller's `X-RJM-API-Key` replaced by the real one, the upstream's head
//! read with httparse and its `Content-Length` body read whole, head and body written to
//! the caller in one write. No allowlist, no metrics, no timeouts, no checks: anything
//! else (a body, chunked framing, a missing length) closes the connection. What it costs
//! per request is the floor under any proxy built on tokio on this machine.
//!
//!     cargo build --release --example floor
//!     target/release/examples/floor LISTEN_PORT UPSTREAM_PORT KEY_FILE

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PREFIX: &[u8] = b"/export";
const KEY_HEADER: &str = "x-rjm-api-key";

struct Shared {
    upstream: SocketAddr,
    key: Vec<u8>,
    idle: RefCell<Vec<TcpStream>>,
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, key_file] = &args[..] else {
        eprintln!("usage: floor LISTEN_PORT UPSTREAM_PORT KEY_FILE");
        std::process::exit(2);
    };
    let port = |p: &str| p.parse::<u16>().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let shared = Rc::new(Shared {
        upstream: SocketAddr::from(([127, 0, 0, 1], port(upstream)?)),
        key: std::fs::read_to_string(key_file)?.trim().as_bytes().to_vec(),
        idle: RefCell::new(Vec::new()),
    });
    let listen = SocketAddr::from(([127, 0, 0, 1], port(listen)?));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (caller, _) = listener.accept().await?;
            let _ = caller.set_nodelay(true);
            tokio::task::spawn_local(serve(caller, shared.clone()));
        }
    })
}

/// Serves one caller connection until it closes or sends something out of shape.
async fn serve(mut caller: TcpStream, shared: Rc<Shared>) -> io::Result<()> {
    let mut input = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(1024);
    loop {
        let Some(end) = read_head(&mut caller, &mut input).await? else { return Ok(()) };
        out.clear();
        if !upstream_head(&input[..end], &shared.key, &mut out) {
            return Ok(());
        }
        input.drain(..end);
        let pooled = shared.idle.borrow_mut().pop();
        let mut upstream = match pooled {
            Some(conn) => conn,
            None => {
                let conn = TcpStream::connect(shared.upstream).await?;
                let _ = conn.set_nodelay(true);
                conn
            }
        };
        upstream.write_all(&out).await?;
        out.clear();
        let Some(end) = read_head(&mut upstream, &mut out).await? else { return Ok(()) };
        let Some(length) = content_length(&out[..end]) else { return Ok(()) };
        while out.len() < end + length {
            if upstream.read_buf(&mut out).await? == 0 {
                return Ok(());
            }
        }
        caller.write_all(&out[..end + length]).await?;
        if out.len() == end + length {
            shared.idle.borrow_mut().push(upstream);
        }
    }
}

/// Reads until `buf` holds a whole head; its length, or `None` at the end of the stream.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    loop {
        if let Some(at) = memchr::memmem::find(buf, b"\r\n\r\n") {
            return Ok(Some(at + 4));
        }
        if buf.len() > 64 * 1024 || stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Writes the upstream's head for the caller's `head` into `out`: the prefix cut from the
/// target, every header but the key and `Connection` copied, the real key added. False when the head is
/// not a bodiless request under the prefix.
fn upstream_head(head: &[u8], key: &[u8], out: &mut Vec<u8>) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let (Ok(httparse::Status::Complete(_)), Some(method), Some(path)) =
        (request.parse(head), request.method, request.path)
    else {
        return false;
    };
    let Some(rest) = path.as_bytes().strip_prefix(PREFIX) else { return false };
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(rest);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in request.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") || h.name.eq_ignore_ascii_case("transfer-encoding") {
            return false;
        }
        if !h.name.eq_ignore_ascii_case(KEY_HEADER) && !h.name.eq_ignore_ascii_case("connection") {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"X-RJM-API-Key: ");
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\n\r\n");
    true
}

/// The `Content-Length` of a response head, if it has one.
fn content_length(head: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    response.parse(head).ok()?;
    let h = response.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length"))?;
    std::str::from_utf8(h.value).ok()?.trim().parse().ok()
}
