//! Big bodies through keygate with bounded memory: 256 MiB each way through keygate
//! in-process (the RSS of this process is measured) and through the built binary (its
//! RSS is measured), a slow reader, and running out of file descriptors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod binary;
mod in_process;

/// Held by every test that measures memory while it moves hundreds of MiB: one at a
/// time, so no other transfer in this process (or competing for the CPU) shares the
/// measurement.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
