//! The tenant's status: one condition per part, rolled up into the kstatus
//! conditions `Ready`, `Reconciling` and `Stalled`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::conditions::{self, READY, RECONCILING, STALLED};

pub const NAMESPACE_READY: &str = "NamespaceReady";
pub const DATABASE_READY: &str = "DatabaseReady";
pub const CACHE_READY: &str = "CacheReady";
pub const SECRETS_READY: &str = "SecretsReady";

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
}
