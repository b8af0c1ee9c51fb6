//! The route table: routes for the request's host first, then host-less ones, each by
//! longest prefix on segment boundaries; the path checks that run before anything is
//! forwarded; and what a matched request becomes upstream
//! (operation, upstream path, whether a key is injected). How each route strips and
//! injects its key is its [`Credential`] ([`credential`]); the BI presets' part of that
//! is in [`preset`].

pub(crate) mod credential;
pub(crate) mod preset;
pub(crate) mod series;
pub(crate) mod upsert;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use tokio::time::Instant;

use crate::caller::Allow;
use crate::error::{Refusal, Shape};
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

/// The read-only call that proves a key on a route before the route uses it
/// ([`crate::rotation::proof`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proof {
    pub method: Method,
    /// The upstream path, the upstream's base path included.
    pub path: String,
    /// The query, without the key (the credential adds it where the route carries it).
    pub query: Option<String>,
    /// The statuses that accept the key; empty: any 2xx.
    pub expect: Vec<u16>,
}

/// The previous key of the route's secret, kept for the overlap after a rotation: one
/// retry of a safe request the upstream refused with the current key.
#[derive(Debug)]
pub(crate) struct Fallback {
    pub credential: Credential,
    /// The end of the overlap; no retry starts after it.
    pub until: Instant,
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
    /// The request host this route serves (lowercase), or `None` for every host.
    pub(crate) host: Option<String>,
    pub(crate) prefix: String,
    pub(crate) kind: Kind,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) secret_name: String,
    /// How this route strips callers' keys and injects its own.
    pub(crate) credential: Credential,
    /// The previous key, during the overlap after a rotation.
    pub(crate) fallback: Option<Fallback>,
    /// How a changed key is proven on this route; `None`: it is not.
    pub(crate) proof: Option<Proof>,
    pub(crate) allow: Allow,
    /// The `allow` entries as written (for `check`).
    pub(crate) allow_text: Vec<String>,
    pub(crate) shadow_allow: Option<Allow>,
    pub(crate) max_body_bytes: u64,
    pub(crate) response_timeout: Duration,
    /// Re-batching and the update-status guard (BI presets).
    pub(crate) limits: VendorLimits,
    /// This route's request series, kept once looked up.
    pub(crate) series: series::RouteSeries,
}

/// Where a matched request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    /// The `operation` label.
    pub operation: &'static str,
    /// False only for calls that carry no key (the import status check).
    pub credential: bool,
    /// True for import upserts checked locally.
    pub validate_upsert: bool,
    /// The path to request upstream (without query).
    pub path: UpstreamPath<'a>,
}

/// The path to request upstream, kept as its two pieces — the upstream's base path (a
/// trailing `/` dropped) and the rest of the caller's — and joined only where it is
/// written, so that a request makes no string for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UpstreamPath<'a> {
    base: &'a str,
    rest: &'a str,
}

impl<'a> UpstreamPath<'a> {
    pub(crate) fn new(base: &'a str, rest: &'a str) -> UpstreamPath<'a> {
        UpstreamPath { base: base.trim_end_matches('/'), rest }
    }

    /// The pieces in order: `/` alone when both are empty.
    pub(crate) fn pieces(&self) -> [&'a str; 2] {
        if self.base.is_empty() && self.rest.is_empty() { ["/", ""] } else { [self.base, self.rest] }
    }
}

impl Route {
    /// The previous key's credential, while the overlap lasts. Read only after the
    /// upstream refused the current key.
    pub(crate) fn fallback(&self) -> Option<&Credential> {
        self.fallback.as_ref().filter(|f| Instant::now() < f.until).map(|f| &f.credential)
    }

    /// Matches the request to one of this route's operations.
    pub(crate) fn target<'a>(&'a self, method: &Method, remainder: &'a str) -> Result<Target<'a>, Refusal> {
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
        let path = UpstreamPath::new(self.upstream.base_path(), remainder);
        Ok(Target { operation, credential, validate_upsert, path })
    }

    /// The body keygate's refusals take on this route: the Import API's error shape on
    /// `rjmetrics-import` routes, so that the vendor's clients can report them.
    pub(crate) fn refusal_shape(&self) -> Shape {
        match self.kind {
            Kind::Preset { preset: Preset::Import, .. } => Shape::Import,
            _ => Shape::Keygate,
        }
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

/// `base` and `remainder` joined as one path, by [`UpstreamPath`]'s rule (for a proof's
/// path, made once when the snapshot is compiled).
pub(crate) fn join_path(base: &str, remainder: &str) -> String {
    UpstreamPath::new(base, remainder).pieces().concat()
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

/// Prefixes to route indexes, and the most segments any of them has.
#[derive(Debug, Default)]
struct Prefixes {
    /// Hashed with foldhash, not SipHash: the keys come from the config, so a caller's
    /// paths can only look them up, never make them collide, and a lookup per path
    /// segment is most of the route step (BENCHMARKS.md, round 7).
    map: HashMap<String, usize, foldhash::fast::RandomState>,
    /// A path is looked up from this many segments down: a longer candidate cannot be
    /// a prefix (`/import/v2/client/1/table/t/data` under `/import` is one lookup).
    depth: usize,
}

impl Prefixes {
    fn insert(&mut self, prefix: String, route: usize) {
        let segments = if prefix == "/" { 0 } else { prefix.bytes().filter(|&b| b == b'/').count() };
        self.depth = self.depth.max(segments);
        self.map.insert(prefix, route);
    }

    fn get(&self, prefix: &str) -> Option<&usize> {
        self.map.get(prefix)
    }

    fn values(&self) -> impl Iterator<Item = &usize> {
        self.map.values()
    }
}

/// All routes of one snapshot, indexed by host and prefix.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Host-less routes by prefix.
    by_prefix: Prefixes,
    /// For each host some route names (lowercase), its routes by prefix. A handful at
    /// most, scanned in order: a request's host is compared without being lowercased.
    hosts: Vec<(String, Prefixes)>,
}

impl RouteTable {
    /// Builds the table. Hosts and prefixes were checked by config: each (host, prefix)
    /// pair is used once.
    pub(crate) fn new(routes: Vec<Arc<Route>>) -> Self {
        let mut by_prefix = Prefixes::default();
        let mut hosts: Vec<(String, Prefixes)> = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let Some(host) = &route.host else {
                by_prefix.insert(route.prefix.clone(), i);
                continue;
            };
            let at = match hosts.iter().position(|(h, _)| h == host) {
                Some(at) => at,
                None => {
                    hosts.push((host.clone(), Prefixes::default()));
                    hosts.len() - 1
                }
            };
            hosts[at].1.insert(route.prefix.clone(), i);
        }
        RouteTable { routes, by_prefix, hosts }
    }

    /// Every route, in config order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The hosts that routes name (lowercase), in config order.
    pub(crate) fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.iter().map(|(h, _)| h.as_str())
    }

    /// The routes that name `host` (compared in any letter case).
    pub(crate) fn routes_for_host<'a>(&'a self, host: &str) -> impl Iterator<Item = &'a Arc<Route>> {
        let table = self.hosts.iter().find(|(h, _)| h.eq_ignore_ascii_case(host)).map(|(_, t)| t);
        table.into_iter().flat_map(|t| t.values()).map(|&i| &self.routes[i])
    }

    /// The route for a request to `host` (an authority as sent: `Host`, `:authority`)
    /// and `path`, and the remainder after its prefix: among the routes for that host
    /// (any letter case, port 80 or 443 ignored) the longest prefix on a segment
    /// boundary of `path`, else among host-less routes. The cost follows the path's
    /// depth, not the route count; without host routes `host` is not looked at.
    pub fn find<'p>(&self, host: Option<&str>, path: &'p str) -> Option<(&Arc<Route>, &'p str)> {
        if !self.hosts.is_empty() {
            let name = host.and_then(host_name);
            let table = name.and_then(|n| self.hosts.iter().find(|(h, _)| h.eq_ignore_ascii_case(n)));
            if let Some(found) = table.and_then(|(_, t)| longest_prefix(t, path)) {
                return Some((&self.routes[found.0], found.1));
            }
        }
        longest_prefix(&self.by_prefix, path).map(|(i, rest)| (&self.routes[i], rest))
    }
}

/// The host name of an authority (`name`, `name:80`, `name:443`, `name.`), or `None`
/// for another port or an IP literal in brackets: no host route serves those.
pub(crate) fn host_name(authority: &str) -> Option<&str> {
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if authority.starts_with('[') {
        return None;
    }
    let name = match authority.rsplit_once(':') {
        None => authority,
        Some((name, "80" | "443")) => name,
        Some(_) => return None,
    };
    Some(name.strip_suffix('.').unwrap_or(name))
}

/// The index of the longest prefix in `table` on a segment boundary of `path`, and the
/// remainder after it.
fn longest_prefix<'p>(table: &Prefixes, path: &'p str) -> Option<(usize, &'p str)> {
    // The first candidate has at most `depth` segments: it ends before the slash that
    // would begin one more.
    let mut end = slash_at(path.as_bytes(), table.depth).unwrap_or(path.len());
    loop {
        let candidate = &path[..end];
        let key = if candidate.is_empty() { "/" } else { candidate };
        if let Some(&i) = table.get(key) {
            let rest = if key == "/" { path } else { &path[end..] };
            return Some((i, rest));
        }
        if end == 0 {
            return None;
        }
        end = candidate.rfind('/').unwrap_or(0);
    }
}

/// Where the `n`th slash of `bytes` (counted from 0) is. A loop, not `memchr`: paths
/// are short, and it runs for every request.
fn slash_at(bytes: &[u8], n: usize) -> Option<usize> {
    let mut seen = 0;
    for (at, &b) in bytes.iter().enumerate() {
        if b == b'/' {
            if seen == n {
                return Some(at);
            }
            seen += 1;
        }
    }
    None
}

/// Refuses paths that could mean something else upstream (docs/presets.md, "Routing"):
/// dot segments, empty segments, encoded `/`, `\`, `.` or NUL, and anything not in
/// origin form.
pub fn check_path(path: &str) -> Result<(), Refusal> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(Refusal::InvalidPath("the path must start with /"));
    }
    // One pass over the bytes (it runs for every request): only `/`, `\` and `%`
    // need a look. A byte's refusal comes before a segment's, wherever each is, so the
    // first segment refused is kept until the last byte is seen.
    let mut segment_refused = None;
    let mut start = 1;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        match b {
            b'/' => {
                segment_refused = segment_refused.or_else(|| refuse_segment(&bytes[start..i], false));
                start = i + 1;
            }
            b'\\' => return Err(Refusal::InvalidPath("backslash in path")),
            b'%' if encodes_a_separator(bytes.get(i + 1..i + 3)) => {
                return Err(Refusal::InvalidPath("encoded separator, dot or NUL in path"));
            }
            _ => {}
        }
    }
    match segment_refused.or_else(|| refuse_segment(&bytes[start..], true)) {
        Some(refused) => Err(refused),
        None => Ok(()),
    }
}

/// Why one segment is refused: a dot segment, or an empty one anywhere but at the end
/// (a single trailing slash, as in `/import/`, is allowed).
fn refuse_segment(segment: &[u8], last: bool) -> Option<Refusal> {
    match segment {
        b"." | b".." => Some(Refusal::InvalidPath("dot segment in path")),
        b"" if !last => Some(Refusal::InvalidPath("empty segment in path")),
        _ => None,
    }
}

/// True for the two bytes after a `%` that encode `/`, `\`, `.` or NUL.
fn encodes_a_separator(pair: Option<&[u8]>) -> bool {
    let pair = pair.map(|p| [p[0].to_ascii_lowercase(), p[1].to_ascii_lowercase()]);
    matches!(pair, Some([b'2', b'f'] | [b'5', b'c'] | [b'2', b'e'] | [b'0', b'0']))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The path check as it was written first (the bytes, then the segments with
    /// `split`), to hold the one pass that replaced it to.
    fn check_path_reference(path: &str) -> Result<(), Refusal> {
        if !path.starts_with('/') {
            return Err(Refusal::InvalidPath("the path must start with /"));
        }
        let bytes = path.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\\' {
                return Err(Refusal::InvalidPath("backslash in path"));
            }
            if b == b'%' && encodes_a_separator(bytes.get(i + 1..i + 3)) {
                return Err(Refusal::InvalidPath("encoded separator, dot or NUL in path"));
            }
        }
        let mut segments = path[1..].split('/').peekable();
        while let Some(seg) = segments.next() {
            if seg == "." || seg == ".." {
                return Err(Refusal::InvalidPath("dot segment in path"));
            }
            if seg.is_empty() && segments.peek().is_some() {
                return Err(Refusal::InvalidPath("empty segment in path"));
            }
        }
        Ok(())
    }

    /// The prefix lookup as it was written first: every segment boundary of the whole
    /// path, longest first.
    fn longest_prefix_reference<'p>(table: &Prefixes, path: &'p str) -> Option<(usize, &'p str)> {
        let mut end = path.len();
        loop {
            let candidate = &path[..end];
            let key = if candidate.is_empty() { "/" } else { candidate };
            if let Some(&i) = table.get(key) {
                return Some((i, if key == "/" { path } else { &path[end..] }));
            }
            if end == 0 {
                return None;
            }
            end = candidate.rfind('/').unwrap_or(0);
        }
    }

    fn path_text() -> impl Strategy<Value = String> {
        const PIECES: [&str; 17] =
            ["/", "/", "/", ".", "..", "%", "2e", "2F", "5c", "00", "%41", "\\", "a", "b", "ab", "v2", ";"];
        prop::collection::vec(prop::sample::select(&PIECES[..]), 0..12).prop_map(|p| p.concat())
    }

    fn prefix_text() -> impl Strategy<Value = String> {
        let segments = prop::collection::vec(prop::sample::select(&["a", "b", "ab", "v2"][..]), 0..4);
        segments.prop_map(|s| if s.is_empty() { "/".to_owned() } else { format!("/{}", s.join("/")) })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// The path check refuses exactly what the first one did, with the same reason.
        #[test]
        fn the_path_check_answers_as_the_reference_does(path in path_text()) {
            prop_assert_eq!(check_path(&path), check_path_reference(&path), "{:?}", path);
        }

        /// Starting at the table's depth finds the route (and remainder) that trying
        /// every boundary of the whole path finds.
        #[test]
        fn the_prefix_lookup_finds_what_trying_every_boundary_finds(
            prefixes in prop::collection::vec(prefix_text(), 0..6),
            path in prop_oneof![path_text(), (prefix_text(), path_text()).prop_map(|(p, rest)| p + &rest)],
        ) {
            let mut table = Prefixes::default();
            for (i, prefix) in prefixes.into_iter().enumerate() {
                table.insert(prefix, i);
            }
            prop_assert_eq!(longest_prefix(&table, &path), longest_prefix_reference(&table, &path), "{:?}", path);
        }
    }

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
        let cases = [
            ("", "", "/"),
            ("", "/", "/"),
            ("/v1", "/things", "/v1/things"),
            ("/v1/", "/things", "/v1/things"),
        ];
        for (base, rest, joined) in
            cases.into_iter().chain([("/v1", "", "/v1"), ("/", "", "/"), ("//", "/x", "/x")])
        {
            assert_eq!(join_path(base, rest), joined, "{base:?} {rest:?}");
        }
    }
}
