//! SIGTERM and SIGINT for long-running processes: `culm run`, `serve`, `scheduler`,
//! `sandbox`, and the soak driver in culm-tests. Orchestrators stop a pod with SIGTERM
//! and people stop a terminal with Ctrl-C; both ask for the same clean drain.
use std::sync::OnceLock;
use tokio::sync::watch;

/// Set to `true` once SIGTERM or SIGINT arrives; created by [`listen_for_shutdown`].
static SHUTDOWN: OnceLock<watch::Receiver<bool>> = OnceLock::new();

/// Starts listening for SIGTERM/SIGINT now. Called first by long-running commands, so a
/// signal that arrives during start-up (connecting, migrating) is held and answered with
/// a clean drain once the command is up, instead of the default action killing it.
pub fn listen_for_shutdown() {
    let (tx, rx) = watch::channel(false);
    if SHUTDOWN.set(rx).is_ok() {
        tokio::spawn(async move {
            os_signal().await;
            let _ = tx.send(true);
        });
    }
}

/// Waits for SIGTERM/SIGINT (received at any time since [`listen_for_shutdown`]).
pub async fn shutdown_signal() {
    listen_for_shutdown();
    if let Some(rx) = SHUTDOWN.get() {
        let _ = rx.clone().wait_for(|stop| *stop).await;
    }
}

async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
