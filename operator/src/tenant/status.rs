//! The tenant's status: one condition per part, rolled up into the kstatus
//! conditions `Ready`, `Reconciling` and `Stalled`, or held as `Suspended`.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::PartnerTenantStatus;
#[cfg(test)]
use crate::api::conditions::{self, READY, RECONCILING, STALLED};

pub const NAMESPACE_READY: &str = "NamespaceReady";
pub const DATABASE_READY: &str = "DatabaseReady";
pub const CACHE_READY: &str = "CacheReady";
pub const SECRETS_READY: &str = "SecretsReady";

pub use crate::rollup::{PartOutcome, SUSPENDED, suspended};

/// Applies the parts' outcomes to `existing` conditions and rolls them up.
pub fn roll_up(
    existing: &[Condition],
    parts: &[PartOutcome],
    generation: Option<i64>,
) -> Vec<Condition> {
    crate::rollup::roll_up(
        existing,
        parts,
        generation,
        "every part of the tenant is provisioned",
    )
}

/// The status last written for each tenant, by UID.
///
/// A reconcile may read a tenant from the watch cache before the cache shows
/// the status the previous reconcile wrote; the controller's own status
/// writes do not start a reconcile, so nothing else would correct a write
/// skipped on such a stale read. A status is left unwritten only when both
/// the object read and the last write show it.
///
/// Only a fingerprint of each status is kept, so the map costs the same
/// whatever the status holds.
#[derive(Debug, Default)]
pub struct Written(Mutex<HashMap<String, u64>>);

fn fingerprint(status: &PartnerTenantStatus) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(status)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

impl Written {
    /// Records `status` as written for the tenant `uid`.
    pub fn record(&self, uid: &str, status: &PartnerTenantStatus) {
        self.0
            .lock()
            .expect("not poisoned")
            .insert(uid.to_string(), fingerprint(status));
    }

    /// Forgets the tenant `uid` (it is gone).
    pub fn forget(&self, uid: &str) {
        self.0.lock().expect("not poisoned").remove(uid);
    }

    /// Whether `read` shows the status last written for `uid` (or none was
    /// written by this process).
    pub fn shows(&self, uid: &str, read: Option<&PartnerTenantStatus>) -> bool {
        self.0
            .lock()
            .expect("not poisoned")
            .get(uid)
            .is_none_or(|last| read.is_some_and(|read| *last == fingerprint(read)))
    }

    /// Whether writing `status` would change nothing: the tenant as `read`
    /// has it, and no later write for `uid` (not yet in `read`) differs.
    pub fn is_current(
        &self,
        uid: &str,
        read: Option<&PartnerTenantStatus>,
        status: &PartnerTenantStatus,
    ) -> bool {
        read == Some(status)
            && self
                .0
                .lock()
                .expect("not poisoned")
                .get(uid)
                .is_none_or(|last| *last == fingerprint(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ready(ready: bool) -> PartnerTenantStatus {
        let part = if ready {
            PartOutcome::ready(CACHE_READY, "ok")
        } else {
            PartOutcome::failed(CACHE_READY, "RedisUnavailable", "down".into(), false)
        };
        PartnerTenantStatus {
            observed_generation: Some(1),
            conditions: roll_up(&[], &[part], Some(1)),
            ..Default::default()
        }
    }

    #[test]
    fn a_status_the_read_and_the_last_write_show_is_current() {
        let written = Written::default();
        let ready = with_ready(true);
        // Nothing written yet (a restart): the read alone decides.
        assert!(written.is_current("u", Some(&ready), &ready));
        assert!(!written.is_current("u", None, &ready));
        written.record("u", &ready);
        assert!(written.is_current("u", Some(&ready), &ready));
        assert!(!written.is_current("u", Some(&with_ready(false)), &ready));
    }

    #[test]
    fn a_read_shows_the_last_write_only_when_it_holds_it() {
        let written = Written::default();
        let (ready, failing) = (with_ready(true), with_ready(false));
        assert!(written.shows("u", None), "nothing written by this process");
        written.record("u", &ready);
        assert!(written.shows("u", Some(&ready)));
        assert!(!written.shows("u", Some(&failing)), "a read from before it");
        assert!(!written.shows("u", None), "a read from before any status");
        assert!(
            written.shows("v", Some(&failing)),
            "other tenants are apart"
        );
    }

    #[test]
    fn a_stale_read_does_not_hide_a_later_write() {
        let written = Written::default();
        let ready = with_ready(true);
        let failing = with_ready(false);
        written.record("u", &ready);
        // Written, but the cache still shows the one before.
        written.record("u", &failing);
        assert!(
            !written.is_current("u", Some(&ready), &ready),
            "the object has the failing status; ready must be written again"
        );
        written.forget("u");
        assert!(written.is_current("u", Some(&ready), &ready));
        assert!(
            written.is_current("v", Some(&failing), &failing),
            "other tenants are apart"
        );
    }

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
        assert!(
            conditions::find(&c, READY).is_none(),
            "kstatus reads any Ready other than True as InProgress"
        );
        assert!(
            conditions::find(&c, SUSPENDED)
                .unwrap()
                .message
                .contains("while not every part is provisioned")
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
    fn suspending_a_new_tenant_settles_without_ready() {
        let c = suspended(&[], Some(1));
        let types: Vec<&str> = c.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [RECONCILING, STALLED, SUSPENDED]);
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
