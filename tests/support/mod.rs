//! The one support module of the integration tests, shared by every test group
//! (`tests/<group>/main.rs` declares it with `#[path = "../support/mod.rs"] mod support;`).
//! One submodule per concern:
//!
//! - [`poll`]: `eventually`, polling with a deadline instead of sleeping.
//! - [`client`]: the HTTP test client (hyper, HTTP/1.1 and h2, kept-alive connections)
//!   and the `Reply` a caller saw; [`raw`]: byte-exact exchanges on a socket.
//! - [`upstream`]: the one recording fake upstream, with hyper handlers, the fault
//!   script, trailers and silence.
//! - [`inprocess`]: keygate started in this process, and the config builders.
//! - [`process`]: the built binary as a child process.
//! - [`metrics`]: the reader of Prometheus text.
//! - [`tls`]: certificates made at test time.
//! - [`files`]: writing files as editors and the kubelet do.
//! - [`keys`]: sentinel keys and the leak scan; [`tools`]: optional external tools;
//!   [`python`]: the vendor's Python client in a virtual environment; [`tunnel`]:
//!   `CONNECT` tunnels through keygate, as a client behind `HTTPS_PROXY` opens them;
//!   [`redis`]: a real redis-server; [`netns`]: a client that names the vendor's hosts,
//!   run in a network namespace with only loopback.

// Each test group uses a different part of this module.
#![allow(dead_code)]

pub mod client;
pub mod files;
pub mod inprocess;
pub mod keys;
pub mod metrics;
pub mod netns;
pub mod poll;
pub mod process;
pub mod python;
pub mod raw;
pub mod redis;
pub mod tls;
pub mod tools;
pub mod tunnel;
pub mod upstream;
