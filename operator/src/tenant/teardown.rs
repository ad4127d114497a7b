//! What deleting a tenant may touch, as a pure plan.
//!
//! Cleanup touches only the backends the tenant's status records as used, so
//! an outage of a backend it never used cannot block its deletion. A backend
//! that is gone for good (no longer configured, or failing) can be let go
//! with an explicit annotation, and whatever is left behind there is named;
//! a backend that answers is always cleaned up, annotation or not, so the
//! annotation cannot be used to keep access alive past deletion.

use std::collections::BTreeSet;

use super::ownership::Origin;
use crate::api::tenant::DeletionPolicy;

/// Annotation on a PartnerTenant listing backends its deletion may leave
/// behind (`postgres`, `redis`, `vault`, comma-separated, or `all`).
pub const ABANDON: &str = "partnerplane.io/abandon-backends";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Backend {
    Postgres,
    Redis,
    Vault,
    Workflows,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Redis => "redis",
            Self::Vault => "vault",
            Self::Workflows => "n8n",
        }
    }
}

/// The backends named by the abandon annotation; unknown words are ignored.
pub fn parse_abandon(value: Option<&str>) -> BTreeSet<Backend> {
    let mut out = BTreeSet::new();
    for word in value.unwrap_or_default().split(',').map(str::trim) {
        match word {
            "all" => out.extend([
                Backend::Postgres,
                Backend::Redis,
                Backend::Vault,
                Backend::Workflows,
            ]),
            "postgres" => {
                out.insert(Backend::Postgres);
            }
            "redis" => {
                out.insert(Backend::Redis);
            }
            "vault" | "openbao" => {
                out.insert(Backend::Vault);
            }
            "n8n" | "workflows" => {
                out.insert(Backend::Workflows);
            }
            _ => {}
        }
    }
    out
}

/// What the tenant used, as its status records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Used {
    /// The Postgres backend holding its schema and role, and whether the
    /// operator's configuration still names it.
    pub postgres: Option<(String, bool)>,
    /// An ACL user on the shared Redis.
    pub shared_redis: bool,
    /// A policy, auth role and secrets in Vault/OpenBao.
    pub vault: bool,
    /// The namespace, when it is the tenant's.
    pub namespace: Option<Origin>,
    /// Workflows and credentials in n8n, and whether the operator's
    /// configuration still names n8n.
    pub workflows: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    DisablePostgres(String),
    DropPostgres(String),
    RemoveRedisUser,
    DeleteRedisKeys,
    DetachVault,
    DeleteVaultSecrets,
    /// Stop the tenant's workflows in n8n; they and their credentials stay.
    DeactivateWorkflows,
    /// Remove the tenant's workflows, credentials and tag from n8n.
    DeleteWorkflows,
    /// The operator created the namespace: it goes with everything in it.
    DeleteNamespace,
    /// An adopted namespace stays; the operator's objects in it go.
    DeleteOwnedObjects,
}

impl Step {
    /// The backend a step talks to; `None` for Kubernetes.
    pub fn backend(&self) -> Option<Backend> {
        match self {
            Self::DisablePostgres(_) | Self::DropPostgres(_) => Some(Backend::Postgres),
            Self::RemoveRedisUser | Self::DeleteRedisKeys => Some(Backend::Redis),
            Self::DetachVault | Self::DeleteVaultSecrets => Some(Backend::Vault),
            Self::DeactivateWorkflows | Self::DeleteWorkflows => Some(Backend::Workflows),
            Self::DeleteNamespace | Self::DeleteOwnedObjects => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Backends no longer configured that the annotation lets go of.
    pub abandoned: Vec<Backend>,
    /// Why cleanup cannot proceed without an admin's decision.
    pub blocked: Option<String>,
}

/// The steps of deleting a tenant under `policy`.
pub fn plan(policy: DeletionPolicy, used: &Used, abandon: &BTreeSet<Backend>) -> Plan {
    let delete = policy == DeletionPolicy::Delete;
    let mut plan = Plan::default();
    // Workflows stop first: none runs while the access it uses goes.
    match used.workflows {
        Some(false) if abandon.contains(&Backend::Workflows) => {
            plan.abandoned.push(Backend::Workflows)
        }
        Some(false) => {
            plan.blocked = Some(format!(
                "n8n is no longer configured, so the tenant's workflows there cannot be removed or stopped; \
                 configure it again, or annotate the tenant {ABANDON}=n8n to leave them behind"
            ))
        }
        Some(true) if delete => plan.steps.push(Step::DeleteWorkflows),
        Some(true) => plan.steps.push(Step::DeactivateWorkflows),
        None => {}
    }
    if let Some((backend, configured)) = &used.postgres {
        if !configured && abandon.contains(&Backend::Postgres) {
            plan.abandoned.push(Backend::Postgres);
        } else if !configured {
            plan.blocked = Some(format!(
                "Postgres backend {backend:?} is no longer configured, so the tenant's schema and role there cannot be removed; \
                 configure it again, or annotate the tenant {ABANDON}=postgres to leave them behind"
            ));
        } else if delete {
            plan.steps.push(Step::DropPostgres(backend.clone()));
        } else {
            plan.steps.push(Step::DisablePostgres(backend.clone()));
        }
    }
    if used.shared_redis {
        plan.steps.push(Step::RemoveRedisUser);
        if delete {
            plan.steps.push(Step::DeleteRedisKeys);
        }
    }
    if used.vault {
        plan.steps.push(Step::DetachVault);
        if delete {
            plan.steps.push(Step::DeleteVaultSecrets);
        }
    }
    if delete {
        match used.namespace {
            Some(Origin::Created) => plan.steps.push(Step::DeleteNamespace),
            Some(Origin::Adopted) => plan.steps.push(Step::DeleteOwnedObjects),
            None => {}
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used_everything() -> Used {
        Used {
            postgres: Some(("default".into(), true)),
            shared_redis: true,
            vault: true,
            namespace: Some(Origin::Created),
            workflows: None,
        }
    }

    #[test]
    fn retain_removes_access_only() {
        let p = plan(DeletionPolicy::Retain, &used_everything(), &BTreeSet::new());
        assert_eq!(
            p.steps,
            vec![
                Step::DisablePostgres("default".into()),
                Step::RemoveRedisUser,
                Step::DetachVault
            ]
        );
    }

    #[test]
    fn delete_removes_everything_but_never_an_adopted_namespace() {
        let p = plan(DeletionPolicy::Delete, &used_everything(), &BTreeSet::new());
        assert!(p.steps.contains(&Step::DropPostgres("default".into())));
        assert!(p.steps.contains(&Step::DeleteRedisKeys));
        assert!(p.steps.contains(&Step::DeleteVaultSecrets));
        assert_eq!(p.steps.last(), Some(&Step::DeleteNamespace));
        let adopted = Used {
            namespace: Some(Origin::Adopted),
            ..used_everything()
        };
        let p = plan(DeletionPolicy::Delete, &adopted, &BTreeSet::new());
        assert!(!p.steps.contains(&Step::DeleteNamespace));
        assert!(p.steps.contains(&Step::DeleteOwnedObjects));
    }

    #[test]
    fn workflows_stop_first_and_go_only_with_delete() {
        let with_workflows = Used {
            workflows: Some(true),
            ..used_everything()
        };
        let p = plan(DeletionPolicy::Delete, &with_workflows, &BTreeSet::new());
        assert_eq!(p.steps.first(), Some(&Step::DeleteWorkflows));
        let p = plan(DeletionPolicy::Retain, &with_workflows, &BTreeSet::new());
        assert_eq!(p.steps.first(), Some(&Step::DeactivateWorkflows));
        assert!(!p.steps.contains(&Step::DeleteWorkflows));
    }

    #[test]
    fn workflows_in_an_n8n_no_longer_configured_block_until_abandoned() {
        let gone = Used {
            workflows: Some(false),
            ..used_everything()
        };
        let p = plan(DeletionPolicy::Delete, &gone, &BTreeSet::new());
        assert!(
            p.blocked
                .as_deref()
                .is_some_and(|b| b.contains("abandon-backends=n8n"))
        );
        let p = plan(DeletionPolicy::Delete, &gone, &parse_abandon(Some("n8n")));
        assert_eq!(p.blocked, None);
        assert_eq!(p.abandoned, vec![Backend::Workflows]);
        assert!(!p.steps.contains(&Step::DeleteWorkflows));
    }

    #[test]
    fn backends_the_tenant_never_used_are_not_touched() {
        let used = Used {
            postgres: Some(("default".into(), true)),
            shared_redis: false,
            vault: false,
            namespace: None,
            workflows: None,
        };
        let p = plan(DeletionPolicy::Delete, &used, &BTreeSet::new());
        assert_eq!(p.steps, vec![Step::DropPostgres("default".into())]);
    }

    #[test]
    fn a_backend_no_longer_configured_blocks_until_abandoned() {
        let used = Used {
            postgres: Some(("eu-west".into(), false)),
            ..used_everything()
        };
        let p = plan(DeletionPolicy::Retain, &used, &BTreeSet::new());
        assert!(p.blocked.as_deref().unwrap().contains("eu-west"));
        let p = plan(
            DeletionPolicy::Retain,
            &used,
            &parse_abandon(Some("postgres")),
        );
        assert_eq!(p.blocked, None);
        assert_eq!(p.abandoned, vec![Backend::Postgres]);
        assert!(
            !p.steps
                .iter()
                .any(|s| matches!(s, Step::DisablePostgres(_)))
        );
    }

    #[test]
    fn the_abandon_annotation_reads_lists_and_all() {
        assert_eq!(
            parse_abandon(Some("vault, redis")),
            BTreeSet::from([Backend::Redis, Backend::Vault])
        );
        assert_eq!(parse_abandon(Some("all")).len(), 4);
        assert!(parse_abandon(Some("nonsense")).is_empty());
        assert!(parse_abandon(None).is_empty());
    }
}
