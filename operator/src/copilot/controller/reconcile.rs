//! One copilot's reconcile: find the tenant that owns its namespace; make
//! its tables, index and retrieval function in the tenant schema as the
//! tenant's role and expire old audit rows; check that the model key exists
//! (never copying it); apply its ConfigMap, Service, NetworkPolicy,
//! PodDisruptionBudget and — only with the key in place — its Deployment
//! and autoscaler; then report what the Deployment shows.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::IsolationLevel;

use super::context::CopilotContext;
use super::ddl::{self, Desired};
use super::error::Error;
use super::network::{Destination, Reach};
use super::objects::{self, Platform, TenantView};
use super::owner::owner_of;
use super::status::{self as cstatus, AVAILABLE, INDEX_READY, MODEL_KEY_READY, READY_MESSAGE};
use crate::api::PartnerTenant;
use crate::api::conditions::{self, READY, RECONCILING};
use crate::api::copilot::{CopilotDeployment, CopilotDeploymentStatus};
use crate::apply::FIELD_MANAGER;
use crate::copilot::names::CopilotNames;
use crate::copilot::server_config::{DatabaseCredentials, ModelKey, PORT, ServerConfig};
use crate::key_ref;
use crate::naming::TenantNames;
use crate::pipeline::owner::{Owner, TenantDatabase};
use crate::rollup::{self, PartOutcome};

/// A DDL statement or retention batch that takes longer is cancelled by Postgres.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(300);
/// How soon a copilot waiting on its tenant looks again (the tenant's own
/// changes also wake it).
const TENANT_WAIT: Duration = Duration::from_secs(15);
/// How soon a missing model key is looked for again: the operator caches no
/// Secrets and OpenBao sends no events, so adding the key is seen this way.
const MODEL_KEY_WAIT: Duration = Duration::from_secs(20);
/// How soon the rest of the expired audit rows go.
const RETENTION_BACKLOG_WAIT: Duration = Duration::from_secs(5);
/// How soon an unavailable Deployment is looked at again (its own changes
/// also wake the copilot).
const AVAILABILITY_WAIT: Duration = Duration::from_secs(30);

/// Converges the copilot toward its spec.
pub async fn apply(copilot: Arc<CopilotDeployment>, ctx: &CopilotContext) -> Result<Action, Error> {
    let previous = copilot.status.clone().unwrap_or_default();
    record_intent(&copilot, &previous, ctx).await?;
    let (owner, tenant) = owner_of(&copilot, ctx, false).await?;
    let (db, tenant) = match (owner, tenant) {
        (Owner::Tenant(db), Some(tenant)) => (db, tenant),
        (Owner::NotATenantNamespace(message), _) => {
            return settle(&copilot, ctx, Error::NoTenant(message)).await;
        }
        (Owner::TenantNotReady(message), _) => {
            return settle(&copilot, ctx, Error::TenantNotReady(message)).await;
        }
        (Owner::Tenant(db), None) => {
            let message = format!("PartnerTenant {} is gone", db.tenant);
            return settle(&copilot, ctx, Error::TenantNotReady(message)).await;
        }
    };
    let names = names_of(&copilot);
    let view = tenant_view(&tenant, &db);
    let config = match server_config(&copilot, &db, &view, &names, ctx) {
        Ok(config) => config,
        Err(e) => return settle(&copilot, ctx, e).await,
    };
    let desired = Desired::new(&config, names, &copilot.spec.knowledge.index.hnsw);
    let tables = match ensure_tables(&copilot, &db, &desired, ctx).await {
        Ok(tables) => tables,
        Err(e) => return settle(&copilot, ctx, e).await,
    };
    let index = &copilot.spec.knowledge.index;
    let index_part = PartOutcome::ready(
        INDEX_READY,
        format!(
            "{} with an HNSW index ({}, m={}, ef_construction={}) of {}-dimensional embeddings; audit log {}",
            desired.knowledge_table(),
            ddl::operator_class(index.distance),
            index.hnsw.m,
            index.hnsw.ef_construction,
            index.dimensions,
            desired.audit_table(),
        ),
    );
    let key_part = match check_model_key(&copilot, &tenant, &view, ctx).await {
        Ok(part) => part,
        Err(e) => return settle(&copilot, ctx, e).await,
    };
    let key_ready = key_part.ready;
    let rollout = match apply_objects(&copilot, &db, &view, &config, key_ready, ctx).await {
        Ok(rollout) => rollout,
        Err(e) => return settle(&copilot, ctx, e).await,
    };
    let rolled_out = rollout.as_ref().map(|(hash, _)| hash.clone());
    let generation = copilot.metadata.generation;
    // What the apply returned is newer than the cache, which may still hold
    // the Deployment before the change and read as settled.
    let deployment = match rollout {
        Some((_, applied)) => Some(applied),
        None => ctx
            .stores
            .deployments
            .get(
                &ObjectRef::new(&objects::object_name(&copilot.name_any()))
                    .within(&copilot.namespace().unwrap_or_default()),
            )
            .map(|d| d.as_ref().clone()),
    };
    let wanted = objects::min_replicas(&copilot);
    let (available_part, available) = cstatus::availability(deployment.as_ref(), wanted);
    let desired_replicas = cstatus::desired_replicas(deployment.as_ref(), wanted);
    let waiting_for_pods = !available_part.ready;
    let parts = [index_part, key_part.clone(), available_part];
    let conditions = rollup::roll_up(&previous.conditions, &parts, generation, READY_MESSAGE);
    let status = CopilotDeploymentStatus {
        observed_generation: generation,
        conditions,
        endpoint: Some(objects::endpoint(
            &copilot.name_any(),
            &copilot.namespace().unwrap_or_default(),
        )),
        index_table: Some(desired.knowledge_table()),
        audit_table: Some(desired.audit_table()),
        desired_replicas: Some(desired_replicas),
        available_replicas: Some(available),
    };
    publish_transitions(
        &copilot,
        &previous,
        &status,
        &tables,
        rolled_out.as_deref(),
        ctx,
    )
    .await;
    write_status(&copilot, &previous, status, ctx).await?;
    let wait = if !key_ready {
        MODEL_KEY_WAIT
    } else if tables.backlog {
        RETENTION_BACKLOG_WAIT
    } else if waiting_for_pods {
        AVAILABILITY_WAIT
    } else {
        ctx.shared.settings.resync
    };
    Ok(Action::requeue(crate::context::jittered(
        wait,
        &mut rand::rng(),
    )))
}

pub(super) fn names_of(copilot: &CopilotDeployment) -> CopilotNames {
    CopilotNames::new(
        &copilot.namespace().unwrap_or_default(),
        &copilot.name_any(),
    )
}

fn key_of(copilot: &CopilotDeployment) -> String {
    copilot.uid().unwrap_or_else(|| {
        format!(
            "{}/{}",
            copilot.namespace().unwrap_or_default(),
            copilot.name_any()
        )
    })
}

/// Writes `Reconciling=True` for a generation not yet observed, before any
/// work on it, so that kstatus never reads an unprocessed change as Current.
async fn record_intent(
    copilot: &CopilotDeployment,
    previous: &CopilotDeploymentStatus,
    ctx: &CopilotContext,
) -> Result<(), Error> {
    let generation = copilot.metadata.generation;
    if previous.observed_generation == generation {
        return Ok(());
    }
    let mut intent = previous.clone();
    intent.observed_generation = generation;
    conditions::upsert(
        &mut intent.conditions,
        conditions::new(
            RECONCILING,
            true,
            "Progressing",
            format!("rolling out generation {}", generation.unwrap_or_default()),
            generation,
        ),
    );
    patch_status(copilot, &intent, ctx).await
}

/// Opens a transaction in a session of the tenant's own login
/// ([`TenantDatabase::session`]): nothing in it can reach another tenant's
/// schema.
pub(super) async fn as_tenant(
    conn: &mut tokio_postgres::Client,
) -> Result<tokio_postgres::Transaction<'_>, Error> {
    let tx = conn
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await?;
    // The login's own settings, which the tenant may change, must not
    // change how values are printed and read back.
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}; SET LOCAL DateStyle = 'ISO, MDY'; \
         SET LOCAL IntervalStyle = 'postgres'; SET LOCAL TimeZone = 'UTC'",
        STATEMENT_TIMEOUT.as_millis()
    ))
    .await?;
    Ok(tx)
}

/// What the tables step did.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    /// DDL statements run.
    pub statements: usize,
    /// Audit rows deleted by retention.
    pub expired: u64,
    /// Expired rows remain for another batch.
    pub backlog: bool,
}

async fn ensure_tables(
    copilot: &CopilotDeployment,
    db: &TenantDatabase,
    desired: &Desired,
    ctx: &CopilotContext,
) -> Result<Tables, Error> {
    let mut conn = db.session(&ctx.shared, &ctx.postgres).await?;
    let tx = as_tenant(&mut conn).await?;
    let observed = ddl::read(&tx, desired).await?;
    let statements =
        ddl::plan(desired, &observed).map_err(|ddl::Refusal(m)| Error::DimensionsChanged(m))?;
    for statement in &statements {
        tx.batch_execute(statement).await?;
    }
    let key = key_of(copilot);
    let generation = copilot.metadata.generation;
    let mut done = Tables {
        statements: statements.len(),
        ..Tables::default()
    };
    let retention_due = ctx.retention.due(&key, generation);
    if retention_due {
        let days = copilot.spec.guardrails.audit.retention_days;
        done.expired = ddl::expire_audit(&tx, desired, days).await?;
        done.backlog = done.expired >= ddl::RETENTION_BATCH as u64;
    }
    tx.commit().await?;
    if done.statements > 0 || done.expired > 0 {
        let writes = done.statements as u64 + u64::from(done.expired > 0);
        ctx.shared.metrics.backend_wrote("postgres", writes);
    }
    if retention_due {
        ctx.retention.ran(&key, generation, done.backlog);
    }
    Ok(done)
}

fn tenant_view(tenant: &PartnerTenant, db: &TenantDatabase) -> TenantView {
    let status = tenant.status.clone().unwrap_or_default();
    TenantView {
        schema: db.schema.clone(),
        branding: tenant.spec.branding.clone(),
        allow_from_namespaces: tenant
            .spec
            .network
            .allow_from_namespaces
            .iter()
            .map(|n| n.0.clone())
            .collect(),
        credentials_secret: status.credentials_secret,
        vault: status.vault.map(|v| (v.mount, v.path, v.auth_role)),
    }
}

fn platform(ctx: &CopilotContext) -> Platform {
    Platform {
        image: ctx.settings.image.clone(),
        vault_address: ctx.shared.endpoints.vault_address.clone(),
        vault_auth_mount: ctx.settings.vault_auth_mount.clone(),
    }
}

/// Whether the model key exists where the spec says. It is read to know
/// that, and dropped at once: never copied, logged or reported.
async fn check_model_key(
    copilot: &CopilotDeployment,
    tenant: &PartnerTenant,
    view: &TenantView,
    ctx: &CopilotContext,
) -> Result<PartOutcome, Error> {
    let namespace = copilot.namespace().unwrap_or_default();
    let names = TenantNames::new(&tenant.name_any(), tenant.spec.namespace.as_deref());
    let reference = &copilot.spec.model.api_key;
    let place = key_ref::describe(&ctx.shared, &namespace, &names, reference);
    if reference.vault.is_some() && view.vault.is_none() {
        return Ok(PartOutcome::failed(
            MODEL_KEY_READY,
            "NoOpenBaoPath",
            format!(
                "spec.model.apiKey.vault names {place}, but PartnerTenant {} keeps no OpenBao path \
                 (its spec.secrets.store is KubernetesSecret), so the copilot could not log in to read it; \
                 keep the key in a Secret of the namespace instead",
                tenant.name_any()
            ),
            false,
        ));
    }
    match key_ref::read(&ctx.shared, &namespace, &names, reference).await {
        Ok(Some(_)) => Ok(PartOutcome::ready(
            MODEL_KEY_READY,
            format!("the model key is in {place}"),
        )),
        Ok(None) => Ok(PartOutcome::failed(
            MODEL_KEY_READY,
            "ModelKeyMissing",
            format!(
                "no model key in {place}: put it there (it is never copied); \
                 no Deployment is rolled out until it exists, and it is looked for every {}s",
                MODEL_KEY_WAIT.as_secs()
            ),
            false,
        )),
        Err(source) => Err(Error::ModelKeyUnreadable {
            what: place,
            source,
        }),
    }
}

/// Where the pods must be able to connect.
fn reach(
    copilot: &CopilotDeployment,
    db: &TenantDatabase,
    view: &TenantView,
    key: &ModelKey,
    credentials: &DatabaseCredentials,
    ctx: &CopilotContext,
) -> Reach {
    let mut backends = vec![];
    if let Some(pg) = ctx.shared.endpoints.postgres.get(&db.backend)
        && let Some(host) = pg.get("PGHOST")
    {
        backends.push(Destination {
            host: host.clone(),
            port: pg
                .get("PGPORT")
                .and_then(|p| p.parse().ok())
                .unwrap_or(5432),
        });
    }
    let reads_vault =
        matches!(key, ModelKey::Vault(_)) || matches!(credentials, DatabaseCredentials::Vault(_));
    if reads_vault && let Some(vault) = Destination::from_url(&ctx.shared.endpoints.vault_address) {
        backends.push(vault);
    }
    Reach {
        backends,
        backend_cidrs: ctx.settings.backend_cidrs.clone(),
        model: Destination::from_url(&copilot.spec.model.endpoint),
        allow_from_namespaces: view.allow_from_namespaces.clone(),
        port: PORT,
    }
}

/// The server's configuration: the tenant's schema, branding and
/// credentials, the copilot's sources and guardrails, and the result
/// tables of the namespace's MetricPipelines.
fn server_config(
    copilot: &CopilotDeployment,
    db: &TenantDatabase,
    view: &TenantView,
    names: &CopilotNames,
    ctx: &CopilotContext,
) -> Result<ServerConfig, Error> {
    let platform = platform(ctx);
    let Some(credentials) = objects::database_credentials(view, &platform) else {
        return Err(Error::TenantNotReady(format!(
            "PartnerTenant {} records no credentials Secret or OpenBao path yet",
            db.tenant
        )));
    };
    // Without an OpenBao path an OpenBao key cannot be read: the model key
    // check says so, and nothing is rolled out.
    let key = objects::model_key(copilot, view, &platform).unwrap_or(ModelKey::Env);
    let namespace = copilot.namespace().unwrap_or_default();
    let result_tables: Vec<String> = ctx
        .stores
        .pipelines
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .filter_map(|p| p.status.as_ref()?.result_table.clone())
        .collect();
    Ok(objects::server_config(
        copilot,
        names,
        view,
        key,
        credentials,
        &result_tables,
    ))
}

/// Applies the copilot's objects; returns the config hash when the
/// Deployment was written.
async fn apply_objects(
    copilot: &CopilotDeployment,
    db: &TenantDatabase,
    view: &TenantView,
    config: &ServerConfig,
    key_ready: bool,
    ctx: &CopilotContext,
) -> Result<Option<(String, Deployment)>, Error> {
    let platform = platform(ctx);
    let s = &ctx.stores;
    let namespace = copilot.namespace().unwrap_or_default();
    let config_map = objects::config_map(copilot, config);
    let hash = objects::config_hash(&config_map);
    ensure(ctx, &s.config_maps, &config_map, copilot).await?;
    ensure(ctx, &s.services, &objects::service(copilot), copilot).await?;
    let reach = reach(
        copilot,
        db,
        view,
        &config.model.key,
        &config.database.credentials,
        ctx,
    );
    ensure(
        ctx,
        &s.network_policies,
        &objects::network_policy(copilot, &reach),
        copilot,
    )
    .await?;
    ensure(
        ctx,
        &s.disruption_budgets,
        &objects::pod_disruption_budget(copilot),
        copilot,
    )
    .await?;
    if !key_ready {
        // Nothing rolls out without its key: a Deployment already there
        // keeps what it runs.
        return Ok(None);
    }
    let deployment = objects::deployment(copilot, config, view, &platform, &hash);
    let rolled = ensure_deployment(ctx, &deployment, copilot).await?;
    match objects::autoscaler(copilot) {
        Some(hpa) => {
            ensure(ctx, &s.autoscalers, &hpa, copilot).await?;
        }
        None => {
            let name = objects::object_name(&copilot.name_any());
            if s.autoscalers
                .get(&ObjectRef::new(&name).within(&namespace))
                .is_some()
            {
                crate::apply::delete::<HorizontalPodAutoscaler>(
                    &ctx.shared.client,
                    Some(&namespace),
                    &name,
                    &ctx.shared.metrics,
                )
                .await?;
            }
        }
    }
    Ok(rolled.map(|applied| (hash, applied)))
}

/// Whether `object` is the copilot's: a controller reference to a
/// CopilotDeployment of its name (an earlier one of the name included,
/// whose objects the garbage collector has not taken yet).
fn owned_by<K: Resource>(object: &K, copilot: &CopilotDeployment) -> bool {
    object.owner_references().iter().any(|o| {
        o.kind == "CopilotDeployment"
            && o.api_version.starts_with("partnerplane.io/")
            && o.name == copilot.name_any()
    })
}

fn conflict<K: Resource<DynamicType = ()>>(object: &K) -> Error {
    Error::NameConflict(format!(
        "{} {} exists and is not this copilot's; the operator does not take over objects it did not make: \
         rename or remove it",
        K::kind(&()),
        object.name_any()
    ))
}

/// Refuses an object of the desired name that belongs to someone else,
/// looking it up live when the cache (which holds only labelled objects)
/// does not have it.
async fn check_ownership<K>(
    ctx: &CopilotContext,
    store: &Store<K>,
    desired: &K,
    copilot: &CopilotDeployment,
) -> Result<Option<Arc<K>>, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let cached = store.get(&ObjectRef::from_obj(desired));
    let live = match cached {
        Some(object) => Some(object),
        None => Api::<K>::namespaced(
            ctx.shared.client.clone(),
            &desired.namespace().unwrap_or_default(),
        )
        .get_opt(&desired.name_any())
        .await?
        .map(Arc::new),
    };
    match live {
        Some(object) if !owned_by(object.as_ref(), copilot) => Err(conflict(object.as_ref())),
        other => Ok(other),
    }
}

/// Server-side applies `desired` unless the cache shows it already is as
/// desired (additions by others inside it are undone, see `apply`).
async fn ensure<K>(
    ctx: &CopilotContext,
    store: &Store<K>,
    desired: &K,
    copilot: &CopilotDeployment,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    check_ownership(ctx, store, desired, copilot).await?;
    Ok(
        crate::apply::apply_if_changed(&ctx.shared.client, store, desired, &ctx.shared.metrics)
            .await?,
    )
}

/// The Deployment, applied unless the cache shows every field the operator
/// sets as desired; the object the API server returned when it was applied.
/// The Deployment controller records its revision in the object's own
/// annotations, so additions by others are not policed here.
async fn ensure_deployment(
    ctx: &CopilotContext,
    desired: &Deployment,
    copilot: &CopilotDeployment,
) -> Result<Option<Deployment>, Error> {
    let live = check_ownership(ctx, &ctx.stores.deployments, desired, copilot).await?;
    let desired_json = serde_json::to_value(desired).map_err(kube::Error::SerdeError)?;
    if let Some(live) = live {
        let live_json = serde_json::to_value(live.as_ref()).map_err(kube::Error::SerdeError)?;
        if crate::apply::is_subset(&desired_json, &live_json) {
            return Ok(None);
        }
    }
    let applied = Api::<Deployment>::namespaced(
        ctx.shared.client.clone(),
        &desired.namespace().unwrap_or_default(),
    )
    .patch(
        &desired.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired_json),
    )
    .await?;
    crate::apply::count_write::<Deployment>(&ctx.shared.metrics);
    Ok(Some(applied))
}

/// Events for what changed: tables brought to the spec, a rollout, the
/// model key going missing, the copilot becoming ready.
async fn publish_transitions(
    copilot: &CopilotDeployment,
    previous: &CopilotDeploymentStatus,
    status: &CopilotDeploymentStatus,
    tables: &Tables,
    rolled_out: Option<&str>,
    ctx: &CopilotContext,
) {
    if tables.statements > 0 {
        publish(
            copilot,
            ctx,
            EventType::Normal,
            "IndexUpdated",
            "Reconcile",
            format!(
                "{} DDL statement(s) brought {} and its index, audit and approvals tables and retrieval function to the spec",
                tables.statements,
                status.index_table.clone().unwrap_or_default()
            ),
        )
        .await;
    }
    if tables.expired > 0 {
        publish(
            copilot,
            ctx,
            EventType::Normal,
            "AuditExpired",
            "Retention",
            format!(
                "{} audit record(s) older than {} day(s) deleted{}",
                tables.expired,
                copilot.spec.guardrails.audit.retention_days,
                if tables.backlog { "; more follow" } else { "" }
            ),
        )
        .await;
    }
    if let Some(hash) = rolled_out {
        publish(
            copilot,
            ctx,
            EventType::Normal,
            "RolledOut",
            "Deploy",
            format!(
                "Deployment {} applied with configuration {}",
                objects::object_name(&copilot.name_any()),
                &hash[..12.min(hash.len())]
            ),
        )
        .await;
    }
    let was = |type_: &str| conditions::find(&previous.conditions, type_).cloned();
    let now = |type_: &str| conditions::find(&status.conditions, type_).cloned();
    if let Some(key) = now(MODEL_KEY_READY)
        && key.status == "False"
        && was(MODEL_KEY_READY).map(|c| (c.status, c.reason))
            != Some((key.status.clone(), key.reason.clone()))
    {
        publish(
            copilot,
            ctx,
            EventType::Warning,
            &key.reason,
            "Reconcile",
            key.message,
        )
        .await;
    }
    if let Some(ready) = now(READY)
        && ready.status == "True"
        && was(READY).map(|c| c.status).as_deref() != Some("True")
    {
        publish(
            copilot,
            ctx,
            EventType::Normal,
            "Ready",
            "Reconcile",
            format!("serving at {}", status.endpoint.clone().unwrap_or_default()),
        )
        .await;
    }
    if let Some(available) = now(AVAILABLE)
        && available.status == "False"
        && was(AVAILABLE).map(|c| c.status).as_deref() == Some("True")
    {
        publish(
            copilot,
            ctx,
            EventType::Warning,
            "Unavailable",
            "Reconcile",
            available.message,
        )
        .await;
    }
}

/// Records a failure in status (and an Event when it is new), then returns
/// what the controller does next: transient failures retry with backoff,
/// permanent ones wait for a change.
async fn settle(
    copilot: &CopilotDeployment,
    ctx: &CopilotContext,
    error: Error,
) -> Result<Action, Error> {
    let previous = copilot.status.clone().unwrap_or_default();
    let generation = copilot.metadata.generation;
    let part = match &error {
        Error::ModelKeyUnreadable { .. } => MODEL_KEY_READY,
        Error::Kubernetes(_) | Error::NameConflict(_) => AVAILABLE,
        _ => INDEX_READY,
    };
    let parts = [PartOutcome::failed(
        part,
        error.reason(),
        error.message(),
        error.is_permanent(),
    )];
    let conditions = rollup::roll_up(&previous.conditions, &parts, generation, READY_MESSAGE);
    let status = CopilotDeploymentStatus {
        observed_generation: generation,
        conditions,
        ..previous.clone()
    };
    let was = conditions::find(&previous.conditions, READY).map(|c| c.reason.clone());
    if was.as_deref() != Some(error.reason()) {
        publish(
            copilot,
            ctx,
            EventType::Warning,
            error.reason(),
            "Reconcile",
            error.message(),
        )
        .await;
    }
    write_status(copilot, &previous, status, ctx).await?;
    match error {
        Error::TenantNotReady(_) => Ok(Action::requeue(TENANT_WAIT)),
        e if e.is_permanent() => Ok(Action::await_change()),
        e => Err(e),
    }
}

async fn write_status(
    copilot: &CopilotDeployment,
    previous: &CopilotDeploymentStatus,
    status: CopilotDeploymentStatus,
    ctx: &CopilotContext,
) -> Result<(), Error> {
    if &status == previous {
        return Ok(());
    }
    patch_status(copilot, &status, ctx).await
}

/// Server-side applies the status subresource with the operator's field manager.
async fn patch_status(
    copilot: &CopilotDeployment,
    status: &CopilotDeploymentStatus,
    ctx: &CopilotContext,
) -> Result<(), Error> {
    crate::resource_status::apply_status(&ctx.shared.client, &ctx.shared.metrics, copilot, status)
        .await?;
    Ok(())
}

pub(super) async fn publish(
    copilot: &CopilotDeployment,
    ctx: &CopilotContext,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    crate::resource_status::publish(&ctx.shared.recorder, copilot, type_, reason, action, note)
        .await;
}
