//! Server-side apply of owned Kubernetes objects — only when the watch cache
//! shows the object differs from what is desired, so a converged object costs
//! no request at all.
//!
//! Two kinds of drift are told apart from the cache alone:
//!
//! - a field the operator sets has another value (or is gone): desired is
//!   not a subset of live ([`is_subset`], quantities compared by value);
//! - a field was *added* inside what the operator owns (an `ingress` rule on
//!   `default-deny`, a rule in the workload Role, a label): a subset check
//!   cannot see it, and an exact comparison would mistake the API server's
//!   defaults for drift. The server's own record can tell them apart: every
//!   field someone wrote is listed under that writer's field manager in
//!   `managedFields`, while defaults are listed under nobody. So the watch
//!   cache keeps the entries of *other* managers only (none on a converged
//!   object, so the cache stays as small as before), and any such entry that
//!   claims a field inside the sections the operator owns is drift
//!   ([`foreign_claims`]).
//!
//! Re-applying with `.force()` cannot undo an addition: server-side apply
//! removes only fields the applier owned and dropped. The repair therefore
//! replaces the object (PUT, guarded by its resourceVersion) with the owned
//! sections set to what is desired, the other managers' claimed fields
//! removed and their entries dropped from `managedFields`, and then applies
//! as usual so the operator owns every field it sets again.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::metrics::{KindLabels, Metrics};
use crate::quantity::Exact;

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "partnerplane.io/operator";

/// Keys of maps whose values are resource quantities (ResourceQuota `hard`,
/// LimitRange bounds, container and claim `requests`/`limits`).
const QUANTITY_MAPS: &[&str] = &[
    "hard",
    "requests",
    "limits",
    "default",
    "defaultRequest",
    "max",
    "min",
    "maxLimitRequestRatio",
];
/// Fields that hold one quantity themselves.
const QUANTITY_FIELDS: &[&str] = &["sizeLimit"];

/// Whether every field set in `desired` has the same value in `live`
/// (objects compared key by key, lists and scalars exactly, quantities by
/// value since the API server rewrites `1024Mi` as `1Gi`). Fields the server
/// adds (defaults, status, metadata) do not count as drift, and an empty
/// list or map the server omits matches its absence.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    subset_at(desired, live, false)
}

fn subset_at(desired: &Value, live: &Value, quantities: bool) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, v)| match l.get(k) {
            _ if v.is_null() => true,
            None | Some(Value::Null) => is_empty(v),
            Some(Value::String(lv)) if quantities || QUANTITY_FIELDS.contains(&k.as_str()) => {
                v.as_str().is_some_and(|dv| same_quantity(dv, lv))
            }
            Some(lv) => subset_at(v, lv, QUANTITY_MAPS.contains(&k.as_str())),
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| subset_at(dv, lv, false))
        }
        _ => desired == live,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Whether two quantity strings mean the same amount; text that does not
/// parse is compared as text.
pub fn same_quantity(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (Exact::parse(a), Exact::parse(b)) {
        (Ok(a), Ok(b)) => a.same_value(&b),
        _ => false,
    }
}

/// A field manager other than the operator's that claims fields inside what
/// the operator owns.
#[derive(Debug, Clone, PartialEq)]
pub struct ForeignClaim {
    pub manager: String,
    pub operation: String,
    /// The claimed fields (a `fieldsV1` tree) restricted to the owned sections.
    pub fields: Map<String, Value>,
}

/// The other managers' claims on the sections of `live` the operator owns:
/// every top-level field it sets besides `metadata`, and the labels and
/// annotations. Status subresource entries and fields outside those sections
/// (finalizers, owner references) are not the operator's business.
pub fn foreign_claims(desired: &Value, live: &Value) -> Vec<ForeignClaim> {
    let Some(entries) = live
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return vec![];
    };
    entries
        .iter()
        .filter(|e| e["manager"].as_str() != Some(FIELD_MANAGER))
        .filter(|e| e["subresource"].as_str().is_none_or(str::is_empty))
        .filter_map(|e| {
            let fields = e["fieldsV1"].as_object()?;
            let owned = owned_sections(desired, fields);
            (!owned.is_empty()).then(|| ForeignClaim {
                manager: e["manager"].as_str().unwrap_or_default().to_string(),
                operation: e["operation"].as_str().unwrap_or_default().to_string(),
                fields: owned,
            })
        })
        .collect()
}

fn owned_sections(desired: &Value, fields: &Map<String, Value>) -> Map<String, Value> {
    let mut owned = Map::new();
    let Some(desired) = desired.as_object() else {
        return owned;
    };
    for key in desired.keys() {
        let field = format!("f:{key}");
        match key.as_str() {
            "apiVersion" | "kind" | "status" => {}
            "metadata" => {
                let Some(meta) = fields.get(&field).and_then(Value::as_object) else {
                    continue;
                };
                let kept: Map<String, Value> = ["f:labels", "f:annotations"]
                    .into_iter()
                    .filter_map(|k| Some((k.to_string(), meta.get(k)?.clone())))
                    .collect();
                if !kept.is_empty() {
                    owned.insert(field, Value::Object(kept));
                }
            }
            _ => {
                if let Some(claimed) = fields.get(&field) {
                    owned.insert(field, claimed.clone());
                }
            }
        }
    }
    owned
}

/// `live` with the owned sections set to `desired`: fields other managers
/// claim that the operator does not set are removed, fields it sets get its
/// values, anything else (server defaults, allocated addresses) is kept, and
/// the claimants' entries leave `managedFields`.
pub fn repaired(desired: &Value, live: &Value, claims: &[ForeignClaim]) -> Value {
    let mut out = live.clone();
    let trees: Vec<&Map<String, Value>> = claims.iter().map(|c| &c.fields).collect();
    if let (Some(d), Some(o)) = (desired.as_object(), out.as_object_mut()) {
        for (key, dv) in d {
            let sub = subtrees(&trees, key);
            match key.as_str() {
                "apiVersion" | "kind" | "status" => {}
                "metadata" => {
                    for part in ["labels", "annotations"] {
                        let meta_sub = subtrees(&sub, part);
                        let live_part = o.get("metadata").and_then(|m| m.get(part)).cloned();
                        let desired_part =
                            dv.get(part).cloned().unwrap_or(Value::Object(Map::new()));
                        let merged = overlay(&desired_part, live_part.as_ref(), &meta_sub);
                        if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                            meta.insert(part.to_string(), merged);
                        }
                    }
                }
                _ => {
                    let merged = overlay(dv, o.get(key), &sub);
                    o.insert(key.clone(), merged);
                }
            }
        }
    }
    let dropped = |e: &Value| {
        claims.iter().any(|c| {
            e["manager"].as_str() == Some(c.manager.as_str())
                && e["operation"].as_str() == Some(c.operation.as_str())
                && e["subresource"].as_str().is_none_or(str::is_empty)
        })
    };
    if let Some(entries) = out
        .pointer_mut("/metadata/managedFields")
        .and_then(Value::as_array_mut)
    {
        entries.retain(|e| !dropped(e));
    }
    out
}

fn subtrees<'a>(trees: &[&'a Map<String, Value>], key: &str) -> Vec<&'a Map<String, Value>> {
    let field = format!("f:{key}");
    trees
        .iter()
        .filter_map(|t| t.get(&field).and_then(Value::as_object))
        .collect()
}

fn overlay(desired: &Value, live: Option<&Value>, claims: &[&Map<String, Value>]) -> Value {
    // A claim without children (or with ".") owns the whole node — an atomic
    // list or struct, or a scalar — so the desired value replaces it whole.
    let whole = claims.iter().any(|c| c.is_empty() || c.contains_key("."));
    match (desired, live) {
        (Value::Object(d), Some(Value::Object(l))) if !whole => {
            let mut out = l.clone();
            out.retain(|k, _| {
                d.contains_key(k) || !claims.iter().any(|c| c.contains_key(&format!("f:{k}")))
            });
            for (k, dv) in d {
                out.insert(k.clone(), overlay(dv, l.get(k), &subtrees(claims, k)));
            }
            Value::Object(out)
        }
        _ => desired.clone(),
    }
}

/// What the watch cache keeps of `managedFields`: other managers' entries on
/// the object itself, which a converged object has none of.
pub fn keep_foreign_entries(entries: &mut Option<Vec<ManagedFieldsEntry>>) {
    if let Some(list) = entries {
        // A `scale` change is a spec change; only status is someone else's to write.
        list.retain(|e| {
            e.manager.as_deref() != Some(FIELD_MANAGER)
                && e.subresource.as_deref() != Some("status")
        });
        if list.is_empty() {
            *entries = None;
        }
    }
}

/// Whether additions by other managers are undone for `K`. A namespace is
/// shared ground (administrators and cluster tools label it, an adopted one
/// keeps its previous owner's labels), so there only the operator's own
/// fields are kept as desired.
fn guards_additions<K: Resource<DynamicType = ()>>() -> bool {
    K::kind(&()) != "Namespace"
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
    let live = store.get(&ObjectRef::from_obj(desired));
    apply_unless_current(client, live.as_deref(), desired, metrics).await
}

/// Applies `desired` unless `live` (a cached copy or a fresh read) already
/// matches it; returns whether it wrote.
pub async fn apply_unless_current<K>(
    client: &kube::Client,
    live: Option<&K>,
    desired: &K,
    metrics: &Metrics,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    Ok(written_unless_current(client, live, desired, metrics)
        .await?
        .is_some())
}

/// Applies `desired` unless the object is known to match it. `cached` holds
/// only metadata: an object at the version the operator last confirmed for
/// this same wish is left alone without a read; any other is read in full,
/// by name, and compared (additions by other managers included). Own writes
/// are recorded so their watch events start no reconcile.
pub async fn apply_to_indexed<K>(
    client: &kube::Client,
    cached: &crate::index::Indexed<K>,
    desired: &K,
    metrics: &Metrics,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let wish = crate::verified::fingerprint(
        &serde_json::to_value(desired).map_err(kube::Error::SerdeError)?,
    );
    let namespace = desired.namespace();
    let name = desired.name_any();
    let live: Option<K> = match cached.meta_of(&name, namespace.as_deref()) {
        Some(slim) if cached.verified.holds(&slim, wish) => return Ok(false),
        Some(_) => match api_for::<K>(client, namespace.as_deref())
            .get_opt(&name)
            .await?
        {
            Some(found) => Some(
                serde_json::from_value(
                    serde_json::to_value(found).map_err(kube::Error::SerdeError)?,
                )
                .map_err(kube::Error::SerdeError)?,
            ),
            None => None,
        },
        None => None,
    };
    cached.own_writes.announce(desired);
    let written = match written_unless_current(client, live.as_ref(), desired, metrics).await {
        Ok(written) => written,
        Err(e) => {
            cached.own_writes.withdraw(desired);
            return Err(e);
        }
    };
    if written.is_none() {
        cached.own_writes.withdraw(desired);
    }
    match (&written, &live) {
        (Some(written), _) => cached.verified.record(&written.metadata, wish),
        (None, Some(live)) => cached.verified.record(live.meta(), wish),
        (None, None) => {}
    }
    Ok(written.is_some())
}

/// The object as written, or `None` when `live` already matched.
async fn written_unless_current<K>(
    client: &kube::Client,
    live: Option<&K>,
    desired: &K,
    metrics: &Metrics,
) -> Result<Option<DynamicObject>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let desired_json = serde_json::to_value(desired).map_err(kube::Error::SerdeError)?;
    let api = api_for::<K>(client, desired.namespace().as_deref());
    if let Some(live) = live {
        let live_json = serde_json::to_value(live).map_err(kube::Error::SerdeError)?;
        let claimed =
            guards_additions::<K>() && !foreign_claims(&desired_json, &live_json).is_empty();
        if claimed {
            if remove_foreign_fields(&api, &desired.name_any(), &desired_json).await? {
                count_write::<K>(metrics);
            }
        } else if is_subset(&desired_json, &live_json) && !owned_by_a_tenant(live) {
            return Ok(None);
        }
    }
    let written = api
        .patch(
            &desired.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired_json),
        )
        .await?;
    count_write::<K>(metrics);
    Ok(Some(written))
}

/// Replaces the object with the other managers' claimed fields removed,
/// from a fresh read (the cache holds no `managedFields` of the operator's
/// own, which the replacement must keep). A concurrent change fails the
/// write with 409 and the reconcile is retried. Returns whether it wrote.
async fn remove_foreign_fields(
    api: &Api<DynamicObject>,
    name: &str,
    desired: &Value,
) -> Result<bool, kube::Error> {
    let Some(fresh) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let fresh = serde_json::to_value(&fresh).map_err(kube::Error::SerdeError)?;
    let claims = foreign_claims(desired, &fresh);
    if claims.is_empty() {
        return Ok(false);
    }
    let managers: Vec<&str> = claims.iter().map(|c| c.manager.as_str()).collect();
    tracing::info!(
        object = name,
        ?managers,
        "removing fields other managers set on an owned object"
    );
    let replacement: DynamicObject = serde_json::from_value(repaired(desired, &fresh, &claims))
        .map_err(kube::Error::SerdeError)?;
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    api.replace(name, &params, &replacement).await?;
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

/// [`delete`] of an object as `listed` shows it (its uid and version): one
/// read from a cache may since have changed, or gone and been replaced by
/// another of its name, and then stays. Absence (404) or a changed object
/// (409) counts as done.
pub async fn delete_as_listed<K>(
    client: &kube::Client,
    listed: &ObjectMeta,
    metrics: &Metrics,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    let params = DeleteParams::background().preconditions(kube::api::Preconditions {
        uid: listed.uid.clone(),
        resource_version: listed.resource_version.clone(),
    });
    let name = listed.name.as_deref().unwrap_or_default();
    match api_for::<K>(client, listed.namespace.as_deref())
        .delete(name, &params)
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        result => counted_unless_missing::<K, _>(result, metrics),
    }
}

/// [`remove_tenant_owner`] for a cached object: the cache keeps only
/// whether there is such a reference, so the object's references are read
/// live (others' must stay).
pub async fn remove_cached_tenant_owner<K>(
    client: &kube::Client,
    cached: &crate::slim::Slim<K>,
    metrics: &Metrics,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    if !cached.tenant_owned {
        return Ok(());
    }
    match api_for::<K>(client, cached.namespace.as_deref())
        .get_metadata_opt(&cached.name)
        .await?
    {
        Some(live) => drop_tenant_owner::<K>(client, &cached.name, &live.metadata, metrics).await,
        None => Ok(()),
    }
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
    drop_tenant_owner::<K>(client, &object.name_any(), object.meta(), metrics).await
}

/// Patches the owner references in `meta` without those to a PartnerTenant.
async fn drop_tenant_owner<K>(
    client: &kube::Client,
    name: &str,
    meta: &ObjectMeta,
    metrics: &Metrics,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    if !crate::slim::has_tenant_owner(meta) {
        return Ok(());
    }
    let others: Vec<_> = meta
        .owner_references
        .iter()
        .flatten()
        .filter(|o| !(o.kind == "PartnerTenant" && o.api_version.starts_with("partnerplane.io/")))
        .collect();
    let patch = serde_json::json!({"metadata": {"ownerReferences": others}});
    let result = api_for::<K>(client, meta.namespace.as_deref())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    counted_unless_missing::<K, _>(result, metrics)
}

/// Whether `object` still carries an owner reference to a PartnerTenant, as
/// earlier versions set them; applying without one removes it, so the
/// garbage collector can never take the object with its tenant.
fn owned_by_a_tenant<K: Resource>(object: &K) -> bool {
    crate::slim::has_tenant_owner(object.meta())
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

    #[test]
    fn an_empty_list_the_server_omits_is_not_drift() {
        let desired = json!({"spec": {"podSelector": {}, "ingress": [], "egress": []}});
        assert!(is_subset(&desired, &json!({"spec": {"podSelector": {}}})));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"podSelector": {}, "ingress": [{}]}})
        ));
    }

    #[test]
    fn quantities_are_compared_by_value_where_they_appear() {
        let desired = json!({"spec": {"hard": {"requests.memory": "1024Mi", "requests.cpu": "2000m", "requests.storage": "1024Gi", "pods": "10"}}});
        let live = json!({"spec": {"hard": {"requests.memory": "1Gi", "requests.cpu": "2", "requests.storage": "1Ti", "pods": "10"}}});
        assert!(is_subset(&desired, &live));
        let resized = json!({"spec": {"hard": {"requests.memory": "1Gi", "requests.cpu": "2100m", "requests.storage": "1Ti", "pods": "10"}}});
        assert!(!is_subset(&desired, &resized));
        let container = json!({"resources": {"limits": {"memory": "0.25Gi"}}, "volumes": [{"emptyDir": {"sizeLimit": "256Mi"}}]});
        let live = json!({"resources": {"limits": {"memory": "256Mi"}}, "volumes": [{"emptyDir": {"sizeLimit": "268435456"}}]});
        assert!(is_subset(&container, &live));
        // Elsewhere equal amounts in other words are different values.
        assert!(!is_subset(
            &json!({"metadata": {"labels": {"size": "1Gi"}}}),
            &json!({"metadata": {"labels": {"size": "1024Mi"}}})
        ));
        assert!(!is_subset(
            &json!({"spec": {"limits": [{"type": "Container"}]}}),
            &json!({"spec": {"limits": [{"type": "Pod"}]}})
        ));
    }

    #[test]
    fn quantity_notations_of_one_amount_are_equal_and_others_are_not() {
        for (a, b) in [
            ("1Gi", "1024Mi"),
            ("2", "2000m"),
            ("0.5", "500m"),
            ("1e3", "1k"),
            ("1E-3", "1m"),
            ("1.5Gi", "1536Mi"),
            ("100m", "0.1"),
            ("1000000u", "1"),
            ("+3", "3"),
            ("0", "-0"),
            ("1Ti", "1024Gi"),
        ] {
            assert!(same_quantity(a, b), "{a} = {b}");
        }
        for (a, b) in [
            ("100m", "200m"),
            ("1Gi", "1G"),
            ("1", "-1"),
            ("1Mi", "1Mi "),
            ("lots", "many"),
            ("1e40", "1e40 "),
        ] {
            assert!(!same_quantity(a, b), "{a} != {b}");
        }
    }

    fn entry(manager: &str, operation: &str, fields: Value) -> Value {
        json!({"manager": manager, "operation": operation, "fieldsType": "FieldsV1", "fieldsV1": fields})
    }

    fn drifted_policy() -> (Value, Value) {
        let desired = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny", "namespace": "ns", "labels": {"a": "1"}},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}
        });
        let live = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {
                "name": "default-deny", "namespace": "ns", "resourceVersion": "7",
                "labels": {"a": "1", "b": "2"},
                "finalizers": ["example.com/keep"],
                "managedFields": [
                    entry(FIELD_MANAGER, "Apply", json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:podSelector": {}, "f:policyTypes": {}, "f:egress": {}}})),
                    entry("intruder", "Apply", json!({"f:metadata": {"f:labels": {"f:b": {}}, "f:finalizers": {}}, "f:spec": {"f:ingress": {}}})),
                    {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}},
                ]
            },
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [{}]}
        });
        (desired, live)
    }

    #[test]
    fn fields_other_managers_add_inside_owned_sections_are_claims() {
        let (desired, live) = drifted_policy();
        let claims = foreign_claims(&desired, &live);
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].manager, "intruder");
        // The finalizer is outside the owned sections.
        assert_eq!(
            Value::Object(claims[0].fields.clone()),
            json!({"f:metadata": {"f:labels": {"f:b": {}}}, "f:spec": {"f:ingress": {}}})
        );
    }

    #[test]
    fn only_status_or_foreign_metadata_or_the_operators_own_entries_are_no_claim() {
        let desired = json!({"metadata": {"name": "q", "labels": {"a": "1"}}, "spec": {"hard": {"pods": "1"}}});
        let live = json!({"metadata": {"name": "q", "managedFields": [
            entry(FIELD_MANAGER, "Apply", json!({"f:spec": {"f:hard": {"f:pods": {}}}})),
            entry(FIELD_MANAGER, "Update", json!({"f:spec": {"f:hard": {"f:pods": {}}}})),
            {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "fieldsV1": {"f:status": {"f:used": {}}}},
            entry("backup-tool", "Update", json!({"f:metadata": {"f:finalizers": {}}})),
        ]}});
        assert!(foreign_claims(&desired, &live).is_empty());
        assert!(foreign_claims(&desired, &json!({"metadata": {"name": "q"}})).is_empty());
    }

    #[test]
    fn the_repair_removes_what_others_added_and_keeps_the_rest() {
        let (desired, live) = drifted_policy();
        let claims = foreign_claims(&desired, &live);
        let fixed = repaired(&desired, &live, &claims);
        assert_eq!(fixed["metadata"]["labels"], json!({"a": "1"}));
        assert_eq!(fixed["spec"]["ingress"], json!([]));
        assert_eq!(fixed["spec"]["egress"], json!([]));
        assert_eq!(fixed["metadata"]["resourceVersion"], "7");
        assert_eq!(fixed["metadata"]["finalizers"], json!(["example.com/keep"]));
        let managers: Vec<&str> = fixed["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, [FIELD_MANAGER, "kube-controller-manager"]);
        assert!(is_subset(&desired, &fixed));
    }

    #[test]
    fn the_repair_keeps_server_defaults_and_removes_nested_additions() {
        let desired = json!({"spec": {"clusterIP": "None", "hard": {"pods": "10"}, "template": {"metadata": {"labels": {"app": "x"}}}}});
        let live = json!({
            "metadata": {"name": "s", "managedFields": [entry("kubectl-edit", "Update", json!({
                "f:spec": {"f:hard": {"f:secrets": {}, "f:pods": {}}, "f:template": {"f:metadata": {"f:annotations": {"f:restartedAt": {}}}}}
            }))]},
            "spec": {
                "clusterIP": "None", "clusterIPs": ["None"], "sessionAffinity": "None",
                "hard": {"pods": "99", "secrets": "5"},
                "template": {"metadata": {"labels": {"app": "x"}, "annotations": {"restartedAt": "now"}}}
            }
        });
        let claims = foreign_claims(&desired, &live);
        let fixed = repaired(&desired, &live, &claims);
        assert_eq!(
            fixed["spec"],
            json!({
                "clusterIP": "None", "clusterIPs": ["None"], "sessionAffinity": "None",
                "hard": {"pods": "10"},
                "template": {"metadata": {"labels": {"app": "x"}}}
            })
        );
        assert_eq!(fixed["metadata"]["managedFields"], json!([]));
    }

    #[test]
    fn an_atomic_field_claimed_whole_takes_the_desired_value_whole() {
        let desired = json!({"spec": {"podSelector": {}}});
        let live = json!({
            "metadata": {"managedFields": [entry("intruder", "Apply", json!({"f:spec": {"f:podSelector": {}}}))]},
            "spec": {"podSelector": {"matchLabels": {"x": "y"}}}
        });
        let fixed = repaired(&desired, &live, &foreign_claims(&desired, &live));
        assert_eq!(fixed["spec"]["podSelector"], json!({}));
    }

    #[test]
    fn the_cache_keeps_only_other_managers_entries_on_the_object() {
        let entry = |manager: &str, subresource: Option<&str>| ManagedFieldsEntry {
            manager: Some(manager.into()),
            subresource: subresource.map(str::to_string),
            ..ManagedFieldsEntry::default()
        };
        let mut converged = Some(vec![
            entry(FIELD_MANAGER, None),
            entry("kube-controller-manager", Some("status")),
        ]);
        keep_foreign_entries(&mut converged);
        assert_eq!(converged, None);
        let mut drifted = Some(vec![entry(FIELD_MANAGER, None), entry("intruder", None)]);
        keep_foreign_entries(&mut drifted);
        assert_eq!(drifted, Some(vec![entry("intruder", None)]));
    }
}
