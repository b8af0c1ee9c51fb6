//! One route's credential policy, compiled with its snapshot: the header and query
//! names under which callers' copies of a key hide (stripped on the way up), how the
//! real key is injected, and which query names `Location` loses on the way down.
//!
//! A [`Credential`] is built from a secret's value once, when the snapshot is compiled;
//! a value the route cannot carry is refused then ([`Unsendable`]), never per request.
//! The request path only copies what was built here: a prebuilt sensitive
//! [`HeaderValue`], or a query name and the value already percent-encoded (held in
//! memory that is wiped on drop). Building one is cheap, so a route can hold more than
//! one (a previous key beside the current one) when it needs to.

use std::fmt;

use bytes::Bytes;
use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::utf8_percent_encode;
use zeroize::Zeroizing;

use crate::rewrite::{self, InvalidTarget, QueryRefused, QueryValue, UpstreamHead};
use crate::secret::{QUERY_VALUE, Secret, Wiped, WipedText};

/// How one route strips callers' credentials and injects its own.
pub(crate) struct Credential {
    /// Header names removed from every caller request (besides what every route removes,
    /// see [`rewrite::request_headers`]).
    strip_headers: Box<[HeaderName]>,
    /// Query parameter names whose copies are removed, and whose look-alikes are refused.
    strip_query: Box<[Box<str>]>,
    inject: Inject,
    /// Query parameter names removed from a `Location` on the way down.
    location_query: Box<[Box<str>]>,
}

/// Where the real credential goes, built once.
enum Inject {
    /// One header, its value marked sensitive (HPACK never indexes it).
    Header { name: HeaderName, value: HeaderValue },
    /// One `name=encoded` parameter, appended after the caller's.
    Query { name: Box<str>, encoded: Zeroizing<String> },
}

/// Why a secret cannot travel where its route injects it. Never shows the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot be sent in the {place}: {why}")]
pub(crate) struct Unsendable {
    /// `X-RJM-API-Key header`, `apikey query parameter`…
    place: String,
    why: &'static str,
}

impl Credential {
    /// Injects `prefix + secret + suffix` as header `name`, shown as `shown` in problems,
    /// and strips every caller copy of `name`.
    ///
    /// The value must be visible ASCII and spaces: `HeaderValue` would also take bytes ≥
    /// 0x80 (obs-text), which keygate would send as raw UTF-8 that each server reads its
    /// own way. A space inside is kept (field values may hold SP, and keys with spaces
    /// travel intact), but a leading or trailing one is not: every HTTP parser strips
    /// it, so the upstream would see another key.
    pub(crate) fn header(
        name: HeaderName,
        shown: &str,
        prefix: &str,
        suffix: &str,
        secret: &Secret,
    ) -> Result<Credential, Unsendable> {
        let refuse = |why| Unsendable { place: format!("{shown} header"), why };
        let key = secret.expose();
        if !key.is_ascii() {
            return Err(refuse("it holds non-ASCII characters"));
        }
        if !key.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
            return Err(refuse("it holds characters a header value cannot"));
        }
        if (prefix.is_empty() && key.starts_with(' ')) || (suffix.is_empty() && key.ends_with(' ')) {
            return Err(refuse("HTTP strips the space it begins or ends with"));
        }
        // Sized up front: a buffer that grows leaves unwiped copies behind. The value's
        // bytes are this buffer's, wiped when the last request that holds it is done.
        let mut text = Wiped::with_capacity(prefix.len() + key.len() + suffix.len());
        text.extend_from_slice(prefix.as_bytes());
        text.extend_from_slice(key.as_bytes());
        text.extend_from_slice(suffix.as_bytes());
        let mut value = HeaderValue::from_maybe_shared(Bytes::from_owner(text))
            .map_err(|_| refuse("it holds characters a header value cannot"))?;
        value.set_sensitive(true);
        Ok(Credential {
            strip_headers: Box::new([name.clone()]),
            strip_query: Box::new([]),
            inject: Inject::Header { name, value },
            location_query: Box::new([]),
        })
    }

    /// Injects `name=<secret, percent-encoded>` into the query, strips every caller
    /// copy of `name` there, and removes it from `Location`. Non-ASCII is refused: each
    /// server decodes it its own way. ASCII is percent-encoded where it must be.
    pub(crate) fn query(name: &str, secret: &Secret) -> Result<Credential, Unsendable> {
        let key = secret.expose();
        if !key.is_ascii() {
            let place = format!("{name} query parameter");
            return Err(Unsendable { place, why: "it holds non-ASCII characters" });
        }
        // Sized up front (no byte encodes to more than three): no unwiped copy is left.
        let mut encoded = Zeroizing::new(String::with_capacity(key.len() * 3));
        for piece in utf8_percent_encode(key, QUERY_VALUE) {
            encoded.push_str(piece);
        }
        Ok(Credential {
            strip_headers: Box::new([]),
            strip_query: Box::new([name.into()]),
            inject: Inject::Query { name: name.into(), encoded },
            location_query: Box::new([name.into()]),
        })
    }

    /// Also strips these headers from callers.
    pub(crate) fn stripping_headers(mut self, names: &[HeaderName]) -> Credential {
        let mut all = self.strip_headers.into_vec();
        for name in names {
            if !all.contains(name) {
                all.push(name.clone());
            }
        }
        self.strip_headers = all.into_boxed_slice();
        self
    }

    /// Also strips caller copies of this query parameter.
    pub(crate) fn stripping_query(mut self, name: &str) -> Credential {
        self.strip_query = with(self.strip_query, name);
        self
    }

    /// Also removes this query parameter from `Location` on the way down.
    pub(crate) fn clearing_location(mut self, name: &str) -> Credential {
        self.location_query = with(self.location_query, name);
        self
    }

    /// The upstream's head for a caller's `method` and `headers`, to `path` (its pieces in
    /// order) with `query` (made by [`Credential::query_for`]): the caller's headers minus
    /// every copy of the credential and everything no route forwards, then this
    /// credential's header when `inject` — added after the removal, so nothing the caller
    /// sent can remove or shadow it.
    pub(crate) fn upstream_head<'a>(
        &'a self,
        method: &'a Method,
        headers: &'a HeaderMap,
        path: [&'a str; 2],
        query: Option<WipedText>,
        inject: bool,
    ) -> Result<UpstreamHead<'a>, InvalidTarget> {
        let line = match &self.inject {
            Inject::Header { name, value } if inject => Some((name, value)),
            _ => None,
        };
        UpstreamHead::new(method, headers, &self.strip_headers, line, path, query)
    }

    /// The caller's query minus every copy of the credential, with the real one appended
    /// when `inject` and this route carries it in the query. Look-alikes are refused.
    pub(crate) fn query_for(
        &self,
        caller: Option<&str>,
        inject: bool,
    ) -> Result<Option<WipedText>, QueryRefused> {
        let add = match &self.inject {
            Inject::Query { name, encoded } if inject => Some((&**name, QueryValue::Encoded(encoded))),
            _ => None,
        };
        rewrite::rewrite_query_with(caller, &self.strip_query, add)
    }

    /// The query parameter names a `Location` loses on the way down.
    pub(crate) fn location_query(&self) -> &[Box<str>] {
        &self.location_query
    }
}

fn with(names: Box<[Box<str>]>, name: &str) -> Box<[Box<str>]> {
    let mut all = names.into_vec();
    if !all.iter().any(|n| &**n == name) {
        all.push(name.into());
    }
    all.into_boxed_slice()
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inject = match &self.inject {
            Inject::Header { name, .. } => format!("header {name}"),
            Inject::Query { name, .. } => format!("query {name}"),
        };
        f.debug_struct("Credential")
            .field("strip_headers", &self.strip_headers)
            .field("strip_query", &self.strip_query)
            .field("inject", &inject)
            .field("location_query", &self.location_query)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    fn secret(s: &str) -> Secret {
        Secret::parse(s).unwrap()
    }

    #[test]
    fn a_credential_and_the_queries_it_makes_leave_no_copy_of_the_key_in_freed_memory() {
        let key = "watched-key-8e2b47";
        let held = crate::freed::holding(key.as_bytes(), || {
            let name = HeaderName::from_static("x-rjm-api-key");
            let header = Credential::header(name, "X-RJM-API-Key", "Bearer ", "", &secret(key)).unwrap();
            let Inject::Header { value, .. } = &header.inject else { unreachable!() };
            // (Compared in pieces: a `format!` of the key would be a copy of its own.)
            assert_eq!(value.as_bytes().strip_prefix(b"Bearer "), Some(key.as_bytes()));
            let copy = value.clone();
            drop(header);
            drop(copy);
            let query = Credential::query("apikey", &secret(key)).unwrap();
            for caller in [None, Some("a=1"), Some(&*"long=value&".repeat(40))] {
                let rewritten = query.query_for(caller, true).unwrap().unwrap();
                assert!(rewritten.strip_suffix(key).is_some_and(|r| r.ends_with("apikey=")));
            }
            drop(query);
        });
        assert_eq!(held, 0);
    }

    #[test]
    fn a_header_credential_replaces_every_caller_copy_with_one_sensitive_value() {
        let name = header::AUTHORIZATION;
        let c = Credential::header(name.clone(), "authorization", "Bearer ", "", &secret("k 1")).unwrap();
        let mut caller = HeaderMap::new();
        caller.append(&name, HeaderValue::from_static("Bearer caller"));
        caller.append(&name, HeaderValue::from_static("Bearer other"));
        caller.insert(header::CONNECTION, HeaderValue::from_static("Authorization"));
        caller.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let stripped = c.upstream_head(&Method::GET, &caller, ["/", ""], None, false).unwrap().headers();
        assert!(stripped.get(&name).is_none() && stripped.get(header::CONNECTION).is_none());
        let out = c.upstream_head(&Method::GET, &caller, ["/", ""], None, true).unwrap().headers();
        assert!(out.get(header::CONNECTION).is_none());
        let values: Vec<_> = out.get_all(&name).iter().collect();
        assert_eq!(values, ["Bearer k 1"]);
        assert!(values[0].is_sensitive());
        assert_eq!(out[header::ACCEPT], "*/*");
        // A header route leaves the query alone, and adds nothing to it.
        assert_eq!(c.query_for(Some("a=1&apikey=x"), true).unwrap().as_deref(), Some("a=1&apikey=x"));
    }

    #[test]
    fn a_query_credential_strips_copies_and_appends_the_encoded_value_only_when_asked() {
        let c = Credential::query("api_key", &secret("a b/+")).unwrap();
        let got = c.query_for(Some("x=1&API_KEY=evil&api_key[]=e"), true).unwrap();
        assert_eq!(got.as_deref(), Some("x=1&api_key=a%20b%2F%2B"));
        assert_eq!(c.query_for(Some("x=1&api_key=evil"), false).unwrap().as_deref(), Some("x=1"));
        assert_eq!(c.query_for(Some("api_key%00=e"), true), Err(QueryRefused::LookAlike));
        let none = HeaderMap::new();
        let headers = c.upstream_head(&Method::GET, &none, ["/", ""], None, true).unwrap().headers();
        assert!(headers.is_empty(), "a query route injects no header");
        assert_eq!(&*c.location_query()[0], "api_key");
    }

    #[test]
    fn added_names_are_stripped_once_each() {
        let c = Credential::query("apikey", &secret("k"))
            .unwrap()
            .stripping_headers(&[header::COOKIE, header::COOKIE])
            .stripping_query("apikey")
            .stripping_query("token")
            .clearing_location("apikey");
        assert_eq!(&*c.strip_headers, [header::COOKIE]);
        let names: Vec<&str> = c.strip_query.iter().map(|n| &**n).collect();
        assert_eq!(names, ["apikey", "token"]);
        assert_eq!(c.location_query().len(), 1);
    }

    #[test]
    fn a_secret_the_carrier_cannot_hold_is_refused_naming_the_place_only() {
        // `Secret::new`: a loaded secret never holds a control character, but the check
        // stands on its own.
        let header = |key: &str, prefix: &str, suffix: &str| {
            let key = Secret::new(key.to_owned());
            Credential::header(HeaderName::from_static("x-k"), "X-K", prefix, suffix, &key)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            header("clé", "", ""),
            Err("cannot be sent in the X-K header: it holds non-ASCII characters".into())
        );
        assert_eq!(
            header(" k", "", ""),
            Err("cannot be sent in the X-K header: HTTP strips the space it begins or ends with".into())
        );
        assert_eq!(header(" k", "Bearer", ""), Ok(()), "a prefix shields a leading space");
        assert_eq!(header("k ", "", "!"), Ok(()), "a suffix shields a trailing space");
        assert_eq!(
            header("a\u{7f}b", "", ""),
            Err("cannot be sent in the X-K header: it holds characters a header value cannot".into())
        );
        let query = Credential::query("apikey", &secret("clé")).map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(
            query,
            Err("cannot be sent in the apikey query parameter: it holds non-ASCII characters".into())
        );
        assert!(Credential::query("apikey", &secret(" k ")).is_ok(), "spaces are encoded in a query");
    }

    #[test]
    fn debug_shows_where_the_key_goes_never_the_key() {
        let h =
            Credential::header(header::AUTHORIZATION, "authorization", "", "", &secret("s3cr3t")).unwrap();
        let q = Credential::query("apikey", &secret("s3cr3t")).unwrap();
        for shown in [format!("{h:?}"), format!("{q:?}")] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
        assert!(format!("{q:?}").contains("query apikey"));
    }
}
