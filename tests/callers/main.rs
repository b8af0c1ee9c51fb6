//! Who the caller is: keygate in-process, called from different loopback source
//! addresses (and a network namespace when the machine allows one), with groups, CIDR
//! edges, IPv4-mapped peers, trusted-proxy chains, shadow mode and the admin allow list.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod cidrs;
mod sources;
