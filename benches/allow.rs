//! Allow-list cost against list size: lookups at 1, 100, 10k and 100k CIDRs (half IPv4,
//! half IPv6), and compiling 100k CIDRs. The addresses looked up are ones that match the
//! list's *last* entry and ones that match nothing, so neither gets an early exit.
//!
//! `cargo bench --bench allow`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use keygate::caller::AddrSet;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic and good enough to spread prefixes.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `n` networks, alternating IPv4 /16–/32 and IPv6 /32–/64 inside 2000::/3.
fn networks(n: usize) -> Vec<IpNet> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|i| {
            let r = rng.next();
            if i % 2 == 0 {
                let len = 16 + (r % 17) as u8;
                IpNet::V4(Ipv4Net::new(Ipv4Addr::from(r as u32), len).expect("len ≤ 32").trunc())
            } else {
                let hi = (0x2000u128 | (r as u128 & 0x1fff)) << 112 | ((rng.next() as u128) << 48);
                let len = 32 + (r % 33) as u8;
                IpNet::V6(Ipv6Net::new(Ipv6Addr::from(hi), len).expect("len ≤ 128").trunc())
            }
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("allow_lookup");
    for n in [1usize, 100, 10_000, 100_000] {
        let nets = networks(n);
        let set = AddrSet::new(&nets);
        // The last entry's network address (a hit), and addresses matching nothing.
        let last = nets.last().expect("n ≥ 1").network();
        let miss_v4 = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 77));
        let miss_v6: IpAddr = "3fff:ffff::1".parse().expect("literal");
        assert!(set.contains(last));
        let probes = [last, miss_v4, miss_v6];
        group.bench_with_input(BenchmarkId::from_parameter(n), &probes, |b, probes| {
            b.iter(|| {
                let mut hits = 0;
                for p in probes {
                    hits += black_box(&set).contains(black_box(*p)) as u32;
                }
                hits
            })
        });
    }
    group.finish();

    let nets = networks(100_000);
    c.bench_function("allow_compile_100k", |b| b.iter(|| AddrSet::new(black_box(&nets))));
}

criterion_group!(benches, lookups);
criterion_main!(benches);
