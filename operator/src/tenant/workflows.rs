//! The tenant's part in n8n: its workflow templates, run with its own
//! Postgres role and Redis user (see `crate::workflows`).

use crate::api::PartnerTenant;
use crate::api::tenant::RedisMode;
use crate::context::Context;
use crate::credentials::{Credentials, Origin};
use crate::naming::TenantNames;
use crate::rollup::PartOutcome;
use crate::workflows::WORKFLOWS_READY;
use crate::workflows::desired::{PostgresAccess, RedisAccess, TenantView};
use crate::workflows::reconcile::{self, Outcome, Request};
use kube::ResourceExt;

use super::children;

/// The tenant as its workflows reach it: the operator's endpoints with the
/// tenant's own role, user and passwords.
pub fn view(
    tenant: &PartnerTenant,
    names: &TenantNames,
    credentials: &Credentials,
    ctx: &Context,
) -> TenantView {
    let pg = ctx
        .endpoints
        .postgres
        .get(&tenant.spec.postgres.backend)
        .cloned()
        .unwrap_or_default();
    let redis = match tenant.spec.redis.mode {
        RedisMode::Shared => RedisAccess {
            host: ctx.endpoints.redis_host.clone(),
            port: ctx.endpoints.redis_port,
            user: names.redis_user.clone(),
            password: credentials.redis_password.clone(),
            key_prefix: names.redis_key_prefix.clone(),
            tls: false,
        },
        RedisMode::Dedicated => RedisAccess {
            host: format!("{}.{}.svc", children::DEDICATED_REDIS, names.namespace),
            port: 6379,
            user: "default".into(),
            password: credentials.redis_password.clone(),
            key_prefix: String::new(),
            tls: false,
        },
    };
    TenantView {
        tenant: tenant.name_any(),
        postgres: PostgresAccess {
            host: pg.get("PGHOST").cloned().unwrap_or_default(),
            port: pg
                .get("PGPORT")
                .and_then(|p| p.parse().ok())
                .unwrap_or(5432),
            database: pg
                .get("PGDATABASE")
                .cloned()
                .unwrap_or_else(|| "postgres".into()),
            role: names.role.clone(),
            password: credentials.postgres_password.clone(),
            schema: names.schema.clone(),
            tls: pg.contains_key("PGSSLMODE"),
        },
        redis,
    }
}

/// Converges the tenant's workflows. While the credential store cannot be
/// read, the passwords at hand may not be the tenant's: nothing is written.
pub async fn apply(
    tenant: &PartnerTenant,
    names: &TenantNames,
    credentials: &Credentials,
    origin: Origin,
    ctx: &Context,
) -> Outcome {
    let recorded = tenant.status.as_ref().and_then(|s| s.workflows.as_ref());
    if origin == Origin::StoreUnavailable && !tenant.spec.workflows.templates.is_empty() {
        return Outcome {
            part: PartOutcome::failed(
                WORKFLOWS_READY,
                "Waiting",
                "waiting for the credential store to be readable again".into(),
                false,
            ),
            status: recorded.cloned(),
        };
    }
    let view = view(tenant, names, credentials, ctx);
    reconcile::apply(
        ctx.workflows.as_deref(),
        Request {
            view: &view,
            templates: &tenant.spec.workflows.templates,
            recorded,
        },
    )
    .await
}
