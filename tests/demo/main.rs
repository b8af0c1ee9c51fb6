//! `keygate demo` on the built binary: the printed walkthrough runs through the gateway,
//! and a busy port is refused with a clear message.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod walkthrough;
