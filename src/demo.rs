//! `keygate demo`: the sandbox and a gateway pointed at it, on loopback, with a
//! copy-paste walkthrough.

/// `keygate demo` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Gateway port; admin on PORT+1, sandbox on PORT+2.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
}

/// Runs the demo until Ctrl-C.
pub async fn run(_args: Args) -> Result<(), String> {
    Err("the demo is not built yet".into())
}
