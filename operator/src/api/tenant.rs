//! `PartnerTenant`: one white-label partner intelligence instance and its
//! isolated slice of the shared infrastructure.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A managed service provider's tenant: a namespace with guard rails, a
/// Postgres schema and role, Redis access, and Vault/OpenBao secrets and
/// policies — none of which any other tenant can reach.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "partnerplane.io",
    version = "v1alpha1",
    kind = "PartnerTenant",
    plural = "partnertenants",
    shortname = "ptn",
    category = "partnerplane",
    status = "PartnerTenantStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Tier","type":"string","jsonPath":".spec.tier"}"#,
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".status.namespace"}"#,
    printcolumn = r#"{"name":"Schema","type":"string","jsonPath":".status.postgres.schema"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // Root rules see the status: a value is fixed only once the operator has
    // recorded it as provisioned, so a typo can be corrected until then.
    // Spelling out the namespace the operator claimed for an unset
    // `spec.namespace` is no change. Status-only writes leave the spec as it
    // was, so they always pass. `namespace` is a CEL reserved word, hence
    // the escaped `__namespace__`.
    validation = Rule::new(
        "!has(oldSelf.status) || !has(oldSelf.status.__namespace__) || \
         (has(self.spec.__namespace__) \
           ? self.spec.__namespace__ == (has(oldSelf.spec.__namespace__) ? oldSelf.spec.__namespace__ : oldSelf.status.__namespace__) \
           : !has(oldSelf.spec.__namespace__))"
    )
    .message("namespace cannot change once the tenant's namespace is provisioned (status.namespace)")
    .field_path(".spec.namespace")
    .reason(Reason::FieldValueForbidden),
    validation = Rule::new(
        "!has(oldSelf.status) || !has(oldSelf.status.postgres) || \
         self.spec.postgres.backend == oldSelf.spec.postgres.backend"
    )
    .message("postgres.backend cannot change once the tenant's schema is provisioned there (status.postgres)")
    .field_path(".spec.postgres.backend")
    .reason(Reason::FieldValueForbidden),
    // Added, removed or changed alike: a StatefulSet's volume claims are
    // immutable, so only a Dedicated Redis not yet provisioned may change
    // (or one being given up for Shared mode).
    validation = Rule::new(
        "!has(oldSelf.status) || !has(oldSelf.status.redis) || !has(oldSelf.status.redis.service) || \
         self.spec.redis.mode != 'Dedicated' || \
         (has(self.spec.redis) && has(self.spec.redis.persistence) \
           ? has(oldSelf.spec.redis) && has(oldSelf.spec.redis.persistence) && \
             self.spec.redis.persistence == oldSelf.spec.redis.persistence \
           : !has(oldSelf.spec.redis) || !has(oldSelf.spec.redis.persistence))"
    )
    .message("redis.persistence cannot change once the tenant's Dedicated Redis is provisioned (status.redis.service): the volume claims of a StatefulSet are immutable")
    .field_path(".spec.redis.persistence")
    .reason(Reason::FieldValueForbidden)
)]
#[serde(rename_all = "camelCase")]
pub struct PartnerTenantSpec {
    /// Human-readable name of the tenant, shown in its copilot and reports.
    #[schemars(length(min = 1, max = 128))]
    pub display_name: String,

    /// White-label branding of the tenant's instance. Recorded as data and
    /// handed to the tenant's copilots, which render it; the operator
    /// provisions nothing from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branding: Option<Branding>,

    /// Service tier: sets the namespace quota and limits unless `quotas` overrides them.
    #[serde(default)]
    pub tier: Tier,

    /// Namespace that holds the tenant's workloads. Defaults to `ptn-<name>`.
    /// Cannot change once the operator has claimed it (`status.namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    // Written as a schema extension: kube drops field rules on `Option` fields.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "!self.startsWith('kube-') && self != 'default'", "message": "namespace cannot be default or a kube- system namespace"}
    ]))]
    pub namespace: Option<String>,

    /// The tenant's Postgres schema and role.
    #[serde(default)]
    pub postgres: PostgresSpec,

    /// The tenant's Redis access.
    #[serde(default)]
    pub redis: RedisSpec,

    /// Where the credentials the operator generates are stored.
    #[serde(default)]
    pub secrets: SecretsSpec,

    /// Workflow templates provisioned for the tenant in the operator's n8n.
    #[serde(default)]
    pub workflows: WorkflowsSpec,

    /// Overrides of the tier's namespace quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<Quotas>,

    /// Network isolation of the tenant namespace.
    #[serde(default)]
    pub network: NetworkSpec,

    /// What deleting the tenant does. `Retain` (default) removes access but
    /// keeps data and the namespace; `Delete` removes everything.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Stops reconciling the tenant while true; provisioned state is left as is.
    #[serde(default)]
    pub suspend: bool,
}

/// White-label branding.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Branding {
    /// Product name shown to the tenant's users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub product_name: Option<String>,

    /// Primary colour as `#RRGGBB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^#[0-9A-Fa-f]{6}$"))]
    pub primary_color: Option<String>,

    /// Accent colour as `#RRGGBB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^#[0-9A-Fa-f]{6}$"))]
    pub accent_color: Option<String>,

    /// HTTPS URL of the logo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https://[^\s]+$"))]
    pub logo_url: Option<String>,

    /// DNS name the tenant's instance is served under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 253),
        regex(pattern = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
    )]
    pub domain: Option<String>,
}

/// Service tier.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tier {
    Starter,
    #[default]
    Standard,
    Enterprise,
}

/// The tenant's Postgres slice.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// Name of the Postgres backend (from the operator's configuration) that
    /// holds the tenant's schema. Cannot change once the schema is
    /// provisioned there (`status.postgres`); until then a wrong name can be
    /// corrected.
    #[serde(default = "default_backend")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub backend: String,

    /// Extensions the tenant may use; they live in a shared extensions schema
    /// that every tenant reaches. Only `vector` (pgvector) is offered, and it
    /// cannot be left out.
    #[serde(default = "default_extensions")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    // The shared extensions schema is granted to every tenant alike, so a
    // list without `vector` would claim an isolation the operator does not give.
    #[x_kube(validation = Rule::new("'vector' in self").message("extensions must include vector: pgvector is available to every tenant"))]
    pub extensions: Vec<PostgresExtension>,
}

impl Default for PostgresSpec {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            extensions: default_extensions(),
        }
    }
}

fn default_backend() -> String {
    "default".into()
}

fn default_extensions() -> Vec<PostgresExtension> {
    vec![PostgresExtension::Vector]
}

/// A Postgres extension offered to tenants.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PostgresExtension {
    /// pgvector: vector types and HNSW indexes.
    Vector,
}

/// The tenant's Redis access.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("self.mode != 'Dedicated' || has(self.memory)")
        .message("a Dedicated Redis needs redis.memory")
        .field_path(".memory")
        .reason(Reason::FieldValueRequired)
)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// `Shared`: an ACL user on the shared Redis confined to the tenant's key
    /// prefix. `Dedicated`: a Redis of the tenant's own in its namespace.
    #[serde(default)]
    pub mode: RedisMode,

    /// Memory of a Dedicated Redis (for example `256Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "type(self) == int || isQuantity(self)", "message": "must be a quantity such as 256Mi or 2"}]))]
    pub memory: Option<Quantity>,

    /// Persistence of a Dedicated Redis. Without it the data lives in memory
    /// only and is lost when the pod restarts. Fixed once the operator has
    /// recorded the Dedicated Redis in `status.redis.service` (a
    /// StatefulSet's volume claims cannot change), unless the mode changes
    /// to Shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<RedisPersistence>,
}

/// Where a Dedicated Redis keeps its data.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisPersistence {
    /// Writes an append-only file to a PersistentVolumeClaim mounted at
    /// `/data`, so the data survives a restart.
    #[serde(default)]
    pub enabled: bool,

    /// Size of the PersistentVolumeClaim (for example `1Gi`).
    // Not nullable: the API server then prunes `size: null` and applies the
    // default instead of storing a null this field cannot hold.
    #[serde(default = "RedisPersistence::default_size")]
    #[schemars(extend("nullable" = false, "x-kubernetes-validations" = [{"rule": "type(self) == int || isQuantity(self)", "message": "must be a quantity such as 1Gi"}]))]
    pub size: Quantity,

    /// StorageClass of the PersistentVolumeClaim; the cluster's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub storage_class_name: Option<String>,
}

impl RedisPersistence {
    fn default_size() -> Quantity {
        Quantity("1Gi".into())
    }
}

impl Default for RedisPersistence {
    fn default() -> Self {
        Self {
            enabled: false,
            size: Self::default_size(),
            storage_class_name: None,
        }
    }
}

/// How the tenant gets Redis.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedisMode {
    #[default]
    Shared,
    Dedicated,
}

/// Where generated credentials go.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretsSpec {
    /// `Vault` stores credentials in the tenant's Vault/OpenBao paths only;
    /// `KubernetesSecret` in a Secret in the tenant namespace only; `Both` in both.
    #[serde(default)]
    pub store: SecretStore,
}

/// Credential store.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SecretStore {
    #[default]
    Vault,
    KubernetesSecret,
    Both,
}

/// Workflow templates for the tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowsSpec {
    /// Templates to provision in the operator's n8n: one active workflow
    /// each, tagged with the tenant and using n8n credentials made from the
    /// tenant's own Postgres role and Redis user. A template taken off the
    /// list has its workflow removed.
    #[serde(default)]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub templates: Vec<WorkflowTemplate>,
}

/// A reusable workflow template.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum WorkflowTemplate {
    /// Escalates a breached service-level objective to the partner's owner.
    SlaBreachEscalation,
    /// Collects compliance evidence (certifications, insurance, audits) on a schedule.
    EvidenceCollection,
    /// Routes exceptions (credits, contract changes) to a human approver.
    ExceptionRouting,
    /// Builds the weekly partner performance pack.
    WeeklyPartnerPerformancePack,
}

/// Namespace quota overrides.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Quotas {
    /// Total CPU requests allowed in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "type(self) == int || isQuantity(self)", "message": "must be a quantity such as 256Mi or 2"}]))]
    pub cpu: Option<Quantity>,
    /// Total memory requests allowed in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "type(self) == int || isQuantity(self)", "message": "must be a quantity such as 256Mi or 2"}]))]
    pub memory: Option<Quantity>,
    /// Maximum number of pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub pods: Option<i32>,
    /// Total persistent storage requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "type(self) == int || isQuantity(self)", "message": "must be a quantity such as 256Mi or 2"}]))]
    pub storage: Option<Quantity>,
}

/// Network isolation of the tenant namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// `Strict` (default): deny all traffic except within the namespace, DNS and
    /// the shared backends. `Open`: no NetworkPolicy.
    #[serde(default)]
    pub isolation: NetworkIsolation,

    /// Namespaces (by name) whose pods may reach the tenant's workloads, such
    /// as an ingress controller's.
    #[serde(default)]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allow_from_namespaces: Vec<NamespaceName>,
}

/// A namespace name.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct NamespaceName(
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub String,
);

/// Network isolation mode.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NetworkIsolation {
    #[default]
    Strict,
    Open,
}

/// What deleting the tenant does to its data.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Remove access (role disabled, ACL user and policies removed) and keep
    /// data and the namespace.
    #[default]
    Retain,
    /// Remove everything the operator provisioned.
    Delete,
}

/// Observed state of a tenant: the names actually provisioned and a condition per part.
///
/// Defaults to `observedGeneration: -1` so that a tenant no operator has seen
/// yet reads as in progress (kstatus), not as current.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[schemars(extend("default" = {"observedGeneration": -1}))]
#[serde(rename_all = "camelCase")]
pub struct PartnerTenantStatus {
    /// Generation of the spec this status describes; -1 until an operator has
    /// reconciled the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling`, `Stalled` and one condition per part:
    /// `NamespaceReady`, `DatabaseReady`, `CacheReady`, `SecretsReady`,
    /// `WorkflowsReady`; `Suspended` while `spec.suspend` is true.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The tenant namespace, once the operator has claimed it; from then on
    /// `spec.namespace` cannot change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,

    /// The tenant's Postgres schema and role, once the operator may have
    /// created them; from then on `spec.postgres.backend` cannot change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresStatus>,

    /// The tenant's Redis access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisStatus>,

    /// The tenant's Vault/OpenBao paths, policy and auth role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultStatus>,

    /// Secret in the tenant namespace holding the generated credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,

    /// The tenant's workflows and credentials in n8n, while it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflows: Option<WorkflowsStatus>,
}

/// What the operator provisioned in n8n for the tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowsStatus {
    /// n8n tag every workflow of the tenant carries.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    /// One workflow per enabled template.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["template".into()]))]
    pub workflows: Vec<ProvisionedWorkflow>,
    /// n8n credentials made for the tenant (their secrets stay in n8n).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["purpose".into()]))]
    pub credentials: Vec<ProvisionedCredential>,
}

/// One workflow in n8n.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionedWorkflow {
    /// The template it was made from.
    pub template: WorkflowTemplate,
    /// The template's version the workflow carries.
    pub version: i32,
    /// n8n's id of the workflow.
    pub id: String,
    /// The workflow's name in n8n.
    pub name: String,
    /// Whether n8n runs it.
    pub active: bool,
    /// Path of its production webhook under n8n's `/webhook/`, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_path: Option<String>,
}

/// One n8n credential made for the tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionedCredential {
    /// `Postgres` (the tenant's role), `Redis` (the tenant's user) or
    /// `Webhook` (the token n8n asks of callers of the tenant's webhooks).
    pub purpose: String,
    /// n8n's id of the credential.
    pub id: String,
    /// Its name in n8n; the suffix changes whenever its content does.
    pub name: String,
}

/// Provisioned Postgres names.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresStatus {
    /// Backend holding the schema.
    pub backend: String,
    /// The tenant's schema.
    pub schema: String,
    /// The tenant's login role.
    pub role: String,
}

/// Provisioned Redis names.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisStatus {
    /// Shared or Dedicated.
    pub mode: RedisMode,
    /// ACL user (Shared mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Prefix of every key and channel the tenant may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Service of the tenant's own Redis (Dedicated mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// Provisioned Vault/OpenBao names.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultStatus {
    /// KV v2 mount.
    pub mount: String,
    /// Path prefix under the mount that belongs to the tenant.
    pub path: String,
    /// Policy that reads only the tenant's paths.
    pub policy: String,
    /// Kubernetes-auth role bound to the `tenant-workload` ServiceAccount of
    /// the tenant namespace, for tokens with the audience `vault`.
    pub auth_role: String,
}
