//! Compiles one `[[routes]]` table: its name and prefix, secret, allow lists, upstream
//! client, limits and credential (its kind is compiled in [`super::kind`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use sha2::{Digest, Sha256};

use super::ctx::{Ctx, masked_url, parse_net, valid_name};
use super::schema::RouteSpec;
use super::{LoadedSecret, kind, proof};
use crate::caller::{Allow, Group};
use crate::routes::{Credential, Fallback, Kind, Preset, Route, check_path};
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
    let (host, prefix) = name_host_and_prefix(ctx, &location, spec);
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
    let keys = match (&kind, secret) {
        (Some(kind), Some(secret)) => keys(ctx, &location, &secret_name, kind, secret),
        _ => None,
    };
    let proof = match (&kind, &upstream) {
        (Some(kind), Some(upstream)) => proof::proof(ctx, &location, spec, kind, upstream),
        _ => None,
    };
    if ctx.problems.len() != before {
        return None;
    }
    let (kind, upstream, (credential, fallback), allow) = (kind?, upstream?, keys?, allow?);
    if upstream.is_plain_http() && !is_loopback_url(upstream.url()) {
        ctx.warnings.push(format!("route {name:?} sends its secret over plain HTTP to a non-loopback host"));
    }
    let allow_text = spec.allow.clone().unwrap_or_default();
    Some(Route {
        name,
        host,
        prefix,
        kind,
        upstream,
        secret_name,
        credential,
        fallback,
        proof,
        allow,
        allow_text,
        shadow_allow,
        max_body_bytes,
        response_timeout,
        limits,
        series: Default::default(),
    })
}

/// Checks `name` (required) and returns `host` (lowercased) and `prefix` (required
/// without a host; `/` by default with one).
fn name_host_and_prefix(ctx: &mut Ctx<'_>, location: &str, spec: &RouteSpec) -> (Option<String>, String) {
    match &spec.name {
        None => ctx.problem(location, "name", "is required"),
        Some(name) if !valid_name(name) => {
            ctx.problem(location, "name", format!("{name:?} must match [a-z0-9_-]+"))
        }
        Some(_) => {}
    }
    let host = spec.host.as_deref().map(|h| {
        if let Err(why) = check_host(h) {
            ctx.problem(location, "host", format!("{h:?} {why}"));
        }
        h.to_ascii_lowercase()
    });
    let prefix = match (&spec.prefix, &host) {
        (Some(prefix), _) => prefix.clone(),
        (None, Some(_)) => "/".to_owned(),
        (None, None) => {
            ctx.problem(location, "prefix", "is required (or a host)");
            String::new()
        }
    };
    if spec.prefix.is_some() && !valid_prefix(&prefix) {
        ctx.problem(location, "prefix", format!("{prefix:?} must start with /, have no trailing /, and no empty, dot or encoded segments, ? or #"));
    }
    (host, prefix)
}

/// Why `host` cannot name a route's host: it must be a DNS name (labels of letters,
/// digits and inner hyphens, at most 63 bytes each and 253 in all), without a port,
/// a wildcard, a trailing dot or an IP address.
fn check_host(host: &str) -> Result<(), &'static str> {
    if host.contains('*') {
        return Err(
            "is a wildcard; name each host (a wildcard would intercept hosts no route was written for)",
        );
    }
    if host.contains(':') || host.contains(['[', ']']) {
        return Err("must be a host name without a port (ports 80 and 443 are matched, others never)");
    }
    if host.parse::<IpAddr>().is_ok()
        || host.rsplit('.').next().is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("is an IP address; host routes name DNS names");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err("is not a DNS name (letters, digits and inner hyphens in dot-separated labels)");
    }
    Ok(())
}

/// The route's credential for the secret's value in use, and for its previous value
/// while the overlap lasts. A value the route cannot carry is refused here, never per
/// request: the one in use, and a candidate too (it is about to be in use).
fn keys(
    ctx: &mut Ctx<'_>,
    location: &str,
    secret_name: &str,
    kind: &Kind,
    secret: &LoadedSecret,
) -> Option<(Credential, Option<Fallback>)> {
    let mut refuse = |why| ctx.problem(location, "secret", format!("{secret_name:?} {why}"));
    let credential = kind.credential(&secret.value).map_err(&mut refuse).ok();
    if let Some(candidate) = &secret.candidate {
        kind.credential(&candidate.value).map_err(&mut refuse).ok()?;
    }
    // A previous value this route cannot carry (its `inject` changed since) is no
    // fallback for it: it was never sent this way.
    let fallback = secret.previous.as_ref().and_then(|p| {
        let credential = kind.credential(&p.value).ok()?;
        Some(Fallback { credential, until: p.until })
    });
    Some((credential?, fallback))
}

/// The route's secret by name, and the secret when it loaded (a secret that failed to
/// load has its own problem already).
fn secret<'s>(
    ctx: &mut Ctx<'_>,
    location: &str,
    spec: &RouteSpec,
    secrets: &'s BTreeMap<String, LoadedSecret>,
) -> (String, Option<&'s LoadedSecret>) {
    let Some(name) = &spec.secret else {
        ctx.problem(location, "secret", "is required");
        return (String::new(), None);
    };
    if let Some(loaded) = secrets.get(name) {
        return (name.clone(), Some(loaded));
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
    use super::check_host;
    use super::masked_url;

    #[test]
    fn hosts_are_dns_names_without_ports_or_wildcards() {
        for ok in ["connect.rjmetrics.com", "Connect.RJMetrics.com", "localhost", "a-b.example", "x1.y2"] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "*.rjmetrics.com",
            "connect.rjmetrics.com:443",
            "127.0.0.1",
            "10.1.2.300",
            "[::1]",
            "::1",
            "connect.rjmetrics.com.",
            "-a.example",
            "a-.example",
            "a..example",
            "a_b.example",
            "a b.example",
            "https://connect.rjmetrics.com",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
        assert!(check_host(&format!("{}.example", "a".repeat(64))).is_err());
    }

    #[test]
    fn masked_urls_keep_scheme_host_and_path_only() {
        for (url, masked) in [
            ("https://api.example/v1", "https://api.example/v1"),
            ("https://u:p@api.example/v1", "https://***@api.example/v1"),
            ("https://u:p/w@api.example:8/v1", "https://***@api.example:8/v1"),
            ("https://api.example/v1?k=s#f", "https://api.example/v1?***#***"),
            ("https://api.example/#f?k=s", "https://api.example/#***"),
            ("u:p@api.example?x", "***@api.example?***"),
            // A password holding `#`, `?` or `@` is hidden whole.
            ("redis://:Pa55#word@redis:6379/0", "redis://***@redis:6379/0"),
            ("redis://user:s3cr?et@h", "redis://***@h"),
            ("https://u:a@b#c?d@api.example/v1?k=s", "https://***@api.example/v1?***"),
        ] {
            assert_eq!(masked_url(url), masked, "{url}");
        }
    }
}
