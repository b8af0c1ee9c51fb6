//! The command line (docs/configuration.md, `keygate check`; docs/operations.md): `run`,
//! `check`, and with the `sandbox` feature `demo` and `sandbox`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::App;
use crate::config::{self, Snapshot};

/// keygate: an authenticating reverse proxy that injects Magento BI (RJMetrics) API
/// keys for internal callers, so that they never hold the raw keys.
#[derive(Debug, Parser)]
#[command(name = "keygate", version, about, long_about = None)]
#[cfg_attr(
    not(feature = "sandbox"),
    command(
        after_help = "This build has no `demo` or `sandbox` command: it was built without the `sandbox` feature."
    )
)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where the config file is.
#[derive(Debug, clap::Args)]
pub(crate) struct ConfigArg {
    /// Config file [default: $KEYGATE_CONFIG, else config/keygate.toml]
    #[arg(
        short,
        long,
        env = "KEYGATE_CONFIG",
        default_value = "config/keygate.toml",
        hide_default_value = true,
        hide_env = true
    )]
    pub(crate) config: PathBuf,
}

/// `keygate check` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Check the config file's structure only: read no secret file or variable and no
    /// TLS or CA file (so their contents are not checked). For a machine without them.
    #[arg(long)]
    pub(crate) no_secrets: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Serve with the given config.
    Run(ConfigArg),
    /// Validate config and secrets and print the effective route table.
    Check(CheckArgs),
    /// Run the sandbox and a gateway pointed at it on loopback, with a walkthrough.
    #[cfg(feature = "sandbox")]
    Demo(crate::demo::Args),
    /// A local stand-in for the BI import and export APIs.
    #[cfg(feature = "sandbox")]
    Sandbox(crate::sandbox::Args),
}

/// Runs the parsed command.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(arg) => run(&arg.config),
        Command::Check(args) => check(&args.config.config, args.no_secrets),
        #[cfg(feature = "sandbox")]
        Command::Demo(args) => runtime(None)
            .and_then(|rt| rt.block_on(crate::demo::run(args)))
            .map_or_else(fail, |()| ExitCode::SUCCESS),
        #[cfg(feature = "sandbox")]
        Command::Sandbox(args) => runtime(None)
            .and_then(|rt| rt.block_on(crate::sandbox::run(args)))
            .map_or_else(fail, |()| ExitCode::SUCCESS),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("keygate: {message}");
    ExitCode::FAILURE
}

/// The runtime for `workers` threads: with one, a current-thread runtime (no work
/// stealing, no cross-thread wake-ups: the cheapest way to run a sidecar on one core);
/// otherwise the multi-thread scheduler, by default with one worker per CPU.
fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build().map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Prints every problem of a config that failed to load, then how many there were
/// followed by `after`.
fn report(path: &Path, problems: &config::Problems, after: &str) {
    eprintln!("{problems}");
    eprintln!("keygate: {} problem(s) in {}{after}", problems.list.len(), path.display());
}

fn run(path: &Path) -> ExitCode {
    // Everything is validated before any port is bound.
    let snapshot = match config::load(path, 1, None) {
        Ok(snapshot) => snapshot,
        Err(problems) => {
            report(path, &problems, "; nothing was started");
            return ExitCode::FAILURE;
        }
    };
    let log = crate::telemetry::init(&snapshot.log);
    let rt = match runtime(snapshot.server.worker_threads) {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    rt.block_on(async move {
        let app = match App::start(snapshot, Some(path.to_owned()), Some(log)).await {
            Ok(app) => app,
            Err(e) => return fail(e.to_string()),
        };
        crate::signal::stop_requested().await;
        tracing::info!("shutting down: draining connections");
        let drained = tokio::select! {
            drained = app.shutdown() => drained,
            _ = crate::signal::stop_requested() => {
                tracing::warn!("second signal: exiting at once");
                return ExitCode::FAILURE;
            }
        };
        if !drained {
            tracing::warn!("shutdown_grace ran out with requests still in flight");
        }
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

fn check(path: &Path, structure_only: bool) -> ExitCode {
    let loaded = if structure_only { config::load_structure(path) } else { config::load(path, 1, None) };
    let snapshot = match loaded {
        Ok(snapshot) => snapshot,
        Err(problems) => {
            let after =
                if structure_only { " (--no-secrets: secret, TLS and CA files were not read)" } else { "" };
            report(path, &problems, after);
            return ExitCode::FAILURE;
        }
    };
    for w in &snapshot.warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", route_table(&snapshot));
    ExitCode::SUCCESS
}

/// The effective route table: names, prefixes, upstreams, operations, allow lists and
/// secret fingerprints — never secrets.
pub(crate) fn route_table(snapshot: &Snapshot) -> String {
    let mut rows = vec![["ROUTE", "PREFIX", "UPSTREAM", "OPERATIONS", "ALLOW", "SECRET"].map(String::from)];
    for route in snapshot.routes.routes() {
        let fingerprint = snapshot
            .secrets
            .iter()
            .find(|s| s.name == route.secret_name)
            .map_or("?", |s| s.fingerprint.as_str());
        let secret = match fingerprint {
            "" => format!("{} (not read)", route.secret_name),
            fingerprint => format!("{} (sha256:{fingerprint})", route.secret_name),
        };
        rows.push([
            route.name.clone(),
            route.prefix.clone(),
            route.upstream.url().to_owned(),
            route.operation_names().join(","),
            route.allow_text.join(","),
            secret,
        ]);
    }
    let widths: Vec<usize> = (0..6).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let (routes, secrets) = (snapshot.routes.routes().len(), snapshot.secrets.len());
    let mut out = if snapshot.structure_only {
        format!(
            "{}: structure valid; {routes} route(s), {secrets} secret(s)\n\
             (--no-secrets: no secret file or variable, TLS or CA file was read, so their contents \
             are unchecked; `keygate check` without it reads them)\n",
            snapshot.path.display()
        )
    } else {
        format!("{}: valid; {routes} route(s), {secrets} secret(s)\n", snapshot.path.display())
    };
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
