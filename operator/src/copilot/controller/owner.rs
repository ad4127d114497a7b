//! The tenant a copilot belongs to: the owner of its namespace, decided
//! exactly as for a MetricPipeline. No spec field names a tenant, a schema
//! or a namespace, so a copilot can only ever reach the index, tables and
//! keys of the tenant owning the namespace it was created in.

use kube::ResourceExt;

use super::context::CopilotContext;
use super::error::Error;
use crate::api::{CopilotDeployment, PartnerTenant};
use crate::pipeline::owner::{self, Owner};

/// [`owner::resolve`]'s words for a pipeline, said of a copilot.
pub fn for_copilot(owner: Owner) -> Owner {
    let reword = |m: String| {
        m.replace(
            "a MetricPipeline runs only in the namespace of a PartnerTenant",
            "a CopilotDeployment runs only in the namespace of a PartnerTenant",
        )
    };
    match owner {
        Owner::NotATenantNamespace(m) => Owner::NotATenantNamespace(reword(m)),
        other => other,
    }
}

/// The owner of the copilot's namespace, with the tenant itself when one
/// holds it. `for_cleanup` accepts a tenant being deleted or whose
/// database is not Ready (its teardown waits for the copilot's).
pub async fn owner_of(
    copilot: &CopilotDeployment,
    ctx: &CopilotContext,
    for_cleanup: bool,
) -> Result<(Owner, Option<PartnerTenant>), Error> {
    let namespace = copilot.namespace().unwrap_or_default();
    let (annotations, tenant) = owner::observe(&ctx.shared, &namespace).await?;
    let decided = owner::resolve(
        &namespace,
        annotations.as_ref(),
        tenant.as_ref(),
        for_cleanup,
    );
    Ok((for_copilot(decided), tenant))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_the_copilot_kind() {
        let Owner::NotATenantNamespace(message) =
            for_copilot(owner::resolve("plain", None, None, false))
        else {
            panic!()
        };
        assert!(
            message.contains("a CopilotDeployment runs only"),
            "{message}"
        );
        assert!(message.contains("namespace plain"));
    }
}
