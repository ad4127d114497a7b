//! The copilot's part conditions and how its Deployment's state reads as
//! `Available` (pure).

use k8s_openapi::api::apps::v1::Deployment;

use crate::rollup::PartOutcome;

/// The knowledge, audit and approvals tables, the index and the retrieval
/// function exist as the spec declares them.
pub const INDEX_READY: &str = "IndexReady";
/// The model key exists where the spec says (it is never copied).
pub const MODEL_KEY_READY: &str = "ModelKeyReady";
/// The copilot's Deployment has replicas serving.
pub const AVAILABLE: &str = "Available";
/// Message of `Ready` when every part is.
pub const READY_MESSAGE: &str = "the copilot is serving from its index with its model key";

/// Replicas the Deployment asks for (the autoscaler may have changed them);
/// what the spec asks for while there is no Deployment.
pub fn desired_replicas(deployment: Option<&Deployment>, wanted: i32) -> i32 {
    deployment
        .and_then(|d| d.spec.as_ref()?.replicas)
        .unwrap_or(wanted)
}

/// `Available` from the Deployment the watch cache holds (`None`: not made yet).
pub fn availability(deployment: Option<&Deployment>, wanted: i32) -> (PartOutcome, i32) {
    let Some(deployment) = deployment else {
        return (
            PartOutcome::failed(
                AVAILABLE,
                "NotDeployed",
                "the Deployment is not rolled out yet".into(),
                false,
            ),
            0,
        );
    };
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let status = deployment.status.clone().unwrap_or_default();
    let available = status.available_replicas.unwrap_or(0);
    if wanted == 0 {
        return (
            PartOutcome::ready(
                AVAILABLE,
                format!("Deployment {name} is scaled to zero by spec.replicas"),
            ),
            available,
        );
    }
    if available >= 1 {
        let rolling = deployment.metadata.generation != status.observed_generation
            || status.updated_replicas.unwrap_or(0) < status.replicas.unwrap_or(0);
        let suffix = if rolling {
            "; a rollout is in progress"
        } else {
            ""
        };
        return (
            PartOutcome::ready(
                AVAILABLE,
                format!(
                    "Deployment {name}: {available} of {} replica(s) available{suffix}",
                    status.replicas.unwrap_or(0)
                ),
            ),
            available,
        );
    }
    (
        PartOutcome::failed(
            AVAILABLE,
            "Unavailable",
            format!(
                "Deployment {name}: no replica available yet ({} of {} updated)",
                status.updated_replicas.unwrap_or(0),
                status.replicas.unwrap_or(0)
            ),
            false,
        ),
        available,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;

    fn deployment(available: i32, replicas: i32, updated: i32) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.name = Some("copilot-x".into());
        d.metadata.generation = Some(2);
        d.status = Some(DeploymentStatus {
            available_replicas: Some(available),
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            observed_generation: Some(2),
            ..Default::default()
        });
        d
    }

    #[test]
    fn desired_replicas_are_the_deployments_once_it_exists() {
        assert_eq!(desired_replicas(None, 2), 2);
        let mut d = deployment(1, 3, 3);
        d.spec = Some(k8s_openapi::api::apps::v1::DeploymentSpec {
            replicas: Some(3),
            ..Default::default()
        });
        assert_eq!(desired_replicas(Some(&d), 2), 3, "the autoscaler's choice");
    }

    #[test]
    fn one_available_replica_makes_the_copilot_available() {
        let (part, n) = availability(Some(&deployment(1, 2, 2)), 2);
        assert!(part.ready, "{}", part.message);
        assert_eq!(n, 1);
        let (part, _) = availability(Some(&deployment(1, 2, 1)), 2);
        assert!(part.ready && part.message.contains("rollout"));
    }

    #[test]
    fn none_available_or_no_deployment_is_not() {
        let (part, n) = availability(Some(&deployment(0, 1, 1)), 1);
        assert!(!part.ready && !part.permanent);
        assert_eq!((part.reason, n), ("Unavailable", 0));
        let (part, _) = availability(None, 1);
        assert_eq!(part.reason, "NotDeployed");
        let (part, _) = availability(Some(&deployment(0, 0, 0)), 0);
        assert!(part.ready, "scaled to zero on purpose");
    }
}
