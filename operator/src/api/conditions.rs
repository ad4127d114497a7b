//! Status conditions following the Kubernetes and kstatus conventions:
//! `Ready`, `Reconciling`, `Stalled`, plus one condition per provisioned part.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The resource does what its spec asks.
pub const READY: &str = "Ready";
/// Work toward the spec is under way (kstatus).
pub const RECONCILING: &str = "Reconciling";
/// Progress needs a change to the spec or to the environment (kstatus).
pub const STALLED: &str = "Stalled";

/// Sets `condition` in `conditions` keyed by type, keeping `lastTransitionTime`
/// when the status did not change so that rewriting a status is a no-op.
pub fn upsert(conditions: &mut Vec<Condition>, mut condition: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            if existing.status == condition.status {
                condition.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = condition;
        }
        None => conditions.push(condition),
    }
}

/// Builds a condition; `status` is `"True"`, `"False"` or `"Unknown"`.
pub fn new(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let mut list = vec![];
        upsert(&mut list, new(READY, false, "Provisioning", "a", Some(1)));
        let first = list[0].last_transition_time.clone();
        upsert(&mut list, new(READY, false, "Provisioning", "b", Some(2)));
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].last_transition_time, first);
        assert_eq!(list[0].message, "b");
        assert_eq!(list[0].observed_generation, Some(2));
    }

    #[test]
    fn changed_status_moves_transition_time() {
        let old = Time(Timestamp::from_second(0).unwrap());
        let mut list = vec![Condition {
            last_transition_time: old.clone(),
            ..new(READY, false, "Provisioning", "", Some(1))
        }];
        upsert(&mut list, new(READY, true, "Provisioned", "", Some(1)));
        assert_ne!(list[0].last_transition_time, old);
        assert!(is_true(&list, READY));
        assert!(!is_true(&list, STALLED));
    }
}
