//! A secondary index over a watch cache: object names grouped by a key (the
//! namespace, a tenant annotation), kept from the same watch events as the
//! cache, so a reconcile finds one tenant's objects without scanning every
//! tenant's (which made a bulk apply of N tenants cost O(N²)).

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;

use crate::slim::Slim;

/// What an object is filed under, if anything.
pub type KeyFn = fn(&ObjectMeta) -> Option<String>;

/// Names by key, rebuilt on every (re)list like the cache itself.
#[derive(Clone)]
pub struct Index {
    key: KeyFn,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    live: Names,
    /// Filled during a relist, swapped in when it completes.
    relisting: Option<Names>,
}

/// A key has a handful of names (a tenant's objects of one kind), so a
/// short vector costs far less than a set.
type Names = HashMap<String, Vec<String>>;

fn file(map: &mut Names, key: String, name: String) {
    let names = map.entry(key).or_default();
    if !names.contains(&name) {
        names.push(name);
        names.sort();
    }
}

fn unfile(map: &mut Names, key: &str, name: &str) {
    if let Some(names) = map.get_mut(key) {
        names.retain(|n| n != name);
        if names.is_empty() {
            map.remove(key);
        }
    }
}

impl Index {
    pub fn new(key: KeyFn) -> Self {
        Self {
            key,
            state: Arc::default(),
        }
    }

    /// Follows one watch event. An object whose key changed stays filed
    /// under its old key too; readers check the object itself.
    pub fn observe<K: Resource>(&self, event: &Event<K>) {
        let entry = |object: &K| {
            let meta = object.meta();
            Some(((self.key)(meta)?, meta.name.clone()?))
        };
        let mut state = self.state.lock().expect("index lock");
        match event {
            Event::Init => state.relisting = Some(HashMap::new()),
            Event::InitApply(object) => {
                if let (Some((key, name)), Some(map)) = (entry(object), state.relisting.as_mut()) {
                    file(map, key, name);
                }
            }
            Event::InitDone => {
                if let Some(map) = state.relisting.take() {
                    state.live = map;
                }
            }
            Event::Apply(object) => {
                if let Some((key, name)) = entry(object) {
                    file(&mut state.live, key, name);
                }
            }
            Event::Delete(object) => {
                if let Some((key, name)) = entry(object) {
                    unfile(&mut state.live, &key, &name);
                }
            }
        }
    }

    /// The names filed under `key`.
    pub fn names(&self, key: &str) -> Vec<String> {
        let state = self.state.lock().expect("index lock");
        state.live.get(key).cloned().unwrap_or_default()
    }
}

/// The namespace of a namespaced object.
pub fn by_namespace(meta: &ObjectMeta) -> Option<String> {
    meta.namespace.clone()
}

/// A watch cache of one kind holding only what decisions read of each
/// object (see [`Slim`]), with what reconciles need beside it: an index by
/// namespace (or, for cluster-scoped objects, another key), the operator's
/// own writes (whose watch events start no reconcile), and the version at
/// which each object last matched what the operator wants (so that an
/// unchanged object is never read in full).
#[derive(Clone)]
pub struct Indexed<K: Resource<DynamicType = ()> + Clone + 'static> {
    pub store: Store<Slim<K>>,
    pub index: Index,
    pub own_writes: crate::own_writes::OwnWrites,
    pub verified: crate::verified::Verified,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Deref for Indexed<K> {
    type Target = Store<Slim<K>>;

    fn deref(&self) -> &Store<Slim<K>> {
        &self.store
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Indexed<K> {
    /// The cached object `name` (in `namespace`).
    pub fn meta_of(&self, name: &str, namespace: Option<&str>) -> Option<Arc<Slim<K>>> {
        let reference = ObjectRef::new(name);
        self.store.get(&match namespace {
            Some(ns) => reference.within(ns),
            None => reference,
        })
    }

    /// The cached objects filed under `key` (for namespaced objects: those
    /// in that namespace).
    pub fn filed_under(&self, key: &str, namespace: Option<&str>) -> Vec<Arc<Slim<K>>> {
        self.index
            .names(key)
            .into_iter()
            .filter_map(|name| self.meta_of(&name, namespace))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    #[test]
    fn follows_applies_and_deletes() {
        let index = Index::new(by_namespace);
        index.observe(&Event::Apply(cm("a", "one")));
        index.observe(&Event::Apply(cm("a", "two")));
        index.observe(&Event::Apply(cm("b", "one")));
        index.observe(&Event::Delete(cm("a", "one")));
        assert_eq!(index.names("a"), ["two"]);
        assert_eq!(index.names("b"), ["one"]);
        index.observe(&Event::Delete(cm("b", "one")));
        assert!(index.names("b").is_empty());
    }

    #[test]
    fn a_relist_replaces_everything_once_complete() {
        let index = Index::new(by_namespace);
        index.observe(&Event::Apply(cm("a", "gone-while-disconnected")));
        index.observe(&Event::<ConfigMap>::Init);
        index.observe(&Event::InitApply(cm("a", "kept")));
        // Until the relist completes, readers see what was known.
        assert_eq!(index.names("a"), ["gone-while-disconnected"]);
        index.observe(&Event::<ConfigMap>::InitDone);
        assert_eq!(index.names("a"), ["kept"]);
    }
}
