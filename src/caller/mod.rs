//! Who is calling: the caller's address (TCP peer, or `X-Forwarded-For` behind trusted
//! proxies), its mTLS identities, its group, and the allow lists that admit it. Every
//! list of networks compiles into an [`AddrSet`] ([`addr_set`]).

mod addr_set;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderMap;
use ipnet::IpNet;

use crate::conn::ConnInfo;

pub use addr_set::AddrSet;

/// A named group of callers from `[callers.groups.NAME]`.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub name: String,
    pub cidrs: AddrSet,
    pub identities: HashSet<String>,
}

impl Group {
    fn admits(&self, caller: &Caller) -> bool {
        caller.addr.is_some_and(|a| self.cidrs.contains(a))
            || caller.identities.iter().any(|id| self.identities.contains(id))
    }
}

/// The caller-identification settings of one snapshot.
#[derive(Debug, Clone, Default)]
pub(crate) struct Callers {
    pub trusted_proxies: AddrSet,
    /// In config order: the first group that admits a caller names it.
    pub groups: Vec<Arc<Group>>,
}

impl Callers {
    /// Works out who is calling from the TCP peer and, behind a trusted proxy, from
    /// `X-Forwarded-For`. `addr` is `None` when a forwarded entry cannot be parsed.
    pub(crate) fn identify(&self, peer: IpAddr, headers: &HeaderMap, identities: Arc<[String]>) -> Caller {
        let addr = forwarded_caller(peer.to_canonical(), headers, &self.trusted_proxies);
        self.identified(addr, identities)
    }

    /// Who sent a request that came on `conn` with `headers`. Inside a tunnel, the
    /// caller its `CONNECT` was admitted for: no header of the requests inside is read.
    pub(crate) fn of(&self, conn: &ConnInfo, headers: &HeaderMap) -> Caller {
        match conn.tunnel_caller {
            Some(tunnel) => self.identified(tunnel.addr, conn.identities.clone()),
            None => self.identify(conn.peer.ip(), headers, conn.identities.clone()),
        }
    }

    /// The caller at an address already worked out.
    fn identified(&self, addr: Option<IpAddr>, identities: Arc<[String]>) -> Caller {
        let mut caller = Caller { addr, identities, group: None };
        caller.group = self.groups.iter().find(|g| g.admits(&caller)).cloned();
        caller
    }
}

/// Walks `X-Forwarded-For` from the right, skipping trusted hops
/// (docs/configuration.md, "How the caller is identified").
fn forwarded_caller(peer: IpAddr, headers: &HeaderMap, trusted: &AddrSet) -> Option<IpAddr> {
    if !trusted.contains(peer) {
        return Some(peer);
    }
    let mut entries = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let text = value.to_str().ok()?;
        for entry in text.split(',') {
            entries.push(parse_forwarded_entry(entry.trim())?);
        }
    }
    if entries.is_empty() {
        return Some(peer);
    }
    entries.iter().rev().find(|a| !trusted.contains(**a)).or(entries.first()).copied()
}

fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    entry.parse::<SocketAddr>().ok().map(|s| s.ip().to_canonical())
}

/// One caller, as keygate sees it.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The caller's address; `None` when it could not be worked out.
    pub addr: Option<IpAddr>,
    /// SAN URIs and DNS names of the caller's verified client certificate.
    pub identities: Arc<[String]>,
    /// The first group that admits the caller.
    pub group: Option<Arc<Group>>,
}

impl Caller {
    /// The `caller` label: the group's name, else `-`.
    pub(crate) fn group_name(&self) -> &str {
        self.group.as_ref().map_or("-", |g| g.name.as_str())
    }
}

/// A route's compiled `allow` (or `shadow_allow`) list.
#[derive(Debug, Clone, Default)]
pub(crate) struct Allow {
    pub cidrs: AddrSet,
    pub identities: HashSet<String>,
}

impl Allow {
    /// Compiles literal networks plus the members of the named groups.
    pub(crate) fn new(nets: &[IpNet], groups: &[&Group]) -> Self {
        let mut all: Vec<IpNet> = nets.to_vec();
        let mut identities = HashSet::new();
        let mut group_sets = Vec::new();
        for group in groups {
            identities.extend(group.identities.iter().cloned());
            group_sets.push(group.cidrs.clone());
        }
        // Groups are already compiled; re-expanding their ranges keeps one lookup per list.
        for set in &group_sets {
            all.extend(set.networks());
        }
        Allow { cidrs: AddrSet::new(&all), identities }
    }

    /// True when the caller's address or one of its identities is admitted.
    pub(crate) fn permits(&self, caller: &Caller) -> bool {
        caller.addr.is_some_and(|a| self.cidrs.contains(a))
            || caller.identities.iter().any(|id| self.identities.contains(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn set(list: &[&str]) -> AddrSet {
        let nets: Vec<IpNet> = list.iter().map(|s| s.parse().unwrap()).collect();
        AddrSet::new(&nets)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_forwarded_for_is_ignored() {
        let trusted = set(&["10.9.0.0/16"]);
        let got = forwarded_caller(ip("127.0.0.5"), &xff(&["10.1.1.1"]), &trusted);
        assert_eq!(got, Some(ip("127.0.0.5")));
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let trusted = set(&["10.9.0.0/16"]);
        let h = xff(&["6.6.6.6, 10.1.1.1", "10.9.0.3"]);
        assert_eq!(forwarded_caller(ip("10.9.0.1"), &h, &trusted), Some(ip("10.1.1.1")));
    }

    #[test]
    fn trusted_peer_without_header_is_the_caller() {
        let trusted = set(&["10.9.0.0/16"]);
        assert_eq!(forwarded_caller(ip("10.9.0.1"), &HeaderMap::new(), &trusted), Some(ip("10.9.0.1")));
    }

    #[test]
    fn all_trusted_chain_gives_the_leftmost() {
        let trusted = set(&["10.9.0.0/16"]);
        let h = xff(&["10.9.1.1, 10.9.2.2"]);
        assert_eq!(forwarded_caller(ip("10.9.0.1"), &h, &trusted), Some(ip("10.9.1.1")));
    }

    #[test]
    fn malformed_entry_makes_the_caller_unknown() {
        let trusted = set(&["10.9.0.0/16"]);
        for bad in ["10.1.1.1, garbage", "", "10.1.1.1,,10.9.0.2", "unknown"] {
            assert_eq!(forwarded_caller(ip("10.9.0.1"), &xff(&[bad]), &trusted), None, "{bad:?}");
        }
    }

    #[test]
    fn forwarded_entries_with_ports_and_mapped_addresses_parse() {
        let trusted = set(&["10.9.0.0/16"]);
        let h = xff(&["[::ffff:10.1.1.1]:443"]);
        assert_eq!(forwarded_caller(ip("10.9.0.1"), &h, &trusted), Some(ip("10.1.1.1")));
        let h = xff(&["10.1.1.2:8080"]);
        assert_eq!(forwarded_caller(ip("10.9.0.1"), &h, &trusted), Some(ip("10.1.1.2")));
    }

    #[test]
    fn first_matching_group_names_the_caller() {
        let g1 =
            Arc::new(Group { name: "etl".into(), cidrs: set(&["10.1.0.0/16"]), identities: HashSet::new() });
        let g2 =
            Arc::new(Group { name: "wide".into(), cidrs: set(&["10.0.0.0/8"]), identities: HashSet::new() });
        let callers = Callers { trusted_proxies: AddrSet::default(), groups: vec![g1, g2] };
        let c = callers.identify(ip("10.1.2.3"), &HeaderMap::new(), Arc::from(vec![]));
        assert_eq!(c.group_name(), "etl");
        let c = callers.identify(ip("10.2.2.3"), &HeaderMap::new(), Arc::from(vec![]));
        assert_eq!(c.group_name(), "wide");
        let c = callers.identify(ip("11.2.2.3"), &HeaderMap::new(), Arc::from(vec![]));
        assert_eq!(c.group_name(), "-");
    }

    #[test]
    fn allow_admits_by_cidr_or_identity() {
        let g = Group {
            name: "svc".into(),
            cidrs: set(&["10.5.0.0/16"]),
            identities: ["spiffe://x/etl".to_string()].into_iter().collect(),
        };
        let allow = Allow::new(&["192.0.2.0/24".parse().unwrap()], &[&g]);
        let caller = |addr: &str, ids: &[&str]| Caller {
            addr: Some(ip(addr)),
            identities: ids.iter().map(|s| s.to_string()).collect::<Vec<_>>().into(),
            group: None,
        };
        assert!(allow.permits(&caller("192.0.2.9", &[])));
        assert!(allow.permits(&caller("10.5.1.1", &[])));
        assert!(allow.permits(&caller("8.8.8.8", &["spiffe://x/etl"])));
        assert!(!allow.permits(&caller("8.8.8.8", &["spiffe://x/other"])));
        let unknown = Caller { addr: None, identities: Arc::from(vec![]), group: None };
        assert!(!allow.permits(&unknown));
    }
}
