//! Which watch events of a tenant's object wake the tenant. The cache
//! follows every event; a reconcile is worth starting only for a change
//! someone else made to what the operator keeps: not for the echo of its
//! own write, nor for a status update (a ResourceQuota's usage, written by
//! the quota controller), which leave the object's metadata — labels,
//! annotations, owners, generation and other managers' fields — as it was.
//! Deletions always wake; a relist wakes for what changed or went while
//! the watch was down.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::watcher::Event;

use crate::own_writes::OwnWrites;
use crate::slim::Slim;

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
    state: Arc<Mutex<Seen>>,
    keys: RandomState,
}

/// Fingerprints only: at 10,000 tenants about 90,000 objects are seen, and
/// their names are already in the cache beside this.
#[derive(Default)]
struct Seen {
    /// Each object's fingerprint, by a fingerprint of its namespace and name.
    objects: HashMap<u64, u64>,
    /// During a relist: the objects it has shown so far. They replace
    /// `objects` only once it ends, so one that fails part way leaves
    /// `objects` as the cache still has them.
    relisted: Option<HashMap<u64, u64>>,
}

impl Wake {
    fn key(&self, namespace: Option<&str>, name: &str) -> u64 {
        self.keys.hash_one((namespace.unwrap_or_default(), name))
    }

    /// The objects whose tenants `event` should wake. A relist (after a
    /// restart of the API server, an expired watch) wakes only for objects
    /// that changed or went while the watch was down: 10,000 tenants must
    /// not all be reconciled because a connection dropped. `cached` gives
    /// the cache as it was before the relist; it is asked for only when the
    /// relist ends, before the cache takes the relisted objects.
    pub fn wakes<K, S>(
        &self,
        event: &Event<K>,
        cached: impl FnOnce() -> Vec<Arc<Slim<S>>>,
    ) -> Vec<K>
    where
        K: Resource + Clone + Default,
    {
        let mut seen = self.state.lock().expect("wake lock");
        let object = match event {
            Event::Init => {
                seen.relisted = Some(HashMap::new());
                return vec![];
            }
            Event::InitDone => {
                let Some(relisted) = seen.relisted.take() else {
                    return vec![];
                };
                seen.objects = relisted;
                let seen = &*seen;
                return cached()
                    .into_iter()
                    .filter(|old| {
                        !seen
                            .objects
                            .contains_key(&self.key(old.namespace.as_deref(), &old.name))
                    })
                    .map(|old| {
                        tracing::debug!(object = %old.name, namespace = ?old.namespace, "gone while the watch was down");
                        tombstone::<K, S>(&old)
                    })
                    .collect();
            }
            Event::Delete(object) => {
                let meta = object.meta();
                if let Some(name) = &meta.name {
                    let key = self.key(meta.namespace.as_deref(), name);
                    seen.objects.remove(&key);
                }
                return vec![object.clone()];
            }
            Event::Apply(object) | Event::InitApply(object) => object,
        };
        let meta = object.meta();
        let Some(name) = &meta.name else {
            return vec![];
        };
        let key = self.key(meta.namespace.as_deref(), name);
        let print = fingerprint(meta);
        let before = match (event, seen.relisted.as_mut()) {
            (Event::InitApply(_), Some(relisted)) => {
                relisted.insert(key, print);
                seen.objects.get(&key).copied()
            }
            _ => seen.objects.insert(key, print),
        };
        // Only a changed fingerprint may be an echo: an unrelated event
        // (a status update) must not use up the announcement.
        let wakes = before != Some(print) && !self.own_writes.is_echo(object);
        if wakes {
            tracing::debug!(object = %name, namespace = ?meta.namespace, "a change wakes the tenant");
            vec![object.clone()]
        } else {
            vec![]
        }
    }
}

/// An object known only from the cache, for its tenant's wake-up.
fn tombstone<K: Resource + Default, S>(cached: &Slim<S>) -> K {
    let mut object = K::default();
    let meta = object.meta_mut();
    meta.namespace = cached.namespace.clone();
    meta.name = Some(cached.name.clone());
    meta.annotations = cached.tenant().map(|t| {
        std::collections::BTreeMap::from([(
            crate::tenant::children::TENANT_ANNOTATION.to_string(),
            t.to_string(),
        )])
    });
    object
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

    fn woken(wake: &Wake, event: Event<ConfigMap>) -> bool {
        !wake
            .wakes(&event, Vec::<Arc<Slim<ConfigMap>>>::new)
            .is_empty()
    }

    #[test]
    fn a_status_update_and_an_own_write_do_not_wake_others_changes_do() {
        let wake = Wake::default();
        assert!(woken(&wake, Event::Apply(cm("1", "a"))), "first sight");
        assert!(
            !woken(&wake, Event::Apply(cm("2", "a"))),
            "only the version moved: a status update"
        );
        wake.own_writes.announce(&cm("3", "b"));
        assert!(!woken(&wake, Event::Apply(cm("3", "b"))), "own write");
        assert!(
            woken(&wake, Event::Apply(cm("4", "c"))),
            "someone relabelled it"
        );
        assert!(woken(&wake, Event::Delete(cm("4", "c"))), "deleted");
        assert!(!woken(&wake, Event::InitDone));
    }

    #[test]
    fn a_relist_wakes_only_for_what_changed_or_went_meanwhile() {
        let wake = Wake::default();
        let named = |name: &str, label: &str| {
            let mut object = cm("1", label);
            object.metadata.name = Some(name.into());
            object.metadata.annotations.get_or_insert_default().insert(
                crate::tenant::children::TENANT_ANNOTATION.into(),
                format!("t-{name}"),
            );
            object
        };
        for name in ["kept", "edited", "deleted"] {
            assert!(woken(&wake, Event::Apply(named(name, "a"))));
        }
        assert!(!woken(&wake, Event::Init));
        assert!(
            !woken(&wake, Event::InitApply(named("kept", "a"))),
            "unchanged across the relist"
        );
        assert!(
            woken(&wake, Event::InitApply(named("edited", "b"))),
            "changed while the watch was down"
        );
        // The cache as it was before the relist: what the watch had shown.
        let cached = || {
            ["kept", "edited", "deleted"]
                .map(|name| Arc::new(Slim::<ConfigMap>::of(&named(name, "a").metadata)))
                .to_vec()
        };
        let gone = wake.wakes(&Event::<ConfigMap>::InitDone, cached);
        assert_eq!(gone.len(), 1, "deleted while the watch was down");
        assert_eq!(
            crate::tenant::children::tenant_of(&gone[0]).as_deref(),
            Some("t-deleted")
        );
        assert_eq!(gone[0].metadata.namespace.as_deref(), Some("ns"));
        // Seen again after the relist: new to the cache, so it wakes.
        assert!(woken(&wake, Event::Apply(named("deleted", "a"))));
    }
}
