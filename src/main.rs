//! The `keygate` binary: parse the command line and hand over to the library.

use clap::Parser;

/// jemalloc rather than glibc's malloc: per request, a fifth less CPU in user space
/// (BENCHMARKS.md, round 7). Its options are built in (`.cargo/config.toml`).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    keygate::cli::main(keygate::cli::Cli::parse())
}
