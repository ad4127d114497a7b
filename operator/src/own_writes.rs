//! The operator's own writes to the objects it watches, so that the watch
//! event a write causes does not start another reconcile of the tenant
//! that made it (it would find nothing to do, but still ensure every
//! backend once more: 2 ensures per tenant instead of 1 in a bulk apply).
//!
//! A write is announced before it is sent — the watch event can arrive
//! before the response does — with the metadata it sets. An event whose
//! object carries that metadata, with no other manager's fields and no
//! deletion, is the write's echo. Each announcement is used once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::verified::object_key;

#[derive(Debug, Clone, PartialEq)]
struct Announced {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    owners: Vec<OwnerReference>,
}

impl Announced {
    fn of(meta: &ObjectMeta) -> Self {
        Self {
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            owners: meta.owner_references.clone().unwrap_or_default(),
        }
    }

    /// Whether `live` shows this write and nothing else of note. Labels and
    /// annotations others (or the API server) add are allowed: an addition
    /// by another manager shows in its managedFields entry, which the
    /// watch cache keeps.
    fn seen_in(&self, live: &ObjectMeta) -> bool {
        let contains = |want: &BTreeMap<String, String>,
                        have: &Option<BTreeMap<String, String>>| {
            want.iter()
                .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
        };
        live.deletion_timestamp.is_none()
            && live.managed_fields.as_ref().is_none_or(Vec::is_empty)
            && contains(&self.labels, &live.labels)
            && contains(&self.annotations, &live.annotations)
            && self.owners == live.owner_references.clone().unwrap_or_default()
    }
}

/// Announced writes by `(namespace, name)`.
#[derive(Clone, Default)]
pub struct OwnWrites(Arc<Mutex<HashMap<(String, String), Announced>>>);

impl OwnWrites {
    /// Announces a write of `desired`, before it is sent.
    pub fn announce<K: Resource>(&self, desired: &K) {
        let meta = desired.meta();
        if let Some(key) = object_key(meta) {
            self.0
                .lock()
                .expect("own writes lock")
                .insert(key, Announced::of(meta));
        }
    }

    /// Withdraws an announcement whose write failed.
    pub fn withdraw<K: Resource>(&self, desired: &K) {
        if let Some(key) = object_key(desired.meta()) {
            self.0.lock().expect("own writes lock").remove(&key);
        }
    }

    /// Whether `event_object` is the echo of an announced write (each
    /// announcement is used once). Anything else — another manager's
    /// change, a deletion — is not.
    pub fn is_echo<K: Resource>(&self, event_object: &K) -> bool {
        let meta = event_object.meta();
        let Some(key) = object_key(meta) else {
            return false;
        };
        let mut writes = self.0.lock().expect("own writes lock");
        if writes.get(&key).is_some_and(|a| a.seen_in(meta)) {
            writes.remove(&key);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};

    fn cm(labels: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("a".into()),
                namespace: Some("ns".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    #[test]
    fn the_announced_metadata_is_an_echo_once_even_with_labels_added() {
        let own = OwnWrites::default();
        assert!(
            !own.is_echo(&cm(&[("tenant", "acme")])),
            "nothing announced"
        );
        own.announce(&cm(&[("tenant", "acme")]));
        assert!(!own.is_echo(&cm(&[("tenant", "other")])), "another value");
        assert!(own.is_echo(&cm(&[
            ("tenant", "acme"),
            ("kubernetes.io/metadata.name", "a")
        ])));
        assert!(!own.is_echo(&cm(&[("tenant", "acme")])), "used once");
    }

    #[test]
    fn another_managers_fields_or_a_deletion_are_never_an_echo() {
        let own = OwnWrites::default();
        own.announce(&cm(&[("tenant", "acme")]));
        let mut edited = cm(&[("tenant", "acme")]);
        edited.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl-edit".into()),
            ..ManagedFieldsEntry::default()
        }]);
        assert!(!own.is_echo(&edited));
        let mut deleted = cm(&[("tenant", "acme")]);
        deleted.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert!(!own.is_echo(&deleted));
        own.withdraw(&cm(&[]));
        assert!(!own.is_echo(&cm(&[("tenant", "acme")])), "withdrawn");
    }
}
