//! The tenant a pipeline belongs to: the owner of its namespace. No
//! cross-namespace reference exists, so a pipeline can only ever reach the
//! schema of the tenant that owns the namespace it was created in.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::api::PartnerTenant;
use crate::api::conditions;
use crate::backends::postgres::{Postgres, PostgresError, TenantSession};
use crate::tenant::ownership::{TENANT_NAME, TENANT_UID};
use crate::tenant::status::DATABASE_READY;
use crate::tenant_login::CredentialStore;

/// Where a pipeline's tables live and whose privileges its SQL runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantDatabase {
    pub tenant: String,
    pub backend: String,
    pub schema: String,
    pub role: String,
    /// The tenant's KV path under the mount, when it uses Vault/OpenBao.
    pub vault_path: Option<String>,
    /// Where the password of the tenant's login is kept.
    pub credentials: CredentialStore,
    /// The workflow templates the tenant enables.
    pub workflows: Vec<crate::api::tenant::WorkflowTemplate>,
}

impl TenantDatabase {
    /// A session logged in as the tenant's own role: all work in its
    /// schema is done in one (see `Postgres::tenant_session`).
    pub async fn session<'a>(
        &self,
        shared: &crate::context::Context,
        postgres: &'a Postgres,
    ) -> Result<TenantSession<'a>, PostgresError> {
        postgres
            .tenant_session(&self.backend, &self.role, || async {
                self.credentials
                    .postgres_password(shared)
                    .await
                    .map_err(PostgresError::TenantCredentials)
            })
            .await
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Tenant(TenantDatabase),
    /// Only a spec or environment change helps (Stalled).
    NotATenantNamespace(String),
    /// The tenant exists but its database is not there yet (Reconciling).
    TenantNotReady(String),
}

/// The tenant named by the namespace's ownership annotations, as far as
/// they agree with the tenant itself: its UID and its recorded namespace.
pub fn tenant_name(annotations: &BTreeMap<String, String>) -> Option<&str> {
    annotations.get(TENANT_NAME).map(String::as_str)
}

/// Decides who owns `namespace`. `for_cleanup` accepts a tenant that is
/// being deleted or whose database is not Ready, as long as it recorded
/// one: its teardown waits for the pipeline's own.
pub fn resolve(
    namespace: &str,
    annotations: Option<&BTreeMap<String, String>>,
    tenant: Option<&PartnerTenant>,
    for_cleanup: bool,
) -> Owner {
    let not_tenant = |why: String| {
        Owner::NotATenantNamespace(format!(
            "namespace {namespace} {why}; a MetricPipeline runs only in the namespace of a PartnerTenant"
        ))
    };
    let Some(annotations) = annotations else {
        return not_tenant("is not managed by partnerplane".into());
    };
    let (Some(name), Some(uid)) = (annotations.get(TENANT_NAME), annotations.get(TENANT_UID))
    else {
        return not_tenant("is not managed by partnerplane".into());
    };
    let Some(tenant) = tenant else {
        return not_tenant(format!("names PartnerTenant {name}, which does not exist"));
    };
    if tenant.uid().as_deref() != Some(uid.as_str()) {
        return not_tenant(format!(
            "belongs to an earlier PartnerTenant {name}, not the current one"
        ));
    }
    let status = tenant.status.clone().unwrap_or_default();
    if status.namespace.as_deref() != Some(namespace) {
        return not_tenant(format!("is not the namespace PartnerTenant {name} records"));
    }
    let Some(postgres) = status.postgres else {
        return Owner::TenantNotReady(format!("PartnerTenant {name} has no database yet"));
    };
    if !for_cleanup {
        if tenant.metadata.deletion_timestamp.is_some() {
            return Owner::TenantNotReady(format!("PartnerTenant {name} is being deleted"));
        }
        if !conditions::is_true(&status.conditions, DATABASE_READY) {
            return Owner::TenantNotReady(format!("PartnerTenant {name}'s database is not ready"));
        }
    }
    Owner::Tenant(TenantDatabase {
        tenant: name.clone(),
        backend: postgres.backend,
        schema: postgres.schema,
        role: postgres.role,
        vault_path: status.vault.map(|v| v.path),
        credentials: CredentialStore::of(tenant),
        workflows: tenant.spec.workflows.templates.clone(),
    })
}

/// What [`resolve`] decides from: the namespace's annotations (from the
/// watch cache, else a live read) and the tenant they name, read live.
pub async fn observe(
    ctx: &crate::context::Context,
    namespace: &str,
) -> Result<(Option<BTreeMap<String, String>>, Option<PartnerTenant>), kube::Error> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::Api;
    use kube::runtime::reflector::ObjectRef;

    // The cache keeps the operator's annotations, all a namespace's owner is read from.
    let annotations: Option<BTreeMap<String, String>> =
        match ctx.stores.namespaces.get(&ObjectRef::new(namespace)) {
            Some(ns) => Some(ns.annotations.iter().cloned().collect()),
            None => Api::<Namespace>::all(ctx.client.clone())
                .get_metadata_opt(namespace)
                .await?
                .map(|ns| ns.metadata.annotations.unwrap_or_default()),
        };
    let tenant = match annotations.as_ref().and_then(tenant_name) {
        Some(name) => {
            Api::<PartnerTenant>::all(ctx.client.clone())
                .get_opt(name)
                .await?
        }
        None => None,
    };
    Ok((annotations, tenant))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PartnerTenantStatus;
    use crate::api::tenant::PostgresStatus;

    fn tenant(uid: &str, namespace: &str, db_ready: bool) -> PartnerTenant {
        let mut t: PartnerTenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "partnerplane.io/v1alpha1", "kind": "PartnerTenant",
            "metadata": {"name": "acme", "uid": uid},
            "spec": {"displayName": "Acme", "tier": "Standard"}
        }))
        .unwrap();
        t.status = Some(PartnerTenantStatus {
            namespace: Some(namespace.into()),
            postgres: Some(PostgresStatus {
                backend: "default".into(),
                schema: "tenant_acme_1".into(),
                role: "tenant_acme_1_app".into(),
            }),
            conditions: vec![conditions::new(DATABASE_READY, db_ready, "x", "", Some(1))],
            ..Default::default()
        });
        t
    }

    fn marks(name: &str, uid: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (TENANT_NAME.to_string(), name.to_string()),
            (TENANT_UID.to_string(), uid.to_string()),
        ])
    }

    #[test]
    fn the_owning_tenant_gives_its_schema_and_role() {
        let t = tenant("u1", "ptn-acme", true);
        let owner = resolve("ptn-acme", Some(&marks("acme", "u1")), Some(&t), false);
        let Owner::Tenant(db) = owner else {
            panic!("{owner:?}")
        };
        assert_eq!(
            (db.schema.as_str(), db.role.as_str()),
            ("tenant_acme_1", "tenant_acme_1_app")
        );
    }

    #[test]
    fn a_namespace_without_marks_or_with_stale_marks_is_refused() {
        let t = tenant("u1", "ptn-acme", true);
        for (annotations, tenant) in [
            (None, Some(&t)),
            (Some(BTreeMap::new()), Some(&t)),
            (Some(marks("acme", "u0")), Some(&t)),
            (Some(marks("acme", "u1")), None),
        ] {
            let owner = resolve("ptn-acme", annotations.as_ref(), tenant, false);
            assert!(matches!(owner, Owner::NotATenantNamespace(_)), "{owner:?}");
        }
        // The marks are right but the tenant records another namespace.
        let elsewhere = tenant("u1", "other", true);
        let owner = resolve(
            "ptn-acme",
            Some(&marks("acme", "u1")),
            Some(&elsewhere),
            false,
        );
        assert!(matches!(owner, Owner::NotATenantNamespace(_)));
    }

    #[test]
    fn a_tenant_whose_database_is_not_ready_is_waited_for_except_by_cleanup() {
        let t = tenant("u1", "ptn-acme", false);
        let marks = marks("acme", "u1");
        assert!(matches!(
            resolve("ptn-acme", Some(&marks), Some(&t), false),
            Owner::TenantNotReady(_)
        ));
        assert!(matches!(
            resolve("ptn-acme", Some(&marks), Some(&t), true),
            Owner::Tenant(_)
        ));
    }
}
