//! Breach deliveries to a tenant's workflow: the MetricPipeline outbox
//! names the template, and the delivery goes to that tenant's workflow
//! webhook in the operator's own n8n, signed like every breach webhook and
//! carrying the token n8n asks of callers.

use k8s_openapi::jiff::Timestamp;

use super::engine::{Engine, TOKEN_HEADER};
use super::names;
use crate::api::tenant::WorkflowTemplate;
use crate::pipeline::outbox::Delivery;
use crate::pipeline::webhook::{self, DeliveryFailure};

/// Outbox targets naming a workflow start with this.
pub const TARGET_PREFIX: &str = "workflow:";

/// The outbox target of a workflow breach action.
pub fn target(template: WorkflowTemplate) -> String {
    format!("{TARGET_PREFIX}{template:?}")
}

/// The template an outbox target names, if it names one.
pub fn template_of(target: &str) -> Option<WorkflowTemplate> {
    let name = target.strip_prefix(TARGET_PREFIX)?;
    serde_json::from_value(serde_json::Value::String(name.into())).ok()
}

/// Sends `delivery` to the tenant's workflow of `template`.
pub async fn deliver(
    engine: Option<&Engine>,
    tenant: &str,
    template: WorkflowTemplate,
    delivery: &Delivery,
    now: Timestamp,
) -> Result<(), DeliveryFailure> {
    let Some(engine) = engine else {
        return Err(DeliveryFailure {
            retryable: true,
            message: "no n8n is configured for the operator (n8n.url)".into(),
        });
    };
    let timestamp = now.as_second();
    let signature = webhook::sign(
        &engine.signing_secret(tenant),
        &delivery.id,
        timestamp,
        &delivery.body,
    )?;
    let headers = [
        (TOKEN_HEADER, engine.webhook_token(tenant)),
        ("webhook-id", delivery.id.clone()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ];
    let path = names::webhook_path(tenant, template);
    let status = engine
        .n8n
        .post_webhook(&path, &headers, delivery.body.clone())
        .await
        .map_err(|cause| DeliveryFailure {
            retryable: true,
            message: format!("cannot reach n8n: {cause}"),
        })?;
    if status == reqwest::StatusCode::NOT_FOUND {
        // Not provisioned (yet): the template may be enabled later.
        return Err(DeliveryFailure {
            retryable: true,
            message: format!(
                "the tenant's {template:?} workflow is not active in n8n (is it in spec.workflows.templates?)"
            ),
        });
    }
    webhook::outcome("n8n", status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_their_template_and_nothing_else() {
        let t = target(WorkflowTemplate::SlaBreachEscalation);
        assert_eq!(t, "workflow:SlaBreachEscalation");
        assert_eq!(template_of(&t), Some(WorkflowTemplate::SlaBreachEscalation));
        assert_eq!(template_of("https://example.com/hook"), None);
        assert_eq!(template_of("workflow:Nope"), None);
    }
}
