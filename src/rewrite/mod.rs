//! What changes on the way up and down, mechanically (docs/presets.md, "On the way up"
//! and "On the way down"): which headers no route forwards, and how a query is rid of
//! named parameters. Which names those are for a route is its credential's business
//! ([`crate::routes::credential`]).
//!
//! Up: hop-by-hop headers (and every header `Connection` names), forwarding headers,
//! header names with `_`, and the route's own list are removed *before* the one real
//! credential is added, so nothing a caller sends can remove or shadow it.
//! Down: hop-by-hop headers go, the route's credential names leave `Location`, and
//! every secret is scrubbed from what remains ([`crate::scrub`] owns what that means).

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{percent_decode_str, utf8_percent_encode};

use crate::scrub::Scrubber;
use crate::secret::{QUERY_VALUE, Secret, WipedText};

mod upstream_head;

pub(crate) use upstream_head::{InvalidTarget, UpstreamHead};

/// Headers that describe one hop, never the message (RFC 9110 §7.6.1), plus the
/// legacy `Proxy-Connection`.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// [`HOP_BY_HOP`] as header names, so removing them needs no parsing; `Connection`
/// first ([`response_headers`] reads it by place).
static HOP_BY_HOP_NAMES: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers that would tell the upstream about callers or let them vouch for themselves.
const FORWARDING: &[&str] = &["x-forwarded-for", "forwarded", "x-real-ip"];

/// True for the headers that frame or route the request on its way up: the hop-by-hop
/// ones, `Host`, `Content-Length` and `Expect`. keygate never forwards a caller's copy
/// and sets them itself where needed, so none of them can carry a credential.
pub(crate) fn frames_request(name: &HeaderName) -> bool {
    frames_request_text(name.as_str())
}

/// [`frames_request`] on a name's text: one match, where most names are told apart by
/// their length alone (the hop-by-hop names are [`HOP_BY_HOP`]'s; a test holds them to it).
fn frames_request_text(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "expect"
    )
}

/// True for the names no route forwards whatever its own list: [`frames_request`]'s and
/// [`FORWARDING`].
fn no_route_forwards(name: &str) -> bool {
    frames_request_text(name) || FORWARDING.contains(&name)
}

/// Builds the header map sent upstream: the caller's headers minus everything keygate
/// must not forward. `drop` is the route's own list (its credential header and, for BI
/// presets, the caller's credentials, cookies and the headers that steer a server's
/// routing: [`crate::routes::credential`]).
pub fn request_headers(caller: &HeaderMap, drop: &[HeaderName]) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(caller.len());
    for (name, value) in forwarded(caller, drop) {
        out.append(name.clone(), value.clone());
    }
    out
}

/// The caller's header lines [`request_headers`] keeps, in the map's order.
pub(crate) fn forwarded<'a>(
    caller: &'a HeaderMap,
    drop: &'a [HeaderName],
) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + 'a {
    // Looked up only when a header passes every other rule: most requests' headers
    // are `Host` and what the route drops, and need no lookup at all.
    let mut connection = None;
    caller.iter().filter(move |(name, _)| {
        let n = name.as_str();
        let strip = no_route_forwards(n)
            || n.contains('_')
            || drop.contains(name)
            || connection
                .get_or_insert_with(|| caller.get_all(header::CONNECTION))
                .iter()
                .flat_map(connection_tokens)
                .any(|t| t.eq_ignore_ascii_case(n.as_bytes()));
        !strip
    })
}

/// Cleans the upstream's response headers in place: hop-by-hop headers, the parameters
/// `query_names` (the route's credential's) in `Location`, then every header whose name
/// or value holds a secret.
pub(crate) fn response_headers<S: AsRef<str>>(headers: &mut HeaderMap, scrub: &Scrubber, query_names: &[S]) {
    // One look at the lines first: most answers carry one or two of these (a
    // `Connection: keep-alive`), and looking up or removing a name that is not there
    // costs a hash. The names `Connection` lists are collected on the way; the
    // hop-by-hop ones (`keep-alive`, the usual one) and `close` go anyway, so most
    // collect nothing.
    let mut present = [false; HOP_BY_HOP_NAMES.len()];
    let (mut marked, mut located) = (false, false);
    let mut named: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        match answer_line(name) {
            AnswerLine::HopByHop(0) => {
                present[0] = true;
                named.extend(connection_names(value));
            }
            AnswerLine::HopByHop(at) => present[at] = true,
            AnswerLine::Location => located = true,
            AnswerLine::Marker => marked = true,
            AnswerLine::Other => {}
        }
    }
    for name in &named {
        headers.remove(name);
    }
    for (name, _) in HOP_BY_HOP_NAMES.iter().zip(present).filter(|(_, there)| *there) {
        headers.remove(name);
    }
    // Only keygate may mark an answer as its own refusal.
    if marked {
        headers.remove(crate::error::ERROR_HEADER);
    }
    if located {
        if let Some(cleaned) = headers.get(header::LOCATION).and_then(|v| cleaned_location(v, query_names)) {
            headers.insert(header::LOCATION, cleaned);
        }
    }
    scrub.headers(headers);
}

/// What [`response_headers`] does with an answer's line, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerLine {
    /// The hop-by-hop header at this place in [`HOP_BY_HOP_NAMES`].
    HopByHop(usize),
    Location,
    /// keygate's own refusal marker.
    Marker,
    Other,
}

/// One match on the name's text: most names differ from every one here in length, and
/// are told apart by that alone (a comparison with each hop-by-hop name in turn cost
/// more, BENCHMARKS.md, round 11).
fn answer_line(name: &HeaderName) -> AnswerLine {
    match name.as_str() {
        "connection" => AnswerLine::HopByHop(0),
        "keep-alive" => AnswerLine::HopByHop(1),
        "proxy-connection" => AnswerLine::HopByHop(2),
        "proxy-authorization" => AnswerLine::HopByHop(3),
        "te" => AnswerLine::HopByHop(4),
        "trailer" => AnswerLine::HopByHop(5),
        "transfer-encoding" => AnswerLine::HopByHop(6),
        "upgrade" => AnswerLine::HopByHop(7),
        "location" => AnswerLine::Location,
        crate::error::ERROR_HEADER => AnswerLine::Marker,
        _ => AnswerLine::Other,
    }
}

/// The headers a `Connection` value names that [`response_headers`] removes for it:
/// every token that is a header name, but `close` and the hop-by-hop ones (which go
/// anyway). keygate's HTTP/1.1 client leaves out of an answer the `Connection` lines
/// that name none (a `keep-alive`, the usual one): that is all they would have done.
pub(crate) fn connection_names(value: &HeaderValue) -> impl Iterator<Item = HeaderName> + '_ {
    connection_tokens(value)
        .filter(|t| {
            !t.eq_ignore_ascii_case(b"close")
                && !HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h.as_bytes()))
        })
        .filter_map(|t| HeaderName::from_bytes(t).ok())
}

/// A `Location` value without the parameters `query_names`; `None` when it is not text
/// (it is then left as it is) or the result would not be a valid value.
fn cleaned_location<S: AsRef<str>>(location: &HeaderValue, query_names: &[S]) -> Option<HeaderValue> {
    HeaderValue::from_str(&strip_from_url(location.to_str().ok()?, query_names)).ok()
}

/// The tokens of one `Connection` value (RFC 9110 §7.6.1), trimmed, in any letter case;
/// empty ones included. Requests, answers and keygate's HTTP/1.1 server read them here.
pub(crate) fn connection_tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// True when the `Connection` value lists `token` (in any letter case).
pub(crate) fn has_connection_token(value: &HeaderValue, token: &[u8]) -> bool {
    connection_tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// What a raw query parameter name is to a route that strips the credential name `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParamName {
    /// Any other parameter: forwarded byte for byte.
    Other,
    /// A caller's copy of the credential: removed.
    Copy,
    /// A name some parser may read as `N`: the request is refused.
    LookAlike,
}

/// Classifies the raw name of one query parameter against the credential name `name`.
///
/// The rule, exactly. Let D be the raw name decoded (`+` is a space, `%XX` escapes
/// decoded, invalid UTF-8 as U+FFFD) with surrounding whitespace trimmed.
/// - [`ParamName::Copy`]: D is `name` in any ASCII letter case, or `name` followed by
///   `[` (array syntax: `apikey[]`, `apikey[0]`).
/// - [`ParamName::LookAlike`]: otherwise, when D spells `name` (any case) once every
///   character outside printable ASCII is skipped (controls such as NUL, and every
///   non-ASCII character: zero-width spaces, U+FEFF, U+FFFD…), and the character right
///   after that spelling is missing, outside printable ASCII, or anything but an ASCII
///   letter, digit, `_` or `-`. Parsers that drop invisible characters, stop at NUL,
///   split on a decoded `=`, `;` or `&`, or nest on `.` or `]` would read the credential
///   there: `apikey%00`, `apikey%00x`, `apikey.`, `apikey%2E`, `apikey%5D`, `apikey%3D`,
///   `apikey%3Bx`, `apikey%E2%80%8B`, `%00apikey`, `api%E2%80%8Bkey`. When D still holds
///   a `%`, D decoded once more is tested the same way and as a copy, for servers that
///   decode twice (`%2561pikey`, `apikey%2500`).
/// - [`ParamName::Other`]: everything else, e.g. `apikeyish`, `apikey_id`, `apikey-2`,
///   `api_key`, `xapikey`.
fn param_name(raw_name: &str, name: &str) -> ParamName {
    let decoded = decode_name(raw_name);
    let decoded = decoded.trim();
    if is_copy(decoded, name) {
        return ParamName::Copy;
    }
    if looks_like(decoded, name) {
        return ParamName::LookAlike;
    }
    if decoded.contains('%') {
        let twice = decode_name(decoded);
        let twice = twice.trim();
        if is_copy(twice, name) || looks_like(twice, name) {
            return ParamName::LookAlike;
        }
    }
    ParamName::Other
}

/// The strongest reading of `raw_name` over every credential name.
fn param_name_of<S: AsRef<str>>(raw_name: &str, names: &[S]) -> ParamName {
    let mut kind = ParamName::Other;
    for name in names {
        match param_name(raw_name, name.as_ref()) {
            ParamName::LookAlike => return ParamName::LookAlike,
            ParamName::Copy => kind = ParamName::Copy,
            ParamName::Other => {}
        }
    }
    kind
}

/// `+` as a space, then percent-decoded; borrowed when there is nothing to decode.
fn decode_name(raw: &str) -> Cow<'_, str> {
    if raw.contains('+') {
        Cow::Owned(percent_decode_str(&raw.replace('+', " ")).decode_utf8_lossy().into_owned())
    } else {
        percent_decode_str(raw).decode_utf8_lossy()
    }
}

fn is_copy(decoded: &str, name: &str) -> bool {
    let Some(head) = decoded.get(..name.len()) else { return false };
    let tail = &decoded[name.len()..];
    head.eq_ignore_ascii_case(name) && (tail.is_empty() || tail.starts_with('['))
}

fn looks_like(decoded: &str, name: &str) -> bool {
    let mut rest = decoded.chars();
    for n in name.chars() {
        // Invisible and control characters may vanish before a parser compares names…
        let Some(c) = rest.by_ref().find(|c| (' '..='~').contains(c)) else { return false };
        if !c.eq_ignore_ascii_case(&n) {
            return false;
        }
    }
    // …or end the name where they stand, like punctuation.
    rest.next().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

/// Why a query cannot be forwarded: it names a credential where some parser might
/// read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryRefused {
    /// A parameter name that only looks like a credential name (see [`param_name`]).
    #[error("a query parameter name looks like a credential name")]
    LookAlike,
    /// A `;`-separated piece names a credential: some servers split on `;`.
    #[error("a query parameter hides a credential name after ';'")]
    Hidden,
}

impl QueryRefused {
    /// The reason, as a fixed sentence (the refusal's message names it).
    pub fn reason(self) -> &'static str {
        match self {
            QueryRefused::LookAlike => "a query parameter name looks like a credential name",
            QueryRefused::Hidden => "a query parameter hides a credential name after ';'",
        }
    }
}

/// The value of an injected query parameter.
#[derive(Clone, Copy)]
pub(crate) enum QueryValue<'a> {
    /// Already percent-encoded (as [`crate::routes::credential`] builds it once).
    Encoded(&'a str),
    /// Percent-encoded as it is written out.
    Raw(&'a Secret),
}

/// Removes every parameter naming any of `names` from a raw query string and, when
/// `inject` is given, appends exactly one `inject.0=<encoded inject.1>`. Other
/// parameters keep their order and exact bytes. A name that only looks like a
/// credential name (see [`param_name`]) is refused, and so is a `;`-separated piece
/// naming one: some servers split on `;` and would see a second key.
pub fn rewrite_query(
    query: Option<&str>,
    names: &[&str],
    inject: Option<(&str, &Secret)>,
) -> Result<Option<WipedText>, QueryRefused> {
    rewrite_query_with(query, names, inject.map(|(name, secret)| (name, QueryValue::Raw(secret))))
}

/// [`rewrite_query`], for any list of names and a value that may be encoded already.
pub(crate) fn rewrite_query_with<S: AsRef<str>>(
    query: Option<&str>,
    names: &[S],
    inject: Option<(&str, QueryValue<'_>)>,
) -> Result<Option<WipedText>, QueryRefused> {
    if query.is_none_or(str::is_empty) && inject.is_none() {
        return Ok(None);
    }
    // Sized for all it can hold, so that it does not grow: the key is in it.
    let injected = inject.map_or(0, |(name, value)| {
        let value = match value {
            QueryValue::Encoded(encoded) => encoded.len(),
            QueryValue::Raw(secret) => secret.expose().len() * 3,
        };
        name.len() + value + 2
    });
    let mut out = WipedText::with_capacity(query.map_or(0, str::len) + injected);
    for piece in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let raw_name = piece.split('=').next().unwrap_or("");
        match param_name_of(raw_name, names) {
            ParamName::Copy => continue,
            ParamName::LookAlike => return Err(QueryRefused::LookAlike),
            ParamName::Other => {}
        }
        let smuggled = piece.split(';').skip(1).any(|sub| {
            let sub_name = sub.split('=').next().unwrap_or("");
            param_name_of(sub_name, names) != ParamName::Other
        });
        if smuggled {
            return Err(QueryRefused::Hidden);
        }
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(piece);
    }
    if let Some((name, value)) = inject {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        match value {
            QueryValue::Encoded(encoded) => out.push_str(encoded),
            QueryValue::Raw(secret) => {
                for piece in utf8_percent_encode(secret.expose(), QUERY_VALUE) {
                    out.push_str(piece);
                }
            }
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Removes credential parameters from the query of a URL (absolute or relative).
fn strip_from_url<S: AsRef<str>>(url: &str, names: &[S]) -> String {
    let (before_fragment, fragment) = match url.find('#') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let Some((base, query)) = before_fragment.split_once('?') else {
        return url.to_owned();
    };
    // A refusal here means a `;`-smuggled name: drop the whole query rather than pass it.
    match rewrite_query_with(Some(query), names, None) {
        Ok(Some(q)) => format!("{base}?{}{fragment}", q.as_str()),
        Ok(None) | Err(_) => format!("{base}{fragment}"),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::parse(s).unwrap()
    }

    #[test]
    fn strips_every_apikey_variant_and_injects_one() {
        let key = secret("real key/+&");
        let q = "a=1&apikey=evil&APIKEY=x&%61pikey=y&ApiKey=&api%4Bey=z&apikey[]=w&+apikey=v&b=2";
        let got = rewrite_query(Some(q), &["apikey"], Some(("apikey", &key))).unwrap();
        assert_eq!(got.as_deref(), Some("a=1&b=2&apikey=real%20key%2F%2B%26"));
    }

    #[test]
    fn keeps_other_parameters_verbatim() {
        let key = secret("k");
        let q = "x=%2F%20&y&apikeyish=1&z=a=b";
        let got = rewrite_query(Some(q), &["apikey"], Some(("apikey", &key))).unwrap();
        assert_eq!(got.as_deref(), Some("x=%2F%20&y&apikeyish=1&z=a=b&apikey=k"));
        assert_eq!(rewrite_query(None, &["apikey"], None).unwrap(), None);
        assert_eq!(rewrite_query(Some("apikey=1"), &["apikey"], None).unwrap(), None);
    }

    #[test]
    fn refuses_semicolon_smuggling() {
        let got = rewrite_query(Some("a=1;apikey=evil"), &["apikey"], None);
        assert_eq!(got, Err(QueryRefused::Hidden));
    }

    #[test]
    fn refuses_names_a_parser_may_cut_to_the_credential_name() {
        let look_alikes = [
            "apikey%00",
            "APIKEY%00x",
            "apikey.",
            "apikey%2E",
            "apikey%2e",
            "apikey.old",
            "apikey]",
            "apikey%5D",
            "apikey%3D",
            "apikey%3Bx",
            "apikey;x",
            "apikey%26x",
            "apikey%23",
            "apikey%20x",
            "apikey%E2%80%8B",
            "apikey%E2%80%8C",
            "apikey%EF%BB%BF",
            "apikey%C2%AD",
            "api%E2%80%8Bkey",
            "%E2%80%8Bapikey",
            "%00apikey",
            "apikey%FF",
            "%2561pikey",
            "apikey%2500",
        ];
        for name in look_alikes {
            for query in [format!("{name}=evil"), format!("a=1&{name}"), format!("a=1;{name}=evil")] {
                let got = rewrite_query(Some(&query), &["apikey"], None);
                assert!(
                    matches!(got, Err(QueryRefused::LookAlike | QueryRefused::Hidden)),
                    "{query}: {got:?}"
                );
            }
        }
        // The rule follows the route's own name (a generic route's `inject.query`).
        let got = rewrite_query(Some("token%00=x"), &["token"], None);
        assert_eq!(got, Err(QueryRefused::LookAlike));
    }

    #[test]
    fn each_refusal_reason_is_its_message() {
        for refused in [QueryRefused::LookAlike, QueryRefused::Hidden] {
            assert_eq!(refused.reason(), refused.to_string());
        }
    }

    #[test]
    fn keeps_names_that_merely_start_with_the_credential_name() {
        let key = secret("k");
        let q = "apikeyish=1&apikey_id=2&apikey-old=3&apikey2=4&api_key=5&xapikey=6&%61pikeys=7&tokens=8";
        let got = rewrite_query(Some(q), &["apikey", "token"], Some(("apikey", &key))).unwrap();
        assert_eq!(got.as_deref(), Some(format!("{q}&apikey=k").as_str()));
        let copies = "apikey=1&%41PIKEY=2&apikey[]=3&apikey%5B0%5D=4&+apikey+=5&%20apikey=6&apikey%C2%A0=7";
        let got = rewrite_query(Some(copies), &["apikey"], Some(("apikey", &key))).unwrap();
        assert_eq!(got.as_deref(), Some("apikey=k"));
    }

    #[test]
    fn request_headers_drop_hop_by_hop_forwarding_and_credentials() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, X-Custom"),
            ("x-custom", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-rjm-api-key", "evil"),
            ("X-RJM-API-KEY", "evil2"),
            ("x_rjm_api_key", "evil3"),
            ("host", "evil.example"),
            ("authorization", "Bearer x"),
            ("accept", "application/json"),
            ("content-type", "application/json"),
        ] {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_static(v));
        }
        let drop = [HeaderName::from_static("x-rjm-api-key"), header::AUTHORIZATION];
        let out = request_headers(&h, &drop);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept", "content-type"]);
    }

    #[test]
    fn connection_naming_the_credential_cannot_remove_the_injected_one() {
        // Removal happens on the caller's map; injection happens afterwards on the result.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("X-RJM-API-Key"));
        let mut out = request_headers(&h, &[HeaderName::from_static("x-rjm-api-key")]);
        out.insert("x-rjm-api-key", HeaderValue::from_static("real"));
        assert_eq!(out["x-rjm-api-key"], "real");
        assert!(out.get(header::CONNECTION).is_none());
    }

    #[test]
    fn response_headers_are_cleaned() {
        let (key, other) = (secret("topsecret"), secret("0ther-route-key"));
        let s = Scrubber::new([&key, &other]).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::LOCATION, HeaderValue::from_static("https://x/y?a=1&apikey=topsecret&ApiKey=q#f"));
        h.insert("x-echo", HeaderValue::from_static("key=topsecret"));
        h.insert("x-other", HeaderValue::from_static("apikey=0THER-ROUTE-KEY"));
        h.insert("x-0ther-route-key", HeaderValue::from_static("1"));
        h.insert("connection", HeaderValue::from_static("close, X-Hop ,keep-alive,"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-keygate-error", HeaderValue::from_static("no_route"));
        response_headers(&mut h, &s, &["apikey"]);
        assert!(h.get("x-keygate-error").is_none(), "an upstream cannot pose as keygate");
        assert_eq!(h[header::LOCATION], "https://x/y?a=1#f");
        assert_eq!(h["x-echo"], "key=[REDACTED]");
        assert_eq!(h["x-other"], "apikey=[REDACTED]");
        assert!(h.get("x-0ther-route-key").is_none(), "a header named after a key is removed");
        assert!(h.get("x-hop").is_none() && h.get("connection").is_none() && h.get("keep-alive").is_none());
    }

    #[test]
    fn every_hop_by_hop_header_goes_with_or_without_connection() {
        let s = Scrubber::new([&secret("topsecret")]).unwrap();
        for (at, hop) in HOP_BY_HOP.iter().enumerate() {
            for with_connection in [false, true] {
                let mut h = HeaderMap::new();
                h.append(*hop, HeaderValue::from_static("one"));
                h.append(*hop, HeaderValue::from_static("two"));
                h.insert("x-kept", HeaderValue::from_static("1"));
                if with_connection && at != 0 {
                    h.insert(header::CONNECTION, HeaderValue::from_static("x-named"));
                    h.insert("x-named", HeaderValue::from_static("1"));
                }
                // The marker alone, without any hop-by-hop header, goes too.
                let mut marked = HeaderMap::new();
                marked.insert("X-Keygate-Error", HeaderValue::from_static("no_route"));
                response_headers(&mut h, &s, &["apikey"]);
                response_headers(&mut marked, &s, &["apikey"]);
                assert!(h.get(*hop).is_none(), "{hop} (with Connection: {with_connection})");
                assert!(h.get("x-named").is_none() && h.get(header::CONNECTION).is_none(), "{hop}");
                assert_eq!(h["x-kept"], "1", "{hop}");
                assert!(marked.is_empty());
            }
        }
    }

    // The header rules as they were written before the one-pass versions, kept to hold
    // those to: the caller's `Connection` looked up first, the answer's with a lookup
    // after a look at the names, `Location` always looked up.
    fn request_headers_reference(caller: &HeaderMap, drop: &[HeaderName]) -> HeaderMap {
        let connection = caller.get_all(header::CONNECTION);
        let mut out = HeaderMap::with_capacity(caller.len());
        for (name, value) in caller {
            let n = name.as_str();
            let strip = frames_request(name)
                || connection
                    .iter()
                    .flat_map(connection_tokens)
                    .any(|t| t.eq_ignore_ascii_case(n.as_bytes()))
                || FORWARDING.contains(&n)
                || n.contains('_')
                || drop.contains(name);
            if !strip {
                out.append(name.clone(), value.clone());
            }
        }
        out
    }

    fn response_headers_reference(headers: &mut HeaderMap, scrub: &Scrubber, query_names: &[&str]) {
        let mut present = [false; HOP_BY_HOP_NAMES.len()];
        let mut marked = false;
        for name in headers.keys() {
            match HOP_BY_HOP_NAMES.iter().position(|hop| hop == name) {
                Some(at) => present[at] = true,
                None => marked |= name == crate::error::ERROR_HEADER,
            }
        }
        if present[0] {
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(connection_tokens)
                .filter(|t| {
                    !t.eq_ignore_ascii_case(b"close")
                        && !HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h.as_bytes()))
                })
                .filter_map(|t| HeaderName::from_bytes(t).ok())
                .collect();
            for name in &named {
                headers.remove(name);
            }
        }
        for (name, _) in HOP_BY_HOP_NAMES.iter().zip(present).filter(|(_, there)| *there) {
            headers.remove(name);
        }
        if marked {
            headers.remove(crate::error::ERROR_HEADER);
        }
        if let Some(cleaned) = headers.get(header::LOCATION).and_then(|v| cleaned_location(v, query_names)) {
            headers.insert(header::LOCATION, cleaned);
        }
        scrub.headers(headers);
    }

    /// Header lines both ways: hop-by-hop and framing names, forwarding ones, names a
    /// `Connection` line lists (in any case, with `close` and `keep-alive`), names with
    /// `_`, the credential, `Location` with and without a key, keygate's own marker.
    fn header_line() -> impl Strategy<Value = (&'static str, &'static str)> {
        prop::sample::select(vec![
            ("connection", "keep-alive"),
            ("Connection", "close, X-Named"),
            ("connection", "x-other ,, Location"),
            ("connection", "X-Keygate-Error, te"),
            ("x-named", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("host", "h.example"),
            ("content-length", "3"),
            ("expect", "100-continue"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x_under", "1"),
            ("x-rjm-api-key", "caller"),
            ("location", "https://x/y?apikey=topsecret&a=1"),
            ("location", "/z"),
            ("x-keygate-error", "no_route"),
            ("x-echo", "topsecret"),
            ("accept", "*/*"),
        ])
    }

    fn map_of(lines: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn lines_of(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        map.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// Both one-pass rewrites give what the code they replaced gave, line for line
        /// and in order.
        #[test]
        fn one_pass_header_rules_match_the_lookups(
            lines in prop::collection::vec(header_line(), 0..10),
        ) {
            let map = map_of(&lines);
            let drop = [HeaderName::from_static("x-rjm-api-key")];
            prop_assert_eq!(lines_of(&request_headers(&map, &drop)), lines_of(&request_headers_reference(&map, &drop)));
            let scrub = Scrubber::new([&secret("topsecret")]).unwrap();
            let (mut ours, mut theirs) = (map.clone(), map);
            response_headers(&mut ours, &scrub, &["apikey"]);
            response_headers_reference(&mut theirs, &scrub, &["apikey"]);
            prop_assert_eq!(lines_of(&ours), lines_of(&theirs));
        }
    }

    #[test]
    fn the_one_match_on_the_way_up_is_the_lists() {
        // The rules as the lists write them.
        let framing = |n: &str| HOP_BY_HOP.contains(&n) || ["host", "content-length", "expect"].contains(&n);
        let listed = |n: &str| framing(n) || FORWARDING.contains(&n);
        let mut names: Vec<&str> = HOP_BY_HOP.iter().chain(FORWARDING).copied().collect();
        names.extend([
            "host",
            "content-length",
            "expect",
            "accept",
            "x-rjm-api-key",
            "hosts",
            "tee",
            "forward",
        ]);
        for name in names {
            assert_eq!(no_route_forwards(name), listed(name), "{name}");
            assert_eq!(
                frames_request(&HeaderName::from_bytes(name.as_bytes()).unwrap()),
                framing(name),
                "{name}"
            );
        }
    }

    #[test]
    fn hop_by_hop_names_match_the_list() {
        let names: Vec<&str> = HOP_BY_HOP_NAMES.iter().map(HeaderName::as_str).collect();
        assert_eq!(names, HOP_BY_HOP);
        // Each read by its place in the list, and nothing else read as one.
        for (at, name) in HOP_BY_HOP_NAMES.iter().enumerate() {
            assert_eq!(answer_line(name), AnswerLine::HopByHop(at), "{name}");
        }
        assert_eq!(answer_line(&header::LOCATION), AnswerLine::Location);
        assert_eq!(answer_line(&HeaderName::from_static(crate::error::ERROR_HEADER)), AnswerLine::Marker);
        for other in
            [header::CONTENT_LENGTH, header::DATE, header::TRAILER.clone(), HeaderName::from_static("tee")]
        {
            let expected = HOP_BY_HOP_NAMES
                .iter()
                .position(|hop| *hop == other)
                .map_or(AnswerLine::Other, AnswerLine::HopByHop);
            assert_eq!(answer_line(&other), expected, "{other}");
        }
    }
}
