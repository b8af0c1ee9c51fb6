//! What operators and attackers can observe: exact metric lines, closed label sets,
//! promtool, readiness and `/config` on keygate in-process; and, on the built binary,
//! that no key appears in anything a caller or operator can see, even when a hostile
//! upstream echoes keys back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod leak_fixture;
mod leaks;
mod metrics;
