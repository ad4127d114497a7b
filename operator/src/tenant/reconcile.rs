//! Provisioning of one tenant.
//!
//! The namespace is claimed first, from a live read: nothing namespaced and
//! nothing bound to the namespace (the OpenBao role) runs until it is the
//! tenant's. Then every part — Kubernetes objects, Postgres, Redis,
//! Vault/OpenBao — converges independently, so one unavailable backend leaves
//! the others converging; each part reports its own condition. Before any
//! backend is touched the status records which backends the tenant uses, so
//! deletion later knows exactly what it may have to clean up.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::children;
use super::error::Error;
use super::ownership::{self, Claim, Origin as NamespaceOrigin};
use super::secret_access;
use super::status::{self, PartOutcome};
use crate::api::conditions::{self, READY, RECONCILING};
use crate::api::tenant::{PostgresStatus, RedisMode, RedisStatus, SecretStore, VaultStatus};
use crate::api::{PartnerTenant, PartnerTenantStatus};
use crate::apply::{self, FIELD_MANAGER};
use crate::backends::postgres::PasswordPolicy;
use crate::backends::redis::AclUser;
use crate::context::Context;
use crate::credentials::{self, Credentials, Origin, StoreRead};
use crate::index::Indexed;
use crate::naming::{self, TenantNames};
use crate::slim::Slim;

/// Path of the credentials under the tenant's Vault/OpenBao prefix.
pub(crate) const VAULT_CREDENTIALS: &str = "credentials";

pub(crate) fn names_of(tenant: &PartnerTenant) -> TenantNames {
    TenantNames::new(&tenant.name_any(), tenant.spec.namespace.as_deref())
}

fn outcome(condition: &'static str, result: Result<String, Error>) -> PartOutcome {
    match result {
        Ok(message) => PartOutcome::ready(condition, message),
        Err(e) => PartOutcome::failed(condition, e.reason(), e.message(), e.is_permanent()),
    }
}

pub(crate) fn stores_in_vault(tenant: &PartnerTenant) -> bool {
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

/// What a live read shows of `name`; the cache holds only namespaces the
/// operator labelled, so a miss there says nothing about existence.
pub(super) async fn observe_namespace(
    name: &str,
    ctx: &Context,
) -> Result<Option<ownership::Observed>, Error> {
    let live = match ctx.stores.namespaces.get(&ObjectRef::new(name)) {
        Some(cached) => Some(cached.as_ref().clone()),
        None => Api::<Namespace>::all(ctx.client.clone())
            .get_metadata_opt(name)
            .await?
            .map(|ns| Slim::of(&ns.metadata)),
    };
    Ok(live.map(|ns| ownership::Observed {
        terminating: ns.terminating,
        annotations: ns.annotations.iter().cloned().collect(),
    }))
}

pub(super) async fn claim_namespace(
    tenant: &PartnerTenant,
    names: &TenantNames,
    ctx: &Context,
) -> Result<Claim, Error> {
    let observed = observe_namespace(&names.namespace, ctx).await?;
    let uid = tenant.uid().unwrap_or_default();
    let name = tenant.name_any();
    // Only a namespace about to be created needs the look for one kept
    // from an earlier tenant of this name elsewhere.
    let kept_elsewhere = match observed {
        Some(_) => None,
        None => ctx
            .stores
            .namespaces
            .filed_under(&name, None)
            .into_iter()
            .find_map(|ns| {
                let earlier = ns.annotation(ownership::TENANT_NAME) == Some(name.as_str())
                    && ns.annotation(ownership::TENANT_UID) != Some(uid.as_str());
                earlier.then(|| ns.name.clone())
            }),
    };
    let recorded = tenant.status.as_ref().and_then(|s| s.namespace.as_deref())
        == Some(names.namespace.as_str());
    Ok(ownership::decide(
        &names.namespace,
        observed.as_ref(),
        &name,
        &ownership::Context {
            uid: &uid,
            protected: &ctx.settings.protected_namespaces,
            recorded,
            kept_elsewhere: kept_elsewhere.as_deref(),
        },
    ))
}

/// Converges the tenant toward its spec; `written` holds the status last
/// written for each tenant.
pub async fn apply(
    tenant: Arc<PartnerTenant>,
    ctx: &Context,
    written: &status::Written,
) -> Result<Action, Error> {
    let names = names_of(&tenant);
    let claim = claim_namespace(&tenant, &names, ctx).await?;
    let (origin, adopting) = match &claim {
        Claim::Create => (NamespaceOrigin::Created, false),
        Claim::Owned { origin, adopting } => (*origin, *adopting),
        Claim::Terminating => {
            let message = format!("namespace {} to finish terminating", names.namespace);
            return finish_without_parts(&tenant, ctx, written, Error::Waiting(message)).await;
        }
        Claim::Refused(message) => {
            let error = Error::NamespaceNotOwned(message.clone());
            return finish_without_parts(&tenant, ctx, written, error).await;
        }
    };
    if tenant.spec.suspend {
        // Nothing is touched; the status says so for this generation, which
        // kstatus (Flux `wait`) reads as settled.
        tracing::info!("suspended; leaving provisioned state as is");
        let previous = tenant.status.clone().unwrap_or_default();
        let status = PartnerTenantStatus {
            observed_generation: tenant.metadata.generation,
            conditions: status::suspended(&previous.conditions, tenant.metadata.generation),
            ..previous
        };
        write_status(&tenant, status, ctx, written).await?;
        return Ok(Action::await_change());
    }
    let previous = tenant.status.clone().unwrap_or_default();
    record_intent(&tenant, &names, &previous, ctx, written).await?;

    let kubernetes = apply_kubernetes(&tenant, &names, &claim, origin, adopting, ctx).await;
    fail::fail_point!("tenant-after-namespace");
    // A namespace this pass created holds no Secret to read.
    let namespace_is_new = claim == Claim::Create && kubernetes.is_ok();
    let (credentials, cred_origin, secret_was_read) =
        load_credentials(&tenant, &names, namespace_is_new, ctx).await;
    // The workloads' Role, Postgres and Redis are apart: they converge together.
    let (mut rotated, mut rotated_cache) = (vec![], vec![]);
    let (identity, database, cache) = futures::join!(
        async {
            match &kubernetes {
                Ok(_) => apply_workload_identity(&tenant, &names, ctx).await,
                Err(_) => Ok(()),
            }
        },
        async {
            let database = apply_database(
                &tenant,
                &names,
                &credentials,
                cred_origin,
                &mut rotated,
                ctx,
            )
            .await;
            fail::fail_point!("tenant-after-database");
            outcome(status::DATABASE_READY, database)
        },
        async {
            let cache = apply_cache(
                &tenant,
                &names,
                &credentials,
                cred_origin,
                &mut rotated_cache,
                ctx,
            )
            .await;
            fail::fail_point!("tenant-after-cache");
            outcome(status::CACHE_READY, cache)
        },
    );
    let namespace = outcome(
        status::NAMESPACE_READY,
        kubernetes.and_then(|message| identity.map(|()| message)),
    );
    rotated.append(&mut rotated_cache);
    let mut vault_detached = false;
    let secrets = outcome(
        status::SECRETS_READY,
        apply_secrets(
            &tenant,
            &names,
            &credentials,
            (cred_origin, secret_was_read),
            &mut vault_detached,
            ctx,
        )
        .await,
    );
    fail::fail_point!("tenant-after-secrets");
    if !rotated.is_empty() {
        publish(
            &tenant,
            ctx,
            EventType::Normal,
            "CredentialsRotated",
            "Rotate",
            format!(
                "set the password of {} to the one in the credential store",
                rotated.join(" and ")
            ),
        )
        .await;
    }
    let workflows = super::workflows::apply(&tenant, &names, &credentials, cred_origin, ctx).await;
    fail::fail_point!("tenant-after-workflows");
    let parts = [namespace, database, cache, secrets, workflows.part];

    let mut status = intended_status(&tenant, &names, &previous, ctx);
    status.observed_generation = tenant.metadata.generation;
    status.conditions = status::roll_up(&previous.conditions, &parts, tenant.metadata.generation);
    if vault_detached {
        status.vault = None;
    }
    status.workflows = workflows.status;
    if tenant.spec.redis.mode == RedisMode::Dedicated
        && parts[2].ready
        && let Some(redis) = status.redis.as_mut()
    {
        // The Dedicated part removes any shared user first; ready means gone.
        redis.user = None;
    }
    write_status(&tenant, status, ctx, written).await?;

    match parts.iter().find(|p| !p.ready) {
        // Spread, so tenants created together do not all resync in the same second.
        None => Ok(Action::requeue(crate::context::jittered(
            crate::context::resync_interval(ctx.settings.resync, ctx.metrics.tenant_count()),
            &mut rand::rng(),
        ))),
        Some(p) => Err(Error::NotReady {
            reason: p.reason,
            message: format!("{}: {}", p.condition, p.message),
            permanent: p.permanent,
        }),
    }
}

/// The status a reconcile ends with when no part may run: the namespace
/// condition says why, and nothing else is touched.
async fn finish_without_parts(
    tenant: &PartnerTenant,
    ctx: &Context,
    written: &status::Written,
    error: Error,
) -> Result<Action, Error> {
    let previous = tenant.status.clone().unwrap_or_default();
    let part = outcome(status::NAMESPACE_READY, Err(error));
    let status = PartnerTenantStatus {
        observed_generation: tenant.metadata.generation,
        conditions: status::roll_up(
            &previous.conditions,
            std::slice::from_ref(&part),
            tenant.metadata.generation,
        ),
        ..previous
    };
    write_status(tenant, status, ctx, written).await?;
    Err(Error::NotReady {
        reason: part.reason,
        message: format!("{}: {}", part.condition, part.message),
        permanent: part.permanent,
    })
}

/// Names of everything the tenant uses, recorded in the status before any
/// backend is touched; a backend stays recorded until its part is undone.
fn intended_status(
    tenant: &PartnerTenant,
    names: &TenantNames,
    previous: &PartnerTenantStatus,
    ctx: &Context,
) -> PartnerTenantStatus {
    let previous_user = previous.redis.as_ref().and_then(|r| r.user.clone());
    PartnerTenantStatus {
        observed_generation: previous.observed_generation,
        conditions: previous.conditions.clone(),
        namespace: Some(names.namespace.clone()),
        // A backend the configuration does not name was never touched.
        postgres: (ctx.postgres.has_backend(&tenant.spec.postgres.backend)
            || previous.postgres.is_some())
        .then(|| PostgresStatus {
            backend: tenant.spec.postgres.backend.clone(),
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
                // Kept until the shared user is confirmed removed.
                user: previous_user,
                key_prefix: None,
                service: Some(format!(
                    "{}.{}.svc",
                    children::DEDICATED_REDIS,
                    names.namespace
                )),
            },
        }),
        vault: (stores_in_vault(tenant) || previous.vault.is_some()).then(|| VaultStatus {
            mount: ctx.vault.kv_mount().to_string(),
            path: names.vault_path.clone(),
            policy: names.vault_policy.clone(),
            auth_role: names.vault_auth_role.clone(),
        }),
        credentials_secret: stores_in_kubernetes(tenant)
            .then(|| naming::CREDENTIALS_SECRET.to_string()),
        workflows: previous.workflows.clone(),
    }
}

/// Writes what the tenant is about to use and `Reconciling=True` for a new
/// generation, unless the status already says so.
async fn record_intent(
    tenant: &PartnerTenant,
    names: &TenantNames,
    previous: &PartnerTenantStatus,
    ctx: &Context,
    written: &status::Written,
) -> Result<(), Error> {
    let mut intent = intended_status(tenant, names, previous, ctx);
    let same_records = intent.postgres == previous.postgres
        && intent.redis.as_ref().and_then(|r| r.user.as_ref())
            == previous.redis.as_ref().and_then(|r| r.user.as_ref())
        && intent.vault == previous.vault;
    let new_generation = previous.observed_generation != tenant.metadata.generation;
    if same_records && !new_generation {
        return Ok(());
    }
    if new_generation {
        conditions::upsert(
            &mut intent.conditions,
            conditions::new(
                RECONCILING,
                true,
                "Progressing",
                format!(
                    "provisioning generation {}",
                    tenant.metadata.generation.unwrap_or_default()
                ),
                tenant.metadata.generation,
            ),
        );
        intent.observed_generation = tenant.metadata.generation;
    }
    patch_status(tenant, &intent, ctx).await?;
    written.record(&tenant.uid().unwrap_or_default(), &intent);
    Ok(())
}

async fn apply_one<K>(ctx: &Context, store: &Indexed<K>, desired: &K) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Serialize + DeserializeOwned,
{
    Ok(apply::apply_to_indexed(&ctx.client, store, desired, &ctx.metrics).await?)
}

/// Deletes the tenant's objects in `store` whose names are not in `keep`.
pub(super) async fn prune<K>(
    ctx: &Context,
    store: &Indexed<K>,
    names: &TenantNames,
    tenant: &str,
    keep: &[String],
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + DeserializeOwned,
{
    for object in store.filed_under(&names.namespace, Some(&names.namespace)) {
        if object.tenant() == Some(tenant) && !keep.contains(&object.name) {
            apply::delete::<K>(
                &ctx.client,
                Some(&names.namespace),
                &object.name,
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
    claim: &Claim,
    origin: NamespaceOrigin,
    adopting: bool,
    ctx: &Context,
) -> Result<String, Error> {
    let s = &ctx.stores;
    let tenant_name = tenant.name_any();
    let desired = children::namespace(tenant, names, origin);
    if *claim == Claim::Create {
        // A create, not an apply: should anyone (another tenant included)
        // create the namespace between the read and this write, it stays
        // theirs and the next reconcile decides again.
        s.namespaces.own_writes.announce(&desired);
        match Api::<Namespace>::all(ctx.client.clone())
            .create(
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PostParams::default()
                },
                &desired,
            )
            .await
        {
            Ok(_) => apply::count_write::<Namespace>(&ctx.metrics),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                s.namespaces.own_writes.withdraw(&desired);
                return Err(Error::Waiting(format!(
                    "namespace {} appeared while it was being created; deciding again whose it is",
                    names.namespace
                )));
            }
            Err(e) => {
                s.namespaces.own_writes.withdraw(&desired);
                return Err(e.into());
            }
        }
    } else {
        apply_one(ctx, &s.namespaces, &desired).await?;
    }
    let stale_mark = s
        .namespaces
        .get(&ObjectRef::new(&names.namespace))
        .is_some_and(|ns| ns.annotation(ownership::ADOPT_BY).is_some());
    if adopting || stale_mark {
        release_adoption_mark(tenant, names, ctx).await?;
    }
    // Independent objects, written while the operator's binding is written
    // and takes effect.
    let quota = children::resource_quota(tenant, names);
    let limits = children::limit_range(tenant, names);
    let account = children::service_account(tenant, names);
    let policies = children::network_policies(tenant, names, &ctx.settings.backend_egress);
    let keep: Vec<String> = policies.iter().map(|p| p.name_any()).collect();
    let access = async {
        let pending = secret_access::grant(tenant, names, ctx).await?;
        secret_access::in_force(pending, names, ctx).await
    };
    let (access, written) = futures::join!(access, async {
        futures::try_join!(
            apply_one(ctx, &s.quotas, &quota),
            apply_one(ctx, &s.limit_ranges, &limits),
            apply_one(ctx, &s.service_accounts, &account),
            async {
                futures::future::try_join_all(
                    policies
                        .iter()
                        .map(|policy| apply_one(ctx, &s.network_policies, policy)),
                )
                .await?;
                prune(ctx, &s.network_policies, names, &tenant_name, &keep).await
            },
        )
    });
    // The credentials Secret and the workload Role both need that access.
    // Awaited even when a write beside it failed: the next reconcile finds
    // the binding written and would not wait for it.
    access?;
    written?;
    Ok(format!(
        "namespace {} ({}) with quota, limits, network policy and workload identity",
        names.namespace,
        origin.as_str()
    ))
}

/// The Role that lets the tenant's workloads read their credentials, and
/// its binding to the tenant's ServiceAccount. Nothing of the backends
/// needs them: they are written while the backends are provisioned. Only
/// after `apply_kubernetes` succeeded: the Role grants a Secret, which the
/// operator must hold first (RBAC refuses an escalation).
async fn apply_workload_identity(
    tenant: &PartnerTenant,
    names: &TenantNames,
    ctx: &Context,
) -> Result<(), Error> {
    let s = &ctx.stores;
    apply_one(ctx, &s.roles, &children::role(tenant, names)).await?;
    apply_one(
        ctx,
        &s.role_bindings,
        &children::role_binding(tenant, names),
    )
    .await?;
    Ok(())
}

/// Merge-patches the namespace's metadata (marks the operator sets or
/// removes beside its server-side apply).
pub(super) async fn patch_namespace(
    ctx: &Context,
    namespace: &str,
    patch: &serde_json::Value,
) -> Result<(), Error> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    Api::<Namespace>::all(ctx.client.clone())
        .patch(namespace, &params, &Patch::Merge(patch))
        .await?;
    Ok(())
}

/// An adoption opt-in is used once: after the tenant has taken the
/// namespace over, the mark goes so it cannot hand it on again later.
async fn release_adoption_mark(
    tenant: &PartnerTenant,
    names: &TenantNames,
    ctx: &Context,
) -> Result<(), Error> {
    let patch = serde_json::json!({"metadata": {"annotations": {ownership::ADOPT_BY: null}}});
    patch_namespace(ctx, &names.namespace, &patch).await?;
    tracing::info!(tenant = %tenant.name_any(), namespace = %names.namespace, "adopted namespace");
    Ok(())
}

/// The tenant's credentials: from its stores, or new ones; and whether
/// the credentials Secret was there to read.
async fn load_credentials(
    tenant: &PartnerTenant,
    names: &TenantNames,
    namespace_is_new: bool,
    ctx: &Context,
) -> (Credentials, Origin, bool) {
    let (secret, secret_was_read) = if namespace_is_new {
        (Some(StoreRead::Missing), false)
    } else if stores_in_kubernetes(tenant) || stores_in_vault(tenant) {
        let (read, present) = credentials_from_secret(names, &tenant.name_any(), ctx).await;
        (Some(read), present)
    } else {
        (None, false)
    };
    let (credentials, origin) = choose_credentials(tenant, names, secret, ctx).await;
    (credentials, origin, secret_was_read)
}

async fn choose_credentials(
    tenant: &PartnerTenant,
    names: &TenantNames,
    secret: Option<StoreRead>,
    ctx: &Context,
) -> (Credentials, Origin) {
    // After a move away from Vault/OpenBao, what it holds still counts until
    // it is detached, so the move itself rotates nothing.
    let vault_recorded = tenant.status.as_ref().is_some_and(|s| s.vault.is_some());
    if !stores_in_vault(tenant) && !vault_recorded {
        return credentials::choose(secret.unwrap_or(StoreRead::Missing), None);
    }
    let vault = match ctx.vault.read_secret(names, VAULT_CREDENTIALS).await {
        Ok(Some(map)) => match Credentials::from_map(&map) {
            Some(c) => StoreRead::Found(c),
            None => StoreRead::Missing,
        },
        Ok(None) => StoreRead::Missing,
        Err(e) => {
            tracing::warn!(error = %e, "credential store unreadable");
            StoreRead::Unreadable
        }
    };
    if stores_in_vault(tenant) {
        credentials::choose(vault, secret)
    } else {
        credentials::choose(secret.unwrap_or(StoreRead::Missing), Some(vault))
    }
}

/// Whether the credentials came from the Secret, their only store, and a
/// later read no longer finds it: it was deleted while this reconcile ran.
/// Writing them back would undo the loss that the reconcile its deletion
/// starts answers with new credentials.
fn store_lost_while_read(
    origin: Origin,
    only_store_is_the_secret: bool,
    present_when_read: bool,
    present_now: bool,
) -> bool {
    origin == Origin::Stored && only_store_is_the_secret && present_when_read && !present_now
}

/// The credentials Secret, read live (the operator watches no Secret), and
/// whether the tenant's Secret was there.
async fn credentials_from_secret(
    names: &TenantNames,
    tenant: &str,
    ctx: &Context,
) -> (StoreRead, bool) {
    let secret = match secret_access::get(ctx, &names.namespace, naming::CREDENTIALS_SECRET).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "reading the credentials Secret failed");
            return (StoreRead::Unreadable, false);
        }
    };
    let Some(secret) = secret.filter(|s| children::tenant_of(s).as_deref() == Some(tenant)) else {
        return (StoreRead::Missing, false);
    };
    match Credentials::from_map(&credentials::secret_text(secret)) {
        Some(c) => (StoreRead::Found(c), true),
        None => (StoreRead::Missing, true),
    }
}

async fn apply_database(
    tenant: &PartnerTenant,
    names: &TenantNames,
    credentials: &Credentials,
    origin: Origin,
    rotated: &mut Vec<String>,
    ctx: &Context,
) -> Result<String, Error> {
    let backend = &tenant.spec.postgres.backend;
    let policy = match origin {
        Origin::StoreUnavailable => PasswordPolicy::KeepExisting,
        Origin::Stored => PasswordPolicy::Enforce,
        Origin::Generated => PasswordPolicy::Set,
    };
    let converged = ctx
        .postgres
        .ensure_tenant(
            backend,
            names,
            &credentials.postgres_password,
            policy,
            tenant.spec.tier,
        )
        .await?;
    if converged.statements > 0 {
        tracing::info!(
            statements = converged.statements,
            "converged Postgres schema and role"
        );
    }
    if converged.password_changed {
        rotated.push(format!("Postgres role {}", names.role));
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
    rotated: &mut Vec<String>,
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
            } else if ctx.redis.ensure_user(&user).await?.password_changed {
                rotated.push(format!("Redis ACL user {}", names.redis_user));
            }
            prune(ctx, &s.stateful_sets, names, &tenant_name, &[]).await?;
            prune(ctx, &s.services, names, &tenant_name, &[]).await?;
            let keep = [naming::CREDENTIALS_SECRET.to_string()];
            secret_access::prune(ctx, names, &tenant_name, &keep).await?;
            Ok(format!(
                "ACL user {} confined to {}*",
                names.redis_user, names.redis_key_prefix
            ))
        }
        RedisMode::Dedicated => {
            // Only a tenant that had a shared user asks the shared Redis.
            let had_user = tenant
                .status
                .as_ref()
                .and_then(|s| s.redis.as_ref())
                .is_some_and(|r| r.user.is_some());
            if had_user {
                ctx.redis.remove_user_if_present(&names.redis_user).await?;
            }
            let data =
                super::dedicated_redis::password_secret_data(tenant, &credentials.redis_password);
            let live =
                secret_access::get(ctx, &names.namespace, children::DEDICATED_REDIS_SECRET).await?;
            secret_access::apply(
                ctx,
                &children::secret(tenant, names, children::DEDICATED_REDIS_SECRET, &data),
                live.as_ref(),
            )
            .await?;
            apply_one(
                ctx,
                &s.services,
                &children::dedicated_redis_service(tenant, names),
            )
            .await?;
            let desired = children::dedicated_redis_statefulset(tenant, names, &data);
            apply_one(ctx, &s.stateful_sets, &desired).await?;
            // The cache holds metadata only: readiness is read live.
            let ready = Api::<StatefulSet>::namespaced(ctx.client.clone(), &names.namespace)
                .get_opt(children::DEDICATED_REDIS)
                .await?
                .and_then(|sts| sts.status.and_then(|st| st.ready_replicas))
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

/// `origin` comes with whether the credentials Secret was cached when the
/// credentials were read.
async fn apply_secrets(
    tenant: &PartnerTenant,
    names: &TenantNames,
    credentials: &Credentials,
    (origin, secret_was_read): (Origin, bool),
    vault_detached: &mut bool,
    ctx: &Context,
) -> Result<String, Error> {
    if origin == Origin::StoreUnavailable {
        // Nothing is written while the primary store cannot be read: what
        // it holds may differ from anything this reconcile could write. The
        // condition carries the store's own error and category.
        if stores_in_vault(tenant) {
            ctx.vault.read_secret(names, VAULT_CREDENTIALS).await?;
        }
        return Err(Error::Waiting(
            "the credential store to be readable again".into(),
        ));
    }
    let connection = connection_details(tenant, names, ctx);
    let data = credentials.to_map(&connection);
    let mut stored = vec![];
    if stores_in_vault(tenant) {
        ctx.vault.ensure_policy(names).await?;
        ctx.vault.ensure_auth_role(names).await?;
        ctx.vault
            .ensure_secret(names, VAULT_CREDENTIALS, &data)
            .await?;
        stored.push(format!(
            "{}/{}/{VAULT_CREDENTIALS}",
            ctx.vault.kv_mount(),
            names.vault_path
        ));
    }
    if stores_in_kubernetes(tenant) {
        let vault_recorded = tenant.status.as_ref().is_some_and(|s| s.vault.is_some());
        let live = secret_access::get(ctx, &names.namespace, naming::CREDENTIALS_SECRET).await?;
        let present_now = live
            .as_ref()
            .is_some_and(|s| children::tenant_of(s).as_deref() == Some(tenant.name_any().as_str()));
        if store_lost_while_read(
            origin,
            !stores_in_vault(tenant) && !vault_recorded,
            secret_was_read,
            present_now,
        ) {
            return Err(Error::Waiting(
                "the credentials Secret, deleted while it was read, to be replaced".into(),
            ));
        }
        let secret = children::secret(tenant, names, naming::CREDENTIALS_SECRET, &data);
        secret_access::apply(ctx, &secret, live.as_ref()).await?;
        stored.push(format!("Secret {}", naming::CREDENTIALS_SECRET));
        if !stores_in_vault(tenant) && tenant.status.as_ref().is_some_and(|s| s.vault.is_some()) {
            // Moved away from Vault/OpenBao: the credentials now live in the
            // Secret, so the copy there goes with the policy and auth role,
            // and nothing of the tenant's is left for a later one of its name.
            ctx.vault.detach(names).await?;
            ctx.vault.delete_secrets(names).await?;
            *vault_detached = true;
        }
    } else {
        let tenant_name = tenant.name_any();
        let keep = match tenant.spec.redis.mode {
            RedisMode::Dedicated => vec![children::DEDICATED_REDIS_SECRET.to_string()],
            RedisMode::Shared => vec![],
        };
        secret_access::prune(ctx, names, &tenant_name, &keep).await?;
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
    written: &status::Written,
) -> Result<(), Error> {
    let ready = conditions::find(&status.conditions, READY).cloned();
    ctx.metrics.set_tenant_ready(
        &tenant.name_any(),
        Some(ready.as_ref().is_some_and(|c| c.status == "True")),
    );
    let uid = tenant.uid().unwrap_or_default();
    if written.is_current(&uid, tenant.status.as_ref(), &status) {
        return Ok(());
    }
    let before = tenant
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, READY))
        .map(|c| (c.status.clone(), c.reason.clone()));
    patch_status(tenant, &status, ctx).await?;
    written.record(&uid, &status);
    if let Some(ready) = ready
        && before != Some((ready.status.clone(), ready.reason.clone()))
    {
        let type_ = if ready.status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(
            tenant,
            ctx,
            type_,
            &ready.reason,
            "Provision",
            ready.message.clone(),
        )
        .await;
    }
    Ok(())
}

/// Records an Event on the tenant; a failure to publish is logged, not fatal.
pub(super) async fn publish(
    tenant: &PartnerTenant,
    ctx: &Context,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &tenant.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing an Event failed");
    }
}

/// Server-side applies the status subresource with the operator's field manager.
pub(super) async fn patch_status(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_secret_read_from_the_cache_and_gone_since_counts_as_lost() {
        assert!(store_lost_while_read(Origin::Stored, true, true, false));
        // Still there: written back as usual.
        assert!(!store_lost_while_read(Origin::Stored, true, true, true));
        // Read live while the cache lagged: its absence says nothing.
        assert!(!store_lost_while_read(Origin::Stored, true, false, false));
        // Another store holds the truth, or nothing was read from a store.
        assert!(!store_lost_while_read(Origin::Stored, false, true, false));
        assert!(!store_lost_while_read(Origin::Generated, true, true, false));
        assert!(!store_lost_while_read(
            Origin::StoreUnavailable,
            true,
            true,
            false
        ));
    }
}
