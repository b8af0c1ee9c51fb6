//! Reading a request head for keygate's HTTP/1.1 server: httparse (the parser hyper
//! uses, with the same settings), then only the heads whose meaning is plain. Anything
//! else — HTTP/1.0, `Transfer-Encoding`, `Expect`, `Upgrade`, `CONNECT`, a target that
//! is not a path, a `Content-Length` that is not one run of digits, a header hyper would
//! refuse, a head too large or with too many lines — is [`Head::HandOver`]: the
//! connection goes to hyper with the bytes read so far, and hyper decides (answers,
//! refuses) exactly as it does for every other connection.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};

use crate::header_names::Names;

/// As many header lines as hyper's HTTP/1 server takes by default.
const MAX_HEADERS: usize = 100;

/// What the bytes read so far hold.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per request head, moved once; a box would be an allocation each"
)]
pub(super) enum Head {
    /// Not a whole head yet.
    Partial,
    /// A head keygate's server serves; its bytes have been taken from the buffer.
    Plain(Parsed),
    /// A head (or bytes) for hyper to read.
    HandOver,
}

/// A plain HTTP/1.1 request head.
#[derive(Debug)]
pub(super) struct Parsed {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// The `Content-Length`; 0 without one.
    pub length: u64,
    /// The caller asked for the connection to close after this request.
    pub close: bool,
}

/// Reads the head at the start of `buf`. On [`Head::Plain`], the head's bytes are taken
/// off `buf` (what follows, body or next request, stays). `names` are the connection's:
/// the names its last heads had at each line.
pub(super) fn read(buf: &mut BytesMut, names: &mut Names) -> Head {
    // Uninitialised lines: zeroing a hundred of them would cost more than the parse.
    let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    if !ends_a_head(buf) {
        // Not whole yet; httparse still says whether what came can begin a request.
        return match request.parse_with_uninit_headers(buf, &mut lines) {
            Ok(httparse::Status::Partial) => Head::Partial,
            _ => Head::HandOver,
        };
    }
    // The bytes become one shared `Bytes` before the one parse, so the target and every
    // header value point into them, as hyper does.
    let whole = std::mem::take(buf).freeze();
    let parsed = match request.parse_with_uninit_headers(&whole, &mut lines) {
        Ok(httparse::Status::Complete(len)) => build(&whole, &request, names).map(|parsed| (parsed, len)),
        Ok(httparse::Status::Partial) => {
            *buf = BytesMut::from(&whole[..]);
            return Head::Partial;
        }
        Err(_) => None,
    };
    match parsed {
        Some((parsed, len)) => {
            if whole.len() > len {
                *buf = BytesMut::from(&whole[len..]);
            }
            Head::Plain(parsed)
        }
        None => {
            // Every byte goes back: hyper reads it all.
            *buf = BytesMut::from(&whole[..]);
            Head::HandOver
        }
    }
}

/// True when `buf` holds an empty line (`\n\n` or `\n\r\n`), which ends a head.
fn ends_a_head(buf: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', buf).any(|at| matches!(&buf[at + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

/// The request head `request` parsed from `head`, or `None` when hyper should read it.
fn build(head: &Bytes, request: &httparse::Request<'_, '_>, names: &mut Names) -> Option<Parsed> {
    let (Some(method), Some(path), Some(1)) = (request.method, request.path, request.version) else {
        return None;
    };
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    if method == Method::CONNECT || !path.starts_with('/') {
        return None;
    }
    let uri = Uri::from_maybe_shared(head.slice_ref(path.as_bytes())).ok()?;
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    let mut length = None;
    let mut close = false;
    for (at, line) in request.headers.iter().enumerate() {
        let name = names.read_with(at, line.name.as_bytes(), header_name)?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(line.value)).ok()?;
        match name {
            header::TRANSFER_ENCODING | header::EXPECT | header::UPGRADE => return None,
            header::CONTENT_LENGTH => {
                if length.is_some() {
                    return None;
                }
                length = Some(digits(value.as_bytes())?);
            }
            header::CONNECTION => {
                for token in crate::rewrite::connection_tokens(&value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        return None;
                    }
                }
            }
            _ => {}
        }
        headers.append(name, value);
    }
    Some(Parsed { method, uri, headers, length: length.unwrap_or(0), close })
}

/// Names callers of the BI presets send that are not among `http`'s standard headers,
/// kept as statics: a name parsed from bytes that is not standard is an allocation.
static CUSTOM_NAMES: [HeaderName; 4] = [
    HeaderName::from_static("x-rjm-api-key"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-real-ip"),
];

fn header_name(raw: &[u8]) -> Option<HeaderName> {
    let known = CUSTOM_NAMES
        .iter()
        .find(|n| n.as_str().len() == raw.len() && n.as_str().as_bytes().eq_ignore_ascii_case(raw));
    match known {
        Some(name) => Some(name.clone()),
        None => HeaderName::from_bytes(raw).ok(),
    }
}

/// A `Content-Length` value that is one run of ASCII digits and fits in 63 bits.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(text: &str) -> (Head, BytesMut) {
        let mut buf = BytesMut::from(text.as_bytes());
        (read(&mut buf, &mut Names::default()), buf)
    }

    fn plain(text: &str) -> (Parsed, BytesMut) {
        match read_all(text) {
            (Head::Plain(parsed), rest) => (parsed, rest),
            (other, _) => panic!("{text:?}: {other:?}"),
        }
    }

    /// True when `text` goes to hyper, every byte of it left in the buffer.
    fn handed_over(text: &str) -> bool {
        let (head, rest) = read_all(text);
        assert_eq!(&rest[..], text.as_bytes(), "a handed-over head keeps its bytes");
        matches!(head, Head::HandOver)
    }

    #[test]
    fn a_plain_head_is_read_and_split_off() {
        let (parsed, rest) = plain(
            "POST /import/v2/client/7/table/t/data?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nX-A: 1\r\nX-A: 2\r\n\r\n{}GET",
        );
        assert_eq!(parsed.method, Method::POST);
        assert_eq!(parsed.uri, "/import/v2/client/7/table/t/data?x=1");
        assert_eq!(parsed.length, 2);
        assert!(!parsed.close);
        assert_eq!(parsed.headers.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(parsed.headers.len(), 4);
        assert_eq!(&rest[..], b"{}GET");
    }

    #[test]
    fn known_custom_names_are_read_in_any_case_and_others_as_sent() {
        let (parsed, _) = plain(
            "GET / HTTP/1.1\r\nX-RJM-API-Key: k\r\nx-real-ip: i\r\nX-Rjm-Api-Keys: o\r\nx-rjm-api-ke: p\r\n\r\n",
        );
        let names: Vec<&str> = parsed.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-rjm-api-key", "x-real-ip", "x-rjm-api-keys", "x-rjm-api-ke"]);
        assert_eq!(parsed.headers["x-rjm-api-key"], "k");
        assert!(handed_over("GET / HTTP/1.1\r\nx-rjm-api-key\u{1}: k\r\n\r\n"));
    }

    #[test]
    fn partial_heads_wait_for_more() {
        for text in ["", "GET", "GET / HTTP/1.1\r\nHost: h\r\n", "GET / HTTP/1.1\r\nHost: h\r\n\r"] {
            assert!(matches!(read_all(text).0, Head::Partial), "{text:?}");
        }
    }

    #[test]
    fn a_head_cut_anywhere_waits_then_reads_the_same() {
        for text in [
            "POST /x?y=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\nHost: h\n\n",
            "GET / HTTP/1.1\r\nHost: h\n\r\n",
        ] {
            let end =
                text.find("\n\r\n").map(|i| i + 3).or_else(|| text.find("\n\n").map(|i| i + 2)).unwrap();
            for cut in 0..end {
                assert!(matches!(read_all(&text[..cut]).0, Head::Partial), "{text:?} cut at {cut}");
            }
            let (parsed, rest) = plain(text);
            assert_eq!(parsed.headers.get("host").unwrap(), "h", "{text:?}");
            assert_eq!(&rest[..], &text.as_bytes()[end..], "{text:?}");
        }
    }

    #[test]
    fn connection_close_is_noted_among_other_tokens() {
        assert!(plain("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n").0.close);
        assert!(!plain("GET / HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n").0.close);
    }

    #[test]
    fn heads_whose_meaning_is_not_plain_go_to_hyper() {
        for text in [
            "GET / HTTP/1.0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2, 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n",
            "CONNECT connect.rjmetrics.com:443 HTTP/1.1\r\nHost: connect.rjmetrics.com:443\r\n\r\n",
            "GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nHo st: h\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(handed_over(text), "{text:?}");
        }
    }

    #[test]
    fn too_many_header_lines_go_to_hyper() {
        let mut text = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            text.push_str(&format!("x-{i}: v\r\n"));
        }
        text.push_str("\r\n");
        assert!(handed_over(&text));
    }

    #[test]
    fn content_length_digits() {
        assert_eq!(digits(b"0"), Some(0));
        assert_eq!(digits(b"007"), Some(7));
        assert_eq!(digits(b"123456789012345678"), Some(123_456_789_012_345_678));
        for bad in [&b""[..], b"-1", b" 1", b"1 ", b"0x10", b"1234567890123456789"] {
            assert_eq!(digits(bad), None, "{bad:?}");
        }
    }

    /// Heads built from pieces that matter to framing and parsing, in any order.
    fn piece() -> impl proptest::strategy::Strategy<Value = &'static str> {
        proptest::sample::select(vec![
            "host: h\r\n",
            "content-length: 3\r\n",
            "content-length: 0\r\n",
            "content-length: x\r\n",
            "transfer-encoding: chunked\r\n",
            "connection: close\r\n",
            "connection: upgrade\r\n",
            "expect: 100-continue\r\n",
            "x-a: \u{e9}\r\n",
            "x-b:\tv \r\n",
            " folded\r\n",
            "bad header\r\n",
            "x-c: a\rb\r\n",
            "\r\n",
            "abc",
        ])
    }

    proptest::proptest! {
        /// Whatever the bytes: no panic; a head served here is split off exactly and
        /// the rest left; a head for hyper leaves every byte for hyper.
        #[test]
        fn every_head_is_served_whole_or_handed_over_untouched(
            line in proptest::sample::select(vec!["GET / HTTP/1.1\r\n", "POST /x?y HTTP/1.1\r\n", "GET / HTTP/1.0\r\n", "G\u{e9}T / HTTP/1.1\r\n", "GET  / HTTP/1.1\r\n"]),
            pieces in proptest::collection::vec(piece(), 0..8),
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..16),
        ) {
            let mut input = line.as_bytes().to_vec();
            for p in &pieces {
                input.extend_from_slice(p.as_bytes());
            }
            input.extend_from_slice(&tail);
            let mut buf = BytesMut::from(&input[..]);
            match read(&mut buf, &mut Names::default()) {
                Head::HandOver | Head::Partial => proptest::prop_assert_eq!(&buf[..], &input[..]),
                Head::Plain(parsed) => {
                    proptest::prop_assert!(input.ends_with(&buf), "the rest is what followed the head");
                    let head = &input[..input.len() - buf.len()];
                    proptest::prop_assert!(head.ends_with(b"\n\r\n") || head.ends_with(b"\n\n"));
                    // Header lines as they start (a piece may run into the one before it).
                    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
                    proptest::prop_assert!(!text.contains("\ntransfer-encoding") && !text.contains("\nexpect:"));
                    proptest::prop_assert_eq!(parsed.close, text.contains("\nconnection: close"));
                    proptest::prop_assert!(text.matches("\ncontent-length: ").count() <= 1);
                    let three = text.contains("\ncontent-length: 3");
                    proptest::prop_assert_eq!(parsed.length, if three { 3 } else { 0 });
                }
            }
        }
    }
}
