//! Kubernetes Events the operator records on an object.

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};

use crate::wait_until;

/// `(reason, message)` of every Event about the object named `name`.
pub async fn events_about(
    client: &kube::Client,
    name: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let events: Api<Event> = Api::all(client.clone());
    let list = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect())
}

/// Waits until an Event with `reason` about `name` exists; returns its message.
pub async fn wait_event(
    client: &kube::Client,
    name: &str,
    reason: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    wait_until(
        &format!("a {reason} Event about {name}"),
        timeout,
        || async move {
            let events = events_about(client, name).await?;
            Ok(events
                .into_iter()
                .find(|(r, _)| r == reason)
                .map(|(_, message)| message))
        },
    )
    .await
}
