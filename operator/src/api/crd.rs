//! The CustomResourceDefinitions, as written to `crds/` by `partnerplane crdgen`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use super::{CopilotDeployment, MetricPipeline, PartnerTenant};

/// Every CRD with the labels the chart and `kubectl wait -l` select on.
pub fn all() -> Vec<CustomResourceDefinition> {
    [
        PartnerTenant::crd(),
        MetricPipeline::crd(),
        CopilotDeployment::crd(),
    ]
    .into_iter()
    .map(|mut crd| {
        let labels = crd.metadata.labels.get_or_insert_with(Default::default);
        labels.insert("app.kubernetes.io/part-of".into(), "partnerplane".into());
        crd
    })
    .collect()
}

/// The file each CRD is written to, such as `partnertenants.partnerplane.io.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// The YAML document of a CRD, with a header saying it is generated.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_yaml::to_string(crd).expect("a CRD always serializes");
    format!("# Generated from the Rust types by `partnerplane crdgen`; do not edit.\n{body}")
}
