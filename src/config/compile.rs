//! Compiles [`Inputs`] into a [`Snapshot`], collecting every problem instead of
//! stopping at the first.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use super::ctx::{Ctx, parse_net, valid_name};
use super::route;
use super::{
    AdminSettings, Inputs, LoadedSecret, LogFormat, LogSettings, Problem, Problems, Reading, ReloadSettings,
    ServerSettings, Snapshot, schema,
};
use crate::caller::{AddrSet, Callers, Group};
use crate::rotation::{self, Now, Rules, Verdicts};
use crate::routes::{Route, RouteTable};
use crate::scrub::Scrubber;
use crate::secret::{self, Secret, SecretProblem};
use crate::upstream;

/// Compiles inputs into generation `generation`, with upstream clients of its own.
/// Against a running `previous`, each secret is resolved by the rotation rules
/// ([`rotation::resolve`]): an unchanged value keeps its load time, a changed one that
/// needs a proof becomes a candidate beside the running value.
pub fn compile(inputs: &Inputs, generation: u64, previous: Option<&Snapshot>) -> Result<Snapshot, Problems> {
    compile_with(inputs, generation, previous, &upstream::Cache::default(), &Verdicts::default())
}

/// [`compile`], taking each route's upstream client from `clients`, which keeps those
/// whose upstream did not change (and their pools), and applying the proofs' `verdicts`:
/// what a running gateway's reloads do.
pub(crate) fn compile_with(
    inputs: &Inputs,
    generation: u64,
    previous: Option<&Snapshot>,
    clients: &upstream::Cache,
    verdicts: &Verdicts,
) -> Result<Snapshot, Problems> {
    // Unknown keys come first, then everything the rest of the file gets wrong.
    let mut ctx = Ctx { inputs, problems: inputs.unknown.clone(), warnings: Vec::new() };
    let f = &inputs.file;

    let server = server(&mut ctx, &f.server);
    let admin = f.admin.as_ref().map(|a| admin(&mut ctx, a));
    let log = log(&mut ctx, &f.log);
    let reload = reload(&mut ctx, &f.reload);
    let trusted: Vec<IpNet> = nets(&mut ctx, "callers", "trusted_proxies", &f.callers.trusted_proxies);
    let groups = groups(&mut ctx, &f.callers.groups);
    let loaded = secrets(&mut ctx, &f.secrets);
    let secrets = rotate(f, loaded, previous, reload.overlap, verdicts);
    let tls = match inputs.reading {
        Reading::Everything => f.server.tls.as_ref().and_then(|t| server_tls(&mut ctx, t)),
        Reading::StructureOnly => None,
    };

    let routes = routes(&mut ctx, &f.routes, &groups, &secrets, clients);
    let coordination = super::limits::coordination(&mut ctx, f.coordination.as_ref());
    let routes = RouteTable::new(routes);
    let intercept = match inputs.reading {
        Reading::Everything => f.server.intercept.as_ref().and_then(|i| intercept(&mut ctx, i, &routes)),
        Reading::StructureOnly => None,
    };

    // One scrubber over every loaded secret, whichever route uses it (an upstream can
    // echo another route's key as easily as its own), and over every value of each:
    // a candidate and a previous key travel too.
    let scrub = Scrubber::new(secrets.values().flat_map(|s| s.values()))
        .map_err(|e| ctx.problem("secrets", "", e.to_string()))
        .ok();
    let scrub = match scrub {
        Some(scrub) if ctx.problems.is_empty() => Arc::new(scrub),
        _ => return Err(Problems { file: inputs.path.clone(), list: ctx.problems }),
    };
    let groups = groups.into_iter().map(Arc::new).collect();
    Ok(Snapshot {
        generation,
        loaded_at: SystemTime::now(),
        path: inputs.path.clone(),
        server,
        admin,
        log,
        reload,
        callers: Callers { trusted_proxies: AddrSet::new(&trusted), groups },
        secrets: secrets.into_values().collect(),
        scrub,
        routes,
        coordination,
        tls,
        intercept,
        watched: inputs.named_files(),
        digest: inputs.digest,
        manifest: inputs.manifest.clone(),
        warnings: ctx.warnings,
        structure_only: inputs.reading == Reading::StructureOnly,
    })
}

/// Every route, each name and prefix used once.
fn routes(
    ctx: &mut Ctx<'_>,
    specs: &[schema::RouteSpec],
    groups: &[Group],
    secrets: &BTreeMap<String, LoadedSecret>,
    clients: &upstream::Cache,
) -> Vec<Arc<Route>> {
    let mut names = HashSet::new();
    let mut prefixes = HashSet::new();
    let mut routes = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        if let Some(route) = route::route(ctx, i, spec, groups, secrets, clients) {
            let location = format!("routes[{i}] {:?}", route.name);
            if !names.insert(route.name.clone()) {
                ctx.problem(&location, "name", format!("{:?} is used by another route", route.name));
            }
            if !prefixes.insert((route.host.clone(), route.prefix.clone())) {
                let message = match &route.host {
                    None => format!("{:?} is used by another route", route.prefix),
                    Some(host) => format!("{:?} is used by another route for host {host:?}", route.prefix),
                };
                ctx.problem(&location, "prefix", message);
            }
            routes.push(Arc::new(route));
        }
    }
    if specs.is_empty() {
        ctx.problem("", "routes", "no [[routes]] are configured");
    }
    routes
}

/// The networks of a list of CIDRs, each bad entry a problem.
fn nets(ctx: &mut Ctx<'_>, location: &str, field: &str, list: &[String]) -> Vec<IpNet> {
    list.iter().filter_map(|s| parse_net(s).map_err(|e| ctx.problem(location, field, e)).ok()).collect()
}

fn reload(ctx: &mut Ctx<'_>, r: &schema::Reload) -> ReloadSettings {
    // Zero is a choice here (keep no previous key), not a mistake.
    let overlap = match r.overlap.as_deref().map(super::parse_duration) {
        None => Duration::from_secs(600),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            ctx.problem("reload", "overlap", e);
            Duration::from_secs(600)
        }
    };
    ReloadSettings {
        poll_interval: ctx.duration("reload", "poll_interval", &r.poll_interval, Duration::from_secs(30)),
        debounce: ctx.duration("reload", "debounce", &r.debounce, Duration::from_millis(200)),
        verify_timeout: ctx.duration("reload", "verify_timeout", &r.verify_timeout, Duration::from_secs(120)),
        overlap,
    }
}

/// The most open connections `[server] max_connections` may allow (each holds a file
/// descriptor; Linux's default ceiling is 1,048,576).
const MAX_CONNECTIONS: usize = 1_000_000;
/// The largest request head `[server] max_header_bytes` may allow.
const MAX_HEADER_BYTES: usize = 1024 * 1024;
/// The most runtime threads `[server] worker_threads` may ask for.
const MAX_WORKER_THREADS: usize = 1024;

/// A `[server]` number within `range` (`default` when absent, or standing in for a bad
/// one so compiling goes on).
fn bounded(
    ctx: &mut Ctx<'_>,
    field: &str,
    value: Option<u64>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> usize {
    let Some(n) = value else { return default };
    let (min, max) = (*range.start(), *range.end());
    match usize::try_from(n) {
        Ok(n) if range.contains(&n) => n,
        Ok(n) if n < min => {
            ctx.problem("server", field, format!("{n} is below the minimum {min}"));
            default
        }
        _ => {
            ctx.problem("server", field, format!("{n} is above the maximum {max}"));
            default
        }
    }
}

fn server(ctx: &mut Ctx<'_>, s: &schema::Server) -> ServerSettings {
    let listen = s
        .listen
        .as_ref()
        .map(|l| l.addrs())
        .unwrap_or_else(|| vec!["127.0.0.1:8080".into()])
        .iter()
        .filter_map(|a| parse_addr(a).map_err(|e| ctx.problem("server", "listen", e)).ok())
        .collect::<Vec<_>>();
    if listen.is_empty() && s.listen.is_some() {
        ctx.problem("server", "listen", "needs at least one address");
    }
    let max_connections = bounded(ctx, "max_connections", s.max_connections, 10_000, 1..=MAX_CONNECTIONS);
    let max_header_bytes =
        bounded(ctx, "max_header_bytes", s.max_header_bytes, 32_768, 1024..=MAX_HEADER_BYTES);
    let worker_threads =
        s.worker_threads.map(|n| bounded(ctx, "worker_threads", Some(n), 1, 1..=MAX_WORKER_THREADS));
    ServerSettings {
        listen,
        header_timeout: ctx.duration("server", "header_timeout", &s.header_timeout, Duration::from_secs(10)),
        idle_timeout: ctx.duration("server", "idle_timeout", &s.idle_timeout, Duration::from_secs(60)),
        max_connections,
        max_header_bytes,
        shutdown_grace: ctx.duration("server", "shutdown_grace", &s.shutdown_grace, Duration::from_secs(20)),
        worker_threads,
        tls: s.tls.clone(),
    }
}

/// The bytes of a file a `[server.*]` section names, or a problem at `location`/`field`.
fn section_file<'i>(ctx: &mut Ctx<'i>, location: &str, field: &str, path: &Path) -> Option<&'i [u8]> {
    let inputs = ctx.inputs;
    match inputs.file_bytes(path) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            ctx.problems.push(Problem {
                location: location.into(),
                field: field.into(),
                message: format!("{} cannot be read: {e}", path.display()),
            });
            None
        }
    }
}

/// `[server.intercept]` for the hosts that `routes` name; a host its certificate does
/// not name, or no host at all, is a warning.
fn intercept(
    ctx: &mut Ctx<'_>,
    i: &schema::Intercept,
    routes: &RouteTable,
) -> Option<crate::tls::InterceptTls> {
    let cert = section_file(ctx, "server.intercept", "cert", &i.cert);
    let key = section_file(ctx, "server.intercept", "key", &i.key);
    let (cert, key) = (cert?, key?);
    let hosts: Vec<String> = routes.hosts().map(str::to_owned).collect();
    if hosts.is_empty() {
        ctx.warnings
            .push("[server.intercept] is set but no route names a host: every CONNECT is refused".into());
    }
    match crate::tls::intercept_tls(cert, key, hosts) {
        Ok(tls) => {
            for host in &tls.uncovered {
                ctx.warnings.push(format!(
                    "the [server.intercept] certificate does not name {host:?}: callers will refuse it for that host"
                ));
            }
            Some(tls)
        }
        Err(e) => {
            ctx.problem("server.intercept", "", e.to_string());
            None
        }
    }
}

fn server_tls(ctx: &mut Ctx<'_>, t: &schema::ServerTls) -> Option<crate::tls::ServerTls> {
    let mut read = |field: &str, path: &PathBuf| section_file(ctx, "server.tls", field, path);
    let cert = read("cert", &t.cert);
    let key = read("key", &t.key);
    let ca = match &t.client_ca {
        Some(p) => Some(read("client_ca", p)?),
        None => None,
    };
    let (cert, key) = (cert?, key?);
    match crate::tls::server_tls(cert, key, ca) {
        Ok(tls) => Some(tls),
        Err(e) => {
            ctx.problem("server.tls", "", e.to_string());
            None
        }
    }
}

/// Who may read `/metrics` and `/config` when `[admin] allow` is not given.
const LOOPBACK: [IpNet; 2] = [
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
    IpNet::new_assert(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
];

fn admin(ctx: &mut Ctx<'_>, a: &schema::Admin) -> AdminSettings {
    let listen = parse_addr(&a.listen).unwrap_or_else(|e| {
        ctx.problem("admin", "listen", e);
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    let nets: Vec<IpNet> = match &a.allow {
        None => LOOPBACK.to_vec(),
        Some(list) => nets(ctx, "admin", "allow", list),
    };
    AdminSettings { listen, allow: AddrSet::new(&nets) }
}

fn log(ctx: &mut Ctx<'_>, l: &schema::Log) -> LogSettings {
    let format = match l.format.as_deref() {
        None | Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(other) => {
            ctx.problem("log", "format", format!("{other:?} is not \"json\" or \"text\""));
            LogFormat::Json
        }
    };
    let level = l.level.clone().unwrap_or_else(|| "info".into());
    if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
        ctx.problem("log", "level", format!("{level:?} is not one of error, warn, info, debug, trace"));
    }
    LogSettings { format, level, access: l.access.unwrap_or(true) }
}

fn groups(ctx: &mut Ctx<'_>, specs: &[(String, schema::Group)]) -> Vec<Group> {
    let mut out = Vec::new();
    for (name, spec) in specs {
        let location = format!("callers.groups.{name}");
        if !valid_name(name) {
            ctx.problem(&location, "", format!("group name {name:?} must match [a-z0-9_-]+"));
        }
        let nets = nets(ctx, &location, "cidrs", &spec.cidrs);
        for id in &spec.identities {
            if id.trim().is_empty() || id.trim() != id {
                ctx.problem(&location, "identities", format!("{id:?} is empty or has surrounding spaces"));
            }
        }
        if spec.cidrs.is_empty() && spec.identities.is_empty() {
            ctx.warnings.push(format!("group {name:?} has no cidrs and no identities: it admits nobody"));
        }
        out.push(Group {
            name: name.clone(),
            cidrs: AddrSet::new(&nets),
            identities: spec.identities.iter().cloned().collect(),
        });
    }
    out
}

fn secrets(
    ctx: &mut Ctx<'_>,
    specs: &[(String, schema::SecretSpec)],
) -> std::collections::BTreeMap<String, LoadedSecret> {
    let mut out = std::collections::BTreeMap::new();
    for (i, (name, spec)) in specs.iter().enumerate() {
        let location = format!("secrets.{name}");
        let given = [spec.file.is_some(), spec.env.is_some(), spec.value.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            ctx.problem(&location, "", "needs exactly one of file, env or value");
            continue;
        }
        match load_secret(ctx, i, name, spec) {
            Ok((value, source)) => {
                if let secret::Source::File(p) = &source {
                    if secret::is_shared_readable(p) {
                        ctx.warnings.push(format!(
                            "secret file {} is readable by its group or by everyone; chmod 600 it",
                            p.display()
                        ));
                    }
                }
                let fingerprint =
                    if source == secret::Source::NotRead { String::new() } else { value.fingerprint() };
                let mut loaded = LoadedSecret::fresh(name, value, SystemTime::now());
                loaded.fingerprint = fingerprint;
                out.insert(name.clone(), loaded);
            }
            Err((field, problem)) => ctx.problem(&location, &field, problem.to_string()),
        }
    }
    out
}

/// Each secret as the rotation rules make it against the running snapshot: an
/// unchanged value keeps its load time (and its allocation), so
/// `keygate_secret_loaded_timestamp_seconds` and `/config` move only when a key rotates;
/// a changed one is a candidate when a route proves it and the secret is not
/// `verify = false`.
fn rotate(
    file: &schema::File,
    loaded: BTreeMap<String, LoadedSecret>,
    running: Option<&Snapshot>,
    overlap: Duration,
    verdicts: &Verdicts,
) -> BTreeMap<String, LoadedSecret> {
    let now = Now::current();
    let proves = |name: &str| {
        let verify = file.secrets.iter().find(|(n, _)| n == name).and_then(|(_, spec)| spec.verify);
        verify != Some(false)
            && file
                .routes
                .iter()
                .any(|r| r.secret.as_deref() == Some(name) && (r.preset.is_some() || r.verify.is_some()))
    };
    loaded
        .into_iter()
        .map(|(name, fresh)| {
            let rules = Rules { proves: proves(&name), overlap };
            let run = running.and_then(|s| s.secret(&name));
            let resolved = rotation::resolve(fresh, run, rules, verdicts, now);
            (name, resolved)
        })
        .collect()
}

/// The value of `secrets[i]` (which gives exactly one source), or the field and
/// problem that stopped it.
fn load_secret(
    ctx: &mut Ctx<'_>,
    i: usize,
    name: &str,
    spec: &schema::SecretSpec,
) -> Result<(Secret, secret::Source), (String, SecretProblem)> {
    if let Some(v) = &spec.value {
        ctx.warnings.push(format!(
            "secret {name:?} is inline in the config file; use file or env outside development"
        ));
        return Secret::parse(v).map(|s| (s, secret::Source::Inline)).map_err(|e| ("value".into(), e));
    }
    if ctx.inputs.reading == Reading::StructureOnly {
        // Not read: a stand-in that any route can carry keeps the routes compiling.
        return Ok((Secret::new(format!("not-read-{i}")), secret::Source::NotRead));
    }
    if let Some(path) = &spec.file {
        let field = format!("file ({})", path.display());
        let bytes = ctx.inputs.file_bytes(path).map_err(|e| (field.clone(), SecretProblem::Unreadable(e)))?;
        let text = std::str::from_utf8(bytes)
            .map_err(|_| (field.clone(), SecretProblem::Unreadable("not UTF-8".into())))?;
        return Secret::parse(text).map(|s| (s, secret::Source::File(path.clone()))).map_err(|e| (field, e));
    }
    let var = spec.env.as_deref().unwrap_or_default();
    match ctx.inputs.env_value(var) {
        None => Err(("env".into(), SecretProblem::EnvMissing(var.to_owned()))),
        Some(v) => {
            Secret::parse(v).map(|s| (s, secret::Source::Env(var.to_owned()))).map_err(|e| ("env".into(), e))
        }
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| format!("{text:?} is not an IP:port socket address"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const ROUTE: &str = "[secrets.k]\nvalue = \"k\"\n[[routes]]\nname = \"r\"\nprefix = \"/r\"\nsecret = \"k\"\n\
        upstream = \"http://127.0.0.1:9\"\ninject = { header = \"x-key\" }\nallow = [\"127.0.0.1\"]\n";

    fn compiled(text: &str) -> Result<Snapshot, Vec<String>> {
        let inputs =
            Inputs::parse(Path::new("keygate.toml"), text.as_bytes()).map_err(|p| vec![p.to_string()])?;
        compile(&inputs, 1, None).map_err(|p| {
            p.list.iter().map(|p| format!("{}: {}: {}", p.location, p.field, p.message)).collect()
        })
    }

    #[test]
    fn server_limits_above_their_maximum_are_problems() {
        let text = format!(
            "[server]\nmax_connections = 9223372036854775807\nmax_header_bytes = 4294967296\n\
             worker_threads = 100000\n{ROUTE}"
        );
        assert_eq!(
            compiled(&text).err().unwrap_or_default(),
            [
                "server: max_connections: 9223372036854775807 is above the maximum 1000000",
                "server: max_header_bytes: 4294967296 is above the maximum 1048576",
                "server: worker_threads: 100000 is above the maximum 1024",
            ]
        );
        let at_the_maximum = format!(
            "[server]\nmax_connections = 1000000\nmax_header_bytes = 1048576\nworker_threads = 1024\n{ROUTE}"
        );
        let server = compiled(&at_the_maximum).expect("the maxima themselves are allowed").server;
        assert_eq!(
            (server.max_connections, server.max_header_bytes, server.worker_threads),
            (1_000_000, 1_048_576, Some(1024))
        );
    }

    #[test]
    fn the_admin_listener_admits_loopback_by_default() {
        let snapshot = compiled(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n{ROUTE}")).unwrap();
        let allow = &snapshot.admin.expect("admin").allow;
        for (addr, admitted) in
            [("127.0.0.1", true), ("127.255.0.9", true), ("::1", true), ("10.0.0.1", false), ("::2", false)]
        {
            assert_eq!(allow.contains(addr.parse().unwrap()), admitted, "{addr}");
        }
    }
}
