//! TLS on the gateway listener: mTLS identities, refused client certificates, the
//! serving certificate rotating on disk, and the access log of a TLS caller.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod inbound;
