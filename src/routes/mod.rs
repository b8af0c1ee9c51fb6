//! The route table: longest-prefix matching on segment boundaries, the path checks that
//! run before anything is forwarded, and what a matched request becomes upstream
//! (operation, upstream path, whether a key is injected). How each route strips and
//! injects its key is its [`Credential`] ([`credential`]); the BI presets' part of that
//! is in [`preset`].

pub(crate) mod credential;
pub(crate) mod preset;
pub(crate) mod upsert;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};

use crate::caller::Allow;
use crate::error::Refusal;
use crate::secret::Secret;
use crate::upstream::Upstream;
pub(crate) use credential::{Credential, Unsendable};
pub(crate) use preset::Preset;

/// How a generic route carries its key.
#[derive(Debug, Clone)]
pub(crate) enum Inject {
    /// One header, with the secret between `prefix` and `suffix` (from `format`).
    Header { name: HeaderName, prefix: String, suffix: String },
    /// One query parameter.
    Query(String),
}

/// What kind of route this is.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A BI preset pinned to one client id; `enabled` is a bit set over the preset's
    /// operation table.
    Preset { preset: Preset, client_id: String, enabled: u32, validate_body: bool },
    /// Any other keyed API.
    Generic { methods: Vec<Method>, inject: Inject },
}

impl Kind {
    /// How a route of this kind carries `secret`: a preset's own way, or its `inject`.
    /// Every route's `Location` loses `apikey`, the BI key's name, besides its own.
    pub(crate) fn credential(&self, secret: &Secret) -> Result<Credential, Unsendable> {
        match self {
            Kind::Preset { preset, .. } => preset.credential(secret),
            Kind::Generic { inject: Inject::Header { name, prefix, suffix }, .. } => {
                Credential::header(name.clone(), name.as_str(), prefix, suffix, secret)
                    .map(|c| c.clearing_location(preset::APIKEY))
            }
            Kind::Generic { inject: Inject::Query(name), .. } => {
                Credential::query(name, secret).map(|c| c.clearing_location(preset::APIKEY))
            }
        }
    }
}

/// What a BI preset route does about the vendor's limits (docs/presets.md, "Vendor
/// limits"): how an import upsert of more than 100 records is re-batched, and how long an
/// export `update_status` answer is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VendorLimits {
    /// Batches of one re-batched upsert in flight at once.
    pub batch_concurrency: usize,
    /// Retries of one batch after a 429, a 5xx or no answer.
    pub batch_retries: u32,
    /// How long an `update_status` answer is shared; zero turns the guard off.
    pub update_status_ttl: Duration,
}

impl Default for VendorLimits {
    fn default() -> Self {
        VendorLimits { batch_concurrency: 1, batch_retries: 3, update_status_ttl: Duration::from_secs(60) }
    }
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub(crate) prefix: String,
    pub(crate) kind: Kind,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) secret_name: String,
    /// How this route strips callers' keys and injects its own.
    pub(crate) credential: Credential,
    pub(crate) allow: Allow,
    /// The `allow` entries as written (for `check`).
    pub(crate) allow_text: Vec<String>,
    pub(crate) shadow_allow: Option<Allow>,
    pub(crate) max_body_bytes: u64,
    pub(crate) response_timeout: Duration,
    /// Re-batching and the update-status guard (BI presets).
    pub(crate) limits: VendorLimits,
}

/// Where a matched request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The `operation` label.
    pub operation: &'static str,
    /// False only for calls that carry no key (the import status check).
    pub credential: bool,
    /// True for import upserts checked locally.
    pub validate_upsert: bool,
    /// The path to request upstream (without query).
    pub path: String,
}

impl Route {
    /// Matches the request to one of this route's operations.
    pub(crate) fn target(&self, method: &Method, remainder: &str) -> Result<Target, Refusal> {
        let (operation, credential, validate_upsert) = match &self.kind {
            Kind::Preset { preset, client_id, enabled, validate_body } => {
                let op = preset.resolve(method, remainder, client_id, *enabled)?;
                (op.name, op.credential, *validate_body && op.name == "upsert")
            }
            Kind::Generic { methods, .. } => {
                if !methods.contains(method) {
                    let allow: Vec<&str> = methods.iter().map(Method::as_str).collect();
                    return Err(Refusal::MethodNotAllowed(allow.join(", ")));
                }
                (method_label(method), true, false)
            }
        };
        let path = join_path(self.upstream.base_path(), remainder);
        Ok(Target { operation, credential, validate_upsert, path })
    }

    /// The operation names this route forwards (for `check` and `/config`).
    pub(crate) fn operation_names(&self) -> Vec<String> {
        match &self.kind {
            Kind::Preset { preset, enabled, .. } => preset
                .operations()
                .iter()
                .enumerate()
                .filter(|(i, _)| enabled & (1 << i) != 0)
                .map(|(_, op)| op.name.to_owned())
                .collect(),
            Kind::Generic { methods, .. } => methods.iter().map(|m| m.as_str().to_owned()).collect(),
        }
    }
}

fn join_path(base: &str, remainder: &str) -> String {
    let joined = format!("{}{}", base.trim_end_matches('/'), remainder);
    if joined.is_empty() { "/".to_owned() } else { joined }
}

/// The `operation` label of a generic route: the method, from a closed set.
pub(crate) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "get",
        Method::HEAD => "head",
        Method::POST => "post",
        Method::PUT => "put",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        Method::OPTIONS => "options",
        _ => "other",
    }
}

/// All routes of one snapshot, indexed by prefix.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    by_prefix: HashMap<String, usize>,
}

impl RouteTable {
    /// Builds the table. Prefixes were checked unique and well-formed by config.
    pub(crate) fn new(routes: Vec<Arc<Route>>) -> Self {
        let by_prefix = routes.iter().enumerate().map(|(i, r)| (r.prefix.clone(), i)).collect();
        RouteTable { routes, by_prefix }
    }

    /// Every route, in config order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route with the longest prefix that ends on a segment boundary of `path`, and
    /// the remainder after it. The cost follows the path's depth, not the route count.
    pub fn find<'p>(&self, path: &'p str) -> Option<(&Arc<Route>, &'p str)> {
        let mut end = path.len();
        loop {
            let candidate = &path[..end];
            let key = if candidate.is_empty() { "/" } else { candidate };
            if let Some(&i) = self.by_prefix.get(key) {
                let rest = if key == "/" { path } else { &path[end..] };
                return Some((&self.routes[i], rest));
            }
            if end == 0 {
                return None;
            }
            end = candidate.rfind('/').unwrap_or(0);
        }
    }
}

/// Refuses paths that could mean something else upstream (docs/presets.md, "Routing"):
/// dot segments, empty segments, encoded `/`, `\`, `.` or NUL, and anything not in
/// origin form.
pub fn check_path(path: &str) -> Result<(), Refusal> {
    if !path.starts_with('/') {
        return Err(Refusal::InvalidPath("the path must start with /"));
    }
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\\' {
            return Err(Refusal::InvalidPath("backslash in path"));
        }
        if b == b'%' {
            let pair =
                bytes.get(i + 1..i + 3).map(|p| [p[0].to_ascii_lowercase(), p[1].to_ascii_lowercase()]);
            if matches!(pair, Some([b'2', b'f'] | [b'5', b'c'] | [b'2', b'e'] | [b'0', b'0'])) {
                return Err(Refusal::InvalidPath("encoded separator, dot or NUL in path"));
            }
        }
    }
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        if seg == "." || seg == ".." {
            return Err(Refusal::InvalidPath("dot segment in path"));
        }
        // A single trailing slash is allowed ("/import/"); empty segments elsewhere are not.
        if seg.is_empty() && segments.peek().is_some() {
            return Err(Refusal::InvalidPath("empty segment in path"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_checks() {
        for ok in ["/", "/import", "/import/", "/import/v2/client/1/authenticate", "/a%20b", "/x;y"] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "/import/../x",
            "/import/./x",
            "/import/..",
            "//import",
            "/import//x",
            "/import/%2e%2e/x",
            "/import/%2E/x",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a%5Cb",
            "/a%00b",
            "/a\\b",
            "*",
            "",
        ] {
            assert!(matches!(check_path(bad), Err(Refusal::InvalidPath(_))), "{bad}");
        }
    }

    #[test]
    fn join_path_handles_bases_and_empty_remainders() {
        assert_eq!(join_path("", ""), "/");
        assert_eq!(join_path("", "/"), "/");
        assert_eq!(join_path("/v1", "/things"), "/v1/things");
        assert_eq!(join_path("/v1/", "/things"), "/v1/things");
        assert_eq!(join_path("/v1", ""), "/v1");
    }
}
