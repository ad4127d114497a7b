//! Server-side apply of owned Kubernetes objects — only when the watch cache
//! shows the object differs from what is desired, so a converged object costs
//! no request at all.

use std::fmt::Debug;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::metrics::{KindLabels, Metrics};

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "partnerplane.io/operator";

/// Whether every field set in `desired` has the same value in `live`
/// (objects compared key by key, lists and scalars exactly). Fields the
/// server adds (defaults, status, metadata) do not count as drift.
pub fn is_subset(desired: &serde_json::Value, live: &serde_json::Value) -> bool {
    match (desired, live) {
        (serde_json::Value::Object(d), serde_json::Value::Object(l)) => d
            .iter()
            .all(|(k, v)| v.is_null() || l.get(k).is_some_and(|lv| is_subset(v, lv))),
        (serde_json::Value::Array(d), serde_json::Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv))
        }
        _ => desired == live,
    }
}

/// Applies `desired` unless the cached copy already matches it; returns whether it wrote.
pub async fn apply_if_changed<K>(
    client: &kube::Client,
    store: &Store<K>,
    desired: &K,
    metrics: &Metrics,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let reference = ObjectRef::from_obj(desired);
    let desired_json = serde_json::to_value(desired).map_err(kube::Error::SerdeError)?;
    if let Some(live) = store.get(&reference) {
        let live_json = serde_json::to_value(live.as_ref()).map_err(kube::Error::SerdeError)?;
        if is_subset(&desired_json, &live_json) && !owned_by_a_tenant(live.as_ref()) {
            return Ok(false);
        }
    }
    let api = api_for::<K>(client, desired.namespace().as_deref());
    api.patch(
        &desired.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired_json),
    )
    .await?;
    count_write::<K>(metrics);
    Ok(true)
}

/// Deletes an object; a 404 counts as done.
pub async fn delete<K>(
    client: &kube::Client,
    namespace: Option<&str>,
    name: &str,
    metrics: &Metrics,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    let result = api_for::<K>(client, namespace)
        .delete(name, &DeleteParams::background())
        .await;
    counted_unless_missing::<K, _>(result, metrics)
}

/// Removes an owner reference to a PartnerTenant left by an earlier version;
/// nothing is sent when there is none.
pub async fn remove_tenant_owner<K>(
    client: &kube::Client,
    object: &K,
    metrics: &Metrics,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    if !owned_by_a_tenant(object) {
        return Ok(());
    }
    let others: Vec<_> = object
        .owner_references()
        .iter()
        .filter(|o| !(o.kind == "PartnerTenant" && o.api_version.starts_with("partnerplane.io/")))
        .collect();
    let patch = serde_json::json!({"metadata": {"ownerReferences": others}});
    let result = api_for::<K>(client, object.namespace().as_deref())
        .patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await;
    counted_unless_missing::<K, _>(result, metrics)
}

/// Whether `object` still carries an owner reference to a PartnerTenant, as
/// earlier versions set them; applying without one removes it, so the
/// garbage collector can never take the object with its tenant.
fn owned_by_a_tenant<K: Resource>(object: &K) -> bool {
    object
        .owner_references()
        .iter()
        .any(|o| o.kind == "PartnerTenant" && o.api_version.starts_with("partnerplane.io/"))
}

/// Counts a successful write; an object already gone (404) counts as done.
fn counted_unless_missing<K: Resource<DynamicType = ()>, T>(
    result: Result<T, kube::Error>,
    metrics: &Metrics,
) -> Result<(), kube::Error> {
    match result {
        Ok(_) => {
            count_write::<K>(metrics);
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) fn count_write<K: Resource<DynamicType = ()>>(metrics: &Metrics) {
    metrics
        .api_writes
        .get_or_create(&KindLabels {
            kind: kind_of::<K>(),
        })
        .inc();
}

/// An untyped API handle for `K`, so one helper serves namespaced and cluster kinds.
fn api_for<K>(client: &kube::Client, namespace: Option<&str>) -> Api<DynamicObject>
where
    K: Resource<DynamicType = ()>,
{
    let resource = ApiResource::erase::<K>(&());
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

fn kind_of<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_added_fields_are_not_drift() {
        let desired = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"hard": {"pods": "10"}}});
        let live = json!({
            "metadata": {"name": "a", "uid": "u", "labels": {"x": "1", "y": "2"}},
            "spec": {"hard": {"pods": "10"}},
            "status": {"used": {}}
        });
        assert!(is_subset(&desired, &live));
    }

    #[test]
    fn an_edited_field_or_list_is_drift() {
        let desired = json!({"spec": {"hard": {"pods": "10"}, "ports": [1, 2]}});
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"hard": {"pods": "99"}, "ports": [1, 2]}})
        ));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"hard": {"pods": "10"}, "ports": [1]}})
        ));
        assert!(!is_subset(&desired, &json!({"spec": {"ports": [1, 2]}})));
    }
}
