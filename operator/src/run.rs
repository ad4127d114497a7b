//! The operator's main loop: connect, serve endpoints, stop cleanly on SIGTERM.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::cli::RunArgs;
use crate::http::{self, Readiness};
use crate::metrics::Metrics;

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("loading the Kubernetes client configuration (KUBECONFIG or in-cluster)")?;
    let version = client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    tracing::info!(server = %version.git_version, "connected to the Kubernetes API server");

    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::default();
    let (stop_tx, stop_rx) = watch::channel(false);

    let server = tokio::spawn(http::serve(
        args.http_addr,
        metrics,
        readiness.clone(),
        stopped(stop_rx),
    ));
    readiness.set(true);

    wait_for_signal().await?;
    tracing::info!("shutting down");
    readiness.set(false);
    let _ = stop_tx.send(true);
    server.await.context("HTTP server task")??;
    tracing::info!("stopped");
    Ok(())
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "received"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "received"),
    }
    Ok(())
}
