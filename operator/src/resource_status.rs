//! What the namespaced controllers (pipelines, copilots) share: writing a
//! custom resource's status by server-side apply with the operator's field
//! manager, and recording an Event about it.

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};

use crate::recorder::Recorder;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::apply::{FIELD_MANAGER, count_write};
use crate::metrics::Metrics;

/// Server-side applies `status` on `object`'s status subresource.
pub async fn apply_status<K>(
    client: &kube::Client,
    metrics: &Metrics,
    object: &K,
    status: &impl Serialize,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    count_write::<K>(metrics);
    Ok(())
}

/// Records an Event about `object`; a failure is logged, never fatal.
pub async fn publish<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    object: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing an Event failed");
    }
}
