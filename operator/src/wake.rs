//! Which watch events of a tenant's object wake the tenant. The cache
//! follows every event; a reconcile is worth starting only for a change
//! someone else made to what the operator keeps: not for the echo of its
//! own write, nor for a status update (a ResourceQuota's usage, written by
//! the quota controller), which leave the object's metadata — labels,
//! annotations, owners, generation and other managers' fields — as it was.
//! Deletions and (re)lists always wake.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::watcher::Event;

use crate::own_writes::OwnWrites;
use crate::verified::object_key;

/// What of an object's metadata tells a change that matters (the cache
/// keeps only other managers' entries on the object itself, see
/// `apply::keep_foreign_entries`; a spec change by anyone but the operator
/// shows there).
pub fn fingerprint(meta: &ObjectMeta) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    meta.generation.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    serde_json::to_string(&meta.owner_references)
        .unwrap_or_default()
        .hash(&mut hasher);
    serde_json::to_string(&meta.managed_fields)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

#[derive(Clone, Default)]
pub struct Wake {
    pub own_writes: OwnWrites,
    seen: Arc<Mutex<HashMap<(String, String), u64>>>,
}

impl Wake {
    /// The object whose tenant `event` should wake, if any.
    pub fn wakes<K: Resource + Clone>(&self, event: &Event<K>) -> Option<K> {
        let (object, always) = match event {
            Event::Apply(object) => (object, false),
            Event::InitApply(object) => (object, true),
            Event::Delete(object) => {
                if let Some(key) = object_key(object.meta()) {
                    self.seen.lock().expect("wake lock").remove(&key);
                }
                return Some(object.clone());
            }
            Event::Init | Event::InitDone => return None,
        };
        let key = object_key(object.meta())?;
        let print = fingerprint(object.meta());
        let before = self.seen.lock().expect("wake lock").insert(key, print);
        // Only a changed fingerprint may be an echo: an unrelated event
        // (a status update) must not use up the announcement.
        let wakes = always || (before != Some(print) && !self.own_writes.is_echo(object));
        if wakes {
            tracing::debug!(object = ?object_key(object.meta()), relisted = always, "a change wakes the tenant");
        }
        wakes.then(|| object.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::collections::BTreeMap;

    fn cm(version: &str, label: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("q".into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                labels: Some(BTreeMap::from([("l".to_string(), label.to_string())])),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    #[test]
    fn a_status_update_and_an_own_write_do_not_wake_others_changes_do() {
        let wake = Wake::default();
        assert!(
            wake.wakes(&Event::Apply(cm("1", "a"))).is_some(),
            "first sight"
        );
        assert!(
            wake.wakes(&Event::Apply(cm("2", "a"))).is_none(),
            "only the version moved: a status update"
        );
        wake.own_writes.announce(&cm("3", "b"));
        assert!(
            wake.wakes(&Event::Apply(cm("3", "b"))).is_none(),
            "own write"
        );
        assert!(
            wake.wakes(&Event::Apply(cm("4", "c"))).is_some(),
            "someone relabelled it"
        );
        assert!(
            wake.wakes(&Event::Delete(cm("4", "c"))).is_some(),
            "deleted"
        );
        assert!(
            wake.wakes(&Event::InitApply(cm("5", "c"))).is_some(),
            "relisted"
        );
        assert!(wake.wakes(&Event::<ConfigMap>::InitDone).is_none());
    }
}
