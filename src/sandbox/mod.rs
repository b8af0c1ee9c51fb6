//! A local stand-in for the BI import and export APIs (`keygate sandbox`).

/// Placeholder until the sandbox lands.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {}

/// Placeholder until the sandbox lands.
pub async fn run(_args: Args) -> Result<(), String> {
    Err("the sandbox is not built yet".into())
}
