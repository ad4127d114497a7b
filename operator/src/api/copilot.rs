//! `CopilotDeployment`: a retrieval-augmented copilot bound to the tenant's
//! vector index, approved sources and a model key held in Vault or a Secret.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::metric::Identifier;

/// A partner copilot for one role, running in the tenant namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "partnerplane.io",
    version = "v1alpha1",
    kind = "CopilotDeployment",
    plural = "copilotdeployments",
    namespaced,
    shortname = "cop",
    category = "partnerplane",
    status = "CopilotDeploymentStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.role"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#,
    printcolumn = r#"{"name":"Available","type":"integer","jsonPath":".status.availableReplicas"}"#,
    printcolumn = r#"{"name":"Index","type":"string","jsonPath":".status.indexTable"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CopilotDeploymentSpec {
    /// The audience the copilot serves; sets its default prompts and tools.
    pub role: CopilotRole,

    /// Container image of the copilot server (`partnerplane copilot`).
    /// Defaults to the image the operator is configured with
    /// (`--copilot-image`), the operator's own release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = r"^[a-z0-9]([a-z0-9._/:@-]*[a-zA-Z0-9])?$")
    )]
    pub image: Option<String>,

    /// Replicas when autoscaling is not set.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 50))]
    pub replicas: i32,

    /// Horizontal autoscaling; replaces `replicas` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// The language model the copilot calls.
    pub model: ModelSpec,

    /// The tenant knowledge the copilot may retrieve from.
    pub knowledge: KnowledgeSpec,

    /// Guard rails on what the copilot may do on its own.
    #[serde(default)]
    pub guardrails: Guardrails,
}

fn default_replicas() -> i32 {
    1
}

/// Copilot audiences, from the partner operations use cases.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopilotRole {
    PartnerOperations,
    Finance,
    ServiceLeader,
    ChannelManager,
}

/// Horizontal autoscaling bounds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message("autoscaling.minReplicas must not exceed maxReplicas")
        .field_path(".minReplicas")
)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Fewest replicas.
    #[schemars(range(min = 1, max = 50))]
    pub min_replicas: i32,
    /// Most replicas.
    #[schemars(range(min = 1, max = 50))]
    pub max_replicas: i32,
    /// Average CPU utilisation to aim for, in percent.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 10, max = 95))]
    pub target_cpu_utilization: i32,
}

fn default_cpu_target() -> i32 {
    70
}

/// An OpenAI-compatible model endpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Base URL of the OpenAI-compatible API.
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub endpoint: String,
    /// Model name sent with each request.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    )]
    pub name: String,
    /// Where the API key is held; the key itself never appears in a manifest.
    pub api_key: ApiKeyRef,
}

/// Reference to an API key in Vault/OpenBao or in a Secret of the namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.vault) != has(self.secret)")
        .message("apiKey sets exactly one of vault or secret")
)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyRef {
    /// A key under the tenant's own Vault/OpenBao path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultKeyRef>,
    /// A key of a Secret in the copilot's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretKeyRef>,
}

/// A field of a KV v2 secret under the tenant's path.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultKeyRef {
    /// Path relative to the tenant's KV prefix, such as `models/openai`.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    )]
    pub path: String,
    /// Field of the secret holding the key.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_.-]+$"))]
    pub key: String,
}

/// A key of a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// Retrieval settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeSpec {
    /// The pgvector index the operator creates in the tenant schema.
    pub index: VectorIndex,
    /// The only sources retrieval may use.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub approved_sources: Vec<ApprovedSource>,
}

/// A pgvector table with an HNSW index.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VectorIndex {
    /// Embedding dimensions (pgvector's HNSW supports up to 2000). Immutable.
    #[schemars(range(min = 1, max = 2000))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("knowledge.index.dimensions is immutable").reason(Reason::FieldValueForbidden))]
    pub dimensions: i32,
    /// Distance the index orders by.
    #[serde(default)]
    pub distance: Distance,
    /// HNSW build parameters.
    #[serde(default)]
    pub hnsw: HnswParameters,
}

/// Vector distance.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Distance {
    #[default]
    Cosine,
    L2,
    InnerProduct,
}

/// HNSW build parameters.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HnswParameters {
    /// Connections per layer.
    #[serde(default = "default_m")]
    #[schemars(range(min = 2, max = 100))]
    pub m: i32,
    /// Size of the candidate list while building.
    #[serde(default = "default_ef_construction")]
    #[schemars(range(min = 4, max = 1000))]
    pub ef_construction: i32,
}

impl Default for HnswParameters {
    fn default() -> Self {
        Self {
            m: default_m(),
            ef_construction: default_ef_construction(),
        }
    }
}

fn default_m() -> i32 {
    16
}

fn default_ef_construction() -> i32 {
    64
}

/// A source retrieval may use.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovedSource {
    /// Name of the source, unique within the copilot.
    pub name: Identifier,
    /// What kind of knowledge it is.
    pub kind: SourceKind,
    /// What it contains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub description: Option<String>,
}

/// Kinds of approved knowledge.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// Results of the namespace's MetricPipelines.
    MetricPipeline,
    /// Contracts and statements of work.
    Contracts,
    /// Service-level agreements.
    ServiceLevelAgreements,
    /// Tickets, cases and service reports.
    ServiceRecords,
    /// Compliance evidence: certifications, audits, insurance.
    ComplianceEvidence,
    /// Playbooks and knowledge-base articles.
    Playbooks,
}

/// Guard rails.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Guardrails {
    /// Actions the copilot may only propose; a human approves them.
    #[serde(default = "default_approval_actions")]
    #[schemars(length(max = 4))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub human_approval_required: Vec<GuardedAction>,
    /// Answers below this confidence (0 to 1) are withheld and routed to a human.
    #[serde(default = "default_min_confidence")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_confidence: f64,
    /// Prompt and response audit log.
    #[serde(default)]
    pub audit: AuditSpec,
}

impl Default for Guardrails {
    fn default() -> Self {
        Self {
            human_approval_required: default_approval_actions(),
            min_confidence: default_min_confidence(),
            audit: AuditSpec::default(),
        }
    }
}

fn default_approval_actions() -> Vec<GuardedAction> {
    vec![
        GuardedAction::Credits,
        GuardedAction::ContractChanges,
        GuardedAction::ComplianceExceptions,
        GuardedAction::CustomerCommitments,
    ]
}

fn default_min_confidence() -> f64 {
    0.7
}

/// Actions that need a human's approval.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardedAction {
    Credits,
    ContractChanges,
    ComplianceExceptions,
    CustomerCommitments,
}

/// The prompt/response audit log kept in the tenant schema.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditSpec {
    /// Whether prompts and responses are recorded.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Days records are kept.
    #[serde(default = "default_retention_days")]
    #[schemars(range(min = 1, max = 3650))]
    pub retention_days: i32,
}

impl Default for AuditSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            retention_days: default_retention_days(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_retention_days() -> i32 {
    365
}

/// Observed state of a copilot.
///
/// Defaults to `observedGeneration: -1` so that a copilot no controller has
/// reconciled yet reads as in progress (kstatus), not as current.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[schemars(extend("default" = {"observedGeneration": -1}))]
#[serde(rename_all = "camelCase")]
pub struct CopilotDeploymentStatus {
    /// Generation of the spec this status describes; -1 until a controller
    /// has reconciled the copilot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled`, and one condition per part:
    /// `IndexReady`, `ModelKeyReady`, `Available`.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// In-cluster URL of the copilot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Vector table in the tenant schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_table: Option<String>,
    /// Audit table in the tenant schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_table: Option<String>,
    /// Replicas the Deployment asks for: `spec.replicas`, or what the
    /// HorizontalPodAutoscaler set when autoscaling is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Replicas ready to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
}
