//! The address-range index behind every allow list: merged, sorted address ranges
//! with a bucket index over the span they cover, so a lookup costs a table read and a
//! search over the few ranges in one bucket, whether the list holds one CIDR or a
//! hundred thousand.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// A set of IPv4 and IPv6 networks, compiled for fast membership tests.
#[derive(Debug, Clone, Default)]
pub struct AddrSet {
    v4: Ranges<u32>,
    v6: Ranges<u128>,
}

impl AddrSet {
    /// Compiles a list of networks. Overlapping and adjacent networks are merged.
    pub fn new<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        AddrSet { v4: Ranges::new(v4), v6: Ranges::new(v6) }
    }

    /// True when `addr` (IPv4-mapped IPv6 counts as IPv4) is inside one of the networks.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr.to_canonical() {
            IpAddr::V4(a) => self.v4.contains(u32::from(a)),
            IpAddr::V6(a) => self.v6.contains(u128::from(a)),
        }
    }
}

/// An address width keygate can index.
trait Key: Copy + Ord + std::fmt::Debug {
    const BITS: u32;
    fn next(self) -> Option<Self>;
    fn wrapping_add(self, other: Self) -> Self;
    fn wrapping_sub(self, other: Self) -> Self;
    fn shr(self, shift: u32) -> Self;
    fn shl(self, shift: u32) -> Self;
    fn from_usize(n: usize) -> Self;
    /// Truncating; callers only convert values below the bucket count.
    fn to_usize(self) -> usize;
    fn leading_zeros(self) -> u32;
}

macro_rules! key {
    ($t:ty) => {
        impl Key for $t {
            const BITS: u32 = <$t>::BITS;
            fn next(self) -> Option<Self> {
                self.checked_add(1)
            }
            fn wrapping_add(self, other: Self) -> Self {
                <$t>::wrapping_add(self, other)
            }
            fn wrapping_sub(self, other: Self) -> Self {
                <$t>::wrapping_sub(self, other)
            }
            fn shr(self, shift: u32) -> Self {
                self >> shift
            }
            fn shl(self, shift: u32) -> Self {
                self << shift
            }
            fn from_usize(n: usize) -> Self {
                n as $t
            }
            fn to_usize(self) -> usize {
                self as usize
            }
            fn leading_zeros(self) -> u32 {
                <$t>::leading_zeros(self)
            }
        }
    };
}
key!(u32);
key!(u128);

/// Below this many ranges a plain binary search beats reading the bucket index.
const INDEX_THRESHOLD: usize = 16;
/// The most buckets an index gets is `1 << MAX_BUCKETS_LOG2` (about one per range below).
const MAX_BUCKETS_LOG2: u32 = 16;
/// A bucket holding more ranges than this (a crowded corner of a skewed list) is
/// binary-searched instead of scanned.
const SCAN_LIMIT: usize = 8;

/// Disjoint, sorted, inclusive ranges, plus (above [`INDEX_THRESHOLD`]) an index that
/// cuts the span from the first range's start to the last range's end into aligned
/// buckets of `1 << shift` addresses, about one bucket per range, each pointing at the
/// first range that can hold an address in it. A lookup is one shift and subtraction,
/// two index reads and a look at the one or two ranges of that bucket, whatever the list
/// size and wherever in the address space the list lives (IPv6 lists crowd into
/// 2000::/3, which a fixed top-16-bit index would squeeze into an eighth of its slots).
#[derive(Debug, Clone)]
struct Ranges<K> {
    ranges: Vec<(K, K)>,
    index: Option<Index<K>>,
}

#[derive(Debug, Clone)]
struct Index<K> {
    /// The first range's start, shifted: bucket `b` holds the addresses `a` with
    /// `(a >> shift) - first == b`.
    first: K,
    shift: u32,
    /// The number of buckets.
    buckets: K,
    /// `slots[b]`: the first range whose end is at or after bucket `b`'s start; one
    /// extra slot at the end holds the range count.
    slots: Box<[u32]>,
}

impl<K> Default for Ranges<K> {
    fn default() -> Self {
        Ranges { ranges: Vec::new(), index: None }
    }
}

impl<K: Key> Ranges<K> {
    fn new(mut raw: Vec<(K, K)>) -> Self {
        raw.sort_unstable();
        let mut ranges: Vec<(K, K)> = Vec::with_capacity(raw.len());
        for (start, end) in raw {
            if let Some(last) = ranges.last_mut() {
                // Merge when overlapping or adjacent (last.end + 1 >= start).
                let touches = match last.1.next() {
                    Some(after) => after >= start,
                    None => true,
                };
                if touches {
                    if end > last.1 {
                        last.1 = end;
                    }
                    continue;
                }
            }
            ranges.push((start, end));
        }
        ranges.shrink_to_fit();
        let index = (ranges.len() > INDEX_THRESHOLD).then(|| Index::new(&ranges));
        Ranges { ranges, index }
    }

    fn contains(&self, addr: K) -> bool {
        let candidates = match &self.index {
            Some(index) => {
                // Addresses below the first bucket wrap around to a huge bucket number.
                let bucket = addr.shr(index.shift).wrapping_sub(index.first);
                if bucket >= index.buckets {
                    return false;
                }
                let bucket = bucket.to_usize();
                let lo = index.slots[bucket] as usize;
                let hi = (index.slots[bucket + 1] as usize + 1).min(self.ranges.len());
                &self.ranges[lo..hi]
            }
            None => &self.ranges[..],
        };
        if candidates.len() <= SCAN_LIMIT {
            // The first range ending at or after `addr` is the only one that can hold it.
            for &(start, end) in candidates {
                if addr <= end {
                    return addr >= start;
                }
            }
            return false;
        }
        let after = candidates.partition_point(|&(start, _)| start <= addr);
        after > 0 && candidates[after - 1].1 >= addr
    }
}

impl<K: Key> Index<K> {
    /// Builds the index of sorted, disjoint, non-empty `ranges` in one pass.
    fn new(ranges: &[(K, K)]) -> Self {
        let base = ranges[0].0;
        let end = ranges[ranges.len() - 1].1;
        let buckets_log2 = (ranges.len().next_power_of_two().trailing_zeros()).min(MAX_BUCKETS_LOG2);
        // The smallest shift that maps the whole span to at most `2 << buckets_log2`
        // aligned buckets.
        let span_bits = K::BITS - end.wrapping_sub(base).leading_zeros();
        let shift = span_bits.saturating_sub(buckets_log2);
        let first = base.shr(shift);
        let buckets = end.shr(shift).wrapping_sub(first).to_usize() + 1;
        let mut slots = Vec::with_capacity(buckets + 1);
        let mut next = 0;
        for bucket in 0..buckets {
            let start = first.wrapping_add(K::from_usize(bucket)).shl(shift);
            while next < ranges.len() && ranges[next].1 < start {
                next += 1;
            }
            slots.push(next as u32);
        }
        slots.push(ranges.len() as u32);
        Index { first, shift, buckets: K::from_usize(buckets), slots: slots.into_boxed_slice() }
    }
}

impl AddrSet {
    /// The networks covering exactly this set (ranges split back into CIDRs).
    pub(crate) fn networks(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        for &(s, e) in &self.v4.ranges {
            for net in ipnet::Ipv4Subnets::new(Ipv4Addr::from(s), Ipv4Addr::from(e), 0) {
                out.push(IpNet::V4(net));
            }
        }
        for &(s, e) in &self.v6.ranges {
            for net in ipnet::Ipv6Subnets::new(Ipv6Addr::from(s), Ipv6Addr::from(e), 0) {
                out.push(IpNet::V6(net));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &[&str]) -> AddrSet {
        let nets: Vec<IpNet> = list.iter().map(|s| s.parse().unwrap()).collect();
        AddrSet::new(&nets)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn edges_of_networks_are_exact() {
        let s = set(&["10.1.0.0/16", "192.0.2.7/32", "2001:db8::/32", "::1/128"]);
        assert!(s.contains(ip("10.1.0.0")));
        assert!(s.contains(ip("10.1.255.255")));
        assert!(!s.contains(ip("10.0.255.255")));
        assert!(!s.contains(ip("10.2.0.0")));
        assert!(s.contains(ip("192.0.2.7")));
        assert!(!s.contains(ip("192.0.2.8")));
        assert!(s.contains(ip("2001:db8:ffff::1")));
        assert!(!s.contains(ip("2001:db9::")));
        assert!(s.contains(ip("::1")));
        assert!(!s.contains(ip("::2")));
    }

    #[test]
    fn zero_prefixes_cover_their_whole_family_only() {
        let s = set(&["0.0.0.0/0"]);
        assert!(s.contains(ip("255.255.255.255")));
        assert!(s.contains(ip("0.0.0.0")));
        assert!(!s.contains(ip("::1")));
        let s = set(&["::/0"]);
        assert!(s.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!s.contains(ip("127.0.0.1")));
    }

    #[test]
    fn ipv4_mapped_ipv6_matches_ipv4_rules() {
        let s = set(&["127.0.0.0/8"]);
        assert!(s.contains(ip("::ffff:127.0.0.1")));
        assert!(!s.contains(ip("::ffff:128.0.0.1")));
    }

    #[test]
    fn indexed_lookup_agrees_with_a_linear_scan() {
        // Enough networks to build the bucket index, spread over many buckets.
        let mut nets = Vec::new();
        let mut x: u32 = 0x1234_5678;
        for _ in 0..5000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let len = 8 + (x % 25) as u8;
            nets.push(IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(x), len).unwrap().trunc()));
        }
        let s = AddrSet::new(&nets);
        assert!(s.v4.index.is_some());
        let mut y: u32 = 99;
        for _ in 0..20_000 {
            y = y.wrapping_mul(22_695_477).wrapping_add(1);
            let a = IpAddr::V4(Ipv4Addr::from(y));
            let expected = nets.iter().any(|n| n.contains(&a));
            assert_eq!(s.contains(a), expected, "{a}");
        }
        for n in &nets {
            assert!(s.contains(n.network()) && s.contains(n.broadcast()), "{n}");
        }
    }

    #[test]
    fn indexed_ipv6_lookup_agrees_with_a_linear_scan() {
        // IPv6 lists crowd into 2000::/3; the index must still spread them out.
        let mut nets = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..3000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let hi = (0x2000u128 | (x as u128 & 0x1fff)) << 112 | ((x as u128) << 40);
            let len = 24 + (i % 41) as u8;
            nets.push(IpNet::V6(ipnet::Ipv6Net::new(Ipv6Addr::from(hi), len).unwrap().trunc()));
        }
        let s = AddrSet::new(&nets);
        assert!(s.v6.index.is_some());
        for n in &nets {
            let IpNet::V6(v6) = n else { unreachable!("only IPv6 here") };
            let below = u128::from(v6.network()).checked_sub(1).map(|a| IpAddr::V6(Ipv6Addr::from(a)));
            let above = u128::from(v6.broadcast()).checked_add(1).map(|a| IpAddr::V6(Ipv6Addr::from(a)));
            for a in [Some(n.network()), Some(n.broadcast()), below, above].into_iter().flatten() {
                assert_eq!(s.contains(a), nets.iter().any(|m| m.contains(&a)), "{a}");
            }
        }
        assert!(!s.contains(ip("::1")) && !s.contains(ip("ffff::1")) && !s.contains(ip("10.0.0.1")));
    }

    #[test]
    fn indexed_lookup_covers_both_ends_of_the_space() {
        let mut list: Vec<String> = (0..40).map(|i| format!("10.{i}.0.0/24")).collect();
        list.push("0.0.0.0/32".into());
        list.push("255.255.255.255/32".into());
        list.push("::/128".into());
        list.push("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128".into());
        list.extend((0..40).map(|i| format!("2001:db8:{:x}::/48", 2 * i)));
        let s = set(&list.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(s.v4.index.is_some() && s.v6.index.is_some());
        for yes in
            ["0.0.0.0", "255.255.255.255", "10.39.0.255", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
        {
            assert!(s.contains(ip(yes)), "{yes}");
        }
        for no in ["0.0.0.1", "255.255.255.254", "10.40.0.0", "::1", "2001:db8:1::", "2001:db8:50::"] {
            assert!(!s.contains(ip(no)), "{no}");
        }
    }

    #[test]
    fn networks_round_trip() {
        let s = set(&["10.0.0.0/24", "10.0.1.0/24", "fd00::/64"]);
        let nets: Vec<String> = s.networks().iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/23", "fd00::/64"]);
    }
}
