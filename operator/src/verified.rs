//! What the operator last confirmed of each object it keeps: the
//! resourceVersion at which the object matched what the operator wants, and
//! a fingerprint of that wish. The watch caches hold only metadata, so an
//! object whose version and wish are both unchanged needs no read; any
//! other is read once, by name, and compared in full.
//!
//! Entries are fixed-size fingerprints, not the names and versions
//! themselves: at 10,000 tenants the maps hold about 90,000 entries, and
//! three strings each cost more than the rest of the entry. Object keys are
//! hashed with a per-process random key; a version is compared only with the
//! one recorded under the same object, and the API server never gives two
//! writes the same version.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
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

/// Fingerprint of an object's `(namespace, name)` → (fingerprint of the
/// confirmed resourceVersion, fingerprint of the wish).
type Confirmed = HashMap<u64, (u64, u64)>;

#[derive(Clone, Default)]
pub struct Verified {
    confirmed: Arc<Mutex<Confirmed>>,
    keys: RandomState,
}

/// A fingerprint of a desired object (stable within the process).
pub fn fingerprint(desired: &Value) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    desired.to_string().hash(&mut hasher);
    hasher.finish()
}

impl Verified {
    fn key(&self, namespace: Option<&str>, name: &str) -> u64 {
        self.keys.hash_one((namespace.unwrap_or_default(), name))
    }

    fn version(&self, version: &str) -> u64 {
        self.keys.hash_one(version)
    }

    /// Whether the object, at the version the cache shows, was confirmed to
    /// match the wish `wish`.
    pub fn holds<K>(&self, cached: &Slim<K>, wish: u64) -> bool {
        let Some(version) = cached.resource_version.as_deref() else {
            return false;
        };
        let key = self.key(cached.namespace.as_deref(), &cached.name);
        let confirmed = self.confirmed.lock().expect("verified lock");
        confirmed
            .get(&key)
            .is_some_and(|(v, w)| *v == self.version(version) && *w == wish)
    }

    /// Records that the object, at the version `meta` carries, matches `wish`.
    pub fn record(&self, meta: &ObjectMeta, wish: u64) {
        if let (Some(name), Some(version)) = (&meta.name, &meta.resource_version) {
            let key = self.key(meta.namespace.as_deref(), name);
            let version = self.version(version);
            self.confirmed
                .lock()
                .expect("verified lock")
                .insert(key, (version, wish));
        }
    }

    /// Forgets a deleted object.
    pub fn forget(&self, meta: &ObjectMeta) {
        if let Some(name) = &meta.name {
            let key = self.key(meta.namespace.as_deref(), name);
            self.confirmed.lock().expect("verified lock").remove(&key);
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
