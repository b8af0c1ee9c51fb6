//! Hostile inputs against keygate (the reliability catalogue in `docs/reliability.md`):
//! smuggling and malformed framing on raw sockets, slow and greedy clients, every way
//! the upstream can fail (the fault-injecting fake upstream), and the built binary
//! under signals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod http1;
mod lifecycle;
mod limits;
mod parsing;
mod upstream;
