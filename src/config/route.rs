//! Compiles one `[[routes]]` table: its name and prefix, secret, allow lists, upstream
//! client, limits and credential (its kind is compiled in [`super::kind`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use sha2::{Digest, Sha256};

use super::ctx::{Ctx, parse_net, valid_name};
use super::schema::RouteSpec;
use super::{LoadedSecret, kind};
use crate::caller::{Allow, Group};
use crate::routes::{Preset, Route, check_path};
use crate::secret::Secret;
use crate::upstream::{self, Upstream, UpstreamKey};

const DEFAULT_MAX_BODY: u64 = 5 * 1024 * 1024;

/// Compiles `routes[i]`; `None` when it has a problem (every one is recorded in `ctx`).
pub(super) fn route(
    ctx: &mut Ctx<'_>,
    i: usize,
    spec: &RouteSpec,
    groups: &[Group],
    secrets: &BTreeMap<String, LoadedSecret>,
    clients: &upstream::Cache,
) -> Option<Route> {
    let name = spec.name.clone().unwrap_or_default();
    let location = format!("routes[{i}] {name:?}");
    let before = ctx.problems.len();
    let prefix = name_and_prefix(ctx, &location, spec);
    let (preset, kind) = kind::kind(ctx, &location, spec);
    let (secret_name, secret) = secret(ctx, &location, spec, secrets);
    let allow = allow(ctx, &location, &name, spec, groups);
    let shadow_allow =
        spec.shadow_allow.as_ref().map(|l| allow_list(ctx, &location, "shadow_allow", l, groups));
    let connect_timeout =
        ctx.duration(&location, "connect_timeout", &spec.connect_timeout, Duration::from_secs(5));
    let response_timeout =
        ctx.duration(&location, "response_timeout", &spec.response_timeout, Duration::from_secs(60));
    let max_body_bytes = max_body_bytes(ctx, &location, spec);
    let upstream = upstream_client(ctx, &location, spec, preset, connect_timeout, clients);
    let limits = super::limits::vendor_limits(ctx, &location, spec, preset);
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
    let allow_text = spec.allow.clone().unwrap_or_default();
    Some(Route {
        name,
        prefix,
        kind,
        upstream,
        secret_name,
        credential,
        allow,
        allow_text,
        shadow_allow,
        max_body_bytes,
        response_timeout,
        limits,
    })
}

/// Checks `name` and returns `prefix` (both required).
fn name_and_prefix(ctx: &mut Ctx<'_>, location: &str, spec: &RouteSpec) -> String {
    match &spec.name {
        None => ctx.problem(location, "name", "is required"),
        Some(name) if !valid_name(name) => {
            ctx.problem(location, "name", format!("{name:?} must match [a-z0-9_-]+"))
        }
        Some(_) => {}
    }
    let prefix = spec.prefix.clone().unwrap_or_default();
    if spec.prefix.is_none() {
        ctx.problem(location, "prefix", "is required");
    } else if !valid_prefix(&prefix) {
        ctx.problem(location, "prefix", format!("{prefix:?} must start with /, have no trailing /, and no empty, dot or encoded segments, ? or #"));
    }
    prefix
}

/// The route's secret by name, and its value when it loaded (a secret that failed to
/// load has its own problem already).
fn secret(
    ctx: &mut Ctx<'_>,
    location: &str,
    spec: &RouteSpec,
    secrets: &BTreeMap<String, LoadedSecret>,
) -> (String, Option<Arc<Secret>>) {
    let Some(name) = &spec.secret else {
        ctx.problem(location, "secret", "is required");
        return (String::new(), None);
    };
    if let Some(loaded) = secrets.get(name) {
        return (name.clone(), Some(loaded.value.clone()));
    }
    if !ctx.inputs.file.secrets.iter().any(|(n, _)| n == name) {
        ctx.problem(location, "secret", format!("{name:?} is not a [secrets.{name}] entry"));
    }
    (name.clone(), None)
}

/// The required `allow` list; an empty one is allowed, with a warning.
fn allow(ctx: &mut Ctx<'_>, location: &str, name: &str, spec: &RouteSpec, groups: &[Group]) -> Option<Allow> {
    let Some(list) = &spec.allow else {
        let message = "is required (everyone must be written out as [\"0.0.0.0/0\", \"::/0\"])";
        ctx.problem(location, "allow", message);
        return None;
    };
    if list.is_empty() {
        ctx.warnings.push(format!("route {name:?} has an empty allow list: it admits nobody"));
    }
    Some(allow_list(ctx, location, "allow", list, groups))
}

fn max_body_bytes(ctx: &mut Ctx<'_>, location: &str, spec: &RouteSpec) -> u64 {
    match spec.max_body_bytes {
        Some(0) => {
            ctx.problem(location, "max_body_bytes", "must be at least 1");
            DEFAULT_MAX_BODY
        }
        Some(n) => n,
        None => DEFAULT_MAX_BODY,
    }
}

/// The client for the route's `upstream`, or its preset's production host.
fn upstream_client(
    ctx: &mut Ctx<'_>,
    location: &str,
    spec: &RouteSpec,
    preset: Option<Preset>,
    connect_timeout: Duration,
    clients: &upstream::Cache,
) -> Option<Arc<Upstream>> {
    let url = spec.upstream.as_deref().or(preset.map(Preset::default_upstream));
    if url.is_none() && spec.preset.is_none() {
        ctx.problem(location, "upstream", "is required for a route without a preset");
    }
    upstream(ctx, location, url?, spec.ca_file.as_ref(), connect_timeout, clients)
}

fn allow_list(ctx: &mut Ctx<'_>, location: &str, field: &str, list: &[String], groups: &[Group]) -> Allow {
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
    ctx: &mut Ctx<'_>,
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
        // `check --no-secrets` reads no CA file: the upstream is checked without it.
        Some(_) if ctx.inputs.reading == super::Reading::StructureOnly => None,
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

/// `url` fit for an error message: user info, query and fragment become `***`, since
/// any of them may hold a credential (`https://***@host/base?***#***`).
pub(super) fn masked_url(url: &str) -> String {
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
