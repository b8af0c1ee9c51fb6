//! Compiles one `[[routes]]` table: its kind (a BI preset or a generic route), secret,
//! allow lists, upstream client and limits.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, Uri};
use sha2::{Digest, Sha256};

use super::LoadedSecret;
use super::ctx::{Ctx, parse_net, valid_name};
use super::schema::RouteSpec;
use crate::caller::{Allow, Group};
use crate::routes::{Inject, Kind, Preset, Route, check_path};
use crate::upstream::{self, Upstream, UpstreamKey};

const DEFAULT_MAX_BODY: u64 = 5 * 1024 * 1024;

pub(super) fn route(
    ctx: &mut Ctx,
    i: usize,
    spec: &RouteSpec,
    groups: &[Group],
    secrets: &BTreeMap<String, LoadedSecret>,
    clients: &upstream::Cache,
) -> Option<Route> {
    let name = spec.name.clone().unwrap_or_default();
    let location = format!("routes[{i}] {name:?}");
    let before = ctx.problems.len();
    if spec.name.is_none() {
        ctx.problem(&location, "name", "is required");
    } else if !valid_name(&name) {
        ctx.problem(&location, "name", format!("{name:?} must match [a-z0-9_-]+"));
    }
    let prefix = spec.prefix.clone().unwrap_or_default();
    if spec.prefix.is_none() {
        ctx.problem(&location, "prefix", "is required");
    } else if !valid_prefix(&prefix) {
        ctx.problem(&location, "prefix", format!("{prefix:?} must start with /, have no trailing /, and no empty, dot or encoded segments, ? or #"));
    }

    let preset = match spec.preset.as_deref() {
        None => None,
        Some(p) => match Preset::from_name(p) {
            Some(p) => Some(p),
            None => {
                ctx.problem(
                    &location,
                    "preset",
                    format!("{p:?} is not \"rjmetrics-import\" or \"rjmetrics-export\""),
                );
                None
            }
        },
    };
    let kind = match (preset, spec.preset.is_some()) {
        (Some(preset), _) => preset_kind(ctx, &location, spec, preset),
        (None, false) => generic_kind(ctx, &location, spec),
        (None, true) => None,
    };

    let (secret_name, secret) = match &spec.secret {
        None => {
            ctx.problem(&location, "secret", "is required");
            (String::new(), None)
        }
        Some(s) => match secrets.get(s) {
            Some(loaded) => (s.clone(), Some(loaded.value.clone())),
            None => {
                if !ctx.inputs.file.secrets.iter().any(|(n, _)| n == s) {
                    ctx.problem(&location, "secret", format!("{s:?} is not a [secrets.{s}] entry"));
                }
                (s.clone(), None)
            }
        },
    };

    let allow = match &spec.allow {
        None => {
            ctx.problem(
                &location,
                "allow",
                "is required (everyone must be written out as [\"0.0.0.0/0\", \"::/0\"])",
            );
            None
        }
        Some(list) => {
            if list.is_empty() {
                ctx.warnings.push(format!("route {name:?} has an empty allow list: it admits nobody"));
            }
            Some(allow_list(ctx, &location, "allow", list, groups))
        }
    };
    let shadow_allow =
        spec.shadow_allow.as_ref().map(|l| allow_list(ctx, &location, "shadow_allow", l, groups));

    let default_upstream = preset.map(Preset::default_upstream);
    let upstream_url = spec.upstream.as_deref().or(default_upstream);
    if upstream_url.is_none() && spec.preset.is_none() {
        ctx.problem(&location, "upstream", "is required for a route without a preset");
    }
    let connect_timeout =
        ctx.duration(&location, "connect_timeout", &spec.connect_timeout, Duration::from_secs(5));
    let response_timeout =
        ctx.duration(&location, "response_timeout", &spec.response_timeout, Duration::from_secs(60));
    let max_body_bytes = match spec.max_body_bytes {
        Some(0) => {
            ctx.problem(&location, "max_body_bytes", "must be at least 1");
            DEFAULT_MAX_BODY
        }
        Some(n) => n,
        None => DEFAULT_MAX_BODY,
    };
    let upstream = upstream_url
        .and_then(|url| upstream(ctx, &location, url, spec.ca_file.as_ref(), connect_timeout, clients));

    // A secret the route cannot carry is refused here, never per request.
    let credential = match (&kind, &secret) {
        (Some(kind), Some(secret)) => kind
            .credential(secret)
            .map_err(|why| ctx.problem(&location, "secret", format!("{secret_name:?} {why}")))
            .ok(),
        _ => None,
    };
    if ctx.problems.len() != before {
        return None;
    }
    let (kind, upstream, credential, allow) = (kind?, upstream?, credential?, allow?);
    if upstream.is_plain_http() && !is_loopback_url(upstream.url()) {
        ctx.warnings.push(format!("route {name:?} sends its secret over plain HTTP to a non-loopback host"));
    }
    Some(Route {
        name,
        prefix,
        kind,
        upstream,
        secret_name,
        credential,
        allow,
        allow_text: spec.allow.clone().unwrap_or_default(),
        shadow_allow,
        max_body_bytes,
        response_timeout,
    })
}

fn preset_kind(ctx: &mut Ctx, location: &str, spec: &RouteSpec, preset: Preset) -> Option<Kind> {
    let client_id = match spec.client_id {
        None => {
            ctx.problem(location, "client_id", "is required by the BI presets");
            return None;
        }
        Some(0) => {
            ctx.problem(location, "client_id", "must be a positive integer");
            return None;
        }
        Some(id) => id.to_string(),
    };
    if spec.inject.is_some() {
        ctx.problem(location, "inject", "is set by the preset and cannot be given");
    }
    if spec.methods.is_some() {
        ctx.problem(location, "methods", "preset routes take operations, not methods");
    }
    if spec.validate_body.is_some() && preset != Preset::Import {
        ctx.problem(location, "validate_body", "only applies to the rjmetrics-import preset");
    }
    let ops = preset.operations();
    let enabled = match &spec.operations {
        None => (1u32 << ops.len()) - 1,
        Some(list) => {
            let mut bits = 0;
            for name in list {
                match ops.iter().position(|op| op.name == name) {
                    Some(i) => bits |= 1 << i,
                    None => {
                        let known: Vec<&str> = ops.iter().map(|op| op.name).collect();
                        ctx.problem(
                            location,
                            "operations",
                            format!(
                                "{name:?} is not an operation of {} ({})",
                                preset.name(),
                                known.join(", ")
                            ),
                        );
                    }
                }
            }
            bits
        }
    };
    Some(Kind::Preset { preset, client_id, enabled, validate_body: spec.validate_body.unwrap_or(true) })
}

fn generic_kind(ctx: &mut Ctx, location: &str, spec: &RouteSpec) -> Option<Kind> {
    for (field, set) in [
        ("client_id", spec.client_id.is_some()),
        ("operations", spec.operations.is_some()),
        ("validate_body", spec.validate_body.is_some()),
    ] {
        if set {
            ctx.problem(location, field, "only applies to preset routes");
        }
    }
    let methods = match &spec.methods {
        None => ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).expect("literal"))
            .collect(),
        Some(list) => {
            let mut out = Vec::new();
            for m in list {
                match m.as_str() {
                    "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => {
                        out.push(Method::from_bytes(m.as_bytes()).expect("checked"))
                    }
                    _ => ctx.problem(
                        location,
                        "methods",
                        format!("{m:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                    ),
                }
            }
            out
        }
    };
    let Some(inject) = &spec.inject else {
        ctx.problem(location, "inject", "is required for a route without a preset");
        return None;
    };
    let inject = match (&inject.header, &inject.query) {
        (Some(header), None) => {
            let format = inject.format.clone().unwrap_or_else(|| "{secret}".into());
            let name = HeaderName::from_bytes(header.as_bytes());
            let parts: Vec<&str> = format.split("{secret}").collect();
            match (name, parts.as_slice()) {
                (Err(_), _) => {
                    ctx.problem(location, "inject.header", format!("{header:?} is not a valid header name"));
                    return None;
                }
                (Ok(name), _) if crate::rewrite::frames_request(&name) => {
                    ctx.problem(
                        location,
                        "inject.header",
                        format!("{header:?} frames or routes the request; keygate sets or strips it itself"),
                    );
                    return None;
                }
                (Ok(name), [prefix, suffix]) => {
                    if let Some(why) = header_text_problem(prefix, suffix) {
                        ctx.problem(location, "inject.format", why);
                        return None;
                    }
                    Inject::Header { name, prefix: (*prefix).into(), suffix: (*suffix).into() }
                }
                (Ok(_), _) => {
                    // Not quoted: a format without `{secret}` often holds a pasted key.
                    ctx.problem(location, "inject.format", "must contain {secret} exactly once");
                    return None;
                }
            }
        }
        (None, Some(query)) if inject.format.is_none() => {
            if query.is_empty() || !query.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
                ctx.problem(location, "inject.query", format!("{query:?} must be a plain parameter name"));
                return None;
            }
            Inject::Query(query.clone())
        }
        _ => {
            ctx.problem(location, "inject", "needs exactly one of header (with optional format) or query");
            return None;
        }
    };
    Some(Kind::Generic { methods, inject })
}

fn allow_list(ctx: &mut Ctx, location: &str, field: &str, list: &[String], groups: &[Group]) -> Allow {
    let mut nets = Vec::new();
    let mut named = Vec::new();
    for entry in list {
        if let Some(g) = groups.iter().find(|g| &g.name == entry) {
            named.push(g);
        } else if entry.contains(['.', ':']) {
            match parse_net(entry) {
                Ok(net) => nets.push(net),
                Err(e) => ctx.problem(location, field, e),
            }
        } else {
            ctx.problem(location, field, format!("{entry:?} is neither a [callers.groups] name nor a CIDR"));
        }
    }
    Allow::new(&nets, &named)
}

fn upstream(
    ctx: &mut Ctx,
    location: &str,
    url: &str,
    ca_file: Option<&PathBuf>,
    connect_timeout: Duration,
    clients: &upstream::Cache,
) -> Option<Arc<Upstream>> {
    let uri: Uri = match url.parse() {
        Ok(u) => u,
        Err(_) => {
            ctx.problem(location, "upstream", format!("{:?} is not a URL", masked_url(url)));
            return None;
        }
    };
    let scheme_ok = matches!(uri.scheme_str(), Some("https") | Some("http"));
    let has_userinfo = uri.authority().is_some_and(|a| a.as_str().contains('@'));
    // `Uri` drops a fragment silently: look for it in the text.
    if !scheme_ok || uri.host().is_none() || has_userinfo || uri.query().is_some() || url.contains('#') {
        ctx.problem(
            location,
            "upstream",
            format!(
                "{:?} must be http(s)://host[:port][/base], without user info, query or fragment",
                masked_url(url)
            ),
        );
        return None;
    }
    let extra = match ca_file {
        None => None,
        Some(p) => match ctx.inputs.file_bytes(p) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                ctx.problem(location, "ca_file", format!("{} cannot be read: {e}", p.display()));
                return None;
            }
        },
    };
    let key = UpstreamKey {
        url: url.trim_end_matches('/').to_owned(),
        ca_digest: extra.map(|b| hex::encode(Sha256::digest(b))),
        connect_timeout,
    };
    match clients.client(&key, || Upstream::new(&uri, extra, key.clone())) {
        Ok(client) => Some(client),
        Err(e) => {
            let field = if ca_file.is_some() { "ca_file" } else { "upstream" };
            ctx.problem(location, field, e);
            None
        }
    }
}

/// Why an `inject.format`'s text around `{secret}` cannot be a header value, if so.
fn header_text_problem(prefix: &str, suffix: &str) -> Option<&'static str> {
    let text = || prefix.bytes().chain(suffix.bytes());
    if !text().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Some("holds characters a header value cannot (only visible ASCII and spaces)");
    }
    (prefix.starts_with(' ') || suffix.ends_with(' '))
        .then_some("begins or ends with a space, which HTTP strips from header values")
}

/// `url` fit for an error message: user info, query and fragment become `***`, since
/// any of them may hold a credential (`https://***@host/base?***#***`).
fn masked_url(url: &str) -> String {
    let (url, fragment) = match url.split_once('#') {
        Some((before, _)) => (before, "#***"),
        None => (url, ""),
    };
    let (url, query) = match url.split_once('?') {
        Some((before, _)) => (before, "?***"),
        None => (url, ""),
    };
    let (scheme, rest) = url.split_at(url.find("://").map_or(0, |i| i + 3));
    // Everything before the last `@`, even past a `/`: a password may hold one.
    let rest = match rest.rfind('@') {
        Some(at) => format!("***{}", &rest[at..]),
        None => rest.to_owned(),
    };
    format!("{scheme}{rest}{query}{fragment}")
}

fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<Uri>() else { return false };
    match uri.host() {
        Some("localhost") => true,
        Some(h) => h.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

fn valid_prefix(prefix: &str) -> bool {
    (prefix == "/" || (!prefix.ends_with('/') && check_path(prefix).is_ok()))
        && !prefix.contains(['%', '?', '#', ' '])
}

#[cfg(test)]
mod tests {
    use super::masked_url;

    #[test]
    fn masked_urls_keep_scheme_host_and_path_only() {
        for (url, masked) in [
            ("https://api.example/v1", "https://api.example/v1"),
            ("https://u:p@api.example/v1", "https://***@api.example/v1"),
            ("https://u:p/w@api.example:8/v1", "https://***@api.example:8/v1"),
            ("https://api.example/v1?k=s#f", "https://api.example/v1?***#***"),
            ("https://api.example/#f?k=s", "https://api.example/#***"),
            ("u:p@api.example?x", "***@api.example?***"),
        ] {
            assert_eq!(masked_url(url), masked, "{url}");
        }
    }
}
