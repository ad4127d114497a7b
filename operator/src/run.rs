//! Start-up and shutdown: connect, check the CRDs, build the backends, run
//! the controller and the HTTP endpoints, stop cleanly on SIGTERM.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::runtime::events::Reporter;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::backends::postgres::{Postgres, tls};
use crate::backends::redis::Redis;
use crate::backends::vault::Vault;
use crate::cli::RunArgs;
use crate::config::OperatorConfig;
use crate::context::{BackendEgress, Backoff, Context, Endpoints, Settings};
use crate::copilot::controller::context::CopilotSettings;
use crate::http::{self, Readiness};
use crate::metrics::Metrics;
use crate::pipeline::context::PipelineContext;
use crate::pipeline::webhook::WebhookClient;
use crate::recorder::Recorder;
use crate::{copilot, leader, pipeline, tenant, watches};

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // vaultrs's HTTP client uses rustls without a built-in provider; ring is the one kube uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = OperatorConfig::load(&args.config)?;
    let mut kube_config = kube::Config::infer()
        .await
        .context("loading the Kubernetes client configuration (KUBECONFIG or in-cluster)")?;
    // Lets audit logs and API server metrics tell the operator's requests
    // apart, and one replica's from another's (the Lease holder's identity).
    let identity = leader::identity();
    kube_config.headers.push((
        ::http::header::USER_AGENT,
        ::http::HeaderValue::from_str(&user_agent(&identity))
            .context("the replica's identity (POD_NAME) is not a valid header value")?,
    ));
    let client = kube::Client::try_from(kube_config)?;
    let version = client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    tracing::info!(server = %version.git_version, "connected to the Kubernetes API server");
    check_crds(&client).await?;
    let subject = tenant::secret_access::whoami(&client)
        .await
        .context("asking the API server who the operator is (SelfSubjectReview)")?;
    tracing::info!(
        ?subject,
        "identity for the Secret access bound in tenant namespaces"
    );

    let metrics = Arc::new(Metrics::new());
    let (postgres, endpoints_pg) = postgres_backends(&config, &client, metrics.clone()).await?;
    // Pipelines refresh on pools of their own: a slow refresh never holds a
    // connection a tenant reconcile waits for. Copilots too (an index build).
    let (pipeline_postgres, _) = postgres_backends(&config, &client, metrics.clone()).await?;
    let (copilot_postgres, _) = postgres_backends(&config, &client, metrics.clone()).await?;
    let redis_url = config.redis.url_secret.read(&client).await?;
    let redis_ca = read_optional(&config.redis.ca_secret, &client).await?;
    let redis = Redis::connect_with_ca(
        &redis_url,
        redis_ca.as_deref(),
        config.backend_timeout,
        metrics.clone(),
    )
    .await?;
    let vault_token = config.vault.token_secret.read(&client).await?;
    let vault_ca = read_optional(&config.vault.ca_secret, &client).await?;
    let vault = Vault::with_ca(
        &config.vault,
        &vault_token,
        vault_ca.as_deref(),
        config.backend_timeout,
        metrics.clone(),
    )?;
    let (redis_host, redis_port) = host_port(&redis_url, 6379)?;
    let workflows = crate::workflows::Engine::from_config(
        config.n8n.as_ref(),
        &client,
        config.backend_timeout,
        args.workflow_templates.as_deref(),
        metrics.clone(),
    )
    .await?;

    let endpoints = Endpoints {
        postgres: endpoints_pg,
        redis_host,
        redis_port,
        vault_address: config.vault.address.clone(),
    };
    let backend_egress = BackendEgress::derive(&endpoints, &args.backend_cidrs);
    if !backend_egress.unreachable.is_empty() {
        tracing::warn!(
            backends = ?backend_egress.unreachable,
            "backends named by host name are unreachable from tenant workloads; set --backend-cidrs"
        );
    }

    tenant::shard::serve(args.tenant_selector.as_deref());
    let (stores, streams) = watches::build(&client, args.tenant_selector.as_deref());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "partnerplane.io/operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    // One task awaits the caches (kube's ready signal wakes a single waiter)
    // and tells everyone else through a watch channel.
    let (caches_tx, caches_ready) = watch::channel(false);
    let readiness = Readiness::default();
    let ready_flag = readiness.clone();
    let waiting_stores = stores.clone();
    tokio::spawn(async move {
        if waiting_stores.wait_until_ready().await.is_ok() {
            tracing::info!("caches synced; ready");
            let _ = caches_tx.send(true);
            ready_flag.set(true);
        }
    });
    let ctx = Arc::new(Context {
        client: client.clone(),
        postgres,
        redis,
        vault,
        endpoints,
        stores,
        settings: Settings {
            resync: Duration::from_secs(args.resync_seconds),
            backend_egress,
            protected_namespaces: protected_namespaces(&config),
            secret_access: tenant::secret_access::SecretAccess {
                cluster_role: config.tenant_secrets_cluster_role.clone(),
                subject,
            },
        },
        metrics: metrics.clone(),
        recorder,
        backoff: Backoff::default(),
        workflows: workflows.clone(),
        caches_ready,
    });

    // Opened now rather than by the first tenant's reconcile.
    let warming = ctx.clone();
    tokio::spawn(async move { warming.postgres.warm().await });

    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(http::serve(
        args.http_addr,
        metrics.clone(),
        readiness.clone(),
        stopped(stop_rx.clone()),
    ));
    // With leader election, a standby keeps its caches warm and serves its
    // endpoints, and starts reconciling only once it holds the Lease.
    let election = args.leader_elect.then(|| {
        let lease = leader::lease_name(&args.leader_election_id, args.tenant_selector.as_deref());
        let identity = identity.clone();
        tracing::info!(%lease, %identity, namespace = %args.leader_election_namespace, "campaigning for leadership");
        leader::Election::start(
            client.clone(),
            &args.leader_election_namespace,
            &lease,
            identity,
            leader::Timings::default(),
        )
    });
    let leads = match election.as_ref() {
        None => true,
        Some(e) => {
            // A standby is ready: it serves its endpoints and can take over.
            // Its watches start with its controllers, once it leads.
            readiness.set(true);
            let mut leading = e.leading();
            let leads = tokio::select! {
                led = leading.wait_for(|l| *l) => { led.context("the leader election stopped")?; true }
                signal = wait_for_signal() => { signal?; false }
            };
            // Ready again once the caches have synced.
            readiness.set(false);
            leads
        }
    };
    if !leads {
        tracing::info!("shutting down before leading");
        readiness.set(false);
        let _ = stop_tx.send(true);
        if let Some(election) = election {
            election.release().await;
        }
        server.await.context("HTTP server task")??;
        return Ok(());
    }
    if election.is_some() {
        tracing::info!("leading: reconciling");
    }
    metrics.leader.set(1);
    let (deliveries, delivery_wakes) = crate::pipeline::dispatch::DeliveryWake::new();
    let pipeline_ctx = Arc::new(PipelineContext {
        shared: ctx.clone(),
        postgres: pipeline_postgres,
        webhooks: WebhookClient::new(&config.webhooks, &client).await?,
        workflows: workflows.clone(),
        backoff: Backoff::default(),
        turns: crate::pipeline::fairness::TenantTurns::new(args.pipeline_concurrency),
        delivery_turns: crate::pipeline::fairness::TenantTurns::new(args.pipeline_concurrency),
        deliveries,
    });
    let pipelines = tokio::spawn(pipeline::run(
        pipeline_ctx,
        delivery_wakes,
        args.tenant_selector.clone(),
        args.pipeline_concurrency,
        stopped(stop_rx.clone()),
    ));
    let copilots = tokio::spawn(copilot::controller::run(
        ctx.clone(),
        copilot_postgres,
        CopilotSettings {
            image: args.copilot_image.clone(),
            vault_auth_mount: config.vault.auth_mount.clone(),
            backend_cidrs: args.backend_cidrs.clone(),
        },
        args.tenant_selector.clone(),
        args.copilot_concurrency,
        stopped(stop_rx.clone()),
    ));
    let controller = tokio::spawn(tenant::run(
        ctx,
        streams,
        args.tenant_selector.clone(),
        args.concurrency,
        stopped(stop_rx),
    ));
    let lost = async {
        match election.as_ref() {
            Some(e) => {
                let _ = e.leading().wait_for(|l| !*l).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let lost_leadership = tokio::select! {
        signal = wait_for_signal() => { signal?; false }
        () = lost => true,
    };
    readiness.set(false);
    let _ = stop_tx.send(true);
    if lost_leadership {
        // Another replica may lead soon: stop writing now, mid-reconcile
        // (every reconcile converges from any partial state).
        tracing::error!("lost the leader Lease; stopping every controller at once");
        controller.abort();
        pipelines.abort();
        copilots.abort();
        metrics.leader.set(0);
    } else {
        tracing::info!("shutting down");
        let running = [
            controller.abort_handle(),
            pipelines.abort_handle(),
            copilots.abort_handle(),
        ];
        let controllers = futures::future::join3(controller, pipelines, copilots);
        if tokio::time::timeout(Duration::from_secs(20), controllers)
            .await
            .is_err()
        {
            // Stopped, not detached: the Lease is handed over next, and a
            // standby must not start while these still write.
            tracing::warn!("reconciles still running after 20s; stopping them");
            running.iter().for_each(tokio::task::AbortHandle::abort);
        }
        metrics.leader.set(0);
    }
    if let Some(election) = election {
        // Hands the Lease over at once, so a standby need not wait it out.
        election.release().await;
    }
    server.await.context("HTTP server task")??;
    if lost_leadership {
        anyhow::bail!("lost the leader Lease");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The operator's own namespace (`POD_NAMESPACE` in a cluster) and every
/// namespace holding one of its admin Secrets: no tenant may claim them.
fn protected_namespaces(config: &OperatorConfig) -> Vec<String> {
    let mut namespaces: Vec<String> = config
        .postgres
        .iter()
        .flat_map(|p| [Some(&p.dsn_secret), p.ca_secret.as_ref()])
        .chain([
            Some(&config.redis.url_secret),
            config.redis.ca_secret.as_ref(),
            Some(&config.vault.token_secret),
            config.vault.ca_secret.as_ref(),
            config.n8n.as_ref().map(|n| &n.api_key_secret),
            config.n8n.as_ref().and_then(|n| n.ca_secret.as_ref()),
        ])
        .flatten()
        .map(|secret| secret.namespace.clone())
        .chain(std::env::var("POD_NAMESPACE").ok())
        .collect();
    namespaces.sort();
    namespaces.dedup();
    namespaces
}

/// Fails fast with a clear message when the CRDs are missing.
async fn check_crds(client: &kube::Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crate::api::crd::all() {
        let name = crd.metadata.name.unwrap_or_default();
        crds.get(&name).await.with_context(|| {
            format!("CRD {name} is not installed: kubectl apply --server-side -f crds/")
        })?;
    }
    Ok(())
}

async fn postgres_backends(
    config: &OperatorConfig,
    client: &kube::Client,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Postgres, BTreeMap<String, BTreeMap<String, String>>)> {
    let mut backends = vec![];
    let mut endpoints = BTreeMap::new();
    for backend in &config.postgres {
        let dsn = backend.dsn_secret.read(client).await?;
        let ca = read_optional(&backend.ca_secret, client).await?;
        let invalid = || {
            format!(
                "Postgres backend {} has an invalid connection string",
                backend.name
            )
        };
        let split = tls::split_dsn(&dsn).with_context(invalid)?;
        let parsed: tokio_postgres::Config = split.dsn.parse().with_context(invalid)?;
        endpoints.insert(backend.name.clone(), tenant_endpoint(&parsed, split.mode));
        backends.push((backend.clone(), dsn, ca));
    }
    Ok((
        Postgres::with_ca(&backends, config.backend_timeout, metrics)?,
        endpoints,
    ))
}

/// What a tenant is told about its Postgres backend. `PGSSLMODE` is given
/// when the operator's own connection demands TLS, so tenants are held to
/// at least as much (the CA for `verify-*` is theirs to mount).
fn tenant_endpoint(
    parsed: &tokio_postgres::Config,
    mode: tls::SslMode,
) -> BTreeMap<String, String> {
    let host = match parsed.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_string(),
    };
    let port = parsed.get_ports().first().copied().unwrap_or(5432);
    let mut endpoint = BTreeMap::from([
        ("PGHOST".to_string(), host),
        ("PGPORT".to_string(), port.to_string()),
        (
            "PGDATABASE".to_string(),
            parsed.get_dbname().unwrap_or("postgres").to_string(),
        ),
    ]);
    if matches!(
        mode,
        tls::SslMode::Require | tls::SslMode::VerifyCa | tls::SslMode::VerifyFull
    ) {
        endpoint.insert("PGSSLMODE".to_string(), mode.as_str().to_string());
    }
    endpoint
}

/// A PEM bundle from an optional Secret key, read once at start.
async fn read_optional(
    secret: &Option<crate::config::SecretKeyRef>,
    client: &kube::Client,
) -> anyhow::Result<Option<String>> {
    match secret {
        Some(secret) => Ok(Some(secret.read(client).await?)),
        None => Ok(None),
    }
}

fn host_port(url: &str, default_port: u16) -> anyhow::Result<(String, u16)> {
    let info =
        redis::IntoConnectionInfo::into_connection_info(url).context("the Redis URL is invalid")?;
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => Ok((host.clone(), *port)),
        _ => Ok(("localhost".into(), default_port)),
    }
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

/// `partnerplane/<version> (<identity>)`.
fn user_agent(identity: &str) -> String {
    format!("partnerplane/{} ({identity})", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(dsn: &str) -> BTreeMap<String, String> {
        let split = tls::split_dsn(dsn).unwrap();
        tenant_endpoint(&split.dsn.parse().unwrap(), split.mode)
    }

    #[test]
    fn tenants_are_told_the_tls_mode_only_when_the_backend_demands_tls() {
        let plain = endpoint("postgres://u:p@db.example:6432/app");
        assert_eq!(plain["PGHOST"], "db.example");
        assert_eq!(plain["PGPORT"], "6432");
        assert_eq!(plain["PGDATABASE"], "app");
        assert!(!plain.contains_key("PGSSLMODE"));
        assert!(!endpoint("host=db sslmode=prefer").contains_key("PGSSLMODE"));
        assert_eq!(
            endpoint("postgres://u@db/app?sslmode=verify-full&sslrootcert=/ca.pem")["PGSSLMODE"],
            "verify-full"
        );
        assert_eq!(endpoint("host=db sslmode=require")["PGSSLMODE"], "require");
    }
}
