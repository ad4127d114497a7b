//! `partnerplane copilot`: the server of one CopilotDeployment. It reads
//! the [`ServerConfig`] the controller wrote, takes the tenant's database
//! credentials and the model key from the environment or OpenBao, and
//! serves the copilot's API (see [`api`]) with `/healthz`, `/readyz` and
//! `/metrics` on one port.
//!
//! It only ever connects as the tenant, and creates nothing: the tables
//! and the retrieve function are the controller's ([`ddl::schema_ddl`]).

pub mod api;
pub mod chunk;
pub mod classify;
pub mod confidence;
pub mod db;
pub mod ddl;
pub mod metrics;
pub mod model;
pub mod secrets;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

use crate::copilot::server_config::{self, ServerConfig};
use crate::telemetry::LogFormat;
use api::App;

/// Settings of a copilot server.
#[derive(Debug, Clone, clap::Args)]
pub struct CopilotArgs {
    /// The server configuration (JSON) the controller writes into the copilot's ConfigMap.
    #[arg(long, env = "PARTNERPLANE_COPILOT_CONFIG", default_value = server_config::CONFIG_PATH)]
    pub config: PathBuf,

    /// Address serving the API, /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "PARTNERPLANE_COPILOT_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: SocketAddr,

    /// Log output format.
    #[arg(long, env = "PARTNERPLANE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Log filter in `RUST_LOG` syntax.
    #[arg(
        long,
        env = "PARTNERPLANE_LOG",
        default_value = "info,rustify=off,vaultrs=off"
    )]
    pub log_filter: String,

    /// Seconds a model call may take.
    #[arg(long, env = "PARTNERPLANE_COPILOT_MODEL_TIMEOUT", default_value_t = 60)]
    pub model_timeout_seconds: u64,

    /// Seconds connecting to the database or to OpenBao may take.
    #[arg(
        long,
        env = "PARTNERPLANE_COPILOT_BACKEND_TIMEOUT",
        default_value_t = 5
    )]
    pub backend_timeout_seconds: u64,

    /// Most connections to the tenant database.
    #[arg(long, env = "PARTNERPLANE_COPILOT_DB_CONNECTIONS", default_value_t = 4)]
    pub db_connections: usize,

    /// The ServiceAccount token logging in to OpenBao (a projected token for
    /// the audience of the tenant's Kubernetes-auth role).
    #[arg(
        long,
        env = "PARTNERPLANE_COPILOT_SERVICE_ACCOUNT_TOKEN",
        default_value = secrets::SERVICE_ACCOUNT_TOKEN
    )]
    pub service_account_token: PathBuf,
}

/// Reads and checks the server configuration.
pub fn load_config(path: &std::path::Path) -> anyhow::Result<ServerConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the copilot configuration {}", path.display()))?;
    let config: ServerConfig = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a copilot configuration", path.display()))?;
    check_config(&config)?;
    Ok(config)
}

fn check_config(config: &ServerConfig) -> anyhow::Result<()> {
    let db = &config.database;
    anyhow::ensure!(
        (1..=2000).contains(&db.dimensions),
        "database.dimensions must be 1 to 2000, not {}",
        db.dimensions
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&config.guardrails.min_confidence),
        "guardrails.minConfidence must be 0 to 1"
    );
    anyhow::ensure!(
        config.model.endpoint.starts_with("http://")
            || config.model.endpoint.starts_with("https://"),
        "model.endpoint must be an http:// or https:// URL"
    );
    for (what, name) in [
        ("schema", &db.schema),
        ("knowledgeTable", &db.knowledge_table),
        ("retrieveFunction", &db.retrieve_function),
        ("auditTable", &db.audit_table),
        ("approvalsTable", &db.approvals_table),
    ] {
        anyhow::ensure!(
            !name.is_empty() && name.len() <= crate::naming::PG_IDENTIFIER_MAX,
            "database.{what} must be 1 to 63 bytes"
        );
    }
    Ok(())
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/sources/{source}/documents", post(api::ingest))
        .route("/v1/ask", post(api::ask))
        .route("/v1/approvals", get(api::list_approvals))
        .route("/v1/approvals/{id}/{decision}", post(api::decide))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            api::json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "no such endpoint", "outcome": "not_found"}),
            )
        })
        .with_state(app)
}

async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    match app.db.ping().await {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable")
        }
    }
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
}

async fn shutdown() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; stop the process with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "received"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "received"),
    }
}

/// Runs the copilot server until SIGTERM or SIGINT.
pub async fn run(args: CopilotArgs) -> anyhow::Result<()> {
    // HTTP clients here use rustls without a built-in provider; ring, as the operator.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = load_config(&args.config)?;
    let backend_timeout = Duration::from_secs(args.backend_timeout_seconds.max(1));
    let secrets = secrets::resolve(&config, &args.service_account_token, backend_timeout).await?;
    let db = db::Db::new(
        &config,
        &secrets.database,
        args.db_connections.max(1),
        backend_timeout,
    )?;
    let model = model::ModelClient::new(
        &config.model.endpoint,
        &config.model.name,
        secrets.model_key,
        config.database.dimensions as usize,
        Duration::from_secs(args.model_timeout_seconds.max(1)),
    )?;
    let app = Arc::new(App {
        metrics: metrics::CopilotMetrics::new(&config.copilot),
        config,
        db,
        model,
    });
    match app.db.pending().await {
        Ok(n) => app.metrics.set_pending(n),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "the tenant database is not reachable yet")
        }
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        copilot = %app.config.copilot,
        model = %app.config.model.name,
        "serving the copilot API, /healthz, /readyz and /metrics"
    );
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_is_checked() {
        let dir = std::env::temp_dir().join(format!("copilot-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("copilot.json");
        let mut config = json!({
            "copilot": "ns/c", "role": "PartnerOperations", "branding": {},
            "model": {"endpoint": "http://m/v1", "name": "m", "key": "env"},
            "database": {"schema": "s", "knowledgeTable": "k", "retrieveFunction": "r",
                "auditTable": "a", "approvalsTable": "p", "dimensions": 3,
                "distance": "Cosine", "credentials": {"vault": {"address": "http://bao:8200",
                "authMount": "kubernetes", "authRole": "r", "kvMount": "kv",
                "path": "tenants/x/credentials", "field": "PGPASSWORD"}}},
            "approvedSources": [{"name": "playbooks", "kind": "Playbooks"}],
            "guardrails": {"humanApprovalRequired": ["Credits"], "minConfidence": 0.5, "auditEnabled": true}
        });
        std::fs::write(&path, config.to_string()).unwrap();
        let loaded = load_config(&path).unwrap();
        assert_eq!(loaded.database.dimensions, 3);
        config["database"]["dimensions"] = json!(0);
        std::fs::write(&path, config.to_string()).unwrap();
        assert!(
            load_config(&path)
                .unwrap_err()
                .to_string()
                .contains("dimensions")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
