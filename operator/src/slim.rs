//! What the watch caches keep of each object the operator owns: the few
//! fields its decisions read, not the object's metadata as served. At
//! 10,000 tenants the caches hold about 90,000 objects; a parsed
//! `ObjectMeta` with its label and annotation maps costs kilobytes each,
//! this a few hundred bytes.

use std::borrow::Cow;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::reflector::Lookup;
use kube::runtime::watcher::Event;

/// The annotations the operator writes and reads back (a child's tenant, a
/// namespace's owner); all others are other tools' business.
const OURS: &str = "partnerplane.io/";

#[derive(Debug)]
pub struct Slim<K> {
    pub name: String,
    pub namespace: Option<String>,
    pub resource_version: Option<String>,
    pub terminating: bool,
    /// Its `partnerplane.io/` annotations.
    pub annotations: Box<[(String, String)]>,
    /// Whether it carries an owner reference to a PartnerTenant (as earlier
    /// versions set them).
    pub tenant_owned: bool,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Slim<K> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            resource_version: self.resource_version.clone(),
            terminating: self.terminating,
            annotations: self.annotations.clone(),
            tenant_owned: self.tenant_owned,
            kind: PhantomData,
        }
    }
}

/// Whether `meta` carries an owner reference to a PartnerTenant.
pub fn has_tenant_owner(meta: &ObjectMeta) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "PartnerTenant" && o.api_version.starts_with(OURS))
}

impl<K> Slim<K> {
    pub fn of(meta: &ObjectMeta) -> Self {
        Self {
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone(),
            resource_version: meta.resource_version.clone(),
            terminating: meta.deletion_timestamp.is_some(),
            annotations: meta
                .annotations
                .iter()
                .flatten()
                .filter(|(key, _)| key.starts_with(OURS))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            tenant_owned: has_tenant_owner(meta),
            kind: PhantomData,
        }
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The tenant the object belongs to.
    pub fn tenant(&self) -> Option<&str> {
        self.annotation(crate::tenant::children::TENANT_ANNOTATION)
    }
}

/// The same event, carrying only what the cache of `K` keeps (`O` is `K`
/// or its metadata alone).
pub fn event<K, O: Resource>(event: &Event<O>) -> Event<Slim<K>> {
    match event {
        Event::Apply(object) => Event::Apply(Slim::of(object.meta())),
        Event::Delete(object) => Event::Delete(Slim::of(object.meta())),
        Event::Init => Event::Init,
        Event::InitApply(object) => Event::InitApply(Slim::of(object.meta())),
        Event::InitDone => Event::InitDone,
    }
}

impl<K: Resource<DynamicType = ()>> Lookup for Slim<K> {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        K::kind(&())
    }

    fn group(_: &()) -> Cow<'_, str> {
        K::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        K::version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        K::plural(&())
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }

    // The cache's keys need neither (they compare by kind, name and
    // namespace); the version is kept once, in the object.
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use std::collections::BTreeMap;

    #[test]
    fn keeps_what_decisions_read_and_drops_the_rest() {
        let meta = ObjectMeta {
            name: Some("quota".into()),
            namespace: Some("tenant-acme".into()),
            resource_version: Some("42".into()),
            labels: Some(BTreeMap::from([("team".into(), "x".into())])),
            annotations: Some(BTreeMap::from([
                ("partnerplane.io/tenant-name".into(), "acme".into()),
                ("other.io/note".into(), "a long note".into()),
            ])),
            owner_references: Some(vec![OwnerReference {
                api_version: "partnerplane.io/v1alpha1".into(),
                kind: "PartnerTenant".into(),
                name: "acme".into(),
                uid: "u".into(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        };
        let slim = Slim::<ConfigMap>::of(&meta);
        assert_eq!(slim.tenant(), Some("acme"));
        assert_eq!(slim.annotation("other.io/note"), None);
        assert_eq!(slim.annotations.len(), 1);
        assert!(slim.tenant_owned);
        assert!(!slim.terminating);
        assert_eq!(slim.resource_version.as_deref(), Some("42"));
        let reference = slim.to_object_ref(());
        assert_eq!(
            reference,
            kube::runtime::reflector::ObjectRef::<Slim<ConfigMap>>::new("quota")
                .within("tenant-acme")
        );
    }

    #[test]
    fn an_owner_of_another_kind_is_not_a_tenant() {
        let meta = ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        };
        assert!(!has_tenant_owner(&meta));
    }
}
