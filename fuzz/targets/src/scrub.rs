//! `keygate::scrub::Scrubber` never panics, and whatever it returns holds no form of any
//! of its secrets, whether the body is scrubbed whole or pushed through its streaming API
//! in pieces (and both give the same bytes), and in a header value or name.
//!
//! Input: `[n] [n piece lengths] [secret] \n [body]`. The piece lengths are used in
//! turn until the body is consumed (`0` pushes an empty piece). The line up to the first
//! `\n` is one more secret, beside three fixed ones, when it is a valid secret value;
//! without a `\n` the whole rest is the body.
//!
//! The forms are recomputed here from the documented rule (raw; percent-encoded keeping
//! RFC 3986 unreserved bytes, and encoding every non-alphanumeric byte, each also with
//! `+` for a space; raw with `\/` for `/`), ASCII case ignored. A form the `[REDACTED]`
//! marker itself can complete (one holding `[` or `]`, or inside `redacted`) is checked
//! between markers only: scrubbing cannot keep a neighbour of the marker from spelling
//! it, as it cannot keep the marker from holding `acted`.

use http::{HeaderMap, HeaderName, HeaderValue};
use keygate::scrub::{REDACTED, Scrubber};
use keygate::secret::Secret;

use crate::contains_ignore_case;

/// Fixed secrets: a BI-style hex key, one with `/`, space and `+`, and a non-ASCII one.
const FIXED: [&str; 3] = ["abcdef0123456789abcdef0123456789", "s3cr/t k+y", "p\u{e4}ss~w\u{f6}rd.1"];

/// Longest fuzzed secret used, in bytes.
const MAX_SECRET: usize = 64;

/// The target.
pub fn scrub(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 16).min(rest.len());
    let (lengths, rest) = rest.split_at(n);
    let (fuzzed, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (std::str::from_utf8(&rest[..i]).ok(), &rest[i + 1..]),
        None => (None, rest),
    };
    let mut secrets: Vec<Secret> = FIXED.iter().map(|s| Secret::new((*s).to_owned())).collect();
    if let Some(secret) = fuzzed.filter(|s| s.len() <= MAX_SECRET).and_then(|s| Secret::parse(s).ok()) {
        secrets.push(secret);
    }
    let Ok(scrubber) = Scrubber::new(&secrets) else { return };
    let forms: Vec<Vec<u8>> = secrets.iter().flat_map(|s| forms(s.expose())).collect();

    let scrubbed = scrubber.scrub(body);
    assert_eq!(scrubbed.is_some(), scrubber.finds(body), "scrub and finds disagree");
    let whole = scrubbed.unwrap_or_else(|| body.to_vec());
    assert_holds_no_form(&whole, &forms, "the whole body");
    let streamed = streamed(&scrubber, body, lengths);
    assert!(streamed == whole, "streamed {:?} != whole {:?}", lossy(&streamed), lossy(&whole));

    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(body) {
        headers.insert("x-echo", value);
    }
    if let Ok(name) = HeaderName::from_bytes(body) {
        headers.append(name, HeaderValue::from_static("1"));
    }
    scrubber.headers(&mut headers);
    for (name, value) in &headers {
        assert_holds_no_form(name.as_str().as_bytes(), &forms, "a header name");
        assert_holds_no_form(value.as_bytes(), &forms, "a header value");
    }
}

/// `body` pushed in pieces of `lengths` (in turn, until it is consumed), then finished.
fn streamed(scrubber: &Scrubber, body: &[u8], lengths: &[u8]) -> Vec<u8> {
    let mut held = Vec::new();
    let mut out = Vec::new();
    let mut rest = body;
    let mut turn = lengths.iter().cycle();
    // Every full turn of only `0`s pushes nothing: the rest then goes in one piece.
    let progress = lengths.iter().any(|&l| l > 0);
    while !rest.is_empty() {
        let length = match turn.next() {
            Some(&l) if progress => usize::from(l).min(rest.len()),
            _ => rest.len(),
        };
        let (piece, after) = rest.split_at(length);
        out.extend(scrubber.push(&mut held, piece));
        rest = after;
    }
    out.extend(scrubber.finish(held));
    out
}

fn assert_holds_no_form(text: &[u8], forms: &[Vec<u8>], what: &str) {
    for form in forms {
        let near_marker = form.iter().any(|b| b"[]".contains(b)) || contains_ignore_case(b"redacted", form);
        let leaked = if near_marker {
            split_on_marker(text).any(|between| contains_ignore_case(between, form))
        } else {
            contains_ignore_case(text, form)
        };
        assert!(!leaked, "{what} holds {:?}: {:?}", lossy(form), lossy(text));
    }
}

/// The stretches of `text` between `[REDACTED]` markers (ASCII case ignored).
fn split_on_marker(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let marker = REDACTED.as_bytes();
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let now = rest?;
        match now.windows(marker.len()).position(|w| w.eq_ignore_ascii_case(marker)) {
            Some(at) => {
                rest = Some(&now[at + marker.len()..]);
                Some(&now[..at])
            }
            None => {
                rest = None;
                Some(now)
            }
        }
    })
}

/// Every form of `value` the scrubber documents that it looks for.
fn forms(value: &str) -> Vec<Vec<u8>> {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    let alphanumeric = |b: u8| b.is_ascii_alphanumeric();
    let mut out = vec![value.as_bytes().to_vec()];
    for keep in [&unreserved as &dyn Fn(u8) -> bool, &alphanumeric] {
        let encoded: String = value
            .bytes()
            .map(|b| if keep(b) { char::from(b).to_string() } else { format!("%{b:02X}") })
            .collect();
        out.push(encoded.replace("%20", "+").into_bytes());
        out.push(encoded.into_bytes());
    }
    if value.contains('/') {
        out.push(value.replace('/', "\\/").into_bytes());
    }
    out
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_are_the_documented_ones() {
        let got: Vec<String> = forms("a/b c").into_iter().map(|f| String::from_utf8(f).unwrap()).collect();
        assert_eq!(got, ["a/b c", "a%2Fb+c", "a%2Fb%20c", "a%2Fb+c", "a%2Fb%20c", "a\\/b c"]);
        let got: Vec<String> = forms("x-y").into_iter().map(|f| String::from_utf8(f).unwrap()).collect();
        assert_eq!(got, ["x-y", "x-y", "x-y", "x%2Dy", "x%2Dy"]);
    }

    #[test]
    fn near_the_marker_only_the_stretches_between_markers_count() {
        let between: Vec<&[u8]> = split_on_marker(b"a[REDACTED]b[redacted]").collect();
        assert_eq!(between, [&b"a"[..], b"b", b""]);
        let forms = vec![b"]x".to_vec(), b"act".to_vec()];
        assert_holds_no_form(b"[REDACTED]x [REDACTED]", &forms, "test");
    }

    #[test]
    #[should_panic(expected = "holds")]
    fn a_surviving_form_fails_the_check() {
        assert_holds_no_form(b"key=S3CR%2ft+K%2By", &forms("s3cr/t k+y"), "test");
    }

    #[test]
    #[should_panic(expected = "holds")]
    fn a_form_between_markers_fails_the_check() {
        assert_holds_no_form(b"[REDACTED] ]x [REDACTED]", &[b"]x".to_vec()], "test");
    }
}
