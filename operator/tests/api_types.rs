//! The API types: serialization round trips and defaulting.

use std::path::{Path, PathBuf};

use partnerplane::api::copilot::{Distance, GuardedAction};
use partnerplane::api::metric::AggregateKind;
use partnerplane::api::tenant::{DeletionPolicy, PostgresExtension, RedisMode, SecretStore, Tier};
use partnerplane::api::{CopilotDeployment, MetricPipeline, PartnerTenant};
use serde::de::DeserializeOwned;

fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(path)
}

/// Parses a manifest, writes it back and parses that again: nothing is lost.
fn round_trip<T>(path: &Path) -> T
where
    T: DeserializeOwned + serde::Serialize,
{
    let text = std::fs::read_to_string(path).unwrap();
    let parsed: T =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let written = serde_json::to_value(&parsed).unwrap();
    let reparsed: T = serde_json::from_value(written.clone()).unwrap();
    assert_eq!(
        written,
        serde_json::to_value(&reparsed).unwrap(),
        "{}",
        path.display()
    );
    parsed
}

#[test]
fn example_manifests_round_trip() {
    let tenant: PartnerTenant = round_trip(&example("manufacturing-service-network/tenant.yaml"));
    assert_eq!(tenant.spec.tier, Tier::Enterprise);
    assert_eq!(tenant.spec.secrets.store, SecretStore::Both);

    let pipeline: MetricPipeline = round_trip(&example(
        "manufacturing-service-network/service-delivery-pipeline.yaml",
    ));
    let fix = &pipeline.spec.metrics[0];
    assert_eq!(fix.aggregate.kind, AggregateKind::Ratio);
    assert_eq!(
        fix.aggregate.matching[0].value.as_ref().unwrap().boolean,
        Some(true)
    );

    let copilot: CopilotDeployment = round_trip(&example(
        "manufacturing-service-network/partner-operations-copilot.yaml",
    ));
    assert_eq!(copilot.spec.knowledge.index.dimensions, 1536);

    let _: PartnerTenant = round_trip(&example("logistics-reseller-network/tenant.yaml"));
    let _: MetricPipeline = round_trip(&example(
        "logistics-reseller-network/reseller-scorecard-pipeline.yaml",
    ));
    let _: CopilotDeployment = round_trip(&example(
        "logistics-reseller-network/channel-manager-copilot.yaml",
    ));
    let dedicated: PartnerTenant =
        round_trip(&example("gitops/tenants/fabrikam-industrial/tenant.yaml"));
    assert_eq!(dedicated.spec.redis.mode, RedisMode::Dedicated);
}

#[test]
fn a_minimal_tenant_gets_safe_defaults() {
    let tenant: PartnerTenant = serde_yaml::from_str(
        "apiVersion: partnerplane.io/v1alpha1\nkind: PartnerTenant\nmetadata: {name: t}\nspec: {displayName: T}\n",
    )
    .unwrap();
    let spec = tenant.spec;
    assert_eq!(
        spec.deletion_policy,
        DeletionPolicy::Retain,
        "data is kept unless asked"
    );
    assert_eq!(spec.tier, Tier::Standard);
    assert_eq!(spec.postgres.backend, "default");
    assert_eq!(spec.postgres.extensions, vec![PostgresExtension::Vector]);
    assert_eq!(spec.redis.mode, RedisMode::Shared);
    assert_eq!(spec.secrets.store, SecretStore::Vault);
    assert!(spec.namespace.is_none());
    assert!(!spec.suspend);
}

#[test]
fn a_minimal_copilot_gets_guardrails_by_default() {
    let copilot: CopilotDeployment = serde_yaml::from_str(
        r#"
apiVersion: partnerplane.io/v1alpha1
kind: CopilotDeployment
metadata: {name: c, namespace: n}
spec:
  role: Finance
  image: example/copilot:1
  model: {endpoint: "https://llm.example/v1", name: m, apiKey: {secret: {name: k, key: key}}}
  knowledge:
    index: {dimensions: 384}
    approvedSources: [{name: contracts, kind: Contracts}]
"#,
    )
    .unwrap();
    let spec = copilot.spec;
    assert_eq!(spec.replicas, 1);
    assert_eq!(spec.knowledge.index.distance, Distance::Cosine);
    assert_eq!(spec.knowledge.index.hnsw.m, 16);
    assert_eq!(spec.knowledge.index.hnsw.ef_construction, 64);
    assert_eq!(spec.guardrails.human_approval_required.len(), 4);
    assert!(
        spec.guardrails
            .human_approval_required
            .contains(&GuardedAction::Credits)
    );
    assert!(spec.guardrails.audit.enabled);
    assert_eq!(spec.guardrails.audit.retention_days, 365);
}

#[test]
fn a_minimal_pipeline_refreshes_every_five_minutes() {
    let pipeline: MetricPipeline = serde_yaml::from_str(
        r#"
apiVersion: partnerplane.io/v1alpha1
kind: MetricPipeline
metadata: {name: p, namespace: n}
spec:
  sources:
    - name: events
      partnerColumn: partner
      timeColumn: at
      columns: [{name: partner, type: Text}, {name: at, type: Timestamp}]
  metrics:
    - {name: volume, domain: SupportQuality, source: events, aggregate: {kind: Count}}
"#,
    )
    .unwrap();
    assert_eq!(pipeline.spec.refresh_interval, "5m");
    assert_eq!(pipeline.spec.metrics[0].window, "30d");
    assert!(pipeline.spec.on_breach.is_empty());
}
