//! Provisioning and teardown of one tenant.
//!
//! Apply converges every part — Kubernetes objects, Postgres, Redis,
//! Vault/OpenBao — independently, so one unavailable backend leaves the others
//! converging; each part reports its own condition. Cleanup honours the
//! deletion policy and tolerates Apply never having run.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::children;
use super::error::Error;
use super::status::{self, PartOutcome};
use crate::api::conditions::{self, READY};
use crate::api::tenant::{
    DeletionPolicy, PostgresStatus, RedisMode, RedisStatus, SecretStore, Tier, VaultStatus,
};
use crate::api::{CopilotDeployment, MetricPipeline, PartnerTenant, PartnerTenantStatus};
use crate::apply::{self, FIELD_MANAGER};
use crate::backends::postgres::PasswordPolicy;
use crate::backends::redis::AclUser;
use crate::context::Context;
use crate::credentials::{Credentials, Origin};
use crate::naming::{self, TenantNames};

/// Path of the credentials under the tenant's Vault/OpenBao prefix.
const VAULT_CREDENTIALS: &str = "credentials";

fn names_of(tenant: &PartnerTenant) -> TenantNames {
    TenantNames::new(&tenant.name_any(), tenant.spec.namespace.as_deref())
}

fn outcome(condition: &'static str, result: Result<String, Error>) -> PartOutcome {
    match result {
        Ok(message) => PartOutcome::ready(condition, message),
        Err(e) => PartOutcome::failed(condition, e.reason(), e.message(), e.is_permanent()),
    }
}

/// Converges the tenant toward its spec.
pub async fn apply(tenant: Arc<PartnerTenant>, ctx: &Context) -> Result<Action, Error> {
    if tenant.spec.suspend {
        tracing::info!("suspended; leaving provisioned state as is");
        return Ok(Action::await_change());
    }
    let names = names_of(&tenant);
    let backend = tenant.spec.postgres.backend.clone();

    let namespace = outcome(
        status::NAMESPACE_READY,
        apply_kubernetes(&tenant, &names, ctx).await,
    );
    let (credentials, origin) = load_credentials(&tenant, &names, ctx).await;
    let database = outcome(
        status::DATABASE_READY,
        apply_database(
            &backend,
            &names,
            &credentials,
            origin,
            tenant.spec.tier,
            ctx,
        )
        .await,
    );
    let cache = outcome(
        status::CACHE_READY,
        apply_cache(&tenant, &names, &credentials, origin, ctx).await,
    );
    let secrets = outcome(
        status::SECRETS_READY,
        apply_secrets(&tenant, &names, &credentials, origin, ctx).await,
    );
    let parts = [namespace, database, cache, secrets];

    let status = PartnerTenantStatus {
        observed_generation: tenant.metadata.generation,
        conditions: status::roll_up(
            tenant
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default(),
            &parts,
            tenant.metadata.generation,
        ),
        namespace: Some(names.namespace.clone()),
        postgres: Some(PostgresStatus {
            backend: backend.clone(),
            schema: names.schema.clone(),
            role: names.role.clone(),
        }),
        redis: Some(match tenant.spec.redis.mode {
            RedisMode::Shared => RedisStatus {
                mode: RedisMode::Shared,
                user: Some(names.redis_user.clone()),
                key_prefix: Some(names.redis_key_prefix.clone()),
                service: None,
            },
            RedisMode::Dedicated => RedisStatus {
                mode: RedisMode::Dedicated,
                user: None,
                key_prefix: None,
                service: Some(format!(
                    "{}.{}.svc",
                    children::DEDICATED_REDIS,
                    names.namespace
                )),
            },
        }),
        vault: stores_in_vault(&tenant).then(|| VaultStatus {
            mount: ctx.vault.kv_mount().to_string(),
            path: names.vault_path.clone(),
            policy: names.vault_policy.clone(),
            auth_role: names.vault_auth_role.clone(),
        }),
        credentials_secret: stores_in_kubernetes(&tenant)
            .then(|| naming::CREDENTIALS_SECRET.to_string()),
    };
    write_status(&tenant, status, ctx).await?;

    match parts.iter().find(|p| !p.ready) {
        None => {
            ctx.known_credentials
                .lock()
                .expect("credentials lock")
                .insert(tenant.name_any(), credentials);
            Ok(Action::requeue(ctx.settings.resync))
        }
        Some(p) if p.permanent => Err(Error::InvalidSpec(format!(
            "{}: {}",
            p.condition, p.message
        ))),
        Some(p) => Err(Error::Waiting(format!("{}: {}", p.condition, p.message))),
    }
}

fn stores_in_vault(tenant: &PartnerTenant) -> bool {
    matches!(
        tenant.spec.secrets.store,
        SecretStore::Vault | SecretStore::Both
    )
}

fn stores_in_kubernetes(tenant: &PartnerTenant) -> bool {
    matches!(
        tenant.spec.secrets.store,
        SecretStore::KubernetesSecret | SecretStore::Both
    )
}

async fn apply_one<K>(ctx: &Context, store: &Store<K>, desired: &K) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Serialize + DeserializeOwned,
{
    Ok(apply::apply_if_changed(&ctx.client, store, desired, &ctx.metrics).await?)
}

/// Deletes the tenant's objects in `store` whose names are not in `keep`.
async fn prune<K>(
    ctx: &Context,
    store: &Store<K>,
    names: &TenantNames,
    tenant: &str,
    keep: &[String],
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + DeserializeOwned,
{
    for object in store.state() {
        let ours = object.namespace().as_deref() == Some(names.namespace.as_str())
            && children::tenant_of(object.as_ref()).as_deref() == Some(tenant);
        if ours && !keep.contains(&object.name_any()) {
            apply::delete::<K>(
                &ctx.client,
                Some(&names.namespace),
                &object.name_any(),
                &ctx.metrics,
            )
            .await?;
        }
    }
    Ok(())
}

async fn apply_kubernetes(
    tenant: &PartnerTenant,
    names: &TenantNames,
    ctx: &Context,
) -> Result<String, Error> {
    let s = &ctx.stores;
    let tenant_name = tenant.name_any();
    if let Some(existing) = s.namespaces.get(&ObjectRef::new(&names.namespace))
        && children::tenant_of(existing.as_ref()).is_some_and(|owner| owner != tenant_name)
    {
        return Err(Error::InvalidSpec(format!(
            "namespace {} belongs to another tenant",
            names.namespace
        )));
    }
    apply_one(ctx, &s.namespaces, &children::namespace(tenant, names)).await?;
    apply_one(ctx, &s.quotas, &children::resource_quota(tenant, names)).await?;
    apply_one(ctx, &s.limit_ranges, &children::limit_range(tenant, names)).await?;
    let policies = children::network_policies(tenant, names, &ctx.settings.backend_ports);
    for policy in &policies {
        apply_one(ctx, &s.network_policies, policy).await?;
    }
    let keep: Vec<String> = policies.iter().map(|p| p.name_any()).collect();
    prune(ctx, &s.network_policies, names, &tenant_name, &keep).await?;
    apply_one(
        ctx,
        &s.service_accounts,
        &children::service_account(tenant, names),
    )
    .await?;
    apply_one(ctx, &s.roles, &children::role(tenant, names)).await?;
    apply_one(
        ctx,
        &s.role_bindings,
        &children::role_binding(tenant, names),
    )
    .await?;
    Ok(format!(
        "namespace {} with quota, limits, network policy and workload identity",
        names.namespace
    ))
}

/// The tenant's credentials from its store, or new ones.
async fn load_credentials(
    tenant: &PartnerTenant,
    names: &TenantNames,
    ctx: &Context,
) -> (Credentials, Origin) {
    if stores_in_vault(tenant) {
        match ctx.vault.read_secret(names, VAULT_CREDENTIALS).await {
            Ok(Some(map)) => {
                if let Some(c) = Credentials::from_map(&map) {
                    return (c, Origin::Stored);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "credential store unreadable");
                if let Some(c) = credentials_from_secret(names, ctx).or_else(|| known(tenant, ctx))
                {
                    return (c, Origin::Stored);
                }
                return (Credentials::generate(), Origin::StoreUnavailable);
            }
        }
    }
    // The cache may not show a Secret this operator has just written, and a
    // store may have lost its state: what this process last applied still holds.
    if let Some(c) = credentials_from_secret(names, ctx).or_else(|| known(tenant, ctx)) {
        return (c, Origin::Stored);
    }
    (Credentials::generate(), Origin::Generated)
}

fn known(tenant: &PartnerTenant, ctx: &Context) -> Option<Credentials> {
    ctx.known_credentials
        .lock()
        .expect("credentials lock")
        .get(&tenant.name_any())
        .cloned()
}

fn credentials_from_secret(names: &TenantNames, ctx: &Context) -> Option<Credentials> {
    let secret = ctx
        .stores
        .secrets
        .get(&ObjectRef::new(naming::CREDENTIALS_SECRET).within(&names.namespace))?;
    let map: BTreeMap<String, String> = secret
        .data
        .as_ref()?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect();
    Credentials::from_map(&map)
}

async fn apply_database(
    backend: &str,
    names: &TenantNames,
    credentials: &Credentials,
    origin: Origin,
    tier: Tier,
    ctx: &Context,
) -> Result<String, Error> {
    let policy = if origin == Origin::StoreUnavailable {
        PasswordPolicy::KeepExisting
    } else {
        PasswordPolicy::Enforce
    };
    let ran = ctx
        .postgres
        .ensure_tenant(backend, names, &credentials.postgres_password, policy, tier)
        .await?
        .statements;
    if ran > 0 {
        tracing::info!(statements = ran, "converged Postgres schema and role");
    }
    Ok(format!(
        "schema {} owned by role {} on backend {backend}",
        names.schema, names.role
    ))
}

async fn apply_cache(
    tenant: &PartnerTenant,
    names: &TenantNames,
    credentials: &Credentials,
    origin: Origin,
    ctx: &Context,
) -> Result<String, Error> {
    let tenant_name = tenant.name_any();
    let s = &ctx.stores;
    match tenant.spec.redis.mode {
        RedisMode::Shared => {
            let user = AclUser::new(names, &credentials.redis_password);
            if origin == Origin::StoreUnavailable {
                // Keep whatever password an existing user has until the store is back.
                ctx.redis.ensure_user_exists(&user).await?;
            } else {
                ctx.redis.ensure_user(&user).await?;
            }
            prune(ctx, &s.stateful_sets, names, &tenant_name, &[]).await?;
            prune(ctx, &s.services, names, &tenant_name, &[]).await?;
            Ok(format!(
                "ACL user {} confined to {}*",
                names.redis_user, names.redis_key_prefix
            ))
        }
        RedisMode::Dedicated => {
            ctx.redis.remove_user_if_present(&names.redis_user).await?;
            let password =
                BTreeMap::from([("password".to_string(), credentials.redis_password.clone())]);
            apply_one(
                ctx,
                &s.secrets,
                &children::secret(tenant, names, children::DEDICATED_REDIS_SECRET, &password),
            )
            .await?;
            apply_one(
                ctx,
                &s.services,
                &children::dedicated_redis_service(tenant, names),
            )
            .await?;
            let desired = children::dedicated_redis_statefulset(tenant, names);
            apply_one(ctx, &s.stateful_sets, &desired).await?;
            let ready = s
                .stateful_sets
                .get(&ObjectRef::from_obj(&desired))
                .and_then(|sts| sts.status.as_ref().and_then(|st| st.ready_replicas))
                .unwrap_or(0);
            if ready < 1 {
                return Err(Error::Waiting(format!(
                    "StatefulSet {} to become ready",
                    children::DEDICATED_REDIS
                )));
            }
            Ok(format!(
                "dedicated Redis {} ready",
                children::DEDICATED_REDIS
            ))
        }
    }
}

async fn apply_secrets(
    tenant: &PartnerTenant,
    names: &TenantNames,
    credentials: &Credentials,
    origin: Origin,
    ctx: &Context,
) -> Result<String, Error> {
    let connection = connection_details(tenant, names, ctx);
    let data = credentials.to_map(&connection);
    let mut stored = vec![];
    if stores_in_vault(tenant) {
        ctx.vault.ensure_policy(names).await?;
        ctx.vault.ensure_auth_role(names).await?;
        if origin != Origin::StoreUnavailable {
            ctx.vault
                .ensure_secret(names, VAULT_CREDENTIALS, &data)
                .await?;
        }
        stored.push(format!(
            "{}/{}/{VAULT_CREDENTIALS}",
            ctx.vault.kv_mount(),
            names.vault_path
        ));
    }
    if stores_in_kubernetes(tenant) {
        let secret = children::secret(tenant, names, naming::CREDENTIALS_SECRET, &data);
        apply_one(ctx, &ctx.stores.secrets, &secret).await?;
        stored.push(format!("Secret {}", naming::CREDENTIALS_SECRET));
    } else {
        let tenant_name = tenant.name_any();
        let keep = match tenant.spec.redis.mode {
            RedisMode::Dedicated => vec![children::DEDICATED_REDIS_SECRET.to_string()],
            RedisMode::Shared => vec![],
        };
        prune(ctx, &ctx.stores.secrets, names, &tenant_name, &keep).await?;
    }
    if origin == Origin::StoreUnavailable {
        return Err(Error::Waiting(
            "the credential store (Vault/OpenBao) to be reachable".into(),
        ));
    }
    Ok(format!("credentials in {}", stored.join(" and ")))
}

fn connection_details(
    tenant: &PartnerTenant,
    names: &TenantNames,
    ctx: &Context,
) -> BTreeMap<String, String> {
    let mut map = ctx
        .endpoints
        .postgres
        .get(&tenant.spec.postgres.backend)
        .cloned()
        .unwrap_or_default();
    map.insert("PGUSER".into(), names.role.clone());
    map.insert("PGSCHEMA".into(), names.schema.clone());
    match tenant.spec.redis.mode {
        RedisMode::Shared => {
            map.insert("REDIS_HOST".into(), ctx.endpoints.redis_host.clone());
            map.insert("REDIS_PORT".into(), ctx.endpoints.redis_port.to_string());
            map.insert("REDIS_USER".into(), names.redis_user.clone());
            map.insert("REDIS_KEY_PREFIX".into(), names.redis_key_prefix.clone());
        }
        RedisMode::Dedicated => {
            map.insert(
                "REDIS_HOST".into(),
                format!("{}.{}.svc", children::DEDICATED_REDIS, names.namespace),
            );
            map.insert("REDIS_PORT".into(), "6379".into());
        }
    }
    map.insert("VAULT_ADDR".into(), ctx.endpoints.vault_address.clone());
    map.insert("VAULT_ROLE".into(), names.vault_auth_role.clone());
    map.insert(
        "VAULT_PATH".into(),
        format!("{}/{}", ctx.vault.kv_mount(), names.vault_path),
    );
    map
}

/// Writes the status only when it differs, and records the Ready transition.
async fn write_status(
    tenant: &PartnerTenant,
    status: PartnerTenantStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let ready = conditions::find(&status.conditions, READY).cloned();
    ctx.metrics.set_tenant_ready(
        &tenant.name_any(),
        Some(ready.as_ref().is_some_and(|c| c.status == "True")),
    );
    if tenant.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let before = tenant
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, READY))
        .map(|c| (c.status.clone(), c.reason.clone()));
    patch_status(tenant, &status, ctx).await?;
    if let Some(ready) = ready
        && before != Some((ready.status.clone(), ready.reason.clone()))
    {
        let event = KubeEvent {
            type_: if ready.status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: ready.reason.clone(),
            note: Some(ready.message.clone()),
            action: "Provision".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &tenant.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing an Event failed");
        }
    }
    Ok(())
}

/// Server-side applies the status subresource with the operator's field manager.
async fn patch_status(
    tenant: &PartnerTenant,
    status: &PartnerTenantStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let api: Api<PartnerTenant> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "apiVersion": "partnerplane.io/v1alpha1",
        "kind": "PartnerTenant",
        "status": status,
    });
    api.patch_status(
        &tenant.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.metrics
        .api_writes
        .get_or_create(&crate::metrics::KindLabels {
            kind: "PartnerTenant/status".into(),
        })
        .inc();
    Ok(())
}

/// Tears the tenant down according to its deletion policy.
pub async fn cleanup(tenant: Arc<PartnerTenant>, ctx: &Context) -> Result<Action, Error> {
    let names = names_of(&tenant);
    let backend = tenant.spec.postgres.backend.clone();
    let policy = tenant.spec.deletion_policy;
    let result = cleanup_parts(&tenant, &names, &backend, policy, ctx).await;
    if let Err(e) = &result {
        // The object is going away; say on it why it has not gone yet.
        let mut status = tenant.status.clone().unwrap_or_default();
        conditions::upsert(
            &mut status.conditions,
            conditions::new(
                READY,
                false,
                e.reason(),
                format!("deleting: {}", e.message()),
                tenant.metadata.generation,
            ),
        );
        if tenant.status.as_ref() != Some(&status)
            && let Err(e) = patch_status(&tenant, &status, ctx).await
        {
            tracing::warn!(error = %e, "writing the deletion status failed");
        }
    }
    result?;
    ctx.metrics.set_tenant_ready(&tenant.name_any(), None);
    ctx.known_credentials
        .lock()
        .expect("credentials lock")
        .remove(&tenant.name_any());
    let event = KubeEvent {
        type_: EventType::Normal,
        reason: match policy {
            DeletionPolicy::Retain => "AccessRemoved".into(),
            DeletionPolicy::Delete => "Deleted".into(),
        },
        note: Some(match policy {
            DeletionPolicy::Retain => format!(
                "access removed; data and namespace {} kept",
                names.namespace
            ),
            DeletionPolicy::Delete => {
                "schema, role, ACL user, policy, auth role, secrets and namespace removed".into()
            }
        }),
        action: "Cleanup".into(),
        secondary: None,
    };
    let _ = ctx.recorder.publish(&event, &tenant.object_ref(&())).await;
    Ok(Action::await_change())
}

async fn cleanup_parts(
    tenant: &PartnerTenant,
    names: &TenantNames,
    backend: &str,
    policy: DeletionPolicy,
    ctx: &Context,
) -> Result<(), Error> {
    if policy == DeletionPolicy::Delete {
        wait_for_workloads(names, ctx).await?;
    }
    match policy {
        DeletionPolicy::Retain => {
            if ctx.postgres.has_backend(backend) {
                ctx.postgres.disable_tenant(backend, names).await?;
            }
            ctx.redis.remove_user_if_present(&names.redis_user).await?;
            ctx.vault.detach(names).await?;
            orphan_children(tenant, names, ctx).await?;
        }
        DeletionPolicy::Delete => {
            if ctx.postgres.has_backend(backend) {
                ctx.postgres.drop_tenant(backend, names).await?;
            }
            ctx.redis.remove_user_if_present(&names.redis_user).await?;
            ctx.redis.delete_keys(&names.redis_key_prefix).await?;
            ctx.vault.detach(names).await?;
            ctx.vault.delete_secrets(names).await?;
            if ctx
                .stores
                .namespaces
                .get(&ObjectRef::new(&names.namespace))
                .is_some_and(|ns| {
                    children::tenant_of(ns.as_ref()).as_deref() == Some(&tenant.name_any())
                })
            {
                apply::delete::<Namespace>(&ctx.client, None, &names.namespace, &ctx.metrics)
                    .await?;
            }
        }
    }
    Ok(())
}

/// With `Delete`, the namespace's pipelines and copilots go first (their own
/// teardown drops their tables), and the tenant waits until they are gone.
async fn wait_for_workloads(names: &TenantNames, ctx: &Context) -> Result<(), Error> {
    let pipelines: Api<MetricPipeline> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let copilots: Api<CopilotDeployment> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let lp = ListParams::default();
    let mut remaining = 0;
    for p in list_or_empty(pipelines.list_metadata(&lp).await)? {
        remaining += 1;
        if p.metadata.deletion_timestamp.is_none() {
            let _ = pipelines.delete(&p.name_any(), &Default::default()).await?;
        }
    }
    for c in list_or_empty(copilots.list_metadata(&lp).await)? {
        remaining += 1;
        if c.metadata.deletion_timestamp.is_none() {
            let _ = copilots.delete(&c.name_any(), &Default::default()).await?;
        }
    }
    if remaining > 0 {
        return Err(Error::Waiting(format!(
            "{remaining} MetricPipelines and CopilotDeployments in {} to be deleted",
            names.namespace
        )));
    }
    Ok(())
}

/// A list's items; a kind whose CRD is not installed has none.
fn list_or_empty<T: Clone>(
    result: Result<kube::api::ObjectList<T>, kube::Error>,
) -> Result<Vec<T>, Error> {
    match result {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(vec![]),
        Err(e) => Err(e.into()),
    }
}

/// With `Retain`, objects in the namespace lose their owner reference so
/// deleting the tenant does not garbage-collect them.
async fn orphan_children(
    tenant: &PartnerTenant,
    names: &TenantNames,
    ctx: &Context,
) -> Result<(), Error> {
    let tenant_name = tenant.name_any();
    let s = &ctx.stores;
    macro_rules! orphan_all {
        ($($store:expr),*) => {$(
            for object in $store.state() {
                if object.namespace().as_deref() == Some(names.namespace.as_str())
                    && children::tenant_of(object.as_ref()).as_deref() == Some(tenant_name.as_str())
                {
                    apply::orphan(&ctx.client, object.as_ref(), &ctx.metrics).await?;
                }
            }
        )*};
    }
    orphan_all!(
        s.quotas,
        s.limit_ranges,
        s.network_policies,
        s.service_accounts,
        s.roles,
        s.role_bindings,
        s.secrets,
        s.services,
        s.stateful_sets
    );
    Ok(())
}
