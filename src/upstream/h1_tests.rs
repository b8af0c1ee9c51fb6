//! keygate's HTTP/1.1 client against hyper's, on the same bytes: a sweep of answers an
//! upstream could send (hostile ones included: framing conflicts, bad lengths, broken
//! chunking, trailers, `1xx` heads, bad header lines, truncation, bytes after the end),
//! and the connection rules only keygate's client has (what goes back to the pool).

use std::time::Duration;

use http::Request;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::*;

/// What a client made of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The head was refused (or keygate refuses what it says: both framings, a `101`).
    Refused,
    /// The head was read, then the body: its bytes, its trailers, and how it ended.
    Read { status: u16, headers: Vec<(String, Vec<u8>)>, body: Read },
    /// Nothing was decided in time.
    Hung,
}

/// A body as read: its bytes, its trailers, and whether it ended well (the error's
/// text when not).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Read {
    data: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
    end: Result<(), String>,
}

/// True when the two clients agree: the same outcome (errors may read differently),
/// or the one deliberate difference. A trailer section that does not parse whole (a
/// bare LF makes an empty line before its end) is refused by keygate, where hyper
/// keeps the lines before that empty line and drops the rest unread.
fn agree(ours: &Outcome, theirs: &Outcome, bytes: &[u8]) -> bool {
    let failed = |o: &Outcome| match o {
        Outcome::Read { status, headers, body } => Outcome::Read {
            status: *status,
            headers: headers.clone(),
            body: Read { end: body.end.clone().map_err(|_| String::new()), ..body.clone() },
        },
        other => other.clone(),
    };
    if failed(ours) == failed(theirs) {
        return true;
    }
    let bare_lf = bytes.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r');
    match (ours, theirs) {
        (
            Outcome::Read { status: a, headers: ha, body: ours },
            Outcome::Read { status: b, headers: hb, body: theirs },
        ) => {
            bare_lf
                && a == b
                && ha == hb
                && ours.data == theirs.data
                && ours.end.as_ref().err().is_some_and(|e| e == "bad trailer")
                && theirs.end.is_ok()
        }
        _ => false,
    }
}

fn pairs(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect()
}

/// The upstream: reads the request head, writes `answer` (at once, or in pieces of
/// `piece` bytes with a pause between), then closes.
fn upstream(answer: Vec<u8>, piece: Option<usize>) -> DuplexStream {
    let (client, mut server) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"\r\n\r\n") {
            match server.read(&mut byte).await {
                Ok(1) => seen.push(byte[0]),
                _ => return,
            }
        }
        for part in answer.chunks(piece.unwrap_or(answer.len()).max(1)) {
            if server.write_all(part).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        let _ = server.shutdown().await;
        // Keep the read side open until the client is done.
        let _ = server.read(&mut byte).await;
    });
    client
}

fn request_parts(method: &Method) -> http::request::Parts {
    let mut request = Request::new(());
    *request.method_mut() = method.clone();
    *request.uri_mut() = "/export/x?y=1".parse().unwrap();
    request.headers_mut().insert("accept", HeaderValue::from_static("*/*"));
    request.into_parts().0
}

fn built(method: &Method, body: ProxyBody) -> Outbound<'static> {
    Outbound::built(Request::from_parts(request_parts(method), body))
}

async fn collect<B>(mut body: B) -> Read
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut read = Read { data: Vec::new(), trailers: Vec::new(), end: Ok(()) };
    while let Some(frame) = body.frame().await {
        match frame {
            Err(e) => {
                read.end = Err(e.to_string());
                break;
            }
            Ok(frame) => match frame.into_data() {
                Ok(bytes) => read.data.extend_from_slice(&bytes),
                Err(frame) => {
                    read.trailers.extend(frame.into_trailers().map(|t| pairs(&t)).unwrap_or_default())
                }
            },
        }
    }
    read
}

async fn keygate(answer: Vec<u8>, piece: Option<usize>, method: Method) -> Outcome {
    let mut conn = Conn::new(upstream(answer, piece));
    let mut out = Outgoing::new(built(&method, crate::body::empty()), &HeaderValue::from_static("up"))
        .expect("a bodiless request");
    let read = async {
        let Ok(answer) = exchange(&mut conn, &mut out, far()).await else { return Outcome::Refused };
        if answer.status == StatusCode::SWITCHING_PROTOCOLS {
            return Outcome::Refused;
        }
        let response = answer.into_response(conn, Arc::default());
        let (status, headers) =
            (response.status().as_u16(), as_passed_on(response.headers(), response.body()));
        Outcome::Read { status, headers, body: collect(response.into_body()).await }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.unwrap_or(Outcome::Hung)
}

/// hyper's client as keygate used it: both framings and a `101` refused after the head.
async fn hyper(answer: Vec<u8>, piece: Option<usize>, method: Method) -> Outcome {
    let read = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(upstream(answer, piece)))
                .await
                .expect("handshake");
        tokio::spawn(connection);
        let mut request = Request::from_parts(request_parts(&method), http_body_util::Empty::<Bytes>::new());
        request.headers_mut().insert(header::HOST, HeaderValue::from_static("up"));
        let Ok(response) = sender.send_request(request).await else { return Outcome::Refused };
        let h = response.headers();
        let both = h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH);
        if both || response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Outcome::Refused;
        }
        let (status, headers) =
            (response.status().as_u16(), as_passed_on(response.headers(), response.body()));
        Outcome::Read { status, headers, body: collect(response.into_body()).await }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.unwrap_or(Outcome::Hung)
}

/// An answer's headers as they go on to the caller: without the hop-by-hop ones and
/// what `Connection` names ([`crate::rewrite::response_headers`]; no secrets here),
/// by name, each name's lines in their order (the only order HTTP gives a meaning).
/// Compared so, not as read: keygate's client leaves out the `Connection` lines that
/// name nothing more, where hyper's keeps them and the way down removes them, which
/// moves another header into their place in the map. `Content-Length` is the one a
/// writer sends: the answer's one line (when it reads as a number), else the body's exact
/// size — keygate's client leaves the line out of the map where the body carries it.
fn as_passed_on(headers: &HeaderMap, body: &impl http_body::Body) -> Vec<(String, Vec<u8>)> {
    let mut headers = headers.clone();
    let scrub = crate::scrub::Scrubber::new([]).expect("no secrets");
    crate::rewrite::response_headers(&mut headers, &scrub, &[] as &[&str]);
    let declared: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    let declared = match declared[..] {
        [one] => one.to_str().ok().and_then(|v| v.parse::<u64>().ok()),
        _ => None,
    };
    let length = declared.or(body.size_hint().exact());
    headers.remove(header::CONTENT_LENGTH);
    let mut lines = pairs(&headers);
    if let Some(length) = length {
        lines.push(("content-length".into(), length.to_string().into_bytes()));
    }
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    lines
}

fn status_line() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "HTTP/1.1 200 OK",
        "HTTP/1.1 200 OK",
        "HTTP/1.1 404 Not Found",
        "HTTP/1.1 401 Unauthorized",
        "HTTP/1.0 200 OK",
        "HTTP/1.1 204 No Content",
        "HTTP/1.1 304 Not Modified",
        "HTTP/1.1 101 Switching Protocols",
        "HTTP/1.1 200",
        "HTTP/1.1 599 Whatever \u{e9}",
        "HTTP/1.1 2x0 OK",
        "HTTP/1.1 20 OK",
        "HTTP/2 200 OK",
        "http/1.1 200 OK",
        "HTTP/1.1  200 OK",
        "ICY 200 OK",
    ])
}

fn informational() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "",
        "",
        "HTTP/1.1 100 Continue\r\n\r\n",
        "HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n",
        "HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n",
    ])
}

fn header_line() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "content-type: text/plain",
        "x-a: b",
        "set-cookie: s=1",
        "X-Mixed-Case: V",
        "connection: close",
        "connection: keep-alive",
        "Connection: Keep-Alive, x-a",
        "Connection: TE, Close",
        "connection: ,x-a",
        "x-empty:",
        "x-tab:\tv\t",
        "x-high: caf\u{e9}",
        "x-del: a\u{7f}b",
        "x-ctl: a\u{1}b",
        "x-cr: a\rb",
        "x-obs: a\r\n folded",
        "x-sp : v",
        ": no-name",
        "no colon",
        "x(y): v",
        "trailer: x-t",
    ])
}

/// How the body is framed, and whether its bytes are then left as they should be.
#[derive(Debug, Clone)]
enum Shape {
    None,
    Length(i64),
    LengthText(&'static str),
    TwoLengths(i64),
    Chunked { te: &'static str, style: Chunking },
    Coded(&'static str),
    Both,
}

#[derive(Debug, Clone)]
struct Chunking {
    cuts: Vec<usize>,
    upper: bool,
    extension: bool,
    lws: bool,
    bare_lf: bool,
    trailers: Option<&'static str>,
    damage: Option<u8>,
}

fn shape() -> impl Strategy<Value = Shape> {
    let chunking = (
        prop::collection::vec(0usize..40, 0..4),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.1),
        prop::option::weighted(
            0.4,
            prop::sample::select(vec![
                "x-t: 1\r\n",
                "x-t: 1\r\nx-u: 2\r\n",
                "bad trailer\r\n",
                "x-t: a\rb\r\n",
                "x-t: caf\u{e9}\r\n",
            ]),
        ),
        prop::option::weighted(0.2, 0u8..6),
    )
        .prop_map(|(cuts, upper, extension, lws, bare_lf, trailers, damage)| Chunking {
            cuts,
            upper,
            extension,
            lws,
            bare_lf,
            trailers,
            damage,
        });
    prop_oneof![
        2 => Just(Shape::None),
        4 => (-2i64..3).prop_map(Shape::Length),
        1 => prop::sample::select(vec!["+3", "-1", "abc", "", "3 ", "0x3", "99999999999999999999"]).prop_map(Shape::LengthText),
        1 => (0i64..2).prop_map(Shape::TwoLengths),
        4 => (prop::sample::select(vec!["chunked", "Chunked", "gzip, chunked", " chunked"]), chunking)
            .prop_map(|(te, style)| Shape::Chunked { te, style }),
        1 => prop::sample::select(vec!["gzip", "chunked, gzip", "identity"]).prop_map(Shape::Coded),
        1 => Just(Shape::Both),
    ]
}

fn chunked(body: &[u8], style: &Chunking) -> Vec<u8> {
    let mut cuts: Vec<usize> = style.cuts.iter().map(|&c| c.min(body.len())).collect();
    cuts.push(body.len());
    cuts.sort_unstable();
    let (mut out, mut at) = (Vec::new(), 0);
    let end = if style.bare_lf { "\n" } else { "\r\n" };
    for cut in cuts {
        if cut == at {
            continue;
        }
        let size = if style.upper { format!("{:X}", cut - at) } else { format!("{:x}", cut - at) };
        out.extend_from_slice(size.as_bytes());
        if style.lws {
            out.extend_from_slice(b" \t");
        }
        if style.extension {
            out.extend_from_slice(b";name=\"v\"");
        }
        out.extend_from_slice(end.as_bytes());
        out.extend_from_slice(&body[at..cut]);
        out.extend_from_slice(b"\r\n");
        at = cut;
    }
    out.extend_from_slice(b"0\r\n");
    if let Some(trailers) = style.trailers {
        out.extend_from_slice(trailers.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if let Some(damage) = style.damage {
        let at = (usize::from(damage) * 7) % out.len();
        match damage % 3 {
            0 => out.truncate(at),
            1 => out[at] = b'z',
            _ => out.insert(at, b'\n'),
        }
    }
    out
}

fn answer() -> impl Strategy<Value = (Vec<u8>, bool)> {
    (
        informational(),
        status_line(),
        prop::collection::vec(header_line(), 0..4),
        shape(),
        prop::collection::vec(any::<u8>(), 0..40),
        prop::bool::weighted(0.1),
        prop::option::weighted(
            0.2,
            prop::sample::select(vec!["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi", "junk"]),
        ),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(info, status, lines, framing, body, lf_head, after, head_request)| {
            let eol = if lf_head { "\n" } else { "\r\n" };
            let mut head = format!("{info}{status}{eol}");
            for line in lines {
                head.push_str(line);
                head.push_str(eol);
            }
            let len = body.len() as i64;
            let mut payload = body.clone();
            match framing {
                Shape::None => {}
                Shape::Length(off) => head.push_str(&format!("content-length: {}{eol}", (len + off).max(0))),
                Shape::LengthText(text) => head.push_str(&format!("content-length: {text}{eol}")),
                Shape::TwoLengths(off) => {
                    head.push_str(&format!("content-length: {len}{eol}content-length: {}{eol}", len + off))
                }
                Shape::Chunked { te, style } => {
                    head.push_str(&format!("transfer-encoding: {te}{eol}"));
                    payload = chunked(&body, &style);
                }
                Shape::Coded(te) => head.push_str(&format!("transfer-encoding: {te}{eol}")),
                Shape::Both => {
                    head.push_str(&format!("content-length: {len}{eol}transfer-encoding: chunked{eol}"));
                    payload = chunked(
                        &body,
                        &Chunking {
                            cuts: vec![],
                            upper: false,
                            extension: false,
                            lws: false,
                            bare_lf: false,
                            trailers: None,
                            damage: None,
                        },
                    );
                }
            }
            head.push_str(eol);
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(&payload);
            if let Some(after) = after {
                bytes.extend_from_slice(after.as_bytes());
            }
            (bytes, head_request)
        })
}

/// A deadline no exchange of these tests reaches.
fn far() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// On every answer, keygate's client reads what hyper's reads (status, headers,
    /// body bytes, trailers) and refuses or fails where hyper does.
    #[test]
    fn reads_every_answer_as_hyper_does(
        (bytes, head_request) in answer(),
        piece in prop::option::weighted(0.5, 1usize..8),
    ) {
        let method = if head_request { Method::HEAD } else { Method::GET };
        let rt = runtime();
        let ours = rt.block_on(keygate(bytes.clone(), piece, method.clone()));
        let theirs = rt.block_on(hyper(bytes.clone(), piece, method));
        prop_assert!(agree(&ours, &theirs, &bytes), "on {:?}:\n{:?}\n{:?}", String::from_utf8_lossy(&bytes), ours, theirs);
        prop_assert_ne!(ours, Outcome::Hung);
    }
}

/// `Content-Length` lines the sweep's shapes do not make (a bad value before or after
/// a good one, comma lists agreeing or not): read as hyper's client reads them.
#[test]
fn every_content_length_line_counts_as_hyper_counts_them() {
    let cases: [&[&str]; 8] = [
        &["x", "5"],
        &["5", "x"],
        &["5", "6"],
        &["5, 5"],
        &["5", "5, 5"],
        &["5, 6"],
        &["", "5"],
        &["5", " 5 "],
    ];
    let rt = runtime();
    for lines in cases {
        let mut bytes = b"HTTP/1.1 200 OK\r\n".to_vec();
        for line in lines {
            bytes.extend_from_slice(format!("content-length: {line}\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\nhello");
        let ours = rt.block_on(keygate(bytes.clone(), None, Method::GET));
        let theirs = rt.block_on(hyper(bytes.clone(), None, Method::GET));
        assert!(agree(&ours, &theirs, &bytes), "{lines:?}:\n{ours:?}\n{theirs:?}");
    }
}

/// Sends a `GET` on `conn`: the answer's body, still to be read, which gives `conn` back
/// to `pool` at its end.
async fn answered(
    mut conn: Conn<DuplexStream>,
    pool: &Arc<Pool<Conn<DuplexStream>>>,
) -> Result<Body<DuplexStream>, ()> {
    let mut out = Outgoing::new(built(&Method::GET, crate::body::empty()), &HeaderValue::from_static("up"))
        .map_err(|_| ())?;
    let answer = exchange(&mut conn, &mut out, far()).await.map_err(|_| ())?;
    Ok(answer.into_response(conn, pool.clone()).into_body())
}

/// Sends a `GET` on `conn` and reads the answer's body whole (or to its failure).
async fn get(conn: Conn<DuplexStream>, pool: &Arc<Pool<Conn<DuplexStream>>>) -> Result<Vec<u8>, ()> {
    let read = collect(answered(conn, pool).await?).await;
    read.end.map(|()| read.data).map_err(|_| ())
}

/// An upstream on a duplex stream that answers each request with the next of `answers`
/// and then keeps the connection open, quiet.
fn upstream_of(answers: Vec<&'static str>) -> DuplexStream {
    let (client, mut server) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        for answer in answers {
            while !seen.ends_with(b"\r\n\r\n") {
                if !matches!(server.read(&mut byte).await, Ok(1)) {
                    return;
                }
                seen.push(byte[0]);
            }
            seen.clear();
            if server.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
        let _ = server.read(&mut byte).await;
    });
    client
}

/// An upstream that answers the first `answered` requests (an empty 200 each) and then
/// reads on without ever answering.
fn answering_then_silent(answered: usize) -> DuplexStream {
    let (client, mut server) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let (mut seen, mut byte, mut heads) = (Vec::new(), [0u8; 1], 0);
        while matches!(server.read(&mut byte).await, Ok(1)) {
            seen.push(byte[0]);
            if seen.ends_with(b"\r\n\r\n") {
                seen.clear();
                heads += 1;
                if heads <= answered
                    && server.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.is_err()
                {
                    return;
                }
            }
        }
    });
    client
}

/// One exchange on `conn` by `deadline`: whether it was answered or timed out (any
/// other failure panics), and when it ended.
async fn timed_exchange(conn: &mut Conn<DuplexStream>, deadline: Instant) -> (bool, Instant) {
    let mut out = Outgoing::new(built(&Method::GET, crate::body::empty()), &HeaderValue::from_static("up"))
        .expect("request");
    match exchange(conn, &mut out, deadline).await {
        Ok(answer) => {
            assert_eq!(answer.status, StatusCode::OK);
            (true, Instant::now())
        }
        Err(Failure::Failed(UpstreamFailure::Timeout)) => (false, Instant::now()),
        Err(other) => panic!("the exchange failed otherwise: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn each_exchange_on_a_connection_is_timed_by_its_own_deadline() {
    let mut conn = Conn::new(answering_then_silent(2));
    let start = Instant::now();
    // Answered well within a long deadline, then again after the first deadline has
    // passed while the connection was idle (its timer fired for nothing).
    assert!(timed_exchange(&mut conn, start + Duration::from_secs(10)).await.0);
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(timed_exchange(&mut conn, Instant::now() + Duration::from_secs(10)).await.0);
    // Unanswered: it ends at its deadline, a shorter one than the last (the timer
    // moves earlier too), not at the one before.
    let asked = Instant::now();
    let (answered, ended) = timed_exchange(&mut conn, asked + Duration::from_secs(3)).await;
    assert!(!answered, "the silent upstream cannot answer");
    assert_eq!(ended - asked, Duration::from_secs(3));
    // And a later deadline after a timeout is kept to as well.
    let asked = Instant::now();
    let (answered, ended) = timed_exchange(&mut conn, asked + Duration::from_secs(7)).await;
    assert!(!answered);
    assert_eq!(ended - asked, Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn an_exchange_begun_before_the_last_deadline_is_timed_by_its_own() {
    let mut conn = Conn::new(answering_then_silent(1));
    let start = Instant::now();
    assert!(timed_exchange(&mut conn, start + Duration::from_secs(10)).await.0);
    // Asked 5 s later with 10 s to go: the timer, still set for the first deadline,
    // fires 5 s in; the exchange waits on to its own.
    tokio::time::advance(Duration::from_secs(5)).await;
    let asked = Instant::now();
    let (answered, ended) = timed_exchange(&mut conn, asked + Duration::from_secs(10)).await;
    assert!(!answered);
    assert_eq!(ended - asked, Duration::from_secs(10));
}

/// How many open idle connections `pool` holds (taking them out).
fn idle(pool: &Pool<Conn<DuplexStream>>) -> usize {
    std::iter::from_fn(|| pool.checkout(tokio::time::Instant::now())).count()
}

#[tokio::test]
async fn a_connection_goes_back_only_after_an_answer_read_to_its_end_that_keeps_it_alive() {
    let cases: [(&str, &str, usize); 8] = [
        ("length", "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 1),
        ("chunked", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 1),
        (
            "trailers",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\n",
            1,
        ),
        ("asked to close", "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", 0),
        ("HTTP/1.0", "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", 0),
        (
            "HTTP/1.0 keep-alive",
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
            1,
        ),
        ("stray bytes after", "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n", 0),
        ("after a 100", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 1),
    ];
    for (name, answer, kept) in cases {
        let pool = Arc::new(Pool::default());
        let body = get(Conn::new(upstream_of(vec![answer])), &pool).await;
        assert!(body.is_ok(), "{name}");
        assert_eq!(idle(&pool), kept, "{name}");
    }
}

#[tokio::test]
async fn a_kept_connection_keeps_a_small_buffer_and_carries_the_next_request() {
    let pool = Arc::new(Pool::default());
    let first = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst";
    let second = "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond";
    assert_eq!(get(Conn::new(upstream_of(vec![first, second])), &pool).await, Ok(b"first".to_vec()));
    let mut conn = pool.checkout(tokio::time::Instant::now()).expect("kept");
    assert!(conn.buf.is_empty() && conn.buf.capacity() <= KEPT_BUFFER, "nothing left, a small buffer kept");
    assert!(!conn.is_closed());
    assert_eq!(get(conn, &pool).await, Ok(b"second".to_vec()));
}

#[tokio::test]
async fn a_body_dropped_half_read_or_cut_closes_its_connection() {
    let pool = Arc::new(Pool::default());
    let conn = Conn::new(upstream_of(vec!["HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"]));
    let mut body = answered(conn, &pool).await.unwrap();
    assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "half");
    drop(body);
    assert_eq!(idle(&pool), 0, "dropped half read");

    // Closed by the upstream mid-body: an error, never an end.
    let cut = upstream("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf".into(), None);
    assert_eq!(get(Conn::new(cut), &pool).await, Err(()));
    assert_eq!(idle(&pool), 0, "cut");
}

/// Sends a `GET` on `conn` and takes its answer's body whole, if it came whole.
async fn get_whole(
    conn: Conn<DuplexStream>,
    pool: &Arc<Pool<Conn<DuplexStream>>>,
) -> (Option<Bytes>, Body<DuplexStream>) {
    let mut body = answered(conn, pool).await.expect("an answer");
    (body.take_whole(), body)
}

#[tokio::test]
async fn a_body_that_came_whole_is_taken_at_once_and_its_connection_goes_home() {
    let pool = Arc::new(Pool::default());
    let (whole, body) =
        get_whole(Conn::new(upstream_of(vec!["HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst"])), &pool)
            .await;
    assert_eq!(whole.as_deref(), Some(&b"first"[..]));
    assert!(body.is_end_stream());
    assert_eq!(idle(&pool), 1, "home before the body is dropped");
    drop(body);

    // Bytes after the body: the body alone is taken, and the connection closes.
    let stray = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n";
    let (whole, _body) = get_whole(Conn::new(upstream_of(vec![stray])), &pool).await;
    assert_eq!(whole.as_deref(), Some(&b"ok"[..]));
    assert_eq!(idle(&pool), 0, "stray bytes");

    // Not all in hand, chunked (trailers may follow), or empty: nothing is taken, and
    // the body reads on as it would have.
    let cases = [
        ("half", "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf", "half"),
        ("chunked", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "ok"),
        ("until close", "HTTP/1.1 200 OK\r\n\r\nall", "all"),
    ];
    for (name, answer, first) in cases {
        let (whole, mut body) = get_whole(Conn::new(upstream_of(vec![answer])), &pool).await;
        assert_eq!(whole, None, "{name}");
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), first, "{name}");
    }
    let (whole, body) =
        get_whole(Conn::new(upstream_of(vec!["HTTP/1.1 204 No Content\r\n\r\n"])), &pool).await;
    assert_eq!(whole, None, "empty");
    assert!(body.is_end_stream());
    assert_eq!(idle(&pool), 1, "an empty body is over with its head");
}

#[tokio::test]
async fn an_idle_connection_is_closed_once_the_upstream_hangs_up_or_talks_unasked() {
    let (client, server) = tokio::io::duplex(64);
    let mut conn = Conn::new(client);
    assert!(!conn.is_closed(), "quiet");
    drop(server);
    assert!(conn.is_closed(), "hung up");

    let (client, mut server) = tokio::io::duplex(64);
    let mut conn = Conn::new(client);
    server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
    assert!(conn.is_closed(), "bytes nobody asked for");
}

/// A request body that says it has `declared` bytes and gives `given`.
fn body_of(declared: u64, given: &'static [u8]) -> ProxyBody {
    let frames = futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(given)))]);
    let body = http_body_util::StreamBody::new(frames);
    Declared { inner: body, declared }.boxed_unsync()
}

struct Declared<B> {
    inner: B,
    declared: u64,
}

impl<B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin> http_body::Body for Declared<B> {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.declared)
    }
}

#[tokio::test]
async fn a_request_body_is_sent_with_its_length_and_one_that_lies_about_it_is_refused() {
    for (declared, given, sent) in
        [(5, &b"hello"[..], true), (9, &b"hello"[..], false), (3, &b"hello"[..], false)]
    {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let mut conn = Conn::new(client);
        let Ok(mut out) =
            Outgoing::new(built(&Method::POST, body_of(declared, given)), &HeaderValue::from_static("up"))
        else {
            // More bytes ready at once than declared: refused before a byte is written.
            assert!(!sent && (given.len() as u64) > declared, "declared {declared}");
            continue;
        };
        let answered = tokio::spawn(async move {
            let mut seen = vec![0u8; 4096];
            let n = server.read(&mut seen).await.unwrap();
            seen.truncate(n);
            let _ = server.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            seen
        });
        let result = exchange(&mut conn, &mut out, far()).await;
        assert_eq!(result.is_ok(), sent, "declared {declared}");
        if sent {
            let seen = String::from_utf8(answered.await.unwrap()).unwrap();
            assert_eq!(
                seen,
                "POST /export/x?y=1 HTTP/1.1\r\nhost: up\r\naccept: */*\r\ncontent-length: 5\r\n\r\nhello"
            );
        } else {
            assert!(matches!(result, Err(Failure::Failed(UpstreamFailure::Protocol))), "declared {declared}");
        }
    }
}

/// A `Connection` line that names no header is read and left out of the answer; one
/// that names one stays, for the way down to remove both. (`Content-Length` frames each
/// body here, so the body carries it, not the map.) Names are read again when a
/// line's letters change.
#[test]
fn connection_lines_naming_nothing_more_are_read_and_left_out() {
    let (mut names, mut spans) = (Names::default(), Vec::new());
    let head = |text: &str| BytesMut::from(text.as_bytes());
    let mut buf = head("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n");
    let answer = parse(&mut buf, &mut names, &mut spans, false).unwrap().unwrap();
    assert!(answer.keep_alive);
    assert_eq!(pairs(&answer.headers), [("x-a".into(), b"1".to_vec())]);
    let mut buf = head("HTTP/1.1 200 OK\r\nconnection: close, TE\r\nx-a: 2\r\nContent-Length: 0\r\n\r\n");
    let answer = parse(&mut buf, &mut names, &mut spans, false).unwrap().unwrap();
    assert!(!answer.keep_alive);
    assert_eq!(pairs(&answer.headers), [("x-a".into(), b"2".to_vec())]);
    let mut buf =
        head("HTTP/1.1 200 OK\r\nConnection: keep-alive, X-A\r\nX-A: 3\r\nContent-Length: 0\r\n\r\n");
    let answer = parse(&mut buf, &mut names, &mut spans, false).unwrap().unwrap();
    assert!(answer.keep_alive);
    let kept = [("connection".into(), b"keep-alive, X-A".to_vec()), ("x-a".into(), b"3".to_vec())];
    assert_eq!(pairs(&answer.headers), kept);
}

/// A connection's answers are read with the same room for their lines' places: a
/// head with fewer lines than the one before it has its own lines only.
#[test]
fn a_shorter_head_after_a_longer_one_has_only_its_own_lines() {
    let (mut names, mut spans) = (Names::default(), Vec::new());
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\nX-D: 4\r\nContent-Length: 0\r\n\r\n"[..],
    );
    let answer = parse(&mut buf, &mut names, &mut spans, false).unwrap().unwrap();
    assert_eq!(answer.headers.len(), 4);
    let mut buf = BytesMut::from(&b"HTTP/1.1 204 No Content\r\nX-E: 5\r\n\r\n"[..]);
    let answer = parse(&mut buf, &mut names, &mut spans, false).unwrap().unwrap();
    assert_eq!(pairs(&answer.headers), [("x-e".into(), b"5".to_vec())]);
    assert!(buf.is_empty());
}

/// A caller's header line, from names every rule on the way up reads: framing and
/// hop-by-hop names, `Connection` naming other lines, forwarding headers, names with
/// `_`, credentials, and `Accept-Encoding` lines narrowed or not.
fn caller_line() -> impl Strategy<Value = (&'static str, &'static str)> {
    prop::sample::select(vec![
        ("connection", "keep-alive"),
        ("Connection", "close, X-Named"),
        ("connection", "accept-encoding"),
        ("connection", "X-RJM-API-Key"),
        ("x-named", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("transfer-encoding", "chunked"),
        ("host", "h.example"),
        ("content-length", "3"),
        ("expect", "100-continue"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x_under", "1"),
        ("x-rjm-api-key", "caller"),
        ("authorization", "Bearer caller"),
        ("accept-encoding", "gzip"),
        ("accept-encoding", "br"),
        ("accept-encoding", "gzip;q=1, br, zstd"),
        ("Accept-Encoding", "identity"),
        ("accept-encoding", ""),
        ("accept", "*/*"),
        ("content-type", "application/json"),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// The head written from its rules is, byte for byte, the head of the request those
    /// rules build: the same lines in the same order, the same target.
    #[test]
    fn a_head_written_from_its_rules_is_the_built_heads_bytes(
        lines in prop::collection::vec(caller_line(), 0..10),
        drop_authorization in any::<bool>(),
        inject in any::<bool>(),
        head_request in any::<bool>(),
        path in "/[a-z0-9/%{}]{0,12}",
        query in proptest::option::of("[a-z=&%?]{0,12}"),
    ) {
        let mut caller = HeaderMap::new();
        for (name, value) in &lines {
            caller.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        let key = HeaderName::from_static("x-rjm-api-key");
        let mut drop = vec![key.clone()];
        if drop_authorization {
            drop.push(header::AUTHORIZATION);
        }
        let mut value = HeaderValue::from_static("real-key");
        value.set_sensitive(true);
        let inject = inject.then_some((&key, &value));
        let method = if head_request { Method::HEAD } else { Method::GET };
        let head = || crate::rewrite::UpstreamHead::new(&method, &caller, &drop, inject, ["/base", &path], query.as_deref().map(crate::secret::WipedText::from)).unwrap();
        let host = HeaderValue::from_static("up.example:8443");
        let written = Outgoing::new(Outbound::Head(head(), crate::body::empty()), &host).unwrap();
        let request = Outbound::Head(head(), crate::body::empty()).into_request().unwrap();
        let built = Outgoing::new(Outbound::built(request), &host).unwrap();
        prop_assert_eq!(
            String::from_utf8_lossy(&written.bytes),
            String::from_utf8_lossy(&built.bytes)
        );
        prop_assert_eq!(written.head, built.head);
    }
}

/// Every way keygate's HTTP/1.1 client writes a head with the key in it — in a header
/// or in the query, written from its rules or built first, with a head long enough to
/// outgrow its first buffer — leaves no copy of the key in freed memory.
#[test]
fn a_head_with_the_key_in_it_leaves_no_copy_of_the_key_in_freed_memory() {
    use crate::routes::Credential;
    use crate::secret::Secret;
    let key = "watched-key-c41a07";
    let name = HeaderName::from_static("x-rjm-api-key");
    let credentials = [
        Credential::header(name, "X-RJM-API-Key", "", "", &Secret::parse(key).unwrap()).unwrap(),
        Credential::query("apikey", &Secret::parse(key).unwrap()).unwrap(),
    ];
    let mut caller = HeaderMap::new();
    for at in 0..20 {
        let value = HeaderValue::from_static("a value long enough that the head outgrows 256 bytes");
        caller.append(HeaderName::try_from(format!("x-filler-{at}")).unwrap(), value);
    }
    let (method, host) = (Method::POST, HeaderValue::from_static("up.example"));
    let held = crate::freed::holding(key.as_bytes(), || {
        for credential in &credentials {
            for (built, target) in
                [(false, "/v2/client/7"), (true, "/v2/client/7"), (false, "/v2/cl\u{e9}nt")]
            {
                let query = credential.query_for(Some("a=1"), true).unwrap();
                let head = credential
                    .upstream_head(&method, &caller, [target, "/table/t/data"], query, true)
                    .unwrap();
                let outbound = Outbound::Head(head, crate::body::full("[{\"id\":1}]"));
                let outbound =
                    if built { Outbound::built(outbound.into_request().unwrap()) } else { outbound };
                let out = Outgoing::new(outbound, &host).unwrap();
                assert!(out.bytes.windows(key.len()).any(|w| w == key.as_bytes()), "the key was written");
                assert!(out.bytes.len() > 256);
            }
        }
    });
    assert_eq!(held, 0);
}

/// Where `Content-Length` frames the body, the body carries it (an exact size hint,
/// which every writer downstream writes) and the map does not; the length of a body
/// that is not there (`HEAD`, 304) stays in the map, as the writers need it there.
#[test]
fn a_length_that_frames_the_body_is_carried_by_the_body() {
    let (mut names, mut spans) = (Names::default(), Vec::new());
    let cases = [
        ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello", false, None, Some(5)),
        ("HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nabc", false, None, Some(3)),
        ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, Some("5"), Some(0)),
        ("HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n", false, Some("7"), Some(0)),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false, None, None),
    ];
    for (text, head_request, kept, hint) in cases {
        let mut buf = BytesMut::from(text.as_bytes());
        let answer = parse(&mut buf, &mut names, &mut spans, head_request).unwrap().unwrap();
        let line = answer.headers.get(header::CONTENT_LENGTH).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(line.as_deref(), kept, "{text:?}");
        let response = answer.into_response(Conn::new(tokio::io::duplex(64).0), Arc::default());
        assert_eq!(response.body().size_hint().exact(), hint, "{text:?}");
    }
}

/// A stub upstream on 127.0.0.1 that answers `ok` to every request head on every
/// connection, counts connections and heads, and never closes a connection first (an
/// idle one it was left by stays open on its side).
async fn counting_upstream() -> (std::net::SocketAddr, Arc<parking_lot::Mutex<Vec<usize>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let at = {
                let mut heads = seen.lock();
                heads.push(0);
                heads.len() - 1
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    let Ok(n @ 1..) = socket.read(&mut chunk).await else {
                        // Read to its end: held open, as a slow upstream would.
                        std::future::pending::<()>().await;
                        return;
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        seen.lock()[at] += 1;
                        socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                    }
                }
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn a_pooled_connection_that_takes_no_byte_is_left_and_the_request_goes_on_a_new_one() {
    let (addr, heads) = counting_upstream().await;
    let url: http::Uri = format!("http://{addr}/base").parse().unwrap();
    let key = super::super::UpstreamKey {
        url: url.to_string(),
        ca_digest: None,
        connect_timeout: Duration::from_secs(5),
    };
    let upstream = super::super::Upstream::new(&url, None, key).unwrap();
    let send =
        || upstream.send(built(&Method::GET, crate::body::empty()), Instant::now(), Duration::from_secs(5));
    let first = send().await.unwrap();
    assert_eq!(first.into_body().collect().await.unwrap().to_bytes(), "ok");
    // keygate's own side of the idle connection is shut for writing: a look at its read
    // side still finds it open, and its first write fails before a byte leaves.
    let mut idle = upstream.pool.checkout(Instant::now()).expect("the first connection went home");
    idle.io.shutdown().await.unwrap();
    upstream.pool.put(idle);
    let second = send().await.expect("sent again, on a new connection");
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(second.into_body().collect().await.unwrap().to_bytes(), "ok");
    assert_eq!(*heads.lock(), [1, 1], "one request on each of two connections");
}
