//! Waiting for the operator's stop signal (SIGTERM or SIGINT), for `run`, `demo` and
//! `sandbox` alike.

/// Resolves on SIGTERM or SIGINT (Ctrl-C). Without handlers for those, on Ctrl-C; if
/// even that cannot be installed, at once: stopping beats running with no way to stop.
pub(crate) async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
