//! The tenant's status: one condition per part, rolled up into the kstatus
//! conditions `Ready`, `Reconciling` and `Stalled`, or held as `Suspended`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::conditions::{self, READY, RECONCILING, STALLED};

pub const NAMESPACE_READY: &str = "NamespaceReady";
pub const DATABASE_READY: &str = "DatabaseReady";
pub const CACHE_READY: &str = "CacheReady";
pub const SECRETS_READY: &str = "SecretsReady";
/// Present, and `True`, only while `spec.suspend` is true.
pub const SUSPENDED: &str = "Suspended";

/// The outcome of one part of a reconcile.
#[derive(Debug, Clone)]
pub struct PartOutcome {
    pub condition: &'static str,
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
    pub permanent: bool,
}

impl PartOutcome {
    pub fn ready(condition: &'static str, message: impl Into<String>) -> Self {
        Self {
            condition,
            ready: true,
            reason: "Provisioned",
            message: message.into(),
            permanent: false,
        }
    }

    pub fn failed(
        condition: &'static str,
        reason: &'static str,
        message: String,
        permanent: bool,
    ) -> Self {
        Self {
            condition,
            ready: false,
            reason,
            message,
            permanent,
        }
    }
}

/// Applies the parts' outcomes to `existing` conditions and rolls them up.
pub fn roll_up(
    existing: &[Condition],
    parts: &[PartOutcome],
    generation: Option<i64>,
) -> Vec<Condition> {
    let mut out = existing.to_vec();
    // A reconcile that runs the parts is no longer suspended.
    out.retain(|c| c.type_ != SUSPENDED);
    for part in parts {
        conditions::upsert(
            &mut out,
            conditions::new(
                part.condition,
                part.ready,
                part.reason,
                part.message.clone(),
                generation,
            ),
        );
    }
    let failed: Vec<&PartOutcome> = parts.iter().filter(|p| !p.ready).collect();
    let ready = failed.is_empty();
    let stalled = failed.iter().find(|p| p.permanent);
    let (reason, message) = match (failed.first(), stalled) {
        (_, Some(p)) => (p.reason, format!("{}: {}", p.condition, p.message)),
        (Some(p), None) => (p.reason, format!("{}: {}", p.condition, p.message)),
        (None, None) => (
            "Provisioned",
            "every part of the tenant is provisioned".to_string(),
        ),
    };
    conditions::upsert(
        &mut out,
        conditions::new(READY, ready, reason, message.clone(), generation),
    );
    conditions::upsert(
        &mut out,
        conditions::new(
            RECONCILING,
            !ready && stalled.is_none(),
            if ready { "Provisioned" } else { reason },
            if ready {
                String::new()
            } else {
                message.clone()
            },
            generation,
        ),
    );
    conditions::upsert(
        &mut out,
        conditions::new(
            STALLED,
            stalled.is_some(),
            stalled.map_or("Progressing", |p| p.reason),
            stalled.map_or(String::new(), |_| message),
            generation,
        ),
    );
    out
}

/// The conditions of a suspended tenant: settled, so that kstatus reads it as
/// `Current` once `observedGeneration` matches, with `Suspended=True` saying
/// why nothing moves. Part conditions are kept as last observed; `Ready`
/// stays `True` if it was, since suspending leaves provisioned state as is,
/// and otherwise says the tenant was suspended before it was ready.
pub fn suspended(existing: &[Condition], generation: Option<i64>) -> Vec<Condition> {
    const REASON: &str = "Suspended";
    let mut out = existing.to_vec();
    if !conditions::is_true(&out, READY) {
        conditions::upsert(
            &mut out,
            conditions::new(
                READY,
                false,
                REASON,
                "suspended before every part was provisioned",
                generation,
            ),
        );
    }
    conditions::upsert(
        &mut out,
        conditions::new(RECONCILING, false, REASON, "", generation),
    );
    conditions::upsert(
        &mut out,
        conditions::new(STALLED, false, REASON, "", generation),
    );
    conditions::upsert(
        &mut out,
        conditions::new(
            SUSPENDED,
            true,
            REASON,
            "spec.suspend is true: the operator leaves provisioned state as is",
            generation,
        ),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_parts_ready_means_ready() {
        let parts = [
            PartOutcome::ready(NAMESPACE_READY, "ok"),
            PartOutcome::ready(DATABASE_READY, "ok"),
        ];
        let c = roll_up(&[], &parts, Some(3));
        assert!(conditions::is_true(&c, READY));
        assert!(!conditions::is_true(&c, RECONCILING));
        assert!(!conditions::is_true(&c, STALLED));
        assert!(c.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn a_transient_failure_is_reconciling_and_names_the_part() {
        let parts = [
            PartOutcome::ready(NAMESPACE_READY, "ok"),
            PartOutcome::failed(
                DATABASE_READY,
                "PostgresUnavailable",
                "backend default down".into(),
                false,
            ),
        ];
        let c = roll_up(&[], &parts, Some(1));
        let ready = conditions::find(&c, READY).unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "PostgresUnavailable");
        assert!(ready.message.contains("DatabaseReady"));
        assert!(conditions::is_true(&c, RECONCILING));
        assert!(conditions::is_true(&c, NAMESPACE_READY));
    }

    #[test]
    fn a_permanent_failure_is_stalled() {
        let parts = [PartOutcome::failed(
            DATABASE_READY,
            "UnknownPostgresBackend",
            "no such backend".into(),
            true,
        )];
        let c = roll_up(&[], &parts, Some(1));
        assert!(conditions::is_true(&c, STALLED));
        assert!(!conditions::is_true(&c, RECONCILING));
    }

    fn ready_tenant() -> Vec<Condition> {
        let parts = [
            PartOutcome::ready(NAMESPACE_READY, "ok"),
            PartOutcome::ready(DATABASE_READY, "ok"),
        ];
        roll_up(&[], &parts, Some(1))
    }

    #[test]
    fn suspending_a_ready_tenant_keeps_ready_and_settles() {
        let before = ready_tenant();
        let c = suspended(&before, Some(2));
        assert_eq!(
            conditions::find(&c, READY),
            conditions::find(&before, READY),
            "Ready is left exactly as it was"
        );
        for type_ in [RECONCILING, STALLED] {
            let condition = conditions::find(&c, type_).unwrap();
            assert_eq!(condition.status, "False", "{type_}");
            assert_eq!(condition.reason, "Suspended", "{type_}");
            assert_eq!(condition.observed_generation, Some(2), "{type_}");
        }
        let suspended_condition = conditions::find(&c, SUSPENDED).unwrap();
        assert_eq!(suspended_condition.status, "True");
        assert_eq!(suspended_condition.observed_generation, Some(2));
        assert!(conditions::is_true(&c, NAMESPACE_READY));
        assert!(conditions::is_true(&c, DATABASE_READY));
    }

    #[test]
    fn suspending_a_tenant_that_was_not_ready_says_so() {
        let parts = [PartOutcome::failed(
            DATABASE_READY,
            "PostgresUnavailable",
            "backend default down".into(),
            false,
        )];
        let before = roll_up(&[], &parts, Some(1));
        assert!(conditions::is_true(&before, RECONCILING));
        let c = suspended(&before, Some(2));
        let ready = conditions::find(&c, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Suspended")
        );
        assert!(!conditions::is_true(&c, RECONCILING));
        assert!(!conditions::is_true(&c, STALLED));
        assert_eq!(
            conditions::find(&c, DATABASE_READY).unwrap().reason,
            "PostgresUnavailable",
            "part conditions stay as last observed"
        );
    }

    #[test]
    fn suspending_a_new_tenant_sets_every_kstatus_condition() {
        let c = suspended(&[], Some(1));
        let types: Vec<&str> = c.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, RECONCILING, STALLED, SUSPENDED]);
    }

    #[test]
    fn suspending_twice_changes_nothing() {
        let once = suspended(&ready_tenant(), Some(2));
        assert_eq!(suspended(&once, Some(2)), once);
    }

    #[test]
    fn resuming_removes_suspended() {
        let c = suspended(&ready_tenant(), Some(2));
        let resumed = roll_up(&c, &[PartOutcome::ready(NAMESPACE_READY, "ok")], Some(3));
        assert!(conditions::find(&resumed, SUSPENDED).is_none());
        assert!(conditions::is_true(&resumed, READY));
    }
}
