//! The head of the request keygate sends upstream, as the caller's head and the route's
//! credential make it: the caller's header lines [`super::request_headers`] keeps, the
//! `Accept-Encoding` narrowed ([`crate::scrub::body::accept_encoding`]), the real
//! credential added last, and the route's path with the rewritten query.
//!
//! It is either built — a header map and a URI, for hyper's clients and every rare path
//! — or written as its bytes straight onto the wire by keygate's HTTP/1.1 client, with
//! no map and no URI made in between (BENCHMARKS.md, round 12). The two are one set of
//! rules: the writer walks the lines the map would hold, in its order, and a property
//! test holds its bytes to those of the built head (`upstream::h1::tests`).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Uri};

use super::forwarded;
use crate::scrub::body::narrowed_accept_encoding;
use crate::secret::{Wiped, WipedText};
use crate::server::HeadBuf;

/// The longest target `PathAndQuery` takes.
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// The path and query cannot be sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InvalidTarget;

/// The upstream's request head, before it is built or written. It holds the real
/// credential (a header value or an encoded query parameter) and so has no `Debug`.
pub(crate) struct UpstreamHead<'a> {
    method: &'a Method,
    caller: &'a HeaderMap,
    /// The route's own names to strip (its credential's header among them).
    drop: &'a [HeaderName],
    /// The real credential's header, added after the caller's lines.
    inject: Option<(&'a HeaderName, &'a HeaderValue)>,
    target: Target<'a>,
}

/// The request target.
enum Target<'a> {
    /// A path (in pieces) and query of bytes `PathAndQuery` keeps as they are, written
    /// as they are.
    Plain { path: [&'a str; 2], query: Option<WipedText> },
    /// Anything else that `PathAndQuery` takes (bytes past ASCII, a fragment it cuts):
    /// as it reads it, from bytes wiped when it is dropped ([`wiped_target`]).
    Parsed(PathAndQuery),
}

impl<'a> UpstreamHead<'a> {
    /// The head for `caller`'s request to `path` (its pieces, in order) with `query`; a
    /// target `PathAndQuery` refuses is refused here, before any byte of the body is read.
    pub(crate) fn new(
        method: &'a Method,
        caller: &'a HeaderMap,
        drop: &'a [HeaderName],
        inject: Option<(&'a HeaderName, &'a HeaderValue)>,
        path: [&'a str; 2],
        query: Option<WipedText>,
    ) -> Result<UpstreamHead<'a>, InvalidTarget> {
        let target = if is_plain(path, query.as_deref()) {
            Target::Plain { path, query }
        } else {
            Target::Parsed(wiped_target(path, query.as_deref())?)
        };
        Ok(UpstreamHead { method, caller, drop, inject, target })
    }

    pub(crate) fn method(&self) -> &Method {
        self.method
    }

    /// The headers as a map (no `Host`: each client sets its own).
    pub(crate) fn headers(&self) -> HeaderMap {
        let mut headers = super::request_headers(self.caller, self.drop);
        crate::scrub::body::accept_encoding(&mut headers);
        if let Some((name, value)) = self.inject {
            headers.insert(name.clone(), value.clone());
        }
        headers
    }

    /// The target as an origin-form URI.
    pub(crate) fn uri(&self) -> Result<Uri, InvalidTarget> {
        let pq = match &self.target {
            Target::Plain { path, query } => wiped_target(*path, query.as_deref())?,
            Target::Parsed(pq) => pq.clone(),
        };
        Ok(Uri::from(pq))
    }

    /// Writes the request target as `uri()` would read on the wire.
    pub(crate) fn write_target(&self, out: &mut impl HeadBuf) {
        match &self.target {
            Target::Plain { path, query } => {
                for piece in path {
                    out.put(piece.as_bytes());
                }
                if let Some(q) = query {
                    out.put(b"?");
                    out.put(q.as_bytes());
                }
            }
            Target::Parsed(pq) => out.put(pq.as_str().as_bytes()),
        }
    }

    /// Each line of `headers()`, in its order, without building it: the caller's kept
    /// lines (the `Accept-Encoding` lines replaced by the narrowed one at the first
    /// one's place, when they are narrowed), then the credential.
    pub(crate) fn for_each_line(&self, mut each: impl FnMut(&HeaderName, &HeaderValue)) {
        // `None` until the first `Accept-Encoding` line; then whether the narrowed line
        // replaced them all.
        let mut narrowed = None;
        for (name, value) in forwarded(self.caller, self.drop) {
            if name == header::ACCEPT_ENCODING {
                match narrowed {
                    Some(true) => continue,
                    Some(false) => {}
                    None => {
                        let one = narrowed_accept_encoding(self.caller.get_all(header::ACCEPT_ENCODING));
                        narrowed = Some(one.is_some());
                        if let Some(one) = one {
                            each(name, &one);
                            continue;
                        }
                    }
                }
            }
            each(name, value);
        }
        if let Some((name, value)) = self.inject {
            each(name, value);
        }
    }
}

/// `path` and `query` as `PathAndQuery` reads them, over bytes that are wiped when the
/// last copy of it is dropped (the query may hold the key).
fn wiped_target(path: [&str; 2], query: Option<&str>) -> Result<PathAndQuery, InvalidTarget> {
    let length = path[0].len() + path[1].len() + query.map_or(0, |q| q.len() + 1);
    let mut text = Wiped::with_capacity(length);
    text.extend_from_slice(path[0].as_bytes());
    text.extend_from_slice(path[1].as_bytes());
    if let Some(q) = query {
        text.push(b'?');
        text.extend_from_slice(q.as_bytes());
    }
    PathAndQuery::from_maybe_shared(Bytes::from_owner(text)).map_err(|_| InvalidTarget)
}

/// True when every byte of `path` and `query` is one `PathAndQuery` keeps as it is in
/// both its path and its query, and the path begins with `/`: then the target is written
/// as it is, with no scan of `PathAndQuery`'s and no copy of it.
fn is_plain(path: [&str; 2], query: Option<&str>) -> bool {
    let length = path[0].len() + path[1].len() + query.map_or(0, |q| q.len() + 1);
    let first = if path[0].is_empty() { path[1] } else { path[0] };
    first.starts_with('/')
        && length <= MAX_TARGET
        && path.iter().all(|piece| piece.bytes().all(plain_byte))
        && query.is_none_or(|q| q.bytes().all(|b| b == b'?' || plain_byte(b)))
}

/// The visible ASCII bytes valid in both a path and a query, `?` and `#` aside.
fn plain_byte(b: u8) -> bool {
    matches!(b, b'!' | b'$'..=b';' | b'=' | b'@'..=b'_' | b'a'..=b'z' | b'|' | b'~')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A plain target is what `PathAndQuery` reads from the same text, byte for
        /// byte; any other text is refused by both or taken as `PathAndQuery` reads it.
        #[test]
        fn a_target_is_written_as_path_and_query_reads_it(
            path in "(/[ -~\u{80}-\u{ff}]{0,30})|([ -~]{0,5})",
            split in any::<prop::sample::Index>(),
            query in proptest::option::of("[ -~\u{80}-\u{ff}]{0,30}"),
        ) {
            // The path in two pieces, cut anywhere between characters.
            let cuts: Vec<usize> = (0..=path.len()).filter(|&at| path.is_char_boundary(at)).collect();
            let (base, rest) = path.split_at(cuts[split.index(cuts.len())]);
            let pieces = [base, rest];
            let caller = HeaderMap::new();
            let mut text = path.clone();
            if let Some(q) = &query {
                text.push('?');
                text.push_str(q);
            }
            let reference = PathAndQuery::try_from(text.as_str());
            let method = Method::GET;
            match UpstreamHead::new(&method, &caller, &[], None, pieces, query.as_deref().map(WipedText::from)) {
                Ok(head) => {
                    let reference = reference.expect("taken by PathAndQuery");
                    let mut written = Vec::new();
                    head.write_target(&mut written);
                    prop_assert_eq!(written, reference.as_str().as_bytes());
                    let uri = head.uri().unwrap();
                    prop_assert_eq!(uri.path_and_query(), Some(&reference));
                    if is_plain(pieces, query.as_deref()) {
                        prop_assert_eq!(reference.as_str(), text.as_str());
                    }
                }
                Err(InvalidTarget) => prop_assert!(reference.is_err()),
            }
        }
    }

    #[test]
    fn plain_bytes_are_the_ones_path_and_query_keeps_in_both_parts() {
        for b in 0..=255u8 {
            let (in_path, in_query) = (format!("/a{}", b as char), format!("/a?{}", b as char));
            let kept = |text: &str| {
                std::str::from_utf8(&[b]).is_ok()
                    && PathAndQuery::try_from(text).is_ok_and(|pq| pq.as_str() == text)
            };
            if plain_byte(b) {
                assert!(kept(&in_path) && kept(&in_query), "{b:#x}");
            }
        }
        assert!(
            !is_plain(["/a b", ""], None) && !is_plain(["/a", ""], Some("x#y")) && !is_plain(["a", ""], None)
        );
        assert!(!is_plain(["", "a/"], None) && !is_plain(["", ""], None));
        assert!(!is_plain(["/a", "?b"], None), "a `?` in the path is the query's start");
        assert!(is_plain(["", "/export/12345/tables"], Some("apikey=k&x=?")));
        assert!(is_plain(["/v1", "/export"], None) && is_plain(["/", ""], None));
    }
}
