//! The operator's access to Secrets: only in tenant namespaces, through a
//! RoleBinding it makes in each one (to a ClusterRole it may `bind` by name)
//! before anything there needs a Secret. It holds no Secret access
//! cluster-wide, so it watches no Secret either: the few it keeps are read
//! by name when a reconcile needs them, and drift in them is repaired at the
//! next resync.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use super::children::{self, MANAGED_SELECTOR};
use super::error::Error;
use crate::api::PartnerTenant;
use crate::apply;
use crate::context::Context;
use crate::naming::TenantNames;

/// The RoleBinding in each tenant namespace that lets the operator at its Secrets.
pub const BINDING: &str = "partnerplane-operator-secrets";
/// The ClusterRole it binds unless the configuration names another.
pub const DEFAULT_CLUSTER_ROLE: &str = "partnerplane-operator-tenant-secrets";

/// How long a binding just written may take to reach the API server's
/// authorizer (its RBAC cache follows RoleBindings by watch).
const EFFECTIVE_WITHIN: Duration = Duration::from_secs(10);

/// Who the operator is, as an RBAC subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    ServiceAccount { namespace: String, name: String },
    User(String),
}

impl Subject {
    /// The subject authenticated as `username`.
    pub fn from_username(username: &str) -> Self {
        match username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        {
            Some((namespace, name)) => Self::ServiceAccount {
                namespace: namespace.into(),
                name: name.into(),
            },
            None => Self::User(username.into()),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Self::ServiceAccount { namespace, name } => {
                json!({"kind": "ServiceAccount", "name": name, "namespace": namespace})
            }
            Self::User(name) => {
                json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name})
            }
        }
    }
}

/// Which ClusterRole is bound, and to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretAccess {
    pub cluster_role: String,
    pub subject: Subject,
}

/// Asks the API server who this client is.
pub async fn whoami(client: &kube::Client) -> Result<Subject, kube::Error> {
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let username = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default();
    Ok(Subject::from_username(&username))
}

/// The operator's RoleBinding in the tenant's namespace.
pub fn binding(tenant: &PartnerTenant, names: &TenantNames, access: &SecretAccess) -> RoleBinding {
    children::build(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": children::metadata(tenant, names, BINDING),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": access.cluster_role},
        "subjects": [access.subject.to_json()],
    }))
}

/// A binding applied but perhaps not yet in force.
#[must_use = "the grant must be awaited before the access it binds is used"]
pub struct Pending {
    written: bool,
}

/// Applies the binding. The API server's authorizer learns of a new one a
/// moment later: [`in_force`] waits for that, so the writes that do not
/// need the access go in between.
pub async fn grant(
    tenant: &PartnerTenant,
    names: &TenantNames,
    ctx: &Context,
) -> Result<Pending, Error> {
    let desired = binding(tenant, names, &ctx.settings.secret_access);
    let written = apply::apply_to_indexed(
        &ctx.client,
        &ctx.stores.role_bindings,
        &desired,
        &ctx.metrics,
    )
    .await?;
    Ok(Pending { written })
}

/// Returns once the authorizer grants what a just-written binding binds.
pub async fn in_force(pending: Pending, names: &TenantNames, ctx: &Context) -> Result<(), Error> {
    if pending.written {
        until_effective(&ctx.client, &names.namespace).await?;
    }
    Ok(())
}

/// Removes the binding: the namespace is no tenant's any more.
pub async fn revoke(names: &TenantNames, ctx: &Context) -> Result<(), Error> {
    apply::delete::<RoleBinding>(&ctx.client, Some(&names.namespace), BINDING, &ctx.metrics)
        .await?;
    Ok(())
}

async fn until_effective(client: &kube::Client, namespace: &str) -> Result<(), Error> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.into()),
                verb: Some("get".into()),
                resource: Some("secrets".into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let api = Api::<SelfSubjectAccessReview>::all(client.clone());
    let deadline = tokio::time::Instant::now() + EFFECTIVE_WITHIN;
    let mut pause = Duration::from_millis(20);
    loop {
        let answer = api.create(&PostParams::default(), &review).await?;
        if answer.status.is_some_and(|s| s.allowed) {
            return Ok(());
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Err(Error::Waiting(format!(
                "RoleBinding {namespace}/{BINDING} to grant the operator access to the namespace's Secrets"
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// A fresh read of one Secret.
pub async fn get(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, kube::Error> {
    Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
}

/// Applies `desired` unless `live`, a fresh read of it, already matches.
pub async fn apply(ctx: &Context, desired: &Secret, live: Option<&Secret>) -> Result<bool, Error> {
    Ok(apply::apply_unless_current(&ctx.client, live, desired, &ctx.metrics).await?)
}

/// How current a list of Secrets must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// As etcd has it now. The API server answers once its cache has caught
    /// up with etcd's latest revision — of any object: right after the
    /// operator's own writes that took up to 100 ms, on every reconcile.
    Current,
    /// Whatever the API server's cache holds, at once. Enough where a
    /// Secret missed is found by a later pass: it can only be one written
    /// in the last moments, and the operator wrote its own in earlier ones.
    Cached,
}

/// The Secrets of the operator's making for `tenant` in its namespace.
/// Where the operator holds no access (a namespace never provisioned, or
/// its binding already revoked by an earlier pass of a cleanup), it can have
/// made none it still keeps: nothing is listed rather than a cleanup that
/// never completes.
pub async fn owned(
    ctx: &Context,
    names: &TenantNames,
    tenant: &str,
    freshness: Freshness,
) -> Result<Vec<Secret>, Error> {
    let params = ListParams::default().labels(MANAGED_SELECTOR);
    let params = match freshness {
        Freshness::Current => params,
        Freshness::Cached => params.match_any(),
    };
    let listed = match Api::<Secret>::namespaced(ctx.client.clone(), &names.namespace)
        .list_metadata(&params)
        .await
    {
        Ok(listed) => listed,
        Err(kube::Error::Api(e)) if e.code == 403 || e.code == 404 => {
            tracing::debug!(namespace = %names.namespace, code = e.code, "no Secret access here: none to list");
            return Ok(vec![]);
        }
        Err(e) => return Err(e.into()),
    };
    Ok(listed
        .items
        .into_iter()
        .filter(|s| children::tenant_of(s).as_deref() == Some(tenant))
        .map(|s| Secret {
            metadata: s.metadata,
            ..Secret::default()
        })
        .collect())
}

/// Deletes the tenant's Secrets whose names are not in `keep`, as the API
/// server's cache lists them: a reconcile's, which a later one follows.
pub async fn prune(
    ctx: &Context,
    names: &TenantNames,
    tenant: &str,
    keep: &[String],
) -> Result<(), Error> {
    delete_listed(ctx, names, tenant, keep, Freshness::Cached).await
}

/// Deletes every Secret of the tenant's, from a current list: a cleanup's,
/// after which no pass follows.
pub async fn prune_all(ctx: &Context, names: &TenantNames, tenant: &str) -> Result<(), Error> {
    delete_listed(ctx, names, tenant, &[], Freshness::Current).await
}

/// Each Secret is deleted only as listed: one changed since stays.
async fn delete_listed(
    ctx: &Context,
    names: &TenantNames,
    tenant: &str,
    keep: &[String],
    freshness: Freshness,
) -> Result<(), Error> {
    for secret in owned(ctx, names, tenant, freshness).await? {
        if !keep.contains(&secret.name_any()) {
            apply::delete_as_listed::<Secret>(&ctx.client, &secret.metadata, &ctx.metrics).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_account_is_bound_as_one() {
        assert_eq!(
            Subject::from_username("system:serviceaccount:partnerplane-system:partnerplane"),
            Subject::ServiceAccount {
                namespace: "partnerplane-system".into(),
                name: "partnerplane".into()
            }
        );
        assert_eq!(
            Subject::from_username("kubernetes-admin"),
            Subject::User("kubernetes-admin".into())
        );
        // Not a service account's form: bound as the user it names.
        assert_eq!(
            Subject::from_username("system:serviceaccount:broken"),
            Subject::User("system:serviceaccount:broken".into())
        );
    }

    #[test]
    fn the_binding_names_the_cluster_role_and_the_operator() {
        let spec = serde_yaml::from_str("displayName: Acme").unwrap();
        let tenant = PartnerTenant::new("acme", spec);
        let names = TenantNames::new("acme", None);
        let access = SecretAccess {
            cluster_role: "pp-tenant-secrets".into(),
            subject: Subject::from_username("system:serviceaccount:ops:pp"),
        };
        let rb = binding(&tenant, &names, &access);
        assert_eq!(
            rb.metadata.namespace.as_deref(),
            Some(names.namespace.as_str())
        );
        assert_eq!(rb.role_ref.kind, "ClusterRole");
        assert_eq!(rb.role_ref.name, "pp-tenant-secrets");
        let subject = &rb.subjects.clone().unwrap()[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", "pp", Some("ops"))
        );
        assert_eq!(children::tenant_of(&rb).as_deref(), Some("acme"));
    }
}
