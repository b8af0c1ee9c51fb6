//! `keygate demo` on the built binary: every printed walkthrough step runs through the
//! gateway as printed, the gateway answers on both loopbacks, a busy port is refused
//! with a clear message, and the README's Python client lines push through the demo.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod clients;
mod walkthrough;
