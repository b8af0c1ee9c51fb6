//! The hand-written HTTP/1.1 side of the fake upstream, which can misbehave on purpose.
//! With [`super::FakeUpstream::faults`] the first path segment of each request picks
//! what it does:
//!
//! | path | behaviour |
//! |---|---|
//! | anything else | `200`, body `ok`, keep-alive |
//! | `/count` | `200`, body = the number of request body bytes received |
//! | `/hang` | reads the request, never answers |
//! | `/delay/{ms}` | answers `200` after `ms` milliseconds |
//! | `/gate` | answers `200 released` once the test calls [`super::FakeUpstream::release`] |
//! | `/trickle/{n}/{ms}` | `content-length: n`, then one byte every `ms` |
//! | `/stall/{n}` | `content-length: 1000`, `n` bytes, then nothing more |
//! | `/big/{n}` | `n` body bytes as fast as the reader takes them ([`super::FakeUpstream::written`]) |
//! | `/reset-before-headers` | reads the request, then resets the connection |
//! | `/eof-before-headers` | reads the request, then closes cleanly without answering |
//! | `/reset-mid-body` | `content-length: 1000`, 100 bytes, then a reset |
//! | `/bad-status` | a malformed status line |
//! | `/cl-te` | a response with both `Content-Length` and `Transfer-Encoding: chunked` |
//! | `/cr-header` | a response header whose value holds a bare CR |
//! | `/close-after` | `200` without `connection: close`, then closes the idle connection |
//! | `/arm-reset` | `200` keep-alive; the *next* request on that connection is read whole, then the connection is reset |
//!
//! [`super::FakeUpstream::trailers`] answers each connection once with a chunked body
//! and trailers, which a well-behaved server library would not send unasked.
//!
//! Every request head is recorded as soon as it arrives, and updated as its body comes
//! in, so tests can assert exactly what reached the upstream.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::pattern::Verifier;
use super::{Io, Recorded, State};

/// Serves one connection: requests in sequence until the peer closes or a fault ends it.
pub(super) async fn serve<S: Io>(mut io: S, conn: usize, state: Arc<State>) {
    let mut gate = state.gate.subscribe();
    let mut buf = Vec::new();
    let mut armed = false;
    loop {
        let Some(index) = read_request(&mut io, &mut buf, conn, &state).await else { return };
        let seen = state.recorded.lock().expect("lock")[index].clone();
        if !seen.body_complete {
            return;
        }
        if armed {
            // A reused connection dies after the request was written to it.
            io.arm_reset();
            return;
        }
        let segments: Vec<&str> = seen.path.trim_start_matches('/').split('/').collect();
        let arg = |i: usize| segments.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let gone = || state.recorded.lock().expect("lock")[index].peer_gone = true;
        match segments[0] {
            "count" => {
                let body = seen.body_len.to_string();
                if answer(&mut io, "200 OK", body.as_bytes()).await.is_err() {
                    return;
                }
            }
            "hang" => {
                wait_for_close(&mut io).await;
                gone();
                return;
            }
            "delay" => {
                tokio::time::sleep(Duration::from_millis(arg(1))).await;
                if answer(&mut io, "200 OK", b"delayed").await.is_err() {
                    return gone();
                }
            }
            "gate" => {
                let _ = gate.wait_for(|open| *open).await;
                if answer(&mut io, "200 OK", b"released").await.is_err() {
                    return gone();
                }
            }
            "trickle" => {
                if trickle(&mut io, arg(1), arg(2)).await.is_err() {
                    return gone();
                }
            }
            "stall" => {
                let head =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n{}", "s".repeat(arg(1) as usize));
                if io.write_all(head.as_bytes()).await.is_ok() {
                    wait_for_close(&mut io).await;
                }
                return gone();
            }
            "big" => {
                if big(&mut io, arg(1), &state).await.is_err() {
                    return gone();
                }
            }
            "reset-before-headers" => {
                io.arm_reset();
                return;
            }
            "eof-before-headers" => {
                let _ = io.shutdown().await;
                return;
            }
            "reset-mid-body" => {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n{}", "r".repeat(100));
                let _ = io.write_all(head.as_bytes()).await;
                let _ = io.flush().await;
                io.arm_reset();
                return;
            }
            "bad-status" => {
                let _ = io.write_all(b"HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\nok").await;
                return;
            }
            "cl-te" => {
                // A smuggling-shaped answer: the two framings disagree about the length.
                let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
                let _ = io.write_all(raw).await;
                wait_for_close(&mut io).await;
                return gone();
            }
            "cr-header" => {
                let raw = b"HTTP/1.1 200 OK\r\nx-injected: a\rset-cookie: b\r\ncontent-length: 2\r\n\r\nok";
                let _ = io.write_all(raw).await;
                return;
            }
            "close-after" => {
                let _ = answer(&mut io, "200 OK", b"closing").await;
                let _ = io.shutdown().await;
                return;
            }
            "arm-reset" => {
                if answer(&mut io, "200 OK", b"armed").await.is_err() {
                    return;
                }
                armed = true;
            }
            _ => {
                if answer(&mut io, "200 OK", b"ok").await.is_err() {
                    return gone();
                }
            }
        }
    }
}

/// Answers one request with a chunked `body` and `trailers` (header lines, each ending
/// in CRLF), then closes: `401` when the path holds `/fail`, else `200`.
pub(super) async fn serve_trailers<S: Io>(
    mut io: S,
    conn: usize,
    state: Arc<State>,
    body: &str,
    trailers: &str,
) {
    let mut buf = Vec::new();
    let Some(index) = read_request(&mut io, &mut buf, conn, &state).await else { return };
    let path = state.recorded.lock().expect("lock")[index].path.clone();
    let status = if path.contains("/fail") { "401 No" } else { "200 OK" };
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\
         connection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n{trailers}\r\n",
        body.len()
    );
    let _ = io.write_all(answer.as_bytes()).await;
    let _ = io.shutdown().await;
}

async fn answer<S: Io>(io: &mut S, status: &str, body: &[u8]) -> std::io::Result<()> {
    let head =
        format!("HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n", body.len());
    io.write_all(head.as_bytes()).await?;
    io.write_all(body).await?;
    io.flush().await
}

/// `content-length: n`, then one byte every `ms` milliseconds.
async fn trickle<S: Io>(io: &mut S, n: u64, ms: u64) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n");
    io.write_all(head.as_bytes()).await?;
    for _ in 0..n {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        io.write_all(b"t").await?;
        io.flush().await?;
    }
    Ok(())
}

/// `n` body bytes as fast as the reader takes them, counted in `state.written`.
async fn big<S: Io>(io: &mut S, n: u64, state: &State) -> std::io::Result<()> {
    let head =
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {n}\r\n\r\n");
    io.write_all(head.as_bytes()).await?;
    let chunk = vec![b'b'; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let take = left.min(chunk.len() as u64) as usize;
        io.write_all(&chunk[..take]).await?;
        state.written.fetch_add(take as u64, Ordering::SeqCst);
        left -= take as u64;
    }
    Ok(())
}

/// Reads (and discards) until the peer closes or errors.
async fn wait_for_close<S: Io>(io: &mut S) {
    let mut sink = [0u8; 4096];
    while let Ok(n) = io.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

/// Reads one request: records its head at once, then its body as it arrives. Returns
/// its index in `state.recorded`, or `None` if the connection closed before a whole head.
async fn read_request<S: Io>(io: &mut S, buf: &mut Vec<u8>, conn: usize, state: &State) -> Option<usize> {
    let end = find(io, buf, b"\r\n\r\n").await?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let target = first.next().unwrap_or("");
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (target.to_owned(), None),
    };
    let mut seen = Recorded { conn, method, path, query, ..Recorded::default() };
    for line in lines {
        if let Some((n, v)) = line.split_once(':') {
            seen.headers.push((n.to_ascii_lowercase(), v.trim().as_bytes().to_vec()));
        }
    }
    let chunked = seen.header("transfer-encoding").iter().any(|v| v.eq_ignore_ascii_case("chunked"));
    let length: u64 = seen.header("content-length").first().and_then(|v| v.parse().ok()).unwrap_or(0);
    let index = {
        let mut all = state.recorded.lock().expect("lock");
        all.push(seen);
        all.len() - 1
    };
    let verifier = std::sync::Mutex::new(Verifier::default());
    let record = |data: &[u8]| {
        let mut verifier = verifier.lock().expect("lock");
        state.recorded.lock().expect("lock")[index].keep(data, &mut verifier);
    };
    let complete = if chunked {
        read_chunked(io, buf, &record).await
    } else {
        let mut left = length;
        loop {
            let take = (buf.len() as u64).min(left) as usize;
            record(&buf[..take]);
            buf.drain(..take);
            left -= take as u64;
            if left == 0 {
                break true;
            }
            if !fill(io, buf).await {
                break false;
            }
        }
    };
    let mut all = state.recorded.lock().expect("lock");
    all[index].body_complete = complete;
    all[index].body_is_pattern = complete && verifier.lock().expect("lock").intact();
    all[index].peer_gone = !complete;
    Some(index)
}

/// Decodes a chunked body (no extensions or trailers: keygate's client sends none).
async fn read_chunked<S: Io>(io: &mut S, buf: &mut Vec<u8>, record: &impl Fn(&[u8])) -> bool {
    loop {
        let Some(line_end) = find(io, buf, b"\r\n").await else { return false };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let Ok(size) = u64::from_str_radix(size_text.trim(), 16) else { return false };
        buf.drain(..line_end + 2);
        let mut left = size + 2;
        while left > 0 {
            if buf.is_empty() && !fill(io, buf).await {
                return false;
            }
            let take = (buf.len() as u64).min(left) as usize;
            let data_part = take.min(left.saturating_sub(2) as usize);
            record(&buf[..data_part]);
            buf.drain(..take);
            left -= take as u64;
        }
        if size == 0 {
            return true;
        }
    }
}

/// Reads until `buf` holds `delimiter`; its position, or `None` if the connection ended first.
async fn find<S: Io>(io: &mut S, buf: &mut Vec<u8>, delimiter: &[u8]) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(delimiter.len()).position(|w| w == delimiter) {
            return Some(i);
        }
        if !fill(io, buf).await {
            return None;
        }
    }
}

async fn fill<S: Io>(io: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match io.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}
