//! Teardown of one tenant, following [`teardown::plan`].
//!
//! When the tenant goes because its CRD is being deleted (an uninstall, a
//! `kubectl delete -k`), no backend is touched at all: the finalizer is
//! released with a Warning Event, and applying the tenant again adopts what
//! it had. Otherwise cleanup touches only the backends the tenant used,
//! honours the deletion policy and says exactly what it did.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{CustomResourceExt, ResourceExt};

use super::error::Error;
use super::ownership::{self, Claim};
use super::reconcile::{claim_namespace, names_of, patch_namespace, patch_status, prune, publish};
use super::secret_access;
use super::teardown::{self, Backend, Step, Used};
use crate::api::conditions::{self, READY};
use crate::api::tenant::DeletionPolicy;
use crate::api::{CopilotDeployment, MetricPipeline, PartnerTenant};
use crate::apply;
use crate::context::Context;
use crate::naming::TenantNames;

/// Tears the tenant down according to its deletion policy.
pub async fn cleanup(tenant: Arc<PartnerTenant>, ctx: &Context) -> Result<Action, Error> {
    let names = names_of(&tenant);
    if crd_is_going(ctx).await? {
        return release_for_crd_deletion(&tenant, &names, ctx).await;
    }
    let result = cleanup_parts(&tenant, &names, ctx).await;
    match result {
        Ok(done) => {
            ctx.metrics.set_tenant_ready(&tenant.name_any(), None);
            let (reason, note) = match tenant.spec.deletion_policy {
                DeletionPolicy::Retain => ("AccessRemoved", "access removed"),
                DeletionPolicy::Delete => ("Deleted", "deleted"),
            };
            let note = if done.is_empty() {
                format!("{note}; nothing outside Kubernetes to clean up")
            } else {
                format!("{note}: {}", done.join("; "))
            };
            publish(&tenant, ctx, EventType::Normal, reason, "Cleanup", note).await;
            Ok(Action::await_change())
        }
        Err(e) => {
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
                && let Err(write) = patch_status(&tenant, &status, ctx).await
            {
                tracing::warn!(error = %write, "writing the deletion status failed");
            }
            Err(e)
        }
    }
}

/// Whether the PartnerTenant CRD itself is being deleted (or is gone).
async fn crd_is_going(ctx: &Context) -> Result<bool, Error> {
    let name = PartnerTenant::crd_name();
    let crd = Api::<CustomResourceDefinition>::all(ctx.client.clone())
        .get_opt(name)
        .await?;
    Ok(crd.is_none_or(|c| c.metadata.deletion_timestamp.is_some()))
}

/// Lets the tenant go without touching any backend, and marks its namespace
/// so that applying the tenant again adopts it.
async fn release_for_crd_deletion(
    tenant: &PartnerTenant,
    names: &TenantNames,
    ctx: &Context,
) -> Result<Action, Error> {
    if let Claim::Owned { .. } = claim_namespace(tenant, names, ctx).await? {
        let patch = serde_json::json!({"metadata": {"annotations": {ownership::ADOPT_BY: tenant.name_any()}}});
        patch_namespace(ctx, &names.namespace, &patch).await?;
    }
    strip_tenant_owners(tenant, names, ctx).await?;
    ctx.metrics.set_tenant_ready(&tenant.name_any(), None);
    publish(
        tenant,
        ctx,
        EventType::Warning,
        "CustomResourceDefinitionDeleted",
        "Release",
        format!(
            "the PartnerTenant CRD is being deleted: finalizer released without cleanup; \
             data, access and namespace {} kept; apply the tenant again to adopt them",
            names.namespace
        ),
    )
    .await;
    Ok(Action::await_change())
}

/// What the tenant used, from its status and a live read of its namespace.
async fn used_of(
    tenant: &PartnerTenant,
    names: &TenantNames,
    ctx: &Context,
) -> Result<Used, Error> {
    let status = tenant.status.clone().unwrap_or_default();
    let namespace = match claim_namespace(tenant, names, ctx).await? {
        Claim::Owned { origin, .. } => Some(origin),
        Claim::Create | Claim::Terminating | Claim::Refused(_) => None,
    };
    Ok(Used {
        postgres: status.postgres.map(|pg| {
            let configured = ctx.postgres.has_backend(&pg.backend);
            (pg.backend, configured)
        }),
        shared_redis: status.redis.as_ref().is_some_and(|r| r.user.is_some()),
        vault: status.vault.is_some(),
        namespace,
        workflows: status
            .workflows
            .as_ref()
            .filter(|w| !w.workflows.is_empty() || !w.credentials.is_empty())
            .map(|_| ctx.workflows.is_some()),
    })
}

/// Runs the plan; returns what it did, for the Event.
async fn cleanup_parts(
    tenant: &PartnerTenant,
    names: &TenantNames,
    ctx: &Context,
) -> Result<Vec<String>, Error> {
    let used = used_of(tenant, names, ctx).await?;
    let abandon = teardown::parse_abandon(
        tenant
            .annotations()
            .get(teardown::ABANDON)
            .map(String::as_str),
    );
    let plan = teardown::plan(tenant.spec.deletion_policy, &used, &abandon);
    if let Some(blocked) = plan.blocked {
        return Err(Error::BackendNotConfigured(blocked));
    }
    if tenant.spec.deletion_policy == DeletionPolicy::Delete && used.namespace.is_some() {
        wait_for_workloads(names, ctx).await?;
    }
    if tenant.spec.deletion_policy == DeletionPolicy::Retain {
        strip_tenant_owners(tenant, names, ctx).await?;
    }
    let mut abandoned = plan.abandoned.clone();
    let mut done = vec![];
    for step in &plan.steps {
        let backend = step.backend();
        if backend.is_some_and(|b| abandoned.contains(&b)) {
            continue;
        }
        match run_step(step, tenant, names, ctx).await {
            Ok(what) => done.push(what),
            // A failing backend the annotation lets go of: the rest goes on.
            Err(e) if backend.is_some_and(|b| abandon.contains(&b)) && !e.is_permanent() => {
                tracing::warn!(error = %e.message(), "abandoning a failing backend as annotated");
                abandoned.extend(backend);
            }
            Err(e) => return Err(e),
        }
    }
    if tenant.spec.deletion_policy == DeletionPolicy::Retain && used.namespace.is_some() {
        // The namespace stays and is no tenant's any more: nor are its Secrets the operator's.
        secret_access::revoke(names, ctx).await?;
    }
    if !abandoned.is_empty() {
        let left: Vec<String> = abandoned
            .iter()
            .map(|b| left_behind(*b, tenant, names, ctx))
            .collect();
        publish(
            tenant,
            ctx,
            EventType::Warning,
            "BackendsAbandoned",
            "Cleanup",
            format!("left behind as asked: {}", left.join("; ")),
        )
        .await;
    }
    Ok(done)
}

fn no_n8n() -> Error {
    Error::BackendNotConfigured("n8n is no longer configured".into())
}

fn left_behind(
    backend: Backend,
    tenant: &PartnerTenant,
    names: &TenantNames,
    ctx: &Context,
) -> String {
    match backend {
        Backend::Postgres => format!(
            "Postgres backend {:?}: schema {} and role {}",
            tenant
                .status
                .as_ref()
                .and_then(|s| s.postgres.as_ref())
                .map_or(tenant.spec.postgres.backend.as_str(), |p| p
                    .backend
                    .as_str()),
            names.schema,
            names.role
        ),
        Backend::Redis => format!(
            "Redis: ACL user {} and keys {}*",
            names.redis_user, names.redis_key_prefix
        ),
        Backend::Vault => format!(
            "Vault/OpenBao: policy {}, auth role {}, secrets under {}/{}",
            names.vault_policy,
            names.vault_auth_role,
            ctx.vault.kv_mount(),
            names.vault_path
        ),
        Backend::Workflows => format!(
            "n8n: workflows tagged {} and their credentials",
            crate::workflows::names::tag(&tenant.name_any())
        ),
    }
}

async fn run_step(
    step: &Step,
    tenant: &PartnerTenant,
    names: &TenantNames,
    ctx: &Context,
) -> Result<String, Error> {
    Ok(match step {
        Step::DisablePostgres(backend) => {
            ctx.postgres.disable_tenant(backend, names).await?;
            format!(
                "login of role {} disabled, schema {} kept",
                names.role, names.schema
            )
        }
        Step::DropPostgres(backend) => {
            ctx.postgres.drop_tenant(backend, names).await?;
            format!("schema {} and role {} dropped", names.schema, names.role)
        }
        Step::RemoveRedisUser => {
            ctx.redis.remove_user_if_present(&names.redis_user).await?;
            format!("Redis ACL user {} removed", names.redis_user)
        }
        Step::DeleteRedisKeys => {
            ctx.redis.delete_keys(&names.redis_key_prefix).await?;
            format!("Redis keys {}* deleted", names.redis_key_prefix)
        }
        Step::DeleteWorkflows => {
            let engine = ctx.workflows.as_deref().ok_or_else(no_n8n)?;
            let recorded = tenant.status.as_ref().and_then(|s| s.workflows.as_ref());
            crate::workflows::cleanup::delete_all(engine, &tenant.name_any(), recorded).await?;
            "workflows and credentials removed from n8n".into()
        }
        Step::DeactivateWorkflows => {
            let engine = ctx.workflows.as_deref().ok_or_else(no_n8n)?;
            crate::workflows::cleanup::deactivate_all(engine, &tenant.name_any()).await?;
            "workflows deactivated in n8n, kept with their credentials".into()
        }
        Step::DetachVault => {
            ctx.vault.detach(names).await?;
            format!(
                "OpenBao policy {} and auth role {} removed",
                names.vault_policy, names.vault_auth_role
            )
        }
        Step::DeleteVaultSecrets => {
            ctx.vault.delete_secrets(names).await?;
            format!(
                "secrets under {}/{} deleted",
                ctx.vault.kv_mount(),
                names.vault_path
            )
        }
        Step::DeleteNamespace => {
            apply::delete::<Namespace>(&ctx.client, None, &names.namespace, &ctx.metrics).await?;
            format!("namespace {} deleted", names.namespace)
        }
        Step::DeleteOwnedObjects => {
            delete_owned_objects(tenant, names, ctx).await?;
            format!(
                "the operator's objects removed from namespace {}, which was adopted and stays",
                names.namespace
            )
        }
    })
}

/// Objects made by earlier versions carry an owner reference to the tenant;
/// a tenant whose objects were not rewritten since (suspended, refused) must
/// not let the garbage collector take them when it goes.
async fn strip_tenant_owners(
    tenant: &PartnerTenant,
    names: &TenantNames,
    ctx: &Context,
) -> Result<(), Error> {
    let tenant_name = tenant.name_any();
    let s = &ctx.stores;
    macro_rules! strip_all {
        ($($store:expr),*) => {$(
            for object in $store.filed_under(&names.namespace, Some(&names.namespace)) {
                if object.tenant() == Some(tenant_name.as_str()) {
                    apply::remove_cached_tenant_owner(&ctx.client, &object, &ctx.metrics).await?;
                }
            }
        )*};
    }
    strip_all!(
        s.quotas,
        s.limit_ranges,
        s.network_policies,
        s.service_accounts,
        s.roles,
        s.role_bindings,
        s.services,
        s.stateful_sets
    );
    for secret in
        secret_access::owned(ctx, names, &tenant_name, secret_access::Freshness::Current).await?
    {
        apply::remove_tenant_owner(&ctx.client, &secret, &ctx.metrics).await?;
    }
    Ok(())
}

/// In an adopted namespace: the operator's objects go, the namespace stays
/// and loses the marks that made it the tenant's.
async fn delete_owned_objects(
    tenant: &PartnerTenant,
    names: &TenantNames,
    ctx: &Context,
) -> Result<(), Error> {
    let tenant_name = tenant.name_any();
    let s = &ctx.stores;
    prune(ctx, &s.quotas, names, &tenant_name, &[]).await?;
    prune(ctx, &s.limit_ranges, names, &tenant_name, &[]).await?;
    prune(ctx, &s.network_policies, names, &tenant_name, &[]).await?;
    prune(ctx, &s.service_accounts, names, &tenant_name, &[]).await?;
    prune(ctx, &s.roles, names, &tenant_name, &[]).await?;
    // The Secrets go while the operator's RoleBinding still grants access.
    secret_access::prune_all(ctx, names, &tenant_name).await?;
    prune(ctx, &s.role_bindings, names, &tenant_name, &[]).await?;
    prune(ctx, &s.services, names, &tenant_name, &[]).await?;
    prune(ctx, &s.stateful_sets, names, &tenant_name, &[]).await?;
    let patch = serde_json::json!({"metadata": {
        "annotations": {ownership::TENANT_NAME: null, ownership::TENANT_UID: null, ownership::ORIGIN: null},
        "labels": {
            "app.kubernetes.io/managed-by": null,
            "app.kubernetes.io/part-of": null,
            crate::naming::TENANT_LABEL: null,
        },
    }});
    patch_namespace(ctx, &names.namespace, &patch).await?;
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
