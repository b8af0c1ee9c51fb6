//! Logging: JSON lines (or text for humans) on stdout, with a level that follows
//! reloads. Access lines (target `keygate::access`) stay on whatever the level, unless
//! `[log] access = false`.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{LogFormat, LogSettings};

/// Changes the log level of a running process.
#[derive(Clone)]
pub struct LogHandle(reload::Handle<EnvFilter, Registry>);

fn filter(settings: &LogSettings) -> EnvFilter {
    let access = if settings.access { "info" } else { "off" };
    // Directive strings are built from validated levels, so parsing cannot fail;
    // fall back to "info" all the same rather than panic.
    EnvFilter::try_new(format!("{},keygate::access={access}", settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The JSON line format: one object per event, fields at the top level.
pub fn json_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(writer)
}

/// Installs the global subscriber. Call once, before anything logs.
pub(crate) fn init(settings: &LogSettings) -> LogHandle {
    let (filter, handle) = reload::Layer::new(filter(settings));
    let json = (settings.format == LogFormat::Json).then(|| json_layer(std::io::stdout));
    let text = (settings.format == LogFormat::Text)
        .then(|| tracing_subscriber::fmt::layer().with_ansi(false).with_writer(std::io::stdout));
    // A second init (tests driving several gateways in one process) keeps the first.
    let _ = tracing_subscriber::registry().with(filter).with(json).with(text).try_init();
    LogHandle(handle)
}

impl LogHandle {
    /// Applies a reloaded `[log]` level and access switch.
    pub(crate) fn apply(&self, settings: &LogSettings) {
        if let Err(e) = self.0.reload(filter(settings)) {
            tracing::warn!(error = %e, "could not change the log level");
        }
    }
}
