//! The operator's own writes to the objects it watches, so that the watch
//! event a write causes does not start another reconcile of the tenant
//! that made it (it would find nothing to do, but still ensure every
//! backend once more: 2 ensures per tenant instead of 1 in a bulk apply).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::Resource;

use crate::verified::object_key as key;

/// `(namespace, name)` → the resourceVersion the operator's write produced.
#[derive(Clone, Default)]
pub struct OwnWrites(Arc<Mutex<HashMap<(String, String), String>>>);

impl OwnWrites {
    /// Records `written`, as the API server returned it.
    pub fn record<K: Resource>(&self, written: &K) {
        let meta = written.meta();
        if let (Some(key), Some(version)) = (key(meta), meta.resource_version.clone()) {
            self.0.lock().expect("own writes lock").insert(key, version);
        }
    }

    /// Whether `event_object` is exactly what an own write produced (each
    /// write is recognised once). Any other version — someone else's change,
    /// a deletion — is not.
    pub fn is_echo<K: Resource>(&self, event_object: &K) -> bool {
        let meta = event_object.meta();
        let (Some(key), Some(version)) = (key(meta), meta.resource_version.as_ref()) else {
            return false;
        };
        let mut writes = self.0.lock().expect("own writes lock");
        if meta.deletion_timestamp.is_none() && writes.get(&key) == Some(version) {
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn cm(name: &str, version: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    #[test]
    fn only_the_version_written_is_an_echo_and_only_once() {
        let own = OwnWrites::default();
        own.record(&cm("a", "10"));
        assert!(!own.is_echo(&cm("a", "9")), "an older version");
        assert!(!own.is_echo(&cm("b", "10")), "another object");
        assert!(own.is_echo(&cm("a", "10")));
        assert!(!own.is_echo(&cm("a", "10")), "recognised once");
        own.record(&cm("a", "11"));
        assert!(!own.is_echo(&cm("a", "12")), "someone else's change");
    }

    #[test]
    fn a_deletion_is_never_an_echo() {
        let own = OwnWrites::default();
        own.record(&cm("a", "10"));
        let mut deleted = cm("a", "10");
        deleted.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert!(!own.is_echo(&deleted));
    }
}
