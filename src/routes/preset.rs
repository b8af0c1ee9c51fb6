//! The two Magento BI presets: their operation tables (docs/presets.md), path matching
//! with client-id pinning and id checks, and how each carries its key: what is stripped
//! from callers and where the real key goes. Upsert bodies are checked by [`super::upsert`].

use http::Method;
use http::header::{self, HeaderName};

use super::credential::{Credential, Unsendable};
use crate::error::Refusal;
use crate::secret::Secret;

/// Which BI API a preset route fronts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preset {
    /// `rjmetrics-import`: key in the `apikey` query parameter.
    Import,
    /// `rjmetrics-export`: key in the `X-RJM-API-Key` header.
    Export,
}

/// The query parameter the import key travels in, and that leaves every `Location`.
pub(crate) const APIKEY: &str = "apikey";

/// The header the export key travels in.
const X_RJM_API_KEY: HeaderName = HeaderName::from_static("x-rjm-api-key");

/// What both BI presets remove from callers: their own credentials and cookies, and the
/// headers that ask a server or a framework in front of the API to rewrite the target
/// (`X-Original-URL`, `X-Rewrite-URL`), the URL it believes it serves
/// (`X-Forwarded-Host/-Proto/-Prefix`) or the method (the `*-Method-Override` family).
static BI_STRIP: [HeaderName; 11] = [
    header::AUTHORIZATION,
    header::COOKIE,
    X_RJM_API_KEY,
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// One segment of an operation's path pattern.
#[derive(Debug, Clone, Copy)]
enum Seg {
    Lit(&'static str),
    /// `v1` or `v2`.
    Version,
    /// The client id: digits equal to the route's `client_id`.
    Cid,
    /// `[A-Za-z0-9_-]{1,64}`.
    Id,
    /// `[A-Za-z0-9_]+`.
    Table,
}

/// One operation of a preset.
#[derive(Debug)]
pub(crate) struct Operation {
    pub name: &'static str,
    pattern: &'static [Seg],
    pub methods: &'static [Method],
    /// False only for the import status check, which carries no key.
    pub credential: bool,
}

const GET: &[Method] = &[Method::GET];
const POST: &[Method] = &[Method::POST];
const GET_POST: &[Method] = &[Method::GET, Method::POST];

use Seg::{Cid, Id, Lit, Table, Version};

const IMPORT_OPS: &[Operation] = &[
    Operation { name: "status", pattern: &[], methods: GET, credential: false },
    Operation {
        name: "authenticate",
        pattern: &[Version, Lit("client"), Cid, Lit("authenticate")],
        methods: GET,
        credential: true,
    },
    Operation {
        name: "upsert",
        pattern: &[Version, Lit("client"), Cid, Lit("table"), Table, Lit("data")],
        methods: POST,
        credential: true,
    },
];

const fn export(name: &'static str, pattern: &'static [Seg], methods: &'static [Method]) -> Operation {
    Operation { name, pattern, methods, credential: true }
}

const EXPORT_OPS: &[Operation] = &[
    export("list_exports", &[Lit("0.1"), Lit("export")], GET),
    export("download_export", &[Lit("0.1"), Lit("export"), Id], GET),
    export("export_info", &[Lit("0.1"), Lit("export"), Id, Lit("info")], GET),
    export("copy_export", &[Lit("0.1"), Lit("export"), Id, Lit("copy")], POST),
    export("list_tables", &[Lit("0.1"), Lit("client"), Cid, Lit("table")], GET),
    export("describe_table", &[Lit("0.1"), Lit("client"), Cid, Lit("table"), Id], GET),
    export("export_table", &[Lit("0.1"), Lit("client"), Cid, Lit("table"), Id, Lit("export")], POST),
    export("list_figures", &[Lit("0.1"), Lit("figure")], GET),
    export("export_figure", &[Lit("0.1"), Lit("figure"), Id, Lit("export")], POST),
    export("figure_info", &[Lit("0.1"), Lit("figure"), Id, Lit("info")], GET_POST),
    export("list_charts", &[Lit("0.1"), Lit("chart")], GET),
    export("export_chart", &[Lit("0.1"), Lit("chart"), Id, Lit("export")], POST),
    export("chart_info", &[Lit("0.1"), Lit("chart"), Id, Lit("info")], GET_POST),
    export("update_status", &[Lit("0.1"), Lit("client"), Cid, Lit("fullupdatestatus")], GET),
];

impl Preset {
    /// Parses the config name of a preset.
    pub(crate) fn from_name(name: &str) -> Option<Preset> {
        match name {
            "rjmetrics-import" => Some(Preset::Import),
            "rjmetrics-export" => Some(Preset::Export),
            _ => None,
        }
    }

    /// The config name of this preset.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Preset::Import => "rjmetrics-import",
            Preset::Export => "rjmetrics-export",
        }
    }

    /// The production host used when a route names no `upstream`.
    pub(crate) fn default_upstream(self) -> &'static str {
        match self {
            Preset::Import => "https://connect.rjmetrics.com",
            Preset::Export => "https://api.rjmetrics.com",
        }
    }

    /// The path (after the route's base) of the call that proves a key before it is
    /// used: `authenticate` for import keys; `list_exports` for export keys, the one
    /// read-only export call that every key may make, that takes no id and that has no
    /// rate limit (unlike `update_status`, one call a minute).
    pub(crate) fn proof_path(self, client_id: &str) -> String {
        match self {
            Preset::Import => format!("/v2/client/{client_id}/authenticate"),
            Preset::Export => "/0.1/export".to_owned(),
        }
    }

    /// How this preset carries `secret`: the import key in the `apikey` query parameter,
    /// the export key in `X-RJM-API-Key`. Both strip [`BI_STRIP`] and every `apikey`
    /// from callers, and `apikey` from `Location`.
    pub(crate) fn credential(self, secret: &Secret) -> Result<Credential, Unsendable> {
        let credential = match self {
            Preset::Import => Credential::query(APIKEY, secret)?,
            Preset::Export => Credential::header(X_RJM_API_KEY, "X-RJM-API-Key", "", "", secret)?
                .stripping_query(APIKEY)
                .clearing_location(APIKEY),
        };
        Ok(credential.stripping_headers(&BI_STRIP))
    }

    /// Every operation of the preset, in table order.
    pub(crate) fn operations(self) -> &'static [Operation] {
        match self {
            Preset::Import => IMPORT_OPS,
            Preset::Export => EXPORT_OPS,
        }
    }

    /// Matches a request to an operation. `remainder` is the path after the route's
    /// prefix (empty or starting with `/`), already free of dot and empty segments.
    /// `enabled` has bit `i` set when operation `i` is enabled on the route.
    pub(crate) fn resolve(
        self,
        method: &Method,
        remainder: &str,
        client_id: &str,
        enabled: u32,
    ) -> Result<&'static Operation, Refusal> {
        // Split without allocating: no operation is longer than MAX_SEGMENTS.
        let mut buf = [""; MAX_SEGMENTS];
        let mut len = 0;
        if !matches!(remainder, "" | "/") {
            #[expect(
                clippy::manual_pattern_char_comparison,
                reason = "a predicate is cheaper than `split('/')`'s memchr for segments this short"
            )]
            for seg in remainder[1..].split(|c: char| c == '/') {
                *buf.get_mut(len).ok_or(Refusal::UnknownOperation)? = seg;
                len += 1;
            }
        }
        let segments = &buf[..len];
        let (index, op) = self
            .operations()
            .iter()
            .enumerate()
            .find(|(_, op)| shape_matches(op.pattern, segments))
            .ok_or(Refusal::UnknownOperation)?;
        if enabled & (1 << index) == 0 {
            return Err(Refusal::UnknownOperation);
        }
        for (seg, value) in op.pattern.iter().zip(segments) {
            match seg {
                Cid if *value != client_id => return Err(Refusal::ClientMismatch),
                Id if !is_id(value) => return Err(Refusal::InvalidPath("malformed id")),
                Table if !is_table(value) => {
                    return Err(Refusal::InvalidPath("table names are letters, digits and _"));
                }
                _ => {}
            }
        }
        if !op.methods.contains(method) {
            let allow: Vec<&str> = op.methods.iter().map(Method::as_str).collect();
            return Err(Refusal::MethodNotAllowed(allow.join(", ")));
        }
        Ok(op)
    }
}

/// The most path segments any operation has.
const MAX_SEGMENTS: usize = 8;

fn shape_matches(pattern: &[Seg], segments: &[&str]) -> bool {
    pattern.len() == segments.len()
        && pattern.iter().zip(segments).all(|(seg, value)| match seg {
            Lit(lit) => lit == value,
            Version => *value == "v1" || *value == "v2",
            Cid | Id | Table => true,
        })
}

fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_table(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u32 = u32::MAX;

    #[test]
    fn no_operation_is_longer_than_the_segment_buffer() {
        for preset in [Preset::Import, Preset::Export] {
            for op in preset.operations() {
                assert!(op.pattern.len() <= MAX_SEGMENTS, "{}", op.name);
            }
        }
        // A path longer than any operation is unknown, not a panic.
        let long = "/a".repeat(MAX_SEGMENTS + 3);
        assert_eq!(
            Preset::Export.resolve(&Method::GET, &long, "1", ALL).err(),
            Some(Refusal::UnknownOperation)
        );
    }

    fn import(method: Method, rest: &str) -> Result<&'static str, Refusal> {
        Preset::Import.resolve(&method, rest, "12345", ALL).map(|op| op.name)
    }

    fn export(method: Method, rest: &str) -> Result<&'static str, Refusal> {
        Preset::Export.resolve(&method, rest, "12345", ALL).map(|op| op.name)
    }

    #[test]
    fn import_operations_match() {
        assert_eq!(import(Method::GET, ""), Ok("status"));
        assert_eq!(import(Method::GET, "/"), Ok("status"));
        assert_eq!(import(Method::GET, "/v2/client/12345/authenticate"), Ok("authenticate"));
        assert_eq!(import(Method::GET, "/v1/client/12345/authenticate"), Ok("authenticate"));
        assert_eq!(import(Method::POST, "/v2/client/12345/table/orders_2/data"), Ok("upsert"));
    }

    #[test]
    fn import_refusals() {
        assert_eq!(import(Method::GET, "/v2/client/999/authenticate"), Err(Refusal::ClientMismatch));
        assert_eq!(import(Method::GET, "/v2/client/012345/authenticate"), Err(Refusal::ClientMismatch));
        assert_eq!(import(Method::GET, "/v2/client/abc/authenticate"), Err(Refusal::ClientMismatch));
        assert_eq!(
            import(Method::POST, "/v2/client/12345/table/bad-name/data"),
            Err(Refusal::InvalidPath("table names are letters, digits and _"))
        );
        assert_eq!(import(Method::GET, "/v3/client/12345/authenticate"), Err(Refusal::UnknownOperation));
        assert_eq!(import(Method::GET, "/v2/client/12345/authorize"), Err(Refusal::UnknownOperation));
        assert_eq!(
            import(Method::GET, "/v2/client/12345/table/t/data"),
            Err(Refusal::MethodNotAllowed("POST".into()))
        );
        assert_eq!(import(Method::POST, "/"), Err(Refusal::MethodNotAllowed("GET".into())));
    }

    #[test]
    fn every_export_operation_matches() {
        let cases = [
            (Method::GET, "/0.1/export", "list_exports"),
            (Method::GET, "/0.1/export/abc-1", "download_export"),
            (Method::GET, "/0.1/export/abc/info", "export_info"),
            (Method::POST, "/0.1/export/abc/copy", "copy_export"),
            (Method::GET, "/0.1/client/12345/table", "list_tables"),
            (Method::GET, "/0.1/client/12345/table/7", "describe_table"),
            (Method::POST, "/0.1/client/12345/table/7/export", "export_table"),
            (Method::GET, "/0.1/figure", "list_figures"),
            (Method::POST, "/0.1/figure/9/export", "export_figure"),
            (Method::GET, "/0.1/figure/9/info", "figure_info"),
            (Method::POST, "/0.1/figure/9/info", "figure_info"),
            (Method::GET, "/0.1/chart", "list_charts"),
            (Method::POST, "/0.1/chart/9/export", "export_chart"),
            (Method::GET, "/0.1/chart/9/info", "chart_info"),
            (Method::POST, "/0.1/chart/9/info", "chart_info"),
            (Method::GET, "/0.1/client/12345/fullupdatestatus", "update_status"),
        ];
        for (method, path, name) in cases {
            assert_eq!(export(method, path), Ok(name), "{path}");
        }
    }

    #[test]
    fn export_refusals() {
        assert_eq!(export(Method::GET, "/v1/tokens"), Err(Refusal::UnknownOperation));
        assert_eq!(export(Method::GET, "/0.1/client/1/table"), Err(Refusal::ClientMismatch));
        let long = format!("/0.1/export/{}", "a".repeat(65));
        assert_eq!(export(Method::GET, &long), Err(Refusal::InvalidPath("malformed id")));
        assert_eq!(export(Method::GET, "/0.1/export/a.b"), Err(Refusal::InvalidPath("malformed id")));
        assert_eq!(
            export(Method::DELETE, "/0.1/figure/9/info"),
            Err(Refusal::MethodNotAllowed("GET, POST".into()))
        );
    }

    #[test]
    fn disabled_operations_are_unknown() {
        // Only `authenticate` (index 1) enabled.
        let got = Preset::Import.resolve(&Method::POST, "/v2/client/1/table/t/data", "1", 0b010);
        assert_eq!(got.map(|op| op.name), Err(Refusal::UnknownOperation));
        let got = Preset::Import.resolve(&Method::GET, "/v2/client/1/authenticate", "1", 0b010);
        assert_eq!(got.map(|op| op.name), Ok("authenticate"));
    }

    #[test]
    fn each_preset_strips_every_bi_credential_and_injects_its_own() {
        let key = Secret::parse("k").unwrap();
        let mut caller = http::HeaderMap::new();
        for name in &BI_STRIP {
            caller.insert(name, http::HeaderValue::from_static("caller"));
        }
        caller.insert("x-other", http::HeaderValue::from_static("1"));
        for preset in [Preset::Import, Preset::Export] {
            let credential = preset.credential(&key).unwrap();
            let get = Method::GET;
            let stripped = credential.upstream_head(&get, &caller, ["/", ""], None, false).unwrap().headers();
            assert_eq!(stripped.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-other"], "{preset:?}");
            let headers = credential.upstream_head(&get, &caller, ["/", ""], None, true).unwrap().headers();
            let query = credential.query_for(Some("a=1&APIKEY=caller"), true).unwrap();
            match preset {
                Preset::Import => {
                    assert_eq!(query.as_deref(), Some("a=1&apikey=k"));
                    assert!(headers.get(X_RJM_API_KEY).is_none());
                }
                Preset::Export => {
                    assert_eq!(query.as_deref(), Some("a=1"));
                    assert_eq!(headers[X_RJM_API_KEY], "k");
                }
            }
            let location: Vec<&str> = credential.location_query().iter().map(|n| &**n).collect();
            assert_eq!(location, [APIKEY]);
        }
    }
}
