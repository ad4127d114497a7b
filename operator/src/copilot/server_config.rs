//! What the operator tells a copilot server: written by the controller into
//! the copilot's ConfigMap (key [`CONFIG_KEY`], JSON), mounted at
//! [`CONFIG_PATH`] and read by `partnerplane copilot` at start-up. A change
//! changes the Deployment's config-hash annotation, which rolls the pods.
//! No secret is ever part of it: the model key and the database password
//! come from the environment or from OpenBao at run time.

use serde::{Deserialize, Serialize};

use crate::api::copilot::{ApprovedSource, CopilotRole, Distance, GuardedAction};

/// ConfigMap key holding the configuration.
pub const CONFIG_KEY: &str = "copilot.json";
/// Where the pod mounts it.
pub const CONFIG_PATH: &str = "/etc/partnerplane/copilot.json";
/// Port the server listens on (HTTP API, `/healthz`, `/readyz`, `/metrics`).
pub const PORT: u16 = 8080;
/// Environment variable holding the model API key when it comes from a Secret.
pub const MODEL_KEY_ENV: &str = "PARTNERPLANE_MODEL_API_KEY";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerConfig {
    /// `namespace/name` of the CopilotDeployment (metric and log label).
    pub copilot: String,
    pub role: CopilotRole,
    /// The tenant's white-label branding, for answers and the UI.
    pub branding: Branding,
    pub model: Model,
    pub database: Database,
    pub approved_sources: Vec<ApprovedSource>,
    /// Schema-qualified result tables of the namespace's MetricPipelines,
    /// read for sources of kind `MetricPipeline`.
    #[serde(default)]
    pub metric_result_tables: Vec<String>,
    pub guardrails: Guardrails,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Branding {
    pub product_name: Option<String>,
    pub primary_color: Option<String>,
    pub logo_url: Option<String>,
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Model {
    /// Base URL of the OpenAI-compatible API (`…/v1`).
    pub endpoint: String,
    pub name: String,
    pub key: ModelKey,
}

/// Where the server finds the model API key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum ModelKey {
    /// In the environment variable [`MODEL_KEY_ENV`] (a `secretKeyRef`).
    Env,
    /// In OpenBao: log in with the pod's ServiceAccount token through the
    /// tenant's Kubernetes-auth role, then read `field` of the KV v2 secret.
    Vault(VaultKey),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultKey {
    pub address: String,
    pub auth_mount: String,
    pub auth_role: String,
    pub kv_mount: String,
    /// Full path under the mount, such as `tenants/acme/models/openai`.
    pub path: String,
    pub field: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Database {
    /// The tenant schema; every name below lives in it.
    pub schema: String,
    pub knowledge_table: String,
    pub retrieve_function: String,
    pub audit_table: String,
    pub approvals_table: String,
    pub dimensions: i32,
    pub distance: Distance,
    /// Where the tenant's database credentials are: `PGHOST`, `PGPORT`,
    /// `PGDATABASE`, `PGUSER`, `PGPASSWORD` (and `PGSSLMODE`) in the
    /// environment from the tenant's credentials Secret, or OpenBao at
    /// `<tenant path>/credentials` with the same keys.
    pub credentials: DatabaseCredentials,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum DatabaseCredentials {
    Env,
    Vault(VaultKey),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Guardrails {
    pub human_approval_required: Vec<GuardedAction>,
    pub min_confidence: f64,
    pub audit_enabled: bool,
}
