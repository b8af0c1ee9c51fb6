//! The `keygate` binary: parse the command line and hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    keygate::cli::main(keygate::cli::Cli::parse())
}
