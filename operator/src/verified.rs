//! What the operator last confirmed of each object it keeps: the
//! resourceVersion at which the object matched what the operator wants, and
//! a fingerprint of that wish. The watch caches hold only metadata, so an
//! object whose version and wish are both unchanged needs no read; any
//! other is read once, by name, and compared in full.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::slim::Slim;

/// `(namespace, name)` of an object; `None` without a name.
pub fn object_key(meta: &ObjectMeta) -> Option<(String, String)> {
    Some((
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone()?,
    ))
}

/// `(namespace, name)` → (resourceVersion, fingerprint of the wish).
type Confirmed = HashMap<(String, String), (String, u64)>;

#[derive(Clone, Default)]
pub struct Verified(Arc<Mutex<Confirmed>>);

/// A fingerprint of a desired object (stable within the process).
pub fn fingerprint(desired: &Value) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    desired.to_string().hash(&mut hasher);
    hasher.finish()
}

impl Verified {
    /// Whether the object, at the version the cache shows, was confirmed to
    /// match the wish `wish`.
    pub fn holds<K>(&self, cached: &Slim<K>, wish: u64) -> bool {
        let Some(version) = cached.resource_version.as_ref() else {
            return false;
        };
        let key = (
            cached.namespace.clone().unwrap_or_default(),
            cached.name.clone(),
        );
        let confirmed = self.0.lock().expect("verified lock");
        confirmed
            .get(&key)
            .is_some_and(|(v, w)| v == version && *w == wish)
    }

    /// Records that the object, at the version `meta` carries, matches `wish`.
    pub fn record(&self, meta: &ObjectMeta, wish: u64) {
        if let (Some(key), Some(version)) = (object_key(meta), meta.resource_version.clone()) {
            self.0
                .lock()
                .expect("verified lock")
                .insert(key, (version, wish));
        }
    }

    /// Forgets a deleted object.
    pub fn forget(&self, meta: &ObjectMeta) {
        if let Some(key) = object_key(meta) {
            self.0.lock().expect("verified lock").remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use serde_json::json;

    fn cached(name: &str, version: &str) -> Slim<ConfigMap> {
        Slim::of(&meta(name, version))
    }

    fn meta(name: &str, version: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            resource_version: Some(version.into()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn holds_only_for_the_same_version_and_wish() {
        let verified = Verified::default();
        let wish = fingerprint(&json!({"spec": {"hard": {"pods": "10"}}}));
        let other = fingerprint(&json!({"spec": {"hard": {"pods": "20"}}}));
        assert_ne!(wish, other);
        assert!(!verified.holds(&cached("q", "5"), wish), "never read");
        verified.record(&meta("q", "5"), wish);
        assert!(verified.holds(&cached("q", "5"), wish));
        assert!(!verified.holds(&cached("q", "6"), wish), "changed since");
        assert!(
            !verified.holds(&cached("q", "5"), other),
            "the wish changed"
        );
        verified.forget(&meta("q", "5"));
        assert!(!verified.holds(&cached("q", "5"), wish));
    }
}
